/**
 * @file mla_backward.c
 * @brief Backward of Multi-head Latent Attention, naive form (paper §2.1.1 eqs. 1–11; docs/model.md §3.1–3.2).
 *
 * Shapes: T tokens (positions 0..T−1, one whole sequence), D hidden, H heads, Dq q_lora_rank,
 * Dc kv_lora_rank, Dn qk_nope_head_dim, Dr qk_rope_head_dim, Dv v_head_dim, Dqk = Dn + Dr.
 *
 * The forward (mla.c), read bottom-up, each line with the gradient it produces:
 *
 *   y    = W_O o                      do = W_Oᵀ dy                 dW_O   += dy oᵀ
 *   o_h  = Σ_j P_h(j) v_h(j)          dP_h(j) = do_h·v_h(j)         dv_h(j) += P_h(j) do_h
 *   P_h  = softmax_j(s_h(j))          ds_h(j) = P_h(j)(dP_h(j) − Σ_i P_h(i) dP_h(i))
 *   s_h(j) = scale · q_h·k_h(j)       dq_h += scale Σ_j ds_h(j) k_h(j),   dk_h(j) += scale ds_h(j) q_h
 *   k_h(j) = [k_nope_h(j) | k_pe(j)]  dk_pe(j) = Σ_h dk_h(j)[Dn:]   (the rope key is shared by all heads)
 *   [k_nope_h | v_h] = W_UKV ĉ_kv     dĉ_kv = W_UKVᵀ [dk_nope | dv],  dW_UKV += [dk_nope | dv] ĉ_kvᵀ
 *   k_pe = RoPE(kv_a[Dc:])            dkv_a[Dc:] = RoPEᵀ dk_pe       (rotation by −angle)
 *   ĉ_kv = RMSNorm(kv_a[:Dc])         dkv_a[:Dc] = RMSNorm backward  (kv_a_layernorm gradient too)
 *   kv_a = W_DKV x                    dx += W_DKVᵀ dkv_a,  dW_DKV += dkv_a xᵀ
 *   q_pe_h = RoPE(q_h[Dn:])           dq_h[Dn:] ← RoPEᵀ dq_h[Dn:]
 *   q = W_UQ ĉ_q                      dĉ_q = W_UQᵀ dq,  dW_UQ += dq ĉ_qᵀ
 *   ĉ_q = RMSNorm(c_q)                dc_q = RMSNorm backward        (q_a_layernorm gradient too)
 *   c_q = W_DQ x                      dx += W_DQᵀ dc_q,  dW_DQ += dc_q xᵀ
 *   (q_lora_rank null: q = W_Q x      dx += W_Qᵀ dq,  dW_Q += dq xᵀ — docs/model.md §13.2)
 *
 * Causality: query t sees keys j ≤ t, so dk(j), dv(j) collect from queries t ≥ j. The forward
 * kept the probabilities P (a->att) and the cache kept the rotated keys and the values, so
 * nothing is recomputed. Heads are independent until the k_pe sum, which lets the attention
 * part run one head per thread (each head writes only its own slices) with a fixed order
 * inside a head, so the result does not depend on the thread count.
 */
#include <string.h>

#include "mla.h"
#include "rmsnorm.h"
#include "rope.h"

void mla_backward(float *dx, const LayerWeights *dw, const float *dy, const float *x, int64_t T, const LayerWeights *w,
                  const LayerCache *cache, LayerCache *dcache, const MLAActs *a, MLAActs *da, const ForwardContext *ctx) {
    const Config *c = ctx->cfg;
    int64_t H = c->num_attention_heads, Dn = c->qk_nope_head_dim, Dr = c->qk_rope_head_dim, Dv = c->v_head_dim;
    int64_t Dq = c->q_lora_rank, Dc = c->kv_lora_rank, Dqk = Dn + Dr, Dkv = Dn + Dv, half = Dr / 2;
    float scale = c->softmax_scale;
    DSV3_ASSERT(ctx->attn == ATTN_NAIVE && a->att && a->att_stride >= T && da->att);
    /* y = W_O o */
    linear_backward(da->o, tensor_f32_mut(&dw->o_proj), dy, a->o, T, &w->o_proj, ctx->fp8, &ctx->lin);
    /* Attention, one head per thread. da->att rows serve as dP scratch. */
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < H; h++) {
        for (int64_t t = 0; t < T; t++) {
            int64_t S = t + 1;
            const float *P = a->att + (t * H + h) * a->att_stride, *q = a->q + (t * H + h) * Dqk;
            const float *dout = da->o + (t * H + h) * Dv;
            float *dP = da->att + (t * H + h) * a->att_stride, *dq = da->q + (t * H + h) * Dqk;
            float sum = 0.0f;
            for (int64_t j = 0; j < S; j++) {
                dP[j] = dot_f32(dout, cache->v + (j * H + h) * Dv, Dv);
                sum += P[j] * dP[j];
            }
            for (int64_t j = 0; j < S; j++) {
                float ds = scale * P[j] * (dP[j] - sum); /* softmax backward, times the logit scale */
                const float *k = cache->k + (j * H + h) * Dqk;
                float *dk = dcache->k + (j * H + h) * Dqk, *dv = dcache->v + (j * H + h) * Dv;
                for (int64_t d = 0; d < Dqk; d++) {
                    dq[d] += ds * k[d];
                    dk[d] += ds * q[d];
                }
                for (int64_t d = 0; d < Dv; d++) dv[d] += P[j] * dout[d];
            }
        }
    }
    /* Split the key/value gradients back into kv_b_proj's output rows and the shared rope key. */
    for (int64_t t = 0; t < T; t++) {
        float *dkpe = da->k_pe + t * Dr;
        for (int64_t h = 0; h < H; h++) {
            const float *dk = dcache->k + (t * H + h) * Dqk, *dv = dcache->v + (t * H + h) * Dv;
            float *dkv = da->kv + (t * H + h) * Dkv;
            memcpy(dkv, dk, (size_t)Dn * sizeof *dkv);
            memcpy(dkv + Dn, dv, (size_t)Dv * sizeof *dkv);
            for (int64_t d = 0; d < Dr; d++) dkpe[d] += dk[Dn + d];
        }
    }
    /* [k_nope | v] = W_UKV ĉ_kv */
    linear_backward(da->c_kv, tensor_f32_mut(&dw->kv_b_proj), da->kv, a->c_kv, T, &w->kv_b_proj, ctx->fp8, &ctx->lin);
    /* kv_a = [c_kv | k_pe] before norm/rope: the rope part goes back through the rotation, the
     * latent part through kv_a_layernorm. */
    for (int64_t t = 0; t < T; t++) {
        float *dst = da->kv_a + t * (Dc + Dr) + Dc;
        memcpy(dst, da->k_pe + t * Dr, (size_t)Dr * sizeof *dst);
        rope_backward(dst, ctx->rope_cos + t * half, ctx->rope_sin + t * half, (int)Dr);
    }
    rmsnorm_backward(da->kv_a, Dc + Dr, f32_mut(dw->kv_a_layernorm), da->c_kv, Dc, a->kv_a, Dc + Dr, w->kv_a_layernorm,
                     a->rstd_kv, T, Dc);
    linear_backward(dx, tensor_f32_mut(&dw->kv_a_proj_with_mqa), da->kv_a, x, T, &w->kv_a_proj_with_mqa, ctx->fp8, &ctx->lin);
    /* Queries: undo the rope on each head's q_pe gradient, then q_b_proj, q_a_layernorm, q_a_proj. */
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++)
            rope_backward(da->q + (t * H + h) * Dqk + Dn, ctx->rope_cos + t * half, ctx->rope_sin + t * half, (int)Dr);
    if (Dq == 0) { /* q_lora_rank null: q = W_Q x */
        linear_backward(dx, tensor_f32_mut(&dw->q_proj), da->q, x, T, &w->q_proj, ctx->fp8, &ctx->lin);
        return;
    }
    linear_backward(da->c_q_norm, tensor_f32_mut(&dw->q_b_proj), da->q, a->c_q_norm, T, &w->q_b_proj, ctx->fp8, &ctx->lin);
    rmsnorm_backward(da->c_q, Dq, f32_mut(dw->q_a_layernorm), da->c_q_norm, Dq, a->c_q, Dq, w->q_a_layernorm, a->rstd_q, T,
                     Dq);
    linear_backward(dx, tensor_f32_mut(&dw->q_a_proj), da->c_q, x, T, &w->q_a_proj, ctx->fp8, &ctx->lin);
}
