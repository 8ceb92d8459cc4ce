/**
 * @file block.c
 * @brief Decoder block forward, backward and activation layout (docs/model.md §2).
 *
 *   forward:  h_mid = h_in + MLA(attn_norm(h_in));   h_out = h_mid + FFN(ffn_norm(h_mid))
 *   backward: the residual adds pass dh through unchanged, each branch adds its own term:
 *             dh_mid = dh_out + ffn_normᵀ FFNᵀ dh_out;   dh_in = dh_mid + attn_normᵀ MLAᵀ dh_mid
 * The gradient of the activations uses a second LayerActs (same layout) as scratch, so every
 * intermediate has a gradient buffer of its own shape.
 */
#include "block.h"

#include <string.h>

#include "rmsnorm.h"


void layer_acts_layout(LayerActs *a, const Config *c, const LayerActsSpec *s, Arena *ar) {
    int64_t T = s->T, D = c->hidden_size, H = c->num_attention_heads, Dq = c->q_lora_rank;
    int64_t Dc = c->kv_lora_rank, Dr = c->qk_rope_head_dim, Dn = c->qk_nope_head_dim, Dv = c->v_head_dim;
    int64_t E = c->n_routed_experts, K = c->num_experts_per_tok, Ie = c->moe_intermediate_size;
    int64_t Is = (int64_t)c->n_shared_experts * Ie;
    memset(a, 0, sizeof *a);
    if (s->training) {
        ARENA_TAKE(ar, a->h_in, T * D);
        ARENA_TAKE(ar, a->h_mid, T * D);
    }
    ARENA_TAKE(ar, a->x_attn, T * D);
    ARENA_TAKE(ar, a->rstd_attn, T);
    MLAActs *m = &a->mla;
    ARENA_TAKE(ar, m->c_q, T * Dq);
    ARENA_TAKE(ar, m->c_q_norm, T * Dq);
    ARENA_TAKE(ar, m->rstd_q, T);
    ARENA_TAKE(ar, m->q, T * H * (Dn + Dr));
    ARENA_TAKE(ar, m->kv_a, T * (Dc + Dr));
    ARENA_TAKE(ar, m->c_kv, T * Dc);
    ARENA_TAKE(ar, m->rstd_kv, T);
    ARENA_TAKE(ar, m->k_pe, T * Dr);
    if (s->attn == ATTN_NAIVE) ARENA_TAKE(ar, m->kv, T * H * (Dn + Dv));
    else {
        ARENA_TAKE(ar, m->q_abs, T * H * Dc);
        ARENA_TAKE(ar, m->u, T * H * Dc);
    }
    if (s->att_stride > 0) {
        ARENA_TAKE(ar, m->att, T * H * s->att_stride);
        m->att_stride = s->att_stride;
    }
    ARENA_TAKE(ar, m->o, T * H * Dv);
    ARENA_TAKE(ar, a->attn_out, T * D);
    ARENA_TAKE(ar, a->x_ffn, T * D);
    ARENA_TAKE(ar, a->rstd_ffn, T);
    if (s->dense) {
        ARENA_TAKE(ar, a->dense.h_gate, T * c->intermediate_size);
        ARENA_TAKE(ar, a->dense.h_up, T * c->intermediate_size);
        ARENA_TAKE(ar, a->dense.h_act, T * c->intermediate_size);
    }
    if (s->moe) {
        MoEActs *e = &a->moe;
        ARENA_TAKE(ar, e->logits, T * E);
        ARENA_TAKE(ar, e->scores, T * E);
        ARENA_TAKE(ar, e->idx, T * K);
        ARENA_TAKE(ar, e->weights, T * K);
        ARENA_TAKE(ar, e->perm, T * K);
        ARENA_TAKE(ar, e->expert_start, E + 1);
        ARENA_TAKE(ar, e->x_perm, T * K * D);
        ARENA_TAKE(ar, e->routed.h_gate, T * K * Ie);
        ARENA_TAKE(ar, e->routed.h_up, T * K * Ie);
        ARENA_TAKE(ar, e->routed.h_act, T * K * Ie);
        ARENA_TAKE(ar, e->y_perm, T * K * D);
        if (Is > 0) {
            ARENA_TAKE(ar, e->shared.h_gate, T * Is);
            ARENA_TAKE(ar, e->shared.h_up, T * Is);
            ARENA_TAKE(ar, e->shared.h_act, T * Is);
            ARENA_TAKE(ar, e->y_shared, T * D);
        }
    }
    ARENA_TAKE(ar, a->ffn_out, T * D);
}

void block_forward(float *h, int64_t T, int64_t pos0, const LayerWeights *w, LayerCache *cache, LayerActs *a,
                   const ForwardContext *ctx) {
    const Config *c = ctx->cfg;
    int64_t D = c->hidden_size;
    float eps = (float)c->rms_norm_eps;
    if (a->h_in) memcpy(a->h_in, h, (size_t)(T * D) * sizeof *h);
    /* h = h + MLA(attn_norm(h)) */
    rmsnorm_forward(a->x_attn, D, h, D, w->input_layernorm, T, D, eps, a->rstd_attn);
    mla_forward(a->attn_out, a->x_attn, T, pos0, w, cache, &a->mla, ctx);
    for (int64_t i = 0; i < T * D; i++) h[i] += a->attn_out[i];
    if (a->h_mid) memcpy(a->h_mid, h, (size_t)(T * D) * sizeof *h);
    /* h = h + FFN(ffn_norm(h)), dense for the first layers, MoE after (docs/model.md §5.4) */
    rmsnorm_forward(a->x_ffn, D, h, D, w->post_attention_layernorm, T, D, eps, a->rstd_ffn);
    if (w->is_moe && ctx->moe_hook) {
        /* A hook from above (expert parallelism): a failure is recorded on it and the output zeroed. */
        MoeHook *hook = ctx->moe_hook;
        if (hook->failed || hook->forward(hook, a->ffn_out, a->x_ffn, T, w, &a->moe, ctx, &hook->err)) {
            hook->failed = 1;
            memset(a->ffn_out, 0, (size_t)(T * D) * sizeof *a->ffn_out);
        }
    } else if (w->is_moe) moe_forward(a->ffn_out, a->x_ffn, T, w, &a->moe, ctx);
    else ffn_forward(a->ffn_out, a->x_ffn, T, &w->mlp, &a->dense, ctx->fp8, &ctx->lin);
    for (int64_t i = 0; i < T * D; i++) h[i] += a->ffn_out[i];
}

void block_backward(float *dh, int64_t T, const LayerWeights *w, const LayerWeights *dw, const LayerCache *cache,
                    LayerCache *dcache, const LayerActs *a, LayerActs *da, double balance_alpha,
                    const ForwardContext *ctx) {
    int64_t D = ctx->cfg->hidden_size;
    DSV3_ASSERT(a->h_in && a->h_mid);
    /* h_out = h_mid + FFN(ffn_norm(h_mid)) */
    if (w->is_moe) moe_backward(da->x_ffn, dw, dh, a->x_ffn, T, w, &a->moe, &da->moe, balance_alpha, ctx);
    else ffn_backward(da->x_ffn, &dw->mlp, dh, a->x_ffn, T, &w->mlp, &a->dense, &da->dense, ctx->fp8, &ctx->lin);
    rmsnorm_backward(dh, D, f32_mut(dw->post_attention_layernorm), da->x_ffn, D, a->h_mid, D, w->post_attention_layernorm,
                     a->rstd_ffn, T, D);
    /* h_mid = h_in + MLA(attn_norm(h_in)) */
    mla_backward(da->x_attn, dw, dh, a->x_attn, T, w, cache, dcache, &a->mla, &da->mla, ctx);
    rmsnorm_backward(dh, D, f32_mut(dw->input_layernorm), da->x_attn, D, a->h_in, D, w->input_layernorm, a->rstd_attn, T, D);
}
