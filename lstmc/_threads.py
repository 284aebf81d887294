"""Threads: lstmc runs one team of OpenMP threads per call, and the BLAS single-threaded
inside it.

lstmc's kernels share every matrix product among their own threads, each calling scipy's
BLAS (scipy.linalg.cython_blas) on its share. Two thread pools spinning on the same cores
cost several times the work, so at import lstmc hands the C side the thread-count getter and
setter of the OpenBLAS that scipy loaded: during each call it pins that BLAS to one thread and
then restores the user's setting.

The team size, first rule that applies (`num_threads_source()` names it; `python -m lstmc
info` prints both):
1. `set_num_threads(n)`;
2. OMP_NUM_THREADS at import (its first number);
3. the process's share of the machine: the CPUs of its affinity mask
   (`os.sched_getaffinity`, e.g. `taskset`, a container's cpuset) and its cgroup's CPU quota
   (a container's `--cpus`: cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`,
   of the process's cgroup and its ancestors; ceil(quota / period)), whichever is smaller.
   A team larger than the CPUs the process may use waits, every time step, for a thread that
   is not running;
4. os.cpu_count().
In a rank of an MPI job (lstmc.distributed.init), rules 3-4's count is divided among the
job's ranks on this host, at least one thread each.

`set_num_threads(n)` also sets numpy's own BLAS (the one numpy.matmul calls: lstmc.nn.Linear,
the Keras Dense layer) to n threads: through threadpoolctl when it is installed (every BLAS it
finds, whatever the vendor), else through the openblas_set_num_threads of the OpenBLAS that
numpy's wheel ships. With neither (say, an MKL numpy without threadpoolctl), numpy's BLAS
keeps its own count (MKL_NUM_THREADS / OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, else all
cores). `import lstmc` alone leaves numpy's BLAS as it is.

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
import math
import operator
import os
import warnings

from lstmc import _core

_blas_name = ""


def _loaded_openblas(*dirs):
    """(path, get, set) of the first loaded OpenBLAS under one of `dirs` that exports its
    thread API, else None."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower()})
    except OSError:
        return None
    for path in (p for p in paths if p.startswith(dirs)):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_", ""), ("scipy_", "64_"), ("", ""), ("", "64_")):
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                return path, get, put
    return None


def _site_of(module):
    return os.path.dirname(os.path.dirname(os.path.abspath(module.__file__)))


def _register_blas_threads():
    """Finds scipy's OpenBLAS among the loaded libraries and gives C its thread API."""
    global _blas_name
    import scipy   # its BLAS is loaded already: lstmc._scipy_blas handed it to _core

    # scipy's wheel keeps its OpenBLAS in site-packages/scipy.libs (or a scipy_openblas*
    # package); numpy loads another copy from numpy.libs, which is not the one lstmc calls
    site = _site_of(scipy)
    found = _loaded_openblas(os.path.join(site, "scipy"), os.path.join(site, "scipy_openblas"))
    if found is not None:
        path, get, put = found
        _core.set_blas_threads_api(ctypes.cast(get, ctypes.c_void_p).value,
                                   ctypes.cast(put, ctypes.c_void_p).value)
        _blas_name = path


def _limit_numpy_blas(n):
    """numpy's BLAS to `n` threads (see the module docstring); returns how, '' if it could
    not."""
    try:
        import threadpoolctl
    except ImportError:
        threadpoolctl = None
    if threadpoolctl is not None:
        threadpoolctl.threadpool_limits(n, user_api="blas")
        return "threadpoolctl"
    import numpy
    found = _loaded_openblas(os.path.join(_site_of(numpy), "numpy"))   # numpy/, numpy.libs/
    if found is None:
        return ""
    found[2](ctypes.c_int(n))
    return found[0]


_register_blas_threads()

# ---- the default team: the process's share of the machine --------------------------------

def affinity_cpus():
    """CPUs in the process's affinity mask, None where the system does not say."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _own_and_ancestors(mount, rel):
    """The cgroup directory `rel` under `mount`, then its parents up to `mount`, those that
    exist (inside a container's cgroup namespace the mount is the container's own cgroup)."""
    parts = [p for p in rel.split("/") if p]
    for k in range(len(parts), -1, -1):
        d = os.path.join(mount, *parts[:k])
        if os.path.isdir(d):
            yield d


def _quota_in(d, v2):
    """(quota, period, its label) of cgroup directory `d`, None without a quota."""
    if v2:
        fields = (_read(os.path.join(d, "cpu.max")) or "").split()
        if len(fields) != 2 or fields[0] == "max":
            return None
        quota, period = fields
        label = f"cgroup cpu.max {quota} {period}"
    else:
        quota = _read(os.path.join(d, "cpu.cfs_quota_us"))
        period = _read(os.path.join(d, "cpu.cfs_period_us"))
        if quota is None or period is None:
            return None
        label = f"cgroup cpu.cfs_quota_us {quota} cpu.cfs_period_us {period}"
    try:
        quota, period = int(quota), int(period)
    except ValueError:
        return None
    return (quota, period, label) if quota > 0 and period > 0 else None   # v1: -1, none


def cgroup_cpu_limit(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """(CPUs, label) the cgroup CPU quota allows the process: ceil(quota / period), at least
    1, the smallest over its cgroup and their ancestors; None without a quota."""
    text = _read(proc_cgroup)
    if not text:
        return None
    limits = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":   # cgroup v2 (its own mount, or "unified" beside v1's)
            v2 = True
            mounts = [root, os.path.join(root, "unified")]
            mounts = [m for m in mounts if os.path.exists(os.path.join(m, "cgroup.controllers"))]
        elif "cpu" in controllers.split(","):
            v2 = False
            mounts = [os.path.join(root, name) for name in (controllers, "cpu", "cpu,cpuacct")]
            mounts = [m for m in mounts if os.path.isdir(m)]
        else:
            continue
        for d in _own_and_ancestors(mounts[0], rel) if mounts else ():
            found = _quota_in(d, v2)
            if found is not None:
                quota, period, label = found
                limits.append((max(1, math.ceil(quota / period)), label))
    return min(limits, key=lambda x: x[0]) if limits else None


def _omp_num_threads(environ):
    """OMP_NUM_THREADS' first number (libgomp takes "4" or a nested list "4,2"), None when
    unset or not a positive integer."""
    value = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def default_num_threads(environ=os.environ):
    """(threads, where the number came from) when set_num_threads was not called: rules 2-4
    of the module docstring."""
    n = _omp_num_threads(environ)
    if n is not None:
        return n, "OMP_NUM_THREADS"
    share = []
    cpus = affinity_cpus()
    if cpus is not None:
        share.append((cpus, "CPU affinity mask"))
    quota = cgroup_cpu_limit()
    if quota is not None:
        share.append(quota)
    if share:
        return min(share, key=lambda x: x[0])   # the first of equals: the affinity mask
    return os.cpu_count() or 1, "os.cpu_count()"


_default, _source = default_num_threads()
_core.set_num_threads(_default)
_forked = False   # this process is a forked child: lstmc stays serial (see the docstring)


def _serial_after_fork():
    global _forked, _source
    _forked = True
    _source = "forked child: serial"
    _core.set_num_threads(1)


os.register_at_fork(after_in_child=_serial_after_fork)


def share_among(processes):
    """Rule 3 or 4's count divided among `processes` processes of one job on this host
    (lstmc.distributed.init: the ranks of an MPI job on one host), at least one each; for
    a process where set_num_threads and OMP_NUM_THREADS chose nothing."""
    global _source
    if _forked or processes <= 1:
        return
    n, source = default_num_threads()
    n, _source = max(1, n // processes), f"{source} shared by {processes} local ranks"
    _core.set_num_threads(n)
    _limit_numpy_blas(n)


def num_threads_source():
    """Where get_num_threads' number came from: "lstmc.set_num_threads", "OMP_NUM_THREADS",
    "CPU affinity mask", a cgroup quota ("cgroup cpu.max 100000 100000"), "os.cpu_count()"
    or "forked child: serial"."""
    return _source


def set_num_threads(n):
    """Use `n` threads (n >= 1) in lstmc's kernels.

    In a forked child lstmc runs serially whatever `n` is (a RuntimeWarning says so when
    n > 1): GNU OpenMP may hang there in any parallel region (see the module docstring)."""
    global _source
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
    else:
        _source = "lstmc.set_num_threads"
    _core.set_num_threads(n)
    _limit_numpy_blas(n)


def get_num_threads():
    """Threads lstmc's kernels use."""
    return _core.get_num_threads()


def blas_library():
    """Path of the BLAS whose threads lstmc pins during its calls ('' if none was found)."""
    return _blas_name
