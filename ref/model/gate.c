/**
 * @file gate.c
 * @brief noaux_tc routing (docs/model.md §5.1–5.3), FP32 throughout, deterministic ties.
 *
 * The official Gate.forward in one line each:
 *     scores = sigmoid(x @ W.T);  original = scores;  scores = scores + bias
 *     group_scores = scores.view(G, -1).topk(2).sum(-1);  keep topk(group_scores, topk_group)
 *     scores = scores.masked_fill(~kept, -inf);  indices = topk(scores, K)
 *     weights = original.gather(indices);  weights /= weights.sum();  weights *= route_scale
 */
#include "gate.h"

#include <math.h>

/** Index of the largest value among v[0..n) not yet taken; ties → lowest index. Values that
 *  are −∞ or NaN (weights gone bad) never win over finite ones; if nothing finite is left,
 *  the lowest free index is returned, so the caller always gets a valid expert. */
static int argmax_free(const float *v, const float *taken, int n) {
    int best = -1, first_free = -1;
    for (int i = 0; i < n; i++) {
        if (taken[i]) continue;
        if (first_free < 0) first_free = i;
        if (v[i] > -INFINITY && (best < 0 || v[i] > v[best])) best = i;
    }
    return best >= 0 ? best : first_free;
}

void gate_group_scores(float *group_score, const float *choice, int E, int G) {
    const int per = E / G;
    for (int g = 0; g < G; g++) {
        float m1 = -INFINITY, m2 = -INFINITY;
        for (int e = g * per; e < (g + 1) * per; e++) {
            if (choice[e] > m1) m2 = m1, m1 = choice[e];
            else if (choice[e] > m2) m2 = choice[e];
        }
        group_score[g] = m1 + m2;
    }
}

void gate_forward(int *idx, float *weights, float *scores, const float *logits, const float *bias, const Config *c,
                  float *work) {
    int E = c->n_routed_experts, G = c->n_group, per = E / G, K = c->num_experts_per_tok;
    float *choice = work, *group_score = work + E;
    for (int e = 0; e < E; e++) {
        scores[e] = 1.0f / (1.0f + expf(-logits[e]));
        choice[e] = scores[e] + bias[e];
    }
    /* Group score: sum of the two largest biased scores of the group (V3's node-limited routing). */
    gate_group_scores(group_score, choice, E, G);
    /* Keep the topk_group best groups; mask the experts of the others with −∞. */
    float *kept = work + E + G, *picked = kept + G; /* 0/1 flags */
    for (int i = 0; i < G + E; i++) kept[i] = 0.0f;
    for (int k = 0; k < c->topk_group; k++) {
        int g = argmax_free(group_score, kept, G);
        kept[g] = 1.0f;
    }
    for (int e = 0; e < E; e++)
        if (!kept[e / per]) choice[e] = -INFINITY;
    /* Top-K experts by biased score; the weights use the unbiased affinities. */
    float sum = 0.0f;
    for (int k = 0; k < K; k++) {
        int e = argmax_free(choice, picked, E);
        /* config_validate guarantees K ≤ topk_group × experts per group, so e is a kept expert. */
        picked[e] = 1.0f;
        idx[k] = e;
        weights[k] = scores[e];
        sum += scores[e];
    }
    for (int k = 0; k < K; k++) {
        if (c->norm_topk_prob) weights[k] /= sum;
        weights[k] *= (float)c->routed_scaling_factor;
    }
}

void gate_backward(float *dlogits, const float *dweights, const int *idx, const float *scores, const Config *c) {
    int K = c->num_experts_per_tok;
    float rsf = (float)c->routed_scaling_factor, sum = 0.0f, dot = 0.0f;
    for (int k = 0; k < K; k++) sum += scores[idx[k]];
    for (int k = 0; k < K; k++) dot += dweights[k] * scores[idx[k]];
    for (int k = 0; k < K; k++) {
        int e = idx[k];
        float s = scores[e];
        /* w_k = rsf·s_k/Σ  ⇒  dL/ds_k = rsf·(dw_k/Σ − Σ_j dw_j s_j/Σ²); without renorm dL/ds_k = rsf·dw_k. */
        float ds = c->norm_topk_prob ? rsf * (dweights[k] / sum - dot / (sum * sum)) : rsf * dweights[k];
        dlogits[e] += ds * s * (1.0f - s); /* sigmoid' */
    }
}
