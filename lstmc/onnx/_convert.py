"""An ONNX graph that is a chain of layers lstmc has -> an lstmc model (`to_sequential`), for
`python -m lstmc convert model.onnx model.lstmc`.

The model is a Keras-face `lstmc.models.Sequential`: lstmc's model file (`model.save`,
`lstmc.models.load_model`) is that model's, and it is the face that can be fine-tuned
(`compile` / `fit`) and exported back (`lstmc.onnx.export`). Its conventions are Keras': one
input, batch-first ((batch, time) token ids or (batch, time, features)), one output. A graph
whose input or output is time-major converts to the same function taking and giving the
batch-first layout, and `Conversion.notes` says so; graph outputs beyond the first (final
states) are not part of the model, and the notes name them.

How a graph is read: the graph is compiled by `lstmc.onnx.load` (constants folded, the RNN
nodes' weights converted once), then the steps that compute its first output are traced from
the data input. Steps on the data path are either layers — Gather of a constant table
(Embedding), LSTM / GRU / RNN with constant weights, MatMul / Gemm by a constant (Dense) with
its Add of a constant bias and a following Relu / Tanh / Sigmoid / Softmax (its activation) —
or glue that only moves values (Transpose, Reshape, Squeeze, Concat, Slice, Gather, masks'
Scatter / GatherElements, ...). Which glue the exporters wrote is not guessed from names or
patterns: every candidate model (layouts, directions, merge modes the trace allows) is run
beside the session on random inputs of the graph's declared shapes, and the first that
computes the same outputs is the answer. Anything else on the data path, a second branch, a
weight or state fed at run time, `sequence_lens` fed by a graph input, or no candidate that
matches raises UnsupportedModelError naming the node.
"""
from itertools import product
from typing import List, NamedTuple

import numpy as np

from lstmc._random import generator
from lstmc.onnx._node import UnsupportedModelError

_RNN_OPS = ("LSTM", "GRU", "RNN")
_ACTIVATIONS = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Softmax": "softmax"}
# ops that only move, select, mask or merge the values of the data path
_GLUE = {"Transpose", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Concat", "Slice", "Split",
         "Identity", "Dropout", "Cast", "Gather", "GatherElements", "ScatterElements", "Mul",
         "Where", "Expand", "ReduceSum", "ReduceMean", "ReduceProd"}
# glue with a data operand that must be the only one (the others: masks, indices, shapes)
_ONE_DATA_OPERAND = {"Mul", "Where", "Gather", "GatherElements"}
# Bidirectional's merge of the two directions, by the reduction the exporter wrote
_MERGES = {"ReduceSum": "sum", "ReduceMean": "ave", "ReduceProd": "mul"}
# the ops on token ids before the Embedding's Gather that keep them ids
_ID_LAYOUT = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Cast"}
# lstmc's (PyTorch's) gate blocks -> Keras' (the maps are involutions)
_KERAS_GATES = {"LSTM": [0, 1, 2, 3], "GRU": [1, 0, 2], "RNN": [0]}
MAX_CANDIDATES = 256


class Conversion(NamedTuple):
    """The model, and what a user of the ONNX file must know about its conventions."""
    model: object
    notes: List[str]


class _Layer:
    """One layer of the chain as traced: its kind ("embedding", "rnn", "dense"), node and
    what the trace learnt of it."""

    def __init__(self, kind, step, *, table=None, module=None, direction=None, masked=False,
                 reversed_input=False, kernel=None, bias=None):
        self.kind, self.step, self.node = kind, step, step.node
        self.table = table                    # Embedding: (vocabulary, features)
        self.module = module                  # RNN: the lstmc.nn module its node runs on
        self.direction = direction            # RNN: forward, reverse or bidirectional
        self.masked = masked                  # RNN: sequence_lens from the token ids' mask
        self.reversed_input = reversed_input  # RNN: a Slice reversed its input in time
        self.used = set()          # RNN: which outputs (0 Y, 1 Y_h, 2 Y_c) the chain reads
        self.merges = set()        # RNN: reductions of its directions after it
        self.kernel, self.bias = kernel, bias  # Dense
        self.activation = None     # Dense: its activation node's op


def to_sequential(proto):
    """The lstmc model of the chain of layers an ONNX model computes, checked on random inputs
    against lstmc.onnx.load's session of it. Raises UnsupportedModelError naming the node
    that does not map."""
    from lstmc.onnx._session import Session
    from lstmc.onnx._graph import Graph

    session = Session(Graph(proto))
    trace = _Trace(session._graph)
    state = generator().bit_generator.state
    try:
        return _choose(session, trace)
    finally:
        generator().bit_generator.state = state   # layers draw initial weights: undo that


# ---- tracing the data path ------------------------------------------------------------------
class _Trace:
    """The layers on the path from the data input to the graph's first output, in order."""

    def __init__(self, graph):
        self.graph = graph
        self.output = graph.outputs[0].name
        steps, (out_slot,) = graph.plan([self.output])
        fed = {graph.slots[a.name]: a for a in graph.inputs}
        used_inputs = {s for step in steps for s in step.inputs if s in fed} | (
            {out_slot} if out_slot in fed else set())
        data = [a for a in graph.inputs if graph.slots[a.name] in used_inputs]
        if not data:
            raise UnsupportedModelError(f"graph output {self.output!r} does not depend on a "
                                        "graph input: there is no model to convert")
        for extra in data[1:]:
            slot = graph.slots[extra.name]
            reader = next(step for step in steps if slot in step.inputs)
            raise reader.node.unsupported(
                f"reads graph input {extra.name!r} beside the model's input "
                f"{data[0].name!r}: an lstmc model has one input (states and lengths fed as "
                "inputs are not part of it)")
        self.input = data[0]
        ids = self.input.dtype is not None and self.input.dtype.kind in "iu"
        self.kind = {graph.slots[self.input.name]: "ids" if ids else "data"}
        self.origin = {graph.slots[self.input.name]: -1}   # the latest layer a value comes from
        self.rnn_output = {}      # data slot -> {(layer, RNN output index)} it derives from
        self.reversed = {}        # data slot -> a Slice reversed it since its layer
        self.layers = []
        for step in steps:
            self._step(step)
        if self.kind.get(out_slot) != "data":
            raise UnsupportedModelError(f"graph output {self.output!r} is not computed from "
                                        "the model's data (token ids or features)")
        self._consume(out_slot, None)
        if not self.layers:
            raise UnsupportedModelError("the graph has no layer lstmc maps (Embedding, LSTM, "
                                        "GRU, RNN, Dense)")
        self.other_outputs = [a.name for a in graph.outputs[1:]]

    def const(self, step, k):
        """Input k of a step when it is a constant, else None."""
        return self.graph.initial[step.inputs[k]] if k < len(step.inputs) else None

    def _step(self, step):
        node = step.node
        kinds = [self.kind.get(s) for s in step.inputs]
        data = [k for k, kd in enumerate(kinds) if kd == "data"]
        if not data:
            if node.op == "Gather" and kinds[1:2] == ["ids"]:
                self._embedding(step)
            else:   # shapes, masks and lengths from the input; ids through their layout ops
                keep = node.op in _ID_LAYOUT and "ids" in kinds
                for s in step.outputs:
                    self.kind[s] = "ids" if keep else "side"
            return
        if node.op in ("Shape", "Size"):   # of the data: a shape, not data
            for s in step.outputs:
                self.kind[s] = "side"
        elif node.op in _RNN_OPS:
            self._recurrent(step, data)
        elif node.op in ("MatMul", "Gemm"):
            self._dense(step, data)
        elif node.op in ("Add", "Sub") or node.op in _ACTIVATIONS:
            self._dense_part(step, data)
        elif node.op in _GLUE:
            self._glue(step, data)
        else:
            raise node.unsupported(f"operator {node.op} on the model's data path is not a "
                                   "layer lstmc has")

    def _origin(self, step, data):
        """The one layer the data operands of a step come from (else: a branch)."""
        origins = {self.origin[step.inputs[k]] for k in data}
        if len(origins) > 1:
            raise step.node.unsupported("joins values of different layers: the graph is not "
                                        "a chain of layers")
        return origins.pop()

    def _consume(self, slot, step):
        """A layer (or the graph output) reads `slot`: it must come from the last layer, and
        the RNN outputs it derives from are that layer's used outputs."""
        last = len(self.layers) - 1
        if self.origin[slot] != last:
            what = "graph output" if step is None else str(step.node)
            raise UnsupportedModelError(f"{what} reads the output of an earlier layer than the "
                                        "last: the graph is not a chain of layers")
        for layer, k in self.rnn_output.get(slot, ()):
            self.layers[layer].used.add(k)
        return self.reversed.get(slot, False)

    def _new_layer(self, kind, step, outputs, **facts):
        layer = _Layer(kind, step, **facts)
        self.layers.append(layer)
        index = len(self.layers) - 1
        for k, s in outputs:
            self.kind[s], self.origin[s] = "data", index
            if kind == "rnn":
                self.rnn_output[s] = {(index, k)}
        return layer

    def _embedding(self, step):
        node = step.node
        table = self.const(step, 0)
        if table is None or table.ndim != 2 or table.dtype.kind != "f" \
                or node.attr("axis", 0) != 0:
            raise node.unsupported("a Gather of the token ids that is not an embedding lookup "
                                   "(a constant float table, axis 0)")
        if self.layers:
            raise node.unsupported("an embedding lookup after other layers")
        self._new_layer("embedding", step, [(0, step.outputs[0])], table=table)

    def _recurrent(self, step, data):
        node, kernel = step.node, step.kernel
        if data != [0]:
            raise node.unsupported("its weights, biases or states come from the model's data")
        reversed_input = self._consume(step.inputs[0], step)
        if kernel.fixed is None:
            raise node.unsupported("its weights W, R, B are fed at run time, not constants of "
                                   "the file")
        masked = False
        if node.has_input(4) and self.const(step, 4) is None:
            source = self.kind.get(step.inputs[4])
            if source != "side" or self.kind[self.graph.slots[self.input.name]] != "ids":
                raise node.unsupported("its sequence_lens are fed by a graph input: an lstmc "
                                       "model takes lengths only as Embedding(mask_zero=True) "
                                       "masks")
            masked = True
        elif node.has_input(4) and np.any(self.const(step, 4) != self.const(step, 4).max()):
            raise node.unsupported("constant sequence_lens that differ between rows")
        for k, what in ((5, "initial_h"), (6, "initial_c")):
            if node.has_input(k) and k not in node.captured:
                raise node.unsupported(f"its {what} is not zero in every run: an lstmc model "
                                       "starts from zero states")
        outputs = [(k, s) for k, s in enumerate(step.outputs) if s]
        self._new_layer("rnn", step, outputs, module=kernel.fixed, direction=kernel.direction,
                        masked=masked, reversed_input=reversed_input)

    def _dense(self, step, data):
        node = step.node
        if data != [0]:
            raise node.unsupported("the model's data is not its first operand")
        if node.op == "Gemm" and (node.attr("transA", 0) or self.const(step, 1) is None):
            raise node.unsupported("a Gemm that is not x times a constant matrix")
        w = self.const(step, 1)
        if w is None or w.ndim != 2 or w.dtype.kind != "f":
            raise node.unsupported("a product by something other than a constant matrix")
        self._consume(step.inputs[0], step)
        bias = None
        if node.op == "Gemm":
            w = node.attr("alpha", 1.0) * (w.T if node.attr("transB", 0) else w)
            c = self.const(step, 2)
            if c is not None:
                bias = self._bias_vector(node, node.attr("beta", 1.0) * c, w.shape[1])
        self._new_layer("dense", step, [(0, step.outputs[0])], kernel=w, bias=bias)

    @staticmethod
    def _bias_vector(node, b, units):
        b = np.asarray(b)
        if b.size not in (1, units) or any(d != 1 for d in b.shape[:-1]):
            raise node.unsupported(f"a bias of shape {b.shape} for {units} units")
        return np.broadcast_to(b.reshape(-1), (units,)).copy()

    def _dense_part(self, step, data):
        """The bias Add and the activation of the Dense layer before it."""
        node = step.node
        last = self.layers[-1] if self.layers else None
        origin = self._origin(step, data)
        if last is None or last.kind != "dense" or origin != len(self.layers) - 1 \
                or last.activation is not None:
            raise node.unsupported("is not the bias or activation of a Dense (Linear) layer: "
                                   "lstmc's Keras-face layers have no other place for it")
        if node.op in _ACTIVATIONS:
            last.activation = node.op
        else:
            other = 1 - data[0]
            b = self.const(step, other) if len(data) == 1 else None
            if b is None or last.bias is not None or (node.op == "Sub" and other == 0):
                raise node.unsupported("is not the bias of a Dense (Linear) layer")
            last.bias = self._bias_vector(node, -b if node.op == "Sub" else b,
                                          last.kernel.shape[1])
        self._pass_on(step, data)

    def _glue(self, step, data):
        node = step.node
        if node.op in _ONE_DATA_OPERAND and len({step.inputs[k] for k in data}) > 1:
            raise node.unsupported("combines two values of the model's data")
        if node.op == "ScatterElements" and (data != [0, 2] or
                                             step.inputs[0] != step.inputs[2]):
            raise node.unsupported("is not a reordering of the model's data")
        if node.op in ("Gather", "GatherElements") and data != [0]:
            raise node.unsupported("indexes with the model's data")
        origin = self._origin(step, data)
        if node.op in _MERGES and origin >= 0 and self.layers[origin].kind == "rnn":
            self.layers[origin].merges.add(_MERGES[node.op])
        self._pass_on(step, data)
        if node.op == "Slice" and len(step.inputs) > 4:
            steps = self.const(step, 4)
            if steps is not None and np.any(steps < 0):
                for s in step.outputs:
                    self.reversed[s] = not self.reversed.get(s, False)

    def _pass_on(self, step, data):
        origin = self._origin(step, data)
        derived = set().union(*(self.rnn_output.get(step.inputs[k], ()) for k in data))
        rev = any(self.reversed.get(step.inputs[k], False) for k in data)
        for s in step.outputs:
            if s:
                self.kind[s], self.origin[s] = "data", origin
                self.rnn_output[s] = derived
                self.reversed[s] = rev


# ---- the candidate models -------------------------------------------------------------------
def _rnn_options(layer):
    """(class name, kwargs) of the Keras-face layer of an RNN node, and its direction options:
    [(bidirectional, go_backwards, merge_mode), ...] to try."""
    node = layer.node
    if 2 in layer.used:
        raise node.unsupported("the chain reads its cell state Y_c")
    if layer.used == {0, 1}:
        raise node.unsupported("the chain reads both its outputs Y and Y_h")
    module = layer.module
    kw = dict(return_sequences=0 in layer.used or not layer.used, use_bias=module.bias)
    if node.op == "LSTM":
        cls = "LSTM"
    elif node.op == "GRU":
        cls, kw["reset_after"] = "GRU", bool(module.reset_after)
    else:
        cls, kw["activation"] = "SimpleRNN", module.nonlinearity
    if layer.direction == "bidirectional":
        merges = sorted(layer.merges) or ["concat"]
        return cls, kw, [(True, False, m) for m in merges]
    if layer.direction == "reverse":
        return cls, kw, [(False, True, None)]
    backwards = [True, False] if layer.reversed_input else [False]
    return cls, kw, [(False, b, None) for b in backwards]


def _keras_rnn_weights(module, op, direction):
    """A module's weights of one direction (lstmc's layout) -> the Keras layer's list."""
    sfx = "_l0" + ("_reverse" if direction else "")
    order = _KERAS_GATES[op]

    def blocks(a):
        H = module.hidden_size
        return np.concatenate([a[g * H:(g + 1) * H] for g in order])

    get = lambda name: getattr(module, name + sfx).data   # noqa: E731
    out = [blocks(get("weight_ih")).T, blocks(get("weight_hh")).T]
    if module.bias:
        b_ih, b_hh = blocks(get("bias_ih")), blocks(get("bias_hh"))
        two = op == "GRU" and module.reset_after   # Keras' GRU(reset_after) keeps both
        out.append(np.stack([b_ih, b_hh]) if two else b_ih + b_hh)
    return out


def _candidates(trace, upto=None):
    """Every reading of the first `upto` layers (default: all) the trace allows, as
    (choice of each layer's options, input time-major, masks)."""
    per_layer = []
    for layer in trace.layers[:upto]:
        if layer.kind == "rnn":
            cls, kw, dirs = _rnn_options(layer)
            per_layer.append([(layer, cls, kw, d) for d in dirs])
        else:
            per_layer.append([(layer, None, None, None)])
    in_rank = _declared_rank(trace.input)
    in_layouts = [False, True] if in_rank is None or in_rank >= 2 else [False]
    masks = any(layer.kind == "rnn" and layer.masked for layer in trace.layers)
    combos = list(product(product(*per_layer), in_layouts))
    if len(combos) > MAX_CANDIDATES:
        raise UnsupportedModelError(f"{len(combos)} ways to read the graph as a chain of "
                                    f"layers, more than lstmc tries ({MAX_CANDIDATES})")
    return [(choice, tin, masks) for choice, tin in combos]


def _declared_rank(arg):
    return None if arg.shape is None else len(arg.shape)


def _build(choice, masks, dtype):
    """The Keras-face Sequential of one candidate, with the graph's weights."""
    from lstmc.keras import layers as K
    from lstmc.keras.models import Sequential

    built = []
    for layer, cls, kw, direction in choice:
        if layer.kind == "embedding":
            V, E = layer.table.shape
            k = K.Embedding(V, E, mask_zero=masks, dtype=dtype)
            built.append((k, [layer.table]))
        elif layer.kind == "dense":
            act = _ACTIVATIONS.get(layer.activation)
            k = K.Dense(layer.kernel.shape[1], activation=act, use_bias=layer.bias is not None,
                        dtype=dtype)
            built.append((k, [layer.kernel] + ([layer.bias] if layer.bias is not None
                                               else [])))
        else:
            bidirectional, backwards, merge = direction
            inner = getattr(K, cls)(layer.module.hidden_size, go_backwards=backwards,
                                    dtype=dtype, **kw)
            k = K.Bidirectional(inner, merge_mode=merge, dtype=dtype) if bidirectional \
                else inner
            op = layer.node.op
            weights = [w for d in range(2 if bidirectional else 1)
                       for w in _keras_rnn_weights(layer.module, op, d)]
            built.append((k, weights))
    model = Sequential([k for k, _ in built])
    return model, built


def _set_weights(model, built, input_shape):
    model.build((None,) + tuple(input_shape))
    for k, weights in built:
        k.set_weights([np.asarray(w) for w in weights])


# ---- choosing by running them ---------------------------------------------------------------
def _choose(session, trace):
    """The first reading whose model computes the graph's output on two random draws; else
    UnsupportedModelError naming the first layer whose input the layers before it do not
    compute (the glue before it does more than move values)."""
    draws = [_inputs(session, trace, seed) for seed in (0, 1)]
    refs = [session.run([trace.output], feeds)[0] for feeds in draws]
    found = _first_reading(trace, None, draws, refs)
    if found is not None:
        model, tin, tout = found
        return Conversion(model, _notes(trace, tin, tout))
    graph = trace.graph
    names = {slot: name for name, slot in graph.slots.items()}
    for k, layer in enumerate(trace.layers[1:], 1):
        name = names[layer.step.inputs[0]]
        inputs = [graph.run([(graph.slots[n], a) for n, a in feeds.items()], [name])[0]
                  for feeds in draws]
        if _first_reading(trace, k, draws, inputs) is None:
            raise layer.node.unsupported(
                f"its input is not the output of {trace.layers[k - 1].node} in any layout "
                "lstmc tried: the nodes between them do more than move values")
    raise UnsupportedModelError(
        f"graph output {trace.output!r} is not the output of {trace.layers[-1].node} in any "
        "layout lstmc tried: the nodes between them do more than move values")


def _first_reading(trace, upto, draws, refs):
    """(model, input time-major, output time-major) of the first reading of the first `upto`
    layers whose model computes `refs` (values in the session, one per draw), or None."""
    dtype = np.dtype(_dtype(trace))
    first = trace.layers[0]
    for choice, tin, masks in _candidates(trace, upto):
        model, built = _build(choice, masks, dtype)
        x0 = draws[0][trace.input.name]
        feature = (None,) if first.kind == "embedding" else (None,) + x0.shape[2:]
        try:
            _set_weights(model, built, feature)
            outs = [_predict(model, feeds[trace.input.name], tin) for feeds in draws]
        except (ValueError, TypeError):   # a reading whose shapes do not fit
            continue
        for tout in (False, True):
            if all(_matches(out, ref, tout, dtype) for out, ref in zip(outs, refs)):
                return model, tin, tout
    return None


def _dtype(trace):
    for layer in trace.layers:
        if layer.kind == "rnn":
            return layer.module.dtype
        if layer.kind == "dense":
            return layer.kernel.dtype
    return trace.layers[0].table.dtype


def _tolerance(dtype):
    return 1e-4 if dtype == np.float32 else 1e-9


def _predict(model, x, time_major):
    if time_major:
        if x.ndim < 2:
            raise ValueError("no time axis")
        x = np.swapaxes(x, 0, 1)
    return model.predict(x, verbose=0)


def _matches(out, ref, time_major, dtype):
    """The model's output equals the session's value (batch and time swapped if time-major)
    within float rounding: max |difference| <= tolerance * max(1, max |value|)."""
    if time_major:
        if out.ndim < 3:
            return False
        out = np.swapaxes(out, 0, 1)
    if out.shape != ref.shape:
        return False
    if not ref.size:
        return True
    scale = max(1.0, float(np.max(np.abs(ref))))
    return float(np.max(np.abs(out.astype(np.float64) - ref))) <= _tolerance(dtype) * scale


def _inputs(session, trace, seed):
    """Random feeds of every graph input, in the declared shapes (symbolic dims get distinct
    sizes; the second draw another set): token ids in the embedding's range, with padding
    zeros when the graph masks them."""
    rng = np.random.default_rng(seed)
    sizes = {}
    choices = [3, 5, 4, 6, 2, 7] if seed == 0 else [5, 3, 6, 4, 7, 2]
    feeds = {}
    for arg in session.get_inputs():
        shape = []
        for d in arg.shape or []:
            if isinstance(d, int) and d >= 0:
                shape.append(d)
            else:
                key = d if isinstance(d, str) else object()
                if key not in sizes:
                    sizes[key] = choices[len(sizes) % len(choices)]
                shape.append(sizes[key])
        dtype = arg.dtype or np.dtype(np.float32)
        if arg.name == trace.input.name and dtype.kind in "iu":
            first = trace.layers[0]
            V = first.table.shape[0] if first.kind == "embedding" else 2
            ids = rng.integers(1 if V > 1 else 0, V, size=shape)
            if any(layer.kind == "rnn" and layer.masked for layer in trace.layers):
                ids[rng.random(shape) < 0.3] = 0
            feeds[arg.name] = ids.astype(dtype)
        elif dtype.kind == "f":
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[arg.name] = np.zeros(shape, dtype)
    return feeds


def _notes(trace, tin, tout):
    """What differs between the ONNX file's conventions and the lstmc model's."""
    graph = trace.graph
    notes = []
    name = trace.input.name
    if tin:
        notes.append(f"input {name!r} is time-major in the ONNX file ({_shape(trace.input)}); "
                     "the lstmc model takes it batch-first (batch, time, ...): swap its first "
                     "two axes")
    if tout:
        notes.append(f"output {trace.output!r} is time-major in the ONNX file "
                     f"({_shape(graph.outputs[0])}); the lstmc model returns it batch-first")
    if trace.other_outputs:
        notes.append("graph outputs not in the lstmc model (it has one output): "
                     + ", ".join(repr(n) for n in trace.other_outputs))
    return notes


def _shape(arg):
    return "shape unknown" if arg.shape is None else \
        "(" + ", ".join(str(d) for d in arg.shape) + ")"
