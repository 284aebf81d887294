/*
 * quant.c - int8 products for inference: weights quantized per row (one scale per gate
 * unit), packed once into strips; activations quantized per row at run time; exact int32
 * sums, dequantized as the tile stores them. The arithmetic is lstmc/reference.py's
 * quantize_int8 and int8_product, bit for bit, on every kernel.
 *
 * Activation rows are stored as u8 = q + 128 (q in [-127, 127]): AVX-512 VNNI's VPDPBUSD
 * multiplies unsigned bytes by signed ones. Since sum_k (q_k + 128) w_k = sum_k q_k w_k +
 * 128 sum_k w_k, each accumulator starts at -comp[n], comp[n] = 128 sum_k w[n, k], kept in the
 * strip beside the weights, and every kernel ends on the signed sum sum_k q_k w_k. Every
 * partial sum stays within 128 * 127 * K in magnitude: K <= LSTMC_Q8_MAX_K = 2^17 keeps it in
 * int32. The AVX2 kernel multiplies signed bytes with VPMADDUBSW on |w| and sign(w) * q
 * (|.| <= 127 on both sides, so a pair's sum, at most 2 * 127 * 127 = 32258, never
 * saturates) and adds the pairs with VPMADDWD; it subtracts the same 128 from its u8 rows.
 *
 * Packed layout of a gate set [g0, g1) (Wg = g1 - g0 blocks), K columns, Kp = K rounded up to
 * a multiple of 4: per block of U = LSTMC_PACK_UNITS units b0 .. b0 + U - 1 (units past H:
 * zero weights, comp 0, scale 0), Wg strips of lstmc_q8_strip_bytes(K) bytes, strip v of the
 * block at set + (b0 / U * Wg + v) * strip bytes:
 *     int32 comp[U]; float scale[U];                       (128 bytes)
 *     int8 w[Kp / 4][U][4]: w[g][l][i] = W[(g0 + v) H + b0 + l][4 g + i], zeros past K
 * A group of 4 k is one 64-byte vector whose 32-bit lane l holds unit l's four weights:
 * VPDPBUSD's operand as it is. Set g0 starts at pack + lstmc_q8_pack_bytes(H, K, g0).
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* syscall (AMX's permission) under -std=c99 */
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "internal.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(LSTMC_NO_DISPATCH)
#define LSTMC_HAVE_Q8_AVX2 1
#include <immintrin.h>
#else
#define LSTMC_HAVE_Q8_AVX2 0
#endif
#if LSTMC_HAVE_Q8_AVX2 && !defined(LSTMC_MAX_ISA_V3)
#define LSTMC_HAVE_Q8_VNNI 1
#else
#define LSTMC_HAVE_Q8_VNNI 0
#endif
#if LSTMC_HAVE_Q8_VNNI && defined(__linux__)
#define LSTMC_HAVE_Q8_AMX 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define LSTMC_HAVE_Q8_AMX 0
#endif

#define U LSTMC_PACK_UNITS
#define HEADER_BYTES (U * 8)            /* comp and scale */

int lstmc_q8_row_bytes(int K) { return (K + 3) / 4 * 4; }

size_t lstmc_q8_strip_bytes(int K) { return HEADER_BYTES + (size_t)U * lstmc_q8_row_bytes(K); }

size_t lstmc_q8_pack_bytes(int H, int K, int G)
{
    return ((size_t)H + U - 1) / U * (size_t)G * lstmc_q8_strip_bytes(K);
}

static uint8_t *strip_at(uint8_t *set, int b0, int v, int Wg, int K)
{
    return set + ((size_t)(b0 / U) * Wg + v) * lstmc_q8_strip_bytes(K);
}

void lstmc_q8_pack_gates(uint8_t *set, const int8_t *Wq, const float *scale, int H, int K,
                         int g0, int g1, int u0, int u1)
{
    const int Wg = g1 - g0, Kp = lstmc_q8_row_bytes(K);
    for (int b0 = u0; b0 < u1; b0 += U) {
        const int cnt = u1 - b0 < U ? u1 - b0 : U;
        for (int v = 0; v < Wg; v++) {
            uint8_t *strip = strip_at(set, b0, v, Wg, K);
            int32_t comp[U];
            float sc[U];
            int8_t *w = (int8_t *)(strip + HEADER_BYTES);
            for (int l = 0; l < U; l++) {
                const size_t n = (size_t)(g0 + v) * H + b0 + l;
                int32_t sum = 0;
                for (int k = 0; k < Kp; k++) {
                    const int8_t q = l < cnt && k < K ? Wq[n * K + k] : 0;
                    w[(size_t)(k / 4) * U * 4 + l * 4 + k % 4] = q;
                    sum += q;
                }
                comp[l] = 128 * sum;
                sc[l] = l < cnt ? scale[n] : 0;
            }
            memcpy(strip, comp, sizeof comp);
            memcpy(strip + sizeof comp, sc, sizeof sc);
        }
    }
}

/* reference.quantize_int8, a row at a time: the peak |a| (0 if a value is not finite, or if
 * the peak is below 2^-120), the float32 reciprocal 127 / peak once, then rint(a * inv)
 * clamped to [-127, 127]; cloned per x86 level, as the cell kernels are (internal.h), for
 * the baseline's rintf is a scalar sequence */
LSTMC_DISPATCH void lstmc_q8_quantize_rows(uint8_t *q, int ldq, float *scale, const float *a,
                                           int lda, int n, int K)
{
    const int Kp = lstmc_q8_row_bytes(K);
    for (int r = 0; r < n; r++) {
        const float *x = a + (size_t)r * lda;
        uint8_t *out = q + (size_t)r * ldq;
        /* the peak on the bits of |x|, where integer order is float order and Inf / NaN
         * come above every finite value: an integer max, which vectorises (a float max
         * with NaN's rules does not: 8 % of an int8 B4 forward ran in this scalar loop) */
        uint32_t top = 0;
        for (int k = 0; k < K; k++) {
            uint32_t bits;
            memcpy(&bits, x + k, sizeof bits);
            bits &= 0x7fffffffu;
            top = bits > top ? bits : top;
        }
        const int finite = top < 0x7f800000u;
        float peak;
        memcpy(&peak, &top, sizeof peak);
        if (!finite || peak < 0x1p-120f)    /* reference.INT8_TINY: 127 / peak overflows */
            peak = 0;
        /* inv 0 (a zero, tiny or non-finite row) makes every q 0: no branch in the loop,
         * which so vectorises (on a non-finite row, x * 0 may be NaN: the select takes 0) */
        const float inv = peak > 0 ? 127.f / peak : 0.f;
        for (int k = 0; k < K; k++) {
            float v = rintf(x[k] * inv);
            v = v > 127.f ? 127.f : v < -127.f ? -127.f : v == v ? v : 0.f;
            out[k] = (uint8_t)((int)v + 128);
        }
        for (int k = K; k < Kp; k++)
            out[k] = 128;
        scale[r] = finite ? peak / 127.f : NAN;
    }
}

/* The portable kernel, and the obviously correct one: per row and strip, U sums over k */
static void q8_gemm_c(int n, const uint8_t *A, int lda, const float *a_scale, int K,
                      const uint8_t *set, int g0, int g1, int gstep, int bscale, int u0, int u1,
                      float *C, int ldc)
{
    const int Wg = g1 - g0, Kp = lstmc_q8_row_bytes(K);
    for (int j = 0; j < n; j++)
        for (int b0 = u0; b0 < u1; b0 += U) {
            const int cnt = u1 - b0 < U ? u1 - b0 : U;
            const uint8_t *a = A + (size_t)j * lda;
            for (int v = 0; v < Wg; v++) {
                const uint8_t *strip = strip_at((uint8_t *)set, b0, v, Wg, K);
                const int8_t *w = (const int8_t *)(strip + HEADER_BYTES);
                int32_t comp[U];
                float sc[U];
                memcpy(comp, strip, sizeof comp);
                memcpy(sc, strip + sizeof comp, sizeof sc);
                float *dst = C + (size_t)j * ldc + (size_t)(g0 + v) * gstep +
                             (size_t)(b0 - u0) * bscale;
                for (int l = 0; l < cnt; l++) {
                    int32_t acc = -comp[l];
                    for (int k = 0; k < Kp; k++)
                        acc += (int32_t)a[k] * w[(size_t)(k / 4) * U * 4 + l * 4 + k % 4];
                    dst[l] = ((float)acc * a_scale[j]) * sc[l];
                }
            }
        }
}

#if LSTMC_HAVE_Q8_AVX2
/* The 8-lane tiles' store: each strip's two halves of exact sums acc[r][2 s + h],
 * dequantised ((sum * a_scale) * w_scale) into its first cnt units */
#define Q8_STORE8(R, S)                                                                        \
        _Pragma("GCC unroll 16") for (int s = 0; s < S; s++)                                  \
            _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {                              \
                const __m256 sc = _mm256_loadu_ps((const float *)(t->strip[s] + U * 4) + 8 * h); \
                const int n8 = t->cnt[s] - 8 * h;                                              \
                const __m256i mask = _mm256_cmpgt_epi32(                                       \
                    _mm256_set1_epi32(n8), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));         \
                _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                          \
                    __m256 f = _mm256_cvtepi32_ps(acc[r][2 * s + h]);                          \
                    f = _mm256_mul_ps(_mm256_mul_ps(f, _mm256_set1_ps(a_scale[r])), sc);      \
                    if (n8 > 0)                                                                \
                        _mm256_maskstore_ps(C + (size_t)r * ldc + t->dst[s] + 8 * h, mask, f); \
                }                                                                              \
            }

/* AVX2, 8 lanes: a strip's group of 4 k is two 32-byte halves (units 0-7, 8-15). Per row and
 * group, the row's four bytes broadcast and turned back into q (xor 0x80), signed by each
 * weight: VPMADDUBSW (|w| unsigned x sign(w) q signed) and VPMADDWD with ones give each unit's
 * 4-term sum of q w, so the accumulators start at 0 (no comp). R rows x S strips, 2 R S
 * accumulators. */
#define Q8_AVX2_TILE(R, S)                                                                     \
    __attribute__((target("avx2,fma"))) static void q8_tile_avx2_##R##_##S(                   \
        int groups, const uint8_t *A, int lda, const float *a_scale, const lstmc_qtile_args *t,    \
        float *C, int ldc)                                                                     \
    {                                                                                          \
        __m256i acc[R][2 * S];                                                                 \
        const __m256i bias = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);       \
        _Pragma("GCC unroll 16") for (int s = 0; s < 2 * S; s++)                              \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                \
                acc[r][s] = _mm256_setzero_si256();                                            \
        for (int g = 0; g < groups; g++) {                                                     \
            __m256i qa[R];                                                                     \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                              \
                int32_t four;                                                                  \
                memcpy(&four, A + (size_t)r * lda + 4 * (size_t)g, 4);                         \
                qa[r] = _mm256_xor_si256(_mm256_set1_epi32(four), bias);                       \
            }                                                                                  \
            _Pragma("GCC unroll 16") for (int s = 0; s < S; s++)                              \
                _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {                          \
                    const __m256i w = _mm256_loadu_si256(                                      \
                        (const __m256i *)(t->strip[s] + HEADER_BYTES + (size_t)g * 64) + h);   \
                    const __m256i aw = _mm256_sign_epi8(w, w);                                 \
                    _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                      \
                        const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(qa[r], w)); \
                        acc[r][2 * s + h] =                                                    \
                            _mm256_add_epi32(acc[r][2 * s + h], _mm256_madd_epi16(p, ones));   \
                    }                                                                          \
                }                                                                              \
        }                                                                                      \
        Q8_STORE8(R, S);                                                                       \
    }
/* accumulators, broadcast rows and a strip's w, |w| and product within the 16 ymm registers */
Q8_AVX2_TILE(1, 4)
Q8_AVX2_TILE(2, 2)
Q8_AVX2_TILE(3, 1)
Q8_AVX2_TILE(4, 1)
#endif

#if LSTMC_HAVE_Q8_VNNI
/* AVX-VNNI, 8 lanes (CPUs with VEX-encoded VPDPBUSD and no AVX-512: Alder Lake and later
 * cores): a strip's group of 4 k is two 32-byte halves, VPDPBUSD adds each lane's four
 * u8 x s8 products of the row as stored (q + 128), so the accumulators start at -comp, as
 * AVX-512 VNNI's do. In place, as DPBUSD below and for the same reason. R rows x S strips,
 * 2 R S accumulators. One product, K512 H256 G4, AVX-VNNI / AVX2: 1 row 7.2 / 13.2 us, 4
 * rows 17.2 / 39, 16 rows (K256) 34 / 75 (measured on an AVX-512 CPU, which has both). */
#define DPBUSD_VEX(acc, a, w) __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a), "x"(w))
#define Q8_AVXVNNI_TILE(R, S)                                                                  \
    __attribute__((target("avx2,fma,avxvnni"))) static void q8_tile_avxvnni_##R##_##S(        \
        int groups, const uint8_t *A, int lda, const float *a_scale, const lstmc_qtile_args *t,    \
        float *C, int ldc)                                                                     \
    {                                                                                          \
        __m256i acc[R][2 * S];                                                                 \
        _Pragma("GCC unroll 16") for (int s = 0; s < S; s++)                                  \
            _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {                              \
                const __m256i c = _mm256_sub_epi32(                                            \
                    _mm256_setzero_si256(),                                                    \
                    _mm256_loadu_si256((const __m256i *)t->strip[s] + h));                     \
                _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                            \
                    acc[r][2 * s + h] = c;                                                     \
            }                                                                                  \
        for (int g = 0; g < groups; g++) {                                                     \
            __m256i qa[R];                                                                     \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                              \
                int32_t four;                                                                  \
                memcpy(&four, A + (size_t)r * lda + 4 * (size_t)g, 4);                         \
                qa[r] = _mm256_set1_epi32(four);                                               \
            }                                                                                  \
            _Pragma("GCC unroll 16") for (int s = 0; s < S; s++)                              \
                _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {                          \
                    const __m256i w = _mm256_loadu_si256(                                      \
                        (const __m256i *)(t->strip[s] + HEADER_BYTES + (size_t)g * 64) + h);   \
                    _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                        \
                        DPBUSD_VEX(acc[r][2 * s + h], qa[r], w);                               \
                }                                                                              \
        }                                                                                      \
        Q8_STORE8(R, S);                                                                       \
    }
/* accumulators, broadcast rows and a strip's w within the 16 ymm registers */
Q8_AVXVNNI_TILE(1, 4)
Q8_AVXVNNI_TILE(2, 3)
Q8_AVXVNNI_TILE(3, 2)
Q8_AVXVNNI_TILE(4, 1)
#endif

#if LSTMC_HAVE_Q8_AVX2
/* The 16-lane tiles: a strip's group of 4 k is one vector, whose lane l gets the four u8 x s8
 * products of the row's four bytes (as stored, q + 128) and unit l's weights, from -comp.
 * Written once in GCC's vector extensions with the dot product as a parameter: VPDPBUSD for
 * AVX-512 VNNI, and a plain-C twin for the same tile built for AVX2 (LSTMC_Q8_WIDE_AVX2: the
 * wide tile's tests on CPUs without AVX-512; slow, never chosen automatically). R rows x S
 * strips (at most 24 of the 32 zmm registers). */
typedef int32_t q8_vec __attribute__((vector_size(64), aligned(4), may_alias));
typedef float q8_fvec __attribute__((vector_size(64), aligned(4), may_alias));
/* acc += VPDPBUSD's sums in plain C: per lane the four products, exact in int (a call
 * through memory: the test build needs no speed, and inlined into every tile it made them
 * too large for GCC's debug-info tracking) */
__attribute__((noinline)) static void dpbusd_c(void *acc, const void *a, const void *w)
{
    int32_t s[16];
    uint8_t ab[64];
    int8_t wb[64];
    memcpy(s, acc, 64);
    memcpy(ab, a, 64);
    memcpy(wb, w, 64);
    for (int l = 0; l < 16; l++)
        for (int i = 0; i < 4; i++)
            s[l] += ab[4 * l + i] * wb[4 * l + i];
    memcpy(acc, s, 64);
}
#define DPBUSD_C(acc, a, w) dpbusd_c(&(acc), &(a), &(w))
#define Q8_WIDE_TILE(ISA, TARGET, DOT, R, S)                                                   \
    __attribute__((target(TARGET))) static void q8_tile_##ISA##_##R##_##S(                     \
        int groups, const uint8_t *A, int lda, const float *a_scale, const lstmc_qtile_args *t,    \
        float *C, int ldc)                                                                     \
    {                                                                                          \
        q8_vec acc[R][S];                                                                      \
        _Pragma("GCC unroll 16") for (int s = 0; s < S; s++) {                                 \
            const q8_vec c = -*(const q8_vec *)t->strip[s];                                    \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                \
                acc[r][s] = c;                                                                 \
        }                                                                                      \
        for (int g = 0; g < groups; g++) {                                                     \
            q8_vec w[S];                                                                       \
            _Pragma("GCC unroll 16") for (int s = 0; s < S; s++)                               \
                w[s] = *(const q8_vec *)(t->strip[s] + HEADER_BYTES + (size_t)g * 64);         \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                              \
                int32_t four;                                                                  \
                memcpy(&four, A + (size_t)r * lda + 4 * (size_t)g, 4);                         \
                const q8_vec a = (q8_vec){0} + four;                                           \
                _Pragma("GCC unroll 16") for (int s = 0; s < S; s++)                           \
                    DOT(acc[r][s], a, w[s]);                                                   \
            }                                                                                  \
        }                                                                                      \
        _Pragma("GCC unroll 16") for (int s = 0; s < S; s++) {                                 \
            const q8_fvec sc = *(const q8_fvec *)(t->strip[s] + U * 4);                        \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                              \
                q8_fvec f = __builtin_convertvector(acc[r][s], q8_fvec) * a_scale[r];          \
                f = f * sc;                                                                    \
                float *to = C + (size_t)r * ldc + t->dst[s];                                   \
                if (t->cnt[s] == U)                                                            \
                    *(q8_fvec *)to = f;                                                        \
                else                                                                           \
                    for (int l = 0; l < t->cnt[s]; l++)                                        \
                        to[l] = f[l];                                                          \
            }                                                                                  \
        }                                                                                      \
    }
#define Q8_WIDE_TILES(ISA, TARGET, DOT)                                                        \
    Q8_WIDE_TILE(ISA, TARGET, DOT, 1, 8)                                                       \
    Q8_WIDE_TILE(ISA, TARGET, DOT, 2, 4)                                                       \
    Q8_WIDE_TILE(ISA, TARGET, DOT, 3, 4)                                                       \
    Q8_WIDE_TILE(ISA, TARGET, DOT, 4, 4)                                                       \
    Q8_WIDE_TILE(ISA, TARGET, DOT, 5, 4)                                                       \
    Q8_WIDE_TILE(ISA, TARGET, DOT, 6, 4)
Q8_WIDE_TILES(wide_avx2, "avx2,fma", DPBUSD_C)
#endif

#if LSTMC_HAVE_Q8_VNNI
/* acc += the u8 x s8 products of a and w, VPDPBUSD written in place: with the intrinsic
 * GCC 12 copied the 24 accumulators of a 6 x 4 tile through one register and spilled them
 * (I = H = 512, B64 T25, one thread: the tile at 64 % of the time) */
#define DPBUSD(acc, a, w) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(w))
Q8_WIDE_TILES(vnni, "avx512f,avx512bw,avx512vnni", DPBUSD)
#endif

#if LSTMC_HAVE_Q8_AMX
/* AMX (TDPBUSD): C (M x 16 units, int32) += A (M rows x 64 bytes of u8) . B (16 groups of 4 k
 * x 16 units, s8), which is a strip's run of 16 groups as it lies (64-byte rows): a strip
 * needs no repacking. Tiles: tmm0-3 the sums of four strips, tmm4 / tmm5 A's 64-k blocks in
 * turn, tmm6 / tmm7 B's; the groups past the last whole block go through VPDPBUSD on the
 * stored sums. Sums start at 0 and run over u8 = q + 128; the strip's comp comes off at the
 * end (wrapping, as VPADDD does: the sum of u8 products may pass 2^31 at large K, the
 * difference, the exact signed sum, never does), so the result is every other kernel's bit
 * for bit. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

static __thread int amx_rows;   /* the M this thread's tiles are configured for; 0: released */

__attribute__((target("amx-tile"))) void lstmc_amx_configure(int M)
{
    if (amx_rows == M)
        return;
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++)
        cfg.rows[t] = (uint8_t)(t < 6 ? M : 16), cfg.colsb[t] = 64;
    /* GCC 12 takes LDTILECFG to read only cfg's first bytes and drops the other stores (its
     * code here once loaded palette 1 with no tile): cfg escapes first, all 64 bytes kept */
    __asm__ volatile("" : : "r"(&cfg) : "memory");
    _tile_loadconfig(&cfg);
    amx_rows = M;
}

__attribute__((target("amx-tile"))) void lstmc_amx_release(void)
{
    if (amx_rows) {
        _tile_release();
        amx_rows = 0;
    }
}

int lstmc_amx_configured_rows(void) { return amx_rows; }

#define XFEATURE_XTILEDATA 18
#define ARCH_REQ_XCOMP_PERM 0x1023

/* The kernel lets this process use the AMX tile data (asked once per process; quant_bf16.c's
 * AMX kernel asks here too) */
int lstmc_amx_permitted(void)
{
    static int state;               /* 0 unknown, 1 yes, -1 no; a race is harmless */
    int s = __atomic_load_n(&state, __ATOMIC_RELAXED);
    if (!s) {
        s = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 1 : -1;
        __atomic_store_n(&state, s, __ATOMIC_RELAXED);
    }
    return s > 0;
}

/* The CPU has AMX-INT8 and the kernel lets this process use it (found once: CPUID exits a
 * virtual machine) */
static int amx_usable(void)
{
    static int state;               /* 0 unknown, 1 yes, -1 no; a race is harmless */
    int s = __atomic_load_n(&state, __ATOMIC_RELAXED);
    if (!s) {
        unsigned a, b, c, d;
        s = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1) && (d >> 25 & 1) &&
                    lstmc_q8_vnni_supported() && lstmc_amx_permitted()
                ? 1
                : -1;
        __atomic_store_n(&state, s, __ATOMIC_RELAXED);
    }
    return s > 0;
}

/* The weights of strips q0 .. q0 + width - 1 (their k groups, past the header) into w; a
 * strip past the last repeats it. Returns how many are real. */
static int strip_group(const uint8_t *set, int q0, int width, int nstrips, int u0, int Wg,
                       int K, const uint8_t **w)
{
    const int S = nstrips - q0 < width ? nstrips - q0 : width;
    for (int s = 0; s < width; s++) {
        const int q = q0 + (s < S ? s : S - 1);
        w[s] = strip_at((uint8_t *)set, u0 + q / Wg * U, q % Wg, Wg, K) + HEADER_BYTES;
    }
    return S;
}

/* Tile t's 16 x 16 int32 sums, dequantised, into 16 rows of C at dst: (sum - comp) times the
 * row's scale and the unit's, the first cnt units */
__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw"))) static void
q8_amx_store(int32_t (*sums)[16], const uint8_t *strip, const float *a_scale, float *dst,
             int ldc, int cnt)
{
    const __mmask16 mask = (__mmask16)((1u << cnt) - 1);
    const __m512i comp = _mm512_loadu_si512(strip);
    const __m512 sc = _mm512_loadu_ps((const float *)(strip + U * 4));
    for (int r = 0; r < 16; r++) {
        __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_loadu_si512(sums[r]), comp));
        f = _mm512_mul_ps(_mm512_mul_ps(f, _mm512_set1_ps(a_scale[r])), sc);
        _mm512_mask_storeu_ps(dst + (size_t)r * ldc, mask, f);
    }
}

/* 32 rows at once when K is whole 64-k blocks, as quant_bf16.c's bf16_amx_32: rows 0-15 and
 * 16-31 in A tiles 4 and 5, two strips in B tiles 6 and 7, four sums (tmm0-3), so that each
 * strip's block is loaded once for the 32 rows, half the weight traffic of two 16-row passes
 * (LSTM I128 H256 B32 T100 int8 forward, one thread: see docs/decisions.md#int8-inference) */
__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vnni"))) static void
q8_amx_32(const uint8_t *a, int lda, const float *a_scale, int blocks, const uint8_t *set, int K,
          int nstrips, int g0, int Wg, int gstep, int bscale, int u0, int u1, float *C, int ldc)
{
    int32_t sums[16][16];
    for (int q0 = 0; q0 < nstrips; q0 += 2) {
        const uint8_t *w[2];
        const int S = strip_group(set, q0, 2, nstrips, u0, Wg, K, w);
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int kb = 0; kb < blocks; kb++) {
            const size_t at = (size_t)kb * 16 * 64;
            _tile_loadd(4, a + (size_t)kb * 64, lda);
            _tile_loadd(6, w[0] + at, 64);
            _tile_dpbusd(0, 4, 6);
            _tile_loadd(5, a + 16 * (size_t)lda + (size_t)kb * 64, lda);
            _tile_dpbusd(1, 5, 6);
            _tile_loadd(7, w[1] + at, 64);
            _tile_dpbusd(2, 4, 7);
            _tile_dpbusd(3, 5, 7);
        }
        for (int s = 0; s < S; s++) {
            const int b0 = u0 + (q0 + s) / Wg * U, v = (q0 + s) % Wg;
            const int cnt = u1 - b0 < U ? u1 - b0 : U;
            const uint8_t *strip = w[s] - HEADER_BYTES;
            float *dst = C + (size_t)(g0 + v) * gstep + (size_t)(b0 - u0) * bscale;
            if (s == 0)
                _tile_stored(0, sums, 64);
            else
                _tile_stored(2, sums, 64);
            q8_amx_store(sums, strip, a_scale, dst, ldc, cnt);
            if (s == 0)
                _tile_stored(1, sums, 64);
            else
                _tile_stored(3, sums, 64);
            q8_amx_store(sums, strip, a_scale + 16, dst + 16 * (size_t)ldc, ldc, cnt);
        }
    }
}

__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vnni"))) static void
q8_gemm_amx(int n, const uint8_t *A, int lda, const float *a_scale, int K, const uint8_t *set,
            int g0, int g1, int gstep, int bscale, int u0, int u1, float *C, int ldc)
{
    const int Wg = g1 - g0, nstrips = (u1 - u0 + U - 1) / U * Wg, Kp = lstmc_q8_row_bytes(K);
    const int blocks = Kp / 64, tail = (Kp % 64) / 4;      /* 64-k blocks; groups past them */
    int32_t sums[4][16][16];
    int r0 = 0;
    if (!tail && n >= 32) {
        lstmc_amx_configure(16);
        for (; r0 + 32 <= n; r0 += 32)
            q8_amx_32(A + (size_t)r0 * lda, lda, a_scale + r0, blocks, set, K, nstrips, g0, Wg,
                      gstep, bscale, u0, u1, C + (size_t)r0 * ldc, ldc);
    }
    for (; r0 < n; r0 += 16) {
        const int M = n - r0 < 16 ? n - r0 : 16;
        lstmc_amx_configure(M);    /* sums 0-3, A's 64-k blocks 4 and 5, B 6 and 7 in turn */
        const uint8_t *a = A + (size_t)r0 * lda;
        for (int q0 = 0; q0 < nstrips; q0 += 4) {
            const uint8_t *w[4];
            const int S = strip_group(set, q0, 4, nstrips, u0, Wg, K, w);
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            /* a block: A into tile TA, then the four strips through B tiles 6 and 7 in turn,
             * so that one strip's load overlaps the other's product (a strip past the last
             * repeats it, its sums unused) */
#define AMX_BLOCK(TA, kb)                                                                      \
    do {                                                                                       \
        const size_t at = (size_t)(kb) * 16 * 64;                                              \
        _tile_loadd(TA, a + (size_t)(kb) * 64, lda);                                           \
        _tile_loadd(6, w[0] + at, 64);                                                         \
        _tile_loadd(7, w[1] + at, 64);                                                         \
        _tile_dpbusd(0, TA, 6);                                                                \
        _tile_dpbusd(1, TA, 7);                                                                \
        _tile_loadd(6, w[2] + at, 64);                                                         \
        _tile_loadd(7, w[3] + at, 64);                                                         \
        _tile_dpbusd(2, TA, 6);                                                                \
        _tile_dpbusd(3, TA, 7);                                                                \
    } while (0)
            int kb = 0;
            for (; kb + 1 < blocks; kb += 2) {
                AMX_BLOCK(4, kb);
                AMX_BLOCK(5, kb + 1);
            }
            if (kb < blocks)
                AMX_BLOCK(4, kb);
#undef AMX_BLOCK
            _tile_stored(0, sums[0], 64);
            _tile_stored(1, sums[1], 64);
            _tile_stored(2, sums[2], 64);
            _tile_stored(3, sums[3], 64);
            for (int s = 0; s < S; s++) {
                const int q = q0 + s, b0 = u0 + q / Wg * U, v = q % Wg;
                const uint8_t *strip = w[s] - HEADER_BYTES;
                const int cnt = u1 - b0 < U ? u1 - b0 : U;
                const __mmask16 mask = (__mmask16)((1u << cnt) - 1);
                const __m512i comp = _mm512_loadu_si512(strip);
                const __m512 sc = _mm512_loadu_ps((const float *)(strip + U * 4));
                float *dst = C + (size_t)r0 * ldc + (size_t)(g0 + v) * gstep +
                             (size_t)(b0 - u0) * bscale;
                for (int r = 0; r < M; r++) {
                    __m512i acc = _mm512_loadu_si512(sums[s][r]);
                    for (int g = 0; g < tail; g++) {    /* the groups past the blocks */
                        int32_t four;
                        memcpy(&four, a + (size_t)r * lda + (size_t)(blocks * 16 + g) * 4, 4);
                        const __m512i wg =
                            _mm512_loadu_si512(w[s] + (size_t)(blocks * 16 + g) * 64);
                        DPBUSD(acc, _mm512_set1_epi32(four), wg);
                    }
                    __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, comp));
                    f = _mm512_mul_ps(_mm512_mul_ps(f, _mm512_set1_ps(a_scale[r0 + r])), sc);
                    _mm512_mask_storeu_ps(dst + (size_t)r * ldc, mask, f);
                }
            }
        }
    }
}
#endif

#if !LSTMC_HAVE_Q8_AMX
void lstmc_amx_release(void) {}
int lstmc_amx_configured_rows(void) { return 0; }
#endif

#if LSTMC_HAVE_Q8_AVX2
static const lstmc_qtiling Q8_AVX2 = {4,
                                      {0, 4, 2, 1, 1},
                                      {NULL, q8_tile_avx2_1_4, q8_tile_avx2_2_2,
                                       q8_tile_avx2_3_1, q8_tile_avx2_4_1}};
static const lstmc_qtiling Q8_WIDE_AVX2 = {6,
                                           {0, 8, 4, 4, 4, 4, 4},
                                           {NULL, q8_tile_wide_avx2_1_8, q8_tile_wide_avx2_2_4,
                                            q8_tile_wide_avx2_3_4, q8_tile_wide_avx2_4_4,
                                            q8_tile_wide_avx2_5_4, q8_tile_wide_avx2_6_4}};
#if LSTMC_HAVE_Q8_VNNI
static const lstmc_qtiling Q8_AVXVNNI = {4,
                                         {0, 4, 3, 2, 1},
                                         {NULL, q8_tile_avxvnni_1_4, q8_tile_avxvnni_2_3,
                                          q8_tile_avxvnni_3_2, q8_tile_avxvnni_4_1}};
static const lstmc_qtiling Q8_VNNI = {6,
                                      {0, 8, 4, 4, 4, 4, 4},
                                      {NULL, q8_tile_vnni_1_8, q8_tile_vnni_2_4, q8_tile_vnni_3_4,
                                       q8_tile_vnni_4_4, q8_tile_vnni_5_4, q8_tile_vnni_6_4}};
#endif
#endif

/* Rows in chunks of the tiling's most, each over every strip (block by block, gates within a
 * block) in tiles of its width; a tile past the last strip repeats it without storing. The
 * walk of int8's tiles here and of bf16's (quant_bf16.c). */
void lstmc_qgemm_tiles(const lstmc_qtiling *tl, size_t strip_bytes, int steps, int n,
                       const uint8_t *A, int lda, const float *a_scale, const uint8_t *set,
                       int g0, int g1, int gstep, int bscale, int u0, int u1, float *C, int ldc)
{
    const int Wg = g1 - g0, nstrips = (u1 - u0 + U - 1) / U * Wg;
    for (int r0 = 0; r0 < n;) {
        const int R = n - r0 < tl->rows ? n - r0 : tl->rows, S = tl->strips[R];
        for (int q0 = 0; q0 < nstrips; q0 += S) {
            lstmc_qtile_args t;
            for (int s = 0; s < S; s++) {
                const int q = q0 + s < nstrips ? q0 + s : nstrips - 1;
                const int b0 = u0 + q / Wg * U, v = q % Wg;
                t.strip[s] = set + ((size_t)(b0 / U) * Wg + v) * strip_bytes;
                t.dst[s] = (g0 + v) * gstep + (b0 - u0) * bscale;
                t.cnt[s] = q0 + s >= nstrips ? 0 : u1 - b0 < U ? u1 - b0 : U;
            }
            tl->run[R](steps, A + (size_t)r0 * lda, lda, a_scale ? a_scale + r0 : NULL, &t,
                       C + (size_t)r0 * ldc, ldc);
        }
        r0 += R;
    }
}

#if LSTMC_HAVE_Q8_AVX2
/* lstmc_qgemm_tiles on int8 strips */
static void q8_gemm_tiles(const lstmc_qtiling *tl, int n, const uint8_t *A, int lda,
                          const float *a_scale, int K, const uint8_t *set, int g0, int g1,
                          int gstep, int bscale, int u0, int u1, float *C, int ldc)
{
    lstmc_qgemm_tiles(tl, lstmc_q8_strip_bytes(K), lstmc_q8_row_bytes(K) / 4, n, A, lda,
                      a_scale, set, g0, g1, gstep, bscale, u0, u1, C, ldc);
}
#endif

int lstmc_q8_avxvnni_supported(void)
{
#if LSTMC_HAVE_Q8_VNNI
    __builtin_cpu_init();
    return lstmc_avx2_supported() && __builtin_cpu_supports("avxvnni");
#else
    return 0;
#endif
}

int lstmc_q8_vnni_supported(void)
{
#if LSTMC_HAVE_Q8_VNNI
    __builtin_cpu_init();
    return lstmc_avx512_supported() && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

static int q8_kernel = LSTMC_Q8_AUTO;
/* AMX from 4 rows on, and from 3 where the strips walked are at most 1.5 MB (in L2; AMX CPUs
 * have 2 MB a core): from L3 the VPDPBUSD tiles' prefetched streams keep up better than AMX's
 * tile loads. LSTM T25 int8 forward, AMX at 3 rows / the tiles (ab_builds.py --in-process
 * --quantize int8): H512 B3 0.84 (0.85 at two threads), H1024 B3 (4 MB) 1.06; at 2 rows H512
 * 1.05, so fewer rows keep VPDPBUSD. Neither where the strips are under 32 KB: there a pass's
 * tile stores outweigh its few TDPBUSD. LSTM T50 B4, one thread, the whole forward on the
 * tiles / on AMX: H32 (5 KB) 0.80, H64 (18 KB) 0.87, H128 (70 KB) 1.08; H32 B16 0.78 */
#ifndef LSTMC_Q8_AMX_MIN_ROWS
#define LSTMC_Q8_AMX_MIN_ROWS 4
#endif
#define Q8_AMX_NEAR_ROWS 3
#define Q8_AMX_NEAR_BYTES ((size_t)3 << 19)
#define Q8_AMX_MIN_BYTES ((size_t)32 << 10)

void lstmc_set_q8_kernel(int kernel)
{
    q8_kernel = kernel >= LSTMC_Q8_AUTO && kernel <= LSTMC_Q8_WIDE_AVX2 ? kernel : LSTMC_Q8_AUTO;
}

int lstmc_get_q8_kernel(void) { return q8_kernel; }

int lstmc_q8_amx_supported(void)
{
#if LSTMC_HAVE_Q8_AMX
    return amx_usable();
#else
    return 0;
#endif
}

int lstmc_q8_kernel_for(void)
{
    const int vnni = lstmc_q8_vnni_supported(), avx2 = lstmc_avx2_supported();
    const int avxvnni = avx2 && lstmc_q8_avxvnni_supported();
    const int narrow = avxvnni ? LSTMC_Q8_AVXVNNI : avx2 ? LSTMC_Q8_AVX2 : LSTMC_Q8_C;
    const int widest = vnni ? LSTMC_Q8_AVX512VNNI : narrow;
    switch (q8_kernel) {
    case LSTMC_Q8_C: return LSTMC_Q8_C;
    case LSTMC_Q8_AVX2: return avx2 ? LSTMC_Q8_AVX2 : LSTMC_Q8_C;
    case LSTMC_Q8_AVXVNNI: return narrow;
    /* the 16-lane tiles: where the CPU lacks AVX-512 VNNI, their build for AVX2 */
    case LSTMC_Q8_AVX512VNNI:
        return vnni ? LSTMC_Q8_AVX512VNNI : avx2 ? LSTMC_Q8_WIDE_AVX2 : LSTMC_Q8_C;
    case LSTMC_Q8_WIDE_AVX2: return avx2 ? LSTMC_Q8_WIDE_AVX2 : LSTMC_Q8_C;
    default: return lstmc_q8_amx_supported() ? LSTMC_Q8_AMX : widest;
    }
}

void lstmc_q8_gemm(int kernel, int n, const uint8_t *A, int lda, const float *a_scale, int K,
                   const uint8_t *set, int g0, int g1, int gstep, int bscale, int u0, int u1,
                   float *C, int ldc)
{
    lstmc_q8_gemm_keep(kernel, n, A, lda, a_scale, K, set, g0, g1, gstep, bscale, u0, u1, C, ldc);
    lstmc_amx_release();
}

void lstmc_q8_gemm_keep(int kernel, int n, const uint8_t *A, int lda, const float *a_scale,
                        int K, const uint8_t *set, int g0, int g1, int gstep, int bscale, int u0,
                        int u1, float *C, int ldc)
{
#if LSTMC_HAVE_Q8_AMX
    const size_t walked = (size_t)(u1 - u0 + U - 1) / U * (size_t)(g1 - g0) *
                          lstmc_q8_strip_bytes(K);
    /* forced (lstmc_set_q8_kernel: tests, benchmarks), every product; else where it pays */
    if (kernel == LSTMC_Q8_AMX &&
        (q8_kernel == LSTMC_Q8_AMX ||
         (walked >= Q8_AMX_MIN_BYTES &&
          (n >= LSTMC_Q8_AMX_MIN_ROWS || (n >= Q8_AMX_NEAR_ROWS && walked <= Q8_AMX_NEAR_BYTES))))) {
        q8_gemm_amx(n, A, lda, a_scale, K, set, g0, g1, gstep, bscale, u0, u1, C, ldc);
        return;
    }
#endif
#if LSTMC_HAVE_Q8_AVX2
    if (kernel == LSTMC_Q8_WIDE_AVX2) {
        q8_gemm_tiles(&Q8_WIDE_AVX2, n, A, lda, a_scale, K, set, g0, g1, gstep, bscale, u0, u1,
                      C, ldc);
        return;
    }
#endif
#if LSTMC_HAVE_Q8_VNNI
    if (kernel >= LSTMC_Q8_AVXVNNI) {
        q8_gemm_tiles(kernel == LSTMC_Q8_AVXVNNI ? &Q8_AVXVNNI : &Q8_VNNI, n, A, lda, a_scale, K,
                      set, g0, g1, gstep, bscale, u0, u1, C, ldc);
        return;
    }
#endif
#if LSTMC_HAVE_Q8_AVX2
    if (kernel >= LSTMC_Q8_AVX2) {
        q8_gemm_tiles(&Q8_AVX2, n, A, lda, a_scale, K, set, g0, g1, gstep, bscale, u0, u1, C,
                      ldc);
        return;
    }
#endif
    (void)kernel;
    q8_gemm_c(n, A, lda, a_scale, K, set, g0, g1, gstep, bscale, u0, u1, C, ldc);
}
