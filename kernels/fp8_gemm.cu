/**
 * @file fp8_gemm.cu
 * @brief Block-scaled FP8 GEMM, dense and grouped (fast/fp8_gemm.h; oracle: ref linear_forward
 *        in FP8_W8A8 mode). Shapes: M rows (tokens, or T·top_k permuted rows), N outputs, K inputs.
 *
 * Roofline (H100 SXM: ~1979 TFLOP/s dense FP8, 3.35 TB/s): FLOPs = 2·M·N·K; bytes ≥ N·K
 * (weights) + M·K (activations) + M·N·out_bytes. Weight-bound while 2·M·N·K / (N·K) = 2M is
 * below the ridge 1979e12 / 3.35e12 ≈ 590 FLOP/byte, i.e. M ≲ 300: decode (M ≤ 64) is a
 * pure weight stream, prefill (M = 4096) is compute-bound. docs/kernels.md has the table.
 *
 * Kernel 1, MMA (sm_89+): CTA tile BM × 128 × 128 (BM = 16 or 64 by M), 8 warps, a
 * cp.async ring of STAGES tiles with rows padded to 144 bytes (conflict-free 32-bit fragment
 * loads), 4 × mma.m16n8k32 per 128-K block into a zeroed partial, then promotion into the FP32
 * accumulator. Split-K over blocks (dense only) writes FP32 partials that a second kernel adds
 * in split order.
 *
 * Kernel 2, WGMMA (sm_90a): CTA tile 128 × 128 × 128, 3 warpgroups: WG0 is the producer (one
 * thread issues two TMA loads per stage: A box 128 rows × 128 B, B box 128 rows × 128 B, both
 * 128-byte swizzled), WG1 and WG2 each own 64 rows and issue 4 × wgmma.m64n128k32 per stage,
 * wait, release the stage to the producer (one arrival per warp on the stage's "empty"
 * mbarrier), and promote. While one consumer promotes, the other's wgmma keeps the tensor
 * cores busy (the paper's overlap of promotion and MMA).
 *
 * Kernel 3, persistent WGMMA (sm_90a, only with -DDSV3_GEMM_PERSISTENT=1, make GEMM_PERSISTENT=1):
 * Kernel 2 looping over the tiles kernels/gemm_sched.h assigns to its CTA, one CTA per SM, in
 * 2-CTA clusters multicasting B. It then replaces Kernel 2 for FP8_GEMM_WGMMA.
 *
 * VALIDATION STATUS: Kernels 1 and 2: make test-gpu and compute-sanitizer pass on an H100
 * (2026-11-22). Kernel 3 HAS NOT RUN ON A GPU YET (compiles for sm_90a; issue 22).
 */
#include <cuda.h>
#include <cuda_runtime.h>

#include "common.cuh"
#include "fp8_gemm.h"
#include "gemm_sched.h"
#include "hopper.cuh"

namespace dsv3 {

/** Device copy of Fp8GemmParams (passed by value). */
struct GemmArgs {
    void *out;              /**< [M][ldo] output */
    FastDType out_dtype;    /**< FAST_F32 or FAST_BF16 */
    int64_t ldo;            /**< output row stride (elements) */
    const uint8_t *a;       /**< [M][K] e4m3 activations */
    const float *a_scale;   /**< [M][K/128] */
    const uint8_t *b;       /**< [G][N][K] e4m3 weights */
    const float *b_scale;   /**< [G][ceil(N/128)][K/128] */
    int64_t M;              /**< rows */
    int64_t N;              /**< output features */
    int64_t K;              /**< input features (multiple of 128) */
    const int *group_start; /**< [G+1] row offsets; NULL: dense */
    int num_groups;         /**< G */
    int splits;             /**< > 1: write FP32 partials to workspace[split][M][N] */
    float *workspace;       /**< split-K partials */
    int raster;             /**< WGMMA, dense: walk the grid in groups of DSV3_WG_RASTER row tiles */
};

/** Rows a CTA owns: [row0, row_end) of group `group` (row_end clips the last tile). */
struct TileRows {
    int group;       /**< weight matrix (expert) of these rows */
    int64_t row0;    /**< first row of the tile */
    int64_t row_end; /**< one past the group's last row (rows ≥ row_end are masked) */
};

/**
 * Maps m-tile index @p m_tile to rows. Dense: tile m_tile of [0, M). Grouped: the groups'
 * tiles (ceil(rows_g / BM) each) numbered group after group; warp 0 scans the per-group tile
 * counts 32 groups at a time. Returns false (uniformly for the CTA) when m_tile is past the
 * last tile. Must be called by all threads (it contains __syncthreads).
 */
template <int BM> __device__ bool resolve_tile(const GemmArgs &p, int64_t m_tile, TileRows &tr) {
    if (!p.group_start) {
        tr.group = 0;
        tr.row0 = m_tile * BM;
        tr.row_end = p.M;
        return tr.row0 < p.M;
    }
    __shared__ int s_group;
    __shared__ long long s_local;
    if (threadIdx.x == 0) s_group = -1;
    __syncthreads();
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        int64_t carry = 0;
        for (int base = 0; base < p.num_groups; base += 32) {
            const int g = base + lane;
            int64_t cnt = 0;
            if (g < p.num_groups) {
                const int rows = p.group_start[g + 1] - p.group_start[g];
                cnt = rows > 0 ? ceil_div<int64_t>(rows, BM) : 0;
            }
            int64_t incl = cnt; /* inclusive warp scan */
            for (int off = 1; off < 32; off <<= 1) {
                const int64_t v = __shfl_up_sync(0xffffffffu, incl, off);
                if (lane >= off) incl += v;
            }
            const int64_t first = carry + incl - cnt;
            if (g < p.num_groups && m_tile >= first && m_tile < first + cnt) {
                s_group = g;
                s_local = (long long)(m_tile - first);
            }
            carry += __shfl_sync(0xffffffffu, incl, 31);
        }
    }
    __syncthreads();
    if (s_group < 0) return false;
    tr.group = s_group;
    tr.row0 = p.group_start[s_group] + (int64_t)s_local * BM;
    tr.row_end = p.group_start[s_group + 1];
    return true;
}

/** Stores two adjacent outputs (cols n, n+1 of row m), each only if inside [0, N). */
__device__ __forceinline__ void store_pair(const GemmArgs &p, int64_t m, int64_t n, float v0, float v1) {
    const int64_t i = m * p.ldo + n;
    if (n + 1 < p.N && (i & 1) == 0) {
        if (p.out_dtype == FAST_BF16) {
            const uint32_t w = (uint32_t)f32_to_bf16_bits(v0) | ((uint32_t)f32_to_bf16_bits(v1) << 16);
            *reinterpret_cast<uint32_t *>(static_cast<uint16_t *>(p.out) + i) = w;
        } else {
            *reinterpret_cast<float2 *>(static_cast<float *>(p.out) + i) = make_float2(v0, v1);
        }
        return;
    }
    if (n < p.N) store_elem(p.out, p.out_dtype, i, v0);
    if (n + 1 < p.N) store_elem(p.out, p.out_dtype, i + 1, v1);
}

/** acc + (part · s_a) · s_b with each operation rounded once, exactly as ref linear_w8a8. */
__device__ __forceinline__ float promote(float acc, float part, float sa, float sb) {
    return __fadd_rn(acc, __fmul_rn(__fmul_rn(part, sa), sb));
}

/* ------------------------------------------------------------------------------------------
 * Kernel 1: mma.sync (sm_89+)
 * ---------------------------------------------------------------------------------------- */

/** Static shape of one MMA kernel instance: WARPS_M × WARPS_N warps, each MT × NT mma tiles. */
template <int WARPS_M_, int WARPS_N_, int MT_, int NT_, int STAGES_> struct MmaTile {
    static constexpr int WARPS_M = WARPS_M_; /**< warps along M */
    static constexpr int WARPS_N = WARPS_N_; /**< warps along N */
    static constexpr int MT = MT_;           /**< m16 tiles per warp */
    static constexpr int NT = NT_;           /**< n8 tiles per warp */
    static constexpr int STAGES = STAGES_;   /**< cp.async ring depth */
    static constexpr int BM = WARPS_M * MT * 16; /**< rows per CTA */
    static constexpr int BN = WARPS_N * NT * 8;  /**< columns per CTA */
    static constexpr int BK = 128;               /**< one scale block of K per stage */
    static constexpr int THREADS = WARPS_M * WARPS_N * 32; /**< threads per CTA */
    static constexpr int LDS = BK + 16; /**< padded smem row: rows g = 0..7 start 4g banks apart */
    static constexpr int A_BYTES = BM * LDS;               /**< A tile bytes per stage */
    static constexpr int B_BYTES = BN * LDS;               /**< B tile bytes per stage */
    static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;  /**< one ring slot */
    static constexpr int SMEM = STAGES * STAGE_BYTES;      /**< dynamic shared memory */
    static_assert(BN == 128, "a CTA's columns must lie in one 128-row weight scale block");
    static_assert(STAGES >= 2, "the cp.async ring needs at least two stages");
};

/* Two instances. A BM = 128 instance was tried at compile time: with 8 warps of 64×32 it needs
 * 255 registers and spills, with 16 warps of 64×16 the 128-register cap spills; large M is the
 * WGMMA kernel's job on sm_90, and BM = 64 (145 registers, no spills) serves it elsewhere. */
using MmaSmall = MmaTile<1, 8, 1, 2, 6>; /**< BM = 16: decode, M ≤ 16 (a weight stream) */
using MmaMid = MmaTile<2, 4, 2, 4, 4>;   /**< BM = 64: everything larger */

/** Kernel 1: one CTA computes a BM × 128 output tile (blockIdx.x: N tile, y: M tile, z: K split). */
template <class Tile> __global__ void __launch_bounds__(Tile::THREADS) fp8_gemm_mma_kernel(const GemmArgs p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    constexpr int BM = Tile::BM, MT = Tile::MT, NT = Tile::NT, LDS = Tile::LDS, STAGES = Tile::STAGES;
    extern __shared__ __align__(16) uint8_t smem[];
    TileRows tr;
    if (!resolve_tile<BM>(p, blockIdx.y, tr)) return;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int warp_m = warp % Tile::WARPS_M, warp_n = warp / Tile::WARPS_M;
    const int g = lane / 4, t = lane % 4;
    const int64_t n0 = (int64_t)blockIdx.x * 128, K = p.K, N = p.N;
    const int kblocks = (int)(K / 128);
    const int per = ceil_div(kblocks, p.splits > 1 ? p.splits : 1);
    const int kb_begin = p.splits > 1 ? (int)blockIdx.z * per : 0;
    const int kb_end = min(kb_begin + per, kblocks);
    const int nk = max(kb_end - kb_begin, 0);
    const uint8_t *a = p.a;
    const uint8_t *bg = p.b + (int64_t)tr.group * N * K;
    const float *bsg = p.b_scale + ((int64_t)tr.group * ceil_div<int64_t>(N, 128) + n0 / 128) * kblocks;

    /* Copies 128-K block kb of the A rows and B rows into ring slot `stage` (zero rows outside). */
    auto load_stage = [&](int stage, int kb) {
        uint8_t *sA = smem + stage * Tile::STAGE_BYTES, *sB = sA + Tile::A_BYTES;
        const int64_t kbyte = (int64_t)kb * 128;
        for (int c = tid; c < BM * 8; c += Tile::THREADS) {
            const int r = c / 8, ch = c % 8;
            const int64_t row = tr.row0 + r;
            const bool ok = row < tr.row_end;
            cp_async_16(sA + r * LDS + ch * 16, ok ? a + row * K + kbyte + ch * 16 : a, ok ? 16 : 0);
        }
        for (int c = tid; c < 128 * 8; c += Tile::THREADS) {
            const int r = c / 8, ch = c % 8;
            const int64_t n = n0 + r;
            const bool ok = n < N;
            cp_async_16(sB + r * LDS + ch * 16, ok ? bg + n * K + kbyte + ch * 16 : bg, ok ? 16 : 0);
        }
    };

    for (int s = 0; s < STAGES - 1; s++) {
        if (s < nk) load_stage(s, kb_begin + s);
        cp_async_commit();
    }

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    const int64_t wrow0 = tr.row0 + warp_m * MT * 16; /* this warp's first row */
    for (int it = 0; it < nk; it++) {
        cp_async_wait<STAGES - 2>(); /* block it has landed (for this thread's copies) */
        __syncthreads();             /* ... and everyone's; slot (it-1) % STAGES is free again */
        if (it + STAGES - 1 < nk) load_stage((it + STAGES - 1) % STAGES, kb_begin + it + STAGES - 1);
        cp_async_commit();

        const int kb = kb_begin + it;
        float sa[MT][2];
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int64_t row = wrow0 + i * 16 + g + 8 * h;
                sa[i][h] = row < tr.row_end ? p.a_scale[row * kblocks + kb] : 0.0f;
            }
        const float sb = bsg[kb];

        const uint8_t *sA = smem + (it % STAGES) * Tile::STAGE_BYTES, *sB = sA + Tile::A_BYTES;
        float part[MT][NT][4];
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) part[i][j][e] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < 4; ks++) { /* 4 × k32 = one 128-wide scale block */
            uint32_t af[MT][4], bfr[NT][2];
#pragma unroll
            for (int i = 0; i < MT; i++) {
                const uint8_t *base = sA + (warp_m * MT * 16 + i * 16 + g) * LDS + ks * 32 + 4 * t;
                af[i][0] = *reinterpret_cast<const uint32_t *>(base);
                af[i][1] = *reinterpret_cast<const uint32_t *>(base + 8 * LDS);
                af[i][2] = *reinterpret_cast<const uint32_t *>(base + 16);
                af[i][3] = *reinterpret_cast<const uint32_t *>(base + 8 * LDS + 16);
            }
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const uint8_t *base = sB + (warp_n * NT * 8 + j * 8 + g) * LDS + ks * 32 + 4 * t;
                bfr[j][0] = *reinterpret_cast<const uint32_t *>(base);
                bfr[j][1] = *reinterpret_cast<const uint32_t *>(base + 16);
            }
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++) mma_e4m3_16832(part[i][j], af[i], bfr[j][0], bfr[j][1]);
        }
        /* Promotion: the block partial, scaled, into the FP32 accumulator. */
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[i][j][e] = promote(acc[i][j][e], part[i][j][e], sa[i][e / 2], sb);
    }
    cp_async_wait<0>();

#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int64_t row = wrow0 + i * 16 + g + 8 * h;
            if (row >= tr.row_end) continue;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const int64_t n = n0 + warp_n * NT * 8 + j * 8 + 2 * t;
                const float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                if (p.splits > 1) {
                    float *ws = p.workspace + ((int64_t)blockIdx.z * p.M + row) * N;
                    if (n < N) ws[n] = v0;
                    if (n + 1 < N) ws[n + 1] = v1;
                } else {
                    store_pair(p, row, n, v0, v1);
                }
            }
        }
#endif
}

/** out[m][n] = Σ_{s < splits} workspace[s][m][n], summed in split order (= ascending K). */
__global__ void splitk_reduce_kernel(const GemmArgs p) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.M * p.N) return;
    const int64_t m = i / p.N, n = i % p.N;
    float s = 0.0f;
    for (int k = 0; k < p.splits; k++) s = __fadd_rn(s, p.workspace[(int64_t)k * p.M * p.N + i]);
    store_elem(p.out, p.out_dtype, m * p.ldo + n, s);
}

/* ------------------------------------------------------------------------------------------
 * Kernel 2: WGMMA + TMA (sm_90a)
 * ---------------------------------------------------------------------------------------- */

/* Tuning knobs of the WGMMA kernel, overridable at build time (NVCC_EXTRA="-D..."; variants are
 * built and timed side by side by tools/gpu_tune_gemm.sh). RASTER: dense CTAs walk groups of this
 * many row tiles column by column (0 = row-major grid), so a wave shares A and B tiles in L2;
 * used when B exceeds half the L2 (GemmArgs::raster).
 * H100, M = 4096 (docs/benchmarks.md): RASTER 16 vs 0: 36864×7168 3865 → 3289 µs (1.18×),
 * 7168×16384 1422 → 1388 µs, 7168×2048 198 → 203 µs (noise); STAGES 6 vs 5: within noise. */
#ifndef DSV3_WG_STAGES
/** TMA ring depth of the WGMMA kernel (stages of 32 KiB). */
#define DSV3_WG_STAGES 5
#endif
#ifndef DSV3_WG_RASTER
/** Row tiles per raster group of the WGMMA grid (0: row-major). */
#define DSV3_WG_RASTER 16
#endif
/* MULTICAST: dense GEMMs run the 2-CTA cluster variant (B multicast over TMA). Off: on the
 * H100 it passes every test but is slower (M = 4096: 7168×16384 1346 → 1381 µs, 32768×512
 * 426 → 648 µs): without a persistent scheduler each pair pays a cluster launch and two cluster
 * barriers per tile, and the slower CTA of a pair stalls the other at every stage. Kept as the
 * base of the persistent version (docs/benchmarks.md). */
#ifndef DSV3_WG_MULTICAST
/** 1: dense WGMMA GEMMs in 2-CTA clusters with B multicast (measured slower; off). */
#define DSV3_WG_MULTICAST 0
#endif

/** Static shape of the WGMMA kernel (a struct, so that passes without sm_90a see no unused constants). */
struct wg {
    static constexpr int BM = 128;    /**< rows per CTA (two consumer warpgroups × 64) */
    static constexpr int BN = 128;    /**< columns per CTA (one wgmma n128) */
    static constexpr int BK = 128;    /**< K per stage: one scale block, 4 × k32 */
    static constexpr int STAGES = DSV3_WG_STAGES; /**< TMA ring depth (5 × 32 KiB) */
    static constexpr int THREADS = 384;                       /**< WG0 producer, WG1–WG2 consumers */
    static constexpr int A_STAGE = BM * BK; /**< A tile bytes (16 KiB) */
    static constexpr int B_STAGE = BN * BK; /**< B tile bytes (16 KiB) */
    static constexpr int CONSUMER_WARPS = 8;                  /**< arrivals that free a stage */
    static constexpr int SMEM = STAGES * (A_STAGE + B_STAGE) + 2 * STAGES * 8 + 1024; /**< + barriers + alignment slack */
};

/**
 * Producer step of Kernels 2 and 3: waits until ring slot @p s is free (phase @p ph; freed by the
 * consumers of this CTA and, MC, of its pair), then TMA-loads K block @p kt of the A rows from
 * @p a_row and of the B rows from @p b_row into it (MC: this CTA's 64-row half of B, multicast
 * into both CTAs of the pair).
 */
template <bool MC>
__device__ __forceinline__ void wg_load_stage(const CUtensorMap *tmap_a, const CUtensorMap *tmap_b, uint32_t sA,
                                              uint32_t sB, uint32_t full, uint32_t empty, int s, uint32_t ph, int kt,
                                              int32_t a_row, int32_t b_row, uint32_t rank) {
    sm90::mbar_wait(empty + 8 * s, ph ^ 1u); /* consumers (of both CTAs) released it */
    sm90::mbar_arrive_expect_tx(full + 8 * s, wg::A_STAGE + wg::B_STAGE);
    sm90::tma_load_2d(sA + s * wg::A_STAGE, tmap_a, kt * wg::BK, a_row, full + 8 * s);
    if (MC)
        sm90::tma_load_2d_multicast(sB + s * wg::B_STAGE + rank * (wg::B_STAGE / 2), tmap_b, kt * wg::BK,
                                    b_row + (int32_t)rank * (wg::BN / 2), full + 8 * s, 0x3);
    else
        sm90::tma_load_2d(sB + s * wg::B_STAGE, tmap_b, kt * wg::BK, b_row, full + 8 * s);
}

/**
 * Consumer step of Kernels 2 and 3 for one 128-K block in ring slot @p s: waits for it, issues
 * 4 × wgmma.m64n128k32 of warpgroup @p cw's 64 rows into @p part, waits for them, releases the
 * slot (one arrival per warp, MC: on both CTAs' barriers), then promotes part · s_a · s_b into
 * the FP32 accumulator @p acc (sa_lo for the warp's row g, sa_hi for row g + 8).
 */
template <bool MC>
__device__ __forceinline__ void wg_mma_block(float (&acc)[64], float (&part)[64], uint32_t sA, uint32_t sB,
                                             uint32_t full, uint32_t empty, int s, uint32_t ph, int cw, int lane,
                                             uint32_t rank, float sa_lo, float sa_hi, float sb) {
    sm90::mbar_wait(full + 8 * s, ph);

#pragma unroll
    for (int i = 0; i < 64; i++) sm90::fence_operand(part[i]);
    sm90::wgmma_fence();
#pragma unroll
    for (int k = 0; k < wg::BK / 32; k++) {
        const uint64_t da = sm90::smem_desc_sw128(sA + s * wg::A_STAGE + cw * 64 * wg::BK + k * 32);
        const uint64_t db = sm90::smem_desc_sw128(sB + s * wg::B_STAGE + k * 32);
        sm90::wgmma_m64n128k32_e4m3(part, da, db, k > 0 ? 1 : 0);
    }
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < 64; i++) sm90::fence_operand(part[i]);
    if (lane == 0) { /* this warp is done reading stage s */
        sm90::mbar_arrive(empty + 8 * s);
        if (MC) sm90::mbar_arrive_cluster(empty + 8 * s, rank ^ 1u);
    }

#pragma unroll
    for (int i = 0; i < 64; i++) acc[i] = promote(acc[i], part[i], (i & 2) ? sa_hi : sa_lo, sb);
}

/** Epilogue of Kernels 2 and 3: a warp's rows r_lo and r_hi = r_lo + 8 of columns n0.. (t = lane % 4), masked by row_end and N. */
__device__ __forceinline__ void wg_store(const GemmArgs &p, const float (&acc)[64], int64_t n0, int t, int64_t r_lo,
                                         int64_t r_hi, int64_t row_end) {
#pragma unroll
    for (int j = 0; j < 16; j++) {
        const int64_t n = n0 + j * 8 + 2 * t;
        if (r_lo < row_end) store_pair(p, r_lo, n, acc[4 * j + 0], acc[4 * j + 1]);
        if (r_hi < row_end) store_pair(p, r_hi, n, acc[4 * j + 2], acc[4 * j + 3]);
    }
}

/**
 * Kernel 2: one CTA computes a 128 × 128 output tile with TMA, mbarriers and wgmma (sm_90a).
 * MC (dense GEMMs): CTAs run in clusters of 2 along M, the two row tiles of one column tile;
 * each loads its own A tile and one 64-row half of the shared B tile, multicast into both
 * CTAs, so B crosses L2 → SM once per pair (−25 % L2 traffic: the kernel is L2-bound, ncu in
 * docs/benchmarks.md). A stage may be refilled only when the consumers of *both* CTAs are done
 * with it, so each consumer warp arrives on the empty barriers of both.
 */
template <bool MC>
__global__ void __launch_bounds__(wg::THREADS, 1)
    fp8_gemm_wgmma_kernel(const __grid_constant__ CUtensorMap tmap_a, const __grid_constant__ CUtensorMap tmap_b,
                          const GemmArgs p) {
#if DSV3_SM90A
    constexpr int BM = wg::BM, BN = wg::BN, BK = wg::BK, STAGES = wg::STAGES, A_STAGE = wg::A_STAGE,
                  B_STAGE = wg::B_STAGE;
    extern __shared__ uint8_t smem_raw[];
    const uint32_t rank = MC ? sm90::cluster_ctarank() : 0u; /* 0/1 inside the pair */
    /* Tile of this CTA: row-major grid, or RASTER groups of row tiles walked column by column
     * (for MC, in units of row-tile pairs, the cluster being the pair). */
    int64_t m_tile = blockIdx.y, n_tile = blockIdx.x;
    if (DSV3_WG_RASTER > 0 && p.raster && !p.group_start) {
        const int64_t unit = MC ? 2 : 1, rows = gridDim.y / unit, R = MC ? DSV3_WG_RASTER / 2 : DSV3_WG_RASTER;
        const int64_t pid = (int64_t)(blockIdx.y / unit) * gridDim.x + blockIdx.x, per_group = R * gridDim.x;
        const int64_t first_m = pid / per_group * R;
        const int64_t gm = min(rows - first_m, R);
        m_tile = (first_m + pid % per_group % gm) * unit + rank;
        n_tile = pid % per_group / gm;
    }
    TileRows tr;
    if (MC) { /* dense; a pair's second tile may lie past M: it still loads its half of B */
        tr.group = 0, tr.row0 = m_tile * BM, tr.row_end = p.M;
    } else if (!resolve_tile<BM>(p, m_tile, tr)) {
        return;
    }

    /* 1024-byte aligned ring: [STAGES] A tiles, [STAGES] B tiles, then 2·STAGES mbarriers. */
    const uint32_t raw = smem_u32(smem_raw);
    const uint32_t base = (raw + 1023u) & ~1023u;
    const uint32_t sA = base, sB = base + STAGES * A_STAGE;
    const uint32_t full = sB + STAGES * B_STAGE, empty = full + STAGES * 8;
    const int64_t n0 = n_tile * BN;
    const int nk = (int)(p.K / BK);

    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            sm90::mbar_init(full + 8 * s, 1);
            sm90::mbar_init(empty + 8 * s, (MC ? 2 : 1) * wg::CONSUMER_WARPS);
        }
        sm90::fence_mbar_init();
    }
    if (MC) sm90::cluster_sync(); /* the peer's barriers exist before anything arrives on them */
    else __syncthreads();

    const int wgi = threadIdx.x / 128;
    if (wgi == 0) {
        /* Producer warpgroup: one thread streams A and B tiles through the ring. */
        sm90::setmaxnreg_dec<40>();
        if (threadIdx.x == 0) {
            const int32_t a_row = (int32_t)tr.row0;
            const int32_t b_row = (int32_t)((int64_t)tr.group * p.N + n0);
            for (int kt = 0; kt < nk; kt++)
                wg_load_stage<MC>(&tmap_a, &tmap_b, sA, sB, full, empty, kt % STAGES, (uint32_t)(kt / STAGES) & 1u, kt,
                                  a_row, b_row, rank);
        }
    } else {
        /* Consumer warpgroups: cw = 0/1 owns tile rows 64·cw .. 64·cw+63. */
        sm90::setmaxnreg_inc<232>();
        const int cw = wgi - 1;
        const int lane = threadIdx.x % 32, warp_in_wg = (threadIdx.x / 32) % 4;
        const int g = lane / 4, t = lane % 4;
        const int64_t r_lo = tr.row0 + cw * 64 + warp_in_wg * 16 + g, r_hi = r_lo + 8;
        const float *bsg = p.b_scale + ((int64_t)tr.group * ceil_div<int64_t>(p.N, 128) + n0 / 128) * nk;

        float acc[64], part[64];
#pragma unroll
        for (int i = 0; i < 64; i++) acc[i] = part[i] = 0.0f;

        for (int kt = 0; kt < nk; kt++) {
            const int s = kt % STAGES;
            const uint32_t ph = (uint32_t)(kt / STAGES) & 1u;
            /* Scales first: their global loads overlap the wait and the wgmma. */
            const float sa_lo = r_lo < tr.row_end ? p.a_scale[r_lo * nk + kt] : 0.0f;
            const float sa_hi = r_hi < tr.row_end ? p.a_scale[r_hi * nk + kt] : 0.0f;
            const float sb = bsg[kt];
            wg_mma_block<MC>(acc, part, sA, sB, full, empty, s, ph, cw, lane, rank, sa_lo, sa_hi, sb);
        }
        wg_store(p, acc, n0, t, r_lo, r_hi, tr.row_end);
    }
    /* Neither CTA of a pair may exit while the other can still arrive on its barriers. */
    if (MC) sm90::cluster_sync();
#endif
}

/* ------------------------------------------------------------------------------------------
 * Kernel 3: persistent WGMMA (sm_90a), behind -DDSV3_GEMM_PERSISTENT=1 (make GEMM_PERSISTENT=1)
 *
 * NOT YET RUN ON A GPU: it compiles for sm_90a; make test-gpu, compute-sanitizer and the
 * benchmark have not run it (issue 22; tools/gpu_session.sh gemm is the prepared check).
 * ---------------------------------------------------------------------------------------- */
#ifndef DSV3_GEMM_PERSISTENT
/** 1: FP8_GEMM_WGMMA runs the persistent kernel (Kernel 3) instead of Kernel 2. Off by default. */
#define DSV3_GEMM_PERSISTENT 0
#endif
#ifndef DSV3_GEMM_PERSISTENT_MC
/** 1: the persistent kernel runs in 2-CTA clusters with B multicast (dense and grouped). */
#define DSV3_GEMM_PERSISTENT_MC 1
#endif

#if DSV3_GEMM_PERSISTENT
/** Experts whose unit-row prefix the persistent kernel keeps in shared memory; more run Kernel 2. */
constexpr int PERSIST_MAX_GROUPS = 1024;

/**
 * Kernel 3: Kernel 2 made persistent. One CTA per SM (gridDim.x = the schedule's CTAs, in
 * clusters of 2 when MC) walks its tiles in the order of kernels/gemm_sched.h: cluster q takes
 * units q, q + Q, ... (grouped rasterization over the unit grid; a unit is MC ? the two row
 * tiles of one column tile : one tile). The producer thread and the consumer warpgroups keep
 * one running stage counter across tiles, so the ring is never drained between tiles: the
 * producer loads the next tile's first stages while the consumers promote and store the last
 * one (epilogue overlapped with the next main loop's loads). Per tile the consumers do exactly
 * what Kernel 2's do: 4 × wgmma per 128-K block into `part`, wait, release the stage, promote
 * with both scales into FP32 `acc`, then store through store_pair. Grouped: thread 0 computes
 * the experts' unit-row prefix into shared memory once (gemm_sched_unit_start); each tile is
 * then found by a binary search, with no block-wide barrier inside the loop. A pair's second
 * tile past its expert's rows still loads its half of B and arrives on both CTAs' empty
 * barriers, and stores nothing (store_pair is masked by row_end).
 */
template <bool MC>
__global__ void __launch_bounds__(wg::THREADS, 1)
    fp8_gemm_wgmma_persistent_kernel(const __grid_constant__ CUtensorMap tmap_a,
                                     const __grid_constant__ CUtensorMap tmap_b, const GemmArgs p) {
#if DSV3_SM90A
    constexpr int BM = wg::BM, BN = wg::BN, BK = wg::BK, STAGES = wg::STAGES, A_STAGE = wg::A_STAGE,
                  B_STAGE = wg::B_STAGE, CL = MC ? 2 : 1;
    extern __shared__ uint8_t smem_raw[];
    __shared__ int s_unit_start[PERSIST_MAX_GROUPS + 1];
    __shared__ GemmSched s_sched;
    const uint32_t rank = MC ? sm90::cluster_ctarank() : 0u;
    const uint32_t raw = smem_u32(smem_raw);
    const uint32_t base = (raw + 1023u) & ~1023u;
    const uint32_t sA = base, sB = base + STAGES * A_STAGE;
    const uint32_t full = sB + STAGES * B_STAGE, empty = full + STAGES * 8;
    const int nk = (int)(p.K / BK);

    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            sm90::mbar_init(full + 8 * s, 1);
            sm90::mbar_init(empty + 8 * s, CL * wg::CONSUMER_WARPS);
        }
        sm90::fence_mbar_init();
        /* Decreasing offsets (a caller's bug) give no work rather than a wild schedule. */
        if (p.group_start && gemm_sched_unit_start(p.group_start, p.num_groups, BM, CL, s_unit_start) < 0)
            for (int gi = 0; gi <= p.num_groups; gi++) s_unit_start[gi] = 0;
        /* The schedule, identical in every CTA (gridDim.x CTAs launched: the host's bound). It
         * lives in shared memory: in registers it spilled (ptxas, 168-register cap). */
        const int raster = p.raster && !p.group_start ? DSV3_WG_RASTER : 0;
        const int bad = p.group_start ? gemm_sched_grouped(&s_sched, p.group_start, s_unit_start, p.num_groups, p.N,
                                                           nk, BM, BN, (int)gridDim.x, CL, raster)
                                      : gemm_sched_dense(&s_sched, p.M, p.N, nk, BM, BN, (int)gridDim.x, CL, raster);
        if (bad) s_sched.ctas = 0; /* fp8_gemm_cuda validated the shape: not reached */
    }
    if (MC) sm90::cluster_sync(); /* the peer's barriers exist before anything arrives on them */
    else __syncthreads();

    const GemmSched &sc = s_sched;
    const int cta = (int)blockIdx.x;
    const int64_t count = cta < sc.ctas ? gemm_sched_count(&sc, cta) : 0; /* equal within a cluster */

    const int wgi = threadIdx.x / 128;
    if (wgi == 0) {
        sm90::setmaxnreg_dec<40>();
        if (threadIdx.x == 0) {
            uint32_t it = 0; /* running stage counter across tiles */
            for (int64_t k = 0; k < count; k++) {
                const GemmTile t = gemm_sched_tile(&sc, gemm_sched_pid(&sc, cta, k), (int)rank);
                const int32_t a_row = (int32_t)t.row0;
                const int32_t b_row = (int32_t)((int64_t)t.group * p.N + t.n_tile * BN);
                for (int kt = 0; kt < nk; kt++, it++)
                    wg_load_stage<MC>(&tmap_a, &tmap_b, sA, sB, full, empty, (int)(it % STAGES), (it / STAGES) & 1u, kt,
                                      a_row, b_row, rank);
            }
        }
    } else {
        sm90::setmaxnreg_inc<232>();
        const int cw = wgi - 1;
        const int lane = threadIdx.x % 32, warp_in_wg = (threadIdx.x / 32) % 4;
        const int g = lane / 4, t4 = lane % 4;
        uint32_t it = 0;
        for (int64_t k = 0; k < count; k++) {
            const GemmTile t = gemm_sched_tile(&sc, gemm_sched_pid(&sc, cta, k), (int)rank);
            const int64_t n0 = t.n_tile * BN;
            const int64_t r_lo = t.row0 + cw * 64 + warp_in_wg * 16 + g, r_hi = r_lo + 8;
            const float *bsg = p.b_scale + ((int64_t)t.group * ceil_div<int64_t>(p.N, 128) + n0 / 128) * nk;

            float acc[64], part[64];
#pragma unroll
            for (int i = 0; i < 64; i++) acc[i] = part[i] = 0.0f;

            for (int kt = 0; kt < nk; kt++, it++) {
                const int s = (int)(it % STAGES);
                const uint32_t ph = (it / STAGES) & 1u;
                const float sa_lo = r_lo < t.row_end ? p.a_scale[r_lo * nk + kt] : 0.0f;
                const float sa_hi = r_hi < t.row_end ? p.a_scale[r_hi * nk + kt] : 0.0f;
                const float sb = bsg[kt];
                wg_mma_block<MC>(acc, part, sA, sB, full, empty, s, ph, cw, lane, rank, sa_lo, sa_hi, sb);
            }
            /* Epilogue: direct stores (the producer is already filling the ring for the next tile). */
            wg_store(p, acc, n0, t4, r_lo, r_hi, t.row_end);
        }
    }
    /* Neither CTA of a pair may exit while the other can still arrive on its barriers. */
    if (MC) sm90::cluster_sync();
#endif
}
#endif /* DSV3_GEMM_PERSISTENT */

/* ------------------------------------------------------------------------------------------
 * Host side
 * ---------------------------------------------------------------------------------------- */

/** Split-K factor FP8_GEMM_MMA uses for a dense product when allowed to split (1 = none). */
static int auto_splits(int64_t m_tiles, int64_t n_tiles, int kblocks, int sm_count) {
    const int64_t tiles = m_tiles * n_tiles;
    if (tiles >= sm_count || kblocks < 4) return 1;
    /* One wave: measured on H100 (docs/benchmarks.md, --split-sweep), a second partial wave
     * costs more than the extra parallelism gives (7168×16384, M = 1: 2 splits 73 µs, 5 splits
     * = 2.1 waves 86 µs). */
    int64_t s = sm_count / tiles;
    s = s < kblocks / 2 ? s : kblocks / 2; /* at least two K blocks per split */
    s = s < 16 ? s : 16;
    if (s < 2) return 1;
    const int per = ceil_div(kblocks, (int)s);
    return ceil_div(kblocks, per); /* no empty splits */
}

/** BM of the MMA tile chosen for @p rows_per_group rows. */
static int mma_bm(int64_t rows_per_group) { return rows_per_group <= 16 ? 16 : 64; }

template <class Tile>
static int launch_mma(const GemmArgs &args, int64_t m_tiles, int splits, const FastDevice &dev, cudaStream_t stream,
                      Err *err) {
    const char *fn = "fp8_gemm_cuda";
    if ((size_t)Tile::SMEM > dev.smem_optin)
        return err_set(err, "%s: the MMA tile (BM = %d) needs %d bytes of shared memory, device %s allows %zu", fn,
                       Tile::BM, Tile::SMEM, dev.name, dev.smem_optin);
    if (fast_cuda_err(cudaFuncSetAttribute(fp8_gemm_mma_kernel<Tile>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           Tile::SMEM),
                      fn, "cudaFuncSetAttribute(mma)", err))
        return -1;
    dim3 grid((unsigned)ceil_div<int64_t>(args.N, 128), (unsigned)m_tiles, (unsigned)splits);
    fp8_gemm_mma_kernel<Tile><<<grid, Tile::THREADS, Tile::SMEM, stream>>>(args);
    return fast_check_launch(fn, "fp8_gemm_mma_kernel", err);
}

/** cuTensorMapEncodeTiled's signature. */
typedef CUresult (*EncodeTiledFn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                  const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

/** cuTensorMapEncodeTiled from the driver, found through the runtime (no -lcuda needed). */
static EncodeTiledFn encode_tiled(Err *err) {
    static EncodeTiledFn fn = nullptr;
    if (fn) return fn;
    void *ptr = nullptr;
    cudaDriverEntryPointQueryResult q;
    cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &q);
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || !ptr) {
        err_set(err, "fp8_gemm_cuda: cuTensorMapEncodeTiled not available from the driver (%s, query %d)",
                cudaGetErrorString(e), (int)q);
        return nullptr;
    }
    fn = reinterpret_cast<EncodeTiledFn>(ptr);
    return fn;
}

/** Tensor map over a [rows][K] e4m3 matrix, @p box_rows × 128-byte boxes, 128-byte swizzle, zero OOB fill. */
static int make_tmap(CUtensorMap *map, const uint8_t *ptr, int64_t rows, int64_t K, uint32_t box_rows, const char *what,
                     Err *err) {
    EncodeTiledFn enc = encode_tiled(err);
    if (!enc) return -1;
    cuuint64_t dims[2] = { (cuuint64_t)K, (cuuint64_t)rows };
    cuuint64_t strides[1] = { (cuuint64_t)K };
    cuuint32_t box[2] = { 128, box_rows };
    cuuint32_t estr[2] = { 1, 1 };
    CUresult r = enc(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<uint8_t *>(ptr), dims, strides, box, estr,
                     CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                     CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return err_set(err, "fp8_gemm_cuda: cuTensorMapEncodeTiled(%s: %lld rows × %lld bytes) failed with CUresult %d",
                       what, (long long)rows, (long long)K, (int)r);
    return 0;
}

/* FP8_GEMM_AUTO, from the H100 table in docs/benchmarks.md (2026-11-22): the WGMMA kernel
 * wins from 128 rows on everywhere and for grouped GEMMs at any size; below 128 rows of a dense
 * GEMM it wins when N alone gives enough CTAs
 * (≥ 48 tiles of 128 columns: 1.4–2.5× at M = 64 for N ≥ 7168), except for a short K at
 * M ≤ 16 (32768×512), while for small N (2112, 4096) the MMA kernel's split-K fills the
 * machine and is up to 2.2× faster. */
static Fp8GemmPath auto_path(int cc, int64_t rows, bool grouped, int64_t N, int64_t K, int sm_count) {
    if (cc != 90) return FP8_GEMM_MMA;
    if (rows >= FP8_GEMM_WGMMA_MIN_ROWS) return FP8_GEMM_WGMMA;
    /* Grouped (MoE experts) with few rows per expert is weight-bound: WGMMA's TMA stream reads
     * the weights faster (H100, 256 experts: 2.4 vs 2.0 TB/s at 2 rows/expert, 1.63× at 16). */
    if (grouped) return FP8_GEMM_WGMMA;
    const int64_t ntiles = ceil_div<int64_t>(N, 128);
    if (ntiles < FP8_GEMM_WGMMA_MIN_NTILES) return FP8_GEMM_MMA;
    if (rows > 16) return FP8_GEMM_WGMMA;
    return ntiles >= sm_count && K >= 1024 ? FP8_GEMM_WGMMA : FP8_GEMM_MMA;
}

static int launch_wgmma(const GemmArgs &args, int64_t m_tiles, cudaStream_t stream, Err *err) {
    const char *fn = "fp8_gemm_cuda";
    const bool mc = DSV3_WG_MULTICAST && !args.group_start && m_tiles < 65535; /* grid.y rounds up to even */
    CUtensorMap ta, tb;
    if (make_tmap(&ta, args.a, args.M, args.K, wg::BM, "A", err)) return -1;
    if (make_tmap(&tb, args.b, (int64_t)args.num_groups * args.N, args.K, mc ? wg::BN / 2 : wg::BN, "B", err)) return -1;
    if (!mc) {
        if (fast_cuda_err(cudaFuncSetAttribute(fp8_gemm_wgmma_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               wg::SMEM),
                          fn, "cudaFuncSetAttribute(wgmma)", err))
            return -1;
        dim3 grid((unsigned)ceil_div<int64_t>(args.N, wg::BN), (unsigned)m_tiles, 1);
        fp8_gemm_wgmma_kernel<false><<<grid, wg::THREADS, wg::SMEM, stream>>>(ta, tb, args);
        return fast_check_launch(fn, "fp8_gemm_wgmma_kernel", err);
    }
    if (fast_cuda_err(cudaFuncSetAttribute(fp8_gemm_wgmma_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           wg::SMEM),
                      fn, "cudaFuncSetAttribute(wgmma, cluster)", err))
        return -1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)ceil_div<int64_t>(args.N, wg::BN), (unsigned)((m_tiles + 1) / 2 * 2), 1);
    cfg.blockDim = dim3(wg::THREADS, 1, 1);
    cfg.dynamicSmemBytes = wg::SMEM;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 1, attr[0].val.clusterDim.y = 2, attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr, cfg.numAttrs = 1;
    if (fast_cuda_err(cudaLaunchKernelEx(&cfg, fp8_gemm_wgmma_kernel<true>, ta, tb, args), fn,
                      "cudaLaunchKernelEx(wgmma, cluster of 2)", err))
        return -1;
    return fast_check_launch(fn, "fp8_gemm_wgmma_kernel<cluster>", err);
}

#if DSV3_GEMM_PERSISTENT
/**
 * Launches Kernel 3 on one CTA per SM (at most the schedule's units; grouped: the bound
 * ceil(M / (BM·cluster)) + G unit rows, since each expert adds at most one partial unit row).
 * Clusters of 2: no more pairs than cudaOccupancyMaxActiveClusters says can be resident at once.
 */
static int launch_wgmma_persistent(const GemmArgs &args, int sm_count, cudaStream_t stream, Err *err) {
    const char *fn = "fp8_gemm_cuda";
    const bool mc = DSV3_GEMM_PERSISTENT_MC != 0;
    const int cl = mc ? 2 : 1;
    const int64_t n_tiles = ceil_div<int64_t>(args.N, wg::BN);
    const int64_t unit_rows = args.group_start ? ceil_div<int64_t>(args.M, (int64_t)wg::BM * cl) + args.num_groups
                                               : gemm_sched_unit_rows(args.M, wg::BM, cl);
    CUtensorMap ta, tb;
    if (make_tmap(&ta, args.a, args.M, args.K, wg::BM, "A", err)) return -1;
    if (make_tmap(&tb, args.b, (int64_t)args.num_groups * args.N, args.K, mc ? wg::BN / 2 : wg::BN, "B", err)) return -1;
    auto kernel = mc ? fp8_gemm_wgmma_persistent_kernel<true> : fp8_gemm_wgmma_persistent_kernel<false>;
    if (fast_cuda_err(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, wg::SMEM), fn,
                      "cudaFuncSetAttribute(wgmma persistent)", err))
        return -1;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    cfg.blockDim = dim3(wg::THREADS, 1, 1);
    cfg.dynamicSmemBytes = wg::SMEM;
    cfg.stream = stream;
    int slots = sm_count;
    if (mc) {
        attr[0].id = cudaLaunchAttributeClusterDimension;
        attr[0].val.clusterDim.x = 2, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
        cfg.attrs = attr, cfg.numAttrs = 1;
        cfg.gridDim = dim3((unsigned)(sm_count / 2 * 2), 1, 1);
        int clusters = 0;
        if (fast_cuda_err(cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg), fn,
                          "cudaOccupancyMaxActiveClusters(wgmma persistent)", err))
            return -1;
        if (clusters < 1)
            return err_set(err, "%s: no 2-CTA cluster of the persistent GEMM fits on device (%d SMs)", fn, sm_count);
        slots = clusters * 2 < sm_count ? clusters * 2 : sm_count;
    }
    const int ctas = gemm_sched_grid(unit_rows * n_tiles, slots, cl);
    if (ctas == 0) return 0;
    cfg.gridDim = dim3((unsigned)ctas, 1, 1);
    if (fast_cuda_err(cudaLaunchKernelEx(&cfg, kernel, ta, tb, args), fn, "cudaLaunchKernelEx(wgmma persistent)", err))
        return -1;
    return fast_check_launch(fn, "fp8_gemm_wgmma_persistent_kernel", err);
}
#endif

} // namespace dsv3

using namespace dsv3;

extern "C" const char *fp8_gemm_path_name(Fp8GemmPath path) {
    switch (path) {
    case FP8_GEMM_AUTO: return "auto";
    case FP8_GEMM_MMA: return "mma";
    case FP8_GEMM_WGMMA: return "wgmma";
    }
    return "?";
}

extern "C" size_t fp8_gemm_workspace_bytes(int64_t M, int64_t N, int64_t K) {
    FastDevice dev;
    if (M <= 0 || N <= 0 || K <= 0 || K % 128 || fast_device(&dev, NULL)) return 0;
    const int64_t m_tiles = ceil_div<int64_t>(M, mma_bm(M));
    const int s = auto_splits(m_tiles, ceil_div<int64_t>(N, 128), (int)(K / 128), dev.sm_count);
    return s > 1 ? (size_t)s * (size_t)M * (size_t)N * sizeof(float) : 0;
}

extern "C" int fp8_gemm_cuda(const Fp8GemmParams *p, cudaStream_t stream, Err *err) {
    const char *fn = "fp8_gemm_cuda";
    if (p->M < 0 || p->N <= 0 || p->K <= 0 || p->K % 128 != 0)
        return err_set(err, "%s: M = %lld, N = %lld, K = %lld: need M >= 0, N > 0 and K a positive multiple of 128", fn,
                       (long long)p->M, (long long)p->N, (long long)p->K);
    if (p->K / 128 > 0x7FFFFFFF || p->N > 0x7FFFFFFF || p->M > 0x7FFFFFFF)
        return err_set(err, "%s: M, N or K/128 above 2^31", fn);
    if (p->out_dtype != FAST_F32 && p->out_dtype != FAST_BF16)
        return err_set(err, "%s: out_dtype %d is not f32 or bf16", fn, (int)p->out_dtype);
    if (p->ldo < p->N) return err_set(err, "%s: ldo = %lld < N = %lld", fn, (long long)p->ldo, (long long)p->N);
    if (((uintptr_t)p->a | (uintptr_t)p->b) % 16 != 0) return err_set(err, "%s: a and b must be 16-byte aligned", fn);
    if (!p->out || !p->a || !p->a_scale || !p->b || !p->b_scale) return err_set(err, "%s: a NULL operand pointer", fn);
    const int G = p->group_start ? p->num_groups : 1;
    if (G < 1) return err_set(err, "%s: num_groups = %d, need >= 1", fn, p->num_groups);
    if (p->M == 0) return 0;
    FastDevice dev;
    if (fast_device(&dev, err)) return -1;
    const int cc = dev.cc_major * 10 + dev.cc_minor;
    if (cc < 89)
        return err_set(err, "%s: FP8 tensor-core GEMM needs compute capability >= 8.9, device %s is %d.%d", fn, dev.name,
                       dev.cc_major, dev.cc_minor);

    /* Rows per group decide the tile height (and AUTO's kernel). */
    const int64_t rows_per_group = p->group_start ? ceil_div<int64_t>(p->M, G) : p->M;
    Fp8GemmPath path = p->path;
    if (path == FP8_GEMM_AUTO) path = auto_path(cc, rows_per_group, p->group_start != nullptr, p->N, p->K, dev.sm_count);
    if (path == FP8_GEMM_WGMMA && cc != 90)
        return err_set(err, "%s: the WGMMA path needs an sm_90 GPU (H100/H200), device %s is %d.%d", fn, dev.name,
                       dev.cc_major, dev.cc_minor);
    if (path != FP8_GEMM_MMA && path != FP8_GEMM_WGMMA) return err_set(err, "%s: unknown path %d", fn, (int)path);

    GemmArgs args;
    args.out = p->out;
    args.out_dtype = p->out_dtype;
    args.ldo = p->ldo;
    args.a = p->a;
    args.a_scale = p->a_scale;
    args.b = p->b;
    args.b_scale = p->b_scale;
    args.M = p->M;
    args.N = p->N;
    args.K = p->K;
    args.group_start = p->group_start;
    args.num_groups = G;
    args.splits = 1;
    args.workspace = nullptr;
    /* Rasterize when B does not fit in half the L2 (measured: +6–26 % for 29–264 MB of weights,
     * −5–10 % for the 15–17 MB ones, where every B tile stays in L2 anyway). */
    args.raster = (size_t)p->N * (size_t)p->K > dev.l2_bytes / 2;

    const int bm = path == FP8_GEMM_WGMMA ? wg::BM : mma_bm(rows_per_group);
    /* Grouped: each non-empty group adds at most one partial tile; CTAs past the last tile exit. */
    const int64_t m_tiles = ceil_div<int64_t>(p->M, bm) + (p->group_start ? G : 0);
    if (m_tiles > 65535) return err_set(err, "%s: %lld row tiles exceed the grid limit 65535", fn, (long long)m_tiles);

#if DSV3_GEMM_PERSISTENT
    if (path == FP8_GEMM_WGMMA && G <= PERSIST_MAX_GROUPS) return launch_wgmma_persistent(args, dev.sm_count, stream, err);
#endif
    if (path == FP8_GEMM_WGMMA) return launch_wgmma(args, m_tiles, stream, err);

    if (!p->group_start && p->workspace && p->splits != 1) {
        const int kblocks = (int)(p->K / 128);
        int s = p->splits > 1 ? p->splits : auto_splits(m_tiles, ceil_div<int64_t>(p->N, 128), kblocks, dev.sm_count);
        if (s > kblocks) s = kblocks;
        if (s > 1) s = ceil_div(kblocks, ceil_div(kblocks, s)); /* no empty splits */
        const size_t need = (size_t)s * (size_t)p->M * (size_t)p->N * sizeof(float);
        if (s > 1 && need > p->workspace_bytes)
            return err_set(err, "%s: split-K by %d needs %zu workspace bytes, got %zu", fn, s, need, p->workspace_bytes);
        if (s > 1) {
            args.splits = s;
            args.workspace = p->workspace;
        }
    }
    int rc;
    if (bm == 16) rc = launch_mma<MmaSmall>(args, m_tiles, args.splits, dev, stream, err);
    else rc = launch_mma<MmaMid>(args, m_tiles, args.splits, dev, stream, err);
    if (rc || args.splits == 1) return rc;
    const int64_t n = p->M * p->N;
    splitk_reduce_kernel<<<(unsigned)ceil_div<int64_t>(n, 256), 256, 0, stream>>>(args);
    return fast_check_launch(fn, "splitk_reduce_kernel", err);
}
