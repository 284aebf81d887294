"""The quantized sequence forward (lstmc._core.Seq.forward_q, csrc/seq.inc's quantized hooks),
int8 and bf16, against the quantized model of lstmc.reference (quantized_params +
activation_quantizer): LSTM, GRU and RNN, layers, directions, lengths, initial states; and the
same bits on every kernel (bf16: but AMX's), every thread count and every plan (team,
panels, rows, split directions)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lstmc
from lstmc import _core, nn
from lstmc import reference as R

CELLS = {"lstm": (nn.LSTM, 4, R.lstm_forward), "gru": (nn.GRU, 3, R.gru_forward),
         "rnn": (nn.RNN, 1, R.rnn_forward)}


def _module(cell, I, H, L=1, bidirectional=False, seed=0):
    lstmc.manual_seed(seed)
    return CELLS[cell][0](I, H, num_layers=L, bidirectional=bidirectional).eval()


def _weights(m, seq, dtype):
    """The module's W_ih / W_hh quantized per row (reference.quantize_int8) or rounded to
    bfloat16 (reference.bf16_round), and packed"""
    G = CELLS[type(m).__name__.lower()][1]
    sd = {k: np.asarray(v) for k, v in m.state_dict().items()}
    qw = np.zeros(seq.qsize(dtype), np.uint8)
    for l in range(m.num_layers):
        for d in range(2 if m.bidirectional else 1):
            sfx = "_l%d%s" % (l, "_reverse" if d else "")
            for which, name in ((0, "weight_ih"), (1, "weight_hh")):
                w = sd[name + sfx]
                if dtype == "int8":
                    packed = _core.q8_pack(*R.quantize_int8(w), m.hidden_size, G)
                else:
                    bits = (R.bf16_round(w).view(np.uint32) >> 16).astype(np.uint16)
                    packed = _core.bf16_pack(bits, m.hidden_size, G)
                at = seq.qoffset(dtype, l, d, which)
                qw[at:at + packed.size] = packed
    return qw


def _forward_q(m, x, dtype, h0=None, c0=None, lengths=None):
    """y (T, B, D H) with zeros past each row's length, and h_n, of the quantized forward;
    rows sorted longest first as the kernels take them (callers pass sorted lengths)."""
    T, B, _ = x.shape
    L, D, H = m.num_layers, 2 if m.bidirectional else 1, m.hidden_size
    Hout = getattr(m, "proj_size", 0) or H
    lens = [T] * B if lengths is None else list(lengths)
    assert lens == sorted(lens, reverse=True)
    seq = m._engine.spec.seq(T, B, lens)
    qw = _weights(m, seq, dtype)
    # packed rows: step t's running rows, one after another
    xp = np.concatenate([x[t, :sum(1 for n in lens if n > t)] for t in range(T)])
    N = len(xp)
    y = np.empty(N * D * Hout, np.float32)
    hn = np.empty(L * D * B * Hout, np.float32)
    cn = np.empty(L * D * B * H, np.float32) if isinstance(m, nn.LSTM) else None
    # NaN in every float of the workspace: a value read before it is written shows
    scratch = np.full(seq.scratch_size_q(dtype), np.nan, np.float32)
    flat = lambda a: None if a is None else np.ascontiguousarray(a, np.float32).reshape(-1)
    seq.forward_q(y, hn, cn, flat(xp), flat(h0), flat(c0), m._flat, qw, dtype, scratch)
    out = np.zeros((T, B, D * Hout), np.float32)
    y = y.reshape(N, D * Hout)
    at = 0
    for t in range(T):
        n = sum(1 for v in lens if v > t)
        out[t, :n] = y[at:at + n]
        at += n
    return out, hn.reshape(L * D, B, Hout)


def _reference(m, x, dtype, hx=None, lengths=None):
    """The reference's quantized model; int8's h with the static scale 1/127 for the cells
    whose h stays within [-1, 1], per row and step for RNN-ReLU and projections"""
    cell = type(m).__name__.lower()
    params = R.quantized_params({k: np.asarray(v, np.float64)
                                 for k, v in m.state_dict().items()}, dtype)
    kw = {"nonlinearity": m.nonlinearity} if cell == "rnn" else {}
    if getattr(m, "proj_size", 0):
        kw["proj_size"] = m.proj_size
    static_h = "proj_size" not in kw and kw.get("nonlinearity") != "relu"
    y, hn = CELLS[cell][2](x.astype(np.float64), params, num_layers=m.num_layers,
                           bidirectional=m.bidirectional, hx=hx, lengths=lengths,
                           quantize=R.activation_quantizer(dtype, static_h), **kw)[:2]
    return y, (hn[0] if cell == "lstm" else hn)


def _close_to_reference(got, want):
    """Within float32 rounding of the float64 reference, but for the rare unit whose
    rint(127 h) (int8) or bfloat16 rounding lands on the other side of a half in float32 than
    in float64 (one step of h in one unit, which moves the later steps a little)"""
    err = np.abs(got - want)
    assert np.median(err) < 1e-6
    assert err.max() < 5e-3


@pytest.mark.parametrize("dtype, bound", [("int8", 0.05), ("bf16", 0.02)])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("shape", [(5, 17, 2, 3, 1, False), (16, 32, 3, 7, 2, True),
                                   (64, 96, 1, 12, 1, False), (8, 40, 19, 5, 1, True)])
def test_matches_the_quantized_reference(cell, shape, dtype, bound):
    I, H, B, T, L, bi = shape
    m = _module(cell, I, H, L, bi)
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    got, hn = _forward_q(m, x, dtype)
    want, want_hn = _reference(m, x, dtype)
    _close_to_reference(got, want)
    _close_to_reference(hn, want_hn)
    # and within the scheme's error of the float model
    assert np.abs(got - np.asarray(m(x)[0])).max() < bound


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
@pytest.mark.parametrize("make", [
    lambda: nn.RNN(12, 30, num_layers=2, nonlinearity="relu"),
    lambda: nn.LSTM(12, 24, proj_size=9, num_layers=2, bidirectional=True)])
def test_unbounded_h_runs_with_a_scale_per_row_and_step(make, dtype):
    """RNN-ReLU's h and a projection's W_hr r are not bounded by 1: int8 quantizes h per row
    at every step (bf16 has no scale to outgrow), on one thread and on two (where a row's
    scale needs every thread's columns), from zeros and from a large h0"""
    lstmc.manual_seed(0)
    m = make().eval()
    rng = np.random.default_rng(5)
    x = (3 * rng.standard_normal((9, 3, 12))).astype(np.float32)
    L, D = m.num_layers, 2 if m.bidirectional else 1
    Hout = getattr(m, "proj_size", 0) or m.hidden_size
    h0 = rng.uniform(-4, 4, (L * D, 3, Hout)).astype(np.float32)
    c0 = rng.standard_normal((L * D, 3, m.hidden_size)).astype(np.float32) \
        if isinstance(m, nn.LSTM) else None
    before = lstmc.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            lstmc.set_num_threads(threads)
            for start in (None, h0):
                got, hn = _forward_q(m, x, dtype, start, None if start is None else c0)
                hx = None if start is None else (start, c0) if c0 is not None else start
                want, want_hn = _reference(m, x, dtype, hx)
                _close_to_reference(got, want)
                _close_to_reference(hn, want_hn)
                outs.append(got)
    finally:
        lstmc.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[2])
    np.testing.assert_array_equal(outs[1], outs[3])


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_lengths_and_initial_states(cell, dtype):
    I, H, B, T, L = 6, 20, 4, 6, 2
    m = _module(cell, I, H, L, True)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = [6, 5, 3, 1]
    h0 = rng.uniform(-1, 1, (2 * L, B, H)).astype(np.float32)
    c0 = rng.standard_normal((2 * L, B, H)).astype(np.float32) if cell == "lstm" else None
    got, hn = _forward_q(m, x, dtype, h0, c0, lengths)
    hx = (h0, c0) if cell == "lstm" else h0
    want, want_hn = _reference(m, x, dtype, hx, np.array(lengths))
    _close_to_reference(got, want)
    _close_to_reference(hn, want_hn)


@settings(max_examples=15, deadline=None)
@given(cell=st.sampled_from(list(CELLS)), I=st.integers(1, 40), H=st.integers(1, 70),
       B=st.integers(1, 20), T=st.integers(1, 9), bi=st.booleans(), seed=st.integers(0, 99))
def test_same_bits_on_every_kernel_and_thread_count(cell, I, H, B, T, bi, seed):
    """int8: row scales are whole-row maxima and the sums exact, so neither the kernel nor
    the way a team shares the work (one thread; two: panels, rows or split directions) moves
    a bit. bf16: every kernel but AMX sums in the reference's order, so likewise; AMX (from
    4 rows) stays within bf16 rounding of them"""
    m = _module(cell, I, H, 1, bi, seed)
    x = np.random.default_rng(seed).standard_normal((T, B, I)).astype(np.float32)
    before = lstmc.get_num_threads()
    for dtype, force, kernels in (("int8", _core._set_q8_kernel,
                                   ("c", "avx2", "avx_vnni", "avx512_vnni", "amx", "wide_avx2")),
                                  ("bf16", _core._set_bf16_kernel,
                                   ("c", "avx2", "avx512_bf16", "wide_avx2"))):
        outs = []
        try:
            for kernel in kernels:
                force(kernel)
                for threads in (1, 2):
                    lstmc.set_num_threads(threads)
                    outs.append(_forward_q(m, x, dtype))
            if dtype == "bf16":
                force("amx")
                amx = _forward_q(m, x, dtype)
        finally:
            force("auto")
            lstmc.set_num_threads(before)
        for y, hn in outs[1:]:
            np.testing.assert_array_equal(y, outs[0][0])
            np.testing.assert_array_equal(hn, outs[0][1])
    assert np.abs(amx[0] - outs[0][0]).max() < 2e-2


def test_the_rows_panels_and_split_plans_give_one_threads_bits():
    """On two threads B32 at H256 runs the rows plan, B4 at H512 the panels plan, and a
    bidirectional H128 B1 one direction a thread"""
    for cell, I, H, B, bi in (("lstm", 32, 256, 32, False), ("gru", 64, 512, 4, False),
                              ("lstm", 16, 128, 1, True)):
        m = _module(cell, I, H, 1, bi)
        x = np.random.default_rng(3).standard_normal((5, B, I)).astype(np.float32)
        before = lstmc.get_num_threads()
        for dtype in ("int8", "bf16"):
            try:
                lstmc.set_num_threads(1)
                one = _forward_q(m, x, dtype)
                lstmc.set_num_threads(2)
                two = _forward_q(m, x, dtype)
            finally:
                lstmc.set_num_threads(before)
            np.testing.assert_array_equal(one[0], two[0])


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_a_nan_input_row_gives_nan_not_a_number_of_the_other_rows(dtype):
    m = _module("lstm", 4, 24)
    x = np.random.default_rng(4).standard_normal((3, 2, 4)).astype(np.float32)
    x[1, 0, 2] = np.nan
    y, _ = _forward_q(m, x, dtype)
    assert np.isfinite(y[0]).all() and np.isnan(y[1:, 0]).all() and np.isfinite(y[:, 1]).all()
    f = np.asarray(m(x)[0])
    assert (np.isnan(y) == np.isnan(f)).all()


@pytest.mark.parametrize("dtype, make", [
    ("int8", lambda: nn.GRU(4, 8, reset_after=False)),
    ("bf16", lambda: nn.GRU(4, 8, reset_after=False))])
def test_cells_without_a_quantized_path_are_refused(dtype, make):
    m = make().eval()
    seq = m._engine.spec.seq(2, 1, [2])
    D, H = 1, m.hidden_size
    Hout = getattr(m, "proj_size", 0) or H
    with pytest.raises(ValueError, match=dtype):
        seq.forward_q(np.empty(2 * Hout, np.float32), np.empty(Hout, np.float32),
                      np.empty(H, np.float32) if isinstance(m, nn.LSTM) else None,
                      np.zeros(8, np.float32), None, None, m._flat,
                      np.zeros(seq.qsize(dtype), np.uint8), dtype,
                      np.empty(seq.scratch_size_q(dtype), np.float32))


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_bad_quantized_buffers_are_refused(dtype):
    m = _module("gru", 4, 8)
    seq = m._engine.spec.seq(2, 1, [2])
    args = [np.empty(16, np.float32), np.empty(8, np.float32), None, np.zeros(8, np.float32),
            None, None, m._flat]
    scratch = np.empty(seq.scratch_size_q(dtype), np.float32)
    size = seq.qsize(dtype)
    with pytest.raises(ValueError, match="qsize"):
        seq.forward_q(*args, np.zeros(size - 1, np.uint8), dtype, scratch)
    with pytest.raises(ValueError, match="qsize"):
        seq.forward_q(*args, np.zeros(size, np.int8), dtype, scratch)
    with pytest.raises(ValueError, match="scratch"):
        seq.forward_q(*args, np.zeros(size, np.uint8), dtype, scratch[:-1])
    with pytest.raises(ValueError, match="dtype"):
        seq.forward_q(*args, np.zeros(size, np.uint8), "int4", scratch)
    with pytest.raises(ValueError):
        seq.qoffset(dtype, 1, 0, 0)


@pytest.mark.parametrize("make, B", [(lambda: nn.RNN(64, 512, nonlinearity="relu"), 4),
                                     (lambda: nn.RNN(64, 256, nonlinearity="relu"), 32),
                                     (lambda: nn.LSTM(64, 512, proj_size=200), 2)])
def test_a_scale_per_row_and_step_gives_one_threads_bits_on_a_team(make, B):
    """Large enough for two threads to share the units (panels), or the rows: each row's
    scale is still its whole row's"""
    lstmc.manual_seed(4)
    m = make().eval()
    x = np.random.default_rng(6).standard_normal((5, B, 64)).astype(np.float32)
    before = lstmc.get_num_threads()
    try:
        lstmc.set_num_threads(1)
        one = _forward_q(m, x, "int8")
        lstmc.set_num_threads(2)
        two = _forward_q(m, x, "int8")
    finally:
        lstmc.set_num_threads(before)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    want, _ = _reference(m, x, "int8")
    _close_to_reference(one[0], want)


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_amx_configuration_does_not_outlive_a_call(dtype):
    """A call keeps its AMX tile configuration from product to product (csrc/internal.h
    lstmc_amx_configure) and releases the tiles on every thread before it returns: other AMX
    code on the thread between calls may load its own configuration or release the tiles, so
    a configuration trusted from an earlier call would be wrong. After calls of several tile
    row counts (batch 5 and 21, projections of 5 to 189 rows), on one and two threads, this
    thread holds none; the bits do not depend on what ran before."""
    if _core.q8_kernel_for() != "amx" or _core.bf16_kernel_for() != "amx":
        pytest.skip("this CPU (or OS) gives lstmc no AMX")
    lstmc.manual_seed(3)
    m = nn.LSTM(64, 64)
    m.eval()
    q = lstmc.quantize(m, dtype)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((T, B, 64)).astype(np.float32) for T, B in ((1, 5), (9, 5), (9, 21))]
    first = [q(x)[0].copy() for x in xs]
    before = lstmc.get_num_threads()
    try:
        for threads in (1, 2):
            lstmc.set_num_threads(threads)
            for x, want in list(zip(xs, first)) * 2:
                np.testing.assert_array_equal(q(x)[0], want)
                assert _core._amx_configured_rows() == 0
    finally:
        lstmc.set_num_threads(before)
