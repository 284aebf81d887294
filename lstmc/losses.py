"""lstmc.keras.losses under its short name (`from lstmc.losses import ...`, as Keras code
reads)."""
from lstmc.keras.losses import *  # noqa: F401,F403
from lstmc.keras.losses import __all__  # noqa: F401
