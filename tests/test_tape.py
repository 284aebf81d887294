"""The tape (lstmc.nn.tape, lstmc.nn.Composite, lstmc.nn.functional): backward derived from a
forward written with module calls and tensor operations.

* Every operation of lstmc.nn.functional: its gradient against central differences in
  float64 (hypothesis over shapes with sizes 1 and odd sizes, broadcasting included).
* An encoder-decoder with dot attention over the encoder's outputs (padding mask), the
  decoder LSTM started from the encoder's final (h, c), a concatenation, a Linear and the
  cross-entropy: every parameter's gradient against central differences (float64) and
  against the same model in PyTorch (weights copied by state_dict name; float64 and
  float32), through a Composite and through an explicit tape.
* The same model's decoder run one step at a time (LSTMCell, teacher forcing) and a shared
  embedding, a sequence module called once per step: each call's saved state kept apart.
* Dropout's masks and an LSTM's inter-layer dropout per call; a hand-written module inside
  a tape; the errors.

Tolerances. Central differences in float64 with eps 1e-6: truncation ~eps^2 and rounding
~1e-16 / eps of the loss, so |tape - numerical| <= 1e-6 * max(1, max|numerical|).
Against torch: float64 rtol 1e-9 (both round at 1e-16; summation orders differ through
BPTT), float32 rtol 1e-5 with atol 1e-5 * max|torch| (a gradient element sums many
products; an element that cancels to ~0 is judged against the tensor's scale).
"""
import copy
import pickle
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmc
from lstmc import nn
from helpers import Checks, numerical_grad

F = nn.functional
_SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FD_TOL = 1e-6


# ------------------------------------------------------------------------------------------
# operations against central differences

def check_op(fn, *arrays, seed=0):
    """The tape's gradient of sum(fn(*tensors) * W) (W random) with respect to every array
    against central differences, all float64."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    with nn.tape() as t:
        xs = [t.watch(a) for a in arrays]
        y = fn(*xs)
    W = np.random.default_rng(seed).standard_normal(y.shape)
    t.backward(y, W)

    def value():
        with nn.tape() as t2:
            out = fn(*(t2.watch(a) for a in arrays))
        return float((out.numpy() * W).sum())

    chk = Checks(f"tape gradient vs central differences of {fn}")
    for k, (a, x) in enumerate(zip(arrays, xs)):
        num = numerical_grad(value, a)
        got = x.grad if x.grad is not None else np.zeros_like(a)
        chk.close(f"d/d arg{k}", got, num, 0.0, FD_TOL)
    chk.raise_if_any()


def shapes(min_dims=1, max_dims=3):
    return st.lists(st.integers(1, 4), min_size=min_dims, max_size=max_dims).map(tuple)


def rand(shape, seed, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, shape)


@settings(max_examples=25, **_SETTINGS)
@given(shape=shapes(), drop=st.data(), seed=st.integers(0, 2**16))
def test_arithmetic_broadcast(shape, drop, seed):
    # b broadcasts: some axes of a's shape set to 1, and possibly fewer dimensions
    ones = drop.draw(st.lists(st.booleans(), min_size=len(shape), max_size=len(shape)))
    lead = drop.draw(st.integers(0, len(shape) - 1))
    bshape = tuple(1 if o else n for o, n in zip(ones, shape))[lead:]
    a, b = rand(shape, seed), rand(bshape, seed + 1, 0.5, 2.0)   # b away from 0 (divide)
    check_op(lambda x, y: x + y, a, b)
    check_op(lambda x, y: x - y, a, b)
    check_op(lambda x, y: y - x * y, a, b)
    check_op(lambda x, y: x / y, a, b)
    check_op(lambda x, y: 1.5 / y - x * 2.0 + 3.0, a, b)
    check_op(lambda x, y: -(x ** 3) + np.multiply(y, 0.5), a, b)


@settings(max_examples=20, **_SETTINGS)
@given(shape=shapes(), seed=st.integers(0, 2**16))
def test_elementwise(shape, seed):
    a = rand(shape, seed)
    check_op(F.tanh, a)
    check_op(F.sigmoid, a)
    check_op(lambda x: x.exp(), a)
    check_op(np.tanh, a)
    check_op(lambda x: F.log(x * x + 0.5), a)
    # relu: kink at 0, so the data is kept away from it
    check_op(F.relu, np.where(np.abs(a) < 0.1, 0.5, a))


@settings(max_examples=25, **_SETTINGS)
@given(b=st.integers(1, 3), n=st.integers(1, 4), k=st.integers(1, 4), m=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_matmul_and_einsum(b, n, k, m, seed):
    A, Bm = rand((b, n, k), seed), rand((b, k, m), seed + 1)
    check_op(lambda x, y: x @ y, A, Bm)
    check_op(lambda x, y: x @ y, A, rand((k, m), seed + 2))          # broadcast weights
    check_op(lambda x, y: x @ y, rand((k,), seed + 3), Bm)            # vector @ stack
    check_op(lambda x, y: x @ y, A, rand((k,), seed + 4))             # stack @ vector
    check_op(lambda x, y: np.matmul(x, y), rand((n, k), seed), rand((k, m), seed + 5))
    check_op(lambda x, y: F.einsum("bnk,bmk->bnm", x, y), A, rand((b, m, k), seed + 6))
    check_op(lambda x, y: np.einsum("bn,bnk->bk", x, y), rand((b, n), seed + 7), A)
    check_op(lambda x, y: F.einsum("bnk,j->bj", x, y), A, rand((m,), seed + 8))
    check_op(lambda x: F.einsum("bnk->kb", x), A)


@settings(max_examples=25, **_SETTINGS)
@given(shape=shapes(2, 3), seed=st.integers(0, 2**16), data=st.data())
def test_softmax_with_and_without_mask(shape, seed, data):
    a = rand(shape, seed, -3, 3)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    check_op(lambda x: F.softmax(x, axis=axis), a)
    # a mask broadcast along the first axis; whole slices masked included
    mask = np.random.default_rng(seed).random((1,) + shape[1:]) < 0.6
    check_op(lambda x: x.softmax(axis=axis, mask=mask), a)
    check_op(lambda x: F.softmax(x * 2.0, axis, mask) * x, a)


def test_softmax_values():
    x = np.array([[1.0, 2.0, 3.0, 1000.0], [0.5, -1.0, 2.0, 0.0]])
    mask = np.array([[True, True, True, False], [False, False, False, False]])
    with nn.tape() as t:
        y = F.softmax(t.watch(x), mask=mask).numpy()
    constant = F.softmax(x, mask=mask)            # no tensor in: a plain array out
    assert type(constant) is np.ndarray
    np.testing.assert_array_equal(constant, y)
    e = np.exp(np.array([1.0, 2.0, 3.0]) - 3.0)
    np.testing.assert_allclose(y[0], np.append(e / e.sum(), 0.0), rtol=1e-15, atol=0)
    np.testing.assert_array_equal(y[1], 0.0)          # a fully masked row: zeros, not NaN
    with nn.tape() as t:
        y = F.softmax(t.watch(x)).numpy()              # 1000 does not overflow
    np.testing.assert_allclose(y[0], [0, 0, 0, 1], atol=1e-300)
    with nn.tape() as t:                               # NaN stays in its own row
        y = F.softmax(t.watch(np.array([[np.nan, 1.0], [0.0, 0.0]]))).numpy()
    assert np.isnan(y[0]).all() and np.allclose(y[1], 0.5)


@settings(max_examples=25, **_SETTINGS)
@given(shape=shapes(1, 3), seed=st.integers(0, 2**16), data=st.data())
def test_layout_and_reductions(shape, seed, data):
    a = rand(shape, seed)
    nd = len(shape)
    axis = data.draw(st.integers(-nd, nd - 1))
    perm = tuple(data.draw(st.permutations(range(nd))))
    check_op(lambda x: x.transpose(perm) * rand(np.transpose(a, perm).shape, seed), a)
    check_op(lambda x: np.transpose(x), a)
    check_op(lambda x: x.reshape(-1), a)
    check_op(lambda x: np.reshape(x, (1,) + shape[::-1]), a)
    check_op(lambda x: x.swapaxes(0, -1), a)
    check_op(lambda x: x.sum() * x, a)
    check_op(lambda x: x.sum(axis=axis), a)
    check_op(lambda x: np.sum(x, axis=axis, keepdims=True) * x, a)
    check_op(lambda x: x.mean(axis=axis) ** 2, a)
    check_op(lambda x: np.mean(x) * x, a)
    check_op(lambda x: F.mean(x, axis=(0, -1)) if nd > 1 else x.mean(), a)


@settings(max_examples=25, **_SETTINGS)
@given(shape=shapes(2, 3), seed=st.integers(0, 2**16), data=st.data())
def test_indexing_concatenate_stack(shape, seed, data):
    a, b = rand(shape, seed), rand(shape, seed + 1)
    nd = len(shape)
    axis = data.draw(st.integers(-nd, nd - 1))
    check_op(lambda x: x[:, -1], a)
    check_op(lambda x: x[0] * x[-1], a)
    check_op(lambda x: x[..., ::2], a)
    check_op(lambda x: x[None, :, 0], a)
    idx = np.random.default_rng(seed).integers(0, shape[0], 5)    # repeats: summed
    check_op(lambda x: x[idx], a)
    mask = np.random.default_rng(seed).random(shape) < 0.5
    check_op(lambda x: x[mask], a)
    check_op(lambda x: sum(x), a)                                 # iteration over axis 0
    check_op(lambda x, y: np.concatenate([x, y, x], axis=axis), a, b)
    check_op(lambda x, y: F.concatenate([x, np.ones(shape), y], axis), a, b)
    check_op(lambda x, y: np.stack([x, y * x], axis=axis), a, b)
    check_op(lambda x, y: F.stack([y, x, 2.0 * x], -1), a, b)


def test_gradient_sums_over_uses():
    """A tensor used several times gets the sum of its uses' gradients."""
    x = np.array([0.3, -0.7, 1.1])
    with nn.tape() as t:
        w = t.watch(x)
        y = (w * w).sum() + F.tanh(w).sum() + w[1] * 3.0
    y.backward()
    np.testing.assert_allclose(w.grad, 2 * x + (1 - np.tanh(x) ** 2) + [0, 3, 0], rtol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses_on_tape_tensors(reduction):
    """Each loss takes a tape tensor: its value is a tensor (0-d for mean and sum), and the
    gradient through it matches central differences."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 4, 5))
    cases = [(nn.CrossEntropyLoss(reduction=reduction, label_smoothing=0.1),
              rng.integers(0, 5, (3, 4))),
             (nn.BCEWithLogitsLoss(reduction=reduction), rng.random((3, 4, 5))),
             (nn.MSELoss(reduction=reduction), rng.standard_normal((3, 4, 5)))]
    for loss_fn, target in cases:
        def fn(v):
            out = loss_fn(F.tanh(v) * 2.0, target)
            if reduction == "none":   # weighted, so that each element's gradient differs
                out = out * np.linspace(0.5, 1.5, out.size).reshape(out.shape)
            return out
        with nn.tape() as t:
            value = loss_fn(t.watch(x), target)
        assert isinstance(value, nn.Tensor) and value.dtype == np.float64
        assert value.shape == (() if reduction != "none" else loss_fn(x, target).shape)
        np.testing.assert_array_equal(value.numpy(), loss_fn(x, target))
        check_op(fn, x)


# ------------------------------------------------------------------------------------------
# the encoder-decoder with attention

V, E, H = 11, 4, 5
B, S, T = 3, 6, 4
LENGTHS = np.array([6, 2, 4])


def batch(seed=0, b=B, s=S, t=T, lengths=LENGTHS):
    """src (b, s) padded with id 0 past each length, lengths, tgt (b, t), targets y."""
    rng = np.random.default_rng(seed)
    src = rng.integers(1, V, (b, s))
    src[np.arange(s)[None] >= lengths[:, None]] = 0
    tgt = rng.integers(1, V, (b, t))
    y = rng.integers(0, V, (b, t))
    y[-1, -1] = -100                                         # an ignored target
    return src, lengths, tgt, y


def attend(query, keys, lengths):
    """Dot attention of query (B, T, H) over keys (B, S, H), padding masked -> context."""
    mask = np.arange(keys.shape[1])[None, None, :] < lengths[:, None, None]   # (B, 1, S)
    weights = F.softmax(query @ keys.transpose(0, 2, 1), axis=-1, mask=mask)  # (B, T, S)
    return weights @ keys


class Seq2Seq(nn.Composite):
    """Embedding -> LSTM encoder; decoder LSTM from the encoder's (h, c); dot attention over
    the encoder's outputs; concat; Linear."""

    def __init__(self, dtype, e=E, h=H):
        super().__init__()
        self.src_embed = nn.Embedding(V, e, padding_idx=0, dtype=dtype)
        self.tgt_embed = nn.Embedding(V, e, dtype=dtype)
        self.encoder = nn.LSTM(e, h, batch_first=True, dtype=dtype)
        self.decoder = nn.LSTM(e, h, batch_first=True, dtype=dtype)
        self.out = nn.Linear(2 * h, V, dtype=dtype)

    def forward(self, src, lengths, tgt):
        enc, state = self.encoder(self.src_embed(src), lengths=lengths)
        dec, _ = self.decoder(self.tgt_embed(tgt), state)
        return self.out(np.concatenate([dec, attend(dec, enc, lengths)], axis=-1))


class StepDecoder(nn.Composite):
    """The same model with the decoder run one step at a time (an LSTMCell, teacher
    forcing), attention per step with einsum; one embedding shared by both sides."""

    def __init__(self, dtype, e=E, h=H):
        super().__init__()
        self.embed = nn.Embedding(V, e, dtype=dtype)
        self.encoder = nn.LSTM(e, h, batch_first=True, dtype=dtype)
        self.cell = nn.LSTMCell(e, h, dtype=dtype)
        self.out = nn.Linear(2 * h, V, dtype=dtype)

    def forward(self, src, lengths, tgt):
        enc, (h, c) = self.encoder(self.embed(src), lengths=lengths)
        h, c = h[0], c[0]
        emb = self.embed(tgt)
        mask = np.arange(enc.shape[1])[None, :] < lengths[:, None]
        logits = []
        for t in range(tgt.shape[1]):
            h, c = self.cell(emb[:, t], (h, c))
            w = F.softmax(F.einsum("bh,bsh->bs", h, enc), mask=mask)
            ctx = F.einsum("bs,bsh->bh", w, enc)
            logits.append(self.out(F.concatenate([h, ctx], axis=-1)))
        return np.stack(logits, axis=1)


class BiGRUSeq2Seq(nn.Composite):
    """A bidirectional GRU encoder whose two final states, concatenated and bridged by a
    Linear + tanh, start a GRU decoder; attention with projected keys."""

    def __init__(self, dtype, e=E, h=H):
        super().__init__()
        self.embed = nn.Embedding(V, e, dtype=dtype)
        self.encoder = nn.GRU(e, h, batch_first=True, bidirectional=True, dtype=dtype)
        self.bridge = nn.Linear(2 * h, h, dtype=dtype)
        self.decoder = nn.GRU(e, h, batch_first=True, dtype=dtype)
        self.key = nn.Linear(2 * h, h, dtype=dtype)
        self.out = nn.Linear(3 * h, V, dtype=dtype)

    def forward(self, src, lengths, tgt):
        enc, h_n = self.encoder(self.embed(src), lengths=lengths)      # h_n (2, B, H)
        h0 = self.bridge(np.concatenate([h_n[0], h_n[1]], axis=-1)).tanh()
        dec, _ = self.decoder(self.embed(tgt), h0[None])
        mask = np.arange(enc.shape[1])[None, None, :] < lengths[:, None, None]
        w = F.softmax(dec @ self.key(enc).swapaxes(1, 2), mask=mask)
        return self.out(F.concatenate([dec, w @ enc], axis=-1))


MODELS = [Seq2Seq, StepDecoder, BiGRUSeq2Seq]


def model_loss(model, loss_fn, src, lengths, tgt, y):
    return loss_fn(model(src, lengths, tgt), y)


def composite_grads(model, src, lengths, tgt, y):
    """Gradients by Composite.backward after the usual lstmc training step."""
    loss_fn = nn.CrossEntropyLoss()
    model.zero_grad()
    loss = model_loss(model, loss_fn, src, lengths, tgt, y)
    model.backward(loss_fn.backward())
    return loss, {n: p.grad.copy() for n, p in model.named_parameters()}


def tape_grads(model, src, lengths, tgt, y):
    """Gradients by an explicit tape around the model and the loss."""
    loss_fn = nn.CrossEntropyLoss()
    model.zero_grad()
    with nn.tape() as t:
        loss = model_loss(model, loss_fn, src, lengths, tgt, y)
    assert isinstance(loss, nn.Tensor) and loss.shape == ()
    t.backward(loss)
    return float(loss), {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("cls", MODELS)
def test_encoder_decoder_against_finite_differences(cls):
    lstmc.manual_seed(0)
    model = cls(np.float64)
    src, lengths, tgt, y = batch()
    loss, grads = composite_grads(model, src, lengths, tgt, y)
    loss_fn = nn.CrossEntropyLoss()
    chk = Checks(f"{cls.__name__}: Composite.backward vs central differences (float64)")
    for name, p in model.named_parameters():
        num = numerical_grad(lambda: model_loss(model, loss_fn, src, lengths, tgt, y), p.data)
        chk.close(name, grads[name], num, 0.0, FD_TOL)
        if name != "key.bias":   # adds one constant to a row of scores: softmax ignores it
            assert np.abs(num).max() > 1e-6, f"{name}: the loss does not reach it"
    chk.raise_if_any()
    loss2, grads2 = tape_grads(model, src, lengths, tgt, y)   # the explicit tape: same numbers
    assert loss2 == loss
    for name in grads:
        np.testing.assert_array_equal(grads2[name], grads[name], err_msg=name)


def torch_twin(torch, cls, model, dtype, e=E, h=H):
    """The torch model of `cls` with `model`'s weights (state_dict by name)."""
    tn = torch.nn

    class TorchSeq2Seq(tn.Module):
        def __init__(self, e, h):
            super().__init__()
            self.src_embed = tn.Embedding(V, e, padding_idx=0)
            self.tgt_embed = tn.Embedding(V, e)
            self.encoder = tn.LSTM(e, h, batch_first=True)
            self.decoder = tn.LSTM(e, h, batch_first=True)
            self.out = tn.Linear(2 * h, V)

        def forward(self, src, lengths, tgt):
            packed = tn.utils.rnn.pack_padded_sequence(self.src_embed(src), lengths,
                                                       batch_first=True, enforce_sorted=False)
            enc, state = self.encoder(packed)
            enc, _ = tn.utils.rnn.pad_packed_sequence(enc, batch_first=True,
                                                      total_length=src.shape[1])
            dec, _ = self.decoder(self.tgt_embed(tgt), state)
            mask = torch.arange(src.shape[1])[None, None, :] < lengths[:, None, None]
            scores = (dec @ enc.transpose(1, 2)).masked_fill(~mask, float("-inf"))
            ctx = torch.softmax(scores, -1) @ enc
            return self.out(torch.cat([dec, ctx], -1))

    class TorchStepDecoder(tn.Module):
        def __init__(self, e, h):
            super().__init__()
            self.embed = tn.Embedding(V, e)
            self.encoder = tn.LSTM(e, h, batch_first=True)
            self.cell = tn.LSTMCell(e, h)
            self.out = tn.Linear(2 * h, V)

        def forward(self, src, lengths, tgt):
            packed = tn.utils.rnn.pack_padded_sequence(self.embed(src), lengths,
                                                       batch_first=True, enforce_sorted=False)
            enc, (h, c) = self.encoder(packed)
            enc, _ = tn.utils.rnn.pad_packed_sequence(enc, batch_first=True,
                                                      total_length=src.shape[1])
            h, c = h[0], c[0]
            emb = self.embed(tgt)
            mask = torch.arange(src.shape[1])[None, :] < lengths[:, None]
            logits = []
            for t in range(tgt.shape[1]):
                h, c = self.cell(emb[:, t], (h, c))
                scores = torch.einsum("bh,bsh->bs", h, enc).masked_fill(~mask, float("-inf"))
                ctx = torch.einsum("bs,bsh->bh", torch.softmax(scores, -1), enc)
                logits.append(self.out(torch.cat([h, ctx], -1)))
            return torch.stack(logits, 1)

    class TorchBiGRUSeq2Seq(tn.Module):
        def __init__(self, e, h):
            super().__init__()
            self.embed = tn.Embedding(V, e)
            self.encoder = tn.GRU(e, h, batch_first=True, bidirectional=True)
            self.bridge = tn.Linear(2 * h, h)
            self.decoder = tn.GRU(e, h, batch_first=True)
            self.key = tn.Linear(2 * h, h)
            self.out = tn.Linear(3 * h, V)

        def forward(self, src, lengths, tgt):
            packed = tn.utils.rnn.pack_padded_sequence(self.embed(src), lengths,
                                                       batch_first=True, enforce_sorted=False)
            enc, h_n = self.encoder(packed)
            enc, _ = tn.utils.rnn.pad_packed_sequence(enc, batch_first=True,
                                                      total_length=src.shape[1])
            h0 = torch.tanh(self.bridge(torch.cat([h_n[0], h_n[1]], -1)))
            dec, _ = self.decoder(self.embed(tgt), h0[None])
            mask = torch.arange(src.shape[1])[None, None, :] < lengths[:, None, None]
            scores = (dec @ self.key(enc).transpose(1, 2)).masked_fill(~mask, float("-inf"))
            return self.out(torch.cat([dec, torch.softmax(scores, -1) @ enc], -1))

    twin = {Seq2Seq: TorchSeq2Seq, StepDecoder: TorchStepDecoder,
            BiGRUSeq2Seq: TorchBiGRUSeq2Seq}[cls](e, h).to(
        torch.float64 if dtype == np.float64 else torch.float32)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return twin


def compare_with_torch(torch, cls, dtype, e=E, h=H, b=B, s=S, t=T, lengths=LENGTHS, seed=1):
    lstmc.manual_seed(seed)
    model = cls(dtype, e, h)
    twin = torch_twin(torch, cls, model, dtype, e, h)
    src, lengths, tgt, y = batch(seed + 2, b, s, t, lengths)
    loss, grads = composite_grads(model, src, lengths, tgt, y)
    logits = twin(torch.from_numpy(src), torch.from_numpy(lengths), torch.from_numpy(tgt))
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(y).reshape(-1))
    ref.backward()
    rtol, atol = (1e-9, 1e-12) if dtype == np.float64 else (1e-5, 1e-5)
    chk = Checks(f"{cls.__name__} vs torch ({np.dtype(dtype).name}, E={e} H={h} B={b} S={s} "
                 f"T={t} lengths={list(lengths)})")
    chk.close("loss", np.float64(loss), ref.item(), rtol, atol)
    for name, p in twin.named_parameters():
        chk.close(name, grads[name], p.grad.numpy(), rtol, atol)
    chk.raise_if_any()
    _, taped = tape_grads(model, src, lengths, tgt, y)
    for name in grads:
        np.testing.assert_array_equal(taped[name], grads[name], err_msg=name)


@pytest.mark.parametrize("cls", MODELS)
def test_encoder_decoder_against_torch(torch, cls, float_dtype):
    compare_with_torch(torch, cls, float_dtype)


@settings(max_examples=12, **_SETTINGS)
@given(b=st.integers(1, 3), s=st.integers(1, 5), t=st.integers(1, 4), e=st.integers(1, 4),
       h=st.integers(1, 5), data=st.data())
def test_encoder_decoder_shapes_against_torch(torch, b, s, t, e, h, data):
    """The three models over shapes with sizes 1 and odd sizes (float64, torch the
    reference), lengths from 1 to S in any order."""
    lengths = np.array(data.draw(st.lists(st.integers(1, s), min_size=b, max_size=b)))
    for cls in MODELS:
        compare_with_torch(torch, cls, np.float64, e, h, b, s, t, lengths)


def test_inputs_gradient_and_state_outputs(torch):
    """Composite.backward returns the gradients of float inputs, and takes gradients of
    outputs that are states (h, c) as well as sequences; torch is the reference."""

    class Encoder(nn.Composite):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 4, num_layers=2, dtype=np.float64)
            self.proj = nn.Linear(4, 2, dtype=np.float64)

        def forward(self, x, hx):
            out, (h, c) = self.lstm(x, hx)
            return self.proj(out).tanh(), (h, c)

    lstmc.manual_seed(2)
    model = Encoder()
    twin = torch.nn.LSTM(3, 4, num_layers=2).double()
    proj = torch.nn.Linear(4, 2).double()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.lstm.state_dict().items()})
    proj.load_state_dict({k: torch.from_numpy(v) for k, v in model.proj.state_dict().items()})
    rng = np.random.default_rng(0)
    x, h0, c0 = rng.standard_normal((5, 2, 3)), rng.standard_normal((2, 2, 4)), \
        rng.standard_normal((2, 2, 4))
    gy, gh, gc = rng.standard_normal((5, 2, 2)), rng.standard_normal((2, 2, 4)), None
    y, (h, c) = model(x, (h0, c0))
    dx, (dh0, dc0) = model.backward(gy, (gh, gc))
    tx, th0, tc0 = (torch.from_numpy(a).requires_grad_() for a in (x, h0, c0))
    out, (th, tc) = twin(tx, (th0, tc0))
    ty = torch.tanh(proj(out))
    ((ty * torch.from_numpy(gy)).sum() + (th * torch.from_numpy(gh)).sum()).backward()
    chk = Checks("Composite with state outputs vs torch (float64)")
    chk.close("y", y, ty.detach().numpy(), 1e-12, 1e-12)
    chk.close("h", h, th.detach().numpy(), 1e-12, 1e-12)
    chk.close("c", c, tc.detach().numpy(), 1e-12, 1e-12)
    chk.close("dx", dx, tx.grad.numpy(), 1e-9, 1e-12)
    chk.close("dh0", dh0, th0.grad.numpy(), 1e-9, 1e-12)
    chk.close("dc0", dc0, tc0.grad.numpy(), 1e-9, 1e-12)
    for name, p in twin.named_parameters():
        chk.close("lstm." + name, model.lstm._parameters[name].grad, p.grad.numpy(), 1e-9, 1e-12)
    chk.raise_if_any()


@pytest.mark.parametrize("kind", ["gru_cell", "rnn_seq_steps"])
def test_recurrent_module_called_per_step(kind):
    """A GRUCell, and an RNN sequence module called with T = 1 at every step (its state
    passed on): each call's saved state kept apart; central differences in float64."""
    lstmc.manual_seed(3)
    if kind == "gru_cell":
        rec = nn.GRUCell(3, 4, dtype=np.float64)
    else:
        rec = nn.RNN(3, 4, num_layers=2, dtype=np.float64)
    head = nn.Linear(4, 1, dtype=np.float64)
    params = list(rec.named_parameters()) + [("head." + n, p) for n, p in
                                             head.named_parameters()]
    x = np.random.default_rng(4).standard_normal((5, 2, 3))

    def run():
        h, total = None, 0.0
        for t in range(len(x)):
            if kind == "gru_cell":
                h = rec(x[t], h)
                y = h
            else:
                y, h = rec(x[t:t + 1], h)
                y = y[0]
            total = total + (head(y) ** 2).sum()
        return total

    with nn.tape():
        loss = run()
    rec.zero_grad()
    head.zero_grad()
    loss.backward()
    chk = Checks(f"{kind}: tape vs central differences")
    for name, p in params:
        grad = p.grad.copy()

        def value():
            with nn.tape():
                return float(run())
        chk.close(name, grad, numerical_grad(value, p.data), 0.0, FD_TOL)
    chk.raise_if_any()


# ------------------------------------------------------------------------------------------
# dropout, hand-written modules, modes

def test_dropout_masks_per_call():
    """Dropout called twice: each call's gradient is its own mask."""
    lstmc.manual_seed(5)
    drop = nn.Dropout(0.5)
    a = np.ones((4, 6))
    with nn.tape() as t:
        x1, x2 = t.watch(a), t.watch(a)
        y1, y2 = drop(x1), drop(x2)
        total = y1.sum() + y2.sum() * 2.0
    total.backward()
    assert not np.array_equal(y1.numpy(), y2.numpy())
    np.testing.assert_array_equal(x1.grad, y1.numpy())       # mask / (1 - p) = y1 (a = 1)
    np.testing.assert_array_equal(x2.grad, 2.0 * y2.numpy())


def test_lstm_dropout_called_twice_equals_two_copies():
    """An LSTM with inter-layer dropout called twice on a tape gets the sum of what two
    copies of it get by hand (same generator draws, in the same order)."""
    lstmc.manual_seed(6)
    lstm = nn.LSTM(3, 4, num_layers=2, dropout=0.5, dtype=np.float64)
    a, b = copy.deepcopy(lstm), copy.deepcopy(lstm)
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((5, 2, 3)), rng.standard_normal((3, 2, 3))
    g1, g2 = rng.standard_normal((5, 2, 4)), rng.standard_normal((3, 2, 4))
    lstmc.manual_seed(7)
    with nn.tape() as t:
        o1, _ = lstm(x1)
        o2, s2 = lstm(x2, None)
        total = (o1 * g1).sum() + (o2 * g2).sum()
    total.backward()
    lstmc.manual_seed(7)
    a(x1)
    b(x2)
    a.backward(g1)
    b.backward(g2)
    for (name, p), pa, pb in zip(lstm.named_parameters(), a.parameters(), b.parameters()):
        np.testing.assert_allclose(p.grad, pa.grad + pb.grad, rtol=1e-13, atol=1e-15,
                                   err_msg=name)


class HandWritten(nn.Module):
    """The README's module: hand-written backward, numpy-style forward."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 5, batch_first=True, dtype=np.float64)
        self.fc = nn.Linear(5, 2, dtype=np.float64)

    def forward(self, x):
        seq, _ = self.lstm(x)
        self._seq_shape = seq.shape
        return self.fc(seq[:, -1, :])

    def backward(self, dlogits):
        dseq = np.zeros(self._seq_shape, dtype=dlogits.dtype)
        dseq[:, -1, :] = self.fc.backward(dlogits)
        return self.lstm.backward(dseq)[0]


def test_hand_written_module_inside_a_tape():
    """Outside a tape its backward runs as before; inside, its forward is recorded and gives
    the same gradients (its backward is not needed)."""
    lstmc.manual_seed(8)
    m = HandWritten()
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((4, 6, 3)), rng.standard_normal((4, 2))
    y = m(x)
    assert isinstance(y, np.ndarray)
    dx = m.backward(g)
    by_hand = {n: p.grad.copy() for n, p in m.named_parameters()}
    m.zero_grad()
    with nn.tape() as t:
        xt = t.watch(x)
        yt = m(xt)
    t.backward(yt, g)
    np.testing.assert_array_equal(yt.numpy(), y)
    np.testing.assert_allclose(xt.grad, dx, rtol=1e-14, atol=1e-16)
    for n, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, by_hand[n], rtol=1e-14, atol=1e-16, err_msg=n)


def test_composite_in_sequential_and_eval_mode():
    """A Composite is a Module as any other: inside Sequential, whose backward calls its
    backward; in eval mode it records nothing and its outputs equal training mode's."""
    lstmc.manual_seed(9)

    class Gate(nn.Composite):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3, dtype=np.float64)
            self.b = nn.Linear(3, 3, dtype=np.float64)

        def forward(self, x):
            return self.a(x).sigmoid() * self.b(x) + x

    seq = nn.Sequential(Gate(), nn.Tanh(), nn.Linear(3, 1, dtype=np.float64))
    x = np.random.default_rng(2).standard_normal((5, 3))
    y = seq(x)
    dx = seq.backward(np.ones_like(y))
    xc = x.copy()
    np.testing.assert_allclose(dx, numerical_grad(lambda: float(seq(xc).sum()), xc),
                               atol=FD_TOL)
    seq.eval()
    np.testing.assert_array_equal(seq(x), y)
    with pytest.raises(RuntimeError, match="training-mode forward"):
        seq[0].backward(np.ones((5, 3)))


def test_composite_copies_and_one_backward_per_forward():
    """A deep copy (or pickle) of a Composite starts without the last forward's tape and
    trains as the original; backward runs once per forward, as torch's graph."""
    lstmc.manual_seed(12)
    model = Seq2Seq(np.float64)
    src, lengths, tgt, y = batch()
    loss, grads = composite_grads(model, src, lengths, tgt, y)
    logits = model(src, lengths, tgt)                       # leaves a tape behind
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert twin.__dict__.get("_last") is None
        loss2, grads2 = composite_grads(twin, src, lengths, tgt, y)
        assert loss2 == loss
        for name in grads:
            np.testing.assert_array_equal(grads2[name], grads[name], err_msg=name)
    model.backward(np.ones_like(logits))
    with pytest.raises(RuntimeError, match="once per forward"):
        model.backward(np.ones_like(logits))
    model(src, lengths, tgt)
    with pytest.raises(ValueError, match="one gradient"):
        model.backward(np.ones_like(logits), None)


def test_quantized_composite_runs_its_forward():
    """lstmc.quantize quantizes a Composite's modules; its forward runs as written (eval
    mode, nothing recorded) and training stays refused."""
    lstmc.manual_seed(13)
    model = Seq2Seq(np.float32).eval()
    src, lengths, tgt, _ = batch()
    expected = model(src, lengths, tgt)
    q = lstmc.quantize(model, dtype="int8")
    got = q(src, lengths, tgt)
    assert type(got) is np.ndarray and got.shape == expected.shape
    # int8 weights and activations: logits of a few tenths move by a few thousandths
    assert 0 < np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    with pytest.raises(RuntimeError, match="training-mode forward"):
        q.backward(np.ones_like(got))
    with pytest.raises(RuntimeError):
        q.train()


def test_threads_record_apart():
    """Each thread records on its own tape (the recording tape is per thread)."""
    lstmc.manual_seed(10)
    models = [nn.Linear(3, 2, dtype=np.float64) for _ in range(2)]
    x = np.random.default_rng(3).standard_normal((4, 3))
    results, errors = {}, []

    def work(k):
        try:
            for _ in range(20):
                models[k].zero_grad()
                with nn.tape() as t:
                    y = (models[k](x) ** 2).sum()
                y.backward()
            results[k] = models[k].weight.grad.copy()
        except Exception as e:   # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for k, m in enumerate(models):
        expected = 2 * (x @ m.weight.data.T + m.bias.data).T @ x
        np.testing.assert_allclose(results[k], expected, rtol=1e-13)


# ------------------------------------------------------------------------------------------
# errors

def test_errors():
    lstm = nn.LSTM(3, 4, dtype=np.float64)
    x = np.zeros((2, 1, 3))
    with nn.tape() as t:
        out, _ = lstm(x)
        with pytest.raises(TypeError, match="not converted to a numpy array implicitly"):
            np.asarray(out)
        with pytest.raises(TypeError, match="np.cumsum is not an operation of the tape"):
            np.cumsum(out)
        with pytest.raises(TypeError, match="np.sin is not an operation of the tape"):
            np.sin(out)
        with pytest.raises(RuntimeError, match="already recording"):
            with nn.tape():
                pass
        with pytest.raises(TypeError, match="target"):
            nn.MSELoss()(out, out)
        with pytest.raises(ValueError, match="einsum"):
            F.einsum("ii->i", out[0, 0, :2] * np.ones((2, 1)))
        with pytest.raises(ValueError, match="does not broadcast"):
            F.softmax(out, mask=np.ones((3,), bool))
        lstm.eval()
        with pytest.raises(RuntimeError, match="eval mode"):
            lstm(x)
        lstm.train()
        loss = out.sum()
    with pytest.raises(RuntimeError, match="closed"):
        out + 1.0
    with pytest.raises(ValueError, match="needs its gradient"):
        t.backward(out)
    t.backward(loss)
    with pytest.raises(RuntimeError, match="replayed already"):
        t.backward(loss)
    with pytest.raises(RuntimeError, match="training-mode forward"):
        Seq2Seq(np.float64).backward(np.zeros(1))
    q = lstmc.quantize(nn.Linear(3, 2), dtype="int8")
    with nn.tape():
        with pytest.raises(RuntimeError, match="quantized|int8"):
            q(np.zeros((1, 3), np.float32))
