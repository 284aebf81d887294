"""lstmc.nn.loss: CrossEntropyLoss, BCEWithLogitsLoss, MSELoss.

* Values and gradients against torch (autograd) for every loss x reduction and option
  (weight, ignore_index incl. all ignored, label_smoothing, pos_weight, the lstmc (N, T, C)
  layout, the (C,) / scalar-target form, an upstream gradient), in float64 (1e-12) and
  float32 (1e-6 relative). The torch tests skip without torch.
* A float64 central finite-difference check of every backward (no torch needed).
* dtypes and return types; bad input (docs/spec.md §6).
"""
import re

import numpy as np
import pytest

from helpers import assert_close
from lstmc.nn.loss import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from lstmc.nn.module import Module

REDUCTIONS = ["mean", "sum", "none"]


def tol(dtype):
    """(rtol, atol) for comparing against torch in `dtype`."""
    return (1e-12, 1e-13) if dtype == np.float64 else (1e-6, 1e-7)


def upstream(reduction, loss_shape, rng, dtype):
    """A non-trivial upstream gradient for `reduction`."""
    if reduction == "none":
        return rng.standard_normal(loss_shape).astype(dtype)
    return dtype(1.7)


def check_against_torch(ours, theirs, x, t, reduction, dtype, grad=None, t_torch=None,
                        reshape=None):
    """Compare value and gradient of our loss `ours` and torch's `theirs` on (x, t).

    `reshape`: (x_shape, t_shape) for torch's input (e.g. (N*T, C) for the (N, T, C) form);
    `grad` the upstream gradient in our loss's shape (None: default)."""
    torch = pytest.importorskip("torch")
    rtol, atol = tol(dtype)
    val = ours(x, t)
    dx = ours.backward(grad)
    xt = torch.tensor(x if reshape is None else x.reshape(reshape[0]), requires_grad=True)
    tt = torch.as_tensor(t if reshape is None else t.reshape(reshape[1]))
    if t_torch is not None:
        tt = t_torch
    ref = theirs(xt, tt)
    if reduction == "none":
        g = np.ones(np.shape(val), dtype) if grad is None else grad
        ref.backward(torch.tensor(np.asarray(g).reshape(ref.shape)))
        assert isinstance(val, np.ndarray) and val.dtype == dtype
        assert_close("loss", val, ref.detach().numpy().reshape(np.shape(val)), rtol, atol)
    else:
        ref.backward(torch.tensor(1.0 if grad is None else float(grad), dtype=ref.dtype))
        assert type(val) is float
        assert_close("loss", np.array(val), ref.detach().numpy(), rtol, atol)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert_close("dpred", dx, xt.grad.numpy().reshape(x.shape), rtol, atol)
    return val, dx


def numerical_grad(fn, x, t, grad):
    """Central finite differences of sum(grad * fn(x, t)) w.r.t. x (float64)."""
    g = np.ones(np.shape(fn(x, t))) if grad is None else np.asarray(grad, np.float64)
    out = np.zeros_like(x)
    h = 1e-5
    for i in np.ndindex(x.shape):
        xp = x.copy()
        xp[i] += h
        fp = np.sum(g * np.asarray(fn(xp, t)))
        xp[i] -= 2 * h
        fm = np.sum(g * np.asarray(fn(xp, t)))
        out[i] = (fp - fm) / (2 * h)
    return out


def check_finite_differences(fn, x, t, grad=None):
    fn(x, t)
    dx = fn.backward(grad)
    num = numerical_grad(fn, x, t, grad)
    assert_close("dpred vs finite differences", dx, num, 1e-6, 1e-8)


# ---- CrossEntropyLoss ---------------------------------------------------------------------
CE_CASES = {
    "plain": dict(),
    "weight": dict(weight=True),
    "ignore": dict(ignore_index=2),
    "ignore_default": dict(ignore=-100),
    "smoothing": dict(label_smoothing=0.2),
    "all": dict(weight=True, ignore_index=2, label_smoothing=0.15),
    "all_default_ignore": dict(weight=True, ignore=-100, label_smoothing=0.3),
}


def ce_setup(case, rng, dtype, shape=(6, 5)):
    """(our kwargs, torch kwargs, x, t) for a case of CE_CASES; x has shape `shape`
    (classes last), t the leading shape."""
    opts = CE_CASES[case]
    C = shape[-1]
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    t = rng.integers(0, C, size=shape[:-1])
    kw = {}
    if opts.get("weight"):
        kw["weight"] = rng.uniform(0.2, 2.0, C).astype(dtype)
    if "ignore_index" in opts:
        kw["ignore_index"] = opts["ignore_index"]
        t.reshape(-1)[::3] = opts["ignore_index"]          # a few certainly ignored
    if "ignore" in opts:
        t.reshape(-1)[1::3] = opts["ignore"]
    if "label_smoothing" in opts:
        kw["label_smoothing"] = opts["label_smoothing"]
    return kw, x, t


def torch_ce(kw, reduction):
    torch = pytest.importorskip("torch")
    tkw = dict(kw)
    if "weight" in tkw:
        tkw["weight"] = torch.tensor(tkw["weight"])
    return torch.nn.CrossEntropyLoss(reduction=reduction, **tkw)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(CE_CASES))
def test_cross_entropy_vs_torch(case, reduction, float_dtype):
    rng = np.random.default_rng(1)
    kw, x, t = ce_setup(case, rng, float_dtype)
    check_against_torch(CrossEntropyLoss(reduction=reduction, **kw), torch_ce(kw, reduction),
                        x, t, reduction, float_dtype)
    g = upstream(reduction, t.shape, rng, float_dtype)
    check_against_torch(CrossEntropyLoss(reduction=reduction, **kw), torch_ce(kw, reduction),
                        x, t, reduction, float_dtype, grad=g)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ["plain", "all"])
def test_cross_entropy_sequence_layout_vs_torch(case, reduction, float_dtype):
    """lstmc's (N, T, C) with (N, T) equals torch on (N*T, C) / (N*T,) -- and torch's own
    (N, C, T) layout after a transpose."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    N, T, C = 3, 4, 6
    kw, x, t = ce_setup(case, rng, float_dtype, shape=(N, T, C))
    g = upstream(reduction, (N, T), rng, float_dtype)
    for grad in (None, g):
        val, dx = check_against_torch(
            CrossEntropyLoss(reduction=reduction, **kw), torch_ce(kw, reduction), x, t,
            reduction, float_dtype, grad=grad, reshape=((N * T, C), (N * T,)))
        if reduction == "none":
            assert val.shape == (N, T)
    # torch's native (N, C, T) layout gives the same numbers
    xt = torch.tensor(x.transpose(0, 2, 1).copy(), requires_grad=True)
    ref = torch_ce(kw, reduction)(xt, torch.tensor(t))
    ref.backward(torch.tensor(np.asarray(g)) if reduction == "none"
                 else torch.tensor(float(g), dtype=ref.dtype))
    ours = CrossEntropyLoss(reduction=reduction, **kw)
    val = ours(x, t)
    dx = ours.backward(g)
    rtol, atol = tol(float_dtype)
    assert_close("loss (N, C, T)", np.asarray(val), ref.detach().numpy(), rtol, atol)
    assert_close("dpred (N, C, T)", dx, xt.grad.numpy().transpose(0, 2, 1), rtol, atol)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_unbatched_vs_torch(reduction, float_dtype):
    rng = np.random.default_rng(3)
    kw = dict(weight=rng.uniform(0.5, 2, 7).astype(float_dtype), label_smoothing=0.1)
    x = rng.standard_normal(7).astype(float_dtype)
    t = np.int64(4)
    val, dx = check_against_torch(CrossEntropyLoss(reduction=reduction, **kw),
                                  torch_ce(kw, reduction), x, t, reduction, float_dtype)
    if reduction == "none":
        assert val.shape == ()
    assert dx.shape == (7,)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_cross_entropy_all_ignored(reduction, weight, smoothing, float_dtype):
    """Every target ignored: 'mean' is nan (0 / 0) with a zero gradient, like torch."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3)).astype(float_dtype)
    t = np.full(4, -100)
    kw = dict(label_smoothing=smoothing)
    if weight:
        kw["weight"] = rng.uniform(0.5, 2, 3).astype(float_dtype)
    fn = CrossEntropyLoss(reduction=reduction, **kw)
    val = fn(x, t)
    dx = fn.backward()
    assert np.all(dx == 0) and dx.dtype == float_dtype
    if reduction == "mean":
        assert np.isnan(val)
    else:
        assert np.all(np.asarray(val) == 0)
    torch = pytest.importorskip("torch")
    check_against_torch(CrossEntropyLoss(reduction=reduction, **kw), torch_ce(kw, reduction),
                        x, t, reduction, float_dtype)
    assert torch is not None


def test_cross_entropy_large_logits_stable(float_dtype):
    x = np.array([[1e4, 0.0, -1e4], [-5e3, 5e3, 5e3]], dtype=float_dtype)
    fn = CrossEntropyLoss(reduction="none")
    val = fn(x, np.array([1, 2]))
    dx = fn.backward()
    assert np.all(np.isfinite(val)) and np.all(np.isfinite(dx))
    assert_close("loss", val, np.array([1e4, np.log(2)]), 1e-6, 0)


def probability_targets(rng, shape, dtype):
    """Soft targets of `shape`: rows of class probabilities, one row's mass not summing to 1
    (torch takes any real targets; the gradient's sum(a) factor must follow)."""
    y = rng.uniform(0.0, 1.0, shape)
    y /= y.sum(axis=-1, keepdims=True)
    y.reshape(-1, shape[-1])[0] *= 1.5
    return y.astype(dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 6), (7,), (1, 1)])
@pytest.mark.parametrize("case", [dict(), dict(weight=True), dict(label_smoothing=0.2),
                                  dict(weight=True, label_smoothing=0.15)])
def test_cross_entropy_probability_targets_vs_torch(case, shape, reduction, float_dtype):
    rng = np.random.default_rng(11)
    C = shape[-1]
    x = (rng.standard_normal(shape) * 3).astype(float_dtype)
    y = probability_targets(rng, shape, float_dtype)
    kw = dict(case)
    if kw.get("weight"):
        kw["weight"] = rng.uniform(0.2, 2.0, C).astype(float_dtype)
    # torch takes the classes on axis 1: the (N, T, C) form as N * T rows
    reshape = ((-1, C), (-1, C)) if len(shape) == 3 else None
    for grad in (None, upstream(reduction, shape[:-1], rng, float_dtype)):
        val, dx = check_against_torch(
            CrossEntropyLoss(reduction=reduction, **kw), torch_ce(kw, reduction), x, y,
            reduction, float_dtype, grad=grad, reshape=reshape)
        if reduction == "none":
            assert val.shape == shape[:-1]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probability_targets_finite_differences(reduction):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 4))
    y = probability_targets(rng, (2, 3, 4), np.float64)
    fn = CrossEntropyLoss(reduction=reduction, weight=rng.uniform(0.5, 2, 4),
                          label_smoothing=0.1)
    check_finite_differences(fn, x, y)
    check_finite_differences(fn, x, y, upstream(reduction, (2, 3), rng, np.float64))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ["plain", "all", "all_default_ignore"])
def test_cross_entropy_finite_differences(case, reduction):
    rng = np.random.default_rng(5)
    kw, x, t = ce_setup(case, rng, np.float64, shape=(2, 3, 4))
    fn = CrossEntropyLoss(reduction=reduction, **kw)
    check_finite_differences(fn, x, t)
    check_finite_differences(fn, x, t, upstream(reduction, t.shape, rng, np.float64))


def test_cross_entropy_target_dtypes():
    """Any integer dtype works (and torch tensors); the result is the same."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 4))
    t = np.array([0, 3, 1, 2, 3])
    ref = CrossEntropyLoss()(x, t)
    for dt in (np.int8, np.int32, np.uint8, np.uint64):
        assert CrossEntropyLoss()(x, t.astype(dt)) == ref
    assert CrossEntropyLoss()(x, list(t)) == ref


# ---- BCEWithLogitsLoss --------------------------------------------------------------------
BCE_CASES = {
    "plain": dict(),
    "weight": dict(weight=(5, 1)),          # per-sample weight, broadcast over classes
    "weight_full": dict(weight=(5, 3)),
    "pos_weight": dict(pos_weight=(3,)),
    "both": dict(weight=(3,), pos_weight=(3,)),
}


def bce_setup(case, rng, dtype, shape=(5, 3)):
    opts = BCE_CASES[case]
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    x.reshape(-1)[:2] = [40.0, -40.0]                  # saturated logits
    y = rng.uniform(0, 1, shape).astype(dtype)
    y.reshape(-1)[2:6] = [0.0, 1.0, 0.0, 1.0]
    kw = {k: rng.uniform(0.3, 3, s).astype(dtype) for k, s in opts.items()}
    return kw, x, y


def torch_bce(kw, reduction):
    torch = pytest.importorskip("torch")
    return torch.nn.BCEWithLogitsLoss(reduction=reduction,
                                      **{k: torch.tensor(v) for k, v in kw.items()})


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(BCE_CASES))
def test_bce_with_logits_vs_torch(case, reduction, float_dtype):
    rng = np.random.default_rng(7)
    kw, x, y = bce_setup(case, rng, float_dtype)
    for grad in (None, upstream(reduction, x.shape, rng, float_dtype)):
        check_against_torch(BCEWithLogitsLoss(reduction=reduction, **kw),
                            torch_bce(kw, reduction), x, y, reduction, float_dtype, grad=grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_sequence_vs_torch(reduction, float_dtype):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 4)).astype(float_dtype)
    y = (rng.uniform(size=(2, 3, 4)) > 0.5).astype(float_dtype)
    kw = dict(pos_weight=rng.uniform(0.5, 2, 4).astype(float_dtype))
    check_against_torch(BCEWithLogitsLoss(reduction=reduction, **kw), torch_bce(kw, reduction),
                        x, y, reduction, float_dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(BCE_CASES))
def test_bce_with_logits_finite_differences(case, reduction):
    rng = np.random.default_rng(9)
    kw, x, y = bce_setup(case, rng, np.float64)
    fn = BCEWithLogitsLoss(reduction=reduction, **kw)
    check_finite_differences(fn, x, y)
    check_finite_differences(fn, x, y, upstream(reduction, x.shape, rng, np.float64))


def test_bce_with_logits_extreme_logits(float_dtype):
    x = np.array([1e4, -1e4, 1e4, -1e4], dtype=float_dtype)
    y = np.array([1, 0, 0, 1], dtype=float_dtype)
    fn = BCEWithLogitsLoss(reduction="none", pos_weight=np.array([2.0]))
    val = fn(x, y)
    dx = fn.backward()
    assert_close("loss", val, np.array([0, 0, 1e4, 2e4]), 1e-6, 0)
    assert_close("dpred", dx, np.array([0, 0, 1, -2]), 1e-6, 0)


# ---- MSELoss ------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 2)])
def test_mse_vs_torch(shape, reduction, float_dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    x = rng.standard_normal(shape).astype(float_dtype)
    y = rng.standard_normal(shape).astype(float_dtype)
    for grad in (None, upstream(reduction, shape, rng, float_dtype)):
        check_against_torch(MSELoss(reduction=reduction), torch.nn.MSELoss(reduction=reduction),
                            x, y, reduction, float_dtype, grad=grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_finite_differences(reduction):
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    fn = MSELoss(reduction=reduction)
    check_finite_differences(fn, x, y)
    check_finite_differences(fn, x, y, upstream(reduction, x.shape, rng, np.float64))


# ---- common behaviour ---------------------------------------------------------------------
def _instances(reduction="mean"):
    return [(CrossEntropyLoss(reduction=reduction), np.zeros((3, 4)), np.array([0, 1, 3])),
            (BCEWithLogitsLoss(reduction=reduction), np.zeros((3, 4)), np.ones((3, 4))),
            (MSELoss(reduction=reduction), np.zeros((3, 4)), np.ones((3, 4)))]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dtypes_and_return_types(reduction):
    for fn, x, t in _instances(reduction):
        assert isinstance(fn, Module) and list(fn.parameters()) == []
        for dt, out_dt in ((np.float32, np.float32), (np.float64, np.float64),
                           (np.float16, np.float32)):
            val = fn(x.astype(dt), t)
            dx = fn.backward()
            assert dx.dtype == out_dt and dx.shape == x.shape
            if reduction == "none":
                assert isinstance(val, np.ndarray) and val.dtype == out_dt
            else:
                assert type(val) is float


def test_default_grad_equals_explicit_ones():
    for reduction in REDUCTIONS:
        for fn, x, t in _instances(reduction):
            x = np.random.default_rng(0).standard_normal(x.shape)
            loss = fn(x, t)
            d1 = fn.backward()
            d2 = fn.backward(np.ones(np.shape(loss)) if reduction == "none" else 1.0)
            assert np.array_equal(d1, d2)


def test_input_not_modified_and_noncontiguous():
    rng = np.random.default_rng(12)
    base = rng.standard_normal((4, 6))
    x = base[:, ::2]                                    # non-contiguous (4, 3)
    x.flags.writeable = False
    keep = x.copy()
    t = np.array([0, 2, 1, 1])
    fn = CrossEntropyLoss(label_smoothing=0.1)
    val = fn(x, t)
    fn.backward()
    assert np.array_equal(x, keep)
    # the same value; numpy may sum a strided row in another order than a contiguous one
    assert val == pytest.approx(CrossEntropyLoss(label_smoothing=0.1)(np.ascontiguousarray(x), t),
                                rel=1e-14)


# ---- bad input ----------------------------------------------------------------------------
def shape_re(shape):
    return r"\D+".join(str(int(d)) for d in shape)


@pytest.mark.parametrize("cls", [CrossEntropyLoss, BCEWithLogitsLoss, MSELoss])
def test_backward_before_forward(cls):
    with pytest.raises(RuntimeError, match="before forward"):
        cls().backward()


@pytest.mark.parametrize("cls", [CrossEntropyLoss, BCEWithLogitsLoss, MSELoss])
def test_bad_reduction(cls):
    with pytest.raises(ValueError, match="reduction"):
        cls(reduction="avg")


@pytest.mark.parametrize("cls", [BCEWithLogitsLoss, MSELoss])
def test_shape_mismatch_elementwise(cls):
    with pytest.raises(ValueError) as e:
        cls()(np.zeros((3, 4)), np.zeros((3, 5)))
    msg = str(e.value)
    assert "pred" in msg and "target" in msg
    assert re.search(shape_re((3, 4)), msg) and re.search(shape_re((3, 5)), msg)


@pytest.mark.parametrize("x_shape, t_shape", [((3, 4), (4,)), ((3, 4), (3, 1)),
                                              ((2, 5, 3), (2, 3)), ((4,), (1,)),
                                              ((2, 2, 2, 2), (2, 2, 2))])
def test_cross_entropy_shape_mismatch(x_shape, t_shape):
    with pytest.raises(ValueError) as e:
        CrossEntropyLoss()(np.zeros(x_shape), np.zeros(t_shape, dtype=np.int64))
    msg = str(e.value)
    assert "pred" in msg and re.search(shape_re(x_shape), msg)
    if len(x_shape) <= 3:
        assert "target" in msg and re.search(shape_re(t_shape), msg)


@pytest.mark.parametrize("bad", [5, -1, 99, -101])
def test_cross_entropy_target_out_of_range(bad):
    t = np.array([0, bad, 1])
    with pytest.raises(ValueError, match=rf"target.*{bad}"):
        CrossEntropyLoss()(np.zeros((3, 5)), t)
    CrossEntropyLoss(ignore_index=bad)(np.zeros((3, 5)), t)     # fine when ignored


@pytest.mark.parametrize("target", [np.array([0.0, 1.0, 2.0]), np.array([True, False, True]),
                                    np.array(["0", "1", "2"])])
def test_cross_entropy_non_integer_target(target):
    with pytest.raises(TypeError, match="target"):
        CrossEntropyLoss()(np.zeros((3, 5)), target)


@pytest.mark.parametrize("cls", [CrossEntropyLoss, BCEWithLogitsLoss, MSELoss])
def test_non_float_pred(cls):
    with pytest.raises(TypeError, match="pred.*float32 or float64"):
        cls()(np.zeros((3, 4), dtype=np.int64), np.zeros(3 if cls is CrossEntropyLoss
                                                          else (3, 4), dtype=np.int64))


def test_cross_entropy_bad_constructor_and_weight():
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="weight"):
        CrossEntropyLoss(weight=np.ones((2, 2)))
    with pytest.raises(TypeError, match="ignore_index"):
        CrossEntropyLoss(ignore_index=1.5)
    with pytest.raises(ValueError, match=r"weight.*\(4,\).*\(3,\)"):
        CrossEntropyLoss(weight=np.ones(3))(np.zeros((2, 4)), np.array([0, 1]))


def test_bce_weight_not_broadcastable():
    with pytest.raises(ValueError, match="pos_weight"):
        BCEWithLogitsLoss(pos_weight=np.ones(5))(np.zeros((3, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="weight"):
        BCEWithLogitsLoss(weight=np.ones((2, 3, 4)))(np.zeros((3, 4)), np.zeros((3, 4)))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bad_upstream_grad(reduction):
    for fn, x, t in _instances(reduction):
        fn(x, t)
        with pytest.raises(ValueError, match="grad"):
            fn.backward(np.ones((7, 7)))
