/**
 * @file cli_pipeline.h
 * @brief `dsv3 train --pipeline N --schedule S`: N processes training one model pipeline-parallel
 *        (ref/train/train_pipeline.h) over the TCP transport (ref/ep/ep_socket.h), launched like
 *        `--ep N` (this process is rank 0 and starts the others) or by torchrun / mpirun.
 *
 * Every rank reads the same data, runs its part of each step's schedule and takes the same
 * optimizer step; rank 0 alone prints, validates, logs and saves checkpoints. At the end rank 0
 * reports the measured idle time of the schedule against the simulator's prediction for the
 * chunk times it measured (docs/pipeline.md).
 */
#ifndef DSV3_CLI_PIPELINE_H
#define DSV3_CLI_PIPELINE_H

#include <stdio.h>

#include "cli_ep.h"
#include "train/train_pipeline.h"

/** A training command's place in a pipeline group. */
typedef struct {
    CliEp grp;          /**< the launch (world size, rank, the ranks this one started) */
    EpTransport t;      /**< TCP connections */
    MsgLink link;       /**< messages over them */
    PipeTrainer pt;     /**< this rank's pipelined trainer */
    int on;             /**< pt is ready */
    int steps;          /**< steps timed (after the first) */
    double idle;        /**< sum over the timed steps of the measured idle fraction */
    double idle_sim;    /**< and of the simulated one */
    double bubble;      /**< sum of the measured largest bubble (seconds) */
    double bubble_sim;  /**< and of the simulated one */
    PipeTimes mean;     /**< sums of the measured chunk times */
    double mean_bin;    /**< and of the input-only backward */
} CliPipe;

/** Reads the launcher's environment for `--pipeline N` (before anything else). EXIT_OK or a printed error's status. */
int cli_pipe_launch(CliPipe *p, const char *cmd, long n, int argc, char **argv);

/** This process's rank (0 without a group). */
int cli_pipe_rank(const CliPipe *p);

/**
 * Rank 0 once the run's inputs are checked: checks the schedule against the model and batch,
 * starts the other ranks; every rank then connects and prepares its pipelined trainer.
 */
int cli_pipe_start(CliPipe *p, Trainer *tr, PipeKind kind, Err *err);

/** After a step: adds its measured and predicted timeline to the report (the first step is warm-up). */
void cli_pipe_after_step(CliPipe *p);

/**
 * Rank 0: the mean measured idle fraction against the simulator's, with the chunk times; with
 * @p png, the last step's measured timeline drawn as PNG (gnuplot). Returns 0 or -1 (@p err).
 */
int cli_pipe_report(const CliPipe *p, FILE *f, const char *png, Err *err);

/** Closes the group and waits for the ranks this process started; returns @p rc or a child's failure. */
int cli_pipe_finish(CliPipe *p, const char *cmd, int rc);

#endif
