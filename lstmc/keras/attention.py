"""Keras' attention layers: `Attention` (Luong: dot-product scores, or score_mode="concat")
and `AdditiveAttention` (Bahdanau), called on [query, value] or [query, value, key].

    scores  (B, Tq, Tv) = score(query (B, Tq, D), key (B, Tv, D))
    weights (B, Tq, Tv) = softmax(scores - 1e9 where the value mask (or the causal mask)
                          drops a step)
    output  (B, Tq, D)  = weights @ value, 0 at the steps the query mask drops

score: Attention "dot" q . k (times the trainable scalar `scale` with use_scale),
"concat" w * sum(tanh(scale * (q + k))); AdditiveAttention sum(scale * tanh(q + k)) with a
trainable vector `scale` (D,) (use_scale=True, its default). The output's mask is the
query's, as Keras (keras/src/layers/attention/attention.py). dropout drops attention weights
in training (lstmc's generator: Keras draws other masks). return_attention_scores=True adds
the weights (B, Tq, Tv) as a second output; use_causal_mask=True lets step i of the query
see steps j <= i only.
"""
import math

import numpy as np

from lstmc._random import generator
from lstmc.keras import graph
from lstmc.keras.layers import Layer, _float_input, _rate
from lstmc.nn.module import Parameter, to_numpy

__all__ = ["Attention", "AdditiveAttention"]

_BIG = 1.0e9   # Keras subtracts it from the scores of masked steps


class _BaseAttention(Layer):
    """The steps shared by both layers; subclasses give the score and its gradient."""

    def __init__(self, use_scale, dropout=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.use_scale = bool(use_scale)
        self.dropout = _rate(dropout, "dropout")
        self.seed = seed
        self._saved = None

    def __call__(self, inputs, mask=None, training=False, return_attention_scores=False,
                 use_causal_mask=False):
        options = {}
        if return_attention_scores:
            options["return_attention_scores"] = True
        if use_causal_mask:
            options["use_causal_mask"] = True
        if graph.is_symbolic(inputs):
            return graph.call_symbolic(self, inputs, options)
        out, _ = self.forward(inputs, mask, training, **options)
        return out if return_attention_scores else out[0]

    def _check_call(self, call):
        unknown = set(call.kwargs) - {"return_attention_scores", "use_causal_mask"}
        if not call.listed or call.n_state or unknown:
            raise ValueError(f"{self.name} must be called on [query, value] or [query, value, "
                             "key] (options: return_attention_scores, use_causal_mask)")

    def _check_shapes(self, shapes):
        if len(shapes) not in (2, 3):
            raise ValueError(f"{self.name} takes [query, value] or [query, value, key], got "
                             f"{len(shapes)} inputs")
        if any(len(s) != 2 for s in shapes):
            raise ValueError(f"{self.name}: inputs must be (batch, time, dim), got shapes "
                             f"{[(None,) + tuple(s) for s in shapes]}")
        q, v = shapes[0], shapes[1]
        k = shapes[2] if len(shapes) == 3 else v
        if None not in (q[-1], k[-1]) and q[-1] != k[-1]:
            raise ValueError(f"{self.name}: query and key must have the same last axis, got "
                             f"{q[-1]} and {k[-1]}")
        if None not in (v[0], k[0]) and v[0] != k[0]:
            raise ValueError(f"{self.name}: value and key must have the same number of "
                             f"steps, got {v[0]} and {k[0]}")

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        self._check_shapes(shapes)
        if not self.built:
            if shapes[0][-1] is None:
                raise ValueError(f"{self.name}: the last axis of the query must be known")
            self._build(shapes)
            self.built, self.built_shape = True, shapes
        return self

    def _param(self, name, value):
        p = Parameter(np.asarray(value, dtype=self.dtype))
        setattr(self, name, p)
        return p

    def _symbolic_outputs(self, shapes, call):
        self.build(shapes)
        out = [(tuple(self.compute_output_shape(shapes)), self.dtype.name)]
        if call.kwargs.get("return_attention_scores"):
            k = shapes[2] if len(shapes) == 3 else shapes[1]
            out.append(((shapes[0][0], k[0]), self.dtype.name))
        return out

    def _node_forward(self, xs, masks, training, call, logits=False):
        outs, mask = self.forward(xs, masks, training, **call.kwargs)
        return outs, [mask] + [None] * (len(outs) - 1)

    def _node_backward(self, dys, call, logits=False):
        return self.backward(*dys)

    def compute_mask(self, masks):
        return None if masks is None else masks[0]

    def compute_output_shape(self, input_shape):
        q, v = input_shape[0], input_shape[1]
        return tuple(q[:-1]) + (v[-1],)

    # ---- forward / backward ---------------------------------------------------------------
    def forward(self, inputs, mask=None, training=False, return_attention_scores=False,
                use_causal_mask=False):
        """[query, value(, key)] and their masks (B, T) or None -> ([output (, weights)],
        the output's mask)."""
        if not isinstance(inputs, (list, tuple)):
            raise ValueError(f"{self.name} takes [query, value] or [query, value, key], got "
                             f"{type(inputs).__name__}")
        xs = [_float_input(x, self) for x in inputs]
        self._check_shapes([x.shape[1:] for x in xs])
        if len({x.shape[0] for x in xs}) > 1:
            raise ValueError(f"{self.name}: the inputs must have the same batch size, got "
                             f"shapes {[x.shape for x in xs]}")
        self.build([x.shape[1:] for x in xs])
        masks = list(mask) if mask is not None else []
        masks += [None] * (len(xs) - len(masks))
        q, v = xs[0], xs[1]
        k = xs[2] if len(xs) == 3 else v
        q_mask, v_mask = (None if m is None else np.asarray(m, dtype=bool) for m in masks[:2])
        B, Tq, Tv = q.shape[0], q.shape[1], k.shape[1]
        scores, score_ctx = self._scores(q, k)
        keep = None
        if v_mask is not None:
            if v_mask.shape != (B, Tv):
                raise ValueError(f"{self.name}: the value mask must have shape {(B, Tv)}, "
                                 f"got {v_mask.shape}")
            keep = v_mask[:, None, :]
        if use_causal_mask:
            causal = np.tril(np.ones((Tq, Tv), dtype=bool))[None]
            keep = causal if keep is None else keep & causal
        if keep is not None:
            scores = np.where(keep, scores, scores - self.dtype.type(_BIG))
        weights = _softmax(scores)
        used, drop = weights, None
        if training and self.dropout > 0:
            keep_p = 1.0 - self.dropout
            drop = (generator().random(weights.shape) < keep_p).astype(self.dtype) / keep_p
            used = weights * drop
        out = used @ v
        if q_mask is not None:
            if q_mask.shape != (B, Tq):
                raise ValueError(f"{self.name}: the query mask must have shape {(B, Tq)}, "
                                 f"got {q_mask.shape}")
            out = out * q_mask[:, :, None]
        self._saved = _AttentionSaved(q, k, v, len(xs) == 3, weights, used, drop, q_mask,
                                      score_ctx)
        outs = [out] + ([weights] if return_attention_scores else [])
        return outs, q_mask

    def backward(self, dout, dweights=None):
        """Gradients of the output (and of the returned weights) -> [dquery, dvalue(,
        dkey)]; adds the scale's gradient to its parameter."""
        s = self._saved
        if s is None:
            raise RuntimeError(f"{self.name}: backward needs a forward first")
        dw = np.zeros_like(s.weights) if dweights is None else \
            to_numpy(dweights).astype(self.dtype, copy=False).copy()
        dv = np.zeros_like(s.v)
        if dout is not None:
            dout = to_numpy(dout).astype(self.dtype, copy=False)
            if s.q_mask is not None:
                dout = dout * s.q_mask[:, :, None]
            dused = dout @ s.v.transpose(0, 2, 1)
            dw += dused if s.drop is None else dused * s.drop
            dv = s.used.transpose(0, 2, 1) @ dout
        # softmax: ds = w (dw - sum(dw w)); the -1e9 shift of masked steps is a constant
        ds = s.weights * (dw - (dw * s.weights).sum(axis=-1, keepdims=True))
        dq, dk = self._scores_backward(ds, s.q, s.k, s.score_ctx)
        if s.has_key:
            return [dq, dv, dk]
        return [dq, dv + dk]


class _AttentionSaved:
    __slots__ = ("q", "k", "v", "has_key", "weights", "used", "drop", "q_mask", "score_ctx")

    def __init__(self, q, k, v, has_key, weights, used, drop, q_mask, score_ctx):
        self.q, self.k, self.v, self.has_key = q, k, v, has_key
        self.weights, self.used, self.drop, self.q_mask = weights, used, drop, q_mask
        self.score_ctx = score_ctx


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Attention(_BaseAttention):
    """Luong-style attention: scores q . k (score_mode="dot", the default), times a
    trainable scalar `scale` (initialised to 1) with use_scale; score_mode="concat" scores
    w * sum(tanh(scale * (q + k))) with a trainable scalar w (`concat_score_weight`, 1).
    Weights (Keras' order): scale (with use_scale), then concat_score_weight."""

    def __init__(self, use_scale=False, score_mode="dot", dropout=0.0, seed=None, **kwargs):
        super().__init__(use_scale, dropout, seed, **kwargs)
        if score_mode not in ("dot", "concat"):
            raise ValueError(f"score_mode must be 'dot' or 'concat', got {score_mode!r}")
        self.score_mode = score_mode

    def _build(self, shapes):
        if self.use_scale:
            self._param("scale", 1.0)
        if self.score_mode == "concat":
            self._param("concat_score_weight", 1.0)

    def _scale(self):
        return self.scale.data if self.use_scale else self.dtype.type(1)

    def _scores(self, q, k):
        scale = self._scale()
        if self.score_mode == "dot":
            raw = q @ k.transpose(0, 2, 1)
            return raw * scale, raw
        u = q[:, :, None, :] + k[:, None, :, :]          # (B, Tq, Tv, D)
        t = np.tanh(scale * u)
        return self.concat_score_weight.data * t.sum(axis=-1), (u, t)

    def _scores_backward(self, ds, q, k, ctx):
        scale = self._scale()
        if self.score_mode == "dot":
            if self.use_scale:
                self.scale.grad += (ds * ctx).sum()
            ds = ds * scale
            return ds @ k, ds.transpose(0, 2, 1) @ q
        u, t = ctx
        w = self.concat_score_weight
        w.grad += (ds * t.sum(axis=-1)).sum()
        du = (ds * w.data)[..., None] * (1 - t * t)      # d tanh(scale u)
        if self.use_scale:
            self.scale.grad += (du * u).sum()
        du = du * scale
        return du.sum(axis=2), du.sum(axis=1)

    get_weights = Layer._parameter_weights
    set_weights = Layer._set_parameter_weights

    def get_config(self):
        return {**super().get_config(), "use_scale": self.use_scale,
                "score_mode": self.score_mode, "dropout": self.dropout, "seed": self.seed}


class AdditiveAttention(_BaseAttention):
    """Bahdanau-style attention: scores sum(scale * tanh(q + k)) over the last axis, with a
    trainable `scale` (D,) (glorot_uniform) when use_scale (the default), else 1."""

    def __init__(self, use_scale=True, dropout=0.0, seed=None, **kwargs):
        super().__init__(use_scale, dropout, seed, **kwargs)

    def _build(self, shapes):
        if self.use_scale:
            D = shapes[0][-1]
            limit = math.sqrt(6.0 / (2 * D))   # glorot_uniform of a (D,) weight: fans D, D
            self._param("scale", generator().uniform(-limit, limit, D))

    def _scores(self, q, k):
        t = np.tanh(q[:, :, None, :] + k[:, None, :, :])   # (B, Tq, Tv, D)
        if self.use_scale:
            return (t * self.scale.data).sum(axis=-1), t
        return t.sum(axis=-1), t

    def _scores_backward(self, ds, q, k, t):
        dt = ds[..., None]
        if self.use_scale:
            self.scale.grad += (dt * t).sum(axis=(0, 1, 2))
            dt = dt * self.scale.data
        du = dt * (1 - t * t)
        return du.sum(axis=2), du.sum(axis=1)

    get_weights = Attention.get_weights
    set_weights = Attention.set_weights

    def get_config(self):
        return {**super().get_config(), "use_scale": self.use_scale, "dropout": self.dropout,
                "seed": self.seed}
