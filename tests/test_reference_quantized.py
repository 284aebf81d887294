"""The quantized-inference arithmetic of lstmc.reference (the spec of the int8 and bfloat16
kernels): how values round, what a product sums to and in which order, and how far a
quantized product may stray from the float one."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lstmc import reference as R

SHAPES = st.tuples(st.integers(1, 9), st.integers(1, 41))     # rows, K: size 1 and odd sizes


def _rows(seed, shape, spread=True):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(np.float32)
    if spread:   # rows of very different magnitudes: the scales are per row
        a *= np.float32(10.0) ** rng.integers(-3, 4, size=(shape[0], 1)).astype(np.float32)
    return a


@settings(max_examples=60, deadline=None)
@given(SHAPES, st.integers(0, 2**31))
def test_int8_rows_round_within_half_a_step(shape, seed):
    a = _rows(seed, shape)
    q, scale = R.quantize_int8(a)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and q.shape == a.shape
    assert np.abs(q.astype(int)).max() <= 127
    peak = np.abs(a).max(axis=1)
    np.testing.assert_allclose(scale, peak / 127, rtol=1e-6)
    # each row's largest magnitude becomes +-127, and every value is within half a step
    assert (np.abs(q.astype(int)).max(axis=1) == 127).all()
    err = np.abs(a.astype(np.float64) - q * scale[:, None].astype(np.float64))
    assert (err <= scale[:, None] * (0.5 + 1e-5)).all()


def test_int8_rounds_half_to_even_and_handles_zero_and_non_finite_rows():
    q, scale = R.quantize_int8([[2.0, 1.0, -1.0, 0.0],     # 127 / 2 = 63.5 -> 64, -63.5 -> -64
                                [0.0, 0.0, 0.0, 0.0],
                                [1.0, np.nan, 0.0, 2.0],
                                [np.inf, 1.0, 0.0, 0.0]])
    assert q[0].tolist() == [127, 64, -64, 0]
    assert scale[1] == 0 and not q[1].any()
    assert np.isnan(scale[2]) and np.isnan(scale[3])
    assert not q[2].any() and not q[3].any()


@settings(max_examples=60, deadline=None)
@given(SHAPES, st.integers(1, 9), st.integers(0, 2**31))
def test_int8_product_is_the_exact_integer_sum_scaled(shape, N, seed):
    B, K = shape
    aq, sa = R.quantize_int8(_rows(seed, (B, K)))
    wq, sw = R.quantize_int8(_rows(seed + 1, (N, K)))
    out = R.int8_product(aq, sa, wq, sw)
    exact = np.array([[sum(int(x) * int(y) for x, y in zip(aq[b], wq[n])) for n in range(N)]
                      for b in range(B)])
    expected = (exact.astype(np.float32) * sa[:, None]) * sw[None, :]
    np.testing.assert_array_equal(out, expected)


@settings(max_examples=60, deadline=None)
@given(SHAPES, st.integers(1, 9), st.integers(0, 2**31))
def test_int8_product_stays_within_the_rounding_bound(shape, N, seed):
    """|a W^T - dequantised product| <= sum_k (|a_k| dw + |w_k| da + da dw) with da, dw half
    a step of the row's scale, plus float32 rounding of the result."""
    B, K = shape
    a, w = _rows(seed, (B, K)), _rows(seed + 1, (N, K))
    aq, sa = R.quantize_int8(a)
    wq, sw = R.quantize_int8(w)
    out = R.int8_product(aq, sa, wq, sw).astype(np.float64)
    da, dw = sa.astype(np.float64)[:, None] / 2, sw.astype(np.float64)[:, None] / 2
    bound = (np.abs(a) @ np.ones((K, N))) * dw.T + da * (np.ones((B, K)) @ np.abs(w).T) \
        + K * da * dw.T
    ref = a.astype(np.float64) @ w.astype(np.float64).T
    assert (np.abs(out - ref) <= bound * (1 + 1e-5) + 4e-7 * np.abs(ref) + 1e-30).all()


def test_int8_product_sums_beyond_float32_integers_then_rounds_once():
    """127 * 127 * 4096 = 66,064,384 > 2^24: the integer sum is exact, its float32 the nearest"""
    aq = np.full((1, 4096), 127, np.int8)
    out = R.int8_product(aq, np.float32([1]), aq, np.float32([1]))
    assert out[0, 0] == np.float32(127 * 127 * 4096)
    with pytest.raises(TypeError):
        R.int8_product(aq.astype(np.int16), np.float32([1]), aq, np.float32([1]))


def test_bf16_rounds_half_to_even_flushes_subnormals_keeps_nan_and_inf():
    x = np.float32([1 + 2**-8,        # halfway between 1 and 1 + 2^-7: to 1 (even)
                    1 + 3 * 2**-8,    # halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6
                    1 + 2**-8 + 2**-20,   # just above halfway: up
                    -(1 + 2**-8),
                    1e-40, -1e-40,    # subnormals: zeros of their sign
                    np.inf, -np.inf, np.nan, 0.0])
    y = R.bf16_round(x)
    assert y[:4].tolist() == [1.0, 1 + 2**-6, 1 + 2**-7, -1.0]
    assert y[4] == 0 and not np.signbit(y[4]) and y[5] == 0 and np.signbit(y[5])
    assert y[6] == np.inf and y[7] == -np.inf and np.isnan(y[8]) and y[9] == 0
    assert not (y.view(np.uint32) & 0xFFFF).any()


@pytest.mark.parametrize("other", ["torch", "ml_dtypes"])
def test_bf16_matches_other_libraries_on_normal_values(other):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(100_000) * 10.0 ** rng.integers(-30, 30, 100_000)).astype(
        np.float32)
    x = x[np.abs(x) >= np.finfo(np.float32).tiny]
    if other == "torch":
        torch = pytest.importorskip("torch")
        theirs = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    else:
        ml_dtypes = pytest.importorskip("ml_dtypes")
        theirs = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(R.bf16_round(x), theirs)


def test_bf16_product_adds_each_pairs_odd_term_first():
    """(0*0 + 1*1) = 1 from the first pair; then 1 + (1 * -1) = 0 first and 2^-30 after gives
    2^-30, where the other order would lose 2^-30 against 1 and give 0."""
    out = R.bf16_product([[0.0, 1.0, 2.0**-15, 1.0]], [[0.0, 1.0, 2.0**-15, -1.0]])
    assert out[0, 0] == np.float32(2.0**-30)


@settings(max_examples=60, deadline=None)
@given(SHAPES, st.integers(1, 9), st.integers(0, 2**31))
def test_bf16_product_is_the_float_product_of_rounded_operands(shape, N, seed):
    """Against float64 on the rounded operands: within float32 summation error; against the
    unrounded ones: within bfloat16's relative step on each operand."""
    B, K = shape
    a, w = _rows(seed, (B, K), spread=False), _rows(seed + 1, (N, K), spread=False)
    out = R.bf16_product(a, w).astype(np.float64)
    ar, wr = R.bf16_round(a).astype(np.float64), R.bf16_round(w).astype(np.float64)
    mag = np.abs(ar) @ np.abs(wr).T
    np.testing.assert_array_less(np.abs(out - ar @ wr.T), K * 2.0**-24 * mag + 1e-30)
    mag0 = np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    ref = a.astype(np.float64) @ w.astype(np.float64).T
    np.testing.assert_array_less(np.abs(out - ref), (2 * 2.0**-8 + K * 2.0**-24) * mag0 + 1e-30)


# ---- a quantized model's forward: the float one on quantized weights and activations --------

def _model(cell, I=16, H=32, **options):
    import lstmc
    from helpers import make_module
    lstmc.manual_seed(3)
    m = make_module(cell, I, H, **options)
    return {k: np.asarray(v, np.float64) for k, v in m.state_dict().items()}


FORWARDS = {   # cell: (forward, options, h bounded by 1)
    "lstm": (R.lstm_forward, {}),
    "gru": (R.gru_forward, {}),
    "gru_rb": (R.gru_forward, {"reset_after": False}),
    "rnn_tanh": (R.rnn_forward, {"nonlinearity": "tanh"}),
}


@pytest.mark.parametrize("cell", list(FORWARDS))
@pytest.mark.parametrize("dtype, bound", [("int8", 2e-2), ("bf16", 1e-2)])
def test_quantized_forward_stays_near_the_float_one(cell, dtype, bound):
    """Accuracy of the quantized arithmetic itself, 20 steps, PyTorch's initialisation
    (measured 4e-3 for int8 and 1.4e-3 for bf16 on the LSTM): the bounds leave room for the
    other cells, and fail if a product reads unquantized or wrongly scaled values."""
    forward, options = FORWARDS[cell]
    params = _model(cell)
    x = np.random.default_rng(0).standard_normal((20, 3, 16))
    ref = forward(x, params, **options)[0]
    out = forward(x, R.quantized_params(params, dtype),
                  quantize=R.activation_quantizer(dtype, static_h=True), **options)[0]
    err = np.abs(out - ref).max()
    assert 0 < err <= bound, err


@pytest.mark.parametrize("cell", list(FORWARDS))
def test_quantize_reaches_every_recurrent_product(cell):
    """A quantizer that hands every recurrent product zeros gives the forward of W_hh = 0:
    each cell reads its state through the option (both GRU variants' candidate included),
    and nothing else (GRU's update still mixes in the true h)."""
    forward, options = FORWARDS[cell]
    params = _model(cell)
    x = np.random.default_rng(1).standard_normal((6, 2, 16))
    h0 = np.random.default_rng(2).uniform(-1, 1, (1, 2, 32))
    hx = (h0, np.zeros_like(h0)) if cell == "lstm" else h0
    zero_h = lambda a, role: np.zeros_like(a) if role == "h" else a   # noqa: E731
    no_w_hh = {k: np.zeros_like(v) if k.startswith("weight_hh") else v
               for k, v in params.items()}
    np.testing.assert_array_equal(forward(x, params, hx=hx, quantize=zero_h, **options)[0],
                                  forward(x, no_w_hh, hx=hx, **options)[0])


def test_int8_state_beyond_one_takes_a_scale_per_row():
    """RNN-ReLU's h is unbounded (here up to ~80): the static scale 1/127 would clamp it to
    1, the per-row scale follows it."""
    params = {k: 3 * v for k, v in _model("rnn_relu").items()}
    x = np.random.default_rng(0).standard_normal((20, 3, 16))
    ref = R.rnn_forward(x, params, nonlinearity="relu")[0]
    assert np.abs(ref).max() > 10
    q = R.quantized_params(params, "int8")
    rel = {static: np.abs(R.rnn_forward(x, q, nonlinearity="relu",
                                        quantize=R.activation_quantizer("int8", static))[0]
                          - ref).max() / np.abs(ref).max()
           for static in (False, True)}
    assert rel[False] < 0.2 and rel[True] > 0.5, rel


def test_quantized_params_round_the_matrices_only():
    params = _model("lstm_proj", proj_size=7, peepholes=True)
    for dtype in R.QUANTIZED_DTYPES:
        q = R.quantized_params(params, dtype)
        for name, w in params.items():
            if name.startswith(("weight_ih", "weight_hh")):
                if dtype == "int8":
                    steps = q[name] / (np.abs(w).max(axis=1, keepdims=True) / 127)
                    np.testing.assert_allclose(steps, np.rint(steps), atol=1e-3)
                else:
                    assert not (q[name].astype(np.float32).view(np.uint32) & 0xFFFF).any()
                assert not np.array_equal(q[name], w)
            else:
                np.testing.assert_array_equal(q[name], w)
    with pytest.raises(ValueError):
        R.quantized_params(params, "int4")
    with pytest.raises(ValueError):
        R.activation_quantizer("fp8", True)
