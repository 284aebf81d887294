"""The tape: `backward` for models written as a `forward` alone.

While a `Tape` is open in a thread, every call of an lstmc.nn module that has a backward of
its own (Linear, Embedding, Dropout, the activations, LSTM / GRU / RNN, the cells, the
losses) and every operation of lstmc.nn.functional is recorded as one node: its inputs, its
outputs and a closure that backpropagates through it. Results are `Tensor`s, numpy arrays
with an identity on the tape. `Tape.backward` replays the nodes in reverse, summing the
gradients of a tensor used more than once, and the modules add their parameters' gradients
to `.grad` as their own backward always does. Other modules (Sequential, a user's Module
subclass, `Composite`) are not nodes: their forward runs, and what it calls is recorded.

Each module keeps one call's saved state in its attributes. A node keeps its call's state
apart (`Module._saved_for_backward` right after the call, `_restore_saved` before its
backward), so a module called many times in one forward (a decoder stepping T times, an
embedding shared by encoder and decoder) backpropagates through every call. A recurrent
module's saved state holds a copy of its kernels' reserve, which sits in a workspace that
the next call overwrites (lstmc.nn._engine.Engine.kept_saved): one copy of the reserve per
call, and every call's saved state held until the replay, as autograd holds its graph. The
alternative, running each forward again before its backward (checkpointing), would cost a
second forward of every recurrent call and would need the dropout masks drawn again from
the same generator state; keeping the state costs a copy.
"""
import inspect
import threading

import numpy as np

from lstmc.nn import module as _module
from lstmc.nn.module import Module

__all__ = ["Tape", "Tensor", "tape", "Composite"]

_COUNT_LOCK = threading.Lock()   # guards lstmc.nn.module._tapes_open


class Tensor:
    """A numpy array recorded on a tape: what recorded module calls and operations return.

    `data` is the array (do not write it: backward reads what forward saw). Operations:
    indexing, + - * / ** (by a number), @, comparisons (plain bool arrays, no gradient),
    and the methods below; numpy's own functions on tensors run the same operations where
    lstmc.nn.functional has them (np.concatenate, np.stack, np.tanh, np.exp, np.einsum,
    ...) and raise TypeError for the others rather than drop the gradient. `grad` is set
    by the replay on tensors the tape watches (`Tape.watch`)."""

    __slots__ = ("data", "grad", "_tape", "_slot")
    __hash__ = None   # == is elementwise, as numpy's

    def __init__(self, data, tape, slot):
        self.data, self.grad, self._tape, self._slot = data, None, tape, slot

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    T = property(lambda self: F.transpose(self))

    def __len__(self):
        return len(self.data)

    def __iter__(self):
        return (self[i] for i in range(len(self.data)))

    def __repr__(self):
        return f"Tensor({self.data!r})"

    def numpy(self):
        """The array, outside the tape: no gradient flows through what is done with it."""
        return self.data

    def item(self):
        return self.data.item()

    def __float__(self):
        return float(self.data)

    def __bool__(self):
        return bool(self.data)

    def __array__(self, dtype=None, copy=None):
        raise TypeError("a tape Tensor is not converted to a numpy array implicitly (the "
                        "gradient would stop there without a word): use the tape's "
                        "operations (lstmc.nn.functional), or .numpy() for the value")

    def backward(self, grad=None):
        """Replays this tensor's tape from it (Tape.backward)."""
        self._tape.backward(self, grad)

    # ---- operations (lstmc.nn.functional) ----------------------------------------------
    def __getitem__(self, key):
        return F.getitem(self, key)

    def __add__(self, other):
        return F.add(self, other)

    def __radd__(self, other):
        return F.add(other, self)

    def __sub__(self, other):
        return F.subtract(self, other)

    def __rsub__(self, other):
        return F.subtract(other, self)

    def __mul__(self, other):
        return F.multiply(self, other)

    def __rmul__(self, other):
        return F.multiply(other, self)

    def __truediv__(self, other):
        return F.divide(self, other)

    def __rtruediv__(self, other):
        return F.divide(other, self)

    def __neg__(self):
        return F.negative(self)

    def __pow__(self, exponent):
        return F.power(self, exponent)

    def __matmul__(self, other):
        return F.matmul(self, other)

    def __rmatmul__(self, other):
        return F.matmul(other, self)

    def __lt__(self, other):
        return self.data < _value(other)

    def __le__(self, other):
        return self.data <= _value(other)

    def __gt__(self, other):
        return self.data > _value(other)

    def __ge__(self, other):
        return self.data >= _value(other)

    def __eq__(self, other):
        return self.data == _value(other)

    def __ne__(self, other):
        return self.data != _value(other)

    def tanh(self):
        return F.tanh(self)

    def sigmoid(self):
        return F.sigmoid(self)

    def relu(self):
        return F.relu(self)

    def exp(self):
        return F.exp(self)

    def log(self):
        return F.log(self)

    def softmax(self, axis=-1, mask=None):
        return F.softmax(self, axis, mask)

    def sum(self, axis=None, keepdims=False):
        return F.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return F.mean(self, axis, keepdims)

    def transpose(self, *axes):
        return F.transpose(self, axes[0] if len(axes) == 1 and not isinstance(axes[0], int)
                           else (axes or None))

    def swapaxes(self, axis1, axis2):
        return F.swapaxes(self, axis1, axis2)

    def reshape(self, *shape):
        return F.reshape(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int)
                         else shape)

    # ---- numpy's functions on tensors ----------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        op = F.UFUNCS.get(ufunc) if method == "__call__" and not kwargs else None
        if op is not None:
            return op(*inputs)
        if method == "__call__" and not kwargs and ufunc in F.NO_GRADIENT_UFUNCS:
            return ufunc(*(_value(v) for v in inputs))
        raise TypeError(f"np.{ufunc.__name__}{'' if method == '__call__' else '.' + method} "
                        "is not an operation of the tape: see lstmc.nn.functional (or use "
                        ".numpy() for a value without gradient)")

    def __array_function__(self, func, types, args, kwargs):
        op = F.FUNCTIONS.get(func)
        if op is None:
            raise TypeError(f"np.{func.__name__} is not an operation of the tape: see "
                            "lstmc.nn.functional (or use .numpy() for a value without "
                            "gradient)")
        return op(*args, **kwargs)


def _value(v):
    """A Tensor's array; anything else as it is."""
    return v.data if isinstance(v, Tensor) else v


def _plain(v):
    """Tensors -> arrays, through tuples and lists."""
    if isinstance(v, Tensor):
        return v.data
    if isinstance(v, (tuple, list)):
        return type(v)(_plain(u) for u in v)
    return v


class _Node:
    __slots__ = ("inputs", "outputs", "backward")

    def __init__(self, inputs, outputs, backward):
        self.inputs = inputs      # one entry per gradient backward returns: Tensor or other
        self.outputs = outputs    # slots of the tensors it made
        self.backward = backward  # list of the outputs' gradients (None: unused) -> list


class Tape:
    """A record of one forward, replayed in reverse by `backward`.

    Use it as a context manager (`with lstmc.nn.tape() as t:`); while it is open in a thread,
    that thread's module calls and operations are recorded on it. One tape at a time per
    thread. The replay runs once and frees what the nodes kept (as torch frees its graph
    after backward); recording again needs a new tape. record=False computes the same
    values and records nothing (for a model whose forward is written with tensors, in eval
    mode).
    """

    def __init__(self, record=True):
        self.record = bool(record)
        self._nodes = []
        self._count = 0        # tensors made so far: each one's slot
        self._watched = []
        self._open = False
        self._replayed = False

    def __enter__(self):
        if _module._recording.tape is not None:
            raise RuntimeError("a tape is already recording in this thread: one tape at a time "
                               "(a Composite called inside it records on it)")
        if self._open or self._replayed or self._count:
            raise RuntimeError("a tape records one forward: open a new one")
        with _COUNT_LOCK:
            _module._tapes_open += 1
        self._open = True
        _module._recording.tape = self
        return self

    def __exit__(self, *exc):
        self._open = False
        _module._recording.tape = None
        with _COUNT_LOCK:
            _module._tapes_open -= 1
        return False

    def __repr__(self):
        return (f"Tape({len(self._nodes)} nodes, {'open' if self._open else 'closed'}"
                f"{', replayed' if self._replayed else ''})")

    # ---- recording -------------------------------------------------------------------------
    def _tensor(self, data):
        t = Tensor(data, self, self._count)
        self._count += 1
        return t

    def watch(self, array):
        """A tensor of `array` (float) whose gradient the replay stores in its `.grad`."""
        self._check_open()
        data = np.asarray(array)
        if data.dtype.kind != "f":
            raise TypeError(f"watch: only floating-point arrays have gradients, got dtype "
                            f"{data.dtype}")
        t = self._tensor(data)
        self._watched.append(t)
        return t

    def _check_open(self):
        if not self._open:
            raise RuntimeError("this tape is closed: operations on its tensors are recorded "
                               "only inside its `with` block (use .numpy() for values)")

    def _record(self, inputs, outputs, backward):
        """Records one node: `inputs` (Tensors where gradients go, anything else where none
        does), the arrays `outputs` it made and `backward`, from the outputs' gradients
        (None for one the loss does not reach) to one gradient per input (None for none).
        Returns the outputs as tensors."""
        self._check_open()
        tensors = [self._tensor(a) for a in outputs]
        if self.record:
            self._nodes.append(_Node(tuple(inputs), tuple(t._slot for t in tensors), backward))
        return tensors

    def call(self, module, args, kwargs):
        """A call of a module with a `_tape_kind`, as one node whose backward is the
        module's own (Module.__call__ comes here while the tape records)."""
        rule = _RULES[module._tape_kind]
        values = _bind(module, args, kwargs)
        plain = [_plain(v) for v in values]
        inputs = rule.inputs(module, values)   # checked before the call runs
        if self.record:
            rule.check(module)
        _module._recording.tape = None   # what the module's own forward calls is its own
        try:
            result = module.forward(*plain)
        finally:
            _module._recording.tape = self
        saved = module._saved_for_backward() if self.record else None
        outputs, rebuild = rule.outputs(result, plain)
        shapes = [(a.shape, a.dtype) for a in outputs]

        def backward(grads):
            module._restore_saved(saved)
            return rule.backward(module, grads, shapes, values)

        return rebuild(self._record(inputs, outputs, backward))

    # ---- replay ---------------------------------------------------------------------------
    def backward(self, tensor, grad=None):
        """Backpropagates from `tensor`: its gradient `grad` (None: 1 for a single element,
        else an array of its shape is required) flows back through every recorded node;
        modules add their parameters' gradients to `.grad` (zero them first, as usual), and
        watched tensors get theirs in `.grad`."""
        self.backward_many([(tensor, grad)])

    def backward_many(self, seeds):
        """backward from several tensors at once: (tensor, gradient or None) pairs."""
        if self._replayed:
            raise RuntimeError("this tape was replayed already: it keeps one forward for one "
                               "backward (record the forward again)")
        if not self.record:
            raise RuntimeError("this tape recorded nothing (record=False; a Composite in eval "
                               "mode): backward needs a forward in training mode")
        grads = [None] * self._count
        for t, g in seeds:
            if not isinstance(t, Tensor) or t._tape is not self:
                raise TypeError(f"backward starts from a Tensor of this tape, got "
                                f"{type(t).__name__}")
            if g is None:
                if t.size != 1:
                    raise ValueError(f"backward from a tensor of shape {t.shape} needs its "
                                     "gradient (an array of that shape)")
                g = np.ones(t.shape, t.dtype)
            _accumulate(grads, t, np.asarray(g), "the gradient given to backward")
        keep = {t._slot for t in self._watched}
        for node in reversed(self._nodes):
            out = [grads[s] for s in node.outputs]
            if all(g is None for g in out):
                continue   # the loss does not depend on this node
            for s in node.outputs:
                if s not in keep:
                    grads[s] = None
            for t, g in zip(node.inputs, node.backward(out)):
                if g is not None and isinstance(t, Tensor):
                    _accumulate(grads, t, g, "a node's gradient")
        for t in self._watched:
            t.grad = grads[t._slot]
        self._nodes = []
        self._replayed = True


def _accumulate(grads, t, g, what):
    if g.shape != t.shape:
        raise ValueError(f"{what} has shape {g.shape}, the tensor {t.shape}")
    g = g.astype(t.dtype, copy=False)
    s = t._slot
    grads[s] = g if grads[s] is None else grads[s] + g


def tape():
    """A new `Tape` (`with lstmc.nn.tape() as t: ...; t.backward(loss)`)."""
    return Tape()


# ---- module calls as nodes --------------------------------------------------------------------
_SIGNATURES = {}   # class -> (names of forward's parameters after self, their defaults)


def _bind(module, args, kwargs):
    """The arguments of module.forward, positionally, defaults filled in (inspect.bind
    once per class: it took 6 of the 20 us a recorded LSTMCell step spends outside it)."""
    cls = type(module)
    sig = _SIGNATURES.get(cls)
    if sig is None:
        params = list(inspect.signature(cls.forward).parameters.values())[1:]
        if any(p.kind not in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY) for p in params):
            raise TypeError(f"{cls.__name__}.forward: a recorded module's forward takes "
                            "named parameters only (no *args, **kwargs or keyword-only)")
        sig = _SIGNATURES[cls] = ([p.name for p in params],
                                  {p.name: p.default for p in params
                                   if p.default is not p.empty})
    names, defaults = sig
    if len(args) > len(names):
        raise TypeError(f"{cls.__name__}.forward takes {len(names)} arguments, got "
                        f"{len(args)}")
    values = list(args)
    for name in names[len(args):]:
        if name in kwargs:
            values.append(kwargs[name])
        elif name in defaults:
            values.append(defaults[name])
        else:
            raise TypeError(f"{cls.__name__}.forward: missing argument {name!r}")
    unknown = set(kwargs) - set(names[len(args):])
    if unknown:
        raise TypeError(f"{cls.__name__}.forward: unexpected or repeated argument(s) "
                        f"{sorted(unknown)}")
    return values


def _state_parts(hx):
    """An initial state as given (None, an array, or a pair) -> its parts, in order."""
    if hx is None:
        return []
    return list(hx) if isinstance(hx, (tuple, list)) else [hx]


def _zeros(g, shape):
    return np.zeros(*shape) if g is None else g


class _Unary:
    """forward(x) -> y, backward(dy) -> dx (Linear, Embedding, Dropout, activations)."""

    @staticmethod
    def check(module):
        module.refuse_if_quantized("backward")

    @staticmethod
    def inputs(module, values):
        return [values[0]]

    @staticmethod
    def outputs(result, plain):
        return [result], lambda ts: ts[0]

    @staticmethod
    def backward(module, grads, shapes, values):
        return [module.backward(grads[0])]


class _Recurrent:
    """What sequence modules and cells share: the training-mode check, and the state's
    parts (h, or h and c) as inputs and as gradients."""

    @staticmethod
    def check(module):
        module.refuse_if_quantized("backward")
        if not module.training:
            raise RuntimeError(f"{type(module).__name__} is in eval mode, whose forward saves "
                               "nothing for backward: a tape records recurrent modules in "
                               "training mode (module.train())")

    @staticmethod
    def inputs(module, values):
        return [values[0]] + _state_parts(values[1])

    @staticmethod
    def state_grads(values, dhx):
        """dhx, shaped as the module's backward returns it -> one gradient per state part
        given."""
        hx = values[1]
        if hx is None:
            return []
        return list(dhx) if isinstance(hx, (tuple, list)) else [dhx]


class _Sequence(_Recurrent):
    """forward(x, hx, lengths) -> (out, state); backward(dout, dstate) -> (dx, dhx)
    (LSTM, GRU, RNN)."""

    @staticmethod
    def outputs(result, plain):
        out, state = result
        if isinstance(state, tuple):
            return [out, *state], lambda ts: (ts[0], tuple(ts[1:]))
        return [out, state], lambda ts: (ts[0], ts[1])

    @classmethod
    def backward(cls, module, grads, shapes, values):
        dstate = tuple(grads[1:]) if len(grads) > 2 else grads[1]
        dx, dhx = module.backward(_zeros(grads[0], shapes[0]), dstate)
        return [dx] + cls.state_grads(values, dhx)


class _Cell(_Recurrent):
    """forward(x, hx) -> state (h, or (h, c)); backward(*dstate) -> (dx, dhx)."""

    @staticmethod
    def outputs(result, plain):
        if isinstance(result, tuple):
            return list(result), tuple
        return [result], lambda ts: ts[0]

    @classmethod
    def backward(cls, module, grads, shapes, values):
        dx, dhx = module.backward(_zeros(grads[0], shapes[0]), *grads[1:])
        return [dx] + cls.state_grads(values, dhx)


class _Loss:
    """forward(pred, target) -> loss; backward(grad) -> dpred. The loss is a tensor (of
    pred's dtype; 0-d for 'mean' and 'sum')."""

    @staticmethod
    def check(module):
        pass

    @staticmethod
    def inputs(module, values):
        if isinstance(values[1], Tensor):
            raise TypeError(f"{type(module).__name__}: the target is a tape Tensor, but "
                            "gradients do not flow into a loss's target: pass its .numpy()")
        return [values[0]]

    @staticmethod
    def outputs(result, plain):
        pred = np.asarray(plain[0])
        dtype = pred.dtype if pred.dtype in (np.float32, np.float64) else np.float32
        return [np.asarray(result, dtype=dtype)], lambda ts: ts[0]

    @staticmethod
    def backward(module, grads, shapes, values):
        return [module.backward(grads[0])]


_RULES = {"unary": _Unary, "sequence": _Sequence, "cell": _Cell, "loss": _Loss}


# ---- Composite ----------------------------------------------------------------------------------
def _watch_floats(tape, v):
    """Float arrays of a call's arguments -> watched tensors (through tuples and lists)."""
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return tape.watch(v)
    if isinstance(v, (tuple, list)):
        return type(v)(_watch_floats(tape, u) for u in v)
    return v


def _grads_of(v):
    """The gradients of watched tensors, shaped as the arguments were."""
    if isinstance(v, Tensor):
        return v.grad if v.grad is not None else np.zeros(v.shape, v.dtype)
    if isinstance(v, (tuple, list)):
        return type(v)(_grads_of(u) for u in v)
    return None


def _flat_tensors(v, into):
    """The tensors of a forward's result, in order (through tuples, lists and dicts)."""
    if isinstance(v, Tensor):
        into.append(v)
    elif isinstance(v, (tuple, list)):
        for u in v:
            _flat_tensors(u, into)
    elif isinstance(v, dict):
        for u in v.values():
            _flat_tensors(u, into)
    return into


def _to_numpy(v):
    if isinstance(v, Tensor):
        return v.data
    if isinstance(v, (tuple, list)):
        return type(v)(_to_numpy(u) for u in v)
    if isinstance(v, dict):
        return {k: _to_numpy(u) for k, u in v.items()}
    return v


class Composite(Module):
    """A Module whose `backward` comes from its `forward`: write `forward` with module calls
    and tensor operations (lstmc.nn.functional, numpy's functions, indexing, arithmetic),
    as for torch.nn.Module, and call `backward` as for any lstmc.nn module.

    A call records its forward on a tape of its own (in training mode; in eval mode it
    records nothing) and returns numpy arrays, shaped as `forward` returns its tensors.
    Inside `forward`, the float array arguments are tensors (integer ones, such as token
    ids and lengths, stay arrays). `backward(*grads)` takes one gradient per output of the
    last forward (the structure of its result; None for an output the loss does not
    reach), adds every parameter's gradient to `.grad` and returns the gradient of the
    positional arguments (one array, or a tuple for several: None where an argument is not
    a float array). Called inside a tape (`lstmc.nn.tape()`), or from another Composite's
    forward, it records on that tape and returns tensors instead.
    """

    def __call__(self, *args, **kwargs):
        if _module._recording.tape is not None:
            return self.forward(*args, **kwargs)
        tape = Tape(record=self.training)
        object.__setattr__(self, "_last", None)   # the previous forward's tape is let go
        with tape:
            args = tuple(_watch_floats(tape, a) for a in args)
            kwargs = {k: _watch_floats(tape, v) for k, v in kwargs.items()}
            result = self.forward(*args, **kwargs)
        object.__setattr__(self, "_last", (tape, args, result) if tape.record else None)
        return _to_numpy(result)

    def backward(self, *grads):
        last = self.__dict__.get("_last")
        if last is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a training-mode forward "
                               "first (an eval-mode forward records nothing; backward runs "
                               "once per forward)")
        tape, args, result = last
        object.__setattr__(self, "_last", None)
        outputs = _flat_tensors(result, [])
        if isinstance(result, (tuple, list)):   # backward(d_first, d_second, ...)
            given = _flat_grads(tuple(grads), tuple(result))
        elif len(grads) == 1:
            given = _flat_grads(grads[0], result)
        else:
            raise ValueError(f"{type(self).__name__}.backward takes one gradient (forward "
                             f"returned one output), got {len(grads)}")
        tape.backward_many([(t, g) for t, g in zip(outputs, given) if g is not None])
        out = tuple(_grads_of(a) for a in args)
        return out[0] if len(out) == 1 else out

    def __getstate__(self):   # a copy starts without the last forward's tape
        state = super().__getstate__()
        state.pop("_last", None)
        return state


def _flat_grads(grads, result):
    """Gradients given in the structure of a forward's result -> one per tensor of it."""
    if isinstance(result, Tensor):
        return [grads]
    if isinstance(result, (tuple, list)):
        if grads is None:
            grads = (None,) * len(result)
        if not isinstance(grads, (tuple, list)) or len(grads) != len(result):
            raise ValueError(f"backward: gradients must follow forward's result ({len(result)} "
                             f"outputs), got {grads!r:.80}")
        return [g for r, gr in zip(result, grads) for g in _flat_grads(gr, r)]
    if isinstance(result, dict):
        grads = grads or {}
        return [g for k, r in result.items() for g in _flat_grads(grads.get(k), r)]
    return []


from lstmc.nn import functional as F  # noqa: E402  (functional builds on Tensor)
