/**
 * @file rmsnorm.c
 * @brief RMSNorm forward and backward (docs/model.md §2).
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
