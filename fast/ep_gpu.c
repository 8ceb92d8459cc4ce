/**
 * @file ep_gpu.c
 * @brief Expert parallelism inside the GPU forward (paper §3.4; docs/model.md §10): ref/ep/ep.c's
 *        ep_moe_forward with device buffers — dispatch → local experts → combine over the same
 *        EpTransport (NCCL across GPUs; the in-process CPU transport over the kernels' host
 *        emulation in the tests).
 *
 * Per MoE layer on every rank, for its own T tokens:
 *   1. gate and permutation on the device, exactly as fast_moe_forward (idx, weights, row_of_slot);
 *   2. the host reads idx back and lists the T·K (token, expert) slots grouped by destination rank
 *      (ep_plan_route; slots ascending within a destination); the token rows are gathered into a
 *      send buffer on the device; counts are exchanged first, then rows (device) and expert ids (host);
 *   3. the received rows are regrouped by local expert (stable), run through the rank's stacked
 *      local experts with one grouped GEMM per matrix (the same kernels, hence the same per-row
 *      results, as the single-GPU path), and put back in arrival order;
 *   4. combine: the outputs return the way they came; each lands in the row the single-GPU path
 *      would have computed it in (row_of_slot), and moe_combine_cuda adds them in the same order —
 *      so the logits equal the single-GPU ones bit for bit, for any number of ranks.
 * The host synchronizes the stream around each exchange (the transport has its own stream).
 * A transport that takes device memory (NCCL) gets the device rows directly; a host-only one
 * (TCP, the in-process CPU transport) gets them staged through host buffers.
 *
 * fast_ep_serve is ref ep_serve on the GPU: a rank with no tokens of its own runs step 3 for
 * whichever layer the counts exchange announces, until EP_STOP (the CLI's ranks 1..N−1).
 */
#include <stdlib.h>
#include <string.h>

#include "ep/ep.h"
#include "layers_gpu.h"
#include "model/moe.h"
#include "ops.h"

/** One rank's expert-parallel state: the reference's EpRank (transport, plan, count arrays)
 *  plus host arrays for the bookkeeping (device buffers live in the FastRunState). */
struct FastEp {
    EpRank r;          /**< rank, transport, plan, exchange count arrays */
    int64_t cap;       /**< rows the host arrays hold */
    int *idx;          /**< [cap] expert of each slot (downloaded) */
    int *row_of_slot;  /**< [cap] single-GPU permuted row of each slot (downloaded) */
    int64_t *send_slot; /**< [cap] slot of each sent row */
    int *send_meta;    /**< [cap] expert of each sent row */
    int *recv_meta;    /**< [cap] expert of each received row */
    int *index;        /**< [cap] a gather list being built for upload */
    int *inverse;      /**< [cap] its inverse */
    int *group_start;  /**< [n_local+1] local expert row ranges */
    size_t *n;         /**< [3][nranks+1]: rows sent, received, running starts */
    float *h_send, *h_recv; /**< host staging of device rows for a host-only transport */
    size_t h_cap;      /**< rows each staging buffer holds */
};

int fast_ep_init(FastEp **out, const FastModel *fm, EpTransport *t, int rank, int64_t max_T, Err *err) {
    *out = NULL;
    const Config *c = &fm->config;
    if (!fm->ep_plan) return err_set(err, "fast_ep_init: the model was uploaded without an EP plan (FastOptions.ep_plan)");
    if (rank != fm->ep_rank) return err_set(err, "fast_ep_init: rank %d, but the model holds rank %d's experts", rank, fm->ep_rank);
    FastEp *e = xcalloc(1, sizeof *e);
    if (!e || ep_rank_init(&e->r, rank, t, fm->ep_plan, err)) {
        free(e);
        return e ? -1 : err_set(err, "out of memory");
    }
    int n = t->nranks;
    e->cap = (int64_t)n * max_T * c->num_experts_per_tok;
    e->idx = xcalloc((size_t)e->cap, sizeof *e->idx);
    e->row_of_slot = xcalloc((size_t)e->cap, sizeof *e->row_of_slot);
    e->send_slot = xcalloc((size_t)e->cap, sizeof *e->send_slot);
    e->send_meta = xcalloc((size_t)e->cap, sizeof *e->send_meta);
    e->recv_meta = xcalloc((size_t)e->cap, sizeof *e->recv_meta);
    e->index = xcalloc((size_t)e->cap, sizeof *e->index);
    e->inverse = xcalloc((size_t)e->cap, sizeof *e->inverse);
    e->group_start = xcalloc((size_t)fm->n_local + 1, sizeof *e->group_start);
    e->n = xcalloc(3 * ((size_t)n + 1), sizeof *e->n);
    if (!e->idx || !e->row_of_slot || !e->send_slot || !e->send_meta || !e->recv_meta || !e->index || !e->inverse ||
        !e->group_start || !e->n) {
        fast_ep_free(e);
        return err_set(err, "out of memory for the expert-parallel bookkeeping");
    }
    *out = e;
    return 0;
}

void fast_ep_free(FastEp *e) {
    if (!e) return;
    ep_rank_free(&e->r);
    free(e->idx), free(e->row_of_slot), free(e->send_slot), free(e->send_meta), free(e->recv_meta);
    free(e->index), free(e->inverse), free(e->group_start), free(e->n);
    free(e->h_send), free(e->h_recv);
    free(e);
}

uint64_t fast_ep_dispatched_bytes(const FastEp *e) { return e ? e->r.dispatched_bytes : 0; }

static int sync_stream(const FastModel *fm, Err *err) {
    return fast_cuda_err(cudaStreamSynchronize(fm->stream), "fast_ep_moe_forward", "cudaStreamSynchronize", err);
}

static int copy(const FastModel *fm, void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, Err *err) {
    return fast_cuda_err(cudaMemcpyAsync(dst, src, bytes, kind, fm->stream), "fast_ep_moe_forward", "cudaMemcpyAsync", err);
}

/** Grows the host staging buffers to @p rows rows of @p D floats. */
static int stage_room(FastEp *e, size_t rows, int64_t D, Err *err) {
    if (rows <= e->h_cap && e->h_send) return 0;
    size_t cap = rows > 64 ? rows : 64;
    float *a = realloc(e->h_send, cap * (size_t)D * sizeof *a);
    if (a) e->h_send = a;
    float *b = a ? realloc(e->h_recv, cap * (size_t)D * sizeof *b) : NULL;
    if (b) e->h_recv = b;
    if (!a || !b) return err_set(err, "out of memory staging %zu expert-parallel rows", rows);
    e->h_cap = cap;
    return 0;
}

/** ep_exchange_rows of device rows [..][D]: direct when the transport takes device memory,
 *  else through the host staging buffers. */
static int exchange_device_rows(const FastModel *fm, FastEp *e, const float *d_send, const size_t *send_n, float *d_recv,
                                const size_t *recv_n, Err *err) {
    int nr = e->r.t->nranks;
    int64_t D = fm->config.hidden_size;
    size_t row = (size_t)D * sizeof(float);
    if (e->r.t->device_buffers) return ep_exchange_rows(&e->r, d_send, send_n, d_recv, recv_n, row, err);
    size_t ns = 0, nrecv = 0;
    for (int d = 0; d < nr; d++) ns += send_n[d], nrecv += recv_n[d];
    if (stage_room(e, ns > nrecv ? ns : nrecv, D, err)) return -1;
    if ((ns && (copy(fm, e->h_send, d_send, ns * row, cudaMemcpyDeviceToHost, err) || sync_stream(fm, err))) ||
        ep_exchange_rows(&e->r, e->h_send, send_n, e->h_recv, recv_n, row, err) ||
        (nrecv && (copy(fm, d_recv, e->h_recv, nrecv * row, cudaMemcpyHostToDevice, err) || sync_stream(fm, err))))
        return -1;
    return 0;
}

/**
 * What every rank runs for a MoE layer once the counts are known (e->n): receives the rows and
 * their expert ids, runs them through the local experts of @p layer, and sends the outputs back
 * the way they came; afterwards s->ep_send holds this rank's own rows' outputs in dispatch order.
 */
static int run_received(const FastModel *fm, FastRunState *s, FastEp *e, int layer, Err *err) {
    const Config *c = &fm->config;
    const FastLayer *fl = &fm->layers[layer];
    cudaStream_t st = fm->stream;
    int nr = e->r.t->nranks, rank = e->r.rank;
    int64_t D = c->hidden_size, E = c->n_routed_experts;
    size_t *send_n = e->n, *recv_n = e->n + nr + 1, total = 0;
    for (int sr = 0; sr < nr; sr++) total += recv_n[sr];
    if ((int64_t)total > e->cap) return err_set(err, "fast_ep_moe_forward: %zu rows received, room for %lld", total, (long long)e->cap);
    if (exchange_device_rows(fm, e, s->ep_send, send_n, s->ep_recv, recv_n, err) ||
        ep_exchange_rows(&e->r, e->send_meta, send_n, e->recv_meta, recv_n, sizeof(int), err))
        return -1;
    /* Received rows regrouped by local expert — the reference's stable counting sort (moe_permute,
     * one choice per row) over the local slots — the local experts, arrival order again. */
    for (size_t j = 0; j < total; j++) {
        int m = e->recv_meta[j], li = m >= 0 && m < E ? fm->local_of[m] : -1;
        if (li < 0) return err_set(err, "rank %d received a row for expert %d it does not hold", rank, m);
        e->recv_meta[j] = li;
    }
    int64_t M = (int64_t)total;
    moe_permute(e->index, e->group_start, e->recv_meta, M, 1, fm->n_local);
    for (int64_t dst = 0; dst < M; dst++) e->inverse[e->index[dst]] = (int)dst;
    if (M > 0) {
        if (copy(fm, s->ep_index, e->index, total * sizeof(int), cudaMemcpyHostToDevice, err) ||
            copy(fm, s->ep_group_start, e->group_start, ((size_t)fm->n_local + 1) * sizeof(int), cudaMemcpyHostToDevice, err) ||
            gather_rows_cuda(s->ep_work, D, s->ep_recv, D, s->ep_index, M, 1, D, st, err) ||
            fast_swiglu_forward(fm, s, s->ep_work, s->ep_work, M, &fl->w1, &fl->w3, &fl->w2, s->ep_group_start, fm->n_local, err) ||
            copy(fm, s->ep_index, e->inverse, total * sizeof(int), cudaMemcpyHostToDevice, err) ||
            gather_rows_cuda(s->ep_recv, D, s->ep_work, D, s->ep_index, M, 1, D, st, err))
            return -1;
    }
    if (sync_stream(fm, err)) return -1;
    /* Combine: back the way they came. */
    return exchange_device_rows(fm, e, s->ep_recv, recv_n, s->ep_send, send_n, err);
}

int fast_ep_moe_forward(const FastModel *fm, FastRunState *s, FastEp *e, int layer, float *y, const float *x, int64_t T,
                        Err *err) {
    const Config *c = &fm->config;
    const EpPlan *p = e->r.plan;
    cudaStream_t st = fm->stream;
    int nr = e->r.t->nranks, rank = e->r.rank, group_layer;
    int64_t D = c->hidden_size, K = c->num_experts_per_tok;
    int64_t R = T * K;
    size_t *send_n = e->n, *recv_n = e->n + nr + 1, *at = e->n + 2 * (nr + 1);
    if (R > e->cap) return err_set(err, "fast_ep_moe_forward: %lld slots exceed the %lld the rank was set up for", (long long)R, (long long)e->cap);
    /* 1. Gate and the single-GPU permutation (whose rows the combine reproduces). */
    if (fast_moe_route(fm, s, layer, x, T, err) ||
        copy(fm, e->idx, s->idx, (size_t)R * sizeof(int), cudaMemcpyDeviceToHost, err) ||
        copy(fm, e->row_of_slot, s->row_of_slot, (size_t)R * sizeof(int), cudaMemcpyDeviceToHost, err) || sync_stream(fm, err))
        return -1;
    /* 2. Dispatch lists grouped by destination, slots ascending within one. */
    memset(send_n, 0, (size_t)nr * sizeof *send_n);
    for (int64_t sl = 0; sl < R; sl++) send_n[ep_plan_route(p, e->idx[sl], rank, sl / K)]++;
    at[0] = 0;
    for (int d = 0; d < nr; d++) at[d + 1] = at[d] + send_n[d];
    for (int64_t sl = 0; sl < R; sl++) {
        size_t j = at[ep_plan_route(p, e->idx[sl], rank, sl / K)]++;
        e->send_slot[j] = sl, e->send_meta[j] = e->idx[sl], e->index[j] = (int)(sl / K);
    }
    if (copy(fm, s->ep_index, e->index, (size_t)R * sizeof(int), cudaMemcpyHostToDevice, err) ||
        gather_rows_cuda(s->ep_send, D, x, D, s->ep_index, R, 1, D, st, err) || sync_stream(fm, err))
        return -1;
    /* 3. Counts first (with the layer, checked across ranks), then rows, experts and the way back. */
    if (ep_exchange_counts(&e->r, layer, send_n, recv_n, &group_layer, err) || run_received(fm, s, e, layer, err)) return -1;
    /* 4. Combine: each output into its single-GPU permuted row. */
    for (int64_t j = 0; j < R; j++) e->index[e->row_of_slot[e->send_slot[j]]] = (int)j;
    if (copy(fm, s->ep_index, e->index, (size_t)R * sizeof(int), cudaMemcpyHostToDevice, err) ||
        gather_rows_cuda(s->y_perm, D, s->ep_send, D, s->ep_index, R, 1, D, st, err))
        return -1;
    return fast_moe_combine(fm, s, layer, y, x, T, err);
}

int fast_ep_serve(const FastModel *fm, FastRunState *s, FastEp *e, Err *err) {
    int nr = e->r.t->nranks, layer;
    size_t *send_n = e->n, *recv_n = e->n + nr + 1;
    for (;;) {
        memset(send_n, 0, (size_t)nr * sizeof *send_n);
        if (ep_exchange_counts(&e->r, EP_PASSIVE, send_n, recv_n, &layer, err)) return -1;
        if (layer == EP_STOP) return 0;
        if (!ep_moe_layer(&fm->w, layer, err) || run_received(fm, s, e, layer, err)) return -1;
    }
}

int fast_ep_stop(FastEp *e, Err *err) { return ep_stop(&e->r, err); }
