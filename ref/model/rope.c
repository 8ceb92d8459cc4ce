/**
 * @file rope.c
 * @brief YaRN frequencies (docs/model.md §4.2) and the interleaved rotation (docs/model.md §4.1).
 *
 *     θ_i      = base^(−2i/dim)                                  i < dim/2  (FP32)
 *     corr(r)  = dim · ln(L₀ / (2π r)) / (2 ln base)             (double, as Python does)
 *     low      = max(floor(corr(β_fast)), 0),  high = min(ceil(corr(β_slow)), dim − 1)
 *     ramp_i   = clamp((i − low) / (high − low), 0, 1)           (FP32; high += 0.001 if equal; any order of
 *                                                                 low and high, docs/model.md §13.3)
 *     θ'_i     = θ_i / s · ramp_i + θ_i · (1 − ramp_i)            (FP32, official operation order)
 * For V3 (dim 64, base 1e4, L₀ 4096, s 40, β 32/1): low 10, high 23; θ'_i = θ_i for i ≤ 10,
 * θ_i/40 for i ≥ 23 (tests/test_rope.c checks the table printed in docs/model.md §4.2).
 */
#include "rope.h"

#include <math.h>
#include <stdlib.h>

static double correction_dim(double rotations, int dim, double base, double orig_len) {
    const double pi = 3.14159265358979323846; /* math.pi */
    return dim * log(orig_len / (rotations * 2.0 * pi)) / (2.0 * log(base));
}

int rope_init(Rope *r, const Config *c, Err *err) {
    int dim = c->qk_rope_head_dim, half = dim / 2;
    r->dim = dim;
    r->attention_factor = c->rope_attention_factor;
    r->inv_freq = calloc((size_t)half, sizeof *r->inv_freq);
    if (!r->inv_freq) return err_set(err, "out of memory");
    for (int i = 0; i < half; i++)
        r->inv_freq[i] = 1.0f / powf((float)c->rope_theta, (float)(2 * i) / (float)dim);
    if (!c->has_yarn) return 0;
    double lo = floor(correction_dim(c->beta_fast, dim, c->rope_theta, c->original_max_position_embeddings));
    double hi = ceil(correction_dim(c->beta_slow, dim, c->rope_theta, c->original_max_position_embeddings));
    if (lo < 0) lo = 0;
    if (hi > dim - 1) hi = dim - 1;
    /* linear_ramp_factor(low, high): Python adds 0.001 to high (a double) when the two meet and
     * subtracts in double; torch then computes (arange − low) / (high − low) in FP32. Nothing here
     * requires low < high: β_fast = β_slow (Kimi K2) gives low + 1 = high or low = high, and
     * β_fast < β_slow a falling ramp, exactly as in both references (docs/model.md §13.3). */
    if (lo == hi) hi += 0.001;
    float low = (float)lo, span = (float)(hi - lo);
    float factor = (float)c->rope_factor;
    for (int i = 0; i < half; i++) {
        float ramp = ((float)i - low) / span;
        ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
        float smooth = 1.0f - ramp;
        r->inv_freq[i] = r->inv_freq[i] / factor * (1.0f - smooth) + r->inv_freq[i] * smooth;
    }
    return 0;
}

void rope_free(Rope *r) {
    free(r->inv_freq);
    r->inv_freq = NULL;
}

void rope_cos_sin(float *cos_out, float *sin_out, int64_t pos, const Rope *r) {
    for (int i = 0; i < r->dim / 2; i++) {
        float angle = (float)pos * r->inv_freq[i]; /* FP32 like torch.outer(arange, freqs) */
        cos_out[i] = cosf(angle) * r->attention_factor;
        sin_out[i] = sinf(angle) * r->attention_factor;
    }
}

void rope_forward(float *x, const float *cos_v, const float *sin_v, int dim) {
    for (int i = 0; i < dim / 2; i++) {
        float a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * cos_v[i] - b * sin_v[i];
        x[2 * i + 1] = a * sin_v[i] + b * cos_v[i];
    }
}

void rope_backward(float *dx, const float *cos_v, const float *sin_v, int dim) {
    for (int i = 0; i < dim / 2; i++) {
        float ga = dx[2 * i], gb = dx[2 * i + 1];
        dx[2 * i] = ga * cos_v[i] + gb * sin_v[i];
        dx[2 * i + 1] = -ga * sin_v[i] + gb * cos_v[i];
    }
}
