"""Ctrl-C during a long call: the kernels stop between two steps (or two pieces of the input
projection), the call raises KeyboardInterrupt within a second, and the module still works.

Each case runs in a child process (a hang fails the test on its timeout instead of hanging
the suite); the parent sends SIGINT once the child is inside a call of several seconds.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

import lstmc

CHILD = r"""
import sys, time
import numpy as np
import lstmc

mode, threads = sys.argv[1], int(sys.argv[2])
lstmc.set_num_threads(threads)
m = lstmc.nn.LSTM(16, 1024)        # W_hh of 16 MB: a step costs a fraction of a millisecond
x = np.random.default_rng(0).standard_normal((6000, 1, 16)).astype(np.float32)
small = x[:5]
m.train(mode == "train")
before = m(small)[0].copy()
print("ready", flush=True)
t0 = time.perf_counter()
try:
    out, _ = m(x)
    if mode == "train":
        m.backward(np.ones_like(out))
    print("finished", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
m.zero_grad()
after, _ = m(small)
if mode == "train":
    m.backward(np.ones_like(after))
print("usable", bool(np.array_equal(after, before)), flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_sigint_stops_a_long_call_within_a_second(mode, threads):
    if threads > 1 and not lstmc.openmp_enabled():
        pytest.skip("needs OpenMP")
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(threads)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        time.sleep(0.3)
        sent = time.perf_counter()
        child.send_signal(signal.SIGINT)
        line = child.stdout.readline().strip()
        answered = time.perf_counter() - sent
        rest = child.stdout.read()
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert line == "interrupted", (line, rest, child.stderr.read())
    assert answered < 1.0, f"KeyboardInterrupt came {answered:.2f} s after SIGINT"
    assert "usable True" in rest, rest
    assert child.returncode == 0


def test_short_calls_and_other_threads_leave_sigint_alone():
    """Calls too short to be worth the hook, and calls from other threads, do not touch the
    process's SIGINT handling: Python's handler stays installed throughout."""
    import threading

    import numpy as np

    m = lstmc.nn.LSTM(4, 8).eval()
    x = np.ones((3, 1, 4), np.float32)
    handler = signal.getsignal(signal.SIGINT)
    m(x)
    worker = threading.Thread(target=m, args=(np.ones((400, 4, 4), np.float32),))
    worker.start()
    worker.join()
    assert signal.getsignal(signal.SIGINT) is handler


FIT_CHILD = r"""
import os, sys
import numpy as np
import lstmc

path = sys.argv[1]
lstmc.manual_seed(0)
rng = np.random.default_rng(0)
x = rng.standard_normal((2000, 50, 16)).astype(np.float32)     # an epoch: a fraction of a s
y = rng.standard_normal((2000, 1)).astype(np.float32)
model = lstmc.models.Sequential([lstmc.layers.Input((50, 16)), lstmc.layers.LSTM(64),
                                 lstmc.layers.Dense(1)])
model.compile(optimizer="adam", loss="mse")
print("ready", flush=True)
try:
    model.fit(x, y, batch_size=32, epochs=1000, verbose=0,
              callbacks=[lstmc.callbacks.ModelCheckpoint(path, monitor="loss")])
    print("finished", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
print("usable", model.predict(x[:2], verbose=0).shape == (2, 1), flush=True)
if os.path.exists(path):
    print("checkpoint loads", lstmc.models.load_model(path).predict(x[:2], verbose=0).shape)
"""


def _interrupt(cmd, ready, delay, **kw):
    """Starts `cmd`, waits for a stdout line starting with `ready`, sends SIGINT `delay` s
    later: (the next stdout line, seconds from SIGINT to it, seconds from SIGINT to the exit,
    the rest of stdout, stderr, exit code)."""
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, **kw)
    try:
        lines = []
        while True:
            line = child.stdout.readline()
            assert line, (lines, child.stderr.read())
            lines.append(line)
            if line.startswith(ready):
                break
        time.sleep(delay)
        sent = time.perf_counter()
        child.send_signal(signal.SIGINT)
        line = child.stdout.readline().strip()
        answered = time.perf_counter() - sent
        rest = child.stdout.read()
        err = child.stderr.read()
        child.wait(timeout=60)
        exited = time.perf_counter() - sent
        return line, answered, exited, rest, err, child.returncode
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_sigint_stops_keras_fit_within_a_second(tmp_path):
    """fit's loop is Python around hooked C calls: Ctrl-C ends it with KeyboardInterrupt
    within a second; the model still predicts, and a checkpoint on disk is whole."""
    path = str(tmp_path / "ckpt.keras")
    line, answered, _, rest, err, code = _interrupt([sys.executable, "-c", FIT_CHILD, path],
                                                    "ready", 1.5)
    assert line == "interrupted", (line, rest, err)
    assert answered < 1.0, f"KeyboardInterrupt came {answered:.2f} s after SIGINT"
    assert "usable True" in rest, rest
    assert "checkpoint loads" not in rest or "(2, 1)" in rest, rest
    assert code == 0


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="POSIX signals")
def test_sigint_stops_the_demo_within_a_second_and_writes_no_model(tmp_path):
    """`python -m lstmc demo --save PATH`, interrupted while it trains: it exits with
    KeyboardInterrupt within a second and leaves no model file, whole or half-written."""
    path = tmp_path / "model.lstmc"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(lstmc.__file__)))]
        + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    cmd = [sys.executable, "-m", "lstmc", "demo", "--seconds", "60", "--max-bytes", "300000",
           "--save", str(path)]
    line, _, exited, rest, err, code = _interrupt(cmd, "training for", 1.5, env=env)
    assert code != 0 and "KeyboardInterrupt" in err, (line, rest, err[-2000:])
    assert exited < 1.0, f"the demo ended {exited:.2f} s after SIGINT"
    assert not path.exists() and not list(tmp_path.iterdir()), list(tmp_path.iterdir())
