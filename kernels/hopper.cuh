/**
 * @file hopper.cuh
 * @brief Thin wrappers over the sm_90/sm_90a PTX the WGMMA GEMM uses: mbarriers, the TMA
 *        bulk tensor copy, wgmma and setmaxnreg. Each wrapper is one instruction; the PTX ISA
 *        section is named above it. Bodies compile to nothing outside sm_90a, where the
 *        kernels that call them are never launched (fp8_gemm_cuda checks the device).
 *
 * Run on an H100 on 2026-11-22 (make test-gpu, compute-sanitizer).
 */
#ifndef DSV3_KERNELS_HOPPER_CUH
/** Include guard. */
#define DSV3_KERNELS_HOPPER_CUH

#include <cuda.h> /* CUtensorMap (a type only; nothing from libcuda is linked) */
#include <stdint.h>

/** 1 while nvcc compiles the sm_90a device pass (wgmma, setmaxnreg available), else 0. */
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DSV3_SM90A 1
#else
#define DSV3_SM90A 0
#endif

namespace dsv3 {
namespace sm90 {

/** A wait on an mbarrier that lasts this long (ns) traps: a deadlocked pipeline becomes a launch error, not a hang. */
constexpr uint64_t MBAR_TIMEOUT_NS = 10ull * 1000 * 1000 * 1000;

/** %globaltimer in ns. */
__device__ __forceinline__ uint64_t globaltimer() {
    uint64_t t = 0;
#if DSV3_SM90A
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
#endif
    return t;
}

/** mbarrier.init: expected arrival count @p count (PTX ISA 9.7.13.15.11). */
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
#if DSV3_SM90A
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
#endif
}

/** Makes mbarrier initializations visible to the async proxy (TMA) and other threads. */
__device__ __forceinline__ void fence_mbar_init() {
#if DSV3_SM90A
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

/** One arrival that also announces @p bytes of TMA transactions for the current phase. */
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#if DSV3_SM90A
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
#endif
}

/** One plain arrival. */
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
#if DSV3_SM90A
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
#endif
}

/**
 * Waits until the phase with parity @p parity has completed (a fresh barrier counts its
 * "previous" phase, parity 1, as completed). Traps after MBAR_TIMEOUT_NS.
 */
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#if DSV3_SM90A
    uint32_t done = 0;
    uint64_t t0 = 0;
    for (uint32_t spin = 0;; spin++) {
        asm volatile("{\n\t.reg .pred P;\n\t"
                     "mbarrier.try_wait.parity.shared::cta.b64 P, [%1], %2;\n\t"
                     "selp.b32 %0, 1, 0, P;\n\t}"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
        if (done) return;
        if (spin == 64) t0 = globaltimer();
        else if (spin > 64 && (spin & 1023) == 0 && globaltimer() - t0 > MBAR_TIMEOUT_NS) __trap();
    }
#endif
}

/**
 * 2-D TMA load of one box of @p map at coordinates (c0 = innermost, c1) into shared memory
 * at @p dst, completing @p bar's transaction count (cp.async.bulk.tensor, PTX ISA 9.7.9.25.5.1).
 */
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap *map, int32_t c0, int32_t c1,
                                            uint32_t bar) {
#if DSV3_SM90A
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], "
                 "[%2];" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1)
                 : "memory");
#endif
}

/**
 * The same 2-D TMA load, multicast: the box lands at offset @p dst of the shared memory of every
 * CTA of the cluster in @p cta_mask, each completing the mbarrier at offset @p bar of its own
 * shared memory (PTX ISA 9.7.9.25.5.1, .multicast::cluster).
 */
__device__ __forceinline__ void tma_load_2d_multicast(uint32_t dst, const CUtensorMap *map, int32_t c0, int32_t c1,
                                                      uint32_t bar, uint16_t cta_mask) {
#if DSV3_SM90A
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster "
                 "[%0], [%1, {%4, %5}], [%2], %3;" ::"r"(dst),
                 "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "h"(cta_mask), "r"(c0), "r"(c1)
                 : "memory");
#endif
}

/** This CTA's rank in its cluster (%cluster_ctarank). */
__device__ __forceinline__ uint32_t cluster_ctarank() {
    uint32_t r = 0;
#if DSV3_SM90A
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
#endif
    return r;
}

/** One arrival on the mbarrier at offset @p bar in the shared memory of cluster CTA @p cta (mapa + arrive). */
__device__ __forceinline__ void mbar_arrive_cluster(uint32_t bar, uint32_t cta) {
#if DSV3_SM90A
    asm volatile("{\n\t.reg .b32 remote;\n\t"
                 "mapa.shared::cluster.u32 remote, %0, %1;\n\t"
                 "mbarrier.arrive.shared::cluster.b64 _, [remote];\n\t}" ::"r"(bar),
                 "r"(cta)
                 : "memory");
#endif
}

/** Every thread of the cluster arrives, then waits for all (barrier.cluster; all threads of each warp). */
__device__ __forceinline__ void cluster_sync() {
#if DSV3_SM90A
    asm volatile("barrier.cluster.arrive.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
#endif
}

/**
 * wgmma shared-memory matrix descriptor (PTX ISA 9.7.15.5.1) for a K-major tile stored as TMA
 * writes it with CU_TENSOR_MAP_SWIZZLE_128B: rows of 128 bytes, 8-row swizzle atoms of 1024
 * bytes. start address >> 4 in bits 0-13; leading byte offset (unused for swizzled K-major,
 * conventionally 1) in 16-29; stride byte offset = 1024 >> 4 (next 8-row atom) in 32-45; base
 * offset 0 (tiles are 1024-byte aligned) in 49-51; layout type 1 = 128-byte swizzle in 62-63.
 * Stepping K by 32 bytes inside the atom adds 2 to the start address field.
 */
__device__ __forceinline__ uint64_t smem_desc_sw128(uint32_t smem_addr) {
    uint64_t d = 0;
    d |= (uint64_t)((smem_addr & 0x3FFFF) >> 4);
    d |= (uint64_t)1 << 16;
    d |= (uint64_t)(1024 >> 4) << 32;
    d |= (uint64_t)1 << 62;
    return d;
}

/** wgmma.fence: orders register accesses to the accumulators before the next wgmma. */
__device__ __forceinline__ void wgmma_fence() {
#if DSV3_SM90A
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}
/** Closes the group of wgmma issued so far. */
__device__ __forceinline__ void wgmma_commit() {
#if DSV3_SM90A
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}
/** Waits until at most N wgmma groups are pending. */
template <int N> __device__ __forceinline__ void wgmma_wait() {
#if DSV3_SM90A
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#endif
}
/** Keeps the compiler from moving accesses to @p r across wgmma issue/wait. */
__device__ __forceinline__ void fence_operand(float &r) { asm volatile("" : "+f"(r)::"memory"); }

/** setmaxnreg.dec / .inc (sm_90a): hand registers from the producer to the consumer warpgroups. */
template <int REGS> __device__ __forceinline__ void setmaxnreg_dec() {
#if DSV3_SM90A
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(REGS));
#endif
}
/** See setmaxnreg_dec. */
template <int REGS> __device__ __forceinline__ void setmaxnreg_inc() {
#if DSV3_SM90A
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(REGS));
#endif
}

/**
 * d (+)= A·Bᵀ for a 64×128 tile with K = 32, e4m3 inputs from shared memory, f32 accumulators
 * (wgmma.mma_async.m64n128k32.f32.e4m3.e4m3). scale_d = 0 overwrites d, 1 accumulates.
 * Accumulator layout (per warp w of the warpgroup, g = lane/4, t = lane%4), for j = 0..15:
 * d[4j+0], d[4j+1] → row 16w+g, cols 8j+2t, 8j+2t+1;  d[4j+2], d[4j+3] → row 16w+g+8, same cols.
 */
__device__ __forceinline__ void wgmma_m64n128k32_e4m3(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                                      int scale_d) {
#if DSV3_SM90A
    asm volatile(
        "{\n\t.reg .pred p;\n\t"
        "setp.ne.b32 p, %66, 0;\n\t"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "
        "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, "
        "%42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "
        "%62, %63}, %64, %65, p, 1, 1;\n\t}"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
#else
    (void)d, (void)desc_a, (void)desc_b, (void)scale_d;
#endif
}

} // namespace sm90
} // namespace dsv3

#endif /* DSV3_KERNELS_HOPPER_CUH */
