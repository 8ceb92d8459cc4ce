/**
 * @file sampler.c
 * @brief Greedy / temperature / top-k / top-p sampling with an explicit distribution.
 *
 * Unlike the official generate.py (which samples argmax(p / Exp(1)), exact but without
 * truncation), we build the truncated distribution and invert its CDF with one uniform draw:
 * the same law, and the distribution is there for speculative decoding to use.
 */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

int sampler_init(Sampler *s, float temperature, int top_k, float top_p, uint64_t seed, Err *err) {
    if (!(temperature >= 0.0f) || !isfinite(temperature)) return err_set(err, "temperature must be ≥ 0, got %g", temperature);
    if (top_k < 0) return err_set(err, "top-k must be ≥ 0, got %d", top_k);
    if (!(top_p > 0.0f && top_p <= 1.0f)) return err_set(err, "top-p must be in (0, 1], got %g", top_p);
    s->temperature = temperature;
    s->top_k = top_k;
    s->top_p = top_p;
    rng_seed(&s->rng, seed);
    return 0;
}

int sampler_argmax(const float *logits, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

static int cmp_cand(const void *a, const void *b) {
    const SamplerCand *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->i - y->i; /* ties: lower index first, so the result does not depend on qsort */
}

void sampler_probs(const Sampler *s, const float *logits, int n, float *probs, SamplerCand *cands) {
    if (s->temperature == 0.0f) {
        for (int i = 0; i < n; i++) probs[i] = 0.0f;
        probs[sampler_argmax(logits, n)] = 1.0f;
        return;
    }
    /* Softmax of logits / T in FP32 (max subtracted). */
    float m = -INFINITY;
    for (int i = 0; i < n; i++) m = fmaxf(m, logits[i]);
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        probs[i] = expf((logits[i] - m) / s->temperature);
        sum += probs[i];
    }
    for (int i = 0; i < n; i++) probs[i] = (float)(probs[i] / sum);
    int keep = n;
    if (s->top_k > 0 && s->top_k < keep) keep = s->top_k;
    if (keep == n && s->top_p >= 1.0f) return; /* nothing to truncate */
    /* Candidates by probability, descending (ties by index, so qsort's instability is moot). */
    for (int i = 0; i < n; i++) cands[i] = (SamplerCand){ probs[i], i };
    qsort(cands, (size_t)n, sizeof *cands, cmp_cand);
    double mass = 0.0;
    int k = 0;
    while (k < keep) {
        mass += cands[k].p;
        k++;
        if (mass >= s->top_p) break;
    }
    for (int i = 0; i < n; i++) probs[i] = 0.0f;
    for (int j = 0; j < k; j++) probs[cands[j].i] = (float)(cands[j].p / mass);
}

int sampler_draw(Sampler *s, const float *probs, int n) {
    double u = rng_uniform_double(&s->rng), cdf = 0.0;
    int last = 0;
    for (int i = 0; i < n; i++) {
        if (probs[i] <= 0.0f) continue;
        last = i;
        cdf += probs[i];
        if (u < cdf) return i;
    }
    return last; /* rounding left u above the total mass: the last possible token */
}

int sampler_sample(Sampler *s, const float *logits, int n, float *probs, SamplerCand *work) {
    if (s->temperature == 0.0f) return sampler_argmax(logits, n);
    sampler_probs(s, logits, n, probs, work);
    return sampler_draw(s, probs, n);
}
