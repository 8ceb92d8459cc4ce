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

/** Shared inputs and scratch of one forward call over a chunk of T tokens. */
typedef struct {
    const Config *cfg;      /**< hyper-parameters */
    AttnMode attn;          /**< MLA form */
    Fp8Mode fp8;            /**< FP8 numerics */
    LinearScratch lin;      /**< scratch of linear_forward */
    const float *rope_cos;  /**< [T][Dr/2] cos of p·θ' for the chunk's positions */
    const float *rope_sin;  /**< [T][Dr/2] */
    float *att_row;         /**< [max_seq] one attention row, when the acts do not keep probabilities */
    float *gate_work;       /**< [2·(E + n_group)] gate_forward scratch */
    struct EpRank *ep;      /**< expert parallelism: MoE layers dispatch/combine through it (NULL: local) */
} ForwardContext;

#endif
