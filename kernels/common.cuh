/**
 * @file common.cuh
 * @brief Device helpers shared by the kernels: element loads/stores by FastDType, exactly
 *        rounded float arithmetic, the e4m3 encoder, and thin wrappers over the PTX
 *        instructions the kernels use (cp.async, ldmatrix, mma.sync).
 *
 * Exactness: where a kernel promises to reproduce a reference function bit for bit, it uses
 * the `__f*_rn` intrinsics below instead of operators, so that nvcc cannot contract a
 * multiply and an add into one FMA (the reference is compiled as ISO C11, where gcc does not
 * contract), and the correctly rounded `__fdiv_rn` for every division.
 */
#ifndef DSV3_KERNELS_COMMON_CUH
#define DSV3_KERNELS_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#include "fast.h"

namespace dsv3 {

/** Integer ceil(a / b) for positive b. */
template <typename T> __host__ __device__ constexpr T ceil_div(T a, T b) { return (a + b - 1) / b; }

/** bfloat16 bits → float (exact). */
__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

/** float → bfloat16 bits, round to nearest even; NaN stays NaN (same rule as ref f32_to_bf16). */
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
    __nv_bfloat16 b = __float2bfloat16_rn(f);
    return *reinterpret_cast<uint16_t *>(&b);
}

/** Element i of a FAST_F32 or FAST_BF16 array, as float. */
__device__ __forceinline__ float load_elem(const void *p, FastDType t, int64_t i) {
    return t == FAST_BF16 ? bf16_bits_to_f32(static_cast<const uint16_t *>(p)[i]) : static_cast<const float *>(p)[i];
}

/** Stores v into element i of a FAST_F32 or FAST_BF16 array (RNE for bf16). */
__device__ __forceinline__ void store_elem(void *p, FastDType t, int64_t i, float v) {
    if (t == FAST_BF16) static_cast<uint16_t *>(p)[i] = f32_to_bf16_bits(v);
    else static_cast<float *>(p)[i] = v;
}

/**
 * expf with correct rounding in all but ~2^-28 of cases: the double-precision exp (error
 * < 1 ulp of double) rounded once to float. glibc's expf (the reference) is correctly rounded
 * except for ~1e-4 of inputs, where the two differ by one ulp; tests that depend on it say so.
 */
__device__ __forceinline__ float expf_cr(float x) { return (float)exp((double)x); }

/** sigmoid exactly as the reference writes it: 1 / (1 + e^−x), each operation rounded once. */
__device__ __forceinline__ float sigmoid_ref(float x) { return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf_cr(-x))); }

/**
 * float → e4m3fn code, matching ref fp8_e4m3_from_f32 bit for bit: NaN → 0x7F, saturate to
 * ±448, round to nearest even (the hardware converter with .satfinite on sm_89+, the
 * cuda_fp8.h software path elsewhere — both round to nearest even).
 */
__device__ __forceinline__ uint8_t e4m3_from_f32(float x) {
    if (isnan(x)) return 0x7F;
    return (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}

/** The smallest power of two ≥ s (s > 0): DeepSeek-V3.1's UE8M0 activation scale, as ref fp8_scale_ue8m0. */
__device__ __forceinline__ float scale_ue8m0(float s) {
    if (!isfinite(s)) return s;
    int e;
    const float m = frexpf(s, &e);
    return ldexpf(1.0f, m == 0.5f ? e - 1 : e);
}

/** Generic → shared-window address, for PTX operands. */
__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/** 16-byte async global→shared copy; src_bytes = 0 zero-fills the destination (predicated-off rows). */
__device__ __forceinline__ void cp_async_16(void *smem_dst, const void *gmem_src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem_dst)), "l"(gmem_src),
                 "r"(src_bytes)
                 : "memory");
}
/** Closes the current group of cp.async copies. */
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/** Waits until at most N groups of this thread's copies are still in flight. */
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/** ldmatrix.x4: four 8×8 b16 matrices; lane l supplies the row address of matrix l/8, row l%8. */
__device__ __forceinline__ void ldmatrix_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_u32(p)));
}
/** ldmatrix.x4.trans: as ldmatrix_x4 with each 8×8 matrix transposed. */
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3,
                                                  const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_u32(p)));
}

/**
 * d += a·b for one m16n8k16 tile, bf16 inputs, f32 accumulators (sm_80+).
 * Fragments (g = lane/4, t = lane%4): a0:(g, 2t..2t+1) a1:(g+8, 2t..) a2:(g, 2t+8..) a3:(g+8, 2t+8..);
 * b0:(k 2t..2t+1, n g) b1:(k 2t+8.., n g); d0,d1:(g, 2t..2t+1) d2,d3:(g+8, 2t..2t+1).
 */
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

/**
 * d += a·b for one m16n8k32 tile, e4m3 inputs, f32 accumulators (sm_89+).
 * Fragments (g = lane/4, t = lane%4), four e4m3 per register, low byte = lowest k:
 * a0:(g, 4t..4t+3) a1:(g+8, 4t..) a2:(g, 16+4t..) a3:(g+8, 16+4t..);
 * b0:(k 4t..4t+3, n g) b1:(k 16+4t.., n g); d as in mma_bf16_16816.
 */
__device__ __forceinline__ void mma_e4m3_16832(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

/** Sum over the 4 lanes of a quad (lanes 4q..4q+3), result in all four. */
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}
/** Max over the 4 lanes of a quad. */
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    return v;
}

} // namespace dsv3

#endif /* DSV3_KERNELS_COMMON_CUH */
