/**
 * @file cmd_mkckpt.c
 * @brief `dsv3 mkckpt`: random checkpoints in the real Hugging Face layout, for tests,
 *        benchmarks and experiments.
 *
 *   dsv3 mkckpt -o DIR [--preset NAME (ref/model/ckpt.c's table) | --config FILE] [--format fp8|bf16|f32]
 *               [--mtp N] [--shards N] [--seed S] [--bias-std X] [--eh-proj-fp8] [--set KEY=VALUE]...
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "model/ckpt.h"
#include "cli.h"
#include "cli_opt.h"
#include "cli_util.h"

static const char *const CMD = "mkckpt";

/** What the command line sets. */
typedef struct {
    const char *out, *preset, *config;
    CliList sets;
    int format, format_given, eh_fp8;
    long n_mtp, shards, seed;
    double bias_std;
} Args;

static const int format_values[] = { CKPT_FP8, CKPT_BF16, CKPT_F32 };
static const CliOpt opts[] = {
    { "--output", "-o", CLI_STR, offsetof(Args, out), "DIR", .help = "directory to write config.json + safetensors into" },
    { "--preset", NULL, CLI_STR, offsetof(Args, preset), "NAME", .def = "tiny",
      .help = "tiny, small, mini (~70 MB FP8, used by make bench), v3 (the 671B shape),\n"
              "v3.1, v3.1-small (UE8M0 scales), k2, k2-tiny (Kimi K2), moonlight, moonlight-tiny" },
    { "--config", NULL, CLI_STR, offsetof(Args, config), "FILE", .help = "start from a config.json instead of a preset" },
    { "--set", NULL, CLI_LIST, offsetof(Args, sets), "KEY=VALUE",
      .help = "override a numeric config field (repeatable), e.g. --set num_hidden_layers=2" },
    { "--format", NULL, CLI_CHOICE, offsetof(Args, format), .choices = "fp8|bf16|f32", .values = format_values,
      .help = "matrix storage (default: fp8 if the config is FP8, else bf16)" },
    { "--eh-proj-fp8", NULL, CLI_FLAG, offsetof(Args, eh_fp8), .help = "FP8 checkpoints: store the MTP eh_proj as FP8 too" },
    { "--mtp", NULL, CLI_LONG, offsetof(Args, n_mtp), "N", .lo = 0, .hi = 16,
      .help = "MTP modules to include (default: num_nextn_predict_layers)" },
    { "--shards", NULL, CLI_LONG, offsetof(Args, shards), "N", .lo = 1, .hi = 9999, .def = "1",
      .help = "split into N files + model.safetensors.index.json" },
    { "--seed", NULL, CLI_LONG, offsetof(Args, seed), "S", .lo = 0, .hi = 0x7fffffff, .def = "1", .help = "random seed" },
    { "--bias-std", NULL, CLI_DOUBLE, offsetof(Args, bias_std), "X", .lo = 0, .hi = 100, .def = "0.1",
      .help = "std of the gate correction biases" },
};

/** The command once its flags are parsed. */
static int run(const Args *a);

int cmd_mkckpt(int argc, char **argv) {
    Args a = { 0 };
    a.n_mtp = -1;
    CliCmd cmd = { .name = CMD, .usage = "-o DIR [options]",
                   .about = "writes a random checkpoint in the Hugging Face layout (tests, benchmarks, experiments)" };
    cli_add(&cmd, CLI_GROUP(NULL, opts, &a));
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_RUN) return rc;
    a.format_given = cli_given(&cmd, "--format");
    rc = a.out ? run(&a) : cli_fail(CMD, EXIT_USAGE, "-o DIR is required (dsv3 mkckpt --help)");
    cli_free(&cmd);
    return rc;
}

static int run(const Args *a) {
    const char *out = a->out;
    long n_mtp = a->n_mtp;
    Err err = { "" };
    Config c;
    if ((a->config ? config_load(&c, a->config, &err) : config_preset(&c, a->preset, &err)) ||
        config_apply_sets(&c, (char *const *)a->sets.v, a->sets.n, &err))
        return cli_fail(CMD, EXIT_USAGE, "%s", err.msg);
    CkptLayout layout = { c.has_fp8 ? CKPT_FP8 : CKPT_BF16, a->eh_fp8, (int)a->shards,
                          n_mtp < 0 ? c.num_nextn_predict_layers : (int)n_mtp };
    if (a->format_given) layout.format = (CkptFormat)a->format;
    if (layout.n_mtp > c.num_nextn_predict_layers) c.num_nextn_predict_layers = layout.n_mtp;
    RandomInit ri = { (uint64_t)a->seed, (float)a->bias_std };
    uint64_t main_p, mtp_p;
    weights_count(&c, layout.n_mtp, &main_p, &mtp_p);
    fprintf(stderr, "dsv3 mkckpt: %.1f M parameters + %.1f M MTP, %s, %d shard(s)\n", (double)main_p / 1e6,
            (double)mtp_p / 1e6, layout.format == CKPT_FP8 ? "fp8" : layout.format == CKPT_BF16 ? "bf16" : "f32",
            layout.shards);
    if (ckpt_write(out, &c, &layout, ckpt_random_source, &ri, stderr, &err)) return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    return EXIT_OK;
}
