/*
 * Notebook 3 — Expert parallelism: dispatch, local experts, combine (paper §3.4, docs/model.md §10).
 *
 * Run:  make notebooks
 *
 * DeepSeek-V3 serves its 256 routed experts per layer spread over many GPUs: each GPU holds a
 * slice, and every MoE layer becomes an all-to-all. Here golden/official-tiny's layer 1 (16
 * experts, top-4) is split over 4 ranks — threads of this program, talking through the
 * in-process transport of ref/ep/ep.c, the same interface the TCP (ref/ep/ep_socket.c) and NCCL
 * (fast/ep_nccl.c) transports implement. We watch one layer the way `dsv3 generate --ep 4` runs
 * it: rank 0 holds the tokens, ranks 1..3 are expert servers (ep_serve).
 *
 *   1. the plan: which rank holds which experts (contiguous ranges);
 *   2. the gate picks K experts per token; each (token, expert) pair becomes a row sent to the
 *      rank holding that expert — the dispatch table, and the counts exchanged first;
 *   3. the expert-parallel layer runs; its output equals the one-process moe_forward bit for bit,
 *      because the combine adds the same products in the same order.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep/ep.h"
#include "model/gate.h"
#include "model/model.h"
#include "model/rmsnorm.h"

enum { RANKS = 4, T = 5 };

typedef struct {
    const Model *m;
    EpTransport *t;
    const EpPlan *plan;
    int rank;
    const float *x; /* rank 0: the tokens' FFN inputs [T][D] */
    float *out;     /* rank 0: the layer's output */
    size_t sent;    /* bytes this rank sent */
    int rc;
} Rank;

static void *run_rank(void *arg) {
    Rank *r = arg;
    Err err;
    RunState s;
    EpRank ep;
    if (runstate_init(&s, r->m, T, T, ATTN_ABSORB, FP8_DEQUANT, &err) || ep_rank_init(&ep, r->rank, r->t, r->plan, &err)) {
        fprintf(stderr, "rank %d: %s\n", r->rank, err.msg);
        r->rc = -1;
        return NULL;
    }
    if (r->rank == 0) /* the model's rank: one MoE layer for its T tokens, then stop the servers */
        r->rc = ep_moe_forward(r->out, r->x, T, &r->m->w.layers[1], &s.acts.moe, &ep, &s.ctx, &err) || ep_stop(&ep, &err);
    else /* an expert server: runs whatever layer rank 0 announces until EP_STOP */
        r->rc = ep_serve(&ep, &r->m->w, &s.ctx, &err);
    if (r->rc) fprintf(stderr, "rank %d: %s\n", r->rank, err.msg);
    r->sent = ep.dispatched_bytes;
    ep_rank_free(&ep);
    runstate_free(&s);
    return NULL;
}

int main(void) {
    Model m;
    Err err;
    if (model_load(&m, "golden/official-tiny", NULL, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const Config *c = &m.config;
    const LayerWeights *w = &m.w.layers[1];
    int D = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok;

    /* 1. The plan. */
    EpPlan plan;
    if (ep_plan_init(&plan, RANKS, E, NULL, 0, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    printf("layer 1: %d routed experts over %d ranks\n", E, RANKS);
    for (int r = 0; r < RANKS; r++) printf("  rank %d holds experts %2d..%2d\n", r, plan.first[r], plan.first[r + 1] - 1);

    /* 2. The gate and the dispatch table, for T tokens (embeddings through the FFN norm, as in notebook 2). */
    int ids[T] = { 42, 7, 199, 3, 64 };
    float *x = malloc(sizeof(float) * T * D), *scores = malloc(sizeof(float) * E), *logits = malloc(sizeof(float) * E);
    float *work = malloc(sizeof(float) * 2 * (size_t)(E + c->n_group)), wts[T][8];
    int idx[T][8], rows_to[RANKS] = { 0 };
    for (int t = 0; t < T; t++) {
        tensor_row(&m.w.embed_tokens, ids[t], 0, D, 1, x + t * D);
        rmsnorm_forward(x + t * D, D, x + t * D, D, w->post_attention_layernorm, 1, D, (float)c->rms_norm_eps, NULL);
        for (int e = 0; e < E; e++) {
            float row[1024];
            tensor_row(&w->gate, e, 0, D, 1, row);
            double acc = 0;
            for (int d = 0; d < D; d++) acc += (double)row[d] * x[t * D + d];
            logits[e] = (float)acc;
        }
        gate_forward(idx[t], wts[t], scores, logits, w->e_score_correction_bias, c, work);
    }
    printf("\ndispatch: token -> (expert @ rank, weight)\n");
    for (int t = 0; t < T; t++) {
        printf("  token %3d:", ids[t]);
        for (int k = 0; k < K; k++) {
            int dest = ep_plan_route(&plan, idx[t][k], 0, t);
            rows_to[dest]++;
            printf("  %2d@%d (%.2f)", idx[t][k], dest, wts[t][k]);
        }
        printf("\n");
    }
    printf("counts rank 0 sends first (rows of %d floats): ", D);
    for (int r = 0; r < RANKS; r++) printf("%d%s", rows_to[r], r + 1 < RANKS ? ", " : "\n");
    printf("(a row to rank 0 itself stays home; the others cross the network, then come back combined)\n");

    /* 3. The expert-parallel layer, and the one-process layer it must equal. */
    EpTransport t;
    if (ep_cpu_transport_init(&t, RANKS, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    float *ep_out = malloc(sizeof(float) * T * D), *local = malloc(sizeof(float) * T * D);
    Rank ranks[RANKS];
    pthread_t th[RANKS];
    for (int r = 0; r < RANKS; r++) {
        ranks[r] = (Rank){ &m, &t, &plan, r, x, ep_out, 0, 0 };
        pthread_create(&th[r], NULL, run_rank, &ranks[r]);
    }
    int rc = 0;
    for (int r = 0; r < RANKS; r++) pthread_join(th[r], NULL), rc |= ranks[r].rc;
    RunState s;
    if (rc || runstate_init(&s, &m, T, T, ATTN_ABSORB, FP8_DEQUANT, &err)) return 1;
    moe_forward(local, x, T, w, &s.acts.moe, &s.ctx);
    printf("\nbytes sent (dispatch + combine): ");
    for (int r = 0; r < RANKS; r++) printf("rank %d %zu%s", r, ranks[r].sent, r + 1 < RANKS ? ", " : "\n");
    int same = !memcmp(ep_out, local, sizeof(float) * T * D);
    printf("expert-parallel output vs moe_forward: %s\n", same ? "bit-identical" : "DIFFERENT");
    printf("\nAt DeepSeek-V3's size a token sends K = 8 rows of 7168 values per MoE layer and gets them back:\n"
           "the paper dispatches in FP8 (7 KiB a row) and combines in BF16 (14 KiB), and limits each token to\n"
           "4 nodes so that the traffic stays within InfiniBand's share (paper §2.1.2, §3.2.2; `dsv3 plan` computes it).\n");
    runstate_free(&s);
    ep_cpu_transport_free(&t);
    ep_plan_free(&plan);
    free(x), free(scores), free(logits), free(work), free(ep_out), free(local);
    model_free(&m);
    return same ? 0 : 1;
}
