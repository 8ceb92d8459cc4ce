/**
 * @file test_speculative.c
 * @brief MTP speculative decoding (ref/generate/generate.c) on random checkpoints with an MTP module:
 *  - greedy speculative output == greedy plain output, token for token, over 240 tokens,
 *    for 1, 2 and 3 drafts per step (both acceptance and rejection must occur);
 *  - after speculative generation with rollbacks, both KV caches equal those of a fresh run
 *    over the same tokens (bitwise: every op is per token, chunking does not change results);
 *  - speculative sampling draws from the main model's distribution: the joint law of the two
 *    tokens after a prompt, over a 8-token vocabulary, matches the exact law computed by
 *    enumeration (chi-square, fixed seed), with and without top-k/top-p truncation.
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
#include "generate/generate.h"
#include "model/mtp.h"
#include "util_compare.h"


/** A small DeepSeek-V3-shaped config (1 dense + 1 MoE layer, 8 experts, MTP) so that the
 *  thousands of generations below stay fast; vocab set per test. */
static const char *micro =
    "{\"model_type\":\"deepseek_v3\",\"vocab_size\":16,\"hidden_size\":64,\"intermediate_size\":96,"
    "\"moe_intermediate_size\":32,\"num_hidden_layers\":2,\"num_nextn_predict_layers\":1,\"num_attention_heads\":2,"
    "\"q_lora_rank\":32,\"kv_lora_rank\":32,\"qk_nope_head_dim\":16,\"qk_rope_head_dim\":8,\"v_head_dim\":16,"
    "\"n_routed_experts\":8,\"n_shared_experts\":1,\"num_experts_per_tok\":2,\"n_group\":4,\"topk_group\":2,"
    "\"first_k_dense_replace\":1,\"routed_scaling_factor\":2.5,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":40,"
    "\"original_max_position_embeddings\":4096,\"beta_fast\":32,\"beta_slow\":1,\"mscale\":1.0,\"mscale_all_dim\":1.0}}";

static void make_model(Model *m, int vocab, uint64_t seed, const char *name) {
    Config c;
    Err err;
    assert_int_equal(config_parse(&c, micro, strlen(micro), "micro", &err), 0);
    c.vocab_size = vocab;
    assert_int_equal(config_validate(&c, "test", &err), 0);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", test_tmp, name);
    CkptLayout layout = { CKPT_F32, 0, 1, 1 };
    RandomInit ri = { seed, 0.2f };
    if (ckpt_write(dir, &c, &layout, ckpt_random_source, &ri, NULL, &err)) fail_msg("%s", err.msg);
    if (model_load(m, dir, NULL, &err)) fail_msg("%s", err.msg);
    assert_int_equal(m->w.n_mtp, 1);
}

/** Generates n tokens after the prompt; returns them (malloc'd) and the generator's stats. */
static int *generate(const Model *m, Sampler *s, int draft, const int *prompt, int np, int n, GenStats *stats,
                     Generator *keep) {
    Generator g;
    Err err;
    if (gen_init(&g, m, s, np + n + 4, draft, 16, ATTN_ABSORB, FP8_DEQUANT, &err)) fail_msg("%s", err.msg);
    if (gen_feed(&g, prompt, np, &err)) fail_msg("%s", err.msg);
    int *out = malloc(sizeof(int) * (size_t)(n + 20)), got = 0, buf[20], k;
    while (got < n) {
        if (gen_next(&g, buf, &k, &err)) fail_msg("%s", err.msg);
        for (int i = 0; i < k; i++) out[got++] = buf[i];
    }
    *stats = g.stats;
    if (keep) *keep = g;
    else gen_free(&g);
    return out;
}

static void greedy_equivalence(void **state) {
    (void)state;
    Model m;
    make_model(&m, 16, 21, "greedy");
    int prompt[5] = { 0, 3, 7, 2, 9 };
    Sampler s;
    Err err;
    assert_int_equal(sampler_init(&s, 0.0f, 0, 1.0f, 1, &err), 0);
    GenStats st;
    const int n = 240;
    int *plain = generate(&m, &s, 0, prompt, 5, n, &st, NULL);
    for (int draft = 1; draft <= 3; draft++) {
        int *spec = generate(&m, &s, draft, prompt, 5, n, &st, NULL);
        printf("    greedy, %d draft(s): %lld steps, %lld/%lld drafts accepted (%.0f%%), identical to plain: %s\n", draft,
               (long long)st.steps, (long long)st.accepted, (long long)st.drafted, 100.0 * st.accepted / st.drafted,
               memcmp(spec, plain, sizeof(int) * n) ? "NO" : "yes");
        assert_memory_equal(spec, plain, sizeof(int) * n);
        assert_true(st.accepted > 0 && st.accepted < st.drafted); /* both paths exercised */
        free(spec);
    }
    free(plain);
    model_free(&m);
}

/** The caches after speculative generation equal a fresh run over the committed tokens. */
static void rollback_restores_caches(void **state) {
    (void)state;
    Model m;
    make_model(&m, 16, 22, "rollback");
    const Config *c = &m.config;
    int prompt[4] = { 1, 5, 9, 13 };
    Sampler s;
    Err err;
    assert_int_equal(sampler_init(&s, 1.0f, 0, 1.0f, 99, &err), 0);
    GenStats st;
    Generator g;
    int *toks = generate(&m, &s, 2, prompt, 4, 60, &st, &g);
    assert_true(st.accepted < st.drafted); /* there were rollbacks */
    int64_t L = g.kv.len;
    assert_true(g.pending && g.n_tokens == L + 1);
    /* Fresh main run over the committed tokens that are in the cache. */
    RunState rs;
    KVCache kv, mkv;
    assert_int_equal(runstate_init(&rs, &m, L, L, ATTN_ABSORB, FP8_DEQUANT, &err), 0);
    assert_int_equal(kvcache_init(&kv, c, ATTN_ABSORB, c->num_hidden_layers, L, &err), 0);
    assert_int_equal(kvcache_init(&mkv, c, ATTN_ABSORB, 1, L, &err), 0);
    float *normed = malloc(sizeof(float) * (size_t)L * c->hidden_size);
    assert_int_equal(model_forward(&m, &rs, &kv, g.tokens, L, NULL, 0, NULL, normed, &err), 0);
    size_t per_layer = (size_t)(c->kv_lora_rank + c->qk_rope_head_dim);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        assert_memory_equal(kv.layers[l].c_kv, g.kv.layers[l].c_kv, sizeof(float) * (size_t)L * c->kv_lora_rank);
        assert_memory_equal(kv.layers[l].k_pe, g.kv.layers[l].k_pe, sizeof(float) * (size_t)L * c->qk_rope_head_dim);
    }
    (void)per_layer;
    /* Fresh MTP rows 0..L−2 from (h_p, x_{p+1}). */
    assert_int_equal(g.mtp_kv.len, L - 1);
    assert_int_equal(mtp_forward(&m, 0, &rs, &mkv, g.tokens + 1, normed, L - 1, NULL, 0, NULL, &err), 0);
    assert_memory_equal(mkv.layers[0].c_kv, g.mtp_kv.layers[0].c_kv, sizeof(float) * (size_t)(L - 1) * c->kv_lora_rank);
    assert_memory_equal(mkv.layers[0].k_pe, g.mtp_kv.layers[0].k_pe, sizeof(float) * (size_t)(L - 1) * c->qk_rope_head_dim);
    printf("    %lld positions after %lld speculative steps (%lld of %lld drafts accepted, the rest rolled back):"
           " main and MTP caches equal a fresh run\n",
           (long long)L, (long long)st.steps, (long long)st.accepted, (long long)st.drafted);
    free(normed);
    kvcache_free(&kv);
    kvcache_free(&mkv);
    runstate_free(&rs);
    gen_free(&g);
    free(toks);
    model_free(&m);
}

/** Exact joint law P(x_n = i, x_{n+1} = j) by enumeration with the main model alone. */
static void exact_joint(const Model *m, const Sampler *s, const int *prompt, int np, double *joint) {
    const Config *c = &m->config;
    int V = c->vocab_size;
    RunState rs;
    KVCache kv;
    Err err;
    float *logits = malloc(sizeof(float) * V), *p1 = malloc(sizeof(float) * V), *p2 = malloc(sizeof(float) * V);
    SamplerCand *cands = malloc(sizeof(SamplerCand) * V);
    int *ids = malloc(sizeof(int) * (np + 1));
    memcpy(ids, prompt, sizeof(int) * np);
    assert_int_equal(runstate_init(&rs, m, np + 1, np + 1, ATTN_ABSORB, FP8_DEQUANT, &err), 0);
    assert_int_equal(kvcache_init(&kv, c, ATTN_ABSORB, c->num_hidden_layers, np + 1, &err), 0);
    assert_int_equal(model_forward(m, &rs, &kv, ids, np, logits, 1, NULL, NULL, &err), 0);
    sampler_probs(s, logits, V, p1, cands);
    for (int i = 0; i < V; i++) {
        kv.len = np;
        ids[np] = i;
        assert_int_equal(model_forward(m, &rs, &kv, ids + np, 1, logits, 1, NULL, NULL, &err), 0);
        sampler_probs(s, logits, V, p2, cands);
        for (int j = 0; j < V; j++) joint[i * V + j] = (double)p1[i] * p2[j];
    }
    kvcache_free(&kv);
    runstate_free(&rs);
    free(logits), free(p1), free(p2), free(cands), free(ids);
}

/** Chi-square of observed counts against expected N·P, pooling cells with expected < 5. */
static double chi_square(const int *obs, const double *p, int cells, int N, int *dof) {
    double chi = 0, pool_o = 0, pool_e = 0;
    int used = 0;
    for (int k = 0; k < cells; k++) {
        double e = N * p[k];
        if (e < 5) {
            pool_o += obs[k];
            pool_e += e;
            continue;
        }
        chi += (obs[k] - e) * (obs[k] - e) / e;
        used++;
    }
    if (pool_e > 0) {
        chi += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
        used++;
    }
    *dof = used - 1;
    return chi;
}

static void sampling_law(float temperature, int top_k, float top_p) {
    Model m;
    make_model(&m, 8, 23, "law");
    int V = 8, prompt[3] = { 2, 5, 1 }, N = 4000;
    Sampler s;
    Err err;
    assert_int_equal(sampler_init(&s, temperature, top_k, top_p, 12345, &err), 0);
    double *joint = calloc((size_t)V * V, sizeof *joint);
    exact_joint(&m, &s, prompt, 3, joint);
    int *obs_spec = calloc((size_t)V * V, sizeof(int)), *obs_plain = calloc((size_t)V * V, sizeof(int));
    int *obs_spec2 = calloc((size_t)V * V, sizeof(int));
    int64_t drafted = 0, accepted = 0;
    for (int draft = 0; draft <= 2; draft++) {
        Generator g;
        /* One session per trial keeps the trials independent; the sampler's PRNG runs on. */
        for (int t = 0; t < N; t++) {
            if (gen_init(&g, &m, &s, 8, draft, 4, ATTN_ABSORB, FP8_DEQUANT, &err)) fail_msg("%s", err.msg);
            if (gen_feed(&g, prompt, 3, &err)) fail_msg("%s", err.msg);
            int a[4], b[4], na, nb;
            if (gen_next(&g, a, &na, &err) || gen_next(&g, b, &nb, &err)) fail_msg("%s", err.msg);
            (draft == 2 ? obs_spec2 : draft ? obs_spec : obs_plain)[a[0] * V + b[0]]++;
            drafted += g.stats.drafted;
            accepted += g.stats.accepted;
            gen_free(&g);
        }
    }
    int dof_s, dof_p, dof_2;
    double chi_s = chi_square(obs_spec, joint, V * V, N, &dof_s), chi_p = chi_square(obs_plain, joint, V * V, N, &dof_p);
    double chi_2 = chi_square(obs_spec2, joint, V * V, N, &dof_2);
    /* Critical values at p = 0.001: ≈ dof + 3.1·sqrt(2·dof) + 5 (Wilson–Hilferty, generous). */
    double crit_s = dof_s + 3.1 * sqrt(2.0 * dof_s) + 5, crit_p = dof_p + 3.1 * sqrt(2.0 * dof_p) + 5;
    double tv = 0;
    for (int k = 0; k < V * V; k++) tv += fabs(obs_spec[k] / (double)N - joint[k]);
    tv /= 2;
    printf("    T=%.1f top-k %d top-p %.2f: speculative chi2 %.1f (dof %d, crit %.1f), 2 drafts chi2 %.1f, plain chi2 %.1f"
           " (dof %d), TV %.3f, %lld/%lld drafts accepted\n",
           temperature, top_k, top_p, chi_s, dof_s, crit_s, chi_2, chi_p, dof_p, tv, (long long)accepted, (long long)drafted);
    assert_true(chi_2 < dof_2 + 3.1 * sqrt(2.0 * dof_2) + 5);
    assert_true(chi_p < crit_p); /* the test itself accepts the plain sampler */
    assert_true(chi_s < crit_s);
    assert_true(tv < 0.08);
    assert_true(accepted > 0 && accepted < drafted);
    free(joint), free(obs_spec), free(obs_plain), free(obs_spec2);
    model_free(&m);
}

static void sampling_law_full(void **state) { (void)state; sampling_law(1.0f, 0, 1.0f); }
static void sampling_law_truncated(void **state) { (void)state; sampling_law(0.8f, 5, 0.9f); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(greedy_equivalence),
        cmocka_unit_test(rollback_restores_caches),
        cmocka_unit_test(sampling_law_full),
        cmocka_unit_test(sampling_law_truncated),
    };
    return cmocka_run_group_tests_name("speculative", tests, test_tmp_setup, test_tmp_teardown);
}
