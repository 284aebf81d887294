"""Bad input and odd data (docs/spec.md §6), for every cell.

* Every bad call raises the documented exception before any C code runs, with a message that
  names the argument (and, for shapes, the actual shape). The checks shared by every cell are
  parametrised over LSTM, GRU (both variants) and RNN (tanh / relu); those of one cell's
  own arguments (the LSTM's (h0, c0) and proj_size, the RNN's nonlinearity, the cells'
  one-step modules) follow them.
* Convertible input (float16, non-contiguous, read-only, the other float dtype) is converted
  and gives exactly the result of the converted array.
* NaN / Inf are data: they stay inside their batch row, and padding (t >= len_b) never
  influences anything, bit for bit.
* The nastiest calls are repeated in a child process with a timeout: raise, never crash or hang.
"""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lstmc
from helpers import GRU_RNN, make_cell, make_module

CELLS = ["lstm"] + GRU_RNN

# argument names a message may use (ours, PyTorch's)
X_NAME = r"\b(x|input)\b"
H0_NAME = r"\b(h0|h_0|hx|hidden)\b|h0"
C0_NAME = r"\b(c0|c_0|cx|hx|cell)\b|c0"
LEN_NAME = r"lengths"
DOUT_NAME = r"dout|grad"


def shape_re(shape):
    """A regex matching the numbers of ``shape`` in order, whatever the punctuation."""
    return r"\D+".join(str(int(d)) for d in shape)


def assert_message(excinfo, *patterns):
    msg = str(excinfo.value)
    for pat in patterns:
        assert re.search(pat, msg), f"message {msg!r} does not match {pat!r}"


def mk(cell="lstm", I=5, H=7, L=2, bidirectional=True, dtype=np.float32, **kw):
    """A seeded module of ``cell``: by default out (T, B, 14), states (4, B, 7)."""
    lstmc.manual_seed(0)
    return make_module(cell, I, H, dtype=dtype, num_layers=L, bidirectional=bidirectional, **kw)


def states(cell, shape, dtype=np.float32):
    """Zero initial states of ``shape``: h, or (h, c) for the LSTM."""
    h = np.zeros(shape, dtype)
    return (h, np.zeros(shape, np.float32)) if cell == "lstm" else h


# ------------------------------------------------------------------------------------------
# constructor

SHARED_CONSTRUCTOR = [
    (dict(hidden_size=0), "hidden_size"),
    (dict(hidden_size=-3), "hidden_size"),
    (dict(num_layers=0), "num_layers"),
    (dict(num_layers=-1), "num_layers"),
    (dict(dropout=-0.1), "dropout"),
    (dict(dropout=1.0), "dropout"),
    (dict(dropout=1.5), "dropout"),
]
LSTM_CONSTRUCTOR = [
    (dict(proj_size=7), "proj_size"),    # == hidden_size
    (dict(proj_size=9), "proj_size"),    # > hidden_size
    (dict(proj_size=-1), "proj_size"),
]
CONSTRUCTOR = ([(c, kw, arg) for c in CELLS for kw, arg in SHARED_CONSTRUCTOR]
               + [("lstm", kw, arg) for kw, arg in LSTM_CONSTRUCTOR])


@pytest.mark.parametrize("cell, kwargs, arg", CONSTRUCTOR,
                         ids=[f"{c}-{next(iter(kw))}={next(iter(kw.values()))}"
                              for c, kw, _ in CONSTRUCTOR])
def test_constructor_rejects(cell, kwargs, arg):
    args = dict(input_size=5, hidden_size=7)
    args.update(kwargs)
    with pytest.raises(ValueError) as ei:
        make_module(cell, **args)
    assert_message(ei, arg)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.int32, np.complex64, object])
def test_constructor_rejects_non_float_dtype(cell, dtype):
    with pytest.raises((TypeError, ValueError)) as ei:
        make_module(cell, 3, 4, dtype=dtype)
    assert_message(ei, "float32", "float64")


def test_constructor_accepts_edges():
    lstmc.nn.LSTM(5, 7, dropout=0.0)
    lstmc.nn.LSTM(5, 7, num_layers=2, dropout=0.999)
    lstmc.nn.LSTM(5, 7, proj_size=6)
    lstmc.nn.LSTM(1, 1)


@pytest.mark.parametrize("nl", ["sigmoid", "Tanh", "", "gelu"])
def test_bad_nonlinearity(nl):
    with pytest.raises(ValueError) as ei:
        lstmc.nn.RNN(3, 4, nonlinearity=nl)
    assert_message(ei, "nonlinearity")
    with pytest.raises(ValueError) as ei:
        lstmc.nn.RNNCell(3, 4, nonlinearity=nl)
    assert_message(ei, "nonlinearity")
    with pytest.raises((ValueError, TypeError)):
        lstmc.nn.RNN(3, 4, nonlinearity=None)


# ------------------------------------------------------------------------------------------
# x


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(11,), (3, 4, 2, 5), (), (2, 3, 4, 5, 5)])
def test_x_wrong_ndim(cell, shape):
    module = mk(cell)
    with pytest.raises(ValueError) as ei:
        module(np.zeros(shape, np.float32))
    assert_message(ei, X_NAME)
    if len(shape) > 1:
        assert_message(ei, shape_re(shape))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("shape", [(3, 4, 6), (3, 4, 1), (3, 11)])
def test_x_wrong_feature_size(cell, shape, batch_first):
    module = mk(cell, I=5, batch_first=batch_first)
    with pytest.raises(ValueError) as ei:
        module(np.zeros(shape, np.float32))
    assert_message(ei, X_NAME + "|input_size", r"\b5\b", str(shape[-1]))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.complex64, np.complex128,
                                   object])
def test_x_unsupported_dtype(cell, dtype):
    module = mk(cell)
    x = np.zeros((3, 2, 5), dtype=dtype)
    with pytest.raises(TypeError) as ei:
        module(x)
    assert_message(ei, "float32", "float64")


def test_x_list_of_strings_is_type_error():
    lstm = mk(I=1, L=1, bidirectional=False)
    with pytest.raises(TypeError):
        lstm(np.array([[["a"]]]))


def _fwd_bwd(lstm, x, hx=None, lengths=None, dout=None):
    out, (h_n, c_n) = lstm(x, hx, lengths=lengths)
    if dout is None:
        dout = np.ones_like(out)
    lstm.zero_grad()
    dx, (dh0, dc0) = lstm.backward(dout)
    grads = {n: p.grad.copy() for n, p in lstm.named_parameters()}
    return [out, h_n, c_n, dx, dh0, dc0], grads


def _assert_same(r1, r2, what):
    (a1, g1), (a2, g2) = r1, r2
    for name, u, v in zip(("out", "h_n", "c_n", "dx", "dh0", "dc0"), a1, a2):
        assert u.dtype == v.dtype, f"{what}: {name} dtype {u.dtype} vs {v.dtype}"
        np.testing.assert_array_equal(u, v, err_msg=f"{what}: {name}")
    for n in g1:
        np.testing.assert_array_equal(g1[n], g2[n], err_msg=f"{what}: grad {n}")


def test_convertible_inputs_are_converted(float_dtype):
    dtype = float_dtype
    rng = np.random.default_rng(0)
    lstm = mk(dtype=dtype)
    # values exactly representable in float32, so that float32 <-> float64 is lossless
    x = rng.standard_normal((4, 3, 5)).astype(np.float32).astype(dtype)
    h0 = rng.standard_normal((4, 3, 7)).astype(np.float32).astype(dtype)
    c0 = rng.standard_normal((4, 3, 7)).astype(np.float32).astype(dtype)
    base = _fwd_bwd(lstm, x, (h0, c0))

    # the other float dtype, float16 (converted to the module's dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    _assert_same(_fwd_bwd(lstm, x.astype(other), (h0.astype(other), c0.astype(other))), base,
                 f"{np.dtype(other).name} input")
    x16 = x.astype(np.float16)
    _assert_same(_fwd_bwd(lstm, x16, (h0, c0)), _fwd_bwd(lstm, x16.astype(dtype), (h0, c0)),
                 "float16 input")

    # non-contiguous views
    big = np.zeros((8, 3, 10), dtype)
    big[::2, :, ::2] = x
    xv = big[::2, :, ::2]
    assert not xv.flags.c_contiguous
    h0f = np.asfortranarray(h0)
    _assert_same(_fwd_bwd(lstm, xv, (h0f, c0[:, :, :])), base, "non-contiguous x")
    h0neg = np.flip(np.flip(h0, 1).copy(), 1)
    assert h0neg.strides[1] < 0
    _assert_same(_fwd_bwd(lstm, x, (h0neg, c0)), base, "negative-stride h0")

    # read-only
    xr, h0r, c0r = x.copy(), h0.copy(), c0.copy()
    for a in (xr, h0r, c0r):
        a.setflags(write=False)
    _assert_same(_fwd_bwd(lstm, xr, (h0r, c0r)), base, "read-only inputs")

    # read-only / non-contiguous / other-dtype dout and dhx
    out, _ = lstm(x, (h0, c0))
    dout = rng.standard_normal(out.shape).astype(np.float32).astype(dtype)
    lstm.zero_grad()
    ref_dx, (ref_dh0, _) = lstm.backward(dout, (h0, None))
    lstm(x, (h0, c0))
    lstm.zero_grad()
    dout_odd = np.asfortranarray(dout.astype(other))
    dout_odd.setflags(write=False)
    dx, (dh0, _) = lstm.backward(dout_odd, (np.asfortranarray(h0), None))
    np.testing.assert_array_equal(dx, ref_dx)
    np.testing.assert_array_equal(dh0, ref_dh0)

    # batch_first with a transposed (non-contiguous) view of a time-major array
    lstm_bf = mk(dtype=dtype, batch_first=True)
    for (n1, p1), (n2, p2) in zip(lstm_bf.named_parameters(), lstm.named_parameters()):
        p1.data[...] = p2.data
    out_bf, (hn_bf, _) = lstm_bf(x.transpose(1, 0, 2), (h0, c0))
    out_tm, (hn_tm, _) = lstm(x, (h0, c0))
    np.testing.assert_array_equal(out_bf, out_tm.transpose(1, 0, 2))
    np.testing.assert_array_equal(hn_bf, hn_tm)


# ------------------------------------------------------------------------------------------
# hx


@pytest.mark.parametrize("which, h0_shape, c0_shape, pattern", [
    ("h0 layers", (3, 3, 4), (4, 3, 7), H0_NAME),
    ("h0 batch", (4, 2, 4), (4, 3, 7), H0_NAME),
    ("h0 features", (4, 3, 7), (4, 3, 7), H0_NAME),   # proj: h0 has P=4 features, not H
    ("h0 ndim", (4, 12), (4, 3, 7), H0_NAME),
    ("c0 layers", (4, 3, 4), (2, 3, 7), C0_NAME),
    ("c0 batch", (4, 3, 4), (4, 5, 7), C0_NAME),
    ("c0 features", (4, 3, 4), (4, 3, 4), C0_NAME),   # proj: c0 has H=7 features, not P
    ("c0 ndim", (4, 3, 4), (4, 3, 7, 1), C0_NAME),
])
def test_lstm_hx_wrong_shapes(which, h0_shape, c0_shape, pattern):
    lstm = mk(I=5, H=7, L=2, bidirectional=True, proj_size=4)
    x = np.zeros((6, 3, 5), np.float32)
    with pytest.raises(ValueError) as ei:
        lstm(x, (np.zeros(h0_shape, np.float32), np.zeros(c0_shape, np.float32)))
    bad = h0_shape if which.startswith("h0") else c0_shape
    assert_message(ei, pattern, shape_re(bad))


@pytest.mark.parametrize("cell", GRU_RNN)
@pytest.mark.parametrize("h0_shape", [(3, 3, 7), (4, 2, 7), (4, 3, 6), (4, 21), (4, 3, 7, 1)],
                         ids=["layers", "batch", "features", "ndim2", "ndim4"])
def test_h0_wrong_shape(cell, h0_shape):
    module = mk(cell)                                  # h0 must be (4, 3, 7)
    with pytest.raises(ValueError) as ei:
        module(np.zeros((6, 3, 5), np.float32), np.zeros(h0_shape, np.float32))
    assert_message(ei, H0_NAME, shape_re(h0_shape))


def test_hx_batch_mismatch_names_expected_shape():
    lstm = mk(I=5, H=7, L=1, bidirectional=False)
    x = np.zeros((6, 3, 5), np.float32)
    with pytest.raises(ValueError) as ei:
        lstm(x, (np.zeros((1, 2, 7), np.float32), np.zeros((1, 2, 7), np.float32)))
    assert_message(ei, H0_NAME, shape_re((1, 3, 7)), shape_re((1, 2, 7)))


@pytest.mark.parametrize("cell", CELLS)
def test_hx_batched_with_unbatched_x(cell):
    module = mk(cell, I=5, H=7, L=1, bidirectional=False)
    x = np.zeros((6, 5), np.float32)  # unbatched
    with pytest.raises(ValueError) as ei:
        module(x, states(cell, (1, 1, 7)))
    assert_message(ei, H0_NAME)


@pytest.mark.parametrize("cell", ["gru", "rnn_tanh"])
def test_hx_lstm_style_tuple_rejected(cell):
    module = mk(cell)
    h = np.zeros((4, 3, 7), np.float32)
    with pytest.raises((ValueError, TypeError)):
        module(np.zeros((6, 3, 5), np.float32), (h, h))


@pytest.mark.parametrize("cell", CELLS)
def test_hx_wrong_dtype(cell):
    module = mk(cell, I=5, H=7, L=1, bidirectional=False)
    x = np.zeros((6, 3, 5), np.float32)
    with pytest.raises(TypeError) as ei:
        module(x, states(cell, (1, 3, 7), np.int64))
    assert_message(ei, "float32", "float64")


# ------------------------------------------------------------------------------------------
# lengths


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lengths, exc", [
    ([3, 3], ValueError),                    # B - 1 entries
    ([3, 3, 3, 3], ValueError),              # B + 1 entries
    ([[3], [3], [3]], ValueError),           # (B, 1)
    ([3, 7, 1], ValueError),                 # > T
    ([3, -1, 1], ValueError),                # negative
    ([2 ** 62, 1, 1], ValueError),           # huge
    (np.array([3.0, 2.0, 1.0]), TypeError),  # float dtype
    (np.array([3.5, 2.0, 1.0]), TypeError),
])
def test_lengths_rejected(cell, lengths, exc):
    module = mk(cell)
    x = np.zeros((6, 3, 5), np.float32)
    with pytest.raises(exc) as ei:
        module(x, lengths=np.asarray(lengths) if not isinstance(lengths, np.ndarray) else lengths)
    assert_message(ei, LEN_NAME)


def test_lengths_accepted_forms():
    lstm = mk(L=1, bidirectional=False)
    x = np.random.default_rng(0).standard_normal((6, 3, 5)).astype(np.float32)
    base, _ = lstm(x, lengths=np.array([6, 0, 2]))
    for lengths in ([6, 0, 2], np.array([6, 0, 2], np.int32), np.array([6, 0, 2], np.uint8),
                    np.array([6, 0, 2, 9])[:3], np.array([6, 0, 0, 0, 2])[::2]):
        out, _ = lstm(x, lengths=lengths)
        np.testing.assert_array_equal(out, base, err_msg=repr(lengths))


# ------------------------------------------------------------------------------------------
# backward misuse and dout


@pytest.mark.parametrize("cell", CELLS)
def test_backward_before_forward(cell):
    with pytest.raises(RuntimeError):
        mk(cell).backward(np.zeros((6, 3, 14), np.float32))


@pytest.mark.parametrize("cell", CELLS)
def test_backward_after_eval_forward(cell):
    module = mk(cell)
    module.eval()
    out, _ = module(np.zeros((6, 3, 5), np.float32))
    with pytest.raises(RuntimeError):
        module.backward(np.zeros_like(out))


@pytest.mark.parametrize("cell", CELLS)
def test_backward_after_eval_forward_that_followed_a_train_forward(cell):
    """The last forward ran in eval mode: backward must not silently use an older cache."""
    module = mk(cell)
    module(np.ones((4, 2, 5), np.float32))
    module.eval()
    out, _ = module(np.zeros((6, 3, 5), np.float32))
    with pytest.raises(RuntimeError):
        module.backward(np.zeros_like(out))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dout_shape", [(6, 3, 13), (6, 2, 14), (5, 3, 14), (6, 3), (3, 6, 14)])
def test_dout_wrong_shape(cell, dout_shape):
    module = mk(cell)  # out (6, 3, 14)
    module(np.zeros((6, 3, 5), np.float32))
    with pytest.raises(ValueError) as ei:
        module.backward(np.zeros(dout_shape, np.float32))
    assert_message(ei, DOUT_NAME, shape_re(dout_shape))


@pytest.mark.parametrize("cell", CELLS)
def test_dout_wrong_dtype(cell):
    module = mk(cell)
    module(np.zeros((6, 3, 5), np.float32))
    with pytest.raises(TypeError):
        module.backward(np.zeros((6, 3, 14), np.int32))


@pytest.mark.parametrize("dh_shape, dc_shape", [((4, 3, 6), None), (None, (4, 2, 7)),
                                                ((4, 3), (4, 3, 7))])
def test_lstm_dhx_wrong_shape(dh_shape, dc_shape):
    lstm = mk()
    lstm(np.zeros((6, 3, 5), np.float32))
    dh = None if dh_shape is None else np.zeros(dh_shape, np.float32)
    dc = None if dc_shape is None else np.zeros(dc_shape, np.float32)
    with pytest.raises(ValueError) as ei:
        lstm.backward(np.zeros((6, 3, 14), np.float32), (dh, dc))
    assert_message(ei, r"dh|dc|grad|h_n|c_n", shape_re(dh_shape if dh_shape is not None else dc_shape))


@pytest.mark.parametrize("cell", GRU_RNN)
def test_dout_and_dh_n_wrong_shape(cell):
    module = mk(cell)                                   # out (6, 3, 14), h_n (4, 3, 7)
    module(np.zeros((6, 3, 5), np.float32))
    with pytest.raises(ValueError) as ei:
        module.backward(np.zeros((6, 3, 13), np.float32))
    assert_message(ei, r"dout|grad", shape_re((6, 3, 13)))
    with pytest.raises(ValueError) as ei:
        module.backward(np.zeros((6, 3, 14), np.float32), np.zeros((4, 2, 7), np.float32))
    assert_message(ei, shape_re((4, 2, 7)))
    with pytest.raises(TypeError):
        module.backward(np.zeros((6, 3, 14), np.int32))
    # a failed backward leaves the module usable
    dx, dh0 = module.backward(np.zeros((6, 3, 14), np.float32))
    assert dx.shape == (6, 3, 5)


@pytest.mark.parametrize("cell", CELLS)
def test_failed_call_leaves_module_usable(cell):
    module = mk(cell)
    x = np.random.default_rng(1).standard_normal((6, 3, 5)).astype(np.float32)
    out1, _ = module(x)
    with pytest.raises(ValueError):
        module(x, lengths=[1, 2])
    with pytest.raises(ValueError):
        module(np.zeros((6, 3, 4), np.float32))
    out2, _ = module(x)
    np.testing.assert_array_equal(out1, out2)
    module.backward(np.ones_like(out2))


# ------------------------------------------------------------------------------------------
# the one-step cells


@pytest.mark.parametrize("cell", GRU_RNN)
def test_cell_bad_inputs(cell):
    step = make_cell(cell, 5, 7)
    with pytest.raises(RuntimeError):
        step.backward(np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError) as ei:
        step(np.zeros((3, 6), np.float32))
    assert_message(ei, X_NAME + "|input_size")
    with pytest.raises(ValueError):
        step(np.zeros((3, 5), np.float32), np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError):
        step(np.zeros((3, 5), np.float32), np.zeros((3, 6), np.float32))
    with pytest.raises(TypeError):
        step(np.zeros((3, 5), np.int32))
    h1 = step(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError):
        step.backward(np.zeros((3, 6), np.float32))
    step.backward(np.zeros_like(h1))


# ------------------------------------------------------------------------------------------
# NaN / Inf are data


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_nonfinite_stays_in_its_row(float_dtype, bad, use_lengths):
    dtype = float_dtype
    rng = np.random.default_rng(2)
    T, B, I, H, P, L = 6, 4, 5, 7, 3, 2
    lstm = mk(I=I, H=H, L=L, bidirectional=True, proj_size=P, dtype=dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((2 * L, B, P)).astype(dtype)
    c0 = rng.standard_normal((2 * L, B, H)).astype(dtype)
    lengths = np.array([6, 4, 0, 5]) if use_lengths else None
    dout = rng.standard_normal((T, B, 2 * P)).astype(dtype)
    clean, _ = _fwd_bwd(lstm, x, (h0, c0), lengths, dout)

    xb = x.copy()
    xb[2, 1, 3] = bad     # row 1, inside its valid range
    h0b = h0.copy()
    h0b[1, 3, 0] = bad    # row 3's initial state, layer 0 reverse
    dirty, _ = _fwd_bwd(lstm, xb, (h0b, c0), lengths, dout)
    others = [0, 2]
    for name, u, v, bdim in zip(("out", "h_n", "c_n", "dx", "dh0", "dc0"), dirty, clean,
                                (1, 1, 1, 1, 1, 1)):
        np.testing.assert_array_equal(np.take(u, others, axis=bdim), np.take(v, others, axis=bdim),
                                      err_msg=f"{name}: non-finite input leaked into another row")
    if np.isnan(bad):
        assert np.all(np.isnan(dirty[0][2:4, 1, :P])), "row 1's forward output should carry the NaN"


@pytest.mark.parametrize("bad", [np.nan, np.inf, "garbage"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_padding_never_influences_anything(float_dtype, bad, batch_first):
    dtype = float_dtype
    rng = np.random.default_rng(3)
    T, B, I, H, P, L = 6, 4, 5, 7, 3, 2
    lstm = mk(I=I, H=H, L=L, bidirectional=True, proj_size=P, dtype=dtype,
              batch_first=batch_first)
    lengths = np.array([6, 2, 0, 4])
    pad = np.arange(T)[:, None] >= lengths[None, :]  # (T, B)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    x[pad] = 0
    dout = rng.standard_normal((T, B, 2 * P)).astype(dtype)
    dout[pad] = 0
    h0 = rng.standard_normal((2 * L, B, P)).astype(dtype)
    c0 = rng.standard_normal((2 * L, B, H)).astype(dtype)

    def run(xv, dv):
        if batch_first:
            xv, dv = np.ascontiguousarray(xv.swapaxes(0, 1)), np.ascontiguousarray(dv.swapaxes(0, 1))
        return _fwd_bwd(lstm, xv, (h0, c0), lengths, dv)

    clean = run(x, dout)
    xb, db = x.copy(), dout.copy()
    if bad == "garbage":
        xb[pad] = 1e30 * rng.standard_normal((int(pad.sum()), I))
        db[pad] = 1e30 * rng.standard_normal((int(pad.sum()), 2 * P))
    else:
        xb[pad] = bad
        db[pad] = bad
    dirty = run(xb, db)
    _assert_same(dirty, clean, f"padding filled with {bad}")
    for name, p in lstm.named_parameters():
        assert np.all(np.isfinite(p.grad)), name


# ------------------------------------------------------------------------------------------
# the nastiest calls, in a child process: they must raise, never crash or hang

NASTY = textwrap.dedent(r"""
    import numpy as np, lstmc
    lstm = lstmc.nn.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3)
    x = np.zeros((6, 3, 5), np.float32)
    def expect(exc, f):
        try:
            f()
        except exc:
            return
        except Exception as e:
            raise SystemExit(f"wrong exception {type(e).__name__}: {e}")
        raise SystemExit(f"no exception from {f}")
    expect(ValueError, lambda: lstm(x, lengths=np.array([2**62, 1, 1])))
    expect(ValueError, lambda: lstm(x, lengths=np.array([np.iinfo(np.int64).max] * 3)))
    expect(ValueError, lambda: lstm(x, lengths=np.array([-2**62, 1, 1])))
    expect(ValueError, lambda: lstm(x, lengths=np.array([2**32 + 1, 1, 1])))
    expect(ValueError, lambda: lstm(x, lengths=np.array([7, 1, 1], np.uint64)))
    expect(ValueError, lambda: lstm(x, (np.zeros((4, 3, 7), np.float32), np.zeros((4, 3, 7), np.float32))))
    expect(ValueError, lambda: lstm(x, (np.zeros((4, 3000, 3), np.float32), np.zeros((4, 3000, 7), np.float32))))
    expect(ValueError, lambda: lstm(x, (np.zeros((0, 3, 3), np.float32), np.zeros((0, 3, 7), np.float32))))
    expect(ValueError, lambda: lstm(x, (np.zeros((4, 3, 3), np.float32), np.zeros((4, 1, 7), np.float32))))
    expect(ValueError, lambda: lstm(x, (np.zeros(3, np.float32), np.zeros(7, np.float32))))
    expect(ValueError, lambda: lstm(np.zeros((6, 3, 5000), np.float32)))
    lstm(x)
    expect(ValueError, lambda: lstm.backward(np.zeros((6, 3, 7), np.float32)))
    expect(ValueError, lambda: lstm.backward(np.zeros((60, 3, 6), np.float32)))
    expect(ValueError, lambda: lstm.backward(np.zeros((6, 3, 6), np.float32),
                                             (np.zeros((4, 30, 3), np.float32), None)))
    # sizes that would overflow or exhaust memory: any Python exception, never a crash
    for args in [(5, 2**40), (2**40, 5), (5, 2**31)]:
        try:
            lstmc.nn.LSTM(*args)
        except Exception:
            pass
    # odd-but-legal shapes: any outcome but a crash
    for shape in [(0, 3, 5), (6, 0, 5), (0, 0, 5), (0, 5)]:
        try:
            out, _ = lstm(np.zeros(shape, np.float32))
            lstm.backward(np.zeros_like(out))
        except Exception:
            pass
    print("SURVIVED")
""")


def test_nasty_calls_raise_in_a_child_process():
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", NASTY], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert "SURVIVED" in proc.stdout
