#!/usr/bin/env python
"""`python -m lstmc bench` with this checkout's peers (benchmarks/peers.py beside this file),
whichever lstmc is imported: an installed one too.

The runner lives in the package (lstmc/bench.py, whose docstring says what is measured and
how); the peers live here::

    python benchmarks/bench_lstm.py                  # both grids at 1 and 2 threads
    python benchmarks/bench_lstm.py --quick          # one row of each kind (< 1 min)
    python benchmarks/bench_lstm.py --list           # the rows
"""
import sys
from pathlib import Path

from lstmc import bench


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--peers-from" or a.startswith("--peers-from=") for a in argv):
        argv = ["--peers-from", str(Path(__file__).resolve().parent)] + argv
    return bench.main(argv, prog="bench_lstm.py")


if __name__ == "__main__":
    sys.exit(main())
