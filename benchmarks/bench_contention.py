"""lstmc and ONNX Runtime on a machine that is not idle: `python benchmarks/bench_contention.py`
(also `python -m lstmc bench --contention`).

One eval-mode forward per row, timed at 1 and 2 lstmc threads and at 2 ORT intra-op threads,
under three conditions:

* idle: nothing else runs (as far as this script knows: the load average is printed);
* busy core: another process spins on one core for the whole measurement (started here and
  ended by its pid), the case of a web service's other worker processes;
* after a threaded call: each timed call follows, in the same process, a 2-thread numpy
  matrix product (another library's thread pool has just run and may still spin).

Every block of calls starts after a quiet 0.3 s, so that one block's pools do not weigh on
the next (ONNX Runtime's threads spin for tens of milliseconds after a call, OpenBLAS's for
about 0.1 s).

Calls of each configuration alternate with the others in rounds, and the table gives medians
(and the mean of lstmc's 2-thread calls, which shows what a call that tries the whole team
again under contention costs: csrc/seq.c, the contention governor).
The goal (issue 20): under contention lstmc's 2-thread time stays within 1.2x of its own
1-thread time and at or under ORT's 2-thread time; idle figures unchanged.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

ROWS = {  # name: (cell, I, H, B, T)
    "lstm_i80_h320_b1_t200": ("lstm", 80, 320, 1, 200),
    "lstm_h512_b4_t25": ("lstm", 512, 512, 4, 25),
    "lstm_i128_h256_b32_t100": ("lstm", 128, 256, 32, 100),
    "gru_h512_b1_t25": ("gru", 512, 512, 1, 25),
}
CONDITIONS = ("idle", "busy core", "after a threaded call")
QUIET = 0.3     # s before each block of calls
SPIN = "import time\nwhile True:\n    pass\n"


def busy_process():
    """A process that spins on a core until it is killed (by the caller, by its pid)."""
    return subprocess.Popen([sys.executable, "-c", SPIN])


def threaded_numpy_call(n=384, threads=2):
    """A matrix product on `threads` threads of numpy's own BLAS (another library's pool),
    whatever lstmc's setting (which numpy's BLAS otherwise follows); threadpoolctl, when
    installed, sets every BLAS it finds for the product's duration."""
    a = np.ones((n, n), np.float32)
    try:
        from threadpoolctl import ThreadpoolController
        blas = ThreadpoolController().select(user_api="blas")
    except ImportError:
        blas = None

    def call():
        if blas is None:
            return a @ a
        with blas.limit(limits=threads):
            return a @ a
    return call


def build(cell, I, H, B, T, ort):
    """(lstmc module, input, ORT run) for one row; ORT run is None without onnxruntime."""
    import lstmc
    from peers import onnx_model, ort_session

    m = getattr(lstmc.nn, cell.upper())(I, H)
    m.eval()
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    run = None
    if ort:
        sd = {k: np.asarray(v) for k, v in m.state_dict().items()}
        session = ort_session(onnx_model(cell, sd, I, H), 2)
        run = lambda: session.run(["y"], {"x": x})  # noqa: E731
    return m, x, run


def measure(row, condition, rounds, calls, ort, quiet=QUIET):
    """Medians (ms) of lstmc 1 thread, lstmc 2 threads, ORT 2 threads for one row."""
    import lstmc

    m, x, ort_run = build(*ROWS[row], ort=ort)
    before = threaded_numpy_call() if condition == "after a threaded call" else None

    # name: (lstmc's threads, set once before each block of calls: the setting also sets
    # numpy's BLAS, which is not free; None for ORT), call
    runners = {"lstmc 1 thr": (1, lambda: m(x)), "lstmc 2 thr": (2, lambda: m(x))}
    if ort_run is not None:
        runners["ORT 2 thr"] = (None, ort_run)
    times = {k: [] for k in runners}
    for threads, fn in runners.values():            # warm up: packs, sessions, pools
        if threads:
            lstmc.set_num_threads(threads)
        time.sleep(quiet)
        fn()
        fn()
    busy = busy_process() if condition == "busy core" else None
    try:
        if busy is not None:
            time.sleep(0.2)
        for _ in range(rounds):
            for name, (threads, fn) in runners.items():
                if threads:
                    lstmc.set_num_threads(threads)
                # the previous block's pool (ORT's spins for tens of ms after a call) goes
                # quiet first: blocks do not contend with each other
                time.sleep(quiet)
                for _ in range(calls):
                    if before is not None:
                        before()
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    result = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    result["lstmc 2 thr mean"] = float(np.mean(times["lstmc 2 thr"])) * 1e3
    return result


def table(results):
    lines = ["| row | condition | lstmc 1 thr ms | lstmc 2 thr ms | (mean) | ORT 2 thr ms | "
             "2 thr / 1 thr | lstmc / ORT (2 thr) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (row, condition), r in results.items():
        one, two, ort = r["lstmc 1 thr"], r["lstmc 2 thr"], r.get("ORT 2 thr")
        lines.append(f"| {row} | {condition} | {one:.3f} | {two:.3f} | "
                     f"{r['lstmc 2 thr mean']:.3f} | "
                     f"{'—' if ort is None else f'{ort:.3f}'} | {two / one:.2f} | "
                     f"{'—' if ort is None else f'{two / ort:.2f}'} |")
    return "\n".join(lines)


def add_arguments(ap):
    ap.add_argument("--rows", default=",".join(ROWS),
                    help="comma-separated rows (default: all): " + ", ".join(ROWS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=10, help="timed calls per round and runner")
    ap.add_argument("--no-ort", action="store_true", help="time lstmc alone")
    ap.add_argument("--quiet", type=float, default=QUIET,
                    help="seconds of quiet before each block of calls (default %(default)s)")


def run(args):
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    ort = not args.no_ort
    if ort:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            ort = False
    if os.cpu_count() and os.cpu_count() < 2:
        print("note: fewer than 2 CPUs; the 2-thread figures mean little")
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    results = {}
    for row in rows:
        for condition in CONDITIONS:
            results[row, condition] = measure(row, condition, args.rounds, args.calls, ort,
                                              args.quiet)
    print(table(results))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
