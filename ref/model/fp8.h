/**
 * @file fp8.h
 * @brief float8_e4m3fn: decoding (a 256-entry table), encoding (round to nearest even,
 *        saturating at ±448) and DeepSeek-V3's 1×128 dynamic activation quantization
 *        (docs/model.md §8.1, §8.3). The block-scaled weight side lives in tensor.c and linear.c.
 *
 * The FP8 numerics contract, written once (docs/fp8.md has the long form):
 *  - weights: W[i][j] = e4m3(Wq[i][j]) · scale_inv[i/128][j/128], 128×128 blocks, F32 scales,
 *    partial edge blocks (e.g. 576 rows = 4 full + one 64-row block) use the same grid cell;
 *  - activations (W8A8 only): per token, per 128 consecutive channels k,
 *    s = max(amax, 1e-4) / 448, xq_k = e4m3(x_k / s) with x_k / s clamped to ±448 first;
 *  - GEMM: for each 128-wide K block the partial Σ xq·wq is exact (an FP32-free sum; we use
 *    double, which holds it exactly), then scaled by s_x · s_w and accumulated in FP32.
 */
#ifndef DSV3_FP8_H
#define DSV3_FP8_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/** Value of every e4m3fn code: S.EEEE.MMM, bias 7, no infinities, NaN only at 0x7F/0xFF. */
extern const float fp8_e4m3_values[256];

/** e4m3fn code → float (exact). */
static inline float fp8_e4m3_to_f32(uint8_t code) { return fp8_e4m3_values[code]; }

/**
 * The same value as fp8_e4m3_to_f32(), computed instead of looked up, so that a loop over a row
 * of codes vectorizes (a table lookup would be a gather). The 7 bits EEEE.MMM shifted to bits
 * 26..20 of an FP32 word are an FP32 number whose exponent field is E: 2^(E−127)·(1 + M/8), or
 * for E = 0 the subnormal M·2^−129. Multiplying by 2^120 (exact: a power of two) moves the bias
 * from 127 to 7, which gives e4m3's 2^(E−7)·(1 + M/8) and M·2^−9. Then the NaN code (E = 15,
 * M = 7) and the sign. tests/test_fp8.c checks all 256 codes against the table.
 */
static inline float fp8_e4m3_decode(uint8_t code) {
    uint32_t bits = (uint32_t)(code & 0x7f) << 20;
    float f;
    memcpy(&f, &bits, 4);
    f *= 0x1p120f;
    if ((code & 0x7f) == 0x7f) f = NAN;
    memcpy(&bits, &f, 4);
    bits |= (uint32_t)(code & 0x80) << 24;
    memcpy(&f, &bits, 4);
    return f;
}

/** float → e4m3fn code: NaN → 0x7F, |x| clamped to 448 first (docs/model.md §11 #23), then round to nearest even. */
uint8_t fp8_e4m3_from_f32(float x);

/** Largest finite e4m3fn magnitude. */
#define FP8_E4M3_MAX 448.0f
/** Lower clamp of a group's amax before computing its scale (docs/model.md §8.3, §11 #14). */
#define FP8_AMAX_EPS 1e-4f
/** Width of an activation group and of a weight block side. */
#define FP8_BLOCK 128

/**
 * The smallest power of two ≥ @p s (s > 0, finite): DeepSeek-V3.1's `scale_fmt = "ue8m0"` rounding
 * of an activation scale, `2^ceil(log2 s)` of its act_quant kernel, computed exactly (docs/model.md §13.4).
 */
float fp8_scale_ue8m0(float s);

/**
 * Quantizes one activation row of @p K channels in groups of 128 (the last group may be
 * shorter): @p scales[g] = max(amax_g, 1e-4)/448 (rounded up to a power of two when @p ue8m0)
 * and @p xq[k] = e4m3(x[k] / scales[k/128]), stored as the float value of the code (exactly
 * representable).
 */
void fp8_quantize_row(float *xq, float *scales, const float *x, int64_t K, int ue8m0);

#endif /* DSV3_FP8_H */
