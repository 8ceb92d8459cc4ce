/**
 * @file moe.h
 * @brief DeepSeekMoE layer (paper §2.1.2 eq. 12; spec §5): routed experts chosen by the
 *        noaux_tc gate plus always-on shared experts.
 *            MoE(u) = Σ_{e∈TopK} w_e · FFN_e(u) + FFN_shared(u)      (Σ w_e = routed_scaling_factor)
 */
#ifndef DSV3_MOE_H
#define DSV3_MOE_H

#include "context.h"
#include "ffn.h"
#include "weights.h"

/**
 * Intermediates of one MoE call over T tokens. Assignments (token t, choice k) are numbered
 * slot = t·K + k. The routed work is done in expert order: `perm` lists the slots grouped by
 * expert (ascending expert, then ascending token), `expert_start[e]..expert_start[e+1]` is
 * expert e's range, and the per-row arrays below are indexed by that permuted position —
 * the same permutation a GPU grouped GEMM uses.
 */
typedef struct {
    float *logits;        /**< [T][E] gate logits u·Gᵀ */
    float *scores;        /**< [T][E] affinities s = sigmoid(logits) */
    int *idx;             /**< [T][K] selected experts */
    float *weights;       /**< [T][K] routing weights */
    int *perm;            /**< [T·K] slot of each permuted row */
    int *expert_start;    /**< [E+1] */
    float *x_perm;        /**< [T·K][D] inputs gathered in expert order */
    FFNActs routed;       /**< [T·K][Ie] each, in expert order */
    float *y_perm;        /**< [T·K][D] expert outputs in expert order */
    FFNActs shared;       /**< [T][S·Ie] each */
    float *y_shared;      /**< [T][D] */
} MoEActs;

/**
 * Stable counting sort of the T·K assignment slots (slot = t·K + k, expert idx[slot]) by expert:
 * perm [T·K] lists the slots expert by expert (ascending expert, then ascending slot),
 * expert_start [E+1] the first permuted row of each expert (expert_start[E] = T·K).
 * idx must hold experts in [0, E). Oracle of the CUDA permutation (kernels/moe.cu).
 */
void moe_permute(int *perm, int *expert_start, const int *idx, int64_t T, int64_t K, int64_t E);

/**
 * out [T][D] = Σ_k weights[t·K+k] · y_perm[row of slot t·K+k] (+ y_shared[t] if not NULL), the
 * weighted sum taken in permuted-row order, i.e. ascending expert per token, in FP32 (spec §5.2).
 * y_perm [T·K][D] rows in the order of perm [T·K] (from moe_permute). Oracle of the CUDA combine.
 */
void moe_combine(float *out, const float *y_perm, const float *y_shared, const int *perm, const float *weights,
                 int64_t T, int64_t K, int64_t D);

/** out [T][D] = MoE(x [T][D]) (x is the post_attention_layernorm output). */
void moe_forward(float *out, const float *x, int64_t T, const LayerWeights *w, MoEActs *a, const ForwardContext *ctx);

#endif
