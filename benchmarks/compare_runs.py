"""Two builds over the whole grid: lstmc-only `python -m lstmc bench` runs, compared row by row.

ab_builds.py answers for one workload; a change that touches every call (a refactor of the
driver or of the modules) wants every row of the grid. Run the bench without peers on each
build, alternating builds, a few times each, with --json, then compare:

    for i in 1 2 3; do
      PYTHONPATH=<base checkout> python -m lstmc bench --peers '' --json base-$i.json
      PYTHONPATH=<new checkout>  python -m lstmc bench --peers '' --json new-$i.json
    done
    python benchmarks/compare_runs.py 'base-*.json' 'new-*.json'

Per row, thread count and mode it prints every run's time, new / base of the medians, and
each build's run-to-run spread (slowest / fastest run); a ratio outside the larger spread is
marked (!). The last lines give the geometric mean of the ratios and the marked rows. On a
shared machine a single row moving 10 % between runs is common: confirm a marked row with
ab_builds.py --in-process before believing it.
"""
import glob
import json
import math
import statistics
import sys


def times(pattern):
    """{(row, threads, mode): [lstmc's seconds in each run]} of the JSON files matching."""
    out = {}
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise SystemExit(f"compare_runs: no file matches {pattern!r}")
    for path in paths:
        with open(path) as f:
            for r in json.load(f)["results"]:
                if "lstmc_s" in r:
                    out.setdefault((r["row"], r["threads"], r["mode"]), []).append(r["lstmc_s"])
    return out


def main(base_pattern, new_pattern):
    base, new = times(base_pattern), times(new_pattern)
    print("| row | threads | mode | base ms (runs) | new ms (runs) | new / base | base spread "
          "| new spread |")
    print("|---|---:|---|---|---|---:|---:|---:|")
    ratios, marked = [], []
    for key in sorted(k for k in base if k in new):
        b, n = base[key], new[key]
        ratio = statistics.median(n) / statistics.median(b)
        spread_b, spread_n = max(b) / min(b), max(n) / min(n)
        band = max(spread_b, spread_n)
        mark = "" if 1 / band <= ratio <= band else " (!)"
        if mark:
            marked.append(f"{key[0]} {key[1]} {key[2]}: {ratio:.3f}, spread {band:.3f}")
        ratios.append(ratio)
        ms = lambda runs: " ".join(f"{1e3 * s:.3g}" for s in runs)   # noqa: E731
        print(f"| {key[0]} | {key[1]} | {key[2]} | {ms(b)} | {ms(n)} | {ratio:.3f}{mark} | "
              f"{spread_b:.3f} | {spread_n:.3f} |")
    if not ratios:
        raise SystemExit("compare_runs: the two sets of runs share no row")
    mean = math.exp(sum(map(math.log, ratios)) / len(ratios))
    print(f"\n{len(ratios)} figures: geometric mean new / base {mean:.3f}, range "
          f"{min(ratios):.3f}-{max(ratios):.3f}; outside the larger run-to-run spread: "
          f"{len(marked)}")
    for line in marked:
        print("  " + line)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python benchmarks/compare_runs.py 'BASE*.json' 'NEW*.json'")
    main(sys.argv[1], sys.argv[2])
