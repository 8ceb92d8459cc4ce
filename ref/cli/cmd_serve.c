/**
 * @file cmd_serve.c
 * @brief `dsv3 serve`: the flags, the model and its backend; the server is ref/serve/server.h.
 *
 *   dsv3 serve -m DIR [--host 127.0.0.1] [--port 8080] [-c CTX] [-np N] [-b N] [-t N]
 *              [--backend ref|fast] [--ep N] [--spec mtp] [--api-key KEY[,KEY…] | --api-key-file F]
 *              [--timeout S] [--max-queue N] [--metrics] [--no-webui] [--alias NAME]
 *              [--chat-template NAME] [--think on|off]
 *
 * The chat template is chosen once, here (chat.h: --chat-template, else the one recognized from
 * tokenizer_config.json); --think is deepseek-v3.1's thinking for requests that do not set
 * chat_template_kwargs.thinking.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/threads.h"
#include "cli.h"
#include "cli_ep.h"
#include "cli_groups.h"
#include "cli_load.h"
#include "cli_util.h"
#include "ep/eplb.h"
#include "generate/generate.h"
#include "serve/server.h"
#include "tokenizer/chat.h"

/** The flags of serve. */
typedef struct {
    CliModel model;        /* -m, --attn, --fp8 */
    CliBackend backend;    /* --backend, --kv-cache */
    CliEpFlags ep;         /* --ep N, --ep-transport */
    CliThreads threads;    /* -t */
    const char *tokenizer, *host, *api_key, *key_file, *alias;
    const char *chat_template; /* --chat-template NAME */
    const char *routing_stats; /* --routing-stats FILE */
    int think;             /* --think on|off: −1 not given */
    long port, n_slots, batch, draft, max_queue, max_body;
    double timeout_s;
    int spec, metrics, no_webui;
    ServeOptions o;        /* what the server gets, from the above */
    char *keys_text;       /* the --api-key value or file contents, split in place */
    const char *keys[64];
    int64_t ctx;           /* -c (0: from the model) */
    int fp8_given;         /* --fp8 on the command line (the GPU backend defaults to w8a8) */
    long ctx_flag;         /* -c as given */
} ServeArgs;

static const int spec_values[] = { 1, 0 }, think_values[] = { 1, 0 };

/** serve's own options (llama-server's names). */
static const CliOpt serve_opts[] = {
    { "--tokenizer", NULL, CLI_STR, offsetof(ServeArgs, tokenizer), "DIR", .help = "tokenizer.json location (default: the model directory)" },
    { "--host", NULL, CLI_STR, offsetof(ServeArgs, host), "ADDR", .def = "127.0.0.1",
      .help = "address to bind (0.0.0.0 or :: for every interface)" },
    { "--port", NULL, CLI_LONG, offsetof(ServeArgs, port), "N", .lo = 0, .hi = 65535, .def = "8080",
      .help = "port (0: an ephemeral one, printed)" },
    { "--ctx-size", "-c", CLI_LONG, offsetof(ServeArgs, ctx_flag), "N", .lo = 2, .hi = 1 << 30,
      .help = "positions per slot, prompt + reply (default min(4096, max_position_embeddings))" },
    { "--parallel", "-np", CLI_LONG, offsetof(ServeArgs, n_slots), "N", .lo = 1, .hi = 256, .def = "4",
      .help = "slots: requests generated at once" },
    { "--batch-size", "-b", CLI_LONG, offsetof(ServeArgs, batch), "N", .lo = 1, .hi = 1 << 16, .def = "256",
      .help = "tokens per step: prompts are prefilled in pieces of this budget" },
    { "--spec", NULL, CLI_CHOICE, offsetof(ServeArgs, spec), .choices = "mtp|none", .values = spec_values, .def = "none",
      .help = "MTP speculative decoding per request" },
    { "--draft", NULL, CLI_LONG, offsetof(ServeArgs, draft), "N", .lo = 1, .hi = 16, .def = "1", .help = "MTP drafts per step" },
    { "--api-key", NULL, CLI_STR, offsetof(ServeArgs, api_key), "KEY[,KEY...]",
      .help = "require Authorization: Bearer KEY (GET /health and / stay public)" },
    { "--api-key-file", NULL, CLI_STR, offsetof(ServeArgs, key_file), "F", .help = "the keys, one per line" },
    { "--timeout", NULL, CLI_DOUBLE, offsetof(ServeArgs, timeout_s), "S", .lo = 1, .hi = 86400, .def = "600",
      .help = "close a connection idle for S seconds" },
    { "--max-queue", NULL, CLI_LONG, offsetof(ServeArgs, max_queue), "N", .lo = 0, .hi = 1 << 20, .def = "64",
      .help = "requests waiting for a slot at most; beyond, 429 with Retry-After" },
    { "--max-body", NULL, CLI_LONG, offsetof(ServeArgs, max_body), "BYTES", .lo = 1024, .hi = 1 << 30, .def = "4194304",
      .help = "larger request bodies get 413" },
    { "--metrics", NULL, CLI_FLAG, offsetof(ServeArgs, metrics), .help = "serve GET /metrics (Prometheus)" },
    { "--no-webui", NULL, CLI_FLAG, offsetof(ServeArgs, no_webui), .help = "no chat page at GET /" },
    { "--alias", NULL, CLI_STR, offsetof(ServeArgs, alias), "NAME",
      .help = "the model's name in /v1/models and responses (default: the directory's name)" },
    { "--chat-template", NULL, CLI_STR, offsetof(ServeArgs, chat_template), "NAME",
      .help = "deepseek-v3, deepseek-r1, deepseek-v3.1, kimi-k2, kimi-k2-thinking\n"
              "(default: recognized from the tokenizer's tokenizer_config.json)" },
    { "--think", NULL, CLI_CHOICE, offsetof(ServeArgs, think), .choices = "on|off", .values = think_values,
      .help = "deepseek-v3.1: thinking unless a request sets chat_template_kwargs.thinking\n(default off)" },
    { "--routing-stats", NULL, CLI_STR, offsetof(ServeArgs, routing_stats), "FILE",
      .help = "at shutdown, write the tokens each routed expert received, per MoE layer\n(JSON lines; dsv3 eplb)" },
};

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

/** Parses serve's flags into @p a; returns CLI_RUN, or the exit status after --help or an error (printed). */
static int parse_args(int argc, char **argv, ServeArgs *a) {
    const char *cmd = "serve";
    memset(a, 0, sizeof *a);
    CliCmd c = { .name = cmd, .usage = "-m MODEL_DIR [options]",
                 .about = "An OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, /v1/models,\n"
                          "/health, /metrics, /tokenize, /detokenize and a chat page at / (docs/serve.md)." };
    cli_add(&c, cli_model_group(&a->model));
    cli_add(&c, cli_numerics_group(&a->model));
    cli_add(&c, CLI_GROUP("server", serve_opts, a));
    cli_add(&c, cli_backend_group(&a->backend));
    cli_add(&c, cli_ep_group(&a->ep));
    cli_add(&c, cli_threads_group(&a->threads, 0));
    int rc = cli_parse(&c, argc, argv);
    a->fp8_given = rc == CLI_RUN && cli_given(&c, "--fp8");
    if (rc == CLI_RUN && !cli_given(&c, "--think")) a->think = -1;
    if (rc == CLI_RUN && cli_given(&c, "--api-key") && cli_given(&c, "--api-key-file"))
        rc = cli_fail(cmd, EXIT_USAGE, "give one of --api-key and --api-key-file");
    cli_free(&c);
    if (rc != CLI_RUN) return rc;
    if (!a->model.dir) return cli_fail(cmd, EXIT_USAGE, "-m MODEL_DIR is required (dsv3 serve --help)");
    ChatTemplateKind kind;
    Err err = { "" };
    if (a->chat_template && chat_template_by_name(a->chat_template, &kind, &err)) return cli_fail(cmd, EXIT_USAGE, "%s", err.msg);
    a->o = serve_options_default();
    a->o.host = a->host, a->o.port = (int)a->port, a->o.n_slots = (int)a->n_slots, a->o.batch = a->batch;
    a->o.timeout_s = a->timeout_s, a->o.max_queue = (int)a->max_queue, a->o.max_body = (size_t)a->max_body;
    a->o.metrics = a->metrics, a->o.webui = !a->no_webui;
    a->ctx = a->ctx_flag;
    if (a->key_file) {
        size_t len;
        if (read_file(a->key_file, 1 << 20, &a->keys_text, &len, &err)) return cli_fail(cmd, EXIT_USAGE, "%s", err.msg);
    } else if (a->api_key && !(a->keys_text = strdup(a->api_key)))
        return cli_fail(cmd, EXIT_RUNTIME, "out of memory");
    if (a->keys_text && split_keys(a)) return EXIT_USAGE;
    if (a->alias) a->o.alias = a->alias;
    else {
        const char *slash = strrchr(a->model.dir, '/');
        a->o.alias = slash && slash[1] ? slash + 1 : a->model.dir;
    }
    if (a->backend.gpu && a->model.attn != ATTN_ABSORB) return cli_fail(cmd, EXIT_USAGE, "--backend fast runs the absorbed attention only");
    a->o.draft = a->spec ? (int)a->draft : 0;
    return CLI_RUN;
}

/** The GPU engine for the slots: a batch of them, or one sequence (with MTP for --spec). */
static GpuEngineOptions engine_options(const ServeArgs *a, const CliEp *ep) {
    int one = a->o.n_slots == 1;
    int64_t max_T = one ? gen_max_T(a->o.batch, a->o.draft, a->ctx) : (a->o.batch > a->o.n_slots ? a->o.batch : a->o.n_slots);
    return (GpuEngineOptions){ a->fp8_given ? (Fp8Mode)a->model.fp8 : FP8_W8A8, a->backend.kv_bf16, max_T, a->ctx, a->o.draft > 0, cli_ep_gpu_env(ep),
                               ep->tcp, ep->timeout_s, a->o.n_slots };
}

/**
 * The chat template of every request: --chat-template, else the tokenizer's (an unknown one is an
 * error). A tokenizer without the template's markers still serves completions: chat requests then
 * get a 400 naming the missing token — unless --chat-template asked for that template.
 */
static int serve_template(const ServeArgs *a, const Tokenizer *tok, ChatTemplate *tpl) {
    const char *cmd = "serve";
    Err err = { "" };
    if (chat_template_select(tpl, tok, a->chat_template, a->think > 0, &err)) return cli_fail(cmd, EXIT_USAGE, "%s", err.msg);
    if (chat_template_check(tpl, tok, &err)) {
        if (a->chat_template) return cli_fail(cmd, EXIT_USAGE, "%s", err.msg);
        fprintf(stderr, "dsv3 serve: chat requests will get 400: %s\n", err.msg);
    }
    if (a->think >= 0 && !chat_template_has_think_switch(tpl))
        fprintf(stderr, "dsv3 serve: --think has no effect with the %s template\n", chat_template_name(tpl->kind));
    return EXIT_OK;
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
    if (rc != CLI_RUN) {
        free(a.keys_text);
        return rc;
    }
    rc = 0;
    cli_threads_apply(&a.threads);
    CliEp ep;
    Err err = { "" };
    Model m;
    if ((rc = cli_ep_launch(&ep, cmd, &a.ep, argc, argv)) || cli_ep_is_server(&ep)) {
        /* Ranks 1..: load the checkpoint and serve its experts until rank 0 is done. */
        if (rc == 0 && model_load(&m, a.model.dir, NULL, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "rank %d: %s", ep.env.rank, err.msg);
        else if (rc == 0) {
            if ((a.ctx = serve_ctx(&a, &m.config)) == 0) rc = EXIT_USAGE;
            else {
                GpuEngineOptions go = engine_options(&a, &ep);
                rc = cli_ep_serve(&ep, cmd, &m, a.backend.gpu ? &go : NULL, (Fp8Mode)a.model.fp8);
            }
            model_free(&m);
        }
        free(a.keys_text);
        return cli_ep_finish(&ep, cmd, rc);
    }
    Server *srv = NULL;
    CliLoaded l = { 0 };
    char describe[256] = "reference";
    if (serve_start(&srv, &a.o, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    else rc = cli_load(cmd, a.model.dir, a.tokenizer, a.o.draft > 0, &l);
    if (rc == 0 && (a.ctx = serve_ctx(&a, &l.m.config)) == 0) rc = EXIT_USAGE;
    ChatTemplate tpl;
    if (rc == 0) rc = serve_template(&a, l.tok, &tpl);
    if (rc == 0 && a.backend.gpu && a.o.draft > 0 && a.o.n_slots > 1)
        rc = cli_fail(cmd, EXIT_USAGE, "--spec mtp with --backend fast drafts for one sequence: use -np 1");
    GpuEngineOptions go = engine_options(&a, &ep);
    if (rc == 0) rc = cli_load_backend(cmd, &l, a.backend.gpu ? &go : NULL, &ep);
    if (rc == 0 && l.gpu) snprintf(describe, sizeof describe, "--backend fast on %s", gpu_engine_describe(l.gpu));
    else if (rc == 0 && l.ep_rank) snprintf(describe, sizeof describe, "reference, routed experts over %d processes", ep.env.world_size);
    RoutingCounter routing = { 0 };
    MoeHook *hook = l.ep_rank ? &l.ep_rank->hook : NULL;
    if (rc == 0 && a.routing_stats) {
        if (l.gpu) rc = cli_fail(cmd, EXIT_USAGE, "--routing-stats: counts the reference's MoE layers: drop --backend fast");
        else if (routing_counter_init(&routing, &l.m.config, l.m.w.n_mtp, hook, &err))
            rc = cli_fail(cmd, EXIT_USAGE, "--routing-stats: %s", err.msg);
        else hook = &routing.hook;
    }
    if (rc == 0) {
        ServeModel sm = { &l.m, l.tok, l.gpu, hook, (AttnMode)a.model.attn, (Fp8Mode)a.model.fp8, a.ctx, describe,
                        tpl };
        if (serve_attach(srv, &sm, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        else serve_wait(srv);
    }
    serve_free(srv); /* the step thread has stopped: the counts are final */
    if (rc == 0 && a.routing_stats && routing_stats_write(&routing.stats, a.routing_stats, &err))
        rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    routing_counter_free(&routing);
    cli_loaded_free(&l);
    free(a.keys_text);
    return cli_ep_finish(&ep, cmd, rc);
}
