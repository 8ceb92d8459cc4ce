/**
 * @file ep.c
 * @brief Expert-parallel MoE (dispatch / local experts / combine) and the in-process CPU
 *        transport. See ep.h for the protocol; the arithmetic per token is moe_forward's.
 */
#include "ep.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "model/ffn.h"
#include "model/gate.h"

/* ------------------------------------------------------------------------------------- */
/* plan                                                                                    */

/** A plan's arrays for @p nranks ranks and @p n_experts experts, all zero. */
static int plan_alloc(EpPlan *p, int nranks, int n_experts, Err *err) {
    p->nranks = nranks;
    p->n_experts = n_experts;
    p->first = xcalloc((size_t)nranks + 1, sizeof *p->first);
    p->n_copies = xcalloc((size_t)n_experts, sizeof *p->n_copies);
    p->copies = xcalloc((size_t)n_experts * (size_t)nranks, sizeof *p->copies);
    if (!p->first || !p->n_copies || !p->copies) {
        ep_plan_free(p);
        return err_set(err, "out of memory");
    }
    return 0;
}

int ep_plan_init(EpPlan *p, int nranks, int n_experts, const int *redundant, int n_redundant, Err *err) {
    memset(p, 0, sizeof *p);
    if (nranks < 1 || nranks > 4096) return err_set(err, "expert parallelism: %d ranks (1..4096)", nranks);
    if (n_experts < nranks) return err_set(err, "expert parallelism: %d experts cannot be split over %d ranks", n_experts, nranks);
    if (plan_alloc(p, nranks, n_experts, err)) return -1;
    for (int r = 0; r <= nranks; r++) p->first[r] = (int)((int64_t)n_experts * r / nranks);
    for (int r = 0; r < nranks; r++)
        for (int e = p->first[r]; e < p->first[r + 1]; e++) p->copies[(size_t)e * nranks] = r, p->n_copies[e] = 1;
    for (int i = 0; i < n_redundant; i++) {
        int e = redundant[i];
        if (e < 0 || e >= n_experts) {
            ep_plan_free(p);
            return err_set(err, "redundant expert %d out of range [0, %d)", e, n_experts);
        }
        if (p->n_copies[e] >= nranks) continue; /* already on every rank */
        int next = (p->copies[(size_t)e * nranks + p->n_copies[e] - 1] + 1) % nranks;
        p->copies[(size_t)e * nranks + p->n_copies[e]++] = next;
    }
    return 0;
}

int ep_plan_init_placement(EpPlan *p, int nranks, int n_experts, const int *ranks, int width, Err *err) {
    memset(p, 0, sizeof *p);
    if (nranks < 1 || nranks > 4096 || n_experts < 1 || width < 1)
        return err_set(err, "expert parallelism: a placement of %d experts on %d ranks", n_experts, nranks);
    if (plan_alloc(p, nranks, n_experts, err)) return -1;
    for (int e = 0; e < n_experts; e++) {
        for (int k = 0; k < width && ranks[(size_t)e * width + k] >= 0; k++) {
            int r = ranks[(size_t)e * width + k];
            if (r >= nranks) {
                ep_plan_free(p);
                return err_set(err, "expert %d placed on rank %d of %d", e, r, nranks);
            }
            if (!ep_plan_holds(p, r, e)) p->copies[(size_t)e * nranks + p->n_copies[e]++] = r;
        }
        if (!p->n_copies[e]) {
            ep_plan_free(p);
            return err_set(err, "expert %d is placed on no rank", e);
        }
    }
    return 0;
}

void ep_plan_free(EpPlan *p) {
    free(p->first);
    free(p->n_copies);
    free(p->copies);
    memset(p, 0, sizeof *p);
}

int ep_plan_route(const EpPlan *p, int expert, int origin, int64_t token) {
    int n = p->n_copies[expert];
    return p->copies[(size_t)expert * p->nranks + (int)(((int64_t)origin + token) % n)];
}

int ep_plan_holds(const EpPlan *p, int r, int e) {
    for (int i = 0; i < p->n_copies[e]; i++)
        if (p->copies[(size_t)e * p->nranks + i] == r) return 1;
    return 0;
}

/* ------------------------------------------------------------------------------------- */
/* one rank                                                                                */

/** The MoeHook a ForwardContext calls for its MoE layers: ep_moe_forward on the rank that holds it. */
static int ep_hook_forward(MoeHook *hook, float *out, const float *x, int64_t T, const LayerWeights *w, MoEActs *a,
                           const ForwardContext *ctx, Err *err) {
    EpRank *r = (EpRank *)((char *)hook - offsetof(EpRank, hook));
    return ep_moe_forward(out, x, T, w, a, r, ctx, err);
}

int ep_rank_init(EpRank *r, int rank, EpTransport *t, const EpPlan *plan, Err *err) {
    memset(r, 0, sizeof *r);
    if (rank < 0 || rank >= t->nranks) return err_set(err, "rank %d outside [0, %d)", rank, t->nranks);
    r->rank = rank;
    r->t = t;
    r->plan = plan;
    r->hook.forward = ep_hook_forward;
    r->counts = xcalloc(4 * (size_t)t->nranks, sizeof *r->counts);
    r->msg = xcalloc(4 * (size_t)t->nranks, sizeof *r->msg);
    r->rows_n = xcalloc(3 * (size_t)t->nranks + 1, sizeof *r->rows_n);
    return r->counts && r->msg && r->rows_n ? 0 : err_set(err, "out of memory");
}

void ep_rank_free(EpRank *r) {
    free(r->send_rows), free(r->send_meta), free(r->send_slot), free(r->recv_rows), free(r->recv_meta);
    free(r->work_in), free(r->work_out), free(r->h_gate), free(r->h_up), free(r->h_act), free(r->y_slot);
    free(r->counts);
    free(r->msg);
    free(r->rows_n);
    memset(r, 0, sizeof *r);
}

/** The plan of decoder layer @p layer: its own (EPLB) or the rank's default. */
static const EpPlan *plan_of(const EpRank *r, int layer) {
    if (layer >= 0 && layer < r->n_layer_plans && r->layer_plans[layer].n_experts > 0) return &r->layer_plans[layer];
    return r->plan;
}

/** Grows buffer @p p to @p n elements; inside ensure(): returns an error when out of memory. */
#define GROW(p, n)                                                               \
    do {                                                                         \
        void *q_ = realloc((p), (n) * sizeof *(p));                              \
        if (!q_) return err_set(err, "out of memory growing the EP buffers");   \
        (p) = q_;                                                                \
    } while (0)

/** Grows every exchange buffer to hold @p rows rows (at least one, so no buffer is NULL). */
static int ensure(EpRank *r, size_t rows, int64_t D, int64_t Ie, Err *err) {
    if (rows <= r->cap_rows && r->cap_rows > 0) return 0;
    size_t cap = r->cap_rows ? r->cap_rows : 64;
    while (cap < rows) cap *= 2;
    GROW(r->send_rows, cap * (size_t)D);
    GROW(r->send_meta, cap);
    GROW(r->send_slot, cap);
    GROW(r->recv_rows, cap * (size_t)D);
    GROW(r->recv_meta, cap);
    GROW(r->work_in, cap * (size_t)D);
    GROW(r->work_out, cap * (size_t)D);
    GROW(r->h_gate, cap * (size_t)Ie);
    GROW(r->h_up, cap * (size_t)Ie);
    GROW(r->h_act, cap * (size_t)Ie);
    GROW(r->y_slot, cap * (size_t)D);
#undef GROW
    r->cap_rows = cap;
    return 0;
}

/** How a layer code reads in a message. */
static const char *layer_name(int64_t layer, char *buf, size_t n) {
    if (layer == EP_STOP) return "stop";
    if (layer == EP_PASSIVE) return "passive";
    snprintf(buf, n, "layer %lld", (long long)layer);
    return buf;
}

int ep_exchange_counts(EpRank *r, int layer, const size_t *send_rows, size_t *recv_rows, int *group_layer, Err *err) {
    int n = r->t->nranks;
    int64_t *out = r->msg, *in = r->msg + 2 * n;
    size_t *bytes = r->counts, *offs = r->counts + n;
    for (int d = 0; d < n; d++) {
        out[2 * d] = (int64_t)send_rows[d], out[2 * d + 1] = layer;
        bytes[d] = 2 * sizeof(int64_t), offs[d] = (size_t)d * 2 * sizeof(int64_t);
    }
    if (r->t->alltoallv(r->t, r->rank, out, bytes, offs, in, bytes, offs, err)) return -1;
    int agreed = -1; /* the first non-passive rank */
    for (int s = 0; s < n; s++) {
        recv_rows[s] = (size_t)in[2 * s];
        int64_t ls = in[2 * s + 1];
        if (in[2 * s] < 0 || in[2 * s] > (int64_t)1 << 30 || ls < EP_STOP || ls > 1 << 20) /* bounds keep sizes in range */
            return err_set(err, "expert parallelism: rank %d sent a malformed count (%lld rows, layer %lld)", s,
                           (long long)in[2 * s], (long long)ls);
        if (ls == EP_PASSIVE) continue;
        if (agreed < 0) agreed = s;
        else if (ls != in[2 * agreed + 1]) {
            char a[32], b[32];
            return err_set(err, "expert parallelism: ranks out of step: rank %d is at %s, rank %d at %s", agreed,
                           layer_name(in[2 * agreed + 1], a, sizeof a), s, layer_name(ls, b, sizeof b));
        }
    }
    if (agreed < 0) return err_set(err, "expert parallelism: every rank is passive (no rank runs the model)");
    *group_layer = (int)in[2 * agreed + 1];
    return 0;
}

int ep_exchange_rows(EpRank *r, const void *send, const size_t *send_n, void *recv, const size_t *recv_n,
                     size_t row_bytes, Err *err) {
    int n = r->t->nranks;
    size_t *sb = r->counts, *so = sb + n, *rb = so + n, *ro = rb + n, s_at = 0, r_at = 0;
    for (int d = 0; d < n; d++) {
        sb[d] = send_n[d] * row_bytes, so[d] = s_at, s_at += sb[d];
        rb[d] = recv_n[d] * row_bytes, ro[d] = r_at, r_at += rb[d];
    }
    r->dispatched_bytes += s_at;
    return r->t->alltoallv(r->t, r->rank, send, sb, so, recv, rb, ro, err);
}

/**
 * The part of a MoE layer every rank runs, tokens or not, once the counts are known (rows_n):
 * receives the dispatched rows and their expert ids, runs the local experts over them, and
 * returns the outputs the way they came; afterwards send_rows [n_sent][D] holds the outputs of
 * this rank's own rows in dispatch order.
 */
static int run_received(EpRank *r, const LayerWeights *w, size_t n_sent, const ForwardContext *ctx, Err *err) {
    const Config *c = ctx->cfg;
    int n = r->t->nranks;
    int64_t D = c->hidden_size, E = c->n_routed_experts, Ie = c->moe_intermediate_size;
    size_t *send_n = r->rows_n, *recv_n = r->rows_n + n, total = 0;
    for (int s = 0; s < n; s++) total += recv_n[s];
    if (ensure(r, total > n_sent ? total : n_sent, D, Ie, err)) return -1;
    if (ep_exchange_rows(r, r->send_rows, send_n, r->recv_rows, recv_n, (size_t)D * sizeof(float), err) ||
        ep_exchange_rows(r, r->send_meta, send_n, r->recv_meta, recv_n, sizeof(int), err))
        return -1;
    for (size_t j = 0; j < total; j++)
        if (r->recv_meta[j] < 0 || r->recv_meta[j] >= E)
            return err_set(err, "rank %d received a row for expert %d of %lld", r->rank, r->recv_meta[j], (long long)E);
    /* Local experts: gather each expert's rows, run its FFN, write the outputs back in place. */
    for (int64_t e = 0; e < E; e++) {
        size_t m = 0;
        for (size_t j = 0; j < total; j++)
            if (r->recv_meta[j] == e) memcpy(r->work_in + m++ * D, r->recv_rows + j * D, (size_t)D * sizeof(float));
        if (m == 0) continue;
        if (!ep_plan_holds(plan_of(r, w->index), r->rank, (int)e)) return err_set(err, "rank %d received rows for expert %lld it does not hold", r->rank, (long long)e);
        FFNActs acts = { r->h_gate, r->h_up, r->h_act };
        for (size_t j0 = 0; j0 < m; j0 += (size_t)ctx->lin.max_T) { /* the scratch holds max_T rows */
            int64_t rows = (int64_t)(m - j0 < (size_t)ctx->lin.max_T ? m - j0 : (size_t)ctx->lin.max_T);
            ffn_forward(r->work_out + j0 * D, r->work_in + j0 * D, rows, &w->experts[e], &acts, ctx->fp8, &ctx->lin);
        }
        m = 0;
        for (size_t j = 0; j < total; j++)
            if (r->recv_meta[j] == e) memcpy(r->recv_rows + j * D, r->work_out + m++ * D, (size_t)D * sizeof(float));
    }
    /* Combine: outputs return in the order the rows came. */
    return ep_exchange_rows(r, r->recv_rows, recv_n, r->send_rows, send_n, (size_t)D * sizeof(float), err);
}

int ep_moe_forward(float *out, const float *x, int64_t T, const LayerWeights *w, MoEActs *a, EpRank *r,
                   const ForwardContext *ctx, Err *err) {
    const Config *c = ctx->cfg;
    const EpPlan *p = plan_of(r, w->index);
    int n = r->t->nranks;
    int64_t D = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok, Ie = c->moe_intermediate_size;
    if (p->n_experts != E || p->nranks != n) return err_set(err, "EP plan does not match the model or the transport");
    /* 1. Gate, exactly as moe_forward. */
    linear_forward(a->logits, x, T, &w->gate, FP8_DEQUANT, &ctx->lin);
    for (int64_t t = 0; t < T; t++)
        gate_forward(a->idx + t * K, a->weights + t * K, a->scores + t * E, a->logits + t * E,
                     w->e_score_correction_bias, c, ctx->gate_work);
    /* 2. Dispatch lists, grouped by destination rank (slots ascending within a destination). */
    if (ensure(r, (size_t)(T * K), D, Ie, err)) return -1;
    size_t *send_n = r->rows_n, *recv_n = r->rows_n + n, *start = r->rows_n + 2 * n;
    memset(send_n, 0, (size_t)n * sizeof *send_n);
    for (int64_t s = 0; s < T * K; s++) send_n[ep_plan_route(p, a->idx[s], r->rank, s / K)]++;
    start[0] = 0;
    for (int d = 0; d < n; d++) start[d + 1] = start[d] + send_n[d];
    for (int64_t s = 0; s < T * K; s++) {
        size_t j = start[ep_plan_route(p, a->idx[s], r->rank, s / K)]++;
        memcpy(r->send_rows + j * D, x + (s / K) * D, (size_t)D * sizeof(float));
        r->send_meta[j] = a->idx[s];
        r->send_slot[j] = s;
    }
    /* 3. Counts first (with this layer's index), then the rows, experts and the combine. */
    int group_layer;
    if (ep_exchange_counts(r, w->index, send_n, recv_n, &group_layer, err) ||
        run_received(r, w, (size_t)(T * K), ctx, err))
        return -1;
    for (size_t j = 0; j < (size_t)(T * K); j++)
        memcpy(r->y_slot + r->send_slot[j] * D, r->send_rows + j * D, (size_t)D * sizeof(float));
    /* 6. out[t] = Σ_k w·y in ascending expert order (moe_forward's order), then the shared expert. */
    memset(out, 0, (size_t)(T * D) * sizeof *out);
    for (int64_t t = 0; t < T; t++) {
        int order[64];
        for (int k = 0; k < K; k++) {
            int at = k;
            while (at > 0 && a->idx[t * K + order[at - 1]] > a->idx[t * K + k]) order[at] = order[at - 1], at--;
            order[at] = k;
        }
        for (int i = 0; i < K; i++) {
            int64_t s = t * K + order[i];
            float wgt = a->weights[s];
            const float *y = r->y_slot + s * D;
            for (int64_t d = 0; d < D; d++) out[t * D + d] += wgt * y[d];
        }
    }
    if (c->n_shared_experts > 0) {
        ffn_forward(a->y_shared, x, T, &w->shared_experts, &a->shared, ctx->fp8, &ctx->lin);
        for (int64_t i = 0; i < T * D; i++) out[i] += a->y_shared[i];
    }
    return 0;
}

int ep_model_splits(const Config *c, int nranks, Err *err) {
    if (c->n_routed_experts < 1 || c->first_k_dense_replace >= c->num_hidden_layers)
        return err_set(err, "expert parallelism: this model has no MoE layers to split over %d processes", nranks);
    if (c->n_routed_experts < nranks)
        return err_set(err, "expert parallelism: this model has fewer routed experts (%d) than processes (%d)", c->n_routed_experts,
                       nranks);
    return 0;
}

const LayerWeights *ep_moe_layer(const Weights *w, int layer, Err *err) {
    const LayerWeights *lw = layer >= 0 && layer < w->n_layers              ? &w->layers[layer]
                             : layer >= w->n_layers && layer < w->n_layers + w->n_mtp ? &w->mtp[layer - w->n_layers].block
                                                                                       : NULL;
    if (!lw) err_set(err, "expert parallelism: layer %d is not in this model (%d layers, %d MTP)", layer, w->n_layers, w->n_mtp);
    else if (!lw->is_moe) err_set(err, "expert parallelism: layer %d is dense, not MoE", layer), lw = NULL;
    return lw;
}

int ep_serve(EpRank *r, const Weights *w, const ForwardContext *ctx, Err *err) {
    const Config *c = ctx->cfg;
    int n = r->t->nranks;
    if (r->plan->n_experts != c->n_routed_experts || r->plan->nranks != n)
        return err_set(err, "EP plan does not match the model or the transport");
    size_t *send_n = r->rows_n, *recv_n = r->rows_n + n;
    for (;;) {
        int layer;
        memset(send_n, 0, (size_t)n * sizeof *send_n);
        if (ep_exchange_counts(r, EP_PASSIVE, send_n, recv_n, &layer, err)) return -1;
        if (layer == EP_STOP) return 0;
        const LayerWeights *lw = ep_moe_layer(w, layer, err);
        if (!lw || run_received(r, lw, 0, ctx, err)) return -1;
    }
}

int ep_stop(EpRank *r, Err *err) {
    int n = r->t->nranks, layer;
    size_t *send_n = r->rows_n, *recv_n = r->rows_n + n;
    memset(send_n, 0, (size_t)n * sizeof *send_n);
    return ep_exchange_counts(r, EP_STOP, send_n, recv_n, &layer, err);
}

/* ------------------------------------------------------------------------------------- */
/* the in-process transport: ranks are threads, a barrier separates publish and copy        */

typedef struct {
    const char *send;
    const size_t *bytes, *offsets;
} Posted;

typedef struct {
    pthread_barrier_t barrier;
    Posted *posted; /* [nranks] */
} CpuBus;

static int cpu_alltoallv(EpTransport *t, int rank, const void *send, const size_t *send_bytes, const size_t *send_offsets,
                         void *recv, const size_t *recv_bytes, const size_t *recv_offsets, Err *err) {
    CpuBus *bus = t->ctx;
    bus->posted[rank] = (Posted){ send, send_bytes, send_offsets };
    pthread_barrier_wait(&bus->barrier); /* everyone has posted */
    int rc = 0;
    for (int s = 0; s < t->nranks; s++) {
        const Posted *src = &bus->posted[s];
        size_t nbytes = src->bytes[rank];
        if (nbytes != recv_bytes[s]) {
            rc = err_set(err, "rank %d expected %zu bytes from rank %d, which sends %zu", rank, recv_bytes[s], s, nbytes);
            continue; /* keep going: the barrier below must still be reached */
        }
        if (nbytes) memcpy((char *)recv + recv_offsets[s], src->send + src->offsets[rank], nbytes);
    }
    pthread_barrier_wait(&bus->barrier); /* nobody reuses a send buffer before all copies are done */
    return rc;
}

int ep_cpu_transport_init(EpTransport *t, int nranks, Err *err) {
    memset(t, 0, sizeof *t);
    if (nranks < 1 || nranks > 4096) return err_set(err, "CPU transport: %d ranks (1..4096)", nranks);
    CpuBus *bus = calloc(1, sizeof *bus);
    if (!bus || !(bus->posted = calloc((size_t)nranks, sizeof *bus->posted))) {
        free(bus);
        return err_set(err, "out of memory");
    }
    if (pthread_barrier_init(&bus->barrier, NULL, (unsigned)nranks) != 0) {
        free(bus->posted);
        free(bus);
        return err_set(err, "cannot create a barrier for %d ranks", nranks);
    }
    t->nranks = nranks;
    t->alltoallv = cpu_alltoallv;
    t->ctx = bus;
    return 0;
}

void ep_cpu_transport_free(EpTransport *t) {
    CpuBus *bus = t->ctx;
    if (bus) {
        pthread_barrier_destroy(&bus->barrier);
        free(bus->posted);
        free(bus);
    }
    memset(t, 0, sizeof *t);
}
