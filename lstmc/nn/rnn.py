"""The sequence modules `LSTM`, `GRU` and `RNN` (whole sequences, stacked, bidirectional,
variable lengths), all on one engine (lstmc.nn._engine): the three differ only in their cell
and in what they return. The one-step cells are in lstmc.nn.cells, streaming (initial_state,
step) in lstmc.nn.streaming.

The modules check every argument first, so a bad call raises a Python exception that names
the argument before any C code runs, and turn the user's layouts (batch_first, unbatched,
hx pairs) into the engine's time-major arrays and back.
"""
import math

import numpy as np

from lstmc import _core
from lstmc._random import generator
from lstmc.nn._checks import as_float, check_shape, dtype_of, pair, positive_int
from lstmc.nn._engine import CellOptions, Engine, Spec
from lstmc.reference import ACTIVATION_DEFAULTS
from lstmc.nn.module import Module, Parameter, to_numpy
from lstmc.nn.streaming import StreamState, Streaming  # noqa: F401  (StreamState: its old home)


def _fixed_at_construction(name, owner):
    """A read-only attribute for an option that picks the cell kind (kept as `_name`): plans
    and the packed eval-mode weights follow the kind, so it cannot change under them."""
    private = "_" + name

    def refuse(self, value):
        raise AttributeError(f"{name} is fixed at construction: build a new {owner}")

    return property(lambda self: getattr(self, private), refuse,
                    doc=f"{name}, fixed at construction")


def _cell_clip(value):
    """cell_clip: None or a number > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not value > 0:
        raise ValueError(f"cell_clip must be None or a number > 0, got {value!r}")
    return float(value)


def _activation(entry, owner):
    """One activation: a name, or (name, alpha, beta) with None for the default ->
    (lower-case name, alpha, beta), alpha / beta None where the function reads none."""
    name, *given = (entry,) if isinstance(entry, str) else tuple(entry)
    if not isinstance(name, str) or name.lower() not in ACTIVATION_DEFAULTS or len(given) > 2:
        raise ValueError(f"{owner}: activation {entry!r} is not a name or (name, alpha, beta) "
                         f"of one of {sorted(ACTIVATION_DEFAULTS)}")
    name = name.lower()
    params = dict(ACTIVATION_DEFAULTS[name])
    for key, value in zip(("alpha", "beta"), given):
        if value is not None:
            if key not in params or isinstance(value, bool) \
                    or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(value):
                raise ValueError(f"{owner}: activation {entry!r}: {name} takes "
                                 f"{' and '.join(params) or 'no parameter'}, as finite numbers")
            params[key] = float(value)
    for key, value in params.items():
        if value is None:
            raise ValueError(f"{owner}: activation {name} needs its {key} (it has no default)")
    return name, params.get("alpha"), params.get("beta")


def _activations(activations, defaults, D, owner):
    """activations: None, one entry per slot of the cell (both directions), or D times as
    many (ONNX's order: the forward direction's slots, then the reverse's) -> a tuple per
    direction of (name, alpha, beta) per slot, or None when every one is the default."""
    if activations is None:
        return None
    if isinstance(activations, str) or len(activations) not in (len(defaults),
                                                                 D * len(defaults)):
        raise ValueError(f"{owner}: activations must list {len(defaults)} functions "
                         f"({', '.join(defaults)})" + (f" or {D * len(defaults)} (per "
                                                       "direction)" if D > 1 else "") +
                         f", got {activations!r}")
    acts = [_activation(a, owner) for a in activations]
    per_dir = tuple(tuple(acts[k:k + len(defaults)]) for k in range(0, len(acts), len(defaults)))
    per_dir = per_dir * (D // len(per_dir))
    if all(tuple(a[0] for a in d) == tuple(defaults) for d in per_dir):
        return None
    return per_dir


class _RNNBase(Streaming, Module):
    """What LSTM, GRU and RNN share: arguments, parameters, and the calls into their engine.
    Subclasses name their cell and shape their results."""

    _gates = None      # gate blocks per cell
    _has_c = False     # carries a cell state c (LSTM)
    _proj = 0          # projection size (LSTM's proj_size)
    _activations = None   # the cell options (see _set_options)
    _cell_clip = None
    _input_forget = False
    _peepholes = False

    def __init__(self, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                 bidirectional, dtype, recurrent_dropout=0.0):
        super().__init__()
        self.input_size = positive_int(input_size, "input_size")
        self.hidden_size = positive_int(hidden_size, "hidden_size")
        self.num_layers = positive_int(num_layers, "num_layers")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        if isinstance(recurrent_dropout, bool) or \
                not isinstance(recurrent_dropout, (int, float)) or not 0 <= recurrent_dropout < 1:
            raise ValueError(f"recurrent_dropout must be a number in [0, 1), got "
                             f"{recurrent_dropout!r}")
        self.recurrent_dropout = float(recurrent_dropout)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dtype = dtype_of(dtype)
        self._D = 2 if self.bidirectional else 1

    @property
    def _cell(self):
        raise NotImplementedError

    def _default_activations(self):
        """The cell's activation of each slot (csrc/lstmc.h lstmc_cell_options)."""
        raise NotImplementedError

    def _set_options(self, activations, cell_clip, input_forget=False, peepholes=False):
        """Checks and keeps the cell options, fixed at construction (they choose the
        kernels' cell and the parameters)."""
        owner = type(self).__name__
        for name, value in (("_activations", _activations(activations,
                                                          self._default_activations(),
                                                          self._D, owner)),
                            ("_cell_clip", _cell_clip(cell_clip)),
                            ("_input_forget", bool(input_forget)),
                            ("_peepholes", bool(peepholes))):
            object.__setattr__(self, name, value)

    activations = property(lambda self: self._activations,
                           doc="per direction, (name, alpha, beta) of each activation slot; "
                               "None: the cell's defaults (fixed at construction)")
    cell_clip = property(lambda self: self._cell_clip,
                         doc="the gate pre-activations' clip, or None (fixed at construction)")

    def _options(self):
        """The engine's CellOptions, or None for the default cell."""
        if self._activations is None and self._cell_clip is None and not self._input_forget \
                and not self._peepholes:
            return None
        acts = self._activations or \
            ((tuple((a, None, None) for a in self._default_activations()),) * self._D)
        return CellOptions(acts, self._cell_clip, self._input_forget, self._peepholes)

    def _check_trainable(self):
        """The backward runs the default cells, and the LSTM's peepholes and cell clip."""
        if self._activations is not None or self._input_forget or \
                (self._cell_clip is not None and not self._has_c):
            raise NotImplementedError(
                f"{type(self).__name__}.backward: activations other than the defaults, "
                "input_forget and a GRU's or RNN's cell_clip run forward only (inference)")

    # the attributes a module starts with, and a copy (copy.deepcopy, pickle) starts afresh
    _AFRESH = ("_engine", "_last_dropout_masks", "_last_recurrent_masks")

    def _afresh(self):
        """The engine (plans, workspace, lock, packed weights, what a forward saved) on this
        module's flat buffers, and no dropout masks."""
        engine = Engine(self._spec(), self._flat, self._flat_grad, self._parameters.values(),
                        f"{type(self).__name__}({self.extra_repr()})")
        # a quantized module's state (lstmc.quantize), attached to its parameters by
        # quantize and again by Module.__setstate__ after a copy
        engine.quant = self.__dict__.get("_quant")
        return dict(_engine=engine, _last_dropout_masks=[], _last_recurrent_masks=None)

    def _spec(self):
        """This module's shapes, as its engine, plans and stream states take them."""
        return Spec(self._cell, self.input_size, self.hidden_size, self._proj,
                    self.num_layers, self._D, self.bias, self.dtype, self._options())

    @property
    def _hout(self):
        return self._proj or self.hidden_size

    def _param_names(self):
        """(name, layer, direction, which, shape) in PyTorch's order."""
        H, G, Hout, D = self.hidden_size, self._gates * self.hidden_size, self._hout, self._D
        for l in range(self.num_layers):
            I_l = self.input_size if l == 0 else D * Hout
            for d in range(D):
                sfx = f"_l{l}" + ("_reverse" if d else "")
                yield "weight_ih" + sfx, l, d, _core.W_IH, (G, I_l)
                yield "weight_hh" + sfx, l, d, _core.W_HH, (G, Hout)
                if self.bias:
                    yield "bias_ih" + sfx, l, d, _core.B_IH, (G,)
                    yield "bias_hh" + sfx, l, d, _core.B_HH, (G,)
                if self._proj:
                    yield "weight_hr" + sfx, l, d, _core.W_HR, (self._proj, H)
                if self._peepholes:
                    yield "peephole" + sfx, l, d, _core.W_PH, (3, H)

    def _layout(self):
        """A one-step problem of this module's shapes: parameter and packed-copy layouts."""
        return self._spec().layout()

    def _init_parameters(self):
        layout = self._layout()
        count = layout.param_count
        bound = 1.0 / math.sqrt(self.hidden_size)
        self._flat = generator().uniform(-bound, bound, count).astype(self.dtype)
        self._flat_grad = np.zeros(count, dtype=self.dtype)
        for name, l, d, which, shape in self._param_names():
            off = layout.param_offset(l, d, which)
            size = math.prod(shape)
            setattr(self, name, Parameter(self._flat[off:off + size].reshape(shape),
                                          self._flat_grad[off:off + size].reshape(shape)))
        self.__dict__.update(self._afresh())

    def _stepper(self, batch_size):
        """A _engine.Stepper of batch_size rows on this module's weights."""
        return self._engine.stepper(batch_size)

    def __getstate__(self):
        state = super().__getstate__()
        for name in self._AFRESH:
            state.pop(name, None)
        return state

    def __copy__(self):
        raise TypeError(f"copy.copy of a {type(self).__name__} would share its parameters but "
                        "not the packed eval-mode weights kept beside them; use "
                        "copy.deepcopy for an independent module, or the module itself")

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.update(self._afresh())

    def train(self, mode=True):
        """Training mode (see Module.train); drops the packed eval-mode weights
        (lstmc.nn._engine.PackedWeights)."""
        if mode:
            self.refuse_if_quantized("training mode")
            self._engine.weights.release()
        return super().train(mode)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in self._repr_defaults():
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s + f", dtype={self.dtype}"

    def _repr_defaults(self):
        return (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                ("bidirectional", False), ("recurrent_dropout", 0.0), ("cell_clip", None),
                ("activations", None))

    # ---- argument checks ----------------------------------------------------------------
    def _input(self, x):
        """x -> (time-major (T, B, I) array, unbatched flag)."""
        x = as_float(x, "x", self.dtype)
        shape = x.shape
        if x.ndim not in (2, 3):
            raise ValueError(f"x must be 3-D ({'B, T' if self.batch_first else 'T, B'}, "
                             f"input_size) or 2-D (T, input_size) for one sequence, got shape "
                             f"{shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"x must have {self.input_size} input features (last axis), got "
                             f"shape {shape}")
        if T < 1 or B < 1:
            raise ValueError(f"x must have at least one step and one batch row, got T={T}, "
                             f"B={B}")
        return x, unbatched

    def _lengths(self, lengths, T, B):
        if lengths is None:
            return None
        arr = to_numpy(lengths)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"lengths must be an integer array, got dtype {arr.dtype}")
        if arr.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},) (one per batch row), got "
                             f"{arr.shape}")
        if B and (arr.min() < 0 or arr.max() > T):
            raise ValueError(f"lengths must lie in [0, T={T}], got min {arr.min()} and max "
                             f"{arr.max()}")
        return arr.astype(np.intc)

    def _state(self, value, name, B, unbatched, width):
        """A user state array -> (L*D, B, width), or None."""
        if value is None:
            return None
        LD = self.num_layers * self._D
        arr = as_float(value, name, self.dtype)
        check_shape(arr, name, (LD, width) if unbatched else (LD, B, width))
        return arr[:, None, :] if unbatched else arr

    def _to_user(self, seq, h, c, unbatched):
        """Time-major (T, B, F) and states (L*D, B, .) -> the user's layout."""
        if unbatched:
            return seq[:, 0], h[:, 0], None if c is None else c[:, 0]
        if self.batch_first:
            seq = np.ascontiguousarray(seq.transpose(1, 0, 2))
        return seq, h, c

    # ---- calls into the engine ------------------------------------------------------------
    def _draw_recurrent_masks(self, B):
        """Recurrent dropout's masks of one training call: (L*D, G, B, H_out), one per layer,
        direction and gate block, 0 with probability recurrent_dropout, else
        1 / (1 - recurrent_dropout), from lstmc's generator."""
        keep = 1.0 - self.recurrent_dropout
        shape = (self.num_layers * self._D, self._gates, B, self._hout)
        return (generator().random(shape) < keep).astype(self.dtype) / self.dtype.type(keep)

    def _run(self, x, h0, c0, lengths, rmasks=None):
        """Forward. h0/c0 are user arrays or None (checked here). Returns (out, h_n, c_n) in
        the user's layout (c_n None without c). rmasks: a training call's recurrent dropout
        masks (the cells keep theirs across steps), else drawn here when recurrent_dropout
        > 0."""
        xt, unbatched = self._input(x)
        T, B, _ = xt.shape
        lengths = self._lengths(lengths, T, B)
        h0 = self._state(h0, "h0", B, unbatched, self._hout)
        c0 = self._state(c0, "c0", B, unbatched, self.hidden_size) if self._has_c else None
        engine = self._engine
        plan = engine.plan(T, B, lengths)
        train = self.training
        L = self.num_layers
        xp = plan.pack(xt)
        if train and np.may_share_memory(xp, x):
            xp = xp.copy()   # backward reads x: keep our own copy of it
        masks = None
        self._last_dropout_masks = []
        if train and self.dropout > 0 and L > 1:
            keep = 1.0 - self.dropout
            dense = generator().random((L - 1, T, B, self._D * self._hout)) < keep
            self._last_dropout_masks = [m.astype(self.dtype) / self.dtype.type(keep)
                                        for m in dense]
            masks = np.stack([plan.pack(m) for m in self._last_dropout_masks])
        self._last_recurrent_masks = None
        if train and self.recurrent_dropout > 0:
            # one mask per layer, direction and gate block for the whole sequence (Keras)
            if rmasks is None:
                rmasks = self._draw_recurrent_masks(B)
            self._last_recurrent_masks = rmasks
        else:
            rmasks = None
        out, hn, cn = engine.forward(plan, xp, h0, c0, masks, train, unbatched, rmasks)
        return self._to_user(out, hn, cn, unbatched)

    def _saved(self):
        """What the last training forward saved for backward (a _engine.Saved)."""
        saved = self._engine.last_saved()
        if saved is None:
            raise RuntimeError("backward needs a forward in training mode first (after "
                               "module.train(); an eval-mode forward stores nothing, and a "
                               "copy does not carry what a forward saved)")
        return saved

    _tape_kind = "sequence"

    def _saved_for_backward(self):
        return self._engine.kept_saved()

    def _restore_saved(self, saved):
        self._engine.restore_saved(saved)

    def _run_backward(self, dout, dhn, dcn):
        """Backward; returns (dx, dh0, dc0) in the user's layout."""
        self.refuse_if_quantized("backward")
        self._check_trainable()
        saved = self._saved()
        T, B, unbatched = saved.plan.T, saved.plan.B, saved.unbatched
        Hout = self._hout
        Y = self._D * Hout
        dout = as_float(dout, "dout", self.dtype)
        if unbatched:
            check_shape(dout, "dout", (T, Y))
            dt = dout[:, None, :]
        elif self.batch_first:
            check_shape(dout, "dout", (B, T, Y))
            dt = dout.transpose(1, 0, 2)
        else:
            check_shape(dout, "dout", (T, B, Y))
            dt = dout
        dhn = self._state(dhn, "dh_n", B, unbatched, Hout)
        dcn = self._state(dcn, "dc_n", B, unbatched, self.hidden_size) if self._has_c else None
        dx, dh0, dc0 = self._engine.backward(saved, dt, dhn, dcn)
        return self._to_user(dx, dh0, dc0, unbatched)


_SEQ_PARAMS = """
    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    bias : bool, default True
    batch_first : bool, default False
        Input and output (B, T, F) instead of (T, B, F).
    dropout : float in [0, 1), default 0
        Dropout on the outputs of every layer but the last, in training mode.
    bidirectional : bool, default False
    dtype : float32 or float64
    recurrent_dropout : float in [0, 1), default 0 (keyword; lstmc's, beyond torch.nn)
        Keras' recurrent dropout (variational, Gal & Ghahramani): in training mode each call
        draws, per layer, direction and gate block, one mask (B, H_out) from lstmc's
        generator (zeros with this probability, else 1 / (1 - p)) and every step's
        recurrent product of that block reads h times it; GRU's z * h keeps the plain h.
        Eval mode, `step` and quantized copies never drop. The last call's masks are
        `_last_recurrent_masks` (L*D, G, B, H_out); lstmc.reference is the spec.

    Parameters are named as in PyTorch (weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k},
    bias_hh_l{k}, suffix _reverse) and initialised from U(-1/sqrt(H), 1/sqrt(H)) with lstmc's
    generator (`lstmc.manual_seed`).

    forward(x, hx=None, lengths=None)
        x: (T, B, input_size), or (B, T, input_size) with batch_first, or (T, input_size).
        lengths: int array (B,) or None: valid steps of each row (0..T, any order); outputs
        past a row's length are 0 and its final state is the one after its last valid step.
        output: (T, B, D * H_out) (or the batch_first / unbatched layout), D = 2 if
        bidirectional; states (num_layers * D, B, .), without B when unbatched.
    backward(dout, ...) after a training-mode forward returns the input and initial-state
    gradients and adds the parameter gradients to each parameter's `.grad`.
    state = initial_state(batch_size=1); y_t, state = step(x_t, state) stream one timestep
    at a time through all layers (unidirectional modules; eval semantics; no allocation per
    step).

    Cell options (keywords; fixed at construction; lstmc.reference is their spec):
    cell_clip : None or float > 0
        Every gate pre-activation (biases included) is clamped to [-cell_clip, cell_clip]
        before its activation, as ONNX's `clip` (c itself is not). The LSTM trains with it
        (the gradient is 0 where a value was clamped); GRU and RNN run it forward only.
    activations : None or a list of ONNX activation functions, one per slot of the cell
        (or per slot and direction, forward first), each a name or (name, alpha, beta)
        (None: that function's ONNX default): relu, tanh, sigmoid, affine, leakyrelu,
        thresholdedrelu, scaledtanh, hardsigmoid, elu, softsign, softplus. Forward only:
        backward raises NotImplementedError unless they are the defaults.
"""


class LSTM(_RNNBase):
    __doc__ = """Multi-layer LSTM over whole sequences, as torch.nn.LSTM (gates i, f, g, o).

    proj_size : int, default 0
        If > 0, h is projected to this size (must be < hidden_size): H_out = proj_size, and
        each layer has weight_hr_l{k} (proj_size, hidden_size).
    peepholes : bool, default False (keyword)
        Peephole connections (Gers & Schmidhuber; ONNX's input P, which PyTorch and Keras
        lack): i = sig(.. + p_i * c_prev), f = sig(.. + p_f * c_prev), o = sig(.. + p_o * c)
        with the new c. Each layer has peephole_l{k} (3, hidden_size), rows p_i, p_f, p_o
        (ONNX's P holds them in the order i, o, f); trained like the other parameters.
    input_forget : bool, default False (keyword)
        Couples the forget gate to the input gate, f = 1 - i (ONNX's input_forget; the f
        rows of the weights are unused). Forward only.
    Slots of `activations`: f (gates i, f, o), g (candidate), h (of c in h = o * h(c)).
    """ + _SEQ_PARAMS + """
    hx = (h0, c0): h0 (L*D, B, H_out), c0 (L*D, B, hidden_size), or None (zeros); returns
    output, (h_n, c_n). backward(dout, dhx=None) with dhx = (dh_n, dc_n) (either may be
    None) returns dx, (dh0, dc0).
    """

    _gates = 4
    _has_c = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, dtype=np.float32, *,
                 peepholes=False, cell_clip=None, input_forget=False, activations=None,
                 recurrent_dropout=0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, recurrent_dropout)
        self.proj_size = positive_int(proj_size, "proj_size", minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be < hidden_size ({self.hidden_size}), got "
                             f"{self.proj_size}")
        self._proj = self.proj_size
        self._set_options(activations, cell_clip, input_forget, peepholes)
        self._init_parameters()

    _cell = _core.CELL_LSTM
    peepholes = property(lambda self: self._peepholes,
                         doc="peephole connections (fixed at construction)")
    input_forget = property(lambda self: self._input_forget,
                            doc="f = 1 - i (fixed at construction)")

    def _default_activations(self):
        return ("sigmoid", "tanh", "tanh")

    def _repr_defaults(self):
        return super()._repr_defaults() + (("proj_size", 0), ("peepholes", False),
                                           ("input_forget", False))

    def forward(self, x, hx=None, lengths=None):
        h0, c0 = pair(hx, ("h0", "c0"))
        out, hn, cn = self._run(x, h0, c0, lengths)
        return out, (hn, cn)

    def backward(self, dout, dhx=None):
        dhn, dcn = pair(dhx, ("dh_n", "dc_n"))
        dx, dh0, dc0 = self._run_backward(dout, dhn, dcn)
        return dx, (dh0, dc0)


class _HiddenStateRNN(_RNNBase):
    """Sequence modules whose only state is h (GRU, RNN): forward returns (output, h_n)."""

    def forward(self, x, hx=None, lengths=None):
        out, hn, _ = self._run(x, hx, None, lengths)
        return out, hn

    def backward(self, dout, dh_n=None):
        dx, dh0, _ = self._run_backward(dout, dh_n, None)
        return dx, dh0


class GRU(_HiddenStateRNN):
    __doc__ = """Multi-layer GRU over whole sequences, as torch.nn.GRU (gates r, z, n).

    reset_after : bool, default True
        True: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) (PyTorch, cuDNN, Keras
        reset_after=True, ONNX linear_before_reset=1). False: n = tanh(W_in x + b_in +
        W_hn (r * h) + b_hn) (Keras reset_after=False, ONNX's default); same tensors.
    Slots of `activations`: f (gates r, z), g (candidate n).
    """ + _SEQ_PARAMS + """
    hx = h0 (L*D, B, hidden_size) or None; returns output, h_n. backward(dout, dh_n=None)
    returns dx, dh0.
    """

    _gates = 3

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, reset_after=True, dtype=np.float32, *,
                 cell_clip=None, activations=None, recurrent_dropout=0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, recurrent_dropout)
        object.__setattr__(self, "_reset_after", bool(reset_after))
        self._set_options(activations, cell_clip)
        self._init_parameters()

    def _default_activations(self):
        return ("sigmoid", "tanh")

    reset_after = _fixed_at_construction("reset_after", "GRU")

    @property
    def _cell(self):
        return _core.CELL_GRU if self._reset_after else _core.CELL_GRU_RESET_BEFORE

    def _repr_defaults(self):
        return super()._repr_defaults() + (("reset_after", True),)


class RNN(_HiddenStateRNN):
    __doc__ = """Multi-layer Elman RNN over whole sequences, as torch.nn.RNN:
    h' = act(W_ih x + b_ih + W_hh h + b_hh).

    nonlinearity : "tanh" (default) or "relu"
    The one slot of `activations` replaces the nonlinearity.
    """ + _SEQ_PARAMS + """
    hx = h0 (L*D, B, hidden_size) or None; returns output, h_n. backward(dout, dh_n=None)
    returns dx, dh0.
    """

    _gates = 1

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32, *,
                 cell_clip=None, activations=None, recurrent_dropout=0.0):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, recurrent_dropout)
        object.__setattr__(self, "_nonlinearity", nonlinearity)
        self._set_options(activations, cell_clip)
        self._init_parameters()

    def _default_activations(self):
        return (self._nonlinearity,)

    nonlinearity = _fixed_at_construction("nonlinearity", "RNN")

    @property
    def _cell(self):
        return _core.CELL_RNN_TANH if self._nonlinearity == "tanh" else _core.CELL_RNN_RELU

    def _repr_defaults(self):
        return super()._repr_defaults() + (("nonlinearity", "tanh"),)


def __getattr__(name):
    """The one-step cells lived here before lstmc.nn.cells: their old import path and
    pickled class path (lstmc.nn.rnn.LSTMCell) still resolve. cells imports this module, so
    they are looked up on first use, not imported at the top."""
    if name in ("LSTMCell", "GRUCell", "RNNCell"):
        from lstmc.nn import cells
        return getattr(cells, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
