"""The bfloat16 product kernels (csrc/quant_bf16.c through lstmc._core.bf16_*) against the
arithmetic of lstmc.reference (bf16_round, bf16_product): the rounding and every kernel this
CPU runs, each forced. The portable, AVX2 and AVX-512 BF16 kernels (and the AVX-512 BF16
tiles built for AVX2) sum in the reference's order and give its bits; AMX sums a 32-k block
its own way, so it is held to float32 accumulation error of the exact sum of the rounded
operands."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import runnable_kernels
from lstmc import _core
from lstmc import reference as R

KERNELS = ("c", "avx2", "avx512_bf16", "amx", "wide_avx2")
EXACT = ("c", "avx2", "avx512_bf16", "wide_avx2")


RUNNABLE = runnable_kernels(_core._set_bf16_kernel, _core.bf16_kernel_for, KERNELS)


@pytest.fixture(params=RUNNABLE)
def kernel(request):
    _core._set_bf16_kernel(request.param)
    yield request.param
    _core._set_bf16_kernel("auto")


def _bits(a):
    """reference.bf16_round's values as the kernels' uint16 bits"""
    return (R.bf16_round(a).view(np.uint32) >> 16).astype(np.uint16)


def _product(x, W, H, G):
    """(kernel's product, reference's product) of float rows x and float weights W"""
    packed = _core.bf16_pack(_bits(W), H, G)
    ab = _core.bf16_round(x)
    return _core.bf16_product(ab, packed, x.shape[1], H, G), R.bf16_product(x, W)


def _check(kernel, got, x, W, want):
    if kernel in EXACT:
        np.testing.assert_array_equal(got, want)
        return
    # AMX: within float32 accumulation of the exact sum (products exact, K roundings)
    a, w = R.bf16_round(x).astype(np.float64), R.bf16_round(W).astype(np.float64)
    exact = a @ w.T
    bound = (x.shape[1] + 1) * 2.0**-24 * (np.abs(a) @ np.abs(w).T)
    assert (np.abs(got - exact) <= bound).all(), np.abs(got - exact).max()


def test_the_portable_kernel_always_runs():
    assert "c" in RUNNABLE
    _core._set_bf16_kernel("amx")
    try:
        assert _core.bf16_kernel_for() in RUNNABLE
    finally:
        _core._set_bf16_kernel("auto")


def test_rounding_matches_the_reference_bits():
    """half-way cases both ways, subnormals to signed zero, infinities, NaN stays NaN, the
    largest values that round to infinity, and an odd K's zero padding"""
    f = np.float32
    specials = np.array([0.0, -0.0, 1.0, -1.0, 1.00390625, 1.01171875, 1.0 + 2**-8 + 2**-20,
                         np.inf, -np.inf, f(1e-40), -f(1e-40), f(2**-126), 3.3895e38, -3.3895e38,
                         65504.0, 1 / 3, np.pi], np.float32)
    rng = np.random.default_rng(0)
    for a in (specials[None, :], rng.standard_normal((7, 33)).astype(np.float32),
              (rng.standard_normal((5, 64)) * 10.0**rng.integers(-40, 38, (5, 64))).astype(
                  np.float32)):
        got = _core.bf16_round(np.ascontiguousarray(a))
        K = a.shape[1]
        assert got.shape == (a.shape[0], K + K % 2)
        np.testing.assert_array_equal(got[:, :K], _bits(a))
        assert (got[:, K:] == 0).all()
    nan = _core.bf16_round(np.array([[np.nan, -np.nan, 1.0]], np.float32))
    as_float = (nan[0].astype(np.uint32) << 16).view(np.float32)
    assert np.isnan(as_float[:2]).all() and as_float[2] == 1.0


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), K=st.integers(1, 70), H=st.integers(1, 40), G=st.integers(1, 4),
       seed=st.integers(0, 2**31))
def test_every_kernel_gives_the_reference(n, K, H, G, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, K)).astype(np.float32)
    W = rng.standard_normal((G * H, K)).astype(np.float32)
    for k in RUNNABLE:
        _core._set_bf16_kernel(k)
        try:
            got, want = _product(x, W, H, G)
        finally:
            _core._set_bf16_kernel("auto")
        _check(k, got, x, W, want)


@pytest.mark.parametrize("n,K,H,G", [(1, 1, 1, 1), (6, 2, 16, 4), (7, 5, 17, 3), (13, 65, 33, 4),
                                     (17, 64, 16, 1), (33, 96, 70, 4), (4, 129, 20, 3),
                                     (16, 512, 48, 4), (32, 64, 16, 4), (75, 128, 33, 3),
                                     (64, 96, 70, 1)])
def test_shapes_past_a_tile(kernel, n, K, H, G):
    rng = np.random.default_rng(n * 1000 + K)
    x = rng.standard_normal((n, K)).astype(np.float32)
    W = rng.standard_normal((G * H, K)).astype(np.float32)
    got, want = _product(x, W, H, G)
    _check(kernel, got, x, W, want)


def test_each_pair_adds_its_odd_term_first(kernel):
    """acc 1 after the first pair, then a pair whose odd product is -1 and even 2^-30: the
    sum is 2^-30 only if the odd term goes first (the other order loses it in 1 + 2^-30)"""
    if kernel not in EXACT:
        pytest.skip("AMX sums in its own order")
    x = np.array([[1.0, 1.0, 2.0**-15, 1.0]], np.float32)
    W = np.array([[1.0, 0.0, 2.0**-15, -1.0]], np.float32)
    got, want = _product(x, W, 1, 1)
    np.testing.assert_array_equal(got, want)
    assert got[0, 0] == np.float32(2.0**-30)


def test_large_and_non_finite_values(kernel):
    x = np.array([[1e30, -1e30, 1.0, 2.0]] * 4 + [[np.nan, 1.0, 1.0, 1.0]] +
                 [[np.inf, 0.0, 1.0, 1.0]], np.float32)
    W = np.array([[1e8, 1e8, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
    got, want = _product(x, W, 2, 1)
    assert (np.isnan(got) == np.isnan(want)).all()
    assert np.isnan(got[4]).all() and np.isinf(got[5]).all()
    np.testing.assert_array_equal(got[5], want[5])


def test_bad_arguments_name_what_is_wrong():
    W = _bits(np.ones((8, 5), np.float32))
    packed = _core.bf16_pack(W, 8, 1)
    with pytest.raises(TypeError, match="wb"):
        _core.bf16_pack(W.astype(np.int16), 8, 1)
    with pytest.raises(ValueError, match="rows"):
        _core.bf16_pack(W, 4, 1)
    with pytest.raises(ValueError, match="packed"):
        _core.bf16_product(_core.bf16_round(np.ones((2, 5), np.float32)), packed[:-1], 5, 8, 1)
    with pytest.raises(ValueError, match="columns"):
        _core.bf16_product(np.zeros((2, 4), np.uint16), packed, 5, 8, 1)
    with pytest.raises(TypeError, match="float32"):
        _core.bf16_round(np.ones((2, 5)))
    with pytest.raises(ValueError, match="kernel"):
        _core._set_bf16_kernel("avx1024")
