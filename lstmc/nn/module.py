"""`Module` and `Parameter`: the PyTorch-style containers of lstmc.nn.

A Parameter is a pair of numpy arrays of one shape: `data` (the value) and `grad` (its
gradient). Modules keep them as views into one flat buffer each, so writing `p.data[...]`
changes the module, and an optimizer can update all of a module's parameters in one pass.

A module may keep a copy derived from its parameters: the recurrent modules in eval mode keep
their weights packed for the kernels. While such a copy exists `data` is read-only, and code
that writes parameters calls `p.release()` first (the rule is stated once, in
lstmc.nn._engine.PackedWeights).

copy.deepcopy and pickle give a module whose parameters are views of its own flat buffer
(Module.__getstate__ records where each one sits); a copy starts without derived copies.
"""
import threading
from collections import OrderedDict

import numpy as np


class _Recording(threading.local):
    """The tape recording in this thread, if any (lstmc.nn._tape sets and clears it)."""
    tape = None   # a class default: reading it costs 40 ns where getattr(local, .., None) took 360


_recording = _Recording()
# Tapes open in the process (lstmc.nn._tape counts them under a lock): 0 lets a call skip
# the thread-local read. A thread sees its own increment before its own calls.
_tapes_open = 0


class Parameter:
    """A named tensor of a module: `data` and `grad`, numpy arrays of the same shape."""

    __slots__ = ("data", "grad", "_release", "_quantized")

    def __init__(self, data, grad=None):
        self.data = data
        self.grad = np.zeros_like(data) if grad is None else grad
        self._release = None   # set by _hold while a module keeps a copy derived from data
        # (state, key) while a quantized module's state (lstmc.nn._quantized.QuantizedState)
        # holds this parameter: its stored form is the state's, under the key `key`
        self._quantized = None

    def release(self):
        """Makes `data` writable: a module that keeps a copy derived from it (a recurrent
        module's packed eval-mode weights) drops the copy. Call before writing `data` (see
        lstmc.nn._engine.PackedWeights); the optimizers and load_state_dict do."""
        if self._release is not None:
            self._release()

    def _hold(self, release):
        """For the owner of a copy derived from `data`: `release` (a callable that drops the
        copy) makes `data` read-only until it is called; None makes it writable again."""
        self.data.flags.writeable = release is None
        self._release = release

    def __getstate__(self):   # copies start without a module's derived copy to release
        return self.data, self.grad

    def __setstate__(self, state):
        self.data, self.grad = state
        self._release = self._quantized = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


def to_numpy(value):
    """numpy view of an array-like, including CPU torch tensors (detached)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class Module:
    """Base class of lstmc.nn modules, after torch.nn.Module.

    Subclasses assign Parameters and child Modules as attributes (they are registered in
    assignment order) and implement `forward` and `backward` (or subclass
    lstmc.nn.Composite and implement `forward` alone). Calling the module calls `forward`
    (under a tape, lstmc.nn.tape, a module with a `_tape_kind` is recorded instead).
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("call Module.__init__() before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    # How a tape (lstmc.nn.tape) records a call of this module: None, through its forward
    # (the calls and operations inside it are recorded); a kind named in lstmc.nn._tape's
    # rules, as one step whose backward is the module's own (`_saved_for_backward` and
    # `_restore_saved` then keep each call's saved state apart).
    _tape_kind = None

    def __call__(self, *args, **kwargs):
        if _tapes_open and self._tape_kind is not None:
            tape = _recording.tape
            if tape is not None:
                return tape.call(self, args, kwargs)
        return self.forward(*args, **kwargs)

    def _saved_for_backward(self):
        """What `backward` reads of the last forward, as an object of this call alone
        (modules with a `_tape_kind`)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no per-call saved state")

    def _restore_saved(self, saved):
        """Makes `saved` (from `_saved_for_backward`) what the next `backward` reads."""
        raise NotImplementedError(f"{type(self).__name__} keeps no per-call saved state")

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def _inner_modules(self):
        """The lstmc.nn modules this one runs but does not register as children (their
        parameters are registered here, under names of its own): a cell's sequence module,
        a Keras layer's. lstmc.quantize reaches them through this."""
        return ()

    @property
    def quantized(self):
        """The dtype name of this module's quantized weights ("int8" or "bf16";
        lstmc.quantize), or None for a float module."""
        state = self.__dict__.get("_quant")
        return None if state is None else state.dtype

    def refuse_if_quantized(self, what):
        """RuntimeError naming `what` (training mode, backward) if this module is quantized:
        quantized modules run inference only."""
        state = self.__dict__.get("_quant")
        if state is not None:
            raise RuntimeError(state.refusal(what))

    def backward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    # ---- traversal ----------------------------------------------------------------------
    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix="", recurse=True):
        """Yields (name, Parameter), own parameters first, then the children's, dotted."""
        for name, p in self._parameters.items():
            yield (f"{prefix}.{name}" if prefix else name), p
        if recurse:
            for cname, child in self._modules.items():
                yield from child.named_parameters(f"{prefix}.{cname}" if prefix else cname)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    # ---- modes and gradients ------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (dropout on, forward saves what backward needs). Returns self.
        RuntimeError, before any mode changes, if a module of the tree is quantized."""
        if mode:
            for _, m in self.named_modules():
                m.refuse_if_quantized("training mode")
        object.__setattr__(self, "training", bool(mode))
        for child in self._modules.values():
            child.train(mode)
        return self

    def eval(self):
        """Inference mode: forward stores nothing for backward. Returns self."""
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad[...] = 0

    # ---- state --------------------------------------------------------------------------
    def state_dict(self):
        """OrderedDict name -> copy of the parameter's array (PyTorch names and shapes).

        A quantized module's (lstmc.quantize) parameters are in their stored form
        (lstmc.nn._quantized): a matrix `name` as `name` (int8, its shape) and `name_scale`
        (float32, one per row), or in bf16 as `name` (uint16 bfloat16 bits); biases as
        float32 arrays."""
        out = OrderedDict()
        for name, p in self.named_parameters():
            if p._quantized is None:
                out[name] = p.data.copy()
            else:
                state, key = p._quantized
                for suffix, value in state.stored_form(key):
                    out[name + suffix] = value
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copies arrays (numpy, CPU torch tensors, anything np.asarray takes) into the
        parameters of the same name. With strict, missing or unexpected names are an error;
        a shape mismatch always is.

        A quantized module takes its stored form (what its state_dict gives: int8 matrices
        with their float32 row scales or bf16 bits, float32 biases; dtypes, shapes and the
        int8 range checked, the error naming the array) and runs the loaded weights; float
        weights for it raise RuntimeError (load them into the float model and quantize)."""
        params = OrderedDict(self.named_parameters())
        keys = OrderedDict()   # state_dict key -> parameter name
        for name, p in params.items():
            for suffix in ("",) if p._quantized is None else \
                    p._quantized[0].suffixes(p._quantized[1]):
                keys[name + suffix] = name
        values, quantized = {}, {}   # all checked before anything is written
        for name, p in params.items():
            if name not in state_dict:
                continue
            if p._quantized is not None:
                state, key = p._quantized
                given = {s: state_dict[name + s] for s in state.suffixes(key)
                         if name + s in state_dict}
                quantized.setdefault(id(state), (state, {}))[1][key] = \
                    state.checked(key, given, name)
                continue
            value = to_numpy(state_dict[name])
            if value.shape != p.shape:
                raise ValueError(f"load_state_dict: {name} must have shape {p.shape}, got "
                                 f"{value.shape}")
            values[name] = value
        missing = [k for k in keys if k not in state_dict]
        unexpected = [k for k in state_dict if k not in keys]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys "
                             f"{unexpected}")
        for name, value in values.items():
            params[name].release()   # before writing: see lstmc.nn._engine.PackedWeights
            params[name].data[...] = value
        for state, loaded in quantized.values():
            state.load(loaded)
        return missing, unexpected

    # ---- copies (copy.deepcopy, pickle) --------------------------------------------------
    def __getstate__(self):
        """The module's attributes, plus where each parameter sits in the flat buffers: numpy
        copies a view as a new array, so without this a deep copy's (or an unpickled
        module's) parameters would no longer be views of its own flat buffer, and what an
        optimizer writes would not reach what the kernels read."""
        state = self.__dict__.copy()
        flat, flat_grad = state.get("_flat"), state.get("_flat_grad")
        if flat is not None:
            state["_views"] = {name: (_offset_in(p.data, flat), _offset_in(p.grad, flat_grad))
                               for name, p in self._parameters.items()}
        return state

    def __copy__(self):
        """copy.copy: a module sharing this one's parameters, buffers and children."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __setstate__(self, state):
        views = state.pop("_views", None)
        for name in ("_flat", "_flat_grad"):   # an unpickled array may sit on pickle's bytes
            a = state.get(name)
            if a is not None and (a.base is not None or not a.flags.writeable):
                state[name] = a.copy()   # owning its memory, so the pack can lock/unlock it
        self.__dict__.update(state)
        for name, (at, at_grad) in (views or {}).items():
            p = self._parameters[name]
            if at is not None:
                p.data = self._flat[at:at + p.data.size].reshape(p.data.shape)
            if at_grad is not None:
                p.grad = self._flat_grad[at_grad:at_grad + p.grad.size].reshape(p.grad.shape)
        quantized = self.__dict__.get("_quant")
        if quantized is not None:   # a copy's parameters are new: freeze and link them
            quantized.attach()

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self):
        return ""


def _offset_in(a, base):
    """Element offset of `a` in the 1-d `base` if `a` is a C-contiguous view of it, else None."""
    if base is None or a.dtype != base.dtype or not a.flags.c_contiguous \
            or not np.shares_memory(a, base):
        return None
    return (a.__array_interface__["data"][0] - base.__array_interface__["data"][0]) \
        // base.itemsize
