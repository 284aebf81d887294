"""Worker processes: fork (multiprocessing's default on Linux, gunicorn's pre-fork workers),
forkserver and spawn, after the parent ran lstmc on two threads.

GNU OpenMP hangs a forked child that opens a parallel region after its parent ran one, so a
forked child runs lstmc serially and must give the parent's serial answer. Each scenario runs
in its own interpreter, in its own process group with a timeout: a hang fails the test and
kills every process the scenario started.
"""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

TIMEOUT = 120  # seconds, per scenario

# The parent: a 2-layer LSTM; its serial answers (eval forward, one training step) for the
# workers to match, then a 2-thread forward so that OpenMP's thread pool exists at the fork.
PRELUDE = textwrap.dedent("""
    import multiprocessing as mp
    import os
    import sys
    import warnings

    import numpy as np

    import lstmc

    def model():
        lstmc.manual_seed(0)
        return lstmc.nn.LSTM(24, 96, num_layers=2)

    X = np.random.default_rng(0).standard_normal((30, 16, 24)).astype(np.float32)

    def work(_=None):
        '''An eval forward and one SGD step of a fresh model: (output, weights after).'''
        m = model()
        m.eval()
        out = m(X)[0]
        m.train()
        opt = lstmc.optim.SGD(m.parameters(), lr=0.1)
        y, _ = m(X)
        opt.zero_grad()
        m.backward(2 * y / y.size)
        opt.step()
        return out, np.array(m.weight_hh_l1.data), lstmc.get_num_threads()

    def check(results, expected, threads):
        assert results, "no worker answered"
        for out, w, n in results:
            assert n == threads, f"worker ran {n} threads, expected {threads}"
            np.testing.assert_array_equal(out, expected[0])
            np.testing.assert_array_equal(w, expected[1])

    def parent_answers():
        lstmc.set_num_threads(1)
        serial = work()
        lstmc.set_num_threads(2)
        threaded = work()   # OpenMP's pool now exists in this process
        return serial, threaded
""")


def run_scenario(tmp_path, body):
    script = tmp_path / "scenario.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] + sys.path))
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # the scenario and every worker it started
        out, err = proc.communicate()
        pytest.fail(f"hung for {TIMEOUT} s\n{out[-2000:]}\n{err[-4000:]}")
    assert proc.returncode == 0, (proc.returncode, out[-2000:], err[-4000:])
    return out


def test_fork_pool_after_threaded_parent_gives_serial_answer(tmp_path):
    out = run_scenario(tmp_path, """
        if __name__ == "__main__":
            serial, _ = parent_answers()
            with mp.get_context("fork").Pool(2) as pool:
                results = pool.map_async(work, range(4)).get(60)
            check(results, serial, threads=1)
            print("ok")
    """)
    assert out.strip() == "ok"


def test_spawn_pool_uses_threads(tmp_path):
    out = run_scenario(tmp_path, """
        if __name__ == "__main__":
            _, threaded = parent_answers()
            with mp.get_context("spawn").Pool(2, initializer=lstmc.set_num_threads,
                                              initargs=(2,)) as pool:
                results = pool.map_async(work, range(2)).get(60)
            check(results, threaded, threads=2)
            print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.parametrize("preload", [False, True], ids=["fresh", "preloaded"])
def test_forkserver_pool(tmp_path, preload):
    """The server's children are forks of it: fresh interpreters for lstmc unless the server
    imported lstmc (set_forkserver_preload), then they run serially."""
    out = run_scenario(tmp_path, f"""
        if __name__ == "__main__":
            serial, threaded = parent_answers()
            ctx = mp.get_context("forkserver")
            if {preload}:
                ctx.set_forkserver_preload(["lstmc"])
            with ctx.Pool(2, initializer=lstmc.set_num_threads, initargs=(2,)) as pool:
                results = pool.map_async(work, range(2)).get(60)
            check(results, serial if {preload} else threaded, threads=1 if {preload} else 2)
            print("ok")
    """)
    assert out.strip() == "ok"


def test_pre_fork_workers(tmp_path):
    """gunicorn's pattern: the master loads the model and serves a threaded call, then
    os.fork()s workers, which keep serving; a worker asking for threads again is warned and
    stays serial (it would hang otherwise)."""
    out = run_scenario(tmp_path, """
        import pickle

        if __name__ == "__main__":
            serial, _ = parent_answers()
            workers = []
            for wid in range(2):
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(r)
                    code = 1
                    try:
                        if wid == 1:
                            with warnings.catch_warnings(record=True) as caught:
                                warnings.simplefilter("always")
                                lstmc.set_num_threads(2)
                            assert [w.category for w in caught] == [RuntimeWarning], caught
                        answers = [work() for _ in range(2)]
                        with os.fdopen(w, "wb") as f:
                            pickle.dump(answers, f)
                        code = 0
                    finally:
                        os._exit(code)
                os.close(w)
                workers.append((pid, r))
            for pid, r in workers:
                with os.fdopen(r, "rb") as f:
                    answers = pickle.load(f)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0
                check(answers, serial, threads=1)
            assert lstmc.get_num_threads() == 2, "the parent keeps its threads"
            check([work()], parent_answers()[1], threads=2)
            print("ok")
    """)
    assert out.strip() == "ok"
