"""`python -m lstmc bench`: time lstmc.nn.LSTM / GRU / RNN on the benchmark grids, beside the
peers (PyTorch, ONNX Runtime, OpenVINO, and lstmc's own ONNX runtime) when it runs from a source
checkout, in one run, and print Markdown tables.

How to run::

    python -m lstmc bench                  # both grids at 1 and 2 threads (~6 min)
    python -m lstmc bench --quick          # one row of each kind, fewer reps (< 1 min)
    python -m lstmc bench --cells gru,rnn  # only the GRU / RNN rows
    python -m lstmc bench --threads 2 --rows inf_h512_b1_t25,step_i512_h512
    python -m lstmc bench --reps 30 --json /tmp/bench.json
    python -m lstmc bench --peers ort      # lstmc and ONNX Runtime only
    python -m lstmc bench --rows onnx_lstm_h512_b1_t25 --peers ort,openvino,lstmc.onnx
    python -m lstmc bench --list           # show the rows of the grids

This module is the runner: the grids, the timing, lstmc's own runners and the tables. The peers
live in benchmarks/peers.py of the source checkout (how each one runs a row is its docstring),
loaded at run time only, so that `import lstmc` never imports torch or onnx: the command finds
that file beside the package when lstmc runs from the checkout (its directory, PYTHONPATH or an
editable install), or takes ``--peers-from PATH``; without it, it times lstmc alone and says
how to get the peer columns. (`python benchmarks/bench_lstm.py` in the checkout is the same
command with that checkout's peers.) The tables go to stdout (the timings; the geometric means
of lstmc / best peer by kind; the weights read at batch <= 4); progress goes to stderr.

Rows come from two grids shipped with the package: ``lstmc/bench_grid.json`` (the LSTM grid)
and ``lstmc/bench_grid_rnn.json``, whose rows name their cell (``"cell": "gru"`` or ``"rnn"``
with ``"nonlinearity"``). The cell kind is a property of a row; every row goes through the same
timing code. ``--cells`` (default ``lstm,gru,rnn``) picks the kinds.

What is measured, per grid row and thread count (float32, time-major input, fixed random data):

* ``fwd``: forward in eval mode (lstmc ``eval()``).
* ``train``: one training step: ``zero_grad()``, train-mode forward, backward of a random
  ``dout`` shaped like the output (lstmc ``backward(dout)``, which computes dx).
* ``variable_length`` rows pass ``lengths`` to lstmc.
* ``streaming_step`` rows: one timestep at B=1 called from Python, the state fed back each call.
  lstmc: ``mode step`` is ``lstmc.nn.LSTM.step`` (the streaming API, when the installed lstmc
  has it) and ``mode cell`` is ``lstmc.nn.LSTMCell``.
* Rows of ``inference`` get ``fwd``; rows of ``training``, ``bidirectional`` and
  ``variable_length`` get ``fwd`` and ``train``.
* ``onnx_file`` rows (LSTM and GRU at batch 1, 4 and 32) get ``fwd``: one ONNX file (the ONNX
  peers' model of the row) run by lstmc.onnx (``lstmc.onnx.load``), ONNX Runtime and
  OpenVINO, beside lstmc's native module. Their own table gives lstmc.onnx over the faster of
  the other two (geometric mean and largest) and lstmc.onnx over native (largest), per thread
  count and over all, with the run's date and CPU (model and vector extensions).

The lstmc.onnx column is lstmc itself: it is timed wherever the ONNX peers are, and never
counts as the best peer.

All libraries run in the same process with the same weights (lstmc's, handed to each peer),
interleaved per row in rounds (lstmc block, then each peer's block, repeated), so that noise on
this shared machine hits all of them; each figure is the median of all its timed calls. Each
block starts with 0.1 s of untimed calls (or a 0.1 s pause for slow calls) so that caches and
the other libraries' spinning worker threads settle. Reps are sized from an untimed probe call
to a time budget per figure (1 s; --quick 0.2 s), at least 5 (3 for calls slower than the
budget; --quick 3), unless ``--reps`` fixes them. Before timing, each row's forward (streaming:
three steps) is compared between lstmc and every peer; a row marked (!) differs by more than
CHECK_ATOL. ``--json`` also writes the metadata, the sgemm peaks, the DRAM read rates and every
timed sample.

GFLOP/s use ``rnn_flops`` (the grid's "about"; G = 4 LSTM, 3 GRU, 1 RNN gate blocks); "% peak"
is lstmc's GFLOP/s over the float32 numpy matmul (2048^3) peak measured in the same run at the
same thread count. A forward or streaming step at batch 1 is bound by reading the weights, not
by arithmetic (at batch 4, by both): for batch <= 4 a second table gives the weights GB/s
(``weight_bytes``: W_hh every step, W_ih once, over the time) and lstmc's as a share of the DRAM
read rate measured in the same run at the same thread count (a float32 numpy matrix-vector
product over DRAM_MB, four times the 32 MB L3 of the machines this was written on). Weights that
fit the L3 cache read faster than DRAM.
Numpy's BLAS thread count is set for those two calibrations with threadpoolctl when installed,
else through OpenBLAS's ``*_set_num_threads`` via ctypes, else not at all (the output says
which). Threads: ``lstmc.set_num_threads(n)`` and each peer's own setting (benchmarks/peers.py).
The method and where results are kept: docs/performance.md.
"""

import argparse
import contextlib
import ctypes
import gc
import importlib.util
import json
import os
import platform
import random
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

HERE = Path(__file__).resolve().parent
GRID_PATHS = [HERE / "bench_grid.json"]
# GRU / RNN rows (grid.json is LSTM-only); rows without "cell" in grid.json are LSTM.
RNN_GRID_PATHS = [HERE / "bench_grid_rnn.json"]

# Cell kinds: gate blocks G per cell (FLOPs count G*H output rows per gate GEMM).
CELL_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
CELLS = tuple(CELL_GATES)

# Sections measured and the modes each gets ("step": one streaming timestep).
SECTION_MODES = {
    "inference": ("fwd",),
    "training": ("fwd", "train"),
    "bidirectional": ("fwd", "train"),
    "variable_length": ("fwd", "train"),
    "streaming_step": ("step",),
    "onnx_file": ("fwd",),
}
# --quick: one row per kind (B=1 latency, training, bidirectional 2-layer, variable lengths,
# streaming step, GRU, RNN, an ONNX file) and the modes timed for each. Slow figures are left
# out (the bidirectional and variable-length train steps: torch's packed backward takes ~1.5 s
# a call).
QUICK_ROWS = {"inf_h512_b1_t25": ("fwd",), "trn_h512_b16_t25": ("fwd", "train"),
              "bi_i128_h256_b32_t100_l2": ("fwd",), "varlen_i256_h512_b32_t100": ("fwd",),
              "step_i512_h512": ("step",), "gru_trn_h512_b16_t25": ("fwd", "train"),
              "rnn_tanh_inf_h512_b1_t25": ("fwd",), "onnx_lstm_h512_b1_t25": ("fwd",)}

# Timing budget per figure (one library, row, mode and thread count): seconds, min/max timed reps,
# and the number of interleaving rounds the reps are split into. Streaming steps are short
# calls: their reps are capped higher so that the budget, not the cap, sizes them.
FULL = dict(budget=1.0, min_reps=5, max_reps=100, max_step_reps=5000, rounds=3, peak_reps=6,
            dram_reps=10)
QUICK = dict(budget=0.2, min_reps=3, max_reps=25, max_step_reps=1000, rounds=2, peak_reps=3,
             dram_reps=5)
WARM_S = 0.1      # untimed settling at the start of each block (see measure)
PEAK_N = 2048
DRAM_MB = 128     # the DRAM read rate's matrix (see dram_read_times)
MEMORY_BOUND_B = 4  # forwards and steps at this batch or below get the weights-read table
CHECK_ATOL = 2e-3  # |lstmc - peer| on the forward output, float32, same weights
CHECK_STEPS = 3    # streaming rows: steps run from zero state before comparing h


def rnn_flops(I, H, T, B, num_layers=1, bidirectional=False, mode="fwd", tokens=None,
              cell="lstm"):
    """FLOPs of one LSTM / GRU / RNN call, as grid.json's "about" counts them.

    Forward: 2 * T*B * G*H * (I_l + H) per layer and direction, G = CELL_GATES[cell] (4 LSTM,
    3 GRU, 1 RNN), where layer 0 reads I inputs and layer l > 0 reads D*H (D = 2 if
    bidirectional). A training step (forward + backward) counts 3x the forward. ``tokens``
    replaces T*B for variable-length rows: sum(lengths), the work the sequence actually needs
    (padding is not counted as useful work). A streaming step is a forward with T = 1.
    """
    D = 2 if bidirectional else 1
    G = CELL_GATES[cell]
    n = T * B if tokens is None else tokens
    fwd = sum(D * 2 * n * G * H * ((I if layer == 0 else D * H) + H) for layer in range(num_layers))
    return 3 * fwd if mode == "train" else fwd


def weight_bytes(I, H, T, num_layers=1, bidirectional=False, cell="lstm", itemsize=4):
    """Bytes of weights one forward reads when none of them stay in cache: per layer and
    direction, W_ih (G*H x I_l) once for the input projection and W_hh (G*H x H) at every one
    of the T steps (a streaming step: T = 1). At batch 1 a forward's time is this read (at
    batch 4, this read and the arithmetic)."""
    D = 2 if bidirectional else 1
    G = CELL_GATES[cell]
    return itemsize * sum(D * G * H * ((I if layer == 0 else D * H) + T * H)
                          for layer in range(num_layers))


# ---------------------------------------------------------------------------------------------
# grid

def load_grid(path=None, default_paths=GRID_PATHS):
    paths = [Path(path)] if path else default_paths
    for p in paths:
        if p.is_file():
            with open(p) as f:
                return json.load(f), p
    raise SystemExit("lstmc bench: no %s found (looked at %s)" % (
        paths[-1].name, ", ".join(map(str, paths))))


def parse_lengths(spec, B):
    """grid.json's lengths spec, e.g. "uniform integers in [10, 100], seed 0" (bounds inclusive)."""
    m = re.fullmatch(r"\s*uniform integers in \[(\d+),\s*(\d+)\],\s*seed (\d+)\s*", spec)
    if not m:
        raise ValueError("unknown lengths spec in grid.json: %r" % spec)
    lo, hi, seed = map(int, m.groups())
    return np.random.default_rng(seed).integers(lo, hi + 1, size=B).astype(np.int64)


def grid_cases(grid):
    """Measured rows (dicts) in grid order.

    A row's ``cell`` is "lstm" (the default: grid.json has no "cell" field), "gru" or "rnn";
    "rnn" rows also carry ``nonlinearity`` ("tanh" unless given). Streaming rows are one
    timestep (T = 1) of one layer.
    """
    cases = []
    for section, modes in SECTION_MODES.items():
        for row in grid.get(section, []):
            cell = row.get("cell", "lstm")
            if cell not in CELL_GATES:
                raise ValueError("row %s: unknown cell %r (known: %s)"
                                 % (row["name"], cell, ", ".join(CELLS)))
            c = dict(name=row["name"], section=section, I=row["I"], H=row["H"], B=row["B"],
                     T=row.get("T", 1), L=row.get("L", 1),
                     bidirectional=bool(row.get("bidirectional")), modes=modes, lengths=None,
                     cell=cell,
                     nonlinearity=row.get("nonlinearity", "tanh") if cell == "rnn" else None)
            if "lengths" in row:
                c["lengths"] = parse_lengths(row["lengths"], c["B"])
            cases.append(c)
    return cases


def case_flops(c, mode):
    tokens = None if c["lengths"] is None else int(c["lengths"].sum())
    return rnn_flops(c["I"], c["H"], c["T"], c["B"], c["L"], c["bidirectional"], mode, tokens,
                     cell=c["cell"])


# ---------------------------------------------------------------------------------------------
# numpy BLAS threads and the sgemm peak

def _numpy_openblas():
    """ctypes handle and (set, get) function names of numpy's OpenBLAS, or None."""
    npdir = os.path.dirname(np.__file__)
    try:
        with open("/proc/self/maps") as f:
            libs = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln}
    except OSError:
        return None
    for path in sorted(libs, key=lambda p: not p.startswith(npdir)):  # numpy's own first
        lib = ctypes.CDLL(path)
        for sfx in ("64_", "_64", ""):
            for pre in ("scipy_openblas", "openblas"):
                set_, get_ = pre + "_set_num_threads" + sfx, pre + "_get_num_threads" + sfx
                if hasattr(lib, set_) and hasattr(lib, get_):
                    return lib, set_, get_, path
    return None


def blas_thread_method():
    try:
        import threadpoolctl
        return "threadpoolctl %s" % threadpoolctl.__version__
    except ImportError:
        pass
    if _numpy_openblas():
        return "ctypes OpenBLAS set_num_threads (threadpoolctl not installed)"
    return "NOT controlled (threadpoolctl not installed, OpenBLAS not found)"


@contextlib.contextmanager
def numpy_blas_threads(n):
    """Limit numpy's BLAS to n threads inside the block, restore afterwards."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        found = _numpy_openblas()
        if not found:
            yield
            return
        lib, set_, get_, _ = found
        getattr(lib, get_).restype = ctypes.c_int
        old = getattr(lib, get_)()
        getattr(lib, set_)(ctypes.c_int(n))
        try:
            yield
        finally:
            getattr(lib, set_)(ctypes.c_int(old))
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


def sgemm_times(n_threads, reps, n=None):
    """Per-call seconds of a float32 n^3 numpy matmul (n = PEAK_N) at n_threads BLAS threads."""
    n = n or PEAK_N
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    with numpy_blas_threads(n_threads):
        for _ in range(2):
            np.matmul(a, b, out=c)
        return _time_calls(lambda: np.matmul(a, b, out=c), reps)


def dram_read_times(n_threads, reps, mb=None):
    """Per-call seconds of a float32 numpy matrix-vector product over an mb MB matrix (DRAM_MB)
    at n_threads BLAS threads, and the matrix's bytes: BLAS's sgemv reads the matrix once per
    call, at the rate DRAM delivers when the matrix is larger than the L3 cache (on the CI machine
    kind, 128-256 MB: 13-14 GB/s on one core and 21 on two, where a plain AVX2 read loop in C
    read 15-16 and 20-23)."""
    cols = 1024
    rows = max(1, int((mb or DRAM_MB) * 2 ** 20) // (4 * cols))
    a = np.full((rows, cols), 0.5, np.float32)
    x = np.ones(cols, np.float32)
    y = np.empty(rows, np.float32)
    with numpy_blas_threads(n_threads):
        np.matmul(a, x, out=y)
        return _time_calls(lambda: np.matmul(a, x, out=y), reps), a.nbytes


# ---------------------------------------------------------------------------------------------
# timing

def _time_calls(fn, n):
    ts = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    finally:
        if gc_was:
            gc.enable()
    return ts


def _error_text(e):
    return "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")


def measure(runners, cfg, reps=None, max_reps=None):
    """Interleaved timing. runners: {lib: fn}; returns {lib: [seconds, ...]} (errors: str)."""
    probe, samples, nreps = {}, {}, {}
    max_reps = max_reps or cfg["max_reps"]
    for lib, fn in runners.items():
        try:                                # untimed probe (includes one-time setup): sizes reps
            probe[lib] = _time_calls(fn, 1)[0]
        except Exception as e:              # a row the library cannot run
            samples[lib] = _error_text(e)
            continue
        if reps:
            nreps[lib] = reps
        else:
            n = int(cfg["budget"] / max(probe[lib], 1e-6))
            floor = cfg["min_reps"] if probe[lib] < cfg["budget"] else 3  # calls > budget: 3
            nreps[lib] = max(floor, min(max_reps, n))
        samples[lib] = []
    live = [lib for lib in runners if lib in probe]
    rounds = max(1, min(cfg["rounds"], min([nreps[lib] for lib in live] or [1])))
    order = random.Random(0)
    for r in range(rounds):
        # each round in its own order, so that no library always follows the same other one
        # and inherits what its pool leaves behind (a rotation keeps every library's
        # predecessor)
        for lib in order.sample(live, len(live)):
            n = nreps[lib] // rounds + (1 if r < nreps[lib] % rounds else 0)
            gc.collect()
            # Settle for WARM_S before timing: the other libraries' worker threads (OpenBLAS
            # spins ~0.1 s after a call) go idle meanwhile; fast calls also re-warm caches.
            if probe[lib] < WARM_S:
                t_end = time.perf_counter() + WARM_S
                while time.perf_counter() < t_end:
                    runners[lib]()
            else:
                time.sleep(WARM_S)
            samples[lib] += _time_calls(runners[lib], n)
    return samples


# ---------------------------------------------------------------------------------------------
# the libraries: per row, runner(mode, threads) -> a callable (None: mode not supported) and
# check() -> the forward output (streaming rows: h after CHECK_STEPS steps from zero state)

CELL_CLASS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
LSTMC_VARIANTS = ("lstmc", "lstmc.cell")   # make_lstmc's names (a streaming row has both)


def module_kwargs(c):
    kw = dict(num_layers=c["L"], bidirectional=c["bidirectional"])
    if c["cell"] == "rnn":
        kw["nonlinearity"] = c["nonlinearity"]
    return kw


def streaming_runner(make_step, state0, data):
    """(runner, check) of a streaming row, from make_step(threads) -> step(x_t, state) ->
    (h_t, state) (threads None: any) and state0() -> a fresh zero state. The timed call is one
    step on x_t = x[0], fed its own previous state; check() runs CHECK_STEPS steps on x[0], x[1],
    ... from zeros and returns the last h."""
    def runner(mode, threads):
        step, x_t, held = make_step(threads), data["x"][0], [state0()]

        def one():
            held[0] = step(x_t, held[0])[1]
        return one

    def check():
        step, state = make_step(None), state0()
        for x_t in data["x"][:CHECK_STEPS]:
            h, state = step(x_t, state)
        return np.asarray(h).reshape(-1)
    return runner, check


def make_lstmc(lstmc, c, data):
    """lstmc's module for the row (weights from lstmc.manual_seed(0)); returns (libs, sd) with
    libs {name: (runner, check)}: "lstmc", plus "lstmc.cell" on streaming rows when the
    streaming API exists (then "lstmc" is LSTM.step and "lstmc.cell" the cell)."""
    lstmc.manual_seed(0)
    m = getattr(lstmc.nn, CELL_CLASS[c["cell"]])(c["I"], c["H"], dtype=np.float32,
                                                  **module_kwargs(c))
    sd = {k: np.array(v) for k, v in m.state_dict().items()}
    if c["section"] == "streaming_step":
        return _lstmc_streaming(lstmc, c, m, sd, data), sd
    x, dout, lengths = data["x"], data["dout"], c["lengths"]

    def fwd():
        return m(x, lengths=lengths)

    def train():
        m.zero_grad()
        m(x, lengths=lengths)
        m.backward(dout)

    def runner(mode, threads):
        (m.eval if mode == "fwd" else m.train)()
        return fwd if mode == "fwd" else train

    def check():
        m.eval()
        return np.asarray(fwd()[0])
    return {"lstmc": (runner, check)}, sd


def _lstmc_streaming(lstmc, c, m, sd, data):
    cell_cls = getattr(lstmc.nn, CELL_CLASS[c["cell"]] + "Cell")
    kw = dict(nonlinearity=c["nonlinearity"]) if c["cell"] == "rnn" else {}
    cell = cell_cls(c["I"], c["H"], dtype=np.float32, **kw)
    cell.load_state_dict({k[:-len("_l0")]: v for k, v in sd.items()})
    cell.eval()
    B, H = c["B"], c["H"]
    lstm = c["cell"] == "lstm"

    def zeros():
        z = np.zeros((B, H), np.float32)
        return (z, z.copy()) if lstm else z

    def cell_step(x_t, state):
        state = cell(x_t, state)
        return (state[0] if lstm else state), state
    cell_lib = streaming_runner(lambda threads: cell_step, zeros, data)
    if not (hasattr(m, "initial_state") and hasattr(m, "step")):
        return {"lstmc": cell_lib}
    m.eval()
    return {"lstmc": streaming_runner(lambda threads: m.step,
                                      lambda: m.initial_state(batch_size=B), data),
            "lstmc.cell": cell_lib}


# ---------------------------------------------------------------------------------------------
# the peers: benchmarks/peers.py of a source checkout, loaded by a run, never by `import lstmc`

PEERS_MODULE = "lstmc_bench_peers"
PEERS_HINT = ("peer columns (PyTorch, ONNX Runtime) come from benchmarks/peers.py of a source "
              "checkout of lstmc: run lstmc from the checkout (its directory, PYTHONPATH or an "
              "editable install) or pass --peers-from <checkout>/benchmarks")


def load_peers(where=None):
    """The peers module, or None when there is none: ``where`` (peers.py or the directory
    holding it), else benchmarks/peers.py beside the package, which a source checkout has (the
    directory above lstmc/ also holds csrc/). Loaded once per path: the run and the tests
    share one module object."""
    if where:
        path = Path(where)
    else:
        root = HERE.parent
        path = root / "benchmarks" if (root / "csrc").is_dir() else None
    if path is not None and path.is_dir():
        path = path / "peers.py"
    if path is None or not path.is_file():
        return None
    path = path.resolve()
    mod = sys.modules.get(PEERS_MODULE)
    if mod is None or Path(mod.__file__) != path:
        spec = importlib.util.spec_from_file_location(PEERS_MODULE, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[PEERS_MODULE] = mod
        spec.loader.exec_module(mod)
    return mod


class RunPeer(NamedTuple):
    """A peer asked for in this run: its entry of peers.PEERS (label, load, make, set_threads,
    note) and its module (None: not installed)."""
    spec: object
    module: object

    @property
    def label(self):
        return self.spec.label

    @property
    def installed(self):
        return self.module is not None

    @property
    def rival(self):
        """Another library (not lstmc through another of its APIs): a "best peer" candidate."""
        return not getattr(self.spec, "lstmc", False)

    @property
    def onnx_file(self):
        """It runs the row's ONNX model."""
        return getattr(self.spec, "onnx_file", False)


def import_peers(specs, say):
    """{name: RunPeer} of the peers asked for ({name: peers.Peer})."""
    found = {}
    for name, spec in specs.items():
        try:
            mod = spec.load()
        except ImportError as e:
            say("lstmc bench: %s not importable (%s): its columns say 'not installed'"
                % (spec.label, e))
            mod = None
        found[name] = RunPeer(spec, mod)
    return found


# ---------------------------------------------------------------------------------------------
# output

def fmt_ms(s):
    ms = s * 1e3
    return "%.0f" % ms if ms >= 100 else "%.1f" % ms if ms >= 10 else "%.2f" % ms if ms >= 1 \
        else "%.3f" % ms


def _error_cell(r, lib):
    """The cell of a library that could not run this line (its message is on stderr)."""
    return "error (stderr): " + r[lib + "_error"].split(":")[0]


def _line_cells(r):
    """A line's first cells, in every table: row (marked (!) on a mismatch), threads, mode."""
    return [r["row"] + (" (!)" if r.get("mismatch") else ""), str(r["threads"]), r["mode"]]


def _peer_cell(r, peer, installed):
    if not installed:
        return "not installed"
    if r.get(peer + "_error"):
        return _error_cell(r, peer)
    if peer + "_s" not in r:
        return "—"
    return fmt_ms(r[peer + "_s"])


def best_peer(r, peers):
    """(peer, seconds) of the fastest peer measured on this result row, or None (lstmc's own
    columns, lstmc.onnx, are not peers here)."""
    timed = [(r[p + "_s"], p) for p, peer in peers.items() if peer.rival and p + "_s" in r]
    return min(timed)[::-1] if timed else None


def markdown(results, calib, meta, peers):
    """The tables: one line per row, mode and thread count, then the weights read by the
    memory-bound lines (batch <= MEMORY_BOUND_B); peers: {name: RunPeer}."""
    out = []
    versions = ", ".join("%s %s" % (peer.label, meta["versions"][p] or "not installed")
                         for p, peer in peers.items())
    out.append("lstmc %s vs %s, float32, medians; %s." % (
        meta["lstmc_version"], versions or "no peers", meta["machine"]))
    if meta.get("peers_missing"):
        out.append("No peers: " + PEERS_HINT + ".")
    out.append("Run %s, %.0f s; load average before/after %s / %s (another process busy on the "
               "cores makes every figure, above all the 2-thread ones, unreliable)." % (
                   meta["date"], meta["elapsed_s"], meta["load_before"], meta["load_after"]))
    out.append("sgemm peak (numpy float32 %d^3 matmul, median of %d; numpy BLAS threads: %s): "
               "%s." % (
        PEAK_N, meta["peak_reps"], meta["blas_threads"],
        ", ".join("%d thr %.0f GFLOP/s" % (t, p)
                  for t, p in sorted(calib["sgemm_peak_gflops"].items()))))
    out.append("")
    cols = ["row", "threads", "mode", "lstmc ms", "GFLOP/s", "% peak"]
    cols += ["%s ms" % peer.label for peer in peers.values()]
    cols += ["lstmc / best peer"] if peers else []
    align = ["---", "---:", "---"] + ["---:"] * (len(cols) - 3)
    out.append("| " + " | ".join(cols) + " |")
    out.append("|" + "|".join(align) + "|")
    for r in results:
        cells = _line_cells(r)
        if r.get("lstmc_error"):
            cells += [_error_cell(r, "lstmc"), "", ""]
        else:
            cells += [fmt_ms(r["lstmc_s"]), "%.1f" % r["lstmc_gflops"],
                      "%.0f %%" % r["lstmc_pct_peak"]]
        cells += [_peer_cell(r, p, peer.installed) for p, peer in peers.items()]
        best = best_peer(r, peers)
        if peers:
            cells.append("%.3g (%s)" % (r["lstmc_s"] / best[1], peers[best[0]].label)
                         if best and r.get("lstmc_s") else "")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out += ["- " + n for n in _notes(results, peers)]
    if any(peer.installed for peer in peers.values()):
        out.append("")
        out.append("Geometric means of lstmc / best peer by kind (below 1: lstmc is faster), then "
                   "of lstmc / each peer, and the largest single lstmc / best peer:")
        out.append("")
        out += summary(results, peers)
    onnx_file = onnx_file_summary(results, peers, meta)
    if onnx_file:
        out += [""] + onnx_file
    bound = [r for r in results if "weights_bytes" in r]
    if bound:
        out.append("")
        out.append("Batch <= %d: weights read, GB/s (MB read = W_hh at every step and W_ih once, "
                   "in 10^6 bytes, over the time), and lstmc's as a share of the DRAM read rate "
                   "(numpy float32 matrix-vector product over %.0f MiB, median of %d): %s. "
                   "Weights that fit the L3 cache read faster than DRAM." % (
                       MEMORY_BOUND_B, calib["dram_bytes"] / 2 ** 20, meta["dram_reps"],
                       ", ".join("%d thr %.1f GB/s" % (t, g)
                                 for t, g in sorted(calib["dram_read_gbps"].items()))))
        out.append("")
        cols = ["row", "threads", "mode", "MB read", "lstmc GB/s", "% DRAM read"]
        cols += ["%s GB/s" % peer.label for peer in peers.values()]
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "|".join(["---", "---:", "---"] + ["---:"] * (len(cols) - 3)) + "|")
        for r in bound:
            cells = _line_cells(r) + ["%.1f" % (r["weights_bytes"] / 1e6)]
            if r.get("lstmc_error"):
                cells += [_error_cell(r, "lstmc"), ""]
            else:
                cells += ["%.1f" % r["lstmc_weights_gbps"], "%.0f %%" % r["lstmc_pct_dram"]]
            cells += ["%.1f" % r[p + "_weights_gbps"] if p + "_weights_gbps" in r
                      else _peer_cell(r, p, peer.installed) for p, peer in peers.items()]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def l3_bytes(cache_dir="/sys/devices/system/cpu/cpu0/cache"):
    """The size of CPU 0's level-3 cache from sysfs (Linux), else 32 MiB (the machines this was
    written on)."""
    for index in sorted(Path(cache_dir).glob("index*")):
        try:
            if (index / "level").read_text().strip() != "3":
                continue
            text = (index / "size").read_text().strip()
            return int(text[:-1]) * {"K": 2 ** 10, "M": 2 ** 20}[text[-1]]
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return 32 * 2 ** 20


def kind(r, l3=None):
    """The summary group of a result line: cell, section and mode (LSTM inference split by
    whether one direction's W_hh fits the L3 cache; GRU and RNN forwards of the inference and
    training sections form one group each)."""
    cell, mode, section = r["cell"], r["mode"], r["section"]
    name = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]
    if section == "onnx_file":
        return "%s forward, ONNX-file rows" % name
    if section == "streaming_step":
        return "streaming step at B=1 (`%s.step`)" % name if mode == "step" else \
            "streaming step at B=1 (`%sCell`)" % name
    if section == "variable_length":
        return "%s %s, variable lengths" % (name, "training step" if mode == "train"
                                            else "forward")
    if cell != "lstm":
        return name + (" training step" if mode == "train" else " forward")
    if section == "inference":
        beyond = weight_bytes(0, r["H"], 1) > (l3 or l3_bytes())
        return "LSTM inference, W_hh %s L3" % ("beyond" if beyond else "within")
    return "LSTM training step" if mode == "train" else "LSTM forward, training rows"


def _gmean(values):
    return float(np.exp(np.mean(np.log(values)))) if values else None


def summary(results, peers):
    """Geometric means of lstmc's time over the best peer's (and over each peer's) by kind, and
    the largest ratio, per thread count: the table README quotes."""
    threads = sorted({r["threads"] for r in results})
    l3 = l3_bytes()
    groups = {}           # kind -> thread count -> the lines lstmc ran, in the results' order
    for r in results:
        lines = groups.setdefault(kind(r, l3), {n: [] for n in threads})
        if r.get("lstmc_s"):
            lines[r["threads"]].append(r)
    fmt = lambda v: "—" if v is None else "%.2f" % v          # noqa: E731
    per = lambda vs: " / ".join(fmt(v) for v in vs)           # noqa: E731
    cols = ["kind"] + ["%d thr" % n for n in threads]
    cols += ["vs %s (%s)" % (peer.label, " / ".join(map(str, threads)))
             for peer in peers.values()]
    cols += ["largest (%s)" % " / ".join(map(str, threads))]
    out = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for k, lines in groups.items():
        best = {n: [r["lstmc_s"] / b[1] for r in lines[n] for b in [best_peer(r, peers)] if b]
                for n in threads}
        cells = [k] + [fmt(_gmean(best[n])) for n in threads]
        cells += [per([_gmean([r["lstmc_s"] / r[p + "_s"] for r in lines[n] if p + "_s" in r])
                       for n in threads]) for p in peers]
        cells.append(per([max(best[n]) if best[n] else None for n in threads]))
        out.append("| " + " | ".join(cells) + " |")
    return out


# the targets for the ONNX-file rows (docs/performance.md): lstmc.onnx over the faster
# other ONNX runtime, geometric mean and every row, and lstmc.onnx over lstmc's native module
ONNX_FILE_TARGETS = dict(gmean=0.85, largest=1.0, vs_native=1.05)


def onnx_file_summary(results, peers, meta):
    """The ONNX-file figures of the ``onnx_file`` rows, per thread count and over all: the
    geometric mean and the largest of lstmc.onnx / the faster of the other runtimes of the same
    ONNX file (ORT, OpenVINO), and the largest lstmc.onnx / lstmc native, each from the lines
    of the timings table. [] when no such row has an lstmc.onnx time."""
    own = [p for p, peer in peers.items() if peer.onnx_file and not peer.rival]
    others = [p for p, peer in peers.items() if peer.onnx_file and peer.rival]
    own = own[0] if own else None
    lines = [r for r in results if r["section"] == "onnx_file" and own and own + "_s" in r]
    if not lines:
        return []
    threads = sorted({r["threads"] for r in lines})
    groups = [(str(n), [r for r in lines if r["threads"] == n]) for n in threads]
    if len(threads) > 1:
        groups.append(("all", lines))

    def largest(pairs):
        if not pairs:
            return "—"
        v, r = max(pairs, key=lambda p: p[0])
        return "%.3f (%s, %d thr)" % (v, r["row"], r["threads"])

    labels = " / ".join(peers[o].label for o in others) or "no other ONNX runtime"
    out = ["The same ONNX file run by %s and by %s (the onnx_file rows; benchmarks/peers.py "
           "builds the file from lstmc's weights), this run (%s) on %s. Targets: geometric "
           "mean <= %.2f and largest <= %.2f of %s / the faster of %s, and %s / lstmc native "
           "<= %.2f on every row." % (
               peers[own].label, labels, meta["date"], meta["machine"],
               ONNX_FILE_TARGETS["gmean"], ONNX_FILE_TARGETS["largest"], peers[own].label,
               labels, peers[own].label, ONNX_FILE_TARGETS["vs_native"]), ""]
    cols = ["threads", "lines", "%s / faster of %s: geo-mean" % (peers[own].label, labels),
            "largest", "%s / lstmc native: largest" % peers[own].label]
    out += ["| " + " | ".join(cols) + " |", "|---|---:|---:|---:|---:|"]
    for label, rs in groups:
        vs = [(r[own + "_s"] / min(r[o + "_s"] for o in others if o + "_s" in r), r)
              for r in rs if any(o + "_s" in r for o in others)]
        native = [(r[own + "_s"] / r["lstmc_s"], r) for r in rs if r.get("lstmc_s")]
        gm = _gmean([v for v, _ in vs])
        out.append("| " + " | ".join([label, str(len(rs)), "—" if gm is None else "%.3f" % gm,
                                      largest(vs), largest(native)]) + " |")
    return out


def _notes(results, peers):
    cells = {r.get("cell", "lstm") for r in results}
    if cells == {"lstm"}:
        flops = "forward 2·T·B·4H·(I+H)"
    else:
        flops = ("forward 2·T·B·G·H·(I+H) with G = 4 LSTM, 3 GRU (gru_* rows), 1 RNN (rnn_* "
                 "rows)")
    notes = ["GFLOP/s and % peak are lstmc's: " + flops + " per layer and direction (layer > 0 "
             "reads D·H inputs), train step = 3x forward, a streaming step = forward with T = 1; "
             "variable-length rows count sum(lengths) tokens instead of T·B.",
             "fwd = eval-mode forward; train = zero_grad + train-mode forward + backward; step "
             "= one streaming timestep at B=1 from Python, state fed back (lstmc.nn.LSTM.step); "
             "cell = the same with lstmc.nn.LSTMCell (its peer figures are the step line's); "
             "— = a mode the peer does not have."]
    if peers:
        notes.append("lstmc / best peer = lstmc ms over the fastest peer's ms on that line (< 1: "
                     "lstmc faster), all measured interleaved in the same process at the same "
                     "thread count; single absolute times on a shared machine are noisy.")
    notes += [peer.spec.note for peer in peers.values()]
    if any(r.get("mismatch") for r in results):
        notes.append("(!) lstmc's forward output and a peer's differ by more than %g on this "
                     "row: see stderr." % CHECK_ATOL)
    return notes


def _loadavg():
    try:
        return "%.1f" % os.getloadavg()[0]
    except (OSError, AttributeError):
        return "?"


def machine_desc():
    """The CPU model, its logical CPUs and the vector extensions the kernels may use."""
    from lstmc.__main__ import _cpu_features

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    model = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d logical CPUs, %s" % (model, os.cpu_count() or 0,
                                        " ".join(_cpu_features()) or "vector features unknown")


# ---------------------------------------------------------------------------------------------
# the run

def select_cases(args, error):
    """The rows to measure, from the grids and --cells / --rows / --quick."""
    cells = [k.strip().lower() for k in args.cells.split(",") if k.strip()]
    bad = [k for k in cells if k not in CELL_GATES]
    if not cells or bad:
        error("--cells wants a comma-separated subset of %s; got %r" % (",".join(CELLS),
                                                                         args.cells))
    grid, grid_path = load_grid(args.grid)
    cases, paths = grid_cases(grid), [grid_path]
    if any(k != "lstm" for k in cells):
        grid_rnn, grid_rnn_path = load_grid(args.grid_rnn, RNN_GRID_PATHS)
        more = grid_cases(grid_rnn)
        names = {c["name"] for c in cases}
        dup = [c["name"] for c in more if c["name"] in names]
        if dup:
            raise SystemExit("lstmc bench: rows in both grids: %s" % ", ".join(dup))
        cases += more
        paths.append(grid_rnn_path)
    # Keep the chosen cells; group by cell (LSTM rows keep grid.json's order).
    cases = sorted((c for c in cases if c["cell"] in cells), key=lambda c: CELLS.index(c["cell"]))
    if args.rows:
        wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
        known = {c["name"] for c in cases}
        unknown = [r for r in wanted if r not in known]
        if unknown:
            error("unknown rows %s; known (with --cells %s): %s" % (
                ", ".join(unknown), ",".join(cells), ", ".join(sorted(known))))
        cases = [c for c in cases if c["name"] in wanted]
    elif args.quick:
        quick = [dict(c, modes=QUICK_ROWS[c["name"]]) for c in cases if c["name"] in QUICK_ROWS]
        cases = quick or [next(c for c in cases if c["section"] == s) for s in SECTION_MODES
                          if any(c["section"] == s for c in cases)]
    return cases, cells, paths


def row_data(c):
    """Fixed random input x (T, B, I) and output gradient dout (T, B, D*H) for a row."""
    rng = np.random.default_rng(0)
    D = 2 if c["bidirectional"] else 1
    T = max(c["T"], CHECK_STEPS) if c["section"] == "streaming_step" else c["T"]
    return dict(x=rng.standard_normal((T, c["B"], c["I"]), dtype=np.float32),
                dout=rng.standard_normal((T, c["B"], D * c["H"]), dtype=np.float32))


def build_row(c, lstmc, peers, threads, say):
    """Every library's (runner, check) for a row, with the same weights; checks the peers'
    forward outputs against lstmc's (a peer that cannot build or run the row gets an error
    string instead)."""
    data = row_data(c)
    libs, sd = make_lstmc(lstmc, c, data)
    for name, peer in peers.items():
        if not peer.installed:
            continue
        try:
            libs[name] = peer.spec.make(peer.module, c, data, sd)
        except Exception as e:
            libs[name] = _error_text(e)
            say("  %s: %s cannot build this row: %s" % (c["name"], peer.label, libs[name]))
    set_threads(lstmc, peers, threads)
    ref = libs["lstmc"][1]()
    # a variable-length row is compared at its rows' valid steps: what a padded step's output
    # holds is each library's convention (lstmc and ORT write zeros, OpenVINO does not)
    valid = (np.arange(c["T"])[:, None] < c["lengths"][None, :]
             if c["lengths"] is not None and np.ndim(ref) == 3 else Ellipsis)
    for name, lib in libs.items():
        if name == "lstmc" or isinstance(lib, str):
            continue
        try:
            err = float(np.max(np.abs(np.asarray(lib[1]())[valid] - ref[valid])))
        except Exception as e:
            libs[name] = _error_text(e)
            say("  %s: %s fails: %s" % (c["name"], name, libs[name]))
            continue
        c.setdefault("max_abs_diff", {})[name] = err
        if not err <= CHECK_ATOL:
            c["mismatch"] = True
            say("  WARNING %s: lstmc and %s outputs differ: max |diff| %.3g"
                % (c["name"], name, err))
    return libs


def set_threads(lstmc, peers, n):
    """Library-wide thread counts (a peer without set_threads takes them per call: ORT's
    sessions)."""
    lstmc.set_num_threads(n)
    for peer in peers.values():
        if peer.installed and peer.spec.set_threads is not None:
            peer.spec.set_threads(peer.module, n)


def result_rows(c, n, mode, samples):
    """Result dicts of one measure() call: one per lstmc figure (streaming rows with the step
    API give "step" and "cell"), each with every peer's figure."""
    variants = [("lstmc", mode)] + ([("lstmc.cell", "cell")] if "lstmc.cell" in samples else [])
    if mode == "step" and len(variants) == 1:
        variants = [("lstmc", "cell")]      # no streaming API: the cell is lstmc's figure
    flops = case_flops(c, "fwd" if mode == "step" else mode)
    wbytes = (weight_bytes(c["I"], c["H"], c["T"], c["L"], c["bidirectional"], c["cell"])
              if c["B"] <= MEMORY_BOUND_B and mode != "train" and c["lengths"] is None else None)
    rows = []
    for lstmc_name, label in variants:
        r = dict(row=c["name"], section=c["section"], cell=c["cell"], H=c["H"],
                 nonlinearity=c["nonlinearity"], threads=n, mode=label, flops=flops,
                 mismatch=bool(c.get("mismatch")), max_abs_diff=c.get("max_abs_diff"))
        if wbytes:
            r["weights_bytes"] = wbytes
        for lib, v in samples.items():
            if lib in LSTMC_VARIANTS and lib != lstmc_name:
                continue
            key = "lstmc" if lib == lstmc_name else lib
            if isinstance(v, str):
                r[key + "_error"] = v
            else:
                r[key + "_s"] = float(np.median(v))
                r[key + "_gflops"] = flops / r[key + "_s"] / 1e9
                if wbytes:
                    r[key + "_weights_gbps"] = wbytes / r[key + "_s"] / 1e9
                r[key + "_samples_s"] = v
        rows.append(r)
    return rows


def run_grid(built, threads, cfg, reps, lstmc, peers, say):
    """Time every (row, mode) at every thread count. Returns (results, calib): calib holds the
    sgemm peaks (GFLOP/s) and DRAM read rates (GB/s) per thread count, each the median of
    samples taken before and after that thread count's rows, and those samples."""
    t_start = time.perf_counter()
    results = []
    calib = dict(sgemm_peak_gflops={}, sgemm_samples_s={}, dram_read_gbps={}, dram_samples_s={},
                 dram_bytes=None)

    def calibrate(n):
        calib["sgemm_samples_s"].setdefault(n, []).extend(sgemm_times(n, cfg["peak_reps"]))
        ts, calib["dram_bytes"] = dram_read_times(n, cfg["dram_reps"])
        calib["dram_samples_s"].setdefault(n, []).extend(ts)
        calib["sgemm_peak_gflops"][n] = 2 * PEAK_N ** 3 / float(
            np.median(calib["sgemm_samples_s"][n])) / 1e9
        calib["dram_read_gbps"][n] = calib["dram_bytes"] / float(
            np.median(calib["dram_samples_s"][n])) / 1e9

    for n in threads:
        set_threads(lstmc, peers, n)
        calibrate(n)
        say("[%d thr] sgemm %.0f GFLOP/s, DRAM read %.1f GB/s so far"
            % (n, calib["sgemm_peak_gflops"][n], calib["dram_read_gbps"][n]))
        rows_n = []
        for c, libs in built:
            for mode in c["modes"]:
                runners, errors = {}, {}
                for name, lib in libs.items():
                    if isinstance(lib, str):
                        errors[name] = lib
                    else:
                        fn = lib[0](mode, n)
                        if fn is not None:
                            runners[name] = fn
                s = measure(runners, cfg, reps,
                            cfg["max_step_reps"] if mode == "step" else None)
                s.update(errors)
                rows_n += result_rows(c, n, mode, s)
                done = "  ".join("%s %s" % (lib, v if isinstance(v, str) else "%s ms (n=%d)" % (
                    fmt_ms(float(np.median(v))), len(v))) for lib, v in s.items())
                say("[%d thr] %-28s %-5s %s   (%.0f s)" % (
                    n, c["name"], mode, done, time.perf_counter() - t_start))
        calibrate(n)
        for r in rows_n:
            for lib in ["lstmc", *peers]:
                if lib + "_gflops" in r:
                    r[lib + "_pct_peak"] = 100 * r[lib + "_gflops"] / calib["sgemm_peak_gflops"][n]
            if "lstmc_weights_gbps" in r:
                r["lstmc_pct_dram"] = 100 * r["lstmc_weights_gbps"] / calib["dram_read_gbps"][n]
        results += rows_n
    return results, calib


def add_arguments(ap):
    ap.add_argument("--quick", action="store_true",
                    help="one row of each kind, fewer reps (< 1 min)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--rows", default=None, help="comma-separated grid row names (default: all)")
    ap.add_argument("--reps", type=int, default=None,
                    help="timed reps per figure (default: sized to a time budget per figure)")
    ap.add_argument("--json", default=None, metavar="OUT.json", help="also write results as JSON")
    ap.add_argument("--peers", default=None,
                    help="comma-separated peers to compare with, of those benchmarks/peers.py "
                         "defines (torch, ort, openvino, lstmc.onnx; default: all; a peer that "
                         "is not installed shows 'not installed'); '' for none")
    ap.add_argument("--peers-from", default=None, metavar="PATH",
                    help="benchmarks/peers.py of an lstmc source checkout, or its directory "
                         "(default: the one beside the package when lstmc runs from a "
                         "checkout; without it lstmc is timed alone)")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out of the peers")
    ap.add_argument("--grid", default=None, help="grid.json path (default: the packaged "
                    "lstmc/bench_grid.json)")
    ap.add_argument("--grid-rnn", default=None, help="GRU/RNN grid path (default: the packaged "
                    "lstmc/bench_grid_rnn.json)")
    ap.add_argument("--cells", default=",".join(CELLS),
                    help="comma-separated cell kinds to run, of %s (default: all)"
                    % ",".join(CELLS))
    ap.add_argument("--list", action="store_true", help="list the grids' rows and exit")
    ap.add_argument("--contention", action="store_true",
                    help="instead of the grids: lstmc at 1 and 2 threads and ONNX Runtime at 2, "
                         "idle, beside a busy process and after another library's threaded "
                         "call (benchmarks/bench_contention.py of a source checkout; --rows: "
                         "its rows; --quick: fewer calls)")
    ap.add_argument("--quantized", action="store_true",
                    help="instead of the grids: lstmc int8 beside lstmc float32 and the peers' "
                         "float32, int8 and bf16 runtimes (benchmarks/bench_quantized.py of a "
                         "source checkout; --rows: its rows; --quick: fewer calls)")


def choose_peers(args, error):
    """({name: peers.Peer} asked for by --peers / --no-torch / --peers-from, and whether the
    peers module was missing when the defaults wanted it)."""
    module = load_peers(args.peers_from)
    if args.peers_from and module is None:
        error("--peers-from %s: no peers.py there" % args.peers_from)
    known = module.PEERS if module else {}
    if args.peers is None:
        wanted = list(known)
    else:
        wanted = [p.strip().lower() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in known]
    if unknown and not known:
        error("--peers %s: no peers here; %s" % (args.peers, PEERS_HINT))
    if unknown:
        error("--peers wants a comma-separated subset of %s; got %r" % (",".join(known),
                                                                         args.peers))
    if args.no_torch:
        wanted = [p for p in wanted if p != "torch"]
    return {p: known[p] for p in wanted}, module is None and args.peers is None


def run_section(args, error, flag, script, quick):
    """A section of its own (--contention, --quantized): `script` of benchmarks/ beside the
    peers module, with --rows, and `quick` (its arguments) under --quick."""
    peers = load_peers(args.peers_from)
    path = Path(peers.__file__).with_name(script) if peers else None
    if path is None or not path.is_file():
        error("%s needs benchmarks/%s of a source checkout of lstmc: run lstmc from the "
              "checkout or pass --peers-from <checkout>/benchmarks" % (flag, script))
    spec = importlib.util.spec_from_file_location("lstmc_" + path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ap = argparse.ArgumentParser()
    mod.add_arguments(ap)
    argv = list(quick) if args.quick else []
    if args.rows:
        argv += ["--rows", args.rows]
    mod.run(ap.parse_args(argv))
    return 0


def run(args, error=None):
    """Run the benchmark for parsed arguments (see add_arguments); the table goes to stdout."""
    if error is None:
        def error(msg):
            raise SystemExit("lstmc bench: " + msg)
    if args.contention:
        return run_section(args, error, "--contention", "bench_contention.py",
                           ["--rounds", "2", "--calls", "4", "--quiet", "0.1"])
    if args.quantized:
        return run_section(args, error, "--quantized", "bench_quantized.py",
                           ["--rounds", "2", "--calls", "3"])
    cases, cells, grid_paths = select_cases(args, error)
    if args.list:
        for c in cases:
            print("%-28s %-16s %-8s I=%d H=%d B=%d T=%d L=%d%s%s" % (
                c["name"], c["section"], c["cell"] + ("/" + c["nonlinearity"]
                                                      if c["nonlinearity"] else ""),
                c["I"], c["H"], c["B"], c["T"], c["L"],
                " bidirectional" if c["bidirectional"] else "",
                " lengths" if c["lengths"] is not None else ""))
        return 0
    cfg = QUICK if args.quick else FULL
    threads = list(dict.fromkeys(int(t) for t in args.threads.split(",") if t.strip()))
    if not threads or min(threads) < 1:
        error("--threads wants positive integers, e.g. 1,2; got %r" % args.threads)
    if args.reps is not None and args.reps < 1:
        error("--reps must be >= 1, got %d" % args.reps)
    specs, peers_missing = choose_peers(args, error)

    import lstmc
    say = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    peers = import_peers(specs, say)
    if peers_missing:
        say("lstmc bench: timing lstmc alone; " + PEERS_HINT)
    meta = dict(lstmc_version=getattr(lstmc, "__version__", "(dev)"),
                lstmc_openmp=bool(lstmc.openmp_enabled()),
                versions={p: getattr(peer.module, "__version__", "?") if peer.installed
                          else None for p, peer in peers.items()},
                peers_missing=peers_missing,
                lstmc_streaming_api=hasattr(lstmc.nn.LSTM, "step"),
                numpy_version=np.__version__, python=platform.python_version(),
                machine=machine_desc(), blas_threads=blas_thread_method(),
                grids=[str(p) for p in grid_paths], quick=args.quick, threads=threads,
                cells=cells, peak_reps=2 * cfg["peak_reps"], dram_reps=2 * cfg["dram_reps"],
                date=time.strftime("%Y-%m-%d %H:%M"), load_before=_loadavg())
    say("lstmc bench: grids %s; cells %s; %d rows; threads %s; lstmc %s (OpenMP %s); peers %s; "
        "BLAS threads: %s" % (
            " + ".join(meta["grids"]), ",".join(cells), len(cases), threads,
            meta["lstmc_version"], meta["lstmc_openmp"],
            ", ".join("%s %s" % (peers[p].label, v or "not installed")
                      for p, v in meta["versions"].items()) or "none", meta["blas_threads"]))

    t_start = time.perf_counter()
    built = [(c, build_row(c, lstmc, peers, threads[0], say)) for c in cases]
    # Everything alive now (torch's and ORT's modules, the models) lives to the end: frozen out
    # of the collector, the gc.collect() before each timed block costs microseconds, not the
    # ~0.2-0.5 s a full collection over torch's objects takes.
    gc.collect()
    gc.freeze()
    try:
        results, calib = run_grid(built, threads, cfg, args.reps, lstmc, peers, say)
    finally:
        gc.unfreeze()
    order = {c["name"]: i for i, c in enumerate(cases)}
    results.sort(key=lambda r: (order[r["row"]], r["mode"] == "train", r["mode"] == "cell",
                                r["threads"]))
    meta["elapsed_s"] = time.perf_counter() - t_start
    meta["load_after"] = _loadavg()
    print(markdown(results, calib, meta, peers))
    say("lstmc bench: done in %.0f s" % meta["elapsed_s"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=results, **calib), f, indent=1)
    return 0


def main(argv=None, prog="python -m lstmc bench"):
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    return run(args, ap.error)


if __name__ == "__main__":
    sys.exit(main())
