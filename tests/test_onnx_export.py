"""lstmc.onnx.export (docs/spec.md §9): the files pass onnx's full check and ONNX Runtime runs
them with lstmc's outputs (float32, within 1e-5 relative) for both faces, every cell, stacked,
bidirectional, batch-first, variable lengths and masks, state inputs / outputs, at two batch
sizes; what ONNX cannot express is refused with a clear error."""
import copy
import subprocess
import sys

import numpy as np
import pytest

import lstmc
import lstmc.onnx
from lstmc import nn
from lstmc.layers import Bidirectional, Dense, Dropout, Embedding, GRU, LSTM, SimpleRNN
from lstmc.models import Sequential
from tests.helpers import assert_close, make_module

RTOL, ATOL = 1e-5, 1e-6
BATCHES = (3, 5)   # every file runs at two batch sizes: the batch axis is dynamic


@pytest.fixture
def onnx():
    return pytest.importorskip("onnx")


@pytest.fixture
def run(onnx, tmp_path):
    """export(model, **options) -> a function feeds -> list of outputs (ONNX Runtime)."""
    ort = pytest.importorskip("onnxruntime")

    def export_and_load(model, **options):
        path = tmp_path / "model.onnx"
        lstmc.onnx.export(model, path, **options)
        onnx.checker.check_model(str(path), full_check=True)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def call(**feeds):
            return sess.run(None, feeds)
        call.session, call.path = sess, path
        return call
    return export_and_load


def check_outputs(actual, expected, names):
    assert len(actual) == len(expected)
    for name, a, e in zip(names, actual, expected):
        assert_close(name, a, e, rtol=RTOL, atol=ATOL)


# ---- lstmc.nn ---------------------------------------------------------------------------
NN_CELLS = ["lstm", "gru", "gru_rb", "rnn_tanh", "rnn_relu"]


@pytest.mark.parametrize("cell", NN_CELLS)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_nn_module_with_lengths_and_states(run, cell, num_layers, bidirectional, batch_first):
    rng = np.random.default_rng(0)
    m = make_module(cell, 3, 4, num_layers=num_layers, bidirectional=bidirectional,
                    batch_first=batch_first).eval()
    f = run(m, lengths=True, states=True)
    names = [i.name for i in f.session.get_inputs()]
    has_c = cell == "lstm"
    assert names == ["input", "lengths", "h0"] + (["c0"] if has_c else [])
    T, LD = 6, num_layers * (2 if bidirectional else 1)
    for B in BATCHES:
        x = rng.standard_normal((B, T, 3) if batch_first else (T, B, 3)).astype(np.float32)
        lengths = rng.integers(0, T + 1, B).astype(np.int32)
        lengths[0] = 0   # a row of length 0 keeps its initial state
        h0 = rng.standard_normal((LD, B, 4)).astype(np.float32)
        feeds = dict(input=x, lengths=lengths, h0=h0)
        if has_c:
            c0 = rng.standard_normal((LD, B, 4)).astype(np.float32)
            out, (h, c) = m(x, (h0, c0), lengths=lengths)
            expected = [out, h, c]
            feeds["c0"] = c0
        else:
            out, h = m(x, h0, lengths=lengths)
            expected = [out, h]
        check_outputs(f(**feeds), expected, ["output", "h_n", "c_n"])


@pytest.mark.parametrize("cell", NN_CELLS)
@pytest.mark.parametrize("bias", [True, False])
def test_nn_module_plain(run, cell, bias):
    rng = np.random.default_rng(1)
    m = make_module(cell, 5, 7, bias=bias, num_layers=2).eval()
    f = run(m)
    assert [o.name for o in f.session.get_outputs()] == ["output"]
    for B in BATCHES:
        x = rng.standard_normal((4, B, 5)).astype(np.float32)
        check_outputs(f(input=x), [m(x)[0]], ["output"])


@pytest.mark.parametrize("make", [
    lambda: nn.LSTM(3, 5, num_layers=2, bidirectional=True, peepholes=True),
    lambda: nn.LSTM(3, 5, peepholes=True, cell_clip=0.6, bias=False),
    lambda: nn.LSTM(3, 5, input_forget=True, activations=[("hardsigmoid", 0.3, 0.6), "elu",
                                                          "softsign"]),
    lambda: nn.GRU(3, 5, bidirectional=True, cell_clip=0.8,
                   activations=["sigmoid", ("scaledtanh", 1.2, 0.7), "hardsigmoid",
                                "softsign"]),
    lambda: nn.RNN(3, 5, cell_clip=0.5, activations=[("leakyrelu", 0.2)]),
], ids=["lstm_peepholes", "lstm_peepholes_clip", "lstm_input_forget_activations",
        "gru_clip_activations", "rnn_clip_leakyrelu"])
def test_nn_cell_options(run, make):
    """peepholes, cell_clip, input_forget and activations become ONNX's P, clip,
    input_forget and activations with every alpha and beta written out (ONNX Runtime's
    missing-value defaults differ from ONNX's for some functions)."""
    rng = np.random.default_rng(3)
    m = make()
    for p in m.parameters():
        p.data[...] = rng.uniform(-0.8, 0.8, p.data.shape)
    m.eval()
    f = run(m, lengths=True, states=True)
    for B in BATCHES:
        x = rng.standard_normal((6, B, 3)).astype(np.float32)
        lengths = rng.integers(1, 7, B).astype(np.int32)
        h0 = rng.standard_normal(m(x)[1][0].shape if isinstance(m, nn.LSTM)
                                 else m(x)[1].shape).astype(np.float32)
        feeds = dict(input=x, lengths=lengths, h0=h0)
        if isinstance(m, nn.LSTM):
            feeds["c0"] = rng.standard_normal(h0.shape).astype(np.float32)
            out, (h, c) = m(x, (h0, feeds["c0"]), lengths=lengths)
            expected = [out, h, c]
        else:
            expected = list(m(x, h0, lengths=lengths))
        check_outputs(f(**feeds), expected, ["output", "h_n", "c_n"])
        assert_close("lstmc runs its own file", lstmc.onnx.load(
            f.path).run(None, feeds)[0], expected[0], RTOL, ATOL)


def test_nn_sequential(run):
    rng = np.random.default_rng(2)
    model = nn.Sequential(nn.Embedding(30, 6), nn.Dropout(0.3),
                          nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True),
                          nn.Linear(10, 8), nn.ReLU(),
                          nn.GRU(8, 4, batch_first=True), nn.Tanh(), nn.Linear(4, 3),
                          nn.Sigmoid()).eval()
    f = run(model, lengths=True, states=True)
    assert [i.name for i in f.session.get_inputs()] == \
        ["input", "lengths", "2.h0", "2.c0", "5.h0"]
    assert [o.name for o in f.session.get_outputs()] == \
        ["output", "2.h_n", "2.c_n", "5.h_n"]
    for B in BATCHES:
        ids = rng.integers(0, 30, (B, 7))
        lengths = rng.integers(0, 8, B).astype(np.int32)
        states = {"2.h0": rng.standard_normal((4, B, 5)), "2.c0": rng.standard_normal((4, B, 5)),
                  "5.h0": rng.standard_normal((1, B, 4))}
        states = {k: v.astype(np.float32) for k, v in states.items()}
        # an RNN module in Sequential passes its output sequence on
        x = model[0](ids)
        x, (h2, c2) = model[2](x, (states["2.h0"], states["2.c0"]), lengths=lengths)
        x = model[4](model[3](x))
        x, h5 = model[5](x, states["5.h0"], lengths=lengths)
        y = model[8](model[7](model[6](x)))
        actual = f(input=ids.astype(np.int64), lengths=lengths, **states)
        check_outputs(actual, [y, h2, c2, h5], ["output", "2.h_n", "2.c_n", "5.h_n"])


def test_nn_feed_forward_sequential(run):
    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).eval()
    f = run(model)
    for B in BATCHES:
        x = rng.standard_normal((B, 4)).astype(np.float32)
        check_outputs(f(input=x), [model(x)], ["output"])


def test_fixed_batch(run):
    rng = np.random.default_rng(4)
    m = nn.GRU(3, 4, batch_first=True).eval()
    f = run(m, dynamic_batch=False, states=True)
    assert f.session.get_inputs()[0].shape == [1, "time", 3]
    assert f.session.get_inputs()[1].shape == [1, 1, 4]
    x = rng.standard_normal((1, 5, 3)).astype(np.float32)
    h0 = rng.standard_normal((1, 1, 4)).astype(np.float32)
    out, h = m(x, h0)
    check_outputs(f(input=x, h0=h0), [out, h], ["output", "h_n"])


def test_streaming_through_state_outputs(run):
    """Feeding h_n / c_n back in, chunk by chunk, equals one call on the whole sequence."""
    rng = np.random.default_rng(5)
    m = nn.LSTM(3, 4, num_layers=2).eval()
    f = run(m, states=True)
    x = rng.standard_normal((8, 2, 3)).astype(np.float32)
    h = c = np.zeros((2, 2, 4), np.float32)
    outs = []
    for chunk in (x[:3], x[3:4], x[4:]):
        y, h, c = f(input=chunk, h0=h, c0=c)
        outs.append(y)
    out, (hn, cn) = m(x)
    check_outputs([np.concatenate(outs), h, c], [out, hn, cn], ["output", "h_n", "c_n"])


def test_float64_model_exports_in_float64(onnx, tmp_path):
    m = nn.LSTM(3, 4, dtype=np.float64)
    proto = lstmc.onnx.export(m, tmp_path / "m.onnx")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)


def test_one_node_per_layer_layout_0(onnx, tmp_path):
    m = nn.GRU(3, 4, num_layers=3, bidirectional=True)
    proto = lstmc.onnx.export(m, tmp_path / "m.onnx")
    nodes = [n for n in proto.graph.node if n.op_type == "GRU"]
    assert len(nodes) == 3
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["layout"] == 0 and attrs["direction"] == b"bidirectional"
        assert attrs["linear_before_reset"] == 1


# ---- Keras face -------------------------------------------------------------------------
def padded_ids(rng, B, T, vocab):
    """Token ids with padding (id 0) at the front, the back and in the middle, and one row
    that is all padding."""
    ids = rng.integers(1, vocab, (B, T))
    ids[0, :2] = 0
    ids[1 % B, T - 3:] = 0
    ids[2 % B, 2:4] = 0
    ids[-1] = 0
    return ids


def check_keras(run, model, make_input, **options):
    f = run(model, **options)
    for B in BATCHES:
        x = make_input(B)
        feed = x.astype(np.int64) if x.dtype.kind in "iu" else x
        check_outputs(f(input=feed), [model.predict(x)], ["output"])
    return f


def test_readme_keras_model(run):
    rng = np.random.default_rng(6)
    model = Sequential()
    model.add(LSTM(units=50, input_shape=(10, 1)))
    model.add(Dense(units=1, activation="sigmoid"))
    f = check_keras(run, model,
                    lambda B: rng.standard_normal((B, 10, 1)).astype(np.float32))
    assert f.session.get_inputs()[0].shape == ["batch", "time", 1]


def test_readme_keras_text_model(run):
    rng = np.random.default_rng(7)
    model = Sequential([Embedding(1000, 64, mask_zero=True),
                        Bidirectional(LSTM(64, return_sequences=True)),
                        GRU(32), Dropout(0.5), Dense(1, activation="sigmoid")])

    def ids(B):
        x = rng.integers(1, 1000, size=(B, 40))
        x[:, :10] = 0                     # padded at the front, as pad_sequences
        return x
    model.predict(ids(2))                 # builds it
    f = check_keras(run, model, ids)
    assert f.session.get_inputs()[0].shape == ["batch", "time"]


KERAS_CELLS = {
    "lstm": lambda **kw: LSTM(5, **kw),
    "gru": lambda **kw: GRU(5, **kw),
    "gru_reset_before": lambda **kw: GRU(5, reset_after=False, **kw),
    "simple_rnn_tanh": lambda **kw: SimpleRNN(5, **kw),
    "simple_rnn_relu": lambda **kw: SimpleRNN(5, activation="relu", **kw),
}


@pytest.mark.parametrize("cell", sorted(KERAS_CELLS))
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_keras_cells(run, cell, masked, return_sequences, go_backwards):
    rng = np.random.default_rng(8)
    layer = KERAS_CELLS[cell](return_sequences=return_sequences, go_backwards=go_backwards)
    model = Sequential([Embedding(20, 4, mask_zero=masked, input_shape=(7,)), layer,
                        Dense(3, activation="softmax")])
    # random biases, so that the one-bias / two-bias conversion is tested too
    model.set_weights([w if i else rng.uniform(-0.5, 0.5, w.shape)
                       for i, w in enumerate(model.get_weights())])
    check_keras(run, model, lambda B: padded_ids(rng, B, 7, 20))


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_keras_bidirectional(run, merge_mode, return_sequences, masked):
    rng = np.random.default_rng(9)
    model = Sequential([Embedding(20, 4, mask_zero=masked, input_shape=(7,)),
                        Bidirectional(GRU(5, return_sequences=return_sequences),
                                      merge_mode=merge_mode),
                        Dense(2, activation="tanh")])
    check_keras(run, model, lambda B: padded_ids(rng, B, 7, 20))


def test_keras_stacked_float_input(run):
    rng = np.random.default_rng(10)
    model = Sequential([SimpleRNN(6, return_sequences=True, input_shape=(None, 3)),
                        Dropout(0.2), LSTM(4, return_sequences=True, go_backwards=True),
                        Dense(2, activation="relu"), Dense(1, use_bias=False)])
    check_keras(run, model, lambda B: rng.standard_normal((B, 9, 3)).astype(np.float32))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_keras_states(run, bidirectional):
    rng = np.random.default_rng(11)
    lstm = LSTM(5, return_sequences=True)
    layer = Bidirectional(lstm) if bidirectional else lstm
    model = Sequential([Embedding(20, 4, mask_zero=True, input_shape=(6,)), layer])
    name, D = layer.name, 2 if bidirectional else 1
    f = run(model, states=True)
    assert [i.name for i in f.session.get_inputs()] == ["input", f"{name}.h0", f"{name}.c0"]
    assert [o.name for o in f.session.get_outputs()] == \
        ["output", f"{name}.h_n", f"{name}.c_n"]
    # the reference: the same layer run on its own, returning its states
    stateful = copy.deepcopy(model).layers[1]
    inner = stateful.layer if bidirectional else stateful
    inner.return_state = True
    for B in BATCHES:
        ids = padded_ids(rng, B, 6, 20)
        h0 = rng.standard_normal((D, B, 5)).astype(np.float32)
        c0 = rng.standard_normal((D, B, 5)).astype(np.float32)
        actual = f(input=ids.astype(np.int64), **{f"{name}.h0": h0, f"{name}.c0": c0})
        emb, mask = model.layers[0].forward(ids)
        if bidirectional:
            # a Keras layer takes no initial state of both directions: run its engine on
            # each row's valid steps (what the layer runs), and compare the final states
            order = np.argsort(~mask, axis=1, kind="stable")
            valid_first = np.take_along_axis(emb, order[:, :, None], axis=1)
            _, (h, c) = inner._module(valid_first, (h0, c0), lengths=mask.sum(axis=1))
            check_outputs(actual[1:], [h, c], ["h_n", "c_n"])
        else:
            y, h, c = inner.forward(emb, mask, initial_state=[h0[0], c0[0]])[0]
            check_outputs(actual, [y, h[None], c[None]], ["output", "h_n", "c_n"])


@pytest.mark.parametrize("opset", [14, 18, 21])
def test_opsets(run, opset):
    """Across the opsets where Reduce* took axes as an attribute and as an input."""
    rng = np.random.default_rng(12)
    model = Sequential([Embedding(20, 4, mask_zero=True, input_shape=(7,)),
                        Bidirectional(LSTM(5, return_sequences=True), merge_mode="ave"),
                        Bidirectional(GRU(3), merge_mode="mul")])
    check_keras(run, model, lambda B: padded_ids(rng, B, 7, 20), opset=opset)


# ---- refused --------------------------------------------------------------------------
def test_refuses_lstm_projection(onnx, tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="proj_size=2 cannot be exported"):
        lstmc.onnx.export(nn.LSTM(3, 4, proj_size=2), path)
    assert not path.exists()
    with pytest.raises(ValueError, match="proj_size"):
        lstmc.onnx.export(nn.Sequential(nn.Linear(2, 3), nn.LSTM(3, 4, proj_size=2)), path)
    assert list(tmp_path.iterdir()) == []   # no file, not even a temporary one


@pytest.mark.parametrize("module", [nn.LSTMCell(3, 4), nn.CrossEntropyLoss()],
                         ids=["cell", "loss"])
def test_refuses_other_modules(onnx, tmp_path, module):
    with pytest.raises(TypeError, match=f"cannot export {type(module).__name__}"):
        lstmc.onnx.export(nn.Sequential(nn.Linear(3, 3), module), tmp_path / "m.onnx")


def test_refuses_a_non_model(onnx, tmp_path):
    with pytest.raises(TypeError, match="model must be an lstmc.nn module"):
        lstmc.onnx.export(object(), tmp_path / "m.onnx")


def test_refuses_return_state(onnx, tmp_path):
    model = Sequential([LSTM(4, return_state=True, input_shape=(5, 3))])
    with pytest.raises(ValueError, match="return_state=True"):
        lstmc.onnx.export(model, tmp_path / "m.onnx")


def test_refuses_unbuilt_keras_model(onnx, tmp_path):
    with pytest.raises(ValueError, match="must be built"):
        lstmc.onnx.export(Sequential([LSTM(4), Dense(1)]), tmp_path / "m.onnx")


def test_refuses_lengths_on_keras_and_feed_forward(onnx, tmp_path):
    model = Sequential([LSTM(4, input_shape=(5, 3))])
    with pytest.raises(ValueError, match="lengths=True is for lstmc.nn"):
        lstmc.onnx.export(model, tmp_path / "m.onnx", lengths=True)
    with pytest.raises(ValueError, match="needs a recurrent module"):
        lstmc.onnx.export(nn.Sequential(nn.Linear(3, 2)), tmp_path / "m.onnx", lengths=True)


@pytest.mark.parametrize("opset", [13, "17", True])
def test_refuses_bad_opset(onnx, tmp_path, opset):
    with pytest.raises(ValueError, match="opset must be an int >= 14"):
        lstmc.onnx.export(nn.GRU(3, 4), tmp_path / "m.onnx", opset=opset)


def test_refuses_empty_models(onnx, tmp_path):
    with pytest.raises(ValueError, match="empty Sequential"):
        lstmc.onnx.export(nn.Sequential(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="without layers"):
        lstmc.onnx.export(Sequential(), tmp_path / "m.onnx")


def test_missing_onnx_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)   # `import onnx` raises ImportError
    with pytest.raises(ImportError, match=r"lstmc\[onnx\]"):
        lstmc.onnx.export(nn.GRU(3, 4), tmp_path / "m.onnx")


def test_import_lstmc_does_not_import_onnx():
    code = "import sys, lstmc, lstmc.onnx; assert 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

