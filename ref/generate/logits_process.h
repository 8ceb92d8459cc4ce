/**
 * @file logits_process.h
 * @brief What happens to a row of logits before a token is drawn from it — repetition penalties,
 *        logit biases, min-p — and the log-probabilities a server reports for the token drawn.
 *
 * With z the row and W the last `penalty_last_n` tokens before the one being drawn (prompt and
 * generated text alike, as llama.cpp counts them), c(t) the occurrences of t in W:
 *
 *     repeat (Keskar et al. 2019, CTRL §4.1):  z_t ← z_t / r  if z_t > 0, else z_t · r    (t ∈ W)
 *     presence / frequency (OpenAI):           z_t ← z_t − c(t)·α_freq − [c(t) > 0]·α_pres
 *     logit_bias:                              z_t ← z_t + b_t
 *     min-p (Nguyen et al. 2024):              drop t when p_t < min_p · max_u p_u, i.e. when
 *                                              z_t < max_u z_u + ln(min_p)  (z untempered, as llama.cpp)
 *
 * A dropped token's logit becomes −∞, so the sampler (ref/generate/sampler.h) then applies its
 * temperature, top-k and top-p to what is left, and the greedy argmax is never dropped.
 * The reported log-probabilities are log softmax(z) after penalties and biases, before min-p and
 * any truncation or temperature: the model's distribution as the request shaped it.
 *
 * One implementation for `dsv3 serve` and `generate`/`chat` (--repeat-penalty, --presence-penalty,
 * --frequency-penalty, --min-p): a Generator applies it through gen_set_logits_hook with
 * logits_process_hook, the server's scheduler calls logits_process directly.
 */
#ifndef DSV3_LOGITS_PROCESS_H
#define DSV3_LOGITS_PROCESS_H

#include <stdint.h>

#include "base/util.h"

/** One entry of a request's logit_bias map. */
typedef struct {
    int token;  /**< token id */
    float bias; /**< added to its logit; −100 bans it in practice, +100 all but forces it */
} LogitBias;

/** The processing of one request (or one generate/chat run). */
typedef struct {
    float repeat_penalty;    /**< r > 0; 1 = off */
    float presence_penalty;  /**< α_pres in [−2, 2]; 0 = off */
    float frequency_penalty; /**< α_freq in [−2, 2]; 0 = off */
    int penalty_last_n;      /**< |W|: tokens looked back at (0: none, −1: the whole sequence) */
    float min_p;             /**< in [0, 1]; 0 = off */
    const LogitBias *bias;   /**< [n_bias] (not owned) */
    int n_bias;              /**< entries of bias */
} LogitsParams;

/** The defaults: every transform off, a 64-token penalty window (llama.cpp's). */
LogitsParams logits_params_default(void);

/** 1 when @p p changes nothing (the processing can be skipped). */
int logits_params_off(const LogitsParams *p);

/** Checks ranges (and that every biased id is < @p vocab); one-line error naming the parameter. */
int logits_params_check(const LogitsParams *p, int vocab, Err *err);

/**
 * Penalties and biases, then min-p, on @p logits [n] in place. @p hist [n_hist] are the tokens
 * before the one to be drawn; @p work must hold min(n_hist, window) ints (scratch).
 */
void logits_process(const LogitsParams *p, const int *hist, int64_t n_hist, float *logits, int n, int *work);

/** Only the penalties and biases (the part the reported log-probabilities see). */
void logits_penalize(const LogitsParams *p, const int *hist, int64_t n_hist, float *logits, int n, int *work);

/** Only min-p: logits below max + ln(min_p) become −∞. */
void logits_min_p(float min_p, float *logits, int n);

/** What logits_process_hook needs: the parameters and a scratch buffer of the window's size. */
typedef struct {
    LogitsParams p; /**< the processing */
    int *work;      /**< [cap] scratch */
    int64_t cap;    /**< ints in work: the context length covers every window */
} LogitsHookCtx;

/**
 * A GenLogitsHook (ref/generate/generate.h) that runs logits_process with the LogitsHookCtx
 * @p ctx; what generate and chat install for --repeat-penalty and friends.
 */
void logits_process_hook(void *ctx, const int *tokens, int64_t n_tokens, float *logits, int n);

/** One token and its log-probability. */
typedef struct {
    int token;     /**< id */
    float logprob; /**< natural log */
} TokenLogprob;

/**
 * log softmax(@p logits [n]) at @p chosen (returned) and, into @p top [k], the k most likely
 * tokens, most likely first (ties: lower id first). k ≤ 20. Values below −9999 (a masked token)
 * read −9999, OpenAI's floor, so they stay finite in JSON.
 */
float logprobs_top(const float *logits, int n, int chosen, int k, TokenLogprob *top);

/** The most tokens logprobs_top ranks (OpenAI's top_logprobs limit). */
#define LOGPROBS_MAX_TOP 20

#endif
