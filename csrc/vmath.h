/*
 * vmath.h - float32 exp, sigmoid and tanh that compilers vectorise: plain arithmetic,
 * selects and an integer exponent, no libm calls, so a loop over units becomes SIMD code
 * (libm's expf/tanhf are scalar calls, which cost most of an elementwise pass).
 *
 * Accuracy against double-precision libm over 2^22 points of [-100, 100] (tests/test_vmath.py):
 * exp within 1 ulp on [-87.3, 88.3] (it clamps its argument to [-87.34, 88.38]), sigmoid
 * within 2.5 ulp, tanh within 1.25 ulp (or 1e-7 absolute where the result is tiny).
 * NaN propagates (every clamp is a comparison that NaN fails), +-Inf saturate.
 * float64 keeps libm: its parity targets (1e-9) leave no room for shortcuts.
 */
#ifndef LSTMC_VMATH_H
#define LSTMC_VMATH_H

#include <stdint.h>
#include <string.h>

/* exp(x) = 2^n e^r, n = round(x / ln 2), r = x - n ln 2 split in two constants so the
 * reduction is exact (Cody-Waite), e^r by Cephes' degree-7 polynomial. */
static inline float lstmc_expf(float x)
{
    x = x > 88.37626f ? 88.37626f : x;           /* e^x overflows above */
    x = x < -87.33654f ? -87.33654f : x;         /* stay normal: sigmoid needs no denormals */
    const float n = (x * 1.44269504f + 12582912.f) - 12582912.f;   /* round to nearest */
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    const int32_t bits = ((int32_t)n + 127) << 23;  /* 2^n, n in [-126, 127] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float lstmc_sigmoidf(float x) { return 1.f / (1.f + lstmc_expf(-x)); }

/* tanh: an odd polynomial near 0 (Cephes), where 1 - 2 / (e^2|x| + 1) would cancel */
static inline float lstmc_tanhf(float x)
{
    const float a = x < 0 ? -x : x;
    const float z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    const float small = p * z * x + x;
    const float big = 1.f - 2.f / (lstmc_expf(2.f * a) + 1.f);
    const float signed_big = x < 0 ? -big : big;
    return a < 0.625f ? small : signed_big;       /* NaN: a < 0.625 fails -> signed_big */
}

#endif /* LSTMC_VMATH_H */
