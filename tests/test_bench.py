"""lstmc.bench (the runner) and benchmarks/peers.py (the peers): the ONNX graphs built from
lstmc's weights compute what lstmc computes, and the benchmark machinery runs end to end on a
tiny grid (no timing is asserted)."""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import lstmc
from lstmc import bench

PEERS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"    # this checkout's peers
peers = bench.load_peers(PEERS_DIR)
PEER_LABELS = [p.label for p in peers.PEERS.values()]      # the peer columns, in order

ATOL = 1e-5


def _ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def _module(cell, L, bidirectional, bias=True, nonlinearity="tanh"):
    lstmc.manual_seed(1)
    kw = dict(nonlinearity=nonlinearity) if cell == "rnn" else {}
    cls = {"lstm": lstmc.nn.LSTM, "gru": lstmc.nn.GRU, "rnn": lstmc.nn.RNN}[cell]
    m = cls(5, 6, num_layers=L, bidirectional=bidirectional, bias=bias, **kw)
    m.eval()
    return m


def _states(cell, out):
    """lstmc's (h_n,) or (h_n, c_n)."""
    return (out[1],) if cell != "lstm" else tuple(out[1])


@pytest.mark.parametrize("cell,nonlinearity", [("lstm", "tanh"), ("gru", "tanh"),
                                               ("rnn", "tanh"), ("rnn", "relu")])
@pytest.mark.parametrize("L,bidirectional", [(1, False), (1, True), (2, False), (2, True)])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_onnx_model_matches_lstmc(cell, nonlinearity, L, bidirectional, with_lengths):
    _ort()
    m = _module(cell, L, bidirectional, nonlinearity=nonlinearity)
    rng = np.random.default_rng(0)
    T, B = 7, 4
    x = rng.standard_normal((T, B, 5), dtype=np.float32)
    lengths = np.array([7, 0, 3, 1]) if with_lengths else None
    out = m(x, lengths=lengths)
    model = peers.onnx_model(cell, m.state_dict(), 5, 6, L, bidirectional, nonlinearity,
                             with_lengths=with_lengths)
    feed = {"x": x}
    if with_lengths:
        feed["lengths"] = lengths.astype(np.int32)
    got = peers.ort_session(model, 1).run(None, feed)
    expected = (out[0],) + _states(cell, out)
    assert len(got) == len(expected)
    for name, g, e in zip(("y", "h_n", "c_n"), got, expected):
        assert g.shape == e.shape, name
        err = np.max(np.abs(g - e))
        assert err <= ATOL, "%s: max |ORT - lstmc| = %g" % (name, err)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_onnx_model_without_bias_and_with_state_inputs(cell):
    """bias=False leaves out ONNX's B; with_state feeds h0 (and c0) per layer."""
    _ort()
    m = _module(cell, 2, False, bias=False)
    assert not any(k.startswith("bias") for k in m.state_dict())
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 5), dtype=np.float32)
    h0 = rng.standard_normal((2, 2, 6), dtype=np.float32)
    c0 = rng.standard_normal((2, 2, 6), dtype=np.float32)
    out = m(x, (h0, c0) if cell == "lstm" else h0)
    model = peers.onnx_model(cell, m.state_dict(), 5, 6, 2, with_state=True)
    feed = {"x": x, "h0_l0": h0[:1], "h0_l1": h0[1:]}
    if cell == "lstm":
        feed.update(c0_l0=c0[:1], c0_l1=c0[1:])
    got = peers.ort_session(model, 1).run(None, feed)
    for g, e in zip(got, (out[0],) + _states(cell, out)):
        assert np.max(np.abs(g - e)) <= ATOL


@pytest.mark.parametrize("bidirectional", [False, True])
def test_onnx_gru_reset_before(bidirectional):
    """lstmc's GRU(reset_after=False) is ONNX's linear_before_reset=0."""
    _ort()
    lstmc.manual_seed(3)
    m = lstmc.nn.GRU(5, 6, bidirectional=bidirectional, reset_after=False)
    m.eval()
    x = np.random.default_rng(3).standard_normal((4, 2, 5), dtype=np.float32)
    out, h_n = m(x)
    model = peers.onnx_model("gru", m.state_dict(), 5, 6, 1, bidirectional, reset_after=False)
    y, h = peers.ort_session(model, 1).run(None, {"x": x})
    assert np.max(np.abs(y - out)) <= ATOL and np.max(np.abs(h - h_n)) <= ATOL


def test_onnx_model_rejects_projection_and_unknown_cells():
    pytest.importorskip("onnx")
    lstm = lstmc.nn.LSTM(5, 6, proj_size=3)
    with pytest.raises(ValueError, match="proj_size"):
        peers.onnx_model("lstm", lstm.state_dict(), 5, 6)
    with pytest.raises(ValueError, match="cell must be one of"):
        peers.onnx_model("lstmp", lstmc.nn.LSTM(5, 6).state_dict(), 5, 6)


def test_weight_bytes_reads_w_hh_every_step_and_w_ih_once():
    # LSTM I5 H8 T10: layer 0 4*8*5 + 10 * 4*8*8 floats; layer 1 of a bidirectional pair reads
    # 2H = 16 inputs; both directions
    one = 4 * 8 * 5 + 10 * 4 * 8 * 8
    two = 4 * 8 * 16 + 10 * 4 * 8 * 8
    assert bench.weight_bytes(5, 8, 10, 2, True) == 4 * (2 * one + 2 * two)
    assert bench.weight_bytes(5, 8, 1, cell="gru") == 4 * 3 * 8 * (5 + 8)
    assert bench.weight_bytes(5, 8, 10, cell="rnn", itemsize=8) == 8 * (8 * 5 + 10 * 8 * 8)


def test_kind_splits_lstm_inference_by_whether_w_hh_fits_the_l3():
    row = dict(cell="lstm", section="inference", mode="fwd")
    l3 = 32 * 2 ** 20                                   # W_hh of H1536: 37.7 MB; H1024: 16.8
    assert bench.kind(dict(row, H=1536), l3) == "LSTM inference, W_hh beyond L3"
    assert bench.kind(dict(row, H=1024), l3) == "LSTM inference, W_hh within L3"
    assert bench.kind(dict(row, H=1024, cell="gru"), l3) == "GRU forward"
    assert bench.kind(dict(row, H=8, section="training", mode="train"), l3) == \
        "LSTM training step"
    assert bench.l3_bytes() > 0


def test_l3_bytes_reads_the_level_3_cache_from_sysfs(tmp_path):
    for index, level, size in (("index0", "1", "32K"), ("index2", "2", "512K"),
                               ("index3", "2", "1M"), ("index4", "3", "16384K")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "level").write_text(level + "\n")
        (tmp_path / index / "size").write_text(size + "\n")
    assert bench.l3_bytes(str(tmp_path)) == 16 * 2 ** 20
    assert bench.l3_bytes(str(tmp_path / "none")) == 32 * 2 ** 20     # no sysfs: 32 MiB


def test_rnn_flops_counts_layers_directions_and_tokens():
    # layer 0: 2*T*B*4H*(I+H) per direction; layer 1 reads 2H; train = 3x
    one = 2 * 10 * 3 * 4 * 8 * (5 + 8)
    two = 2 * 10 * 3 * 4 * 8 * (16 + 8)
    assert bench.rnn_flops(5, 8, 10, 3, 2, True) == 2 * one + 2 * two
    assert bench.rnn_flops(5, 8, 10, 3, mode="train", cell="gru") == 3 * one * 3 // 4
    assert bench.rnn_flops(5, 8, 10, 3, tokens=7, cell="rnn") == 2 * 7 * 8 * (5 + 8)


# ---------------------------------------------------------------------------------------------
# the machinery on a tiny grid

TINY_GRID = {
    "inference": [{"name": "t_inf", "I": 6, "H": 8, "B": 1, "T": 5}],
    "training": [{"name": "t_trn", "I": 6, "H": 8, "B": 3, "T": 4, "L": 2}],
    "bidirectional": [{"name": "t_bi", "I": 6, "H": 8, "B": 3, "T": 4, "L": 2,
                       "bidirectional": True}],
    "variable_length": [{"name": "t_var", "I": 6, "H": 8, "B": 4, "T": 6,
                         "lengths": "uniform integers in [1, 6], seed 0"}],
    "streaming_step": [{"name": "t_step", "I": 6, "H": 8, "B": 1}],
}
TINY_RNN_GRID = {
    "inference": [{"name": "t_gru", "cell": "gru", "I": 6, "H": 8, "B": 2, "T": 5},
                  {"name": "t_rnn", "cell": "rnn", "nonlinearity": "relu", "I": 6, "H": 8,
                   "B": 2, "T": 5}],
}


# the ONNX-file rows: LSTM in the LSTM grid, GRU in the other, as the packaged grids have them
TINY_ONNX_GRID = {"onnx_file": [{"name": "t_onnx_lstm", "I": 6, "H": 8, "B": 1, "T": 5}]}
TINY_ONNX_RNN_GRID = {"onnx_file": [{"name": "t_onnx_gru", "cell": "gru", "I": 6, "H": 8,
                                     "B": 3, "T": 5}]}


def _tiny_args(tmp_path, monkeypatch, grid, grid_rnn):
    """Arguments running these grids; a small sgemm and a short settle keep a run to a few
    seconds."""
    monkeypatch.setattr(bench, "PEAK_N", 128)
    monkeypatch.setattr(bench, "DRAM_MB", 1)
    monkeypatch.setattr(bench, "WARM_S", 0.005)
    paths = []
    for name, g in (("grid.json", grid), ("grid_rnn.json", grid_rnn)):
        p = tmp_path / name
        p.write_text(json.dumps(g))
        paths.append(str(p))
    return ["--grid", paths[0], "--grid-rnn", paths[1], "--reps", "2", "--peers-from",
            str(PEERS_DIR)]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Paths of the tiny grids (as arguments)."""
    return _tiny_args(tmp_path, monkeypatch, TINY_GRID, TINY_RNN_GRID)


@pytest.fixture
def tiny_onnx(tmp_path, monkeypatch):
    """Paths of the tiny ONNX-file grids (as arguments)."""
    return _tiny_args(tmp_path, monkeypatch, TINY_ONNX_GRID, TINY_ONNX_RNN_GRID)


def _tables(text):
    """The Markdown tables in text, each a list of rows of stripped cells (header first)."""
    tables, lines = [], []
    for ln in text.splitlines() + [""]:
        if ln.startswith("|"):
            lines.append([c.strip() for c in ln.strip().strip("|").split("|")])
        elif lines:
            tables.append(lines)
            lines = []
    return tables


def _table(text, column="lstmc ms"):
    """Columns and {(row, threads, mode): {column: cell}} of the first table with `column`
    (default: the timings; "MB read": the weights read at small batch)."""
    for t in _tables(text):
        if column in t[0]:
            return t[0], {(c[0], c[1], c[2]): dict(zip(t[0], c)) for c in t[2:]}
    return None, {}


def _summary(text):
    """Columns and {kind: {column: cell}} of the geometric-mean table."""
    for t in _tables(text):
        if t[0][0] == "kind":
            return t[0], {c[0]: dict(zip(t[0], c)) for c in t[2:]}
    return None, {}


def _installed(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def test_bench_tiny_grid_torch_and_ort(tiny, capsys, tmp_path):
    out_json = tmp_path / "out.json"
    assert bench.main(tiny + ["--threads", "1,2", "--peers", "torch,ort",
                              "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    cols, rows = _table(out)
    assert cols[-1] == "lstmc / best peer"
    assert {"torch ms", "ORT ms"} <= set(cols)
    step_mode = "step" if hasattr(lstmc.nn.LSTM, "step") else "cell"
    expected = {("t_inf", "fwd"), ("t_trn", "fwd"), ("t_trn", "train"), ("t_bi", "fwd"),
                ("t_bi", "train"), ("t_var", "fwd"), ("t_var", "train"), ("t_step", step_mode),
                ("t_gru", "fwd"), ("t_rnn", "fwd")}
    if step_mode == "step":
        expected.add(("t_step", "cell"))
    assert {(r, m) for r, _, m in rows} == expected
    assert {t for _, t, _ in rows} == {"1", "2"}
    have = {"torch": _installed("torch"), "ORT": _installed("onnxruntime")
            and _installed("onnx")}
    for (row, threads, mode), cells in rows.items():
        assert not row.endswith("(!)"), "a peer disagrees with lstmc on %s" % row
        float(cells["lstmc ms"])
        for peer, ok in have.items():
            if not ok:
                assert cells[peer + " ms"] == "not installed"
            elif peer == "ORT" and mode == "train":
                assert cells["ORT ms"] == "—"       # inference only
            else:
                float(cells[peer + " ms"])
        if have["torch"] or (have["ORT"] and mode != "train"):   # ORT has no training step
            ratio, best = cells["lstmc / best peer"].split()
            assert float(ratio) > 0 and best.strip("()") in [p for p, ok in have.items() if ok]
    saved = json.loads(out_json.read_text())
    assert len(saved["results"]) == len(rows)
    assert all(len(r["lstmc_samples_s"]) == 2 for r in saved["results"])
    # Forwards and steps at batch <= 4 get the weights they read: every row here but t_var (batch
    # 4 too, but with lengths) and the training steps
    wcols, wrows = _table(out, "MB read")
    assert wcols == ["row", "threads", "mode", "MB read", "lstmc GB/s", "% DRAM read",
                     "torch GB/s", "ORT GB/s"]
    assert set(wrows) == {k for k in rows if k[0] != "t_var" and k[2] != "train"}
    weights = {"t_inf": bench.weight_bytes(6, 8, 5), "t_step": bench.weight_bytes(6, 8, 1),
               "t_trn": bench.weight_bytes(6, 8, 4, 2),
               "t_bi": bench.weight_bytes(6, 8, 4, 2, True),
               "t_gru": bench.weight_bytes(6, 8, 5, cell="gru"),
               "t_rnn": bench.weight_bytes(6, 8, 5, cell="rnn")}
    bound = [r for r in saved["results"] if "weights_bytes" in r]
    assert len(bound) == len(wrows)
    for r in bound:
        assert r["weights_bytes"] == weights[r["row"]]
        for lib in ("lstmc", "torch", "ort"):
            if lib + "_s" in r:
                assert r[lib + "_weights_gbps"] == pytest.approx(
                    r["weights_bytes"] / r[lib + "_s"] / 1e9)
        assert r["lstmc_pct_dram"] == pytest.approx(
            100 * r["lstmc_weights_gbps"] / saved["dram_read_gbps"][str(r["threads"])])
        cells = wrows[(r["row"], str(r["threads"]), r["mode"])]
        assert cells["MB read"] == "%.1f" % (r["weights_bytes"] / 1e6)
        assert cells["lstmc GB/s"] == "%.1f" % r["lstmc_weights_gbps"]
        assert cells["% DRAM read"] == "%.0f %%" % r["lstmc_pct_dram"]
        for lib, col in (("torch", "torch GB/s"), ("ort", "ORT GB/s")):
            if lib + "_s" in r:
                assert cells[col] == "%.1f" % r[lib + "_weights_gbps"]
    assert set(saved["dram_read_gbps"]) == set(saved["sgemm_peak_gflops"]) == {"1", "2"}
    assert saved["dram_bytes"] == bench.DRAM_MB * 2 ** 20          # 1 MiB here (the fixture)
    for t, g in saved["dram_read_gbps"].items():
        ts = saved["dram_samples_s"][t]
        assert len(ts) == saved["meta"]["dram_reps"]
        assert g == pytest.approx(saved["dram_bytes"] / np.median(ts) / 1e9)
    # The summary by kind: geometric means of lstmc / best peer and of lstmc / each peer, and
    # the largest lstmc / best peer, recomputed from the JSON
    peers = [p for p, ok in (("torch", have["torch"]), ("ort", have["ORT"])) if ok]
    scols, kinds = _summary(out)
    if not peers:
        assert scols is None
        return
    assert scols == ["kind", "1 thr", "2 thr", "vs torch (1 / 2)", "vs ORT (1 / 2)",
                     "largest (1 / 2)"]
    assert set(kinds) == {
        "LSTM inference, W_hh within L3", "LSTM forward, training rows", "LSTM training step",
        "LSTM forward, variable lengths", "LSTM training step, variable lengths",
        "streaming step at B=1 (`LSTM.step`)" if step_mode == "step" else
        "streaming step at B=1 (`LSTMCell`)", "GRU forward", "RNN forward"} | (
        {"streaming step at B=1 (`LSTMCell`)"} if step_mode == "step" else set())
    best, each = {}, {}
    for r in saved["results"]:
        key = (bench.kind(r), r["threads"])
        timed = [r[p + "_s"] for p in peers if p + "_s" in r]
        if timed:
            best.setdefault(key, []).append(r["lstmc_s"] / min(timed))
        for p in peers:
            if p + "_s" in r:
                each.setdefault(key + (p,), []).append(r["lstmc_s"] / r[p + "_s"])
    gmean = lambda v: np.exp(np.mean(np.log(v)))                  # noqa: E731
    for (k, n), ratios in best.items():
        cells = kinds[k]
        assert float(cells["%d thr" % n]) == pytest.approx(gmean(ratios), abs=0.0051)
        assert float(cells["largest (1 / 2)"].split(" / ")[n - 1]) == pytest.approx(
            max(ratios), abs=0.0051)
    for (k, n, p), ratios in each.items():
        cell = kinds[k]["vs %s (1 / 2)" % {"torch": "torch", "ort": "ORT"}[p]]
        assert float(cell.split(" / ")[n - 1]) == pytest.approx(gmean(ratios), abs=0.0051)
    assert kinds["LSTM training step"]["vs ORT (1 / 2)"] == "— / —"       # inference only


def test_bench_without_peers_says_not_installed(tiny, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)         # import torch -> ImportError
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setitem(sys.modules, "onnx", None)          # lstmc.onnx reads no file
    assert bench.main(tiny + ["--threads", "1", "--rows", "t_inf,t_step,t_var"]) == 0
    out = capsys.readouterr().out
    cols, rows = _table(out)
    step_lines = 2 if hasattr(lstmc.nn.LSTM, "step") else 1     # step and cell, or cell
    assert len(rows) == 3 + step_lines                          # t_inf fwd, t_var fwd + train
    for cells in rows.values():
        assert all(cells[label + " ms"] == "not installed" for label in PEER_LABELS)
        assert cells["lstmc / best peer"] == ""
        float(cells["lstmc ms"])
    assert _summary(out) == (None, {})                          # no peer: no means
    wcols, wrows = _table(out, "MB read")
    assert wcols[-len(PEER_LABELS):] == [lb + " GB/s" for lb in PEER_LABELS]
    assert len(wrows) == 1 + step_lines
    assert all(c[lb + " GB/s"] == "not installed" for c in wrows.values() for lb in PEER_LABELS)


def test_bench_flags_a_peer_that_disagrees(tiny, capsys, monkeypatch):
    """The pre-timing check catches a wrong conversion (here: torch's gate order fed to ONNX)."""
    _ort()
    monkeypatch.setitem(peers.ONNX_GATE_ORDER, "lstm", (0, 1, 2, 3))
    assert bench.main(tiny + ["--threads", "1", "--rows", "t_inf,t_step", "--peers", "ort"]) == 0
    captured = capsys.readouterr()
    assert "| t_inf (!) |" in captured.out and "| t_step (!) |" in captured.out
    assert "WARNING t_inf: lstmc and ort outputs differ" in captured.err
    assert "WARNING t_step: lstmc and ort outputs differ" in captured.err


def test_bench_is_a_command_of_python_m_lstmc(tiny, capsys):
    from lstmc.__main__ import main
    assert main(["bench", "--list"] + tiny[:4]) == 0
    listed = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()]
    assert listed == ["t_inf", "t_trn", "t_bi", "t_var", "t_step", "t_gru", "t_rnn"]


def test_bench_rejects_bad_arguments(tiny):
    with pytest.raises(SystemExit):
        bench.main(tiny + ["--peers", "tensorflow"])
    with pytest.raises(SystemExit):
        bench.main(tiny + ["--rows", "no_such_row"])
    with pytest.raises(SystemExit):
        bench.main(tiny + ["--threads", "0"])


def test_bench_without_the_peers_times_lstmc_alone(tiny, capsys, monkeypatch, tmp_path):
    """An lstmc with no benchmarks/peers.py beside it (an installed one) runs the rows and says
    where peer columns come from; asking for a peer then is an error that says the same."""
    monkeypatch.setattr(bench, "HERE", tmp_path / "site-packages" / "lstmc")
    assert bench.load_peers() is None
    args = tiny[:tiny.index("--peers-from")] + ["--threads", "1", "--rows", "t_inf"]
    assert bench.main(args) == 0
    captured = capsys.readouterr()
    cols, rows = _table(captured.out)
    assert cols == ["row", "threads", "mode", "lstmc ms", "GFLOP/s", "% peak"]
    assert list(rows) == [("t_inf", "1", "fwd")]
    assert "No peers: peer columns (PyTorch, ONNX Runtime) come from benchmarks/peers.py" \
        in captured.out
    assert "timing lstmc alone" in captured.err and "--peers-from" in captured.err
    with pytest.raises(SystemExit):
        bench.main(args + ["--peers", "torch"])
    assert "--peers torch: no peers here; peer columns" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(args + ["--peers-from", str(tmp_path)])
    assert "no peers.py there" in capsys.readouterr().err


def test_import_lstmc_imports_no_peer():
    """The peers (and torch, onnx) stay out of the library's imports."""
    import subprocess
    code = ("import lstmc, sys; print(sorted(m for m in sys.modules if 'bench' in m or "
            "'peers' in m or 'torch' in m or 'onnx' in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_compare_runs_marks_a_row_outside_the_spread(tmp_path, capsys):
    """benchmarks/compare_runs.py: new / base of the medians per row, and a mark where the
    ratio lies outside both builds' run-to-run spread."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("compare_runs",
                                                  PEERS_DIR / "compare_runs.py")
    compare_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_runs)

    def run(path, same, slow):
        rows = [dict(row="a", threads=1, mode="fwd", lstmc_s=same),
                dict(row="b", threads=2, mode="train", lstmc_s=slow),
                dict(row="c", threads=1, mode="fwd")]              # lstmc failed: no time
        path.write_text(json.dumps({"results": rows}))

    for i, (same, slow) in enumerate([(1.00, 1.0), (1.02, 1.0), (0.99, 1.01)]):
        run(tmp_path / f"base-{i}.json", same, slow)
        run(tmp_path / f"new-{i}.json", same * 1.01, slow * 2)
    compare_runs.main(str(tmp_path / "base-*.json"), str(tmp_path / "new-*.json"))
    out = capsys.readouterr().out
    assert "| a | 1 | fwd | 1e+03 1.02e+03 990 |" in out and "| 1.010 |" in out
    assert "| 2.000 (!) |" in out and "| c |" not in out
    assert "2 figures: geometric mean new / base 1.421" in out
    assert "outside the larger run-to-run spread: 1" in out and "b 2 train: 2.000" in out


@pytest.mark.parametrize("peer,label,module,row_names", [
    ("openvino", "OpenVINO", "openvino", "t_inf,t_var,t_step"),
    ("lstmc.onnx", "lstmc.onnx", None, "t_inf,t_var,t_step,t_gru,t_rnn")])
def test_bench_onnx_model_peers(tiny, capsys, tmp_path, peer, label, module, row_names):
    """OpenVINO runs the ORT peer's ONNX model in float32 and agrees with lstmc, variable
    lengths compared at their valid steps; so does lstmc.onnx, lstmc's ONNX runtime, which
    matches lstmc's native module and is never the best peer (it is lstmc). Inference only."""
    pytest.importorskip("onnx")
    if module:
        pytest.importorskip(module)
    out_json = tmp_path / "out.json"
    assert bench.main(tiny + ["--threads", "1", "--rows", row_names, "--peers", peer,
                              "--json", str(out_json)]) == 0
    captured = capsys.readouterr()
    assert "differ" not in captured.err
    cols, rows = _table(captured.out)
    assert label + " ms" in cols
    for (row, _, mode), cells in rows.items():
        assert "(!)" not in row
        if mode == "train":
            assert cells[label + " ms"] == "—"
        else:
            assert float(cells[label + " ms"]) > 0
        if peer == "lstmc.onnx":
            assert cells["lstmc / best peer"] == ""
    results = json.loads(out_json.read_text())["results"]
    assert {r["row"] for r in results} == set(row_names.split(","))
    if peer == "lstmc.onnx":
        for r in results:
            assert r["max_abs_diff"]["lstmc.onnx"] <= ATOL, r["row"]


# ---------------------------------------------------------------------------------------------
# the ONNX-file rows: lstmc.onnx, ORT and OpenVINO on the same ONNX model

def _onnx_runtimes():
    """The ONNX runtimes installed beside lstmc.onnx (peer names), or a skip."""
    pytest.importorskip("onnx")
    others = [p for p, module in (("ort", "onnxruntime"), ("openvino", "openvino"))
              if _installed(module)]
    if not others:
        pytest.skip("neither ONNX Runtime nor OpenVINO is installed")
    return others


def _onnx_file_table(text):
    """Columns and {threads: {column: cell}} of the ONNX-file table, and the paragraph above
    it."""
    lines = text.splitlines()
    for t in _tables(text):
        if t[0][0] == "threads":
            head = lines.index("| " + " | ".join(t[0]) + " |")
            return t[0], {c[0]: dict(zip(t[0], c)) for c in t[2:]}, lines[head - 2]
    return None, {}, None


def test_bench_onnx_file_rows_and_their_figures(tiny_onnx, capsys, tmp_path):
    """The onnx_file rows time lstmc native, lstmc.onnx and the ONNX runtimes on one ONNX
    file; the ONNX-file table's figures are the ratios of the timings table's lines."""
    others = _onnx_runtimes()
    out_json = tmp_path / "out.json"
    peer_names = others + ["lstmc.onnx"]
    assert bench.main(tiny_onnx + ["--threads", "1,2", "--peers", ",".join(peer_names),
                                   "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    saved = json.loads(out_json.read_text())
    results = saved["results"]
    assert {(r["row"], r["threads"]) for r in results} == {
        (row, n) for row in ("t_onnx_lstm", "t_onnx_gru") for n in (1, 2)}
    labels = {"ort": "ORT", "openvino": "OpenVINO"}
    _, rows = _table(out)
    for r in results:
        assert r["section"] == "onnx_file" and r["mode"] == "fwd" and not r["mismatch"]
        assert r["max_abs_diff"]["lstmc.onnx"] <= ATOL         # the same function as native
        cells = rows[(r["row"], str(r["threads"]), "fwd")]
        assert cells["lstmc.onnx ms"] == bench.fmt_ms(r["lstmc.onnx_s"])
        best = min(others, key=lambda p: r[p + "_s"])
        assert cells["lstmc / best peer"] == "%.3g (%s)" % (r["lstmc_s"] / r[best + "_s"],
                                                           labels[best])
    _, kinds = _summary(out)
    assert set(kinds) == {"LSTM forward, ONNX-file rows", "GRU forward, ONNX-file rows"}

    cols, table, heading = _onnx_file_table(out)
    faster = " / ".join(labels[p] for p in others)
    assert cols == ["threads", "lines", "lstmc.onnx / faster of %s: geo-mean" % faster,
                    "largest", "lstmc.onnx / lstmc native: largest"]
    assert saved["meta"]["date"] in heading and saved["meta"]["machine"] in heading
    assert bench.machine_desc() == saved["meta"]["machine"]
    assert set(table) == {"1", "2", "all"}
    for label, lines in (("1", [r for r in results if r["threads"] == 1]),
                         ("2", [r for r in results if r["threads"] == 2]), ("all", results)):
        vs = [(r["lstmc.onnx_s"] / min(r[p + "_s"] for p in others), r) for r in lines]
        native = [(r["lstmc.onnx_s"] / r["lstmc_s"], r) for r in lines]
        cells = table[label]
        assert cells["lines"] == str(len(lines))
        gmean = np.exp(np.mean(np.log([v for v, _ in vs])))
        assert float(cells[cols[2]]) == pytest.approx(gmean, abs=5.1e-4)
        for col, pairs in (("largest", vs), (cols[4], native)):
            v, r = max(pairs, key=lambda p: p[0])
            assert cells[col] == "%.3f (%s, %d thr)" % (v, r["row"], r["threads"])


def test_onnx_file_summary_of_given_lines():
    """The ONNX-file figures from fixed timings: lstmc.onnx over the faster other runtime
    (geometric mean, largest) and over lstmc native (largest), torch left out."""
    specs = {name: bench.RunPeer(peers.PEERS[name], object())
             for name in ("torch", "ort", "openvino", "lstmc.onnx")}

    def line(row, n, native, own, ort, ov, torch):
        return {"row": row, "threads": n, "section": "onnx_file", "lstmc_s": native,
                "lstmc.onnx_s": own, "ort_s": ort, "openvino_s": ov, "torch_s": torch}
    results = [line("a", 1, 1.0, 1.0, 2.0, 4.0, 0.1), line("b", 1, 2.0, 2.2, 8.0, 4.0, 0.1),
               line("a", 2, 1.0, 0.5, 1.0, 1.0, 0.1),
               dict(line("c", 1, 1.0, 1.0, 1.0, 1.0, 1.0), section="inference")]
    out = bench.onnx_file_summary(results, specs, dict(date="D", machine="M"))
    assert "this run (D) on M" in out[0]
    table = {c[0]: c for c in (
        [x.strip() for x in ln.strip("|").split("|")] for ln in out[4:])}
    assert set(table) == {"1", "2", "all"}
    # 1 thread: 1.0 / 2.0 and 2.2 / 4.0; largest over native: 2.2 / 2.0 on b
    assert table["1"][1:] == ["2", "%.3f" % np.sqrt(0.5 * 0.55), "0.550 (b, 1 thr)",
                              "1.100 (b, 1 thr)"]
    assert table["2"][1:] == ["1", "0.500", "0.500 (a, 2 thr)", "0.500 (a, 2 thr)"]
    assert table["all"][1:] == ["3", "%.3f" % (0.5 * 0.55 * 0.5) ** (1 / 3),
                                "0.550 (b, 1 thr)", "1.100 (b, 1 thr)"]
    assert bench.onnx_file_summary(results[-1:], specs, dict(date="D", machine="M")) == []


def test_bench_contention_section(capsys):
    """`python -m lstmc bench --contention` runs benchmarks/bench_contention.py: one row, every
    condition, lstmc at 1 and 2 threads (and ORT at 2 when installed), a table of positive
    times."""
    from lstmc import bench

    ap = argparse.ArgumentParser()
    bench.add_arguments(ap)
    row = "gru_h512_b1_t25"
    assert bench.run(ap.parse_args(["--contention", "--quick", "--rows", row])) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith(f"| {row} |")]
    assert [ln.split("|")[2].strip() for ln in lines] == [
        "idle", "busy core", "after a threaded call"]
    for ln in lines:
        one, two = (float(v) for v in ln.split("|")[3:5])
        assert one > 0 and two > 0


def test_bench_quantized_section(capsys):
    """`python -m lstmc bench --quantized` runs benchmarks/bench_quantized.py: a row at 1 and 2
    threads, lstmc float32, int8 and bf16 (and the peers installed), with each column's error
    against lstmc float32 within what int8 costs; and a streaming row, in ms per step"""
    from lstmc import bench

    ap = argparse.ArgumentParser()
    bench.add_arguments(ap)
    row = "lstm_h64_b1_t50"
    assert bench.run(ap.parse_args(["--quantized", "--quick", "--rows", row])) == 0
    out = capsys.readouterr().out
    head = [ln for ln in out.splitlines() if ln.startswith("| row |")][0]
    columns = [c.strip() for c in head.split("|")[1:-1]]
    lines = [ln for ln in out.splitlines() if ln.startswith(f"| {row} |")]
    assert [ln.split("|")[2].strip() for ln in lines] == ["1", "2"]
    for ln in lines:
        cells = dict(zip(columns, (c.strip() for c in ln.split("|")[1:-1])))
        assert float(cells["lstmc f32 ms (err)"]) > 0
        for dtype in ("int8", "bf16"):
            ms, err = cells[f"lstmc {dtype} ms (err)"].split()
            assert float(ms) > 0 and 0 < float(err.strip("()")) < 0.05
        assert float(cells["int8 / lstmc f32"]) > 0


def test_bench_quantized_streaming_rows_agree_with_the_forward():
    """A "step_" row streams the same inputs one call a step: every library's stepped output
    is its own forward's (lstmc's step returns its state's buffer, which the row copies)"""
    import tempfile

    sys.path.insert(0, str(PEERS_DIR))
    import bench_quantized as bq

    with tempfile.TemporaryDirectory() as tmp:
        stepped = bq.build("lstm", 8, 16, 2, 5, 1, tmp, stream=True)
        whole = bq.build("lstm", 8, 16, 2, 5, 1, tmp, stream=False)
        for name, (_, call) in stepped.items():
            np.testing.assert_allclose(np.asarray(call()).reshape(5, 2, 16),
                                       np.asarray(whole[name][1]()).reshape(5, 2, 16),
                                       rtol=0, atol=2e-5 if name.startswith("lstmc") else 5e-3)
