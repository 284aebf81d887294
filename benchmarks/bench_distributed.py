"""Data-parallel training over MPI, measured: `python benchmarks/bench_distributed.py`.

1. Throughput: the demo's model and step (lstmc.charlm: Embedding(96, 64) -> LSTM(64, 256) ->
   Linear(256, 96), Adam, gradient clipping after the all-reduce, windows of 100 characters,
   32 windows per rank) on 1 and on 2 ranks of this machine, one lstmc thread each:
   samples (windows) per second over all ranks, and the share of a step from the end of the
   backward pass to the averaged gradient (the all-reduce, including any wait for the
   slower rank). Weak scaling, as Horovod's benchmarks: the batch per rank is fixed, so 2
   ranks train a global batch of 64.
2. The all-reduce sweep: float32 arrays of 4 B to 64 MB summed by 2 ranks (MPI_Allreduce in
   place), median latency and bus bandwidth (2 (n-1)/n * bytes / time), on the shared-memory
   path and on the network path (MPIR_CVAR_NOLOCAL=1 with UCX_TLS=tcp,self: the mpich
   wheel's UCX would otherwise still use shared memory between local ranks; TCP over the
   loopback device, so the software cost of the network path without a wire).
3. A projection, labelled as one, of scaling efficiency at 8 and 32 hosts on 10 and 25 Gb/s
   networks: each host runs this machine's 2 ranks; the measured 2-rank step time is one
   host's step, and the hosts add a ring all-reduce of the gradient buffers (one per
   module, as lstmc.distributed sends them): per buffer of S bytes over H hosts,
   2 (H - 1) (alpha + S / (H * B)), with B the link rate times 0.9 (TCP's payload share)
   and alpha the measured per-message latency of the TCP path plus 10 us for the NICs and
   a switch. No overlap of communication with the backward pass is assumed (lstmc does
   not overlap), so the projection is conservative. Efficiency = host step time / (host
   step time + ring time); a last column repeats it with a pessimistic alpha of 100 us.

Goals (issue 22): 2 ranks >= 1.8x the samples/s of one; projected >= 90 % at 8 hosts on
10 Gb/s. `--quick` runs a short version (the tests use it); `--json FILE` keeps the figures.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WIRE_LATENCY = 10e-6     # NICs and one switch, per message (an assumption, stated above)
TCP_PAYLOAD = 0.9        # share of the link rate TCP carries as payload
SLOW_ALPHA = 100e-6      # a pessimistic per-message latency, to show the projection's margin


# ---- workers (run under mpiexec) ---------------------------------------------------------
def worker_train(args):
    import lstmc
    import lstmc.distributed as dist
    from lstmc import nn
    from lstmc.charlm import CharLM, byte_vocab, encode, random_windows, stdlib_text
    dist.init()
    lstmc.set_num_threads(1)
    rank, ranks = dist.rank(), dist.size()
    raw = stdlib_text(1_000_000)
    vocab = byte_vocab(raw)
    data = encode(raw, vocab)
    lstmc.manual_seed(0)
    model = CharLM(len(vocab), 64, 256, 1)
    dist.broadcast_parameters(model)
    opt = dist.DistributedOptimizer(lstmc.optim.Adam(model.parameters(), lr=3e-3))
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng([0, rank])
    compute, comm, total = [], [], []
    for step in range(args.warmup + args.steps):
        x, y = random_windows(rng, data, args.batch, 100)
        t0 = time.perf_counter()
        model.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        t1 = time.perf_counter()
        opt.synchronize()
        t2 = time.perf_counter()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        t3 = time.perf_counter()
        if step >= args.warmup:
            compute.append((t1 - t0) + (t3 - t2))
            comm.append(t2 - t1)
            total.append(t3 - t0)
    grads = sorted({id(p.grad.base): p.grad.base.nbytes for p in model.parameters()}.values())
    found = dist.allgather_object({"total": sum(total), "comm": sum(comm),
                                   "compute": sum(compute)})
    if rank == 0:
        wall = max(f["total"] for f in found)
        _write(args.out, {"ranks": ranks, "steps": args.steps, "batch_per_rank": args.batch,
                          "samples_per_s": ranks * args.batch * args.steps / wall,
                          "step_ms": 1e3 * wall / args.steps,
                          "comm_share": sum(f["comm"] for f in found) /
                          sum(f["total"] for f in found),
                          "gradient_buffers": grads, "params": int(sum(p.size for p in
                                                                       model.parameters()))})


def worker_sweep(args):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rows = []
    for nbytes in _sizes(args.quick):
        a = np.ones(max(1, nbytes // 4), np.float32)
        reps = max(5, min(1000, int(4e8 / (a.nbytes + 4096)))) // (10 if args.quick else 1)
        times = []
        for _ in range(3):
            comm.Allreduce(MPI.IN_PLACE, a)
        for _ in range(5):
            comm.Barrier()
            t = time.perf_counter()
            for _ in range(max(reps, 2)):
                comm.Allreduce(MPI.IN_PLACE, a)
            times.append((time.perf_counter() - t) / max(reps, 2))
        t = comm.allreduce(float(np.median(times)), op=MPI.MAX)
        n = comm.size
        rows.append({"bytes": a.nbytes, "latency_us": t * 1e6,
                     "bus_GBps": 2 * (n - 1) / n * a.nbytes / t / 1e9})
    if comm.rank == 0:
        _write(args.out, rows)


def _sizes(quick):
    sizes = [4 << (2 * k) for k in range(13)]          # 4 B .. 64 MB
    return sizes[::3] if quick else sizes


def _write(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


# ---- the driver --------------------------------------------------------------------------
def _mpiexec(ranks, worker, extra_env=None, extra=()):
    exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(exe):
        exe = "mpiexec"
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out.json")
        env = dict(os.environ, **(extra_env or {}))
        env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "")
                                                      .split(os.pathsep) if p])
        cmd = [exe, "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--worker",
               worker, "--out", out, *extra]
        subprocess.run(cmd, check=True, env=env, timeout=1800)
        with open(out) as f:
            return json.load(f)


def ring_seconds(buffers, hosts, gbps, alpha):
    """Ring all-reduce time over `hosts` of each buffer (bytes) on a `gbps` link."""
    rate = gbps * 1e9 / 8 * TCP_PAYLOAD
    return sum(2 * (hosts - 1) * (alpha + s / (hosts * rate)) for s in buffers)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short run (tests)")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--worker", choices=("train", "sweep"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 5 if args.quick else 60
    if args.warmup is None:
        args.warmup = 2 if args.quick else 5
    if args.worker == "train":
        return worker_train(args)
    if args.worker == "sweep":
        return worker_sweep(args)

    common = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    quick = ["--quick"] if args.quick else []
    one = _mpiexec(1, "train", extra=common)
    two = _mpiexec(2, "train", extra=common)
    shm = _mpiexec(2, "sweep", extra=quick)
    tcp = _mpiexec(2, "sweep", {"MPIR_CVAR_NOLOCAL": "1", "UCX_TLS": "tcp,self"}, quick)
    speedup = two["samples_per_s"] / one["samples_per_s"]
    print(f"lstmc data-parallel training, the demo's model ({one['params']:,} parameters, "
          f"{len(one['gradient_buffers'])} gradient buffers of "
          f"{', '.join(f'{b / 1e3:.0f} kB' for b in one['gradient_buffers'])}), "
          f"{one['batch_per_rank']} windows of 100 characters per rank, one thread per rank")
    print()
    print("| ranks | samples/s | step (ms) | all-reduce share of a step |")
    print("|---|---|---|---|")
    for r in (one, two):
        print(f"| {r['ranks']} | {r['samples_per_s']:.0f} | {r['step_ms']:.1f} | "
              f"{100 * r['comm_share']:.1f} % |")
    print(f"\n2 ranks / 1 rank: {speedup:.2f}x the samples/s (goal >= 1.8x)")
    print()
    print("| all-reduce, 2 ranks | shared memory: latency | bus bandwidth | "
          "TCP (loopback): latency | bus bandwidth |")
    print("|---|---|---|---|---|")
    for a, b in zip(shm, tcp):
        print(f"| {_bytes(a['bytes'])} | {a['latency_us']:.1f} us | {a['bus_GBps']:.2f} GB/s | "
              f"{b['latency_us']:.1f} us | {b['bus_GBps']:.2f} GB/s |")
    alpha = tcp[0]["latency_us"] * 1e-6 + WIRE_LATENCY
    host_step = two["step_ms"] / 1e3
    print(f"\nPROJECTION (a model, not a measurement): hosts each running this machine's 2 "
          f"ranks (measured step {1e3 * host_step:.1f} ms), a ring all-reduce of the "
          f"{len(two['gradient_buffers'])} gradient buffers between hosts, alpha = "
          f"{alpha * 1e6:.1f} us per message (measured TCP path {tcp[0]['latency_us']:.1f} us "
          f"+ {WIRE_LATENCY * 1e6:.0f} us wire), {TCP_PAYLOAD:.0%} of the link rate, no "
          "overlap with the backward pass:")
    print()
    print(f"| hosts | network | ring all-reduce (ms) | scaling efficiency | efficiency if "
          f"alpha were {SLOW_ALPHA * 1e6:.0f} us |")
    print("|---|---|---|---|---|")
    projection = []
    for hosts in (8, 32):
        for gbps in (10, 25):
            t = ring_seconds(two["gradient_buffers"], hosts, gbps, alpha)
            slow = ring_seconds(two["gradient_buffers"], hosts, gbps, SLOW_ALPHA)
            eff = host_step / (host_step + t)
            projection.append({"hosts": hosts, "gbps": gbps, "ring_ms": 1e3 * t,
                               "efficiency": eff,
                               "efficiency_slow_alpha": host_step / (host_step + slow)})
            print(f"| {hosts} | {gbps} Gb/s | {1e3 * t:.2f} | {100 * eff:.1f} % | "
                  f"{100 * host_step / (host_step + slow):.1f} % |")
    goal = next(r for r in projection if r["hosts"] == 8 and r["gbps"] == 10)["efficiency"]
    print(f"\ngoals: 2 ranks {speedup:.2f}x (>= 1.8x: {'met' if speedup >= 1.8 else 'NOT met'}); "
          f"8 hosts on 10 Gb/s {100 * goal:.1f} % (>= 90 %: "
          f"{'met' if goal >= 0.9 else 'NOT met'}, projected)")
    if args.json:
        _write(args.json, {"one": one, "two": two, "sweep_shm": shm, "sweep_tcp": tcp,
                           "alpha_s": alpha, "projection": projection, "speedup": speedup})


def _bytes(n):
    if n < 1024:
        return f"{n} B"
    return f"{n >> 10} kB" if n < 1 << 20 else f"{n >> 20} MB"


if __name__ == "__main__":
    main()
