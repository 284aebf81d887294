"""Keras-flavoured callbacks for `Sequential.fit`: `Callback`, `History`, `EarlyStopping`,
`ModelCheckpoint`, `TerminateOnNaN`, and the progress bar `fit` shows with verbose=1."""
import math
import sys
import time

__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "TerminateOnNaN",
           "ProgressBar"]


class Callback:
    """Hooks called by fit with `logs`, a dict of the current figures (loss, metrics,
    val_... at epoch end). `self.model` is the model being trained."""

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass


class History(Callback):
    """What fit returns: `history` maps each figure to its per-epoch list, `epoch` the
    epoch indices."""

    def on_train_begin(self, logs=None):
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)


def _mode(mode, monitor):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        mode = "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
    return mode


class _Monitor(Callback):
    """A monitored figure and whether a new value improves on the best so far."""

    def __init__(self, monitor, mode, min_delta=0.0):
        self.monitor = monitor
        self.mode = _mode(mode, monitor)
        self.min_delta = abs(min_delta)
        self.best = math.inf if self.mode == "min" else -math.inf

    def _value(self, logs):
        value = (logs or {}).get(self.monitor)
        if value is None:
            print(f"warning: {type(self).__name__} monitors {self.monitor!r}, which is not "
                  f"available (have {sorted(logs or {})})", file=sys.stderr)
        return value

    def _improves(self, value, reference=None):
        """Whether `value` beats `reference` (default: the best so far; None: anything
        does) by more than min_delta."""
        reference = self.best if reference is None else reference
        if reference is None:
            return True
        if self.mode == "min":
            return value < reference - self.min_delta
        return value > reference + self.min_delta


class EarlyStopping(_Monitor):
    """Stops fit when `monitor` has not improved by more than `min_delta` for `patience`
    epochs (an improvement that does not also beat `baseline` does not reset the count);
    restore_best_weights puts back the weights of the best epoch when training ends, early
    or not (Keras 3's rules)."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta)
        self.patience = int(patience)
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = int(start_from_epoch)

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        value = self._value(logs)
        if value is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()   # if nothing ever improves
        self.wait += 1
        if self._improves(value):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._improves(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Saves the model (`model.save`, or only its weights with save_weights_only) after
    every epoch, or only when `monitor` improved with save_best_only. `filepath` may hold
    `{epoch}` and the logs' names, e.g. "ckpt-{epoch:02d}-{val_loss:.3f}.lstmc"."""

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch"):
        super().__init__(monitor, mode)
        if save_freq != "epoch":
            raise ValueError("save_freq must be 'epoch'")
        self.filepath = str(filepath)
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = self.filepath.format(epoch=epoch + 1, **logs)
        if self.save_best_only:
            value = self._value(logs)
            if value is None or not self._improves(value):
                return
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                      f"{value:.5f}, saving model to {path}")
            self.best = value
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)


class TerminateOnNaN(Callback):
    """Stops training after the batch whose loss (fit's running mean over the epoch, as in
    Keras) is NaN or infinite: prints "Batch <i>: Invalid loss, terminating training" and
    sets `model.stop_training`, so fit runs no further batch and, after this epoch's end
    (validation included), no further epoch. With `raise_error=True` it raises RuntimeError
    instead."""

    def __init__(self, raise_error=False):
        self.raise_error = raise_error

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(loss):
            return
        if self.raise_error:
            raise RuntimeError(f"NaN or Inf loss encountered at batch {batch}. Loss value: "
                               f"{loss}. Terminating training immediately.")
        print(f"Batch {batch}: Invalid loss, terminating training")
        self.model.stop_training = True


def _format_time(seconds):
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{seconds:.0f}s"


def _format_logs(logs):
    return "".join(f" - {k}: {v:.4f}" for k, v in logs.items())


class ProgressBar(Callback):
    """Keras' progress line: `12/32 ━━━━━━━━────────── 3s 21ms/step - accuracy: 0.7 - loss:
    0.5`, redrawn in place on a terminal (ETA while running, time taken at the end); one
    line per epoch with verbose=2 or when output is not a terminal."""

    def __init__(self, steps, epochs, verbose=1, stream=None):
        self.steps, self.epochs, self.verbose = steps, epochs, verbose
        self.stream = stream or sys.stdout
        self.live = verbose == 1 and getattr(self.stream, "isatty", lambda: False)()

    def on_epoch_begin(self, epoch, logs=None):
        print(f"Epoch {epoch + 1}/{self.epochs}", file=self.stream, flush=True)
        self.start = self.last_draw = time.perf_counter()

    def _line(self, step, logs, done):
        elapsed = time.perf_counter() - self.start
        width = 20
        filled = width * step // max(self.steps, 1)
        bar = "━" * filled + "─" * (width - filled)
        per_step = elapsed / max(step, 1)
        timing = (f"{_format_time(elapsed)} {per_step * 1e3:.0f}ms/step" if done else
                  f"ETA {_format_time(per_step * (self.steps - step))}")
        n = len(str(self.steps))
        return f"{step:>{n}}/{self.steps} {bar} {timing}{_format_logs(logs)}"

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self.live and (now - self.last_draw > 0.1 or batch + 1 == self.steps):
            self.last_draw = now
            self.stream.write("\r" + self._line(batch + 1, logs or {}, False) + "\033[K")
            self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        line = self._line(self.steps, logs or {}, True)
        self.stream.write(("\r" if self.live else "") + line + ("\033[K" if self.live else "")
                          + "\n")
        self.stream.flush()


class CallbackList:
    """Calls every callback's hook in order."""

    def __init__(self, callbacks, model):
        self.callbacks = list(callbacks)
        for c in self.callbacks:
            if not isinstance(c, Callback):
                raise TypeError(f"callbacks must be lstmc.callbacks.Callback instances, got "
                                f"{type(c).__name__}")
            c.set_model(model)

    def __getattr__(self, hook):
        def call(*args, **kwargs):
            for c in self.callbacks:
                getattr(c, hook)(*args, **kwargs)
        return call
