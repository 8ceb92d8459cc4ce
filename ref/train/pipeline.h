/**
 * @file pipeline.h
 * @brief Pipeline-parallel schedules (paper §3.2.1, Fig. 4–5, Table 2): 1F1B, ZB1P, DualPipe and
 *        DualPipeV built as per-rank lists of operations, checked, simulated and compared with the
 *        paper's bubble and memory formulas.
 *
 * A model cut into S stages runs M micro-batches. Every micro-batch needs, at every stage s, a
 * forward chunk F (input: stage s−1's output) and a backward chunk (input: stage s+1's input
 * gradient; the last stage starts from its own loss). The backward may be split, as zero-bubble
 * pipelining does (Qi et al. 2023, arXiv 2311.16071), into B_in, the input gradient the previous
 * stage waits for, and W, the weight gradient nobody waits for, so W can fill bubbles later.
 * Chunk times (Table 2's notation):
 *     F      a forward chunk
 *     B      a full backward chunk (input and weight gradients);  B_in = B − W
 *     W      the weight-gradient part of a backward chunk
 *     F&B    a forward and a backward chunk of two micro-batches run as one overlapped pair
 *
 * The four schedules, on PP ranks (PP stages; DualPipeV: 2·PP stages on PP ranks):
 *     1F1B       stage r on rank r; warm-up forwards, then one forward / one backward  (Narayanan 2021)
 *     ZB1P       1F1B with the backward split and W delayed into the cool-down (ZB-H1 of Qi et al.)
 *     DualPipe   rank r holds stage r of direction 0 and stage r of direction 1, which runs from rank
 *                PP−1 to rank 0 (so it holds stages r and PP−1−r of the model: 2 parameter copies);
 *                half the micro-batches enter at each end; F&B pairs overlap (DeepSeek-V3 §3.2.1)
 *     DualPipeV  the "cut-in-half" DualPipe: 2·PP stages on PP ranks in a V (rank r holds stages r
 *                and 2·PP−1−r), one copy of the parameters (Sea AI Lab; DeepSeek's DualPipe repository)
 * and their Table 2 bubbles (idle time of a rank between the first start and the last end):
 *     1F1B       (PP−1)(F+B)                 activations PP      parameters 1×
 *     ZB1P       (PP−1)(F+B−2W)              activations PP      parameters 1×
 *     DualPipe   (PP/2−1)(F&B+B−3W)          activations PP+1    parameters 2×
 *     DualPipeV  (PP/2−1)(F&B+B−3W), PP = stages = 2·ranks
 * The DualPipe step sequence (8 phases per rank) follows the description in DeepSeek's open-source
 * DualPipe repository (github.com/deepseek-ai/DualPipe, dualpipe.py), written anew here in C.
 *
 * The simulator gives every operation a start and an end: an operation starts when its rank is free
 * and every input exists (communication is free unless PipeTimes.comm > 0). It reports a deadlock
 * instead of looping when no rank can proceed. pipe_check verifies a timed schedule on its own:
 * every (stage, micro-batch) has one forward and one backward (or B_in + W), no operation starts
 * before its inputs end, a rank runs one operation at a time.
 */
#ifndef DSV3_PIPELINE_H
#define DSV3_PIPELINE_H

#include <stdio.h>

#include "base/util.h"

/** The schedules. */
typedef enum { PIPE_1F1B, PIPE_ZB1P, PIPE_DUALPIPE, PIPE_DUALPIPEV } PipeKind;

/** What an operation computes. */
typedef enum {
    PIPE_F,   /**< forward chunk */
    PIPE_B,   /**< full backward chunk (input and weight gradients) */
    PIPE_BIN, /**< backward for the input gradient only; its W comes later */
    PIPE_W,   /**< the weight gradient of an earlier PIPE_BIN */
    PIPE_FB,  /**< a forward chunk and a full backward chunk of another micro-batch, overlapped */
} PipeOpKind;

/** One chunk of work: which micro-batch at which stage. */
typedef struct {
    int mb;    /**< micro-batch, 0..M−1 (DualPipe: direction 0 holds 0..M/2−1, direction 1 the rest) */
    int stage; /**< stage along the micro-batch's path, 0..n_stages−1 */
    int dir;   /**< direction of the path (DualPipe: 0 enters at rank 0, 1 at rank PP−1; else 0) */
    int chunk; /**< which of the rank's stage copies it runs on (0 or 1) */
} PipeTask;

/** One operation of a rank's list. */
typedef struct {
    PipeOpKind kind; /**< what it computes */
    PipeTask f;      /**< the forward part (PIPE_F, PIPE_FB) */
    PipeTask b;      /**< the backward part (PIPE_B, PIPE_BIN, PIPE_W, PIPE_FB) */
    double start;    /**< simulated start (pipe_simulate) */
    double end;      /**< simulated end */
} PipeOp;

/** A schedule: every rank's operations in the order it runs them. */
typedef struct {
    PipeKind kind;    /**< which schedule */
    int n_ranks;      /**< PP ranks (processes, devices) */
    int n_stages;     /**< stages along one micro-batch's path (DualPipeV: 2·n_ranks) */
    int n_mb;         /**< micro-batches M */
    int n_dirs;       /**< 2 for DualPipe, else 1 */
    int chunks;       /**< stage copies per rank: 1 (1F1B, ZB1P) or 2 */
    int *n_ops;       /**< [n_ranks] operations per rank */
    PipeOp **ops;     /**< [n_ranks][n_ops[r]] */
} PipeSchedule;

/** Chunk times of the simulation. */
typedef struct {
    double f;    /**< F */
    double b;    /**< B, the full backward */
    double w;    /**< W (B_in takes b − w) */
    double fb;   /**< F&B, the overlapped pair */
    double comm; /**< latency of sending a chunk's output to another rank (0: Table 2's assumption) */
} PipeTimes;

/** What a simulated schedule costs. */
typedef struct {
    double makespan;      /**< last end − first start */
    double bubble;        /**< the largest idle time of a rank (makespan − its busy time) */
    double bubble_min;    /**< the smallest idle time of a rank */
    double busy;          /**< busy time of the rank with the largest bubble */
    double bubble_frac;   /**< total idle / (n_ranks · makespan) */
    int peak_act;         /**< the most activations any rank holds (micro-batch chunks: +1 when a
                               forward starts, −1 when its backward's input gradient is done) */
    int peak_act_rank0;   /**< the same on rank 0 */
    int param_copies;     /**< stage copies per rank (1 or 2; Table 2's "parameter per device") */
} PipeStats;

/** "1f1b", "zb1p", "dualpipe", "dualpipev" → *kind; -1 with a message otherwise. */
int pipe_kind_parse(const char *name, PipeKind *kind, Err *err);
/** The name of a schedule. */
const char *pipe_kind_name(PipeKind kind);

/**
 * Builds schedule @p kind for @p n_ranks ranks and @p n_mb micro-batches. Requirements (an error
 * says which fails): ranks ≥ 1; DualPipe: ranks even, M even and M ≥ 2·ranks; DualPipeV: M ≥ 2·ranks;
 * 1F1B/ZB1P: M ≥ 1.
 */
int pipe_build(PipeSchedule *s, PipeKind kind, int n_ranks, int n_mb, Err *err);
/** Frees a schedule; safe on a zeroed struct. */
void pipe_free(PipeSchedule *s);

/** The rank that runs stage @p stage of direction @p dir, and the copy (chunk) it uses. */
int pipe_rank_of(const PipeSchedule *s, int dir, int stage, int *chunk);

/** The stage (and direction, in @p dir) that rank @p rank runs on its copy @p chunk; −1 if it has none. */
int pipe_chunk_stage(const PipeSchedule *s, int rank, int chunk, int *dir);

/**
 * Gives every operation its start and end for chunk times @p t (op_time, when not NULL, overrides
 * the time of each operation: called with the rank and the operation). Returns -1 with a message
 * naming the stuck ranks if the schedule deadlocks.
 */
int pipe_simulate(PipeSchedule *s, const PipeTimes *t, double (*op_time)(void *ctx, int rank, const PipeOp *op),
                  void *ctx, Err *err);

/** Verifies a simulated schedule (see the file comment); -1 with the first violation. */
int pipe_check(const PipeSchedule *s, Err *err);

/** Bubble, memory and parameter statistics of a simulated schedule. */
void pipe_stats(const PipeSchedule *s, PipeStats *st);

/**
 * Table 2's bubble of schedule @p kind on @p n_ranks ranks for chunk times @p t, with its
 * activations per rank and parameter copies per rank in *act and *params (may be NULL).
 */
double pipe_formula(PipeKind kind, int n_ranks, const PipeTimes *t, int *act, int *params);

/** The time one operation takes at chunk times @p t. */
double pipe_op_time(const PipeOp *op, const PipeTimes *t);

/**
 * Writes a gnuplot script that draws the simulated timeline of @p s as PNG @p png: one row per rank,
 * forward / backward / weight chunks in their own colours, direction 1 in darker shades, each box
 * labelled with its micro-batch (the style of the paper's Fig. 5). The script carries its data.
 */
int pipe_write_gnuplot(FILE *f, const PipeSchedule *s, const char *png, const char *title, Err *err);

/** 0 if @p t are chunk times a schedule can run with (non-negative, W ≤ B); else -1 saying why. */
int pipe_times_check(const PipeTimes *t, Err *err);

/**
 * Builds, simulates and checks schedule @p kind for Table 2's PP = @p pp stages (DualPipeV: on
 * pp/2 ranks, so every schedule has the same number of stages) and @p n_mb micro-batches.
 */
int pipe_run(PipeSchedule *s, PipeKind kind, int pp, int n_mb, const PipeTimes *t, PipeStats *st, Err *err);

/** Prints a simulated schedule's bubble, memory and parameters beside Table 2's formulas. */
void pipe_print_summary(FILE *f, const PipeSchedule *s, const PipeStats *st, const PipeTimes *t);

/**
 * Draws the timeline into PNG @p png by running gnuplot (Debian gnuplot-nox) on pipe_write_gnuplot's
 * script, titled @p title (NULL: the schedule's name and size). The file appears complete or not at all.
 */
int pipe_draw_png(const PipeSchedule *s, const char *png, const char *title, Err *err);

/** Prints one line per operation: rank, start, end, op, micro-batch, stage, direction. */
void pipe_print_events(FILE *f, const PipeSchedule *s);

#endif
