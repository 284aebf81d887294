"""The PyTorch-style workflow end to end: a user's Module (LSTM + Linear on the last step),
CrossEntropyLoss, lstmc.optim.Adam and clip_grad_norm_, learning a task that needs memory:
the class is the sign of the first input, followed by T - 1 steps of noise."""
import numpy as np
import pytest

import lstmc
from lstmc import nn


class LSTMModel(nn.Module):
    def __init__(self, input_size, hidden_size, num_classes):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        self._out_shape = out.shape
        return self.fc(out[:, -1, :])

    def backward(self, dlogits):
        dout = np.zeros(self._out_shape, dtype=dlogits.dtype)
        dout[:, -1, :] = self.fc.backward(dlogits)
        dx, _ = self.lstm.backward(dout)
        return dx


def _batch(rng, n, T):
    x = 0.1 * rng.standard_normal((n, T, 1)).astype(np.float32)
    x[:, 0, 0] = np.sign(rng.standard_normal(n))
    return x, (x[:, 0, 0] > 0).astype(np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lstm_model_learns_to_remember(seed):
    lstmc.manual_seed(seed)
    rng = np.random.default_rng(seed)
    T = 10
    model = LSTMModel(1, 16, 2)
    opt = lstmc.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(300):
        x, y = _batch(rng, 32, T)
        model.zero_grad()
        losses.append(loss_fn(model(x), y))
        model.backward(loss_fn.backward())
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    x, y = _batch(np.random.default_rng(100 + seed), 1000, T)
    accuracy = float((model(x).argmax(axis=1) == y).mean())
    assert accuracy >= 0.95, (accuracy, losses[-5:])
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:20])
