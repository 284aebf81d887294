"""`lstmc.quantize`: an inference copy of a model whose recurrent weights are int8 or
bfloat16.

The schemes (lstmc/reference.py is their spec, docs/spec.md section 9):
- int8: W_ih and W_hh of each layer and direction symmetric int8 per row (gate unit), packed
  once for the int8 kernels (csrc/quant.c); each layer's input quantized per row (each
  position its own scale) at run time; h with the fixed scale 1/127 (the cells quantized here
  keep |h| <= 1); exact int32 sums, dequantised as the kernels store them.
- bf16: W_ih and W_hh rounded to bfloat16 once, packed for the bf16 kernels
  (csrc/quant_bf16.c); each layer's input and h rounded to bfloat16 at run time; products
  summed in float32.
Biases, activations and the cell state stay float32.
"""
import copy

import numpy as np

from lstmc import _core
from lstmc.nn._engine import QuantizedWeights
from lstmc.nn.module import Module
from lstmc.nn.rnn import _RNNBase

DTYPES = ("int8", "bf16")


def quantize(model, dtype="int8"):
    """An inference copy of `model` with its LSTM, GRU and RNN layers on int8 or bfloat16
    weights.

    Parameters
    ----------
    model : lstmc.nn.Module (an LSTM / GRU / RNN, or a module holding them, such as
        nn.Sequential or your own Module; cells (nn.LSTMCell, ...) hold one too), or an
        lstmc.onnx Session (its LSTM / GRU / RNN nodes with constant weights; other
        operators stay float32)
    dtype : "int8" or "bf16"

    Returns a deep copy in eval mode; `model` is not changed. The copy runs forward, `step`
    and the cells' calls as the float model does, on the int8 or bf16 kernels; `train()` and
    `backward` raise RuntimeError. In this version Linear and Embedding layers stay float32
    and a quantized model is not saved as such (save the float model and quantize after
    loading).

    Raises ValueError for a dtype other than "int8" and "bf16", TypeError for a model that
    is not an lstmc.nn Module, and ValueError naming the layer for one the kernels cannot
    run: float64 layers, LSTM with proj_size, GRU with reset_after=False, non-default
    activations or other cell options (no quantized path yet), for int8 also RNN with ReLU
    (its h is not bounded by 1) and an input wider than 2^17.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    session = _onnx_session(model)
    if session is not None:
        return _quantize_session(session, dtype)
    if not isinstance(model, Module):
        raise TypeError(f"quantize takes an lstmc.nn Module, got {type(model).__name__} "
                        "(the Keras face and ONNX sessions come later)")
    layers = [(name, m) for name, m in _recurrent(model)]
    for name, m in layers:
        _check(name, m, dtype)
    out = copy.deepcopy(model).eval()
    for name, m in _recurrent(out):
        if m.__dict__.get("_quant") is not None:
            raise ValueError(f"{name or type(m).__name__} is quantized already")
        m._engine.weights.release()   # the float packed copy is not used
        object.__setattr__(m, "_quant", QuantizedWeights(m._spec(), m._flat, m._gates, dtype))
        m.__dict__.update(m._afresh())   # an engine on the int8 weights; parameters frozen
    return out


def _recurrent(model):
    """(name, module) of every recurrent layer in `model`, cells' included"""
    for name, m in model.named_modules():
        if isinstance(m, _RNNBase):
            yield name, m
        seq = m.__dict__.get("_seq")           # a cell's own one-layer module
        if isinstance(seq, _RNNBase):
            yield (name + "." if name else "") + "_seq", seq


def _check(name, m, dtype):
    label = f"{name or type(m).__name__} ({type(m).__name__}({m.extra_repr()}))"
    if m.dtype != np.float32:
        raise ValueError(f"{label}: {dtype} quantization takes float32 layers, got {m.dtype}")
    cells = (_core.CELL_LSTM, _core.CELL_GRU, _core.CELL_RNN_TANH) + \
        ((_core.CELL_RNN_RELU,) if dtype == "bf16" else ())
    if m._cell not in cells:
        raise ValueError(f"{label}: {dtype} runs LSTM, GRU with reset_after=True and RNN with "
                         + ("tanh or relu" if dtype == "bf16"
                            else "tanh (whose h stays within [-1, 1])"))
    if m._proj:
        raise ValueError(f"{label}: {dtype} has no path for proj_size yet")
    if m._options() is not None:
        raise ValueError(f"{label}: {dtype} runs the default cells (no activations, "
                         "cell_clip, input_forget or peepholes)")
    if dtype == "int8" and max(m.input_size, m._D * m._hout) > _core.Q8_MAX_K:
        raise ValueError(f"{label}: inputs wider than 2^17 could overflow the int32 sums")


def _onnx_session(model):
    """`model` if it is an lstmc.onnx Session (which exists only once lstmc.onnx is imported)"""
    import sys
    session = sys.modules.get("lstmc.onnx._session")
    return model if session is not None and isinstance(model, session.Session) else None


def _quantize_session(session, dtype):
    """A copy of an lstmc.onnx Session whose LSTM / GRU / RNN nodes run on `dtype` weights:
    each node's module (built at load from its constant W, R, B) quantized as quantize does
    an lstmc.nn one; the other operators as they were (MatMul / Gemm stay float32)."""
    from lstmc.onnx._rnn import _RecurrentNode

    nodes = [(i, step) for i, step in enumerate(session._graph.steps)
             if isinstance(step.kernel, _RecurrentNode)]
    if not nodes:
        raise ValueError("the ONNX model has no LSTM, GRU or RNN node to quantize")
    for _, step in nodes:
        if step.kernel.fixed is None:
            raise ValueError(f"{step.node}: its weights (W, R, B or P) are fed at run time; "
                             "quantize needs them as initializers or constants")
        _check(str(step.node), step.kernel.fixed, dtype)
    out = copy.deepcopy(session)
    for i, _ in nodes:
        kernel = out._graph.steps[i].kernel
        kernel.fixed = quantize(kernel.fixed, dtype)
    return out
