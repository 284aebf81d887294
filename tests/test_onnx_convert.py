"""`python -m lstmc convert model.onnx model.lstmc` (lstmc/convert.py, lstmc/onnx/_convert.py):
each kind of file converts, the .lstmc loads back and computes what the ONNX file computes
(lstmc.onnx.load's session and ONNX Runtime, within 1e-5 relative, on random inputs), graphs
that are not a chain of lstmc's layers are refused naming the node, and damaged files raise
clear errors."""
import os

import numpy as np
import pytest

from helpers import assert_close

os.environ.setdefault("KERAS_BACKEND", "torch")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lstmc  # noqa: E402
import lstmc.onnx as lo  # noqa: E402
from lstmc import layers as K  # noqa: E402
from lstmc.__main__ import main  # noqa: E402
from lstmc.convert import convert  # noqa: E402
from lstmc.io import UnsupportedModelError  # noqa: E402
from lstmc.models import Sequential, load_model  # noqa: E402
from test_onnx_load import tagger, torch_export, torch_export_dynamo  # noqa: E402

RTOL = 1e-5


def _ort():
    return pytest.importorskip("onnxruntime")


def _random_feed(sess, rng, sizes, ids_high):
    """Random arrays for the session's inputs: symbolic dims from `sizes` (in order of first
    appearance), token ids in [1, ids_high) with some padding zeros."""
    feeds, seen = {}, {}
    for arg in sess.get_inputs():
        shape = []
        for d in arg.shape:
            if isinstance(d, int):
                shape.append(d)
            else:
                seen.setdefault(d, sizes[len(seen)])
                shape.append(seen[d])
        if arg.dtype.kind in "iu":
            ids = rng.integers(1, ids_high, size=shape)
            ids[rng.random(shape) < 0.25] = 0
            feeds[arg.name] = ids.astype(arg.dtype)
        else:
            feeds[arg.name] = rng.standard_normal(shape).astype(arg.dtype)
    return feeds


def convert_and_check(tmp_path, source, time_major=False, ids_high=None, sizes=(4, 9),
                      expect_notes=()):
    """Writes `source` (ModelProto or bytes) to a file, converts it with the CLI, loads the
    .lstmc back and checks it against lstmc.onnx.load's session and ONNX Runtime on random
    inputs; returns the loaded model."""
    data = source if isinstance(source, bytes) else source.SerializeToString()
    src, dst = tmp_path / "m.onnx", tmp_path / "m.lstmc"
    src.write_bytes(data)
    notes = convert(src, dst)
    for expected in expect_notes:
        assert any(expected in n for n in notes), (expected, notes)
    if not time_major:
        assert not any("time-major" in n for n in notes), notes
    model = load_model(dst)
    sess = lo.load(data)
    out_name = sess.get_outputs()[0].name
    ort = _ort()
    ort_sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)
    for trial_sizes in (sizes, sizes[::-1]):
        feeds = _random_feed(sess, rng, trial_sizes, ids_high or 2)
        x = feeds[sess.get_inputs()[0].name]
        got = model.predict(np.swapaxes(x, 0, 1) if time_major else x, verbose=0)
        if time_major and got.ndim >= 3:
            got = np.swapaxes(got, 0, 1)
        want = sess.run([out_name], feeds)[0]
        assert got.shape == want.shape
        assert_close("converted vs lstmc.onnx session", got, want, RTOL, RTOL)
        assert_close("converted vs ONNX Runtime", got, ort_sess.run([out_name], feeds)[0],
                     RTOL, RTOL)
    return model


# ---- lstmc's own exports --------------------------------------------------------------------
@pytest.mark.parametrize("cls,kw", [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("GRU", dict(batch_first=True, reset_after=False)),
    ("RNN", dict(nonlinearity="relu", num_layers=2)),
])
def test_lstmc_nn_module_export(tmp_path, cls, kw):
    lstmc.manual_seed(0)
    module = getattr(lstmc.nn, cls)(5, 6, **kw)
    proto = lo.export(module, tmp_path / "src.onnx")
    model = convert_and_check(tmp_path, proto, time_major=not kw.get("batch_first"))
    L, D = kw.get("num_layers", 1), 2 if kw.get("bidirectional") else 1
    assert len(model.layers) == L
    assert all(isinstance(k, K.Bidirectional if D == 2 else getattr(
        K, {"RNN": "SimpleRNN"}.get(cls, cls))) for k in model.layers)


def test_lstmc_nn_sequential_export(tmp_path):
    from lstmc import nn
    lstmc.manual_seed(1)
    seq = nn.Sequential(nn.Embedding(30, 6), nn.LSTM(6, 8, batch_first=True, bidirectional=True),
                        nn.Dropout(0.5), nn.Linear(16, 4), nn.Tanh())
    proto = lo.export(seq, tmp_path / "src.onnx")
    model = convert_and_check(tmp_path, proto, ids_high=30)
    assert [type(k).__name__ for k in model.layers] == ["Embedding", "Bidirectional", "Dense"]
    assert model.layers[-1].activation == "tanh"


def _keras_face_models():
    return {
        "masked_bilstm_lstm_backwards_softmax": lambda: [
            K.Embedding(40, 8, mask_zero=True), K.Bidirectional(K.LSTM(6, return_sequences=True)),
            K.LSTM(5, go_backwards=True), K.Dense(3, activation="softmax")],
        "merges_and_sequences": lambda: [
            K.Embedding(40, 8), K.Bidirectional(K.GRU(6, return_sequences=True),
                                                merge_mode="sum"),
            K.Bidirectional(K.SimpleRNN(4, return_sequences=True, activation="relu"),
                            merge_mode="ave"),
            K.Bidirectional(K.GRU(3, reset_after=False, return_sequences=True),
                            merge_mode="mul"),
            K.Dense(2, activation="sigmoid")],
        "last_states": lambda: [
            K.Embedding(40, 8, mask_zero=True), K.Bidirectional(K.LSTM(6, return_sequences=True)),
            K.Bidirectional(K.GRU(5)), K.Dense(1, activation="sigmoid")],
        "last_state_unidirectional": lambda: [
            K.Embedding(40, 8), K.SimpleRNN(5), K.Dropout(0.3), K.Dense(3)],
        "features_in": lambda: [K.LSTM(7, return_sequences=True, input_shape=(None, 5)),
                                K.Dense(4, activation="relu"), K.Dense(2, use_bias=False)],
    }


@pytest.mark.parametrize("name", list(_keras_face_models()))
def test_lstmc_keras_face_export(tmp_path, name):
    lstmc.manual_seed(2)
    layers = _keras_face_models()[name]()
    ours = Sequential(layers)
    if name != "features_in":
        ours.build((None, None))
    proto = lo.export(ours, tmp_path / "src.onnx")
    model = convert_and_check(tmp_path, proto, ids_high=40)
    kept = [k for k in layers if not isinstance(k, K.Dropout)]   # the identity in ONNX
    assert [type(k).__name__ for k in model.layers] == [type(k).__name__ for k in kept]
    for a, b in zip(model.layers, kept):
        for key in ("return_sequences", "go_backwards", "merge_mode", "mask_zero",
                    "activation", "reset_after"):
            assert getattr(a, key, None) == getattr(b, key, None), (a.name, key)


def test_keras_file_exported_by_lstmc(tmp_path):
    """A Keras 3 model's .keras file -> lstmc's .onnx (convert) -> .lstmc (convert): the
    Keras model's predictions."""
    pytest.importorskip("h5py")
    keras = pytest.importorskip("keras")
    theirs = keras.Sequential([keras.Input((9,)), keras.layers.Embedding(40, 8, mask_zero=True),
                               keras.layers.Bidirectional(keras.layers.LSTM(
                                   6, return_sequences=True)),
                               keras.layers.GRU(5), keras.layers.Dense(3, activation="softmax")])
    theirs.save(tmp_path / "k.keras")
    assert main(["convert", str(tmp_path / "k.keras"), str(tmp_path / "k.onnx")]) == 0
    data = (tmp_path / "k.onnx").read_bytes()
    model = convert_and_check(tmp_path, data, ids_high=40, sizes=(4, 9))
    ids = np.random.default_rng(3).integers(1, 40, size=(5, 9))
    ids[:, :3] = 0
    expected = keras.ops.convert_to_numpy(theirs.predict(ids, verbose=0))
    assert_close("converted vs Keras", model.predict(ids, verbose=0), expected, RTOL, RTOL)


# ---- torch.onnx.export --------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _against_torch(torch, model, module, x, time_major):
    with torch.no_grad():
        out = module.eval()(torch.from_numpy(x))
    want = (out if isinstance(out, torch.Tensor) else out[0]).numpy()
    got = model.predict(np.swapaxes(x, 0, 1) if time_major else x, verbose=0)
    assert_close("converted vs torch", np.swapaxes(got, 0, 1) if time_major else got, want,
                 RTOL, RTOL)


def test_torch_embedding_bilstm_linear(tmp_path, torch):
    module = tagger(torch)
    data = torch_export(torch, module, (torch.randint(0, 50, (7, 3)),), ["x"], ["y"],
                        {"x": {0: "T", 1: "B"}})
    model = convert_and_check(tmp_path, data, time_major=True, ids_high=50,
                              expect_notes=["input 'x' is time-major", "output 'y' is "
                                            "time-major"])
    assert [type(k).__name__ for k in model.layers] == ["Embedding", "Bidirectional",
                                                        "Bidirectional", "Dense"]
    _against_torch(torch, model, module, np.random.default_rng(0).integers(0, 50, (11, 4)),
                   True)


def test_torch_batch_first_gru(tmp_path, torch):
    torch.manual_seed(1)
    gru = torch.nn.GRU(5, 7, num_layers=2, batch_first=True)
    data = torch_export(torch, gru, (torch.randn(3, 6, 5),), ["x"], ["y", "h"],
                        {"x": {0: "B", 1: "T"}})
    model = convert_and_check(tmp_path, data,
                              expect_notes=["graph outputs not in the lstmc model (it has one "
                                            "output): 'h'"])
    _against_torch(torch, model, gru, np.random.default_rng(1).standard_normal(
        (2, 9, 5)).astype(np.float32), False)


def test_torch_relu_rnn(tmp_path, torch):
    torch.manual_seed(2)
    rnn = torch.nn.RNN(4, 6, nonlinearity="relu", bidirectional=True)
    data = torch_export(torch, rnn, (torch.randn(5, 3, 4),), ["x"], ["y", "h"],
                        {"x": {0: "T", 1: "B"}})
    model = convert_and_check(tmp_path, data, time_major=True)
    assert model.layers[0].layer.activation == "relu"
    _against_torch(torch, model, rnn, np.random.default_rng(2).standard_normal(
        (8, 3, 4)).astype(np.float32), True)


def test_torch_classifier_on_the_last_state(tmp_path, torch):
    """Linear on h_n[-1] (torch's Gemm) after a batch-first Embedding + LSTM: the LSTM's
    return_sequences=False."""
    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(30, 6)
            self.lstm = torch.nn.LSTM(6, 8, batch_first=True)
            self.fc = torch.nn.Linear(8, 1)

        def forward(self, x):
            return torch.sigmoid(self.fc(self.lstm(self.emb(x))[1][0][-1]))

    torch.manual_seed(6)
    module = Classifier()
    data = torch_export(torch, module, (torch.randint(0, 30, (3, 7)),), ["x"], ["p"],
                        {"x": {0: "B", 1: "T"}})
    model = convert_and_check(tmp_path, data, ids_high=30)
    assert [type(k).__name__ for k in model.layers] == ["Embedding", "LSTM", "Dense"]
    assert not model.layers[1].return_sequences and model.layers[2].activation == "sigmoid"
    _against_torch(torch, model, module, np.random.default_rng(6).integers(0, 30, (4, 9)),
                   False)


def test_torch_dynamo_embedding_bilstm_linear(tmp_path, torch):
    module = tagger(torch)
    data = torch_export_dynamo(torch, module, (torch.randint(0, 50, (7, 3)),), ["x"],
                               ({1: torch.export.Dim("B")},))
    model = convert_and_check(tmp_path, data, time_major=True, ids_high=50, sizes=(4, 6))
    _against_torch(torch, model, module, np.random.default_rng(4).integers(0, 50, (7, 5)),
                   True)


def test_torch_dynamo_batch_first_gru(tmp_path, torch):
    torch.manual_seed(1)
    gru = torch.nn.GRU(5, 7, num_layers=2, batch_first=True)
    data = torch_export_dynamo(torch, gru, (torch.randn(3, 6, 5),), ["x"],
                               ({0: torch.export.Dim("B"), 1: torch.export.Dim("T")},))
    model = convert_and_check(tmp_path, data)
    _against_torch(torch, model, gru, np.random.default_rng(5).standard_normal(
        (2, 9, 5)).astype(np.float32), False)


# ---- refused: what is not a chain of lstmc's layers -----------------------------------------
def _refused(tmp_path, source, match):
    src = tmp_path / "m.onnx"
    src.write_bytes(source if isinstance(source, bytes) else source.SerializeToString())
    with pytest.raises(UnsupportedModelError, match=match):
        convert(src, tmp_path / "m.lstmc")
    assert not (tmp_path / "m.lstmc").exists()


def test_initial_states_as_inputs_are_refused(tmp_path, torch):
    torch.manual_seed(2)
    rnn = torch.nn.RNN(4, 6, nonlinearity="relu", bidirectional=True)
    data = torch_export(torch, rnn, (torch.randn(5, 3, 4), torch.randn(2, 3, 6)), ["x", "h0"],
                        ["y", "h"], {"x": {0: "T"}})
    _refused(tmp_path, data, r"node '.*' \(RNN\): reads graph input 'h0' beside the model's "
                             r"input 'x'")


def test_lengths_and_states_of_lstmc_exports_are_refused(tmp_path):
    lstmc.manual_seed(0)
    m = lstmc.nn.LSTM(3, 4)
    _refused(tmp_path, lo.export(m, tmp_path / "a.onnx", lengths=True),
             r"node '.*' \(LSTM\): reads graph input 'lengths'")
    _refused(tmp_path, lo.export(m, tmp_path / "b.onnx", states=True),
             r"node '.*' \(Slice\): reads graph input 'h0'")


def _chain_model(nodes, inits, x_shape=("T", "B", 3), opset=17):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_empty_tensor_value_info(nodes[-1].output[0])],
        [numpy_helper.from_array(a, k) for k, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _lstm_parts(rng, I=3, H=4):
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)   # noqa: E731
    return {"W": f32(1, 4 * H, I), "R": f32(1, 4 * H, H), "B": f32(1, 8 * H),
            "fc": f32(H, 2), "axes": np.array([1], np.int64)}


def _lstm_node(x="x"):
    return [helper.make_node("LSTM", [x, "W", "R", "B"], ["Y"], hidden_size=4, name="lstm"),
            helper.make_node("Squeeze", ["Y", "axes"], ["y"], name="squeeze")]


def test_an_operator_that_is_no_layer_is_refused(tmp_path):
    inits = _lstm_parts(np.random.default_rng(0))
    inits.update(scale=np.ones(4, np.float32), bias=np.zeros(4, np.float32))
    nodes = _lstm_node() + [helper.make_node("LayerNormalization", ["y", "scale", "bias"],
                                             ["n"], axis=-1, name="norm")]
    _refused(tmp_path, _chain_model(nodes, inits), r"node 'norm' \(LayerNormalization\): "
                                                   "operator LayerNormalization")


def test_a_residual_add_is_refused(tmp_path):
    inits = _lstm_parts(np.random.default_rng(0), I=4)
    nodes = _lstm_node() + [helper.make_node("Add", ["y", "x"], ["z"], name="residual")]
    _refused(tmp_path, _chain_model(nodes, inits, ("T", "B", 4)),
             r"node 'residual' \(Add\): joins values of different layers")


def test_an_activation_without_a_dense_is_refused(tmp_path):
    inits = _lstm_parts(np.random.default_rng(0))
    nodes = _lstm_node() + [helper.make_node("Tanh", ["y"], ["t"], name="act")]
    _refused(tmp_path, _chain_model(nodes, inits),
             r"node 'act' \(Tanh\): is not the bias or activation of a Dense")


def test_log_softmax_is_refused(tmp_path):
    inits = _lstm_parts(np.random.default_rng(0))
    nodes = _lstm_node() + [helper.make_node("MatMul", ["y", "fc"], ["z"], name="fc"),
                            helper.make_node("LogSoftmax", ["z"], ["p"], name="logp")]
    _refused(tmp_path, _chain_model(nodes, inits), r"node 'logp' \(LogSoftmax\)")


def test_weights_fed_as_inputs_are_refused(tmp_path):
    inits = _lstm_parts(np.random.default_rng(0))
    W = inits.pop("W")
    proto = _chain_model(_lstm_node(), inits)
    proto.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT,
                                                           list(W.shape)))
    _refused(tmp_path, proto, r"node 'lstm' \(LSTM\): reads graph input 'W'")


def test_glue_that_does_more_than_move_values_is_refused(tmp_path):
    """A Slice keeping half the features passes the structural trace; the run shows it."""
    inits = _lstm_parts(np.random.default_rng(0))
    inits.update(s0=np.array([0], np.int64), s1=np.array([2], np.int64),
                 ax=np.array([2], np.int64), fc=inits["fc"][:2])
    nodes = _lstm_node() + [helper.make_node("Slice", ["y", "s0", "s1", "ax"], ["half"],
                                             name="half"),
                            helper.make_node("MatMul", ["half", "fc"], ["z"], name="fc")]
    _refused(tmp_path, _chain_model(nodes, inits),
             r"node 'fc' \(MatMul\): its input is not the output of node 'lstm' \(LSTM\) in "
             "any layout")


def test_glue_after_the_last_layer_that_does_more_than_move_values_is_refused(tmp_path):
    inits = _lstm_parts(np.random.default_rng(0))
    inits.update(s0=np.array([0], np.int64), s1=np.array([2], np.int64),
                 ax=np.array([2], np.int64))
    nodes = _lstm_node() + [helper.make_node("Slice", ["y", "s0", "s1", "ax"], ["half"],
                                             name="half")]
    _refused(tmp_path, _chain_model(nodes, inits),
             r"graph output 'half' is not the output of node 'lstm' \(LSTM\)")


def test_what_lstmc_cannot_run_is_refused_by_the_loader(tmp_path):
    inits = _lstm_parts(np.random.default_rng(0))
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y"], hidden_size=4, clip=1.0,
                              name="lstm")]
    _refused(tmp_path, _chain_model(nodes, inits), r"node 'lstm' \(LSTM\)")


def test_convert_cli_prints_the_notes(tmp_path, capsys):
    lstmc.manual_seed(0)
    lo.export(lstmc.nn.GRU(3, 4), tmp_path / "g.onnx")
    assert main(["convert", str(tmp_path / "g.onnx"), str(tmp_path / "g.lstmc")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'g.lstmc'}" in out
    assert "note: input 'input' is time-major in the ONNX file ((time, batch, 3))" in out
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    got = load_model(tmp_path / "g.lstmc").predict(x, verbose=0)
    want = lo.load(tmp_path / "g.onnx").run(None, {"input": np.swapaxes(x, 0, 1)})[0]
    assert_close("cli", got, np.swapaxes(want, 0, 1), RTOL, RTOL)


def test_converting_leaves_lstmcs_random_stream_alone(tmp_path):
    lstmc.manual_seed(0)
    lo.export(lstmc.nn.LSTM(3, 4), tmp_path / "a.onnx")
    lstmc.manual_seed(5)
    a = lstmc.nn.LSTM(2, 3).weight_ih_l0.data.copy()
    lstmc.manual_seed(5)
    convert(tmp_path / "a.onnx", tmp_path / "a.lstmc")
    assert_close("weights", lstmc.nn.LSTM(2, 3).weight_ih_l0.data, a, 0, 0)


def test_inspect_says_whether_an_onnx_file_converts(tmp_path, capsys):
    lstmc.manual_seed(0)
    lo.export(lstmc.nn.LSTM(3, 4, bidirectional=True), tmp_path / "a.onnx")
    assert main(["inspect", str(tmp_path / "a.onnx")]) == 0
    out = capsys.readouterr().out
    assert " converts to an lstmc model file (convert FILE OUT.lstmc): Sequential of " \
        "Bidirectional(LSTM)" in out
    assert "note: input 'input' is time-major" in out
    inits = _lstm_parts(np.random.default_rng(0))
    nodes = _lstm_node() + [helper.make_node("Tanh", ["y"], ["t"], name="act")]
    onnx.save(_chain_model(nodes, inits), tmp_path / "b.onnx")
    assert main(["inspect", str(tmp_path / "b.onnx")]) == 0
    out = capsys.readouterr().out
    assert "cannot run" not in out
    assert " does not convert to an lstmc model file: node 'act' (Tanh): is not the bias or " \
        "activation of a Dense" in out
