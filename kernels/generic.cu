/**
 * @file generic.cu
 * @brief Plain FP32 (SIMT) kernels for every shape and dtype the tensor-core kernels do not take
 *        (fast/generic.h): linear over F32/BF16/FP8 weights of any K, dense or grouped; 1×128
 *        activation quantization of any K returning e4m3 values as floats; strided batched
 *        products (the absorbed MLA's per-head W_UKᵀq and W_UV·u); MLA attention for any
 *        latent width and head count; paged latent-cache writes; strided copies with a dtype change.
 *
 * Why they exist: fp8_gemm.cu needs FP8 weights with K % 128 == 0 and mla_decode.cu needs
 * H % 64 == 0, Dc = 512, Dr = 64 and a bf16 cache. The small checkpoints (official-tiny: BF16,
 * H = 4, Dc = 64; fp8-small: o_proj K = 144, H = 3) and the prefill path fall outside both, so
 * these kernels make every model the reference loads run on the GPU. Each is the reference
 * function's loop nest with the same per-element arithmetic in FP32; none is tuned.
 *
 * Design:
 *  - linear_generic / gemm_batched: one CTA per 64×64 output tile, 256 threads, each a 4×4
 *    register tile; K in chunks of 32 staged through shared memory (stored k-major so the inner
 *    loop reads float4s). For FP8 weights each 128-wide K block (4 chunks, or what is left of K)
 *    is summed into a zeroed FP32 partial and then promoted exactly as ref linear.c does:
 *    acc + partial·s_w (dequant) or acc + (partial·s_x)·s_w (w8a8), each operation rounded once.
 *    Grouped rows: a CTA's row tile is found by walking the groups' tile counts (rows_g / 64
 *    rounded up), so the grid is bounded by ceil(M/64) + G and holds no tile of two groups.
 *  - mla_attend_generic: one CTA per (query, head); positions in chunks of 32 (one warp per
 *    position for the score dot product), online softmax with a running max, P·V accumulated
 *    per latent column by the thread that owns it, divided by the running sum at the end.
 *  - fp8_quantize_rows_f32: one warp per (row, 128-group), the same operations as
 *    kernels/act_quant.cu (fmaxf amax, __fdiv_rn scale and quotient, saturating RNE encoder).
 *  - kv_cache_write / copy_rows: grid-stride loops, one element per thread and step.
 *
 * Numerics: bit-identical where the header says so (quantization, cache writes, copies: bf16 by
 * the reference's own f32_to_bf16 rule, NaN payloads included); elsewhere the reference's
 * operations in another summation order, so within FP32 rounding (see tests/gpu/test_kernels_generic.c,
 * group "generic", for the bounds).
 *
 * VALIDATION STATUS: compiled (sm_80/89/90a) and checked on the host emulation
 * (tests/gpu/mock_generic.c); not yet run on a GPU.
 */
#include <cuda_runtime.h>

#include "common.cuh"
#include "generic.h"

namespace dsv3 {

constexpr int GT_BM = 64;        /**< output rows per CTA tile */
constexpr int GT_BN = 64;        /**< output columns per CTA tile */
constexpr int GT_BK = 32;        /**< K elements staged per chunk */
constexpr int GT_THREADS = 256;  /**< 16 × 16 threads, 4 × 4 outputs each */
constexpr int GT_LD = GT_BM + 4; /**< shared row length: keeps float4 alignment, spreads banks */
constexpr int FP8_KB = 128;      /**< K width of an FP8 scale block */
constexpr unsigned MAX_GRID_Y = 65535; /**< CUDA's limit on gridDim.y (and z) */

/** Weight element kinds of linear_generic. */
enum WKind { W_F32 = 0, W_BF16 = 1, W_E4M3 = 2 };

/** e4m3fn code → float, exactly ref's table: NaN codes give ±(quiet NaN 0x7FC00000), like C's NAN. */
__device__ __forceinline__ float e4m3_to_f32(uint8_t c) {
    const uint32_t sign = (uint32_t)(c & 0x80u) << 24, e = (c >> 3) & 0xFu, m = c & 7u;
    uint32_t mag;
    if (e == 0) mag = __float_as_uint((float)m * 0.001953125f); /* subnormal: m · 2^-9, exact */
    else if (e == 15 && m == 7) mag = 0x7FC00000u;
    else mag = ((e + 120u) << 23) | (m << 20); /* 2^(e-7) · (1 + m/8): biased exponent e − 7 + 127 */
    return __uint_as_float(sign | mag);
}

/**
 * float → bf16 bits by ref util.c's f32_to_bf16 (round to nearest even; a NaN keeps its top
 * payload bits and is made quiet), so cache writes and copies are bit-identical to the
 * reference's conversion, NaNs included (__float2bfloat16_rn would canonicalize them).
 */
__device__ __forceinline__ uint16_t bf16_bits_ref(float f) {
    const uint32_t u = __float_as_uint(f);
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/** Element i of a weight array of kind @p wk, as float. */
__device__ __forceinline__ float load_weight(const void *w, int wk, int64_t i) {
    if (wk == W_E4M3) return e4m3_to_f32(static_cast<const uint8_t *>(w)[i]);
    if (wk == W_BF16) return bf16_bits_to_f32(static_cast<const uint16_t *>(w)[i]);
    return static_cast<const float *>(w)[i];
}

/** part[i][j] += As[k][ty·4+i] · Bs[k][tx·4+j] over one staged chunk, k ascending. */
__device__ __forceinline__ void fma_chunk(float (&part)[4][4], const float (*As)[GT_LD], const float (*Bs)[GT_LD],
                                          int tx, int ty) {
#pragma unroll 8
    for (int k = 0; k < GT_BK; k++) {
        const float4 a = *reinterpret_cast<const float4 *>(&As[k][ty * 4]);
        const float4 b = *reinterpret_cast<const float4 *>(&Bs[k][tx * 4]);
        const float av[4] = { a.x, a.y, a.z, a.w }, bv[4] = { b.x, b.y, b.z, b.w };
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) part[i][j] = fmaf(av[i], bv[j], part[i][j]);
    }
}

/** Arguments of linear_generic_kernel (LinearGenericParams with the dtype resolved). */
struct LinearArgs {
    float *y;               /**< [M][ldy] output */
    int64_t ldy;            /**< output row stride */
    const float *x;         /**< [M][ldx] activations (or e4m3 values in w8a8) */
    int64_t ldx;            /**< input row stride */
    const float *x_scale;   /**< w8a8 activation scales, or NULL */
    const void *w;          /**< [G][N][K] weights */
    int wk;                 /**< WKind of w */
    const float *w_scale;   /**< FP8 block scales, or NULL */
    int64_t M;              /**< rows */
    int64_t N;              /**< output features */
    int64_t K;              /**< input features */
    const int *group_start; /**< [G+1] row offsets, or NULL (dense) */
    int G;                  /**< groups */
};

/**
 * One 64×64 tile of y = x·Wᵀ (grid.x: row tiles, grid.y: column tiles). For FP8 weights the
 * chunks of one 128-wide K block accumulate into `part`, promoted into `acc` at the block's end.
 */
__global__ void __launch_bounds__(GT_THREADS, 2) linear_generic_kernel(const LinearArgs a) {
    __shared__ __align__(16) float As[GT_BK][GT_LD];
    __shared__ __align__(16) float Bs[GT_BK][GT_LD];
    /* Which rows: dense → tile blockIdx.x of [0, M); grouped → walk the groups' tile counts.
     * Offsets are clamped to [0, M] so that a malformed group_start cannot write outside y. */
    int g = 0;
    int64_t r0 = 0, r1 = 0;
    if (!a.group_start) {
        r0 = (int64_t)blockIdx.x * GT_BM;
        r1 = min(r0 + GT_BM, a.M);
    } else {
        int64_t t = blockIdx.x;
        bool found = false;
        for (; g < a.G; g++) {
            const int64_t s = min(max((int64_t)a.group_start[g], (int64_t)0), a.M);
            const int64_t e = min(max((int64_t)a.group_start[g + 1], s), a.M);
            const int64_t tiles = ceil_div<int64_t>(e - s, GT_BM);
            if (t < tiles) {
                r0 = s + t * GT_BM, r1 = min(r0 + GT_BM, e), found = true;
                break;
            }
            t -= tiles;
        }
        if (!found) return; /* the grid is an upper bound on the tiles; uniform per CTA */
    }
    if (r0 >= r1) return;
    const int64_t n0 = (int64_t)blockIdx.y * GT_BN, N = a.N, K = a.K, kb = ceil_div<int64_t>(K, FP8_KB);
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const bool fp8 = a.wk == W_E4M3;
    const void *w = a.wk == W_E4M3   ? (const void *)(static_cast<const uint8_t *>(a.w) + (int64_t)g * N * K)
                    : a.wk == W_BF16 ? (const void *)(static_cast<const uint16_t *>(a.w) + (int64_t)g * N * K)
                                     : (const void *)(static_cast<const float *>(a.w) + (int64_t)g * N * K);
    const float *ws = fp8 ? a.w_scale + (int64_t)g * ceil_div<int64_t>(N, FP8_KB) * kb : nullptr;
    float acc[4][4], part[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f, part[i][j] = 0.0f;

    for (int64_t k0 = 0; k0 < K; k0 += GT_BK) {
        /* Stage x[r0.., k0..] and W[n0.., k0..] (zero outside): a warp reads 32 consecutive k of one row.
         * Unrolled by 2 only: a full unroll costs ~170 registers (one CTA per SM); this fits 128 without spills. */
#pragma unroll 2
        for (int i = 0; i < GT_BM * GT_BK / GT_THREADS; i++) {
            const int idx = tid + i * GT_THREADS, rr = idx / GT_BK, kk = idx % GT_BK;
            const int64_t m = r0 + rr, n = n0 + rr, k = k0 + kk;
            As[kk][rr] = (m < r1 && k < K) ? a.x[m * a.ldx + k] : 0.0f;
            Bs[kk][rr] = (n < N && k < K) ? load_weight(w, a.wk, n * K + k) : 0.0f;
        }
        __syncthreads();
        fma_chunk(part, As, Bs, tx, ty);
        __syncthreads();
        /* FP8: promote at the end of each 128-wide block (the last one may be short). */
        if (fp8 && ((k0 + GT_BK) % FP8_KB == 0 || k0 + GT_BK >= K)) {
            const int64_t b = k0 / FP8_KB;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int64_t m = r0 + ty * 4 + i;
                const float sx = (a.x_scale && m < r1) ? a.x_scale[m * kb + b] : 1.0f;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const int64_t n = n0 + tx * 4 + j;
                    const float sw = n < N ? ws[(n / FP8_KB) * kb + b] : 0.0f;
                    /* ref linear.c: acc += partial * s_w (dequant), acc += partial * s_x * s_w (w8a8) */
                    const float t = a.x_scale ? __fmul_rn(__fmul_rn(part[i][j], sx), sw) : __fmul_rn(part[i][j], sw);
                    acc[i][j] = __fadd_rn(acc[i][j], t);
                    part[i][j] = 0.0f;
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int64_t m = r0 + ty * 4 + i;
        if (m >= r1) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int64_t n = n0 + tx * 4 + j;
            if (n < N) a.y[m * a.ldy + n] = fp8 ? acc[i][j] : part[i][j];
        }
    }
}

constexpr int TB_BM = 64;        /**< BF16 tensor-core linear: output rows per CTA */
constexpr int TB_BN = 128;       /**< output columns per CTA (8 warps: 2 along M × 4 along N, 32×32 each) */
constexpr int TB_BK = 32;        /**< K per staged chunk (two k16 steps) */
constexpr int TB_LD = TB_BK + 8; /**< bf16 per shared row: 80 bytes, 4-byte aligned pairs, fewer bank conflicts */

/** Splits an FP32 value into three bf16 parts, v = hi + mid + lo up to 2^-27·|v|. */
__device__ __forceinline__ void split3_bf16(float v, uint16_t &hi, uint16_t &mid, uint16_t &lo) {
    hi = f32_to_bf16_bits(v);
    const float r1 = v - bf16_bits_to_f32(hi); /* exact: the bits bf16 dropped */
    mid = f32_to_bf16_bits(r1);
    lo = f32_to_bf16_bits(r1 - bf16_bits_to_f32(mid));
}

/**
 * Dense y = x·Wᵀ for BF16 weights on tensor cores (mma.sync m16n8k16, FP32 accumulators), with
 * the FP32 activations split into three bf16 parts (hi + mid + lo, 24 significant bits like the
 * FP32 value itself) so that the product keeps FP32 accuracy: each bf16×bf16 product is exact in
 * FP32, so the result differs from the FP32 reference only by the order of the FP32 sums. Three
 * MMAs per tile are cheap next to streaming the weights (the lm_head is 1.85 GB of BF16 at decode).
 * Fragment layouts: mma_bf16_16816 (kernels/common.cuh), loaded straight from shared memory.
 */
__global__ void __launch_bounds__(256) linear_bf16_tc_kernel(const LinearArgs a) {
    __shared__ __align__(16) uint16_t As[3][TB_BM][TB_LD]; /* hi, mid, lo parts of x */
    __shared__ __align__(16) uint16_t Bs[TB_BN][TB_LD];
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, wm = warp / 4, wn = warp % 4, g = lane / 4, t = lane % 4;
    const int64_t m0 = (int64_t)blockIdx.x * TB_BM, n0 = (int64_t)blockIdx.y * TB_BN, M = a.M, N = a.N, K = a.K;
    const uint16_t *w = static_cast<const uint16_t *>(a.w);
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += TB_BK) {
        for (int i = tid; i < TB_BM * TB_BK; i += 256) { /* x: 32 consecutive k per warp (coalesced) */
            const int r = i / TB_BK, c = i % TB_BK;
            const int64_t m = m0 + r, k = k0 + c;
            const float v = (m < M && k < K) ? a.x[m * a.ldx + k] : 0.0f;
            split3_bf16(v, As[0][r][c], As[1][r][c], As[2][r][c]);
        }
        for (int i = tid; i < TB_BN * TB_BK; i += 256) {
            const int r = i / TB_BK, c = i % TB_BK;
            const int64_t n = n0 + r, k = k0 + c;
            Bs[r][c] = (n < N && k < K) ? w[n * K + k] : (uint16_t)0;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TB_BK; kk += 16) {
            uint32_t b[4][2];
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                const int col = wn * 32 + ni * 8 + g;
                b[ni][0] = *reinterpret_cast<const uint32_t *>(&Bs[col][kk + 2 * t]);
                b[ni][1] = *reinterpret_cast<const uint32_t *>(&Bs[col][kk + 2 * t + 8]);
            }
#pragma unroll
            for (int part = 0; part < 3; part++)
#pragma unroll
                for (int mi = 0; mi < 2; mi++) {
                    const int row = wm * 32 + mi * 16 + g;
                    uint32_t af[4];
                    af[0] = *reinterpret_cast<const uint32_t *>(&As[part][row][kk + 2 * t]);
                    af[1] = *reinterpret_cast<const uint32_t *>(&As[part][row + 8][kk + 2 * t]);
                    af[2] = *reinterpret_cast<const uint32_t *>(&As[part][row][kk + 2 * t + 8]);
                    af[3] = *reinterpret_cast<const uint32_t *>(&As[part][row + 8][kk + 2 * t + 8]);
#pragma unroll
                    for (int ni = 0; ni < 4; ni++) mma_bf16_16816(acc[mi][ni], af, b[ni][0], b[ni][1]);
                }
        }
        __syncthreads();
    }
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++) {
            const int64_t r = m0 + wm * 32 + mi * 16 + g, c = n0 + wn * 32 + ni * 8 + 2 * t;
            if (r < M && c < N) a.y[r * a.ldy + c] = acc[mi][ni][0];
            if (r < M && c + 1 < N) a.y[r * a.ldy + c + 1] = acc[mi][ni][1];
            if (r + 8 < M && c < N) a.y[(r + 8) * a.ldy + c] = acc[mi][ni][2];
            if (r + 8 < M && c + 1 < N) a.y[(r + 8) * a.ldy + c + 1] = acc[mi][ni][3];
        }
}

constexpr int GV_MAX_M = 8; /**< rows up to which a dense linear runs as a GEMV (decode steps) */
constexpr int GV_WARPS = 8; /**< output features (one per warp) per CTA of the GEMV */

/**
 * Dense y = x·Wᵀ for M ≤ GV_MAX_M rows (decode): one warp per output feature n streams W's row n
 * once (lanes read consecutive k: coalesced) against all M rows of x, so the weights are read once
 * and no tile rows are wasted (the 64-row tile kernel would compute 64 rows to use one). FP8:
 * each 128-wide block's partial is reduced across the warp, then promoted exactly like the tile
 * kernel; other dtypes: one partial over the whole row.
 */
__global__ void __launch_bounds__(GV_WARPS * 32) linear_gemv_kernel(const LinearArgs a) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t n = (int64_t)blockIdx.x * GV_WARPS + warp, K = a.K, kb = ceil_div<int64_t>(K, FP8_KB);
    if (n >= a.N) return; /* whole warp */
    const bool fp8 = a.wk == W_E4M3;
    const int M = (int)a.M;
    const int64_t span = fp8 ? FP8_KB : K; /* one partial per FP8 block, else one for the row */
    float acc[GV_MAX_M];
#pragma unroll
    for (int m = 0; m < GV_MAX_M; m++) acc[m] = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += span) {
        const int64_t k1 = min(k0 + span, K);
        float part[GV_MAX_M];
#pragma unroll
        for (int m = 0; m < GV_MAX_M; m++) part[m] = 0.0f;
        for (int64_t k = k0 + lane; k < k1; k += 32) {
            const float wv = load_weight(a.w, a.wk, n * K + k);
#pragma unroll
            for (int m = 0; m < GV_MAX_M; m++)
                if (m < M) part[m] = fmaf(a.x[m * a.ldx + k], wv, part[m]);
        }
#pragma unroll
        for (int m = 0; m < GV_MAX_M; m++)
            for (int off = 16; off > 0; off >>= 1) part[m] += __shfl_xor_sync(0xffffffffu, part[m], off);
        if (!fp8) {
#pragma unroll
            for (int m = 0; m < GV_MAX_M; m++) acc[m] = part[m];
            continue;
        }
        const int64_t b = k0 / FP8_KB;
        const float sw = a.w_scale[(n / FP8_KB) * kb + b];
#pragma unroll
        for (int m = 0; m < GV_MAX_M; m++) {
            if (m >= M) continue;
            /* ref linear.c: acc += partial * s_w (dequant), acc += partial * s_x * s_w (w8a8) */
            const float t = a.x_scale ? __fmul_rn(__fmul_rn(part[m], a.x_scale[m * kb + b]), sw) : __fmul_rn(part[m], sw);
            acc[m] = __fadd_rn(acc[m], t);
        }
    }
    if (lane == 0)
#pragma unroll
        for (int m = 0; m < GV_MAX_M; m++)
            if (m < M) a.y[m * a.ldy + n] = acc[m];
}

/**
 * One warp per (row, 128-group) of any K: ref fp8_quantize_row's operations (amax by fmaxf,
 * s = max(amax, 1e-4)/448 and x/s correctly rounded, saturating RNE e4m3), the code's value
 * written as a float. Scalar loads: K and ldx are arbitrary.
 */
__global__ void quantize_f32_kernel(float *__restrict__ xq, float *__restrict__ scale, const float *__restrict__ x,
                                    int64_t ldx, int64_t M, int64_t K, int ue8m0) {
    const int64_t groups = ceil_div<int64_t>(K, FP8_KB);
    const int64_t gid = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (gid >= M * groups) return; /* whole warp */
    const int lane = threadIdx.x % 32;
    const int64_t m = gid / groups, g = gid % groups, k_end = min(g * FP8_KB + FP8_KB, K);
    float v[4];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int64_t k = g * FP8_KB + lane * 4 + i;
        v[i] = k < k_end ? x[m * ldx + k] : 0.0f;
        amax = fmaxf(amax, fabsf(v[i])); /* fmaxf ignores NaN, as the reference's loop does */
    }
    for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    float s = __fdiv_rn(fmaxf(amax, 1e-4f), 448.0f);
    if (ue8m0) s = scale_ue8m0(s);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int64_t k = g * FP8_KB + lane * 4 + i;
        if (k < k_end) xq[m * K + k] = e4m3_to_f32(e4m3_from_f32(__fdiv_rn(v[i], s)));
    }
    if (lane == 0) scale[m * groups + g] = s;
}


/**
 * One 64×64 tile of C_b = A_b·B_b per CTA (grid.x: row tiles, grid.y: column tiles, grid.z
 * strides over the batch). Each operand is staged along its unit-stride dimension when it has
 * one, so global reads coalesce whichever way the product is laid out.
 */
__global__ void __launch_bounds__(GT_THREADS, 2) gemm_batched_kernel(const GemmBatchedParams p) {
    __shared__ __align__(16) float As[GT_BK][GT_LD];
    __shared__ __align__(16) float Bs[GT_BK][GT_LD];
    const int64_t m0 = (int64_t)blockIdx.x * GT_BM, n0 = (int64_t)blockIdx.y * GT_BN;
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const bool a_kfast = p.a_sk == 1, b_kfast = p.b_sk == 1;
    for (int64_t bt = blockIdx.z; bt < p.batch; bt += gridDim.z) {
        const float *A = p.a + bt * p.a_sb;
        const int64_t boff = bt * p.b_sb;
        float acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
        for (int64_t k0 = 0; k0 < p.K; k0 += GT_BK) {
#pragma unroll
            for (int i = 0; i < GT_BM * GT_BK / GT_THREADS; i++) {
                const int idx = tid + i * GT_THREADS;
                int rr = a_kfast ? idx / GT_BK : idx % GT_BM, kk = a_kfast ? idx % GT_BK : idx / GT_BM;
                int64_t m = m0 + rr, k = k0 + kk;
                As[kk][rr] = (m < p.M && k < p.K) ? A[m * p.a_sm + k * p.a_sk] : 0.0f;
                rr = b_kfast ? idx / GT_BK : idx % GT_BN, kk = b_kfast ? idx % GT_BK : idx / GT_BN;
                const int64_t n = n0 + rr;
                k = k0 + kk;
                float bv = 0.0f;
                if (n < p.N && k < p.K) {
                    const int64_t off = boff + k * p.b_sk + n * p.b_sn;
                    bv = p.b_dtype == FAST_BF16 ? bf16_bits_to_f32(static_cast<const uint16_t *>(p.b)[off])
                                  : static_cast<const float *>(p.b)[off];
                }
                Bs[kk][rr] = bv;
            }
            __syncthreads();
            fma_chunk(acc, As, Bs, tx, ty);
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int64_t m = m0 + ty * 4 + i;
            if (m >= p.M) continue;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int64_t n = n0 + tx * 4 + j;
                if (n < p.N) p.c[bt * p.c_sb + m * p.c_sm + n * p.c_sn] = acc[i][j];
            }
        }
    }
}

constexpr int MLA_THREADS = 128; /**< threads per (query, head) CTA */
constexpr int MLA_CHUNK = 32;    /**< positions per online-softmax step */

/**
 * One CTA per (query i, head h) = blockIdx.x / H, % H. Dynamic shared memory: q [Dc+Dr]
 * (q_abs | q_pe), o [Dc] (the running Σ p·c_kv, column c owned by thread c % 128), p [CHUNK].
 */
__global__ void __launch_bounds__(MLA_THREADS) mla_attend_generic_kernel(const MlaAttendParams p) {
    extern __shared__ float smem[];
    __shared__ int64_t rowoff[MLA_CHUNK];
    const int Dc = p.Dc, Dr = p.Dr, D = Dc + Dr, H = p.H;
    float *q = smem, *o = smem + D, *ps = o + Dc;
    const int64_t qi = blockIdx.x / H;
    const int h = (int)(blockIdx.x % H), tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    float *u = p.u + (qi * H + h) * Dc;
    const int S = max(p.seq_lens[qi], 0);
    if (S == 0) { /* no visible position: u = 0 (the reference's empty sum) */
        for (int c = tid; c < Dc; c += MLA_THREADS) u[c] = 0.0f;
        return;
    }
    const float *qa = p.q_abs + (qi * H + h) * Dc;
    const int64_t qp = qi * p.q_pe_stride_t + h * p.q_pe_stride_h;
    for (int c = tid; c < D; c += MLA_THREADS) q[c] = c < Dc ? qa[c] : p.q_pe[qp + (c - Dc)];
    for (int c = tid; c < Dc; c += MLA_THREADS) o[c] = 0.0f;
    const int *table = p.block_table + qi * p.block_table_stride;
    float m = -INFINITY, l = 0.0f;
    __syncthreads();
    for (int t0 = 0; t0 < S; t0 += MLA_CHUNK) {
        const int n = min(MLA_CHUNK, S - t0);
        /* Scores: one warp per position, lanes stride the row (coalesced), shuffle reduction. */
        for (int j = warp; j < n; j += MLA_THREADS / 32) {
            const int t = t0 + j;
            const int64_t row = ((int64_t)table[t / p.page] * p.page + t % p.page) * D;
            float dc = 0.0f, dr = 0.0f;
            for (int c = lane; c < Dc; c += 32) dc = fmaf(q[c], load_elem(p.kv_cache, p.cache_dtype, row + c), dc);
            for (int c = lane; c < Dr; c += 32)
                dr = fmaf(q[Dc + c], load_elem(p.kv_cache, p.cache_dtype, row + Dc + c), dr);
            for (int off = 16; off > 0; off >>= 1) {
                dc += __shfl_xor_sync(0xffffffffu, dc, off);
                dr += __shfl_xor_sync(0xffffffffu, dr, off);
            }
            if (lane == 0) {
                ps[j] = __fmul_rn(p.scale, __fadd_rn(dc, dr)); /* ref: scale * (dot(q_abs, c_kv) + dot(q_pe, k_pe)) */
                rowoff[j] = row;
            }
        }
        __syncthreads();
        float mc = -INFINITY;
        for (int j = 0; j < n; j++) mc = fmaxf(mc, ps[j]);
        const float mn = fmaxf(m, mc);
        const float alpha = m == -INFINITY ? 0.0f : expf(m - mn); /* rescales what was summed under the old max */
        __syncthreads(); /* every thread has read the scores */
        if (tid < n) ps[tid] = expf(ps[tid] - mn);
        __syncthreads();
        float sum = 0.0f;
        for (int j = 0; j < n; j++) sum += ps[j]; /* same order in every thread: one l per CTA */
        l = fmaf(l, alpha, sum);
        m = mn;
        for (int c = tid; c < Dc; c += MLA_THREADS) {
            float acc = __fmul_rn(o[c], alpha);
            for (int j = 0; j < n; j++) acc = fmaf(ps[j], load_elem(p.kv_cache, p.cache_dtype, rowoff[j] + c), acc);
            o[c] = acc;
        }
        __syncthreads(); /* ps and rowoff are rewritten by the next chunk */
    }
    for (int c = tid; c < Dc; c += MLA_THREADS) u[c] = __fdiv_rn(o[c], l);
}

/** Stores v into element i of a FAST_F32 / FAST_BF16 array, bf16 by the reference's rule. */
__device__ __forceinline__ void store_ref(void *dst, FastDType t, int64_t i, float v) {
    if (t == FAST_BF16) static_cast<uint16_t *>(dst)[i] = bf16_bits_ref(v);
    else static_cast<float *>(dst)[i] = v;
}

/** One element (token i, column j of [c_kv | k_pe]) per thread and grid step. Tokens with pos < 0 are skipped. */
__global__ void kv_cache_write_kernel(void *cache, FastDType dt, const int *__restrict__ block_table, int bt_stride,
                                      const int *__restrict__ pos, const float *__restrict__ c_kv, int64_t ldc,
                                      const float *__restrict__ k_pe, int64_t ldk, int64_t T, int Dc, int Dr,
                                      int page) {
    const int64_t D = (int64_t)Dc + Dr, total = T * D;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = e / D, j = e % D;
        const int ps = pos[i];
        if (ps < 0) continue;
        const int64_t row = (int64_t)block_table[i * bt_stride + ps / page] * page + ps % page;
        store_ref(cache, dt, row * D + j, j < Dc ? c_kv[i * ldc + j] : k_pe[i * ldk + (j - Dc)]);
    }
}

/** One element per thread and grid step; same-dtype copies move bits, f32 → bf16 rounds by the reference's rule. */
__global__ void copy_rows_kernel(void *dst, FastDType dt, int64_t dst_stride, const void *src, FastDType st,
                                 int64_t src_stride, int64_t rows, int64_t cols) {
    const int64_t total = rows * cols;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = e / cols, c = e % cols, di = r * dst_stride + c, si = r * src_stride + c;
        if (dt == st) {
            if (dt == FAST_BF16) static_cast<uint16_t *>(dst)[di] = static_cast<const uint16_t *>(src)[si];
            else static_cast<float *>(dst)[di] = static_cast<const float *>(src)[si];
        } else {
            store_ref(dst, dt, di, load_elem(src, st, si));
        }
    }
}

static bool dtype_ok(FastDType t) { return t == FAST_F32 || t == FAST_BF16; }

/** Blocks for a grid-stride loop over n elements: enough for every element, capped (the loop covers the rest). */
static unsigned stride_blocks(int64_t n, int threads) {
    const int64_t b = ceil_div<int64_t>(n, threads);
    return (unsigned)(b < (1 << 20) ? b : (1 << 20));
}

} // namespace dsv3

using namespace dsv3;

extern "C" int linear_generic_cuda(const LinearGenericParams *p, cudaStream_t stream, Err *err) {
    const char *fn = "linear_generic_cuda";
    if (!p) return err_set(err, "%s: p is NULL", fn);
    if (p->M < 0 || p->N <= 0 || p->K <= 0)
        return err_set(err, "%s: M = %lld, N = %lld, K = %lld: need M >= 0, N > 0, K > 0", fn, (long long)p->M,
                       (long long)p->N, (long long)p->K);
    if (p->ldy < p->N) return err_set(err, "%s: ldy = %lld < N = %lld", fn, (long long)p->ldy, (long long)p->N);
    if (p->ldx < p->K) return err_set(err, "%s: ldx = %lld < K = %lld", fn, (long long)p->ldx, (long long)p->K);
    int wk;
    if (p->w_dtype == DT_F32) wk = W_F32;
    else if (p->w_dtype == DT_BF16) wk = W_BF16;
    else if (p->w_dtype == DT_F8_E4M3) wk = W_E4M3;
    else return err_set(err, "%s: w_dtype %d is not DT_F32, DT_BF16 or DT_F8_E4M3", fn, (int)p->w_dtype);
    if (wk == W_E4M3 && !p->w_scale) return err_set(err, "%s: w_scale is NULL for DT_F8_E4M3 weights", fn);
    if (p->num_groups < 1) return err_set(err, "%s: num_groups = %d, need >= 1", fn, p->num_groups);
    if (!p->group_start && p->num_groups != 1)
        return err_set(err, "%s: num_groups = %d without group_start, need 1 (dense)", fn, p->num_groups);
    if (p->M == 0) return 0;
    if (!p->y || !p->x || !p->w) return err_set(err, "%s: y, x or w is NULL", fn);
    if ((uintptr_t)p->y % 4 || (uintptr_t)p->x % 4 || (p->x_scale && (uintptr_t)p->x_scale % 4) ||
        (p->w_scale && (uintptr_t)p->w_scale % 4) || (wk == W_F32 && (uintptr_t)p->w % 4) ||
        (wk == W_BF16 && (uintptr_t)p->w % 2))
        return err_set(err, "%s: y, x, x_scale, w_scale and w must be aligned to their element size", fn);
    const int64_t n_tiles = ceil_div<int64_t>(p->N, GT_BN);
    if (n_tiles > MAX_GRID_Y)
        return err_set(err, "%s: N = %lld needs %lld column tiles, above the grid limit %u", fn, (long long)p->N,
                       (long long)n_tiles, MAX_GRID_Y);
    /* Grouped: Σ_g ceil(rows_g/64) ≤ ceil(M/64) + G tiles; CTAs past the last real tile exit. */
    const int64_t m_tiles = ceil_div<int64_t>(p->M, GT_BM) + (p->group_start ? p->num_groups : 0);
    if (m_tiles > 0x7FFFFFFF)
        return err_set(err, "%s: M = %lld and num_groups = %d need %lld row tiles, above the grid limit", fn,
                       (long long)p->M, p->num_groups, (long long)m_tiles);
    LinearArgs a;
    a.y = p->y, a.ldy = p->ldy, a.x = p->x, a.ldx = p->ldx, a.x_scale = wk == W_E4M3 ? p->x_scale : nullptr;
    a.w = p->w, a.wk = wk, a.w_scale = p->w_scale, a.M = p->M, a.N = p->N, a.K = p->K;
    a.group_start = p->group_start, a.G = p->num_groups;
    FastDevice dev;
    if (wk == W_BF16 && !p->group_start && p->M > GV_MAX_M && !fast_device(&dev, NULL) && dev.cc_major >= 8) {
        /* BF16 weights, more rows than a GEMV pays for: tensor cores at FP32 accuracy (split3) */
        const int64_t mt = ceil_div<int64_t>(p->M, TB_BM), nt = ceil_div<int64_t>(p->N, TB_BN);
        if (mt > 0x7FFFFFFF || nt > MAX_GRID_Y) return err_set(err, "%s: M = %lld, N = %lld exceed the grid", fn, (long long)p->M, (long long)p->N);
        linear_bf16_tc_kernel<<<dim3((unsigned)mt, (unsigned)nt), 256, 0, stream>>>(a);
        return fast_check_launch(fn, "linear_bf16_tc_kernel", err);
    }
    if (!p->group_start && p->M <= GV_MAX_M) { /* decode: stream the weights once */
        const int64_t blocks = ceil_div<int64_t>(p->N, GV_WARPS);
        if (blocks > 0x7FFFFFFF) return err_set(err, "%s: N = %lld is too many for one grid", fn, (long long)p->N);
        linear_gemv_kernel<<<(unsigned)blocks, GV_WARPS * 32, 0, stream>>>(a);
        return fast_check_launch(fn, "linear_gemv_kernel", err);
    }
    linear_generic_kernel<<<dim3((unsigned)m_tiles, (unsigned)n_tiles), GT_THREADS, 0, stream>>>(a);
    return fast_check_launch(fn, "linear_generic_kernel", err);
}

extern "C" int fp8_quantize_rows_f32_cuda(float *xq, float *scale, const float *x, int64_t ldx, int64_t M, int64_t K,
                                          int ue8m0, cudaStream_t stream, Err *err) {
    const char *fn = "fp8_quantize_rows_f32_cuda";
    if (M < 0 || K <= 0) return err_set(err, "%s: M = %lld, K = %lld: need M >= 0 and K > 0", fn, (long long)M, (long long)K);
    if (ldx < K) return err_set(err, "%s: ldx = %lld < K = %lld", fn, (long long)ldx, (long long)K);
    if (M == 0) return 0;
    if (!xq || !scale || !x) return err_set(err, "%s: xq, scale or x is NULL", fn);
    if (((uintptr_t)xq | (uintptr_t)scale | (uintptr_t)x) % 4 != 0)
        return err_set(err, "%s: xq, scale and x must be 4-byte aligned", fn);
    const int threads = 256;
    const int64_t warps = M * ceil_div<int64_t>(K, FP8_KB), blocks = ceil_div<int64_t>(warps, threads / 32);
    if (blocks > 0x7FFFFFFF)
        return err_set(err, "%s: M·ceil(K/128) = %lld groups is too many for one grid", fn, (long long)warps);
    quantize_f32_kernel<<<(unsigned)blocks, threads, 0, stream>>>(xq, scale, x, ldx, M, K, ue8m0);
    return fast_check_launch(fn, "quantize_f32_kernel", err);
}

extern "C" int gemm_batched_cuda(const GemmBatchedParams *p, cudaStream_t stream, Err *err) {
    const char *fn = "gemm_batched_cuda";
    if (!p) return err_set(err, "%s: p is NULL", fn);
    if (p->batch < 0 || p->M < 0 || p->N < 0 || p->K <= 0)
        return err_set(err, "%s: batch = %lld, M = %lld, N = %lld, K = %lld: need batch, M, N >= 0 and K > 0", fn,
                       (long long)p->batch, (long long)p->M, (long long)p->N, (long long)p->K);
    if (p->a_sb < 0 || p->a_sm < 0 || p->a_sk < 0 || p->b_sb < 0 || p->b_sk < 0 || p->b_sn < 0 || p->c_sb < 0 ||
        p->c_sm < 0 || p->c_sn < 0)
        return err_set(err, "%s: strides must be >= 0", fn);
    if (!dtype_ok(p->b_dtype)) return err_set(err, "%s: b_dtype %d is not f32 or bf16", fn, (int)p->b_dtype);
    if (p->batch == 0 || p->M == 0 || p->N == 0) return 0;
    if (!p->c || !p->a || !p->b) return err_set(err, "%s: c, a or b is NULL", fn);
    if ((uintptr_t)p->c % 4 || (uintptr_t)p->a % 4 || (uintptr_t)p->b % fast_dtype_size(p->b_dtype))
        return err_set(err, "%s: c, a and b must be aligned to their element size", fn);
    const int64_t m_tiles = ceil_div<int64_t>(p->M, GT_BM), n_tiles = ceil_div<int64_t>(p->N, GT_BN);
    if (m_tiles > 0x7FFFFFFF || n_tiles > MAX_GRID_Y)
        return err_set(err, "%s: M = %lld, N = %lld: %lld × %lld tiles exceed the grid limits (2^31-1 × %u)", fn,
                       (long long)p->M, (long long)p->N, (long long)m_tiles, (long long)n_tiles, MAX_GRID_Y);
    const unsigned zb = (unsigned)(p->batch < MAX_GRID_Y ? p->batch : MAX_GRID_Y); /* the kernel strides over the rest */
    gemm_batched_kernel<<<dim3((unsigned)m_tiles, (unsigned)n_tiles, zb), GT_THREADS, 0, stream>>>(*p);
    return fast_check_launch(fn, "gemm_batched_kernel", err);
}

extern "C" int mla_attend_generic_cuda(const MlaAttendParams *p, cudaStream_t stream, Err *err) {
    const char *fn = "mla_attend_generic_cuda";
    if (!p) return err_set(err, "%s: p is NULL", fn);
    if (p->T < 0) return err_set(err, "%s: T = %lld < 0", fn, (long long)p->T);
    if (p->H <= 0 || p->Dc <= 0 || p->Dr < 0 || p->page <= 0)
        return err_set(err, "%s: H = %d, Dc = %d, Dr = %d, page = %d: need H, Dc, page > 0 and Dr >= 0", fn, p->H, p->Dc,
                       p->Dr, p->page);
    if (p->block_table_stride <= 0)
        return err_set(err, "%s: block_table_stride = %d, need > 0", fn, p->block_table_stride);
    if (p->q_pe_stride_t < 0 || p->q_pe_stride_h < 0)
        return err_set(err, "%s: q_pe strides %lld/%lld must be >= 0", fn, (long long)p->q_pe_stride_t,
                       (long long)p->q_pe_stride_h);
    if (!dtype_ok(p->cache_dtype)) return err_set(err, "%s: cache_dtype %d is not f32 or bf16", fn, (int)p->cache_dtype);
    /* Dynamic q, o, p plus the static row offsets must fit the 48 KiB every device gives without opt-in (Dc <= ~6000). */
    const size_t smem = (size_t)(2 * (int64_t)p->Dc + p->Dr + MLA_CHUNK) * sizeof(float);
    if (smem + MLA_CHUNK * sizeof(int64_t) > 48 * 1024)
        return err_set(err, "%s: Dc = %d, Dr = %d need %zu bytes of shared memory, the kernel allows %zu", fn, p->Dc,
                       p->Dr, smem, 48 * 1024 - MLA_CHUNK * sizeof(int64_t));
    if (p->T == 0) return 0;
    if (!p->u || !p->q_abs || (p->Dr > 0 && !p->q_pe) || !p->kv_cache || !p->block_table || !p->seq_lens)
        return err_set(err, "%s: u, q_abs, q_pe, kv_cache, block_table or seq_lens is NULL", fn);
    if (p->T * p->H > 0x7FFFFFFF)
        return err_set(err, "%s: T·H = %lld CTAs exceed the grid limit", fn, (long long)(p->T * p->H));
    mla_attend_generic_kernel<<<(unsigned)(p->T * p->H), MLA_THREADS, smem, stream>>>(*p);
    return fast_check_launch(fn, "mla_attend_generic_kernel", err);
}

extern "C" int kv_cache_write_cuda(void *kv_cache, FastDType cache_dtype, const int *block_table, int block_table_stride,
                                   const int *pos, const float *c_kv, int64_t ldc, const float *k_pe, int64_t ldk,
                                   int64_t T, int Dc, int Dr, int page, cudaStream_t stream, Err *err) {
    const char *fn = "kv_cache_write_cuda";
    if (T < 0 || Dc <= 0 || Dr < 0 || page <= 0)
        return err_set(err, "%s: T = %lld, Dc = %d, Dr = %d, page = %d: need T >= 0, Dc, page > 0, Dr >= 0", fn,
                       (long long)T, Dc, Dr, page);
    if (block_table_stride <= 0) return err_set(err, "%s: block_table_stride = %d, need > 0", fn, block_table_stride);
    if (ldc < Dc || ldk < Dr)
        return err_set(err, "%s: ldc = %lld, ldk = %lld: need ldc >= Dc = %d and ldk >= Dr = %d", fn, (long long)ldc,
                       (long long)ldk, Dc, Dr);
    if (!dtype_ok(cache_dtype)) return err_set(err, "%s: cache_dtype %d is not f32 or bf16", fn, (int)cache_dtype);
    if (T == 0) return 0;
    if (!kv_cache || !block_table || !pos || !c_kv || (Dr > 0 && !k_pe))
        return err_set(err, "%s: kv_cache, block_table, pos, c_kv or k_pe is NULL", fn);
    kv_cache_write_kernel<<<stride_blocks(T * ((int64_t)Dc + Dr), 256), 256, 0, stream>>>(
        kv_cache, cache_dtype, block_table, block_table_stride, pos, c_kv, ldc, k_pe, ldk, T, Dc, Dr, page);
    return fast_check_launch(fn, "kv_cache_write_kernel", err);
}

extern "C" int copy_rows_cuda(void *dst, FastDType dst_dtype, int64_t dst_stride, const void *src, FastDType src_dtype,
                              int64_t src_stride, int64_t rows, int64_t cols, cudaStream_t stream, Err *err) {
    const char *fn = "copy_rows_cuda";
    if (rows < 0 || cols < 0) return err_set(err, "%s: rows = %lld, cols = %lld: need >= 0", fn, (long long)rows, (long long)cols);
    if (dst_stride < cols || src_stride < cols)
        return err_set(err, "%s: dst_stride = %lld, src_stride = %lld: need >= cols = %lld", fn, (long long)dst_stride,
                       (long long)src_stride, (long long)cols);
    if (!dtype_ok(dst_dtype) || !dtype_ok(src_dtype)) return err_set(err, "%s: dtypes must be f32 or bf16", fn);
    if (dst == src && (dst_dtype != src_dtype || dst_stride != src_stride))
        return err_set(err, "%s: dst == src needs the same dtype and stride", fn);
    if (rows == 0 || cols == 0) return 0;
    if (!dst || !src) return err_set(err, "%s: dst or src is NULL", fn);
    if ((uintptr_t)dst % fast_dtype_size(dst_dtype) || (uintptr_t)src % fast_dtype_size(src_dtype))
        return err_set(err, "%s: dst and src must be aligned to their element size", fn);
    copy_rows_kernel<<<stride_blocks(rows * cols, 256), 256, 0, stream>>>(dst, dst_dtype, dst_stride, src, src_dtype,
                                                                         src_stride, rows, cols);
    return fast_check_launch(fn, "copy_rows_kernel", err);
}
