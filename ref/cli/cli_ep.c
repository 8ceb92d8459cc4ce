/**
 * @file cli_ep.c
 * @brief Expert parallelism for logits / generate / chat (see cli_ep.h).
 */
#include "cli_ep.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_util.h"
#include "ep/eplb.h"
#include "ep/ep_socket.h"

/** What a wait status says, for a message. */
static void describe_exit(int st, char *buf, size_t n) {
    if (WIFEXITED(st)) snprintf(buf, n, "exited with status %d", WEXITSTATUS(st));
    else snprintf(buf, n, "died of signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/** LaunchEnv.check while rank 0 waits for the group: fails as soon as a rank it started has ended. */
static int children_alive(void *ctx, Err *err) {
    CliEp *g = ctx;
    for (int r = 1; r < g->env.world_size; r++) {
        int st;
        if (g->children[r] <= 0 || waitpid(g->children[r], &st, WNOHANG) != g->children[r]) continue;
        g->children[r] = 0, g->child_status[r] = st;
        char how[64];
        describe_exit(st, how, sizeof how);
        return err_set(err, "rank %d %s before the group formed", r, how);
    }
    return 0;
}

/** Starts ranks 1..n−1 of a group on this host: the same binary and flags, told their rank by
 *  the torchrun variables; rank 0's port is picked free first. */
static int spawn(CliEp *g, Err *err) {
    int fd, port, n = g->spawn_n;
    const char *cmd = g->argv[0];
    if (bootstrap_listen(0, &fd, &port, err)) return err_prefix(err, "--ep");
    close(fd); /* the port stays free for rank 0's listener a moment later */
    g->env.master_port = port;
    char **args = xcalloc((size_t)g->argc + 2, sizeof *args);
    g->children = xcalloc((size_t)n, sizeof *g->children);
    g->child_status = xcalloc((size_t)n, sizeof *g->child_status);
    g->env.check = children_alive, g->env.check_ctx = g;
    if (!args || !g->children || !g->child_status) {
        free(args);
        return err_set(err, "out of memory");
    }
    args[0] = "dsv3";
    for (int i = 0; i < g->argc; i++) args[i + 1] = g->argv[i];
    fflush(NULL);
    for (int r = 1; r < n; r++) {
        pid_t pid = fork();
        if (pid < 0) {
            free(args);
            return err_set(err, "--ep: cannot start rank %d: %s", r, strerror(errno));
        }
        if (pid == 0) {
            char v[32];
            snprintf(v, sizeof v, "%d", n), setenv("WORLD_SIZE", v, 1);
            snprintf(v, sizeof v, "%d", r), setenv("RANK", v, 1), setenv("LOCAL_RANK", v, 1);
            snprintf(v, sizeof v, "%d", port), setenv("MASTER_PORT", v, 1);
            setenv("MASTER_ADDR", "127.0.0.1", 1);
            signal(SIGINT, SIG_IGN); /* Ctrl-C is rank 0's (a chat stops its reply); the servers follow rank 0 */
            int null = open("/dev/null", O_RDWR); /* the prompt and the text belong to rank 0 */
            if (null >= 0) dup2(null, 0), dup2(null, 1);
            execv("/proc/self/exe", args);
            fprintf(stderr, "dsv3 %s: --ep: rank %d cannot run /proc/self/exe: %s\n", cmd, r, strerror(errno));
            _exit(EXIT_RUNTIME);
        }
        g->children[r] = pid;
    }
    free(args);
    return 0;
}

int cli_ep_launch(CliEp *g, const char *cmd, const CliEpFlags *f, int argc, char **argv) {
    memset(g, 0, sizeof *g);
    Err err = { "" };
    g->tcp = f->tcp;
    g->plan_path = f->plan;
    g->timeout_s = 300;
    const char *t = getenv("DSV3_EP_TIMEOUT");
    if (t && *t) {
        long x;
        if (parse_long(t, 1, 86400, &x)) return cli_fail(cmd, EXIT_USAGE, "environment DSV3_EP_TIMEOUT='%s' is not seconds in [1, 86400]", t);
        g->timeout_s = (double)x;
    }
    if (launch_env_read(&g->env, &err)) return cli_fail(cmd, EXIT_USAGE, "%s", err.msg);
    int launched = g->env.world_size > 1 || getenv("WORLD_SIZE");
    if (f->plan && f->n <= 1 && !launched) return cli_fail(cmd, EXIT_USAGE, "--ep-plan %s needs --ep N (N > 1) or a launcher", f->plan);
    if (f->n > 0 && launched && f->n != g->env.world_size)
        return cli_fail(cmd, EXIT_USAGE, "--ep %ld, but the launcher started %d processes (WORLD_SIZE)", f->n, g->env.world_size);
    if (f->n > 1 && !launched) {
        /* rank 0 of f->n; the others start once the model has loaded (cli_ep_start) */
        g->spawn_n = (int)f->n, g->argc = argc, g->argv = argv;
        g->env.world_size = (int)f->n, g->env.rank = 0, g->env.local_rank = 0;
        snprintf(g->env.master_addr, sizeof g->env.master_addr, "127.0.0.1");
    }
    return EXIT_OK;
}

int cli_ep_start(CliEp *g, const Model *m, Err *err) {
    if (g->env.world_size <= 1) return 0;
    if (ep_model_splits(&m->config, g->env.world_size, err)) return -1;
    if (g->plan_path && !g->layer_plans &&
        eplb_load_ep_plans(g->plan_path, &m->config, g->env.world_size, &g->layer_plans, &g->n_layer_plans, err))
        return err_prefix(err, "--ep-plan");
    if (g->plan_path && g->env.rank == 0 && g->spawn_n >= 0 && !g->children)
        fprintf(stderr, "dsv3: --ep-plan %s: routed experts placed per layer as the plan says\n", g->plan_path);
    return g->spawn_n > 1 && !g->children ? spawn(g, err) : 0;
}

int cli_ep_spawn(CliEp *g, Err *err) { return g->spawn_n > 1 && !g->children ? spawn(g, err) : 0; }

int cli_ep_is_server(const CliEp *g) { return g->env.world_size > 1 && g->env.rank > 0; }

const LaunchEnv *cli_ep_gpu_env(const CliEp *g) { return g->env.world_size > 1 ? &g->env : NULL; }

/** The CPU group: TCP transport, contiguous expert ranges (or --ep-plan's per layer), this rank's exchange state. */
static int join(CliEp *g, const Model *m, Err *err) {
    const Config *c = &m->config;
    if (cli_ep_start(g, m, err) || ep_socket_transport_init(&g->t, &g->env, g->timeout_s, err)) return -1;
    if (ep_plan_init(&g->plan, g->env.world_size, c->n_routed_experts, NULL, 0, err) ||
        ep_rank_init(&g->rank, g->env.rank, &g->t, &g->plan, err)) {
        ep_plan_free(&g->plan);
        ep_socket_transport_free(&g->t);
        return -1;
    }
    g->rank.layer_plans = g->layer_plans, g->rank.n_layer_plans = g->n_layer_plans;
    g->joined = 1;
    return 0;
}

EpRank *cli_ep_join_ref(CliEp *g, const Model *m, Err *err) {
    if (g->env.world_size <= 1) return NULL;
    return join(g, m, err) ? NULL : &g->rank;
}

int cli_ep_serve(CliEp *g, const char *cmd, const Model *m, const GpuEngineOptions *gpu, Fp8Mode fp8) {
    Err err = { "" };
    int rc = EXIT_OK;
    if (gpu && g->plan_path) {
        err_set(&err, "--ep-plan places experts on the reference backend only");
        rc = EXIT_USAGE;
    } else if (gpu) {
        GpuEngine *e = NULL;
        GpuEngineOptions o = *gpu;
        o.ep = &g->env, o.ep_tcp = g->tcp, o.ep_timeout_s = g->timeout_s;
        if (gpu_engine_open(&e, m, &o, NULL, &err) || gpu_engine_serve(e, &err)) rc = EXIT_RUNTIME;
        gpu_engine_close(e);
    } else {
        /* the experts run 64 rows at a time through a small run state's linear scratch */
        RunState s;
        memset(&s, 0, sizeof s);
        if (join(g, m, &err) || runstate_init(&s, m, 64, 64, ATTN_ABSORB, fp8, &err) || ep_serve(&g->rank, &m->w, &s.ctx, &err))
            rc = EXIT_RUNTIME;
        runstate_free(&s);
    }
    if (rc) cli_fail(cmd, rc, "rank %d: %s", g->env.rank, err.msg);
    return rc;
}

int cli_ep_finish(CliEp *g, const char *cmd, int rc) {
    if (g->joined) {
        Err err = { "" };
        /* the servers are stopped in step even when rank 0 failed for reasons of its own (an
         * unwritable output file): only a failed exchange leaves them to notice the closed sockets */
        if (g->env.rank == 0 && !g->rank.hook.failed && ep_stop(&g->rank, &err) && rc == EXIT_OK)
            rc = cli_fail(cmd, EXIT_RUNTIME, "stopping the expert servers: %s", err.msg);
        ep_rank_free(&g->rank);
        ep_plan_free(&g->plan);
        ep_socket_transport_free(&g->t); /* closing the connections also ends servers after a failure */
        g->joined = 0;
    }
    for (int l = 0; l < g->n_layer_plans; l++) ep_plan_free(&g->layer_plans[l]);
    free(g->layer_plans);
    g->layer_plans = NULL, g->n_layer_plans = 0;
    if (g->children) {
        for (int r = 1; r < g->env.world_size; r++) {
            int st = g->child_status[r];
            if (g->children[r] > 0) {
                if (rc != EXIT_OK) kill(g->children[r], SIGTERM), kill(g->children[r], SIGCONT); /* they may still wait to join, or be stopped */
                while (waitpid(g->children[r], &st, 0) < 0 && errno == EINTR) {}
            }
            if (rc == EXIT_OK && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
                char how[64];
                describe_exit(st, how, sizeof how);
                rc = cli_fail(cmd, EXIT_RUNTIME, "--ep: rank %d %s", r, how);
            }
        }
        free(g->children);
        free(g->child_status);
        g->children = NULL, g->child_status = NULL;
    }
    return rc;
}
