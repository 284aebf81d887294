"""ONNX for lstmc (docs/spec.md section 9; the `lstmc[onnx]` extra), with ONNX Runtime's
calling convention:

    sess = lstmc.onnx.load("model.onnx")     # path, bytes or onnx.ModelProto
    outs = sess.run(None, {"input": x})      # list, graph-output order; or run(["y"], feeds)
    lstmc.onnx.export(model, "model.onnx")   # an lstmc.nn or Keras-face model as an ONNX file

LSTM, GRU and RNN nodes run on lstmc's kernels (`_rnn`), the other operators over numpy
(`_ops`), in a graph compiled once at load (`_graph`). `_convert` reads a graph that is a
chain of lstmc's layers as an lstmc model (`python -m lstmc convert model.onnx model.lstmc`). What lstmc cannot run raises
UnsupportedModelError naming the node, op and attribute. The onnx package is imported only
when `load` or `export` runs, so `import lstmc.onnx` needs only lstmc's own dependencies.
"""
from lstmc.onnx._node import UnsupportedModelError
from lstmc.onnx._session import Session, load
from lstmc.onnx.export import export

__all__ = ["load", "Session", "export", "UnsupportedModelError"]
