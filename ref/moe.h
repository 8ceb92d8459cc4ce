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

/** out [T][D] = MoE(x [T][D]) (x is the post_attention_layernorm output). */
void moe_forward(float *out, const float *x, int64_t T, const LayerWeights *w, MoEActs *a, const ForwardContext *ctx);

#endif
