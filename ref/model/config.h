/**
 * @file config.h
 * @brief The model's hyper-parameters, read from a Hugging Face `config.json` (docs/model.md §1.1–1.2).
 *
 * Field names are the HF keys; the comment gives the DeepSeek-V3 671B value and, where it
 * differs, the name in the official `ModelArgs`. Derived quantities (softmax scale, YaRN
 * parameters) are computed once here so that no other file re-derives them.
 */
#ifndef DSV3_CONFIG_H
#define DSV3_CONFIG_H

#include "base/util.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Hyper-parameters of a DeepSeek-V3-shaped model. */
typedef struct {
    /* sizes */
    int vocab_size;               /**< vocab_size = 129280 */
    int hidden_size;              /**< hidden_size = 7168 (official: dim) */
    int intermediate_size;        /**< intermediate_size = 18432, dense FFN of layers < first_k_dense_replace */
    int moe_intermediate_size;    /**< moe_intermediate_size = 2048, each routed and shared expert */
    int num_hidden_layers;        /**< num_hidden_layers = 61 */
    int num_nextn_predict_layers; /**< num_nextn_predict_layers = 1: MTP modules stored as layers 61.. */
    int num_attention_heads;      /**< num_attention_heads = 128 */
    /* MLA (docs/model.md §3) */
    int q_lora_rank;              /**< q_lora_rank = 1536; 0 when config.json says null: one direct q_proj
                                       [H·(Dn+Dr)][D] and no q_a_layernorm (Moonlight, Kimi-VL; docs/model.md §13.2) */
    int kv_lora_rank;             /**< kv_lora_rank = 512 */
    int qk_nope_head_dim;         /**< qk_nope_head_dim = 128 */
    int qk_rope_head_dim;         /**< qk_rope_head_dim = 64 */
    int v_head_dim;               /**< v_head_dim = 128 */
    /* MoE (docs/model.md §5) */
    int n_routed_experts;         /**< n_routed_experts = 256 */
    int n_shared_experts;         /**< n_shared_experts = 1 (shared FFN width = n_shared × moe_intermediate_size) */
    int num_experts_per_tok;      /**< num_experts_per_tok = 8 (official: n_activated_experts) */
    int n_group;                  /**< n_group = 8 (official: n_expert_groups) */
    int topk_group;               /**< topk_group = 4 (official: n_limited_groups) */
    int first_k_dense_replace;    /**< first_k_dense_replace = 3 (official: n_dense_layers) */
    int moe_layer_freq;           /**< moe_layer_freq = 1 */
    double routed_scaling_factor; /**< routed_scaling_factor = 2.5 (official: route_scale) */
    int norm_topk_prob;           /**< norm_topk_prob = true */
    /* RoPE / YaRN (docs/model.md §4) */
    double rope_theta;            /**< rope_theta = 10000 */
    int has_yarn;                 /**< rope_scaling (or rope_parameters) present with type "yarn" */
    double rope_factor;           /**< rope_scaling.factor = 40 */
    int original_max_position_embeddings; /**< rope_scaling.original_max_position_embeddings = 4096 */
    double beta_fast;             /**< rope_scaling.beta_fast = 32 */
    double beta_slow;             /**< rope_scaling.beta_slow = 1 */
    double mscale;                /**< rope_scaling.mscale = 1.0 */
    double mscale_all_dim;        /**< rope_scaling.mscale_all_dim = 1.0 */
    int max_position_embeddings;  /**< max_position_embeddings = 163840 */
    /* misc */
    double rms_norm_eps;          /**< rms_norm_eps = 1e-6 (every RMSNorm, incl. the latent norms) */
    int bos_token_id;             /**< bos_token_id = 0 */
    int eos_token_id;             /**< eos_token_id = 1 */
    int has_fp8;                  /**< quantization_config = {fp8, e4m3, dynamic, [128,128]} present */
    int scale_ue8m0;              /**< quantization_config.scale_fmt = "ue8m0" (DeepSeek-V3.1): W8A8 rounds every
                                       activation scale up to a power of two (docs/model.md §13.4) */
    char model_type[16];          /**< "deepseek_v3" or "kimi_k2" (Kimi K2 names its DeepseekV3ForCausalLM so) */

    /* derived (config_load fills these) */
    int qk_head_dim;              /**< qk_nope_head_dim + qk_rope_head_dim = 192 */
    float softmax_scale;          /**< qk_head_dim^-0.5 × mscale² = 0.1352337788608801 (docs/model.md §3.5) */
    float rope_attention_factor;  /**< HF yarn attention_factor multiplying cos/sin; 1.0 for V3 (docs/model.md §3.5) */
} Config;

/** Reads and validates `config.json` (a file, or a directory containing one). */
int config_load(Config *c, const char *path, Err *err);

/** Parses and validates config JSON text; @p label names the source in messages. */
int config_parse(Config *c, const char *json, size_t len, const char *label, Err *err);

/** Checks ranges and relations between the fields (also run by config_parse). */
int config_validate(const Config *c, const char *label, Err *err);

/** Writes @p c as a Hugging Face config.json text (malloc'd), the layout the official checkpoint uses. */
char *config_to_json(const Config *c);

/**
 * Applies "KEY=NUMBER" overrides (`--set` flags) to numeric fields of @p c that its config.json
 * form has, re-deriving and re-validating everything. Unknown keys and malformed values are errors.
 */
int config_apply_sets(Config *c, char *const *sets, int n, Err *err);

/**
 * The one rule for sequence lengths (logits, perplexity, train, generate and chat): a sequence
 * holds at most max_position_embeddings positions, 0 .. max_position_embeddings − 1, the range
 * the model was trained on. Fails with "@p what N exceeds max_position_embeddings = M".
 */
int config_check_positions(const Config *c, int64_t n, const char *what, Err *err);

/** The widest input of any linear layer: D, Dq, Dc, H·Dv, I, S·Ie or 2D (the MTP eh_proj);
 *  sizes the row scratch of linear_forward. */
int64_t config_max_linear_in(const Config *c);

/**
 * Which member of the DeepSeek-V3 family the config describes (docs/model.md §13.1): "Kimi K2",
 * "Moonlight", "DeepSeek-V3.1", "DeepSeek-V3" (also R1 and V3-0324, whose configs are V3's: the chat
 * template tells them apart), or "a DeepSeek-V3-architecture model" for other shapes.
 */
const char *config_family(const Config *c);

/** True if decoder layer @p layer has a routed-expert MoE FFN (layer ≥ first_k_dense_replace, freq). */
int config_layer_is_moe(const Config *c, int layer);

#ifdef __cplusplus
}
#endif

#endif /* DSV3_CONFIG_H */
