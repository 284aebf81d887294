"""The int8 or bfloat16 state of a quantized module (`lstmc.quantize`), one class per kind
of module: `QuantizedLinear` (nn.Linear), `QuantizedEmbedding` (nn.Embedding) and, beside
the engine that runs it, `lstmc.nn._engine.QuantizedWeights` (LSTM / GRU / RNN). What the
three share lives here: `Int8Rows` and `Bf16Rows`, the canonical forms of quantized
weights, and `QuantizedState`, which freezes the module's float parameters, gives
`state_dict` the stored form and loads one.

The stored form (`Module.state_dict`, `lstmc.save`, the Keras face's .lstmc files) of a
quantized matrix parameter `name`: in int8, two arrays, `name`, int8 of the parameter's
shape within [-127, 127], and `name_scale`, float32, one per row (w[r] ~ name_scale[r] *
name[r]); in bf16, `name` alone, uint16 of the parameter's shape holding the bfloat16 bits.
Every other parameter (biases) is its float32 array. The arrays alone rebuild the state
(`QuantizedState.load`), without the float weights it came from; the module's dtype
(`Module.quantized`) names the form.
"""
from typing import NamedTuple

import numpy as np

from lstmc import _core
from lstmc.nn.module import to_numpy

SCALE = "_scale"     # the suffix of a quantized matrix's row scales in the stored form


class Int8Rows(NamedTuple):
    """Symmetric int8 rows: ``w[r] ~= scale[r] * q[r]`` (lstmc.reference.quantize_int8).

    q : int8 ndarray (N, K), within [-127, 127]
    scale : float32 ndarray (N,), >= 0 (NaN for a row that held a NaN or an infinity)
    """
    q: np.ndarray
    scale: np.ndarray

    @classmethod
    def quantize(cls, w):
        """float32 rows (N, K) quantized by the kernels' quantizer (_core.q8_quantize, the
        arithmetic of reference.quantize_int8)."""
        w = np.ascontiguousarray(w, dtype=np.float32)
        u, scale = _core.q8_quantize(w)
        # the kernels hold q + 128 in uint8, padded to a multiple of 4 columns
        q = (u[:, :w.shape[1]].astype(np.int16) - 128).astype(np.int8)
        return cls(q, scale)

    @classmethod
    def stored(cls, q, scale, shape, name):
        """Rows from a stored form (a state_dict, a file), checked and copied.

        Parameters
        ----------
        q : array (N, K), int8 within [-127, 127]
        scale : array (N,), float32, not negative
        shape : (N, K) the parameter's shape
        name : the array's name, as errors name it (its scale is `name` + "_scale")
        """
        q, scale = to_numpy(q), to_numpy(scale)
        for a, label, dtype, want in ((q, name, np.int8, tuple(shape)),
                                      (scale, name + SCALE, np.float32, tuple(shape[:1]))):
            if a.dtype != dtype:
                raise TypeError(f"{label} must be a {np.dtype(dtype)} array (the int8 stored "
                                f"form), got dtype {a.dtype}")
            if a.shape != want:
                raise ValueError(f"{label} must have shape {want}, got {a.shape}")
        if (q == -128).any():
            raise ValueError(f"{name} holds -128: int8 weights lie within [-127, 127] "
                             "(symmetric), so the array is damaged or not lstmc's")
        if (scale < 0).any():
            raise ValueError(f"{name + SCALE} holds negative scales: they are max |row| / 127")
        return cls(np.array(q), np.array(scale))

    @classmethod
    def from_arrays(cls, arrays, shape, name):
        """Rows from a stored form's arrays (suffix -> array)."""
        if SCALE not in arrays:
            raise ValueError(f"load_state_dict: {name + SCALE} is missing (the row scales of "
                             f"the int8 {name})")
        return cls.stored(arrays[""], arrays[SCALE], shape, name)

    SUFFIXES = ("", SCALE)

    def arrays(self):
        """[(suffix, array)] of the stored form (copies)."""
        return [("", self.q.copy()), (SCALE, self.scale.copy())]

    def dequantised(self):
        """float32 (N, K): q * scale, one rounding per element."""
        return self.q.astype(np.float32) * self.scale[:, None]

    def packed(self, H, G):
        """The rows (G H of them) packed for the int8 kernels (_core.q8_pack)."""
        return _core.q8_pack(self.q, self.scale, H, G)

    def rows_of(self, idx):
        """float32 rows idx (any integer array) -> idx.shape + (K,)"""
        return self.q[idx].astype(np.float32) * self.scale[idx][..., None]


class Bf16Rows(NamedTuple):
    """Rows rounded to bfloat16 (lstmc.reference.bf16_round), held as their bits.

    bits : uint16 ndarray (N, K): the high halves of the float32 values
    """
    bits: np.ndarray

    @classmethod
    def quantize(cls, w):
        """float32 rows (N, K) rounded by the kernels' rounding (_core.bf16_round)."""
        w = np.ascontiguousarray(w, dtype=np.float32)
        return cls(np.ascontiguousarray(_core.bf16_round(w)[:, :w.shape[1]]))

    SUFFIXES = ("",)

    @classmethod
    def from_arrays(cls, arrays, shape, name):
        """Rows from a stored form's arrays (suffix -> array), checked and copied."""
        bits = to_numpy(arrays[""])
        if bits.dtype != np.uint16:
            raise TypeError(f"{name} must be a uint16 array (the bfloat16 bits of the bf16 "
                            f"stored form), got dtype {bits.dtype}")
        if bits.shape != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {bits.shape}")
        return cls(np.array(bits))

    def arrays(self):
        return [("", self.bits.copy())]

    def dequantised(self):
        """float32 (N, K): the bfloat16 values, exactly."""
        return (self.bits.astype(np.uint32) << 16).view(np.float32)

    def packed(self, H, G):
        """The rows (G H of them) packed for the bf16 kernels (_core.bf16_pack)."""
        return _core.bf16_pack(self.bits, H, G)

    def rows_of(self, idx):
        return (self.bits[idx].astype(np.uint32) << 16).view(np.float32)


ROWS = {"int8": Int8Rows, "bf16": Bf16Rows}   # the canonical form of each dtype


class QuantizedState:
    """What the quantized state of every kind of module shares.

    `rows` maps the module's own names of its quantized matrices to their Int8Rows; its
    other parameters (biases) stay in its float32 flat buffer. While attached, every
    parameter of the module is read-only for good (a write - an optimizer's step,
    load_state_dict of float weights, set_weights - raises RuntimeError instead of leaving
    the int8 copy stale) and its float matrices hold the dequantised values, which are what
    the int8 model computes with. Subclasses build what their kernels read from `rows` in
    `_repack`.
    """

    def __init__(self, module, rows, dtype="int8"):
        """module: the lstmc.nn module quantized; rows: own parameter name -> Int8Rows or
        Bf16Rows (of dtype "int8" or "bf16")."""
        self.module = module
        self.dtype = dtype
        self.rows = dict(rows)
        self._repack()

    @classmethod
    def of(cls, module, dtype="int8"):
        """The `dtype` state of a float32 module's current weights."""
        return cls(module, {name: ROWS[dtype].quantize(module._parameters[name].data)
                            for name in cls.quantized_names(module)}, dtype)

    @staticmethod
    def quantized_names(module):
        """The module's own names of the matrices stored in int8."""
        raise NotImplementedError

    def _repack(self):
        """Builds what the kernels read from `rows`."""

    @property
    def name(self):
        return f"{type(self.module).__name__}({self.module.extra_repr()})"

    def refusal(self, what):
        """The message of what a quantized module refuses (RuntimeError)."""
        return (f"{self.name} is quantized ({self.dtype}): inference only, so no {what}; "
                "train the float model and quantize it again")

    # ---- the module's parameters --------------------------------------------------------
    def attach(self):
        """Makes this the module's int8 state: writes the dequantised matrices into its float
        parameters, then freezes them and links each one here (Parameter._quantized), which
        is how state_dict and load_state_dict find the stored form whatever a wrapper (a
        cell, a Keras layer) calls the parameter. Again after a copy (Module.__setstate__)."""
        m = self.module
        message = self.refusal("writing its parameters")

        def refuse():
            raise RuntimeError(message)
        m._flat.flags.writeable = True   # the base first: views follow it
        for key, p in m._parameters.items():
            p.data.flags.writeable = True
            if key in self.rows:
                p.data[...] = self.rows[key].dequantised()
            p._hold(refuse)
            p._quantized = (self, key)
        m._flat.flags.writeable = False

    def stored_form(self, key):
        """[(suffix, array)] of the parameter `key` in the stored form (copies)."""
        if key in self.rows:
            return self.rows[key].arrays()
        return [("", self.module._parameters[key].data.copy())]

    def suffixes(self, key):
        return ROWS[self.dtype].SUFFIXES if key in self.rows else ("",)

    def checked(self, key, arrays, where):
        """The stored form of parameter `key` -> what `load` takes, checked.

        arrays: suffix -> array as given (a missing suffix is absent); where: the parameter's
        name in the caller's state_dict, as errors name it."""
        p = self.module._parameters[key]
        value = to_numpy(arrays[""])
        if key in self.rows:
            if value.dtype.kind == "f":
                raise RuntimeError(self.refusal(f"loading float weights ({where} is "
                                                f"{value.dtype}, not its {self.dtype} stored "
                                                "form)"))
            return ROWS[self.dtype].from_arrays(arrays, p.shape, where)
        if value.dtype != np.float32 or value.shape != p.shape:
            raise ValueError(f"load_state_dict: {where} of a quantized module must be a "
                             f"float32 array of shape {p.shape}, got {value.dtype} "
                             f"{value.shape}")
        return value

    def load(self, values):
        """Takes checked stored forms (key -> Int8Rows or float32 array; keys not given keep
        their values), rebuilds what the kernels read and re-attaches."""
        rows = dict(self.rows)
        rows.update((k, v) for k, v in values.items() if k in rows)
        m = self.module
        m._flat.flags.writeable = True
        for key, value in values.items():
            if key not in rows:
                p = m._parameters[key]
                p.data.flags.writeable = True
                p.data[...] = value
        self.rows = rows
        self._repack()
        self.attach()


class QuantizedLinear(QuantizedState):
    """nn.Linear in int8: weight (out, in) symmetric int8 per output row, packed for the
    int8 product (_core.q8_pack with G = 1, H = out_features); each input row quantized at
    call time (_core.q8_quantize); exact int32 sums dequantised ((sum * x_scale) *
    w_scale, reference.int8_product's arithmetic); the bias added in float32. In bf16 the
    weight and each input row rounded to bfloat16, float32 sums (reference.bf16_product)."""

    @staticmethod
    def quantized_names(module):
        return ("weight",)

    def _repack(self):
        w = self.rows["weight"]
        self.shape = w[0].shape
        packed = w.packed(self.shape[0], 1)
        packed.flags.writeable = False
        self.packed = packed

    def product(self, x):
        """x float32 (n, in_features) -> x W^T (n, out_features) float32, without the bias."""
        out, K = self.shape
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.dtype == "bf16":
            return _core.bf16_product(_core.bf16_round(x), self.packed, K, out, 1)
        xq, x_scale = _core.q8_quantize(x)
        return _core.q8_product(xq, x_scale, self.packed, K, out, 1)


class QuantizedEmbedding(QuantizedState):
    """nn.Embedding in int8: the table (num_embeddings, dim) symmetric int8 per row, one
    float32 scale per row (or rounded to bfloat16); a lookup dequantises the rows it
    gathers."""

    @staticmethod
    def quantized_names(module):
        return ("weight",)

    def lookup(self, idx):
        """idx: integer array (any shape, checked by the module) -> float32 idx.shape + (dim,)."""
        return self.rows["weight"].rows_of(idx)
