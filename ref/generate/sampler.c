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

/** Candidate order: higher probability first, ties to the lower index — a total order, so the
 *  truncation below does not depend on how the candidates are found. */
static int better(SamplerCand a, SamplerCand b) { return a.p > b.p || (a.p == b.p && a.i < b.i); }

/** Restores the heap order of h[0..n) below position r: no parent better than its children, so h[0]
 *  is the worst candidate kept. */
static void sift_down(SamplerCand *h, int n, int r) {
    for (;;) {
        int w = r, l = 2 * r + 1, rr = l + 1;
        if (l < n && better(h[w], h[l])) w = l;
        if (rr < n && better(h[w], h[rr])) w = rr;
        if (w == r) return;
        SamplerCand t = h[r];
        h[r] = h[w], h[w] = t;
        r = w;
    }
}

/**
 * The @p m best candidates of probs[0..n), best first, into out[0..m): a partial selection that
 * keeps the m best seen so far in a heap whose root is the worst of them (one comparison for
 * most tokens, O(n log m) at worst), then empties the heap from the back.
 */
static void select_best(SamplerCand *out, const float *probs, int n, int m) {
    int size = 0;
    for (int i = 0; i < n; i++) {
        SamplerCand c = { probs[i], i };
        if (size < m) {
            int j = size++; /* sift up: no parent is better than its children */
            out[j] = c;
            while (j > 0 && better(out[(j - 1) / 2], out[j])) {
                SamplerCand t = out[j];
                out[j] = out[(j - 1) / 2], out[(j - 1) / 2] = t;
                j = (j - 1) / 2;
            }
        } else if (better(c, out[0])) {
            out[0] = c;
            sift_down(out, size, 0);
        }
    }
    for (int last = size - 1; last > 0; last--) { /* the worst goes last */
        SamplerCand t = out[0];
        out[0] = out[last], out[last] = t;
        sift_down(out, last, 0);
    }
}

void sampler_probs(const Sampler *s, const float *logits, int n, float *probs, SamplerCand *cands) {
    if (s->temperature == 0.0f) {
        for (int i = 0; i < n; i++) probs[i] = 0.0f;
        probs[sampler_argmax(logits, n)] = 1.0f;
        return;
    }
    /* Softmax of logits / T in FP32 (max subtracted), computed once; the sum in double, in index order. */
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
    /* The kept tokens are a prefix of the candidates in order (best first): the top-k, cut where
     * their mass first reaches top_p. Only that prefix is selected, never the whole vocabulary
     * sorted: with top-k, its k best; with top-p alone, 256 best, then 8× more until the mass is
     * reached (the prefix of a total order does not depend on how far one selects). */
    double mass = 0.0;
    int k = 0;
    for (int m_sel = keep < 256 ? keep : 256;; m_sel = m_sel > keep / 8 ? keep : 8 * m_sel) {
        select_best(cands, probs, n, m_sel);
        mass = 0.0, k = 0;
        while (k < m_sel) {
            mass += cands[k].p;
            k++;
            if (mass >= s->top_p) break;
        }
        if (k < m_sel || mass >= s->top_p || m_sel == keep) break;
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
