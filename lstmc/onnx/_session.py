"""`load` and `Session`: ONNX Runtime's calling convention over a compiled `_graph.Graph`."""
import os

import numpy as np

from lstmc.onnx._graph import Graph


def load(model):
    """An ONNX model -> a Session that runs it on lstmc.

    Parameters
    ----------
    model : str or os.PathLike (a .onnx file; external data is read from beside it), bytes
        (a serialized ModelProto) or onnx.ModelProto

    Raises ImportError without the onnx package (the `lstmc[onnx]` extra), ValueError for a
    file that is not a valid model (bad protobuf, a cycle, a missing input, tensors whose data
    do not match their dims) and lstmc.onnx.UnsupportedModelError for a valid model that
    lstmc cannot run as specified (it names the node, op and attribute).
    """
    try:
        import onnx
    except ImportError as e:
        raise ImportError("lstmc.onnx.load needs the onnx package: pip install "
                          "'lstmc[onnx]'") from e
    return Session(Graph(_model_proto(model, onnx)))


def _model_proto(model, onnx):
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray, memoryview)):
        try:
            return onnx.load_model_from_string(bytes(model))
        except Exception as e:
            raise ValueError(f"not a valid ONNX model: {e}") from None
    if isinstance(model, (str, os.PathLike)):
        if not os.path.isfile(model):
            raise FileNotFoundError(f"no such model file: {os.fspath(model)!r}")
        try:
            return onnx.load(model)
        except Exception as e:
            raise ValueError(f"{os.fspath(model)!r} is not a valid ONNX model: {e}") from None
    raise TypeError(f"load takes a path, bytes or an onnx.ModelProto, got "
                    f"{type(model).__name__}")


class _InputCheck:
    """What a graph input's declaration demands of a fed array."""

    __slots__ = ("name", "slot", "dtype", "type", "shape", "fixed")

    def __init__(self, arg, slot):
        self.name, self.slot, self.dtype, self.type = arg.name, slot, arg.dtype, arg.type
        self.shape = arg.shape
        self.fixed = () if arg.shape is None else \
            tuple((i, d) for i, d in enumerate(arg.shape) if isinstance(d, int))

    def __call__(self, x):
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if self.dtype is not None and x.dtype != self.dtype:
            raise TypeError(f"input {self.name!r} must be {self.type} ({self.dtype}), got "
                            f"{x.dtype}")
        if self.shape is not None:
            if x.ndim != len(self.shape) or any(x.shape[i] != d for i, d in self.fixed):
                raise ValueError(f"input {self.name!r} must have shape {self.shape}, got "
                                 f"{x.shape}")
        return x


class Session:
    """A loaded ONNX model, run with ONNX Runtime's calling convention:
    `run(output_names or None, {input name: array})` returns a list of arrays, in graph-output
    order or in the order of `output_names`. The graph is compiled once at load; a run checks
    the feeds against the declared types and ranks and executes the prepared steps."""

    def __init__(self, graph):
        self._graph = graph
        self._checks = {a.name: _InputCheck(a, graph.slots[a.name]) for a in graph.inputs}
        self._output_names = [a.name for a in graph.outputs]

    def get_inputs(self):
        return list(self._graph.inputs)

    def get_outputs(self):
        return list(self._graph.outputs)

    def nodes(self):
        """The nodes a run executes, in order, as (name, op) pairs: LSTM / GRU / RNN on
        lstmc's kernels, the others over numpy. Nodes fed only by constants were computed
        once at load and are not among them."""
        return [(step.node.name, step.node.op) for step in self._graph.steps]

    def run(self, output_names, input_feed):
        """output_names: list of graph-output names or None (all); input_feed: dict of input
        name -> array (numpy, or anything numpy.asarray takes)."""
        names = self._output_names if output_names is None else list(output_names)
        for name in names:
            if name not in self._output_names:
                raise ValueError(f"{name!r} is not an output of the model; its outputs: "
                                 f"{self._output_names}")
        for name in input_feed:
            if name not in self._checks:
                raise ValueError(f"{name!r} is not an input of the model; its inputs: "
                                 f"{list(self._checks)}")
        feeds = []
        for name, check in self._checks.items():
            if name not in input_feed:
                raise ValueError(f"input {name!r} is missing from the feed")
            feeds.append((check.slot, check(input_feed[name])))
        return self._graph.run(feeds, names)
