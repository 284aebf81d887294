"""lstmc past one machine: data-parallel training over MPI, batch inference over Dask.

Training scales out as Horovod and PyTorch's DDP do: run the same script under
`mpiexec -n N`; every rank holds the model, trains on its share of each global batch, and
the gradients are averaged over the ranks before each step (one all-reduce per module's
flat gradient buffer). See docs/distributed.md.

    import lstmc.distributed as dist
    dist.init()                                         # rank(), size(), local_rank()
    dist.broadcast_parameters(model, root=0)            # the same start on every rank
    opt = dist.DistributedOptimizer(lstmc.optim.Adam(model.parameters()))
    sampler = dist.DistributedSampler(n, shuffle=True, seed=0)
    model.fit(x, y, batch_size=64, distributed=True)    # the Keras face: 64 is the global batch

The MPI part needs `pip install "lstmc[mpi]"` (mpi4py and the mpich wheel, which brings
mpiexec); batch inference (`predict`) needs `pip install "lstmc[dask]"`. Neither is imported
by `import lstmc` or `import lstmc.distributed`: mpi4py by `init()`, dask by `predict`.
"""
from lstmc.distributed.callbacks import (BroadcastGlobalVariablesCallback,
                                         LearningRateWarmupCallback, MetricAverageCallback)
from lstmc.distributed.mpi import (allgather_object, allreduce, allreduce_gradients, barrier,
                                   broadcast, broadcast_object, broadcast_optimizer_state,
                                   broadcast_parameters, init, is_initialized, local_rank,
                                   local_size, rank, size, started_by_mpiexec, sum_in_place)
from lstmc.distributed.training import (DistributedOptimizer, DistributedSampler,
                                        load_checkpoint, save_checkpoint)

__all__ = ["init", "is_initialized", "rank", "size", "local_rank", "local_size", "barrier",
           "allreduce", "broadcast", "broadcast_object", "allgather_object",
           "broadcast_parameters", "broadcast_optimizer_state", "allreduce_gradients",
           "sum_in_place", "started_by_mpiexec", "DistributedOptimizer", "DistributedSampler", "save_checkpoint", "load_checkpoint",
           "BroadcastGlobalVariablesCallback", "MetricAverageCallback",
           "LearningRateWarmupCallback", "predict"]


def __getattr__(name):
    if name == "predict":
        from lstmc.distributed.dask_predict import predict
        return predict
    raise AttributeError(f"module 'lstmc.distributed' has no attribute {name!r}")
