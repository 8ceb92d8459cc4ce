/**
 * @file mtp.c
 * @brief The MTP module as the released weights need it (spec §7.2; rulings §11 #1, #2):
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
 */
#include "mtp.h"

#include <string.h>

#include "rmsnorm.h"

int mtp_forward(const Model *m, int k, RunState *s, KVCache *mtp_kv, const int *next_ids, const float *h, int64_t T,
                float *logits, int64_t n_logits, float *out_normed, Err *err) {
    const Config *c = &m->config;
    const MTPWeights *w = &m->w.mtp[k];
    int64_t D = c->hidden_size;
    float eps = (float)c->rms_norm_eps;
    if (k < 0 || k >= m->w.n_mtp) return err_set(err, "the checkpoint has no MTP module %d", k);
    if (mtp_kv->len + T > mtp_kv->max_seq || mtp_kv->len + T > s->max_seq)
        return err_set(err, "MTP context full: %lld + %lld positions", (long long)mtp_kv->len, (long long)T);
    DSV3_ASSERT(T <= s->max_T && n_logits <= T);
    int64_t pos0 = mtp_kv->len;
    /* cat[t] = [ enorm(Emb(x_{p+1})) | hnorm(h_p) ]  (2D wide) */
    for (int64_t t = 0; t < T; t++) {
        float *cat = s->cat + t * 2 * D;
        tensor_row(&w->embed_tokens, next_ids[t], 0, D, 1, cat);
        rmsnorm_forward(cat, D, cat, D, w->enorm, 1, D, eps, NULL);
        rmsnorm_forward(cat + D, D, h + t * D, D, w->hnorm, 1, D, eps, NULL);
    }
    linear_forward(s->h, s->cat, T, &w->eh_proj, s->fp8, &s->ctx.lin);
    runstate_set_positions(s, m, pos0, T);
    block_forward(s->h, T, pos0, &w->block, &mtp_kv->layers[0], &s->acts, &s->ctx);
    rmsnorm_forward(s->normed, D, s->h, D, w->shared_head_norm, T, D, eps, NULL);
    if (out_normed) memcpy(out_normed, s->normed, (size_t)(T * D) * sizeof(float));
    if (logits && n_logits > 0)
        linear_forward(logits, s->normed + (T - n_logits) * D, n_logits, &w->shared_head_head, FP8_DEQUANT, &s->ctx.lin);
    mtp_kv->len += T;
    return 0;
}

int mtp_logits_sequence(const Model *m, int k, const int *ids, const float *normed, int64_t T, int64_t first,
                        AttnMode attn, Fp8Mode fp8, float *out, Err *err) {
    const Config *c = &m->config;
    int64_t rows = T - 1, chunk = first - 1 > 0 ? first - 1 : 1;
    if (chunk > rows) chunk = rows;
    RunState s;
    KVCache kv;
    if (runstate_init(&s, m, chunk, rows, attn, fp8, err)) return -1;
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
