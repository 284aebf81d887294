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
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# one process: build the module, warm up, time `calls` calls, print the median in ms
WORKLOAD = r"""
import sys, time, numpy as np, lstmc
from lstmc import nn
cell, I, H, B, T, L, mode, thr, calls = sys.argv[1:]
I, H, B, T, L, thr, calls = map(int, (I, H, B, T, L, thr, calls))
lstmc.set_num_threads(thr)
m = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](I, H, num_layers=L)
rng = np.random.default_rng(0)
if mode == "step":
    m.eval(); state = m.initial_state(B); x = rng.random((B, I), dtype=np.float32)
    call = lambda: m.step(x, state)
elif mode == "train":
    x = rng.random((T, B, I), dtype=np.float32); dy = rng.random((T, B, H), dtype=np.float32)
    def call():
        m.zero_grad(); m(x); m.backward(dy)
else:
    m.eval(); x = rng.random((T, B, I), dtype=np.float32)
    call = lambda: m(x)
for _ in range(3):
    call()
ts = []
for _ in range(calls):
    t = time.perf_counter(); call(); ts.append(time.perf_counter() - t)
print(1e3 * float(np.median(ts)))
"""


def git(*args):
    return subprocess.run(["git", "-C", ROOT, *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def base_build(ref):
    """A worktree of `ref`, built in place; returns its path."""
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
    ap.add_argument("--base", default="HEAD", help="git ref of the base build (default HEAD)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=20, help="timed calls per process")
    ap.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm")
    ap.add_argument("--mode", choices=("fwd", "train", "step"), default="fwd")
    ap.add_argument("--I", type=int, default=None, help="input size (default H)")
    ap.add_argument("--H", type=int, default=512)
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=25)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    builds = {"base": base_build(a.base), "new": ROOT}
    args = [a.cell, a.I or a.H, a.H, a.B, a.T, a.layers, a.mode, a.threads, a.calls]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
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
