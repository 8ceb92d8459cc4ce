/**
 * @file test_sampler.c
 * @brief The sampler's truncation by partial selection (ref/generate/sampler.c) gives exactly the
 *        distribution and the draws of a full sort of the vocabulary — the straightforward
 *        definition, written here as the oracle — for top-k, top-p, both and neither, on
 *        vocabularies from 1 to 129,280 tokens with and without ties, bit for bit.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/rng.h"
#include "generate/sampler.h"

static int cmp_cand(const void *a, const void *b) {
    const SamplerCand *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->i - y->i;
}

/** The definition: softmax, sort every candidate (probability down, index up), cut, renormalize. */
static void oracle_probs(const Sampler *s, const float *logits, int n, float *probs, SamplerCand *cands) {
    float m = -INFINITY;
    for (int i = 0; i < n; i++) m = fmaxf(m, logits[i]);
    double sum = 0.0, part = 0.0; /* in double: per slice in index order, then over the slices */
    int len = (n + SAMPLER_SLICES - 1) / SAMPLER_SLICES;
    for (int i = 0; i < n; i++) {
        probs[i] = expf((logits[i] - m) / s->temperature);
        part += probs[i];
        if ((i + 1) % len == 0 || i + 1 == n) sum += part, part = 0.0;
    }
    for (int i = 0; i < n; i++) probs[i] = (float)(probs[i] / sum);
    int keep = s->top_k > 0 && s->top_k < n ? s->top_k : n;
    if (keep == n && s->top_p >= 1.0f) return;
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

static void random_logits(float *logits, int n, Rng *r, int ties, float scale) {
    for (int i = 0; i < n; i++) {
        float v = scale * rng_normal(r);
        logits[i] = ties ? roundf(v) : v; /* rounded: many exactly equal probabilities */
    }
}

static void truncation_equals_full_sort(void **state) {
    (void)state;
    const int sizes[] = { 1, 2, 7, 300, 5000, 129280 };
    const int ks[] = { 0, 1, 5, 40, 299, 1000000 };
    const float ps[] = { 1.0f, 0.95f, 0.5f, 0.999f, 1e-6f };
    const float temps[] = { 0.8f, 1.0f, 3.0f };
    Rng r;
    rng_seed(&r, 42);
    int checked = 0;
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++) {
        int n = sizes[a];
        float *logits = malloc(sizeof(float) * n), *p1 = malloc(sizeof(float) * n), *p2 = malloc(sizeof(float) * n);
        SamplerCand *c1 = malloc(sizeof(SamplerCand) * n), *c2 = malloc(sizeof(SamplerCand) * n);
        for (int ties = 0; ties < 2; ties++) {
            random_logits(logits, n, &r, ties, ties ? 2.0f : 4.0f);
            for (size_t b = 0; b < sizeof ks / sizeof *ks; b++)
                for (size_t c = 0; c < sizeof ps / sizeof *ps; c++)
                    for (size_t d = 0; d < sizeof temps / sizeof *temps; d++) {
                        if (n == 129280 && (d != 0 || (b != 0 && b != 3))) continue; /* keep it quick */
                        Sampler s1, s2;
                        Err err;
                        assert_int_equal(sampler_init(&s1, temps[d], ks[b], ps[c], 7, &err), 0);
                        assert_int_equal(sampler_init(&s2, temps[d], ks[b], ps[c], 7, &err), 0);
                        sampler_probs(&s1, logits, n, p1, c1);
                        oracle_probs(&s2, logits, n, p2, c2);
                        assert_memory_equal(p1, p2, sizeof(float) * n);
                        /* Same distribution, same PRNG: the same draws. */
                        for (int i = 0; i < 8; i++) assert_int_equal(sampler_draw(&s1, p1, n), sampler_draw(&s2, p2, n));
                        checked++;
                    }
        }
        free(logits), free(p1), free(p2), free(c1), free(c2);
    }
    printf("    %d settings: partial selection == full sort, bit for bit\n", checked);
}

/** sampler_sample draws what sampler_probs + sampler_draw draw; greedy is the argmax (lowest index on ties). */
static void sample_is_probs_then_draw(void **state) {
    (void)state;
    enum { N = 4096 };
    static float logits[N], probs[N];
    static SamplerCand cands[N];
    Rng r;
    rng_seed(&r, 3);
    random_logits(logits, N, &r, 0, 3.0f);
    Sampler a, b;
    Err err;
    assert_int_equal(sampler_init(&a, 0.8f, 40, 0.95f, 11, &err), 0);
    assert_int_equal(sampler_init(&b, 0.8f, 40, 0.95f, 11, &err), 0);
    for (int i = 0; i < 50; i++) {
        int t = sampler_sample(&a, logits, N, probs, cands);
        static float p2[N];
        sampler_probs(&b, logits, N, p2, cands);
        assert_int_equal(t, sampler_draw(&b, p2, N));
        assert_true(probs[t] > 0.0f);
    }
    /* broken logits (NaN) still give a valid token, whatever the settings */
    for (int i = 0; i < N; i += 3) logits[i] = NAN;
    for (int k = 0; k < 3; k++) {
        assert_int_equal(sampler_init(&a, 0.8f, k == 0 ? 0 : 40, k == 1 ? 1.0f : 0.9f, 5, &err), 0);
        int t = sampler_sample(&a, logits, N, probs, cands);
        assert_true(t >= 0 && t < N);
    }
    for (int i = 0; i < N; i++) logits[i] = NAN;
    assert_int_equal(sampler_init(&a, 0.8f, 0, 0.5f, 5, &err), 0);
    int t = sampler_sample(&a, logits, N, probs, cands);
    assert_true(t >= 0 && t < N);
    random_logits(logits, N, &r, 0, 3.0f);
    logits[17] = logits[99] = 100.0f;
    assert_int_equal(sampler_init(&a, 0.0f, 0, 1.0f, 1, &err), 0);
    assert_int_equal(sampler_sample(&a, logits, N, probs, cands), 17);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(truncation_equals_full_sort),
        cmocka_unit_test(sample_is_probs_then_draw),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
