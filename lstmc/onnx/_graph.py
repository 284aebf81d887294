"""An ONNX graph compiled once for the executor: every value gets a slot, the nodes are put
in topological order (a cycle, a missing input or an op lstmc lacks is refused here, naming
the node), each node's operator is built (`_ops`, `_rnn`), and every node fed only by
initializers and constants is run now and becomes a constant. What is left is a list of steps
that `Graph.run` executes without further planning: per run, one call per step.
"""
from typing import NamedTuple

from lstmc.onnx import _rnn  # noqa: F401  (registers LSTM, GRU, RNN)
from lstmc.onnx._node import (TENSOR_TYPES, NodeInfo, UnsupportedModelError, numpy_dtype,
                              tensor_to_array)
from lstmc.onnx._ops import OPS

_DOMAINS = ("", "ai.onnx")
OLDEST_OPSET = 7   # the operators' semantics are followed from here on (issue: opsets 7-22)


class NodeArg:
    """A graph input or output as ONNX Runtime describes it: name, shape (ints, symbolic
    dims as strings, None where unknown; None for an unknown rank) and type
    ('tensor(float)', ...)."""

    __slots__ = ("name", "shape", "type", "dtype")

    def __init__(self, value_info):
        self.name = value_info.name
        self.shape, self.type, self.dtype = None, None, None
        kind = value_info.type.WhichOneof("value") if value_info.HasField("type") else None
        if kind is None:
            return
        if kind != "tensor_type":
            raise UnsupportedModelError(f"graph value {self.name!r}: only tensors are "
                                        "supported (not sequences, maps or optionals)")
        tensor = value_info.type.tensor_type
        if tensor.elem_type:
            self.dtype = numpy_dtype(tensor.elem_type, f"graph value {self.name!r}")
            self.type = f"tensor({TENSOR_TYPES[tensor.elem_type][1]})"
        if tensor.HasField("shape"):
            self.shape = [d.dim_value if d.HasField("dim_value") else
                          d.dim_param if d.HasField("dim_param") else None
                          for d in tensor.shape.dim]

    def __repr__(self):
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


class Step(NamedTuple):
    """One node to run: its kernel and the slots it reads and writes."""
    kernel: object
    inputs: tuple
    outputs: tuple
    node: NodeInfo


def _topological_order(nodes, available):
    """Indices of `nodes` in an order where each node follows the producers of its inputs;
    `available`: the names known before any node (inputs, initializers)."""
    producer = {}
    for i, n in enumerate(nodes):
        for name in n.output:
            if name and (name in producer or name in available):
                raise ValueError(f"node {n.name or '#%d' % i!r} ({n.op_type}): output "
                                 f"{name!r} is already defined")
            if name:
                producer[name] = i
    waiting_on = [0] * len(nodes)
    users = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        for name in set(n.input):
            if not name or name in available:
                continue
            if name not in producer:
                raise ValueError(f"node {n.name or '#%d' % i!r} ({n.op_type}): input {name!r} "
                                 "is not a graph input, an initializer or a node's output")
            waiting_on[i] += 1
            users[producer[name]].append(i)
    ready = [i for i in range(len(nodes)) if waiting_on[i] == 0]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        for j in users[i]:
            waiting_on[j] -= 1
            if waiting_on[j] == 0:
                ready.append(j)
    if len(order) != len(nodes):
        stuck = [nodes[i].name or f"#{i}" for i in range(len(nodes)) if waiting_on[i]]
        raise ValueError(f"the graph has a cycle: nodes {stuck[:5]} wait on each other")
    return order


class Graph:
    """A model's main graph, compiled: slots, constants (initializers and folded values) and
    the steps left to run."""

    def __init__(self, model):
        import onnx.defs   # the schema versions; onnx is present when a model is loaded

        if not model.HasField("graph"):
            raise ValueError("the model has no graph (empty or not an ONNX model)")
        g = model.graph
        opsets = {o.domain: o.version for o in model.opset_import}
        opset = opsets.get("", opsets.get("ai.onnx"))
        if opset is not None and opset < OLDEST_OPSET:
            raise UnsupportedModelError(f"default-domain opset {opset}: lstmc runs opset "
                                        f"{OLDEST_OPSET} and newer")
        self.slots = {"": 0}          # slot 0: omitted optional inputs, discarded outputs
        constants = {}
        for t in g.initializer:
            constants[t.name] = tensor_to_array(t, "initializer")
        self.inputs = [NodeArg(v) for v in g.input if v.name not in constants]
        self.outputs = [NodeArg(v) for v in g.output]
        known = set(constants) | {a.name for a in self.inputs}
        order = _topological_order(g.node, known)
        producers = {name: n for n in g.node for name in n.output if name}
        self.steps = []
        for i in order:
            proto = g.node[i]
            node = NodeInfo(proto, i, opset, constants, producers)
            if proto.domain not in _DOMAINS:
                raise node.unsupported(f"operator domain {proto.domain!r}")
            if opset is None:
                raise ValueError("the model imports no version of the default ONNX opset")
            kernel = _build(node, onnx.defs)
            names = node.inputs
            if all(n == "" or n in constants for n in names):   # fold it
                values = _call(kernel, [constants.get(n) for n in names], node)
                for name, v in zip(proto.output, values):
                    if name:
                        constants[name] = v
                continue
            inputs = tuple(0 if k in node.captured else self._slot(n)
                           for k, n in enumerate(names))
            self.steps.append(Step(kernel, inputs, tuple(self._slot(n) for n in proto.output),
                                   node))
        for arg in self.outputs:
            if arg.name not in self.slots and arg.name not in constants \
                    and arg.name not in known:
                raise ValueError(f"graph output {arg.name!r} is produced by no node")
        for a in self.inputs:
            self._slot(a.name)
        for a in self.outputs:
            self._slot(a.name)
        self.initial = [None] * len(self.slots)
        for name, value in constants.items():
            if name in self.slots:
                self.initial[self.slots[name]] = value
        self._plans = {}

    def _slot(self, name):
        slot = self.slots.get(name)
        if slot is None:
            slot = self.slots[name] = len(self.slots)
        return slot

    def plan(self, names):
        """The steps that compute the outputs `names` and those outputs' slots."""
        key = tuple(names)
        plan = self._plans.get(key)
        if plan is None:
            wanted = {self.slots[n] for n in names}
            steps = []
            for step in reversed(self.steps):
                if wanted.intersection(step.outputs):
                    steps.append(step)
                    wanted.update(step.inputs)
            plan = self._plans[key] = (steps[::-1], [self.slots[n] for n in names])
        return plan

    def run(self, feeds, names):
        """feeds: (slot, array) pairs, already checked. Returns the values of `names`."""
        steps, out_slots = self.plan(names)
        values = self.initial.copy()
        for slot, value in feeds:
            values[slot] = value
        for step in steps:
            results = _call(step.kernel, [values[i] for i in step.inputs], step.node)
            for slot, value in zip(step.outputs, results):
                values[slot] = value
        return [values[i] for i in out_slots]


def _build(node, defs):
    """The node's kernel, after checking that lstmc knows this version of its operator and
    every attribute the node sets."""
    entry = OPS.get(node.op)
    if entry is None:
        raise node.unsupported(f"operator {node.op} is not supported by lstmc's executor")
    builder, verified = entry
    try:
        schema = defs.get_schema(node.op, node.opset, "")
    except Exception:
        raise node.invalid(f"operator {node.op} does not exist at opset {node.opset}") from None
    since = schema.since_version
    _check_arity(node, schema, defs.OpSchema.FormalParameterOption.Single)
    if since > verified:
        raise node.unsupported(f"version {since} of {node.op} (opset {node.opset}); lstmc "
                               f"follows its versions up to {verified}")
    kernel = _call(builder, [node], node)
    unread = node.unread_attributes()
    if unread:
        raise node.unsupported(f"attribute{'s' * (len(unread) > 1)} {', '.join(map(str, unread))} "
                               "not supported")
    return kernel


def _check_arity(node, schema, single):
    """The node's inputs and outputs as many as its schema allows, none required missing: so
    that kernels never meet None where ONNX demands a value."""
    n_in = len(node.inputs)
    if not schema.min_input <= n_in <= schema.max_input \
            or not node.n_outputs <= schema.max_output:
        raise node.invalid(f"{n_in} inputs and {node.n_outputs} outputs; {node.op} takes "
                           f"{schema.min_input} to {schema.max_input} inputs and at most "
                           f"{schema.max_output} outputs")
    for k, formal in enumerate(schema.inputs[:n_in]):
        if formal.option == single and not node.has_input(k):
            raise node.invalid(f"input {k} ({formal.name}) is required")


def _call(kernel, args, node):
    """kernel(*args), its errors naming the node."""
    try:
        return kernel(*args)
    except UnsupportedModelError:
        raise
    except (ValueError, TypeError, IndexError) as e:
        if str(e).startswith(str(node)):
            raise
        raise type(e)(f"{node}: {e}") from e
