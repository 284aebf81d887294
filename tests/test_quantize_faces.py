"""lstmc.quantize beyond the recurrent layers: nn.Linear and nn.Embedding in int8 (against
lstmc.reference's int8 arithmetic bit for bit, and against the float32 module within the
rounding bound of int8), the Keras face (LSTM / GRU / SimpleRNN, Bidirectional, Dense,
Embedding), and saving: the stored form (int8 matrices, float32 row scales and biases) goes
through lstmc.save / load_state_dict and the Keras face's save / load_model bit for bit, and
damaged stored forms are refused naming the array."""
import copy
import os
import pickle

import numpy as np
import pytest

import lstmc
from lstmc import io, nn
from lstmc import reference as R
from lstmc.layers import GRU, LSTM, Bidirectional, Dense, Dropout, Embedding, SimpleRNN
from lstmc.models import Sequential, load_model


def _int8_bound(x, w):
    """The largest |x w^T - dequantised int8 product| that per-row int8 rounding allows:
    each factor is off by at most half its row's step (scale / 2), so per output
    0.5 (sx sum|w| + sw sum|x|) + K sx sw / 4, with 1e-4 relative slack for float32 sums."""
    _, sx = R.quantize_int8(x)
    _, sw = R.quantize_int8(w)
    x64, w64 = np.abs(x).astype(np.float64), np.abs(w).astype(np.float64)
    bound = 0.5 * (sx[:, None] * w64.sum(1)[None] + sw[None] * x64.sum(1)[:, None]) \
        + x.shape[1] * sx[:, None] * sw[None] / 4
    return bound * (1 + 1e-4) + 1e-6


class _Net(nn.Module):
    """Embedding -> LSTM -> Linear, the shape of a small tagger."""

    def __init__(self, V=40, E=12, H=24, C=5):
        super().__init__()
        self.emb = nn.Embedding(V, E, padding_idx=0)
        self.rnn = nn.LSTM(E, H, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * H, C)

    def forward(self, ids, lengths=None):
        out, _ = self.rnn(self.emb(ids), lengths=lengths)
        return self.fc(out)


# ---- nn.Linear and nn.Embedding --------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 33), (2, 3, 17), (1, 1)])
def test_linear_is_the_reference_int8_product_plus_the_bias(shape):
    lstmc.manual_seed(3)
    m = nn.Linear(shape[-1], 9).eval()
    w, b = m.weight.data.copy(), m.bias.data.copy()
    q = lstmc.quantize(m)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32) * 3
    got = q(x)
    x2 = x.reshape(-1, shape[-1])
    # the same arithmetic as lstmc.reference's: exact int32 sums, then two float32 products
    want = R.int8_product(*R.quantize_int8(x2), *R.quantize_int8(w)) + b
    assert got.shape == shape[:-1] + (9,) and got.dtype == np.float32
    np.testing.assert_array_equal(got.reshape(-1, 9), want)
    err = np.abs(got.reshape(-1, 9) - m(x).reshape(-1, 9))
    assert (err <= _int8_bound(x2, w)).all(), err.max()
    # the stored form is reference.quantize_int8's of the float weight; the bias float32
    sd = q.state_dict()
    assert list(sd) == ["weight", "weight_scale", "bias"]
    wq, ws = R.quantize_int8(w)
    np.testing.assert_array_equal(sd["weight"], wq)
    np.testing.assert_array_equal(sd["weight_scale"], ws)
    np.testing.assert_array_equal(sd["bias"], b)
    # its float parameters hold what it computes with
    np.testing.assert_array_equal(q.weight.data, wq.astype(np.float32) * ws[:, None])


def test_linear_without_bias_and_with_zero_rows():
    m = nn.Linear(6, 4, bias=False)
    m.weight.data[1] = 0     # a zero weight row: scale 0, outputs 0
    q = lstmc.quantize(m)
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    x[2] = 0                 # a zero input row: scale 0
    got = q(x)
    np.testing.assert_array_equal(got, R.int8_product(*R.quantize_int8(x),
                                                      *R.quantize_int8(m.weight.data)))
    assert (got[:, 1] == 0).all() and (got[2] == 0).all()
    assert q(np.zeros((0, 6), np.float32)).shape == (0, 4)


def test_embedding_dequantises_the_rows_it_looks_up():
    lstmc.manual_seed(4)
    m = nn.Embedding(30, 10, padding_idx=2)
    w = m.weight.data.copy()
    q = lstmc.quantize(m)
    idx = np.random.default_rng(4).integers(0, 30, (3, 8))
    got = q(idx)
    wq, ws = R.quantize_int8(w)
    np.testing.assert_array_equal(got, wq[idx].astype(np.float32) * ws[idx][..., None])
    # int8 rounding: at most half a step (max |row| / 254) per element
    assert (np.abs(got - m(idx)) <= ws[idx][..., None] / 2 * (1 + 1e-6)).all()
    assert (q(np.array([2, 2]))[:, :] == 0).all()     # the padding row stays zero
    with pytest.raises(ValueError, match="idx"):
        q(np.array([30]))


def test_a_tagger_quantized_whole_matches_its_float_model():
    lstmc.manual_seed(5)
    net = _Net().eval()
    q = lstmc.quantize(net)
    ids = np.random.default_rng(5).integers(1, 40, (4, 11))
    lengths = np.array([11, 3, 7, 1])
    assert q.emb.quantized == q.rnn.quantized == q.fc.quantized == "int8"
    assert net.fc.quantized is None                    # the float model is untouched
    # int8 weights and activations through two bidirectional layers and a Linear: the
    # logits (mean |logit| ~0.08) moved by at most 1.2e-3 over seeds 5-7; padded positions
    # (the bias alone) not at all
    diff = np.abs(q(ids, lengths) - net(ids, lengths))
    assert diff.max() < 0.01, diff.max()
    np.testing.assert_array_equal(diff[1, 3:], 0)


def test_linear_and_embedding_refuse_training():
    q = lstmc.quantize(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3)))
    ids = np.array([[1, 2, 3]])
    y = q(ids)
    for module in (q, copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        np.testing.assert_array_equal(module(ids), y)   # copies run the same int8 weights
        with pytest.raises(RuntimeError, match=r"quantized \(int8\).*training mode"):
            module.train()
        assert not module.training                          # refused before any change
        for layer in module:
            with pytest.raises(RuntimeError, match=r"quantized.*backward"):
                layer.backward(np.zeros((1, 3, layer.weight.shape[0]), np.float32))
        with pytest.raises(RuntimeError, match="quantized"):
            lstmc.optim.SGD(module.parameters(), lr=0.1).step()
        with pytest.raises(ValueError, match="read-only"):
            module[1].weight.data[0, 0] = 1.0
        with pytest.raises(RuntimeError, match="float weights"):
            module.load_state_dict(nn.Sequential(nn.Embedding(10, 4),
                                                 nn.Linear(4, 3)).state_dict())
    with pytest.raises(ValueError, match="float32"):
        lstmc.quantize(nn.Linear(3, 2, dtype=np.float64))
    with pytest.raises(ValueError, match="already"):
        lstmc.quantize(q)


# ---- the nn face's save / load --------------------------------------------------------
def test_save_and_load_keep_the_int8_weights_bit_for_bit(tmp_path):
    lstmc.manual_seed(6)
    q = lstmc.quantize(_Net().eval())
    path = tmp_path / "q.lstmc"
    lstmc.save(q.state_dict(), path)
    stored = lstmc.load(path)
    assert stored["rnn.weight_ih_l1_reverse"].dtype == np.int8
    assert stored["rnn.weight_ih_l1_reverse_scale"].dtype == np.float32
    assert stored["rnn.bias_hh_l0"].dtype == np.float32
    # a quantized model of the same shapes, other float weights: loading needs none of them
    lstmc.manual_seed(7)
    other = lstmc.quantize(_Net().eval())
    ids = np.random.default_rng(6).integers(0, 40, (3, 9))
    assert not np.array_equal(other(ids), q(ids))
    other.load_state_dict(stored)
    np.testing.assert_array_equal(other(ids), q(ids))
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value, stored[key])
        assert value.dtype == stored[key].dtype
    # and its copies, streaming and threads run the loaded weights too
    np.testing.assert_array_equal(copy.deepcopy(other)(ids), q(ids))


def test_a_cell_and_a_stream_run_the_loaded_weights():
    lstmc.manual_seed(8)
    cell = lstmc.quantize(nn.GRUCell(5, 7))
    assert list(cell.state_dict())[:2] == ["weight_ih", "weight_ih_scale"]
    lstmc.manual_seed(9)
    other = lstmc.quantize(nn.GRUCell(5, 7))
    x = np.random.default_rng(8).standard_normal((2, 5)).astype(np.float32)
    before = other(x)       # the eval step is kept between calls: loading must reach it
    other.load_state_dict(cell.state_dict())
    np.testing.assert_array_equal(other(x), cell(x))
    assert not np.array_equal(before, cell(x))
    gru = lstmc.quantize(nn.GRU(5, 7))
    state = gru.initial_state(2)
    lstmc.manual_seed(10)
    src = lstmc.quantize(nn.GRU(5, 7))
    gru.load_state_dict(src.state_dict())
    y, _ = gru.step(x, state)
    np.testing.assert_array_equal(y, src(x[None])[0][0])


def _bad(sd, key, value):
    out = dict(sd)
    out[key] = value
    return out


def test_a_damaged_stored_form_is_refused_naming_the_array():
    q = lstmc.quantize(_Net(V=10, E=4, H=6, C=2).eval())
    sd = q.state_dict()
    w = sd["rnn.weight_hh_l0"]
    cases = [
        (_bad(sd, "rnn.weight_hh_l0", np.where(w == w.max(), -128, w).astype(np.int8)),
         ValueError, r"rnn\.weight_hh_l0 holds -128"),
        (_bad(sd, "rnn.weight_hh_l0", w[:, :-1].copy()), ValueError,
         r"rnn\.weight_hh_l0 must have shape \(24, 6\)"),
        (_bad(sd, "rnn.weight_hh_l0", w.astype(np.int16)), TypeError,
         r"rnn\.weight_hh_l0 must be a int8"),
        (_bad(sd, "fc.weight_scale", sd["fc.weight_scale"].astype(np.float64)), TypeError,
         r"fc\.weight_scale must be a float32"),
        (_bad(sd, "fc.weight_scale", sd["fc.weight_scale"][:1].copy()), ValueError,
         r"fc\.weight_scale must have shape \(2,\)"),
        (_bad(sd, "fc.weight_scale", -sd["fc.weight_scale"]), ValueError,
         r"fc\.weight_scale holds negative"),
        (_bad(sd, "fc.bias", sd["fc.bias"].astype(np.float64)), ValueError,
         r"fc\.bias of a quantized module must be a float32"),
        ({k: v for k, v in sd.items() if k != "emb.weight_scale"}, ValueError,
         r"emb\.weight_scale is missing"),
        ({**sd, "extra": np.zeros(1)}, ValueError, "unexpected keys"),
    ]
    ids = np.random.default_rng(0).integers(0, 10, (3, 5))
    y = q(ids)
    for bad, error, match in cases:
        with pytest.raises(error, match=match):
            q.load_state_dict(bad)
        np.testing.assert_array_equal(q(ids), y)   # nothing was written
    with pytest.raises(RuntimeError, match=r"quantized \(int8\).*float weights"):
        q.load_state_dict(_Net(V=10, E=4, H=6, C=2).state_dict())


# ---- the Keras face --------------------------------------------------------------------
def _keras_model(seed=11, V=60, T=10):
    lstmc.manual_seed(seed)
    model = Sequential([Embedding(V, 16, mask_zero=True),
                        Bidirectional(LSTM(12, return_sequences=True)),
                        GRU(8, return_sequences=True),
                        SimpleRNN(8),
                        Dropout(0.5),
                        Dense(3, activation="softmax")])
    model.build((None, T))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    rng = np.random.default_rng(seed)
    x = rng.integers(1, V, (24, T))
    x[:6, :4] = 0           # front padding, masked
    y = rng.integers(0, 3, 24)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    return model, x, y


def test_a_keras_model_runs_int8_and_refuses_training():
    model, x, y = _keras_model()
    before = model.get_weights()
    q = lstmc.quantize(model)
    assert q.quantized == "int8" and model.quantized is None
    for layer in q.layers:
        assert all(m.quantized == "int8" for m in layer._inner_modules()
                   if not isinstance(m, nn.Dropout))
    p_float, p_q = model.predict(x), q.predict(x)
    # softmax outputs of four int8 layers: within 0.02 of the float model's (4e-3 to 6e-3
    # measured over seeds 11-13)
    assert np.abs(p_q - p_float).max() < 0.02, np.abs(p_q - p_float).max()
    np.testing.assert_array_equal(q(x[:5]), p_q[:5])
    loss, accuracy = q.evaluate(x, y, verbose=0)
    assert abs(loss - model.evaluate(x, y, verbose=0)[0]) < 0.02 and 0 <= accuracy <= 1
    # the Dense layer is the reference int8 product of its input
    feats = Sequential(q.layers[:-1])(x)
    dense = q.layers[-1]
    w = dense._module.weight.data
    logits = R.int8_product(*R.quantize_int8(feats), *R.quantize_int8(w)) + \
        dense._module.bias.data
    np.testing.assert_array_equal(dense.logits(feats), logits)
    for call, match in ((lambda: q.fit(x, y, epochs=1, verbose=0), "training"),
                        (lambda: q.train_on_batch(x[:8], y[:8]), "training"),
                        (lambda: q.set_weights(before), "set_weights"),
                        (lambda: q.layers[1].set_weights(model.layers[1].get_weights()),
                         "set_weights"),
                        (lambda: q.layers[3](x[:2, :, None].astype(np.float32)
                                             .repeat(8, axis=2), training=True), "training")):
        with pytest.raises(RuntimeError, match=r"^[a-z_0-9]+ is quantized \(int8\).*" + match):
            call()
    with pytest.raises(RuntimeError, match=r"^embedding(_\d+)? is quantized"):
        q.fit(x, y, epochs=1, verbose=0)
    # the float model is as it was, and trains
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    model.fit(x, y, epochs=1, verbose=0)


def test_keras_layers_int8_cannot_run_are_named():
    cases = [(GRU(4, reset_after=False, name="gru_before"), r"gru_before \(GRU"),
             (Bidirectional(GRU(4, reset_after=False), name="bi"), r"bi \(Bidirectional")]
    for layer, match in cases:
        model = Sequential([Embedding(9, 3), layer])
        model.build((None, 5))
        with pytest.raises(ValueError, match=match):
            lstmc.quantize(model)
    relu = Sequential([Embedding(9, 3), SimpleRNN(4, activation="relu")])   # h per row
    relu.build((None, 5))
    assert lstmc.quantize(relu).quantized == "int8"
    unbuilt = Sequential([Dense(3, name="later")])
    with pytest.raises(ValueError, match="later is not built"):
        lstmc.quantize(unbuilt)
    wide = Sequential([Dense(2, input_shape=(4,), dtype="float64", name="wide")])
    with pytest.raises(ValueError, match="wide.*float32"):
        lstmc.quantize(wide)


def test_keras_save_and_load_model_keep_the_int8_weights(tmp_path):
    model, x, y = _keras_model(seed=12)
    q = lstmc.quantize(model)
    path = os.fspath(tmp_path / "q.lstmc")
    q.save(path)
    config, arrays = io.read(path)
    assert config["model"]["quantized"] == {"dtype": "int8"}
    assert not any(name.startswith("weights/") for name in arrays)
    assert "optimizer_state" not in config["compile"]
    inner = q.layers[1].layer._module.state_dict()
    for key, value in inner.items():
        stored = arrays[f"quantized/{q.layers[1].name}/{key}"]
        assert stored.dtype == value.dtype
        np.testing.assert_array_equal(stored, value)
    loaded = load_model(path)
    assert loaded.quantized == "int8"
    np.testing.assert_array_equal(loaded.predict(x), q.predict(x))
    assert loaded.evaluate(x, y, verbose=0) == q.evaluate(x, y, verbose=0)
    with pytest.raises(RuntimeError, match="is quantized"):
        loaded.fit(x, y, verbose=0)
    # saved again, the same arrays
    loaded.save(tmp_path / "again.lstmc")
    _, again = io.read(tmp_path / "again.lstmc")
    assert list(again) == list(arrays)
    for name in arrays:
        np.testing.assert_array_equal(again[name], arrays[name])
    for suffix in (".keras", ".h5"):
        with pytest.raises(ValueError, match=r"quantized \(int8\).*\.lstmc"):
            q.save(tmp_path / ("q" + suffix))
        assert not (tmp_path / ("q" + suffix)).exists()


def test_a_damaged_keras_file_is_refused_naming_the_array(tmp_path):
    model, x, _ = _keras_model(seed=13)
    q = lstmc.quantize(model)
    q.save(tmp_path / "q.lstmc")
    config, arrays = io.read(tmp_path / "q.lstmc")
    gru = q.layers[2].name
    name = f"quantized/{gru}/weight_hh_l0"
    damaged = dict(arrays)
    damaged[name] = arrays[name].copy()
    damaged[name][0, 0] = -128
    io.write(tmp_path / "bad.lstmc", "lstmc.models.Sequential", config, damaged)
    with pytest.raises(io.FormatError, match=rf"{gru}.*weight_hh_l0 holds -128"):
        load_model(tmp_path / "bad.lstmc")
    damaged[name] = arrays[name].astype(np.float32)
    io.write(tmp_path / "bad.lstmc", "lstmc.models.Sequential", config, damaged)
    with pytest.raises(RuntimeError, match="float weights"):
        load_model(tmp_path / "bad.lstmc")
    damaged = {k: v for k, v in arrays.items() if k != name + "_scale"}
    io.write(tmp_path / "bad.lstmc", "lstmc.models.Sequential", config, damaged)
    with pytest.raises(io.FormatError, match=r"weight_hh_l0_scale is missing"):
        load_model(tmp_path / "bad.lstmc")


def test_onnx_export_refuses_a_quantized_model(tmp_path):
    pytest.importorskip("onnx")
    from lstmc.onnx import export
    with pytest.raises(ValueError, match="quantized"):
        export(lstmc.quantize(nn.LSTM(3, 4)), tmp_path / "q.onnx")
    model, _, _ = _keras_model(seed=14)
    with pytest.raises(ValueError, match="quantized"):
        export(lstmc.quantize(model), tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


# ---- bf16 ------------------------------------------------------------------------------
def _bf16(a):
    return R.bf16_round(np.asarray(a, np.float32))


def test_bf16_linear_embedding_and_the_tagger():
    """bf16 Linear: reference.bf16_product of the input and the rounded weight, plus the
    bias (within the float32 rounding of AMX's order); Embedding: the rounded rows; the whole tagger within bf16's error of float32"""
    lstmc.manual_seed(14)
    net = _Net().eval()
    q = lstmc.quantize(net, "bf16")
    assert q.emb.quantized == q.rnn.quantized == q.fc.quantized == "bf16"
    x = np.random.default_rng(14).standard_normal((5, 48)).astype(np.float32)
    # (AMX, from 4 rows, sums in its own order: within float32 rounding of the reference)
    np.testing.assert_allclose(q.fc(x), R.bf16_product(x, net.fc.weight.data)
                               + net.fc.bias.data, rtol=1e-5, atol=1e-6)
    idx = np.array([[1, 5, 0], [39, 2, 2]])
    np.testing.assert_array_equal(q.emb(idx), _bf16(net.emb.weight.data)[idx])
    ids = np.random.default_rng(15).integers(1, 40, (4, 11))
    assert np.abs(q(ids) - net(ids)).max() < 5e-3
    sd = q.state_dict()
    assert sd["fc.weight"].dtype == np.uint16 and "fc.weight_scale" not in sd
    np.testing.assert_array_equal((sd["rnn.weight_hh_l1"].astype(np.uint32) << 16)
                                  .view(np.float32), _bf16(net.rnn.weight_hh_l1.data))


def test_bf16_save_and_load_bit_for_bit(tmp_path):
    lstmc.manual_seed(16)
    q = lstmc.quantize(_Net().eval(), "bf16")
    lstmc.save(q.state_dict(), tmp_path / "q.lstmc")
    stored = lstmc.load(tmp_path / "q.lstmc")
    lstmc.manual_seed(17)
    other = lstmc.quantize(_Net().eval(), "bf16")
    ids = np.random.default_rng(16).integers(0, 40, (3, 9))
    other.load_state_dict(stored)
    np.testing.assert_array_equal(other(ids), q(ids))
    # the other dtype's stored form, or a damaged one, is refused naming the array
    with pytest.raises(TypeError, match=r"\w+\.weight\w* must be a uint16 array"):
        other.load_state_dict(lstmc.quantize(_Net().eval(), "int8").state_dict())
    bad = dict(stored)
    bad["fc.weight"] = bad["fc.weight"][:, :-1]
    with pytest.raises(ValueError, match="fc.weight must have shape"):
        other.load_state_dict(bad)


def test_keras_bf16_save_and_load_model(tmp_path):
    model, x, y = _keras_model(seed=18)
    q = lstmc.quantize(model, "bf16")
    assert q.quantized == "bf16"
    assert np.abs(q.predict(x) - model.predict(x)).max() < 1e-2
    q.save(tmp_path / "q.lstmc")
    config, _ = io.read(tmp_path / "q.lstmc")
    assert config["model"]["quantized"] == {"dtype": "bf16"}
    loaded = load_model(tmp_path / "q.lstmc")
    assert loaded.quantized == "bf16"
    np.testing.assert_array_equal(loaded.predict(x), q.predict(x))
    with pytest.raises(RuntimeError, match=r"quantized \(bf16\)"):
        loaded.fit(x, y, verbose=0)
