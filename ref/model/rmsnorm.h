/**
 * @file rmsnorm.h
 * @brief RMSNorm (docs/model.md §2): y_i = w_i · x_i / sqrt(mean_j x_j² + ε), all in FP32 with one
 *        rounding (docs/model.md §11 #13). Used for every norm of the model: input/post-attention
 *        layernorms, the q and kv latent norms, the final norm, MTP enorm/hnorm/shared_head.norm.
 */
#ifndef DSV3_RMSNORM_H
#define DSV3_RMSNORM_H

#include <stdint.h>

/**
 * y[t] = rmsnorm(x[t]) · w for t < N rows of D values (rows may be strided: x_stride,
 * y_stride elements apart). @p rstd (if not NULL) receives 1/sqrt(mean x² + ε) per row,
 * which is all the backward pass needs besides x. y may equal x (in place).
 */
void rmsnorm_forward(float *y, int64_t y_stride, const float *x, int64_t x_stride, const float *w, int64_t N,
                     int64_t D, float eps, float *rstd);

/**
 * Backward of rmsnorm_forward, accumulating (+=): with r = rstd[t] and y = w ⊙ x·r,
 *   dx_j += r·w_j·dy_j − r³·x_j/D · Σ_i w_i·dy_i·x_i,   dw_i += Σ_t dy_i·x_i·r.
 * Rows are strided like the forward's (the kv latent norm reads the first Dc of each Dc+Dr
 * row, the MTP norms write into one half of a 2D-wide row). dx or dw may be NULL.
 */
void rmsnorm_backward(float *dx, int64_t dx_stride, float *dw, const float *dy, int64_t dy_stride, const float *x,
                      int64_t x_stride, const float *w, const float *rstd, int64_t N, int64_t D);

#endif
