"""Threads: lstmc runs one team of OpenMP threads per call, and the BLAS single-threaded
inside it.

lstmc's kernels share every matrix product among their own threads, each calling scipy's
BLAS (scipy.linalg.cython_blas) on its share. Two thread pools spinning on the same cores
cost several times the work, so at import lstmc hands the C side the thread-count getter and
setter of the OpenBLAS that scipy loaded: during each call it pins that BLAS to one thread and
then restores the user's setting. `set_num_threads(n)` sets the team size; without it,
OpenMP's default applies (OMP_NUM_THREADS is honoured).
"""
import ctypes
import operator
import os

from lstmc import _core

_blas_name = ""


def _register_blas_threads():
    """Finds scipy's OpenBLAS among the loaded libraries and gives C its thread API."""
    global _blas_name
    import scipy   # its BLAS is loaded already: lstmc._scipy_blas handed it to _core

    # scipy's wheel keeps its OpenBLAS in site-packages/scipy.libs (or a scipy_openblas*
    # package); numpy loads another copy from numpy.libs, which is not the one lstmc calls
    site = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
    ours = (os.path.join(site, "scipy"), os.path.join(site, "scipy_openblas"))
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower()})
    except OSError:
        return
    for path in (p for p in paths if p.startswith(ours)):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_", ""), ("scipy_", "64_"), ("", ""), ("", "64_")):
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                _core.set_blas_threads_api(ctypes.cast(get, ctypes.c_void_p).value,
                                           ctypes.cast(put, ctypes.c_void_p).value)
                _blas_name = path
                return


_register_blas_threads()


def set_num_threads(n):
    """Use `n` threads (n >= 1) in lstmc's kernels."""
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be an int, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads():
    """Threads lstmc's kernels use."""
    return _core.get_num_threads()


def blas_library():
    """Path of the BLAS whose threads lstmc pins during its calls ('' if none was found)."""
    return _blas_name
