"""Parity of lstmc.nn.LSTM / LSTMCell with torch.nn.LSTM / LSTMCell (skipped without torch).

Each case builds a torch module under ``torch.manual_seed``, loads its ``state_dict()`` into
the lstmc module built with the same arguments, runs both on the same random x, h0, c0, and
backpropagates the loss

    sum(out * W1) + sum(h_n * W2) + sum(c_n * W3)        (W1, W2, W3 random)

i.e. ``lstm.backward(dout=W1, dhx=(W2, W3))``. Compared: out, h_n, c_n, dx, dh0, dc0 and the
gradient of every parameter, by name.

Tolerances, elementwise ``|lstmc - torch| <= atol + rtol * |torch|``:

* float64: rtol 1e-9, atol 1e-12 * max(1, max|tensor|). Both sides round at ~1e-16; 1e-9 leaves
  room for different summation orders through BPTT. The tiny atol only covers elements that
  cancel to ~0.
* float32 forward values (out, h_n, c_n, all O(1)): rtol 2e-4, atol 1e-5.
* float32 gradients (dx, dh0, dc0, weight grads): rtol 2e-4, atol 1e-5 * max(1, max|tensor|).
  A gradient element is a sum of up to T*B*4H products, so its rounding error depends on the
  size of those terms, not of the result. An element that cancels to ~0 can have a large
  relative error, so atol scales with the tensor's largest entry. Calibration: torch float32
  against torch float64 (the truth) uses under 2% of these bounds on every tensor of the option
  product, so an lstmc float32 that is as accurate as torch's passes with a ~30x margin, while
  a wrong gate, mask or direction is off by 1e-2 or more.

Sizes are small and odd (T=5, B=4, I=7, H=5, P=3) so the whole file runs in seconds.
"""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lstmc  # noqa: E402
from conftest import close_report  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

T, B, I, H, P = 5, 4, 7, 5, 3
# Unsorted, with a 0-length row (torch cannot take one; handled separately) and a full (T) row.
LENGTHS = (3, 0, 5, 1)
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}

# torch also takes the projection path (without oneDNN) for proj_size > 0; the warning is noise here.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


@pytest.fixture(scope="module", autouse=True)
def _torch_single_thread():
    """torch's OpenMP pool spin-waits on a busy 2-core machine (~50x slower for these tiny shapes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


class Mismatches:
    """Collects every tensor that differs, so one failure lists all of them."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.messages = []

    def check(self, name, actual, expected, kind):
        expected = np.asarray(expected)
        rtol, atol = tolerance(self.dtype, expected, kind)
        msg = close_report(name, actual, expected, rtol, atol)
        if msg is not None:
            self.messages.append(msg)

    def exact(self, name, actual, expected):
        msg = close_report(name, actual, expected, rtol=0.0, atol=0.0)
        if msg is not None:
            self.messages.append(msg + "  [must be exact]")

    def raise_if_any(self):
        if self.messages:
            text = "\n".join(self.messages)
            print(text)
            raise AssertionError(f"{len(self.messages)} tensor(s) differ:\n{text}")


def t(a, requires_grad=False):
    return torch.tensor(np.array(a), requires_grad=requires_grad)


def make_lstm_pair(dtype, seed=0, input_size=I, **kwargs):
    """torch.nn.LSTM under torch.manual_seed(seed) and an lstmc.nn.LSTM loaded from its state_dict."""
    torch.manual_seed(seed)
    tm = torch.nn.LSTM(input_size, H, dtype=TORCH_DTYPE[dtype], **kwargs)
    mm = lstmc.nn.LSTM(input_size, H, dtype=dtype, **kwargs)
    mm.load_state_dict(tm.state_dict())
    return tm, mm


def data_for(rng, dtype, *, D, L, h_out, batch_first=False, unbatched=False):
    """x, (h0, c0), W1, (W2, W3) for the sizes above, in the layout of the given options."""
    def r(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)
    if unbatched:
        x, w1 = r(T, I), r(T, D * h_out)
        h0, c0 = r(D * L, h_out, scale=0.5), r(D * L, H, scale=0.5)
        w2, w3 = r(D * L, h_out), r(D * L, H)
    else:
        x_shape = (B, T) if batch_first else (T, B)
        x, w1 = r(*x_shape, I), r(*x_shape, D * h_out)
        h0, c0 = r(D * L, B, h_out, scale=0.5), r(D * L, B, H, scale=0.5)
        w2, w3 = r(D * L, B, h_out), r(D * L, B, H)
    return x, (h0, c0), w1, (w2, w3)


def run_torch(tm, x, hx, w1, dhx, lengths=None, batch_first=False):
    """Forward + backward through torch. hx=None still returns dh0/dc0: the gradient w.r.t. an
    explicit zero state, which is what lstmc may report for hx=None."""
    h0, c0 = hx
    xt, h0t, c0t = t(x, True), t(h0, True), t(c0, True)
    tm.zero_grad()
    if lengths is None:
        out, (hn, cn) = tm(xt, (h0t, c0t))
    else:
        packed = pack_padded_sequence(xt, torch.as_tensor(lengths, dtype=torch.int64),
                                      batch_first=batch_first, enforce_sorted=False)
        out_p, (hn, cn) = tm(packed, (h0t, c0t))
        out, _ = pad_packed_sequence(out_p, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0])
    loss = (out * t(w1)).sum() + (hn * t(dhx[0])).sum() + (cn * t(dhx[1])).sum()
    loss.backward()
    res = {"out": out, "h_n": hn, "c_n": cn, "dx": xt.grad, "dh0": h0t.grad, "dc0": c0t.grad}
    res = {k: v.detach().numpy().copy() for k, v in res.items()}
    grads = {n: p.grad.detach().numpy().copy() for n, p in tm.named_parameters()}
    return res, grads


def run_lstmc(mm, x, hx, w1, dhx, lengths=None):
    mm.train()
    mm.zero_grad()
    lens = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    out, (hn, cn) = mm(x, hx, lengths=lens)
    # copies: the module may reuse its buffers on the next call
    res = {"out": np.array(out), "h_n": np.array(hn), "c_n": np.array(cn)}
    dx, (dh0, dc0) = mm.backward(w1, dhx)
    res.update(dx=np.array(dx),
               dh0=None if dh0 is None else np.array(dh0),
               dc0=None if dc0 is None else np.array(dc0))
    grads = {n: np.array(p.grad) for n, p in mm.named_parameters()}
    return res, grads


def check_names_and_grads(chk, tm, mm, grads_m, grads_t):
    names_t = [n for n, _ in tm.named_parameters()]
    names_m = [n for n, _ in mm.named_parameters()]
    if names_m != names_t:
        chk.messages.append(f"parameter names/order: lstmc {names_m} != torch {names_t}")
        return
    for n in names_t:
        if np.asarray(grads_m[n]).dtype != chk.dtype:
            chk.messages.append(f"grad {n}: dtype {np.asarray(grads_m[n]).dtype}, expected {np.dtype(chk.dtype)}")
        chk.check(f"grad {n}", grads_m[n], grads_t[n], "grad")


def take_rows(a, rows, axis):
    return np.take(a, rows, axis=axis)


# ----------------------------------------------------------------------------------------------
# nn.LSTM: the full option product

PRODUCT = list(itertools.product(
    [True, False],          # bias
    [False, True],          # batch_first
    [False, True],          # bidirectional
    [0, P],                 # proj_size
    [None, LENGTHS],        # lengths
    [1, 2],                 # num_layers
))


def _id(case):
    bias, bf, bi, proj, lengths, layers = case
    return (f"{'bias' if bias else 'nobias'}-{'bf' if bf else 'tm'}-{'bi' if bi else 'uni'}"
            f"-p{proj}-{'lens' if lengths else 'full'}-L{layers}")


def _lstm_parity(float_dtype, bias, batch_first, bidirectional, proj_size, lengths, num_layers,
                 hx_given=True, seed=0):
    dtype = float_dtype
    D, L, h_out = (2 if bidirectional else 1), num_layers, (proj_size or H)
    tm, mm = make_lstm_pair(dtype, seed=seed, num_layers=num_layers, bias=bias, batch_first=batch_first,
                            bidirectional=bidirectional, proj_size=proj_size)
    rng = np.random.default_rng(1000 + seed)
    x, hx, w1, dhx = data_for(rng, dtype, D=D, L=L, h_out=h_out, batch_first=batch_first)
    if not hx_given:
        hx = (np.zeros_like(hx[0]), np.zeros_like(hx[1]))

    res_m, grads_m = run_lstmc(mm, x, hx if hx_given else None, w1, dhx, lengths)

    bax = 0 if batch_first else 1                      # batch axis of x / out / dx
    lens = np.full(B, T) if lengths is None else np.asarray(lengths)
    keep = np.flatnonzero(lens > 0)                    # rows torch can run
    zero = np.flatnonzero(lens == 0)
    sub = lambda a, ax: take_rows(a, keep, ax)         # noqa: E731
    res_t, grads_t = run_torch(
        tm, sub(x, bax), (sub(hx[0], 1), sub(hx[1], 1)), sub(w1, bax), (sub(dhx[0], 1), sub(dhx[1], 1)),
        lengths=None if lengths is None else lens[keep], batch_first=batch_first)

    chk = Mismatches(dtype)
    shapes = {"out": w1.shape, "h_n": hx[0].shape, "c_n": hx[1].shape, "dx": x.shape,
              "dh0": hx[0].shape, "dc0": hx[1].shape}
    for k, shape in shapes.items():
        v = res_m[k]
        if v is None:
            if not hx_given and k in ("dh0", "dc0"):
                continue                                 # allowed: no state was given
            chk.messages.append(f"{k}: lstmc returned None")
            continue
        if v.shape != shape:
            chk.messages.append(f"{k}: shape {v.shape}, expected {shape}")
            continue
        if v.dtype != dtype:
            chk.messages.append(f"{k}: dtype {v.dtype}, expected {np.dtype(dtype)}")
        ax = bax if k in ("out", "dx") else 1
        kind = "value" if k in ("out", "h_n", "c_n") else "grad"
        chk.check(k, sub(v, ax), res_t[k], kind)
        if zero.size:
            # the 0-length row: state passes through untouched, no output, no input gradient
            got = take_rows(v, zero, ax)
            source = {"h_n": hx[0], "c_n": hx[1], "dh0": dhx[0], "dc0": dhx[1]}.get(k)
            expected = np.zeros_like(got) if source is None else take_rows(source, zero, 1)
            chk.exact(f"{k} [len-0 row]", got, expected)
    if lengths is not None:
        # padded steps: output and input gradient exactly 0 (not just close to torch's 0)
        tmask = np.arange(T)[:, None] < lens[None, :]              # (T, B)
        pad = ~(tmask.T if batch_first else tmask)
        for k in ("out", "dx"):
            if res_m[k] is not None and res_m[k].shape == shapes[k]:
                chk.exact(f"{k} [padded steps]", res_m[k][pad], np.zeros_like(res_m[k][pad]))
    check_names_and_grads(chk, tm, mm, grads_m, grads_t)
    chk.raise_if_any()


@pytest.mark.parametrize("case", PRODUCT, ids=[_id(c) for c in PRODUCT])
def test_lstm_matches_torch(float_dtype, case):
    _lstm_parity(float_dtype, *case)


HX_NONE = list(itertools.product([False, True], [False, True], [0, P], [None, LENGTHS]))


@pytest.mark.parametrize("batch_first,bidirectional,proj_size,lengths", HX_NONE,
                         ids=[_id((True, *c, 2)) for c in HX_NONE])
def test_lstm_matches_torch_without_hx(float_dtype, batch_first, bidirectional, proj_size, lengths):
    _lstm_parity(float_dtype, True, batch_first, bidirectional, proj_size, lengths, num_layers=2,
                 hx_given=False, seed=1)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("lengths", [(2, 4, 1, 3), (5, 5, 5, 5)], ids=["all-short", "all-full"])
def test_lstm_matches_torch_other_lengths(float_dtype, bidirectional, lengths):
    """Lengths without a 0 row: max(len) < T (torch pads to total_length), and all == T."""
    _lstm_parity(float_dtype, True, False, bidirectional, P, lengths, num_layers=2, seed=2)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_padding_values_never_influence(float_dtype, bidirectional):
    """NaN in x and in dout at padded steps must not reach any result (SPEC §6)."""
    dtype = float_dtype
    D, L = (2 if bidirectional else 1), 2
    tm, mm = make_lstm_pair(dtype, seed=3, num_layers=L, bidirectional=bidirectional, proj_size=P)
    rng = np.random.default_rng(3)
    x, hx, w1, dhx = data_for(rng, dtype, D=D, L=L, h_out=P)
    lens = np.array([2, 4, 1, 3])
    pad = ~(np.arange(T)[:, None] < lens[None, :])
    x_nan, w1_nan = x.copy(), w1.copy()
    x_nan[pad], w1_nan[pad] = np.nan, np.nan
    res_m, grads_m = run_lstmc(mm, x_nan, hx, w1_nan, dhx, lens)
    res_t, grads_t = run_torch(tm, x, hx, w1, dhx, lengths=lens)
    chk = Mismatches(dtype)
    for k in res_t:
        chk.check(k, res_m[k], res_t[k], "value" if k in ("out", "h_n", "c_n") else "grad")
    check_names_and_grads(chk, tm, mm, grads_m, grads_t)
    chk.raise_if_any()


# ----------------------------------------------------------------------------------------------
# unbatched (T, I) input

UNBATCHED = list(itertools.product([False, True], [0, P], [False, True], [True, False]))


@pytest.mark.parametrize("bidirectional,proj_size,batch_first,hx_given", UNBATCHED,
                         ids=[f"{'bi' if a else 'uni'}-p{b}-{'bf' if c else 'tm'}-{'hx' if d else 'nohx'}"
                              for a, b, c, d in UNBATCHED])
def test_lstm_unbatched_matches_torch(float_dtype, bidirectional, proj_size, batch_first, hx_given):
    """x (T, I), hx ((D*L, H_out), (D*L, H)); as in torch, batch_first does not apply to it."""
    dtype = float_dtype
    D, L, h_out = (2 if bidirectional else 1), 2, (proj_size or H)
    tm, mm = make_lstm_pair(dtype, seed=4, num_layers=L, batch_first=batch_first,
                            bidirectional=bidirectional, proj_size=proj_size)
    rng = np.random.default_rng(4)
    x, hx, w1, dhx = data_for(rng, dtype, D=D, L=L, h_out=h_out, unbatched=True)
    if not hx_given:
        hx = (np.zeros_like(hx[0]), np.zeros_like(hx[1]))
    res_m, grads_m = run_lstmc(mm, x, hx if hx_given else None, w1, dhx)
    res_t, grads_t = run_torch(tm, x, hx, w1, dhx)
    chk = Mismatches(dtype)
    for k in res_t:
        if res_m[k] is None and not hx_given and k in ("dh0", "dc0"):
            continue
        chk.check(k, res_m[k], res_t[k], "value" if k in ("out", "h_n", "c_n") else "grad")
    check_names_and_grads(chk, tm, mm, grads_m, grads_t)
    chk.raise_if_any()


# ----------------------------------------------------------------------------------------------
# nn.LSTMCell

CELL = list(itertools.product([True, False], [True, False], [True, False], [True, False]))


@pytest.mark.parametrize("bias,batched,hx_given,dc_given", CELL,
                         ids=[f"{'bias' if a else 'nobias'}-{'batched' if b else 'unbatched'}"
                              f"-{'hx' if c else 'nohx'}-{'dc' if d else 'nodc'}" for a, b, c, d in CELL])
def test_lstm_cell_matches_torch(float_dtype, bias, batched, hx_given, dc_given):
    """One step; loss sum(h1*W1) + sum(c1*W2), i.e. cell.backward(W1, W2) (W2 None -> dc_out 0)."""
    dtype = float_dtype
    torch.manual_seed(5)
    tc = torch.nn.LSTMCell(I, H, bias=bias, dtype=TORCH_DTYPE[dtype])
    mc = lstmc.nn.LSTMCell(I, H, bias=bias, dtype=dtype)
    mc.load_state_dict(tc.state_dict())
    rng = np.random.default_rng(5)
    lead = (B,) if batched else ()
    r = lambda *s, scale=1.0: (scale * rng.standard_normal(s)).astype(dtype)  # noqa: E731
    x, h, c, w1, w2 = r(*lead, I), r(*lead, H, scale=0.5), r(*lead, H, scale=0.5), r(*lead, H), r(*lead, H)
    if not hx_given:
        h, c = np.zeros_like(h), np.zeros_like(c)

    mc.train()
    mc.zero_grad()
    h1, c1 = mc(x, (h, c) if hx_given else None)
    h1, c1 = np.array(h1), np.array(c1)
    dx, (dh, dc) = mc.backward(w1, w2 if dc_given else None)
    grads_m = {n: np.array(p.grad) for n, p in mc.named_parameters()}

    xt, ht, ct = t(x, True), t(h, True), t(c, True)
    h1t, c1t = tc(xt, (ht, ct))
    loss = (h1t * t(w1)).sum() + ((c1t * t(w2)).sum() if dc_given else 0)
    loss.backward()
    grads_t = {n: p.grad.numpy() for n, p in tc.named_parameters()}

    chk = Mismatches(dtype)
    chk.check("h1", h1, h1t.detach().numpy(), "value")
    chk.check("c1", c1, c1t.detach().numpy(), "value")
    chk.check("dx", dx, xt.grad.numpy(), "grad")
    for name, got, want in (("dh", dh, ht.grad), ("dc", dc, ct.grad)):
        if got is None and not hx_given:
            continue
        chk.check(name, got, want.numpy(), "grad")
    check_names_and_grads(chk, tc, mc, grads_m, grads_t)
    chk.raise_if_any()


# ----------------------------------------------------------------------------------------------
# state_dict in both directions

SD = list(itertools.product([True, False], [False, True], [0, P]))


@pytest.mark.parametrize("bias,bidirectional,proj_size", SD,
                         ids=[f"{'bias' if a else 'nobias'}-{'bi' if b else 'uni'}-p{c}" for a, b, c in SD])
def test_state_dict_round_trip_into_torch(float_dtype, bias, bidirectional, proj_size):
    """lstmc's own (seeded) weights load strictly into torch, and both then compute the same."""
    dtype = float_dtype
    kwargs = dict(num_layers=2, bias=bias, bidirectional=bidirectional, proj_size=proj_size)
    lstmc.manual_seed(6)
    mm = lstmc.nn.LSTM(I, H, dtype=dtype, **kwargs)
    tm = torch.nn.LSTM(I, H, dtype=TORCH_DTYPE[dtype], **kwargs)
    sd = mm.state_dict()
    ref = tm.state_dict()
    assert list(sd.keys()) == list(ref.keys())
    for k, v in sd.items():
        assert isinstance(v, np.ndarray), (k, type(v))
        assert v.shape == tuple(ref[k].shape), (k, v.shape, tuple(ref[k].shape))
        assert v.dtype == dtype, (k, v.dtype)
    tm.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=True)

    # state_dict() is a copy: writing it must not change the module
    first = next(iter(sd))
    before = np.array(dict(mm.named_parameters())[first].data)
    sd[first][...] += 1.0
    assert np.array_equal(dict(mm.named_parameters())[first].data, before)
    sd[first][...] -= 1.0

    mm.eval()
    tm.eval()
    rng = np.random.default_rng(6)
    D, h_out = (2 if bidirectional else 1), (proj_size or H)
    x, hx, _, _ = data_for(rng, dtype, D=D, L=2, h_out=h_out)
    out_m, (hn_m, cn_m) = mm(x, hx)
    with torch.no_grad():
        out_t, (hn_t, cn_t) = tm(t(x), (t(hx[0]), t(hx[1])))
    chk = Mismatches(dtype)
    chk.check("out", out_m, out_t.numpy(), "value")
    chk.check("h_n", hn_m, hn_t.numpy(), "value")
    chk.check("c_n", cn_m, cn_t.numpy(), "value")
    chk.raise_if_any()


@pytest.mark.parametrize("source", ["torch", "numpy", "numpy-fortran", "torch-other-dtype"])
def test_load_state_dict_accepts_tensors_and_arrays(float_dtype, source):
    dtype = float_dtype
    torch.manual_seed(7)
    other = torch.float64 if dtype == np.float32 else torch.float32
    tdt = other if source == "torch-other-dtype" else TORCH_DTYPE[dtype]
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
