"""The engine under lstmc.nn's recurrent modules: how a call maps onto the kernels' packed
time-major layout (csrc/lstmc.h), the workspaces, the packed eval-mode weights, and the calls
into `_core`. The sequence modules (LSTM, GRU, RNN), the cells and, through them, the Keras
layers all run here; the modules check the user's arguments and shape the results, and
nothing here knows PyTorch's or Keras' conventions (batch_first, unbatched inputs, hx pairs).

Arrays handed to `Engine.forward` / `Engine.backward` are time-major (T, B, F) and states
(L*D, B, F) in the caller's row order; the engine sorts rows by length (longest first) and
drops padding for the kernels, and undoes both on the way out.
"""
import threading
import weakref
from typing import NamedTuple

import numpy as np

from lstmc import _core
from lstmc.nn._quantized import QuantizedState


class Spec:
    """The shapes of one recurrent problem: what its plans, layout and packed copy follow."""

    __slots__ = ("cell", "input_size", "hidden_size", "proj", "num_layers", "directions",
                 "bias", "dtype", "options", "hout", "has_c")

    def __init__(self, cell, input_size, hidden_size, proj, num_layers, directions, bias,
                 dtype, options=None):
        self.cell, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.proj = proj   # projection size (LSTM's proj_size), 0 for none
        self.num_layers, self.directions, self.bias, self.dtype = \
            num_layers, directions, bias, dtype
        self.options = options   # a CellOptions, or None: the default cell
        self.hout = proj or hidden_size
        self.has_c = cell == _core.CELL_LSTM

    def seq(self, T, B, sorted_lengths, recurrent_dropout=False):
        """The kernels' problem of T steps of B rows (lengths sorted, longest first);
        recurrent_dropout: a training call's, with recurrent dropout masks."""
        return _core.Seq(self.cell, T, B, self.input_size, self.hidden_size, self.proj,
                         self.num_layers, self.directions, self.bias, sorted_lengths,
                         None if self.options is None else self.options.core,
                         recurrent_dropout)

    @property
    def gate_blocks(self):
        """G: the gate blocks of the cell (LSTM 4, GRU 3, RNN 1), one recurrent dropout
        mask each."""
        return 4 if self.cell == _core.CELL_LSTM else \
            3 if self.cell in (_core.CELL_GRU, _core.CELL_GRU_RESET_BEFORE) else 1

    def layout(self):
        """A one-step problem of these shapes: parameter and packed-copy layouts."""
        return self.seq(1, 1, [1])


class CellOptions(NamedTuple):
    """A recurrent module's cell options (csrc/lstmc.h lstmc_cell_options), resolved:
    `activations` holds per direction one (name, alpha, beta) per slot of the cell (names as
    lstmc.reference.activation takes them, alpha / beta None where unused); `clip` is None or
    > 0. `core` is what _core.Seq takes."""
    activations: tuple
    clip: float
    input_forget: bool
    peepholes: bool

    @property
    def core(self):
        rows = [list(d) + [("sigmoid", None, None)] * (3 - len(d)) for d in self.activations]
        rows = rows * (2 // len(rows))
        return ([[_core.ACTIVATIONS[name] for name, _, _ in r] for r in rows],
                [[alpha or 0.0 for _, alpha, _ in r] for r in rows],
                [[beta or 0.0 for _, _, beta in r] for r in rows],
                self.clip or 0.0, self.input_forget, self.peepholes)


class Plan:
    """How one (T, B, lengths) problem maps onto the kernels' packed layout."""

    def __init__(self, spec, T, B, lengths):
        self.T, self.B = T, B
        self._spec = spec
        self._seq_rd = None
        if lengths is None:
            self.perm = None                      # identity: dense time-major == packed
            sorted_lengths = np.full(B, T, dtype=np.intc)
        else:
            perm = np.argsort(-lengths, kind="stable")
            sorted_lengths = lengths[perm]
            self.perm = None if np.array_equal(perm, np.arange(B)) else perm
        self.seq = spec.seq(T, B, sorted_lengths)
        self.N = self.seq.rows
        self.dense = self.N == T * B
        if not self.dense:
            # packed position k holds (t_idx[k], b_idx[k]) in the user's (T, B) grid
            bs = self.seq.batch_sizes
            offsets = np.concatenate(([0], np.cumsum(bs)[:-1]))
            j = np.arange(self.N) - np.repeat(offsets, bs)
            self.t_idx = np.repeat(np.arange(T), bs)
            self.b_idx = j if self.perm is None else self.perm[j]

    @property
    def seq_rd(self):
        """The same problem with recurrent dropout (its training calls take rmasks)."""
        if self._seq_rd is None:
            self._seq_rd = self._spec.seq(self.T, self.B, self.seq.lengths, True)
        return self._seq_rd

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


class Workspace:
    """One call's scratch (and, in training, reserve) buffers, kept for the calls after it and
    bounded by the largest recent call: a buffer grows to what a call asks, and `trim` (every
    TRIM_EVERY calls of its engine) drops each buffer more than twice the largest size asked
    of it since the last trim, so that one long sequence does not hold its scratch for ever
    (docs/spec.md section 9, memory)."""

    __slots__ = ("dtype", "_arrays", "_asked")

    def __init__(self, dtype):
        self.dtype = dtype
        self._arrays = {}   # name -> buffer
        self._asked = {}    # name -> the largest size asked since the last trim

    def get(self, name, size):
        arr = self._arrays.get(name)
        if arr is None or arr.size < size:
            arr = self._arrays[name] = np.empty(max(size, 1), dtype=self.dtype)
        if size > self._asked.get(name, 0):
            self._asked[name] = size
        return arr[:size]

    def trim(self):
        """Drops the buffers more than twice the largest recent call; True if any is left."""
        for name, arr in list(self._arrays.items()):
            if arr.size > 2 * max(self._asked.get(name, 0), 1):
                del self._arrays[name]
        self._asked.clear()
        return bool(self._arrays)

    @property
    def nbytes(self):
        return sum(a.nbytes for a in self._arrays.values())


class Saved(NamedTuple):
    """What a training-mode forward keeps for its backward."""
    plan: Plan
    x: np.ndarray              # (N, I) packed input, the engine's own copy
    masks: np.ndarray          # (L-1, N, D*H_out) packed dropout masks, or None
    rmasks: np.ndarray         # (L*D, G, B, H_out) recurrent dropout masks, sorted rows, or None
    reserve: np.ndarray        # the kernels' reserve (gates, states) of this forward
    unbatched: bool            # how the caller shaped the call, handed back to its backward
    thread: int                # threading.get_ident() of the thread that ran the forward


class PackedWeights:
    """The kernels' packed copy of one module's weights (csrc/lstmc.h, lstmc_seq_pack_*) for
    eval-mode calls, built on the first one and kept, as ONNX Runtime packs its weights once
    per session; its lock; and the rule that keeps the copy true.

    Release before writing: while the copy exists, the parameters (each Parameter's `data`
    and the module's flat buffer) are read-only, so that a write cannot leave it stale. Code
    that writes parameters calls `Parameter.release()` first, which reaches `release()` here,
    drops the copy and makes them writable again: `train()`, `load_state_dict`, the
    optimizers and the Keras layers' `set_weights` do. Numpy cannot make read-only an array
    derived earlier from `data` (a slice or reshape you kept): call `p.release()` before
    writing through one. A call holds the copy it started with to its end, so a release and
    write while another thread's call runs is a race on the weights, as writing any array
    another thread reads is. There is no copy (`get` returns None) where the kernels would not
    read it: float64 on a CPU without AVX2/FMA under the automatic kernel choice, or the
    kernel forced to "blas".

    Keeping it took inf_h512_b1_t25 from 1.54 to 0.99 of ONNX Runtime's time at one thread
    (`python -m lstmc bench`; docs/decisions.md#packed-eval-mode-weights)."""

    __slots__ = ("lock", "_spec", "_flat", "_params", "_pack")

    def __init__(self, spec, flat, params):
        """params: the module's Parameters (a live view: each one's `data` is locked and
        unlocked with `flat`, of which it is a view)."""
        self.lock = threading.Lock()
        self._spec, self._flat, self._params = spec, flat, params
        self._pack = None

    @property
    def packed(self):
        """The packed copy if one exists now (without building one), else None."""
        return self._pack

    def get(self):
        """The packed copy, built if missing, or None. Takes the lock only to build, so that
        concurrent calls build one copy; a call that starts after a release and a write sees
        the new weights."""
        pack = self._pack
        if pack is not None or not _core.packs(self._spec.dtype):
            return pack
        with self.lock:
            return self.get_locked()

    def get_locked(self):
        """get, with self.lock held by the caller."""
        if self._pack is None and _core.packs(self._spec.dtype):
            layout = self._spec.layout()
            buf = _core.empty_aligned(layout.packed_size, self._spec.dtype)
            layout.pack(buf, self._flat)
            self._read_only(True)
            self._pack = buf
        return self._pack

    def release(self):
        """Drops the packed copy and makes the parameters writable."""
        with self.lock:
            if self._pack is not None:
                self._pack = None
                self._read_only(False)

    def _read_only(self, flag):
        if not flag:
            self._flat.flags.writeable = True   # the base first: views follow it
        for p in self._params:
            p._hold(self.release if flag else None)
        if flag:
            self._flat.flags.writeable = False


class QuantizedWeights(QuantizedState):
    """One recurrent module's weights in int8 or bfloat16 (lstmc.quantize): per layer and
    direction W_ih and W_hh symmetric int8 per row (gate unit) or rounded to bfloat16
    (`rows`, the canonical form, by parameter name), packed for the kernels (csrc/quant.c,
    csrc/quant_bf16.c) into one read-only buffer at the layout's qoffset; biases stay in the
    module's float32 flat buffer. int8's h, which the kernels quantize with the static scale
    1/127 in the cells whose h stays within [-1, 1], must start there: check_state refuses
    initial states past it. Freezing, the stored form and loading are QuantizedState's."""

    @staticmethod
    def quantized_names(module):
        return tuple(name for name, *_ in _matrices(module))

    def _repack(self):
        m = self.module
        layout = m._layout()
        buf = _core.empty_aligned(layout.qsize(self.dtype), np.uint8, huge=True)
        buf[:] = 0
        for name, l, d, which in _matrices(m):
            packed = self.rows[name].packed(m.hidden_size, m._gates)
            at = layout.qoffset(self.dtype, l, d, which)
            buf[at:at + packed.size] = packed
        buf.flags.writeable = False
        self.buffer = buf   # one assignment: a call running reads the old buffer or the new

    def check_state(self, h0, name):
        """int8 with the static 1/127 scale: an initial h finite and within [-1, 1]."""
        m = self.module
        static = self.dtype == "int8" and not m._proj and m._cell != _core.CELL_RNN_RELU
        if static and h0 is not None and not (np.abs(h0) <= 1).all():
            raise ValueError(f"{name}: an int8-quantized module takes initial states within "
                             "[-1, 1] (its h is quantized with the fixed scale 1/127); got "
                             "values outside it, or not finite")


def _matrices(module):
    """(name, layer, direction, which) of a recurrent module's W_ih (which 0) and W_hh (1)."""
    for name, l, d, kind, _ in module._param_names():
        if kind in (_core.W_IH, _core.W_HH):
            yield name, l, d, 0 if kind == _core.W_IH else 1


def _flat(a):
    return None if a is None else a.reshape(-1)


# every engine alive, for empty_cache
_ENGINES = weakref.WeakSet()


def empty_cache():
    """Frees the workspaces every module keeps between calls (those of calls running in
    other threads when they end) and its cached plans; the next call allocates what it
    needs. Packed eval-mode weights, stream states and what a training forward saved for
    its backward stay: they are state, not cache."""
    for engine in list(_ENGINES):
        engine.empty_cache()


def cached_bytes():
    """Bytes held now by the idle workspaces of every engine alive."""
    return sum(engine.cached_bytes() for engine in list(_ENGINES))


class Engine:
    """The kernels' side of one recurrent module: its Spec, its parameters' flat buffers, the
    plans of its dense batches, its idle workspaces, its packed weights (and their lock) and
    what its last training forward saved.

    Threads: eval-mode calls run at once in any number of threads, each on a workspace of
    its own taken from the idle ones (or a new one) and given back at its end; the C calls
    release the GIL. A training-mode forward or backward writes what the module saved (and
    its gradients), so one runs at a time: a second thread's raises RuntimeError (`claim`),
    and so does a backward in another thread than its forward's."""

    TRIM_EVERY = 64   # calls between two Workspace.trim of the idle workspaces

    __slots__ = ("spec", "name", "flat", "flat_grad", "weights", "lock", "saved", "_plans",
                 "_idle", "_calls", "_training", "quant", "__weakref__")

    def __init__(self, spec, flat, flat_grad, params, name):
        """name: the module, as error messages name it."""
        self.spec, self.name = spec, name
        self.flat, self.flat_grad = flat, flat_grad
        self.weights = PackedWeights(spec, flat, params)
        self.lock = self.weights.lock
        self.saved = None
        self._plans = {}   # (T, B) -> Plan of a dense batch
        self._idle = []    # Workspaces no call is using; list.pop / append are atomic
        self._calls = 0
        self._training = threading.Lock()   # held by the running training forward / backward
        self.quant = None   # QuantizedWeights of a quantized module (lstmc.quantize)
        _ENGINES.add(self)

    def stepper(self, batch_size):
        return Stepper(self, batch_size)

    def plan(self, T, B, lengths):
        """The Plan of a call. Dense batches reuse theirs (building one took 40 of the 90 us
        a T=25 forward of an I = H = 8 LSTM spends outside the kernels)."""
        if lengths is not None:
            return Plan(self.spec, T, B, lengths)
        plan = self._plans.get((T, B))
        if plan is None:
            if len(self._plans) >= 32:
                self._plans.clear()
            plan = self._plans[(T, B)] = Plan(self.spec, T, B, None)
        return plan

    # ---- workspaces -------------------------------------------------------------------------
    def workspace(self):
        """An idle workspace (the last one given back: its buffers are warm) or a new one,
        this call's own until `give_back`."""
        try:
            return self._idle.pop()
        except IndexError:
            return Workspace(self.spec.dtype)

    def give_back(self, ws):
        self._idle.append(ws)
        self._calls += 1   # not exact under threads, and need not be: it paces the trim
        if self._calls >= self.TRIM_EVERY:
            self._trim()

    def _trim(self):
        """Trims the idle workspaces, and drops those left empty: a workspace not used since
        the last trim was one more than the calls then running needed."""
        self._calls = 0
        with self.lock:
            idle, self._idle = self._idle, []
            kept = [ws for ws in idle if ws.trim()]
            self._idle.extend(kept)

    def empty_cache(self):
        with self.lock:
            self._idle = []
            self._plans = {}

    def cached_bytes(self):
        return sum(ws.nbytes for ws in list(self._idle))

    # ---- training: one thread at a time ------------------------------------------------
    def claim(self):
        """Marks a training-mode forward or backward as running, or raises RuntimeError if
        one runs in another thread. The caller releases `_training` when done."""
        if not self._training.acquire(blocking=False):
            raise RuntimeError(
                f"{self.name} is in use by another thread: a training-mode forward or "
                "backward of one module runs in one thread at a time (give each thread a "
                "module of its own, e.g. copy.deepcopy(module), or call it from one thread)")

    def last_saved(self):
        """What the last training forward saved (a Saved), or None; RuntimeError if another
        thread ran it (its backward is that thread's)."""
        saved = self.saved
        if saved is not None and saved.thread != threading.get_ident():
            raise RuntimeError(
                f"{self.name}: backward in another thread than the last training-mode "
                "forward, which another thread ran: a module keeps one forward for its "
                "backward, so run each forward and its backward in one thread (give each "
                "thread a module of its own)")
        return saved

    # ---- calls ------------------------------------------------------------------------------
    def forward(self, plan, xp, h0, c0, masks, train, unbatched=False, rmasks=None):
        """The kernels' forward of `plan`. xp: (N, I) packed input (plan.pack; in training the
        engine keeps it for backward: pass a copy of your own); h0, c0: (L*D, B, .) or None
        (zeros); masks: (L-1, N, D*H_out) packed dropout masks or None; rmasks: training
        only, (L*D, G, B, H_out) recurrent dropout masks in the user's row order, or None
        (csrc/lstmc.h: one per gate block, the same at every step). Training saves a
        `Saved` (with `unbatched`, for the caller's backward). Returns out (T, B, D*H_out),
        zeros at padding, h_n and c_n (L*D, B, .) (c_n None without c)."""
        spec = self.spec
        Y = spec.directions * spec.hout
        y = np.empty((plan.N, Y), dtype=spec.dtype)
        hn, cn = self._new_states(plan.B)
        seq = plan.seq
        if rmasks is not None:
            if not train:
                raise RuntimeError("recurrent dropout masks are for training-mode forwards")
            seq = plan.seq_rd
            rmasks = np.ascontiguousarray(
                rmasks if plan.perm is None else rmasks[:, :, plan.perm], dtype=spec.dtype)
        if self.quant is not None:
            if train:
                raise RuntimeError(self.quantized_refusal("a training-mode forward"))
            self.quant.check_state(h0, "h0")
        if train:
            self.claim()
        ws = self.workspace()
        try:
            if self.quant is not None:
                q = self.quant
                seq.forward_q(y.reshape(-1), hn.reshape(-1), _flat(cn), xp.reshape(-1),
                              _flat(plan.to_sorted(h0)), _flat(plan.to_sorted(c0)), self.flat,
                              q.buffer, q.dtype, ws.get("scratch", seq.scratch_size_q(q.dtype)))
            else:
                packed = None if train else self.weights.get()
                reserve = ws.get("reserve", seq.reserve_size) if train else None
                seq.forward(y.reshape(-1), hn.reshape(-1), _flat(cn), reserve, xp.reshape(-1),
                            _flat(plan.to_sorted(h0)), _flat(plan.to_sorted(c0)), _flat(masks),
                            self.flat, ws.get("scratch", seq.scratch_size(train)), packed,
                            _flat(rmasks))
            if train:
                self.saved = Saved(plan, xp, masks, rmasks, reserve, unbatched,
                                   threading.get_ident())
            else:
                self.saved = None
        finally:
            self.give_back(ws)
            if train:
                self._training.release()
        return plan.unpack(y, Y), plan.from_sorted(hn), \
            None if cn is None else plan.from_sorted(cn)

    def backward(self, saved, dy, dhn, dcn):
        """The kernels' backward of the forward that saved `saved` (still the last one, or
        RuntimeError). dy (T, B, D*H_out); dhn, dcn (L*D, B, .) or None. Adds the parameter
        gradients to flat_grad; returns dx (T, B, I), dh0, dc0 (dc0 None without c)."""
        if self.quant is not None:
            raise RuntimeError(self.quantized_refusal("backward"))
        spec, plan = self.spec, saved.plan
        dyp = plan.pack(dy)
        dx = np.empty((plan.N, spec.input_size), dtype=spec.dtype)
        dh0, dc0 = self._new_states(plan.B)
        seq = plan.seq if saved.rmasks is None else plan.seq_rd
        self.claim()
        ws = self.workspace()
        try:
            if self.last_saved() is not saved:
                raise RuntimeError(f"{self.name}: another forward ran during backward's "
                                   "argument checks")
            seq.backward(dx.reshape(-1), dh0.reshape(-1), _flat(dc0), self.flat_grad,
                         saved.reserve, dyp.reshape(-1), _flat(plan.to_sorted(dhn)),
                         _flat(plan.to_sorted(dcn)), saved.x.reshape(-1), _flat(saved.masks),
                         self.flat, ws.get("scratch", seq.scratch_size(True)),
                         _flat(saved.rmasks))
        finally:
            self.give_back(ws)
            self._training.release()
        return plan.unpack(dx, spec.input_size), plan.from_sorted(dh0), \
            None if dc0 is None else plan.from_sorted(dc0)

    def kept_saved(self):
        """What the last training forward saved, as a record of that forward alone (for
        lstmc.nn's tape, which replays several forwards of one module): the reserve is a
        buffer of a workspace that the next call overwrites, so the record owns a copy of
        it (the packed input and dropout masks are the forward's own arrays already)."""
        saved = self.last_saved()
        return None if saved is None else saved._replace(reserve=saved.reserve.copy())

    def restore_saved(self, saved):
        """Makes `saved` (from kept_saved) the forward that the next backward reads."""
        self.saved = saved

    def quantized_refusal(self, what):
        return self.quant.refusal(what)

    def _new_states(self, B):
        """Empty h (L*D, B, H_out) and c (L*D, B, H) (None without c)."""
        spec = self.spec
        LD = spec.num_layers * spec.directions
        h = np.empty((LD, B, spec.hout), dtype=spec.dtype)
        return h, np.empty((LD, B, spec.hidden_size), dtype=spec.dtype) if spec.has_c else None


class Stepper:
    """One eval-mode timestep of B rows through all layers of a unidirectional problem, on an
    engine's weights: the T = 1 Seq and its sizes. A stream state keeps its own buffers
    (scratch_size, out_shape); a cell calls run, which takes a workspace of the engine."""

    __slots__ = ("batch_size", "seq", "scratch_size", "y_shape", "_engine", "_out_shape",
                 "_has_c", "_dtype")

    def __init__(self, engine, B):
        spec = engine.spec
        self.batch_size = B
        self.seq = spec.seq(1, B, np.ones(B, dtype=np.intc))
        self.scratch_size = self.seq.scratch_size_q(engine.quant.dtype) \
            if engine.quant is not None else self.seq.scratch_size(False)
        self.y_shape = (B, spec.hout)   # the last layer's output
        self._engine = engine
        self._has_c = spec.has_c
        self._dtype = spec.dtype
        L = spec.num_layers
        # run's h' and c' share one array, so they need one width: no projection
        self._out_shape = None if spec.proj else \
            (2 if spec.has_c else 1,) + ((L,) if L > 1 else ()) + (B, spec.hout)

    def run(self, x, h0, c0):
        """x (B, I), h0/c0 L x B x H elements or None (zeros), C-contiguous arrays of the
        dtype -> new arrays h', c' (L, B, H), (B, H) for one layer (views of one array, so
        without projection; c' None without c). Threads may run one Stepper at once."""
        engine = self._engine
        if self._out_shape is None:
            raise NotImplementedError("Stepper.run: h and c of different widths (a projection)")
        out = np.empty(self._out_shape, dtype=self._dtype)
        hn = out[0]
        cn = out[1] if self._has_c else None
        ws = engine.workspace()
        try:
            # y repeats the last layer's h' (the kernels write both): workspace, not output
            y = ws.get("y", self.y_shape[0] * self.y_shape[1])
            q = engine.quant
            if q is not None:
                q.check_state(h0, "h")
                self.seq.forward_q(y, hn, cn, x, h0, c0, engine.flat, q.buffer, q.dtype,
                                   ws.get("scratch", self.scratch_size))
            else:
                self.seq.forward(y, hn, cn, None, x, h0, c0, None, engine.flat,
                                 ws.get("scratch", self.scratch_size), engine.weights.get())
        finally:
            engine.give_back(ws)
        return hn, cn
