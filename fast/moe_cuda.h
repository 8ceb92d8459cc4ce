/**
 * @file moe_cuda.h
 * @brief DeepSeekMoE on the GPU (docs/model.md §5): the noaux_tc gate for a batch of tokens, the
 *        permutation of (token, choice) slots into expert order, the row gather that feeds
 *        the grouped FP8 GEMM (fp8_gemm_cuda with group_start = expert_start), and the
 *        weighted combine back into token order plus the shared expert.
 *
 * One MoE layer on T tokens (D hidden, E experts, K = top-k, I expert width), all on device:
 *     logits [T][E]  = x·G_eᵀ                          (a bf16 GEMM; not part of this file)
 *     gate_forward_cuda      → idx [T][K], weights [T][K]
 *     fp8_quantize_rows_cuda → xq [T][D], xs [T][D/128]
 *     moe_permute_cuda       → perm [T·K], row_of_slot [T·K], expert_start [E+1]
 *     moe_gather_rows_cuda   → xq_perm [T·K][D], xs_perm [T·K][D/128]
 *     fp8_gemm_cuda (grouped, stacked W1|W3 [E][2I][D]) → h [T·K][2I]; swiglu_forward_cuda;
 *     fp8_quantize_rows_cuda; fp8_gemm_cuda (grouped, W2 [E][D][I]) → y_perm [T·K][D]
 *     shared expert: the same three dense GEMMs → y_shared [T][D]
 *     moe_combine_cuda       → out [T][D]
 *
 * VALIDATION STATUS: make test-gpu and compute-sanitizer pass on an H100 (2026-11-22).
 */
#ifndef DSV3_FAST_MOE_CUDA_H
#define DSV3_FAST_MOE_CUDA_H

#include "model/config.h"
#include "fast.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * noaux_tc routing of T tokens, one warp per token; the oracle is ref gate_forward, with the
 * same ordering rules: ties go to the lower index (groups and experts), −∞/NaN never beat a
 * finite value, weights summed and divided in the order of selection.
 * idx [T][K] and weights [T][K] (outputs), scores [T][E] = sigmoid(logits) (output, or NULL),
 * logits [T][E], bias [E] = e_score_correction_bias. @p c (host) supplies E, n_group,
 * topk_group, K, norm_topk_prob and routed_scaling_factor.
 * Sigmoid uses a correctly rounded exp (glibc's expf, used by the reference, differs from it
 * by one ulp for ~1e-4 of inputs; a selection can differ only where that ulp decides a tie).
 * Limits: E ≤ 512 (any value: the tiny checkpoints have 12 and 16), n_group ≤ 32 and divides E,
 * K ≤ 32, topk_group ≤ n_group.
 */
int gate_forward_cuda(int *idx, float *weights, float *scores, const float *logits, const float *bias, int64_t T,
                      const Config *c, cudaStream_t stream, Err *err);

/** Workspace bytes moe_permute_cuda needs for T·K slots and E experts. */
size_t moe_permute_workspace_bytes(int64_t T, int64_t K, int64_t E);

/**
 * Stable counting sort of the T·K slots (slot = t·K + k) by expert idx[slot] (oracle: ref
 * moe_permute): perm [T·K] = slots in expert order, row_of_slot [T·K] = its inverse (the
 * permuted row of each slot), expert_start [E+1] = first row of each expert.
 * idx values must lie in [0, E) (the gate guarantees it; others are skipped, leaving holes).
 * Three small kernels: per-chunk counts, one scan block, per-chunk placement.
 */
int moe_permute_cuda(int *perm, int *row_of_slot, int *expert_start, const int *idx, int64_t T, int64_t K, int64_t E,
                     void *workspace, size_t workspace_bytes, cudaStream_t stream, Err *err);

/**
 * xq_perm[r] = xq[perm[r] / K] (D bytes) and xs_perm[r] = xs[perm[r] / K] (D/128 scales) for
 * the R = T·K permuted rows: the A operand of the grouped GEMM. D % 128 == 0.
 */
int moe_gather_rows_cuda(uint8_t *xq_perm, float *xs_perm, const uint8_t *xq, const float *xs, const int *perm,
                         int64_t R, int64_t K, int64_t D, cudaStream_t stream, Err *err);

/**
 * out [T][D] (FP32) = Σ_k weights[t·K+k] · y_perm[row_of_slot[t·K+k]] + y_shared[t] (if not
 * NULL), the K terms added in ascending permuted row (= ascending expert) order and each
 * product and sum rounded once, so that it equals ref moe_combine bit for bit on the same
 * inputs. y_perm [T·K][D] and y_shared [T][D] are f32 or bf16 (@p y_dtype, @p shared_dtype).
 */
int moe_combine_cuda(float *out, const void *y_perm, FastDType y_dtype, const void *y_shared, FastDType shared_dtype,
                     const int *row_of_slot, const float *weights, int64_t T, int64_t K, int64_t D,
                     cudaStream_t stream, Err *err);

#ifdef __cplusplus
}
#endif

#endif /* DSV3_FAST_MOE_CUDA_H */
