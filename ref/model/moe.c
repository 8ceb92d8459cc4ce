/**
 * @file moe.c
 * @brief DeepSeekMoE forward (docs/model.md §5.1, official MoE.forward):
 *
 *     weights, indices = gate(x)
 *     for each expert i (ascending): y[tokens routed to i] += expert_i(x[those]) · weight
 *     return y + shared_experts(x)
 *
 * Tokens are permuted into expert order so each expert's weights are decoded once per chunk
 * and applied to all of its tokens at once. Accumulation per token follows ascending expert
 * index, then the shared expert is added, all in FP32 (docs/model.md §5.2).
 *
 * Backward (training; paper eqs. 12–20, docs/model.md §6). With out_t = Σ_k w_{t,k} y_{t,k} + shared(x_t)
 * and y_{t,k} = FFN_{e(t,k)}(x_t):
 *     dw_{t,k}  = dout_t · y_{t,k}                    (a routing weight's gradient)
 *     dy_{t,k}  = w_{t,k} dout_t                      (into expert e(t,k)'s FFN backward)
 *     dx_t     += Σ_k FFN_e backward + gate backward + shared backward
 * The gate passes dw to the logits through the selected, renormalized affinities only
 * (gate_backward); the selection itself — top-K of s + b with group limits — is piecewise
 * constant, so neither the bias b nor the unselected experts get a gradient (eq. 16: the bias
 * "is only used for routing"). The expert permutation of the forward is reused: the routed
 * work runs in the same expert order, and the scatter back to tokens is its transpose.
 *
 * Balance loss (eqs. 17–20) of the T tokens of one sequence: f_i counts the actual selections
 * (top-K of the biased scores with group limits, what the token really used; eq. 18 writes the
 * unbiased top-K — docs/model.md §6 notes the ambiguity and that trainers use the routing decision) and
 * is a constant for the gradient; P_i = (1/T) Σ_t s'_{i,t} with s' = s / Σ_j s_j is not:
 *     ∂L/∂s'_{i,t} = α f_i / T =: g_i
 *     ∂L/∂s_{j,t}  = (g_j − Σ_i g_i s'_{i,t}) / Σ_i s_{i,t}
 *     ∂L/∂logit_{j,t} = ∂L/∂s_{j,t} · s_{j,t}(1 − s_{j,t})
 */
#include "moe.h"

#include <string.h>

#include "base/threads.h"
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

/** Columns of the combine one thread takes at a time (the threads split the hidden dimension). */
#define COMBINE_COLS 64

void moe_combine(float *out, const float *y_perm, const float *y_shared, const int *perm, const float *weights,
                 int64_t T, int64_t K, int64_t D) {
    /* Each output element gets its routed rows in ascending r (= expert) order, then the shared
     * expert; the threads split the columns, so that order is the same for any thread count. */
#pragma omp parallel for schedule(static) if (T * K * D >= (1 << 16) && !threads_in_parallel())
    for (int64_t c0 = 0; c0 < D; c0 += COMBINE_COLS) {
        int64_t c1 = c0 + COMBINE_COLS < D ? c0 + COMBINE_COLS : D;
        for (int64_t t = 0; t < T; t++) memset(out + t * D + c0, 0, (size_t)(c1 - c0) * sizeof *out);
        for (int64_t r = 0; r < T * K; r++) {
            int s = perm[r];
            float wgt = weights[s], *o = out + (s / K) * D;
            const float *y = y_perm + r * D;
            for (int64_t i = c0; i < c1; i++) o[i] += wgt * y[i];
        }
        if (y_shared)
            for (int64_t t = 0; t < T; t++)
                for (int64_t i = c0; i < c1; i++) out[t * D + i] += y_shared[t * D + i];
    }
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
#pragma omp parallel for schedule(static) if (T * K * D >= (1 << 16))
    for (int64_t r = 0; r < T * K; r++) memcpy(a->x_perm + r * D, x + (a->perm[r] / K) * D, (size_t)D * sizeof(float));
    /* 3. Routed experts, one grouped pass each; the shared experts on every token. */
    for (int64_t e = 0; e < E; e++)
        if (a->expert_start[e + 1] > a->expert_start[e])
            expert_rows(&w->experts[e], a, a->expert_start[e], a->expert_start[e + 1], D, Ie, ctx);
    if (c->n_shared_experts > 0) ffn_forward(a->y_shared, x, T, &w->shared_experts, &a->shared, ctx->fp8, &ctx->lin);
    /* 4. Combine in ascending expert order, weighted; then add the shared experts. */
    moe_combine(out, a->y_perm, c->n_shared_experts > 0 ? a->y_shared : NULL, a->perm, a->weights, T, K, D);
}

void moe_count_load(int64_t *load, const MoEActs *a, int64_t T, const Config *c) {
    int64_t K = c->num_experts_per_tok;
    for (int64_t s = 0; s < T * K; s++) load[a->idx[s]]++;
}

void moe_update_bias(float *bias, const int64_t *load, int E, double gamma) {
    int64_t total = 0;
    for (int e = 0; e < E; e++) total += load[e];
    /* Compare load_i·E with Σ load instead of load_i with a fractional mean: exact in integers. */
    for (int e = 0; e < E; e++) {
        int64_t scaled = load[e] * E;
        float step = (float)gamma;
        if (scaled < total) bias[e] += step;
        else if (scaled > total) bias[e] -= step;
    }
}

double moe_max_violation(const int64_t *load, int E) {
    int64_t total = 0, max = 0;
    for (int e = 0; e < E; e++) {
        total += load[e];
        if (load[e] > max) max = load[e];
    }
    return total > 0 ? (double)max * E / (double)total - 1.0 : 0.0;
}

/** f_i = E/(K·T) · (selections of expert i) into f [E]. */
static void balance_f(float *f, const MoEActs *a, int64_t T, const Config *c) {
    int64_t E = c->n_routed_experts, K = c->num_experts_per_tok;
    for (int64_t e = 0; e < E; e++) f[e] = 0.0f;
    for (int64_t s = 0; s < T * K; s++) f[a->idx[s]] += 1.0f;
    for (int64_t e = 0; e < E; e++) f[e] *= (float)E / (float)(K * T);
}

double moe_balance_loss(const MoEActs *a, int64_t T, const Config *c, double alpha, float *work) {
    int64_t E = c->n_routed_experts;
    if (alpha == 0.0 || T == 0) return 0.0;
    float *f = work;
    balance_f(f, a, T, c);
    double loss = 0.0; /* Σ_t Σ_i f_i s'_{i,t} = T · Σ_i f_i P_i */
    for (int64_t t = 0; t < T; t++) {
        const float *s = a->scores + t * E;
        double sum = 0.0, fs = 0.0;
        for (int64_t e = 0; e < E; e++) {
            sum += s[e];
            fs += (double)f[e] * s[e];
        }
        loss += fs / sum;
    }
    return alpha * loss / (double)T;
}

void moe_balance_backward(float *dlogits, const MoEActs *a, int64_t T, const Config *c, double alpha, float *work) {
    int64_t E = c->n_routed_experts;
    if (alpha == 0.0 || T == 0) return;
    float *f = work; /* E floats of scratch */
    balance_f(f, a, T, c);
    for (int64_t t = 0; t < T; t++) {
        const float *s = a->scores + t * E;
        float *dl = dlogits + t * E, sum = 0.0f, gs = 0.0f;
        for (int64_t e = 0; e < E; e++) sum += s[e];
        for (int64_t e = 0; e < E; e++) gs += f[e] * s[e];
        float g = (float)alpha / (float)T;
        for (int64_t e = 0; e < E; e++) {
            float ds = g * (f[e] - gs / sum) / sum;
            dl[e] += ds * s[e] * (1.0f - s[e]);
        }
    }
}

void moe_backward(float *dx, const LayerWeights *dw, const float *dout, const float *x, int64_t T, const LayerWeights *w,
                  const MoEActs *a, MoEActs *da, double alpha, const ForwardContext *ctx) {
    const Config *c = ctx->cfg;
    int64_t D = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok, Ie = c->moe_intermediate_size;
    /* 1. Combine: out_t += w_s y_r for each permuted row r of slot s. */
    for (int64_t r = 0; r < T * K; r++) {
        int s = a->perm[r];
        const float *g = dout + (s / K) * D, *y = a->y_perm + r * D;
        float *dy = da->y_perm + r * D, wgt = a->weights[s];
        da->weights[s] = dot_f32(g, y, D);
        for (int64_t i = 0; i < D; i++) dy[i] = wgt * g[i];
    }
    /* 2. Routed experts, in the forward's expert order. */
    for (int64_t e = 0; e < E; e++) {
        int64_t r0 = a->expert_start[e], r1 = a->expert_start[e + 1];
        if (r1 == r0) continue;
        FFNActs acts = { a->routed.h_gate + r0 * Ie, a->routed.h_up + r0 * Ie, a->routed.h_act + r0 * Ie };
        FFNActs dacts = { da->routed.h_gate + r0 * Ie, da->routed.h_up + r0 * Ie, da->routed.h_act + r0 * Ie };
        ffn_backward(da->x_perm + r0 * D, &dw->experts[e], da->y_perm + r0 * D, a->x_perm + r0 * D, r1 - r0, &w->experts[e],
                     &acts, &dacts, ctx->fp8, &ctx->lin);
    }
    /* 3. The gather x_perm[r] = x[token of r] transposes to a scatter-add. */
    for (int64_t r = 0; r < T * K; r++) {
        float *d = dx + (a->perm[r] / K) * D;
        const float *g = da->x_perm + r * D;
        for (int64_t i = 0; i < D; i++) d[i] += g[i];
    }
    /* 4. Gate: routing weights → logits; balance loss → logits; logits = x Gᵀ. */
    for (int64_t t = 0; t < T; t++)
        gate_backward(da->logits + t * E, da->weights + t * K, a->idx + t * K, a->scores + t * E, c);
    moe_balance_backward(da->logits, a, T, c, alpha, ctx->gate_work);
    linear_backward(dx, tensor_f32_mut(&dw->gate), da->logits, x, T, &w->gate, FP8_DEQUANT, NULL);
    /* 5. Shared experts see every token with weight 1. */
    if (c->n_shared_experts > 0)
        ffn_backward(dx, &dw->shared_experts, dout, x, T, &w->shared_experts, &a->shared, &da->shared, ctx->fp8,
                     &ctx->lin);
}
