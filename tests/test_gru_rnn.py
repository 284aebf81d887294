"""lstmc.nn.GRU / RNN / GRUCell / RNNCell: torch parity, kernels vs reference, bad input.

Three parts, in this order:

1. Parity with torch.nn.GRU / RNN / GRUCell / RNNCell (each test skips without torch; the rest
   of the file runs without it). A torch module is built under ``torch.manual_seed``, its
   ``state_dict()`` is loaded into the lstmc module, and both backpropagate
   ``sum(out * W1) + sum(h_n * W2)``, i.e. ``module.backward(W1, W2)``. Compared: out, h_n, dx,
   dh0 and every parameter gradient by name. Tolerances as in test_torch_parity.py: float64
   rtol 1e-9 / atol 1e-12 * scale; float32 rtol 2e-4, atol 1e-5 (values) or 1e-5 * scale
   (gradients), scale = max(1, max|torch|). Rows of length 0 (torch cannot pack them) are cut
   out of the torch run and checked exactly: h_n = h0, dh0 = dh_n, out = dx = 0.
2. The kernels against the float64 NumPy reference (lstmc.reference.gru_* / rnn_*), with
   hypothesis over shapes, layers, directions, bias, layouts, lengths (zeros included),
   hx, dh_n and dropout (masks taken from ``module._last_dropout_masks``), for GRU
   reset_after=True and False (torch cannot express False: the reference is its only check)
   and RNN tanh / relu. SPEC section 7 tolerances, atol scaled by max(1, max|expected|):
   float64 1e-10 / 1e-10; float32 outputs rtol 1e-4 / atol 1e-5, gradients 1e-3 / 1e-4.
   Wide cases (H >= 40, B >= 16) run at 2 threads so that the threaded path is checked.
3. Bad input (SPEC section 6): ValueError / TypeError / RuntimeError with the argument named.

ReLU and float32: a pre-activation that lies within float32 rounding of 0 may take the other
branch of relu in the kernel than in the float64 reference (or torch), which changes that
unit's gradient by O(1) -- a false failure, not a bug. Every float32 relu case therefore
measures how close its pre-activations come to 0 relative to the size of the terms they sum
(in float64, ``relu_margin``) and redraws its data until that is >= RELU_MARGIN (1e-5, ~80 float32
epsilons); should that never happen, only the forward values are compared.
"""
import itertools
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmc
from helpers import assert_close, close_report
from lstmc import reference as ref

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]

# kind -> (module class name, extra constructor kwargs, gates per unit)
KINDS = {
    "gru": ("GRU", {"reset_after": True}, 3),
    "gru_rb": ("GRU", {"reset_after": False}, 3),     # reset before the matmul (Keras v1 / ONNX 0)
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}, 1),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}, 1),
}
ALL_KINDS = list(KINDS)
TORCH_KINDS = ["gru", "rnn_tanh", "rnn_relu"]        # what torch can express

RELU_MARGIN = 1e-5   # of the summed terms' size (~80 float32 eps); see the docstring
RELU_ATTEMPTS = 12


# ==========================================================================================
# shared helpers


def make_module(kind, input_size, hidden_size, dtype=np.float32, **kwargs):
    cls, extra, _ = KINDS[kind]
    return getattr(lstmc.nn, cls)(input_size, hidden_size, dtype=dtype, **extra, **kwargs)


def make_cell(kind, input_size, hidden_size, dtype=np.float32, bias=True):
    cls, extra, _ = KINDS[kind]
    return getattr(lstmc.nn, cls + "Cell")(input_size, hidden_size, bias=bias, dtype=dtype,
                                           **extra)


def ref_forward(kind, x, params, num_layers, bidirectional, hx=None, lengths=None,
                dropout_masks=None):
    _, extra, _ = KINDS[kind]
    fn = ref.gru_forward if kind.startswith("gru") else ref.rnn_forward
    return fn(x, params, num_layers=num_layers, bidirectional=bidirectional, hx=hx,
              lengths=lengths, dropout_masks=dropout_masks, **extra)


def ref_backward(kind, cache, dout, dh_n=None):
    fn = ref.gru_backward if kind.startswith("gru") else ref.rnn_backward
    return fn(cache, dout, dh_n)


def ref_cell_forward(kind, x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    _, extra, _ = KINDS[kind]
    fn = ref.gru_cell_forward if kind.startswith("gru") else ref.rnn_cell_forward
    return fn(x, h, w_ih, w_hh, b_ih, b_hh, **extra)


def ref_cell_backward(kind, cache, dh1):
    fn = ref.gru_cell_backward if kind.startswith("gru") else ref.rnn_cell_backward
    return fn(cache, dh1)


def expected_names(L, bidirectional, bias):
    names = []
    for k in range(L):
        for sfx in [""] + (["_reverse"] if bidirectional else []):
            names += [f"weight_ih_l{k}{sfx}", f"weight_hh_l{k}{sfx}"]
            if bias:
                names += [f"bias_ih_l{k}{sfx}", f"bias_hh_l{k}{sfx}"]
    return names


def params64(module):
    return {k: np.asarray(v, dtype=np.float64) for k, v in module.state_dict().items()}


def grads_by_name(module):
    return {n: np.array(p.grad, copy=True) for n, p in module.named_parameters()}


def pad_mask(T, lengths, B):
    """(T, B) bool, True at valid positions."""
    if lengths is None:
        return np.ones((T, B), dtype=bool)
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


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


class Checks:
    """Collects every mismatching tensor (conftest.close_report), so one failure lists all."""

    def __init__(self, header=""):
        self.header = header
        self.messages = []

    def close(self, name, actual, expected, rtol, atol, scaled=True):
        expected = np.asarray(expected)
        if actual is None:
            self.messages.append(f"{name}: lstmc returned None")
            return
        scale = max(1.0, float(np.max(np.abs(expected)))) if scaled and expected.size else 1.0
        msg = close_report(name, actual, expected, rtol, atol * scale)
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


# ==========================================================================================
# 2. kernels vs reference

TOL_OUT = {np.float32: (1e-4, 1e-5), np.float64: (1e-10, 1e-10)}
TOL_GRAD = {np.float32: (1e-3, 1e-4), np.float64: (1e-10, 1e-10)}
GRID_EXAMPLES = 50       # per kind and dtype
SMALL_EXAMPLES = 15
_SETTINGS = dict(deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def grid_cases(draw):
    T = draw(st.integers(1, 6))
    layout = draw(st.sampled_from(["tm", "bf", "unbatched"]))
    B = 1 if layout == "unbatched" else draw(st.integers(1, 5))
    lengths = None
    if layout != "unbatched":
        lengths = draw(st.one_of(st.none(), st.lists(st.integers(0, T), min_size=B, max_size=B)))
    L = draw(st.integers(1, 3))
    return dict(
        T=T, B=B, I=draw(st.integers(1, 9)), H=draw(st.integers(1, 9)), L=L,
        layout=layout,
        bidirectional=draw(st.booleans()),
        bias=draw(st.booleans()),
        lengths=lengths,
        len_dtype=draw(st.sampled_from([np.int64, np.int32])),
        hx=draw(st.booleans()),
        dh_n=draw(st.booleans()),
        dropout=draw(st.sampled_from([0.0, 0.0, 0.4])) if L > 1 else 0.0,
        pad_fill=draw(st.sampled_from(["random", "nan"])),
        wscale=draw(st.sampled_from([None, 0.5, 1.2])),   # None: the module's default init
        xscale=draw(st.sampled_from([1.0, 3.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def run_case(kind, case, dtype):
    """Forward + backward through lstmc and the reference; returns a Checks (not raised)."""
    T, B, I_, H_, L = (case[k] for k in ("T", "B", "I", "H", "L"))
    bi, layout = case["bidirectional"], case["layout"]
    D, G = (2 if bi else 1), KINDS[kind][2]
    bf, unb = layout == "bf", layout == "unbatched"
    rng = np.random.default_rng(case["seed"])
    lstmc.manual_seed(case["seed"])
    mod = make_module(kind, I_, H_, dtype=dtype, num_layers=L, bias=case["bias"],
                      batch_first=bf, dropout=case["dropout"], bidirectional=bi)
    names = [n for n, _ in mod.named_parameters()]
    assert names == expected_names(L, bi, case["bias"]), names
    for n, p in mod.named_parameters():
        rows = G * H_
        cols = (I_ if n.startswith("weight_ih_l0") else D * H_) if n.startswith("weight_ih") else H_
        want = (rows,) if n.startswith("bias") else (rows, cols)
        assert p.data.shape == want and p.grad.shape == want, (n, p.data.shape, want)
        assert p.data.dtype == dtype and p.grad.dtype == dtype, n
    if case["wscale"] is not None:
        w = case["wscale"]
        mod.load_state_dict({k: rng.uniform(-w, w, v.shape) for k, v in mod.state_dict().items()})
    params = params64(mod)

    lengths = None if case["lengths"] is None else np.array(case["lengths"], case["len_dtype"])
    valid = pad_mask(T, lengths, B)                              # (T, B)
    full = (T, B) if not unb else (T, 1)

    checks = Checks(f"{kind} vs reference, {np.dtype(dtype).name}, case {case}")
    grads_comparable = True
    for attempt in range(RELU_ATTEMPTS):
        x_tm = (case["xscale"] * rng.standard_normal((*full, I_))).astype(dtype)
        h0 = rng.standard_normal((D * L, B, H_)).astype(dtype) if case["hx"] else None
        dout_tm = rng.standard_normal((*full, D * H_)).astype(dtype)
        dh_n = rng.standard_normal((D * L, B, H_)).astype(dtype) if case["dh_n"] else None
        # padding of x / dout is garbage (or NaN) for lstmc; the reference gets zeros there
        x_in_tm, dout_in_tm = x_tm.copy(), dout_tm.copy()
        if case["pad_fill"] == "nan":
            x_in_tm[~valid], dout_in_tm[~valid] = np.nan, np.nan
        x_tm[~valid], dout_tm[~valid] = 0, 0

        if unb:
            x_in, dout_in = x_in_tm[:, 0], dout_in_tm[:, 0]
            h0_in = None if h0 is None else h0[:, 0]
            dh_n_in = None if dh_n is None else dh_n[:, 0]
        else:
            sw = (lambda a: np.ascontiguousarray(np.swapaxes(a, 0, 1))) if bf else (lambda a: a)
            x_in, dout_in, h0_in, dh_n_in = sw(x_in_tm), sw(dout_in_tm), h0, dh_n
        keep = [None if a is None else a.copy() for a in (x_in, dout_in, h0_in, dh_n_in, lengths)]

        mod.train()
        mod.zero_grad()
        out, h_n = mod(x_in, h0_in, lengths=lengths)
        masks = [np.array(m, copy=True) for m in mod._last_dropout_masks]
        if unb:   # (T, D*H) or (T, 1, D*H) for an unbatched call: compare as a batch of one
            masks = [m.reshape(T, 1, -1) for m in masks]
        if kind != "rnn_relu" or dtype != np.float32:
            break
        if relu_margin(x_tm, params, L, D, h0, lengths, masks or None) >= RELU_MARGIN:
            break
    else:
        grads_comparable = False   # forward values only (see the module docstring)
        checks.header += " [float32 relu: no draw clear of the kink, gradients not compared]"

    if case["dropout"] > 0 and L > 1:
        assert len(masks) == L - 1, len(masks)
        for m in masks:
            assert m.shape == (T, B, D * H_), (m.shape, (T, B, D * H_))
            s = 1.0 / (1.0 - case["dropout"])
            assert np.all((m == 0) | np.isclose(m, s, rtol=1e-6, atol=0)), np.unique(m)
    else:
        assert len(masks) == 0, "no dropout configured, but _last_dropout_masks is not empty"

    dx, dh0 = mod.backward(dout_in, dh_n_in)
    grads = grads_by_name(mod)
    for a, b in zip((x_in, dout_in, h0_in, dh_n_in, lengths), keep):
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg="an input array was modified")

    out_shape = (T, D * H_) if unb else ((B, T, D * H_) if bf else (T, B, D * H_))
    h_shape = (D * L, H_) if unb else (D * L, B, H_)
    for name, a, shape in (("out", out, out_shape), ("h_n", h_n, h_shape),
                           ("dx", dx, x_in.shape), ("dh0", dh0, h_shape)):
        if name == "dh0" and a is None and h0 is None:
            continue
        assert a is not None, f"{name} is None"
        assert a.shape == shape, f"{name}: shape {a.shape}, expected {shape}"
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}"

    if unb:
        out_tm, dx_tm = out[:, None], dx[:, None]
        h_n3 = h_n[:, None]
        dh03 = None if dh0 is None else dh0[:, None]
    else:
        tmj = (lambda a: np.swapaxes(a, 0, 1)) if bf else (lambda a: a)
        out_tm, dx_tm, h_n3, dh03 = tmj(out), tmj(dx), h_n, dh0
    checks.exact("out [padding]", out_tm[~valid], np.zeros_like(out_tm[~valid]))
    checks.exact("dx [padding]", dx_tm[~valid], np.zeros_like(dx_tm[~valid]))

    r_out, r_hn, cache = ref_forward(kind, x_tm.astype(np.float64), params, L, bi,
                                     hx=None if h0 is None else h0.astype(np.float64),
                                     lengths=lengths,
                                     dropout_masks=[m.astype(np.float64) for m in masks] or None)
    r_dx, r_dh0, r_grads = ref_backward(kind, cache, dout_tm.astype(np.float64),
                                        None if dh_n is None else dh_n.astype(np.float64))
    to, tg = TOL_OUT[dtype], TOL_GRAD[dtype]
    checks.close("out", out_tm, r_out, *to)
    checks.close("h_n", h_n3, r_hn, *to)
    if grads_comparable:
        checks.close("dx", dx_tm, r_dx, *tg)
        if dh03 is not None:
            checks.close("dh0", dh03, r_dh0, *tg)
        if set(grads) != set(r_grads):
            checks.fail(f"grad names: lstmc {sorted(grads)} != reference {sorted(r_grads)}")
        else:
            for n in names:
                checks.close(f"grad {n}", grads[n], r_grads[n], *tg)
    return checks


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", ALL_KINDS)
@settings(max_examples=GRID_EXAMPLES, **_SETTINGS)
@given(case=grid_cases())
def test_matches_reference(kind, dtype, case):
    run_case(kind, case, dtype).raise_if_any()


def _corner(**kw):
    base = dict(T=1, B=1, I=1, H=1, L=1, layout="tm", bidirectional=False, bias=True,
                lengths=None, len_dtype=np.int64, hx=False, dh_n=False, dropout=0.0,
                pad_fill="random", wscale=None, xscale=1.0, seed=1)
    base.update(kw)
    return base


CORNERS = {
    "all-ones": _corner(),
    "big-bidir-bf-dropout": _corner(T=6, B=5, I=9, H=9, L=3, layout="bf", bidirectional=True,
                                    lengths=[0, 6, 3, 0, 1], hx=True, dh_n=True, dropout=0.4,
                                    pad_fill="nan", wscale=1.2, xscale=3.0, seed=2),
    "all-lengths-zero": _corner(T=5, B=4, I=3, H=7, L=2, bidirectional=True, bias=False,
                                lengths=[0, 0, 0, 0], len_dtype=np.int32, hx=True, dh_n=True,
                                seed=3),
    "no-row-full-length": _corner(T=4, B=3, I=5, H=2, L=2, layout="bf", bidirectional=True,
                                  lengths=[2, 2, 2], dh_n=True, seed=4),
    "unbatched-bidir": _corner(T=6, I=4, H=3, L=3, layout="unbatched", bidirectional=True,
                               hx=True, dh_n=True, dropout=0.4, seed=5),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("name", list(CORNERS))
def test_matches_reference_corners(kind, dtype, name):
    run_case(kind, CORNERS[name], dtype).raise_if_any()


@pytest.fixture
def restore_threads():
    n = lstmc.get_num_threads()
    yield
    lstmc.set_num_threads(n)


# 1 vs 2 threads: same bound as tests/test_threads.py (times max(1, max|tensor|))
THREAD_TOL = {np.float32: 4e-6, np.float64: 5e-15}

WIDE = {
    "H48-B17": _corner(T=4, B=17, I=10, H=48, L=2, bidirectional=True,
                       lengths=list(np.arange(17) % 5), hx=True, dh_n=True, dropout=0.3, seed=48),
    "H130-B33": _corner(T=3, B=33, I=12, H=130, L=1, bidirectional=True,
                        lengths=list(np.arange(33) % 4), hx=True, dh_n=True, seed=130),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("name", list(WIDE))
def test_matches_reference_two_threads(restore_threads, kind, dtype, name):
    """H >= 40 and B >= 16 (B * H >= 4096 for the second): the kernels split the work across
    threads; against the reference at 2 threads, and 1 vs 2 threads within rounding."""
    case = WIDE[name]
    lstmc.set_num_threads(2)
    run_case(kind, case, dtype).raise_if_any()

    rng = np.random.default_rng(case["seed"])
    lstmc.manual_seed(0)
    mod = make_module(kind, case["I"], case["H"], dtype=dtype, num_layers=case["L"],
                      bidirectional=True)   # no dropout: both runs must see the same network
    x = rng.standard_normal((case["T"], case["B"], case["I"])).astype(dtype)
    lengths = np.array(case["lengths"])
    dout = rng.standard_normal((case["T"], case["B"], 2 * case["H"])).astype(dtype)

    def fwd_bwd(n):
        lstmc.set_num_threads(n)
        mod.zero_grad()
        out, h_n = mod(x, lengths=lengths)
        res = {"out": np.array(out), "h_n": np.array(h_n)}
        dx, dh0 = mod.backward(dout)
        res.update(dx=np.array(dx), dh0=np.array(dh0), **{f"grad {k}": v for k, v in grads_by_name(mod).items()})
        return res

    r1, r2, r2b = fwd_bwd(1), fwd_bwd(2), fwd_bwd(2)
    bad = []
    for k in r1:
        np.testing.assert_array_equal(r2[k], r2b[k], err_msg=f"{k}: 2 threads not deterministic")
        scale = max(1.0, float(np.max(np.abs(r1[k]))))
        d = float(np.max(np.abs(r1[k].astype(np.float64) - r2[k]))) / scale
        if not d <= THREAD_TOL[dtype]:
            bad.append(f"{k}: max|1 thread - 2 threads| / scale = {d:.3e}")
    # relu: a flipped kink between thread counts is possible in float32; outputs stay close
    if kind == "rnn_relu" and dtype == np.float32:
        bad = [b for b in bad if b.startswith(("out", "h_n"))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", ALL_KINDS)
@settings(max_examples=SMALL_EXAMPLES, **_SETTINGS)
@given(Bc=st.one_of(st.none(), st.integers(1, 5)), Ic=st.integers(1, 9), Hc=st.integers(1, 9),
       bias=st.booleans(), hx=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_cell_matches_reference(kind, dtype, Bc, Ic, Hc, bias, hx, seed):
    rng = np.random.default_rng(seed)
    lstmc.manual_seed(seed)
    cell = make_cell(kind, Ic, Hc, dtype=dtype, bias=bias)
    G = KINDS[kind][2]
    p = params64(cell)
    want_names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
    assert [n for n, _ in cell.named_parameters()] == want_names
    assert p["weight_ih"].shape == (G * Hc, Ic) and p["weight_hh"].shape == (G * Hc, Hc)
    lead = () if Bc is None else (Bc,)
    comparable = True
    for attempt in range(RELU_ATTEMPTS):
        x = rng.standard_normal((*lead, Ic)).astype(dtype)
        h0 = rng.standard_normal((*lead, Hc)).astype(dtype) if hx else np.zeros((*lead, Hc), dtype)
        if kind != "rnn_relu" or dtype != np.float32:
            break
        pl0 = {k + "_l0": v for k, v in p.items()}
        if relu_margin(x.reshape(1, -1, Ic), pl0, 1, 1, h0.reshape(1, -1, Hc)) >= RELU_MARGIN:
            break
    else:
        comparable = False
    cell.train()
    cell.zero_grad()
    h1 = cell(x, h0 if hx else None)
    assert h1.shape == (*lead, Hc) and h1.dtype == dtype
    h1 = np.array(h1)
    dh1 = rng.standard_normal((*lead, Hc)).astype(dtype)
    dx, dh = cell.backward(dh1)
    assert dx.shape == x.shape and dx.dtype == dtype
    grads = grads_by_name(cell)

    as2d = (lambda a: a[None]) if Bc is None else (lambda a: a)
    back = (lambda a: a[0]) if Bc is None else (lambda a: a)
    r_h1, cache = ref_cell_forward(kind, as2d(x).astype(np.float64), as2d(h0).astype(np.float64),
                                   p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"))
    r_dx, r_dh, r_g = ref_cell_backward(kind, cache, as2d(dh1).astype(np.float64))
    to, tg = TOL_OUT[dtype], TOL_GRAD[dtype]
    chk = Checks(f"{kind} cell vs reference, {np.dtype(dtype).name}, B={Bc} I={Ic} H={Hc} "
                 f"bias={bias} hx={hx} seed={seed}")
    chk.close("h1", h1, back(r_h1), *to)
    if comparable:
        chk.close("dx", dx, back(r_dx), *tg)
        if dh is not None or hx:
            chk.close("dh", dh, back(r_dh), *tg)
        short = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh"}
        for n in grads:
            chk.close(f"grad {n}", grads[n], r_g[short[n]], *tg)
    chk.raise_if_any()


def test_reset_after_false_differs_from_true():
    """The two GRU variants share tensors but not equations: on the same weights they must
    give different outputs (guards against the flag being ignored), each its own reference's."""
    rng = np.random.default_rng(9)
    a = lstmc.nn.GRU(4, 6, num_layers=2, reset_after=True, dtype=np.float64)
    b = lstmc.nn.GRU(4, 6, num_layers=2, reset_after=False, dtype=np.float64)
    sd = {k: rng.uniform(-0.8, 0.8, v.shape) for k, v in a.state_dict().items()}
    a.load_state_dict(sd)
    b.load_state_dict(sd)
    x = rng.standard_normal((5, 3, 4))
    oa, _ = a(x)
    ob, _ = b(x)
    assert np.max(np.abs(oa - ob)) > 1e-3, "reset_after=False computes the same as True"
    # each matches its own reference
    for mod, ra in ((a, True), (b, False)):
        r_out, r_hn, _ = ref.gru_forward(x, sd, num_layers=2, reset_after=ra)
        out, h_n = mod(x)
        assert_close(f"out reset_after={ra}", out, r_out, 1e-10, 1e-10)
        assert_close(f"h_n reset_after={ra}", h_n, r_hn, 1e-10, 1e-10)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_dropout_seed_and_eval(kind):
    rng = np.random.default_rng(12)
    T_, B_, I_, H_, L, p = 6, 5, 4, 8, 3, 0.3
    mod = make_module(kind, I_, H_, dtype=np.float64, num_layers=L, dropout=p,
                      bidirectional=True)
    x = rng.standard_normal((T_, B_, I_))
    lstmc.manual_seed(77)
    out1, _ = mod(x)
    m1 = [np.array(m) for m in mod._last_dropout_masks]
    assert len(m1) == L - 1 and all(m.shape == (T_, B_, 2 * H_) for m in m1)
    assert not np.array_equal(m1[0], m1[1]), "layers share one mask"
    lstmc.manual_seed(77)
    out2, _ = mod(x)
    for a, b in zip(m1, mod._last_dropout_masks):
        np.testing.assert_array_equal(a, b, err_msg="same manual_seed, different masks")
    np.testing.assert_array_equal(out1, out2)
    mod.eval()
    oe, hne = mod(x)
    r_out, r_hn, _ = ref_forward(kind, x, params64(mod), L, True)
    assert_close("eval out (no dropout)", oe, r_out, 1e-10, 1e-10)
    assert_close("eval h_n (no dropout)", hne, r_hn, 1e-10, 1e-10)
    with pytest.raises(RuntimeError):
        mod.backward(np.zeros_like(oe))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_gradients_accumulate_and_zero_grad(kind):
    rng = np.random.default_rng(7)
    mod = make_module(kind, 5, 6, dtype=np.float64, num_layers=2, bidirectional=True)
    x = rng.standard_normal((4, 3, 5))
    lengths = np.array([4, 0, 2])
    dout = rng.standard_normal((4, 3, 12))
    mod.zero_grad()
    mod(x, lengths=lengths)
    mod.backward(dout)
    g1 = grads_by_name(mod)
    assert any(np.any(g != 0) for g in g1.values())
    mod(x, lengths=lengths)
    mod.backward(dout)
    g2 = grads_by_name(mod)
    for n in g1:
        assert_close(f"2x grad {n}", g2[n], 2 * g1[n], 1e-12, 1e-12)
    mod.zero_grad()
    for n, p in mod.named_parameters():
        assert np.all(p.grad == 0), n


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_names_shapes_and_default_init(kind):
    G = KINDS[kind][2]
    mod = make_module(kind, 7, 6, num_layers=2, bidirectional=True)
    shapes = {n: p.data.shape for n, p in mod.named_parameters()}
    assert list(shapes) == expected_names(2, True, True)
    assert shapes["weight_ih_l0"] == (G * 6, 7) and shapes["weight_hh_l0"] == (G * 6, 6)
    assert shapes["bias_ih_l0"] == (G * 6,) and shapes["weight_ih_l1_reverse"] == (G * 6, 12)
    assert list(mod.state_dict()) == list(shapes)
    assert len(list(mod.parameters())) == len(shapes)
    for n, v in mod.state_dict().items():
        assert v.dtype == np.float32, n
        assert np.all(np.abs(v) <= 1 / np.sqrt(6) + 1e-7), n
    lstmc.manual_seed(3)
    a = make_module(kind, 7, 6).state_dict()
    lstmc.manual_seed(3)
    b = make_module(kind, 7, 6).state_dict()
    for n in a:
        np.testing.assert_array_equal(a[n], b[n], err_msg=f"{n}: manual_seed not reproducible")
