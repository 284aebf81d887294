"""A character-level LSTM language model: Embedding -> LSTM -> Linear over a byte vocabulary.

The model of `python -m lstmc demo` and of the examples (examples/shakespeare_lm.py,
examples/from_pytorch.py): the model class, the byte vocabulary (encode / decode), training on
random windows, held-out bits per character, sampling, and the model file that `demo --save`
writes and `python -m lstmc generate` reads.

A vocabulary is the sorted list of the byte values a text uses; class k is the byte vocab[k].
"""
import glob
import math
import os
import sysconfig

import numpy as np

from lstmc import io, nn

# The model file's kind: a file records the module that wrote it first, and saved models must
# keep loading.
KIND = "lstmc.demo.CharLM"


class CharLM(nn.Module):
    """Embedding -> LSTM -> Linear over the vocabulary, per step. Module names embedding,
    lstm, fc: a torch twin with the same names shares its state_dict keys."""

    def __init__(self, vocab, embed, hidden, layers):
        super().__init__()
        self.config = dict(embed=embed, hidden=hidden, layers=layers)
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab)

    def forward(self, idx, hx=None):
        out, state = self.lstm(self.embedding(idx), hx)
        self.state = state
        return self.fc(out)

    def backward(self, dlogits):
        dx, _ = self.lstm.backward(self.fc.backward(dlogits))
        return self.embedding.backward(dx)


# ---------------------------------------------------------------------------------------------
# text and vocabulary

def stdlib_text(max_bytes):
    """Up to max_bytes of the standard library's .py sources, in a fixed order: a text every
    Python installation has."""
    root = sysconfig.get_paths()["stdlib"]
    parts, size = [], 0
    for path in sorted(glob.glob(os.path.join(root, "*.py"))):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        parts.append(data)
        size += len(data)
        if size >= max_bytes:
            break
    if not parts:
        raise SystemExit(f"no Python sources found under {root}: use --text FILE")
    return b"\n".join(parts)[:max_bytes]


def byte_vocab(*texts):
    """The sorted byte values that occur in the texts (bytes)."""
    return sorted(set().union(*texts))


def encode(text, vocab):
    """The class ids (int64, one per byte) of a text (bytes) whose bytes are all in vocab."""
    table = np.zeros(256, dtype=np.int64)
    table[vocab] = np.arange(len(vocab))
    return table[np.frombuffer(text, dtype=np.uint8)]


def decode(ids, vocab):
    """The text of class ids, as str (bytes that are not UTF-8 shown as U+FFFD)."""
    return bytes(vocab[i] for i in ids).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------
# training, evaluation, sampling

def random_windows(rng, data, batch, steps):
    """`batch` random windows of `steps` symbols of the 1-D array `data`, and the symbols that
    follow each: inputs and next-symbol targets, both (batch, steps)."""
    starts = rng.integers(0, len(data) - steps - 1, size=batch)
    idx = np.stack([data[s:s + steps + 1] for s in starts])
    return idx[:, :-1], idx[:, 1:]


def train_step(model, optimizer, loss_fn, x, y, clip=1.0):
    """One Adam step of next-symbol prediction (gradient norm clipped); returns the loss."""
    model.zero_grad()
    loss = loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    if hasattr(optimizer, "synchronize"):   # data parallel: clip the ranks' mean gradient
        optimizer.synchronize()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss


def evaluate(model, data, steps, batch=32, windows=40, seed=1):
    """Mean held-out bits per character over fixed random windows (the same windows for a
    given seed, so a model and its lstmc.quantize copy are scored on the same text). The
    model is left in the mode it came in: a quantized copy refuses train()."""
    training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    loss_fn = nn.CrossEntropyLoss()
    total = 0.0
    for _ in range(windows):
        x, y = random_windows(rng, data, batch, steps)
        total += loss_fn(model(x), y)
    model.train(training)
    return total / windows / math.log(2)


def sample(model, vocab, prime, length, temperature, seed):
    """Generates `length` characters after `prime`, one step at a time (state carried).
    `vocab` lists the byte value of each class; prime bytes outside it are not fed. The
    model is left in the mode it came in."""
    training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    stoi = {b: i for i, b in enumerate(vocab)}
    ids = [stoi[b] for b in prime.encode() if b in stoi] or [0]
    logits = model(np.array([ids]))[:, -1]
    out = []
    for _ in range(length):
        z = logits[0].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        nxt = int(rng.choice(len(p), p=p / p.sum()))
        out.append(nxt)
        logits = model(np.array([[nxt]]), model.state)[:, -1]
    model.train(training)
    return prime + decode(out, vocab)     # prime ends on a character: decoding apart is equal


# ---------------------------------------------------------------------------------------------
# the model file

def save_model(path, model, vocab, **facts):
    """Writes the model: its sizes and vocabulary as config (and `facts`), its state_dict as
    arrays."""
    config = {"vocab": [int(b) for b in vocab], **model.config, **facts}
    io.write(path, KIND, config, model.state_dict())


def load_model(path):
    """(model, config) from a file written by `save_model`; io.FormatError if it is not one."""
    config, arrays = io.read(path, kind=KIND)
    sizes = [config.get(k) for k in ("embed", "hidden", "layers")]
    vocab = config.get("vocab")
    if not (all(type(n) is int and n > 0 for n in sizes) and isinstance(vocab, list) and vocab
            and all(type(b) is int and 0 <= b < 256 for b in vocab)):
        raise io.FormatError(f"{path}: config must hold vocab (byte values) and positive "
                             f"embed, hidden and layers, got {config!r:.200}")
    model = CharLM(len(vocab), *sizes)
    try:
        model.load_state_dict(arrays)
    except ValueError as e:
        raise io.FormatError(f"{path}: the weights do not fit the model of its config: {e}") \
            from None
    return model, config
