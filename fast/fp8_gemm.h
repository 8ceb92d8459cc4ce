/**
 * @file fp8_gemm.h
 * @brief Block-scaled FP8 GEMM on the GPU, dense and grouped (MoE): the batched form of
 *        ref linear_forward in FP8_W8A8 mode (docs/model.md §8.4).
 *
 * The FP8 numerics contract (docs/model.md §8, ref/model/fp8.h, docs/kernels.md):
 *   A = activations, e4m3 [M][K], 1×128 scales a_scale [M][K/128] (from fp8_quantize_rows_cuda);
 *   B = weights, e4m3 [N][K] (the checkpoint layout), 128×128 scales b_scale [ceil(N/128)][K/128]
 *       (weight_scale_inv, a partial last row-block such as rows 512..575 of 576 uses its own cell);
 *   out[m][n] = Σ_kb ( Σ_{k in block kb} A[m][k]·B[n][k] ) · a_scale[m][kb] · b_scale[n/128][kb]
 * Each 128-wide block partial is computed on tensor cores (4 × k32 instructions) and then
 * "promoted": multiplied by the two scales and added to an FP32 register accumulator, in
 * ascending kb, with the same rounding steps as the reference ((partial·s_a)·s_b, then +).
 * The only difference from the reference is the block partial itself: the reference sums it
 * exactly, tensor cores keep a limited number of bits while summing (the paper's "~14 bits"
 * on H800), so results agree to ~2^-10 of Σ|terms| rather than bit for bit; when every partial
 * is exactly representable (integer-valued operands, tests/gpu) they agree bit for bit.
 * K must be a multiple of 128; M and N are arbitrary (N = 576 and 2112 have partial blocks).
 *
 * Grouped form (MoE, one launch for all experts): rows [group_start[g], group_start[g+1]) of
 * A and out belong to group g and multiply weights b + g·N·K with scales
 * b_scale + g·ceil(N/128)·(K/128) ("stacked" experts [G][N][K]).
 *
 * Two kernels (docs/kernels.md): FP8_GEMM_MMA (mma.sync.m16n8k32 e4m3, sm_89+, cp.async
 * pipeline, split-K for small M) and FP8_GEMM_WGMMA (sm_90a: TMA + mbarrier pipeline, one
 * producer warpgroup and two consumer warpgroups issuing wgmma.m64n128k32, promotion after
 * every 4 wgmma = 128 K). VALIDATION STATUS: both pass make test-gpu on an H100 (2026-11-22).
 * Built with make GEMM_PERSISTENT=1, FP8_GEMM_WGMMA runs a persistent version of the WGMMA
 * kernel instead (kernels/gemm_sched.h schedules it); it has not run on a GPU yet (issue 22).
 */
#ifndef DSV3_FAST_FP8_GEMM_H
#define DSV3_FAST_FP8_GEMM_H

#include "fast.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Which kernel computes the GEMM. */
typedef enum {
    FP8_GEMM_AUTO = 0,  /**< the kernel measured faster on H100 for this shape (rule: auto_path in kernels/fp8_gemm.cu) */
    FP8_GEMM_MMA = 1,   /**< portable mma.sync kernel (sm_89, sm_90) */
    FP8_GEMM_WGMMA = 2, /**< Hopper wgmma + TMA kernel (sm_90 only; built for sm_90a) */
} Fp8GemmPath;

/** FP8_GEMM_AUTO picks WGMMA (on sm_90) from this many rows (per group) on; a tuning constant. */
#define FP8_GEMM_WGMMA_MIN_ROWS 128
/** ...and, for fewer rows of a dense GEMM, when N has at least this many 128-column tiles
 *  (enough CTAs without split-K, which only the MMA kernel has). */
#define FP8_GEMM_WGMMA_MIN_NTILES 48

/** One FP8 GEMM (dense when group_start is NULL, grouped otherwise). */
typedef struct {
    void *out;                /**< [M][ldo] of out_dtype: the product (rows of absent groups untouched) */
    FastDType out_dtype;      /**< FAST_F32 or FAST_BF16 (round to nearest even) */
    int64_t ldo;              /**< elements between output rows, ≥ N */
    const uint8_t *a;         /**< [M][K] e4m3 activations, contiguous, 16-byte aligned */
    const float *a_scale;     /**< [M][K/128] activation scales */
    const uint8_t *b;         /**< [G][N][K] e4m3 weights (G = 1 when dense), 16-byte aligned */
    const float *b_scale;     /**< [G][ceil(N/128)][K/128] weight_scale_inv */
    int64_t M;                /**< rows of A and out (grouped: T·top_k, = group_start[G]) */
    int64_t N;                /**< output features */
    int64_t K;                /**< input features, a multiple of 128 */
    const int *group_start;   /**< grouped: [G+1] device array of row offsets; NULL: dense */
    int num_groups;           /**< G (1 when dense) */
    Fp8GemmPath path;         /**< kernel choice */
    int splits;               /**< MMA, dense only: split-K factor; 0 = automatic, 1 = none */
    float *workspace;         /**< split-K partial sums [splits][M][N]; NULL disables split-K */
    size_t workspace_bytes;   /**< bytes at workspace */
} Fp8GemmParams;

/**
 * Enqueues out = A·Bᵀ with block scales (see the file comment). Returns 0, or -1 with a
 * message in @p err: K not a positive multiple of 128, misaligned pointers, ldo < N, a path
 * the device cannot run (WGMMA off sm_90, FP8 MMA below sm_89), or a CUDA launch error.
 */
int fp8_gemm_cuda(const Fp8GemmParams *p, cudaStream_t stream, Err *err);

/**
 * Workspace bytes that FP8_GEMM_MMA with splits = 0 uses for a dense M×N×K product on the
 * current device (0 when it would not split). Returns 0 also when no device is present.
 */
size_t fp8_gemm_workspace_bytes(int64_t M, int64_t N, int64_t K);

/** Name of a path for messages and benchmark tables ("auto", "mma", "wgmma"). */
const char *fp8_gemm_path_name(Fp8GemmPath path);

#ifdef __cplusplus
}
#endif

#endif /* DSV3_FAST_FP8_GEMM_H */
