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

#include <cjson/cJSON.h>

#include "generate/batch.h"
#include "tokenizer/chat.h"
#include "cli.h"
#include "cli_ep.h"
#include "ep/eplb.h"
#include "cli_util.h"
#include "generate/generate.h"
#include "tokenizer/tokenizer.h"

/** Flags shared by generate and chat. */
typedef struct {
    const char *model, *tokenizer, *prompt, *prompt_file, *system, *batch_file;
    long n_predict, ctx, top_k, draft, seed, chunk, parallel;
    double temp, top_p;
    int spec, have_seed, no_bos, seed_given;
    AttnMode attn;
    Fp8Mode fp8;
    int fp8_given;  /* --fp8 on the command line (the GPU backend defaults to w8a8) */
    int gpu;        /* --backend fast */
    int kv_bf16;    /* --kv-cache: -1 auto, 0 f32, 1 bf16 */
    CliEpFlags ep;  /* --ep N, --ep-transport */
    const char *routing_stats; /* --routing-stats FILE */
} GenArgs;

static void usage(FILE *f, const char *cmd) {
    if (!strcmp(cmd, "generate"))
        fprintf(f, "usage: dsv3 generate -m MODEL_DIR (-p PROMPT | -f FILE | --batch FILE) [options]\n"
                   "  -p, --prompt TEXT     prompt text (a BOS token is prepended; --no-bos to skip)\n"
                   "  -f, --file PATH       read the prompt from a file\n"
                   "  --batch FILE          one prompt per line (blank lines skipped), all completed with continuous\n"
                   "                        batching; one JSON line per prompt on stdout as it finishes; prompt i\n"
                   "                        samples with seed S+i (the same text as generate -p alone with that seed)\n"
                   "  --parallel N          --batch: sequences decoded together (default 8)\n");
    else
        fprintf(f, "usage: dsv3 chat -m MODEL_DIR [options]   (type your message, empty line or /exit to quit)\n"
                   "  -sys, --system TEXT   system prompt\n");
    fprintf(f, "  -m, --model DIR       checkpoint directory\n"
               "  --tokenizer DIR       tokenizer.json location (default: the model directory)\n"
               "  -n, --n-predict N     tokens to generate, -1 = until EOS or the context is full (default 256)\n"
               "  -c, --ctx-size N      context length in tokens (default min(4096, max_position_embeddings))\n"
               "  -b, --batch-size N    tokens per forward: the prefill chunk; with --batch, all sequences' tokens\n"
               "                        of one step (default 256, raised to --parallel)\n"
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
               "  --ep-transport nccl|tcp  --backend fast: NCCL, one GPU per rank (default), or TCP via host memory\n"
               "  --ep-plan PLAN.json   place the experts as an EPLB plan says (dsv3 eplb -o; reference backend)\n"
               "  --routing-stats FILE  write the tokens each routed expert received, per MoE layer (JSON lines)\n");
}

/** Inside parse_args: takes the current flag's value into v, or fails the parse. */
#define VALUE() if (!(v = cli_value(cmd, argc, argv, &i))) return -1

/** Parses the flags of @p cmd; returns -1 (message printed) on an invalid one, 1 for --help. */
static int parse_args(const char *cmd, int argc, char **argv, GenArgs *a) {
    memset(a, 0, sizeof *a);
    a->n_predict = 256, a->ctx = 0, a->top_k = 40, a->draft = 1, a->chunk = 256, a->parallel = 8;
    a->temp = 0.8, a->top_p = 0.95, a->spec = 0, a->kv_bf16 = -1;
    int is_chat = !strcmp(cmd, "chat");
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v;
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout, cmd);
            return 1;
        }
        if (!strcmp(f, "-m") || !strcmp(f, "--model")) { VALUE(); a->model = v; }
        else if (!strcmp(f, "--routing-stats")) { VALUE(); a->routing_stats = v; }
        else if (!strcmp(f, "--tokenizer")) { VALUE(); a->tokenizer = v; }
        else if (!is_chat && (!strcmp(f, "-p") || !strcmp(f, "--prompt"))) { VALUE(); a->prompt = v; }
        else if (!is_chat && (!strcmp(f, "-f") || !strcmp(f, "--file"))) { VALUE(); a->prompt_file = v; }
        else if (!is_chat && !strcmp(f, "--no-bos")) a->no_bos = 1;
        else if (!is_chat && !strcmp(f, "--batch")) { VALUE(); a->batch_file = v; }
        else if (!is_chat && !strcmp(f, "--parallel")) { VALUE(); if (cli_long(cmd, f, v, 1, 4096, &a->parallel)) return -1; }
        else if (!strcmp(f, "-b") || !strcmp(f, "--batch-size")) { VALUE(); if (cli_long(cmd, f, v, 1, 1L << 16, &a->chunk)) return -1; }
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
    if (!is_chat && !!a->prompt + !!a->prompt_file + !!a->batch_file != 1)
        return cli_fail(cmd, EXIT_USAGE, "give exactly one of -p PROMPT, -f FILE or --batch FILE"), -1;
    if (a->batch_file && a->spec) return cli_fail(cmd, EXIT_USAGE, "--batch decodes plainly: no --spec mtp"), -1;
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
    int n_sample;   /* the tokenizer's ids: larger ids are never generated */
    long ctx;       /* positions per sequence */
    uint64_t seed;  /* the sampler's (printed, so a run can be repeated) */
    EpRank *ep_rank; /* the reference's expert-parallel group, when there is one */
    RoutingCounter routing; /* --routing-stats: counts every MoE layer, then runs it through ep_rank or locally */
    char settings[256]; /* printed with the statistics, so a run can be repeated (seed) */
} Session;

static void session_free(Session *s) {
    routing_counter_free(&s->routing);
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

/** Tokens per step of --batch: a prefill chunk, and at least one token for every open sequence. */
static int64_t batch_max_T(const GenArgs *a) { return a->chunk > a->parallel ? a->chunk : a->parallel; }

/** The GPU engine of a session, the same on every rank of a group (the experts' buffers depend on max_T). */
static GpuEngineOptions session_gpu(const GenArgs *a, long ctx, const CliEp *ep) {
    int draft = a->spec ? (int)a->draft : 0;
    int64_t max_T = a->batch_file ? batch_max_T(a) : gen_max_T(a->chunk, draft, ctx);
    return (GpuEngineOptions){ a->fp8_given ? a->fp8 : FP8_W8A8, a->kv_bf16, max_T, ctx, a->spec, cli_ep_gpu_env(ep), ep->tcp,
                               ep->timeout_s, a->batch_file ? (int)a->parallel : 1 };
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

/**
 * What generate, chat and --batch share: the model and tokenizer, the EOS id, the seed and the
 * sampler, the context, and the backend — the GPU engine, or the reference's expert-parallel
 * group when there is one.
 */
static int session_load(const char *cmd, const GenArgs *a, Session *s, CliEp *ep) {
    memset(s, 0, sizeof *s);
    Err err = { "" };
    if (isatty(2)) fprintf(stderr, "dsv3: loading %s ...\n", a->model);
    if (model_load(&s->m, a->model, stderr, &err)) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    s->loaded_model = 1;
    const Config *c = &s->m.config;
    if (tokenizer_load(&s->tok, a->tokenizer ? a->tokenizer : a->model, &err))
        return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    s->n_sample = tokenizer_vocab_size(s->tok);
    if (s->n_sample > c->vocab_size)
        return cli_fail(cmd, EXIT_RUNTIME, "the tokenizer has %d ids but the model only %d (vocab_size)", s->n_sample, c->vocab_size);
    s->eos = tokenizer_eos_id(s->tok);
    if (s->eos < 0) s->eos = c->eos_token_id;
    s->seed = a->seed_given ? (uint64_t)a->seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (sampler_init(&s->sampler, (float)a->temp, (int)a->top_k, (float)a->top_p, s->seed, &err))
        return cli_fail(cmd, EXIT_USAGE, "%s", err.msg);
    if (a->spec && s->m.w.n_mtp == 0) return cli_fail(cmd, EXIT_USAGE, "--spec mtp: %s has no MTP module", a->model);
    if ((s->ctx = session_ctx(cmd, a, c)) == 0) return EXIT_USAGE;
    if (a->gpu && a->attn != ATTN_ABSORB) return cli_fail(cmd, EXIT_USAGE, "--backend fast runs the absorbed attention only");
    if (a->gpu) {
        GpuEngineOptions go = session_gpu(a, s->ctx, ep);
        if (ep->plan_path) err_set(&err, "--ep-plan places experts on the reference backend only: drop --backend fast");
        if (ep->plan_path || cli_ep_start(ep, &s->m, &err) || gpu_engine_open(&s->gpu, &s->m, &go, stderr, &err))
            return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        fprintf(stderr, "dsv3: --backend fast on %s\n", gpu_engine_describe(s->gpu));
    } else if (cli_ep_gpu_env(ep)) {
        if (!(s->ep_rank = cli_ep_join_ref(ep, &s->m, &err))) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        fprintf(stderr, "dsv3: routed experts over %d processes (TCP)\n", ep->env.world_size);
    }
    if (a->routing_stats && (a->gpu || routing_counter_init(&s->routing, c, s->m.w.n_mtp, s->ep_rank ? &s->ep_rank->hook : NULL, &err)))
        return cli_fail(cmd, EXIT_USAGE, "--routing-stats: %s", a->gpu ? "counts the reference's MoE layers: drop --backend fast" : err.msg);
    snprintf(s->settings, sizeof s->settings, "context %ld, temp %g top-k %ld top-p %g seed %llu, speculative %s", s->ctx,
             a->temp, a->top_k, a->top_p, (unsigned long long)s->seed,
             a->spec ? (a->draft > 1 ? "MTP multi-draft" : "MTP") : "off");
    return EXIT_OK;
}

/** The hook the session's MoE layers go through: the routing counter, the EP group, or none. */
static MoeHook *session_hook(Session *s) {
    return s->routing.scratch ? &s->routing.hook : s->ep_rank ? &s->ep_rank->hook : NULL;
}

/** Writes --routing-stats at the end of a successful run. */
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
    if (gen_init(&s->g, &s->m, &s->sampler, s->ctx, a->spec ? (int)a->draft : 0, a->chunk, a->attn, a->fp8, &err) ||
        (s->gpu && gen_use_gpu(&s->g, s->gpu, &err)))
        return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    gen_set_moe_hook(&s->g, session_hook(s));
    gen_limit_vocab(&s->g, s->n_sample);
    decode_stream_init(&s->ds, s->tok);
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

/** Where --batch's results go: one JSON line each, as they finish. */
typedef struct {
    const Tokenizer *tok;
    const BatchRequest *reqs;
} BatchOut;

static int batch_line(void *ctx, int i, const int *tokens, int64_t n, int eos, Err *err) {
    const BatchOut *o = ctx;
    char *text = NULL, *line = NULL;
    size_t len = 0;
    if (tokenizer_decode(o->tok, tokens, (int)n, &text, &len, err)) return -1;
    cJSON *j = cJSON_CreateObject();
    if (j && cJSON_AddNumberToObject(j, "index", i) && cJSON_AddStringToObject(j, "text", text ? text : "") &&
        cJSON_AddStringToObject(j, "finish_reason", eos ? "stop" : "length") &&
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
                int bos = tokenizer_bos_id(s.tok);
                if ((!a->no_bos && bos >= 0 && intvec_push(&ids, bos)) || tokenizer_encode_append(s.tok, text + at, stop - at, &ids, &err))
                    rc = cli_fail(cmd, EXIT_RUNTIME, "%s: prompt %d: %s", a->batch_file, n - 1, err.msg[0] ? err.msg : "out of memory");
            }
        }
        at = end + 1;
    }
    if (rc == EXIT_OK && n == 0) rc = cli_fail(cmd, EXIT_USAGE, "%s has no prompts (one per line)", a->batch_file);
    if (rc == EXIT_OK && !(reqs = xcalloc((size_t)n, sizeof *reqs))) rc = cli_fail(cmd, EXIT_RUNTIME, "out of memory");
    if (rc == EXIT_OK) {
        start[n] = ids.n;
        for (int i = 0; i < n; i++)
            reqs[i] = (BatchRequest){ ids.v + start[i], (int64_t)(start[i + 1] - start[i]), a->n_predict, s.seed + (uint64_t)i };
        BatchOptions o = { (int)a->parallel, batch_max_T(a), s.ctx, (float)a->temp, (int)a->top_k, (float)a->top_p, s.n_sample,
                           s.eos, a->attn, a->fp8, session_hook(&s) };
        BatchOut out = { s.tok, reqs };
        BatchStats st;
        if (batch_generate(&s.m, s.gpu, &o, reqs, n, batch_line, &out, &st, &err)) rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
        else
            fprintf(stderr, "[%s]\n[%d prompts, %lld prompt tokens, %lld generated in %lld steps (up to %d sequences at once)"
                            " in %.2f s: %.1f tokens/s generated, %.1f tokens/s in all]\n",
                    s.settings, n, (long long)st.prompt_tokens, (long long)st.generated, (long long)st.steps, st.max_open,
                    st.seconds, st.generated / (st.seconds + 1e-9), (st.prompt_tokens + st.generated) / (st.seconds + 1e-9));
    }
    free(reqs), free(start), free(ids.v);
    return session_finish(cmd, a, &s, rc);
}

int cmd_generate(int argc, char **argv) {
    const char *cmd = "generate";
    GenArgs a;
    int rc = parse_args(cmd, argc, argv, &a);
    if (rc) return rc > 0 ? EXIT_OK : EXIT_USAGE;
    char *file_text = NULL;
    size_t file_len = 0;
    Err err = { "" };
    const char *in_file = a.batch_file ? a.batch_file : a.prompt_file;
    if (in_file && read_file(in_file, 64u << 20, &file_text, &file_len, &err))
        return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    const char *text = a.prompt ? a.prompt : file_text;
    size_t len = a.prompt ? strlen(a.prompt) : file_len;
    if (!utf8_valid(text, len)) {
        free(file_text);
        return cli_fail(cmd, a.prompt ? EXIT_USAGE : EXIT_RUNTIME, "the prompt%s%s is not valid UTF-8", in_file ? " in " : "",
                        in_file ? in_file : "");
    }
    CliEp ep;
    if ((rc = cli_ep_launch(&ep, cmd, &a.ep, argc, argv)) || cli_ep_is_server(&ep)) {
        free(file_text);
        return cli_ep_finish(&ep, cmd, rc ? rc : serve_session(cmd, &a, &ep));
    }
    if (a.batch_file) {
        rc = run_batch(cmd, &a, text, len, &ep);
        free(file_text);
        return cli_ep_finish(&ep, cmd, rc);
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
    return cli_ep_finish(&ep, cmd, session_finish(cmd, &a, &s, rc));
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
    return cli_ep_finish(&ep, cmd, session_finish(cmd, &a, &s, rc));
}
