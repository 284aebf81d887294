"""Run ONNX models on lstmc (spec.md section 9), with ONNX Runtime's calling convention:

    sess = lstmc.onnx.load("model.onnx")     # path, bytes or onnx.ModelProto
    outs = sess.run(None, {"input": x})      # list, graph-output order; or run(["y"], feeds)

LSTM, GRU and RNN nodes run on lstmc's kernels (`_rnn`), the other operators over numpy
(`_ops`), in a graph compiled once at load (`_graph`). What lstmc cannot run raises
UnsupportedModelError naming the node, op and attribute. Needs the onnx package
(`pip install 'lstmc[onnx]'`), imported only by `load`.
"""
from lstmc.onnx._node import UnsupportedModelError
from lstmc.onnx._session import Session, load

__all__ = ["load", "Session", "UnsupportedModelError"]
