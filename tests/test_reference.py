"""Tests of the float64 reference LSTM (lstmc.reference), the spec every kernel is held to.

Gradients are checked against central finite differences of a random linear functional of
all outputs, loss = <R_out, out> + <R_h, h_n> + <R_c, c_n>, so the backward pass receives
random dout, dh_n and dc_n at once. When torch is installed the reference is also compared
with torch.nn.LSTM / LSTMCell in float64.
"""

import numpy as np
import pytest

from lstmc import reference as ref

# Central differences: truncation error ~ EPS^2 * f''' ~ 1e-12, rounding error of the loss
# (|loss| ~ 10, ulp ~ 2e-15) over 2 * EPS ~ 1e-9 at worst; gradients are O(0.1..1).
EPS = 1e-6
FD_RTOL, FD_ATOL = 1e-6, 1e-8
# float64 vs torch: same maths, different summation order: ~1e-15 in practice.
TORCH_RTOL, TORCH_ATOL = 1e-10, 1e-10


# ----------------------------------------------------------------------------------------------
# helpers


def assert_close(actual, expected, rtol, atol):
    """Compare two dicts of arrays by name; on failure list max |diff| of every tensor."""
    lines, failed = [], False
    for name, want in expected.items():
        got = np.asarray(actual[name], dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            failed = True
            lines.append(f"{name:26s} shape {got.shape} != expected {want.shape}")
            continue
        ok = np.allclose(got, want, rtol=rtol, atol=atol)
        diff = np.abs(got - want).max(initial=0.0)
        failed |= not ok
        lines.append(f"{name:26s} max|diff| {diff:.3e}   max|expected| "
                     f"{np.abs(want).max(initial=0.0):.3e}   {'ok' if ok else 'FAIL'}")
    if failed:
        pytest.fail(f"tensors differ (rtol={rtol}, atol={atol}):\n" + "\n".join(lines))


def numerical_grad(f, a):
    """Central-difference gradient of the scalar f() w.r.t. array a, perturbed in place."""
    g = np.empty_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + EPS
        f_plus = f()
        a[idx] = old - EPS
        f_minus = f()
        a[idx] = old
        g[idx] = (f_plus - f_minus) / (2 * EPS)
    return g


def make_params(rng, I, H, L=1, D=1, P=0, bias=True, scale=0.6):
    """Random LSTM parameters with PyTorch names and shapes."""
    H_out = P or H
    params = {}
    for layer in range(L):
        in_size = I if layer == 0 else D * H_out
        for direction in range(D):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            params["weight_ih" + sfx] = rng.uniform(-scale, scale, (4 * H, in_size))
            params["weight_hh" + sfx] = rng.uniform(-scale, scale, (4 * H, H_out))
            if bias:
                params["bias_ih" + sfx] = rng.uniform(-scale, scale, 4 * H)
                params["bias_hh" + sfx] = rng.uniform(-scale, scale, 4 * H)
            if P:
                params["weight_hr" + sfx] = rng.uniform(-scale, scale, (P, H))
    return params


def make_case(seed=0, T=4, B=3, I=3, H=5, L=1, D=1, P=0, bias=True, hx=False, lengths=None,
              dropout=False):
    """Inputs, parameters, options and random loss weights for one sequence test case."""
    rng = np.random.default_rng(seed)
    H_out = P or H
    case = dict(
        x=rng.standard_normal((T, B, I)),
        params=make_params(rng, I, H, L, D, P, bias),
        h0=rng.standard_normal((D * L, B, H_out)) if hx else np.zeros((D * L, B, H_out)),
        c0=rng.standard_normal((D * L, B, H)) if hx else np.zeros((D * L, B, H)),
        use_hx=hx,
        opts=dict(num_layers=L, bidirectional=D == 2, proj_size=P,
                  lengths=None if lengths is None else np.array(lengths)),
        R_out=rng.standard_normal((T, B, D * H_out)),
        R_h=rng.standard_normal((D * L, B, H_out)),
        R_c=rng.standard_normal((D * L, B, H)),
    )
    # inverted-dropout masks with p = 0.3
    case["opts"]["dropout_masks"] = (
        [(rng.random((T, B, D * H_out)) > 0.3) / 0.7 for _ in range(L - 1)] if dropout else None)
    return case


def run(case, x=None):
    hx = (case["h0"], case["c0"]) if case["use_hx"] else None
    return ref.lstm_forward(case["x"] if x is None else x, case["params"], hx=hx,
                            **case["opts"])


def loss(case):
    out, (h_n, c_n), _ = run(case)
    return (np.sum(case["R_out"] * out) + np.sum(case["R_h"] * h_n)
            + np.sum(case["R_c"] * c_n))


def analytic(case, x=None, R_out=None):
    out, (h_n, c_n), cache = run(case, x)
    dx, (dh0, dc0), grads = ref.lstm_backward(
        cache, case["R_out"] if R_out is None else R_out, (case["R_h"], case["R_c"]))
    return (out, h_n, c_n), dict(x=dx, h0=dh0, c0=dc0, **grads)


def padding_mask(T, lengths):
    """(T, B) bool, True where t >= len_b."""
    return np.arange(T)[:, None] >= np.asarray(lengths)[None, :]


# ----------------------------------------------------------------------------------------------
# finite differences


@pytest.mark.parametrize("proj", [0, 2], ids=["noproj", "proj"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_cell_gradients_match_finite_differences(bias, proj):
    rng = np.random.default_rng(1)
    B, I, H = 3, 4, 5
    H_out = proj or H
    w = dict(w_ih=rng.uniform(-0.6, 0.6, (4 * H, I)), w_hh=rng.uniform(-0.6, 0.6, (4 * H, H_out)))
    if bias:
        w.update(b_ih=rng.uniform(-0.6, 0.6, 4 * H), b_hh=rng.uniform(-0.6, 0.6, 4 * H))
    if proj:
        w["w_hr"] = rng.uniform(-0.6, 0.6, (proj, H))
    x, h, c = (rng.standard_normal((B, I)), rng.standard_normal((B, H_out)),
               rng.standard_normal((B, H)))
    R_h, R_c = rng.standard_normal((B, H_out)), rng.standard_normal((B, H))

    def f():
        h1, c1, _ = ref.lstm_cell_forward(x, h, c, **w)
        return np.sum(R_h * h1) + np.sum(R_c * c1)

    _, _, cache = ref.lstm_cell_forward(x, h, c, **w)
    dx, dh, dc, grads = ref.lstm_cell_backward(cache, R_h, R_c)
    assert set(grads) == set(w)
    got = dict(x=dx, h=dh, c=dc, **grads)
    want = {name: numerical_grad(f, a) for name, a in dict(x=x, h=h, c=c, **w).items()}
    assert_close(got, want, FD_RTOL, FD_ATOL)


SEQ_CASES = {
    "L1": dict(),
    "L2-bi-proj-lengths-hx-dropout": dict(T=4, B=4, H=3, L=2, D=2, P=2, hx=True,
                                          lengths=[3, 0, 4, 1], dropout=True),
    "L2-nobias-I1-lengths-hx-dropout": dict(T=5, B=3, I=1, L=2, bias=False, hx=True,
                                            lengths=[2, 5, 0], dropout=True),
    "bi-T1-B1-hx": dict(T=1, B=1, I=2, H=3, D=2, hx=True),
    "L3-bi-proj-lengths-dropout": dict(T=2, B=2, I=3, H=3, L=3, D=2, P=2, lengths=[1, 2],
                                       dropout=True),
    "proj-nobias-lengths": dict(T=3, B=3, I=2, H=3, P=1, bias=False, lengths=[0, 2, 3],
                                hx=True),
}


@pytest.mark.parametrize("kw", SEQ_CASES.values(), ids=SEQ_CASES.keys())
def test_sequence_gradients_match_finite_differences(kw):
    case = make_case(seed=2, **kw)
    _, got = analytic(case)
    assert set(got) == {"x", "h0", "c0", *case["params"]}
    # h0/c0 are perturbed even when the forward gets hx=None: None must mean zeros
    targets = dict(x=case["x"], h0=case["h0"], c0=case["c0"], **case["params"])
    case["use_hx"] = True
    want = {name: numerical_grad(lambda: loss(case), a) for name, a in targets.items()}
    assert_close(got, want, FD_RTOL, FD_ATOL)


# ----------------------------------------------------------------------------------------------
# variable lengths and padding

PAD_CASE = dict(T=5, B=4, L=2, D=2, P=2, hx=True, lengths=[3, 0, 5, 1], dropout=True)


def test_padding_values_never_matter():
    case = make_case(seed=3, **PAD_CASE)
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


def test_output_and_dx_are_exactly_zero_at_padding():
    case = make_case(seed=4, **PAD_CASE)
    pad = padding_mask(5, case["opts"]["lengths"])
    (out, _, _), grads = analytic(case)
    assert np.all(out[pad] == 0.0)
    assert np.all(grads["x"][pad] == 0.0)
    assert np.all(out[~pad] != 0.0)


def test_full_lengths_equal_no_lengths():
    case = make_case(seed=5, T=4, B=3, L=2, D=2, P=2, hx=True, dropout=True)
    outs, grads = analytic(case)
    case["opts"]["lengths"] = np.full(3, 4)
    outs_full, grads_full = analytic(case)
    for a, b in zip(outs, outs_full):
        np.testing.assert_array_equal(a, b)
    for name in grads:
        np.testing.assert_array_equal(grads[name], grads_full[name], err_msg=name)


def test_zero_length_row_keeps_initial_state():
    case = make_case(seed=6, **PAD_CASE)  # row 1 has length 0
    (out, h_n, c_n), grads = analytic(case)
    np.testing.assert_array_equal(h_n[:, 1], case["h0"][:, 1])
    np.testing.assert_array_equal(c_n[:, 1], case["c0"][:, 1])
    assert np.all(out[:, 1] == 0.0) and np.all(grads["x"][:, 1] == 0.0)
    # the state passes through untouched, so does its gradient
    np.testing.assert_array_equal(grads["h0"][:, 1], case["R_h"][:, 1])
    np.testing.assert_array_equal(grads["c0"][:, 1], case["R_c"][:, 1])


def test_reverse_direction_runs_over_each_rows_valid_prefix():
    # row b of a padded batch must equal the same sequence run alone, truncated to len_b
    case = make_case(seed=7, T=5, B=3, L=2, D=2, P=2, hx=True, lengths=[2, 5, 3])
    out, (h_n, c_n), _ = run(case)
    for b, n in enumerate(case["opts"]["lengths"]):
        out_b, (h_b, c_b), _ = ref.lstm_forward(
            case["x"][:n, b:b + 1], case["params"], num_layers=2, bidirectional=True,
            proj_size=2, hx=(case["h0"][:, b:b + 1], case["c0"][:, b:b + 1]))
        assert_close(dict(out=out[:n, b:b + 1], h_n=h_n[:, b:b + 1], c_n=c_n[:, b:b + 1]),
                     dict(out=out_b, h_n=h_b, c_n=c_b), 1e-13, 1e-14)


def test_nan_stays_in_its_row():
    case = make_case(seed=8, T=4, B=3, L=2, D=2, hx=True)
    x_nan = case["x"].copy()
    x_nan[2, 1, 0] = np.nan
    (out, h_n, c_n), g = analytic(case)
    (out2, h_n2, c_n2), g2 = analytic(case, x=x_nan)
    others = [0, 2]
    for a, b in [(out, out2), (h_n, h_n2), (c_n, c_n2), (g["h0"], g2["h0"]), (g["c0"], g2["c0"])]:
        np.testing.assert_array_equal(a[:, others], b[:, others])
        assert np.isnan(b[:, 1]).any()
    np.testing.assert_array_equal(g["x"][:, others], g2["x"][:, others])


# ----------------------------------------------------------------------------------------------
# small contracts


def test_sequence_of_one_step_is_the_cell():
    case = make_case(seed=9, T=1, B=2, P=2, hx=True)
    out, (h_n, c_n), _ = run(case)
    p = case["params"]
    h1, c1, _ = ref.lstm_cell_forward(case["x"][0], case["h0"][0], case["c0"][0],
                                      p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"],
                                      p["bias_hh_l0"], p["weight_hr_l0"])
    np.testing.assert_array_equal(out[0], h1)
    np.testing.assert_array_equal(h_n[0], h1)
    np.testing.assert_array_equal(c_n[0], c1)


def test_none_state_gradients_mean_zeros():
    case = make_case(seed=10, T=3, B=2, L=2, D=2, lengths=[1, 3])
    _, _, cache = run(case)
    z_h, z_c = np.zeros_like(case["R_h"]), np.zeros_like(case["R_c"])
    want = ref.lstm_backward(cache, case["R_out"], (z_h, z_c))
    for dhx in [None, (None, None), (z_h, None), (None, z_c)]:
        got = ref.lstm_backward(cache, case["R_out"], dhx)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1][0], want[1][0])
        np.testing.assert_array_equal(got[1][1], want[1][1])
    h1, c1, cell_cache = ref.lstm_cell_forward(case["x"][0], None, None,
                                               case["params"]["weight_ih_l0"],
                                               case["params"]["weight_hh_l0"])
    a = ref.lstm_cell_backward(cell_cache, h1, None)
    b = ref.lstm_cell_backward(cell_cache, h1, np.zeros_like(c1))
    for u, v in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(u, v)


def test_bad_arguments_raise():
    case = make_case(seed=11, T=3, B=2, P=2)
    with pytest.raises(ValueError, match="lengths"):
        ref.lstm_forward(case["x"], case["params"], proj_size=2, lengths=[1, 4])
    with pytest.raises(ValueError, match="lengths"):
        ref.lstm_forward(case["x"], case["params"], proj_size=2, lengths=[1, 2, 3])
    with pytest.raises(TypeError, match="lengths"):
        ref.lstm_forward(case["x"], case["params"], proj_size=2, lengths=[1.0, 2.0])
    with pytest.raises(ValueError, match="proj_size"):
        ref.lstm_forward(case["x"], case["params"], proj_size=0)
    with pytest.raises(ValueError, match="hx"):
        ref.lstm_forward(case["x"], case["params"], proj_size=2,
                         hx=(np.zeros((1, 2, 5)), np.zeros((1, 2, 5))))


# ----------------------------------------------------------------------------------------------
# parity with PyTorch (float64)

TORCH_CASES = {
    "L1": dict(T=4, B=3, I=3, H=5),
    "L2-bi-lengths-hx": dict(T=5, B=4, I=3, H=4, L=2, D=2, hx=True, lengths=[3, 5, 1, 4]),
    "L2-bi-proj-nobias-lengths-hx": dict(T=4, B=3, I=2, H=5, L=2, D=2, P=3, bias=False,
                                         hx=True, lengths=[4, 1, 2]),
    "proj-lengths-hx": dict(T=3, B=2, I=4, H=3, P=2, hx=True, lengths=[1, 3]),
}


@pytest.mark.parametrize("kw", TORCH_CASES.values(), ids=TORCH_CASES.keys())
def test_matches_torch_lstm(kw):
    torch = pytest.importorskip("torch")
    kw = dict(dict(L=1, D=1, P=0, bias=True, hx=False, lengths=None), **kw)
    T, B, I, H, L, D, P = (kw[k] for k in "T B I H L D P".split())
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, num_layers=L, bias=kw["bias"], bidirectional=D == 2,
                         proj_size=P, dtype=torch.float64)
    case = make_case(seed=12, **kw)
    case["params"] = {k: v.detach().numpy().copy() for k, v in lstm.state_dict().items()}

    x = torch.tensor(case["x"], requires_grad=True)
    h0 = torch.tensor(case["h0"], requires_grad=True)
    c0 = torch.tensor(case["c0"], requires_grad=True)
    hx = (h0, c0) if kw["hx"] else None
    if kw["lengths"] is None:
        out, (h_n, c_n) = lstm(x, hx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.tensor(kw["lengths"]), enforce_sorted=False)
        out, (h_n, c_n) = lstm(packed, hx)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    loss = ((out * torch.tensor(case["R_out"])).sum() + (h_n * torch.tensor(case["R_h"])).sum()
            + (c_n * torch.tensor(case["R_c"])).sum())
    loss.backward()
    want = dict(out=out, h_n=h_n, c_n=c_n, dx=x.grad)
    if kw["hx"]:
        want.update(dh0=h0.grad, dc0=c0.grad)
    want.update({"d" + k: p.grad for k, p in lstm.named_parameters()})
    want = {k: v.detach().numpy() for k, v in want.items()}

    (r_out, r_h, r_c), g = analytic(case)
    got = dict(out=r_out, h_n=r_h, c_n=r_c, dx=g["x"], dh0=g["h0"], dc0=g["c0"],
               **{"d" + k: v for k, v in g.items() if k not in ("x", "h0", "c0")})
    assert_close(got, want, TORCH_RTOL, TORCH_ATOL)


def test_cell_matches_torch_lstm_cell():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    B, I, H = 3, 4, 5
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(I, H, dtype=torch.float64)
    x, h, c = (torch.tensor(rng.standard_normal(s), requires_grad=True)
               for s in [(B, I), (B, H), (B, H)])
    R_h, R_c = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    h1, c1 = cell(x, (h, c))
    ((h1 * torch.tensor(R_h)).sum() + (c1 * torch.tensor(R_c)).sum()).backward()

    w = {short: getattr(cell, name).detach().numpy()
         for short, name in [("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"),
                             ("b_hh", "bias_hh")]}
    r_h1, r_c1, cache = ref.lstm_cell_forward(x.detach().numpy(), h.detach().numpy(),
                                              c.detach().numpy(), **w)
    dx, dh, dc, grads = ref.lstm_cell_backward(cache, R_h, R_c)
    got = dict(h1=r_h1, c1=r_c1, dx=dx, dh=dh, dc=dc, **grads)
    want = dict(h1=h1, c1=c1, dx=x.grad, dh=h.grad, dc=c.grad, w_ih=cell.weight_ih.grad,
                w_hh=cell.weight_hh.grad, b_ih=cell.bias_ih.grad, b_hh=cell.bias_hh.grad)
    assert_close(got, {k: v.detach().numpy() for k, v in want.items()}, TORCH_RTOL, TORCH_ATOL)
