"""How far lstmc.quantize(model, "int8") (and "bf16") lands from the float32 model it copies
(issue 21's accuracy goals): a 1,000-step `step` stream whose state error stays bounded and
does not grow, and the logits of small random and trained models. The comparison is always float32 model
against its int8 copy; the bounds are the figures measured here (stated beside each, with
their margin), since an int8 model has no exact answer to hold it to. The held-out metrics of
the examples and the 5,000-step streams are in docs/performance.md ("int8 accuracy");
benchmarks/drift_quantized.py measures the streams."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lstmc
from lstmc import nn
from lstmc.charlm import CharLM, byte_vocab, encode, random_windows, stdlib_text, train_step

WINDOW = 100


def stream_errors(module, steps, seed, dtype="int8"):
    """Per step, max |h_q - h_f| and max |c_q - c_f| (0 for a GRU) of a batch-1 stream of
    N(0, 1) inputs through `module` (float32) and lstmc.quantize(module, dtype)."""
    quantized = lstmc.quantize(module, dtype)
    module.eval()
    x = np.random.default_rng(seed).standard_normal((steps, module.input_size))
    x = x.astype(np.float32)
    sf, sq = module.initial_state(1), quantized.initial_state(1)
    err = np.zeros((steps, 2))
    for t in range(steps):
        module.step(x[t], sf)
        quantized.step(x[t], sq)
        err[t, 0] = np.abs(sq.h - sf.h).max()
        if sf.c is not None:
            err[t, 1] = np.abs(sq.c - sf.c).max()
    return err


# Measured (1,000 steps, I128 H256, seeds 0-4; the int8 kernels give the same bits on every
# CPU, tests/test_quantized_forward.py): LSTM max |h_q - h_f| 5.9-6.7e-3, |c_q - c_f|
# 1.06-1.15e-2; GRU |h_q - h_f| 0.96-1.08e-2; the mean of the last 3 windows of 100 over the
# first 3: 0.86-1.10. Bounds: 2x the largest state error; a drifting stream shows in the
# ratio, held under 1.5 (the 5,000-step H512 streams of benchmarks/drift_quantized.py: 0.98-1.11).
# bf16, the same streams (seeds 0-2): LSTM |h_q - h_f| 1.69-1.74e-3, |c_q - c_f| 2.7-3.2e-3;
# GRU |h_q - h_f| 2.7-3.0e-3; last 3 windows / first 3 0.96-1.09. Bounds: 2x again.
@pytest.mark.parametrize("cls, dtype, h_bound, c_bound", [
    (nn.LSTM, "int8", 0.015, 0.025), (nn.GRU, "int8", 0.022, 0.0),
    (nn.LSTM, "bf16", 0.0035, 0.0065), (nn.GRU, "bf16", 0.006, 0.0)])
def test_a_1000_step_quantized_stream_tracks_float32_without_drift(cls, dtype, h_bound,
                                                                   c_bound):
    lstmc.manual_seed(0)
    err = stream_errors(cls(128, 256), 1000, seed=0, dtype=dtype)
    assert err[:, 0].max() < h_bound, f"max |h_q - h_f| {err[:, 0].max():.3g}"
    assert err[:, 1].max() <= c_bound, f"max |c_q - c_f| {err[:, 1].max():.3g}"
    windows = err.reshape(-1, WINDOW, 2).max(axis=1)
    for k, name in ((0, "h"), (1, "c")) if cls is nn.LSTM else ((0, "h"),):
        first, last = windows[:3, k].mean(), windows[-3:, k].mean()
        assert last < 1.5 * first, (f"|{name}_q - {name}_f| per window of {WINDOW}: "
                                    f"{np.array2string(windows[:, k], precision=4)}")


def logit_error(model, quantized, x):
    """(max |logit_q - logit_f|, largest |logit_f|) of one batch."""
    want, got = model.eval()(x), quantized(x)
    want = want[0] if isinstance(want, tuple) else want
    got = got[0] if isinstance(got, tuple) else got
    return float(np.abs(got - want).max()), float(np.abs(want).max())


class Tagger(nn.Module):
    """Embedding -> a recurrent layer -> Linear per token: cls(embed, hidden, batch_first,
    **options)."""

    def __init__(self, cls, vocab, embed, hidden, tags, **options):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.rnn = cls(embed, hidden, batch_first=True, **options)
        self.fc = nn.Linear(hidden * (2 if options.get("bidirectional") else 1), tags)

    def forward(self, idx):
        return self.fc(self.rnn(self.embedding(idx))[0])


# Measured, seeds 0-4 (8 sequences of 50 random ids): random CharLM (2 layers H128) max
# |logit_q - logit_f| 0.97-1.16e-3 (largest |logit| 0.15); BiGRU tagger (2 layers H96)
# 2.3-3.0e-3 (largest |logit| 0.3); RNN-tanh tagger (H128) 5.1-6.5e-3 (largest |logit| 0.8).
# Random weights have small logits; bounds 3x the largest measured.
@pytest.mark.parametrize("make, bound", [
    (lambda: CharLM(60, 32, 128, 2), 3.5e-3),
    (lambda: Tagger(nn.GRU, 60, 32, 96, 9, num_layers=2, bidirectional=True), 9e-3),
    (lambda: Tagger(nn.RNN, 60, 32, 128, 9), 2e-2),
], ids=["charlm", "bigru-tagger", "rnn-tagger"])
def test_logits_of_random_models(make, bound):
    lstmc.manual_seed(0)
    model = make()
    x = np.random.default_rng(0).integers(0, 60, (8, 50))
    err, largest = logit_error(model, lstmc.quantize(model, "int8"), x)
    assert err < bound, f"max |logit_q - logit_f| {err:.3g} (largest |logit| {largest:.3g})"


@pytest.fixture(scope="module")
def trained_charlm():
    """A CharLM (H128) trained 60 steps on the standard library's sources: logits of a few
    units, as trained models have, in ~1 s; and held-out text that follows."""
    text = stdlib_text(400_000)
    vocab = byte_vocab(text)
    data = encode(text, vocab)
    train, held = data[:350_000], data[350_000:]
    lstmc.manual_seed(0)
    rng = np.random.default_rng(0)
    model = CharLM(len(vocab), 32, 128, 1)
    optimizer = lstmc.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(60):
        train_step(model, optimizer, loss_fn, *random_windows(rng, train, 16, 50))
    return model.eval(), held


def test_logits_and_bits_of_a_trained_charlm(trained_charlm):
    model, held = trained_charlm
    quantized = lstmc.quantize(model, "int8")
    x, y = random_windows(np.random.default_rng(1), held, 16, 100)
    err, largest = logit_error(model, quantized, x)
    # measured 1.8-2.2e-2 at largest |logit| 6.1 (held-out windows of seeds 0-4; the
    # shakespeare_lm run, H256 trained 1,085 steps: 0.21 at 17.2, docs/performance.md);
    # bound 3x
    assert err < 0.07, f"max |logit_q - logit_f| {err:.3g} (largest |logit| {largest:.3g})"
    loss_fn = nn.CrossEntropyLoss()
    bits_f = loss_fn(model(x), y) / np.log(2)
    bits_q = loss_fn(quantized(x), y) / np.log(2)
    # measured |difference| 1.5e-5 - 1.5e-4 bits at 3.6-3.9 bits (seeds 0-4); issue 21's goal
    # is 0.02, the bound a quarter of it
    assert abs(bits_q - bits_f) < 0.005, f"bits per character {bits_f:.4f} -> {bits_q:.4f}"


def test_the_drift_script_runs_and_reports_each_stream():
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "drift_quantized.py"
    res = subprocess.run([sys.executable, str(script), "--streams", "lstm,gru", "--steps", "300",
                          "--hidden", "64", "--threads", "1"], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("max |")]
    # LSTM: h, c, the rounding alone and the int8 arithmetic beyond it; GRU: the same but c
    assert len(lines) == 7, res.stdout
    for line in lines:
        value = float(line.split("over the stream ")[1].split()[0])
        assert 0 < value < 0.1, line
