"""The one-step cells `LSTMCell`, `GRUCell`, `RNNCell`, as torch's: each keeps its weights in
a one-layer sequence module of its cell and runs one step of it, exposing the tensors under
torch's cell names (weight_ih, weight_hh, bias_ih, bias_hh).

Recurrent dropout (``recurrent_dropout=p``, keyword, lstmc's beyond torch): a cell sees one
step at a time, so, as Keras' cells (DropoutRNNCell), it draws its masks (one per gate block,
(B, H)) at its first training-mode step and keeps them for the steps after, until
``reset_dropout_mask()`` starts the next sequence (or the batch size changes): call it before
each sequence. Eval mode never drops."""
from typing import NamedTuple

import numpy as np

from lstmc import _core
from lstmc.nn._checks import as_float, check_shape, pair
from lstmc.nn.module import Module
from lstmc.nn.rnn import GRU, LSTM, RNN


class _CellSaved(NamedTuple):
    """What a cell's backward reads of one training-mode step."""
    unbatched: bool      # how the step's arguments were batched
    seq: object          # its sequence module's record of the T = 1 forward (_engine.Saved)


class _CellBase(Module):
    """One step of one layer of a sequence module (eval: on its Stepper; training: a T = 1
    forward, whose saved state backward reads)."""

    def __init__(self, seq_module):
        super().__init__()
        object.__setattr__(self, "_rmask", None)   # (1, G, B, H): this sequence's masks
        self.input_size = seq_module.input_size
        self.hidden_size = seq_module.hidden_size
        self.bias = seq_module.bias
        self.dtype = seq_module.dtype
        object.__setattr__(self, "_seq", seq_module)   # not a child: its names end in _l0
        for name, p in seq_module.named_parameters():
            setattr(self, name[:-len("_l0")], p)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}, bias={self.bias}, dtype={self.dtype}"
        return s + (f", recurrent_dropout={self.recurrent_dropout}"
                    if self.recurrent_dropout else "")

    recurrent_dropout = property(
        lambda self: self._seq.recurrent_dropout,
        lambda self, p: setattr(self._seq, "recurrent_dropout", p),
        doc="the rate of recurrent dropout (the sequence module's, which draws the masks)")

    def reset_dropout_mask(self):
        """Forgets the recurrent dropout masks: the next training-mode step draws new ones
        (call it at the start of every sequence)."""
        object.__setattr__(self, "_rmask", None)

    def _sequence_masks(self, B):
        """This sequence's recurrent dropout masks (1, G, B, H), drawn at its first step."""
        if self._rmask is None or self._rmask.shape[2] != B:
            object.__setattr__(self, "_rmask", self._seq._draw_recurrent_masks(B))
        return self._rmask

    def _inner_modules(self):
        return (self._seq,)

    def train(self, mode=True):
        self._seq.train(mode)
        return super().train(mode)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_stepper", None)   # the eval step's Seq, rebuilt on demand
        return state

    def _states(self, *named, B, unbatched):
        """(array or None, name) pairs of one step's states -> (1, B, H) arrays or None."""
        shape = (self.hidden_size,) if unbatched else (B, self.hidden_size)
        out = []
        for v, n in named:
            if v is not None:
                v = as_float(v, n, self.dtype)
                check_shape(v, n, shape)
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
                stepper = self.__dict__.get("_stepper")
                if stepper is None or stepper.batch_size != B:
                    stepper = self._stepper_for(B)
                return stepper.run(x, h, c)
        xa = as_float(x, "x", self.dtype)
        if xa.ndim not in (1, 2) or xa.shape[-1] != self.input_size:
            raise ValueError(f"x must be (B, {self.input_size}) or ({self.input_size},), got "
                             f"shape {xa.shape}")
        unbatched = xa.ndim == 1
        xb = xa[None, :] if unbatched else xa
        B = xb.shape[0]
        if B == 0:
            raise ValueError(f"x must have at least one row, got shape {xa.shape}")
        states = self._states((h, "h"), (c, "c"), B=B, unbatched=unbatched)
        if seq.training:   # backward needs what the forward saves, and how it was batched
            rmasks = self._sequence_masks(B) if self.recurrent_dropout > 0 else None
            out, hn, cn = seq._run(xb[None], states[0], states[1], None, rmasks)
            self._unbatched = unbatched
            hn, cn = hn[0], None if cn is None else cn[0]
        else:
            hn, cn = self._stepper_for(B).run(np.ascontiguousarray(xb), _contiguous(states[0]),
                                              _contiguous(states[1]))
        pick = (lambda a: a[0]) if unbatched else (lambda a: a)
        return pick(hn), None if cn is None else pick(cn)

    def _stepper_for(self, B):
        """The Stepper of the eval step (kept for the next call of the same batch size). Its
        run returns new arrays, as torch's cells do."""
        stepper = self.__dict__.get("_stepper")
        if stepper is None or stepper.batch_size != B:
            stepper = self._seq._stepper(B)
            object.__setattr__(self, "_stepper", stepper)   # not a parameter or child
        return stepper

    _tape_kind = "cell"

    def _saved_for_backward(self):
        return _CellSaved(self._unbatched, self._seq._saved_for_backward())

    def _restore_saved(self, saved):
        self._unbatched = saved.unbatched
        self._seq._restore_saved(saved.seq)

    def _step_backward(self, dh, dc):
        B = self._seq._saved().plan.B
        grads = self._states((dh, "dh"), (dc, "dc"), B=B, unbatched=self._unbatched)
        dy = np.zeros((1, B, self.hidden_size), dtype=self.dtype)   # h' is also the output
        dx, dh0, dc0 = self._seq._run_backward(dy, grads[0], grads[1])
        pick = (lambda a: a[0, 0]) if self._unbatched else (lambda a: a[0])
        return pick(dx), pick(dh0), None if dc0 is None else pick(dc0)


def _contiguous(a):
    return None if a is None else np.ascontiguousarray(a)


class LSTMCell(_CellBase):
    """One LSTM step, as torch.nn.LSTMCell: `h, c = cell(x, (h, c))`; parameters weight_ih
    (4H, I), weight_hh (4H, H), bias_ih (4H), bias_hh (4H)."""

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, *,
                 recurrent_dropout=0.0):
        super().__init__(LSTM(input_size, hidden_size, bias=bias, dtype=dtype,
                              recurrent_dropout=recurrent_dropout))

    def forward(self, x, hx=None):
        """x (B, input_size) or (input_size,); hx (h, c) each (B, H) / (H,), or None (zeros).
        Returns (h', c')."""
        h, c = pair(hx, ("h", "c"))
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

    def __init__(self, input_size, hidden_size, bias=True, reset_after=True, dtype=np.float32,
                 *, recurrent_dropout=0.0):
        super().__init__(GRU(input_size, hidden_size, bias=bias, reset_after=reset_after,
                             dtype=dtype, recurrent_dropout=recurrent_dropout))
        self.reset_after = bool(reset_after)


class RNNCell(_HiddenStateCell):
    """One Elman RNN step, as torch.nn.RNNCell: `h = cell(x, h)`; parameters weight_ih
    (H, I), weight_hh (H, H), bias_ih (H), bias_hh (H)."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh",
                 dtype=np.float32, *, recurrent_dropout=0.0):
        super().__init__(RNN(input_size, hidden_size, nonlinearity=nonlinearity, bias=bias,
                             dtype=dtype, recurrent_dropout=recurrent_dropout))
        self.nonlinearity = nonlinearity
