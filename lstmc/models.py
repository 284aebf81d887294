"""lstmc.keras.models under its short name (`from lstmc.models import ...`, as Keras code
reads)."""
from lstmc.keras.models import *  # noqa: F401,F403
from lstmc.keras.models import __all__  # noqa: F401
