"""lstmc.optim: PyTorch-compatible optimizers and learning-rate schedulers over lstmc
Parameters (numpy `data` / `grad` pairs), updating `p.data` in place."""
from lstmc.optim.optimizer import SGD, Adam, AdamW, Optimizer, RMSprop
from lstmc.optim import lr_scheduler

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "lr_scheduler"]
