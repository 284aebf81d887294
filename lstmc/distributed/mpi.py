"""The MPI side of lstmc.distributed: the job, its collectives, and the broadcasts of a model
and an optimizer (mpi4py + MPICH from PyPI: `pip install "lstmc[mpi]"`).

mpi4py is imported by `init()` (every function here calls it), never by `import lstmc`.
Started without `mpiexec`, a process is a job of one (MPI's singleton start): every call
works and the collectives return their input, so the same script runs alone or under
`mpiexec -n N`.

A job must fail as a whole: a rank that raised and exited would leave the others waiting
in their next collective forever. `init()` therefore replaces sys.excepthook (when the job
has more than one rank) with one that prints the traceback and calls MPI_Abort, which ends
every rank with a non-zero status within a second; a rank killed by a signal makes
mpiexec end the others the same way.
"""
import os
import sys
import time

import numpy as np

from lstmc import _threads
from lstmc.nn.module import Module

__all__ = ["init", "is_initialized", "rank", "size", "local_rank", "local_size", "barrier",
           "allreduce", "broadcast", "broadcast_object", "allgather_object",
           "broadcast_parameters", "broadcast_optimizer_state", "allreduce_gradients",
           "sum_in_place", "started_by_mpiexec"]

_MPI = None          # mpi4py.MPI once init() ran
_world = None        # COMM_WORLD
_local = None        # the ranks of this host (MPI_COMM_TYPE_SHARED)
_OPS = ("average", "sum", "min", "max")


def init():
    """Joins the MPI job (idempotent): imports mpi4py, finds the ranks on this host, makes an
    uncaught exception end the whole job (see the module docstring) and shares this host's
    CPUs among its ranks: unless `lstmc.set_num_threads` or OMP_NUM_THREADS chose a thread
    count, each rank takes its share of the CPUs the process may use (at least one)."""
    global _MPI, _world, _local
    if _MPI is not None:
        return
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError('lstmc.distributed needs mpi4py and an MPI library: '
                          'pip install "lstmc[mpi]" (mpi4py and the mpich wheel)') from e
    _world = MPI.COMM_WORLD
    _local = _world.Split_type(MPI.COMM_TYPE_SHARED, key=_world.rank)
    _MPI = MPI
    if _world.size > 1:
        sys.excepthook = _abort_on_exception(sys.excepthook)
    if _threads.num_threads_source() not in ("lstmc.set_num_threads", "OMP_NUM_THREADS"):
        _threads.share_among(_local.size)


def _abort_on_exception(previous):
    def hook(kind, value, tb):
        previous(kind, value, tb)
        sys.stderr.write(f"lstmc.distributed: rank {_world.rank} of {_world.size} raised "
                         f"{kind.__name__}; aborting the whole job\n")
        sys.stderr.flush()
        sys.stdout.flush()
        # mpiexec forwards a rank's output from a pipe: the abort tears that down, so
        # give it a moment to carry the traceback (without it, parts were lost)
        time.sleep(0.5)
        _world.Abort(1)
    hook.lstmc_previous = previous
    return hook


def is_initialized():
    return _MPI is not None


def rank():
    """This process's rank in the job, 0 .. size() - 1."""
    init()
    return _world.rank


def size():
    """The number of ranks in the job (1 without mpiexec)."""
    init()
    return _world.size


def local_rank():
    """This process's rank among the ranks on its host."""
    init()
    return _local.rank


def local_size():
    """The number of ranks on this host."""
    init()
    return _local.size


def barrier():
    """Returns when every rank has called it."""
    init()
    _world.Barrier()


# ---- arrays ------------------------------------------------------------------------------
def _numeric(array, what):
    a = np.asarray(array)
    if a.dtype.kind not in "biufc":
        raise TypeError(f"{what} takes numeric arrays, got dtype {a.dtype}")
    return a


def _agree(signature, what):
    """Every rank's `signature` (ints, at most _SIGNATURE long) is the same, or every rank
    raises: one small all-reduce of the padded signature and its negation (their maxima
    are the maximum and minus the minimum over the ranks)."""
    sig = np.full(_SIGNATURE, -1, dtype=np.int64)
    sig[:len(signature)] = signature
    both = np.concatenate([sig, -sig])
    _world.Allreduce(_MPI.IN_PLACE, both, op=_MPI.MAX)
    if not np.array_equal(both[:_SIGNATURE], -both[_SIGNATURE:]):
        raise ValueError(f"{what}: the ranks passed arrays of different shapes or dtypes "
                         f"(this rank: shape {tuple(signature[1:-2])}, dtype code "
                         f"{signature[-2]})")


_SIGNATURE = 3 + 64   # ndim, the shape (numpy allows up to 64 dimensions), dtype


def allreduce(array, op="average"):
    """The element-wise sum ("sum"), mean ("average"), minimum or maximum of `array` over
    the ranks, as a new array (the input is not changed). Every rank passes an array of
    the same shape and dtype (checked: a ValueError on every rank otherwise). An integer or
    bool "average" is float64, a bool "sum" int64 (a count), a bool "min" / "max" all / any."""
    init()
    if op not in _OPS:
        raise ValueError(f"op must be one of {_OPS}, got {op!r}")
    a = _numeric(array, "allreduce")
    _agree((a.ndim, *a.shape, a.dtype.num, a.dtype.itemsize), "allreduce")
    out = np.array(a, copy=True, order="C")
    if out.dtype == np.bool_:
        out = out.astype(np.int64)
    if op == "average" and out.dtype.kind in "iu":
        out = out.astype(np.float64)
    mpi_op = {"average": _MPI.SUM, "sum": _MPI.SUM, "min": _MPI.MIN, "max": _MPI.MAX}[op]
    _world.Allreduce(_MPI.IN_PLACE, out, op=mpi_op)
    if op == "average":
        out /= _world.size
    if a.dtype == np.bool_ and op in ("min", "max"):
        out = out.astype(np.bool_)
    return out


def sum_in_place(a):
    """Sums the contiguous numeric array `a` over the ranks, in place and unchecked: for
    callers whose ranks pass the same shapes by construction (the training loops)."""
    init()
    if _world.size > 1:
        _world.Allreduce(_MPI.IN_PLACE, a, op=_MPI.SUM)
    return a


def broadcast(array, root=0):
    """The root's `array` on every rank, as a new array; the other ranks' argument is not
    read (pass the same-shaped array as Horovod's broadcast takes, or None)."""
    init()
    _check_root(root)
    header = None
    if _world.rank == root:
        a = np.ascontiguousarray(_numeric(array, "broadcast"))
        header = (a.shape, a.dtype.str)
    shape, dtype = _world.bcast(header, root=root)
    out = a.copy() if _world.rank == root else np.empty(shape, dtype=dtype)
    _world.Bcast(out, root=root)
    return out


def broadcast_object(obj, root=0):
    """The root's `obj` (anything pickle takes) on every rank."""
    init()
    _check_root(root)
    return _world.bcast(obj, root=root)


def allgather_object(obj):
    """A list with every rank's `obj`, in rank order, on every rank."""
    init()
    return _world.allgather(obj)


def _check_root(root):
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) \
            or not 0 <= root < _world.size:
        raise ValueError(f"root must be a rank in 0 .. {_world.size - 1}, got {root!r}")


# ---- models and optimizers ---------------------------------------------------------------
def _buffers(arrays):
    """The flat buffers behind `arrays` (each module keeps its parameters, and their
    gradients, as views of one flat buffer): a list of (buffer, start, stop) spans covering
    every array, one per buffer, in first-seen order, and the arrays that are not such views
    (fused into one temporary buffer by the callers)."""
    spans, loose = {}, []
    for a in arrays:
        base = a.base
        if base is None or not isinstance(base, np.ndarray) or base.ndim != 1 \
                or not base.flags.c_contiguous or not a.flags.c_contiguous \
                or base.dtype != a.dtype:
            loose.append(a)
            continue
        start = (a.__array_interface__["data"][0] - base.__array_interface__["data"][0]) \
            // a.itemsize
        stop = start + a.size
        span = spans.get(id(base))
        spans[id(base)] = (base, start, stop) if span is None \
            else (base, min(span[1], start), max(span[2], stop))
    return list(spans.values()), loose


def _parameters(model, what):
    if not isinstance(model, Module):
        raise TypeError(f"{what} takes an lstmc model (an lstmc.nn module or an "
                        f"lstmc.models model), got {type(model).__name__}")
    params = [p for _, p in model.named_parameters()]
    if any(p._quantized is not None for p in params):
        raise ValueError(f"{what}: the model is quantized; broadcast the float model and "
                         "quantize it on each rank")
    return model.named_parameters()


def broadcast_parameters(model, root=0):
    """Copies the root's parameter values into `model` on every rank (every rank's model
    has the same architecture: checked, a ValueError on every rank otherwise). Call it
    once before training, so every rank starts from the same weights; one broadcast per
    module's flat buffer."""
    init()
    _check_root(root)
    named = list(_parameters(model, "broadcast_parameters"))
    signature = [(name, p.data.shape, p.data.dtype.str) for name, p in named]
    theirs = _world.bcast(signature if _world.rank == root else None, root=root)
    ok = np.array([theirs == signature], dtype=np.int32)
    _world.Allreduce(_MPI.IN_PLACE, ok, op=_MPI.MIN)
    if not ok[0]:
        where = next((f"at parameter {a[0]!r}: {a[1]} {a[2]} here, {b[1]} {b[2]} on rank "
                      f"{root}" for a, b in zip(signature, theirs) if a != b),
                     f"{len(signature)} parameters here, {len(theirs)} on rank {root}")
        raise ValueError(f"broadcast_parameters: the ranks' models differ ({where}); every "
                         "rank must build the same model" if theirs != signature else
                         "broadcast_parameters: another rank's model differs from rank "
                         f"{root}'s; every rank must build the same model")
    for _, p in named:
        p.release()   # before writing: see lstmc.nn._engine.PackedWeights
    spans, loose = _buffers([p.data for _, p in named])
    for base, start, stop in spans:
        _world.Bcast(base[start:stop], root=root)
    for a in loose:
        tmp = np.ascontiguousarray(a)
        _world.Bcast(tmp, root=root)
        a[...] = tmp


def broadcast_optimizer_state(optimizer, root=0):
    """Loads the root's optimizer state (its state_dict: moments, step counts, learning
    rates) into `optimizer` on every rank; for a run that resumes from a checkpoint only
    the root has read."""
    init()
    _check_root(root)
    if not hasattr(optimizer, "state_dict") or not hasattr(optimizer, "load_state_dict"):
        raise TypeError("broadcast_optimizer_state takes an lstmc optimizer, got "
                        f"{type(optimizer).__name__}")
    state = _world.bcast(optimizer.state_dict() if _world.rank == root else None, root=root)
    if _world.rank != root:
        optimizer.load_state_dict(state)


def allreduce_gradients(params, scale=None):
    """Sums the gradients of `params` over the ranks in place, then multiplies them by
    `scale` (default 1 / size(): the average). One all-reduce per flat gradient buffer
    (one per module), plus one for any gradients that are not views of such a buffer,
    fused into one temporary buffer as Horovod's fusion buffer does."""
    init()
    scale = 1.0 / _world.size if scale is None else float(scale)
    grads = [p.grad for p in params if p.grad is not None]
    spans, loose = _buffers(grads)
    for base, start, stop in spans:
        part = base[start:stop]
        if _world.size > 1:
            _world.Allreduce(_MPI.IN_PLACE, part, op=_MPI.SUM)
        if scale != 1.0:
            part *= part.dtype.type(scale)
    by_dtype = {}
    for g in loose:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        fused = np.concatenate([g.ravel() for g in group])
        if _world.size > 1:
            _world.Allreduce(_MPI.IN_PLACE, fused, op=_MPI.SUM)
        if scale != 1.0:
            fused *= fused.dtype.type(scale)
        at = 0
        for g in group:
            g[...] = fused[at:at + g.size].reshape(g.shape)
            at += g.size


def started_by_mpiexec():
    """Whether mpiexec started this process (MPICH's PMI_RANK, Open MPI's
    OMPI_COMM_WORLD_RANK, PMIx's PMIX_RANK), read without importing MPI."""
    return any(name in os.environ for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"))
