"""The kernels of the recurrent product at small batch (csrc/recur.c): BLAS, the packed
portable C kernel and the packed SIMD kernels (AVX2/FMA; the 16-lane tiles built for AVX-512,
and the same tiles built for AVX2, which "packed_avx512" falls back to on CPUs without
AVX-512F), each forced with ``lstmc._core._set_recurrent_kernel``, against the float64 NumPy
reference and each other.

Shapes sit around the packing's boundaries: H of 1, 7, 9, 13 (partial blocks of 16 units:
the last vector of a strip masked, or both), 33 and 70 (several blocks; 70 runs two threads,
the second owning a partial block), batches 1 to 9 and 33 (the AVX2 kernel takes rows in
chunks of up to six, a chunk of 6, 5 or 4 rows one strip at a time, 3 or 2 rows two strips, a
row alone four; the 16-lane tiles take four strips, a row alone eight), ragged lengths (rows drop out of the product step by step), both directions
and two layers, an LSTM projection (K = P), GRU reset-after (3 gates in one set) and
reset-before (2 + 1 gates in two sets, two-phase), RNN (1 gate).

Tolerances as docs/spec.md §7: float32 rtol 1e-4 / atol 1e-5, float64 1e-10, atol scaled by
max(1, max|expected|); the packed kernels sum over k in the same order and differ only by
FMA rounding: 4e-6 between the portable kernel and the SIMD ones, which all round alike (one
FMA per k), so they agree bit for bit.
"""
import numpy as np
import pytest

import lstmc
from helpers import (KERNEL_TOL, assert_close, cpu_flags, make_module, module_reference,
                     random_lengths, scale_of)

SIMD = ["packed_avx2", "packed_avx512", "packed_wide_avx2"]
KERNELS = ["blas", "packed_c"] + SIMD
KINDS = ["lstm", "lstm_proj", "gru", "gru_rb", "rnn_tanh"]   # cells of helpers.CELLS

pytestmark = pytest.mark.usefixtures("restore_threads")


def build(kind, H, B, dtype, layers=1, bidirectional=False, ragged=False, seed=0):
    """A module of `kind` with random weights, its input and lengths."""
    kwargs = {}
    if kind == "lstm_proj" and H <= 3:
        kwargs = {"proj_size": H - 1 if H > 1 else 0}
    rng = np.random.default_rng(seed)
    m = make_module(kind, 5, H, dtype=dtype, num_layers=layers, bidirectional=bidirectional,
                    **kwargs)
    for _, p in m.named_parameters():
        p.data[...] = rng.uniform(-0.6, 0.6, p.shape)
    T = 6
    x = rng.standard_normal((T, B, 5)).astype(dtype)
    lengths = random_lengths(rng, T, B) if ragged else None
    return m, x, lengths


def tolerances(dtype, expected):
    """docs/spec.md §7's output tolerance, atol scaled by max(1, max|expected|)."""
    rtol, atol = KERNEL_TOL[dtype].out
    return rtol, atol * scale_of(expected)


def run(m, x, lengths, kernel):
    lstmc._core._set_recurrent_kernel(kernel)
    return m(x, lengths=lengths)[0]


def gradients(m, x, lengths, dout, kernel):
    """A training forward and backward under `kernel`: dx, the initial states' gradients (a
    list) and copies of the parameters' gradients."""
    m.zero_grad()
    run(m, x, lengths, kernel)
    dx, hx = m.backward(dout)
    states = list(hx) if isinstance(hx, tuple) else [hx]
    return dx, states, [p.grad.copy() for p in m.parameters()]


def assert_packed_gradients_match_blas(m, x, lengths, label, states=slice(None)):
    """The packed kernels' training gradients (dx, the initial states' gradients picked by
    `states`, the parameters') against BLAS's, for a random dout of the module's output."""
    T, B = x.shape[:2]
    dout = np.random.default_rng(1).standard_normal((T, B, m.hidden_size)).astype(np.float32)
    if getattr(m, "proj_size", 0):                         # LSTM with a projection
        dout = dout[..., :m.proj_size]
    grads = {}
    for kernel in KERNELS:
        dx, hx, params = gradients(m, x, lengths, dout, kernel)
        grads[kernel] = [dx] + hx[states] + params
    for kernel in KERNELS[1:]:
        for a, b in zip(grads[kernel], grads["blas"]):
            rtol, atol = KERNEL_TOL[np.float32].grad
            assert_close(f"{label} {kernel}", a, b, rtol, atol * scale_of(b))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("H", [1, 7, 9, 13, 33])
def test_kernels_match_reference(kind, H, kernel):
    for B in range(1, 10):
        m, x, lengths = build(kind, H, B, np.float32, seed=B)
        m.eval()
        expected = module_reference(m, x, lengths)
        assert_close(f"{kind} H{H} B{B} {kernel}", run(m, x, lengths, kernel), expected,
                     *tolerances(np.float32, expected))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", KINDS)
def test_kernels_ragged_bidirectional_two_layers(kind, kernel):
    for H, B in [(7, 3), (9, 5), (13, 8)]:
        m, x, lengths = build(kind, H, B, np.float32, layers=2, bidirectional=True, ragged=True,
                              seed=H)
        m.eval()
        expected = module_reference(m, x, lengths)
        assert_close(f"{kind} H{H} B{B} {kernel}", run(m, x, lengths, kernel), expected,
                     *tolerances(np.float32, expected))


@pytest.mark.parametrize("kind", KINDS)
def test_packed_float64_matches_reference(kind):
    """float64 packs too when forced (the portable kernel), to float64 accuracy."""
    for H, B in [(1, 1), (9, 2), (13, 4), (33, 7)]:
        m, x, lengths = build(kind, H, B, np.float64, bidirectional=True, ragged=True, seed=B)
        m.eval()
        expected = module_reference(m, x, lengths)
        assert_close(f"{kind} H{H} B{B}", run(m, x, lengths, "packed_c"), expected,
                     *tolerances(np.float64, expected))


@pytest.mark.parametrize("kind", KINDS)
def test_packed_twins_agree(kind):
    """The SIMD kernels and their portable twin: same packed layout, same order over k; the
    SIMD ones, one FMA per k each, to the bit."""
    for H, B in [(9, 1), (13, 2), (33, 3), (33, 4), (70, 9), (130, 7)]:
        m, x, lengths = build(kind, H, B, np.float32, ragged=True, seed=H + B)
        m.eval()
        twin = run(m, x, lengths, "packed_c")
        avx2 = run(m, x, lengths, "packed_avx2")
        assert_close(f"{kind} H{H} B{B}", avx2, twin, 4e-6, 4e-6)
        for kernel in SIMD[1:]:
            np.testing.assert_array_equal(run(m, x, lengths, kernel), avx2,
                                          err_msg=f"{kind} H{H} B{B} {kernel}")


@pytest.mark.parametrize("kernel", SIMD)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rows_in_groups_of_strips(kind, threads, kernel):
    """A thread's panels around LSTMC_L3_PANELS_MAX_BYTES (4 MiB). At or under it, more than
    six rows take the strips in groups that stay in L2 (GROUP_BYTES, 384 KB: 12 strips of K
    512, 8 of K 704) in chunks of up to six rows: LSTM H 512 at one thread, H 704 at two (352
    units each). Past it, row 0 streams a widest tile's strips alone (four; eight on the
    16-lane tiles) and the other rows follow in chunks of up to three: LSTM H 520 and H 524 (a last block of 8 and of 12 units), GRU H 600 at one
    thread; LSTM H 736 (368 units each) and GRU H 1200 (608 + 592 units) at two. Batches 4
    to 7 and 12, 13: one chunk or 6 + 1, 6 + 6, 6 + 6 + 1 rows; streaming 1 + 3, 1 + 3 + 1,
    1 + 3 + 2, 1 + 3 + 3, four chunks of three and a row, and 1 + 3 x 4."""
    if threads > 1 and not lstmc.openmp_enabled():
        pytest.skip("needs OpenMP")
    lstmc.set_num_threads(threads)
    sizes = {("lstm", 1): [512, 520, 524], ("gru", 1): [600],
             ("lstm", 2): [704, 736], ("gru", 2): [1200]}[kind, threads]
    for H in sizes:
        for B in (4, 5, 6, 7, 12, 13):
            m, x, lengths = build(kind, H, B, np.float32, seed=H + B)
            for p in m.parameters():    # to the default init's scale, U(-1/sqrt(H), 1/sqrt(H)):
                p.data *= 1 / (0.6 * np.sqrt(H))   # at +-0.6 float32 sums of 600 terms drift
            m.eval()
            expected = module_reference(m, x, lengths)
            assert_close(f"{kind} H{H} B{B}", run(m, x, lengths, kernel), expected,
                         *tolerances(np.float32, expected))
            assert_close(f"{kind} H{H} B{B} twins", run(m, x, lengths, kernel),
                         run(m, x, lengths, "packed_c"), 4e-6, 4e-6)


@pytest.mark.parametrize("kernel", SIMD)
@pytest.mark.parametrize("kind, H", [("lstm", 520), ("gru", 600)])
def test_training_in_groups_of_strips(kind, H, kernel):
    """Training at 7 rows, one thread, against BLAS's gradients, every product past the L3
    limit (streaming: row 0 over four strips, then 3 + 3 rows): the forward's W_hh (K 520,
    600) and the backward's dh_prev = dgates W_hh on W_hh^T (LSTM H 520: K 2080, 33 strips,
    4.4 MB; GRU H 600: K 1800, 38 strips, accumulating onto the direct term)."""
    lstmc.set_num_threads(1)
    m, x, lengths = build(kind, H, 7, np.float32, seed=5)
    for p in m.parameters():
        p.data *= 1 / (0.6 * np.sqrt(H))
    m.train()
    dout = np.random.default_rng(2).standard_normal((6, 7, H)).astype(np.float32)
    grads = {}
    for k in ("blas", kernel):
        dx, states, params = gradients(m, x, lengths, dout, k)
        grads[k] = [dx] + states + params
    for a, b in zip(grads[kernel], grads["blas"]):
        rtol, atol = KERNEL_TOL[np.float32].grad
        assert_close(f"{kind} H{H} B7 gradients", a, b, rtol, atol * scale_of(b))


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
@pytest.mark.parametrize("kind", KINDS)
def test_training_forward_and_backward_with_packed_kernel(kind, B):
    """A training forward runs the packed kernel too, its saved gates feed the backward, and
    the backward's dh_prev = dgates W_hh runs on W_hh^T packed per call (accumulating onto
    the GRU's direct term): both packed kernels must give BLAS's gradients. H = 37: three
    blocks of 16 units, the last partial; at B 33 two threads own 32 + 5 h columns."""
    lstmc.set_num_threads(2)
    m, x, lengths = build(kind, 37, B, np.float32, ragged=True, seed=7)
    m.train()
    assert_packed_gradients_match_blas(m, x, lengths, kind, states=slice(0, 1))


def test_automatic_choice_is_the_widest_kernel_of_this_cpu():
    """float32 on a packed copy runs the AVX-512 tiles where the CPU has AVX-512F, the AVX2
    ones where it has AVX2 and FMA only; float64 and batches past 128 stay off them, and a
    forced AVX-512 kernel on a CPU without it runs the same tiles built for AVX2."""
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags")
    kernel_for = lstmc._core.recurrent_kernel_for
    lstmc._core._set_recurrent_kernel("auto")
    build = lstmc._core.build_flags()           # a build capped by LSTMC_MAX_ISA runs less
    avx2 = "avx2" in flags and "fma" in flags and "LSTMC_NO_DISPATCH" not in build
    avx512 = avx2 and "avx512f" in flags and "LSTMC_MAX_ISA_V3" not in build
    widest = "packed_avx512" if avx512 else "packed_avx2" if avx2 else "blas"
    assert kernel_for(np.float32, 4, 100, True) == widest
    assert kernel_for(np.float32, 129, 100, True) == "blas"
    assert kernel_for(np.float64, 4, 100, True) == "blas"
    lstmc._core._set_recurrent_kernel("packed_avx512")
    assert kernel_for(np.float32, 4, 100, True) == (
        "packed_c" if not avx2 else widest if widest == "packed_avx512" else "packed_wide_avx2")
    lstmc._core._set_recurrent_kernel("auto")


def test_kernel_setting():
    for kernel in lstmc._core.RECURRENT_KERNELS:
        lstmc._core._set_recurrent_kernel(kernel)
        assert lstmc._core._get_recurrent_kernel() == kernel
    with pytest.raises(ValueError, match="kernel must be one of"):
        lstmc._core._set_recurrent_kernel("fast")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("H", [13, 29, 45])
@pytest.mark.parametrize("kind", KINDS)
def test_backward_partial_second_vector(kind, H, threads):
    """The backward's W_hh^T pack (lstmc_pack_columns) and dh_prev where the last block of h
    columns has 9 to 15 live units, so its strip's second vector is partly masked: H 13, 29
    (16 + 13), 45 (two threads: 32 + 13). Both packed kernels against BLAS's gradients."""
    if threads > 1 and not lstmc.openmp_enabled():
        pytest.skip("needs OpenMP")
    lstmc.set_num_threads(threads)
    B = 9
    m, x, lengths = build(kind, H, B, np.float32, ragged=True, seed=H)
    m.train()
    assert_packed_gradients_match_blas(m, x, lengths, f"{kind} H{H} gradients")


@pytest.mark.parametrize("kernel", SIMD)
@pytest.mark.parametrize("kind, H, B", [("lstm", 400, 7), ("lstm", 400, 8), ("gru", 420, 9)])
def test_groups_that_cut_a_tile_short(kind, H, B, kernel):
    """One thread, more than six rows, panels under the L3 limit: LSTM H 400 has 100 strips
    of K 400 in groups of 15, so a row alone takes 4 + 4 + 4 + 3 strips and two or three rows
    end a group on one strip; GRU H 420: 81 strips of K 420 in groups of 14."""
    lstmc.set_num_threads(1)
    m, x, lengths = build(kind, H, B, np.float32, seed=H + B)
    for p in m.parameters():
        p.data *= 1 / (0.6 * np.sqrt(H))
    m.eval()
    expected = module_reference(m, x, lengths)
    assert_close(f"{kind} H{H} B{B}", run(m, x, lengths, kernel), expected,
                 *tolerances(np.float32, expected))
    assert_close(f"{kind} H{H} B{B} twins", run(m, x, lengths, kernel),
                 run(m, x, lengths, "packed_c"), 4e-6, 4e-6)


@pytest.mark.parametrize("kernel", KERNELS[1:])
@pytest.mark.parametrize("kind, H, B", [("lstm", 80, 1), ("lstm", 45, 3), ("gru", 70, 2),
                                        ("rnn_tanh", 150, 1), ("lstm", 400, 8)])
def test_odd_steps_reverse_the_work_not_the_result(kind, H, B, kernel):
    """On odd steps the packed product walks its strips (and groups) last to first (recur.c,
    `reverse`); every output still sums over k in the same order, so a forward over T steps
    equals T one-step calls (each a step 0) bit for bit. Shapes with a short last tile (LSTM
    H 80: 20 strips, a row alone takes 4 x 5; H 45: 12 strips, 3 rows take 2 x 6; GRU H 70: 15
    strips, 2 rows take 2 x 7 + 1; RNN H 150: 10 strips, 4 + 4 + 2) and groups (LSTM H 400,
    8 rows: 100 strips in groups of 15, the last of 10)."""
    lstmc.set_num_threads(1)
    m, x, _ = build(kind, H, B, np.float32, seed=H + B)
    for p in m.parameters():
        p.data *= 1 / (0.6 * np.sqrt(H))
    m.eval()
    lstmc._core._set_recurrent_kernel(kernel)
    rng = np.random.default_rng(H)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    states = (h0, np.tanh(h0)) if kind == "lstm" else h0
    y, _ = m(x, states)
    state = m.initial_state(B, h0=h0, c0=np.tanh(h0) if kind == "lstm" else None)
    steps = np.stack([m.step(x_t, state)[0].copy() for x_t in x])
    np.testing.assert_array_equal(steps, y)
