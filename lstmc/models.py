"""lstmc.keras.models under its short name (`from lstmc.models import ...`, as Keras code
reads): the same module, so every name, private ones and pickled class paths included,
resolves as before the Keras face moved into lstmc.keras."""
import sys

from lstmc.keras import models as _module

sys.modules[__name__] = _module
