"""The functional graph of the Keras face: symbolic tensors, the nodes that calling a layer
on them records, and running a graph forward and backward (what `lstmc.models.Model` runs).

    src = Input(shape=(None,), dtype="int32")          # a KerasTensor (batch axis first)
    h = LSTM(8)(Embedding(100, 16, mask_zero=True)(src))   # each call records a Node
    Model(src, Dense(1)(h))

A `Node` is one call of a layer: its input tensors (the call's tensor or list of tensors,
then `initial_state=`'s), its output tensors, and the call's form (`Call`). A layer called
several times (a shared layer) has several nodes and one set of weights.

Running: the nodes in an order where every input is ready (`Graph.nodes`), each node's layer
given the arrays and masks of its inputs (`layer._node_forward`); masks travel beside the
arrays as Keras' do. Backward visits the nodes in reverse, adding up the gradients of a
tensor used by several nodes. A layer keeps what its backward needs from its latest forward
only, so before the backward of an earlier call of a shared layer that call's forward is run
again on the inputs it had, with the random generator put back to the state it had then (the
same dropout draws) and a stateful layer's carried states left as they were.
"""
import itertools
from collections import defaultdict
from typing import NamedTuple

import numpy as np

from lstmc._random import generator

__all__ = ["KerasTensor", "Node", "Call", "Graph", "is_symbolic", "call_symbolic"]

_uids = itertools.count()


class KerasTensor:
    """A symbolic tensor: the `shape` (batch axis first, None where unknown) and `dtype` of
    what a layer's call will give, and where it comes from (`node`, output `index`)."""

    def __init__(self, shape, dtype, node, index):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.node = node
        self.index = index

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def name(self):
        layer = self.node.layer
        return layer.name if len(self.node.outputs) <= 1 else f"{layer.name}_{self.index}"

    def __repr__(self):
        return (f"<KerasTensor shape={self.shape}, dtype={self.dtype}, "
                f"name={self.node.layer.name}[{self.node.index}][{self.index}]>")

    def __array__(self, *args, **kwargs):
        raise TypeError(f"{self!r} is symbolic: it has no values until a Model built on it "
                        "runs (model.predict / model(x))")


class Call(NamedTuple):
    """The form of a layer's call: `listed` (the tensor argument was a list), `n_state` (the
    number of `initial_state=` tensors after it) and the other options (`kwargs`)."""
    listed: bool
    n_state: int
    kwargs: dict


class Node:
    """One call of `layer` on symbolic `inputs`; `outputs` are the tensors it made."""

    def __init__(self, layer, inputs, call):
        self.layer = layer
        self.inputs = list(inputs)
        self.call = call
        self.outputs = []
        self.uid = next(_uids)
        calls = layer.__dict__.setdefault("_inbound_nodes", [])   # layers pickled before
        self.index = len(calls)   # which call of the layer
        calls.append(self)

    @property
    def is_input(self):
        return not self.inputs and not self.call.listed

    @property
    def parents(self):
        return [t.node for t in self.inputs]


def input_tensor(layer):
    """The tensor an InputLayer starts a graph with."""
    node = Node(layer, [], Call(False, 0, {}))
    node.outputs = [KerasTensor((layer.batch_size,) + layer.shape, layer.input_dtype, node, 0)]
    return node.outputs[0]


def _flat(value):
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flat(item)]
    return [value]


def is_symbolic(x, kwargs=None):
    """Whether a call's tensor argument (or a tensor among its keyword arguments) is
    symbolic: then the call records a node instead of running."""
    values = _flat(x) + [v for value in (kwargs or {}).values() for v in _flat(value)]
    return any(isinstance(v, KerasTensor) for v in values)


def call_symbolic(layer, x, kwargs):
    """Records `layer(x, **kwargs)` on symbolic tensors -> its output tensor, or a list of
    them (a layer with several outputs: return_state, return_attention_scores)."""
    kwargs = dict(kwargs)
    listed = isinstance(x, (list, tuple))
    inputs = list(x) if listed else [x]
    states = kwargs.pop("initial_state", None)
    states = [] if states is None else (list(states) if isinstance(states, (list, tuple))
                                        else [states])
    for what, values in (("inputs", inputs), ("initial_state", states)):
        for v in values:
            if not isinstance(v, KerasTensor):
                raise TypeError(f"{layer.name}: in a functional graph every tensor of "
                                f"{what} must be symbolic (an Input or a layer's output), got "
                                f"{type(v).__name__}")
    if listed and not inputs:
        raise ValueError(f"{layer.name} was called on an empty list")
    call = Call(listed, len(states), kwargs)
    layer._check_call(call)
    shapes = [t.shape[1:] for t in inputs + states]
    specs = layer._symbolic_outputs(shapes, call)
    node = Node(layer, inputs + states, call)
    batch = _batch_of(inputs)
    node.outputs = [KerasTensor((batch,) + tuple(shape), dtype, node, i)
                    for i, (shape, dtype) in enumerate(specs)]
    return node.outputs if len(specs) > 1 else node.outputs[0]


def _batch_of(tensors):
    sizes = {t.shape[0] for t in tensors if t.shape[0] is not None}
    return sizes.pop() if len(sizes) == 1 else None


class Graph:
    """The nodes between `inputs` and `outputs` (lists of KerasTensor), ordered as Keras
    orders them, and running them.

    `nodes` is an order where every node comes after the nodes it takes inputs from (a
    depth-first walk back from the outputs); `layers` are the layers, InputLayers first,
    by decreasing depth and, within a depth, in the order the walk met them: Keras 3's
    order of `model.layers`, hence of `get_weights`.
    """

    def __init__(self, inputs, outputs):
        self.inputs, self.outputs = list(inputs), list(outputs)
        if len({id(t) for t in self.inputs}) != len(self.inputs):
            raise ValueError("a Model's inputs must be distinct tensors")
        for t in self.inputs:
            if not (isinstance(t, KerasTensor) and t.node.is_input):
                raise ValueError(f"a Model's inputs must be tensors made by Input(), got "
                                 f"{t!r}")
        for t in self.outputs:
            if not isinstance(t, KerasTensor):
                raise TypeError(f"a Model's outputs must be symbolic tensors, got "
                                f"{type(t).__name__}")
        self.nodes, order = self._walk()
        self._check_connected()
        depth = self._depths()
        layer_depth = {}
        for node in self.nodes + [t.node for t in self.inputs]:
            layer = node.layer
            layer_depth[layer] = max(layer_depth.get(layer, 0), depth.get(node, 0))
        for t in self.inputs:
            order.setdefault(t.node.layer, -1)
        self.layers = sorted(layer_depth, key=lambda l: (-layer_depth[l], order[l]))
        names = [l.name for l in self.layers]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"the name {name!r} is used by {names.count(name)} layers "
                                 "of the model: layer names must be unique")
        self.calls = defaultdict(list)   # layer -> its nodes in this graph
        for node in self.nodes:
            self.calls[node.layer].append(node)
        # node -> its index among its layer's calls in this graph (an input's node: 0), the
        # [call] of Keras' "layer[call][output]" references
        self.call_index = {t.node: 0 for t in self.inputs}
        for nodes in self.calls.values():
            self.call_index.update((node, i) for i, node in enumerate(nodes))
        self.consumers = defaultdict(int)   # tensor id -> how many node inputs read it
        for node in self.nodes:
            for t in node.inputs:
                self.consumers[id(t)] += 1
        self._run = None

    def _walk(self):
        """Nodes from the inputs to the outputs (post-order of a walk back from each output)
        and each layer's index in the order the walk first met it."""
        inputs = {id(t) for t in self.inputs}
        done, active, nodes, order = set(), set(), [], {}

        def visit(tensor):
            node = tensor.node
            if node in done:
                return
            if id(tensor) in inputs or node.is_input:
                if id(tensor) not in inputs:
                    raise ValueError(f"the graph is disconnected: {tensor!r} (an Input) is "
                                     "needed by the outputs but is not among the model's "
                                     "inputs")
                done.add(node)
                return
            if node in active:
                raise ValueError(f"{tensor!r} is part of a cycle")
            order.setdefault(node.layer, len(order))
            active.add(node)
            for t in node.inputs:
                visit(t)
            active.discard(node)
            done.add(node)
            nodes.append(node)

        for t in self.outputs:
            visit(t)
        return nodes, order

    def _check_connected(self):
        ready = {id(t) for t in self.inputs}
        for node in self.nodes:
            for t in node.inputs:
                if id(t) not in ready:
                    raise ValueError(f"the graph is disconnected: {node.layer.name} needs "
                                     f"{t!r}, which the model's inputs do not give")
            ready.update(id(t) for t in node.outputs)

    def _depths(self):
        """Keras' depth of each node: 0 at the outputs, one more than any node it feeds."""
        depth = {}
        for node in reversed(self.nodes):
            d = depth.setdefault(node, 0)
            for parent in node.parents:
                depth[parent] = max(depth.get(parent, 0), d + 1)
        return depth

    # ---- running --------------------------------------------------------------------------
    def forward(self, arrays, training, logits=(), masks=None):
        """Runs the graph on `arrays` (one per input; `masks`: theirs, or None) -> (outputs,
        their masks), lists in the order of `outputs`. `logits`: output positions whose
        Dense layer stops before its activation (a fused loss). With training, what backward
        needs is kept."""
        logit_nodes = {self.outputs[i].node for i in logits}
        values = {id(t): a for t, a in zip(self.inputs, arrays)}
        masks = {id(t): m for t, m in zip(self.inputs, masks or [None] * len(self.inputs))}
        run = _Run() if training else None
        for node in self.nodes:
            xs = [values[id(t)] for t in node.inputs]
            ms = [masks[id(t)] for t in node.inputs]
            layer = node.layer
            shared = training and len(self.calls[layer]) > 1
            if shared:
                run.replay[node] = (xs, ms, _random_state())
            ys, yms = layer._node_forward(xs, ms, training, node.call, node in logit_nodes)
            if training:
                run.latest[layer] = node
            for t, y, m in zip(node.outputs, ys, yms):
                values[id(t)], masks[id(t)] = y, m
        self._run = run
        return [values[id(t)] for t in self.outputs], [masks[id(t)] for t in self.outputs]

    def backward(self, douts, logits=()):
        """Gradients of the outputs (a list, None for an output the loss does not use) back
        through the nodes of the latest training forward: layers add their weights'
        gradients to their parameters' `.grad`. Returns the inputs' gradients (None for an
        input that gets none, such as token ids)."""
        run = self._run
        if run is None:
            raise RuntimeError("backward needs a forward with training=True first")
        logit_nodes = {self.outputs[i].node for i in logits}
        grads = {}
        for t, d in zip(self.outputs, douts):
            _accumulate(grads, t, d)
        after = _random_state()
        for node in reversed(self.nodes):
            dys = [grads.pop(id(t), None) for t in node.outputs]
            if all(d is None for d in dys):
                continue
            layer = node.layer
            if run.latest[layer] is not node:
                self._replay(node, run, node in logit_nodes)
            dxs = layer._node_backward(dys, node.call, node in logit_nodes)
            for t, dx in zip(node.inputs, dxs):
                _accumulate(grads, t, dx)
        _set_random_state(after)
        return [grads.get(id(t)) for t in self.inputs]

    def _replay(self, node, run, logits):
        """Runs `node`'s forward again as it ran (same inputs, same random draws) so that
        its layer's saved state is this call's."""
        xs, ms, state = run.replay[node]
        layer = node.layer
        carried = layer.__dict__.get("_states", _NOTHING)
        _set_random_state(state)
        layer._node_forward(xs, ms, True, node.call, logits)
        if carried is not _NOTHING:
            layer._states = carried
        run.latest[layer] = node


_NOTHING = object()


class _Run:
    """What a training forward keeps for backward: the latest node of each layer and, for
    shared layers, each call's inputs, masks and random state."""

    def __init__(self):
        self.latest, self.replay = {}, {}


def _random_state():
    return generator().bit_generator.state


def _set_random_state(state):
    generator().bit_generator.state = state


def _accumulate(grads, tensor, d):
    if d is None:
        return
    key = id(tensor)
    grads[key] = d if key not in grads else grads[key] + d
