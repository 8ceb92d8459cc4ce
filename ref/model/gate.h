/**
 * @file gate.h
 * @brief The noaux_tc router of DeepSeek-V3 (docs/model.md §5.1; paper eqs. 13–16).
 */
#ifndef DSV3_GATE_H
#define DSV3_GATE_H

#include "config.h"

/**
 * Routes one token. Input: @p logits [E] = u · G_eᵀ (the gate matrix product, done by the
 * caller with linear_forward), @p bias [E] = e_score_correction_bias.
 * Output: @p scores [E] = sigmoid(logits) (the affinities s_e, kept for training),
 * @p idx [K] the selected experts in descending order of the biased score, @p weights [K]
 * their routing weights. @p work must hold 2·(E + n_group) floats.
 *
 *  1. s_e = sigmoid(logit_e)                     (FP32, docs/model.md §11 #9)
 *  2. c_e = s_e + b_e                            bias for selection only
 *  3. group score = sum of the 2 largest c_e in each of the n_group groups
 *  4. keep the topk_group best groups, c_e = −∞ elsewhere (docs/model.md §11 #8)
 *  5. idx = top-K of c_e; ties go to the lower index (groups and experts)
 *  6. w_e = s_e / Σ_{j∈idx} s_j (if norm_topk_prob), then × routed_scaling_factor
 */
void gate_forward(int *idx, float *weights, float *scores, const float *logits, const float *bias, const Config *c,
                  float *work);

/**
 * Step 3 of gate_forward: @p group_score [G] = sum of the two largest @p choice values [E] in
 * each of the @p G contiguous groups of E/G experts (−∞ stays −∞).
 */
void gate_group_scores(float *group_score, const float *choice, int E, int G);

/**
 * Backward of gate_forward's weights with respect to the logits: the gradient flows only
 * through the selected affinities (the bias gets none). @p dweights [K] = dL/dw, adds into
 * @p dlogits [E].
 */
void gate_backward(float *dlogits, const float *dweights, const int *idx, const float *scores, const Config *c);

#endif
