"""lstmc.distributed.predict over Dask: the same outputs as model.predict / the module's
forward on the whole data, in order, for the Keras face and lstmc.nn modules (quantized
too), Dask arrays and bags (and the numpy arrays and lists wrapped into them) of odd sizes;
the given client, the default client and the LocalCluster predict makes; the errors; a
worker that dies mid-task.

One LocalCluster of two worker processes serves the module (about 1 s to start); the
default-LocalCluster and single-worker tests start their own. Every test has an alarm, so a
hung cluster fails the test instead of the run. The model classes below are pickled by
reference: the workers (spawned, with this process's sys.path) import this module.
"""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
distributed = pytest.importorskip("distributed")

import lstmc  # noqa: E402
from lstmc import nn  # noqa: E402
from lstmc.distributed import predict  # noqa: E402
from lstmc.layers import LSTM, Dense, Embedding  # noqa: E402
from lstmc.models import Sequential  # noqa: E402
from helpers import assert_close  # noqa: E402

TIMEOUT = 60   # seconds a test may take before it is called hung
# outputs of the same weights on batches made up differently: a few float32 ulps at most
RTOL, ATOL = 1e-5, 1e-6
VOCAB = 40


@pytest.fixture(autouse=True)
def alarm():
    def hung(signum, frame):
        raise TimeoutError(f"test still running after {TIMEOUT} s")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        yield c


# ---- models and data ---------------------------------------------------------------------
class Classifier(nn.Module):
    """Embedding -> LSTM -> Linear on the last state; forward takes `lengths` (padded at the
    end, as PyTorch pads)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.lstm = nn.LSTM(8, 6, batch_first=True)
        self.out = nn.Linear(6, 3)

    def forward(self, x, lengths=None):
        _, (h, _) = self.lstm(self.emb(x), lengths=lengths)
        return self.out(h[-1])


class DiesOnce(nn.Module):
    """An nn.LSTM whose first forward, in whichever worker runs it first, ends its process
    (os._exit): the file `marker`, created atomically, says it has happened."""

    def __init__(self, marker):
        super().__init__()
        self.marker = str(marker)
        self.lstm = nn.LSTM(3, 5, batch_first=True)

    def forward(self, x):
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return self.lstm(x)
        os._exit(1)


def keras_model(return_state=False):
    lstmc.manual_seed(1)
    model = Sequential([Embedding(VOCAB, 8, mask_zero=True),
                        LSTM(6, return_state=return_state)]
                       + ([] if return_state else [Dense(2, activation="softmax")]))
    model.build((None, 5))
    return model


def ids(rng, n, t):
    return rng.integers(1, VOCAB, (n, t))


def sequences(rng, n, max_len=9, min_len=1):
    return [rng.integers(1, VOCAB, rng.integers(min_len, max_len + 1)).tolist()
            for _ in range(n)]


def padded(seqs, padding):
    """The whole list padded with 0 to its longest sequence, as pad_sequences does, and the
    lengths: the reference the per-batch padding of predict must agree with."""
    lengths = np.array([len(s) for s in seqs])
    x = np.zeros((len(seqs), max(1, lengths.max())), dtype=np.int64)
    for row, s in zip(x, seqs):
        if s:
            if padding == "pre":
                row[-len(s):] = s
            else:
                row[:len(s)] = s
    return x, lengths


# ---- the Keras face ----------------------------------------------------------------------
@pytest.mark.parametrize("n, chunks, batch_size", [(1, 1, 256), (101, 37, 16),
                                                   (64, 64, 64), (50, 7, 3)])
def test_keras_model_over_a_dask_array(client, n, chunks, batch_size):
    model = keras_model()
    x = ids(np.random.default_rng(n), n, 5)
    got = predict(model, da.from_array(x, chunks=(chunks, 5)), client=client,
                  batch_size=batch_size)
    assert isinstance(got, np.ndarray)
    assert_close("predict", got, model.predict(x), RTOL, ATOL)


def test_an_array_chunked_along_time_is_joined_per_row(client):
    model = keras_model()
    x = ids(np.random.default_rng(0), 30, 5)
    got = predict(model, da.from_array(x, chunks=(11, 2)), client=client, batch_size=4)
    assert_close("predict", got, model.predict(x), RTOL, ATOL)


def test_order_over_many_uneven_parts(client):
    """53 blocks of 1 to 5 rows; rows differ, so a part out of place shows"""
    model = keras_model()
    x = ids(np.random.default_rng(3), 160, 5)
    sizes = [1, 5, 2, 4, 3] * 10 + [1, 4, 5]
    assert sum(sizes) == 160
    got = predict(model, da.from_array(x, chunks=(tuple(sizes), 5)), client=client,
                  batch_size=2)
    assert_close("predict", got, model.predict(x), RTOL, ATOL)


@pytest.mark.parametrize("n, npartitions, batch_size, min_len",
                         [(1, 1, 256, 1), (77, 5, 8, 1), (40, 3, 7, 0)])
def test_keras_model_over_a_bag_of_sequences(client, n, npartitions, batch_size, min_len):
    """pre-padded per batch to its longest sequence: the mask hides it, so the outputs are
    those of the whole list padded once (sequences of length 1, and 0 in the last case)"""
    model = keras_model()
    seqs = sequences(np.random.default_rng(n), n, min_len=min_len)
    got = predict(model, db.from_sequence(seqs, npartitions=npartitions), client=client,
                  batch_size=batch_size)
    assert got.shape == (n, 2)
    assert_close("predict", got, model.predict(padded(seqs, "pre")[0]), RTOL, ATOL)


def test_keras_model_returning_states_gives_a_tuple(client):
    model = keras_model(return_state=True)
    x = ids(np.random.default_rng(4), 23, 5)
    got = predict(model, x, client=client, batch_size=5)
    want = model.predict(x)
    assert isinstance(got, tuple) and len(got) == len(want) == 3
    for name, g, w in zip(("output", "h", "c"), got, want):
        assert_close(name, g, w, RTOL, ATOL)


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_quantized_keras_model(client, dtype):
    model = lstmc.quantize(keras_model(), dtype)
    x = ids(np.random.default_rng(5), 45, 5)
    got = predict(model, x, client=client, batch_size=8)
    assert_close("predict", got, model.predict(x), RTOL, ATOL)


# ---- lstmc.nn modules --------------------------------------------------------------------
@pytest.mark.parametrize("n, npartitions, batch_size", [(1, 1, 256), (61, 4, 9)])
def test_nn_module_taking_lengths_over_a_bag(client, n, npartitions, batch_size):
    """padded at the end, lengths passed: the outputs of the whole list padded once"""
    lstmc.manual_seed(2)
    model = Classifier()
    seqs = sequences(np.random.default_rng(n), n)
    got = predict(model, db.from_sequence(seqs, npartitions=npartitions), client=client,
                  batch_size=batch_size)
    x, lengths = padded(seqs, "post")
    assert_close("predict", got, model(x, lengths=lengths), RTOL, ATOL)


@pytest.mark.parametrize("batch_first", [True, False])
def test_bare_lstm_over_a_dask_array_gives_its_output(client, batch_first):
    """a tuple's first element; batch_first=False: run on (T, B, F), returned as (B, T, H)"""
    lstmc.manual_seed(3)
    model = nn.LSTM(3, 4, num_layers=2, batch_first=batch_first)
    x = np.random.default_rng(6).standard_normal((29, 6, 3)).astype(np.float32)
    got = predict(model, da.from_array(x, chunks=(10, 6, 3)), client=client, batch_size=4)
    want = model(x)[0] if batch_first else model(x.swapaxes(0, 1))[0].swapaxes(0, 1)
    assert_close("predict", got, want, RTOL, ATOL)


def test_nn_module_in_training_mode_runs_in_eval_mode_and_stays_as_it_was(client):
    lstmc.manual_seed(4)
    model = nn.LSTM(3, 4, num_layers=2, dropout=0.5, batch_first=True).train()
    x = np.random.default_rng(7).standard_normal((12, 4, 3)).astype(np.float32)
    got = predict(model, x, client=client, batch_size=5)
    assert model.training
    assert_close("predict", got, model.eval()(x)[0], RTOL, ATOL)


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_quantized_nn_module(client, dtype):
    lstmc.manual_seed(5)
    model = lstmc.quantize(Classifier(), dtype)
    seqs = sequences(np.random.default_rng(8), 30)
    got = predict(model, seqs, client=client, batch_size=7)
    x, lengths = padded(seqs, "post")
    assert_close("predict", got, model(x, lengths=lengths), RTOL, ATOL)


# ---- numpy arrays and lists --------------------------------------------------------------
def test_numpy_arrays_and_lists_are_wrapped(client):
    model = keras_model()
    x = ids(np.random.default_rng(9), 33, 5)
    want = model.predict(x)
    for data in (x, x.tolist(), tuple(map(tuple, x.tolist()))):
        assert_close(f"predict({type(data).__name__})",
                     predict(model, data, client=client, batch_size=4), want, RTOL, ATOL)
    # a list of sequences of different lengths is a bag; 1-D arrays as much as lists
    seqs = sequences(np.random.default_rng(10), 21)
    want = model.predict(padded(seqs, "pre")[0])
    for data in (seqs, [np.array(s) for s in seqs]):
        assert_close("predict(ragged list)",
                     predict(model, data, client=client, batch_size=4), want, RTOL, ATOL)


# ---- clients -----------------------------------------------------------------------------
def test_a_given_client_is_left_open(client):
    predict(keras_model(), ids(np.random.default_rng(0), 3, 5), client=client)
    assert client.status == "running"
    assert len(client.nthreads()) == 2


def test_none_uses_the_default_client(client, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("predict made a cluster although a default client exists")
    monkeypatch.setattr(distributed, "LocalCluster", refuse)
    model = keras_model()
    x = ids(np.random.default_rng(11), 9, 5)
    with client.as_current():
        got = predict(model, x, batch_size=4)
    assert_close("predict", got, model.predict(x), RTOL, ATOL)


def test_none_without_a_client_makes_a_local_cluster_and_closes_it(monkeypatch,
                                                                   restore_threads):
    """one process per lstmc thread (one here, to start fast), one thread each"""
    made = []

    class Recorded(distributed.LocalCluster):
        def __init__(self, *args, **kwargs):
            made.append((self, kwargs))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(distributed, "LocalCluster", Recorded)
    with pytest.raises(ValueError):
        distributed.default_client()   # no client of this process is the default one
    lstmc.set_num_threads(1)
    model = keras_model()
    x = ids(np.random.default_rng(12), 17, 5)
    got = predict(model, x, batch_size=4)
    assert_close("predict", got, model.predict(x), RTOL, ATOL)
    assert len(made) == 1
    cluster, kwargs = made[0]
    assert kwargs["n_workers"] == 1 and kwargs["threads_per_worker"] == 1
    assert kwargs["processes"] is True
    assert cluster.status.name == "closed"


def test_workers_run_lstmc_on_their_share_of_the_machine(client):
    """two single-threaded workers on this host: one lstmc thread each (lowered if need be)"""
    client.run(lstmc.set_num_threads, 2)
    predict(keras_model(), ids(np.random.default_rng(0), 40, 5), client=client,
            batch_size=4)
    cpus = lstmc._threads.default_num_threads({})[0]
    threads = client.run(lstmc.get_num_threads)
    # the workers that ran a part are at their share; one that ran none may be still at 2
    assert min(threads.values()) == max(1, cpus // 2), threads


def test_workers_in_the_calling_process_keep_its_thread_count(restore_threads):
    lstmc.set_num_threads(2)
    model = keras_model()
    x = ids(np.random.default_rng(15), 20, 5)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        got = predict(model, x, client=c, batch_size=3)
    assert lstmc.get_num_threads() == 2
    assert_close("predict", got, model.predict(x), RTOL, ATOL)


# ---- errors ------------------------------------------------------------------------------
def test_bad_models_are_refused(client):
    x = ids(np.random.default_rng(0), 3, 5)
    with pytest.raises(TypeError, match="model must be an lstmc.models.Sequential"):
        predict(lambda x: x, x, client=client)
    with pytest.raises(TypeError, match="Keras-face layer .*Sequential"):
        predict(Dense(2), x, client=client)
    with pytest.raises(ValueError, match="not built"):
        predict(Sequential([Embedding(VOCAB, 4), LSTM(3)]), x, client=client)
    with pytest.raises(TypeError, match="bag of token ids.*Embedding"):
        predict(nn.LSTM(3, 4), [[1, 2], [3]], client=client)
    with pytest.raises(TypeError, match="bag of token ids.*Embedding"):
        predict(nn.GRU(3, 4, batch_first=True), [[1, 2], [3]], client=client)


def test_onnx_sessions_are_refused(client, tmp_path):
    pytest.importorskip("onnx")
    lstmc.onnx.export(nn.LSTM(3, 4), str(tmp_path / "m.onnx"))
    session = lstmc.onnx.load(str(tmp_path / "m.onnx"))
    with pytest.raises(TypeError, match="lstmc.onnx Session"):
        predict(session, np.zeros((2, 4, 3), np.float32), client=client)


@pytest.mark.parametrize("data, error, match", [
    ([], ValueError, "no samples"),
    (np.zeros((0, 5), np.int64), ValueError, r"no samples \(shape \(0, 5\)\)"),
    (np.int64(3), TypeError, "data must be a dask array"),
    (np.array(3), ValueError, "sample axis"),
    (np.array([[1, 2], [3]], dtype=object), ValueError, "dtype object"),
    (np.array([["a", "b"]]), TypeError, "numbers .* dtype <U1"),
    ({1: [1, 2]}, TypeError, "data must be a dask array.* got dict"),
    ("some text", TypeError, "got str"),
])
def test_bad_data_is_refused(client, data, error, match):
    with pytest.raises(error, match=match):
        predict(keras_model(), data, client=client)


def test_bad_dask_collections_are_refused(client):
    model = keras_model()
    with pytest.raises(ValueError, match="no samples"):
        predict(model, da.zeros((0, 5), dtype=np.int64, chunks=2), client=client)
    with pytest.raises(ValueError, match="no samples"):
        predict(model, db.from_sequence([[1]], npartitions=1).filter(lambda s: False),
                client=client)
    with pytest.raises(TypeError, match="holds float64 values: token ids must be integers"):
        predict(model, [[1, 2], [0.5]], client=client)
    with pytest.raises(TypeError, match="sequence 1 of bag partition 0 holds float64"):
        predict(model, db.from_sequence([[1, 2], [1.0]], npartitions=1), client=client)
    with pytest.raises(ValueError, match="sequence 0 of bag partition 0 must be a sequence"
                                         ".* got int"):
        predict(model, db.from_sequence([3, 4], npartitions=1), client=client)
    with pytest.raises(ValueError, match=r"1-D token ids, got shape \(1, 2\)"):
        predict(model, db.from_sequence([[[1, 2]], [3]], npartitions=1), client=client)


def test_outputs_per_time_step_of_different_lengths_are_refused(client):
    lstmc.manual_seed(6)
    model = Sequential([Embedding(VOCAB, 4, mask_zero=True), LSTM(3, return_sequences=True)])
    model.build((None, 5))
    with pytest.raises(ValueError, match="differ in shape past the sample axis"):
        predict(model, [[1], [2, 3, 4]], client=client, batch_size=1)


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-3, ValueError),
                                               (1.5, TypeError), (True, TypeError),
                                               (None, TypeError), ("8", TypeError)])
def test_bad_batch_sizes_are_refused(client, batch_size, error):
    with pytest.raises(error, match="batch_size must be a positive int"):
        predict(keras_model(), [[1, 2]], client=client, batch_size=batch_size)


def test_a_bad_client_is_refused():
    with pytest.raises(TypeError, match="client must be a distributed.Client or None, got str"):
        predict(keras_model(), [[1, 2]], client="tcp://127.0.0.1:8786")


def test_importing_lstmc_distributed_does_not_import_dask():
    code = ("import sys, lstmc, lstmc.distributed; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('dask', 'distributed')))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=TIMEOUT, check=True).stdout
    assert out.strip() == "[]"


def test_without_dask_predict_names_the_extra(monkeypatch):
    for name in ("dask", "dask.array", "dask.bag", "distributed"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r'pip install "lstmc\[dask\]"'):
        predict(keras_model(), [[1, 2]])


# ---- a worker that dies ------------------------------------------------------------------
def test_a_worker_that_dies_is_retried(client, tmp_path):
    """the part whose worker died runs again (on the other worker or the restarted one);
    every part comes back, in order"""
    lstmc.manual_seed(7)
    model = DiesOnce(tmp_path / "died")
    x = np.random.default_rng(13).standard_normal((40, 4, 3)).astype(np.float32)
    got = predict(model, da.from_array(x, chunks=(6, 4, 3)), client=client, batch_size=4)
    assert (tmp_path / "died").exists()
    assert_close("predict", got, model.lstm(x)[0], RTOL, ATOL)


def test_the_only_worker_dying_loses_nothing(tmp_path):
    """the model is a task of the graph, not scattered data: when the one worker holding it
    dies, Dask runs that task again on the restarted worker"""
    lstmc.manual_seed(8)
    model = DiesOnce(tmp_path / "died")
    x = np.random.default_rng(14).standard_normal((9, 4, 3)).astype(np.float32)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        got = predict(model, x, client=c, batch_size=2)
    assert (tmp_path / "died").exists()
    assert_close("predict", got, model.lstm(x)[0], RTOL, ATOL)


def test_functional_model_of_one_input(client):
    """A functional Model (two outputs: the classes and the LSTM's last state) over a bag:
    a tuple of arrays in order, as its predict returns; a Model of two inputs is refused."""
    from lstmc.layers import Input
    from lstmc.models import Model
    lstmc.manual_seed(2)
    src = Input(shape=(None,), dtype="int32")
    h = LSTM(6)(Embedding(VOCAB, 8, mask_zero=True)(src))
    model = Model(src, [Dense(3, activation="softmax")(h), h])
    seqs = sequences(np.random.default_rng(5), 23)
    got = predict(model, db.from_sequence(seqs, npartitions=3), client=client, batch_size=4)
    want = model.predict(padded(seqs, "pre")[0])
    assert isinstance(got, tuple) and len(got) == 2
    for g, w in zip(got, want):
        assert_close("predict", g, w, RTOL, ATOL)
    other = Input(shape=(None,), dtype="int32")
    two = Model([src, other], Dense(2)(h))
    with pytest.raises(TypeError, match="functional Model of 2 inputs"):
        predict(two, np.zeros((3, 4), np.int64), client=client)
