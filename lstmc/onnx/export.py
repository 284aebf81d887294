"""lstmc models -> ONNX files: `export(model, path, *, dynamic_batch=True, opset=17)`.

Exports an `lstmc.nn` sequence module (LSTM, GRU, RNN), an `lstmc.nn.Sequential` of those and
Embedding / Linear / ReLU / Tanh / Sigmoid / Dropout, or a Keras-face
`lstmc.models.Sequential` (Embedding / LSTM / GRU / SimpleRNN / Bidirectional / Dense /
Dropout), for inference. Every recurrent layer becomes one ONNX LSTM / GRU / RNN node (both
directions in one node, `layout=0`, time-major), its weights converted from lstmc's
(PyTorch's) gate order to ONNX's; Dropout is the identity. Both faces read their weights from
the same place, the `lstmc.nn` modules (a Keras-face recurrent layer keeps one), so there is
one conversion.

Graph inputs and outputs
- `input`: the model's input, batch axis `batch` (or 1 with `dynamic_batch=False`), time axis
  `time`; token ids are int64. `output`: the model's output. lstmc.nn inputs are batched, in
  the layout of the first sequence module (batch_first or not); inside lstmc.nn.Sequential a
  sequence module passes its output sequence (its first result) to the next module.
- `lengths=True` (lstmc.nn): an int32 input `lengths` (batch,) that every recurrent node takes
  as `sequence_lens`, as `lengths=` in lstmc (a row's outputs past its length are 0).
- Keras face: `Embedding(mask_zero=True)` masks are computed in the graph from the ids (id 0
  is padding). As in lstmc, the valid steps of each row may sit anywhere (left-, right- or
  any-padded): the graph moves them to the front (ScatterElements), runs the node with
  `sequence_lens`, and puts the outputs back where Keras has them (GatherElements).
- `states=True`: per recurrent layer an initial-state input and a final-state output, named
  `h0` / `c0` / `h_n` / `c_n` for a lone module, `<child>.h0` ... inside lstmc.nn.Sequential
  (the child's name, "0", "1", ...) and `<layer name>.h0` ... in the Keras face. Shapes are
  the module's (num_layers * D, batch, H) for lstmc.nn and (D, batch, units) for a Keras layer
  (D = 2 when bidirectional). A row of length 0 keeps its initial state, as in lstmc.

What ONNX cannot express is refused with an error that names it (LSTM proj_size, a Keras
layer with return_state), as is anything that is not one of the layers above. The file is
checked with `onnx.checker.check_model(full_check=True)` before it is written; a failed
export leaves no file behind. ONNX Runtime runs the recurrent nodes in float32 only; a float64
model is exported in float64.
"""
import os
import tempfile

import numpy as np

# lstmc's (PyTorch's) gate blocks -> ONNX's: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h
_ONNX_GATES = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}


def _require_onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError("lstmc.onnx.export needs the onnx package: pip install "
                          "'lstmc[onnx]'") from e
    return onnx


class _Graph:
    """An ONNX graph under construction: nodes in order, initializers, inputs, outputs."""

    def __init__(self, onnx, dtype, batch, opset):
        self.onnx, self.helper, self.opset = onnx, onnx.helper, opset
        self.dtype = np.dtype(dtype)
        self.elem = onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.batch = batch
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self._count = 0

    def _name(self, hint):
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type, *inputs, outputs=1, **attrs):
        """Appends a node; returns its output name (or a list of `outputs` names)."""
        names = [self._name(op_type) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), names,
                                                name=self._name(op_type + "_node"), **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value, hint="const"):
        """An initializer holding `value` (floats in the model's dtype)."""
        value = np.asarray(value)
        if value.dtype.kind == "f":
            value = value.astype(self.dtype)
        name = self._name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(value, name))
        return name

    def ints(self, *values):
        return self.const(np.array(values, dtype=np.int64), "ints")

    def input(self, name, shape, elem=None):
        self.inputs.append(self.helper.make_tensor_value_info(
            name, self.elem if elem is None else elem, list(shape)))
        return name

    def output(self, name, value):
        self.nodes.append(self.helper.make_node("Identity", [value], [name],
                                                name=self._name("output")))
        self.outputs.append(name)

    def model(self, doc):
        """The ModelProto; the outputs' shapes (which the checker requires) come from ONNX's
        shape inference over the graph."""
        def build(outputs):
            graph = self.helper.make_graph(self.nodes, "lstmc", self.inputs, outputs,
                                           self.initializers)
            return self.helper.make_model(
                graph, producer_name="lstmc", producer_version=_version(), doc_string=doc,
                opset_imports=[self.helper.make_opsetid("", self.opset)])

        untyped = [self.helper.make_empty_tensor_value_info(n) for n in self.outputs]
        inferred = self.onnx.shape_inference.infer_shapes(build(untyped), strict_mode=True)
        known = {v.name: v for v in inferred.graph.value_info}
        known.update((v.name, v) for v in inferred.graph.output)
        return build([known[n] for n in self.outputs])


# ---- recurrent layers -------------------------------------------------------------------
# lstmc's activation names (lstmc.reference.activation) -> ONNX's
_ONNX_ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "affine": "Affine",
                     "leakyrelu": "LeakyRelu", "thresholdedrelu": "ThresholdedRelu",
                     "scaledtanh": "ScaledTanh", "hardsigmoid": "HardSigmoid", "elu": "Elu",
                     "softsign": "Softsign", "softplus": "Softplus"}


def _cell_op(module):
    """(ONNX op, its attributes) for an lstmc.nn sequence module: its cell, and its cell
    options as clip, input_forget and activations with every alpha and beta written out."""
    from lstmc import nn
    if isinstance(module, nn.LSTM):
        if module.proj_size:
            raise ValueError(f"LSTM with proj_size={module.proj_size} cannot be exported: "
                             "ONNX's LSTM has no projection of h")
        op, attrs = "LSTM", ({"input_forget": 1} if module.input_forget else {})
    elif isinstance(module, nn.GRU):
        op, attrs = "GRU", {"linear_before_reset": int(module.reset_after)}
    else:
        activation = "tanh" if module.nonlinearity == "tanh" else "relu"
        op, attrs = "RNN", {"activations": [_ONNX_ACTIVATIONS[activation]] *
                            _directions(module)}
    if module.cell_clip is not None:
        attrs["clip"] = module.cell_clip
    if module.activations is not None:
        acts = [a for direction in module.activations for a in direction]
        attrs["activations"] = [_ONNX_ACTIVATIONS[name] for name, _, _ in acts]
        for i, key in ((1, "activation_alpha"), (2, "activation_beta")):
            values = [a[i] for a in acts if a[i] is not None]
            if values:
                attrs[key] = values
    return op, attrs


def _peepholes(module, layer):
    """ONNX's P (D, 3H) of one layer, rows i, o, f, or None without peepholes."""
    if not getattr(module, "peepholes", False):
        return None
    return np.stack([getattr(module, f"peephole_l{layer}{sfx}").data[[0, 2, 1]].reshape(-1)
                     for sfx in ("", "_reverse")[:_directions(module)]])


def _directions(module):
    return 2 if module.bidirectional else 1


def _layer_weights(module, op, layer):
    """W (D, G*H, I), R (D, G*H, H), B (D, 2*G*H) or None of one layer, in ONNX's gate order."""
    H = module.hidden_size
    order = _ONNX_GATES[op]

    def blocks(a):
        return np.concatenate([a[g * H:(g + 1) * H] for g in order])

    def stacked(which):
        return np.stack([blocks(getattr(module, f"{which}_l{layer}{sfx}").data)
                         for sfx in ("", "_reverse")[:_directions(module)]])

    W, R = stacked("weight_ih"), stacked("weight_hh")
    B = np.concatenate([stacked("bias_ih"), stacked("bias_hh")], axis=1) if module.bias \
        else None
    return W, R, B


def _recurrent(g, module, x, lengths, prefix, states):
    """The layers of an lstmc.nn sequence module on time-major x (T, B, I): one ONNX node
    each. Returns (Y (T, B, D*H), h_n (L*D, B, H), c_n or None)."""
    op, attrs = _cell_op(module)
    D, L, H = _directions(module), module.num_layers, module.hidden_size
    has_c = op == "LSTM"
    shape = (L * D, g.batch, H)
    h0 = g.input(prefix + "h0", shape) if states else ""
    c0 = g.input(prefix + "c0", shape) if states and has_c else ""
    finals = []
    for layer in range(L):
        W, R, B = _layer_weights(module, op, layer)
        own = [_state_slice(g, s, layer, D) if s else "" for s in (h0, c0)]
        P = _peepholes(module, layer)
        inputs = [x, g.const(W, "W"), g.const(R, "R"), "" if B is None else g.const(B, "B"),
                  lengths or "", own[0]] + ([own[1], "" if P is None else g.const(P, "P")]
                                            if has_c else [])
        while inputs[-1] == "":
            inputs.pop()
        Y, *last = g.op(op, *inputs, outputs=3 if has_c else 2, hidden_size=H,
                        direction="bidirectional" if D == 2 else "forward", layout=0, **attrs)
        if states and lengths:
            # ONNX Runtime zeroes the final state of a row of length 0; lstmc keeps h0 / c0
            empty = g.op("Unsqueeze", g.op("Equal", lengths, g.const(np.int32(0))),
                         g.ints(0, 2))
            last = [g.op("Where", empty, s0, s) for s0, s in zip(own, last)]
        finals.append(last)
        # (T, D, B, H) -> (T, B, D*H): forward features, then reverse
        x = g.op("Reshape", g.op("Transpose", Y, perm=[0, 2, 1, 3]), g.ints(0, 0, -1))
    joined = [g.op("Concat", *s, axis=0) if L > 1 else s[0] for s in zip(*finals)]
    return x, joined[0], (joined[1] if has_c else None)


def _state_slice(g, state, layer, D):
    return g.op("Slice", state, g.ints(layer * D), g.ints((layer + 1) * D), g.ints(0))


def _outputs(g, y, finals):
    """The graph's outputs: the model's output, then the final states of each layer."""
    g.output("output", y)
    for prefix, h, c in finals:
        g.output(prefix + "h_n", h)
        if c is not None:
            g.output(prefix + "c_n", c)


# ---- lstmc.nn ---------------------------------------------------------------------------
def _nn_graph(g, model, states, lengths):
    from lstmc import nn
    sequence_modules = (nn.LSTM, nn.GRU, nn.RNN)
    children = list(model.named_children()) if isinstance(model, nn.Sequential) \
        else [("", model)]
    if not children:
        raise ValueError("cannot export an empty Sequential")
    rnns = [m for _, m in children if isinstance(m, sequence_modules)]
    # the input's leading axes follow the first recurrent module's layout
    if not rnns:
        lead = ["batch"]
    else:
        lead = ["batch", "time"] if rnns[0].batch_first else ["time", "batch"]
    lead = [g.batch if a == "batch" else a for a in lead]
    first = children[0][1]
    if isinstance(first, nn.Embedding):
        x = g.input("input", lead, g.onnx.TensorProto.INT64)
    else:
        width = {nn.Linear: "in_features"}.get(type(first), "input_size")
        if not hasattr(first, width):
            raise TypeError(f"the first module must be an Embedding, Linear or a sequence "
                            f"module to fix the input's width, got {type(first).__name__}")
        x = g.input("input", lead + [getattr(first, width)])
    seq_lens = g.input("lengths", [g.batch], g.onnx.TensorProto.INT32) if lengths else None
    if lengths and not rnns:
        raise ValueError("lengths=True needs a recurrent module in the model")
    finals = []   # (prefix, h_n, c_n) per recurrent module
    for name, m in children:
        if isinstance(m, sequence_modules):
            if m.batch_first:
                x = g.op("Transpose", x, perm=[1, 0, 2])
            prefix = name + "." if name else ""
            x, h, c = _recurrent(g, m, x, seq_lens, prefix, states)
            finals.append((prefix, h, c))
            if m.batch_first:
                x = g.op("Transpose", x, perm=[1, 0, 2])
        elif isinstance(m, nn.Embedding):
            x = g.op("Gather", g.const(m.weight.data, "embedding"), x, axis=0)
        elif isinstance(m, nn.Linear):
            x = g.op("MatMul", x, g.const(m.weight.data.T, "weight"))
            if m.bias is not None:
                x = g.op("Add", x, g.const(m.bias.data, "bias"))
        elif isinstance(m, (nn.ReLU, nn.Tanh, nn.Sigmoid)):
            x = g.op(type(m).__name__.replace("ReLU", "Relu"), x)
        elif not isinstance(m, nn.Dropout):
            raise TypeError(f"cannot export {type(m).__name__} (module {name or 0}): lstmc "
                            "exports LSTM, GRU, RNN, Embedding, Linear, ReLU, Tanh, Sigmoid, "
                            "Dropout and Sequential of them")
    _outputs(g, x, finals if states else [])


# ---- Keras face -------------------------------------------------------------------------
_DENSE_ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid",
                      "softmax": "Softmax"}


def _keras_graph(g, model, states):
    from lstmc.keras import layers as L
    layers = model.layers
    if not layers:
        raise ValueError("cannot export a model without layers")
    if not model.built:
        raise ValueError("the model must be built before export: give input_shape= (or an "
                         "Input) or call it on a batch")
    recurrent = (L.LSTM, L.GRU, L.SimpleRNN, L.Bidirectional)
    first = layers[0]
    feature = list(first.built_shape)
    if feature and isinstance(first, (L.Embedding,) + recurrent):
        feature[0] = "time"
    shape = [g.batch] + ["time" if d is None else d for d in feature]
    if isinstance(first, L.Embedding):
        x = g.input("input", shape, g.onnx.TensorProto.INT64)
    else:
        x = g.input("input", shape)
    mask, finals = None, []
    for layer in layers:
        if isinstance(layer, L.Embedding):
            mask = g.op("Not", g.op("Equal", x, g.const(np.int64(0)))) \
                if layer.mask_zero else None
            x = g.op("Gather", g.const(layer.embeddings.data, "embeddings"), x, axis=0)
        elif isinstance(layer, recurrent):
            x, mask = _keras_recurrent(g, layer, x, mask, states, finals)
        elif isinstance(layer, L.Dense):
            x = g.op("MatMul", x, g.const(layer.get_weights()[0], "kernel"))
            if layer.use_bias:
                x = g.op("Add", x, g.const(layer.get_weights()[1], "bias"))
            if layer.activation != "linear":
                x = g.op(_DENSE_ACTIVATIONS[layer.activation], x)
        elif not isinstance(layer, L.Dropout):
            raise TypeError(f"cannot export layer {layer.name!r} ({type(layer).__name__})")
    _outputs(g, x, finals if states else [])


def _keras_recurrent(g, layer, x, mask, states, finals):
    """A Keras-face LSTM / GRU / SimpleRNN / Bidirectional on x (B, T, F) with an optional
    mask (B, T) bool: Keras' semantics (state held on masked steps, go_backwards,
    merge_mode). Appends (prefix, h_n, c_n) to `finals`; returns (y, the mask the next layer
    sees)."""
    from lstmc.keras import layers as L
    bidirectional = isinstance(layer, L.Bidirectional)
    rnn = layer.layer if bidirectional else layer
    if rnn.return_state:
        raise ValueError(f"layer {layer.name!r} has return_state=True: an exported model has "
                         "one output (export with states=True for the final states)")
    module = rnn._module
    reverse = rnn.go_backwards and not bidirectional
    if reverse:   # the layer's order of steps
        x = _reverse_time(g, x)
    steps = None if mask is None else _MaskedSteps(g, _reverse_time(g, mask) if reverse
                                                    else mask)
    if steps is not None:
        x = steps.gather(x)
    prefix = layer.name + "."
    y, h, c = _recurrent(g, module, g.op("Transpose", x, perm=[1, 0, 2]),
                         None if steps is None else steps.lengths, prefix, states)
    finals.append((prefix, h, c))
    U = rnn.units
    if rnn.return_sequences:
        y = g.op("Transpose", y, perm=[1, 0, 2])     # (B, T, D*U)
        if bidirectional and layer.merge_mode != "concat":
            y = _merge(g, g.op("Reshape", y, g.ints(0, 0, 2, U)), layer.merge_mode, axis=2)
        if steps is not None:
            y = steps.scatter(y, zero_output=bidirectional)
        return y, mask
    if bidirectional:
        if layer.merge_mode == "concat":   # (2, B, U) -> (B, 2U)
            return g.op("Reshape", g.op("Transpose", h, perm=[1, 0, 2]), g.ints(0, -1)), None
        return _merge(g, h, layer.merge_mode, axis=0), None
    return g.op("Squeeze", h, g.ints(0)), None


def _merge(g, y, mode, axis):
    """Merges the two directions on `axis` (of size 2) as Bidirectional's merge_mode."""
    reduce = {"sum": "ReduceSum", "ave": "ReduceMean", "mul": "ReduceProd"}[mode]
    if reduce == "ReduceSum" or g.opset >= 18:   # axes became an input (ReduceSum in 13)
        return g.op(reduce, y, g.ints(axis), keepdims=0)
    return g.op(reduce, y, axes=[axis], keepdims=0)


def _reverse_time(g, x):
    """x (B, T, ...) with its time axis reversed."""
    big = np.iinfo(np.int64).max
    return g.op("Slice", x, g.ints(-1), g.ints(-big), g.ints(1), g.ints(-1))


class _MaskedSteps:
    """Keras' mask semantics in the graph, as lstmc.keras.layers._Steps does them in numpy:
    the valid steps of each row move to the front (in order), the node runs them with
    `sequence_lens`, and each step then shows the output of the row's last valid step so
    far (zeros before the first, or zeros at every masked step with zero_output)."""

    def __init__(self, g, mask):
        self.g = g
        self.mask = mask
        valid = g.op("Cast", mask, to=g.onnx.TensorProto.INT64)                  # (B, T)
        one, axis = g.const(np.int64(1)), g.const(np.int64(1))
        count = g.op("CumSum", valid, axis)                                      # valid so far
        total = g.op("ReduceSum", valid, g.ints(1), keepdims=1)                  # (B, 1)
        self.lengths = g.op("Cast", g.op("Squeeze", total, g.ints(1)),
                            to=g.onnx.TensorProto.INT32)
        # where step t goes: valid steps to 0..len-1, masked ones after them (a permutation)
        padding = g.op("CumSum", g.op("Sub", one, valid), axis)
        self.dest = g.op("Where", mask, g.op("Sub", count, one),
                         g.op("Sub", g.op("Add", total, padding), one))
        self.last = g.op("Sub", count, one)   # the position whose output step t shows

    def _index(self, index, like):
        """index (B, T) -> (B, T, F) to address the rows of `like` (B, T, F)."""
        g = self.g
        return g.op("Expand", g.op("Unsqueeze", index, g.ints(2)), g.op("Shape", like))

    def gather(self, x):
        g = self.g
        return g.op("ScatterElements", x, self._index(self.dest, x), x, axis=1)

    def scatter(self, y, zero_output):
        g = self.g
        at = g.op("Max", self.last, g.const(np.int64(0)))
        out = g.op("GatherElements", y, self._index(at, y), axis=1)
        show = self.mask if zero_output else g.op("GreaterOrEqual", self.last,
                                                  g.const(np.int64(0)))
        show = g.op("Unsqueeze", g.op("Cast", show, to=g.elem), g.ints(2))
        return g.op("Mul", out, show)


# ---- entry point ------------------------------------------------------------------------
def export(model, path, *, dynamic_batch=True, opset=17, states=False, lengths=False):
    """Writes `model` to the ONNX file `path` and returns the onnx.ModelProto.

    Parameters
    ----------
    model : lstmc.nn.LSTM / GRU / RNN, lstmc.nn.Sequential, or lstmc.models.Sequential
        Exported for inference (Dropout is the identity) with its current weights.
    path : str or os.PathLike
    dynamic_batch : bool, default True
        The batch axis is the symbolic `batch`; False fixes it to 1.
    opset : int, default 17
        The ONNX opset (14 or later).
    states : bool, default False
        Initial-state inputs and final-state outputs per recurrent layer (streaming).
    lengths : bool, default False
        lstmc.nn models: an int32 input `lengths` (batch,) used as every recurrent node's
        `sequence_lens`. The Keras face takes its masks from Embedding(mask_zero=True).

    Raises ImportError without the onnx package (`pip install 'lstmc[onnx]'`), ValueError for
    what ONNX cannot express (LSTM proj_size, return_state) and TypeError for modules or
    layers that are not exportable.
    """
    onnx = _require_onnx()
    from lstmc.keras.models import Sequential as KerasSequential
    from lstmc.nn import Module
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 14:
        raise ValueError(f"opset must be an int >= 14 (LSTM / GRU with layout), got {opset!r}")
    if isinstance(model, Module):
        from lstmc._quantize import quantized_dtype
        if quantized_dtype(model) is not None:
            raise ValueError(f"the model is quantized ({quantized_dtype(model)}, "
                             "lstmc.quantize): export writes float models, and quantized "
                             "ONNX export is not available yet; export the float model")
    from lstmc.keras.models import Model as KerasModel
    if isinstance(model, KerasModel):
        raise TypeError("a functional lstmc.models.Model is not exported to ONNX yet: "
                        "export a Sequential (or an lstmc.nn model)")
    if isinstance(model, KerasSequential):
        if lengths:
            raise ValueError("lengths=True is for lstmc.nn models: a Keras-face model takes its "
                             "masks from Embedding(mask_zero=True)")
        graph = _Graph(onnx, _dtype(model), "batch" if dynamic_batch else 1, opset)
        _keras_graph(graph, model, states)
    elif isinstance(model, Module):
        graph = _Graph(onnx, _dtype(model), "batch" if dynamic_batch else 1, opset)
        _nn_graph(graph, model, states, lengths)
    else:
        raise TypeError(f"model must be an lstmc.nn module or an lstmc.models.Sequential, got "
                        f"{type(model).__name__}")
    proto = graph.model(f"exported from lstmc: {type(model).__name__}")
    onnx.checker.check_model(proto, full_check=True)
    _write(proto.SerializeToString(), path)
    return proto


def _dtype(model):
    dtypes = {p.data.dtype for p in model.parameters()}
    if len(dtypes) > 1:
        raise ValueError(f"the model mixes parameter dtypes {sorted(map(str, dtypes))}: "
                         "export needs one")
    return dtypes.pop() if dtypes else np.dtype(np.float32)


def _write(data, path):
    """Writes through a temporary file in the same directory, so a failure leaves no
    half-written file in place of an old one."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _version():
    import lstmc
    return lstmc.__version__
