"""Keras-flavoured optimizers for `lstmc.models.Sequential.compile`: `Adam`, `SGD`,
`RMSprop` with Keras' argument names, defaults and update rules.

They are `lstmc.optim` optimizers (same state_dict, same in-place updates of the flat
parameter storage) created without parameters: `compile` binds them to the model's. Where
Keras' rule differs from PyTorch's it is written out here:
- Adam: Keras puts epsilon outside the bias correction of the second moment
  (w -= lr_t * m / (sqrt(v) + eps), lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)), default
  epsilon 1e-7: lstmc.optim.Adam's rule with its `_epsilon_hat` switch;
- RMSprop: w -= lr * g / sqrt(v + eps), rho 0.9, epsilon 1e-7;
- SGD: Keras' velocity form (v = momentum * v - lr * g) is PyTorch's rule for a constant
  learning rate, so it is lstmc.optim.SGD under Keras' names (lr default 0.01).
"""
import numpy as np

from lstmc import optim

__all__ = ["Adam", "SGD", "RMSprop", "get"]


class _KerasOptimizer:
    """Mixin: Keras' constructor (no parameters) and `build(params)` binding them later."""

    def _keras_init(self, defaults):
        self._defaults_pending = defaults
        self.built = False

    def build(self, params):
        if self.built:
            raise RuntimeError("this optimizer is already bound to a model's parameters; "
                               "create a new one for another model")
        optim.Optimizer.__init__(self, list(params), self._defaults_pending)
        self.built = True
        return self

    @property
    def learning_rate(self):
        if self.built:
            return self.param_groups[0]["lr"]
        return self._defaults_pending["lr"]

    @learning_rate.setter
    def learning_rate(self, value):
        if self.built:
            for g in self.param_groups:
                g["lr"] = float(value)
        else:
            self._defaults_pending["lr"] = float(value)

    def get_config(self):
        d = self.param_groups[0] if self.built else self._defaults_pending
        return {k: self._config_value(d[k]) for k in self._config_keys}

    @staticmethod
    def _config_value(v):
        return list(v) if isinstance(v, tuple) else v

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class Adam(_KerasOptimizer, optim.Adam):
    """keras.optimizers.Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
    amsgrad=False)."""

    _epsilon_hat = True
    _config_keys = ("lr", "betas", "eps", "amsgrad")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False):
        optim.Adam._check(learning_rate, (beta_1, beta_2), epsilon, 0)
        self._keras_init(dict(lr=float(learning_rate), betas=(float(beta_1), float(beta_2)),
                              eps=float(epsilon), weight_decay=0, amsgrad=bool(amsgrad),
                              maximize=False))

    def get_config(self):
        c = super().get_config()
        return {"learning_rate": c["lr"], "beta_1": c["betas"][0], "beta_2": c["betas"][1],
                "epsilon": c["eps"], "amsgrad": c["amsgrad"]}


class SGD(_KerasOptimizer, optim.SGD):
    """keras.optimizers.SGD(learning_rate=0.01, momentum=0.0, nesterov=False)."""

    _config_keys = ("lr", "momentum", "nesterov")

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False):
        if learning_rate < 0 or not 0 <= momentum <= 1:
            raise ValueError(f"SGD needs learning_rate >= 0 and momentum in [0, 1], got "
                             f"{learning_rate} and {momentum}")
        self._keras_init(dict(lr=float(learning_rate), momentum=float(momentum), dampening=0,
                              weight_decay=0, nesterov=bool(nesterov), maximize=False))

    def get_config(self):
        c = super().get_config()
        return {"learning_rate": c["lr"], "momentum": c["momentum"], "nesterov": c["nesterov"]}


class RMSprop(_KerasOptimizer, optim.RMSprop):
    """keras.optimizers.RMSprop(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
    centered=False)."""

    _config_keys = ("lr", "alpha", "momentum", "eps", "centered")

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False):
        optim.RMSprop._check(learning_rate, rho, epsilon, 0, momentum)
        self._keras_init(dict(lr=float(learning_rate), alpha=float(rho), eps=float(epsilon),
                              weight_decay=0, momentum=float(momentum),
                              centered=bool(centered), maximize=False))

    def get_config(self):
        c = super().get_config()
        return {"learning_rate": c["lr"], "rho": c["alpha"], "momentum": c["momentum"],
                "epsilon": c["eps"], "centered": c["centered"]}

    def _update(self, p, group, state):
        lr, rho, eps = float(group["lr"]), float(group["alpha"]), float(group["eps"])
        momentum = float(group["momentum"])
        self._begin_step(p, group, state)
        tmp, tmp2 = self._work(p, 2)
        g, v = p.grad, state["square_avg"]
        v *= rho                            # v = rho v + (1 - rho) g^2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - rho
        v += tmp
        if group["centered"]:               # denominator v - avg_g^2 + eps
            a = state["grad_avg"]
            a *= rho
            a += (1 - rho) * g
            np.multiply(a, a, out=tmp)
            np.subtract(v, tmp, out=tmp)
        else:
            tmp[...] = v
        tmp += eps
        np.sqrt(tmp, out=tmp)               # increment = lr g / sqrt(v + eps)
        np.divide(g, tmp, out=tmp2)
        tmp2 *= lr
        if momentum > 0:
            buf = state["momentum_buffer"]
            buf *= momentum
            buf += tmp2
            p.data -= buf
        else:
            p.data -= tmp2


_BY_NAME = {"adam": Adam, "sgd": SGD, "rmsprop": RMSprop}


def get(identifier):
    """'adam' / 'sgd' / 'rmsprop' (Keras' defaults) or an optimizer instance (or one wrapped
    in lstmc.distributed.DistributedOptimizer)."""
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is None:
            raise ValueError(f"unknown optimizer {identifier!r}; known: {sorted(_BY_NAME)}")
        return cls()
    if isinstance(identifier, _KerasOptimizer):
        return identifier
    if isinstance(getattr(identifier, "wrapped", None), _KerasOptimizer):
        return identifier     # lstmc.distributed.DistributedOptimizer(Adam()), as Horovod's
    raise TypeError(f"optimizer must be a name ({sorted(_BY_NAME)}) or an lstmc.optimizers "
                    f"instance, got {type(identifier).__name__}")


def deserialize(class_name, config):
    return _BY_NAME[class_name.lower()](**config)
