"""What every operator of the executor shares: the error for what lstmc cannot run, ONNX's
tensor types (numpy dtype and ONNX Runtime's type string), the checked conversion of an ONNX
tensor to a numpy array, and `NodeInfo`, the view of one node an operator's builder gets.

No module here imports onnx: the protobuf objects arrive from `lstmc.onnx.load`, which imports
it lazily.
"""
import math

import numpy as np

from lstmc.io import UnsupportedModelError  # noqa: F401  (the one class; lstmc.onnx exports it)


# TensorProto.DataType -> (numpy dtype, ONNX Runtime's element name); the types numpy has
TENSOR_TYPES = {
    1: (np.dtype(np.float32), "float"), 2: (np.dtype(np.uint8), "uint8"),
    3: (np.dtype(np.int8), "int8"), 4: (np.dtype(np.uint16), "uint16"),
    5: (np.dtype(np.int16), "int16"), 6: (np.dtype(np.int32), "int32"),
    7: (np.dtype(np.int64), "int64"), 8: (np.dtype(object), "string"),
    9: (np.dtype(np.bool_), "bool"), 10: (np.dtype(np.float16), "float16"),
    11: (np.dtype(np.float64), "double"), 12: (np.dtype(np.uint32), "uint32"),
    13: (np.dtype(np.uint64), "uint64"),
}

# where TensorProto keeps the elements of each type when not in raw_data
_FIELDS = {1: "float_data", 2: "int32_data", 3: "int32_data", 4: "int32_data",
           5: "int32_data", 6: "int32_data", 7: "int64_data", 8: "string_data",
           9: "int32_data", 10: "int32_data", 11: "double_data", 12: "uint64_data",
           13: "uint64_data"}

# the most elements of a tensor whose size comes from values in the file (ConstantOfShape,
# Expand, Tile, Range: 1 GiB of float32): a corrupt or hostile file must not make lstmc
# allocate absurdly. A tensor stored in the file is bounded by its data instead.
MAX_ELEMENTS = 1 << 28


def numpy_dtype(elem_type, where):
    """ONNX element type -> numpy dtype, or UnsupportedModelError naming `where`."""
    entry = TENSOR_TYPES.get(elem_type)
    if entry is None:
        raise UnsupportedModelError(f"{where}: ONNX element type {elem_type} has no numpy "
                                    f"dtype lstmc supports")
    return entry[0]


def checked_size(dims, where, limit=MAX_ELEMENTS):
    """(dims, element count), refusing negative dims and more than `limit` elements."""
    dims = tuple(int(d) for d in dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"{where}: negative dimension in shape {dims}")
    n = math.prod(dims)
    if limit is not None and n > limit:
        raise ValueError(f"{where}: shape {dims} has {n} elements, more than lstmc accepts "
                         f"({MAX_ELEMENTS})")
    return dims, n


def tensor_to_array(t, where):
    """An ONNX TensorProto -> numpy array (read-only when it views the file's bytes), checking
    that the stored data matches the declared dims before allocating anything."""
    where = f"{where} {t.name!r}" if t.name else where
    dtype = numpy_dtype(t.data_type, where)
    dims, n = checked_size(t.dims, where, limit=None)
    if t.data_location == 1:   # EXTERNAL: onnx.load(path) brings it in; bytes cannot
        raise ValueError(f"{where}: its data is in an external file; load the model from its "
                         "path so that the file can be found")
    if t.HasField("raw_data") and dtype.kind != "O":
        raw = t.raw_data
        if len(raw) != n * dtype.itemsize:
            raise ValueError(f"{where}: shape {dims} needs {n * dtype.itemsize} bytes of "
                             f"{dtype}, the tensor holds {len(raw)}")
        # native byte order (a copy on big-endian hosts only), then numpy's own descriptor
        # object: lstmc's kernels test `dtype is float32` first, and an equal descriptor that
        # is another object cost an I8 H8 B1 T25 LSTM node 17 instead of 9 us a call
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False) \
            .view(dtype).reshape(dims)
    field = getattr(t, _FIELDS[t.data_type])
    if len(field) != n:
        raise ValueError(f"{where}: shape {dims} needs {n} elements, the tensor holds "
                         f"{len(field)}")
    if t.data_type == 10:   # float16 travels as its bit pattern in int32_data
        return np.array(field, dtype=np.uint16).view(np.float16).reshape(dims)
    if dtype.kind == "O":
        return np.array([bytes(s) for s in field], dtype=object).reshape(dims)
    return np.array(field, dtype=dtype).reshape(dims)


def _attribute(a, where):
    """AttributeProto -> python value (tensors as numpy arrays)."""
    kinds = {1: lambda: a.f, 2: lambda: a.i, 3: lambda: a.s,
             4: lambda: tensor_to_array(a.t, f"{where}, attribute {a.name}"),
             6: lambda: list(a.floats), 7: lambda: list(a.ints), 8: lambda: list(a.strings)}
    if a.type not in kinds:
        raise UnsupportedModelError(f"{where}: attribute {a.name!r} (a subgraph, sparse tensor "
                                    f"or type; AttributeProto type {a.type})")
    return kinds[a.type]()


class NodeInfo:
    """One node as an operator's builder sees it: name, op, opset, attributes (read through
    `attr`, which records what was read, so that the executor can refuse attributes no
    builder understood), its inputs' names and the constants among them. `capture` marks
    constant inputs the kernel took in at load (the graph then drops its copy)."""

    def __init__(self, proto, index, opset, constants, producers):
        self.op = proto.op_type
        self.name = proto.name or f"#{index}"
        self.opset = opset
        self.inputs = list(proto.input)
        self.n_outputs = len(proto.output)
        self.captured = set()
        self._constants = constants
        self._producers = producers   # value name -> the NodeProto that computes it
        self._attributes = {a.name: _attribute(a, str(self)) for a in proto.attribute}
        self._read = set()

    def __str__(self):
        return f"node {self.name!r} ({self.op})"

    def attr(self, name, default=None):
        self._read.add(name)
        return self._attributes.get(name, default)

    def has_attr(self, name):
        self._read.add(name)
        return name in self._attributes

    def unread_attributes(self):
        return sorted(set(self._attributes) - self._read, key=str)

    def has_input(self, i):
        return i < len(self.inputs) and self.inputs[i] != ""

    def const(self, i):
        """Input i's value when it is known at load time (an initializer, a Constant or a
        folded subgraph), else None (also for an omitted optional input)."""
        if not self.has_input(i):
            return None
        return self._constants.get(self.inputs[i])

    def is_const(self, i):
        return self.has_input(i) and self.inputs[i] in self._constants

    def producer(self, name):
        """The NodeProto that computes the value `name`, None for a graph input or constant."""
        return self._producers.get(name)

    def constant(self, name):
        """The value `name` when it is known at load time, else None."""
        return self._constants.get(name)

    def capture(self, *indices):
        """Constant inputs the kernel keeps in its own form: runs pass None for them."""
        self.captured.update(indices)

    def unsupported(self, what):
        return UnsupportedModelError(f"{self}: {what}")

    def invalid(self, what):
        return ValueError(f"{self}: {what}")
