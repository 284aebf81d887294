"""lstmc: a Cython/C CPU engine for recurrent neural networks.

C kernels (csrc/) do the per-timestep work with BLAS and OpenMP; one Cython module
(lstmc._core) is the boundary; `lstmc.nn` offers PyTorch-style modules on top, with
PyTorch's parameter names and shapes, and `lstmc.optim` PyTorch's optimizers and learning-rate
schedulers; `lstmc.models` / `lstmc.layers` (with `optimizers`, `losses`, `callbacks`)
are the Keras flavour on the same engine. `lstmc.reference` is the float64 NumPy spec.
`lstmc.save` / `lstmc.load` keep checkpoints (nested dicts of arrays) in lstmc's one file
format (`lstmc.io`).
"""
from lstmc._core import openmp_enabled
from lstmc._random import manual_seed
from lstmc._threads import get_num_threads, set_num_threads
from lstmc import nn, optim, reference
from lstmc import callbacks, layers, losses, models, optimizers
from lstmc.io import load, save

__version__ = "0.1.0"
__all__ = ["nn", "optim", "reference", "layers", "models", "optimizers", "losses",
           "callbacks", "save", "load", "manual_seed", "openmp_enabled",
           "set_num_threads", "get_num_threads", "__version__"]
