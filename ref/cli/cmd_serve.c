/**
 * @file cmd_serve.c
 * @brief `dsv3 serve`: the flags, the model and its backend; the server is ref/serve/server.h.
 *
 *   dsv3 serve -m DIR [--host 127.0.0.1] [--port 8080] [-c CTX] [-np N] [-b N] [-t N]
 *              [--backend ref|fast] [--ep N] [--spec mtp] [--api-key KEY[,KEY…] | --api-key-file F]
 *              [--timeout S] [--max-queue N] [--metrics] [--no-webui] [--alias NAME]
 */
#include <stdio.h>
#include <string.h>

#include "base/threads.h"
#include "cli.h"
#include "cli_ep.h"
#include "cli_util.h"
#include "generate/generate.h"
#include "serve/server.h"

/** The flags of serve. */
typedef struct {
    ServeOptions o;
    const char *model, *tokenizer, *key_file;
    char *keys_text;       /* the --api-key value or file contents, split in place */
    const char *keys[64];
    long threads, draft;
    int64_t ctx;           /* -c (0: from the model) */
    int spec, gpu, kv_bf16, fp8_given;
    AttnMode attn;
    Fp8Mode fp8;
    CliEpFlags ep;
} ServeArgs;

static void usage(void) {
    printf("usage: dsv3 serve -m MODEL_DIR [options]   (an OpenAI-compatible HTTP server; docs/serve.md)\n"
           "  -m, --model DIR        checkpoint directory\n"
           "  --tokenizer DIR        tokenizer.json location (default: the model directory)\n"
           "  --host ADDR            address to bind (default 127.0.0.1; 0.0.0.0 or :: for every interface)\n"
           "  --port N               port (default 8080; 0: an ephemeral one, printed)\n"
           "  -c, --ctx-size N       positions per slot, prompt + reply (default min(4096, max_position_embeddings))\n"
           "  -np, --parallel N      slots: requests generated at once (default 4)\n"
           "  -b, --batch-size N     tokens per step: prompts are prefilled in pieces of this budget (default 256)\n"
           "  -t, --threads N        threads of the model's loops (default: the online cores)\n"
           "  --spec mtp|none        MTP speculative decoding per request (default none)\n"
           "  --draft N              MTP drafts per step (default 1)\n"
           "  --api-key KEY[,KEY…]   require Authorization: Bearer KEY (GET /health and / stay public)\n"
           "  --api-key-file F       the keys, one per line\n"
           "  --timeout S            close a connection idle for S seconds (default 600)\n"
           "  --max-queue N          requests waiting for a slot at most; beyond, 429 with Retry-After (default 64)\n"
           "  --max-body BYTES       larger request bodies get 413 (default 4194304)\n"
           "  --metrics              serve GET /metrics (Prometheus)\n"
           "  --no-webui             no chat page at GET /\n"
           "  --alias NAME           the model's name in /v1/models and responses (default: the directory's name)\n"
           "  --backend ref|fast     the C reference (default) or the whole model on a GPU\n"
           "  --kv-cache auto|f32|bf16  GPU latent cache\n"
           "  --attn absorb|naive    MLA form (reference; default absorb)\n"
           "  --fp8 dequant|w8a8     FP8 numerics (default dequant; w8a8 with --backend fast)\n"
           "  --ep N                 split the routed experts over N processes\n"
           "  --ep-transport nccl|tcp  --backend fast: the expert-parallel transport\n");
}

/** Splits the comma- or newline-separated keys of a->keys_text into a->keys. */
static int split_keys(ServeArgs *a) {
    const char *cmd = "serve";
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(a->keys_text, ",\n\r", &save); tok; tok = strtok_r(NULL, ",\n\r", &save)) {
        while (*tok == ' ' || *tok == '\t') tok++;
        size_t l = strlen(tok);
        while (l > 0 && (tok[l - 1] == ' ' || tok[l - 1] == '\t')) tok[--l] = 0;
        if (!l) continue;
        if (n == 64) return cli_fail(cmd, EXIT_USAGE, "at most 64 API keys");
        a->keys[n++] = tok;
    }
    if (n == 0) return cli_fail(cmd, EXIT_USAGE, "--api-key%s: no key given", a->key_file ? "-file" : "");
    a->o.api_keys = a->keys, a->o.n_api_keys = n;
    return 0;
}

/** Inside parse_args: takes the current flag's value into v, or fails the parse. */
#define VALUE() if (!(v = cli_value(cmd, argc, argv, &i))) return -1
/** Inside parse_args: the current flag's integer value in [lo, hi] into dst, or fails the parse. */
#define LONG(lo, hi, dst) do { long x_; VALUE(); if (cli_long(cmd, f, v, lo, hi, &x_)) return -1; dst = x_; } while (0)

/** Parses serve's flags into @p a; -1 (message printed) on a bad one, 1 for --help. */
static int parse_args(int argc, char **argv, ServeArgs *a) {
    const char *cmd = "serve";
    memset(a, 0, sizeof *a);
    a->o = serve_options_default();
    a->draft = 1, a->kv_bf16 = -1, a->o.alias = NULL;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v;
        double d;
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) return usage(), 1;
        if (!strcmp(f, "-m") || !strcmp(f, "--model")) { VALUE(); a->model = v; }
        else if (!strcmp(f, "--tokenizer")) { VALUE(); a->tokenizer = v; }
        else if (!strcmp(f, "--host")) { VALUE(); a->o.host = v; }
        else if (!strcmp(f, "--port")) LONG(0, 65535, a->o.port);
        else if (!strcmp(f, "-c") || !strcmp(f, "--ctx-size")) LONG(2, 1L << 30, a->ctx);
        else if (!strcmp(f, "-np") || !strcmp(f, "--parallel")) LONG(1, 256, a->o.n_slots);
        else if (!strcmp(f, "-b") || !strcmp(f, "--batch-size")) LONG(1, 1L << 16, a->o.batch);
        else if (!strcmp(f, "-t") || !strcmp(f, "--threads")) LONG(1, 1024, a->threads);
        else if (!strcmp(f, "--draft")) LONG(1, 16, a->draft);
        else if (!strcmp(f, "--max-queue")) LONG(0, 1 << 20, a->o.max_queue);
        else if (!strcmp(f, "--max-body")) LONG(1024, 1L << 30, a->o.max_body);
        else if (!strcmp(f, "--timeout")) { VALUE(); if (cli_double(cmd, f, v, 1, 86400, &d)) return -1; a->o.timeout_s = d; }
        else if (!strcmp(f, "--api-key")) { VALUE(); free(a->keys_text); a->keys_text = strdup(v); a->key_file = NULL; }
        else if (!strcmp(f, "--api-key-file")) { VALUE(); a->key_file = v; }
        else if (!strcmp(f, "--metrics")) a->o.metrics = 1;
        else if (!strcmp(f, "--no-webui")) a->o.webui = 0;
        else if (!strcmp(f, "--alias")) { VALUE(); a->o.alias = v; }
        else if (!strcmp(f, "--spec")) {
            VALUE();
            if (strcmp(v, "mtp") && strcmp(v, "none")) return cli_fail(cmd, EXIT_USAGE, "--spec must be mtp or none, got '%s'", v), -1;
            a->spec = !strcmp(v, "mtp");
        } else if (!strcmp(f, "--attn")) {
            VALUE();
            if (strcmp(v, "absorb") && strcmp(v, "naive")) return cli_fail(cmd, EXIT_USAGE, "--attn must be absorb or naive, got '%s'", v), -1;
            a->attn = strcmp(v, "naive") ? ATTN_ABSORB : ATTN_NAIVE;
        } else if (!strcmp(f, "--fp8")) {
            VALUE();
            if (strcmp(v, "dequant") && strcmp(v, "w8a8")) return cli_fail(cmd, EXIT_USAGE, "--fp8 must be dequant or w8a8, got '%s'", v), -1;
            a->fp8 = strcmp(v, "w8a8") ? FP8_DEQUANT : FP8_W8A8, a->fp8_given = 1;
        } else {
            int r = cli_gpu_flag(cmd, argc, argv, &i, &a->gpu, &a->kv_bf16);
            if (r == 0) r = cli_ep_flag(cmd, argc, argv, &i, &a->ep);
            if (r < 0) return -1;
            if (r == 0) return cli_fail(cmd, EXIT_USAGE, "unknown option '%s' (dsv3 serve --help)", f), -1;
        }
    }
    if (!a->model) return cli_fail(cmd, EXIT_USAGE, "-m MODEL_DIR is required (dsv3 serve --help)"), -1;
    if (a->key_file) {
        Err err = { "" };
        size_t len;
        free(a->keys_text);
        a->keys_text = NULL;
        if (read_file(a->key_file, 1 << 20, &a->keys_text, &len, &err)) return cli_fail(cmd, EXIT_USAGE, "%s", err.msg), -1;
    }
    if (a->keys_text && split_keys(a)) return -1;
    if (!a->o.alias) {
        const char *slash = strrchr(a->model, '/');
        a->o.alias = slash && slash[1] ? slash + 1 : a->model;
    }
    if (a->gpu && a->attn != ATTN_ABSORB) return cli_fail(cmd, EXIT_USAGE, "--backend fast runs the absorbed attention only"), -1;
    a->o.draft = a->spec ? (int)a->draft : 0;
    return 0;
}
#undef LONG
#undef VALUE

/** The GPU engine for the slots: a batch of them, or one sequence (with MTP for --spec). */
static GpuEngineOptions engine_options(const ServeArgs *a, const CliEp *ep) {
    int one = a->o.n_slots == 1;
    int64_t max_T = one ? gen_max_T(a->o.batch, a->o.draft, a->ctx) : (a->o.batch > a->o.n_slots ? a->o.batch : a->o.n_slots);
    return (GpuEngineOptions){ a->fp8_given ? a->fp8 : FP8_W8A8, a->kv_bf16, max_T, a->ctx, a->o.draft > 0, cli_ep_gpu_env(ep),
                               ep->tcp, ep->timeout_s, a->o.n_slots };
}

/** The context of a model: -c, else its limit capped at 4096; 0 (printed) when -c is too large. */
static int64_t serve_ctx(const ServeArgs *a, const Config *c) {
    int64_t ctx = a->ctx ? a->ctx : (c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096);
    if (ctx > c->max_position_embeddings)
        return cli_fail("serve", EXIT_USAGE, "-c %lld exceeds max_position_embeddings = %d", (long long)ctx, c->max_position_embeddings), 0;
    return ctx;
}

int cmd_serve(int argc, char **argv) {
    const char *cmd = "serve";
    ServeArgs a;
    int rc = parse_args(argc, argv, &a);
    if (rc) {
        free(a.keys_text);
        return rc > 0 ? EXIT_OK : EXIT_USAGE;
    }
    if (a.threads) threads_set((int)a.threads);
    CliEp ep;
    Err err = { "" };
    Model m;
    if ((rc = cli_ep_launch(&ep, cmd, &a.ep, argc, argv)) || cli_ep_is_server(&ep)) {
        /* Ranks 1..: load the checkpoint and serve its experts until rank 0 is done. */
        if (rc == 0 && model_load(&m, a.model, NULL, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "rank %d: %s", ep.env.rank, err.msg);
        else if (rc == 0) {
            if ((a.ctx = serve_ctx(&a, &m.config)) == 0) rc = EXIT_USAGE;
            else {
                GpuEngineOptions go = engine_options(&a, &ep);
                rc = cli_ep_serve(&ep, cmd, &m, a.gpu ? &go : NULL, a.fp8);
            }
            model_free(&m);
        }
        free(a.keys_text);
        return cli_ep_finish(&ep, cmd, rc);
    }
    Server *srv = NULL;
    Tokenizer *tok = NULL;
    GpuEngine *gpu = NULL;
    EpRank *rank = NULL;
    int loaded = 0;
    char describe[256] = "reference";
    if (serve_start(&srv, &a.o, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    else if (model_load(&m, a.model, stderr, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    else loaded = 1;
    if (rc == 0 && tokenizer_load(&tok, a.tokenizer ? a.tokenizer : a.model, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    if (rc == 0 && (a.ctx = serve_ctx(&a, &m.config)) == 0) rc = EXIT_USAGE;
    if (rc == 0 && a.o.draft > 0 && m.w.n_mtp == 0) rc = cli_fail(cmd, EXIT_USAGE, "--spec mtp: %s has no MTP module", a.model);
    if (rc == 0 && a.gpu && a.o.draft > 0 && a.o.n_slots > 1)
        rc = cli_fail(cmd, EXIT_USAGE, "--spec mtp with --backend fast drafts for one sequence: use -np 1");
    if (rc == 0 && a.gpu) {
        GpuEngineOptions go = engine_options(&a, &ep);
        if (cli_ep_start(&ep, &m, &err) || gpu_engine_open(&gpu, &m, &go, stderr, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        else snprintf(describe, sizeof describe, "--backend fast on %s", gpu_engine_describe(gpu));
    } else if (rc == 0 && cli_ep_gpu_env(&ep)) {
        if (!(rank = cli_ep_join_ref(&ep, &m, &err))) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        else snprintf(describe, sizeof describe, "reference, routed experts over %d processes", ep.env.world_size);
    }
    if (rc == 0) {
        ServeModel sm = { &m, tok, gpu, rank ? &rank->hook : NULL, a.attn, a.fp8, a.ctx, describe };
        if (serve_attach(srv, &sm, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        else serve_wait(srv);
    }
    serve_free(srv);
    gpu_engine_close(gpu);
    tokenizer_free(tok);
    if (loaded) model_free(&m);
    free(a.keys_text);
    return cli_ep_finish(&ep, cmd, rc);
}
