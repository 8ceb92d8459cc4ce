/**
 * @file test_model.c
 * @brief Whole-model invariants on random checkpoints from the writer (ckpt_write):
 *        absorbed == naive MLA, chunked prefill == one shot (bitwise: every op is per token
 *        and attention reads the same cache), sharded checkpoint == single file (bitwise),
 *        and the parameter count of the real 671B configuration.
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
#include "base/rng.h"
#include "model/model.h"
#include "model/mtp.h"
#include "util_compare.h"


/** Writes a random checkpoint of a preset into test_tmp/<name>. */
static void write_ckpt(const char *name, const char *preset, CkptFormat fmt, int shards, uint64_t seed, char *dir,
                       size_t cap) {
    Config c;
    Err err;
    assert_int_equal(config_preset(&c, preset, &err), 0);
    snprintf(dir, cap, "%s/%s", test_tmp, name);
    CkptLayout layout = { fmt, 0, shards, c.num_nextn_predict_layers };
    RandomInit ri = { seed, 0.3f };
    if (ckpt_write(dir, &c, &layout, ckpt_random_source, &ri, NULL, &err)) fail_msg("%s", err.msg);
}

/** Logits of all T positions: first `first` tokens as one chunk, then one at a time. */
static float *run(const Model *m, const int *ids, int T, int first, AttnMode attn, Fp8Mode fp8) {
    const Config *c = &m->config;
    RunState s;
    KVCache kv;
    Err err;
    assert_int_equal(runstate_init(&s, m, first, T, attn, fp8, &err), 0);
    assert_int_equal(kvcache_init(&kv, c, attn, c->num_hidden_layers, T, &err), 0);
    float *logits = malloc(sizeof(float) * (size_t)T * (size_t)c->vocab_size);
    assert_int_equal(model_forward(m, &s, &kv, ids, first, logits, first, NULL, NULL, &err), 0);
    for (int p = first; p < T; p++)
        assert_int_equal(model_forward(m, &s, &kv, ids + p, 1, logits + (size_t)p * c->vocab_size, 1, NULL, NULL, &err), 0);
    assert_int_equal(kv.len, T);
    kvcache_free(&kv);
    runstate_free(&s);
    return logits;
}

static void invariants_for(const char *preset, CkptFormat fmt) {
    char dir[4096];
    write_ckpt(preset, preset, fmt, 1, 7, dir, sizeof dir);
    Model m;
    Err err;
    if (model_load(&m, dir, NULL, &err)) fail_msg("%s", err.msg);
    int T = 24, V = m.config.vocab_size, ids[24];
    for (int i = 0; i < T; i++) ids[i] = (i * 131 + 7) % V;
    float *base = run(&m, ids, T, T, ATTN_ABSORB, FP8_DEQUANT);
    float *naive = run(&m, ids, T, T, ATTN_NAIVE, FP8_DEQUANT);
    float *chunk1 = run(&m, ids, T, 1, ATTN_ABSORB, FP8_DEQUANT);
    float *chunk9 = run(&m, ids, T, 9, ATTN_NAIVE, FP8_DEQUANT);
    size_t n = (size_t)T * V;
    double rel = max_rel_diff(naive, base, n);
    printf("    %-5s %-4s absorb vs naive: max rel %.3e, argmax %d/%d\n", preset, fmt == CKPT_FP8 ? "fp8" : "bf16", rel,
           argmax_agree(naive, base, T, V), T);
    assert_true(rel <= 1e-5);
    assert_int_equal(argmax_agree(naive, base, T, V), T);
    assert_memory_equal(chunk1, base, n * sizeof(float));  /* chunked == one-shot, bitwise */
    assert_memory_equal(chunk9, naive, n * sizeof(float));
    if (fmt == CKPT_FP8) { /* W8A8 is per token too: chunking must not change it either */
        float *w1 = run(&m, ids, T, T, ATTN_ABSORB, FP8_W8A8), *w2 = run(&m, ids, T, 5, ATTN_ABSORB, FP8_W8A8);
        assert_memory_equal(w1, w2, n * sizeof(float));
        free(w1);
        free(w2);
    }
    free(base);
    free(naive);
    free(chunk1);
    free(chunk9);
    model_free(&m);
}

static void tiny_bf16(void **state) { (void)state; invariants_for("tiny", CKPT_BF16); }
static void small_fp8(void **state) { (void)state; invariants_for("small", CKPT_FP8); }

static void sharded_equals_single(void **state) {
    (void)state;
    char one[4096], many[4096];
    write_ckpt("single", "small", CKPT_FP8, 1, 3, one, sizeof one);
    write_ckpt("sharded", "small", CKPT_FP8, 4, 3, many, sizeof many);
    Model a, b;
    Err err;
    assert_int_equal(model_load(&a, one, NULL, &err), 0);
    if (model_load(&b, many, NULL, &err)) fail_msg("%s", err.msg);
    assert_int_equal(a.st.n_files, 1);
    assert_int_equal(b.st.n_files, 4);
    assert_int_equal(a.st.n_tensors, b.st.n_tensors);
    /* Every tensor has the same bytes. */
    for (int i = 0; i < a.st.n_tensors; i++) {
        const StTensor *x = &a.st.tensors[i], *y = st_find(&b.st, x->name);
        assert_non_null(y);
        assert_int_equal(x->nbytes, y->nbytes);
        assert_memory_equal(x->data, y->data, x->nbytes);
    }
    int ids[12] = { 1, 5, 9, 33, 2, 0, 7, 100, 200, 300, 4, 8 };
    float *la = run(&a, ids, 12, 12, ATTN_ABSORB, FP8_DEQUANT), *lb = run(&b, ids, 12, 12, ATTN_ABSORB, FP8_DEQUANT);
    assert_memory_equal(la, lb, sizeof(float) * 12 * (size_t)a.config.vocab_size);
    free(la);
    free(lb);
    model_free(&a);
    model_free(&b);
}

/** The MTP module of a written checkpoint is bound and its copies equal the main tensors. */
static void mtp_copies_identical(void **state) {
    (void)state;
    char dir[4096];
    write_ckpt("mtp", "tiny", CKPT_BF16, 1, 11, dir, sizeof dir);
    Model m;
    Err err;
    assert_int_equal(model_load(&m, dir, NULL, &err), 0);
    assert_int_equal(m.w.n_mtp, 1);
    assert_int_equal(m.n_unused, 0);
    const Tensor *e = &m.w.embed_tokens, *me = &m.w.mtp[0].embed_tokens;
    assert_memory_equal(e->data, me->data, (size_t)tensor_bytes(e));
    assert_memory_equal(m.w.lm_head.data, m.w.mtp[0].shared_head_head.data, (size_t)tensor_bytes(&m.w.lm_head));
    model_free(&m);
}

/** docs/model.md §1.5: 671.03 B main-model parameters; MTP ≈ 11.6 B unique (+ embed/head copies). */
static void v3_parameter_count(void **state) {
    (void)state;
    Config c;
    Err err;
    assert_int_equal(config_preset(&c, "v3", &err), 0);
    uint64_t main_p, mtp_p;
    weights_count(&c, 1, &main_p, &mtp_p);
    printf("    DeepSeek-V3: %.2f B main + %.2f B MTP parameters\n", (double)main_p / 1e9, (double)mtp_p / 1e9);
    assert_true(main_p > 671020000000ull && main_p < 671040000000ull);
    uint64_t copies = 2ull * 129280 * 7168;
    assert_true(mtp_p - copies > 11500000000ull && mtp_p - copies < 11700000000ull);
}

/**
 * The random-checkpoint writer draws large matrices in parallel ranges, each jumping the generator
 * to its first value (rng_advance): the values must be those of one sequential pass. Checked on
 * the generator itself (uneven ranges over three million normals) and on the writer's source (its
 * first range against a matrix small enough to be drawn in one range).
 */
static void parallel_random_fill_is_sequential(void **state) {
    (void)state;
    Rng a, b;
    rng_seed(&a, 42), rng_seed(&b, 42);
    for (int i = 0; i < 1000003; i++) rng_u32(&a);
    rng_advance(&b, 1000003);
    assert_true(a.state == b.state && rng_u32(&a) == rng_u32(&b));
    enum { N = 3000000 };
    float *seq = malloc(N * sizeof(float)), *par = malloc(N * sizeof(float));
    assert_non_null(seq);
    assert_non_null(par);
    Rng r;
    rng_seed(&r, 99);
    for (int i = 0; i < N; i++) seq[i] = rng_normal(&r);
    static const int cuts[] = { 0, 1, 777777, 1048576, 2999999, N };
    for (int c = 0; c + 1 < (int)(sizeof cuts / sizeof cuts[0]); c++) {
        rng_seed(&r, 99);
        rng_advance(&r, (uint64_t)cuts[c] * RNG_U32_PER_NORMAL);
        for (int i = cuts[c]; i < cuts[c + 1]; i++) par[i] = rng_normal(&r);
    }
    assert_memory_equal(seq, par, N * sizeof(float));
    WeightSlot s;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "model.layers.0.mlp.down_proj.weight");
    s.kind = WEIGHT_MATRIX, s.rows = 3000, s.cols = 1000, s.layer = 0, s.expert = -1, s.mtp = -1;
    RandomInit ri = { 7, 0.1f };
    assert_int_equal(ckpt_random_source(&ri, &s, par), 0); /* three ranges of 2^20 */
    s.rows = 1000;
    assert_int_equal(ckpt_random_source(&ri, &s, seq), 0); /* one range: sequential */
    assert_memory_equal(seq, par, 1000000 * sizeof(float));
    free(seq), free(par);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parallel_random_fill_is_sequential),
        cmocka_unit_test(tiny_bf16),           cmocka_unit_test(small_fp8),
        cmocka_unit_test(sharded_equals_single), cmocka_unit_test(mtp_copies_identical),
        cmocka_unit_test(v3_parameter_count),
    };
    return cmocka_run_group_tests_name("model", tests, test_tmp_setup, test_tmp_teardown);
}
