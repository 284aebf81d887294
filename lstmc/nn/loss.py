"""Loss functions of lstmc.nn: numpy implementations with PyTorch's semantics.

Every loss is a parameter-free :class:`~lstmc.nn.module.Module`::

    loss = fn(pred, target)        # forward: a Python float ('mean' / 'sum') or an array ('none')
    dpred = fn.backward(grad=None)  # d loss / d pred of the last forward call

``grad`` is the upstream gradient of the loss: ``None`` means 1.0 for ``'mean'`` / ``'sum'``
and an array of ones (the loss's shape) for ``'none'``. The gradient has ``pred``'s shape and
dtype: float32 in gives float32 out, float64 gives float64; other float dtypes (float16) are
computed in float32. Integer, bool or complex predictions are a ``TypeError``.

Unlike the recurrent modules, a loss keeps what ``backward`` needs in eval mode too (a
validation loss needs no backward, but keeping it costs nothing extra and torch's losses do not
depend on the mode either).
"""
import operator

import numpy as np

from lstmc.nn.layers import sigmoid
from lstmc.nn.module import Module, to_numpy

__all__ = ["CrossEntropyLoss", "BCEWithLogitsLoss", "MSELoss"]

_REDUCTIONS = ("mean", "sum", "none")
_SUPPORTED = "float32 or float64"


# ---- helpers ------------------------------------------------------------------------------
def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _pred_array(pred):
    """`pred` as a float32/float64 array (other float dtypes -> float32)."""
    arr = to_numpy(pred)
    if arr.dtype.kind != "f":
        raise TypeError(f"pred must be a floating-point array ({_SUPPORTED}; other float "
                        f"dtypes are converted), got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    return arr


def _real_array(value, name, dtype):
    """`value` (float, int or bool array-like) as an array of `dtype`."""
    arr = to_numpy(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real (float, int or bool) array, got dtype "
                        f"{arr.dtype}")
    return arr.astype(dtype, copy=False)


def _check_same_shape(pred, target):
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got pred {pred.shape} "
                         f"and target {target.shape}")


def _optional_weight(weight, name, dtype):
    if weight is None:
        return None
    arr = to_numpy(weight)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real (float, int or bool) array, got dtype "
                        f"{arr.dtype}")
    return np.array(arr, dtype=np.float64)   # own copy; cast to pred's dtype per call


def _broadcast_to_pred(arr, name, shape):
    """`arr` broadcast to the pred shape `shape`; it may not grow the result."""
    try:
        out_shape = np.broadcast_shapes(arr.shape, shape)
    except ValueError:
        out_shape = None
    if out_shape != tuple(shape):
        raise ValueError(f"{name} of shape {arr.shape} does not broadcast to pred's shape "
                         f"{tuple(shape)}")
    return np.broadcast_to(arr, shape)


class _Loss(Module):
    """Common part: reduction, the saved state of the last forward, the upstream gradient."""

    def __init__(self, reduction="mean"):
        super().__init__()
        object.__setattr__(self, "reduction", _check_reduction(reduction))
        object.__setattr__(self, "_saved", None)

    def _save(self, **saved):
        object.__setattr__(self, "_saved", saved)

    _tape_kind = "loss"

    def _saved_for_backward(self):
        return self._saved

    def _restore_saved(self, saved):
        object.__setattr__(self, "_saved", saved)

    def _reduce(self, loss):
        """Elementwise losses -> the array ('none') or a Python float ('sum', 'mean')."""
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return float(loss.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(loss.mean()) if loss.size else float("nan")

    def _saved_or_raise(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._saved

    def _upstream(self, grad, loss_shape, dtype):
        """The upstream gradient: a scalar (numpy of `dtype`) for 'mean'/'sum', an array of
        `loss_shape` for 'none'."""
        if self.reduction == "none":
            if grad is None:
                return np.ones(loss_shape, dtype=dtype)
            g = _real_array(grad, "grad", dtype)
            if g.shape != tuple(loss_shape):
                raise ValueError(f"grad must have the loss's shape {tuple(loss_shape)} "
                                 f"(reduction='none'), got {g.shape}")
            return g
        if grad is None:
            return dtype.type(1.0)
        g = _real_array(grad, "grad", dtype)
        if g.size != 1:
            raise ValueError(f"grad must be a scalar for reduction={self.reduction!r}, got "
                             f"shape {g.shape}")
        return g.reshape(())[()]

    def _chain(self, d, g, dtype):
        """The elementwise gradient `d` times the upstream `g`, divided by the element count
        for 'mean' (a 0/0 of an empty batch is NaN, not a warning)."""
        if self.reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.asarray(d * (g / dtype.type(d.size)), dtype=dtype)
        return np.asarray(d * g, dtype=dtype)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


def _log_softmax(x):
    """(log_softmax, softmax) of the rows of a 2-D `x`; each row's maximum is subtracted
    first, so large logits do not overflow."""
    shifted = x - x.max(axis=1, keepdims=True) if x.shape[0] else x.copy()
    expd = np.exp(shifted)
    sumexp = expd.sum(axis=1, keepdims=True)
    return shifted - np.log(sumexp), expd / sumexp


# ---- CrossEntropyLoss ---------------------------------------------------------------------
class CrossEntropyLoss(_Loss):
    """Cross entropy between logits and class targets (``torch.nn.CrossEntropyLoss``): integer
    class indices, or class probabilities of the logits' shape.

    Parameters
    ----------
    weight : array_like of shape (C,), optional
        Rescaling weight of each class. With ``reduction='mean'`` the loss is divided by the
        sum of the weights of the non-ignored targets (as torch).
    ignore_index : int, default -100
        Target value that contributes neither to the loss nor to the mean's denominator, and
        gets a zero gradient. With every target ignored, ``'mean'`` gives ``nan`` (0 / 0), as
        torch does.
    reduction : {'mean', 'sum', 'none'}, default 'mean'
    label_smoothing : float in [0, 1], default 0.0
        Mixes the one-hot target with the uniform distribution over the C classes:
        ``loss = (1 - eps) * nll + eps / C * sum_c(-w_c * log_softmax_c)`` per row, exactly
        as torch (including its normalisation by the target weights for ``'mean'``).

    Notes
    -----
    Shapes (``forward(pred, target)``):

    ============  ================  =================  ===================================
    pred          target            'none' returns     notes
    ============  ================  =================  ===================================
    (N, C)        (N,)              (N,)               as torch
    (C,)          () (scalar)       () 0-d array       as torch
    (N, T, C)     (N, T)            (N, T)             **lstmc**: classes on the *last* axis
    ============  ================  =================  ===================================

    The (N, T, C) form is an lstmc convenience for sequence tagging and language models: the
    output of a ``batch_first`` RNN + Linear can be passed as is, and is treated as N*T rows
    of C classes. torch instead expects the classes on axis 1, ``(N, C, T)`` with targets
    ``(N, T)``; to get torch's result from torch-layout logits ``x``, pass
    ``x.transpose(0, 2, 1)``. (A torch-layout array with C == T cannot be told apart: the
    layout is the caller's responsibility.)

    Class-index targets are integers (any numpy integer dtype), in ``[0, C)`` or equal to
    ``ignore_index`` (else ``ValueError``). Probability ("soft") targets are floats of
    ``pred``'s shape, as torch's: per row ``-sum_c w_c y_c log_softmax_c`` with ``y`` mixed
    as ``y (1 - eps) + eps / C`` under label smoothing, ``'mean'`` dividing by the number of
    rows (not by the weights); ``ignore_index`` does not apply to them. A float target of any
    other shape is a ``TypeError``. The log-softmax subtracts each row's maximum, so large
    logits do not overflow.

    Examples
    --------
    >>> fn = CrossEntropyLoss(ignore_index=0)
    >>> loss = fn(logits, targets)      # logits (N, T, C), targets (N, T)
    >>> dlogits = fn.backward()         # (N, T, C)
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(reduction)
        w = _optional_weight(weight, "weight", np.float64)
        if w is not None and w.ndim != 1:
            raise ValueError(f"weight must be a 1-D array of shape (C,), got shape {w.shape}")
        try:
            ignore_index = operator.index(ignore_index)
        except TypeError:
            raise TypeError(f"ignore_index must be an int, got "
                            f"{type(ignore_index).__name__}") from None
        label_smoothing = float(label_smoothing)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "ignore_index", ignore_index)
        object.__setattr__(self, "label_smoothing", label_smoothing)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}"
                + ("" if self.weight is None else f", weight=<shape {self.weight.shape}>"))

    def forward(self, pred, target):
        """Cross-entropy loss of logits `pred` against integer class indices `target`.

        Parameters
        ----------
        pred : array_like of shape (N, C), (N, T, C) or (C,)
            Unnormalised logits, classes on the last axis.
        target : array_like of int, shape (N,), (N, T) or () respectively; or of float,
            pred's shape
            Class indices in ``[0, C)`` or ``ignore_index``; or class probabilities.

        Returns
        -------
        float or ndarray
            A Python float for ``'mean'`` / ``'sum'``; for ``'none'`` an array of
            ``target``'s shape and ``pred``'s dtype.
        """
        x = _pred_array(pred)
        t = to_numpy(target)
        probabilities = t.dtype.kind == "f" and t.shape == x.shape
        if t.dtype.kind not in "iu" and not probabilities:
            raise TypeError(f"target must be an integer array of class indices, or class "
                            f"probabilities (float) of pred's shape {x.shape}, got dtype "
                            f"{t.dtype} and shape {t.shape}")
        if x.ndim not in (1, 2, 3):
            raise ValueError(f"pred must have shape (N, C), (N, T, C) or (C,), got pred "
                             f"{x.shape}")
        if probabilities:
            return self._forward_probabilities(x, t)
        if t.shape != x.shape[:-1]:
            raise ValueError(f"target must have pred's shape without the class axis: pred "
                             f"{x.shape} needs target {x.shape[:-1]}, got target {t.shape}"
                             + (" (lstmc takes (N, T, C) logits with (N, T) targets, not "
                                "torch's (N, C, T))" if x.ndim == 3 else ""))
        C, w = x.shape[-1], self._class_weights(x)
        dtype = x.dtype
        loss_shape = t.shape
        x2 = x.reshape(-1, C)
        t1 = t.reshape(-1).astype(np.int64)
        ignored = t1 == self.ignore_index
        bad = ~ignored & ((t1 < 0) | (t1 >= C))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"target values must be in [0, {C}) or ignore_index "
                             f"({self.ignore_index}), got target {int(t1[i])} at flat index "
                             f"{i}")
        tc = np.where(ignored, 0, t1)                       # safe gather index
        keep = (~ignored).astype(dtype)
        logp, prob = _log_softmax(x2)

        rows = np.arange(x2.shape[0])
        wt = (w[tc] if w is not None else np.ones(len(tc), dtype)) * keep   # w_{y_i}, 0 ignored
        eps = self.label_smoothing
        # per-row loss = -sum_c a_ic logp_ic with a_ic = (1-eps) w_y [c==y] + eps/C w_c
        nll = -logp[rows, tc] * wt
        loss_rows = (1.0 - eps) * nll if eps else nll
        if eps:
            wc = w if w is not None else np.ones(C, dtype)
            smooth = -(logp * wc).sum(axis=1) * keep
            loss_rows = loss_rows + (eps / C) * smooth
        loss_rows = loss_rows.astype(dtype, copy=False)

        if self.reduction == "none":
            out = loss_rows.reshape(loss_shape)
            denom = None
        elif self.reduction == "sum":
            out = float(loss_rows.sum())
            denom = None
        else:
            denom = wt.sum()
            with np.errstate(invalid="ignore", divide="ignore"):
                out = float(loss_rows.sum() / denom)
        self._save(prob=prob, tc=tc, wt=wt, keep=keep, w=w, denom=denom, eps=eps,
                   shape=x.shape, loss_shape=loss_shape, dtype=dtype, a=None)
        return out

    def _class_weights(self, x):
        """The class weights in pred `x`'s dtype (None without), after checking that `x` has
        classes and the weights one per class."""
        C = x.shape[-1]
        if C == 0:
            raise ValueError(f"pred must have at least one class, got pred {x.shape}")
        if self.weight is None:
            return None
        if self.weight.shape != (C,):
            raise ValueError(f"weight must have shape ({C},) (pred's classes), got "
                             f"{self.weight.shape}")
        return self.weight.astype(x.dtype)

    def _forward_probabilities(self, x, y):
        """forward for class-probability targets `y` of x's shape: per row
        -sum_c a_c logp_c with a_c = w_c ((1 - eps) y_c + eps / C)."""
        dtype, C, w = x.dtype, x.shape[-1], self._class_weights(x)
        logp, prob = _log_softmax(x.reshape(-1, C))
        eps = self.label_smoothing
        a = y.reshape(-1, C).astype(dtype)
        if eps:
            a = a * (1 - eps) + eps / C
        if w is not None:
            a = a * w
        loss_rows = -(a * logp).sum(axis=1).astype(dtype, copy=False)
        n = loss_rows.shape[0]
        self._save(prob=prob, a=a, denom=n, shape=x.shape, loss_shape=x.shape[:-1],
                   dtype=dtype)
        if self.reduction == "none":
            return loss_rows.reshape(x.shape[:-1])
        if self.reduction == "sum":
            return float(loss_rows.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(loss_rows.sum() / n) if n else float("nan")

    def backward(self, grad=None):
        """Gradient of the last forward's loss with respect to `pred`.

        Parameters
        ----------
        grad : float or array_like of the loss's shape, optional
            Upstream gradient (None: 1.0, or ones for ``reduction='none'``).

        Returns
        -------
        ndarray of pred's shape and dtype
        """
        s = self._saved_or_raise()
        dtype = s["dtype"]
        g = self._upstream(grad, s["loss_shape"], dtype)
        prob = s["prob"]
        n, C = prob.shape
        # d row_loss / d x_ic = -a_ic + (sum_c a_ic) p_ic
        if s["a"] is not None:                                  # probability targets
            a = s["a"]
            d = prob * a.sum(axis=1, keepdims=True) - a
            if self.reduction == "none":
                d *= g.reshape(-1, 1)
            else:
                d *= g if self.reduction == "sum" else g / dtype.type(max(n, 1))
            return d.astype(dtype, copy=False).reshape(s["shape"])
        tc, wt, keep, w, eps = s["tc"], s["wt"], s["keep"], s["w"], s["eps"]
        a_y = (1.0 - eps) * wt                                  # the target's coefficient
        if eps:
            wc = w if w is not None else np.ones(C, dtype)
            a = (eps / C) * (keep[:, None] * wc[None, :])
            a_sum = a_y + a.sum(axis=1)
            d = prob * a_sum[:, None] - a
        else:
            d = prob * a_y[:, None]
        d[np.arange(n), tc] -= a_y
        if self.reduction == "none":
            d *= g.reshape(-1, 1)
        elif self.reduction == "sum":
            d *= g
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                d *= g / s["denom"]
            if s["denom"] == 0:      # 0 / 0: torch keeps the ignored rows' gradient at 0
                d[keep == 0] = 0
        return d.astype(dtype, copy=False).reshape(s["shape"])


# ---- BCEWithLogitsLoss --------------------------------------------------------------------
class BCEWithLogitsLoss(_Loss):
    """Binary cross entropy on logits (``torch.nn.BCEWithLogitsLoss``), computed stably.

    Per element, with logit ``x``, target ``y`` (usually in [0, 1]), ``l = 1 + (pos_weight -
    1) * y`` (``l = 1`` without pos_weight) and ``w`` the weight::

        loss = w * ((1 - y) * x + l * (log1p(exp(-|x|)) + max(-x, 0)))

    which equals ``-w * (pos_weight * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x)))``
    without overflowing for large ``|x|``.

    Parameters
    ----------
    weight : array_like, optional
        Rescaling weight, broadcast to pred's shape (e.g. shape (N, 1) per sample).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        'mean' averages over all elements of pred.
    pos_weight : array_like, optional
        Weight of the positive examples, broadcast to pred's shape; normally shape (C,) for
        pred (N, C), one per class (on the last axis).

    Notes
    -----
    Shapes: pred any shape (e.g. (N,), (N, C), (N, T, C)); target the same shape as pred
    (float, or int/bool which is converted); 'none' returns pred's shape.
    """

    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__(reduction)
        object.__setattr__(self, "weight", _optional_weight(weight, "weight", np.float64))
        object.__setattr__(self, "pos_weight",
                           _optional_weight(pos_weight, "pos_weight", np.float64))

    def forward(self, pred, target):
        """Binary cross entropy of logits `pred` against `target`.

        Parameters
        ----------
        pred : array_like of float, any shape
            Logits.
        target : array_like, same shape as pred
            Targets (probabilities of the positive class, usually 0 or 1).

        Returns
        -------
        float or ndarray
            A Python float for 'mean' / 'sum'; for 'none' an array of pred's shape and dtype.
        """
        x = _pred_array(pred)
        dtype = x.dtype
        y = _real_array(target, "target", dtype)
        _check_same_shape(x, y)
        w = None if self.weight is None else \
            _broadcast_to_pred(self.weight.astype(dtype), "weight", x.shape)
        lw = None
        if self.pos_weight is not None:
            pw = _broadcast_to_pred(self.pos_weight.astype(dtype), "pos_weight", x.shape)
            lw = 1 + (pw - 1) * y
        softplus_neg = np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0)   # -log(sigmoid(x))
        loss = (1 - y) * x + (softplus_neg if lw is None else lw * softplus_neg)
        if w is not None:
            loss = loss * w
        loss = loss.astype(dtype, copy=False)
        self._save(x=x, y=y, w=w, lw=lw, dtype=dtype)
        return self._reduce(loss)

    def backward(self, grad=None):
        """Gradient of the last forward's loss with respect to `pred`.

        Parameters
        ----------
        grad : float or array_like of pred's shape, optional
            Upstream gradient (None: 1.0, or ones for ``reduction='none'``).

        Returns
        -------
        ndarray of pred's shape and dtype
        """
        s = self._saved_or_raise()
        x, y, w, lw, dtype = s["x"], s["y"], s["w"], s["lw"], s["dtype"]
        g = self._upstream(grad, x.shape, dtype)
        sig = sigmoid(x)
        if lw is None:
            d = sig - y
        else:
            d = (1 - y) - lw * (1 - sig)
        if w is not None:
            d = d * w
        return self._chain(d, g, dtype)


# ---- MSELoss ------------------------------------------------------------------------------
class MSELoss(_Loss):
    """Mean squared error ``(pred - target) ** 2`` (``torch.nn.MSELoss``).

    Parameters
    ----------
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        'mean' averages over all elements.

    Notes
    -----
    Shapes: pred any shape; target exactly pred's shape (torch would broadcast with a
    warning; lstmc raises ValueError); 'none' returns pred's shape.
    """

    def forward(self, pred, target):
        """Squared error of `pred` against `target`.

        Parameters
        ----------
        pred : array_like of float, any shape
        target : array_like, same shape as pred

        Returns
        -------
        float or ndarray
            A Python float for 'mean' / 'sum'; for 'none' an array of pred's shape and dtype.
        """
        x = _pred_array(pred)
        dtype = x.dtype
        y = _real_array(target, "target", dtype)
        _check_same_shape(x, y)
        diff = x - y
        self._save(diff=diff, dtype=dtype)
        loss = diff * diff
        return self._reduce(loss)

    def backward(self, grad=None):
        """Gradient of the last forward's loss with respect to `pred`.

        Parameters
        ----------
        grad : float or array_like of pred's shape, optional
            Upstream gradient (None: 1.0, or ones for ``reduction='none'``).

        Returns
        -------
        ndarray of pred's shape and dtype
        """
        s = self._saved_or_raise()
        diff, dtype = s["diff"], s["dtype"]
        g = self._upstream(grad, diff.shape, dtype)
        return self._chain(2 * diff, g, dtype)
