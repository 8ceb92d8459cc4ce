/**
 * @file context.h
 * @brief What every op of a forward pass shares: the config, the numerics modes, the
 *        chunk's RoPE angles and scratch memory. Owned by whoever runs the forward
 *        (model.c for inference, the trainer for training); ops only read it and use its scratch.
 */
#ifndef DSV3_CONTEXT_H
#define DSV3_CONTEXT_H

#include "config.h"
#include "kvcache.h"
#include "linear.h"

struct LayerWeights;
struct MoEActs;
struct ForwardContext;

/**
 * A stand-in for the local MoE computation, installed by a layer above the model: expert
 * parallelism (ep/ep.h) installs one that dispatches each token's rows to the ranks holding its
 * experts and combines the answers. block_forward calls it in place of moe_forward and knows
 * nothing else about it, so the model never includes the layers above it.
 */
typedef struct MoeHook {
    /** out [T][D] = MoE(x [T][D]), with the gate results in @p a as moe_forward leaves them;
     *  0, or -1 with a message in @p err. */
    int (*forward)(struct MoeHook *hook, float *out, const float *x, int64_t T, const struct LayerWeights *w,
                   struct MoEActs *a, const struct ForwardContext *ctx, Err *err);
    int failed; /**< set by block_forward when forward failed: later MoE layers output zeros and
                     model_forward / mtp_forward return err (forward_status) */
    Err err;    /**< the failure's message */
} MoeHook;

/** Shared inputs and scratch of one forward call over a chunk of T tokens. */
typedef struct ForwardContext {
    const Config *cfg;      /**< hyper-parameters */
    AttnMode attn;          /**< MLA form */
    Fp8Mode fp8;            /**< FP8 numerics */
    LinearScratch lin;      /**< scratch of linear_forward */
    const float *rope_cos;  /**< [T][Dr/2] cos of p·θ' for the chunk's positions */
    const float *rope_sin;  /**< [T][Dr/2] */
    float *att_row;         /**< [threads][att_row_len] one attention row per thread, when the acts do not keep probabilities */
    int64_t att_row_len;    /**< floats of one thread's att_row (the longest sequence) */
    float *gate_work;       /**< [2·(E + n_group)] gate_forward scratch */
    MoeHook *moe_hook;      /**< MoE layers call it instead of moe_forward (NULL: local experts) */
} ForwardContext;

#endif
