"""scipy's BLAS for the kernels, reached without importing scipy.linalg.

lstmc calls the BLAS that scipy's wheel ships, through the C functions that
``scipy.linalg.cython_blas`` exports to other Cython modules: a ``__pyx_capi__`` dict of
capsules, the mechanism a ``cimport`` uses. A ``cimport`` imports the module by its dotted
name, which first runs ``scipy.linalg``'s ``__init__``: 217 of the 250 ms ``import lstmc``
took (``python -X importtime -c "import lstmc"``). The extension file alone loads in a few
milliseconds, so it is loaded here straight from scipy's folder; the module is the one
scipy itself would load, and the capsules carry the C signatures that ``_core`` checks.
Importing this module hands the functions to the kernels.
"""
import importlib.machinery
import importlib.util
import os
import sys

from lstmc import _core

_NAME = "scipy.linalg.cython_blas"


def cython_blas_capi():
    """The ``__pyx_capi__`` dict (function name -> capsule) of scipy.linalg.cython_blas."""
    module = sys.modules.get(_NAME)
    if module is None:
        try:
            module = _load_file()
        except (ImportError, OSError):   # e.g. a scipy whose __init__ must set up first
            module = None
    if module is None:   # an unusual layout (a zipped or frozen scipy): the ordinary import
        import scipy.linalg.cython_blas as module
    return module.__pyx_capi__


def _load_file():
    spec = importlib.util.find_spec("scipy")   # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(spec.submodule_search_locations[0], "linalg")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, "cython_blas" + suffix)
        if os.path.isfile(path):
            loader = importlib.machinery.ExtensionFileLoader(_NAME, path)
            module = importlib.util.module_from_spec(
                importlib.util.spec_from_file_location(_NAME, path, loader=loader))
            loader.exec_module(module)
            # The module entered itself in sys.modules, but scipy.linalg does not have it as
            # an attribute: a later `import scipy.linalg.cython_blas` would then leave
            # `scipy.linalg.cython_blas` unresolvable. Out of sys.modules, that import loads
            # it as usual (the same shared library, already in memory).
            if sys.modules.get(_NAME) is module:
                del sys.modules[_NAME]
            return module
    return None


_core.set_blas(cython_blas_capi())
