"""The kernels of the recurrent product at small batch (csrc/recur.c): BLAS, the packed
portable C kernel and the packed AVX2/FMA kernel, each forced with
``lstmc._core._set_recurrent_kernel``, against the float64 NumPy reference and each other.

Shapes sit around the packing's boundaries: H of 1, 7, 9, 13 (partial blocks of 8 units),
33 and 70 (several blocks; 70 runs two threads, the second owning a partial block), batches 1
to 9 and 33 (the AVX2 kernel takes one row alone, then rows in chunks of three, ending in one,
two or four; four rows alone take one pass of 4 x 3 tiles; where a thread's panels exceed
LSTMC_L3_PANELS_MAX_BYTES, four rows and more let row 0 stream 8 columns and the others follow
in threes, ending in one, two or three, unless K > LSTMC_STREAM_MAX_K), ragged lengths (rows
drop out of the product step by step), both directions and two layers, an LSTM projection (K = P), GRU reset-after (3 gates in one set)
and reset-before (2 + 1 gates in two sets, two-phase), RNN (1 gate).

Tolerances as SPEC section 7: float32 rtol 1e-4 / atol 1e-5, float64 1e-10, atol scaled by
max(1, max|expected|); the two packed kernels sum over k in the same order and differ only by
FMA rounding: 4e-6 between them.
"""
import numpy as np
import pytest

import lstmc
from conftest import assert_close, module_reference

KERNELS = ["blas", "packed_c", "packed_avx2"]

# kind -> (module class, constructor kwargs)
KINDS = {
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {"proj_size": 3}),
    "gru": ("GRU", {"reset_after": True}),
    "gru_rb": ("GRU", {"reset_after": False}),
    "rnn": ("RNN", {"nonlinearity": "tanh"}),
}


@pytest.fixture(autouse=True)
def restore_kernel_and_threads():
    threads = lstmc.get_num_threads()
    yield
    lstmc._core._set_recurrent_kernel("auto")
    lstmc.set_num_threads(threads)


def build(kind, H, B, dtype, layers=1, bidirectional=False, ragged=False, seed=0):
    """A module of `kind` with random weights, its input, lengths and the reference output."""
    cls, kwargs = KINDS[kind]
    if kind == "lstm_proj" and H <= 3:
        kwargs = {"proj_size": H - 1} if H > 1 else {}
    rng = np.random.default_rng(seed)
    m = getattr(lstmc.nn, cls)(5, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype,
                               **kwargs)
    for _, p in m.named_parameters():
        p.data[...] = rng.uniform(-0.6, 0.6, p.shape)
    T = 6
    x = rng.standard_normal((T, B, 5)).astype(dtype)
    lengths = rng.integers(0, T + 1, B) if ragged else None
    return m, x, lengths


def tolerances(dtype, expected):
    scale = max(1.0, float(np.abs(expected).max()))
    return (1e-4, 1e-5 * scale) if dtype == np.float32 else (1e-10, 1e-10 * scale)


def run(m, x, lengths, kernel):
    lstmc._core._set_recurrent_kernel(kernel)
    return m(x, lengths=lengths)[0]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("H", [1, 7, 9, 13, 33])
def test_kernels_match_reference(kind, H, kernel):
    for B in range(1, 10):
        m, x, lengths = build(kind, H, B, np.float32, seed=B)
        m.eval()
        expected = module_reference(m, x, lengths)
        assert_close(f"{kind} H{H} B{B} {kernel}", run(m, x, lengths, kernel), expected,
                     *tolerances(np.float32, expected))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_kernels_ragged_bidirectional_two_layers(kind, kernel):
    for H, B in [(7, 3), (9, 5), (13, 8)]:
        m, x, lengths = build(kind, H, B, np.float32, layers=2, bidirectional=True, ragged=True,
                              seed=H)
        m.eval()
        expected = module_reference(m, x, lengths)
        assert_close(f"{kind} H{H} B{B} {kernel}", run(m, x, lengths, kernel), expected,
                     *tolerances(np.float32, expected))


@pytest.mark.parametrize("kind", list(KINDS))
def test_packed_float64_matches_reference(kind):
    """float64 packs too when forced (the portable kernel), to float64 accuracy."""
    for H, B in [(1, 1), (9, 2), (13, 4), (33, 7)]:
        m, x, lengths = build(kind, H, B, np.float64, bidirectional=True, ragged=True, seed=B)
        m.eval()
        expected = module_reference(m, x, lengths)
        assert_close(f"{kind} H{H} B{B}", run(m, x, lengths, "packed_c"), expected,
                     *tolerances(np.float64, expected))


@pytest.mark.parametrize("kind", list(KINDS))
def test_packed_twins_agree(kind):
    """The AVX2 kernel and its portable twin: same packed layout, same order over k."""
    for H, B in [(9, 1), (13, 2), (33, 3), (33, 4), (70, 9)]:
        m, x, lengths = build(kind, H, B, np.float32, ragged=True, seed=H + B)
        m.eval()
        twin = run(m, x, lengths, "packed_c")
        assert_close(f"{kind} H{H} B{B}", run(m, x, lengths, "packed_avx2"), twin, 4e-6, 4e-6)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rows_past_the_l3_limit(kind, threads):
    """Around 4 MiB of panels per thread (LSTMC_L3_PANELS_MAX_BYTES). One thread: LSTM H 512
    sits exactly at the limit (one 4 x 3 pass at 4 rows, groups of 12 columns beyond); H 520
    (W_hh 2080 x 520 floats, 4.3 MB) and H 524 (a partial block of 4 units) and GRU H 600
    (4.3 MB) are past it. Two threads (shares of whole 16-unit multiples): LSTM H 704 (352
    units each, 3.96 MB) is within, H 736 (368, 4.33 MB) past it; GRU H 1200 (608 + 592
    units, 8.8 MB each) past it. At 4 to 7 rows, past the limit, row 0 streams 8 columns and
    rows 1.. follow as 3, 3 + 1, 3 + 2, 3 + 3."""
    if threads > 1 and not lstmc.openmp_enabled():
        pytest.skip("needs OpenMP")
    lstmc.set_num_threads(threads)
    sizes = {("lstm", 1): [512, 520, 524], ("gru", 1): [600],
             ("lstm", 2): [704, 736], ("gru", 2): [1200]}[kind, threads]
    for H in sizes:
        for B in (4, 5, 6, 7):
            m, x, lengths = build(kind, H, B, np.float32, seed=H + B)
            for p in m.parameters():    # to the default init's scale, U(-1/sqrt(H), 1/sqrt(H)):
                p.data *= 1 / (0.6 * np.sqrt(H))   # at +-0.6 float32 sums of 600 terms drift
            m.eval()
            expected = module_reference(m, x, lengths)
            assert_close(f"{kind} H{H} B{B}", run(m, x, lengths, "packed_avx2"), expected,
                         *tolerances(np.float32, expected))
            assert_close(f"{kind} H{H} B{B} twins", run(m, x, lengths, "packed_avx2"),
                         run(m, x, lengths, "packed_c"), 4e-6, 4e-6)


@pytest.mark.parametrize("kind, H", [("lstm", 520), ("gru", 600)])
def test_training_past_the_l3_limit(kind, H):
    """Training at 5 rows past the L3 limit, one thread, against BLAS's gradients. LSTM H 520:
    the forward's W_hh streams (K 520); the backward's dh_prev = dgates W_hh on W_hh^T (K 2080
    > LSTMC_STREAM_MAX_K) takes groups of 12 columns. GRU H 600: the backward's W_hh^T (K
    1800, 4.3 MB) streams too, accumulating onto the direct term."""
    lstmc.set_num_threads(1)
    m, x, lengths = build(kind, H, 5, np.float32, seed=5)
    for p in m.parameters():
        p.data *= 1 / (0.6 * np.sqrt(H))
    m.train()
    dout = np.random.default_rng(2).standard_normal((6, 5, H)).astype(np.float32)
    grads = {}
    for kernel in ("blas", "packed_avx2"):
        m.zero_grad()
        run(m, x, lengths, kernel)
        dx, hx = m.backward(dout)
        states = list(hx) if isinstance(hx, tuple) else [hx]
        grads[kernel] = [dx] + states + [p.grad.copy() for p in m.parameters()]
    for a, b in zip(grads["packed_avx2"], grads["blas"]):
        assert_close(f"{kind} H{H} B5 gradients", a, b, 1e-3,
                     1e-4 * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", ["lstm", "gru_rb"])
def test_kernels_two_threads_partial_block(kind, kernel):
    """H 70 at 5 rows runs two threads; the second owns units 48..69, a partial block."""
    if not lstmc.openmp_enabled():
        pytest.skip("needs OpenMP")
    lstmc.set_num_threads(2)
    m, x, lengths = build(kind, 70, 5, np.float32, ragged=True, seed=3)
    m.eval()
    expected = module_reference(m, x, lengths)
    assert_close(f"{kind} {kernel}", run(m, x, lengths, kernel), expected,
                 *tolerances(np.float32, expected))


@pytest.mark.parametrize("B", [1, 4, 9, 33])
@pytest.mark.parametrize("kind", list(KINDS))
def test_training_forward_and_backward_with_packed_kernel(kind, B):
    """A training forward runs the packed kernel too, its saved gates feed the backward, and
    the backward's dh_prev = dgates W_hh runs on W_hh^T packed per call (accumulating onto
    the GRU's direct term): both packed kernels must give BLAS's gradients. H = 37: five
    blocks of 8 units, the last partial; two threads own 16 + 21 h columns."""
    lstmc.set_num_threads(2)
    m, x, lengths = build(kind, 37, B, np.float32, ragged=True, seed=7)
    m.train()
    dout = np.random.default_rng(1).standard_normal((6, B, m.hidden_size)).astype(np.float32)
    if kind == "lstm_proj":
        dout = dout[..., :m.proj_size]
    grads = {}
    for kernel in KERNELS:
        m.zero_grad()
        run(m, x, lengths, kernel)
        dx, hx = m.backward(dout)
        dh0 = hx[0] if isinstance(hx, tuple) else hx
        grads[kernel] = [dx, dh0] + [p.grad.copy() for _, p in m.named_parameters()]
    for kernel in ("packed_c", "packed_avx2"):
        for a, b in zip(grads[kernel], grads["blas"]):
            scale = max(1.0, float(np.abs(b).max()))
            assert_close(f"{kind} {kernel}", a, b, 1e-3, 1e-4 * scale)


def test_kernel_setting():
    for kernel in lstmc._core.RECURRENT_KERNELS:
        lstmc._core._set_recurrent_kernel(kernel)
        assert lstmc._core._get_recurrent_kernel() == kernel
    with pytest.raises(ValueError, match="kernel must be one of"):
        lstmc._core._set_recurrent_kernel("fast")
