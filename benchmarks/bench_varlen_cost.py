"""Does a variable-length batch cost in proportion to its valid steps?

Times lstmc.nn.LSTM on the grid's variable-length row (I=256, H=512, B=32, T=100, lengths
uniform in [10, 100], seed 0: mean length / T = 0.575) with those lengths and as a dense batch
of the same shape, interleaved round by round, for a training step (zero_grad, forward,
backward) and an eval-mode forward, and prints

    varlen / (dense x mean length / T)

which is 1 when padding costs nothing and finished rows cost nothing either (the target is
<= 1.15). Figures are medians over rounds of the median of `--reps` calls.

    python benchmarks/bench_varlen_cost.py [--threads 1,2] [--rounds 3] [--reps 9]
"""
import argparse
import time

import numpy as np

import lstmc
from lstmc.bench import parse_lengths

I, H, B, T = 256, 512, 32, 100
LENGTHS = "uniform integers in [10, 100], seed 0"


def median_time(f, reps):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    lengths = parse_lengths(LENGTHS, B)
    frac = lengths.mean() / T
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dout = rng.standard_normal((T, B, H)).astype(np.float32)
    m = lstmc.nn.LSTM(I, H)

    def train_step(lens):
        def f():
            m.zero_grad()
            m(x, lengths=lens)
            m.backward(dout)
        return f

    def forward(lens):
        return lambda: m(x, lengths=lens)

    print(f"LSTM I={I} H={H} B={B} T={T}, lengths {LENGTHS}: mean length / T = {frac:.3f}")
    for threads in (int(t) for t in args.threads.split(",")):
        lstmc.set_num_threads(threads)
        for mode, make in (("train", train_step), ("eval", forward)):
            m.train(mode == "train")
            dense, var = [], []
            for _ in range(args.rounds):
                dense.append(median_time(make(None), args.reps))
                var.append(median_time(make(lengths), args.reps))
            d, v = np.median(dense), np.median(var)
            print(f"{threads} thr {mode:5s}: dense {d * 1e3:7.1f} ms  variable {v * 1e3:7.1f} ms  "
                  f"variable / (dense x mean/T) = {v / (d * frac):.3f}")


if __name__ == "__main__":
    main()
