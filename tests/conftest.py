"""Fixtures of lstmc's tests (the helpers they share are in helpers.py).

* ``float_dtype`` -- the one dtype parameter: tests that take this argument run once per
  float dtype
  (float32, float64). Restrict with ``--float-dtypes=float64`` on the pytest command
  line (when this conftest is loaded at start-up) or ``LSTMC_TEST_DTYPES=float64`` in
  the environment. Its tolerances are ``helpers.KERNEL_TOL[float_dtype]``.
* ``torch`` -- the torch module at one thread (skips the test without torch).
* ``restore_threads`` -- puts lstmc's thread count and recurrent kernel back afterwards.
"""
import os

import numpy as np
import pytest

import lstmc

FLOAT_DTYPES = {"float32": np.float32, "float64": np.float64}


def pytest_addoption(parser):
    parser.addoption(
        "--float-dtypes",
        default=None,
        help="comma-separated float dtypes for tests taking `float_dtype` "
        "(default: float32,float64; env LSTMC_TEST_DTYPES)",
    )


def _selected_dtype_names(config):
    spec = config.getoption("float_dtypes", default=None)
    if spec is None:
        spec = os.environ.get("LSTMC_TEST_DTYPES", "float32,float64")
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in FLOAT_DTYPES]
    if unknown or not names:
        raise ValueError(f"--float-dtypes: expected names from {sorted(FLOAT_DTYPES)}, got {spec!r}")
    return names


def pytest_generate_tests(metafunc):
    if "float_dtype" in metafunc.fixturenames:
        names = _selected_dtype_names(metafunc.config)
        metafunc.parametrize("float_dtype", [FLOAT_DTYPES[n] for n in names], ids=names)


@pytest.fixture(scope="module")
def torch():
    """torch at one thread: its OpenMP pool spin-waits on a busy 2-core machine (~50x
    slower for these tiny shapes)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


@pytest.fixture
def restore_threads():
    threads = lstmc.get_num_threads()
    yield
    lstmc._core._set_recurrent_kernel("auto")
    lstmc.set_num_threads(threads)
