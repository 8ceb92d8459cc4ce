/**
 * @file sched.c
 * @brief The server's scheduler (see sched.h): a queue of requests, slots, prefix reuse, steps.
 *
 * A slot that finishes a request keeps its tokens and its cache, so the next request whose
 * prompt starts with them (a chat resending its history) skips that prefix. Generator slots
 * hold them in their Generator (tokens, kv.len); GPU-batch slots in tokens/len, the engine's
 * sequence of the same index forgetting what lies past a chunk's pos0.
 */
#include "sched.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generate.h"
#include "sampler.h"

/** A queued or running request. */
typedef struct Req {
    uint64_t id;
    int *prompt;        /* [n_prompt] owned */
    int64_t n_prompt;
    SchedParams p;      /* p.logits.bias points to bias */
    LogitBias *bias;    /* owned copy */
    SchedSink sink;
    int cancelled;      /* set under the lock */
    struct Req *next;   /* the queue, or the list of running requests */
} Req;

typedef struct {
    Req *req;           /* NULL: free */
    uint64_t last_used; /* step of the last admission, for least-recently-used */
    Sampler sampler;    /* the request's */
    int64_t fed;        /* prompt tokens in the sequence (cached + prefilled) */
    int64_t cached;     /* of them, reused from the previous request */
    int64_t generated;  /* delivered */
    int *work;          /* [ctx + 1] penalty scratch */
    float *lp_rows;     /* [draft + 1][n_sample] rows before min-p, for log-probabilities */
    int64_t *lp_pos;    /* [draft + 1] the position each row's token takes */
    int lp_n;           /* rows captured in this step */
    int lp_cap;         /* draft + 1 */
    const struct Sched *s;
    /* Generator slots */
    Generator g;
    int have_g;
    /* GPU-batch slots */
    int *tokens;        /* [ctx + 1] */
    int64_t n_tokens;   /* committed */
    int64_t len;        /* in the engine's cache */
} Slot;

struct Sched {
    const Model *m;
    GpuEngine *gpu;
    SchedOptions o;
    int batch;            /* 1: one gpu_engine_forward_seqs per step */
    Slot *slots;
    GpuChunk *chunks;     /* [n_slots] GPU batch */
    int *chunk_slot;      /* [n_slots] */
    float *logits;        /* [n_slots][V] GPU batch */
    float *probs;         /* [V] */
    SamplerCand *cands;   /* [V] */
    uint64_t steps_done;
    pthread_mutex_t mu;   /* guards everything below */
    pthread_cond_t cv;
    Req *queue, *queue_tail;
    int n_queued;
    Req *running;         /* requests in slots (for sched_cancel) */
    uint64_t next_id;
    int woken;
    SchedStats st;
};

static void req_free(Req *r) {
    if (!r) return;
    free(r->prompt);
    free(r->bias);
    free(r);
}

/* ---- logits of one slot: penalties, capture for log-probabilities, min-p ------------------ */

static void slot_process(void *ctx, const int *tokens, int64_t n_tokens, float *logits, int n) {
    Slot *sl = ctx;
    const SchedParams *p = &sl->req->p;
    logits_penalize(&p->logits, tokens, n_tokens, logits, n, sl->work);
    if (p->top_logprobs >= 0 && sl->lp_n < sl->lp_cap) {
        memcpy(sl->lp_rows + (size_t)sl->lp_n * (size_t)n, logits, (size_t)n * sizeof *logits);
        sl->lp_pos[sl->lp_n++] = n_tokens;
    }
    logits_min_p(p->logits.min_p, logits, n);
}

/* ---- finishing --------------------------------------------------------------------------- */

static void unlink_running(struct Sched *s, Req *r) {
    for (Req **pp = &s->running; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            return;
        }
}

/** Ends the slot's request (the slot keeps its tokens for prefix reuse). */
static void finish(struct Sched *s, Slot *sl, SchedFinish why, const char *error) {
    Req *r = sl->req;
    SchedResult res = { why, r->n_prompt, sl->cached, sl->generated, error };
    pthread_mutex_lock(&s->mu);
    unlink_running(s, r);
    s->st.busy--;
    pthread_mutex_unlock(&s->mu);
    sl->req = NULL;
    r->sink.on_done(r->sink.user, &res);
    req_free(r);
}

/** 1 when @p token ends request @p r: the EOS, or one of its stop ids. */
static int ends(const struct Sched *s, const Req *r, int token) {
    if (token == s->o.eos) return 1;
    for (int i = 0; i < r->p.n_stop_ids; i++)
        if (token == r->p.stop_ids[i]) return 1;
    return 0;
}

/**
 * Delivers out[0..k) (at positions pos0..) to the slot's request, ending it at EOS or a stop id, at a stop
 * its sink asks for or at max_new. Returns how many of them count (the rest never happened).
 */
static int deliver(struct Sched *s, Slot *sl, const int *out, int k, int64_t pos0) {
    Req *r = sl->req;
    for (int i = 0; i < k; i++) {
        if (ends(s, r, out[i])) {
            finish(s, sl, SCHED_STOP, NULL);
            return i + 1;
        }
        SchedToken t = { out[i], 0.0f, 0, { { 0, 0 } } };
        if (r->p.top_logprobs >= 0)
            for (int j = 0; j < sl->lp_n; j++)
                if (sl->lp_pos[j] == pos0 + i) {
                    t.n_top = r->p.top_logprobs;
                    t.logprob = logprobs_top(sl->lp_rows + (size_t)j * (size_t)s->o.n_sample, s->o.n_sample, out[i],
                                             t.n_top, t.top);
                    if (t.n_top > s->o.n_sample) t.n_top = s->o.n_sample;
                }
        int stop = r->sink.on_token(r->sink.user, &t);
        sl->generated++;
        pthread_mutex_lock(&s->mu);
        s->st.generated++;
        pthread_mutex_unlock(&s->mu);
        if (stop || sl->generated >= r->p.max_new) {
            finish(s, sl, stop ? SCHED_STOP : SCHED_LENGTH, NULL);
            return i + 1;
        }
    }
    return k;
}

/* ---- open / close ------------------------------------------------------------------------- */

int sched_open(Sched **out, const Model *m, GpuEngine *gpu, const SchedOptions *o, Err *err) {
    *out = NULL;
    const Config *c = &m->config;
    if (o->n_slots < 1 || o->n_slots > 4096) return err_set(err, "sched: %d slots (1..4096)", o->n_slots);
    if (o->ctx < 2) return err_set(err, "sched: a context of %lld positions", (long long)o->ctx);
    if (o->max_T < 1) return err_set(err, "sched: %lld tokens per step", (long long)o->max_T);
    if (o->n_sample < 1 || o->n_sample > c->vocab_size) return err_set(err, "sched: n_sample %d", o->n_sample);
    if (o->max_queue < 0) return err_set(err, "sched: max_queue %d", o->max_queue);
    int batch = gpu && o->n_slots > 1;
    if (batch && o->draft > 0)
        return err_set(err, "MTP speculation on the GPU drafts for one sequence: use one slot (-np 1) or no --spec");
    if (batch && o->max_T < o->n_slots)
        return err_set(err, "sched: %lld tokens per step for %d slots (-b must be ≥ -np)", (long long)o->max_T, o->n_slots);
    Sched *s = xcalloc(1, sizeof *s);
    if (!s) return err_set(err, "out of memory");
    s->m = m, s->gpu = gpu, s->o = *o, s->batch = batch, s->next_id = 1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    size_t n = (size_t)o->n_slots, V = (size_t)c->vocab_size;
    int cap = o->draft + 1;
    s->slots = xcalloc(n, sizeof *s->slots);
    s->probs = xcalloc(V, sizeof *s->probs);
    s->cands = xcalloc(V, sizeof *s->cands);
    if (batch) {
        s->chunks = xcalloc(n, sizeof *s->chunks);
        s->chunk_slot = xcalloc(n, sizeof *s->chunk_slot);
        s->logits = xcalloc(n * V, sizeof *s->logits);
    }
    int rc = (!s->slots || !s->probs || !s->cands || (batch && (!s->chunks || !s->chunk_slot || !s->logits)))
                 ? err_set(err, "out of memory")
                 : 0;
    for (int i = 0; rc == 0 && i < o->n_slots; i++) {
        Slot *sl = &s->slots[i];
        sl->s = s;
        sl->lp_cap = cap;
        sl->work = xcalloc((size_t)o->ctx + 1, sizeof *sl->work);
        sl->lp_rows = xcalloc((size_t)cap * (size_t)o->n_sample, sizeof *sl->lp_rows);
        sl->lp_pos = xcalloc((size_t)cap, sizeof *sl->lp_pos);
        if (!sl->work || !sl->lp_rows || !sl->lp_pos) rc = err_set(err, "out of memory");
        else if (batch) {
            if (!(sl->tokens = xcalloc((size_t)o->ctx + 1, sizeof *sl->tokens))) rc = err_set(err, "out of memory");
        } else if (gen_init(&sl->g, m, &sl->sampler, o->ctx, o->draft, o->max_T, o->attn, o->fp8, err) == 0) {
            sl->have_g = 1;
            gen_set_moe_hook(&sl->g, o->moe_hook);
            gen_set_spec_exact(&sl->g, 1); /* a request's text does not depend on --spec */
            gen_limit_vocab(&sl->g, o->n_sample);
            gen_set_logits_hook(&sl->g, slot_process, sl);
            if (gpu) rc = gen_use_gpu(&sl->g, gpu, err);
        } else
            rc = -1;
    }
    s->st.slots = o->n_slots;
    s->st.kv_total = (int64_t)o->n_slots * o->ctx;
    if (rc) {
        sched_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

void sched_close(Sched *s) {
    if (!s) return;
    for (int i = 0; s->slots && i < s->o.n_slots; i++) {
        Slot *sl = &s->slots[i];
        if (sl->req) finish(s, sl, SCHED_CANCELLED, NULL);
        if (sl->have_g) gen_free(&sl->g);
        free(sl->work), free(sl->lp_rows), free(sl->lp_pos), free(sl->tokens);
    }
    for (Req *r = s->queue, *nx; r; r = nx) {
        nx = r->next;
        SchedResult res = { SCHED_CANCELLED, r->n_prompt, 0, 0, NULL };
        r->sink.on_done(r->sink.user, &res);
        req_free(r);
    }
    free(s->slots), free(s->chunks), free(s->chunk_slot), free(s->logits), free(s->probs), free(s->cands);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

/* ---- the thread-safe side ---------------------------------------------------------------- */

int sched_submit(Sched *s, const int *prompt, int64_t n, const SchedParams *p, const SchedSink *sink, uint64_t *id,
                 Err *err) {
    if (n < 1) return err_set(err, "the prompt has no tokens");
    if (p->max_new < 1) return err_set(err, "max_new must be ≥ 1, got %lld", (long long)p->max_new);
    if (n > s->o.ctx - p->max_new)
        return err_set(err, "%lld prompt tokens + %lld to generate exceed the context of %lld", (long long)n,
                       (long long)p->max_new, (long long)s->o.ctx);
    for (int64_t i = 0; i < n; i++)
        if (prompt[i] < 0 || prompt[i] >= s->o.n_sample)
            return err_set(err, "prompt token %lld: id %d outside [0, %d)", (long long)i, prompt[i], s->o.n_sample);
    Sampler check;
    if (sampler_init(&check, p->temperature, p->top_k, p->top_p, p->seed, err)) return -1;
    if (logits_params_check(&p->logits, s->o.n_sample, err)) return -1;
    if (p->top_logprobs > LOGPROBS_MAX_TOP) return err_set(err, "top_logprobs must be ≤ %d", LOGPROBS_MAX_TOP);
    if (p->n_stop_ids < 0 || p->n_stop_ids > SCHED_MAX_STOP_IDS)
        return err_set(err, "n_stop_ids must be in [0, %d], got %d", SCHED_MAX_STOP_IDS, p->n_stop_ids);
    Req *r = xcalloc(1, sizeof *r);
    if (!r || !(r->prompt = xcalloc((size_t)n, sizeof *r->prompt)) ||
        (p->logits.n_bias > 0 && !(r->bias = xcalloc((size_t)p->logits.n_bias, sizeof *r->bias)))) {
        req_free(r);
        return err_set(err, "out of memory");
    }
    memcpy(r->prompt, prompt, (size_t)n * sizeof *prompt);
    r->n_prompt = n;
    r->p = *p;
    if (p->logits.n_bias > 0) memcpy(r->bias, p->logits.bias, (size_t)p->logits.n_bias * sizeof *r->bias);
    r->p.logits.bias = r->bias;
    r->sink = *sink;
    pthread_mutex_lock(&s->mu);
    if (s->n_queued >= s->o.max_queue && s->st.busy + s->n_queued >= s->o.n_slots) {
        pthread_mutex_unlock(&s->mu);
        req_free(r);
        return SCHED_FULL;
    }
    r->id = s->next_id++;
    if (s->queue_tail) s->queue_tail->next = r;
    else s->queue = r;
    s->queue_tail = r;
    s->n_queued++;
    s->st.queued = s->n_queued;
    *id = r->id;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void sched_cancel(Sched *s, uint64_t id) {
    pthread_mutex_lock(&s->mu);
    for (Req *r = s->queue; r; r = r->next)
        if (r->id == id) r->cancelled = 1;
    for (Req *r = s->running; r; r = r->next)
        if (r->id == id) r->cancelled = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void sched_cancel_all(Sched *s) {
    pthread_mutex_lock(&s->mu);
    for (Req *r = s->queue; r; r = r->next) r->cancelled = 1;
    for (Req *r = s->running; r; r = r->next) r->cancelled = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void sched_stats(Sched *s, SchedStats *st) {
    pthread_mutex_lock(&s->mu);
    *st = s->st;
    pthread_mutex_unlock(&s->mu);
}

int sched_wait(Sched *s, double timeout_s) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double end = (double)ts.tv_sec + ts.tv_nsec * 1e-9 + timeout_s;
    ts.tv_sec = (time_t)end;
    ts.tv_nsec = (long)((end - (double)ts.tv_sec) * 1e9);
    pthread_mutex_lock(&s->mu);
    while (!s->woken && !s->queue && s->st.busy == 0)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &ts)) break;
    s->woken = 0;
    int work = s->queue != NULL || s->st.busy > 0;
    pthread_mutex_unlock(&s->mu);
    return work;
}

void sched_wake(Sched *s) {
    pthread_mutex_lock(&s->mu);
    s->woken = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* ---- admission ----------------------------------------------------------------------------- */

/** The slot's cached tokens (those in its cache). */
static const int *slot_cached(const Slot *sl, int64_t *n) {
    if (sl->have_g) {
        *n = sl->g.kv.len;
        return sl->g.tokens;
    }
    *n = sl->len;
    return sl->tokens;
}

/** Puts @p r into slot @p sl, keeping the longest prefix of its cache that the prompt shares. */
static int admit(struct Sched *s, Slot *sl, Req *r, Err *err) {
    int64_t n_cached, common = 0;
    const int *cached = slot_cached(sl, &n_cached);
    while (common < n_cached && common < r->n_prompt - 1 && cached[common] == r->prompt[common]) common++;
    if (sampler_init(&sl->sampler, r->p.temperature, r->p.top_k, r->p.top_p, r->p.seed, err)) return -1;
    if (sl->have_g) {
        if (gen_rewind(&sl->g, common, err)) return -1;
        sl->cached = sl->g.kv.len;
        sl->fed = common;
    } else {
        memcpy(sl->tokens, r->prompt, (size_t)r->n_prompt * sizeof *r->prompt);
        sl->n_tokens = r->n_prompt;
        sl->len = common;
        sl->cached = common;
        sl->fed = r->n_prompt;
    }
    sl->req = r;
    sl->generated = 0;
    sl->last_used = s->steps_done;
    return 0;
}

/** The free slot sharing the longest prefix with @p r's prompt (least recently used on a tie); −1 if none. */
static int pick_slot(const struct Sched *s, const Req *r) {
    int best = -1;
    int64_t best_common = -1;
    for (int i = 0; i < s->o.n_slots; i++) {
        const Slot *sl = &s->slots[i];
        if (sl->req) continue;
        int64_t n_cached, common = 0;
        const int *cached = slot_cached(sl, &n_cached);
        while (common < n_cached && common < r->n_prompt && cached[common] == r->prompt[common]) common++;
        if (common > best_common || (common == best_common && sl->last_used < s->slots[best].last_used))
            best = i, best_common = common;
    }
    return best;
}

/** Steps 1 and 2 of sched_step: cancellations, then admissions. */
static void cancel_and_admit(struct Sched *s) {
    for (int i = 0; i < s->o.n_slots; i++) {
        Slot *sl = &s->slots[i];
        pthread_mutex_lock(&s->mu);
        int cancelled = sl->req && sl->req->cancelled;
        pthread_mutex_unlock(&s->mu);
        if (sl->req && !cancelled && sl->req->sink.alive && !sl->req->sink.alive(sl->req->sink.user)) cancelled = 1;
        if (cancelled) finish(s, sl, SCHED_CANCELLED, NULL);
    }
    for (;;) {
        pthread_mutex_lock(&s->mu);
        Req *r = s->queue;
        int slot = -1;
        if (r && !r->cancelled) slot = pick_slot(s, r);
        if (r && (r->cancelled || slot >= 0)) {
            s->queue = r->next;
            if (!s->queue) s->queue_tail = NULL;
            s->n_queued--;
            s->st.queued = s->n_queued;
            if (!r->cancelled) {
                r->next = s->running;
                s->running = r;
                s->st.busy++;
            }
        }
        pthread_mutex_unlock(&s->mu);
        if (!r || (!r->cancelled && slot < 0)) return;
        if (r->cancelled) {
            SchedResult res = { SCHED_CANCELLED, r->n_prompt, 0, 0, NULL };
            r->sink.on_done(r->sink.user, &res);
            req_free(r);
            continue;
        }
        Slot *sl = &s->slots[slot];
        Err err = { "" };
        sl->req = r;
        if (admit(s, sl, r, &err)) { /* cannot happen for a request sched_submit accepted */
            sl->cached = 0, sl->generated = 0;
            finish(s, sl, SCHED_ERROR, err.msg);
            continue;
        }
        pthread_mutex_lock(&s->mu);
        s->st.prompt_tokens += r->n_prompt;
        s->st.cached_tokens += sl->cached;
        pthread_mutex_unlock(&s->mu);
    }
}

/* ---- steps ----------------------------------------------------------------------------------- */

/** A Generator slot's failure ends its request and empties its cache. */
static void slot_fail(struct Sched *s, Slot *sl, const Err *err) {
    finish(s, sl, SCHED_ERROR, err->msg);
    Err ignore;
    gen_rewind(&sl->g, 0, &ignore);
}

/** Generator slots: decoding requests one gen_next each, then prompt chunks within the budget. */
static int step_generators(struct Sched *s, Err *err) {
    int64_t budget = s->o.max_T;
    int out[17], failed = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < s->o.n_slots; i++) {
            Slot *sl = &s->slots[i];
            Generator *g = &sl->g;
            if (!sl->req) continue;
            int decoding = sl->fed == sl->req->n_prompt;
            if (decoding != (pass == 0)) continue;
            Err e = { "" };
            if (!decoding) {
                if (budget <= 0) continue;
                int64_t k = sl->req->n_prompt - sl->fed;
                if (k > budget) k = budget;
                if (gen_feed(g, sl->req->prompt + sl->fed, k, &e)) {
                    slot_fail(s, sl, &e), failed = 1, *err = e;
                    continue;
                }
                sl->fed += k;
                budget -= k;
                if (sl->fed < sl->req->n_prompt) continue;
            }
            int64_t pos0 = g->n_tokens;
            int k = 0;
            sl->lp_n = 0;
            if (gen_next(g, out, &k, &e)) {
                slot_fail(s, sl, &e), failed = 1, *err = e;
                continue;
            }
            if (decoding) budget -= k;
            int keep = deliver(s, sl, out, k, pos0);
            if (keep < k && gen_keep(g, keep, &e)) {
                gen_rewind(g, 0, &e);
                failed = 1, *err = e;
            }
        }
    return failed ? -1 : 0;
}

/** GPU-batch slots: one engine forward over every slot's chunk, then one token for each slot done reading. */
static int step_batch(struct Sched *s, Err *err) {
    int64_t budget = s->o.max_T;
    int nc = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < s->o.n_slots && budget > 0; i++) {
            Slot *sl = &s->slots[i];
            int64_t need = sl->n_tokens - sl->len;
            if (!sl->req || (pass == 0) != (need == 1)) continue;
            int64_t k = need < budget ? need : budget;
            s->chunks[nc] = (GpuChunk){ i, sl->len, (int)k, sl->tokens + sl->len };
            s->chunk_slot[nc++] = i;
            budget -= k;
        }
    if (nc == 0) return 0;
    if (gpu_engine_forward_seqs(s->gpu, s->chunks, nc, s->logits, err)) {
        for (int i = 0; i < nc; i++) {
            Slot *sl = &s->slots[s->chunk_slot[i]];
            sl->len = sl->n_tokens = 0;
            finish(s, sl, SCHED_ERROR, err->msg);
        }
        return -1;
    }
    size_t V = (size_t)s->m->config.vocab_size;
    for (int i = 0; i < nc; i++) {
        Slot *sl = &s->slots[s->chunk_slot[i]];
        sl->len += s->chunks[i].n;
        if (sl->len < sl->n_tokens) continue; /* a prompt piece: more to come */
        float *row = s->logits + (size_t)i * V;
        sl->lp_n = 0;
        slot_process(sl, sl->tokens, sl->n_tokens, row, s->o.n_sample);
        int t = sampler_sample(&sl->sampler, row, s->o.n_sample, s->probs, s->cands);
        int64_t pos = sl->n_tokens;
        sl->tokens[sl->n_tokens++] = t;
        deliver(s, sl, &t, 1, pos);
    }
    return 0;
}

int sched_step(Sched *s, Err *err) {
    cancel_and_admit(s);
    int any = 0;
    for (int i = 0; i < s->o.n_slots; i++) any |= s->slots[i].req != NULL;
    int rc = 0;
    if (any) {
        double t0 = now_seconds();
        rc = s->batch ? step_batch(s, err) : step_generators(s, err);
        s->steps_done++;
        int64_t kv = 0, drafted = 0, accepted = 0;
        for (int i = 0; i < s->o.n_slots; i++) {
            const Slot *sl = &s->slots[i];
            kv += sl->have_g ? sl->g.kv.len : sl->len;
            if (sl->have_g) drafted += sl->g.stats.drafted, accepted += sl->g.stats.accepted;
        }
        pthread_mutex_lock(&s->mu);
        s->st.steps++;
        s->st.kv_used = kv;
        s->st.drafted = drafted;
        s->st.accepted = accepted;
        s->st.busy_seconds += now_seconds() - t0;
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_lock(&s->mu);
    int left = s->n_queued + s->st.busy;
    pthread_mutex_unlock(&s->mu);
    return rc ? -1 : left;
}
