/**
 * @file cmd_plan.c
 * @brief `dsv3 plan`: memory, communication and decode-step estimates for serving a model on
 *        the paper's prefill/decode units and on single- and two-node GPU servers.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "model/ckpt.h"
#include "cli.h"
#include "cli_groups.h"
#include "cli_util.h"
#include "ep/eplb.h"
#include "ep/plan.h"

static const char *const CMD = "plan";

/** What the command line sets besides -m. */
typedef struct {
    const char *preset, *plan_path;
    long batch, ctx;
    int with_mtp, kv_fp8;
    double hbm, nvl, ib; /* 0 (ib: −1): the presets' */
} Args;

static const int kv_values[] = { 0, 1 };

static const CliOpt opts[] = {
    { "--preset", NULL, CLI_STR, offsetof(Args, preset), "NAME", .def = "v3", .help = "a built-in config instead of -m" },
    { "--batch", NULL, CLI_LONG, offsetof(Args, batch), "N", .lo = 1, .hi = 1 << 20, .def = "32",
      .help = "decode batch: sequences per attention rank" },
    { "--ctx", NULL, CLI_LONG, offsetof(Args, ctx), "N", .lo = 1, .hi = 1 << 24, .def = "4096", .help = "tokens of context per sequence" },
    { "--mtp", NULL, CLI_FLAG, offsetof(Args, with_mtp), .help = "the MTP module stays resident" },
    { "--kv-cache", NULL, CLI_CHOICE, offsetof(Args, kv_fp8), .choices = "bf16|fp8", .values = kv_values, .def = "bf16",
      .help = "latent cache storage: bf16, or fp8 (e4m3 c_kv + a scale per 128 values, bf16 k_pe)" },
    { "--ep-plan", NULL, CLI_STR, offsetof(Args, plan_path), "PLAN.json",
      .help = "add the deployment an EPLB plan describes (dsv3 eplb -o), on H100s: its GPUs,\n"
              "redundant experts, and the all-to-all time scaled by its measured load imbalance" },
};
static const CliOpt hw_opts[] = {
    { "--hbm-tbs", NULL, CLI_DOUBLE, offsetof(Args, hbm), "X", .lo = 1e-3, .hi = 1e3, .help = "HBM bandwidth, TB/s (default: the preset's)" },
    { "--nvlink-gbs", NULL, CLI_DOUBLE, offsetof(Args, nvl), "X", .lo = 1e-3, .hi = 1e5, .help = "NVLink bandwidth, GB/s" },
    { "--ib-gbs", NULL, CLI_DOUBLE, offsetof(Args, ib), "X", .lo = 1e-3, .hi = 1e5, .help = "InfiniBand bandwidth per GPU, GB/s" },
};

int cmd_plan(int argc, char **argv) {
    CliModel mo = { 0 };
    Args a = { 0 };
    a.ib = -1;
    CliCmd cmd = { .name = CMD, .usage = "[-m MODEL_DIR | --preset v3] [--batch N] [--ctx N] [--mtp] [--kv-cache bf16|fp8] [--hbm-tbs X] [--nvlink-gbs X] [--ib-gbs X]\n"
                            "       [--ep-plan PLAN.json]",
                   .about = "the model's config (default: the real DeepSeek-V3) laid out on the paper's prefill and decode\n"
                            "units, one 8x H200 node and two 8x H100 nodes: weights and KV cache per GPU, all-to-all bytes\n"
                            "per token per MoE layer, decode-step time (HBM- vs link-bound) for --batch sequences of --ctx\n"
                            "tokens per attention rank. Hardware flags override the presets' bandwidths." };
    cli_add(&cmd, cli_model_group(&mo));
    cli_add(&cmd, CLI_GROUP("deployment", opts, &a));
    cli_add(&cmd, CLI_GROUP("hardware", hw_opts, &a));
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_RUN) return rc;
    const char *dir = mo.dir, *preset = a.preset, *plan_path = a.plan_path;
    long batch = a.batch, ctx = a.ctx;
    int with_mtp = a.with_mtp;
    double hbm = a.hbm, nvl = a.nvl, ib = a.ib;
    Config c;
    Err err;
    if (dir ? config_load(&c, dir, &err) : config_preset(&c, preset, &err)) return cli_fail(CMD, EXIT_USAGE, "%s", err.msg);
    EplbPlan ep_plan;
    memset(&ep_plan, 0, sizeof ep_plan);
    if (plan_path && eplb_plan_read(&ep_plan, plan_path, &err)) return cli_fail(CMD, EXIT_USAGE, "--ep-plan %s", err.msg);
    if (plan_path && ep_plan.n_experts != c.n_routed_experts) {
        cli_fail(CMD, EXIT_USAGE, "--ep-plan %s places %d experts per layer, the model has %d (-m)", plan_path,
                 ep_plan.n_experts, c.n_routed_experts);
        eplb_plan_free(&ep_plan);
        return EXIT_USAGE;
    }
    if (!c.has_fp8) printf("note: the config has no FP8 quantization; sizes assume the real model's FP8 storage\n");
    if (config_check_positions(&c, ctx, "note: --ctx", &err)) printf("%s\n", err.msg);
    int n;
    const Deployment *presets = plan_presets(&n);
    printf("model: hidden %d, %d layers, %d experts top-%d; decode batch %ld per attention rank, context %ld%s\n\n",
           c.hidden_size, c.num_hidden_layers, c.n_routed_experts, c.num_experts_per_tok, batch, ctx,
           with_mtp ? ", MTP module resident" : "");
    for (int i = 0; i < n + (plan_path != NULL); i++) {
        Deployment d = presets[i < n ? i : 3]; /* the plan runs on the H100 nodes' hardware */
        if (hbm > 0) d.hbm_tbs = hbm;
        if (nvl > 0) d.nvlink_gbs = nvl;
        if (ib >= 0 && d.ib_gbs > 0) d.ib_gbs = ib;
        d.kv_fp8 = a.kv_fp8;
        Deployment hw = presets[3];
        hw.kv_fp8 = a.kv_fp8;
        PlanResult r;
        if (i < n) plan_evaluate(&c, &d, (int)batch, (int)ctx, with_mtp, &r);
        else if (plan_evaluate_eplb(&c, &hw, &ep_plan, (int)batch, (int)ctx, with_mtp, &d, &r, &err)) {
            eplb_plan_free(&ep_plan);
            return cli_fail(CMD, EXIT_USAGE, "--ep-plan %s: %s", plan_path, err.msg);
        }
        printf("%s — %d GPUs (%d/node), %.0f GB HBM @ %.2f TB/s, NVLink %.0f GB/s, IB %.0f GB/s\n", i < n ? d.name : plan_path,
               d.gpus, d.gpus_per_node, d.hbm_gb, d.hbm_tbs, d.nvlink_gbs, d.ib_gbs);
        if (i == n)
            printf("  EPLB plan        %s policy, %d redundant experts per layer; max/mean GPU load %.3f (contiguous, no copies: %.3f)\n",
                   ep_plan.hierarchical ? "hierarchical" : "global", d.redundant, r.load_imbalance, r.load_imbalance_contiguous);
        printf("  weights/GPU      %.1f GB (%.2f routed experts per GPU per layer)%s\n", r.weight_bytes / 1e9,
               r.experts_per_gpu, r.fits ? "" : "  DOES NOT FIT");
        printf("  KV cache         %.0f B/token (latent c_kv + k_pe, %s); room for %.0f tokens/GPU\n",
               r.kv_bytes_per_token, a.kv_fp8 ? "FP8 c_kv + scales, BF16 k_pe" : "BF16", r.kv_tokens);
        printf("  all-to-all       %.0f B dispatch (FP8 + scales) + %.0f B combine (BF16) per token per MoE layer;"
               " %.0f%% crosses nodes\n", r.dispatch_bytes, r.combine_bytes, 100 * r.remote_fraction);
        if (!r.kv_fits) /* no speed for a batch whose cache does not fit */
            printf("  decode step      DOES NOT FIT: %ld x %ld tokens of KV cache per GPU, room for %.0f"
                   " (at most %.0f sequences of this context per attention rank)\n\n",
                   batch, ctx, r.kv_tokens, r.max_batch);
        else
            printf("  decode step      HBM %.2f ms, links %.2f ms -> %.2f ms (overlapped) = %.0f tokens/s for the unit\n\n",
               1e3 * r.step_compute_s, 1e3 * r.step_comm_s, 1e3 * r.step_s, r.tokens_per_s);
    }
    eplb_plan_free(&ep_plan);
    return EXIT_OK;
}
