"""One module, many Python threads: eval-mode calls (sequences, cells, streams on their own
states) give every thread the serial answer; training calls and stream steps that would race
on one module or one state raise RuntimeError instead of corrupting it (lstmc.nn._engine
Engine, lstmc.nn.streaming StreamState).

The races are forced, not hoped for: a thread is held inside a call (an Event it waits on,
set up where the call takes its workspace or runs its kernels) while another thread calls.
"""
import threading

import numpy as np
import pytest

import lstmc
from lstmc.nn import _engine
from helpers import CELLS, make_cell, make_module, random_lengths

TIMEOUT = 60  # seconds a thread may take before the test calls it hung
THREADS = 8

pytestmark = pytest.mark.usefixtures("restore_threads")


def run_threads(work, n):
    """work(i) in n threads released together by a barrier; returns their results in order
    (an exception in a thread is raised here)."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def run(i):
        try:
            barrier.wait(TIMEOUT)
            results[i] = work(i)
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in ts), "a worker thread hung"
    if errors:
        raise errors[0]
    return results


def held_inside(call, at=1):
    """Runs `call` in a thread and waits until it is held at its `at`-th Engine.workspace
    (inside a training call's claim); returns (thread, release) where release() lets it
    finish and returns what it returned. Other threads' calls pass."""
    entered, go, out = threading.Event(), threading.Event(), {}
    original = _engine.Engine.workspace
    holder = []

    def workspace(self):
        if holder and threading.get_ident() == holder[0]:
            holder.append(None)
            if len(holder) == at + 1:
                entered.set()
                assert go.wait(TIMEOUT)
        return original(self)

    def run():
        holder.append(threading.get_ident())
        try:
            out["value"] = call()
        except BaseException as e:
            out["error"] = e
        entered.set()   # finished (or failed) without being held: the check below says so

    _engine.Engine.workspace = workspace
    t = threading.Thread(target=run)
    t.start()
    try:
        assert entered.wait(TIMEOUT) and t.is_alive(), \
            f"the call ended before it was held: {out}"
    except BaseException:
        go.set()
        raise
    finally:
        _engine.Engine.workspace = original   # the held thread already has it

    def release():
        go.set()
        t.join(TIMEOUT)
        assert not t.is_alive(), "the held call hung"
        if "error" in out:
            raise out["error"]
        return out["value"]

    return t, release


def _inputs(rng, n, I, dtype, T_max=9, B_max=5):
    """n calls' (x, lengths, h0) of varied shapes, some with lengths."""
    calls = []
    for i in range(n):
        T, B = int(rng.integers(1, T_max + 1)), int(rng.integers(1, B_max + 1))
        x = rng.standard_normal((T, B, I)).astype(dtype)
        calls.append((x, random_lengths(rng, T, B) if i % 2 else None))
    return calls


# ------------------------------------------------------------------------------------------
# eval mode: every thread gets the serial answer

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_eval_module_from_eight_threads_matches_serial(cell, threads):
    """Each thread runs its own calls of varied shapes (so the workspaces they use differ in
    size) on one module; each answer equals the same call run alone."""
    lstmc.set_num_threads(threads)
    rng = np.random.default_rng(3)
    m = make_module(cell, 5, 12, num_layers=2, bidirectional=True).eval()
    calls = [_inputs(rng, 6, 5, np.float32) for _ in range(THREADS)]
    serial = [[m(x, lengths=lengths) for x, lengths in mine] for mine in calls]

    def work(i):
        return [m(x, lengths=lengths) for x, lengths in calls[i]]

    for rounds in range(3):
        for i, got in enumerate(run_threads(work, THREADS)):
            for k, ((out, st), (out_s, st_s)) in enumerate(zip(got, serial[i])):
                np.testing.assert_array_equal(out, out_s, err_msg=f"thread {i} call {k}")
                for a, b in zip(st if isinstance(st, tuple) else (st,),
                                st_s if isinstance(st_s, tuple) else (st_s,)):
                    np.testing.assert_array_equal(a, b, err_msg=f"thread {i} call {k} state")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_eval_cell_from_eight_threads_matches_serial(cell):
    rng = np.random.default_rng(4)
    c = make_cell(cell, 6, 10).eval()
    B = [1 + i % 3 for i in range(THREADS)]   # threads of one batch size share a Stepper
    xs = [rng.standard_normal((20, B[i], 6)).astype(np.float32) for i in range(THREADS)]

    def walk(i):
        h, hs = None, []
        for x in xs[i]:
            h = c(x, h)
            hs.append(h)
        return hs

    serial = [walk(i) for i in range(THREADS)]
    for i, got in enumerate(run_threads(walk, THREADS)):
        for k, (a, b) in enumerate(zip(got, serial[i])):
            for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
                np.testing.assert_array_equal(u, v, err_msg=f"thread {i} step {k}")


def test_streams_of_one_module_from_eight_threads_match_serial():
    rng = np.random.default_rng(5)
    m = make_module("lstm", 4, 9, num_layers=2).eval()
    xs = [rng.standard_normal((30, 2, 4)).astype(np.float32) for _ in range(THREADS)]

    def stream(i):
        state = m.initial_state(2)
        return np.stack([m.step(x, state)[0].copy() for x in xs[i]])

    serial = [stream(i) for i in range(THREADS)]
    for i, got in enumerate(run_threads(stream, THREADS)):
        np.testing.assert_array_equal(got, serial[i], err_msg=f"thread {i}")


# ------------------------------------------------------------------------------------------
# training: a second thread's call raises, the first one's is intact

def _training_module(seed=6):
    lstmc.manual_seed(seed)
    m = make_module("lstm", 5, 8, num_layers=2).train()
    x = np.random.default_rng(seed).standard_normal((7, 3, 5)).astype(np.float32)
    return m, x, np.ones((7, 3, 8), np.float32)


def _fwd_bwd(m, x, dout):
    m.zero_grad()
    out, _ = m(x)
    dx, _ = m.backward(dout)
    return out, dx, {n: p.grad.copy() for n, p in m.named_parameters()}


def _assert_same(a, b):
    (out, dx, grads), (out_s, dx_s, grads_s) = a, b
    np.testing.assert_array_equal(out, out_s)
    np.testing.assert_array_equal(dx, dx_s)
    for n in grads_s:
        np.testing.assert_array_equal(grads[n], grads_s[n], err_msg=n)


def test_training_forward_while_another_thread_trains_raises():
    m, x, dout = _training_module()
    serial = _fwd_bwd(m, x, dout)
    t, release = held_inside(lambda: _fwd_bwd(m, x, dout))   # held in its forward
    with pytest.raises(RuntimeError, match=r"LSTM\(5, 8, num_layers=2.*in use by another "
                                           r"thread"):
        m(x)
    with pytest.raises(RuntimeError, match="in use by another thread"):
        m.backward(dout)
    _assert_same(release(), serial)      # the held thread's forward and backward: intact
    _assert_same(_fwd_bwd(m, x, dout), serial)   # and the module is usable after


def test_training_forward_during_another_threads_backward_raises():
    m, x, dout = _training_module()
    serial = _fwd_bwd(m, x, dout)
    t, release = held_inside(lambda: _fwd_bwd(m, x, dout), at=2)   # held in its backward
    with pytest.raises(RuntimeError, match="in use by another thread"):
        m(x)
    _assert_same(release(), serial)


def test_backward_after_another_threads_forward_raises():
    """Thread A's forward, then thread B's, then A's backward: A would differentiate B's
    forward. It raises; B's backward is still B's."""
    m, x, dout = _training_module()
    serial = _fwd_bwd(m, x, dout)
    x_a = np.zeros_like(x)
    m(x_a)                                            # "thread A" (this one)
    run_threads(lambda i: m(x), 1)                    # thread B's forward
    with pytest.raises(RuntimeError, match="another thread than the last training-mode "
                                           "forward"):
        m.backward(dout)

    def b(i):
        m.zero_grad()
        out, _ = m(x)
        return out, m.backward(dout)[0], {n: p.grad.copy() for n, p in m.named_parameters()}

    _assert_same(run_threads(b, 1)[0], serial)


def test_training_cell_from_two_threads_raises():
    lstmc.manual_seed(7)
    c = make_cell("gru", 3, 4).train()
    x = np.ones((2, 3), np.float32)
    t, release = held_inside(lambda: c(x))
    with pytest.raises(RuntimeError, match=r"GRU\(3, 4.*in use by another thread"):
        c(x)
    h = release()
    np.testing.assert_array_equal(h, c.eval()(x))


# ------------------------------------------------------------------------------------------
# streaming: one state, one thread at a time

class _HeldSeq:
    """Stands for a StreamState's Seq: its first forward waits until released."""

    def __init__(self, seq):
        self.seq, self.entered, self.go = seq, threading.Event(), threading.Event()

    def forward(self, *args):
        if not self.entered.is_set():
            self.entered.set()
            assert self.go.wait(TIMEOUT)
        return self.seq.forward(*args)


def test_step_on_a_state_another_thread_steps_raises():
    rng = np.random.default_rng(8)
    m = make_module("gru", 3, 5).eval()
    x = rng.standard_normal((1, 3)).astype(np.float32)
    state, other = m.initial_state(1), m.initial_state(1)
    expected = m.step(x, m.initial_state(1))[0].copy()
    held = state._seq = _HeldSeq(state._seq)
    t = threading.Thread(target=lambda: m.step(x, state))
    t.start()
    try:
        assert held.entered.wait(TIMEOUT)
        with pytest.raises(RuntimeError, match="being stepped by another thread"):
            m.step(x, state)
        np.testing.assert_array_equal(m.step(x, other)[0], expected)   # its own state: fine
    finally:
        held.go.set()
        t.join(TIMEOUT)
    assert not t.is_alive()
    np.testing.assert_array_equal(state.h[-1], expected)   # one step, not two
    np.testing.assert_array_equal(m.step(x, state)[0], m.step(x, other)[0])
