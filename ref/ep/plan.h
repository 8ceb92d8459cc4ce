/**
 * @file plan.h
 * @brief Deployment arithmetic for serving a model across GPUs (paper §3.4; docs/model.md §10):
 *        weight and KV-cache memory per GPU, all-to-all bytes per token per MoE layer, and
 *        the expected time of a decode step, all computed from the Config and the tensor table.
 */
#ifndef DSV3_PLAN_H
#define DSV3_PLAN_H

#include "base/util.h"
#include "eplb.h"
#include "model/config.h"

/** A way to lay the model out on GPUs. */
typedef struct {
    const char *name;       /**< label, e.g. "prefill unit (paper)" */
    int gpus;               /**< GPUs in the unit */
    int gpus_per_node;      /**< GPUs sharing NVLink */
    int attn_tp;            /**< tensor parallelism of attention (heads split); DP = gpus / attn_tp */
    int dense_tp;           /**< tensor parallelism of the dense FFN layers (1 = replicated) */
    int ep;                 /**< expert-parallel ranks holding routed experts */
    int redundant;          /**< extra copies of hot experts per layer (spread over the EP ranks) */
    int shared_on_ep;       /**< 1: every EP rank also holds the shared expert; 0: dedicated GPUs do */
    double hbm_gb;          /**< memory per GPU, GB (1e9 bytes) */
    double hbm_tbs;         /**< HBM bandwidth per GPU, TB/s */
    double nvlink_gbs;      /**< NVLink bandwidth per GPU per direction, GB/s */
    double ib_gbs;          /**< InfiniBand bandwidth per GPU per direction, GB/s */
    double fp8_tflops;      /**< dense FP8 tensor throughput per GPU, TFLOP/s */
    int kv_fp8;             /**< 1: the FP8 latent cache (--kv-cache fp8, 656 B per token per layer for V3); 0: BF16 */
} Deployment;

/** What a deployment costs, per GPU unless said otherwise. */
typedef struct {
    double weight_bytes;        /**< resident weights per GPU (the fullest GPU) */
    double experts_per_gpu;     /**< routed experts (incl. redundant copies) per EP rank and layer, on the fullest rank */
    double kv_bytes_per_token;  /**< latent cache per token, all layers (c_kv + k_pe; BF16, or FP8 with kv_fp8) */
    double kv_tokens;           /**< tokens of KV cache that fit beside the weights (90 % of HBM) */
    double dispatch_bytes;      /**< per token per MoE layer: FP8 hidden + 1×128 scales to each expert */
    double combine_bytes;       /**< per token per MoE layer: BF16 expert outputs back */
    double remote_fraction;     /**< share of a token's experts that sit on another node */
    double step_compute_s;      /**< decode step: HBM-bound time (weights + KV read) */
    double step_comm_s;         /**< decode step: all-to-all time over NVLink/IB */
    double step_s;              /**< decode step time, compute and communication overlapped */
    double tokens_per_s;        /**< decode throughput of the whole unit */
    int fits;                   /**< weights leave room for a KV cache */
    int kv_fits;                /**< and that room holds batch × ctx tokens (the step figures mean something) */
    double max_batch;           /**< sequences of ctx tokens per attention rank the room holds */
    double load_imbalance;      /**< max / mean tokens an EP rank receives (1: even; from an EPLB plan) */
    double load_imbalance_contiguous; /**< the same for contiguous experts without copies (EPLB plans) */
} PlanResult;

/**
 * Evaluates @p d for model @p c with @p batch sequences per attention-DP rank, each @p ctx
 * tokens long (KV read per step), counting the MTP module iff @p with_mtp.
 */
void plan_evaluate(const Config *c, const Deployment *d, int batch, int ctx, int with_mtp, PlanResult *r);

/**
 * plan_evaluate for the deployment an EPLB plan (ref/ep/eplb.h) describes: its GPUs, nodes and
 * redundant copies on the hardware of @p hw; the all-to-all time grows by the plan's load
 * imbalance (mean over its layers of max/mean GPU load), since the busiest rank finishes last.
 * Fills @p d with that deployment. -1 if the plan does not fit the model (experts).
 */
int plan_evaluate_eplb(const Config *c, const Deployment *hw, const EplbPlan *p, int batch, int ctx, int with_mtp,
                       Deployment *d, PlanResult *r, Err *err);

/** The built-in deployments: the paper's prefill and decode units, 8×H200, 16×H100. n set to count. */
const Deployment *plan_presets(int *n);

#endif
