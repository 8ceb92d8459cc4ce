/**
 * @file model_gpu.h
 * @brief The whole model on one GPU: the fast/ counterpart of ref/model/model.h, plus what serving
 *        needs that the reference does not (a paged latent KV cache shared by many sequences,
 *        batches that mix prefill chunks and decode tokens).
 *
 * Side by side with the reference (docs/architecture.md):
 *
 *   ref/model/model.c    runstate_init, model_forward                 fast/model_gpu.c   fast_runstate_init, fast_model_forward
 *   ref/model/mtp.c      mtp_forward                                  fast/model_gpu.c   fast_mtp_forward
 *   ref/model/model_load.c  model_load (binds the tensor table)       fast/weights_gpu.c fast_model_upload (walks it again to upload)
 *   ref/model/kvcache.c  one contiguous cache per sequence            fast/kvcache_gpu.c 64-token pages, one block table per sequence
 *   ref/model/block.c    block_forward                                fast/block_gpu.c   fast_block_forward (+ the dense FFN)
 *   ref/model/mla.c      mla_forward (absorbed form)                  fast/mla_gpu.c     fast_mla_forward
 *   ref/model/moe.c      moe_forward                                  fast/moe_gpu.c     fast_moe_forward
 *   ref/model/linear.c   linear_forward (dequant | w8a8)              fast/linear_gpu.c  fast_linear_forward
 *
 * Weights live in the same ::Weights struct as the reference's, with device pointers: a
 * Tensor's data and scale_inv point into one device allocation, FP8 stays FP8 with its scales,
 * BF16 stays BF16, 1-D vectors are FP32. Two things are laid out for the GPU at upload: the
 * routed experts of each MoE layer are stacked [E][rows][cols] for the grouped GEMM, and each
 * layer's kv_b_proj is split and dequantized into W_UK [H][Dn][Dc] and W_UV [H][Dv][Dc] FP32
 * for the absorbed attention (as the official code reads it dequantized, docs/model.md §3.3).
 *
 * Numerics: FP32 residual stream and activations; FP8 linears in W8A8 (the official
 * act_quant + fp8_gemm) by default, or dequant (FP32 × dequantized weights, slower, the
 * reference's default) with --fp8 dequant; BF16/F32 linears in FP32. The latent cache is FP32
 * (exact) or BF16 (what the tensor-core MLA kernel reads; needs Dc = 512, Dr = 64, H % 64 = 0).
 */
#ifndef DSV3_FAST_MODEL_GPU_H
#define DSV3_FAST_MODEL_GPU_H

#include <stdio.h>

#include "ep/ep.h"
#include "fast.h"
#include "model/linear.h"
#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/** What the upload lays out per decoder layer beyond the ::Weights tensors. */
typedef struct {
    Tensor w1;           /**< MoE: routed gate_proj stacked [E][Ie][D] (scales [E][..][..]) */
    Tensor w3;           /**< MoE: routed up_proj stacked [E][Ie][D] */
    Tensor w2;           /**< MoE: routed down_proj stacked [E][D][Ie] */
    float *w_uk;         /**< [H][Dn][Dc] FP32: W_UK, dequantized from kv_b_proj */
    float *w_uv;         /**< [H][Dv][Dc] FP32: W_UV */
} FastLayer;

/** Device memory the GPU path needs, computed before anything is allocated. */
typedef struct {
    uint64_t weights;    /**< uploaded tensors, stacked experts and W_UK/W_UV included */
    uint64_t kv_cache;   /**< the paged latent cache */
    uint64_t workspace;  /**< activations and scratch of one forward of max_T tokens */
    uint64_t total;      /**< the sum */
    uint64_t free;       /**< cudaMemGetInfo's free bytes when planned */
    uint64_t device_total; /**< the device's memory */
} FastPlan;

/** Options of the GPU path (the CLI's flags). */
typedef struct {
    Fp8Mode fp8;         /**< FP8_W8A8 (default) or FP8_DEQUANT */
    int kv_bf16;         /**< 1: BF16 latent cache (default where the MLA kernel applies), 0: FP32 */
    int64_t max_T;       /**< tokens one forward may carry (all sequences together) */
    int64_t max_seq;     /**< positions one sequence may reach */
    int max_seqs;        /**< sequences that may be open at once */
    int64_t kv_blocks;   /**< 64-token cache blocks; 0 = max_seqs · ceil(max_seq/64) */
    int progress;        /**< 1: a progress bar on the log while uploading */
    int mtp;             /**< 1: upload MTP module 0 too (speculative decoding), if the checkpoint has it */
    const EpPlan *ep_plan; /**< expert parallelism: which rank holds which routed expert (NULL: all local) */
    int ep_rank;         /**< this process's rank in ep_plan */
    int cuda_graphs;     /**< 1: capture each batch shape's device work once and replay it (not with EP) */
} FastOptions;

/** A model uploaded to the GPU. */
typedef struct {
    const Model *host;   /**< the reference model it came from (config, rope, mapped tensors); not owned */
    Config config;       /**< copy of host->config */
    Weights w;           /**< device pointers, same tensor table as the reference */
    FastLayer *layers;   /**< [num_hidden_layers + n_mtp] */
    FastDevice dev;      /**< the device */
    int fp8_tc;          /**< FP8 tensor-core GEMMs available (sm_89+) */
    Fp8Mode fp8;         /**< numerics of FP8 linears */
    void *mem;           /**< the one device allocation behind all weights */
    uint64_t bytes;      /**< its size */
    cudaStream_t stream; /**< where everything is enqueued */
    const EpPlan *ep_plan; /**< expert parallelism (NULL: every routed expert is local) */
    int ep_rank;         /**< this rank */
    int n_local;         /**< routed experts uploaded per MoE layer (E without EP) */
    int *local_of;       /**< host [E]: slot of expert e in the stacked tensors, −1 if held elsewhere */
} FastModel;

/** The paged latent cache of every layer, shared by all sequences. */
typedef struct {
    int n_layers;        /**< layers (the main model's) */
    int row;             /**< Dc + Dr values per token per layer */
    int page;            /**< tokens per block (64) */
    FastDType dtype;     /**< FAST_F32 or FAST_BF16 */
    int64_t num_blocks;  /**< blocks in the pool */
    void *mem;           /**< device [n_layers][num_blocks][page][row] */
    uint64_t bytes;      /**< its size */
    int max_seqs;        /**< sequence slots */
    int max_blocks;      /**< blocks one sequence may hold: ceil(max_seq/page) */
    int64_t max_seq;     /**< positions one sequence may hold */
    int *free_blocks;    /**< host: stack of free block ids */
    int64_t n_free;      /**< its depth */
    int *open;           /**< host [max_seqs]: 1 if the slot is in use */
    int64_t *len;        /**< host [max_seqs]: positions written */
    int *n_blocks;       /**< host [max_seqs]: blocks held */
    int *blocks;         /**< host [max_seqs][max_blocks]: the block table */
} FastKVCache;

/** One forward's batch: chunks of several sequences, flattened in order. */
typedef struct {
    int n_seqs;            /**< chunks (one per sequence) */
    const int *seq;        /**< [n_seqs] sequence ids from fast_kv_open */
    const int *n_tokens;   /**< [n_seqs] tokens of each chunk (≥ 1) */
    const int *ids;        /**< [Σ n_tokens] token ids, chunk after chunk */
    int all_logits;        /**< 1: logits of every token; 0: of the last token of each chunk */
} FastBatch;

/** Scratch of forwards of up to max_T tokens (device buffers carved from one allocation). */
typedef struct FastRunState FastRunState;

/** 1 if @p c has DeepSeek-V3's attention shapes, which the tensor-core MLA kernel takes (Dc = 512,
 *  Dr = 64, heads a multiple of 64): where `--kv-cache auto` picks BF16. */
int fast_mla_kernel_shapes(const Config *c);

/** Device bytes a FastRunState for @p opt needs (the plan's workspace). */
uint64_t fast_runstate_bytes(const FastModel *fm, const FastOptions *opt);

/**
 * Computes the plan for @p m under @p opt on the current device: weights (as uploaded), KV
 * cache, workspace; fills free/device_total from cudaMemGetInfo. Returns 0, or -1 (no device).
 */
int fast_plan(FastPlan *plan, const Model *m, const FastOptions *opt, Err *err);

/** Prints the plan, one line per item, to @p log. */
void fast_plan_print(const FastPlan *plan, FILE *log);

/**
 * Checks the plan against the device's free memory (a clear error before anything is
 * allocated), then uploads every tensor of @p m (mapped safetensors → device), printing a
 * progress bar on @p log. @p m must outlive @p fm.
 */
int fast_model_upload(FastModel *fm, const Model *m, const FastOptions *opt, FILE *log, Err *err);

/** Frees the device weights and the stream. Safe on a zeroed struct. */
void fast_model_free(FastModel *fm);

/** Device bytes of a cache pool of @p n_layers layers for @p opt (what fast_kv_init_layers allocates). */
uint64_t fast_kv_bytes(const Config *c, const FastOptions *opt, int n_layers);

/** Allocates the cache pool of the main model's layers for @p opt (max_seqs sequences of up to max_seq positions). */
int fast_kv_init(FastKVCache *kv, const FastModel *fm, const FastOptions *opt, Err *err);
/** The same for @p n_layers layers (1 for the MTP module's cache). */
int fast_kv_init_layers(FastKVCache *kv, const FastModel *fm, const FastOptions *opt, int n_layers, Err *err);
/** Frees the cache. Safe on a zeroed struct. */
void fast_kv_free(FastKVCache *kv);
/** Opens an empty sequence; returns its id (≥ 0) or -1 when every slot is in use. */
int fast_kv_open(FastKVCache *kv, Err *err);
/** Closes a sequence and returns its blocks to the pool. */
void fast_kv_close(FastKVCache *kv, int seq);
/** Positions written for @p seq. */
int64_t fast_kv_len(const FastKVCache *kv, int seq);
/** Forgets every position ≥ @p len of @p seq (speculative rollback; blocks are kept). */
void fast_kv_truncate(FastKVCache *kv, int seq, int64_t len);

/** Allocates the scratch of forwards of up to opt->max_T tokens. */
int fast_runstate_init(FastRunState **s, const FastModel *fm, const FastOptions *opt, Err *err);
/** Frees it (and its CUDA graphs); safe on NULL. */
void fast_runstate_free(FastRunState *s);

/** Forwards replayed from CUDA graphs and graphs captured so far (both 0 when graphs are off). */
void fast_runstate_graph_stats(const FastRunState *s, uint64_t *launches, uint64_t *captures);

/**
 * Runs one batch (Σ n_tokens ≤ max_T): every chunk continues its sequence at its current
 * length, which then grows by n_tokens. Outputs (host memory; each may be NULL):
 *   logits [rows][V]  rows = Σ n_tokens if all_logits, else n_seqs (last token of each chunk);
 *   argmax [rows]     the greedy choice of each of those rows (computed on the device);
 *   hidden [Σ n][D]   the residual stream after the last block; normed [Σ n][D] after the final norm.
 * Synchronizes the stream before returning. Errors: a batch too large, a sequence not open,
 * out of cache blocks or positions, a bad token id, a CUDA failure.
 */
int fast_model_forward(const FastModel *fm, FastRunState *s, FastKVCache *kv, const FastBatch *b, float *logits,
                       int *argmax, float *hidden, float *normed, Err *err);

/** One rank's expert-parallel state (fast/ep_gpu.c). */
typedef struct FastEp FastEp;

/**
 * Joins rank @p rank of transport @p t for a model uploaded with FastOptions.ep_plan (whose
 * experts it must hold), for forwards of up to @p max_T tokens per rank.
 */
int fast_ep_init(FastEp **ep, const FastModel *fm, EpTransport *t, int rank, int64_t max_T, Err *err);
/** Frees it; safe on NULL. */
void fast_ep_free(FastEp *ep);
/** Bytes this rank has sent in dispatches and combines so far. */
uint64_t fast_ep_dispatched_bytes(const FastEp *ep);
/**
 * Makes every MoE layer of forwards through @p s expert-parallel over @p ep (NULL: local again).
 * Collective from then on: every rank must run the same sequence of forwards (each with ≥ 1 token).
 */
void fast_runstate_set_ep(FastRunState *s, FastEp *ep);

/**
 * A rank without tokens of its own (ref ep_serve): runs its routed experts for whatever MoE layer
 * the active rank announces, until that rank calls fast_ep_stop. Collective.
 */
int fast_ep_serve(const FastModel *fm, FastRunState *s, FastEp *ep, Err *err);
/** Ends the expert servers' fast_ep_serve (announces EP_STOP). Collective. */
int fast_ep_stop(FastEp *ep, Err *err);

/**
 * MTP module 0 (docs/model.md §7.2; ref mtp_forward) over a batch of chunks of its own cache @p mtp_kv
 * (one layer: fast_kv_init_layers(.., 1, ..)): b->ids are the NEXT tokens x_{p+1}, @p h (host
 * [Σ n][D]) the main model's post-norm hiddens at the same positions p. Outputs like
 * fast_model_forward: logits / argmax of the draft for x_{p+2}, normed = shared_head.norm output
 * (what multi-token drafting feeds back as the next h). Needs FastOptions.mtp at upload.
 */
int fast_mtp_forward(const FastModel *fm, FastRunState *s, FastKVCache *mtp_kv, const FastBatch *b, const float *h,
                     float *logits, int *argmax, float *normed, Err *err);

#ifdef __cplusplus
}
#endif

#endif /* DSV3_FAST_MODEL_GPU_H */
