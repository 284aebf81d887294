"""lstmc past one machine: batch inference over Dask (`predict`, lstmc[dask])."""
from lstmc.distributed.dask_predict import predict
