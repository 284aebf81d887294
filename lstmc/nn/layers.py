"""Feed-forward modules of lstmc.nn, after torch.nn: Linear, Embedding, Dropout, the
activations ReLU / Tanh / Sigmoid, and Sequential.

Each module saves what its backward needs during forward (in both modes, as autograd would)
and `backward(dy)` returns the gradient of its input while adding its parameters' gradients
to their `.grad`. A module's parameters are views into one flat buffer (`Module._flat`).
"""
import math

import numpy as np

from lstmc._random import generator
from lstmc.nn.module import Module, Parameter, to_numpy
from lstmc.nn._checks import as_float, dtype_of, positive_int


def _allocate(module, dtype, shapes):
    """Gives `module` one flat parameter buffer (and one for gradients) holding `shapes`
    (name -> shape, in order) and registers a Parameter view of each."""
    sizes = [math.prod(s) for s in shapes.values()]
    module._flat = np.zeros(sum(sizes), dtype=dtype)
    module._flat_grad = np.zeros(sum(sizes), dtype=dtype)
    at = 0
    for (name, shape), size in zip(shapes.items(), sizes):
        setattr(module, name, Parameter(module._flat[at:at + size].reshape(shape),
                                        module._flat_grad[at:at + size].reshape(shape)))
        at += size


def _saved(module, name):
    value = getattr(module, name, None)
    if value is None:
        raise RuntimeError(f"{type(module).__name__}.backward needs a forward first")
    return value


class Linear(Module):
    """y = x W^T + b, as torch.nn.Linear: weight (out_features, in_features), bias
    (out_features,), both initialised from U(-1/sqrt(in), 1/sqrt(in)). x (..., in_features).
    Quantized (lstmc.quantize): x W^T is the int8 product (lstmc.nn._quantized.QuantizedLinear),
    the bias float32."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.dtype = dtype_of(dtype)
        shapes = {"weight": (self.out_features, self.in_features)}
        if bias:
            shapes["bias"] = (self.out_features,)
        _allocate(self, self.dtype, shapes)
        bound = 1.0 / math.sqrt(self.in_features)
        self._flat[:] = generator().uniform(-bound, bound, self._flat.size)
        if not bias:
            self.bias = None
        self._x = None

    _tape_kind = "unary"

    def _saved_for_backward(self):
        return self._x

    def _restore_saved(self, saved):
        self._x = saved

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")

    def forward(self, x):
        x = as_float(x, "x", self.dtype)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have {self.in_features} features on its last axis, got "
                             f"shape {x.shape}")
        quantized = self.__dict__.get("_quant")   # lstmc.nn._quantized.QuantizedLinear
        self._x = x if quantized is None else None   # inference only: nothing to keep
        # as 2-D products: numpy's stacked 3-D matmul can be 10x slower here
        x2 = x.reshape(-1, self.in_features)
        y = x2 @ self.weight.data.T if quantized is None else quantized.product(x2)
        if self.bias is not None:
            y += self.bias.data
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, dy):
        self.refuse_if_quantized("backward")
        x = _saved(self, "_x")
        dy = as_float(dy, "dy", self.dtype)
        expected = x.shape[:-1] + (self.out_features,)
        if dy.shape != expected:
            raise ValueError(f"dy must have shape {expected}, got {dy.shape}")
        dy2, x2 = dy.reshape(-1, self.out_features), x.reshape(-1, self.in_features)
        self.weight.grad += dy2.T @ x2
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0)
        return (dy2 @ self.weight.data).reshape(x.shape)


class Embedding(Module):
    """Lookup table, as torch.nn.Embedding: weight (num_embeddings, embedding_dim) from N(0, 1);
    the row `padding_idx` is zero and receives no gradient. Input: integer array of any shape;
    output: that shape + (embedding_dim,). backward returns None (indices have no gradient).
    Quantized (lstmc.quantize): rows of an int8 table dequantised on lookup
    (lstmc.nn._quantized.QuantizedEmbedding)."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32):
        super().__init__()
        self.num_embeddings = positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = positive_int(embedding_dim, "embedding_dim")
        if padding_idx is not None:
            padding_idx = int(padding_idx)
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"padding_idx must be in [-{self.num_embeddings}, "
                                 f"{self.num_embeddings}), got {padding_idx}")
            padding_idx %= self.num_embeddings
        self.padding_idx = padding_idx
        self.dtype = dtype_of(dtype)
        _allocate(self, self.dtype, {"weight": (self.num_embeddings, self.embedding_dim)})
        self._flat[:] = generator().standard_normal(self._flat.size)
        if padding_idx is not None:
            self.weight.data[padding_idx] = 0
        self._idx = None

    _tape_kind = "unary"

    def _saved_for_backward(self):
        return self._idx

    def _restore_saved(self, saved):
        self._idx = saved

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")

    def forward(self, idx):
        idx = to_numpy(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"idx must be an integer array, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise ValueError(f"idx must lie in [0, {self.num_embeddings}), got min {idx.min()} "
                             f"and max {idx.max()}")
        quantized = self.__dict__.get("_quant")   # lstmc.nn._quantized.QuantizedEmbedding
        if quantized is not None:
            self._idx = None   # inference only: nothing to keep
            return quantized.lookup(idx)
        self._idx = idx
        return self.weight.data[idx]

    def backward(self, dy):
        self.refuse_if_quantized("backward")
        idx = _saved(self, "_idx")
        dy = as_float(dy, "dy", self.dtype)
        expected = idx.shape + (self.embedding_dim,)
        if dy.shape != expected:
            raise ValueError(f"dy must have shape {expected}, got {dy.shape}")
        flat_idx, rows = idx.reshape(-1), dy.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:
            keep = flat_idx != self.padding_idx
            flat_idx, rows = flat_idx[keep], rows[keep]
        np.add.at(self.weight.grad, flat_idx, rows)
        return None


class Dropout(Module):
    """Zeroes each element with probability p in training mode and scales the rest by
    1 / (1 - p); the identity in eval mode. Masks come from lstmc's generator."""

    def __init__(self, p=0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"p must be a number in [0, 1), got {p!r}")
        self.p = float(p)
        self._mask = None

    _tape_kind = "unary"

    def _saved_for_backward(self):
        return self._mask

    def _restore_saved(self, saved):
        self._mask = saved

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        x = to_numpy(x)
        if not self.training or self.p == 0:
            self._mask = None
            return x
        keep = 1.0 - self.p
        self._mask = (generator().random(x.shape) < keep).astype(x.dtype) / x.dtype.type(keep)
        return x * self._mask

    def backward(self, dy):
        dy = to_numpy(dy)
        return dy if self._mask is None else dy * self._mask


class _Activation(Module):
    """Elementwise activation: forward keeps its output, backward multiplies by f'(y)."""

    _tape_kind = "unary"

    def _saved_for_backward(self):
        return self._y

    def _restore_saved(self, saved):
        self._y = saved

    def forward(self, x):
        self._y = self._f(to_numpy(x))
        return self._y

    def backward(self, dy):
        return to_numpy(dy) * self._df(_saved(self, "_y"))


class ReLU(_Activation):
    """max(x, 0); the gradient at 0 is 0 (as torch). NaN stays NaN."""

    @staticmethod
    def _f(x):
        return np.where(x < 0, 0, x).astype(x.dtype, copy=False)

    @staticmethod
    def _df(y):
        return (y > 0).astype(y.dtype)


class Tanh(_Activation):
    @staticmethod
    def _f(x):
        return np.tanh(x)

    @staticmethod
    def _df(y):
        return 1 - y * y


def sigmoid(x):
    """1 / (1 + exp(-x)) in x's dtype: exp only of -|x|, so no overflow, and full relative
    precision in both tails. NaN stays NaN."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


class Sigmoid(_Activation):
    _f = staticmethod(sigmoid)

    @staticmethod
    def _df(y):
        return y * (1 - y)


class Sequential(Module):
    """Chains modules: forward runs them in order, backward in reverse order. Children are
    registered as "0", "1", ... (so parameter names match torch.nn.Sequential's)."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes Modules, got {type(m).__name__} at {i}")
            setattr(self, str(i), m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        setattr(self, str(len(self)), module)
        return self

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, dy):
        for m in reversed(list(self._modules.values())):
            dy = m.backward(dy)
        return dy
