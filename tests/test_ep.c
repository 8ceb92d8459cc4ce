/**
 * @file test_ep.c
 * @brief Expert parallelism over the in-process CPU transport: 2, 4 and 8 ranks (threads of
 *        this process) must reproduce the single-rank results bit for bit —
 *  - one MoE layer: tokens split over the ranks, each rank's outputs == moe_forward's rows;
 *  - the same with redundant copies of hot experts (rows routed to a copy);
 *  - the whole model, data-parallel: every rank runs its own prompt (prefill + decode steps)
 *    with MoE layers dispatched/combined across ranks; logits == a single-process run's.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ckpt.h"
#include "ep.h"
#include "model.h"
#include "rng.h"
#include "util_compare.h"

static Model model;

static void plan_layout(void **state) {
    (void)state;
    EpPlan p;
    Err err;
    assert_int_equal(ep_plan_init(&p, 3, 16, NULL, 0, &err), 0);
    int sizes[3] = { p.first[1] - p.first[0], p.first[2] - p.first[1], p.first[3] - p.first[2] };
    assert_int_equal(sizes[0] + sizes[1] + sizes[2], 16);
    for (int r = 0; r < 3; r++) assert_true(sizes[r] == 5 || sizes[r] == 6);
    for (int e = 0; e < 16; e++) assert_int_equal(p.n_copies[e], 1);
    ep_plan_free(&p);
    int hot[2] = { 0, 15 };
    assert_int_equal(ep_plan_init(&p, 4, 16, hot, 2, &err), 0);
    assert_int_equal(p.n_copies[0], 2);
    assert_int_equal(p.copies[0 * 4 + 1], 1); /* expert 0 lives on rank 0, its copy on rank 1 */
    assert_int_equal(p.copies[15 * 4 + 1], 0); /* expert 15 on rank 3, copy wraps to rank 0 */
    int seen[4] = { 0 };
    for (int64_t t = 0; t < 8; t++) seen[ep_plan_route(&p, 0, 2, t)]++;
    assert_true(seen[0] == 4 && seen[1] == 4); /* alternates between owner and copy */
    ep_plan_free(&p);
    assert_int_equal(ep_plan_init(&p, 32, 16, NULL, 0, &err), -1); /* fewer experts than ranks */
}

/* ---- one MoE layer ------------------------------------------------------------------- */

typedef struct {
    int rank, nranks;
    EpTransport *t;
    const EpPlan *plan;
    const float *x;   /* all tokens */
    int64_t T_all;
    float *out;       /* all tokens' outputs (each rank writes its own rows) */
    int rc;
} LayerJob;

/** Rank r takes tokens [T_all·r/n, T_all·(r+1)/n). */
static void *layer_rank(void *arg) {
    LayerJob *j = arg;
    const Config *c = &model.config;
    int64_t D = c->hidden_size, t0 = j->T_all * j->rank / j->nranks, t1 = j->T_all * (j->rank + 1) / j->nranks;
    RunState s;
    Err err;
    if (runstate_init(&s, &model, 32, 32, ATTN_ABSORB, FP8_DEQUANT, &err)) return j->rc = -1, NULL;
    EpRank r;
    if (ep_rank_init(&r, j->rank, j->t, j->plan, &err)) return j->rc = -1, NULL;
    j->rc = ep_moe_forward(j->out + t0 * D, j->x + t0 * D, t1 - t0, &model.w.layers[1], &s.acts.moe, &r, &s.ctx, &err);
    if (j->rc) fprintf(stderr, "rank %d: %s\n", j->rank, err.msg);
    ep_rank_free(&r);
    runstate_free(&s);
    return NULL;
}

static void layer_matches(int nranks, const int *hot, int n_hot) {
    const Config *c = &model.config;
    int64_t D = c->hidden_size, T = 23;
    float *x = malloc(sizeof(float) * T * D), *ref = malloc(sizeof(float) * T * D), *got = calloc((size_t)(T * D), sizeof(float));
    Rng rng;
    rng_seed(&rng, 77);
    for (int64_t i = 0; i < T * D; i++) x[i] = rng_normal(&rng);
    RunState s;
    Err err;
    assert_int_equal(runstate_init(&s, &model, T, T, ATTN_ABSORB, FP8_DEQUANT, &err), 0);
    moe_forward(ref, x, T, &model.w.layers[1], &s.acts.moe, &s.ctx);
    runstate_free(&s);
    EpTransport t;
    EpPlan plan;
    assert_int_equal(ep_cpu_transport_init(&t, nranks, &err), 0);
    assert_int_equal(ep_plan_init(&plan, nranks, c->n_routed_experts, hot, n_hot, &err), 0);
    pthread_t th[8];
    LayerJob jobs[8];
    for (int r = 0; r < nranks; r++) {
        jobs[r] = (LayerJob){ r, nranks, &t, &plan, x, T, got, 0 };
        pthread_create(&th[r], NULL, layer_rank, &jobs[r]);
    }
    for (int r = 0; r < nranks; r++) {
        pthread_join(th[r], NULL);
        assert_int_equal(jobs[r].rc, 0);
    }
    assert_memory_equal(got, ref, sizeof(float) * T * D);
    printf("    MoE layer, %d ranks%s: bit-identical to moe_forward\n", nranks, n_hot ? " with redundant experts" : "");
    ep_plan_free(&plan);
    ep_cpu_transport_free(&t);
    free(x), free(ref), free(got);
}

static void layer_2_4_8(void **state) {
    (void)state;
    layer_matches(2, NULL, 0);
    layer_matches(4, NULL, 0);
    layer_matches(8, NULL, 0);
    int hot[3] = { 1, 5, 9 };
    layer_matches(4, hot, 3);
}

/* ---- the whole model, data-parallel attention + expert-parallel MoE --------------------- */

enum { STEPS = 4, MAX_T = 40 };

typedef struct {
    int rank;
    EpTransport *t;
    const EpPlan *plan;
    int ids[MAX_T];
    int n_prompt;
    float *logits; /* [STEPS + 1][V]: last prompt position, then each decode step */
    int rc;
} ModelJob;

/** Prefill the rank's prompt, then STEPS greedy decode steps; every rank does the same number
 *  of forward calls, so the collectives line up. */
static void run_model(ModelJob *j, EpRank *ep) {
    const Config *c = &model.config;
    int V = c->vocab_size;
    RunState s;
    KVCache kv;
    Err err;
    if (runstate_init(&s, &model, MAX_T, MAX_T, ATTN_ABSORB, FP8_DEQUANT, &err) ||
        kvcache_init(&kv, c, ATTN_ABSORB, c->num_hidden_layers, MAX_T, &err)) {
        j->rc = -1;
        return;
    }
    s.ctx.ep = ep;
    int ids[MAX_T];
    memcpy(ids, j->ids, sizeof ids);
    j->rc = model_forward(&model, &s, &kv, ids, j->n_prompt, j->logits, 1, NULL, NULL, &err);
    for (int step = 0; step < STEPS && j->rc == 0; step++) {
        float *lg = j->logits + (size_t)step * V;
        int next = 0;
        for (int i = 1; i < V; i++)
            if (lg[i] > lg[next]) next = i;
        ids[j->n_prompt + step] = next;
        j->rc = model_forward(&model, &s, &kv, &ids[j->n_prompt + step], 1, j->logits + (size_t)(step + 1) * V, 1, NULL, NULL,
                              &err);
    }
    if (ep && ep->failed) j->rc = -1, fprintf(stderr, "rank %d: %s\n", j->rank, ep->err.msg);
    kvcache_free(&kv);
    runstate_free(&s);
}

static void *model_rank(void *arg) {
    ModelJob *j = arg;
    EpRank r;
    Err err;
    if (ep_rank_init(&r, j->rank, j->t, j->plan, &err)) return j->rc = -1, NULL;
    run_model(j, &r);
    ep_rank_free(&r);
    return NULL;
}

static void model_matches(int nranks) {
    const Config *c = &model.config;
    int V = c->vocab_size;
    EpTransport t;
    EpPlan plan;
    Err err;
    assert_int_equal(ep_cpu_transport_init(&t, nranks, &err), 0);
    assert_int_equal(ep_plan_init(&plan, nranks, c->n_routed_experts, NULL, 0, &err), 0);
    pthread_t th[8];
    ModelJob jobs[8], ref;
    for (int r = 0; r < nranks; r++) {
        memset(&jobs[r], 0, sizeof jobs[r]);
        jobs[r].rank = r, jobs[r].t = &t, jobs[r].plan = &plan;
        jobs[r].n_prompt = 5 + 3 * r; /* prompts of different lengths: uneven token counts per rank */
        for (int i = 0; i < jobs[r].n_prompt; i++) jobs[r].ids[i] = (i * 37 + r * 101 + 3) % V;
        jobs[r].logits = malloc(sizeof(float) * (STEPS + 1) * (size_t)V);
        pthread_create(&th[r], NULL, model_rank, &jobs[r]);
    }
    for (int r = 0; r < nranks; r++) pthread_join(th[r], NULL);
    for (int r = 0; r < nranks; r++) {
        assert_int_equal(jobs[r].rc, 0);
        ref = jobs[r];
        ref.logits = malloc(sizeof(float) * (STEPS + 1) * (size_t)V);
        run_model(&ref, NULL); /* the same prompt, one process, local MoE */
        assert_int_equal(ref.rc, 0);
        assert_memory_equal(jobs[r].logits, ref.logits, sizeof(float) * (STEPS + 1) * (size_t)V);
        free(ref.logits);
        free(jobs[r].logits);
    }
    printf("    whole model, %d ranks (prefill + %d decode steps each): logits bit-identical to single-rank runs\n", nranks,
           STEPS);
    ep_plan_free(&plan);
    ep_cpu_transport_free(&t);
}

static void model_2_4_8(void **state) {
    (void)state;
    model_matches(2);
    model_matches(4);
    model_matches(8);
}

static int setup(void **state) {
    (void)state;
    if (test_tmp_setup(state)) return -1;
    Config c;
    Err err;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tiny", test_tmp);
    CkptLayout layout = { CKPT_BF16, 0, 1, 0 };
    RandomInit ri = { 3, 0.2f };
    if (config_preset(&c, "tiny", &err) || ckpt_write(dir, &c, &layout, ckpt_random_source, &ri, NULL, &err) ||
        model_load(&model, dir, NULL, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    model_free(&model);
    test_tmp_teardown(state);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plan_layout),
        cmocka_unit_test(layer_2_4_8),
        cmocka_unit_test(model_2_4_8),
    };
    return cmocka_run_group_tests_name("expert_parallel", tests, setup, teardown);
}
