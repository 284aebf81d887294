"""Gradient utilities, after torch.nn.utils."""
import math

import numpy as np

from lstmc.nn.module import Parameter


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scales the gradients of `parameters` in place so that their joint norm is at most
    `max_norm`, as torch.nn.utils.clip_grad_norm_ (coefficient max_norm / (norm + 1e-6),
    applied only when it is below 1). Returns the total norm before clipping (a float).

    A non-finite total norm raises RuntimeError with `error_if_nonfinite=True`; else, as in
    PyTorch, the gradients are scaled by its coefficient anyway (0 for an infinite norm, NaN
    for a NaN one), so the step that follows shows the problem instead of hiding it."""
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    norm_type = float(norm_type)
    if not grads:
        return 0.0
    if math.isinf(norm_type):
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in grads)
    else:
        total = float(sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type))
                          for g in grads) ** (1.0 / norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from "
                           f"`parameters` is non-finite ({total}), so it cannot be clipped. To "
                           "disable this error and scale the gradients by the non-finite norm "
                           "anyway, set `error_if_nonfinite=False`")
    coef = float(max_norm) / (total + 1e-6)
    if not coef >= 1:   # a NaN coefficient too, as PyTorch's clamp(max=1) passes it on
        with np.errstate(invalid="ignore"):   # inf * 0 is NaN, silently as in PyTorch
            for g in grads:
                g *= g.dtype.type(coef)
    return total
