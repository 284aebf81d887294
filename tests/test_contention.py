"""The contention governor (csrc/seq.c): a process whose 2-thread calls keep waiting for a
mate that another process holds off its core runs the calls that follow on one thread, and
returns to two once the core is free again.

The scenario runs in its own interpreter bound to two CPUs, beside a process that spins on
the second of them (killed by its pid), with a timeout. Speed itself is measured by
benchmarks/bench_contention.py, never here.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lstmc
from helpers import make_module, random_lengths

lstmc_default_threads = lstmc.get_num_threads()

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not lstmc.openmp_enabled()
    or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux, an OpenMP build and two CPUs")

SCENARIO = textwrap.dedent("""
    import json, os, subprocess, sys, time
    cpus = sorted(os.sched_getaffinity(0))[:2]
    os.sched_setaffinity(0, cpus)              # before OpenMP's threads exist
    import numpy as np
    import lstmc
    from lstmc import _core

    lstmc.set_num_threads(2)
    I, H, B, T = (int(v) for v in sys.argv[1:5])
    m = lstmc.nn.LSTM(I, H)
    m.eval()
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    expected = m(x)[0]

    def calls_until(cap, seconds):
        '''Calls m(x) until thread_cap() == cap or `seconds` pass: (reached, calls, all
        outputs equal to the uncontended one)'''
        end, n, same = time.monotonic() + seconds, 0, True
        while time.monotonic() < end:
            same &= bool(np.array_equal(m(x)[0], expected))
            n += 1
            if _core.thread_cap() == cap:
                return True, n, same
        return False, n, same

    spin = "import os\\nos.sched_setaffinity(0, [%d])\\nwhile True:\\n    pass\\n" % cpus[1]
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)
        capped = calls_until(1, 20)
    finally:
        busy.kill()
        busy.wait()
    time.sleep(0.1)
    freed = calls_until(0, 20)
    print(json.dumps({"capped": capped, "freed": freed}))
""")


@pytest.mark.parametrize("shape", [(80, 320, 1, 200), (128, 256, 32, 100)],
                         ids=["batch 1: a barrier per step", "batch 32: rows plan"])
def test_busy_core_shrinks_the_team_and_a_free_one_restores_it(shape):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", SCENARIO, *map(str, shape)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    reached, calls, same = out["capped"]
    assert reached, f"still {calls} calls on two threads beside a busy core"
    assert same, "a call beside a busy core changed the answer"
    reached, calls, same = out["freed"]
    assert reached, f"still capped after {calls} calls with the core free again"
    assert same


# (name, cell, I, H, B, T, extra module options): one call of each plan (csrc/seq.c plan_of),
# each with work enough per step for a team of two (LSTMC_PAR_MIN_STEP_WORK)
PLANS = [
    ("shared units, batch 1", "lstm", 80, 320, 1, 60, {}),
    ("rows, two layers", "gru", 11, 40, 33, 6, {"num_layers": 2}),
    ("a direction a thread", "lstm", 16, 64, 4, 20, {"bidirectional": True}),
    ("BLAS projection past 1024 positions", "rnn_tanh", 64, 256, 8, 200, {}),
    ("projection", "lstm_proj", 24, 96, 16, 20, {"proj_size": 17}),
]


@pytest.mark.parametrize("name, cell, I, H, B, T, extra", PLANS, ids=[p[0] for p in PLANS])
def test_capped_inference_gives_the_whole_teams_answer(float_dtype, name, cell, I, H, B, T,
                                                       extra):
    """A capped call shares the work among fewer threads but keeps the kernels planned for
    the whole team, so its answer is the whole team's bit for bit."""
    from lstmc import _core

    rng = np.random.default_rng(B)
    m = make_module(cell, I, H, dtype=float_dtype, **extra).eval()
    x = rng.standard_normal((T, B, I)).astype(float_dtype)
    lengths = np.sort(random_lengths(rng, T, B))[::-1].copy() if B > 1 else None
    try:
        lstmc.set_num_threads(2)
        whole = [np.copy(a) for a in _flat(m(x, lengths=lengths))]
        _core._set_thread_cap(1)
        assert _core.thread_cap() == 1
        capped = [np.copy(a) for a in _flat(m(x, lengths=lengths))]
        assert _core.thread_cap() == 1, "the cap was lifted during the call"
    finally:
        _core._set_thread_cap(0)
        lstmc.set_num_threads(lstmc_default_threads)
    for a, b in zip(whole, capped):
        np.testing.assert_array_equal(b, a, err_msg=name)


def _flat(result):
    out, finals = result
    return [out] + list(finals if isinstance(finals, tuple) else [finals])


def test_ragged_rows_never_cap_the_team():
    """A rows plan's threads wait at its end for the thread with the longer rows, however idle
    the machine: such waits are not contention, and leave the team whole."""
    from lstmc import _core

    m = lstmc.nn.LSTM(16, 64).eval()
    B, T = 32, 300
    x = np.random.default_rng(0).standard_normal((T, B, 16)).astype(np.float32)
    lengths = np.array([T] * (B // 2) + [1] * (B // 2))   # the first thread's rows: all long
    try:
        lstmc.set_num_threads(2)
        _core._set_thread_cap(0)
        for _ in range(6):
            m(x, lengths=lengths)
            assert _core.thread_cap() == 0
    finally:
        lstmc.set_num_threads(lstmc_default_threads)
