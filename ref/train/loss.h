/**
 * @file loss.h
 * @brief Softmax cross-entropy over the vocabulary: the next-token loss of the main model and
 *        the per-depth MTP losses (paper eqs. 23–24), with its backward.
 */
#ifndef DSV3_LOSS_H
#define DSV3_LOSS_H

#include <stdint.h>

/**
 * probs[t] = softmax(logits[t]) for t < T rows of V; returns Σ_t −log p_t[targets[t]] over the
 * rows whose target is ≥ 0 (rows with a negative target contribute nothing). The log-sum-exp
 * and the sum are in double, so a loss difference of two nearby inputs keeps the digits a
 * finite-difference check needs. probs may equal logits (in place).
 */
double cross_entropy_forward(float *probs, const float *logits, const int *targets, int64_t T, int64_t V);

/**
 * Backward of scale · Σ_t −log p_t[targets[t]] with respect to the logits:
 * dlogits[t] += scale · (probs[t] − onehot(targets[t])); rows with a negative target are skipped.
 */
void cross_entropy_backward(float *dlogits, const float *probs, const int *targets, int64_t T, int64_t V, float scale);

#endif
