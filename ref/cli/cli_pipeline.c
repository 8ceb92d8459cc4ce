/**
 * @file cli_pipeline.c
 * @brief The process group of `dsv3 train --pipeline` (cli_pipeline.h).
 */
#include "cli_pipeline.h"

#include <string.h>

#include "cli_util.h"
#include "ep/ep_socket.h"

int cli_pipe_launch(CliPipe *p, const char *cmd, long n, int argc, char **argv) {
    memset(p, 0, sizeof *p);
    CliEpFlags f = { n, 1, NULL };
    return cli_ep_launch(&p->grp, cmd, &f, argc, argv);
}

int cli_pipe_rank(const CliPipe *p) { return p->grp.env.rank; }

int cli_pipe_start(CliPipe *p, Trainer *tr, PipeKind kind, Err *err) {
    int n = p->grp.env.world_size;
    if (pipe_trainer_check(tr, kind, n, err) || cli_ep_spawn(&p->grp, err) ||
        ep_socket_transport_init(&p->t, &p->grp.env, p->grp.timeout_s, err))
        return -1;
    if (ep_socket_link(&p->t, &p->link, err) || pipe_trainer_init(&p->pt, tr, kind, &p->link, err)) {
        ep_socket_transport_free(&p->t);
        return -1;
    }
    p->on = 1;
    return 0;
}

void cli_pipe_after_step(CliPipe *p) {
    PipeTiming t;
    Err err;
    if (p->pt.steps < 2 || pipe_trainer_timing(&p->pt, &t, &err)) return; /* step 1 allocates the slots */
    p->steps++;
    p->idle += t.measured.bubble_frac, p->idle_sim += t.predicted.bubble_frac;
    p->bubble += t.measured.bubble, p->bubble_sim += t.predicted.bubble;
    p->mean.f += t.mean.f, p->mean.b += t.mean.b, p->mean.w += t.mean.w, p->mean.fb += t.mean.fb, p->mean_bin += t.mean_bin;
}

int cli_pipe_report(const CliPipe *p, FILE *f, const char *png, Err *err) {
    if (!p->on || !p->steps) return 0;
    double n = p->steps, ms = 1e3 / n;
    const PipeSchedule *s = &p->pt.sched;
    fprintf(f, "pipeline: %s over %d processes, %d stages, %d micro-batches, %d steps timed: idle %.1f%% of the ranks' time "
               "(largest bubble %.1f ms); the simulator with these chunk times: %.1f%% (%.1f ms)\n",
            pipe_kind_name(s->kind), s->n_ranks, s->n_stages, s->n_mb, p->steps, 100 * p->idle / n, p->bubble * ms,
            100 * p->idle_sim / n, p->bubble_sim * ms);
    fprintf(f, "pipeline: mean chunk times F %.2f ms, B %.2f ms, B_in %.2f ms, W %.2f ms, F&B %.2f ms\n", p->mean.f * ms,
            p->mean.b * ms, p->mean_bin * ms, p->mean.w * ms, p->mean.fb * ms);
    if (!png) return 0;
    PipeSchedule m;
    if (pipe_trainer_measured(&p->pt, &m, err)) return -1;
    for (int r = 0; r < m.n_ranks; r++) /* milliseconds on the time axis */
        for (int i = 0; i < m.n_ops[r]; i++) m.ops[r][i].start *= 1e3, m.ops[r][i].end *= 1e3;
    char title[200];
    snprintf(title, sizeof title, "%s measured: %d processes, %d stages, %d micro-batches (time in ms)", pipe_kind_name(m.kind),
             m.n_ranks, m.n_stages, m.n_mb);
    int rc = pipe_draw_png(&m, png, title, err);
    pipe_free(&m);
    if (!rc) fprintf(f, "pipeline: drew the last step's measured timeline (ms) in %s\n", png);
    return rc;
}

int cli_pipe_finish(CliPipe *p, const char *cmd, int rc) {
    if (p->on) pipe_trainer_free(&p->pt);
    ep_socket_transport_free(&p->t); /* a rank that failed closes its connections: the others notice */
    p->on = 0;
    return cli_ep_finish(&p->grp, cmd, rc);
}
