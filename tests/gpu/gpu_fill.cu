/**
 * @file gpu_fill.cu
 * @brief Random fills for tests and benchmarks (gpu_fill.h): splitmix64 of (seed, index).
 */
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "gpu_fill.h"

namespace {

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
__device__ __forceinline__ float unit(uint64_t h) { return (float)(h >> 40) * (1.0f / 16777216.0f); }

__global__ void fill_e4m3(uint8_t *p, size_t n, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint8_t c = (uint8_t)splitmix64(seed ^ (i * 0x2545F4914F6CDD1Dull));
        p[i] = (c & 0x7F) == 0x7F ? (uint8_t)(c - 1) : c;
    }
}
__global__ void fill_uniform(float *p, size_t n, float lo, float hi, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = lo + (hi - lo) * unit(splitmix64(seed ^ (i * 0x2545F4914F6CDD1Dull)));
}
__global__ void fill_bf16(uint16_t *p, size_t n, float scale, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t h = seed ^ (i * 0x2545F4914F6CDD1Dull);
        float s = 0.0f;
        for (int k = 0; k < 4; k++) s += unit(h = splitmix64(h)) - 0.5f; /* variance 4/12 */
        __nv_bfloat16 b = __float2bfloat16_rn(s * 1.7320508f * scale);
        p[i] = *reinterpret_cast<uint16_t *>(&b);
    }
}

__global__ void dequant_bf16(uint16_t *out, const uint8_t *w, const float *s, int64_t rows, int64_t K, int row_block) {
    const int64_t n = rows * K;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / K, k = i % K;
        __nv_fp8_e4m3 q;
        q.__x = w[i];
        const float v = (float)q * s[(r / row_block) * (K / 128) + k / 128];
        __nv_bfloat16 b = __float2bfloat16_rn(v);
        out[i] = *reinterpret_cast<uint16_t *>(&b);
    }
}

unsigned blocks_for(size_t n) {
    size_t b = (n + 255) / 256;
    return (unsigned)(b < 65535 * 8 ? (b ? b : 1) : 65535 * 8);
}

} // namespace

extern "C" cudaError_t gpu_fill_e4m3(uint8_t *p, size_t n, uint64_t seed, cudaStream_t stream) {
    fill_e4m3<<<blocks_for(n), 256, 0, stream>>>(p, n, seed);
    return cudaGetLastError();
}
extern "C" cudaError_t gpu_fill_uniform(float *p, size_t n, float lo, float hi, uint64_t seed, cudaStream_t stream) {
    fill_uniform<<<blocks_for(n), 256, 0, stream>>>(p, n, lo, hi, seed);
    return cudaGetLastError();
}
extern "C" cudaError_t gpu_fill_bf16(uint16_t *p, size_t n, float scale, uint64_t seed, cudaStream_t stream) {
    fill_bf16<<<blocks_for(n), 256, 0, stream>>>(p, n, scale, seed);
    return cudaGetLastError();
}
extern "C" cudaError_t gpu_dequant_bf16(uint16_t *out, const uint8_t *w, const float *s, int64_t rows, int64_t K,
                                        int row_block, cudaStream_t stream) {
    dequant_bf16<<<blocks_for((size_t)(rows * K)), 256, 0, stream>>>(out, w, s, rows, K, row_block);
    return cudaGetLastError();
}
