"""`lstmc.quantize`: an inference copy of a model whose weights are int8 or bfloat16.

The schemes (lstmc/reference.py is their spec, docs/spec.md section 9):
- int8: every weight matrix symmetric int8 per row (a gate unit of W_ih / W_hh, an output
  of a Linear, a row of an Embedding's table), with one float32 scale per row; the
  recurrent and Linear matrices packed once for the int8 kernels (csrc/quant.c). At run
  time each layer's input is quantized per row (each position its own scale), h with the
  fixed scale 1/127 where the cell keeps |h| <= 1 (LSTM, GRU, RNN-tanh), else per row and
  step (RNN-ReLU, projections); the int32 sums are exact and dequantised as the kernels
  store them.
- bf16: every weight matrix rounded to bfloat16 once (csrc/quant_bf16.c's packing); each
  layer's input and h rounded to bfloat16 at run time; products summed in float32.
Biases, activations and the cell state stay float32; an Embedding dequantises the rows it
looks up. The state of each kind of module is one class (lstmc.nn._quantized,
QuantizedWeights in lstmc.nn._engine); this file only finds the layers, checks them and
attaches the states.
"""
import copy

import numpy as np

from lstmc import _core
from lstmc.nn._engine import QuantizedWeights
from lstmc.nn._quantized import QuantizedEmbedding, QuantizedLinear
from lstmc.nn.layers import Embedding, Linear
from lstmc.nn.module import Module
from lstmc.nn.rnn import _RNNBase

DTYPES = ("int8", "bf16")


def quantize(model, dtype="int8"):
    """An inference copy of `model` whose LSTM, GRU, RNN, Linear and Embedding layers run on
    int8 or bfloat16 weights.

    Parameters
    ----------
    model : lstmc.nn.Module or lstmc.models.Sequential
        An lstmc.nn model: an LSTM / GRU / RNN, a cell (nn.LSTMCell, ...), a Linear, an
        Embedding, or a module holding them (nn.Sequential, your own Module). Or a built
        Keras-face Sequential: its LSTM / GRU / SimpleRNN (Bidirectional too), Dense and
        Embedding layers are quantized (Dropout has no weights; Dense's activation stays
        float32). Or an lstmc.onnx Session: its LSTM / GRU / RNN nodes with constant
        weights (its other operators stay float32).
    dtype : "int8" or "bf16"

    Returns
    -------
    A deep copy in eval mode; `model` is not changed. The copy runs as the float model does
    (forward, `step`, the cells' calls; the Keras face's predict, __call__ and evaluate) on
    the int8 kernels:

    - LSTM / GRU / RNN: W_ih and W_hh int8 per gate unit (row); inputs quantized per row at
      run time, h with the fixed scale 1/127 (initial states must lie within [-1, 1]) or,
      for RNN-ReLU and LSTM with proj_size, per row at every step;
    - Linear (Dense): weight (out, in) int8 per output row; each input row (float32, n x in)
      quantized at call time; y = dequantised exact int32 product + float32 bias (the
      arithmetic of reference.int8_product);
    - Embedding: the table (num, dim) int8 per row with a float32 scale per row; a lookup
      returns float32 q[idx] * scale[idx];
    - bf16: each of these matrices rounded to bfloat16, inputs and h rounded at run time,
      float32 sums; any initial state.

    Training is refused: `train()`, `backward`, the Keras face's fit / train_on_batch, an
    optimizer's step, set_weights and float load_state_dict raise RuntimeError naming the
    layer (inference only: train the float model and quantize it again). The float
    parameters of the copy hold the dequantised weights, read-only.

    `state_dict()` gives the quantized weights in their stored form (`name` int8 and
    `name_scale` float32 per quantized matrix, or `name` uint16 bfloat16 bits; float32
    biases) and `load_state_dict` takes
    it back bit for bit: `q.load_state_dict(lstmc.load(path))` on a quantized copy of a
    model of the same shapes (its float weights do not matter) runs the saved int8 weights.
    The Keras face's `save("m.lstmc")` / `lstmc.models.load_model` keep them too.

    Raises
    ------
    ValueError
        dtype other than "int8" and "bf16"; a model already quantized; a Keras-face layer
        not built yet; and, naming the layer (the node of a session), one the kernels cannot
        run: float64 layers, GRU with reset_after=False, non-default activations or other
        cell options (no quantized path yet), an int8 input wider than 2^17; a session node
        whose weights are fed at run time.
    TypeError
        `model` is not an lstmc.nn Module, a Keras-face model or an lstmc.onnx Session.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    session = _onnx_session(model)
    if session is not None:
        return _quantize_session(session, dtype)
    if not isinstance(model, Module):
        raise TypeError(f"quantize takes an lstmc.nn Module, an lstmc.models.Sequential or an "
                        f"lstmc.onnx Session, got {type(model).__name__}")
    for label, m in _layers(model):
        _check(label, m, dtype)
    out = copy.deepcopy(model).eval()
    for _, m in list(_layers(out)):
        state = _STATES[_kind(m)].of(m, dtype)
        if isinstance(m, _RNNBase):
            m._engine.weights.release()      # the float packed copy is not used
        object.__setattr__(m, "_quant", state)
        if isinstance(m, _RNNBase):
            m.__dict__.update(m._afresh())   # an engine on the int8 weights
        state.attach()                       # parameters dequantised and frozen
    return out


def quantized_dtype(model):
    """The dtype name ("int8" or "bf16") of the quantized weights in `model` (an lstmc.nn Module or a
    Keras-face model, lstmc.quantize's result), or None if it has none."""
    # the states themselves: Sequential.quantized (the Keras face's) asks this function
    states = [inner.__dict__.get("_quant") for _, m in model.named_modules()
              for inner in (m,) + tuple(m._inner_modules())]
    dtypes = {state.dtype for state in states if state is not None}
    return min(dtypes) if dtypes else None


# the kinds quantized and their int8 state
_STATES = {_RNNBase: QuantizedWeights, Linear: QuantizedLinear, Embedding: QuantizedEmbedding}


def _kind(m):
    return next((kind for kind in _STATES if isinstance(m, kind)), None)


def _layers(model):
    """(label, module) of every module of `model` to quantize: the recurrent, Linear and
    Embedding modules of its tree and those its modules run unregistered (a cell's, a Keras
    layer's: Module._inner_modules), labelled with the name of the module that runs them."""
    unbuilt = [name or type(m).__name__ for name, m in model.named_modules()
               if getattr(m, "built", True) is False]   # Keras-face layers build lazily
    if unbuilt:   # the last one: a layer rather than the model holding it
        raise ValueError(f"{unbuilt[-1]} is not built yet: quantize needs its weights (call "
                         "the model on a batch, or give input_shape=)")
    for name, m in model.named_modules():
        if m.quantized is not None:
            raise ValueError(f"{name or type(m).__name__} is quantized already")
        if _kind(m) is not None:
            yield f"{name or type(m).__name__} ({type(m).__name__}({m.extra_repr()}))", m
        for inner in m._inner_modules():
            if inner.quantized is not None:
                raise ValueError(f"{name or type(m).__name__} is quantized already")
            if _kind(inner) is not None:
                yield (f"{name or type(m).__name__} ({type(m).__name__} on "
                       f"{type(inner).__name__}({inner.extra_repr()}))"), inner


def _check(label, m, dtype):
    if m.dtype != np.float32:
        raise ValueError(f"{label}: {dtype} quantization takes float32 layers, got {m.dtype}")
    width = m.in_features if isinstance(m, Linear) else 0 if isinstance(m, Embedding) \
        else max(m.input_size, m._D * m._hout)
    if dtype == "int8" and width > _core.Q8_MAX_K:
        raise ValueError(f"{label}: inputs wider than 2^17 could overflow the int32 sums")
    if isinstance(m, (Linear, Embedding)):
        return
    if m._cell not in (_core.CELL_LSTM, _core.CELL_GRU, _core.CELL_RNN_TANH,
                       _core.CELL_RNN_RELU):
        raise ValueError(f"{label}: {dtype} runs LSTM, GRU with reset_after=True and RNN")
    if m._options() is not None:
        raise ValueError(f"{label}: {dtype} runs the default cells (no activations, "
                         "cell_clip, input_forget or peepholes)")


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
