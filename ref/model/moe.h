/**
 * @file moe.h
 * @brief DeepSeekMoE layer (paper §2.1.2 eq. 12; docs/model.md §5): routed experts chosen by the
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
typedef struct MoEActs {
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
 * weighted sum taken in permuted-row order, i.e. ascending expert per token, in FP32 (docs/model.md §5.2).
 * y_perm [T·K][D] rows in the order of perm [T·K] (from moe_permute). Oracle of the CUDA combine.
 */
void moe_combine(float *out, const float *y_perm, const float *y_shared, const int *perm, const float *weights,
                 int64_t T, int64_t K, int64_t D);

/** out [T][D] = MoE(x [T][D]) (x is the post_attention_layernorm output). */
void moe_forward(float *out, const float *x, int64_t T, const LayerWeights *w, MoEActs *a, const ForwardContext *ctx);

/**
 * Adds one forward's expert loads to @p load [E]: the number of (token, choice) slots routed to
 * each expert (what the aux-loss-free bias update balances, docs/model.md §6).
 */
void moe_count_load(int64_t *load, const MoEActs *a, int64_t T, const Config *c);

/**
 * The auxiliary-loss-free balance update at the end of a training step (paper §2.1.2; docs/model.md §6):
 *     b_i ← b_i + γ · sign(mean_load − load_i)
 * with load_i the selections of expert i over all tokens of the step and mean_load = Σ load / E:
 * overloaded experts become less attractive, underloaded ones more. Exact loads equal to the
 * mean leave b_i unchanged.
 */
void moe_update_bias(float *bias, const int64_t *load, int E, double gamma);

/** MaxVio of one layer's step (Wang et al. 2024, used by the paper's Fig. 9): max_i load_i / mean_load − 1. */
double moe_max_violation(const int64_t *load, int E);

/**
 * Complementary sequence-wise balance loss of one sequence of T tokens (paper eqs. 17–20):
 *     L_Bal = α Σ_i f_i P_i,  f_i = E/(K·T) Σ_t 1(i ∈ idx_t),  P_i = (1/T) Σ_t s_{i,t}/Σ_j s_{j,t}
 * from the forward's affinities and selections. Returned in double. @p work: E floats of scratch.
 */
double moe_balance_loss(const MoEActs *a, int64_t T, const Config *c, double alpha, float *work);

/**
 * Gradient of moe_balance_loss with respect to the gate logits, added (+=) into @p dlogits [T][E]
 * (f_i is a constant: it counts discrete selections; the gradient flows through P_i, i.e. the
 * affinities; see moe.c). Does nothing when @p alpha is 0. @p work: E floats of scratch.
 */
void moe_balance_backward(float *dlogits, const MoEActs *a, int64_t T, const Config *c, double alpha, float *work);

/**
 * Backward of moe_forward plus @p alpha × moe_balance_loss (alpha = 0: none), accumulating
 * (+=) into dx [T][D] and the FP32 gradients of @p dw (gate matrix, routed and shared experts;
 * the correction bias never gets one: it only selects). @p da is MoEActs-shaped scratch, zero
 * on entry. @p x is the forward's input. See moe.c for the derivation.
 */
void moe_backward(float *dx, const LayerWeights *dw, const float *dout, const float *x, int64_t T, const LayerWeights *w,
                  const MoEActs *a, MoEActs *da, double alpha, const ForwardContext *ctx);

#endif
