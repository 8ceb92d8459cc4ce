/**
 * @file batch.c
 * @brief Continuous batching over the reference or the GPU engine (see batch.h).
 *
 * A slot holds one sequence like ref/generate/generate.c's Generator holds its one: every committed
 * token except the last sampled one ("pending") is in the cache. A step runs, for each open
 * slot, what is not yet in its cache — the pending token of a decoding sequence, or the next
 * piece of a prompt — and samples a token for each slot whose cache then holds everything.
 */
#include "batch.h"

#include <stdlib.h>
#include <string.h>

#include "ep/ep.h"

/** One open sequence. */
typedef struct {
    int req;            /* request index; −1: free */
    int *tokens;        /* [ctx] prompt, then generated tokens */
    int64_t n_tokens;   /* committed */
    int64_t len;        /* positions in the cache */
    int64_t generated;  /* sampled so far */
    Sampler sampler;    /* seeded from the request */
    KVCache kv;         /* reference: its own cache */
} Slot;

typedef struct {
    const Model *m;
    GpuEngine *gpu;
    const BatchOptions *o;
    Slot *slots;
    RunState rs;        /* reference: activations, shared by the slots one chunk at a time */
    GpuChunk *chunks;   /* [max_seqs] this step's work */
    int *chunk_slot;    /* [max_seqs] the slot of each chunk */
    float *logits;      /* [max_seqs][V] the last token of each chunk */
    float *probs;       /* [V] */
    SamplerCand *cands; /* [V] */
} Batch;

static void batch_free(Batch *b) {
    for (int s = 0; b->slots && s < b->o->max_seqs; s++) {
        free(b->slots[s].tokens);
        kvcache_free(&b->slots[s].kv);
    }
    free(b->slots), free(b->chunks), free(b->chunk_slot), free(b->logits), free(b->probs), free(b->cands);
    runstate_free(&b->rs);
}

static int batch_init(Batch *b, const Model *m, GpuEngine *gpu, const BatchOptions *o, Err *err) {
    const Config *c = &m->config;
    memset(b, 0, sizeof *b);
    b->m = m, b->gpu = gpu, b->o = o;
    if (o->max_seqs < 1 || o->max_T < o->max_seqs || o->ctx < 2)
        return err_set(err, "batch: %d sequences, %lld tokens per step, context %lld", o->max_seqs, (long long)o->max_T,
                       (long long)o->ctx);
    size_t V = (size_t)c->vocab_size, n = (size_t)o->max_seqs;
    b->slots = xcalloc(n, sizeof *b->slots);
    b->chunks = xcalloc(n, sizeof *b->chunks);
    b->chunk_slot = xcalloc(n, sizeof *b->chunk_slot);
    b->logits = xcalloc(n * V, sizeof *b->logits);
    b->probs = xcalloc(V, sizeof *b->probs);
    b->cands = xcalloc(V, sizeof *b->cands);
    if (!b->slots || !b->chunks || !b->chunk_slot || !b->logits || !b->probs || !b->cands) return err_set(err, "out of memory");
    for (int s = 0; s < o->max_seqs; s++) {
        b->slots[s].req = -1;
        if (!(b->slots[s].tokens = xcalloc((size_t)o->ctx, sizeof(int)))) return err_set(err, "out of memory");
        if (!gpu && kvcache_init(&b->slots[s].kv, c, o->attn, c->num_hidden_layers, o->ctx, err)) return -1;
    }
    if (!gpu) {
        if (runstate_init(&b->rs, m, o->max_T, o->ctx, o->attn, o->fp8, err)) return -1;
        b->rs.ctx.moe_hook = o->moe_hook;
    }
    return 0;
}

/** Runs this step's chunks: one engine forward, or one model_forward per chunk. */
static int run_chunks(Batch *b, int n, Err *err) {
    if (b->gpu) return gpu_engine_forward_seqs(b->gpu, b->chunks, n, b->logits, err);
    size_t V = (size_t)b->m->config.vocab_size;
    for (int i = 0; i < n; i++) {
        Slot *sl = &b->slots[b->chunk_slot[i]];
        if (model_forward(b->m, &b->rs, &sl->kv, b->chunks[i].ids, b->chunks[i].n, b->logits + i * V, 1, NULL, NULL, err))
            return -1;
    }
    return 0;
}

int batch_generate(const Model *m, GpuEngine *gpu, const BatchOptions *o, const BatchRequest *reqs, int n,
                   BatchDone done, void *done_ctx, BatchStats *st, Err *err) {
    memset(st, 0, sizeof *st);
    for (int i = 0; i < n; i++) {
        if (reqs[i].n_prompt < 1 || reqs[i].n_prompt >= o->ctx)
            return err_set(err, "prompt %d is %lld tokens; the context holds %lld (-c)", i, (long long)reqs[i].n_prompt,
                           (long long)o->ctx);
        for (int64_t t = 0; t < reqs[i].n_prompt; t++)
            if (reqs[i].prompt[t] < 0 || reqs[i].prompt[t] >= m->config.vocab_size)
                return err_set(err, "prompt %d: token id %d out of range", i, reqs[i].prompt[t]);
    }
    Batch b;
    if (batch_init(&b, m, gpu, o, err)) {
        batch_free(&b);
        return -1;
    }
    size_t V = (size_t)m->config.vocab_size;
    double t0 = now_seconds();
    int next = 0, open = 0, rc = 0;
    while (rc == 0 && (next < n || open > 0)) {
        /* Admit waiting requests into free slots (a request asking for no tokens is done at once). */
        for (int s = 0; s < o->max_seqs && next < n; s++) {
            Slot *sl = &b.slots[s];
            if (sl->req >= 0) continue;
            const BatchRequest *r = &reqs[next];
            if (r->max_new == 0) {
                rc = done(done_ctx, next++, NULL, 0, 0, err);
                if (rc) break;
                s--; /* the slot is still free */
                continue;
            }
            if ((rc = sampler_init(&sl->sampler, o->temperature, o->top_k, o->top_p, r->seed, err))) break;
            memcpy(sl->tokens, r->prompt, (size_t)r->n_prompt * sizeof(int));
            sl->req = next++, sl->n_tokens = r->n_prompt, sl->len = 0, sl->generated = 0, sl->kv.len = 0;
            open++;
            st->prompt_tokens += r->n_prompt;
        }
        if (rc || open == 0) continue;
        /* This step's chunks: pending tokens of decoding sequences first, then prompt pieces. */
        int64_t budget = o->max_T;
        int nc = 0;
        for (int pass = 0; pass < 2; pass++)
            for (int s = 0; s < o->max_seqs && budget > 0; s++) {
                Slot *sl = &b.slots[s];
                int64_t need = sl->n_tokens - sl->len;
                if (sl->req < 0 || (pass == 0) != (need == 1)) continue;
                int64_t k = need < budget ? need : budget;
                b.chunks[nc] = (GpuChunk){ s, sl->len, (int)k, sl->tokens + sl->len };
                b.chunk_slot[nc++] = s;
                budget -= k;
            }
        if ((rc = run_chunks(&b, nc, err))) break;
        st->steps++;
        if (open > st->max_open) st->max_open = open;
        /* Sample for every slot whose cache now holds all its tokens; finish those that are done. */
        for (int i = 0; i < nc && rc == 0; i++) {
            Slot *sl = &b.slots[b.chunk_slot[i]];
            const BatchRequest *r = &reqs[sl->req];
            sl->len += b.chunks[i].n;
            if (sl->len < sl->n_tokens) continue; /* a prompt piece: more to come */
            if (o->logits_hook) o->logits_hook(o->hook_ctx, sl->tokens, sl->n_tokens, b.logits + i * V, o->n_sample);
            int t = sampler_sample(&sl->sampler, b.logits + i * V, o->n_sample, b.probs, b.cands);
            int eos = t == o->eos, cut = 0;
            if (!eos) sl->tokens[sl->n_tokens++] = t, sl->generated++, st->generated++;
            if (!eos && o->on_token && (cut = o->on_token(o->token_ctx, sl->req, t, err)) < 0) {
                rc = -1;
                break;
            }
            if (eos || cut || sl->generated == r->max_new || sl->n_tokens >= o->ctx) {
                rc = done(done_ctx, sl->req, sl->tokens + r->n_prompt, sl->generated, eos, err);
                sl->req = -1;
                open--;
            }
        }
    }
    st->seconds = now_seconds() - t0;
    batch_free(&b);
    return rc;
}
