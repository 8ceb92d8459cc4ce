/**
 * @file weights_gpu.c
 * @brief Uploading a loaded checkpoint to the GPU (ref/model/weights.c's tensor table, walked again):
 *        the memory plan, the upload with a progress bar, and the two GPU-specific layouts.
 *
 * The reference binds each tensor of the table to the mapped safetensors; here the same table is
 * walked twice over a second ::Weights struct: once to add up the device bytes (the plan, checked
 * against the free memory before anything is allocated), once to copy each tensor from the
 * mapping into its place in one device allocation and point the device Weights at it.
 *   - FP8 matrices stay e4m3 with their F32 scale grids, BF16 stay BF16, F32 stay F32; F16 (not
 *     in DeepSeek checkpoints, but loadable by the reference) is widened to F32.
 *   - 1-D tensors (norms, correction biases) are uploaded as the FP32 the reference decoded.
 *   - Routed experts of a layer go to consecutive slots of three stacked tensors [E][rows][cols]
 *     (FastLayer.w1/w3/w2) — what the grouped GEMM reads; each expert's own Tensor points into
 *     its slot, so fm->w mirrors the reference's Weights tensor for tensor.
 *   - kv_b_proj is not uploaded as stored: the absorbed attention reads it per head as W_UK
 *     [H][Dn][Dc] and W_UV [H][Dv][Dc], dequantized to FP32 here (docs/model.md §3.3).
 * With FastOptions.mtp, MTP module 0 is uploaded too (its block is layer num_hidden_layers of
 * FastModel.layers), for speculative decoding on the GPU.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model_gpu.h"

/** What one table entry of the host model is (collected in table order). */
typedef struct {
    Tensor matrix;          /**< host tensor (a copy; its data points into the mapping) */
    const float *vector;    /**< host FP32 vector */
} HostSlot;

typedef struct {
    FastModel *fm;
    const HostSlot *host;   /* [n_slots] */
    int i;                  /* next host slot */
    Arena ar;               /* device bytes (base NULL while planning) */
    uint64_t done, total;   /* bytes copied, for the progress bar */
    FILE *log;
    int progress;
    int last_pct;           /* last percentage drawn */
    float *tmp;             /* host scratch for conversions */
    size_t tmp_floats;
    Err *err;
} Uploader;

static int collect(void *ctx, const WeightSlot *s) {
    HostSlot **next = ctx;
    if (s->kind == WEIGHT_MATRIX) (*next)->matrix = *s->matrix;
    (*next)->vector = s->kind == WEIGHT_VECTOR ? *s->vector : NULL;
    (*next)++;
    return 0;
}

static int count(void *ctx, const WeightSlot *s) {
    (void)s;
    (*(int *)ctx)++;
    return 0;
}

/** Bytes per element as uploaded (F16 → F32). */
static size_t upload_elem(DType t) { return t == DT_F8_E4M3 ? 1 : t == DT_BF16 ? 2 : 4; }
static DType upload_dtype(DType t) { return t == DT_F16 ? DT_F32 : t; }

/** Advances the bar; redrawn (on a terminal) only when the percentage changes. */
static void progress(Uploader *u, uint64_t n) {
    u->done += n;
    if (!u->progress || !u->log || !u->total) return;
    int pct = (int)(100.0 * (double)u->done / (double)u->total);
    if (pct > 100) pct = 100;
    if (pct == u->last_pct) return;
    u->last_pct = pct;
    if (!isatty(fileno(u->log))) { /* a log file gets one line at the end, not a hundred */
        if (u->done >= u->total) fprintf(u->log, "dsv3: uploaded %.2f GB of weights\n", (double)u->total / 1e9);
        return;
    }
    char bar[41];
    for (int k = 0; k < 40; k++) bar[k] = k < pct * 40 / 100 ? '#' : '.';
    bar[40] = 0;
    fprintf(u->log, "\rdsv3: uploading weights [%s] %3d%% %.2f / %.2f GB", bar, pct, (double)u->done / 1e9,
            (double)u->total / 1e9);
    if (u->done >= u->total) fputc('\n', u->log);
    fflush(u->log);
}

/** Device memory for n elements of elem bytes (NULL while planning). */
static void *take(Uploader *u, size_t n, size_t elem) { return arena_take(&u->ar, n, elem); }

static int put(Uploader *u, void *dst, const void *src, size_t bytes) {
    if (!dst) return 0; /* planning */
    cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) return fast_cuda_err(e, "weight upload", "cudaMemcpy", u->err);
    progress(u, bytes);
    return 0;
}

/** Host scratch of n floats. */
static float *scratch(Uploader *u, size_t n) {
    if (n <= u->tmp_floats) return u->tmp;
    float *p = realloc(u->tmp, n * sizeof(float));
    if (!p) return NULL;
    u->tmp = p, u->tmp_floats = n;
    return p;
}

/** Copies a host matrix (data, then scales) to dst/dst_scale in its upload dtype. */
static int put_matrix(Uploader *u, uint8_t *dst, float *dst_scale, const Tensor *h) {
    if (!dst) return 0;
    size_t n = (size_t)h->rows * (size_t)h->cols;
    if (h->dtype == DT_F16) {
        float *t = scratch(u, (size_t)h->cols);
        if (!t) return err_set(u->err, "weight upload: out of host memory");
        for (int64_t r = 0; r < h->rows; r++) {
            tensor_row(h, r, 0, h->cols, 1, t);
            if (put(u, dst + (size_t)r * (size_t)h->cols * 4, t, (size_t)h->cols * 4)) return -1;
        }
        return 0;
    }
    if (put(u, dst, h->data, n * upload_elem(h->dtype))) return -1;
    if (h->dtype == DT_F8_E4M3) {
        size_t grid = (size_t)((h->rows + 127) / 128) * (size_t)tensor_col_blocks(h);
        if (put(u, dst_scale, h->scale_inv, grid * 4)) return -1;
    }
    return 0;
}

/** W_UK [H][Dn][Dc] and W_UV [H][Dv][Dc] from kv_b_proj rows h·(Dn+Dv) + [0, Dn) and + [Dn, Dn+Dv). */
static int put_absorb(Uploader *u, FastLayer *fl, const Tensor *kv_b, const Config *c) {
    int64_t H = c->num_attention_heads, Dn = c->qk_nope_head_dim, Dv = c->v_head_dim, Dc = c->kv_lora_rank;
    fl->w_uk = take(u, (size_t)(H * Dn * Dc), sizeof(float));
    fl->w_uv = take(u, (size_t)(H * Dv * Dc), sizeof(float));
    if (!fl->w_uk) return 0;
    float *t = scratch(u, (size_t)((Dn > Dv ? Dn : Dv) * Dc));
    if (!t) return err_set(u->err, "weight upload: out of host memory");
    for (int64_t h = 0; h < H; h++) {
        for (int64_t d = 0; d < Dn; d++) tensor_row(kv_b, h * (Dn + Dv) + d, 0, Dc, 1, t + d * Dc);
        if (put(u, fl->w_uk + h * Dn * Dc, t, (size_t)(Dn * Dc) * 4)) return -1;
        for (int64_t d = 0; d < Dv; d++) tensor_row(kv_b, h * (Dn + Dv) + Dn + d, 0, Dc, 1, t + d * Dc);
        if (put(u, fl->w_uv + h * Dv * Dc, t, (size_t)(Dv * Dc) * 4)) return -1;
    }
    return 0;
}

/** The stacked tensor of a routed expert's matrix (gate → w1, up → w3, down → w2). */
static Tensor *stack_of(FastModel *fm, const WeightSlot *s) {
    int n = fm->config.num_hidden_layers;
    LayerWeights *L = s->layer < n ? &fm->w.layers[s->layer] : &fm->w.mtp[s->layer - n].block;
    FFNWeights *e = &L->experts[s->expert];
    FastLayer *fl = &fm->layers[s->layer];
    return s->matrix == &e->gate_proj ? &fl->w1 : s->matrix == &e->up_proj ? &fl->w3 : &fl->w2;
}

static int upload_one(void *ctx, const WeightSlot *s) {
    Uploader *u = ctx;
    const HostSlot *hs = &u->host[u->i++];
    const Config *c = &u->fm->config;
    if (s->kind == WEIGHT_VECTOR) {
        float *d = take(u, (size_t)s->cols, sizeof(float));
        *s->vector = d;
        return put(u, d, hs->vector, (size_t)s->cols * 4);
    }
    const Tensor *h = &hs->matrix;
    Tensor *d = s->matrix;
    *d = *h;
    d->dtype = upload_dtype(h->dtype);
    size_t elem = upload_elem(h->dtype), n = (size_t)h->rows * (size_t)h->cols;
    size_t grid = h->dtype == DT_F8_E4M3 ? (size_t)((h->rows + 127) / 128) * (size_t)tensor_col_blocks(h) : 0;
    if (strstr(s->name, ".kv_b_proj.")) {
        /* only its absorbed per-head form lives on the device */
        d->data = NULL, d->scale_inv = NULL;
        return put_absorb(u, &u->fm->layers[s->layer], h, c);
    }
    if (s->expert >= 0) {
        Tensor *stk = stack_of(u->fm, s);
        int li = u->fm->local_of[s->expert];
        if (li < 0) { /* held by another rank (expert parallelism) */
            d->data = NULL, d->scale_inv = NULL;
            return 0;
        }
        if (stk->rows == 0) { /* the first local expert sizes the stack of the n_local held here */
            *stk = *d;
            stk->data = take(u, n * (size_t)u->fm->n_local, elem);
            stk->scale_inv = grid ? take(u, grid * (size_t)u->fm->n_local, 4) : NULL;
        } else if (stk->dtype != d->dtype) {
            return err_set(u->err, "%s is %s but the first expert of its layer is %s: the grouped GEMM needs one dtype per layer",
                           s->name, dtype_name(h->dtype), dtype_name(stk->dtype));
        }
        d->data = stk->data ? stk->data + (size_t)li * n * elem : NULL;
        d->scale_inv = stk->scale_inv ? stk->scale_inv + (size_t)li * grid * 4 : NULL;
    } else {
        d->data = take(u, n, elem);
        d->scale_inv = grid ? take(u, grid, 4) : NULL;
    }
    return put_matrix(u, (uint8_t *)d->data, (float *)d->scale_inv, h);
}

/** Walks the table: planning (u->ar.base NULL) or uploading. */
static int walk(Uploader *u) {
    u->i = 0;
    return weights_foreach(&u->fm->w, &u->fm->config, upload_one, u);
}

/** Which routed experts this rank uploads, and where in the stacks: all of them without EP. */
static int plan_local_experts(FastModel *fm, const FastOptions *opt, Err *err) {
    int E = fm->config.n_routed_experts;
    fm->local_of = xcalloc((size_t)(E > 0 ? E : 1), sizeof *fm->local_of);
    if (!fm->local_of) return err_set(err, "out of host memory");
    const EpPlan *p = opt->ep_plan;
    if (p && (p->n_experts != E || opt->ep_rank < 0 || opt->ep_rank >= p->nranks))
        return err_set(err, "EP plan for %d experts and %d ranks does not fit the model (%d experts) or rank %d", p->n_experts,
                       p->nranks, E, opt->ep_rank);
    fm->ep_plan = p, fm->ep_rank = opt->ep_rank, fm->n_local = 0;
    for (int e = 0; e < E; e++) fm->local_of[e] = !p || ep_plan_holds(p, opt->ep_rank, e) ? fm->n_local++ : -1;
    return 0;
}

/** Sets up fm's host-side tables and the host slot list; *host is malloc'ed. */
static int prepare(FastModel *fm, const Model *m, const FastOptions *opt, HostSlot **host, Err *err) {
    int want_mtp = opt->mtp;
    memset(fm, 0, sizeof *fm);
    fm->host = m;
    fm->config = m->config;
    /* the device and numerics decide the run state's layout (which kernels run), so the plan sees them too */
    if (fast_device(&fm->dev, err)) return -1;
    fm->fp8 = opt->fp8;
    fm->fp8_tc = fm->dev.cc_major > 8 || (fm->dev.cc_major == 8 && fm->dev.cc_minor >= 9);
    if (plan_local_experts(fm, opt, err)) return -1;
    int n_mtp = want_mtp && m->w.n_mtp > 0 ? 1 : 0; /* module 0 drafts; deeper ones are not used at inference */
    if (weights_alloc(&fm->w, &fm->config, n_mtp, err)) return -1;
    fm->layers = xcalloc((size_t)(fm->config.num_hidden_layers + n_mtp), sizeof *fm->layers);
    int n = 0;
    Weights hw = m->w;
    hw.n_mtp = n_mtp; /* the same modules as the device table, in its order */
    weights_foreach(&hw, &m->config, count, &n);
    *host = xcalloc((size_t)n, sizeof **host);
    if (!fm->layers || !*host) {
        free(*host);
        *host = NULL;
        return err_set(err, "out of host memory");
    }
    HostSlot *next = *host;
    weights_foreach(&hw, &m->config, collect, &next);
    return 0;
}

static void release_tables(FastModel *fm) {
    weights_free(&fm->w);
    free(fm->layers);
    free(fm->local_of);
    fm->layers = NULL;
    fm->local_of = NULL;
}

int fast_plan(FastPlan *plan, const Model *m, const FastOptions *opt, Err *err) {
    memset(plan, 0, sizeof *plan);
    FastModel fm;
    HostSlot *host = NULL;
    if (prepare(&fm, m, opt, &host, err)) {
        release_tables(&fm);
        return -1;
    }
    Uploader u = { &fm, host, 0, { 0 }, 0, 0, NULL, 0, -1, NULL, 0, err };
    int rc = walk(&u);
    free(host);
    free(u.tmp);
    if (!rc && u.ar.overflow) rc = err_set(err, "weight sizes overflow");
    plan->weights = u.ar.used;
    if (!rc) {
        plan->kv_cache = fast_kv_bytes(&m->config, opt, m->config.num_hidden_layers);
        plan->workspace = fast_runstate_bytes(&fm, opt);
        plan->total = plan->weights + plan->kv_cache + plan->workspace;
        size_t fr = 0, tot = 0;
        cudaError_t e = cudaMemGetInfo(&fr, &tot);
        if (e != cudaSuccess) rc = fast_cuda_err(e, "fast_plan", "cudaMemGetInfo", err);
        plan->free = fr, plan->device_total = tot;
    }
    release_tables(&fm);
    return rc;
}

void fast_plan_print(const FastPlan *p, FILE *log) {
    const double G = 1024.0 * 1024.0 * 1024.0;
    fprintf(log, "dsv3: GPU memory plan: weights %.3f GiB + KV cache %.3f GiB + workspace %.3f GiB = %.3f GiB "
                 "(device: %.2f GiB free of %.2f GiB)\n",
            (double)p->weights / G, (double)p->kv_cache / G, (double)p->workspace / G, (double)p->total / G,
            (double)p->free / G, (double)p->device_total / G);
}

int fast_model_upload(FastModel *fm, const Model *m, const FastOptions *opt, FILE *log, Err *err) {
    FastPlan plan;
    if (fast_plan(&plan, m, opt, err)) return -1;
    if (log) fast_plan_print(&plan, log);
    /* 5% of the free memory stays for the CUDA context, cuBLAS-free kernels' launches and fragmentation */
    if (plan.total > plan.free - plan.free / 20)
        return err_set(err, "the model does not fit on the GPU: it needs %.2f GiB (weights %.2f + KV cache %.2f + workspace %.2f), "
                            "%.2f GiB are free; use a shorter context (-c), fewer sequences, or more GPUs (dsv3 plan)",
                       (double)plan.total / 1073741824.0, (double)plan.weights / 1073741824.0,
                       (double)plan.kv_cache / 1073741824.0, (double)plan.workspace / 1073741824.0,
                       (double)plan.free / 1073741824.0);
    HostSlot *host = NULL;
    if (prepare(fm, m, opt, &host, err)) goto fail;
    cudaError_t e = cudaStreamCreateWithFlags(&fm->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        fast_cuda_err(e, "fast_model_upload", "cudaStreamCreate", err);
        goto fail;
    }
    e = cudaMalloc(&fm->mem, plan.weights ? plan.weights : 1);
    if (e != cudaSuccess) {
        fm->mem = NULL;
        fast_cuda_err(e, "fast_model_upload", "cudaMalloc of the weights", err);
        goto fail;
    }
    fm->bytes = plan.weights;
    Uploader u = { fm, host, 0, { (char *)fm->mem, 0, plan.weights, 0 }, 0, 0, log, 0, -1, NULL, 0, err };
    u.progress = opt->progress && log;
    u.total = plan.weights; /* the arena's bytes: the copies plus ≤ 63 bytes of alignment per tensor */
    if (walk(&u)) {
        free(u.tmp);
        goto fail;
    }
    free(u.tmp);
    if (u.progress && u.done < u.total) {
        u.done = u.total - 1;
        progress(&u, 1); /* the padding: close the bar at 100% */
    }
    free(host);
    return 0;
fail:
    free(host);
    fast_model_free(fm);
    return -1;
}

void fast_model_free(FastModel *fm) {
    if (fm->mem) cudaFree(fm->mem);
    if (fm->stream) cudaStreamDestroy(fm->stream);
    release_tables(fm);
    memset(fm, 0, sizeof *fm);
}
