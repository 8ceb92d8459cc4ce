/**
 * @file optim.c
 * @brief AdamW, gradient clipping and the learning-rate schedule (paper §4.2; docs/model.md §6).
 *
 * The paper's run: AdamW (β1 0.9, β2 0.95, weight decay 0.1), gradient-clipping norm 1.0, LR
 * warmed up linearly over the first 2K steps to 2.2e-4, held, then decayed along a cosine to
 * 2.2e-5 (then two constant tails). A short run has no room for the hold and the tails, so the
 * schedule here is warmup followed directly by the cosine, to min = peak/10 by default (the
 * paper's 2.2e-4 → 2.2e-5 ratio). Moments are FP32 by default; the paper stores them in BF16
 * (§3.3.3), which `--moments bf16` (the default of `--precision fp8`) reproduces with round_to_bf16
 * after every update.
 */
#include "optim.h"

#include <math.h>

#include "base/util.h"

void adamw_update(float *p, float *m, float *v, const float *g, size_t n, const AdamW *h, double lr, int64_t t, int decay) {
    /* Bias corrections in double: 1 − 0.95ᵗ is tiny for t = 1 and must not lose digits. */
    double bc1 = 1.0 - pow(h->beta1, (double)t), bc2 = 1.0 - pow(h->beta2, (double)t);
    float b1 = (float)h->beta1, b2 = (float)h->beta2, eps = (float)h->eps;
    float step = (float)(lr / bc1), rbc2 = (float)(1.0 / bc2);
    float shrink = decay ? (float)(1.0 - lr * h->weight_decay) : 1.0f;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        p[i] = p[i] * shrink - step * m[i] / (sqrtf(v[i] * rbc2) + eps);
    }
}

void round_to_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
}

double lr_at(const LrSchedule *s, int64_t step) {
    if (step < s->warmup) return s->peak * (double)(step + 1) / (double)s->warmup;
    if (s->total <= s->warmup) return s->peak;
    double progress = (double)(step - s->warmup) / (double)(s->total - s->warmup);
    if (progress > 1.0) progress = 1.0;
    return s->min + 0.5 * (s->peak - s->min) * (1.0 + cos(3.14159265358979323846 * progress));
}

double clip_factor(double norm, double max_norm) {
    if (max_norm <= 0.0 || !(norm > max_norm)) return 1.0;
    return max_norm / norm;
}
