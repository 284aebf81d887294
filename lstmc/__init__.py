"""lstmc: a Cython/C CPU engine for recurrent neural networks.

C kernels (csrc/) do the per-timestep work with BLAS and OpenMP; one Cython module
(lstmc._core) is the boundary; `lstmc.nn` offers PyTorch-style modules on top, with
PyTorch's parameter names and shapes, and `lstmc.optim` PyTorch's optimizers and learning-rate
schedulers; `lstmc.keras` is the Keras flavour on the same engine, its modules reachable as
`lstmc.layers`, `lstmc.models`, `lstmc.optimizers`, `lstmc.losses` and `lstmc.callbacks` too.
`lstmc.reference` is the float64 NumPy spec. `lstmc.save` / `lstmc.load` keep checkpoints
(nested dicts of arrays) in lstmc's one file format (`lstmc.io`). `lstmc.empty_cache()` frees
the workspaces modules keep between calls.
"""
import os as _os

# OpenMP's worker threads wait between calls (the per-step barrier is lstmc's own, csrc/seq.c
# team_barrier). GCC's default is to spin ~300,000 rounds (milliseconds) before sleeping,
# which burns a core after every call that other processes could use; 10,000 rounds spin
# about 0.13 ms on the 2-core AVX-512 guest (a lone call's worker CPU time: +0.12 ms against
# 1,000), which covers back-to-back calls: a sleeping worker's wake-up cost each 2-thread call
# ~0.1 ms there (int8 LSTM H512 B1 T2 0.13 -> 0.03 ms; T25 0.32 -> 0.25; float32 GRU H512 B1
# T25 idle 1.10 -> 0.69 in benchmarks/bench_contention.py, whose contended rows held: 2 / 1
# threads at most 1.03, lstmc / ORT at most 0.99; docs/decisions.md#contention). libgomp
# reads this when it loads, so it is set before the extension (which loads it) is imported;
# a user's GOMP_SPINCOUNT or OMP_WAIT_POLICY wins.
if "GOMP_SPINCOUNT" not in _os.environ and "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "10000"

from lstmc._core import openmp_enabled  # noqa: E402
from lstmc import _scipy_blas  # noqa: E402,F401  (hands scipy's BLAS to the kernels)
from lstmc._random import manual_seed  # noqa: E402
from lstmc._threads import get_num_threads, set_num_threads  # noqa: E402
from lstmc import nn, optim, reference  # noqa: E402
from lstmc.nn._engine import empty_cache  # noqa: E402
from lstmc import keras  # noqa: E402
from lstmc import callbacks, layers, losses, models, optimizers  # noqa: E402
from lstmc.io import load, save  # noqa: E402
from lstmc._quantize import quantize  # noqa: E402

__version__ = "0.1.0"
__all__ = ["nn", "optim", "reference", "keras", "layers", "models", "optimizers", "losses",
           "callbacks", "save", "load", "manual_seed", "openmp_enabled",
           "set_num_threads", "get_num_threads", "empty_cache", "quantize", "__version__"]


def __getattr__(name):
    """lstmc.onnx on first use: `import lstmc` stays as light as before (the onnx package
    itself is imported only when a model is loaded or exported)."""
    if name == "onnx":
        import lstmc.onnx
        return lstmc.onnx
    raise AttributeError(f"module 'lstmc' has no attribute {name!r}")
