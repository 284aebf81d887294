"""Threads: lstmc runs one team of OpenMP threads per call, and the BLAS single-threaded
inside it.

lstmc's kernels share every matrix product among their own threads, each calling scipy's
BLAS (scipy.linalg.cython_blas) on its share. Two thread pools spinning on the same cores
cost several times the work, so at import lstmc hands the C side the thread-count getter and
setter of the OpenBLAS that scipy loaded: during each call it pins that BLAS to one thread and
then restores the user's setting. `set_num_threads(n)` sets the team size; without it,
OpenMP's default applies (OMP_NUM_THREADS is honoured).

A child made by fork (multiprocessing's "fork" start method, gunicorn's pre-fork workers,
os.fork) runs lstmc serially: GNU OpenMP keeps its thread pool in memory the child copies
without the threads behind it, so a parallel region opened in the child after the parent
has run one waits forever for them. A team of one opens no parallel region at all, so the
child computes the serial answer and never hangs; `set_num_threads(n > 1)` there warns and
stays at one thread. "spawn" starts each child as a fresh interpreter, which uses threads as
usual: choose it when the workers themselves need lstmc's threads. "forkserver" forks its
children from a server process started fresh; they run serially when that server imported
lstmc (`set_forkserver_preload(["lstmc"])`), else as fresh interpreters.
"""
import ctypes
import operator
import os
import warnings

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

_forked = False   # this process is a forked child: lstmc stays serial (see the docstring)


def _serial_after_fork():
    global _forked
    _forked = True
    _core.set_num_threads(1)


os.register_at_fork(after_in_child=_serial_after_fork)


def set_num_threads(n):
    """Use `n` threads (n >= 1) in lstmc's kernels.

    In a forked child lstmc runs serially whatever `n` is (a RuntimeWarning says so when
    n > 1): GNU OpenMP may hang there in any parallel region (see the module docstring)."""
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be an int, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if _forked and n > 1:
        warnings.warn(f"lstmc.set_num_threads({n}) in a forked child: lstmc stays on one "
                      "thread, since OpenMP may hang in a child forked after its parent ran "
                      "threads; start workers with multiprocessing's 'spawn' to use threads "
                      "in them", RuntimeWarning, stacklevel=2)
        n = 1
    _core.set_num_threads(n)


def get_num_threads():
    """Threads lstmc's kernels use."""
    return _core.get_num_threads()


def blas_library():
    """Path of the BLAS whose threads lstmc pins during its calls ('' if none was found)."""
    return _blas_name
