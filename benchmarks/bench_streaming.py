"""Per-step latency of streaming an LSTM one timestep at a time, batch 1, from Python.

Compares, in one process and interleaved round by round (so that load from other processes on
a shared machine hits every library alike):

  lstmc step    lstmc.nn.LSTM.step(x_t, state): no allocation per step
  lstmc cell    lstmc.nn.LSTMCell in eval mode: (h, c) = cell(x_t, (h, c)), fresh arrays
  torch cell    torch.nn.LSTMCell under torch.no_grad()
  ORT           a one-step ONNX LSTM node, initial_h / initial_c fed back every step

at 1 and 2 threads (lstmc.set_num_threads, torch.set_num_threads, ORT intra_op_num_threads).
Each figure is the median over rounds of the mean time of `--steps` consecutive steps. Peers
that are not installed are skipped. All runners get the same weights, and the script checks
that they agree on the state after the timed steps' first few inputs.

    python benchmarks/bench_streaming.py [--sizes 256,512] [--threads 1,2] [--steps 2000]
        [--rounds 7] [--layers 1]
"""
import argparse
import os
import time

import numpy as np

import lstmc

import peers  # benchmarks/peers.py, beside this script

CHECK_STEPS = 5


def lstmc_step(m, B):
    state = m.initial_state(batch_size=B)

    def step(x_t):
        return m.step(x_t, state)[0]
    return step, lambda: state.h[-1]


def lstmc_cell(sd, I, H, B):
    cell = lstmc.nn.LSTMCell(I, H, dtype=np.float32)
    cell.load_state_dict({k[:-len("_l0")]: v for k, v in sd.items()})
    cell.eval()
    held = [(np.zeros((B, H), np.float32), np.zeros((B, H), np.float32))]

    def step(x_t):
        held[0] = cell(x_t, held[0])
        return held[0][0]
    return step, lambda: held[0][0]


def torch_cell(torch, sd, I, H, B):
    cell = torch.nn.LSTMCell(I, H)
    cell.load_state_dict({k[:-len("_l0")]: torch.from_numpy(v) for k, v in sd.items()})
    cell.eval()
    held = [(torch.zeros(B, H), torch.zeros(B, H))]

    def step(x_t):
        with torch.no_grad():
            held[0] = cell(torch.from_numpy(x_t), held[0])
        return held[0][0]
    return step, lambda: held[0][0].numpy()


def ort_step(sd, I, H, B, threads):
    """One-step ONNX LSTM (the bench's streaming graph: benchmarks/peers.py) with lstmc's
    weights, initial_h / initial_c fed back every step."""
    sess = peers.ort_session(peers.onnx_model("lstm", sd, I, H, with_state=True), threads)
    held = [np.zeros((1, B, H), np.float32), np.zeros((1, B, H), np.float32)]

    def step(x_t):
        held[:] = sess.run(["h_n", "c_n"], {"x": x_t[None], "h0_l0": held[0], "c0_l0": held[1]})
        return held[0]
    return step, lambda: held[0][0]


def runners(sd, I, H, B, L, threads):
    """{name: (step(x_t), h_now())} for every installed library, fresh zero states."""
    m = lstmc.nn.LSTM(I, H, num_layers=L, dtype=np.float32)
    m.load_state_dict(sd)
    out = {"lstmc step": lstmc_step(m, B)}
    if L == 1:
        out["lstmc cell"] = lstmc_cell(sd, I, H, B)
        try:
            import torch
            torch.set_num_threads(threads)
            out["torch cell"] = torch_cell(torch, sd, I, H, B)
        except ImportError:
            pass
        try:
            out["ORT"] = ort_step(sd, I, H, B, threads)
        except ImportError:
            pass
    return out


def check_agree(make, xs):
    """Every runner's h after the same steps from zero state, within float32 rounding."""
    hs = {}
    for name, (step, h_now) in make().items():
        for x_t in xs:
            step(x_t)
        hs[name] = np.asarray(h_now()).reshape(-1)
    ref = hs["lstmc step"]
    for name, h in hs.items():
        err = float(np.max(np.abs(h - ref)))
        if err > 1e-4:
            raise SystemExit(f"{name} disagrees with lstmc step: max |dh| = {err:.3g}")


def time_steps(step, x_t, n, clock=time.perf_counter):
    step(x_t)   # warm up caches, threads and lazily built state
    t0 = clock()
    for _ in range(n):
        step(x_t)
    return (clock() - t0) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="256,512", help="H = I, comma-separated")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=2000, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--layers", type=int, default=1, help="> 1: lstmc step only")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the process's CPU time (time.process_time), which load from "
                         "other processes does not inflate; fair at 1 thread only, as it "
                         "adds up every thread's time, spinning included")
    args = ap.parse_args(argv)
    B, L = args.batch, args.layers
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"per-step latency ({args.clock} clock), B={B}, L={L}, float32, median of "
          f"{args.rounds} rounds x {args.steps} steps; lstmc {lstmc.__version__}; load "
          f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    header = None
    for H in map(int, args.sizes.split(",")):
        I = H
        lstmc.manual_seed(0)
        sd = {k: np.array(v) for k, v in
              lstmc.nn.LSTM(I, H, num_layers=L, dtype=np.float32).state_dict().items()}
        rng = np.random.default_rng(0)
        xs = rng.standard_normal((CHECK_STEPS + 1, B, I)).astype(np.float32)
        for threads in map(int, args.threads.split(",")):
            lstmc.set_num_threads(threads)
            check_agree(lambda: runners(sd, I, H, B, L, threads), xs[:CHECK_STEPS])
            run = runners(sd, I, H, B, L, threads)
            times = {name: [] for name in run}
            for _ in range(args.rounds):   # interleaved: every library sees the same load
                for name, (step, _) in run.items():
                    times[name].append(time_steps(step, xs[-1], args.steps, clock))
            med = {name: float(np.median(t)) * 1e6 for name, t in times.items()}
            if header is None:
                header = ["H", "threads"] + list(med) + (["step / ORT"] if "ORT" in med
                                                         else [])
                print("| " + " | ".join(header) + " |")
                print("|" + "---|" * len(header))
            row = [str(H), str(threads)] + [f"{v:.1f} µs" for v in med.values()]
            if "ORT" in med:
                row.append(f"{med['lstmc step'] / med['ORT']:.2f}")
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
