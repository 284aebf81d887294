"""The Keras face of lstmc: Keras' layer, model, optimizer, loss and callback names and
conventions (weight layout, gate order, masks, compile / fit / evaluate / predict, the
functional API: `Input`, layer calls on symbolic tensors, `Model`) on the same
engine as lstmc.nn. The layers adapt Keras' layouts at their edge and run lstmc.nn's modules;
the losses are lstmc.nn.loss's with Keras' reductions and probability inputs; the optimizers
are lstmc.optim's with Keras' names and defaults.

``lstmc.layers``, ``lstmc.models``, ``lstmc.optimizers``, ``lstmc.losses`` and
``lstmc.callbacks`` are the same modules' public names, so Keras code runs with only its
imports changed.
"""
from lstmc.keras import callbacks, layers, losses, optimizers  # noqa: F401
from lstmc.keras import models  # noqa: F401  (after the modules it builds on)
from lstmc.keras.layers import Input  # noqa: F401
from lstmc.keras.models import Model, Sequential, load_model  # noqa: F401

__all__ = ["layers", "models", "optimizers", "losses", "callbacks", "Sequential", "Model",
           "Input", "load_model"]
