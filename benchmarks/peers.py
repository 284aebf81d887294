"""The peers of `python -m lstmc bench`: PyTorch, ONNX Runtime and OpenVINO, built from lstmc's
weights.

lstmc/bench.py (the runner: grids, timing, tables) loads this file when lstmc runs from a
source checkout (it looks beside the package), or from ``--peers-from PATH``; an installed
lstmc without it times lstmc alone. Keeping the peers here keeps torch, onnx and onnxruntime
out of the library's imports.

How each peer runs a row (float32, time-major input, the weights of lstmc's module for the row):

* torch: ``nn.LSTM`` / ``GRU`` / ``RNN`` with lstmc's ``state_dict``. ``fwd``: ``eval()`` +
  ``torch.no_grad()``; ``train``: ``(out * dout).sum().backward()`` with ``x.requires_grad``
  so that, like lstmc, it computes dx; ``variable_length`` rows: a
  ``pack_padded_sequence(..., enforce_sorted=False)`` / ``pad_packed_sequence`` pair (packing
  is timed: users pay it); ``streaming_step`` rows: ``nn.LSTMCell`` (GRUCell, RNNCell) under
  ``no_grad`` (``nn.LSTM`` on one step re-lays its weights out every call on the oneDNN path:
  milliseconds). Threads: ``torch.set_num_threads(n)``.
* ORT: ONNX Runtime on ``onnx_model``, one ``LSTM`` / ``GRU`` / ``RNN`` node per layer
  (``sequence_lens`` for variable-length rows; streaming rows: a T=1 model with the states as
  inputs and outputs). Inference only. A session per thread count with
  ``intra_op_num_threads = n``, ``inter_op_num_threads = 1``, sequential execution, all graph
  optimizations.
* OpenVINO: the same ONNX model compiled for the CPU with ``INFERENCE_PRECISION_HINT`` f32
  (on CPUs with BF16 its default is bf16, about 3e-3 off), ``INFERENCE_NUM_THREADS = n``, one
  stream, the latency hint. Inference only.
* lstmc.onnx: lstmc's own ONNX runtime (``lstmc.onnx.load``) on the same ONNX model, threads
  from ``lstmc.set_num_threads``. Not a peer in the "best peer" sense (it is lstmc): its column
  says what running the ONNX file costs over lstmc's native modules, and the summary of the
  ``onnx_file`` rows compares it with the ONNX runtimes above.

A peer is an entry of ``PEERS``: its column label, how to import it, how to build a row's
``(runner, check)`` (see ``lstmc.bench.make_lstmc``), how to set its threads, the note
printed under the table, and two flags: ``onnx_file`` (it runs the row's ONNX model) and
``lstmc`` (it is lstmc itself through another API). A new peer is one more entry.
"""
from typing import Callable, NamedTuple, Optional

import numpy as np

from lstmc.bench import CELL_CLASS, module_kwargs, streaming_runner


# ---------------------------------------------------------------------------------------------
# ONNX: the same network as an ONNX graph, from PyTorch-layout weights

# PyTorch's gate blocks, reordered into ONNX's: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h.
ONNX_GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)}
ONNX_OP = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
ONNX_OPSET = 14


def _onnx_gates(a, cell):
    """Reorder the gate blocks (first axis) of a PyTorch weight or bias into ONNX's order."""
    blocks = np.split(np.asarray(a, dtype=np.float32), len(ONNX_GATE_ORDER[cell]))
    return np.concatenate([blocks[k] for k in ONNX_GATE_ORDER[cell]])


def onnx_model(cell, state_dict, input_size, hidden_size, num_layers=1, bidirectional=False,
               nonlinearity="tanh", with_lengths=False, with_state=False, reset_after=True):
    """An ONNX model (onnx.ModelProto) of lstmc.nn.LSTM / GRU / RNN with these weights.

    ``state_dict`` has PyTorch's names and shapes (lstmc's or torch's ``state_dict()``). One
    ONNX ``LSTM`` / ``GRU`` / ``RNN`` node per layer (GRU with ``linear_before_reset =
    reset_after``: 1 is the GRU of torch and lstmc's default; W and R with the gate blocks
    reordered, B = [Wb, Rb]);
    a bidirectional layer's (T, 2, B, H) output becomes the next layer's (T, B, 2H) input.

    Inputs: ``x`` (T, B, input_size) float32; ``lengths`` (B,) int32 (ONNX ``sequence_lens``)
    when ``with_lengths``; ``h0_l{k}`` (and ``c0_l{k}`` for LSTM), each (D, B, H), per layer
    when ``with_state`` (else zeros). Outputs: ``y`` (T, B, D*H), ``h_n`` (L*D, B, H) and, for
    LSTM, ``c_n`` — the layout of lstmc's and torch's outputs.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if cell not in ONNX_OP:
        raise ValueError("cell must be one of %s, got %r" % (", ".join(ONNX_OP), cell))
    if any(k.startswith("weight_hr") for k in state_dict):
        raise ValueError("state_dict has weight_hr (proj_size > 0): ONNX's LSTM has no "
                         "projection")
    D = 2 if bidirectional else 1
    H = hidden_size
    suffixes = ("", "_reverse")[:D]
    dirs = dict(direction="bidirectional" if bidirectional else "forward")
    attrs = dict(hidden_size=H, **dirs)
    if cell == "gru":
        attrs["linear_before_reset"] = int(bool(reset_after))
    if cell == "rnn":
        attrs["activations"] = [nonlinearity.capitalize()] * D
    nodes, inits = [], []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", input_size])]
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"]))
    states = ("h", "c") if cell == "lstm" else ("h",)
    finals = {s: [] for s in states}
    x = "x"
    for k in range(num_layers):
        def weight(prefix):
            return np.stack([_onnx_gates(state_dict["%s_l%d%s" % (prefix, k, s)], cell)
                             for s in suffixes])
        names = [x, "W_l%d" % k, "R_l%d" % k]
        inits += [numpy_helper.from_array(weight("weight_ih"), names[1]),
                  numpy_helper.from_array(weight("weight_hh"), names[2])]
        if "bias_ih_l%d" % k in state_dict:
            names.append("B_l%d" % k)
            bias = np.concatenate([weight("bias_ih"), weight("bias_hh")], axis=1)
            inits.append(numpy_helper.from_array(bias, names[3]))
        else:
            names.append("")
        names.append("lengths" if with_lengths else "")
        for s in states:
            if with_state:
                name = "%s0_l%d" % (s, k)
                inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [D, "B", H]))
                names.append(name)
            else:
                names.append("")
        while names[-1] == "":
            names.pop()
        y = "Y_l%d" % k
        outs = [y] + ["%sn_l%d" % (s, k) for s in states]
        for s, o in zip(states, outs[1:]):
            finals[s].append(o)
        nodes.append(helper.make_node(ONNX_OP[cell], names, outs, name="%s_l%d" % (cell, k),
                                      **attrs))
        # (T, D, B, H) -> (T, B, D*H)
        x = "x_l%d" % (k + 1) if k + 1 < num_layers else "y"
        if D == 1:
            axes = "axes_l%d" % k
            inits.append(numpy_helper.from_array(np.array([1], np.int64), axes))
            nodes.append(helper.make_node("Squeeze", [y, axes], [x]))
        else:
            shape = "shape_l%d" % k
            inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), shape))
            nodes.append(helper.make_node("Transpose", [y], [y + "_t"], perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [y + "_t", shape], [x]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "B", D * H])]
    for s in states:
        nodes.append(helper.make_node("Concat", finals[s], ["%s_n" % s], axis=0))
        outputs.append(helper.make_tensor_value_info("%s_n" % s, TensorProto.FLOAT,
                                                     [num_layers * D, "B", H]))
    graph = helper.make_graph(nodes, "lstmc_" + cell, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="lstmc")
    onnx.checker.check_model(model)
    return model


def ort_session(model, threads):
    """An ONNX Runtime CPU session: intra-op threads = threads, sequential, all optimizations."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])



# ---------------------------------------------------------------------------------------------
# the peers' runners: per row, runner(mode, threads) -> a callable (None: mode not supported)
# and check() -> the forward output (streaming rows: h after CHECK_STEPS steps from zero state)

def make_torch(torch, c, data, sd):
    """torch.nn.LSTM / GRU / RNN (streaming rows: the Cell) with lstmc's weights."""
    tsd = {k: torch.from_numpy(v.copy()) for k, v in sd.items()}
    if c["section"] == "streaming_step":
        kw = dict(nonlinearity=c["nonlinearity"]) if c["cell"] == "rnn" else {}
        m = getattr(torch.nn, CELL_CLASS[c["cell"]] + "Cell")(c["I"], c["H"], **kw)
        m.load_state_dict({k[:-len("_l0")]: v for k, v in tsd.items()})
        m.eval()
        B, H = c["B"], c["H"]
        lstm = c["cell"] == "lstm"

        def zeros():
            z = lambda: torch.zeros(B, H)  # noqa: E731
            return (z(), z()) if lstm else z()

        def step(x_t, state):
            with torch.no_grad():
                state = m(torch.from_numpy(x_t), state)
            return (state[0] if lstm else state), state
        return streaming_runner(lambda threads: step, zeros, data)

    m = getattr(torch.nn, CELL_CLASS[c["cell"]])(c["I"], c["H"], **module_kwargs(c))
    m.load_state_dict(tsd)
    xt = torch.from_numpy(data["x"])
    xg = xt.clone().requires_grad_(True)
    doutt = torch.from_numpy(data["dout"])
    T = c["T"]
    rnn = torch.nn.utils.rnn
    lengths = None if c["lengths"] is None else torch.from_numpy(c["lengths"])

    def run(inp):
        if lengths is None:
            return m(inp)[0]
        packed = rnn.pack_padded_sequence(inp, lengths, enforce_sorted=False)
        return rnn.pad_packed_sequence(m(packed)[0], total_length=T)[0]

    def fwd():
        with torch.no_grad():
            return run(xt)

    def train():
        xg.grad = None
        m.zero_grad()
        (run(xg) * doutt).sum().backward()

    def runner(mode, threads):
        (m.eval if mode == "fwd" else m.train)()
        return fwd if mode == "fwd" else train

    def check():
        m.eval()
        return fwd().numpy()
    return runner, check


def openvino_session(model, threads, precision="f32"):
    """An OpenVINO CPU compiled model of an onnx.ModelProto, as run(names, feed) -> list:
    float32 inference (INFERENCE_PRECISION_HINT f32: by default OpenVINO runs bf16 on CPUs
    that have it, about 3e-3 off; precision="bf16" asks for that), `threads` inference
    threads, one stream, latency hint."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString()), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def run(names, feed):
        out = request.infer(feed)
        return [out[n] for n in names]
    return run


def make_onnx_peer(session_of):
    """make(module, row, data, state_dict) of a peer that runs onnx_model(...) with lstmc's
    weights: session_of(model, threads) -> run(output_names, feed) -> list of arrays. One
    session per thread count, built when that count is first asked for (the previous one is
    dropped). Inference only: runner("train", n) is None."""
    def make(lib, c, data, sd):
        streaming = c["section"] == "streaming_step"
        model = onnx_model(c["cell"], sd, c["I"], c["H"], c["L"], c["bidirectional"],
                           c["nonlinearity"] or "tanh", with_lengths=c["lengths"] is not None,
                           with_state=streaming)
        held = {}

        def session(threads):
            if held.get("threads") != threads:
                held.clear()
                held.update(threads=threads, run=session_of(model, threads))
            return held["run"]

        states = ("h", "c") if c["cell"] == "lstm" else ("h",)
        if streaming:
            shape = (1, c["B"], c["H"])
            names = ["%s_n" % s for s in states]

            def zeros():
                return [np.zeros(shape, np.float32) for _ in states]

            def make_step(threads):
                run = session(threads or held.get("threads", 1))

                def step(x_t, state):
                    feed = {"x": x_t[None]}
                    feed.update(("%s0_l0" % s, v) for s, v in zip(states, state))
                    state = run(names, feed)
                    return state[0], state
                return step
            return streaming_runner(make_step, zeros, data)

        feed = {"x": data["x"]}
        if c["lengths"] is not None:
            feed["lengths"] = c["lengths"].astype(np.int32)

        def runner(mode, threads):
            if mode != "fwd":
                return None
            run = session(threads)
            return lambda: run(["y"], feed)

        def check():
            return session(held.get("threads", 1))(["y"], feed)[0]
        return runner, check
    return make


# ---------------------------------------------------------------------------------------------
# the registry

class Peer(NamedTuple):
    label: str                     # its column heading: "<label> ms"
    load: Callable                 # () -> its module; ImportError when not installed
    make: Callable                 # (module, row, data, state_dict) -> (runner, check)
    set_threads: Optional[Callable]   # (module, n): library-wide thread count, or None
    note: str                      # a line under the timings table
    onnx_file: bool = False        # runs the row's ONNX model (onnx_model)
    lstmc: bool = False            # lstmc itself through another API: never the "best peer"


def _load_torch():
    import torch
    return torch


def _load_ort():
    import onnx  # noqa: F401  (builds the graph)
    import onnxruntime
    return onnxruntime


def _load_openvino():
    import onnx  # noqa: F401  (builds the graph)
    import openvino
    return openvino


def _load_lstmc_onnx():
    import onnx  # noqa: F401  (builds the graph; lstmc.onnx.load reads it)

    import lstmc.onnx  # noqa: F401
    import lstmc
    return lstmc


def lstmc_onnx_session(model, threads):
    """lstmc.onnx.load of the model, as run(names, feed) -> list; its threads are lstmc's
    (the runner's set_num_threads)."""
    import lstmc.onnx
    return lstmc.onnx.load(model).run


PEERS = {
    "torch": Peer("torch", _load_torch, make_torch, lambda torch, n: torch.set_num_threads(n),
                  "torch: nn.LSTM / GRU / RNN with lstmc's weights; train with x.requires_grad "
                  "so dx is computed, packed sequences for variable-length rows; step = "
                  "nn.LSTMCell under no_grad."),
    "ort": Peer("ORT", _load_ort,
                make_onnx_peer(lambda model, threads: ort_session(model, threads).run), None,
                "ORT: one ONNX LSTM / GRU (linear_before_reset=1) / RNN node per layer built "
                "from lstmc's weights (sequence_lens for variable-length rows; step = a T=1 "
                "session), intra_op_num_threads = threads, inter_op 1, sequential, all graph "
                "optimizations; inference only (train: —).", onnx_file=True),
    "openvino": Peer("OpenVINO", _load_openvino, make_onnx_peer(openvino_session), None,
                     "OpenVINO: the same ONNX model as ORT, compiled for the CPU with "
                     "INFERENCE_PRECISION_HINT f32 (its default on BF16 CPUs is bf16), "
                     "INFERENCE_NUM_THREADS = threads, one stream, latency hint; inference "
                     "only. Its outputs at padded steps of variable-length rows are not zeros "
                     "(the check compares valid steps only).", onnx_file=True),
    "lstmc.onnx": Peer("lstmc.onnx", _load_lstmc_onnx, make_onnx_peer(lstmc_onnx_session), None,
                       "lstmc.onnx: lstmc's ONNX runtime (lstmc.onnx.load) on the same ONNX "
                       "model as ORT and OpenVINO, lstmc's threads; lstmc itself, so never the "
                       "best peer; inference only.", onnx_file=True, lstmc=True),
}
