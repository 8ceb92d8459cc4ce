/**
 * @file rmsnorm.c
 * @brief RMSNorm forward and backward (docs/model.md §2), for every norm of the model.
 *
 * Per row x of D values, weight w, ε = rms_norm_eps (1e-6):
 *   forward:   r   = 1 / sqrt( (1/D) Σ_j x_j² + ε )        kept per row (rstd) for the backward
 *              y_i = w_i · (x_i · r)
 *   backward:  with g = dy and s = Σ_j w_j g_j x_j,
 *              dx_i += r · w_i · g_i − (r³ · s / D) · x_i
 *              dw_i += g_i · x_i · r
 * All in FP32 with one rounding per output (docs/model.md §11 #13: the official code and HF round to
 * bf16 before the weight multiply; the difference is at most about one bf16 ulp).
 */
#include "rmsnorm.h"

#include <math.h>

#include "linear.h"

void rmsnorm_forward(float *y, int64_t y_stride, const float *x, int64_t x_stride, const float *w, int64_t N,
                     int64_t D, float eps, float *rstd) {
    for (int64_t t = 0; t < N; t++) {
        const float *xr = x + t * x_stride;
        float *yr = y + t * y_stride;
        float ms = dot_f32(xr, xr, D) / (float)D;
        float r = 1.0f / sqrtf(ms + eps);
        if (rstd) rstd[t] = r;
        for (int64_t i = 0; i < D; i++) yr[i] = w[i] * (xr[i] * r);
    }
}

void rmsnorm_backward(float *dx, int64_t dx_stride, float *dw, const float *dy, int64_t dy_stride, const float *x,
                      int64_t x_stride, const float *w, const float *rstd, int64_t N, int64_t D) {
    for (int64_t t = 0; t < N; t++) {
        const float *xr = x + t * x_stride, *g = dy + t * dy_stride;
        float r = rstd[t];
        if (dx) {
            float s = 0.0f; /* Σ_i w_i dy_i x_i */
            for (int64_t i = 0; i < D; i++) s += w[i] * g[i] * xr[i];
            float c = r * r * r * s / (float)D;
            float *d = dx + t * dx_stride;
            for (int64_t i = 0; i < D; i++) d[i] += r * w[i] * g[i] - c * xr[i];
        }
        if (dw)
            for (int64_t i = 0; i < D; i++) dw[i] += g[i] * xr[i] * r;
    }
}
