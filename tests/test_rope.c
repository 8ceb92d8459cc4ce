/**
 * @file test_rope.c
 * @brief YaRN RoPE (docs/model.md §4): the θ' table of docs/model.md §4.2, the softmax scale of §3.5, the
 *        interleaved pairing of §4.1, rope_backward as the exact inverse rotation, and the YaRN ramp
 *        with beta_fast ≤ beta_slow (docs/model.md §13.3).
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

#include "model/ckpt.h"
#include "model/rope.h"

/* θ'_i for DeepSeek-V3, fp64 reference values printed in docs/model.md §4.2 (7 significant digits). */
static const double theta_v3[32] = {
    1, 0.7498942, 0.5623413, 0.4216965, 0.3162278, 0.2371374, 0.1778279, 0.1333521, 0.1, 0.07498942,
    0.05623413, 0.03900693, 0.02687936, 0.01837815, 0.01244796, 0.008334509, 0.0055, 0.003561997,
    0.002249365, 0.001370514, 7.905694e-4, 4.149904e-4, 1.778279e-4, 3.333804e-5, 2.5e-5, 1.874736e-5,
    1.405853e-5, 1.054241e-5, 7.905694e-6, 5.928434e-6, 4.445699e-6, 3.333804e-6,
};

/** θ'_i of @p r against a 32-entry FP64 table, 2e-6 relative (the FP32 rounding of the table). */
static void expect_table(const Rope *r, const double *expect) {
    for (int i = 0; i < 32; i++) {
        double rel = fabs(r->inv_freq[i] - expect[i]) / expect[i];
        if (rel > 2e-6) printf("    theta'[%d] = %.9g, expected %.9g\n", i, r->inv_freq[i], expect[i]);
        assert_true(rel <= 2e-6);
    }
}

static void yarn_table(void **state) {
    (void)state;
    Config c;
    Err err;
    assert_int_equal(config_preset(&c, "v3", &err), 0);
    Rope r;
    assert_int_equal(rope_init(&r, &c, &err), 0);
    assert_int_equal(r.dim, 64);
    expect_table(&r, theta_v3);
    /* i ≤ 10 keep the original frequency, i ≥ 23 are divided by 40 exactly. */
    assert_true(r.inv_freq[10] == 1.0f / powf(10000.0f, 20.0f / 64.0f));
    assert_true(r.inv_freq[23] == (1.0f / powf(10000.0f, 46.0f / 64.0f)) / 40.0f);
    assert_true(r.attention_factor == 1.0f); /* docs/model.md §11 #6: cos/sin unscaled */
    rope_free(&r);
}

/* θ'_i of HF's _compute_yarn_parameters in FP64 for three rope_scaling blocks the V3 one does not
 * exercise (printed by tools/golden_family.py --rope-table, an implementation independent of rope.c). */
/* Kimi K2: beta_fast = beta_slow = 1 */
static const double theta_k2[32] = {
    1, 0.713111085, 0.508527419, 0.36263654,
    0.258600136, 0.184410624, 0.13150526, 0.0937778586,
    0.0668740305, 0.0476886124, 0.0340072782, 0.024250967,
    0.0172936334, 0.0123322817, 0.00879428677, 0.00627130338,
    0.00447213595, 0.00318912972, 0.00227420376, 0.00162175991,
    3.61404677e-05, 2.57721682e-05, 1.83784188e-05, 1.31058542e-05,
    9.34592988e-06, 6.6646862e-06, 4.75266161e-06, 3.38917567e-06,
    2.41685874e-06, 1.72348876e-06, 1.22903894e-06, 8.76441291e-07,
};
/* beta_fast < beta_slow: a falling ramp */
static const double theta_reversed[32] = {
    0.025, 0.0187473552, 0.0140585331, 0.0105424126,
    0.00790569415, 0.00592843426, 0.00444569853, 0.00333380358,
    0.0025, 0.00187473552, 0.00140585331, 0.00105424126,
    0.00359349734, 0.00479664227, 0.00517317647, 0.00506131998,
    0.00468181818, 0.0041755473, 0.00362965764, 0.0030956357,
    0.00260169207, 0.00216118376, 0.00177827941, 0.00133352143,
    0.001, 0.000749894209, 0.000562341325, 0.000421696503,
    0.000316227766, 0.000237137371, 0.000177827941, 0.000133352143,
};
/* low = high = 0: high += 0.001 */
static const double theta_meet[32] = {
    1, 0.0187473552, 0.0140585331, 0.0105424126,
    0.00790569415, 0.00592843426, 0.00444569853, 0.00333380358,
    0.0025, 0.00187473552, 0.00140585331, 0.00105424126,
    0.000790569415, 0.000592843426, 0.000444569853, 0.000333380358,
    0.00025, 0.000187473552, 0.000140585331, 0.000105424126,
    7.90569415e-05, 5.92843426e-05, 4.44569853e-05, 3.33380358e-05,
    2.5e-05, 1.87473552e-05, 1.40585331e-05, 1.05424126e-05,
    7.90569415e-06, 5.92843426e-06, 4.44569853e-06, 3.33380358e-06,
};

/** rope_init on a config whose rope is @p rope_json, against @p expect (2e-6 relative: the FP32 table). */
static void check_yarn(const char *rope_json, const double *expect) {
    char json[1024];
    snprintf(json, sizeof json,
             "{\"model_type\":\"kimi_k2\",\"vocab_size\":8,\"hidden_size\":8,\"intermediate_size\":8,"
             "\"moe_intermediate_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":1,\"q_lora_rank\":null,"
             "\"kv_lora_rank\":8,\"qk_nope_head_dim\":128,\"qk_rope_head_dim\":64,\"v_head_dim\":8,"
             "\"n_routed_experts\":4,\"num_experts_per_tok\":2,\"n_group\":1,\"topk_group\":1,%s}", rope_json);
    Config c;
    Err err = { "" };
    if (config_parse(&c, json, strlen(json), "yarn", &err)) printf("    %s\n", err.msg);
    assert_int_equal(config_parse(&c, json, strlen(json), "yarn", &err), 0);
    Rope r;
    assert_int_equal(rope_init(&r, &c, &err), 0);
    expect_table(&r, expect);
    rope_free(&r);
}

static void yarn_beta_equal_and_reversed(void **state) {
    (void)state;
    check_yarn("\"rope_theta\":50000,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":32,\"beta_fast\":1,\"beta_slow\":1,"
               "\"mscale\":1,\"mscale_all_dim\":1,\"original_max_position_embeddings\":4096}", theta_k2);
    check_yarn("\"rope_scaling\":{\"type\":\"yarn\",\"factor\":40,\"beta_fast\":1,\"beta_slow\":32,"
               "\"original_max_position_embeddings\":4096}", theta_reversed);
    check_yarn("\"rope_scaling\":{\"type\":\"yarn\",\"factor\":40,\"beta_fast\":1000,\"beta_slow\":700,"
               "\"original_max_position_embeddings\":4096}", theta_meet);
}

static void softmax_scale(void **state) {
    (void)state;
    Config c;
    Err err;
    assert_int_equal(config_preset(&c, "v3", &err), 0);
    /* 192^-0.5 · (1 + 0.1 ln 40)² = 0.1352337788608801 (docs/model.md §3.5) */
    assert_true(fabs(c.softmax_scale - 0.1352337788608801) < 1e-8);
    /* Without rope_scaling: plain 1/sqrt(192). */
    const char *plain = "{\"model_type\":\"deepseek_v3\",\"vocab_size\":8,\"hidden_size\":8,\"intermediate_size\":8,"
                        "\"moe_intermediate_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":1,\"q_lora_rank\":8,"
                        "\"kv_lora_rank\":8,\"qk_nope_head_dim\":128,\"qk_rope_head_dim\":64,\"v_head_dim\":8,"
                        "\"n_routed_experts\":4,\"num_experts_per_tok\":2,\"n_group\":2,\"topk_group\":1}";
    assert_int_equal(config_parse(&c, plain, strlen(plain), "plain", &err), 0);
    assert_false(c.has_yarn);
    assert_true(fabs(c.softmax_scale - 0.07216878364870322) < 1e-8);
}

/** Interleaved pairs (x[2i], x[2i+1]) rotate as complex numbers; the inverse undoes it. */
static void interleaved_rotation(void **state) {
    (void)state;
    Config c;
    Err err;
    assert_int_equal(config_preset(&c, "v3", &err), 0);
    Rope r;
    assert_int_equal(rope_init(&r, &c, &err), 0);
    float cs[32], sn[32], x[64], y[64];
    for (int i = 0; i < 64; i++) x[i] = y[i] = (float)(i % 5) - 2.0f + 0.1f * (float)i;
    rope_cos_sin(cs, sn, 1234, &r);
    rope_forward(y, cs, sn, 64);
    for (int i = 0; i < 32; i++) {
        double ang = 1234.0f * r.inv_freq[i];
        double re = x[2 * i] * cos(ang) - x[2 * i + 1] * sin(ang), im = x[2 * i] * sin(ang) + x[2 * i + 1] * cos(ang);
        assert_true(fabs(y[2 * i] - re) < 1e-4 && fabs(y[2 * i + 1] - im) < 1e-4);
    }
    rope_backward(y, cs, sn, 64);
    for (int i = 0; i < 64; i++) assert_true(fabs(y[i] - x[i]) < 1e-5);
    /* Position 0 is the identity. */
    rope_cos_sin(cs, sn, 0, &r);
    memcpy(y, x, sizeof x);
    rope_forward(y, cs, sn, 64);
    assert_memory_equal(x, y, sizeof x);
    rope_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(yarn_table),
        cmocka_unit_test(yarn_beta_equal_and_reversed),
        cmocka_unit_test(softmax_scale),
        cmocka_unit_test(interleaved_rotation),
    };
    return cmocka_run_group_tests_name("rope", tests, NULL, NULL);
}
