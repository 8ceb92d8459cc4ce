/**
 * @file backend.h
 * @brief `--backend fast`: the GPU engine as the CLI sees it — one sequence, the same contract as
 *        model_forward (chunks continue at the current length; logits of the last positions).
 *
 * Implemented in fast/backend_gpu.c (the whole model on one GPU, fast/model_gpu.h) when the
 * build has CUDA; otherwise ref/backend_stub.c, whose gpu_engine_open fails with a clear message.
 * The reference never calls it: only the commands (logits, generate, chat) do, so ref/ does not
 * depend on fast/.
 */
#ifndef DSV3_BACKEND_H
#define DSV3_BACKEND_H

#include <stdio.h>

#include "ep/bootstrap.h"
#include "model/linear.h"
#include "model/model.h"

/** The GPU backend linked into this binary, in words (e.g. "CUDA fast backend"), or NULL when there is none. */
const char *gpu_backend_name(void);

/** A model uploaded to a GPU with one open sequence. */
typedef struct GpuEngine GpuEngine;

/** Settings of the GPU engine. */
typedef struct {
    Fp8Mode fp8;      /**< FP8 linears: FP8_W8A8 (what GPUs run) or FP8_DEQUANT */
    int kv_bf16;      /**< -1: automatic (BF16 where the tensor-core MLA kernel applies), 0: FP32, 1: BF16, 2: FP8 (refused for now) */
    int64_t max_T;    /**< tokens per forward */
    int64_t ctx;      /**< positions of the sequence */
    int mtp;          /**< 1: also upload MTP module 0 (gpu_engine_mtp, speculative decoding) */
    const LaunchEnv *ep; /**< expert parallelism over ep->world_size processes (NULL: one GPU holds every expert) */
    int ep_tcp;       /**< 1: the TCP transport, rows staged through host memory; 0: NCCL */
    double ep_timeout_s; /**< how long ranks wait for each other to join */
    int max_seqs;     /**< sequences the engine holds at once (gpu_engine_forward_seqs); 0 or 1: one */
} GpuEngineOptions;

/** One sequence's piece of a multi-sequence forward. */
typedef struct {
    int seq;          /**< which of the engine's max_seqs sequences (0 is the one gpu_engine_forward runs) */
    int64_t pos0;     /**< its position of ids[0]; what the cache held from there on is forgotten */
    int n;            /**< ids, ≥ 1 */
    const int *ids;   /**< the tokens */
} GpuChunk;

/**
 * Uploads @p m (which must outlive the engine), printing the memory plan and progress on @p log.
 * With opt->ep (world_size > 1) the engine joins the group (cli_ep.h): it holds only its rank's
 * routed experts; rank 0 runs forwards as usual, every MoE layer dispatching over the group, and
 * tells the other ranks to stop when it is closed; the other ranks call gpu_engine_serve.
 */
int gpu_engine_open(GpuEngine **e, const Model *m, const GpuEngineOptions *opt, FILE *log, Err *err);

/**
 * Runs @p T tokens (any T: split into max_T pieces) at positions pos0.. of the sequence; what the
 * cache held at positions ≥ pos0 is forgotten first (pos0 may not exceed the positions written),
 * so a caller that rolls back (speculative decoding) just passes its own position count.
 * logits [n_logits][V] of the last n_logits positions (n_logits = 0, 1 or T; may be NULL),
 * hidden / normed [T][D] (may be NULL).
 */
int gpu_engine_forward(GpuEngine *e, int64_t pos0, const int *ids, int64_t T, float *logits, int64_t n_logits,
                       float *hidden, float *normed, Err *err);

/**
 * MTP module 0 on the GPU (ref mtp_forward) over rows at positions pos0.. of its own cache: row i
 * pairs the main model's post-norm hidden @p h [T][D] at position pos0+i with the next token
 * @p next_ids[i]. logits [n_logits][V] (0, 1 or T), out_normed [T][D] (may be NULL).
 */
int gpu_engine_mtp(GpuEngine *e, int64_t pos0, const int *next_ids, const float *h, int64_t T, float *logits,
                   int64_t n_logits, float *out_normed, Err *err);

/**
 * Several sequences in one forward (continuous batching, ref/generate/batch.h): chunk i runs its ids at
 * positions pos0.. of its sequence; Σ n ≤ max_T, each sequence at most once. logits [n_chunks][V]
 * of each chunk's last token.
 */
int gpu_engine_forward_seqs(GpuEngine *e, const GpuChunk *chunks, int n_chunks, float *logits, Err *err);

/** Ranks 1.. of an expert-parallel engine: serve the routed experts until rank 0 closes its engine. */
int gpu_engine_serve(GpuEngine *e, Err *err);

/** One line naming the device and the engine's numerics, for logs. */
const char *gpu_engine_describe(const GpuEngine *e);

/** Frees everything (rank 0 of an expert-parallel engine first stops the other ranks); safe on NULL. */
void gpu_engine_close(GpuEngine *e);

#endif /* DSV3_BACKEND_H */
