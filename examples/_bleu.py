"""Corpus BLEU (Papineni et al. 2002) as sacrebleu computes it by default: clipped n-gram
precisions for n = 1..4 over the whole corpus, their geometric mean, the brevity penalty
exp(1 - ref_len / sys_len) when the output is shorter, and sacrebleu's default "exp"
smoothing (an order with no match counts as 1 / (2^k * total), k counting such orders).
One reference per sentence. For when sacrebleu is not installed: tests/test_examples.py
holds the two to the same figures.

Tokens: `tokenize="char"` takes each character but whitespace (sacrebleu's "char"
tokenizer: the target side of examples/translate.py is German number words, one compound
word per number, where word BLEU would be exact match); `tokenize="space"` splits on
whitespace.
"""
import math
from collections import Counter

MAX_ORDER = 4


def tokens(line, tokenize):
    if tokenize == "char":
        return [c for c in line if not c.isspace()]
    if tokenize == "space":
        return line.split()
    raise ValueError(f"tokenize must be 'char' or 'space', got {tokenize!r}")


def _ngrams(toks, n):
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def corpus_bleu(hypotheses, references, tokenize="char"):
    """BLEU (0-100) of the hypotheses (str) against one reference (str) each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    correct, total = [0] * MAX_ORDER, [0] * MAX_ORDER
    sys_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = tokens(hyp, tokenize), tokens(ref, tokenize)
        sys_len += len(h)
        ref_len += len(r)
        for n in range(1, MAX_ORDER + 1):
            hn, rn = _ngrams(h, n), _ngrams(r, n)
            correct[n - 1] += sum(min(c, rn[g]) for g, c in hn.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if not any(correct):
        return 0.0
    bp = 1.0 if sys_len >= ref_len else (math.exp(1 - ref_len / sys_len) if sys_len else 0.0)
    log_sum, smooth = 0.0, 1.0
    for n in range(MAX_ORDER):
        if total[n] == 0:
            return 0.0      # no n-grams of this order at all: sacrebleu's mean is then 0
        if correct[n] == 0:
            smooth *= 2
            precision = 100.0 / (smooth * total[n])
        else:
            precision = 100.0 * correct[n] / total[n]
        log_sum += math.log(precision)
    return bp * math.exp(log_sum / MAX_ORDER)
