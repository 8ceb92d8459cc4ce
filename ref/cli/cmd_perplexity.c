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
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/buf.h"
#include "cli.h"
#include "cli_groups.h"
#include "cli_util.h"
#include "ep/eplb.h"
#include "train/data.h"
#include "train/loss.h"
#include "model/mtp.h"
#include "tokenizer/tokenizer.h"

static const char *const CMD = "perplexity";

/** What the command line sets besides the model group. */
typedef struct {
    const char *ids_path, *text_path, *stats_path;
    long ctx, max_chunks;
    int want_mtp;
    CliThreads threads;
} Args;

static const CliOpt opts[] = {
    { "--ids", NULL, CLI_STR, offsetof(Args, ids_path), "FILE.bin", .help = "uint32 token ids (dsv3 prepare-data)" },
    { "--file", "-f", CLI_STR, offsetof(Args, text_path), "TEXT", .help = "UTF-8 text, encoded with the model's tokenizer.json" },
    { "--ctx-size", "-c", CLI_LONG, offsetof(Args, ctx), "N", .lo = 2, .hi = 1 << 20, .def = "256",
      .help = "tokens per chunk (each chunk is CTX+1 tokens: every position predicts the next)" },
    { "--max-chunks", NULL, CLI_LONG, offsetof(Args, max_chunks), "N", .lo = 0, .hi = 1L << 30, .def = "0",
      .help = "score at most N chunks, 0 = all" },
    { "--mtp", NULL, CLI_FLAG, offsetof(Args, want_mtp), .help = "also score the MTP head (the token after next)" },
    { "--routing-stats", NULL, CLI_STR, offsetof(Args, stats_path), "FILE",
      .help = "write the tokens each routed expert received, per MoE layer (JSON lines)" },
};

int cmd_perplexity(int argc, char **argv) {
    CliModel mo = { 0 };
    Args a = { 0 };
    CliCmd cmd = { .name = CMD, .usage = "-m MODEL_DIR (--ids FILE.bin | -f TEXT) [-c CTX] [--max-chunks N] [options]",
                   .about = "mean next-token cross-entropy (nats) and perplexity over consecutive CTX+1-token chunks" };
    cli_add(&cmd, cli_model_group(&mo));
    cli_add(&cmd, cli_numerics_group(&mo));
    cli_add(&cmd, CLI_GROUP("evaluation", opts, &a));
    cli_add(&cmd, cli_threads_group(&a.threads, 0));
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_RUN) return rc;
    const char *model_dir = mo.dir, *ids_path = a.ids_path, *text_path = a.text_path, *stats_path = a.stats_path;
    long ctx = a.ctx, max_chunks = a.max_chunks;
    int want_mtp = a.want_mtp;
    AttnMode attn = (AttnMode)mo.attn;
    Fp8Mode fp8 = (Fp8Mode)mo.fp8;
    if (!model_dir || !!ids_path == !!text_path)
        return cli_fail(CMD, EXIT_USAGE, "-m MODEL_DIR and exactly one of --ids FILE or -f TEXT are required");
    cli_threads_apply(&a.threads);
    Err err = { "" };
    Model m;
    if (model_load(&m, model_dir, stderr, &err)) return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    const Config *c = &m.config;
    int V = c->vocab_size;
    rc = EXIT_RUNTIME;
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
    if (config_check_positions(c, ctx, "-c", &err)) {
        rc = cli_fail(CMD, EXIT_USAGE, "%s", err.msg);
        goto done;
    }
    if (ids_path) {
        if (tokenfile_open(&tf, ids_path, V, ctx + 1, &err)) goto fail;
        if (intvec_reserve(&toks, (size_t)tf.n)) goto oom;
        if (tokenfile_read(&tf, 0, tf.n, toks.v, &err)) goto fail;
        toks.n = (size_t)tf.n;
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
    double nll = 0, nll_mtp = 0, t0 = now_seconds(), shown = t0;
    int tty = isatty(2);
    for (int64_t ch = 0; ch < chunks; ch++) {
        /* Progress: every chunk on a terminal, every 10 s in a log. */
        double t = now_seconds();
        if (ch > 0 && (tty || t - shown >= 10)) {
            fprintf(stderr, tty ? "\rdsv3 perplexity: chunk %lld/%lld, perplexity so far %.3f, %.0f s left " :
                                  "dsv3 perplexity: chunk %lld/%lld, perplexity so far %.3f, %.0f s left\n",
                    (long long)ch, (long long)chunks, exp(nll / ((double)ch * (double)ctx)), (t - t0) / ch * (chunks - ch));
            shown = t;
        }
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
    if (tty && chunks > 1) fprintf(stderr, "\n");
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
