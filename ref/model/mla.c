/**
 * @file mla.c
 * @brief Multi-head Latent Attention (paper §2.1.1, eqs. 1–11; docs/model.md §3).
 *
 * Shapes: T tokens, D hidden, H heads, Dq q_lora_rank, Dc kv_lora_rank, Dn qk_nope_head_dim,
 * Dr qk_rope_head_dim, Dv v_head_dim, S = pos0+T visible positions.
 *
 *   c_q   = W_DQ x                 ĉ_q  = RMSNorm(c_q)           (q_a_proj, q_a_layernorm)
 *   q     = W_UQ ĉ_q  → per head [q_nope (Dn) | q_pe (Dr)], q_pe ← RoPE_p(q_pe)   (q_b_proj)
 *           (q_lora_rank null — Moonlight, Kimi-VL: q = W_Q x in one step, q_proj; docs/model.md §13.2)
 *   [c_kv | k_pe] = W_DKV x         ĉ_kv = RMSNorm(c_kv), k_pe ← RoPE_p(k_pe)      (kv_a_proj_with_mqa)
 *   naive:  [k_nope_h | v_h] = W_UKV ĉ_kv per head (kv_b_proj rows h·(Dn+Dv) + …)
 *           s_h(p,t) = scale · (q_nope_h·k_nope_h(t) + q_pe_h·k_pe(t))
 *           o_h = Σ_t softmax_t(s_h(p,·)) v_h(t)
 *   absorb: q_nope_h·(W_UK[h] ĉ_kv) = (W_UK[h]ᵀ q_nope_h)·ĉ_kv, so with q_abs_h = W_UK[h]ᵀ q_nope_h
 *           s_h(p,t) = scale · (q_abs_h·ĉ_kv(t) + q_pe_h·k_pe(t))   — keys are the 512+64 latent
 *           u_h = Σ_t P_h(t) ĉ_kv(t),  o_h = W_UV[h] u_h              (W_UV applied after the sum)
 *   y     = W_O concat_h(o_h)           (o_proj)
 * scale = (Dn+Dr)^−½ · mscale² (0.1352337788608801 for V3, docs/model.md §3.5): the √192 stays even in
 * the absorbed form, whose dot products are 576-d. W_UK and W_UV are the two halves of each
 * head's 256 rows in kv_b_proj (docs/model.md §3.1); the absorbed form reads them dequantized, as the
 * official code does (it never runs kv_b_proj through the FP8 GEMM in absorb mode).
 */
#include "mla.h"

#include <math.h>
#include <string.h>

#include "base/threads.h"
#include "rmsnorm.h"
#include "rope.h"

void softmax_inplace(float *x, int64_t n) {
    float m = -INFINITY; /* the max, NaNs skipped as fmaxf would */
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - m);
        sum += x[i];
    }
    float inv = 1.0f / sum;
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

/** Where the probabilities of query (t, h) go: the saved array, or this thread's scratch row. */
static float *att_row(const MLAActs *a, const ForwardContext *ctx, int64_t t, int64_t h, int64_t H) {
    return a->att ? a->att + (t * H + h) * a->att_stride : ctx->att_row + threads_id() * ctx->att_row_len;
}

/** Threads for the T·H queries of a chunk over pos0+T keys of width @p Dk: the queries are
 *  independent, and each runs on one thread in the serial order, so any count gives the same bits. */
static int attention_threads(const ForwardContext *ctx, int64_t T, int64_t H, int64_t pos0, int64_t Dk) {
    return linear_threads(&ctx->lin, T * H * (pos0 + T) * Dk);
}

/** Naive form: materialize k = [k_nope | k_pe] and v per head into the cache, attend with 192-d keys. */
static void attention_naive(int64_t T, int64_t pos0, const LayerWeights *w, LayerCache *cache, MLAActs *a,
                            const ForwardContext *ctx) {
    const Config *c = ctx->cfg;
    int64_t H = c->num_attention_heads, Dn = c->qk_nope_head_dim, Dr = c->qk_rope_head_dim, Dv = c->v_head_dim;
    int64_t Dqk = Dn + Dr, Dkv = Dn + Dv;
    linear_forward(a->kv, a->c_kv, T, &w->kv_b_proj, ctx->fp8, &ctx->lin);
    for (int64_t t = 0; t < T; t++) {
        int64_t p = pos0 + t;
        for (int64_t h = 0; h < H; h++) {
            const float *kv = a->kv + (t * H + h) * Dkv;
            float *k = cache->k + (p * H + h) * Dqk, *v = cache->v + (p * H + h) * Dv;
            memcpy(k, kv, (size_t)Dn * sizeof *k);
            memcpy(k + Dn, a->k_pe + t * Dr, (size_t)Dr * sizeof *k);
            memcpy(v, kv + Dn, (size_t)Dv * sizeof *v);
        }
    }
    /* One query (t, h) per iteration; interleaved over the threads, as later tokens see more keys. */
    int nt = attention_threads(ctx, T, H, pos0, Dqk + Dv);
#pragma omp parallel for schedule(static, 1) num_threads(nt) if (nt > 1)
    for (int64_t th = 0; th < T * H; th++) {
        int64_t t = th / H, h = th % H, S = pos0 + t + 1; /* causal: keys 0 .. pos0+t */
        const float *q = a->q + th * Dqk;
        float *P = att_row(a, ctx, t, h, H), *o = a->o + th * Dv;
        for (int64_t j = 0; j < S; j++) P[j] = c->softmax_scale * dot_f32(q, cache->k + (j * H + h) * Dqk, Dqk);
        softmax_inplace(P, S);
        memset(o, 0, (size_t)Dv * sizeof *o);
        for (int64_t j = 0; j < S; j++) { /* o = Σ_j P_j v_j, ascending j */
            const float *v = cache->v + (j * H + h) * Dv;
            for (int64_t d = 0; d < Dv; d++) o[d] += P[j] * v[d];
        }
    }
}

void mla_attend_absorb(float *u, const float *q_abs, const float *q_pe, int64_t q_pe_stride, const float *c_kv,
                       const float *k_pe, int64_t S, int64_t H, int64_t Dc, int64_t Dr, float scale, float *P,
                       int64_t P_stride) {
    for (int64_t h = 0; h < H; h++) {
        const float *qa = q_abs + h * Dc, *qpe = q_pe + h * q_pe_stride;
        float *Ph = P + h * P_stride, *uh = u + h * Dc;
        for (int64_t j = 0; j < S; j++)
            Ph[j] = scale * (dot_f32(qa, c_kv + j * Dc, Dc) + dot_f32(qpe, k_pe + j * Dr, Dr));
        softmax_inplace(Ph, S);
        memset(uh, 0, (size_t)Dc * sizeof *uh);
        for (int64_t j = 0; j < S; j++) {
            const float *ckv = c_kv + j * Dc;
            for (int64_t i = 0; i < Dc; i++) uh[i] += Ph[j] * ckv[i];
        }
    }
}

/**
 * q_abs[t][h][:] = Σ_d q_nope[t][h][d] · W_UK[h][d][:]   (einsum "shd,hdc->shc"). Heads run in
 * parallel; each thread decodes W_UK[h] (dequantized) into its scratch once for all tokens and
 * multiplies with linear_accumulate: each sum in ascending d from 0 — in pieces of the rows that
 * fit the scratch (16 × the widest linear input: all Dn rows for every real config), the pieces
 * added in order.
 */
static void absorb_queries(float *q_abs, const float *q, int64_t T, const Tensor *kv_b, const Config *c,
                           const LinearScratch *lin) {
    int64_t H = c->num_attention_heads, Dn = c->qk_nope_head_dim, Dr = c->qk_rope_head_dim, Dv = c->v_head_dim;
    int64_t Dc = c->kv_lora_rank, Dqk = Dn + Dr, Dkv = Dn + Dv;
    int64_t piece = LINEAR_PANEL_ROWS * lin->max_in / Dc; /* rows of W_UK[h] the scratch holds */
    int nt = linear_threads(lin, T * H * Dn * Dc);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t h = 0; h < H; h++) {
        float *w = linear_scratch_panel(lin, threads_id());
        for (int64_t t = 0; t < T; t++) memset(q_abs + (t * H + h) * Dc, 0, (size_t)Dc * sizeof *q_abs);
        for (int64_t d0 = 0; d0 < Dn; d0 += piece) {
            int64_t nd = Dn - d0 < piece ? Dn - d0 : piece;
            for (int64_t d = 0; d < nd; d++) tensor_row(kv_b, h * Dkv + d0 + d, 0, Dc, 1, w + d * Dc);
            linear_accumulate(q_abs + h * Dc, H * Dc, q + h * Dqk + d0, H * Dqk, w, Dc, T, nd, Dc);
        }
    }
}

/**
 * o[t][h][d] = u[t][h] · W_UV[h][d]   (einsum "shc,hdc->shd"): for each head, rows
 * h·(Dn+Dv)+Dn .. +Dv of kv_b_proj applied to that head's latent sums, as a linear (the same
 * kernels and summation order as linear_forward). Heads run in parallel.
 */
static void absorb_values(float *o, const float *u, int64_t T, const Tensor *kv_b, const Config *c, const LinearScratch *lin) {
    int64_t H = c->num_attention_heads, Dn = c->qk_nope_head_dim, Dv = c->v_head_dim, Dc = c->kv_lora_rank, Dkv = Dn + Dv;
    int nt = linear_threads(lin, T * H * Dv * Dc);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t h = 0; h < H; h++)
        linear_rows(o + h * Dv, H * Dv, u + h * Dc, H * Dc, T, kv_b, h * Dkv + Dn, h * Dkv + Dn + Dv,
                    linear_scratch_panel(lin, threads_id()));
}

/** Absorbed form: attend over the latent cache with q_abs = W_UKᵀ q_nope, apply W_UV after the sum. */
static void attention_absorb(int64_t T, int64_t pos0, const LayerWeights *w, LayerCache *cache, MLAActs *a,
                             const ForwardContext *ctx) {
    const Config *c = ctx->cfg;
    int64_t H = c->num_attention_heads, Dn = c->qk_nope_head_dim, Dr = c->qk_rope_head_dim;
    int64_t Dc = c->kv_lora_rank, Dqk = Dn + Dr;
    absorb_queries(a->q_abs, a->q, T, &w->kv_b_proj, c, &ctx->lin);
    for (int64_t t = 0; t < T; t++) {
        memcpy(cache->c_kv + (pos0 + t) * Dc, a->c_kv + t * Dc, (size_t)Dc * sizeof(float));
        memcpy(cache->k_pe + (pos0 + t) * Dr, a->k_pe + t * Dr, (size_t)Dr * sizeof(float));
        /* emulate a GPU's BF16 or FP8 latent cache: the values attention reads back are rounded */
        kvcache_round_position(cache, cache->c_kv + (pos0 + t) * Dc, Dc, cache->k_pe + (pos0 + t) * Dr, Dr);
    }
    /* One query (t, h) per iteration; interleaved over the threads, as later tokens see more keys. */
    int nt = attention_threads(ctx, T, H, pos0, Dc + Dr + Dc);
#pragma omp parallel for schedule(static, 1) num_threads(nt) if (nt > 1)
    for (int64_t th = 0; th < T * H; th++)
        mla_attend_absorb(a->u + th * Dc, a->q_abs + th * Dc, a->q + th * Dqk + Dn, Dqk, cache->c_kv, cache->k_pe,
                          pos0 + th / H + 1, 1, Dc, Dr, c->softmax_scale, att_row(a, ctx, th / H, th % H, H), 0);
    absorb_values(a->o, a->u, T, &w->kv_b_proj, c, &ctx->lin);
}

void mla_forward(float *y, const float *x, int64_t T, int64_t pos0, const LayerWeights *w, LayerCache *cache,
                 MLAActs *a, const ForwardContext *ctx) {
    const Config *c = ctx->cfg;
    int64_t H = c->num_attention_heads, Dn = c->qk_nope_head_dim, Dr = c->qk_rope_head_dim;
    int64_t Dq = c->q_lora_rank, Dc = c->kv_lora_rank, Dqk = Dn + Dr, half = Dr / 2;
    float eps = (float)c->rms_norm_eps;
    /* Queries: down-projection, latent norm, up-projection; or, without a query latent
     * (q_lora_rank null, docs/model.md §13.2), the one direct projection q = W_Q x. */
    if (Dq > 0) {
        linear_forward(a->c_q, x, T, &w->q_a_proj, ctx->fp8, &ctx->lin);
        rmsnorm_forward(a->c_q_norm, Dq, a->c_q, Dq, w->q_a_layernorm, T, Dq, eps, a->rstd_q);
        linear_forward(a->q, a->c_q_norm, T, &w->q_b_proj, ctx->fp8, &ctx->lin);
    } else {
        linear_forward(a->q, x, T, &w->q_proj, ctx->fp8, &ctx->lin);
    }
    /* Keys/values: one down-projection gives the 512-d latent and the shared 64-d rope key. */
    linear_forward(a->kv_a, x, T, &w->kv_a_proj_with_mqa, ctx->fp8, &ctx->lin);
    rmsnorm_forward(a->c_kv, Dc, a->kv_a, Dc + Dr, w->kv_a_layernorm, T, Dc, eps, a->rstd_kv);
    /* RoPE on the decoupled parts only: k_pe (shared) and each head's q_pe. */
    for (int64_t t = 0; t < T; t++) {
        const float *cs = ctx->rope_cos + t * half, *sn = ctx->rope_sin + t * half;
        memcpy(a->k_pe + t * Dr, a->kv_a + t * (Dc + Dr) + Dc, (size_t)Dr * sizeof(float));
        rope_forward(a->k_pe + t * Dr, cs, sn, (int)Dr);
        for (int64_t h = 0; h < H; h++) rope_forward(a->q + (t * H + h) * Dqk + Dn, cs, sn, (int)Dr);
    }
    if (ctx->attn == ATTN_NAIVE) attention_naive(T, pos0, w, cache, a, ctx);
    else attention_absorb(T, pos0, w, cache, a, ctx);
    linear_forward(y, a->o, T, &w->o_proj, ctx->fp8, &ctx->lin);
}
