"""What `import lstmc` costs and pulls in: only numpy and scipy's BLAS extension, never
scipy.linalg's package (a few hundred ms) nor an optional integration."""
import subprocess
import sys


def _run(code):
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


def test_import_leaves_scipy_linalg_and_the_integrations_alone():
    loaded = _run("import sys, lstmc; print(' '.join(sorted(m for m in sys.modules if m in ("
                  "'scipy.linalg', 'torch', 'onnx', 'onnxruntime', 'keras', 'h5py', 'mpi4py', "
                  "'dask'))) or 'none')")
    assert loaded == ["none"]


def test_scipy_linalg_imports_as_usual_after_lstmc():
    # lstmc loads scipy.linalg.cython_blas by its file; an import of it by name afterwards
    # must still give the package attribute and the same C functions
    out = _run("import lstmc, numpy as np, scipy.linalg.cython_blas, scipy.linalg; "
               "print(len(scipy.linalg.cython_blas.__pyx_capi__) > 0, "
               "scipy.linalg.solve(np.eye(2), [1.0, 2.0]).tolist() == [1.0, 2.0])")
    assert out == ["True", "True"]



def test_old_import_paths_still_resolve():
    # The Keras face's short module names are lstmc.keras's modules themselves, private
    # names included; the cells and StreamState moved out of lstmc.nn.rnn but resolve there,
    # as old code and pickles name them
    import pickle

    import lstmc
    from lstmc.nn.rnn import GRUCell, StreamState  # noqa: F401
    for name in ("layers", "models", "optimizers", "losses", "callbacks"):
        assert getattr(lstmc, name) is getattr(lstmc.keras, name)
    from lstmc.callbacks import CallbackList  # noqa: F401
    from lstmc.layers import _ACTIVATIONS, deserialize, serialize  # noqa: F401
    assert lstmc.nn.rnn.LSTMCell is lstmc.nn.LSTMCell
    cell = pickle.loads(pickle.dumps(lstmc.nn.LSTMCell(3, 4)))
    assert isinstance(cell, lstmc.nn.LSTMCell)
    # protocol 0 names classes as text lines, so the module path can be rewritten
    old = pickle.dumps(lstmc.nn.LSTMCell(3, 4), protocol=0).replace(b"lstmc.nn.cells",
                                                                    b"lstmc.nn.rnn")
    assert b"lstmc.nn.rnn" in old and isinstance(pickle.loads(old), lstmc.nn.LSTMCell)


def test_one_unsupported_model_error():
    # ONNX and Keras files refuse what lstmc cannot run with one exception class
    import lstmc.keras.files
    import lstmc.onnx
    assert lstmc.onnx.UnsupportedModelError is lstmc.io.UnsupportedModelError
    assert lstmc.keras.files.UnsupportedModelError is lstmc.io.UnsupportedModelError
    assert issubclass(lstmc.io.UnsupportedModelError, ValueError)


def test_lstmc_onnx_resolves_after_a_plain_import():
    out = _run("import sys, lstmc; a = 'lstmc.onnx' in sys.modules; s = lstmc.onnx.load; "
               "print(a, 'lstmc.onnx' in sys.modules, 'onnx' in sys.modules)")
    assert out == ["False", "True", "False"]
