/**
 * @file cmd_eplb.c
 * @brief `dsv3 eplb`: the expert-parallel load balancer (ref/ep/eplb.h) over measured routing
 *        statistics (--routing-stats of generate / perplexity / train), writing a plan for --ep-plan.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cli_opt.h"
#include "cli_util.h"
#include "ep/eplb.h"

static const char *const CMD = "eplb";

/** What the command line sets. */
typedef struct {
    const char *stats, *out, *eval;
    long gpus, replicas, redundant, groups, nodes;
} Args;

static const CliOpt opts[] = {
    { "--stats", NULL, CLI_STR, offsetof(Args, stats), "FILE", .help = "routing statistics (--routing-stats of generate, perplexity, train)" },
    { "--gpus", NULL, CLI_LONG, offsetof(Args, gpus), "P", .lo = 1, .hi = 1 << 20, .help = "GPUs to place the experts on (required)" },
    { "--replicas", NULL, CLI_LONG, offsetof(Args, replicas), "R", .lo = 1, .hi = 1 << 20,
      .help = "physical expert slots per MoE layer (default: the E experts, no copies)" },
    { "--redundant", NULL, CLI_LONG, offsetof(Args, redundant), "K", .lo = 0, .hi = 1 << 20, .help = "R = E + K" },
    { "--groups", NULL, CLI_LONG, offsetof(Args, groups), "G", .lo = 1, .hi = 1 << 20, .help = "expert groups (default: the model's, from --stats)" },
    { "--nodes", NULL, CLI_LONG, offsetof(Args, nodes), "N", .lo = 1, .hi = 1 << 20, .def = "1", .help = "nodes the GPUs are in" },
    { "--out", "-o", CLI_STR, offsetof(Args, out), "PLAN.json", .help = "write the plan for --ep-plan" },
    { "--eval", NULL, CLI_STR, offsetof(Args, eval), "FILE",
      .help = "also show how the plan does on the loads of FILE (other traffic than it was made from)" },
};

int cmd_eplb(int argc, char **argv) {
    Args a = { 0 };
    CliCmd cmd = { .name = CMD, .usage = "--stats FILE --gpus P [--replicas R | --redundant K] [--groups G] [--nodes N] [-o PLAN.json]",
                   .about = "places R physical expert slots per MoE layer on P GPUs in N nodes from the loads in FILE: the\n"
                            "hierarchical policy when the G expert groups divide over the nodes, the global one otherwise.\n"
                            "Prints each layer's max/mean GPU load before (contiguous experts, no copies) and after." };
    cli_add(&cmd, CLI_GROUP("placement", opts, &a));
    int prc = cli_parse(&cmd, argc, argv);
    int given_redundant = prc == CLI_RUN && cli_given(&cmd, "--redundant");
    cli_free(&cmd);
    if (prc != CLI_RUN) return prc;
    const char *stats = a.stats, *out = a.out, *eval = a.eval;
    long gpus = a.gpus, replicas = a.replicas, redundant = given_redundant ? a.redundant : -1, groups = a.groups, nodes = a.nodes;
    if (!stats || !gpus) return cli_fail(CMD, EXIT_USAGE, "--stats FILE and --gpus P are required (dsv3 eplb --help)");
    if (replicas && redundant >= 0) return cli_fail(CMD, EXIT_USAGE, "give --replicas or --redundant, not both");
    Err err = { "" };
    RoutingStats s;
    if (routing_stats_read(&s, stats, &err)) return cli_fail(CMD, EXIT_USAGE, "--stats %s", err.msg);
    int R = replicas ? (int)replicas : s.n_experts + (redundant > 0 ? (int)redundant : 0);
    EplbPlan p;
    int rc = eplb_rebalance_stats(&p, &s, R, (int)groups, (int)nodes, (int)gpus, &err);
    if (rc == 0) {
        int64_t tokens = 0;
        for (int j = 0; j < s.n_layers; j++) tokens = s.tokens[j] > tokens ? s.tokens[j] : tokens;
        printf("%s: %d MoE layers, up to %lld tokens each\n", stats, s.n_layers, (long long)tokens);
        eplb_print_report(stdout, &p);
        if (out && eplb_plan_write(&p, out, &err)) rc = cli_fail(CMD, EXIT_RUNTIME, "-o %s", err.msg);
        else if (out) fprintf(stderr, "dsv3 eplb: wrote %s\n", out);
        RoutingStats ev;
        if (rc == 0 && eval) {
            if (routing_stats_read(&ev, eval, &err) || eplb_plan_set_loads(&p, &ev, &err)) rc = cli_fail(CMD, EXIT_USAGE, "--eval %s", err.msg);
            else printf("\nthe same placement on the loads of %s:\n", eval), eplb_print_report(stdout, &p);
            routing_stats_free(&ev);
        }
    } else {
        rc = cli_fail(CMD, EXIT_USAGE, "%s", err.msg);
    }
    eplb_plan_free(&p);
    routing_stats_free(&s);
    return rc;
}
