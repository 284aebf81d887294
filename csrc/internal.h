/*
 * internal.h - what the C files share and the Python side never sees: the OpenMP macros,
 * the row-major GEMM helpers over the BLAS pointer table, and the per-step contexts that the
 * sequence driver (seq.c) hands to the cell kernels (lstm.c).
 */
#ifndef LSTMC_INTERNAL_H
#define LSTMC_INTERNAL_H

#include "lstmc.h"

#ifdef _OPENMP
#include <omp.h>
#define LSTMC_STR(x) #x
#define LSTMC_OMP(x) _Pragma(LSTMC_STR(omp x))
/* Runs the statement `body` on a team of `team` threads. A team of one runs it directly, in no
 * parallel region: its barriers are then orphaned and return at once, where in a region of
 * one thread each is a futex system call (0.3 us a barrier, a sixth of a one-thread
 * LSTM.step at H8: docs/decisions.md#team). omp_get_thread_num / omp_get_num_threads say 0
 * and 1 there. Not so inside a caller's own parallel region (a C program running sequences
 * under `omp parallel`): there they would be the caller's, and orphaned barriers would bind
 * to the caller's team, so a call from within a region always opens its own, nested, team
 * (tests/test_build.py). */
#define LSTMC_TEAM(team, body)                                                                 \
    do {                                                                                       \
        if ((team) > 1 || omp_in_parallel()) {                                                 \
            LSTMC_OMP(parallel num_threads(team))                                              \
            body;                                                                              \
        } else {                                                                               \
            body;                                                                              \
        }                                                                                      \
    } while (0)
#else
#define LSTMC_OMP(x)
#define LSTMC_TEAM(team, body)                                                                 \
    do {                                                                                       \
        (void)(team);                                                                          \
        body;                                                                                  \
    } while (0)
#endif

/* Cell kernels are compiled three times where the compiler can dispatch at run time: for
 * x86-64-v4 (AVX-512: 16 floats a vector), for x86-64-v3 (AVX2 + FMA: 8) and for the baseline
 * (SSE2), and the loader picks one by the CPU (GCC target_clones, an ifunc). A portable build
 * so still runs the wide kernels (LSTM I256 H256 B32 T150 forward, one thread: 254 -> 148 ms
 * with v3; I128 H256 B32 T100 forward on an AVX-512 CPU, v4 / v3 0.94 at one thread, 0.90 at
 * two, benchmarks/ab_builds.py; docs/decisions.md#dispatch). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(LSTMC_NO_DISPATCH)
#ifdef LSTMC_MAX_ISA_V3 /* a build capped at AVX2 (setup.py LSTMC_MAX_ISA) */
#define LSTMC_DISPATCH __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LSTMC_DISPATCH                                                                         \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#else
#define LSTMC_DISPATCH
#endif

/* The row helpers of the cell kernels: they must be inlined into each clone of their caller
 * to run its instruction set; GCC 12 kept one out of line, compiled for the baseline (LSTM
 * H256 B32 T150 forward 157 ms out of line, 121-126 inlined; docs/decisions.md#dispatch). */
#if defined(__GNUC__)
#define LSTMC_ROW_INLINE __attribute__((always_inline)) inline
#else
#define LSTMC_ROW_INLINE inline
#endif

/* Keeps a function out of its callers: training-only paths beside a hot loop */
#if defined(__GNUC__)
#define LSTMC_NOINLINE __attribute__((noinline))
#else
#define LSTMC_NOINLINE
#endif

/* A spin-wait hint to the CPU (x86 PAUSE), nothing elsewhere */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define lstmc_pause() __builtin_ia32_pause()
#else
#define lstmc_pause() ((void)0)
#endif

/* Units of a thread's share are multiples of this (one AVX-512 vector of floats), so shares
 * start on vector boundaries of every gate block. */
#define LSTMC_UNIT_ALIGN 16

/* Below this much recurrent work per step (rows x gate columns x h width) one thread is
 * faster: a barrier per step costs about a microsecond (docs/decisions.md#team). */
#define LSTMC_PAR_MIN_STEP_WORK 65536

/* An inference call on a packed copy with at least this many batch rows a thread, whose W_hh
 * (one direction) has at most this many elements (1 MB in float32: each thread reads all of
 * it every step, from its own L2), runs each thread's own rows through the time loop (seq.c
 * plan_of, rows). LSTM I128 H256 B32 T100 eval, two threads, rows / units shared 0.84; H512
 * B16 T25 (4 MB) 1.07 (benchmarks/ab_builds.py --base HEAD; docs/decisions.md#rows). */
#define LSTMC_ROWS_SPLIT_MIN 8
#define LSTMC_ROWS_SPLIT_MAX_WEIGHTS 262144

/* An eval-mode bidirectional call of at most this many rows whose W_hh (one direction) has
 * at most this many elements runs its two directions at once, one thread each, on a team of
 * two (seq.c splittable, plan_of), instead of sharing the units of one direction at a time
 * with a barrier or two every step: each thread keeps a whole direction's W_hh (1 MB at most,
 * in float32) and waits for nobody. LSTM H128 B1 T100, eval, two threads, at once / shared
 * 0.72 (benchmarks/ab_builds.py --in-process --bidirectional --H 128 --B 1 --T 100
 * --threads 2; docs/decisions.md#split-directions). */
#define LSTMC_SPLIT_MAX_ROWS 64
#define LSTMC_SPLIT_MAX_WEIGHTS 262144
/* The split's second run of scratch holds a second input projection, N x G x H (padded to
 * whole blocks): at most this many elements (16 MB in float32), so that no call's scratch
 * doubles past that (docs/decisions.md#split-directions). */
#define LSTMC_SPLIT_MAX_GATES ((size_t)1 << 22)

/* Row-major C = alpha * op(A) op(B) + beta * C, with op(X) = X or X^T (trans flags 0 / 1).
 * A is (M, K) after op, B is (K, N) after op; lda/ldb/ldc are row strides. M or N of 0 is a
 * no-op; K of 0 scales C by beta. */
void lstmc_gemm_f32(int transa, int transb, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *B, int ldb, float beta, float *C, int ldc);
void lstmc_gemm_f64(int transa, int transb, int M, int N, int K, double alpha, const double *A,
                    int lda, const double *B, int ldb, double beta, double *C, int ldc);
int lstmc_blas_ready(void);

/* Packed row of running row j at processing step t (see lstmc.h): the forward direction
 * reads time t, the reverse direction row j's own valid prefix backwards. */
static inline size_t lstmc_row(const int *off, const int *lengths, int t, int reverse, int j)
{
    return (size_t)off[reverse ? lengths[j] - 1 - t : t] + (size_t)j;
}

/* The per-step context the driver hands a cell kernel, one per dtype (the same fields). A
 * kernel works on the running rows [0, n) and on one thread's units [u0, u1) only; all of a
 * unit's gates belong to the thread that owns the unit, so kernels need no synchronisation.
 * Each cell file says what it keeps in aux[0] and aux[1]. */
typedef struct {
    int cell, n, H, u0, u1;
    const int *off, *lengths; /* with t and reverse: lstmc_row() gives a row's position */
    int t, reverse;
    float *gates;           /* (N, G*H) input projection, or this thread's panel of it
                               (LSTMC_ZROW); cells may overwrite it with the activated gates,
                               which a training forward keeps here */
    const float *gh;        /* (B, G*H) recurrent projection of this step */
    const float *bias_i;    /* (G*H) b_ih (zeros without bias) */
    const float *bias_h;    /* (G*H) b_hh (zeros without bias) */
    const float *hp;        /* (B, H) h before the step */
    float *h;               /* (B, H) h after the step (LSTM: o * tanh(c), before W_hr) */
    float *c;               /* (B, H) LSTM cell state, updated in place */
    float *step_aux;        /* (B, H) a cell's between-phase buffer (GRU reset-before: r*h) */
    float *aux[2];          /* (N, H) each: what a training forward saves, or NULL */
    int panel;              /* gates is this thread's panel (LSTMC_ZROW): inference */
    int gh_ld;              /* gh's row stride (seq.c gh_ld_of: G*H, or padded past it) */
    const lstmc_cell_options *opts;   /* NULL: the default cell; else the general step */
    const float *peep;      /* (3, H) LSTM peepholes p_i, p_f, p_o, or NULL */
    float *dpeep;           /* (3, H) backward: their gradient, accumulated, or NULL */
    const float *hp_n;      /* (B, H) GRU reset-before under recurrent dropout: h times the n
                               block's mask, what r multiplies; or NULL (hp) */
    const float *rmask_n;   /* (B, H) backward: that mask, or NULL */
    /* backward only */
    const float *hprev;     /* (N, H) h before each step, as saved by the forward */
    float *dgates;          /* (N, G*H) gradient of the input-side pre-activations */
    float *dgates_h;        /* (N, G*H) of the recurrent-side ones (== dgates unless GRU) */
    float *dgates_step;     /* (B, G*H) this step's recurrent-side rows, for the GEMM */
    const float *dh;        /* (B, H) gradient of h (LSTM: of o * tanh(c)) */
    float *dc;              /* (B, H) LSTM: gradient of c, carried in place */
    float *dh_direct;       /* (B, H) GRU: the part of dh_prev that skips W_hh */
    const float *dstep_aux; /* (B, H) GRU reset-before: gradient of r*h */
} lstmc_step_f32;

/* lstmc_step_f32 in double: the same fields in the same order */
typedef struct {
    int cell, n, H, u0, u1;
    const int *off, *lengths;
    int t, reverse;
    double *gates;
    const double *gh, *bias_i, *bias_h, *hp;
    double *h, *c, *step_aux, *aux[2];
    int panel, gh_ld;
    const lstmc_cell_options *opts;
    const double *peep;
    double *dpeep;
    const double *hp_n, *rmask_n;
    const double *hprev;
    double *dgates, *dgates_h, *dgates_step;
    const double *dh;
    double *dc, *dh_direct;
    const double *dstep_aux;
} lstmc_step_f64;

/* The layout of the input projection (st->gates), G gate blocks of H units per position.
 * Training keeps PyTorch's order, rows of (G, H): gate g of unit u at g * H + u, as the
 * weight gradients read it, and so does a team of one thread. An inference call on more
 * threads with the caller's packed copy gives each thread a panel of its own, (N, G * w) for
 * its units [u0, u1) (w: u1 - u0 rounded up to whole blocks of U = LSTMC_PACK_UNITS; the
 * panels lie in the order of the threads' units), its rows blocked by units: gate g of unit
 * u of the block starting at b at G * (b - u0) + g * U + (u - b); st->gates is then the
 * thread's panel, and the kernels take it block by block. A thread so reads one run of
 * memory, which the hardware prefetchers follow: its units of rows of (G, H) are G pieces of
 * each row, and they did not (the pass's share of an LSTM I256 H256 B32 T150 forward at two
 * threads, perf: rows 14.4-14.7 %, panels 9.1-9.7 %; docs/decisions.md#panels). */
#define LSTMC_ZROW(st, G)                                                                       \
    ((st)->panel ? lstmc_pack_size((st)->u1 - (st)->u0, 1, (G)) : (size_t)(G) * (size_t)(st)->H)

/* Cell kernels (lstm.c, gru.c, rnn.c). Two-phase cells (GRU reset-before) run phase 0, then
 * the driver's GEMM of the remaining gate blocks, then phase 1. */
void lstmc_lstm_step_forward_f32(const lstmc_step_f32 *st);
void lstmc_lstm_step_forward_f64(const lstmc_step_f64 *st);
void lstmc_lstm_step_backward_f32(const lstmc_step_f32 *st);
void lstmc_lstm_step_backward_f64(const lstmc_step_f64 *st);
void lstmc_gru_step_forward_f32(const lstmc_step_f32 *st, int phase);
void lstmc_gru_step_forward_f64(const lstmc_step_f64 *st, int phase);
void lstmc_gru_step_backward_f32(const lstmc_step_f32 *st, int phase);
void lstmc_gru_step_backward_f64(const lstmc_step_f64 *st, int phase);
void lstmc_rnn_step_forward_f32(const lstmc_step_f32 *st);
void lstmc_rnn_step_forward_f64(const lstmc_step_f64 *st);
void lstmc_rnn_step_backward_f32(const lstmc_step_f32 *st);
void lstmc_rnn_step_backward_f64(const lstmc_step_f64 *st);
/* The general steps, for calls with options (lstmc.h lstmc_cell_options): the same contract
 * as the default kernels, one activation call per gate value */
void lstmc_lstm_step_forward_options_f32(const lstmc_step_f32 *st);
void lstmc_lstm_step_forward_options_f64(const lstmc_step_f64 *st);
void lstmc_lstm_step_backward_options_f32(const lstmc_step_f32 *st);
void lstmc_lstm_step_backward_options_f64(const lstmc_step_f64 *st);
void lstmc_gru_step_forward_options_f32(const lstmc_step_f32 *st, int phase);
void lstmc_gru_step_forward_options_f64(const lstmc_step_f64 *st, int phase);
void lstmc_rnn_step_forward_options_f32(const lstmc_step_f32 *st);
void lstmc_rnn_step_forward_options_f64(const lstmc_step_f64 *st);

/* The packed recurrent kernels (recur.c). Units per packed block: a strip of one AVX-512 (two
 * AVX2) vectors of floats per k; thread shares (multiples of LSTMC_UNIT_ALIGN) so start on block
 * boundaries. */
#define LSTMC_PACK_UNITS 16
/* a thread's zero padding past its last unit must not reach a block another thread packs */
typedef char lstmc_shares_are_whole_blocks[LSTMC_UNIT_ALIGN % LSTMC_PACK_UNITS == 0 ? 1 : -1];
/* The packed kernels run the per-step products (forward gh = h W_hh^T, backward dh_prev =
 * dgates W_hh) up to this many batch rows; calls with more keep BLAS (and need no packed
 * copies in scratch). The kernel reads its packed weights from L2 for every chunk of rows,
 * where sgemm repacks the thread's whole W_hh slice every step (LSTM I = H = 512, T = 25,
 * training step, one thread, B16: BLAS 128 ms, packed 90.5; docs/decisions.md#recurrent-kernel). */
#define LSTMC_PACK_MAX_ROWS 128
/* The automatic choice packs only calls of at least this many steps (one batch row: the
 * _ONE_ROW figure): a pack costs at best 2-3 steps of the packed product at B=1, which saves
 * 40-50 % a step at 2-8 rows but only 5-10 % at one (LSTM H512 B4 T25 forward, one thread,
 * BLAS / packed 51.1 / 39.3 ms; docs/decisions.md#per-call-pack). */
#define LSTMC_PACK_MIN_STEPS 8
#define LSTMC_PACK_MIN_STEPS_ONE_ROW 64

size_t lstmc_pack_size(int H, int K, int G);   /* elements of a packed W_hh, all G blocks */
/* With a packed copy, input projections of at most this many positions (T x B) run on the
 * packed kernel, each thread its own units (no repack of W_ih inside sgemm; I = H = 512, one
 * thread, 100 rows: packed 84 GFLOP/s, sgemm 66-69; docs/decisions.md#packed-projection);
 * a team of one runs it at every size (with the AVX-512 tiles, LSTM I128 H256 B32 T100 eval
 * 0.96 of sgemm's time, which also zeroes its output first; at two threads 1.01). */
#define LSTMC_PACKED_PROJ_MAX_ROWS 1024
int lstmc_avx2_supported(void);
int lstmc_avx512_supported(void);   /* AVX-512F (and AVX2/FMA) */
/* The kernel lets this process use AMX's tile data (quant.c; asked once, on Linux) */
int lstmc_amx_permitted(void);
/* AMX's tile configuration of quant.c's and quant_bf16.c's products: tmm0-5 (sums, A) M rows
 * of 64 bytes, tmm6-7 (B) 16 rows of 64 bytes, loaded only where this thread's differs. A
 * product keeps it for the next (a sequence's steps); lstmc_amx_release returns the tiles to
 * their initial state and forgets it, which every call does before it returns (other code on
 * the thread may load its own configuration between calls): lstmc_q8_gemm and
 * lstmc_bf16_gemm after their product, a sequence call on each thread at its end. Once a
 * call instead of once a product: bf16 LSTM H64 B1 T50 0.90 of the time, H128 B4 0.96
 * (benchmarks/ab_builds.py --in-process --quantize bf16) */
void lstmc_amx_configure(int M);
void lstmc_amx_release(void);
/* lstmc_q8_gemm and lstmc_bf16_gemm without the release: within a sequence call */
void lstmc_q8_gemm_keep(int kernel, int n, const uint8_t *A, int lda, const float *a_scale,
                        int K, const uint8_t *set, int g0, int g1, int gstep, int bscale, int u0,
                        int u1, float *C, int ldc);
void lstmc_bf16_gemm_keep(int kernel, int n, const uint16_t *A, int lda, int K,
                          const uint8_t *set, int g0, int g1, int gstep, int bscale, int u0,
                          int u1, float *C, int ldc);

/* The quantized products' register tiles (quant.c, quant_bf16.c). A tile takes R rows of A
 * (lda bytes a row; int8 rows with their scales a_scale, bf16 rows with a_scale unused) over
 * `steps` 4-byte steps of k (int8: 4 k, bf16: a pair) against S strips, and writes strip s to
 * C + dst[s] (row stride ldc), its first cnt[s] units. */
typedef struct {
    const uint8_t *strip[8];
    int dst[8], cnt[8];
} lstmc_qtile_args;
typedef void (*lstmc_qtile_fn)(int steps, const uint8_t *A, int lda, const float *a_scale,
                               const lstmc_qtile_args *t, float *C, int ldc);
typedef struct {
    int rows;                   /* the most rows a tile takes */
    int strips[7];              /* strips of the tile of r rows */
    lstmc_qtile_fn run[7];
} lstmc_qtiling;
/* The tiles' walk over a gate set of strips of strip_bytes each (a_scale may be NULL) */
void lstmc_qgemm_tiles(const lstmc_qtiling *tl, size_t strip_bytes, int steps, int n,
                       const uint8_t *A, int lda, const float *a_scale, const uint8_t *set,
                       int g0, int g1, int gstep, int bscale, int u0, int u1, float *C, int ldc);
/* kernel is one of the SIMD packed kernels (whose f32 packing transposes in registers) */
#define LSTMC_RECUR_SIMD(kernel) ((kernel) >= LSTMC_RECUR_PACKED_AVX2)
/* The gate set [g0, g1) of a packed W_hh of gate blocks of H rows and K columns. The packed
 * GEMMs compute C[j, col] (+)= sum_k A[j, k] W[g*H + u, k] (accumulate: add to C) for
 * rows j < n, blocks [g0, g1), units [u0, u1), where unit u = b + l of the block starting at
 * b has col = g * gstep + (b - u0) * bscale + l: C points at unit u0 of gate 0. PyTorch's
 * order with gstep = H, bscale = 1; a panel (LSTMC_ZROW) with gstep = LSTMC_PACK_UNITS,
 * bscale = G. lstmc_pack_columns packs W^T instead, as one gate block: columns [u0, u1) of a
 * (K, ldw) row-major W (for products with W itself, as the backward's dh_prev = dgates W_hh),
 * panel[k][l] = W[k][b0 + l]. */
#define lstmc_pack_set(pack, H, K, g0) ((pack) + lstmc_pack_size(H, K, 1) * (size_t)(g0))
/* Strip v (gate g0 + v) of the block of units starting at b0 in a set of Wg gate blocks:
 * (K, LSTMC_PACK_UNITS), contiguous down K. */
#define lstmc_pack_strip(set, b0, v, Wg, K)                                                   \
    ((set) + ((size_t)(b0) * (Wg) + (size_t)(v) * LSTMC_PACK_UNITS) * (size_t)(K))
/* recur.inc: packing (lstmc_pack_gates: gate blocks of W; lstmc_pack_columns: columns of W
 * as one block of W^T) and the portable packed kernel */
void lstmc_pack_gates_f32(float *set, const float *W, int H, int K, int g0, int g1, int u0,
                          int u1);
void lstmc_pack_gates_f64(double *set, const double *W, int H, int K, int g0, int g1, int u0,
                          int u1);
void lstmc_pack_columns_f32(float *set, const float *W, int ldw, int K, int u0, int u1);
void lstmc_pack_columns_f64(double *set, const double *W, int ldw, int K, int u0, int u1);
void lstmc_packed_gemm_c_f32(int n, const float *A, int lda, int K, const float *set, int g0,
                             int g1, int gstep, int bscale, int u0, int u1, float *C, int ldc,
                             int accumulate, int reverse);
void lstmc_packed_gemm_c_f64(int n, const double *A, int lda, int K, const double *set, int g0,
                             int g1, int gstep, int bscale, int u0, int u1, double *C, int ldc,
                             int accumulate, int reverse);
/* The SIMD kernels, float32: `kernel` one of LSTMC_RECUR_PACKED_AVX2 / _AVX512 / _WIDE_AVX2
 * as lstmc_recur_kernel_for chose it (the CPU has what it needs; the portable kernel where
 * the compiler cannot build them). Same arguments and result as lstmc_packed_gemm_c_f32. The
 * packing is the same for all and transposes with AVX2. */
void lstmc_pack_gates_avx2_f32(float *set, const float *W, int H, int K, int g0, int g1, int u0,
                               int u1);
void lstmc_packed_gemm_simd_f32(int kernel, int n, const float *A, int lda, int K,
                                const float *set, int g0, int g1, int gstep, int bscale, int u0,
                                int u1, float *C, int ldc, int accumulate, int reverse);

/* Pins the BLAS to one thread while lstmc runs (its own threads share the work), and
 * restores the caller's setting when the last concurrent call leaves. */
void lstmc_blas_enter(void);
void lstmc_blas_leave(void);

#endif /* LSTMC_INTERNAL_H */
