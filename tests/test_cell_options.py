"""The cell options (csrc/lstmc.h lstmc_cell_options; lstmc.reference is their spec): LSTM
peepholes and cell clip, forward and backward, against the float64 reference, and the
reference against central differences; the forward-only options (ONNX's activations with
alpha / beta, input_forget, GRU / RNN clip) of every cell against the reference, on the
per-unit rows, the per-thread panels and the split directions; the modules' parameters,
state dicts, save / load, copies and streaming; and the errors of bad options."""
import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmc
from helpers import KERNEL_TOL, Checks, numerical_grad
from lstmc import reference as R
from lstmc.nn import GRU, LSTM, RNN

_SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _lengths(draw_lengths, T, B):
    return None if draw_lengths is None else np.array(draw_lengths[:B], dtype=np.int64) % (T + 1)


# ---- LSTM peepholes and clip: training ------------------------------------------------------
@settings(max_examples=25, **_SETTINGS)
@given(T=st.integers(1, 5), B=st.integers(1, 4), I=st.integers(1, 7), H=st.integers(1, 9),
       L=st.integers(1, 2), bidirectional=st.booleans(), peepholes=st.booleans(),
       clip=st.sampled_from([None, 0.3, 1.1]), proj=st.booleans(),
       lengths=st.one_of(st.none(), st.lists(st.integers(0, 9), min_size=4, max_size=4)),
       seed=st.integers(0, 2**16))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_peepholes_clip_against_reference(dtype, T, B, I, H, L, bidirectional, peepholes,
                                               clip, proj, lengths, seed):
    lstmc.manual_seed(seed)
    P = H // 2 if proj and H > 1 else 0
    m = LSTM(I, H, num_layers=L, bidirectional=bidirectional, proj_size=P, dtype=dtype,
             peepholes=peepholes, cell_clip=clip)
    rng = np.random.default_rng(seed)
    for p in m.parameters():
        p.data[...] = rng.uniform(-1.5, 1.5, p.data.shape)   # pre-activations past the clip
    D = 2 if bidirectional else 1
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L * D, B, P or H)).astype(dtype)
    c0 = rng.standard_normal((L * D, B, H)).astype(dtype)
    lens = _lengths(lengths, T, B)
    y, (hn, cn) = m(x, (h0, c0), lengths=lens)
    params = m.state_dict()
    ry, (rh, rc), cache = R.lstm_forward(x, params, num_layers=L, bidirectional=bidirectional,
                                         proj_size=P, hx=(h0, c0), lengths=lens, clip=clip)
    tol = KERNEL_TOL[dtype]
    checks = Checks(f"T={T} B={B} I={I} H={H} L={L} D={D} P={P} peep={peepholes} clip={clip}")
    for name, a, e in (("y", y, ry), ("h_n", hn, rh), ("c_n", cn, rc)):
        checks.close(name, a, e, *tol.out)
    dy = rng.standard_normal(y.shape)
    dhn, dcn = rng.standard_normal(hn.shape), rng.standard_normal(cn.shape)
    dx, (dh0, dc0) = m.backward(dy.astype(dtype), (dhn.astype(dtype), dcn.astype(dtype)))
    rdx, (rdh0, rdc0), grads = R.lstm_backward(cache, dy, (dhn, dcn))
    for name, a, e in (("dx", dx, rdx), ("dh0", dh0, rdh0), ("dc0", dc0, rdc0)):
        checks.close(name, a, e, *tol.grad)
    for name, p in m.named_parameters():
        checks.close("grad " + name, p.grad, grads[name], *tol.grad)
    checks.raise_if_any()


@settings(max_examples=10, **_SETTINGS)
@given(T=st.integers(1, 3), B=st.integers(1, 2), I=st.integers(1, 3), H=st.integers(1, 3),
       bidirectional=st.booleans(), clip=st.sampled_from([None, 0.5]), seed=st.integers(0, 999))
def test_reference_peepholes_clip_against_finite_differences(T, B, I, H, bidirectional, clip,
                                                             seed):
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    params = {}
    for sfx in ["_l0", "_l0_reverse"][:D]:
        params["weight_ih" + sfx] = rng.uniform(-1, 1, (4 * H, I))
        params["weight_hh" + sfx] = rng.uniform(-1, 1, (4 * H, H))
        params["bias_ih" + sfx] = rng.uniform(-1, 1, 4 * H)
        params["peephole" + sfx] = rng.uniform(-1, 1, (3, H))
    x = rng.standard_normal((T, B, I))
    c0 = rng.standard_normal((D, B, H))
    w_out = rng.standard_normal((T, B, D * H))

    def loss():
        out, (_, cn), _ = R.lstm_forward(x, params, bidirectional=bidirectional,
                                         hx=(np.zeros((D, B, H)), c0), clip=clip)
        return float((out * w_out).sum() + cn.sum())

    _, (_, cn), cache = R.lstm_forward(x, params, bidirectional=bidirectional,
                                       hx=(np.zeros((D, B, H)), c0), clip=clip)
    dx, (_, dc0), grads = R.lstm_backward(cache, w_out, (None, np.ones_like(cn)))
    checks = Checks(f"T={T} B={B} I={I} H={H} D={D} clip={clip}")
    # where a clamp sits within eps of its bound, central differences straddle the kink
    checks.close("dx", dx, numerical_grad(loss, x), 1e-5, 1e-6)
    checks.close("dc0", dc0, numerical_grad(loss, c0), 1e-5, 1e-6)
    for name, p in params.items():
        checks.close(name, grads[name], numerical_grad(loss, p), 1e-5, 1e-6)
    checks.raise_if_any()


# ---- forward-only options of every cell ----------------------------------------------------
ALL = ["relu", "tanh", "sigmoid", ("affine", 0.7, 0.2), ("leakyrelu", 0.3),
       ("thresholdedrelu", 0.1), ("scaledtanh", 1.3, 0.6), ("hardsigmoid", 0.3, 0.4),
       ("elu", 0.9), "softsign", "softplus", "affine", "leakyrelu", "hardsigmoid", "elu",
       "thresholdedrelu"]
SLOTS = {"LSTM": 3, "GRU": 2, "GRU_RB": 2, "RNN": 1}


def _module(kind, I, H, **kw):
    if kind == "LSTM":
        return LSTM(I, H, **kw)
    if kind.startswith("GRU"):
        return GRU(I, H, reset_after=kind == "GRU", **kw)
    return RNN(I, H, **kw)


def _reference(kind, x, params, **kw):
    if kind == "LSTM":
        out, (h, c), _ = R.lstm_forward(x, params, **kw)
        return out, h, c
    if kind.startswith("GRU"):
        out, h, _ = R.gru_forward(x, params, reset_after=kind == "GRU", **kw)
        return out, h, None
    out, h, _ = R.rnn_forward(x, params, **kw)
    return out, h, None


def _resolved(entry):
    """A module's activation entry as the reference takes it: (name, alpha, beta)."""
    name, *given = (entry,) if isinstance(entry, str) else entry
    values = dict(R.ACTIVATION_DEFAULTS[name])
    values.update(zip(("alpha", "beta"), given))
    return name, values.get("alpha"), values.get("beta")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "GRU_RB", "RNN"])
@pytest.mark.parametrize("mode", ["rows", "panels", "split"])
def test_forward_options_against_reference(kind, dtype, mode, restore_threads):
    """Every activation in every slot, with and without clip (and input_forget / peepholes
    for the LSTM), one activation list per direction. `panels`: eval mode on two threads
    and the packed copy, H large enough for a team (each thread's units in its own panel);
    `split`: a bidirectional eval call of small weights, a direction a thread."""
    rng = np.random.default_rng(7)
    k = SLOTS[kind]
    H = {"rows": 5, "panels": 64, "split": 48}[mode]
    T, B, I = 4, 3 if mode != "panels" else 4, 3
    lstmc.set_num_threads(1 if mode == "rows" else 2)
    tol = KERNEL_TOL[dtype].out
    for start in range(0, len(ALL), 2 * k):
        acts = [ALL[(start + j) % len(ALL)] for j in range(2 * k)]
        for clip in (None, 0.9):
            extra = [{}]
            if kind == "LSTM":
                extra = [{}, {"input_forget": True}, {"peepholes": True}]
            for kw in extra:
                m = _module(kind, I, H, bidirectional=True, dtype=dtype, cell_clip=clip,
                            activations=acts, **kw)
                for p in m.parameters():
                    p.data[...] = rng.uniform(-0.6, 0.6, p.data.shape)
                if mode != "rows":
                    m.eval()
                x = rng.standard_normal((T, B, I)).astype(dtype)
                lens = np.array([4, 2, 0, 3][:B]) if mode == "rows" else None
                out, h, c = m._run(x, None, None, lens)
                resolved = [_resolved(a) for a in acts]
                ro, rh, rc = _reference(kind, x, m.state_dict(), bidirectional=True,
                                        lengths=lens, clip=clip,
                                        activations=[resolved[:k], resolved[k:]],
                                        **({"input_forget": True} if kw.get("input_forget")
                                           else {}))
                checks = Checks(f"{kind} {mode} {acts} clip={clip} {kw}")
                checks.close("out", out, ro, *tol)
                checks.close("h_n", h, rh, *tol)
                if c is not None:
                    checks.close("c_n", c, rc, *tol)
                checks.raise_if_any()


# ---- the modules ---------------------------------------------------------------------------
def test_peephole_parameters_state_dict_save_load_copy(tmp_path):
    lstmc.manual_seed(0)
    m = LSTM(3, 5, num_layers=2, bidirectional=True, peepholes=True, cell_clip=2.0)
    names = [n for n, _ in m.named_parameters() if n.startswith("peephole")]
    assert names == ["peephole_l0", "peephole_l0_reverse", "peephole_l1", "peephole_l1_reverse"]
    assert m.peephole_l1.shape == (3, 5)
    assert "peepholes=True" in repr(m) and "cell_clip=2.0" in repr(m)
    x = np.random.default_rng(1).standard_normal((6, 2, 3)).astype(np.float32)
    y, _ = m.eval()(x)
    lstmc.save(m.state_dict(), tmp_path / "m.lstmc")
    fresh = LSTM(3, 5, num_layers=2, bidirectional=True, peepholes=True, cell_clip=2.0)
    fresh.load_state_dict(lstmc.load(tmp_path / "m.lstmc"))
    for other in (fresh.eval(), copy.deepcopy(m)):
        assert other.peepholes and other.cell_clip == 2.0
        np.testing.assert_array_equal(other(x)[0], y)
    with pytest.raises(ValueError, match=r"unexpected keys \[.peephole_l0."):
        LSTM(3, 5, num_layers=2, bidirectional=True).load_state_dict(m.state_dict())


def test_streaming_step_runs_the_options():
    lstmc.manual_seed(2)
    m = LSTM(3, 6, num_layers=2, peepholes=True, cell_clip=0.5).eval()
    x = np.random.default_rng(3).standard_normal((5, 2, 3)).astype(np.float32)
    y, (hn, cn) = m(x)
    state = m.initial_state(2)
    for t in range(5):
        y_t, state = m.step(x[t], state)
        np.testing.assert_allclose(y_t, y[t], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(state.c, cn, rtol=1e-6, atol=1e-7)
    plain = LSTM(3, 6, num_layers=2).eval()
    with pytest.raises(ValueError, match="cell options"):
        plain.step(x[0], state)


@pytest.mark.parametrize("make,match", [
    (lambda: LSTM(2, 3, cell_clip=-1.0), r"cell_clip must be None or a number > 0, got -1.0"),
    (lambda: GRU(2, 3, cell_clip=0), r"cell_clip must be None or a number > 0"),
    (lambda: RNN(2, 3, cell_clip=True), r"cell_clip must be None or a number > 0"),
    (lambda: LSTM(2, 3, activations=["sigmoid", "swish", "tanh"]), r"'swish' is not a name"),
    (lambda: GRU(2, 3, activations=["sigmoid"]), r"GRU: activations must list 2 functions"),
    (lambda: RNN(2, 3, activations=["scaledtanh"]), r"scaledtanh needs its alpha"),
    (lambda: RNN(2, 3, activations=[("relu", 0.5)]), r"relu takes no parameter"),
    (lambda: RNN(2, 3, activations=[("elu", float("nan"))]), r"elu takes alpha"),
])
def test_bad_options(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", [
    lambda: LSTM(2, 3, activations=["hardsigmoid", "tanh", "tanh"]),
    lambda: LSTM(2, 3, input_forget=True),
    lambda: GRU(2, 3, cell_clip=1.0),
    lambda: RNN(2, 3, activations=["softsign"]),
])
def test_forward_only_options_refuse_backward(make):
    m = make()
    y = m(np.ones((2, 1, 2), np.float32))[0]   # training mode: the forward runs
    with pytest.raises(NotImplementedError, match="forward only"):
        m.backward(np.ones_like(y))


def test_default_activations_are_the_default_cell():
    m = RNN(2, 3, nonlinearity="relu", activations=["Relu"])
    assert m.activations is None and m._spec().options is None
