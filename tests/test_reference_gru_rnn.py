"""Tests of the float64 reference GRU and simple RNN (lstmc.reference), the spec of their kernels.

Four cell kinds share every test: GRU with reset_after=True (torch.nn.GRU) and False (Keras
reset_after=False), RNN with tanh and relu. As for the LSTM (test_reference.py, whose helpers
and tolerances are reused), gradients are checked against central finite differences of a
random linear functional loss = <R_out, out> + <R_h, h_n>. When torch is installed the
reference is compared with torch.nn.GRU / RNN / GRUCell / RNNCell in float64. reset_after=False
has no torch counterpart; besides finite differences it is pinned by special cases where the
two GRU variants must agree, and by a scalar case computed by hand.
"""

import math

import numpy as np
import pytest
from test_reference import (FD_ATOL, FD_RTOL, TORCH_ATOL, TORCH_RTOL, assert_close,
                            numerical_grad, padding_mask)

from lstmc import reference as ref

KINDS = {
    "gru": dict(gates=3, opts=dict(reset_after=True)),
    "gru_reset_before": dict(gates=3, opts=dict(reset_after=False)),
    "rnn_tanh": dict(gates=1, opts=dict(nonlinearity="tanh")),
    "rnn_relu": dict(gates=1, opts=dict(nonlinearity="relu")),
}
for _kind, _spec in KINDS.items():
    if _kind.startswith("gru"):
        _spec.update(forward=ref.gru_forward, backward=ref.gru_backward,
                     cell_forward=ref.gru_cell_forward, cell_backward=ref.gru_cell_backward)
    else:
        _spec.update(forward=ref.rnn_forward, backward=ref.rnn_backward,
                     cell_forward=ref.rnn_cell_forward, cell_backward=ref.rnn_cell_backward)

# finite differences of relu are only valid when no pre-activation is within EPS * |d a| of 0
# (~1e-6 here); the seeds below keep every pre-activation at least 100x that from the kink
RELU_MARGIN = 1e-4


# ----------------------------------------------------------------------------------------------
# helpers


def make_params(rng, gates, I, H, L=1, D=1, bias=True, scale=0.6):
    """Random GRU (gates=3) or RNN (gates=1) parameters with PyTorch names and shapes."""
    params = {}
    for layer in range(L):
        in_size = I if layer == 0 else D * H
        for direction in range(D):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            params["weight_ih" + sfx] = rng.uniform(-scale, scale, (gates * H, in_size))
            params["weight_hh" + sfx] = rng.uniform(-scale, scale, (gates * H, H))
            if bias:
                params["bias_ih" + sfx] = rng.uniform(-scale, scale, gates * H)
                params["bias_hh" + sfx] = rng.uniform(-scale, scale, gates * H)
    return params


def make_case(kind, seed=0, T=4, B=3, I=3, H=5, L=1, D=1, bias=True, hx=False, lengths=None,
              dropout=False):
    """Inputs, parameters, options and random loss weights for one sequence test case."""
    rng = np.random.default_rng(seed)
    case = dict(
        kind=kind,
        x=rng.standard_normal((T, B, I)),
        params=make_params(rng, KINDS[kind]["gates"], I, H, L, D, bias),
        h0=rng.standard_normal((D * L, B, H)) if hx else np.zeros((D * L, B, H)),
        use_hx=hx,
        opts=dict(num_layers=L, bidirectional=D == 2,
                  lengths=None if lengths is None else np.array(lengths), **KINDS[kind]["opts"]),
        R_out=rng.standard_normal((T, B, D * H)),
        R_h=rng.standard_normal((D * L, B, H)),
    )
    # inverted-dropout masks with p = 0.3
    case["opts"]["dropout_masks"] = (
        [(rng.random((T, B, D * H)) > 0.3) / 0.7 for _ in range(L - 1)] if dropout else None)
    return case


def run(case, x=None):
    return KINDS[case["kind"]]["forward"](case["x"] if x is None else x, case["params"],
                                          hx=case["h0"] if case["use_hx"] else None,
                                          **case["opts"])


def loss(case):
    out, h_n, _ = run(case)
    return np.sum(case["R_out"] * out) + np.sum(case["R_h"] * h_n)


def analytic(case, x=None, R_out=None):
    out, h_n, cache = run(case, x)
    dx, dh0, grads = KINDS[case["kind"]]["backward"](
        cache, case["R_out"] if R_out is None else R_out, case["R_h"])
    return (out, h_n), dict(x=dx, h0=dh0, **grads)


def relu_margin(cache):
    """Smallest |pre-activation| over all steps of a relu sequence (reads the private tapes)."""
    margin = np.inf
    for tape in cache["tapes"]:
        for _, _, c in tape:
            a = c["x"] @ c["w_ih"].T + c["h"] @ c["w_hh"].T
            a = a + sum(c[b] for b in ("b_ih", "b_hh") if c[b] is not None)
            margin = min(margin, np.abs(a).min())
    return margin


def cell_weights(rng, gates, I, H, bias, scale=0.6):
    w = dict(w_ih=rng.uniform(-scale, scale, (gates * H, I)),
             w_hh=rng.uniform(-scale, scale, (gates * H, H)))
    if bias:
        w.update(b_ih=rng.uniform(-scale, scale, gates * H),
                 b_hh=rng.uniform(-scale, scale, gates * H))
    return w


# ----------------------------------------------------------------------------------------------
# finite differences


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", KINDS)
def test_cell_gradients_match_finite_differences(kind, bias):
    spec = KINDS[kind]
    rng = np.random.default_rng(1)
    B, I, H = 3, 4, 5
    w = cell_weights(rng, spec["gates"], I, H, bias)
    x, h = rng.standard_normal((B, I)), rng.standard_normal((B, H))
    R_h = rng.standard_normal((B, H))

    def f():
        h1, _ = spec["cell_forward"](x, h, **w, **spec["opts"])
        return np.sum(R_h * h1)

    _, cache = spec["cell_forward"](x, h, **w, **spec["opts"])
    if kind == "rnn_relu":
        a = x @ w["w_ih"].T + h @ w["w_hh"].T + (w["b_ih"] + w["b_hh"] if bias else 0.0)
        assert np.abs(a).min() > RELU_MARGIN and (a > 0).any() and (a < 0).any()
    dx, dh, grads = spec["cell_backward"](cache, R_h)
    assert set(grads) == set(w)
    got = dict(x=dx, h=dh, **grads)
    want = {name: numerical_grad(f, a) for name, a in dict(x=x, h=h, **w).items()}
    assert_close(got, want, FD_RTOL, FD_ATOL)


SEQ_CASES = {
    "L1": dict(),
    "L2-bi-lengths-hx-dropout": dict(T=3, B=3, H=3, L=2, D=2, hx=True, lengths=[2, 0, 3],
                                     dropout=True),
    "L2-nobias-I1-lengths-dropout": dict(T=5, B=3, I=1, L=2, bias=False, lengths=[2, 5, 0],
                                         dropout=True),
    "bi-T1-B1-hx": dict(T=1, B=1, I=2, H=3, D=2, hx=True),
    "L3-bi-lengths-nobias-hx": dict(T=2, B=3, I=3, H=2, L=3, D=2, bias=False, hx=True,
                                    lengths=[1, 2, 0]),
}


@pytest.mark.parametrize("kw", SEQ_CASES.values(), ids=SEQ_CASES.keys())
@pytest.mark.parametrize("kind", KINDS)
def test_sequence_gradients_match_finite_differences(kind, kw):
    case = make_case(kind, seed=2, **kw)
    _, got = analytic(case)
    assert set(got) == {"x", "h0", *case["params"]}
    # h0 is perturbed even when the forward got hx=None: None must mean zeros
    case["use_hx"] = True
    if kind == "rnn_relu":
        assert relu_margin(run(case)[2]) > RELU_MARGIN
    targets = dict(x=case["x"], h0=case["h0"], **case["params"])
    want = {name: numerical_grad(lambda: loss(case), a) for name, a in targets.items()}
    assert_close(got, want, FD_RTOL, FD_ATOL)


# ----------------------------------------------------------------------------------------------
# variable lengths and padding

PAD_CASE = dict(T=5, B=4, H=3, L=2, D=2, hx=True, lengths=[3, 0, 5, 1], dropout=True)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_values_never_matter(kind):
    case = make_case(kind, seed=3, **PAD_CASE)
    pad = padding_mask(5, case["opts"]["lengths"])
    x_nan, R_nan = case["x"].copy(), case["R_out"].copy()
    x_nan[pad], R_nan[pad] = np.nan, np.nan
    outs, grads = analytic(case)
    outs_nan, grads_nan = analytic(case, x=x_nan, R_out=R_nan)
    # rows at padding never enter a cell, so the results are bit-identical
    for a, b in zip(outs, outs_nan):
        np.testing.assert_array_equal(a, b)
    for name in grads:
        np.testing.assert_array_equal(grads[name], grads_nan[name], err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_output_and_dx_are_exactly_zero_at_padding(kind):
    case = make_case(kind, seed=4, **PAD_CASE)
    pad = padding_mask(5, case["opts"]["lengths"])
    (out, _), grads = analytic(case)
    assert np.all(out[pad] == 0.0)
    assert np.all(grads["x"][pad] == 0.0)
    if kind != "rnn_relu":  # relu outputs are legitimately 0 at valid steps too
        assert np.all(out[~pad] != 0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_length_row_keeps_initial_state(kind):
    case = make_case(kind, seed=6, **PAD_CASE)  # row 1 has length 0
    (out, h_n), grads = analytic(case)
    np.testing.assert_array_equal(h_n[:, 1], case["h0"][:, 1])
    assert np.all(out[:, 1] == 0.0) and np.all(grads["x"][:, 1] == 0.0)
    # the state passes through untouched, so does its gradient
    np.testing.assert_array_equal(grads["h0"][:, 1], case["R_h"][:, 1])


@pytest.mark.parametrize("kind", KINDS)
def test_full_lengths_equal_no_lengths(kind):
    case = make_case(kind, seed=5, T=4, B=3, L=2, D=2, hx=True, dropout=True)
    outs, grads = analytic(case)
    case["opts"]["lengths"] = np.full(3, 4)
    outs_full, grads_full = analytic(case)
    for a, b in zip(outs, outs_full):
        np.testing.assert_array_equal(a, b)
    for name in grads:
        np.testing.assert_array_equal(grads[name], grads_full[name], err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_reverse_direction_runs_over_each_rows_valid_prefix(kind):
    # row b of a padded batch must equal the same sequence run alone, truncated to len_b
    case = make_case(kind, seed=7, T=5, B=3, H=4, L=2, D=2, hx=True, lengths=[2, 5, 3])
    out, h_n, _ = run(case)
    opts = dict(case["opts"], lengths=None)
    for b, n in enumerate(case["opts"]["lengths"]):
        out_b, h_b, _ = KINDS[kind]["forward"](case["x"][:n, b:b + 1], case["params"],
                                               hx=case["h0"][:, b:b + 1], **opts)
        assert_close(dict(out=out[:n, b:b + 1], h_n=h_n[:, b:b + 1]),
                     dict(out=out_b, h_n=h_b), 1e-13, 1e-14)


# ----------------------------------------------------------------------------------------------
# small contracts


@pytest.mark.parametrize("kind", KINDS)
def test_sequence_of_one_step_is_the_cell(kind):
    spec = KINDS[kind]
    case = make_case(kind, seed=9, T=1, B=2, hx=True)
    out, h_n, _ = run(case)
    p = case["params"]
    h1, _ = spec["cell_forward"](case["x"][0], case["h0"][0], p["weight_ih_l0"],
                                 p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"],
                                 **spec["opts"])
    np.testing.assert_array_equal(out[0], h1)
    np.testing.assert_array_equal(h_n[0], h1)


@pytest.mark.parametrize("kind", KINDS)
def test_none_states_mean_zeros(kind):
    spec = KINDS[kind]
    case = make_case(kind, seed=10, T=3, B=2, L=2, D=2, lengths=[1, 3])
    _, _, cache = run(case)
    want = spec["backward"](cache, case["R_out"], np.zeros_like(case["R_h"]))
    got = spec["backward"](cache, case["R_out"])
    for u, v in zip(got[:2], want[:2]):
        np.testing.assert_array_equal(u, v)
    w = dict(w_ih=case["params"]["weight_ih_l0"], w_hh=case["params"]["weight_hh_l0"])
    h1, cache = spec["cell_forward"](case["x"][0], None, **w, **spec["opts"])
    h1_zeros, _ = spec["cell_forward"](case["x"][0], np.zeros_like(h1), **w, **spec["opts"])
    np.testing.assert_array_equal(h1, h1_zeros)
    a, b = spec["cell_backward"](cache, None), spec["cell_backward"](cache, np.zeros_like(h1))
    for u, v in zip(a[:2], b[:2]):
        np.testing.assert_array_equal(u, v)


def test_relu_derivative_at_zero_is_zero():
    # x = h = 0 and no bias: every pre-activation is exactly 0, h1 = 0 and nothing flows back
    w = cell_weights(np.random.default_rng(14), 1, 3, 4, bias=False)
    h1, cache = ref.rnn_cell_forward(np.zeros((2, 3)), np.zeros((2, 4)), **w,
                                     nonlinearity="relu")
    assert np.all(h1 == 0.0)
    dx, dh, grads = ref.rnn_cell_backward(cache, np.ones((2, 4)))
    for a in (dx, dh, *grads.values()):
        assert np.all(a == 0.0)
    # one unit exactly at the kink among live ones: only the live ones pass gradient
    b = np.array([0.0, 1.0, -1.0, 2.0])
    h1, cache = ref.rnn_cell_forward(np.zeros((1, 3)), None, **w, b_ih=b, nonlinearity="relu")
    np.testing.assert_array_equal(h1, [[0.0, 1.0, 0.0, 2.0]])
    _, _, grads = ref.rnn_cell_backward(cache, np.ones((1, 4)))
    np.testing.assert_array_equal(grads["b_ih"], [0.0, 1.0, 0.0, 1.0])


def test_bad_arguments_raise():
    case = make_case("gru", seed=11, T=3, B=2, H=4)
    x, p = case["x"], case["params"]
    with pytest.raises(ValueError, match="nonlinearity"):
        ref.rnn_forward(x, make_case("rnn_tanh", T=3, B=2)["params"], nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="nonlinearity"):
        ref.rnn_cell_forward(x[0], None, np.zeros((4, 3)), np.zeros((4, 4)), nonlinearity="Tanh")
    with pytest.raises(ValueError, match="weight_hh_l0"):
        ref.rnn_forward(x, p)  # GRU params are not RNN params
    with pytest.raises(ValueError, match="weight_hh_l0"):
        ref.gru_forward(x, make_case("rnn_tanh", T=3, B=2)["params"])
    with pytest.raises(ValueError, match="lengths"):
        ref.gru_forward(x, p, lengths=[1, 4])
    with pytest.raises(TypeError, match="lengths"):
        ref.gru_forward(x, p, lengths=[1.0, 2.0])
    with pytest.raises(ValueError, match="hx"):
        ref.gru_forward(x, p, hx=np.zeros((1, 2, 5)))
    with pytest.raises(ValueError, match="dropout_masks"):
        ref.gru_forward(x, p, dropout_masks=[np.ones((3, 2, 4))])
    _, _, cache = ref.gru_forward(x, p)
    with pytest.raises(ValueError, match="dh_n"):
        ref.gru_backward(cache, np.zeros((3, 2, 4)), np.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match="dout"):
        ref.gru_backward(cache, np.zeros((3, 2, 5)))


# ----------------------------------------------------------------------------------------------
# GRU reset_after=False (no torch counterpart): special cases where it must agree with
# reset_after=True, and one scalar case by hand


def both_gru_variants(case):
    """analytic() for reset_after=True and False on the same case."""
    results = []
    for reset_after in (True, False):
        case["opts"]["reset_after"] = reset_after
        results.append(analytic(case))
    return results


def n_block(params):
    """Names and row slices of the candidate (n) block of weight_hh / bias_hh."""
    H = params["weight_hh_l0"].shape[1]
    return [(k, slice(2 * H, 3 * H)) for k in params if k.startswith(("weight_hh", "bias_hh"))]


def test_gru_variants_agree_when_the_candidates_recurrent_term_is_zero():
    # W_hn = 0 and b_hn = 0: r * (W_hn h + b_hn) = W_hn (r * h) + b_hn = 0
    case = make_case("gru", seed=15, **PAD_CASE)
    for name, rows in n_block(case["params"]):
        case["params"][name][rows] = 0.0
    (outs_a, grads_a), (outs_b, grads_b) = both_gru_variants(case)
    assert_close(dict(out=outs_a[0], h_n=outs_a[1]), dict(out=outs_b[0], h_n=outs_b[1]),
                 1e-14, 1e-15)
    # the gradients of W_hn and b_hn differ (they read h vs r * h; r vs 1): all others agree,
    # and those two are covered by finite differences
    for name, rows in n_block(case["params"]):
        grads_a[name], grads_b[name] = grads_a[name][:rows.start], grads_b[name][:rows.start]
    assert_close(grads_a, grads_b, 1e-13, 1e-14)


def test_gru_variants_agree_when_the_reset_gate_is_one():
    # b_ir = 60 saturates r to exactly 1.0 in float64: r * (W_hn h + b_hn) = W_hn (1 * h) + b_hn,
    # and sigmoid'(60) = r (1 - r) = 0 exactly, so every gradient agrees too
    case = make_case("gru", seed=16, **PAD_CASE)
    H = 3
    for name in case["params"]:
        if name.startswith("bias_ih"):
            case["params"][name][:H] = 60.0
    (outs_a, grads_a), (outs_b, grads_b) = both_gru_variants(case)
    assert_close(dict(out=outs_a[0], h_n=outs_a[1], **grads_a),
                 dict(out=outs_b[0], h_n=outs_b[1], **grads_b), 1e-14, 1e-15)


def test_gru_scalar_case_by_hand():
    # H = I = B = 1: both candidates written out with math; they differ only through b_hn
    x, h = 0.7, -0.4
    a_r, a_z, a_n, u_r, u_z, u_n = 0.5, -0.3, 0.8, 0.2, 0.6, -0.9
    b_ir, b_iz, b_in, b_hr, b_hz, b_hn = 0.1, -0.2, 0.3, 0.05, 0.15, -0.25
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    r = sig(a_r * x + b_ir + u_r * h + b_hr)
    z = sig(a_z * x + b_iz + u_z * h + b_hz)
    n_after = math.tanh(a_n * x + b_in + r * (u_n * h + b_hn))
    n_before = math.tanh(a_n * x + b_in + u_n * (r * h) + b_hn)
    w = dict(w_ih=np.array([[a_r], [a_z], [a_n]]), w_hh=np.array([[u_r], [u_z], [u_n]]),
             b_ih=np.array([b_ir, b_iz, b_in]), b_hh=np.array([b_hr, b_hz, b_hn]))
    for reset_after, n in ((True, n_after), (False, n_before)):
        h1, _ = ref.gru_cell_forward(np.array([[x]]), np.array([[h]]), **w,
                                     reset_after=reset_after)
        np.testing.assert_allclose(h1, [[(1 - z) * n + z * h]], rtol=1e-15, atol=1e-16)
    assert abs(n_after - n_before) > 0.01  # the case does tell the variants apart


# ----------------------------------------------------------------------------------------------
# parity with PyTorch (float64)

TORCH_KINDS = ["gru", "rnn_tanh", "rnn_relu"]
TORCH_CASES = {
    "L1": dict(T=4, B=3, I=3, H=5),
    "L2-bi-lengths-hx": dict(T=5, B=4, I=3, H=4, L=2, D=2, hx=True, lengths=[3, 5, 1, 4]),
    "L2-bi-nobias-lengths-hx": dict(T=4, B=3, I=2, H=5, L=2, D=2, bias=False, hx=True,
                                    lengths=[4, 1, 2]),
    "T1-B1-hx": dict(T=1, B=1, I=2, H=3, hx=True),
}


def torch_module(torch, kind, I, H, **kw):
    torch.manual_seed(0)
    if kind == "gru":
        return torch.nn.GRU(I, H, dtype=torch.float64, **kw)
    return torch.nn.RNN(I, H, nonlinearity=KINDS[kind]["opts"]["nonlinearity"],
                        dtype=torch.float64, **kw)


@pytest.mark.parametrize("kw", TORCH_CASES.values(), ids=TORCH_CASES.keys())
@pytest.mark.parametrize("kind", TORCH_KINDS)
def test_matches_torch(kind, kw):
    torch = pytest.importorskip("torch")
    kw = dict(dict(L=1, D=1, bias=True, hx=False, lengths=None), **kw)
    T, I, H = kw["T"], kw["I"], kw["H"]
    module = torch_module(torch, kind, I, H, num_layers=kw["L"], bias=kw["bias"],
                          bidirectional=kw["D"] == 2)
    case = make_case(kind, seed=12, **kw)
    case["params"] = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}

    x = torch.tensor(case["x"], requires_grad=True)
    h0 = torch.tensor(case["h0"], requires_grad=True)
    hx = h0 if kw["hx"] else None
    if kw["lengths"] is None:
        out, h_n = module(x, hx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.tensor(kw["lengths"]), enforce_sorted=False)
        out, h_n = module(packed, hx)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    loss = (out * torch.tensor(case["R_out"])).sum() + (h_n * torch.tensor(case["R_h"])).sum()
    loss.backward()
    want = dict(out=out, h_n=h_n, dx=x.grad)
    if kw["hx"]:
        want["dh0"] = h0.grad
    want.update({"d" + k: p.grad for k, p in module.named_parameters()})
    want = {k: v.detach().numpy() for k, v in want.items()}

    (r_out, r_h), g = analytic(case)
    got = dict(out=r_out, h_n=r_h, dx=g["x"], dh0=g["h0"],
               **{"d" + k: v for k, v in g.items() if k not in ("x", "h0")})
    assert_close(got, want, TORCH_RTOL, TORCH_ATOL)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", TORCH_KINDS)
def test_cell_matches_torch_cell(kind, bias):
    torch = pytest.importorskip("torch")
    spec = KINDS[kind]
    rng = np.random.default_rng(13)
    B, I, H = 3, 4, 5
    torch.manual_seed(0)
    if kind == "gru":
        cell = torch.nn.GRUCell(I, H, bias=bias, dtype=torch.float64)
    else:
        cell = torch.nn.RNNCell(I, H, bias=bias, nonlinearity=spec["opts"]["nonlinearity"],
                                dtype=torch.float64)
    x, h = (torch.tensor(rng.standard_normal(s), requires_grad=True) for s in [(B, I), (B, H)])
    R_h = rng.standard_normal((B, H))
    h1 = cell(x, h)
    (h1 * torch.tensor(R_h)).sum().backward()

    names = [("w_ih", "weight_ih"), ("w_hh", "weight_hh")]
    names += [("b_ih", "bias_ih"), ("b_hh", "bias_hh")] if bias else []
    w = {short: getattr(cell, name).detach().numpy() for short, name in names}
    r_h1, cache = spec["cell_forward"](x.detach().numpy(), h.detach().numpy(), **w,
                                       **spec["opts"])
    dx, dh, grads = spec["cell_backward"](cache, R_h)
    got = dict(h1=r_h1, dx=dx, dh=dh, **grads)
    want = dict(h1=h1, dx=x.grad, dh=h.grad,
                **{short: getattr(cell, name).grad for short, name in names})
    assert_close(got, {k: v.detach().numpy() for k, v in want.items()}, TORCH_RTOL, TORCH_ATOL)


def test_relu_kink_matches_torch():
    # pre-activations exactly 0: torch's relu backward passes nothing there either
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cell = torch.nn.RNNCell(3, 4, nonlinearity="relu", dtype=torch.float64)
    with torch.no_grad():
        cell.bias_ih.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0]))
        cell.bias_hh.zero_()
    x = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    cell(x, h).sum().backward()
    w = {s: getattr(cell, n).detach().numpy() for s, n in
         [("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")]}
    _, cache = ref.rnn_cell_forward(np.zeros((2, 3)), np.zeros((2, 4)), **w, nonlinearity="relu")
    dx, dh, grads = ref.rnn_cell_backward(cache, np.ones((2, 4)))
    np.testing.assert_array_equal(dx, x.grad.numpy())
    np.testing.assert_array_equal(dh, h.grad.numpy())
    np.testing.assert_array_equal(grads["b_ih"], cell.bias_ih.grad.numpy())
