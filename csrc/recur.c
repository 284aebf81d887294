/*
 * recur.c - the per-step products at batch <= 128 (and small input projections), on weights
 * packed once per call or once per eval-mode module.
 *
 * Per step a thread computes gh[j, g*H + u] = sum_k h[j, k] W_hh[g*H + u, k] for the running
 * rows j, the gate blocks g of a set [g0, g1) and its own units [u0, u1). With BLAS that is a
 * gemv per row and gate block, or an sgemm that repacks the thread's slice on every call.
 * Here the slice is packed once, by the thread that owns it, into the order the kernel reads,
 * and every element loaded serves up to six rows at a time (the next rows find it in L2).
 * The backward's dh_prev = dgates W_hh is the same product on W_hh^T packed as one gate
 * block (lstmc_pack_columns).
 *
 * Packed layout of a gate set [g0, g1) (Wg = g1 - g0 blocks), K = width of the product:
 * per block of U = LSTMC_PACK_UNITS units b0 .. b0+U-1 (zeros past H), a panel of Wg strips
 *     strip v: panel[v][k][l] = W[(g0 + v) * H + b0 + l][k]      (Wg, K, U)
 * at set + b0 * K * Wg: a strip is the U = 16 units of one gate, two 8-float vectors per k,
 * contiguous down K, so a tile reads each strip as one sequential stream and broadcasts
 * h[j, k] into two accumulators per row and strip. Sets of a call share K; set g0 starts at
 * pack + roundup(H, U) * K * g0 (lstmc_pack_set). Where a block's panel sits depends on its
 * units only, not on which thread packs it, so a copy packed once (lstmc_seq_pack_*, for
 * inference) serves every thread count. Without such a copy, the sequence driver packs W_hh
 * per call (weights may change between any two).
 */
#include <stdlib.h>
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
    recur_kernel = kernel >= LSTMC_RECUR_AUTO && kernel <= LSTMC_RECUR_PACKED_WIDE_AVX2
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

int lstmc_avx512_supported(void)
{
#if LSTMC_HAVE_AVX2_KERNEL && !defined(LSTMC_MAX_ISA_V3)
    __builtin_cpu_init();
    return lstmc_avx2_supported() && __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

size_t lstmc_pack_size(int H, int K, int G)
{
    const size_t U = LSTMC_PACK_UNITS;
    return ((size_t)H + U - 1) / U * U * (size_t)K * (size_t)G;
}

/* The widest packed kernel this CPU runs: the 16-lane tiles on AVX-512, the AVX2 ones else. */
static int widest_packed(void)
{
    return lstmc_avx512_supported() ? LSTMC_RECUR_PACKED_AVX512 : LSTMC_RECUR_PACKED_AVX2;
}

int lstmc_recur_kernel_for(int f64, int batch, int steps, int prepacked)
{
    if (batch > LSTMC_PACK_MAX_ROWS || recur_kernel == LSTMC_RECUR_BLAS)
        return LSTMC_RECUR_BLAS;
    if (recur_kernel == LSTMC_RECUR_PACKED_C || (f64 && recur_kernel != LSTMC_RECUR_AUTO))
        return LSTMC_RECUR_PACKED_C;
    if (recur_kernel != LSTMC_RECUR_AUTO) {
        /* a forced SIMD kernel: AVX-512 falls back to its tiles built for AVX2, those and the
         * AVX2 kernel to the portable one */
        if (!lstmc_avx2_supported())
            return LSTMC_RECUR_PACKED_C;
        if (recur_kernel == LSTMC_RECUR_PACKED_AVX512 && !lstmc_avx512_supported())
            return LSTMC_RECUR_PACKED_WIDE_AVX2;
        return recur_kernel;
    }
    /* automatic: float32 with the widest kernel, when the packing is amortised */
    if (f64 || !lstmc_avx2_supported() ||
        (!prepacked &&
         steps < (batch > 1 ? LSTMC_PACK_MIN_STEPS : LSTMC_PACK_MIN_STEPS_ONE_ROW)))
        return LSTMC_RECUR_BLAS;
    return widest_packed();
}

#if LSTMC_HAVE_AVX2_KERNEL
/* One register tile: R rows x S strips (16 units of one gate each: two 8-float vectors per
 * k, at col[s], contiguous in k) over all of K, stored straight to C: strip s goes to C +
 * dst[s] (row stride ldc), its first cnt[s] units (16 for a whole block, fewer in the last
 * one; masked stores). R and S are constants of each instance, so
 * the accumulators live in registers, given full unrolling (a generic version with the tile
 * shape as arguments, even inlined with literals, kept them on the stack). Tiles have up to
 * 12 accumulators (an FMA has 4-5 cycles of latency, two issue per cycle); BFIRST tiles
 * broadcast their rows first and then load one B vector at a time (3 x 2: 12 accumulators,
 * 3 broadcasts and one vector fill the 16 ymm registers; loading its four vectors first would
 * need 17), the others load the strips' vectors first and broadcast row by row (1 x 4 would
 * need 17 too: GCC folds its loads into the FMAs, as each serves one row, without spills). The k loop
 * is unrolled 4 times (without it the loop's address arithmetic shares the issue width with
 * the FMAs), and each strip's line 256 bytes (4 k) ahead is prefetched into L1. */
#define UNROLL _Pragma("GCC unroll 16")
#define PREFETCH_FLOATS 64
/* vector v (of 2 S) at k: half v % 2 of strip v / 2 */
#define STRIP_VECTOR(v) _mm256_loadu_ps(p[(v) / 2] + (size_t)k * 16 + ((v) % 2) * 8)
static const int32_t lane_mask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
#define DEFINE_TILE(R, S, BFIRST)                                                              \
    __attribute__((target("avx2,fma"))) static void tile_##R##_##S(                           \
        int K, const float *A, int lda, const float *const *col, float *C, int ldc,            \
        const int *dst, const int *cnt, int accumulate)                                        \
    {                                                                                          \
        __m256 acc[R][2 * S];                                                                  \
        const float *p[S];                                                                     \
        UNROLL for (int s = 0; s < S; s++)                                                     \
            p[s] = col[s];                                                                     \
        UNROLL for (int r = 0; r < R; r++)                                                     \
            UNROLL for (int v = 0; v < 2 * S; v++)                                             \
                acc[r][v] = _mm256_setzero_ps();                                               \
        _Pragma("GCC unroll 4") for (int k = 0; k < K; k++) {                                  \
            UNROLL for (int s = 0; s < S; s++)                                                 \
                _mm_prefetch((const char *)(p[s] + (size_t)k * 16 + PREFETCH_FLOATS),          \
                             _MM_HINT_T0);                                                     \
            if (BFIRST) {                                                                      \
                __m256 a[R];                                                                   \
                UNROLL for (int r = 0; r < R; r++)                                             \
                    a[r] = _mm256_broadcast_ss(A + (size_t)r * lda + k);                       \
                UNROLL for (int v = 0; v < 2 * S; v++) {                                       \
                    const __m256 x = STRIP_VECTOR(v);                                  \
                    UNROLL for (int r = 0; r < R; r++)                                         \
                        acc[r][v] = _mm256_fmadd_ps(a[r], x, acc[r][v]);                       \
                }                                                                              \
            } else {                                                                           \
                __m256 x[2 * S];                                                               \
                UNROLL for (int v = 0; v < 2 * S; v++)                                         \
                    x[v] = STRIP_VECTOR(v);                                            \
                UNROLL for (int r = 0; r < R; r++) {                                           \
                    const __m256 a = _mm256_broadcast_ss(A + (size_t)r * lda + k);             \
                    UNROLL for (int v = 0; v < 2 * S; v++)                                     \
                        acc[r][v] = _mm256_fmadd_ps(a, x[v], acc[r][v]);                       \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        UNROLL for (int v = 0; v < 2 * S; v++) {                                               \
            const int n8 = cnt[v / 2] - (v % 2) * 8, m8 = n8 < 0 ? 0 : n8 > 8 ? 8 : n8;        \
            const __m256i m = _mm256_loadu_si256((const __m256i *)(lane_mask + 8 - m8));       \
            UNROLL for (int r = 0; r < R; r++) {                                               \
                float *to = C + (size_t)r * ldc + dst[v / 2] + (v % 2) * 8;                    \
                if (m8 == 8)                                                                   \
                    _mm256_storeu_ps(to, accumulate ? _mm256_add_ps(_mm256_loadu_ps(to),       \
                                                                    acc[r][v])                 \
                                                    : acc[r][v]);                              \
                else if (m8 > 0)                                                               \
                    _mm256_maskstore_ps(to, m, accumulate ? _mm256_add_ps(                     \
                                                                _mm256_maskload_ps(to, m),     \
                                                                acc[r][v])                     \
                                                          : acc[r][v]);                        \
            }                                                                                  \
        }                                                                                      \
    }
DEFINE_TILE(1, 1, 0)
DEFINE_TILE(1, 2, 0)
DEFINE_TILE(1, 3, 0)
DEFINE_TILE(1, 4, 0)
DEFINE_TILE(2, 1, 0)
DEFINE_TILE(2, 2, 0)
DEFINE_TILE(3, 1, 0)
DEFINE_TILE(3, 2, 1)
DEFINE_TILE(4, 1, 0)
DEFINE_TILE(5, 1, 0)
DEFINE_TILE(6, 1, 0)
#undef DEFINE_TILE
#undef STRIP_VECTOR
#undef UNROLL
#define TILE_ROWS 6      /* rows a tile takes at most (6 x 1: 12 accumulators) */
#define MAX_STRIPS 8     /* strips a tile takes at most (the 16-lane 1 x 8) */

/* C[R rows, strips q0 .. q0+S-1 of the thread's strips] (R x S one of the tiles above).
 * Strips are the thread's in order (block by block, gates v within a block). */
static void tile_run_avx2(int R, int S, int K, const float *A, int lda,
                          const float *const *col, float *C, int ldc, const int *dst,
                          const int *cnt, int acc)
{
    switch (R * 10 + S) {
    case 11: tile_1_1(K, A, lda, col, C, ldc, dst, cnt, acc); break;
    case 12: tile_1_2(K, A, lda, col, C, ldc, dst, cnt, acc); break;
    case 13: tile_1_3(K, A, lda, col, C, ldc, dst, cnt, acc); break;
    case 14: tile_1_4(K, A, lda, col, C, ldc, dst, cnt, acc); break;
    case 21: tile_2_1(K, A, lda, col, C, ldc, dst, cnt, acc); break;
    case 22: tile_2_2(K, A, lda, col, C, ldc, dst, cnt, acc); break;
    case 31: tile_3_1(K, A, lda, col, C, ldc, dst, cnt, acc); break;
    case 32: tile_3_2(K, A, lda, col, C, ldc, dst, cnt, acc); break;
    case 41: tile_4_1(K, A, lda, col, C, ldc, dst, cnt, acc); break;
    case 51: tile_5_1(K, A, lda, col, C, ldc, dst, cnt, acc); break;
    case 61: tile_6_1(K, A, lda, col, C, ldc, dst, cnt, acc); break;
    /* unreachable by construction: packed_gemm_tiles asks for R <= TILE_ROWS rows and the S
     * strips of R's tile or fewer, all of them cases above; a new shape without its case
     * would otherwise leave C unwritten */
    default: abort();
    }
}

/* The 16-lane tiles: one vector of 16 floats per strip and k (a whole strip row), in GCC's
 * vector extensions, so that one source builds for AVX-512 (32 zmm registers: up to 6 x 4 =
 * 24 accumulators) and for AVX2 (each vector two ymm halves; the tiles then spill, which
 * only their tests on CPUs without AVX-512 see). Each strip's sum over k runs in k order
 * with one FMA per k, as in the AVX2 tiles, so both kernels give the same bits. A tile
 * always takes its full S strips: missing ones at the end of a group repeat the last strip
 * with nothing stored (cnt 0), so one instance per row count serves every group. They do not
 * prefetch, as the 8-lane tiles do: an L1 prefetch per strip and k cost issue slots and bought
 * nothing even where W comes from L3 (benchmarks/ab_builds.py --in-process, one thread, new /
 * base: LSTM eval I128 H256 B32 T100 0.94, GRU 0.90, H256 B1 T150 0.93, H512 B1 T25 0.97,
 * H512 B4 T25 1.00, training H256 B16 T50 1.01; docs/decisions.md#packed-layout). */
typedef float wide_vec __attribute__((vector_size(64), aligned(4), may_alias));
#define UNROLL _Pragma("GCC unroll 16")
#define DEFINE_WIDE_TILE(ISA, TARGET, R, S)                                                    \
    __attribute__((target(TARGET))) static void wide_##ISA##_##R(                             \
        int K, const float *A, int lda, const float *const *col, float *C, int ldc,            \
        const int *dst, const int *cnt, int accumulate)                                        \
    {                                                                                          \
        wide_vec acc[R][S];                                                                    \
        const float *p[S];                                                                     \
        UNROLL for (int s = 0; s < S; s++)                                                     \
            p[s] = col[s];                                                                     \
        UNROLL for (int r = 0; r < R; r++)                                                     \
            UNROLL for (int s = 0; s < S; s++)                                                 \
                acc[r][s] = (wide_vec){0};                                                     \
        _Pragma("GCC unroll 4") for (int k = 0; k < K; k++) {                                  \
            wide_vec x[S];                                                                     \
            UNROLL for (int s = 0; s < S; s++)                                                 \
                x[s] = *(const wide_vec *)(p[s] + (size_t)k * 16);                             \
            UNROLL for (int r = 0; r < R; r++) {                                               \
                const float a = A[(size_t)r * lda + k];                                        \
                UNROLL for (int s = 0; s < S; s++)                                             \
                    acc[r][s] += a * x[s];                                                     \
            }                                                                                  \
        }                                                                                      \
        UNROLL for (int s = 0; s < S; s++)                                                     \
            UNROLL for (int r = 0; r < R; r++) {                                               \
                float *to = C + (size_t)r * ldc + dst[s];                                      \
                if (cnt[s] == 16) {                                                            \
                    wide_vec v = acc[r][s];                                                    \
                    if (accumulate)                                                            \
                        v = *(wide_vec *)to + v;                                               \
                    *(wide_vec *)to = v;                                                       \
                } else                                                                         \
                    for (int l = 0; l < cnt[s]; l++)                                           \
                        to[l] = accumulate ? to[l] + acc[r][s][l] : acc[r][s][l];              \
            }                                                                                  \
    }
#define DEFINE_WIDE_TILES(ISA, TARGET)                                                         \
    DEFINE_WIDE_TILE(ISA, TARGET, 1, 8)                                                        \
    DEFINE_WIDE_TILE(ISA, TARGET, 2, 4)                                                        \
    DEFINE_WIDE_TILE(ISA, TARGET, 3, 4)                                                        \
    DEFINE_WIDE_TILE(ISA, TARGET, 4, 4)                                                        \
    DEFINE_WIDE_TILE(ISA, TARGET, 5, 4)                                                        \
    DEFINE_WIDE_TILE(ISA, TARGET, 6, 4)                                                        \
    static void tile_run_##ISA(int R, int S, int K, const float *A, int lda,                   \
                               const float *const *col, float *C, int ldc, const int *dst,     \
                               const int *cnt, int acc)                                        \
    {                                                                                          \
        (void)S;                                                                               \
        switch (R) {                                                                           \
        case 1: wide_##ISA##_1(K, A, lda, col, C, ldc, dst, cnt, acc); break;                  \
        case 2: wide_##ISA##_2(K, A, lda, col, C, ldc, dst, cnt, acc); break;                  \
        case 3: wide_##ISA##_3(K, A, lda, col, C, ldc, dst, cnt, acc); break;                  \
        case 4: wide_##ISA##_4(K, A, lda, col, C, ldc, dst, cnt, acc); break;                  \
        case 5: wide_##ISA##_5(K, A, lda, col, C, ldc, dst, cnt, acc); break;                  \
        case 6: wide_##ISA##_6(K, A, lda, col, C, ldc, dst, cnt, acc); break;                  \
        default: abort(); /* unreachable: packed_gemm_tiles asks for R <= TILE_ROWS */         \
        }                                                                                      \
    }
DEFINE_WIDE_TILES(avx512, "avx512f,avx2,fma")
DEFINE_WIDE_TILES(wide_avx2, "avx2,fma")
#undef DEFINE_WIDE_TILES
#undef DEFINE_WIDE_TILE
#undef UNROLL

/* A family of tiles: strips[R] is the widest tile of R rows (strips[1] the widest of all);
 * `pad`: its tiles always take that many (see the 16-lane tiles). */
typedef struct {
    void (*run)(int R, int S, int K, const float *A, int lda, const float *const *col,
                float *C, int ldc, const int *dst, const int *cnt, int acc);
    int strips[TILE_ROWS + 1];
    int pad;
} tiling;
static const tiling TILES_AVX2 = {tile_run_avx2, {0, 4, 2, 2, 1, 1, 1}, 0};
static const tiling TILES_AVX512 = {tile_run_avx512, {0, 8, 4, 4, 4, 4, 4}, 1};
static const tiling TILES_WIDE_AVX2 = {tile_run_wide_avx2, {0, 8, 4, 4, 4, 4, 4}, 1};

/* Strips of a group that stays in one core's L2 (512 KB on this machine) while every chunk of
 * rows passes over it: as many as fit in GROUP_BYTES, at least the widest tile's (see
 * packed_gemm_tiles). */
#define GROUP_BYTES ((size_t)384 << 10)
/* a thread's panels beyond this come from DRAM, not L3, every step (see packed_gemm_tiles) */
#define LSTMC_L3_PANELS_MAX_BYTES ((size_t)4 << 20)

/* Tile R rows x S strips, the thread's strips q0 .. q0+S-1 (block by block, gates v within
 * a block) */
static void tile_at(const tiling *t, int R, int S, int q0, int K, const float *A, int lda,
                    const float *set, int Wg, int g0, int gstep, int bscale, int u0, int u1,
                    float *C, int ldc, int acc)
{
    const int U = LSTMC_PACK_UNITS, width = t->pad ? t->strips[R] : S;
    const float *col[MAX_STRIPS];
    int dst[MAX_STRIPS], cnt[MAX_STRIPS];
    for (int s = 0; s < width; s++) {
        const int q = q0 + (s < S ? s : S - 1), u = u0 + q / Wg * U, v = q % Wg;
        col[s] = lstmc_pack_strip(set, u, v, Wg, K);
        dst[s] = (g0 + v) * gstep + (u - u0) * bscale;
        cnt[s] = s >= S ? 0 : u1 - u < U ? u1 - u : U;
    }
    t->run(R, width, K, A, lda, col, C, ldc, dst, cnt, acc);
}

/* Rows go in chunks of up to 6 over every strip, each chunk with the widest tile of its row
 * count (AVX2, at most 12 accumulators: 6, 5 and 4 rows one strip at a time (two loads per
 * 2R FMAs), 3 and 2 rows two strips, a row alone four (its eight accumulators hide the FMA
 * latency); 16 lanes: four strips, a row alone eight). One to six rows so read the thread's
 * weights once, in one pass. More rows take the strips in groups that
 * stay in L2 while all chunks of rows pass over them (GROUP_BYTES, at least a widest tile),
 * so the weights come from L3 or DRAM once per call and from L2 once per chunk. Weights that
 * come from DRAM (a thread's panels past LSTMC_L3_PANELS_MAX_BYTES) stream faster the fewer
 * instructions wait on each line, so there, from 4 rows on, row 0 streams a widest tile alone
 * and the others follow while those are in L2, in chunks of three. Against the 8-unit panels
 * this layout replaced, I = H = 512, one thread, AVX2: 0.80-0.86 of the time at 2 to 16 rows
 * (docs/decisions.md#packed-layout).
 *
 * `reverse` walks the groups, and the tiles in each, last to first. The driver alternates it
 * from step to step, so that a step starts on the strips the step before read last, which are
 * still in L2 (or L3) if anything is (LSTM eval H256 B1 T150, one thread, alternating / one
 * way 0.88, benchmarks/ab_builds.py; docs/decisions.md#reverse). */
static void packed_gemm_tiles(const tiling *t, int n, const float *A, int lda, int K,
                              const float *set, int g0, int g1, int gstep, int bscale, int u0,
                              int u1, float *C, int ldc, int acc, int reverse)
{
    const int Wg = g1 - g0, U = LSTMC_PACK_UNITS, widest = t->strips[1];
    const int nstrips = (u1 - u0 + U - 1) / U * Wg;
    const size_t strip_bytes = (size_t)K * U * sizeof(float);
    const int stream = n >= 4 && nstrips * strip_bytes > LSTMC_L3_PANELS_MAX_BYTES;
    int group = n <= TILE_ROWS && !stream ? nstrips : (int)(GROUP_BYTES / strip_bytes);
    if (stream || group < widest)
        group = widest;
    const int ngroups = (nstrips + group - 1) / group;
    for (int gi = 0; gi < ngroups; gi++) {
        const int q0 = (reverse ? ngroups - 1 - gi : gi) * group;
        const int q1 = q0 + group < nstrips ? q0 + group : nstrips;
        for (int r0 = 0; r0 < n;) {
            /* streaming: row 0 alone, then the others in chunks of up to three */
            const int most = stream ? (r0 ? 3 : 1) : TILE_ROWS;
            const int R = n - r0 < most ? n - r0 : most;
            const int S = t->strips[R], ntiles = (q1 - q0 + S - 1) / S;
            for (int ti = 0; ti < ntiles; ti++) {
                const int q = q0 + (reverse ? ntiles - 1 - ti : ti) * S;
                tile_at(t, R, q1 - q < S ? q1 - q : S, q, K, A + (size_t)r0 * lda, lda, set, Wg,
                        g0, gstep, bscale, u0, u1, C + (size_t)r0 * ldc, ldc, acc);
            }
            r0 += R;
        }
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
 * multiple-of-8 part of K, a strip at a time down all of K (a pack at H512: element loop
 * 1.9 ms, transposes 0.19-0.27 ms; docs/decisions.md#packing). */
void lstmc_pack_gates_avx2_f32(float *set, const float *W, int H, int K, int g0, int g1, int u0,
                               int u1)
{
#if LSTMC_HAVE_AVX2_KERNEL
    const int Wg = g1 - g0, U = LSTMC_PACK_UNITS, K8 = K / 8 * 8;
    const int full = u0 + (u1 - u0) / U * U;                    /* whole blocks end here */
    for (int b0 = u0; b0 < full; b0 += U)
        for (int v = 0; v < Wg; v++) {
            float *strip = lstmc_pack_strip(set, b0, v, Wg, K);
            const float *rows = W + ((size_t)(g0 + v) * H + b0) * K;       /* U rows of K */
            for (int k = 0; k < K8; k += 8)
                for (int h = 0; h < U; h += 8)
                    transpose8(rows + (size_t)h * K + k, (size_t)K, strip + (size_t)k * U + h,
                               (size_t)U);
            for (int k = K8; k < K; k++)
                for (int l = 0; l < U; l++)
                    strip[(size_t)k * U + l] = rows[(size_t)l * K + k];
        }
    if (full < u1)
        lstmc_pack_gates_f32(set, W, H, K, g0, g1, full, u1);
#else
    lstmc_pack_gates_f32(set, W, H, K, g0, g1, u0, u1);
#endif
}

void lstmc_packed_gemm_simd_f32(int kernel, int n, const float *A, int lda, int K,
                                const float *set, int g0, int g1, int gstep, int bscale, int u0,
                                int u1, float *C, int ldc, int accumulate, int reverse)
{
#if LSTMC_HAVE_AVX2_KERNEL
    const tiling *t = kernel == LSTMC_RECUR_PACKED_AVX2     ? &TILES_AVX2
                      : kernel == LSTMC_RECUR_PACKED_AVX512 ? &TILES_AVX512
                      : kernel == LSTMC_RECUR_PACKED_WIDE_AVX2 ? &TILES_WIDE_AVX2
                                                             : NULL;
    if (t) {
        packed_gemm_tiles(t, n, A, lda, K, set, g0, g1, gstep, bscale, u0, u1, C, ldc,
                          accumulate, reverse);
        return;
    }
#else
    (void)kernel;
#endif
    lstmc_packed_gemm_c_f32(n, A, lda, K, set, g0, g1, gstep, bscale, u0, u1, C, ldc,
                            accumulate, reverse);
}

#include "recur.inc"
#define LSTMC_F64
#include "recur.inc"
#undef LSTMC_F64
