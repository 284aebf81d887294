"""copy.deepcopy and pickle of lstmc modules, optimizers, Keras-style models and stream states.

PyTorch users copy models (to keep the best one while training, to fork a model for
fine-tuning) and pickle them. A module's parameters are views into its flat buffer, and numpy
copies a view as a new array, so what must hold for a copy:

* it computes what the original computes, in training and in eval mode (where the original
  holds packed weights and read-only parameters);
* its parameters are views of its own flat buffer: an optimizer step on the copy changes the
  copy's output and leaves the original's alone;
* a model copied together with its optimizer keeps the optimizer bound to the copy's
  parameters;
* a StreamState copy branches a stream: stepping one does not move the other.
"""
import copy
import pickle

import numpy as np
import pytest

from lstmc import layers, models, nn, optim


def _copies(m, how):
    return copy.deepcopy(m) if how == "deepcopy" else pickle.loads(pickle.dumps(m))


def _first(y):
    return y[0] if isinstance(y, tuple) else y


MODULES = {
    "linear": (lambda: nn.Linear(5, 3), (4, 5)),
    "embedding": (lambda: nn.Embedding(7, 3), None),
    "lstm": (lambda: nn.LSTM(5, 4, num_layers=2, bidirectional=True), (6, 2, 5)),
    "lstm_proj": (lambda: nn.LSTM(5, 4, proj_size=3), (6, 2, 5)),
    "gru": (lambda: nn.GRU(5, 4, reset_after=False), (6, 2, 5)),
    "rnn": (lambda: nn.RNN(5, 4, nonlinearity="relu"), (6, 2, 5)),
    "lstm_cell": (lambda: nn.LSTMCell(5, 4), (2, 5)),
    "gru_cell": (lambda: nn.GRUCell(5, 4), (2, 5)),
    "sequential": (lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)), (3, 5)),
}


def _input(shape):
    if shape is None:
        return np.array([[1, 2, 6], [0, 3, 3]])
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kind", sorted(MODULES))
def test_module_copy_is_independent_and_live(kind, mode, how):
    make, shape = MODULES[kind]
    m = make()
    m.train(mode == "train")
    x = _input(shape)
    y0 = _first(m(x)).copy()            # in eval mode this packs the recurrent weights
    c = _copies(m, how)
    assert type(c) is type(m)
    np.testing.assert_array_equal(_first(c(x)), y0)
    params = list(c.parameters())
    assert len(params) == len(list(m.parameters())) > 0
    for p, q in zip(params, m.parameters()):
        assert not np.shares_memory(p.data, q.data)
        assert not np.shares_memory(p.grad, q.grad)
    owners = [mod for mod in c.modules() if "_flat" in mod.__dict__]
    if kind.endswith("_cell"):
        owners = [c._seq]
    for p in params:   # each parameter is a view of its owner's flat buffers
        assert any(np.shares_memory(p.data, o._flat) and np.shares_memory(p.grad, o._flat_grad)
                   for o in owners)
    for p in params:   # what an optimizer writes reaches the copy's kernels
        p.grad[...] = 1
    c.train(mode == "train")
    optim.SGD(params, lr=0.5).step()
    assert not np.array_equal(_first(c(x)), y0)
    np.testing.assert_array_equal(_first(m(x)), y0)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_model_and_optimizer_copied_together_stay_bound(how):
    m = nn.LSTM(3, 4)
    opt = optim.Adam(m.parameters(), lr=0.1)
    x = _input((5, 2, 3))
    y, _ = m(x)
    m.backward(np.ones_like(y))
    opt.step()
    c, c_opt = _copies((m, opt), how)
    assert [id(p) for p in c_opt.param_groups[0]["params"]] == [id(p) for p in c.parameters()]
    assert set(map(id, c_opt.state)) == {id(p) for p in c.parameters()}
    before = m.state_dict()
    y, _ = c(x)
    c.backward(np.ones_like(y))
    c_opt.step()
    for name, value in m.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    assert any(not np.array_equal(c.state_dict()[k], before[k]) for k in before)


def test_keras_sequential_deepcopy_trains_on_its_own():
    rng = np.random.default_rng(1)
    x = rng.integers(1, 20, size=(16, 7))
    y = rng.integers(0, 2, size=16)
    model = models.Sequential([layers.Embedding(20, 4), layers.LSTM(5), layers.Dense(2)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    p0 = model.predict(x, verbose=0)
    twin = copy.deepcopy(model)
    np.testing.assert_array_equal(twin.predict(x, verbose=0), p0)
    twin.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert not np.allclose(twin.predict(x, verbose=0), p0)
    np.testing.assert_array_equal(model.predict(x, verbose=0), p0)


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy])
def test_stream_state_copy_branches_the_stream(copier):
    m = nn.LSTM(3, 4, num_layers=2).eval()
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 3)).astype(np.float32)
    state = m.initial_state()
    m.step(a, state)
    branch = copier(state)
    assert branch is not state and branch.h is not state.h
    np.testing.assert_array_equal(branch.h, state.h)
    np.testing.assert_array_equal(branch.c, state.c)
    h_state = state.h.copy()
    y_branch = _first(m.step(b, branch)).copy()
    np.testing.assert_array_equal(state.h, h_state)      # the original did not move
    y_state = _first(m.step(b, state))
    np.testing.assert_array_equal(y_state, y_branch)     # same history, same step


def test_stream_state_deepcopied_with_its_module_belongs_to_the_copy():
    m = nn.GRU(3, 4)
    state = m.initial_state()
    m2, state2 = copy.deepcopy((m, state))
    assert state2._owner is m2
    assert copy.deepcopy(state)._owner is m                # alone: the same module


@pytest.mark.parametrize("make", [lambda: nn.LSTM(3, 4), lambda: nn.GRU(3, 4),
                                  lambda: nn.RNN(3, 4)])
def test_shallow_copy_of_a_recurrent_module_is_refused(make):
    """A shallow copy would share the parameters but not the packed weights beside them, so a
    write through one module could leave the other's pack stale."""
    with pytest.raises(TypeError, match="copy.deepcopy"):
        copy.copy(make())


def test_shallow_copy_of_other_modules_shares_parameters():
    lin = nn.Linear(3, 2)
    twin = copy.copy(lin)
    assert twin.weight is lin.weight and np.shares_memory(twin.weight.data, lin._flat)
    cell = nn.LSTMCell(3, 4)                               # its weights live in one LSTM
    assert copy.copy(cell)._seq is cell._seq


def test_stream_state_pickle_is_refused_with_a_way_out():
    state = nn.GRU(3, 4).initial_state()
    with pytest.raises(TypeError, match="state.h"):
        pickle.dumps(state)
