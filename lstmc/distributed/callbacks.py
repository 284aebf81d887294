"""Keras-face callbacks for data-parallel training, as Horovod's (horovod.keras.callbacks),
for training loops that are not `fit(distributed=True)` (which does the first two itself):

- BroadcastGlobalVariablesCallback(root_rank): rank 0's weights and optimizer state on
  every rank when training begins;
- MetricAverageCallback(): the epoch's logs averaged over the ranks;
- LearningRateWarmupCallback(initial_lr, warmup_epochs, steps_per_epoch): the learning rate
  raised from initial_lr / size to initial_lr over the first epochs, batch by batch (Goyal et
  al., "Accurate, Large Minibatch SGD"): with N ranks the global batch is N times one
  process's, and the learning rate scaled N times with it is too large for the first steps.
"""
import numpy as np

from lstmc.distributed import mpi
from lstmc.keras.callbacks import Callback

__all__ = ["BroadcastGlobalVariablesCallback", "MetricAverageCallback",
           "LearningRateWarmupCallback"]


class BroadcastGlobalVariablesCallback(Callback):
    """Sends rank `root_rank`'s weights (and optimizer state, once the optimizer is bound)
    to every rank when training begins."""

    def __init__(self, root_rank=0):
        self.root_rank = root_rank

    def on_train_begin(self, logs=None):
        model = self.model
        if model.built and model.compiled:
            model._ensure_optimizer()
            mpi.broadcast_parameters(model, root=self.root_rank)
            mpi.broadcast_optimizer_state(model.optimizer, root=self.root_rank)
        else:
            mpi.broadcast_parameters(model, root=self.root_rank)


class MetricAverageCallback(Callback):
    """Replaces each figure of the epoch's logs with its mean over the ranks (one
    all-reduce); place it before callbacks that read the logs (EarlyStopping,
    ModelCheckpoint)."""

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        names = sorted(logs)
        values = np.array([float(logs[n]) for n in names], dtype=np.float64)
        mpi.sum_in_place(values)
        for n, v in zip(names, values / mpi.size()):
            logs[n] = float(v)


class LearningRateWarmupCallback(Callback):
    """Raises the learning rate linearly from initial_lr / size() to initial_lr over
    `warmup_epochs` epochs, at every batch (`steps_per_epoch` batches per epoch), then
    leaves it at initial_lr. `initial_lr` is the learning rate after the warm-up, usually
    one process's learning rate times size()."""

    def __init__(self, initial_lr, warmup_epochs=5, steps_per_epoch=None, verbose=0):
        if not initial_lr > 0:
            raise ValueError(f"initial_lr must be > 0, got {initial_lr!r}")
        if not warmup_epochs > 0:
            raise ValueError(f"warmup_epochs must be > 0, got {warmup_epochs!r}")
        if steps_per_epoch is None or int(steps_per_epoch) < 1:
            raise ValueError("steps_per_epoch must be a positive int (the batches of an epoch: "
                             "ceil(samples / batch_size))")
        self.initial_lr, self.warmup_epochs = float(initial_lr), float(warmup_epochs)
        self.steps_per_epoch, self.verbose = int(steps_per_epoch), verbose
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        progress = self._epoch + batch / self.steps_per_epoch
        if progress > self.warmup_epochs:
            return
        n = mpi.size()
        lr = self.initial_lr / n * (progress * (n - 1) / self.warmup_epochs + 1)
        self.model.optimizer.learning_rate = lr

    def on_epoch_end(self, epoch, logs=None):
        if self.verbose and epoch + 1 == int(self.warmup_epochs) and mpi.rank() == 0:
            print(f"\nEpoch {epoch + 1}: finished the learning-rate warm-up to "
                  f"{self.initial_lr:g}")
