"""The int8 sequence forward (lstmc._core.Seq.forward_q8, csrc/seq.inc's int8 hooks) against
the quantized model of lstmc.reference (quantized_params + activation_quantizer): LSTM, GRU
and RNN-tanh, layers, directions, lengths, initial states; and the same bits on every int8
kernel, every thread count and every plan (team, panels, rows, split directions)."""
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


def _q8_weights(m, seq):
    """The module's W_ih / W_hh quantized per row (reference.quantize_int8) and packed"""
    G = CELLS[type(m).__name__.lower()][1]
    sd = {k: np.asarray(v) for k, v in m.state_dict().items()}
    q8 = np.zeros(seq.q8_size, np.uint8)
    for l in range(m.num_layers):
        for d in range(2 if m.bidirectional else 1):
            sfx = "_l%d%s" % (l, "_reverse" if d else "")
            for which, name in ((0, "weight_ih"), (1, "weight_hh")):
                packed = _core.q8_pack(*R.quantize_int8(sd[name + sfx]), m.hidden_size, G)
                at = seq.q8_offset(l, d, which)
                q8[at:at + packed.size] = packed
    return q8


def _forward_q8(m, x, h0=None, c0=None, lengths=None):
    """y (T, B, D H) with zeros past each row's length, and h_n, of the int8 forward; rows
    sorted longest first as the kernels take them (callers pass sorted lengths)."""
    T, B, _ = x.shape
    L, D, H = m.num_layers, 2 if m.bidirectional else 1, m.hidden_size
    lens = [T] * B if lengths is None else list(lengths)
    assert lens == sorted(lens, reverse=True)
    seq = m._engine.spec.seq(T, B, lens)
    q8 = _q8_weights(m, seq)
    # packed rows: step t's running rows, one after another
    xp = np.concatenate([x[t, :sum(1 for n in lens if n > t)] for t in range(T)])
    N = len(xp)
    y = np.empty(N * D * H, np.float32)
    hn = np.empty(L * D * B * H, np.float32)
    cn = np.empty(L * D * B * H, np.float32) if isinstance(m, nn.LSTM) else None
    # NaN in every float of the workspace: a value read before it is written shows
    scratch = np.full(seq.scratch_size_q8, np.nan, np.float32)
    flat = lambda a: None if a is None else np.ascontiguousarray(a, np.float32).reshape(-1)
    seq.forward_q8(y, hn, cn, flat(xp), flat(h0), flat(c0), m._flat, q8, scratch)
    out = np.zeros((T, B, D * H), np.float32)
    y = y.reshape(N, D * H)
    at = 0
    for t in range(T):
        n = sum(1 for v in lens if v > t)
        out[t, :n] = y[at:at + n]
        at += n
    return out, hn.reshape(L * D, B, H)


def _reference(m, x, hx=None, lengths=None):
    cell = type(m).__name__.lower()
    params = R.quantized_params({k: np.asarray(v, np.float64)
                                 for k, v in m.state_dict().items()}, "int8")
    y, hn = CELLS[cell][2](x.astype(np.float64), params, num_layers=m.num_layers,
                           bidirectional=m.bidirectional, hx=hx, lengths=lengths,
                           quantize=R.activation_quantizer("int8", True))[:2]
    return y, (hn[0] if cell == "lstm" else hn)


def _close_to_reference(got, want):
    """Within float32 rounding of the float64 reference, but for the rare unit whose
    rint(127 h) lands on the other side of a half in float32 than in float64 (one step of
    1/127 in one unit of h, which moves the later steps a little)"""
    err = np.abs(got - want)
    assert np.median(err) < 1e-6
    assert err.max() < 5e-3


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("shape", [(5, 17, 2, 3, 1, False), (16, 32, 3, 7, 2, True),
                                   (64, 96, 1, 12, 1, False), (8, 40, 19, 5, 1, True)])
def test_matches_the_quantized_reference(cell, shape):
    I, H, B, T, L, bi = shape
    m = _module(cell, I, H, L, bi)
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    got, hn = _forward_q8(m, x)
    want, want_hn = _reference(m, x)
    _close_to_reference(got, want)
    _close_to_reference(hn, want_hn)
    # and within the int8 scheme's error of the float model
    assert np.abs(got - np.asarray(m(x)[0])).max() < 0.05


@pytest.mark.parametrize("cell", list(CELLS))
def test_lengths_and_initial_states(cell):
    I, H, B, T, L = 6, 20, 4, 6, 2
    m = _module(cell, I, H, L, True)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = [6, 5, 3, 1]
    h0 = rng.uniform(-1, 1, (2 * L, B, H)).astype(np.float32)
    c0 = rng.standard_normal((2 * L, B, H)).astype(np.float32) if cell == "lstm" else None
    got, hn = _forward_q8(m, x, h0, c0, lengths)
    hx = (h0, c0) if cell == "lstm" else h0
    want, want_hn = _reference(m, x, hx, np.array(lengths))
    _close_to_reference(got, want)
    _close_to_reference(hn, want_hn)


@settings(max_examples=15, deadline=None)
@given(cell=st.sampled_from(list(CELLS)), I=st.integers(1, 40), H=st.integers(1, 70),
       B=st.integers(1, 20), T=st.integers(1, 9), bi=st.booleans(), seed=st.integers(0, 99))
def test_same_bits_on_every_kernel_and_thread_count(cell, I, H, B, T, bi, seed):
    """Row scales are whole-row maxima and the sums exact, so neither the kernel nor the
    way a team shares the work (one thread; two: panels, rows or split directions) moves a
    bit"""
    m = _module(cell, I, H, 1, bi, seed)
    x = np.random.default_rng(seed).standard_normal((T, B, I)).astype(np.float32)
    outs, before = [], lstmc.get_num_threads()
    try:
        for kernel in ("c", "avx2", "avx512_vnni", "amx"):
            _core._set_q8_kernel(kernel)
            for threads in (1, 2):
                lstmc.set_num_threads(threads)
                outs.append(_forward_q8(m, x))
    finally:
        _core._set_q8_kernel("auto")
        lstmc.set_num_threads(before)
    for y, hn in outs[1:]:
        np.testing.assert_array_equal(y, outs[0][0])
        np.testing.assert_array_equal(hn, outs[0][1])


def test_the_rows_panels_and_split_plans_give_one_threads_bits():
    """On two threads B32 at H256 runs the rows plan, B4 at H512 the panels plan, and a
    bidirectional H128 B1 one direction a thread"""
    for cell, I, H, B, bi in (("lstm", 32, 256, 32, False), ("gru", 64, 512, 4, False),
                              ("lstm", 16, 128, 1, True)):
        m = _module(cell, I, H, 1, bi)
        x = np.random.default_rng(3).standard_normal((5, B, I)).astype(np.float32)
        before = lstmc.get_num_threads()
        try:
            lstmc.set_num_threads(1)
            one = _forward_q8(m, x)
            lstmc.set_num_threads(2)
            two = _forward_q8(m, x)
        finally:
            lstmc.set_num_threads(before)
        np.testing.assert_array_equal(one[0], two[0])


def test_a_nan_input_row_gives_nan_not_a_number_of_the_other_rows():
    m = _module("lstm", 4, 24)
    x = np.random.default_rng(4).standard_normal((3, 2, 4)).astype(np.float32)
    x[1, 0, 2] = np.nan
    y, _ = _forward_q8(m, x)
    assert np.isfinite(y[0]).all() and np.isnan(y[1:, 0]).all() and np.isfinite(y[:, 1]).all()
    f = np.asarray(m(x)[0])
    assert (np.isnan(y) == np.isnan(f)).all()


@pytest.mark.parametrize("make", [lambda: nn.RNN(4, 8, nonlinearity="relu"),
                                  lambda: nn.LSTM(4, 8, proj_size=3),
                                  lambda: nn.GRU(4, 8, reset_after=False)])
def test_cells_without_a_static_h_scale_are_refused(make):
    m = make().eval()
    seq = m._engine.spec.seq(2, 1, [2])
    D, H = 1, m.hidden_size
    Hout = getattr(m, "proj_size", 0) or H
    with pytest.raises(ValueError, match="int8"):
        seq.forward_q8(np.empty(2 * Hout, np.float32), np.empty(Hout, np.float32),
                       np.empty(H, np.float32) if isinstance(m, nn.LSTM) else None,
                       np.zeros(8, np.float32), None, None, m._flat,
                       np.zeros(seq.q8_size, np.uint8),
                       np.empty(seq.scratch_size_q8, np.float32))


def test_bad_q8_buffers_are_refused():
    m = _module("gru", 4, 8)
    seq = m._engine.spec.seq(2, 1, [2])
    args = [np.empty(16, np.float32), np.empty(8, np.float32), None, np.zeros(8, np.float32),
            None, None, m._flat]
    scratch = np.empty(seq.scratch_size_q8, np.float32)
    with pytest.raises(ValueError, match="q8_size"):
        seq.forward_q8(*args, np.zeros(seq.q8_size - 1, np.uint8), scratch)
    with pytest.raises(ValueError, match="q8_size"):
        seq.forward_q8(*args, np.zeros(seq.q8_size, np.int8), scratch)
    with pytest.raises(ValueError, match="scratch"):
        seq.forward_q8(*args, np.zeros(seq.q8_size, np.uint8), scratch[:-1])
    with pytest.raises(ValueError):
        seq.q8_offset(1, 0, 0)
