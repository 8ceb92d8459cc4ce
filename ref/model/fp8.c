/**
 * @file fp8.c
 * @brief e4m3fn table, encoder and activation quantization (docs/model.md §8.1, §8.3).
 *
 *   decode:    the 256-entry table below (bits S EEEE MMM, bias 7, no infinities, NaN = 0x7F/0xFF)
 *   encode:    NaN → 0x7F;  |x| → min(|x|, 448);  round to the nearest e4m3 value, ties to even
 *              (saturating like vLLM/SGLang and the sm_89+ converter, docs/model.md §11 #23)
 *   quantize:  for each group of 128 values along K (the last group may be shorter),
 *              s = max(amax, 1e-4) / 448,   xq_k = e4m3(x_k / s)        (docs/model.md §11 #14)
 * The weight side (128×128 blocks, W = e4m3 · scale_inv) is tensor.c; the GEMM is linear.c.
 */
#include "fp8.h"

#include <math.h>

/*
 * e4m3fn decoding (docs/model.md §8.1): bits S EEEE MMM, exponent bias 7.
 *   E = 0:  (-1)^S · 2^-6 · M/8          (subnormal, smallest 2^-9 = 0.001953125)
 *   E ≥ 1:  (-1)^S · 2^(E-7) · (1 + M/8)  (largest 2^8 · 1.75 = 448 at 0x7E)
 *   0x7F and 0xFF (S.1111.111) are NaN; there are no infinities.
 * tests/test_fp8.c recomputes every entry from this formula.
 */
const float fp8_e4m3_values[256] = {
    /* 0x00 */ 0.0f, 0.001953125f, 0.00390625f, 0.005859375f, 0.0078125f, 0.009765625f, 0.01171875f, 0.013671875f,
    /* 0x08 */ 0.015625f, 0.017578125f, 0.01953125f, 0.021484375f, 0.0234375f, 0.025390625f, 0.02734375f, 0.029296875f,
    /* 0x10 */ 0.03125f, 0.03515625f, 0.0390625f, 0.04296875f, 0.046875f, 0.05078125f, 0.0546875f, 0.05859375f,
    /* 0x18 */ 0.0625f, 0.0703125f, 0.078125f, 0.0859375f, 0.09375f, 0.1015625f, 0.109375f, 0.1171875f,
    /* 0x20 */ 0.125f, 0.140625f, 0.15625f, 0.171875f, 0.1875f, 0.203125f, 0.21875f, 0.234375f,
    /* 0x28 */ 0.25f, 0.28125f, 0.3125f, 0.34375f, 0.375f, 0.40625f, 0.4375f, 0.46875f,
    /* 0x30 */ 0.5f, 0.5625f, 0.625f, 0.6875f, 0.75f, 0.8125f, 0.875f, 0.9375f,
    /* 0x38 */ 1.0f, 1.125f, 1.25f, 1.375f, 1.5f, 1.625f, 1.75f, 1.875f,
    /* 0x40 */ 2.0f, 2.25f, 2.5f, 2.75f, 3.0f, 3.25f, 3.5f, 3.75f,
    /* 0x48 */ 4.0f, 4.5f, 5.0f, 5.5f, 6.0f, 6.5f, 7.0f, 7.5f,
    /* 0x50 */ 8.0f, 9.0f, 10.0f, 11.0f, 12.0f, 13.0f, 14.0f, 15.0f,
    /* 0x58 */ 16.0f, 18.0f, 20.0f, 22.0f, 24.0f, 26.0f, 28.0f, 30.0f,
    /* 0x60 */ 32.0f, 36.0f, 40.0f, 44.0f, 48.0f, 52.0f, 56.0f, 60.0f,
    /* 0x68 */ 64.0f, 72.0f, 80.0f, 88.0f, 96.0f, 104.0f, 112.0f, 120.0f,
    /* 0x70 */ 128.0f, 144.0f, 160.0f, 176.0f, 192.0f, 208.0f, 224.0f, 240.0f,
    /* 0x78 */ 256.0f, 288.0f, 320.0f, 352.0f, 384.0f, 416.0f, 448.0f, NAN,
    /* 0x80 */ -0.0f, -0.001953125f, -0.00390625f, -0.005859375f, -0.0078125f, -0.009765625f, -0.01171875f, -0.013671875f,
    /* 0x88 */ -0.015625f, -0.017578125f, -0.01953125f, -0.021484375f, -0.0234375f, -0.025390625f, -0.02734375f, -0.029296875f,
    /* 0x90 */ -0.03125f, -0.03515625f, -0.0390625f, -0.04296875f, -0.046875f, -0.05078125f, -0.0546875f, -0.05859375f,
    /* 0x98 */ -0.0625f, -0.0703125f, -0.078125f, -0.0859375f, -0.09375f, -0.1015625f, -0.109375f, -0.1171875f,
    /* 0xA0 */ -0.125f, -0.140625f, -0.15625f, -0.171875f, -0.1875f, -0.203125f, -0.21875f, -0.234375f,
    /* 0xA8 */ -0.25f, -0.28125f, -0.3125f, -0.34375f, -0.375f, -0.40625f, -0.4375f, -0.46875f,
    /* 0xB0 */ -0.5f, -0.5625f, -0.625f, -0.6875f, -0.75f, -0.8125f, -0.875f, -0.9375f,
    /* 0xB8 */ -1.0f, -1.125f, -1.25f, -1.375f, -1.5f, -1.625f, -1.75f, -1.875f,
    /* 0xC0 */ -2.0f, -2.25f, -2.5f, -2.75f, -3.0f, -3.25f, -3.5f, -3.75f,
    /* 0xC8 */ -4.0f, -4.5f, -5.0f, -5.5f, -6.0f, -6.5f, -7.0f, -7.5f,
    /* 0xD0 */ -8.0f, -9.0f, -10.0f, -11.0f, -12.0f, -13.0f, -14.0f, -15.0f,
    /* 0xD8 */ -16.0f, -18.0f, -20.0f, -22.0f, -24.0f, -26.0f, -28.0f, -30.0f,
    /* 0xE0 */ -32.0f, -36.0f, -40.0f, -44.0f, -48.0f, -52.0f, -56.0f, -60.0f,
    /* 0xE8 */ -64.0f, -72.0f, -80.0f, -88.0f, -96.0f, -104.0f, -112.0f, -120.0f,
    /* 0xF0 */ -128.0f, -144.0f, -160.0f, -176.0f, -192.0f, -208.0f, -224.0f, -240.0f,
    /* 0xF8 */ -256.0f, -288.0f, -320.0f, -352.0f, -384.0f, -416.0f, -448.0f, -NAN,
};

uint8_t fp8_e4m3_from_f32(float x) {
    if (isnan(x)) return 0x7F;
    uint8_t sign = signbit(x) ? 0x80 : 0x00;
    float a = fabsf(x);
    if (a > FP8_E4M3_MAX) a = FP8_E4M3_MAX; /* saturate, as vLLM/SGLang and the sm_89+ converter do */
    if (a < 0x1p-6f) {
        /* Subnormal range: a multiple of 2^-9; q = 8 rounds up into the first normal (code 0x08). */
        int q = (int)nearbyintf(a * 512.0f);
        return (uint8_t)(sign | q);
    }
    int e;
    float m = frexpf(a, &e); /* a = m · 2^e, m in [0.5, 1) */
    e -= 1;                  /* a = (2m) · 2^e, 2m in [1, 2) */
    int q = (int)nearbyintf((2.0f * m - 1.0f) * 8.0f);
    if (q == 8) {            /* mantissa rounded up to the next power of two */
        q = 0;
        e += 1;
    }
    return (uint8_t)(sign | ((e + 7) << 3) | q);
}

float fp8_scale_ue8m0(float s) {
    if (!isfinite(s)) return s; /* an Inf amax stays Inf, as in the plain path */
    int e;
    float m = frexpf(s, &e); /* s = m · 2^e, m in [0.5, 1) */
    return ldexpf(1.0f, m == 0.5f ? e - 1 : e);
}

void fp8_quantize_row(float *xq, float *scales, const float *x, int64_t K, int ue8m0) {
    for (int64_t g0 = 0, g = 0; g0 < K; g0 += FP8_BLOCK, g++) {
        int64_t g1 = g0 + FP8_BLOCK < K ? g0 + FP8_BLOCK : K;
        float amax = 0.0f;
        for (int64_t k = g0; k < g1; k++) amax = fmaxf(amax, fabsf(x[k]));
        float s = fmaxf(amax, FP8_AMAX_EPS) / FP8_E4M3_MAX;
        if (ue8m0) s = fp8_scale_ue8m0(s);
        scales[g] = s;
        for (int64_t k = g0; k < g1; k++) xq[k] = fp8_e4m3_to_f32(fp8_e4m3_from_f32(x[k] / s));
    }
}
