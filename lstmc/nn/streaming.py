"""Streaming a sequence module one timestep at a time: `initial_state`, `step` and the
`StreamState` they carry, which owns the step's buffers so that stepping allocates nothing.
"""
import threading

import numpy as np

from lstmc.nn._checks import as_float, check_shape, positive_int


class Streaming:
    """initial_state and step of the unidirectional sequence modules (mixed into their base,
    whose dtype, training flag, flat buffer and engine they use)."""

    def _stream_key(self):
        """What a StreamState must agree on with the module that steps it."""
        return (self._cell, self.input_size, self.hidden_size, self._proj, self.num_layers,
                self.dtype, self._options())

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
            return h0._branch(self)
        state = StreamState(self, positive_int(batch_size, "batch_size"))
        for value, name, target in ((h0, "h0", state.h), (c0, "c0", state.c)):
            if value is not None:
                if target is None:
                    raise ValueError(f"{name} must be None: {type(self).__name__} has no "
                                     f"cell state")
                arr = as_float(value, name, self.dtype)
                check_shape(arr, name, target.shape)
                np.copyto(target, arr)
        if self._engine.quant is not None:
            self._engine.quant.check_state(state.h, "h0")
        return state

    def step(self, x_t, state, out=None):
        """One timestep of a stream through all layers; updates `state` in place.

        Runs in eval semantics whatever the module's mode: no dropout between layers, no
        recurrent dropout (a step has no backward to train, and one mask per stream would
        only add noise to what it serves), and nothing is saved for backward. With x_t a C-contiguous array of the module's dtype,
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
            y = check_out(out, y.shape, self.dtype)
        if not state._busy.acquire(False):
            raise RuntimeError(f"{type(self).__name__}.step: this StreamState is being stepped "
                               "by another thread; a state is one stream: give each thread "
                               "its own (initial_state, or copy.copy to branch one)")
        try:
            # h0/c0 and hn/cn are the same arrays: the driver copies each layer's h0/c0 into
            # its own buffers before it writes that layer's hn/cn, each thread its own columns
            # (csrc/seq.inc), so the state is updated in place; tests/test_streaming.py holds it
            q = self._engine.quant
            if q is None:
                state._seq.forward(y, state.h, state.c, None, x, state.h, state.c, None,
                                   self._flat, state._scratch,
                                   None if self.training else self._engine.weights.get())
            else:   # int8: h stays within [-1, 1] (initial_state checked the user's)
                state._seq.forward_q(y, state.h, state.c, x, state.h, state.c, self._flat,
                                     q.buffer, q.dtype, state._scratch)
        finally:
            state._busy.release()
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
                             f"input_size, hidden_size, proj_size, num_layers, dtype, cell "
                             f"options) are "
                             f"{state._key}, this module's are {self._stream_key()}")

    def _stream_input(self, x_t, state):
        """The slow path of step's x_t check: converts, or raises naming the shapes."""
        x = np.ascontiguousarray(as_float(x_t, "x_t", self.dtype))
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
    allocates nothing. One state serves one stream at a time: give each thread its own (a
    step on a state another thread is stepping raises RuntimeError).
    """

    __slots__ = ("h", "c", "batch_size", "_owner", "_key", "_seq", "_scratch", "_y", "_y1",
                 "_x_shapes", "_busy", "_moved")

    def __init__(self, module, batch_size):
        spec, B = module._spec(), batch_size
        L, dt = spec.num_layers, spec.dtype
        self.batch_size = B
        self._owner = module   # the module that made it: step's one-comparison check
        self._key = module._stream_key()
        stepper = module._stepper(B)   # step runs its Seq on the stepping module's weights
        self._seq = stepper.seq
        self._scratch = np.empty(stepper.scratch_size, dtype=dt)
        self._y = np.empty(stepper.y_shape, dtype=dt)
        self._busy = threading.Lock()   # held by the running step
        self.h = np.zeros((L, B, spec.hout), dtype=dt)
        self.c = np.zeros((L, B, spec.hidden_size), dtype=dt) if spec.has_c else None
        self._y1 = self._y[0] if B == 1 else None
        self._x_shapes = ((B, spec.input_size),) + (((spec.input_size,),) if B == 1 else ())
        self._moved = None   # reorder's buffers, made by its first call

    def reorder(self, rows):
        """Row i of the stream (h, and c) becomes a copy of row rows[i]'s, in place: rows is
        an int64 array (B,) of rows of this state (repeats allowed), e.g. the surviving
        hypotheses of a beam search (lstmc.nn.decoding). Allocates nothing after its first
        call."""
        if self._moved is None:
            self._moved = tuple(np.empty_like(a) for a in (self.h, self.c) if a is not None)
        rows = np.asarray(rows)
        if rows.shape != (self.batch_size,) or rows.dtype.kind not in "iu":
            raise ValueError(f"rows must be an integer array of shape ({self.batch_size},), "
                             f"got {rows.dtype} {rows.shape}")
        if rows.min() < 0 or rows.max() >= self.batch_size:
            raise IndexError(f"rows must be rows of this state, 0 .. {self.batch_size - 1}; "
                             f"got {rows.min()} .. {rows.max()}")
        for a, moved in zip((self.h, self.c), self._moved):
            np.take(a, rows, axis=1, out=moved, mode="clip")   # "raise" buffers (allocates)
            np.copyto(a, moved)

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
        np.copyto(new.h, self.h)
        if self.c is not None:
            np.copyto(new.c, self.c)
        return new

    def __reduce__(self):
        raise TypeError("a StreamState cannot be pickled: save state.h (and state.c), and "
                        "copy them into module.initial_state(batch_size) to resume")

    def __repr__(self):
        c = "" if self.c is None else f", c {self.c.shape}"
        return f"StreamState(h {self.h.shape}{c}, dtype={self.h.dtype})"


def check_out(out, shape, dtype):
    """`out` if the kernels can write a result of `shape` and `dtype` into it as it is."""
    if out.__class__ is not np.ndarray or out.dtype != dtype or out.shape != shape \
            or not out.flags.c_contiguous or not out.flags.writeable:
        got = (f"{type(out).__name__} {getattr(out, 'shape', '')} "
               f"{getattr(out, 'dtype', '')}")
        raise ValueError(f"out must be a writable C-contiguous numpy array of shape {shape} "
                         f"and dtype {dtype}, got {got}")
    return out


def _plain(a, dtype):
    """a is a C-contiguous numpy array of `dtype` (what the kernels read as it is)."""
    return a.__class__ is np.ndarray and a.dtype == dtype and a.flags.c_contiguous
