/**
 * @file generate.c
 * @brief Plain and MTP-speculative generation (docs/model.md §7.3; Leviathan et al. 2023 / Chen et al.
 *        2023 acceptance rule), see generate.h for the state and the algorithm.
 */
#include "generate.h"

#include <string.h>

#include "model/mtp.h"


static int alloc_buffers(Generator *g, int64_t max_T, void **mem) {
    const Config *c = &g->m->config;
    int64_t V = c->vocab_size, D = c->hidden_size, N = g->draft;
    Arena ar = { 0 };
    for (int pass = 0; pass < 2; pass++) {
        ARENA_TAKE(&ar, g->tokens, g->ctx + 1);
        ARENA_TAKE(&ar, g->logits, (N + 1) * V);
        ARENA_TAKE(&ar, g->normed, max_T * D);
        ARENA_TAKE(&ar, g->h_last, D);
        ARENA_TAKE(&ar, g->mtp_h, max_T * D);
        ARENA_TAKE(&ar, g->mtp_logits, V);
        ARENA_TAKE(&ar, g->q_probs, (N > 0 ? N : 1) * V);
        ARENA_TAKE(&ar, g->p_probs, V);
        ARENA_TAKE(&ar, g->cands, V);
        ARENA_TAKE(&ar, g->drafts, N + 1);
        if (ar.overflow) return -1;
        if (pass == 0) {
            *mem = calloc(1, ar.used + 64);
            if (!*mem) return -1;
            ar = (Arena){ (char *)*mem, 0, ar.used + 64, 0 };
        }
    }
    return 0;
}

int gen_init(Generator *g, const Model *m, Sampler *sampler, int64_t ctx, int draft, int64_t prefill_chunk,
             AttnMode attn, Fp8Mode fp8, Err *err) {
    memset(g, 0, sizeof *g);
    const Config *c = &m->config;
    if (draft < 0 || draft > 16) return err_set(err, "--draft must be in [0, 16], got %d", draft);
    if (draft > 0 && m->w.n_mtp == 0)
        return err_set(err, "speculative decoding needs the MTP module (model.layers.%d.*), which this checkpoint lacks",
                       c->num_hidden_layers);
    if (ctx < 1) return err_set(err, "context must hold at least one token");
    g->m = m;
    g->sampler = sampler;
    g->draft = draft;
    g->n_sample = c->vocab_size;
    g->ctx = ctx;
    int64_t max_T = gen_max_T(prefill_chunk, draft, ctx);
    if (alloc_buffers(g, max_T, &g->mem)) {
        free(g->mem);
        memset(g, 0, sizeof *g);
        return err_set(err, "out of memory for generation buffers");
    }
    if (runstate_init(&g->rs, m, max_T, ctx, attn, fp8, err) ||
        kvcache_init(&g->kv, c, attn, c->num_hidden_layers, ctx, err) ||
        (draft > 0 && kvcache_init(&g->mtp_kv, c, attn, 1, ctx, err))) {
        gen_free(g);
        return -1;
    }
    return 0;
}

int64_t gen_max_T(int64_t prefill_chunk, int draft, int64_t ctx) {
    int64_t max_T = prefill_chunk > draft + 1 ? prefill_chunk : draft + 1;
    return max_T > ctx + 1 ? ctx + 1 : max_T;
}

void gen_set_moe_hook(Generator *g, MoeHook *hook) { g->rs.ctx.moe_hook = hook; }

int gen_use_gpu(Generator *g, GpuEngine *gpu, Err *err) {
    if (g->n_tokens > 0) return err_set(err, "gen_use_gpu: the session has already run tokens");
    /* Keep only the bookkeeping of the reference's state: the chunk size and the positions (the
     * engine's caches follow kv.len and mtp_kv.len, rollbacks included). */
    int64_t max_T = g->rs.max_T, ctx = g->kv.max_seq, mtp_ctx = g->mtp_kv.max_seq;
    runstate_free(&g->rs);
    kvcache_free(&g->kv);
    kvcache_free(&g->mtp_kv);
    g->rs.max_T = max_T;
    g->kv.max_seq = ctx;
    g->mtp_kv.max_seq = mtp_ctx;
    g->gpu = gpu;
    return 0;
}

void gen_free(Generator *g) {
    runstate_free(&g->rs);
    kvcache_free(&g->kv);
    kvcache_free(&g->mtp_kv);
    free(g->mem);
    memset(g, 0, sizeof *g);
}

void gen_set_logits_hook(Generator *g, GenLogitsHook hook, void *ctx) { g->hook = hook, g->hook_ctx = ctx; }

int gen_rewind(Generator *g, int64_t n, Err *err) {
    if (n < 0 || n > g->kv.len) return err_set(err, "gen_rewind: %lld of %lld cached tokens", (long long)n, (long long)g->kv.len);
    g->n_tokens = n;
    g->have_logits = 0;
    g->last_out = 0;
    if (g->draft == 0 || n == 0) { /* the cache keeps exactly the n tokens; gen_feed continues after them */
        g->kv.len = n;
        g->mtp_kv.len = 0;
        g->pending = 0;
        return 0;
    }
    /* Drafting needs h_{n−1}, which is not kept: positions 0..n−2 stay cached and token n−1 is
     * left pending, run again by the next feed. MTP row n−2 pairs h_{n−2} with x_{n−1}, both
     * kept, so it stays (mtp_kv.len = kv.len); the feed recomputes the rows after it. */
    g->kv.len = n - 1;
    g->mtp_kv.len = g->kv.len;
    g->pending = 1;
    return 0;
}

void gen_limit_vocab(Generator *g, int n) {
    if (n >= 1 && n <= g->m->config.vocab_size) g->n_sample = n;
}

int gen_keep(Generator *g, int keep, Err *err) {
    if (keep < 1 || keep > g->last_out) return err_set(err, "gen_keep: %d of %d tokens", keep, g->last_out);
    if (keep == g->last_out) return 0;
    /* Only a speculative step returns several tokens: [d_1..d_a, next] with d_i at position
     * last_pos + i, all of them in the cache; keeping k leaves d_k pending at last_pos + k. */
    int64_t D = g->m->config.hidden_size, L = g->last_pos;
    g->kv.len = L + keep;
    g->n_tokens = L + keep + 1;
    g->mtp_kv.len = g->kv.len - 1;
    memcpy(g->h_last, g->normed + (int64_t)(keep - 1) * D, (size_t)D * sizeof(float));
    g->stats.generated -= g->last_out - keep;
    g->last_out = keep;
    return 0;
}

int64_t gen_room(const Generator *g) { return g->ctx - g->kv.len - g->pending; }

void gen_reset(Generator *g) {
    /* The caches are overwritten from position 0 by the next feed (the GPU engine follows kv.len). */
    g->kv.len = 0;
    g->mtp_kv.len = 0;
    g->n_tokens = 0;
    g->pending = 0;
    g->have_logits = 0;
    g->last_out = 0;
}

/** The main model over ids at position kv.len (then kv.len += k), on the GPU engine when there is one. */
static int run_main(Generator *g, const int *ids, int64_t k, int64_t n_logits, Err *err) {
    if (!g->gpu) return model_forward(g->m, &g->rs, &g->kv, ids, k, g->logits, n_logits, NULL, g->normed, err);
    if (gpu_engine_forward(g->gpu, g->kv.len, ids, k, g->logits, n_logits, NULL, g->normed, err)) return -1;
    g->kv.len += k;
    return 0;
}

/** MTP module 0 over T rows at position mtp_kv.len (then mtp_kv.len += T), likewise. */
static int run_mtp(Generator *g, const int *next_ids, const float *h, int64_t T, float *logits, int64_t n_logits,
                   float *out_normed, Err *err) {
    if (!g->gpu) return mtp_forward(g->m, 0, &g->rs, &g->mtp_kv, next_ids, h, T, logits, n_logits, out_normed, err);
    if (gpu_engine_mtp(g->gpu, g->mtp_kv.len, next_ids, h, T, logits, n_logits, out_normed, err)) return -1;
    g->mtp_kv.len += T;
    return 0;
}

/**
 * MTP rows for positions mtp_kv.len .. kv.len−2: each pairs the true hidden h_p with the true
 * next token x_{p+1}. @p first_h is h at position mtp_kv.len when it precedes the chunk just run
 * (the old h_last), chunk_normed holds the hiddens of positions chunk_pos.. .
 */
static int mtp_catch_up(Generator *g, int64_t chunk_pos, const float *chunk_normed, Err *err) {
    const Config *c = &g->m->config;
    int64_t D = c->hidden_size;
    while (g->mtp_kv.len < g->kv.len - 1) {
        int64_t p0 = g->mtp_kv.len, rows = g->kv.len - 1 - p0;
        if (rows > g->rs.max_T) rows = g->rs.max_T;
        for (int64_t r = 0; r < rows; r++) {
            int64_t p = p0 + r;
            const float *h = p < chunk_pos ? g->h_last : chunk_normed + (p - chunk_pos) * D;
            DSV3_ASSERT(p >= chunk_pos - 1);
            memcpy(g->mtp_h + r * D, h, (size_t)D * sizeof(float));
        }
        if (run_mtp(g, g->tokens + p0 + 1, g->mtp_h, rows, NULL, 0, NULL, err)) return -1;
    }
    return 0;
}

/** Runs tokens[kv.len .. kv.len+k) through the main model; logits of the last n_logits positions. */
static int main_chunk(Generator *g, int64_t k, int64_t n_logits, Err *err) {
    int64_t D = g->m->config.hidden_size, pos = g->kv.len;
    if (run_main(g, g->tokens + pos, k, n_logits, err)) return -1;
    if (g->draft > 0 && mtp_catch_up(g, pos, g->normed, err)) return -1;
    memcpy(g->h_last, g->normed + (k - 1) * D, (size_t)D * sizeof(float));
    return 0;
}

int gen_feed(Generator *g, const int *ids, int64_t n, Err *err) {
    int V = g->m->config.vocab_size;
    if (n < 0 || n > gen_room(g))
        return err_set(err, "%lld new tokens do not fit: %lld of the %lld context positions are left", (long long)n,
                       (long long)gen_room(g), (long long)g->ctx);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) return err_set(err, "token id %d out of range [0, %d)", ids[i], V);
    if (n == 0) return 0;
    double t0 = now_seconds();
    memcpy(g->tokens + g->n_tokens, ids, (size_t)n * sizeof *ids);
    g->n_tokens += n;
    g->pending = 0;
    /* Everything not yet in the cache (the old pending token, then ids), in max_T pieces. */
    while (g->kv.len < g->n_tokens) {
        int64_t k = g->n_tokens - g->kv.len;
        if (k > g->rs.max_T) k = g->rs.max_T;
        if (main_chunk(g, k, 1, err)) return -1;
    }
    g->have_logits = 1;
    g->stats.prefilled += n;
    g->stats.prefill_seconds += now_seconds() - t0;
    return 0;
}

/** Plain step: run the pending token (if any), sample the next one. */
static int next_plain(Generator *g, int *out, Err *err) {
    int V = g->n_sample;
    if (g->pending) {
        if (main_chunk(g, 1, 1, err)) return -1;
        g->pending = 0;
        g->stats.steps++;
    }
    if (g->hook) g->hook(g->hook_ctx, g->tokens, g->n_tokens, g->logits, V);
    int t = sampler_sample(g->sampler, g->logits, V, g->p_probs, g->cands);
    g->tokens[g->n_tokens++] = t;
    g->pending = 1;
    g->have_logits = 0;
    *out = t;
    return 0;
}

/** MTP drafts d_1..d_n for positions L+1..: row L−1 from the true h_{L−1}, then recycled outputs. */
static int draft_tokens(Generator *g, int n, Err *err) {
    const Config *c = &g->m->config;
    int V = g->n_sample, stride = c->vocab_size;
    int64_t D = c->hidden_size, L = g->kv.len;
    int token = g->tokens[L]; /* the pending token */
    const float *h = g->h_last;
    for (int k = 0; k < n; k++) {
        /* Row k sits at position L−1+k; rows k ≥ 1 are speculative and rolled back in commit. */
        memcpy(g->mtp_h, h, (size_t)D * sizeof(float));
        if (run_mtp(g, &token, g->mtp_h, 1, g->mtp_logits, 1, g->normed, err)) return -1;
        float *q = g->q_probs + (size_t)k * stride;
        if (g->sampler->temperature == 0.0f || g->spec_exact) { /* no draw: the sampler's stream is plain decoding's */
            g->drafts[k] = sampler_argmax(g->mtp_logits, V);
        } else {
            sampler_probs(g->sampler, g->mtp_logits, V, q, g->cands);
            g->drafts[k] = sampler_draw(g->sampler, q, V);
        }
        token = g->drafts[k];
        memcpy(g->mtp_h + D, g->normed, (size_t)D * sizeof(float)); /* shared_head.norm output → next h */
        h = g->mtp_h + D;
    }
    return 0;
}

/** Speculative step: draft, verify in one main chunk, accept/resample, commit. */
static int next_speculative(Generator *g, int *out, int *n_out, Err *err) {
    const Config *c = &g->m->config;
    int V = g->n_sample, stride = c->vocab_size;
    int64_t D = c->hidden_size, L = g->kv.len;
    /* Drafts that still fit the context: the chunk [pending, d_1..d_n] needs n+1 positions. */
    int n = g->draft;
    if (n > g->ctx - L - 1) n = (int)(g->ctx - L - 1);
    if (n <= 0) { /* the context has room for the pending token only */
        *n_out = 1;
        return next_plain(g, out, err);
    }
    int64_t mtp_len0 = g->mtp_kv.len; /* = L: rows 0..L−1 once row L−1 is drafted */
    if (draft_tokens(g, n, err)) return -1;
    /* Verify: main model over [pending, d_1..d_n] at positions L..L+n. */
    memcpy(g->tokens + g->n_tokens, g->drafts, (size_t)n * sizeof(int));
    if (run_main(g, g->tokens + L, n + 1, n + 1, err)) return -1;
    g->pending = 0;
    int a = 0, next = -1;
    for (; a < n; a++) {
        float *logits = g->logits + (size_t)a * stride;
        int d = g->drafts[a];
        if (g->hook) g->hook(g->hook_ctx, g->tokens, L + 1 + a, logits, V);
        if (g->sampler->temperature == 0.0f || g->spec_exact) {
            /* the token plain decoding would produce here (its draw, in its order) decides */
            int target = g->sampler->temperature == 0.0f ? sampler_argmax(logits, V)
                                                          : sampler_sample(g->sampler, logits, V, g->p_probs, g->cands);
            if (target == d) continue;
            next = target;
            break;
        }
        const float *q = g->q_probs + (size_t)a * stride;
        sampler_probs(g->sampler, logits, V, g->p_probs, g->cands);
        float ratio = g->p_probs[d] / q[d]; /* q[d] > 0: d was drawn from q */
        if (rng_uniform_double(&g->sampler->rng) < (double)ratio) continue;
        /* Rejected: draw from the normalized residual max(0, p − q). */
        double mass = 0.0;
        for (int i = 0; i < V; i++) {
            float r = g->p_probs[i] - q[i];
            g->p_probs[i] = r > 0.0f ? r : 0.0f;
            mass += g->p_probs[i];
        }
        for (int i = 0; i < V; i++) g->p_probs[i] = (float)(g->p_probs[i] / mass);
        next = sampler_draw(g->sampler, g->p_probs, V);
        break;
    }
    if (next < 0) { /* bonus */
        if (g->hook) g->hook(g->hook_ctx, g->tokens, L + 1 + n, g->logits + (size_t)n * stride, V);
        next = sampler_sample(g->sampler, g->logits + (size_t)n * stride, V, g->p_probs, g->cands);
    }
    /* Commit: pending + a accepted drafts are in the cache; the new token becomes pending. */
    g->kv.len = L + 1 + a;
    g->n_tokens = L + 1 + a;
    g->tokens[g->n_tokens++] = next;
    g->pending = 1;
    g->have_logits = 0;
    /* MTP: drop the speculative rows, then recompute rows L .. L+a−1 from the true hiddens. */
    g->mtp_kv.len = mtp_len0 + 1;
    if (mtp_catch_up(g, L, g->normed, err)) return -1;
    memcpy(g->h_last, g->normed + (int64_t)a * D, (size_t)D * sizeof(float));
    for (int i = 0; i < a; i++) out[i] = g->drafts[i];
    out[a] = next;
    *n_out = a + 1;
    g->last_pos = L;
    g->stats.steps++;
    g->stats.drafted += n;
    g->stats.accepted += a;
    return 0;
}

void gen_set_spec_exact(Generator *g, int on) { g->spec_exact = on; }

int gen_next(Generator *g, int *out, int *n_out, Err *err) {
    if (!g->pending && !g->have_logits) return err_set(err, "nothing to continue from: feed a prompt first");
    if (g->pending && gen_room(g) < 1)
        return err_set(err, "context full (%lld positions)", (long long)g->ctx);
    if (g->draft > 0 && g->pending && g->mtp_kv.len != g->kv.len - 1)
        return err_set(err, "gen_next after gen_rewind: feed at least one token first");
    double t0 = now_seconds();
    int rc;
    *n_out = 1;
    if (g->draft > 0 && g->pending) rc = next_speculative(g, out, n_out, err);
    else rc = next_plain(g, out, err);
    if (rc == 0) g->stats.generated += *n_out;
    g->last_out = rc == 0 ? *n_out : 0;
    g->stats.decode_seconds += now_seconds() - t0;
    return rc;
}
