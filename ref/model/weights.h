/**
 * @file weights.h
 * @brief Every tensor of a DeepSeek-V3 checkpoint, by its Hugging Face name (docs/model.md §1.3),
 *        and the structs that point at them.
 *
 * One table (weights.c, `layer_table` and friends) lists {HF name, shape formula, kind};
 * weights_foreach() walks it for a given Config and hands out each tensor's full name,
 * expected shape and the slot in ::Weights it binds to. Loading, shape validation,
 * parameter counting, the random-checkpoint writer, training's parameter/gradient buffers
 * and the GPU upload all iterate this one table, so they cannot disagree on layout.
 *
 * Shape legend used in comments: D hidden_size, V vocab_size, H heads, Dn qk_nope_head_dim,
 * Dr qk_rope_head_dim, Dv v_head_dim, Dq q_lora_rank, Dc kv_lora_rank, I intermediate_size,
 * Ie moe_intermediate_size, E n_routed_experts, S n_shared_experts.
 */
#ifndef DSV3_WEIGHTS_H
#define DSV3_WEIGHTS_H

#include "config.h"
#include "tensor.h"

/** SwiGLU FFN weights: FFN(x) = W2 · (silu(W1·x) ⊙ W3·x) (docs/model.md §2). */
typedef struct {
    Tensor gate_proj;   /**< W1 [I][D] (F8 + scale in the real model) */
    Tensor up_proj;     /**< W3 [I][D] */
    Tensor down_proj;   /**< W2 [D][I] */
} FFNWeights;

/** One decoder block: MLA + (dense FFN or MoE), pre-norm (docs/model.md §2, §3, §5). */
typedef struct LayerWeights {
    const float *input_layernorm;          /**< [D] attn_norm */
    Tensor q_a_proj;                       /**< W_DQ [Dq][D] */
    const float *q_a_layernorm;            /**< [Dq] */
    Tensor q_b_proj;                       /**< W_UQ [H·(Dn+Dr)][Dq]; per head [q_nope | q_pe] */
    Tensor q_proj;                         /**< q_lora_rank null only: W_Q [H·(Dn+Dr)][D], replacing the three above */
    Tensor kv_a_proj_with_mqa;             /**< [W_DKV; W_KR] [Dc+Dr][D]: rows [c_kv | k_pe] */
    const float *kv_a_layernorm;           /**< [Dc] */
    Tensor kv_b_proj;                      /**< [W_UK; W_UV] interleaved per head: [H·(Dn+Dv)][Dc] */
    Tensor o_proj;                         /**< W_O [D][H·Dv] */
    const float *post_attention_layernorm; /**< [D] ffn_norm */
    int index;                             /**< its number in the checkpoint: model.layers.{index} (MTP k: L + k) */
    int is_moe;                            /**< config_layer_is_moe(layer) */
    FFNWeights mlp;                        /**< dense layers: I = intermediate_size */
    Tensor gate;                           /**< MoE: mlp.gate.weight [E][D] (BF16, never FP8 in V3) */
    const float *e_score_correction_bias;  /**< MoE: [E] F32, selection only (docs/model.md §5.1) */
    FFNWeights *experts;                   /**< MoE: [E] routed experts, Ie wide */
    FFNWeights shared_experts;             /**< MoE: one FFN of width S·Ie (absent if S = 0) */
} LayerWeights;

/** One Multi-Token Prediction module, stored as layer num_hidden_layers + k (docs/model.md §7.2). */
typedef struct {
    const float *enorm;                    /**< [D] RMSNorm of the next token's embedding */
    const float *hnorm;                    /**< [D] RMSNorm of the main model's (post-norm) hidden */
    Tensor eh_proj;                        /**< M [D][2D]: columns [enorm(e) | hnorm(h)] */
    Tensor embed_tokens;                   /**< [V][D] copy of the main embedding */
    const float *shared_head_norm;         /**< [D] shared_head.norm */
    Tensor shared_head_head;               /**< [V][D] copy of lm_head */
    LayerWeights block;                    /**< a full MLA + MoE decoder block */
} MTPWeights;

/** All weights of a model. Arrays are owned by the struct (weights_alloc/weights_free);
 *  the tensors they point at belong to whoever bound them (a mapped checkpoint, a trainer). */
typedef struct {
    Tensor embed_tokens;       /**< model.embed_tokens.weight [V][D] */
    LayerWeights *layers;      /**< [n_layers] */
    int n_layers;              /**< num_hidden_layers */
    const float *norm;         /**< model.norm.weight [D] */
    Tensor lm_head;            /**< lm_head.weight [V][D] */
    MTPWeights *mtp;           /**< [n_mtp] */
    int n_mtp;                 /**< MTP modules bound (0 if the checkpoint has none) */
} Weights;

/** What a table entry is: a 2-D matrix (any stored dtype) or a 1-D vector read as FP32. */
typedef enum { WEIGHT_MATRIX, WEIGHT_VECTOR } WeightKind;

/** One concrete tensor of a model, as weights_foreach() presents it. */
typedef struct {
    char name[160];            /**< full HF name, e.g. "model.layers.3.mlp.experts.17.up_proj.weight" */
    WeightKind kind;           /**< matrix or vector */
    int64_t rows;              /**< expected rows (1 for vectors) */
    int64_t cols;              /**< expected columns (the length of a vector) */
    int f32_only;              /**< must be stored as F32 (e_score_correction_bias, docs/model.md §1.3 note 2) */
    int fp8;                   /**< in an FP8 checkpoint: 0 kept BF16 (embeddings, heads, gate; docs/model.md §8.5),
                                    1 stored F8_E4M3 + scale, 2 either (MTP eh_proj, docs/model.md §1.3 note 4) */
    Tensor *matrix;            /**< slot for WEIGHT_MATRIX */
    const float **vector;      /**< slot for WEIGHT_VECTOR */
    int layer;                 /**< decoder layer (MTP modules: num_hidden_layers + k), -1 for globals */
    int expert;                /**< routed expert index, -1 otherwise */
    int mtp;                   /**< MTP module index k, -1 for the main model */
} WeightSlot;

/** Allocates the layer/expert/MTP arrays of @p w for @p c with @p n_mtp MTP modules (all tensors empty). */
int weights_alloc(Weights *w, const Config *c, int n_mtp, Err *err);
/** Frees the arrays, expert arrays included (not the tensors' data). */
void weights_free(Weights *w);

/** Calls @p fn for every tensor of the model in table order; stops at the first non-zero return. */
int weights_foreach(Weights *w, const Config *c, int (*fn)(void *ctx, const WeightSlot *s), void *ctx);

/** Number of parameters (elements) of the main model and of the MTP modules. */
void weights_count(const Config *c, int n_mtp, uint64_t *main_params, uint64_t *mtp_params);

#endif /* DSV3_WEIGHTS_H */
