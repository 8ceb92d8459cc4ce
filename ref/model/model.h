/**
 * @file model.h
 * @brief The whole model: load a checkpoint directory, run chunks of tokens through it.
 *
 * Mirrors the official Transformer.forward (docs/model.md §2):
 *     h = embed(tokens);  for each layer: h = block(h);  logits = lm_head(norm(h))
 * with a KV cache so that any chunk can start at any position (chunked prefill, decode).
 */
#ifndef DSV3_MODEL_H
#define DSV3_MODEL_H

#include <stdio.h>

#include "block.h"
#include "config.h"
#include "kvcache.h"
#include "rope.h"
#include "base/safetensors.h"
#include "weights.h"

/** A loaded model. Tensors point into the mapped checkpoint (or into a trainer's memory). */
typedef struct {
    Config config;     /**< hyper-parameters from config.json */
    SafeTensors st;    /**< the mapped checkpoint (empty when the weights belong to a trainer) */
    Weights w;         /**< pointers into st, by the tensor table */
    float *vectors;    /**< FP32 copies of the 1-D tensors (norm weights, correction biases) */
    Rope rope;         /**< YaRN frequencies */
    int n_unused;      /**< tensors in the checkpoint that the model does not use */
} Model;

/**
 * Loads config.json and the safetensors checkpoint of @p dir, validates every tensor against
 * the config (names, shapes, dtypes, FP8 scale grids) and binds the weights. MTP modules are
 * bound when the checkpoint has them. @p log (may be NULL) receives progress lines.
 */
int model_load(Model *m, const char *dir, FILE *log, Err *err);
/** Unmaps the checkpoint and frees everything model_load allocated. */
void model_free(Model *m);

/** Stored bytes (scales included): out[0] all tensors, out[1] routed experts of the main model,
 *  out[2] MTP modules. */
void model_weight_bytes(const Model *m, uint64_t out[3]);

/** Weight bytes one decoded token reads: everything but the routed experts and the embedding
 *  table, plus one embedding row and K experts per MoE layer (MTP excluded). */
uint64_t model_decode_weight_bytes(const Model *m);

/** Scratch and activations of forward passes over chunks of up to max_T tokens. */
typedef struct {
    int64_t max_T;     /**< chunk capacity */
    int64_t max_seq;   /**< longest sequence the attention scratch can hold */
    Fp8Mode fp8;       /**< FP8 numerics of the linears */
    AttnMode attn;     /**< MLA form (must match the KV cache) */
    float *h;          /**< [max_T][D] residual stream */
    float *normed;     /**< [max_T][D] final-norm output (the MTP module's h input) */
    float *emb;        /**< [max_T][D] MTP: embeddings of the next tokens */
    float *cat;        /**< [max_T][2D] MTP input [enorm(e) | hnorm(h)] */
    float *rope_cos;   /**< [max_T][Dr/2] */
    float *rope_sin;   /**< [max_T][Dr/2] */
    LayerActs acts;    /**< shared by all layers */
    ForwardContext ctx; /**< what the ops share, pointing into this state */
    float *mem;        /**< the one allocation behind every buffer */
    size_t bytes;      /**< its size */
} RunState;

/** Allocates a RunState for chunks of up to @p max_T tokens and sequences of up to @p max_seq. */
int runstate_init(RunState *s, const Model *m, int64_t max_T, int64_t max_seq, AttnMode attn, Fp8Mode fp8, Err *err);
/** Frees the run state; safe on a zeroed struct. */
void runstate_free(RunState *s);

/** 0, or the error of an expert-parallel exchange that failed inside the forward just run
 *  (block_forward records it on ctx->moe_hook and zeroes the layer's output). */
int forward_status(const ForwardContext *ctx, Err *err);

/**
 * Runs @p T tokens starting at position kv->len (then kv->len += T). Any T works: longer
 * chunks are split into max_T pieces, which changes no result (every op is per token, and
 * attention reads the same cache either way).
 * Outputs (each may be NULL):
 *   logits [n_logits][V]   for the last n_logits positions of the chunk (n_logits ≤ T);
 *   hidden [T][D]          residual stream after the last block, before the final norm;
 *   normed [T][D]          after the final norm (the lm_head input; MTP's h_p).
 * Returns -1 with a message if the cache has no room.
 */
int model_forward(const Model *m, RunState *s, KVCache *kv, const int *ids, int64_t T, float *logits,
                  int64_t n_logits, float *hidden, float *normed, Err *err);

/** Cos/sin of positions pos0..pos0+T−1 into s->rope_cos/sin (T ≤ max_T). */
void runstate_set_positions(RunState *s, const Model *m, int64_t pos0, int64_t T);

#endif /* DSV3_MODEL_H */
