/*
 * decode.c - the per-step bookkeeping of search decoding (lstmc.nn.decoding): row-wise log
 * softmax, and one step of beam search. The model's step (a stream through the decoder)
 * runs in Python; everything between two steps is here, over buffers the caller sized
 * once, so a decoding step allocates nothing.
 *
 * Letters: B = sentences, K = beams per sentence, N = B * K rows (sentence b owns rows
 * b*K .. b*K + K-1), V = classes (the vocabulary), t = the step (0-based).
 *
 * Beam search, as Hugging Face's and fairseq's: each sentence keeps K alive hypotheses
 * with their summed log-probabilities; a step extends every alive one by every class and
 * ranks the K*V extensions; ranks below K that end in `eos` become finished hypotheses
 * (scored sum / (t + 1)^length_penalty, their length counting eos) and the best K that do
 * not are the next alive ones. A sentence is done when it holds K finished hypotheses and
 * its best alive one, normalised at its current length, cannot beat the worst of them.
 * Ties rank the lower flat index (beam * V + class) first, so results are deterministic.
 * lstmc/reference.py's beam_search is the spec, in plain Python.
 */
#include <math.h>
#include <stdint.h>

#include "lstmc.h"

int lstmc_log_softmax_f32(float *x, int rows, int cols)
{
    if (rows < 0 || cols < 1)
        return LSTMC_ERR_ARG;
    for (int r = 0; r < rows; r++) {
        float *v = x + (size_t)r * cols;
        float m = v[0];
        for (int j = 1; j < cols; j++)
            m = v[j] > m ? v[j] : m;
        double s = 0.0;
        for (int j = 0; j < cols; j++)
            s += exp((double)v[j] - m);
        float lse = m + (float)log(s);   /* m alone when m is +-inf or NaN: inf - inf is NaN */
        for (int j = 0; j < cols; j++)
            v[j] -= lse;
    }
    return LSTMC_OK;
}

/* Inserts (val, idx) into the list of the best `cap` candidates so far, sorted by value
 * descending then index ascending; `*n` entries are in use. */
static void keep_best(double *vals, int64_t *idxs, int *n, int cap, double val, int64_t idx)
{
    int at = *n;
    if (at == cap) {
        if (!(val > vals[cap - 1]))   /* equal values: the earlier (lower) index stays */
            return;
        at = cap - 1;
    } else {
        (*n)++;
    }
    while (at > 0 && val > vals[at - 1]) {
        vals[at] = vals[at - 1];
        idxs[at] = idxs[at - 1];
        at--;
    }
    vals[at] = val;
    idxs[at] = idx;
}

int lstmc_beam_step(int64_t *tokens, int64_t *parent, double *alive, double *fin_score,
                    int64_t *fin_ref, int64_t *fin_count, uint8_t *done,
                    double *cand_val, int64_t *cand_idx,
                    const float *logp, int B, int K, int V, int t, int64_t eos,
                    double length_penalty)
{
    /* tokens (N) out: each row's next input; parent (N) out: the row it continues;
     * alive (B, K) in/out: alive scores (-inf: no hypothesis); fin_score (B, K), fin_ref
     * (B, K) = t * N + parent row of the finished ones, fin_count (B), done (B) in/out;
     * cand_val, cand_idx (2K) scratch; logp (N, V) this step's log-probabilities. */
    if (B < 1 || K < 1 || V < 1 || t < 0)
        return LSTMC_ERR_ARG;
    const int64_t N = (int64_t)B * K;
    const double norm = pow((double)t + 1.0, length_penalty);
    for (int b = 0; b < B; b++) {
        int64_t *tok = tokens + (int64_t)b * K, *par = parent + (int64_t)b * K;
        double *al = alive + (int64_t)b * K;
        if (done[b]) {               /* the rows idle: fed eos, continuing themselves */
            for (int j = 0; j < K; j++) {
                tok[j] = eos;
                par[j] = (int64_t)b * K + j;
            }
            continue;
        }
        int n = 0;
        for (int j = 0; j < K; j++) {
            if (isinf(al[j]) && al[j] < 0)
                continue;
            const float *row = logp + ((int64_t)b * K + j) * V;
            for (int v = 0; v < V; v++)
                keep_best(cand_val, cand_idx, &n, 2 * K, al[j] + (double)row[v],
                          (int64_t)j * V + v);
        }
        double *fs = fin_score + (int64_t)b * K;
        int64_t *fr = fin_ref + (int64_t)b * K;
        int kept = 0;
        for (int r = 0; r < n && kept < K; r++) {
            const int64_t j = cand_idx[r] / V, v = cand_idx[r] % V;
            const int64_t from = (int64_t)b * K + j;
            if (v == eos) {
                if (r >= K)          /* an eos ranked below the beam width is not kept */
                    continue;
                const double score = cand_val[r] / norm;
                int slot = -1;
                if (fin_count[b] < K) {
                    slot = (int)fin_count[b]++;
                } else {             /* replace the worst if this one is better */
                    int worst = 0;
                    for (int f = 1; f < K; f++)
                        worst = fs[f] < fs[worst] ? f : worst;
                    if (score > fs[worst])
                        slot = worst;
                }
                if (slot >= 0) {
                    fs[slot] = score;
                    fr[slot] = (int64_t)t * N + from;
                }
                continue;
            }
            tok[kept] = v;
            par[kept] = from;
            cand_val[kept] = cand_val[r];   /* r >= kept: the new alive scores, in order */
            kept++;
        }
        for (int j = 0; j < kept; j++)
            al[j] = cand_val[j];
        for (int j = kept; j < K; j++) {     /* fewer than K extensions: empty beams */
            al[j] = -INFINITY;
            tok[j] = eos;
            par[j] = (int64_t)b * K;
        }
        if (kept == 0) {
            done[b] = 1;
        } else if (fin_count[b] == K) {
            double worst = fs[0];
            for (int f = 1; f < K; f++)
                worst = fs[f] < worst ? fs[f] : worst;
            if (worst >= al[0] / norm)
                done[b] = 1;
        }
    }
    return LSTMC_OK;
}
