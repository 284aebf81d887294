"""The int8 product kernels (csrc/quant.c through lstmc._core.q8_*) against the arithmetic of
lstmc.reference (quantize_int8, int8_product): the quantizer and every kernel this CPU runs,
each forced, must give the reference's bits, on odd sizes and size 1, at the saturation
bounds and at the largest K the int32 sums allow."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import runnable_kernels
from lstmc import _core
from lstmc import reference as R

KERNELS = ("c", "avx2", "avx_vnni", "avx512_vnni", "amx", "wide_avx2")


RUNNABLE = runnable_kernels(_core._set_q8_kernel, _core.q8_kernel_for, KERNELS)


@pytest.fixture(params=RUNNABLE)
def kernel(request):
    _core._set_q8_kernel(request.param)
    yield request.param
    _core._set_q8_kernel("auto")


def _product(x, W, H, G):
    """(kernel's product, reference's product) of float rows x and float weights W"""
    wq, ws = R.quantize_int8(W)
    aq, a_scale = R.quantize_int8(x)
    u, s = _core.q8_quantize(x)
    np.testing.assert_array_equal(s, a_scale)
    np.testing.assert_array_equal(u[:, :x.shape[1]].astype(np.int16) - 128, aq)
    packed = _core.q8_pack(wq, ws, H, G)
    return (_core.q8_product(u, s, packed, x.shape[1], H, G),
            R.int8_product(aq, a_scale, wq, ws))


def test_the_portable_kernel_always_runs():
    assert "c" in RUNNABLE
    _core._set_q8_kernel("avx512_vnni")
    try:
        assert _core.q8_kernel_for() in RUNNABLE
    finally:
        _core._set_q8_kernel("auto")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), K=st.integers(1, 70), H=st.integers(1, 40), G=st.integers(1, 4),
       seed=st.integers(0, 2**31))
def test_every_kernel_gives_the_reference_bits(n, K, H, G, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, K)).astype(np.float32)
    x *= np.float32(10.0) ** rng.integers(-3, 4, size=(n, 1)).astype(np.float32)
    W = rng.standard_normal((G * H, K)).astype(np.float32)
    for k in RUNNABLE:
        _core._set_q8_kernel(k)
        try:
            got, want = _product(x, W, H, G)
        finally:
            _core._set_q8_kernel("auto")
        np.testing.assert_array_equal(got, want, err_msg=k)


@pytest.mark.parametrize("n,K,H,G", [(1, 1, 1, 1), (6, 4, 16, 4), (7, 5, 17, 3), (13, 65, 33, 4),
                                     (33, 130, 70, 1), (12, 9, 9, 2), (32, 64, 16, 1),
                                     (70, 128, 33, 4), (45, 192, 20, 3)])
def test_shapes_past_a_tile(kernel, n, K, H, G):
    """Rows past a tile's (4 or 6), units past a block (16), K past a group of 4; 32 rows and
    more with K in whole 64-k blocks (AMX's 32-row pass, then 16-row passes for the rest)"""
    rng = np.random.default_rng(n * 1000 + K)
    got, want = _product(rng.standard_normal((n, K)).astype(np.float32),
                         rng.standard_normal((G * H, K)).astype(np.float32), H, G)
    np.testing.assert_array_equal(got, want)


def test_raw_sums_are_exact(kernel):
    """Scales of 1 make the output the int32 sum itself (exact in float32 below 2^24)"""
    rng = np.random.default_rng(5)
    n, K, H, G = 5, 301, 19, 4
    wq = rng.integers(-127, 128, size=(G * H, K)).astype(np.int8)
    aq = rng.integers(-127, 128, size=(n, K)).astype(np.int8)
    u = np.full((n, (K + 3) // 4 * 4), 128, np.uint8)
    u[:, :K] = (aq.astype(np.int16) + 128).astype(np.uint8)
    packed = _core.q8_pack(wq, np.ones(G * H, np.float32), H, G)
    got = _core.q8_product(u, np.ones(n, np.float32), packed, K, H, G)
    np.testing.assert_array_equal(got, aq.astype(np.int64) @ wq.astype(np.int64).T)


@pytest.mark.parametrize("sign", [1, -1, "alternating"])
def test_saturation_full_range_weights_and_activations(kernel, sign):
    """Every weight and activation at +-127 (h at +-1 quantizes so): no intermediate
    saturates (AVX2's 16-bit pair sums reach 2 * 127 * 127)"""
    n, K, H, G = 3, 1024, 16, 1
    w = np.full((G * H, K), 127, np.int8)
    a = np.full((n, K), 127, np.int8)
    if sign == -1:
        a = -a
    elif sign == "alternating":
        w[:, ::2] = -127
        a[:, 1::2] = -127
    u = (a.astype(np.int16) + 128).astype(np.uint8)
    packed = _core.q8_pack(w, np.ones(G * H, np.float32), H, G)
    got = _core.q8_product(u, np.ones(n, np.float32), packed, K, H, G)
    np.testing.assert_array_equal(got, (a.astype(np.int64) @ w.astype(np.int64).T)
                                  .astype(np.float32))


def test_the_largest_k_keeps_int32_sums(kernel):
    """K = 2^17 with every product at 127 * 127: the sum, 2.11e9, and the VNNI kernel's
    compensated start, -128 * 127 * K = -2.13e9, both within int32; AMX's sum of u8 products,
    255 * 127 * K, wraps and comes back exact (four rows: AMX's)"""
    K = _core.Q8_MAX_K
    w = np.full((1, K), 127, np.int8)
    packed = _core.q8_pack(w, np.ones(1, np.float32), 1, 1)
    for value in (127, -127):
        u = np.full((4, K), value + 128, np.uint8)
        got = _core.q8_product(u, np.ones(4, np.float32), packed, K, 1, 1)
        assert (got == np.float32(value * 127 * K)).all()


def test_quantizer_rows_zero_non_finite_ties_and_padding():
    x = np.array([[2.0, 1.0, -1.0, 0.0, 0.5],      # 63.5 -> 64 and -63.5 -> -64: ties to even
                  [0.0, 0.0, 0.0, 0.0, 0.0],
                  [1.0, np.nan, 0.0, 2.0, 1.0],
                  [np.inf, 1.0, 0.0, 0.0, 0.0],
                  [1e-40, -1e-40, 0.0, 0.0, 0.0],   # a subnormal peak: below INT8_TINY
                  [1e-37, 0.0, 0.0, 0.0, 0.0],      # 127 / 1e-37 overflows float32
                  [1.6e-36, -8e-37, 0.0, 0.0, 0.0],  # above it
                  [3e38, -3e38, 1.0, 0.0, 0.0]], np.float32)
    u, s = _core.q8_quantize(x)
    q, scale = R.quantize_int8(x)
    assert u.shape == (8, 8) and (u[:, 5:] == 128).all()
    np.testing.assert_array_equal(u[:, :5].astype(np.int16) - 128, q)
    np.testing.assert_array_equal(s, scale)      # NaN where the reference has NaN
    assert np.isnan(s[2]) and np.isnan(s[3]) and s[1] == 0
    assert s[4] == 0 and s[5] == 0 and (q[4:6] == 0).all()
    assert s[6] > 0 and q[6, 0] == 127 and q[6, 1] == -64 and q[7, 0] == 127


def test_a_non_finite_row_gives_nan_outputs(kernel):
    x = np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0]], np.float32)
    W = np.arange(12, dtype=np.float32).reshape(4, 3)
    got, want = _product(x, W, 4, 1)
    assert np.isnan(got[0]).all() and np.isfinite(got[1]).all()
    np.testing.assert_array_equal(got, want)


def test_bad_arguments_name_what_is_wrong():
    w = np.zeros((4, 3), np.int8)
    with pytest.raises(ValueError, match="-128"):
        _core.q8_pack(np.full((4, 3), -128, np.int8), np.ones(4, np.float32), 4, 1)
    with pytest.raises(ValueError, match="rows"):
        _core.q8_pack(w, np.ones(4, np.float32), 2, 1)
    with pytest.raises(TypeError, match="int8"):
        _core.q8_pack(w.astype(np.int16), np.ones(4, np.float32), 4, 1)
    with pytest.raises(ValueError, match="w_scale"):
        _core.q8_pack(w, np.ones(3, np.float32), 4, 1)
    with pytest.raises(TypeError, match="float32"):
        _core.q8_quantize(np.ones((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        _core.q8_quantize(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="2\\^17"):
        _core.q8_quantize(np.ones((1, _core.Q8_MAX_K + 1), np.float32))
    packed = _core.q8_pack(w, np.ones(4, np.float32), 4, 1)
    u, s = _core.q8_quantize(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="packed"):
        _core.q8_product(u, s, packed[:-1], 3, 4, 1)
    with pytest.raises(ValueError, match="a_scale"):
        _core.q8_product(u, s[:1], packed, 3, 4, 1)
    with pytest.raises(ValueError, match="columns"):
        _core.q8_product(u[:, :3], s, packed, 3, 4, 1)
    with pytest.raises(ValueError, match="kernel"):
        _core._set_q8_kernel("vnni512")
