"""Recurrent dropout (Keras' `recurrent_dropout`): one mask per gate block, layer and
direction, drawn once per sequence and multiplied into h where each block's recurrent product
reads it (lstmc.reference's module docstring is the spec).

The reference against central finite differences with fixed masks; the C kernels (through
lstmc.nn) against the reference, on every recurrent kernel and at one and two threads; the
masks' statistics; the cells' one mask per sequence; the Keras face against Keras 3 itself
(torch backend) with the same masks injected into both; eval, streaming and quantized paths
untouched."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import lstmc
from lstmc import _core, reference

from helpers import CELLS, Checks, KERNEL_TOL, central_difference, keras_or_skip, make_module

os.environ.setdefault("KERAS_BACKEND", "torch")

REF_FWD = {"LSTM": reference.lstm_forward, "GRU": reference.gru_forward,
           "RNN": reference.rnn_forward}
REF_BWD = {"LSTM": reference.lstm_backward, "GRU": reference.gru_backward,
           "RNN": reference.rnn_backward}


def _masks(rng, shape, rate):
    keep = 1.0 - rate
    return (rng.random(shape) < keep) / keep


def _ref_options(cell):
    return dict(CELLS[cell].options)


def _random_params(rng, cell, I, H, L, D):
    c = CELLS[cell]
    P = c.options.get("proj_size", 0)
    Hout = P or H
    params = {}
    for layer in range(L):
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            I_l = I if layer == 0 else D * Hout
            params["weight_ih" + sfx] = rng.uniform(-0.7, 0.7, (c.gates * H, I_l))
            params["weight_hh" + sfx] = rng.uniform(-0.7, 0.7, (c.gates * H, Hout))
            params["bias_ih" + sfx] = rng.uniform(-0.5, 0.5, c.gates * H)
            params["bias_hh" + sfx] = rng.uniform(-0.5, 0.5, c.gates * H)
            if P:
                params["weight_hr" + sfx] = rng.uniform(-0.7, 0.7, (P, H))
    return params


# ---- the reference against finite differences ---------------------------------------------
@pytest.mark.parametrize("cell", list(CELLS))
def test_reference_gradients_match_central_differences(cell):
    """Every parameter, x, h0 (and c0) of a 2-layer bidirectional sequence with ragged
    lengths (a row of length 0), masks fixed: the loss sum(out * w) + sum(h_n * v)."""
    rng = np.random.default_rng(3)
    c = CELLS[cell]
    T, B, I, H, L, D = 4, 3, 3, 4, 2, 2
    Hout = c.options.get("proj_size", 0) or H
    params = _random_params(rng, cell, I, H, L, D)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([4, 0, 2])
    h0 = rng.standard_normal((L * D, B, Hout)) * 0.5
    c0 = rng.standard_normal((L * D, B, H)) * 0.5
    rmasks = _masks(rng, (L * D, c.gates, B, Hout), 0.4)
    w = rng.standard_normal((T, B, D * Hout))
    v = rng.standard_normal((L * D, B, Hout))
    opts = _ref_options(cell)
    lstm = c.cls == "LSTM"
    fwd, bwd = REF_FWD[c.cls], REF_BWD[c.cls]

    def run():
        hx = (h0, c0) if lstm else h0
        out, st, cache = fwd(x, params, num_layers=L, bidirectional=True, hx=hx,
                             lengths=lengths, recurrent_masks=rmasks, **opts)
        hn = st[0] if lstm else st
        return out, hn, cache

    def loss():
        out, hn, _ = run()
        return float((out * w).sum() + (hn * v).sum())

    out, hn, cache = run()
    dhx = (v, None) if lstm else v
    dx, dstate0, grads = bwd(cache, w, dhx)
    dh0 = dstate0[0] if lstm else dstate0
    chk = Checks(f"{cell}: reference vs central differences")
    for name, p in list(params.items()) + [("x", x), ("h0", h0)] + \
            ([("c0", c0)] if lstm else []):
        want = {"x": dx, "h0": dh0, "c0": dstate0[1] if lstm else None}.get(name)
        if want is None:
            want = grads[name]
        flat = p.reshape(-1)
        num = np.array([central_difference(loss, flat, k) for k in range(flat.size)])
        chk.close(name, want.reshape(-1), num, 1e-6, 1e-7)
    chk.raise_if_any()


def test_reference_masks_of_ones_are_no_dropout():
    rng = np.random.default_rng(0)
    for cell in CELLS:
        c = CELLS[cell]
        params = _random_params(rng, cell, 3, 5, 1, 1)
        x = rng.standard_normal((6, 2, 3))
        Hout = c.options.get("proj_size", 0) or 5
        a = REF_FWD[c.cls](x, params, recurrent_masks=np.ones((1, c.gates, 2, Hout)),
                           **_ref_options(cell))[0]
        b = REF_FWD[c.cls](x, params, **_ref_options(cell))[0]
        np.testing.assert_allclose(a, b, rtol=1e-15, atol=1e-15)
        d = REF_FWD[c.cls](x, params, recurrent_masks=_masks(rng, (1, c.gates, 2, Hout), 0.5),
                           **_ref_options(cell))[0]
        assert np.abs(d - b).max() > 1e-3     # the masks act


# ---- the kernels against the reference -----------------------------------------------------
def _module_vs_reference(cell, dtype, T, B, I, H, L, bidirectional, lengths, seed, rate=0.35):
    """A training forward and backward of lstmc.nn with recurrent dropout against the
    reference given the module's own masks; returns the Checks."""
    rng = np.random.default_rng(seed)
    c = CELLS[cell]
    m = make_module(cell, I, H, dtype=dtype, num_layers=L, bidirectional=bidirectional,
                    recurrent_dropout=rate)
    m.train()
    x = rng.standard_normal((T, B, I)).astype(dtype)
    out, state = m(x, lengths=lengths)
    rmasks = m._last_recurrent_masks
    D = 2 if bidirectional else 1
    Hout = c.options.get("proj_size", 0) or H
    assert rmasks.shape == (L * D, c.gates, B, Hout)
    params = {k: p.data.astype(np.float64) for k, p in m.named_parameters()}
    rout, rstate, cache = REF_FWD[c.cls](x, params, num_layers=L, bidirectional=bidirectional,
                                         lengths=lengths, recurrent_masks=rmasks,
                                         **_ref_options(cell))
    dout = rng.standard_normal(out.shape).astype(dtype)
    m.zero_grad()
    dx, dstate = m.backward(dout)
    rdx, rdstate, grads = REF_BWD[c.cls](cache, dout)
    tol = KERNEL_TOL[dtype]
    chk = Checks(f"{cell} {np.dtype(dtype).name} T{T} B{B} I{I} H{H} L{L} D{D}")
    chk.close("out", out, rout, *tol.out)
    hn = state[0] if c.cls == "LSTM" else state
    chk.close("h_n", hn, rstate[0] if c.cls == "LSTM" else rstate, *tol.out)
    chk.close("dx", dx, rdx, *tol.grad)
    chk.close("dh0", dstate[0] if c.cls == "LSTM" else dstate,
              rdstate[0] if c.cls == "LSTM" else rdstate, *tol.grad)
    for name, p in m.named_parameters():
        chk.close(name + ".grad", p.grad, grads[name], *tol.grad)
    return chk


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kernel", ["auto", "blas", "packed_c"])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_match_reference(cell, dtype, kernel, threads, restore_threads):
    """2 layers, bidirectional, ragged lengths with a 0; H = 40 (three blocks of units: two
    threads share them) at B = 9 (the packed kernels' batches) and B = 130 (BLAS only)."""
    _core._set_recurrent_kernel(kernel)
    lstmc.set_num_threads(threads)
    for B, seed in ((9, 1), (130, 2)):
        lengths = np.random.default_rng(seed).integers(0, 8, size=B)
        lengths[0] = 7
        chk = _module_vs_reference(cell, dtype, 7, B, 5, 40, 2, True, lengths, seed)
        chk.raise_if_any()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cell=st.sampled_from(list(CELLS)), T=st.integers(1, 5), B=st.integers(1, 5),
       I=st.integers(1, 4), H=st.integers(1, 19), L=st.integers(1, 2),
       bidirectional=st.booleans(), ragged=st.booleans(), seed=st.integers(0, 1000),
       rate=st.sampled_from([0.1, 0.5, 0.9]))
def test_kernels_match_reference_any_shape(cell, T, B, I, H, L, bidirectional, ragged, seed,
                                           rate):
    """float64 at 1e-10 over shapes with sizes 1 and odd, lengths with zeros."""
    assume(cell != "lstm_proj" or H > CELLS[cell].options["proj_size"])
    lengths = np.random.default_rng(seed).integers(0, T + 1, size=B) if ragged else None
    _module_vs_reference(cell, np.float64, T, B, I, H, L, bidirectional, lengths, seed,
                         rate).raise_if_any()


# ---- the masks ----------------------------------------------------------------------------
def test_masks_density_scaling_and_one_per_call():
    lstmc.manual_seed(5)
    m = lstmc.nn.LSTM(3, 64, num_layers=2, bidirectional=True, recurrent_dropout=0.3)
    m.train()
    x = np.zeros((5, 50, 3), np.float32)
    m(x)
    a = m._last_recurrent_masks
    assert a.shape == (4, 4, 50, 64) and a.dtype == np.float32
    kept = a != 0
    assert set(np.unique(a)) == {0.0, np.float32(1 / np.float32(0.7))}
    # 51200 Bernoulli(0.7) draws: 5 standard deviations is 0.01
    assert abs(kept.mean() - 0.7) < 0.01
    # every layer, direction and gate block draws its own
    flat = kept.reshape(16, -1)
    assert all(not np.array_equal(flat[i], flat[j]) for i in range(16) for j in range(i))
    m(x)
    assert not np.array_equal(m._last_recurrent_masks, a)       # a new mask every call
    lstmc.manual_seed(5)
    m2 = lstmc.nn.LSTM(3, 64, num_layers=2, bidirectional=True, recurrent_dropout=0.3)
    m2.train()
    m2(x)
    np.testing.assert_array_equal(m2._last_recurrent_masks, a)   # manual_seed reproduces


def test_one_mask_for_every_step():
    """Row by row, the output of a T-step call equals the reference run with the call's
    masks held fixed; the same sequence cut into two calls (two draws) does not."""
    rng = np.random.default_rng(0)
    m = lstmc.nn.RNN(2, 6, recurrent_dropout=0.5, dtype=np.float64).train()
    x = rng.standard_normal((8, 3, 2))
    out, _ = m(x)
    rm = m._last_recurrent_masks
    params = {k: p.data for k, p in m.named_parameters()}
    h = np.zeros((3, 6))
    for t in range(8):       # a plain loop: h' = tanh(x W^T + b + (h * m) W_hh^T + b_hh)
        h = np.tanh(x[t] @ params["weight_ih_l0"].T + params["bias_ih_l0"] +
                    (h * rm[0, 0]) @ params["weight_hh_l0"].T + params["bias_hh_l0"])
        np.testing.assert_allclose(out[t], h, rtol=1e-12, atol=1e-12)


def test_eval_mode_and_rate_zero_are_untouched():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    for cls in (lstmc.nn.LSTM, lstmc.nn.GRU, lstmc.nn.RNN):
        lstmc.manual_seed(2)
        a = cls(3, 5, num_layers=2, recurrent_dropout=0.5)
        lstmc.manual_seed(2)
        b = cls(3, 5, num_layers=2)
        np.testing.assert_array_equal(a.eval()(x)[0], b.eval()(x)[0])
        # training without dropout draws nothing and computes what eval does
        a.recurrent_dropout = 0.0
        np.testing.assert_allclose(a.train()(x)[0], b(x)[0], rtol=1e-6, atol=1e-6)
        assert a._last_recurrent_masks is None


def test_streaming_step_never_drops():
    """step has eval semantics (as dropout=): the same in training mode as in eval mode."""
    rng = np.random.default_rng(2)
    m = lstmc.nn.GRU(3, 7, num_layers=2, recurrent_dropout=0.5)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    want = m.eval()(x)[0]
    m.train()
    state = m.initial_state(batch_size=2)
    for t in range(5):
        y, state = m.step(x[t], state)
        np.testing.assert_allclose(y, want[t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_rb", "rnn_tanh"])
def test_cells_keep_one_mask_per_sequence(cell):
    """A cell's training steps use the masks of its first step until reset_dropout_mask():
    T cell steps equal the sequence module run with those masks, and the gradients of the
    last step equal the reference's."""
    rng = np.random.default_rng(4)
    c = CELLS[cell]
    opts = {k: v for k, v in c.options.items() if k != "proj_size"}
    cellm = getattr(lstmc.nn, c.cls + "Cell")(3, 6, dtype=np.float64, recurrent_dropout=0.4,
                                              **opts).train()
    x = rng.standard_normal((5, 2, 3))
    h = None
    outs = []
    for t in range(5):
        h = cellm(x[t], h)
        outs.append(h[0] if c.cls == "LSTM" else h)
    rm = cellm._rmask
    assert rm.shape == (1, c.gates, 2, 6)
    params = {k + "_l0": p.data for k, p in cellm.named_parameters()}
    rout = REF_FWD[c.cls](x, params, recurrent_masks=rm, **_ref_options(cell))[0]
    np.testing.assert_allclose(np.stack(outs), rout, rtol=1e-12, atol=1e-12)
    cellm.reset_dropout_mask()
    cellm(x[0])
    assert not np.array_equal(cellm._rmask, rm)
    cellm.eval()   # eval steps neither use nor draw masks
    plain = getattr(lstmc.nn, c.cls + "Cell")(3, 6, dtype=np.float64, **opts)
    plain.load_state_dict(cellm.state_dict())
    a, b = cellm(x[0]), plain(x[0])
    np.testing.assert_array_equal(a[0] if c.cls == "LSTM" else a,
                                  b[0] if c.cls == "LSTM" else b)


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_quantized_copy_runs_without_dropout(dtype):
    rng = np.random.default_rng(5)
    m = lstmc.nn.LSTM(4, 16, num_layers=2, recurrent_dropout=0.5).eval()
    x = rng.standard_normal((6, 3, 4)).astype(np.float32)
    q = lstmc.quantize(m, dtype=dtype)
    np.testing.assert_allclose(q(x)[0], m(x)[0], atol=0.05)


def test_bad_rates_and_masks_are_refused():
    for bad in (-0.1, 1.0, True, "0.5"):
        with pytest.raises(ValueError, match="recurrent_dropout"):
            lstmc.nn.LSTM(2, 3, recurrent_dropout=bad)
        with pytest.raises(ValueError, match="recurrent_dropout"):
            lstmc.nn.GRUCell(2, 3, recurrent_dropout=bad)
        with pytest.raises(ValueError, match="recurrent_dropout"):
            lstmc.layers.SimpleRNN(3, recurrent_dropout=bad)
    # the boundary: a Seq made for recurrent dropout needs its masks, another refuses them
    seq = _core.Seq(_core.CELL_RNN_TANH, 2, 1, 1, 4, 0, 1, 1, True, [2],
                    recurrent_dropout=True)
    f = np.float64
    args = (np.zeros(8, f), np.zeros(4, f), None, np.zeros(seq.reserve_size, f),
            np.zeros(2, f), None, None, None, np.zeros(seq.param_count, f),
            np.zeros(seq.scratch_size(True), f))
    with pytest.raises(ValueError, match="rmasks"):
        seq.forward(*args)
    with pytest.raises(ValueError, match="rmasks"):
        seq.forward(*args, rmasks=np.ones(3, f))
    seq.forward(*args, rmasks=np.ones(4, f))
    plain = _core.Seq(_core.CELL_RNN_TANH, 2, 1, 1, 4, 0, 1, 1, True, [2])
    with pytest.raises(ValueError, match="rmasks"):
        plain.forward(*args[:3], np.zeros(plain.reserve_size, f), *args[4:],
                      rmasks=np.ones(4, f))


# ---- the Keras face against Keras 3 --------------------------------------------------------
_KERAS_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}
_KERAS_ORDER = {"LSTM": [0, 1, 2, 3], "GRU": [1, 0, 2], "SimpleRNN": [0]}   # Keras -> lstmc


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "GRU_reset_before", "SimpleRNN"])
@pytest.mark.parametrize("case", ["dense", "masked", "go_backwards", "bidirectional",
                                  "last_output"])
def test_keras_face_matches_keras_with_the_same_masks(kind, case):
    """Keras' cells get the masks through get_recurrent_dropout_mask (Keras order: LSTM i,
    f, c, o; GRU z, r, h), lstmc's module through _draw_recurrent_masks (lstmc's order);
    outputs and the input and weight gradients of sum(out * w) in float32."""
    keras = keras_or_skip()
    import torch
    rng = np.random.default_rng(6)
    B, T, I, U = 3, 7, 5, 4
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    holes = np.ones((B, T), bool)
    holes[0, 5:] = False
    holes[1, :2] = False
    holes[2, 3] = False
    cls, extra = (("GRU", dict(reset_after=False)) if kind == "GRU_reset_before"
                  else (kind, {}))
    kw = dict(return_sequences=case != "last_output", go_backwards=case == "go_backwards",
              recurrent_dropout=0.3, **extra)
    kl, ll = getattr(keras.layers, cls)(U, **kw), getattr(lstmc.layers, cls)(U, **kw)
    bidir = case == "bidirectional"
    if bidir:
        kl, ll = keras.layers.Bidirectional(kl), lstmc.layers.Bidirectional(ll)
    D, G = (2 if bidir else 1), _KERAS_GATES[cls]
    kmasks = _masks(rng, (D, G, B, U), 0.3).astype(np.float32)
    kl.build((None, T, I))
    ll.build((T, I))
    ll.set_weights(kl.get_weights())
    for d, kcell in enumerate([kl.forward_layer.cell, kl.backward_layer.cell] if bidir
                              else [kl.cell]):
        ms = [torch.tensor(kmasks[d, g]) for g in range(G)]
        kcell.get_recurrent_dropout_mask = lambda step_input, ms=ms: ms if G > 1 else ms[0]
    inner = ll.layer if bidir else ll
    inner._module._draw_recurrent_masks = lambda B_: kmasks[:, _KERAS_ORDER[cls]]

    mask = None if case == "dense" else holes
    xt = torch.tensor(x, requires_grad=True)
    ky = kl(xt, training=True, mask=None if mask is None else torch.tensor(mask))
    w = rng.standard_normal(tuple(ky.shape)).astype(np.float32)
    (ky * torch.tensor(w)).sum().backward()
    ly, _ = ll.forward(x, mask=mask, training=True)
    dx = ll.backward(w)

    chk = Checks(f"{kind} {case}: lstmc vs Keras 3, the same recurrent dropout masks")
    ky = ky.detach().numpy()
    chk.close("output", ly, ky, 1e-5, 1e-6)
    chk.close("dx", dx, xt.grad.numpy(), 1e-4, 1e-5)
    # lstmc's gradients in Keras' layout: written into the weights, read with get_weights
    # (one bias where lstmc has two: Keras' is b_ih's, b_hh stays 0 and untrained)
    params = dict(inner._module.named_parameters())
    keep = {k: p.data.copy() for k, p in params.items()}
    for k, p in params.items():
        single = k.startswith("bias_hh") and not inner._recurrent_bias
        p.data[...] = 0 if single else p.grad
    lgrads = ll.get_weights()
    for k, p in params.items():
        p.data[...] = keep[k]
    for k, (a, v) in enumerate(zip(lgrads, kl.trainable_weights)):
        chk.close(f"grad {v.path}", a, v.value.grad.numpy(), 1e-4, 1e-5)
    chk.raise_if_any()
    # and the masks acted: without them the output differs
    assert np.abs(ll.forward(x, mask=mask, training=False)[0] - ky).max() > 1e-3


def test_keras_layers_config_and_save_keep_recurrent_dropout(tmp_path):
    model = lstmc.models.Sequential()
    model.add(lstmc.layers.Bidirectional(lstmc.layers.GRU(4, recurrent_dropout=0.25,
                                                          return_sequences=True),
                                         input_shape=(5, 3)))
    model.add(lstmc.layers.SimpleRNN(3, recurrent_dropout=0.5))
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).standard_normal((8, 5, 3)).astype(np.float32)
    y = np.zeros((8, 3), np.float32)
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    path = tmp_path / "m.lstmc"
    model.save(path)
    loaded = lstmc.models.load_model(path)
    assert loaded.layers[0].layer.recurrent_dropout == 0.25
    assert loaded.layers[1].recurrent_dropout == 0.5
    assert loaded.layers[1].get_config()["recurrent_dropout"] == 0.5
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-6, atol=1e-6)


def test_with_cell_options_and_layouts():
    """The general steps (GRU reset-before with cell_clip, forward; LSTM peepholes with
    cell_clip, forward and backward), an unbatched call and batch_first with lengths, in
    float64 against the reference with the call's masks."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 3, 4))
    chk = Checks("recurrent dropout with cell options and layouts")
    m = lstmc.nn.GRU(4, 6, reset_after=False, cell_clip=1.5, recurrent_dropout=0.4,
                     dtype=np.float64, bidirectional=True).train()
    out, _ = m(x)
    params = {k: p.data for k, p in m.named_parameters()}
    want = reference.gru_forward(x, params, bidirectional=True, reset_after=False, clip=1.5,
                                 recurrent_masks=m._last_recurrent_masks)[0]
    chk.close("gru reset-before clip: out", out, want, 1e-10, 1e-10)
    m = lstmc.nn.LSTM(4, 6, peepholes=True, cell_clip=2.0, recurrent_dropout=0.4,
                      dtype=np.float64, num_layers=2).train()
    out, _ = m(x)
    params = {k: p.data for k, p in m.named_parameters()}
    want, _, cache = reference.lstm_forward(x, params, num_layers=2, clip=2.0,
                                            recurrent_masks=m._last_recurrent_masks)
    chk.close("lstm peepholes clip: out", out, want, 1e-10, 1e-10)
    dy = rng.standard_normal(out.shape)
    m.zero_grad()
    dx, _ = m.backward(dy)
    rdx, _, grads = reference.lstm_backward(cache, dy)
    chk.close("lstm peepholes clip: dx", dx, rdx, 1e-10, 1e-10)
    for name, p in m.named_parameters():
        chk.close(f"lstm peepholes clip: {name}.grad", p.grad, grads[name], 1e-10, 1e-10)
    m = lstmc.nn.LSTM(4, 6, recurrent_dropout=0.4, dtype=np.float64).train()
    out, _ = m(x[:, 0])
    assert m._last_recurrent_masks.shape == (1, 4, 1, 6)
    params = {k: p.data for k, p in m.named_parameters()}
    want = reference.lstm_forward(x[:, :1], params,
                                  recurrent_masks=m._last_recurrent_masks)[0][:, 0]
    chk.close("unbatched: out", out, want, 1e-10, 1e-10)
    m = lstmc.nn.GRU(4, 6, recurrent_dropout=0.4, dtype=np.float64, batch_first=True).train()
    lengths = np.array([2, 5, 0])
    out, _ = m(x.transpose(1, 0, 2), lengths=lengths)
    params = {k: p.data for k, p in m.named_parameters()}
    want = reference.gru_forward(x, params, lengths=lengths,
                                 recurrent_masks=m._last_recurrent_masks)[0]
    chk.close("batch_first: out", out, want.transpose(1, 0, 2), 1e-10, 1e-10)
    chk.raise_if_any()


@pytest.mark.parametrize("cell", list(CELLS))
def test_threads_agree_to_float32_rounding(cell, restore_threads):
    """The same call with the same masks at one and two threads (H = 48: three blocks of
    units; B = 32: a step big enough for a team, but with a projection of 3), float32:
    within THREAD_TOL (the per-block products and masked passes are split by units and
    columns, the weight gradients by output elements)."""
    from helpers import THREAD_TOL
    rng = np.random.default_rng(8)
    m = make_module(cell, 5, 48, num_layers=2, bidirectional=True, recurrent_dropout=0.3)
    m.train()
    c = CELLS[cell]
    Hout = c.options.get("proj_size", 0) or 48
    masks = _masks(rng, (4, c.gates, 32, Hout), 0.3).astype(np.float32)
    m._draw_recurrent_masks = lambda B: masks
    x = rng.standard_normal((9, 32, 5)).astype(np.float32)
    lengths = rng.integers(0, 10, size=32)
    dy = rng.standard_normal((9, 32, 2 * Hout)).astype(np.float32)
    results = []
    for threads in (1, 2):
        lstmc.set_num_threads(threads)
        m.zero_grad()
        out, _ = m(x, lengths=lengths)
        dx, _ = m.backward(dy)
        results.append([out, dx] + [p.grad.copy() for p in m.parameters()])
    chk = Checks(f"{cell}: 1 vs 2 threads")
    for k, (a, b) in enumerate(zip(*results)):
        chk.close(f"tensor {k}", b, a, 0, THREAD_TOL[np.float32])
    chk.raise_if_any()
