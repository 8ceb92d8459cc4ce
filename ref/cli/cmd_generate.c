/**
 * @file cmd_generate.c
 * @brief `dsv3 generate` (complete a prompt) and `dsv3 chat` (interactive multi-turn chat
 *        that keeps its KV cache across turns). Flags follow llama.cpp's names.
 *
 *   dsv3 generate -m MODEL_DIR [--tokenizer DIR] (-p PROMPT | -f FILE) [-n N] [--temp T]
 *                 [--top-p P] [--top-k K] [--seed S] [-c CTX] [--stop S]... [--spec mtp|none] [--draft N]
 *   dsv3 chat     -m MODEL_DIR [--tokenizer DIR] [-sys SYSTEM] [--chat-template NAME] [--think on|off]
 *                 [same sampling flags]
 *   both: [--reasoning show|hide]   the `<think>…</think>` part of a reply dimmed on a terminal (as written
 *         otherwise), or not printed (ref/tokenizer/chat.h, ChatReasoning)
 *
 * Text streams to stdout as it is produced (never half a UTF-8 character, and never the start
 * of a --stop string before it is known not to be one); statistics go to stderr. stdout is the
 * completion alone unless --display-prompt (llama.cpp prints the prompt first; here a pipe gets
 * exactly what the model wrote, the same text `--batch` puts in its JSON). Speculative decoding with the checkpoint's MTP module (--spec mtp) never changes the
 * output's distribution, and with --temp 0 not even a token. It is off by default: on a CPU a
 * small model's decode step is compute-bound, so the MTP pass and the 2-token verification cost
 * more than the accepted drafts save (bundled model: 1.6 tokens per main-model step at 58–75 %
 * acceptance, yet 0.76× the plain tokens/s; docs/benchmarks.md). It pays where decode is
 * memory-bound, i.e. large models on GPUs.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "base/threads.h"
#include "cli.h"
#include "cli_groups.h"
#include "chat_repl.h"
#include "ep/eplb.h"
#include "cli_load.h"
#include "cli_util.h"
#include "reply.h"
#include "generate/batch.h"
#include "generate/generate.h"
#include "generate/logits_process.h"
#include "generate/stop.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

/** Flags of generate and chat. */
typedef struct {
    CliModel model;       /* -m, --attn, --fp8 */
    CliSampling sampling; /* --temp, --top-k, --top-p, --seed */
    CliPenalties penalties; /* --min-p, --repeat-penalty, ... */
    CliBackend backend;   /* --backend, --kv-cache */
    CliEpFlags ep;        /* --ep N, --ep-transport */
    CliThreads threads;   /* -t */
    const char *tokenizer, *prompt, *prompt_file, *system, *batch_file;
    long n_predict, ctx, chunk, parallel, draft;
    int spec, no_bos, escape, display_prompt, no_display_prompt, verbose_prompt;
    const char *chat_template; /* --chat-template NAME (chat) */
    int think;            /* --think on|off (chat; deepseek-v3.1): −1 not given */
    int hide_reasoning;   /* --reasoning hide */
    CliList stop_args;    /* --stop, as given */
    const char *routing_stats; /* --routing-stats FILE */
    int fp8_given;        /* --fp8 on the command line (the GPU backend defaults to w8a8) */
    int seed_given;       /* --seed on the command line (else from the clock) */
    /* after -e: the texts in use (owned when escapes were processed) */
    char *prompt_esc, *system_esc;
    const char **stops;   /* [n_stops] --stop strings in use */
    int n_stops;
    char **stops_esc;     /* [n_stops] owned copies with -e */
} GenArgs;

static const int spec_values[] = { 1, 0 }, think_values[] = { 1, 0 };

/** generate only: where the prompt comes from, and what is printed around the completion. */
static const CliOpt prompt_opts[] = {
    { "--prompt", "-p", CLI_STR, offsetof(GenArgs, prompt), "TEXT", .help = "prompt text (a BOS token is prepended; --no-bos to skip)" },
    { "--file", "-f", CLI_STR, offsetof(GenArgs, prompt_file), "PATH", .help = "read the prompt from a file" },
    { "--batch", NULL, CLI_STR, offsetof(GenArgs, batch_file), "FILE",
      .help = "one prompt per line (blank lines skipped), all completed with continuous\n"
              "batching; one JSON line per prompt on stdout as it finishes; prompt i\n"
              "samples with seed S+i (the same text as generate -p alone with that seed)" },
    { "--parallel", NULL, CLI_LONG, offsetof(GenArgs, parallel), "N", .lo = 1, .hi = 4096, .def = "8",
      .help = "--batch: sequences decoded together" },
    { "--no-bos", NULL, CLI_FLAG, offsetof(GenArgs, no_bos), .help = "do not prepend the BOS token" },
    { "--display-prompt", NULL, CLI_FLAG, offsetof(GenArgs, display_prompt), .help = "print the prompt before the completion" },
    { "--no-display-prompt", NULL, CLI_FLAG, offsetof(GenArgs, no_display_prompt),
      .help = "print the completion only (the default: stdout is what the model wrote)" },
    { "--verbose-prompt", NULL, CLI_FLAG, offsetof(GenArgs, verbose_prompt),
      .help = "print the prompt's token ids and pieces to stderr before generating" },
};

/** chat only. */
static const CliOpt chat_opts[] = {
    { "--system", "-sys", CLI_STR, offsetof(GenArgs, system), "TEXT", .help = "system prompt" },
    { "--chat-template", NULL, CLI_STR, offsetof(GenArgs, chat_template), "NAME",
      .help = "deepseek-v3, deepseek-r1, deepseek-v3.1, kimi-k2, kimi-k2-thinking\n"
              "(default: recognized from the tokenizer's tokenizer_config.json)" },
    { "--think", NULL, CLI_CHOICE, offsetof(GenArgs, think), .choices = "on|off", .values = think_values,
      .help = "deepseek-v3.1: thinking mode (default off)" },
};

/** generate and chat. */
static const CliOpt gen_opts[] = {
    { "--tokenizer", NULL, CLI_STR, offsetof(GenArgs, tokenizer), "DIR", .help = "tokenizer.json location (default: the model directory)" },
    { "--n-predict", "-n", CLI_LONG, offsetof(GenArgs, n_predict), "N", .lo = -1, .hi = 1 << 30, .def = "256",
      .help = "tokens to generate, -1 = until EOS or the context is full" },
    { "--ctx-size", "-c", CLI_LONG, offsetof(GenArgs, ctx), "N", .lo = 1, .hi = 1 << 30,
      .help = "context length in tokens (default min(4096, max_position_embeddings))" },
    { "--batch-size", "-b", CLI_LONG, offsetof(GenArgs, chunk), "N", .lo = 1, .hi = 1 << 16, .def = "256",
      .help = "tokens per forward: the prefill chunk, and with several sequences the\ntokens of all of them in one step" },
    { "--stop", NULL, CLI_LIST, offsetof(GenArgs, stop_args), "STRING",
      .help = "end the reply where the text contains STRING (repeatable); STRING itself\nis not printed" },
    { "--escape", "-e", CLI_FLAG, offsetof(GenArgs, escape),
      .help = "process escapes (\\n, \\r, \\t, \\\\, \\', \\\", \\xHH) in the prompt, -sys and --stop" },
    { "--spec", NULL, CLI_CHOICE, offsetof(GenArgs, spec), .choices = "mtp|none", .values = spec_values, .def = "none",
      .help = "speculative decoding with the MTP module; docs/benchmarks.md says when it pays" },
    { "--draft", NULL, CLI_LONG, offsetof(GenArgs, draft), "N", .lo = 1, .hi = 16, .def = "1",
      .help = "MTP drafts per step, recycling the module's output" },
    { "--reasoning", NULL, CLI_CHOICE, offsetof(GenArgs, hide_reasoning), .choices = "show|hide", .def = "show",
      .help = "the <think>...</think> part of a reply: shown (dimmed on a terminal), or hidden" },
    { "--routing-stats", NULL, CLI_STR, offsetof(GenArgs, routing_stats), "FILE",
      .help = "write the tokens each routed expert received, per MoE layer (JSON lines; dsv3 eplb)" },
};

/**
 * Parses the flags of @p cmd into @p a (and processes -e); returns CLI_RUN, or the exit status
 * after --help or an error (printed). gen_args_free releases what it keeps.
 */
static int parse_args(const char *cmd, int argc, char **argv, GenArgs *a, CliCmd *c) {
    memset(a, 0, sizeof *a);
    int is_chat = !strcmp(cmd, "chat");
    *c = (CliCmd){ .name = cmd };
    if (is_chat) {
        c->usage = "-m MODEL_DIR [options]   (type your message, empty line or /exit to quit)";
        cli_add(c, CLI_GROUP("chat", chat_opts, a));
    } else {
        c->usage = "-m MODEL_DIR (-p PROMPT | -f FILE | --batch FILE) [options]";
        cli_add(c, CLI_GROUP("prompt", prompt_opts, a));
    }
    cli_add(c, cli_model_group(&a->model));
    cli_add(c, cli_numerics_group(&a->model));
    cli_add(c, CLI_GROUP("generation", gen_opts, a));
    cli_add(c, cli_sampling_group(&a->sampling));
    cli_add(c, cli_penalties_group(&a->penalties));
    cli_add(c, cli_backend_group(&a->backend));
    cli_add(c, cli_ep_group(&a->ep));
    cli_add(c, cli_threads_group(&a->threads, 0));
    int rc = cli_parse(c, argc, argv);
    if (rc != CLI_RUN) return rc;
    a->fp8_given = cli_given(c, "--fp8"), a->seed_given = cli_given(c, "--seed");
    if (is_chat && !cli_given(c, "--think")) a->think = -1;
    if (!a->model.dir) return cli_fail(cmd, EXIT_USAGE, "-m MODEL_DIR is required (dsv3 %s --help)", cmd);
    if (!is_chat && !!a->prompt + !!a->prompt_file + !!a->batch_file != 1)
        return cli_fail(cmd, EXIT_USAGE, "give exactly one of -p PROMPT, -f FILE or --batch FILE");
    if (a->batch_file && a->spec) return cli_fail(cmd, EXIT_USAGE, "--batch decodes plainly: no --spec mtp");
    if (a->display_prompt && a->no_display_prompt)
        return cli_fail(cmd, EXIT_USAGE, "give one of --display-prompt and --no-display-prompt");
    if (a->display_prompt && a->batch_file) return cli_fail(cmd, EXIT_USAGE, "--display-prompt: --batch prints JSON lines of completions");
    /* -e: the texts are copies with the escapes processed (argv stays as it was for --ep's ranks) */
    if (a->escape && ((a->prompt && !(a->prompt = a->prompt_esc = cli_unescape(a->prompt))) ||
                      (a->system && !(a->system = a->system_esc = cli_unescape(a->system)))))
        return cli_fail(cmd, EXIT_RUNTIME, "out of memory");
    a->n_stops = a->stop_args.n;
    a->stops = a->stop_args.v;
    if (a->escape && a->n_stops) {
        if (!(a->stops_esc = xcalloc((size_t)a->n_stops, sizeof *a->stops_esc))) return cli_fail(cmd, EXIT_RUNTIME, "out of memory");
        for (int i = 0; i < a->n_stops; i++)
            if (!(a->stops[i] = a->stops_esc[i] = cli_unescape(a->stops[i]))) return cli_fail(cmd, EXIT_RUNTIME, "out of memory");
    }
    for (int i = 0; i < a->n_stops; i++) {
        if (!a->stops[i][0]) return cli_fail(cmd, EXIT_USAGE, "--stop: an empty string would stop before the first token");
        if (!utf8_valid(a->stops[i], strlen(a->stops[i]))) return cli_fail(cmd, EXIT_USAGE, "--stop %d is not valid UTF-8", i + 1);
    }
    return CLI_RUN;
}

/** Releases what parse_args kept (and the parser's lists). */
static void gen_args_free(GenArgs *a, CliCmd *c) {
    free(a->prompt_esc), free(a->system_esc);
    for (int i = 0; a->stops_esc && i < a->n_stops; i++) free(a->stops_esc[i]);
    free(a->stops_esc);
    cli_free(c);
}

/** Everything a session needs, loaded from the flags. */
typedef struct {
    CliLoaded l;    /* the model, its tokenizer and backend (GPU engine or expert-parallel group) */
    Sampler sampler;
    Generator g;
    DecodeStream ds;
    StopMatcher stop; /* --stop */
    ChatReasoning reasoning; /* the reply's <think> part, shown or hidden (--reasoning) */
    int eos;
    long ctx;       /* positions per sequence */
    uint64_t seed;  /* the sampler's (printed, so a run can be repeated) */
    LogitsHookCtx lp; /* --min-p, --repeat-penalty, ...: what the logits hook applies */
    int lp_on;      /* 1 when any of them changes a logit */
    RoutingCounter routing; /* --routing-stats: counts every MoE layer, then runs it through ep_rank or locally */
    char settings[256]; /* printed with the statistics, so a run can be repeated (seed) */
} Session;

static void session_free(Session *s) {
    gen_free(&s->g);
    decode_stream_free(&s->ds);
    stop_free(&s->stop);
    chat_reasoning_free(&s->reasoning);
    routing_counter_free(&s->routing);
    free(s->lp.work);
    cli_loaded_free(&s->l);
}

/** Positions of the session: -c, else the model's limit capped at 4096; 0 (error printed) if -c is too large. */
static long session_ctx(const char *cmd, const GenArgs *a, const Config *c) {
    long ctx = a->ctx ? a->ctx : (c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096);
    Err err = { "" };
    if (config_check_positions(c, ctx, "-c", &err)) return cli_fail(cmd, EXIT_USAGE, "%s", err.msg), 0;
    return ctx;
}

/** Tokens per step of --batch: a prefill chunk, and at least one token for every open sequence. */
static int64_t batch_max_T(const GenArgs *a) { return a->chunk > a->parallel ? a->chunk : a->parallel; }

/** The GPU engine of a session, the same on every rank of a group (the experts' buffers depend on max_T). */
static GpuEngineOptions session_gpu(const GenArgs *a, long ctx, const CliEp *ep) {
    int draft = a->spec ? (int)a->draft : 0;
    int64_t max_T = a->batch_file ? batch_max_T(a) : gen_max_T(a->chunk, draft, ctx);
    return (GpuEngineOptions){ a->fp8_given ? (Fp8Mode)a->model.fp8 : FP8_W8A8, a->backend.kv_bf16, max_T, ctx, a->spec,
                               cli_ep_gpu_env(ep), ep->tcp, ep->timeout_s, a->batch_file ? (int)a->parallel : 1 };
}

/** Ranks 1.. of a group: load the checkpoint and serve its experts until rank 0 is done. */
static int serve_session(const char *cmd, const GenArgs *a, CliEp *ep) {
    Err err = { "" };
    Model m;
    if (model_load(&m, a->model.dir, NULL, &err)) return cli_fail(cmd, EXIT_RUNTIME, "rank %d: %s", ep->env.rank, err.msg);
    long ctx = session_ctx(cmd, a, &m.config);
    int rc = EXIT_USAGE;
    if (ctx > 0) {
        GpuEngineOptions go = session_gpu(a, ctx, ep);
        rc = cli_ep_serve(ep, cmd, &m, a->backend.gpu ? &go : NULL, (Fp8Mode)a->model.fp8);
    }
    model_free(&m);
    return rc;
}

/**
 * What generate, chat and --batch share: the model and tokenizer, the EOS id, the seed and the
 * sampler, the context, and the backend — the GPU engine, or the reference's expert-parallel
 * group when there is one.
 */
static int session_load(const char *cmd, const GenArgs *a, Session *s, CliEp *ep) {
    memset(s, 0, sizeof *s);
    stop_init(&s->stop, a->stops, a->n_stops);
    Err err = { "" };
    const CliSampling *sp = &a->sampling;
    if (isatty(2)) fprintf(stderr, "dsv3: loading %s ...\n", a->model.dir);
    int rc = cli_load(cmd, a->model.dir, a->tokenizer, a->spec, &s->l);
    if (rc) return rc;
    const Config *c = &s->l.m.config;
    s->eos = tokenizer_eos_id(s->l.tok);
    if (s->eos < 0) s->eos = c->eos_token_id;
    s->seed = a->seed_given ? (uint64_t)sp->seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (sampler_init(&s->sampler, (float)sp->temp, (int)sp->top_k, (float)sp->top_p, s->seed, &err))
        return cli_fail(cmd, EXIT_USAGE, "%s", err.msg);
    if ((s->ctx = session_ctx(cmd, a, c)) == 0) return EXIT_USAGE;
    const CliPenalties *pe = &a->penalties;
    s->lp.p = logits_params_default();
    s->lp.p.min_p = (float)pe->min_p, s->lp.p.repeat_penalty = (float)pe->repeat_penalty;
    s->lp.p.penalty_last_n = (int)pe->repeat_last_n, s->lp.p.presence_penalty = (float)pe->presence_penalty;
    s->lp.p.frequency_penalty = (float)pe->frequency_penalty;
    if (logits_params_check(&s->lp.p, s->l.n_sample, &err)) return cli_fail(cmd, EXIT_USAGE, "%s", err.msg);
    if ((s->lp_on = !logits_params_off(&s->lp.p))) {
        s->lp.cap = s->ctx + 1;
        if (!(s->lp.work = xcalloc((size_t)s->lp.cap, sizeof *s->lp.work))) return cli_fail(cmd, EXIT_RUNTIME, "out of memory");
    }
    if (a->backend.gpu && a->model.attn != ATTN_ABSORB) return cli_fail(cmd, EXIT_USAGE, "--backend fast runs the absorbed attention only");
    GpuEngineOptions go = session_gpu(a, s->ctx, ep);
    if ((rc = cli_load_backend(cmd, &s->l, a->backend.gpu ? &go : NULL, ep))) return rc;
    if (s->l.gpu) fprintf(stderr, "dsv3: --backend fast on %s\n", gpu_engine_describe(s->l.gpu));
    else if (s->l.ep_rank) fprintf(stderr, "dsv3: routed experts over %d processes (TCP)\n", ep->env.world_size);
    if (a->routing_stats && (a->backend.gpu || routing_counter_init(&s->routing, c, s->l.m.w.n_mtp, s->l.ep_rank ? &s->l.ep_rank->hook : NULL, &err)))
        return cli_fail(cmd, EXIT_USAGE, "--routing-stats: %s", a->backend.gpu ? "counts the reference's MoE layers: drop --backend fast" : err.msg);
    snprintf(s->settings, sizeof s->settings, "context %ld, temp %g top-k %ld top-p %g seed %llu, speculative %s, %d thread%s",
             s->ctx, sp->temp, sp->top_k, sp->top_p, (unsigned long long)s->seed,
             a->spec ? (a->draft > 1 ? "MTP multi-draft" : "MTP") : "off", threads_get(), threads_get() == 1 ? "" : "s");
    return EXIT_OK;
}

/** The hook the session's MoE layers go through: the routing counter, the EP group, or none. */
static MoeHook *session_hook(Session *s) {
    return s->routing.scratch ? &s->routing.hook : s->l.ep_rank ? &s->l.ep_rank->hook : NULL;
}

/** Writes --routing-stats at the end of a successful run, then frees the session. */
static int session_finish(const char *cmd, const GenArgs *a, Session *s, int rc) {
    Err err = { "" };
    if (rc == EXIT_OK && a->routing_stats && routing_stats_write(&s->routing.stats, a->routing_stats, &err))
        rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    session_free(s);
    return rc;
}

/** session_load, then the generator of one sequence on the chosen backend. */
static int session_open(const char *cmd, const GenArgs *a, Session *s, CliEp *ep) {
    int rc = session_load(cmd, a, s, ep);
    if (rc) return rc;
    Err err = { "" };
    if (gen_init(&s->g, &s->l.m, &s->sampler, s->ctx, a->spec ? (int)a->draft : 0, a->chunk, (AttnMode)a->model.attn,
                 (Fp8Mode)a->model.fp8, &err) ||
        (s->l.gpu && gen_use_gpu(&s->g, s->l.gpu, &err)))
        return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    gen_set_moe_hook(&s->g, session_hook(s));
    if (s->lp_on) gen_set_logits_hook(&s->g, logits_process_hook, &s->lp);
    gen_limit_vocab(&s->g, s->l.n_sample);
    decode_stream_init(&s->ds, s->l.tok);
    return EXIT_OK;
}

/** How a reply's reasoning is shown: --reasoning hide, else dimmed on a terminal, as written elsewhere. */
static ReasoningMode reasoning_mode(const GenArgs *a) {
    return a->hide_reasoning ? REASONING_HIDE : isatty(1) ? REASONING_SHOW_DIM : REASONING_SHOW_TAGS;
}

/**
 * Generates until EOS, a --stop string, @p limit tokens (-1: until the context is full) or an
 * error, streaming text to stdout (reply.h). Returns 0 with *how set.
 */
static int stream_reply(const char *cmd, Session *s, long limit, ReplyEnd *how) {
    Err err = { "" };
    if (reply_stream(&s->g, &s->ds, s->eos, limit, &s->stop, &s->reasoning, stdout, NULL, NULL, how, &err))
        return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    if (*how == REPLY_CONTEXT_FULL) fprintf(stderr, "\n[context full]\n");
    return EXIT_OK;
}

/** Statistics on stderr: tokens, speeds, KV cache, memory, speculation. */
static void print_stats(const Session *s, int64_t prompt_tokens) {
    const GenStats *st = &s->g.stats;
    const Config *c = &s->l.m.config;
    int64_t per_token = kvcache_floats_per_token(c, s->g.kv.mode) * (int64_t)sizeof(float) * c->num_hidden_layers;
    fprintf(stderr, "\n[%s]\n[prompt %lld tokens, prefill %.1f tokens/s | generated %lld tokens, decode %.1f tokens/s |"
                    " KV cache %lld tokens x %lld B = %.2f MiB | peak RSS %.1f MiB",
            s->settings, (long long)prompt_tokens, st->prefill_seconds > 0 ? st->prefilled / st->prefill_seconds : 0.0,
            (long long)st->generated, st->decode_seconds > 0 ? st->generated / st->decode_seconds : 0.0,
            (long long)s->g.kv.len, (long long)per_token, (double)(s->g.kv.len * per_token) / 1048576.0,
            (double)peak_rss_bytes() / 1048576.0);
    if (s->g.draft > 0 && st->drafted > 0)
        fprintf(stderr, " | MTP drafts accepted %lld/%lld = %.1f%%", (long long)st->accepted, (long long)st->drafted,
                100.0 * st->accepted / st->drafted);
    fprintf(stderr, "]\n");
}

/** --verbose-prompt: the ids of a prompt and the text of each, one per line on stderr, as llama.cpp prints them. */
static int print_prompt_tokens(const char *cmd, const Tokenizer *tok, const int *ids, size_t n, int index) {
    if (index < 0) fprintf(stderr, "dsv3 %s: prompt: %zu tokens\n", cmd, n);
    else fprintf(stderr, "dsv3 %s: prompt %d: %zu tokens\n", cmd, index, n);
    for (size_t i = 0; i < n; i++) {
        char *text = NULL;
        size_t len = 0;
        Err err = { "" };
        if (tokenizer_decode(tok, ids + i, 1, &text, &len, &err)) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        fprintf(stderr, "%8d -> '", ids[i]);
        for (size_t j = 0; j < len; j++) {
            unsigned char ch = (unsigned char)text[j];
            if (ch == '\n') fputs("\\n", stderr);
            else if (ch == '\t') fputs("\\t", stderr);
            else if (ch == '\r') fputs("\\r", stderr);
            else if (ch < 0x20 || ch == 0x7f) fprintf(stderr, "\\x%02x", ch);
            else fputc(ch, stderr);
        }
        fputs("'\n", stderr);
        free(text);
    }
    return EXIT_OK;
}

/** The text of one --batch request as it is generated: decoded and cut at a --stop string. */
typedef struct {
    DecodeStream ds;
    StopMatcher stop;
    ByteBuf text;   /* what the request has produced so far (without a held stop-string start) */
    int stopped;    /* a stop string ended it */
} BatchText;

/** Where --batch's results go: one JSON line each, as they finish. */
typedef struct {
    const Tokenizer *tok;
    const BatchRequest *reqs;
    BatchText *texts; /* [n] with --stop; NULL without */
} BatchOut;

/** BatchOptions.on_token with --stop: decodes @p token of request @p i; 1 when a stop string completed. */
static int batch_token(void *ctx, int i, int token, Err *err) {
    BatchOut *o = ctx;
    BatchText *t = &o->texts[i];
    const char *piece;
    size_t len;
    if (decode_stream_step(&t->ds, token, &piece, &len, err)) return -1;
    int hit = stop_feed(&t->stop, piece, len, &piece, &len);
    if (hit < 0 || bytebuf_append(&t->text, piece, len)) return err_set(err, "out of memory");
    return t->stopped = hit;
}

/** The finished text of a request with --stop (what stream_reply would have printed). */
static int batch_text_end(BatchText *t, Err *err) {
    const char *piece;
    size_t len;
    if (decode_stream_flush(&t->ds, &piece, &len, err)) return -1;
    if (t->stopped) return 0;
    if (stop_feed(&t->stop, piece, len, &piece, &len) < 0 || bytebuf_append(&t->text, piece, len)) return err_set(err, "out of memory");
    stop_flush(&t->stop, &piece, &len);
    return bytebuf_append(&t->text, piece, len) ? err_set(err, "out of memory") : 0;
}

static int batch_line(void *ctx, int i, const int *tokens, int64_t n, int eos, Err *err) {
    const BatchOut *o = ctx;
    char *text = NULL, *line = NULL;
    size_t len = 0;
    int stopped = 0;
    if (o->texts) {
        BatchText *t = &o->texts[i];
        if (batch_text_end(t, err)) return -1;
        stopped = t->stopped;
        text = t->text.data, t->text = (ByteBuf){ 0 }; /* taken over */
        decode_stream_free(&t->ds);
        stop_free(&t->stop);
    } else if (tokenizer_decode(o->tok, tokens, (int)n, &text, &len, err)) {
        return -1;
    }
    cJSON *j = cJSON_CreateObject();
    if (j && cJSON_AddNumberToObject(j, "index", i) && cJSON_AddStringToObject(j, "text", text ? text : "") &&
        cJSON_AddStringToObject(j, "finish_reason", eos || stopped ? "stop" : "length") &&
        cJSON_AddNumberToObject(j, "prompt_tokens", (double)o->reqs[i].n_prompt) &&
        cJSON_AddNumberToObject(j, "completion_tokens", (double)n))
        line = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    free(text);
    if (!line) return err_set(err, "out of memory writing result %d", i);
    int bad = printf("%s\n", line) < 0 || fflush(stdout) != 0;
    free(line);
    return bad ? err_set(err, "cannot write to stdout") : 0;
}

/** --batch FILE: every non-blank line a prompt, completed together (ref/generate/batch.h). */
static int run_batch(const char *cmd, const GenArgs *a, const char *text, size_t len, CliEp *ep) {
    Session s;
    int rc = session_load(cmd, a, &s, ep);
    IntVec ids = { 0 };
    size_t *start = NULL; /* where each prompt's ids begin in ids, then the end */
    BatchRequest *reqs = NULL;
    BatchText *texts = NULL;
    int n = 0;
    Err err = { "" };
    for (size_t at = 0; rc == EXIT_OK && at < len;) {
        const char *nl = memchr(text + at, '\n', len - at);
        size_t end = nl ? (size_t)(nl - text) : len, stop = end;
        while (stop > at && (text[stop - 1] == '\r' || text[stop - 1] == ' ' || text[stop - 1] == '\t')) stop--;
        if (stop > at) {
            size_t *ns = realloc(start, ((size_t)n + 2) * sizeof *start);
            if (!ns) rc = cli_fail(cmd, EXIT_RUNTIME, "out of memory");
            else {
                start = ns, start[n++] = ids.n;
                int bos = tokenizer_bos_id(s.l.tok);
                if ((!a->no_bos && bos >= 0 && intvec_push(&ids, bos)) || tokenizer_encode_append(s.l.tok, text + at, stop - at, &ids, &err))
                    rc = cli_fail(cmd, EXIT_RUNTIME, "%s: prompt %d: %s", a->batch_file, n - 1, err.msg[0] ? err.msg : "out of memory");
            }
        }
        at = end + 1;
    }
    if (rc == EXIT_OK && n == 0) rc = cli_fail(cmd, EXIT_USAGE, "%s has no prompts (one per line)", a->batch_file);
    if (rc == EXIT_OK && !(reqs = xcalloc((size_t)n, sizeof *reqs))) rc = cli_fail(cmd, EXIT_RUNTIME, "out of memory");
    if (rc == EXIT_OK && a->n_stops && !(texts = xcalloc((size_t)n, sizeof *texts))) rc = cli_fail(cmd, EXIT_RUNTIME, "out of memory");
    if (rc == EXIT_OK) start[n] = ids.n;
    for (int i = 0; rc == EXIT_OK && a->verbose_prompt && i < n; i++)
        rc = print_prompt_tokens(cmd, s.l.tok, ids.v + start[i], start[i + 1] - start[i], i);
    if (rc == EXIT_OK) {
        for (int i = 0; i < n; i++) {
            reqs[i] = (BatchRequest){ ids.v + start[i], (int64_t)(start[i + 1] - start[i]), a->n_predict, s.seed + (uint64_t)i };
            if (texts) decode_stream_init(&texts[i].ds, s.l.tok), stop_init(&texts[i].stop, a->stops, a->n_stops);
        }
        BatchOut out = { s.l.tok, reqs, texts };
        const CliSampling *sp = &a->sampling;
        BatchOptions o = { (int)a->parallel, batch_max_T(a), s.ctx, (float)sp->temp, (int)sp->top_k, (float)sp->top_p, s.l.n_sample,
                           s.eos, (AttnMode)a->model.attn, (Fp8Mode)a->model.fp8, session_hook(&s),
                           texts ? batch_token : NULL, &out, s.lp_on ? logits_process_hook : NULL, &s.lp };
        BatchStats st;
        if (batch_generate(&s.l.m, s.l.gpu, &o, reqs, n, batch_line, &out, &st, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        else
            fprintf(stderr, "[%s]\n[%d prompts, %lld prompt tokens, %lld generated in %lld steps (up to %d sequences at once)"
                            " in %.2f s: %.1f tokens/s generated, %.1f tokens/s in all]\n",
                    s.settings, n, (long long)st.prompt_tokens, (long long)st.generated, (long long)st.steps, st.max_open,
                    st.seconds, st.generated / (st.seconds + 1e-9), (st.prompt_tokens + st.generated) / (st.seconds + 1e-9));
    }
    for (int i = 0; texts && i < n; i++) /* requests an error left unfinished */
        decode_stream_free(&texts[i].ds), stop_free(&texts[i].stop), bytebuf_free(&texts[i].text);
    free(texts), free(reqs), free(start), free(ids.v);
    return session_finish(cmd, a, &s, rc);
}

/** generate once its flags are parsed. */
static int generate(const char *cmd, GenArgs *a, int argc, char **argv) {
    char *file_text = NULL;
    size_t file_len = 0;
    Err err = { "" };
    const char *in_file = a->batch_file ? a->batch_file : a->prompt_file;
    if (in_file && read_file(in_file, 64u << 20, &file_text, &file_len, &err))
        return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    const char *text = a->prompt ? a->prompt : file_text;
    size_t len = a->prompt ? strlen(a->prompt) : file_len;
    if (!utf8_valid(text, len)) {
        free(file_text);
        return cli_fail(cmd, a->prompt ? EXIT_USAGE : EXIT_RUNTIME, "the prompt%s%s is not valid UTF-8", in_file ? " in " : "",
                        in_file ? in_file : "");
    }
    cli_threads_apply(&a->threads);
    CliEp ep;
    int rc;
    if ((rc = cli_ep_launch(&ep, cmd, &a->ep, argc, argv)) || cli_ep_is_server(&ep)) {
        free(file_text);
        return cli_ep_finish(&ep, cmd, rc ? rc : serve_session(cmd, a, &ep));
    }
    if (a->batch_file) {
        rc = run_batch(cmd, a, text, len, &ep);
        free(file_text);
        return cli_ep_finish(&ep, cmd, rc);
    }
    Session s;
    rc = session_open(cmd, a, &s, &ep);
    IntVec ids = { 0 };
    if (rc == EXIT_OK) {
        int bos = tokenizer_bos_id(s.l.tok);
        if (!a->no_bos && bos >= 0) intvec_push(&ids, bos);
        if (tokenizer_encode_append(s.l.tok, text, len, &ids, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        else if ((int64_t)ids.n >= s.g.ctx)
            rc = cli_fail(cmd, EXIT_USAGE, "the prompt is %zu tokens but the context holds %lld (-c)", ids.n,
                          (long long)s.g.ctx);
        else if (a->verbose_prompt)
            rc = print_prompt_tokens(cmd, s.l.tok, ids.v, ids.n, -1);
    }
    if (rc == EXIT_OK) {
        if (gen_feed(&s.g, ids.v, (int64_t)ids.n, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        else {
            ReplyEnd how;
            if (a->display_prompt) fwrite(text, 1, len, stdout);
            chat_reasoning_init(&s.reasoning, reasoning_mode(a), chat_text_opens_reasoning(text, len));
            rc = stream_reply(cmd, &s, a->n_predict, &how);
            if (rc == EXIT_OK) printf("\n"), print_stats(&s, (int64_t)ids.n);
        }
    }
    free(ids.v);
    free(file_text);
    return cli_ep_finish(&ep, cmd, session_finish(cmd, a, &s, rc));
}

/** Parses the flags of @p cmd and, when they are valid, runs @p body with them. */
static int with_args(const char *cmd, int argc, char **argv, int (*body)(const char *, GenArgs *, int, char **)) {
    GenArgs a;
    CliCmd c;
    int rc = parse_args(cmd, argc, argv, &a, &c);
    if (rc == CLI_RUN) rc = body(cmd, &a, argc, argv);
    gen_args_free(&a, &c);
    return rc;
}

int cmd_generate(int argc, char **argv) { return with_args("generate", argc, argv, generate); }

/** chat once its flags are parsed. */
static int chat(const char *cmd, GenArgs *a, int argc, char **argv) {
    if (a->system && !utf8_valid(a->system, strlen(a->system))) return cli_fail(cmd, EXIT_USAGE, "-sys is not valid UTF-8");
    cli_threads_apply(&a->threads);
    CliEp ep;
    int rc;
    if ((rc = cli_ep_launch(&ep, cmd, &a->ep, argc, argv)) || cli_ep_is_server(&ep))
        return cli_ep_finish(&ep, cmd, rc ? rc : serve_session(cmd, a, &ep));
    Session s;
    rc = session_open(cmd, a, &s, &ep);
    /* The template (--chat-template, or recognized from tokenizer_config.json); a reply ends at its end of turn. */
    ChatTemplate tpl;
    Err terr = { "" };
    if (rc == EXIT_OK && (chat_template_select(&tpl, s.l.tok, a->chat_template, a->think > 0, &terr) ||
                          chat_template_check(&tpl, s.l.tok, &terr)))
        rc = cli_fail(cmd, EXIT_USAGE, "%s", terr.msg);
    if (rc == EXIT_OK) {
        int eot = tokenizer_token_id(s.l.tok, chat_template_end_of_turn(&tpl));
        if (eot >= 0) s.eos = eot;
        if (a->think >= 0 && !chat_template_has_think_switch(&tpl))
            fprintf(stderr, "dsv3 chat: --think has no effect with the %s template\n", chat_template_name(tpl.kind));
        fprintf(stderr, "dsv3 chat: %s chat template%s\n", chat_template_name(tpl.kind),
                chat_template_has_think_switch(&tpl) ? (tpl.think ? ", thinking" : ", not thinking") : "");
    }
    int turns = 0;
    if (rc == EXIT_OK) {
        ChatRepl r = { s.l.tok, &s.g, &s.ds, s.eos, a->n_predict, a->system, &s.stop, &tpl, &s.reasoning, reasoning_mode(a) };
        rc = chat_repl(cmd, &r, &turns); /* chat_repl.c: the loop, its commands, context shift */
    }
    if (rc == EXIT_OK && turns > 0) print_stats(&s, s.g.stats.prefilled);
    return cli_ep_finish(&ep, cmd, session_finish(cmd, a, &s, rc));
}

int cmd_chat(int argc, char **argv) { return with_args("chat", argc, argv, chat); }
