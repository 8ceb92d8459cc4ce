/**
 * @file sched.h
 * @brief A server's scheduler: requests arrive at any time from any thread, N slots generate
 *        them with continuous batching, each request sampled on its own, prompts sharing a prefix
 *        with what a slot holds prefill only the rest (what `dsv3 serve` runs; docs/serve.md).
 *
 * One model, n_slots slots. Each sched_step():
 *   1. ends the requests cancelled since the last step, or whose sink says they are no longer
 *      wanted (a client that went away), so their slots are free again for this very step;
 *   2. admits waiting requests, first come first served, into free slots: the one whose cached
 *      tokens share the longest prefix with the prompt (least recently used on a tie), which then
 *      keeps that prefix and prefills only the rest (the prompt's last token is always run);
 *   3. advances every slot: each decoding request by one step (one token, or with MTP drafting
 *      1..draft+1), then prompts by chunks from the step's budget of max_T tokens, so a long
 *      prompt never holds up the others' decoding; a request whose prompt is done draws its first
 *      token in the same step.
 *
 * Every request has its own Sampler seeded from its request and its own LogitsParams, applied to
 * its rows alone, so its text does not depend on the other requests or on which slot (or cached
 * prefix, chunk invariance) it got: with one seed it is the same alone or among others, and
 * greedily it is `dsv3 generate --temp 0`'s (bit for bit on the reference).
 *
 * Two ways to run a step, chosen by sched_open:
 *  - a Generator per slot (ref/generate/generate.h): the reference (each slot its own KV caches;
 *    expert parallelism through opt->moe_hook), or one GPU sequence; MTP speculation with draft > 0;
 *  - the GPU engine's multi-sequence forward (gpu != NULL and n_slots > 1): every slot's chunk
 *    in one gpu_engine_forward_seqs, plain decoding.
 *
 * Threads: sched_submit, sched_cancel, sched_stats and sched_wait may be called from any thread;
 * sched_step from one thread at a time, which also runs every SchedSink callback.
 */
#ifndef DSV3_SCHED_H
#define DSV3_SCHED_H

#include "backend.h"
#include "logits_process.h"
#include "model/model.h"

/** The most ids besides EOS that may end one request (SchedParams.stop_ids). */
#define SCHED_MAX_STOP_IDS 4

/** How one request is sampled and how long it runs. */
typedef struct {
    float temperature;   /**< as Sampler (0: greedy) */
    int top_k;           /**< as Sampler (0: all) */
    float top_p;         /**< as Sampler, in (0, 1] */
    uint64_t seed;       /**< its sampler's seed */
    LogitsParams logits; /**< penalties, biases, min-p (bias is copied by sched_submit) */
    int64_t max_new;     /**< tokens to generate at most, ≥ 1; prompt + max_new ≤ the context */
    int top_logprobs;    /**< −1: no log-probabilities; 0..LOGPROBS_MAX_TOP: the token's and this many alternatives */
    int stop_ids[SCHED_MAX_STOP_IDS]; /**< [n_stop_ids] ids that end this request as the EOS does (a chat template's end of turn) */
    int n_stop_ids;      /**< 0: the EOS alone */
} SchedParams;

/** One generated token as a request's sink receives it. */
typedef struct {
    int token;                           /**< id (never the EOS or stop id that ends a request) */
    float logprob;                       /**< when top_logprobs ≥ 0: its log-probability (logits_process.h) */
    int n_top;                           /**< entries of top */
    TokenLogprob top[LOGPROBS_MAX_TOP];  /**< the most likely tokens at its position, best first */
} SchedToken;

/** Why a request ended. */
typedef enum {
    SCHED_STOP,      /**< EOS or a stop id, or the sink asked to stop (a stop string) */
    SCHED_LENGTH,    /**< max_new tokens */
    SCHED_CANCELLED, /**< sched_cancel */
    SCHED_ERROR      /**< the forward failed (message in SchedResult.error) */
} SchedFinish;

/** A finished request. */
typedef struct {
    SchedFinish finish;    /**< why it ended */
    int64_t prompt_tokens; /**< its prompt */
    int64_t cached_tokens; /**< prompt tokens found in the slot's cache, not prefilled */
    int64_t generated;     /**< tokens delivered through on_token */
    const char *error;     /**< SCHED_ERROR: one line */
} SchedResult;

/** Where a request's output goes; called on the stepping thread. */
typedef struct {
    /** A new token; returns 1 to end the request here (SCHED_STOP), 0 to go on. */
    int (*on_token)(void *user, const SchedToken *t);
    /** The end, exactly once per accepted request (also for a cancelled one); @p user may be freed after. */
    void (*on_done)(void *user, const SchedResult *r);
    /** Asked before every step (may be NULL): 0 cancels the request there (its client went away). */
    int (*alive)(void *user);
    void *user; /**< their first argument */
} SchedSink;

/** Settings of a scheduler. */
typedef struct {
    int n_slots;        /**< requests generated at once */
    int64_t ctx;        /**< positions per slot (prompt + generated) */
    int64_t max_T;      /**< tokens per step (the prefill budget, -b); at least n_slots with the GPU batch */
    int draft;          /**< MTP drafts per step (0: plain; Generator slots only) */
    int n_sample;       /**< ids ≥ n_sample are never generated (tokenizer smaller than the vocab) */
    int eos;            /**< end-of-sequence id (−1: none) */
    int max_queue;      /**< requests waiting for a slot at most (sched_submit answers SCHED_FULL beyond) */
    AttnMode attn;      /**< reference: MLA form */
    Fp8Mode fp8;        /**< reference: FP8 numerics */
    MoeHook *moe_hook;  /**< reference: MoE layers go through it (expert parallelism), NULL: local */
} SchedOptions;

/** A snapshot of the scheduler's state and counters (since sched_open). */
typedef struct {
    int slots;              /**< n_slots */
    int busy;               /**< slots generating a request */
    int queued;             /**< requests waiting for a slot */
    int64_t kv_used;        /**< positions held in the slots' caches (busy and cached prefixes) */
    int64_t kv_total;       /**< n_slots × ctx */
    int64_t steps;          /**< sched_step calls that ran the model */
    int64_t prompt_tokens;  /**< prompt tokens of admitted requests */
    int64_t cached_tokens;  /**< of them, found in a slot's cache */
    int64_t generated;      /**< tokens delivered */
    int64_t drafted;        /**< MTP draft tokens proposed */
    int64_t accepted;       /**< of them, accepted */
    double busy_seconds;    /**< time spent in steps that ran the model */
} SchedStats;

/** The scheduler (opaque). */
typedef struct Sched Sched;

/** sched_submit's answer when max_queue requests are already waiting. */
#define SCHED_FULL 1

/**
 * Sets up @p o->n_slots slots over @p m, on @p gpu when given (opened with max_seqs ≥ n_slots
 * and max_T ≥ o->max_T for n_slots > 1; for one slot as gen_use_gpu needs), else the reference.
 */
int sched_open(Sched **s, const Model *m, GpuEngine *gpu, const SchedOptions *o, Err *err);

/** Ends every request (SCHED_CANCELLED) and frees the scheduler; safe on NULL. */
void sched_close(Sched *s);

/**
 * Queues a request: @p prompt [n] (copied; 1 ≤ n, n + p->max_new ≤ ctx, ids < n_sample).
 * Returns 0 with its id in *id (its sink is called from then on), SCHED_FULL when the queue is
 * full, −1 with a message when the request is invalid (the sink is never called).
 */
int sched_submit(Sched *s, const int *prompt, int64_t n, const SchedParams *p, const SchedSink *sink, uint64_t *id,
                 Err *err);

/** Ends request @p id at the next step (SCHED_CANCELLED); a finished or unknown id is ignored. */
void sched_cancel(Sched *s, uint64_t id);

/** Cancels every request, waiting or running (shutdown). */
void sched_cancel_all(Sched *s);

/** Copies the current state and counters. */
void sched_stats(Sched *s, SchedStats *st);

/** Blocks until a request is waiting or running, sched_wake is called, or @p timeout_s passes; 1 when there is work. */
int sched_wait(Sched *s, double timeout_s);

/** Wakes sched_wait. */
void sched_wake(Sched *s);

/**
 * Runs one step (see above). Returns the number of requests still waiting or running, or −1
 * when the forward failed (the step's requests end with SCHED_ERROR; message in @p err).
 */
int sched_step(Sched *s, Err *err);

#endif
