"""lstmc runs the ONNX files it writes: lstmc.onnx.export, then lstmc.onnx.load, against the
model itself and ONNX Runtime on the same file (the exporter's masks use CumSum, Max,
GatherElements, GreaterOrEqual, ...: every operator it emits must be one the executor has)."""
import itertools

import numpy as np
import pytest

import lstmc
from lstmc.layers import GRU, LSTM, Bidirectional, Dense, Embedding, SimpleRNN
from lstmc.models import Sequential

pytest.importorskip("onnx")
import lstmc.onnx  # noqa: E402

RECURRENT = {"lstm": LSTM, "gru": GRU, "rnn": SimpleRNN,
             "gru_rb": lambda *a, **k: GRU(*a, reset_after=False, **k)}


def _ids(rng, mask):
    ids = rng.integers(1, 30, size=(6, 12))
    if mask:   # padded at the front, the back, the middle, and one row of padding only
        ids[:, :3] = 0
        ids[1, 8:] = 0
        ids[2, 5] = 0
        ids[3] = 0
    return ids


def _check(path, feed, expected):
    sess = lstmc.onnx.load(path)
    got = sess.run(None, feed)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    np.testing.assert_allclose(got, theirs[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell,mask,return_sequences,go_backwards,merge", [
    c for c in itertools.product(RECURRENT, [False, True], [False, True], [False, True],
                                 [None, "concat", "sum", "mul", "ave"])
    if not (c[4] and c[3])])   # Bidirectional takes a forward layer
def test_keras_face_files(tmp_path, cell, mask, return_sequences, go_backwards, merge):
    lstmc.manual_seed(7)
    R = RECURRENT[cell]
    rnn = R(5, return_sequences=return_sequences, go_backwards=go_backwards)
    if merge:
        rnn = Bidirectional(R(5, return_sequences=return_sequences), merge_mode=merge)
    model = Sequential([Embedding(30, 8, mask_zero=mask), rnn, Dense(3)])
    model.build((None, 12))
    ids = _ids(np.random.default_rng(7), mask)
    lstmc.onnx.export(model, tmp_path / "m.onnx")
    name = lstmc.onnx.load(tmp_path / "m.onnx").get_inputs()[0].name
    _check(tmp_path / "m.onnx", {name: ids}, model.predict(ids, verbose=0))


@pytest.mark.parametrize("cls", [lstmc.nn.LSTM, lstmc.nn.GRU, lstmc.nn.RNN])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_nn_files_with_lengths(tmp_path, cls, bidirectional):
    lstmc.manual_seed(8)
    m = cls(4, 6, num_layers=2, bidirectional=bidirectional)
    lstmc.onnx.export(m, tmp_path / "m.onnx", lengths=True)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((9, 5, 4)).astype(np.float32)
    lengths = np.array([9, 3, 1, 7, 5])
    names = [a.name for a in lstmc.onnx.load(tmp_path / "m.onnx").get_inputs()]
    feed = dict(zip(names, (x, lengths.astype(np.int32))))
    _check(tmp_path / "m.onnx", feed, m(x, lengths=lengths)[0])
