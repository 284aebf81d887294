"""The functional Keras face (lstmc.models.Model, lstmc.layers.Input): graphs with several
inputs and outputs, shared layers, return_state -> initial_state, masks from
Embedding(mask_zero=True), the merge, attention, shaping and normalisation layers. Outputs and
fit trajectories against Keras 3 (torch backend) on the same weights and batches; every new
layer's backward and whole graphs' gradients against central finite differences (float64)."""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lstmc
from lstmc import layers as L
from lstmc.models import Model, Sequential, load_model

from helpers import assert_close, keras_or_skip, numerical_grad

os.environ.setdefault("KERAS_BACKEND", "torch")


def _ids(rng, n, T, V, lo=2):
    """Token ids with padding 0 at the end of each row (lengths lo..T), some rows
    left-padded."""
    x = rng.integers(1, V, (n, T))
    x[np.arange(T)[None, :] >= rng.integers(lo, T + 1, n)[:, None]] = 0
    x[::3] = np.roll(x[::3], 2, axis=1)
    return x


def _seq2seq(lib, V, E, U, attention="dot"):
    """SPEC.md §9's encoder-decoder in lstmc's or Keras' layers."""
    src = lib.Input(shape=(None,), dtype="int32")
    tgt = lib.Input(shape=(None,), dtype="int32")
    enc, h, c = lib.LSTM(U, return_sequences=True, return_state=True)(
        lib.Embedding(V, E, mask_zero=True)(src))
    dec = lib.LSTM(U, return_sequences=True)(lib.Embedding(V, E, mask_zero=True)(tgt),
                                             initial_state=[h, c])
    att = lib.Attention()([dec, enc]) if attention == "dot" else \
        lib.AdditiveAttention()([dec, enc])
    out = lib.Dense(V, activation="softmax")(lib.Concatenate()([dec, att]))
    return [src, tgt], out


def _copy_task(n=64, T=7, V=11, seed=0):
    rng = np.random.default_rng(seed)
    x_src = _ids(rng, n, T, V)
    x_tgt = np.concatenate([np.ones((n, 1), dtype=x_src.dtype), x_src[:, :-1]], axis=1)
    x_tgt[x_src == 0] = 0
    return x_src, x_tgt, x_src % 5


def test_spec_target_program_runs_and_learns():
    """SPEC.md §9's program: builds and trains (the loss falls by a quarter in 6 epochs)."""
    lstmc.manual_seed(0)
    V = 11
    x_src, x_tgt, y = _copy_task(256, V=V)
    from lstmc.models import Model
    from lstmc.layers import Input, Embedding, LSTM, Dense, Attention, Concatenate
    src, tgt = Input(shape=(None,), dtype="int32"), Input(shape=(None,), dtype="int32")
    enc, h, c = LSTM(32, return_sequences=True, return_state=True)(Embedding(V, 16, mask_zero=True)(src))
    dec = LSTM(32, return_sequences=True)(Embedding(V, 16, mask_zero=True)(tgt), initial_state=[h, c])
    out = Dense(V, activation="softmax")(Concatenate()([dec, Attention()([dec, enc])]))
    model = Model([src, tgt], out)
    model.compile(lstmc.optimizers.Adam(learning_rate=0.01), "sparse_categorical_crossentropy")
    history = model.fit([x_src, x_tgt], y, epochs=6, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.75 * history.history["loss"][0]


@pytest.mark.parametrize("attention", ["dot", "additive"])
def test_seq2seq_matches_keras(attention):
    """The encoder-decoder: Keras' layer order and weights, its predictions, and its fit
    trajectory (Adam, two epochs, same batches) with masks from both embeddings."""
    keras = keras_or_skip()
    V, E, U = 11, 6, 8
    x_src, x_tgt, y = _copy_task(V=V)
    lstmc.manual_seed(3)
    ours = Model(*_seq2seq(L, V, E, U, attention))
    theirs = keras.Model(*_seq2seq(keras.layers, V, E, U, attention))
    assert [type(l).__name__ for l in ours.layers] == \
        [type(l).__name__ for l in theirs.layers]
    theirs.set_weights(ours.get_weights())
    assert_close("predict", ours.predict([x_src, x_tgt]),
                 theirs.predict([x_src, x_tgt], verbose=0), 1e-5, 1e-6)
    ours.compile(lstmc.optimizers.Adam(learning_rate=0.01), "sparse_categorical_crossentropy",
                 ["accuracy"])
    theirs.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01),
                   loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    a = ours.fit([x_src, x_tgt], y, epochs=2, batch_size=16, shuffle=False, verbose=0).history
    b = theirs.fit([x_src, x_tgt], y, epochs=2, batch_size=16, shuffle=False,
                   verbose=0).history
    assert_close("loss", a["loss"], b["loss"], 1e-5, 0)
    assert_close("accuracy", a["accuracy"], b["accuracy"], 1e-7, 1e-6)
    # Adam's steps are about lr whatever the gradient's size: a parameter whose gradient is
    # float32 noise (a key bias under the softmax's shift invariance) wanders by ~lr
    for i, (w1, w2) in enumerate(zip(ours.get_weights(), theirs.get_weights())):
        assert_close(f"weight {i}", w1, w2, 1e-3, 5e-4)


def _bidirectional_graph(lib, V=9, E=4, U=5):
    """A Bidirectional encoder's states (forward h, c, backward h, c) start a decoder, and
    a Bidirectional GRU starts from states computed by Dense layers."""
    src, tgt = lib.Input(shape=(None,), dtype="int32"), lib.Input(shape=(None,), dtype="int32")
    enc, fh, fc, bh, bc = lib.Bidirectional(lib.LSTM(U, return_sequences=True,
                                                     return_state=True))(
        lib.Embedding(V, E, mask_zero=True)(src))
    dec = lib.LSTM(2 * U, return_sequences=True)(
        lib.Embedding(V, E, mask_zero=True)(tgt),
        initial_state=[lib.Concatenate()([fh, bh]), lib.Concatenate()([fc, bc])])
    g = lib.Bidirectional(lib.GRU(3, return_sequences=True), merge_mode="sum")(
        dec, initial_state=[lib.Dense(3)(fh), lib.Dense(3)(bh)])
    return [src, tgt], lib.Dense(3, activation="softmax")(
        lib.Concatenate()([g, lib.Attention()([dec, enc])]))


def test_bidirectional_states_in_graphs_matchkeras_or_skip():
    """Bidirectional return_state outputs and initial_state= inputs (Keras' order: the
    forward direction's states, then the backward one's): Keras' outputs and fit."""
    keras = keras_or_skip()
    rng = np.random.default_rng(12)
    x_src, x_tgt = _ids(rng, 40, 6, 9), _ids(rng, 40, 5, 9, lo=1)
    y = rng.integers(0, 3, (40, 5))
    lstmc.manual_seed(12)
    ours = Model(*_bidirectional_graph(L))
    theirs = keras.Model(*_bidirectional_graph(keras.layers))
    theirs.set_weights(ours.get_weights())
    assert_close("predict", ours.predict([x_src, x_tgt]),
                 theirs.predict([x_src, x_tgt], verbose=0), 1e-5, 1e-6)
    for m, opt in ((ours, lstmc.optimizers.SGD), (theirs, keras.optimizers.SGD)):
        m.compile(opt(learning_rate=0.5), "sparse_categorical_crossentropy")
    a = ours.fit([x_src, x_tgt], y, epochs=2, batch_size=8, shuffle=False, verbose=0).history
    b = theirs.fit([x_src, x_tgt], y, epochs=2, batch_size=8, shuffle=False,
                   verbose=0).history
    assert_close("loss", a["loss"], b["loss"], 1e-5, 0)
    for i, (w1, w2) in enumerate(zip(ours.get_weights(), theirs.get_weights())):
        assert_close(f"weight {i}", w1, w2, 1e-4, 1e-5)


def _merge_graph(lib, merge, V=9, E=5, U=6, T=6):
    """Two masked sequences (different paddings) merged, then a masked tagger head."""
    a, b = lib.Input(shape=(T,), dtype="int32"), lib.Input(shape=(T,), dtype="int32")
    xa = lib.LSTM(U, return_sequences=True)(lib.Embedding(V, E, mask_zero=True)(a))
    xb = lib.GRU(U, return_sequences=True)(lib.Embedding(V, E, mask_zero=True)(b))
    layer = {"add": lambda: lib.Add(), "multiply": lambda: lib.Multiply(),
             "concatenate": lambda: lib.Concatenate(),
             "concatenate_time": lambda: lib.Concatenate(axis=1),
             "dot": lambda: lib.Dot(axes=2),
             "dot_normalize": lambda: lib.Dot(axes=2, normalize=True),
             "dense_merge": lambda: lib.Concatenate()}[merge]()
    m = layer([xa, xb])
    if merge.startswith("dot"):
        m = lib.Concatenate()([xa, m])     # (B, T, U + T): back to a tagger
    out = lib.Dense(3, activation="softmax")(m)
    return [a, b], out


@pytest.mark.parametrize("merge", ["add", "multiply", "concatenate", "concatenate_time",
                                   "dot", "dot_normalize"])
def test_merge_layers_match_keras(merge):
    """Each merge layer with masks on both inputs: Keras' outputs and masked loss, and two
    epochs of SGD."""
    keras = keras_or_skip()
    rng = np.random.default_rng(5)
    n, T, V = 48, 6, 9
    xa, xb = _ids(rng, n, T, V), _ids(rng, n, T, V, lo=1)
    Ty = 2 * T if merge == "concatenate_time" else T
    y = rng.integers(0, 3, (n, Ty))
    lstmc.manual_seed(5)
    ours = Model(*_merge_graph(L, merge))
    theirs = keras.Model(*_merge_graph(keras.layers, merge))
    theirs.set_weights(ours.get_weights())
    assert_close("predict", ours.predict([xa, xb]), theirs.predict([xa, xb], verbose=0),
                 1e-5, 1e-6)
    ours.compile(lstmc.optimizers.SGD(learning_rate=0.5), "sparse_categorical_crossentropy")
    theirs.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5),
                   loss="sparse_categorical_crossentropy")
    assert_close("evaluate", ours.evaluate([xa, xb], y, verbose=0),
                 theirs.evaluate([xa, xb], y, verbose=0), 1e-5, 0)
    a = ours.fit([xa, xb], y, epochs=2, batch_size=16, shuffle=False, verbose=0).history
    b = theirs.fit([xa, xb], y, epochs=2, batch_size=16, shuffle=False, verbose=0).history
    assert_close("loss", a["loss"], b["loss"], 1e-5, 0)


def _attention_graph(lib, kind, use_scale, causal=False, key=False, scores=False):
    V, E = 9, 4
    q, v = lib.Input(shape=(None,), dtype="int32"), lib.Input(shape=(None,), dtype="int32")
    qe = lib.Embedding(V, E, mask_zero=True)(q)
    ve = lib.Embedding(V, E, mask_zero=True)(v)
    inputs = [qe, ve] + ([lib.Dense(E)(ve)] if key else [])
    if kind == "dot":
        layer = lib.Attention(use_scale=use_scale)
    elif kind == "concat":
        layer = lib.Attention(use_scale=use_scale, score_mode="concat")
    else:
        layer = lib.AdditiveAttention(use_scale=use_scale)
    out = layer(inputs, use_causal_mask=causal, return_attention_scores=scores)
    if scores:
        return [q, v], out
    return [q, v], lib.Dense(2, activation="softmax")(out)


@pytest.mark.parametrize("kind,use_scale,causal,key", [
    ("dot", False, False, False), ("dot", True, False, True), ("dot", True, True, False),
    ("concat", True, False, False), ("concat", False, True, True),
    ("additive", True, False, False), ("additive", False, False, True),
    ("additive", True, True, True)])
def test_attention_layers_match_keras(kind, use_scale, causal, key):
    """Attention (dot, concat) and AdditiveAttention with query and value masks, use_scale,
    a separate key and the causal mask: Keras' outputs, attention scores and a fit
    trajectory (Adam; the scales train too)."""
    keras = keras_or_skip()
    rng = np.random.default_rng(7)
    n, Tq, Tv = 32, 5, 7
    xq, xv = _ids(rng, n, Tq, 9, lo=1), _ids(rng, n, Tv, 9)
    y = rng.integers(0, 2, (n, Tq))
    lstmc.manual_seed(7)
    ours = Model(*_attention_graph(L, kind, use_scale, causal, key))
    theirs = keras.Model(*_attention_graph(keras.layers, kind, use_scale, causal, key))
    theirs.set_weights(ours.get_weights())
    assert_close("predict", ours.predict([xq, xv]), theirs.predict([xq, xv], verbose=0),
                 1e-5, 1e-6)
    ours_s = Model(*_attention_graph(L, kind, use_scale, causal, key, scores=True))
    theirs_s = keras.Model(*_attention_graph(keras.layers, kind, use_scale, causal, key,
                                             scores=True))
    theirs_s.set_weights(ours_s.get_weights())
    for name, a, b in zip(["output", "scores"], ours_s.predict([xq, xv]),
                          theirs_s.predict([xq, xv], verbose=0)):
        assert_close(name, a, b, 1e-5, 1e-6)
    ours.compile(lstmc.optimizers.Adam(learning_rate=0.05), "sparse_categorical_crossentropy")
    theirs.compile(optimizer=keras.optimizers.Adam(learning_rate=0.05),
                   loss="sparse_categorical_crossentropy")
    a = ours.fit([xq, xv], y, epochs=2, batch_size=8, shuffle=False, verbose=0).history
    b = theirs.fit([xq, xv], y, epochs=2, batch_size=8, shuffle=False, verbose=0).history
    assert_close("loss", a["loss"], b["loss"], 1e-5, 0)
    # Adam's steps are about lr whatever the gradient's size: a parameter whose gradient is
    # float32 noise (a key bias under the softmax's shift invariance) wanders by ~lr
    for i, (w1, w2) in enumerate(zip(ours.get_weights(), theirs.get_weights())):
        assert_close(f"weight {i}", w1, w2, 1e-3, 5e-4)


def _shaping_graph(lib):
    """LSTM -> RepeatVector -> LSTM -> LayerNormalization -> TimeDistributed(Dense) ->
    Activation, with a second output from the encoder."""
    x = lib.Input(shape=(6, 3))
    h = lib.LSTM(5)(x)
    seq = lib.LSTM(4, return_sequences=True)(lib.RepeatVector(4)(h))
    seq = lib.LayerNormalization()(seq)
    out = lib.Activation("sigmoid")(lib.TimeDistributed(lib.Dense(2))(seq))
    aux = lib.Dense(1, activation="sigmoid", name="aux")(h)
    return x, [out, aux]


def test_shaping_layers_and_two_outputs_matchkeras_or_skip():
    """RepeatVector, LayerNormalization, TimeDistributed(Dense), Activation, and a model
    with two outputs, a loss each and loss_weights: Keras' outputs and per-output logs."""
    keras = keras_or_skip()
    rng = np.random.default_rng(9)
    x = rng.standard_normal((40, 6, 3)).astype(np.float32)
    y_seq = (rng.random((40, 4, 2)) > 0.5).astype(np.float32)
    y_aux = (x.sum(axis=(1, 2)) > 0).astype(np.float32)[:, None]
    lstmc.manual_seed(9)
    ours = Model(*_shaping_graph(L))
    theirs = keras.Model(*_shaping_graph(keras.layers))
    theirs.set_weights(ours.get_weights())
    for a, b in zip(ours.predict(x), theirs.predict(x, verbose=0)):
        assert_close("predict", a, b, 1e-5, 1e-6)
    for m, lib_opt in ((ours, lstmc.optimizers.SGD), (theirs, keras.optimizers.SGD)):
        m.compile(lib_opt(learning_rate=0.3), ["binary_crossentropy", "mse"],
                  loss_weights=[1.0, 0.5], metrics=[["accuracy"], ["mae"]])
    a = ours.fit(x, [y_seq, y_aux], epochs=2, batch_size=8, shuffle=False, verbose=0).history
    b = theirs.fit(x, [y_seq, y_aux], epochs=2, batch_size=8, shuffle=False,
                   verbose=0).history
    assert set(a) == set(b) == {"loss", "activation_loss", "aux_loss", "activation_accuracy",
                                "aux_mae"}
    for name in a:
        assert_close(name, a[name], b[name], 1e-5, 1e-6)
    assert_close("evaluate", ours.evaluate(x, [y_seq, y_aux], verbose=0),
                 theirs.evaluate(x, [y_seq, y_aux], verbose=0), 1e-5, 1e-6)


def _shared_graph(lib):
    """One Dense and one LSTM shared by two inputs (a siamese model), dict outputs."""
    a, b = lib.Input(shape=(5, 3), name="left"), lib.Input(shape=(5, 3), name="right")
    rnn = lib.LSTM(4)
    dense = lib.Dense(4, activation="tanh")
    ha, hb = dense(rnn(a)), dense(rnn(b))
    diff = lib.Add()([ha, lib.Multiply()([hb, hb])])
    return {"left": a, "right": b}, {"score": lib.Dense(1, name="score")(diff),
                                     "code": lib.Dense(2, activation="softmax",
                                                       name="code")(ha)}


def test_shared_layers_and_dicts_matchkeras_or_skip():
    """Shared layers (each called twice), inputs and targets as dicts by name: Keras'
    predictions and fit trajectory."""
    keras = keras_or_skip()
    rng = np.random.default_rng(11)
    xa = rng.standard_normal((32, 5, 3)).astype(np.float32)
    xb = rng.standard_normal((32, 5, 3)).astype(np.float32)
    y = {"score": rng.standard_normal((32, 1)).astype(np.float32),
         "code": rng.integers(0, 2, 32)}
    lstmc.manual_seed(11)
    ours = Model(*_shared_graph(L))
    theirs = keras.Model(*_shared_graph(keras.layers))
    theirs.set_weights(ours.get_weights())
    x = {"left": xa, "right": xb}
    pa, pb = ours.predict(x), theirs.predict(x, verbose=0)
    assert set(pa) == {"score", "code"}
    for k in pa:
        assert_close(k, pa[k], pb[k], 1e-5, 1e-6)
    for m, opt in ((ours, lstmc.optimizers.Adam), (theirs, keras.optimizers.Adam)):
        m.compile(opt(learning_rate=0.02), {"score": "mse",
                                            "code": "sparse_categorical_crossentropy"})
    a = ours.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0).history
    b = theirs.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0).history
    assert_close("loss", a["loss"], b["loss"], 1e-5, 0)
    # Adam's steps are about lr whatever the gradient's size: a parameter whose gradient is
    # float32 noise (a key bias under the softmax's shift invariance) wanders by ~lr
    for i, (w1, w2) in enumerate(zip(ours.get_weights(), theirs.get_weights())):
        assert_close(f"weight {i}", w1, w2, 1e-3, 5e-4)


def _nested_graph(lib, model_cls):
    """A masked sentence encoder (a Model) called on two inputs inside another Model."""
    ids = lib.Input(shape=(None,), dtype="int32")
    h = lib.LSTM(5)(lib.Embedding(9, 4, mask_zero=True)(ids))
    encoder = model_cls(ids, lib.Dense(4, activation="tanh")(h))
    a, b = lib.Input(shape=(None,), dtype="int32"), lib.Input(shape=(None,), dtype="int32")
    ea, eb = encoder(a), encoder(b)
    both = lib.Concatenate()([ea, eb, lib.Multiply()([ea, eb])])
    return [a, b], lib.Dense(1, activation="sigmoid")(both)


def test_model_called_as_a_layer_matches_keras(tmp_path):
    """A Model called on tensors of another (a siamese encoder, shared by two inputs):
    Keras' layers, weights order, predictions and fit trajectory; save / load_model keeps
    the nested model."""
    keras = keras_or_skip()
    rng = np.random.default_rng(13)
    xa, xb = _ids(rng, 40, 6, 9), _ids(rng, 40, 5, 9)
    y = rng.integers(0, 2, 40).astype(np.float32)
    lstmc.manual_seed(13)
    ours = Model(*_nested_graph(L, Model))
    theirs = keras.Model(*_nested_graph(keras.layers, keras.Model))
    assert len(ours.layers) == len(theirs.layers)
    theirs.set_weights(ours.get_weights())
    assert_close("predict", ours.predict([xa, xb]), theirs.predict([xa, xb], verbose=0),
                 1e-5, 1e-6)
    for m, opt in ((ours, lstmc.optimizers.Adam), (theirs, keras.optimizers.Adam)):
        m.compile(opt(learning_rate=0.02), "binary_crossentropy", metrics=["accuracy"])
    a = ours.fit([xa, xb], y, epochs=2, batch_size=8, shuffle=False, verbose=0).history
    b = theirs.fit([xa, xb], y, epochs=2, batch_size=8, shuffle=False, verbose=0).history
    assert_close("loss", a["loss"], b["loss"], 1e-5, 0)
    assert_close("accuracy", a["accuracy"], b["accuracy"], 1e-7, 1e-6)
    ours.save(tmp_path / "nested.lstmc")
    np.testing.assert_array_equal(load_model(tmp_path / "nested.lstmc").predict([xa, xb]),
                                  ours.predict([xa, xb]))


def _every_layer_graph(k):
    """A Keras graph with every layer lstmc reads: masks from two embeddings, states into
    a decoder, both attentions (with scores as an output), merges, LayerNormalization,
    TimeDistributed, RepeatVector, a shared Dense and a Bidirectional's states."""
    L_ = k.layers
    a = k.Input((None,), dtype="int32", name="src")
    b = k.Input((None,), dtype="int32", name="tgt")
    enc, h, c = L_.LSTM(5, return_sequences=True, return_state=True)(
        L_.Embedding(9, 4, mask_zero=True)(a))
    dec = L_.LSTM(5, return_sequences=True)(L_.Embedding(9, 4, mask_zero=True)(b),
                                            initial_state=[h, c])
    att, scores = L_.Attention(use_scale=True)([dec, enc], return_attention_scores=True)
    add_att = L_.AdditiveAttention()([dec, enc])
    mixed = L_.LayerNormalization()(L_.Concatenate()([dec, att, add_att]))
    out = L_.TimeDistributed(L_.Dense(3))(mixed)
    out = L_.Activation("softmax")(L_.Add()([out, L_.Multiply()([out, out])]))
    shared = L_.Dense(2, activation="tanh")
    bi = L_.Bidirectional(L_.GRU(2, return_state=True))(enc)
    return k.Model([a, b], [out, L_.Dot(axes=2)([dec, enc]), L_.RepeatVector(2)(h), scores,
                            bi[0], shared(bi[1]), shared(bi[2])])


def test_keras_functional_file_loads(tmp_path):
    """A Keras 3 .keras file of a functional graph (the ops Keras saves for its masks left
    out: lstmc's layers propagate masks by the same rules) predicts every output as Keras,
    and the loaded model trains."""
    keras = keras_or_skip()
    pytest.importorskip("h5py")
    model = _every_layer_graph(keras)
    model.save(tmp_path / "graph.keras")
    ours = load_model(tmp_path / "graph.keras")
    rng = np.random.default_rng(14)
    xa, xb = _ids(rng, 12, 6, 9), _ids(rng, 12, 5, 9, lo=1)
    for i, (a, b) in enumerate(zip(ours.predict([xa, xb]),
                                   model.predict([xa, xb], verbose=0))):
        assert_close(f"output {i}", a, b, 1e-5, 1e-6)
    ours.compile("adam", ["sparse_categorical_crossentropy"] + [None] * 6)
    history = ours.fit([xa, xb], [rng.integers(0, 3, (12, 5))] + [None] * 6, epochs=2,
                       verbose=0)
    assert np.isfinite(history.history["loss"]).all()


# ---- finite differences (float64) -----------------------------------------------------------


def _check_layer_grads(layer, xs, masks=None, listed=True, **options):
    """d sum(R * y) / d inputs and / d parameters against central differences."""
    rng = np.random.default_rng(0)
    run = (lambda: layer.forward(xs, masks, True, **options)) if listed else \
        (lambda: layer.forward(xs[0], None if masks is None else masks[0], True))
    y, _ = run()
    y = y[0] if isinstance(y, list) else y
    R = rng.standard_normal(y.shape)

    def f():
        out, _ = run()
        out = out[0] if isinstance(out, list) else out
        return float((out * R).sum())

    layer.zero_grad()
    f()
    dxs = layer.backward(R) if listed else [layer.backward(R)]
    for i, (x, dx) in enumerate(zip(xs, dxs)):
        assert_close(f"d input {i}", dx, numerical_grad(f, x), 1e-6, 1e-8)
    for name, p in layer.named_parameters():
        analytic = p.grad.copy()
        assert_close(f"d {name}", analytic, numerical_grad(f, p.data), 1e-6, 1e-8)


def _masks(rng, B, T):
    m = rng.random((B, T)) > 0.3
    m[:, 0] = True
    return m


@settings(max_examples=8, deadline=None)
@given(B=st.integers(1, 3), Tq=st.integers(1, 4), Tv=st.integers(1, 4), D=st.integers(1, 3),
       kind=st.sampled_from(["dot", "concat", "additive"]), use_scale=st.booleans(),
       key=st.booleans(), causal=st.booleans(), masked=st.booleans())
def test_attention_gradients_finite_differences(B, Tq, Tv, D, kind, use_scale, key, causal,
                                                masked):
    rng = np.random.default_rng(B * 100 + Tq * 10 + Tv)
    layer = (L.AdditiveAttention(use_scale=use_scale, dtype="float64") if kind == "additive"
             else L.Attention(use_scale=use_scale, score_mode=kind, dtype="float64"))
    xs = [rng.standard_normal((B, Tq, D)), rng.standard_normal((B, Tv, D))]
    if key:
        xs.append(rng.standard_normal((B, Tv, D)))
    masks = [_masks(rng, B, Tq), _masks(rng, B, Tv)] if masked else None
    layer.build([x.shape[1:] for x in xs])
    for p in layer.parameters():
        p.data[...] = rng.uniform(0.5, 1.5, p.shape)
    _check_layer_grads(layer, xs, masks, use_causal_mask=causal)


@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 4), F=st.integers(1, 4), n=st.integers(2, 3),
       kind=st.sampled_from(["add", "multiply", "concatenate", "concatenate1", "dot",
                             "dot_normalize"]), masked=st.booleans())
def test_merge_gradients_finite_differences(B, T, F, n, kind, masked):
    rng = np.random.default_rng(B * 100 + T * 10 + F)
    make = {"add": L.Add, "multiply": L.Multiply, "concatenate": L.Concatenate,
            "concatenate1": lambda dtype: L.Concatenate(axis=1, dtype=dtype),
            "dot": lambda dtype: L.Dot(axes=2, dtype=dtype),
            "dot_normalize": lambda dtype: L.Dot(axes=(1, 1), normalize=True, dtype=dtype)}
    layer = make[kind](dtype="float64")
    n = 2 if kind.startswith("dot") else n
    xs = [rng.standard_normal((B, T, F)) for _ in range(n)]
    masks = [_masks(rng, B, T) for _ in range(n)] if masked else None
    _check_layer_grads(layer, xs, masks)


@settings(max_examples=6, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 4), F=st.integers(1, 4),
       center=st.booleans(), scale=st.booleans())
def test_shaping_layers_finite_differences(B, T, F, center, scale):
    rng = np.random.default_rng(B * 100 + T * 10 + F)
    ln = L.LayerNormalization(center=center, scale=scale, dtype="float64")
    ln.build((T, F))
    for p in ln.parameters():
        p.data[...] = rng.standard_normal(p.shape)
    _check_layer_grads(ln, [rng.standard_normal((B, T, F))], listed=False)
    td = L.TimeDistributed(L.Dense(3, activation="tanh", dtype="float64"), dtype="float64")
    td.build((T, F))
    _check_layer_grads(td, [rng.standard_normal((B, T, F))], listed=False)
    _check_layer_grads(L.RepeatVector(T, dtype="float64"), [rng.standard_normal((B, F))],
                       listed=False)
    _check_layer_grads(L.Activation("softmax", dtype="float64"),
                       [rng.standard_normal((B, T, F))], listed=False)


def test_graph_gradients_finite_differences():
    """A whole graph in float64 — a shared LSTM called twice, return_state outputs feeding
    initial_state (of a GRU and of a Bidirectional GRU whose states are outputs too), fan-out
    into several merges, two outputs — against central differences of the loss for every
    parameter."""
    rng = np.random.default_rng(1)
    f64 = {"dtype": "float64"}
    a, b = L.Input((4, 3), dtype="float64"), L.Input((5, 3), dtype="float64")
    enc = L.LSTM(3, return_sequences=True, return_state=True, **f64)
    ea, h, c = enc(a)
    eb, _, _ = enc(b)                          # shared: called twice
    dec = L.GRU(3, return_sequences=True, **f64)(eb, initial_state=[h])
    att = L.AdditiveAttention(**f64)([dec, ea])
    mix = L.Concatenate(**f64)([dec, att, L.Multiply(**f64)([dec, att])])
    out1 = L.TimeDistributed(L.Dense(2, **f64), **f64)(L.LayerNormalization(**f64)(mix))
    bi, fh, bh = L.Bidirectional(L.GRU(3, return_state=True, **f64), merge_mode="mul",
                                 **f64)(eb, initial_state=[h, c])
    out2 = L.Dense(1, **f64)(L.Add(**f64)([h, c, bi, fh, L.Multiply(**f64)([bh, bh])]))
    model = Model([a, b], [out1, out2])
    model.compile("sgd", ["mse", "mse"], loss_weights=[1.0, 0.7])
    xa, xb = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 5, 3))
    ya, yb = rng.standard_normal((2, 5, 2)), rng.standard_normal((2, 1))

    def loss():
        outs, masks = model._forward([xa, xb], True)
        figures, _ = model._figures(outs, masks, [ya, yb], [])
        return figures.logs()["loss"]

    outs, masks = model._forward([xa, xb], True)
    _, douts = model._figures(outs, masks, [ya, yb], [])
    model.zero_grad()
    model._graph.backward(douts)
    for name, p in model.named_parameters():
        assert_close(name, p.grad.copy(), numerical_grad(loss, p.data), 1e-6, 1e-8)


def test_encoder_and_decoder_models_share_the_trained_layers():
    """Keras' seq2seq inference recipe: after training the full model, an encoder Model and
    a one-step decoder Model built from the same layers (new Inputs for the states) decode
    step by step to the full model's teacher-forced outputs."""
    V, E, U = 11, 5, 6
    x_src, x_tgt, y = _copy_task(32, V=V)
    x_tgt[:] = np.where(x_tgt == 0, 1, x_tgt)      # the decoder sees every step
    lstmc.manual_seed(6)
    src, tgt = L.Input(shape=(None,), dtype="int32"), L.Input(shape=(None,), dtype="int32")
    enc_lstm = L.LSTM(U, return_sequences=True, return_state=True)
    enc, h, c = enc_lstm(L.Embedding(V, E, mask_zero=True)(src))
    dec_emb = L.Embedding(V, E)
    dec_lstm = L.LSTM(U, return_sequences=True, return_state=True)
    att, concat = L.Attention(), L.Concatenate()
    head = L.Dense(V, activation="softmax")
    dec, _, _ = dec_lstm(dec_emb(tgt), initial_state=[h, c])
    full = Model([src, tgt], head(concat([dec, att([dec, enc])])))
    full.compile("adam", "sparse_categorical_crossentropy")
    full.fit([x_src, x_tgt], y, epochs=1, batch_size=8, verbose=0)
    expected = full.predict([x_src, x_tgt])

    encoder = Model(src, [enc, h, c])
    step_in, h_in, c_in = L.Input(shape=(1,), dtype="int32"), L.Input((U,)), L.Input((U,))
    enc_in = L.Input((None, U))
    d, h_out, c_out = dec_lstm(dec_emb(step_in), initial_state=[h_in, c_in])
    decoder = Model([step_in, enc_in, h_in, c_in],
                    [head(concat([d, att([d, enc_in])])), h_out, c_out])
    enc_seq, h_t, c_t = encoder.predict(x_src)
    steps = []
    for t in range(x_tgt.shape[1]):
        p, h_t, c_t = decoder.predict([x_tgt[:, t:t + 1], enc_seq, h_t, c_t])
        steps.append(p)
    # the full model masks the encoder's padding in the attention; the step model sees the
    # encoder outputs as a plain input: compare rows without source padding
    full_rows = (x_src > 0).all(axis=1)
    assert full_rows.any()
    assert_close("step by step", np.concatenate(steps, axis=1)[full_rows],
                 expected[full_rows], 1e-5, 1e-6)


def test_shared_layers_with_dropout_finite_differences():
    """Shared layers that draw dropout masks (an LSTM with dropout=, a Dropout layer), each
    called twice: backward replays each earlier call with its own draws, so the gradients
    equal central differences of the loss with the generator reseeded before every
    forward (the same masks each time)."""
    rng = np.random.default_rng(3)
    f64 = {"dtype": "float64"}
    a, b = L.Input((4, 3), dtype="float64"), L.Input((3, 3), dtype="float64")
    rnn = L.LSTM(3, dropout=0.4, return_sequences=True, **f64)
    drop = L.Dropout(0.5, **f64)
    dense = L.Dense(2, activation="tanh", **f64)
    ya = dense(drop(rnn(a)))
    yb = dense(drop(rnn(b)))
    out = L.Dense(1, **f64)(L.Concatenate(axis=1, **f64)([ya, yb]))
    model = Model([a, b], out)
    model.compile("sgd", "mse")
    xa, xb = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 3, 3))
    y = rng.standard_normal((2, 7, 1))

    def run():
        lstmc.manual_seed(5)
        outs, masks = model._forward([xa, xb], True)
        return model._figures(outs, masks, [y], [])

    _, douts = run()
    model.zero_grad()
    model._graph.backward(douts)
    for name, p in model.named_parameters():
        assert_close(name, p.grad.copy(), numerical_grad(lambda: run()[0].logs()["loss"],
                                                         p.data), 1e-6, 1e-8)


@settings(max_examples=6, deadline=None)
@given(B=st.integers(1, 4), Ts=st.integers(1, 6), Tt=st.integers(1, 5))
def test_seq2seq_shapes_match_keras(B, Ts, Tt):
    """The encoder-decoder on batches of any size and lengths (1 included; rows padded at
    either end): Keras' predictions."""
    keras = keras_or_skip()
    ours, theirs = _seq2seq_pair(keras)
    rng = np.random.default_rng(B * 100 + Ts * 10 + Tt)
    x_src, x_tgt = _ids(rng, B, Ts, 11, lo=1), _ids(rng, B, Tt, 11, lo=1)
    assert_close("predict", ours.predict([x_src, x_tgt]),
                 theirs.predict([x_src, x_tgt], verbose=0), 1e-5, 1e-6)


_PAIR = {}


def _seq2seq_pair(keras):
    if not _PAIR:
        lstmc.manual_seed(21)
        ours = Model(*_seq2seq(L, 11, 4, 5))
        theirs = keras.Model(*_seq2seq(keras.layers, 11, 4, 5))
        theirs.set_weights(ours.get_weights())
        _PAIR["models"] = ours, theirs
    return _PAIR["models"]


# ---- the model's API ---------------------------------------------------------------------------
def test_save_load_and_weights_round_trip(tmp_path):
    """save / load_model of a functional model: same predictions bit for bit, the optimizer
    state kept (training resumes identically); save_weights / load_weights."""
    V = 11
    x_src, x_tgt, y = _copy_task(V=V)
    lstmc.manual_seed(4)
    model = Model(*_seq2seq(L, V, 5, 6))
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit([x_src, x_tgt], y, epochs=1, batch_size=16, verbose=0)
    model.save(tmp_path / "m.lstmc")
    loaded = load_model(tmp_path / "m.lstmc")
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    np.testing.assert_array_equal(loaded.predict([x_src, x_tgt]),
                                  model.predict([x_src, x_tgt]))
    a = model.fit([x_src, x_tgt], y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    b = loaded.fit([x_src, x_tgt], y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert a.history == b.history
    model.save_weights(tmp_path / "w.lstmc")
    fresh = Model(*_seq2seq(L, V, 5, 6))
    fresh.load_weights(tmp_path / "w.lstmc")
    np.testing.assert_array_equal(fresh.predict([x_src, x_tgt]),
                                  model.predict([x_src, x_tgt]))


def test_summary_lists_connections(capsys):
    keras = keras_or_skip()
    model = Model(*_seq2seq(L, 11, 5, 6))
    model.summary()
    text = capsys.readouterr().out
    assert "Connected to" in text and "lstm_" in text
    theirs = keras.Model(*_seq2seq(keras.layers, 11, 5, 6))
    assert f"Total params: {theirs.count_params():,}" in text
    for layer in model.layers:
        assert f"{layer.name} ({type(layer).__name__})" in text


def test_graph_errors():
    a, b = L.Input((3,)), L.Input((3,))
    y = L.Dense(2)(a)
    with pytest.raises(ValueError, match="disconnected"):
        Model(b, y)
    with pytest.raises(ValueError, match="list of tensors"):
        L.Add()(a)
    with pytest.raises(ValueError, match="cannot be added"):
        L.Add()([a, L.Input((4,))])
    with pytest.raises(ValueError, match="initial_state"):
        L.LSTM(2)(L.Input((4, 3)), initial_state=[L.Input((2,))])
    with pytest.raises(ValueError, match="initial_state"):
        L.LSTM(2)(L.Input((4, 3)), initial_state=[L.Input((3,)), L.Input((2,))])
    with pytest.raises(TypeError, match="symbolic"):
        L.Concatenate()([a, np.zeros((1, 3))])
    model = Model([a, b], L.Add()([a, b]))
    with pytest.raises(ValueError, match="2 of them"):
        model.predict([np.zeros((1, 3))])
    with pytest.raises(ValueError, match="unknown names"):
        model.predict({"nope": np.zeros((1, 3))})
    with pytest.raises(ValueError, match="loss"):
        model.compile("sgd", ["mse", "mse"])


def test_quantized_model_and_what_it_refuses(tmp_path):
    """lstmc.quantize copies a functional model (int8 weights, predictions within
    quantization error); saving it or exporting a functional model to ONNX says it is not
    available instead of writing something else."""
    V = 11
    x_src, x_tgt, _ = _copy_task(V=V)
    lstmc.manual_seed(2)
    model = Model(*_seq2seq(L, V, 5, 6))
    q = lstmc.quantize(model, "int8")
    assert q.quantized == "int8" and model.quantized is None
    assert_close("int8", q.predict([x_src, x_tgt]), model.predict([x_src, x_tgt]), 0, 5e-3)
    with pytest.raises(ValueError, match="quantized"):
        q.save(tmp_path / "q.lstmc")
    pytest.importorskip("onnx")
    with pytest.raises(TypeError, match="functional"):
        lstmc.onnx.export(model, tmp_path / "m.onnx")


def test_sequential_takes_input_tensor():
    """Input() is a KerasTensor now; Sequential still starts with it, and a layer called
    on an array still runs."""
    model = Sequential([L.Input((4, 2)), L.LSTM(3), L.Dense(1)])
    assert model.built
    assert model.predict(np.zeros((2, 4, 2), np.float32)).shape == (2, 1)
    assert L.Input((4, 2)).shape == (None, 4, 2)
