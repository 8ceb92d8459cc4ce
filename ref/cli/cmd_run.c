/**
 * @file cmd_run.c
 * @brief `dsv3 run`: what `make run` shows a newcomer, in a few seconds.
 *
 *  1. The bundled model (models/kjv: a small DeepSeek-V3-shaped model — MLA, DeepSeekMoE with
 *     the noaux_tc gate, YaRN, an MTP module — trained on CPU by `dsv3 train` on the King James
 *     Bible) writes a paragraph, drafting tokens with its own MTP module.
 *  2. The reference is checked against DeepSeek's official inference code on golden/official-tiny
 *     (a random model in the real checkpoint layout whose logits that code produced).
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "cli_groups.h"
#include "cli_util.h"
#include "base/threads.h"
#include "generate/generate.h"
#include "tokenizer/tokenizer.h"

static const char *const CMD = "run";

static int run(const char *model, const char *golden, const char *prompt, long n, long seed, const CliThreads *threads);

/** Reads a float32 file of exactly n values; 0 on success. */
static int read_f32_exact(const char *path, float *out, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t got = fread(out, sizeof *out, n, f);
    int extra = fgetc(f) != EOF;
    fclose(f);
    return got == n && !extra ? 0 : -1;
}

/** Part 1: a paragraph from the bundled model. */
static int demo_generate(const char *dir, const char *prompt, long n_tokens, uint64_t seed) {
    Model m;
    Tokenizer *tok = NULL;
    Err err = { "" };
    double t0 = now_seconds();
    if (model_load(&m, dir, stderr, &err)) return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    if (tokenizer_load(&tok, dir, &err)) {
        model_free(&m);
        return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    }
    double t_load = now_seconds() - t0;
    const Config *c = &m.config;
    uint64_t main_p, mtp_p;
    weights_count(c, m.w.n_mtp, &main_p, &mtp_p);
    printf("model   %s: %.1f M parameters (+ MTP module), trained on CPU with `dsv3 train` on the King James Bible\n",
           dir, (double)main_p / 1e6);
    printf("        DeepSeek-V3's architecture at small scale: %d layers (%d dense + %d MoE), MLA with %d heads and a\n"
           "        %d-d latent KV cache, %d routed experts in %d groups (top-%d, sigmoid gate with correction bias)\n"
           "        + %d shared, YaRN RoPE, a %d-token BPE vocabulary; loaded in %.0f ms\n\n",
           c->num_hidden_layers, c->first_k_dense_replace, c->num_hidden_layers - c->first_k_dense_replace,
           c->num_attention_heads, c->kv_lora_rank + c->qk_rope_head_dim, c->n_routed_experts, c->n_group,
           c->num_experts_per_tok, c->n_shared_experts, tokenizer_vocab_size(tok), 1e3 * t_load);
    Sampler s;
    Generator g;
    DecodeStream ds;
    IntVec ids = { 0 };
    int rc = EXIT_RUNTIME, spec = m.w.n_mtp > 0;
    decode_stream_init(&ds, tok);
    memset(&g, 0, sizeof g);
    if (sampler_init(&s, 0.8f, 40, 0.95f, seed, &err) ||
        gen_init(&g, &m, &s, 512, spec, 256, ATTN_ABSORB, FP8_DEQUANT, &err)) {
        rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
        goto done;
    }
    gen_limit_vocab(&g, tokenizer_vocab_size(tok));
    int bos = tokenizer_bos_id(tok), eos = tokenizer_eos_id(tok);
    if ((bos >= 0 && intvec_push(&ids, bos)) || tokenizer_encode_append(tok, prompt, strlen(prompt), &ids, &err) ||
        gen_feed(&g, ids.v, (int64_t)ids.n, &err)) {
        rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg[0] ? err.msg : "out of memory");
        goto done;
    }
    printf("prompt  \"%s\"   (sampling: temperature 0.8, top-k 40, top-p 0.95, seed %llu)\n\n", prompt,
           (unsigned long long)seed);
    fputs(prompt, stdout);
    long produced = 0;
    int out[8], k, stop = 0;
    while (produced < n_tokens && !stop) {
        if (gen_next(&g, out, &k, &err)) {
            rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
            goto done;
        }
        for (int i = 0; i < k && produced < n_tokens; i++, produced++) {
            if (out[i] == eos) {
                stop = 1;
                break;
            }
            const char *text;
            size_t len;
            if (decode_stream_step(&ds, out[i], &text, &len, &err) == 0) fwrite(text, 1, len, stdout);
        }
        fflush(stdout);
    }
    const char *text;
    size_t len;
    if (decode_stream_flush(&ds, &text, &len, &err) == 0) fwrite(text, 1, len, stdout);
    char where[32] = "one core";
    if (threads_get() > 1) snprintf(where, sizeof where, "%d threads", threads_get());
    printf("\n\n        %lld tokens at %.0f tokens/s on %s",
           (long long)g.stats.generated, g.stats.generated / (g.stats.decode_seconds + 1e-9), where);
    if (spec && g.stats.drafted)
        printf("; the MTP module drafted %lld tokens, %.0f%% accepted (speculative decoding: same output law, fewer main-model steps)",
               (long long)g.stats.drafted, 100.0 * g.stats.accepted / g.stats.drafted);
    printf("\n\n");
    rc = EXIT_OK;
done:
    free(ids.v);
    decode_stream_free(&ds);
    gen_free(&g);
    tokenizer_free(tok);
    model_free(&m);
    return rc;
}

/** Part 2: the reference against the official DeepSeek-V3 code on golden/official-tiny. */
static int demo_golden(const char *dir) {
    static const int ids[40] = { 117, 281, 163, 138, 171, 5,   132, 161, 171, 62,  13,  98,  260, 4,
                                 304, 115, 105, 256, 39,  251, 309, 149, 46,  296, 206, 251, 11,  89,
                                 28,  195, 203, 42,  318, 113, 10,  235, 56,  289, 185, 16 };
    const int T = 40, P = 32;
    Model m;
    Err err = { "" };
    if (model_load(&m, dir, stderr, &err)) return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    const Config *c = &m.config;
    size_t V = (size_t)c->vocab_size;
    RunState s;
    KVCache kv;
    memset(&s, 0, sizeof s);
    memset(&kv, 0, sizeof kv);
    float *logits = xcalloc((size_t)T * V, sizeof *logits), *golden = xcalloc((size_t)T * V, sizeof *golden);
    int rc = EXIT_RUNTIME;
    char gpath[4096];
    snprintf(gpath, sizeof gpath, "%s/logits.f32", dir);
    if (!logits || !golden || read_f32_exact(gpath, golden, (size_t)T * V)) {
        rc = cli_fail(CMD, EXIT_RUNTIME, "%s: cannot read %zu x %d golden logits", gpath, V, T);
        goto done;
    }
    if (runstate_init(&s, &m, T, T, ATTN_ABSORB, FP8_DEQUANT, &err) ||
        kvcache_init(&kv, c, ATTN_ABSORB, c->num_hidden_layers, T, &err))
        goto fail;
    /* A 32-token prefill, then 8 decode steps through the latent KV cache. */
    double t1 = now_seconds();
    if (model_forward(&m, &s, &kv, ids, P, logits, P, NULL, NULL, &err)) goto fail;
    for (int p = P; p < T; p++)
        if (model_forward(&m, &s, &kv, ids + p, 1, logits + (size_t)p * V, 1, NULL, NULL, &err)) goto fail;
    double t2 = now_seconds(), md = 0, mx = 0;
    int agree = 0;
    for (size_t i = 0; i < (size_t)T * V; i++) {
        md = fmax(md, fabs(logits[i] - golden[i]));
        mx = fmax(mx, fabs(golden[i]));
    }
    for (int p = 0; p < T; p++)
        agree += sampler_argmax(logits + (size_t)p * V, (int)V) == sampler_argmax(golden + (size_t)p * V, (int)V);
    int pass = md / mx <= 1e-4 && agree == T;
    printf("check   %s: %d positions (32-token prefill + 8 decode steps, %.0f ms) against the logits DeepSeek's\n"
           "        official inference code produced: max relative difference %.2e, same argmax in %d/%d — %s\n",
           dir, T, 1e3 * (t2 - t1), md / mx, agree, T, pass ? "PASS" : "MISMATCH");
    rc = pass ? EXIT_OK : EXIT_RUNTIME;
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

/** What the command line sets. */
typedef struct {
    const char *model, *golden, *prompt;
    long n, seed;
    int escape;
    CliThreads threads;
} Args;

static const CliOpt opts[] = {
    { "--model", "-m", CLI_STR, offsetof(Args, model), "DIR", .def = "models/kjv", .help = "the model that writes the paragraph" },
    { "--prompt", "-p", CLI_STR, offsetof(Args, prompt), "TEXT", .def = "And God said unto Moses,", .help = "its prompt" },
    { "--escape", "-e", CLI_FLAG, offsetof(Args, escape), .help = "process escapes (\\n, \\t, \\\\, \\\", \\', \\xHH) in -p" },
    { "--n-predict", "-n", CLI_LONG, offsetof(Args, n), "N", .lo = 1, .hi = 4000, .def = "120", .help = "tokens to generate" },
    { "--seed", "-s", CLI_LONG, offsetof(Args, seed), "S", .lo = 0, .hi = 0x7fffffff, .def = "1",
      .help = "sampling seed; the demo samples at temperature 0.8, top-k 40, top-p 0.95" },
    { "--golden", NULL, CLI_STR, offsetof(Args, golden), "DIR", .def = "golden/official-tiny",
      .help = "a checkpoint with the official code's logits.f32 to check the reference against" },
};

int cmd_run(int argc, char **argv) {
    Args a = { 0 };
    CliCmd cmd = { .name = CMD, .usage = "[-m MODEL_DIR] [-p PROMPT] [-n N] [--seed S] [--golden DIR]",
                   .about = "the `make run` demo: the bundled model writes a paragraph, then the reference is\n"
                            "checked against DeepSeek's official logits" };
    cli_add(&cmd, CLI_GROUP("demo", opts, &a));
    cli_add(&cmd, cli_threads_group(&a.threads, 0));
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_RUN) return rc;
    char *unescaped = a.escape ? cli_unescape(a.prompt) : NULL;
    if (a.escape && !unescaped) return cli_fail(CMD, EXIT_RUNTIME, "out of memory");
    rc = run(a.model, a.golden, unescaped ? unescaped : a.prompt, a.n, a.seed, &a.threads);
    free(unescaped);
    return rc;
}

/** The demo once its flags are parsed. */
static int run(const char *model, const char *golden, const char *prompt, long n, long seed, const CliThreads *threads) {
    if (!utf8_valid(prompt, strlen(prompt))) return cli_fail(CMD, EXIT_USAGE, "the prompt is not valid UTF-8");
    char where[32] = "one core";
    int nt = cli_threads_apply(threads);
    if (nt > 1) snprintf(where, sizeof where, "%d threads", nt);
    printf("dsv3 — DeepSeek-V3 in C, reference backend (FP32, %s)\n\n", where);
    struct stat sb;
    char cfg[4096];
    snprintf(cfg, sizeof cfg, "%s/config.json", model);
    int rc = EXIT_OK;
    if (stat(cfg, &sb) == 0) rc = demo_generate(model, prompt, n, (uint64_t)seed);
    else printf("(no bundled model at %s; `make data` and docs/training.md show how to train one)\n\n", model);
    if (rc == EXIT_OK) rc = demo_golden(golden);
    printf("\nnext: make test (all checks) · build/dsv3 --help (every command) · build/dsv3 chat -m %s · docs/\n", model);
    return rc;
}
