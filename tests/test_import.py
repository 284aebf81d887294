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

