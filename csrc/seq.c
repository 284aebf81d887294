/*
 * seq.c - the cell-agnostic sequence driver: sizes and layouts (here), and the forward and
 * backward time loops over layers and directions (seq.inc, stamped once per dtype).
 *
 * Per layer and direction the work is:
 *   forward   gates = X W_ih^T                      one GEMM over all N positions (or, with
 *                                                   the caller's packed copy and N <= 1024,
 *                                                   the packed kernel of recur.c)
 *             per step: gh = h W_hh^T (running rows only; recur.c's packed kernel at batch
 *             <= 128), one fused elementwise pass, and for a projection h = r W_hr^T
 *   backward  per step: the elementwise gate backward and dh_prev = dgates W_hh
 *             after the loop, as single GEMMs: dW_ih += dgates^T X, dW_hh += dgates^T H_prev,
 *             db += 1^T dgates, dW_hr += dh^T r, dX = dgates W_ih
 * Rows are sorted by length, so the rows still running at any step are a prefix of the batch:
 * finished rows are simply outside every GEMM and pass, and cost nothing.
 */
#define _GNU_SOURCE /* sched_getcpu, sched_setaffinity (unstack) */
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include "internal.h"

static int lstmc_threads = 0; /* 0: not set yet, use the OpenMP default */

int lstmc_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

void lstmc_set_num_threads(int n) { lstmc_threads = n > 0 ? n : 1; }

int lstmc_get_num_threads(void)
{
    if (lstmc_threads > 0)
        return lstmc_threads;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* What the driver needs to know of a cell; the rest is in its kernels (lstm.c, gru.c, rnn.c). */
typedef struct {
    int gates;       /* G: gate blocks in W_ih / W_hh */
    int rec_gates;   /* blocks whose recurrent GEMM reads h; the others read step_aux after
                        phase 0 (two-phase cells) */
    int aux;         /* (N, H) tensors a training forward saves beside the gates */
    int has_c;       /* carries a cell state c */
    int split;       /* recurrent-side gate gradients differ from the input side's */
    int direct;      /* the backward adds a term to dh_prev that skips W_hh */
} cell_info;

static const cell_info CELLS[] = {
    [LSTMC_CELL_LSTM] = {4, 4, 2, 1, 0, 0},
    [LSTMC_CELL_GRU] = {3, 3, 1, 0, 1, 1},
    [LSTMC_CELL_GRU_RESET_BEFORE] = {3, 2, 1, 0, 0, 1},
    [LSTMC_CELL_RNN_TANH] = {1, 1, 0, 0, 0, 0},
    [LSTMC_CELL_RNN_RELU] = {1, 1, 0, 0, 0, 0},
};

static int cell_valid(int cell) { return cell >= 0 && cell <= LSTMC_CELL_RNN_RELU; }
static const cell_info *cell_of(const lstmc_seq *s) { return &CELLS[s->cell]; }
static int gates_of(int cell) { return cell_valid(cell) ? CELLS[cell].gates : 0; }
static int two_phase(const lstmc_seq *s) { return cell_of(s)->rec_gates < cell_of(s)->gates; }
static size_t hout_of(const lstmc_seq *s) { return (size_t)(s->proj > 0 ? s->proj : s->hidden); }
static size_t input_of(const lstmc_seq *s, int l)
{
    return l == 0 ? (size_t)s->input : s->dirs * hout_of(s);
}

/* The default activations of each cell (lstmc.h lstmc_cell_options), and how many slots it
 * has */
static const int DEFAULT_ACTS[][3] = {
    [LSTMC_CELL_LSTM] = {LSTMC_ACT_SIGMOID, LSTMC_ACT_TANH, LSTMC_ACT_TANH},
    [LSTMC_CELL_GRU] = {LSTMC_ACT_SIGMOID, LSTMC_ACT_TANH, 0},
    [LSTMC_CELL_GRU_RESET_BEFORE] = {LSTMC_ACT_SIGMOID, LSTMC_ACT_TANH, 0},
    [LSTMC_CELL_RNN_TANH] = {LSTMC_ACT_TANH, 0, 0},
    [LSTMC_CELL_RNN_RELU] = {LSTMC_ACT_RELU, 0, 0},
};
static int act_slots(int cell) { return cell == LSTMC_CELL_LSTM ? 3 : cell <= 2 ? 2 : 1; }

/* 1 if the options' activations are the cell's defaults in every direction */
static int default_acts(const lstmc_seq *s)
{
    const lstmc_cell_options *o = s->options;
    for (int d = 0; d < s->dirs; d++)
        for (int k = 0; k < act_slots(s->cell); k++)
            if (o->act[d][k] != DEFAULT_ACTS[s->cell][k])
                return 0;
    return 1;
}

/* The call's options, or NULL when there are none or all are defaults: the default kernels
 * then run (chosen once per call, in step_of) */
static const lstmc_cell_options *options_of(const lstmc_seq *s)
{
    const lstmc_cell_options *o = s->options;
    return o && (o->clip > 0 || o->coupled || o->peepholes || !default_acts(s)) ? o : NULL;
}

static int peepholes_of(const lstmc_seq *s) { return s->options && s->options->peepholes; }

/* The backward runs the default cells and LSTM peepholes and clip (lstm.inc) */
static int backward_supported(const lstmc_seq *s)
{
    const lstmc_cell_options *o = options_of(s);
    return !o || (s->cell == LSTMC_CELL_LSTM && !o->coupled && default_acts(s));
}

static int options_valid(const lstmc_seq *s)
{
    const lstmc_cell_options *o = s->options;
    if (!o)
        return 1;
    if (!(o->clip >= 0) || o->coupled < 0 || o->coupled > 1 ||
        o->peepholes < 0 || o->peepholes > 1)   /* !(>=) also refuses a NaN clip */
        return 0;
    if (s->cell != LSTMC_CELL_LSTM && (o->coupled || o->peepholes))
        return 0;
    for (int d = 0; d < s->dirs; d++)
        for (int k = 0; k < act_slots(s->cell); k++)
            if (o->act[d][k] < LSTMC_ACT_SIGMOID || o->act[d][k] > LSTMC_ACT_SOFTPLUS)
                return 0;
    return 1;
}

int lstmc_seq_check(const lstmc_seq *s)
{
    if (!s || !cell_valid(s->cell) || s->steps < 1 || s->batch < 1 || s->input < 1 ||
        s->hidden < 1 || s->proj < 0 || (s->proj > 0 && s->proj >= s->hidden) ||
        s->layers < 1 || (s->dirs != 1 && s->dirs != 2) || !s->batch_sizes || !s->lengths)
        return LSTMC_ERR_ARG;
    if (s->cell != LSTMC_CELL_LSTM && s->proj != 0)   /* only the LSTM has a projection */
        return LSTMC_ERR_ARG;
    if (!options_valid(s) || s->recurrent_dropout < 0 || s->recurrent_dropout > 1)
        return LSTMC_ERR_ARG;
    for (int t = 0; t < s->steps; t++) {
        const int n = s->batch_sizes[t];
        if (n < 0 || n > (t ? s->batch_sizes[t - 1] : s->batch))
            return LSTMC_ERR_ARG;
    }
    /* GEMM sizes and leading dimensions are ints: keep every one of them representable */
    const long long GH = (long long)gates_of(s->cell) * s->hidden;
    if (GH > INT_MAX || (long long)s->dirs * s->hidden > INT_MAX)
        return LSTMC_ERR_ARG;
    long long N = 0;
    for (int t = 0; t < s->steps; t++)
        N += s->batch_sizes[t];
    if (N > INT_MAX)
        return LSTMC_ERR_ARG;
    for (int j = 0; j < s->batch; j++) {
        const int len = s->lengths[j];
        /* row j runs exactly for t < len: it is inside the prefix of those steps only */
        if (len < 0 || len > s->steps || (j && len > s->lengths[j - 1]) ||
            (len > 0 && s->batch_sizes[len - 1] <= j) ||
            (len < s->steps && s->batch_sizes[len] > j))
            return LSTMC_ERR_ARG;
    }
    return LSTMC_OK;
}

size_t lstmc_seq_rows(const lstmc_seq *s)
{
    size_t N = 0;
    for (int t = 0; t < s->steps; t++)
        N += (size_t)s->batch_sizes[t];
    return N;
}

/* sizes of the tensors of one layer/direction, in the order of the flat buffer */
#define PARAM_KINDS 6
static void param_sizes(const lstmc_seq *s, int l, size_t sz[PARAM_KINDS])
{
    const size_t GH = (size_t)gates_of(s->cell) * s->hidden;
    sz[LSTMC_W_IH] = GH * input_of(s, l);
    sz[LSTMC_W_HH] = GH * hout_of(s);
    sz[LSTMC_B_IH] = s->bias ? GH : 0;
    sz[LSTMC_B_HH] = s->bias ? GH : 0;
    sz[LSTMC_W_HR] = (size_t)s->proj * s->hidden;
    sz[LSTMC_W_PH] = peepholes_of(s) ? 3 * (size_t)s->hidden : 0;
}

size_t lstmc_seq_param_offset(const lstmc_seq *s, int layer, int dir, int which)
{
    size_t off = 0, sz[PARAM_KINDS];
    if (layer < 0 || layer >= s->layers || dir < 0 || dir >= s->dirs || which < 0 ||
        which >= PARAM_KINDS)
        return (size_t)-1;
    for (int l = 0; l < s->layers; l++)
        for (int d = 0; d < s->dirs; d++) {
            param_sizes(s, l, sz);
            for (int w = 0; w < PARAM_KINDS; w++) {
                if (l == layer && d == dir && w == which)
                    return sz[w] ? off : (size_t)-1;
                off += sz[w];
            }
        }
    return (size_t)-1;
}

size_t lstmc_seq_param_count(const lstmc_seq *s)
{
    size_t n = 0, sz[PARAM_KINDS];
    for (int l = 0; l < s->layers; l++) {
        param_sizes(s, l, sz);
        for (int w = 0; w < PARAM_KINDS; w++)
            n += s->dirs * sz[w];
    }
    return n;
}

/* Offset of layer l, direction d's recurrent dropout masks in rmasks (lstmc.h): G blocks of
 * (B, Hout) each */
static size_t rmask_offset(const lstmc_seq *s, int l, int d)
{
    return ((size_t)l * s->dirs + d) * gates_of(s->cell) * s->batch * hout_of(s);
}

/* ---- workspaces --------------------------------------------------------------------------
 * reserve, per layer l and direction d (training only):
 *   gates (N, G*H)   activated gates          aux (N, aux*H) the cell's extras (LSTM: c, c_prev)
 *   h_prev (N, Hout) the h each step read     r (N, H) o*tanh(c), only with a projection
 * and per layer l >= 1 its input X_l (N, D*Hout), after dropout.
 * scratch: see scratch_of. Element counts; the int area holds T ints, which fit in T
 * elements of any real type. */
typedef struct {
    size_t gates, aux, hprev, r, per_dir, x_in, per_layer;
} reserve_layout;

static reserve_layout reserve_of(const lstmc_seq *s)
{
    const size_t N = lstmc_seq_rows(s), GH = (size_t)gates_of(s->cell) * s->hidden;
    const size_t H = (size_t)s->hidden, Hout = hout_of(s);
    reserve_layout r;
    r.gates = 0;
    r.aux = r.gates + N * GH;
    r.hprev = r.aux + (size_t)cell_of(s)->aux * N * H;
    r.r = r.hprev + N * Hout;
    r.per_dir = r.r + (s->proj > 0 ? N * H : 0);
    r.x_in = s->dirs * r.per_dir;
    r.per_layer = r.x_in + N * s->dirs * Hout;
    return r;
}

/* offset of layer l's block; layer 0 has no X_l */
static size_t reserve_layer(const lstmc_seq *s, const reserve_layout *r, int l)
{
    return l == 0 ? 0 : s->dirs * r->per_dir + (size_t)(l - 1) * r->per_layer;
}

size_t lstmc_seq_reserve_size(const lstmc_seq *s)
{
    const reserve_layout r = reserve_of(s);
    return reserve_layer(s, &r, s->layers);
}

typedef struct {
    size_t ints, bias_i, bias_h, gh, h, c, step_aux, gx, pack, dir1, ybuf0, ybuf1; /* forward */
    size_t hq, hs, xq, xs;                                                    /* int8 forward */
    size_t hm;                                         /* forward under recurrent dropout */
    size_t bpack, ones, dgates, dgates_h, dgs, dhc, dc, dht, dstep, dhp, dx0, dx1; /* backward */
    size_t dhm, hmask;                                /* backward under recurrent dropout */
    size_t total;
} scratch_layout;

/* Whether an eval-mode bidirectional call may run its two directions at once, one thread
 * each (seq.inc): with OpenMP, one direction's W_hh of at most LSTMC_SPLIT_MAX_WEIGHTS
 * elements, at most LSTMC_SPLIT_MAX_ROWS rows, a step big enough for a team at all
 * (LSTMC_PAR_MIN_STEP_WORK; below it one thread runs both directions, as waking a second costs
 * more) and a second input projection of at most LSTMC_SPLIT_MAX_GATES elements. A property of
 * the shape, not of the thread count, so that the scratch a caller sizes for a shape serves
 * every thread count. */
static int splittable(const lstmc_seq *s, int train)
{
#ifdef _OPENMP
    const long long w_hh = (long long)gates_of(s->cell) * s->hidden * hout_of(s);
    return !train && s->dirs == 2 && w_hh <= LSTMC_SPLIT_MAX_WEIGHTS &&
           s->batch <= LSTMC_SPLIT_MAX_ROWS && w_hh * s->batch >= LSTMC_PAR_MIN_STEP_WORK &&
           lstmc_seq_rows(s) * lstmc_pack_size(s->hidden, 1, gates_of(s->cell)) <=
               LSTMC_SPLIT_MAX_GATES;
#else
    (void)s, (void)train;
    return 0;
#endif
}

/* h, the carried dh and the step's gate gradients are double-buffered: a step writes one
 * buffer while slower threads may still read the other, so one barrier per step suffices.
 * The forward's per-direction buffers (bias_i to pack) are one run; a splittable call has
 * a second such run, dir1 elements on, for the direction the second thread runs. */
/* ---- quantized operands (lstmc_seq_forward_q): int8 (quant.c) or bfloat16 (quant_bf16.c) -- */
/* Bytes of one quantized row of K values: int8 q + 128 rounded up to 4, or bfloat16 pairs */
static int q_row_bytes(int qtype, int K)
{
    return qtype == LSTMC_QT_BF16 ? 2 * lstmc_bf16_row_elems(K) : lstmc_q8_row_bytes(K);
}

static size_t q_pack_bytes(int qtype, int H, int K, int G)
{
    return qtype == LSTMC_QT_BF16 ? lstmc_bf16_pack_bytes(H, K, G) : lstmc_q8_pack_bytes(H, K, G);
}

/* Rows of a (n, K) quantized into q (ldq bytes a row, padded): int8 with their scales, or
 * bfloat16 (no scale) */
static void q_rows(int qtype, uint8_t *q, int ldq, float *scale, const float *a, int lda, int n,
                   int K)
{
    if (qtype == LSTMC_QT_BF16)
        lstmc_bf16_round_rows((uint16_t *)q, ldq / 2, a, lda, n, K);
    else
        lstmc_q8_quantize_rows(q, ldq, scale, a, lda, n, K);
}

/* lstmc_q8_gemm or lstmc_bf16_gemm on rows A of lda bytes (a_scale: int8's row scales), the
 * tiles' AMX configuration kept for the call's next product (forward_team releases it) */
static void q_gemm(int qtype, int kernel, int n, const uint8_t *A, int lda, const float *a_scale,
                   int K, const uint8_t *set, int g0, int g1, int gstep, int bscale, int u0,
                   int u1, float *C, int ldc)
{
    if (qtype == LSTMC_QT_BF16)
        lstmc_bf16_gemm_keep(kernel, n, (const uint16_t *)A, lda / 2, K, set, g0, g1, gstep,
                             bscale, u0, u1, C, ldc);
    else
        lstmc_q8_gemm_keep(kernel, n, A, lda, a_scale, K, set, g0, g1, gstep, bscale, u0, u1, C,
                           ldc);
}

/* Quantized rows of a layer's input: the widest layer's bytes a row */
static int q_input_bytes(const lstmc_seq *s, int qtype)
{
    int most = 0;
    for (int l = 0; l < s->layers; l++) {
        const int b = q_row_bytes(qtype, (int)input_of(s, l));
        most = b > most ? b : most;
    }
    return most;
}

/* The row stride of gh, a step's recurrent product (B, G H): G H, plus 16 elements where G H
 * is a multiple of 512, a row then a whole number of 2 KB (float32) or 4 KB (float64). There
 * every row of a tile's store fell on one L1 set, more lines than its ways: the AMX 32-row
 * bf16 product of K = H = 256 took 12.0 ns a TDPBF16PS storing to rows 4 KB apart, 9.8 ns
 * 64 bytes further apart (C harness of quant_bf16.c; docs/decisions.md#bf16-inference) */
static size_t gh_ld_of(const lstmc_seq *s)
{
    const size_t GH = (size_t)gates_of(s->cell) * s->hidden;
    return GH % 512 ? GH : GH + 16;
}

/* A quantized forward (qtype, else 0) adds, per direction, h quantized (double-buffered,
 * rows of q_row_bytes(Hout)) and its rows' scales, and the layer input quantized, rows and
 * scales; it packs nothing per call. */
static scratch_layout scratch_of(const lstmc_seq *s, int train, int qtype)
{
    const size_t N = lstmc_seq_rows(s), B = (size_t)s->batch;
    const size_t GH = (size_t)gates_of(s->cell) * s->hidden;
    const size_t H = (size_t)s->hidden, Hout = hout_of(s), P = (size_t)s->proj, Y = s->dirs * Hout;
    const size_t inter = s->layers > 1 ? N * Y : 0;   /* a between-layer activation */
    const int c = cell_of(s)->has_c, step_aux = P || two_phase(s);
    const int rd = train && s->recurrent_dropout;
    const size_t G = (size_t)gates_of(s->cell);
    scratch_layout w;
    size_t at = 0;
    /* every buffer on a 64-byte boundary (16 elements on, from a base that the entry points
     * align): rows the tiles load and store whole lines of (docs/decisions.md#bf16-inference) */
#define LINE(at) (((at) + 15) / 16 * 16)
#define TAKE(field, count) (at = LINE(at), w.field = at, at += (count))
    TAKE(ints, (size_t)s->steps);   /* off[t] */
    TAKE(bias_i, GH);
    TAKE(bias_h, GH);
    TAKE(gh, B * gh_ld_of(s));
    TAKE(h, 2 * B * Hout);
    TAKE(c, c ? B * H : 0);
    TAKE(step_aux, step_aux ? B * H : 0);   /* LSTM: o*tanh(c) before W_hr; GRU: r*h */
    TAKE(gx, train ? 0 : N * lstmc_pack_size(s->hidden, 1, gates_of(s->cell)));  /* LSTMC_ZROW */
    /* packed W_hh of the current layer and direction (recur.c) */
    TAKE(pack, s->batch <= LSTMC_PACK_MAX_ROWS && !qtype
                   ? lstmc_pack_size(s->hidden, (int)Hout, gates_of(s->cell)) : 0);
    TAKE(hq, qtype ? 2 * B * (size_t)q_row_bytes(qtype, (int)Hout) / 4 : 0);
    TAKE(hs, qtype ? B : 0);
    at = LINE(at);
    w.dir1 = splittable(s, train) ? at - w.bias_i : 0;   /* the second run, that far on */
    at += w.dir1;
    TAKE(ybuf0, train ? 0 : inter);
    TAKE(ybuf1, train || s->layers < 3 ? 0 : inter);
    TAKE(xq, qtype ? N * (size_t)q_input_bytes(s, qtype) / 4 : 0);
    TAKE(xs, qtype ? N : 0);
    /* h times each gate block's recurrent dropout mask, double-buffered as h is */
    TAKE(hm, rd ? 2 * G * B * Hout : 0);
    /* the backward's packed W_hh^T (the blocks before R, all h columns) */
    TAKE(bpack, train && s->batch <= LSTMC_PACK_MAX_ROWS
                    ? lstmc_pack_size((int)Hout, cell_of(s)->rec_gates * s->hidden, 1)
                    : 0);
    TAKE(ones, train ? N : 0);
    TAKE(dgates, train ? N * GH : 0);
    TAKE(dgates_h, train && cell_of(s)->split ? N * GH : 0);
    TAKE(dgs, train ? 2 * B * GH : 0);
    TAKE(dhc, train ? 2 * B * Hout : 0);
    TAKE(dc, train && c ? B * H : 0);
    TAKE(dht, train ? B * Hout : 0);
    TAKE(dstep, train && step_aux ? B * H : 0);   /* LSTM: grad of o*tanh(c); GRU: of r*h */
    TAKE(dhp, train && P ? N * P : 0);
    TAKE(dx0, train ? inter : 0);
    TAKE(dx1, train && s->layers >= 3 ? inter : 0);
    TAKE(dhm, rd ? B * Hout : 0);       /* one gate block's dgates W_hh, before its mask */
    TAKE(hmask, rd ? N * Hout : 0);     /* h_prev times one block's mask, for its dW_hh */
#undef TAKE
#undef LINE
    w.total = at + 16;                  /* the base's alignment */
    return w;
}

size_t lstmc_seq_scratch_size(const lstmc_seq *s, int train)
{
    return scratch_of(s, train, 0).total;
}

size_t lstmc_seq_scratch_size_q(const lstmc_seq *s, int qtype)
{
    return scratch_of(s, 0, qtype).total;
}

/* ---- quantized weights (lstmc_seq_forward_q) ---------------------------------------------
 * Per layer l and direction d, in the flat buffer's order: W_ih as one gate set of all G
 * blocks with K = I_l, then W_hh likewise with K = Hout (quant.c's or quant_bf16.c's
 * layout); `which` is LSTMC_W_IH or LSTMC_W_HH; past the last layer, the total, in bytes. */
size_t lstmc_seq_qoffset(const lstmc_seq *s, int qtype, int layer, int dir, int which)
{
    const int G = gates_of(s->cell);
    size_t at = 0;
    for (int l = 0; l < s->layers; l++)
        for (int d = 0; d < s->dirs; d++) {
            const size_t ih = q_pack_bytes(qtype, s->hidden, (int)input_of(s, l), G);
            if (l == layer && d == dir)
                return which == LSTMC_W_IH ? at : at + ih;
            at += ih + q_pack_bytes(qtype, s->hidden, (int)hout_of(s), G);
        }
    return at;
}

size_t lstmc_seq_qsize(const lstmc_seq *s, int qtype)
{
    return lstmc_seq_qoffset(s, qtype, s->layers, 0, LSTMC_W_IH);
}

/* Whether a quantized forward runs `s`: the default activations and one recurrent product a
 * step on h (no GRU reset-before) */
static int q_runs(const lstmc_seq *s, int qtype)
{
    return (qtype == LSTMC_QT_INT8 || qtype == LSTMC_QT_BF16) && !two_phase(s) &&
           !options_of(s);
}

/* int8 with h quantized per row and step, each row its own scale (reference
 * activation_quantizer with static_h False): where |h| <= 1 does not hold, RNN-ReLU's h and
 * a projection's W_hr r */
static int q_dynamic_h(const lstmc_seq *s, int qtype)
{
    return qtype == LSTMC_QT_INT8 && (s->proj || s->cell == LSTMC_CELL_RNN_RELU);
}

/* ---- packed weights (lstmc_seq_pack_*) ---------------------------------------------------
 * Per layer l and direction d, in the flat buffer's order: W_ih packed as one set of all G
 * gate blocks with K = I_l (the packed kernel's projection); W_ih's rows in the order of
 * the projection's per-thread panels (LSTMC_ZROW: row G * b + g * U + l is W_ih's row
 * g * H + b + l, zeros past H), the operand of the BLAS projection; then W_hh packed as the
 * driver packs it per call (K = Hout; the blocks that read h, then those that read
 * step_aux). `which` is LSTMC_W_IH, PACKED_IH_ROWS or LSTMC_W_HH; past the last layer, the
 * total. The buffer starts on a 64-byte boundary (a cache line); the kernels' loads are
 * unaligned, so the parts after the first need not start on one. */
#define PACKED_IH_ROWS (-1)
static size_t packed_offset(const lstmc_seq *s, int layer, int dir, int which)
{
    const int G = gates_of(s->cell);
    size_t off = 0;
    for (int l = 0; l < s->layers; l++)
        for (int d = 0; d < s->dirs; d++) {
            const size_t ih = lstmc_pack_size(s->hidden, (int)input_of(s, l), G);
            if (l == layer && d == dir && which == LSTMC_W_IH)
                return off;
            if (l == layer && d == dir && which == PACKED_IH_ROWS)
                return off + ih;
            off += 2 * ih;                          /* the same size: G whole blocks, I_l */
            if (l == layer && d == dir)
                return off;
            off += lstmc_pack_size(s->hidden, (int)hout_of(s), G);
        }
    return off;
}

size_t lstmc_seq_packed_size(const lstmc_seq *s)
{
    if (lstmc_seq_check(s) != LSTMC_OK)
        return 0;
    return packed_offset(s, s->layers, 0, LSTMC_W_IH);
}

int lstmc_seq_packs(int f64)
{
    return lstmc_recur_kernel_for(f64, 1, INT_MAX, 1) != LSTMC_RECUR_BLAS;
}

static int aligned64(const void *p) { return ((uintptr_t)p & 63) == 0; }

/* The first 64-byte boundary at or after p (the scratch areas for per-call packs carry 64
 * bytes of slack for it). */
static void *align64(void *p) { return (void *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

static void step_offsets(const lstmc_seq *s, int *off)
{
    off[0] = 0;
    for (int t = 1; t < s->steps; t++)
        off[t] = off[t - 1] + s->batch_sizes[t - 1];
}

/* This thread's place in its team: 0 of 1 outside any parallel region */
static void team_place(int *tid, int *nt)
{
    *tid = 0, *nt = 1;
#ifdef _OPENMP
    *tid = omp_get_thread_num();
    *nt = omp_get_num_threads();
#endif
}

/* This thread's share [*lo, *hi) of [0, n): contiguous chunks, multiples of `align`. */
static void share(int n, int align, int tid, int nt, int *lo, int *hi)
{
    int chunk = (n + nt - 1) / nt;
    chunk = (chunk + align - 1) / align * align;
    *lo = tid * chunk < n ? tid * chunk : n;
    *hi = *lo + chunk < n ? *lo + chunk : n;
}

/* How one call runs, chosen once by plan_of before its team starts (every thread must split
 * the work the same way); the reasons:
 *   kernel       the recurrent products (recur.c lstmc_recur_kernel_for): up to
 *                LSTMC_PACK_MAX_ROWS rows a packed kernel, which reads a thread's packed W_hh
 *                from L2 for every chunk of rows where sgemm repacks it every step; without
 *                the caller's copy only when the call has steps enough to pay for its pack
 *                (LSTMC_PACK_MIN_STEPS). The backward packs W_hh^T per call the same way.
 *                Packed / BLAS: eval H512 B4 T25 on the copy 0.54, training H512 B16 T25
 *                packing per call 0.79 (ab_builds.py --base . --base-kernel blas)
 *   own_pack     the forward packs W_hh per call into scratch, each thread its own units: a
 *                packed kernel without the caller's copy (weights may change between calls)
 *   proj_kernel  the input projection: with the caller's copy and at most
 *                LSTMC_PACKED_PROJ_MAX_ROWS positions, on a team of one, or in a rows plan
 *                (each thread then projects its own rows), the packed kernel on its W_ih
 *                (sgemm repacks W_ih inside every call), else BLAS. Packed / BLAS: H512 B1 T25
 *                0.93; AVX-512 tiles, one thread, I128 H256 B32 T100 0.96; a rows plan's own
 *                rows, two threads, against sgemm by units: I128 H256 B32 T100 0.93, GRU 0.97,
 *                H128 B64 T50 0.93 (see docs)
 *   team         all of lstmc's threads, unless a step is too small to share
 *                (LSTMC_PAR_MIN_STEP_WORK: a barrier per step costs about a microsecond) or
 *                there are fewer blocks of LSTMC_UNIT_ALIGN units than threads
 *   split        a splittable call (splittable: eval, bidirectional, small W_hh and batch)
 *                without dropout masks (`splits`) on a team of exactly two - planned from two
 *                threads, or two because the units or OpenMP allow no more - runs a
 *                direction a thread, each on its own scratch with no barrier per step (eval
 *                H128 B1 T100, two threads, split / shared 0.72, ab_builds.py
 *                --bidirectional --threads 2)
 *   panels       inference on the caller's copy, units shared by more than one thread: the
 *                input projection in per-thread panels (internal.h LSTMC_ZROW), so that a
 *                thread's pass reads one run of memory; a team of one keeps rows of (G, H),
 *                which its pass reads whole (I256 H256 B32 T150 eval, two threads, panels /
 *                rows 0.95; the pass's share, perf: 14.4 % in rows, 9.1 % in panels)
 *   blas         the call makes BLAS calls, so the BLAS is pinned to one thread meanwhile; a
 *                call on packed weights alone (no W_hr) leaves the BLAS's setting alone (two
 *                calls into OpenBLAS and a critical section fewer per streaming step)
 *   rows         inference on the caller's copy with a team, at least LSTMC_ROWS_SPLIT_MIN
 *                rows a thread and a W_hh that fits a core's L2: the threads share the input
 *                projection by units as usual, then each runs its own rows (batch rows are
 *                independent sequences) over all units for the whole time loop, with no
 *                barrier per step and no h shared between cores (see docs/decisions.md#rows)
 * Figures: new / base, benchmarks/ab_builds.py --in-process, one thread unless said; the
 * commands and the other rows in docs/decisions.md#execution-modes. */
typedef struct team_sync team_sync;
typedef struct {
    int kernel, own_pack, proj_kernel, team, splits, split, panels, rows, blas;
    team_sync *sync;        /* the call's barrier (team_barrier), set by the entry point */
} seq_plan;

static seq_plan plan_of(const lstmc_seq *s, int f64, int train, int packed, int masks,
                        int threads, int qtype, team_sync *sync)
{
    const long work = (long)gates_of(s->cell) * s->hidden * (long)hout_of(s) * s->batch;
    const int units = (s->hidden + LSTMC_UNIT_ALIGN - 1) / LSTMC_UNIT_ALIGN;
    seq_plan p;
    p.kernel = lstmc_recur_kernel_for(f64, s->batch, s->steps, packed);
    p.own_pack = p.kernel != LSTMC_RECUR_BLAS && !packed;
    p.splits = splittable(s, train) && !masks;
    p.team = work >= LSTMC_PAR_MIN_STEP_WORK ? threads : 1;
    p.team = p.splits && threads == 2 ? 2 : p.team < units ? p.team : units;
    p.split = p.splits && p.team == 2;
    p.rows = !train && packed && p.team > 1 && !p.split && !s->proj &&
             s->batch >= LSTMC_ROWS_SPLIT_MIN * p.team &&
             (long)gates_of(s->cell) * s->hidden * hout_of(s) <= LSTMC_ROWS_SPLIT_MAX_WEIGHTS;
    p.proj_kernel =
        packed && (lstmc_seq_rows(s) <= LSTMC_PACKED_PROJ_MAX_ROWS || p.team == 1 || p.rows)
            ? lstmc_recur_kernel_for(f64, 1, s->steps, 1)
            : LSTMC_RECUR_BLAS;
    p.panels = !train && packed && p.team > 1 && !p.split && !p.rows;
    p.blas = p.proj_kernel == LSTMC_RECUR_BLAS || p.kernel == LSTMC_RECUR_BLAS || s->proj;
    if (qtype) {        /* quantized: its own kernels on its own packed copy (any batch), no BLAS */
        p.kernel = p.proj_kernel =
            qtype == LSTMC_QT_BF16 ? lstmc_bf16_kernel_for() : lstmc_q8_kernel_for();
        p.own_pack = 0;
        p.blas = s->proj != 0;          /* W_hr stays float32 */
    }
    p.sync = sync;
    return p;
}

/* The plan for the team OpenMP gave, which may be smaller than planned (a call inside a
 * caller's parallel region without nested parallelism): every thread sees the same count and
 * makes the same change. */
static seq_plan fit_team(seq_plan p, int nt)
{
    if (nt != p.team) {
        p.team = nt;
        p.split = p.splits && nt == 2;
        p.panels = p.panels && nt > 1;
        p.rows = p.rows && nt > 1;
    }
    return p;
}

/* A barrier of the threads that share one direction's units. A split call has none: each
 * thread runs a direction alone, all units, on its own scratch, so no thread reads what the
 * other writes until the layer's closing barrier (a plain one) publishes the layer's
 * output. */
/* The team's barrier, one per call: a thread that arrives spins (pause) for up to
 * BARRIER_SPINS rounds and then yields the core each round until the last one arrives.
 * OpenMP's own barrier spins far less here (libgomp cuts its spin count when a team takes
 * every CPU) and then sleeps in the kernel, so a step whose threads arrive a few
 * microseconds apart paid a futex sleep and wake-up (LSTM H512 B1 T25 eval, two threads:
 * 1.42-1.68 -> 1.20-1.27 ms, scratch timing, median of calls; docs/decisions.md#barrier).
 * Yielding, not sleeping, past the spin budget lets a descheduled mate run on this core.
 * A wait past the spins is timed (what the call lost, for govern) and looks for a mate on
 * this CPU (unstack). */
#define BARRIER_SPINS 2000
#define UNSTACK_MAX 64      /* threads whose CPUs a team notes */
#define UNSTACK_EVERY 256   /* yields between a waiting thread's looks at the CPUs */
static long long clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static long long now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

struct team_sync {
    int arrived, generation;
    int stop;               /* the call's cancel flag as the last thread to arrive saw it */
    const volatile int *cancel;
    long long lost;         /* ns the team lost to other tasks (govern): waits past the
                               spins at barriers; a rows plan's threads' time off their CPUs */
    int cpu[UNSTACK_MAX];   /* the CPU each thread was on when it last waited long (unstack) */
};

/* A call's barrier state, before its team starts: no CPU noted yet */
static team_sync team_sync_of(const volatile int *cancel)
{
    team_sync b = {0, 0, 0, cancel, 0, {0}};
    for (int k = 0; k < UNSTACK_MAX; k++)
        b.cpu[k] = -1;
    return b;
}

#ifdef _OPENMP
/* The CPU this thread runs on, or -1 where that cannot be known */
static inline int this_cpu(void)
{
#ifdef __linux__
    return sched_getcpu();
#else
    return -1;
#endif
}

/* The kernel may wake a team's thread on the CPU of the thread that woke it, or move it
 * there, while another allowed CPU idles (seen on a 2-vCPU KVM guest, most after the team
 * had slept a while): the two then take turns on one core, yielding to each other at every
 * barrier, for as long as the call lasts (LSTM I80 H320 B1 T200 eval, two threads: 10-12 ms
 * instead of 2.2). So a thread that has waited past its spins notes its CPU (only then:
 * no system call on the barrier's fast path), and one that finds a lower-numbered mate noted
 * on its own CPU moves to an allowed CPU that no mate was on: bound to it for a moment, then
 * given its own mask back, so that the kernel may still move it. Only the higher-numbered of
 * two moves (when both did, they chased each other). Not when the user binds OpenMP's
 * threads (OMP_PROC_BIND, GOMP_CPU_AFFINITY). */
static void unstack(team_sync *b, int n, int me)
{
#ifdef __linux__
    const int cpu = this_cpu();
    if (cpu < 0 || n > UNSTACK_MAX || omp_get_proc_bind() != omp_proc_bind_false)
        return;
    __atomic_store_n(&b->cpu[me], cpu, __ATOMIC_RELAXED);
    int stacked = 0;    /* on the CPU of a lower-numbered mate: only one of two moves */
    for (int k = 0; k < me; k++)
        stacked |= __atomic_load_n(&b->cpu[k], __ATOMIC_RELAXED) == cpu;
    cpu_set_t mine, there;
    if (!stacked || sched_getaffinity(0, sizeof mine, &mine))
        return;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        int taken = c == cpu || !CPU_ISSET(c, &mine);
        for (int k = 0; k < n && !taken; k++)
            taken = __atomic_load_n(&b->cpu[k], __ATOMIC_RELAXED) == c;
        if (!taken) {
            CPU_ZERO(&there);
            CPU_SET(c, &there);
            if (sched_setaffinity(0, sizeof there, &there) == 0) {
                sched_setaffinity(0, sizeof mine, &mine);
                __atomic_store_n(&b->cpu[me], c, __ATOMIC_RELAXED);
            }
            return;
        }
    }
#else
    (void)b, (void)n, (void)me;
#endif
}
#endif

/* The cancel flag as one thread sees it now (a thread that waits for nobody: rows, split) */
static inline int cancelled(const seq_plan *p) { return p->sync->cancel && *p->sync->cancel; }

/* Whether the call is cancelled (lstmc_seq.cancel), one answer for the whole team: the last
 * thread to arrive reads the flag for all, so that every thread leaves its time loop after
 * the same step and nobody waits at a barrier the others have left behind. */
static inline int team_barrier(const seq_plan *p)
{
#ifdef _OPENMP
    const int n = omp_get_num_threads();
    if (n > 1) {
        team_sync *b = p->sync;
        const int me = omp_get_thread_num();
        const int generation = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
        if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == n) {
            b->stop = cancelled(p);
            __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&b->generation, generation + 1, __ATOMIC_RELEASE);
            return b->stop;
        }
        long spins = 0, since = 0;
        while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == generation)
            if (++spins < BARRIER_SPINS)
                lstmc_pause();
            else {
                if ((spins - BARRIER_SPINS) % UNSTACK_EVERY == 0) {
                    if (spins == BARRIER_SPINS)
                        since = now_ns();
                    unstack(b, n, me);              /* notes this thread's CPU too */
                }
                sched_yield();
            }
        /* not the first wait (for mates to wake), nor a rows plan's (for its longer rows) */
        if (spins >= BARRIER_SPINS && generation > 0 && !p->rows)
            __atomic_add_fetch(&b->lost, now_ns() - since, __ATOMIC_RELAXED);
        return b->stop;
    }
#endif
    return cancelled(p);
}

/* A thread of a rows plan at its end, from `wall` and `cpu` at its start: adds the time it
 * was off its CPU to what the call lost (govern) */
static void off_cpu(const seq_plan *p, long long wall, long long cpu)
{
    const long long off = (now_ns() - wall) - (clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu);
    if (off > 0)
        __atomic_add_fetch(&p->sync->lost, off, __ATOMIC_RELAXED);
}

/* ---- the contention governor: teams that shrink while cores are taken ------------------
 * A step's barrier waits for the team's slowest thread. When another process (or another
 * library's spinning pool) holds one of the cores, the mate that shares it is descheduled
 * for whole scheduler slices and every step waits for it: LSTM I80 H320 B1 T200 eval beside
 * one busy process took 2.5x its one-thread time on two threads. So each inference call
 * sums what its team lost to other tasks (team_sync.lost): the waits at its barriers past
 * BARRIER_SPINS, after the first (an idle machine's waits end within the spins); in a rows
 * plan, which has no barrier per step and whose end waits for its longer rows, the time its
 * threads were off their CPUs instead (off_cpu; that measure, here on a 2-vCPU guest, also
 * reads 0.1-0.3 ms of a 2 ms call on an idle machine: too coarse for the short calls of the
 * other plans). A call that lost more than half its time and at least GOVERN_MIN_LOST_NS
 * - twice in a row, or once in a call of GOVERN_LONG_NS or more (the host's hiccups, 0.1-0.5
 * ms, can do that much to one short call) - caps the inference calls that follow at one
 * thread fewer. Half is where two threads stop paying: a mate that runs a fraction p of the
 * time makes a 2-thread call take 1 / (2p) of the serial time, and its mate wait 1 - p of
 * it (at 40 %, B4 calls right after a threaded numpy call were capped that ran faster on
 * two threads). After a back-off (GOVERN_MIN_NS) a call tries one thread more: kept if it
 * is not contended, else the back-off doubles (up to GOVERN_MAX_NS), so that tries grow rare
 * while the contention lasts and a passing one (another library's pool spinning down) costs
 * little. Training calls keep their team (governed_threads). The same row beside a busy
 * process: 2 / 1 thread 1.0, against ONNX Runtime's two threads 0.4
 * (benchmarks/bench_contention.py; the table in docs/performance.md, the reasons in
 * docs/decisions.md#contention). Process-wide and heuristic: concurrent calls may race on
 * it, harmlessly (relaxed atomics). */
#define GOVERN_MIN_LOST_NS 1000000LL    /* a contended call lost 1 ms at least */
#define GOVERN_MIN_NS 20000000LL        /* first back-off: 20 ms */
#define GOVERN_STREAK 2                 /* contended calls in a row that shrink the team, */
#define GOVERN_LONG_NS 10000000LL       /* or one of at least 10 ms (more than a hiccup) */
#define GOVERN_MAX_NS 250000000LL       /* longest back-off: 250 ms */
static struct {
    int cap;                /* at most this many threads a call; 0: no cap */
    long long retry_at;     /* when a call may try cap + 1 threads */
    long long backoff;      /* the back-off after the next contended try */
    int streak;             /* contended calls in a row at the whole team */
} governor;

/* The threads an inference call planned for `threads` may use. Training calls keep their
 * team, so that a training run stays bit-reproducible at a given thread count; an inference
 * call keeps the kernels planned for its whole team (fit_team changes how the work is shared,
 * not how an element is summed), so its answer does not change either. */
static int governed_threads(int threads)
{
    const int cap = __atomic_load_n(&governor.cap, __ATOMIC_RELAXED);
    if (cap <= 0 || cap >= threads)
        return threads;
    return now_ns() >= __atomic_load_n(&governor.retry_at, __ATOMIC_RELAXED) ? cap + 1 : cap;
}

int lstmc_thread_cap(void)
{
    const int cap = __atomic_load_n(&governor.cap, __ATOMIC_RELAXED);
    return cap < lstmc_get_num_threads() ? cap : 0;
}

void lstmc_set_thread_cap(int cap)
{
    __atomic_store_n(&governor.streak, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&governor.backoff, GOVERN_MAX_NS, __ATOMIC_RELAXED);
    __atomic_store_n(&governor.retry_at, now_ns() + GOVERN_MAX_NS, __ATOMIC_RELAXED);
    __atomic_store_n(&governor.cap, cap > 0 ? cap : 0, __ATOMIC_RELAXED);
}

/* After a call that ran `team` threads from `start`: contended or not, what follows */
static void govern(int team, long long start, const team_sync *sync)
{
    if (team < 2)
        return;
    const long long now = now_ns(), elapsed = now - start;
    const int cap = __atomic_load_n(&governor.cap, __ATOMIC_RELAXED);
    const int tried = cap > 0 && team > cap;        /* a try of one thread more */
    long long backoff = __atomic_load_n(&governor.backoff, __ATOMIC_RELAXED);
    const long long lost = sync->lost;
    const int contended = lost * 2 > elapsed && lost >= GOVERN_MIN_LOST_NS;
    const int streak = contended ? __atomic_load_n(&governor.streak, __ATOMIC_RELAXED) + 1 : 0;
    __atomic_store_n(&governor.streak, streak, __ATOMIC_RELAXED);
    if (contended && (tried || streak >= GOVERN_STREAK || elapsed >= GOVERN_LONG_NS)) {
        backoff = !tried || 2 * backoff < GOVERN_MIN_NS ? GOVERN_MIN_NS
                  : 2 * backoff < GOVERN_MAX_NS         ? 2 * backoff
                                                        : GOVERN_MAX_NS;
        __atomic_store_n(&governor.backoff, backoff, __ATOMIC_RELAXED);
        __atomic_store_n(&governor.retry_at, now + backoff, __ATOMIC_RELAXED);
        __atomic_store_n(&governor.cap, team - 1, __ATOMIC_RELAXED);
    } else if (tried) {
        __atomic_store_n(&governor.backoff, backoff / 2, __ATOMIC_RELAXED);
        __atomic_store_n(&governor.cap, team, __ATOMIC_RELAXED);
    }
}

/* The threads sharing a direction's units meet (and learn whether the call is cancelled);
 * a split call's threads run alone and each reads the flag itself */
static inline int sync_units(const seq_plan *p)
{
    return p->split ? cancelled(p) : team_barrier(p);
}


/* Threads for packing: each packs its own units, no synchronisation; small layers alone. */
static int pack_team_size(const lstmc_seq *s)
{
    const int units = (s->hidden + LSTMC_UNIT_ALIGN - 1) / LSTMC_UNIT_ALIGN;
    const int nt = (long)gates_of(s->cell) * s->hidden * (long)(s->input + hout_of(s)) >=
                           LSTMC_PAR_MIN_STEP_WORK
                       ? lstmc_get_num_threads()
                       : 1;
    return nt < units ? nt : units;
}

/* ---- the time loops, once per dtype ------------------------------------------------------ */
#include "seq.inc"
#define LSTMC_F64
#include "seq.inc"
#undef LSTMC_F64
