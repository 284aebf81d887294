"""Batch inference over Dask: `predict(model, data, client=None, batch_size=256)`.

The client plans, the workers run, the client joins:
1. plan (client): how a worker calls the model (`_Call`: the Keras face's predict, or an
   lstmc.nn module in eval mode, with or without `lengths=`), which parts the data falls
   into (the blocks of a Dask array, the partitions of a bag; a numpy array or a list is
   wrapped into one first) and each worker's share of its machine's CPUs (`_ThreadShare`);
2. ship the model: one task of the graph holds it; a worker fetches it once, from a worker
   that holds it, and keeps it for all its parts. When the last worker holding it dies, Dask
   runs the task again; a scattered model (client.scatter, even with broadcast=True) would
   be lost with that worker, and every part with it (on a one-worker LocalCluster: "Removing
   worker ... caused the cluster to lose scattered data, which can't be recovered");
3. run (workers): one task per part, each predicting its part batch by batch (a bag's
   batches padded as Keras' pad_sequences pads);
4. join (client): the parts' outputs, gathered in the order of the parts, concatenated into
   one array in sample order, as `model.predict` returns it.

Dask is imported by `predict` only: `import lstmc` and `import lstmc.distributed` never
import it.
"""
import inspect
import math
import os
import sys
import threading
import uuid
import warnings
from typing import NamedTuple

import numpy as np

INSTALL = 'pip install "lstmc[dask]"'


def predict(model, data, client=None, batch_size=256):
    """The model's outputs for every sample of `data`, computed on a Dask cluster.

    Parameters
    ----------
    model : lstmc.models.Sequential or Model, lstmc.nn.Module, or lstmc.quantize's copy of one
        A Keras-face model runs `model.predict(x, batch_size)`; a Sequential must be built
        (called, fitted or given an input shape), so that every worker runs the same
        weights; a functional Model must have one input (its outputs come back as predict
        returns them: an array, or a tuple of arrays for several). An
        lstmc.nn module is called in eval mode on a batch with the samples on axis 0
        (batch-first); when it returns a tuple, as nn.LSTM returns `(output, (h_n, c_n))`,
        its first element is the output (the states carry the batch on axis 1). A bare
        nn.LSTM / GRU / RNN built with batch_first=False gets the batch as (T, B, F) and
        its output is turned back to (B, T, .). Dask pickles a class of your own by
        reference: the workers must be able to import its module (a class defined in the
        script you run, `__main__`, travels by value).
    data : dask.array.Array, dask.bag.Bag, numpy.ndarray, list or tuple
        - a Dask array (N, ...) of numbers, samples along axis 0: each block of rows is one
          task, predicted in batches of `batch_size`;
        - a Dask bag of token id sequences (lists, tuples or 1-D arrays of ints, of any
          length, 0 included): each partition is one task; each batch of `batch_size`
          sequences is padded with 0 to its longest sequence, at the front as Keras'
          pad_sequences pads (an `Embedding(mask_zero=True)` masks it), or, for an nn
          module whose forward takes `lengths`, at the end with `lengths=` the sequences'
          lengths (int64, (B,)), as PyTorch pads. A model that neither masks nor takes
          lengths sees the zeros: its output for a sequence depends on the longest in its
          batch, so pad such data to one length yourself and pass an array;
        - a numpy array: as a Dask array; a list or tuple: as a Dask array when numpy makes
          one array of it, else (sequences of different lengths) as a bag. Either is split
          into about four parts per Dask thread, each a multiple of `batch_size` rows.
    client : distributed.Client or None
        The cluster to run on; it is left open. None: the default client (the last
        `Client()` made in this process) if there is one, else a `LocalCluster` made for
        this call and closed after it: one process per thread lstmc may use here
        (`lstmc.get_num_threads()`), one thread each. Its workers are started by spawn,
        which imports the script you run again: call predict under
        `if __name__ == "__main__":`.
    batch_size : int >= 1, default 256
        Samples per model call.

    Returns
    -------
    numpy.ndarray (N, ...): the outputs of all samples in the order of `data` (the outputs of
    the parts joined on the client, as `model.predict` returns them). For a Keras-face model
    whose predict returns a tuple (a last layer with return_state), a tuple of such arrays.

    Each worker process fetches the model once a call. A worker that dies (killed, out of memory)
    costs only its unfinished parts: Dask runs them again on the other workers or on the one
    its nanny restarts (up to `distributed.scheduler.allowed-failures` times a part, 3 by
    default; then `distributed.KilledWorker`). Inside a worker, lstmc runs at most its share
    of the machine's CPUs per Dask thread (the CPUs it may use divided by the Dask threads of
    the workers on its host): one thread per process when several single-threaded workers
    share a machine. predict lowers lstmc's thread count in the worker processes when it is
    higher than that share and never raises it (Dask's nanny starts workers with
    OMP_NUM_THREADS=1: give a lone worker more with `client.run(lstmc.set_num_threads, n)`).
    Workers that are threads of the calling process keep its setting.

    Raises
    ------
    ImportError
        dask or distributed is not installed (`pip install "lstmc[dask]"`).
    TypeError
        `model` is not one of the models above; `data` is not one of the collections above
        or holds something else than numbers (a bag: than integer ids); `batch_size` is
        not an int; `client` is not a distributed.Client.
    ValueError
        `data` holds no samples; a ragged numpy array (dtype object); a bag element that is
        not a 1-D sequence; `batch_size` < 1; a Keras-face model not built; outputs whose
        shapes past the sample axis differ between batches (a model with one output per
        time step, on a bag of sequences of different lengths).
    """
    da, db, distributed = _import_dask()
    call = _call_for(model)
    batch_size = _positive_int(batch_size, "batch_size")
    data = _checked(data, da, db)
    if data.bag and call.bare_rnn:
        raise TypeError("data is a bag of token ids, which a bare nn.LSTM / GRU / RNN does "
                        "not take (it takes feature vectors): put an Embedding before it")
    if client is not None and not isinstance(client, distributed.Client):
        raise TypeError(f"client must be a distributed.Client or None, got "
                        f"{type(client).__name__}")
    if client is None:
        try:
            client = distributed.default_client()
        except ValueError:   # no client in this process: a cluster for this call only
            import lstmc
            # ":0": its HTTP server (dashboard, /health) on a free port, not 8787
            with distributed.LocalCluster(n_workers=lstmc.get_num_threads(),
                                          threads_per_worker=1, processes=True,
                                          dashboard_address=":0") as cluster, \
                    distributed.Client(cluster, set_as_default=False) as own:
                return _predict_on(own, model, data, call, batch_size, da, db)
    return _predict_on(client, model, data, call, batch_size, da, db)


def _import_dask():
    try:
        import dask.array as da
        import dask.bag as db
        import distributed
    except ImportError as e:
        raise ImportError(f"lstmc.distributed.predict needs dask and distributed ({e}); "
                          f"install them with: {INSTALL}") from e
    return da, db, distributed


# ---- the plan ---------------------------------------------------------------------------
class _Call(NamedTuple):
    """How a worker runs the model on one batch; decided once, on the client."""
    keras: bool           # model.predict(x, batch_size); else model(x) in eval mode
    takes_lengths: bool   # an nn module whose forward has `lengths`: bags padded at the end
    bare_rnn: bool        # an nn.LSTM / GRU / RNN itself: it takes features, not token ids
    time_major: bool      # ... built with batch_first=False

    @property
    def padding(self):
        return "post" if self.takes_lengths else "pre"


class _ThreadShare(NamedTuple):
    """What a worker needs to find its share of its machine (see `_use_thread_share`)."""
    caller_pid: int                # workers in this process keep the caller's setting
    threads_on_host: dict          # host -> Dask threads of all its workers


class _Data(NamedTuple):
    """The data, checked: a Dask bag (or a list of sequences to wrap into one) or a Dask
    array (or a numpy array to wrap into one)."""
    bag: bool
    collection: object


def _call_for(model):
    from lstmc.keras.layers import Layer
    from lstmc.keras.models import Model, Sequential
    from lstmc.nn.module import Module
    from lstmc.nn.rnn import _RNNBase
    if isinstance(model, Model):
        if len(model.inputs) != 1:
            raise TypeError(f"model is a functional Model of {len(model.inputs)} inputs: "
                            "predict feeds one array or bag; run a Model of one input (its "
                            "encoder, say) or split the work yourself")
        return _Call(keras=True, takes_lengths=False, bare_rnn=False, time_major=False)
    if isinstance(model, Sequential):
        if not model.built:
            raise ValueError("model (a Keras-face Sequential) is not built: call it, fit it "
                             "or give its first layer an input_shape first, so that every "
                             "worker runs the same weights")
        return _Call(keras=True, takes_lengths=False, bare_rnn=False, time_major=False)
    if isinstance(model, Layer):
        raise TypeError(f"model is a Keras-face layer ({type(model).__name__}): put it in an "
                        "lstmc.models.Sequential")
    if isinstance(model, Module):
        takes_lengths = "lengths" in inspect.signature(model.forward).parameters
        bare_rnn = isinstance(model, _RNNBase)
        return _Call(keras=False, takes_lengths=takes_lengths, bare_rnn=bare_rnn,
                     time_major=bare_rnn and not model.batch_first)
    session = sys.modules.get("lstmc.onnx._session")   # imported once lstmc.onnx is used
    if session is not None and isinstance(model, session.Session):
        raise TypeError("model is an lstmc.onnx Session, which predict does not run (which "
                        "axis of its inputs holds the samples depends on the graph): pass "
                        "the lstmc model it came from, or lstmc.quantize's copy of it")
    raise TypeError(f"model must be an lstmc.models.Sequential or Model, an lstmc.nn Module "
                    f"or lstmc.quantize's copy of one, got {type(model).__name__}")


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} "
                        f"{value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def _rows_per_part(n, dask_threads, batch_size):
    """About four parts per Dask thread (so that a slow or restarted worker does not hold
    up the end), each a multiple of batch_size samples."""
    batches = math.ceil(n / batch_size)
    return batch_size * max(1, math.ceil(batches / (4 * dask_threads)))


def _checked(data, da, db):
    """`data` checked, as `_Data`: a Dask array or bag, or a numpy array or list of
    sequences still to wrap (`_parts`, once the client says how many threads it has)."""
    if isinstance(data, (list, tuple)):
        if len(data) == 0:
            raise ValueError("data holds no samples (an empty list)")
        try:
            array = np.asarray(data)
        except ValueError:   # numpy >= 1.24: sequences of different lengths
            array = None
        if array is None or array.dtype == object:
            return _Data(bag=True, collection=list(data))
        data = array
    if isinstance(data, np.ndarray):
        if data.dtype == object:
            raise ValueError("data is a numpy array of dtype object (ragged sequences?): "
                             "pass sequences of token ids as a list or a dask bag")
        _check_numbers(data)
        return _Data(bag=False, collection=data)
    if isinstance(data, da.Array):
        _check_numbers(data)
        return _Data(bag=False, collection=data)
    if isinstance(data, db.Bag):
        return _Data(bag=True, collection=data)
    raise TypeError(f"data must be a dask array, a dask bag, a numpy array or a list, got "
                    f"{type(data).__name__}")


def _parts(data, dask_threads, batch_size, da, db):
    """One delayed object per part of `data` (a `_Data`), in sample order."""
    x = data.collection
    if isinstance(x, (np.ndarray, list)):
        rows = _rows_per_part(len(x), dask_threads, batch_size)
        x = db.from_sequence(x, partition_size=rows) if data.bag \
            else da.from_array(x, chunks=(rows,) + x.shape[1:])
    if data.bag:
        return x.to_delayed()
    if x.ndim > 1 and any(len(c) > 1 for c in x.chunks[1:]):
        x = x.rechunk({axis: -1 for axis in range(1, x.ndim)})
    return list(x.to_delayed().ravel())


def _check_numbers(array):
    if array.ndim == 0:
        raise ValueError("data must have a sample axis (axis 0), got a scalar")
    if array.dtype.kind not in "iuf":
        raise TypeError(f"data must hold numbers (int or float), got dtype {array.dtype}")
    if array.shape[0] == 0:
        raise ValueError(f"data holds no samples (shape {array.shape})")


def _thread_share(nthreads):
    """The `_ThreadShare` of the workers `nthreads` (address -> Dask threads) names."""
    from distributed.comm import get_address_host
    hosts = {}
    for address, n in nthreads.items():
        host = get_address_host(address)
        hosts[host] = hosts.get(host, 0) + n
    return _ThreadShare(caller_pid=os.getpid(), threads_on_host=hosts)


# ---- ship, run, join --------------------------------------------------------------------
def _predict_on(client, model, data, call, batch_size, da, db):
    from dask import delayed
    nthreads = client.nthreads()   # none yet (an adaptive cluster): the parts wait for some
    parts = _parts(data, max(1, sum(nthreads.values())), batch_size, da, db)
    share = _thread_share(nthreads)
    token = uuid.uuid4().hex
    with warnings.catch_warnings():
        # the graph holds the model once on purpose (the module docstring says why); Dask's
        # advice for a graph over 10 MB, to scatter it, would lose it with its last worker
        warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
        held = client.submit(_hold, model, call, key=f"lstmc-model-{token}", pure=False)
    run = delayed(_predict_bag_part if data.bag else _predict_array_part, pure=False)
    tasks = [run(held, part, i, call, batch_size, share,
                 dask_key_name=f"lstmc-predict-{token}-{i}")
             for i, part in enumerate(parts)]
    futures = client.compute(tasks)
    try:
        outputs = client.gather(futures)
    finally:
        client.cancel(futures + [held])
    outputs = [out for out in outputs if out is not None]
    if not outputs:
        raise ValueError("data holds no samples (every part is empty)")
    return _join(outputs, "parts")


def _hold(model, call):
    """The task that holds the model: the copy every worker fetches, in eval mode."""
    if not call.keras:
        model.eval()   # the worker's copy; the caller's model keeps its mode
    return model


def _predict_array_part(model, block, index, call, batch_size, share):
    """Outputs of one block (rows, ...) of a Dask array; None if it has no rows."""
    _use_thread_share(share)
    if len(block) == 0:
        return None
    if call.keras:
        return _outputs(model.predict(block, batch_size=batch_size), call)
    return _join([_run_batch(model, call, block[i:i + batch_size], None)
                  for i in range(0, len(block), batch_size)], f"batches of part {index}")


def _predict_bag_part(model, sequences, index, call, batch_size, share):
    """Outputs of one partition of a bag of token id sequences; None if it is empty."""
    _use_thread_share(share)
    sequences = [_token_ids(s, j, index) for j, s in enumerate(sequences)]
    if not sequences:
        return None
    outs = []
    for i in range(0, len(sequences), batch_size):
        x, lengths = _pad(sequences[i:i + batch_size], call.padding)
        outs.append(_run_batch(model, call, x, lengths if call.takes_lengths else None))
    return _join(outs, f"batches of partition {index}")


def _token_ids(sequence, j, index):
    where = f"data: sequence {j} of bag partition {index}"
    if not isinstance(sequence, (list, tuple, np.ndarray)):
        raise ValueError(f"{where} must be a sequence of token ids (a list, tuple or 1-D "
                         f"array of ints), got {type(sequence).__name__}")
    ids = np.asarray(sequence)
    if ids.ndim != 1:
        raise ValueError(f"{where} must be 1-D token ids, got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise TypeError(f"{where} holds {ids.dtype} values: token ids must be integers")
    return ids


def _pad(sequences, padding):
    """(x (B, T) int64, lengths (B,) int64): each sequence padded with 0 to the longest (T at
    least 1), at the front ("pre", Keras' pad_sequences) or at the end ("post")."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    x = np.zeros((len(sequences), max(1, int(lengths.max()))), dtype=np.int64)
    for row, ids, n in zip(x, sequences, lengths):
        if n:
            if padding == "pre":
                row[-n:] = ids
            else:
                row[:n] = ids
    return x, lengths


def _run_batch(model, call, x, lengths):
    """The model's output for one batch (B, ...), as an array or (Keras face) a tuple."""
    if call.keras:
        return _outputs(model.predict(x, batch_size=len(x)), call)
    if call.time_major:
        x = np.swapaxes(x, 0, 1)
    out = model(x) if lengths is None else model(x, lengths=lengths)
    return _outputs(out, call)


def _outputs(out, call):
    """An nn module's output (the first element of a tuple) or the Keras face's (an array,
    or a tuple of arrays for a last layer with return_state), with samples on axis 0."""
    if call.keras:
        return tuple(np.asarray(o) for o in out) if isinstance(out, (tuple, list)) \
            else np.asarray(out)
    if isinstance(out, (tuple, list)):
        out = out[0]
    out = np.asarray(out)
    return np.swapaxes(out, 0, 1) if call.time_major else out


def _join(outs, what):
    """Concatenates outputs along the sample axis (each an array, or each a tuple of them)."""
    if isinstance(outs[0], tuple):
        return tuple(_join([o[k] for o in outs], what) for k in range(len(outs[0])))
    shapes = {o.shape[1:] for o in outs}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise ValueError(f"the model's outputs differ in shape past the sample axis between "
                         f"{what} ((N,) + {a} and (N,) + {b}): a model with one output per "
                         "time step, run on a bag of sequences of different lengths? Pad "
                         "the sequences to one length and pass an array")
    return np.concatenate(outs)


def _use_thread_share(share):
    """Lowers lstmc's thread count in this worker process to its share of the machine:
    the CPUs the process may use (its affinity mask / cgroup quota, OMP_NUM_THREADS
    aside) divided by the Dask threads of the workers on its host."""
    if os.getpid() == share.caller_pid:
        return
    import lstmc
    from distributed import get_worker
    from distributed.comm import get_address_host
    from lstmc._threads import default_num_threads
    worker = get_worker()
    threads = share.threads_on_host.get(get_address_host(worker.address),
                                        worker.state.nthreads)   # a worker that joined later
    n = max(1, default_num_threads({})[0] // max(1, threads))
    with _share_lock:   # the parts a worker runs at once: one of them lowers it, once
        if n < lstmc.get_num_threads():
            lstmc.set_num_threads(n)


_share_lock = threading.Lock()
