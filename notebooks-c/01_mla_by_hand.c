/*
 * Notebook 1 — Multi-head Latent Attention, by hand.
 *
 * Run:  make notebooks     (or build/notebooks/01_mla_by_hand after `make notebooks`)
 *
 * We load golden/official-tiny (a 6 M-parameter model in the real DeepSeek-V3 layout, whose
 * outputs DeepSeek's own code produced) and recompute the attention of layer 0 for one query
 * position with nothing but loops over the weights, in both of MLA's forms:
 *
 *   naive:  expand the 64-d latent c_kv into per-head keys and values (W_UK, W_UV), attend.
 *   absorb: fold W_UK into the query, attend over the latent itself, apply W_UV afterwards.
 *
 * Then we check both against ref/model/mla.c. Along the way we print what the KV cache holds in each
 * form — the reason MLA exists (paper §2.1.1: "significantly reducing the KV cache").
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/rmsnorm.h"
#include "model/rope.h"

#define T 6 /* tokens; we look at the last one */

/* y = W x for a stored weight W [rows][cols] (BF16 in this checkpoint): one decoded row at a time. */
static void matvec(float *y, const Tensor *W, const float *x) {
    float *row = malloc(sizeof(float) * (size_t)W->cols);
    for (int64_t o = 0; o < W->rows; o++) {
        tensor_row(W, o, 0, W->cols, 1, row);
        double acc = 0;
        for (int64_t i = 0; i < W->cols; i++) acc += (double)row[i] * x[i];
        y[o] = (float)acc;
    }
    free(row);
}

int main(void) {
    Model m;
    Err err;
    if (model_load(&m, "golden/official-tiny", NULL, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const Config *c = &m.config;
    const LayerWeights *w = &m.w.layers[0];
    int D = c->hidden_size, H = c->num_attention_heads, Dq = c->q_lora_rank, Dc = c->kv_lora_rank;
    int Dn = c->qk_nope_head_dim, Dr = c->qk_rope_head_dim, Dv = c->v_head_dim;
    printf("official-tiny, layer 0: D=%d, H=%d heads, q latent %d, kv latent Dc=%d, nope %d + rope %d, v %d\n\n", D, H, Dq,
           Dc, Dn, Dr, Dv);

    /* Step 0 — the block input: embeddings of 6 tokens, then input_layernorm. */
    int ids[T] = { 117, 281, 163, 138, 171, 5 };
    static float x[T][256], c_kv[T][64], k_pe[T][16], q[64 * 48], c_q[96];
    for (int t = 0; t < T; t++) {
        tensor_row(&m.w.embed_tokens, ids[t], 0, D, 1, x[t]);
        rmsnorm_forward(x[t], D, x[t], D, w->input_layernorm, 1, D, (float)c->rms_norm_eps, NULL);
    }

    /* Step 1 — keys: ONE down-projection per token gives the latent c_kv (Dc) and a shared rope
     * key k_pe (Dr). Only these two are cached in the absorbed form. */
    for (int t = 0; t < T; t++) {
        float a[64 + 16], cs[8], sn[8];
        matvec(a, &w->kv_a_proj_with_mqa, x[t]);
        rmsnorm_forward(c_kv[t], Dc, a, Dc, w->kv_a_layernorm, 1, Dc, (float)c->rms_norm_eps, NULL);
        memcpy(k_pe[t], a + Dc, sizeof(float) * Dr);
        rope_cos_sin(cs, sn, t, &m.rope);
        rope_forward(k_pe[t], cs, sn, Dr);
    }
    printf("cache per token per layer: absorb = c_kv %d + k_pe %d = %d floats;"
           " naive = %d heads x (k %d + v %d) = %d floats (%.0fx more)\n\n",
           Dc, Dr, Dc + Dr, H, Dn + Dr, Dv, H * (Dn + Dr + Dv), (double)H * (Dn + Dr + Dv) / (Dc + Dr));

    /* Step 2 — the query of the last token: down, norm, up; RoPE on each head's rope part. */
    int p = T - 1;
    matvec(c_q, &w->q_a_proj, x[p]);
    rmsnorm_forward(c_q, Dq, c_q, Dq, w->q_a_layernorm, 1, Dq, (float)c->rms_norm_eps, NULL);
    matvec(q, &w->q_b_proj, c_q);
    float cs[8], sn[8];
    rope_cos_sin(cs, sn, p, &m.rope);
    for (int h = 0; h < H; h++) rope_forward(q + h * (Dn + Dr) + Dn, cs, sn, Dr);

    /* Step 3a — naive: per head, k_h(t) = [W_UK[h] c_kv(t) ; k_pe(t)], v_h(t) = W_UV[h] c_kv(t). */
    static float o_naive[4][32], o_absorb[4][32], row[64];
    double max_score_diff = 0;
    for (int h = 0; h < H; h++) {
        float s[T], kn[T][32], v[T][32];
        for (int t = 0; t <= p; t++) {
            for (int d = 0; d < Dn; d++) {
                tensor_row(&w->kv_b_proj, h * (Dn + Dv) + d, 0, Dc, 1, row); /* W_UK[h][d] */
                double acc = 0;
                for (int i = 0; i < Dc; i++) acc += (double)row[i] * c_kv[t][i];
                kn[t][d] = (float)acc;
            }
            for (int d = 0; d < Dv; d++) {
                tensor_row(&w->kv_b_proj, h * (Dn + Dv) + Dn + d, 0, Dc, 1, row); /* W_UV[h][d] */
                double acc = 0;
                for (int i = 0; i < Dc; i++) acc += (double)row[i] * c_kv[t][i];
                v[t][d] = (float)acc;
            }
            double dot = 0;
            for (int d = 0; d < Dn; d++) dot += (double)q[h * (Dn + Dr) + d] * kn[t][d];
            for (int d = 0; d < Dr; d++) dot += (double)q[h * (Dn + Dr) + Dn + d] * k_pe[t][d];
            s[t] = (float)(c->softmax_scale * dot);
        }
        /* Step 3b — absorb: q_abs = W_UK[h]^T q_nope (Dc wide), scores against c_kv directly. */
        float q_abs[64] = { 0 }, s2[T];
        for (int d = 0; d < Dn; d++) {
            tensor_row(&w->kv_b_proj, h * (Dn + Dv) + d, 0, Dc, 1, row);
            for (int i = 0; i < Dc; i++) q_abs[i] += q[h * (Dn + Dr) + d] * row[i];
        }
        for (int t = 0; t <= p; t++) {
            double dot = 0;
            for (int i = 0; i < Dc; i++) dot += (double)q_abs[i] * c_kv[t][i];
            for (int d = 0; d < Dr; d++) dot += (double)q[h * (Dn + Dr) + Dn + d] * k_pe[t][d];
            s2[t] = (float)(c->softmax_scale * dot);
            max_score_diff = fmax(max_score_diff, fabs(s2[t] - s[t]));
        }
        /* Softmax over keys 0..p (causal), then values: naive sums v_h(t); absorb sums c_kv(t)
         * and applies W_UV once. */
        float mx = s[0], sum = 0;
        for (int t = 1; t <= p; t++) mx = fmaxf(mx, s[t]);
        for (int t = 0; t <= p; t++) sum += (s[t] = expf(s[t] - mx));
        float u[64] = { 0 };
        for (int t = 0; t <= p; t++) {
            for (int d = 0; d < Dv; d++) o_naive[h][d] += s[t] / sum * v[t][d];
            for (int i = 0; i < Dc; i++) u[i] += s[t] / sum * c_kv[t][i];
        }
        for (int d = 0; d < Dv; d++) {
            tensor_row(&w->kv_b_proj, h * (Dn + Dv) + Dn + d, 0, Dc, 1, row);
            double acc = 0;
            for (int i = 0; i < Dc; i++) acc += (double)row[i] * u[i];
            o_absorb[h][d] = (float)acc;
        }
    }
    double max_o_diff = 0;
    for (int h = 0; h < H; h++)
        for (int d = 0; d < Dv; d++) max_o_diff = fmax(max_o_diff, fabs(o_naive[h][d] - o_absorb[h][d]));
    printf("scores, naive vs absorbed:          max |diff| = %.2e  (the same function, reassociated)\n", max_score_diff);
    printf("head outputs, naive vs absorbed:    max |diff| = %.2e\n", max_o_diff);

    /* Step 4 — the library's mla_forward on the same 6 tokens must give the same head outputs. */
    RunState s;
    KVCache kv;
    if (runstate_init(&s, &m, T, T, ATTN_ABSORB, FP8_DEQUANT, &err) ||
        kvcache_init(&kv, c, ATTN_ABSORB, c->num_hidden_layers, T, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    runstate_set_positions(&s, &m, 0, T);
    float *y = malloc(sizeof(float) * T * D);
    mla_forward(y, &x[0][0], T, 0, w, &kv.layers[0], &s.acts.mla, &s.ctx);
    double max_lib_diff = 0;
    for (int h = 0; h < H; h++)
        for (int d = 0; d < Dv; d++) max_lib_diff = fmax(max_lib_diff, fabs(s.acts.mla.o[(p * H + h) * Dv + d] - o_naive[h][d]));
    printf("ref/model/mla.c (absorb) vs this notebook: max |diff| = %.2e\n", max_lib_diff);
    int ok = max_score_diff < 1e-4 && max_o_diff < 1e-4 && max_lib_diff < 1e-4;
    printf("\n%s\n", ok ? "OK: both forms agree with each other and with the library." : "MISMATCH");
    free(y);
    kvcache_free(&kv);
    runstate_free(&s);
    model_free(&m);
    return ok ? 0 : 1;
}
