"""Parity of lstmc.nn.LSTM / GRU / RNN and their cells with torch.nn (skipped without torch).

Every cell torch can express runs through the same tests: LSTM, LSTM with a projection,
GRU (reset_after=True) and RNN tanh / relu (GRU reset_after=False has no torch counterpart:
the reference is its only check, test_kernels.py). Each case builds a torch module under
``torch.manual_seed``, loads its ``state_dict()`` into the lstmc module built with the same
arguments, runs both on the same random x and initial states, and backpropagates

    sum(out * W1) + sum(h_n * W2) [+ sum(c_n * W3) for the LSTM]        (W random)

i.e. ``module.backward(W1, W2)`` (LSTM: ``backward(W1, (W2, W3))``). Compared: out, the final
states, dx, the initial states' gradients and the gradient of every parameter, by name.
Rows of length 0 (torch cannot pack them) are cut out of the torch run and checked exactly:
final state = initial state, its gradient = the final state's, out = dx = 0.

Tolerances, elementwise ``|lstmc - torch| <= atol + rtol * |torch|``:

* float64: rtol 1e-9, atol 1e-12 * max(1, max|tensor|). Both sides round at ~1e-16; 1e-9 leaves
  room for different summation orders through BPTT. The tiny atol only covers elements that
  cancel to ~0.
* float32 forward values (out and final states, all O(1)): rtol 2e-4, atol 1e-5.
* float32 gradients (dx, initial states, weight grads): rtol 2e-4, atol 1e-5 * max(1, max|tensor|).
  A gradient element is a sum of up to T*B*4H products, so its rounding error depends on the
  size of those terms, not of the result. An element that cancels to ~0 can have a large
  relative error, so atol scales with the tensor's largest entry. Calibration: torch float32
  against torch float64 (the truth) uses under 2% of these bounds on every tensor of the option
  product, so an lstmc float32 that is as accurate as torch's passes with a ~30x margin, while
  a wrong gate, mask or direction is off by 1e-2 or more.
* float32 relu: see helpers.relu_margin (data is redrawn until clear of the kink).

Sizes are small and odd (T=5, B=4, I=7, H=5, P=3) so the whole file runs in seconds.
"""
import itertools

import numpy as np
import pytest

import lstmc
from helpers import (CELLS, RELU_ATTEMPTS, RELU_MARGIN, TORCH_GRU_RNN, Checks, make_cell,
                     make_module, pad_mask, params64, relu_margin)

T, B, I, H, P = 5, 4, 7, 5, 3
# Unsorted, with a 0-length row (torch cannot take one; handled separately) and a full (T) row.
LENGTHS = (3, 0, 5, 1)
TORCH_CELLS = ["lstm", "lstm_proj"] + TORCH_GRU_RNN
STEP_CELLS = ["lstm"] + TORCH_GRU_RNN        # LSTMCell has no projection

# torch also takes the projection path (without oneDNN) for proj_size > 0; the warning is noise here.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


# ----------------------------------------------------------------------------------------------
# helpers

def tolerance(dtype, expected, kind):
    """(rtol, atol) for a tensor of the given kind ("value" or "grad"); see the module docstring."""
    scale = max(1.0, float(np.max(np.abs(expected)))) if np.size(expected) else 1.0
    if np.dtype(dtype) == np.float64:
        return 1e-9, 1e-12 * scale
    if kind == "value":
        return 2e-4, 1e-5
    return 2e-4, 1e-5 * scale


def parity_check(chk, dtype, name, actual, expected, kind):
    if actual is None:
        chk.fail(f"{name}: lstmc returned None")
        return
    if np.asarray(actual).dtype != dtype:
        chk.fail(f"{name}: dtype {np.asarray(actual).dtype}, expected {np.dtype(dtype)}")
    rtol, atol = tolerance(dtype, expected, kind)
    chk.close(name, actual, expected, rtol, atol, scaled=False)


def value_or_grad(name):
    return "value" if name in ("out", "h_n", "c_n", "h1", "c1") else "grad"


def is_lstm(cell):
    return CELLS[cell].cls == "LSTM"


def torch_module(torch, cell, dtype, input_size=I, hidden_size=H, step=False, **kwargs):
    """The torch twin of ``cell`` (a sequence module, or with ``step`` its one-step cell)."""
    c = CELLS[cell]
    options = {k: v for k, v in c.options.items() if k != "reset_after"}
    if step:
        options.pop("proj_size", None)
    cls = getattr(torch.nn, c.cls + ("Cell" if step else ""))
    return cls(input_size, hidden_size, dtype=torch_dtype(torch, dtype), **options, **kwargs)


def torch_dtype(torch, dtype):
    return {np.float32: torch.float32, np.float64: torch.float64}[dtype]


def make_pair(torch, cell, dtype, seed=0, **kwargs):
    """A torch module under torch.manual_seed(seed) and the lstmc module loaded from it."""
    torch.manual_seed(seed)
    tm = torch_module(torch, cell, dtype, **kwargs)
    mm = make_module(cell, I, H, dtype=dtype, **kwargs)
    mm.load_state_dict(tm.state_dict())
    return tm, mm


def state_sizes(cell):
    """Sizes of the state tensors: (h) or, for the LSTM, (h, c)."""
    h_out = CELLS[cell].options.get("proj_size", 0) or H
    return (h_out, H) if is_lstm(cell) else (h_out,)


def parity_data(rng, cell, dtype, D, L, batch_first=False, unbatched=False):
    """x, initial states, W1 (= dout), W2.. (= the final states' gradients), in the layout of
    the options; the states are lists (h) or (h, c)."""
    r = lambda *s, scale=1.0: (scale * rng.standard_normal(s)).astype(dtype)  # noqa: E731
    sizes = state_sizes(cell)
    lead = () if unbatched else ((B, T) if batch_first else (T, B))
    sl = (D * L,) if unbatched else (D * L, B)
    x, w1 = r(*(lead or (T,)), I), r(*(lead or (T,)), D * sizes[0])
    states = [r(*sl, n, scale=0.5) for n in sizes]
    dstates = [r(*sl, n) for n in sizes]
    return x, states, w1, dstates


def pick_case(torch, cell, dtype, seed, D, L, batch_first=False, lengths=None, unbatched=False,
              hx_given=True, **kwargs):
    """(tm, mm, x, states, w1, dstates): for float32 relu, the first seed whose data keeps
    every pre-activation clear of relu's kink (see helpers.relu_margin)."""
    for attempt in range(RELU_ATTEMPTS):
        s = seed + 1000 * attempt
        tm, mm = make_pair(torch, cell, dtype, seed=s, num_layers=L, batch_first=batch_first,
                           **kwargs)
        x, states, w1, dstates = parity_data(np.random.default_rng(100 + s), cell, dtype, D, L,
                                             batch_first, unbatched)
        if not hx_given:
            states = [np.zeros_like(a) for a in states]
        if cell != "rnn_relu" or dtype != np.float32:
            break
        x_tm = x[:, None] if unbatched else (np.swapaxes(x, 0, 1) if batch_first else x)
        h_tm = states[0][:, None] if unbatched else states[0]
        if relu_margin(x_tm, params64(mm), L, D, h_tm, lengths) >= RELU_MARGIN:
            break
    else:
        raise AssertionError("no seed gave float32 relu data clear of the kink")
    return tm, mm, x, states, w1, dstates


def state_arg(states):
    """The module's state argument: h, or (h, c) for the LSTM."""
    return states[0] if len(states) == 1 else tuple(states)


def result_names(n_states):
    return ["out", "h_n", "c_n"][:1 + n_states], ["dx", "dh0", "dc0"][:1 + n_states]


def run_torch(torch, tm, x, states, w1, dstates, lengths=None, batch_first=False):
    """Forward + backward through torch. The states' gradients are w.r.t. explicit initial
    states, which is what lstmc may report for hx=None (zeros)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    t = lambda a, g=False: torch.tensor(np.array(a), requires_grad=g)  # noqa: E731
    xt, st = t(x, True), [t(a, True) for a in states]
    tm.zero_grad()
    if lengths is None:
        out, hn = tm(xt, state_arg(st))
    else:
        packed = pack_padded_sequence(xt, torch.as_tensor(lengths, dtype=torch.int64),
                                      batch_first=batch_first, enforce_sorted=False)
        out_p, hn = tm(packed, state_arg(st))
        out, _ = pad_packed_sequence(out_p, batch_first=batch_first,
                                     total_length=x.shape[1 if batch_first else 0])
    finals = list(hn) if isinstance(hn, tuple) else [hn]
    loss = (out * t(w1)).sum() + sum((f * t(d)).sum() for f, d in zip(finals, dstates))
    loss.backward()
    fwd, bwd = result_names(len(states))
    res = dict(zip(fwd, [out] + finals))
    res.update(zip(bwd, [xt.grad] + [a.grad for a in st]))
    res = {k: v.detach().numpy().copy() for k, v in res.items()}
    grads = {n: p.grad.detach().numpy().copy() for n, p in tm.named_parameters()}
    return res, grads


def run_lstmc(mm, x, states, w1, dstates, lengths=None):
    """Forward + backward through lstmc (states None: no initial state given)."""
    mm.train()
    mm.zero_grad()
    lens = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    out, hn = mm(x, None if states is None else state_arg(states), lengths=lens)
    finals = list(hn) if isinstance(hn, tuple) else [hn]
    dx, dh0 = mm.backward(w1, state_arg(dstates))
    dinit = list(dh0) if isinstance(dh0, tuple) else [dh0]
    fwd, bwd = result_names(len(dstates))
    # copies: the module may reuse its buffers on the next call
    res = dict(zip(fwd, [np.array(a) for a in [out] + finals]))
    res.update(zip(bwd, [None if a is None else np.array(a) for a in [dx] + dinit]))
    grads = {n: np.array(p.grad) for n, p in mm.named_parameters()}
    return res, grads


def check_param_grads(chk, dtype, tm, mm, grads_m, grads_t):
    names_t = [n for n, _ in tm.named_parameters()]
    names_m = [n for n, _ in mm.named_parameters()]
    if names_m != names_t:
        chk.fail(f"parameter names/order: lstmc {names_m} != torch {names_t}")
        return
    for n in names_t:
        parity_check(chk, dtype, f"grad {n}", grads_m[n], grads_t[n], "grad")


# ----------------------------------------------------------------------------------------------
# sequence modules: the full option product

def _parity(torch, dtype, cell, bias, batch_first, bidirectional, lengths, num_layers,
            hx_given=True, seed=0):
    D, L = (2 if bidirectional else 1), num_layers
    tm, mm, x, states, w1, dstates = pick_case(
        torch, cell, dtype, seed, D, L, batch_first, lengths, hx_given=hx_given, bias=bias,
        bidirectional=bidirectional)
    res_m, grads_m = run_lstmc(mm, x, states if hx_given else None, w1, dstates, lengths)

    bax = 0 if batch_first else 1                      # batch axis of x / out / dx
    lens = np.full(B, T) if lengths is None else np.asarray(lengths)
    keep, zero = np.flatnonzero(lens > 0), np.flatnonzero(lens == 0)   # rows torch can run
    sub = lambda a, ax: np.take(a, keep, axis=ax)      # noqa: E731
    res_t, grads_t = run_torch(torch, tm, sub(x, bax), [sub(a, 1) for a in states], sub(w1, bax),
                               [sub(a, 1) for a in dstates],
                               lengths=None if lengths is None else lens[keep],
                               batch_first=batch_first)

    chk = Checks(f"{cell} vs torch, {np.dtype(dtype).name}")
    fwd, bwd = result_names(len(states))
    shapes = dict(zip(fwd, [w1.shape] + [a.shape for a in states]))
    shapes.update(zip(bwd, [x.shape] + [a.shape for a in states]))
    # the 0-length row: state passes through untouched, no output, no input gradient
    sources = dict(zip(fwd[1:], states), **dict(zip(bwd[1:], dstates)))
    for k, shape in shapes.items():
        v = res_m[k]
        if v is None:
            if k in bwd[1:] and not hx_given:
                continue                       # allowed: no state was given
            chk.fail(f"{k}: lstmc returned None")
            continue
        if v.shape != shape:
            chk.fail(f"{k}: shape {v.shape}, expected {shape}")
            continue
        ax = bax if k in ("out", "dx") else 1
        parity_check(chk, dtype, k, sub(v, ax), res_t[k], value_or_grad(k))
        if zero.size:
            got = np.take(v, zero, axis=ax)
            source = sources.get(k)
            want = np.zeros_like(got) if source is None else np.take(source, zero, axis=1)
            chk.exact(f"{k} [len-0 row]", got, want)
    if lengths is not None:
        # padded steps: output and input gradient exactly 0 (not just close to torch's 0)
        valid = pad_mask(T, lens, B)
        pad = ~(valid.T if batch_first else valid)
        for k in ("out", "dx"):
            if res_m[k] is not None and res_m[k].shape == shapes[k]:
                chk.exact(f"{k} [padded steps]", res_m[k][pad], np.zeros_like(res_m[k][pad]))
    check_param_grads(chk, dtype, tm, mm, grads_m, grads_t)
    chk.raise_if_any()


PRODUCT = list(itertools.product(
    TORCH_CELLS,
    [True, False],       # bias
    [False, True],       # batch_first
    [False, True],       # bidirectional
    [None, LENGTHS],     # lengths
    [1, 2],              # num_layers
))


def _pid(c):
    cell, bias, bf, bi, lengths, L = c
    return (f"{cell}-{'bias' if bias else 'nobias'}-{'bf' if bf else 'tm'}-{'bi' if bi else 'uni'}"
            f"-{'lens' if lengths else 'full'}-L{L}")


@pytest.mark.parametrize("case", PRODUCT, ids=[_pid(c) for c in PRODUCT])
def test_matches_torch(torch, float_dtype, case):
    _parity(torch, float_dtype, *case)


HX_NONE = list(itertools.product(TORCH_CELLS, [False, True], [False, True], [None, LENGTHS]))


@pytest.mark.parametrize("cell,batch_first,bidirectional,lengths", HX_NONE,
                         ids=[f"{c}-{'bf' if f else 'tm'}-{'bi' if b else 'uni'}-{'lens' if n else 'full'}"
                              for c, f, b, n in HX_NONE])
def test_matches_torch_without_hx(torch, float_dtype, cell, batch_first, bidirectional, lengths):
    _parity(torch, float_dtype, cell, True, batch_first, bidirectional, lengths, 2,
            hx_given=False, seed=1)


OTHER_LENGTHS = list(itertools.product(TORCH_CELLS, [False, True], [False, True]))


@pytest.mark.parametrize("cell,batch_first,bidirectional", OTHER_LENGTHS,
                         ids=[f"{c}-{'bf' if f else 'tm'}-{'bi' if b else 'uni'}"
                              for c, f, b in OTHER_LENGTHS])
@pytest.mark.parametrize("lengths", [(2, 4, 1, 3), (5, 5, 5, 5)], ids=["all-short", "all-full"])
def test_matches_torch_other_lengths(torch, float_dtype, cell, batch_first, bidirectional,
                                     lengths):
    """No 0-length row: max(len) < T (torch pads to total_length), and every len == T."""
    _parity(torch, float_dtype, cell, True, batch_first, bidirectional, lengths, 2, seed=2)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_padding_values_never_influence(torch, float_dtype, bidirectional):
    """NaN in x and in dout at padded steps must not reach any result (docs/spec.md §6)."""
    dtype = float_dtype
    D, L = (2 if bidirectional else 1), 2
    tm, mm = make_pair(torch, "lstm_proj", dtype, seed=3, num_layers=L,
                       bidirectional=bidirectional)
    x, states, w1, dstates = parity_data(np.random.default_rng(3), "lstm_proj", dtype, D, L)
    lens = np.array([2, 4, 1, 3])
    pad = ~pad_mask(T, lens, B)
    x_nan, w1_nan = x.copy(), w1.copy()
    x_nan[pad], w1_nan[pad] = np.nan, np.nan
    res_m, grads_m = run_lstmc(mm, x_nan, states, w1_nan, dstates, lens)
    res_t, grads_t = run_torch(torch, tm, x, states, w1, dstates, lengths=lens)
    chk = Checks(f"LSTM with NaN padding vs torch, {np.dtype(dtype).name}")
    for k in res_t:
        parity_check(chk, dtype, k, res_m[k], res_t[k], value_or_grad(k))
    check_param_grads(chk, dtype, tm, mm, grads_m, grads_t)
    chk.raise_if_any()


# ----------------------------------------------------------------------------------------------
# unbatched (T, I) input

UNBATCHED = list(itertools.product(TORCH_CELLS, [False, True], [False, True], [True, False]))


@pytest.mark.parametrize("cell,bidirectional,batch_first,hx_given", UNBATCHED,
                         ids=[f"{c}-{'bi' if b else 'uni'}-{'bf' if f else 'tm'}-{'hx' if h else 'nohx'}"
                              for c, b, f, h in UNBATCHED])
def test_unbatched_matches_torch(torch, float_dtype, cell, bidirectional, batch_first, hx_given):
    """x (T, I), states (D*L, H); as in torch, batch_first does not apply to unbatched input."""
    dtype = float_dtype
    D, L = (2 if bidirectional else 1), 2
    tm, mm, x, states, w1, dstates = pick_case(
        torch, cell, dtype, 4, D, L, unbatched=True, hx_given=hx_given,
        bidirectional=bidirectional)
    if batch_first:   # same weights, batch_first module
        tm2, mm2 = make_pair(torch, cell, dtype, num_layers=L, batch_first=True,
                             bidirectional=bidirectional)
        tm2.load_state_dict(tm.state_dict())
        mm2.load_state_dict(tm.state_dict())
        tm, mm = tm2, mm2
    res_m, grads_m = run_lstmc(mm, x, states if hx_given else None, w1, dstates)
    res_t, grads_t = run_torch(torch, tm, x, states, w1, dstates)
    chk = Checks(f"unbatched {cell} vs torch, {np.dtype(dtype).name}")
    for k in res_t:
        if res_m[k] is None and k in ("dh0", "dc0") and not hx_given:
            continue
        parity_check(chk, dtype, k, res_m[k], res_t[k], value_or_grad(k))
    check_param_grads(chk, dtype, tm, mm, grads_m, grads_t)
    chk.raise_if_any()


# ----------------------------------------------------------------------------------------------
# one step: LSTMCell / GRUCell / RNNCell

# the LSTM cell also with and without an upstream gradient of c1 (None: dc1 = 0)
STEP = [(c, bias, batched, hx, dc) for c in STEP_CELLS
        for bias, batched, hx in itertools.product([True, False], [True, False], [True, False])
        for dc in ([True, False] if c == "lstm" else [False])]


@pytest.mark.parametrize("cell,bias,batched,hx_given,dc_given", STEP,
                         ids=[f"{c}-{'bias' if a else 'nobias'}-{'batched' if b else 'unbatched'}"
                              f"-{'hx' if h else 'nohx'}" + (("-dc" if d else "-nodc") if c == "lstm" else "")
                              for c, a, b, h, d in STEP])
def test_cell_matches_torch(torch, float_dtype, cell, bias, batched, hx_given, dc_given):
    """One step; loss sum(h1 * W1) [+ sum(c1 * W2)], i.e. cell.backward(W1[, W2])."""
    dtype = float_dtype
    lead = (B,) if batched else ()
    n_states = 2 if is_lstm(cell) else 1
    for attempt in range(RELU_ATTEMPTS):
        seed = 5 + attempt
        torch.manual_seed(seed)
        tc = torch_module(torch, cell, dtype, step=True, bias=bias)
        mc = make_cell(cell, I, H, dtype=dtype, bias=bias)
        mc.load_state_dict(tc.state_dict())
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((*lead, I)).astype(dtype)
        states = [(0.5 * rng.standard_normal((*lead, H))).astype(dtype) for _ in range(n_states)]
        ws = [rng.standard_normal((*lead, H)).astype(dtype) for _ in range(n_states)]
        if not hx_given:
            states = [np.zeros_like(a) for a in states]
        if cell != "rnn_relu" or dtype != np.float32:
            break
        pl0 = {k + "_l0": v for k, v in params64(mc).items()}
        if relu_margin(x.reshape(1, -1, I), pl0, 1, 1, states[0].reshape(1, -1, H)) >= RELU_MARGIN:
            break
    mc.train()
    mc.zero_grad()
    got = mc(x, state_arg(states) if hx_given else None)
    got = [np.array(a) for a in (got if isinstance(got, tuple) else (got,))]
    if n_states == 2:
        dx, dinit = mc.backward(ws[0], ws[1] if dc_given else None)
    else:
        dx, dinit = mc.backward(ws[0])
    dinit = list(dinit) if isinstance(dinit, tuple) else [dinit]
    grads_m = {n: np.array(p.grad) for n, p in mc.named_parameters()}

    t = lambda a, g=False: torch.tensor(np.array(a), requires_grad=g)  # noqa: E731
    xt, st = t(x, True), [t(a, True) for a in states]
    want = tc(xt, state_arg(st))
    want = list(want) if isinstance(want, tuple) else [want]
    used = ws if dc_given else ws[:1]
    sum((w * t(u)).sum() for w, u in zip(want, used)).backward()
    grads_t = {n: p.grad.numpy() for n, p in tc.named_parameters()}

    chk = Checks(f"{cell} cell vs torch, {np.dtype(dtype).name}")
    for name, a, w in zip(("h1", "c1"), got, want):
        parity_check(chk, dtype, name, a, w.detach().numpy(), "value")
    parity_check(chk, dtype, "dx", dx, xt.grad.numpy(), "grad")
    for name, a, s in zip(("dh", "dc"), dinit, st):
        if a is None and not hx_given:
            continue
        parity_check(chk, dtype, name, a, s.grad.numpy(), "grad")
    check_param_grads(chk, dtype, tc, mc, grads_m, grads_t)
    chk.raise_if_any()


# ----------------------------------------------------------------------------------------------
# state_dict in both directions

SD = list(itertools.product(TORCH_CELLS, [True, False], [False, True]))


@pytest.mark.parametrize("cell,bias,bidirectional", SD,
                         ids=[f"{c}-{'bias' if a else 'nobias'}-{'bi' if b else 'uni'}"
                              for c, a, b in SD])
def test_state_dict_round_trip_into_torch(torch, float_dtype, cell, bias, bidirectional):
    """lstmc's own (seeded) weights load strictly into torch, and both then compute the same."""
    dtype = float_dtype
    kwargs = dict(num_layers=2, bias=bias, bidirectional=bidirectional)
    lstmc.manual_seed(6)
    mm = make_module(cell, I, H, dtype=dtype, **kwargs)
    tm = torch_module(torch, cell, dtype, **kwargs)
    sd, want = mm.state_dict(), tm.state_dict()
    assert list(sd) == list(want)
    for k, v in sd.items():
        assert isinstance(v, np.ndarray), (k, type(v))
        assert v.shape == tuple(want[k].shape), (k, v.shape, tuple(want[k].shape))
        assert v.dtype == dtype, (k, v.dtype)
    tm.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()},
                       strict=True)
    # state_dict() is a copy: writing it must not change the module
    first = next(iter(sd))
    before = np.array(dict(mm.named_parameters())[first].data)
    sd[first][...] += 1.0
    np.testing.assert_array_equal(dict(mm.named_parameters())[first].data, before)

    mm.eval()
    tm.eval()
    D = 2 if bidirectional else 1
    x, states, _, _ = parity_data(np.random.default_rng(6), cell, dtype, D, 2)
    out_m, hn_m = mm(x, state_arg(states))
    with torch.no_grad():
        out_t, hn_t = tm(torch.from_numpy(x), state_arg([torch.from_numpy(a) for a in states]))
    finals_m = hn_m if isinstance(hn_m, tuple) else (hn_m,)
    finals_t = hn_t if isinstance(hn_t, tuple) else (hn_t,)
    chk = Checks(f"{cell} state_dict round trip")
    parity_check(chk, dtype, "out", out_m, out_t.numpy(), "value")
    for name, a, w in zip(("h_n", "c_n"), finals_m, finals_t):
        parity_check(chk, dtype, name, a, w.numpy(), "value")
    chk.raise_if_any()


@pytest.mark.parametrize("source", ["torch", "numpy", "numpy-fortran", "torch-other-dtype"])
def test_load_state_dict_accepts_tensors_and_arrays(torch, float_dtype, source):
    dtype = float_dtype
    torch.manual_seed(7)
    other = torch.float64 if dtype == np.float32 else torch.float32
    tdt = other if source == "torch-other-dtype" else torch_dtype(torch, dtype)
    tm = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, dtype=tdt)
    tsd = tm.state_dict()
    if source.startswith("torch"):
        given = tsd
    elif source == "numpy":
        given = {k: v.numpy() for k, v in tsd.items()}
    else:
        given = {k: np.asfortranarray(v.numpy()) for k, v in tsd.items()}
    lstmc.manual_seed(7)
    mm = lstmc.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, dtype=dtype)
    mm.load_state_dict(given)
    params = dict(mm.named_parameters())
    sd = mm.state_dict()
    assert list(sd) == list(tsd)
    for k, v in tsd.items():
        want = v.numpy().astype(dtype)        # the module keeps its own dtype
        assert sd[k].dtype == dtype, (k, sd[k].dtype)
        assert np.array_equal(sd[k], want), k
        assert np.array_equal(params[k].data, want), k
