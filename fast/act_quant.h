/**
 * @file act_quant.h
 * @brief Dynamic 1×128 FP8 activation quantization on the GPU: the batched form of
 *        ref fp8_quantize_row (docs/model.md §8.3), bit for bit.
 *
 * For each row m and each 128-wide channel group g:
 *     s[m][g]  = max(amax(x[m][128g : 128g+128]), 1e-4) / 448          (FP32, correctly rounded)
 *     q[m][k]  = e4m3(x[m][k] / s[m][k/128])   (division correctly rounded; NaN → 0x7F,
 *                                               saturate to ±448, round to nearest even)
 * The reference stores q as the float value of the code; this kernel stores the code.
 */
#ifndef DSV3_FAST_ACT_QUANT_H
#define DSV3_FAST_ACT_QUANT_H

#include "fast.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Quantizes M rows of K activations (K % 128 == 0, the shapes of DeepSeek-V3).
 * q [M][q_stride] e4m3 codes (output; q_stride ≥ K, in bytes), scale [M][K/128] (output),
 * x [M][x_stride] elements of type @p x_dtype. q_stride and x_stride are in elements.
 * @p ue8m0: round each scale up to a power of two (DeepSeek-V3.1's scale_fmt, docs/model.md §13.4).
 * Returns 0 or -1 with a message in @p err (K not a multiple of 128, strides too small, launch error).
 */
int fp8_quantize_rows_cuda(uint8_t *q, int64_t q_stride, float *scale, const void *x, FastDType x_dtype,
                           int64_t x_stride, int64_t M, int64_t K, int ue8m0, cudaStream_t stream, Err *err);

#ifdef __cplusplus
}
#endif

#endif /* DSV3_FAST_ACT_QUANT_H */
