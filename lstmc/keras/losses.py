"""Keras-flavoured losses and metrics for `lstmc.models.Sequential.compile`.

A loss is called as Keras calls it, `loss(y_true, y_pred)` -> float; `Sequential` uses
`loss.compute(y_true, y_pred, mask, logits)` -> (value, d value / d y_pred), which also takes
the pre-activation of the last layer (`logits=True`) when that layer's activation is the one
the loss undoes (sigmoid for binary, softmax for categorical cross-entropy): the fused form is
exact and stable where log(clip(p)) is not, and its gradient (p - y) is what Keras' TF backend
computes too. Per-position losses are averaged over the valid positions (all, or those the
mask keeps), Keras' "sum_over_batch_size".

The arithmetic on logits is lstmc.nn.loss's (BCEWithLogitsLoss, CrossEntropyLoss with class
probabilities, MSELoss, per position); what is Keras' own stays here: probability inputs
clipped to [eps, 1 - eps], the mean over the last axis, the mask.
"""
import numpy as np

from lstmc.nn.loss import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss

__all__ = ["Loss", "BinaryCrossentropy", "CategoricalCrossentropy",
           "SparseCategoricalCrossentropy", "MeanSquaredError", "get", "metric"]

_EPS = 1e-7   # Keras' backend epsilon: probabilities are clipped to [eps, 1 - eps]


def _per_position(fn, y_pred, y_true):
    """lstmc.nn.loss `fn` (reduction 'none') on each element -> (its mean over the last
    axis, that mean's gradient)."""
    C = y_pred.shape[-1]
    values = fn(y_pred, y_true)
    return values.mean(axis=-1), fn.backward() / C


class Loss:
    """Base: subclasses give `_values(y_true, y_pred, logits)` -> (per-position loss with
    y_pred's shape minus its last axis, gradient of each position's loss w.r.t. y_pred)."""

    name = None
    activation = None   # the last-layer activation whose logits the loss can take

    def __init__(self, from_logits=False):
        self.from_logits = bool(from_logits)

    def __call__(self, y_true, y_pred):
        return self.compute(y_true, y_pred)[0]

    def compute(self, y_true, y_pred, mask=None, logits=False, count=None):
        """Mean loss over the valid positions and its gradient w.r.t. y_pred. `count`
        replaces the number of valid positions as the divisor: data-parallel training
        passes the whole batch's (Sequential.fit(distributed=True)), so each rank's share
        of the loss and its gradient sum over the ranks to the whole batch's."""
        y_pred = np.asarray(y_pred)
        y_true = self._target(y_true, y_pred)
        values, grad = self._values(y_true, y_pred.astype(np.float64),
                                    logits or self.from_logits)
        if mask is not None and mask.shape == values.shape:
            w = mask.astype(np.float64)
        else:
            w = np.ones(values.shape)
        count = max(w.sum() if count is None else float(count), 1.0)
        loss = float((values * w).sum() / count)
        grad *= (w / count)[..., None]
        return loss, grad.astype(y_pred.dtype)

    @staticmethod
    def count(y_pred, mask=None):
        """The number of valid positions `compute` averages over."""
        positions = np.shape(y_pred)[:-1]
        if mask is not None and np.shape(mask) == positions:
            return int(np.count_nonzero(mask))
        return int(np.prod(positions))

    def _target(self, y_true, y_pred):
        y_true = np.asarray(y_true)
        if y_true.shape == y_pred.shape[:-1] and y_pred.shape[-1] == 1:
            y_true = y_true[..., None]    # (N,) labels for an (N, 1) output
        if y_true.shape != y_pred.shape:
            raise ValueError(f"{self.name}: y_true must have the output's shape "
                             f"{y_pred.shape}, got {y_true.shape}")
        if y_true.dtype.kind not in "fiub":
            raise TypeError(f"{self.name}: y_true must be numeric, got dtype {y_true.dtype}")
        return y_true.astype(np.float64)

    def get_config(self):
        return {"from_logits": self.from_logits}


class BinaryCrossentropy(Loss):
    """-(y log p + (1 - y) log(1 - p)), averaged over the last axis."""

    name, activation = "binary_crossentropy", "sigmoid"

    def _values(self, y, p, logits):
        if logits:
            return _per_position(BCEWithLogitsLoss(reduction="none"), p, y)
        q = np.clip(p, _EPS, 1 - _EPS)
        values = -(y * np.log(q) + (1 - y) * np.log(1 - q))
        grad = np.where((p > _EPS) & (p < 1 - _EPS), (q - y) / (q * (1 - q)), 0)
        return values.mean(axis=-1), grad / p.shape[-1]


class CategoricalCrossentropy(Loss):
    """-sum(y log p) over the last axis, y one-hot (or soft) targets; label_smoothing as
    Keras (y * (1 - s) + s / C)."""

    name, activation = "categorical_crossentropy", "softmax"

    def __init__(self, from_logits=False, label_smoothing=0.0):
        super().__init__(from_logits)
        self.label_smoothing = float(label_smoothing)

    def _smooth(self, y):
        s = self.label_smoothing
        return y if s == 0 else y * (1 - s) + s / y.shape[-1]

    def _values(self, y, p, logits):
        if logits:   # y as class probabilities, smoothed there as here
            fn = CrossEntropyLoss(reduction="none", label_smoothing=self.label_smoothing)
            return fn(p, y), fn.backward()
        y = self._smooth(y)
        s = p.sum(axis=-1, keepdims=True)
        q = p / s
        qc = np.clip(q, _EPS, 1 - _EPS)
        g = np.where((q > _EPS) & (q < 1 - _EPS), -y / qc, 0)   # d loss / d q
        return -(y * np.log(qc)).sum(axis=-1), (g - (g * q).sum(-1, keepdims=True)) / s

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """Categorical cross-entropy with integer class targets (y_pred's shape minus the class
    axis, or with a trailing 1)."""

    name = "sparse_categorical_crossentropy"

    def __init__(self, from_logits=False):
        super().__init__(from_logits)

    def _target(self, y_true, y_pred):
        y_true = np.asarray(y_true)
        if y_true.shape == y_pred.shape[:-1] + (1,) and y_pred.ndim > 1:
            y_true = y_true[..., 0]
        if y_true.shape != y_pred.shape[:-1]:
            raise ValueError(f"{self.name}: y_true must have shape {y_pred.shape[:-1]} (the "
                             f"output's without the class axis), got {y_true.shape}")
        if y_true.dtype.kind == "f" and np.any(y_true != np.round(y_true)):
            raise TypeError(f"{self.name}: y_true must hold integer class ids")
        C = y_pred.shape[-1]
        ids = y_true.astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= C):
            raise ValueError(f"{self.name}: class ids must lie in [0, {C}), got min "
                             f"{ids.min()} and max {ids.max()}")
        onehot = np.zeros(y_pred.shape, dtype=np.float64)
        np.put_along_axis(onehot, ids[..., None], 1.0, axis=-1)
        return onehot

    def get_config(self):
        return {"from_logits": self.from_logits}


class MeanSquaredError(Loss):
    """(y - p)^2 averaged over the last axis."""

    name = "mean_squared_error"

    def _values(self, y, p, logits):
        return _per_position(MSELoss(reduction="none"), p, y)


_LOSSES = {"binary_crossentropy": BinaryCrossentropy,
           "categorical_crossentropy": CategoricalCrossentropy,
           "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
           "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError}


def get(identifier):
    """A loss from its Keras name or an instance."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str) and identifier in _LOSSES:
        return _LOSSES[identifier]()
    raise ValueError(f"loss must be one of {sorted(_LOSSES)} or an lstmc.losses.Loss, got "
                     f"{identifier!r}")


def deserialize(class_name, config):
    return {c.__name__: c for c in _LOSSES.values()}[class_name](**config)


# ---- metrics: (y_true, y_pred, mask) -> (sum over valid positions, count) ---------------
def _valid(mask, shape):
    return np.ones(shape, dtype=bool) if mask is None or mask.shape != shape else mask


def _binary_accuracy(y_true, y_pred, mask):
    y_true = np.asarray(y_true)
    if y_true.shape == y_pred.shape[:-1]:
        y_true = y_true[..., None]
    hit = ((y_pred > 0.5) == (y_true > 0.5)).mean(axis=-1)
    m = _valid(mask, hit.shape)
    return float(hit[m].sum()), int(m.sum())


def _sparse_categorical_accuracy(y_true, y_pred, mask):
    y_true = np.asarray(y_true)
    if y_true.shape == y_pred.shape[:-1] + (1,):
        y_true = y_true[..., 0]
    hit = y_pred.argmax(axis=-1) == y_true.astype(np.int64)
    m = _valid(mask, hit.shape)
    return float(hit[m].sum()), int(m.sum())


def _categorical_accuracy(y_true, y_pred, mask):
    return _sparse_categorical_accuracy(np.asarray(y_true).argmax(axis=-1), y_pred, mask)


def _mean_absolute_error(y_true, y_pred, mask):
    y_true = np.asarray(y_true)
    if y_true.shape == y_pred.shape[:-1]:
        y_true = y_true[..., None]
    e = np.abs(y_pred - y_true).mean(axis=-1)
    m = _valid(mask, e.shape)
    return float(e[m].sum()), int(m.sum())


def _mean_squared_error(y_true, y_pred, mask):
    y_true = np.asarray(y_true)
    if y_true.shape == y_pred.shape[:-1]:
        y_true = y_true[..., None]
    e = ((y_pred - y_true) ** 2).mean(axis=-1)
    m = _valid(mask, e.shape)
    return float(e[m].sum()), int(m.sum())


_METRICS = {"binary_accuracy": _binary_accuracy,
            "categorical_accuracy": _categorical_accuracy,
            "sparse_categorical_accuracy": _sparse_categorical_accuracy,
            "mae": _mean_absolute_error, "mean_absolute_error": _mean_absolute_error,
            "mse": _mean_squared_error, "mean_squared_error": _mean_squared_error}


def metric(name, target_shape, output_shape):
    """(display name, function) for a metric name; 'accuracy' / 'acc' picks binary,
    sparse-categorical or categorical accuracy from the shapes, as Keras does: binary for a
    single output, sparse when the targets are class ids, categorical otherwise."""
    if name in ("accuracy", "acc"):
        target_shape, output_shape = tuple(target_shape), tuple(output_shape)
        if output_shape[-1] == 1:
            fn = _binary_accuracy
        elif len(target_shape) < len(output_shape) or target_shape[-1] == 1:
            fn = _sparse_categorical_accuracy
        else:
            fn = _categorical_accuracy
        return name, fn
    if name not in _METRICS:
        raise ValueError(f"unknown metric {name!r}; known: accuracy, {sorted(_METRICS)}")
    return name, _METRICS[name]
