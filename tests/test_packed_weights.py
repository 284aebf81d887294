"""The packed eval-mode weights (csrc/lstmc.h lstmc_seq_pack_*, lstmc.nn._engine PackedWeights).

In eval mode a float32 recurrent module packs W_ih and W_hh once, into the order the packed
kernels stream, and every eval forward, streaming step and eval cell call reads that copy.
What must hold:

* results equal the float64 reference (docs/spec.md §7 tolerances) for every cell, with and
  without the packed input projection (at most LSTMC_PACKED_PROJ_MAX_ROWS = 1024 positions)
  and the packed recurrent product (batch <= LSTMC_PACK_MAX_ROWS = 128), ragged lengths, two
  layers, both directions, and any split of the units between threads (the projection lives
  in per-thread panels, csrc/internal.h LSTMC_ZROW);
* the copy does not depend on the thread count that packed it;
* it can never be stale: while it exists the parameters are read-only, and every writer the
  package has (train(), load_state_dict, the optimizers, Keras set_weights) drops it first,
  after which the next call sees the new weights;
* the C boundary refuses a packed buffer of the wrong size, dtype or alignment.
"""
import gc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lstmc
from helpers import CELLS, assert_close, make_module, module_reference, random_lengths
from lstmc import _core

PACKS = _core.packs(np.float32)   # float32 on a CPU with AVX2/FMA
needs_packing = pytest.mark.skipif(not PACKS, reason="no packed kernel on this CPU")

KINDS = list(CELLS)

pytestmark = pytest.mark.usefixtures("restore_threads")


def make(kind, I, H, layers=1, bidirectional=False, seed=0, dtype=np.float32, proj_size=2):
    """A seeded module of cell ``kind``; lstm_proj projects to ``proj_size`` if below H."""
    kwargs = {}
    if kind == "lstm_proj":
        kwargs = {"proj_size": proj_size if H > proj_size else 0}
    lstmc.manual_seed(seed)
    return make_module(kind, I, H, dtype=dtype, num_layers=layers, bidirectional=bidirectional,
                       **kwargs)


def check_reference(kind, m, x, lengths=None):
    out = m(x, lengths=lengths)[0]
    expected = module_reference(m, x, lengths)
    scale = max(1.0, float(np.abs(expected).max()))
    assert_close(f"{kind} eval output", out, expected, 1e-4, 1e-5 * scale)


@needs_packing
@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(sorted(KINDS)), I=st.integers(1, 21), H=st.integers(1, 37),
       T=st.integers(1, 30), B=st.integers(1, 12), layers=st.integers(1, 2),
       bidirectional=st.booleans(), ragged=st.booleans(), seed=st.integers(0, 2**16))
def test_eval_forward_on_packed_weights_matches_reference(kind, I, H, T, B, layers,
                                                          bidirectional, ragged, seed):
    """Batches of 1 to 12 cover every row chunking of the tiles (1, 2, 4 in one pass, threes
    and remainders) on packed projections and recurrent products."""
    m = make(kind, I, H, layers, bidirectional, seed).eval()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = random_lengths(rng, T, B) if ragged else None
    check_reference(kind, m, x, lengths)
    assert m._engine.weights.packed is not None


@needs_packing
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("T,B", [(1, 1), (40, 1), (7, 9), (30, 12), (1, 64), (2, 96),
                                 (1, 128), (1, 129), (3, 129), (8, 128), (41, 25), (9, 128)])
def test_projection_limit_and_batch_limit(kind, T, B, threads):
    """Around LSTMC_PACKED_PROJ_MAX_ROWS = 1024 (8 x 128 packed; 41 x 25 and 9 x 128 BLAS on
    two threads, packed on one, which packs at every size) and LSTMC_PACK_MAX_ROWS = 128 (128
    rows packed, 129 BLAS, with a packed projection of 129 or 387 positions), H = 40 (three
    blocks of 16 units, the last partial; two threads own 32 + 8)."""
    lstmc.set_num_threads(threads)
    m = make(kind, 9, 40, seed=T * 100 + B).eval()
    x = np.random.default_rng(T + B).standard_normal((T, B, 9)).astype(np.float32)
    check_reference(kind, m, x)


@needs_packing
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("threads", [1, 3, 4])
@pytest.mark.parametrize("T,B", [(9, 65), (70, 65)])
def test_per_thread_panels_of_the_projection(kind, threads, T, B):
    """Inference keeps the input projection in one panel per thread, blocked by 16 units
    (csrc/internal.h LSTMC_ZROW), filled by the packed kernel (9 x 65 positions) or by one
    BLAS GEMM per thread on W_ih's rows in panel order (70 x 65 > 1024); one thread keeps
    PyTorch's order. H = 65 is five blocks, the last of one unit: three threads own
    32 + 32 + 1 units, four 32 + 32 + 1 + 0. Two layers, both directions, ragged lengths;
    65 rows, past LSTMC_SPLIT_MAX_ROWS, so that the team shares the units of one direction
    at a time. G H Hout B is at least 65536 (LSTMC_PAR_MIN_STEP_WORK) for every cell, the
    projected LSTM's proj_size 40 included, so every call runs on all the threads asked for."""
    lstmc.set_num_threads(threads)
    m = make(kind, 11, 65, layers=2, bidirectional=True, seed=threads,
             proj_size=40).eval()
    rng = np.random.default_rng(T)
    x = rng.standard_normal((T, B, 11)).astype(np.float32)
    lengths = random_lengths(rng, T, B)
    lengths[0] = T
    check_reference(kind, m, x, lengths)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("dtype,kernel", [(np.float32, "auto"), (np.float64, "auto"),
                                          (np.float64, "packed_c")],
                         ids=["float32", "float64", "float64-packed_c-copy"])
def test_bidirectional_eval_runs_the_directions_at_once(kind, layers, dtype, kernel):
    """An eval-mode bidirectional call with at most LSTMC_SPLIT_MAX_ROWS rows and a small
    W_hh (csrc/internal.h) runs its directions at once on a team of two, thread d direction d
    on its own scratch: H = 65, 16 rows (G H Hout B >= LSTMC_PAR_MIN_STEP_WORK for every
    cell), ragged lengths (a row of length 0), 1 or 3 layers; on the packed copy (float32),
    on BLAS (float64) and on packed_c's copy (float64). Against the float64 reference, and
    against one thread, which runs the same sums in the same order; three threads share the
    units of one direction at a time (only a team of two splits): to rounding."""
    _core._set_recurrent_kernel(kernel)
    m = make(kind, 11, 65, layers=layers, bidirectional=True, seed=layers, dtype=dtype,
             proj_size=40).eval()
    rng = np.random.default_rng(layers)
    x = rng.standard_normal((12, 16, 11)).astype(dtype)
    lengths = random_lengths(rng, 12, 16)
    lengths[0], lengths[1] = 12, 0
    outs = []
    for threads in (2, 3, 1):
        lstmc.set_num_threads(threads)
        out, state = m(x, lengths=lengths)
        outs.append([out] + list(state if isinstance(state, tuple) else (state,)))
        if threads == 2:
            check_reference(kind, m, x, lengths)
    for a, b, c in zip(*outs):
        np.testing.assert_array_equal(a, c)                       # two threads: split
        assert_close(f"{kind} three threads", b, c, 1e-5, 1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_split_directions_pack_w_hh_per_call_on_their_own_scratch(kind, float_dtype):
    """Without a packed copy (Seq.forward with packed=None, which lstmc.nn never does when it
    can pack) under packed_c, each direction of a split call packs its W_hh per call into its
    own run of scratch (csrc/seq.c dir1): two threads give one thread's result bit for bit,
    and the module's (on its packed copy) to rounding. Scratch and outputs start as NaN."""
    dtype = float_dtype
    _core._set_recurrent_kernel("packed_c")
    T, B, I, H, L = 12, 16, 11, 65, 2
    m = make(kind, I, H, layers=L, bidirectional=True, seed=3, dtype=dtype).eval()
    rng = np.random.default_rng(3)
    lengths = np.sort(random_lengths(rng, T, B))[::-1].astype(np.intc)
    lengths[0], lengths[-1] = T, 0
    seq = _core.Seq(m._cell, T, B, I, H, m._proj, L, 2, m.bias, lengths)
    N = seq.rows
    x = rng.standard_normal((N, I)).astype(dtype)
    has_c = kind == "lstm"
    runs = []
    for threads in (1, 2):
        lstmc.set_num_threads(threads)
        y = np.full(N * 2 * H, np.nan, dtype)
        hn = np.full(L * 2 * B * H, np.nan, dtype)
        cn = np.full(L * 2 * B * H, np.nan, dtype) if has_c else None
        scratch = np.full(seq.scratch_size(False), np.nan, dtype)
        seq.forward(y, hn, cn, None, x.reshape(-1), None, None, None, m._flat, scratch, None)
        runs.append([a for a in (y, hn, cn) if a is not None])
    for a, b in zip(*runs):
        assert not np.isnan(a).any()
        np.testing.assert_array_equal(a, b)
    # the same rows through the module, padded and time-major
    sizes = np.array([(lengths > t).sum() for t in range(T)])
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    xp = np.zeros((T, B, I), dtype)
    for t in range(T):
        xp[t, :sizes[t]] = x[starts[t]:starts[t] + sizes[t]]
    out = m(xp, lengths=lengths)[0]
    y = runs[1][0].reshape(N, 2 * H)
    for t in range(T):
        assert_close(f"{kind} step {t}", y[starts[t]:starts[t] + sizes[t]], out[t, :sizes[t]],
                     1e-5, 1e-6)


@needs_packing
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_pack_does_not_depend_on_the_thread_count(kind):
    m = make(kind, 23, 70, layers=2, bidirectional=True)
    layout = m._layout()
    packs = []
    for threads in (1, 2):
        lstmc.set_num_threads(threads)
        buf = _core.empty_aligned(layout.packed_size, np.float32)
        buf[...] = np.nan
        layout.pack(buf, m._flat)
        packs.append(buf)
    assert not np.isnan(packs[0]).any()
    np.testing.assert_array_equal(packs[0], packs[1])


@needs_packing
def test_parameters_read_only_while_packed_and_train_releases():
    m = make("lstm", 6, 10).eval()
    x = np.random.default_rng(1).standard_normal((5, 2, 6)).astype(np.float32)
    m(x)
    for name, p in m.named_parameters():
        with pytest.raises(ValueError, match="read-only"):
            p.data[...] = 0
    m.train()
    m.weight_hh_l0.data[...] = 0.25   # writable again
    m.eval()
    check_reference("lstm", m, x)     # the new weights, repacked


def _grad_step(m, opt):
    rng = np.random.default_rng(7)
    for p in m.parameters():
        p.grad[...] = rng.standard_normal(p.shape)
    opt.step()


@needs_packing
@pytest.mark.parametrize("make_opt", [lambda ps: lstmc.optim.SGD(ps, lr=0.5),
                                      lambda ps: lstmc.optim.Adam(ps, lr=0.1)],
                         ids=["sgd", "adam"])
def test_optimizer_step_in_eval_mode_is_seen_by_the_next_call(make_opt):
    """Training in eval mode (no dropout) is legitimate: the step must not be refused, and
    the next forward, step and cell call must run on the updated weights."""
    m = make("gru", 6, 10).eval()
    x = np.random.default_rng(2).standard_normal((5, 3, 6)).astype(np.float32)
    before = m(x)[0]
    _grad_step(m, make_opt(list(m.parameters())))
    assert m._engine.weights.packed is None      # dropped by the step
    after = m(x)[0]
    assert np.abs(after - before).max() > 1e-3   # the update is visible
    check_reference("gru", m, x)


@needs_packing
def test_load_state_dict_in_eval_mode_is_seen_by_stream_and_cell():
    src = make("lstm", 4, 9, seed=5)
    m = make("lstm", 4, 9, seed=6).eval()
    cell = lstmc.nn.LSTMCell(4, 9).eval()
    x = np.random.default_rng(3).standard_normal((1, 1, 4)).astype(np.float32)
    state = m.initial_state(1)
    m.step(x[0, 0], state)                       # packs the old weights
    cell(x[0, 0])
    assert m._engine.weights.packed is not None and cell._seq._engine.weights.packed is not None
    m.load_state_dict(src.state_dict())
    cell.load_state_dict({k[:-3]: v for k, v in src.state_dict().items()})
    expected = module_reference(src, x)[0, 0]
    y, _ = m.step(x[0, 0], m.initial_state(1))
    h, _ = cell(x[0, 0])
    assert_close("step after load_state_dict", y, expected, 1e-4, 1e-5)
    assert_close("cell after load_state_dict", h, expected, 1e-4, 1e-5)


@needs_packing
def test_keras_set_weights_after_predict():
    from lstmc import layers, models
    model = models.Sequential([layers.LSTM(5, input_shape=(4, 3))])
    x = np.random.default_rng(4).standard_normal((2, 4, 3)).astype(np.float32)
    first = model.predict(x, verbose=0)
    weights = [w * 0.5 for w in model.get_weights()]
    model.set_weights(weights)
    second = model.predict(x, verbose=0)
    model2 = models.Sequential([layers.LSTM(5, input_shape=(4, 3))])
    model2.set_weights(weights)
    assert_close("after set_weights", second, model2.predict(x, verbose=0), 1e-6, 1e-7)
    assert np.abs(second - first).max() > 1e-4


def test_cell_kind_is_fixed_at_construction():
    """Plans and packed copies follow the cell kind, so it cannot change under them."""
    with pytest.raises(AttributeError, match="fixed at construction"):
        lstmc.nn.GRU(3, 4).reset_after = False
    with pytest.raises(AttributeError, match="fixed at construction"):
        lstmc.nn.RNN(3, 4).nonlinearity = "relu"
    assert lstmc.nn.RNN(3, 4, nonlinearity="relu").nonlinearity == "relu"
    assert lstmc.nn.GRU(3, 4, reset_after=False).reset_after is False


def test_float64_and_forced_blas_do_not_pack():
    m = make("lstm", 3, 8, dtype=np.float64).eval()
    m(np.ones((2, 1, 3)))
    assert m._engine.weights.packed is None and m.weight_hh_l0.data.flags.writeable
    _core._set_recurrent_kernel("blas")
    m32 = make("lstm", 3, 8).eval()
    x = np.ones((2, 1, 3), dtype=np.float32)
    check_reference("lstm", m32, x)
    assert m32._engine.weights.packed is None


@needs_packing
def test_a_pack_is_correct_under_every_kernel_setting():
    """A copy packed under "auto" stays valid when the setting changes (the forward then
    ignores it or reads it with the portable kernel)."""
    m = make("gru_rb", 7, 19).eval()
    x = np.random.default_rng(5).standard_normal((9, 3, 7)).astype(np.float32)
    m(x)
    assert m._engine.weights.packed is not None
    for kernel in _core.RECURRENT_KERNELS:
        _core._set_recurrent_kernel(kernel)
        check_reference("gru_rb", m, x)


@pytest.mark.parametrize("count, dtype, huge", [(1, np.float32, False), (1000, np.uint8, True),
                                               (3 << 18, np.float32, True),
                                               ((1 << 20) + 7, np.uint8, True),
                                               (3 << 18, np.float64, False)])
def test_empty_aligned(count, dtype, huge):
    """The kernels' buffers: count elements of dtype on a 64-byte boundary; huge ones (the
    quantized weights, from 1 MB) zeroed on their own 2 MB-aligned memory, which stays
    alive with the array."""
    a = _core.empty_aligned(count, dtype, huge=huge)
    assert a.shape == (count,) and a.dtype == dtype and a.flags.c_contiguous
    address = a.__array_interface__["data"][0]
    assert address % 64 == 0
    if huge and a.nbytes >= _core.HUGE_MIN_BYTES:
        assert address % _core.HUGE_PAGE == 0 and not a.any()
    a[...] = 1
    gc.collect()
    assert (a == 1).all()


def test_boundary_refuses_bad_packed_buffers():
    m = make("lstm", 3, 8)
    layout = m._layout()
    n = layout.packed_size
    assert n == 4 * 16 * (3 + 3 + 8)   # W_ih packed and as blocked rows, W_hh: one block of 16
    good = _core.empty_aligned(n, np.float32)
    layout.pack(good, m._flat)
    raw = _core.empty_aligned(n + 1, np.float32)
    with pytest.raises(ValueError, match="64-byte"):
        layout.pack(raw[1:], m._flat)
    with pytest.raises(ValueError, match=f"packed must have {n} elements"):
        layout.pack(good[:-1], m._flat)
    with pytest.raises(TypeError, match="packed must have dtype float32"):
        layout.pack(_core.empty_aligned(n, np.float64), m._flat)
    seq = _core.Seq(_core.CELL_LSTM, 1, 1, 3, 8, 0, 1, 1, True, [1])
    y, h, c = (np.zeros(8, np.float32) for _ in range(3))
    scratch = np.zeros(seq.scratch_size(False), np.float32)
    with pytest.raises(ValueError, match="64-byte"):
        seq.forward(y, h, c, None, np.ones(3, np.float32), None, None, None, m._flat,
                    scratch, raw[1:])
    seq.forward(y, h, c, None, np.ones(3, np.float32), None, None, None, m._flat, scratch,
                good)
    expected = module_reference(m, np.ones((1, 1, 3), np.float32))
    assert_close("raw packed forward", y, expected.reshape(-1), 1e-4, 1e-5)
    assert all(a.ctypes.data % 64 == 0 for a in (_core.empty_aligned(k, np.float32)
                                                  for k in (1, 5, 17, 1000)))
