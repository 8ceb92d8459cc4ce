/**
 * @file cmd_run.c
 * @brief `dsv3 run`: what `make run` shows a newcomer.
 *
 * Runs the reference on the bundled golden checkpoint golden/official-tiny — a tiny model in
 * the exact layout of the real DeepSeek-V3 (MLA, DeepSeekMoE with the noaux_tc gate, YaRN,
 * an MTP module) whose logits were produced by DeepSeek's own inference code — and shows
 * what it computed, how close it is to the official numbers and how fast it ran.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cli_util.h"
#include "model.h"

static const char *const CMD = "run";

/** Reads a float32 file of exactly n values; 0 on success. */
static int read_f32_exact(const char *path, float *out, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t got = fread(out, sizeof *out, n, f);
    int extra = fgetc(f) != EOF;
    fclose(f);
    return got == n && !extra ? 0 : -1;
}

static int argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

int cmd_run(int argc, char **argv) {
    const char *dir = "golden/official-tiny";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: dsv3 run [-m GOLDEN_DIR]\n  the `make run` demo: reference forward pass on a golden checkpoint,\n"
                   "  compared with the logits of the official DeepSeek-V3 code (default golden/official-tiny)\n");
            return EXIT_OK;
        } else if (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) {
            if (!(dir = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
        } else {
            return cli_fail(CMD, EXIT_USAGE, "unknown option '%s' (dsv3 run --help)", argv[i]);
        }
    }
    static const int ids[40] = { 117, 281, 163, 138, 171, 5,   132, 161, 171, 62,  13,  98,  260, 4,
                                 304, 115, 105, 256, 39,  251, 309, 149, 46,  296, 206, 251, 11,  89,
                                 28,  195, 203, 42,  318, 113, 10,  235, 56,  289, 185, 16 };
    const int T = 40;
    Model m;
    Err err;
    double t0 = now_seconds();
    if (model_load(&m, dir, stderr, &err)) return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    double t_load = now_seconds() - t0;
    const Config *c = &m.config;
    uint64_t main_p, mtp_p;
    weights_count(c, m.w.n_mtp, &main_p, &mtp_p);
    printf("dsv3 — DeepSeek-V3 in C, reference backend\n\n");
    printf("model   %s: a %.1f M-parameter random-weight model with the real DeepSeek-V3 layout\n", dir, (double)main_p / 1e6);
    printf("        %d layers (%d dense + %d MoE), hidden %d, %d MLA heads (latent KV %d + rope %d),\n",
           c->num_hidden_layers, c->first_k_dense_replace, c->num_hidden_layers - c->first_k_dense_replace,
           c->hidden_size, c->num_attention_heads, c->kv_lora_rank, c->qk_rope_head_dim);
    printf("        %d routed experts in %d groups (top-%d, sigmoid gate + correction bias) + %d shared, YaRN x%g,\n",
           c->n_routed_experts, c->n_group, c->num_experts_per_tok, c->n_shared_experts, c->rope_factor);
    printf("        %d MTP module(s); loaded in %.1f ms (memory-mapped safetensors)\n\n", m.w.n_mtp, 1e3 * t_load);

    int rc = EXIT_RUNTIME;
    RunState s;
    KVCache kv;
    memset(&s, 0, sizeof s);
    memset(&kv, 0, sizeof kv);
    size_t V = (size_t)c->vocab_size;
    float *logits = xcalloc((size_t)T * V, sizeof *logits), *golden = xcalloc((size_t)T * V, sizeof *golden);
    if (!logits || !golden || runstate_init(&s, &m, T, T, ATTN_ABSORB, FP8_DEQUANT, &err) ||
        kvcache_init(&kv, c, ATTN_ABSORB, c->num_hidden_layers, T, &err)) {
        rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg[0] ? err.msg : "out of memory");
        goto done;
    }
    /* Prefill the first 32 tokens in one chunk, then decode the last 8 one at a time. */
    const int P = 32;
    double t1 = now_seconds();
    if (model_forward(&m, &s, &kv, ids, P, logits, P, NULL, NULL, &err)) goto fail;
    double t2 = now_seconds();
    for (int p = P; p < T; p++)
        if (model_forward(&m, &s, &kv, ids + p, 1, logits + (size_t)p * V, 1, NULL, NULL, &err)) goto fail;
    double t3 = now_seconds();
    printf("ran     %d token ids: prefill of %d in one chunk, then %d decode steps through the latent KV cache\n", T, P, T - P);
    printf("        prefill %.0f tokens/s, decode %.0f tokens/s (one core, FP32)\n", P / (t2 - t1), (T - P) / (t3 - t2));
    printf("        KV cache: %lld bytes per token (absorbed MLA keeps only c_kv and k_pe)\n\n",
           (long long)(kvcache_floats_per_token(c, ATTN_ABSORB) * 4 * c->num_hidden_layers));

    char gpath[4096];
    snprintf(gpath, sizeof gpath, "%s/logits.f32", dir);
    int have_golden = read_f32_exact(gpath, golden, (size_t)T * V) == 0;
    printf("next-token predictions (top logit) at the last positions%s:\n", have_golden ? ", ours vs official" : "");
    for (int p = T - 4; p < T; p++) {
        int a = argmax(logits + (size_t)p * V, (int)V);
        printf("  after token %2d (id %3d): id %3d, logit %+.5f", p, ids[p], a, logits[(size_t)p * V + a]);
        if (have_golden) {
            int g = argmax(golden + (size_t)p * V, (int)V);
            printf("   official: id %3d, logit %+.5f", g, golden[(size_t)p * V + g]);
        }
        printf("\n");
    }
    if (have_golden) {
        double md = 0, mx = 0;
        int agree = 0;
        for (size_t i = 0; i < (size_t)T * V; i++) {
            md = fmax(md, fabs(logits[i] - golden[i]));
            mx = fmax(mx, fabs(golden[i]));
        }
        for (int p = 0; p < T; p++) agree += argmax(logits + (size_t)p * V, (int)V) == argmax(golden + (size_t)p * V, (int)V);
        printf("\nagreement with DeepSeek's official inference code over all %d x %zu logits:\n", T, V);
        printf("        max relative difference %.2e, same argmax in %d/%d positions %s\n", md / mx, agree, T,
               md / mx <= 1e-4 && agree == T ? "(PASS)" : "(MISMATCH)");
        rc = md / mx <= 1e-4 && agree == T ? EXIT_OK : EXIT_RUNTIME;
    } else {
        rc = EXIT_OK;
    }
    printf("\nnext: make test (all checks), build/dsv3 --help (every subcommand), docs/ (how it works)\n");
    goto done;
fail:
    rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
done:
    free(logits);
    free(golden);
    kvcache_free(&kv);
    runstate_free(&s);
    model_free(&m);
    return rc;
}
