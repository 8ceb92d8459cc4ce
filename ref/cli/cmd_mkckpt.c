/**
 * @file cmd_mkckpt.c
 * @brief `dsv3 mkckpt`: random checkpoints in the real Hugging Face layout, for tests,
 *        benchmarks and experiments.
 *
 *   dsv3 mkckpt -o DIR [--preset NAME (ref/model/ckpt.c's table) | --config FILE] [--format fp8|bf16|f32]
 *               [--mtp N] [--shards N] [--seed S] [--bias-std X] [--eh-proj-fp8] [--set KEY=VALUE]...
 */
#include <stdio.h>
#include <string.h>

#include "model/ckpt.h"
#include "cli.h"
#include "cli_util.h"

static const char *const CMD = "mkckpt";

static void usage(FILE *f) {
    fprintf(f,
            "usage: dsv3 mkckpt -o DIR [options]\n"
            "  -o, --output DIR       directory to write config.json + safetensors into\n"
            "  --preset NAME          tiny (default), small, mini (~70 MB FP8, used by make bench), v3 (671B shape),\n"
            "                         v3.1, v3.1-small (UE8M0 scales), k2, k2-tiny (Kimi K2), moonlight, moonlight-tiny\n"
            "  --config FILE          start from a config.json instead of a preset\n"
            "  --set KEY=VALUE        override a numeric config field (repeatable), e.g. --set num_hidden_layers=2\n"
            "  --format fp8|bf16|f32  matrix storage (default: fp8 if the config is FP8, else bf16)\n"
            "  --eh-proj-fp8          FP8 checkpoints: store the MTP eh_proj as FP8 too\n"
            "  --mtp N                MTP modules to include (default: num_nextn_predict_layers)\n"
            "  --shards N             split into N files + model.safetensors.index.json (default 1)\n"
            "  --seed S               random seed (default 1)\n"
            "  --bias-std X           std of the gate correction biases (default 0.1)\n");
}

int cmd_mkckpt(int argc, char **argv) {
    const char *out = NULL, *preset = "tiny", *config_path = NULL, *format = NULL;
    char *sets[64];
    int n_sets = 0, eh_fp8 = 0;
    long n_mtp = -1, shards = 1, seed = 1;
    double bias_std = 0.1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (!(out = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "--preset")) {
            if (!(preset = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "--config")) {
            if (!(config_path = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "--format")) {
            if (!(format = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
            if (strcmp(format, "fp8") && strcmp(format, "bf16") && strcmp(format, "f32"))
                return cli_fail(CMD, EXIT_USAGE, "--format must be fp8, bf16 or f32, got '%s'", format);
        } else if (!strcmp(a, "--set")) {
            if (!(v = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
            if (n_sets == (int)(sizeof sets / sizeof sets[0])) return cli_fail(CMD, EXIT_USAGE, "too many --set");
            sets[n_sets++] = (char *)v;
        } else if (!strcmp(a, "--mtp")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_long(CMD, a, v, 0, 16, &n_mtp)) return EXIT_USAGE;
        } else if (!strcmp(a, "--shards")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_long(CMD, a, v, 1, 9999, &shards)) return EXIT_USAGE;
        } else if (!strcmp(a, "--seed")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_long(CMD, a, v, 0, 0x7fffffffL, &seed)) return EXIT_USAGE;
        } else if (!strcmp(a, "--bias-std")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_double(CMD, a, v, 0, 100, &bias_std)) return EXIT_USAGE;
        } else if (!strcmp(a, "--eh-proj-fp8")) {
            eh_fp8 = 1;
        } else {
            return cli_fail(CMD, EXIT_USAGE, "unknown option '%s' (dsv3 mkckpt --help)", a);
        }
    }
    if (!out) return cli_fail(CMD, EXIT_USAGE, "-o DIR is required (dsv3 mkckpt --help)");
    Err err = { "" };
    Config c;
    if ((config_path ? config_load(&c, config_path, &err) : config_preset(&c, preset, &err)) ||
        config_apply_sets(&c, sets, n_sets, &err))
        return cli_fail(CMD, EXIT_USAGE, "%s", err.msg);
    CkptLayout layout = { c.has_fp8 ? CKPT_FP8 : CKPT_BF16, eh_fp8, (int)shards,
                          n_mtp < 0 ? c.num_nextn_predict_layers : (int)n_mtp };
    if (format) layout.format = !strcmp(format, "fp8") ? CKPT_FP8 : !strcmp(format, "bf16") ? CKPT_BF16 : CKPT_F32;
    if (layout.n_mtp > c.num_nextn_predict_layers) c.num_nextn_predict_layers = layout.n_mtp;
    RandomInit ri = { (uint64_t)seed, (float)bias_std };
    uint64_t main_p, mtp_p;
    weights_count(&c, layout.n_mtp, &main_p, &mtp_p);
    fprintf(stderr, "dsv3 mkckpt: %.1f M parameters + %.1f M MTP, %s, %d shard(s)\n", (double)main_p / 1e6,
            (double)mtp_p / 1e6, layout.format == CKPT_FP8 ? "fp8" : layout.format == CKPT_BF16 ? "bf16" : "f32",
            layout.shards);
    if (ckpt_write(out, &c, &layout, ckpt_random_source, &ri, stderr, &err)) return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    return EXIT_OK;
}
