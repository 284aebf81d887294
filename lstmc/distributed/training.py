"""Data-parallel training on the PyTorch face, as Horovod and PyTorch's DDP do it: every rank
holds the whole model, trains on its share of each global batch, and the gradients are
averaged over the ranks before every optimizer step, so every rank takes the same step and
the models stay identical without ever being sent again.

`DistributedOptimizer` wraps an lstmc.optim optimizer; `DistributedSampler` gives each rank
its share of a dataset's indices; `save_checkpoint` / `load_checkpoint` keep and restore a
whole job (model, optimizer, sampler position, every rank's random generators) so that a
resumed run continues exactly as an uninterrupted one would.
"""
import math
import numbers

import numpy as np

from lstmc import _random, io
from lstmc.distributed import mpi
from lstmc.optim import Optimizer

__all__ = ["DistributedOptimizer", "DistributedSampler", "save_checkpoint", "load_checkpoint"]


class DistributedOptimizer(Optimizer):
    """`optimizer` whose `step()` first averages the gradients over the ranks (one
    all-reduce per module's gradient buffer), like horovod.torch.DistributedOptimizer.

    Everything else (param_groups, state, zero_grad, state_dict, learning-rate schedulers)
    is the wrapped optimizer's. To clip the gradient norm as one process on the whole batch
    would, average first: call `synchronize()`, clip, then `step()` (which then does not
    average again).

    The gradients are averaged, so each rank's loss should be the mean over its own share
    of the batch, with equal shares (DistributedSampler gives them); the learning rate that
    suited one process at batch B suits N ranks at a global batch N * B only after the usual
    scaling (see docs/distributed.md).

    It wraps a Keras-face optimizer too, for Horovod's recipe: `model.compile(
    DistributedOptimizer(lstmc.optimizers.Adam()), ...)`, each rank fitting its own shard
    with BroadcastGlobalVariablesCallback and MetricAverageCallback. (`fit(...,
    distributed=True)` shares the data out itself and takes the plain optimizer.)"""

    def __init__(self, optimizer):   # not Optimizer.__init__: the wrapped one holds the state
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"DistributedOptimizer wraps an lstmc optimizer, got "
                            f"{type(optimizer).__name__}")
        if isinstance(optimizer, DistributedOptimizer):
            raise TypeError("the optimizer is already a DistributedOptimizer")
        mpi.init()
        self.__dict__["wrapped"] = optimizer
        self.__dict__["_synchronized"] = False

    # the wrapped optimizer's attributes, read and written through
    def __getattr__(self, name):
        return getattr(self.__dict__["wrapped"], name)

    def __setattr__(self, name, value):
        setattr(self.wrapped, name, value)

    def __repr__(self):
        return f"DistributedOptimizer({self.wrapped!r})"

    def _params(self):
        return [p for g in self.wrapped.param_groups for p in g["params"]]

    def synchronize(self):
        """Averages the gradients over the ranks now (step() then skips it)."""
        mpi.allreduce_gradients(self._params())
        self.__dict__["_synchronized"] = True

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        if not self._synchronized:
            mpi.allreduce_gradients(self._params())
        self.__dict__["_synchronized"] = False
        self.wrapped.step()
        return loss

    def zero_grad(self, set_to_none=False):
        self.wrapped.zero_grad(set_to_none)

    def state_dict(self):
        return self.wrapped.state_dict()

    def load_state_dict(self, state_dict):
        self.wrapped.load_state_dict(state_dict)

    def add_param_group(self, param_group):
        self.wrapped.add_param_group(param_group)


class DistributedSampler:
    """The indices of a dataset of `n` samples that this rank trains on, after
    torch.utils.data.DistributedSampler: each epoch the indices are shuffled (a generator
    seeded with seed + epoch, the same on every rank) and rank r takes every
    `num_replicas`-th of them from position r, so the ranks' shares are disjoint and of
    equal size. When `n` does not divide evenly, the shares are padded with indices from the
    start of the epoch's order (each rank then sees len(self) samples), or, with drop_last,
    the tail is dropped.

    Call `set_epoch(e)` before each epoch, or every epoch repeats the first one's order.
    Iterate over the sampler for indices, or over `batches(b)` for arrays of b of them; the
    sampler counts what it handed out, and `state_dict()` / `load_state_dict()` carry that
    position, so a run resumed from a checkpoint continues the epoch where it stopped."""

    def __init__(self, n, shuffle=True, seed=0, drop_last=False, num_replicas=None,
                 rank=None):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"n must be a non-negative int (the number of samples), got {n!r}")
        self.n = int(n)
        self.num_replicas = mpi.size() if num_replicas is None else int(num_replicas)
        self.rank = mpi.rank() if rank is None else int(rank)
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {self.num_replicas}")
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must be in 0 .. {self.num_replicas - 1}, got {self.rank}")
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        if drop_last:
            self.num_samples = self.n // self.num_replicas
        else:
            self.num_samples = math.ceil(self.n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self.epoch = 0
        self.position = 0        # indices handed out in this epoch
        self._resume_at = 0

    def set_epoch(self, epoch):
        """Selects the epoch's order. A position loaded from a checkpoint for this same
        epoch is kept; any other epoch starts at its beginning."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self._resume_at = 0
        self.epoch = epoch

    def indices(self):
        """This rank's indices for the current epoch (all of them, int64)."""
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.total_size > self.n:     # pad with the start of the order, repeated
            order = np.resize(order, self.total_size) if self.n else order
        else:
            order = order[:self.total_size]
        return order[self.rank:self.total_size:self.num_replicas].astype(np.int64)

    def __len__(self):
        return self.num_samples

    def __iter__(self):
        for batch in self.batches(1):
            yield int(batch[0])

    def batches(self, batch_size):
        """This rank's indices in arrays of `batch_size` (the last one may be shorter),
        from the position a checkpoint left (else from the start of the epoch)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        mine = self.indices()
        start, self._resume_at = self._resume_at, 0
        self.position = start
        for at in range(start, len(mine), batch_size):
            self.position = min(at + batch_size, len(mine))
            yield mine[at:at + batch_size]

    def state_dict(self):
        return {"n": self.n, "num_replicas": self.num_replicas, "seed": self.seed,
                "shuffle": self.shuffle, "drop_last": self.drop_last, "epoch": self.epoch,
                "position": self.position}

    def load_state_dict(self, state):
        for key in ("n", "num_replicas", "seed", "shuffle", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(f"the sampler state was saved with {key}={state[key]!r}, "
                                 f"this sampler has {key}={getattr(self, key)!r}")
        self.epoch = int(state["epoch"])
        self.position = self._resume_at = int(state["position"])


# ---- checkpoints -------------------------------------------------------------------------
_CHECKPOINT = "lstmc.distributed.checkpoint"


def _generators(rngs):
    rngs = list(rngs)
    for g in rngs:
        if not isinstance(g, np.random.Generator):
            raise TypeError(f"rngs takes numpy.random.Generator objects, got "
                            f"{type(g).__name__}")
    return [_random.generator()] + rngs


def save_checkpoint(path, model, optimizer=None, sampler=None, rngs=(), **extra):
    """Writes the job's state to `path` (rank 0 writes; every rank must call it): the model's
    and optimizer's state (the same on every rank), the sampler's position, and every rank's
    random generators (lstmc's own, for dropout and shuffling, and the numpy Generators in
    `rngs`). `extra` holds anything lstmc.save takes (epoch, step, ...). Atomic: a job that
    dies while saving leaves the previous checkpoint intact."""
    mpi.init()
    states = mpi.allgather_object([g.bit_generator.state for g in _generators(rngs)])
    if mpi.rank() == 0:
        opt = optimizer.state_dict() if optimizer is not None else None
        io.save({"kind": _CHECKPOINT, "world_size": mpi.size(),
                 "model": dict(model.state_dict()), "optimizer": opt,
                 "sampler": sampler.state_dict() if sampler is not None else None,
                 "rngs": states,
                 "extra": extra}, path)
    mpi.barrier()   # the file exists for everyone once save_checkpoint returns


def load_checkpoint(path, model, optimizer=None, sampler=None, rngs=()):
    """Restores what save_checkpoint wrote into `model`, `optimizer`, `sampler` and the
    generators (lstmc's and `rngs`, in the order they were saved) and returns the `extra`
    dict. Rank 0 reads the file and sends it to the others, so it need only exist on rank
    0's host. The job must have as many ranks as the one that saved it."""
    mpi.init()
    generators = _generators(rngs)
    tree = error = None
    if mpi.rank() == 0:
        try:
            tree = io.load(path)
            if not isinstance(tree, dict) or tree.get("kind") != _CHECKPOINT:
                raise io.FormatError(f"{path}: not a checkpoint of lstmc.distributed."
                                     "save_checkpoint")
        except (OSError, io.FormatError) as e:
            error = e
    tree, error = mpi.broadcast_object((tree, error), root=0)
    if error is not None:
        raise error
    if tree["world_size"] != mpi.size():
        raise ValueError(f"{path} was saved by a job of {tree['world_size']} ranks; this job "
                         f"has {mpi.size()} (each rank's random generators are in it)")
    mine = tree["rngs"][mpi.rank()]
    if len(mine) != len(generators):
        raise ValueError(f"{path} holds {len(mine) - 1} generators besides lstmc's; "
                         f"load_checkpoint got {len(generators) - 1} in rngs")
    model.load_state_dict(tree["model"])
    if optimizer is not None:
        if tree["optimizer"] is None:
            raise ValueError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(tree["optimizer"])
    if sampler is not None:
        if tree["sampler"] is None:
            raise ValueError(f"{path} holds no sampler state")
        sampler.load_state_dict(tree["sampler"])
    for g, state in zip(generators, mine):
        g.bit_generator.state = state
    return dict(tree["extra"])



# ---- the Keras face: Sequential.fit(distributed=True) -----------------------------------
class DataParallel:
    """What a Keras-face model's fit(distributed=True) asks of the job
    (lstmc.keras.models). `x`: the samples (an array: an unbuilt Sequential is built for
    them), `n`: their number (default len(x); a functional Model's x is a list)."""

    def __init__(self, model, x, n=None):
        mpi.init()
        self.model = model
        self.rank, self.size = mpi.rank(), mpi.size()
        if isinstance(model.optimizer, DistributedOptimizer):
            raise ValueError("fit(distributed=True) shares the data out and sums the "
                             "gradients itself: compile the model with the optimizer the "
                             "DistributedOptimizer wraps")
        mpi._agree((len(x) if n is None else n,), "fit(distributed=True): the number of "
                   "samples")
        if not model.built:
            model.build((None,) + tuple(np.shape(x)[1:]))

    def start(self):
        """Rank 0's weights and optimizer state on every rank."""
        self.model._ensure_optimizer()
        mpi.broadcast_parameters(self.model, root=0)
        mpi.broadcast_optimizer_state(self.model.optimizer, root=0)

    def order(self, order):
        """Rank 0's shuffled order of the samples."""
        return mpi.broadcast(order, root=0)

    def share(self, idx):
        """This rank's contiguous share of a batch's indices (sizes differ by at most one)."""
        return np.array_split(idx, self.size)[self.rank]

    def total(self, count):
        """The sum of `count` over the ranks."""
        return int(mpi.sum_in_place(np.array([count], dtype=np.int64))[0])

    def gradients(self, params):
        """The ranks' gradients summed: each rank's loss was already divided by the whole
        batch's count."""
        mpi.allreduce_gradients(params, scale=1.0)

    def sum_totals(self, totals, names):
        """A _Totals with the sums and counts of `names` summed over the ranks (in one
        all-reduce)."""
        values = np.array([[totals.sums.get(n, 0.0), totals.counts.get(n, 0)] for n in names],
                          dtype=np.float64)
        mpi.sum_in_place(values)
        out = type(totals)()
        for n, (s, c) in zip(names, values):
            out.add(n, float(s), int(c))
        return out
