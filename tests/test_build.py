"""The C kernels are C99 and compile without a single warning, with and without OpenMP."""
import os
import re
import shutil
import subprocess

import pytest

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
SOURCES = ["blas.c", "seq.c", "lstm.c", "gru.c", "rnn.c", "recur.c"]
FLAGS = ["-std=c99", "-O3", "-fno-trapping-math", "-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion",
         "-Wno-sign-conversion", "-Werror", "-c"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.skipif(not os.path.isdir(CSRC), reason="needs the source tree")
@pytest.mark.parametrize("openmp", [False, True])
@pytest.mark.parametrize("source", SOURCES)
def test_kernels_compile_without_warnings(tmp_path, source, openmp):
    cmd = ["gcc", *FLAGS, *(["-fopenmp"] if openmp else []), os.path.join(CSRC, source),
           "-o", str(tmp_path / "out.o")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and not res.stderr, res.stderr


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.skipif(not os.path.isdir(CSRC), reason="needs the source tree")
def test_kernels_need_no_python_headers():
    for name in os.listdir(CSRC):
        with open(os.path.join(CSRC, name)) as f:
            assert not re.search(r'#\s*include\s*[<"]Python\.h', f.read()), name
