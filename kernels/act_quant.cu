/**
 * @file act_quant.cu
 * @brief 1×128 FP8 activation quantization (fast/act_quant.h; oracle: ref fp8_quantize_row).
 *
 * Roofline: memory-bound. Per element it reads 2 (bf16) or 4 (f32) bytes and writes 1 byte
 * plus 4 bytes of scale per 128 elements; 4096×7168 bf16 → 88 MB, ~26 µs at 3.35 TB/s.
 *
 * Design: one warp per 128-element group, 4 consecutive elements per lane (one 8- or 16-byte
 * load), amax by a 5-step shuffle reduction (max is exact, so the order does not matter),
 * then each lane encodes and stores its 4 codes as one 32-bit word.
 */
#include "act_quant.h"
#include "common.cuh"

namespace dsv3 {

/** One warp per (row, group); blockDim.x = 256 → 8 groups per block. */
__global__ void act_quant_kernel(uint8_t *__restrict__ q, int64_t q_stride, float *__restrict__ scale,
                                 const void *__restrict__ x, FastDType x_dtype, int64_t x_stride, int64_t M,
                                 int64_t K, int ue8m0) {
    const int64_t groups = K / 128;
    const int64_t gid = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; /* global group index */
    if (gid >= M * groups) return;
    const int lane = threadIdx.x % 32;
    const int64_t m = gid / groups, g = gid % groups;
    const int64_t k0 = g * 128 + lane * 4;
    float v[4];
    if (x_dtype == FAST_BF16) {
        const uint16_t *xr = static_cast<const uint16_t *>(x) + m * x_stride + k0;
        uint2 raw = *reinterpret_cast<const uint2 *>(xr); /* 8-byte aligned: x_stride, k0 multiples of 4 */
        v[0] = __uint_as_float(raw.x << 16);
        v[1] = __uint_as_float(raw.x & 0xFFFF0000u);
        v[2] = __uint_as_float(raw.y << 16);
        v[3] = __uint_as_float(raw.y & 0xFFFF0000u);
    } else {
        const float *xr = static_cast<const float *>(x) + m * x_stride + k0;
        float4 raw = *reinterpret_cast<const float4 *>(xr);
        v[0] = raw.x, v[1] = raw.y, v[2] = raw.z, v[3] = raw.w;
    }
    /* amax exactly as the reference: fmaxf ignores NaN, so a NaN element does not poison the scale. */
    float amax = 0.0f;
    for (int i = 0; i < 4; i++) amax = fmaxf(amax, fabsf(v[i]));
    for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    float s = __fdiv_rn(fmaxf(amax, 1e-4f), 448.0f);
    if (ue8m0) s = scale_ue8m0(s);
    uint32_t word = 0;
    for (int i = 0; i < 4; i++) word |= (uint32_t)e4m3_from_f32(__fdiv_rn(v[i], s)) << (8 * i);
    *reinterpret_cast<uint32_t *>(q + m * q_stride + k0) = word;
    if (lane == 0) scale[m * groups + g] = s;
}

} // namespace dsv3

extern "C" int fp8_quantize_rows_cuda(uint8_t *q, int64_t q_stride, float *scale, const void *x, FastDType x_dtype,
                                      int64_t x_stride, int64_t M, int64_t K, int ue8m0, cudaStream_t stream, Err *err) {
    const char *fn = "fp8_quantize_rows_cuda";
    if (M < 0 || K <= 0 || K % 128 != 0)
        return err_set(err, "%s: M = %lld, K = %lld: need M >= 0 and K a positive multiple of 128", fn, (long long)M,
                       (long long)K);
    if (x_dtype != FAST_F32 && x_dtype != FAST_BF16) return err_set(err, "%s: x_dtype %d is not f32 or bf16", fn, (int)x_dtype);
    if (q_stride < K || q_stride % 4 != 0 || x_stride < K || x_stride % 4 != 0)
        return err_set(err, "%s: q_stride = %lld, x_stride = %lld: need >= K = %lld and multiples of 4", fn,
                       (long long)q_stride, (long long)x_stride, (long long)K);
    if (((uintptr_t)q | (uintptr_t)x) % 16 != 0 || (uintptr_t)scale % 4 != 0)
        return err_set(err, "%s: q and x must be 16-byte aligned, scale 4-byte aligned", fn);
    if (M == 0) return 0;
    const int64_t warps = M * (K / 128);
    const int threads = 256;
    const int64_t blocks = dsv3::ceil_div<int64_t>(warps, threads / 32);
    if (blocks > 0x7FFFFFFF) return err_set(err, "%s: M·K/128 = %lld groups is too many for one grid", fn, (long long)warps);
    dsv3::act_quant_kernel<<<(unsigned)blocks, threads, 0, stream>>>(q, q_stride, scale, x, x_dtype, x_stride, M, K, ue8m0);
    return fast_check_launch(fn, "act_quant_kernel", err);
}
