/*
 * Notebook 2 — How DeepSeek-V3 picks experts (the noaux_tc gate, paper eqs. 13–16, docs/model.md §5.1).
 *
 * Run:  make notebooks
 *
 * One token of golden/official-tiny goes through layer 1's gate step by step: affinities
 * s = sigmoid(u·G), the correction bias b that steers selection (aux-loss-free balancing),
 * group scores (sum of the two best biased scores in each group), the kept groups, the top-k
 * experts, and their weights — which use the UNBIASED affinities. The result is checked
 * against ref/model/gate.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gate.h"
#include "model/model.h"
#include "model/rmsnorm.h"

int main(void) {
    Model m;
    Err err;
    if (model_load(&m, "golden/official-tiny", NULL, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const Config *c = &m.config;
    const LayerWeights *w = &m.w.layers[1];
    int D = c->hidden_size, E = c->n_routed_experts, G = c->n_group, per = E / G, K = c->num_experts_per_tok;
    printf("layer 1: %d experts in %d groups of %d; keep %d groups, pick %d experts, scale %.1f\n\n", E, G, per,
           c->topk_group, K, c->routed_scaling_factor);

    /* A token's FFN input u: we take the embedding of token 42 through post_attention_layernorm
     * (in the model, u also carries the attention output; the gate does not care). */
    float *u = malloc(sizeof(float) * D), *row = malloc(sizeof(float) * D);
    tensor_row(&m.w.embed_tokens, 42, 0, D, 1, u);
    rmsnorm_forward(u, D, u, D, w->post_attention_layernorm, 1, D, (float)c->rms_norm_eps, NULL);

    float s[64], choice[64], group[16];
    printf(" e   logit      s=sigmoid   bias     s+bias\n");
    for (int e = 0; e < E; e++) {
        tensor_row(&w->gate, e, 0, D, 1, row);
        double logit = 0;
        for (int i = 0; i < D; i++) logit += (double)row[i] * u[i];
        s[e] = 1.0f / (1.0f + expf(-(float)logit));
        choice[e] = s[e] + w->e_score_correction_bias[e];
        printf("%2d  %+8.4f   %.4f     %+7.4f  %.4f\n", e, logit, s[e], w->e_score_correction_bias[e], choice[e]);
    }
    printf("\ngroup scores (top-2 sum of s+bias):");
    int kept[16] = { 0 };
    for (int g = 0; g < G; g++) {
        float a = -INFINITY, b = -INFINITY;
        for (int e = g * per; e < (g + 1) * per; e++) {
            if (choice[e] > a) b = a, a = choice[e];
            else if (choice[e] > b) b = choice[e];
        }
        group[g] = a + b;
        printf(" g%d=%.4f", g, group[g]);
    }
    for (int k = 0; k < c->topk_group; k++) {
        int best = -1;
        for (int g = 0; g < G; g++)
            if (!kept[g] && (best < 0 || group[g] > group[best])) best = g;
        kept[best] = 1;
    }
    printf("\nkept groups:");
    for (int g = 0; g < G; g++)
        if (kept[g]) printf(" g%d", g);
    int idx[16], taken[64] = { 0 };
    float wts[16], sum = 0;
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (kept[e / per] && !taken[e] && (best < 0 || choice[e] > choice[best])) best = e;
        taken[best] = 1;
        idx[k] = best;
        sum += s[best];
    }
    printf("\nselected experts (by s+bias):");
    for (int k = 0; k < K; k++) printf(" %d", idx[k]);
    printf("\nweights (unbiased s, renormalized, x%.1f):", c->routed_scaling_factor);
    for (int k = 0; k < K; k++) {
        wts[k] = s[idx[k]] / sum * (float)c->routed_scaling_factor;
        printf(" %.4f", wts[k]);
    }

    /* The library's gate on the same logits. */
    float logits[64], scores[64], lw[16], work[2 * (64 + 16)];
    int lidx[16];
    for (int e = 0; e < E; e++) logits[e] = logf(s[e] / (1.0f - s[e]));
    gate_forward(lidx, lw, scores, logits, w->e_score_correction_bias, c, work);
    int ok = 1;
    for (int k = 0; k < K; k++) ok &= lidx[k] == idx[k] && fabsf(lw[k] - wts[k]) < 1e-5f;
    /* Would the unbiased scores alone have picked the same experts? */
    int differ = 0;
    float tmp[64];
    memcpy(tmp, s, sizeof tmp);
    for (int k = 0; k < K; k++) {
        int best = 0;
        for (int e = 1; e < E; e++)
            if (tmp[e] > tmp[best]) best = e;
        tmp[best] = -1;
        if (!taken[best]) differ++;
    }
    printf("\n\nwithout the bias (and the group limit), %d of the %d picks would change: the bias only steers"
           " selection;\nthe weights above still come from the unbiased affinities.\n", differ, K);
    printf("\n%s\n", ok ? "OK: matches ref/model/gate.c." : "MISMATCH with ref/model/gate.c");
    free(u);
    free(row);
    model_free(&m);
    return ok ? 0 : 1;
}
