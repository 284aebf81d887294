"""The README's Python examples run as written (those that need PyTorch when it is there)."""
import importlib.util
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _python_blocks():
    if not os.path.exists(README):
        return []
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


@pytest.mark.skipif(not _python_blocks(), reason="needs the source tree's README.md")
def test_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)            # the examples save files
    env = {}
    for block in _python_blocks():
        if "torch_lstm" in block:      # needs a trained torch model: covered by the parity tests
            continue
        if "lstmc.onnx" in block and importlib.util.find_spec("onnx") is None:
            continue                   # the onnx extra is not installed
        exec(compile(block, "README.md", "exec"), env)
    assert env["out"].shape == (32, 50, 512) and env["h_n"].shape == (4, 32, 256)
    assert env["history"].history["accuracy"][-1] > 0.8      # the Keras example learns
