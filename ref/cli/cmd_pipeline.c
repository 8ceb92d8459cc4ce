/**
 * @file cmd_pipeline.c
 * @brief `dsv3 pipeline`: the pipeline schedules of paper §3.2.1 / Table 2, built, checked and
 *        simulated (ref/train/pipeline.h), with their bubbles beside the paper's formulas.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cli_util.h"
#include "train/pipeline.h"

static const char *const CMD = "pipeline";

static void usage(FILE *f) {
    fprintf(f, "usage: dsv3 pipeline [--schedule 1f1b|zb1p|dualpipe|dualpipev|all] [--pp N] [--micro M]\n"
               "                     [--f T] [--b T] [--w T] [--fb T] [--comm T] [--png FILE] [--events]\n"
               "  builds each schedule for PP = N pipeline stages (DualPipeV on N/2 ranks) and M micro-batches,\n"
               "  checks that no operation runs before its input exists, simulates it with the chunk times and\n"
               "  prints its bubble, peak activations per rank and parameter copies beside Table 2's formulas.\n"
               "  --pp N       pipeline stages (default 8)         --micro M   micro-batches (default 2*PP+4)\n"
               "  --f T        forward chunk (default 1)           --b T       full backward chunk (default 2)\n"
               "  --w T        weight-gradient part of B (default 1) --fb T    overlapped forward+backward pair (default 2.5)\n"
               "  --comm T     latency of a send between ranks (default 0, Table 2's assumption)\n"
               "  --png FILE   draw the timeline (one schedule; needs gnuplot, Debian gnuplot-nox)\n"
               "  --events     print every operation: rank, start, end, op, micro-batch, stage, direction\n");
}

int cmd_pipeline(int argc, char **argv) {
    const char *sched = "all", *png = NULL;
    long pp = 8, micro = 0;
    int events = 0;
    PipeTimes t = { 1, 2, 1, 2.5, 0 };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        double *num = !strcmp(a, "--f") ? &t.f : !strcmp(a, "--b") ? &t.b : !strcmp(a, "--w") ? &t.w
                    : !strcmp(a, "--fb") ? &t.fb : !strcmp(a, "--comm") ? &t.comm : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage(stdout), EXIT_OK;
        else if (num) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_double(CMD, a, v, 0, 1e9, num)) return EXIT_USAGE;
        } else if (!strcmp(a, "--schedule")) {
            if (!(sched = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "--pp")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_long(CMD, a, v, 1, 1024, &pp)) return EXIT_USAGE;
        } else if (!strcmp(a, "--micro")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_long(CMD, a, v, 1, 65536, &micro)) return EXIT_USAGE;
        } else if (!strcmp(a, "--png")) {
            if (!(png = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE;
        } else if (!strcmp(a, "--events")) {
            events = 1;
        } else {
            return cli_fail(CMD, EXIT_USAGE, "unknown option '%s' (dsv3 pipeline --help)", a);
        }
    }
    Err err = { "" };
    PipeKind kinds[4] = { PIPE_1F1B, PIPE_ZB1P, PIPE_DUALPIPE, PIPE_DUALPIPEV };
    int n = 4;
    if (strcmp(sched, "all")) {
        if (pipe_kind_parse(sched, &kinds[0], &err)) return cli_fail(CMD, EXIT_USAGE, "--schedule: %s", err.msg);
        n = 1;
    } else if (png) {
        return cli_fail(CMD, EXIT_USAGE, "--png draws one schedule: give --schedule too");
    }
    if (pipe_times_check(&t, &err)) return cli_fail(CMD, EXIT_USAGE, "%s", err.msg);
    if (!micro) micro = 2 * pp + 4;
    printf("PP %ld stages, %ld micro-batches; chunk times F %g, B %g, W %g, F&B %g, comm %g\n", pp, micro, t.f, t.b, t.w, t.fb, t.comm);
    for (int k = 0; k < n; k++) {
        PipeSchedule s;
        PipeStats st;
        if (pipe_run(&s, kinds[k], (int)pp, (int)micro, &t, &st, &err)) {
            if (n == 1) return cli_fail(CMD, EXIT_USAGE, "%s", err.msg);
            printf("%-10s not built: %s\n", pipe_kind_name(kinds[k]), err.msg); /* e.g. DualPipe at an odd PP */
            continue;
        }
        pipe_print_summary(stdout, &s, &st, &t);
        if (events) pipe_print_events(stdout, &s);
        int rc = png ? pipe_draw_png(&s, png, NULL, &err) : 0;
        pipe_free(&s);
        if (rc) return cli_fail(CMD, EXIT_RUNTIME, "--png %s", err.msg);
        if (png) fprintf(stderr, "dsv3 pipeline: drew %s\n", png);
    }
    return EXIT_OK;
}
