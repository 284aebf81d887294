"""lstmc.keras.callbacks under its short name (`from lstmc.callbacks import ...`, as Keras code
reads)."""
from lstmc.keras.callbacks import *  # noqa: F401,F403
from lstmc.keras.callbacks import __all__  # noqa: F401
