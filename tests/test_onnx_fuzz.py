"""Hostile and corrupted ONNX files: lstmc.onnx.load and Session.run, and `convert` to .lstmc,
either work or raise a clear error (ValueError, TypeError, IndexError or
UnsupportedModelError, which is a ValueError), quickly, never crash and never allocate
absurdly. The files are mutations of a
model laid out as torch.onnx.export lays out a tagger (Embedding, LSTM with its zero initial
state built from the input's shape, Linear)."""
import time

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lstmc.onnx as lo  # noqa: E402

CLEAR_ERRORS = (ValueError, TypeError, IndexError)
SECONDS = 5.0   # per load-and-run; a correct one takes milliseconds
V, E, H, C = 11, 5, 6, 3


def tagger_model():
    rng = np.random.default_rng(0)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def i64(*v):
        return np.array(v, np.int64)

    inits = {"emb": f32(V, E), "W": f32(1, 4 * H, E), "R": f32(1, 4 * H, H),
             "B": f32(1, 8 * H), "fc_w": f32(H, C), "fc_b": f32(C), "one": i64(1),
             "hid": i64(H), "idx1": i64(1), "shape_out": i64(0, 0, -1)}
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "x"], ["e"]),
        n("Shape", ["x"], ["xs"]),
        n("Gather", ["xs", "idx1"], ["batch"], axis=0),
        n("Concat", ["one", "batch", "hid"], ["h0_shape"], axis=0),
        n("ConstantOfShape", ["h0_shape"], ["h0"]),
        n("LSTM", ["e", "W", "R", "B", "", "h0", "h0"], ["Y", "Y_h", "Y_c"], hidden_size=H),
        n("Transpose", ["Y"], ["Yt"], perm=[0, 2, 1, 3]),
        n("Reshape", ["Yt", "shape_out"], ["y2"]),
        n("MatMul", ["y2", "fc_w"], ["logits0"]),
        n("Add", ["logits0", "fc_b"], ["logits"]),
        n("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tagger", [helper.make_tensor_value_info("x", TensorProto.INT64, ["T", "B"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["T", "B", C]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "B", H])],
        [numpy_helper.from_array(a, k) for k, a in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


MODEL = tagger_model()
DATA = MODEL.SerializeToString()
FEEDS = {"x": np.array([[1, 2], [3, 4], [10, 0], [5, 5]], np.int64)}
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def load_and_run(source):
    """Load and run; a clear error is an acceptable answer, anything else fails the test."""
    start = time.perf_counter()
    try:
        lo.load(source).run(None, FEEDS)
    except CLEAR_ERRORS as e:
        assert str(e), f"{type(e).__name__} without a message"
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS, f"took {elapsed:.1f} s"


def test_the_unmutated_model_runs():
    probs, y_h = lo.load(DATA).run(None, FEEDS)
    assert probs.shape == (4, 2, C) and y_h.shape == (1, 2, H)
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-6)


@FUZZ
@given(cut=st.integers(0, len(DATA) - 1))
def test_truncated_files(cut):
    load_and_run(DATA[:cut])


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(DATA) - 1), st.integers(1, 255)),
                      min_size=1, max_size=8))
def test_flipped_bytes(flips):
    data = bytearray(DATA)
    for at, mask in flips:
        data[at] ^= mask
    load_and_run(bytes(data))


ABSURD = st.sampled_from([1 << 40, 1 << 62, (1 << 31) + 1, 1 << 20, -1, -(1 << 40), 0, 7])


@FUZZ
@given(which=st.integers(0, 9), axis=st.integers(0, 3), dim=ABSURD)
def test_initializer_dims_that_do_not_match_the_data(which, axis, dim):
    m = onnx.ModelProto()
    m.CopyFrom(MODEL)
    t = m.graph.initializer[which]
    dims = list(t.dims) or [1]
    dims[axis % len(dims)] = dim
    t.dims[:] = dims
    load_and_run(m)


@FUZZ
@given(which=st.sampled_from(["one", "hid", "idx1", "shape_out"]), values=st.lists(
    st.one_of(ABSURD, st.integers(-3, 12)), min_size=0, max_size=4))
def test_absurd_shape_values(which, values):
    """Values that drive shapes (a ConstantOfShape's dims, a Reshape's target, a Gather's
    index) set to absurd numbers, as a hostile file would."""
    m = onnx.ModelProto()
    m.CopyFrom(MODEL)
    for i, t in enumerate(m.graph.initializer):
        if t.name == which:
            arr = np.array(values, np.int64)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, which))
    load_and_run(m)


@FUZZ
@given(attribute=st.sampled_from(["hidden_size", "axis", "perm"]),
       value=st.one_of(ABSURD, st.integers(-5, 10)))
def test_absurd_attributes(attribute, value):
    m = onnx.ModelProto()
    m.CopyFrom(MODEL)
    for node in m.graph.node:
        for a in node.attribute:
            if a.name == attribute:
                if a.type == onnx.AttributeProto.INTS:
                    a.ints[:] = [value] * len(a.ints)
                else:
                    a.i = value
    load_and_run(m)


def test_the_unmutated_model_converts(tmp_path):
    """convert .onnx -> .lstmc reads the model as Embedding + LSTM + Dense(softmax), so that
    the mutations below reach the converter's trace and checks."""
    from lstmc.convert import convert
    from lstmc.models import load_model
    (tmp_path / "t.onnx").write_bytes(DATA)
    convert(tmp_path / "t.onnx", tmp_path / "t.lstmc")
    model = load_model(tmp_path / "t.lstmc")
    assert [type(k).__name__ for k in model.layers] == ["Embedding", "LSTM", "Dense"]
    probs = model.predict(FEEDS["x"].T, verbose=0)           # the model takes (batch, time)
    np.testing.assert_allclose(probs.transpose(1, 0, 2), lo.load(DATA).run(None, FEEDS)[0],
                               rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cut=st.integers(len(DATA) // 2, len(DATA)),
       flips=st.lists(st.tuples(st.integers(0, len(DATA) - 1), st.integers(1, 255)),
                      max_size=4))
def test_damaged_files_convert_or_raise_clear_errors(tmp_path, cut, flips):
    """Truncated and flipped files through `convert` to .lstmc: a clear error leaves no file."""
    from lstmc.convert import convert
    data = bytearray(DATA[:cut])
    for at, mask in flips:
        if at < len(data):
            data[at] ^= mask
    src, dst = tmp_path / "d.onnx", tmp_path / "d.lstmc"
    src.write_bytes(bytes(data))
    dst.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        convert(src, dst)
    except CLEAR_ERRORS as e:
        assert str(e), f"{type(e).__name__} without a message"
        assert not dst.exists()
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS, f"took {elapsed:.1f} s"
