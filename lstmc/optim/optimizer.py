"""Optimizers after torch.optim (single-tensor update rules, the same defaults and the same
hyper-parameter checks), over lstmc Parameters.

Every update is written into `p.data` in place: a module's parameters are views into its flat
storage, so the array object must never be rebound. `p.grad` is only read. Work arrays are
allocated once per dtype (sized to the largest parameter) and reused, so a step allocates
nothing but small view objects.
"""
import copy

import numpy as np

from lstmc.nn.module import Parameter, to_numpy

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop"]


class _Required:
    def __repr__(self):
        return "<required parameter>"


required = _Required()


def _check_param(p):
    if not isinstance(p, Parameter):
        raise TypeError(f"optimizer can only optimize lstmc Parameters, got {type(p).__name__}")
    if not np.issubdtype(p.data.dtype, np.floating):
        raise TypeError(f"optimizer can only optimize floating-point parameters, got "
                        f"{p.data.dtype}")
    return p


class Optimizer:
    """Base class: `param_groups` (list of dicts with "params" and the hyper-parameters),
    `state` (dict Parameter -> dict of numpy arrays / numbers), `step()`, `zero_grad()`,
    `state_dict()`, `load_state_dict()`, `add_param_group()`."""

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}
        self.param_groups = []
        self._work_arrays = {}
        if isinstance(params, (Parameter, np.ndarray)) or hasattr(params, "detach"):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            f"Parameters or dicts, but got {type(params).__name__}")
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)

    def add_param_group(self, param_group):
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        param_group = dict(param_group)
        params = param_group.get("params")
        if params is None:
            raise ValueError("param group must have a 'params' entry")
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of sets changes between runs; use a list instead")
        params = [_check_param(p) for p in params]
        if len({id(p) for p in params}) != len(params):
            raise ValueError("optimizer contains a parameter group with duplicate parameters")
        param_group["params"] = params
        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError("parameter group didn't specify a value of required "
                                 f"optimization parameter {name}")
            param_group.setdefault(name, default)
        seen = {id(p) for group in self.param_groups for p in group["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        self._validate_group(param_group)
        self.param_groups.append(param_group)

    def _validate_group(self, group):
        """Subclasses check a group's hyper-parameters (ValueError like torch)."""

    def zero_grad(self, set_to_none=False):
        """Sets every gradient to 0 in place (`set_to_none` is accepted for torch
        compatibility and ignored: lstmc gradients are views into the module's storage)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad[...] = 0

    def step(self, closure=None):
        loss = None
        if closure is not None:
            loss = closure()
        for group in self.param_groups:
            self._check_group_values(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.shape != p.data.shape:
                    raise ValueError(f"gradient shape {p.grad.shape} does not match the "
                                     f"parameter's {p.data.shape}")
                p.release()   # before writing: see lstmc.nn._engine.PackedWeights
                self._update(p, group, self.state.setdefault(p, {}))
        return loss

    def _check_group_values(self, group):
        pass

    def _update(self, p, group, state):
        raise NotImplementedError

    # ---- scratch space ------------------------------------------------------------------
    def _work(self, p, count):
        """`count` scratch arrays shaped like `p.data` (views of buffers kept per dtype)."""
        dtype = p.data.dtype
        n = p.data.size
        bufs = self._work_arrays.get(dtype)
        if bufs is None or len(bufs) < count or bufs[0].size < n:
            size = max(n, bufs[0].size if bufs else 0)
            bufs = [np.empty(size, dtype=dtype) for _ in range(max(count, len(bufs or ())))]
            self._work_arrays[dtype] = bufs
        return [b[:n].reshape(p.data.shape) for b in bufs[:count]]

    def _effective_grad(self, p, weight_decay, maximize, out):
        """grad (negated if maximize) + weight_decay * param, torch's order; `out` is only
        written if something has to be computed."""
        g = p.grad
        if weight_decay != 0:
            np.multiply(p.data, weight_decay, out=out)
            if maximize:
                np.subtract(out, g, out=out)
            else:
                np.add(out, g, out=out)
            return out
        if maximize:
            np.negative(g, out=out)
            return out
        return g

    # ---- state --------------------------------------------------------------------------
    def state_dict(self):
        """{"state": {index: {name: copy}}, "param_groups": [{..., "params": [indices]}]},
        torch's layout, parameters numbered in group order; arrays are numpy copies."""
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            ids = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state and self.state[p]:
                    state[index[id(p)]] = {
                        k: (v.copy() if isinstance(v, np.ndarray) else copy.deepcopy(v))
                        for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Loads a `state_dict()` (ours or a torch optimizer's of the same layout): the
        hyper-parameters of each group and copies of the per-parameter state."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for mine, theirs in zip(self.param_groups, groups):
            if len(mine["params"]) != len(theirs["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 "match the size of optimizer's group")
        saved_state = state_dict["state"]
        new_state = {}
        for mine, theirs in zip(self.param_groups, groups):
            for p, key in zip(mine["params"], theirs["params"]):
                entry = saved_state.get(key, saved_state.get(str(key)))
                if entry is None:
                    continue
                loaded = {}
                for name, value in entry.items():
                    if value is None:
                        loaded[name] = None
                    elif name == "step":
                        loaded[name] = int(round(float(to_numpy(value))))
                    else:
                        arr = to_numpy(value)
                        if arr.shape != p.data.shape:
                            raise ValueError(f"state {name!r} has shape {arr.shape}, the "
                                             f"parameter {p.data.shape}")
                        loaded[name] = np.array(arr, dtype=p.data.dtype, copy=True)
                new_state[p] = loaded
        new_groups = []
        for mine, theirs in zip(self.param_groups, groups):
            group = {k: copy.deepcopy(v) for k, v in theirs.items() if k != "params"}
            group["params"] = mine["params"]
            new_groups.append(group)
        for group in new_groups:
            self._validate_group(group)
        self.param_groups[:] = new_groups
        self.state = new_state


def _check_nonneg(name, value):
    if not 0.0 <= value:
        raise ValueError(f"Invalid {name}: {value}")


class SGD(Optimizer):
    """torch.optim.SGD: weight decay, momentum with dampening, Nesterov, maximize."""

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False):
        _check_nonneg("learning rate", lr)
        _check_nonneg("momentum value", momentum)
        _check_nonneg("weight_decay value", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _validate_group(self, g):
        _check_nonneg("learning rate", g["lr"])
        _check_nonneg("momentum value", g["momentum"])
        _check_nonneg("weight_decay value", g["weight_decay"])
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _update(self, p, group, state):
        lr = float(group["lr"])
        momentum = float(group["momentum"])
        dampening = float(group["dampening"])
        gbuf, tmp = self._work(p, 2)
        grad = self._effective_grad(p, float(group["weight_decay"]), group["maximize"], gbuf)
        update = grad
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(grad, copy=True)
            else:
                buf *= momentum
                if dampening != 0:
                    np.multiply(grad, 1 - dampening, out=tmp)
                    buf += tmp
                else:
                    buf += grad
            if group["nesterov"]:
                np.multiply(buf, momentum, out=tmp)
                tmp += grad
                update = tmp
            else:
                update = buf
        np.multiply(update, lr, out=tmp)
        p.data -= tmp


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient), AMSGrad, maximize."""

    _decoupled = False
    # Keras' Adam adds epsilon to sqrt(v) before the bias correction (Kingma & Ba's
    # "epsilon hat"): the same rule with epsilon divided by sqrt(1 - beta2^t)
    _epsilon_hat = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, maximize=False):
        self._check(lr, betas, eps, weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    @staticmethod
    def _check(lr, betas, eps, weight_decay):
        _check_nonneg("learning rate", lr)
        _check_nonneg("epsilon value", eps)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        _check_nonneg("weight_decay value", weight_decay)

    def _validate_group(self, g):
        g["betas"] = tuple(g["betas"])
        self._check(g["lr"], g["betas"], g["eps"], g["weight_decay"])

    def _update(self, p, group, state):
        lr = float(group["lr"])
        beta1, beta2 = (float(b) for b in group["betas"])
        eps = float(group["eps"])
        weight_decay = float(group["weight_decay"])
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        step = state["step"]
        gbuf, tmp = self._work(p, 2)
        if self._decoupled:
            if weight_decay != 0:
                p.data *= 1 - lr * weight_decay
            grad = self._effective_grad(p, 0.0, group["maximize"], gbuf)
        else:
            grad = self._effective_grad(p, weight_decay, group["maximize"], gbuf)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        # exp_avg.lerp_(grad, 1 - beta1)
        np.subtract(grad, exp_avg, out=tmp)
        tmp *= 1 - beta1
        exp_avg += tmp
        # exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad**2
        exp_avg_sq *= beta2
        np.multiply(grad, grad, out=tmp)
        tmp *= 1 - beta2
        exp_avg_sq += tmp
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        step_size = lr / bias_correction1
        if group["amsgrad"]:
            max_sq = state.get("max_exp_avg_sq")
            if max_sq is None:
                max_sq = state["max_exp_avg_sq"] = np.zeros_like(p.data)
            np.maximum(max_sq, exp_avg_sq, out=max_sq)
            np.sqrt(max_sq, out=tmp)
        else:
            np.sqrt(exp_avg_sq, out=tmp)
        tmp /= bias_correction2_sqrt
        tmp += eps / bias_correction2_sqrt if self._epsilon_hat else eps
        np.divide(exp_avg, tmp, out=tmp)
        tmp *= step_size
        p.data -= tmp


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (param *= 1 - lr * wd)."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)


class RMSprop(Optimizer):
    """torch.optim.RMSprop: weight decay, momentum, centered, maximize."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, *, maximize=False):
        self._check(lr, alpha, eps, weight_decay, momentum)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered,
                                      maximize=maximize))

    @staticmethod
    def _check(lr, alpha, eps, weight_decay, momentum):
        _check_nonneg("learning rate", lr)
        _check_nonneg("epsilon value", eps)
        _check_nonneg("momentum value", momentum)
        _check_nonneg("weight_decay value", weight_decay)
        _check_nonneg("alpha value", alpha)

    def _validate_group(self, g):
        self._check(g["lr"], g["alpha"], g["eps"], g["weight_decay"], g["momentum"])

    @staticmethod
    def _begin_step(p, group, state):
        """Creates the state on the first step (square_avg, and momentum_buffer / grad_avg
        when used) and counts the step."""
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(p.data)
            if group["momentum"] > 0:
                state["momentum_buffer"] = np.zeros_like(p.data)
            if group["centered"]:
                state["grad_avg"] = np.zeros_like(p.data)
        state["step"] += 1

    def _update(self, p, group, state):
        lr = float(group["lr"])
        alpha = float(group["alpha"])
        eps = float(group["eps"])
        momentum = float(group["momentum"])
        self._begin_step(p, group, state)
        gbuf, tmp = self._work(p, 2)
        grad = self._effective_grad(p, float(group["weight_decay"]), group["maximize"], gbuf)
        square_avg = state["square_avg"]
        square_avg *= alpha
        np.multiply(grad, grad, out=tmp)
        tmp *= 1 - alpha
        square_avg += tmp
        if group["centered"]:
            grad_avg = state.get("grad_avg")
            if grad_avg is None:
                grad_avg = state["grad_avg"] = np.zeros_like(p.data)
            # grad_avg.lerp_(grad, 1 - alpha)
            np.subtract(grad, grad_avg, out=tmp)
            tmp *= 1 - alpha
            grad_avg += tmp
            np.multiply(grad_avg, grad_avg, out=tmp)
            np.subtract(square_avg, tmp, out=tmp)
            np.sqrt(tmp, out=tmp)
        else:
            np.sqrt(square_avg, out=tmp)
        tmp += eps
        np.divide(grad, tmp, out=tmp)
        if momentum > 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.zeros_like(p.data)
            buf *= momentum
            buf += tmp
            np.multiply(buf, lr, out=tmp)
        else:
            tmp *= lr
        p.data -= tmp
