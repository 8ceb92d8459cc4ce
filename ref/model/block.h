/**
 * @file block.h
 * @brief One decoder block (docs/model.md §2; official Block.forward):
 *            h = h + MLA(attn_norm(h))
 *            h = h + FFN_or_MoE(ffn_norm(h))
 *        and the activations it keeps, allocated once and reused.
 */
#ifndef DSV3_BLOCK_H
#define DSV3_BLOCK_H

#include "context.h"
#include "ffn.h"
#include "mla.h"
#include "moe.h"
#include "weights.h"

/** Activations of one block over T tokens. The h_in/h_mid copies exist only for training. */
typedef struct {
    float *h_in;      /**< [T][D] residual entering the block (training) */
    float *x_attn;    /**< [T][D] input_layernorm(h) */
    float *rstd_attn; /**< [T] */
    MLAActs mla;      /**< attention intermediates */
    float *attn_out;  /**< [T][D] */
    float *h_mid;     /**< [T][D] residual after attention (training) */
    float *x_ffn;     /**< [T][D] post_attention_layernorm(h) */
    float *rstd_ffn;  /**< [T] */
    FFNActs dense;    /**< dense layers: [T][I] each */
    MoEActs moe;      /**< MoE layers */
    float *ffn_out;   /**< [T][D] */
} LayerActs;

/** What to allocate in a LayerActs. */
typedef struct {
    int64_t T;          /**< tokens per chunk */
    int64_t att_stride; /**< > 0: keep attention probabilities [T][H][att_stride] (training) */
    int dense;          /**< allocate the dense-FFN part */
    int moe;            /**< allocate the MoE part */
    AttnMode attn;      /**< which MLA intermediates */
    int training;       /**< keep h_in/h_mid */
} LayerActsSpec;

/** Lays out a LayerActs in @p ar (call once with a counting Arena, once with memory). */
void layer_acts_layout(LayerActs *a, const Config *c, const LayerActsSpec *spec, Arena *ar);

/** h [T][D] ← block(h) for tokens at positions pos0..; keys go into @p cache. */
void block_forward(float *h, int64_t T, int64_t pos0, const LayerWeights *w, LayerCache *cache, LayerActs *a,
                   const ForwardContext *ctx);

/**
 * Backward of block_forward over one whole sequence (training: pos0 = 0, naive attention, acts
 * laid out with training = 1 and att_stride ≥ T). On entry @p dh [T][D] = ∂L/∂h_out, on return
 * ∂L/∂h_in. Weight gradients accumulate into the FP32 tensors/vectors of @p dw. @p da (a
 * LayerActs of the same spec, used as gradient scratch) and @p dcache (naive, T positions) must
 * be zero on entry. @p balance_alpha weights the MoE layer's sequence-wise balance loss.
 */
void block_backward(float *dh, int64_t T, const LayerWeights *w, const LayerWeights *dw, const LayerCache *cache,
                    LayerCache *dcache, const LayerActs *a, LayerActs *da, double balance_alpha,
                    const ForwardContext *ctx);

#endif
