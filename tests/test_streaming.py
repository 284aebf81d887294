"""Streaming through a sequence module one timestep at a time: `initial_state` / `step`.

* step by step over T equals the whole-sequence forward, and both equal the float64 NumPy
  reference stepped layer by layer (LSTM with and without proj_size, GRU both reset modes,
  RNN tanh / relu; 1 and 2 layers; float32 and float64; batch 1 and 3; also at 2 threads,
  where the kernels share a step's units between threads while h and c are updated in place);
* the state: h / c after each step, forks, independent streams, writes by the user, `out=`;
* eval semantics in training mode (no dropout, nothing saved);
* no allocation per step (tracemalloc), for the step and not just on average;
* argument errors name the argument; bidirectional modules refuse with the reason;
* the one-step cells in eval mode (which run on the same machinery) against the reference;
* hypothesis over sizes including 1 and odd ones.
"""
import itertools
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lstmc
from lstmc import reference
from helpers import CELLS, assert_close, make_module


def tol(dtype):
    return dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)


def make(name, I=5, H=6, L=2, dtype=np.float64, **extra):
    lstmc.manual_seed(7)
    m = make_module(name, I, H, dtype=dtype, num_layers=L, **extra)
    m.eval()
    return m


def reference_steps(m, xs, h0, c0):
    """The float64 reference, one step of every layer at a time: outputs (T, B, H_out) and
    the final h (L, B, H_out), c (L, B, H) (c None without a cell state)."""
    sd = {k: np.asarray(v, np.float64) for k, v in m.state_dict().items()}
    h = [np.array(a, np.float64) for a in h0]
    c = None if c0 is None else [np.array(a, np.float64) for a in c0]
    ys = []
    for x in xs:
        inp = np.asarray(x, np.float64)
        for l in range(m.num_layers):
            w = [sd.get(f"{n}_l{l}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            if isinstance(m, lstmc.nn.LSTM):
                h[l], c[l], _ = reference.lstm_cell_forward(inp, h[l], c[l], *w,
                                                            w_hr=sd.get(f"weight_hr_l{l}"))
            elif isinstance(m, lstmc.nn.GRU):
                h[l], _ = reference.gru_cell_forward(inp, h[l], *w, reset_after=m.reset_after)
            else:
                h[l], _ = reference.rnn_cell_forward(inp, h[l], *w,
                                                     nonlinearity=m.nonlinearity)
            inp = h[l]
        ys.append(inp)
    return np.stack(ys), np.stack(h), None if c is None else np.stack(c)


def random_states(m, B, rng):
    h0 = rng.standard_normal((m.num_layers, B, m._hout)).astype(m.dtype)
    c0 = (rng.standard_normal((m.num_layers, B, m.hidden_size)).astype(m.dtype)
          if isinstance(m, lstmc.nn.LSTM) else None)
    return h0, c0


def stream(m, xs, h0, c0):
    state = m.initial_state(batch_size=xs.shape[1], h0=h0, c0=c0)
    ys = []
    for x in xs:
        y, same = m.step(x, state)
        assert same is state
        assert_close("y_t vs state.h[-1]", y, state.h[-1], rtol=0, atol=0)
        ys.append(y.copy())
    return np.stack(ys), state


def check_stream(m, T, B, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((T, B, m.input_size)).astype(m.dtype)
    h0, c0 = random_states(m, B, rng)
    ys, state = stream(m, xs, h0, c0)
    hx = h0 if c0 is None else (h0, c0)
    out, hn = m(xs, hx)
    hn, cn = hn if isinstance(hn, tuple) else (hn, None)
    t = tol(m.dtype)
    assert_close("step outputs vs forward", ys, out, **t)
    assert_close("state.h vs h_n", state.h, hn, **t)
    if cn is not None:
        assert_close("state.c vs c_n", state.c, cn, **t)
    ref_y, ref_h, ref_c = reference_steps(m, xs, h0, c0)
    ref_t = dict(rtol=1e-9, atol=1e-11) if m.dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    assert_close("step outputs vs reference", ys, ref_y, **ref_t)
    assert_close("state.h vs reference", state.h, ref_h, **ref_t)
    if ref_c is not None:
        assert_close("state.c vs reference", state.c, ref_c, **ref_t)


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("B", [1, 3])
def test_step_equals_forward_and_reference(name, B, float_dtype):
    check_stream(make(name, dtype=float_dtype), T=5, B=B)


@pytest.mark.parametrize("name", ["lstm", "lstm_proj", "gru_rb"])
def test_step_in_place_with_a_team_of_threads(name):
    """H = 128 is large enough for the kernels to split a step's units between 2 threads;
    each then updates its own columns of state.h / state.c in place."""
    before = lstmc.get_num_threads()
    lstmc.set_num_threads(2)
    try:
        check_stream(make(name, I=64, H=128, proj_size=100) if name == "lstm_proj"
                     else make(name, I=64, H=128), T=4, B=2)
    finally:
        lstmc.set_num_threads(before)


def test_unbatched_input_and_out():
    m = make("lstm_proj")
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((4, 1, m.input_size))
    ys, _ = stream(m, xs, None, None)
    state = m.initial_state()
    out = np.empty((1, 3))
    for t, x in enumerate(xs):
        y, _ = m.step(x[0], state)              # (I,) in -> (H_out,) out
        assert y.shape == (3,)
        assert_close("unbatched y_t", y, ys[t, 0], rtol=0, atol=0)
    state = m.initial_state()
    for t, x in enumerate(xs):
        y, _ = m.step(x, state, out=out)
        assert y is out
        assert_close("y_t in out", out, ys[t], rtol=0, atol=0)


def test_output_buffer_is_reused():
    """Documented: without out=, y_t is the state's buffer, rewritten by the next step."""
    m = make("gru")
    state = m.initial_state(2)
    x = np.ones((2, m.input_size))
    y1, _ = m.step(x, state)
    kept = y1.copy()
    y2, _ = m.step(x, state)
    assert y2 is y1
    assert not np.array_equal(kept, y2)


def test_states_are_independent_and_forkable():
    m = make("lstm")
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((6, 2, m.input_size))
    ys, _ = stream(m, xs, None, None)
    a, b = m.initial_state(2), m.initial_state(2)
    for t in range(3):                          # interleaved streams do not interfere
        m.step(xs[t], a)
        m.step(xs[t] * 0, b)
    fork = m.initial_state(h0=a)                # a copy of a's h and c
    assert fork.batch_size == 2 and fork.h is not a.h
    for t in range(3, 6):
        ya = m.step(xs[t], a)[0].copy()
        yf = m.step(xs[t], fork)[0]
        assert_close(f"stream a, step {t}", ya, ys[t], rtol=0, atol=0)
        assert_close(f"fork, step {t}", yf, ys[t], rtol=0, atol=0)


def test_user_writes_to_the_state_take_effect():
    m = make("rnn_tanh")
    x = np.random.default_rng(3).standard_normal((1, m.input_size))
    state = m.initial_state()
    first = m.step(x, state)[0].copy()
    state.h[:] = 0                              # restart the stream in place
    assert_close("after reset", m.step(x, state)[0], first, rtol=0, atol=0)


def test_state_of_a_same_shaped_module_is_accepted():
    a, b = make("lstm"), make("lstm")
    b.load_state_dict(a.state_dict())
    x = np.ones((1, a.input_size))
    sa, sb = a.initial_state(), a.initial_state()
    assert_close("b stepping a's state", b.step(x, sb)[0], a.step(x, sa)[0], rtol=0, atol=0)


def test_step_ignores_training_mode_and_dropout():
    m = make("lstm", dropout=0.5)
    m.train()
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((3, 2, m.input_size))
    ys, _ = stream(m, xs, None, None)
    m.eval()
    assert_close("train-mode step vs eval forward", ys, m(xs)[0], **tol(np.float64))
    m.train()
    with pytest.raises(RuntimeError):           # the steps saved nothing for backward
        m.backward(np.zeros((3, 2, m.hidden_size)))


def test_x_t_of_other_dtype_or_layout_is_converted():
    m = make("gru", dtype=np.float32)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((m.input_size, 3))           # float64, transposed view
    want = m.step(np.ascontiguousarray(x.T, np.float32), m.initial_state(3))[0].copy()
    assert_close("converted x_t", m.step(x.T, m.initial_state(3))[0], want, rtol=0, atol=0)
    assert_close("list x_t", m.step(x.T.tolist(), m.initial_state(3))[0], want, **tol(np.float32))


def test_no_allocation_per_step():
    """Net traced memory over 1000 steps is zero, and no step allocates anything as large as
    one of its arrays (numpy reports array data to tracemalloc)."""
    m = make("lstm_proj", I=256, H=256, L=2, proj_size=200)
    state = m.initial_state(batch_size=1)
    x = np.ones((1, m.input_size))
    smallest = min(state.h[0].nbytes, state.c[0].nbytes, x.nbytes)   # 1600 bytes
    for _ in range(10):
        m.step(x, state)                       # warm up lazily created objects
    tracemalloc.start()
    try:
        m.step(x, state)
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        for _ in itertools.repeat(None, 1000):   # range would keep its last int alive
            m.step(x, state)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before <= 0, f"{after - before} bytes kept over 1000 steps"
    assert peak - before < smallest, f"a step allocated {peak - before} bytes at once"


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_relu"])
def test_argument_errors_name_the_argument(name):
    m = make(name, I=5)
    state = m.initial_state(batch_size=2)
    with pytest.raises(ValueError, match=r"x_t .*\(2, 5\).*got \(3, 5\)"):
        m.step(np.zeros((3, 5)), state)
    with pytest.raises(ValueError, match=r"x_t .*got \(5,\)"):     # (I,) only when B == 1
        m.step(np.zeros(5), state)
    with pytest.raises(ValueError, match=r"x_t .*got \(2, 4\)"):
        m.step(np.zeros((2, 4)), state)
    with pytest.raises(TypeError, match="x_t"):
        m.step(np.zeros((2, 5), dtype=np.int64), state)
    with pytest.raises(TypeError, match="state must be a StreamState"):
        m.step(np.zeros((2, 5)), (state.h, state.c))
    other = make(name, I=5, H=7).initial_state(batch_size=2)
    with pytest.raises(ValueError, match="state belongs to a module of other shapes"):
        m.step(np.zeros((2, 5)), other)
    with pytest.raises(ValueError, match=r"out .*\(2, 6\)"):
        m.step(np.zeros((2, 5)), state, out=np.empty((2, 7)))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 2, 6\), got \(2, 6\)"):
        m.initial_state(batch_size=2, h0=np.zeros((2, 6)))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        m.initial_state(batch_size=0)
    if name == "lstm":
        with pytest.raises(ValueError, match=r"c0 must have shape \(2, 2, 6\)"):
            m.initial_state(batch_size=2, c0=np.zeros((2, 1, 6)))
    else:
        with pytest.raises(ValueError, match="c0 must be None"):
            m.initial_state(batch_size=2, c0=np.zeros((2, 2, 6)))


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_tanh"])
def test_bidirectional_refuses_to_stream(name):
    m = make(name, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional.*reverse direction"):
        m.initial_state()
    uni = make(name)
    with pytest.raises(ValueError, match="bidirectional"):
        m.step(np.zeros((1, 5)), uni.initial_state())


@pytest.mark.parametrize("cell_cls, kw", [(lstmc.nn.LSTMCell, {}), (lstmc.nn.GRUCell, {}),
                                          (lstmc.nn.GRUCell, {"reset_after": False}),
                                          (lstmc.nn.RNNCell, {"nonlinearity": "relu"})])
@pytest.mark.parametrize("B", [1, 3])
def test_eval_cells_against_reference(cell_cls, kw, B, float_dtype):
    """Eval-mode cells run on the streaming machinery; batch sizes may change between calls
    and states may be non-contiguous or of another float dtype."""
    lstmc.manual_seed(3)
    cell = cell_cls(5, 6, dtype=float_dtype, **kw).eval()
    w = {n: np.asarray(p.data, np.float64) for n, p in cell.named_parameters()}
    rng = np.random.default_rng(6)
    t = tol(float_dtype)
    for b in (B, 2, B):
        x = rng.standard_normal((b, 5))
        h = rng.standard_normal((6, b)).T          # a transposed float64 view
        args = (w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"])
        if cell_cls is lstmc.nn.LSTMCell:
            c = rng.standard_normal((b, 6))
            h1, c1 = cell(x, (h, c))
            rh, rc, _ = reference.lstm_cell_forward(x, h, c, *args)
            assert_close("c'", c1, rc, **t)
            h1b, c1b = cell(x, (h, c))
            assert h1b is not h1 and c1b is not c1       # fresh arrays, as torch's cells
        elif cell_cls is lstmc.nn.GRUCell:
            h1 = cell(x, h)
            rh, _ = reference.gru_cell_forward(x, h, *args, reset_after=cell.reset_after)
        else:
            h1 = cell(x, h)
            rh, _ = reference.rnn_cell_forward(x, h, *args, nonlinearity="relu")
        assert h1.dtype == float_dtype
        assert_close("h'", h1, rh, **t)


@pytest.mark.parametrize("cell_cls", [lstmc.nn.LSTMCell, lstmc.nn.GRUCell, lstmc.nn.RNNCell])
def test_eval_cells_fast_call_matches_the_converting_one(cell_cls, float_dtype):
    """Arrays already of the cell's dtype, batched and contiguous skip the conversions (the
    common serving call); the result must be the converting path's, states None or given,
    fresh arrays that do not alias the inputs."""
    lstmc.manual_seed(4)
    cell = cell_cls(5, 6, dtype=float_dtype).eval()
    rng = np.random.default_rng(7)
    lstm = cell_cls is lstmc.nn.LSTMCell
    for b in (1, 3):
        x = rng.standard_normal((b, 5)).astype(float_dtype)
        h = rng.standard_normal((b, 6)).astype(float_dtype)
        c = rng.standard_normal((b, 6)).astype(float_dtype)
        for hx in ([None, (h, c), (h, None), (None, c)] if lstm else [None, h]):
            fast = cell(x, hx)
            slow = cell(x.tolist(), hx)           # a list takes the converting path
            fast = fast if lstm else (fast,)
            slow = slow if lstm else (slow,)
            for f, sl in zip(fast, slow):
                assert f.dtype == float_dtype and f.shape == (b, 6)
                np.testing.assert_array_equal(f, sl)
                assert not any(np.shares_memory(f, a) for a in (x, h, c))
        # states the fast call does not take (Fortran order, another float dtype) convert
        # to the same values; shapes it does not take still raise, naming the argument
        other = np.float64 if float_dtype == np.float32 else np.float32
        for h2 in (np.asfortranarray(h), h.astype(other)):
            ref_h = cell(x, (h, c))[0] if lstm else cell(x, h)
            got_h = cell(x, (h2, c))[0] if lstm else cell(x, h2)
            assert_close("converted h", got_h, ref_h,
                         1e-6 if other == np.float32 else 0, 1e-6 if other == np.float32 else 0)
        with pytest.raises(ValueError, match="x must be"):
            cell(np.zeros((b, 6), float_dtype), (h, c) if lstm else h)
        with pytest.raises(ValueError, match=r"x must have at least one row, got shape \(0, 5\)"):
            cell(np.zeros((0, 5), float_dtype))
        with pytest.raises(ValueError, match="h must have shape"):
            cell(x, (h[:, :5].copy(), c) if lstm else h[:, :5].copy())
        # as many elements in another shape: still refused, not read as (b, 6)
        with pytest.raises(ValueError, match="h must have shape"):
            ht = np.ascontiguousarray(h.T)
            cell(x, (ht, c) if lstm else ht)
        # each call's states are new memory: none shared with the last call's, or each other
        first, second = cell(x, hx), cell(x, hx)
        first = first if lstm else (first,)
        second = second if lstm else (second,)
        arrays = [a for a in first + second if a is not None]
        assert not any(np.shares_memory(a, b_) for i, a in enumerate(arrays)
                       for b_ in arrays[i + 1:])


def test_plain_rows_accepts_only_matrices_the_kernels_read_as_they_are(float_dtype):
    """_core.plain_rows, the cells' fast-path test: the row count of a C-contiguous 2-D
    array of the dtype with the given width, -1 for anything else."""
    dtype = float_dtype
    other = np.float64 if dtype == np.float32 else np.float32
    a = np.zeros((3, 4), dtype)
    assert lstmc._core.plain_rows(a, np.dtype(dtype), 4) == 3
    assert lstmc._core.plain_rows(a[1:], np.dtype(dtype), 4) == 2       # a contiguous view
    assert lstmc._core.plain_rows(np.zeros((0, 4), dtype), np.dtype(dtype), 4) == 0
    for refused in (a.astype(other), np.asfortranarray(a),
                    a[:, :2], a.T, np.zeros(4, dtype), np.zeros((1, 3, 4), dtype),
                    a.astype(a.dtype.newbyteorder()), a.tolist(), None):
        width = 2 if refused is not None and np.shape(refused)[-1:] == (2,) else 4
        assert lstmc._core.plain_rows(refused, np.dtype(dtype), width) == -1, refused


def test_eval_cell_step_between_training_step_and_backward():
    """An eval-mode call between a training call and its backward leaves the backward to the
    training call: its unbatched shapes, not the eval call's batch."""
    lstmc.manual_seed(5)
    cell = lstmc.nn.LSTMCell(4, 3)
    rng = np.random.default_rng(8)
    x = rng.standard_normal(4).astype(np.float32)
    cell(x)                                            # training, unbatched
    dx_ref, (dh_ref, dc_ref) = cell.backward(np.ones(3, np.float32))
    for batch in (rng.standard_normal((2, 4)).astype(np.float32),   # the fast eval call
                  rng.standard_normal((2, 4)).tolist()):                # the converting one
        cell.zero_grad()
        cell(x)
        cell.eval()
        cell(batch)                                        # eval, batched
        cell.train()
        dx, (dh, dc) = cell.backward(np.ones(3, np.float32))
        assert dx.shape == (4,) and dh.shape == (3,) and dc.shape == (3,)
        np.testing.assert_array_equal(dx, dx_ref)
        np.testing.assert_array_equal(dh, dh_ref)
        np.testing.assert_array_equal(dc, dc_ref)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(CELLS)), I=st.integers(1, 9), H=st.integers(1, 9),
       L=st.integers(1, 3), T=st.integers(1, 4), B=st.integers(1, 4),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_step_equals_forward_hypothesis(name, I, H, L, T, B, dtype, seed):
    if name == "lstm_proj":
        H = max(H, 2)   # 0 < proj_size < hidden_size
        m = make(name, I=I, H=H, L=L, dtype=dtype, proj_size=max(1, H // 2))
    else:
        m = make(name, I=I, H=H, L=L, dtype=dtype)
    check_stream(m, T=T, B=B, seed=seed)


@pytest.mark.parametrize("bad, error, message", [
    ({"x": np.ones(4)}, TypeError, "x must have dtype float32, got float64"),
    ({"x": np.ones(4, ">f4")}, TypeError, "x must have dtype float32, got >f4"),
    ({"x": np.ones(8, np.float32)[::2]}, ValueError, "x must be C-contiguous"),
    ({"x": [1.0] * 4}, TypeError, "x must be a numpy.ndarray, got list"),
    ({"x": np.ones(5, np.float32)}, ValueError, "x must have 4 elements, got 5"),
    ({"y": np.zeros(4, np.float32)[None].repeat(2, 0)[0]}, None, None),   # a fine view
    ({"scratch": np.zeros(3, np.float32)}, ValueError, "scratch must have at least"),
    ({"hn": "readonly"}, ValueError, "hn must be writable"),
])
def test_boundary_checks_of_a_one_step_call(bad, error, message):
    """The kernels' boundary (which step calls directly, with the state's own buffers) still
    checks every array; what it refuses is named with the reason."""
    seq = lstmc._core.Seq(lstmc._core.CELL_LSTM, 1, 1, 4, 4, 0, 1, 1, True,
                          np.ones(1, np.intc))
    f32 = np.float32
    args = dict(y=np.zeros(4, f32), hn=np.zeros(4, f32), cn=np.zeros(4, f32), reserve=None,
                x=np.ones(4, f32), h0=None, c0=None, masks=None,
                params=np.full(seq.param_count, 0.1, f32),
                scratch=np.zeros(seq.scratch_size(False), f32))
    args.update(bad)
    if isinstance(args["hn"], str):
        args["hn"] = np.zeros(4, f32)
        args["hn"].flags.writeable = False
    if error is None:
        seq.forward(**args)
        assert np.all(args["y"] != 0)
    else:
        with pytest.raises(error, match=message):
            seq.forward(**args)
