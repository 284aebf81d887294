"""An encoder-decoder with attention, PyTorch flavour, without a hand-written backward.

    python examples/seq2seq_attention.py [--smoke] [--seconds N] [--seed S] [--threads N]

The task: read a sequence of 3 to 12 digits and write it reversed. An Embedding and an LSTM
encode the digits (padding costs nothing: `lengths=`); an LSTM decoder starts from the
encoder's final (h, c) and reads the target shifted right (teacher forcing); at each step,
dot attention over the encoder's outputs (padding masked) gives a context that is
concatenated with the decoder's output before the Linear over the digits. The model is an
`nn.Composite`: its `forward` is written as for torch.nn.Module, with module calls and
tensor operations, and `backward` comes from it. Training runs for a time budget (default
60 s; --smoke: 150 steps of a small model); the example prints the loss, the held-out
token accuracy under teacher forcing, and greedy decoding's exact-match rate (the decoder
fed its own predictions, one step at a time, in eval mode). No data package needed.
"""
import time

import numpy as np

import lstmc
from lstmc import nn
from lstmc.nn import functional as F

import _data  # examples/_data.py

PAD, BOS = 0, 1            # token ids; the digits 0-9 are ids 2-11
VOCAB = 12
IGNORE = -100


class Seq2Seq(nn.Composite):
    """Embedding -> LSTM encoder; LSTM decoder from the encoder's state; dot attention;
    concat; Linear. The same module names in torch would share the state_dict keys."""

    def __init__(self, embed, hidden):
        super().__init__()
        self.src_embed = nn.Embedding(VOCAB, embed, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(VOCAB, embed, padding_idx=PAD)
        self.encoder = nn.LSTM(embed, hidden, batch_first=True)
        self.decoder = nn.LSTM(embed, hidden, batch_first=True)
        self.out = nn.Linear(2 * hidden, VOCAB)

    def forward(self, src, lengths, tgt_in):
        enc, state = self.encoder(self.src_embed(src), lengths=lengths)     # (B, S, H)
        dec, _ = self.decoder(self.tgt_embed(tgt_in), state)                # (B, T, H)
        mask = np.arange(src.shape[1])[None, None, :] < lengths[:, None, None]
        weights = F.softmax(dec @ enc.transpose(0, 2, 1), axis=-1, mask=mask)   # (B, T, S)
        return self.out(np.concatenate([dec, weights @ enc], axis=-1))      # (B, T, VOCAB)


def make_batch(rng, batch, min_len=3, max_len=12):
    """Random digit strings and their reversals: src (B, S) padded, lengths, the decoder's
    input (BOS + target[:-1], padded) and the targets (IGNORE past each length)."""
    lengths = rng.integers(min_len, max_len + 1, size=batch)
    S = lengths.max()
    digits = rng.integers(2, VOCAB, size=(batch, S))
    valid = np.arange(S)[None] < lengths[:, None]
    src = np.where(valid, digits, PAD)
    # reversed within each row's own length
    idx = np.clip(lengths[:, None] - 1 - np.arange(S)[None], 0, S - 1)
    target = np.where(valid, np.take_along_axis(src, idx, axis=1), PAD)
    tgt_in = np.concatenate([np.full((batch, 1), BOS), target[:, :-1]], axis=1)
    tgt_in = np.where(valid, tgt_in, PAD)
    return src, lengths, tgt_in, np.where(valid, target, IGNORE)


def greedy(model, src, lengths):
    """Greedy decoding: the decoder fed its own predictions, one step at a time (the model
    runs its whole forward on the prefix; eval mode records nothing)."""
    tgt_in = np.full((len(src), 1), BOS)
    for _ in range(src.shape[1]):
        logits = model(src, lengths, tgt_in)
        tgt_in = np.concatenate([tgt_in, logits[:, -1].argmax(-1)[:, None]], axis=1)
    return tgt_in[:, 1:]


def main():
    args = _data.parser(__doc__.split("\n")[0], seconds=60.0).parse_args()
    rng = _data.setup(args)
    embed, hidden, batch = (16, 32, 32) if args.smoke else (32, 64, 64)
    model = Seq2Seq(embed, hidden)
    optimizer = lstmc.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE)
    held_out = make_batch(np.random.default_rng(args.seed + 1000), 256)
    print(f"lstmc {lstmc.__version__}: reverse 3-12 digits, encoder-decoder with attention "
          f"(embed {embed}, hidden {hidden}, batch {batch}); parameters: "
          f"{sum(p.size for p in model.parameters())}")

    progress = _data.Progress(every=50)
    t0, step, first, smooth = time.time(), 0, None, None
    while (step < 150) if args.smoke else (time.time() - t0 < args.seconds):
        src, lengths, tgt_in, target = make_batch(rng, batch)
        optimizer.zero_grad()
        loss = loss_fn(model(src, lengths, tgt_in), target)
        model.backward(loss_fn.backward())
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        smooth = loss if smooth is None else 0.9 * smooth + 0.1 * loss
        if first is None:
            first = loss
        progress.update(f"step {step:4d}  loss {smooth:.3f}  {time.time() - t0:4.0f} s")
    progress.done(f"trained {step} steps in {time.time() - t0:.1f} s: loss first {first:.3f}, "
                  f"last (smoothed) {smooth:.3f}")

    model.eval()
    src, lengths, tgt_in, target = held_out
    pred = model(src, lengths, tgt_in).argmax(-1)
    valid = target != IGNORE
    token_acc = (pred == target)[valid].mean()
    decoded = greedy(model, src, lengths)
    exact = np.mean([np.array_equal(decoded[b, :n], target[b, :n])
                     for b, n in enumerate(lengths)])
    print(f"held-out (256 strings): token accuracy {token_acc:.3f} (teacher forcing), exact "
          f"match {exact:.3f} (greedy decoding; chance 0.1 per digit)")
    b = int(np.argmax(lengths))
    print("example: " + "".join(str(d - 2) for d in src[b, :lengths[b]]) + " -> "
          + "".join(str(d - 2) if d >= 2 else "?" for d in decoded[b, :lengths[b]]))


if __name__ == "__main__":
    main()
