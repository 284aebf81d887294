"""Search decoding over a decoder that steps: greedy and beam search.

A decoder is any object with two methods, over N rows decoded side by side:

    step(tokens)  tokens (N,) int64, each row's last token -> logits (N, V) float32 (it may
                  return a buffer of its own, overwritten by its next step)
    reorder(rows) rows (N,) int64: row i of the decoder's state becomes a copy of row
                  rows[i]'s (beam search only: hypotheses that survive take over the rows of
                  those that do not)

An lstmc stream is most of one: `module.step(x_t, state)` advances `state` (a StreamState)
and `state.reorder(rows)` reorders it; a decoder of an encoder-decoder model adds its
embedding lookup, attention and output layer around them (examples/translate.py). For beam
search the decoder runs batch_size * beam_width rows, sentence b owning rows
b * beam_width .. (b + 1) * beam_width - 1: start it from the encoder's state repeated
beam_width times per sentence (`np.repeat(a, beam_width, axis=0)`).

`GreedySearch` and `BeamSearch` size their buffers once (for a batch size, beam width,
vocabulary and maximum length) and are reused across calls; between two calls of the
decoder's step they allocate nothing (the beam bookkeeping is C: csrc/decode.c), so a
decoding loop costs what the decoder's steps cost. The beam search is Hugging Face's and
fairseq's; lstmc.reference.beam_search is its plain-Python specification.
"""
import numpy as np

from lstmc import _core
from lstmc.nn._checks import positive_int

__all__ = ["GreedySearch", "BeamSearch", "greedy_search", "beam_search"]


def _token(value, name, vocab):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 0 <= value < vocab:
        raise ValueError(f"{name} must be a class in 0 .. {vocab - 1}, got {value!r}")
    return int(value)


def _logits(out, rows, vocab):
    if out.__class__ is not np.ndarray or out.dtype != np.float32 \
            or out.shape != (rows, vocab) or not out.flags.c_contiguous:
        raise ValueError(f"the decoder's step must return C-contiguous float32 logits of shape "
                         f"{(rows, vocab)}, got {type(out).__name__} "
                         f"{getattr(out, 'shape', '')} {getattr(out, 'dtype', '')}")
    return out


class GreedySearch:
    """The most likely class at every step, for `batch_size` rows, until each row has
    produced `eos` or `max_length` tokens. Call it with a decoder (module docstring):
    returns (sequences, scores): per row the generated classes as an int64 array (without
    eos), and the sum of their log-probabilities (eos's included when it was produced)."""

    def __init__(self, batch_size, vocab_size, bos, eos, max_length=100):
        self.batch_size = positive_int(batch_size, "batch_size")
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.bos = _token(bos, "bos", self.vocab_size)
        self.eos = _token(eos, "eos", self.vocab_size)
        self.max_length = positive_int(max_length, "max_length")
        N, V, T = self.batch_size, self.vocab_size, self.max_length
        self._logp = np.empty((N, V), np.float32)
        self._tokens = np.empty(N, np.int64)
        self._history = np.empty((T, N), np.int64)
        self._flat = np.empty(N, np.int64)
        self._offsets = np.arange(N, dtype=np.int64) * V
        self._picked = np.empty(N, np.float32)
        self._scores = np.empty(N, np.float64)
        self._ended = np.empty(N, np.bool_)
        self._is_eos = np.empty(N, np.bool_)
        self._open = np.empty(N, np.bool_)
        self._length = np.empty(N, np.int64)

    def __call__(self, decoder):
        N, V = self.batch_size, self.vocab_size
        tokens, logp, ended = self._tokens, self._logp, self._ended
        tokens.fill(self.bos)
        self._scores.fill(0.0)
        ended.fill(False)
        self._length.fill(self.max_length)
        steps = 0
        for t in range(self.max_length):
            np.copyto(logp, _logits(decoder.step(tokens), N, V))
            _core.log_softmax_rows(logp)
            np.argmax(logp, axis=1, out=tokens)
            np.add(self._offsets, tokens, out=self._flat)
            np.take(logp.reshape(-1), self._flat, out=self._picked, mode="clip")   # unbuffered
            np.putmask(self._picked, ended, 0.0)   # finished rows add nothing
            np.add(self._scores, self._picked, out=self._scores)
            np.putmask(tokens, ended, self.eos)     # and keep feeding eos
            self._history[t] = tokens
            np.logical_not(ended, out=self._open)
            np.equal(tokens, self.eos, out=self._is_eos)
            np.logical_and(self._is_eos, self._open, out=self._is_eos)   # ended just now
            np.putmask(self._length, self._is_eos, t)
            np.logical_or(ended, self._is_eos, out=ended)
            steps = t + 1
            if ended.all():
                break
        sequences = [self._history[:min(self._length[i], steps), i].copy() for i in range(N)]
        return sequences, self._scores.copy()


class BeamSearch:
    """Beam search over `batch_size` sentences with `beam_width` hypotheses each (the
    decoder runs batch_size * beam_width rows), up to `max_length` tokens.

    Finished hypotheses are ranked by their summed log-probability divided by
    length ** length_penalty (length counting eos): 0 ranks by the sum alone, 1 by the mean,
    larger values favour longer outputs. Call it with a decoder (module docstring): returns
    (sequences, scores), per sentence its best hypothesis as an int64 array (without eos)
    and its normalised score; `n_best` > 1 returns per sentence lists of the best n_best
    instead, best first."""

    def __init__(self, batch_size, vocab_size, bos, eos, beam_width=4, max_length=100,
                 length_penalty=1.0):
        self.batch_size = positive_int(batch_size, "batch_size")
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.beam_width = positive_int(beam_width, "beam_width")
        self.bos = _token(bos, "bos", self.vocab_size)
        self.eos = _token(eos, "eos", self.vocab_size)
        self.max_length = positive_int(max_length, "max_length")
        self.length_penalty = float(length_penalty)
        B, K, V, T = self.batch_size, self.beam_width, self.vocab_size, self.max_length
        N = B * K
        self.rows = N
        self._logp = np.empty((N, V), np.float32)
        self._tokens = np.empty(N, np.int64)
        self._parent = np.empty(N, np.int64)
        self._history = np.empty((T, N), np.int64)
        self._parents = np.empty((T, N), np.int64)
        self._alive = np.empty((B, K), np.float64)
        self._fin_score = np.empty((B, K), np.float64)
        self._fin_ref = np.empty((B, K), np.int64)
        self._fin_count = np.empty(B, np.int64)
        self._done = np.empty(B, np.uint8)
        self._cand_val = np.empty(2 * K, np.float64)
        self._cand_idx = np.empty(2 * K, np.int64)

    def __call__(self, decoder, n_best=1):
        B, K, V, N = self.batch_size, self.beam_width, self.vocab_size, self.rows
        n_best = positive_int(n_best, "n_best")
        if n_best > K:
            raise ValueError(f"n_best must be at most beam_width ({K}), got {n_best}")
        self._alive.fill(-np.inf)
        self._alive[:, 0] = 0.0          # one hypothesis per sentence: bos
        self._fin_score.fill(-np.inf)
        self._fin_count.fill(0)
        self._done.fill(0)
        self._tokens.fill(self.bos)
        steps = 0
        for t in range(self.max_length):
            np.copyto(self._logp, _logits(decoder.step(self._tokens), N, V))
            _core.log_softmax_rows(self._logp)
            _core.beam_step(self._tokens, self._parent, self._alive, self._fin_score,
                            self._fin_ref, self._fin_count, self._done, self._cand_val,
                            self._cand_idx, self._logp, t, self.eos, self.length_penalty)
            self._history[t] = self._tokens
            self._parents[t] = self._parent
            steps = t + 1
            if self._done.all():
                break
            decoder.reorder(self._parent)
        return self._results(steps, n_best)

    def _path(self, t, row):
        """The classes of the hypothesis whose last token is history[t, row], oldest first."""
        out = []
        while t >= 0:
            out.append(int(self._history[t, row]))
            row = int(self._parents[t, row])
            t -= 1
        return out[::-1]

    def _results(self, steps, n_best):
        B, K, N = self.batch_size, self.beam_width, self.rows
        sequences, scores = [], []
        for b in range(B):
            found = []   # (score, tokens without eos), by slot; ties rank the earlier slot
            for f in range(int(self._fin_count[b])):
                t, row = divmod(int(self._fin_ref[b, f]), N)
                found.append((float(self._fin_score[b, f]), self._path(t - 1, row)))
            if not self._done[b]:   # out of steps: the alive hypotheses finish as they are
                self._finish_alive(b, steps, found)
            ranked = sorted(range(len(found)), key=lambda i: (-found[i][0], i))[:n_best]
            best = [(np.array(found[i][1], np.int64), found[i][0]) for i in ranked]
            if n_best == 1:
                sequences.append(best[0][0])
                scores.append(best[0][1])
            else:
                sequences.append([s for s, _ in best])
                scores.append([s for _, s in best])
        return sequences, (np.array(scores) if n_best == 1 else scores)

    def _finish_alive(self, b, steps, found):
        """Adds sentence b's alive hypotheses at the last step (`steps` tokens each, no
        eos) to `found` by the rule of the finished ones: at most beam_width, a better one
        replacing the first worst."""
        K = self.beam_width
        norm = float(steps) ** self.length_penalty
        for j in range(K):
            score = float(self._alive[b, j])
            if score == -np.inf:
                continue
            entry = (score / norm, self._path(steps - 1, b * K + j))
            if len(found) < K:
                found.append(entry)
            else:
                worst = min(range(len(found)), key=lambda i: (found[i][0], i))
                if entry[0] > found[worst][0]:
                    found[worst] = entry


def greedy_search(decoder, batch_size, vocab_size, bos, eos, max_length=100):
    """GreedySearch(...)(decoder): for one call (a GreedySearch object reuses its buffers)."""
    return GreedySearch(batch_size, vocab_size, bos, eos, max_length)(decoder)


def beam_search(decoder, batch_size, vocab_size, bos, eos, beam_width=4, max_length=100,
                length_penalty=1.0, n_best=1):
    """BeamSearch(...)(decoder, n_best): for one call (a BeamSearch object reuses its
    buffers)."""
    return BeamSearch(batch_size, vocab_size, bos, eos, beam_width, max_length,
                      length_penalty)(decoder, n_best)
