"""Whole models written the PyTorch way with lstmc.nn: a user's Module subclass chaining
Embedding -> 2-layer bidirectional LSTM -> Linear -> CrossEntropyLoss, checked end to end
against central finite differences in float64."""
import numpy as np

import lstmc
from lstmc import nn

from helpers import assert_close, numerical_grad


class Tagger(nn.Module):
    """Embedding -> BiLSTM -> Linear per step, for sequence tagging."""

    def __init__(self, vocab, emb, hidden, tags, dtype=np.float64):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb, padding_idx=0, dtype=dtype)
        self.lstm = nn.LSTM(emb, hidden, num_layers=2, batch_first=True, bidirectional=True,
                            dtype=dtype)
        self.fc = nn.Linear(2 * hidden, tags, dtype=dtype)

    def forward(self, idx, lengths=None):
        out, _ = self.lstm(self.embedding(idx), lengths=lengths)
        return self.fc(out)

    def backward(self, dlogits):
        dx, _ = self.lstm.backward(self.fc.backward(dlogits))
        return self.embedding.backward(dx)


def test_tagger_gradients_match_finite_differences():
    lstmc.manual_seed(0)
    rng = np.random.default_rng(0)
    model = Tagger(vocab=9, emb=4, hidden=3, tags=5)
    idx = rng.integers(1, 9, size=(3, 6))
    lengths = np.array([6, 4, 2])
    idx[1, 4:] = 0
    idx[2, 2:] = 0
    tags = rng.integers(0, 5, size=(3, 6))
    tags[idx == 0] = -100                      # padding positions are ignored
    loss_fn = nn.CrossEntropyLoss()

    def loss():
        return loss_fn(model(idx, lengths), tags)

    model.zero_grad()
    loss()
    model.backward(loss_fn.backward())
    eps, worst = 1e-6, 0.0
    for name, p in model.named_parameters():
        num = numerical_grad(loss, p.data, eps)
        assert_close(name, p.grad, num, 1e-5, 1e-9)
        worst = max(worst, float(np.max(np.abs(p.grad - num))))
    assert worst < 1e-7
    # the padding row of the embedding never learns
    assert np.all(model.embedding.weight.grad[0] == 0)
