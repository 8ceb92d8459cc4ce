/**
 * @file optim.h
 * @brief The optimizer side of training (paper §4.2, docs/model.md §6): AdamW with decoupled weight
 *        decay, gradient clipping by global norm, and the warmup + cosine learning-rate schedule.
 */
#ifndef DSV3_OPTIM_H
#define DSV3_OPTIM_H

#include <stddef.h>
#include <stdint.h>

/** AdamW hyper-parameters (paper §4.2: β1 = 0.9, β2 = 0.95, weight decay 0.1). */
typedef struct {
    double beta1;        /**< first-moment decay */
    double beta2;        /**< second-moment decay */
    double eps;          /**< added to sqrt(v̂) */
    double weight_decay; /**< decoupled decay λ_wd (applied to matrices only, by the caller) */
} AdamW;

/**
 * One AdamW step (Loshchilov & Hutter 2019; PyTorch's order) over n parameters, t ≥ 1 the
 * 1-based step number:
 *     p ← p·(1 − lr·wd)                     (only if @p decay)
 *     m ← β1 m + (1 − β1) g,   v ← β2 v + (1 − β2) g²
 *     p ← p − lr · (m / (1 − β1ᵗ)) / (sqrt(v / (1 − β2ᵗ)) + eps)
 */
void adamw_update(float *p, float *m, float *v, const float *g, size_t n, const AdamW *h, double lr, int64_t t, int decay);

/**
 * Rounds each of @p x [n] to the nearest BF16 value (ties to even): AdamW moments kept in BF16
 * (paper §3.3.3) are computed in FP32 from their stored values, then stored back this way.
 */
void round_to_bf16(float *x, size_t n);

/** Learning-rate schedule: linear warmup to the peak, then cosine decay to a floor. */
typedef struct {
    double peak;     /**< learning rate after warmup */
    double min;      /**< learning rate the cosine ends at */
    int64_t warmup;  /**< warmup steps */
    int64_t total;   /**< steps of the whole run */
} LrSchedule;

/**
 * Learning rate of 0-based step @p step: peak·(step+1)/warmup during warmup, then
 * min + ½(peak − min)(1 + cos(π·(step − warmup)/(total − warmup))).
 */
double lr_at(const LrSchedule *s, int64_t step);

/**
 * Scale factor that clips a gradient of global norm @p norm to @p max_norm
 * (min(1, max_norm / norm); 1 if max_norm ≤ 0, i.e. clipping off).
 */
double clip_factor(double norm, double max_norm);

#endif
