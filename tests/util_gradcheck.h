/**
 * @file util_gradcheck.h
 * @brief Test helper: analytic gradients against central finite differences.
 *
 * The forward under test is the FP32 reference; the loss is accumulated in double, and the
 * difference quotient uses the step actually taken in FP32, (L(p⁺) − L(p⁻)) / (p⁺ − p⁻), so
 * the only error left is the FP32 rounding of the forward's outputs (divided by the step) and
 * the O(h²) truncation term. See gradcheck() for the tolerance.
 */
#ifndef DSV3_TEST_UTIL_GRADCHECK_H
#define DSV3_TEST_UTIL_GRADCHECK_H
#include <stddef.h>
#include <stdint.h>

/** The function whose gradient is checked. */
typedef struct {
    double (*loss)(void *ctx);       /**< runs the forward at the current parameters, returns L */
    int (*same_routing)(void *ctx);  /**< NULL, or: 1 if the last loss() made the same discrete choices as the base */
    void *ctx;                       /**< passed to both */
} GradFn;

/** What a check saw. */
typedef struct {
    int checked;   /**< elements compared */
    int skipped;   /**< elements skipped because a top-k selection flipped at p ± h */
    double worst;  /**< max over elements of |fd − an| / tol (≤ 1 passes) */
    double cosine; /**< cosine between the fd and analytic vectors over the checked elements */
    double an_max; /**< max |an| over the checked elements */
} GradCheck;

/**
 * Checks an[i] = ∂L/∂p[i] for up to @p samples indices of p [n] (all if n ≤ samples; otherwise
 * drawn with a fixed seed). Step h = @p h·max(1, |p_i|). An element passes when
 *     |fd − an| ≤ atol + rtol·max(|fd|, |an|),   atol = @p atol_frac · max_i |an_i|  (whole tensor)
 * p is restored bit for bit. Prints one summary line with @p name, and every failing element
 * (every element when the environment has GC_VERBOSE set).
 */
GradCheck gradcheck(const char *name, float *p, const float *an, size_t n, int samples, const GradFn *f, double h,
                    double rtol, double atol_frac, uint64_t seed);

/** 1 if a check passed: worst ≤ 1, cosine ≥ 0.9999, a non-zero gradient, ≤ 10% of the samples skipped. */
int gradcheck_passed(const GradCheck *g);

/**
 * The model of the gradient tests: two layers (dense + MoE), 8 experts in 4 groups with 2 kept,
 * top-2, two MTP depths, YaRN; every dimension distinct, so a transposed index cannot pass.
 */
#define GRADCHECK_CONFIG_JSON \
    "{\"model_type\":\"deepseek_v3\",\"vocab_size\":50,\"hidden_size\":32,\"intermediate_size\":40," \
    "\"moe_intermediate_size\":12,\"num_hidden_layers\":2,\"first_k_dense_replace\":1," \
    "\"num_nextn_predict_layers\":2,\"num_attention_heads\":3,\"q_lora_rank\":20,\"kv_lora_rank\":14," \
    "\"qk_nope_head_dim\":6,\"qk_rope_head_dim\":8,\"v_head_dim\":10,\"n_routed_experts\":8," \
    "\"n_shared_experts\":1,\"num_experts_per_tok\":2,\"n_group\":4,\"topk_group\":2," \
    "\"routed_scaling_factor\":2.5,\"norm_topk_prob\":true,\"topk_method\":\"noaux_tc\"," \
    "\"rope_theta\":10000,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":40,\"beta_fast\":32," \
    "\"beta_slow\":1,\"mscale\":1.0,\"mscale_all_dim\":1.0,\"original_max_position_embeddings\":64}}"

#endif
