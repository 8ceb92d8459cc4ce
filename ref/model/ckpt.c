/**
 * @file ckpt.c
 * @brief Checkpoint writer and presets: FP32 values from any source → config.json and safetensors in
 *        the Hugging Face layout of the tensor table (docs/model.md §1.3), one file or N shards with
 *        an index.
 *
 * Storage of each matrix W [rows][cols], as the released checkpoint stores it (docs/model.md §8.2):
 *   FP8:   per 128×128 block b,  scale_inv[b] = amax_b / 448 (1 for an all-zero block),
 *          Wq = e4m3(W / scale_inv[b]),  so that W ≈ e4m3(Wq) · scale_inv[b]
 *          — only for the linear projections; embeddings, heads, the gate and norms stay BF16
 *   BF16:  round to nearest even;   F32: as is.
 * The correction biases are always F32. With shards, each scale is written to the shard after its
 * weight's, so readers are tested on scales that live in another file (docs/formats.md §1.3).
 * The presets are the family's configurations (DeepSeek-V3, V3.1, Kimi K2, Moonlight) at their real
 * and at smaller sizes: a table of sizes, each row naming the family whose other fields it takes.
 */
#include "ckpt.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "fp8.h"
#include "base/outfile.h"
#include "base/rng.h"
#include "base/safetensors.h"

#include <cjson/cJSON.h>

/* ------------------------------------------------------------------------------------- */
/* presets                                                                                 */

/**
 * The fields a family member's config.json fixes whatever the size (docs/model.md §1.2, §13.1):
 * DeepSeek-V3 (and R1, V3-0324, whose configs are V3's), V3.1 (UE8M0 scales), Kimi K2 and Moonlight.
 */
typedef struct {
    const char *name, *model_type;
    double rope_theta;
    int has_yarn;
    double rope_factor, beta_fast, beta_slow; /* YaRN (mscale = mscale_all_dim = 1, L0 = 4096) */
    int max_position_embeddings;
    double routed_scaling_factor, rms_norm_eps;
    int bos_token_id, eos_token_id;           /* 0 / 1 instead when they do not fit a preset's vocabulary */
    int scale_ue8m0;
} Family;

static const Family FAMILIES[] = {
    /*                   model_type    theta yarn  factor  β_fast β_slow  max_pos   rsf    eps      bos     eos ue8m0 */
    { "v3",        "deepseek_v3", 10000,    1,     40,     32,     1,  163840, 2.5,   1e-6,      0,      1, 0 },
    { "v3.1",      "deepseek_v3", 10000,    1,     40,     32,     1,  163840, 2.5,   1e-6,      0,      1, 1 },
    { "kimi-k2",   "kimi_k2",     50000,    1,     32,      1,     1,  131072, 2.827, 1e-6, 163584, 163585, 0 },
    { "moonlight", "deepseek_v3", 50000,    0,      1,     32,     1,    8192, 2.446, 1e-5, 163584, 163585, 0 },
};

static void family_defaults(Config *c, const Family *f) {
    memset(c, 0, sizeof *c);
    snprintf(c->model_type, sizeof c->model_type, "%s", f->model_type);
    c->moe_layer_freq = 1, c->norm_topk_prob = 1;
    c->routed_scaling_factor = f->routed_scaling_factor, c->rope_theta = f->rope_theta, c->has_yarn = f->has_yarn;
    c->rope_factor = f->rope_factor, c->original_max_position_embeddings = f->has_yarn ? 4096 : 0;
    c->beta_fast = f->beta_fast, c->beta_slow = f->beta_slow;
    c->mscale = 1.0, c->mscale_all_dim = 1.0, c->max_position_embeddings = f->max_position_embeddings;
    c->rms_norm_eps = f->rms_norm_eps, c->bos_token_id = f->bos_token_id, c->eos_token_id = f->eos_token_id;
    c->scale_ue8m0 = f->scale_ue8m0;
}

/** A preset: the Config fields in which the presets differ (every other field is V3's, v3_defaults). */
typedef struct {
    const char *name;
    int vocab_size, hidden_size, intermediate_size, moe_intermediate_size;
    int num_hidden_layers, num_nextn_predict_layers, first_k_dense_replace;
    int num_attention_heads, q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    int n_routed_experts, n_shared_experts, num_experts_per_tok, n_group, topk_group;
    int has_fp8;
    const char *family; /* a FAMILIES name: the fields that are not sizes */
} Preset;

/*
 * tiny   official-tiny's shape.
 * small  fp8-small-like: FP8 partial edge blocks (144-row projections).
 * mini   ~85 MB FP8 (+ BF16 embeddings): V3's proportions at ~1/9 width — Dq ≈ 0.25 D with a
 *        partial 64-row FP8 block, latent 128 + rope 32, 32 experts in 8 groups, 1 shared, MTP.
 * v3     deepseek-ai/DeepSeek-V3 (docs/model.md §1.2); R1, R1-0528 and V3-0324 have this config too.
 * v3.1, v3.1-small  DeepSeek-V3.1 / V3.1-Terminus: V3's shape with UE8M0 (power-of-two) scales; small's shape.
 * k2     moonshotai/Kimi-K2-Instruct: 384 experts in one group, 64 heads, one dense layer, no MTP,
 *        θ 50000, YaRN 32 with β_fast = β_slow = 1 (docs/model.md §13.1).
 * k2-tiny  K2's routing (384 experts, one group, top-8) and rope at a width that runs in milliseconds.
 * moonlight  moonshotai/Moonlight-16B-A3B: q_lora_rank null (direct q_proj), 64 experts top-6 in one
 *        group, 2 shared, plain RoPE θ 50000 (docs/model.md §13.1–13.2); moonlight-tiny its shape, small.
 * Columns, in Preset's order: vocab_size, hidden_size D, intermediate_size I (dense FFN),
 * moe_intermediate_size Im, num_hidden_layers L, num_nextn_predict_layers MTP,
 * first_k_dense_replace, num_attention_heads H, q_lora_rank Dq, kv_lora_rank Dc, the
 * qk_nope / qk_rope / v head dims, n_routed_experts E, n_shared_experts Es,
 * num_experts_per_tok K, n_group G, topk_group Gk, has_fp8, family (Dq 0 = q_lora_rank null).
 */
static const Preset PRESETS[] = {
    /*               vocab     D      I    Im   L  MTP  dense    H    Dq   Dc  nope  rope    v    E  Es  K  G  Gk fp8 family */
    { "tiny",          320,  256,   384,  128,  4,   1,     1,   4,   96,  64,   32,   16,  32,  16,  2, 4, 4,  2, 0, "v3" },
    { "small",         384,  384,   512,  128,  3,   1,     1,   3,  256, 128,   32,   16,  48,  12,  1, 3, 3,  2, 1, "v3" },
    { "mini",         4096,  768,  2048,  128,  5,   1,     1,  12,  192, 128,   64,   32,  64,  32,  1, 4, 8,  4, 1, "v3" },
    { "v3",         129280, 7168, 18432, 2048, 61,   1,     3, 128, 1536, 512,  128,   64, 128, 256,  1, 8, 8,  4, 1, "v3" },
    { "v3.1",       129280, 7168, 18432, 2048, 61,   1,     3, 128, 1536, 512,  128,   64, 128, 256,  1, 8, 8,  4, 1, "v3.1" },
    { "v3.1-small",    384,  384,   512,  128,  3,   1,     1,   3,  256, 128,   32,   16,  48,  12,  1, 3, 3,  2, 1, "v3.1" },
    { "k2",         163840, 7168, 18432, 2048, 61,   0,     1,  64, 1536, 512,  128,   64, 128, 384,  1, 8, 1,  1, 1, "kimi-k2" },
    { "k2-tiny",       256,   64,   128,    8,  3,   0,     1,   4,   32,  32,   16,    8,  16, 384,  1, 8, 1,  1, 0, "kimi-k2" },
    { "moonlight",  163840, 2048, 11264, 1408, 27,   0,     1,  16,    0, 512,  128,   64, 128,  64,  2, 6, 1,  1, 0, "moonlight" },
    { "moonlight-tiny", 256,  64,   128,   16,  3,   0,     1,   4,    0,  32,   16,    8,  16,  64,  2, 6, 1,  1, 0, "moonlight" },
};

int config_preset(Config *c, const char *name, Err *err) {
    const Preset *p = NULL;
    char names[256] = "";
    for (size_t i = 0; i < sizeof PRESETS / sizeof PRESETS[0]; i++) {
        if (!strcmp(name, PRESETS[i].name)) p = &PRESETS[i];
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", PRESETS[i].name);
    }
    if (!p) return err_set(err, "unknown preset '%s' (%s)", name, names);
    const Family *f = NULL;
    for (size_t i = 0; i < sizeof FAMILIES / sizeof FAMILIES[0]; i++)
        if (!strcmp(p->family, FAMILIES[i].name)) f = &FAMILIES[i];
    DSV3_ASSERT(f);
    family_defaults(c, f);
    if (c->bos_token_id >= p->vocab_size || c->eos_token_id >= p->vocab_size) c->bos_token_id = 0, c->eos_token_id = 1;
    c->vocab_size = p->vocab_size, c->hidden_size = p->hidden_size, c->intermediate_size = p->intermediate_size;
    c->moe_intermediate_size = p->moe_intermediate_size, c->num_hidden_layers = p->num_hidden_layers;
    c->num_nextn_predict_layers = p->num_nextn_predict_layers, c->first_k_dense_replace = p->first_k_dense_replace;
    c->num_attention_heads = p->num_attention_heads, c->q_lora_rank = p->q_lora_rank, c->kv_lora_rank = p->kv_lora_rank;
    c->qk_nope_head_dim = p->qk_nope_head_dim, c->qk_rope_head_dim = p->qk_rope_head_dim, c->v_head_dim = p->v_head_dim;
    c->n_routed_experts = p->n_routed_experts, c->n_shared_experts = p->n_shared_experts;
    c->num_experts_per_tok = p->num_experts_per_tok, c->n_group = p->n_group, c->topk_group = p->topk_group;
    c->has_fp8 = p->has_fp8;
    /* Round-trip through JSON so every derived field is computed exactly as for a loaded config. */
    char *json = config_to_json(c);
    if (!json) return err_set(err, "out of memory");
    int rc = config_parse(c, json, strlen(json), name, err);
    free(json);
    return rc;
}

/* ------------------------------------------------------------------------------------- */
/* random source                                                                           */

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/** out[i] = std · normal_i of the sequence that starts at @p r, for i in a range. */
typedef struct {
    Rng r;
    float std;
    float *out;
} NormalFill;

static void normal_range(void *ctx, int64_t lo, int64_t hi) {
    const NormalFill *f = ctx;
    Rng r = f->r;
    rng_advance(&r, (uint64_t)lo * RNG_U32_PER_NORMAL);
    for (int64_t i = lo; i < hi; i++) f->out[i] = f->std * rng_normal(&r);
}

int ckpt_random_source(void *ctx, const WeightSlot *s, float *out) {
    const RandomInit *ri = ctx;
    /* MTP copies of the embedding and head draw the same values as the main ones. */
    const char *canon = s->name;
    size_t n = strlen(s->name);
    if (s->mtp >= 0 && n > 19 && !strcmp(s->name + n - 19, "embed_tokens.weight")) canon = "model.embed_tokens.weight";
    if (s->mtp >= 0 && n > 23 && !strcmp(s->name + n - 23, "shared_head.head.weight")) canon = "lm_head.weight";
    Rng r;
    rng_seed(&r, ri->seed ^ name_hash(canon));
    size_t total = (size_t)s->rows * (size_t)s->cols;
    int is_embed = !strcmp(canon, "model.embed_tokens.weight");
    if (s->kind == WEIGHT_VECTOR) {
        if (s->f32_only)
            for (size_t i = 0; i < total; i++) out[i] = ri->bias_std * rng_normal(&r);
        else
            for (size_t i = 0; i < total; i++) out[i] = 1.0f + 0.1f * rng_normal(&r);
        return 0;
    }
    float std = is_embed ? 1.0f : 1.0f / sqrtf((float)s->cols);
    /* Large matrices in parallel: each range jumps the generator to its first element, so the
     * values are those of one sequential pass (a 671B checkpoint is ~10^12 normals). */
    NormalFill f = { r, std, out };
    parallel_ranges((int64_t)total, 1 << 20, normal_range, &f);
    return 0;
}

/* ------------------------------------------------------------------------------------- */
/* writer                                                                                  */

/** One file entry: a tensor or its FP8 scale grid. */
typedef struct {
    int slot;       /* index into Plan.slots */
    int is_scale;
    int shard;
    char name[200];
} PlanEntry;

typedef struct {
    WeightSlot *slots;
    int n_slots, cap_slots;
    PlanEntry *entries;
    int n_entries;
    const CkptLayout *layout;
    CkptSource src;
    void *src_ctx;
    float *tmp;         /* FP32 values of the tensor being written */
    size_t tmp_cap;
    int tmp_slot;       /* the slot whose values tmp holds (-1: none) */
    const PlanEntry *current; /* entries of the shard being written, parallel to its StEntry array */
    const StEntry *current_st;
    int ue8m0;          /* power-of-two block scales (config scale_fmt ue8m0) */
} Plan;

static int collect_slot(void *ctx, const WeightSlot *s) {
    Plan *p = ctx;
    if (p->n_slots == p->cap_slots) {
        int cap = p->cap_slots ? 2 * p->cap_slots : 256;
        WeightSlot *g = realloc(p->slots, (size_t)cap * sizeof *g);
        if (!g) return -1;
        p->slots = g;
        p->cap_slots = cap;
    }
    p->slots[p->n_slots++] = *s;
    return 0;
}

/** Storage dtype of a slot in this layout. */
static DType slot_dtype(const Plan *p, const WeightSlot *s) {
    if (s->f32_only || p->layout->format == CKPT_F32) return DT_F32;
    if (s->kind == WEIGHT_MATRIX && p->layout->format == CKPT_FP8 && (s->fp8 == 1 || (s->fp8 == 2 && p->layout->fp8_eh_proj)))
        return DT_F8_E4M3;
    return DT_BF16;
}

/** Per-128×128-block scale (amax/448; 1 for an all-zero block) of a [rows][cols] matrix; with
 *  @p ue8m0 rounded up to a power of two, as DeepSeek-V3.1's checkpoint stores them (docs/model.md §13.4). */
static float block_scale(const float *w, int64_t cols, int64_t rows, int64_t br, int64_t bc, int ue8m0) {
    float amax = 0.0f;
    for (int64_t i = br * 128; i < rows && i < (br + 1) * 128; i++)
        for (int64_t j = bc * 128; j < cols && j < (bc + 1) * 128; j++) amax = fmaxf(amax, fabsf(w[i * cols + j]));
    float s = amax > 0.0f ? amax / FP8_E4M3_MAX : 1.0f;
    return ue8m0 ? fp8_scale_ue8m0(s) : s;
}

/** e4m3 codes of a [rows][cols] FP32 matrix, block by 128×128 block. */
typedef struct {
    const float *w;
    uint8_t *out;
    int64_t rows, cols;
    int ue8m0;
} Fp8Fill;

static void fp8_block_rows(void *ctx, int64_t br0, int64_t br1) {
    const Fp8Fill *f = ctx;
    int64_t gc = (f->cols + 127) / 128;
    for (int64_t br = br0; br < br1; br++)
        for (int64_t bc = 0; bc < gc; bc++) {
            float scale = block_scale(f->w, f->cols, f->rows, br, bc, f->ue8m0);
            for (int64_t i = br * 128; i < f->rows && i < (br + 1) * 128; i++)
                for (int64_t j = bc * 128; j < f->cols && j < (bc + 1) * 128; j++)
                    f->out[i * f->cols + j] = fp8_e4m3_from_f32(f->w[i * f->cols + j] / scale);
        }
}

static int fill_entry(void *ctx, const StEntry *e, void *buf, size_t nbytes) {
    Plan *p = ctx;
    const PlanEntry *pe = &p->current[e - p->current_st];
    const WeightSlot *s = &p->slots[pe->slot];
    size_t total = (size_t)s->rows * (size_t)s->cols;
    if (total > p->tmp_cap) {
        float *g = realloc(p->tmp, total * sizeof *g);
        if (!g) return -1;
        p->tmp = g;
        p->tmp_cap = total;
    }
    /* an FP8 tensor's data and scale entries are written one after the other: draw its values once */
    if (p->tmp_slot != pe->slot) {
        p->tmp_slot = -1;
        if (p->src(p->src_ctx, s, p->tmp)) return -1;
        p->tmp_slot = pe->slot;
    }
    int64_t gr = (s->rows + 127) / 128, gc = (s->cols + 127) / 128;
    if (pe->is_scale) {
        float *sc = buf;
        for (int64_t br = 0; br < gr; br++)
            for (int64_t bc = 0; bc < gc; bc++) sc[br * gc + bc] = block_scale(p->tmp, s->cols, s->rows, br, bc, p->ue8m0);
        return 0;
    }
    switch (e->dtype) {
    case DT_F32:
        memcpy(buf, p->tmp, nbytes);
        break;
    case DT_BF16:
        for (size_t i = 0; i < total; i++) {
            uint16_t b = f32_to_bf16(p->tmp[i]);
            memcpy((char *)buf + 2 * i, &b, 2);
        }
        break;
    case DT_F8_E4M3: {
        Fp8Fill f = { p->tmp, buf, s->rows, s->cols, p->ue8m0 };
        parallel_ranges(gr, 8, fp8_block_rows, &f); /* each 128-row block row is independent */
        break;
    }
    default:
        return -1;
    }
    return 0;
}

static int write_text(const char *dir, const char *name, const char *text, Err *err) {
    char path[4096];
    if (path_join(path, sizeof path, dir, name)) return err_set(err, "%s: path too long", dir);
    return write_file_atomic(path, text, strlen(text), err);
}

static int copy_file(const char *from_dir, const char *to_dir, const char *name, int required, Err *err) {
    char src[4096], dst[4096], *data;
    size_t len;
    if (path_join(src, sizeof src, from_dir, name) || path_join(dst, sizeof dst, to_dir, name))
        return err_set(err, "%s: path too long", from_dir);
    struct stat sb;
    if (!required && stat(src, &sb) != 0 && errno == ENOENT) return 0;
    if (read_file(src, (size_t)1 << 30, &data, &len, err)) return -1;
    int rc = write_file_atomic(dst, data, len, err);
    free(data);
    return rc;
}

int ckpt_copy_tokenizer(const char *from_dir, const char *to_dir, int required, Err *err) {
    return copy_file(from_dir, to_dir, "tokenizer.json", required, err) ||
           copy_file(from_dir, to_dir, "tokenizer_config.json", 0, err) ? -1 : 0;
}

const char *const CKPT_OWNED_FILES[] = {
    "config.json", "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
    "optimizer.safetensors", NULL,
};

/** Refuses to start a write the file system of @p dir has no room for (a V3 checkpoint is ~680 GB). */
static int check_free_space(const char *dir, uint64_t need, Err *err) {
    struct statvfs fs;
    if (statvfs(dir, &fs) != 0) return 0; /* unknown: let the writes report it */
    uint64_t avail = (uint64_t)fs.f_bavail * (uint64_t)fs.f_frsize;
    if (need > avail)
        return err_set(err, "%s: the checkpoint needs %.2f GB but its file system has %.2f GB free", dir, (double)need / 1e9,
                       (double)avail / 1e9);
    return 0;
}

int ckpt_write(const char *dir, const Config *cfg, const CkptLayout *layout, CkptSource src, void *ctx, FILE *log,
               Err *err) {
    OutDir out;
    if (outdir_open(&out, dir, CKPT_OWNED_FILES, err)) return -1;
    if (ckpt_write_into(out.tmp, cfg, layout, src, ctx, log, err)) {
        err_prefix(err, "%s", dir);
        outdir_abort(&out);
        return -1;
    }
    return outdir_commit(&out, err);
}

int ckpt_write_into(const char *dir, const Config *cfg, const CkptLayout *layout, CkptSource src, void *ctx, FILE *log,
                    Err *err) {
    if (layout->shards < 1 || layout->shards > 9999) return err_set(err, "shards must be in [1, 9999]");
    if (layout->n_mtp < 0 || layout->n_mtp > cfg->num_nextn_predict_layers)
        return err_set(err, "cannot write %d MTP modules: config has num_nextn_predict_layers = %d", layout->n_mtp,
                       cfg->num_nextn_predict_layers);
    Config c = *cfg;
    c.num_nextn_predict_layers = layout->n_mtp;
    c.has_fp8 = layout->format == CKPT_FP8;
    Plan p;
    memset(&p, 0, sizeof p);
    p.tmp_slot = -1;
    p.layout = layout, p.src = src, p.src_ctx = ctx, p.ue8m0 = c.scale_ue8m0;
    Weights w;
    StEntry *st = NULL;
    PlanEntry *shard_pe = NULL;
    char *json = NULL;
    int rc = -1;
    if (weights_alloc(&w, &c, layout->n_mtp, err)) return -1;
    if (weights_foreach(&w, &c, collect_slot, &p)) {
        err_set(err, "out of memory");
        goto done;
    }
    /* Entries in table order: each tensor, then its scale grid. Shards split the bytes evenly;
     * a scale goes to the shard after its weight's, so cross-shard lookups are exercised. */
    p.entries = calloc((size_t)p.n_slots * 2 + 1, sizeof *p.entries);
    st = calloc((size_t)p.n_slots * 2 + 1, sizeof *st);
    shard_pe = calloc((size_t)p.n_slots * 2 + 1, sizeof *shard_pe);
    if (!p.entries || !st || !shard_pe) {
        err_set(err, "out of memory");
        goto done;
    }
    uint64_t total = 0, acc = 0, scales = 0;
    for (int i = 0; i < p.n_slots; i++) {
        const WeightSlot *s = &p.slots[i];
        total += (uint64_t)s->rows * (uint64_t)s->cols * (uint64_t)(dtype_bits(slot_dtype(&p, s)) / 8);
        if (slot_dtype(&p, s) == DT_F8_E4M3) scales += (uint64_t)((s->rows + 127) / 128) * (uint64_t)((s->cols + 127) / 128) * 4;
    }
    /* + headers, index and config: a few hundred bytes per tensor */
    if (check_free_space(dir, total + scales + (uint64_t)p.n_slots * 512 + 65536, err)) goto done;
    for (int i = 0; i < p.n_slots; i++) {
        const WeightSlot *s = &p.slots[i];
        DType dt = slot_dtype(&p, s);
        int shard = (int)(total ? acc * (uint64_t)layout->shards / (total + 1) : 0);
        acc += (uint64_t)s->rows * (uint64_t)s->cols * (uint64_t)(dtype_bits(dt) / 8);
        PlanEntry *e = &p.entries[p.n_entries++];
        e->slot = i, e->is_scale = 0, e->shard = shard;
        snprintf(e->name, sizeof e->name, "%s", s->name);
        if (dt == DT_F8_E4M3) {
            PlanEntry *sc = &p.entries[p.n_entries++];
            sc->slot = i, sc->is_scale = 1, sc->shard = (shard + 1) % layout->shards;
            snprintf(sc->name, sizeof sc->name, "%s_scale_inv", s->name);
        }
    }
    cJSON *index = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
    cJSON *wm = cJSON_AddObjectToObject(index, "weight_map");
    uint64_t total_size = 0;
    for (int sh = 0; sh < layout->shards; sh++) {
        char fname[64], path[4096];
        if (layout->shards == 1) snprintf(fname, sizeof fname, "model.safetensors");
        else snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", sh + 1, layout->shards);
        if (path_join(path, sizeof path, dir, fname)) {
            cJSON_Delete(index);
            err_set(err, "%s: path too long", dir);
            goto done;
        }
        int n = 0;
        for (int i = 0; i < p.n_entries; i++) {
            const PlanEntry *e = &p.entries[i];
            if (e->shard != sh) continue;
            const WeightSlot *s = &p.slots[e->slot];
            StEntry *x = &st[n];
            memset(x, 0, sizeof *x);
            x->name = e->name;
            x->ndim = s->kind == WEIGHT_VECTOR ? 1 : 2;
            if (e->is_scale) {
                x->dtype = DT_F32, x->shape[0] = (s->rows + 127) / 128, x->shape[1] = (s->cols + 127) / 128;
            } else {
                x->dtype = slot_dtype(&p, s);
                if (x->ndim == 1) x->shape[0] = s->cols;
                else x->shape[0] = s->rows, x->shape[1] = s->cols;
            }
            total_size += st_entry_bytes(x);
            shard_pe[n++] = *e;
            cJSON_AddStringToObject(wm, e->name, fname);
        }
        p.current = shard_pe;
        p.current_st = st;
        if (log) fprintf(log, "dsv3: writing %s (%d tensors)\n", fname, n);
        if (st_write_stream(path, st, n, "{\"format\":\"pt\"}", fill_entry, &p, err)) {
            cJSON_Delete(index);
            goto done;
        }
    }
    cJSON_AddNumberToObject(meta, "total_size", (double)total_size);
    if (layout->shards > 1) {
        char *text = cJSON_Print(index);
        int wrc = text ? write_text(dir, "model.safetensors.index.json", text, err) : err_set(err, "out of memory");
        free(text);
        if (wrc) {
            cJSON_Delete(index);
            goto done;
        }
    }
    cJSON_Delete(index);
    json = config_to_json(&c);
    if (!json || write_text(dir, "config.json", json, err)) goto done;
    rc = 0;
done:
    free(json);
    free(st);
    free(shard_pe);
    free(p.entries);
    free(p.slots);
    free(p.tmp);
    weights_free(&w);
    return rc;
}
