/**
 * @file mla_gpu.c
 * @brief Multi-head Latent Attention on the GPU, absorbed form (paper §2.1.1 eqs. 1–11; docs/model.md §3.3):
 *        ref/model/mla.c's mla_forward with ATTN_ABSORB, for the T tokens of a batch of sequences.
 *
 *   c_q = W_DQ x,  ĉ_q = RMSNorm(c_q),  q = W_UQ ĉ_q = per head [q_nope | q_pe],  q_pe ← RoPE(q_pe)
 *   (q_lora_rank null: q = W_Q x, one q_proj)
 *   [c_kv | k_pe] = W_DKV x,  ĉ_kv = RMSNorm(c_kv),  k_pe ← RoPE(k_pe)   → written to the paged cache
 *   q_abs_h = W_UK[h]ᵀ q_nope_h                    (gemm_batched_cuda over heads)
 *   u_h = Σ_t softmax(scale·(q_abs_h·ĉ_kv(t) + q_pe_h·k_pe(t))) ĉ_kv(t)   t ≤ pos (causal)
 *   o_h = W_UV[h] u_h,  y = W_O concat_h(o_h)
 * Attention runs on the tensor-core decode kernel (mla_decode_cuda: bf16 cache, Dc = 512,
 * Dr = 64, H % 64 = 0 — DeepSeek-V3's shapes), every query token as its own "request" with
 * seq_len = pos + 1, so prefill chunks use it too; other shapes or an FP32 cache use the generic
 * kernel. Writing the chunk's keys before attending is what makes a chunk see itself causally.
 */
#include "layers_gpu.h"

#include "generic.h"
#include "mla_decode.h"
#include "ops.h"

int fast_mla_kernel_shapes(const Config *c) {
    return c->kv_lora_rank == MLA_DC && c->qk_rope_head_dim == MLA_DR && c->num_attention_heads % MLA_HEADS_PER_CTA == 0;
}

int fast_mla_uses_kernel(const Config *c, const FastKVCache *kv) {
    return fast_mla_kernel_shapes(c) && kv->dtype == FAST_BF16 && kv->page == MLA_PAGE;
}

int fast_mla_forward(const FastModel *fm, FastRunState *s, FastKVCache *kv, int layer, int cache_layer, float *y,
                     const float *x, int64_t T, int64_t max_seq_len, Err *err) {
    const Config *c = &fm->config;
    const LayerWeights *w = fast_block_weights(fm, layer);
    const FastLayer *fl = &fm->layers[layer];
    cudaStream_t st = fm->stream;
    int64_t D = c->hidden_size, H = c->num_attention_heads, Dn = c->qk_nope_head_dim, Dr = c->qk_rope_head_dim;
    int64_t Dv = c->v_head_dim, Dq = c->q_lora_rank, Dc = c->kv_lora_rank, Dqk = Dn + Dr;
    float eps = (float)c->rms_norm_eps;
    /* Queries: down-projection, latent norm, up-projection — or the one q_proj of a config with
     * q_lora_rank null (docs/model.md §13.2) — then RoPE on each head's q_pe. */
    if (Dq > 0 ? fast_linear_forward(fm, s, s->c_q, Dq, x, D, T, &w->q_a_proj, NULL, 1, fm->fp8, err) ||
                     rmsnorm_forward_cuda(s->c_q_norm, FAST_F32, Dq, s->c_q, FAST_F32, Dq, w->q_a_layernorm, T, Dq, eps,
                                          NULL, st, err) ||
                     fast_linear_forward(fm, s, s->q, H * Dqk, s->c_q_norm, Dq, T, &w->q_b_proj, NULL, 1, fm->fp8, err)
               : fast_linear_forward(fm, s, s->q, H * Dqk, x, D, T, &w->q_proj, NULL, 1, fm->fp8, err))
        return -1;
    if (rope_forward_cuda(s->q + Dn, FAST_F32, T, H, Dqk, H * Dqk, s->rope_cos, s->rope_sin, (int)Dr, st, err))
        return -1;
    /* Keys: one down-projection gives [c_kv | k_pe]; normalize c_kv, rotate k_pe in place. */
    if (fast_linear_forward(fm, s, s->kv_a, Dc + Dr, x, D, T, &w->kv_a_proj_with_mqa, NULL, 1, fm->fp8, err) ||
        rmsnorm_forward_cuda(s->c_kv, FAST_F32, Dc, s->kv_a, FAST_F32, Dc + Dr, w->kv_a_layernorm, T, Dc, eps, NULL, st,
                             err) ||
        rope_forward_cuda(s->kv_a + Dc, FAST_F32, T, 1, Dr, Dc + Dr, s->rope_cos, s->rope_sin, (int)Dr, st, err))
        return -1;
    void *cache = (char *)kv->mem + (size_t)cache_layer * (size_t)kv->num_blocks * (size_t)kv->page * (size_t)kv->row *
                                        fast_dtype_size(kv->dtype);
    if (kv_cache_write_cuda(cache, kv->dtype, s->block_table, s->bt_stride, s->pos, s->c_kv, Dc, s->kv_a + Dc, Dc + Dr, T,
                            (int)Dc, (int)Dr, kv->page, st, err))
        return -1;
    /* q_abs[t][h][:] = Σ_d q_nope[t][h][d] · W_UK[h][d][:]   (einsum "shd,hdc->shc") */
    GemmBatchedParams qa = { 0 };
    qa.c = s->q_abs, qa.a = s->q, qa.b = fl->w_uk, qa.b_dtype = FAST_F32;
    qa.batch = H, qa.M = T, qa.N = Dc, qa.K = Dn;
    qa.a_sb = Dqk, qa.a_sm = H * Dqk, qa.a_sk = 1;
    qa.b_sb = Dn * Dc, qa.b_sk = Dc, qa.b_sn = 1;
    qa.c_sb = Dc, qa.c_sm = H * Dc, qa.c_sn = 1;
    if (gemm_batched_cuda(&qa, st, err)) return -1;
    /* u = attention over the latent cache */
    if (fast_mla_uses_kernel(c, kv)) {
        if (copy_rows_cuda(s->q_abs16, FAST_BF16, Dc, s->q_abs, FAST_F32, Dc, T * H, Dc, st, err) ||
            copy_rows_cuda(s->q_pe16, FAST_BF16, Dr, s->q + Dn, FAST_F32, Dqk, T * H, Dr, st, err))
            return -1;
        MlaDecodeParams p = { 0 };
        p.u = s->u, p.q_abs = s->q_abs16, p.q_pe = s->q_pe16, p.kv_cache = cache;
        p.block_table = s->block_table, p.block_table_stride = s->bt_stride, p.seq_lens = s->seq_lens;
        p.B = (int)T, p.H = (int)H, p.max_seq_len = (int)max_seq_len, p.scale = c->softmax_scale;
        p.num_splits = mla_decode_num_splits((int)T, (int)H, (int)max_seq_len);
        if (mla_decode_workspace_bytes((int)T, (int)H, p.num_splits) > s->mla_ws_bytes) p.num_splits = 1;
        p.workspace = s->mla_ws, p.workspace_bytes = s->mla_ws_bytes;
        if (mla_decode_cuda(&p, st, err)) return -1;
    } else {
        MlaAttendParams p = { 0 };
        p.u = s->u, p.q_abs = s->q_abs, p.q_pe = s->q + Dn, p.q_pe_stride_t = H * Dqk, p.q_pe_stride_h = Dqk;
        p.kv_cache = cache, p.cache_dtype = kv->dtype, p.block_table = s->block_table, p.block_table_stride = s->bt_stride;
        p.seq_lens = s->seq_lens, p.T = T, p.H = (int)H, p.Dc = (int)Dc, p.Dr = (int)Dr, p.page = kv->page;
        p.scale = c->softmax_scale;
        if (mla_attend_generic_cuda(&p, st, err)) return -1;
    }
    /* o[t][h][d] = u[t][h] · W_UV[h][d]   (einsum "shc,hdc->shd"), then y = W_O o */
    GemmBatchedParams ov = { 0 };
    ov.c = s->o, ov.a = s->u, ov.b = fl->w_uv, ov.b_dtype = FAST_F32;
    ov.batch = H, ov.M = T, ov.N = Dv, ov.K = Dc;
    ov.a_sb = Dc, ov.a_sm = H * Dc, ov.a_sk = 1;
    ov.b_sb = Dv * Dc, ov.b_sk = 1, ov.b_sn = Dc;
    ov.c_sb = Dv, ov.c_sm = H * Dv, ov.c_sn = 1;
    if (gemm_batched_cuda(&ov, st, err)) return -1;
    return fast_linear_forward(fm, s, y, D, s->o, H * Dv, T, &w->o_proj, NULL, 1, fm->fp8, err);
}
