/**
 * @file cmd_logits.c
 * @brief `dsv3 logits`: the golden-test contract (issue: ref spine, item 6).
 *
 *   dsv3 logits -m MODEL_DIR --ids 5,17,3,... -o OUT.f32 [--attn absorb|naive] [--prefill N]
 *               [--fp8 dequant|w8a8] [--hidden HID.f32] [--mtp]
 *
 * Writes the logits of every input position as little-endian float32 [T][vocab_size].
 * --prefill N runs the first N ids as one chunk and the rest one token at a time through the
 * KV cache (same output); default one chunk of all T. --hidden also writes the residual stream
 * after the last block, before the final norm, [T][hidden_size]. --mtp writes the MTP head's
 * logits instead, [T−1][vocab_size] (row p from h_p and token p+1, docs/model.md §7.2).
 * Output files are written atomically: on any error no partial file is left behind.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "cli.h"
#include "cli_groups.h"
#include "cli_util.h"
#include "model/model.h"
#include "model/mtp.h"

static const char *const CMD = "logits";

/** What the command line sets besides the shared groups. */
typedef struct {
    const char *ids_arg, *out_path, *hidden_path;
    long prefill;
    int want_mtp;
} Args;

static const CliOpt opts[] = {
    { "--ids", NULL, CLI_STR, offsetof(Args, ids_arg), "LIST", .help = "comma-separated token ids" },
    { "--output", "-o", CLI_STR, offsetof(Args, out_path), "PATH", .help = "float32 [T][vocab] logits of every position" },
    { "--prefill", NULL, CLI_LONG, offsetof(Args, prefill), "N", .lo = 1, .hi = 1L << 30,
      .help = "first N ids as one chunk, then one token at a time (default: all T)" },
    { "--hidden", NULL, CLI_STR, offsetof(Args, hidden_path), "PATH", .help = "also write the last block's residual output [T][hidden]" },
    { "--mtp", NULL, CLI_FLAG, offsetof(Args, want_mtp), .help = "write the MTP module's logits [T-1][vocab] instead" },
};

static int run(const char *model_dir, const char *ids_arg, const char *out_path, const char *hidden_path, AttnMode attn,
               Fp8Mode fp8, long prefill, int want_mtp, int gpu, int kv_bf16, CliEp *ep);

int cmd_logits(int argc, char **argv) {
    CliModel mo = { 0 };
    CliBackend be = { 0 };
    CliEpFlags epf = { 0, 0, NULL };
    CliThreads th = { 0 };
    Args a = { 0 };
    a.prefill = -1;
    CliCmd cmd = { .name = CMD, .usage = "-m MODEL_DIR --ids 5,17,3,... -o OUT.f32 [options]",
                   .about = "writes the logits of every input position as little-endian float32 [T][vocab_size]\n"
                            "(on the reference, --kv-cache bf16|fp8 rounds the f32 cache as a BF16 or FP8 GPU cache would)" };
    cli_add(&cmd, cli_model_group(&mo));
    cli_add(&cmd, cli_numerics_group(&mo));
    cli_add(&cmd, CLI_GROUP("input and output", opts, &a));
    cli_add(&cmd, cli_backend_group(&be));
    cli_add(&cmd, cli_ep_group(&epf));
    cli_add(&cmd, cli_threads_group(&th, 0));
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_RUN) return rc;
    AttnMode attn = (AttnMode)mo.attn;
    Fp8Mode fp8 = (Fp8Mode)mo.fp8;
    if (!mo.dir || !a.ids_arg || !a.out_path)
        return cli_fail(CMD, EXIT_USAGE, "-m MODEL_DIR, --ids and -o OUT are required (dsv3 logits --help)");
    if (be.gpu && attn != ATTN_ABSORB) return cli_fail(CMD, EXIT_USAGE, "--backend fast runs the absorbed attention only (no --attn naive)");
    if (be.gpu && !cli_given(&cmd, "--fp8")) fp8 = FP8_W8A8; /* what GPUs run; --fp8 dequant for the reference's default numerics */
    cli_threads_apply(&th);

    CliEp ep;
    rc = cli_ep_launch(&ep, CMD, &epf, argc, argv);
    if (rc) return cli_ep_finish(&ep, CMD, rc);
    rc = run(mo.dir, a.ids_arg, a.out_path, a.hidden_path, attn, fp8, a.prefill, a.want_mtp, be.gpu, be.kv_bf16, &ep);
    return cli_ep_finish(&ep, CMD, rc);
}

/** The command once its flags are known; rank 0 of a group writes the files, the others serve experts. */
static int run(const char *model_dir, const char *ids_arg, const char *out_path, const char *hidden_path, AttnMode attn,
               Fp8Mode fp8, long prefill, int want_mtp, int gpu, int kv_bf16, CliEp *ep) {
    Err err = { "" };
    Model m;
    if (model_load(&m, model_dir, cli_ep_is_server(ep) ? NULL : stderr, &err)) return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    const Config *c = &m.config;
    int *ids = NULL, T = 0, rc = EXIT_RUNTIME;
    EpRank *ep_rank = NULL;
    float *logits = NULL, *hidden = NULL, *normed = NULL, *mtp_logits = NULL;
    RunState s;
    KVCache kv;
    GpuEngine *engine = NULL;
    memset(&s, 0, sizeof s);
    memset(&kv, 0, sizeof kv);
    if (parse_id_list(ids_arg, c->vocab_size, &ids, &T, &err)) {
        rc = cli_fail(CMD, EXIT_USAGE, "%s (vocab_size = %d)", err.msg, c->vocab_size);
        goto done;
    }
    if (prefill > T) {
        rc = cli_fail(CMD, EXIT_USAGE, "--prefill %ld exceeds the %d ids given", prefill, T);
        goto done;
    }
    if (config_check_positions(c, T, "--ids: a sequence of", &err)) {
        rc = cli_fail(CMD, EXIT_USAGE, "%s", err.msg);
        goto done;
    }
    if (want_mtp && m.w.n_mtp == 0) {
        rc = cli_fail(CMD, EXIT_RUNTIME, "%s has no MTP module (model.layers.%d.* absent; num_nextn_predict_layers = %d)",
                      model_dir, c->num_hidden_layers, c->num_nextn_predict_layers);
        goto done;
    }
    if (want_mtp && T < 2) {
        rc = cli_fail(CMD, EXIT_USAGE, "--mtp needs at least 2 ids");
        goto done;
    }
    int64_t first = prefill > 0 ? prefill : T;
    GpuEngineOptions go = { fp8, kv_bf16, first, T, want_mtp, cli_ep_gpu_env(ep), ep->tcp, ep->timeout_s, 1 };
    if (cli_ep_is_server(ep)) {
        rc = cli_ep_serve(ep, CMD, &m, gpu ? &go : NULL, fp8);
        goto done;
    }
    size_t V = (size_t)c->vocab_size, D = (size_t)c->hidden_size;
    logits = xcalloc((size_t)T * V, sizeof *logits);
    hidden = xcalloc((size_t)T * D, sizeof *hidden);
    normed = xcalloc((size_t)T * D, sizeof *normed);
    if (!logits || !hidden || !normed) {
        rc = cli_fail(CMD, EXIT_RUNTIME, "out of memory for %d × %zu logits", T, V);
        goto done;
    }
    if (gpu) {
        if (ep->plan_path) err_set(&err, "--ep-plan places experts on the reference backend only: drop --backend fast");
        if (ep->plan_path || cli_ep_start(ep, &m, &err) || gpu_engine_open(&engine, &m, &go, stderr, &err)) goto fail_msg;
    } else if (runstate_init(&s, &m, first, T, attn, fp8, &err) || kvcache_init(&kv, c, attn, c->num_hidden_layers, T, &err)) {
        rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
        goto done;
    } else {
        kvcache_set_format(&kv, kv_bf16 > 0 ? (KvFormat)kv_bf16 : KV_F32); /* emulates a GPU's cache on request */
        if (cli_ep_gpu_env(ep) && !(ep_rank = cli_ep_join_ref(ep, &m, &err))) goto fail_msg;
        if (ep_rank) s.ctx.moe_hook = &ep_rank->hook;
    }
    double t0 = now_seconds();
    /* First chunk of `first` ids, then one token at a time. */
    for (int64_t p = 0; p < T; p += p ? 1 : first) {
        int64_t n = p ? 1 : first;
        int bad = engine ? gpu_engine_forward(engine, p, ids + p, n, logits + p * V, n, hidden + p * D, normed + p * D, &err)
                         : model_forward(&m, &s, &kv, ids + p, n, logits + p * V, n, hidden + p * D, normed + p * D, &err);
        if (bad) goto fail_msg;
    }
    double t1 = now_seconds();
    if (want_mtp) {
        mtp_logits = xcalloc((size_t)(T - 1) * V, sizeof *mtp_logits);
        if (!mtp_logits) {
            rc = cli_fail(CMD, EXIT_RUNTIME, "out of memory");
            goto done;
        }
        if (engine) {
            /* the same split as mtp_logits_sequence: rows 0..first−2 as one chunk, then one at a time */
            int64_t rows = T - 1, chunk = mtp_first_chunk(T, first);
            for (int64_t p = 0; p < rows; p += p ? 1 : chunk) {
                int64_t n = p ? 1 : chunk;
                if (gpu_engine_mtp(engine, p, ids + p + 1, normed + p * D, n, mtp_logits + p * V, n, NULL, &err)) goto fail_msg;
            }
        } else if (mtp_logits_sequence(&m, 0, ids, normed, T, first, attn, fp8, ep_rank ? &ep_rank->hook : NULL, mtp_logits, &err)) {
            goto fail_msg;
        }
        if (write_f32_file(out_path, mtp_logits, (size_t)(T - 1) * V, &err)) goto fail_msg;
    } else if (write_f32_file(out_path, logits, (size_t)T * V, &err)) {
        goto fail_msg;
    }
    if (hidden_path && write_f32_file(hidden_path, hidden, (size_t)T * D, &err)) {
        remove(out_path); /* all or nothing */
        goto fail_msg;
    }
    char group[64] = "";
    if (ep_rank) snprintf(group, sizeof group, ", experts over %d processes", ep->env.world_size);
    fprintf(stderr, "dsv3 logits: %d tokens through %d layers (%s, fp8 %s%s%s%s) in %.3f s; wrote %s [%d][%zu]\n", T,
            c->num_hidden_layers, attn == ATTN_ABSORB ? "absorb" : "naive", fp8 == FP8_W8A8 ? "w8a8" : "dequant",
            engine ? ", GPU: " : "", engine ? gpu_engine_describe(engine) : "", group, t1 - t0, out_path, want_mtp ? T - 1 : T, V);
    rc = EXIT_OK;
    goto done;
fail_msg:
    rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
done:
    free(ids);
    free(logits);
    free(hidden);
    free(normed);
    free(mtp_logits);
    kvcache_free(&kv);
    runstate_free(&s);
    gpu_engine_close(engine);
    model_free(&m);
    return rc;
}
