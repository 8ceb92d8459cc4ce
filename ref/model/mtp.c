/**
 * @file mtp.c
 * @brief The MTP module as the released weights need it (docs/model.md §7.2; rulings §11 #1, #2),
 *        forward and backward:
 *
 *     e   = Emb(x_{p+1})                                    the NEXT token's embedding
 *     h   = main model's hidden at p, AFTER the final norm   (the lm_head input)
 *     z   = eh_proj · [ enorm(e) ; hnorm(h) ]               embedding first
 *     z   = DecoderBlock(z, position p)                     MLA + MoE, its own KV cache
 *     out = shared_head.norm(z);  logits = shared_head.head · out
 *
 * Why not the paper's order. Eq. 21 writes h'_i = M_k [RMSNorm(h_i^{k−1}) ; RMSNorm(Emb(t_{i+k}))]
 * — hidden first. The checkpoint's eh_proj was trained with the halves the other way round:
 * both serving stacks that run these weights (vLLM deepseek_mtp.py, SGLang deepseek_nextn.py)
 * concatenate [enorm(embedding), hnorm(hidden)], and the Megatron-LM maintainers confirmed the
 * released weights follow that order (issue #1588). Feeding hidden-first would multiply each half
 * by the columns learned for the other, which silently ruins the drafts. Likewise "h" is the
 * post-norm hidden (what vLLM/SGLang pass), not the raw residual stream.
 *
 * vLLM also zeroes the embedding at position 0; the golden mtp_logits.f32 of fp8-small do not,
 * and neither do we (it only changes the MTP cache entry of position 0).
 *
 * Backward (training, mtp_module_backward), read bottom-up:
 *     dz    = shared_head.normᵀ dout                      (rmsnorm_backward)
 *     dz'   = blockᵀ dz                                   (block_backward; z' = eh_proj output)
 *     dcat  = eh_projᵀ dz'
 *     de    = enormᵀ dcat[:D]  → scatter-add into the embedding rows of the tokens used
 *     dh   += hnormᵀ dcat[D:]  → the previous depth's (or the main model's post-norm) gradient
 * The head (eq. 23) and the cross-entropy (eq. 24) are the trainer's, because the head is the
 * main model's lm_head shared by every depth (paper §2.2).
 */
#include "mtp.h"

#include <string.h>

#include "embed.h"
#include "rmsnorm.h"

void mtp_module_forward(const int *next_ids, const float *h_prev, int64_t T, int64_t pos0, const MTPWeights *w,
                        LayerCache *cache, MTPActs *a, const ForwardContext *ctx) {
    const Config *c = ctx->cfg;
    int64_t D = c->hidden_size;
    float eps = (float)c->rms_norm_eps;
    /* cat[t] = [ enorm(Emb(x_{p+1})) | hnorm(h_p) ]  (2D wide, embedding first) */
    embedding_forward(a->emb, next_ids, T, &w->embed_tokens);
    rmsnorm_forward(a->cat, 2 * D, a->emb, D, w->enorm, T, D, eps, a->rstd_e);
    rmsnorm_forward(a->cat + D, 2 * D, h_prev, D, w->hnorm, T, D, eps, a->rstd_h);
    linear_forward(a->h, a->cat, T, &w->eh_proj, ctx->fp8, &ctx->lin);
    block_forward(a->h, T, pos0, &w->block, cache, &a->block, ctx);
    rmsnorm_forward(a->normed, D, a->h, D, w->shared_head_norm, T, D, eps, a->rstd_out);
}

void mtp_module_backward(float *dh_prev, const MTPWeights *dw, const float *dnormed, const int *next_ids,
                         const float *h_prev, int64_t T, const MTPWeights *w, const LayerCache *cache, LayerCache *dcache,
                         const MTPActs *a, MTPActs *da, double balance_alpha, const ForwardContext *ctx) {
    int64_t D = ctx->cfg->hidden_size;
    DSV3_ASSERT(a->rstd_e && a->rstd_h && a->rstd_out);
    /* out = shared_head.norm(z) */
    rmsnorm_backward(da->h, D, f32_mut(dw->shared_head_norm), dnormed, D, a->h, D, w->shared_head_norm, a->rstd_out, T, D);
    /* z = block(eh_proj · cat); the block keeps its input (eh_proj's output) in h_in */
    block_backward(da->h, T, &w->block, &dw->block, cache, dcache, &a->block, &da->block, balance_alpha, ctx);
    linear_backward(da->cat, tensor_f32_mut(&dw->eh_proj), da->h, a->cat, T, &w->eh_proj, ctx->fp8, &ctx->lin);
    /* cat = [enorm(e) | hnorm(h_prev)]: each half back through its norm */
    rmsnorm_backward(da->emb, D, f32_mut(dw->enorm), da->cat, 2 * D, a->emb, D, w->enorm, a->rstd_e, T, D);
    embedding_backward(tensor_f32_mut(&dw->embed_tokens), da->emb, next_ids, T, D);
    rmsnorm_backward(dh_prev, D, f32_mut(dw->hnorm), da->cat + D, 2 * D, h_prev, D, w->hnorm, a->rstd_h, T, D);
}

int mtp_forward(const Model *m, int k, RunState *s, KVCache *mtp_kv, const int *next_ids, const float *h, int64_t T,
                float *logits, int64_t n_logits, float *out_normed, Err *err) {
    const Config *c = &m->config;
    int64_t D = c->hidden_size;
    if (k < 0 || k >= m->w.n_mtp) return err_set(err, "the checkpoint has no MTP module %d", k);
    if (mtp_kv->len + T > mtp_kv->max_seq || mtp_kv->len + T > s->max_seq)
        return err_set(err, "MTP context full: %lld + %lld positions", (long long)mtp_kv->len, (long long)T);
    DSV3_ASSERT(T <= s->max_T && n_logits <= T);
    const MTPWeights *w = &m->w.mtp[k];
    int64_t pos0 = mtp_kv->len;
    MTPActs a = { s->emb, NULL, NULL, s->cat, s->h, s->acts, s->normed, NULL };
    runstate_set_positions(s, m, pos0, T);
    mtp_module_forward(next_ids, h, T, pos0, w, &mtp_kv->layers[0], &a, &s->ctx);
    if (out_normed) memcpy(out_normed, s->normed, (size_t)(T * D) * sizeof(float));
    if (logits && n_logits > 0)
        linear_forward(logits, s->normed + (T - n_logits) * D, n_logits, &w->shared_head_head, FP8_DEQUANT, &s->ctx.lin);
    mtp_kv->len += T;
    return forward_status(&s->ctx, err);
}

int64_t mtp_first_chunk(int64_t T, int64_t first) {
    int64_t rows = T - 1, chunk = first - 1 > 0 ? first - 1 : 1;
    return chunk > rows ? rows : chunk;
}

int mtp_logits_sequence(const Model *m, int k, const int *ids, const float *normed, int64_t T, int64_t first,
                        AttnMode attn, Fp8Mode fp8, MoeHook *moe_hook, float *out, Err *err) {
    const Config *c = &m->config;
    int64_t rows = T - 1, chunk = mtp_first_chunk(T, first);
    RunState s;
    KVCache kv;
    if (runstate_init(&s, m, chunk, rows, attn, fp8, err)) return -1;
    s.ctx.moe_hook = moe_hook;
    if (kvcache_init(&kv, c, attn, 1, rows, err)) {
        runstate_free(&s);
        return -1;
    }
    int rc = mtp_forward(m, k, &s, &kv, ids + 1, normed, chunk, out, chunk, NULL, err);
    for (int64_t p = chunk; p < rows && rc == 0; p++)
        rc = mtp_forward(m, k, &s, &kv, ids + p + 1, normed + p * c->hidden_size, 1, out + p * c->vocab_size, 1, NULL, err);
    kvcache_free(&kv);
    runstate_free(&s);
    return rc;
}
