"""Keras model files read without Keras (lstmc.keras.files): Keras 3 `.keras` and legacy
`.h5` files of the README's models and more, predictions against Keras' own; a hand-made
Keras 2 file; damaged and hostile files raise clear errors (and a fuzz of the reader)."""
import io as bytes_io
import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

os.environ.setdefault("KERAS_BACKEND", "torch")
h5py = pytest.importorskip("h5py")

from lstmc import io  # noqa: E402
from lstmc.keras.files import UnsupportedModelError  # noqa: E402
from lstmc.models import load_model  # noqa: E402
from lstmc.keras import layers as L  # noqa: E402

from helpers import assert_close, keras_or_skip, scale_of  # noqa: E402

V, T, B = 12, 7, 5


# ---- models, built with Keras ------------------------------------------------------------
def _readme_lstm(k):
    return k.Sequential([k.Input((10, 1)), k.layers.LSTM(50),
                         k.layers.Dense(1, activation="sigmoid")])


def _readme_tagger(k):
    return k.Sequential([k.Input((None,), dtype="int32"),
                         k.layers.Embedding(V, 8, mask_zero=True),
                         k.layers.Bidirectional(k.layers.LSTM(6, return_sequences=True)),
                         k.layers.GRU(5), k.layers.Dropout(0.3),
                         k.layers.Dense(3, activation="softmax")])


def _simple_relu(k):
    return k.Sequential([k.Input((T, 3)), k.layers.SimpleRNN(4, activation="relu"),
                         k.layers.Dense(2)])


def _gru_reset_before(k):
    return k.Sequential([k.Input((T, 3)), k.layers.GRU(5, reset_after=False,
                                                      return_sequences=True)])


def _backwards(k):
    return k.Sequential([k.Input((T, 3)), k.layers.LSTM(4, go_backwards=True,
                                                        return_sequences=True),
                         k.layers.GRU(3, go_backwards=True)])


def _merge_modes(k):
    return k.Sequential([k.Input((T, 3)),
                         k.layers.Bidirectional(k.layers.GRU(4, return_sequences=True),
                                                merge_mode="sum"),
                         k.layers.Bidirectional(k.layers.SimpleRNN(4, return_sequences=True),
                                                merge_mode="ave"),
                         k.layers.Bidirectional(k.layers.LSTM(3), merge_mode="mul")])


def _no_bias(k):
    return k.Sequential([k.Input((T, 3)), k.layers.LSTM(4, use_bias=False,
                                                        return_sequences=True),
                         k.layers.GRU(4, use_bias=False), k.layers.Dense(2, use_bias=False)])


def _stacked(k):
    return k.Sequential([k.Input((None, 3)), k.layers.LSTM(5, return_sequences=True,
                                                           dropout=0.3),
                         k.layers.LSTM(5, return_sequences=True), k.layers.LSTM(4),
                         k.layers.Dense(2, activation="tanh")])


def _masked_gru(k):
    return k.Sequential([k.Input((None,), dtype="int32"),
                         k.layers.Embedding(V, 6, mask_zero=True),
                         k.layers.GRU(5, return_sequences=True),
                         k.layers.Bidirectional(k.layers.SimpleRNN(3), merge_mode="sum"),
                         k.layers.Dense(2, activation="relu")])


def _functional_chain(k):
    x = i = k.Input((None, 3))
    x = k.layers.LSTM(4, return_sequences=True)(x)
    x = k.layers.Dense(2, activation="sigmoid")(x)
    return k.Model(i, x)


def _recurrent_dropout(k):
    return k.Sequential([k.Input((T, 3)), k.layers.LSTM(4, recurrent_dropout=0.2),
                         k.layers.Dense(1)])


MODELS = {f.__name__[1:]: f for f in (
    _readme_lstm, _readme_tagger, _simple_relu, _gru_reset_before, _backwards, _merge_modes,
    _no_bias, _stacked, _masked_gru, _functional_chain, _recurrent_dropout)}
TOKENS = {"readme_tagger", "masked_gru"}


def _randomise(model, seed):
    """Weights of scale ~0.5 everywhere, biases included (Keras initialises those to 0)."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(-0.6, 0.6, w.shape).astype(w.dtype)
                       for w in model.get_weights()])


def _inputs(name, model, seed):
    rng = np.random.default_rng(seed)
    if name in TOKENS:
        ids = rng.integers(1, V, (B, T))
        ids[0, 4:] = 0             # right-padded
        ids[1, :2] = 0             # left-padded
        ids[2, 3] = 0              # a hole
        return ids.astype(np.int32)
    shape = model.inputs[0].shape
    return rng.standard_normal((B, shape[1] or T, shape[2])).astype(np.float32)


def _save(model, path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)


def _check_same(actual, expected):
    assert_close("predict", actual, expected, rtol=1e-5, atol=1e-6 * scale_of(expected))


@pytest.mark.parametrize("ext", [".keras", ".h5"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_predictions_match_keras(tmp_path, name, ext):
    k = keras_or_skip()
    model = MODELS[name](k)
    _randomise(model, seed=len(name))
    x = _inputs(name, model, seed=1)
    path = tmp_path / f"m{ext}"
    _save(model, path)
    loaded = load_model(path)
    _check_same(loaded.predict(x), np.asarray(model.predict(x, verbose=0)))


def test_training_only_options_load_for_inference_and_refuse_training(tmp_path):
    k = keras_or_skip()
    path = tmp_path / "m.keras"
    model = k.Sequential([k.Input((T, 3)),
                          k.layers.LSTM(4, kernel_regularizer=k.regularizers.L2(0.01)),
                          k.layers.Dense(1)])
    _save(model, path)
    model = load_model(path)
    model.compile("adam", "mse")
    x = np.zeros((4, T, 3), np.float32)
    with pytest.raises(ValueError, match="kernel_regularizer"):
        model.fit(x, np.zeros((4, 1), np.float32), verbose=0)


def test_recurrent_dropout_loads_and_trains(tmp_path):
    """recurrent_dropout is the layers' own now: it round-trips through the file, leaves
    predict alone and acts in fit."""
    k = keras_or_skip()
    path = tmp_path / "m.keras"
    keras_model = _recurrent_dropout(k)
    _save(keras_model, path)
    model = load_model(path)
    lstm = [l for l in model.layers if isinstance(l, L.LSTM)][0]
    assert lstm.recurrent_dropout == pytest.approx(0.2)
    x = np.random.default_rng(0).standard_normal((4, T, 3)).astype(np.float32)
    _check_same(model.predict(x), np.asarray(keras_model.predict(x, verbose=0)))
    model.compile("adam", "mse")
    model.fit(x, np.zeros((4, 1), np.float32), epochs=1, verbose=0)


# ---- legacy files: Keras 2 / tf.keras's layout, written by hand --------------------------
def _keras2_file(path, layers, weights, version="2.15.0", functional=False):
    """An .h5 file as Keras 2 writes it: model_config JSON attribute and
    model_weights/<layer>/<layer>/<cell>/kernel:0 datasets listed in weight_names; with
    `functional`, the layers as a Functional chain in Keras 2's node format."""
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}
    if functional:
        names = [l["config"]["name"] for l in layers]
        layers = [{**l, "name": n, "inbound_nodes": [[[p, 0, 0, {}]]] if p else []}
                  for l, n, p in zip(layers, names, [None] + names)]
        config = {"class_name": "Functional", "config": {
            "name": "model", "layers": layers, "input_layers": [[names[0], 0, 0]],
            "output_layers": [[names[-1], 0, 0]]}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = version
        f.attrs["backend"] = "tensorflow"
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [l["config"]["name"].encode() for l in layers]
        for layer in layers:
            name = layer["config"]["name"]
            g = mw.create_group(name)
            names = [f"{name}/{w}:0" for w, _ in weights.get(name, [])]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n, (_, value) in zip(names, weights.get(name, [])):
                g.create_dataset(n, data=value)


def _keras2_lstm_layers(recurrent_activation="sigmoid"):
    lstm = {"name": "lstm", "trainable": True, "dtype": "float32", "return_sequences": False,
            "return_state": False, "go_backwards": False, "stateful": False,
            "unroll": False, "time_major": False, "units": 4, "activation": "tanh",
            "recurrent_activation": recurrent_activation, "use_bias": True,
            "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
            "recurrent_initializer": {"class_name": "Orthogonal",
                                      "config": {"gain": 1.0, "seed": None}},
            "bias_initializer": {"class_name": "Zeros", "config": {}},
            "unit_forget_bias": True, "kernel_regularizer": None,
            "recurrent_regularizer": None, "bias_regularizer": None,
            "activity_regularizer": None, "kernel_constraint": None,
            "recurrent_constraint": None, "bias_constraint": None, "dropout": 0.0,
            "recurrent_dropout": 0.0, "implementation": 2}
    dense = {"name": "dense", "trainable": True, "dtype": "float32", "units": 2,
             "activation": "sigmoid", "use_bias": True}
    return [{"class_name": "InputLayer",
             "config": {"batch_input_shape": [None, T, 3], "dtype": "float32",
                        "sparse": False, "ragged": False, "name": "lstm_input"}},
            {"class_name": "LSTM", "config": lstm}, {"class_name": "Dense", "config": dense}]


@pytest.mark.parametrize("functional", [False, True])
def test_keras2_h5_layout(tmp_path, functional):
    k = keras_or_skip()
    ref = k.Sequential([k.Input((T, 3)), k.layers.LSTM(4), k.layers.Dense(2,
                                                                         activation="sigmoid")])
    _randomise(ref, seed=3)
    w = ref.get_weights()
    path = tmp_path / "keras2.h5"
    _keras2_file(path, _keras2_lstm_layers(), {
        "lstm": [("lstm_cell/kernel", w[0]), ("lstm_cell/recurrent_kernel", w[1]),
                 ("lstm_cell/bias", w[2])],
        "dense": [("kernel", w[3]), ("bias", w[4])]}, functional=functional)
    x = np.random.default_rng(0).standard_normal((B, T, 3)).astype(np.float32)
    _check_same(load_model(path).predict(x), np.asarray(ref.predict(x, verbose=0)))


def test_keras2_h5_bidirectional_embedding_without_input_layer(tmp_path):
    """Keras 2 before InputLayer entries: the first layer carries batch_input_shape; a
    Bidirectional without backward_layer; a GRU of Keras 2's reset_after=True."""
    k = keras_or_skip()
    ref = _masked_gru(k)
    _randomise(ref, seed=5)
    w = ref.get_weights()
    rnn = {"trainable": True, "dtype": "float32", "return_state": False,
           "go_backwards": False, "stateful": False, "unroll": False, "time_major": False,
           "activation": "tanh", "use_bias": True, "dropout": 0.0, "recurrent_dropout": 0.0,
           "implementation": 2}
    layers = [
        {"class_name": "Embedding", "config": {
            "name": "embedding", "trainable": True, "batch_input_shape": [None, None],
            "dtype": "float32", "input_dim": V, "output_dim": 6, "mask_zero": True,
            "embeddings_regularizer": None, "activity_regularizer": None,
            "embeddings_constraint": None, "input_length": None}},
        {"class_name": "GRU", "config": {**rnn, "name": "gru", "units": 5,
                                         "return_sequences": True, "reset_after": True,
                                         "recurrent_activation": "sigmoid"}},
        {"class_name": "Bidirectional", "config": {
            "name": "bidirectional", "trainable": True, "dtype": "float32",
            "merge_mode": "sum", "layer": {"class_name": "SimpleRNN", "config": {
                **rnn, "name": "simple_rnn", "units": 3, "return_sequences": False}}}},
        {"class_name": "Dense", "config": {"name": "dense", "trainable": True,
                                           "dtype": "float32", "units": 2,
                                           "activation": "relu", "use_bias": True}}]
    path = tmp_path / "keras2.h5"
    cell = lambda prefix: [f"{prefix}/kernel", f"{prefix}/recurrent_kernel", f"{prefix}/bias"]
    names = {"embedding": ["embeddings"], "gru": cell("gru_cell"),
             "bidirectional": cell("forward_simple_rnn/simple_rnn_cell")
             + cell("backward_simple_rnn/simple_rnn_cell"),
             "dense": ["kernel", "bias"]}
    it = iter(w)
    _keras2_file(path, layers, {n: [(p, next(it)) for p in ps] for n, ps in names.items()})
    x = _inputs("masked_gru", ref, seed=2)
    _check_same(load_model(path).predict(x), np.asarray(ref.predict(x, verbose=0)))


def test_hard_sigmoid_named_with_each_versions_definition(tmp_path):
    path = tmp_path / "keras2.h5"
    rng = np.random.default_rng(0)
    _keras2_file(path, _keras2_lstm_layers("hard_sigmoid"), {
        "lstm": [("lstm_cell/kernel", rng.random((3, 16))),
                 ("lstm_cell/recurrent_kernel", rng.random((4, 16))),
                 ("lstm_cell/bias", rng.random(16))],
        "dense": [("kernel", rng.random((4, 2))), ("bias", rng.random(2))]})
    with pytest.raises(UnsupportedModelError,
                       match=r"'lstm'.*recurrent_activation='hard_sigmoid' \(Keras 2: clip"):
        load_model(path)
    k = keras_or_skip()
    path3 = tmp_path / "m.keras"
    _save(k.Sequential([k.Input((T, 3)), k.layers.GRU(3, recurrent_activation="hard_sigmoid")]),
          path3)
    with pytest.raises(UnsupportedModelError, match=r"recurrent_activation='hard_sigmoid' "
                                                    r"\(Keras 3: relu6"):
        load_model(path3)


@pytest.mark.parametrize("build, match", [
    (lambda k: [k.layers.Conv1D(2, 3)], "Conv1D"),
    (lambda k: [k.layers.LSTM(3, activation="relu")], "activation"),
    (lambda k: [k.layers.Dense(2, activation="gelu")], "gelu"),
    (lambda k: [k.layers.Dense(2, kernel_regularizer="l2"), k.layers.LayerNormalization()],
     "LayerNormalization"),
])
def test_unsupported_layers_and_options_are_named(tmp_path, build, match):
    k = keras_or_skip()
    path = tmp_path / "m.keras"
    _save(k.Sequential([k.Input((T, 3))] + build(k)), path)
    with pytest.raises(UnsupportedModelError, match=match):
        load_model(path)


@pytest.mark.parametrize("suffix", ["keras", "h5"])
def test_branching_functional_model_loads(tmp_path, suffix):
    """A Functional graph that is not a chain loads as an lstmc.models.Model (.keras, and
    Keras 3's legacy .h5) and predicts as Keras does; a layer class lstmc lacks is named."""
    k = keras_or_skip()
    i = k.Input((T, 3))
    a, b = k.layers.LSTM(4)(i), k.layers.GRU(4)(i)
    model = k.Model(i, k.layers.Add()([a, b]))
    path = tmp_path / f"m.{suffix}"
    _save(model, path)
    x = np.random.default_rng(0).standard_normal((5, T, 3)).astype(np.float32)
    _check_same(load_model(path).predict(x), model.predict(x, verbose=0))
    _save(k.Model(i, k.layers.Subtract()([a, b])), tmp_path / "s.keras")
    with pytest.raises(UnsupportedModelError, match="Subtract"):
        load_model(tmp_path / "s.keras")


# ---- dependencies --------------------------------------------------------------------------
def test_import_lstmc_does_not_import_h5py():
    code = "import sys, lstmc, lstmc.models; print('h5py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_missing_h5py_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"lstmc\[keras\]"):
        load_model(tmp_path / "m.keras")


# ---- damaged and hostile files ---------------------------------------------------------------
@pytest.fixture(scope="module")
def small_keras(tmp_path_factory):
    k = keras_or_skip()
    path = tmp_path_factory.mktemp("keras") / "small.keras"
    _save(k.Sequential([k.Input((None,), dtype="int32"), k.layers.Embedding(V, 3, mask_zero=True),
                        k.layers.LSTM(2), k.layers.Dense(1)]), path)
    return path.read_bytes()


def _members(data):
    with zipfile.ZipFile(bytes_io.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist()}


def _zip(members):
    buf = bytes_io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, v in members.items():
            z.writestr(n, v)
    return buf.getvalue()


def _edit_weights(data, edit):
    """The archive with model.weights.h5 changed by edit(h5py.File)."""
    members = _members(data)
    buf = bytes_io.BytesIO(members["model.weights.h5"])
    with h5py.File(buf, "r+") as f:
        edit(f)
    members["model.weights.h5"] = buf.getvalue()
    return _zip(members)


def _replace(f, name, value, **kw):
    del f[name]
    f.create_dataset(name, data=value, **kw)


def _edit_config(data, edit):
    members = _members(data)
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    return _zip(members)


def _lstm_config(c):
    return c["config"]["layers"][2]["config"]


def _set(d, **kw):
    d.update(kw)


BAD = {
    "truncated": (lambda d: d[:len(d) // 2], io.FormatError, "small"),
    "config not JSON": (lambda d: _zip({**_members(d), "config.json": b"{not json"}),
                        io.FormatError, "config.json is not JSON"),
    "weights missing": (lambda d: _zip({n: v for n, v in _members(d).items()
                                        if n != "model.weights.h5"}),
                        io.FormatError, "no model.weights.h5"),
    "wrong shape": (lambda d: _edit_weights(d, lambda f: _replace(
        f, "layers/lstm/cell/vars/1", np.zeros((3, 8), np.float32))),
        io.FormatError, r"layer 'lstm[_0-9]*'.*\(3, 8\)"),
    "wrong dtype": (lambda d: _edit_weights(d, lambda f: _replace(
        f, "layers/dense/vars/0", np.zeros((2, 1), np.int32))),
        io.FormatError, r"layers/dense/vars/0 has dtype int32"),
    "absurd units": (lambda d: _edit_config(d, lambda c: _set(_lstm_config(c), units=2 ** 40)),
                     io.FormatError, r"layer 'lstm[_0-9]*'"),
    # a dataset that declares 2^40 floats but stores none, and a config that agrees with it
    "absurd dataset": (lambda d: _edit_config(_edit_weights(d, lambda f: _replace(
        f, "layers/embedding/vars/0", shape=(2 ** 20, 2 ** 20), dtype="f4",
        chunks=(1, 16), value=None)), lambda c: _set(c["config"]["layers"][1]["config"],
                                                  input_dim=2 ** 20, output_dim=2 ** 20)),
        io.FormatError, "declares shape"),
    "extra weight": (lambda d: _edit_weights(d, lambda f: f.create_dataset(
        "layers/dense/kernel_scale/vars/0", data=np.zeros(1, np.float32))),
        UnsupportedModelError, r"layers/dense has weights lstmc does not know.*kernel_scale"),
    "one weight too many": (lambda d: _edit_weights(d, lambda f: f.create_dataset(
        "layers/dense/vars/2", data=np.zeros(1, np.float32))),
        io.FormatError, r"layer 'dense[_0-9]*': weights of shapes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_raise_clear_errors(tmp_path, small_keras, case):
    damage, error, match = BAD[case]
    path = tmp_path / "small.keras"
    path.write_bytes(damage(small_keras))
    with pytest.raises(error, match=match):
        load_model(path)


def test_undamaged_small_file_loads(tmp_path, small_keras):
    path = tmp_path / "small.keras"
    path.write_bytes(small_keras)
    assert load_model(path).predict(np.array([[1, 2, 0]])).shape == (1, 1)


_FUZZ = settings(max_examples=150, deadline=2000, database=None,
                 suppress_health_check=list(HealthCheck))


def _loads_or_refuses_quickly(path):
    """A mutated file loads, or raises one of the reader's clear errors, within 2 s."""
    start = time.perf_counter()
    try:
        load_model(path)
    except (io.FormatError, UnsupportedModelError):
        pass
    assert time.perf_counter() - start < 2.0


def test_fuzz_keras_reader(tmp_path_factory, small_keras):
    path = tmp_path_factory.mktemp("fuzz") / "f.keras"
    n = len(small_keras)

    @_FUZZ
    @given(st.integers(0, n), st.lists(st.tuples(st.integers(0, n - 1),
                                                            st.integers(1, 255)),
                                                  max_size=6))
    def run(cut, flips):
        data = bytearray(small_keras[:cut] if cut < n else small_keras)
        for at, x in flips:
            if at < len(data):
                data[at] ^= x
        path.write_bytes(bytes(data))
        _loads_or_refuses_quickly(path)

    run()


def test_fuzz_keras_members(tmp_path_factory, small_keras):
    """Mutations inside config.json and model.weights.h5, re-zipped so the archive's CRCs
    hold: the JSON and HDF5 parsers and the reader's checks see the damage."""
    path = tmp_path_factory.mktemp("fuzz") / "f.keras"
    members = _members(small_keras)

    @_FUZZ
    @given(st.sampled_from(["config.json", "model.weights.h5"]),
                      st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                         st.integers(1, 255)), min_size=1, max_size=8),
                      st.floats(0.05, 1))
    def run(name, flips, keep):
        data = bytearray(members[name][:max(1, int(len(members[name]) * keep))])
        for at, x in flips:
            data[int(at * len(data))] ^= x
        path.write_bytes(_zip({**members, name: bytes(data)}))
        _loads_or_refuses_quickly(path)

    run()


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_stateful_layers_carry_state_across_calls(tmp_path, ext):
    k = keras_or_skip()
    model = k.Sequential([k.Input(batch_shape=(B, T, 3)),
                          k.layers.GRU(4, stateful=True, return_sequences=True),
                          k.layers.LSTM(3, stateful=True)])
    _randomise(model, seed=7)
    path = tmp_path / f"m{ext}"
    _save(model, path)
    loaded = load_model(path)
    x = np.random.default_rng(3).standard_normal((B, T, 3)).astype(np.float32)
    outs = []
    for _ in range(3):        # the same batch each time: only the carried state differs
        outs.append(loaded.predict(x, batch_size=B))
        _check_same(outs[-1], np.asarray(model.predict(x, verbose=0, batch_size=B)))
    assert not np.allclose(outs[0], outs[1])
