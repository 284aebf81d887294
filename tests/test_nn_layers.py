"""lstmc.nn's feed-forward modules and clip_grad_norm_: against torch.nn (when installed) and
against central finite differences in float64."""
import numpy as np
import pytest

import lstmc
from lstmc import nn

from helpers import assert_close, numerical_grad


def _fd_check(module, x, dy, params_only=False, eps=1e-6):
    """Compares backward with central differences of sum(forward(x) * dy)."""
    module.zero_grad()
    module(x)
    dx = module.backward(dy)
    loss = lambda: float(np.sum(module(x) * dy))   # noqa: E731
    for name, p in module.named_parameters():
        assert_close(name, p.grad, numerical_grad(loss, p.data, eps), 1e-6, 1e-8)
    if not params_only:
        assert_close("dx", dx, numerical_grad(loss, x, eps), 1e-6, 1e-8)


def test_linear_and_activations_match_finite_differences():
    rng = np.random.default_rng(0)
    lstmc.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7, dtype=np.float64), nn.Tanh(),
                          nn.Linear(7, 3, dtype=np.float64), nn.Sigmoid(),
                          nn.Linear(3, 2, bias=False, dtype=np.float64))
    x = rng.standard_normal((2, 4, 5))
    _fd_check(model, x, rng.standard_normal((2, 4, 2)))
    relu = nn.Sequential(nn.Linear(3, 4, dtype=np.float64), nn.ReLU())
    x = rng.standard_normal((6, 3))
    relu(x)
    pre = x @ relu[0].weight.data.T + relu[0].bias.data
    assert np.min(np.abs(pre)) > 1e-3   # away from the kink
    _fd_check(relu, x, rng.standard_normal((6, 4)))


def test_embedding_gradient_and_padding():
    lstmc.manual_seed(1)
    emb = nn.Embedding(6, 3, padding_idx=2, dtype=np.float64)
    assert np.all(emb.weight.data[2] == 0)
    idx = np.array([[0, 2, 5], [5, 5, 1]])
    y = emb(idx)
    assert y.shape == (2, 3, 3)
    dy = np.arange(18, dtype=np.float64).reshape(2, 3, 3)
    assert emb.backward(dy) is None
    expected = np.zeros((6, 3))
    for (b, t), i in np.ndenumerate(idx):
        if i != 2:
            expected[i] += dy[b, t]
    np.testing.assert_array_equal(emb.weight.grad, expected)
    with pytest.raises(ValueError, match="idx"):
        emb(np.array([6]))
    with pytest.raises(TypeError, match="integer"):
        emb(np.array([1.0]))


def test_dropout_masks_and_eval():
    lstmc.manual_seed(3)
    d = nn.Dropout(0.25)
    x = np.ones((200, 50), np.float32)
    y = d(x)
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), y)
    d.eval()
    np.testing.assert_array_equal(d(x), x)
    with pytest.raises(ValueError):
        nn.Dropout(1.0)


def test_sequential_names_and_state_dict():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "1.weight", "1.bias"]
    sd = model.state_dict()
    other = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    other.load_state_dict(sd)
    idx = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(model(idx), other(idx))


def test_clip_grad_norm():
    lstm = nn.LSTM(3, 4, dtype=np.float64)
    lin = nn.Linear(4, 2, dtype=np.float64)
    params = list(lstm.parameters()) + list(lin.parameters())
    for i, p in enumerate(params):
        p.grad[...] = i + 1.0
    total = np.sqrt(sum(float(np.sum(p.grad ** 2)) for p in params))
    got = nn.utils.clip_grad_norm_(params, 1.0)
    assert got == pytest.approx(total, rel=1e-12)
    after = np.sqrt(sum(float(np.sum(p.grad ** 2)) for p in params))
    assert after == pytest.approx(1.0, rel=1e-5)
    assert nn.utils.clip_grad_norm_(params, 10.0) == pytest.approx(after, rel=1e-12)


def test_layers_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    tl = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4),
                             torch.nn.Tanh(), torch.nn.Linear(4, 3), torch.nn.Sigmoid()).double()
    ml = nn.Sequential(nn.Linear(6, 5, dtype=np.float64), nn.ReLU(),
                       nn.Linear(5, 4, dtype=np.float64), nn.Tanh(),
                       nn.Linear(4, 3, dtype=np.float64), nn.Sigmoid())
    ml.load_state_dict(tl.state_dict())
    x = rng.standard_normal((7, 6))
    dy = rng.standard_normal((7, 3))
    xt = torch.tensor(x, requires_grad=True)
    yt = tl(xt)
    (yt * torch.tensor(dy)).sum().backward()
    y = ml(x)
    dx = ml.backward(dy)
    assert_close("y", y, yt.detach().numpy(), 1e-12, 1e-14)
    assert_close("dx", dx, xt.grad.numpy(), 1e-10, 1e-14)
    tp = dict(tl.named_parameters())
    for name, p in ml.named_parameters():
        assert_close(name, p.grad, tp[name].grad.numpy(), 1e-10, 1e-14)
    te = torch.nn.Embedding(7, 3, padding_idx=0).double()
    me = nn.Embedding(7, 3, padding_idx=0, dtype=np.float64)
    me.load_state_dict(te.state_dict())
    idx = np.array([[0, 3, 3, 6], [1, 0, 2, 6]])
    dy = rng.standard_normal((2, 4, 3))
    (te(torch.tensor(idx)) * torch.tensor(dy)).sum().backward()
    me(idx)
    me.backward(dy)
    assert_close("weight grad", me.weight.grad, te.weight.grad.numpy(), 1e-12, 0)
    params = [torch.nn.Parameter(torch.tensor(rng.standard_normal((3, 4)))) for _ in range(2)]
    grads = [rng.standard_normal((3, 4)) for _ in range(2)]
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g)
    mine = [nn.Parameter(np.zeros((3, 4)), g.copy()) for g in grads]
    t_total = float(torch.nn.utils.clip_grad_norm_(params, 0.5))
    assert nn.utils.clip_grad_norm_(mine, 0.5) == pytest.approx(t_total, rel=1e-12)
    for p, q in zip(params, mine):
        assert_close("grad", q.grad, p.grad.numpy(), 1e-12, 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, np.inf])
def test_clip_grad_norm_nonfinite_matches_torch(bad, norm_type):
    """error_if_nonfinite=True raises RuntimeError naming the total norm and leaves the
    gradients alone; False scales them by the non-finite norm's coefficient, as PyTorch."""
    torch = pytest.importorskip("torch")
    grads = [np.array([[1.0, bad], [2.0, -3.0]]), np.array([0.5, -0.25])]
    mine = [nn.Parameter(np.zeros_like(g), g.copy()) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
    for p, g in zip(theirs, grads):
        p.grad = torch.tensor(g)
    with pytest.raises(RuntimeError) as t_err:
        torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match=r"total norm of order .* is non-finite \((nan|inf)\)"):
        nn.utils.clip_grad_norm_(mine, 1.0, norm_type, error_if_nonfinite=True)
    assert "non-finite" in str(t_err.value)
    for q, g in zip(mine, grads):
        np.testing.assert_array_equal(q.grad, g)
    t_total = float(torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type))
    total = nn.utils.clip_grad_norm_(mine, 1.0, norm_type)
    np.testing.assert_array_equal(total, t_total)
    for p, q in zip(theirs, mine):
        np.testing.assert_array_equal(q.grad, p.grad.numpy())
