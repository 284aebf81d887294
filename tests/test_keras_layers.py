"""The Keras flavour's layers: Keras' weight layout and mask semantics, gradients by finite
differences, and — when Keras is installed (run on its torch backend) — outputs equal to
Keras' own layers given the same weights."""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lstmc
from lstmc import layers as L
from lstmc import reference

from helpers import assert_close, central_difference, keras_or_skip

os.environ.setdefault("KERAS_BACKEND", "torch")


B, T, I, U = 3, 7, 5, 4


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)


@pytest.fixture
def holes():
    """Right padding, left padding, and a hole in the middle."""
    m = np.ones((B, T), bool)
    m[0, 5:] = False
    m[1, :2] = False
    m[2, 3] = False
    return m


def _rnn_layers(**kw):
    return [L.LSTM(U, **kw), L.GRU(U, **kw), L.GRU(U, reset_after=False, **kw),
            L.SimpleRNN(U, **kw), L.SimpleRNN(U, activation="relu", **kw)]


# ---- weight layout ------------------------------------------------------------------------
def test_lstm_weights_are_keras_layout_and_gate_order(x):
    """kernel columns [i f c o] are PyTorch's weight_ih rows: check the output against the
    float64 reference fed the converted weights."""
    lstmc.manual_seed(1)
    layer = L.LSTM(U, return_sequences=True)
    layer.build((T, I))
    kernel, rec, bias = layer.get_weights()
    assert kernel.shape == (I, 4 * U) and rec.shape == (U, 4 * U) and bias.shape == (4 * U,)
    np.testing.assert_array_equal(bias[U:2 * U], 1)          # unit_forget_bias
    np.testing.assert_array_equal(bias[:U], 0)
    xt = x.transpose(1, 0, 2).astype(np.float64)
    params = {"weight_ih_l0": kernel.T, "weight_hh_l0": rec.T, "bias_ih_l0": bias,
              "bias_hh_l0": np.zeros(4 * U)}
    out = reference.lstm_forward(xt, {k: v.astype(np.float64) for k, v in params.items()})[0]
    assert_close("out vs reference", layer(x), out.transpose(1, 0, 2), 1e-7, 2e-6)


def test_gru_weights_keras_gate_order_z_r_h(x):
    """Keras' GRU kernel is [z r h]; lstmc's (PyTorch's) weight_ih is [r z n]."""
    layer = L.GRU(U)
    layer.build((T, I))
    k, r, b = layer.get_weights()
    assert b.shape == (2, 3 * U)
    np.testing.assert_array_equal(layer.weight_ih_l0.data[:U], k[:, U:2 * U].T)   # r
    np.testing.assert_array_equal(layer.weight_ih_l0.data[U:2 * U], k[:, :U].T)   # z
    np.testing.assert_array_equal(layer.weight_hh_l0.data[2 * U:], r[:, 2 * U:].T)  # n / h
    g = L.GRU(U, reset_after=False).build((T, I))
    assert g.get_weights()[2].shape == (3 * U,)


@pytest.mark.parametrize("make", [lambda: L.LSTM(U), lambda: L.GRU(U),
                                  lambda: L.GRU(U, reset_after=False), lambda: L.SimpleRNN(U),
                                  lambda: L.Bidirectional(L.LSTM(U)), lambda: L.Dense(3),
                                  lambda: L.Embedding(10, 3)])
def test_set_get_weights_round_trip(make):
    a, b = make(), make()
    shape = (T,) if isinstance(a, L.Embedding) else (T, I)
    a.build(shape), b.build(shape)
    rng = np.random.default_rng(2)
    ws = [rng.standard_normal(w.shape).astype(np.float32) for w in a.get_weights()]
    b.set_weights(ws)
    for w, v in zip(ws, b.get_weights()):
        np.testing.assert_array_equal(w, v)
    assert b.count_params() == sum(w.size for w in ws)


def test_param_counts_arekeras_or_skip():
    assert L.LSTM(50).build((10, 1)).count_params() == 4 * (50 * (1 + 50) + 50)
    assert L.GRU(8).build((10, 3)).count_params() == 3 * (8 * (3 + 8) + 2 * 8)
    assert L.GRU(8, reset_after=False).build((10, 3)).count_params() == 3 * (8 * 11 + 8)
    assert L.SimpleRNN(8).build((10, 3)).count_params() == 8 * 11 + 8
    assert L.Bidirectional(L.LSTM(5)).build((4, 2)).count_params() == 2 * 4 * (5 * 7 + 5)


# ---- masks --------------------------------------------------------------------------------
@pytest.mark.parametrize("i", range(5))
@pytest.mark.parametrize("go_backwards", [False, True])
def test_mask_runs_only_valid_steps(x, holes, i, go_backwards):
    """Keras holds the state on masked steps: each row's result equals running that row
    with its masked steps deleted."""
    layer = _rnn_layers(return_sequences=True, go_backwards=go_backwards)[i]
    last = _rnn_layers(go_backwards=go_backwards)[i]
    layer.build((T, I)), last.build((T, I))
    last.set_weights(layer.get_weights())
    y = layer(x, mask=holes)
    h = last(x, mask=holes)
    for b in range(B):
        kept = x[b:b + 1, holes[b]]
        alone = layer(kept)[0]
        assert_close(f"row {b}: last state", h[b], alone[-1], 1e-7, 1e-6)
        # outputs at valid steps, in layer order; masked steps repeat the previous output
        order = np.flatnonzero(holes[b][::-1] if go_backwards else holes[b])
        assert_close(f"row {b}: valid steps", y[b, order], alone, 1e-7, 1e-6)
        valid = holes[b][::-1] if go_backwards else holes[b]
        seen = np.cumsum(valid) - 1
        for s in np.flatnonzero(~valid):
            expect = np.zeros(U) if seen[s] < 0 else alone[seen[s]]
            assert_close(f"row {b}, masked step {s}", y[b, s], expect, 1e-7, 1e-6)


def test_bidirectional_masked_steps_output_zeros(x, holes):
    layer = L.Bidirectional(L.LSTM(U, return_sequences=True))
    y = layer(x, mask=holes)
    assert y.shape == (B, T, 2 * U)
    assert np.all(y[~holes] == 0) and np.all(np.abs(y[holes]).sum(-1) > 0)


def test_embedding_mask_zero_reaches_the_rnn():
    ids = np.array([[0, 0, 3, 4], [5, 6, 0, 0]])
    emb, rnn = L.Embedding(10, 3, mask_zero=True), L.LSTM(4)
    e, mask = emb.forward(ids)
    np.testing.assert_array_equal(mask, ids != 0)
    h = rnn(e, mask=mask)
    assert_close("row 0", h[0], rnn(e[:1, 2:])[0], 1e-7, 1e-6)
    assert_close("row 1", h[1], rnn(e[1:, :2])[0], 1e-7, 1e-6)


def test_stateful_carries_state_between_calls(x):
    whole = L.LSTM(U, return_sequences=True)
    parts = L.LSTM(U, return_sequences=True, stateful=True)
    whole.build((T, I)), parts.build((T, I))
    parts.set_weights(whole.get_weights())
    y = whole(x)
    assert_close("two stateful calls vs one", np.concatenate([parts(x[:, :3]), parts(x[:, 3:])], axis=1),
                 y, 1e-7, 1e-6)
    parts.reset_states()
    assert_close("after reset_states", parts(x[:, :3]), y[:, :3], 1e-7, 1e-6)
    with pytest.raises(ValueError, match="same batch size"):
        parts(x[:2, :3])


def test_return_state_lists_output_then_states(x):
    y, h, c = L.LSTM(U, return_state=True)(x)
    np.testing.assert_array_equal(y, h)
    assert c.shape == (B, U)
    out = L.Bidirectional(L.GRU(U, return_state=True))(x)
    assert [a.shape for a in out] == [(B, 2 * U), (B, U), (B, U)]


# ---- gradients ----------------------------------------------------------------------------
def _fd_check(layer, x, mask, dy_shape_fn, n_checks=6, eps=1e-6):
    """Input and parameter gradients of sum(out * w) against central differences."""
    rng = np.random.default_rng(5)
    y, _ = layer.forward(x, mask, training=True)
    w = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(w)
    f = lambda: float((layer.forward(x, mask, training=True)[0] * w).sum())
    for _ in range(n_checks):
        idx = tuple(rng.integers(0, s) for s in x.shape)
        assert dx[idx] == pytest.approx(central_difference(f, x, idx, eps), abs=1e-7, rel=1e-5)
    for name, p in layer.named_parameters():
        flat, grad = p.data.reshape(-1), p.grad.reshape(-1)
        for k in rng.integers(0, flat.size, 3):
            assert grad[k] == pytest.approx(central_difference(f, flat, k, eps), abs=1e-7,
                                            rel=1e-5), name


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("i", range(5))
@pytest.mark.parametrize("go_backwards", [False, True])
def test_rnn_layer_gradients_with_holes(holes, i, return_sequences, go_backwards):
    layer = [L.LSTM(U, dtype="float64", return_sequences=return_sequences,
                    go_backwards=go_backwards),
             L.GRU(U, dtype="float64", return_sequences=return_sequences,
                   go_backwards=go_backwards),
             L.GRU(U, reset_after=False, dtype="float64", return_sequences=return_sequences,
                   go_backwards=go_backwards),
             L.SimpleRNN(U, dtype="float64", return_sequences=return_sequences,
                         go_backwards=go_backwards),
             L.SimpleRNN(U, activation="relu", dtype="float64",
                         return_sequences=return_sequences, go_backwards=go_backwards)][i]
    x = np.random.default_rng(3).standard_normal((B, T, I))
    _fd_check(layer, x, holes, None)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional_gradients(holes, merge_mode, return_sequences):
    layer = L.Bidirectional(L.LSTM(U, dtype="float64", return_sequences=return_sequences),
                            merge_mode=merge_mode, dtype="float64")
    x = np.random.default_rng(4).standard_normal((B, T, I))
    _fd_check(layer, x, holes, None)


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "sigmoid", "softmax"])
def test_dense_gradients(activation):
    layer = L.Dense(3, activation=activation, dtype="float64")
    x = np.random.default_rng(6).standard_normal((B, T, I))
    _fd_check(layer, x, None, None)


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 4), t=st.integers(1, 6), f=st.integers(1, 5), u=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_lstm_any_mask_equals_deleting_masked_steps(b, t, f, u, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, f)).astype(np.float32)
    mask = rng.random((b, t)) < 0.6
    layer = L.LSTM(u)
    h = layer(x, mask=mask)
    for r in range(b):
        expect = layer(x[r:r + 1, mask[r]])[0] if mask[r].any() else np.zeros(u)
        assert_close(f"row {r}", h[r], expect, 1e-7, 1e-6)


# ---- errors -------------------------------------------------------------------------------
def test_errors_name_the_problem(x):
    layer = L.LSTM(U)
    layer(x)
    with pytest.raises(ValueError, match=r"input must have shape \(batch,\) \+ \(7, 5\)"):
        layer(x[:, :, :3])
    with pytest.raises(ValueError, match="3-D"):
        layer(x[0])
    with pytest.raises(ValueError, match=r"weight 1 must have shape \(4, 16\)"):
        layer.set_weights([np.zeros((I, 16)), np.zeros((5, 16)), np.zeros(16)])
    with pytest.raises(ValueError, match="expects 3 arrays"):
        layer.set_weights([np.zeros((I, 16))])
    with pytest.raises(ValueError, match="recurrent_dropout"):
        L.LSTM(4, recurrent_dropout=1.0)
    with pytest.raises(ValueError, match="activation"):
        L.LSTM(4, activation="relu")
    with pytest.raises(ValueError, match="units"):
        L.GRU(0)
    with pytest.raises(ValueError, match="merge_mode"):
        L.Bidirectional(L.LSTM(4), merge_mode="max")
    with pytest.raises(ValueError, match="mask must have shape"):
        L.LSTM(4)(x, mask=np.ones((B, T + 1), bool))
    with pytest.raises(TypeError, match="token ids"):
        L.Embedding(5, 2)(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"idx must lie in \[0, 5\)"):
        L.Embedding(5, 2)(np.array([[7]]))
    with pytest.raises(RuntimeError, match="training=True"):
        L.LSTM(4).build((T, I)).backward(np.zeros((B, 4)))


# ---- against Keras itself -------------------------------------------------------------------
def _keras_out(keras, layer, x, mask):
    out = layer(x, mask=None if mask is None else keras.ops.convert_to_tensor(mask))
    conv = keras.ops.convert_to_numpy
    return [conv(o) for o in out] if isinstance(out, (list, tuple)) else conv(out)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "GRU_reset_before", "SimpleRNN"])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_keras(x, holes, kind, return_sequences, go_backwards, masked):
    keras = keras_or_skip()
    kw = dict(return_sequences=return_sequences, go_backwards=go_backwards)
    if kind == "GRU_reset_before":
        kl, ll = keras.layers.GRU(U, reset_after=False, **kw), L.GRU(U, reset_after=False, **kw)
    else:
        kl, ll = getattr(keras.layers, kind)(U, **kw), getattr(L, kind)(U, **kw)
    mask = holes if masked else None
    ky = _keras_out(keras, kl, x, mask)
    ll.build((T, I))
    ll.set_weights(kl.get_weights())
    assert_close("lstmc vs keras", ll(x, mask=mask), ky, 1e-7, 2e-6)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional_matches_keras(x, holes, merge_mode, return_sequences):
    keras = keras_or_skip()
    kl = keras.layers.Bidirectional(keras.layers.LSTM(U, return_sequences=return_sequences),
                                    merge_mode=merge_mode)
    ll = L.Bidirectional(L.LSTM(U, return_sequences=return_sequences), merge_mode=merge_mode)
    ky = _keras_out(keras, kl, x, holes)
    ll.build((T, I))
    ll.set_weights(kl.get_weights())
    assert_close("lstmc vs keras", ll(x, mask=holes), ky, 1e-7, 2e-6)


def test_return_state_matches_keras(x, holes):
    keras = keras_or_skip()
    kl = keras.layers.Bidirectional(keras.layers.LSTM(U, return_state=True))
    ll = L.Bidirectional(L.LSTM(U, return_state=True))
    ky = _keras_out(keras, kl, x, holes)
    ll.build((T, I))
    ll.set_weights(kl.get_weights())
    for a, b in zip(ll(x, mask=holes), ky):
        assert_close("lstmc vs keras", a, b, 1e-7, 2e-6)


def test_keras_initialisers_have_keras_statistics():
    """Same distributions as Keras' defaults (not the same draws): glorot_uniform bounds,
    orthogonal recurrent kernel, forget bias 1."""
    layer = L.LSTM(64).build((10, 32))
    k, r, b = layer.get_weights()
    limit = np.sqrt(6 / (32 + 256))
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit
    assert_close("r r^T", r @ r.T, np.eye(64), 1e-7, 1e-5)
    np.testing.assert_array_equal(b, np.r_[np.zeros(64), np.ones(64), np.zeros(128)])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_rnn_layers_stream_as_their_sequences_run(kind):
    """initial_state / step (lstmc's streaming on a Keras layer) give the layer's own
    sequence outputs step by step, from zeros or from given states in Keras' order."""
    from lstmc import layers
    from lstmc.models import Model
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    layer = getattr(layers, kind)(6, return_sequences=True, return_state=True)
    inp = layers.Input(shape=(None, 4))
    states_in = [layers.Input(shape=(6,)) for _ in range(2 if kind == "LSTM" else 1)]
    model = Model([inp] + states_in, layer(inp, initial_state=states_in))
    start = [rng.standard_normal((3, 6)).astype(np.float32) for _ in states_in]
    want = model.predict([x] + start)
    state = layer.initial_state(3, start)
    got = np.stack([layer.step(np.ascontiguousarray(x[:, t]), state)[0].copy()
                    for t in range(5)], axis=1)
    np.testing.assert_allclose(got, want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.h[0], want[1], rtol=1e-5, atol=1e-6)


def test_rnn_layer_streams_are_refused_where_time_runs_backwards():
    from lstmc import layers
    with pytest.raises(RuntimeError, match="build the layer"):
        layers.LSTM(3).initial_state(1)
    back = layers.LSTM(3, go_backwards=True)
    back.build((5, 2))          # layers build on the shape without the batch axis
    with pytest.raises(ValueError, match="runs forward in time"):
        back.initial_state(1)
