"""lstmc.distributed over MPI: every job runs under `mpiexec -n 2` (and 3, oversubscribed on
this 2-core machine) in a subprocess with a timeout (tests/mpi_jobs.py holds the jobs), and
is compared with the same job run as one process: collectives, broadcasts, determinism on
both faces (the same parameters as one process on the whole batch, bit-identical across
ranks at every step), faults that must end the whole job, resume from a checkpoint. The
sampler and the checkpoint format are also tested in-process. Skipped without mpi4py."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lstmc
from lstmc.distributed import DistributedSampler

ROOT = Path(__file__).resolve().parent.parent
JOBS = Path(__file__).resolve().parent / "mpi_jobs.py"

mpi4py = pytest.importorskip("mpi4py", reason="lstmc[mpi] (mpi4py, mpich) not installed")
MPIEXEC = Path(sys.executable).parent / "mpiexec"
if not MPIEXEC.exists():
    import shutil
    MPIEXEC = shutil.which("mpiexec")


def run(ranks, job, *args, timeout=120, expect_ok=True, tmp=None):
    """Runs tests/mpi_jobs.py JOB under mpiexec -n ranks (ranks 0: alone, no mpiexec);
    returns ({rank: findings}, CompletedProcess, seconds)."""
    if ranks and MPIEXEC is None:
        pytest.skip("mpiexec not found (the mpich wheel brings it)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("OMP_NUM_THREADS", None)
    if tmp is not None:
        env["LSTMC_TEST_DIR"] = str(tmp)
    cmd = [sys.executable, str(JOBS), job, *map(str, args)]
    if ranks:
        cmd = [str(MPIEXEC), "-n", str(ranks)] + cmd
    with tempfile.TemporaryDirectory() as results:
        env["LSTMC_RESULTS"] = results
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=tmp or ROOT)
        seconds = time.monotonic() - t0
        found = {int(p.stem[4:]): json.loads(p.read_text())
                 for p in Path(results).glob("rank*.json")}
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert sorted(found) == list(range(max(ranks, 1))), proc.stdout[-2000:]
    return found, proc, seconds


# ---- collectives and broadcasts ----------------------------------------------------------
@pytest.mark.parametrize("ranks", [2, 3])
def test_collectives(ranks):
    found, _, _ = run(ranks, "collectives")
    n = ranks
    for r, f in found.items():
        a = np.array([[k + 1.0, -k, 2.5] for k in range(n)], dtype=np.float32)
        assert f["rank"] == r and f["size"] == n and f["local_size"] == n
        assert f["local_rank"] == r
        np.testing.assert_allclose(f["average"], a.mean(0), rtol=1e-6)
        assert f["average_dtype"] == "float32"
        assert f["sum"] == a.sum(0).tolist()
        assert f["min"] == a.min(0).tolist() and f["max"] == a.max(0).tolist()
        ints = sum(np.arange(4) * (k + 1) for k in range(n))
        assert f["int_sum"] == ints.tolist()
        np.testing.assert_allclose(f["int_average"], ints / n)
        assert f["scalar"] == sum(range(n))
        assert f["bools"] == {"sum": [n, 1], "average": [1.0, 1 / n], "min": [True, False],
                              "max": [True, True]}
        assert f["input_unchanged"]
        assert f["broadcast"] == (np.arange(3.0) + 10 * (n - 1)).tolist()
        assert f["broadcast_none"] == np.eye(2).tolist()
        assert f["obj"] == {"from": n - 1, "t": [1, "x"]}
        assert f["gathered"] == [10 * k for k in range(n)]
        # a mismatch is an error on every rank, and the job goes on in step after it
        assert f["shape_mismatch"].startswith("ValueError") and "shapes" in f["shape_mismatch"]
        assert f["dtype_mismatch"].startswith("ValueError")
        assert "op must be one of" in f["bad_op"]
        assert "root must be a rank" in f["bad_root"]
        assert f["after_errors"] == [float(n)]


def test_broadcasts():
    found, _, _ = run(2, "broadcasts")
    assert found[0]["before"] != found[1]["before"]            # different seeds
    assert found[0]["after"] == found[1]["after"]              # the same weights after
    assert found[0]["eval_out"] == found[1]["eval_out"]        # packed copies refreshed
    assert found[0]["moments"] == found[1]["moments"]          # rank 0's optimizer state
    assert found[0]["lr"] == found[1]["lr"] == 0.01
    assert "differs from rank 0's" in found[0]["mismatch"]
    assert "'weight_ih_l0': (20, 3) <f4 here, (16, 3) <f4 on rank 0" in found[1]["mismatch"]


# ---- determinism ------------------------------------------------------------------------
def _same_across_ranks(found, key):
    first = found[0][key]
    for r in found:
        assert found[r][key] == first, f"rank {r}'s {key} differs from rank 0's"


@pytest.mark.parametrize("ranks", [2, 3])
def test_torch_face_equals_one_process_on_the_whole_batch(ranks):
    """DistributedOptimizer (with synchronize + clipping) and DistributedSampler: the
    parameters hash the same on every rank after every step, and equal one process's
    training on each whole global batch to float32 rounding."""
    one, _, _ = run(0, "torch_face")
    found, _, _ = run(ranks, "torch_face")
    _same_across_ranks(found, "hashes")
    assert found[0]["steps"] == one[0]["steps"] == 6
    assert found[0]["lr"] == one[0]["lr"] == 0.005
    p, q = np.array(found[0]["params"]), np.array(one[0]["params"])
    np.testing.assert_allclose(p, q, rtol=0, atol=2e-6)
    assert not np.array_equal(np.array(one[0]["params"]),
                              np.array(run(0, "torch_face", 12, 1)[0][0]["params"]))


@pytest.mark.parametrize("ranks", [2, 3])
def test_keras_face_equals_one_process_on_the_whole_batch(ranks, tmp_path):
    """fit(distributed=True) on masked sequences (13 samples, batch 4: with 3 ranks a rank
    has no share of the last batch): the weights and the history (loss, accuracy, their
    validation figures) equal one process's; only rank 0 shows the progress bar and writes
    the checkpoint."""
    (tmp_path / "one").mkdir()
    one, _, _ = run(0, "keras_face", tmp=tmp_path / "one")
    found, proc, _ = run(ranks, "keras_face", tmp=tmp_path)
    _same_across_ranks(found, "hash")
    np.testing.assert_allclose(found[0]["params"], one[0]["params"], rtol=0, atol=1e-6)
    for key, values in one[0]["history"].items():
        np.testing.assert_allclose(found[0]["history"][key], values, rtol=1e-6,
                                   err_msg=key)
    assert proc.stdout.count("Epoch 1/3") == 1
    assert [found[r]["checkpoint"] for r in range(ranks)] == [True] + [False] * (ranks - 1)


@pytest.mark.parametrize("ranks", [2, 3])
def test_functional_model_equals_one_process_on_the_whole_batch(ranks):
    """A functional Model (two inputs, attention, return_state -> initial_state, two outputs
    with a loss each) trained with fit(distributed=True): the weights and every figure of
    the history equal one process's on the whole batch."""
    one, _, _ = run(0, "keras_functional")
    found, _, _ = run(ranks, "keras_functional")
    _same_across_ranks(found, "hash")
    np.testing.assert_allclose(found[0]["params"], one[0]["params"], rtol=0, atol=1e-6)
    assert set(found[0]["history"]) == set(one[0]["history"])
    for key, values in one[0]["history"].items():
        np.testing.assert_allclose(found[0]["history"][key], values, rtol=1e-6,
                                   err_msg=key)


@pytest.mark.parametrize("ranks", [2, 3])
def test_horovod_recipe_on_the_keras_face(ranks):
    """compile(DistributedOptimizer(Adam())) with each rank fitting its own shard: the same
    weights on every rank, equal to one process's fit on the same global batches; the model
    saves with its plain optimizer; fit(distributed=True) refuses the wrapped optimizer."""
    one, _, _ = run(0, "horovod_keras")
    found, _, _ = run(ranks, "horovod_keras")
    _same_across_ranks(found, "hash")
    _same_across_ranks(found, "history")         # MetricAverageCallback
    np.testing.assert_allclose(found[0]["params"], one[0]["params"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(found[0]["history"]["loss"], one[0]["history"]["loss"],
                               rtol=1e-5)
    assert found[0]["reloaded"] and found[0]["optimizer"] == "Adam"
    assert "compile the model with the optimizer the DistributedOptimizer wraps" in \
        found[0]["refused"]


# ---- callbacks --------------------------------------------------------------------------
def test_horovod_callbacks():
    found, _, _ = run(2, "warmup")
    # from 0.4 / 2 to 0.4 over 2 epochs of 2 batches, then 0.4
    np.testing.assert_allclose(found[0]["lrs"], [0.2, 0.25, 0.3, 0.35, 0.4, 0.4])
    _same_across_ranks(found, "logs")          # averaged over the ranks
    # each rank trained on its own data (plain fit): their weights differ, the logs agree
    assert found[0]["hash"] != found[1]["hash"]


# ---- faults and resume -----------------------------------------------------------------
@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_rank_ends_the_job(how):
    found, proc, seconds = run(2, "fail", how, timeout=60, expect_ok=False)
    assert proc.returncode != 0
    assert seconds < 30, f"the job took {seconds:.0f} s to end"
    if how == "raise":
        assert "rank 1 fails on purpose" in proc.stderr
        assert "rank 1 of 2 raised RuntimeError; aborting the whole job" in proc.stderr
    assert found == {}


def test_sys_exit_on_one_rank_ends_the_job_under_mpi4py_runner():
    """docs/distributed.md: sys.exit() on one rank is no exception (no hook runs); started
    as `python -m mpi4py script.py`, the job still ends at once with the rank's status."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), LSTMC_RESULTS="/nonexistent")
    t0 = time.monotonic()
    proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpi4py", str(JOBS),
                           "fail", "exit"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 3 and time.monotonic() - t0 < 30


def test_ctrl_c_on_mpiexec_ends_every_rank():
    """SIGINT to mpiexec (Ctrl-C) reaches the ranks as KeyboardInterrupt, wherever they are
    (in a kernel or a collective), and the job ends with no rank left behind."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), LSTMC_RESULTS="/nonexistent")
    proc = subprocess.Popen([str(MPIEXEC), "-n", "2", sys.executable, str(JOBS), "fail",
                             "none", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0 and time.monotonic() - t0 < 10
    assert "KeyboardInterrupt" in err
    deadline = time.monotonic() + 10      # ranks may still be exiting as mpiexec returns
    while _processes_running(f"{JOBS}\0fail\0none") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_running(f"{JOBS}\0fail\0none") == []


def _processes_running(args):
    """PIDs whose command line contains `args` (NUL-separated), from /proc."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and args in (d / "cmdline").read_text():
                found.append(int(d.name))
        except OSError:
            continue
    return found


def test_resume_equals_an_uninterrupted_run(tmp_path):
    """With dropout (lstmc's generator) and a numpy Generator of the script's own, both
    different on each rank: crashed at step 5 (the checkpoint of step 4 is mid-epoch),
    resumed, the final weights are bit-identical to an uninterrupted run's."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole, _, _ = run(2, "resume", tmp_path / "a")
    _, proc, _ = run(2, "resume", tmp_path / "b", 5, expect_ok=False)
    assert proc.returncode != 0 and "rank 1 fails at step 5" in proc.stderr
    ckpt = tmp_path / "b" / "ckpt.lstmc"
    saved = lstmc.load(ckpt)
    assert saved["extra"] == {"step": 4, "epoch": 0} and saved["sampler"]["position"] == 16
    resumed, _, _ = run(2, "resume", tmp_path / "b", -1, ckpt)
    _same_across_ranks(whole, "hash")
    assert resumed[0]["hash"] == whole[0]["hash"] and resumed[0]["steps"] == 15
    # had the script's generator not been restored, the run would differ
    reseeded, _, _ = run(2, "resume", tmp_path / "b", -1, ckpt, "reseed")
    assert reseeded[0]["hash"] != whole[0]["hash"]
    # the checkpoint holds 2 ranks' generators: a job of another size is refused
    _, proc, _ = run(0, "resume", tmp_path / "b", -1, ckpt, expect_ok=False)
    assert proc.returncode != 0
    assert "was saved by a job of 2 ranks; this job has 1" in proc.stderr


def test_demo_trains_data_parallel():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "lstmc", "demo",
                           "--seconds", "2", "--hidden", "32", "--max-bytes", "200000",
                           "--sample-length", "20"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "1 threads on each of 2 MPI ranks" in out
    assert "global batch 64 (32 per rank)" in out
    assert out.count("held-out:") == 1 and out.count("lstmc 0") == 1   # rank 0 reports


# ---- in-process: the sampler, checkpoints, imports --------------------------------------
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), replicas=st.integers(1, 5), drop_last=st.booleans(),
       shuffle=st.booleans(), epoch=st.integers(0, 3))
def test_sampler_covers_the_data(n, replicas, drop_last, shuffle, epoch):
    samplers = [DistributedSampler(n, shuffle=shuffle, seed=1, drop_last=drop_last,
                                   num_replicas=replicas, rank=r) for r in range(replicas)]
    for s in samplers:
        s.set_epoch(epoch)
    shares = [list(s) for s in samplers]
    assert all(len(sh) == len(samplers[0]) for sh in shares)   # equal shares
    together = [i for sh in shares for i in sh]
    if drop_last:
        assert len(together) == (n // replicas) * replicas
        assert len(set(together)) == len(together)              # disjoint
    else:
        assert len(together) == -(-n // replicas) * replicas
        assert set(together) == set(range(n))                   # every sample, padded
    assert all(0 <= i < n for i in together)


def test_sampler_epochs_and_torch_layout():
    s = DistributedSampler(10, shuffle=False, num_replicas=3, rank=1)
    assert list(s) == [1, 4, 7, 0] and len(s) == 4               # padded from the start
    s = DistributedSampler(10, seed=0, num_replicas=2, rank=0)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first
    s.set_epoch(0)
    assert list(s) == first
    with pytest.raises(ValueError, match="rank must be in 0 .. 1"):
        DistributedSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        DistributedSampler(-1, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        next(s.batches(0))


def test_sampler_resumes_mid_epoch():
    s = DistributedSampler(23, seed=4, num_replicas=2, rank=1)
    s.set_epoch(2)
    full = [b.tolist() for b in s.batches(3)]
    it = s.batches(3)
    next(it), next(it)
    state = s.state_dict()
    t = DistributedSampler(23, seed=4, num_replicas=2, rank=1)
    t.load_state_dict(state)
    t.set_epoch(2)                      # the same epoch: the position is kept
    assert [b.tolist() for b in t.batches(3)] == full[2:]
    assert [b.tolist() for b in t.batches(3)] == full        # then whole epochs again
    t.load_state_dict(state)
    t.set_epoch(3)                      # another epoch starts at its beginning
    assert len(list(t.batches(3))) == len(full)
    with pytest.raises(ValueError, match="seed=4, this sampler has seed=5"):
        DistributedSampler(23, seed=5, num_replicas=2, rank=1).load_state_dict(state)


def test_import_does_not_load_mpi_or_dask():
    code = ("import sys, lstmc, lstmc.distributed; "
            "print(sorted(m for m in ('mpi4py', 'dask', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_init_shares_the_cpus_among_local_ranks():
    code = ("import lstmc, lstmc.distributed as d; d.init(); "
            "print(d.rank(), lstmc.get_num_threads(), lstmc._threads.num_threads_source())")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60, env=env, check=True)
    cpus = len(os.sched_getaffinity(0))
    for line in out.stdout.splitlines():
        _, threads, source = line.split(" ", 2)
        assert int(threads) == max(1, cpus // 2)
        assert source.endswith("shared by 2 local ranks")
    env["OMP_NUM_THREADS"] = "3"       # an explicit count is kept
    out = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60, env=env, check=True)
    assert [line.split(" ", 2)[1] for line in out.stdout.splitlines()] == ["3", "3"]


def test_benchmark_quick_run(tmp_path):
    """benchmarks/bench_distributed.py --quick: 1 and 2 ranks train, both sweeps run, and
    the figures it reports are consistent with each other."""
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_distributed.py"),
                           "--quick", "--json", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PROJECTION (a model, not a measurement)" in proc.stdout
    figures = json.loads(out.read_text())
    one, two = figures["one"], figures["two"]
    assert one["ranks"] == 1 and two["ranks"] == 2 and one["params"] == 360_544
    # 3 modules, 3 gradient buffers: Embedding(96, 64), Linear(256, 96), the LSTM
    assert sorted(figures["one"]["gradient_buffers"]) == [4 * 96 * 64, 4 * (256 * 96 + 96),
                                                           4 * 4 * 256 * (64 + 256 + 2)]
    assert figures["speedup"] == pytest.approx(two["samples_per_s"] / one["samples_per_s"])
    assert all(0 <= r["comm_share"] < 1 for r in (one, two))
    assert [r["bytes"] for r in figures["sweep_tcp"]] == [r["bytes"] for r in
                                                           figures["sweep_shm"]]
    eff = {(p["hosts"], p["gbps"]): p["efficiency"] for p in figures["projection"]}
    assert eff[8, 25] > eff[8, 10] > eff[32, 10] > 0     # faster links, fewer hosts: better
