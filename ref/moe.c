/**
 * @file moe.c
 * @brief DeepSeekMoE forward (spec §5.1, official MoE.forward):
 *
 *     weights, indices = gate(x)
 *     for each expert i (ascending): y[tokens routed to i] += expert_i(x[those]) · weight
 *     return y + shared_experts(x)
 *
 * Tokens are permuted into expert order so each expert's weights are decoded once per chunk
 * and applied to all of its tokens at once. Accumulation per token follows ascending expert
 * index, then the shared expert is added, all in FP32 (spec §5.2).
 */
#include "moe.h"

#include <string.h>

#include "gate.h"

/** FFN on rows [r0, r1) of the permuted arrays (one expert's tokens). */
static void expert_rows(const FFNWeights *w, MoEActs *a, int64_t r0, int64_t r1, int64_t D, int64_t Ie,
                        const ForwardContext *ctx) {
    FFNActs rows = { a->routed.h_gate + r0 * Ie, a->routed.h_up + r0 * Ie, a->routed.h_act + r0 * Ie };
    ffn_forward(a->y_perm + r0 * D, a->x_perm + r0 * D, r1 - r0, w, &rows, ctx->fp8, &ctx->lin);
}

void moe_permute(int *perm, int *expert_start, const int *idx, int64_t T, int64_t K, int64_t E) {
    memset(expert_start, 0, (size_t)(E + 1) * sizeof *expert_start);
    for (int64_t s = 0; s < T * K; s++) expert_start[idx[s] + 1]++;
    for (int64_t e = 0; e < E; e++) expert_start[e + 1] += expert_start[e];
    /* Place each slot at its expert's cursor; expert_start[e] serves as the cursor and ends
     * up at the start of expert e+1, so shifting the array by one restores the starts. */
    for (int64_t s = 0; s < T * K; s++) perm[expert_start[idx[s]]++] = (int)s;
    for (int64_t e = E; e > 0; e--) expert_start[e] = expert_start[e - 1];
    expert_start[0] = 0;
}

void moe_combine(float *out, const float *y_perm, const float *y_shared, const int *perm, const float *weights,
                 int64_t T, int64_t K, int64_t D) {
    memset(out, 0, (size_t)(T * D) * sizeof *out);
    for (int64_t r = 0; r < T * K; r++) {
        int s = perm[r];
        float wgt = weights[s];
        float *o = out + (s / K) * D;
        const float *y = y_perm + r * D;
        for (int64_t i = 0; i < D; i++) o[i] += wgt * y[i];
    }
    if (y_shared)
        for (int64_t i = 0; i < T * D; i++) out[i] += y_shared[i];
}

void moe_forward(float *out, const float *x, int64_t T, const LayerWeights *w, MoEActs *a, const ForwardContext *ctx) {
    const Config *c = ctx->cfg;
    int64_t D = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok, Ie = c->moe_intermediate_size;
    /* 1. Gate: logits in FP32 from the stored (BF16) gate matrix, then noaux_tc per token. */
    linear_forward(a->logits, x, T, &w->gate, FP8_DEQUANT, &ctx->lin);
    for (int64_t t = 0; t < T; t++)
        gate_forward(a->idx + t * K, a->weights + t * K, a->scores + t * E, a->logits + t * E,
                     w->e_score_correction_bias, c, ctx->gate_work);
    /* 2. Permute: counting sort of the T·K slots by expert, then gather the inputs. */
    moe_permute(a->perm, a->expert_start, a->idx, T, K, E);
    for (int64_t r = 0; r < T * K; r++) memcpy(a->x_perm + r * D, x + (a->perm[r] / K) * D, (size_t)D * sizeof(float));
    /* 3. Routed experts, one grouped pass each; the shared experts on every token. */
    for (int64_t e = 0; e < E; e++)
        if (a->expert_start[e + 1] > a->expert_start[e])
            expert_rows(&w->experts[e], a, a->expert_start[e], a->expert_start[e + 1], D, Ie, ctx);
    if (c->n_shared_experts > 0) ffn_forward(a->y_shared, x, T, &w->shared_experts, &a->shared, ctx->fp8, &ctx->lin);
    /* 4. Combine in ascending expert order, weighted; then add the shared experts. */
    moe_combine(out, a->y_perm, c->n_shared_experts > 0 ? a->y_shared : NULL, a->perm, a->weights, T, K, D);
}
