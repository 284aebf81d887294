"""ONNX's LSTM, GRU and RNN nodes on lstmc.nn's modules (and so on lstmc's kernels).

A node becomes one single-layer module: LSTM; GRU with reset_after for linear_before_reset=1
and lstmc's reset-before cell for 0; RNN with tanh or relu. ONNX's gate blocks are reordered
into lstmc's (PyTorch's) once, when the module is built: at load when W, R and B are constants
(the module stays in eval mode, so lstmc packs its weights once), per run when they arrive as
graph inputs. Shapes map without copies where the layouts agree: layout 0 is lstmc's
time-major input, and Y (T, D, B, H) is a view of lstmc's output (T, B, D*H).

ONNX's `sequence_lens` are lstmc's `lengths`, with the same conventions (spec.md section 4):
zeros in Y past a row's length, Y_h / Y_c the states after the row's last valid step, and the
backward direction over each row's own valid prefix; a row of length 0 keeps its initial
state (ONNX leaves that case open; ONNX Runtime returns zeros). ONNX's direction="reverse"
alone runs the forward module on each row's valid prefix reversed in time, and reverses Y
back.

The other attributes become the modules' cell options (lstmc.reference specifies them):
`clip` is cell_clip, LSTM's `input_forget` and peepholes `P` (its rows i, o, f reordered into
lstmc's peephole_l0 rows i, f, o) are the LSTM's input_forget and peepholes, and
`activations` with `activation_alpha` / `activation_beta` are the modules' activations: each
function that reads an alpha (beta) takes the next value of its list in the order of the
activations, or its ONNX operator's default once the list is used up. An all-zero P is no
peepholes (the same outputs without the work). Peepholes fed at run time build the module per
run, as weights fed at run time do.
"""
import numpy as np

from lstmc import nn
from lstmc._random import generator
from lstmc.onnx._node import tensor_to_array
from lstmc.onnx._ops import op
from lstmc.reference import ACTIVATION_DEFAULTS

# ONNX gate blocks -> lstmc's: LSTM i,o,f,c -> i,f,g,o; GRU z,r,h -> r,z,n
_GATE_ORDER = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2), "RNN": (0,)}
_DEFAULT_ACTIVATIONS = {"LSTM": ("sigmoid", "tanh", "tanh"), "GRU": ("sigmoid", "tanh"),
                        "RNN": ("tanh",)}
_STATES = (5, 6)   # initial_h, initial_c
_P = 7             # LSTM's peephole input


class _RecurrentNode:
    """One LSTM / GRU / RNN node: its attributes, read once, and the module it runs on."""

    def __init__(self, node):
        self.node = node
        self.op = node.op
        direction = node.attr("direction", b"forward")
        self.direction = direction.decode() if isinstance(direction, bytes) else direction
        if self.direction not in ("forward", "reverse", "bidirectional"):
            raise node.invalid(f"direction {self.direction!r} is not forward, reverse or "
                               "bidirectional")
        self.D = 2 if self.direction == "bidirectional" else 1
        self.layout = int(node.attr("layout", 0))
        if self.layout not in (0, 1):
            raise node.invalid(f"layout must be 0 or 1, got {self.layout}")
        self.hidden_size = node.attr("hidden_size")
        self.options = self._options()
        self.fixed = None
        fixed = (1, 2, 3) + ((_P,) if self.op == "LSTM" else ())
        if all(node.is_const(i) or (i in (3, _P) and not node.has_input(i)) for i in fixed):
            self.fixed = self.module(node.const(1), node.const(2), node.const(3),
                                     node.const(_P) if self.op == "LSTM" else None)
            node.capture(*fixed)   # the module holds them, in lstmc's layout
        for state in _STATES:
            if _always_zero(node, state):
                node.capture(state)   # runs pass None: lstmc's zero state, nothing computed
        self.n_outputs = node.n_outputs

    def _options(self):
        """The module's keyword arguments from the attributes."""
        node = self.node
        options = {}
        if node.has_attr("clip"):
            clip = node.attr("clip")
            if not clip > 0:
                raise node.invalid(f"clip must be > 0, got {clip}")
            options["cell_clip"] = float(clip)
        if self.op == "LSTM":
            input_forget = node.attr("input_forget", 0)
            if input_forget not in (0, 1):
                raise node.invalid(f"input_forget must be 0 or 1, got {input_forget}")
            options["input_forget"] = bool(input_forget)
        acts = self._activations()
        if self.op == "RNN" and all(a == ("relu", None, None) for a in acts) \
                and "cell_clip" not in options:
            options["nonlinearity"] = "relu"     # the default cell's own kernel
        elif [a[0] for a in acts] != list(_DEFAULT_ACTIVATIONS[self.op] * self.D):
            options["activations"] = acts
        if self.op == "GRU":
            options["reset_after"] = bool(node.attr("linear_before_reset", 0))
        return options

    def _activations(self):
        """(name, alpha, beta) per function of `activations` (D times the cell's slots), with
        activation_alpha / activation_beta consumed in order by the functions that read
        them, each function's ONNX default once a list is used up."""
        node = self.node
        default = _DEFAULT_ACTIVATIONS[self.op] * self.D
        given = node.attr("activations")
        names = default if given is None else tuple(
            (a.decode() if isinstance(a, bytes) else a).lower() for a in given)
        if len(names) != len(default):
            raise node.invalid(f"activations lists {len(names)} functions, {self.op} "
                               f"{self.direction} takes {len(default)}")
        lists = {key: list(node.attr("activation_" + key) or ()) for key in ("alpha", "beta")}
        acts = []
        for name in names:
            if name not in ACTIVATION_DEFAULTS:
                raise node.invalid(f"activations: unknown function {name!r}; ONNX's are "
                                   f"{sorted(ACTIVATION_DEFAULTS)}")
            values = {"alpha": None, "beta": None}
            for key, fallback in ACTIVATION_DEFAULTS[name]:
                values[key] = lists[key].pop(0) if lists[key] else fallback
                if values[key] is None:
                    raise node.invalid(f"activations: {name} needs activation_{key}, and "
                                       "ONNX defines no default for it")
            acts.append((name, values["alpha"], values["beta"]))
        return acts

    def _peepholes(self, P, H):
        """ONNX's P (D, 3H), rows i, o, f -> lstmc's (D, 3, H), rows i, f, o; None when
        absent or all zero."""
        if P is None:
            return None
        if P.shape != (self.D, 3 * H):
            raise self.node.invalid(f"P (peepholes) must have shape {(self.D, 3 * H)}, got "
                                    f"{P.shape}")
        if not np.any(P != 0):
            return None
        return P.reshape(self.D, 3, H)[:, [0, 2, 1]]

    def module(self, W, R, B, P=None):
        """The lstmc.nn module of weights W (D, G*H, I), R (D, G*H, H), B (D, 2*G*H) or
        None and LSTM peepholes P (D, 3*H) or None, in eval mode, with ONNX's gate blocks
        in lstmc's order."""
        node, D = self.node, self.D
        order = _GATE_ORDER[self.op]
        G = len(order)
        if W.ndim != 3 or R.ndim != 3 or W.shape[0] != D or R.shape[0] != D:
            raise node.invalid(f"W and R must be ({D}, G*H, .), got {W.shape} and {R.shape}")
        H = R.shape[2]
        if self.hidden_size is not None and H != self.hidden_size:
            raise node.invalid(f"hidden_size is {self.hidden_size} but R has shape {R.shape}")
        I = W.shape[2]
        if W.shape[1] != G * H or R.shape[1] != G * H:
            raise node.invalid(f"W {W.shape} and R {R.shape} must have {G} * {H} rows")
        if B is not None and B.shape != (D, 2 * G * H):
            raise node.invalid(f"B must have shape {(D, 2 * G * H)}, got {B.shape}")
        if W.dtype not in (np.float32, np.float64):
            raise node.unsupported(f"weights of type {W.dtype}: lstmc runs float32 and "
                                   "float64")
        if R.dtype != W.dtype or (B is not None and B.dtype != W.dtype):
            raise node.invalid("W, R and B differ in type")
        if P is not None and P.dtype != W.dtype:
            raise node.invalid("W and P differ in type")
        peepholes = self._peepholes(P, H)
        state = {}
        for d in range(D):
            if peepholes is not None:
                state["peephole_l0" + ("_reverse" if d else "")] = peepholes[d]
            sfx = "_l0" + ("_reverse" if d else "")
            state["weight_ih" + sfx] = W[d].reshape(G, H, I)[list(order)].reshape(G * H, I)
            state["weight_hh" + sfx] = R[d].reshape(G, H, H)[list(order)].reshape(G * H, H)
            if B is not None:
                b = B[d].reshape(2, G, H)[:, list(order)].reshape(2, G * H)
                state["bias_ih" + sfx], state["bias_hh" + sfx] = b[0], b[1]
        rng = generator().bit_generator
        seed_state = rng.state   # the module's random initial weights are overwritten below:
        options = dict(self.options, peepholes=True) if peepholes is not None else self.options
        module = getattr(nn, self.op)(I, H, bias=B is not None, batch_first=bool(self.layout),
                                      bidirectional=D == 2, dtype=W.dtype, **options)
        rng.state = seed_state   # loading a model leaves lstmc's random stream as it was
        module.load_state_dict(state)
        return module.eval()

    def __call__(self, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None,
                 P=None):
        module = self.fixed or self.module(W, R, B, P)
        if X.ndim != 3:
            raise self.node.invalid(f"X must be 3-D, got shape {X.shape}")
        if X.dtype != module.dtype:
            raise TypeError(f"{self.node}: X is {X.dtype} but the weights are {module.dtype}")
        tax = self.layout   # the time axis
        T, batch = X.shape[tax], X.shape[1 - tax]
        lengths = None
        if sequence_lens is not None:
            lengths = np.asarray(sequence_lens)
            if lengths.shape != (batch,) or lengths.dtype.kind not in "iu" \
                    or (batch and (lengths.min() < 0 or lengths.max() > T)):
                raise self.node.invalid(f"sequence_lens must be {batch} integers in [0, {T}], "
                                        f"got {lengths.dtype} of shape {lengths.shape}")
            if np.all(lengths == T):
                lengths = None   # the dense path: no sorting, no packing
        reverse = self.direction == "reverse"
        if reverse:
            X = _reverse_time(X, lengths, tax)
        # torch.onnx.export feeds zero states built from the input's shape; as None they let
        # the kernels skip the first step's recurrent product (H512 B1 T25 LSTM at one
        # thread: 3.24 ms with zeros given, 3.07 ms with None; lstmc.nn.LSTM timed both ways)
        h0, c0 = _none_if_zero(initial_h), _none_if_zero(initial_c)
        if self.layout:
            h0 = None if h0 is None else h0.transpose(1, 0, 2)
            c0 = None if c0 is None else c0.transpose(1, 0, 2)
        if self.op == "LSTM":
            y, (h, c) = module(X, (h0, c0), lengths=lengths)
        else:
            (y, h), c = module(X, h0, lengths=lengths), None
        if reverse:
            y = _reverse_time(y, lengths, tax)
        H = module.hidden_size
        if self.layout:
            Y = y.reshape(y.shape[0], T, self.D, H)
            h = h.transpose(1, 0, 2)
            c = None if c is None else c.transpose(1, 0, 2)
        else:
            Y = y.reshape(T, y.shape[1], self.D, H).transpose(0, 2, 1, 3)
        return (Y, h, c)[:self.n_outputs]


# operators whose output is zeros when their first input is (the others only shape it)
_ZEROS_STAY_ZEROS = ("Expand", "Slice", "Reshape", "Squeeze", "Unsqueeze", "Transpose",
                     "Identity", "Cast")


def _always_zero(node, i):
    """Input i is zeros in every run: a constant of zeros, a ConstantOfShape of 0, or one
    reshaped, sliced or expanded, as exporters write the default state from the input's shape
    (torch.onnx.export: per run, that subgraph cost ~40 us of the ~50 us an I8 H8 B1 T25
    LSTM took; it is no longer run). Follows a bounded chain of producers."""
    name = node.inputs[i] if node.has_input(i) else None
    for _ in range(16):
        if name is None:
            return False
        if node.constant(name) is not None:
            return not node.constant(name).any()
        p = node.producer(name)
        if p is None or p.domain not in ("", "ai.onnx"):
            return False
        if p.op_type == "ConstantOfShape":
            value = [a for a in p.attribute if a.name == "value"]
            return not value or (value[0].HasField("t")
                                 and not tensor_to_array(value[0].t, str(node)).any())
        name = p.input[0] if p.op_type in _ZEROS_STAY_ZEROS and p.input else None
    return False


def _none_if_zero(state):
    return None if state is None or not state.any() else state


def _reverse_time(x, lengths, tax):
    """Each row's valid prefix reversed in time along axis tax (0 or 1); padding stays."""
    if lengths is None:
        return np.flip(x, tax)
    t = np.arange(x.shape[tax])[:, None]
    L = lengths.astype(np.intp)[None, :]
    idx = np.where(t < L, L - 1 - t, t)            # (T, B)
    b = np.arange(L.shape[1])[None, :]
    return x[idx, b] if tax == 0 else x[b.T, idx.T]


for _name, _verified in (("LSTM", 22), ("GRU", 22), ("RNN", 22)):
    op(_name, _verified)(_RecurrentNode)
