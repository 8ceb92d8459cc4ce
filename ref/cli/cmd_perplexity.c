/**
 * @file cmd_perplexity.c
 * @brief `dsv3 perplexity`: mean cross-entropy and perplexity of a checkpoint on held-out
 *        tokens, through the inference path (model_load, model_forward) — the way to compare
 *        exports (F32 / BF16 / FP8), numerics (--fp8 dequant|w8a8) and attention forms.
 *
 *   dsv3 perplexity -m MODEL_DIR (--ids FILE.bin | -f TEXT) [-c CTX] [--max-chunks N] [--fp8 M] [--attn A] [--mtp]
 *
 * The tokens are cut into consecutive chunks of CTX + 1; each chunk is one prefill from position
 * 0, scoring every position's prediction of the next token (like llama.cpp's perplexity tool,
 * without its second-half-only scoring). --mtp also scores the MTP head's prediction of the token
 * after next (row p from h_p and token p+1, docs/model.md §7.2).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/buf.h"
#include "cli.h"
#include "cli_util.h"
#include "ep/eplb.h"
#include "train/data.h"
#include "train/loss.h"
#include "model/mtp.h"
#include "tokenizer/tokenizer.h"

static const char *const CMD = "perplexity";

int cmd_perplexity(int argc, char **argv) {
    const char *model_dir = NULL, *ids_path = NULL, *text_path = NULL, *v, *stats_path = NULL;
    long ctx = 256, max_chunks = 0;
    int want_mtp = 0;
    AttnMode attn = ATTN_ABSORB;
    Fp8Mode fp8 = FP8_DEQUANT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: dsv3 perplexity -m MODEL_DIR (--ids FILE.bin | -f TEXT) [-c CTX] [--max-chunks N]\n"
                   "                       [--fp8 dequant|w8a8] [--attn absorb|naive] [--mtp]\n"
                   "  mean next-token cross-entropy (nats) and perplexity over consecutive CTX+1-token chunks\n"
                   "  (default CTX 256); --ids takes uint32 token files (dsv3 prepare-data), -f text (the\n"
                   "  model's tokenizer.json encodes it); --mtp also scores the MTP head\n"
                   "  --routing-stats FILE  write the tokens each routed expert received, per MoE layer (JSON lines)\n");
            return EXIT_OK;
        }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(model_dir = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE; }
        else if (!strcmp(a, "--routing-stats")) { if (!(stats_path = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE; }
        else if (!strcmp(a, "--ids")) { if (!(ids_path = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE; }
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) { if (!(text_path = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_long(CMD, a, v, 2, 1 << 20, &ctx)) return EXIT_USAGE;
        } else if (!strcmp(a, "--max-chunks")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_long(CMD, a, v, 0, 1L << 30, &max_chunks)) return EXIT_USAGE;
        } else if (!strcmp(a, "--fp8")) {
            if (!(v = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
            if (!strcmp(v, "dequant")) fp8 = FP8_DEQUANT;
            else if (!strcmp(v, "w8a8")) fp8 = FP8_W8A8;
            else return cli_fail(CMD, EXIT_USAGE, "--fp8 must be dequant or w8a8, got '%s'", v);
        } else if (!strcmp(a, "--attn")) {
            if (!(v = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
            if (!strcmp(v, "absorb")) attn = ATTN_ABSORB;
            else if (!strcmp(v, "naive")) attn = ATTN_NAIVE;
            else return cli_fail(CMD, EXIT_USAGE, "--attn must be absorb or naive, got '%s'", v);
        } else if (!strcmp(a, "--mtp")) want_mtp = 1;
        else return cli_fail(CMD, EXIT_USAGE, "unknown option '%s' (dsv3 perplexity --help)", a);
    }
    if (!model_dir || !!ids_path == !!text_path)
        return cli_fail(CMD, EXIT_USAGE, "-m MODEL_DIR and exactly one of --ids FILE or -f TEXT are required");
    Err err = { "" };
    Model m;
    if (model_load(&m, model_dir, stderr, &err)) return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    const Config *c = &m.config;
    int V = c->vocab_size, rc = EXIT_RUNTIME;
    IntVec toks = { 0 };
    TokenFile tf;
    memset(&tf, 0, sizeof tf);
    Tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    RunState s;
    KVCache kv;
    RoutingCounter routing; /* --routing-stats: wraps the local MoE layers */
    memset(&routing, 0, sizeof routing);
    memset(&s, 0, sizeof s);
    memset(&kv, 0, sizeof kv);
    float *logits = NULL, *probs = NULL, *normed = NULL;
    if (want_mtp && m.w.n_mtp == 0) {
        rc = cli_fail(CMD, EXIT_USAGE, "--mtp: %s has no MTP module", model_dir);
        goto done;
    }
    if (ids_path) {
        if (tokenfile_open(&tf, ids_path, V, ctx + 1, &err)) goto fail;
        for (int64_t i = 0; i < tf.n; i++)
            if (intvec_push(&toks, tokenfile_get(&tf, i))) goto oom;
    } else {
        if (tokenizer_load(&tok, model_dir, &err) || read_file(text_path, 1u << 30, &text, &len, &err)) goto fail;
        if (!utf8_valid(text, len)) {
            rc = cli_fail(CMD, EXIT_RUNTIME, "%s is not valid UTF-8", text_path);
            goto done;
        }
        if (tokenizer_encode_append(tok, text, len, &toks, &err)) goto fail;
    }
    int64_t chunks = (int64_t)toks.n / (ctx + 1);
    if (max_chunks > 0 && chunks > max_chunks) chunks = max_chunks;
    if (chunks == 0) {
        rc = cli_fail(CMD, EXIT_USAGE, "%zu tokens are fewer than one chunk of -c %ld + 1", toks.n, ctx);
        goto done;
    }
    logits = xcalloc((size_t)ctx * (size_t)V, sizeof *logits);
    probs = xcalloc((size_t)ctx * (size_t)V, sizeof *probs);
    normed = xcalloc((size_t)ctx * (size_t)c->hidden_size, sizeof *normed);
    if (!logits || !probs || !normed) goto oom;
    if (runstate_init(&s, &m, ctx, ctx, attn, fp8, &err) || kvcache_init(&kv, c, attn, c->num_hidden_layers, ctx, &err))
        goto fail;
    if (stats_path) {
        if (routing_counter_init(&routing, c, want_mtp ? m.w.n_mtp : 0, NULL, &err)) goto fail;
        s.ctx.moe_hook = &routing.hook;
    }
    double nll = 0, nll_mtp = 0, t0 = now_seconds();
    for (int64_t ch = 0; ch < chunks; ch++) {
        const int *x = toks.v + ch * (ctx + 1);
        kv.len = 0;
        if (model_forward(&m, &s, &kv, x, ctx, logits, ctx, NULL, normed, &err)) goto fail;
        nll += cross_entropy_forward(probs, logits, x + 1, ctx, V); /* a sum over the positions */
        if (want_mtp) {
            /* Rows p = 0..ctx−2 predict x[p+2]: the same contract as `logits --mtp`. */
            if (mtp_logits_sequence(&m, 0, x, normed, ctx, ctx, attn, fp8, s.ctx.moe_hook, logits, &err)) goto fail;
            nll_mtp += cross_entropy_forward(probs, logits, x + 2, ctx - 1, V);
        }
    }
    double n = (double)chunks * (double)ctx, ce = nll / n;
    printf("%s: %lld chunks x %ld tokens: cross-entropy %.4f nats/token, perplexity %.3f", model_dir, (long long)chunks, ctx,
           ce, exp(ce));
    if (want_mtp) {
        double ce2 = nll_mtp / ((double)chunks * (double)(ctx - 1));
        printf(" | MTP head (token after next): %.4f nats, perplexity %.3f", ce2, exp(ce2));
    }
    printf(" (%.1f tokens/s)\n", n / (now_seconds() - t0));
    if (stats_path && routing_stats_write(&routing.stats, stats_path, &err)) goto fail;
    rc = EXIT_OK;
    goto done;
oom:
    rc = cli_fail(CMD, EXIT_RUNTIME, "out of memory");
    goto done;
fail:
    rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
done:
    free(logits), free(probs), free(normed), free(toks.v), free(text);
    tokenizer_free(tok);
    tokenfile_close(&tf);
    kvcache_free(&kv);
    runstate_free(&s);
    routing_counter_free(&routing);
    model_free(&m);
    return rc;
}
