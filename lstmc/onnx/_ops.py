"""The executor's operators over numpy (the recurrent ones are in `_rnn`).

Each operator is a builder, registered with `@op(name, verified)`: it reads the node's
attributes and constant inputs once at load (`_node.NodeInfo`) and returns a kernel, a plain
function of the node's inputs (None for an omitted optional one) that returns a tuple of its
outputs. `verified` is the newest version of the operator (its schema's since_version) whose
semantics the builder follows; a model of a newer opset that changes the operator is refused,
not run by the old rules (models older than opset 7 are refused as a whole: `_graph`).
Attributes a builder does not read are refused by the executor.
"""
import numpy as np

from lstmc.onnx._node import checked_size, numpy_dtype

OPS = {}   # op_type -> (builder, newest since_version handled)


def op(name, verified):
    def register(builder):
        OPS[name] = (builder, verified)
        return builder
    return register


def _ints(values):
    return tuple(int(v) for v in np.asarray(values).reshape(-1))


def _list_arg(node, index, attribute, since):
    """An int list given by `attribute` before opset `since` and by input `index` from then
    on -> (tuple known at load or None, whether it must be read from the input at run)."""
    if node.opset < since:
        value = node.attr(attribute)
        return (None if value is None else _ints(value)), False
    if not node.has_input(index):
        return None, False
    if node.is_const(index):
        return _ints(node.const(index)), False
    return None, True


def _axis(axis, rank, node):
    if not -rank <= axis < max(rank, 1):
        raise node.invalid(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


# ---- elementwise ---------------------------------------------------------------------------
def _unary(name, fn, verified):
    op(name, verified)(lambda node: lambda x: (fn(x),))


_unary("Relu", lambda x: np.maximum(x, x.dtype.type(0)), 14)
_unary("Tanh", np.tanh, 13)
_unary("Identity", lambda x: x, 25)
_unary("Neg", np.negative, 13)
_unary("Exp", np.exp, 13)
_unary("Log", np.log, 13)
_unary("Sqrt", np.sqrt, 13)
_unary("Not", np.logical_not, 1)


@op("Sigmoid", 13)
def sigmoid(node):
    from scipy.special import expit   # exact in both tails, unlike 0.5 * (1 + tanh(x / 2))
    return lambda x: (expit(x),)


def _truncating_divide(a, b):
    """ONNX integer Div rounds toward zero (C's), numpy's // toward minus infinity."""
    if np.result_type(a, b).kind not in "iu":
        return np.divide(a, b)
    q = np.floor_divide(a, b)
    return q + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0))).astype(q.dtype)


def _binary(name, fn, verified):
    op(name, verified)(lambda node: lambda a, b: (fn(a, b),))


_binary("Add", np.add, 14)
_binary("Sub", np.subtract, 14)
_binary("Mul", np.multiply, 14)
_binary("Div", _truncating_divide, 14)
_binary("Equal", np.equal, 19)
_binary("Less", np.less, 13)
_binary("Greater", np.greater, 13)
_binary("GreaterOrEqual", np.greater_equal, 16)
_binary("LessOrEqual", np.less_equal, 16)
_binary("And", np.logical_and, 7)
_binary("Or", np.logical_or, 7)
_binary("Pow", lambda a, b: np.power(a, b).astype(a.dtype, copy=False), 15)


def _variadic(name, fn, verified):
    """An elementwise operator of one or more inputs (Max, Min, Sum), broadcasting."""
    def build(node):
        def run(*xs):
            out = xs[0]
            for x in xs[1:]:
                out = fn(out, x)
            return (np.asarray(out),)
        return run
    op(name, verified)(build)


_variadic("Max", np.maximum, 13)
_variadic("Min", np.minimum, 13)


@op("Where", 16)
def where(node):
    return lambda c, x, y: (np.where(c, x, y),)


# ---- linear algebra ------------------------------------------------------------------------
op("MatMul", 13)(lambda node: lambda a, b: (np.matmul(a, b),))


@op("Gemm", 13)
def gemm(node):
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    trans_a, trans_b = bool(node.attr("transA", 0)), bool(node.attr("transB", 0))

    def run(a, b, c=None):
        y = np.matmul(a.T if trans_a else a, b.T if trans_b else b)
        if alpha != 1.0:
            y *= y.dtype.type(alpha)
        if c is not None:
            y += c if beta == 1.0 else c * c.dtype.type(beta)
        return (y,)
    return run


@op("Gather", 13)
def gather(node):
    axis = int(node.attr("axis", 0))

    def run(data, indices):
        return (np.take(data, indices, axis=_axis(axis, data.ndim, node)),)
    return run


@op("CumSum", 14)
def cumsum(node):
    exclusive = bool(node.attr("exclusive", 0))
    reverse = bool(node.attr("reverse", 0))

    def run(x, axis):
        a = _axis(int(np.asarray(axis).reshape(-1)[0]), x.ndim, node)
        y = np.flip(x, a) if reverse else x
        out = np.cumsum(y, axis=a, dtype=x.dtype)
        if exclusive:   # the sum of the elements before each one
            out = out - y
        return (np.flip(out, a) if reverse else out,)
    return run


@op("TopK", 11)
def topk(node):
    axis = int(node.attr("axis", -1))
    largest = bool(node.attr("largest", 1))
    node.attr("sorted")   # the k elements come sorted either way
    if node.opset < 10:
        k_attr = int(node.attr("k"))

    def run(x, k=None):
        k = k_attr if node.opset < 10 else int(np.asarray(k).reshape(-1)[0])
        a = _axis(axis, x.ndim, node)
        if not 0 <= k <= x.shape[a]:
            raise node.invalid(f"k={k} out of range for axis of size {x.shape[a]}")
        # stable: of equal values the one of lower index comes first, as ONNX asks
        order = np.argsort(np.negative(x) if largest else x, axis=a, kind="stable")
        idx = np.take(order, np.arange(k), axis=a)
        return np.take_along_axis(x, idx, axis=a), idx.astype(np.int64)
    return run


def _element_positions(indices, shape, a, node):
    """The positions of data (of `shape`) that GatherElements reads and ScatterElements
    writes: position i of `indices` with its axis-`a` coordinate replaced by indices[i]."""
    d = shape[a]
    if indices.size and (indices.min() < -d or indices.max() >= d):
        raise node.invalid(f"indices out of range [-{d}, {d})")
    if any(i > n for k, (i, n) in enumerate(zip(indices.shape, shape)) if k != a):
        raise node.invalid(f"indices {indices.shape} larger than data {tuple(shape)} off "
                           f"axis {a}")
    where = list(np.indices(indices.shape, sparse=True))
    where[a] = np.where(indices < 0, indices + d, indices)
    return tuple(where)


@op("ScatterElements", 18)
def scatter_elements(node):
    axis = int(node.attr("axis", 0))
    reduction = node.attr("reduction", b"none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    if reduction != "none":
        raise node.unsupported(f"attribute reduction={reduction!r}")

    def run(data, indices, updates):
        a = _axis(axis, data.ndim, node)
        if indices.shape != updates.shape or indices.ndim != data.ndim:
            raise node.invalid(f"indices {indices.shape} and updates {updates.shape} must "
                               f"have one shape of data's rank {data.ndim}")
        out = data.copy()
        out[_element_positions(indices, data.shape, a, node)] = updates
        return (out,)
    return run


@op("GatherElements", 13)
def gather_elements(node):
    axis = int(node.attr("axis", 0))

    def run(data, indices):
        a = _axis(axis, data.ndim, node)
        if indices.ndim != data.ndim:
            raise node.invalid(f"indices of rank {indices.ndim} for data of rank {data.ndim}")
        return (data[_element_positions(indices, data.shape, a, node)],)
    return run


@op("Range", 11)
def range_(node):
    def run(start, limit, delta):
        start, limit, delta = (np.asarray(v).reshape(()) for v in (start, limit, delta))
        if delta == 0:
            raise node.invalid("delta is 0")
        n = max(int(np.ceil((limit - start) / delta)), 0)
        checked_size((n,), str(node))
        return ((start + np.arange(n) * delta).astype(start.dtype),)
    return run


@op("Tile", 13)
def tile(node):
    def run(x, repeats):
        r = _ints(repeats)
        if len(r) != x.ndim or any(v < 0 for v in r):
            raise node.invalid(f"repeats {r} must be {x.ndim} non-negative integers")
        checked_size(tuple(d * v for d, v in zip(x.shape, r)), str(node))
        return (np.tile(x, r),)
    return run


# ---- softmax and reductions ----------------------------------------------------------------
def _softmax(node, log):
    coerce = node.opset < 13   # before 13: softmax over the 2-D coercion at `axis`
    axis = int(node.attr("axis", 1 if coerce else -1))

    def run(x):
        a = _axis(axis, x.ndim, node)
        z = x.reshape(int(np.prod(x.shape[:a])), -1) if coerce else x
        ax = 1 if coerce else a
        z = z - z.max(axis=ax, keepdims=True)
        if log:
            y = z - np.log(np.exp(z).sum(axis=ax, keepdims=True))
        else:
            y = np.exp(z)
            y /= y.sum(axis=ax, keepdims=True)
        return (y.reshape(x.shape),)
    return run


op("Softmax", 13)(lambda node: _softmax(node, log=False))
op("LogSoftmax", 13)(lambda node: _softmax(node, log=True))


def _reduce(name, fn, axes_input_since, verified):
    """A Reduce* operator: axes an attribute before opset `axes_input_since`, an input from
    then on (with noop_with_empty_axes)."""
    @op(name, verified)
    def build(node):
        keepdims = bool(node.attr("keepdims", 1))
        noop_empty = bool(node.attr("noop_with_empty_axes", 0))
        axes_c, dynamic = _list_arg(node, 1, "axes", axes_input_since)

        def run(x, axes=None):
            a = (_ints(axes) if axes is not None else None) if dynamic else axes_c
            if not a:
                if noop_empty:
                    return (x,)
                a = None
            else:
                a = tuple(_axis(v, x.ndim, node) for v in a)
            return (np.asarray(fn(x, axis=a, keepdims=keepdims)).astype(x.dtype, copy=False),)
        return run


_reduce("ReduceMean", np.mean, 18, 18)
_reduce("ReduceSum", np.sum, 13, 13)
_reduce("ReduceProd", np.prod, 18, 18)
_reduce("ReduceMax", np.max, 18, 20)


@op("ArgMax", 13)
def argmax(node):
    axis = int(node.attr("axis", 0))
    keepdims = bool(node.attr("keepdims", 1))
    last = bool(node.attr("select_last_index", 0))

    def run(x):
        a = _axis(axis, x.ndim, node)
        if last:
            i = x.shape[a] - 1 - np.argmax(np.flip(x, a), axis=a, keepdims=keepdims)
        else:
            i = np.argmax(x, axis=a, keepdims=keepdims)
        return (np.asarray(i, dtype=np.int64),)
    return run


# ---- shapes --------------------------------------------------------------------------------
@op("Transpose", 25)
def transpose(node):
    perm = node.attr("perm")
    perm = None if perm is None else _ints(perm)
    return lambda x: (np.transpose(x, perm),)


@op("Squeeze", 25)
def squeeze(node):
    axes_c, dynamic = _list_arg(node, 1, "axes", 13)

    def run(x, axes=None):
        a = (_ints(axes) if axes is not None else None) if dynamic else axes_c
        if a is None:
            return (np.squeeze(x),)
        a = tuple(_axis(v, x.ndim, node) for v in a)
        if any(x.shape[v] != 1 for v in a):
            raise node.invalid(f"cannot squeeze axes {a} of shape {x.shape}")
        return (np.squeeze(x, axis=a),)
    return run


@op("Unsqueeze", 25)
def unsqueeze(node):
    axes_c, dynamic = _list_arg(node, 1, "axes", 13)
    if axes_c is None and not dynamic:
        raise node.invalid("Unsqueeze needs axes")

    def run(x, axes=None):
        a = _ints(axes) if dynamic else axes_c
        rank = x.ndim + len(a)
        a = tuple(_axis(v, rank, node) for v in a)
        if len(set(a)) != len(a):
            raise node.invalid(f"repeated axes {a}")
        return (np.expand_dims(x, a),)
    return run


@op("Reshape", 25)
def reshape(node):
    allowzero = bool(node.attr("allowzero", 0))

    def run(x, shape):
        s = _ints(shape)
        if not allowzero:
            s = tuple(x.shape[i] if v == 0 else v for i, v in enumerate(s))
        if sum(v == -1 for v in s) > 1 or any(v < -1 for v in s):
            raise node.invalid(f"invalid target shape {s}")
        return (x.reshape(s),)
    return run


@op("Flatten", 25)
def flatten(node):
    axis = int(node.attr("axis", 1))

    def run(x):
        a = axis + x.ndim if axis < 0 else axis
        if not 0 <= a <= x.ndim:
            raise node.invalid(f"axis {axis} out of range for rank {x.ndim}")
        return (x.reshape(int(np.prod(x.shape[:a])), int(np.prod(x.shape[a:]))),)
    return run


@op("Concat", 13)
def concat(node):
    axis = node.attr("axis")
    if axis is None:
        raise node.invalid("Concat needs axis")
    axis = int(axis)

    def run(*xs):
        xs = [x for x in xs if x is not None]
        return (np.concatenate(xs, axis=_axis(axis, xs[0].ndim, node)),)
    return run


def _slice_index(shape, starts, ends, axes, steps, node):
    index = [slice(None)] * len(shape)
    axes = range(len(starts)) if axes is None else axes
    steps = (1,) * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise node.invalid("starts, ends, axes and steps differ in length")
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, len(shape), node)
        d = shape[a]
        if st == 0:
            raise node.invalid("a step of 0")
        s, e = s + d if s < 0 else s, e + d if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
        else:
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
        index[a] = slice(s, e if e >= 0 else None, st)
    return tuple(index)


@op("Slice", 13)
def slice_(node):
    if node.opset < 10:
        starts, ends = _ints(node.attr("starts", ())), _ints(node.attr("ends", ()))
        axes = node.attr("axes")
        axes = None if axes is None else _ints(axes)
        return lambda x: (x[_slice_index(x.shape, starts, ends, axes, None, node)],)

    def run(x, starts, ends, axes=None, steps=None):
        return (x[_slice_index(x.shape, _ints(starts), _ints(ends),
                               None if axes is None else _ints(axes),
                               None if steps is None else _ints(steps), node)],)
    return run


@op("Split", 18)
def split(node):
    axis = int(node.attr("axis", 0))
    sizes_c, dynamic = _list_arg(node, 1, "split", 13)
    parts = int(node.attr("num_outputs", node.n_outputs))

    def run(x, sizes=None):
        a = _axis(axis, x.ndim, node)
        s = _ints(sizes) if dynamic and sizes is not None else sizes_c
        if s is None:   # equal parts, the last one smaller when they do not divide (18)
            chunk = -(-x.shape[a] // parts)
            s = [min(chunk, x.shape[a] - i * chunk) for i in range(parts)]
        if sum(s) != x.shape[a] or any(v < 0 for v in s):
            raise node.invalid(f"split sizes {tuple(s)} do not add up to {x.shape[a]}")
        return tuple(np.split(x, np.cumsum(s)[:-1], axis=a))
    return run


@op("Shape", 25)
def shape(node):
    start, end = int(node.attr("start", 0)), node.attr("end")
    end = None if end is None else int(end)
    return lambda x: (np.array(x.shape[start:end], dtype=np.int64),)


@op("Expand", 13)
def expand(node):
    def run(x, shape):
        s = np.broadcast_shapes(x.shape, _ints(shape))
        checked_size(s, str(node))
        return (np.broadcast_to(x, s),)
    return run


# ---- types and constants -------------------------------------------------------------------
@op("Cast", 25)
def cast(node):
    dtype = numpy_dtype(node.attr("to"), str(node))
    if dtype.kind == "O":
        raise node.unsupported("Cast to string")
    node.attr("saturate")   # float8 only, which lstmc does not take
    return lambda x: (x.astype(dtype, copy=False),)


@op("Constant", 25)
def constant(node):
    for name, kind in (("value", None), ("value_float", np.float32),
                       ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if node.has_attr(name):
            value = node.attr(name)
            value = value if kind is None else np.array(value, dtype=kind)
            return lambda: (value,)
    raise node.unsupported("a Constant without value, value_float(s) or value_int(s)")


@op("ConstantOfShape", 25)
def constant_of_shape(node):
    value = node.attr("value")
    value = np.zeros(1, np.float32) if value is None else value
    if value.size != 1:
        raise node.invalid(f"value must hold one element, got shape {value.shape}")
    fill = value.reshape(())

    def run(shape):
        dims, _ = checked_size(_ints(shape), str(node))
        return (np.full(dims, fill, dtype=fill.dtype),)
    return run


@op("Dropout", 22)
def dropout(node):
    node.attr("seed")   # inference: nothing is drawn
    node.attr("ratio")
    if node.is_const(2) and bool(node.const(2)):
        raise node.unsupported("training_mode=True (training-mode dropout)")
    dynamic_mode = node.has_input(2) and not node.is_const(2)

    def run(x, ratio=None, training_mode=None):
        if dynamic_mode and training_mode is not None and bool(training_mode):
            raise node.unsupported("training_mode=True (training-mode dropout)")
        return (x, np.ones(x.shape, dtype=np.bool_))[:node.n_outputs]
    return run
