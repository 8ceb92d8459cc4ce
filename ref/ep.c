/**
 * @file ep.c
 * @brief Expert-parallel MoE (dispatch / local experts / combine) and the in-process CPU
 *        transport. See ep.h for the protocol; the arithmetic per token is moe_forward's.
 */
#include "ep.h"

#include <pthread.h>
#include <string.h>

#include "ffn.h"
#include "gate.h"

/* ------------------------------------------------------------------------------------- */
/* plan                                                                                    */

int ep_plan_init(EpPlan *p, int nranks, int n_experts, const int *redundant, int n_redundant, Err *err) {
    memset(p, 0, sizeof *p);
    if (nranks < 1 || nranks > 4096) return err_set(err, "expert parallelism: %d ranks (1..4096)", nranks);
    if (n_experts < nranks) return err_set(err, "expert parallelism: %d experts cannot be split over %d ranks", n_experts, nranks);
    p->nranks = nranks;
    p->n_experts = n_experts;
    p->first = xcalloc((size_t)nranks + 1, sizeof *p->first);
    p->n_copies = xcalloc((size_t)n_experts, sizeof *p->n_copies);
    p->copies = xcalloc((size_t)n_experts * (size_t)nranks, sizeof *p->copies);
    if (!p->first || !p->n_copies || !p->copies) {
        ep_plan_free(p);
        return err_set(err, "out of memory");
    }
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

int ep_rank_init(EpRank *r, int rank, EpTransport *t, const EpPlan *plan, Err *err) {
    memset(r, 0, sizeof *r);
    if (rank < 0 || rank >= t->nranks) return err_set(err, "rank %d outside [0, %d)", rank, t->nranks);
    r->rank = rank;
    r->t = t;
    r->plan = plan;
    r->counts = xcalloc(4 * (size_t)t->nranks, sizeof *r->counts);
    r->rows_n = xcalloc(3 * (size_t)t->nranks + 1, sizeof *r->rows_n);
    return r->counts && r->rows_n ? 0 : err_set(err, "out of memory");
}

void ep_rank_free(EpRank *r) {
    free(r->send_rows), free(r->send_meta), free(r->send_slot), free(r->recv_rows), free(r->recv_meta);
    free(r->work_in), free(r->work_out), free(r->h_gate), free(r->h_up), free(r->h_act), free(r->y_slot);
    free(r->counts);
    free(r->rows_n);
    memset(r, 0, sizeof *r);
}

/** Grows buffer @p p to @p n elements; inside ensure(): returns an error when out of memory. */
#define GROW(p, n)                                                               \
    do {                                                                         \
        void *q_ = realloc((p), (n) * sizeof *(p));                              \
        if (!q_) return err_set(err, "out of memory growing the EP buffers");   \
        (p) = q_;                                                                \
    } while (0)

/** Grows every exchange buffer to hold @p rows rows. */
static int ensure(EpRank *r, size_t rows, int64_t D, int64_t Ie, Err *err) {
    if (rows <= r->cap_rows) return 0;
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

int ep_exchange_counts(EpRank *r, const size_t *send_rows, size_t *recv_rows, Err *err) {
    int n = r->t->nranks;
    size_t *bytes = r->counts, *offs = r->counts + n;
    for (int d = 0; d < n; d++) bytes[d] = sizeof(size_t), offs[d] = (size_t)d * sizeof(size_t);
    return r->t->alltoallv(r->t, r->rank, send_rows, bytes, offs, recv_rows, bytes, offs, err);
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

int ep_moe_forward(float *out, const float *x, int64_t T, const LayerWeights *w, MoEActs *a, EpRank *r,
                   const ForwardContext *ctx, Err *err) {
    const Config *c = ctx->cfg;
    const EpPlan *p = r->plan;
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
    /* 3. Counts first, then the rows and their expert ids. */
    if (ep_exchange_counts(r, send_n, recv_n, err)) return -1;
    size_t total = 0;
    for (int s = 0; s < n; s++) total += recv_n[s];
    if (ensure(r, total > (size_t)(T * K) ? total : (size_t)(T * K), D, Ie, err)) return -1;
    if (ep_exchange_rows(r, r->send_rows, send_n, r->recv_rows, recv_n, (size_t)D * sizeof(float), err) ||
        ep_exchange_rows(r, r->send_meta, send_n, r->recv_meta, recv_n, sizeof(int), err))
        return -1;
    /* 4. Local experts: gather each expert's rows, run its FFN, write the outputs back in place. */
    for (int64_t e = 0; e < E; e++) {
        size_t m = 0;
        for (size_t j = 0; j < total; j++)
            if (r->recv_meta[j] == e) memcpy(r->work_in + m++ * D, r->recv_rows + j * D, (size_t)D * sizeof(float));
        if (m == 0) continue;
        if (!ep_plan_holds(p, r->rank, (int)e)) return err_set(err, "rank %d received rows for expert %lld it does not hold", r->rank, (long long)e);
        FFNActs acts = { r->h_gate, r->h_up, r->h_act };
        for (size_t j0 = 0; j0 < m; j0 += (size_t)ctx->lin.max_T) { /* the scratch holds max_T rows */
            int64_t rows = (int64_t)(m - j0 < (size_t)ctx->lin.max_T ? m - j0 : (size_t)ctx->lin.max_T);
            ffn_forward(r->work_out + j0 * D, r->work_in + j0 * D, rows, &w->experts[e], &acts, ctx->fp8, &ctx->lin);
        }
        m = 0;
        for (size_t j = 0; j < total; j++)
            if (r->recv_meta[j] == e) memcpy(r->recv_rows + j * D, r->work_out + m++ * D, (size_t)D * sizeof(float));
    }
    /* 5. Combine: outputs return in the order the rows came; place them by slot. */
    if (ep_exchange_rows(r, r->recv_rows, recv_n, r->send_rows, send_n, (size_t)D * sizeof(float), err)) return -1;
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
