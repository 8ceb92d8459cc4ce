/**
 * @file generate.h
 * @brief Token generation over a persistent KV cache, with optional speculative decoding
 *        that drafts with the checkpoint's own MTP module (paper §5.4.3; docs/model.md §7.3).
 *
 * State between calls: every committed token except the last is in the main KV cache; the
 * last one ("pending") has been chosen but not yet run. gen_feed() appends tokens (a prompt,
 * or a new chat turn — only the new tokens are prefilled); gen_next() produces the next
 * token(s). Plain decoding returns one token per call; speculative decoding returns 1..N+1:
 *
 *   draft:  the MTP module, fed the main model's post-norm hidden h_{L−1} and the pending token,
 *           proposes d_1 for position L+1 (and d_2.. by recycling its own output, --draft N);
 *   verify: the main model runs [pending, d_1..d_N] in one chunk; d_i is accepted if it is the
 *           main model's argmax (greedy) or with probability min(1, p(d_i)/q(d_i)) (sampling),
 *           else replaced by a draw from the residual max(0, p − q); if all pass, a bonus token
 *           comes from the last position. The output law equals the main model's exactly.
 *   commit: the main cache drops the rejected positions; MTP rows are always recomputed from
 *           true hiddens and true tokens, so both caches equal those of a plain run.
 */
#ifndef DSV3_GENERATE_H
#define DSV3_GENERATE_H

#include "backend.h"
#include "model/model.h"
#include "sampler.h"

/**
 * Called on every logits row of the main model before a token is drawn from it (plain steps,
 * each verified position and the bonus token of a speculative step; not on MTP drafts, whose
 * distribution only decides what gets verified): @p tokens [n_tokens] are the committed tokens
 * before the one being drawn. It may change @p logits [n] in place (penalties, biases, masks:
 * ref/generate/logits_process.h); after gen_next, logits row i holds what out[i] was drawn from.
 */
typedef void (*GenLogitsHook)(void *ctx, const int *tokens, int64_t n_tokens, float *logits, int n);

/** Counters of a generation session. */
typedef struct {
    int64_t prefilled;      /**< tokens run through gen_feed (prompt and chat turns) */
    int64_t generated;      /**< tokens returned by gen_next */
    int64_t steps;          /**< gen_next calls that ran the main model */
    int64_t drafted;        /**< MTP draft tokens proposed */
    int64_t accepted;       /**< draft tokens accepted */
    double prefill_seconds; /**< time in gen_feed */
    double decode_seconds;  /**< time in gen_next */
} GenStats;

/** A generation session: caches, buffers, sampler. */
typedef struct {
    const Model *m;      /**< the model (not owned) */
    Sampler *sampler;    /**< sampling settings and PRNG (not owned) */
    int draft;           /**< MTP drafts per step; 0 = plain decoding */
    int n_sample;        /**< ids ≥ n_sample are never generated (tokenizer smaller than the padded vocab) */
    int64_t ctx;         /**< positions the caches hold */
    RunState rs;         /**< activations, shared by the main model and the MTP module */
    KVCache kv;          /**< main model cache */
    KVCache mtp_kv;      /**< MTP module cache (one layer) */
    int *tokens;         /**< [ctx+1] every committed token */
    int64_t n_tokens;    /**< committed tokens (kv.len + 1 while one is pending) */
    int pending;         /**< 1 if tokens[n_tokens−1] is chosen but not yet run */
    int have_logits;     /**< logits[0] holds the distribution of the next token (after a feed) */
    float *logits;       /**< [draft+1][V] */
    float *normed;       /**< [max_T][D] post-norm hiddens of the last main chunk */
    float *h_last;       /**< [D] post-norm hidden at position kv.len−1 */
    float *mtp_h;        /**< [max_T][D] MTP inputs */
    float *mtp_logits;   /**< [V] */
    float *q_probs;      /**< [draft][V] draft distributions */
    float *p_probs;      /**< [V] */
    SamplerCand *cands;  /**< [V] */
    int *drafts;         /**< [draft] */
    int64_t last_pos;    /**< position of the pending token at the start of the last speculative step */
    int last_out;        /**< tokens the last gen_next returned */
    GenStats stats;      /**< counters */
    GpuEngine *gpu;      /**< when set (gen_use_gpu), the main model runs there (not owned) */
    GenLogitsHook hook;  /**< when set (gen_set_logits_hook), applied to every row before drawing */
    void *hook_ctx;      /**< its argument */
    int spec_exact;      /**< gen_set_spec_exact: sampled drafts verified by drawing, not by the ratio test */
    void *mem;           /**< the one allocation behind the buffers above */
} Generator;

/**
 * Sets up a session for up to @p ctx positions. @p draft > 0 enables speculative decoding with
 * MTP module 0 (the checkpoint must have one). @p prefill_chunk bounds the tokens per main
 * forward call (memory of the activations).
 */
int gen_init(Generator *g, const Model *m, Sampler *sampler, int64_t ctx, int draft, int64_t prefill_chunk,
             AttnMode attn, Fp8Mode fp8, Err *err);
/** Tokens per main-model forward of a session: the prefill chunk, at least draft + 1 (one
 *  verification), at most ctx + 1. What gen_init sizes its buffers (and a GPU engine) for. */
int64_t gen_max_T(int64_t prefill_chunk, int draft, int64_t ctx);

/** The MoE layers of the main model and of the MTP module go through @p hook (NULL: local experts);
 *  the CLI installs expert parallelism's (ref/cli/cli_ep.h, ep/ep.h) this way. Call right after gen_init. */
void gen_set_moe_hook(Generator *g, MoeHook *hook);

/**
 * Runs the main model (and, with draft > 0, the MTP module: the engine must have been opened with
 * GpuEngineOptions.mtp) on @p gpu (`--backend fast`) instead of the reference. Call right after
 * gen_init. The reference's own caches and activations are released; sampling, drafting decisions
 * and rollbacks stay on the host (the engine follows kv.len / mtp_kv.len).
 */
int gen_use_gpu(Generator *g, GpuEngine *gpu, Err *err);

/** Frees the session (not the model, the sampler or the GPU engine). */
void gen_free(Generator *g);

/** Appends @p n tokens (after the pending one, if any) and prefills them. */
int gen_feed(Generator *g, const int *ids, int64_t n, Err *err);

/**
 * Produces the next token(s) into @p out (room for draft+1), their count in *n_out (≥ 1).
 * Fails with a message when the context is full.
 */
int gen_next(Generator *g, int *out, int *n_out, Err *err);

/**
 * Keeps only the first @p keep (1 ≤ keep ≤ n_out) tokens the last gen_next returned, as if the
 * others had never been generated: the last kept token becomes the pending one and both caches
 * are rolled back (a chat stops at an EOS that a speculative step returned mid-way).
 */
int gen_keep(Generator *g, int keep, Err *err);

/** Installs @p hook (NULL: none) with its argument @p ctx; see GenLogitsHook. */
void gen_set_logits_hook(Generator *g, GenLogitsHook hook, void *ctx);

/**
 * With @p on, speculation never changes a sampled sequence: drafts are the MTP module's argmax and
 * each is accepted only when the main model's own draw at that position — the sampler's next draw,
 * as plain decoding would make it — is that token. The text for a seed is then the one plain
 * decoding gives, at a lower acceptance than the default ratio test (Leviathan et al.), which keeps
 * only the output's law. Greedy decoding is exact either way. What `dsv3 serve` uses.
 */
void gen_set_spec_exact(Generator *g, int on);

/**
 * Forgets everything after the first @p n committed tokens (0 ≤ n ≤ kv.len), so that a new
 * sequence sharing them continues from the cache (a server's prefix reuse); gen_feed must come
 * next. Without drafting the cache keeps all n (kv.len = n); with drafting it keeps n − 1 and the
 * n-th token is run again with the fed ones (the MTP module needs its hidden state, not kept).
 */
int gen_rewind(Generator *g, int64_t n, Err *err);
/**
 * Forgets every token: the session is as after gen_init (the statistics stay). A chat that
 * starts over, or re-reads a shortened conversation (context shift), feeds it again from here.
 */
void gen_reset(Generator *g);

/** Never generate ids ≥ @p n (e.g. the tokenizer's vocabulary size); 1 ≤ n ≤ vocab_size. */
void gen_limit_vocab(Generator *g, int n);

/** Positions left before the context is full (counting the pending token). */
int64_t gen_room(const Generator *g);

#endif
