"""Memory in long-running processes: the workspaces a module keeps between calls follow its
recent calls (lstmc.nn._engine Workspace.trim), `lstmc.empty_cache()` frees them, and the
resident set of a process making thousands of calls of varying shapes (eval, training,
cells, streams) stays flat after warm-up.
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import lstmc
from lstmc.nn import _engine
from helpers import make_cell, make_module

pytestmark = pytest.mark.usefixtures("restore_threads")

TRIM = _engine.Engine.TRIM_EVERY


def _call(m, T, B):
    return m(np.ones((T, B, m.input_size), m.dtype))


def test_a_long_call_does_not_keep_its_workspace():
    """One long sequence, then short ones: within two trims the kept workspace is what the
    short calls need, as in a module that only ever saw short calls."""
    m, fresh = (make_module("lstm", 16, 32).eval() for _ in range(2))
    _call(m, 3000, 8)
    big = m._engine.cached_bytes()
    assert big > 3000 * 8 * 4 * 32 * 4 / 2   # the input projection's scratch, at least
    for _ in range(2 * TRIM):
        _call(m, 5, 2)
        _call(fresh, 5, 2)
    assert m._engine.cached_bytes() == fresh._engine.cached_bytes() < big / 100


def test_training_reserve_follows_recent_calls():
    m = make_module("gru", 4, 8, num_layers=2).train()
    m(np.ones((2000, 4, 4), np.float32))
    big = m._engine.cached_bytes()
    for _ in range(2 * TRIM):
        out, _ = m(np.ones((3, 2, 4), np.float32))
        m.backward(np.ones_like(out))
    assert m._engine.cached_bytes() < big / 100


def test_workspaces_of_concurrent_calls_are_dropped_when_unused():
    m = make_module("rnn_tanh", 3, 6).eval()
    barrier = threading.Barrier(8)

    def work():
        barrier.wait(60)
        for _ in range(20):
            _call(m, 50, 4)

    ts = [threading.Thread(target=work) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts)
    assert 1 <= len(m._engine._idle) <= 8
    for _ in range(2 * TRIM):
        _call(m, 50, 4)
    assert len(m._engine._idle) == 1   # one caller now: one workspace


def test_empty_cache_frees_every_workspace():
    rng = np.random.default_rng(0)
    modules = [make_module("lstm", 5, 7, num_layers=2).eval(), make_module("gru", 5, 7).train()]
    cell = make_cell("lstm", 5, 7).eval()
    x = rng.standard_normal((30, 3, 5)).astype(np.float32)
    before = [m(x)[0] for m in modules] + [cell(x[0])[0]]
    assert _engine.cached_bytes() > 0
    lstmc.empty_cache()
    assert _engine.cached_bytes() == 0
    assert all(len(m._engine._idle) == 0 for m in modules)
    after = [m(x)[0] for m in modules] + [cell(x[0])[0]]   # and calls work as before
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    out, _ = modules[1](x)
    lstmc.empty_cache()                  # what a training forward saved stays
    modules[1].backward(np.ones_like(out))


# The child makes every kind of call with shapes drawn at random, measures its resident set
# after a warm-up round and after the rest, and prints both. Eval calls alternate between a
# long and short T, so a workspace that only grew would end at the long calls' size.
RSS_CHILD = r"""
import os, sys
import numpy as np
import lstmc

def rss():
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

rng = np.random.default_rng(0)
lstm = lstmc.nn.LSTM(8, 16, num_layers=2)
gru = lstmc.nn.GRU(8, 16, bidirectional=True)
cell = lstmc.nn.LSTMCell(8, 16)
opt = lstmc.optim.SGD(list(lstm.parameters()) + list(gru.parameters()), lr=1e-3)

def round_(n):
    for i in range(n):
        T, B = int(rng.integers(1, 60)), int(rng.integers(1, 9))
        x = rng.standard_normal((T, B, 8)).astype(np.float32)
        lengths = rng.integers(0, T + 1, B) if i % 3 == 0 else None
        for m in (lstm, gru):
            m.eval()
            m(x, lengths=lengths)
            m(x[: 1 + T // 8])
            m.train()
            opt.zero_grad()
            out, _ = m(x, lengths=lengths)
            m.backward(np.ones_like(out))
            opt.step()
        lstm.eval()
        state = lstm.initial_state(B)
        for t in range(T):
            lstm.step(x[t], state)
        h = None
        for t in range(min(T, 5)):
            h = cell(x[t], h)
        if i % 97 == 0:
            lstmc.empty_cache()

round_(300)
warm = rss()
round_(int(sys.argv[1]))
print(warm, rss())
"""

# the bound on growth after warm-up: 1500 rounds (about 65,000 calls, 2.7 s) grew it by
# 0.6 MB, 4000 rounds by 1.3 MB (allocator fragmentation, shapes first seen late); a leak of
# 1 KB per sequence forward or backward alone (8 a round) would add 12 MB
RSS_GROWTH_BOUND = 4 << 20


def test_resident_set_flat_over_many_calls():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    calls = 1500
    proc = subprocess.run([sys.executable, "-c", RSS_CHILD, str(calls)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    warm, end = map(int, proc.stdout.split())
    assert end - warm < RSS_GROWTH_BOUND, (
        f"resident set grew {(end - warm) / 2**20:.1f} MB over {calls} rounds of calls after "
        f"warm-up ({warm / 2**20:.1f} -> {end / 2**20:.1f} MB)")
