"""lstmc.nn's C kernels, behind the Cython boundary, against lstmc.reference.

The float64 NumPy reference is the spec (docs/spec.md §7). Every check runs the module
and the reference on the same numbers (the module's own dtype-rounded parameters, inputs and
states, widened to float64) and compares outputs, final states, dx, the initial states'
gradients and every parameter gradient by its PyTorch name. Every cell runs through the
same property-based grid (hypothesis over shapes including 1 and odd sizes, layers,
directions, bias, layouts, lengths with zeros, initial states, the final states' gradients,
dropout and NaN padding): LSTM, LSTM with a projection, GRU reset_after=True and False
(torch cannot express False: the reference is its only check), RNN tanh and relu.

Tolerances (docs/spec.md §7, helpers.KERNEL_TOL), per tensor with
``scale = max(1, max|expected|)``:

* float64: ``|actual - expected| <= 1e-10 * scale + 1e-10 * |expected|``;
* float32: outputs and states atol 1e-5 / rtol 1e-4, gradients atol 1e-4 / rtol 1e-3,
  with the atol multiplied by ``scale`` because weight gradients are sums over T*B terms and
  grow with them.
* float32 relu: see helpers.relu_margin (data is redrawn until clear of relu's kink; if no
  draw is, only the forward values are compared).

A failing check reports the max difference of every tensor, not just the first bad one.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmc
from helpers import (CELLS, GRU_RNN, KERNEL_TOL, RELU_ATTEMPTS, RELU_MARGIN, THREAD_TOL, Checks,
                     as_list, expected_names, grads_by_name, make_cell, make_module, pad_mask,
                     params64, random_lengths, reference_backward, reference_forward,
                     reference_step, relu_margin)
from lstmc import reference as ref

ALL_CELLS = list(CELLS)
STEP_CELLS = ["lstm"] + GRU_RNN          # the one-step cells (LSTMCell has no projection)

# Examples per cell and dtype, sized so that the whole file stays well under a minute on the
# 2-core CI machine; the LSTM's 300 are split between its two variants.
GRID_EXAMPLES = {"lstm": 150, "lstm_proj": 150, "gru": 50, "gru_rb": 50, "rnn_tanh": 50,
                 "rnn_relu": 50}
SMALL_EXAMPLES = 40
_SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.data_too_large])
# the weight scales each cell's float32 tolerances were calibrated at (None: default init)
WSCALES = {"LSTM": [None, 0.5, 1.5], "GRU": [None, 0.5, 1.2], "RNN": [None, 0.5, 1.2]}


# ------------------------------------------------------------------------------------------
# helpers


def check_tensors(rows, header="", scaled=True):
    """rows: (name, actual, expected, (rtol, atol)), atol scaled by max(1, max|expected|)
    unless ``scaled`` is False. Asserts all, reporting every mismatching tensor."""
    chk = Checks(header)
    for name, actual, expected, tol in rows:
        chk.close(name, actual, expected, *tol, scaled=scaled)
    chk.raise_if_any()


def to_time_major(a, batch_first):
    return np.swapaxes(a, 0, 1) if batch_first else a


def to_user_layout(a, batch_first):
    """Time-major (T, B, F) -> the module's layout, as a fresh C-contiguous array."""
    return np.ascontiguousarray(np.swapaxes(a, 0, 1) if batch_first else a)


def load_uniform(module, rng, wscale):
    """Replace the parameters by U(-wscale, wscale) draws; state_dict() must give them back."""
    sd = {k: rng.uniform(-wscale, wscale, size=v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(sd)
    got = module.state_dict()
    assert list(got) == list(sd), "state_dict() keys changed after load_state_dict()"
    for k in sd:
        np.testing.assert_array_equal(got[k], sd[k].astype(module.dtype),
                                      err_msg=f"load_state_dict/state_dict round trip: {k}")


def make_lstm(I, H, L=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False,
              proj_size=0, dtype=np.float32, rng=None, wscale=None):
    """An LSTM; with ``wscale`` its parameters are replaced by U(-wscale, wscale) draws."""
    lstm = lstmc.nn.LSTM(I, H, num_layers=L, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, proj_size=proj_size,
                         dtype=dtype)
    if wscale is not None:
        load_uniform(lstm, rng, wscale)
    return lstm


def state_sizes(cell, H, P):
    """Feature sizes of the states: [H_out] or, for the LSTM, [H_out, H]."""
    return [P or H, H] if CELLS[cell].cls == "LSTM" else [H]


# ------------------------------------------------------------------------------------------
# the grid, every cell


@st.composite
def grid_cases(draw, cell):
    T = draw(st.integers(1, 6))
    layout = draw(st.sampled_from(["tm", "bf", "unbatched"]))
    B = 1 if layout == "unbatched" else draw(st.integers(1, 5))
    lengths = None
    if layout != "unbatched":
        lengths = draw(st.one_of(st.none(), st.lists(st.integers(0, T), min_size=B, max_size=B)))
    L = draw(st.integers(1, 3))
    proj = "proj_size" in CELLS[cell].options
    H = draw(st.integers(2 if proj else 1, 9))
    n_states = len(state_sizes(cell, H, 0))
    return dict(
        T=T, B=B, I=draw(st.integers(1, 9)), H=H,
        P=draw(st.integers(1, H - 1)) if proj else 0,
        L=L, layout=layout,
        bidirectional=draw(st.booleans()),
        bias=draw(st.booleans()),
        lengths=lengths,
        len_dtype=draw(st.sampled_from([np.int64, np.int32])),
        hx=draw(st.booleans()),
        dstates=draw(st.tuples(*[st.booleans()] * n_states)),   # which final states get a gradient
        dropout=draw(st.sampled_from([0.0, 0.0, 0.4])) if L > 1 else 0.0,
        pad_fill=draw(st.sampled_from(["random", "nan"])),
        wscale=draw(st.sampled_from(WSCALES[CELLS[cell].cls])),
        xscale=draw(st.sampled_from([1.0, 3.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def run_case(cell, case, dtype):
    """Forward + backward through lstmc and the reference; returns a Checks (not raised)."""
    T, B, I_, H_, P, L = (case[k] for k in ("T", "B", "I", "H", "P", "L"))
    bi, layout = case["bidirectional"], case["layout"]
    D, G = (2 if bi else 1), CELLS[cell].gates
    H_out = P or H_
    bf, unb = layout == "bf", layout == "unbatched"
    rng = np.random.default_rng(case["seed"])
    lstmc.manual_seed(case["seed"])
    options = {"proj_size": P} if CELLS[cell].cls == "LSTM" else {}
    mod = make_module(cell, I_, H_, dtype=dtype, num_layers=L, bias=case["bias"],
                      batch_first=bf, dropout=case["dropout"], bidirectional=bi, **options)
    names = [n for n, _ in mod.named_parameters()]
    assert names == expected_names(L, bi, case["bias"], P), names
    for n, p in mod.named_parameters():
        if n.startswith("weight_hr"):
            want = (P, H_)
        elif n.startswith("bias"):
            want = (G * H_,)
        elif n.startswith("weight_hh"):
            want = (G * H_, H_out)
        else:
            want = (G * H_, I_ if n.startswith("weight_ih_l0") else D * H_out)
        assert p.data.shape == want and p.grad.shape == want, (n, p.data.shape, want)
        assert p.data.dtype == dtype and p.grad.dtype == dtype, n
    if case["wscale"] is not None:
        load_uniform(mod, rng, case["wscale"])
    params = params64(mod)

    lengths = None if case["lengths"] is None else np.array(case["lengths"], case["len_dtype"])
    valid = pad_mask(T, lengths, B)                              # (T, B)
    full = (T, B) if not unb else (T, 1)
    sizes = state_sizes(cell, H_, P)

    checks = Checks(f"{cell} vs reference, {np.dtype(dtype).name}, case {case}")
    grads_comparable = True
    for attempt in range(RELU_ATTEMPTS):
        x_tm = (case["xscale"] * rng.standard_normal((*full, I_))).astype(dtype)
        h0 = ([rng.standard_normal((D * L, B, n)).astype(dtype) for n in sizes]
              if case["hx"] else None)
        dout_tm = rng.standard_normal((*full, D * H_out)).astype(dtype)
        dh_n = [rng.standard_normal((D * L, B, n)).astype(dtype) if given else None
                for n, given in zip(sizes, case["dstates"])]
        if not any(case["dstates"]):
            dh_n = None
        # padding of x / dout is garbage (or NaN) for lstmc; the reference gets zeros there
        x_in_tm, dout_in_tm = x_tm.copy(), dout_tm.copy()
        if case["pad_fill"] == "nan":
            x_in_tm[~valid], dout_in_tm[~valid] = np.nan, np.nan
        x_tm[~valid], dout_tm[~valid] = 0, 0

        squeeze = (lambda a: None if a is None else a[:, 0]) if unb else (lambda a: a)
        sw = (lambda a: np.ascontiguousarray(np.swapaxes(a, 0, 1))) if bf else (lambda a: a)
        x_in, dout_in = sw(squeeze(x_in_tm)), sw(squeeze(dout_in_tm))
        h0_in = None if h0 is None else [squeeze(a) for a in h0]
        dh_n_in = None if dh_n is None else [squeeze(a) for a in dh_n]
        inputs = [x_in, dout_in, lengths] + (h0_in or []) + (dh_n_in or [])
        keep = [None if a is None else a.copy() for a in inputs]

        mod.train()
        mod.zero_grad()
        state_arg = None if h0_in is None else (h0_in[0] if len(h0_in) == 1 else tuple(h0_in))
        out, h_n = mod(x_in, state_arg, lengths=lengths)
        h_n = as_list(h_n)
        masks = [np.array(m, copy=True) for m in mod._last_dropout_masks]
        if unb:   # (T, D*H) or (T, 1, D*H) for an unbatched call: compare as a batch of one
            masks = [m.reshape(T, 1, -1) for m in masks]
        if cell != "rnn_relu" or dtype != np.float32:
            break
        if relu_margin(x_tm, params, L, D, h0 and h0[0], lengths, masks or None) >= RELU_MARGIN:
            break
    else:
        grads_comparable = False   # forward values only (see helpers.relu_margin)
        checks.header += " [float32 relu: no draw clear of the kink, gradients not compared]"

    if case["dropout"] > 0 and L > 1:
        assert len(masks) == L - 1, len(masks)
        for m in masks:
            assert m.shape == (T, B, D * H_out), (m.shape, (T, B, D * H_out))
            s = 1.0 / (1.0 - case["dropout"])
            assert np.all((m == 0) | np.isclose(m, s, rtol=1e-6, atol=0)), np.unique(m)
    else:
        assert len(masks) == 0, "no dropout configured, but _last_dropout_masks is not empty"

    d_arg = None if dh_n_in is None else (dh_n_in[0] if len(dh_n_in) == 1 else tuple(dh_n_in))
    dx, dh0 = mod.backward(dout_in, d_arg)
    dh0 = as_list(dh0)
    grads = grads_by_name(mod)
    for a, b in zip(inputs, keep):
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg="an input array was modified")

    out_shape = (T, D * H_out) if unb else ((B, T, D * H_out) if bf else (T, B, D * H_out))
    state_shapes = [(D * L, n) if unb else (D * L, B, n) for n in sizes]
    for name, a, shape in ([("out", out, out_shape), ("dx", dx, x_in.shape)]
                           + list(zip(["h_n", "c_n"], h_n, state_shapes))
                           + list(zip(["dh0", "dc0"], dh0, state_shapes))):
        assert a is not None, f"{name} is None"
        assert a.shape == shape, f"{name}: shape {a.shape}, expected {shape}"
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}"

    unsqueeze = (lambda a: a[:, None]) if unb else (lambda a: a)
    out_tm, dx_tm = unsqueeze(to_time_major(out, bf)), unsqueeze(to_time_major(dx, bf))
    h_n3, dh03 = [unsqueeze(a) for a in h_n], [unsqueeze(a) for a in dh0]
    checks.exact("out [padding]", out_tm[~valid], np.zeros_like(out_tm[~valid]))
    checks.exact("dx [padding]", dx_tm[~valid], np.zeros_like(dx_tm[~valid]))

    r_out, r_hn, cache = reference_forward(mod, x_tm, h0, lengths, masks, params=params)
    r_dx, r_dh0, r_grads = reference_backward(mod, cache, dout_tm, dh_n)
    to, tg = KERNEL_TOL[dtype]
    checks.close("out", out_tm, r_out, *to)
    for name, a, e in zip(["h_n", "c_n"], h_n3, r_hn):
        checks.close(name, a, e, *to)
    if grads_comparable:
        checks.close("dx", dx_tm, r_dx, *tg)
        for name, a, e in zip(["dh0", "dc0"], dh03, r_dh0):
            checks.close(name, a, e, *tg)
        if set(grads) != set(r_grads):
            checks.fail(f"grad names: lstmc {sorted(grads)} != reference {sorted(r_grads)}")
        else:
            for n in names:
                checks.close(f"grad {n}", grads[n], r_grads[n], *tg)
    return checks


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_matches_reference(cell, float_dtype):
    @settings(max_examples=GRID_EXAMPLES[cell], **_SETTINGS)
    @given(case=grid_cases(cell))
    def check(case):
        run_case(cell, case, float_dtype).raise_if_any()
    check()


def _corner(**kw):
    base = dict(T=1, B=1, I=1, H=1, P=0, L=1, layout="tm", bidirectional=False, bias=True,
                lengths=None, len_dtype=np.int64, hx=False, dstates=(False, False), dropout=0.0,
                pad_fill="random", wscale=None, xscale=1.0, seed=1)
    base.update(kw)
    return base


# hand-picked corners the grid may not hit every run; P is the projection of lstm_proj
CORNERS = {
    "all-ones": _corner(),
    "big-bidir-bf-dropout": _corner(T=6, B=5, I=9, H=9, P=8, L=3, layout="bf", bidirectional=True,
                                    lengths=[0, 6, 3, 0, 1], hx=True, dstates=(True, True),
                                    dropout=0.4, pad_fill="nan", wscale=1.2, xscale=3.0, seed=2),
    "big-bidir-bf-wide-weights": _corner(T=6, B=5, I=9, H=9, P=8, L=3, layout="bf",
                                         bidirectional=True, lengths=[0, 6, 3, 0, 1], hx=True,
                                         dstates=(True, True), wscale=1.5, xscale=3.0, seed=2),
    "all-lengths-zero": _corner(T=5, B=4, I=3, H=7, P=1, L=2, bidirectional=True, bias=False,
                                lengths=[0, 0, 0, 0], len_dtype=np.int32, hx=True,
                                dstates=(True, True), seed=3),
    "all-lengths-zero-small-weights": _corner(T=5, B=4, I=3, H=7, P=1, L=2, bidirectional=True,
                                              bias=False, lengths=[0, 0, 0, 0],
                                              len_dtype=np.int32, hx=True, dstates=(True, True),
                                              wscale=0.5, seed=3),
    "no-row-full-length": _corner(T=4, B=3, I=5, H=2, P=1, L=2, layout="bf", bidirectional=True,
                                  lengths=[2, 2, 2], dstates=(True, False), seed=4),
    "unbatched-bidir": _corner(T=6, I=4, H=3, P=2, L=3, layout="unbatched", bidirectional=True,
                               hx=True, dstates=(True, True), dropout=0.4, seed=5),
}


def corner(cell, name, table=CORNERS):
    """Case ``name`` of ``table`` for ``cell`` (P only for lstm_proj, one state gradient
    flag per state)."""
    case = dict(table[name])
    if "proj_size" not in CELLS[cell].options:
        case["P"] = 0
    elif case["P"] == 0:
        raise ValueError(f"corner {name}: lstm_proj needs a projection")
    case["dstates"] = case["dstates"][:len(state_sizes(cell, 1, 0))]
    return case


PROJ_CORNERS = [n for n in CORNERS if CORNERS[n]["H"] > 1]


@pytest.mark.parametrize("cell,name", [(c, n) for c in ALL_CELLS
                                       for n in (PROJ_CORNERS if c == "lstm_proj" else CORNERS)])
def test_matches_reference_corners(cell, float_dtype, name):
    run_case(cell, corner(cell, name), float_dtype).raise_if_any()


WIDE = {
    "H48-B17": _corner(T=4, B=17, I=10, H=48, P=20, L=2, bidirectional=True,
                       lengths=list(np.arange(17) % 5), hx=True, dstates=(True, True),
                       dropout=0.3, seed=48),
    "H130-B33": _corner(T=3, B=33, I=12, H=130, P=65, L=1, bidirectional=True,
                        lengths=list(np.arange(33) % 4), hx=True, dstates=(True, True), seed=130),
}


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("name", list(WIDE))
def test_matches_reference_two_threads(restore_threads, cell, float_dtype, name):
    """H >= 40 and B >= 16 (B * H >= 4096 for the second): the kernels split the work across
    threads; against the reference at 2 threads, and 1 vs 2 threads within rounding."""
    dtype = float_dtype
    case = corner(cell, name, WIDE)
    lstmc.set_num_threads(2)
    run_case(cell, case, dtype).raise_if_any()

    rng = np.random.default_rng(case["seed"])
    lstmc.manual_seed(0)
    options = {"proj_size": case["P"]} if case["P"] else {}
    mod = make_module(cell, case["I"], case["H"], dtype=dtype, num_layers=case["L"],
                      bidirectional=True, **options)   # no dropout: both runs must see the same network
    x = rng.standard_normal((case["T"], case["B"], case["I"])).astype(dtype)
    lengths = np.array(case["lengths"])
    dout = rng.standard_normal((case["T"], case["B"], 2 * (case["P"] or case["H"]))).astype(dtype)

    def fwd_bwd(n):
        lstmc.set_num_threads(n)
        mod.zero_grad()
        out, h_n = mod(x, lengths=lengths)
        res = {"out": np.array(out)}
        res.update({k: np.array(v) for k, v in zip(["h_n", "c_n"], as_list(h_n))})
        dx, dh0 = mod.backward(dout)
        res["dx"] = np.array(dx)
        res.update({k: np.array(v) for k, v in zip(["dh0", "dc0"], as_list(dh0))})
        res.update({f"grad {k}": v for k, v in grads_by_name(mod).items()})
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
    if cell == "rnn_relu" and dtype == np.float32:
        bad = [b for b in bad if b.startswith(("out", "h_n"))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("H, P", [(67, 0), (130, 0), (130, 65)], ids=["H67", "H130", "H130-P65"])
def test_lstm_matches_reference_wider(float_dtype, H, P):
    """Hidden sizes past one 64-unit block, and B * H large enough for the elementwise
    passes to go parallel: the grid above (H <= 9) reaches neither."""
    dtype = float_dtype
    case = _corner(T=3, B=33, I=10, H=H, P=P, L=2, bidirectional=True,
                   lengths=list(np.arange(33) % 4), hx=True, dstates=(True, True), seed=H + P)
    run_case("lstm_proj" if P else "lstm", case, dtype).raise_if_any()


# ------------------------------------------------------------------------------------------
# one step: LSTMCell / GRUCell / RNNCell


@pytest.mark.parametrize("cell", STEP_CELLS)
def test_cell_matches_reference(cell, float_dtype):
    @settings(max_examples=SMALL_EXAMPLES, **_SETTINGS)
    @given(Bc=st.one_of(st.none(), st.integers(1, 5)), Ic=st.integers(1, 9), Hc=st.integers(1, 9),
           bias=st.booleans(), hx=st.booleans(), seed=st.integers(0, 2**31 - 1))
    def check(Bc, Ic, Hc, bias, hx, seed):
        check_step(cell, float_dtype, Bc, Ic, Hc, bias, hx, seed)
    check()


def check_step(cell, dtype, Bc, Ic, Hc, bias, hx, seed):
    rng = np.random.default_rng(seed)
    lstmc.manual_seed(seed)
    step = make_cell(cell, Ic, Hc, dtype=dtype, bias=bias)
    G = CELLS[cell].gates
    p = params64(step)
    want_names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
    assert [n for n, _ in step.named_parameters()] == want_names
    assert p["weight_ih"].shape == (G * Hc, Ic) and p["weight_hh"].shape == (G * Hc, Hc)
    lead = () if Bc is None else (Bc,)
    n_states = len(state_sizes(cell, Hc, 0))
    comparable = True
    for attempt in range(RELU_ATTEMPTS):
        x = rng.standard_normal((*lead, Ic)).astype(dtype)
        s0 = [rng.standard_normal((*lead, Hc)).astype(dtype) if hx else np.zeros((*lead, Hc), dtype)
              for _ in range(n_states)]
        if cell != "rnn_relu" or dtype != np.float32:
            break
        pl0 = {k + "_l0": v for k, v in p.items()}
        if relu_margin(x.reshape(1, -1, Ic), pl0, 1, 1, s0[0].reshape(1, -1, Hc)) >= RELU_MARGIN:
            break
    else:
        comparable = False
    step.train()
    step.zero_grad()
    s1 = step(x, (s0[0] if n_states == 1 else tuple(s0)) if hx else None)
    s1 = [np.array(a) for a in as_list(s1)]
    for a in s1:
        assert a.shape == (*lead, Hc) and a.dtype == dtype
    ds1 = [rng.standard_normal((*lead, Hc)).astype(dtype) for _ in range(n_states)]
    dx, ds0 = step.backward(*ds1)
    ds0 = as_list(ds0)
    assert dx.shape == x.shape and dx.dtype == dtype
    grads = grads_by_name(step)

    as2d = (lambda a: a[None]) if Bc is None else (lambda a: a)
    back = (lambda a: a[0]) if Bc is None else (lambda a: a)
    r_s1, r_dx, r_ds0, r_g = reference_step(step, as2d(x), [as2d(a) for a in s0],
                                            [as2d(a) for a in ds1])
    to, tg = KERNEL_TOL[dtype]
    chk = Checks(f"{cell} cell vs reference, {np.dtype(dtype).name}, B={Bc} I={Ic} H={Hc} "
                 f"bias={bias} hx={hx} seed={seed}")
    for name, a, e in zip(("h1", "c1"), s1, r_s1):
        chk.close(name, a, back(e), *to)
    if comparable:
        chk.close("dx", dx, back(r_dx), *tg)
        for name, a, e in zip(("dh", "dc"), ds0, r_ds0):
            chk.close(name, a, back(e), *tg)
        short = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh"}
        for n in grads:
            chk.close(f"grad {n}", grads[n], r_g[short[n]], *tg)
    chk.raise_if_any()


# ------------------------------------------------------------------------------------------
# gradient bookkeeping and parameter views, every cell


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_gradients_accumulate_and_zero_grad(cell, float_dtype):
    dtype = float_dtype
    rng = np.random.default_rng(7)
    options = {"proj_size": 4} if cell == "lstm_proj" else {}
    mod = make_module(cell, 5, 6, dtype=dtype, num_layers=2, bidirectional=True, **options)
    load_uniform(mod, rng, 0.7)
    x = rng.standard_normal((4, 3, 5)).astype(dtype)
    lengths = np.array([4, 0, 2])
    dout = rng.standard_normal((4, 3, 2 * (options.get("proj_size") or 6))).astype(dtype)
    for name, p in mod.named_parameters():
        assert p.grad.shape == p.data.shape, name
        assert p.grad.dtype == dtype, name

    mod.zero_grad()
    mod(x, lengths=lengths)
    mod.backward(dout)
    g1 = grads_by_name(mod)
    assert any(np.any(g != 0) for g in g1.values())
    mod(x, lengths=lengths)
    mod.backward(dout)
    g2 = grads_by_name(mod)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    check_tensors([(f"2x grad {n}", g2[n], 2 * g1[n].astype(np.float64), (rtol, rtol))
                   for n in g1], "two backward calls must accumulate to twice the gradient",
                  scaled=False)

    mod.zero_grad()
    for name, p in mod.named_parameters():
        assert np.all(p.grad == 0), f"{name}.grad not zero after zero_grad()"
    mod(x, lengths=lengths)
    mod.backward(dout)
    g3 = grads_by_name(mod)
    for n in g1:
        np.testing.assert_array_equal(g3[n], g1[n], err_msg=f"{n}: after zero_grad, not fresh")


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_named_parameters_order_shapes_and_default_init(cell):
    G, P = CELLS[cell].gates, CELLS[cell].options.get("proj_size", 0)
    mod = make_module(cell, 7, 6, num_layers=2, bidirectional=True)
    shapes = {n: p.data.shape for n, p in mod.named_parameters()}
    assert list(shapes) == expected_names(2, True, True, P)
    assert shapes["weight_ih_l0"] == (G * 6, 7) and shapes["weight_hh_l0"] == (G * 6, P or 6)
    assert shapes["bias_ih_l0"] == (G * 6,) and shapes["weight_ih_l1_reverse"] == (G * 6, 2 * (P or 6))
    if P:
        assert shapes["weight_hr_l0"] == (P, 6)
    assert list(mod.state_dict()) == list(shapes)
    assert len(list(mod.parameters())) == len(shapes)
    H = 6  # default init U(-1/sqrt(H), 1/sqrt(H))
    for n, v in mod.state_dict().items():
        assert v.dtype == np.float32, n
        assert np.all(np.abs(v) <= 1 / np.sqrt(H) + 1e-7), n
    lstmc.manual_seed(3)
    a = make_module(cell, 7, 6).state_dict()
    lstmc.manual_seed(3)
    b = make_module(cell, 7, 6).state_dict()
    for n in a:
        np.testing.assert_array_equal(a[n], b[n], err_msg=f"{n}: manual_seed not reproducible")


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_dropout_seed_and_eval(cell):
    rng = np.random.default_rng(12)
    T_, B_, I_, H_, L, p = 6, 5, 4, 8, 3, 0.3
    mod = make_module(cell, I_, H_, dtype=np.float64, num_layers=L, dropout=p,
                      bidirectional=True)
    x = rng.standard_normal((T_, B_, I_))
    H_out = CELLS[cell].options.get("proj_size", 0) or H_
    lstmc.manual_seed(77)
    out1, _ = mod(x)
    m1 = [np.array(m) for m in mod._last_dropout_masks]
    assert len(m1) == L - 1 and all(m.shape == (T_, B_, 2 * H_out) for m in m1)
    assert not np.array_equal(m1[0], m1[1]), "layers share one mask"
    lstmc.manual_seed(77)
    out2, _ = mod(x)
    for a, b in zip(m1, mod._last_dropout_masks):
        np.testing.assert_array_equal(a, b, err_msg="same manual_seed, different masks")
    np.testing.assert_array_equal(out1, out2)
    mod.eval()
    oe, hne = mod(x)
    r_out, r_hn, _ = reference_forward(mod, x)
    check_tensors([("eval out (no dropout)", oe, r_out, (1e-10, 1e-10))]
                  + [(f"eval {n} (no dropout)", a, e, (1e-10, 1e-10))
                     for n, a, e in zip(["h_n", "c_n"], as_list(hne), r_hn)], scaled=False)
    with pytest.raises(RuntimeError):
        mod.backward(np.zeros_like(oe))


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
        check_tensors([(f"out reset_after={ra}", out, r_out, (1e-10, 1e-10)),
                       (f"h_n reset_after={ra}", h_n, r_hn, (1e-10, 1e-10))], scaled=False)


# ------------------------------------------------------------------------------------------
# the LSTM's own: unbatched input with (h0, c0), arrays the caller may reuse, workspaces
# resized between calls, dropout masks and statistics, writing parameter views

@settings(max_examples=SMALL_EXAMPLES, **_SETTINGS)
@given(T=st.integers(1, 5), I=st.integers(1, 9), H=st.integers(2, 9), L=st.integers(1, 2),
       bidirectional=st.booleans(), use_proj=st.booleans(), hx=st.booleans(),
       batch_first=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_unbatched_matches_reference(float_dtype, T, I, H, L, bidirectional, use_proj, hx, batch_first,
                                     seed):
    dtype = float_dtype
    """x (T, I), hx ((D*L, H_out), (D*L, H)): same numbers as a batch of one (batch_first
    does not apply to unbatched input, as in torch)."""
    rng = np.random.default_rng(seed)
    D, P = (2 if bidirectional else 1), (H // 2 if use_proj else 0)
    H_out = P or H
    lstm = make_lstm(I, H, L, batch_first=batch_first, bidirectional=bidirectional, proj_size=P,
                     dtype=dtype, rng=rng, wscale=0.8)
    x = rng.standard_normal((T, I)).astype(dtype)
    h0c0 = None
    if hx:
        h0c0 = (rng.standard_normal((D * L, H_out)).astype(dtype),
                rng.standard_normal((D * L, H)).astype(dtype))
    out, (h_n, c_n) = lstm(x, h0c0)
    assert out.shape == (T, D * H_out) and h_n.shape == (D * L, H_out) and c_n.shape == (D * L, H)
    dout = rng.standard_normal((T, D * H_out)).astype(dtype)
    dh_n = rng.standard_normal((D * L, H_out)).astype(dtype)
    dx, (dh0, dc0) = lstm.backward(dout, (dh_n, None))
    assert dx.shape == (T, I) and dh0.shape == (D * L, H_out) and dc0.shape == (D * L, H)

    r_hx = None if h0c0 is None else (h0c0[0][:, None], h0c0[1][:, None])
    r_out, (r_hn, r_cn), cache = ref.lstm_forward(x[:, None].astype(np.float64), params64(lstm),
                                                  L, bidirectional, P, hx=r_hx)
    r_dx, (r_dh0, r_dc0), r_grads = ref.lstm_backward(cache, dout[:, None], (dh_n[:, None], None))
    to, tg = KERNEL_TOL[dtype]
    grads = grads_by_name(lstm)
    check_tensors([("out", out, r_out[:, 0], to), ("h_n", h_n, r_hn[:, 0], to),
                   ("c_n", c_n, r_cn[:, 0], to), ("dx", dx, r_dx[:, 0], tg),
                   ("dh0", dh0, r_dh0[:, 0], tg), ("dc0", dc0, r_dc0[:, 0], tg)]
                  + [(f"grad {n}", grads[n], r_grads[n], tg) for n in grads], "unbatched")


def test_caller_may_mutate_its_arrays_between_forward_and_backward(float_dtype):
    dtype = float_dtype
    """Forward must not keep views of x / hx / lengths, and out / h_n / c_n must not be the
    saved state: writing any of them before backward changes nothing."""
    rng = np.random.default_rng(11)
    lstm = make_lstm(4, 6, 2, bidirectional=True, proj_size=3, dtype=dtype, rng=rng, wscale=0.8)
    x = rng.standard_normal((5, 3, 4)).astype(dtype)
    h0 = rng.standard_normal((4, 3, 3)).astype(dtype)
    c0 = rng.standard_normal((4, 3, 6)).astype(dtype)
    lengths = np.array([5, 2, 4])
    dout = rng.standard_normal((5, 3, 6)).astype(dtype)

    def run(mutate):
        xx, hh, cc, ll = x.copy(), h0.copy(), c0.copy(), lengths.copy()
        out, (h_n, c_n) = lstm(xx, (hh, cc), lengths=ll)
        for a in mutate(xx, hh, cc, ll, out, h_n, c_n):
            a[...] = 7
        lstm.zero_grad()
        dx, (dh0, dc0) = lstm.backward(dout)
        return [dx, dh0, dc0] + [g for g in grads_by_name(lstm).values()]

    base = run(lambda *arrays: [])
    for i, name in enumerate(["x", "h0", "c0", "lengths", "out", "h_n", "c_n"]):
        got = run(lambda *arrays: [arrays[i]])
        for a, b in zip(got, base):
            np.testing.assert_array_equal(a, b, err_msg=f"writing {name} after forward changed backward")


# ------------------------------------------------------------------------------------------
# one module, several shapes: workspaces are resized and results are never aliased


@settings(max_examples=SMALL_EXAMPLES, **_SETTINGS)
@given(calls=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 5), st.booleans()),
                      min_size=2, max_size=4),
       L=st.integers(1, 2), bidirectional=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_module_reuse_across_shapes(float_dtype, calls, L, bidirectional, seed):
    dtype = float_dtype
    """Several (T, B, lengths?) calls on one module; earlier results must stay untouched."""
    rng = np.random.default_rng(seed)
    I, H, P = 4, 5, 3
    D = 2 if bidirectional else 1
    lstm = make_lstm(I, H, L, bidirectional=bidirectional, proj_size=P, dtype=dtype, rng=rng,
                     wscale=0.7)
    params = params64(lstm)
    kept = []
    for T, B, use_len in calls:
        x = rng.standard_normal((T, B, I)).astype(dtype)
        lengths = random_lengths(rng, T, B) if use_len else None
        dout = rng.standard_normal((T, B, D * P)).astype(dtype)
        lstm.zero_grad()
        out, (h_n, c_n) = lstm(x, lengths=lengths)
        dx, (dh0, dc0) = lstm.backward(dout)
        grads = grads_by_name(lstm)
        results = (out, h_n, c_n, dx, dh0, dc0)
        kept.append((results, [a.copy() for a in results]))
        r_out, (r_hn, r_cn), cache = ref.lstm_forward(x, params, L, bidirectional, P,
                                                      lengths=lengths)
        valid = pad_mask(T, lengths, B)[:, :, None]
        r_dx, (r_dh0, r_dc0), r_grads = ref.lstm_backward(cache, np.where(valid, dout, 0.0))
        to, tg = KERNEL_TOL[dtype]
        check_tensors([("out", out, r_out, to), ("h_n", h_n, r_hn, to), ("c_n", c_n, r_cn, to),
                       ("dx", dx, r_dx, tg), ("dh0", dh0, r_dh0, tg), ("dc0", dc0, r_dc0, tg)]
                      + [(f"grad {n}", grads[n], r_grads[n], tg) for n in grads],
                      f"call (T={T}, B={B}, lengths={lengths}) of {calls}")
    for i, (live, copies) in enumerate(kept):
        for name, a, b in zip(("out", "h_n", "c_n", "dx", "dh0", "dc0"), live, copies):
            np.testing.assert_array_equal(
                a, b, err_msg=f"{name} of call {i} changed after later calls (aliases a workspace)")


def test_two_forwards_then_backward_uses_the_last_forward():
    rng = np.random.default_rng(0)
    lstm = make_lstm(3, 4, 2, dtype=np.float64, rng=rng, wscale=0.8)
    x1 = rng.standard_normal((5, 2, 3))
    x2 = rng.standard_normal((3, 4, 3))
    lstm(x1)
    out, _ = lstm(x2)
    dout = rng.standard_normal(out.shape)
    lstm.zero_grad()
    dx, _ = lstm.backward(dout)
    _, _, cache = ref.lstm_forward(x2, params64(lstm), 2)
    r_dx, _, r_grads = ref.lstm_backward(cache, dout)
    check_tensors([("dx", dx, r_dx, KERNEL_TOL[np.float64].grad)]
                  + [(n, g, r_grads[n], KERNEL_TOL[np.float64].grad)
                     for n, g in grads_by_name(lstm).items()])


# ------------------------------------------------------------------------------------------
# dropout between layers


@st.composite
def dropout_cases(draw):
    T, B = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    H = draw(st.integers(1, 9))
    return dict(
        T=T, B=B, I=draw(st.integers(1, 9)), H=H,
        P=draw(st.one_of(st.just(0), st.integers(1, H - 1))) if H > 1 else 0,
        L=draw(st.integers(2, 3)),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        p=draw(st.sampled_from([0.1, 0.3, 0.5, 0.9])),
        lengths=draw(st.one_of(st.none(), st.lists(st.integers(0, T), min_size=B, max_size=B))),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _check_masks(masks, L, T, B, width, p, dtype):
    assert isinstance(masks, list) and len(masks) == L - 1, (type(masks), len(masks))
    scale = 1.0 / (1.0 - p)
    for m in masks:
        m = np.asarray(m)
        assert m.shape == (T, B, width), (m.shape, (T, B, width))
        ok = (m == 0) | np.isclose(m, scale, rtol=1e-6, atol=0)
        assert ok.all(), f"mask values must be 0 or 1/(1-p)={scale}, got {np.unique(m)}"


@settings(max_examples=SMALL_EXAMPLES, **_SETTINGS)
@given(case=dropout_cases())
def test_dropout_masks_match_reference(float_dtype, case):
    dtype = float_dtype
    T, B, I, H, P, L, p = (case[k] for k in ("T", "B", "I", "H", "P", "L", "p"))
    bi, bf = case["bidirectional"], case["batch_first"]
    D, H_out = (2 if bi else 1), (P or H)
    rng = np.random.default_rng(case["seed"])
    lstm = make_lstm(I, H, L, batch_first=bf, dropout=p, bidirectional=bi, proj_size=P,
                     dtype=dtype, rng=rng, wscale=0.8)
    x_tm = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = None if case["lengths"] is None else np.array(case["lengths"])
    dout_tm = rng.standard_normal((T, B, D * H_out)).astype(dtype)

    lstmc.manual_seed(case["seed"])
    out, (h_n, c_n) = lstm(to_user_layout(x_tm, bf), lengths=lengths)
    masks = [np.array(m, copy=True) for m in lstm._last_dropout_masks]
    _check_masks(masks, L, T, B, D * H_out, p, dtype)
    dx, (dh0, dc0) = lstm.backward(to_user_layout(dout_tm, bf))
    grads = grads_by_name(lstm)

    valid = pad_mask(T, lengths, B)[:, :, None]
    r_out, (r_hn, r_cn), cache = ref.lstm_forward(
        x_tm, params64(lstm), L, bi, P, lengths=lengths,
        dropout_masks=[m.astype(np.float64) for m in masks])
    r_dx, (r_dh0, r_dc0), r_grads = ref.lstm_backward(cache, np.where(valid, dout_tm, 0.0))
    to, tg = KERNEL_TOL[dtype]
    check_tensors([("out", to_time_major(out, bf), r_out, to), ("h_n", h_n, r_hn, to),
                   ("c_n", c_n, r_cn, to), ("dx", to_time_major(dx, bf), r_dx, tg),
                   ("dh0", dh0, r_dh0, tg), ("dc0", dc0, r_dc0, tg)]
                  + [(f"grad {n}", grads[n], r_grads[n], tg) for n in grads],
                  f"dropout {case}")

    # same seed -> same masks and bit-identical outputs
    lstmc.manual_seed(case["seed"])
    out2, _ = lstm(to_user_layout(x_tm, bf), lengths=lengths)
    for m1, m2 in zip(masks, lstm._last_dropout_masks):
        np.testing.assert_array_equal(m1, m2, err_msg="same manual_seed, different dropout masks")
    np.testing.assert_array_equal(out, out2, err_msg="same manual_seed, different outputs")


def test_dropout_statistics_seed_and_eval(float_dtype):
    dtype = float_dtype
    rng = np.random.default_rng(5)
    T, B, I, H, L, p = 20, 16, 6, 16, 3, 0.3
    lstm = make_lstm(I, H, L, dropout=p, bidirectional=True, dtype=dtype, rng=rng, wscale=0.5)
    x = rng.standard_normal((T, B, I)).astype(dtype)

    lstmc.manual_seed(123)
    lstm(x)
    masks_a = [np.array(m, copy=True) for m in lstm._last_dropout_masks]
    _check_masks(masks_a, L, T, B, 2 * H, p, dtype)
    for m in masks_a:  # 10240 Bernoulli draws each: the dropped fraction is p within ~5 sigma
        dropped = float(np.mean(m == 0))
        assert abs(dropped - p) < 0.025, f"dropped fraction {dropped}, expected {p}"
    assert not np.array_equal(masks_a[0], masks_a[1]), "layers share one mask"

    lstm(x)  # the generator moved on: new masks
    assert not np.array_equal(masks_a[0], lstm._last_dropout_masks[0]), \
        "two train-mode forwards drew the same masks"
    lstmc.manual_seed(123)
    lstm(x)
    for a, b in zip(masks_a, lstm._last_dropout_masks):
        np.testing.assert_array_equal(a, b, err_msg="same manual_seed, different masks")
    lstmc.manual_seed(124)
    lstm(x)
    assert not np.array_equal(masks_a[0], lstm._last_dropout_masks[0]), \
        "different seeds, same masks"

    # eval: no dropout at all, deterministic, equal to the mask-free reference
    lstm.eval()
    out_e1, (hn_e, cn_e) = lstm(x)
    out_e2, _ = lstm(x)
    np.testing.assert_array_equal(out_e1, out_e2, err_msg="eval-mode forward is not deterministic")
    r_out, (r_hn, r_cn), _ = ref.lstm_forward(x, params64(lstm), L, True, 0)
    to = KERNEL_TOL[dtype].out
    check_tensors([("eval out", out_e1, r_out, to), ("eval h_n", hn_e, r_hn, to),
                   ("eval c_n", cn_e, r_cn, to)], "eval mode must not apply dropout")
    # and back to train: dropout again
    lstm.train()
    out_t, _ = lstm(x)
    assert not np.allclose(out_t, out_e1), "train() did not turn dropout back on"


def test_dropout_single_layer_has_no_masks():
    lstm = lstmc.nn.LSTM(3, 4, num_layers=1, dropout=0.5)
    lstm(np.ones((2, 1, 3), np.float32))
    assert list(lstm._last_dropout_masks) == []


def test_writing_parameter_data_changes_the_module(float_dtype):
    dtype = float_dtype
    rng = np.random.default_rng(8)
    lstm = make_lstm(3, 5, 2, bidirectional=True, proj_size=2, dtype=dtype)
    x = rng.standard_normal((4, 2, 3)).astype(dtype)
    out0, _ = lstm(x)
    out0 = out0.copy()
    new = {}
    for name, p in lstm.named_parameters():
        assert p.data.shape == lstm.state_dict()[name].shape, name
        v = rng.uniform(-0.9, 0.9, size=p.data.shape).astype(dtype)
        p.data[...] = v
        new[name] = v
    sd = lstm.state_dict()
    for name, v in new.items():
        np.testing.assert_array_equal(sd[name], v, err_msg=f"{name}: p.data is not a view")
    # state_dict returns copies: writing them must not change the module
    sd["weight_hh_l0"][...] = 123.0
    np.testing.assert_array_equal(lstm.state_dict()["weight_hh_l0"], new["weight_hh_l0"])
    out1, (h_n, c_n) = lstm(x)
    assert not np.allclose(out1, out0), "writing p.data did not change the output"
    r_out, (r_hn, r_cn), _ = ref.lstm_forward(x, {k: v.astype(np.float64) for k, v in new.items()},
                                              2, True, 2)
    to = KERNEL_TOL[dtype].out
    check_tensors([("out", out1, r_out, to), ("h_n", h_n, r_hn, to), ("c_n", c_n, r_cn, to)],
                  "output after writing p.data")
    # a single element, in place
    name, p = next(iter(lstm.named_parameters()))
    p.data[0, 0] += 0.5
    assert lstm.state_dict()[name][0, 0] == np.asarray(new[name][0, 0] + dtype(0.5), dtype)
