"""lstmc.quantize on an lstmc.onnx Session: its LSTM / GRU / RNN nodes run on int8 or bf16
weights, with the same bits as the lstmc.nn module of the same weights quantized; the
session it came from is unchanged; what cannot be quantized is refused naming the node."""
import numpy as np
import pytest

import lstmc
from lstmc import nn

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

import lstmc.onnx  # noqa: E402


def _session(m, tmp_path):
    path = tmp_path / "m.onnx"
    lstmc.onnx.export(m, str(path))
    return lstmc.onnx.load(str(path))


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
@pytest.mark.parametrize("make", [lambda: nn.LSTM(8, 24, num_layers=2, bidirectional=True),
                                  lambda: nn.GRU(8, 20, num_layers=2),
                                  lambda: nn.RNN(8, 17)])
def test_a_quantized_session_is_the_quantized_module(tmp_path, make, dtype):
    lstmc.manual_seed(0)
    m = make().eval()
    sess = _session(m, tmp_path)
    x = np.random.default_rng(0).standard_normal((6, 3, 8)).astype(np.float32)
    feed = {sess.get_inputs()[0].name: x}
    before = sess.run(None, feed)
    q = lstmc.quantize(sess, dtype)
    got = q.run(None, feed)[0]
    want = np.asarray(lstmc.quantize(m, dtype)(x)[0])
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    # the float session is as it was
    for a, b in zip(sess.run(None, feed), before):
        np.testing.assert_array_equal(a, b)
    assert 0 < np.abs(got.reshape(want.shape) - before[0].reshape(want.shape)).max() < 0.05
    assert q.nodes() == sess.nodes()


def _runtime_weights_model():
    """An LSTM node whose W and R are graph inputs (fed at run time)"""
    I, H = 3, 4
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=H)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", I]),
         helper.make_tensor_value_info("W", TensorProto.FLOAT, [1, 4 * H, I]),
         helper.make_tensor_value_info("R", TensorProto.FLOAT, [1, 4 * H, H])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _no_rnn_model():
    node = helper.make_node("Relu", ["X"], ["Y"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_refusals_name_the_node(tmp_path):
    with pytest.raises(ValueError, match="fed at run time"):
        lstmc.quantize(lstmc.onnx.load(_runtime_weights_model()), "int8")
    with pytest.raises(ValueError, match="no LSTM, GRU or RNN node"):
        lstmc.quantize(lstmc.onnx.load(_no_rnn_model()), "bf16")
    before = _session(nn.GRU(4, 6, reset_after=False).eval(), tmp_path)
    for dtype in ("int8", "bf16"):
        with pytest.raises(ValueError, match=r"GRU.*reset_after=True"):
            lstmc.quantize(before, dtype)
    with pytest.raises(ValueError, match="dtype"):
        lstmc.quantize(before, "fp8")
