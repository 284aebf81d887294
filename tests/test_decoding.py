"""Greedy and beam search (lstmc.nn.decoding, csrc/decode.c) against the plain-Python
specification (lstmc.reference.beam_search) and against exhaustive search; a real LSTM
decoder stepped through its stream with StreamState.reorder; no allocation per step."""
import itertools
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lstmc
from lstmc import _core, reference
from lstmc.nn.decoding import BeamSearch, GreedySearch, beam_search, greedy_search


class PrefixDecoder:
    """Logits that depend on the sentence and the whole prefix (a hash of them seeds a
    generator): a decoder whose state is each row's prefix, so a wrong reorder shows."""

    def __init__(self, batch, width, vocab, scale=2.0, eos_bias=0.0, eos=0):
        self.vocab, self.scale, self.eos_bias, self.eos = vocab, scale, eos_bias, eos
        self.prefixes = [() for _ in range(batch * width)]
        self.sentence = [r // width for r in range(batch * width)]
        self.started = False
        self.out = np.empty((batch * width, vocab), np.float32)

    def logits(self, b, prefix):
        seed = zlib.crc32(repr((b, prefix)).encode())
        z = np.random.default_rng(seed).standard_normal(self.vocab) * self.scale
        z[self.eos] += self.eos_bias
        return z.astype(np.float32)

    def step(self, tokens):
        if self.started:
            self.prefixes = [p + (int(t),) for p, t in zip(self.prefixes, tokens)]
        self.started = True
        for r, (b, p) in enumerate(zip(self.sentence, self.prefixes)):
            self.out[r] = self.logits(b, p)
        return self.out

    def reorder(self, rows):
        self.prefixes = [self.prefixes[int(r)] for r in rows]


@settings(max_examples=80, deadline=None)
@given(batch=st.integers(1, 3), width=st.integers(1, 5), vocab=st.integers(2, 7),
       max_length=st.integers(1, 6), eos=st.integers(0, 6), eos_bias=st.sampled_from([-1, 0, 1.5]),
       penalty=st.sampled_from([0.0, 0.6, 1.0, 2.0]))
def test_beam_search_matches_the_reference(batch, width, vocab, max_length, eos, eos_bias,
                                           penalty):
    eos = eos % vocab
    dec = PrefixDecoder(batch, width, vocab, eos_bias=eos_bias, eos=eos)
    got, scores = BeamSearch(batch, vocab, bos=eos, eos=eos, beam_width=width,
                             max_length=max_length, length_penalty=penalty)(dec)
    want = reference.beam_search(dec.logits, batch, width, eos, max_length, penalty)
    for b in range(batch):
        assert got[b].tolist() == want[b][0], f"sentence {b}"
        assert scores[b] == pytest.approx(want[b][1], rel=1e-5, abs=1e-5)


def _exhaustive(logits_of, b, vocab, eos, max_length, penalty):
    """The best score over every sequence ending in eos within max_length, or running
    max_length tokens without one."""
    best = (-np.inf, None)
    for n in range(1, max_length + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if eos in seq[:-1] or (n < max_length and seq[-1] != eos):
                continue
            total = sum(reference.log_softmax(logits_of(b, seq[:i]))[seq[i]] for i in range(n))
            score = total / n ** penalty
            if score > best[0]:
                best = (score, list(seq[:-1]) if seq[-1] == eos else list(seq))
    return best


@pytest.mark.parametrize("penalty", [0.0, 1.0])
def test_a_beam_wide_enough_is_exhaustive_search(penalty):
    vocab, max_length, eos = 3, 4, 1
    dec = PrefixDecoder(2, vocab ** max_length, vocab, eos_bias=0.5, eos=eos)
    got, scores = beam_search(dec, 2, vocab, bos=0, eos=eos, beam_width=vocab ** max_length,
                              max_length=max_length, length_penalty=penalty)
    for b in range(2):
        score, tokens = _exhaustive(dec.logits, b, vocab, eos, max_length, penalty)
        assert got[b].tolist() == tokens
        assert scores[b] == pytest.approx(score, rel=1e-5)


def test_greedy_is_a_beam_of_one_and_n_best_is_ranked():
    dec = PrefixDecoder(3, 1, 6, eos_bias=0.8, eos=2)
    greedy, g_scores = greedy_search(dec, 3, 6, bos=0, eos=2, max_length=8)
    dec = PrefixDecoder(3, 1, 6, eos_bias=0.8, eos=2)
    beam, b_scores = beam_search(dec, 3, 6, bos=0, eos=2, beam_width=1, max_length=8,
                                 length_penalty=0.0)
    assert [g.tolist() for g in greedy] == [b.tolist() for b in beam]
    np.testing.assert_allclose(g_scores, b_scores, rtol=1e-6)
    dec = PrefixDecoder(2, 4, 6, eos_bias=0.8, eos=2)
    seqs, scores = beam_search(dec, 2, 6, bos=0, eos=2, beam_width=4, max_length=8, n_best=3)
    assert all(len(s) == 3 for s in seqs) and all(sc == sorted(sc, reverse=True)
                                                  for sc in scores)


def test_greedy_stops_rows_at_eos_and_keeps_the_others_going():
    class Fixed:
        """Row 0 says 3 then eos (1); row 1 says 2 forever."""
        def __init__(self):
            self.t = -1
            self.out = np.zeros((2, 4), np.float32)

        def step(self, tokens):
            self.t += 1
            self.out[:] = 0
            self.out[0, 3 if self.t == 0 else 1] = 5
            self.out[1, 2] = 5
            return self.out

    seqs, scores = GreedySearch(2, 4, bos=0, eos=1, max_length=5)(Fixed())
    assert seqs[0].tolist() == [3] and seqs[1].tolist() == [2] * 5
    p = reference.log_softmax(np.array([5.0, 0, 0, 0]))[0]
    np.testing.assert_allclose(scores, [2 * p, 5 * p], rtol=2e-5)   # float32 log-probs


class LSTMDecoder:
    """Embedding -> LSTM stream -> Linear, stepped one token at a time: the shape of a real
    decoder (allocation-free per step: every result goes into a buffer of its own)."""

    def __init__(self, emb, lstm, fc, rows, h0=None):
        self.emb, self.lstm, self.fc = emb, lstm, fc
        self.state = lstm.initial_state(rows)
        if h0 is not None:
            self.state.h[:] = h0
        self.x = np.empty((rows, emb.embedding_dim), np.float32)
        self.out = np.empty((rows, fc.out_features), np.float32)
        self.weight_t = np.ascontiguousarray(fc.weight.data.T)
        # the bias once per row: an add that broadcasts (V,) over rows buffers (allocates)
        self.bias = np.tile(fc.bias.data, (rows, 1))

    def step(self, tokens):
        np.take(self.emb.weight.data, tokens, axis=0, out=self.x, mode="clip")  # unbuffered
        y, _ = self.lstm.step(self.x, self.state)
        np.matmul(y, self.weight_t, out=self.out)
        np.add(self.out, self.bias, out=self.out)
        return self.out

    def reorder(self, rows):
        self.state.reorder(rows)


def test_an_lstm_decoder_through_its_stream():
    """Beam search over a stepped LSTM equals the reference fed by whole-prefix forwards."""
    lstmc.manual_seed(3)
    V, E, H = 7, 5, 8
    emb, lstm, fc = lstmc.nn.Embedding(V, E), lstmc.nn.LSTM(E, H, num_layers=2), \
        lstmc.nn.Linear(H, V)
    for m in (emb, lstm, fc):
        m.eval()
    B, K, bos, eos = 2, 3, 0, 1
    h0 = np.random.default_rng(0).standard_normal((2, B, H)).astype(np.float32)

    def logits_of(b, prefix):
        x = emb(np.array([(bos,) + prefix]).T)               # (T, 1, E)
        out, _ = lstm(x, (h0[:, b:b + 1], np.zeros((2, 1, H), np.float32)))
        return fc(out[-1, 0])

    dec = LSTMDecoder(emb, lstm, fc, B * K, np.repeat(h0, K, axis=1))
    got, scores = beam_search(dec, B, V, bos, eos, beam_width=K, max_length=7)
    want = reference.beam_search(logits_of, B, K, eos, 7)
    for b in range(B):
        assert got[b].tolist() == want[b][0]
        assert scores[b] == pytest.approx(want[b][1], rel=1e-4)


def test_no_allocation_per_step():
    """Net traced memory over the last 30 of 300 beam-search steps (and greedy ones) is
    zero, and no step allocates anything as large as the step's logits or the decoder's h (a
    step's transient objects are of fixed size: the binding's memoryviews, about 2 kB)."""
    lstmc.manual_seed(0)
    V, E, H, B, K, T = 1000, 16, 256, 2, 4, 300   # logits of 32 kB, h and c of 8 kB
    emb, lstm, fc = lstmc.nn.Embedding(V, E), lstmc.nn.LSTM(E, H), lstmc.nn.Linear(H, V)
    fc.bias.data[1] = -1e9      # eos never wins: every search runs all T steps
    for search in (BeamSearch(B, V, 0, 1, beam_width=K, max_length=T),
                   GreedySearch(B * K, V, 0, 1, max_length=T)):
        dec = LSTMDecoder(emb, lstm, fc, B * K)
        search(dec)                                    # warm up
        steps = [0]
        marks = np.zeros(3, np.int64)   # before, after, peak: stored without new objects
        inner = dec.step

        def counting(tokens):
            steps[0] += 1
            if steps[0] == 270:   # loop counters are ints above 256 from here on
                tracemalloc.reset_peak()
                marks[0] = tracemalloc.get_traced_memory()[0]
            if steps[0] == T:     # before the results are made, after the last step
                marks[1:] = tracemalloc.get_traced_memory()
            return inner(tokens)

        dec.step = counting
        tracemalloc.start()
        try:
            search(dec)
        finally:
            tracemalloc.stop()
        assert steps[0] == T
        name = type(search).__name__
        before, after, peak = marks
        assert after - before <= 0, f"{name}: {after - before} bytes kept over {T - 270} steps"
        smallest = min(B * K * V * 4, dec.state.h.nbytes)
        assert peak - before < smallest, f"{name}: a step allocated {peak - before} bytes"


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="eos must be a class in 0 .. 3"):
        BeamSearch(1, 4, bos=0, eos=4)
    with pytest.raises(ValueError, match="n_best must be at most beam_width"):
        BeamSearch(1, 4, 0, 1, beam_width=2)(PrefixDecoder(1, 2, 4), n_best=3)

    class Wrong:
        def step(self, tokens):
            return np.zeros((len(tokens), 5))    # float64, wrong vocabulary

    with pytest.raises(ValueError, match=r"float32 logits of shape \(2, 4\)"):
        greedy_search(Wrong(), 2, 4, 0, 1)
    state = lstmc.nn.LSTM(2, 3).initial_state(3)
    with pytest.raises(ValueError, match=r"rows must be an integer array of shape \(3,\)"):
        state.reorder(np.zeros(2, np.int64))
    with pytest.raises(IndexError):
        state.reorder(np.array([0, 1, 3]))


def test_log_softmax_rows_against_the_reference():
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (3, 1), (4, 7), (2, 1000)]:
        x = (rng.standard_normal(shape) * 30).astype(np.float32)
        y = x.copy()
        _core.log_softmax_rows(y)
        np.testing.assert_allclose(y, reference.log_softmax(x), rtol=1e-5, atol=1e-4)
    x = np.array([[-np.inf, 0.0, 1.0]], np.float32)
    _core.log_softmax_rows(x)
    assert x[0, 0] == -np.inf and np.isfinite(x[0, 1:]).all()
