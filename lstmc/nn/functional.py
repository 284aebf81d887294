"""The operations of lstmc.nn's tape (lstmc.nn.tape, Composite), each with its backward.

They take tape tensors (lstmc.nn.Tensor) and constants (numpy arrays, numbers) and return a
tensor (a plain array when no input is a tensor: a constant); the tensor methods, Python's
operators and numpy's functions of the same names (np.concatenate, np.tanh, np.einsum, ...)
run them. The set is what
encoder-decoder and attention models need, kept small so that each backward is tested
against finite differences (tests/test_tape.py):

    indexing (basic and integer / boolean arrays), concatenate, stack, transpose, swapaxes,
    reshape; add, subtract, multiply, divide (broadcasting), negative, power (by a
    constant); matmul (numpy's broadcasting rules, 1-D operands too), einsum (one or two
    operands, explicit "->", letters only, none repeated within an operand); tanh, sigmoid,
    relu, exp, log; softmax (with a mask); sum, mean.

Gradients are in each tensor's dtype. A gradient of a broadcast operand is summed over the
broadcast axes.
"""
import numpy as np

from lstmc.nn._tape import Tensor
from lstmc.nn.layers import sigmoid as _sigmoid

__all__ = ["getitem", "concatenate", "stack", "transpose", "swapaxes", "reshape", "add",
           "subtract", "multiply", "divide", "negative", "power", "matmul", "einsum", "tanh",
           "sigmoid", "relu", "exp", "log", "softmax", "sum", "mean"]


def _tape_of(values):
    """The tape of the tensors among `values` (one tape for all of them), or None."""
    tape = None
    for v in values:
        if isinstance(v, Tensor):
            if tape is None:
                tape = v._tape
            elif v._tape is not tape:
                raise ValueError("an operation on tensors of two different tapes")
    return tape


def _record(inputs, output, backward):
    """One node of one output: backward(g) -> one gradient per input. Without a tensor among
    the inputs the output is a constant: the plain array."""
    tape = _tape_of(inputs)
    if tape is None:
        return output
    return tape._record(inputs, [output], lambda grads: backward(grads[0]))[0]


def _data(v):
    if isinstance(v, Tensor):
        return v.data
    return np.asarray(v) if isinstance(v, (list, tuple)) else v


def _unbroadcast(g, shape):
    """g summed over the axes that broadcasting added or stretched to reach g's shape from
    `shape`."""
    if g.shape == tuple(shape):
        return g
    g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=stretched, keepdims=True) if stretched else g


def _shape_of(v):
    return np.shape(_data(v))


# ---- indexing and layout ---------------------------------------------------------------------
def _basic(key):
    """True if `key` is basic indexing (ints, slices, None, Ellipsis): each element picked
    once, so the gradient is assigned rather than summed."""
    parts = key if isinstance(key, tuple) else (key,)
    return all(isinstance(k, (int, np.integer, slice)) or k is None or k is Ellipsis
               for k in parts)


def getitem(x, key):
    """x[key]; a tensor in `key` is taken as its array (indices have no gradient)."""
    if isinstance(key, tuple):
        key = tuple(_data(k) for k in key)
    else:
        key = _data(key)
    data = _data(x)
    y = data[key]
    if isinstance(y, np.generic) or np.ndim(y) == 0:
        y = np.asarray(y)

    def backward(g):
        dx = np.zeros_like(data)
        if _basic(key):
            dx[key] = g
        else:
            np.add.at(dx, key, g)
        return [dx]
    return _record([x], y, backward)


def concatenate(tensors, axis=0):
    """np.concatenate of tensors (and constant arrays) along `axis`."""
    tensors = list(tensors)
    datas = [_data(t) for t in tensors]
    y = np.concatenate(datas, axis=axis)
    ends = np.cumsum([d.shape[axis] for d in datas])[:-1]

    def backward(g):
        return np.split(g, ends, axis=axis)
    return _record(tensors, y, backward)


def stack(tensors, axis=0):
    """np.stack of tensors (and constant arrays) on a new axis `axis`."""
    tensors = list(tensors)
    y = np.stack([_data(t) for t in tensors], axis=axis)
    axis = axis % y.ndim

    def backward(g):
        return [np.take(g, i, axis=axis) for i in range(len(tensors))]
    return _record(tensors, y, backward)


def transpose(x, axes=None):
    y = np.transpose(_data(x), axes)
    inverse = None if axes is None else np.argsort([a % x.ndim for a in axes])
    return _record([x], y, lambda g: [np.transpose(g, inverse)])


def swapaxes(x, axis1, axis2):
    return _record([x], np.swapaxes(_data(x), axis1, axis2),
                   lambda g: [np.swapaxes(g, axis1, axis2)])


def reshape(x, shape):
    shape_in = x.shape
    return _record([x], np.reshape(_data(x), shape), lambda g: [g.reshape(shape_in)])


# ---- arithmetic ------------------------------------------------------------------------------
def add(a, b):
    sa, sb = _shape_of(a), _shape_of(b)
    return _record([a, b], np.add(_data(a), _data(b)),
                   lambda g: [_unbroadcast(g, sa) if isinstance(a, Tensor) else None,
                              _unbroadcast(g, sb) if isinstance(b, Tensor) else None])


def subtract(a, b):
    sa, sb = _shape_of(a), _shape_of(b)
    return _record([a, b], np.subtract(_data(a), _data(b)),
                   lambda g: [_unbroadcast(g, sa) if isinstance(a, Tensor) else None,
                              _unbroadcast(-g, sb) if isinstance(b, Tensor) else None])


def multiply(a, b):
    da, db = _data(a), _data(b)
    sa, sb = np.shape(da), np.shape(db)
    return _record([a, b], np.multiply(da, db),
                   lambda g: [_unbroadcast(g * db, sa) if isinstance(a, Tensor) else None,
                              _unbroadcast(g * da, sb) if isinstance(b, Tensor) else None])


def divide(a, b):
    da, db = _data(a), _data(b)
    sa, sb = np.shape(da), np.shape(db)
    y = np.divide(da, db)
    return _record([a, b], y,
                   lambda g: [_unbroadcast(g / db, sa) if isinstance(a, Tensor) else None,
                              _unbroadcast(-g * y / db, sb) if isinstance(b, Tensor) else None])


def negative(x):
    return _record([x], -_data(x), lambda g: [-g])


def power(x, exponent):
    """x ** exponent for a constant exponent (a number or an array)."""
    if isinstance(exponent, Tensor):
        raise TypeError("power: the exponent must be a constant, not a tape Tensor")
    data = _data(x)
    return _record([x], data ** exponent,
                   lambda g: [_unbroadcast(g * exponent * data ** (exponent - 1), data.shape)])


def matmul(a, b):
    """a @ b, numpy's rules (stacks of matrices broadcast; a 1-D operand is a vector)."""
    da, db = _data(a), _data(b)
    if np.ndim(da) == 0 or np.ndim(db) == 0:
        raise ValueError("matmul: operands must have at least one dimension (use * for "
                         "scalars)")
    y = np.matmul(da, db)

    def backward(g):
        # as matrices: a vector operand is a row (a) or a column (b) of one
        a2 = da[None, :] if da.ndim == 1 else da
        b2 = db[:, None] if db.ndim == 1 else db
        g2 = g
        if da.ndim == 1:
            g2 = np.expand_dims(g2, -2)
        if db.ndim == 1:
            g2 = np.expand_dims(g2, -1)
        ga = gb = None
        if isinstance(a, Tensor):
            ga = _unbroadcast(np.matmul(g2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(da.shape)
        if isinstance(b, Tensor):
            gb = _unbroadcast(np.matmul(np.swapaxes(a2, -1, -2), g2), b2.shape).reshape(db.shape)
        return [ga, gb]
    return _record([a, b], y, backward)


def einsum(subscripts, *operands):
    """np.einsum of one or two operands with explicit output ("btd,bsd->bts"): letters
    only, none repeated within one operand or in the output."""
    spec = subscripts.replace(" ", "")
    if "->" not in spec or "." in spec:
        raise ValueError(f"einsum: subscripts need an explicit '->' and no ellipsis, got "
                         f"{subscripts!r}")
    lhs, out = spec.split("->")
    ins = lhs.split(",")
    if len(ins) != len(operands) or len(ins) not in (1, 2):
        raise ValueError(f"einsum: one or two operands, as many as the subscripts name, got "
                         f"{subscripts!r} for {len(operands)}")
    for s in ins + [out]:
        if not s.isalpha() and s or len(set(s)) != len(s):
            raise ValueError(f"einsum: subscripts are letters, none repeated within one "
                             f"operand or the output, got {subscripts!r}")
    if not set(out) <= set("".join(ins)):
        raise ValueError(f"einsum: every output letter must name an axis of an operand, got "
                         f"{subscripts!r}")
    datas = [_data(o) for o in operands]
    y = np.asarray(np.einsum(spec, *datas))

    def backward(g):
        grads = []
        for k, (sub, op) in enumerate(zip(ins, operands)):
            if not isinstance(op, Tensor):
                grads.append(None)
                continue
            others = [(s, d) for j, (s, d) in enumerate(zip(ins, datas)) if j != k]
            known = set(out).union(*(set(s) for s, _ in others))
            kept = "".join(c for c in sub if c in known)
            gk = np.einsum(",".join([out] + [s for s, _ in others]) + "->" + kept, g,
                           *(d for _, d in others))
            if kept != sub:   # axes summed in this operand alone: constant along them
                shape = [n if c in kept else 1 for c, n in zip(sub, op.shape)]
                gk = np.broadcast_to(gk.reshape(shape), op.shape).copy()
            grads.append(gk)
        return grads
    return _record(list(operands), y, backward)


# ---- elementwise functions -------------------------------------------------------------------
def tanh(x):
    y = np.tanh(_data(x))
    return _record([x], y, lambda g: [g * (1 - y * y)])


def sigmoid(x):
    y = _sigmoid(_data(x))
    return _record([x], y, lambda g: [g * y * (1 - y)])


def relu(x):
    """max(x, 0); the gradient at 0 is 0, as torch's."""
    data = _data(x)
    return _record([x], np.where(data < 0, 0, data).astype(data.dtype, copy=False),
                   lambda g: [g * (data > 0)])


def exp(x):
    y = np.exp(_data(x))
    return _record([x], y, lambda g: [g * y])


def log(x):
    data = _data(x)
    return _record([x], np.log(data), lambda g: [g / data])


def softmax(x, axis=-1, mask=None):
    """exp(x) / sum(exp(x)) along `axis` (the maximum subtracted first, so large scores do
    not overflow).

    mask : bool array broadcastable to x, or None
        True where an entry takes part (Keras' Attention mask; torch's key_padding_mask is
        its negation): the others get weight 0, as a score of -inf would. A slice whose
        entries are all masked is all zeros (torch gives NaN there), with gradient 0.
    """
    data = _data(x)
    if mask is not None:
        mask = np.asarray(_data(mask))
        if mask.dtype != bool:
            raise TypeError(f"softmax: mask must be a bool array, got dtype {mask.dtype}")
        try:
            np.broadcast_shapes(mask.shape, data.shape)
        except ValueError:
            raise ValueError(f"softmax: mask of shape {mask.shape} does not broadcast to x's "
                             f"shape {data.shape}") from None
        z = np.where(mask, data, -np.inf)
    else:
        z = data
    top = np.max(z, axis=axis, keepdims=True)
    top = np.where(np.isneginf(top), 0, top)   # a fully masked slice: exp(-inf) = 0 below
    e = np.exp(z - top)
    total = e.sum(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):   # (total NaN: NaN propagates)
        y = np.where(total == 0, 0, e / total).astype(data.dtype, copy=False)

    def backward(g):
        return [y * (g - (g * y).sum(axis=axis, keepdims=True))]
    return _record([x], y, backward)


# ---- reductions ------------------------------------------------------------------------------
def _reduced_back(g, shape, axis, keepdims):
    """g of a reduction over `axis` -> x's shape (each element's share)."""
    if axis is not None and not keepdims:
        axes = (axis,) if np.ndim(axis) == 0 else tuple(axis)
        g = np.expand_dims(g, tuple(a % len(shape) for a in axes))
    return np.broadcast_to(g, shape).copy()


def sum(x, axis=None, keepdims=False):   # noqa: A001  (numpy's name)
    shape = x.shape
    y = np.asarray(_data(x).sum(axis=axis, keepdims=keepdims))
    return _record([x], y, lambda g: [_reduced_back(g, shape, axis, keepdims)])


def mean(x, axis=None, keepdims=False):
    shape = x.shape
    y = np.asarray(_data(x).mean(axis=axis, keepdims=keepdims))
    n = x.size // max(y.size, 1) if x.size else 0
    return _record([x], y,
                   lambda g: [_reduced_back(g / x.dtype.type(max(n, 1)), shape, axis,
                                            keepdims)])


# numpy's names for these operations, for Tensor.__array_ufunc__ / __array_function__
UFUNCS = {np.add: add, np.subtract: subtract, np.multiply: multiply, np.divide: divide,
          np.negative: negative, np.power: power, np.matmul: matmul, np.tanh: tanh,
          np.exp: exp, np.log: log}
NO_GRADIENT_UFUNCS = {np.less, np.less_equal, np.greater, np.greater_equal, np.equal,
                      np.not_equal, np.isnan, np.isfinite, np.isinf}


def _np_transpose(a, axes=None):
    return transpose(a, axes)


def _np_reshape(a, shape=None, *, newshape=None, order="C"):
    if order != "C":
        raise ValueError("reshape: only order='C' on the tape")
    return reshape(a, shape if shape is not None else newshape)


def _np_sum(a, axis=None, dtype=None, out=None, keepdims=False):
    if dtype is not None or out is not None:
        raise TypeError("np.sum of a tape Tensor takes axis and keepdims only")
    return sum(a, axis, keepdims)


def _np_mean(a, axis=None, dtype=None, out=None, keepdims=False):
    if dtype is not None or out is not None:
        raise TypeError("np.mean of a tape Tensor takes axis and keepdims only")
    return mean(a, axis, keepdims)


FUNCTIONS = {np.concatenate: concatenate, np.stack: stack, np.transpose: _np_transpose,
             np.swapaxes: swapaxes, np.reshape: _np_reshape, np.sum: _np_sum,
             np.mean: _np_mean, np.einsum: einsum,
             np.shape: lambda a: a.shape, np.ndim: lambda a: a.ndim}
