/**
 * @file cmd_generate.c
 * @brief `dsv3 generate` (complete a prompt) and `dsv3 chat` (interactive multi-turn chat
 *        that keeps its KV cache across turns). Flags follow llama.cpp's names.
 *
 *   dsv3 generate -m MODEL_DIR [--tokenizer DIR] (-p PROMPT | -f FILE) [-n N] [--temp T]
 *                 [--top-p P] [--top-k K] [--seed S] [-c CTX] [--spec mtp|none] [--draft N]
 *   dsv3 chat     -m MODEL_DIR [--tokenizer DIR] [-sys SYSTEM] [same sampling flags]
 *
 * Text streams to stdout as it is produced (never half a UTF-8 character); statistics go to
 * stderr. Speculative decoding with the checkpoint's MTP module (--spec mtp) never changes the
 * output's distribution, and with --temp 0 not even a token. It is off by default: on a CPU a
 * small model's decode step is compute-bound, so the MTP pass and the 2-token verification cost
 * more than the accepted drafts save (bundled model: 1.6 tokens per main-model step at 58–75 %
 * acceptance, yet 0.76× the plain tokens/s; docs/benchmarks.md). It pays where decode is
 * memory-bound, i.e. large models on GPUs.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "cli.h"
#include "cli_ep.h"
#include "cli_util.h"
#include "generate.h"
#include "tokenizer.h"

/** Flags shared by generate and chat. */
typedef struct {
    const char *model, *tokenizer, *prompt, *prompt_file, *system;
    long n_predict, ctx, top_k, draft, seed, chunk;
    double temp, top_p;
    int spec, have_seed, no_bos, seed_given;
    AttnMode attn;
    Fp8Mode fp8;
    int fp8_given;  /* --fp8 on the command line (the GPU backend defaults to w8a8) */
    int gpu;        /* --backend fast */
    int kv_bf16;    /* --kv-cache: -1 auto, 0 f32, 1 bf16 */
    CliEpFlags ep;  /* --ep N, --ep-transport */
} GenArgs;

static void usage(FILE *f, const char *cmd) {
    if (!strcmp(cmd, "generate"))
        fprintf(f, "usage: dsv3 generate -m MODEL_DIR (-p PROMPT | -f FILE) [options]\n"
                   "  -p, --prompt TEXT     prompt text (a BOS token is prepended; --no-bos to skip)\n"
                   "  -f, --file PATH       read the prompt from a file\n");
    else
        fprintf(f, "usage: dsv3 chat -m MODEL_DIR [options]   (type your message, empty line or /exit to quit)\n"
                   "  -sys, --system TEXT   system prompt\n");
    fprintf(f, "  -m, --model DIR       checkpoint directory\n"
               "  --tokenizer DIR       tokenizer.json location (default: the model directory)\n"
               "  -n, --n-predict N     tokens to generate, -1 = until EOS or the context is full (default 256)\n"
               "  -c, --ctx-size N      context length in tokens (default min(4096, max_position_embeddings))\n"
               "  --temp T              temperature, 0 = greedy (default 0.8)\n"
               "  --top-k K             keep the K most likely tokens, 0 = all (default 40)\n"
               "  --top-p P             nucleus mass in (0, 1] (default 0.95)\n"
               "  -s, --seed S          sampling seed (default: from the clock, printed to stderr)\n"
               "  --spec mtp|none       speculative decoding with the MTP module (default: none; see docs/benchmarks.md)\n"
               "  --draft N             MTP drafts per step, recycling the module's output (default 1)\n"
               "  --attn absorb|naive   MLA form (default absorb)\n"
               "  --fp8 dequant|w8a8    FP8 numerics (default dequant; w8a8 with --backend fast)\n"
               "  --backend ref|fast    the C reference (default) or the whole model on a GPU\n"
               "  --kv-cache auto|f32|bf16  GPU latent cache (auto: bf16 where the tensor-core MLA kernel applies)\n"
               "  --ep N                split the routed experts over N processes (this one and N-1 it starts);\n"
               "                        under torchrun / mpirun the launcher's processes form the group instead\n"
               "  --ep-transport nccl|tcp  --backend fast: NCCL, one GPU per rank (default), or TCP via host memory\n");
}

/** Inside parse_args: takes the current flag's value into v, or fails the parse. */
#define VALUE() if (!(v = cli_value(cmd, argc, argv, &i))) return -1

/** Parses the flags of @p cmd; returns -1 (message printed) on an invalid one, 1 for --help. */
static int parse_args(const char *cmd, int argc, char **argv, GenArgs *a) {
    memset(a, 0, sizeof *a);
    a->n_predict = 256, a->ctx = 0, a->top_k = 40, a->draft = 1, a->chunk = 256;
    a->temp = 0.8, a->top_p = 0.95, a->spec = 0, a->kv_bf16 = -1;
    int is_chat = !strcmp(cmd, "chat");
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v;
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout, cmd);
            return 1;
        }
        if (!strcmp(f, "-m") || !strcmp(f, "--model")) { VALUE(); a->model = v; }
        else if (!strcmp(f, "--tokenizer")) { VALUE(); a->tokenizer = v; }
        else if (!is_chat && (!strcmp(f, "-p") || !strcmp(f, "--prompt"))) { VALUE(); a->prompt = v; }
        else if (!is_chat && (!strcmp(f, "-f") || !strcmp(f, "--file"))) { VALUE(); a->prompt_file = v; }
        else if (!is_chat && !strcmp(f, "--no-bos")) a->no_bos = 1;
        else if (is_chat && (!strcmp(f, "-sys") || !strcmp(f, "--system"))) { VALUE(); a->system = v; }
        else if (!strcmp(f, "-n") || !strcmp(f, "--n-predict")) { VALUE(); if (cli_long(cmd, f, v, -1, 1L << 30, &a->n_predict)) return -1; }
        else if (!strcmp(f, "-c") || !strcmp(f, "--ctx-size")) { VALUE(); if (cli_long(cmd, f, v, 1, 1L << 30, &a->ctx)) return -1; }
        else if (!strcmp(f, "--temp")) { VALUE(); if (cli_double(cmd, f, v, 0.0, 100.0, &a->temp)) return -1; }
        else if (!strcmp(f, "--top-k")) { VALUE(); if (cli_long(cmd, f, v, 0, 1L << 30, &a->top_k)) return -1; }
        else if (!strcmp(f, "--top-p")) {
            VALUE();
            if (cli_double(cmd, f, v, 0.0, 1.0, &a->top_p)) return -1;
            if (a->top_p <= 0.0) return cli_fail(cmd, EXIT_USAGE, "--top-p must be in (0, 1], got %s", v), -1;
        }
        else if (!strcmp(f, "-s") || !strcmp(f, "--seed")) { VALUE(); if (cli_long(cmd, f, v, 0, 0x7fffffffL, &a->seed)) return -1; a->seed_given = 1; }
        else if (!strcmp(f, "--draft")) { VALUE(); if (cli_long(cmd, f, v, 1, 16, &a->draft)) return -1; }
        else if (!strcmp(f, "--spec")) {
            VALUE();
            if (!strcmp(v, "mtp")) a->spec = 1;
            else if (!strcmp(v, "none")) a->spec = 0;
            else return cli_fail(cmd, EXIT_USAGE, "--spec must be mtp or none, got '%s'", v), -1;
        }
        else if (!strcmp(f, "--attn")) {
            VALUE();
            if (!strcmp(v, "absorb")) a->attn = ATTN_ABSORB;
            else if (!strcmp(v, "naive")) a->attn = ATTN_NAIVE;
            else return cli_fail(cmd, EXIT_USAGE, "--attn must be absorb or naive, got '%s'", v), -1;
        }
        else if (!strcmp(f, "--fp8")) {
            VALUE();
            if (!strcmp(v, "dequant")) a->fp8 = FP8_DEQUANT;
            else if (!strcmp(v, "w8a8")) a->fp8 = FP8_W8A8;
            else return cli_fail(cmd, EXIT_USAGE, "--fp8 must be dequant or w8a8, got '%s'", v), -1;
            a->fp8_given = 1;
        }
        else {
            int r = cli_gpu_flag(cmd, argc, argv, &i, &a->gpu, &a->kv_bf16);
            if (r == 0) r = cli_ep_flag(cmd, argc, argv, &i, &a->ep);
            if (r < 0) return -1;
            if (r == 0) return cli_fail(cmd, EXIT_USAGE, "unknown option '%s' (dsv3 %s --help)", f, cmd), -1;
        }
    }
    if (!a->model) return cli_fail(cmd, EXIT_USAGE, "-m MODEL_DIR is required (dsv3 %s --help)", cmd), -1;
    if (!is_chat && !!a->prompt == !!a->prompt_file)
        return cli_fail(cmd, EXIT_USAGE, "give exactly one of -p PROMPT or -f FILE"), -1;
    return 0;
}
#undef VALUE

/** Everything a session needs, loaded from the flags. */
typedef struct {
    Model m;
    Tokenizer *tok;
    Sampler sampler;
    Generator g;
    GpuEngine *gpu; /* --backend fast */
    DecodeStream ds;
    int eos;
    int loaded_model;
    char settings[256]; /* printed with the statistics, so a run can be repeated (seed) */
} Session;

static void session_free(Session *s) {
    gen_free(&s->g);
    gpu_engine_close(s->gpu);
    decode_stream_free(&s->ds);
    tokenizer_free(s->tok);
    if (s->loaded_model) model_free(&s->m);
}

/** Positions of the session: -c, else the model's limit capped at 4096; 0 (error printed) if -c is too large. */
static long session_ctx(const char *cmd, const GenArgs *a, const Config *c) {
    long ctx = a->ctx ? a->ctx : (c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096);
    if (ctx > c->max_position_embeddings)
        return cli_fail(cmd, EXIT_USAGE, "-c %ld exceeds max_position_embeddings = %d", ctx, c->max_position_embeddings), 0;
    return ctx;
}

/** The GPU engine of a session, the same on every rank of a group (the experts' buffers depend on max_T). */
static GpuEngineOptions session_gpu(const GenArgs *a, long ctx, const CliEp *ep) {
    int draft = a->spec ? (int)a->draft : 0;
    return (GpuEngineOptions){ a->fp8_given ? a->fp8 : FP8_W8A8, a->kv_bf16, gen_max_T(a->chunk, draft, ctx), ctx, a->spec,
                               cli_ep_gpu_env(ep), ep->tcp, ep->timeout_s };
}

/** Ranks 1.. of a group: load the checkpoint and serve its experts until rank 0 is done. */
static int serve_session(const char *cmd, const GenArgs *a, CliEp *ep) {
    Err err = { "" };
    Model m;
    if (model_load(&m, a->model, NULL, &err)) return cli_fail(cmd, EXIT_RUNTIME, "rank %d: %s", ep->env.rank, err.msg);
    long ctx = session_ctx(cmd, a, &m.config);
    int rc = EXIT_USAGE;
    if (ctx > 0) {
        GpuEngineOptions go = session_gpu(a, ctx, ep);
        rc = cli_ep_serve(ep, cmd, &m, a->gpu ? &go : NULL, a->fp8);
    }
    model_free(&m);
    return rc;
}

static int session_open(const char *cmd, const GenArgs *a, Session *s, CliEp *ep) {
    memset(s, 0, sizeof *s);
    Err err = { "" };
    if (isatty(2)) fprintf(stderr, "dsv3: loading %s ...\n", a->model);
    if (model_load(&s->m, a->model, stderr, &err)) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    s->loaded_model = 1;
    const Config *c = &s->m.config;
    if (tokenizer_load(&s->tok, a->tokenizer ? a->tokenizer : a->model, &err))
        return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    int tv = tokenizer_vocab_size(s->tok);
    if (tv > c->vocab_size)
        return cli_fail(cmd, EXIT_RUNTIME, "the tokenizer has %d ids but the model only %d (vocab_size)", tv, c->vocab_size);
    s->eos = tokenizer_eos_id(s->tok);
    if (s->eos < 0) s->eos = c->eos_token_id;
    uint64_t seed = a->seed_given ? (uint64_t)a->seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (sampler_init(&s->sampler, (float)a->temp, (int)a->top_k, (float)a->top_p, seed, &err))
        return cli_fail(cmd, EXIT_USAGE, "%s", err.msg);
    const int spec = a->spec;
    if (spec && s->m.w.n_mtp == 0)
        return cli_fail(cmd, EXIT_USAGE, "--spec mtp: %s has no MTP module", a->model);
    long ctx = session_ctx(cmd, a, c);
    if (ctx == 0) return EXIT_USAGE;
    if (a->gpu && a->attn != ATTN_ABSORB) return cli_fail(cmd, EXIT_USAGE, "--backend fast runs the absorbed attention only");
    if (gen_init(&s->g, &s->m, &s->sampler, ctx, spec ? (int)a->draft : 0, a->chunk, a->attn, a->fp8, &err))
        return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    if (a->gpu) {
        GpuEngineOptions go = session_gpu(a, ctx, ep);
        if (cli_ep_start(ep, &s->m, &err) || gpu_engine_open(&s->gpu, &s->m, &go, stderr, &err) ||
            gen_use_gpu(&s->g, s->gpu, &err))
            return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        fprintf(stderr, "dsv3: --backend fast on %s\n", gpu_engine_describe(s->gpu));
    } else if (cli_ep_gpu_env(ep)) {
        EpRank *r = cli_ep_join_ref(ep, &s->m, &err);
        if (!r) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        gen_set_ep(&s->g, r);
        fprintf(stderr, "dsv3: routed experts over %d processes (TCP)\n", ep->env.world_size);
    }
    gen_limit_vocab(&s->g, tv);
    decode_stream_init(&s->ds, s->tok);
    snprintf(s->settings, sizeof s->settings, "context %ld, temp %g top-k %ld top-p %g seed %llu, speculative %s", ctx,
             a->temp, a->top_k, a->top_p, (unsigned long long)seed, spec ? (a->draft > 1 ? "MTP multi-draft" : "MTP") : "off");
    return EXIT_OK;
}

/**
 * Generates until EOS, @p limit tokens (-1: until the context is full) or an error, streaming
 * text to stdout. Returns 0, with *ended_eos set when the reply ended with EOS.
 */
static int stream_reply(const char *cmd, Session *s, long limit, int *ended_eos) {
    Err err = { "" };
    int out[17], k;
    long produced = 0;
    *ended_eos = 0;
    while (limit < 0 || produced < limit) {
        if (gen_room(&s->g) < 1) {
            fprintf(stderr, "\n[context full]\n");
            break;
        }
        if (gen_next(&s->g, out, &k, &err)) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        int used = 0;
        for (int i = 0; i < k && (limit < 0 || produced < limit); i++) {
            produced++;
            used++;
            if (out[i] == s->eos) {
                *ended_eos = 1;
                break;
            }
            const char *text;
            size_t len;
            if (decode_stream_step(&s->ds, out[i], &text, &len, &err)) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
            fwrite(text, 1, len, stdout);
        }
        /* A speculative step may return tokens past the EOS or the limit: they never happened. */
        if (used < k && gen_keep(&s->g, used, &err)) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        fflush(stdout);
        if (*ended_eos) break;
    }
    const char *text;
    size_t len;
    if (decode_stream_flush(&s->ds, &text, &len, &err) == 0) fwrite(text, 1, len, stdout);
    fflush(stdout);
    return EXIT_OK;
}

/** Statistics on stderr: tokens, speeds, KV cache, memory, speculation. */
static void print_stats(const Session *s, int64_t prompt_tokens) {
    const GenStats *st = &s->g.stats;
    const Config *c = &s->m.config;
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

int cmd_generate(int argc, char **argv) {
    const char *cmd = "generate";
    GenArgs a;
    int rc = parse_args(cmd, argc, argv, &a);
    if (rc) return rc > 0 ? EXIT_OK : EXIT_USAGE;
    char *file_text = NULL;
    size_t file_len = 0;
    Err err = { "" };
    if (a.prompt_file && read_file(a.prompt_file, 64u << 20, &file_text, &file_len, &err))
        return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    const char *text = a.prompt ? a.prompt : file_text;
    size_t len = a.prompt ? strlen(a.prompt) : file_len;
    if (!utf8_valid(text, len)) {
        free(file_text);
        return cli_fail(cmd, a.prompt ? EXIT_USAGE : EXIT_RUNTIME, "the prompt%s%s is not valid UTF-8",
                        a.prompt_file ? " in " : "", a.prompt_file ? a.prompt_file : "");
    }
    CliEp ep;
    if ((rc = cli_ep_launch(&ep, cmd, &a.ep, argc, argv)) || cli_ep_is_server(&ep)) {
        free(file_text);
        return cli_ep_finish(&ep, cmd, rc ? rc : serve_session(cmd, &a, &ep));
    }
    Session s;
    rc = session_open(cmd, &a, &s, &ep);
    IntVec ids = { 0 };
    if (rc == EXIT_OK) {
        int bos = tokenizer_bos_id(s.tok);
        if (!a.no_bos && bos >= 0) intvec_push(&ids, bos);
        if (tokenizer_encode_append(s.tok, text, len, &ids, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        else if ((int64_t)ids.n >= s.g.ctx)
            rc = cli_fail(cmd, EXIT_USAGE, "the prompt is %zu tokens but the context holds %lld (-c)", ids.n,
                          (long long)s.g.ctx);
        else if (gen_feed(&s.g, ids.v, (int64_t)ids.n, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        else {
            int ended;
            rc = stream_reply(cmd, &s, a.n_predict, &ended);
            printf("\n");
            print_stats(&s, (int64_t)ids.n);
        }
    }
    free(ids.v);
    free(file_text);
    session_free(&s);
    return cli_ep_finish(&ep, cmd, rc);
}

/** Reads one line from stdin into *buf (without the newline); 0 at EOF. */
static int read_line(char **buf, size_t *cap) {
    ssize_t n = getline(buf, cap, stdin);
    if (n < 0) return 0;
    while (n > 0 && ((*buf)[n - 1] == '\n' || (*buf)[n - 1] == '\r')) (*buf)[--n] = 0;
    return 1;
}

int cmd_chat(int argc, char **argv) {
    const char *cmd = "chat";
    GenArgs a;
    int rc = parse_args(cmd, argc, argv, &a);
    if (rc) return rc > 0 ? EXIT_OK : EXIT_USAGE;
    if (a.system && !utf8_valid(a.system, strlen(a.system))) return cli_fail(cmd, EXIT_USAGE, "-sys is not valid UTF-8");
    CliEp ep;
    if ((rc = cli_ep_launch(&ep, cmd, &a.ep, argc, argv)) || cli_ep_is_server(&ep))
        return cli_ep_finish(&ep, cmd, rc ? rc : serve_session(cmd, &a, &ep));
    Session s;
    rc = session_open(cmd, &a, &s, &ep);
    char *line = NULL;
    size_t cap = 0;
    int turn = 0, ended_eos = 1, interactive = isatty(0);
    Err err = { "" };
    while (rc == EXIT_OK) {
        if (interactive) fprintf(stdout, "\n> "), fflush(stdout);
        if (!read_line(&line, &cap) || !strcmp(line, "/exit") || !strcmp(line, "/quit") || (!line[0] && interactive)) break;
        if (!line[0]) continue;
        if (!utf8_valid(line, strlen(line))) {
            fprintf(stderr, "dsv3 chat: that message is not valid UTF-8; try again\n");
            continue;
        }
        IntVec ids = { 0 };
        int erc;
        if (turn == 0) {
            ChatMessage msgs[2] = { { "system", a.system }, { "user", line } };
            int *v = NULL, n = 0;
            erc = chat_encode(s.tok, a.system ? msgs : msgs + 1, a.system ? 2 : 1, 1, &v, &n, &err);
            if (!erc) erc = intvec_append(&ids, v, (size_t)n) ? err_set(&err, "out of memory") : 0;
            free(v);
        } else {
            /* The previous reply's last token is pending and gets fed first; if it was not EOS
             * (cut by -n), the turn still has to be closed with one. */
            erc = chat_encode_user_turn(s.tok, line, !ended_eos, 1, &ids, &err);
        }
        if (erc) {
            fprintf(stderr, "dsv3 chat: %s\n", err.msg);
            free(ids.v);
            continue;
        }
        int64_t before = s.g.stats.prefilled;
        double t0 = now_seconds();
        if (gen_feed(&s.g, ids.v, (int64_t)ids.n, &err)) {
            rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
            free(ids.v);
            break;
        }
        double t_prefill = now_seconds() - t0;
        int64_t gen0 = s.g.stats.generated;
        double d0 = s.g.stats.decode_seconds;
        rc = stream_reply(cmd, &s, a.n_predict, &ended_eos);
        printf("\n");
        fflush(stdout);
        int64_t gen = s.g.stats.generated - gen0;
        fprintf(stderr, "[turn %d: prefilled %lld new tokens (%.1f tokens/s), generated %lld (%.1f tokens/s), cache %lld"
                        " positions]\n",
                turn + 1, (long long)(s.g.stats.prefilled - before), (s.g.stats.prefilled - before) / (t_prefill + 1e-9),
                (long long)gen, gen / (s.g.stats.decode_seconds - d0 + 1e-9), (long long)s.g.kv.len);
        free(ids.v);
        turn++;
    }
    if (rc == EXIT_OK && turn > 0) print_stats(&s, s.g.stats.prefilled);
    free(line);
    session_free(&s);
    return cli_ep_finish(&ep, cmd, rc);
}
