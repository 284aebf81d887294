"""Shared helpers for lstmc's tests.

* ``assert_close(name, actual, expected, rtol, atol)`` -- elementwise
  ``|actual - expected| <= atol + rtol * |expected|`` (numpy.allclose semantics,
  computed in float64); on failure it prints and raises the max abs / max rel
  difference of the tensor, where the worst element is, and how many elements fail.
  ``close_report(...)`` is the same check returning the message (or None), for tests
  that want to report every mismatching tensor at once.
* ``module_reference(m, x, lengths=None)`` -- the float64 reference output
  (``lstmc.reference``) of an ``lstmc.nn`` LSTM / GRU / RNN on a time-major ``x``, from
  the module's own parameters and options.
* ``float_dtype`` -- tests that take this argument run once per float dtype
  (float32, float64). Restrict with ``--float-dtypes=float64`` on the pytest command
  line (when this conftest is loaded at start-up) or ``LSTMC_TEST_DTYPES=float64`` in
  the environment.
"""
import os

import numpy as np

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


def to_numpy(a):
    """numpy view/copy of a numpy array, a (CPU) torch tensor, or anything array-like."""
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def close_report(name, actual, expected, rtol, atol):
    """None if ``actual`` is close to ``expected``, else a message describing the worst
    differences. NaN matches NaN, +-inf matches the same inf; shapes must agree exactly."""
    a, e = to_numpy(actual), to_numpy(expected)
    if a.shape != e.shape:
        return f"{name}: shape {a.shape} (actual) != {e.shape} (expected)"
    if a.size == 0:
        return None
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a64 - e64)
        ok = (diff <= atol + rtol * np.abs(e64)) | (a64 == e64) | (np.isnan(a64) & np.isnan(e64))
    if ok.all():
        return None
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN vs number: count as infinitely far
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(e64))
    iabs = np.unravel_index(np.argmax(diff), diff.shape)
    irel = np.unravel_index(np.argmax(rel), rel.shape)
    return (
        f"{name}: {int((~ok).sum())}/{a.size} elements outside atol={atol:.3g} + rtol={rtol:.3g}*|expected| "
        f"(shape {a.shape}, dtypes {a.dtype}/{e.dtype}, max|expected| {np.nanmax(np.abs(e64)):.4g})\n"
        f"    max abs diff {diff[iabs]:.4g} at {tuple(int(i) for i in iabs)}: "
        f"actual {a64[iabs]!r}, expected {e64[iabs]!r}\n"
        f"    max rel diff {rel[irel]:.4g} at {tuple(int(i) for i in irel)}: "
        f"actual {a64[irel]!r}, expected {e64[irel]!r}"
    )


def assert_close(name, actual, expected, rtol, atol):
    """Raise AssertionError (and print) with the max abs / max rel difference if not close."""
    msg = close_report(name, actual, expected, rtol, atol)
    if msg is not None:
        print(msg)
        raise AssertionError(msg)


def module_reference(m, x, lengths=None):
    """The float64 reference output of lstmc.nn sequence module `m` on time-major `x`."""
    from lstmc import nn
    from lstmc import reference as ref
    if isinstance(m, nn.LSTM):
        forward, options = ref.lstm_forward, {"proj_size": m.proj_size}
    elif isinstance(m, nn.GRU):
        forward, options = ref.gru_forward, {"reset_after": m.reset_after}
    else:
        forward, options = ref.rnn_forward, {"nonlinearity": m.nonlinearity}
    params = {name: p.data.astype(np.float64) for name, p in m.named_parameters()}
    return forward(np.asarray(x, dtype=np.float64), params, num_layers=m.num_layers,
                   bidirectional=m.bidirectional, lengths=lengths, **options)[0]
