/**
 * @file test_bad_inputs.c
 * @brief Malformed checkpoints (docs/formats.md §1.2–1.4, §6) must each give one line on
 *        stderr naming the file and the problem, a non-zero exit, no crash, no output file.
 *
 * The corpus lives in tests/bad/<case>/ (config.json + safetensors [+ index]) and is committed.
 * `build/tests/test_bad_inputs --regen` (make bad-inputs) rebuilds it from a valid micro
 * checkpoint written by ckpt_write, applying one defect per case. A normal run checks every case
 * of the table through `dsv3 logits`; a missing case directory is a failure, not a skip.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "model/ckpt.h"
#include "base/safetensors.h"
#include "util_compare.h"
#include "util_run.h"

#define BAD_DIR "tests/bad"

/* ------------------------------------------------------------------------------------- */
/* the valid base checkpoint, in memory                                                    */

/** A micro FP8 config: every tensor kind of the real model, a few KB in total. */
static const char *micro_config =
    "{\"architectures\":[\"DeepseekV3ForCausalLM\"],\"model_type\":\"deepseek_v3\",\"vocab_size\":16,"
    "\"hidden_size\":32,\"intermediate_size\":48,\"moe_intermediate_size\":16,\"num_hidden_layers\":2,"
    "\"num_nextn_predict_layers\":0,\"num_attention_heads\":2,\"q_lora_rank\":16,\"kv_lora_rank\":16,"
    "\"qk_nope_head_dim\":8,\"qk_rope_head_dim\":4,\"v_head_dim\":8,\"n_routed_experts\":4,\"n_shared_experts\":1,"
    "\"num_experts_per_tok\":2,\"n_group\":2,\"topk_group\":1,\"first_k_dense_replace\":1,\"routed_scaling_factor\":2.5,"
    "\"norm_topk_prob\":true,\"topk_method\":\"noaux_tc\",\"scoring_func\":\"sigmoid\",\"rope_theta\":10000,"
    "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":40,\"original_max_position_embeddings\":4096,\"beta_fast\":32,"
    "\"beta_slow\":1,\"mscale\":1.0,\"mscale_all_dim\":1.0},"
    "\"quantization_config\":{\"activation_scheme\":\"dynamic\",\"fmt\":\"e4m3\",\"quant_method\":\"fp8\","
    "\"weight_block_size\":[128,128]}}";

typedef struct {
    cJSON *header;  /* parsed header */
    uint8_t *data;  /* byte buffer */
    size_t len;
} StImage;

static StImage base; /* model.safetensors of the valid micro checkpoint */

static void load_image(StImage *im, const char *path) {
    size_t n;
    uint8_t *b = (uint8_t *)read_bytes(path, &n);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--) h = (h << 8) | b[i];
    im->header = cJSON_ParseWithLength((const char *)b + 8, (size_t)h);
    im->len = n - 8 - (size_t)h;
    im->data = malloc(im->len + 1);
    memcpy(im->data, b + 8 + h, im->len);
    free(b);
}

/* ------------------------------------------------------------------------------------- */
/* writers                                                                                 */

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n)) fail_msg("cannot write %s", path);
    fclose(f);
}

/** [u64 len][header text][data] exactly as given (no validation, no padding). */
static void write_st_raw(const char *path, const char *hdr, size_t hlen, const void *data, size_t dlen, uint64_t len_field) {
    FILE *f = fopen(path, "wb");
    uint8_t l8[8];
    for (int i = 0; i < 8; i++) l8[i] = (uint8_t)(len_field >> (8 * i));
    fwrite(l8, 1, 8, f);
    fwrite(hdr, 1, hlen, f);
    if (dlen) fwrite(data, 1, dlen, f);
    fclose(f);
}

static void write_header_and_data(const char *path, cJSON *hdr, const void *data, size_t dlen) {
    char *text = cJSON_PrintUnformatted(hdr);
    write_st_raw(path, text, strlen(text), data, dlen, strlen(text));
    free(text);
}

/** Re-lays out the data after entries were removed, added or resized: offsets are assigned in
 *  the header's order; @p src gives each tensor's old bytes (zero-filled when it grew). */
static uint8_t *repack(cJSON *hdr, const StImage *src, size_t *out_len) {
    size_t total = 0;
    for (cJSON *e = hdr->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) continue;
        cJSON *o = cJSON_GetObjectItem(e, "data_offsets");
        cJSON *sz = cJSON_GetObjectItem(e, "_size");
        size_t n = sz ? (size_t)sz->valuedouble
                      : (size_t)(cJSON_GetArrayItem(o, 1)->valuedouble - cJSON_GetArrayItem(o, 0)->valuedouble);
        total += n;
    }
    uint8_t *d = calloc(total + 1, 1);
    size_t pos = 0;
    for (cJSON *e = hdr->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) continue;
        cJSON *o = cJSON_GetObjectItem(e, "data_offsets");
        size_t b = (size_t)cJSON_GetArrayItem(o, 0)->valuedouble, en = (size_t)cJSON_GetArrayItem(o, 1)->valuedouble;
        cJSON *sz = cJSON_GetObjectItem(e, "_size");
        size_t n = sz ? (size_t)sz->valuedouble : en - b;
        if (b < src->len) memcpy(d + pos, src->data + b, (en - b < n ? en - b : n));
        cJSON_ReplaceItemInArray(o, 0, cJSON_CreateNumber((double)pos));
        cJSON_ReplaceItemInArray(o, 1, cJSON_CreateNumber((double)(pos + n)));
        cJSON_DeleteItemFromObject(e, "_size");
        pos += n;
    }
    *out_len = total;
    return d;
}

/* ------------------------------------------------------------------------------------- */
/* the cases                                                                               */

static char case_dir[4096];

static const char *in_case(const char *name) {
    static char p[8192];
    snprintf(p, sizeof p, "%s/%s", case_dir, name);
    return p;
}

static void put_config(const char *text) { write_bytes(in_case("config.json"), text, strlen(text)); }

/** Writes the valid config and a mutated copy of the base header (data unchanged). */
static cJSON *hdr_copy(void) { return cJSON_Duplicate(base.header, 1); }
static cJSON *entry(cJSON *h, const char *name) { return cJSON_GetObjectItem(h, name); }
static void emit(cJSON *h) {
    put_config(micro_config);
    write_header_and_data(in_case("model.safetensors"), h, base.data, base.len);
    cJSON_Delete(h);
}
static void emit_repacked(cJSON *h) {
    size_t n;
    uint8_t *d = repack(h, &base, &n);
    put_config(micro_config);
    write_header_and_data(in_case("model.safetensors"), h, d, n);
    free(d);
    cJSON_Delete(h);
}
static void set_config(const char *key, cJSON *value) {
    cJSON *c = cJSON_Parse(micro_config);
    if (value) cJSON_ReplaceItemInObject(c, key, value);
    else cJSON_DeleteItemFromObject(c, key);
    char *t = cJSON_Print(c);
    write_bytes(in_case("config.json"), t, strlen(t));
    free(t);
    cJSON_Delete(c);
    write_header_and_data(in_case("model.safetensors"), base.header, base.data, base.len);
}

static const char *W_Q = "model.layers.0.self_attn.q_a_proj.weight";
static const char *W_EMB = "model.embed_tokens.weight";
static const char *W_BIAS = "model.layers.1.mlp.gate.e_score_correction_bias";
static const char *W_NORM = "model.norm.weight";

static void set_offsets(cJSON *e, double b, double en) {
    cJSON *o = cJSON_GetObjectItem(e, "data_offsets");
    cJSON_ReplaceItemInArray(o, 0, cJSON_CreateNumber(b));
    cJSON_ReplaceItemInArray(o, 1, cJSON_CreateNumber(en));
}
static double off(cJSON *e, int i) { return cJSON_GetArrayItem(cJSON_GetObjectItem(e, "data_offsets"), i)->valuedouble; }

/** The tensor whose data starts at byte 0 and the last one. */
static cJSON *first_entry(cJSON *h) {
    for (cJSON *e = h->child; e; e = e->next)
        if (strcmp(e->string, "__metadata__") && off(e, 0) == 0) return e;
    return NULL;
}
static cJSON *last_entry(cJSON *h) {
    cJSON *best = NULL;
    for (cJSON *e = h->child; e; e = e->next)
        if (strcmp(e->string, "__metadata__") && (!best || off(e, 0) > off(best, 0))) best = e;
    return best;
}
static cJSON *second_entry(cJSON *h) {
    cJSON *f = first_entry(h);
    for (cJSON *e = h->child; e; e = e->next)
        if (strcmp(e->string, "__metadata__") && off(e, 0) == off(f, 1)) return e;
    return NULL;
}

static void mk_empty(void) { put_config(micro_config); write_bytes(in_case("model.safetensors"), "", 0); }
static void mk_tiny(void) { put_config(micro_config); write_bytes(in_case("model.safetensors"), "\x10\0\0\0\0", 5); }
static void mk_header_too_large(void) {
    put_config(micro_config);
    write_st_raw(in_case("model.safetensors"), "{}", 2, NULL, 0, 200000000ull);
}
static void mk_header_past_eof(void) {
    put_config(micro_config);
    write_st_raw(in_case("model.safetensors"), "{\"a\":1}", 7, NULL, 0, 4096);
}
static void mk_header_zero(void) { put_config(micro_config); write_st_raw(in_case("model.safetensors"), "", 0, "xxxx", 4, 0); }
static void mk_not_json(void) { put_config(micro_config); write_st_raw(in_case("model.safetensors"), "{not json", 9, NULL, 0, 9); }
static void mk_array(void) { put_config(micro_config); write_st_raw(in_case("model.safetensors"), "[1, 2]  ", 8, NULL, 0, 8); }
static void mk_bad_utf8(void) {
    put_config(micro_config);
    write_st_raw(in_case("model.safetensors"), "{\"\xff\xfe\":{}}", 9, NULL, 0, 9);
}
static void mk_nul(void) { put_config(micro_config); write_st_raw(in_case("model.safetensors"), "{\"a\0\":{}}", 9, NULL, 0, 9); }
static void mk_garbage_after(void) {
    put_config(micro_config);
    write_st_raw(in_case("model.safetensors"), "{}  xyz ", 8, NULL, 0, 8);
}
static void mk_duplicate_key(void) {
    /* Print the header by hand with the first tensor's entry written twice. */
    cJSON *h = hdr_copy();
    char *first = cJSON_PrintUnformatted(entry(h, W_NORM));
    char *all = cJSON_PrintUnformatted(h);
    size_t n = strlen(all) + 2 * strlen(first) + 256;
    char *text = malloc(n);
    snprintf(text, n, "{\"%s\":%s,%s", W_NORM, first, all + 1);
    put_config(micro_config);
    write_st_raw(in_case("model.safetensors"), text, strlen(text), base.data, base.len, strlen(text));
    free(text);
    free(first);
    free(all);
    cJSON_Delete(h);
}
static void mk_unknown_dtype(void) {
    cJSON *h = hdr_copy();
    cJSON_ReplaceItemInObject(entry(h, W_NORM), "dtype", cJSON_CreateString("BF17"));
    emit(h);
}
static void mk_missing_offsets(void) {
    cJSON *h = hdr_copy();
    cJSON_DeleteItemFromObject(entry(h, W_NORM), "data_offsets");
    emit(h);
}
static void mk_extra_field(void) {
    cJSON *h = hdr_copy();
    cJSON_AddNumberToObject(entry(h, W_NORM), "stride", 1);
    emit(h);
}
static void mk_negative_dim(void) {
    cJSON *h = hdr_copy();
    cJSON_ReplaceItemInArray(cJSON_GetObjectItem(entry(h, W_NORM), "shape"), 0, cJSON_CreateNumber(-32));
    emit(h);
}
static void mk_fractional_dim(void) {
    cJSON *h = hdr_copy();
    cJSON_ReplaceItemInArray(cJSON_GetObjectItem(entry(h, W_NORM), "shape"), 0, cJSON_CreateNumber(32.5));
    emit(h);
}
static void mk_shape_overflow(void) {
    cJSON *h = hdr_copy();
    cJSON *s = cJSON_GetObjectItem(entry(h, W_Q), "shape");
    cJSON_ReplaceItemInArray(s, 0, cJSON_CreateNumber(4294967296.0 * 1024));
    cJSON_ReplaceItemInArray(s, 1, cJSON_CreateNumber(4294967296.0 * 1024));
    emit(h);
}
static void mk_too_many_dims(void) {
    cJSON *h = hdr_copy();
    cJSON *s = cJSON_GetObjectItem(entry(h, W_NORM), "shape");
    for (int i = 0; i < 9; i++) cJSON_AddItemToArray(s, cJSON_CreateNumber(1));
    emit(h);
}
static void mk_offsets_not_pair(void) {
    cJSON *h = hdr_copy();
    cJSON_AddItemToArray(cJSON_GetObjectItem(entry(h, W_NORM), "data_offsets"), cJSON_CreateNumber(0));
    emit(h);
}
static void mk_offsets_fractional(void) {
    cJSON *h = hdr_copy();
    cJSON *e = entry(h, W_NORM);
    set_offsets(e, off(e, 0) + 0.5, off(e, 1));
    emit(h);
}
static void mk_reversed(void) {
    cJSON *h = hdr_copy();
    cJSON *e = entry(h, W_NORM);
    set_offsets(e, off(e, 1), off(e, 0));
    emit(h);
}
static void mk_span_mismatch(void) {
    cJSON *h = hdr_copy();
    cJSON_ReplaceItemInArray(cJSON_GetObjectItem(entry(h, W_NORM), "shape"), 0, cJSON_CreateNumber(33));
    emit(h);
}
static void mk_overlap(void) {
    cJSON *h = hdr_copy();
    cJSON *e = second_entry(h);
    set_offsets(e, off(e, 0) - 4, off(e, 1) - 4);
    emit(h);
}
static void mk_hole(void) {
    /* Move the last tensor 8 bytes further and grow the file to match: a gap no tensor owns. */
    cJSON *h = hdr_copy();
    cJSON *e = last_entry(h);
    set_offsets(e, off(e, 0) + 8, off(e, 1) + 8);
    uint8_t *d = calloc(base.len + 8, 1);
    memcpy(d, base.data, base.len);
    put_config(micro_config);
    write_header_and_data(in_case("model.safetensors"), h, d, base.len + 8);
    free(d);
    cJSON_Delete(h);
}
static void mk_trailing(void) {
    uint8_t *d = calloc(base.len + 16, 1);
    memcpy(d, base.data, base.len);
    put_config(micro_config);
    write_header_and_data(in_case("model.safetensors"), base.header, d, base.len + 16);
    free(d);
}
static void mk_truncated(void) {
    put_config(micro_config);
    write_header_and_data(in_case("model.safetensors"), base.header, base.data, base.len - 100);
}
static void mk_metadata_nonstring(void) {
    cJSON *h = hdr_copy();
    cJSON_DeleteItemFromObject(h, "__metadata__");
    cJSON *m = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddNumberToObject(m, "format", 1);
    emit(h);
}
static void mk_entry_not_object(void) {
    cJSON *h = hdr_copy();
    cJSON_ReplaceItemInObject(h, W_NORM, cJSON_CreateString("F32"));
    emit(h);
}
/* model-level defects (valid safetensors, wrong for the config) */
static void mk_missing_tensor(void) {
    cJSON *h = hdr_copy();
    cJSON_DeleteItemFromObject(h, "model.layers.1.self_attn.o_proj.weight");
    cJSON_DeleteItemFromObject(h, "model.layers.1.self_attn.o_proj.weight_scale_inv");
    emit_repacked(h);
}
static void mk_wrong_shape(void) {
    cJSON *h = hdr_copy();
    cJSON *s = cJSON_GetObjectItem(entry(h, W_EMB), "shape");
    cJSON_ReplaceItemInArray(s, 0, cJSON_CreateNumber(32));
    cJSON_ReplaceItemInArray(s, 1, cJSON_CreateNumber(16));
    emit(h);
}
static void mk_scale_grid(void) {
    cJSON *h = hdr_copy();
    char name[256];
    snprintf(name, sizeof name, "%s_scale_inv", W_Q);
    cJSON *s = cJSON_GetObjectItem(entry(h, name), "shape");
    cJSON_DeleteItemFromArray(s, 1); /* [1, 1] → [1]: same bytes, wrong grid */
    emit(h);
}
static void mk_scale_grid_2x(void) {
    cJSON *h = hdr_copy();
    char name[256];
    snprintf(name, sizeof name, "%s_scale_inv", W_Q);
    cJSON *e = entry(h, name);
    cJSON_ReplaceItemInArray(cJSON_GetObjectItem(e, "shape"), 1, cJSON_CreateNumber(2));
    cJSON_AddNumberToObject(e, "_size", 8);
    emit_repacked(h);
}
static void mk_fp8_without_scale(void) {
    cJSON *h = hdr_copy();
    char name[256];
    snprintf(name, sizeof name, "%s_scale_inv", W_Q);
    cJSON_DeleteItemFromObject(h, name);
    emit_repacked(h);
}
static void mk_scale_wrong_dtype(void) {
    cJSON *h = hdr_copy();
    char name[256];
    snprintf(name, sizeof name, "%s_scale_inv", W_Q);
    cJSON_ReplaceItemInObject(entry(h, name), "dtype", cJSON_CreateString("I32"));
    emit(h);
}
static void mk_orphan_scale(void) {
    cJSON *h = hdr_copy();
    cJSON *e = entry(h, W_Q);
    cJSON_ReplaceItemInObject(e, "dtype", cJSON_CreateString("BF16"));
    cJSON_AddNumberToObject(e, "_size", 2.0 * 16 * 32);
    emit_repacked(h);
}
static void mk_int_weight(void) {
    cJSON *h = hdr_copy();
    cJSON_ReplaceItemInObject(entry(h, W_EMB), "dtype", cJSON_CreateString("I16"));
    emit(h);
}
static void mk_bias_not_f32(void) {
    cJSON *h = hdr_copy();
    cJSON_ReplaceItemInObject(entry(h, W_BIAS), "dtype", cJSON_CreateString("I32"));
    emit(h);
}
static void mk_vector_2d(void) {
    cJSON *h = hdr_copy();
    cJSON *s = cJSON_GetObjectItem(entry(h, W_NORM), "shape");
    cJSON_ReplaceItemInArray(s, 0, cJSON_CreateNumber(4));
    cJSON_AddItemToArray(s, cJSON_CreateNumber(8));
    emit(h);
}
/* config.json defects */
static void mk_config_not_json(void) {
    put_config("{\"model_type\": \"deepseek_v3\",");
    write_header_and_data(in_case("model.safetensors"), base.header, base.data, base.len);
}
static void mk_config_missing(void) { write_header_and_data(in_case("model.safetensors"), base.header, base.data, base.len); }
static void mk_cfg_missing_key(void) { set_config("hidden_size", NULL); }
static void mk_cfg_wrong_type(void) { set_config("hidden_size", cJSON_CreateString("32")); }
static void mk_cfg_negative(void) { set_config("kv_lora_rank", cJSON_CreateNumber(-16)); }
static void mk_cfg_topk_group(void) { set_config("topk_group", cJSON_CreateNumber(3)); }
static void mk_cfg_experts_per_tok(void) { set_config("num_experts_per_tok", cJSON_CreateNumber(5)); }
static void mk_cfg_group_divides(void) { set_config("n_group", cJSON_CreateNumber(3)); }
static void mk_cfg_model_type(void) { set_config("model_type", cJSON_CreateString("llama")); }
static void mk_cfg_q_lora_null(void) { set_config("q_lora_rank", cJSON_CreateNull()); }
static void mk_cfg_q_lora_zero(void) { set_config("q_lora_rank", cJSON_CreateNumber(0)); }
static void mk_cfg_scale_fmt(void) {
    cJSON *q = cJSON_Parse("{\"activation_scheme\":\"dynamic\",\"fmt\":\"e4m3\",\"quant_method\":\"fp8\","
                           "\"weight_block_size\":[128,128],\"scale_fmt\":\"e8m0\"}");
    set_config("quantization_config", q);
}
static void mk_cfg_odd_rope(void) { set_config("qk_rope_head_dim", cJSON_CreateNumber(7)); }
static void mk_cfg_block_size(void) {
    cJSON *q = cJSON_Parse("{\"activation_scheme\":\"dynamic\",\"fmt\":\"e4m3\",\"quant_method\":\"fp8\","
                           "\"weight_block_size\":[64,64]}");
    set_config("quantization_config", q);
}
static void mk_cfg_no_quant(void) { set_config("quantization_config", NULL); }
static void mk_cfg_scoring(void) { set_config("scoring_func", cJSON_CreateString("softmax")); }
static void mk_cfg_hidden_mismatch(void) { set_config("hidden_size", cJSON_CreateNumber(64)); }
/* index.json defects: two shards written by ckpt_write, then one defect */
static char sharded_src[4096];
static void copy_sharded(void) {
    const char *files[] = { "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                            "model.safetensors.index.json" };
    for (int i = 0; i < 4; i++) {
        char p[8192];
        snprintf(p, sizeof p, "%s/%s", sharded_src, files[i]);
        size_t n;
        uint8_t *b = (uint8_t *)read_bytes(p, &n);
        write_bytes(in_case(files[i]), b, n);
        free(b);
    }
}
static cJSON *read_index(void) {
    size_t n;
    uint8_t *b = (uint8_t *)read_bytes(in_case("model.safetensors.index.json"), &n);
    cJSON *j = cJSON_ParseWithLength((const char *)b, n);
    free(b);
    return j;
}
static void write_index(cJSON *j) {
    char *t = cJSON_Print(j);
    write_bytes(in_case("model.safetensors.index.json"), t, strlen(t));
    free(t);
    cJSON_Delete(j);
}
static void mk_index_traversal(void) {
    copy_sharded();
    cJSON *j = read_index();
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(j, "weight_map"), W_NORM, cJSON_CreateString("../model.safetensors"));
    write_index(j);
}
static void mk_index_slash(void) {
    copy_sharded();
    cJSON *j = read_index();
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(j, "weight_map"), W_NORM, cJSON_CreateString("/etc/passwd"));
    write_index(j);
}
static void mk_index_missing_shard(void) {
    copy_sharded();
    cJSON *j = read_index();
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(j, "weight_map"), W_NORM, cJSON_CreateString("model-00003-of-00003.safetensors"));
    write_index(j);
}
static void mk_index_wrong_shard(void) {
    copy_sharded();
    cJSON *j = read_index();
    cJSON *wm = cJSON_GetObjectItem(j, "weight_map");
    const char *now = cJSON_GetObjectItem(wm, W_NORM)->valuestring;
    const char *other = strstr(now, "00001-of") ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
    cJSON_ReplaceItemInObject(wm, W_NORM, cJSON_CreateString(other));
    write_index(j);
}
static void mk_index_no_map(void) {
    copy_sharded();
    cJSON *j = read_index();
    cJSON_DeleteItemFromObject(j, "weight_map");
    write_index(j);
}
static void mk_index_unmapped(void) {
    copy_sharded();
    cJSON *j = read_index();
    cJSON_DeleteItemFromObject(cJSON_GetObjectItem(j, "weight_map"), W_NORM);
    write_index(j);
}
static void mk_index_not_json(void) {
    copy_sharded();
    write_bytes(in_case("model.safetensors.index.json"), "{\"weight_map\": ", 15);
}
static void mk_index_duplicate_tensor(void) {
    /* Shard 2 also carries a copy of a tensor that shard 1 holds. */
    copy_sharded();
    StImage s1, s2;
    load_image(&s1, in_case("model-00001-of-00002.safetensors"));
    load_image(&s2, in_case("model-00002-of-00002.safetensors"));
    cJSON *victim = s1.header->child;
    while (!strcmp(victim->string, "__metadata__")) victim = victim->next;
    size_t vb = (size_t)off(victim, 0), ve = (size_t)off(victim, 1);
    cJSON *copy = cJSON_Duplicate(victim, 1);
    set_offsets(copy, (double)s2.len, (double)(s2.len + ve - vb));
    cJSON_AddItemToObject(s2.header, victim->string, copy);
    uint8_t *d = malloc(s2.len + (ve - vb));
    memcpy(d, s2.data, s2.len);
    memcpy(d + s2.len, s1.data + vb, ve - vb);
    write_header_and_data(in_case("model-00002-of-00002.safetensors"), s2.header, d, s2.len + (ve - vb));
    free(d);
    cJSON_Delete(s1.header), cJSON_Delete(s2.header), free(s1.data), free(s2.data);
}
static void mk_index_duplicate_key(void) {
    copy_sharded();
    cJSON *j = read_index();
    cJSON_AddStringToObject(cJSON_GetObjectItem(j, "weight_map"), W_NORM, "model-00001-of-00002.safetensors");
    write_index(j);
}

typedef struct {
    const char *name;
    const char *expect; /* substring of the one-line message */
    const char *file;   /* the file the message must name */
    void (*make)(void);
} BadCase;

static const BadCase cases[] = {
    { "st_empty", "too small for a safetensors header", "model.safetensors", mk_empty },
    { "st_5_bytes", "too small for a safetensors header", "model.safetensors", mk_tiny },
    { "st_header_too_large", "exceeds the 100000000-byte limit", "model.safetensors", mk_header_too_large },
    { "st_header_past_eof", "runs past the end", "model.safetensors", mk_header_past_eof },
    { "st_header_zero", "header length is 0", "model.safetensors", mk_header_zero },
    { "st_not_json", "not valid JSON", "model.safetensors", mk_not_json },
    { "st_header_array", "not a JSON object", "model.safetensors", mk_array },
    { "st_bad_utf8", "not valid UTF-8", "model.safetensors", mk_bad_utf8 },
    { "st_nul_in_header", "NUL byte", "model.safetensors", mk_nul },
    { "st_garbage_after_json", "garbage after the JSON header", "model.safetensors", mk_garbage_after },
    { "st_duplicate_key", "twice", "model.safetensors", mk_duplicate_key },
    { "st_unknown_dtype", "unknown dtype 'BF17'", "model.safetensors", mk_unknown_dtype },
    { "st_missing_offsets", "missing field 'data_offsets'", "model.safetensors", mk_missing_offsets },
    { "st_extra_field", "unexpected field 'stride'", "model.safetensors", mk_extra_field },
    { "st_negative_dim", "shape[0] is not a non-negative integer", "model.safetensors", mk_negative_dim },
    { "st_fractional_dim", "shape[0] is not a non-negative integer", "model.safetensors", mk_fractional_dim },
    { "st_shape_overflow", "overflows", "model.safetensors", mk_shape_overflow },
    { "st_too_many_dims", "dimensions, at most 8", "model.safetensors", mk_too_many_dims },
    { "st_offsets_not_pair", "data_offsets must be [begin, end]", "model.safetensors", mk_offsets_not_pair },
    { "st_offsets_fractional", "not non-negative integers", "model.safetensors", mk_offsets_fractional },
    { "st_offsets_reversed", "reversed", "model.safetensors", mk_reversed },
    { "st_span_mismatch", "shape needs 66", "model.safetensors", mk_span_mismatch },
    { "st_overlap", "overlaps the previous tensor", "model.safetensors", mk_overlap },
    { "st_hole", "leaves a hole", "model.safetensors", mk_hole },
    { "st_trailing_bytes", "bytes after the last tensor", "model.safetensors", mk_trailing },
    { "st_truncated", "truncated", "model.safetensors", mk_truncated },
    { "st_metadata_not_string", "__metadata__ value of 'format' is not a string", "model.safetensors", mk_metadata_nonstring },
    { "st_entry_not_object", "entry is not a JSON object", "model.safetensors", mk_entry_not_object },
    { "model_missing_tensor", "missing tensor 'model.layers.1.self_attn.o_proj.weight'", "checkpoint", mk_missing_tensor },
    { "model_wrong_shape", "has shape [32, 16], config.json needs [16, 32]", "model.safetensors", mk_wrong_shape },
    { "model_scale_grid_rank", "scale grid must be", "model.safetensors", mk_scale_grid },
    { "model_scale_grid_size", "needs [1, 1]", "model.safetensors", mk_scale_grid_2x },
    { "model_fp8_without_scale", "has no 'model.layers.0.self_attn.q_a_proj.weight_scale_inv'", "model.safetensors", mk_fp8_without_scale },
    { "model_scale_not_f32", "must be F32", "model.safetensors", mk_scale_wrong_dtype },
    { "model_orphan_scale", "has a scale but its weight is BF16", "model.safetensors", mk_orphan_scale },
    { "model_int_weight", "weights must be F32, BF16, F16 or F8_E4M3", "model.safetensors", mk_int_weight },
    { "model_bias_not_f32", "must be F32", "model.safetensors", mk_bias_not_f32 },
    { "model_vector_2d", "config.json needs [32]", "model.safetensors", mk_vector_2d },
    { "cfg_not_json", "not valid JSON", "config.json", mk_config_not_json },
    { "cfg_absent", "cannot open", "config.json", mk_config_missing },
    { "cfg_missing_key", "missing required field 'hidden_size'", "config.json", mk_cfg_missing_key },
    { "cfg_wrong_type", "'hidden_size' must be an integer", "config.json", mk_cfg_wrong_type },
    { "cfg_negative", "'kv_lora_rank' = -16 is out of range", "config.json", mk_cfg_negative },
    { "cfg_topk_group", "topk_group = 3 exceeds n_group = 2", "config.json", mk_cfg_topk_group },
    { "cfg_experts_per_tok", "num_experts_per_tok = 5 exceeds n_routed_experts = 4", "config.json", mk_cfg_experts_per_tok },
    { "cfg_group_divides", "not a multiple of n_group = 3", "config.json", mk_cfg_group_divides },
    { "cfg_model_type", "unsupported model_type 'llama'", "config.json", mk_cfg_model_type },
    /* q_lora_rank null is a direct q_proj (Moonlight): a checkpoint with q_a_proj instead lacks it */
    { "cfg_q_lora_null", "missing tensor 'model.layers.0.self_attn.q_proj.weight'", "checkpoint", mk_cfg_q_lora_null },
    { "cfg_q_lora_zero", "'q_lora_rank' = 0 is out of range", "config.json", mk_cfg_q_lora_zero },
    { "cfg_scale_fmt", "scale_fmt must be \"ue8m0\"", "config.json", mk_cfg_scale_fmt },
    { "cfg_odd_rope_dim", "must be even", "config.json", mk_cfg_odd_rope },
    { "cfg_block_size", "weight_block_size must be [128, 128]", "config.json", mk_cfg_block_size },
    { "cfg_no_quant_config", "no fp8 quantization_config", "model.safetensors", mk_cfg_no_quant },
    { "cfg_scoring_func", "unsupported scoring_func 'softmax'", "config.json", mk_cfg_scoring },
    { "cfg_tensors_disagree", "config.json needs [16, 64]", "model.safetensors", mk_cfg_hidden_mismatch },
    { "index_traversal", "must be a plain file name", "index.json", mk_index_traversal },
    { "index_absolute_path", "must be a plain file name", "index.json", mk_index_slash },
    { "index_missing_shard", "cannot open", "model-00003-of-00003.safetensors", mk_index_missing_shard },
    { "index_wrong_shard", "is mapped to", "index.json", mk_index_wrong_shard },
    { "index_no_weight_map", "missing \"weight_map\"", "index.json", mk_index_no_map },
    { "index_unmapped_tensor", "missing from weight_map", "index.json", mk_index_unmapped },
    { "index_not_json", "not a JSON object", "index.json", mk_index_not_json },
    { "index_tensor_in_two_shards", "appears in both", "index.json", mk_index_duplicate_tensor },
    { "index_duplicate_key", "twice", "index.json", mk_index_duplicate_key },
};
enum { N_CASES = sizeof cases / sizeof cases[0] };

static int regenerate(void) {
    char *tmp = make_temp_dir("bad");
    char dir[4096];
    Config c;
    Err err;
    if (config_parse(&c, micro_config, strlen(micro_config), "micro", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    RandomInit ri = { 1, 0.1f };
    CkptLayout one = { CKPT_FP8, 0, 1, 0 }, two = { CKPT_FP8, 0, 2, 0 };
    snprintf(dir, sizeof dir, "%s/base", tmp);
    snprintf(sharded_src, sizeof sharded_src, "%s/sharded", tmp);
    if (ckpt_write(dir, &c, &one, ckpt_random_source, &ri, NULL, &err) ||
        ckpt_write(sharded_src, &c, &two, ckpt_random_source, &ri, NULL, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    char p[8192];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    load_image(&base, p);
    mkdir(BAD_DIR, 0755);
    for (int i = 0; i < N_CASES; i++) {
        snprintf(case_dir, sizeof case_dir, "%s/%s", BAD_DIR, cases[i].name);
        char cmd[8300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", case_dir);
        if (system(cmd) != 0) return 1;
        mkdir(case_dir, 0755);
        cases[i].make();
    }
    printf("wrote %d cases under %s/\n", N_CASES, BAD_DIR);
    remove_tree(tmp);
    free(tmp);
    return 0;
}

/* ------------------------------------------------------------------------------------- */
/* the test                                                                                */

static void all_cases(void **state) {
    (void)state;
    char *tmp = make_temp_dir("badout");
    int failures = 0;
    for (int i = 0; i < N_CASES; i++) {
        char dir[4096], out[4200], cmd[12000];
        snprintf(dir, sizeof dir, "%s/%s", BAD_DIR, cases[i].name);
        snprintf(out, sizeof out, "%s/out.f32", tmp);
        struct stat sb;
        if (stat(dir, &sb) != 0) {
            printf("    %-28s MISSING (run make bad-inputs)\n", cases[i].name);
            failures++;
            continue;
        }
        snprintf(cmd, sizeof cmd, "%s logits -m %s --ids 0,1 -o %s", dsv3_bin(), dir, out);
        RunResult r;
        assert_int_equal(run_cmd(cmd, NULL, &r), 0);
        int ok = r.status == 1 && count_lines(r.err) == 1 && strstr(r.err, cases[i].expect) &&
                 strstr(r.err, cases[i].file) && stat(out, &sb) != 0;
        printf("    %-28s %s %s", cases[i].name, ok ? "ok  " : "FAIL", r.err);
        if (!ok) printf("      (exit %d; want exit 1, one line with '%s' naming '%s', no output file)\n", r.status,
                        cases[i].expect, cases[i].file);
        failures += !ok;
        unlink(out);
        run_result_free(&r);
    }
    printf("    %d malformed inputs, %d failures\n", N_CASES, failures);
    remove_tree(tmp);
    free(tmp);
    assert_int_equal(failures, 0);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--regen")) return regenerate();
    const struct CMUnitTest tests[] = { cmocka_unit_test(all_cases) };
    return cmocka_run_group_tests_name("bad_inputs", tests, NULL, NULL);
}
