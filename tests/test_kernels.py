"""lstmc.nn.LSTM (the C kernels behind the Cython boundary) against lstmc.reference.

The float64 NumPy reference is the spec (SPEC.md section 7). Every check here runs the
module and the reference on the same numbers (the module's own dtype-rounded parameters,
inputs and states, widened to float64) and compares outputs, final states, dx, dh0, dc0 and
every parameter gradient by its PyTorch name. Tolerances (SPEC section 7), per tensor with
``scale = max(1, max|expected|)``:

* float64: ``|actual - expected| <= 1e-10 * scale + 1e-10 * |expected|``;
* float32: outputs and states atol 1e-5 / rtol 1e-4, gradients (dx, dh0, dc0, .grad)
  atol 1e-4 / rtol 1e-3, with the atol multiplied by ``scale`` because weight gradients are
  sums over T*B terms and grow with them.

A failing check reports the max difference of every tensor, not just the first bad one.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmc
from lstmc import reference as ref

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]

# (rtol, atol) per dtype: outputs / states, then gradients
TOL_OUT = {np.float32: (1e-4, 1e-5), np.float64: (1e-10, 1e-10)}
TOL_GRAD = {np.float32: (1e-3, 1e-4), np.float64: (1e-10, 1e-10)}

# Sized so that the whole file stays well under 60 s on the 2-core CI machine.
GRID_EXAMPLES = 300
SMALL_EXAMPLES = 40
_SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------------
# helpers


def _report(name, actual, expected, rtol, atol):
    """(ok, one-line summary) for one tensor; atol is scaled by max(1, max|expected|)."""
    a = np.asarray(actual)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return False, f"{name}: shape {a.shape} != expected {e.shape}"
    if a.size == 0:
        return True, f"{name}: empty"
    a = a.astype(np.float64)
    scale = max(1.0, float(np.max(np.abs(e))))
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - e)
        ok = bool(np.all(diff <= atol * scale + rtol * np.abs(e)))
    worst = np.unravel_index(np.nanargmax(np.where(np.isnan(diff), np.inf, diff)), diff.shape)
    return ok, (f"{name}: max|diff| {np.max(diff):.3e} at {tuple(int(i) for i in worst)} "
                f"(actual {a[worst]!r}, expected {e[worst]!r}, scale {scale:.3g}) "
                f"{'ok' if ok else 'FAIL'}")


def check_tensors(rows, header=""):
    """rows: (name, actual, expected, (rtol, atol)). Asserts all, reporting every tensor."""
    results = [_report(n, a, e, *tol) for n, a, e, tol in rows]
    if not all(ok for ok, _ in results):
        raise AssertionError(header + "\n" + "\n".join(line for _, line in results))


def to_time_major(a, batch_first):
    return np.swapaxes(a, 0, 1) if batch_first else a


def to_user_layout(a, batch_first):
    """Time-major (T, B, F) -> the module's layout, as a fresh C-contiguous array."""
    return np.ascontiguousarray(np.swapaxes(a, 0, 1) if batch_first else a)


def make_lstm(I, H, L=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False,
              proj_size=0, dtype=np.float32, rng=None, wscale=None):
    """A module; with ``wscale`` its parameters are replaced by U(-wscale, wscale) draws."""
    lstm = lstmc.nn.LSTM(I, H, num_layers=L, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, proj_size=proj_size,
                         dtype=dtype)
    if wscale is not None:
        sd = {k: rng.uniform(-wscale, wscale, size=v.shape) for k, v in lstm.state_dict().items()}
        lstm.load_state_dict(sd)
        got = lstm.state_dict()
        assert list(got) == list(sd), "state_dict() keys changed after load_state_dict()"
        for k in sd:
            np.testing.assert_array_equal(got[k], sd[k].astype(dtype),
                                          err_msg=f"load_state_dict/state_dict round trip: {k}")
    return lstm


def ref_params(lstm):
    return {k: np.asarray(v, dtype=np.float64) for k, v in lstm.state_dict().items()}


def grads_by_name(lstm):
    return {name: np.array(p.grad, copy=True) for name, p in lstm.named_parameters()}


def expected_names(L, bidirectional, bias, proj_size):
    names = []
    for k in range(L):
        for sfx in ([""] + (["_reverse"] if bidirectional else [])):
            names += [f"weight_ih_l{k}{sfx}", f"weight_hh_l{k}{sfx}"]
            if bias:
                names += [f"bias_ih_l{k}{sfx}", f"bias_hh_l{k}{sfx}"]
            if proj_size:
                names.append(f"weight_hr_l{k}{sfx}")
    return names


def pad_mask(T, lengths, B):
    """(T, B) bool: True at valid positions."""
    if lengths is None:
        return np.ones((T, B), dtype=bool)
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


# ------------------------------------------------------------------------------------------
# the grid


@st.composite
def lstm_cases(draw):
    T = draw(st.integers(1, 6))
    B = draw(st.integers(1, 5))
    I = draw(st.integers(1, 9))
    H = draw(st.integers(1, 9))
    P = draw(st.one_of(st.just(0), st.integers(1, H - 1))) if H > 1 else 0
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(0, T), min_size=B, max_size=B)))
    return dict(
        T=T, B=B, I=I, H=H, P=P,
        L=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        lengths=lengths,
        len_dtype=draw(st.sampled_from([np.int64, np.int32])),
        hx=draw(st.booleans()),
        dhx=draw(st.sampled_from(["none", "both", "h_only", "c_only"])),
        wscale=draw(st.sampled_from([None, 0.5, 1.5])),  # None: the module's default init
        xscale=draw(st.sampled_from([1.0, 3.0])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def run_case(case, dtype):
    """Forward + backward through lstmc and the reference; returns the comparison rows."""
    T, B, I, H, P, L = (case[k] for k in ("T", "B", "I", "H", "P", "L"))
    D = 2 if case["bidirectional"] else 1
    H_out = P or H
    bf = case["batch_first"]
    rng = np.random.default_rng(case["seed"])
    lstmc.manual_seed(case["seed"] % 2**31)
    lstm = make_lstm(I, H, L, case["bias"], bf, 0.0, case["bidirectional"], P, dtype, rng,
                     case["wscale"])
    names = [n for n, _ in lstm.named_parameters()]
    assert names == expected_names(L, case["bidirectional"], case["bias"], P)

    x_tm = (case["xscale"] * rng.standard_normal((T, B, I))).astype(dtype)
    lengths = None if case["lengths"] is None else np.array(case["lengths"], case["len_dtype"])
    valid = pad_mask(T, lengths, B)
    hx = None
    if case["hx"]:
        hx = (rng.standard_normal((D * L, B, H_out)).astype(dtype),
              rng.standard_normal((D * L, B, H)).astype(dtype))
    dout_tm = rng.standard_normal((T, B, D * H_out)).astype(dtype)  # random at padding too
    dh_n = rng.standard_normal((D * L, B, H_out)).astype(dtype)
    dc_n = rng.standard_normal((D * L, B, H)).astype(dtype)
    dhx = {"none": None, "both": (dh_n, dc_n), "h_only": (dh_n, None),
           "c_only": (None, dc_n)}[case["dhx"]]

    x_in = to_user_layout(x_tm, bf)
    dout_in = to_user_layout(dout_tm, bf)
    keep = [a.copy() for a in (x_in, dout_in, dh_n, dc_n)]
    keep_hx = None if hx is None else (hx[0].copy(), hx[1].copy())
    keep_len = None if lengths is None else lengths.copy()

    # --- lstmc
    out, (h_n, c_n) = lstm(x_in, hx, lengths=lengths)
    assert out.dtype == dtype and h_n.dtype == dtype and c_n.dtype == dtype
    out_tm = to_time_major(out, bf)
    dx, (dh0, dc0) = lstm.backward(dout_in, dhx)
    assert dx.dtype == dtype and dx.shape == x_in.shape
    dx_tm = to_time_major(dx, bf)
    grads = grads_by_name(lstm)

    # inputs must not be modified
    for a, b in zip((x_in, dout_in, dh_n, dc_n), keep):
        np.testing.assert_array_equal(a, b, err_msg="an input array was modified")
    if hx is not None:
        np.testing.assert_array_equal(hx[0], keep_hx[0], err_msg="h0 was modified")
        np.testing.assert_array_equal(hx[1], keep_hx[1], err_msg="c0 was modified")
    if lengths is not None:
        np.testing.assert_array_equal(lengths, keep_len, err_msg="lengths was modified")

    # padding: exactly zero output and dx
    pad = ~valid
    assert np.all(out_tm[pad] == 0), "out is not exactly 0 at padded positions"
    assert np.all(dx_tm[pad] == 0), "dx is not exactly 0 at padded positions"

    # --- reference (dout at padding zeroed there: lstmc must ignore it on its own)
    params = ref_params(lstm)
    r_out, (r_hn, r_cn), cache = ref.lstm_forward(
        x_tm.astype(np.float64), params, num_layers=L, bidirectional=case["bidirectional"],
        proj_size=P, hx=hx, lengths=lengths)
    r_dhx = None if dhx is None else tuple(None if a is None else a.astype(np.float64)
                                           for a in dhx)
    r_dx, (r_dh0, r_dc0), r_grads = ref.lstm_backward(
        cache, np.where(valid[:, :, None], dout_tm.astype(np.float64), 0.0), r_dhx)

    to, tg = TOL_OUT[dtype], TOL_GRAD[dtype]
    rows = [("out", out_tm, r_out, to), ("h_n", h_n, r_hn, to), ("c_n", c_n, r_cn, to),
            ("dx", dx_tm, r_dx, tg), ("dh0", dh0, r_dh0, tg), ("dc0", dc0, r_dc0, tg)]
    assert set(grads) == set(r_grads), (sorted(grads), sorted(r_grads))
    rows += [(f"grad {n}", grads[n], r_grads[n], tg) for n in names]
    return rows


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@settings(max_examples=GRID_EXAMPLES, **_SETTINGS)
@given(case=lstm_cases())
def test_lstm_matches_reference(dtype, case):
    rows = run_case(case, dtype)
    check_tensors(rows, f"lstmc vs reference, {np.dtype(dtype).name}, case {case}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", [
    # hand-picked corners the grid may not hit every run
    dict(T=1, B=1, I=1, H=1, P=0, L=1, bidirectional=False, bias=True, batch_first=False,
         lengths=None, len_dtype=np.int64, hx=False, dhx="none", wscale=None, xscale=1.0, seed=1),
    dict(T=6, B=5, I=9, H=9, P=8, L=3, bidirectional=True, bias=True, batch_first=True,
         lengths=[0, 6, 3, 0, 1], len_dtype=np.int64, hx=True, dhx="both", wscale=1.5,
         xscale=3.0, seed=2),
    dict(T=5, B=4, I=3, H=7, P=1, L=2, bidirectional=True, bias=False, batch_first=False,
         lengths=[0, 0, 0, 0], len_dtype=np.int32, hx=True, dhx="both", wscale=0.5,
         xscale=1.0, seed=3),
    dict(T=4, B=3, I=5, H=2, P=0, L=2, bidirectional=True, bias=True, batch_first=True,
         lengths=[2, 2, 2], len_dtype=np.int64, hx=False, dhx="h_only", wscale=None,
         xscale=1.0, seed=4),
], ids=["all-ones", "big-proj-bidir-bf", "all-lengths-zero", "no-row-full-length"])
def test_lstm_matches_reference_corners(dtype, case):
    check_tensors(run_case(case, dtype), f"lstmc vs reference, {np.dtype(dtype).name}, {case}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@settings(max_examples=SMALL_EXAMPLES, **_SETTINGS)
@given(T=st.integers(1, 5), I=st.integers(1, 9), H=st.integers(2, 9), L=st.integers(1, 2),
       bidirectional=st.booleans(), use_proj=st.booleans(), hx=st.booleans(),
       batch_first=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_unbatched_matches_reference(dtype, T, I, H, L, bidirectional, use_proj, hx, batch_first,
                                     seed):
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
    r_out, (r_hn, r_cn), cache = ref.lstm_forward(x[:, None].astype(np.float64), ref_params(lstm),
                                                  L, bidirectional, P, hx=r_hx)
    r_dx, (r_dh0, r_dc0), r_grads = ref.lstm_backward(cache, dout[:, None], (dh_n[:, None], None))
    to, tg = TOL_OUT[dtype], TOL_GRAD[dtype]
    grads = grads_by_name(lstm)
    check_tensors([("out", out, r_out[:, 0], to), ("h_n", h_n, r_hn[:, 0], to),
                   ("c_n", c_n, r_cn[:, 0], to), ("dx", dx, r_dx[:, 0], tg),
                   ("dh0", dh0, r_dh0[:, 0], tg), ("dc0", dc0, r_dc0[:, 0], tg)]
                  + [(f"grad {n}", grads[n], r_grads[n], tg) for n in grads], "unbatched")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@settings(max_examples=SMALL_EXAMPLES, **_SETTINGS)
@given(B=st.one_of(st.none(), st.integers(1, 5)), I=st.integers(1, 9), H=st.integers(1, 9),
       bias=st.booleans(), hx=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_lstm_cell_matches_reference(dtype, B, I, H, bias, hx, seed):
    rng = np.random.default_rng(seed)
    cell = lstmc.nn.LSTMCell(I, H, bias=bias, dtype=dtype)
    shape = (I,) if B is None else (B, I)
    hshape = (H,) if B is None else (B, H)
    x = rng.standard_normal(shape).astype(dtype)
    h0 = rng.standard_normal(hshape).astype(dtype) if hx else np.zeros(hshape, dtype)
    c0 = rng.standard_normal(hshape).astype(dtype) if hx else np.zeros(hshape, dtype)
    h1, c1 = cell(x, (h0, c0) if hx else None)
    assert h1.shape == hshape and c1.shape == hshape and h1.dtype == dtype
    dh1 = rng.standard_normal(hshape).astype(dtype)
    dc1 = rng.standard_normal(hshape).astype(dtype)
    dx, (dh, dc) = cell.backward(dh1, dc1)
    p = {n: np.asarray(v.data, np.float64) for n, v in cell.named_parameters()}
    assert sorted(p) == sorted(["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else []))
    as2d = (lambda a: a[None]) if B is None else (lambda a: a)
    r_h1, r_c1, cache = ref.lstm_cell_forward(as2d(x), as2d(h0), as2d(c0), p["weight_ih"],
                                              p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"))
    r_dx, r_dh, r_dc, r_g = ref.lstm_cell_backward(cache, as2d(dh1), as2d(dc1))
    back = (lambda a: a[0]) if B is None else (lambda a: a)
    to, tg = TOL_OUT[dtype], TOL_GRAD[dtype]
    short = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh"}
    grads = {n: v.grad for n, v in cell.named_parameters()}
    check_tensors([("h1", h1, back(r_h1), to), ("c1", c1, back(r_c1), to),
                   ("dx", dx, back(r_dx), tg), ("dh", dh, back(r_dh), tg),
                   ("dc", dc, back(r_dc), tg)]
                  + [(f"grad {n}", grads[n], r_g[short[n]], tg) for n in grads], "LSTMCell")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("H, P", [(67, 0), (130, 0), (130, 65)], ids=["H67", "H130", "H130-P65"])
def test_lstm_matches_reference_wider(dtype, H, P):
    """Hidden sizes past one 64-unit block, and B * H large enough for the elementwise
    passes to go parallel: the grid above (H <= 9) reaches neither."""
    case = dict(T=3, B=33, I=10, H=H, P=P, L=2, bidirectional=True, bias=True,
                batch_first=False, lengths=list(np.arange(33) % 4), len_dtype=np.int64, hx=True,
                dhx="both", wscale=None, xscale=1.0, seed=H + P)
    check_tensors(run_case(case, dtype), f"lstmc vs reference, {np.dtype(dtype).name}, H={H} P={P}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_caller_may_mutate_its_arrays_between_forward_and_backward(dtype):
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


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@settings(max_examples=SMALL_EXAMPLES, **_SETTINGS)
@given(calls=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 5), st.booleans()),
                      min_size=2, max_size=4),
       L=st.integers(1, 2), bidirectional=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_module_reuse_across_shapes(dtype, calls, L, bidirectional, seed):
    """Several (T, B, lengths?) calls on one module; earlier results must stay untouched."""
    rng = np.random.default_rng(seed)
    I, H, P = 4, 5, 3
    D = 2 if bidirectional else 1
    lstm = make_lstm(I, H, L, bidirectional=bidirectional, proj_size=P, dtype=dtype, rng=rng,
                     wscale=0.7)
    params = ref_params(lstm)
    kept = []
    for T, B, use_len in calls:
        x = rng.standard_normal((T, B, I)).astype(dtype)
        lengths = rng.integers(0, T + 1, size=B) if use_len else None
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
        to, tg = TOL_OUT[dtype], TOL_GRAD[dtype]
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
    _, _, cache = ref.lstm_forward(x2, ref_params(lstm), 2)
    r_dx, _, r_grads = ref.lstm_backward(cache, dout)
    check_tensors([("dx", dx, r_dx, TOL_GRAD[np.float64])]
                  + [(n, g, r_grads[n], TOL_GRAD[np.float64])
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


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@settings(max_examples=SMALL_EXAMPLES, **_SETTINGS)
@given(case=dropout_cases())
def test_dropout_masks_match_reference(dtype, case):
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
        x_tm, ref_params(lstm), L, bi, P, lengths=lengths,
        dropout_masks=[m.astype(np.float64) for m in masks])
    r_dx, (r_dh0, r_dc0), r_grads = ref.lstm_backward(cache, np.where(valid, dout_tm, 0.0))
    to, tg = TOL_OUT[dtype], TOL_GRAD[dtype]
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


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dropout_statistics_seed_and_eval(dtype):
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
    r_out, (r_hn, r_cn), _ = ref.lstm_forward(x, ref_params(lstm), L, True, 0)
    to = TOL_OUT[dtype]
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


# ------------------------------------------------------------------------------------------
# gradient bookkeeping and parameter views


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradients_accumulate_and_zero_grad(dtype):
    rng = np.random.default_rng(7)
    lstm = make_lstm(5, 6, 2, bidirectional=True, proj_size=4, dtype=dtype, rng=rng, wscale=0.7)
    x = rng.standard_normal((4, 3, 5)).astype(dtype)
    lengths = np.array([4, 0, 2])
    dout = rng.standard_normal((4, 3, 8)).astype(dtype)
    for name, p in lstm.named_parameters():
        assert p.grad.shape == p.data.shape, name
        assert p.grad.dtype == dtype, name

    lstm.zero_grad()
    lstm(x, lengths=lengths)
    lstm.backward(dout)
    g1 = grads_by_name(lstm)
    assert any(np.any(g != 0) for g in g1.values())
    lstm(x, lengths=lengths)
    lstm.backward(dout)
    g2 = grads_by_name(lstm)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    check_tensors([(f"2x grad {n}", g2[n], 2 * g1[n].astype(np.float64), (rtol, rtol))
                   for n in g1], "two backward calls must accumulate to twice the gradient")

    lstm.zero_grad()
    for name, p in lstm.named_parameters():
        assert np.all(p.grad == 0), f"{name}.grad not zero after zero_grad()"
    lstm(x, lengths=lengths)
    lstm.backward(dout)
    g3 = grads_by_name(lstm)
    for n in g1:
        np.testing.assert_array_equal(g3[n], g1[n], err_msg=f"{n}: after zero_grad, not fresh")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_writing_parameter_data_changes_the_module(dtype):
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
    to = TOL_OUT[dtype]
    check_tensors([("out", out1, r_out, to), ("h_n", h_n, r_hn, to), ("c_n", c_n, r_cn, to)],
                  "output after writing p.data")
    # a single element, in place
    name, p = next(iter(lstm.named_parameters()))
    p.data[0, 0] += 0.5
    assert lstm.state_dict()[name][0, 0] == np.asarray(new[name][0, 0] + dtype(0.5), dtype)


def test_named_parameters_order_and_shapes():
    lstm = lstmc.nn.LSTM(7, 6, num_layers=2, bidirectional=True, proj_size=3)
    shapes = {n: p.data.shape for n, p in lstm.named_parameters()}
    assert list(shapes) == expected_names(2, True, True, 3)
    assert shapes["weight_ih_l0"] == (24, 7) and shapes["weight_hh_l0"] == (24, 3)
    assert shapes["bias_ih_l0"] == (24,) and shapes["weight_hr_l0"] == (3, 6)
    assert shapes["weight_ih_l1_reverse"] == (24, 6)
    assert list(lstm.state_dict()) == list(shapes)
    assert len(list(lstm.parameters())) == len(shapes)
    H = 6  # default init U(-1/sqrt(H), 1/sqrt(H))
    for n, v in lstm.state_dict().items():
        assert np.all(np.abs(v) <= 1 / np.sqrt(H) + 1e-7), n
