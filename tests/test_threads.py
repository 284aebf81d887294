"""Threads: OpenMP present, thread-count rules, thread-count independence, GIL release.

Anything that starts a fresh interpreter does so with ``subprocess`` (fork + exec: no
OpenMP runtime is ever forked half-initialised) and a timeout, so a hang fails the test
instead of stalling the suite.
"""
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import lstmc
from helpers import (CELLS, KERNEL_TOL, THREAD_TOL, as_list, assert_close, make_module,
                     module_reference, random_lengths, scale_of)

TIMEOUT = 120  # seconds, per child process

pytestmark = pytest.mark.usefixtures("restore_threads")


def run_child(code, **env_overrides):
    env = dict(os.environ)
    for k, v in env_overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    return proc.stdout.strip()


# ------------------------------------------------------------------------------------------
# OpenMP and the thread-count rules


def test_openmp_enabled():
    if os.environ.get("LSTMC_ALLOW_NO_OPENMP") == "1":
        pytest.skip("LSTMC_ALLOW_NO_OPENMP=1: a serial build was asked for")
    assert lstmc.openmp_enabled() is True, (
        "lstmc was built WITHOUT OpenMP: the build lost it (see the setup.py probe output). "
        "Set LSTMC_ALLOW_NO_OPENMP=1 only if a serial build is intended.")


def test_set_get_num_threads_round_trip():
    for n in (1, 2, 1):
        lstmc.set_num_threads(n)
        assert lstmc.get_num_threads() == n


@pytest.mark.parametrize("n", [0, -1, -8])
def test_set_num_threads_rejects_non_positive(n):
    before = lstmc.get_num_threads()
    with pytest.raises(ValueError):
        lstmc.set_num_threads(n)
    assert lstmc.get_num_threads() == before


def test_num_threads_is_process_wide():
    """set_num_threads in one Python thread holds in every other (OpenMP's own
    omp_set_num_threads is per calling thread; lstmc's rule must not be)."""
    lstmc.set_num_threads(1)
    seen = []
    t = threading.Thread(target=lambda: seen.append(lstmc.get_num_threads()))
    t.start()
    t.join(TIMEOUT)
    assert seen == [1]


def test_omp_num_threads_is_honoured():
    code = ("import lstmc, numpy as np\n"
            "m = lstmc.nn.LSTM(4, 8)\n"
            "m(np.ones((3, 2, 4), np.float32))\n"
            "print(lstmc.get_num_threads())")
    assert run_child(code, OMP_NUM_THREADS="1") == "1"
    assert int(run_child(code, OMP_NUM_THREADS=None)) >= 1


# ------------------------------------------------------------------------------------------
# the default team: the process's share of the machine (fake cgroup trees, no root needed)


def _cgroup_tree(tmp_path, proc_line, files):
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_line + "\n")
    return str(root), str(proc)


@pytest.mark.parametrize("files, expected", [
    ({"a/b/cpu.max": "150000 100000\n"}, (2, "cgroup cpu.max 150000 100000")),
    ({"a/b/cpu.max": "max 100000\n"}, None),
    ({"a/b/cpu.max": "max 100000\n", "a/cpu.max": "50000 100000\n"},
     (1, "cgroup cpu.max 50000 100000")),                       # a parent's quota bounds too
    ({"a/b/cpu.max": "400000 100000\n", "cpu.max": "200000 100000\n"},
     (2, "cgroup cpu.max 200000 100000")),
    ({"a/b/cpu.max": "1000 100000\n"}, (1, "cgroup cpu.max 1000 100000")),   # at least 1
], ids=["quota", "max", "parent", "smallest", "tiny"])
def test_cgroup_v2_cpu_max(tmp_path, files, expected):
    files = dict(files, **{"cgroup.controllers": "cpu\n", "a/b/cgroup.procs": ""})
    root, proc = _cgroup_tree(tmp_path, "0::/a/b", files)
    assert lstmc._threads.cgroup_cpu_limit(root, proc) == expected


def test_cgroup_v2_inside_a_namespace(tmp_path):
    """A container sees its own cgroup as the mount's root; /proc/self/cgroup may still
    name a path that does not exist under it."""
    root, proc = _cgroup_tree(tmp_path, "0::/../host/x", {"cgroup.controllers": "cpu\n",
                                                          "cpu.max": "300000 100000\n"})
    assert lstmc._threads.cgroup_cpu_limit(root, proc) == (3, "cgroup cpu.max 300000 100000")


@pytest.mark.parametrize("quota, expected", [
    ("250000", (3, "cgroup cpu.cfs_quota_us 250000 cpu.cfs_period_us 100000")),
    ("-1", None)])
def test_cgroup_v1_cfs_quota(tmp_path, quota, expected):
    lines = "12:memory:/docker/x\n4:cpu,cpuacct:/docker/x"
    root, proc = _cgroup_tree(tmp_path, lines, {
        "cpu,cpuacct/docker/x/cpu.cfs_quota_us": quota + "\n",
        "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"})
    assert lstmc._threads.cgroup_cpu_limit(root, proc) == expected


def test_cgroup_without_files(tmp_path):
    assert lstmc._threads.cgroup_cpu_limit(str(tmp_path), str(tmp_path / "absent")) is None
    root, proc = _cgroup_tree(tmp_path, "0::/", {})   # no cgroup fs mounted
    assert lstmc._threads.cgroup_cpu_limit(root, proc) is None


@pytest.mark.parametrize("omp, affinity, quota, expected", [
    (None, 4, None, (4, "CPU affinity mask")),
    (None, 4, (2, "cgroup cpu.max 200000 100000"), (2, "cgroup cpu.max 200000 100000")),
    (None, 1, (2, "cgroup cpu.max 200000 100000"), (1, "CPU affinity mask")),
    (None, 2, (2, "cgroup cpu.max 200000 100000"), (2, "CPU affinity mask")),
    ("3", 1, (1, "cgroup cpu.max 100000 100000"), (3, "OMP_NUM_THREADS")),
    ("5,2", 1, None, (5, "OMP_NUM_THREADS")),       # libgomp's nested list: the outer team
    ("zero", 2, None, (2, "CPU affinity mask")),    # not a number: ignored
    ("0", 2, None, (2, "CPU affinity mask")),
    (None, None, None, (os.cpu_count() or 1, "os.cpu_count()")),
])
def test_default_num_threads_precedence(monkeypatch, omp, affinity, quota, expected):
    monkeypatch.setattr(lstmc._threads, "affinity_cpus", lambda: affinity)
    monkeypatch.setattr(lstmc._threads, "cgroup_cpu_limit", lambda: quota)
    env = {} if omp is None else {"OMP_NUM_THREADS": omp}
    assert lstmc._threads.default_num_threads(env) == expected


def test_set_num_threads_wins_over_omp_num_threads():
    code = ("import lstmc\n"
            "from lstmc import _threads\n"
            "print(lstmc.get_num_threads(), _threads.num_threads_source())\n"
            "lstmc.set_num_threads(1)\n"
            "print(lstmc.get_num_threads(), _threads.num_threads_source())")
    assert run_child(code, OMP_NUM_THREADS="3").splitlines() == [
        "3 OMP_NUM_THREADS", "1 lstmc.set_num_threads"]


def _info_threads(**env):
    out = run_child("from lstmc.__main__ import info; info()", **env)
    return [line.split(None, 1)[1] for line in out.splitlines() if line.startswith("threads")]


def test_info_says_where_the_thread_count_came_from():
    assert _info_threads(OMP_NUM_THREADS="3") == ["3 (OMP_NUM_THREADS)"]
    default = lstmc._threads.default_num_threads({})
    assert _info_threads(OMP_NUM_THREADS=None) == [f"{default[0]} ({default[1]})"]


@pytest.mark.skipif(shutil.which("taskset") is None, reason="no taskset")
def test_default_under_taskset_is_one_thread():
    code = ("import lstmc, numpy as np\n"
            "from lstmc.__main__ import info\n"
            "m = lstmc.nn.LSTM(4, 8)\n"
            "m(np.ones((3, 2, 4), np.float32))\n"
            "print(lstmc.get_num_threads())\n"
            "info()")
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "1"
    assert [x.split(None, 1)[1] for x in lines if x.startswith("threads")] == [
        "1 (CPU affinity mask)"]


def _numpy_blas_threads():
    import numpy
    found = lstmc._threads._loaded_openblas(os.path.join(
        lstmc._threads._site_of(numpy), "numpy"))
    if found is None:
        pytest.skip("numpy's BLAS is not an OpenBLAS of its own wheel")
    return found[1]()


@pytest.mark.parametrize("threadpoolctl", [True, False], ids=["threadpoolctl", "direct"])
def test_numpy_blas_follows_set_num_threads(monkeypatch, threadpoolctl):
    if threadpoolctl:
        pytest.importorskip("threadpoolctl")
    else:
        monkeypatch.setitem(sys.modules, "threadpoolctl", None)   # import fails
    for n in (1, 2, 1):
        lstmc.set_num_threads(n)
        assert _numpy_blas_threads() == n


# ------------------------------------------------------------------------------------------
# results do not depend on the number of threads

# 1 vs 2 threads, measured on the 2-core CI machine kind (AMD EPYC, scipy's OpenBLAS), fwd +
# backward, 2 layers, bidirectional, with and without lengths / projection, 4 seeds, at
# T=7 B=9 I=33 H=67 and at T=5 B=32 I=20 H=131 (where the kernels share the work):
#   * NOT bitwise identical. Worst max|1 thread - 2 threads| / max(1, max|tensor|) over all
#     outputs, states, dx, dh0, dc0 and .grad: 4.8e-7 in float32 (~4 ulp at the tensor's
#     scale), 5.6e-17 in float64. Same thread count twice: bitwise identical.
#   * Why: every element is still summed by one thread over the full K, but each thread calls
#     the BLAS on its own column share, and the BLAS picks its kernel (and so its summation
#     order) by the size of the product it is given.
# helpers.THREAD_TOL (4e-6 in float32, 5e-15 in float64, times max(1, max|tensor|)) keeps ~7x
# headroom over the float32 measurement.


def _fwd_bwd(module, x, lengths, dout, hx=None):
    module.zero_grad()
    out, finals = module(x, hx, lengths=lengths)
    dx, dinit = module.backward(dout)
    res = {"out": out, "dx": dx}
    res.update(zip(["h_n", "c_n"], as_list(finals)))
    res.update(zip(["dh0", "dc0"], as_list(dinit)))
    res.update({f"grad {n}": p.grad.copy() for n, p in module.named_parameters()})
    return res


MEDIUM = (7, 9, 33, 67)   # T, B, I, H: the elementwise passes stay serial (too little work)
WIDE = (5, 32, 20, 131)   # B * H >= 4096: the elementwise passes go parallel too
PROJ = {MEDIUM: 19, WIDE: 50}    # lstm_proj's projection at each shape


def _medium(dtype, proj_size=0, seed=0, shape=MEDIUM, dropout=0.0, cell="lstm"):
    rng = np.random.default_rng(seed)
    T, B, I, H = shape
    lstmc.manual_seed(seed)
    options = {"proj_size": proj_size} if CELLS[cell].cls == "LSTM" else {}
    module = make_module(cell, I, H, dtype=dtype, num_layers=2, bidirectional=True,
                         dropout=dropout, **options)
    H_out = proj_size or H
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dout = rng.standard_normal((T, B, 2 * H_out)).astype(dtype)
    lengths = random_lengths(rng, T, B)
    lengths[0] = T
    return module, x, lengths, dout


def _max_scaled_diffs(r1, r2):
    diffs = {}
    for k in r1:
        a, b = r1[k].astype(np.float64), r2[k].astype(np.float64)
        scale = max(1.0, float(np.max(np.abs(a)))) if a.size else 1.0
        diffs[k] = (float(np.max(np.abs(a - b))) if a.size else 0.0) / scale
    return diffs


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("shape", [MEDIUM, WIDE], ids=["medium", "wide"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["", "dropout"])
def test_one_and_two_threads_agree(float_dtype, cell, shape, use_lengths, dropout):
    """With dropout the threads also scale the layer output by the masks between the layers
    (each its share of the elements, not its columns), which the next layer must see whole;
    every run draws the same masks (manual_seed)."""
    dtype = float_dtype
    proj_size = PROJ[shape] if "proj_size" in CELLS[cell].options else 0
    module, x, lengths, dout = _medium(dtype, proj_size, shape=shape, dropout=dropout,
                                       cell=cell)
    lengths = lengths if use_lengths else None
    runs = []
    for threads in (1, 2, 2):
        lstmc.set_num_threads(threads)
        lstmc.manual_seed(7)
        runs.append(_fwd_bwd(module, x, lengths, dout))
    r1, r2, r2b = runs
    for k in r1:  # the same thread count twice: always bit-identical
        np.testing.assert_array_equal(r2[k], r2b[k], err_msg=f"{k}: 2 threads not deterministic")
    tol = THREAD_TOL[dtype]
    bad = [f"{k}: max|1 thread - 2 threads| / scale = {d:.3e} > {tol:.1e}"
           for k, d in _max_scaled_diffs(r1, r2).items() if not d <= tol]
    # relu: a flipped kink between thread counts is possible in float32; outputs stay close
    if cell == "rnn_relu" and dtype == np.float32:
        bad = [b for b in bad if b.startswith(("out", "h_n"))]
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------------------------------
# inference with the rows plan: each thread its own batch rows through the time loop


@pytest.mark.parametrize("options", [{}, {"peepholes": True, "cell_clip": 0.7}],
                         ids=["", "peepholes-clip"])
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("B, bidirectional, T", [(16, False, 6), (17, False, 6), (33, False, 6),
                                                 (65, True, 6), (33, False, 40)])
def test_rows_plan_matches_one_thread(cell, B, bidirectional, T, options):
    """An eval-mode float32 call on two threads with at least 8 rows a thread and a W_hh of
    at most 2^18 elements (csrc/seq.c plan_of `rows`; H 40, and 70 for the one-gate RNN so
    that the step has work enough for two threads) runs each thread's rows over all units: two
    layers, ragged and full lengths, zero and given initial states; both directions at 65
    rows (at most 64 run a direction a thread instead, `split`); 40 steps of 33 rows pass
    LSTMC_PACKED_PROJ_MAX_ROWS, where each thread projects its own rows. Every element sums in the
    same order as on one thread, so the outputs and final states are the one-thread ones bit
    for bit, and the float64 reference's within spec §7. (The projection, lstm_proj, keeps the
    shared-units plan.)"""
    if not lstmc.openmp_enabled():
        pytest.skip("needs OpenMP")
    if options and CELLS[cell].cls != "LSTM":
        pytest.skip("peepholes are an LSTM option")
    rng = np.random.default_rng(B)
    I, H = 11, 70 if CELLS[cell].cls == "RNN" else 40
    extra = {"proj_size": 13} if "proj_size" in CELLS[cell].options else {}
    m = make_module(cell, I, H, num_layers=2, bidirectional=bidirectional, **extra,
                    **options).eval()
    D = 2 if bidirectional else 1
    for _, p in m.named_parameters():
        p.data[...] = rng.uniform(-0.3, 0.3, p.shape)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    H_out = extra.get("proj_size", H)
    h0 = rng.standard_normal((2 * D, B, H_out)).astype(np.float32)
    states = (h0, np.tanh(h0[..., :1].repeat(H, -1))) if CELLS[cell].cls == "LSTM" else h0
    for lengths in (None, random_lengths(rng, T, B)):
        for hx in (None, states):
            runs = []
            for threads in (1, 2):
                lstmc.set_num_threads(threads)
                out, finals = m(x, hx, lengths=lengths)
                runs.append([out.copy()] + [f.copy() for f in as_list(finals)])
            for a, b in zip(*runs):
                np.testing.assert_array_equal(b, a, err_msg=f"{cell} B{B} lengths "
                                              f"{lengths is not None} h0 {hx is not None}")
            if hx is None:
                expected = module_reference(m, x, lengths)
                rtol, atol = KERNEL_TOL[np.float32].out
                assert_close(f"{cell} B{B}", runs[1][0], expected, rtol,
                             atol * scale_of(expected))


# ------------------------------------------------------------------------------------------
# the GIL is released during every C call


def _spin_rate(seconds=0.1):
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n / seconds


def _counter_during(call):
    """Run ``call`` in this thread while another Python thread counts; returns
    (increments seen during the call, seconds the call took, the counter's solo rate/s)."""
    rate = _spin_rate()
    count = [0]
    stop = threading.Event()

    def spin():
        n = 0
        while not stop.is_set():
            n += 1
            count[0] = n

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.05)
        c0, t0 = count[0], time.perf_counter()
        call()
        t1, c1 = time.perf_counter(), count[0]
    finally:
        stop.set()
        t.join(TIMEOUT)
    return c1 - c0, t1 - t0, rate


def test_gil_released_during_forward_and_backward():
    lstmc.set_num_threads(1)  # leave the second core to the counting thread
    rng = np.random.default_rng(0)
    T, B, H = 200, 32, 512
    lstm = lstmc.nn.LSTM(H, H, dtype=np.float32)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    dout = np.ones((T, B, H), np.float32)
    n_f, dt_f, rate = _counter_during(lambda: lstm(x))  # train mode: stores the gates too
    n_b, dt_b, _ = _counter_during(lambda: lstm.backward(dout))
    # If the GIL were held through the C call the counter would advance only in the short
    # Python parts of the call (a few switch intervals). Demand a tenth of its solo speed.
    for what, n, dt in (("forward", n_f, dt_f), ("backward", n_b, dt_b)):
        assert dt > 0.05, f"{what} too short ({dt:.3f} s) to tell anything"
        assert n > 0.1 * rate * dt and n > 10000, (
            f"{what}: another Python thread counted only {n} during a {dt:.3f} s call "
            f"(solo rate {rate:.0f}/s): the GIL is not released")


def test_two_python_threads_two_modules_match_serial():
    lstm_a, x_a, len_a, dout_a = _medium(np.float32, 0, seed=1)
    lstm_b, x_b, len_b, dout_b = _medium(np.float64, 50, seed=2, shape=WIDE)
    serial_a = _fwd_bwd(lstm_a, x_a, len_a, dout_a)
    serial_b = _fwd_bwd(lstm_b, x_b, None, dout_b)

    results = {"a": [], "b": []}
    errors = []
    barrier = threading.Barrier(2)

    def work(key, lstm, x, lengths, dout):
        try:
            barrier.wait(TIMEOUT)
            for _ in range(5):
                results[key].append(_fwd_bwd(lstm, x, lengths, dout))
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    ts = [threading.Thread(target=work, args=("a", lstm_a, x_a, len_a, dout_a)),
          threading.Thread(target=work, args=("b", lstm_b, x_b, None, dout_b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in ts), "a worker thread hung"
    assert not errors, errors
    for key, serial in (("a", serial_a), ("b", serial_b)):
        assert len(results[key]) == 5
        for i, r in enumerate(results[key]):
            for k in serial:
                np.testing.assert_array_equal(
                    r[k], serial[k], err_msg=f"module {key}, run {i}, {k}: concurrent != serial")


def test_subprocess_after_openmp_use_does_not_hang():
    """The parent has used its OpenMP pool; a fresh child must still start and compute."""
    lstm, x, lengths, dout = _medium(np.float32)
    lstmc.set_num_threads(2)
    _fwd_bwd(lstm, x, lengths, dout)
    code = ("import lstmc, numpy as np\n"
            "lstmc.set_num_threads(2)\n"
            "m = lstmc.nn.LSTM(8, 16, num_layers=2)\n"
            "out, _ = m(np.ones((5, 3, 8), np.float32))\n"
            "m.backward(np.ones_like(out))\n"
            "print('ok')")
    assert run_child(code) == "ok"
