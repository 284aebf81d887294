"""lstmc.onnx.load: ONNX's own backend node tests of LSTM / GRU / RNN, the recurrent nodes
against ONNX Runtime over their attributes and inputs, round trips from torch.onnx.export
(against torch and ONNX Runtime), the executor's operators against ONNX Runtime, and the errors
of bad models and bad feeds."""
import importlib
import io
import subprocess
import sys
import warnings

import numpy as np
import pytest

from helpers import assert_close

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lstmc.onnx as lo  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6   # float32 against a float32 reference


@pytest.fixture(scope="module")
def ort():
    return pytest.importorskip("onnxruntime")


def ort_run(ort, model, feeds, names=None):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(names, feeds)


def value_info(name, array_or_type, shape=None):
    if isinstance(array_or_type, np.ndarray):
        elem = helper.np_dtype_to_tensor_dtype(array_or_type.dtype)
        return helper.make_tensor_value_info(name, elem, list(array_or_type.shape))
    return helper.make_tensor_value_info(name, array_or_type, shape)


def make_model(nodes, inputs, outputs, initializers=(), opset=17):
    """inputs: name -> array (graph inputs, declared with their dtype and shape);
    outputs: names (declared without type); initializers: name -> array."""
    graph = helper.make_graph(
        nodes, "g", [value_info(n, a) for n, a in inputs.items()],
        [helper.make_empty_tensor_value_info(n) for n in outputs],
        [numpy_helper.from_array(a, n) for n, a in dict(initializers).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def assert_outputs(name, got, expected, rtol=RTOL, atol=ATOL):
    assert len(got) == len(expected), f"{name}: {len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        assert np.asarray(g).dtype == np.asarray(e).dtype, f"{name}[{i}]: {g.dtype} != {e.dtype}"
        assert_close(f"{name}[{i}]", g, e, rtol, atol)


# ---- ONNX's backend node tests ------------------------------------------------------------
PREFIXES = ("test_lstm", "test_gru", "test_rnn", "test_simple_rnn")
SUPPORTED_CASES = (
    "test_gru_defaults", "test_gru_with_initial_bias", "test_gru_seq_length",
    "test_gru_batchwise", "test_gru_reverse", "test_gru_bidirectional",
    "test_lstm_defaults", "test_lstm_with_initial_bias", "test_lstm_batchwise",
    "test_lstm_reverse", "test_lstm_bidirectional", "test_lstm_with_peepholes",
    "test_simple_rnn_defaults", "test_simple_rnn_with_initial_bias", "test_rnn_seq_length",
    "test_simple_rnn_batchwise", "test_simple_rnn_reverse", "test_simple_rnn_bidirectional",
)


@pytest.fixture(scope="module")
def backend_cases():
    """ONNX's generated node test cases of the recurrent operators, by name. Importing the
    three case modules registers their cases (collect_testcases would generate every
    operator's, ~9 s); collect_testcases is the fallback if that private list moves."""
    from onnx.backend.test.case import node
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("lstm", "gru", "rnn"):
            importlib.import_module(f"onnx.backend.test.case.node.{name}")
        cases = getattr(node, "_NodeTestCases", None) or node.collect_testcases(None)
    return {c.name: c for c in cases if c.name.startswith(PREFIXES)}


def test_backend_cases_are_all_listed(backend_cases):
    assert set(backend_cases) == set(SUPPORTED_CASES)


def as_initializers(model, inputs):
    """The model with every graph input but the first (X) made an initializer of the value
    in `inputs`."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    graph_inputs = list(m.graph.input)
    del m.graph.input[1:]
    for vi, value in zip(graph_inputs[1:], inputs[1:]):
        m.graph.initializer.append(numpy_helper.from_array(value, vi.name))
    return m


@pytest.mark.parametrize("weights", ["graph inputs", "initializers"])
@pytest.mark.parametrize("name", SUPPORTED_CASES)
def test_backend_case(backend_cases, name, weights):
    case = backend_cases[name]
    for inputs, expected in case.data_sets:
        model = case.model if weights == "graph inputs" else as_initializers(case.model, inputs)
        sess = lo.load(model)
        fed = inputs if weights == "graph inputs" else inputs[:1]
        got = sess.run(None, {a.name: x for a, x in zip(sess.get_inputs(), fed)})
        assert_outputs(name, got, expected)


@pytest.mark.parametrize("name", ["test_lstm_bidirectional", "test_gru_with_initial_bias",
                                  "test_simple_rnn_batchwise"])
def test_backend_case_in_float64(backend_cases, name):
    """The same cases with every tensor in double: lstmc's float64 kernels."""
    case = backend_cases[name]
    inputs, expected = case.data_sets[0]
    model = as_initializers(case.model, [a.astype(np.float64) for a in inputs])
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    got = lo.load(model).run(None, {model.graph.input[0].name: inputs[0].astype(np.float64)})
    assert_outputs(name, got, [e.astype(np.float64) for e in expected])


# ---- recurrent nodes against ONNX Runtime ---------------------------------------------------
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(op, *, direction="forward", layout=0, lengths=None, states=False,
                    weights_as="initializers", T=5, B=3, I=4, H=6, attrs=None, seed=0,
                    peepholes=None):
    """One recurrent node with random weights, and its feeds."""
    rng = np.random.default_rng(seed)
    G, D = GATES[op], 2 if direction == "bidirectional" else 1
    W = (rng.standard_normal((D, G * H, I)) * 0.5).astype(np.float32)
    R = (rng.standard_normal((D, G * H, H)) * 0.5).astype(np.float32)
    Bias = (rng.standard_normal((D, 2 * G * H)) * 0.5).astype(np.float32)
    X = rng.standard_normal((T, B, I) if layout == 0 else (B, T, I)).astype(np.float32)
    feeds, consts = {"X": X}, {}
    (feeds if weights_as == "graph inputs" else consts).update(W=W, R=R, B=Bias)
    ins = ["X", "W", "R", "B"] + [""] * (4 if op == "LSTM" else 2)
    if lengths is not None:
        ins[4] = "L"
        feeds["L"] = np.array(lengths, np.int32)
    if states:
        shape = (D, B, H) if layout == 0 else (B, D, H)
        for k, name in ((5, "h0"), (6, "c0"))[:2 if op == "LSTM" else 1]:
            ins[k] = name
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    if peepholes is not None:   # a value for every entry, or "random"
        ins[7] = "P"
        feeds["P"] = (rng.standard_normal((D, 3 * H)) * 0.5).astype(np.float32) \
            if peepholes == "random" else np.full((D, 3 * H), peepholes, np.float32)
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, ins, outs, direction=direction, hidden_size=H,
                            **({"layout": 1} if layout else {}), **(attrs or {}))
    return make_model([node], feeds, outs, consts, opset=14), feeds


RECURRENT = [("LSTM", {}), ("GRU", {"linear_before_reset": 0}),
             ("GRU", {"linear_before_reset": 1}), ("RNN", {}),
             ("RNN", {"activations": ["Relu"]})]


@pytest.mark.parametrize("lengths", [None, [5, 2, 4], [1, 5, 3]], ids=["dense", "lens", "lens1"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op,attrs", RECURRENT, ids=lambda v: str(v))
def test_recurrent_node_against_onnxruntime(ort, op, attrs, direction, lengths):
    if op == "RNN" and direction == "bidirectional" and attrs:
        attrs = {"activations": ["Relu", "Relu"]}
    for states in (False, True):
        for weights_as in ("initializers", "graph inputs"):
            model, feeds = recurrent_model(op, direction=direction, lengths=lengths,
                                           states=states, weights_as=weights_as, attrs=attrs)
            got = lo.load(model).run(None, feeds)
            assert_outputs(f"{op} {direction} {weights_as} states={states}", got,
                           ort_run(ort, model, feeds))


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent_node_layout_1_is_layout_0_transposed(op, direction):
    """ONNX Runtime has no layout=1; lstmc's batch-major run must equal its time-major one
    (the backend cases check layout=1 against ONNX's expected outputs)."""
    m0, f0 = recurrent_model(op, direction=direction, lengths=[5, 2, 4], states=True)
    m1, f1 = recurrent_model(op, direction=direction, layout=1, lengths=[5, 2, 4],
                             states=True)
    f1 = {"X": f0["X"].transpose(1, 0, 2), "L": f0["L"],
          **{k: f0[k].transpose(1, 0, 2) for k in ("h0", "c0") if k in f0}}
    y0 = lo.load(m0).run(None, f0)
    y1 = lo.load(m1).run(None, f1)
    assert_close("Y", y1[0], y0[0].transpose(2, 0, 1, 3), 0, 0)
    for a, b in zip(y1[1:], y0[1:]):
        assert_close("state", a, b.transpose(1, 0, 2), 0, 0)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_zero_length_rows_keep_their_initial_state(op):
    """A row of length 0 runs no step: Y is 0 and Y_h / Y_c are its initial state (lstmc's
    convention, spec.md section 4; ONNX leaves it open, ONNX Runtime returns zeros)."""
    model, feeds = recurrent_model(op, direction="bidirectional", lengths=[0, 5, 3],
                                   states=True)
    got = lo.load(model).run(None, feeds)
    assert not got[0][:, :, 0].any()
    assert_close("Y_h", got[1][:, 0], feeds["h0"][:, 0], 0, 0)
    if op == "LSTM":
        assert_close("Y_c", got[2][:, 0], feeds["c0"][:, 0], 0, 0)


def test_zero_peepholes_are_no_peepholes(ort):
    model, feeds = recurrent_model("LSTM", states=True)
    expected = lo.load(model).run(None, feeds)
    for weights_as in ("initializers", "graph inputs"):
        m, f = recurrent_model("LSTM", states=True, peepholes=0.0, weights_as=weights_as)
        assert_outputs("P=0", lo.load(m).run(None, f), expected, 0, 0)
        assert_outputs("P=0 vs ORT", lo.load(m).run(None, f), ort_run(ort, m, f))


@pytest.mark.parametrize("fill", [0.0, 0.5])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_states_from_constant_of_shape(ort, op, fill):
    """torch.onnx.export builds the zero state from the input's shape; lstmc runs it as its
    own zero state without computing it, and any other fill as given."""
    H, I = 4, 3
    rng = np.random.default_rng(5)
    G = GATES[op]
    x = rng.standard_normal((6, 2, I)).astype(np.float32)
    consts = {"W": rng.standard_normal((1, G * H, I)).astype(np.float32),
              "R": rng.standard_normal((1, G * H, H)).astype(np.float32),
              "one": np.array([1], np.int64), "hid": np.array([H], np.int64),
              "i1": np.array([1], np.int64)}
    n = helper.make_node
    value = numpy_helper.from_array(np.array([fill], np.float32))
    nodes = [n("Shape", ["x"], ["xs"]), n("Gather", ["xs", "i1"], ["b"], axis=0),
             n("Concat", ["one", "b", "hid"], ["s"], axis=0),
             n("ConstantOfShape", ["s"], ["z"], value=value),
             n(op, ["x", "W", "R", "", "", "z"] + (["z"] if op == "LSTM" else []),
               ["Y", "Y_h"], hidden_size=H)]
    model = make_model(nodes, {"x": x}, ["Y", "Y_h"], consts)
    sess = lo.load(model)
    assert_outputs(f"{op} fill={fill}", sess.run(None, {"x": x}),
                   ort_run(ort, model, {"x": x}))
    ops_run = [step.node.op for step in sess._graph.plan(["Y", "Y_h"])[0]]
    assert ops_run == ([op] if fill == 0 else ["Shape", "Gather", "Concat", "ConstantOfShape",
                                               op])


# ONNX's other attributes: lstmc's general cell steps (csrc/lstmc.h lstmc_cell_options).
# Every alpha and beta is given: ONNX Runtime takes 0 for a missing one where ONNX's operators
# define other defaults (Affine alpha 1, ThresholdedRelu alpha 1), which lstmc follows.
# ThresholdedRelu is left out here: a jump at alpha, which float32 rounding may cross
# differently (tests/test_cell_options.py checks it against lstmc.reference).
ALPHAS = {"activation_alpha": [0.7, 0.3, 1.2, 0.5, 0.6, 0.8],
          "activation_beta": [0.4, 0.9, 0.2, 0.3, 0.1, 0.5]}
OPTIONS = [
    ("LSTM", {"clip": 0.8}), ("GRU", {"clip": 0.8, "linear_before_reset": 1}),
    ("GRU", {"clip": 0.8}), ("RNN", {"clip": 0.8}), ("LSTM", {"input_forget": 1}),
    ("LSTM", {"input_forget": 1, "clip": 1.5}),
    ("LSTM", {"activations": ["HardSigmoid", "Softsign", "ScaledTanh"], **ALPHAS}),
    ("LSTM", {"activations": ["Sigmoid", "Elu", "Softplus"], **ALPHAS, "clip": 2.0}),
    ("LSTM", {"activations": ["Sigmoid", "Tanh", "Relu"]}),
    ("GRU", {"activations": ["HardSigmoid", "Softsign"], **ALPHAS}),
    ("GRU", {"activations": ["Sigmoid", "ScaledTanh"], **ALPHAS, "linear_before_reset": 1}),
    ("RNN", {"activations": ["Affine"], **ALPHAS}), ("RNN", {"activations": ["Softsign"]}),
    ("RNN", {"activations": ["LeakyRelu"], **ALPHAS}), ("RNN", {"activations": ["Sigmoid"]}),
]


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op,attrs", OPTIONS, ids=lambda v: str(v))
def test_recurrent_options_against_onnxruntime(ort, op, attrs, direction):
    if "activations" in attrs and direction == "bidirectional":   # the reverse's: rotated
        acts = attrs["activations"]
        attrs = {**attrs, "activations": acts + acts[1:] + acts[:1]}
    for weights_as in ("initializers", "graph inputs"):
        for peepholes in ([None, "random"] if op == "LSTM" else [None]):
            model, feeds = recurrent_model(op, direction=direction, lengths=[5, 2, 4],
                                           states=True, weights_as=weights_as, attrs=attrs,
                                           peepholes=peepholes)
            assert_outputs(f"{op} {attrs} {direction} {weights_as} P={peepholes}",
                           lo.load(model).run(None, feeds), ort_run(ort, model, feeds),
                           rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("weights_as", ["initializers", "graph inputs"])
def test_peepholes_against_onnx_reference(direction, weights_as):
    """onnx's own ReferenceEvaluator implements P (it ignores clip, input_forget and all
    activations of LSTM and GRU, so it checks peepholes alone)."""
    from onnx.reference import ReferenceEvaluator
    model, feeds = recurrent_model("LSTM", direction=direction, states=True,
                                   weights_as=weights_as, peepholes="random")
    assert_outputs(f"P {direction} {weights_as}", lo.load(model).run(None, feeds),
                   ReferenceEvaluator(model).run(None, feeds))


def test_mixed_rnn_activations(ort):
    model, feeds = recurrent_model("RNN", direction="bidirectional",
                                   attrs={"activations": ["Relu", "Tanh"]})
    assert_outputs("Relu, Tanh", lo.load(model).run(None, feeds), ort_run(ort, model, feeds))


def test_peepholes_fed_at_run(ort):
    model, feeds = recurrent_model("LSTM", peepholes="random", weights_as="graph inputs")
    sess = lo.load(model)
    assert_outputs("P", sess.run(None, feeds), ort_run(ort, model, feeds))
    feeds["P"] = np.zeros_like(feeds["P"])
    assert_outputs("P = 0", sess.run(None, feeds), ort_run(ort, model, feeds))
    bad = onnx.ModelProto()   # P a constant of the wrong shape
    bad.CopyFrom(model)
    bad.graph.input.remove([vi for vi in bad.graph.input if vi.name == "P"][0])
    bad.graph.initializer.append(numpy_helper.from_array(feeds["P"][:, :-1], "P"))
    with pytest.raises(ValueError, match=r"P \(peepholes\) must have shape \(1, 18\)"):
        lo.load(bad).run(None, {k: v for k, v in feeds.items() if k != "P"})


@pytest.mark.parametrize("op,attrs,match", [
    ("LSTM", {"clip": -1.0}, r"\(LSTM\): clip must be > 0, got -1"),
    ("GRU", {"clip": 0.0}, r"\(GRU\): clip must be > 0"),
    ("LSTM", {"input_forget": 2}, r"input_forget must be 0 or 1"),
    ("RNN", {"activations": ["Swish"]}, r"\(RNN\): activations: unknown function 'swish'"),
    ("GRU", {"activations": ["Sigmoid"]}, r"activations lists 1 functions, GRU forward takes 2"),
    ("RNN", {"activations": ["ScaledTanh"], "activation_alpha": [2.0]},
     r"scaledtanh needs activation_beta, and ONNX defines no default"),
])
def test_bad_recurrent_options(op, attrs, match):
    model, _ = recurrent_model(op, attrs=attrs)
    with pytest.raises(ValueError, match=match):
        lo.load(model)


def test_activation_alpha_and_beta_are_consumed_in_order():
    """Each function that reads an alpha (beta) takes the next one; past the list's end, its
    ONNX operator's default: LeakyRelu 0.01, HardSigmoid 0.2, 0.5, Affine 1, 0."""
    from lstmc.onnx._node import NodeInfo
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=2,
                            direction="bidirectional",
                            activations=["LeakyRelu", "Tanh", "Affine", "HardSigmoid",
                                         "Relu", "LeakyRelu"],
                            activation_alpha=[0.5, 2.0], activation_beta=[3.0])
    from lstmc.onnx._rnn import _RecurrentNode
    acts = _RecurrentNode(NodeInfo(node, 0, 17, {}, {})).options["activations"]
    assert acts == [("leakyrelu", 0.5, None), ("tanh", None, None), ("affine", 2.0, 3.0),
                    ("hardsigmoid", 0.2, 0.5), ("relu", None, None),
                    ("leakyrelu", 0.01, None)]


def test_recurrent_node_errors():
    model, feeds = recurrent_model("LSTM", lengths=[5, 2, 4])
    sess = lo.load(model)
    with pytest.raises(ValueError, match="sequence_lens"):
        sess.run(None, {**feeds, "L": np.array([6, 2, 4], np.int32)})
    model, _ = recurrent_model("GRU", direction="sideways")
    with pytest.raises(ValueError, match="direction"):
        lo.load(model)


def test_loading_leaves_lstmcs_random_stream_alone():
    import lstmc
    lstmc.manual_seed(3)
    a = lstmc.nn.LSTM(2, 3).weight_ih_l0.data.copy()
    lstmc.manual_seed(3)
    lo.load(recurrent_model("LSTM")[0])
    assert_close("weights", lstmc.nn.LSTM(2, 3).weight_ih_l0.data, a, 0, 0)


# ---- round trips from torch.onnx.export -----------------------------------------------------
def torch_export(torch, module, args, input_names, output_names, dynamic_axes):
    """The TorchScript exporter's file (bytes)."""
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, f, dynamo=False, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes,
                          opset_version=17)
    return f.getvalue()


def torch_export_dynamo(torch, module, args, input_names, dynamic_shapes):
    """The dynamo exporter's file (bytes); needs onnxscript."""
    pytest.importorskip("onnxscript")
    import logging
    logging.disable(logging.WARNING)   # the exporter reports each step at WARNING
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module.eval(), args, dynamo=True,
                                        input_names=input_names,
                                        dynamic_shapes=dynamic_shapes, opset_version=18)
    finally:
        logging.disable(logging.NOTSET)
    return program.model_proto.SerializeToString()


def check_round_trip(torch, ort, module, data, input_names, output_names, run_args):
    """lstmc's run of the file `data` on run_args against torch's module and ONNX Runtime."""
    sess = lo.load(data)
    assert [a.name for a in sess.get_inputs()] == input_names
    if output_names is not None:
        assert [a.name for a in sess.get_outputs()] == output_names
    feeds = {n: a.numpy() for n, a in zip(input_names, run_args)}
    got = sess.run(None, feeds)
    with torch.no_grad():
        expected = module.eval()(*run_args)
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    assert_outputs("lstmc vs torch", got, [e.numpy() for e in expected])
    assert_outputs("lstmc vs onnxruntime", got,
                   ort_run(ort, onnx.load_model_from_string(data), feeds))


def tagger(torch):
    """Embedding + 2-layer bidirectional LSTM + Linear."""
    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)
            self.lstm = torch.nn.LSTM(8, 16, num_layers=2, bidirectional=True)
            self.fc = torch.nn.Linear(32, 5)

        def forward(self, x):
            return self.fc(self.lstm(self.emb(x))[0])

    torch.manual_seed(0)
    return Tagger()


def test_round_trip_embedding_bilstm_linear(torch, ort):
    model = tagger(torch)
    data = torch_export(torch, model, (torch.randint(0, 50, (7, 3)),), ["x"], ["y"],
                        {"x": {0: "T", 1: "B"}})
    check_round_trip(torch, ort, model, data, ["x"], ["y"], (torch.randint(0, 50, (11, 4)),))


def test_round_trip_batch_first_gru(torch, ort):
    torch.manual_seed(1)
    gru = torch.nn.GRU(5, 7, num_layers=2, batch_first=True)
    data = torch_export(torch, gru, (torch.randn(3, 6, 5),), ["x"], ["y", "h"],
                        {"x": {0: "B", 1: "T"}})
    check_round_trip(torch, ort, gru, data, ["x"], ["y", "h"], (torch.randn(2, 9, 5),))


def test_round_trip_relu_rnn(torch, ort):
    torch.manual_seed(2)
    rnn = torch.nn.RNN(4, 6, nonlinearity="relu", bidirectional=True)
    h0 = torch.randn(2, 3, 6)
    data = torch_export(torch, rnn, (torch.randn(5, 3, 4), h0), ["x", "h0"], ["y", "h"],
                        {"x": {0: "T"}})
    check_round_trip(torch, ort, rnn, data, ["x", "h0"], ["y", "h"], (torch.randn(8, 3, 4), h0))


def test_round_trip_packed_lengths(torch, ort):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class Packed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(4, 6, bidirectional=True)

        def forward(self, x, lengths):
            y, (h, c) = self.lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))
            return pad_packed_sequence(y, total_length=x.shape[0])[0], h, c

    torch.manual_seed(3)
    model = Packed()
    data = torch_export(torch, model, (torch.randn(7, 3, 4), torch.tensor([7, 2, 5])),
                        ["x", "lengths"], ["y", "h", "c"],
                        {"x": {0: "T", 1: "B"}, "lengths": {0: "B"}})
    check_round_trip(torch, ort, model, data, ["x", "lengths"], ["y", "h", "c"],
                     (torch.randn(9, 4, 4), torch.tensor([3, 9, 1, 6])))


def test_round_trip_dynamo_embedding_bilstm_linear(torch, ort):
    """The dynamo exporter fixes T=7 in the final Reshape; B stays free."""
    model = tagger(torch)
    data = torch_export_dynamo(torch, model, (torch.randint(0, 50, (7, 3)),), ["x"],
                               ({1: torch.export.Dim("B")},))
    check_round_trip(torch, ort, model, data, ["x"], None, (torch.randint(0, 50, (7, 5)),))


def test_round_trip_dynamo_batch_first_gru(torch, ort):
    torch.manual_seed(1)
    gru = torch.nn.GRU(5, 7, num_layers=2, batch_first=True)
    data = torch_export_dynamo(torch, gru, (torch.randn(3, 6, 5),), ["x"],
                               ({0: torch.export.Dim("B"), 1: torch.export.Dim("T")},))
    check_round_trip(torch, ort, gru, data, ["x"], None, (torch.randn(2, 9, 5),))


# ---- the executor's operators against ONNX Runtime ------------------------------------------
_rng = np.random.default_rng(7)
F = _rng.standard_normal((2, 3, 4)).astype(np.float32)
M = _rng.standard_normal((4, 5)).astype(np.float32)
I64 = np.array([[3, -7, 0], [-2, 5, 9]], np.int64)


def i64(*v):
    return np.array(v, np.int64)


# (id, op, opset, inputs (name -> array; the names are the node's inputs in order, "" for an
# omitted one), attributes, number of outputs)
OP_CASES = [
    ("gather", "Gather", 17, {"d": M, "i": i64(3, -1, 0)}, {}, 1),
    ("gather_axis1", "Gather", 17, {"d": F, "i": i64(-1, 1)}, {"axis": 1}, 1),
    ("matmul", "MatMul", 17, {"a": F, "b": M}, {}, 1),
    ("gemm", "Gemm", 17, {"a": M.T.copy(), "b": M.T.copy(), "c": M[0]},
     {"transA": 0, "transB": 1, "alpha": 0.5, "beta": 2.0}, 1),
    ("gemm_noc", "Gemm", 17, {"a": M, "b": M}, {"transA": 1}, 1),
    ("add", "Add", 17, {"a": F, "b": M[:, 0].copy()}, {}, 1),
    ("sub", "Sub", 17, {"a": F, "b": F[:1]}, {}, 1),
    ("mul", "Mul", 17, {"a": F, "b": np.array(3.0, np.float32)}, {}, 1),
    ("div", "Div", 17, {"a": F, "b": F + 3}, {}, 1),
    ("div_int", "Div", 17, {"a": I64, "b": i64(2, -3, 4)}, {}, 1),
    ("relu", "Relu", 17, {"x": F}, {}, 1),
    ("tanh", "Tanh", 17, {"x": F * 5}, {}, 1),
    ("sigmoid", "Sigmoid", 17, {"x": F * 30}, {}, 1),
    ("softmax_11", "Softmax", 11, {"x": F}, {"axis": 1}, 1),
    ("softmax_13", "Softmax", 13, {"x": F}, {"axis": 1}, 1),
    ("logsoftmax_11", "LogSoftmax", 11, {"x": F}, {}, 1),
    ("logsoftmax_13", "LogSoftmax", 13, {"x": F}, {}, 1),
    ("transpose", "Transpose", 17, {"x": F}, {"perm": [2, 0, 1]}, 1),
    ("transpose_default", "Transpose", 17, {"x": F}, {}, 1),
    ("squeeze_11", "Squeeze", 11, {"x": F[:1]}, {"axes": [0]}, 1),
    ("squeeze_13", "Squeeze", 13, {"x": F[:, :1], "a": i64(-2)}, {}, 1),
    ("squeeze_all", "Squeeze", 13, {"x": F[:1, :1]}, {}, 1),
    ("unsqueeze_11", "Unsqueeze", 11, {"x": F}, {"axes": [0, -1]}, 1),
    ("unsqueeze_13", "Unsqueeze", 13, {"x": F, "a": i64(1, 4)}, {}, 1),
    ("reshape", "Reshape", 17, {"x": F, "s": i64(0, -1, 2)}, {}, 1),
    ("reshape_allowzero", "Reshape", 17, {"x": F, "s": i64(4, 6)}, {"allowzero": 1}, 1),
    ("flatten", "Flatten", 17, {"x": F}, {"axis": 2}, 1),
    ("flatten_neg", "Flatten", 17, {"x": F}, {"axis": -1}, 1),
    ("flatten_0", "Flatten", 17, {"x": F}, {"axis": 0}, 1),
    ("concat", "Concat", 17, {"a": F, "b": F[:, :2]}, {"axis": -2}, 1),
    ("slice_9", "Slice", 9, {"x": F}, {"starts": [1, -3], "ends": [100, -1], "axes": [1, 2]},
     1),
    ("slice_13", "Slice", 13, {"x": F, "s": i64(-1, 0), "e": i64(-100, 99), "a": i64(2, 1),
                               "t": i64(-2, 2)}, {}, 1),
    ("slice_noaxes", "Slice", 13, {"x": F, "s": i64(1), "e": i64(2)}, {}, 1),
    ("split_11", "Split", 11, {"x": F}, {"axis": 2, "split": [1, 3]}, 2),
    ("split_13", "Split", 13, {"x": F, "s": i64(2, 1)}, {"axis": 1}, 2),
    ("split_equal", "Split", 13, {"x": F}, {"axis": 2}, 2),
    ("split_18", "Split", 18, {"x": F}, {"axis": 1, "num_outputs": 2}, 2),
    ("shape", "Shape", 17, {"x": F}, {"start": 1, "end": -1}, 1),
    ("shape_all", "Shape", 13, {"x": F}, {}, 1),
    ("cast", "Cast", 17, {"x": F * 3}, {"to": TensorProto.INT64}, 1),
    ("cast_double", "Cast", 17, {"x": I64}, {"to": TensorProto.DOUBLE}, 1),
    ("constant_of_shape", "ConstantOfShape", 17, {"s": i64(2, 3)},
     {"value": numpy_helper.from_array(np.array([7], np.int64))}, 1),
    ("constant_of_shape_default", "ConstantOfShape", 17, {"s": i64(3)}, {}, 1),
    ("identity", "Identity", 17, {"x": F}, {}, 1),
    ("dropout", "Dropout", 17, {"x": F, "r": np.array(0.3, np.float32)}, {}, 2),
    ("dropout_11", "Dropout", 11, {"x": F}, {"ratio": 0.2}, 1),
    ("where", "Where", 17, {"c": F > 0, "a": F, "b": M[:, 0].copy()}, {}, 1),
    ("equal", "Equal", 17, {"a": I64, "b": i64(3, 5, 0)}, {}, 1),
    ("reducemean_13", "ReduceMean", 13, {"x": F}, {"axes": [0, -1], "keepdims": 0}, 1),
    ("reducemean_18", "ReduceMean", 18, {"x": F, "a": i64(1)}, {}, 1),
    ("reducemean_all", "ReduceMean", 18, {"x": F}, {}, 1),
    ("reducesum_13", "ReduceSum", 13, {"x": F, "a": i64(2)}, {"keepdims": 0}, 1),
    ("reduceprod", "ReduceProd", 17, {"x": I64}, {"keepdims": 0}, 1),
    ("argmax", "ArgMax", 17, {"x": F}, {"axis": -1}, 1),
    ("argmax_last", "ArgMax", 17, {"x": np.array([[1, 3, 3], [2, 2, 0]], np.float32)},
     {"axis": 1, "keepdims": 0, "select_last_index": 1}, 1),
    ("topk", "TopK", 17, {"x": np.array([[1, 3, 3, 0], [2, 5, 0, 5]], np.int64), "k": i64(3)},
     {}, 2),
    ("range", "Range", 17, {"a": np.array(7, np.int64), "b": np.array(-2, np.int64),
                            "c": np.array(-3, np.int64)}, {}, 1),
    ("scatter_elements", "ScatterElements", 17,
     {"d": np.zeros((3, 4), np.float32), "i": i64(2, -1, 0).reshape(1, 3),
      "u": np.ones((1, 3), np.float32)}, {"axis": 1}, 1),
    ("expand", "Expand", 17, {"x": F[:, :1], "s": i64(2, 1, 3, 1)}, {}, 1),
    ("tile", "Tile", 17, {"x": M, "r": i64(2, 1)}, {}, 1),
    ("pow", "Pow", 17, {"a": np.abs(F), "b": np.array(1.5, np.float32)}, {}, 1),
    ("less", "Less", 17, {"a": F, "b": M[:, 0].copy()}, {}, 1),
    ("neg_exp", "Exp", 17, {"x": -F}, {}, 1),
    ("cumsum", "CumSum", 17, {"x": I64, "a": np.array(1, np.int64)}, {}, 1),
    ("cumsum_exclusive_reverse", "CumSum", 17, {"x": F, "a": np.array(-1, np.int32)},
     {"exclusive": 1, "reverse": 1}, 1),
    ("max", "Max", 17, {"a": F, "b": M[:, 0].copy(), "c": np.array(0.1, np.float32)}, {}, 1),
    ("min", "Min", 17, {"a": I64, "b": i64(1, 2, 3)}, {}, 1),
    ("gather_elements", "GatherElements", 17, {"d": M, "i": i64(0, -1, 2, 1).reshape(2, 2)},
     {"axis": 0}, 1),
    ("greater_or_equal", "GreaterOrEqual", 17, {"a": I64, "b": i64(3, 5, 0)}, {}, 1),
    ("less_or_equal", "LessOrEqual", 17, {"a": F, "b": M[:, 0].copy()}, {}, 1),
    ("and_or", "And", 17, {"a": F > 0, "b": F < 1}, {}, 1),
    ("or", "Or", 17, {"a": F > 1, "b": F < -1}, {}, 1),
]


def op_model(op, opset, inputs, attrs, n_out, as_constants):
    names = [f"o{i}" for i in range(n_out)]
    node = helper.make_node(op, list(inputs), names, **attrs)
    if as_constants:   # everything folds at load
        return make_model([node], {}, names, inputs, opset), {}
    return make_model([node], inputs, names, (), opset), dict(inputs)


@pytest.mark.parametrize("inputs_as", ["graph inputs", "constants"])
@pytest.mark.parametrize("case", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_operator_against_onnxruntime(ort, case, inputs_as):
    name, op, opset, inputs, attrs, n_out = case
    model, feeds = op_model(op, opset, inputs, attrs, n_out, inputs_as == "constants")
    got = lo.load(model).run(None, feeds)
    expected = ort_run(ort, model, feeds)
    assert [np.shape(g) for g in got] == [e.shape for e in expected]
    assert_outputs(name, got, expected, 1e-6, 1e-7)


def test_constant_node_and_folding():
    c = helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0, 3.0])
    k = helper.make_node("Constant", [], ["k"], value_int=2)
    mul = helper.make_node("Mul", ["c", "c"], ["cc"])   # folded at load
    add = helper.make_node("Add", ["x", "cc"], ["y"])
    x = np.array([1, 1, 1], np.float32)
    sess = lo.load(make_model([c, k, mul, add], {"x": x}, ["y", "k"]))
    assert len(sess._graph.steps) == 1   # only Add runs per call
    y, kk = sess.run(None, {"x": x})
    assert_close("y", y, np.array([2, 5, 10], np.float32), 0, 0)
    assert kk.dtype == np.int64 and kk == 2


# ---- Session: names, shapes, types, output selection ---------------------------------------
def test_session_describes_inputs_and_outputs():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, None])
    n = helper.make_tensor_value_info("n", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, None])
    z = helper.make_tensor_value_info("z", TensorProto.INT64, [2])
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["n"], ["z"])]
    graph = helper.make_graph(nodes, "g", [x, n], [y, z],
                              [numpy_helper.from_array(np.ones(3, np.float32), "unused")])
    sess = lo.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [(a.name, a.shape, a.type) for a in sess.get_inputs()] == \
        [("x", ["batch", 3, None], "tensor(float)"), ("n", [2], "tensor(int64)")]
    assert [(a.name, a.shape, a.type) for a in sess.get_outputs()] == \
        [("y", ["batch", 3, None], "tensor(float)"), ("z", [2], "tensor(int64)")]
    feeds = {"x": -np.ones((2, 3, 5), np.float32), "n": i64(4, -2)}
    y_, z_ = sess.run(None, feeds)
    z2, y2 = sess.run(["z", "y"], feeds)
    assert not y_.any() and (z_ == i64(-4, 2)).all()
    assert (z2 == z_).all() and (y2 == y_).all()
    (z3,) = sess.run(["z"], {"x": np.zeros((1, 3, 1), np.float32), "n": i64(1, 2)})
    assert (z3 == i64(-1, -2)).all()


def test_session_accepts_path_bytes_and_proto(tmp_path):
    model, feeds = recurrent_model("GRU")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    expected = lo.load(model).run(None, feeds)
    for source in (str(path), path, model.SerializeToString()):
        assert_outputs(str(type(source)), lo.load(source).run(None, feeds), expected, 0, 0)


# ---- errors ---------------------------------------------------------------------------------
X3 = np.zeros((2, 3), np.float32)


def test_unknown_operator_names_node_and_op():
    model = make_model([helper.make_node("Foo", ["x"], ["y"], name="odd")], {"x": X3}, ["y"])
    with pytest.raises(lo.UnsupportedModelError, match=r"node 'odd' \(Foo\).*operator Foo"):
        lo.load(model)


def test_unknown_attribute_names_it():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r", alpha=0.1)],
                       {"x": X3}, ["y"])
    with pytest.raises(lo.UnsupportedModelError, match=r"node 'r' \(Relu\): attribute alpha"):
        lo.load(model)


def test_other_domains_and_old_opsets_are_refused():
    node = helper.make_node("Relu", ["x"], ["y"], domain="com.example")
    model = make_model([node], {"x": X3}, ["y"])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(lo.UnsupportedModelError, match="com.example"):
        lo.load(model)
    with pytest.raises(lo.UnsupportedModelError, match="opset 6"):
        lo.load(make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": X3}, ["y"], opset=6))


def test_inputs_the_schema_requires_or_forbids():
    nodes = [helper.make_node("LSTM", ["x", "", "r"], ["y"], name="l", hidden_size=2)]
    with pytest.raises(ValueError, match=r"node 'l' \(LSTM\): input 1 \(W\) is required"):
        lo.load(make_model(nodes, {"x": X3, "r": X3}, ["y"]))
    nodes = [helper.make_node("Relu", ["x", "x"], ["y"], name="r")]
    with pytest.raises(ValueError, match=r"node 'r' \(Relu\): 2 inputs"):
        lo.load(make_model(nodes, {"x": X3}, ["y"]))


def test_newer_operator_versions_are_refused():
    """Range changed in opset 27: lstmc follows version 11 and must not run 27 by its rules."""
    nodes = [helper.make_node("Range", ["a", "b", "c"], ["y"], name="rg")]
    one = np.array(1, np.int64)
    with pytest.raises(lo.UnsupportedModelError, match=r"node 'rg' \(Range\): version 27"):
        lo.load(make_model(nodes, {"a": one, "b": one, "c": one}, ["y"], opset=27))


def test_float16_recurrent_weights_are_refused():
    model, _ = recurrent_model("GRU")
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    with pytest.raises(lo.UnsupportedModelError, match=r"\(GRU\): weights of type float16"):
        lo.load(model)


def test_cycle_is_refused():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
             helper.make_node("Relu", ["a"], ["b"], name="n2")]
    with pytest.raises(ValueError, match="cycle.*n[12]"):
        lo.load(make_model(nodes, {"x": X3}, ["b"]))


def test_missing_input_names_node_and_input():
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")]
    with pytest.raises(ValueError, match=r"node 'adder' \(Add\): input 'ghost'"):
        lo.load(make_model(nodes, {"x": X3}, ["y"]))


def test_unproduced_output_and_redefined_value_are_refused():
    with pytest.raises(ValueError, match="graph output 'z'"):
        lo.load(make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": X3}, ["z"]))
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])]
    with pytest.raises(ValueError, match="'y' is already defined"):
        lo.load(make_model(nodes, {"x": X3}, ["y"]))


def test_bad_feeds_are_refused_clearly():
    sess = lo.load(make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": X3}, ["y"]))
    with pytest.raises(TypeError, match=r"input 'x' must be tensor\(float\).*float64"):
        sess.run(None, {"x": X3.astype(np.float64)})
    with pytest.raises(ValueError, match=r"input 'x' must have shape \[2, 3\], got \(2, 4\)"):
        sess.run(None, {"x": np.zeros((2, 4), np.float32)})
    with pytest.raises(ValueError, match=r"input 'x' must have shape \[2, 3\], got \(6,\)"):
        sess.run(None, {"x": np.zeros(6, np.float32)})
    with pytest.raises(ValueError, match="input 'x' is missing"):
        sess.run(None, {})
    with pytest.raises(ValueError, match="'q' is not an input"):
        sess.run(None, {"x": X3, "q": X3})
    with pytest.raises(ValueError, match="'q' is not an output"):
        sess.run(["q"], {"x": X3})


def test_run_errors_name_the_node():
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="shaper")]
    model = make_model(nodes, {"x": np.zeros((2, 3), np.float32), "s": i64(4, 4)}, ["y"])
    with pytest.raises(ValueError, match=r"node 'shaper' \(Reshape\)"):
        lo.load(model).run(None, {"x": X3, "s": i64(4, 4)})


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        lo.load(b"\xff\x00 certainly not protobuf")
    with pytest.raises(ValueError, match="no graph"):
        lo.load(b"")
    with pytest.raises(FileNotFoundError):
        lo.load(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="path, bytes or an onnx.ModelProto"):
        lo.load(42)


def test_initializer_sizes_are_checked_before_allocating():
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], {"x": X3}, ["y"],
                       {"w": np.ones(3, np.float32)})
    model.graph.initializer[0].dims[:] = [1 << 40]
    with pytest.raises(ValueError, match=r"initializer 'w': shape \(1099511627776,\) needs"):
        lo.load(model)
    model.graph.initializer[0].dims[:] = [4]
    with pytest.raises(ValueError, match=r"initializer 'w': shape \(4,\) needs 16 bytes"):
        lo.load(model)


def test_absurd_constant_of_shape_is_refused_at_load():
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["y"])]
    model = make_model(nodes, {}, ["y"], {"s": i64(1 << 20, 1 << 20)})
    with pytest.raises(ValueError, match="ConstantOfShape.*more than lstmc accepts"):
        lo.load(model)


def test_onnx_is_imported_lazily_and_named_when_missing():
    code = ("import sys, lstmc, lstmc.onnx\n"
            "assert 'onnx' not in sys.modules, 'import lstmc.onnx imported onnx'\n"
            "sys.modules['onnx'] = None\n"
            "try:\n"
            "    lstmc.onnx.load(b'')\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "lstmc[onnx]" in out
