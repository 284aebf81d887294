"""Tests of the float64 reference (lstmc.reference), the spec every kernel is held to.

Every cell runs through the same tests: LSTM, LSTM with a projection, GRU with
reset_after=True (torch.nn.GRU) and False (Keras reset_after=False), RNN with tanh and relu.
Gradients are checked against central finite differences of a random linear functional of
all outputs, loss = <R_out, out> + <R_h, h_n> [+ <R_c, c_n> for the LSTM], so the backward
pass receives random dout and final states' gradients at once. When torch is installed the
reference is also compared with torch.nn.LSTM / GRU / RNN and their cells in float64.
reset_after=False has no torch counterpart; besides finite differences it is pinned by
special cases where the two GRU variants must agree, and by a scalar case computed by hand.
"""
import math

import numpy as np
import pytest

from helpers import (CELLS, GRU_RNN, TORCH_GRU_RNN, assert_all_close, assert_close,
                     numerical_grad, random_params)
from lstmc import reference as ref

ALL_CELLS = list(CELLS)
STEP_CELLS = ["lstm", "lstm_proj"] + GRU_RNN

# Central differences: truncation error ~ EPS^2 * f''' ~ 1e-12, rounding error of the loss
# (|loss| ~ 10, ulp ~ 2e-15) over 2 * EPS ~ 1e-9 at worst; gradients are O(0.1..1).
EPS = 1e-6
FD_RTOL, FD_ATOL = 1e-6, 1e-8
# float64 vs torch: same maths, different summation order: ~1e-15 in practice.
TORCH_RTOL, TORCH_ATOL = 1e-10, 1e-10
# finite differences of relu are only valid when no pre-activation is within EPS * |d a| of 0
# (~1e-6 here); the seeds below keep every pre-activation at least 100x that from the kink
RELU_MARGIN = 1e-4


# ----------------------------------------------------------------------------------------------
# the reference of each cell, with its states as lists ([h] or, for the LSTM, [h, c])


def is_lstm(cell):
    return CELLS[cell].cls == "LSTM"


def state_names(cell):
    return ("h", "c") if is_lstm(cell) else ("h",)


def options(cell):
    """The reference's keyword options of ``cell`` (sequence functions)."""
    return dict(CELLS[cell].options) if not is_lstm(cell) else {}


def seq_forward(cell, x, params, hx=None, **opts):
    """(out, final states as a list, cache)."""
    if is_lstm(cell):
        out, finals, cache = ref.lstm_forward(x, params, hx=None if hx is None else tuple(hx),
                                              **opts)
        return out, list(finals), cache
    fn = ref.gru_forward if CELLS[cell].cls == "GRU" else ref.rnn_forward
    out, h_n, cache = fn(x, params, hx=None if hx is None else hx[0], **opts)
    return out, [h_n], cache


def seq_backward(cell, cache, dout, dstates=None):
    """(dx, the initial states' gradients as a list, grads by name); dstates a list or None."""
    if is_lstm(cell):
        dx, dinit, grads = ref.lstm_backward(cache, dout,
                                             None if dstates is None else tuple(dstates))
        return dx, list(dinit), grads
    fn = ref.gru_backward if CELLS[cell].cls == "GRU" else ref.rnn_backward
    dx, dh0, grads = fn(cache, dout, None if dstates is None else dstates[0])
    return dx, [dh0], grads


def cell_forward(cell, x, states, **w):
    """One step: (new states as a list, cache)."""
    if is_lstm(cell):
        h1, c1, cache = ref.lstm_cell_forward(x, *states, **w)
        return [h1, c1], cache
    fn = ref.gru_cell_forward if CELLS[cell].cls == "GRU" else ref.rnn_cell_forward
    h1, cache = fn(x, states[0], **w, **CELLS[cell].options)
    return [h1], cache


def cell_backward(cell, cache, dstates):
    """(dx, the states' gradients as a list, grads by short name)."""
    if is_lstm(cell):
        dx, dh, dc, grads = ref.lstm_cell_backward(cache, *dstates)
        return dx, [dh, dc], grads
    fn = ref.gru_cell_backward if CELLS[cell].cls == "GRU" else ref.rnn_cell_backward
    dx, dh, grads = fn(cache, dstates[0])
    return dx, [dh], grads


# ----------------------------------------------------------------------------------------------
# helpers


def default_proj(cell):
    """The projection of the cell's test cases: 2 for lstm_proj (below the default H)."""
    return 2 if "proj_size" in CELLS[cell].options else 0


def make_case(cell, seed=0, T=4, B=3, I=3, H=5, L=1, D=1, P=None, bias=True, hx=False,
              lengths=None, dropout=False):
    """Inputs, parameters, options and random loss weights for one sequence test case."""
    rng = np.random.default_rng(seed)
    P = default_proj(cell) if P is None else P
    H_out = P or H
    sizes = (H_out, H) if is_lstm(cell) else (H,)
    x = rng.standard_normal((T, B, I))
    params = random_params(rng, CELLS[cell].gates, I, H, L, D, P, bias)
    states = [rng.standard_normal((D * L, B, n)) if hx else np.zeros((D * L, B, n))
              for n in sizes]
    opts = dict(num_layers=L, bidirectional=D == 2,
                lengths=None if lengths is None else np.array(lengths), **options(cell))
    if is_lstm(cell):
        opts["proj_size"] = P
    case = dict(cell=cell, x=x, params=params, states=states, use_hx=hx, opts=opts,
                R_out=rng.standard_normal((T, B, D * H_out)),
                R_states=[rng.standard_normal((D * L, B, n)) for n in sizes])
    # inverted-dropout masks with p = 0.3
    case["opts"]["dropout_masks"] = (
        [(rng.random((T, B, D * H_out)) > 0.3) / 0.7 for _ in range(L - 1)] if dropout else None)
    return case


def run(case, x=None):
    return seq_forward(case["cell"], case["x"] if x is None else x, case["params"],
                       hx=case["states"] if case["use_hx"] else None, **case["opts"])


def loss(case):
    out, finals, _ = run(case)
    return np.sum(case["R_out"] * out) + sum(np.sum(r * f) for r, f in zip(case["R_states"], finals))


def analytic(case, x=None, R_out=None):
    """(out, *final states), dict(x=dx, h0=..., [c0=...], **param grads)."""
    out, finals, cache = run(case, x)
    dx, dinit, grads = seq_backward(case["cell"], cache,
                                    case["R_out"] if R_out is None else R_out, case["R_states"])
    names = [n + "0" for n in state_names(case["cell"])]
    return (out, *finals), dict(x=dx, **dict(zip(names, dinit)), **grads)


def assert_identical(a, b):
    """Two analytic() results bit for bit: outputs and states, then every gradient."""
    (outs_a, grads_a), (outs_b, grads_b) = a, b
    for u, v in zip(outs_a, outs_b):
        np.testing.assert_array_equal(u, v)
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


def padding_mask(T, lengths):
    """(T, B) bool, True where t >= len_b."""
    return np.arange(T)[:, None] >= np.asarray(lengths)[None, :]


def relu_margin(cache):
    """Smallest |pre-activation| over all steps of a relu sequence (reads the private tapes)."""
    margin = np.inf
    for tape in cache["tapes"]:
        for _, _, c in tape:
            a = c["x"] @ c["w_ih"].T + c["h"] @ c["w_hh"].T
            a = a + sum(c[b] for b in ("b_ih", "b_hh") if c[b] is not None)
            margin = min(margin, np.abs(a).min())
    return margin


def step_weights(rng, cell, I, H, bias, scale=0.6):
    """Random one-step weights by short name (w_ih, w_hh[, b_ih, b_hh][, w_hr])."""
    gates, P = CELLS[cell].gates, default_proj(cell)
    w = dict(w_ih=rng.uniform(-scale, scale, (gates * H, I)),
             w_hh=rng.uniform(-scale, scale, (gates * H, P or H)))
    if bias:
        w.update(b_ih=rng.uniform(-scale, scale, gates * H),
                 b_hh=rng.uniform(-scale, scale, gates * H))
    if P:
        w["w_hr"] = rng.uniform(-scale, scale, (P, H))
    return w


def step_sizes(cell, H):
    P = default_proj(cell)
    return ((P or H), H) if is_lstm(cell) else (H,)


# ----------------------------------------------------------------------------------------------
# finite differences


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", STEP_CELLS)
def test_cell_gradients_match_finite_differences(cell, bias):
    rng = np.random.default_rng(1)
    B, I, H = 3, 4, 5
    w = step_weights(rng, cell, I, H, bias)
    x = rng.standard_normal((B, I))
    states = [rng.standard_normal((B, n)) for n in step_sizes(cell, H)]
    R = [rng.standard_normal((B, n)) for n in step_sizes(cell, H)]

    def f():
        new, _ = cell_forward(cell, x, states, **w)
        return sum(np.sum(r * s) for r, s in zip(R, new))

    _, cache = cell_forward(cell, x, states, **w)
    if cell == "rnn_relu":
        a = x @ w["w_ih"].T + states[0] @ w["w_hh"].T + (w["b_ih"] + w["b_hh"] if bias else 0.0)
        assert np.abs(a).min() > RELU_MARGIN and (a > 0).any() and (a < 0).any()
    dx, dstates, grads = cell_backward(cell, cache, R)
    assert set(grads) == set(w)
    names = state_names(cell)
    got = dict(x=dx, **dict(zip(names, dstates)), **grads)
    want = {name: numerical_grad(f, a, EPS)
            for name, a in dict(x=x, **dict(zip(names, states)), **w).items()}
    assert_all_close(got, want, FD_RTOL, FD_ATOL)


# the LSTM's cases (with P: the projection cell) and those of GRU / RNN, every one of the four
LSTM_SEQ_CASES = {
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
GRU_RNN_SEQ_CASES = {
    "L1": dict(),
    "L2-bi-lengths-hx-dropout": dict(T=3, B=3, H=3, L=2, D=2, hx=True, lengths=[2, 0, 3],
                                     dropout=True),
    "L2-nobias-I1-lengths-dropout": dict(T=5, B=3, I=1, L=2, bias=False, lengths=[2, 5, 0],
                                         dropout=True),
    "bi-T1-B1-hx": dict(T=1, B=1, I=2, H=3, D=2, hx=True),
    "L3-bi-lengths-nobias-hx": dict(T=2, B=3, I=3, H=2, L=3, D=2, bias=False, hx=True,
                                    lengths=[1, 2, 0]),
}
SEQ_CASES = ([("lstm_proj" if kw.get("P") else "lstm", name, dict(kw, P=kw.get("P", 0)))
              for name, kw in LSTM_SEQ_CASES.items()]
             + [(cell, name, kw) for cell in GRU_RNN for name, kw in GRU_RNN_SEQ_CASES.items()])


@pytest.mark.parametrize("cell,kw", [(c, kw) for c, _, kw in SEQ_CASES],
                         ids=[f"{c}-{n}" for c, n, _ in SEQ_CASES])
def test_sequence_gradients_match_finite_differences(cell, kw):
    case = make_case(cell, seed=2, **kw)
    _, got = analytic(case)
    names = [n + "0" for n in state_names(cell)]
    assert set(got) == {"x", *names, *case["params"]}
    # the initial states are perturbed even when the forward got hx=None: None must mean zeros
    case["use_hx"] = True
    if cell == "rnn_relu":
        assert relu_margin(run(case)[2]) > RELU_MARGIN
    targets = dict(x=case["x"], **dict(zip(names, case["states"])), **case["params"])
    want = {name: numerical_grad(lambda: loss(case), a, EPS) for name, a in targets.items()}
    assert_all_close(got, want, FD_RTOL, FD_ATOL)


# ----------------------------------------------------------------------------------------------
# variable lengths and padding

PAD_CASE = dict(T=5, B=4, L=2, D=2, hx=True, lengths=[3, 0, 5, 1], dropout=True)


def sized(cell, H):
    """{"H": H}, except for lstm_proj, which keeps the default H = 5 above its P = 2."""
    return {} if default_proj(cell) else {"H": H}


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_padding_values_never_matter(cell):
    case = make_case(cell, seed=3, **PAD_CASE, **sized(cell, 3))
    pad = padding_mask(5, case["opts"]["lengths"])
    x_nan, R_nan = case["x"].copy(), case["R_out"].copy()
    x_nan[pad], R_nan[pad] = np.nan, np.nan
    # rows at padding never enter a cell, so the results are bit-identical
    assert_identical(analytic(case), analytic(case, x=x_nan, R_out=R_nan))


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_output_and_dx_are_exactly_zero_at_padding(cell):
    case = make_case(cell, seed=4, **PAD_CASE, **sized(cell, 3))
    pad = padding_mask(5, case["opts"]["lengths"])
    (out, *_), grads = analytic(case)
    assert np.all(out[pad] == 0.0)
    assert np.all(grads["x"][pad] == 0.0)
    if cell != "rnn_relu":  # relu outputs are legitimately 0 at valid steps too
        assert np.all(out[~pad] != 0.0)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_full_lengths_equal_no_lengths(cell):
    case = make_case(cell, seed=5, T=4, B=3, L=2, D=2, hx=True, dropout=True)
    no_lengths = analytic(case)
    case["opts"]["lengths"] = np.full(3, 4)
    assert_identical(no_lengths, analytic(case))


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_zero_length_row_keeps_initial_state(cell):
    case = make_case(cell, seed=6, **PAD_CASE, **sized(cell, 3))  # row 1 has length 0
    (out, *finals), grads = analytic(case)
    for final, initial in zip(finals, case["states"]):
        np.testing.assert_array_equal(final[:, 1], initial[:, 1])
    assert np.all(out[:, 1] == 0.0) and np.all(grads["x"][:, 1] == 0.0)
    # the state passes through untouched, so does its gradient
    for name, r in zip(state_names(cell), case["R_states"]):
        np.testing.assert_array_equal(grads[name + "0"][:, 1], r[:, 1])


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_reverse_direction_runs_over_each_rows_valid_prefix(cell):
    # row b of a padded batch must equal the same sequence run alone, truncated to len_b
    case = make_case(cell, seed=7, T=5, B=3, L=2, D=2, hx=True, lengths=[2, 5, 3],
                     **sized(cell, 4))
    out, finals, _ = run(case)
    opts = dict(case["opts"], lengths=None)
    for b, n in enumerate(case["opts"]["lengths"]):
        out_b, finals_b, _ = seq_forward(cell, case["x"][:n, b:b + 1], case["params"],
                                         hx=[s[:, b:b + 1] for s in case["states"]], **opts)
        names = [n + "_n" for n in state_names(cell)]
        assert_all_close(dict(out=out[:n, b:b + 1], **{k: f[:, b:b + 1] for k, f in zip(names, finals)}),
                         dict(out=out_b, **dict(zip(names, finals_b))), 1e-13, 1e-14)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_nan_stays_in_its_row(cell):
    case = make_case(cell, seed=8, T=4, B=3, L=2, D=2, hx=True)
    x_nan = case["x"].copy()
    x_nan[2, 1, 0] = np.nan
    (out, *finals), g = analytic(case)
    (out2, *finals2), g2 = analytic(case, x=x_nan)
    others = [0, 2]
    names = [n + "0" for n in state_names(cell)]
    forward = [(out, out2)] + list(zip(finals, finals2))
    backward = [(g[n], g2[n]) for n in names]
    for i, (a, b) in enumerate(forward + backward):
        np.testing.assert_array_equal(a[:, others], b[:, others])
        # relu'(NaN) is 0 (NaN > 0 is false): in relu's gradients the NaN row may be finite
        if cell != "rnn_relu" or i < len(forward):
            assert np.isnan(b[:, 1]).any()
    np.testing.assert_array_equal(g["x"][:, others], g2["x"][:, others])


# ----------------------------------------------------------------------------------------------
# small contracts


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_sequence_of_one_step_is_the_cell(cell):
    case = make_case(cell, seed=9, T=1, B=2, hx=True)
    out, finals, _ = run(case)
    p = case["params"]
    w = dict(w_ih=p["weight_ih_l0"], w_hh=p["weight_hh_l0"], b_ih=p["bias_ih_l0"],
             b_hh=p["bias_hh_l0"])
    if "weight_hr_l0" in p:
        w["w_hr"] = p["weight_hr_l0"]
    new, _ = cell_forward(cell, case["x"][0], [s[0] for s in case["states"]], **w)
    np.testing.assert_array_equal(out[0], new[0])
    for final, step in zip(finals, new):
        np.testing.assert_array_equal(final[0], step)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_none_state_gradients_mean_zeros(cell):
    """None for the initial states, for the final states' gradients (or, for the LSTM, any
    one of them) and for a step's state or upstream gradient all mean zeros."""
    case = make_case(cell, seed=10, T=3, B=2, L=2, D=2, lengths=[1, 3])
    _, _, cache = run(case)
    zeros = [np.zeros_like(r) for r in case["R_states"]]
    want = seq_backward(cell, cache, case["R_out"], zeros)
    partial = ([[None, None], [zeros[0], None], [None, zeros[1]]] if is_lstm(cell) else [])
    for dstates in [None] + partial:
        got = seq_backward(cell, cache, case["R_out"], dstates)
        np.testing.assert_array_equal(got[0], want[0])
        for u, v in zip(got[1], want[1]):
            np.testing.assert_array_equal(u, v)
    w = dict(w_ih=case["params"]["weight_ih_l0"], w_hh=case["params"]["weight_hh_l0"])
    if "weight_hr_l0" in case["params"]:
        w["w_hr"] = case["params"]["weight_hr_l0"]
    n = len(state_names(cell))
    new, step_cache = cell_forward(cell, case["x"][0], [None] * n, **w)
    new_zeros, _ = cell_forward(cell, case["x"][0],
                                [np.zeros((2, s)) for s in step_sizes(cell, 5)], **w)
    for u, v in zip(new, new_zeros):
        np.testing.assert_array_equal(u, v)
    # the last state's upstream gradient None (LSTM: dc1; GRU / RNN: dh1) means zeros
    last_none = cell_backward(cell, step_cache, new[:-1] + [None])
    last_zeros = cell_backward(cell, step_cache, new[:-1] + [np.zeros_like(new[-1])])
    np.testing.assert_array_equal(last_none[0], last_zeros[0])
    for u, v in zip(last_none[1], last_zeros[1]):
        np.testing.assert_array_equal(u, v)


def test_relu_derivative_at_zero_is_zero():
    # x = h = 0 and no bias: every pre-activation is exactly 0, h1 = 0 and nothing flows back
    w = step_weights(np.random.default_rng(14), "rnn_relu", 3, 4, bias=False)
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


def test_lstm_bad_arguments_raise():
    case = make_case("lstm_proj", seed=11, T=3, B=2)
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


def test_gru_rnn_bad_arguments_raise():
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
    case = make_case("gru", seed=15, **PAD_CASE, H=3)
    for name, rows in n_block(case["params"]):
        case["params"][name][rows] = 0.0
    (outs_a, grads_a), (outs_b, grads_b) = both_gru_variants(case)
    assert_all_close(dict(out=outs_a[0], h_n=outs_a[1]), dict(out=outs_b[0], h_n=outs_b[1]),
                     1e-14, 1e-15)
    # the gradients of W_hn and b_hn differ (they read h vs r * h; r vs 1): all others agree,
    # and those two are covered by finite differences
    for name, rows in n_block(case["params"]):
        grads_a[name], grads_b[name] = grads_a[name][:rows.start], grads_b[name][:rows.start]
    assert_all_close(grads_a, grads_b, 1e-13, 1e-14)


def test_gru_variants_agree_when_the_reset_gate_is_one():
    # b_ir = 60 saturates r to exactly 1.0 in float64: r * (W_hn h + b_hn) = W_hn (1 * h) + b_hn,
    # and sigmoid'(60) = r (1 - r) = 0 exactly, so every gradient agrees too
    case = make_case("gru", seed=16, **PAD_CASE, H=3)
    H = 3
    for name in case["params"]:
        if name.startswith("bias_ih"):
            case["params"][name][:H] = 60.0
    (outs_a, grads_a), (outs_b, grads_b) = both_gru_variants(case)
    assert_all_close(dict(out=outs_a[0], h_n=outs_a[1], **grads_a),
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
        assert_close(f"h1 reset_after={reset_after}", h1, [[(1 - z) * n + z * h]], 1e-15, 1e-16)
    assert abs(n_after - n_before) > 0.01  # the case does tell the variants apart


# ----------------------------------------------------------------------------------------------
# parity with PyTorch (float64)

LSTM_TORCH_CASES = {
    "L1": dict(T=4, B=3, I=3, H=5),
    "L2-bi-lengths-hx": dict(T=5, B=4, I=3, H=4, L=2, D=2, hx=True, lengths=[3, 5, 1, 4]),
    "L2-bi-proj-nobias-lengths-hx": dict(T=4, B=3, I=2, H=5, L=2, D=2, P=3, bias=False,
                                         hx=True, lengths=[4, 1, 2]),
    "proj-lengths-hx": dict(T=3, B=2, I=4, H=3, P=2, hx=True, lengths=[1, 3]),
}
GRU_RNN_TORCH_CASES = {
    "L1": dict(T=4, B=3, I=3, H=5),
    "L2-bi-lengths-hx": dict(T=5, B=4, I=3, H=4, L=2, D=2, hx=True, lengths=[3, 5, 1, 4]),
    "L2-bi-nobias-lengths-hx": dict(T=4, B=3, I=2, H=5, L=2, D=2, bias=False, hx=True,
                                    lengths=[4, 1, 2]),
    "T1-B1-hx": dict(T=1, B=1, I=2, H=3, hx=True),
}
TORCH_CASES = ([("lstm_proj" if kw.get("P") else "lstm", name, kw)
                for name, kw in LSTM_TORCH_CASES.items()]
               + [(cell, name, kw) for cell in TORCH_GRU_RNN
                  for name, kw in GRU_RNN_TORCH_CASES.items()])


def torch_module(torch, cell, I, H, step=False, **kw):
    torch.manual_seed(0)
    opts = {k: v for k, v in CELLS[cell].options.items() if k not in ("reset_after", "proj_size")}
    cls = getattr(torch.nn, CELLS[cell].cls + ("Cell" if step else ""))
    return cls(I, H, dtype=torch.float64, **opts, **kw)


@pytest.mark.parametrize("cell,kw", [(c, kw) for c, _, kw in TORCH_CASES],
                         ids=[f"{c}-{n}" for c, n, _ in TORCH_CASES])
def test_matches_torch(torch, cell, kw):
    kw = dict(dict(L=1, D=1, P=0, bias=True, hx=False, lengths=None), **kw)
    T, I, H, P = kw["T"], kw["I"], kw["H"], kw["P"]
    module = torch_module(torch, cell, I, H, num_layers=kw["L"], bias=kw["bias"],
                          bidirectional=kw["D"] == 2, **({"proj_size": P} if P else {}))
    case = make_case(cell, seed=12, **kw)
    case["params"] = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}

    x = torch.tensor(case["x"], requires_grad=True)
    states = [torch.tensor(s, requires_grad=True) for s in case["states"]]
    hx = (tuple(states) if is_lstm(cell) else states[0]) if kw["hx"] else None
    if kw["lengths"] is None:
        out, finals = module(x, hx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.tensor(kw["lengths"]), enforce_sorted=False)
        out, finals = module(packed, hx)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    finals = list(finals) if is_lstm(cell) else [finals]
    loss = (out * torch.tensor(case["R_out"])).sum() + sum(
        (f * torch.tensor(r)).sum() for f, r in zip(finals, case["R_states"]))
    loss.backward()
    names = state_names(cell)
    want = dict(out=out, dx=x.grad, **{n + "_n": f for n, f in zip(names, finals)})
    if kw["hx"]:
        want.update({f"d{n}0": s.grad for n, s in zip(names, states)})
    want.update({"d" + k: p.grad for k, p in module.named_parameters()})
    want = {k: v.detach().numpy() for k, v in want.items()}

    (r_out, *r_finals), g = analytic(case)
    inputs = {"x", *(n + "0" for n in names)}
    got = dict(out=r_out, dx=g["x"], **{n + "_n": f for n, f in zip(names, r_finals)},
               **{f"d{n}0": g[n + "0"] for n in names},
               **{"d" + k: v for k, v in g.items() if k not in inputs})
    assert_all_close(got, want, TORCH_RTOL, TORCH_ATOL)


STEP_TORCH = [(c, b) for c in ["lstm"] + TORCH_GRU_RNN for b in (True, False)]


@pytest.mark.parametrize("cell,bias", STEP_TORCH,
                         ids=[f"{c}-{'bias' if b else 'nobias'}" for c, b in STEP_TORCH])
def test_cell_matches_torch_cell(torch, cell, bias):
    rng = np.random.default_rng(13)
    B, I, H = 3, 4, 5
    module = torch_module(torch, cell, I, H, step=True, bias=bias)
    n = len(state_names(cell))
    x = torch.tensor(rng.standard_normal((B, I)), requires_grad=True)
    states = [torch.tensor(rng.standard_normal((B, H)), requires_grad=True) for _ in range(n)]
    R = [rng.standard_normal((B, H)) for _ in range(n)]
    new = module(x, tuple(states) if n == 2 else states[0])
    new = list(new) if n == 2 else [new]
    sum((a * torch.tensor(r)).sum() for a, r in zip(new, R)).backward()

    names = [("w_ih", "weight_ih"), ("w_hh", "weight_hh")]
    names += [("b_ih", "bias_ih"), ("b_hh", "bias_hh")] if bias else []
    w = {short: getattr(module, name).detach().numpy() for short, name in names}
    r_new, cache = cell_forward(cell, x.detach().numpy(), [s.detach().numpy() for s in states], **w)
    dx, dstates, grads = cell_backward(cell, cache, R)
    sn = state_names(cell)
    got = dict(dx=dx, **{n + "1": a for n, a in zip(sn, r_new)},
               **{"d" + n: a for n, a in zip(sn, dstates)}, **grads)
    want = dict(dx=x.grad, **{n + "1": a for n, a in zip(sn, new)},
                **{"d" + n: s.grad for n, s in zip(sn, states)},
                **{short: getattr(module, name).grad for short, name in names})
    assert_all_close(got, {k: v.detach().numpy() for k, v in want.items()}, TORCH_RTOL, TORCH_ATOL)


def test_relu_kink_matches_torch(torch):
    # pre-activations exactly 0: torch's relu backward passes nothing there either
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
