"""English number words into German number words: an encoder-decoder with attention.

    python examples/translate.py [--face torch|keras] [--smoke] [--seconds N] [--seed S]
                                 [--threads N] [--beam K] [--attention-map FILE]

"forty-two" -> "zweiundvierzig", for the numbers 0 to 999,999 (num2words writes both sides).
German puts units before tens and runs a number together into one word, so the decoder must
look back and forth over the English: attention has real work. The source is English words
(and "-" and ","), the target German characters. Training numbers are drawn with a uniform
number of digits (1 to 6, then uniform among those), so small and large numbers are both
common; 2,000 numbers of 4 to 6 digits are held out for the test and never trained on.

The model (both faces): Embedding -> LSTM encoder; an LSTM decoder that starts from the
encoder's final (h, c) and reads the target shifted right (teacher forcing); Luong dot
attention of each decoder output over the encoder's outputs (padding masked); the context
concatenated with the decoder output, tanh(Linear) and a Linear over the characters.
--face torch writes it as an `lstmc.nn.Composite` (backward from forward); --face keras as a
functional `lstmc.models.Model`. Adam with gradient clipping trains it for a time budget
(default 540 s). Decoding runs the decoder one step at a time through its stream
(lstmc.nn.GreedySearch and lstmc.nn.BeamSearch, --beam K): the example reports the
held-out exact-match accuracy and character BLEU (sacrebleu when installed, else
examples/_bleu.py) for greedy and beam search, and prints the attention map of one
number (--attention-map FILE also writes it as a PGM picture).

Needs num2words (requirements-examples.txt). --smoke: a small model for a few seconds.
"""
import re
import sys
import time

import numpy as np

import lstmc
from lstmc import nn
from lstmc.nn import functional as F

import _bleu  # examples/_bleu.py
import _data  # examples/_data.py

PAD, BOS, EOS = 0, 1, 2      # target ids; the characters start at 3; source word ids at 1
HELD_OUT = 2000


# ---- data ---------------------------------------------------------------------------------
def num2words():
    try:
        from num2words import num2words as fn
    except ImportError:
        print(f"this example needs num2words, which is not installed. Install the examples' "
              f"data with:\n    {_data.INSTALL}", file=sys.stderr)
        raise SystemExit(2)
    return fn


class Numbers:
    """The two languages' vocabularies and the encoding of numbers into id sequences."""

    def __init__(self):
        self.words_of = num2words()
        # every word and character appears among 0..1099, the thousands and k,123 ("... thousand,
        # one hundred and ...")
        sample = list(range(1100)) + [k * 1000 + r for k in range(1, 1000) for r in (0, 123)]
        words = sorted({w for k in sample for w in self.english(k)})
        chars = sorted({c for k in sample for c in self.german(k)})
        self.source_vocab = {w: i + 1 for i, w in enumerate(words)}          # 0: padding
        self.target_chars = chars
        self.target_vocab = {c: i + 3 for i, c in enumerate(chars)}
        self.cache = {}

    def english(self, k):
        return re.findall(r"[a-z]+|[-,]", self.words_of(k))

    def german(self, k):
        return self.words_of(k, lang="de")

    def pair(self, k):
        """(source ids, target ids) of the number k, cached."""
        if k not in self.cache:
            self.cache[k] = ([self.source_vocab[w] for w in self.english(k)],
                             [self.target_vocab[c] for c in self.german(k)])
        return self.cache[k]

    def text(self, ids):
        """The German text of target ids (up to the first EOS)."""
        out = []
        for i in ids:
            if i == EOS:
                break
            if i >= 3:
                out.append(self.target_chars[i - 3])
        return "".join(out)

    def batch(self, numbers):
        """src (B, S) padded with 0, src lengths (B,), decoder input (B, T+1: BOS + target),
        targets (B, T+1: target + EOS; -100 past the end)."""
        pairs = [self.pair(int(k)) for k in numbers]
        S = max(len(s) for s, _ in pairs)
        T = max(len(t) for _, t in pairs) + 1
        src = np.zeros((len(pairs), S), np.int64)
        lengths = np.array([len(s) for s, _ in pairs], np.int64)
        tgt_in = np.zeros((len(pairs), T), np.int64)
        tgt_out = np.full((len(pairs), T), -100, np.int64)
        for i, (s, t) in enumerate(pairs):
            src[i, :len(s)] = s
            tgt_in[i, 0] = BOS
            tgt_in[i, 1:len(t) + 1] = t
            tgt_out[i, :len(t)] = t
            tgt_out[i, len(t)] = EOS
        return src, lengths, tgt_in, tgt_out


def draw(rng, n):
    """n numbers: a uniform number of digits (1-6), then uniform among those."""
    digits = rng.integers(1, 7, n)
    low = np.where(digits == 1, 0, 10 ** (digits - 1))
    return rng.integers(low, 10 ** digits)


def split(rng):
    """The held-out numbers (a sorted array) and a function drawing training numbers
    (never held-out ones). The held-out numbers have 4 to 6 digits: drawn from all numbers,
    they would take every one-digit and nearly every two-digit number (there are only 100,
    and a sixth of the draws has one digit, a sixth two), leaving the model to guess "eins"
    and "zwölf" from compounds; drawn from 1,000-999,999 they leave 99.8 % of those numbers
    to train on and test translating numbers never seen whole."""
    held = set()
    while len(held) < HELD_OUT:
        held.update(int(k) for k in rng.integers(1000, 1_000_000, HELD_OUT - len(held)))
    held_sorted = np.array(sorted(held), np.int64)

    def training(n):
        out = draw(rng, n + n // 4 + 8)
        keep = out[~np.isin(out, held_sorted)]
        while len(keep) < n:
            more = draw(rng, n)
            keep = np.concatenate([keep, more[~np.isin(more, held_sorted)]])
        return keep[:n]

    return held_sorted, training


# ---- the PyTorch face -----------------------------------------------------------------------
class Translator(nn.Composite):
    """Embedding -> LSTM encoder; LSTM decoder from the encoder's (h, c); dot attention;
    tanh(Linear([decoder output, context])); Linear over the characters."""

    def __init__(self, source_vocab, target_vocab, embed, hidden):
        super().__init__()
        self.src_embed = nn.Embedding(source_vocab, embed, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(target_vocab, embed)
        self.encoder = nn.LSTM(embed, hidden, batch_first=True)
        self.decoder = nn.LSTM(embed, hidden, batch_first=True)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, target_vocab)

    def encode(self, src, lengths):
        return self.encoder(self.src_embed(src), lengths=lengths)       # (B, S, H), (h, c)

    def forward(self, src, lengths, tgt_in):
        enc, state = self.encode(src, lengths)
        dec, _ = self.decoder(self.tgt_embed(tgt_in), state)            # (B, T, H)
        mask = np.arange(src.shape[1])[None, None, :] < lengths[:, None, None]
        weights = F.softmax(dec @ enc.transpose(0, 2, 1), axis=-1, mask=mask)   # (B, T, S)
        mixed = F.tanh(self.combine(np.concatenate([dec, weights @ enc], axis=-1)))
        return self.out(mixed)                                          # (B, T, V)


class Parts:
    """What decoding needs of a trained model, from either face: the target embedding
    (V, E), the decoder's stream (`initial_state`, `step`), the combining Linear / Dense as
    (in, out) weights and bias, and the output layer's (logits: before any softmax), and
    `encode(src, lengths)` -> (encoder outputs (B, S, H), h (B, H), c (B, H))."""

    def __init__(self, embedding, stream, start, w_combine, b_combine, w_out, b_out, encode):
        self.embedding, self.stream, self.start = embedding, stream, start
        self.w_combine, self.b_combine = np.ascontiguousarray(w_combine), b_combine
        self.w_out, self.b_out = np.ascontiguousarray(w_out), b_out
        self.encode = encode
        self.vocab = self.w_out.shape[1]

    @classmethod
    def of_torch(cls, model):
        model.eval()

        def encode(src, lengths):
            enc, (h, c) = model.encode(src, lengths)
            return enc, h[0], c[0]

        def start(rows, h, c):
            state = model.decoder.initial_state(rows)
            state.h[0], state.c[0] = h, c
            return state

        return cls(model.tgt_embed.weight.data, model.decoder, start,
                   model.combine.weight.data.T, model.combine.bias.data,
                   model.out.weight.data.T, model.out.bias.data, encode)

    @classmethod
    def of_keras(cls, model, encoder):
        decoder = model.get_layer("decoder")
        combine, out = model.get_layer("combine"), model.get_layer("out")

        def encode(src, lengths):
            return tuple(encoder.predict(src, batch_size=len(src)))

        return cls(model.get_layer("tgt_embed").get_weights()[0], decoder,
                   lambda rows, h, c: decoder.initial_state(rows, [h, c]),
                   *combine.get_weights(), *out.get_weights(), encode)


class StreamDecoder:
    """A trained model's decoder one step at a time, for lstmc.nn's searches: the decoder
    LSTM's stream, dot attention over the encoder's outputs of each row's sentence, the
    combining layer and the output layer; every result goes into a buffer of its own, so a
    step allocates nothing. `rows_per_sentence` rows (a beam) decode each sentence."""

    def __init__(self, parts, src, lengths, rows_per_sentence=1):
        enc, h, c = parts.encode(src, lengths)
        K = rows_per_sentence
        self.enc = np.ascontiguousarray(np.repeat(enc, K, axis=0), np.float32)   # (N, S, H)
        N, S, H = self.enc.shape
        self.bias = np.where(np.arange(S)[None, :] < np.repeat(lengths, K)[:, None], 0.0,
                             -np.inf).astype(np.float32)[:, None, :]     # (N, 1, S)
        self.parts = parts
        self.state = parts.start(N, np.repeat(h, K, axis=0), np.repeat(c, K, axis=0))
        self.x = np.empty((N, parts.embedding.shape[1]), np.float32)
        self.scores = np.empty((N, 1, S), np.float32)
        self.peak = np.empty((N, 1, 1), np.float32)
        self.total = np.empty((N, 1, 1), np.float32)
        self.both = np.empty((N, 1, 2 * H), np.float32)
        self.b_combine = np.tile(parts.b_combine, (N, 1))
        self.mixed = np.empty((N, H), np.float32)
        self.b_out = np.tile(parts.b_out, (N, 1))
        self.logits = np.empty((N, parts.vocab), np.float32)
        self.keep = None   # a list to collect the attention weights of each step in

    def step(self, tokens):
        p = self.parts
        np.take(p.embedding, tokens, axis=0, out=self.x, mode="clip")
        y, _ = p.stream.step(self.x, self.state)                            # (N, H)
        q = y[:, None, :]
        np.matmul(q, self.enc.transpose(0, 2, 1), out=self.scores)          # (N, 1, S)
        np.add(self.scores, self.bias, out=self.scores)
        np.max(self.scores, axis=2, keepdims=True, out=self.peak)
        np.subtract(self.scores, self.peak, out=self.scores)
        np.exp(self.scores, out=self.scores)
        np.sum(self.scores, axis=2, keepdims=True, out=self.total)
        np.divide(self.scores, self.total, out=self.scores)                 # the weights
        if self.keep is not None:
            self.keep.append(self.scores[:, 0].copy())
        H = self.enc.shape[2]
        self.both[:, :, :H] = q
        np.matmul(self.scores, self.enc, out=self.both[:, :, H:])          # the context
        np.matmul(self.both[:, 0], p.w_combine, out=self.mixed)
        np.add(self.mixed, self.b_combine, out=self.mixed)
        np.tanh(self.mixed, out=self.mixed)
        np.matmul(self.mixed, p.w_out, out=self.logits)
        np.add(self.logits, self.b_out, out=self.logits)
        return self.logits

    def reorder(self, rows):
        self.state.reorder(rows)   # the encoder's outputs are the same for a sentence's rows


def keras_model(source_vocab, target_vocab, embed, hidden):
    """The same model on the Keras face, a functional Model; and its encoder (a Model of
    the same layers) for decoding."""
    from lstmc.layers import LSTM, Attention, Concatenate, Dense, Embedding, Input
    from lstmc.models import Model
    src = Input(shape=(None,), dtype="int32", name="src")
    tgt = Input(shape=(None,), dtype="int32", name="tgt")
    enc, h, c = LSTM(hidden, return_sequences=True, return_state=True, name="encoder")(
        Embedding(source_vocab, embed, mask_zero=True, name="src_embed")(src))
    dec = LSTM(hidden, return_sequences=True, name="decoder")(
        Embedding(target_vocab, embed, mask_zero=True, name="tgt_embed")(tgt),
        initial_state=[h, c])
    context = Attention(name="attention")([dec, enc])
    mixed = Dense(hidden, activation="tanh", name="combine")(Concatenate()([dec, context]))
    out = Dense(target_vocab, activation="softmax", name="out")(mixed)
    return Model([src, tgt], out), Model(src, [enc, h, c])


def train_keras(model, numbers, training, args, budget, batch, progress):
    """train_on_batch on fresh numbers until the budget is spent (the padding, id 0, is
    masked from the target embedding to the loss)."""
    import lstmc.optimizers
    model.compile(lstmc.optimizers.Adam(learning_rate=args.lr), "sparse_categorical_crossentropy")
    decay_at = budget * 0.7
    start, step, avg = time.time(), 0, None
    while time.time() - start < budget:
        src, _, tgt_in, tgt_out = numbers.batch(training(batch))
        loss = float(model.train_on_batch([src, tgt_in], np.maximum(tgt_out, 0)))
        step += 1
        if time.time() - start > decay_at:
            model.optimizer.learning_rate = args.lr / 10
        avg = loss if avg is None else 0.98 * avg + 0.02 * loss
        progress.update(f"step {step:5d}  loss {avg:.4f}  {time.time() - start:5.0f} s")
    progress.done(f"trained {step} steps of {batch} numbers in {time.time() - start:.0f} s, "
                  f"loss {avg:.4f}")
    return step


def train_torch(model, numbers, training, args, budget, batch, progress):
    optimizer = lstmc.optim.Adam(model.parameters(), lr=args.lr)
    scheduler_at = budget * 0.7   # the last 30 % of the budget at a tenth of the rate
    loss_fn = nn.CrossEntropyLoss()
    start, step, avg = time.time(), 0, None
    while time.time() - start < budget:
        src, lengths, tgt_in, tgt_out = numbers.batch(training(batch))
        model.train()
        optimizer.zero_grad()
        logits = model(src, lengths, tgt_in)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1))
        model.backward(loss_fn.backward().reshape(logits.shape))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if time.time() - start > scheduler_at:
            for g in optimizer.param_groups:
                g["lr"] = args.lr / 10
        avg = loss if avg is None else 0.98 * avg + 0.02 * loss
        progress.update(f"step {step:5d}  loss {avg:.4f}  {time.time() - start:5.0f} s")
    progress.done(f"trained {step} steps of {batch} numbers in {time.time() - start:.0f} s, "
                  f"loss {avg:.4f}")
    return step


# ---- evaluation -------------------------------------------------------------------------------
def decode(parts, numbers, held, beam, max_length, chunk=250):
    """Greedy and beam-search outputs (German strings) for the held-out numbers."""
    out = {"greedy": [], f"beam {beam}": []}
    V = parts.vocab
    for i in range(0, len(held), chunk):
        src, lengths, _, _ = numbers.batch(held[i:i + chunk])
        n = len(src)
        seqs, _ = nn.GreedySearch(n, V, BOS, EOS, max_length)(StreamDecoder(parts, src, lengths))
        out["greedy"] += [numbers.text(s) for s in seqs]
        search = nn.BeamSearch(n, V, BOS, EOS, beam_width=beam, max_length=max_length)
        seqs, _ = search(StreamDecoder(parts, src, lengths, beam))
        out[f"beam {beam}"] += [numbers.text(s) for s in seqs]
    return out


def bleu(hypotheses, references):
    try:
        import sacrebleu
    except ImportError:
        return _bleu.corpus_bleu(hypotheses, references, "char"), "examples/_bleu.py"
    score = sacrebleu.metrics.BLEU(tokenize="char").corpus_score(hypotheses, [references])
    return score.score, "sacrebleu"


def attention_map(parts, numbers, k, path=None):
    """The attention weights of greedy decoding of the number k, as text (and a PGM)."""
    src, lengths, _, _ = numbers.batch([k])
    dec = StreamDecoder(parts, src, lengths)
    dec.keep = []
    seqs, _ = nn.GreedySearch(1, parts.vocab, BOS, EOS, 80)(dec)
    words = numbers.english(k)
    chars = list(numbers.text(seqs[0])) + ["</s>"]
    weights = np.array([w[0] for w in dec.keep])[:len(chars)]             # (T, S)
    shades = " .:-=+*#%@"
    lines = [f"attention of {numbers.text(seqs[0])!r} over {' '.join(words)!r}:",
             "      " + " ".join(f"{w[:6]:>6}" for w in words)]
    for c, row in zip(chars, weights):
        lines.append(f"{c:>5} " + " ".join(f"{shades[min(9, int(v * 10))] * 3:>6}"
                                           for v in row))
    if path:
        pixels = (255 * (1 - np.kron(weights, np.ones((8, 16))))).astype(np.uint8)
        with open(path, "wb") as f:
            f.write(f"P5 {pixels.shape[1]} {pixels.shape[0]} 255\n".encode() + pixels.tobytes())
        lines.append(f"(written to {path}: rows are German characters, columns English "
                     "words, dark is weight)")
    return "\n".join(lines)


def main():
    p = _data.parser(__doc__.splitlines()[0], seconds=540.0)
    p.add_argument("--face", choices=["torch", "keras"], default="torch")
    p.add_argument("--beam", type=int, default=4, help="beam width (default 4)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--attention-map", metavar="FILE", help="also write it as a PGM picture")
    args = p.parse_args()
    rng = _data.setup(args)
    numbers = Numbers()
    held, training = split(rng)
    embed, hidden, batch = (16, 32, 32) if args.smoke else (64, 128, 64)
    budget = 8.0 if args.smoke else args.seconds
    held = held[:200] if args.smoke else held
    print(f"English -> German number words: {len(numbers.source_vocab)} English words, "
          f"{len(numbers.target_chars)} German characters; {HELD_OUT} numbers held out; "
          f"{lstmc.get_num_threads()} threads")
    source_vocab, target_vocab = len(numbers.source_vocab) + 1, len(numbers.target_chars) + 3
    if args.face == "keras":
        model, encoder = keras_model(source_vocab, target_vocab, embed, hidden)
        train = train_keras
    else:
        model = Translator(source_vocab, target_vocab, embed, hidden)
        train = train_torch
    print(f"model ({args.face} face): {sum(p.size for p in model.parameters()):,} parameters "
          f"(embed {embed}, hidden {hidden}), batch {batch}, Adam lr {args.lr}, {budget:.0f} s")
    train(model, numbers, training, args, budget, batch, _data.Progress())
    parts = Parts.of_keras(model, encoder) if args.face == "keras" else Parts.of_torch(model)
    references = [numbers.german(int(k)) for k in held]
    start = time.time()
    outputs = decode(parts, numbers, held, args.beam, max_length=80)
    seconds = time.time() - start
    for name, hyps in outputs.items():
        exact = np.mean([h == r for h, r in zip(hyps, references)])
        score, source = bleu(hyps, references)
        print(f"held-out ({len(held)} numbers), {name}: exact match {exact:.4f}, "
              f"character BLEU {score:.2f} ({source})")
    print(f"decoding took {seconds:.1f} s for both searches")
    shown = np.random.default_rng(1).choice(len(held), 5, replace=False)
    for k, hyp in [(held[i], outputs[f"beam {args.beam}"][i]) for i in sorted(shown)]:
        print(f"  {numbers.words_of(int(k))!r} -> {hyp!r}"
              f"{'' if hyp == numbers.german(int(k)) else '  (should be ' + repr(numbers.german(int(k))) + ')'}")
    print(attention_map(parts, numbers, 742_315, args.attention_map))


if __name__ == "__main__":
    main()
