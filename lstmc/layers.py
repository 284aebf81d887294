"""lstmc.keras.layers under its short name (`from lstmc.layers import ...`, as Keras code
reads)."""
from lstmc.keras.layers import *  # noqa: F401,F403
from lstmc.keras.layers import __all__  # noqa: F401
