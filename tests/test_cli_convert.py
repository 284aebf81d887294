"""`python -m lstmc convert IN OUT` and `python -m lstmc inspect FILE` (lstmc/convert.py)."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

import lstmc
from lstmc.__main__ import main
from lstmc.layers import LSTM, Bidirectional, Dense, Embedding
from lstmc.models import Sequential, load_model


def _model():
    lstmc.manual_seed(3)
    m = Sequential([Embedding(40, 8, mask_zero=True), Bidirectional(LSTM(6)),
                    Dense(1, activation="sigmoid")])
    m.build((None, 9))
    return m


def _ids():
    ids = np.random.default_rng(3).integers(1, 40, size=(5, 9))
    ids[:, :2] = 0
    return ids


def test_lstmc_to_onnx_and_inspect(tmp_path, capsys):
    pytest.importorskip("onnx")
    import lstmc.onnx
    model = _model()
    model.save(tmp_path / "m.lstmc")
    assert main(["convert", str(tmp_path / "m.lstmc"), str(tmp_path / "m.onnx")]) == 0
    sess = lstmc.onnx.load(tmp_path / "m.onnx")
    y = sess.run(None, {sess.get_inputs()[0].name: _ids()})[0]
    np.testing.assert_allclose(y, model.predict(_ids(), verbose=0), rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    onnx = pytest.importorskip("onnx")
    stored = sum(int(np.prod(t.dims)) for t in onnx.load(tmp_path / "m.onnx").graph.initializer)
    assert f"{stored:,} parameters" in out and "cannot run" not in out
    kernels = [line for line in out.splitlines() if "on lstmc's kernels:" in line]
    assert len(kernels) == 1 and "(LSTM)" in kernels[0]
    assert "over numpy:" in out and "folded at load" in out
    assert main(["inspect", str(tmp_path / "m.lstmc")]) == 0
    out = capsys.readouterr().out
    assert "(Bidirectional)" in out and f"Total params: {model.count_params():,}" in out


def test_keras_file_to_lstmc(tmp_path):
    pytest.importorskip("h5py")
    keras = pytest.importorskip("keras")
    theirs = keras.Sequential([keras.Input((9,)), keras.layers.Embedding(40, 8, mask_zero=True),
                               keras.layers.Bidirectional(keras.layers.LSTM(6)),
                               keras.layers.Dense(1, activation="sigmoid")])
    theirs.save(tmp_path / "k.keras")
    assert main(["convert", str(tmp_path / "k.keras"), str(tmp_path / "k.lstmc")]) == 0
    ours = load_model(tmp_path / "k.lstmc")
    expected = keras.ops.convert_to_numpy(theirs.predict(_ids(), verbose=0))
    np.testing.assert_allclose(ours.predict(_ids(), verbose=0), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("src,dst,match", [
    ("m.lstmc", "m.keras", "does not write them"),
    ("m.lstmc", "n.lstmc", "both .lstmc files"),
    ("m.txt", "m.onnx", "unknown model file kind '.txt'"),
])
def test_convert_refuses(tmp_path, src, dst, match):
    with pytest.raises(ValueError, match=match):
        main(["convert", str(tmp_path / src), str(tmp_path / dst)])


def test_convert_of_a_missing_onnx_file_names_it(tmp_path):
    """(.onnx -> .lstmc converts: tests/test_onnx_convert.py)"""
    pytest.importorskip("onnx")
    with pytest.raises(FileNotFoundError, match="m.onnx"):
        main(["convert", str(tmp_path / "m.onnx"), str(tmp_path / "m.lstmc")])
