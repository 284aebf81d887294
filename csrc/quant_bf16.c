/*
 * quant_bf16.c - bfloat16 products for inference: weights stored as bfloat16 (rounded once,
 * at quantize time), activation rows rounded to bfloat16 at run time, products (exact in
 * float32: 8-bit by 8-bit significands) accumulated in float32. The rounding is
 * lstmc/reference.py's to_bf16: to nearest even, NaN kept (quiet), subnormals to a signed
 * zero (VDPBF16PS and TDPBF16PS read them as zero). Products are exact in float32; the sums
 * go down K a pair at a time, each pair's odd product first (VDPBF16PS's order, which the
 * portable and AVX2 kernels follow), every addition rounded: reference.bf16_product's bits.
 *
 * Packed layout of a gate set [g0, g1) (Wg = g1 - g0 blocks), K columns, Kp = K rounded up to
 * even: per block of U = LSTMC_PACK_UNITS units b0 .. b0 + U - 1 (units past H: zeros), Wg
 * strips of lstmc_bf16_strip_bytes(K) bytes, strip v of the block at
 * set + (b0 / U * Wg + v) * strip bytes:
 *     uint16 w[Kp / 2][U][2]: w[p][l][i] = W[(g0 + v) H + b0 + l][2 p + i], zeros past K
 * A pair of k is one 64-byte vector whose 32-bit lane l holds unit l's two weights:
 * VPDPBF16PS's operand, and 16 pairs are an AMX B tile, as they lie. Set g0 starts at
 * pack + lstmc_bf16_pack_bytes(H, K, g0).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "internal.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(LSTMC_NO_DISPATCH)
#define LSTMC_HAVE_BF16_AVX2 1
#include <immintrin.h>
#else
#define LSTMC_HAVE_BF16_AVX2 0
#endif
#if LSTMC_HAVE_BF16_AVX2 && !defined(LSTMC_MAX_ISA_V3)
#define LSTMC_HAVE_BF16_AVX512 1
#else
#define LSTMC_HAVE_BF16_AVX512 0
#endif
#if LSTMC_HAVE_BF16_AVX512 && defined(__linux__)
#define LSTMC_HAVE_BF16_AMX 1
#include <cpuid.h>
#else
#define LSTMC_HAVE_BF16_AMX 0
#endif

#define U LSTMC_PACK_UNITS

int lstmc_bf16_row_elems(int K) { return (K + 1) / 2 * 2; }

size_t lstmc_bf16_strip_bytes(int K) { return (size_t)U * lstmc_bf16_row_elems(K) * 2; }

size_t lstmc_bf16_pack_bytes(int H, int K, int G)
{
    return ((size_t)H + U - 1) / U * (size_t)G * lstmc_bf16_strip_bytes(K);
}

static const uint8_t *strip_at(const uint8_t *set, int b0, int v, int Wg, int K)
{
    return set + ((size_t)(b0 / U) * Wg + v) * lstmc_bf16_strip_bytes(K);
}

void lstmc_bf16_pack_gates(uint8_t *set, const uint16_t *Wb, int H, int K, int g0, int g1,
                           int u0, int u1)
{
    const int Wg = g1 - g0, Kp = lstmc_bf16_row_elems(K);
    for (int b0 = u0; b0 < u1; b0 += U) {
        const int cnt = u1 - b0 < U ? u1 - b0 : U;
        for (int v = 0; v < Wg; v++) {
            uint16_t *w = (uint16_t *)strip_at(set, b0, v, Wg, K);
            for (int l = 0; l < U; l++) {
                const size_t n = (size_t)(g0 + v) * H + b0 + l;
                for (int k = 0; k < Kp; k++)
                    w[(size_t)(k / 2) * U * 2 + l * 2 + k % 2] =
                        l < cnt && k < K ? Wb[n * K + k] : 0;
            }
        }
    }
}

/* Columns [c0, c1) of n rows of a rounded to bfloat16 (reference.to_bf16), written without
 * branches so that the clones vectorise it */
LSTMC_DISPATCH void lstmc_bf16_round(uint16_t *q, int ldq, const float *a, int lda, int n,
                                     int c0, int c1)
{
    for (int r = 0; r < n; r++)
        for (int c = c0; c < c1; c++) {
            uint32_t u;
            memcpy(&u, a + (size_t)r * lda + c, 4);
            const uint32_t even = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
            const uint32_t nan = (u & 0x7fffffffu) > 0x7f800000u;
            const uint32_t sub = (u & 0x7f800000u) == 0;
            q[(size_t)r * ldq + c] =
                (uint16_t)(nan ? (u >> 16) | 0x40u : sub ? (u >> 16) & 0x8000u : even);
        }
}

void lstmc_bf16_round_rows(uint16_t *q, int ldq, const float *a, int lda, int n, int K)
{
    lstmc_bf16_round(q, ldq, a, lda, n, 0, K);
    if (K % 2)
        for (int r = 0; r < n; r++)
            q[(size_t)r * ldq + K] = 0;
}

static float f32_of(uint16_t b)
{
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The portable kernel, and the obviously correct one: per row and strip, U sums over k */
static void bf16_gemm_c(int n, const uint16_t *A, int lda, int K, const uint8_t *set, int g0,
                        int g1, int gstep, int bscale, int u0, int u1, float *C, int ldc)
{
    const int Wg = g1 - g0, Kp = lstmc_bf16_row_elems(K);
    for (int j = 0; j < n; j++)
        for (int b0 = u0; b0 < u1; b0 += U) {
            const int cnt = u1 - b0 < U ? u1 - b0 : U;
            const uint16_t *a = A + (size_t)j * lda;
            for (int v = 0; v < Wg; v++) {
                const uint16_t *w = (const uint16_t *)strip_at(set, b0, v, Wg, K);
                float *dst = C + (size_t)j * ldc + (size_t)(g0 + v) * gstep +
                             (size_t)(b0 - u0) * bscale;
                for (int l = 0; l < cnt; l++) {
                    float acc = 0;
                    for (int k = 0; k < Kp; k += 2) {   /* the odd term first */
                        const uint16_t *wp = w + (size_t)(k / 2) * U * 2 + l * 2;
                        acc += f32_of(a[k + 1]) * f32_of(wp[1]);
                        acc += f32_of(a[k]) * f32_of(wp[0]);
                    }
                    dst[l] = acc;
                }
            }
        }
}

#if LSTMC_HAVE_BF16_AVX2
/* AVX2, 8 lanes: a strip's pair of k is two 32-byte halves (units 0-7, 8-15). A bfloat16 is
 * the high half of its float32, so each 32-bit lane widens by a shift (the even k) or a mask
 * (the odd k), the row's pair likewise once per row: two FMAs per half and row. R rows x S
 * strips, 2 R S accumulators, 2 R widened row values. */
#define BF16_AVX2_TILE(R, S)                                                                   \
    __attribute__((target("avx2,fma"))) static void bf16_tile_avx2_##R##_##S(                 \
        int pairs, const uint8_t *A, int lda, const float *a_scale, const lstmc_qtile_args *t, \
        float *C, int ldc)                                                                     \
    {                                                                                          \
        __m256 acc[R][2 * S];                                                                  \
        (void)a_scale;                                                                         \
        const __m256i high = _mm256_set1_epi32((int)0xffff0000u);                             \
        _Pragma("GCC unroll 16") for (int s = 0; s < 2 * S; s++)                              \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                \
                acc[r][s] = _mm256_setzero_ps();                                               \
        for (int p = 0; p < pairs; p++) {                                                      \
            __m256 ae[R], ao[R];                                                               \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                              \
                int32_t two;                                                                   \
                memcpy(&two, A + (size_t)r * lda + 4 * (size_t)p, 4);                          \
                const __m256i a = _mm256_set1_epi32(two);                                      \
                ae[r] = _mm256_castsi256_ps(_mm256_slli_epi32(a, 16));                         \
                ao[r] = _mm256_castsi256_ps(_mm256_and_si256(a, high));                        \
            }                                                                                  \
            _Pragma("GCC unroll 16") for (int s = 0; s < S; s++)                              \
                _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {                          \
                    const __m256i w =                                                          \
                        _mm256_loadu_si256((const __m256i *)(t->strip[s] + (size_t)p * 64) + h); \
                    const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));           \
                    const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(w, high));          \
                    _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                      \
                        acc[r][2 * s + h] = _mm256_fmadd_ps(ao[r], wo, acc[r][2 * s + h]);     \
                        acc[r][2 * s + h] = _mm256_fmadd_ps(ae[r], we, acc[r][2 * s + h]);     \
                    }                                                                          \
                }                                                                              \
        }                                                                                      \
        _Pragma("GCC unroll 16") for (int s = 0; s < S; s++)                                  \
            _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {                              \
                const int n8 = t->cnt[s] - 8 * h;                                              \
                const __m256i mask = _mm256_cmpgt_epi32(                                       \
                    _mm256_set1_epi32(n8), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));         \
                _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                            \
                    if (n8 > 0)                                                                \
                        _mm256_maskstore_ps(C + (size_t)r * ldc + t->dst[s] + 8 * h, mask,     \
                                            acc[r][2 * s + h]);                                \
            }                                                                                  \
    }
/* accumulators, widened rows and a strip's w, even and odd within the 16 ymm registers */
BF16_AVX2_TILE(1, 4)
BF16_AVX2_TILE(2, 2)
BF16_AVX2_TILE(3, 1)
#endif

#if LSTMC_HAVE_BF16_AVX2
/* The 16-lane tiles: a strip's pair of k is one vector, whose lane l adds the row's pair
 * times unit l's, the odd product first. Written once in GCC's vector extensions with the
 * dot product as a parameter: VDPBF16PS for AVX-512 BF16, and a plain-C twin (the same
 * order, the products exact) for the same tile built for AVX2 (LSTMC_BF16_WIDE_AVX2: the
 * wide tile's tests on CPUs without AVX-512 BF16; slow, never chosen automatically). R rows
 * x S strips (at most 24 of the 32 zmm registers). */
typedef int32_t bf16_vec __attribute__((vector_size(64), aligned(4), may_alias));
typedef float bf16_fvec __attribute__((vector_size(64), aligned(4), may_alias));
/* acc += VDPBF16PS's sums in plain C (a call through memory, as quant.c's dpbusd_c) */
__attribute__((noinline)) static void dpbf16_c(void *acc, const void *a, const void *w)
{
    float s[16];
    uint16_t ab[32], wb[32];
    memcpy(s, acc, 64);
    memcpy(ab, a, 64);
    memcpy(wb, w, 64);
    for (int l = 0; l < 16; l++) {
        s[l] += f32_of(ab[2 * l + 1]) * f32_of(wb[2 * l + 1]);
        s[l] += f32_of(ab[2 * l]) * f32_of(wb[2 * l]);
    }
    memcpy(acc, s, 64);
}
#define DPBF16_C(acc, a, w) dpbf16_c(&(acc), &(a), &(w))
#define BF16_WIDE_TILE(ISA, TARGET, DOT, R, S)                                                 \
    __attribute__((target(TARGET))) static void bf16_tile_##ISA##_##R##_##S(                   \
        int pairs, const uint8_t *A, int lda, const float *a_scale, const lstmc_qtile_args *t, \
        float *C, int ldc)                                                                     \
    {                                                                                          \
        bf16_fvec acc[R][S];                                                                   \
        (void)a_scale;                                                                         \
        _Pragma("GCC unroll 16") for (int s = 0; s < S; s++)                                   \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                \
                acc[r][s] = (bf16_fvec){0};                                                    \
        for (int p = 0; p < pairs; p++) {                                                      \
            bf16_vec w[S];                                                                     \
            _Pragma("GCC unroll 16") for (int s = 0; s < S; s++)                               \
                w[s] = *(const bf16_vec *)(t->strip[s] + (size_t)p * 64);                      \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                              \
                int32_t two;                                                                   \
                memcpy(&two, A + (size_t)r * lda + 4 * (size_t)p, 4);                          \
                const bf16_vec a = (bf16_vec){0} + two;                                        \
                _Pragma("GCC unroll 16") for (int s = 0; s < S; s++)                           \
                    DOT(acc[r][s], a, w[s]);                                                   \
            }                                                                                  \
        }                                                                                      \
        _Pragma("GCC unroll 16") for (int s = 0; s < S; s++)                                   \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                              \
                /* a copy: indexing acc itself would keep every accumulator in memory */      \
                const bf16_fvec v = acc[r][s];                                                 \
                float *to = C + (size_t)r * ldc + t->dst[s];                                   \
                if (t->cnt[s] == U)                                                            \
                    *(bf16_fvec *)to = v;                                                      \
                else                                                                           \
                    for (int l = 0; l < t->cnt[s]; l++)                                        \
                        to[l] = v[l];                                                          \
            }                                                                                  \
    }
#define BF16_WIDE_TILES(ISA, TARGET, DOT)                                                      \
    BF16_WIDE_TILE(ISA, TARGET, DOT, 1, 8)                                                     \
    BF16_WIDE_TILE(ISA, TARGET, DOT, 2, 4)                                                     \
    BF16_WIDE_TILE(ISA, TARGET, DOT, 3, 4)                                                     \
    BF16_WIDE_TILE(ISA, TARGET, DOT, 4, 4)                                                     \
    BF16_WIDE_TILE(ISA, TARGET, DOT, 5, 4)                                                     \
    BF16_WIDE_TILE(ISA, TARGET, DOT, 6, 4)
BF16_WIDE_TILES(wide_avx2, "avx2,fma", DPBF16_C)
#endif

#if LSTMC_HAVE_BF16_AVX512
/* VDPBF16PS written in place, as quant.c's VPDPBUSD, so that GCC keeps the accumulators in
 * their registers */
#define DPBF16(acc, a, w) __asm__("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(w))
BF16_WIDE_TILES(avx512, "avx512f,avx512bw,avx512bf16", DPBF16)
#endif

#if LSTMC_HAVE_BF16_AMX
/* AMX (TDPBF16PS): C (M x 16 units, float) += A (M rows x 32 bfloat16) . B (16 pairs of k
 * x 16 units), which is a strip's run of 16 pairs as it lies. Tiles: tmm0-3 the sums of
 * four strips, tmm4 / tmm5 A's 32-k blocks in turn, tmm6 / tmm7 B's; the pairs past the last
 * whole block go through VDPBF16PS on the stored sums. */

/* Tile t's 16 x 16 sums into C at dst (16 rows, row stride ldc), the first cnt units */
__attribute__((target("amx-tile,amx-bf16,avx512f"))) static void
amx_store(float (*sums)[16], float *dst, int ldc, int cnt)
{
    const __mmask16 mask = (__mmask16)((1u << cnt) - 1);
    for (int r = 0; r < 16; r++)
        _mm512_mask_storeu_ps(dst + (size_t)r * ldc, mask, _mm512_loadu_ps(sums[r]));
}

/* 32 rows at once when K is whole 32-k blocks: rows 0-15 and 16-31 in A tiles 4 and 5, two
 * strips in B tiles 6 and 7, four sums (tmm0-3): each strip's block is loaded once for the
 * 32 rows, half the weight traffic of two 16-row passes (LSTM I128 H256 B32 T100 bf16
 * forward, one thread, busy machine: 16.4-18.7 -> 10.4-12.0 ms) */
__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16"))) static void
bf16_amx_32(const uint16_t *a, int lda, int blocks, const uint8_t *set, int K, int nstrips,
            int g0, int Wg, int gstep, int bscale, int u0, int u1, float *C, int ldc)
{
    float sums[16][16];
    for (int q0 = 0; q0 < nstrips; q0 += 2) {
        const int S = nstrips - q0 < 2 ? nstrips - q0 : 2;
        const uint8_t *w[2];
        for (int s = 0; s < 2; s++) {
            const int q = q0 + (s < S ? s : S - 1);
            w[s] = strip_at(set, u0 + q / Wg * U, q % Wg, Wg, K);
        }
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int kb = 0; kb < blocks; kb++) {
            const size_t at = (size_t)kb * 16 * 64;
            _tile_loadd(4, a + (size_t)kb * 32, 2 * (size_t)lda);
            _tile_loadd(6, w[0] + at, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_loadd(5, a + 16 * (size_t)lda + (size_t)kb * 32, 2 * (size_t)lda);
            _tile_dpbf16ps(1, 5, 6);
            _tile_loadd(7, w[1] + at, 64);
            _tile_dpbf16ps(2, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
        }
        for (int s = 0; s < S; s++) {
            const int b0 = u0 + (q0 + s) / Wg * U, v = (q0 + s) % Wg;
            const int cnt = u1 - b0 < U ? u1 - b0 : U;
            float *dst = C + (size_t)(g0 + v) * gstep + (size_t)(b0 - u0) * bscale;
            float *hi = dst + 16 * (size_t)ldc;
            if (cnt == U) {                     /* whole strips straight to C */
                if (s == 0) {
                    _tile_stored(0, dst, 4 * (size_t)ldc);
                    _tile_stored(1, hi, 4 * (size_t)ldc);
                } else {
                    _tile_stored(2, dst, 4 * (size_t)ldc);
                    _tile_stored(3, hi, 4 * (size_t)ldc);
                }
                continue;
            }
            if (s == 0)
                _tile_stored(0, sums, 64);
            else
                _tile_stored(2, sums, 64);
            amx_store(sums, dst, ldc, cnt);
            if (s == 0)
                _tile_stored(1, sums, 64);
            else
                _tile_stored(3, sums, 64);
            amx_store(sums, hi, ldc, cnt);
        }
    }
}

__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16"))) static void
bf16_gemm_amx(int n, const uint16_t *A, int lda, int K, const uint8_t *set, int g0, int g1,
              int gstep, int bscale, int u0, int u1, float *C, int ldc)
{
    const int Wg = g1 - g0, nstrips = (u1 - u0 + U - 1) / U * Wg;
    const int Kp = lstmc_bf16_row_elems(K), blocks = Kp / 32, tail = (Kp % 32) / 2;
    float sums[4][16][16];
    int r0 = 0;
    if (!tail && n >= 32) {
        lstmc_amx_configure(16);
        for (; r0 + 32 <= n; r0 += 32)
            bf16_amx_32(A + (size_t)r0 * lda, lda, blocks, set, K, nstrips, g0, Wg, gstep,
                        bscale, u0, u1, C + (size_t)r0 * ldc, ldc);
    }
    for (; r0 < n; r0 += 16) {
        const int M = n - r0 < 16 ? n - r0 : 16;
        lstmc_amx_configure(M);    /* sums 0-3, A's 32-k blocks 4 and 5, B 6 and 7 in turn */
        const uint16_t *a = A + (size_t)r0 * lda;
        for (int q0 = 0; q0 < nstrips; q0 += 4) {
            const int S = nstrips - q0 < 4 ? nstrips - q0 : 4;
            const uint8_t *w[4];
            for (int s = 0; s < 4; s++) {
                const int q = q0 + (s < S ? s : S - 1);
                w[s] = strip_at(set, u0 + q / Wg * U, q % Wg, Wg, K);
            }
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            /* a block: A into tile TA, then the four strips through B tiles 6 and 7 in turn
             * (a strip past the last repeats it, its sums unused) */
#define AMX_BLOCK(TA, kb)                                                                      \
    do {                                                                                       \
        const size_t at = (size_t)(kb) * 16 * 64;                                              \
        _tile_loadd(TA, a + (size_t)(kb) * 32, 2 * (size_t)lda);                               \
        _tile_loadd(6, w[0] + at, 64);                                                         \
        _tile_loadd(7, w[1] + at, 64);                                                         \
        _tile_dpbf16ps(0, TA, 6);                                                              \
        _tile_dpbf16ps(1, TA, 7);                                                              \
        _tile_loadd(6, w[2] + at, 64);                                                         \
        _tile_loadd(7, w[3] + at, 64);                                                         \
        _tile_dpbf16ps(2, TA, 6);                                                              \
        _tile_dpbf16ps(3, TA, 7);                                                              \
    } while (0)
            int kb = 0;
            for (; kb + 1 < blocks; kb += 2) {
                AMX_BLOCK(4, kb);
                AMX_BLOCK(5, kb + 1);
            }
            if (kb < blocks)
                AMX_BLOCK(4, kb);
#undef AMX_BLOCK
            /* whole strips without tail pairs go straight to C; the others through sums */
            int direct = !tail;
            float *dst[4];
            for (int s = 0; s < S; s++) {
                const int b0 = u0 + (q0 + s) / Wg * U, v = (q0 + s) % Wg;
                dst[s] = C + (size_t)r0 * ldc + (size_t)(g0 + v) * gstep +
                         (size_t)(b0 - u0) * bscale;
                direct &= u1 - b0 >= U;
            }
            if (direct && S == 4) {
                _tile_stored(0, dst[0], 4 * (size_t)ldc);
                _tile_stored(1, dst[1], 4 * (size_t)ldc);
                _tile_stored(2, dst[2], 4 * (size_t)ldc);
                _tile_stored(3, dst[3], 4 * (size_t)ldc);
                continue;
            }
            _tile_stored(0, sums[0], 64);
            _tile_stored(1, sums[1], 64);
            _tile_stored(2, sums[2], 64);
            _tile_stored(3, sums[3], 64);
            for (int s = 0; s < S; s++) {
                const int b0 = u0 + (q0 + s) / Wg * U;
                const int cnt = u1 - b0 < U ? u1 - b0 : U;
                const __mmask16 mask = (__mmask16)((1u << cnt) - 1);
                for (int r = 0; r < M; r++) {
                    __m512 acc = _mm512_loadu_ps(sums[s][r]);
                    for (int p = 0; p < tail; p++) {    /* the pairs past the blocks */
                        int32_t two;
                        memcpy(&two, a + (size_t)r * lda + (size_t)(blocks * 16 + p) * 2, 4);
                        const __m512i wp =
                            _mm512_loadu_si512(w[s] + (size_t)(blocks * 16 + p) * 64);
                        DPBF16(acc, _mm512_set1_epi32(two), wp);
                    }
                    _mm512_mask_storeu_ps(dst[s] + (size_t)r * ldc, mask, acc);
                }
            }
        }
    }
}
#endif

#if LSTMC_HAVE_BF16_AVX2
static const lstmc_qtiling BF16_AVX2 = {
    3, {0, 4, 2, 1}, {NULL, bf16_tile_avx2_1_4, bf16_tile_avx2_2_2, bf16_tile_avx2_3_1}};
static const lstmc_qtiling BF16_WIDE_AVX2 = {
    6,
    {0, 8, 4, 4, 4, 4, 4},
    {NULL, bf16_tile_wide_avx2_1_8, bf16_tile_wide_avx2_2_4, bf16_tile_wide_avx2_3_4,
     bf16_tile_wide_avx2_4_4, bf16_tile_wide_avx2_5_4, bf16_tile_wide_avx2_6_4}};
#if LSTMC_HAVE_BF16_AVX512
static const lstmc_qtiling BF16_AVX512 = {
    6,
    {0, 8, 4, 4, 4, 4, 4},
    {NULL, bf16_tile_avx512_1_8, bf16_tile_avx512_2_4, bf16_tile_avx512_3_4,
     bf16_tile_avx512_4_4, bf16_tile_avx512_5_4, bf16_tile_avx512_6_4}};
#endif

/* quant.c's lstmc_qgemm_tiles on bf16 strips (lda in elements) */
static void bf16_gemm_tiles(const lstmc_qtiling *tl, int n, const uint16_t *A, int lda, int K,
                            const uint8_t *set, int g0, int g1, int gstep, int bscale, int u0,
                            int u1, float *C, int ldc)
{
    lstmc_qgemm_tiles(tl, lstmc_bf16_strip_bytes(K), lstmc_bf16_row_elems(K) / 2, n,
                      (const uint8_t *)A, 2 * lda, NULL, set, g0, g1, gstep, bscale, u0, u1, C,
                      ldc);
}
#endif

int lstmc_bf16_avx512_supported(void)
{
#if LSTMC_HAVE_BF16_AVX512
    __builtin_cpu_init();
    return lstmc_avx512_supported() && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

/* found once: CPUID exits a virtual machine */
int lstmc_bf16_amx_supported(void)
{
#if LSTMC_HAVE_BF16_AMX
    static int state;               /* 0 unknown, 1 yes, -1 no; a race is harmless */
    int s = __atomic_load_n(&state, __ATOMIC_RELAXED);
    if (!s) {
        unsigned a, b, c, d;
        s = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1) && (d >> 24 & 1) &&
                    lstmc_bf16_avx512_supported() && lstmc_amx_permitted()
                ? 1
                : -1;
        __atomic_store_n(&state, s, __ATOMIC_RELAXED);
    }
    return s > 0;
#else
    return 0;
#endif
}

static int bf16_kernel = LSTMC_BF16_AUTO;
/* AMX from 2 rows on, and for one row where the strips walked fit well inside L2 (AMX CPUs
 * have 2 MB a core): there one VDPBF16PS every two cycles bounds the 16-lane tiles, while a
 * TDPBF16PS takes 1 KB of weights; from L3 AMX's tile loads wait longer than the tiles'
 * prefetched streams. LSTM B1 bf16, one thread, AMX at one row / the tiles
 * (ab_builds.py --in-process --quantize bf16): H256 T150 (W_hh 512 KB) 0.86, H512 T25
 * (2 MB) 1.08; at two rows H512 0.95 (docs/decisions.md#bf16-inference) */
#ifndef LSTMC_BF16_AMX_MIN_ROWS
#define LSTMC_BF16_AMX_MIN_ROWS 2
#endif
#define BF16_AMX_ONE_ROW_BYTES ((size_t)1 << 19)

void lstmc_set_bf16_kernel(int kernel)
{
    bf16_kernel =
        kernel >= LSTMC_BF16_AUTO && kernel <= LSTMC_BF16_WIDE_AVX2 ? kernel : LSTMC_BF16_AUTO;
}

int lstmc_bf16_kernel_for(void)
{
    const int wide = lstmc_bf16_avx512_supported(), avx2 = lstmc_avx2_supported();
    const int widest = wide ? LSTMC_BF16_AVX512 : avx2 ? LSTMC_BF16_AVX2 : LSTMC_BF16_C;
    switch (bf16_kernel) {
    case LSTMC_BF16_C: return LSTMC_BF16_C;
    case LSTMC_BF16_AVX2: return avx2 ? LSTMC_BF16_AVX2 : LSTMC_BF16_C;
    /* the 16-lane tiles: where the CPU lacks AVX-512 BF16, their build for AVX2 */
    case LSTMC_BF16_AVX512:
        return wide ? LSTMC_BF16_AVX512 : avx2 ? LSTMC_BF16_WIDE_AVX2 : LSTMC_BF16_C;
    case LSTMC_BF16_WIDE_AVX2: return avx2 ? LSTMC_BF16_WIDE_AVX2 : LSTMC_BF16_C;
    default: return lstmc_bf16_amx_supported() ? LSTMC_BF16_AMX : widest;
    }
}

void lstmc_bf16_gemm(int kernel, int n, const uint16_t *A, int lda, int K, const uint8_t *set,
                     int g0, int g1, int gstep, int bscale, int u0, int u1, float *C, int ldc)
{
    lstmc_bf16_gemm_keep(kernel, n, A, lda, K, set, g0, g1, gstep, bscale, u0, u1, C, ldc);
    lstmc_amx_release();
}

void lstmc_bf16_gemm_keep(int kernel, int n, const uint16_t *A, int lda, int K,
                          const uint8_t *set, int g0, int g1, int gstep, int bscale, int u0,
                          int u1, float *C, int ldc)
{
#if LSTMC_HAVE_BF16_AMX
    const size_t walked = (size_t)(u1 - u0 + U - 1) / U * (size_t)(g1 - g0) *
                          lstmc_bf16_strip_bytes(K);
    /* forced (lstmc_set_bf16_kernel: tests, benchmarks), every product; else where it pays */
    if (kernel == LSTMC_BF16_AMX &&
        (bf16_kernel == LSTMC_BF16_AMX || n >= LSTMC_BF16_AMX_MIN_ROWS ||
         (n == 1 && walked <= BF16_AMX_ONE_ROW_BYTES))) {
        bf16_gemm_amx(n, A, lda, K, set, g0, g1, gstep, bscale, u0, u1, C, ldc);
        return;
    }
#endif
#if LSTMC_HAVE_BF16_AVX2
    if (kernel == LSTMC_BF16_WIDE_AVX2) {
        bf16_gemm_tiles(&BF16_WIDE_AVX2, n, A, lda, K, set, g0, g1, gstep, bscale, u0, u1, C,
                        ldc);
        return;
    }
#endif
#if LSTMC_HAVE_BF16_AVX512
    if (kernel >= LSTMC_BF16_AVX512) {
        bf16_gemm_tiles(&BF16_AVX512, n, A, lda, K, set, g0, g1, gstep, bscale, u0, u1, C,
                        ldc);
        return;
    }
#endif
#if LSTMC_HAVE_BF16_AVX2
    if (kernel >= LSTMC_BF16_AVX2) {
        bf16_gemm_tiles(&BF16_AVX2, n, A, lda, K, set, g0, g1, gstep, bscale, u0, u1, C, ldc);
        return;
    }
#endif
    (void)kernel;
    bf16_gemm_c(n, A, lda, K, set, g0, g1, gstep, bscale, u0, u1, C, ldc);
}
