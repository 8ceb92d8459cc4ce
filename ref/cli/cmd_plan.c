/**
 * @file cmd_plan.c
 * @brief `dsv3 plan`: memory, communication and decode-step estimates for serving a model on
 *        the paper's prefill/decode units and on single- and two-node GPU servers.
 */
#include <stdio.h>
#include <string.h>

#include "model/ckpt.h"
#include "cli.h"
#include "cli_util.h"
#include "ep/eplb.h"
#include "ep/plan.h"

static const char *const CMD = "plan";

static void usage(FILE *f) {
    fprintf(f, "usage: dsv3 plan [-m MODEL_DIR | --preset v3] [--batch N] [--ctx N] [--mtp]\n"
               "                 [--hbm-tbs X] [--nvlink-gbs X] [--ib-gbs X] [--ep-plan PLAN.json]\n"
               "  the model's config (default: the real DeepSeek-V3) laid out on the paper's prefill and decode\n"
               "  units, one 8x H200 node and two 8x H100 nodes: weights and KV cache per GPU, all-to-all bytes\n"
               "  per token per MoE layer, decode-step time (HBM- vs link-bound) for --batch sequences of --ctx\n"
               "  tokens per attention rank. Hardware flags override the presets' bandwidths.\n"
               "  --ep-plan PLAN.json adds the deployment an EPLB plan describes (dsv3 eplb -o), on H100s: its GPUs,\n"
               "  redundant experts, and the all-to-all time scaled by its measured GPU load imbalance.\n");
}

int cmd_plan(int argc, char **argv) {
    const char *dir = NULL, *preset = "v3", *plan_path = NULL;
    long batch = 32, ctx = 4096;
    int with_mtp = 0;
    double hbm = 0, nvl = 0, ib = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(dir = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "--preset")) {
            if (!(preset = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "--batch")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_long(CMD, a, v, 1, 1 << 20, &batch)) return EXIT_USAGE;
        } else if (!strcmp(a, "--ctx")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_long(CMD, a, v, 1, 1 << 24, &ctx)) return EXIT_USAGE;
        } else if (!strcmp(a, "--hbm-tbs")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_double(CMD, a, v, 1e-3, 1e3, &hbm)) return EXIT_USAGE;
        } else if (!strcmp(a, "--nvlink-gbs")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_double(CMD, a, v, 1e-3, 1e5, &nvl)) return EXIT_USAGE;
        } else if (!strcmp(a, "--ib-gbs")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_double(CMD, a, v, 1e-3, 1e5, &ib)) return EXIT_USAGE;
        } else if (!strcmp(a, "--ep-plan")) {
            if (!(plan_path = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "--mtp")) {
            with_mtp = 1;
        } else {
            return cli_fail(CMD, EXIT_USAGE, "unknown option '%s' (dsv3 plan --help)", a);
        }
    }
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
        PlanResult r;
        if (i < n) plan_evaluate(&c, &d, (int)batch, (int)ctx, with_mtp, &r);
        else if (plan_evaluate_eplb(&c, &presets[3], &ep_plan, (int)batch, (int)ctx, with_mtp, &d, &r, &err)) {
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
        printf("  KV cache         %.0f B/token (latent c_kv + k_pe, BF16); room for %.0f tokens/GPU\n",
               r.kv_bytes_per_token, r.kv_tokens);
        printf("  all-to-all       %.0f B dispatch (FP8 + scales) + %.0f B combine (BF16) per token per MoE layer;"
               " %.0f%% crosses nodes\n", r.dispatch_bytes, r.combine_bytes, 100 * r.remote_fraction);
        printf("  decode step      HBM %.2f ms, links %.2f ms -> %.2f ms (overlapped) = %.0f tokens/s for the unit\n\n",
               1e3 * r.step_compute_s, 1e3 * r.step_comm_s, 1e3 * r.step_s, r.tokens_per_s);
    }
    eplb_plan_free(&ep_plan);
    return EXIT_OK;
}
