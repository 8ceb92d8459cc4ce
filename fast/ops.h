/**
 * @file ops.h
 * @brief The small element-wise and row-wise ops of a decoder block on the GPU, each with the
 *        argument order of its reference function plus dtypes and a stream: RMSNorm
 *        (ref rmsnorm_forward), YaRN RoPE angles and rotation (ref rope_cos_sin, rope_forward),
 *        SwiGLU (ref swiglu_forward), the residual add (ref block.c) and the embedding gather.
 *
 * Numerics relative to the references (exact unless stated, on the same FP32 inputs):
 *  - rope_forward_cuda, swiglu (but see below), residual add, embedding gather: every
 *    operation rounded once in the reference's order, so bit-identical for f32 outputs;
 *  - swiglu_forward_cuda: exp is correctly rounded, glibc's expf differs by 1 ulp for ~1e-4 of
 *    inputs → ≤ 2 ulp differences there;
 *  - rmsnorm_forward_cuda: the sum of squares is reduced in a different order → ~1e-7 relative;
 *  - rope_cos_sin_cuda: CUDA's cosf/sinf (≤ 2 ulp) instead of glibc's → ≤ ~4e-7 absolute;
 *  - bf16 outputs: round to nearest even of the FP32 value (may differ by 1 bf16 ulp where the
 *    FP32 values differ).
 *
 * VALIDATION STATUS: make test-gpu and compute-sanitizer pass on an H100 (2026-11-22).
 */
#ifndef DSV3_FAST_OPS_H
#define DSV3_FAST_OPS_H

#include "fast.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * y[t] = rmsnorm(x[t]) · w for N rows of D values: r = 1/sqrt(mean(x²) + eps), y_i = w_i·(x_i·r).
 * y [N][y_stride] (@p y_dtype), x [N][x_stride] (@p x_dtype), w [D] FP32, rstd [N] (output,
 * optional). Strides in elements. y may equal x (same dtype and stride).
 */
int rmsnorm_forward_cuda(void *y, FastDType y_dtype, int64_t y_stride, const void *x, FastDType x_dtype,
                         int64_t x_stride, const float *w, int64_t N, int64_t D, float eps, float *rstd,
                         cudaStream_t stream, Err *err);

/**
 * cos_out[t][i] = cos(pos[t]·θ'_i)·attention_factor, sin_out likewise, for t < T, i < dim/2,
 * with the angle computed in FP32 (docs/model.md §4.2). cos_out, sin_out [T][dim/2]; pos [T] (int32
 * positions); inv_freq [dim/2] = Rope.inv_freq uploaded.
 */
int rope_cos_sin_cuda(float *cos_out, float *sin_out, const int *pos, int64_t T, const float *inv_freq, int dim,
                      float attention_factor, cudaStream_t stream, Err *err);

/**
 * Rotates, in place, nvec vectors of dim values per token with the interleaved-pair rule
 * (docs/model.md §4.1): y[2i] = x[2i]·cos_i − x[2i+1]·sin_i, y[2i+1] = x[2i]·sin_i + x[2i+1]·cos_i.
 * Vector v of token t starts at element t·row_stride + v·vec_stride of x (@p dtype).
 * cos_v, sin_v [T][dim/2] from rope_cos_sin_cuda. For q: nvec = H, vec_stride = 192,
 * row_stride = H·192, x = q + 128; for k_pe: nvec = 1, row_stride = 576, x = kv_a + 512.
 */
int rope_forward_cuda(void *x, FastDType dtype, int64_t T, int64_t nvec, int64_t vec_stride, int64_t row_stride,
                      const float *cos_v, const float *sin_v, int dim, cudaStream_t stream, Err *err);

/**
 * h[t][i] = silu(gate[t][i]) · up[t][i] = gate / (1 + e^−gate) · up, for t < T, i < I.
 * h [T][h_stride] (@p h_dtype); gate and up [T][in_stride] (@p in_dtype), e.g. the two halves
 * of one fused W1|W3 GEMM output with up = gate + I and in_stride = 2I.
 */
int swiglu_forward_cuda(void *h, FastDType h_dtype, int64_t h_stride, const void *gate, const void *up,
                        FastDType in_dtype, int64_t in_stride, int64_t T, int64_t I, cudaStream_t stream, Err *err);

/** y[i] = a[i] + b[i] for i < n, each of its own dtype; y may alias a or b. */
int residual_add_cuda(void *y, FastDType y_dtype, const void *a, FastDType a_dtype, const void *b, FastDType b_dtype,
                      int64_t n, cudaStream_t stream, Err *err);

/**
 * out[t][:] = table[ids[t]][:] for t < T: table [vocab][D] bf16 (the checkpoint's embed_tokens),
 * out [T][D] (@p out_dtype). An id outside [0, vocab) gives a zero row and sets *bad_id to 1
 * (if bad_id is not NULL; the caller clears it) — ids live on the device, so the launcher
 * cannot check them.
 */
int embedding_gather_cuda(void *out, FastDType out_dtype, const uint16_t *table, int64_t vocab, int64_t D,
                          const int *ids, int64_t T, int *bad_id, cudaStream_t stream, Err *err);

/**
 * dst[i][:] = src[rows[i] / div][:] for i < n (cols FP32 values; strides in elements): the
 * MoE's gather of token rows into expert order (rows = perm, div = top-k) and the selection
 * of the rows whose logits are wanted (div = 1). rows lives on the device.
 */
int gather_rows_cuda(float *dst, int64_t dst_stride, const float *src, int64_t src_stride, const int *rows, int64_t n,
                     int64_t div, int64_t cols, cudaStream_t stream, Err *err);

/**
 * out[r] = the index of the largest of x[r][0..cols), the first one on ties (ref
 * sampler_argmax; NaN never wins, an all-NaN row gives 0). One block per row.
 */
int argmax_rows_cuda(int *out, const float *x, int64_t rows, int64_t cols, cudaStream_t stream, Err *err);

#ifdef __cplusplus
}
#endif

#endif /* DSV3_FAST_OPS_H */
