"""Recurrent modules: `LSTM` (whole sequences, stacked, bidirectional) and `LSTMCell`.

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
                             module.proj_size, module.num_layers, module._D, module.bias,
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


class LSTM(Module):
    """Multi-layer LSTM over whole sequences, with PyTorch's arguments and parameter names.

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
    proj_size : int, default 0
        If > 0, h is projected to this size (must be < hidden_size).
    dtype : float32 or float64

    Parameters are named as in torch.nn.LSTM (weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k},
    bias_hh_l{k}, weight_hr_l{k}, with suffix _reverse), gate blocks i, f, g, o, initialised
    from U(-1/sqrt(H), 1/sqrt(H)) with lstmc's generator (`lstmc.manual_seed`).
    """

    _cell = _core.CELL_LSTM
    _gates = 4

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, dtype=np.float32):
        super().__init__()
        self.input_size = _positive_int(input_size, "input_size")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        self.num_layers = _positive_int(num_layers, "num_layers")
        self.proj_size = _positive_int(proj_size, "proj_size", minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be < hidden_size ({self.hidden_size}), got "
                             f"{self.proj_size}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.dtype = _dtype_of(dtype)
        self._D = 2 if self.bidirectional else 1
        self._workspace = _Workspace(self.dtype)
        self._lock = threading.Lock()
        self._saved = None
        self._last_dropout_masks = []
        self._init_parameters()

    @property
    def _hout(self):
        return self.proj_size or self.hidden_size

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
                if self.proj_size:
                    yield "weight_hr" + sfx, l, d, _core.W_HR, (self.proj_size, H)

    def _init_parameters(self):
        layout = _core.Seq(self._cell, 1, 1, self.input_size, self.hidden_size, self.proj_size,
                           self.num_layers, self._D, self.bias, [1])
        count = layout.param_count
        bound = 1.0 / math.sqrt(self.hidden_size)
        self._flat = generator().uniform(-bound, bound, count).astype(self.dtype)
        self._flat_grad = np.zeros(count, dtype=self.dtype)
        for name, l, d, which, shape in self._param_names():
            off = layout.param_offset(l, d, which)
            size = math.prod(shape)
            setattr(self, name, Parameter(self._flat[off:off + size].reshape(shape),
                                          self._flat_grad[off:off + size].reshape(shape)))

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + f", dtype={self.dtype}"

    # ---- argument checks ----------------------------------------------------------------
    def _input(self, x):
        """x -> (time-major (T, B, I) array, unbatched flag)."""
        x = _as_float(x, "x", self.dtype)
        shape = x.shape
        if x.ndim not in (2, 3):
            raise ValueError(f"x must be 3-D ({'B, T' if self.batch_first else 'T, B'}, "
                             f"input_size) or 2-D (T, input_size) for one sequence, got shape "
                             f"{x.shape}")
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

    def _state_shapes(self, B, unbatched):
        LD = self.num_layers * self._D
        if unbatched:
            return (LD, self._hout), (LD, self.hidden_size)
        return (LD, B, self._hout), (LD, B, self.hidden_size)

    def _states(self, hx, B, unbatched, names=("h0", "c0")):
        """(h, c) user pair -> kernel-shaped arrays (each None when absent)."""
        if hx is None:
            return None, None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ValueError(f"({names[0]}, {names[1]}) must be a pair of arrays or None")
        out = []
        for value, name, shape in zip(hx, names, self._state_shapes(B, unbatched)):
            if value is None:
                out.append(None)
                continue
            arr = _as_float(value, name, self.dtype)
            _check_shape(arr, name, shape)
            out.append(arr[:, None, :] if unbatched else arr)
        return out[0], out[1]

    # ---- forward / backward -------------------------------------------------------------
    def forward(self, x, hx=None, lengths=None):
        """Runs the sequence.

        Parameters
        ----------
        x : array (T, B, input_size), or (B, T, input_size) with batch_first, or (T, input_size)
        hx : (h0, c0) or None
            h0 (num_layers * D, B, H_out), c0 (num_layers * D, B, hidden_size); zeros if None.
            H_out is proj_size if set, else hidden_size. Unbatched: without the B axis.
        lengths : int array (B,) or None
            Valid steps of each row (0..T, any order). Outputs past a row's length are 0 and
            its final state is the state after its last valid step.

        Returns
        -------
        output : array (T, B, D * H_out) (or batch_first / unbatched layout)
        (h_n, c_n) : arrays shaped like h0 and c0
        """
        xt, unbatched = self._input(x)
        T, B, _ = xt.shape
        lengths = self._lengths(lengths, T, B)
        h0, c0 = self._states(hx, B, unbatched)
        plan = _Plan(self, T, B, lengths)
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
        h0s, c0s = plan.to_sorted(h0), plan.to_sorted(c0)
        y = np.empty((plan.N, Y), dtype=self.dtype)
        hn = np.empty((L * D, B, Hout), dtype=self.dtype)
        cn = np.empty((L * D, B, H), dtype=self.dtype)
        seq = plan.seq
        with self._lock:
            ws = self._workspace
            reserve = ws.get("reserve", seq.reserve_size) if train else None
            seq.forward(y.reshape(-1), hn.reshape(-1), cn.reshape(-1),
                        reserve, xp.reshape(-1), _flat(h0s), _flat(c0s), _flat(masks),
                        self._flat, ws.get("scratch", seq.scratch_size(train)))
            self._saved = (plan, xp, masks, reserve, unbatched) if train else None

        out = plan.unpack(y, Y)
        hn, cn = plan.from_sorted(hn), plan.from_sorted(cn)
        if unbatched:
            return out[:, 0], (hn[:, 0], cn[:, 0])
        if self.batch_first:
            out = np.ascontiguousarray(out.transpose(1, 0, 2))
        return out, (hn, cn)

    def backward(self, dout, dhx=None):
        """Backpropagates through the last training-mode forward.

        Parameters
        ----------
        dout : array shaped like that forward's output
            Gradient of the loss w.r.t. the output (ignored at padded positions).
        dhx : (dh_n, dc_n) or None
            Gradients w.r.t. h_n and c_n, shaped like them; None (or either None) = zeros.

        Returns
        -------
        dx : array shaped like x (zeros at padded positions)
        (dh0, dc0) : gradients w.r.t. h0 and c0

        Parameter gradients are added to each parameter's `.grad`.
        """
        with self._lock:
            saved = self._saved
        if saved is None:
            raise RuntimeError("backward needs a forward in training mode first (after "
                               "module.train(); an eval-mode forward stores nothing)")
        plan, xp, masks, reserve, unbatched = saved
        T, B, D, Hout, L = plan.T, plan.B, self._D, self._hout, self.num_layers
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
        dhn, dcn = self._states(dhx, B, unbatched, names=("dh_n", "dc_n"))
        dyp = plan.pack(dt)
        dx = np.empty((plan.N, self.input_size), dtype=self.dtype)
        dh0 = np.empty((L * D, B, Hout), dtype=self.dtype)
        dc0 = np.empty((L * D, B, self.hidden_size), dtype=self.dtype)
        seq = plan.seq
        with self._lock:
            if self._saved is not saved:
                raise RuntimeError("another forward ran during backward's argument checks")
            seq.backward(dx.reshape(-1), dh0.reshape(-1), dc0.reshape(-1), self._flat_grad,
                         reserve, dyp.reshape(-1), _flat(plan.to_sorted(dhn)),
                         _flat(plan.to_sorted(dcn)), xp.reshape(-1), _flat(masks), self._flat,
                         self._workspace.get("scratch", seq.scratch_size(True)))
        dx = plan.unpack(dx, self.input_size)
        dh0, dc0 = plan.from_sorted(dh0), plan.from_sorted(dc0)
        if unbatched:
            return dx[:, 0], (dh0[:, 0], dc0[:, 0])
        if self.batch_first:
            dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        return dx, (dh0, dc0)


def _flat(a):
    return None if a is None else a.reshape(-1)


class LSTMCell(Module):
    """One LSTM step, as torch.nn.LSTMCell: `h, c = cell(x, (h, c))`.

    Parameters: weight_ih (4H, I), weight_hh (4H, H), bias_ih (4H), bias_hh (4H). It runs
    the same kernels as `LSTM` with one step and one layer.
    """

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32):
        super().__init__()
        self.input_size = _positive_int(input_size, "input_size")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        self.bias = bool(bias)
        self.dtype = _dtype_of(dtype)
        # the engine: a one-layer LSTM run for a single step; its tensors are ours
        lstm = LSTM(input_size, hidden_size, bias=bias, dtype=dtype)
        object.__setattr__(self, "_lstm", lstm)   # not a child: its names would be _l0
        for name, p in lstm.named_parameters():
            setattr(self, name[:-len("_l0")], p)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}, dtype={self.dtype}"

    def train(self, mode=True):
        self._lstm.train(mode)
        return super().train(mode)

    def forward(self, x, hx=None):
        """x (B, input_size) or (input_size,); hx (h, c) each (B, H) / (H,), or None (zeros).
        Returns (h', c')."""
        xa = _as_float(x, "x", self.dtype)
        if xa.ndim not in (1, 2):
            raise ValueError(f"x must be (B, {self.input_size}) or ({self.input_size},), got "
                             f"shape {xa.shape}")
        unbatched = xa.ndim == 1
        xb = xa[None, :] if unbatched else xa
        B = xb.shape[0]
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ValueError("hx must be a pair (h, c) of arrays or None")
            shape = (self.hidden_size,) if unbatched else (B, self.hidden_size)
            h, c = (_as_float(v, n, self.dtype) if v is not None else None
                    for v, n in zip(hx, ("h", "c")))
            for v, n in ((h, "h"), (c, "c")):
                if v is not None:
                    _check_shape(v, n, shape)
            hx = (None if h is None else h.reshape(1, B, -1),
                  None if c is None else c.reshape(1, B, -1))
        if xb.shape[-1] != self.input_size:
            raise ValueError(f"x must have {self.input_size} features (last axis), got shape "
                             f"{xa.shape}")
        _, (h1, c1) = self._lstm(xb[None], hx)
        self._unbatched = unbatched
        if unbatched:
            return h1[0, 0], c1[0, 0]
        return h1[0], c1[0]

    def backward(self, dh, dc=None):
        """Gradients w.r.t. the returned h' and c' (dc may be None). Returns
        (dx, (dh_prev, dc_prev)) and adds the parameter gradients to `.grad`."""
        if self._lstm._saved is None:
            raise RuntimeError("backward needs a forward in training mode first")
        B = self._lstm._saved[0].B
        unbatched = self._unbatched
        shape = (self.hidden_size,) if unbatched else (B, self.hidden_size)
        dh = _as_float(dh, "dh", self.dtype)
        _check_shape(dh, "dh", shape)
        if dc is not None:
            dc = _as_float(dc, "dc", self.dtype)
            _check_shape(dc, "dc", shape)
        dy = np.zeros((1, B, self.hidden_size), dtype=self.dtype)
        dx, (dh0, dc0) = self._lstm.backward(
            dy, (dh.reshape(1, B, -1), None if dc is None else dc.reshape(1, B, -1)))
        if unbatched:
            return dx[0, 0], (dh0[0, 0], dc0[0, 0])
        return dx[0], (dh0[0], dc0[0])
