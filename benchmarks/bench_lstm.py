#!/usr/bin/env python
"""Time lstmc.nn.LSTM / GRU / RNN (and PyTorch's nn.LSTM / GRU / RNN) on the benchmark grids.

How to run (from the repo root, after ``pip install -e . --no-build-isolation``)::

    python benchmarks/bench_lstm.py                  # both grids at 1 and 2 threads (~7 min)
    python benchmarks/bench_lstm.py --quick          # 6 rows (9 figures), fewer reps (< 1 min)
    python benchmarks/bench_lstm.py --cells gru,rnn  # only the GRU / RNN rows (~1.5 min)
    python benchmarks/bench_lstm.py --threads 2 --rows inf_h512_b1_t25,trn_h512_b16_t25
    python benchmarks/bench_lstm.py --reps 30 --json /tmp/bench.json
    python benchmarks/bench_lstm.py --no-torch       # lstmc only (also automatic without torch)
    python benchmarks/bench_lstm.py --list           # show the rows of the grid

The Markdown table goes to stdout (paste it into README.md); progress goes to stderr.

Rows come from two grids: the shared LSTM grid (grid.json, below) and ``grid_rnn.json`` beside
this script, whose rows name their cell (``"cell": "gru"`` or ``"rnn"`` with ``"nonlinearity"``).
The cell kind is a property of a row; every row goes through the same timing code, against
torch.nn.LSTM / GRU / RNN respectively. ``--cells`` (default ``lstm,gru,rnn``) picks the kinds.

What is measured, per grid row and thread count (float32, time-major input, fixed random data):

* ``fwd``: forward in eval mode (lstmc ``eval()``; torch ``eval()`` + ``torch.no_grad()``).
* ``train``: one training step: ``zero_grad()``, train-mode forward, backward of a random
  ``dout`` shaped like the output (lstmc ``backward(dout)``; torch ``(out * dout).sum().backward()``
  with ``x.requires_grad`` so that both compute dx).
* ``variable_length`` rows pass ``lengths`` to lstmc and a ``pack_padded_sequence(...,
  enforce_sorted=False)`` / ``pad_packed_sequence`` pair to torch (packing is timed: users pay it).
* Rows of ``inference`` get ``fwd``; rows of ``training``, ``bidirectional`` and
  ``variable_length`` get ``fwd`` and ``train``. ``streaming_step`` rows are not measured yet
  (left for a later issue; the table says so).

Both libraries run in the same process with the same weights (torch's state_dict is loaded into
lstmc), interleaved per row in rounds (lstmc block, then torch block, repeated), so that noise on
this shared machine hits both; each figure is the median of all its timed calls. Each block
starts with 0.1 s of untimed calls (or a 0.1 s pause for slow calls) so that caches and the other
library's spinning worker threads settle. Reps are sized from an untimed probe call to a time
budget per figure (1 s; --quick 0.25 s), at least 5 (3 for calls slower than the budget; --quick 3),
unless ``--reps`` fixes them. Before timing, each row's lstmc and torch forward outputs are
compared (same weights, same data); a row marked (!) differs by more than CHECK_ATOL.
``--json`` also writes the metadata, the sgemm peaks and every timed sample.

GFLOP/s use ``rnn_flops`` below (grid.json "about"; G = 4 LSTM, 3 GRU, 1 RNN gate blocks); "% peak" is lstmc's GFLOP/s over the
float32 numpy matmul (2048^3) peak measured in the same run at the same thread count. Numpy's BLAS
thread count is set for that matmul with threadpoolctl when installed, else through OpenBLAS's
``*_set_num_threads`` via ctypes, else not at all (the output says which). Threads:
``lstmc.set_num_threads(n)`` and ``torch.set_num_threads(n)``; lstmc's own BLAS threading is left
to ``lstmc.set_num_threads``.
"""

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# Prefer the project's shared grid (../shared/bench/grid.json beside the repo), else our copy.
GRID_PATHS = [HERE.parent.parent / "shared" / "bench" / "grid.json", HERE / "grid.json"]
# GRU / RNN rows (the shared grid is LSTM-only); rows without "cell" in grid.json are LSTM.
RNN_GRID_PATHS = [HERE / "grid_rnn.json"]

# Cell kinds: gate blocks G per cell (FLOPs count G*H output rows per gate GEMM).
CELL_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
CELLS = tuple(CELL_GATES)

# Sections measured and the modes each gets.
SECTION_MODES = {
    "inference": ("fwd",),
    "training": ("fwd", "train"),
    "bidirectional": ("fwd", "train"),
    "variable_length": ("fwd", "train"),
}
# --quick: one row per path (B=1 latency, training, bidirectional 2-layer, variable lengths), and
# the modes timed for each (the bidirectional train step is the slowest figure: left out).
# GRU and RNN: a training shape (GEMM path) and a B=1 latency shape (gemv path).
QUICK_ROWS = {"inf_h512_b1_t25": ("fwd",), "trn_h512_b16_t25": ("fwd", "train"),
              "bi_i128_h256_b32_t100_l2": ("fwd",), "varlen_i256_h512_b32_t100": ("fwd", "train"),
              "gru_trn_h512_b16_t25": ("fwd", "train"), "rnn_tanh_inf_h512_b1_t25": ("fwd",)}

# Timing budget per figure (one library, row, mode and thread count): seconds, min/max timed reps,
# and the number of interleaving rounds the reps are split into.
FULL = dict(budget=1.0, min_reps=5, max_reps=100, rounds=3, peak_reps=6)
QUICK = dict(budget=0.25, min_reps=3, max_reps=25, rounds=2, peak_reps=3)
WARM_S = 0.1      # untimed settling at the start of each block (see measure)
PEAK_N = 2048
CHECK_ATOL = 2e-3  # |lstmc - torch| on the forward output, float32, same weights


def rnn_flops(I, H, T, B, num_layers=1, bidirectional=False, mode="fwd", tokens=None,
              cell="lstm"):
    """FLOPs of one LSTM / GRU / RNN call, as grid.json's "about" counts them.

    Forward: 2 * T*B * G*H * (I_l + H) per layer and direction, G = CELL_GATES[cell] (4 LSTM,
    3 GRU, 1 RNN), where layer 0 reads I inputs and layer l > 0 reads D*H (D = 2 if
    bidirectional). A training step (forward + backward) counts 3x the forward. ``tokens``
    replaces T*B for variable-length rows: sum(lengths), the work the sequence actually needs
    (padding is not counted as useful work).
    """
    D = 2 if bidirectional else 1
    G = CELL_GATES[cell]
    n = T * B if tokens is None else tokens
    fwd = sum(D * 2 * n * G * H * ((I if layer == 0 else D * H) + H) for layer in range(num_layers))
    return 3 * fwd if mode == "train" else fwd


def lstm_flops(I, H, T, B, num_layers=1, bidirectional=False, mode="fwd", tokens=None):
    """rnn_flops for an LSTM (kept for callers of the LSTM-only version)."""
    return rnn_flops(I, H, T, B, num_layers, bidirectional, mode, tokens, cell="lstm")


# ---------------------------------------------------------------------------------------------
# grid

def load_grid(path=None, default_paths=GRID_PATHS):
    paths = [Path(path)] if path else default_paths
    for p in paths:
        if p.is_file():
            with open(p) as f:
                return json.load(f), p
    sys.exit("bench_lstm: no %s found (looked at %s)" % (
        paths[-1].name, ", ".join(map(str, paths))))


def parse_lengths(spec, B):
    """grid.json's lengths spec, e.g. "uniform integers in [10, 100], seed 0" (bounds inclusive)."""
    m = re.fullmatch(r"\s*uniform integers in \[(\d+),\s*(\d+)\],\s*seed (\d+)\s*", spec)
    if not m:
        raise ValueError("unknown lengths spec in grid.json: %r" % spec)
    lo, hi, seed = map(int, m.groups())
    return np.random.default_rng(seed).integers(lo, hi + 1, size=B).astype(np.int64)


def grid_cases(grid):
    """Measured rows (dicts) in grid order, and the streaming_step rows (not measured).

    A row's ``cell`` is "lstm" (the default: grid.json has no "cell" field), "gru" or "rnn";
    "rnn" rows also carry ``nonlinearity`` ("tanh" unless given).
    """
    cases = []
    for section, modes in SECTION_MODES.items():
        for row in grid.get(section, []):
            cell = row.get("cell", "lstm")
            if cell not in CELL_GATES:
                raise ValueError("row %s: unknown cell %r (known: %s)"
                                 % (row["name"], cell, ", ".join(CELLS)))
            c = dict(name=row["name"], section=section, I=row["I"], H=row["H"], B=row["B"],
                     T=row["T"], L=row.get("L", 1), bidirectional=bool(row.get("bidirectional")),
                     modes=modes, lengths=None, cell=cell,
                     nonlinearity=row.get("nonlinearity", "tanh") if cell == "rnn" else None)
            if "lengths" in row:
                c["lengths"] = parse_lengths(row["lengths"], c["B"])
            cases.append(c)
    streaming = [dict(s, cell=s.get("cell", "lstm")) for s in grid.get("streaming_step", [])]
    return cases, streaming


def case_flops(c, mode):
    tokens = None if c["lengths"] is None else int(c["lengths"].sum())
    return rnn_flops(c["I"], c["H"], c["T"], c["B"], c["L"], c["bidirectional"], mode, tokens,
                     cell=c["cell"])


# ---------------------------------------------------------------------------------------------
# numpy BLAS threads and the sgemm peak

def _numpy_openblas():
    """ctypes handle and (set, get) function names of numpy's OpenBLAS, or None."""
    npdir = os.path.dirname(np.__file__)
    try:
        with open("/proc/self/maps") as f:
            libs = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln}
    except OSError:
        return None
    for path in sorted(libs, key=lambda p: not p.startswith(npdir)):  # numpy's own first
        lib = ctypes.CDLL(path)
        for sfx in ("64_", "_64", ""):
            for pre in ("scipy_openblas", "openblas"):
                set_, get_ = pre + "_set_num_threads" + sfx, pre + "_get_num_threads" + sfx
                if hasattr(lib, set_) and hasattr(lib, get_):
                    return lib, set_, get_, path
    return None


def blas_thread_method():
    try:
        import threadpoolctl
        return "threadpoolctl %s" % threadpoolctl.__version__
    except ImportError:
        pass
    if _numpy_openblas():
        return "ctypes OpenBLAS set_num_threads (threadpoolctl not installed)"
    return "NOT controlled (threadpoolctl not installed, OpenBLAS not found)"


@contextlib.contextmanager
def numpy_blas_threads(n):
    """Limit numpy's BLAS to n threads inside the block, restore afterwards."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        found = _numpy_openblas()
        if not found:
            yield
            return
        lib, set_, get_, _ = found
        getattr(lib, get_).restype = ctypes.c_int
        old = getattr(lib, get_)()
        getattr(lib, set_)(ctypes.c_int(n))
        try:
            yield
        finally:
            getattr(lib, set_)(ctypes.c_int(old))
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def sgemm_times(n_threads, reps, n=PEAK_N):
    """Per-call seconds of a float32 n^3 numpy matmul at n_threads BLAS threads."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    with numpy_blas_threads(n_threads):
        for _ in range(2):
            np.matmul(a, b, out=c)
        return _time_calls(lambda: np.matmul(a, b, out=c), reps)


# ---------------------------------------------------------------------------------------------
# timing

def _time_calls(fn, n):
    ts = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    finally:
        if gc_was:
            gc.enable()
    return ts


def measure(runners, cfg, reps=None):
    """Interleaved timing. runners: {lib: fn}; returns {lib: [seconds, ...]} (errors: str)."""
    probe, samples, nreps = {}, {}, {}
    for lib, fn in runners.items():
        try:                                # untimed probe (includes one-time setup): sizes reps
            probe[lib] = _time_calls(fn, 1)[0]
        except Exception as e:              # a row the library cannot run yet
            samples[lib] = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            continue
        if reps:
            nreps[lib] = reps
        else:
            n = int(cfg["budget"] / max(probe[lib], 1e-6))
            floor = cfg["min_reps"] if probe[lib] < cfg["budget"] else 3  # calls > budget: 3
            nreps[lib] = max(floor, min(cfg["max_reps"], n))
        samples[lib] = []
    live = [lib for lib in runners if lib in probe]
    rounds = max(1, min(cfg["rounds"], min([nreps[lib] for lib in live] or [1])))
    for r in range(rounds):
        for lib in live:
            n = nreps[lib] // rounds + (1 if r < nreps[lib] % rounds else 0)
            gc.collect()
            # Settle for WARM_S before timing: the other library's worker threads (OpenBLAS
            # spins ~0.1 s after a call) go idle meanwhile; fast calls also re-warm caches.
            if probe[lib] < WARM_S:
                t_end = time.perf_counter() + WARM_S
                while time.perf_counter() < t_end:
                    runners[lib]()
            else:
                time.sleep(WARM_S)
            samples[lib] += _time_calls(runners[lib], n)
    return samples


# ---------------------------------------------------------------------------------------------
# the two libraries (one module per row; its class follows the row's cell)

def _module_kwargs(c):
    kw = dict(num_layers=c["L"], bidirectional=c["bidirectional"])
    if c["cell"] == "rnn":
        kw["nonlinearity"] = c["nonlinearity"]
    return kw


_CLASS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def make_lstmc(lstmc, c, x, dout, state_dict):
    m = getattr(lstmc.nn, _CLASS[c["cell"]])(c["I"], c["H"], dtype=np.float32,
                                              **_module_kwargs(c))
    if state_dict is not None:
        m.load_state_dict(state_dict)
    lengths = c["lengths"]

    def fwd():
        return m(x, lengths=lengths)

    def train():
        m.zero_grad()
        m(x, lengths=lengths)
        m.backward(dout)

    def runner(mode):
        (m.eval if mode == "fwd" else m.train)()
        return fwd if mode == "fwd" else train
    return runner, m


def make_torch(torch, c, x, dout):
    torch.manual_seed(0)
    m = getattr(torch.nn, _CLASS[c["cell"]])(c["I"], c["H"], **_module_kwargs(c))
    xt = torch.from_numpy(x)
    xg = xt.clone().requires_grad_(True)
    doutt = torch.from_numpy(dout)
    T = c["T"]
    rnn = torch.nn.utils.rnn
    lengths = None if c["lengths"] is None else torch.from_numpy(c["lengths"])

    def run(inp):
        if lengths is None:
            return m(inp)[0]
        packed = rnn.pack_padded_sequence(inp, lengths, enforce_sorted=False)
        return rnn.pad_packed_sequence(m(packed)[0], total_length=T)[0]

    def fwd():
        with torch.no_grad():
            return run(xt)

    def train():
        xg.grad = None
        m.zero_grad()
        (run(xg) * doutt).sum().backward()

    def runner(mode):
        (m.eval if mode == "fwd" else m.train)()
        return fwd if mode == "fwd" else train
    return runner, m


# ---------------------------------------------------------------------------------------------
# output

def fmt_ms(s):
    ms = s * 1e3
    return "%.0f" % ms if ms >= 100 else "%.1f" % ms if ms >= 10 else "%.2f" % ms if ms >= 1 \
        else "%.3f" % ms


def markdown(results, streaming, peaks, meta, with_torch):
    out = []
    out.append("lstmc %s vs %s, float32, medians; %s." % (
        meta["lstmc_version"], ("PyTorch %s" % meta["torch_version"]) if with_torch
        else "no PyTorch", meta["machine"]))
    out.append("Run %s, %.0f s; load average before/after %s / %s (another process busy on the "
               "cores makes every figure, above all the 2-thread ones, unreliable)." % (
                   meta["date"], meta["elapsed_s"], meta["load_before"], meta["load_after"]))
    out.append("sgemm peak (numpy float32 %d^3 matmul, median of %d; numpy BLAS threads: %s): "
               "%s." % (
        PEAK_N, meta["peak_reps"], meta["blas_threads"],
        ", ".join("%d thr %.0f GFLOP/s" % (t, p) for t, p in sorted(peaks.items()))))
    out.append("")
    cols = ["row", "threads", "mode", "lstmc ms", "GFLOP/s", "% peak"]
    align = ["---", "---:", "---", "---:", "---:", "---:"]
    if with_torch:
        cols += ["torch ms", "ratio"]
        align += ["---:", "---:"]
    out.append("| " + " | ".join(cols) + " |")
    out.append("|" + "|".join(align) + "|")
    for r in results:
        cells = [r["row"], str(r["threads"]), r["mode"]]
        if r.get("lstmc_error"):
            cells += ["error: " + r["lstmc_error"][:60], "", ""]
        else:
            cells += [fmt_ms(r["lstmc_s"]), "%.1f" % r["lstmc_gflops"],
                      "%.0f %%" % r["lstmc_pct_peak"]]
        if with_torch:
            if r.get("torch_error"):
                cells += ["error: " + r["torch_error"][:60], ""]
            else:
                cells.append(fmt_ms(r["torch_s"]))
                cells.append("%.2f" % (r["lstmc_s"] / r["torch_s"]) if r.get("lstmc_s") else "")
        if r.get("mismatch"):
            cells[0] += " (!)"
        out.append("| " + " | ".join(cells) + " |")
    for s in streaming:
        cells = [s["name"], "—", "step", "not measured yet (streaming_step: later issue)", "", ""]
        out.append("| " + " | ".join(cells + (["", ""] if with_torch else [])) + " |")
    out.append("")
    if all(r.get("cell", "lstm") == "lstm" for r in results):
        flops_note = "forward 2·T·B·4H·(I+H)"
    else:
        flops_note = ("forward 2·T·B·G·H·(I+H) with G = 4 LSTM, 3 GRU (gru_* rows), 1 RNN "
                      "(rnn_* rows)")
    notes = ["GFLOP/s and % peak are lstmc's: " + flops_note + " per layer and direction "
             "(layer > 0 reads D·H inputs), train step = 3x forward; variable-length rows count "
             "sum(lengths) tokens instead of T·B.",
             "fwd = eval-mode forward; train = zero_grad + train-mode forward + backward "
             "(torch: packed sequences for variable-length rows, x.requires_grad so dx is "
             "computed)."]
    if with_torch:
        notes.append("ratio = lstmc ms / torch ms (< 1: lstmc faster); both measured interleaved "
                     "in the same process; single absolute times on a shared machine are noisy.")
        if any(r.get("cell", "lstm") != "lstm" for r in results):
            notes.append("gru_* rows: lstmc.nn.GRU vs torch.nn.GRU (reset_after); rnn_<act>_* "
                         "rows: lstmc.nn.RNN vs torch.nn.RNN with that nonlinearity; same "
                         "weights, same modes as the LSTM rows.")
    if any(r.get("mismatch") for r in results):
        notes.append("(!) lstmc and torch forward outputs differ by more than %g on this row: "
                     "see stderr." % CHECK_ATOL)
    out += ["- " + n for n in notes]
    return "\n".join(out)


def _loadavg():
    try:
        return "%.1f" % os.getloadavg()[0]
    except (OSError, AttributeError):
        return "?"


def machine_desc():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    model = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d logical CPUs" % (model, os.cpu_count() or 0)


# ---------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="subset of rows, fewer reps (< 1 min)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--rows", default=None, help="comma-separated grid row names (default: all)")
    ap.add_argument("--reps", type=int, default=None,
                    help="timed reps per figure (default: sized to a time budget per figure)")
    ap.add_argument("--json", default=None, metavar="OUT.json", help="also write results as JSON")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument("--grid", default=None, help="grid.json path (default: ../shared/bench/"
                    "grid.json beside the repo, else benchmarks/grid.json)")
    ap.add_argument("--grid-rnn", default=None, help="GRU/RNN grid path (default: "
                    "benchmarks/grid_rnn.json)")
    ap.add_argument("--cells", default=",".join(CELLS),
                    help="comma-separated cell kinds to run, of %s (default: all)"
                    % ",".join(CELLS))
    ap.add_argument("--list", action="store_true", help="list the grids' rows and exit")
    args = ap.parse_args(argv)

    cells = [k.strip().lower() for k in args.cells.split(",") if k.strip()]
    bad = [k for k in cells if k not in CELL_GATES]
    if not cells or bad:
        ap.error("--cells wants a comma-separated subset of %s; got %r" % (",".join(CELLS),
                                                                            args.cells))
    grid, grid_path = load_grid(args.grid)
    cases, streaming = grid_cases(grid)
    grid_rnn_path = None
    if any(k != "lstm" for k in cells):
        grid_rnn, grid_rnn_path = load_grid(args.grid_rnn, RNN_GRID_PATHS)
        more, more_streaming = grid_cases(grid_rnn)
        names = {c["name"] for c in cases} | {s["name"] for s in streaming}
        dup = [c["name"] for c in more if c["name"] in names]
        if dup:
            sys.exit("bench_lstm: rows in both grids: %s" % ", ".join(dup))
        cases += more
        streaming += more_streaming
    # Keep the chosen cells; group by cell (LSTM rows keep grid.json's order).
    cases = sorted((c for c in cases if c["cell"] in cells), key=lambda c: CELLS.index(c["cell"]))
    streaming = [s for s in streaming if s["cell"] in cells]
    if args.list:
        for c in cases:
            print("%-28s %-16s %-8s I=%d H=%d B=%d T=%d L=%d%s%s" % (
                c["name"], c["section"], c["cell"] + ("/" + c["nonlinearity"]
                                                      if c["nonlinearity"] else ""),
                c["I"], c["H"], c["B"], c["T"], c["L"],
                " bidirectional" if c["bidirectional"] else "",
                " lengths" if c["lengths"] is not None else ""))
        for s in streaming:
            print("%-28s %-16s (not measured yet)" % (s["name"], "streaming_step"))
        return 0
    cfg = QUICK if args.quick else FULL
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if not threads or min(threads) < 1:
        ap.error("--threads wants positive integers, e.g. 1,2")
    if args.reps is not None and args.reps < 1:
        ap.error("--reps must be >= 1")
    if args.rows:
        wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
        known = {c["name"] for c in cases} | {s["name"] for s in streaming}
        unknown = [r for r in wanted if r not in known]
        if unknown:
            ap.error("unknown rows %s; known (with --cells %s): %s" % (
                ", ".join(unknown), ",".join(cells), ", ".join(sorted(known))))
        cases = [c for c in cases if c["name"] in wanted]
        streaming = [s for s in streaming if s["name"] in wanted]
    elif args.quick:
        quick = [dict(c, modes=QUICK_ROWS[c["name"]]) for c in cases if c["name"] in QUICK_ROWS]
        cases = quick or [next(c for c in cases if c["section"] == s) for s in SECTION_MODES
                          if any(c["section"] == s for c in cases)]

    import lstmc
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("bench_lstm: PyTorch not importable: lstmc columns only", file=sys.stderr)
    with_torch = torch is not None

    meta = dict(lstmc_version=getattr(lstmc, "__version__", "(dev)"),
                lstmc_openmp=bool(lstmc.openmp_enabled()) if hasattr(lstmc, "openmp_enabled")
                else None,
                torch_version=torch.__version__ if with_torch else None,
                numpy_version=np.__version__, python=platform.python_version(),
                machine=machine_desc(), blas_threads=blas_thread_method(),
                grid=str(grid_path), quick=args.quick, threads=threads,
                grid_rnn=str(grid_rnn_path) if grid_rnn_path else None, cells=cells,
                peak_reps=2 * cfg["peak_reps"], date=time.strftime("%Y-%m-%d %H:%M"),
                load_before=_loadavg())
    say = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    say("bench_lstm: grid %s%s; cells %s; %d rows; threads %s; lstmc %s (OpenMP %s)%s; "
        "BLAS threads: %s" % (
        grid_path, " + %s" % grid_rnn_path if grid_rnn_path else "", ",".join(cells),
        len(cases), threads, meta["lstmc_version"], meta["lstmc_openmp"],
        "; torch %s" % torch.__version__ if with_torch else "", meta["blas_threads"]))

    t_start = time.perf_counter()
    # Build every model once (same weights in both libraries) and check they agree.
    built = []
    for c in cases:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((c["T"], c["B"], c["I"]), dtype=np.float32)
        D = 2 if c["bidirectional"] else 1
        dout = rng.standard_normal((c["T"], c["B"], D * c["H"]), dtype=np.float32)
        trun = tm = None
        if with_torch:
            trun, tm = make_torch(torch, c, x, dout)
        sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()} if with_torch else None
        if sd is None:
            lstmc.manual_seed(0)
        lrun, _ = make_lstmc(lstmc, c, x, dout, sd)
        if with_torch:
            try:
                a = np.asarray(lrun("fwd")()[0])
                b = trun("fwd")().numpy()
                err = float(np.max(np.abs(a - b)))
                c["max_abs_diff"] = err
                if not err <= CHECK_ATOL:
                    c["mismatch"] = True
                    say("  WARNING %s: lstmc and torch forward outputs differ: max |diff| %.3g"
                        % (c["name"], err))
            except Exception as e:
                say("  check %s skipped: %s: %s" % (c["name"], type(e).__name__, e))
        built.append((c, lrun, trun))

    results, peaks, peak_samples = [], {}, {}
    for n in threads:
        lstmc.set_num_threads(n)
        if with_torch:
            torch.set_num_threads(n)
        peak_samples[n] = sgemm_times(n, cfg["peak_reps"])
        say("[%d thr] sgemm %.0f GFLOP/s so far"
            % (n, 2 * PEAK_N ** 3 / np.median(peak_samples[n]) / 1e9))
        rows_n = []
        for c, lrun, trun in built:
            for mode in c["modes"]:
                runners = {"lstmc": lrun(mode)}
                if with_torch:
                    runners["torch"] = trun(mode)
                s = measure(runners, cfg, args.reps)
                flops = case_flops(c, mode)
                r = dict(row=c["name"], section=c["section"], cell=c["cell"],
                         nonlinearity=c["nonlinearity"], threads=n, mode=mode, flops=flops,
                         mismatch=bool(c.get("mismatch")), max_abs_diff=c.get("max_abs_diff"))
                for lib, v in s.items():
                    if isinstance(v, str):
                        r[lib + "_error"] = v
                    else:
                        r[lib + "_s"] = float(np.median(v))
                        r[lib + "_gflops"] = flops / r[lib + "_s"] / 1e9
                        r[lib + "_samples_s"] = v
                rows_n.append(r)
                done = "  ".join("%s %s" % (lib, r.get(lib + "_error") or "%s ms (n=%d)" % (
                    fmt_ms(r[lib + "_s"]), len(s[lib]))) for lib in runners)
                say("[%d thr] %-28s %-5s %s   (%.0f s)" % (
                    n, c["name"], mode, done, time.perf_counter() - t_start))
        peak_samples[n] += sgemm_times(n, cfg["peak_reps"])
        peaks[n] = 2 * PEAK_N ** 3 / float(np.median(peak_samples[n])) / 1e9
        for r in rows_n:
            for lib in ("lstmc", "torch"):
                if lib + "_gflops" in r:
                    r[lib + "_pct_peak"] = 100 * r[lib + "_gflops"] / peaks[n]
        results += rows_n

    order = {c["name"]: i for i, c in enumerate(cases)}
    results.sort(key=lambda r: (order[r["row"]], r["mode"] != "fwd", r["threads"]))
    elapsed = time.perf_counter() - t_start
    meta["elapsed_s"] = elapsed
    meta["load_after"] = _loadavg()
    print(markdown(results, streaming, peaks, meta, with_torch))
    say("bench_lstm: done in %.0f s" % elapsed)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, sgemm_peak_gflops=peaks,
                           sgemm_samples_s=peak_samples, results=results,
                           not_measured=[s["name"] for s in streaming]), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
