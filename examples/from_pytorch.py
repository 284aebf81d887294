"""Train in PyTorch, run with lstmc: the same weights give the same predictions.

    python examples/from_pytorch.py [--smoke] [--seconds N] [--seed S] [--threads N]

A small torch.nn character model (Embedding -> LSTM -> Linear, next-character prediction on
the Python standard library's source) trains for a time budget (default 30 s; --smoke: 30
steps). Its state_dict then loads as it is into lstmc.charlm's CharLM, whose modules carry the
same names. The example prints the largest difference between the two models' logits on
held-out text, their held-out bits per character, and the inference time of both (the median
of interleaved runs, at the same thread count) for batch 1 and batch 32. Needs PyTorch.
"""
import math
import statistics
import sys
import time

import numpy as np

import lstmc
from lstmc.charlm import CharLM, byte_vocab, encode, random_windows, stdlib_text

import _data  # examples/_data.py

try:
    import torch
except ImportError:
    print("this example needs PyTorch, which is not installed: pip install torch",
          file=sys.stderr)
    raise SystemExit(2)


class TorchCharLM(torch.nn.Module):
    """The torch twin of lstmc.charlm.CharLM: same module names, so the same state_dict keys."""

    def __init__(self, vocab, embed, hidden, layers):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, embed)
        self.lstm = torch.nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.fc = torch.nn.Linear(hidden, vocab)

    def forward(self, idx):
        out, _ = self.lstm(self.embedding(idx))
        return self.fc(out)


def train_torch(model, data, rng, seconds, steps=0, batch=32, seq=64):
    """Adam on random windows for `seconds`, or for `steps` steps if given; returns the last
    smoothed loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    progress = _data.Progress(every=50)
    t0, step, loss_avg = time.time(), 0, None
    while (step < steps) if steps else (time.time() - t0 < seconds):
        x, y = (torch.from_numpy(a) for a in random_windows(rng, data, batch, seq))
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        loss_avg = loss.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss.item()
        progress.update(f"torch step {step:4d}  loss {loss_avg:.3f}  "
                        f"{time.time() - t0:4.0f} s")
    progress.done(f"torch: trained {step} steps in {time.time() - t0:.1f} s, loss "
                  f"{loss_avg:.3f}")
    return loss_avg


def bits_per_char(logits, targets):
    """Mean -log2 p(target) of (B, T, C) logits against (B, T) targets, in float64."""
    z = logits.astype(np.float64).reshape(-1, logits.shape[-1])
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(z)), targets.reshape(-1)].mean() / math.log(2)


def torch_forward(model, x):
    """A call of the torch model on `x` without autograd, to be timed."""
    tx = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            model(tx)
    return run


def lstmc_forward(model, x):
    """A call of the lstmc model (in eval mode: it stores nothing) on `x`, to be timed."""
    return lambda: model(x)


def median_times(fns, repeats):
    """Median seconds per call of each function, calls interleaved (one of each per round, so
    a busy spell on a shared machine hits both alike); one untimed warm-up call each."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def main():
    args = _data.parser(__doc__.split("\n")[0], seconds=30.0).parse_args()
    rng = _data.setup(args)
    torch.manual_seed(args.seed)
    threads = lstmc.get_num_threads()
    torch.set_num_threads(threads)
    t_start = time.time()
    embed, hidden, seq = 32, 128, 100
    raw = stdlib_text(200_000 if args.smoke else 1_000_000)
    vocab = byte_vocab(raw)
    data = encode(raw, vocab)
    split = int(len(data) * 0.95)
    print(f"lstmc {lstmc.__version__} and torch {torch.__version__}: from PyTorch to lstmc")
    print(f"text: {len(raw) / 1e6:.2f} MB of the standard library's source, {len(vocab)} "
          f"distinct bytes, last 5 % held out; threads: {threads} for both")

    torch_model = TorchCharLM(len(vocab), embed, hidden, 1)
    train_torch(torch_model, data[:split], rng, args.seconds, steps=30 if args.smoke else 0)
    torch_model.eval()
    model = CharLM(len(vocab), embed, hidden, 1)
    model.load_state_dict(torch_model.state_dict())
    model.eval()
    print("loaded torch's state_dict into lstmc: "
          + ", ".join(name for name, _ in model.named_parameters()))

    x, y = random_windows(np.random.default_rng(1), data[split:], 32, seq)
    with torch.inference_mode():
        ref = torch_model(torch.from_numpy(x)).numpy()
    ours = model(x)
    print(f"held-out logits (32 windows x {seq} characters): max |lstmc - torch| "
          f"{np.abs(ours - ref).max():.2e}, largest |logit| {np.abs(ref).max():.1f}")
    print(f"held-out bits per character: lstmc {bits_per_char(ours, y):.4f}, torch "
          f"{bits_per_char(ref, y):.4f} (uniform: {math.log2(len(vocab)):.2f})")

    repeats = 3 if args.smoke else 30
    for batch in (1, 32):
        t_torch, t_lstmc = median_times([torch_forward(torch_model, x[:batch]),
                                         lstmc_forward(model, x[:batch])], repeats)
        print(f"inference, batch {batch:2d} x {seq} characters: torch {t_torch * 1e3:7.2f} ms, "
              f"lstmc {t_lstmc * 1e3:7.2f} ms, speed-up {t_torch / t_lstmc:.2f}x (torch / "
              f"lstmc, whole model, median of {repeats}, interleaved)")
    print(f"total time {time.time() - t_start:.1f} s")


if __name__ == "__main__":
    main()
