/*
 * recur.c - the recurrent product of a step at small batch, on W_hh packed once per call.
 *
 * Per step a thread computes gh[j, g*H + u] = sum_k h[j, k] W_hh[g*H + u, k] for the running
 * rows j, the gate blocks g of a set [g0, g1) and its own units [u0, u1). With BLAS that is a
 * gemv per row and gate block: at B rows the thread streams its slice of W_hh B times a step,
 * and sgemm at few rows repacks the slice on every call. Here the slice is packed once per
 * sequence call, by the thread that owns it, into the order the kernel reads, and every
 * element loaded serves all running rows (up to four at a time).
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
 * ks) over all of K, to out (R, NC, 8). R and NC are constants of each instance, so the
 * accumulators live in registers, given full unrolling (a generic version with the tile shape
 * as arguments, even inlined with literals, kept them on the stack: LSTM H512 B4 1 thread
 * 54 ms vs BLAS 41; without the unroll pragmas GCC 12 stored the 4 x 2 tile every k).
 * Sizes: 8-12 accumulators (an FMA has 4-5 cycles of latency, two issue per cycle), plus R
 * broadcasts and an operand, within the 16 ymm registers. */
#define UNROLL _Pragma("GCC unroll 16")
#define DEFINE_TILE(R, NC)                                                                     \
    __attribute__((target("avx2,fma"))) static void tile_##R##_##NC(                                  \
        int K, const float *A, int lda, const float *const *col, size_t ks, float *out)        \
    {                                                                                          \
        __m256 acc[R][NC];                                                                     \
        const float *p[NC];                                                                    \
        UNROLL for (int c = 0; c < NC; c++)                                                    \
            p[c] = col[c];                                                                     \
        UNROLL for (int r = 0; r < R; r++)                                                     \
            UNROLL for (int c = 0; c < NC; c++)                                                \
                acc[r][c] = _mm256_setzero_ps();                                               \
        for (int k = 0; k < K; k++) {                                                          \
            __m256 a[R], x[NC];                                                                \
            UNROLL for (int r = 0; r < R; r++)                                                 \
                a[r] = _mm256_broadcast_ss(A + (size_t)r * lda + k);                           \
            UNROLL for (int c = 0; c < NC; c++)                                                \
                x[c] = _mm256_loadu_ps(p[c] + (size_t)k * ks);                                 \
            UNROLL for (int r = 0; r < R; r++)                                                 \
                UNROLL for (int c = 0; c < NC; c++)                                            \
                    acc[r][c] = _mm256_fmadd_ps(a[r], x[c], acc[r][c]);                        \
        }                                                                                      \
        UNROLL for (int r = 0; r < R; r++)                                                     \
            UNROLL for (int c = 0; c < NC; c++)                                                \
                _mm256_storeu_ps(out + (r * NC + c) * 8, acc[r][c]);                           \
    }
DEFINE_TILE(1, 8)
DEFINE_TILE(1, 6)
DEFINE_TILE(2, 4)
DEFINE_TILE(2, 3)
DEFINE_TILE(3, 4)
DEFINE_TILE(3, 3)
#undef DEFINE_TILE
#undef UNROLL
#define TILE_MAX_COLS 8

/* A tile of R rows (1 alone, else 2 or 3) x NC columns at column q0, stored to C. Columns
 * are the thread's packed columns in order (block by block, gates v within a block); a tile
 * running out of columns repeats its last one (computed, not stored). */
static void tile_store(int R, int NC, int q0, int ncols, int K, const float *A, int lda,
                       const float *set, int Wg, int g0, int H, int u0, int u1, float *C,
                       int ldc)
{
    const int U = LSTMC_PACK_UNITS;
    const size_t ks = (size_t)Wg * U;
    float out[3 * TILE_MAX_COLS * LSTMC_PACK_UNITS];
    const float *col[TILE_MAX_COLS];
    for (int c = 0; c < NC; c++) {
        const int q = q0 + c < ncols ? q0 + c : ncols - 1;
        col[c] = set + (size_t)(u0 + q / Wg * U) * K * Wg + (size_t)(q % Wg) * U;
    }
    switch (R * 10 + NC) {
    case 18: tile_1_8(K, A, lda, col, ks, out); break;
    case 16: tile_1_6(K, A, lda, col, ks, out); break;
    case 24: tile_2_4(K, A, lda, col, ks, out); break;
    case 23: tile_2_3(K, A, lda, col, ks, out); break;
    case 34: tile_3_4(K, A, lda, col, ks, out); break;
    default: tile_3_3(K, A, lda, col, ks, out); break;
    }
    for (int c = 0; c < NC && q0 + c < ncols; c++) {
        const int q = q0 + c, u = u0 + q / Wg * U, g = g0 + q % Wg;
        const size_t cnt = (size_t)(u1 - u < U ? u1 - u : U);
        for (int r = 0; r < R; r++)
            memcpy(C + (size_t)r * ldc + (size_t)g * H + u, out + (r * NC + c) * U,
                   cnt * sizeof(float));
    }
}

/* Each tile streams whole panels (an LSTM block's k-row is 4 vectors, two cache lines): at
 * B4 tiles of 4 rows x half a panel took 3.5 ms a step at H1024 (W_hh from DRAM), against
 * 2.3 ms for 2 + 2 rows through whole panels and 2.1 ms for 3 + 1 (the same at H512: 150-195
 * us all three). Columns therefore go a panel at a time (LSTM 4, GRU 3; the 1- and 2-gate
 * sets take 4 columns of 4 or 2 panels), the rows through them in chunks of 3 (ending 2 or
 * 2 + 2), later chunks finding the panel in L2; one row alone takes two panels for 8
 * independent accumulators. Per step, one
 * thread, minimum of 100 (CPU time; packed / sgemv per row): H256 B1 21.9 / 23.6 us, B2
 * 23.7 / 45.3, B3 23.0 / 51.8, B4 37.3 / 70.7, B8 60.7 / 135.8; H512 B1 85.9 / 93.4, B2
 * 106 / 180, B3 155 / 265, B4 170-324 / 324-371, B8 608 / 775. */
static void packed_gemm_avx2(int n, const float *A, int lda, int K, const float *set, int g0,
                             int g1, int H, int u0, int u1, float *C, int ldc)
{
    const int Wg = g1 - g0, U = LSTMC_PACK_UNITS;
    const int ncols = (u1 - u0 + U - 1) / U * Wg;
    if (n == 1) {
        const int NC = Wg == 3 ? 6 : 8;
        for (int q0 = 0; q0 < ncols; q0 += NC)
            tile_store(1, NC, q0, ncols, K, A, lda, set, Wg, g0, H, u0, u1, C, ldc);
        return;
    }
    const int NC = Wg == 3 ? 3 : 4;
    for (int q0 = 0; q0 < ncols; q0 += NC)
        for (int r0 = 0; r0 < n;) {
            const int R = n - r0 == 2 || n - r0 == 4 ? 2 : 3;  /* chunks of 3, ending 2 or 2+2 */
            tile_store(R, NC, q0, ncols, K, A + (size_t)r0 * lda, lda, set, Wg, g0, H, u0, u1,
                       C + (size_t)r0 * ldc, ldc);
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
                                int g1, int H, int u0, int u1, float *C, int ldc)
{
#if LSTMC_HAVE_AVX2_KERNEL
    packed_gemm_avx2(n, A, lda, K, set, g0, g1, H, u0, u1, C, ldc);
#else
    lstmc_packed_gemm_c_f32(n, A, lda, K, set, g0, g1, H, u0, u1, C, ldc);
#endif
}

#include "recur.inc"
#define LSTMC_F64
#include "recur.inc"
#undef LSTMC_F64
