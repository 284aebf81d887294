"""Keras-flavoured layers: `Embedding(mask_zero)`, `LSTM`, `GRU`, `SimpleRNN`,
`Bidirectional`, `Dense`, `Dropout`, `Activation`, `RepeatVector`, `LayerNormalization`,
`TimeDistributed` and `Input`, for `lstmc.models.Sequential` and the functional
`lstmc.models.Model`; the merge layers (`Concatenate`, `Add`, `Multiply`, `Dot`) and the
attention layers (`Attention`, `AdditiveAttention`) live in lstmc.keras.merging and
lstmc.keras.attention and are exported here too.

Each layer is a thin adapter around an `lstmc.nn` module (one engine, two faces). It adapts
what Keras users expect at its edge and nowhere else:
- shapes: batch-major (B, T, F) everywhere; weights built lazily from the first input (or
  from `input_shape=`);
- weights: `get_weights()` / `set_weights()` speak Keras' layout and gate order (kernel
  (in, G*units), recurrent_kernel (units, G*units), one bias; GRU gates z, r, h), so weights
  trained with Keras load; initialisers are Keras' defaults (glorot_uniform kernels,
  orthogonal recurrent kernels, zero biases, LSTM forget-gate bias 1);
- masks: `Embedding(mask_zero=True)` marks index 0 as padding; a recurrent layer holds its
  state on masked steps and runs only the valid ones (left-, right- or any-padded batches
  cost no compute on padding), as Keras does.

Inside `Sequential` a layer runs as `y, mask = layer.forward(x, mask, training)` and
`dx = layer.backward(dy)`; called directly, `layer(x)` runs it in inference mode. Called on
symbolic tensors (`Input(...)` and what layers made of them) it records a node of a functional
graph (lstmc.keras.graph), which runs it through `_node_forward` / `_node_backward`: lists of
inputs, masks and outputs, for layers with several of each.
"""
import math
import re
from typing import NamedTuple

import numpy as np

from lstmc import nn
from lstmc._random import generator
from lstmc.keras import graph
from lstmc.nn._checks import positive_int
from lstmc.nn.module import Module, Parameter, to_numpy

__all__ = ["Layer", "Input", "InputLayer", "Embedding", "Dense", "Dropout", "LSTM", "GRU",
           "SimpleRNN", "Bidirectional", "Activation", "RepeatVector", "LayerNormalization",
           "TimeDistributed", "Concatenate", "Add", "Multiply", "Dot", "Attention",
           "AdditiveAttention"]

_name_counts = {}


def _auto_name(cls_name):
    """Keras' default layer names: lstm, lstm_1, lstm_2, ..."""
    base = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", cls_name).lower()
    n = _name_counts.get(base, 0)
    _name_counts[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def _units(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _rate(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


# ---- initialisers (Keras defaults), drawing from lstmc's generator ---------------------
def glorot_uniform(shape, dtype):
    """U(-l, l), l = sqrt(6 / (fan_in + fan_out)) for a Keras (in, out) kernel."""
    limit = math.sqrt(6.0 / (shape[0] + shape[1]))
    return generator().uniform(-limit, limit, shape).astype(dtype)


def orthogonal(shape, dtype):
    """An orthogonal (rows, cols) matrix (rows of a QR factor of a normal matrix)."""
    rows, cols = shape
    a = generator().standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return (q.T if rows < cols else q).astype(dtype)


# ---- activations (Dense) ----------------------------------------------------------------
def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _from_nn(activation):
    """An lstmc.nn activation module's function and its gradient (from the output)."""
    return activation._f, lambda y, dy: dy * activation._df(y)


# name -> (f(z), df: (y, dy) -> dz)
_ACTIVATIONS = {
    "linear": (lambda z: z, lambda y, dy: dy),
    "relu": _from_nn(nn.ReLU),
    "tanh": _from_nn(nn.Tanh),
    "sigmoid": _from_nn(nn.Sigmoid),
    "softmax": (_softmax, lambda y, dy: y * (dy - (dy * y).sum(axis=-1, keepdims=True))),
}


def _activation(name):
    name = "linear" if name is None else name
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)} or None, got "
                         f"{name!r}")
    return name


class Layer(Module):
    """Base of the Keras-flavoured layers.

    Subclasses implement `_build(input_shape)` (shape without the batch axis), `forward(x,
    mask, training)` -> (y, mask), `backward(dy)` -> dx, `compute_output_shape(input_shape)`,
    `get_weights()` / `set_weights()` in Keras' layout and `get_config()`. Their trainable
    tensors are registered as Parameters (lstmc's own layout), which is what optimizers see.
    """

    def __init__(self, name=None, input_shape=None, dtype="float32", **kwargs):
        super().__init__()
        if "input_dim" in kwargs:   # Keras 2's Dense(..., input_dim=n)
            input_shape = (kwargs.pop("input_dim"),)
        kwargs.pop("input_length", None)   # Keras 2's Embedding(..., input_length=T): unused
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments "
                            f"{sorted(kwargs)}")
        self.name = name or _auto_name(type(self).__name__)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.built = False
        self.built_shape = None
        self._inbound_nodes = []   # its calls on symbolic tensors (lstmc.keras.graph.Node)

    # why this layer cannot train, if it cannot: options of a loaded Keras file that only
    # training would honour (regularizers, constraints, ...)
    training_unsupported = None

    def _inner_modules(self):
        """The lstmc.nn module this layer runs (built layers with weights and Dropout)."""
        module = self.__dict__.get("_module")
        return () if module is None else (module,)

    def _refuse_if_quantized(self, what):
        """RuntimeError naming this layer if its weights are quantized (lstmc.quantize)."""
        for module in self._inner_modules():
            if module.quantized:
                raise RuntimeError(
                    f"{self.name} is quantized ({module.quantized}): the model runs inference "
                    f"only (predict, evaluate, calling it), so no {what}; train the float "
                    "model and quantize it again")

    def train(self, mode=True):
        if mode:
            self._refuse_if_quantized("training (fit, train_on_batch)")
        if mode and self.training_unsupported:
            raise ValueError(f"{self.name} cannot be trained: lstmc lacks its "
                             f"{self.training_unsupported} (inference ignores them, as "
                             "Keras' predict does)")
        return super().train(mode)

    def build(self, input_shape):
        """Creates the weights for inputs of `input_shape` (without the batch axis)."""
        input_shape = tuple(input_shape)
        if not self.built:
            self._build(input_shape)
            self.built, self.built_shape = True, input_shape
        return self

    def _build(self, input_shape):
        pass

    def _check_built_for(self, x):
        """Builds on the first input; afterwards the feature axes must match the build."""
        shape = tuple(x.shape[1:])
        if not self.built:
            self.build(shape)
        elif not self._accepts(shape):
            raise ValueError(f"{self.name}: input must have shape (batch,) + "
                             f"{self._shape_text(self.built_shape)}, got {tuple(x.shape)}")

    def _accepts(self, shape):
        """Whether inputs of feature shape `shape` fit the built weights (the time axis, the
        first one of a sequence, may vary)."""
        b = self.built_shape
        return len(shape) == len(b) and shape[-1:] == b[-1:]

    @staticmethod
    def _shape_text(shape):
        return "(" + ", ".join("T" if d is None else str(d) for d in shape) + \
            ("," if len(shape) == 1 else "") + ")"

    def __call__(self, x, mask=None, training=False, **kwargs):
        """Runs the layer on a batch (inference unless training=True); returns its output.
        On symbolic tensors (`Input(...)` and what layers made of them) it records the call
        in the functional graph and returns the output's symbolic tensor(s)."""
        if graph.is_symbolic(x, kwargs):
            return graph.call_symbolic(self, x, kwargs)
        if kwargs:
            raise TypeError(f"{self.name} got unexpected call arguments {sorted(kwargs)}")
        y, _ = self.forward(x, mask=mask, training=training)
        return y

    # ---- one call in a functional graph (lstmc.keras.graph) -------------------------------
    # A node runs its layer with lists: the arrays and masks of its inputs in, the arrays and
    # masks of its outputs out; backward takes one gradient (or None) per output and gives
    # one (or None) per input. Single-input, single-output layers adapt forward / backward.
    def _check_call(self, call):
        """ValueError if this layer cannot take the call's form (a list, states, options)."""
        if call.listed or call.n_state or call.kwargs:
            raise ValueError(f"{self.name} ({type(self).__name__}) takes one input tensor "
                             "and no call options")

    def _symbolic_outputs(self, shapes, call):
        """Builds for the input feature shapes (without the batch axis; one per input) ->
        [(shape, dtype name)] of the outputs."""
        self.build(shapes[0])
        return [(tuple(self.compute_output_shape(shapes[0])), self.dtype.name)]

    def _node_forward(self, xs, masks, training, call, logits=False):
        if logits:
            return [self.logits(xs[0], training)], [masks[0]]
        y, mask = self.forward(xs[0], masks[0], training)
        return [y], [mask]

    def _node_backward(self, dys, call, logits=False):
        if dys[0] is None:
            return [None]
        return [self.backward(dys[0], from_logits=True) if logits else self.backward(dys[0])]

    def compute_mask(self, mask):
        return mask

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_weights(self):
        return []

    def set_weights(self, weights):
        if list(weights):
            raise ValueError(f"{self.name} has no weights, got {len(list(weights))} arrays")

    def _parameter_weights(self):
        """get_weights of a layer whose weights are its parameters, in their order"""
        return [p.data.copy() for p in self.parameters()]

    def _set_parameter_weights(self, weights):
        """set_weights of such a layer"""
        params = list(self.parameters())
        ws = self._check_weights(list(weights), [p.shape for p in params])
        for p, w in zip(params, ws):
            p.data[...] = w

    def _require_built(self):
        if not self.built:
            raise RuntimeError(f"{self.name}: set_weights needs the layer built (call it on "
                               "an input or give input_shape=) so that its shapes are known")

    def _check_weights(self, weights, expected):
        """`weights` against the list of expected shapes -> list of arrays of our dtype."""
        weights = [to_numpy(w) for w in weights]
        self._require_built()
        self._refuse_if_quantized("set_weights")
        if len(weights) != len(expected):
            raise ValueError(f"{self.name}: set_weights expects {len(expected)} arrays with "
                             f"shapes {expected}, got {len(weights)}")
        for i, (w, shape) in enumerate(zip(weights, expected)):
            if w.shape != tuple(shape):
                raise ValueError(f"{self.name}: weight {i} must have shape {tuple(shape)}, "
                                 f"got {w.shape}")
        return [w.astype(self.dtype) for w in weights]

    def count_params(self):
        return int(sum(w.size for w in self.get_weights()))

    def get_config(self):
        config = {"name": self.name, "dtype": self.dtype.name}
        if self.input_shape is not None:
            config["input_shape"] = list(self.input_shape)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "input_shape" in config:
            config["input_shape"] = tuple(config["input_shape"])
        return cls(**config)

    def extra_repr(self):
        return f"name={self.name!r}"


class InputLayer(Layer):
    """The start of a functional graph (what `Input` makes): a named input of feature shape
    `shape` (without the batch axis) and dtype `input_dtype` (ids stay integers)."""

    def __init__(self, shape=None, dtype=None, name=None, batch_size=None, batch_shape=None):
        super().__init__(name=name or _auto_name("InputLayer"))
        if batch_shape is not None:
            if shape is not None:
                raise ValueError("give Input shape= or batch_shape=, not both")
            batch_size, shape = batch_shape[0], batch_shape[1:]
        if shape is None:
            raise ValueError("Input needs shape= (without the batch axis) or batch_shape=")
        if isinstance(shape, (int, np.integer)):
            shape = (shape,)
        self.shape = tuple(None if d is None else _units(d, "shape") for d in shape)
        self.input_dtype = np.dtype("float32" if dtype is None else dtype).name
        self.batch_size = None if batch_size is None else _units(batch_size, "batch_size")
        self.built, self.built_shape = True, self.shape
        self.output = graph.input_tensor(self)

    def compute_output_shape(self, input_shape):
        return self.shape

    def forward(self, x, mask=None, training=False):
        return x, mask

    def get_config(self):
        return {"name": self.name, "batch_shape": [self.batch_size, *self.shape],
                "dtype": self.input_dtype}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        shape = config.pop("batch_shape")
        return cls(shape=tuple(shape[1:]), batch_size=shape[0], **config)


def Input(shape=None, dtype=None, name=None, batch_size=None, batch_shape=None):
    """A symbolic input of a functional `Model` (or the first entry of a `Sequential`):
    `shape` without the batch axis (None for a length that varies), `dtype` "float32" (the
    default), "float64" or an integer type for token ids. Returns its `KerasTensor`, whose
    `shape` has the batch axis first, as Keras."""
    return InputLayer(shape, dtype, name, batch_size, batch_shape).output


def _float_input(x, layer):
    x = to_numpy(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{layer.name}: input must be a numeric array, got dtype {x.dtype}")
    return x.astype(layer.dtype, copy=False)


# ---- feed-forward layers ----------------------------------------------------------------
class Embedding(Layer):
    """Token ids (B, T) -> vectors (B, T, output_dim). embeddings (input_dim, output_dim)
    from U(-0.05, 0.05). mask_zero: id 0 is padding; the mask (B, T) goes to the next
    layers (so input_dim must leave room for the padding id)."""

    def __init__(self, input_dim, output_dim, mask_zero=False, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = _units(input_dim, "input_dim")
        self.output_dim = _units(output_dim, "output_dim")
        self.mask_zero = bool(mask_zero)
        m = nn.Embedding(self.input_dim, self.output_dim, dtype=self.dtype)
        m.weight.data[...] = generator().uniform(-0.05, 0.05, m.weight.shape)
        object.__setattr__(self, "_module", m)
        self.embeddings = m.weight
        self.built = True

    def build(self, input_shape):
        self.built_shape = tuple(input_shape)
        return self

    def _accepts(self, shape):
        return True

    def forward(self, x, mask=None, training=False):
        ids = to_numpy(x)
        if ids.dtype.kind == "f":
            if not np.all(np.isfinite(ids)) or np.any(ids != np.round(ids)):
                raise TypeError(f"{self.name}: input must hold integer token ids, got "
                                "non-integer floats")
            ids = ids.astype(np.int64)
        elif ids.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: input must be an integer array of token ids, got "
                            f"dtype {ids.dtype}")
        if self.built_shape is None:
            self.built_shape = tuple(ids.shape[1:])
        y = self._module(ids)
        return y, (ids != 0 if self.mask_zero else None)

    def backward(self, dy):
        self._module.backward(dy)
        return None

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def get_weights(self):
        return [self.embeddings.data.copy()]

    def set_weights(self, weights):
        (w,) = self._check_weights(weights, [self.embeddings.shape])
        self.embeddings.release()   # a quantized layer's refuses: see lstmc.nn._quantized
        self.embeddings.data[...] = w

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim,
                "output_dim": self.output_dim, "mask_zero": self.mask_zero}


class Dense(Layer):
    """y = activation(x @ kernel + bias) on the last axis of x (any rank >= 2); a mask passes
    through. kernel (in, units) glorot_uniform, bias zeros."""

    def __init__(self, units, activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.units = _units(units, "units")
        self.activation = _activation(activation)
        self.use_bias = bool(use_bias)
        self._y = None

    def _build(self, input_shape):
        fan_in = input_shape[-1]
        if fan_in is None:
            raise ValueError(f"{self.name}: the last input axis must be known to build")
        m = nn.Linear(fan_in, self.units, bias=self.use_bias, dtype=self.dtype)
        m.weight.data[...] = glorot_uniform((fan_in, self.units), self.dtype).T
        object.__setattr__(self, "_module", m)
        self.weight = m.weight                    # lstmc's (units, in) layout
        if self.use_bias:
            m.bias.data[...] = 0
            self.bias = m.bias

    def _accepts(self, shape):
        return len(shape) >= 1 and shape[-1] == self.built_shape[-1]

    def logits(self, x, training=False):
        """The pre-activation x @ kernel + bias (what a fused loss consumes)."""
        x = _float_input(x, self)
        if x.ndim < 2:
            raise ValueError(f"{self.name}: input must be (batch, ..., features), got shape "
                             f"{x.shape}")
        self._check_built_for(x)
        return self._module(x)

    def forward(self, x, mask=None, training=False):
        f, _ = _ACTIVATIONS[self.activation]
        self._y = f(self.logits(x, training))
        return self._y, mask

    def backward(self, dy, from_logits=False):
        """dy is the gradient of the output, or of the pre-activation with from_logits."""
        dy = to_numpy(dy).astype(self.dtype, copy=False)
        if not from_logits:
            if self._y is None:
                raise RuntimeError(f"{self.name}: backward needs a forward first")
            dy = _ACTIVATIONS[self.activation][1](self._y, dy)
        return self._module.backward(dy)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_weights(self):
        if not self.built:
            return []
        w = [self._module.weight.data.T.copy()]
        return w + ([self._module.bias.data.copy()] if self.use_bias else [])

    def set_weights(self, weights):
        self._require_built()
        m = self._module
        expected = [(self.built_shape[-1], self.units)]
        expected += [(self.units,)] if self.use_bias else []
        ws = self._check_weights(weights, expected)
        for p in m.parameters():
            p.release()   # a quantized layer's refuses: see lstmc.nn._quantized
        m.weight.data[...] = ws[0].T
        if self.use_bias:
            m.bias.data[...] = ws[1]

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "activation": self.activation, "use_bias": self.use_bias}


class Dropout(Layer):
    """Drops inputs with probability `rate` in training (scaling the rest by 1/(1-rate)); the
    identity at inference; a mask passes through."""

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.rate = _rate(rate, "rate")
        object.__setattr__(self, "_module", nn.Dropout(self.rate))

    def _accepts(self, shape):
        return True

    def forward(self, x, mask=None, training=False):
        x = _float_input(x, self)
        self._check_built_for(x)
        self._module.train(training)
        return self._module(x), mask

    def backward(self, dy):
        return self._module.backward(dy)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


# ---- recurrent layers -------------------------------------------------------------------
class _Steps:
    """Which steps of each row a recurrent layer runs, and in which order — Keras' mask
    semantics as one data movement.

    Keras holds the state on masked steps, so running a row is the same as running only its
    valid steps. With a mask (B, T), the valid steps of each row are moved to the front
    (in layer order: reversed for go_backwards), the engine runs them with `lengths`, and
    outputs are put back where Keras has them: at a masked step the previous output is
    carried (zeros before the first valid step), or zeros with `zero_output`
    (Bidirectional's return_sequences). Without a mask only the order may change.
    """

    def __init__(self, mask, shape, reverse, zero_output):
        B, T = shape
        self.reverse = reverse
        self.zero_output = zero_output
        self.lengths = None
        if mask is None:
            return
        m = np.asarray(mask, dtype=bool)
        if m.shape != (B, T):
            raise ValueError(f"mask must have shape {(B, T)} (batch, time), got {m.shape}")
        if reverse:
            m = m[:, ::-1]
        self.valid = m
        self.lengths = m.sum(axis=1)
        # compressed position j of row b holds layer step src[b, j] (valid steps first, in order)
        self.src = np.argsort(~m, axis=1, kind="stable")
        # the compressed position whose output layer step s shows (-1: none yet)
        self.last = np.cumsum(m, axis=1) - 1
        self.right_padded = bool(np.all(m == (np.arange(T) < self.lengths[:, None])))

    def gather(self, x):
        """x (B, T, F) in input order -> the engine's input (B, T, F)."""
        if self.reverse:
            x = x[:, ::-1]
        if self.lengths is not None and not self.right_padded:
            x = np.take_along_axis(x, self.src[:, :, None], axis=1)
        return np.ascontiguousarray(x)

    def scatter(self, y):
        """The engine's outputs (B, T, U) -> outputs per layer step, Keras' fill."""
        if self.lengths is None:
            return y
        show = self.valid if self.zero_output else self.last >= 0
        out = np.take_along_axis(y, np.maximum(self.last, 0)[:, :, None], axis=1)
        out *= show[:, :, None]
        return out

    def scatter_backward(self, dy):
        """Gradient of `scatter`: dy per layer step -> dy per engine position."""
        if self.lengths is None:
            return dy
        B, T, U = dy.shape
        show = self.valid if self.zero_output else self.last >= 0
        d = np.zeros((B * T, U), dtype=dy.dtype)
        rows = (np.arange(B)[:, None] * T + np.maximum(self.last, 0))[show]
        np.add.at(d, rows, dy[show])
        return d.reshape(B, T, U)

    def scatter_input_grad(self, dxc):
        """The engine's input gradient -> (B, T, F) in input order (0 at masked steps)."""
        if self.lengths is not None:
            if self.right_padded:
                dxc = dxc * self.valid[:, :, None]
            else:
                B, T, F = dxc.shape
                dx = np.zeros_like(dxc)
                j = np.arange(T)[None, :] < self.lengths[:, None]
                dx[np.nonzero(j)[0], self.src[j]] = dxc[j]
                dxc = dx
        return np.ascontiguousarray(dxc[:, ::-1]) if self.reverse else dxc


# Keras' weights per cell: gate blocks in lstmc (PyTorch) order -> Keras order, and whether
# Keras keeps a separate recurrent bias.
_GATE_ORDER = {"lstm": [0, 1, 2, 3], "gru": [1, 0, 2], "simple_rnn": [0]}


class _Saved(NamedTuple):
    """What a recurrent layer's forward keeps for its backward."""
    steps: _Steps              # the mask's order of steps
    drop: np.ndarray           # (B, 1, F) input dropout mask, or None
    training: bool
    B: int
    T: int


class _RNN(Layer):
    """Shared by LSTM, GRU and SimpleRNN: arguments, masks, states, weight conversion."""

    _kind = None
    _gates = 1

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid",
                 use_bias=True, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, dropout=0.0, recurrent_dropout=0.0,
                 unroll=False, **kwargs):
        super().__init__(**kwargs)
        self.units = _units(units, "units")
        self.activation = activation
        self.recurrent_activation = recurrent_activation
        self.use_bias = bool(use_bias)
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        self.dropout = _rate(dropout, "dropout")
        # Keras 3's recurrent dropout (its cells' implementation 1): in training, one mask
        # per call, direction and gate block on h in the recurrent products (lstmc.nn's
        # recurrent_dropout, which draws them; lstmc.reference is the spec)
        self.recurrent_dropout = _rate(recurrent_dropout, "recurrent_dropout")
        self._check_activations()
        self._states = None
        self._saved = None
        self.bidirectional = False   # set by Bidirectional, which owns a layer's engine

    def _check_activations(self):
        if self.activation != "tanh" or self.recurrent_activation != "sigmoid":
            raise ValueError(f"{type(self).__name__} supports activation='tanh' and "
                             f"recurrent_activation='sigmoid' (the fused kernels'), got "
                             f"{self.activation!r} and {self.recurrent_activation!r}")

    # ---- the engine ---------------------------------------------------------------------
    def _make_module(self, input_dim, bidirectional):
        raise NotImplementedError

    def _build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"{self.name}: input must be (batch, time, features), got "
                             f"feature shape {input_shape}")
        self._build_engine(input_shape[-1], self.bidirectional)

    def _build_engine(self, input_dim, bidirectional):
        self.input_dim = input_dim
        m = self._make_module(input_dim, bidirectional)
        object.__setattr__(self, "_module", m)   # its parameters are registered below
        # Keras has one bias where lstmc has two, except GRU(reset_after=True): the second
        # stays 0 and is not trained, so the pair behaves as Keras' single bias.
        for name, p in m.named_parameters():
            if name.startswith("bias_hh") and not self._recurrent_bias:
                p.data[...] = 0
                continue
            setattr(self, name, p)
        for d in range(2 if bidirectional else 1):
            self._set_direction(d, self._keras_init(input_dim))

    @property
    def _recurrent_bias(self):
        return False

    def _keras_init(self, input_dim):
        G, U = self._gates, self.units
        bias = np.zeros((2, G * U) if self._recurrent_bias else (G * U,), dtype=self.dtype)
        return [glorot_uniform((input_dim, G * U), self.dtype),
                orthogonal((U, G * U), self.dtype)] + ([bias] if self.use_bias else [])

    def _params(self, d):
        sfx = "_l0" + ("_reverse" if d else "")
        m = self._module
        get = lambda n: getattr(m, n + sfx)
        return get("weight_ih"), get("weight_hh"), (get("bias_ih"), get("bias_hh")) \
            if self.use_bias else None

    def _blocks(self, a):
        """lstmc's gate blocks (G*U, ...) -> Keras' order, or back (the maps are involutions)."""
        U = self.units
        return np.concatenate([a[g * U:(g + 1) * U] for g in _GATE_ORDER[self._kind]])

    def _get_direction(self, d):
        w_ih, w_hh, b = self._params(d)
        out = [self._blocks(w_ih.data).T.copy(), self._blocks(w_hh.data).T.copy()]
        if b is not None:
            b_ih, b_hh = (self._blocks(x.data) for x in b)
            out.append(np.stack([b_ih, b_hh]) if self._recurrent_bias else b_ih + b_hh)
        return out

    def _set_direction(self, d, weights):
        w_ih, w_hh, b = self._params(d)
        values = [(w_ih, self._blocks(weights[0].T)), (w_hh, self._blocks(weights[1].T))]
        if b is not None:
            if self._recurrent_bias:
                values += [(b[0], self._blocks(weights[2][0])),
                           (b[1], self._blocks(weights[2][1]))]
            else:
                values += [(b[0], self._blocks(weights[2])), (b[1], 0)]
        for p, value in values:
            p.release()   # before writing: see lstmc.nn._engine.PackedWeights
            p.data[...] = value

    def _weight_shapes(self):
        G, U = self._gates, self.units
        shapes = [(self.input_dim, G * U), (U, G * U)]
        if self.use_bias:
            shapes.append((2, G * U) if self._recurrent_bias else (G * U,))
        return shapes

    def get_weights(self):
        return self._get_direction(0) if self.built else []

    def set_weights(self, weights):
        self._require_built()
        self._set_direction(0, self._check_weights(weights, self._weight_shapes()))

    # ---- states ---------------------------------------------------------------------------
    @property
    def _n_states(self):
        return 1

    def reset_states(self, states=None):
        """Stateful layers: forget the carried state (or set it: a list of (B, units))."""
        if states is None:
            self._states = None
            return
        states = [np.asarray(s, dtype=self.dtype) for s in states]
        if len(states) != self._n_states or any(s.ndim != 2 or s.shape[1] != self.units
                                                for s in states):
            raise ValueError(f"{self.name}: states must be {self._n_states} arrays of shape "
                             f"(batch, {self.units})")
        self._states = [s[None] for s in states]

    # ---- streaming (lstmc's, beyond Keras) -----------------------------------------------
    def initial_state(self, batch_size=1, states=None):
        """A stream through this layer for `step`, one timestep a call (lstmc's addition:
        Keras has no streaming call): a StreamState of `batch_size` rows starting from zeros
        or from `states` (Keras' order, a list of (B, units): [h] or [h, c], e.g. an
        encoder's return_state outputs). Unidirectional layers only (not go_backwards, not
        inside Bidirectional); the layer must be built."""
        if not self.built:
            raise RuntimeError(f"{self.name}: build the layer (call or fit its model) before "
                               "streaming through it")
        if self.bidirectional or self.go_backwards:
            raise ValueError(f"{self.name}: a stream runs forward in time: not for "
                             "go_backwards or Bidirectional layers")
        start = self._initial(states, positive_int(batch_size, "batch_size")) if states is not None \
            else None
        h0 = None if start is None else start[0]
        c0 = None if start is None or len(start) < 2 else start[1]
        return self._module.initial_state(batch_size, h0=h0, c0=c0)

    def step(self, x_t, state, out=None):
        """One timestep of the stream: x_t (B, input_dim) -> (y_t (B, units), state), as
        lstmc.nn's step (in place, allocation-free; y_t is the state's buffer)."""
        return self._module.step(x_t, state, out=out)

    def _initial(self, initial_state, B):
        """The states to start from, (D, B, U) each, or None (zeros)."""
        if initial_state is not None:
            states = [np.asarray(s, dtype=self.dtype) for s in initial_state]
            n, D = self._n_states, 2 if self.bidirectional else 1
            if len(states) != D * n or any(s.shape != (B, self.units) for s in states):
                raise ValueError(f"{self.name}: initial_state must be {D * n} arrays of shape "
                                 f"({B}, {self.units})")
            # Keras' order: the forward direction's states, then the backward one's
            return [np.stack([states[d * n + i] for d in range(D)]) for i in range(n)]
        if self.stateful and self._states is not None:
            if self._states[0].shape[1] != B:
                raise ValueError(f"{self.name}: a stateful layer needs the same batch size "
                                 f"every call ({self._states[0].shape[1]}), got {B}; call "
                                 "reset_states() to start over")
            return self._states
        return None

    def _hx(self, states):
        return None if states is None else states[0]

    def _split(self, result):
        """The module's (out, hx) -> (out, [h_n, ...]) as (D, B, U) arrays."""
        out, hn = result
        return out, [hn]

    def _backward_hx(self, dstates):
        return dstates[0]

    def __call__(self, x, mask=None, training=False, initial_state=None):
        """Runs the layer on a batch; `initial_state` is a list of (B, units) arrays (h, or
        h and c for LSTM), zeros when None. On symbolic tensors the states may be symbolic
        too (a functional graph: an encoder's return_state outputs start a decoder)."""
        kwargs = {} if initial_state is None else {"initial_state": initial_state}
        if graph.is_symbolic(x, kwargs):
            return graph.call_symbolic(self, x, kwargs)
        return self.forward(x, mask=mask, training=training, initial_state=initial_state)[0]

    def _check_call(self, call):
        if call.listed or call.kwargs:
            raise ValueError(f"{self.name} takes one input tensor (and initial_state=)")
        if call.n_state not in (0, self._n_states):
            raise ValueError(f"{self.name}: initial_state must be {self._n_states} tensors, "
                             f"got {call.n_state}")
        if self.bidirectional:
            raise ValueError("a Bidirectional layer's inner layer is not called directly")

    def _symbolic_outputs(self, shapes, call):
        for i, shape in enumerate(shapes[1:]):
            if tuple(shape) != (self.units,):
                raise ValueError(f"{self.name}: initial_state[{i}] must have shape (batch, "
                                 f"{self.units}), got {(None,) + tuple(shape)}")
        self.build(shapes[0])
        out = [(tuple(self.compute_output_shape(shapes[0])), self.dtype.name)]
        if self.return_state:
            out += [((self.units,), self.dtype.name)] * self._n_states
        return out

    def _node_forward(self, xs, masks, training, call, logits=False):
        # Keras 3 hands a layer its input's mask only when the call has one tensor
        # argument (keras/src/layers/layer.py, "Populate mask argument(s)"): called with
        # initial_state= tensors, the layer runs every step, masked or not, and its output
        # still carries the input's mask. Models must compute what Keras' do.
        run_mask = None if call.n_state else masks[0]
        y, _ = self.forward(xs[0], run_mask, training, initial_state=xs[1:] or None)
        out_mask = self.compute_mask(masks[0])
        if self.return_state:
            return y, [out_mask] + [None] * self._n_states
        return [y], [out_mask]

    def _node_backward(self, dys, call, logits=False):
        dx, dstates = self._backward(dys[0], dys[1:] if self.return_state else None)
        return [dx] + (dstates if call.n_state else [])

    # ---- forward / backward -------------------------------------------------------------
    def forward(self, x, mask=None, training=False, initial_state=None):
        x = _float_input(x, self)
        if x.ndim != 3:
            raise ValueError(f"{self.name}: input must be 3-D (batch, time, features), got "
                             f"shape {x.shape}")
        self._check_built_for(x)
        B, T, _ = x.shape
        steps = _Steps(mask, (B, T), self.go_backwards and not self.bidirectional,
                       zero_output=self.bidirectional)
        drop = None
        if training and self.dropout > 0:   # one input mask per row, shared by all steps
            keep = 1.0 - self.dropout
            drop = (generator().random((B, 1, x.shape[2])) < keep).astype(self.dtype) / keep
            x = x * drop
        xs = steps.gather(x)
        if training:
            self._refuse_if_quantized("training")   # naming this layer, not its module
        self._module.train(training)
        out, states = self._split(self._module(xs, self._hx(self._initial(initial_state, B)),
                                               lengths=steps.lengths))
        if self.stateful:
            self._states = [s.copy() for s in states]
        self._saved = _Saved(steps, drop, training, B, T)
        y = self._merge(steps.scatter(out), states)
        if self.return_state:
            # Keras' order: h (and c) of the forward direction, then of the backward one
            return [y] + [s[d] for d in range(states[0].shape[0]) for s in states], None
        return y, (mask if self.return_sequences else None)

    def _merge(self, seq, states):
        """The layer's output from the per-step outputs and the final states."""
        if self.return_sequences:
            return seq
        return states[0] if self.bidirectional else states[0][0]

    def _merge_backward(self, dy, B, T):
        """-> (d per-step outputs (B, T, D*U) or None, d final h (D, B, U) or None)."""
        if self.return_sequences:
            return dy, None
        return None, (dy if self.bidirectional else dy[None])

    def backward(self, dy):
        return self._backward(dy)[0]

    def _backward(self, dy, dstates=None):
        """Gradients of the output `dy` (or None) and, with return_state, of the returned
        states `dstates` (a list, None entries for states not used) -> (dx, [gradient of
        each initial state (B, units)])."""
        saved = self._saved
        if saved is None or not saved.training:
            raise RuntimeError(f"{self.name}: backward needs a forward with training=True")
        steps, drop, B, T = saved.steps, saved.drop, saved.B, saved.T
        D = 2 if self.bidirectional else 1
        dseq = dh = None
        if dy is not None:
            dy = to_numpy(dy).astype(self.dtype, copy=False)
            dseq, dh = self._merge_backward(dy, B, T)
        if dseq is None:
            dout = np.zeros((B, T, D * self.units), dtype=self.dtype)
        else:
            dout = np.ascontiguousarray(steps.scatter_backward(dseq))
        n = self._n_states
        dfinal = [None] * n   # (D, B, U) each: the final states' gradients
        dstates = list(dstates or [])
        for i in range(n):    # dstates in Keras' order: each direction's states in turn
            per_dir = [dstates[d * n + i] if d * n + i < len(dstates) else None
                       for d in range(D)]
            if any(g is not None for g in per_dir):
                dfinal[i] = np.stack([np.zeros((B, self.units), self.dtype) if g is None
                                      else to_numpy(g).astype(self.dtype, copy=False)
                                      for g in per_dir])
        if dh is not None:   # the last output is h_n: both gradients reach it
            dfinal[0] = dh if dfinal[0] is None else dfinal[0] + dh
        dhx = None if all(d is None for d in dfinal) else self._backward_hx(dfinal)
        dxs, dhx0 = self._module.backward(dout, dhx)
        dx = steps.scatter_input_grad(dxs)
        per_state = [np.zeros((D, B, self.units), self.dtype) if g is None else g
                     for g in self._split_state_grads(dhx0)]
        dinit = [g[d] for d in range(D) for g in per_state]
        return (dx if drop is None else dx * drop), dinit

    def _split_state_grads(self, dhx0):
        """The module's initial-state gradient -> a list of (D, B, U) (or None) per state."""
        return [dhx0]

    def compute_mask(self, mask):
        return mask if self.return_sequences else None

    def compute_output_shape(self, input_shape):
        D = 2 if self.bidirectional else 1
        return ((input_shape[0], D * self.units) if self.return_sequences
                else (D * self.units,))

    def get_config(self):
        c = {**super().get_config(), "units": self.units, "activation": self.activation,
             "use_bias": self.use_bias, "return_sequences": self.return_sequences,
             "return_state": self.return_state, "go_backwards": self.go_backwards,
             "stateful": self.stateful, "dropout": self.dropout,
             "recurrent_dropout": self.recurrent_dropout}
        if self._gates > 1:
            c["recurrent_activation"] = self.recurrent_activation
        return c


class LSTM(_RNN):
    """Keras' LSTM layer on lstmc's engine: gates i, f, c, o; weights kernel (in, 4*units),
    recurrent_kernel (units, 4*units), bias (4*units,) (forget-gate bias initialised to 1,
    unit_forget_bias). Returns the last output (B, units), or all (B, T, units) with
    return_sequences; return_state adds h and c."""

    _kind, _gates = "lstm", 4

    def __init__(self, units, unit_forget_bias=True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def _make_module(self, input_dim, bidirectional):
        return nn.LSTM(input_dim, self.units, bias=self.use_bias, batch_first=True,
                       bidirectional=bidirectional, dtype=self.dtype,
                       recurrent_dropout=self.recurrent_dropout)

    def _keras_init(self, input_dim):
        w = super()._keras_init(input_dim)
        if self.use_bias and self.unit_forget_bias:
            w[2][self.units:2 * self.units] = 1
        return w

    @property
    def _n_states(self):
        return 2

    def _hx(self, states):
        return None if states is None else (states[0], states[1])

    def _split(self, result):
        out, (hn, cn) = result
        return out, [hn, cn]

    def _backward_hx(self, dstates):
        return (dstates[0], dstates[1])

    def _split_state_grads(self, dhx0):
        return list(dhx0)

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


class GRU(_RNN):
    """Keras' GRU layer on lstmc's engine: gates z, r, h; reset_after=True (Keras' default,
    cuDNN-compatible) keeps two biases, bias (2, 3*units); reset_after=False one, (3*units,).
    """

    _kind, _gates = "gru", 3

    def __init__(self, units, reset_after=True, **kwargs):
        super().__init__(units, **kwargs)
        self.reset_after = bool(reset_after)

    @property
    def _recurrent_bias(self):
        return self.reset_after

    def _make_module(self, input_dim, bidirectional):
        return nn.GRU(input_dim, self.units, bias=self.use_bias, batch_first=True,
                      bidirectional=bidirectional, reset_after=self.reset_after,
                      dtype=self.dtype, recurrent_dropout=self.recurrent_dropout)

    def get_config(self):
        return {**super().get_config(), "reset_after": self.reset_after}


class SimpleRNN(_RNN):
    """Keras' SimpleRNN on lstmc's engine: h' = activation(x kernel + h recurrent_kernel +
    bias), activation 'tanh' (default) or 'relu'."""

    _kind, _gates = "simple_rnn", 1

    def __init__(self, units, activation="tanh", **kwargs):
        super().__init__(units, activation=activation, **kwargs)

    def _check_activations(self):
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"SimpleRNN supports activation 'tanh' or 'relu', got "
                             f"{self.activation!r}")

    def _make_module(self, input_dim, bidirectional):
        return nn.RNN(input_dim, self.units, nonlinearity=self.activation, bias=self.use_bias,
                      batch_first=True, bidirectional=bidirectional, dtype=self.dtype,
                      recurrent_dropout=self.recurrent_dropout)


_MERGE_MODES = ("concat", "sum", "mul", "ave")


class Bidirectional(Layer):
    """Runs a recurrent layer forwards and backwards over the sequence and merges the two
    ('concat' (default), 'sum', 'mul', 'ave'). Both directions run in one call of the
    engine; weights are the forward layer's then the backward layer's, each in Keras'
    layout. With return_sequences, masked steps output zeros (as Keras)."""

    def __init__(self, layer, merge_mode="concat", backward_layer=None, **kwargs):
        if not isinstance(layer, _RNN):
            raise TypeError(f"Bidirectional wraps an LSTM, GRU or SimpleRNN layer, got "
                            f"{type(layer).__name__}")
        if backward_layer is not None:
            raise ValueError("backward_layer is not supported: the backward direction is "
                             "`layer`'s configuration run in reverse")
        if merge_mode not in _MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {_MERGE_MODES}, got {merge_mode!r}")
        if layer.stateful:
            raise ValueError("Bidirectional does not support stateful layers")
        if layer.go_backwards:
            raise ValueError("Bidirectional runs the layer both ways itself: give it a layer "
                             "with go_backwards=False")
        kwargs.setdefault("input_shape", layer.input_shape)
        super().__init__(**kwargs)
        self.merge_mode = merge_mode
        # a fresh layer of the same configuration: the caller's layer stays as it was
        inner = type(layer).from_config(layer.get_config())
        inner.bidirectional = True
        object.__setattr__(self, "layer", inner)   # its parameters are registered on build

    @property
    def return_sequences(self):
        return self.layer.return_sequences

    @property
    def return_state(self):
        return self.layer.return_state

    @property
    def units(self):
        return self.layer.units

    def _build(self, input_shape):
        self.layer.build(input_shape)
        for name, p in self.layer.named_parameters():
            setattr(self, name, p)

    def _inner_modules(self):
        return self.layer._inner_modules()

    # ---- in a functional graph: initial_state= (forward states, then backward ones) and
    # return_state outputs in Keras' order, as the wrapped layer's
    def __call__(self, x, mask=None, training=False, initial_state=None):
        kwargs = {} if initial_state is None else {"initial_state": initial_state}
        if graph.is_symbolic(x, kwargs):
            return graph.call_symbolic(self, x, kwargs)
        y, _ = self.forward(x, mask, training, initial_state=initial_state)
        return y

    def _check_call(self, call):
        n = 2 * self.layer._n_states
        if call.listed or call.kwargs:
            raise ValueError(f"{self.name} takes one input tensor (and initial_state=)")
        if call.n_state not in (0, n):
            raise ValueError(f"{self.name}: initial_state must be {n} tensors (the forward "
                             f"direction's states, then the backward one's), got "
                             f"{call.n_state}")

    _symbolic_outputs = _RNN._symbolic_outputs   # with _n_states of both directions
    _node_forward = _RNN._node_forward

    @property
    def _n_states(self):   # of one direction, as _RNN._node_forward counts them
        return 2 * self.layer._n_states

    def _node_backward(self, dys, call, logits=False):
        dy = None if dys[0] is None else self._unmerge(dys[0])
        dx, dstates = self.layer._backward(dy, dys[1:] if self.return_state else None)
        return [dx] + (dstates if call.n_state else [])

    def forward(self, x, mask=None, training=False, initial_state=None):
        x = _float_input(x, self)
        if x.ndim == 3:
            self._check_built_for(x)
        y, mask_out = self.layer.forward(x, mask, training, initial_state=initial_state)
        if self.layer.return_state:
            return [self._merge(y[0])] + y[1:], None
        return self._merge(y), mask_out

    def _merge(self, y):
        U = self.units
        if self.layer.return_sequences:
            f, b = y[..., :U], y[..., U:]
        else:
            f, b = y[0], y[1]
        self._halves = (f, b)
        if self.merge_mode == "concat":
            return np.concatenate([f, b], axis=-1)
        if self.merge_mode == "sum":
            return f + b
        if self.merge_mode == "mul":
            return f * b
        return (f + b) / 2

    def backward(self, dy):
        return self.layer.backward(self._unmerge(dy))

    def _unmerge(self, dy):
        """The merged output's gradient -> the wrapped layer's (both directions)."""
        dy = to_numpy(dy).astype(self.dtype, copy=False)
        U, (f, b) = self.units, self._halves
        if self.merge_mode == "concat":
            df, db = dy[..., :U], dy[..., U:]
        elif self.merge_mode == "sum":
            df = db = dy
        elif self.merge_mode == "mul":
            df, db = dy * b, dy * f
        else:
            df = db = dy / 2
        if self.layer.return_sequences:
            return np.concatenate([df, db], axis=-1)
        return np.stack([df, db])

    def compute_mask(self, mask):
        return self.layer.compute_mask(mask)

    def compute_output_shape(self, input_shape):
        U = self.units * (2 if self.merge_mode == "concat" else 1)
        return (input_shape[0], U) if self.return_sequences else (U,)

    def get_weights(self):
        if not self.built:
            return []
        return self.layer._get_direction(0) + self.layer._get_direction(1)

    def set_weights(self, weights):
        self._require_built()
        shapes = self.layer._weight_shapes()
        ws = self._check_weights(list(weights), shapes + shapes)
        n = len(shapes)
        self.layer._set_direction(0, ws[:n])
        self.layer._set_direction(1, ws[n:])

    def get_config(self):
        return {**super().get_config(), "merge_mode": self.merge_mode,
                "layer": {"class_name": type(self.layer).__name__,
                          "config": self.layer.get_config()}}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        inner = config.pop("layer")
        layer = _LAYERS[inner["class_name"]].from_config(inner["config"])
        if "input_shape" in config:
            config["input_shape"] = tuple(config["input_shape"])
        return cls(layer, **config)


# ---- shaping and normalisation layers (functional models) ---------------------------------
class Activation(Layer):
    """activation(x) elementwise ('linear', 'relu', 'tanh', 'sigmoid', 'softmax' over the
    last axis); a mask passes through."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = _activation(activation)
        self._y = None

    def _accepts(self, shape):
        return True

    def forward(self, x, mask=None, training=False):
        x = _float_input(x, self)
        self._check_built_for(x)
        self._y = _ACTIVATIONS[self.activation][0](x)
        return self._y, mask

    def backward(self, dy):
        if self._y is None:
            raise RuntimeError(f"{self.name}: backward needs a forward first")
        return _ACTIVATIONS[self.activation][1](self._y, to_numpy(dy).astype(self.dtype))

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


class RepeatVector(Layer):
    """(B, F) -> (B, n, F): the input repeated n times along a new time axis (no mask, as
    Keras)."""

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = _units(n, "n")

    def _build(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"{self.name}: input must be (batch, features), got feature "
                             f"shape {input_shape}")

    def forward(self, x, mask=None, training=False):
        x = _float_input(x, self)
        if x.ndim != 2:
            raise ValueError(f"{self.name}: input must be 2-D (batch, features), got shape "
                             f"{x.shape}")
        self._check_built_for(x)
        return np.repeat(x[:, None, :], self.n, axis=1), None

    def backward(self, dy):
        return to_numpy(dy).astype(self.dtype, copy=False).sum(axis=1)

    def compute_mask(self, mask):
        return None

    def compute_output_shape(self, input_shape):
        return (self.n,) + tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "n": self.n}


class LayerNormalization(Layer):
    """(x - mean) / sqrt(var + epsilon) * gamma + beta over the last axis (Keras' default
    axis=-1); gamma ones, beta zeros; weights [gamma (with scale), beta (with center)]; a
    mask passes through."""

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        if axis not in (-1, [-1], (-1,)):
            raise ValueError(f"{type(self).__name__} normalises the last axis (axis=-1), got "
                             f"axis={axis!r}")
        self.axis = -1
        self.epsilon = float(epsilon)
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
        self.center, self.scale = bool(center), bool(scale)
        self._saved = None

    def _build(self, input_shape):
        F = input_shape[-1] if input_shape else None
        if F is None:
            raise ValueError(f"{self.name}: the last input axis must be known to build")
        if self.scale:
            self.gamma = Parameter(np.ones(F, dtype=self.dtype))
        if self.center:
            self.beta = Parameter(np.zeros(F, dtype=self.dtype))

    def _accepts(self, shape):
        return len(shape) >= 1 and shape[-1] == self.built_shape[-1]

    def forward(self, x, mask=None, training=False):
        x = _float_input(x, self)
        if x.ndim < 2:
            raise ValueError(f"{self.name}: input must be (batch, ..., features), got shape "
                             f"{x.shape}")
        self._check_built_for(x)
        mean = x.mean(axis=-1, keepdims=True)
        centred = x - mean
        inv = 1 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + self.epsilon)
        xhat = centred * inv
        self._saved = (xhat, inv)
        y = xhat * self.gamma.data if self.scale else xhat
        return (y + self.beta.data if self.center else y), mask

    def backward(self, dy):
        if self._saved is None:
            raise RuntimeError(f"{self.name}: backward needs a forward first")
        xhat, inv = self._saved
        dy = to_numpy(dy).astype(self.dtype, copy=False)
        lead = tuple(range(dy.ndim - 1))
        if self.center:
            self.beta.grad += dy.sum(axis=lead)
        if self.scale:
            self.gamma.grad += (dy * xhat).sum(axis=lead)
            dy = dy * self.gamma.data
        # dx = inv (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
        return inv * (dy - dy.mean(axis=-1, keepdims=True)
                      - xhat * (dy * xhat).mean(axis=-1, keepdims=True))

    get_weights = Layer._parameter_weights
    set_weights = Layer._set_parameter_weights

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale}


class TimeDistributed(Layer):
    """Applies `layer` to every step of a (B, T, ...) input: the steps are folded into the
    batch, so the layer sees (B*T, ...); its weights are the layer's; a mask passes
    through."""

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, Layer) or isinstance(layer, (_RNN, Bidirectional)):
            raise TypeError(f"TimeDistributed wraps a feed-forward lstmc layer (Dense, "
                            f"Activation, ...), got {type(layer).__name__}")
        super().__init__(**kwargs)
        self.layer = layer    # a child: its parameters are this layer's

    def _build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"{self.name}: input must be (batch, time, ...), got feature "
                             f"shape {input_shape}")
        self.layer.build(tuple(input_shape[1:]))

    def _accepts(self, shape):
        return len(shape) == len(self.built_shape) and self.layer._accepts(tuple(shape[1:]))

    def _inner_modules(self):
        return self.layer._inner_modules()

    def forward(self, x, mask=None, training=False):
        x = to_numpy(x)
        if x.ndim < 3:
            raise ValueError(f"{self.name}: input must be (batch, time, ...), got shape "
                             f"{x.shape}")
        if not self.built:
            self.build(x.shape[1:])
        B, T = x.shape[:2]
        y, _ = self.layer.forward(x.reshape((B * T,) + x.shape[2:]), None, training)
        return y.reshape((B, T) + y.shape[1:]), mask

    def backward(self, dy):
        dy = to_numpy(dy)
        B, T = dy.shape[:2]
        dx = self.layer.backward(dy.reshape((B * T,) + dy.shape[2:]))
        return None if dx is None else dx.reshape((B, T) + dx.shape[1:])

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + tuple(self.layer.compute_output_shape(input_shape[1:]))

    def get_weights(self):
        return self.layer.get_weights()

    def set_weights(self, weights):
        self.layer.set_weights(weights)

    def get_config(self):
        return {**super().get_config(), "layer": serialize(self.layer)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layer = deserialize(config.pop("layer"))
        if "input_shape" in config:
            config["input_shape"] = tuple(config["input_shape"])
        return cls(layer, **config)


# the merge and attention layers live in their own modules (they import this one)
from lstmc.keras.merging import Add, Concatenate, Dot, Multiply  # noqa: E402
from lstmc.keras.attention import AdditiveAttention, Attention  # noqa: E402

_LAYERS = {c.__name__: c for c in (Embedding, Dense, Dropout, LSTM, GRU, SimpleRNN,
                                   Bidirectional, InputLayer, Activation, RepeatVector,
                                   LayerNormalization, TimeDistributed, Concatenate, Add,
                                   Multiply, Dot, Attention, AdditiveAttention)}


def deserialize(spec):
    """{"class_name": ..., "config": ...} -> a layer."""
    cls = _LAYERS.get(spec.get("class_name"))
    if cls is None:
        raise ValueError(f"unknown layer class {spec.get('class_name')!r}")
    return cls.from_config(spec["config"])


def serialize(layer):
    return {"class_name": type(layer).__name__, "config": layer.get_config()}
