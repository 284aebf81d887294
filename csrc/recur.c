/*
 * recur.c - the per-step products at batch <= 128 (and small input projections), on weights
 * packed once per call or once per eval-mode module.
 *
 * Per step a thread computes gh[j, g*H + u] = sum_k h[j, k] W_hh[g*H + u, k] for the running
 * rows j, the gate blocks g of a set [g0, g1) and its own units [u0, u1). With BLAS that is a
 * gemv per row and gate block, or an sgemm that repacks the thread's slice on every call.
 * Here the slice is packed once, by the thread that owns it, into the order the kernel reads,
 * and every element loaded serves up to three rows at a time (the next rows find the panel in
 * L2). The backward's dh_prev = dgates W_hh is the same product on W_hh^T packed as one gate
 * block (lstmc_pack_columns).
 *
 * Packed layout of a gate set [g0, g1) (Wg = g1 - g0 blocks), K = width of the product:
 * per block of U = LSTMC_PACK_UNITS units b0 .. b0+U-1 (zeros past H), a panel
 *     panel[k][v][l] = W[(g0 + v) * H + b0 + l][k]      (K, Wg, U)
 * at set + b0 * K * Wg: one 8-float vector holds U units of one gate at one k, so the kernel
 * broadcasts h[j, k] and multiplies-adds it into Wg accumulators per row and block. Sets of a
 * call share K; set g0 starts at pack + roundup(H, U) * K * g0 (lstmc_pack_set). Where a
 * block's panel sits depends on its units only, not on which thread packs it, so a copy
 * packed once (lstmc_seq_pack_*, for inference) serves every thread count. Without such a
 * copy, the sequence driver packs W_hh per call (weights may change between any two).
 */
#include <string.h>
#include "internal.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(LSTMC_NO_DISPATCH)
#define LSTMC_HAVE_AVX2_KERNEL 1
#include <immintrin.h>
#else
#define LSTMC_HAVE_AVX2_KERNEL 0
#endif

static int recur_kernel = LSTMC_RECUR_AUTO;

void lstmc_set_recurrent_kernel(int kernel)
{
    recur_kernel = kernel >= LSTMC_RECUR_AUTO && kernel <= LSTMC_RECUR_PACKED_AVX2
                       ? kernel
                       : LSTMC_RECUR_AUTO;
}

int lstmc_get_recurrent_kernel(void) { return recur_kernel; }

int lstmc_avx2_supported(void)
{
#if LSTMC_HAVE_AVX2_KERNEL
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

size_t lstmc_pack_size(int H, int K, int G)
{
    const size_t U = LSTMC_PACK_UNITS;
    return ((size_t)H + U - 1) / U * U * (size_t)K * (size_t)G;
}

int lstmc_recur_kernel_for(int f64, int batch, int steps, int prepacked)
{
    if (batch > LSTMC_PACK_MAX_ROWS || recur_kernel == LSTMC_RECUR_BLAS)
        return LSTMC_RECUR_BLAS;
    if (recur_kernel == LSTMC_RECUR_PACKED_C || (f64 && recur_kernel != LSTMC_RECUR_AUTO))
        return LSTMC_RECUR_PACKED_C;
    if (recur_kernel == LSTMC_RECUR_PACKED_AVX2)
        return lstmc_avx2_supported() ? LSTMC_RECUR_PACKED_AVX2 : LSTMC_RECUR_PACKED_C;
    /* automatic: float32 with the AVX2 kernel, when the packing is amortised */
    if (f64 || !lstmc_avx2_supported() ||
        (!prepacked &&
         steps < (batch > 1 ? LSTMC_PACK_MIN_STEPS : LSTMC_PACK_MIN_STEPS_ONE_ROW)))
        return LSTMC_RECUR_BLAS;
    return LSTMC_RECUR_PACKED_AVX2;
}

#if LSTMC_HAVE_AVX2_KERNEL
/* One register tile: R rows x NC packed columns (8 units of one gate each, at col[c], k-stride
 * ks) over all of K, stored straight to C: column c goes to C + dst[c] (row stride ldc), its
 * first cnt[c] units (8 for a whole block, fewer in the last one, 0 for a column that only
 * pads the tile). R and NC are constants of each instance, so the accumulators live in
 * registers, given full unrolling (a generic version with the tile shape as arguments, even
 * inlined with literals, kept them on the stack: LSTM H512 B4 1 thread 54 ms vs BLAS 41;
 * without the unroll pragmas GCC 12 stored the 4 x 2 tile every k). Tiles have 8 or 12
 * accumulators (an FMA has 4-5 cycles of latency, two issue per cycle) plus the NC loaded
 * columns and one broadcast at a time, within the 16 ymm registers. Broadcasting row by row,
 * each just before its FMAs, instead of all R first: 3 x 4 tiles at I = H = 512, best of 3
 * runs of 3000 calls, us (all first / row by row): 16 rows 438 / 397, 25 rows 698 / 608
 * (86 GFLOP/s against the 91 of an FMA-only loop on this machine), 64 rows 1844 / 1542, 100
 * rows 2847 / 2485; 4 rows (2 x 6 tiles) 130 / 133. */
#define UNROLL _Pragma("GCC unroll 16")
static const int32_t lane_mask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
#define DEFINE_TILE(R, NC)                                                                     \
    __attribute__((target("avx2,fma"))) static void tile_##R##_##NC(                          \
        int K, const float *A, int lda, const float *const *col, size_t ks, float *C, int ldc, \
        const int *dst, const int *cnt, int accumulate)                                        \
    {                                                                                          \
        __m256 acc[R][NC];                                                                     \
        const float *p[NC];                                                                    \
        UNROLL for (int c = 0; c < NC; c++)                                                    \
            p[c] = col[c];                                                                     \
        UNROLL for (int r = 0; r < R; r++)                                                     \
            UNROLL for (int c = 0; c < NC; c++)                                                \
                acc[r][c] = _mm256_setzero_ps();                                               \
        for (int k = 0; k < K; k++) {                                                          \
            __m256 x[NC];                                                                      \
            UNROLL for (int c = 0; c < NC; c++)                                                \
                x[c] = _mm256_loadu_ps(p[c] + (size_t)k * ks);                                 \
            UNROLL for (int r = 0; r < R; r++) {                                               \
                const __m256 a = _mm256_broadcast_ss(A + (size_t)r * lda + k);                 \
                UNROLL for (int c = 0; c < NC; c++)                                            \
                    acc[r][c] = _mm256_fmadd_ps(a, x[c], acc[r][c]);                           \
            }                                                                                  \
        }                                                                                      \
        UNROLL for (int c = 0; c < NC; c++) {                                                  \
            const __m256i m = _mm256_loadu_si256((const __m256i *)(lane_mask + 8 - cnt[c]));   \
            UNROLL for (int r = 0; r < R; r++) {                                               \
                float *to = C + (size_t)r * ldc + dst[c];                                      \
                if (cnt[c] == 8)                                                               \
                    _mm256_storeu_ps(to, accumulate ? _mm256_add_ps(_mm256_loadu_ps(to),       \
                                                                    acc[r][c])                 \
                                                    : acc[r][c]);                              \
                else if (cnt[c] > 0)                                                           \
                    _mm256_maskstore_ps(to, m, accumulate ? _mm256_add_ps(                     \
                                                                _mm256_maskload_ps(to, m),     \
                                                                acc[r][c])                     \
                                                          : acc[r][c]);                        \
            }                                                                                  \
        }                                                                                      \
    }
DEFINE_TILE(1, 8)
DEFINE_TILE(1, 12)
DEFINE_TILE(2, 4)
DEFINE_TILE(2, 6)
DEFINE_TILE(3, 4)
DEFINE_TILE(4, 3)
#undef DEFINE_TILE
#undef UNROLL
#define GROUP_COLS 12   /* columns a group of tiles shares: 3 LSTM or 4 GRU panels */
#define LSTMC_L3_PANELS_MAX_BYTES ((size_t)4 << 20)   /* see packed_gemm_avx2 */
#define LSTMC_STREAM_MAX_K 2048   /* 8 columns of K floats: at most 512 KB, L2 of one core */

/* C[R rows, columns q0 .. q0+NC-1 of the thread's packed columns] (R x NC one of the tiles
 * above). Columns are the thread's packed columns in order (block by block, gates v within
 * a block); a tile running out of columns repeats its last one (computed, not stored). */
static void tile_run(int R, int NC, int q0, int ncols, int K, const float *A, int lda,
                     const float *set, int Wg, int g0, int H, int u0, int u1, float *C, int ldc,
                     int acc)
{
    const int U = LSTMC_PACK_UNITS;
    const size_t ks = (size_t)Wg * U;
    const float *col[GROUP_COLS];
    int dst[GROUP_COLS], cnt[GROUP_COLS];
    for (int c = 0; c < NC; c++) {
        const int q = q0 + c < ncols ? q0 + c : ncols - 1;
        const int u = u0 + q / Wg * U, g = g0 + q % Wg;
        col[c] = set + (size_t)u * K * Wg + (size_t)(q % Wg) * U;
        dst[c] = g * H + u;
        cnt[c] = q0 + c < ncols ? (u1 - u < U ? u1 - u : U) : 0;
    }
    switch (R * 100 + NC) {
    case 108: tile_1_8(K, A, lda, col, ks, C, ldc, dst, cnt, acc); break;
    case 112: tile_1_12(K, A, lda, col, ks, C, ldc, dst, cnt, acc); break;
    case 204: tile_2_4(K, A, lda, col, ks, C, ldc, dst, cnt, acc); break;
    case 206: tile_2_6(K, A, lda, col, ks, C, ldc, dst, cnt, acc); break;
    case 403: tile_4_3(K, A, lda, col, ks, C, ldc, dst, cnt, acc); break;
    case 304: tile_3_4(K, A, lda, col, ks, C, ldc, dst, cnt, acc); break;
    default: break;   /* no other shape is asked for (a new one without its case: no output) */
    }
}

/* One row alone streams all columns 8 at a time (two LSTM panels, 8 independent
 * accumulators). More rows go through groups of 12 columns (three LSTM panels: 192 KB at
 * K = 512, kept in L2 while the rows pass) in chunks of 3 rows (3 x 4 tiles, 12
 * accumulators); 2 rows and the remainders take 2 x 6 and 1 x 12 tiles, four rows (alone
 * or a last 4 after threes) one 4 x 3 pass (the group is in L2 then: 7 rows 187 -> 167 us,
 * 16 rows 392 -> 372 us; H512, best of 3 x 3000). For four rows alone that pass needs the
 * thread's panels to stay in L3 between steps (at most LSTMC_L3_PANELS_MAX_BYTES); else they
 * take 2 + 2 rows of 2 x 6 tiles where they do not stream (below). One thread, 4 rows, mean
 * of 1000-1500 calls, four runs each, us (2 + 2 / 4 x 3):
 * H256 53-57 / 40-42; H512 (4 MB of panels) 173-204 / 147-166; 8 MB (H512 K1024, H1024
 * K512): 422-460 / 349-656; H768 (9.4 MB) 587-617 / 842-1727; H1024 (16 MB) 2100-2497 /
 * 2773-3478.
 *
 * Beyond that limit the panels come from DRAM, and how fast depends on how many lines the
 * core has in flight, i.e. on how few instructions wait on each line: a row alone (1 x 8
 * tiles, two FMAs per 64-byte line) streamed H1536's 37.7 MB at 15-20 GB/s, 2 x 6 tiles at
 * 10-15, 3 x 4, 4 x 2 and 4 x 3 at about 10, with or without software prefetch or huge
 * pages (C harness, one thread). So there, from 4 rows on, row 0 streams 8 columns alone and
 * the other rows follow while those columns are in L2 (3 x 4 tiles, a remainder of 1 or 2
 * rows 1 x 8 or 2 x 4), where 8 columns of K fit in one core's L2 (512 KB on this machine:
 * LSTMC_STREAM_MAX_K; at K 1792-2048 streaming still won, 8 rows 0.87-0.93, 16 rows 0.79;
 * with a longer K the groups of 12 columns above run, four rows alone 2 + 2). The two
 * builds alternating in one process, median of 30-100 calls, this / before (four rows
 * before: 2 + 2 rows of 2 x 6 tiles, or at one thread the rows in turn with 1 x 8 tiles;
 * more rows: groups of 12 columns as above), 1 thread | 2 threads: H1536 4 rows 0.84 | 0.76
 * (3.8 vs 4.6 ms at 1 thread), 5 rows 0.89 | 0.84, 8 rows 0.88 | 0.78, 16 rows 0.87 | 0.79;
 * H1024 4 rows 0.82 | 0.86-0.94, 8 rows 0.76 | 0.83, 16 rows 0.79 | 0.82, 32 rows 0.93 |
 * 0.86, 64 rows 0.90 | 0.95. Groups of 12 columns, row 0 in 1 x 8 and 1 x 4 tiles, lost at
 * 4 rows (1.17 | 1.03); 2 and 3 rows did not gain (0.94-1.12 and 1.12-1.52), so their 2 x 6
 * and 3 x 4 passes stay; with W_hh^T at H1024 (K 4096, 8 columns twice L2) 1.04-1.06, and
 * chunks of K 2048 there gave 0.87-1.10. Below the L3 limit the 4 x 3 pass beat streaming
 * four rows (H256 1.15, H512 1.26; two threads H512 K1024, 4 MB a thread, 1.11).
 *
 * 1 x 12 tiles for a row alone were slower (0.40 vs 0.31 ms). Tiles store straight to C
 * (masked in a partial block) instead of through a buffer and a memcpy per column (those
 * copies took 8 % of an LSTM H256 B1 T150 forward). Per call, best of 3000, one thread, LSTM
 * gates (previous kernel: 2 + 2 rows of 2 x 4 tiles, a buffer / this one, us; noisy shared
 * machine): H512 K512 1 row 57.5 / 57.7, 2 rows 80.6 / 66.1, 4 rows 138 / 122, 25 rows
 * 710 / 674; H1024 K1024 2 rows 833 / 586, 4 rows 1032 / 869. */
static void packed_gemm_avx2(int n, const float *A, int lda, int K, const float *set, int g0,
                             int g1, int H, int u0, int u1, float *C, int ldc, int acc)
{
    const int Wg = g1 - g0, U = LSTMC_PACK_UNITS;
    const int ncols = (u1 - u0 + U - 1) / U * Wg;
    const int in_l3 = (size_t)ncols * U * K * sizeof(float) <= LSTMC_L3_PANELS_MAX_BYTES;
    if (n == 1 || (n >= 4 && !in_l3 && K <= LSTMC_STREAM_MAX_K)) {
        for (int q = 0; q < ncols; q += 8) {          /* row 0 streams 8 columns */
            tile_run(1, 8, q, ncols, K, A, lda, set, Wg, g0, H, u0, u1, C, ldc, acc);
            for (int r0 = 1; r0 < n;) {               /* the rest find them in L2 */
                const int R = n - r0 < 3 ? n - r0 : 3, NC = R == 1 ? 8 : 4;
                for (int c = 0; c < 8 && q + c < ncols; c += NC)
                    tile_run(R, NC, q + c, ncols, K, A + (size_t)r0 * lda, lda, set, Wg, g0, H,
                             u0, u1, C + (size_t)r0 * ldc, ldc, acc);
                r0 += R;
            }
        }
        return;
    }
    for (int q0 = 0; q0 < ncols; q0 += GROUP_COLS)
        for (int r0 = 0; r0 < n;) {
            /* four rows alone: one 4 x 3 pass where the panels stay in L3, else 2 + 2 (past
             * the limit only where K > LSTMC_STREAM_MAX_K); a last 4 after threes: 4 x 3 */
            const int left = n - r0;
            const int R = left == 4 ? (r0 || in_l3 ? 4 : 2) : left < 3 ? left : 3;
            const int NC = GROUP_COLS / R;
            for (int q = q0; q < q0 + GROUP_COLS && q < ncols; q += NC)
                tile_run(R, NC, q, ncols, K, A + (size_t)r0 * lda, lda, set, Wg, g0, H, u0, u1,
                         C + (size_t)r0 * ldc, ldc, acc);
            r0 += R;
        }
}
#endif

#if LSTMC_HAVE_AVX2_KERNEL
/* rows[l][0..7] -> out[k * ostride + l] for k, l < 8: the classic 8 x 8 transpose in
 * registers */
__attribute__((target("avx2,fma"))) static void transpose8(const float *in, size_t istride,
                                                          float *out, size_t ostride)
{
    __m256 r[8], t[8];
    for (int l = 0; l < 8; l++)
        r[l] = _mm256_loadu_ps(in + (size_t)l * istride);
    for (int l = 0; l < 8; l += 2) {
        t[l] = _mm256_unpacklo_ps(r[l], r[l + 1]);
        t[l + 1] = _mm256_unpackhi_ps(r[l], r[l + 1]);
    }
    for (int l = 0; l < 8; l += 4) {
        r[l] = _mm256_shuffle_ps(t[l], t[l + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[l + 1] = _mm256_shuffle_ps(t[l], t[l + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[l + 2] = _mm256_shuffle_ps(t[l + 1], t[l + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[l + 3] = _mm256_shuffle_ps(t[l + 1], t[l + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int l = 0; l < 4; l++) {
        _mm256_storeu_ps(out + (size_t)l * ostride, _mm256_permute2f128_ps(r[l], r[l + 4], 0x20));
        _mm256_storeu_ps(out + (size_t)(l + 4) * ostride,
                         _mm256_permute2f128_ps(r[l], r[l + 4], 0x31));
    }
}
#endif

/* lstmc_pack_gates_f32 with 8 x 8 transposes in registers for the whole blocks and the
 * multiple-of-8 part of K (the element loop, one float gathered per row and k, took 20 % of
 * an LSTM H512 B1 T25 forward, as much as the kernel; minimum CPU time of a pack at H512:
 * element loop 1.9 ms, transposes 0.19-0.27 ms). */
void lstmc_pack_gates_avx2_f32(float *set, const float *W, int H, int K, int g0, int g1, int u0,
                               int u1)
{
#if LSTMC_HAVE_AVX2_KERNEL
    const int Wg = g1 - g0, U = LSTMC_PACK_UNITS, K8 = K / 8 * 8;
    const int full = u0 + (u1 - u0) / U * U;                    /* whole blocks end here */
    for (int b0 = u0; b0 < full; b0 += U) {
        float *panel = set + (size_t)b0 * K * Wg;
        const float *rows = W + ((size_t)g0 * H + b0) * K;     /* gate v at + v * H * K */
        /* a gate's 8 rows at a time, down all of K (k outer over all Wg * 8 rows, writing
         * the panel in order, took 5.4-10.5 ms a pack at H1024 against 3.3-4.2 ms) */
        for (int v = 0; v < Wg; v++)
            for (int k = 0; k < K8; k += 8)
                transpose8(rows + (size_t)v * H * K + k, (size_t)K,
                           panel + ((size_t)k * Wg + v) * U, (size_t)Wg * U);
        for (int k = K8; k < K; k++)
            for (int v = 0; v < Wg; v++)
                for (int l = 0; l < U; l++)
                    panel[((size_t)k * Wg + v) * U + l] = rows[((size_t)v * H + l) * K + k];
    }
    if (full < u1)
        lstmc_pack_gates_f32(set, W, H, K, g0, g1, full, u1);
#else
    lstmc_pack_gates_f32(set, W, H, K, g0, g1, u0, u1);
#endif
}

void lstmc_packed_gemm_avx2_f32(int n, const float *A, int lda, int K, const float *set, int g0,
                                int g1, int H, int u0, int u1, float *C, int ldc, int accumulate)
{
#if LSTMC_HAVE_AVX2_KERNEL
    packed_gemm_avx2(n, A, lda, K, set, g0, g1, H, u0, u1, C, ldc, accumulate);
#else
    lstmc_packed_gemm_c_f32(n, A, lda, K, set, g0, g1, H, u0, u1, C, ldc, accumulate);
#endif
}

#include "recur.inc"
#define LSTMC_F64
#include "recur.inc"
#undef LSTMC_F64
