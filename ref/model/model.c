/**
 * @file model.c
 * @brief The forward pass of the whole model over a chunk of tokens (official Transformer.forward;
 *        docs/model.md §2, with attention §3, RoPE §4, MoE §5), and the run state it works in.
 *        Loading a checkpoint is model_load.c.
 *
 * Shapes: T tokens of the chunk at positions pos0 … pos0+T−1 (pos0 = kv->len), D hidden, V vocab,
 * L = num_hidden_layers.
 *
 *     h_0    = Emb[ids]                                  embedding rows, no scaling      (embed.c)
 *     cos/sin of p·θ'_i for p = pos0 … pos0+T−1          YaRN frequencies, FP32 angles    (rope.c)
 *     h_ℓ+1  = Block_ℓ(h_ℓ)  for ℓ = 0 … L−1                                              (block.c)
 *              h ← h + MLA(input_layernorm(h))            attends to cache[0 … p]         (mla.c)
 *              h ← h + FFN(post_attention_layernorm(h))   dense SwiGLU for ℓ < first_k_dense_replace,
 *                                                         else MoE: routed experts + shared (moe.c)
 *     n      = RMSNorm(h_L), weight model.norm                                           (rmsnorm.c)
 *     logits = n · lm_headᵀ                              for the last n_logits positions only
 *
 * Outputs besides the logits: h_L (`hidden`, the residual stream before the final norm) and n
 * (`normed`, the lm_head input, which the MTP module takes as its h: docs/model.md §7.2). A chunk
 * longer than the run state's max_T is cut into pieces that continue the cache; since every op but
 * attention is per token and attention reads the same cache either way, the pieces change no result.
 */
#include "model.h"

#include <stdlib.h>
#include <string.h>

#include "embed.h"
#include "rmsnorm.h"

/* ------------------------------------------------------------------------------------- */
/* forward                                                                                 */

/** One chunk of at most max_T tokens: embed, blocks, final norm, optional logits. */
static void forward_chunk(const Model *m, RunState *s, KVCache *kv, const int *ids, int64_t T, float *logits,
                          int64_t n_logits, float *hidden, float *normed) {
    const Config *c = &m->config;
    int64_t D = c->hidden_size, pos0 = kv->len;
    /* h0 = Emb[token] (no scaling, docs/model.md §2) */
    embedding_forward(s->h, ids, T, &m->w.embed_tokens);
    runstate_set_positions(s, m, pos0, T);
    for (int l = 0; l < c->num_hidden_layers; l++)
        block_forward(s->h, T, pos0, &m->w.layers[l], &kv->layers[l], &s->acts, &s->ctx);
    if (hidden) memcpy(hidden, s->h, (size_t)(T * D) * sizeof(float));
    rmsnorm_forward(s->normed, D, s->h, D, m->w.norm, T, D, (float)c->rms_norm_eps, NULL);
    if (normed) memcpy(normed, s->normed, (size_t)(T * D) * sizeof(float));
    if (logits && n_logits > 0)
        linear_forward(logits, s->normed + (T - n_logits) * D, n_logits, &m->w.lm_head, FP8_DEQUANT, &s->ctx.lin);
    kv->len += T;
}

int forward_status(const ForwardContext *ctx, Err *err) {
    if (!ctx->moe_hook || !ctx->moe_hook->failed) return 0;
    return err_set(err, "%s", ctx->moe_hook->err.msg);
}

int model_forward(const Model *m, RunState *s, KVCache *kv, const int *ids, int64_t T, float *logits,
                  int64_t n_logits, float *hidden, float *normed, Err *err) {
    const Config *c = &m->config;
    int64_t D = c->hidden_size, V = c->vocab_size;
    if (kv->len + T > kv->max_seq || kv->len + T > s->max_seq)
        return err_set(err, "context full: %lld + %lld tokens exceed the %lld positions allocated", (long long)kv->len,
                       (long long)T, (long long)(kv->max_seq < s->max_seq ? kv->max_seq : s->max_seq));
    if (kv->mode != s->attn) return err_set(err, "KV cache and run state use different attention forms");
    DSV3_ASSERT(n_logits <= T);
    for (int64_t t0 = 0; t0 < T; t0 += s->max_T) {
        int64_t n = T - t0 < s->max_T ? T - t0 : s->max_T;
        /* Logits rows of this piece: those among the last n_logits positions of the whole chunk. */
        int64_t first_logit = T - n_logits, lo = t0 > first_logit ? t0 : first_logit;
        int64_t k = t0 + n > lo ? t0 + n - lo : 0;
        forward_chunk(m, s, kv, ids + t0, n, logits ? logits + (lo - first_logit) * V : NULL, k,
                      hidden ? hidden + t0 * D : NULL, normed ? normed + t0 * D : NULL);
    }
    return forward_status(&s->ctx, err);
}

/* ------------------------------------------------------------------------------------- */
/* run state                                                                               */


static void runstate_layout(RunState *s, const Config *c, int64_t max_T, int64_t max_seq, Arena *ar) {
    int64_t D = c->hidden_size, half = c->qk_rope_head_dim / 2;
    int64_t max_in = config_max_linear_in(c);
    ARENA_TAKE(ar, s->h, max_T * D);
    ARENA_TAKE(ar, s->normed, max_T * D);
    ARENA_TAKE(ar, s->emb, max_T * D);
    ARENA_TAKE(ar, s->cat, max_T * 2 * D);
    ARENA_TAKE(ar, s->rope_cos, max_T * half);
    ARENA_TAKE(ar, s->rope_sin, max_T * half);
    float *lin = ARENA_TAKE(ar, lin, linear_scratch_floats(max_T, max_in));
    if (lin) {
        s->ctx.lin = linear_scratch_init(lin, max_T, max_in);
        s->ctx.lin.scale_ue8m0 = c->scale_ue8m0; /* V3.1's power-of-two activation scales (docs/model.md §13.4) */
    }
    ARENA_TAKE(ar, s->ctx.att_row, max_seq * linear_scratch_threads());
    s->ctx.att_row_len = max_seq;
    ARENA_TAKE(ar, s->ctx.gate_work, 2 * ((int64_t)c->n_routed_experts + c->n_group));
    LayerActsSpec spec = { max_T, 0, 0, 0, s->attn, 0 };
    for (int l = 0; l < c->num_hidden_layers + c->num_nextn_predict_layers; l++) {
        if (config_layer_is_moe(c, l)) spec.moe = 1;
        else spec.dense = 1;
    }
    layer_acts_layout(&s->acts, c, &spec, ar);
}

int runstate_init(RunState *s, const Model *m, int64_t max_T, int64_t max_seq, AttnMode attn, Fp8Mode fp8, Err *err) {
    const Config *c = &m->config;
    memset(s, 0, sizeof *s);
    s->max_T = max_T;
    s->max_seq = max_seq;
    s->attn = attn;
    s->fp8 = fp8;
    Arena count = { 0 };
    runstate_layout(s, c, max_T, max_seq, &count);
    if (count.overflow) return err_set(err, "activation buffers for %lld tokens overflow", (long long)max_T);
    s->mem = aligned_alloc(64, (count.used + 63) & ~(size_t)63);
    if (!s->mem)
        return err_set(err, "out of memory allocating %.1f MiB of activations", (double)count.used / 1048576.0);
    s->bytes = count.used;
    Arena ar = { (char *)s->mem, 0, count.used, 0 };
    runstate_layout(s, c, max_T, max_seq, &ar);
    DSV3_ASSERT(!ar.overflow);
    s->ctx.cfg = c;
    s->ctx.attn = attn;
    s->ctx.fp8 = fp8;
    s->ctx.rope_cos = s->rope_cos;
    s->ctx.rope_sin = s->rope_sin;
    return 0;
}

void runstate_free(RunState *s) {
    free(s->mem);
    memset(s, 0, sizeof *s);
}

void runstate_set_positions(RunState *s, const Model *m, int64_t pos0, int64_t T) {
    int64_t half = m->config.qk_rope_head_dim / 2;
    for (int64_t t = 0; t < T; t++) rope_cos_sin(s->rope_cos + t * half, s->rope_sin + t * half, pos0 + t, &m->rope);
}
