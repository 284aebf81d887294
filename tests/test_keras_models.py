"""The Keras flavour's model: docs/spec.md §5's snippet, fit / evaluate / predict, losses and
optimizers against Keras' rules, callbacks, the progress bar, save / load_model."""
import os

import numpy as np
import pytest

import lstmc
from lstmc import io, losses
from lstmc.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lstmc.layers import GRU, LSTM, Bidirectional, Dense, Dropout, Embedding, Input, SimpleRNN
from lstmc.models import Sequential, load_model

from helpers import THREAD_TOL, assert_close, keras_or_skip, scale_of

os.environ.setdefault("KERAS_BACKEND", "torch")


def _sum_sign_data(n=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 10, 1)).astype(np.float32)
    return x, (x[:, :, 0].sum(axis=1) > 0).astype(np.float32)


def test_spec_keras_snippet_learns():
    """docs/spec.md §5's Keras example with only its import lines changed."""
    lstmc.manual_seed(0)
    x_train, y_train = _sum_sign_data()
    from lstmc.models import Sequential
    from lstmc.layers import LSTM, Dense
    model = Sequential()
    model.add(LSTM(units=50, input_shape=(10, 1)))
    model.add(Dense(units=1, activation='sigmoid'))
    model.compile(optimizer='adam', loss='binary_crossentropy', metrics=['accuracy'])
    history = model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    x_test, y_test = _sum_sign_data(256, seed=1)
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    assert acc > 0.9


def test_tagging_with_masks_learns_and_ignores_padding():
    """Embedding(mask_zero) -> Bidirectional(LSTM, return_sequences) -> Dense(softmax) on
    right-padded batches: tag each token with its parity; padding is neither trained nor
    scored."""
    lstmc.manual_seed(1)
    rng = np.random.default_rng(1)
    n, T = 600, 12
    x = rng.integers(1, 9, (n, T))
    lengths = rng.integers(3, T + 1, n)
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0
    y = x % 2
    model = Sequential([Embedding(9, 8, mask_zero=True),
                        Bidirectional(LSTM(16, return_sequences=True)),
                        Dense(2, activation="softmax")])
    model.compile(lstmc.optimizers.Adam(learning_rate=0.01), "sparse_categorical_crossentropy",
                  ["accuracy"])
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    _, acc = model.evaluate(x, y, verbose=0)
    assert acc > 0.9
    y_noise = y.copy()
    y_noise[x == 0] = 1 - y_noise[x == 0]    # labels on padding must not count
    assert model.evaluate(x, y_noise, verbose=0)[1] == pytest.approx(acc)


class _StopWhen(Callback):
    """Stops fit once `monitor` reaches `target`."""

    def __init__(self, monitor, target):
        self.monitor, self.target = monitor, target

    def on_epoch_end(self, epoch, logs=None):
        if logs[self.monitor] >= self.target:
            self.model.stop_training = True


def test_fit_learns_memory_over_50_steps():
    """The latch task: a marker token (1 or 2) starts each sequence, then random filler
    tokens (3..9), left-padded with 0 to T = 60; the label is the marker. Trained on lengths
    2..60 (the short ones show the LSTM what to keep), scored on lengths 50..60 only, where
    the answer has to be held across at least 49 filler steps. (Trained on lengths 50..60
    only, it stays at chance for 6+ epochs.)"""
    threads = lstmc.get_num_threads()
    lstmc.set_num_threads(1)            # one deterministic trajectory
    try:
        lstmc.manual_seed(1)
        rng = np.random.default_rng(1)
        T = 60

        def data(n, shortest):
            x = np.zeros((n, T), np.int64)
            y = rng.integers(0, 2, n)
            for i, L in enumerate(rng.integers(shortest, T + 1, n)):
                x[i, T - L:] = rng.integers(3, 10, L)
                x[i, T - L] = 1 + y[i]
            return x, y.astype(np.float32)

        x, y = data(3000, 2)
        x_long, y_long = data(500, 50)
        model = Sequential([Embedding(10, 8, mask_zero=True), LSTM(32),
                            Dense(1, activation="sigmoid")])
        model.compile(lstmc.optimizers.Adam(learning_rate=0.01), "binary_crossentropy",
                      ["accuracy"])
        assert model.evaluate(x_long, y_long, verbose=0)[1] < 0.7     # chance before
        history = model.fit(x, y, epochs=10, batch_size=32, verbose=0,
                            validation_data=(x_long, y_long),
                            callbacks=[_StopWhen("val_accuracy", 0.99)])
        assert history.history["val_accuracy"][-1] >= 0.99, history.history["val_accuracy"]
    finally:
        lstmc.set_num_threads(threads)


def test_fit_matches_keras_trajectory():
    """Same initial weights, same batches: the per-epoch losses of Keras' own fit."""
    keras = keras_or_skip()
    x, y = _sum_sign_data(96)
    for opt in ("adam", "sgd", "rmsprop"):
        lstmc.manual_seed(2)
        ours = Sequential([Input((10, 1)), GRU(6), Dense(1, activation="sigmoid")])
        ours.compile(optimizer=opt, loss="binary_crossentropy", metrics=["accuracy"])
        theirs = keras.Sequential([keras.Input((10, 1)), keras.layers.GRU(6),
                                   keras.layers.Dense(1, activation="sigmoid")])
        theirs.set_weights(ours.get_weights())
        theirs.compile(optimizer=opt, loss="binary_crossentropy", metrics=["accuracy"])
        a = ours.fit(x, y, epochs=2, shuffle=False, verbose=0).history
        b = theirs.fit(x, y, epochs=2, shuffle=False, verbose=0).history
        assert_close(f"{opt} loss", a["loss"], b["loss"], 1e-5, 0)
        assert_close(f"{opt} accuracy", a["accuracy"], b["accuracy"], 1e-7, 1e-6)


def test_masked_tagger_fit_matcheskeras_or_skip():
    """Masks through Embedding -> Bidirectional(return_sequences) -> Dense(softmax) and a
    masked sparse cross-entropy: Keras' own per-epoch loss and accuracy."""
    keras = keras_or_skip()
    rng = np.random.default_rng(8)
    n, T = 96, 9
    x = rng.integers(1, 9, (n, T))
    x[np.arange(T)[None, :] >= rng.integers(2, T + 1, n)[:, None]] = 0
    x[::3] = np.roll(x[::3], 3, axis=1)                  # some rows left-padded
    y = x % 3
    lstmc.manual_seed(8)
    ours = Sequential([Input((T,)), Embedding(9, 4, mask_zero=True),
                       Bidirectional(LSTM(5, return_sequences=True)),
                       Dense(3, activation="softmax")])
    ours.compile(lstmc.optimizers.Adam(learning_rate=0.01), "sparse_categorical_crossentropy",
                 ["accuracy"])
    theirs = keras.Sequential([keras.Input((T,)), keras.layers.Embedding(9, 4, mask_zero=True),
                               keras.layers.Bidirectional(keras.layers.LSTM(
                                   5, return_sequences=True)),
                               keras.layers.Dense(3, activation="softmax")])
    theirs.set_weights(ours.get_weights())
    theirs.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01),
                   loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    a = ours.fit(x, y, epochs=2, shuffle=False, verbose=0).history
    b = theirs.fit(x, y, epochs=2, shuffle=False, verbose=0).history
    assert_close("loss", a["loss"], b["loss"], 1e-5, 0)
    assert_close("accuracy", a["accuracy"], b["accuracy"], 1e-7, 1e-6)


@pytest.mark.parametrize("name", ["binary_crossentropy", "categorical_crossentropy",
                                  "sparse_categorical_crossentropy", "mse"])
def test_losses_match_keras(name):
    keras = keras_or_skip()
    rng = np.random.default_rng(3)
    p = rng.random((4, 5, 3)).astype(np.float32) * 0.98 + 0.01
    if name == "binary_crossentropy":
        t = (rng.random(p.shape) > 0.5).astype(np.float32)
    elif name == "sparse_categorical_crossentropy":
        t = rng.integers(0, 3, (4, 5))
    else:
        t = rng.random(p.shape).astype(np.float32)
        if name == "categorical_crossentropy":
            p = p / p.sum(-1, keepdims=True)
    ours = losses.get(name)(t, p)
    theirs = float(keras.ops.convert_to_numpy(keras.losses.get(name)(t, p)).mean())
    assert ours == pytest.approx(theirs, rel=1e-5)


@pytest.mark.parametrize("cls,kw", [("BinaryCrossentropy", {}),
                                    ("CategoricalCrossentropy", {}),
                                    ("CategoricalCrossentropy", {"label_smoothing": 0.1}),
                                    ("SparseCategoricalCrossentropy", {})])
def test_losses_from_logits_match_keras(cls, kw):
    """On logits the losses are lstmc.nn.loss's arithmetic: Keras' own from_logits values."""
    keras = keras_or_skip()
    rng = np.random.default_rng(13)
    z = (rng.standard_normal((4, 5, 3)) * 3).astype(np.float32)
    if cls == "BinaryCrossentropy":
        t = (rng.random(z.shape) > 0.5).astype(np.float32)
    elif cls == "SparseCategoricalCrossentropy":
        t = rng.integers(0, 3, (4, 5))
    else:
        t = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (4, 5))]
    ours = getattr(losses, cls)(from_logits=True, **kw)(t, z)
    theirs = getattr(keras.losses, cls)(from_logits=True, **kw)(t, z)
    assert ours == pytest.approx(float(keras.ops.convert_to_numpy(theirs)), rel=1e-5)


@pytest.mark.parametrize("name,act", [("binary_crossentropy", "sigmoid"),
                                      ("categorical_crossentropy", "softmax"),
                                      ("sparse_categorical_crossentropy", "softmax"),
                                      ("mse", "linear")])
def test_loss_gradients_finite_differences(name, act):
    """The gradient a loss hands back, on probabilities and (fused) on logits."""
    rng = np.random.default_rng(4)
    z = rng.standard_normal((3, 4))
    if name == "sparse_categorical_crossentropy":
        t = rng.integers(0, 4, 3)
    elif name == "categorical_crossentropy":
        t = np.eye(4)[rng.integers(0, 4, 3)]
    else:
        t = rng.random((3, 4))
    loss = losses.get(name)
    from lstmc.keras.layers import _ACTIVATIONS
    f = _ACTIVATIONS[act][0]
    for logits in ([False, True] if act != "linear" else [False]):
        inp = z if logits else f(z)
        _, g = loss.compute(t, inp, logits=logits)
        for idx in np.ndindex(inp.shape):
            e = np.zeros_like(inp)
            e[idx] = 1e-6
            fd = (loss.compute(t, inp + e, logits=logits)[0]
                  - loss.compute(t, inp - e, logits=logits)[0]) / 2e-6
            assert g[idx] == pytest.approx(fd, abs=1e-6, rel=1e-4)


def test_predict_evaluate_and_batches():
    lstmc.manual_seed(5)
    x, y = _sum_sign_data(70)
    model = Sequential([LSTM(4, input_shape=(10, 1)), Dropout(0.5), Dense(1, "sigmoid")])
    model.compile("sgd", "binary_crossentropy", ["accuracy", "mae"])
    p = model.predict(x, batch_size=16)
    assert p.shape == (70, 1)
    # dropout off: deterministic, up to the rounding of batches of other sizes (their BLAS
    # kernels and thread teams differ): docs/spec.md §7's thread bound
    bound = THREAD_TOL[np.float32] * scale_of(p)
    assert_close("predict, batches of 32 vs 16", model.predict(x), p, 0.0, bound)
    assert_close("call on 5 rows vs predict", model(x[:5]), p[:5], 0.0, bound)
    result = model.evaluate(x, y, verbose=0, return_dict=True)
    assert list(result) == ["loss", "accuracy", "mae"]
    acc = ((p[:, 0] > 0.5) == (y > 0.5)).mean()
    assert result["accuracy"] == pytest.approx(acc)
    assert result["mae"] == pytest.approx(np.abs(p[:, 0] - y).mean(), rel=1e-5)


def test_validation_split_and_history():
    x, y = _sum_sign_data(100)
    model = Sequential([SimpleRNN(3, input_shape=(10, 1)), Dense(1, "sigmoid")])
    model.compile("adam", "binary_crossentropy", ["accuracy"])
    h = model.fit(x, y, epochs=2, validation_split=0.2, verbose=0)
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert h.epoch == [0, 1] and h.params["steps"] == 3      # 80 samples / 32
    assert h.history["val_loss"][-1] == pytest.approx(model.evaluate(x[80:], y[80:],
                                                                     verbose=0)[0])


def test_progress_bar_lines(capsys):
    x, y = _sum_sign_data(64)
    model = Sequential([LSTM(3, input_shape=(10, 1)), Dense(1, "sigmoid")])
    model.compile("adam", "binary_crossentropy", ["accuracy"])
    model.fit(x, y, epochs=2, batch_size=16, verbose=1, validation_data=(x, y))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Epoch 1/2" and out[2] == "Epoch 2/2"
    for line in (out[1], out[3]):
        assert line.startswith("4/4 ") and "ms/step" in line
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert f" - {key}: " in line


def test_early_stopping_restores_best_weights():
    x, y = _sum_sign_data(64)
    model = Sequential([LSTM(3, input_shape=(10, 1)), Dense(1, "sigmoid")])
    model.compile(lstmc.optimizers.SGD(learning_rate=0.0), "binary_crossentropy")
    seen = []

    class Record(Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    stop = EarlyStopping(monitor="loss", patience=2)
    # Unshuffled, every epoch runs the same batches in the same order on unchanged weights
    # (lr 0), so its loss is the same number on every CPU; shuffled batches would sum the
    # same per-sample losses in another grouping, which differs in the last bits by order.
    model.fit(x, y, epochs=20, verbose=0, shuffle=False, callbacks=[stop, Record()])
    assert seen == [0, 1, 2] and stop.stopped_epoch == 2   # lr 0: no improvement after epoch 0

    model.compile(lstmc.optimizers.SGD(learning_rate=5.0), "binary_crossentropy")
    best = []

    class Keep(Callback):
        def on_epoch_end(self, epoch, logs=None):
            best.append((logs["loss"], model.get_weights()))

    stop = EarlyStopping(monitor="loss", patience=1, restore_best_weights=True)
    model.fit(x, y, epochs=8, verbose=0, callbacks=[Keep(), stop])
    i = int(np.argmin([b[0] for b in best]))
    # weights of the best epoch's end (the callbacks run in order: Keep saw them first)
    for w, v in zip(best[i][1], model.get_weights()):
        np.testing.assert_array_equal(w, v)


def test_model_checkpoint(tmp_path):
    x, y = _sum_sign_data(64)
    model = Sequential([LSTM(3, input_shape=(10, 1)), Dense(1, "sigmoid")])
    model.compile("adam", "binary_crossentropy")
    pattern = str(tmp_path / "m-{epoch:02d}-{loss:.3f}.lstmc")
    model.fit(x, y, epochs=2, verbose=0, callbacks=[ModelCheckpoint(pattern, monitor="loss")])
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and files[0].startswith("m-01-")
    best = tmp_path / "best.lstmc"
    model.fit(x, y, epochs=2, verbose=0, callbacks=[
        ModelCheckpoint(str(best), monitor="loss", save_best_only=True)])
    np.testing.assert_array_equal(load_model(best).predict(x), model.predict(x))


# ---- saving -------------------------------------------------------------------------------
def _trained_model():
    lstmc.manual_seed(6)
    rng = np.random.default_rng(6)
    x = rng.integers(0, 20, (40, 9))
    y = rng.integers(0, 3, 40)
    model = Sequential([Embedding(20, 5, mask_zero=True),
                        Bidirectional(GRU(4, return_sequences=True), merge_mode="sum"),
                        LSTM(6), Dropout(0.2), Dense(3, activation="softmax")])
    model.compile(lstmc.optimizers.RMSprop(learning_rate=0.01, momentum=0.5),
                  "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return model, x, y


@pytest.mark.parametrize("name", ["model.lstmc", "model.keras", "model.h5"])
def test_save_load_bit_identical_and_resumes(tmp_path, name):
    """Whatever the name (a Keras user writes model.keras), save writes lstmc's format and
    load_model reads it back as lstmc's, not as a Keras file."""
    model, x, y = _trained_model()
    path = tmp_path / name
    model.save(path)
    loaded = load_model(path)
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    # the optimizer state came along: one more identical step each
    lstmc.manual_seed(7)
    a = model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0).history["loss"]
    lstmc.manual_seed(7)
    b = loaded.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0).history["loss"]
    assert a == b
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_save_weights_and_uncompiled(tmp_path):
    model = Sequential([Input((5, 2)), LSTM(3), Dense(2)])
    model.save(tmp_path / "a.lstmc")
    loaded = load_model(tmp_path / "a.lstmc")
    x = np.ones((2, 5, 2), np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert not loaded.compiled
    model.save_weights(tmp_path / "w.lstmc")
    other = Sequential([Input((5, 2)), LSTM(3), Dense(2)])
    other.load_weights(tmp_path / "w.lstmc")
    np.testing.assert_array_equal(other.predict(x), model.predict(x))


def test_bad_files_fail_cleanly(tmp_path):
    model, x, _ = _trained_model()
    path = tmp_path / "model.lstmc"
    model.save(path)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 5):
        bad = tmp_path / f"cut{cut}.lstmc"
        bad.write_bytes(data[:cut])
        with pytest.raises(io.FormatError):
            load_model(bad)
    flipped = bytearray(data)
    flipped[data.index(b"\x93NUMPY") + 200] ^= 0xFF      # inside the first weight array
    (tmp_path / "flip.lstmc").write_bytes(bytes(flipped))
    with pytest.raises(io.FormatError):
        load_model(tmp_path / "flip.lstmc")
    (tmp_path / "junk.lstmc").write_bytes(b"not a model at all")
    with pytest.raises(io.FormatError):
        load_model(tmp_path / "junk.lstmc")
    lstmc.save({"a": np.zeros(3)}, tmp_path / "other.lstmc")
    with pytest.raises(io.FormatError, match="expected"):
        load_model(tmp_path / "other.lstmc")
    model.save_weights(tmp_path / "w.lstmc")
    with pytest.raises(io.FormatError):
        load_model(tmp_path / "w.lstmc")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.lstmc")


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    model, x, _ = _trained_model()
    path = tmp_path / "model.lstmc"
    model.save(path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", broken)
    with pytest.raises(OSError):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.lstmc"]


# ---- errors -------------------------------------------------------------------------------
def test_model_errors():
    model = Sequential([LSTM(3, input_shape=(10, 1)), Dense(1, "sigmoid")])
    x, y = _sum_sign_data(8)
    with pytest.raises(RuntimeError, match="compile"):
        model.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        model.compile("adamax", "mse")
    with pytest.raises(ValueError, match="loss must be one of"):
        model.compile("adam", "hinge")
    model.compile("adam", "binary_crossentropy", ["accuracy"])
    with pytest.raises(ValueError, match="same number of samples"):
        model.fit(x, y[:-1], verbose=0)
    with pytest.raises(ValueError, match=r"y_true must have the output's shape \(8, 1\)"):
        model.fit(x, np.zeros((8, 2)), verbose=0)
    with pytest.raises(ValueError, match=r"input must have shape \(batch,\) \+ \(T, 1\)|"
                                         r"input must have shape"):
        model.predict(np.zeros((2, 10, 3), np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(x, y, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="returns its states"):
        Sequential([LSTM(3, return_state=True), Dense(1)])
    with pytest.raises(TypeError, match="lstmc.layers"):
        Sequential([lstmc.nn.Linear(2, 3)])


def test_summary_counts(capsys):
    model = Sequential([Embedding(100, 8, input_shape=(20,)), Bidirectional(LSTM(16)),
                        Dense(1, activation="sigmoid")])
    model.summary()
    out = capsys.readouterr().out
    assert "(None, 20, 8)" in out and "(None, 32)" in out
    total = 100 * 8 + 2 * 4 * (16 * (8 + 16) + 16) + 33
    assert f"Total params: {total:,}" in out


# ---- behaviours a Keras user relies on ----------------------------------------------------
def test_bidirectional_leaves_the_given_layer_alone():
    x = np.random.default_rng(9).standard_normal((6, 5, 2)).astype(np.float32)
    lstm = LSTM(3)
    before = lstm(x)                                   # built, used on its own
    wrapped = Bidirectional(lstm)
    assert wrapped(x).shape == (6, 6)
    np.testing.assert_array_equal(lstm(x), before)    # untouched
    with pytest.raises(ValueError, match="go_backwards"):
        Bidirectional(LSTM(3, go_backwards=True))


def test_predict_with_return_state_gives_one_array_per_output():
    x = np.random.default_rng(10).standard_normal((5, 4, 2)).astype(np.float32)
    model = Sequential([Input((4, 2)), LSTM(3, return_state=True)])
    out, h, c = model.predict(x, batch_size=2)
    assert out.shape == h.shape == c.shape == (5, 3)
    np.testing.assert_array_equal(out, h)
    with pytest.raises(ValueError, match="returns its states"):
        Sequential([Bidirectional(LSTM(3, return_state=True)), Dense(1)])


def _drive_early_stopping(stop, values, model=None):
    """Feeds `values` as val_loss, one epoch each, to `stop` watching `model` (lstmc's or
    Keras'; a 1x1 Dense whose weight records the epoch); returns (the epoch whose weight the
    model ends with, stopped_epoch)."""
    if model is None:
        model = Sequential([Input((1,)), Dense(1, use_bias=False)])
    stop.set_model(model)
    stop.on_train_begin()
    for epoch, v in enumerate(values):
        model.set_weights([np.full((1, 1), epoch, np.float32)])
        stop.on_epoch_end(epoch, {"val_loss": v})
        if model.stop_training:
            break
    stop.on_train_end()
    return int(model.get_weights()[0][0, 0]), stop.stopped_epoch


def test_early_stopping_followskeras_or_skip():
    losses = [1.0, 0.9, 0.95, 0.97, 0.99, 1.2]
    # restored at the end of training even without an early stop
    assert _drive_early_stopping(EarlyStopping(patience=10, restore_best_weights=True),
                                 losses) == (1, 0)
    # an improvement that does not beat the baseline does not reset the patience count
    assert _drive_early_stopping(EarlyStopping(patience=2, baseline=0.5,
                                               restore_best_weights=True), losses) == (1, 2)
    assert _drive_early_stopping(EarlyStopping(patience=1), losses) == (2, 2)   # no restore


def test_early_stopping_matcheskeras_or_skip():
    keras = keras_or_skip()
    losses = [1.0, 0.9, 0.95, 0.97, 0.99, 1.2]
    for kw in (dict(patience=10, restore_best_weights=True),
               dict(patience=2, baseline=0.5, restore_best_weights=True),
               dict(patience=1, min_delta=0.05), dict(patience=0)):
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
        model.compile(loss="mse")
        expected = _drive_early_stopping(keras.callbacks.EarlyStopping(**kw), losses, model)
        assert _drive_early_stopping(EarlyStopping(**kw), losses) == expected, kw


def test_saved_before_built_loads(tmp_path):
    model = Sequential([Embedding(10, 3), LSTM(2), Dense(1)])
    model.compile("adam", "mse")
    model.save(tmp_path / "m.lstmc")
    loaded = load_model(tmp_path / "m.lstmc")
    x = np.array([[1, 2, 3]])
    loaded.fit(x, np.zeros(1), verbose=0)
    assert loaded.predict(x).shape == (1, 1)


def test_train_on_batch_returns_loss_and_metrics():
    x, y = _sum_sign_data(16)
    model = Sequential([LSTM(3, input_shape=(10, 1)), Dense(1, "sigmoid")])
    model.compile("adam", "binary_crossentropy", ["accuracy"])
    loss, acc = model.train_on_batch(x, y)
    assert isinstance(loss, float) and 0 <= acc <= 1
    model.compile("adam", "binary_crossentropy")
    assert isinstance(model.train_on_batch(x, y), float)


def test_accuracy_is_chosen_from_shapes_askeras_or_skip():
    from lstmc.keras.losses import _binary_accuracy, _categorical_accuracy, \
        _sparse_categorical_accuracy, metric
    assert metric("accuracy", (8,), (8, 1))[1] is _binary_accuracy
    assert metric("accuracy", (8,), (8, 3))[1] is _sparse_categorical_accuracy
    assert metric("accuracy", (8, 1), (8, 3))[1] is _sparse_categorical_accuracy
    assert metric("accuracy", (8, 3), (8, 3))[1] is _categorical_accuracy   # multi-label too


def test_fit_argument_errors_and_initial_state():
    x, y = _sum_sign_data(8)
    model = Sequential([LSTM(3, input_shape=(10, 1)), Dense(1, "sigmoid")])
    model.compile("adam", "binary_crossentropy")
    with pytest.raises(ValueError, match="validation_data must be a pair"):
        model.fit(x, y, validation_data=(x, y, np.ones(8)), verbose=0)
    layer = LSTM(3)
    h, c = np.ones((8, 3), np.float32), np.zeros((8, 3), np.float32)
    a, b = layer(x, initial_state=[h, c]), layer(x)
    assert a.shape == (8, 3) and not np.allclose(a, b)


# ------------------------------------------------------------------------------------------
# TerminateOnNaN: the batch whose loss goes NaN is the last one, as in Keras


def _nan_at_batch_2():
    x, y = _sum_sign_data(64)
    y = y[:, None].copy()
    y[20] = np.nan   # batch_size 8, no shuffling: batch 2
    return x, y


def _fit_until_nan(sequential, layers, terminate, recorder_base, raise_error=False):
    seen = {"batches": [], "epochs": []}

    class Recorder(recorder_base):
        def on_train_batch_end(self, batch, logs=None):
            seen["batches"].append(batch)

        def on_epoch_end(self, epoch, logs=None):
            seen["epochs"].append(epoch)

    model = sequential([layers.Input((10, 1)), layers.LSTM(4), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = _nan_at_batch_2()
    history = model.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0,
                        callbacks=[Recorder(), terminate(raise_error=raise_error)])
    return history, seen


def test_terminate_on_nan_matches_keras(capsys):
    keras = keras_or_skip()
    from lstmc import layers
    from lstmc.callbacks import TerminateOnNaN
    lstmc.manual_seed(0)
    history, seen = _fit_until_nan(Sequential, layers, TerminateOnNaN, Callback)
    ours = capsys.readouterr().out
    k_history, k_seen = _fit_until_nan(keras.Sequential, keras.layers,
                                       keras.callbacks.TerminateOnNaN, keras.callbacks.Callback)
    theirs = capsys.readouterr().out
    assert seen == k_seen == {"batches": [0, 1, 2], "epochs": [0]}
    assert history.epoch == k_history.epoch == [0]
    assert np.isnan(history.history["loss"][0]) and np.isnan(k_history.history["loss"][0])
    assert ours.strip() == theirs.strip() == "Batch 2: Invalid loss, terminating training"


def test_terminate_on_nan_raise_error_matcheskeras_or_skip():
    keras = keras_or_skip()
    from lstmc import layers
    from lstmc.callbacks import TerminateOnNaN
    messages = []
    for args in ((Sequential, layers, TerminateOnNaN, Callback),
                 (keras.Sequential, keras.layers, keras.callbacks.TerminateOnNaN,
                  keras.callbacks.Callback)):
        with pytest.raises(RuntimeError, match="NaN or Inf loss encountered at batch 2") as e:
            _fit_until_nan(*args, raise_error=True)
        messages.append(str(e.value).split("Loss value")[0])
    assert messages[0] == messages[1]


def test_terminate_on_nan_leaves_finite_training_alone():
    from lstmc import layers
    from lstmc.callbacks import TerminateOnNaN
    x, y = _sum_sign_data(64)
    model = Sequential([layers.Input((10, 1)), layers.LSTM(4), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[TerminateOnNaN()])
    assert history.epoch == [0, 1] and not model.stop_training
