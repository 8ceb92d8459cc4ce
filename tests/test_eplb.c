/**
 * @file test_eplb.c
 * @brief Expert-parallel load balancing (ref/ep/eplb.h):
 *  - known answers: the example of DeepSeek's EPLB README (2 layers × 12 experts, 16 slots,
 *    4 groups, 2 nodes, 8 GPUs: its published physical_to_logical maps), a hand-computed hot
 *    expert (loads 100,1,…,1 on 4 GPUs with 4 copies: 5 copies of it, GPU loads 41,22,22,22
 *    against 101,2,2,2), even loads (imbalance 1), uneven slots (20 on 8 GPUs), the global
 *    policy when groups do not divide over nodes, invalid requests;
 *  - routing statistics: lines of one layer add up, bad lines are errors naming the line;
 *  - plan files: write → read gives the same maps; malformed files are one-line errors;
 *  - per-layer plans route the rows where the plan says, with outputs bit-identical to moe_forward;
 *  - mutation fuzzing of both parsers (statistics lines, plan files): every mutant is read or refused
 *    with a one-line message, never a crash (ASan/UBSan in make test-asan);
 *  - --routing-stats of perplexity and train count every token's K choices of every MoE layer;
 *  - the bundled models/kjv: `generate --routing-stats` counts every token's K choices per layer,
 *    `dsv3 eplb` lowers the imbalance, `--ep 4 --ep-plan` gives the same logits and text as one
 *    process, `dsv3 plan --ep-plan` reports it; bad uses of --ep-plan are one-line errors.
 */
#include <math.h>
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

#include "base/rng.h"
#include "ep/eplb.h"
#include "model/model.h"
#include "util_compare.h"
#include "util_model.h"
#include "util_run.h"

static const char *const KJV = "models/kjv";

static void readme_example(void **state) {
    (void)state;
    const double w[2][12] = { { 90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86 },
                              { 20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27 } };
    const int want[2][16] = { { 5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1 },
                              { 7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1 } };
    EplbPlan p;
    Err err;
    assert_int_equal(eplb_rebalance(&p, &w[0][0], NULL, 2, 12, 16, 4, 2, 8, &err), 0);
    assert_true(p.hierarchical);
    for (int l = 0; l < 2; l++) {
        assert_memory_equal(p.phy2log + 16 * l, want[l], sizeof want[l]);
        /* the inverse map and the counts agree with it */
        for (int e = 0; e < 12; e++) {
            int n = 0;
            for (int s = 0; s < 16; s++) n += want[l][s] == e;
            assert_int_equal(p.log_count[12 * l + e], n);
            for (int k = 0; k < p.max_count; k++) {
                int s = p.log2phy[(12 * l + e) * p.max_count + k];
                if (k < n) assert_int_equal(want[l][s], e);
                else assert_int_equal(s, -1);
            }
        }
    }
    printf("    EPLB's README example: physical_to_logical of both layers as published\n");
    eplb_plan_free(&p);
}

static void hand_made(void **state) {
    (void)state;
    EplbPlan p;
    Err err;
    double gl[8];
    /* one hot expert: its 5 copies carry 20 each */
    double hot[8] = { 100, 1, 1, 1, 1, 1, 1, 1 };
    assert_int_equal(eplb_rebalance(&p, hot, NULL, 1, 8, 12, 1, 1, 4, &err), 0);
    assert_int_equal(p.log_count[0], 5);
    double after = eplb_gpu_load(&p, 0, gl);
    assert_true(gl[0] == 41 && gl[1] == 22 && gl[2] == 22 && gl[3] == 22);
    double before = eplb_contiguous_load(hot, 8, 4, gl);
    assert_true(gl[0] == 101 && gl[1] == 2);
    assert_true(fabs(after - 41 / 26.75) < 1e-12 && fabs(before - 101 / 26.75) < 1e-12);
    printf("    hot expert: 5 copies, GPU loads 41/22/22/22 (max/mean %.3f) instead of 101/2/2/2 (%.3f)\n", after, before);
    eplb_plan_free(&p);
    /* even loads stay even */
    double even[16];
    for (int e = 0; e < 16; e++) even[e] = 7;
    assert_int_equal(eplb_rebalance(&p, even, NULL, 1, 16, 16, 4, 1, 4, &err), 0);
    assert_true(eplb_gpu_load(&p, 0, gl) == 1.0);
    eplb_plan_free(&p);
    /* 20 slots on 8 GPUs: 3,3,3,3,2,2,2,2; every expert somewhere */
    double ramp[16];
    for (int e = 0; e < 16; e++) ramp[e] = 1 + e;
    assert_int_equal(eplb_rebalance(&p, ramp, NULL, 1, 16, 20, 4, 1, 8, &err), 0);
    for (int g = 0; g < 8; g++) assert_int_equal(p.slot_start[g + 1] - p.slot_start[g], g < 4 ? 3 : 2);
    for (int e = 0; e < 16; e++) assert_true(p.log_count[e] >= 1);
    assert_true(eplb_gpu_load(&p, 0, gl) < eplb_contiguous_load(ramp, 16, 8, gl));
    eplb_plan_free(&p);
    /* 4 groups on 3 nodes: the global policy */
    assert_int_equal(eplb_rebalance(&p, ramp, NULL, 1, 16, 24, 4, 3, 6, &err), 0);
    assert_false(p.hierarchical);
    eplb_plan_free(&p);
    /* invalid requests */
    assert_int_equal(eplb_rebalance(&p, ramp, NULL, 1, 16, 12, 4, 1, 4, &err), -1); /* fewer slots than experts */
    assert_int_equal(eplb_rebalance(&p, ramp, NULL, 1, 16, 16, 4, 3, 8, &err), -1); /* GPUs not a multiple of nodes */
    assert_int_equal(eplb_rebalance(&p, ramp, NULL, 1, 16, 16, 5, 1, 4, &err), -1); /* 16 experts in 5 groups */
    ramp[3] = -1;
    assert_int_equal(eplb_rebalance(&p, ramp, NULL, 1, 16, 16, 4, 1, 4, &err), -1);
}

static char *tmp_file(const char *name, const char *text) {
    static char path[4300];
    snprintf(path, sizeof path, "%s/%s", test_tmp, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void stats_and_plan_files(void **state) {
    (void)state;
    RoutingStats s;
    Err err;
    const char *two = "{\"layer\":2,\"tokens\":3,\"experts\":4,\"groups\":2,\"load\":[1,2,3,0]}\n\n"
                      "{\"layer\":1,\"mtp\":false,\"tokens\":2,\"experts\":4,\"groups\":2,\"load\":[4,0,0,0]}\n"
                      "{\"layer\":2,\"tokens\":1,\"experts\":4,\"groups\":2,\"load\":[0,0,0,2]}\n";
    assert_int_equal(routing_stats_read(&s, tmp_file("s.jsonl", two), &err), 0);
    assert_int_equal(s.n_layers, 2);
    assert_int_equal(s.layer[0], 1);
    assert_int_equal(s.tokens[1], 4);
    const int64_t want[4] = { 1, 2, 3, 2 };
    assert_memory_equal(s.load + 4, want, sizeof want);
    /* a plan from them, written and read back */
    EplbPlan p, q;
    assert_int_equal(eplb_rebalance_stats(&p, &s, 6, 0, 1, 2, &err), 0);
    char plan[4300];
    snprintf(plan, sizeof plan, "%s/plan.json", test_tmp);
    assert_int_equal(eplb_plan_write(&p, plan, &err), 0);
    assert_int_equal(eplb_plan_read(&q, plan, &err), 0);
    assert_int_equal(q.n_layers, 2);
    assert_memory_equal(q.phy2log, p.phy2log, sizeof(int) * 12);
    assert_memory_equal(q.log_count, p.log_count, sizeof(int) * 8);
    assert_memory_equal(q.phy_rank, p.phy_rank, sizeof(int) * 12);
    assert_memory_equal(q.slot_start, p.slot_start, sizeof(int) * 3);
    assert_int_equal(q.max_count, p.max_count);
    assert_memory_equal(q.log2phy, p.log2phy, sizeof(int) * 8 * (size_t)p.max_count);
    /* --eval: the same placement measured on other loads (here: the same ones, then one layer short) */
    double gl[2], before = eplb_gpu_load(&p, 1, gl);
    assert_int_equal(eplb_plan_set_loads(&q, &s, &err), 0);
    assert_true(eplb_gpu_load(&q, 1, gl) == before);
    s.layer[0] = 7;
    assert_int_equal(eplb_plan_set_loads(&q, &s, &err), -1);
    assert_non_null(strstr(err.msg, "layer 1"));
    eplb_plan_free(&p), eplb_plan_free(&q);
    routing_stats_free(&s);
    /* malformed statistics and plans */
    const char *bad_stats[] = { "{\"layer\":1,\"tokens\":2,\"experts\":4,\"load\":[1,2]}\n",
                                "{\"layer\":1,\"tokens\":2,\"experts\":4,\"load\":[1,2,3,4]}\n{\"layer\":2,\"tokens\":2,\"experts\":5,\"load\":[1,2,3,4,5]}\n",
                                "not json\n", "{\"layer\":-1,\"tokens\":2,\"experts\":1,\"load\":[1]}\n", "" };
    for (size_t i = 0; i < sizeof bad_stats / sizeof *bad_stats; i++) {
        assert_int_equal(routing_stats_read(&s, tmp_file("bad.jsonl", bad_stats[i]), &err), -1);
        printf("    bad statistics: %s\n", err.msg);
    }
    const char *bad_plans[] = {
        "{\"format\":\"other\"}",
        "{\"format\":\"dsv3-eplb-plan\",\"version\":1,\"policy\":\"global\",\"experts\":4,\"physical\":4,\"groups\":1,\"nodes\":1,"
        "\"gpus\":2,\"slots\":[2,2],\"layers\":[{\"layer\":1,\"physical_to_logical\":[0,1,2,9],\"logical_count\":[1,1,1,1],\"load\":[1,1,1,1]}]}",
        "{\"format\":\"dsv3-eplb-plan\",\"version\":1,\"policy\":\"global\",\"experts\":4,\"physical\":4,\"groups\":1,\"nodes\":1,"
        "\"gpus\":2,\"slots\":[2,2],\"layers\":[{\"layer\":1,\"physical_to_logical\":[0,1,2,2],\"logical_count\":[1,1,1,1],\"load\":[1,1,1,1]}]}",
        "{\"format\":\"dsv3-eplb-plan\",\"version\":1,\"policy\":\"global\",\"experts\":4,\"physical\":4,\"groups\":1,\"nodes\":1,"
        "\"gpus\":2,\"slots\":[3,2],\"layers\":[{\"layer\":1,\"physical_to_logical\":[0,1,2,3],\"logical_count\":[1,1,1,1],\"load\":[1,1,1,1]}]}",
        "{\"format\":\"dsv3-eplb-plan\",\"version\":1,\"policy\":\"global\",\"experts\":4,\"physical\":4,\"groups\":1,\"nodes\":1,"
        "\"gpus\":2,\"slots\":[2,2],\"layers\":[{\"layer\":1,\"physical_to_logical\":[0,1,2,3],\"logical_count\":[1,1,1,1],"
        "\"logical_to_physical\":[[0],[1],[3],[2]],\"load\":[1,1,1,1]}]}",
    };
    for (size_t i = 0; i < sizeof bad_plans / sizeof *bad_plans; i++) {
        assert_int_equal(eplb_plan_read(&q, tmp_file("bad.json", bad_plans[i]), &err), -1);
        printf("    bad plan: %s\n", err.msg);
    }
}

/** Writes @p n bytes to @p path. */
static void put(const char *path, const unsigned char *b, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(b, 1, n, f);
    fclose(f);
}

/** One random mutation of buf[0..*n) in place (bit flip, JSON character, digit, deletion, truncation). */
static void mutate(unsigned char *buf, size_t *n, size_t cap, Rng *r) {
    static const char specials[] = "0123456789-.e,[]{}\":ntf ";
    if (*n == 0) return;
    size_t at = rng_u32(r) % *n;
    switch (rng_u32(r) % 5) {
    case 0: buf[at] ^= (unsigned char)(1u << (rng_u32(r) % 8)); break;
    case 1: buf[at] = (unsigned char)specials[rng_u32(r) % (sizeof specials - 1)]; break;
    case 2: memmove(buf + at, buf + at + 1, *n - at - 1), (*n)--; break;
    case 3: *n = at; break;
    default:
        if (*n < cap) memmove(buf + at + 1, buf + at, *n - at), buf[at] = (unsigned char)specials[rng_u32(r) % 10], (*n)++;
    }
}

static void fuzz_parsers(void **state) {
    (void)state;
    /* valid seeds: statistics of two layers, and a plan made from them */
    const char *seed_stats = "{\"layer\":1,\"mtp\":false,\"tokens\":9,\"experts\":4,\"groups\":2,\"load\":[10,9,8,9]}\n"
                             "{\"layer\":2,\"mtp\":true,\"tokens\":9,\"experts\":4,\"groups\":2,\"load\":[1,30,3,2]}\n";
    char spath[4300], ppath[4300], mpath[4300];
    snprintf(spath, sizeof spath, "%s/fz.jsonl", test_tmp);
    snprintf(ppath, sizeof ppath, "%s/fz.json", test_tmp);
    snprintf(mpath, sizeof mpath, "%s/mut", test_tmp);
    put(spath, (const unsigned char *)seed_stats, strlen(seed_stats));
    RoutingStats s;
    EplbPlan p;
    Err err;
    assert_int_equal(routing_stats_read(&s, spath, &err), 0);
    assert_int_equal(eplb_rebalance_stats(&p, &s, 6, 0, 1, 2, &err), 0);
    assert_int_equal(eplb_plan_write(&p, ppath, &err), 0);
    eplb_plan_free(&p), routing_stats_free(&s);
    Rng r;
    rng_seed(&r, 99);
    int accepted[2] = { 0, 0 }, total = 0;
    for (int which = 0; which < 2; which++) {
        size_t n0;
        unsigned char *seed = read_bytes(which ? ppath : spath, &n0), *buf = malloc(n0 + 64);
        for (int i = 0; i < 1500; i++) {
            size_t n = n0;
            memcpy(buf, seed, n0);
            for (int k = 1 + (int)(rng_u32(&r) % 4); k > 0; k--) mutate(buf, &n, n0 + 64, &r);
            put(mpath, buf, n);
            err.msg[0] = 0;
            int rc = which ? eplb_plan_read(&p, mpath, &err) : routing_stats_read(&s, mpath, &err);
            if (rc == 0) {
                accepted[which]++;
                if (which) eplb_plan_free(&p);
                else routing_stats_free(&s);
            } else {
                assert_int_equal(rc, -1);
                assert_true(err.msg[0] && !strchr(err.msg, '\n'));
            }
            total++;
        }
        free(seed), free(buf);
    }
    printf("    %d mutants: %d statistics and %d plans still valid, the rest refused with one line each\n", total, accepted[0],
           accepted[1]);
}

/* ---- per-layer plans in expert parallelism ------------------------------------------------ */

static Model model;

typedef struct {
    int rank;
    EpTransport *t;
    const EpPlan *plan, *layer_plans;
    const float *x;
    int64_t T_all;
    float *out;
    size_t sent_to_self;
    int rc;
} Job;

static void *rank_job(void *arg) {
    Job *j = arg;
    int64_t D = model.config.hidden_size, t0 = j->T_all * j->rank / 2, t1 = j->T_all * (j->rank + 1) / 2;
    RunState s;
    EpRank r;
    Err err;
    if (runstate_init(&s, &model, 32, 32, ATTN_ABSORB, FP8_DEQUANT, &err) || ep_rank_init(&r, j->rank, j->t, j->plan, &err))
        return j->rc = -1, NULL;
    r.layer_plans = j->layer_plans, r.n_layer_plans = model.config.num_hidden_layers;
    j->rc = ep_moe_forward(j->out + t0 * D, j->x + t0 * D, t1 - t0, &model.w.layers[1], &s.acts.moe, &r, &s.ctx, &err);
    if (j->rc) fprintf(stderr, "rank %d: %s\n", j->rank, err.msg);
    j->sent_to_self = r.rows_n[j->rank];
    ep_rank_free(&r);
    runstate_free(&s);
    return NULL;
}

static void layer_plans_route(void **state) {
    (void)state;
    const Config *c = &model.config;
    int64_t D = c->hidden_size, T = 20, E = c->n_routed_experts;
    float *x, *ref = moe_reference(&model, 1, T, 5, &x), *got = calloc((size_t)(T * D), sizeof(float));
    assert_non_null(ref);
    Err err;
    /* layer 1: every expert on rank 1 only; the default plan (contiguous halves) for the rest */
    EpTransport t;
    EpPlan plan, *layers = calloc((size_t)c->num_hidden_layers, sizeof *layers);
    int *ranks = malloc(sizeof(int) * (size_t)E);
    for (int e = 0; e < E; e++) ranks[e] = 1;
    assert_int_equal(ep_cpu_transport_init(&t, 2, &err), 0);
    assert_int_equal(ep_plan_init(&plan, 2, (int)E, NULL, 0, &err), 0);
    assert_int_equal(ep_plan_init_placement(&layers[1], 2, (int)E, ranks, 1, &err), 0);
    pthread_t th[2];
    Job jobs[2];
    for (int r = 0; r < 2; r++) {
        jobs[r] = (Job){ r, &t, &plan, layers, x, T, got, 0, 0 };
        pthread_create(&th[r], NULL, rank_job, &jobs[r]);
    }
    for (int r = 0; r < 2; r++) {
        pthread_join(th[r], NULL);
        assert_int_equal(jobs[r].rc, 0);
    }
    assert_memory_equal(got, ref, sizeof(float) * T * D);
    assert_int_equal(jobs[0].sent_to_self, 0);                                 /* rank 0 holds none of them */
    assert_int_equal(jobs[1].sent_to_self, (size_t)(T / 2 * c->num_experts_per_tok)); /* rank 1 all of its own */
    printf("    a per-layer plan (all experts on rank 1): rows go there, outputs bit-identical to moe_forward\n");
    ep_plan_free(&plan), ep_plan_free(&layers[1]);
    ep_cpu_transport_free(&t);
    free(layers), free(ranks), free(x), free(ref), free(got);
    /* a placement that leaves an expert nowhere is refused */
    int none[2] = { 0, -1 };
    EpPlan bad;
    assert_int_equal(ep_plan_init_placement(&bad, 2, 2, none, 1, &err), -1);
}

/* ---- the bundled model, through the binary ------------------------------------------------ */

static void measured_kjv(void **state) {
    (void)state;
    char stats[4300], plan[4300], one[4300], ep[4300];
    snprintf(stats, sizeof stats, "%s/kjv.jsonl", test_tmp);
    snprintf(plan, sizeof plan, "%s/kjv-plan.json", test_tmp);
    snprintf(one, sizeof one, "%s/one.f32", test_tmp);
    snprintf(ep, sizeof ep, "%s/ep.f32", test_tmp);
    RunResult g = run_shell(NULL, "%s generate -m %s -p 'In the beginning' --temp 0 -n 48 --routing-stats %s", dsv3_bin(), KJV, stats);
    assert_int_equal(g.status, 0);
    RoutingStats s;
    Err err;
    assert_int_equal(routing_stats_read(&s, stats, &err), 0);
    assert_int_equal(s.n_layers, 3); /* layers 1..3 (layer 0 is dense; no MTP without --spec mtp) */
    for (int j = 0; j < s.n_layers; j++) {
        int64_t sum = 0;
        for (int e = 0; e < s.n_experts; e++) sum += s.load[(size_t)j * s.n_experts + e];
        assert_int_equal(sum, s.tokens[j] * model.config.num_experts_per_tok);
        assert_true(s.tokens[j] >= 48);
    }
    routing_stats_free(&s);
    /* the same statistics from the same run with --ep 2 */
    char stats2[4300];
    snprintf(stats2, sizeof stats2, "%s/kjv2.jsonl", test_tmp);
    RunResult g2 = run_shell(NULL, "%s generate -m %s -p 'In the beginning' --temp 0 -n 48 --routing-stats %s --ep 2", dsv3_bin(), KJV,
                             stats2);
    assert_int_equal(g2.status, 0);
    assert_string_equal(g.out, g2.out);
    size_t n1, n2;
    unsigned char *a = read_bytes(stats, &n1), *b = read_bytes(stats2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a), free(b);
    run_result_free(&g2);
    /* the plan lowers the imbalance */
    RunResult e = run_shell(NULL, "%s eplb --stats %s --gpus 4 --redundant 4 -o %s", dsv3_bin(), stats, plan);
    assert_int_equal(e.status, 0);
    printf("%s", e.out);
    EplbPlan p;
    assert_int_equal(eplb_plan_read(&p, plan, &err), 0);
    double gl[4], before = 0, after = 0;
    for (int l = 0; l < p.n_layers; l++) {
        before += eplb_contiguous_load(p.weight + (size_t)l * p.n_experts, p.n_experts, 4, gl);
        after += eplb_gpu_load(&p, l, gl);
    }
    assert_true(after < before);
    eplb_plan_free(&p);
    run_result_free(&e);
    /* --ep 4 with the plan: the same logits and text as one process */
    const char *ids = "5,17,3,9,11,2,100,7,64,65,66,1,300";
    RunResult l1 = run_shell(NULL, "%s logits -m %s --ids %s -o %s", dsv3_bin(), KJV, ids, one);
    RunResult l2 = run_shell(NULL, "%s logits -m %s --ids %s -o %s --ep 4 --ep-plan %s", dsv3_bin(), KJV, ids, ep, plan);
    assert_int_equal(l1.status, 0);
    if (l2.status) fprintf(stderr, "%s", l2.err);
    assert_int_equal(l2.status, 0);
    assert_non_null(strstr(l2.err, "--ep-plan"));
    a = read_bytes(one, &n1), b = read_bytes(ep, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a), free(b);
    run_result_free(&l1), run_result_free(&l2);
    RunResult g4 = run_shell(NULL, "%s generate -m %s -p 'In the beginning' --temp 0 -n 48 --ep 4 --ep-plan %s", dsv3_bin(), KJV, plan);
    assert_int_equal(g4.status, 0);
    assert_string_equal(g.out, g4.out);
    printf("    --ep 4 --ep-plan: logits bit-identical, the same text\n");
    run_result_free(&g4);
    run_result_free(&g);
    /* dsv3 plan with it */
    RunResult pl = run_shell(NULL, "%s plan -m %s --ep-plan %s", dsv3_bin(), KJV, plan);
    assert_int_equal(pl.status, 0);
    assert_non_null(strstr(pl.out, "EPLB plan        hierarchical policy, 4 redundant experts per layer"));
    assert_non_null(strstr(pl.out, "(5.00 routed experts per GPU per layer)"));
    run_result_free(&pl);
    /* wrong uses: another group size, another model, no group, the GPU backend, a broken file */
    char cmd[3][9000];
    snprintf(cmd[0], sizeof cmd[0], "%s logits -m %s --ids %s -o %s/x.f32 --ep 2 --ep-plan %s", dsv3_bin(), KJV, ids, test_tmp, plan);
    snprintf(cmd[1], sizeof cmd[1], "%s logits -m %s --ids %s -o %s/x.f32 --ep-plan %s", dsv3_bin(), KJV, ids, test_tmp, plan);
    snprintf(cmd[2], sizeof cmd[2], "%s plan --ep-plan %s", dsv3_bin(), plan);
    for (int i = 0; i < 3; i++) {
        RunResult r = run_shell(NULL, "%s", cmd[i]);
        printf("    %s", r.err);
        assert_int_not_equal(r.status, 0);
        assert_int_equal(count_lines(r.err), 1);
        run_result_free(&r);
    }
    char path[4300];
    snprintf(path, sizeof path, "%s/x.f32", test_tmp);
    assert_int_equal(access(path, F_OK), -1);
}

/** Every line of @p path: Σ load = tokens · K; returns the tokens of layer @p layer. */
static int64_t stats_tokens(const char *path, int layer, int K) {
    RoutingStats s;
    Err err;
    if (routing_stats_read(&s, path, &err)) fail_msg("%s", err.msg);
    int64_t tokens = -1;
    for (int j = 0; j < s.n_layers; j++) {
        int64_t sum = 0;
        for (int e = 0; e < s.n_experts; e++) sum += s.load[(size_t)j * s.n_experts + e];
        assert_int_equal(sum, s.tokens[j] * K);
        if (s.layer[j] == layer) tokens = s.tokens[j];
    }
    routing_stats_free(&s);
    return tokens;
}

static void routing_stats_everywhere(void **state) {
    (void)state;
    char path[4300], ids[4300], out[4300];
    snprintf(path, sizeof path, "%s/rs.jsonl", test_tmp);
    snprintf(ids, sizeof ids, "%s/ids.bin", test_tmp);
    snprintf(out, sizeof out, "%s/run", test_tmp);
    FILE *f = fopen(ids, "wb");
    for (uint32_t i = 0; i < 700; i++) {
        uint32_t id = (i * 2654435761u) % 300;
        fwrite(&id, 4, 1, f);
    }
    fclose(f);
    /* perplexity: 2 chunks of 64 tokens; --mtp: the MTP block sees 63 of each */
    RunResult r = run_shell(NULL, "%s perplexity -m %s --ids %s -c 64 --max-chunks 2 --mtp --routing-stats %s", dsv3_bin(), KJV, ids, path);
    assert_int_equal(r.status, 0);
    run_result_free(&r);
    assert_int_equal(stats_tokens(path, 1, 4), 128);
    assert_int_equal(stats_tokens(path, 4, 4), 126);
    /* train: 2 steps of 2 sequences of 16 tokens; the MTP depth sees 15 of each */
    r = run_shell(NULL, "%s train --train %s --preset tiny -n 2 -b 2 -T 16 --val-every 0 -o %s --routing-stats %s", dsv3_bin(), ids, out,
                  path);
    assert_int_equal(r.status, 0);
    run_result_free(&r);
    assert_int_equal(stats_tokens(path, 3, 4), 64);
    assert_int_equal(stats_tokens(path, 4, 4), 60);
    /* an unwritable file: an error, nothing left behind */
    r = run_shell(NULL, "%s perplexity -m %s --ids %s -c 64 --max-chunks 1 --routing-stats %s/no/such/dir.jsonl", dsv3_bin(), KJV, ids,
                  test_tmp);
    assert_int_not_equal(r.status, 0);
    assert_int_equal(count_lines(r.err), 1);
    run_result_free(&r);
    printf("    --routing-stats of perplexity (--mtp) and train: every token's choices, per layer\n");
}

static int setup(void **state) {
    if (test_tmp_setup(state)) return -1;
    Err err;
    if (model_load(&model, KJV, NULL, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    model_free(&model);
    return test_tmp_teardown(state);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(readme_example),    cmocka_unit_test(hand_made),    cmocka_unit_test(stats_and_plan_files),
        cmocka_unit_test(fuzz_parsers),
        cmocka_unit_test(layer_plans_route), cmocka_unit_test(measured_kjv), cmocka_unit_test(routing_stats_everywhere),
    };
    return cmocka_run_group_tests_name("eplb", tests, setup, teardown);
}
