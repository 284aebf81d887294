"""Argument checks shared by lstmc.nn's modules: each names the argument, the expected and the
actual value, before any C code runs."""
import operator

import numpy as np

from lstmc import _core
from lstmc.nn.module import to_numpy

SUPPORTED = "float32 or float64"


def dtype_of(dtype):
    dt = np.dtype(dtype)
    if dt not in _core.SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be {SUPPORTED}, got {dt}")
    return dt


def as_float(value, name, dtype):
    """`value` as a numpy array of `dtype`: other float dtypes are converted, everything else
    (ints, bools, complex, objects) is a TypeError."""
    arr = to_numpy(value)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array ({SUPPORTED}; other float "
                        f"dtypes are converted), got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def positive_int(value, name, minimum=1):
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def check_shape(arr, name, expected):
    if arr.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {arr.shape}")


def pair(value, names):
    """An optional (a, b) pair of arrays -> a, b (each may be None)."""
    if value is None:
        return None, None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"({names[0]}, {names[1]}) must be a pair of arrays or None")
    return value[0], value[1]
