/**
 * @file cmd_eplb.c
 * @brief `dsv3 eplb`: the expert-parallel load balancer (ref/ep/eplb.h) over measured routing
 *        statistics (--routing-stats of generate / perplexity / train), writing a plan for --ep-plan.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cli_util.h"
#include "ep/eplb.h"

static const char *const CMD = "eplb";

static void usage(FILE *f) {
    fprintf(f, "usage: dsv3 eplb --stats FILE --gpus P [--replicas R | --redundant K] [--groups G] [--nodes N] [-o PLAN.json]\n"
               "  places R physical expert slots per MoE layer (default: the E experts, no copies) on P GPUs in N nodes\n"
               "  (default 1) from the loads in FILE: the hierarchical policy when the G expert groups (default: the\n"
               "  model's, from FILE) divide over the nodes, the global one otherwise. Prints each layer's max/mean\n"
               "  GPU load before (contiguous experts, no copies) and after; -o writes the plan for --ep-plan.\n"
               "  --redundant K   R = E + K\n"
               "  --eval FILE     also show how the plan does on the loads of FILE (other traffic than it was made from)\n");
}

int cmd_eplb(int argc, char **argv) {
    const char *stats = NULL, *out = NULL, *eval = NULL;
    long gpus = 0, replicas = 0, redundant = -1, groups = 0, nodes = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long *num = !strcmp(a, "--gpus") ? &gpus : !strcmp(a, "--replicas") ? &replicas : !strcmp(a, "--redundant") ? &redundant
                  : !strcmp(a, "--groups") ? &groups : !strcmp(a, "--nodes") ? &nodes : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage(stdout), EXIT_OK;
        else if (num) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_long(CMD, a, v, num == &redundant ? 0 : 1, 1 << 20, num)) return EXIT_USAGE;
        } else if (!strcmp(a, "--stats")) {
            if (!(stats = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "--eval")) {
            if (!(eval = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            if (!(out = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
        } else {
            return cli_fail(CMD, EXIT_USAGE, "unknown option '%s' (dsv3 eplb --help)", a);
        }
    }
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
