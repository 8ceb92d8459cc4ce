/**
 * @file config.c
 * @brief config.json → Config, with every field type-checked and every relation validated
 *        (docs/model.md §1.1–1.2; the bad configs a loader must reject: docs/formats.md §6).
 *
 * Rulings applied here (docs/model.md §11):
 *  - #5 YaRN is on whenever the config has rope_scaling/rope_parameters of type "yarn",
 *    independent of any runtime buffer size (the official demo's `max_seq_len > 4096` quirk
 *    is not reproduced).
 *  - #7 the softmax scale is qk_head_dim^-0.5 × mscale², mscale = 0.1·mscale_all_dim·ln(factor)+1
 *    (HF; the official code uses args.mscale, equal for V3): 0.1352337788608801.
 *  - #6 cos/sin are multiplied by HF's attention_factor = get_mscale(factor, mscale) /
 *    get_mscale(factor, mscale_all_dim) = 1.0 for V3 (no magnitude scaling).
 *  - #11 the correction bias is keyed on topk_method == "noaux_tc" (not the official `dim == 7168`);
 *    it is the only routing method supported, so every MoE layer has one.
 * The family's fields (docs/model.md §13): model_type "kimi_k2", q_lora_rank null (a direct q_proj, kept
 * as 0), rope_scaling with beta_fast ≤ beta_slow (computed as the references do, rope.c), and
 * quantization_config.scale_fmt "ue8m0".
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

/** Limits that keep every size product far from overflow; far above the real model. */
enum { MAX_DIM = 1 << 20, MAX_LAYERS = 1024, MAX_HEADS = 4096, MAX_EXPERTS = 1 << 16, MAX_VOCAB = 1 << 24 };

typedef struct {
    const cJSON *root;
    const char *label;
    Err *err;
} Reader;

/** Integer field: must be an integral JSON number in [lo, hi]. Missing → default, or error if required. */
static int get_int(Reader *r, const char *key, int required, int def, long lo, long hi, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return err_set(r->err, "%s: missing required field '%s'", r->label, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return err_set(r->err, "%s: field '%s' must be an integer", r->label, key);
    if (v->valuedouble < (double)lo || v->valuedouble > (double)hi)
        return err_set(r->err, "%s: field '%s' = %.17g is out of range [%ld, %ld]", r->label, key, v->valuedouble, lo, hi);
    *out = (int)v->valuedouble;
    return 0;
}

static int get_num_in(const cJSON *obj, const char *key, int required, double def, double lo, double hi,
                      double *out, const char *label, const char *prefix, Err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return err_set(err, "%s: missing required field '%s%s'", label, prefix, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v)) return err_set(err, "%s: field '%s%s' must be a number", label, prefix, key);
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return err_set(err, "%s: field '%s%s' = %g is out of range [%g, %g]", label, prefix, key, v->valuedouble, lo, hi);
    *out = v->valuedouble;
    return 0;
}

static int get_bool(Reader *r, const char *key, int def, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->root, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) return err_set(r->err, "%s: field '%s' must be true or false", r->label, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/** String field that, when present, must equal one of the supported values. */
static int check_str(Reader *r, const char *key, int required, const char *const *allowed) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->root, key);
    if (!v || cJSON_IsNull(v))
        return required ? err_set(r->err, "%s: missing required field '%s'", r->label, key) : 0;
    if (!cJSON_IsString(v)) return err_set(r->err, "%s: field '%s' must be a string", r->label, key);
    char list[128] = "";
    for (const char *const *a = allowed; *a; a++) {
        if (!strcmp(v->valuestring, *a)) return 0;
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", a == allowed ? "" : ", ", *a);
    }
    return err_set(r->err, "%s: unsupported %s '%s' (supported: %s)", r->label, key, v->valuestring, list);
}

/** quantization_config: only DeepSeek-V3's block-scaled e4m3 with 128×128 blocks (docs/model.md §8). */
static int parse_quant(Reader *r, Config *c) {
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(r->root, "quantization_config");
    c->has_fp8 = 0;
    if (!q || cJSON_IsNull(q)) return 0;
    if (!cJSON_IsObject(q)) return err_set(r->err, "%s: quantization_config must be an object", r->label);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(q, "quant_method");
    if (!cJSON_IsString(m) || strcmp(m->valuestring, "fp8"))
        return err_set(r->err, "%s: quantization_config.quant_method must be \"fp8\"", r->label);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(q, "fmt");
    if (f && (!cJSON_IsString(f) || strcmp(f->valuestring, "e4m3")))
        return err_set(r->err, "%s: quantization_config.fmt must be \"e4m3\"", r->label);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(q, "activation_scheme");
    if (a && (!cJSON_IsString(a) || strcmp(a->valuestring, "dynamic")))
        return err_set(r->err, "%s: quantization_config.activation_scheme must be \"dynamic\"", r->label);
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(q, "weight_block_size");
    if (!cJSON_IsArray(b) || cJSON_GetArraySize(b) != 2 || !cJSON_IsNumber(b->child) ||
        !cJSON_IsNumber(b->child->next) || b->child->valuedouble != 128 || b->child->next->valuedouble != 128)
        return err_set(r->err, "%s: quantization_config.weight_block_size must be [128, 128]", r->label);
    /* DeepSeek-V3.1: power-of-two (UE8M0) scales; W8A8 rounds the activation scales up to a power of
     * two as its reference kernel does (docs/model.md §13.4). The weight scales are read as stored. */
    const cJSON *sf = cJSON_GetObjectItemCaseSensitive(q, "scale_fmt");
    c->scale_ue8m0 = 0;
    if (sf && !cJSON_IsNull(sf)) {
        if (!cJSON_IsString(sf) || strcmp(sf->valuestring, "ue8m0"))
            return err_set(r->err, "%s: quantization_config.scale_fmt must be \"ue8m0\" (or absent)", r->label);
        c->scale_ue8m0 = 1;
    }
    c->has_fp8 = 1;
    return 0;
}

/** rope_scaling (or rope_parameters, written by newer transformers): YaRN only (docs/model.md §4). */
static int parse_rope(Reader *r, Config *c) {
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(r->root, "rope_scaling");
    const char *key = "rope_scaling.";
    if (!rs || cJSON_IsNull(rs)) {
        rs = cJSON_GetObjectItemCaseSensitive(r->root, "rope_parameters");
        key = "rope_parameters.";
    }
    double theta = 10000.0;
    if (get_num_in(r->root, "rope_theta", 0, 10000.0, 1.0, 1e12, &theta, r->label, "", r->err)) return -1;
    c->has_yarn = 0;
    c->rope_factor = 1.0;
    c->original_max_position_embeddings = 0;
    c->beta_fast = 32;
    c->beta_slow = 1;
    c->mscale = 1.0;
    c->mscale_all_dim = 0.0;
    if (rs && !cJSON_IsNull(rs)) {
        if (!cJSON_IsObject(rs)) return err_set(r->err, "%s: %.*s must be an object", r->label, (int)strlen(key) - 1, key);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "type");
        if (!t) t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (!cJSON_IsString(t)) return err_set(r->err, "%s: %stype must be a string", r->label, key);
        /* rope_parameters may also carry rope_theta (transformers ≥ 4.57). */
        if (get_num_in(rs, "rope_theta", 0, theta, 1.0, 1e12, &theta, r->label, key, r->err)) return -1;
        if (!strcmp(t->valuestring, "default")) {
            /* plain RoPE, no scaling */
        } else if (!strcmp(t->valuestring, "yarn")) {
            double orig;
            c->has_yarn = 1;
            if (get_num_in(rs, "factor", 1, 0, 1.0, 1e6, &c->rope_factor, r->label, key, r->err) ||
                get_num_in(rs, "original_max_position_embeddings", 1, 0, 1, 1 << 30, &orig, r->label, key, r->err) ||
                get_num_in(rs, "beta_fast", 0, 32, 1e-6, 1e6, &c->beta_fast, r->label, key, r->err) ||
                get_num_in(rs, "beta_slow", 0, 1, 1e-6, 1e6, &c->beta_slow, r->label, key, r->err) ||
                get_num_in(rs, "mscale", 0, 1.0, 0, 1e3, &c->mscale, r->label, key, r->err) ||
                get_num_in(rs, "mscale_all_dim", 0, 0.0, 0, 1e3, &c->mscale_all_dim, r->label, key, r->err))
                return -1;
            if (orig != floor(orig))
                return err_set(r->err, "%s: %soriginal_max_position_embeddings must be an integer", r->label, key);
            c->original_max_position_embeddings = (int)orig;
            if (cJSON_GetObjectItemCaseSensitive(rs, "attention_factor"))
                return err_set(r->err, "%s: %sattention_factor is not supported (DeepSeek-V3 derives it from mscale)",
                               r->label, key);
        } else {
            return err_set(r->err, "%s: unsupported %stype '%s' (supported: yarn)", r->label, key, t->valuestring);
        }
    }
    c->rope_theta = theta;
    return 0;
}

/** yarn_get_mscale of HF / the official code: 0.1·m·ln(s) + 1, or 1 when s ≤ 1. */
static double yarn_get_mscale(double scale, double m) {
    return scale <= 1.0 ? 1.0 : 0.1 * m * log(scale) + 1.0;
}

int config_parse(Config *c, const char *json, size_t len, const char *label, Err *err) {
    memset(c, 0, sizeof *c);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return err_set(err, "%s: not valid JSON", label);
    Reader r = { root, label, err };
    int rc = -1;
    static const char *const model_types[] = {"deepseek_v3", "kimi_k2", NULL};
    static const char *const topk_methods[] = {"noaux_tc", NULL};
    static const char *const scorings[] = {"sigmoid", NULL};
    static const char *const acts[] = {"silu", NULL};
    if (!cJSON_IsObject(root)) {
        err_set(err, "%s: not a JSON object", label);
        goto done;
    }
    if (check_str(&r, "model_type", 1, model_types) || check_str(&r, "topk_method", 0, topk_methods) ||
        check_str(&r, "scoring_func", 0, scorings) || check_str(&r, "hidden_act", 0, acts))
        goto done;
    /* Kimi K2 calls its DeepseekV3ForCausalLM "kimi_k2"; the layout and the computation are V3's. */
    snprintf(c->model_type, sizeof c->model_type, "%s",
             cJSON_GetObjectItemCaseSensitive(root, "model_type")->valuestring);
    /* q_lora_rank = null (Moonlight, Kimi-VL, HF's `q_lora_rank is None`): one direct q_proj, no
     * query latent (docs/model.md §13.2); kept as 0, the official ModelArgs' value for it. */
    const cJSON *ql = cJSON_GetObjectItemCaseSensitive(root, "q_lora_rank");
    int q_direct = ql && cJSON_IsNull(ql);
    if (get_int(&r, "vocab_size", 1, 0, 1, MAX_VOCAB, &c->vocab_size) ||
        get_int(&r, "hidden_size", 1, 0, 1, MAX_DIM, &c->hidden_size) ||
        get_int(&r, "intermediate_size", 1, 0, 1, MAX_DIM, &c->intermediate_size) ||
        get_int(&r, "moe_intermediate_size", 1, 0, 1, MAX_DIM, &c->moe_intermediate_size) ||
        get_int(&r, "num_hidden_layers", 1, 0, 1, MAX_LAYERS, &c->num_hidden_layers) ||
        get_int(&r, "num_nextn_predict_layers", 0, 0, 0, 16, &c->num_nextn_predict_layers) ||
        get_int(&r, "num_attention_heads", 1, 0, 1, MAX_HEADS, &c->num_attention_heads) ||
        (!q_direct && get_int(&r, "q_lora_rank", 1, 0, 1, MAX_DIM, &c->q_lora_rank)) ||
        get_int(&r, "kv_lora_rank", 1, 0, 1, MAX_DIM, &c->kv_lora_rank) ||
        get_int(&r, "qk_nope_head_dim", 1, 0, 1, 65536, &c->qk_nope_head_dim) ||
        get_int(&r, "qk_rope_head_dim", 1, 0, 2, 65536, &c->qk_rope_head_dim) ||
        get_int(&r, "v_head_dim", 1, 0, 1, 65536, &c->v_head_dim) ||
        get_int(&r, "n_routed_experts", 1, 0, 1, MAX_EXPERTS, &c->n_routed_experts) ||
        get_int(&r, "n_shared_experts", 0, 0, 0, 64, &c->n_shared_experts) ||
        get_int(&r, "num_experts_per_tok", 1, 0, 1, MAX_EXPERTS, &c->num_experts_per_tok) ||
        get_int(&r, "n_group", 0, 1, 1, MAX_EXPERTS, &c->n_group) ||
        get_int(&r, "topk_group", 0, 1, 1, MAX_EXPERTS, &c->topk_group) ||
        get_int(&r, "first_k_dense_replace", 0, 0, 0, MAX_LAYERS, &c->first_k_dense_replace) ||
        get_int(&r, "moe_layer_freq", 0, 1, 1, MAX_LAYERS, &c->moe_layer_freq) ||
        get_int(&r, "max_position_embeddings", 0, 163840, 1, 1 << 30, &c->max_position_embeddings) ||
        get_int(&r, "bos_token_id", 0, 0, 0, MAX_VOCAB, &c->bos_token_id) ||
        get_int(&r, "eos_token_id", 0, 1, 0, MAX_VOCAB, &c->eos_token_id) ||
        get_bool(&r, "norm_topk_prob", 1, &c->norm_topk_prob) ||
        get_num_in(root, "routed_scaling_factor", 0, 1.0, 1e-6, 1e6, &c->routed_scaling_factor, label, "", err) ||
        get_num_in(root, "rms_norm_eps", 0, 1e-6, 1e-30, 1.0, &c->rms_norm_eps, label, "", err) || parse_quant(&r, c) ||
        parse_rope(&r, c))
        goto done;
    int tied = 0;
    if (get_bool(&r, "tie_word_embeddings", 0, &tied)) goto done;
    if (tied) {
        err_set(err, "%s: tie_word_embeddings = true is not a DeepSeek-V3 layout (lm_head is separate)", label);
        goto done;
    }
    int attn_bias = 0;
    if (get_bool(&r, "attention_bias", 0, &attn_bias)) goto done;
    if (attn_bias) {
        err_set(err, "%s: attention_bias = true is not supported (DeepSeek-V3 has no attention biases)", label);
        goto done;
    }
    c->qk_head_dim = c->qk_nope_head_dim + c->qk_rope_head_dim;
    double scale = 1.0 / sqrt((double)c->qk_head_dim);
    if (c->has_yarn && c->mscale_all_dim != 0.0) {
        double m = yarn_get_mscale(c->rope_factor, c->mscale_all_dim);
        scale *= m * m;
    }
    c->softmax_scale = (float)scale;
    c->rope_attention_factor =
        c->has_yarn ? (float)(yarn_get_mscale(c->rope_factor, c->mscale) / yarn_get_mscale(c->rope_factor, c->mscale_all_dim))
                    : 1.0f;
    rc = config_validate(c, label, err);
done:
    cJSON_Delete(root);
    return rc;
}

int config_validate(const Config *c, const char *label, Err *err) {
    if (c->qk_rope_head_dim % 2)
        return err_set(err, "%s: qk_rope_head_dim = %d must be even (RoPE rotates pairs)", label, c->qk_rope_head_dim);
    if (c->num_experts_per_tok > c->n_routed_experts)
        return err_set(err, "%s: num_experts_per_tok = %d exceeds n_routed_experts = %d", label, c->num_experts_per_tok,
                       c->n_routed_experts);
    if (c->topk_group > c->n_group)
        return err_set(err, "%s: topk_group = %d exceeds n_group = %d", label, c->topk_group, c->n_group);
    if (c->n_routed_experts % c->n_group)
        return err_set(err, "%s: n_routed_experts = %d is not a multiple of n_group = %d", label, c->n_routed_experts,
                       c->n_group);
    int per_group = c->n_routed_experts / c->n_group;
    if (per_group < 2)
        return err_set(err, "%s: %d expert(s) per group; noaux_tc scores a group by its top-2 sum and needs at least 2",
                       label, per_group);
    if (c->num_experts_per_tok > c->topk_group * per_group)
        return err_set(err, "%s: num_experts_per_tok = %d exceeds the %d experts in the topk_group = %d kept groups",
                       label, c->num_experts_per_tok, c->topk_group * per_group, c->topk_group);
    if (c->first_k_dense_replace > c->num_hidden_layers)
        return err_set(err, "%s: first_k_dense_replace = %d exceeds num_hidden_layers = %d", label,
                       c->first_k_dense_replace, c->num_hidden_layers);
    if (c->bos_token_id >= c->vocab_size || c->eos_token_id >= c->vocab_size)
        return err_set(err, "%s: bos_token_id/eos_token_id (%d/%d) must be < vocab_size = %d", label, c->bos_token_id,
                       c->eos_token_id, c->vocab_size);
    if (c->has_yarn && c->original_max_position_embeddings <= 0)
        return err_set(err, "%s: rope_scaling.original_max_position_embeddings must be positive", label);
    /* beta_fast ≤ beta_slow (Kimi K2: both 1) is legal: the ramp of rope.c handles it as the references do. */
    return 0;
}

int config_load(Config *c, const char *path, Err *err) {
    char p[4096];
    size_t n = strlen(path);
    if (n >= 5 && !strcmp(path + n - 5, ".json")) snprintf(p, sizeof p, "%s", path);
    else if (path_join(p, sizeof p, path, "config.json")) return err_set(err, "%s: path too long", path);
    char *text;
    size_t len;
    if (read_file(p, 16u << 20, &text, &len, err)) return -1;
    int rc = config_parse(c, text, len, p, err);
    free(text);
    return rc;
}

int config_check_positions(const Config *c, int64_t n, const char *what, Err *err) {
    if (n > c->max_position_embeddings)
        return err_set(err, "%s %lld exceeds max_position_embeddings = %d (the positions the model knows)", what,
                       (long long)n, c->max_position_embeddings);
    return 0;
}

int64_t config_max_linear_in(const Config *c) {
    int64_t max_in = 2 * (int64_t)c->hidden_size;
    int64_t cand[] = { c->q_lora_rank, c->kv_lora_rank, (int64_t)c->num_attention_heads * c->v_head_dim,
                       c->intermediate_size, (int64_t)c->n_shared_experts * c->moe_intermediate_size };
    for (size_t i = 0; i < sizeof cand / sizeof cand[0]; i++)
        if (cand[i] > max_in) max_in = cand[i];
    return max_in;
}

const char *config_family(const Config *c) {
    if (!strcmp(c->model_type, "kimi_k2") || (c->n_routed_experts == 384 && c->n_group == 1)) return "Kimi K2";
    if (c->q_lora_rank == 0) return "Moonlight"; /* and Kimi-VL's language model: the direct q_proj */
    if (c->scale_ue8m0) return "DeepSeek-V3.1";
    if (c->vocab_size == 129280 && c->n_routed_experts == 256) return "DeepSeek-V3";
    return "a DeepSeek-V3-architecture model";
}

int config_layer_is_moe(const Config *c, int layer) {
    return layer >= c->first_k_dense_replace && layer % c->moe_layer_freq == 0;
}

/* config_apply_sets: see config.h. Edits the JSON form and parses it again, so every derived
 * field and every validation rule applies to the result exactly as to a loaded config. */
int config_apply_sets(Config *c, char *const *sets, int n, Err *err) {
    if (n == 0) return 0;
    char *json = config_to_json(c);
    cJSON *o = json ? cJSON_Parse(json) : NULL;
    free(json);
    if (!o) return err_set(err, "out of memory");
    for (int i = 0; i < n; i++) {
        char key[128];
        const char *eq = strchr(sets[i], '=');
        double v;
        if (!eq || eq == sets[i] || (size_t)(eq - sets[i]) >= sizeof key || parse_double(eq + 1, -1e12, 1e12, &v)) {
            cJSON_Delete(o);
            return err_set(err, "--set '%s': expected KEY=NUMBER", sets[i]);
        }
        memcpy(key, sets[i], (size_t)(eq - sets[i]));
        key[eq - sets[i]] = 0;
        if (!cJSON_GetObjectItemCaseSensitive(o, key)) {
            cJSON_Delete(o);
            return err_set(err, "--set: config has no numeric field '%s'", key);
        }
        cJSON_ReplaceItemInObjectCaseSensitive(o, key, cJSON_CreateNumber(v));
    }
    json = cJSON_Print(o);
    cJSON_Delete(o);
    if (!json) return err_set(err, "out of memory");
    int rc = config_parse(c, json, strlen(json), "--set", err);
    free(json);
    return rc;
}

/** Adds field k of the Config `c` to the JSON object `o` as a number (used by config_to_json). */
#define NUM(k) cJSON_AddNumberToObject(o, #k, (double)c->k)

char *config_to_json(const Config *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("DeepseekV3ForCausalLM"));
    cJSON_AddStringToObject(o, "model_type", c->model_type[0] ? c->model_type : "deepseek_v3");
    NUM(vocab_size); NUM(hidden_size); NUM(intermediate_size); NUM(moe_intermediate_size);
    NUM(num_hidden_layers); NUM(num_nextn_predict_layers); NUM(num_attention_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->num_attention_heads);
    NUM(n_shared_experts); NUM(n_routed_experts);
    cJSON_AddNumberToObject(o, "ep_size", 1);
    NUM(routed_scaling_factor); NUM(kv_lora_rank);
    if (c->q_lora_rank > 0) NUM(q_lora_rank);
    else cJSON_AddNullToObject(o, "q_lora_rank");
    NUM(qk_rope_head_dim); NUM(v_head_dim);
    NUM(qk_nope_head_dim);
    cJSON_AddStringToObject(o, "topk_method", "noaux_tc");
    NUM(n_group); NUM(topk_group); NUM(num_experts_per_tok); NUM(moe_layer_freq); NUM(first_k_dense_replace);
    cJSON_AddBoolToObject(o, "norm_topk_prob", c->norm_topk_prob);
    cJSON_AddStringToObject(o, "scoring_func", "sigmoid");
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    NUM(max_position_embeddings);
    cJSON_AddNumberToObject(o, "initializer_range", 0.02);
    NUM(rms_norm_eps);
    cJSON_AddBoolToObject(o, "use_cache", 1);
    NUM(bos_token_id); NUM(eos_token_id); NUM(rope_theta);
#undef NUM
    if (c->has_yarn) {
        cJSON *rs = cJSON_AddObjectToObject(o, "rope_scaling");
        cJSON_AddNumberToObject(rs, "beta_fast", c->beta_fast);
        cJSON_AddNumberToObject(rs, "beta_slow", c->beta_slow);
        cJSON_AddNumberToObject(rs, "factor", c->rope_factor);
        cJSON_AddNumberToObject(rs, "mscale", c->mscale);
        cJSON_AddNumberToObject(rs, "mscale_all_dim", c->mscale_all_dim);
        cJSON_AddNumberToObject(rs, "original_max_position_embeddings", c->original_max_position_embeddings);
        cJSON_AddStringToObject(rs, "type", "yarn");
    }
    cJSON_AddBoolToObject(o, "attention_bias", 0);
    cJSON_AddNumberToObject(o, "attention_dropout", 0.0);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", 0);
    cJSON_AddStringToObject(o, "torch_dtype", "bfloat16");
    if (c->has_fp8) {
        cJSON *q = cJSON_AddObjectToObject(o, "quantization_config");
        cJSON_AddStringToObject(q, "activation_scheme", "dynamic");
        cJSON_AddStringToObject(q, "fmt", "e4m3");
        cJSON_AddStringToObject(q, "quant_method", "fp8");
        cJSON *b = cJSON_AddArrayToObject(q, "weight_block_size");
        cJSON_AddItemToArray(b, cJSON_CreateNumber(128));
        cJSON_AddItemToArray(b, cJSON_CreateNumber(128));
        if (c->scale_ue8m0) cJSON_AddStringToObject(q, "scale_fmt", "ue8m0");
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}
