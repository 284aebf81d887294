"""What lstmc's tests share: one comparison, the cells, their builders and tolerances.

Comparison (every numerical check of the suite goes through ``close_report``):

* ``assert_close(name, actual, expected, rtol, atol)`` -- elementwise
  ``|actual - expected| <= atol + rtol * |expected|`` (numpy.allclose semantics, computed in
  float64; NaN matches NaN, an inf the same inf); on failure it prints and raises the max
  abs / max rel difference of the tensor, where the worst element is, and how many fail.
* ``Checks`` -- the same check for many tensors, raising once with every mismatch listed
  (``close(..., scaled=True)`` multiplies atol by ``max(1, max|expected|)``).
* ``assert_all_close(actual, expected, rtol, atol)`` -- two dicts of tensors, by name.
* ``numerical_grad`` / ``central_difference`` -- central differences of a scalar function.

Cells: ``CELLS`` names the six configurations a concern shared by every cell is
parametrised over (the ids used in test names): ``lstm``, ``lstm_proj``, ``gru``
(reset_after=True, PyTorch), ``gru_rb`` (reset_after=False, Keras v1), ``rnn_tanh``,
``rnn_relu``; ``make_module`` / ``make_cell`` build them.

Tolerances: ``KERNEL_TOL[dtype].out`` / ``.grad`` are docs/spec.md §7's (rtol, atol) of a
kernel against the float64 reference (atol scaled by ``max(1, max|expected|)``);
``THREAD_TOL`` bounds 1 vs 2 threads (see test_threads.py).
"""
import os
from collections import namedtuple

import numpy as np
import pytest

import lstmc

# ------------------------------------------------------------------------------------------
# comparison


def to_numpy(a):
    """numpy view/copy of a numpy array, a (CPU) torch tensor, or anything array-like."""
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def close_report(name, actual, expected, rtol, atol):
    """None if ``actual`` is close to ``expected``, else a message describing the worst
    differences. NaN matches NaN, +-inf matches the same inf; shapes must agree exactly."""
    a, e = to_numpy(actual), to_numpy(expected)
    if a.shape != e.shape:
        return f"{name}: shape {a.shape} (actual) != {e.shape} (expected)"
    if a.size == 0:
        return None
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a64 - e64)
        ok = (diff <= atol + rtol * np.abs(e64)) | (a64 == e64) | (np.isnan(a64) & np.isnan(e64))
    if ok.all():
        return None
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN vs number: count as infinitely far
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(e64))
    iabs = np.unravel_index(np.argmax(diff), diff.shape)
    irel = np.unravel_index(np.argmax(rel), rel.shape)
    return (
        f"{name}: {int((~ok).sum())}/{a.size} elements outside atol={atol:.3g} + rtol={rtol:.3g}*|expected| "
        f"(shape {a.shape}, dtypes {a.dtype}/{e.dtype}, max|expected| {np.nanmax(np.abs(e64)):.4g})\n"
        f"    max abs diff {diff[iabs]:.4g} at {tuple(int(i) for i in iabs)}: "
        f"actual {a64[iabs]!r}, expected {e64[iabs]!r}\n"
        f"    max rel diff {rel[irel]:.4g} at {tuple(int(i) for i in irel)}: "
        f"actual {a64[irel]!r}, expected {e64[irel]!r}"
    )


def assert_close(name, actual, expected, rtol, atol):
    """Raise AssertionError (and print) with the max abs / max rel difference if not close."""
    msg = close_report(name, actual, expected, rtol, atol)
    if msg is not None:
        print(msg)
        raise AssertionError(msg)


def scale_of(expected):
    """max(1, max|expected|): the factor a scaled atol is multiplied by."""
    e = to_numpy(expected)
    return max(1.0, float(np.max(np.abs(e)))) if e.size else 1.0


class Checks:
    """Collects every mismatching tensor, so that one failure lists all of them."""

    def __init__(self, header=""):
        self.header = header
        self.messages = []

    def close(self, name, actual, expected, rtol, atol, scaled=True):
        """Within rtol / atol (atol times max(1, max|expected|) when ``scaled``)."""
        if actual is None:
            self.messages.append(f"{name}: lstmc returned None")
            return
        msg = close_report(name, actual, expected, rtol, atol * (scale_of(expected) if scaled else 1.0))
        if msg is not None:
            self.messages.append(msg)

    def exact(self, name, actual, expected):
        msg = close_report(name, actual, expected, 0.0, 0.0)
        if msg is not None:
            self.messages.append(msg + "  [must be exact]")

    def fail(self, text):
        self.messages.append(text)

    def raise_if_any(self):
        if self.messages:
            text = f"{self.header}\n{len(self.messages)} tensor(s) differ:\n" + "\n".join(self.messages)
            print(text)
            raise AssertionError(text)


def assert_all_close(actual, expected, rtol, atol, header=""):
    """Every tensor of the dict ``expected`` against ``actual[name]``, reported together."""
    chk = Checks(header or f"tensors differ (rtol={rtol}, atol={atol})")
    for name, want in expected.items():
        chk.close(name, actual[name], want, rtol, atol, scaled=False)
    chk.raise_if_any()


def central_difference(f, a, idx, eps=1e-6):
    """(f(a + eps e_idx) - f(a - eps e_idx)) / (2 eps) for the scalar f(), perturbing the
    element ``idx`` of array ``a`` in place (and restoring it)."""
    old = a[idx]
    a[idx] = old + eps
    f_plus = f()
    a[idx] = old - eps
    f_minus = f()
    a[idx] = old
    return (f_plus - f_minus) / (2 * eps)


def keras_or_skip():
    """Keras 3 on its torch backend (KERAS_BACKEND, unless set), or the test is skipped."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception:   # not installed, or no usable backend
        pytest.skip("keras (with its torch backend) is not installed")
    return keras


def numerical_grad(f, a, eps=1e-6):
    """Central-difference gradient of the scalar f() w.r.t. every element of array a."""
    g = np.empty_like(a)
    for idx in np.ndindex(a.shape):
        g[idx] = central_difference(f, a, idx, eps)
    return g


# ------------------------------------------------------------------------------------------
# tolerances

Tol = namedtuple("Tol", "out grad")

# docs/spec.md §7: a kernel against the float64 reference, (rtol, atol) with atol scaled by
# max(1, max|expected|)
KERNEL_TOL = {
    np.float32: Tol(out=(1e-4, 1e-5), grad=(1e-3, 1e-4)),
    np.float64: Tol(out=(1e-10, 1e-10), grad=(1e-10, 1e-10)),
}

# 1 vs 2 threads, times max(1, max|tensor|) (the measurement is in test_threads.py)
THREAD_TOL = {np.float32: 4e-6, np.float64: 5e-15}


# ------------------------------------------------------------------------------------------
# the cells

Cell = namedtuple("Cell", "cls options gates")

CELLS = {
    "lstm": Cell("LSTM", {}, 4),
    "lstm_proj": Cell("LSTM", {"proj_size": 3}, 4),
    "gru": Cell("GRU", {"reset_after": True}, 3),
    "gru_rb": Cell("GRU", {"reset_after": False}, 3),   # reset before the matmul (Keras v1 / ONNX 0)
    "rnn_tanh": Cell("RNN", {"nonlinearity": "tanh"}, 1),
    "rnn_relu": Cell("RNN", {"nonlinearity": "relu"}, 1),
}
GRU_RNN = ["gru", "gru_rb", "rnn_tanh", "rnn_relu"]
TORCH_GRU_RNN = ["gru", "rnn_tanh", "rnn_relu"]       # what torch can express


def cpu_flags():
    """The CPU's feature flags (Linux /proc/cpuinfo), or [] where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f
                         if line.startswith("flags")), [])
    except OSError:
        return []


def runnable_kernels(force, kernel_for, names):
    """The kernels of `names` this CPU runs: force(name) each in turn and keep those
    kernel_for() then names (a forced kernel the CPU lacks falls back to another); "auto"
    again at the end."""
    out = []
    for k in names:
        force(k)
        if kernel_for() == k:
            out.append(k)
    force("auto")
    return out


def make_module(cell, input_size, hidden_size, dtype=np.float32, **kwargs):
    """An lstmc.nn sequence module of ``cell``; ``kwargs`` override the cell's options."""
    c = CELLS[cell]
    return getattr(lstmc.nn, c.cls)(input_size, hidden_size, dtype=dtype,
                                    **{**c.options, **kwargs})


def make_cell(cell, input_size, hidden_size, dtype=np.float32, bias=True):
    """The one-step lstmc.nn cell (LSTMCell / GRUCell / RNNCell) of ``cell``."""
    c = CELLS[cell]
    options = {k: v for k, v in c.options.items() if k != "proj_size"}
    return getattr(lstmc.nn, c.cls + "Cell")(input_size, hidden_size, bias=bias, dtype=dtype,
                                             **options)


def expected_names(L, bidirectional, bias, proj_size=0):
    """Parameter names in PyTorch's order."""
    names = []
    for k in range(L):
        for sfx in [""] + (["_reverse"] if bidirectional else []):
            names += [f"weight_ih_l{k}{sfx}", f"weight_hh_l{k}{sfx}"]
            if bias:
                names += [f"bias_ih_l{k}{sfx}", f"bias_hh_l{k}{sfx}"]
            if proj_size:
                names.append(f"weight_hr_l{k}{sfx}")
    return names


def random_params(rng, gates, I, H, L=1, D=1, P=0, bias=True, scale=0.6):
    """Random parameters U(-scale, scale) with PyTorch's names and shapes, for a cell of
    ``gates`` gates per unit (LSTM 4, GRU 3, RNN 1; P > 0: an LSTM projection)."""
    H_out = P or H
    params = {}
    for layer in range(L):
        in_size = I if layer == 0 else D * H_out
        for direction in range(D):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            params["weight_ih" + sfx] = rng.uniform(-scale, scale, (gates * H, in_size))
            params["weight_hh" + sfx] = rng.uniform(-scale, scale, (gates * H, H_out))
            if bias:
                params["bias_ih" + sfx] = rng.uniform(-scale, scale, gates * H)
                params["bias_hh" + sfx] = rng.uniform(-scale, scale, gates * H)
            if P:
                params["weight_hr" + sfx] = rng.uniform(-scale, scale, (P, H))
    return params


def random_lengths(rng, T, B):
    """B lengths drawn from 0..T (zeros included)."""
    return rng.integers(0, T + 1, size=B)


def params64(module):
    """A module's parameters by name, widened to float64."""
    return {k: np.asarray(v, dtype=np.float64) for k, v in module.state_dict().items()}


def grads_by_name(module):
    """Copies of a module's parameter gradients by name."""
    return {n: np.array(p.grad, copy=True) for n, p in module.named_parameters()}


def pad_mask(T, lengths, B):
    """(T, B) bool, True at valid positions."""
    if lengths is None:
        return np.ones((T, B), dtype=bool)
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


# ReLU and float32: a pre-activation within float32 rounding of 0 may take the other branch
# of relu in the kernel than in the float64 reference (or torch), which changes that unit's
# gradient by O(1) -- a false failure, not a bug. A float32 relu case therefore measures how
# close its pre-activations come to 0 relative to the size of the terms they sum
# (``relu_margin``) and redraws its data (up to RELU_ATTEMPTS times) until that is at least
# RELU_MARGIN (~80 float32 epsilons); should that never happen, only forward values count.
RELU_MARGIN = 1e-5
RELU_ATTEMPTS = 12


def relu_margin(x_tm, params, L, D, h0=None, lengths=None, masks=None):
    """Smallest relative distance of a relu RNN's pre-activations from the kink, in float64:
    min over all units and steps of |pre| / (|W_ih| |x| + |W_hh| |h| + |b_ih| + |b_hh|), the
    denominator being the size of the terms whose rounding decides pre's sign.

    A plain per-row loop, independent of lstmc.reference (used only to decide whether float32
    gradients can be compared, see the module docstring). x_tm (T, B, I); h0 (D*L, B, H)."""
    x_tm = np.asarray(x_tm, np.float64)
    T, B, _ = x_tm.shape
    H = params["weight_hh_l0"].shape[0]
    lens = np.full(B, T) if lengths is None else np.asarray(lengths)
    margin = np.inf
    layer_in = x_tm
    for k in range(L):
        if k > 0 and masks is not None:
            layer_in = layer_in * np.asarray(masks[k - 1], np.float64)
        out = np.zeros((T, B, D * H))
        for d in range(D):
            sfx = "_reverse" if d else ""
            w_ih, w_hh = params[f"weight_ih_l{k}{sfx}"], params[f"weight_hh_l{k}{sfx}"]
            b_ih = params.get(f"bias_ih_l{k}{sfx}", np.zeros(H))
            b_hh = params.get(f"bias_hh_l{k}{sfx}", np.zeros(H))
            for r in range(B):
                h = np.zeros(H) if h0 is None else np.asarray(h0[k * D + d, r], np.float64)
                steps = range(lens[r]) if d == 0 else range(lens[r] - 1, -1, -1)
                for t in steps:
                    xi = layer_in[t, r]
                    pre = w_ih @ xi + b_ih + w_hh @ h + b_hh
                    size = np.abs(w_ih) @ np.abs(xi) + np.abs(w_hh) @ np.abs(h) + np.abs(b_ih) + np.abs(b_hh)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        rel = np.where(size > 0, np.abs(pre) / size, np.inf)
                    margin = min(margin, float(np.min(rel)))
                    h = np.maximum(pre, 0.0)
                    out[t, r, d * H:(d + 1) * H] = h
        layer_in = out
    return margin


def _reference_functions(m):
    """(forward, backward, options) of lstmc.reference for lstmc.nn module or cell ``m``;
    a sequence module's cell clip (and LSTM input_forget) go with the options, peepholes come
    with its parameters. Modules with other activations than the defaults are refused here
    (tests/test_cell_options.py passes them to the reference itself)."""
    from lstmc import nn
    from lstmc import reference as ref
    sequence = isinstance(m, (nn.LSTM, nn.GRU, nn.RNN))
    cell_options = {}
    if sequence:
        if getattr(m, "_activations", None) is not None:
            raise NotImplementedError("module_reference: pass non-default activations to "
                                      "lstmc.reference yourself")
        cell_options["clip"] = m._cell_clip
    if isinstance(m, (nn.LSTM, nn.LSTMCell)):
        step = isinstance(m, nn.LSTMCell)
        return ((ref.lstm_cell_forward, ref.lstm_cell_backward, {}) if step else
                (ref.lstm_forward, ref.lstm_backward,
                 {"proj_size": m.proj_size, "input_forget": m._input_forget, **cell_options}))
    if isinstance(m, (nn.GRU, nn.GRUCell)):
        step = isinstance(m, nn.GRUCell)
        fns = (ref.gru_cell_forward, ref.gru_cell_backward) if step else (ref.gru_forward, ref.gru_backward)
        return (*fns, {"reset_after": m.reset_after, **cell_options})
    step = isinstance(m, nn.RNNCell)
    fns = (ref.rnn_cell_forward, ref.rnn_cell_backward) if step else (ref.rnn_forward, ref.rnn_backward)
    return (*fns, {"nonlinearity": m.nonlinearity, **cell_options})


def as_list(states):
    """A module's states as a list: [h] or, for the LSTM, [h, c]."""
    return list(states) if isinstance(states, tuple) else [states]


def reference_forward(m, x, states=None, lengths=None, dropout_masks=None, params=None):
    """The float64 reference of lstmc.nn sequence module ``m`` (its own parameters, or
    ``params``) on time-major ``x``: (out, final states as a list, cache). ``states``: the
    initial states as a list ([h] or [h, c]) or None."""
    forward, _, options = _reference_functions(m)
    params = params64(m) if params is None else params
    hx = None
    if states is not None:
        hx = [np.asarray(a, np.float64) for a in states]
        hx = hx[0] if len(hx) == 1 else tuple(hx)
    masks = None if not dropout_masks else [np.asarray(a, np.float64) for a in dropout_masks]
    out, finals, cache = forward(np.asarray(x, np.float64), params, num_layers=m.num_layers,
                                 bidirectional=m.bidirectional, hx=hx, lengths=lengths,
                                 dropout_masks=masks, **options)
    return out, as_list(finals), cache


def reference_backward(m, cache, dout, dstates=None):
    """The reference's backward for ``m``: (dx, the initial states' gradients as a list,
    grads by name). ``dstates``: the final states' gradients as a list (entries may be None)
    or None."""
    _, backward, _ = _reference_functions(m)
    d = None
    if dstates is not None:
        d = [None if a is None else np.asarray(a, np.float64) for a in dstates]
        d = d[0] if len(d) == 1 else tuple(d)
    dx, dinit, grads = backward(cache, np.asarray(dout, np.float64), d)
    return dx, as_list(dinit), grads


def reference_step(c, x, states, dfinals):
    """Forward and backward of the reference of one-step cell ``c`` (2-D x; states and
    dfinals lists): (finals, dx, dinits, grads by the short names w_ih, ...)."""
    forward, backward, options = _reference_functions(c)
    p = {n: np.asarray(v.data, np.float64) for n, v in c.named_parameters()}
    w = [p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh")]
    f64 = [np.asarray(a, np.float64) for a in states]
    *finals, cache = forward(np.asarray(x, np.float64), *f64, *w, **options)
    res = backward(cache, *[np.asarray(a, np.float64) for a in dfinals])
    return finals, res[0], list(res[1:-1]), res[-1]


def module_reference(m, x, lengths=None):
    """The float64 reference output of lstmc.nn sequence module `m` on time-major `x`."""
    return reference_forward(m, x, lengths=lengths)[0]
