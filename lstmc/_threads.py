"""Thread count: one knob for lstmc's OpenMP passes and for the BLAS behind scipy.

lstmc's kernels call the BLAS that scipy ships (through scipy.linalg.cython_blas) from the
calling thread, outside any OpenMP region, so the two never nest. `set_num_threads(n)` sets
both. Without a call, OpenMP's default applies (OMP_NUM_THREADS is honoured), and scipy's
OpenBLAS reads the same variable when it loads.
"""
import ctypes
import operator

from lstmc import _core

_blas_setter = None
_blas_name = None


def _find_blas_setter():
    """The `set_num_threads` of the OpenBLAS that scipy loaded, or None (another BLAS, or
    a platform without /proc)."""
    global _blas_setter, _blas_name
    if _blas_name is not None:
        return _blas_setter
    _blas_name = ""
    import os

    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (makes sure scipy's BLAS is loaded)

    # scipy's wheel keeps its OpenBLAS in site-packages/scipy.libs (or a scipy_openblas*
    # package); numpy loads another copy from numpy.libs, which is not the one lstmc calls
    site = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
    ours = (os.path.join(site, "scipy"), os.path.join(site, "scipy_openblas"))

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return None
    for path in [p for p in paths if p.startswith(ours)]:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                       "openblas_set_num_threads", "openblas_set_num_threads64_"):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], None
                _blas_setter, _blas_name = fn, path
                return fn
    return None


def set_num_threads(n):
    """Use `n` threads (n >= 1) in lstmc's kernels and in scipy's BLAS."""
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _core.set_num_threads(n)
    setter = _find_blas_setter()
    if setter is not None:
        setter(n)


def get_num_threads():
    """Threads lstmc's kernels use."""
    return _core.get_num_threads()


def blas_library():
    """Path of the BLAS library whose threads lstmc controls ('' if none was found)."""
    _find_blas_setter()
    return _blas_name
