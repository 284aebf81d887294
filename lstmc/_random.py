"""The one random generator of lstmc: parameter initialisation and dropout masks draw from it,
so `lstmc.manual_seed(s)` makes both reproducible."""
import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed):
    """Reseed lstmc's generator (weight initialisation and dropout)."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def generator():
    """The current generator (a numpy.random.Generator)."""
    return _generator
