/**
 * @file test_plan.c
 * @brief `dsv3 plan` arithmetic against hand-computed DeepSeek-V3 numbers (docs/model.md §3.3, §10).
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
#include "ep/plan.h"

static void v3_numbers(void **state) {
    (void)state;
    Config c;
    Err err;
    assert_int_equal(config_preset(&c, "v3", &err), 0);
    /* One GPU holding everything: the checkpoint's size. */
    Deployment all = { "all", 1, 1, 1, 1, 1, 0, 1, 2000, 3.35, 400, 0, 1979, 0 };
    PlanResult r;
    plan_evaluate(&c, &all, 1, 1, 1, &r);
    printf("    whole model with MTP, as stored: %.1f GB\n", r.weight_bytes / 1e9);
    /* 684.5 B parameters, nearly all FP8 (1 B) + BF16 embeddings/heads + F32 scales ≈ 689 GB. */
    assert_true(r.weight_bytes > 680e9 && r.weight_bytes < 700e9);
    /* Latent KV: (512 + 64) × 2 B × 61 layers = 70 272 B per token (docs/model.md §3.3). */
    plan_evaluate(&c, &all, 1, 1, 0, &r);
    assert_true(r.kv_bytes_per_token == 70272.0);
    /* Dispatch: 8 × (7168 FP8 + 56 scales × 4 B) = 59 136 B; combine: 8 × 7168 × 2 B = 114 688 B. */
    assert_true(r.dispatch_bytes == 59136.0);
    assert_true(r.combine_bytes == 114688.0);
    int n;
    const Deployment *p = plan_presets(&n);
    assert_true(n >= 4);
    plan_evaluate(&c, &p[0], 32, 4096, 0, &r);
    assert_true(r.experts_per_gpu == 9.0); /* (256 + 32) / 32: "8 + 1 redundant" per GPU */
    plan_evaluate(&c, &p[1], 32, 4096, 0, &r);
    assert_true(r.experts_per_gpu == 1.0); /* EP320: one expert per GPU */
    assert_true(r.fits);
    /* 16 GPUs of 80 GB hold the FP8 model; 8 of them would not. */
    Deployment eight_h100 = p[3];
    eight_h100.gpus = 8, eight_h100.ep = 8;
    plan_evaluate(&c, &eight_h100, 1, 1, 0, &r);
    assert_false(r.fits);
}

int main(void) {
    const struct CMUnitTest tests[] = { cmocka_unit_test(v3_numbers) };
    return cmocka_run_group_tests_name("plan", tests, NULL, NULL);
}
