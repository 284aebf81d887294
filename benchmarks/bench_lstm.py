#!/usr/bin/env python
"""Time lstmc against PyTorch and ONNX Runtime on the benchmark grids: `python -m lstmc bench`.

The engine lives in the package (lstmc/bench.py, whose docstring says what is measured and
how), so that an installed lstmc can run it; this script is the same command from the
repository, preferring the project's shared grid (../shared/bench/grid.json beside the repo)
over the packaged copy when it exists::

    python benchmarks/bench_lstm.py                  # both grids at 1 and 2 threads
    python benchmarks/bench_lstm.py --quick          # one row of each kind (< 1 min)
    python benchmarks/bench_lstm.py --list           # the rows
"""
import sys
from pathlib import Path

from lstmc import bench

SHARED_GRID = Path(__file__).resolve().parent.parent.parent / "shared" / "bench" / "grid.json"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if SHARED_GRID.is_file() and not any(a == "--grid" or a.startswith("--grid=") for a in argv):
        argv = ["--grid", str(SHARED_GRID)] + argv
    return bench.main(argv, prog="bench_lstm.py")


if __name__ == "__main__":
    sys.exit(main())
