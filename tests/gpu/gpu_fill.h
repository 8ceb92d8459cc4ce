/**
 * @file gpu_fill.h
 * @brief Device-side random fills for the GPU tests and benchmarks (tests/gpu/gpu_fill.cu):
 *        multi-gigabyte expert weights are generated where they live instead of on the host.
 *        Never zeros: timings on zeros flatter kernels (docs: METHOD.md).
 */
#ifndef DSV3_TESTS_GPU_FILL_H
#define DSV3_TESTS_GPU_FILL_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/** n random e4m3 codes (never the NaN codes 0x7F/0xFF) from a counter-based hash of @p seed. */
cudaError_t gpu_fill_e4m3(uint8_t *p, size_t n, uint64_t seed, cudaStream_t stream);
/** n random floats uniform in [lo, hi). */
cudaError_t gpu_fill_uniform(float *p, size_t n, float lo, float hi, uint64_t seed, cudaStream_t stream);
/** n random bf16 values ≈ N(0, scale²) (sum of uniforms). */
cudaError_t gpu_fill_bf16(uint16_t *p, size_t n, float scale, uint64_t seed, cudaStream_t stream);

/**
 * out[r][k] = bf16(e4m3(w[r][k]) · s[r / row_block][k / 128]) for rows × K (K % 128 == 0):
 * row_block = 128 dequantizes a weight (128×128 blocks), 1 an activation (1×128 groups).
 * What the cuBLASLt BF16 peer multiplies.
 */
cudaError_t gpu_dequant_bf16(uint16_t *out, const uint8_t *w, const float *s, int64_t rows, int64_t K, int row_block,
                             cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* DSV3_TESTS_GPU_FILL_H */
