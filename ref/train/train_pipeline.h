/**
 * @file train_pipeline.h
 * @brief Pipeline-parallel training over N ranks (paper §3.2.1): the model's decoder layers cut
 *        into stages, each rank running the operations its schedule (pipeline.h) lists — forward
 *        chunks, backward chunks, input-only backwards whose weight gradients (W) run later, and
 *        DualPipe's forward/backward pairs — with activations and their gradients travelling as
 *        tagged messages (base/msg.h: threads in a test, processes over TCP in `dsv3 train --pipeline`).
 *
 * Cut: the L decoder layers in S contiguous stages (sizes differ by at most one; S = the schedule's
 * stages: N for 1F1B/ZB1P/DualPipe, 2N for DualPipeV); stage 0 also embeds the tokens, stage S−1
 * also runs the final norm, the heads, the MTP depths and the losses. A micro-batch is one
 * sequence of the step's batch (M = B sequences), so the step is trainer_grad's, split up:
 *     forward at stage s:   h ← embed (s = 0) or the h stage s−1 sent; its blocks; send h to s+1
 *                           (the last stage: train_head_forward, the losses)
 *     backward at stage s:  dh ← train_head_backward (last) or what stage s+1 sent; its blocks'
 *                           backward; send dh to s−1 (stage 0: the embedding's gradient)
 *     input-only backward:  the same chain with every weight gradient skipped (the blocks' ops
 *                           take a gradient view without memory), keeping what the weight
 *                           gradients need: the blocks' activation gradients, their dh_out and dh_mid
 *     W:                    the blocks' weight gradients from those (dW += dyᵀx of every linear,
 *                           the norms' weights), and stage 0's embedding gradient
 * The head, final norm and MTP modules compute their weight gradients inside the backward even
 * when it is input-only (they are the loss end; W covers the decoder blocks and the embedding).
 * The MTP modules' embedding-gradient rows are sent to stage 0 and added there, just before the
 * main embedding's, the order trainer_grad uses.
 *
 * Every rank keeps the whole model's parameters, gradients and optimizer state (this is a
 * demonstration on a tiny model, not a memory saving) but computes only its stages. After the
 * schedule, the gradients are summed over the ranks in rank order (msg_allreduce_f32), the
 * per-micro-batch losses and the expert loads likewise, and every rank then takes the same
 * optimizer step. Bit-identity with the one-process step:
 *  - the loss: always (each micro-batch's losses are computed once and summed in micro-batch order);
 *  - the gradients: whenever each stage has one copy (1F1B, ZB1P, DualPipeV): every tensor's
 *    gradient accumulates on one rank, micro-batch after micro-batch, through the same functions
 *    (the executor checks that a stage's weight gradients run in micro-batch order), and adding
 *    the other ranks' zeros is exact. DualPipe holds every stage twice (direction 0 for the first
 *    M/2 micro-batches, direction 1 for the rest): its gradient is the sum of two partial sums,
 *    fl(Σ_{b<M/2} + Σ_{b≥M/2}) instead of one running sum, a difference of a few units in the last
 *    place (tests/test_train_pipeline.c measures it).
 */
#ifndef DSV3_TRAIN_PIPELINE_H
#define DSV3_TRAIN_PIPELINE_H

#include "base/msg.h"
#include "pipeline.h"
#include "train.h"

struct PipeSlot;

/** One stage copy on this rank and the activation slots of its micro-batches in flight. */
typedef struct {
    int stage;               /**< its stage (−1: the rank has no such copy) */
    int dir;                 /**< its direction */
    int first;               /**< its first decoder layer */
    int end;                 /**< one past its last decoder layer */
    int n_slots;             /**< slots allocated */
    struct PipeSlot **slots; /**< [n_slots] */
    int last_w;              /**< the last micro-batch whose weight gradients were added (order check) */
} PipeChunk;

/** How the last step's operations took their time, measured and as the simulator predicts it. */
typedef struct {
    PipeStats measured;     /**< from the operations' real start and end times */
    PipeStats predicted;    /**< the simulator with the measured mean time of each operation kind on each
                                 rank and stage copy (the stages need not be equally heavy) */
    PipeTimes mean;         /**< the means of each kind over all ranks (f, b: full backward, w, fb) */
    double mean_bin;        /**< mean input-only backward */
} PipeTiming;

/** One rank of a pipelined trainer. */
typedef struct {
    Trainer *tr;            /**< this rank's trainer (whole model, optimizer); not owned */
    MsgLink *link;          /**< the group; not owned */
    PipeSchedule sched;     /**< the schedule, M = tr->opt.batch */
    int *stage_first;       /**< [n_stages+1] the layers of each stage */
    PipeChunk chunk[2];     /**< this rank's stage copies */
    LayerWeights *nullg;    /**< [L] gradient views without memory: the input-only backward */
    FFNWeights *null_experts; /**< [E] their experts */
    float *dh;              /**< [T][D] the gradient travelling down a stage */
    float *emb_rows;        /**< [n_mtp][T][D] MTP embedding-gradient rows (sent / received) */
    double *rec;            /**< the step's per-micro-batch losses and the loads, summed over the ranks */
    size_t n_rec;           /**< doubles in rec */
    double *times;          /**< [Σ ops][2] start and end of every rank's operations in the last step */
    int *op_base;           /**< [n_ranks+1] where each rank's operations start in times */
    int steps;              /**< steps run */
} PipeTrainer;

/** Whether trainer @p tr can run schedule @p kind over @p n_ranks ranks (a layer per stage, a batch it accepts). */
int pipe_trainer_check(const Trainer *tr, PipeKind kind, int n_ranks, Err *err);

/**
 * Prepares rank link->rank of a pipelined trainer running schedule @p kind over link->nranks
 * ranks for trainer @p tr (whose batch is the number of micro-batches). Checks that the model
 * has a layer for every stage and that the schedule accepts the batch.
 */
int pipe_trainer_init(PipeTrainer *pt, Trainer *tr, PipeKind kind, MsgLink *link, Err *err);
/** Frees the trainer's buffers (not the Trainer or the link); safe on a zeroed struct. */
void pipe_trainer_free(PipeTrainer *pt);

/**
 * trainer_grad over the pipeline: the gradients of the mean loss of @p seqs [B][T+1] (every rank
 * passes the same batch), the step's expert loads and the losses, on every rank. Collective.
 */
int pipe_trainer_grad(PipeTrainer *pt, const int *seqs, TrainLosses *out, Err *err);

/** A copy of the schedule with the last step's measured start and end times (free with pipe_free). */
int pipe_trainer_measured(const PipeTrainer *pt, PipeSchedule *out, Err *err);

/** The last step's measured timeline against the simulator's for the same chunk times. */
int pipe_trainer_timing(const PipeTrainer *pt, PipeTiming *t, Err *err);

#endif
