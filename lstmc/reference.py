"""Float64 NumPy reference LSTM: the specification of every lstmc kernel.

This module is the spec (SPEC.md section 7). It is written to be read, not to be fast:
every C kernel is tested against it, and it is itself tested against central finite
differences and, when installed, against ``torch.nn.LSTM``. If a kernel and this file
disagree, the kernel is wrong.

Dimension letters: T = time, B = batch, I = input features, H = hidden (cell) size,
P = projection size, H_out = P if P > 0 else H, G = 4H gates, D = directions (1 or 2),
L = layers. Arrays are time-major. Gate blocks are in PyTorch order i, f, g, o::

    i = sigmoid(x W_ii^T + b_ii + h W_hi^T + b_hi)     (likewise f, o)
    g = tanh(x W_ig^T + b_ig + h W_hg^T + b_hg)
    c' = f * c + i * g
    h' = o * tanh(c')                (P == 0)
    h' = (o * tanh(c')) W_hr^T       (P > 0; h has P features, c has H)

Variable lengths follow PyTorch packed sequences: row b uses steps 0..len_b-1, the reverse
direction runs over that valid prefix reversed, outputs at padding are 0, and h_n/c_n are
the state after each row's last valid step (h0/c0 when len_b == 0). Padding rows are never
computed at all (only the active rows of a step enter the cell), so padding values of ``x``
and ``dout`` cannot leak into anything, not even as NaN * 0.
"""

import numpy as np

__all__ = [
    "sigmoid",
    "lstm_cell_forward",
    "lstm_cell_backward",
    "lstm_forward",
    "lstm_backward",
]


def _f64(a):
    return np.asarray(a, dtype=np.float64)


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


# ----------------------------------------------------------------------------------------------
# one step


def lstm_cell_forward(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
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

    z = x @ w_ih.T + h @ w_hh.T  # (B, 4H) pre-activations
    if b_ih is not None:
        z = z + b_ih
    if b_hh is not None:
        z = z + b_hh
    i = sigmoid(z[:, 0 * H:1 * H])
    f = sigmoid(z[:, 1 * H:2 * H])
    g = np.tanh(z[:, 2 * H:3 * H])
    o = sigmoid(z[:, 3 * H:4 * H])
    c1 = f * c + i * g
    tc = np.tanh(c1)
    m = o * tc  # (B, H): the unprojected hidden state
    h1 = m if w_hr is None else m @ w_hr.T
    cache = dict(x=x, h=h, c=c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr,
                 i=i, f=f, g=g, o=o, tc=tc, m=m)
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
        ``w_ih`` (4H, I), ``w_hh`` (4H, H_out), and ``b_ih``, ``b_hh`` (4H,), ``w_hr`` (P, H)
        for exactly those of them that were given (not None) to the forward call.
    """
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
    # m = o * tanh(c1): c1 gets its direct gradient plus the path through h1
    do = dm * tc
    dc1 = dc1 + dm * o * (1.0 - tc * tc)
    # c1 = f * c + i * g
    di, df, dg, dc = dc1 * g, dc1 * c, dc1 * i, dc1 * f
    # through the activations, from the stored outputs: sigmoid' = y(1-y), tanh' = 1-y^2
    dz = np.concatenate([di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g * g),
                         do * o * (1.0 - o)], axis=1)  # (B, 4H)
    # z = x W_ih^T + h W_hh^T + b_ih + b_hh
    dx = dz @ cache["w_ih"]
    dh = dz @ cache["w_hh"]
    grads["w_ih"] = dz.T @ x
    grads["w_hh"] = dz.T @ h
    if cache["b_ih"] is not None:
        grads["b_ih"] = dz.sum(axis=0)
    if cache["b_hh"] is not None:
        grads["b_hh"] = dz.sum(axis=0)
    return dx, dh, dc, grads


# ----------------------------------------------------------------------------------------------
# whole sequence

_CELL_TO_TORCH = (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"),
                  ("b_hh", "bias_hh"), ("w_hr", "weight_hr"))


def _names(layer, direction):
    """Map cell argument names to PyTorch parameter names of (layer, direction)."""
    sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    return {short: torch_name + sfx for short, torch_name in _CELL_TO_TORCH}


def lstm_forward(x, params, num_layers=1, bidirectional=False, proj_size=0, hx=None,
                 lengths=None, dropout_masks=None):
    """Multi-layer, optionally bidirectional LSTM over a padded time-major batch.

    Parameters
    ----------
    x : ndarray, shape (T, B, I)
    params : dict of str -> ndarray
        PyTorch names and shapes (``torch.nn.LSTM.state_dict()``): ``weight_ih_l{k}`` (4H, I or
        D*H_out), ``weight_hh_l{k}`` (4H, H_out), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,),
        ``weight_hr_l{k}`` (P, H); suffix ``_reverse`` for the reverse direction. No ``bias_*``
        keys means no bias. Sizes are read from the shapes.
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

    Returns
    -------
    out : ndarray, shape (T, B, D*H_out)
        Last layer's hidden states, forward then reverse features; 0 at padding.
    (h_n, c_n) : ndarrays, shapes (D*L, B, H_out) and (D*L, B, H)
    cache : dict
        For :func:`lstm_backward`.
    """
    x = _f64(x)
    if x.ndim != 3:
        raise ValueError(f"x: expected shape (T, B, I), got {x.shape}")
    T, B, _ = x.shape
    L, D = num_layers, 2 if bidirectional else 1
    params = {k: _f64(v) for k, v in params.items()}
    H = params["weight_hh_l0"].shape[0] // 4
    P = params["weight_hr_l0"].shape[0] if "weight_hr_l0" in params else 0
    if P != proj_size:
        raise ValueError(f"proj_size={proj_size} but params imply {P}")
    H_out = P or H

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
        h0, c0 = np.zeros((D * L, B, H_out)), np.zeros((D * L, B, H))
    else:
        h0, c0 = _f64(hx[0]), _f64(hx[1])
        if h0.shape != (D * L, B, H_out) or c0.shape != (D * L, B, H):
            raise ValueError(f"hx: expected shapes {(D * L, B, H_out)} and {(D * L, B, H)}, "
                             f"got {h0.shape} and {c0.shape}")
    masks = None
    if dropout_masks is not None:
        masks = [_f64(m) for m in dropout_masks]
        if len(masks) != L - 1 or any(m.shape != (T, B, D * H_out) for m in masks):
            raise ValueError(f"dropout_masks: expected {L - 1} arrays of shape "
                             f"{(T, B, D * H_out)}, got {[m.shape for m in masks]}")

    h_n, c_n = np.empty_like(h0), np.empty_like(c0)
    tapes = []  # tapes[layer * D + direction] = [(t, rows, cell_cache), ...] in execution order
    layer_in = x
    for layer in range(L):
        if layer > 0 and masks is not None:
            layer_in = layer_in * masks[layer - 1]
        out = np.zeros((T, B, D * H_out))
        for direction in range(D):
            names = _names(layer, direction)
            w = {short: params[name] for short, name in names.items() if name in params}
            k = layer * D + direction
            h, c = h0[k].copy(), c0[k].copy()
            tape = []
            # reverse direction walking t = T-1..0 with only rows t < len_b active starts each
            # row at its own len_b - 1 from h0/c0: its valid prefix reversed, as torch packs it
            for t in range(T) if direction == 0 else range(T - 1, -1, -1):
                rows = np.flatnonzero(t < lengths)
                if rows.size == 0:
                    continue
                h1, c1, cc = lstm_cell_forward(layer_in[t, rows], h[rows], c[rows], **w)
                h[rows], c[rows] = h1, c1
                out[t, rows, direction * H_out:(direction + 1) * H_out] = h1
                tape.append((t, rows, cc))
            h_n[k], c_n[k] = h, c
            tapes.append(tape)
        layer_in = out

    cache = dict(T=T, B=B, I=x.shape[2], L=L, D=D, H=H, H_out=H_out, params=params,
                 masks=masks, tapes=tapes)
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
    T, B, L, D, H, H_out = (cache[k] for k in ("T", "B", "L", "D", "H", "H_out"))
    dout = _f64(dout)
    if dout.shape != (T, B, D * H_out):
        raise ValueError(f"dout: expected shape {(T, B, D * H_out)}, got {dout.shape}")
    dh_n, dc_n = (None, None) if dhx is None else dhx
    dh_n = np.zeros((D * L, B, H_out)) if dh_n is None else _f64(dh_n)
    dc_n = np.zeros((D * L, B, H)) if dc_n is None else _f64(dc_n)
    if dh_n.shape != (D * L, B, H_out) or dc_n.shape != (D * L, B, H):
        raise ValueError(f"dhx: expected shapes {(D * L, B, H_out)} and {(D * L, B, H)}, "
                         f"got {dh_n.shape} and {dc_n.shape}")

    grads = {name: np.zeros_like(p) for name, p in cache["params"].items()}
    dh0, dc0 = np.empty_like(dh_n), np.empty_like(dc_n)
    d_above = dout  # gradient w.r.t. the current layer's output
    for layer in reversed(range(L)):
        in_size = cache["I"] if layer == 0 else D * H_out
        d_in = np.zeros((T, B, in_size))
        for direction in range(D):
            names = _names(layer, direction)
            k = layer * D + direction
            dh, dc = dh_n[k].copy(), dc_n[k].copy()
            for t, rows, cc in reversed(cache["tapes"][k]):
                # h1 feeds both the next step of this direction and the layer output at t
                dh1 = dh[rows] + d_above[t, rows, direction * H_out:(direction + 1) * H_out]
                dx, dh_prev, dc_prev, g = lstm_cell_backward(cc, dh1, dc[rows])
                dh[rows], dc[rows] = dh_prev, dc_prev
                d_in[t, rows] += dx  # both directions read the same input
                for short, grad in g.items():
                    grads[names[short]] += grad
            dh0[k], dc0[k] = dh, dc
        if layer > 0 and cache["masks"] is not None:
            d_in = d_in * cache["masks"][layer - 1]
        d_above = d_in
    return d_above, (dh0, dc0), grads
