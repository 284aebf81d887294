"""lstmc.keras.optimizers under its short name (`from lstmc.optimizers import ...`, as Keras code
reads)."""
from lstmc.keras.optimizers import *  # noqa: F401,F403
from lstmc.keras.optimizers import __all__  # noqa: F401
