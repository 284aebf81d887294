"""Recurrent modules: `LSTM`, `GRU`, `RNN` (whole sequences, stacked, bidirectional, variable
lengths) and the one-step `LSTMCell`, `GRUCell`, `RNNCell`, all on one engine: the three
sequence modules differ only in their cell and in what they return.

The modules turn the user's arrays into the kernels' packed time-major layout (csrc/lstmc.h):
rows sorted by length, longest first, padding dropped. They check every argument first, so a
bad call raises a Python exception that names the argument before any C code runs.
"""
import math
import operator
import threading

import numpy as np

from lstmc import _core
from lstmc._random import generator
from lstmc.nn.module import Module, Parameter, to_numpy

_SUPPORTED = "float32 or float64"


def _dtype_of(dtype):
    dt = np.dtype(dtype)
    if dt not in _core.SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be {_SUPPORTED}, got {dt}")
    return dt


def _as_float(value, name, dtype):
    """`value` as a numpy array of `dtype`: other float dtypes are converted, everything else
    (ints, bools, complex, objects) is a TypeError."""
    arr = to_numpy(value)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array ({_SUPPORTED}; other float "
                        f"dtypes are converted), got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def _positive_int(value, name, minimum=1):
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _check_shape(arr, name, expected):
    if arr.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {arr.shape}")


class _Plan:
    """How one (T, B, lengths) problem maps onto the kernels' packed layout."""

    def __init__(self, module, T, B, lengths):
        self.T, self.B = T, B
        if lengths is None:
            self.perm = None                      # identity: dense time-major == packed
            sorted_lengths = np.full(B, T, dtype=np.intc)
        else:
            perm = np.argsort(-lengths, kind="stable")
            sorted_lengths = lengths[perm]
            self.perm = None if np.array_equal(perm, np.arange(B)) else perm
        self.seq = _core.Seq(module._cell, T, B, module.input_size, module.hidden_size,
                             module._proj, module.num_layers, module._D, module.bias,
                             sorted_lengths)
        self.N = self.seq.rows
        self.dense = self.N == T * B
        if not self.dense:
            # packed position k holds (t_idx[k], b_idx[k]) in the user's (T, B) grid
            bs = self.seq.batch_sizes
            offsets = np.concatenate(([0], np.cumsum(bs)[:-1]))
            j = np.arange(self.N) - np.repeat(offsets, bs)
            self.t_idx = np.repeat(np.arange(T), bs)
            self.b_idx = j if self.perm is None else self.perm[j]

    def pack(self, a):
        """(T, B, F) -> contiguous (N, F)."""
        if self.dense:
            return np.ascontiguousarray(a).reshape(self.T * self.B, a.shape[-1])
        return np.ascontiguousarray(a[self.t_idx, self.b_idx])

    def unpack(self, packed, F):
        """(N, F) -> (T, B, F), zeros at padding."""
        if self.dense:
            return packed.reshape(self.T, self.B, F)
        out = np.zeros((self.T, self.B, F), dtype=packed.dtype)
        out[self.t_idx, self.b_idx] = packed
        return out

    def to_sorted(self, state):
        """(L*D, B, F) user row order -> contiguous, kernel (sorted) row order."""
        if state is None:
            return None
        return np.ascontiguousarray(state if self.perm is None else state[:, self.perm])

    def from_sorted(self, state):
        if self.perm is None:
            return state
        out = np.empty_like(state)
        out[:, self.perm] = state
        return out


class _Workspace:
    """Reusable scratch and reserve buffers, grown on demand, never shrunk."""

    def __init__(self, dtype):
        self.dtype = dtype
        self._arrays = {}

    def get(self, name, size):
        arr = self._arrays.get(name)
        if arr is None or arr.size < size:
            arr = np.empty(max(size, 1), dtype=self.dtype)
            self._arrays[name] = arr
        return arr[:size]


def _fixed_at_construction(name, owner):
    """A read-only attribute for an option that picks the cell kind (kept as `_name`): plans
    and the packed eval-mode weights follow the kind, so it cannot change under them."""
    private = "_" + name

    def refuse(self, value):
        raise AttributeError(f"{name} is fixed at construction: build a new {owner}")

    return property(lambda self: getattr(self, private), refuse,
                    doc=f"{name}, fixed at construction")


class _RNNBase(Module):
    """The machinery shared by LSTM, GRU and RNN: arguments, parameters, packing, workspaces,
    and the calls into the kernels. Subclasses name their cell and shape their results."""

    _gates = None      # gate blocks per cell
    _has_c = False     # carries a cell state c (LSTM)
    _proj = 0          # projection size (LSTM's proj_size)

    def __init__(self, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                 bidirectional, dtype):
        super().__init__()
        self.input_size = _positive_int(input_size, "input_size")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        self.num_layers = _positive_int(num_layers, "num_layers")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dtype = _dtype_of(dtype)
        self._D = 2 if self.bidirectional else 1
        self.__dict__.update(self._afresh())

    @property
    def _cell(self):
        raise NotImplementedError

    def _afresh(self):
        """What a module starts with, and a copy (copy.deepcopy, pickle) starts afresh:
        lock, workspace, what a forward saved for backward, caches, the packed weights."""
        return dict(_workspace=_Workspace(self.dtype), _lock=threading.Lock(), _saved=None,
                    _last_dropout_masks=[],
                    _pack=None,    # the packed eval-mode weights (see _packed)
                    _plans={})     # (T, B) -> _Plan of a dense batch (see _plan)

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

    def _layout(self):
        """A one-step problem of this module's shapes: parameter and packed-copy layouts."""
        return _core.Seq(self._cell, 1, 1, self.input_size, self.hidden_size, self._proj,
                         self.num_layers, self._D, self.bias, [1])

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

    def _plan(self, T, B, lengths):
        """The _Plan of a call. Dense batches reuse theirs (building one took 40 of the 90 us
        a T=25 forward of an I = H = 8 LSTM spends outside the kernels)."""
        if lengths is not None:
            return _Plan(self, T, B, lengths)
        plan = self._plans.get((T, B))
        if plan is None:
            if len(self._plans) >= 32:
                self._plans.clear()
            plan = self._plans[(T, B)] = _Plan(self, T, B, None)
        return plan

    # ---- the packed eval-mode weights ----------------------------------------------------
    def _packed(self):
        """The kernels' packed copy of the weights (csrc/lstmc.h, lstmc_seq_pack_*) for
        eval-mode calls, built on the first one and kept, as ONNX Runtime packs its weights
        once per session. While it exists the parameters (each Parameter's `data` and the
        module's flat buffer) are read-only, so that a write cannot leave it stale:
        Parameter.release() (called by train(), load_state_dict and the optimizers) drops
        it. Numpy cannot make read-only an array derived earlier from `data` (a slice or
        reshape you kept): call p.release() before writing through one. None where the
        kernels would not read it (float64 and a CPU without AVX2/FMA under the automatic
        kernel choice, or the kernel forced to "blas").

        For step(), which takes no lock; forward and the cells hold self._lock across the
        lookup and the call (_packed_locked), so a forward that starts after a release
        and a write sees the new weights.

        What it saved when introduced, I = H = 512, T = 25, one thread, median (before /
        after): B = 1 forward 5.65 / 3.85 ms (W_ih is no longer repacked inside sgemm on
        every call); one streaming step 185 / 146 us; in `python -m lstmc bench`, the ratio
        to ONNX Runtime of inf_h512_b1_t25 went 1.54 -> 0.99 (1 thread), 1.78 -> 1.01 (2)."""
        pack = self._pack
        if pack is not None or not _core.packs(self.dtype):
            return pack
        with self._lock:
            return self._packed_locked()

    def _packed_locked(self):
        """_packed, with self._lock held by the caller."""
        if self._pack is None and _core.packs(self.dtype):
            layout = self._layout()
            buf = _core.empty_aligned(layout.packed_size, self.dtype)
            layout.pack(buf, self._flat)
            self._read_only(True)
            self._pack = buf
        return self._pack

    def _release_pack(self):
        with self._lock:
            if self._pack is not None:
                self._pack = None
                self._read_only(False)

    def _read_only(self, flag):
        if not flag:
            self._flat.flags.writeable = True   # the base first: views follow it
        for p in self._parameters.values():
            p.data.flags.writeable = not flag
            p._release = self._release_pack if flag else None
        if flag:
            self._flat.flags.writeable = False

    def __getstate__(self):
        state = super().__getstate__()
        for name in self._afresh():
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
        """Training mode (see Module.train); drops the packed eval-mode weights."""
        if mode:
            self._release_pack()
        return super().train(mode)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in self._repr_defaults():
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s + f", dtype={self.dtype}"

    def _repr_defaults(self):
        return (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0),
                ("bidirectional", False))

    # ---- argument checks ----------------------------------------------------------------
    def _input(self, x):
        """x -> (time-major (T, B, I) array, unbatched flag)."""
        x = _as_float(x, "x", self.dtype)
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
        arr = _as_float(value, name, self.dtype)
        _check_shape(arr, name, (LD, width) if unbatched else (LD, B, width))
        return arr[:, None, :] if unbatched else arr

    # ---- the engine ---------------------------------------------------------------------
    def _run(self, x, h0, c0, lengths):
        """Forward through the kernels. h0/c0 are user arrays or None (checked here).
        Returns (out, h_n, c_n) in the user's layout (c_n None without c)."""
        xt, unbatched = self._input(x)
        T, B, _ = xt.shape
        lengths = self._lengths(lengths, T, B)
        h0 = self._state(h0, "h0", B, unbatched, self._hout)
        c0 = self._state(c0, "c0", B, unbatched, self.hidden_size) if self._has_c else None
        plan = self._plan(T, B, lengths)
        train = self.training
        D, Hout, H, L = self._D, self._hout, self.hidden_size, self.num_layers
        Y = D * Hout

        xp = plan.pack(xt)
        if train and np.may_share_memory(xp, x):
            xp = xp.copy()   # backward reads x: keep our own copy of it
        masks = None
        self._last_dropout_masks = []
        if train and self.dropout > 0 and L > 1:
            keep = 1.0 - self.dropout
            dense = generator().random((L - 1, T, B, Y)) < keep
            self._last_dropout_masks = [m.astype(self.dtype) / self.dtype.type(keep)
                                        for m in dense]
            masks = np.stack([plan.pack(m) for m in self._last_dropout_masks])
        y = np.empty((plan.N, Y), dtype=self.dtype)
        hn = np.empty((L * D, B, Hout), dtype=self.dtype)
        cn = np.empty((L * D, B, H), dtype=self.dtype) if self._has_c else None
        seq = plan.seq
        with self._lock:
            packed = None if train else self._packed_locked()
            ws = self._workspace
            reserve = ws.get("reserve", seq.reserve_size) if train else None
            seq.forward(y.reshape(-1), hn.reshape(-1), _flat(cn), reserve, xp.reshape(-1),
                        _flat(plan.to_sorted(h0)), _flat(plan.to_sorted(c0)), _flat(masks),
                        self._flat, ws.get("scratch", seq.scratch_size(train)), packed)
            self._saved = (plan, xp, masks, reserve, unbatched) if train else None

        out = plan.unpack(y, Y)
        hn = plan.from_sorted(hn)
        cn = None if cn is None else plan.from_sorted(cn)
        if unbatched:
            return out[:, 0], hn[:, 0], None if cn is None else cn[:, 0]
        if self.batch_first:
            out = np.ascontiguousarray(out.transpose(1, 0, 2))
        return out, hn, cn

    def _run_backward(self, dout, dhn, dcn):
        """Backward through the kernels; returns (dx, dh0, dc0) in the user's layout."""
        with self._lock:
            saved = self._saved
        if saved is None:
            raise RuntimeError("backward needs a forward in training mode first (after "
                               "module.train(); an eval-mode forward stores nothing, and a "
                               "copy does not carry what a forward saved)")
        plan, xp, masks, reserve, unbatched = saved
        T, B, D, Hout, L, H = plan.T, plan.B, self._D, self._hout, self.num_layers, self.hidden_size
        Y = D * Hout
        dout = _as_float(dout, "dout", self.dtype)
        if unbatched:
            _check_shape(dout, "dout", (T, Y))
            dt = dout[:, None, :]
        elif self.batch_first:
            _check_shape(dout, "dout", (B, T, Y))
            dt = dout.transpose(1, 0, 2)
        else:
            _check_shape(dout, "dout", (T, B, Y))
            dt = dout
        dhn = self._state(dhn, "dh_n", B, unbatched, Hout)
        dcn = self._state(dcn, "dc_n", B, unbatched, H) if self._has_c else None
        dyp = plan.pack(dt)
        dx = np.empty((plan.N, self.input_size), dtype=self.dtype)
        dh0 = np.empty((L * D, B, Hout), dtype=self.dtype)
        dc0 = np.empty((L * D, B, H), dtype=self.dtype) if self._has_c else None
        seq = plan.seq
        with self._lock:
            if self._saved is not saved:
                raise RuntimeError("another forward ran during backward's argument checks")
            seq.backward(dx.reshape(-1), dh0.reshape(-1), _flat(dc0), self._flat_grad,
                         reserve, dyp.reshape(-1), _flat(plan.to_sorted(dhn)),
                         _flat(plan.to_sorted(dcn)), xp.reshape(-1), _flat(masks), self._flat,
                         self._workspace.get("scratch", seq.scratch_size(True)))
        dx = plan.unpack(dx, self.input_size)
        dh0 = plan.from_sorted(dh0)
        dc0 = None if dc0 is None else plan.from_sorted(dc0)
        if unbatched:
            return dx[:, 0], dh0[:, 0], None if dc0 is None else dc0[:, 0]
        if self.batch_first:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        return dx, dh0, dc0

    # ---- streaming ----------------------------------------------------------------------
    def _stream_key(self):
        """What a StreamState must agree on with the module that steps it."""
        return (self._cell, self.input_size, self.hidden_size, self._proj, self.num_layers,
                self.dtype)

    def initial_state(self, batch_size=1, h0=None, c0=None):
        """A new `StreamState` for `step`: zeros, or copies of h0 (and c0).

        Parameters
        ----------
        batch_size : int, default 1
            Rows B streamed side by side.
        h0 : array (num_layers, B, H_out), or a StreamState, or None (zeros)
            A StreamState of a module of the same shapes starts the new stream from a copy of
            its states (a fork: e.g. one hypothesis of a beam search); batch_size and c0 are
            then taken from it.
        c0 : array (num_layers, B, hidden_size) or None (zeros); LSTM only.
        """
        self._refuse_bidirectional()
        if isinstance(h0, StreamState):
            self._check_stream(h0)
            if c0 is not None:
                raise ValueError("c0 must be None when h0 is a StreamState (its c is used)")
            state = StreamState(self, h0.batch_size)
            np.copyto(state.h, h0.h)
            if state.c is not None:
                np.copyto(state.c, h0.c)
            return state
        state = StreamState(self, _positive_int(batch_size, "batch_size"))
        for value, name, target in ((h0, "h0", state.h), (c0, "c0", state.c)):
            if value is not None:
                if target is None:
                    raise ValueError(f"{name} must be None: {type(self).__name__} has no "
                                     f"cell state")
                arr = _as_float(value, name, self.dtype)
                _check_shape(arr, name, target.shape)
                np.copyto(target, arr)
        return state

    def step(self, x_t, state, out=None):
        """One timestep of a stream through all layers; updates `state` in place.

        Runs in eval semantics whatever the module's mode: no dropout between layers, and
        nothing is saved for backward. With x_t a C-contiguous array of the module's dtype,
        a step allocates no memory: the kernels read x_t, update state.h (and state.c) in
        place and write y_t into a buffer of the state (or into `out`).

        Parameters
        ----------
        x_t : array (B, input_size), or (input_size,) when B == 1
            Other float dtypes and layouts are converted (one copy).
        state : StreamState from `initial_state` of a module of the same shapes
        out : array shaped like y_t, of the module's dtype, C-contiguous, or None
            Where to write y_t. None: y_t is the state's own output buffer, which the next
            step on this state overwrites: copy it (y_t.copy()) to keep it.

        Returns
        -------
        y_t : array (B, H_out), or (H_out,) for a 1-D x_t: the last layer's output,
            equal to state.h[-1].
        state : the same StreamState, now after this step.
        """
        if state.__class__ is not StreamState or state._owner is not self:
            self._check_stream(state)   # a state of another module of the same shapes is fine
        x = x_t
        if not _plain(x, self.dtype) or x.shape not in state._x_shapes:
            x = self._stream_input(x_t, state)
        y = state._y if x.ndim == 2 else state._y1
        if out is not None:
            y = _check_out(out, y.shape, self.dtype)
        # h0/c0 and hn/cn are the same arrays: the driver copies each layer's h0/c0 into its
        # own buffers before it writes that layer's hn/cn, each thread its own columns
        # (csrc/seq.inc), so the state is updated in place; tests/test_streaming.py holds it
        state._seq.forward(y, state.h, state.c, None, x, state.h, state.c, None, self._flat,
                           state._scratch, None if self.training else self._packed())
        return y, state

    def _refuse_bidirectional(self):
        if self.bidirectional:
            raise ValueError("initial_state/step stream one timestep at a time, which a "
                             "bidirectional module cannot do: its reverse direction starts "
                             "at the sequence's last step. Run forward() on whole "
                             "sequences instead")

    def _check_stream(self, state):
        self._refuse_bidirectional()
        if not isinstance(state, StreamState):
            raise TypeError(f"state must be a StreamState from initial_state(), got "
                            f"{type(state).__name__}")
        if state._key != self._stream_key():
            raise ValueError(f"state belongs to a module of other shapes: its (cell, "
                             f"input_size, hidden_size, proj_size, num_layers, dtype) are "
                             f"{state._key}, this module's are {self._stream_key()}")

    def _stream_input(self, x_t, state):
        """The slow path of step's x_t check: converts, or raises naming the shapes."""
        x = np.ascontiguousarray(_as_float(x_t, "x_t", self.dtype))
        if x.shape not in state._x_shapes:
            raise ValueError(f"x_t must have shape {' or '.join(map(str, state._x_shapes))} "
                             f"(batch_size, input_size) for this state, got {x.shape}")
        return x


class StreamState:
    """The state of one stream through a sequence module's `step`, from `initial_state`.

    h : array (num_layers, B, H_out) and c : array (num_layers, B, hidden_size) (LSTM; None
    for GRU and RNN) are the states after the last step, updated in place by each step: read
    them, or write them (e.g. ``state.h[:] = 0`` to restart a stream). The state also owns
    the step's output buffer and the kernels' workspace, all sized once here, so stepping
    allocates nothing. One state serves one stream at a time: give each thread its own.
    """

    __slots__ = ("h", "c", "batch_size", "_owner", "_key", "_seq", "_scratch", "_y", "_y1",
                 "_x_shapes")

    def __init__(self, module, batch_size):
        L, B, H, dt = module.num_layers, batch_size, module.hidden_size, module.dtype
        self.batch_size = B
        self._owner = module   # the module that made it: step's one-comparison check
        self._key = module._stream_key()
        self._seq = _core.Seq(module._cell, 1, B, module.input_size, H, module._proj, L, 1,
                              module.bias, np.ones(B, dtype=np.intc))
        self._scratch = np.empty(self._seq.scratch_size(False), dtype=dt)
        self.h = np.zeros((L, B, module._hout), dtype=dt)
        self.c = np.zeros((L, B, H), dtype=dt) if module._has_c else None
        self._y = np.empty((B, module._hout), dtype=dt)
        self._y1 = self._y[0] if B == 1 else None
        self._x_shapes = ((B, module.input_size),) + (((module.input_size,),) if B == 1
                                                       else ())

    def __copy__(self):
        """A new state of the same module holding copies of h and c (to branch a stream, as
        a beam search does), with its own buffers. copy.deepcopy does the same: a state
        belongs to its module and does not copy it."""
        return self._branch(self._owner)

    def __deepcopy__(self, memo):
        """As copy.copy, for the module's copy if this deepcopy has made one."""
        return self._branch(memo.get(id(self._owner), self._owner))

    def _branch(self, owner):
        new = StreamState(owner, self.batch_size)
        new.h[...] = self.h
        if self.c is not None:
            new.c[...] = self.c
        return new

    def __reduce__(self):
        raise TypeError("a StreamState cannot be pickled: save state.h (and state.c), and "
                        "copy them into module.initial_state(batch_size) to resume")

    def __repr__(self):
        c = "" if self.c is None else f", c {self.c.shape}"
        return f"StreamState(h {self.h.shape}{c}, dtype={self.h.dtype})"


def _check_out(out, shape, dtype):
    if out.__class__ is not np.ndarray or out.dtype != dtype or out.shape != shape \
            or not out.flags.c_contiguous or not out.flags.writeable:
        got = (f"{type(out).__name__} {getattr(out, 'shape', '')} "
               f"{getattr(out, 'dtype', '')}")
        raise ValueError(f"out must be a writable C-contiguous numpy array of shape {shape} "
                         f"and dtype {dtype}, got {got}")
    return out


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
"""


class LSTM(_RNNBase):
    __doc__ = """Multi-layer LSTM over whole sequences, as torch.nn.LSTM (gates i, f, g, o).

    proj_size : int, default 0
        If > 0, h is projected to this size (must be < hidden_size): H_out = proj_size, and
        each layer has weight_hr_l{k} (proj_size, hidden_size).
    """ + _SEQ_PARAMS + """
    hx = (h0, c0): h0 (L*D, B, H_out), c0 (L*D, B, hidden_size), or None (zeros); returns
    output, (h_n, c_n). backward(dout, dhx=None) with dhx = (dh_n, dc_n) (either may be
    None) returns dx, (dh0, dc0).
    """

    _gates = 4
    _has_c = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, dtype=np.float32):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype)
        self.proj_size = _positive_int(proj_size, "proj_size", minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be < hidden_size ({self.hidden_size}), got "
                             f"{self.proj_size}")
        self._proj = self.proj_size
        self._init_parameters()

    _cell = _core.CELL_LSTM

    def _repr_defaults(self):
        return super()._repr_defaults() + (("proj_size", 0),)

    def forward(self, x, hx=None, lengths=None):
        h0, c0 = _pair(hx, ("h0", "c0"))
        out, hn, cn = self._run(x, h0, c0, lengths)
        return out, (hn, cn)

    def backward(self, dout, dhx=None):
        dhn, dcn = _pair(dhx, ("dh_n", "dc_n"))
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
    """ + _SEQ_PARAMS + """
    hx = h0 (L*D, B, hidden_size) or None; returns output, h_n. backward(dout, dh_n=None)
    returns dx, dh0.
    """

    _gates = 3

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, reset_after=True, dtype=np.float32):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype)
        object.__setattr__(self, "_reset_after", bool(reset_after))
        self._init_parameters()

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
    """ + _SEQ_PARAMS + """
    hx = h0 (L*D, B, hidden_size) or None; returns output, h_n. backward(dout, dh_n=None)
    returns dx, dh0.
    """

    _gates = 1

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype)
        object.__setattr__(self, "_nonlinearity", nonlinearity)
        self._init_parameters()

    nonlinearity = _fixed_at_construction("nonlinearity", "RNN")

    @property
    def _cell(self):
        return _core.CELL_RNN_TANH if self._nonlinearity == "tanh" else _core.CELL_RNN_RELU

    def _repr_defaults(self):
        return super()._repr_defaults() + (("nonlinearity", "tanh"),)


def _pair(value, names):
    """An optional (a, b) pair of arrays -> a, b (each may be None)."""
    if value is None:
        return None, None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"({names[0]}, {names[1]}) must be a pair of arrays or None")
    return value[0], value[1]


def _flat(a):
    return None if a is None else a.reshape(-1)


def _contiguous(a):
    return None if a is None else np.ascontiguousarray(a)


def _plain(a, dtype):
    """a is a C-contiguous numpy array of `dtype` (what the kernels read as it is)."""
    return a.__class__ is np.ndarray and a.dtype == dtype and a.flags.c_contiguous


class _CellBase(Module):
    """One step of a recurrent cell: runs the sequence engine for one step of one layer,
    whose tensors it exposes under torch's cell names (weight_ih, weight_hh, bias_ih,
    bias_hh)."""

    def __init__(self, seq_module):
        super().__init__()
        self.input_size = seq_module.input_size
        self.hidden_size = seq_module.hidden_size
        self.bias = seq_module.bias
        self.dtype = seq_module.dtype
        object.__setattr__(self, "_seq", seq_module)   # not a child: its names end in _l0
        for name, p in seq_module.named_parameters():
            setattr(self, name[:-len("_l0")], p)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}, dtype={self.dtype}"

    def train(self, mode=True):
        self._seq.train(mode)
        return super().train(mode)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_stream", None)   # the eval step's cached buffers, rebuilt on demand
        return state

    def _states(self, *named, B, unbatched):
        """(array or None, name) pairs of one step's states -> (1, B, H) arrays or None."""
        shape = (self.hidden_size,) if unbatched else (B, self.hidden_size)
        out = []
        for v, n in named:
            if v is not None:
                v = _as_float(v, n, self.dtype)
                _check_shape(v, n, shape)
                v = v.reshape(1, B, self.hidden_size)
            out.append(v)
        return out

    def _step(self, x, h, c):
        """One step: x (B, I) or (I,), h/c (B, H) or (H,) or None -> (h', c')."""
        seq = self._seq
        if not seq.training:
            # the common eval call (matrices of the cell's dtype, contiguous) skips the
            # conversions below: LSTMCell I = H = 8, one thread, 13.1 -> 9.7 us a call when
            # this path came; plain_rows and one output array, 6.1-8.2 -> 4.8-5.6 us (timeit,
            # the two builds alternating)
            B = _core.plain_rows(x, self.dtype, self.input_size)
            if B > 0 and (h is None or _core.plain_rows(h, self.dtype, self.hidden_size) == B) \
                    and (c is None or _core.plain_rows(c, self.dtype, self.hidden_size) == B):
                return self._eval_step(x, h, c)
        xa = _as_float(x, "x", self.dtype)
        if xa.ndim not in (1, 2) or xa.shape[-1] != self.input_size:
            raise ValueError(f"x must be (B, {self.input_size}) or ({self.input_size},), got "
                             f"shape {xa.shape}")
        unbatched = xa.ndim == 1
        xb = xa[None, :] if unbatched else xa
        B = xb.shape[0]
        if B == 0:
            raise ValueError(f"x must have at least one row, got shape {xa.shape}")
        states = self._states((h, "h"), (c, "c"), B=B, unbatched=unbatched)
        if seq.training:   # backward needs what _run saves, and how it was batched
            out, hn, cn = seq._run(xb[None], states[0], states[1], None)
            self._unbatched = unbatched
            hn, cn = hn[0], None if cn is None else cn[0]
        else:
            hn, cn = self._eval_step(np.ascontiguousarray(xb), _contiguous(states[0]),
                                     _contiguous(states[1]))
        pick = (lambda a: a[0]) if unbatched else (lambda a: a)
        return pick(hn), None if cn is None else pick(cn)

    def _eval_step(self, xb, h0, c0):
        """An eval-mode step on the streaming machinery: the T=1 problem, workspace and output
        buffer of a StreamState, kept for the last batch size; xb (B, I), h0/c0 B x H
        elements or None, all C-contiguous arrays of the cell's dtype. Returns fresh (B, H)
        arrays h', c' (c' None without c), as torch's cells do: views of one new array."""
        seq, B = self._seq, xb.shape[0]
        stream = self.__dict__.get("_stream")
        if stream is None or stream.batch_size != B:
            stream = seq.initial_state(B)
            object.__setattr__(self, "_stream", stream)   # not a parameter or child
        out = np.empty((2 if seq._has_c else 1, B, self.hidden_size), dtype=self.dtype)
        hn = out[0]
        cn = out[1] if seq._has_c else None
        with seq._lock:   # the workspace is shared by the threads that call this cell
            stream._seq.forward(stream._y, hn, cn, None, xb, h0, c0, None, seq._flat,
                                stream._scratch, seq._packed_locked())
        return hn, cn

    def _step_backward(self, dh, dc):
        if self._seq._saved is None:
            raise RuntimeError("backward needs a forward in training mode first")
        B = self._seq._saved[0].B
        grads = self._states((dh, "dh"), (dc, "dc"), B=B, unbatched=self._unbatched)
        dy = np.zeros((1, B, self.hidden_size), dtype=self.dtype)   # h' is also the output
        dx, dh0, dc0 = self._seq._run_backward(dy, grads[0], grads[1])
        pick = (lambda a: a[0, 0]) if self._unbatched else (lambda a: a[0])
        return pick(dx), pick(dh0), None if dc0 is None else pick(dc0)


class LSTMCell(_CellBase):
    """One LSTM step, as torch.nn.LSTMCell: `h, c = cell(x, (h, c))`; parameters weight_ih
    (4H, I), weight_hh (4H, H), bias_ih (4H), bias_hh (4H)."""

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32):
        super().__init__(LSTM(input_size, hidden_size, bias=bias, dtype=dtype))

    def forward(self, x, hx=None):
        """x (B, input_size) or (input_size,); hx (h, c) each (B, H) / (H,), or None (zeros).
        Returns (h', c')."""
        h, c = _pair(hx, ("h", "c"))
        return self._step(x, h, c)

    def backward(self, dh, dc=None):
        """Gradients w.r.t. h' and c' (dc may be None). Returns (dx, (dh_prev, dc_prev)) and
        adds the parameter gradients to `.grad`."""
        dx, dh0, dc0 = self._step_backward(dh, dc)
        return dx, (dh0, dc0)


class _HiddenStateCell(_CellBase):
    """Cells whose only state is h (GRU, RNN): `h = cell(x, h)`."""

    def forward(self, x, hx=None):
        """x (B, input_size) or (input_size,); hx (B, H) / (H,) or None (zeros). Returns h'."""
        return self._step(x, hx, None)[0]

    def backward(self, dh):
        """Gradient w.r.t. h'. Returns (dx, dh_prev) and adds the parameter gradients."""
        dx, dh0, _ = self._step_backward(dh, None)
        return dx, dh0


class GRUCell(_HiddenStateCell):
    """One GRU step, as torch.nn.GRUCell: `h = cell(x, h)`; parameters weight_ih (3H, I),
    weight_hh (3H, H), bias_ih (3H), bias_hh (3H). reset_after as for `GRU`."""

    def __init__(self, input_size, hidden_size, bias=True, reset_after=True, dtype=np.float32):
        super().__init__(GRU(input_size, hidden_size, bias=bias, reset_after=reset_after,
                             dtype=dtype))
        self.reset_after = bool(reset_after)


class RNNCell(_HiddenStateCell):
    """One Elman RNN step, as torch.nn.RNNCell: `h = cell(x, h)`; parameters weight_ih
    (H, I), weight_hh (H, H), bias_ih (H), bias_hh (H)."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh",
                 dtype=np.float32):
        super().__init__(RNN(input_size, hidden_size, nonlinearity=nonlinearity, bias=bias,
                             dtype=dtype))
        self.nonlinearity = nonlinearity
