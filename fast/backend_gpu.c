/**
 * @file backend_gpu.c
 * @brief ref/backend.h on the GPU: one sequence over fast/model_gpu.h (the CLI's `--backend fast`),
 *        optionally with its routed experts spread over an expert-parallel group (ref/cli/cli_ep.h).
 */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "ep_nccl.h"
#include "ep/ep_socket.h"
#include "model_gpu.h"

struct GpuEngine {
    FastModel fm;
    FastKVCache kv;      /* the main model's cache */
    FastKVCache mtp_kv;  /* MTP module 0's (one layer), when uploaded */
    FastRunState *rs;
    int seq, mtp_seq;    /* the sequence of the one-sequence calls (seqs[0]) and the MTP module's */
    int n_seqs, *seqs;   /* the cache's sequence of each engine sequence */
    int *ids, *n_tok, *b_seq; /* [max_T], [n_seqs], [n_seqs]: a multi-sequence batch, flattened */
    int64_t max_T;
    /* expert parallelism */
    EpPlan plan;
    EpTransport t;
    int ep_tcp;          /* which transport t is (0: NCCL) */
    FastEp *ep;          /* NULL: every expert is local */
    int rank;
    char what[384];
};

void gpu_engine_close(GpuEngine *e) {
    if (!e) return;
    if (e->ep && e->rank == 0) {
        Err err = { "" };
        if (fast_ep_stop(e->ep, &err)) fprintf(stderr, "dsv3: stopping the expert servers: %s\n", err.msg);
    }
    fast_ep_free(e->ep);
    if (e->t.ctx) e->ep_tcp ? ep_socket_transport_free(&e->t) : ep_nccl_transport_free(&e->t);
    ep_plan_free(&e->plan);
    fast_runstate_free(e->rs);
    fast_kv_free(&e->kv);
    fast_kv_free(&e->mtp_kv);
    fast_model_free(&e->fm);
    free(e->seqs), free(e->ids), free(e->n_tok), free(e->b_seq);
    free(e);
}

/** Joins the expert-parallel group before the upload: NCCL selects GPU LOCAL_RANK itself; with
 *  TCP ranks may share GPUs (LOCAL_RANK mod the device count). */
static int join_group(GpuEngine *e, const Model *m, const GpuEngineOptions *opt, Err *err) {
    const Config *c = &m->config;
    if (ep_model_splits(c, opt->ep->world_size, err)) return -1;
    e->ep_tcp = opt->ep_tcp;
    e->rank = opt->ep->rank;
    if (e->ep_tcp) {
        int n = 0;
        cudaError_t ce = cudaGetDeviceCount(&n);
        if (ce != cudaSuccess || n < 1) return err_set(err, "no CUDA device (%s)", cudaGetErrorString(ce));
        if ((ce = cudaSetDevice(opt->ep->local_rank % n)) != cudaSuccess)
            return err_set(err, "cudaSetDevice(%d): %s", opt->ep->local_rank % n, cudaGetErrorString(ce));
        if (ep_socket_transport_init(&e->t, opt->ep, opt->ep_timeout_s, err)) return -1;
    } else if (ep_nccl_transport_init(&e->t, opt->ep, opt->ep_timeout_s, err)) {
        return -1;
    }
    return ep_plan_init(&e->plan, opt->ep->world_size, c->n_routed_experts, NULL, 0, err);
}

const char *gpu_backend_name(void) { return "CUDA fast backend"; }

int gpu_engine_open(GpuEngine **out, const Model *m, const GpuEngineOptions *opt, FILE *log, Err *err) {
    *out = NULL;
    if (opt->kv_bf16 == 2) /* KV_FP8: the reference emulates it; kv_cache_write and the MLA kernels do not read it yet */
        return err_set(err, "--kv-cache fp8: the CUDA backend has no FP8 latent cache kernels yet (issue 23); "
                            "use bf16 or f32, or --backend ref, which emulates the FP8 cache");
    GpuEngine *e = xcalloc(1, sizeof *e);
    if (!e) return err_set(err, "out of memory");
    FastOptions fo = { .fp8 = opt->fp8, .kv_bf16 = opt->kv_bf16 < 0 ? fast_mla_kernel_shapes(&m->config) : opt->kv_bf16,
                       .max_T = opt->max_T, .max_seq = opt->ctx, .max_seqs = opt->max_seqs > 1 ? opt->max_seqs : 1,
                       .progress = log != NULL, .mtp = opt->mtp, .cuda_graphs = 1 };
    int ep = opt->ep && opt->ep->world_size > 1;
    e->max_T = opt->max_T;
    e->mtp_seq = -1;
    if (ep && join_group(e, m, opt, err)) goto fail;
    if (ep) fo.ep_plan = &e->plan, fo.ep_rank = e->rank;
    e->n_seqs = fo.max_seqs;
    e->seqs = xcalloc((size_t)e->n_seqs, sizeof *e->seqs);
    e->ids = xcalloc((size_t)e->max_T, sizeof *e->ids);
    e->n_tok = xcalloc((size_t)e->n_seqs, sizeof *e->n_tok);
    e->b_seq = xcalloc((size_t)e->n_seqs, sizeof *e->b_seq);
    if (!e->seqs || !e->ids || !e->n_tok || !e->b_seq) {
        err_set(err, "out of memory");
        goto fail;
    }
    if (fast_model_upload(&e->fm, m, &fo, log, err) || fast_kv_init(&e->kv, &e->fm, &fo, err) ||
        fast_runstate_init(&e->rs, &e->fm, &fo, err) ||
        (e->fm.w.n_mtp > 0 && (fast_kv_init_layers(&e->mtp_kv, &e->fm, &fo, 1, err) ||
                               (e->mtp_seq = fast_kv_open(&e->mtp_kv, err)) < 0)))
        goto fail;
    for (int i = 0; i < e->n_seqs; i++)
        if ((e->seqs[i] = fast_kv_open(&e->kv, err)) < 0) goto fail;
    e->seq = e->seqs[0];
    if (ep) {
        if (fast_ep_init(&e->ep, &e->fm, &e->t, e->rank, e->max_T, err)) goto fail;
        fast_runstate_set_ep(e->rs, e->ep);
    }
    int at = snprintf(e->what, sizeof e->what, "%s (sm_%d%d), fp8 %s, %s latent cache", e->fm.dev.name, e->fm.dev.cc_major,
                      e->fm.dev.cc_minor, fo.fp8 == FP8_W8A8 ? "w8a8" : "dequant", fo.kv_bf16 ? "bf16" : "f32");
    if (ep && at > 0 && (size_t)at < sizeof e->what)
        snprintf(e->what + at, sizeof e->what - (size_t)at, ", experts over %d ranks (%s)", e->t.nranks, e->ep_tcp ? "TCP" : "NCCL");
    *out = e;
    return 0;
fail:
    err_prefix(err, "--backend fast");
    gpu_engine_close(e);
    return -1;
}

int gpu_engine_serve(GpuEngine *e, Err *err) {
    if (!e->ep || e->rank == 0) return err_set(err, "gpu_engine_serve: only ranks 1.. of an expert-parallel engine serve");
    return fast_ep_serve(&e->fm, e->rs, e->ep, err);
}

/** The main model (mtp = 0) or the MTP module (mtp = 1) over T rows from pos0, in max_T pieces. */
static int run_rows(GpuEngine *e, int mtp, int64_t pos0, const int *ids, const float *h, int64_t T, float *logits,
                    int64_t n_logits, float *hidden, float *normed, Err *err) {
    const Config *c = &e->fm.config;
    int64_t V = c->vocab_size, D = c->hidden_size;
    FastKVCache *kv = mtp ? &e->mtp_kv : &e->kv;
    int seq = mtp ? e->mtp_seq : e->seq;
    if (mtp && seq < 0) return err_set(err, "gpu_engine_mtp: the MTP module was not uploaded (GpuEngineOptions.mtp)");
    if (n_logits != 0 && n_logits != 1 && n_logits != T)
        return err_set(err, "gpu_engine: logits of the last %lld of %lld positions: only 0, 1 or all", (long long)n_logits,
                       (long long)T);
    if (pos0 < 0 || pos0 > fast_kv_len(kv, seq))
        return err_set(err, "gpu_engine: position %lld is past the %lld positions written", (long long)pos0,
                       (long long)fast_kv_len(kv, seq));
    fast_kv_truncate(kv, seq, pos0);
    for (int64_t t0 = 0; t0 < T; t0 += e->max_T) {
        int n = (int)(T - t0 < e->max_T ? T - t0 : e->max_T);
        int last = t0 + n == T, all = n_logits == T && T > 1;
        float *lg = logits && n_logits > 0 && (all || last) ? logits + (all ? t0 * V : 0) : NULL;
        FastBatch b = { 1, &seq, &n, ids + t0, all };
        float *nm = normed ? normed + t0 * D : NULL;
        int rc = mtp ? fast_mtp_forward(&e->fm, e->rs, kv, &b, h + t0 * D, lg, NULL, nm, err)
                     : fast_model_forward(&e->fm, e->rs, kv, &b, lg, NULL, hidden ? hidden + t0 * D : NULL, nm, err);
        if (rc) return -1;
    }
    return 0;
}

int gpu_engine_forward(GpuEngine *e, int64_t pos0, const int *ids, int64_t T, float *logits, int64_t n_logits,
                       float *hidden, float *normed, Err *err) {
    return run_rows(e, 0, pos0, ids, NULL, T, logits, n_logits, hidden, normed, err);
}

int gpu_engine_mtp(GpuEngine *e, int64_t pos0, const int *next_ids, const float *h, int64_t T, float *logits,
                   int64_t n_logits, float *out_normed, Err *err) {
    return run_rows(e, 1, pos0, next_ids, h, T, logits, n_logits, NULL, out_normed, err);
}

int gpu_engine_forward_seqs(GpuEngine *e, const GpuChunk *chunks, int n_chunks, float *logits, Err *err) {
    int64_t total = 0;
    if (n_chunks < 1 || n_chunks > e->n_seqs) return err_set(err, "gpu_engine_forward_seqs: %d chunks for %d sequences", n_chunks, e->n_seqs);
    for (int i = 0; i < n_chunks; i++) {
        const GpuChunk *ch = &chunks[i];
        if (ch->seq < 0 || ch->seq >= e->n_seqs || ch->n < 1 || total + ch->n > e->max_T)
            return err_set(err, "gpu_engine_forward_seqs: chunk %d (sequence %d, %d ids) does not fit %d sequences of %lld tokens",
                           i, ch->seq, ch->n, e->n_seqs, (long long)e->max_T);
        e->b_seq[i] = e->seqs[ch->seq];
        if (ch->pos0 < 0 || ch->pos0 > fast_kv_len(&e->kv, e->b_seq[i]))
            return err_set(err, "gpu_engine_forward_seqs: position %lld is past the %lld positions of sequence %d",
                           (long long)ch->pos0, (long long)fast_kv_len(&e->kv, e->b_seq[i]), ch->seq);
        memcpy(e->ids + total, ch->ids, (size_t)ch->n * sizeof *e->ids);
        e->n_tok[i] = ch->n;
        total += ch->n;
    }
    for (int i = 0; i < n_chunks; i++) fast_kv_truncate(&e->kv, e->b_seq[i], chunks[i].pos0);
    FastBatch b = { n_chunks, e->b_seq, e->n_tok, e->ids, 0 };
    return fast_model_forward(&e->fm, e->rs, &e->kv, &b, logits, NULL, NULL, NULL, err);
}

const char *gpu_engine_describe(const GpuEngine *e) { return e->what; }
