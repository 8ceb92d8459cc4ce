/**
 * @file test_gate.c
 * @brief The noaux_tc gate (docs/model.md §5.1) on hand-constructed cases. Config: 8 experts in 4
 *        groups of 2, keep 2 groups, top-2 experts, routed_scaling_factor 2.5, renormalized.
 *        Values are derived by hand in the comments (s = sigmoid(logit), c = s + bias).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model/gate.h"

static Config cfg;

static float sig(float x) { return 1.0f / (1.0f + expf(-x)); }

static void route(const float *logits, const float *bias, int *idx, float *w, float *scores) {
    float work[2 * (8 + 4)];
    gate_forward(idx, w, scores, logits, bias, &cfg, work);
}

/** The bias moves expert 3 into the top-2, but its weight uses the unbiased affinity. */
static void bias_changes_selection(void **state) {
    (void)state;
    float logits[8] = { 2, 1, 0, 0, -1, -1, -2, -2 }, bias[8] = { 0, 0, 0, 0.5f, 0, 0, 0, 0 }, zero[8] = { 0 };
    int idx[2];
    float w[2], s[8];
    /* c = [.881, .731, .5, 1.0, .269, .269, .119, .119]; groups: 1.612, 1.5, .538, .238 → keep 0, 1;
     * top-2 of c in groups 0–1: expert 3 (1.0), expert 0 (.881). Without the bias: 0, 1. */
    route(logits, bias, idx, w, s);
    assert_int_equal(idx[0], 3);
    assert_int_equal(idx[1], 0);
    float s0 = sig(2), s3 = sig(0);
    assert_true(fabsf(w[0] - 2.5f * s3 / (s3 + s0)) < 1e-6f);
    assert_true(fabsf(w[1] - 2.5f * s0 / (s3 + s0)) < 1e-6f);
    assert_true(fabsf(w[0] + w[1] - 2.5f) < 1e-6f); /* Σw = routed_scaling_factor */
    route(logits, zero, idx, w, s);
    assert_int_equal(idx[0], 0);
    assert_int_equal(idx[1], 1);
}

/** The single best expert sits in a group whose top-2 sum loses: the whole group is masked. */
static void group_masked(void **state) {
    (void)state;
    float logits[8] = { 3, -3, 1, 1, 0.9f, 0.9f, -3, -3 }, bias[8] = { 0 };
    int idx[2];
    float w[2], s[8];
    /* groups: .953+.047 = 1.0, .731+.731 = 1.462, .711+.711 = 1.422, .095 → keep 1, 2; expert 0 (.953) is out. */
    route(logits, bias, idx, w, s);
    assert_int_equal(idx[0], 2);
    assert_int_equal(idx[1], 3);
}

/** Equal scores: lower group, then lower expert index wins. */
static void ties_go_low(void **state) {
    (void)state;
    float logits[8] = { 0 }, bias[8] = { 0 };
    int idx[2];
    float w[2], s[8];
    route(logits, bias, idx, w, s);
    assert_int_equal(idx[0], 0);
    assert_int_equal(idx[1], 1);
    assert_true(w[0] == 1.25f && w[1] == 1.25f);
    /* Tie between experts 4 and 5 only (group 2 best, group 0 second by index among equals). */
    float l2[8] = { 0, 0, 0, 0, 1, 1, 0, 0 };
    route(l2, bias, idx, w, s);
    assert_int_equal(idx[0], 4);
    assert_int_equal(idx[1], 5);
}

/** Kept groups with negative biased scores: masked experts must be −∞, not 0 (docs/model.md §5.3, §11 #8). */
static void masked_is_minus_infinity(void **state) {
    (void)state;
    float logits[8] = { 0, 0, 0, 0, 5, 5, -5, -5 }, bias[8];
    for (int i = 0; i < 8; i++) bias[i] = -2.0f;
    int idx[2];
    float w[2], s[8];
    /* c = [-1.5 ×4, -1.007 ×2, -1.993 ×2]; groups -3, -3, -2.013, -3.987 → keep 2 and 0.
     * With a 0 fill the masked experts 2, 3 (c = 0 > -1.007) would win; with −∞ it is 4, 5. */
    route(logits, bias, idx, w, s);
    assert_int_equal(idx[0], 4);
    assert_int_equal(idx[1], 5);
}

/** gate_backward against central differences of L = Σ_k g_k·w_k with respect to the logits. */
static void backward_matches_finite_differences(void **state) {
    (void)state;
    float logits[8] = { 0.3f, -0.2f, 1.1f, 0.4f, -0.7f, 0.9f, 0.1f, -1.3f }, bias[8] = { 0 };
    float g[2] = { 0.7f, -1.3f }, dlogits[8] = { 0 };
    int idx[2], idx2[2];
    float w[2], s[8];
    route(logits, bias, idx, w, s);
    gate_backward(dlogits, g, idx, s, &cfg);
    for (int e = 0; e < 8; e++) {
        const float h = 1e-3f;
        float lp[8], lm[8], wp[2], wm[2], sp[8];
        memcpy(lp, logits, sizeof lp);
        memcpy(lm, logits, sizeof lm);
        lp[e] += h;
        lm[e] -= h;
        route(lp, bias, idx2, wp, sp);
        assert_memory_equal(idx, idx2, sizeof idx); /* the selection does not change for small h */
        route(lm, bias, idx2, wm, sp);
        float fd = (g[0] * (wp[0] - wm[0]) + g[1] * (wp[1] - wm[1])) / (2 * h);
        assert_true(fabsf(fd - dlogits[e]) < 2e-3f);
    }
}

static int setup(void **state) {
    (void)state;
    const char *json = "{\"model_type\":\"deepseek_v3\",\"vocab_size\":8,\"hidden_size\":8,\"intermediate_size\":8,"
                       "\"moe_intermediate_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":1,\"q_lora_rank\":8,"
                       "\"kv_lora_rank\":8,\"qk_nope_head_dim\":8,\"qk_rope_head_dim\":8,\"v_head_dim\":8,"
                       "\"n_routed_experts\":8,\"num_experts_per_tok\":2,\"n_group\":4,\"topk_group\":2,"
                       "\"routed_scaling_factor\":2.5,\"norm_topk_prob\":true,\"topk_method\":\"noaux_tc\"}";
    Err err;
    return config_parse(&cfg, json, strlen(json), "gate test", &err);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bias_changes_selection), cmocka_unit_test(group_masked),
        cmocka_unit_test(ties_go_low),            cmocka_unit_test(masked_is_minus_infinity),
        cmocka_unit_test(backward_matches_finite_differences),
    };
    return cmocka_run_group_tests_name("gate", tests, setup, NULL);
}
