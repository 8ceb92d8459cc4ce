/**
 * @file test_ep.c
 * @brief Expert parallelism over the in-process CPU transport: 2, 4 and 8 ranks (threads of
 *        this process) must reproduce the single-rank results bit for bit —
 *  - one MoE layer: tokens split over the ranks, each rank's outputs == moe_forward's rows;
 *  - the same with redundant copies of hot experts (rows routed to a copy);
 *  - the whole model, data-parallel: every rank runs its own prompt (prefill + decode steps)
 *    with MoE layers dispatched/combined across ranks; logits == a single-process run's.
 * Then the TCP transport (ep_socket.h), ranks as threads with their own sockets:
 *  - rank 0 runs the whole model while ranks 1.. are expert servers (ep_serve, the CLI's --ep);
 *    logits == the single-process run's, and ep_stop ends the servers;
 *  - its failures: a length that differs from the expected one, a peer that closed, a call after
 *    a failure, ranks at different layers, a rank that never joins (timeout).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "ep/bootstrap.h"
#include "model/ckpt.h"
#include "ep/ep.h"
#include "ep/ep_socket.h"
#include "model/model.h"
#include "base/rng.h"
#include "util_compare.h"
#include "util_model.h"

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
    float *x, *ref = moe_reference(&model, 1, T, 77, &x), *got = calloc((size_t)(T * D), sizeof(float));
    assert_non_null(ref);
    Err err;
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
    s.ctx.moe_hook = ep ? &ep->hook : NULL;
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
    if (ep && ep->hook.failed) j->rc = -1, fprintf(stderr, "rank %d: %s\n", j->rank, ep->hook.err.msg);
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

/* ---- the TCP transport: one model rank, expert servers ------------------------------- */

/** A free TCP port on this host (picked by the kernel, released for the test to listen on). */
static int free_port(void) {
    int fd, port;
    Err err;
    assert_int_equal(bootstrap_listen(0, &fd, &port, &err), 0);
    close(fd);
    return port;
}

static LaunchEnv local_env(int nranks, int rank, int port) {
    LaunchEnv e;
    memset(&e, 0, sizeof e);
    e.world_size = nranks, e.rank = rank, e.local_rank = rank, e.master_port = port;
    snprintf(e.master_addr, sizeof e.master_addr, "127.0.0.1");
    return e;
}

typedef struct {
    LaunchEnv env;
    const EpPlan *plan;
    ModelJob *job;  /* rank 0: the model run; NULL: an expert server */
    int rc;
    Err err;
} ServeJob;

static void *serve_rank(void *arg) {
    ServeJob *j = arg;
    EpTransport t;
    EpRank r;
    RunState s;
    if (ep_socket_transport_init(&t, &j->env, 20.0, &j->err)) return j->rc = -1, NULL;
    if (ep_rank_init(&r, j->env.rank, &t, j->plan, &j->err)) return j->rc = -1, NULL;
    if (j->job) {
        run_model(j->job, &r);
        j->rc = j->job->rc || ep_stop(&r, &j->err);
    } else if (runstate_init(&s, &model, 8, 8, ATTN_ABSORB, FP8_DEQUANT, &j->err) == 0) {
        j->rc = ep_serve(&r, &model.w, &s.ctx, &j->err); /* 8 rows at a time: chunking must not change a bit */
        runstate_free(&s);
    } else {
        j->rc = -1;
    }
    ep_rank_free(&r);
    ep_socket_transport_free(&t);
    return NULL;
}

static void servers_match(int nranks) {
    const Config *c = &model.config;
    int V = c->vocab_size, port = free_port();
    EpPlan plan;
    Err err;
    assert_int_equal(ep_plan_init(&plan, nranks, c->n_routed_experts, NULL, 0, &err), 0);
    ModelJob job, ref;
    memset(&job, 0, sizeof job);
    job.n_prompt = 11;
    for (int i = 0; i < job.n_prompt; i++) job.ids[i] = (i * 53 + 7) % V;
    job.logits = malloc(sizeof(float) * (STEPS + 1) * (size_t)V);
    pthread_t th[8];
    ServeJob jobs[8];
    for (int r = 0; r < nranks; r++) {
        jobs[r] = (ServeJob){ local_env(nranks, r, port), &plan, r == 0 ? &job : NULL, 0, { "" } };
        pthread_create(&th[r], NULL, serve_rank, &jobs[r]);
    }
    for (int r = 0; r < nranks; r++) {
        pthread_join(th[r], NULL);
        if (jobs[r].rc) fprintf(stderr, "rank %d: %s\n", r, jobs[r].err.msg);
        assert_int_equal(jobs[r].rc, 0);
    }
    ref = job;
    ref.logits = malloc(sizeof(float) * (STEPS + 1) * (size_t)V);
    run_model(&ref, NULL);
    assert_int_equal(ref.rc, 0);
    assert_memory_equal(job.logits, ref.logits, sizeof(float) * (STEPS + 1) * (size_t)V);
    printf("    TCP, rank 0 + %d expert servers (prefill + %d decode steps): logits bit-identical; servers stopped\n", nranks - 1,
           STEPS);
    free(ref.logits), free(job.logits);
    ep_plan_free(&plan);
}

static void tcp_servers_2_4(void **state) {
    (void)state;
    servers_match(2);
    servers_match(4);
}

/** Two ranks over TCP for the failure cases; each thread runs one scripted step. */
typedef struct {
    LaunchEnv env;
    int script; /* which case */
    int rc, rc2;
    Err err, err2;
} PairJob;

static void *pair_rank(void *arg) {
    PairJob *j = arg;
    EpTransport t;
    if (ep_socket_transport_init(&t, &j->env, 20.0, &j->err)) return j->rc = -1, NULL;
    int me = j->env.rank;
    char send[64], recv[64];
    memset(recv, 0, sizeof recv);
    for (int i = 0; i < 64; i++) send[i] = (char)(me * 64 + i);
    size_t sb[2], so[2] = { 0, 32 }, rb[2], ro[2] = { 0, 32 };
    if (j->script == 0) { /* a good exchange of uneven sizes, including an empty one */
        sb[0] = me ? 7 : 3, sb[1] = me ? 0 : 20, rb[0] = me ? 20 : 3, rb[1] = me ? 0 : 7;
        j->rc = t.alltoallv(&t, me, send, sb, so, recv, rb, ro, &j->err);
        if (!j->rc && me == 0) j->rc = memcmp(recv, send, 3) || recv[32] != (char)64 || recv[38] != (char)70;
        if (!j->rc && me == 1) j->rc = recv[0] != (char)32 || recv[19] != (char)51;
    } else if (j->script == 1) { /* rank 1 sends 8 bytes where rank 0 expects 5 */
        sb[0] = me ? 8 : 4, sb[1] = 4, rb[0] = 4, rb[1] = me ? 4 : 5;
        j->rc = t.alltoallv(&t, me, send, sb, so, recv, rb, ro, &j->err);
        if (me == 0) j->rc2 = t.alltoallv(&t, me, send, sb, so, recv, rb, ro, &j->err2);
    } else { /* rank 1 leaves; rank 0's next exchange names it */
        if (me == 0) {
            sb[0] = sb[1] = rb[0] = rb[1] = 4;
            j->rc = t.alltoallv(&t, me, send, sb, so, recv, rb, ro, &j->err);
        }
    }
    ep_socket_transport_free(&t);
    return NULL;
}

static void run_pair(PairJob jobs[2], int script) {
    int port = free_port();
    pthread_t th[2];
    for (int r = 0; r < 2; r++) {
        memset(&jobs[r], 0, sizeof jobs[r]);
        jobs[r].env = local_env(2, r, port), jobs[r].script = script;
        pthread_create(&th[r], NULL, pair_rank, &jobs[r]);
    }
    for (int r = 0; r < 2; r++) pthread_join(th[r], NULL);
}

static void tcp_failures(void **state) {
    (void)state;
    PairJob j[2];
    run_pair(j, 0);
    assert_int_equal(j[0].rc, 0);
    assert_int_equal(j[1].rc, 0);
    run_pair(j, 1);
    assert_int_equal(j[0].rc, -1);
    printf("    TCP: \"%s\"\n", j[0].err.msg);
    assert_non_null(strstr(j[0].err.msg, "expected 5 bytes from rank 1, which sends 8"));
    assert_int_equal(j[0].rc2, -1);
    assert_non_null(strstr(j[0].err2.msg, "earlier exchange failed"));
    run_pair(j, 2);
    assert_int_equal(j[0].rc, -1);
    printf("    TCP: \"%s\"\n", j[0].err.msg);
    assert_non_null(strstr(j[0].err.msg, "the connection to rank 1 "));
    assert_non_null(strstr(j[0].err.msg, "(that process exited or failed)"));
    /* a rank whose peers never come: a clear timeout, not a hang */
    LaunchEnv lone = local_env(2, 1, free_port());
    EpTransport t;
    Err err;
    double t0 = now_seconds();
    assert_int_equal(ep_socket_transport_init(&t, &lone, 0.3, &err), -1);
    assert_true(now_seconds() - t0 < 5.0);
    assert_non_null(strstr(err.msg, "rank 1 joining rank 0"));
    printf("    TCP: \"%s\"\n", err.msg);
}

/** Two active ranks at different layers, or no active rank at all: an error, not mixed layers. */
typedef struct {
    EpTransport *t;
    EpPlan *plan;
    int rank, layer, rc;
    Err err;
} StepJob;

static void *step_rank(void *arg) {
    StepJob *j = arg;
    EpRank r;
    size_t send[2] = { 0, 0 }, recv[2];
    int group;
    if (ep_rank_init(&r, j->rank, j->t, j->plan, &j->err)) return j->rc = -1, NULL;
    j->rc = ep_exchange_counts(&r, j->layer, send, recv, &group, &j->err);
    ep_rank_free(&r);
    return NULL;
}

static void layers_out_of_step(void **state) {
    (void)state;
    EpTransport t;
    EpPlan plan;
    Err err;
    assert_int_equal(ep_cpu_transport_init(&t, 2, &err), 0);
    assert_int_equal(ep_plan_init(&plan, 2, model.config.n_routed_experts, NULL, 0, &err), 0);
    const int cases[2][2] = { { 1, 2 }, { EP_PASSIVE, EP_PASSIVE } };
    const char *want[2] = { "ranks out of step: rank 0 is at layer 1, rank 1 at layer 2", "every rank is passive" };
    for (int c = 0; c < 2; c++) {
        pthread_t th[2];
        StepJob jobs[2];
        for (int r = 0; r < 2; r++) {
            jobs[r] = (StepJob){ &t, &plan, r, cases[c][r], 0, { "" } };
            pthread_create(&th[r], NULL, step_rank, &jobs[r]);
        }
        for (int r = 0; r < 2; r++) {
            pthread_join(th[r], NULL);
            assert_int_equal(jobs[r].rc, -1);
            assert_non_null(strstr(jobs[r].err.msg, want[c]));
        }
    }
    ep_plan_free(&plan);
    ep_cpu_transport_free(&t);
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
        cmocka_unit_test(tcp_servers_2_4),
        cmocka_unit_test(tcp_failures),
        cmocka_unit_test(layers_out_of_step),
    };
    return cmocka_run_group_tests_name("expert_parallel", tests, setup, teardown);
}
