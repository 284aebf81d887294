"""Keras' merge layers for functional models: `Concatenate`, `Add`, `Multiply`, `Dot`.

A merge layer takes a list of tensors, `forward(inputs, masks, training)` -> (y, mask) and
`backward(dy)` -> one gradient per input. Masks combine as Keras 3 combines them
(keras/src/layers/merging): Add and Multiply keep a position when any input keeps it (None
when an input has no mask; Multiply reads a masked input as 1 there and zeroes what no
input keeps), Concatenate concatenates the inputs' masks (all True for an input without
one) and keeps a position when any of its entries is kept, Dot gives no mask.
"""
from typing import NamedTuple

import numpy as np

from lstmc.keras.layers import Layer, _float_input
from lstmc.keras import graph
from lstmc.nn.module import to_numpy

__all__ = ["Concatenate", "Add", "Multiply", "Dot"]


def _unbroadcast(d, shape):
    """Sums the gradient `d` of a broadcast result back to an input of `shape`."""
    while d.ndim > len(shape):
        d = d.sum(axis=0)
    for axis, n in enumerate(shape):
        if n == 1 and d.shape[axis] != 1:
            d = d.sum(axis=axis, keepdims=True)
    return d


class _Merge(Layer):
    """Shared by the merge layers: called on a list of at least two tensors."""

    _min_inputs = 2

    def __call__(self, inputs, mask=None, training=False, **kwargs):
        if graph.is_symbolic(inputs, kwargs):
            return graph.call_symbolic(self, inputs, kwargs)
        if kwargs:
            raise TypeError(f"{self.name} got unexpected call arguments {sorted(kwargs)}")
        return self.forward(inputs, mask, training)[0]

    def _check_call(self, call):
        if not call.listed or call.n_state or call.kwargs:
            raise ValueError(f"{self.name} ({type(self).__name__}) must be called on a list "
                             "of tensors, without options")

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        if len(shapes) < self._min_inputs:
            raise ValueError(f"{self.name} needs at least {self._min_inputs} inputs, got "
                             f"{len(shapes)}")
        self._check_shapes(shapes)
        self.built, self.built_shape = True, shapes
        return self

    def _check_shapes(self, shapes):
        pass

    def _symbolic_outputs(self, shapes, call):
        self.build(shapes)
        return [(tuple(self.compute_output_shape(shapes)), self.dtype.name)]

    def _node_forward(self, xs, masks, training, call, logits=False):
        y, mask = self.forward(xs, masks, training)
        return [y], [mask]

    def _node_backward(self, dys, call, logits=False):
        return self.backward(dys[0])

    def _inputs(self, inputs, masks):
        if not isinstance(inputs, (list, tuple)):
            raise ValueError(f"{self.name} takes a list of arrays, got "
                             f"{type(inputs).__name__}")
        xs = [_float_input(x, self) for x in inputs]
        if len(xs) < self._min_inputs:
            raise ValueError(f"{self.name} needs at least {self._min_inputs} inputs, got "
                             f"{len(xs)}")
        if len({x.shape[0] for x in xs}) > 1:
            raise ValueError(f"{self.name}: the inputs must have the same batch size, got "
                             f"shapes {[x.shape for x in xs]}")
        self._check_shapes([x.shape[1:] for x in xs])
        masks = [None] * len(xs) if masks is None else list(masks)
        if len(masks) != len(xs):
            raise ValueError(f"{self.name}: {len(xs)} inputs but {len(masks)} masks")
        return xs, [None if m is None else np.asarray(m, dtype=bool) for m in masks]

    def compute_mask(self, masks):
        """Keras' merge mask: None when an input has none, else the positions any keeps."""
        if masks is None or any(m is None for m in masks):
            return None
        return np.logical_or.reduce([np.asarray(m, dtype=bool) for m in masks])


class Add(_Merge):
    """The sum of the inputs (same shapes, or shapes numpy broadcasts)."""

    def _check_shapes(self, shapes):
        try:
            np.broadcast_shapes(*[tuple(1 if d is None else d for d in s) for s in shapes])
        except ValueError:
            shown = [(None,) + tuple(s) for s in shapes]
            raise ValueError(f"{self.name}: inputs of shapes {shown} cannot be "
                             "added") from None

    def forward(self, inputs, mask=None, training=False):
        xs, masks = self._inputs(inputs, mask)
        self._shapes = [x.shape for x in xs]
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return y, self.compute_mask(masks)

    def backward(self, dy):
        dy = to_numpy(dy).astype(self.dtype, copy=False)
        return [_unbroadcast(dy, s) for s in self._shapes]

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        n = max(len(s) for s in shapes)
        out = []
        for i in range(n):
            dims = [s[len(s) - n + i] for s in shapes if len(s) - n + i >= 0]
            known = [d for d in dims if d not in (None, 1)]
            out.append(known[0] if known else (None if None in dims else 1))
        return tuple(out)


class _MultiplySaved(NamedTuple):
    """What Multiply's forward keeps for its backward."""
    xs: list                  # the factors (1 where an input's mask drops an entry)
    keep: list                # each input's mask broadcast to its shape, or None
    out_keep: np.ndarray      # where the output is kept (every input masked), or None


class Multiply(Add):
    """The elementwise product of the inputs; a masked input counts as 1 at its masked
    positions and, when every input has a mask, positions no input keeps are 0 (Keras)."""

    def forward(self, inputs, mask=None, training=False):
        xs, masks = self._inputs(inputs, mask)
        self._shapes = [x.shape for x in xs]
        keep = [None if m is None else np.broadcast_to(m[..., None], x.shape)
                for x, m in zip(xs, masks)]
        xs = [x if k is None else np.where(k, x, x.dtype.type(1)) for x, k in zip(xs, keep)]
        y = xs[0]
        for x in xs[1:]:
            y = y * x
        out_keep = None
        if all(k is not None for k in keep):
            out_keep = np.logical_or.reduce(keep)
            y = np.where(out_keep, y, y.dtype.type(0))
        self._saved = _MultiplySaved(xs, keep, out_keep)
        return y, (None if out_keep is None else out_keep.any(axis=-1))

    def backward(self, dy):
        dy = to_numpy(dy).astype(self.dtype, copy=False)
        xs, keep, out_keep = self._saved.xs, self._saved.keep, self._saved.out_keep
        if out_keep is not None:
            dy = dy * out_keep
        grads = []
        for i, (x, k) in enumerate(zip(xs, keep)):
            d = dy
            for j, other in enumerate(xs):
                if j != i:
                    d = d * other
            d = _unbroadcast(d, x.shape)
            grads.append(d if k is None else d * k)
        return grads


class Concatenate(_Merge):
    """The inputs joined along `axis` (default -1); their other axes must agree."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis == 0:
            raise ValueError(f"axis must be a non-batch axis (an int other than 0), got "
                             f"{axis!r}")
        self.axis = int(axis)

    def _feature_axis(self, rank):
        """`axis` as an index into a feature shape of `rank` axes (no batch axis)."""
        axis = self.axis - 1 if self.axis > 0 else rank + self.axis
        if not 0 <= axis < rank:
            raise ValueError(f"{self.name}: axis {self.axis} is out of range for inputs of "
                             f"rank {rank + 1}")
        return axis

    def _check_shapes(self, shapes):
        ranks = {len(s) for s in shapes}
        if len(ranks) != 1:
            raise ValueError(f"{self.name}: inputs must have the same rank, got shapes "
                             f"{[(None,) + tuple(s) for s in shapes]}")
        axis = self._feature_axis(ranks.pop())
        for i in range(len(shapes[0])):
            dims = {s[i] for s in shapes if s[i] is not None}
            if i != axis and len(dims) > 1:
                raise ValueError(f"{self.name}: inputs must match on every axis but the "
                                 f"concatenation axis, got shapes "
                                 f"{[(None,) + tuple(s) for s in shapes]}")

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        axis = self._feature_axis(len(shapes[0]))
        out = list(shapes[0])
        for i in range(len(out)):
            dims = [s[i] for s in shapes]
            if i == axis:
                out[i] = None if None in dims else sum(dims)
            else:
                out[i] = next((d for d in dims if d is not None), None)
        return tuple(out)

    def forward(self, inputs, mask=None, training=False):
        xs, masks = self._inputs(inputs, mask)
        axis = self._feature_axis(xs[0].ndim - 1) + 1
        self._sizes = ([x.shape[axis] for x in xs], axis)
        y = np.concatenate(xs, axis=axis)
        if all(m is None for m in masks):
            return y, None
        full = [np.ones(x.shape, dtype=bool) if m is None else
                np.broadcast_to(m.reshape(m.shape + (1,) * (x.ndim - m.ndim)), x.shape)
                for x, m in zip(xs, masks)]
        return y, np.concatenate(full, axis=axis).any(axis=-1)

    def backward(self, dy):
        dy = to_numpy(dy).astype(self.dtype, copy=False)
        sizes, axis = self._sizes
        return np.split(dy, np.cumsum(sizes)[:-1], axis=axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class _DotSaved(NamedTuple):
    """What Dot's forward keeps for its backward."""
    x1: np.ndarray            # the inputs as multiplied (normalised with normalize=True)
    x2: np.ndarray
    norms: tuple              # their L2 norms along the axes (normalize=True), else Nones
    subscripts: tuple         # einsum subscripts of x1, x2 and the output
    axes: tuple               # the contracted axis of each input


class Dot(_Merge):
    """Per sample, the dot product of two inputs over `axes` (an int, or one per input;
    Keras' batch_dot): (B, T, D) and (B, S, D) with axes=2 give (B, T, S); two (B, D) give
    (B, 1). normalize=True L2-normalises both along their axes first (cosine similarity).
    No mask."""

    def __init__(self, axes, normalize=False, **kwargs):
        super().__init__(**kwargs)
        pair = list(axes) if isinstance(axes, (list, tuple)) else [axes, axes]
        if len(pair) != 2 or any(isinstance(a, bool) or not isinstance(a, (int, np.integer))
                                 for a in pair):
            raise ValueError(f"axes must be an int or a pair of ints, got {axes!r}")
        self.axes = [int(a) for a in pair] if isinstance(axes, (list, tuple)) else int(axes)
        self._pair = [int(a) for a in pair]
        self.normalize = bool(normalize)

    def _axes_for(self, ranks):
        out = []
        for a, r in zip(self._pair, ranks):
            a = a + r if a < 0 else a
            if not 1 <= a < r:
                raise ValueError(f"{self.name}: axes {self.axes} out of range for inputs of "
                                 f"rank {ranks} (the batch axis 0 cannot be contracted)")
            out.append(a)
        return out

    def _check_shapes(self, shapes):
        if len(shapes) != 2:
            raise ValueError(f"{self.name} takes exactly 2 inputs, got {len(shapes)}")
        a, b = self._axes_for([len(s) + 1 for s in shapes])
        da, db = shapes[0][a - 1], shapes[1][b - 1]
        if da is not None and db is not None and da != db:
            raise ValueError(f"{self.name}: axis {a} of the first input ({da}) and axis {b} "
                             f"of the second ({db}) must have the same size")

    def compute_output_shape(self, input_shape):
        s1, s2 = (tuple(s) for s in input_shape)
        a, b = self._axes_for([len(s1) + 1, len(s2) + 1])
        out = s1[:a - 1] + s1[a:] + s2[:b - 1] + s2[b:]
        return out if out else (1,)

    def compute_mask(self, masks):
        return None

    def _subscripts(self, r1, r2):
        a, b = self._axes_for([r1, r2])
        letters = iter("cdefghijklmnopqrstuvwxyz")
        s1 = ["b"] + [next(letters) for _ in range(r1 - 1)]
        s2 = ["b"] + [next(letters) for _ in range(r2 - 1)]
        s2[b] = s1[a]
        out = ["b"] + [c for i, c in enumerate(s1) if i not in (0, a)] + \
              [c for i, c in enumerate(s2) if i not in (0, b)]
        return "".join(s1), "".join(s2), "".join(out), (a, b)

    @staticmethod
    def _l2(x, axis):
        norm = np.sqrt(np.maximum((x * x).sum(axis=axis, keepdims=True), 1e-12))
        return x / norm, norm

    def forward(self, inputs, mask=None, training=False):
        (x1, x2), _ = self._inputs(inputs, mask)
        s1, s2, so, (a, b) = self._subscripts(x1.ndim, x2.ndim)
        norms = (None, None)
        if self.normalize:
            (x1, n1), (x2, n2) = self._l2(x1, a), self._l2(x2, b)
            norms = (n1, n2)
        y = np.einsum(f"{s1},{s2}->{so}", x1, x2)
        self._saved = _DotSaved(x1, x2, norms, (s1, s2, so), (a, b))
        return (y[:, None] if y.ndim == 1 else y), None

    def backward(self, dy):
        saved = self._saved
        x1, x2, norms = saved.x1, saved.x2, saved.norms
        (s1, s2, so), (a, b) = saved.subscripts, saved.axes
        dy = to_numpy(dy).astype(self.dtype, copy=False)
        if len(so) == 1:
            dy = dy[:, 0]
        d1 = np.einsum(f"{so},{s2}->{s1}", dy, x2)
        d2 = np.einsum(f"{so},{s1}->{s2}", dy, x1)
        if self.normalize:   # d(x / |x|) = (d - n (n . d)) / |x|
            d1 = (d1 - x1 * (d1 * x1).sum(axis=a, keepdims=True)) / norms[0]
            d2 = (d2 - x2 * (d2 * x2).sum(axis=b, keepdims=True)) / norms[1]
        return [d1, d2]

    def get_config(self):
        return {**super().get_config(), "axes": self.axes, "normalize": self.normalize}
