/**
 * @file test_config.c
 * @brief config.json parsing (docs/model.md §1.1–1.2): the published DeepSeek-V3 config read field by
 *        field, the `rope_parameters` spelling of newer transformers, a JSON round trip, and the family's
 *        published configs: Kimi K2, Moonlight, DeepSeek-V3.1 (docs/model.md §13.1).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model/config.h"

/* deepseek-ai/DeepSeek-V3 config.json as published (docs/model.md §1.2). */
static const char *v3_json =
    "{\"architectures\":[\"DeepseekV3ForCausalLM\"],\"attention_bias\":false,\"attention_dropout\":0.0,"
    "\"auto_map\":{\"AutoConfig\":\"configuration_deepseek.DeepseekV3Config\",\"AutoModel\":\"modeling_deepseek.DeepseekV3Model\","
    "\"AutoModelForCausalLM\":\"modeling_deepseek.DeepseekV3ForCausalLM\"},"
    "\"aux_loss_alpha\":0.001,\"bos_token_id\":0,\"eos_token_id\":1,\"ep_size\":1,\"first_k_dense_replace\":3,\"hidden_act\":\"silu\","
    "\"hidden_size\":7168,\"initializer_range\":0.02,\"intermediate_size\":18432,\"kv_lora_rank\":512,\"max_position_embeddings\":163840,"
    "\"model_type\":\"deepseek_v3\",\"moe_intermediate_size\":2048,\"moe_layer_freq\":1,\"n_group\":8,\"n_routed_experts\":256,"
    "\"n_shared_experts\":1,\"norm_topk_prob\":true,\"num_attention_heads\":128,\"num_experts_per_tok\":8,\"num_hidden_layers\":61,"
    "\"num_key_value_heads\":128,\"num_nextn_predict_layers\":1,\"pretraining_tp\":1,\"q_lora_rank\":1536,\"qk_nope_head_dim\":128,"
    "\"qk_rope_head_dim\":64,"
    "\"quantization_config\":{\"activation_scheme\":\"dynamic\",\"fmt\":\"e4m3\",\"quant_method\":\"fp8\",\"weight_block_size\":[128,128]},"
    "\"rms_norm_eps\":1e-06,"
    "\"rope_scaling\":{\"beta_fast\":32,\"beta_slow\":1,\"factor\":40,\"mscale\":1.0,\"mscale_all_dim\":1.0,"
    "\"original_max_position_embeddings\":4096,\"type\":\"yarn\"},"
    "\"rope_theta\":10000,\"routed_scaling_factor\":2.5,\"scoring_func\":\"sigmoid\",\"seq_aux\":true,\"tie_word_embeddings\":false,"
    "\"topk_group\":4,\"topk_method\":\"noaux_tc\",\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.33.1\",\"use_cache\":true,"
    "\"v_head_dim\":128,\"vocab_size\":129280}";

static void published_v3(void **state) {
    (void)state;
    Config c;
    Err err;
    if (config_parse(&c, v3_json, strlen(v3_json), "v3", &err)) fail_msg("%s", err.msg);
    assert_int_equal(c.vocab_size, 129280);
    assert_int_equal(c.hidden_size, 7168);
    assert_int_equal(c.intermediate_size, 18432);
    assert_int_equal(c.moe_intermediate_size, 2048);
    assert_int_equal(c.num_hidden_layers, 61);
    assert_int_equal(c.num_nextn_predict_layers, 1);
    assert_int_equal(c.num_attention_heads, 128);
    assert_int_equal(c.q_lora_rank, 1536);
    assert_int_equal(c.kv_lora_rank, 512);
    assert_int_equal(c.qk_nope_head_dim, 128);
    assert_int_equal(c.qk_rope_head_dim, 64);
    assert_int_equal(c.v_head_dim, 128);
    assert_int_equal(c.n_routed_experts, 256);
    assert_int_equal(c.n_shared_experts, 1);
    assert_int_equal(c.num_experts_per_tok, 8);
    assert_int_equal(c.n_group, 8);
    assert_int_equal(c.topk_group, 4);
    assert_int_equal(c.first_k_dense_replace, 3);
    assert_int_equal(c.moe_layer_freq, 1);
    assert_true(c.routed_scaling_factor == 2.5);
    assert_true(c.norm_topk_prob);
    assert_true(c.rope_theta == 10000);
    assert_true(c.has_yarn);
    assert_true(c.rope_factor == 40);
    assert_int_equal(c.original_max_position_embeddings, 4096);
    assert_true(c.beta_fast == 32 && c.beta_slow == 1 && c.mscale == 1.0 && c.mscale_all_dim == 1.0);
    assert_int_equal(c.max_position_embeddings, 163840);
    assert_true(c.rms_norm_eps == 1e-6);
    assert_int_equal(c.bos_token_id, 0);
    assert_int_equal(c.eos_token_id, 1);
    assert_true(c.has_fp8);
    assert_int_equal(c.qk_head_dim, 192);
    assert_true(fabs(c.softmax_scale - 0.1352337788608801) < 1e-8);
    assert_true(c.rope_attention_factor == 1.0f);
    /* Layers 0–2 dense, 3–60 MoE, and the MTP layer 61 MoE (docs/model.md §1.1). */
    assert_false(config_layer_is_moe(&c, 2));
    assert_true(config_layer_is_moe(&c, 3));
    assert_true(config_layer_is_moe(&c, 61));
}

/** transformers ≥ 4.57 writes rope_parameters with rope_type (and may carry rope_theta there). */
static void rope_parameters_spelling(void **state) {
    (void)state;
    const char *from = "\"rope_scaling\":{\"beta_fast\":32,\"beta_slow\":1,\"factor\":40,\"mscale\":1.0,\"mscale_all_dim\":1.0,"
                       "\"original_max_position_embeddings\":4096,\"type\":\"yarn\"},";
    const char *to = "\"rope_parameters\":{\"beta_fast\":32,\"beta_slow\":1,\"factor\":40,\"mscale\":1.0,\"mscale_all_dim\":1.0,"
                     "\"original_max_position_embeddings\":4096,\"rope_type\":\"yarn\",\"rope_theta\":10000},";
    const char *at = strstr(v3_json, from);
    assert_non_null(at);
    size_t n = strlen(v3_json) + strlen(to) + 1;
    char *j = malloc(n);
    snprintf(j, n, "%.*s%s%s", (int)(at - v3_json), v3_json, to, at + strlen(from));
    Config a, b;
    Err err;
    assert_int_equal(config_parse(&a, v3_json, strlen(v3_json), "a", &err), 0);
    if (config_parse(&b, j, strlen(j), "b", &err)) fail_msg("%s", err.msg);
    assert_memory_equal(&a, &b, sizeof a);
    free(j);
}

static void json_round_trip(void **state) {
    (void)state;
    Config a, b;
    Err err;
    assert_int_equal(config_parse(&a, v3_json, strlen(v3_json), "a", &err), 0);
    char *j = config_to_json(&a);
    assert_non_null(j);
    if (config_parse(&b, j, strlen(j), "round trip", &err)) fail_msg("%s", err.msg);
    assert_memory_equal(&a, &b, sizeof a);
    free(j);
}

/** A few relations the validator must enforce (the full list of bad configs is in tests/bad/). */
static void relations(void **state) {
    (void)state;
    Config c;
    Err err;
    assert_int_equal(config_parse(&c, v3_json, strlen(v3_json), "v3", &err), 0);
    c.num_experts_per_tok = 200; /* > 4 kept groups × 32 experts */
    assert_int_equal(config_validate(&c, "x", &err), -1);
    assert_non_null(strstr(err.msg, "kept groups"));
    c.num_experts_per_tok = 8;
    c.first_k_dense_replace = 62;
    assert_int_equal(config_validate(&c, "x", &err), -1);
    c.first_k_dense_replace = 3;
    c.eos_token_id = 129280;
    assert_int_equal(config_validate(&c, "x", &err), -1);
}

/* moonshotai/Kimi-K2-Instruct config.json (its fields, as published; docs/model.md §13.1). */
static const char *k2_json =
    "{\"architectures\":[\"DeepseekV3ForCausalLM\"],\"attention_bias\":false,\"attention_dropout\":0.0,"
    "\"auto_map\":{\"AutoConfig\":\"configuration_deepseek.DeepseekV3Config\",\"AutoModel\":\"modeling_deepseek.DeepseekV3Model\","
    "\"AutoModelForCausalLM\":\"modeling_deepseek.DeepseekV3ForCausalLM\"},"
    "\"aux_loss_alpha\":0.001,\"bos_token_id\":163584,\"eos_token_id\":163585,\"first_k_dense_replace\":1,"
    "\"hidden_act\":\"silu\",\"hidden_size\":7168,\"initializer_range\":0.02,\"intermediate_size\":18432,"
    "\"kv_lora_rank\":512,\"max_position_embeddings\":131072,\"model_type\":\"kimi_k2\",\"moe_intermediate_size\":2048,"
    "\"moe_layer_freq\":1,\"n_group\":1,\"n_routed_experts\":384,\"n_shared_experts\":1,\"norm_topk_prob\":true,"
    "\"num_attention_heads\":64,\"num_experts_per_tok\":8,\"num_hidden_layers\":61,\"num_key_value_heads\":64,"
    "\"num_nextn_predict_layers\":0,\"pretraining_tp\":1,\"q_lora_rank\":1536,\"qk_nope_head_dim\":128,\"qk_rope_head_dim\":64,"
    "\"quantization_config\":{\"activation_scheme\":\"dynamic\",\"fmt\":\"e4m3\",\"quant_method\":\"fp8\",\"weight_block_size\":[128,128]},"
    "\"rms_norm_eps\":1e-06,\"rope_scaling\":{\"beta_fast\":1.0,\"beta_slow\":1.0,\"factor\":32.0,\"mscale\":1.0,"
    "\"mscale_all_dim\":1.0,\"original_max_position_embeddings\":4096,\"type\":\"yarn\"},\"rope_theta\":50000.0,"
    "\"routed_scaling_factor\":2.827,\"scoring_func\":\"sigmoid\",\"seq_aux\":true,\"tie_word_embeddings\":false,"
    "\"topk_group\":1,\"topk_method\":\"noaux_tc\",\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.48.3\","
    "\"use_cache\":true,\"v_head_dim\":128,\"vocab_size\":163840}";

/* moonshotai/Moonlight-16B-A3B config.json (docs/model.md §13.1). */
static const char *moonlight_json =
    "{\"architectures\":[\"DeepseekV3ForCausalLM\"],\"attention_bias\":false,\"attention_dropout\":0.0,"
    "\"aux_loss_alpha\":0.001,\"bos_token_id\":163584,\"eos_token_id\":163585,\"first_k_dense_replace\":1,"
    "\"hidden_act\":\"silu\",\"hidden_size\":2048,\"initializer_range\":0.02,\"intermediate_size\":11264,"
    "\"kv_lora_rank\":512,\"max_position_embeddings\":8192,\"model_type\":\"deepseek_v3\",\"moe_intermediate_size\":1408,"
    "\"moe_layer_freq\":1,\"n_group\":1,\"n_routed_experts\":64,\"n_shared_experts\":2,\"norm_topk_prob\":true,"
    "\"num_attention_heads\":16,\"num_experts_per_tok\":6,\"num_hidden_layers\":27,\"num_key_value_heads\":16,"
    "\"num_nextn_predict_layers\":0,\"pretraining_tp\":1,\"q_lora_rank\":null,\"qk_nope_head_dim\":128,"
    "\"qk_rope_head_dim\":64,\"rms_norm_eps\":1e-05,\"rope_scaling\":null,\"rope_theta\":50000.0,"
    "\"routed_scaling_factor\":2.446,\"scoring_func\":\"sigmoid\",\"seq_aux\":true,\"tie_word_embeddings\":false,"
    "\"topk_group\":1,\"topk_method\":\"noaux_tc\",\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.48.2\","
    "\"use_cache\":true,\"v_head_dim\":128,\"vocab_size\":163840}";

static void published_family(void **state) {
    (void)state;
    Config c, back;
    Err err;
    if (config_parse(&c, k2_json, strlen(k2_json), "k2", &err)) fail_msg("%s", err.msg);
    assert_string_equal(c.model_type, "kimi_k2");
    assert_int_equal(c.n_routed_experts, 384);
    assert_int_equal(c.n_group, 1);
    assert_int_equal(c.num_attention_heads, 64);
    assert_int_equal(c.num_nextn_predict_layers, 0);
    assert_true(c.has_yarn && c.beta_fast == 1.0 && c.beta_slow == 1.0 && c.rope_theta == 50000.0);
    /* 192^-0.5 · (1 + 0.1 ln 32)² */
    assert_true(fabs(c.softmax_scale - pow(1.0 + 0.1 * log(32.0), 2) / sqrt(192.0)) < 1e-7);
    if (config_parse(&c, moonlight_json, strlen(moonlight_json), "moonlight", &err)) fail_msg("%s", err.msg);
    assert_int_equal(c.q_lora_rank, 0);
    assert_false(c.has_yarn);
    assert_int_equal(c.n_shared_experts, 2);
    assert_true(fabs(c.softmax_scale - 1.0 / sqrt(192.0)) < 1e-7);
    /* q_lora_rank null survives the round trip (and --set of other fields) */
    char *json = config_to_json(&c);
    assert_non_null(strstr(json, "\"q_lora_rank\":\tnull"));
    assert_int_equal(config_parse(&back, json, strlen(json), "back", &err), 0);
    assert_int_equal(back.q_lora_rank, 0);
    free(json);
    /* DeepSeek-V3.1: V3's config with scale_fmt ue8m0 */
    char v31[8192];
    const char *at = strstr(v3_json, "\"weight_block_size\":[128,128]");
    snprintf(v31, sizeof v31, "%.*s\"scale_fmt\":\"ue8m0\",%s", (int)(at - v3_json), v3_json, at);
    if (config_parse(&c, v31, strlen(v31), "v3.1", &err)) fail_msg("%s", err.msg);
    assert_true(c.has_fp8 && c.scale_ue8m0);
    json = config_to_json(&c);
    assert_int_equal(config_parse(&back, json, strlen(json), "back", &err), 0);
    assert_true(back.scale_ue8m0);
    free(json);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(published_v3),
        cmocka_unit_test(published_family),
        cmocka_unit_test(rope_parameters_spelling),
        cmocka_unit_test(json_round_trip),
        cmocka_unit_test(relations),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
