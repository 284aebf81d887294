"""lstmc.optim: optimizers and lr schedulers against torch.optim (skipped without torch),
plus use on an lstmc.nn.LSTM, zero_grad, state_dict round trips and argument checks.

Trajectory tests: 3 parameters of odd shapes get the same 15 random gradients on both sides
(torch with foreach=False, the single-tensor rules); after every step the values are compared,
float64 within 1e-12 (abs + rel), float32 within 1e-6 relative (atol 1e-6 * max|p|).
"""
import itertools

import numpy as np
import pytest

import lstmc
import lstmc.nn
import lstmc.optim as optim
from lstmc.nn.module import Parameter
from lstmc.optim import lr_scheduler

from helpers import assert_close, scale_of

SHAPES = [(3, 5), (7,), (2, 3, 4)]
STEPS = 15


def _tol(dtype):
    return (1e-12, 1e-12) if dtype == np.float64 else (1e-6, 1e-6)


def _make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def _grads(dtype, seed=1, steps=STEPS):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def _assert_close(ours, theirs, dtype, what):
    rtol, atol = _tol(dtype)
    assert_close(what, ours, theirs, rtol, atol * scale_of(theirs))


def _step_both(torch, ours, theirs, params, tparams, grads):
    """One step of both optimizers on the same gradients."""
    for p, tp, g in zip(params, tparams, grads):
        p.grad[...] = g
        tp.grad = torch.tensor(g)
    ours.step()
    theirs.step()


def _run_pair(name, kwargs, dtype):
    torch = pytest.importorskip("torch")
    params = _make_params(dtype)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    ours = getattr(optim, name)(params, **kwargs)
    theirs = getattr(torch.optim, name)(tparams, foreach=False, **kwargs)
    for step, grads in enumerate(_grads(dtype)):
        _step_both(torch, ours, theirs, params, tparams, grads)
        for i, (p, tp) in enumerate(zip(params, tparams)):
            assert p.data.dtype == dtype
            _assert_close(p.data, tp.detach().numpy(), dtype, f"{name} {kwargs} step {step} p{i}")


SGD_GRID = [dict(lr=0.05, momentum=m, dampening=d, weight_decay=wd, nesterov=n, maximize=mx)
            for m, d, wd, n, mx in itertools.product([0.0, 0.9], [0.0, 0.3], [0.0, 0.01],
                                                     [False, True], [False, True])
            if not (n and (m == 0 or d != 0))]
ADAM_GRID = [dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd, amsgrad=a, maximize=mx)
             for wd, a, mx in itertools.product([0.0, 0.05], [False, True], [False, True])]
RMS_GRID = [dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=wd, momentum=m, centered=c,
                 maximize=mx)
            for wd, m, c, mx in itertools.product([0.0, 0.05], [0.0, 0.7], [False, True],
                                                  [False, True])]
CASES = ([("SGD", k) for k in SGD_GRID] + [("Adam", k) for k in ADAM_GRID]
         + [("AdamW", k) for k in ADAM_GRID] + [("RMSprop", k) for k in RMS_GRID]
         + [(n, {}) for n in ("SGD", "Adam", "AdamW", "RMSprop")])


@pytest.mark.parametrize("name,kwargs", CASES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_trajectory_matches_torch(name, kwargs, float_dtype):
    _run_pair(name, kwargs, float_dtype)


def test_defaults_match_torch():
    torch = pytest.importorskip("torch")
    for name in ("SGD", "Adam", "AdamW", "RMSprop"):
        ours = getattr(optim, name)(_make_params(np.float64)).defaults
        theirs = getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)]).defaults
        for key, value in ours.items():
            assert theirs[key] == value, (name, key)


def test_param_groups_dicts_match_torch():
    torch = pytest.importorskip("torch")
    dtype = np.float64
    params = _make_params(dtype)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    ours = optim.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}], lr=0.01)
    theirs = torch.optim.Adam([{"params": tparams[:2]}, {"params": tparams[2:], "lr": 0.1}],
                              lr=0.01, foreach=False)
    assert [g["lr"] for g in ours.param_groups] == [0.01, 0.1]
    for grads in _grads(dtype, steps=5):
        _step_both(torch, ours, theirs, params, tparams, grads)
    for p, tp in zip(params, tparams):
        _assert_close(p.data, tp.detach().numpy(), dtype, "groups")


def test_updates_in_place_and_zero_grad():
    params = _make_params(np.float32)
    arrays = [p.data for p in params]
    grads = [p.grad for p in params]
    before = [a.copy() for a in arrays]
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    for p, g in zip(params, _grads(np.float32, steps=1)[0]):
        p.grad[...] = g
    opt.step()
    for p, a, g, b in zip(params, arrays, grads, before):
        assert p.data is a and p.grad is g
        assert not np.array_equal(a, b)
    opt.zero_grad()
    for p, g in zip(params, grads):
        assert p.grad is g and not np.any(g)


def _scheduler_pair(make_ours, make_theirs, epochs=30, metrics=None):
    torch = pytest.importorskip("torch")
    opt = optim.SGD([{"params": _make_params(np.float64)[:1]},
                     {"params": _make_params(np.float64)[1:], "lr": 0.3}], lr=0.1)
    topt = torch.optim.SGD([{"params": [torch.zeros(2, requires_grad=True)]},
                            {"params": [torch.zeros(3, requires_grad=True)], "lr": 0.3}],
                           lr=0.1)
    ours, theirs = make_ours(opt), make_theirs(topt)
    assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12, abs=0)
    for epoch in range(epochs):
        topt.step()   # keeps torch from warning about the call order
        if metrics is None:
            ours.step()
            theirs.step()
        else:
            ours.step(metrics[epoch])
            theirs.step(metrics[epoch])
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12, abs=1e-15), \
            f"epoch {epoch}"
        assert [g["lr"] for g in opt.param_groups] == ours.get_last_lr()


def test_step_lr():
    torch = pytest.importorskip("torch")
    _scheduler_pair(lambda o: lr_scheduler.StepLR(o, step_size=4, gamma=0.5),
                    lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5))


def test_exponential_lr():
    torch = pytest.importorskip("torch")
    _scheduler_pair(lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9),
                    lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9))


@pytest.mark.parametrize("eta_min", [0.0, 0.01])
def test_cosine_annealing_lr(eta_min):
    torch = pytest.importorskip("torch")
    # 30 epochs with T_max=7: goes down, back up (the restart branch) and down again
    _scheduler_pair(lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=7, eta_min=eta_min),
                    lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7,
                                                                         eta_min=eta_min))


@pytest.mark.parametrize("mode,threshold_mode,cooldown", [("min", "rel", 0), ("min", "abs", 2),
                                                         ("max", "rel", 1), ("max", "abs", 0)])
def test_reduce_lr_on_plateau(mode, threshold_mode, cooldown):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    metrics = list(np.concatenate([np.linspace(1.0, 0.5, 6), 0.5 + 0.01 * rng.random(24)]))
    if mode == "max":
        metrics = [-m for m in metrics]
    kw = dict(mode=mode, factor=0.5, patience=2, threshold=1e-3, threshold_mode=threshold_mode,
              cooldown=cooldown, min_lr=0.004)
    _scheduler_pair(lambda o: lr_scheduler.ReduceLROnPlateau(o, **kw),
                    lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, **kw),
                    metrics=metrics)


def test_lstm_trains_with_adam_in_place():
    lstmc.manual_seed(0)
    lstm = lstmc.nn.LSTM(input_size=3, hidden_size=4, num_layers=2, batch_first=True,
                         dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3))
    target = rng.standard_normal((2, 5, 4))
    opt = optim.Adam(lstm.parameters(), lr=0.01)
    before = lstm._flat.copy()
    losses = []
    for _ in range(5):
        lstm.zero_grad()
        out, _ = lstm(x)
        losses.append(float(np.mean((out - target) ** 2)))
        lstm.backward(2 * (out - target) / out.size)
        opt.step()
    assert not np.allclose(lstm._flat, before)
    assert losses[-1] < losses[0]
    for _, p in lstm.named_parameters():
        assert np.shares_memory(p.data, lstm._flat)
        assert np.shares_memory(p.grad, lstm._flat_grad)
    opt.zero_grad()
    assert not np.any(lstm._flat_grad)


@pytest.mark.parametrize("name,kwargs", [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
                                         ("Adam", dict(lr=0.01, amsgrad=True)),
                                         ("AdamW", dict(lr=0.01)),
                                         ("RMSprop", dict(momentum=0.5, centered=True))])
def test_state_dict_round_trip(name, kwargs):
    dtype = np.float64
    grads = _grads(dtype)
    ref = _make_params(dtype)
    ref_opt = getattr(optim, name)(ref, **kwargs)
    params = _make_params(dtype)
    opt = getattr(optim, name)(params, **kwargs)
    for i, step_grads in enumerate(grads):
        if i == 7:   # snapshot; continue in a fresh optimizer over copied parameters
            sd = opt.state_dict()
            params2 = _make_params(dtype)
            for p, p2 in zip(params, params2):
                p2.data[...] = p.data
            opt = getattr(optim, name)(params2, lr=123.0)
            opt.load_state_dict(sd)
            assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
            params = params2
        for p, r, g in zip(params, ref, step_grads):
            p.grad[...] = g
            r.grad[...] = g
        opt.step()
        ref_opt.step()
    for p, r in zip(params, ref):
        np.testing.assert_array_equal(p.data, r.data)


def test_state_dict_is_a_copy():
    params = _make_params(np.float64)
    opt = optim.Adam(params)
    for p, g in zip(params, _grads(np.float64, steps=1)[0]):
        p.grad[...] = g
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["params"] == [0, 1, 2]
    assert sd["state"][0]["step"] == 1
    saved = sd["state"][0]["exp_avg"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], saved)


def test_load_torch_state_dict():
    torch = pytest.importorskip("torch")
    dtype = np.float64
    params = _make_params(dtype)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    theirs = torch.optim.Adam(tparams, lr=0.02, foreach=False)
    grads = _grads(dtype)
    for step_grads in grads[:4]:
        for tp, g in zip(tparams, step_grads):
            tp.grad = torch.tensor(g)
        theirs.step()
    for p, tp in zip(params, tparams):
        p.data[...] = tp.detach().numpy()
    ours = optim.Adam(params)
    ours.load_state_dict(theirs.state_dict())
    for step_grads in grads[4:]:
        _step_both(torch, ours, theirs, params, tparams, step_grads)
    for p, tp in zip(params, tparams):
        _assert_close(p.data, tp.detach().numpy(), dtype, "after loading torch state")


BAD = [
    ("SGD", dict(lr=-0.1)), ("SGD", dict(momentum=-0.5)), ("SGD", dict(weight_decay=-1)),
    ("SGD", dict(nesterov=True)), ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1)),
    ("Adam", dict(lr=-1e-3)), ("Adam", dict(eps=-1.0)), ("Adam", dict(betas=(1.0, 0.9))),
    ("Adam", dict(betas=(0.9, -0.1))), ("Adam", dict(weight_decay=-0.1)),
    ("AdamW", dict(betas=(0.9, 1.0))), ("AdamW", dict(lr=-1.0)),
    ("RMSprop", dict(lr=-1.0)), ("RMSprop", dict(alpha=-0.1)), ("RMSprop", dict(eps=-1.0)),
    ("RMSprop", dict(momentum=-1.0)), ("RMSprop", dict(weight_decay=-1.0)),
]


@pytest.mark.parametrize("name,kwargs", BAD, ids=[f"{n}-{k}" for n, k in BAD])
def test_bad_hyperparameters(name, kwargs):
    with pytest.raises(ValueError):
        getattr(optim, name)(_make_params(np.float64), **kwargs)
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError):   # torch agrees
        getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)], **kwargs)


def test_bad_params_and_schedulers():
    params = _make_params(np.float64)
    with pytest.raises(ValueError):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError):
        optim.SGD(params[0], lr=0.1)
    with pytest.raises(ValueError):
        optim.SGD([{"params": params[:2]}, {"params": params[1:]}], lr=0.1)
    opt = optim.SGD(params, lr=0.1)
    with pytest.raises(ValueError):
        lr_scheduler.ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError):
        lr_scheduler.ReduceLROnPlateau(opt, mode="median")
    with pytest.raises(TypeError):
        lr_scheduler.StepLR(object(), step_size=2)
