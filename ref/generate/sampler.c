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

#include "base/threads.h"

/** Vocabularies smaller than this are normalized on one thread (waking the others costs more). */
#define SAMPLER_PARALLEL_MIN 32768

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
 *  truncation below does not depend on how the candidates are found. (A NaN probability, from
 *  broken logits, ranks below every number, so that the order stays total.) */
static int better(SamplerCand a, SamplerCand b) {
    if (a.p != a.p || b.p != b.p) return a.p != a.p ? (b.p != b.p && a.i < b.i) : 1;
    return a.p > b.p || (a.p == b.p && a.i < b.i);
}

static void swap_cand(SamplerCand *a, SamplerCand *b) {
    SamplerCand t = *a;
    *a = *b, *b = t;
}

/** Restores the heap order of h[0..n) below position r: no parent better than its children, so h[0]
 *  is the worst candidate kept. */
static void sift_down(SamplerCand *h, int n, int r) {
    for (;;) {
        int w = r, l = 2 * r + 1, rr = l + 1;
        if (l < n && better(h[w], h[l])) w = l;
        if (rr < n && better(h[w], h[rr])) w = rr;
        if (w == r) return;
        swap_cand(&h[r], &h[w]);
        r = w;
    }
}

/**
 * The @p m best candidates of probs[0..n), best first, into out[0..m): one pass that keeps the m
 * best seen so far in a heap whose root is the worst of them (one comparison for most tokens),
 * then empties the heap from the back.
 */
static void heap_best(SamplerCand *out, const float *probs, int n, int m) {
    int size = 0;
    for (int i = 0; i < n; i++) {
        /* Most tokens lose to the worst one kept: skip 16 at a time when none is ≥ it (a plain
         * compare that vectorizes; a NaN is never ≥, and ranks last anyway). */
        if (size == m && out[0].p == out[0].p && i % 16 == 0 && i + 16 <= n) {
            int any = 0;
            for (int l = 0; l < 16; l++) any |= probs[i + l] >= out[0].p;
            if (!any) {
                i += 15;
                continue;
            }
        }
        SamplerCand c = { probs[i], i };
        if (size < m) {
            int j = size++; /* sift up: no parent is better than its children */
            out[j] = c;
            while (j > 0 && better(out[(j - 1) / 2], out[j])) {
                swap_cand(&out[j], &out[(j - 1) / 2]);
                j = (j - 1) / 2;
            }
        } else if (better(c, out[0])) {
            out[0] = c;
            sift_down(out, size, 0);
        }
    }
    for (int last = size - 1; last > 0; last--) { /* the worst goes last */
        swap_cand(&out[0], &out[last]);
        sift_down(out, last, 0);
    }
}

/**
 * Partial selection (quickselect): rearranges c[lo..hi) so that c[lo..k) holds its k − lo best
 * candidates, in no particular order, in expected O(hi − lo) comparisons: partition around the
 * median of three, keep only the side that contains position k.
 */
static void select_best(SamplerCand *c, int lo, int hi, int k) {
    while (hi - lo > 1 && k > lo && k < hi) {
        int mid = lo + (hi - lo) / 2, last = hi - 1;
        if (better(c[mid], c[lo])) swap_cand(&c[mid], &c[lo]);
        if (better(c[last], c[lo])) swap_cand(&c[last], &c[lo]);
        if (better(c[mid], c[last])) swap_cand(&c[mid], &c[last]); /* c[last]: the median, the pivot */
        int store = lo;
        for (int i = lo; i < last; i++)
            if (better(c[i], c[last])) swap_cand(&c[i], &c[store++]);
        swap_cand(&c[store], &c[last]); /* c[lo..store) better than the pivot at store, the rest worse */
        if (store == k || store + 1 == k) return;
        if (k < store) hi = store;
        else lo = store + 1;
    }
}

static int cmp_cand(const void *a, const void *b) {
    const SamplerCand *x = a, *y = b;
    return better(*x, *y) ? -1 : better(*y, *x) ? 1 : 0;
}

void sampler_probs(const Sampler *s, const float *logits, int n, float *probs, SamplerCand *cands) {
    if (s->temperature == 0.0f) {
        for (int i = 0; i < n; i++) probs[i] = 0.0f;
        probs[sampler_argmax(logits, n)] = 1.0f;
        return;
    }
    /* Softmax of logits / T in FP32 (max subtracted; NaNs skipped, as fmaxf does), computed once;
     * the sum in double, in the slice order of SAMPLER_SLICES. */
    float lane_max[16];
    for (int l = 0; l < 16; l++) lane_max[l] = -INFINITY;
    for (int i = 0; i + 16 <= n; i += 16) /* 16 lanes so that it vectorizes; a max is exact in any order */
        for (int l = 0; l < 16; l++) lane_max[l] = logits[i + l] > lane_max[l] ? logits[i + l] : lane_max[l];
    float m = -INFINITY;
    for (int i = n - n % 16; i < n; i++) m = logits[i] > m ? logits[i] : m;
    for (int l = 0; l < 16; l++) m = lane_max[l] > m ? lane_max[l] : m;
    double part[SAMPLER_SLICES], sum = 0.0;
    int len = (n + SAMPLER_SLICES - 1) / SAMPLER_SLICES, par = n >= SAMPLER_PARALLEL_MIN && !threads_in_parallel();
#pragma omp parallel for schedule(static) if (par)
    for (int b = 0; b < SAMPLER_SLICES; b++) { /* slice b: exp and its partial sum, in index order */
        int lo = b * len < n ? b * len : n, hi = lo + len < n ? lo + len : n;
        double acc = 0.0;
        for (int i = lo; i < hi; i++) {
            probs[i] = expf((logits[i] - m) / s->temperature);
            acc += probs[i];
        }
        part[b] = acc;
    }
    for (int b = 0; b < SAMPLER_SLICES; b++) sum += part[b];
#pragma omp parallel for schedule(static) if (par)
    for (int i = 0; i < n; i++) probs[i] = (float)(probs[i] / sum);
    int keep = n;
    if (s->top_k > 0 && s->top_k < keep) keep = s->top_k;
    if (keep == n && s->top_p >= 1.0f) return; /* nothing to truncate */
    /* The kept tokens are a prefix of the candidates in order (best first): the top-k, cut where
     * their mass first reaches top_p. Only that prefix is selected and sorted, never the whole
     * vocabulary: first the min(k, 256) best by one heap pass; while the mass falls short, the next
     * best by quickselect (at least as many again, and at least enough to cover the missing mass at
     * the last one's probability), each batch worse than the one before, so the prefix grows in
     * order and the mass runs exactly as over a full sort. */
    int want = keep < 256 ? keep : 256, sorted = want, k = 0, rest = 0;
    heap_best(cands, probs, n, want);
    double mass = 0.0;
    for (;;) {
        while (k < sorted && mass < s->top_p) mass += cands[k++].p;
        if (mass >= s->top_p || sorted == keep) break;
        if (!rest) { /* the first time more are needed: every other candidate, behind the selected */
            int j = sorted;
            for (int i = 0; i < n; i++) {
                SamplerCand c = { probs[i], i };
                if (better(cands[sorted - 1], c)) cands[j++] = c;
            }
            DSV3_ASSERT(j == n);
            rest = 1;
        }
        double p_last = cands[sorted - 1].p, more = p_last > 0.0 ? (s->top_p - mass) / p_last : (double)keep;
        want = sorted + (more > sorted ? (more < keep ? (int)more + 1 : keep) : sorted);
        if (want > keep) want = keep;
        select_best(cands, sorted, n, want);
        qsort(cands + sorted, (size_t)(want - sorted), sizeof *cands, cmp_cand);
        sorted = want;
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
