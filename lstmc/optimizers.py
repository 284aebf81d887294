"""lstmc.keras.optimizers under its short name (`from lstmc.optimizers import ...`, as Keras code
reads): the same module, so every name, private ones and pickled class paths included,
resolves as before the Keras face moved into lstmc.keras."""
import sys

from lstmc.keras import optimizers as _module

sys.modules[__name__] = _module
