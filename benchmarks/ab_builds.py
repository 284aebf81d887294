"""Two builds of lstmc, one workload, alternating processes: is a change faster?

On a shared machine a single timing says little: medians move 20-40 % from one minute to the
next, and the best of many calls in a C harness does not predict the module. What held up
while tuning the kernels: build the base commit in a git worktree, then run the same workload
in fresh processes, alternating base and working tree, several rounds, and compare the
median of the rounds' medians (and how many rounds each build won).

    python benchmarks/ab_builds.py --base HEAD~1 --H 1024 --B 4 --T 25 --threads 1
    python benchmarks/ab_builds.py --base main --mode train --H 512 --B 64 --rounds 6

The working tree must be built (python setup.py build_ext --inplace). The base is built once
into a worktree under the system's temporary directory and reused while its commit matches.

--in-process loads both builds into one process (each package copied under its own name,
lstmc_base and lstmc_new, with its imports renamed) and alternates them call block by call
block, the order swapped every round; it reports the median of the per-round ratios. Both
builds then see the same neighbours at the same moment. It is still no finer than a few per
cent: two builds of the same code read 0.98-1.06 this way (six runs of 30 rounds: LSTM eval
H256 B32 T100 two layers at two threads, H512 B4 T25, a streaming step at H256), and 1.08 (new
faster in 5 of 24 rounds) for an RNN H256 B32 T150 training step at two threads, where process
alternation read 0.96 and 1.15 for one such pair. A change worth keeping on speed alone should
beat that, or show its gain in a measurement that does not depend on the neighbours (a perf
profile's share, a C harness).

--quantize int8 (or bf16) times the forward of lstmc.quantize(module, ...) instead:

    python benchmarks/ab_builds.py --base HEAD --in-process --quantize int8 --B 4 --threads 2

--base . --base-kernel blas compares two settings of the working tree's own build in the same
way (here: the packed recurrent kernels against BLAS, new / base):

    python benchmarks/ab_builds.py --base . --in-process --base-kernel blas --mode train
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# both scripts below: the workload's callable on one build of lstmc (the same weights and
# inputs in every build: seeded)
MAKE_CALL = r"""
import sys, time, numpy as np


def make_call(lib, cell, I, H, B, T, L, D, mode, quantize="none"):
    lib.manual_seed(0)
    rng = np.random.default_rng(0)
    if mode == "cell":   # one eval-mode step of the one-step module (LSTMCell, ...)
        m = {"lstm": lib.nn.LSTMCell, "gru": lib.nn.GRUCell, "rnn": lib.nn.RNNCell}[cell](I, H)
        m.eval(); x = rng.random((B, I), dtype=np.float32)
        h = np.zeros((B, H), np.float32)
        state = (h, h.copy()) if cell == "lstm" else h
        return lambda: m(x, state)
    m = {"lstm": lib.nn.LSTM, "gru": lib.nn.GRU, "rnn": lib.nn.RNN}[cell](
        I, H, num_layers=L, bidirectional=D == 2)
    if mode == "step":
        m.eval(); state = m.initial_state(B); x = rng.random((B, I), dtype=np.float32)
        return lambda: m.step(x, state)
    if mode == "train":
        x = rng.random((T, B, I), dtype=np.float32)
        dy = rng.random((T, B, D * H), dtype=np.float32)
        def call():
            m.zero_grad(); m(x); m.backward(dy)
        return call
    m.eval(); x = rng.random((T, B, I), dtype=np.float32)
    if quantize != "none":   # an eval-mode forward of lstmc.quantize(m, quantize)
        m = lib.quantize(m, quantize)
    return lambda: m(x)


def median_ms(call, warm, calls):
    # at least `warm` calls and a third of a second: a fresh process's BLAS pools spin for
    # about 0.1 s after they start, and lstmc runs on fewer threads while they do
    end = time.perf_counter() + 0.33
    for i in range(1 << 30):
        if i >= warm and time.perf_counter() > end:
            break
        call()
    ts = []
    for _ in range(calls):
        t = time.perf_counter(); call(); ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts))
"""

# one process: build the module, warm up, time `calls` calls, print the median in ms
WORKLOAD = MAKE_CALL + r"""
import lstmc
cell, I, H, B, T, L, D, mode, quantize, thr, calls = sys.argv[1:]
I, H, B, T, L, D, thr, calls = map(int, (I, H, B, T, L, D, thr, calls))
lstmc.set_num_threads(thr)
print(median_ms(make_call(lstmc, cell, I, H, B, T, L, D, mode, quantize), 3, calls))
"""

# one process, both builds: `rounds` blocks of `calls` calls each, alternating
INTERLEAVED = MAKE_CALL + r"""
import importlib
cell, I, H, B, T, L, D, mode, quantize, thr, calls, rounds, kbase, knew = sys.argv[1:]
I, H, B, T, L, D, thr, calls, rounds = map(int, (I, H, B, T, L, D, thr, calls, rounds))
libs = {k: importlib.import_module("lstmc_" + k) for k in ("base", "new")}
calls_of = {}
for (name, lib), kernel in zip(libs.items(), (kbase, knew)):
    lib.set_num_threads(thr)
    lib._core._set_recurrent_kernel(kernel)   # each copy of the extension has its own setting
    calls_of[name] = make_call(lib, cell, I, H, B, T, L, D, mode, quantize)
medians = {name: [] for name in libs}
for r in range(rounds):
    for name in (("base", "new") if r % 2 == 0 else ("new", "base")):
        libs[name].set_num_threads(thr)
        medians[name].append(median_ms(calls_of[name], 2, calls))
for b, n in zip(medians["base"], medians["new"]):
    print(b, n)
"""


def package_copy(src, name, into):
    """src (an lstmc package directory) copied to into/name, its imports of lstmc renamed."""
    dst = os.path.join(into, name)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.c", "__pycache__"))
    for root, _, files in os.walk(dst):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                with open(path) as fh:
                    text = fh.read()
                with open(path, "w") as fh:
                    fh.write(re.sub(r"\b(from|import) lstmc\b", r"\1 " + name, text))


def in_process(builds, args, rounds, env, kernels=("auto", "auto")):
    """Per-round medians (base, new) of both builds alternating in one process, each under
    its recurrent-kernel setting (lstmc._core._set_recurrent_kernel)."""
    with tempfile.TemporaryDirectory() as into:
        for name, path in builds.items():
            package_copy(os.path.join(path, "lstmc"), "lstmc_" + name, into)
        out = subprocess.run([sys.executable, "-c", INTERLEAVED, *map(str, args), str(rounds),
                              *kernels],
                             env=dict(env, PYTHONPATH=into), cwd=into, check=True,
                             capture_output=True, text=True).stdout
    return [tuple(map(float, line.split())) for line in out.splitlines() if line.strip()]


def git(*args):
    return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def base_build(ref):
    """A worktree of `ref`, built in place; returns its path ("." : the working tree)."""
    if ref == ".":
        return ROOT
    commit = git("rev-parse", ref)
    path = os.path.join(tempfile.gettempdir(), "lstmc-ab-base")
    stamp = os.path.join(path, ".ab-commit")
    if os.path.exists(stamp) and open(stamp).read() == commit:
        return path
    if os.path.exists(path):
        git("worktree", "remove", "--force", path)
    git("worktree", "add", "--detach", "--force", path, commit)
    print(f"building {ref} ({commit[:7]}) in {path} ...", file=sys.stderr)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=path,
                   check=True, capture_output=True)
    with open(stamp, "w") as f:
        f.write(commit)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD",
                    help="git ref of the base build (default HEAD; '.': the working tree, "
                         "to compare two settings of one build)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=20, help="timed calls per process")
    ap.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm")
    ap.add_argument("--mode", choices=("fwd", "train", "step", "cell"), default="fwd")
    ap.add_argument("--I", type=int, default=None, help="input size (default H)")
    ap.add_argument("--H", type=int, default=512)
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=25)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quantize", choices=("none", "int8", "bf16"), default="none",
                    help="fwd: time lstmc.quantize(module, QUANTIZE)")
    ap.add_argument("--in-process", action="store_true",
                    help="both builds in one process, alternating call blocks (see above)")
    ap.add_argument("--base-kernel", default="auto",
                    help="--in-process: the base build's recurrent-kernel setting "
                         "(auto, blas, packed_c, packed_avx2)")
    ap.add_argument("--new-kernel", default="auto", help="--in-process: the new build's")
    a = ap.parse_args()
    builds = {"base": base_build(a.base), "new": ROOT}
    D = 2 if a.bidirectional else 1
    args = [a.cell, a.I or a.H, a.H, a.B, a.T, a.layers, D, a.mode, a.quantize, a.threads,
            a.calls]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    if a.in_process:
        pairs = in_process(builds, args, a.rounds, env, (a.base_kernel, a.new_kernel))
        ratios = [n / b for b, n in pairs]
        print(f"base {statistics.median(b for b, _ in pairs):.3f} ms, new "
              f"{statistics.median(n for _, n in pairs):.3f} ms; per-round new / base: median "
              f"{statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}; "
              f"new faster in {sum(r < 1 for r in ratios)} of {len(ratios)} rounds")
        return
    medians = {k: [] for k in builds}
    for r in range(a.rounds):
        for name, path in builds.items():
            out = subprocess.run([sys.executable, "-c", WORKLOAD, *map(str, args)],
                                 env=dict(env, PYTHONPATH=path), cwd=tempfile.gettempdir(),
                                 check=True, capture_output=True, text=True).stdout
            medians[name].append(float(out.split()[-1]))
        print(f"round {r + 1}: base {medians['base'][-1]:.3f} ms, new {medians['new'][-1]:.3f} ms",
              flush=True)
    base, new = statistics.median(medians["base"]), statistics.median(medians["new"])
    wins = sum(n < b for b, n in zip(medians["base"], medians["new"]))
    print(f"median of medians: base {base:.3f} ms, new {new:.3f} ms (new / base {new / base:.3f});"
          f" new faster in {wins} of {a.rounds} rounds")


if __name__ == "__main__":
    main()
