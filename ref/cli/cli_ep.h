/**
 * @file cli_ep.h
 * @brief Expert parallelism for the commands that run the model (logits, generate, chat):
 *        one sequence, N processes, the routed experts split over them (paper §3.4; docs/model.md §10).
 *
 * Launch: under torchrun / mpirun (WORLD_SIZE or the MPI launcher's variables, ref/ep/bootstrap.h),
 * or with `--ep N`, which starts ranks 1..N−1 itself on this host (same binary, same flags, stdin
 * from /dev/null) and is rank 0. Rank 0 does everything a single process does: it reads the
 * prompt, runs attention and the dense layers, samples and prints. The other ranks are expert
 * servers (ep_serve): they load the same checkpoint, hold their share of the routed experts and
 * run them for the rows rank 0 dispatches, until rank 0 stops them. Logits equal the one-process
 * ones bit for bit (ref/ep/ep.h), so everything downstream — greedy text, sampling with a seed — is
 * the same too.
 *
 * Transports: the reference always uses TCP (ref/ep/ep_socket.h). `--backend fast` uses NCCL, one GPU
 * per rank (LOCAL_RANK), or `--ep-transport tcp`, which stages the rows through host memory and
 * lets several ranks share a GPU (rank r on GPU LOCAL_RANK mod the GPU count).
 */
#ifndef DSV3_CLI_EP_H
#define DSV3_CLI_EP_H

#include <sys/types.h>

#include "backend.h"
#include "ep/bootstrap.h"
#include "ep/ep.h"
#include "model/model.h"

/** A command's place in an expert-parallel group. */
typedef struct {
    LaunchEnv env;      /**< world_size 1: no expert parallelism */
    int tcp;            /**< --ep-transport tcp (the reference's only transport) */
    double timeout_s;   /**< how long ranks wait for each other to join (DSV3_EP_TIMEOUT, default 300) */
    int spawn_n;        /**< --ep N without a launcher: ranks to start in cli_ep_start (0: none) */
    int argc;           /**< the command line they run: argument count */
    char **argv;        /**< the arguments, argv[0] = the command name (not owned) */
    pid_t *children;    /**< --ep N: the ranks this process started, [world_size]; NULL otherwise (0: reaped) */
    int *child_status;  /**< [world_size] their wait status once reaped */
    int joined;         /**< the CPU group below is up */
    EpTransport t;      /**< the reference's transport (TCP) */
    EpPlan plan;        /**< contiguous expert ranges */
    EpRank rank;        /**< this rank's exchange state; ForwardContext.ep points here */
    const char *plan_path; /**< --ep-plan PLAN.json (NULL: contiguous experts) */
    EpPlan *layer_plans;   /**< [n_layer_plans] its per-layer placement (rank.layer_plans) */
    int n_layer_plans;     /**< entries */
} CliEp;

/** Flags of the group as the command line gave them (cli_ep_group in cli_groups.h parses them). */
typedef struct {
    long n;             /**< --ep N (0: not given) */
    int tcp;            /**< --ep-transport tcp */
    const char *plan;   /**< --ep-plan PLAN.json: an EPLB placement (ref/ep/eplb.h), reference backend only */
} CliEpFlags;

/**
 * Reads the launcher's environment and checks the flags against it. With --ep N and no launcher
 * this process becomes rank 0 of N; cli_ep_start will start the others, running @p argv again
 * (the command's own arguments, argv[0] = the command name; kept, not copied). Returns EXIT_OK
 * or an exit status after printing the error.
 */
int cli_ep_launch(CliEp *g, const char *cmd, const CliEpFlags *f, int argc, char **argv);

/**
 * Rank 0, once the model is loaded and the input checked (so that an error is printed once, by
 * one process): checks that @p m has MoE layers to split and, for --ep N, starts ranks 1..N−1.
 * A no-op without expert parallelism. Returns 0, or -1 with @p err set.
 */
int cli_ep_start(CliEp *g, const Model *m, Err *err);

/**
 * Starts ranks 1..N−1 of a `--ep N`-style self-launched group (same binary and flags, told their
 * rank by the torchrun variables); a no-op when a launcher started them or they run already. For
 * groups that are not expert-parallel (dsv3 train --pipeline): cli_ep_start without its MoE check.
 */
int cli_ep_spawn(CliEp *g, Err *err);

/** 1 if this process is an expert server (rank > 0 of a group). */
int cli_ep_is_server(const CliEp *g);

/** Expert parallelism for the GPU engine: NULL when the group has one rank. */
const LaunchEnv *cli_ep_gpu_env(const CliEp *g);

/**
 * Rank 0 of a group on the reference: joins the TCP group and returns the rank to set as
 * ForwardContext.ep (NULL when the group has one rank, or on error with @p err set).
 */
EpRank *cli_ep_join_ref(CliEp *g, const Model *m, Err *err);

/**
 * Ranks 1..N−1: serves the routed experts of @p m until rank 0 is done, on the GPU engine when
 * @p gpu is given (opened with these options and the group's environment), else on the
 * reference with @p fp8 numerics. Returns an exit status (the error printed).
 */
int cli_ep_serve(CliEp *g, const char *cmd, const Model *m, const GpuEngineOptions *gpu, Fp8Mode fp8);

/**
 * Ends the group: rank 0 tells the reference's expert servers to stop unless an exchange failed
 * (the GPU engine does so in gpu_engine_close, which must come first), the transport is closed,
 * and the ranks this process started are waited for (or, when @p rc is a failure, terminated).
 * Returns @p rc, or EXIT_RUNTIME if a child rank failed.
 */
int cli_ep_finish(CliEp *g, const char *cmd, int rc);

#endif
