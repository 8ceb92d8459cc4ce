/**
 * @file cmd_pipeline.c
 * @brief `dsv3 pipeline`: the pipeline schedules of paper §3.2.1 / Table 2, built, checked and
 *        simulated (ref/train/pipeline.h), with their bubbles beside the paper's formulas.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cli_opt.h"
#include "cli_util.h"
#include "train/pipeline.h"

static const char *const CMD = "pipeline";

/** What the command line sets. */
typedef struct {
    const char *sched, *png;
    long pp, micro;
    int events;
    PipeTimes t;
} Args;

static const CliOpt opts[] = {
    { "--schedule", NULL, CLI_STR, offsetof(Args, sched), "1f1b|zb1p|dualpipe|dualpipev|all", .def = "all", .help = "the schedules to build" },
    { "--pp", NULL, CLI_LONG, offsetof(Args, pp), "N", .lo = 1, .hi = 1024, .def = "8", .help = "pipeline stages (DualPipeV runs on N/2 ranks)" },
    { "--micro", NULL, CLI_LONG, offsetof(Args, micro), "M", .lo = 1, .hi = 65536, .help = "micro-batches (default 2*PP+4)" },
    { "--png", NULL, CLI_STR, offsetof(Args, png), "FILE", .help = "draw the timeline (one schedule; needs gnuplot, Debian gnuplot-nox)" },
    { "--events", NULL, CLI_FLAG, offsetof(Args, events),
      .help = "print every operation: rank, start, end, op, micro-batch, stage, direction" },
};
static const CliOpt time_opts[] = {
    { "--f", NULL, CLI_DOUBLE, offsetof(Args, t.f), "T", .lo = 0, .hi = 1e9, .def = "1", .help = "forward chunk" },
    { "--b", NULL, CLI_DOUBLE, offsetof(Args, t.b), "T", .lo = 0, .hi = 1e9, .def = "2", .help = "full backward chunk" },
    { "--w", NULL, CLI_DOUBLE, offsetof(Args, t.w), "T", .lo = 0, .hi = 1e9, .def = "1", .help = "weight-gradient part of B" },
    { "--fb", NULL, CLI_DOUBLE, offsetof(Args, t.fb), "T", .lo = 0, .hi = 1e9, .def = "2.5", .help = "overlapped forward+backward pair" },
    { "--comm", NULL, CLI_DOUBLE, offsetof(Args, t.comm), "T", .lo = 0, .hi = 1e9, .def = "0",
      .help = "latency of a send between ranks (Table 2 assumes 0)" },
};

int cmd_pipeline(int argc, char **argv) {
    Args a = { 0 };
    CliCmd cmd = { .name = CMD, .usage = "[--schedule S] [--pp N] [--micro M] [--f T] [--b T] [--w T] [--fb T] [--comm T] [--png FILE] [--events]",
                   .about = "builds each schedule for PP pipeline stages and M micro-batches, checks that no operation runs\n"
                            "before its input exists, simulates it with the chunk times and prints its bubble, peak\n"
                            "activations per rank and parameter copies beside the paper's Table 2 (docs/pipeline.md)." };
    cli_add(&cmd, CLI_GROUP("schedule", opts, &a));
    cli_add(&cmd, CLI_GROUP("chunk times", time_opts, &a));
    int prc = cli_parse(&cmd, argc, argv);
    cli_free(&cmd);
    if (prc != CLI_RUN) return prc;
    const char *sched = a.sched, *png = a.png;
    long pp = a.pp, micro = a.micro;
    int events = a.events;
    PipeTimes t = a.t;
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
