/**
 * @file logits_process.c
 * @brief Penalties, biases, min-p and log-probabilities of a logits row (see logits_process.h).
 */
#include "logits_process.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

LogitsParams logits_params_default(void) {
    return (LogitsParams){ 1.0f, 0.0f, 0.0f, 64, 0.0f, NULL, 0 };
}

int logits_params_off(const LogitsParams *p) {
    int no_penalty = p->penalty_last_n == 0 ||
                     (p->repeat_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f);
    return no_penalty && p->n_bias == 0 && p->min_p == 0.0f;
}

int logits_params_check(const LogitsParams *p, int vocab, Err *err) {
    if (!(p->repeat_penalty > 0.0f && p->repeat_penalty <= 10.0f))
        return err_set(err, "repeat_penalty must be in (0, 10], got %g", p->repeat_penalty);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return err_set(err, "presence_penalty must be in [-2, 2], got %g", p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return err_set(err, "frequency_penalty must be in [-2, 2], got %g", p->frequency_penalty);
    if (p->penalty_last_n < -1) return err_set(err, "penalty_last_n must be ≥ -1, got %d", p->penalty_last_n);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f)) return err_set(err, "min_p must be in [0, 1], got %g", p->min_p);
    for (int i = 0; i < p->n_bias; i++) {
        if (p->bias[i].token < 0 || p->bias[i].token >= vocab)
            return err_set(err, "logit_bias: token id %d is outside the vocabulary [0, %d)", p->bias[i].token, vocab);
        if (!(p->bias[i].bias >= -100.0f && p->bias[i].bias <= 100.0f))
            return err_set(err, "logit_bias: the bias of token %d must be in [-100, 100], got %g", p->bias[i].token,
                           p->bias[i].bias);
    }
    return 0;
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

void logits_penalize(const LogitsParams *p, const int *hist, int64_t n_hist, float *logits, int n, int *work) {
    int64_t w = p->penalty_last_n < 0 ? n_hist : p->penalty_last_n;
    if (w > n_hist) w = n_hist;
    int penalize = p->repeat_penalty != 1.0f || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    if (penalize && w > 0) {
        /* Occurrences by sorting the window: equal ids end up adjacent, so each distinct token is
         * penalized once with its count, whatever the window's size. */
        memcpy(work, hist + n_hist - w, (size_t)w * sizeof *work);
        qsort(work, (size_t)w, sizeof *work, cmp_int);
        for (int64_t i = 0; i < w;) {
            int t = work[i];
            int64_t j = i;
            while (j < w && work[j] == t) j++;
            if (t >= 0 && t < n) {
                float z = logits[t];
                if (p->repeat_penalty != 1.0f) z = z > 0.0f ? z / p->repeat_penalty : z * p->repeat_penalty;
                z -= (float)(j - i) * p->frequency_penalty + p->presence_penalty;
                logits[t] = z;
            }
            i = j;
        }
    }
    for (int i = 0; i < p->n_bias; i++)
        if (p->bias[i].token >= 0 && p->bias[i].token < n) logits[p->bias[i].token] += p->bias[i].bias;
}

void logits_min_p(float min_p, float *logits, int n) {
    if (min_p <= 0.0f) return;
    float m = -INFINITY;
    for (int i = 0; i < n; i++) m = fmaxf(m, logits[i]);
    /* p_t / p_max = exp(z_t − z_max): keep z_t ≥ z_max + ln(min_p); the maximum always stays. */
    float floor = m + logf(min_p);
    for (int i = 0; i < n; i++)
        if (logits[i] < floor) logits[i] = -INFINITY;
}

void logits_process(const LogitsParams *p, const int *hist, int64_t n_hist, float *logits, int n, int *work) {
    logits_penalize(p, hist, n_hist, logits, n, work);
    logits_min_p(p->min_p, logits, n);
}

void logits_process_hook(void *ctx, const int *tokens, int64_t n_tokens, float *logits, int n) {
    LogitsHookCtx *h = ctx;
    if (n_tokens > h->cap) tokens += n_tokens - h->cap, n_tokens = h->cap; /* a window never exceeds the context */
    logits_process(&h->p, tokens, n_tokens, logits, n, h->work);
}

float logprobs_top(const float *logits, int n, int chosen, int k, TokenLogprob *top) {
    /* log p_t = z_t − (m + ln Σ exp(z_u − m)), in double for the sum. */
    float m = -INFINITY;
    for (int i = 0; i < n; i++) m = fmaxf(m, logits[i]);
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += exp((double)logits[i] - m);
    double lse = m + log(sum);
    if (k > LOGPROBS_MAX_TOP) k = LOGPROBS_MAX_TOP;
    if (k > n) k = n;
    /* The k largest by insertion into a sorted list: k ≤ 20, one pass over the row. */
    int filled = 0;
    for (int i = 0; i < n && k > 0; i++) {
        float z = logits[i];
        if (filled == k && !(z > logits[top[k - 1].token])) continue;
        int j = filled < k ? filled++ : k - 1;
        while (j > 0 && z > logits[top[j - 1].token]) top[j] = top[j - 1], j--;
        top[j].token = i;
    }
    for (int j = 0; j < filled; j++) {
        double lp = logits[top[j].token] - lse;
        top[j].logprob = lp < -9999.0 ? -9999.0f : (float)lp;
    }
    double lc = (chosen >= 0 && chosen < n) ? logits[chosen] - lse : -9999.0;
    return lc < -9999.0 ? -9999.0f : (float)lc;
}
