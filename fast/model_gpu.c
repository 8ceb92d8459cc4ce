/**
 * @file model_gpu.c
 * @brief The whole model on one GPU (docs/model.md §2): the run state and the forward over a batch of
 *        sequence chunks — ref/model/model.c's runstate_init and model_forward, serving-shaped.
 *
 *     h = embed(ids);  for each layer: h = block(h);  logits = lm_head(norm(h))
 * One forward carries the chunks of several sequences (prefill chunks and single decode tokens
 * alike) flattened into T tokens. Every op but attention is per token, so flattening changes
 * nothing; attention gets, per token, its sequence's block table and its causal length pos+1.
 * The host prepares those per-token arrays (and the RoPE angles, with ref rope_cos_sin, so they
 * are bit-identical to the reference's) and uploads them once per forward.
 */
#include <stdlib.h>
#include <string.h>

#include "fp8_gemm.h"
#include "layers_gpu.h"
#include "mla_decode.h"
#include "moe_cuda.h"
#include "ops.h"

/* ------------------------------------------------------------------------------------- */
/* run state                                                                               */

/** Largest split-K workspace any dense FP8 linear asks for at up to max_T rows. */
static size_t gemm_workspace(const FastModel *fm, int64_t max_T) {
    const Config *c = &fm->config;
    int64_t D = c->hidden_size, H = c->num_attention_heads, Dqk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    int64_t Is = (int64_t)c->n_shared_experts * c->moe_intermediate_size, I = c->intermediate_size;
    int64_t nk[][2] = { { c->q_lora_rank, D }, { H * Dqk, c->q_lora_rank }, { H * Dqk, D } /* q_proj */,
                        { c->kv_lora_rank + c->qk_rope_head_dim, D },
                        { D, H * c->v_head_dim }, { I, D }, { D, I }, { Is, D }, { D, Is } };
    size_t best = 0;
    for (int64_t M = 1; M <= max_T && M <= 256; M++)
        for (size_t i = 0; i < sizeof nk / sizeof nk[0]; i++) {
            if (nk[i][0] <= 0 || nk[i][1] <= 0 || nk[i][1] % 128) continue;
            size_t b = fp8_gemm_workspace_bytes(M, nk[i][0], nk[i][1]);
            if (b > best) best = b;
        }
    return best;
}

/** Largest MLA split-K workspace at up to max_T queries. */
static size_t mla_workspace(const Config *c, int64_t max_T, int64_t max_seq) {
    size_t best = 0;
    if (!fast_mla_kernel_shapes(c)) return 0;
    for (int64_t B = 1; B <= max_T; B++) {
        int splits = mla_decode_num_splits((int)B, c->num_attention_heads, (int)max_seq);
        size_t b = mla_decode_workspace_bytes((int)B, c->num_attention_heads, splits);
        if (b > best) best = b;
    }
    return best;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/** Carves every device buffer from @p ar (counting when ar->base is NULL). */
static void runstate_layout(FastRunState *s, const FastModel *fm, const FastOptions *opt, Arena *ar) {
    const Config *c = &fm->config;
    int64_t Tm = opt->max_T, D = c->hidden_size, H = c->num_attention_heads, Dn = c->qk_nope_head_dim;
    int64_t Dr = c->qk_rope_head_dim, Dv = c->v_head_dim, Dq = c->q_lora_rank, Dc = c->kv_lora_rank, Dqk = Dn + Dr;
    int64_t E = c->n_routed_experts, K = c->num_experts_per_tok, Ie = c->moe_intermediate_size;
    int64_t Is = (int64_t)c->n_shared_experts * Ie, V = c->vocab_size;
    int has_moe = 0, has_dense = 0;
    for (int l = 0; l < c->num_hidden_layers + fm->w.n_mtp; l++) {
        if (config_layer_is_moe(c, l)) has_moe = 1;
        else has_dense = 1;
    }
    int moe_tc = fast_moe_tensor_cores(fm); /* e4m3 gathers, or FP32 ones */
    int64_t R = has_moe ? Tm * K : 0, R_ep = fm->ep_plan ? R * fm->ep_plan->nranks : R;
    s->max_T = Tm;
    s->max_blocks = (int)((opt->max_seq + 63) / 64);
    s->max_in = max64(config_max_linear_in(c), Ie);
    /* grouped linears quantize their gathered rows through this scratch: R_ep rows under EP */
    s->lin_rows = has_moe && (!moe_tc || fm->ep_plan) ? max64(Tm, R_ep) : Tm;
    ARENA_TAKE(ar, s->ids, Tm);
    ARENA_TAKE(ar, s->pos, Tm);
    ARENA_TAKE(ar, s->seq_lens, Tm);
    ARENA_TAKE(ar, s->block_table, Tm * s->max_blocks);
    ARENA_TAKE(ar, s->rope_cos, Tm * (Dr / 2));
    ARENA_TAKE(ar, s->rope_sin, Tm * (Dr / 2));
    ARENA_TAKE(ar, s->logit_rows, Tm);
    ARENA_TAKE(ar, s->h, Tm * D);
    ARENA_TAKE(ar, s->x, Tm * D);
    ARENA_TAKE(ar, s->branch, Tm * D);
    ARENA_TAKE(ar, s->c_q, Tm * Dq);
    ARENA_TAKE(ar, s->c_q_norm, Tm * Dq);
    ARENA_TAKE(ar, s->q, Tm * H * Dqk);
    ARENA_TAKE(ar, s->kv_a, Tm * (Dc + Dr));
    ARENA_TAKE(ar, s->c_kv, Tm * Dc);
    ARENA_TAKE(ar, s->q_abs, Tm * H * Dc);
    ARENA_TAKE(ar, s->u, Tm * H * Dc);
    ARENA_TAKE(ar, s->o, Tm * H * Dv);
    if (fast_mla_kernel_shapes(c) && opt->kv_bf16) {
        ARENA_TAKE(ar, s->q_abs16, Tm * H * Dc);
        ARENA_TAKE(ar, s->q_pe16, Tm * H * Dr);
        s->mla_ws_bytes = mla_workspace(c, Tm, opt->max_seq);
        if (s->mla_ws_bytes) ARENA_TAKE(ar, s->mla_ws, s->mla_ws_bytes / sizeof(float));
    }
    int64_t h13 = max64(has_dense ? Tm * 2 * c->intermediate_size : 0, max64(R_ep * 2 * Ie, Tm * 2 * Is));
    ARENA_TAKE(ar, s->h13, h13);
    ARENA_TAKE(ar, s->act, h13 / 2);
    if (has_moe) {
        int64_t wide = max64(D, Ie);
        ARENA_TAKE(ar, s->logits_e, Tm * E);
        ARENA_TAKE(ar, s->idx, Tm * K);
        ARENA_TAKE(ar, s->weights, Tm * K);
        ARENA_TAKE(ar, s->perm, R);
        ARENA_TAKE(ar, s->row_of_slot, R);
        ARENA_TAKE(ar, s->expert_start, E + 1);
        s->perm_ws_bytes = moe_permute_workspace_bytes(Tm, K, E);
        ARENA_TAKE(ar, s->perm_ws, s->perm_ws_bytes);
        if (moe_tc) {
            ARENA_TAKE(ar, s->xq_perm, R * wide);
            ARENA_TAKE(ar, s->xs_perm, R * ((wide + 127) / 128));
        } else {
            ARENA_TAKE(ar, s->x_perm, R * D);
        }
        ARENA_TAKE(ar, s->y_perm, R * D);
        if (Is > 0) ARENA_TAKE(ar, s->y_shared, Tm * D);
        if (fm->ep_plan) {
            ARENA_TAKE(ar, s->ep_send, R * D);
            ARENA_TAKE(ar, s->ep_recv, R_ep * D);
            ARENA_TAKE(ar, s->ep_work, R_ep * D);
            ARENA_TAKE(ar, s->ep_index, R_ep);
            ARENA_TAKE(ar, s->ep_group_start, E + 1);
        }
    }
    ARENA_TAKE(ar, s->xq, s->lin_rows * s->max_in);
    ARENA_TAKE(ar, s->xs, s->lin_rows * ((s->max_in + 127) / 128));
    if (c->has_fp8 && fm->fp8 == FP8_W8A8) ARENA_TAKE(ar, s->xqf, s->lin_rows * s->max_in);
    s->gemm_ws_bytes = c->has_fp8 ? gemm_workspace(fm, Tm) : 0;
    if (s->gemm_ws_bytes) ARENA_TAKE(ar, s->gemm_ws, s->gemm_ws_bytes / sizeof(float));
    ARENA_TAKE(ar, s->normed, Tm * D);
    if (fm->w.n_mtp > 0) {
        ARENA_TAKE(ar, s->mtp_h, Tm * D);
        ARENA_TAKE(ar, s->cat, Tm * 2 * D);
    }
    ARENA_TAKE(ar, s->sel, Tm * D);
    ARENA_TAKE(ar, s->logits, Tm * V);
    ARENA_TAKE(ar, s->argmax, Tm);
}

uint64_t fast_runstate_bytes(const FastModel *fm, const FastOptions *opt) {
    FastRunState s;
    memset(&s, 0, sizeof s);
    Arena count = { 0 };
    runstate_layout(&s, fm, opt, &count);
    return count.overflow ? UINT64_MAX : count.used;
}

int fast_runstate_init(FastRunState **out, const FastModel *fm, const FastOptions *opt, Err *err) {
    *out = NULL;
    if (opt->max_T <= 0 || opt->max_T > 0x7FFFFFFF / 64)
        return err_set(err, "run state: max_T = %lld tokens per forward is out of range", (long long)opt->max_T);
    FastRunState *s = xcalloc(1, sizeof *s);
    if (!s) return err_set(err, "out of host memory");
    Arena count = { 0 };
    runstate_layout(s, fm, opt, &count);
    if (count.overflow) {
        free(s);
        return err_set(err, "run state: buffers for %lld tokens overflow", (long long)opt->max_T);
    }
    cudaError_t e = cudaMalloc(&s->mem, count.used ? count.used : 1);
    if (e != cudaSuccess) {
        free(s);
        return fast_cuda_err(e, "fast_runstate_init", "cudaMalloc of the activations", err);
    }
    s->bytes = count.used;
    Arena ar = { (char *)s->mem, 0, count.used, 0 };
    runstate_layout(s, fm, opt, &ar);
    /* host staging: 5 int arrays of max_T (+ the block table) and two float arrays of max_T·Dr/2 */
    int64_t Tm = s->max_T, half = fm->config.qk_rope_head_dim / 2;
    size_t ints = (size_t)Tm * (4 + (size_t)s->max_blocks), floats = (size_t)Tm * (size_t)half * 2;
    s->host_mem = xcalloc(ints * sizeof(int) + floats * sizeof(float), 1);
    if (!s->host_mem) {
        fast_runstate_free(s);
        return err_set(err, "out of host memory for the batch staging arrays");
    }
    s->h_ids = s->host_mem;
    s->h_pos = s->h_ids + Tm;
    s->h_seq_lens = s->h_pos + Tm;
    s->h_logit_rows = s->h_seq_lens + Tm;
    s->h_block_table = s->h_logit_rows + Tm;
    s->h_rope_cos = (float *)(s->h_block_table + Tm * s->max_blocks);
    s->h_rope_sin = s->h_rope_cos + Tm * half;
    s->graphs_on = opt->cuda_graphs;
    *out = s;
    return 0;
}

void fast_runstate_set_ep(FastRunState *s, FastEp *ep) { s->ep = ep; }

void fast_runstate_graph_stats(const FastRunState *s, uint64_t *launches, uint64_t *captures) {
    *launches = s->launches, *captures = s->captures;
}

void fast_runstate_free(FastRunState *s) {
    if (!s) return;
    for (int i = 0; i < FAST_GRAPHS; i++)
        if (s->graphs[i].exec) cudaGraphExecDestroy(s->graphs[i].exec);
    if (s->mem) cudaFree(s->mem);
    free(s->host_mem);
    free(s);
}

/* ------------------------------------------------------------------------------------- */
/* forward                                                                                 */

/** Validates the batch and gives every sequence the cache blocks its chunk needs. */
static int admit(FastKVCache *kv, const FastBatch *b, int64_t max_T, int vocab, int64_t *T_out, Err *err) {
    int64_t T = 0, need = 0;
    if (b->n_seqs <= 0) return err_set(err, "fast_model_forward: empty batch");
    for (int j = 0; j < b->n_seqs; j++) {
        int sq = b->seq[j];
        if (sq < 0 || sq >= kv->max_seqs || !kv->open[sq]) return err_set(err, "fast_model_forward: sequence %d is not open", sq);
        for (int k = 0; k < j; k++)
            if (b->seq[k] == sq) return err_set(err, "fast_model_forward: sequence %d appears twice in one batch", sq);
        if (b->n_tokens[j] <= 0) return err_set(err, "fast_model_forward: chunk %d has %d tokens", j, b->n_tokens[j]);
        int64_t end = kv->len[sq] + b->n_tokens[j];
        if (end > kv->max_seq)
            return err_set(err, "context full: sequence %d would reach %lld positions, the cache holds %lld", sq, (long long)end,
                           (long long)kv->max_seq);
        need += (end + kv->page - 1) / kv->page - kv->n_blocks[sq];
        T += b->n_tokens[j];
    }
    if (T > max_T) return err_set(err, "fast_model_forward: %lld tokens in one batch, the run state holds %lld", (long long)T, (long long)max_T);
    for (int64_t i = 0; i < T; i++)
        if (b->ids[i] < 0 || b->ids[i] >= vocab)
            return err_set(err, "token id %d at batch position %lld is outside the vocabulary [0, %d)", b->ids[i], (long long)i, vocab);
    if (need > kv->n_free)
        return err_set(err, "KV cache full: this batch needs %lld more 64-token blocks, %lld are free", (long long)need,
                       (long long)kv->n_free);
    for (int j = 0; j < b->n_seqs; j++) {
        int sq = b->seq[j];
        int64_t want = (kv->len[sq] + b->n_tokens[j] + kv->page - 1) / kv->page;
        while (kv->n_blocks[sq] < want) kv->blocks[(size_t)sq * kv->max_blocks + kv->n_blocks[sq]++] = kv->free_blocks[--kv->n_free];
    }
    *T_out = T;
    return 0;
}

static int upload(const FastModel *fm, void *dst, const void *src, size_t bytes, Err *err) {
    return fast_cuda_err(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, fm->stream), "fast_model_forward",
                         "cudaMemcpyAsync", err);
}

static int download(const FastModel *fm, void *dst, const void *src, size_t bytes, Err *err) {
    return fast_cuda_err(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, fm->stream), "fast_model_forward",
                         "cudaMemcpyAsync", err);
}

/** What stage() found out about a batch. */
typedef struct {
    int64_t T;       /* tokens */
    int n_rows;      /* rows whose logits are wanted */
    int64_t max_len; /* longest causal length among the tokens */
} Staged;

/**
 * Admits the batch (blocks for every chunk) and uploads its per-token arrays: ids, position,
 * causal length, block-table row, RoPE angles (the reference's rope_cos_sin), logit rows.
 */
static int stage(const FastModel *fm, FastRunState *s, FastKVCache *kv, const FastBatch *b, Staged *g, Err *err) {
    const Config *c = &fm->config;
    int64_t half = c->qk_rope_head_dim / 2, T = 0;
    if (admit(kv, b, s->max_T, c->vocab_size, &T, err)) return -1;
    int bt_stride = 1, n_rows = 0;
    int64_t max_len = 0;
    for (int j = 0; j < b->n_seqs; j++) {
        int sq = b->seq[j];
        if (kv->n_blocks[sq] > bt_stride) bt_stride = kv->n_blocks[sq];
        if (kv->len[sq] + b->n_tokens[j] > max_len) max_len = kv->len[sq] + b->n_tokens[j];
    }
    for (int j = 0, i = 0; j < b->n_seqs; j++) {
        int sq = b->seq[j];
        const int *row = kv->blocks + (size_t)sq * kv->max_blocks;
        for (int k = 0; k < b->n_tokens[j]; k++, i++) {
            int64_t p = kv->len[sq] + k;
            s->h_ids[i] = b->ids[i];
            s->h_pos[i] = (int)p;
            s->h_seq_lens[i] = (int)(p + 1);
            memcpy(s->h_block_table + (size_t)i * bt_stride, row, (size_t)kv->n_blocks[sq] * sizeof(int));
            for (int q = kv->n_blocks[sq]; q < bt_stride; q++) s->h_block_table[(size_t)i * bt_stride + q] = 0;
            rope_cos_sin(s->h_rope_cos + i * half, s->h_rope_sin + i * half, p, &fm->host->rope);
            if (b->all_logits || k == b->n_tokens[j] - 1) s->h_logit_rows[n_rows++] = i;
        }
    }
    s->bt_stride = bt_stride;
    size_t ti = (size_t)T * sizeof(int), tf = (size_t)(T * half) * sizeof(float);
    if (upload(fm, s->ids, s->h_ids, ti, err) || upload(fm, s->pos, s->h_pos, ti, err) ||
        upload(fm, s->seq_lens, s->h_seq_lens, ti, err) ||
        upload(fm, s->block_table, s->h_block_table, ti * (size_t)bt_stride, err) ||
        upload(fm, s->logit_rows, s->h_logit_rows, (size_t)n_rows * sizeof(int), err) ||
        (half > 0 && (upload(fm, s->rope_cos, s->h_rope_cos, tf, err) || upload(fm, s->rope_sin, s->h_rope_sin, tf, err))))
        return -1;
    g->T = T, g->n_rows = n_rows, g->max_len = max_len;
    return 0;
}

/** out [T][D] = table[ids] (ids on the device, checked on the host by admit). */
static int embed(const FastModel *fm, FastRunState *s, float *out, const Tensor *table, int64_t T, Err *err) {
    int64_t D = fm->config.hidden_size, V = fm->config.vocab_size;
    return table->dtype == DT_BF16
               ? embedding_gather_cuda(out, FAST_F32, (const uint16_t *)table->data, V, D, s->ids, T, NULL, fm->stream, err)
               : gather_rows_cuda(out, D, (const float *)table->data, D, s->ids, T, 1, D, fm->stream, err);
}

/**
 * The device end of a forward, shared by the main model and the MTP module: normed =
 * RMSNorm(s->h)·norm_w, logits of the staged rows through @p head (FP32 like the reference:
 * FP8_DEQUANT), and their argmax when @p want_argmax.
 */
static int finish_device(const FastModel *fm, FastRunState *s, const Staged *g, const float *norm_w, const Tensor *head,
                         int want_logits, int want_argmax, Err *err) {
    const Config *c = &fm->config;
    int64_t D = c->hidden_size, V = c->vocab_size, T = g->T;
    cudaStream_t st = fm->stream;
    if (rmsnorm_forward_cuda(s->normed, FAST_F32, D, s->h, FAST_F32, D, norm_w, T, D, (float)c->rms_norm_eps, NULL, st, err))
        return -1;
    if (!want_logits && !want_argmax) return 0;
    const float *x = s->normed;
    if (g->n_rows < T) {
        if (gather_rows_cuda(s->sel, D, s->normed, D, s->logit_rows, g->n_rows, 1, D, st, err)) return -1;
        x = s->sel;
    }
    if (fast_linear_forward(fm, s, s->logits, V, x, D, g->n_rows, head, NULL, 1, FP8_DEQUANT, err)) return -1;
    return want_argmax ? argmax_rows_cuda(s->argmax, s->logits, g->n_rows, V, st, err) : 0;
}

/** The host end: downloads, a stream synchronization, and the sequences' new lengths. */
static int finish_host(const FastModel *fm, FastRunState *s, FastKVCache *kv, const FastBatch *b, const Staged *g,
                       float *logits, int *argmax, float *hidden, float *normed, Err *err) {
    int64_t D = fm->config.hidden_size, V = fm->config.vocab_size, T = g->T;
    if ((hidden && download(fm, hidden, s->h, (size_t)(T * D) * sizeof(float), err)) ||
        (normed && download(fm, normed, s->normed, (size_t)(T * D) * sizeof(float), err)) ||
        (argmax && download(fm, argmax, s->argmax, (size_t)g->n_rows * sizeof(int), err)) ||
        (logits && download(fm, logits, s->logits, (size_t)g->n_rows * (size_t)V * sizeof(float), err)))
        return -1;
    if (fast_cuda_err(cudaStreamSynchronize(fm->stream), "fast_model_forward", "cudaStreamSynchronize", err)) return -1;
    for (int j = 0; j < b->n_seqs; j++) kv->len[b->seq[j]] += b->n_tokens[j];
    return 0;
}

/** The main model's device work for a staged batch: embedding, blocks, final norm, lm_head. */
static int main_device(const FastModel *fm, FastRunState *s, FastKVCache *kv, const Staged *g, int want_logits,
                       int want_argmax, Err *err) {
    /* h0 = Emb[token] (no scaling, docs/model.md §2) */
    if (embed(fm, s, s->h, &fm->w.embed_tokens, g->T, err)) return -1;
    for (int l = 0; l < fm->config.num_hidden_layers; l++)
        if (fast_block_forward(fm, s, kv, l, l, g->T, g->max_len, err)) return -1;
    /* logits = lm_head(norm(h)) */
    return finish_device(fm, s, g, fm->w.norm, &fm->w.lm_head, want_logits, want_argmax, err);
}

/** The MLA kernel's split count for this batch (0 where the generic attention runs): part of a graph's shape. */
static int graph_splits(const FastModel *fm, const FastKVCache *kv, const Staged *g) {
    const Config *c = &fm->config;
    if (!fast_mla_uses_kernel(c, kv)) return 0;
    return mla_decode_num_splits((int)g->T, c->num_attention_heads, (int)g->max_len);
}

/**
 * Runs main_device through a CUDA graph of this batch shape: replays a captured one, or captures
 * it the second time the shape comes (the first runs eagerly). Returns 1 when the caller must run
 * eagerly, 0 on success, -1 on an error. A capture that fails switches graphs off for this run
 * state: nothing was enqueued.
 */
static int main_device_graph(const FastModel *fm, FastRunState *s, FastKVCache *kv, const Staged *g, int want_logits,
                             int want_argmax, Err *err) {
    if (!s->graphs_on || s->ep) return 1;
    int splits = graph_splits(fm, kv, g), logits = want_logits || want_argmax, argmax = want_argmax, lru = 0, seen = -1;
    for (int i = 0; i < FAST_GRAPHS; i++) {
        FastGraph *q = &s->graphs[i];
        if (q->used && q->T == g->T && q->n_rows == g->n_rows && q->bt_stride == s->bt_stride && q->splits == splits &&
            q->logits == logits && q->argmax == argmax) {
            q->used = ++s->tick;
            if (!q->exec) { /* seen once, eagerly: capture it now */
                seen = i;
                break;
            }
            s->launches++;
            return fast_cuda_err(cudaGraphLaunch(q->exec, fm->stream), "fast_model_forward", "cudaGraphLaunch", err);
        }
        if (s->graphs[i].used < s->graphs[lru].used) lru = i;
    }
    if (seen < 0) {
        /* A shape's first forward runs eagerly: the launchers' one-time setup (shared-memory
         * attributes, descriptors) happens outside a capture; the second one is captured. */
        FastGraph *q = &s->graphs[lru];
        if (q->exec) cudaGraphExecDestroy(q->exec);
        *q = (FastGraph){ g->T, g->n_rows, s->bt_stride, splits, logits, argmax, NULL, ++s->tick };
        return 1;
    }
    lru = seen;
    if (cudaStreamBeginCapture(fm->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        cudaGetLastError();
        s->graphs_on = 0;
        return 1;
    }
    int rc = main_device(fm, s, kv, g, logits, argmax, err);
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(fm->stream, &graph);
    cudaGraphExec_t exec = NULL;
    if (!rc && e == cudaSuccess) e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (rc || e != cudaSuccess) {
        cudaGetLastError();
        s->graphs_on = 0; /* e.g. a launcher that is not capturable: run eagerly from now on */
        return 1;
    }
    FastGraph *q = &s->graphs[lru];
    if (q->exec) cudaGraphExecDestroy(q->exec);
    *q = (FastGraph){ g->T, g->n_rows, s->bt_stride, splits, logits, argmax, exec, ++s->tick };
    s->captures++;
    s->launches++;
    return fast_cuda_err(cudaGraphLaunch(exec, fm->stream), "fast_model_forward", "cudaGraphLaunch", err);
}

int fast_model_forward(const FastModel *fm, FastRunState *s, FastKVCache *kv, const FastBatch *b, float *logits,
                       int *argmax, float *hidden, float *normed, Err *err) {
    Staged g;
    if (stage(fm, s, kv, b, &g, err)) return -1;
    int want_logits = logits != NULL || argmax != NULL, rc = main_device_graph(fm, s, kv, &g, want_logits, argmax != NULL, err);
    if (rc == 1) rc = main_device(fm, s, kv, &g, want_logits, argmax != NULL, err);
    if (rc) return -1;
    return finish_host(fm, s, kv, b, &g, logits, argmax, hidden, normed, err);
}

int fast_mtp_forward(const FastModel *fm, FastRunState *s, FastKVCache *mtp_kv, const FastBatch *b, const float *h,
                     float *logits, int *argmax, float *normed, Err *err) {
    const Config *c = &fm->config;
    int64_t D = c->hidden_size;
    float eps = (float)c->rms_norm_eps;
    cudaStream_t st = fm->stream;
    if (fm->w.n_mtp < 1) return err_set(err, "fast_mtp_forward: the MTP module was not uploaded (FastOptions.mtp)");
    const MTPWeights *w = &fm->w.mtp[0];
    Staged g;
    if (stage(fm, s, mtp_kv, b, &g, err)) return -1;
    /* cat = [ enorm(Emb(x_{p+1})) | hnorm(h_p) ]  (embedding first, docs/model.md §7.2), z = eh_proj · cat */
    if (upload(fm, s->mtp_h, h, (size_t)(g.T * D) * sizeof(float), err) || embed(fm, s, s->x, &w->embed_tokens, g.T, err) ||
        rmsnorm_forward_cuda(s->cat, FAST_F32, 2 * D, s->x, FAST_F32, D, w->enorm, g.T, D, eps, NULL, st, err) ||
        rmsnorm_forward_cuda(s->cat + D, FAST_F32, 2 * D, s->mtp_h, FAST_F32, D, w->hnorm, g.T, D, eps, NULL, st, err) ||
        fast_linear_forward(fm, s, s->h, D, s->cat, 2 * D, g.T, &w->eh_proj, NULL, 1, fm->fp8, err))
        return -1;
    /* the module's decoder block (weights: layer N of the tables; keys: layer 0 of its own cache) */
    if (fast_block_forward(fm, s, mtp_kv, c->num_hidden_layers, 0, g.T, g.max_len, err)) return -1;
    /* out = shared_head.norm(z), logits = shared_head.head(out) */
    if (finish_device(fm, s, &g, w->shared_head_norm, &w->shared_head_head, logits || argmax, argmax != NULL, err)) return -1;
    return finish_host(fm, s, mtp_kv, b, &g, logits, argmax, NULL, normed, err);
}
