/**
 * @file batch.h
 * @brief Many sequences generated at once with continuous batching: what serving does, and
 *        what `dsv3 generate --batch FILE` runs.
 *
 * Up to max_seqs sequences are open at a time. Each step builds one batch: every decoding
 * sequence contributes its pending token, and sequences still reading their prompt fill the rest
 * of the step's max_T tokens with prefill chunks; a sequence that finishes (EOS, its token limit,
 * the context, or its on_token callback, e.g. at a stop string) hands its slot to the next waiting
 * request at once. On the GPU a step is one engine forward over all chunks
 * (gpu_engine_forward_seqs: one paged cache, one launch sequence); on the reference each chunk
 * runs model_forward against its sequence's own KV cache.
 *
 * Every request samples with its own Sampler seeded from the request, so a request's output does
 * not depend on what else is in the batch: with the same seed it equals `dsv3 generate` of that
 * prompt alone (bit for bit on the reference; on the GPU up to kernels whose summation order
 * depends on how many rows a step carries). Plain decoding only (no MTP speculation).
 */
#ifndef DSV3_BATCH_H
#define DSV3_BATCH_H

#include "backend.h"
#include "model/model.h"
#include "generate.h"
#include "sampler.h"

/** One prompt to complete. */
typedef struct {
    const int *prompt;   /**< token ids (not owned) */
    int64_t n_prompt;    /**< ≥ 1 */
    int64_t max_new;     /**< tokens to generate at most; −1: until the context is full */
    uint64_t seed;       /**< its sampler's seed */
} BatchRequest;

/** Called when request @p i is done: @p tokens [n] generated (EOS excluded), @p eos = 1 if it ended with EOS. */
typedef int (*BatchDone)(void *ctx, int i, const int *tokens, int64_t n, int eos, Err *err);

/**
 * Called for every token request @p i generates (EOS excluded), before the next step: 1 ends the
 * request there (e.g. its text now contains a stop string, ref/generate/stop.h), 0 lets it go on,
 * −1 fails the run with @p err set.
 */
typedef int (*BatchToken)(void *ctx, int i, int token, Err *err);

/** Settings of a batch run. */
typedef struct {
    int max_seqs;        /**< sequences open at once */
    int64_t max_T;       /**< tokens per step, all sequences together (≥ max_seqs) */
    int64_t ctx;         /**< positions per sequence (prompt + generated) */
    float temperature;   /**< sampling, as Sampler */
    int top_k;           /**< as Sampler */
    float top_p;         /**< as Sampler */
    int n_sample;        /**< ids ≥ n_sample are never generated (tokenizer smaller than the vocab) */
    int eos;             /**< end-of-sequence id (−1: none) */
    AttnMode attn;       /**< reference: MLA form */
    Fp8Mode fp8;         /**< reference: FP8 numerics */
    MoeHook *moe_hook;   /**< reference: MoE layers go through it, e.g. expert parallelism (NULL: local) */
    BatchToken on_token; /**< NULL: requests end at EOS, their token limit or the context only */
    void *token_ctx;     /**< on_token's context */
    GenLogitsHook logits_hook; /**< applied to a sequence's logits row before each draw (penalties); NULL: none */
    void *hook_ctx;      /**< logits_hook's context */
} BatchOptions;

/** Counters of a batch run. */
typedef struct {
    int64_t steps;           /**< batched forwards */
    int64_t prompt_tokens;   /**< tokens prefilled */
    int64_t generated;       /**< tokens generated */
    int max_open;            /**< most sequences open in one step */
    double seconds;          /**< wall time */
} BatchStats;

/**
 * Completes @p n requests, calling @p done for each as it finishes (in completion order), on
 * @p gpu when given (opened with GpuEngineOptions.max_seqs ≥ opt->max_seqs and max_T ≥ opt->max_T)
 * or else on the reference. A request whose prompt does not fit the context is an error before
 * anything runs.
 */
int batch_generate(const Model *m, GpuEngine *gpu, const BatchOptions *opt, const BatchRequest *reqs, int n,
                   BatchDone done, void *done_ctx, BatchStats *stats, Err *err);

#endif
