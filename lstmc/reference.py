"""Float64 NumPy reference LSTM, GRU and simple RNN: the specification of every lstmc kernel.

This module is the spec (docs/spec.md §7). It is written to be read, not to be fast:
every C kernel is tested against it, and it is itself tested against central finite
differences and, when installed, against ``torch.nn.LSTM`` / ``GRU`` / ``RNN``. If a kernel
and this file disagree, the kernel is wrong.

Dimension letters: T = time, B = batch, I = input features, H = hidden (cell) size,
P = projection size, H_out = P if P > 0 else H, G = gates (4H LSTM, 3H GRU, H RNN),
D = directions (1 or 2), L = layers. Arrays are time-major; rows are batch entries, so a
layer computes ``x W^T``. Gate blocks are in PyTorch order.

LSTM, blocks i, f, g, o::

    i = sigmoid(x W_ii^T + b_ii + h W_hi^T + b_hi)     (likewise f, o)
    g = tanh(x W_ig^T + b_ig + h W_hg^T + b_hg)
    c' = f * c + i * g
    h' = o * tanh(c')                (P == 0)
    h' = (o * tanh(c')) W_hr^T       (P > 0; h has P features, c has H)

GRU, blocks r, z, n (W_hr here is the reset block of ``weight_hh``, not a projection)::

    r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)     (likewise z)
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))  reset_after=True: torch.nn.GRU, cuDNN,
                                                       Keras reset_after=True, ONNX lbr=1
    n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn)  reset_after=False: Keras
                                                       reset_after=False, ONNX lbr=0
    h' = (1 - z) * n + z * h

Simple RNN (Elman), one block::

    h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)        act = tanh or relu, relu'(0) = 0 (torch)

Cell options (ONNX's LSTM / GRU / RNN attributes; csrc/lstmc.h lstmc_cell_options):

- ``activations``: one (name, alpha, beta) per slot (see :func:`activation`), LSTM f, g, h
  (f for i, f, o; g for the candidate; h of c in ``h' = o * h(c')``), GRU f, g (f for r, z;
  g for n), RNN f. None: the defaults (sigmoid, tanh, tanh / sigmoid, tanh / tanh).
- ``clip``: every gate pre-activation (bias and peephole terms included) is clamped to
  [-clip, clip] before its activation; c itself is not (as ONNX Runtime). The clamp's
  gradient is 1 inside, 0 where it clamped (|pre| >= clip).
- LSTM ``w_ph`` (3, H), peepholes p_i, p_f, p_o (PyTorch-style parameter ``peephole_l{k}``;
  ONNX's P holds them in the order i, o, f)::

    i = f(z_i + p_i * c)      f = f(z_f + p_f * c)      o = f(z_o + p_o * c')

- LSTM ``input_forget``: f = 1 - i (the f block of the weights is unused).

The backward covers LSTM peepholes and clip with the default activations.

Recurrent dropout (``recurrent_mask``, Keras' ``recurrent_dropout``): one (B, H_out) mask per
gate block, (G, B, H_out) in PyTorch block order (LSTM i, f, g, o; GRU r, z, n; RNN one),
drawn once per sequence and used at every step (already scaled by 1/(1-p)). Block g's
recurrent product reads ``h * m_g`` in place of h, and nothing else does::

    LSTM   z_k = x W_ik^T + b_ik + (h * m_k) W_hk^T + b_hk       k = i, f, g, o
    GRU    r, z likewise; n reads h * m_n: r * ((h * m_n) W_hn^T + b_hn) (reset_after) or
           (r * (h * m_n)) W_hn^T + b_hn (reset before); h' = (1 - z) * n + z * h, unmasked
    RNN    h' = act(x W_ih^T + b_ih + (h * m) W_hh^T + b_hh)

This is Keras 3's cells exactly (LSTMCell / GRUCell with recurrent_dropout run their
``implementation=1``: one mask per gate, h_tm1_i .. h_tm1_o; GRU's interpolation uses the
unmasked h_tm1; SimpleRNNCell one mask on prev_output). The gradient of h so flows through each
block's mask: dh = sum_k (dz_k W_hk) * m_k (+ GRU's direct terms).

Sequences: all three cells run through one driver (:func:`_sequence_forward`,
:func:`_sequence_backward`); only the step functions differ. Variable lengths follow PyTorch
packed sequences: row b uses steps 0..len_b-1, the reverse direction runs over that valid
prefix reversed, outputs at padding are 0, and the final states (h_n, and c_n for the LSTM)
are the state after each row's last valid step (the initial state when len_b == 0). Padding
rows are never computed at all (only the active rows of a step enter the cell), so padding
values of ``x`` and ``dout`` cannot leak into anything, not even as NaN * 0.

Quantized inference (``lstmc.quantize``, being built): :func:`quantize_int8`,
:func:`int8_product`, :func:`bf16_round` and :func:`bf16_product` fix how weights and
activations round and in what order a product sums, which every int8 / bf16 kernel follows;
a quantized model's forward is the float one on :func:`quantized_params` with the
``quantize=`` option of :func:`activation_quantizer`.
"""

from typing import Callable, NamedTuple

import numpy as np

__all__ = [
    "sigmoid",
    "activation",
    "ACTIVATION_DEFAULTS",
    "lstm_cell_forward",
    "lstm_cell_backward",
    "gru_cell_forward",
    "gru_cell_backward",
    "rnn_cell_forward",
    "rnn_cell_backward",
    "lstm_forward",
    "lstm_backward",
    "gru_forward",
    "gru_backward",
    "rnn_forward",
    "rnn_backward",
    "INT8_LIMIT",
    "INT8_TINY",
    "quantize_int8",
    "int8_product",
    "bf16_round",
    "bf16_product",
    "QUANTIZED_DTYPES",
    "quantized_params",
    "activation_quantizer",
]


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _f64_or_none(a):
    return None if a is None else _f64(a)


def _q(quantize, a, role):
    """What a product reads of activation `a`: `a`, or its quantized values."""
    return a if quantize is None else _f64(quantize(a, role))


def _affine(a, w, b):
    """a W^T + b for a batch of rows a (B, K), w (N, K), b (N,) or None."""
    y = a @ w.T
    return y if b is None else y + b


def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x)), overflow-free and accurate in both tails.

    Parameters
    ----------
    x : ndarray
        Any shape, float64. NaN stays NaN.

    Returns
    -------
    ndarray
        Same shape as ``x``.
    """
    # exp(-|x|) <= 1 never overflows; the x < 0 branch keeps full relative precision for tiny values
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# ONNX's activation functions (lower-case names): which of alpha, beta each reads and their
# defaults, those of the ONNX operator of the same name (Affine: the retired operator's 1, 0;
# ScaledTanh's operator defined none: None, so both must be given)
ACTIVATION_DEFAULTS = {
    "relu": (), "tanh": (), "sigmoid": (), "softsign": (), "softplus": (),
    "affine": (("alpha", 1.0), ("beta", 0.0)),
    "leakyrelu": (("alpha", 0.01),),
    "thresholdedrelu": (("alpha", 1.0),),
    "scaledtanh": (("alpha", None), ("beta", None)),
    "hardsigmoid": (("alpha", 0.2), ("beta", 0.5)),
    "elu": (("alpha", 1.0),),
}


def activation(name, x, alpha=None, beta=None):
    """ONNX's activation function `name` (lower case, a key of ACTIVATION_DEFAULTS) of x.

    relu max(0, x); tanh; sigmoid; affine alpha x + beta; leakyrelu x >= 0 ? x : alpha x;
    thresholdedrelu x >= alpha ? x : 0; scaledtanh alpha tanh(beta x); hardsigmoid
    min(max(alpha x + beta, 0), 1); elu x >= 0 ? x : alpha (e^x - 1); softsign x / (1 + |x|);
    softplus log(1 + e^x). NaN stays NaN.
    """
    x = _f64(x)
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "sigmoid":
            return sigmoid(x)
        if name == "tanh":
            return np.tanh(x)
        if name == "relu":
            return np.where(x < 0, 0.0, x)
        if name == "affine":
            return alpha * x + beta
        if name == "leakyrelu":
            return np.where(x < 0, alpha * x, x)
        if name == "thresholdedrelu":
            return np.where(x < alpha, 0.0, x)
        if name == "scaledtanh":
            return alpha * np.tanh(beta * x)
        if name == "hardsigmoid":
            y = alpha * x + beta
            return np.where(y < 0, 0.0, np.where(y > 1, 1.0, y))
        if name == "elu":
            return np.where(x < 0, alpha * np.expm1(np.minimum(x, 0.0)), x)
        if name == "softsign":
            return x / (1 + np.abs(x))
        if name == "softplus":
            return np.logaddexp(0.0, x)
    raise ValueError(f"activation: unknown function {name!r}; expected one of "
                     f"{sorted(ACTIVATION_DEFAULTS)}")


def _slots(activations, defaults):
    """Callables, one per slot, of `activations` ((name, alpha, beta) per slot, or None)."""
    if activations is None:
        activations = [(name, None, None) for name in defaults]
    if len(activations) != len(defaults):
        raise ValueError(f"activations: expected {len(defaults)} (name, alpha, beta), got "
                         f"{len(activations)}")
    return [lambda x, a=tuple(a): activation(a[0], x, a[1], a[2]) for a in activations]


def _is_default(activations, defaults):
    return activations is None or [a[0] for a in activations] == list(defaults)


def _clip(z, clip):
    """z clamped to [-clip, clip] (clip None: z), and where the clamp lets the gradient
    through (None without clip)."""
    if clip is None:
        return z, None
    return np.clip(z, -clip, clip), np.abs(z) < clip


def _through(dz, kept):
    return dz if kept is None else dz * kept


def _recurrent_reads(h, mask, G, quantize):
    """What each of the G gate blocks' recurrent products reads of h: G times h, or h times
    each block's recurrent dropout mask (G, B, H_out)."""
    if mask is None:
        return [h] * G
    mask = _f64(mask)
    if mask.shape != (G,) + h.shape:
        raise ValueError(f"recurrent_mask: expected shape {(G,) + h.shape}, got {mask.shape}")
    if quantize is not None:
        raise ValueError("recurrent_mask: recurrent dropout is a training option; quantized "
                         "inference has none")
    return [h * mask[g] for g in range(G)]


def _blocks_product(reads, w):
    """(B, G*H): block g is reads[g] W_g^T (w: (G*H, K), blocks of H rows)."""
    H = w.shape[0] // len(reads)
    return np.concatenate([a @ w[g * H:(g + 1) * H].T for g, a in enumerate(reads)], axis=1)


def _blocks_back(dz, w, reads, mask):
    """Gradients of _blocks_product: (d reads summed into dh, dW): dh = sum_g (dz_g W_g) *
    m_g, dW_g = dz_g^T reads[g]."""
    G = len(reads)
    H = w.shape[0] // G
    dw = np.concatenate([dz[:, g * H:(g + 1) * H].T @ reads[g] for g in range(G)], axis=0)
    if mask is None:
        return dz @ w, dw
    mask = _f64(mask)
    dh = sum((dz[:, g * H:(g + 1) * H] @ w[g * H:(g + 1) * H]) * mask[g] for g in range(G))
    return dh, dw


# ----------------------------------------------------------------------------------------------
# one step


def lstm_cell_forward(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, w_ph=None,
                      clip=None, input_forget=False, activations=None, quantize=None,
                      recurrent_mask=None):
    """One LSTM step for a batch.

    Parameters
    ----------
    x : ndarray, shape (B, I)
    h : ndarray, shape (B, H_out), or None for zeros
    c : ndarray, shape (B, H), or None for zeros
    w_ih : ndarray, shape (4H, I)
    w_hh : ndarray, shape (4H, H_out)
    b_ih, b_hh : ndarray, shape (4H,), or None for no bias
    w_hr : ndarray, shape (P, H), or None for no projection
    w_ph : ndarray, shape (3, H), or None: peepholes p_i, p_f, p_o
    clip : float >= 0 or None: the gate pre-activations' clamp
    input_forget : bool: f = 1 - i
    activations : None or 3 (name, alpha, beta): slots f, g, h (see :func:`activation`)
    quantize : None, or ``quantize(a, role)``: the values a product reads in place of an
        activation ``a`` (role "x" for the layer's input, "h" for the recurrent state) in
        quantized inference (:func:`activation_quantizer`); the weights come quantized already
        (:func:`quantized_params`). Forward only.
    recurrent_mask : None or ndarray, shape (4, B, H_out)
        Recurrent dropout: gate block k's product reads h * recurrent_mask[k] (i, f, g, o).

    Returns
    -------
    h1 : ndarray, shape (B, H_out)
    c1 : ndarray, shape (B, H)
    cache : dict
        Everything :func:`lstm_cell_backward` needs (post-activation gates, inputs, weights).
    """
    x, w_ih, w_hh = _f64(x), _f64(w_ih), _f64(w_hh)
    B, H = x.shape[0], w_hh.shape[0] // 4
    h = np.zeros((B, w_hh.shape[1])) if h is None else _f64(h)
    c = np.zeros((B, H)) if c is None else _f64(c)
    b_ih = None if b_ih is None else _f64(b_ih)
    b_hh = None if b_hh is None else _f64(b_hh)
    w_hr = None if w_hr is None else _f64(w_hr)
    w_ph = None if w_ph is None else _f64(w_ph)
    act_f, act_g, act_h = _slots(activations, ("sigmoid", "tanh", "tanh"))

    if recurrent_mask is None:
        reads = None
        z = _q(quantize, x, "x") @ w_ih.T + _q(quantize, h, "h") @ w_hh.T  # (B, 4H) pre-acts
    else:  # recurrent dropout: each block reads h times its own mask
        reads = _recurrent_reads(h, recurrent_mask, 4, quantize)
        z = x @ w_ih.T + _blocks_product(reads, w_hh)
    if b_ih is not None:
        z = z + b_ih
    if b_hh is not None:
        z = z + b_hh
    z_i, z_f, z_g, z_o = (z[:, k * H:(k + 1) * H] for k in range(4))
    if w_ph is not None:  # i and f peep at c, o at c1 (below)
        z_i, z_f = z_i + w_ph[0] * c, z_f + w_ph[1] * c
    z_i, kept_i = _clip(z_i, clip)
    z_f, kept_f = _clip(z_f, clip)
    z_g, kept_g = _clip(z_g, clip)
    i = act_f(z_i)
    f = 1.0 - i if input_forget else act_f(z_f)
    g = act_g(z_g)
    c1 = f * c + i * g
    if w_ph is not None:
        z_o = z_o + w_ph[2] * c1
    z_o, kept_o = _clip(z_o, clip)
    o = act_f(z_o)
    tc = act_h(c1)
    m = o * tc  # (B, H): the unprojected hidden state
    h1 = m if w_hr is None else m @ w_hr.T
    cache = dict(x=x, h=h, c=c, c1=c1, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr,
                 w_ph=w_ph, i=i, f=f, g=g, o=o, tc=tc, m=m, kept=(kept_i, kept_f, kept_g, kept_o),
                 reads=reads, rmask=recurrent_mask,
                 trainable=not input_forget and _is_default(activations,
                                                            ("sigmoid", "tanh", "tanh")))
    return h1, c1, cache


def lstm_cell_backward(cache, dh1, dc1):
    """Gradients of one LSTM step.

    Parameters
    ----------
    cache : dict
        From :func:`lstm_cell_forward`.
    dh1 : ndarray, shape (B, H_out), or None for zeros
        Gradient of the loss w.r.t. ``h1``.
    dc1 : ndarray, shape (B, H), or None for zeros
        Gradient of the loss w.r.t. ``c1`` coming from outside this step (e.g. the next step).

    Returns
    -------
    dx : ndarray, shape (B, I)
    dh : ndarray, shape (B, H_out)
    dc : ndarray, shape (B, H)
    grads : dict
        ``w_ih`` (4H, I), ``w_hh`` (4H, H_out), and ``b_ih``, ``b_hh`` (4H,), ``w_hr`` (P, H),
        ``w_ph`` (3, H) for exactly those of them that were given (not None) to the forward
        call.
    """
    if not cache["trainable"]:
        raise NotImplementedError("lstm_cell_backward: input_forget and activations other "
                                  "than the defaults have no backward")
    x, h, c = cache["x"], cache["h"], cache["c"]
    i, f, g, o, tc, m = (cache[k] for k in ("i", "f", "g", "o", "tc", "m"))
    w_hr = cache["w_hr"]
    dh1 = np.zeros((x.shape[0], cache["w_hh"].shape[1])) if dh1 is None else _f64(dh1)
    dc1 = np.zeros_like(c) if dc1 is None else _f64(dc1)
    grads = {}

    # h1 = m W_hr^T  =>  dm = dh1 W_hr,  dW_hr = dh1^T m
    if w_hr is None:
        dm = dh1
    else:
        dm = dh1 @ w_hr
        grads["w_hr"] = dh1.T @ m
    kept_i, kept_f, kept_g, kept_o = cache["kept"]
    w_ph = cache["w_ph"]
    # m = o * tanh(c1): c1 gets its direct gradient plus the path through h1
    do = dm * tc
    dz_o = _through(do * o * (1.0 - o), kept_o)
    dc1 = dc1 + dm * o * (1.0 - tc * tc)
    if w_ph is not None:  # o = sigmoid(.. + p_o * c1)
        dc1 = dc1 + dz_o * w_ph[2]
    # c1 = f * c + i * g
    di, df, dg, dc = dc1 * g, dc1 * c, dc1 * i, dc1 * f
    # through the activations, from the stored outputs: sigmoid' = y(1-y), tanh' = 1-y^2
    dz_i = _through(di * i * (1.0 - i), kept_i)
    dz_f = _through(df * f * (1.0 - f), kept_f)
    dz_g = _through(dg * (1.0 - g * g), kept_g)
    if w_ph is not None:  # i, f = sigmoid(.. + p * c)
        dc = dc + dz_i * w_ph[0] + dz_f * w_ph[1]
        grads["w_ph"] = np.stack([(dz_i * c).sum(axis=0), (dz_f * c).sum(axis=0),
                                  (dz_o * cache["c1"]).sum(axis=0)])
    dz = np.concatenate([dz_i, dz_f, dz_g, dz_o], axis=1)  # (B, 4H)
    # z = x W_ih^T + h W_hh^T + b_ih + b_hh
    dx = dz @ cache["w_ih"]
    if cache["reads"] is None:
        dh = dz @ cache["w_hh"]
        grads["w_hh"] = dz.T @ h
    else:  # through each block's recurrent dropout mask
        dh, grads["w_hh"] = _blocks_back(dz, cache["w_hh"], cache["reads"], cache["rmask"])
    grads["w_ih"] = dz.T @ x
    if cache["b_ih"] is not None:
        grads["b_ih"] = dz.sum(axis=0)
    if cache["b_hh"] is not None:
        grads["b_hh"] = dz.sum(axis=0)
    return dx, dh, dc, grads


def gru_cell_forward(x, h, w_ih, w_hh, b_ih=None, b_hh=None, reset_after=True, clip=None,
                     activations=None, quantize=None, recurrent_mask=None):
    """One GRU step for a batch.

    Parameters
    ----------
    x : ndarray, shape (B, I)
    h : ndarray, shape (B, H), or None for zeros
    w_ih : ndarray, shape (3H, I)
    w_hh : ndarray, shape (3H, H)
    b_ih, b_hh : ndarray, shape (3H,), or None for no bias
    reset_after : bool
        True: the reset gate multiplies ``h W_hn^T + b_hn`` (torch.nn.GRU). False: it
        multiplies ``h`` before the product (Keras reset_after=False).
    clip : float >= 0 or None: the gate pre-activations' clamp (forward only)
    activations : None or 2 (name, alpha, beta): slots f (r, z), g (n) (forward only)
    recurrent_mask : None or ndarray, shape (3, B, H)
        Recurrent dropout: block k's product reads h * recurrent_mask[k] (r, z, n; reset
        before: n's reads r * (h * recurrent_mask[2])); h1's z * h keeps the unmasked h.

    Returns
    -------
    h1 : ndarray, shape (B, H)
    cache : dict
        Everything :func:`gru_cell_backward` needs.
    """
    x, w_ih, w_hh = _f64(x), _f64(w_ih), _f64(w_hh)
    B, H = x.shape[0], w_hh.shape[1]
    h = np.zeros((B, H)) if h is None else _f64(h)
    b_ih, b_hh = _f64_or_none(b_ih), _f64_or_none(b_hh)
    w_hrz, w_hn = w_hh[:2 * H], w_hh[2 * H:]
    b_hrz, b_hn = (None, None) if b_hh is None else (b_hh[:2 * H], b_hh[2 * H:])

    act_f, act_g = _slots(activations, ("sigmoid", "tanh"))

    gi = _affine(_q(quantize, x, "x"), w_ih, b_ih)  # (B, 3H) input part of all three blocks
    reads = None if recurrent_mask is None else _recurrent_reads(h, recurrent_mask, 3, quantize)
    if reads is None:
        gh_rz = _affine(_q(quantize, h, "h"), w_hrz, b_hrz)  # (B, 2H) recurrent part of r, z
    else:  # recurrent dropout: r and z read h times their own masks
        gh_rz = _blocks_product(reads[:2], w_hrz)
        gh_rz = gh_rz if b_hrz is None else gh_rz + b_hrz
    r = act_f(_clip(gi[:, 0 * H:1 * H] + gh_rz[:, 0 * H:1 * H], clip)[0])
    z = act_f(_clip(gi[:, 1 * H:2 * H] + gh_rz[:, 1 * H:2 * H], clip)[0])
    # the two variants differ only in what the candidate's recurrent product reads
    h_n = h if reads is None else reads[2]  # h as n's product reads it
    hn_in = h_n if reset_after else r * h_n  # (B, H)
    gh_n = _affine(_q(quantize, hn_in, "h"), w_hn, b_hn)  # (B, H)
    n = act_g(_clip(gi[:, 2 * H:3 * H] + (r * gh_n if reset_after else gh_n), clip)[0])
    h1 = (1.0 - z) * n + z * h
    cache = dict(x=x, h=h, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, reset_after=reset_after,
                 r=r, z=z, n=n, hn_in=hn_in, gh_n=gh_n, reads=reads,
                 rmask=None if recurrent_mask is None else _f64(recurrent_mask),
                 trainable=clip is None and _is_default(activations, ("sigmoid", "tanh")))
    return h1, cache


def gru_cell_backward(cache, dh1):
    """Gradients of one GRU step.

    Parameters
    ----------
    cache : dict
        From :func:`gru_cell_forward`.
    dh1 : ndarray, shape (B, H), or None for zeros
        Gradient of the loss w.r.t. ``h1``.

    Returns
    -------
    dx : ndarray, shape (B, I)
    dh : ndarray, shape (B, H)
    grads : dict
        ``w_ih`` (3H, I), ``w_hh`` (3H, H), and ``b_ih``, ``b_hh`` (3H,) for exactly those
        biases that were given (not None) to the forward call.
    """
    if not cache["trainable"]:
        raise NotImplementedError("gru_cell_backward: clip and activations other than the "
                                  "defaults have no backward")
    x, h, r, z, n, hn_in, gh_n = (cache[k] for k in ("x", "h", "r", "z", "n", "hn_in", "gh_n"))
    H = h.shape[1]
    w_hrz, w_hn = cache["w_hh"][:2 * H], cache["w_hh"][2 * H:]
    dh1 = np.zeros_like(h) if dh1 is None else _f64(dh1)
    grads = {}

    # h1 = (1 - z) * n + z * h
    dn, dz, dh = dh1 * (1.0 - z), dh1 * (h - n), dh1 * z
    dn_pre = dn * (1.0 - n * n)  # tanh' = 1 - n^2
    # n_pre = gi_n + r * gh_n (reset after)  or  gi_n + gh_n (reset before)
    if cache["reset_after"]:
        dgh_n, dr = dn_pre * r, dn_pre * gh_n
    else:
        dgh_n = dn_pre
    # gh_n = hn_in W_hn^T + b_hn, with hn_in = h_n (reset after) or r * h_n (reset before),
    # h_n = h, or h * m_n under recurrent dropout (whose gradient then goes through m_n)
    reads, rmask = cache["reads"], cache["rmask"]
    m_n = 1.0 if reads is None else rmask[2]
    dhn_in = dgh_n @ w_hn
    if cache["reset_after"]:
        dh = dh + dhn_in * m_n
    else:
        h_n = h if reads is None else reads[2]
        dr, dh = dhn_in * h_n, dh + dhn_in * r * m_n
    # through the gate sigmoids, from the stored outputs: sigmoid' = y(1-y)
    dgh_rz = np.concatenate([dr * r * (1.0 - r), dz * z * (1.0 - z)], axis=1)  # (B, 2H)
    dgi = np.concatenate([dgh_rz, dn_pre], axis=1)  # (B, 3H)
    # gi = x W_ih^T + b_ih;  gh_rz = h W_hrz^T + b_hrz (block k: h * m_k)
    dx = dgi @ cache["w_ih"]
    grads["w_ih"] = dgi.T @ x
    if reads is None:
        dh = dh + dgh_rz @ w_hrz
        dw_rz = dgh_rz.T @ h
    else:
        dh_rz, dw_rz = _blocks_back(dgh_rz, w_hrz, reads[:2], rmask[:2])
        dh = dh + dh_rz
    grads["w_hh"] = np.concatenate([dw_rz, dgh_n.T @ hn_in], axis=0)
    if cache["b_ih"] is not None:
        grads["b_ih"] = dgi.sum(axis=0)
    if cache["b_hh"] is not None:
        grads["b_hh"] = np.concatenate([dgh_rz.sum(axis=0), dgh_n.sum(axis=0)])
    return dx, dh, grads


_NONLINEARITIES = ("tanh", "relu")


def _check_nonlinearity(nonlinearity):
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")


def rnn_cell_forward(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", clip=None,
                     activations=None, quantize=None, recurrent_mask=None):
    """One simple (Elman) RNN step for a batch.

    Parameters
    ----------
    x : ndarray, shape (B, I)
    h : ndarray, shape (B, H), or None for zeros
    w_ih : ndarray, shape (H, I)
    w_hh : ndarray, shape (H, H)
    b_ih, b_hh : ndarray, shape (H,), or None for no bias
    nonlinearity : {"tanh", "relu"}
    clip : float >= 0 or None: the pre-activation's clamp (forward only)
    activations : None or one (name, alpha, beta), in place of `nonlinearity` (forward only)
    recurrent_mask : None or ndarray, shape (1, B, H)
        Recurrent dropout: the product reads h * recurrent_mask[0].

    Returns
    -------
    h1 : ndarray, shape (B, H)
    cache : dict
        Everything :func:`rnn_cell_backward` needs.
    """
    _check_nonlinearity(nonlinearity)
    x, w_ih, w_hh = _f64(x), _f64(w_ih), _f64(w_hh)
    h = np.zeros((x.shape[0], w_hh.shape[1])) if h is None else _f64(h)
    b_ih, b_hh = _f64_or_none(b_ih), _f64_or_none(b_hh)

    reads = None if recurrent_mask is None else _recurrent_reads(h, recurrent_mask, 1, quantize)
    h_read = _q(quantize, h, "h") if reads is None else reads[0]
    a = _affine(_q(quantize, x, "x"), w_ih, b_ih) + _affine(h_read, w_hh, b_hh)
    if clip is None and activations is None:
        h1 = np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0.0)  # relu(NaN) = NaN
    else:
        h1 = _slots(activations, (nonlinearity,))[0](_clip(a, clip)[0])
    cache = dict(x=x, h=h, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                 nonlinearity=nonlinearity, h1=h1, reads=reads,
                 rmask=None if recurrent_mask is None else _f64(recurrent_mask),
                 trainable=clip is None and _is_default(activations, (nonlinearity,)))
    return h1, cache


def rnn_cell_backward(cache, dh1):
    """Gradients of one simple RNN step.

    Parameters
    ----------
    cache : dict
        From :func:`rnn_cell_forward`.
    dh1 : ndarray, shape (B, H), or None for zeros
        Gradient of the loss w.r.t. ``h1``.

    Returns
    -------
    dx : ndarray, shape (B, I)
    dh : ndarray, shape (B, H)
    grads : dict
        ``w_ih`` (H, I), ``w_hh`` (H, H), and ``b_ih``, ``b_hh`` (H,) for exactly those biases
        that were given (not None) to the forward call.
    """
    if not cache["trainable"]:
        raise NotImplementedError("rnn_cell_backward: clip and activations other than the "
                                  "nonlinearity have no backward")
    x, h, h1 = cache["x"], cache["h"], cache["h1"]
    dh1 = np.zeros_like(h1) if dh1 is None else _f64(dh1)
    grads = {}

    # from the stored output: tanh' = 1 - y^2; relu' = 0 where y <= 0 (so 0 at exactly 0,
    # as torch's threshold_backward, which also lets the gradient through where y is NaN)
    if cache["nonlinearity"] == "tanh":
        da = dh1 * (1.0 - h1 * h1)
    else:
        da = np.where(h1 <= 0.0, 0.0, dh1)
    # a = x W_ih^T + b_ih + h W_hh^T + b_hh
    dx = da @ cache["w_ih"]
    if cache["reads"] is None:
        dh = da @ cache["w_hh"]
        grads["w_hh"] = da.T @ h
    else:  # through the recurrent dropout mask
        dh, grads["w_hh"] = _blocks_back(da, cache["w_hh"], cache["reads"], cache["rmask"])
    grads["w_ih"] = da.T @ x
    if cache["b_ih"] is not None:
        grads["b_ih"] = da.sum(axis=0)
    if cache["b_hh"] is not None:
        grads["b_hh"] = da.sum(axis=0)
    return dx, dh, grads


# ----------------------------------------------------------------------------------------------
# what the sequence driver needs to know about a cell


class _Cell(NamedTuple):
    """A cell kind as the sequence driver sees it.

    ``states`` names the recurrent states the cell carries; ``states[0]`` is h, which is also
    the layer's output. ``forward(x, states, w, rmask=None) -> (states1, step_cache)`` (rmask:
    the step's rows of the recurrent dropout masks, (G, B, H_out)) and
    ``backward(step_cache, dstates1) -> (dx, dstates, grads)`` take and return tuples in
    that order; ``w`` and ``grads`` use the cell functions' argument names (``w_ih`` ...).
    """

    states: tuple
    forward: Callable
    backward: Callable


def _lstm_cell(**options):
    """The LSTM's cell kind; options go to lstm_cell_forward."""

    def forward(x, states, w, rmask=None):
        h1, c1, cache = lstm_cell_forward(x, *states, **w, **options, recurrent_mask=rmask)
        return (h1, c1), cache

    def backward(cache, dstates):
        dx, dh, dc, grads = lstm_cell_backward(cache, *dstates)
        return dx, (dh, dc), grads

    return _Cell(("h", "c"), forward, backward)


def _h_only_cell(cell_forward, cell_backward, **options):
    """Cell kind for cells whose only state is h (GRU, RNN); options go to cell_forward."""

    def forward(x, states, w, rmask=None):
        h1, cache = cell_forward(x, states[0], **w, **options, recurrent_mask=rmask)
        return (h1,), cache

    def backward(cache, dstates):
        dx, dh, grads = cell_backward(cache, dstates[0])
        return dx, (dh,), grads

    return _Cell(("h",), forward, backward)


# ----------------------------------------------------------------------------------------------
# whole sequence: one driver for every cell kind

_CELL_TO_TORCH = (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"),
                  ("b_hh", "bias_hh"), ("w_hr", "weight_hr"), ("w_ph", "peephole"))


def _per_direction(make, activations, D, **options):
    """One cell kind per direction: `activations` None, one entry per slot (every
    direction), or D such lists (direction d's at [d])."""
    if activations is None or isinstance(activations[0][0], str):
        return [make(activations=activations, **options)] * D
    if len(activations) != D:
        raise ValueError(f"activations: expected one list per direction ({D}), got "
                         f"{len(activations)}")
    return [make(activations=a, **options) for a in activations]


def _names(layer, direction):
    """Map cell argument names to PyTorch parameter names of (layer, direction)."""
    sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    return {short: torch_name + sfx for short, torch_name in _CELL_TO_TORCH}


def _sequence_forward(cell, x, params, num_layers, bidirectional, state_sizes, hx, lengths,
                      dropout_masks, recurrent_masks=None):
    """Run ``cell`` over a padded time-major batch: layers, directions, lengths, dropout.

    Parameters
    ----------
    cell : _Cell, or a list of one per direction
    x : ndarray, shape (T, B, I)
    params : dict of str -> ndarray
        PyTorch names; the ``weight_*`` / ``bias_*`` of (layer, direction) present in it are
        handed to the cell under its argument names (absent biases mean no bias).
    num_layers : int
    bidirectional : bool
    state_sizes : tuple of int
        Feature size of each of ``cell.states``; ``state_sizes[0]`` = H_out, the output width.
    hx : None or tuple of ndarrays
        One per state, shape (D*L, B, size); None means zeros. Index = layer * D + direction.
    lengths : None or int array, shape (B,)
    dropout_masks : None or list of L-1 ndarrays, shape (T, B, D*H_out)
    recurrent_masks : None or ndarray, shape (D*L, G, B, H_out)
        Recurrent dropout: layer * D + direction's (G, B, H_out) masks, the same at every step
        (the cells' ``recurrent_mask``; G = gate blocks: LSTM 4, GRU 3, RNN 1).

    Returns
    -------
    out : ndarray, shape (T, B, D*H_out)
    states_n : tuple of ndarrays, shapes (D*L, B, size)
    cache : dict
        For :func:`_sequence_backward`.
    """
    x = _f64(x)
    if x.ndim != 3:
        raise ValueError(f"x: expected shape (T, B, I), got {x.shape}")
    T, B, _ = x.shape
    L, D = num_layers, 2 if bidirectional else 1
    params = {k: _f64(v) for k, v in params.items()}
    H_out = state_sizes[0]
    shapes = [(D * L, B, size) for size in state_sizes]

    if lengths is None:
        lengths = np.full(B, T)
    lengths = np.asarray(lengths)
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected an integer array, got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths: expected shape ({B},), got {lengths.shape}")
    if B and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"lengths: expected values in [0, {T}], got {lengths}")
    if hx is None:
        states0 = [np.zeros(shape) for shape in shapes]
    else:
        states0 = [_f64(s) for s in hx]
        if [s.shape for s in states0] != shapes:
            raise ValueError(f"hx: expected shapes {' and '.join(map(str, shapes))}, "
                             f"got {' and '.join(str(s.shape) for s in states0)}")
    masks = None
    if dropout_masks is not None:
        masks = [_f64(m) for m in dropout_masks]
        if len(masks) != L - 1 or any(m.shape != (T, B, D * H_out) for m in masks):
            raise ValueError(f"dropout_masks: expected {L - 1} arrays of shape "
                             f"{(T, B, D * H_out)}, got {[m.shape for m in masks]}")

    rmasks = None
    if recurrent_masks is not None:
        rmasks = _f64(recurrent_masks)
        if rmasks.ndim != 4 or rmasks.shape[0] != D * L or rmasks.shape[2:] != (B, H_out):
            raise ValueError(f"recurrent_masks: expected shape ({D * L}, G, {B}, {H_out}), "
                             f"got {rmasks.shape}")

    cells = cell if isinstance(cell, list) else [cell] * D
    states_n = tuple(np.empty_like(s) for s in states0)
    tapes = []  # tapes[layer * D + direction] = [(t, rows, step_cache), ...] in execution order
    layer_in = x
    for layer in range(L):
        if layer > 0 and masks is not None:
            layer_in = layer_in * masks[layer - 1]
        out = np.zeros((T, B, D * H_out))
        for direction in range(D):
            names = _names(layer, direction)
            w = {short: params[name] for short, name in names.items() if name in params}
            k = layer * D + direction
            states = [s[k].copy() for s in states0]
            tape = []
            # reverse direction walking t = T-1..0 with only rows t < len_b active starts each
            # row at its own len_b - 1 from its initial state: its valid prefix reversed, as
            # torch packs it
            for t in range(T) if direction == 0 else range(T - 1, -1, -1):
                rows = np.flatnonzero(t < lengths)
                if rows.size == 0:
                    continue
                new, step_cache = cells[direction].forward(
                    layer_in[t, rows], [s[rows] for s in states], w,
                    None if rmasks is None else rmasks[k][:, rows])
                for s, s1 in zip(states, new):
                    s[rows] = s1
                out[t, rows, direction * H_out:(direction + 1) * H_out] = new[0]
                tape.append((t, rows, step_cache))
            for s_n, s in zip(states_n, states):
                s_n[k] = s
            tapes.append(tape)
        layer_in = out

    cache = dict(cells=cells, T=T, B=B, I=x.shape[2], L=L, D=D, H_out=H_out, shapes=shapes,
                 params=params, masks=masks, tapes=tapes)
    return out, states_n, cache


def _sequence_backward(cache, dout, dstates_n, arg_name):
    """Backpropagation through time for :func:`_sequence_forward`.

    Parameters
    ----------
    cache : dict
        From :func:`_sequence_forward`.
    dout : ndarray, shape (T, B, D*H_out)
        Gradient w.r.t. ``out``; values at padding are ignored.
    dstates_n : tuple
        One entry per state: ndarray (D*L, B, size) or None for zeros.
    arg_name : str
        The public name of ``dstates_n``, for error messages.

    Returns
    -------
    dx : ndarray, shape (T, B, I)
        0 at padding.
    dstates0 : tuple of ndarrays, shapes (D*L, B, size)
    grads : dict of str -> ndarray
        Same keys and shapes as ``params``.
    """
    cells, T, B, L, D, H_out, shapes = (cache[k] for k in ("cells", "T", "B", "L", "D", "H_out",
                                                           "shapes"))
    dout = _f64(dout)
    if dout.shape != (T, B, D * H_out):
        raise ValueError(f"dout: expected shape {(T, B, D * H_out)}, got {dout.shape}")
    dstates_n = [np.zeros(shape) if d is None else _f64(d) for d, shape in zip(dstates_n, shapes)]
    if [d.shape for d in dstates_n] != shapes:
        raise ValueError(f"{arg_name}: expected shapes {' and '.join(map(str, shapes))}, "
                         f"got {' and '.join(str(d.shape) for d in dstates_n)}")

    grads = {name: np.zeros_like(p) for name, p in cache["params"].items()}
    dstates0 = tuple(np.empty_like(d) for d in dstates_n)
    d_above = dout  # gradient w.r.t. the current layer's output
    for layer in reversed(range(L)):
        in_size = cache["I"] if layer == 0 else D * H_out
        d_in = np.zeros((T, B, in_size))
        for direction in range(D):
            names = _names(layer, direction)
            k = layer * D + direction
            dstates = [d[k].copy() for d in dstates_n]
            for t, rows, step_cache in reversed(cache["tapes"][k]):
                # h1 feeds both the next step of this direction and the layer output at t
                dnew = [d[rows] for d in dstates]
                dnew[0] = dnew[0] + d_above[t, rows, direction * H_out:(direction + 1) * H_out]
                dx, dprev, g = cells[direction].backward(step_cache, dnew)
                for d, d_prev in zip(dstates, dprev):
                    d[rows] = d_prev
                d_in[t, rows] += dx  # both directions read the same input
                for short, grad in g.items():
                    grads[names[short]] += grad
            for d0, d in zip(dstates0, dstates):
                d0[k] = d
        if layer > 0 and cache["masks"] is not None:
            d_in = d_in * cache["masks"][layer - 1]
        d_above = d_in
    return d_above, dstates0, grads


def _hidden_size(params, gates, kind):
    """H from ``weight_hh_l0`` (gates * H, H), checked so that foreign params fail loudly."""
    shape = np.shape(params["weight_hh_l0"])
    if len(shape) != 2 or shape[0] != gates * shape[1]:
        raise ValueError(f"params: weight_hh_l0 of a {kind} must have shape "
                         f"({gates}*H, H), got {shape}")
    return shape[1]


def lstm_forward(x, params, num_layers=1, bidirectional=False, proj_size=0, hx=None,
                 lengths=None, dropout_masks=None, clip=None, input_forget=False,
                 activations=None, quantize=None, recurrent_masks=None):
    """Multi-layer, optionally bidirectional LSTM over a padded time-major batch.

    Parameters
    ----------
    x : ndarray, shape (T, B, I)
    params : dict of str -> ndarray
        PyTorch names and shapes (``torch.nn.LSTM.state_dict()``): ``weight_ih_l{k}`` (4H, I or
        D*H_out), ``weight_hh_l{k}`` (4H, H_out), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,),
        ``weight_hr_l{k}`` (P, H), ``peephole_l{k}`` (3, H: p_i, p_f, p_o); suffix
        ``_reverse`` for the reverse direction. No ``bias_*`` keys means no bias, no
        ``peephole_*`` no peepholes. Sizes are read from the shapes.
    num_layers : int
    bidirectional : bool
    proj_size : int
        Must agree with the presence and shape of ``weight_hr_*``.
    hx : None or (h0, c0)
        h0 (D*L, B, H_out), c0 (D*L, B, H); None means zeros. Index = layer * D + direction.
    lengths : None or int array, shape (B,)
        Valid steps per row, 0 <= len <= T, any order. None means all T.
    dropout_masks : None or list of L-1 ndarrays, shape (T, B, D*H_out)
        Multiplied into the input of layers 1..L-1 (already scaled by 1/(1-p)).
    clip, input_forget : the cell options of :func:`lstm_cell_forward`
    activations : None, 3 (name, alpha, beta), or D lists of 3 (one per direction)
    recurrent_masks : None or ndarray, shape (D*L, 4, B, H_out)
        Recurrent dropout, per layer * D + direction one mask per gate block i, f, g, o
        (already scaled by 1/(1-p)); see the module docstring.

    Returns
    -------
    out : ndarray, shape (T, B, D*H_out)
        Last layer's hidden states, forward then reverse features; 0 at padding.
    (h_n, c_n) : ndarrays, shapes (D*L, B, H_out) and (D*L, B, H)
    cache : dict
        For :func:`lstm_backward`.
    """
    if np.ndim(x) != 3:
        raise ValueError(f"x: expected shape (T, B, I), got {np.shape(x)}")
    H = np.shape(params["weight_hh_l0"])[0] // 4
    P = np.shape(params["weight_hr_l0"])[0] if "weight_hr_l0" in params else 0
    if P != proj_size:
        raise ValueError(f"proj_size={proj_size} but params imply {P}")
    cells = _per_direction(_lstm_cell, activations, 2 if bidirectional else 1, clip=clip,
                           input_forget=input_forget, quantize=quantize)
    out, (h_n, c_n), cache = _sequence_forward(cells, x, params, num_layers, bidirectional,
                                               (P or H, H), hx, lengths, dropout_masks,
                                               recurrent_masks)
    return out, (h_n, c_n), cache


def lstm_backward(cache, dout, dhx=None):
    """Backpropagation through time for :func:`lstm_forward`.

    Parameters
    ----------
    cache : dict
        From :func:`lstm_forward`.
    dout : ndarray, shape (T, B, D*H_out)
        Gradient w.r.t. ``out``; values at padding are ignored.
    dhx : None or (dh_n, dc_n)
        dh_n (D*L, B, H_out), dc_n (D*L, B, H); None (for the pair or either one) means zeros.

    Returns
    -------
    dx : ndarray, shape (T, B, I)
        0 at padding.
    (dh0, dc0) : ndarrays, shapes (D*L, B, H_out) and (D*L, B, H)
    grads : dict of str -> ndarray
        Same keys and shapes as ``params``.
    """
    dx, (dh0, dc0), grads = _sequence_backward(cache, dout, (None, None) if dhx is None else dhx,
                                               "dhx")
    return dx, (dh0, dc0), grads


def gru_forward(x, params, num_layers=1, bidirectional=False, hx=None, lengths=None,
                dropout_masks=None, reset_after=True, clip=None, activations=None,
                quantize=None, recurrent_masks=None):
    """Multi-layer, optionally bidirectional GRU over a padded time-major batch.

    Parameters
    ----------
    x : ndarray, shape (T, B, I)
    params : dict of str -> ndarray
        PyTorch names and shapes (``torch.nn.GRU.state_dict()``): ``weight_ih_l{k}`` (3H, I or
        D*H), ``weight_hh_l{k}`` (3H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (3H,); suffix
        ``_reverse`` for the reverse direction. No ``bias_*`` keys means no bias.
    num_layers : int
    bidirectional : bool
    hx : None or ndarray, shape (D*L, B, H)
        h0; None means zeros. Index = layer * D + direction.
    lengths : None or int array, shape (B,)
        Valid steps per row, 0 <= len <= T, any order. None means all T.
    dropout_masks : None or list of L-1 ndarrays, shape (T, B, D*H)
        Multiplied into the input of layers 1..L-1 (already scaled by 1/(1-p)).
    reset_after : bool
        Where the reset gate acts, see :func:`gru_cell_forward`.
    clip : the cell option of :func:`gru_cell_forward`
    activations : None, 2 (name, alpha, beta), or D lists of 2 (one per direction)
    recurrent_masks : None or ndarray, shape (D*L, 3, B, H)
        Recurrent dropout, one mask per gate block r, z, n (see :func:`gru_cell_forward`).

    Returns
    -------
    out : ndarray, shape (T, B, D*H)
        Last layer's hidden states, forward then reverse features; 0 at padding.
    h_n : ndarray, shape (D*L, B, H)
    cache : dict
        For :func:`gru_backward`.
    """
    H = _hidden_size(params, 3, "GRU")
    cells = _per_direction(lambda **o: _h_only_cell(gru_cell_forward, gru_cell_backward, **o),
                           activations, 2 if bidirectional else 1, reset_after=reset_after,
                           clip=clip, quantize=quantize)
    out, (h_n,), cache = _sequence_forward(
        cells, x, params, num_layers, bidirectional, (H,), None if hx is None else (hx,),
        lengths, dropout_masks, recurrent_masks)
    return out, h_n, cache


def gru_backward(cache, dout, dh_n=None):
    """Backpropagation through time for :func:`gru_forward`.

    Parameters
    ----------
    cache : dict
        From :func:`gru_forward`.
    dout : ndarray, shape (T, B, D*H)
        Gradient w.r.t. ``out``; values at padding are ignored.
    dh_n : None or ndarray, shape (D*L, B, H)
        Gradient w.r.t. ``h_n``; None means zeros.

    Returns
    -------
    dx : ndarray, shape (T, B, I)
        0 at padding.
    dh0 : ndarray, shape (D*L, B, H)
    grads : dict of str -> ndarray
        Same keys and shapes as ``params``.
    """
    dx, (dh0,), grads = _sequence_backward(cache, dout, (dh_n,), "dh_n")
    return dx, dh0, grads


def rnn_forward(x, params, num_layers=1, bidirectional=False, hx=None, lengths=None,
                dropout_masks=None, nonlinearity="tanh", clip=None, activations=None,
                quantize=None, recurrent_masks=None):
    """Multi-layer, optionally bidirectional simple RNN over a padded time-major batch.

    Parameters
    ----------
    x : ndarray, shape (T, B, I)
    params : dict of str -> ndarray
        PyTorch names and shapes (``torch.nn.RNN.state_dict()``): ``weight_ih_l{k}`` (H, I or
        D*H), ``weight_hh_l{k}`` (H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (H,); suffix
        ``_reverse`` for the reverse direction. No ``bias_*`` keys means no bias.
    num_layers : int
    bidirectional : bool
    hx : None or ndarray, shape (D*L, B, H)
        h0; None means zeros. Index = layer * D + direction.
    lengths : None or int array, shape (B,)
        Valid steps per row, 0 <= len <= T, any order. None means all T.
    dropout_masks : None or list of L-1 ndarrays, shape (T, B, D*H)
        Multiplied into the input of layers 1..L-1 (already scaled by 1/(1-p)).
    nonlinearity : {"tanh", "relu"}
    clip : the cell option of :func:`rnn_cell_forward`
    activations : None, 1 (name, alpha, beta), or D lists of 1 (one per direction)
    recurrent_masks : None or ndarray, shape (D*L, 1, B, H)
        Recurrent dropout (see :func:`rnn_cell_forward`).

    Returns
    -------
    out : ndarray, shape (T, B, D*H)
        Last layer's hidden states, forward then reverse features; 0 at padding.
    h_n : ndarray, shape (D*L, B, H)
    cache : dict
        For :func:`rnn_backward`.
    """
    _check_nonlinearity(nonlinearity)
    H = _hidden_size(params, 1, "simple RNN")
    cells = _per_direction(lambda **o: _h_only_cell(rnn_cell_forward, rnn_cell_backward, **o),
                           activations, 2 if bidirectional else 1, nonlinearity=nonlinearity,
                           clip=clip, quantize=quantize)
    out, (h_n,), cache = _sequence_forward(
        cells, x, params, num_layers, bidirectional, (H,), None if hx is None else (hx,),
        lengths, dropout_masks, recurrent_masks)
    return out, h_n, cache


def rnn_backward(cache, dout, dh_n=None):
    """Backpropagation through time for :func:`rnn_forward`.

    Parameters
    ----------
    cache : dict
        From :func:`rnn_forward`.
    dout : ndarray, shape (T, B, D*H)
        Gradient w.r.t. ``out``; values at padding are ignored.
    dh_n : None or ndarray, shape (D*L, B, H)
        Gradient w.r.t. ``h_n``; None means zeros.

    Returns
    -------
    dx : ndarray, shape (T, B, I)
        0 at padding.
    dh0 : ndarray, shape (D*L, B, H)
    grads : dict of str -> ndarray
        Same keys and shapes as ``params``.
    """
    dx, (dh0,), grads = _sequence_backward(cache, dout, (dh_n,), "dh_n")
    return dx, dh0, grads


# ---- quantized inference arithmetic ----------------------------------------------------------
# The spec of the int8 and bfloat16 products of quantized inference (lstmc.quantize, docs/spec.md
# §9): how weights and activations are rounded, and in what order a product sums, so that every
# kernel, whatever its ISA, gives these bits. float32 throughout, as the kernels compute.

INT8_LIMIT = 127    # int8 values stay in [-127, 127]: never -128, so negation is exact
INT8_TINY = np.float32(2.0 ** -120)   # rows peaking below this quantize as zeros


def quantize_int8(a):
    """Symmetric int8 per row: ``(q, scale)`` with ``a[r] ~= scale[r] * q[r]``.

    ``scale[r] = float32(max |a[r]|) / 127`` and ``q = rint(a * (127 / max |a[r]|))`` in
    float32 (the reciprocal once per row, then a multiply; round half to even), clamped to
    [-127, 127]. A row of zeros has scale 0 and q 0, and so has a row whose largest magnitude
    is below INT8_TINY = 2^-120 (127 / peak would overflow float32 below about 3.7e-37); a
    row holding a NaN or an infinity has scale NaN (its products come out NaN, as float32
    ones would) and q 0.

    Parameters
    ----------
    a : array_like, shape (..., K): rows of weights (one per gate unit) or of activations
        (one per position)

    Returns
    -------
    q : int8 ndarray, shape of a
    scale : float32 ndarray, shape a.shape[:-1]
    """
    a = np.asarray(a, dtype=np.float32)
    finite = np.isfinite(a).all(axis=-1)
    kept = np.where(finite[..., None], a, np.float32(0))     # a non-finite row as zeros
    peak = np.abs(kept).max(axis=-1, initial=0)
    peak = np.where(peak >= INT8_TINY, peak, np.float32(0))   # a tiny row counts as zeros
    limit = np.float32(INT8_LIMIT)
    inv = np.where(peak > 0, limit / np.where(peak > 0, peak, 1), 0).astype(np.float32)
    q = np.rint(kept * inv[..., None])
    q = np.clip(q, -INT8_LIMIT, INT8_LIMIT).astype(np.int8)
    scale = np.where(finite, peak / limit, np.nan).astype(np.float32)
    return q, scale


def int8_product(aq, a_scale, wq, w_scale):
    """The dequantised product ``a W^T`` of int8 rows: (B, N) float32.

    The sums are exact integers (``aq @ wq^T``, every partial sum within int32 for K up to
    2^17), converted to float32 (round half to even), then ``(sum * a_scale[b]) * w_scale[n]``
    in that order.

    Parameters
    ----------
    aq : int8 array (B, K), a_scale : float32 (B,)   (quantize_int8 of the activations)
    wq : int8 array (N, K), w_scale : float32 (N,)   (quantize_int8 of the weights)
    """
    aq, wq = np.asarray(aq), np.asarray(wq)
    if aq.dtype != np.int8 or wq.dtype != np.int8:
        raise TypeError(f"int8 operands expected, got {aq.dtype} and {wq.dtype}")
    if aq.shape[-1] > 1 << 17:
        raise ValueError(f"K = {aq.shape[-1]} > 2^17: the int32 sums could overflow")
    total = (aq.astype(np.int64) @ wq.astype(np.int64).T).astype(np.float32)
    a_scale = np.asarray(a_scale, dtype=np.float32)
    w_scale = np.asarray(w_scale, dtype=np.float32)
    return (total * a_scale[:, None]) * w_scale[None, :]


def bf16_round(a):
    """float32 values rounded to bfloat16 (round half to even), returned as float32 whose low
    16 bits are zero. Subnormal inputs become zeros of their sign (as AVX-512 BF16's
    conversion does); NaN stays NaN; infinities stay.
    """
    a = np.asarray(a, dtype=np.float32)
    bits = a.view(np.uint32).astype(np.uint64)
    exponent = (bits >> 23) & 0xFF
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    out = np.where(exponent == 0, bits & 0x80000000, rounded)
    out = np.where(np.isnan(a), 0x7FC00000, out).astype(np.uint32)
    return out.view(np.float32)


def bf16_product(a, w):
    """The product ``a W^T`` of bfloat16 operands, summed in float32: (B, N) float32.

    Both operands are rounded with :func:`bf16_round`; a product of two bfloat16 values is
    exact in float32. Along K the terms go in pairs (2i, 2i + 1), a missing last one zero, and
    each pair adds its odd term first, then its even one, every addition rounded (the order
    of AVX-512 BF16's VDPBF16PS, which every bf16 kernel follows).

    Parameters
    ----------
    a : array_like (B, K), w : array_like (N, K)
    """
    a, w = bf16_round(a), bf16_round(w)
    K = a.shape[-1]
    acc = np.zeros((a.shape[0], w.shape[0]), np.float32)
    for k in range(0, K, 2):
        if k + 1 < K:
            acc = acc + np.outer(a[:, k + 1], w[:, k + 1]).astype(np.float32)
        acc = acc + np.outer(a[:, k], w[:, k]).astype(np.float32)
    return acc


QUANTIZED_DTYPES = ("int8", "bf16")


def quantized_params(params, dtype):
    """The weights a quantized model computes with, as float64: every ``weight_ih_*`` and
    ``weight_hh_*`` matrix through :func:`quantize_int8` per gate unit (row) and back, or
    through :func:`bf16_round`. Biases, peepholes and projections (``weight_hr_*``) stay as
    they are."""
    if dtype not in QUANTIZED_DTYPES:
        raise ValueError(f"dtype must be one of {QUANTIZED_DTYPES}, got {dtype!r}")
    out = {}
    for name, w in params.items():
        if name.startswith(("weight_ih_", "weight_hh_")):
            if dtype == "int8":
                q, scale = quantize_int8(w)
                w = q.astype(np.float64) * scale.astype(np.float64)[:, None]
            else:
                w = bf16_round(w).astype(np.float64)
        out[name] = w
    return out


def activation_quantizer(dtype, static_h):
    """The ``quantize`` option of the forward functions for a quantized model.

    bf16: every activation through :func:`bf16_round`. int8: the input of a layer through
    :func:`quantize_int8` per row (each position's own scale); the recurrent state with the
    static scale 1/127 (``rint(127 h)`` in float32, clamped) when ``static_h`` - the cells
    whose h stays within [-1, 1]: LSTM without projection, GRU and RNN-tanh with their default
    activations, from initial states within [-1, 1] - else per row like the input (RNN-ReLU,
    projections, other activations, larger initial states)."""
    if dtype not in QUANTIZED_DTYPES:
        raise ValueError(f"dtype must be one of {QUANTIZED_DTYPES}, got {dtype!r}")
    step = np.float32(1.0 / INT8_LIMIT)

    def quantize(a, role):
        a = np.asarray(a, dtype=np.float32)
        if dtype == "bf16":
            return bf16_round(a)
        if role == "h" and static_h:
            q = np.clip(np.rint(a * np.float32(INT8_LIMIT)), -INT8_LIMIT, INT8_LIMIT)
            return q.astype(np.float64) * np.float64(step)
        q, scale = quantize_int8(a.reshape(-1, a.shape[-1]))
        return (q.astype(np.float64) * scale.astype(np.float64)[:, None]).reshape(a.shape)
    return quantize


# ---- decoding: beam search (csrc/decode.c, lstmc.nn.decoding.BeamSearch) -----------------
def log_softmax(logits):
    """log softmax over the last axis, in float64."""
    z = np.asarray(logits, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))


def beam_search(logits_of, batch_size, beam_width, eos, max_length, length_penalty=1.0):
    """Beam search, one sentence at a time, as plainly as it can be written.

    logits_of(b, prefix) -> logits (V,) of the class after `prefix` (a tuple of classes,
    bos not included) in sentence b. Per sentence: a list of alive hypotheses (tokens,
    summed log-probability), best first, starting from the empty one; each step ranks
    every extension of every alive hypothesis by its sum (ties: the lower index
    alive_position * V + class first) and walks the best 2 * beam_width: an extension by
    eos ranked below beam_width is dropped; one ranked within it finishes with score
    sum / (t + 1) ** length_penalty (its length counting eos) into at most beam_width
    finished slots (a better one replaces the first worst); the others become the next alive
    hypotheses until there are beam_width. The sentence is done when it has no alive
    hypothesis, or beam_width finished ones and the worst of them scores at least the best
    alive sum / (t + 1) ** length_penalty. At max_length the alive ones finish (score sum /
    max_length ** length_penalty, no eos) by the same slot rule. Returns per sentence the
    best finished (tokens without eos, score); ties: the earlier slot.
    """
    results = []
    for b in range(batch_size):
        alive = [((), 0.0)]
        slots = []               # [score, tokens]; ties rank the earlier slot first
        done = False
        steps = 0
        for t in range(max_length):
            steps = t + 1
            cands = []
            for j, (tokens, total) in enumerate(alive):
                logp = log_softmax(logits_of(b, tokens))
                V = len(logp)
                for v in range(V):
                    cands.append((total + float(logp[v]), j * V + v, j, v))
            cands.sort(key=lambda c: (-c[0], c[1]))
            cands = cands[:2 * beam_width]
            nxt = []
            for rank, (total, _, j, v) in enumerate(cands):
                if len(nxt) == beam_width:
                    break
                tokens = alive[j][0]
                if v == eos:
                    if rank < beam_width:
                        _keep(slots, total / (t + 1) ** length_penalty, tokens, beam_width)
                    continue
                nxt.append((tokens + (v,), total))
            alive = nxt
            if not alive:
                done = True
            elif len(slots) == beam_width and \
                    min(s[0] for s in slots) >= alive[0][1] / (t + 1) ** length_penalty:
                done = True
            if done:
                break
        if not done:
            for tokens, total in alive:
                _keep(slots, total / steps ** length_penalty, tokens, beam_width)
        best = min(range(len(slots)), key=lambda i: (-slots[i][0], i))
        results.append((list(slots[best][1]), slots[best][0]))
    return results


def _keep(slots, score, tokens, width):
    """At most `width` finished hypotheses: a new one fills a free slot or replaces the
    first worst when it is better."""
    if len(slots) < width:
        slots.append([score, tokens])
        return
    worst = min(range(len(slots)), key=lambda i: (slots[i][0], i))
    if score > slots[worst][0]:
        slots[worst] = [score, tokens]
