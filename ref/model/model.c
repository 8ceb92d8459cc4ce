/**
 * @file model.c
 * @brief Checkpoint binding (docs/model.md §1.3) and the forward pass over chunks (docs/model.md §2).
 */
#include "model.h"

#include <stdlib.h>
#include <string.h>

#include "embed.h"
#include "rmsnorm.h"

/* ------------------------------------------------------------------------------------- */
/* binding the tensor table to a mapped checkpoint                                         */

typedef struct {
    Model *m;
    unsigned char *used;   /* [st.n_tensors] */
    float *next_vec;       /* NULL while counting vector floats */
    size_t vec_floats;
    Err *err;
} Binder;

static const char *shard_of(const SafeTensors *st, const StTensor *t) { return st->files[t->shard].path; }

/** Finds a tensor, checks its shape, and marks it used. */
static const StTensor *find_checked(Binder *b, const char *name, int ndim, int64_t d0, int64_t d1) {
    const SafeTensors *st = &b->m->st;
    const StTensor *t = st_find(st, name);
    if (!t) {
        err_set(b->err, "checkpoint: missing tensor '%s' (required by config.json)", name);
        return NULL;
    }
    int ok = t->ndim == ndim && t->shape[0] == d0 && (ndim == 1 || t->shape[1] == d1);
    if (!ok) {
        char got[128] = "[";
        for (int i = 0; i < t->ndim; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        strcat(got, "]");
        if (ndim == 1) err_set(b->err, "%s: tensor '%s' has shape %s, config.json needs [%lld]", shard_of(st, t), name, got, (long long)d0);
        else err_set(b->err, "%s: tensor '%s' has shape %s, config.json needs [%lld, %lld]", shard_of(st, t), name, got,
                     (long long)d0, (long long)d1);
        return NULL;
    }
    b->used[t - st->tensors] = 1;
    return t;
}

static int bind_matrix(Binder *b, const WeightSlot *s) {
    const SafeTensors *st = &b->m->st;
    const StTensor *t = find_checked(b, s->name, 2, s->rows, s->cols);
    if (!t) return -1;
    Tensor *dst = s->matrix;
    memset(dst, 0, sizeof *dst);
    dst->data = t->data;
    dst->dtype = t->dtype;
    dst->rows = s->rows;
    dst->cols = s->cols;
    char sname[200];
    snprintf(sname, sizeof sname, "%s_scale_inv", s->name);
    const StTensor *sc = st_find(st, sname);
    switch (t->dtype) {
    case DT_F32: case DT_BF16: case DT_F16:
        if (sc) return err_set(b->err, "%s: '%s' has a scale but its weight is %s, not F8_E4M3", shard_of(st, sc), sname,
                               dtype_name(t->dtype));
        return 0;
    case DT_F8_E4M3: {
        if (!b->m->config.has_fp8)
            return err_set(b->err, "%s: tensor '%s' is F8_E4M3 but config.json has no fp8 quantization_config",
                           shard_of(st, t), s->name);
        /* Scale grid [ceil(out/128)][ceil(in/128)] F32 (docs/model.md §1.3, §8.2). */
        int64_t gr = (s->rows + 127) / 128, gc = (s->cols + 127) / 128;
        if (!sc) return err_set(b->err, "%s: F8_E4M3 tensor '%s' has no '%s'", shard_of(st, t), s->name, sname);
        if (sc->dtype != DT_F32)
            return err_set(b->err, "%s: '%s' is %s, must be F32", shard_of(st, sc), sname, dtype_name(sc->dtype));
        if (!(sc = find_checked(b, sname, 2, gr, gc))) {
            err_prefix(b->err, "scale grid must be [ceil(%lld/128), ceil(%lld/128)]", (long long)s->rows, (long long)s->cols);
            return -1;
        }
        dst->scale_inv = sc->data;
        return 0;
    }
    default:
        return err_set(b->err, "%s: tensor '%s' has dtype %s; weights must be F32, BF16, F16 or F8_E4M3", shard_of(st, t),
                       s->name, dtype_name(t->dtype));
    }
}

static int bind_vector(Binder *b, const WeightSlot *s) {
    const SafeTensors *st = &b->m->st;
    const StTensor *t = find_checked(b, s->name, 1, s->cols, 0);
    if (!t) return -1;
    if (s->f32_only && t->dtype != DT_F32)
        return err_set(b->err, "%s: tensor '%s' is %s, must be F32 (docs/model.md §1.3)", shard_of(st, t), s->name, dtype_name(t->dtype));
    if (t->dtype != DT_F32 && t->dtype != DT_BF16 && t->dtype != DT_F16)
        return err_set(b->err, "%s: tensor '%s' has dtype %s; vectors must be F32, BF16 or F16", shard_of(st, t), s->name,
                       dtype_name(t->dtype));
    if (!b->next_vec) { /* counting pass */
        b->vec_floats += (size_t)s->cols;
        return 0;
    }
    Tensor view = { t->data, t->dtype, 1, s->cols, NULL };
    tensor_row(&view, 0, 0, s->cols, 1, b->next_vec);
    *s->vector = b->next_vec;
    b->next_vec += s->cols;
    return 0;
}

static int bind_one(void *ctx, const WeightSlot *s) {
    Binder *b = ctx;
    if (s->kind == WEIGHT_MATRIX) return b->next_vec ? 0 : bind_matrix(b, s);
    return bind_vector(b, s);
}

/** MTP module k is present if any tensor named "model.layers.<N+k>." exists. */
static int mtp_present(const SafeTensors *st, int layer) {
    char prefix[64];
    int n = snprintf(prefix, sizeof prefix, "model.layers.%d.", layer);
    for (int i = 0; i < st->n_tensors; i++)
        if (!strncmp(st->tensors[i].name, prefix, (size_t)n)) return 1;
    return 0;
}

int model_load(Model *m, const char *dir, FILE *log, Err *err) {
    memset(m, 0, sizeof *m);
    Binder b = { m, NULL, NULL, 0, err };
    if (config_load(&m->config, dir, err)) return -1;
    const Config *c = &m->config;
    if (st_open(&m->st, dir, log, err)) return -1;
    int n_mtp = 0;
    while (n_mtp < c->num_nextn_predict_layers && mtp_present(&m->st, c->num_hidden_layers + n_mtp)) n_mtp++;
    if (weights_alloc(&m->w, c, n_mtp, err)) goto fail;
    b.used = calloc((size_t)m->st.n_tensors + 1, 1);
    if (!b.used) {
        err_set(err, "out of memory");
        goto fail;
    }
    /* Pass 1 binds the matrices and counts the vector floats; pass 2 decodes the vectors. */
    if (weights_foreach(&m->w, c, bind_one, &b)) goto fail;
    m->vectors = xcalloc(b.vec_floats, sizeof(float));
    if (!m->vectors) {
        err_set(err, "out of memory");
        goto fail;
    }
    b.next_vec = m->vectors;
    if (weights_foreach(&m->w, c, bind_one, &b)) goto fail;
    for (int i = 0; i < m->st.n_tensors; i++) m->n_unused += !b.used[i];
    free(b.used);
    b.used = NULL;
    if (rope_init(&m->rope, c, err)) goto fail;
    return 0;
fail:
    free(b.used);
    model_free(m);
    return -1;
}

void model_free(Model *m) {
    weights_free(&m->w);
    st_close(&m->st);
    free(m->vectors);
    rope_free(&m->rope);
    memset(m, 0, sizeof *m);
}

/* ------------------------------------------------------------------------------------- */
/* sizes                                                                                   */

/** Bytes of one tensor slot as stored (scales included). */
static int add_bytes(void *ctx, const WeightSlot *s) {
    uint64_t *acc = ctx; /* [0] total, [1] routed experts, [2] MTP */
    uint64_t b = s->kind == WEIGHT_MATRIX ? tensor_bytes(s->matrix) : (uint64_t)s->cols * 4;
    acc[0] += b;
    if (s->expert >= 0 && s->mtp < 0) acc[1] += b;
    if (s->mtp >= 0) acc[2] += b;
    return 0;
}

void model_weight_bytes(const Model *m, uint64_t out[3]) {
    out[0] = out[1] = out[2] = 0;
    weights_foreach((Weights *)&m->w, &m->config, add_bytes, out);
}

uint64_t model_decode_weight_bytes(const Model *m) {
    const Config *c = &m->config;
    uint64_t acc[3];
    model_weight_bytes(m, acc);
    uint64_t embed = tensor_bytes(&m->w.embed_tokens);
    uint64_t dense_part = acc[0] - acc[1] - acc[2] - embed + embed / (uint64_t)c->vocab_size;
    int moe_layers = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) moe_layers += config_layer_is_moe(c, l);
    uint64_t per_expert = moe_layers ? acc[1] / ((uint64_t)moe_layers * (uint64_t)c->n_routed_experts) : 0;
    return dense_part + (uint64_t)moe_layers * (uint64_t)c->num_experts_per_tok * per_expert;
}

/* ------------------------------------------------------------------------------------- */
/* run state                                                                               */


static void runstate_layout(RunState *s, const Config *c, int64_t max_T, int64_t max_seq, Arena *ar) {
    int64_t D = c->hidden_size, half = c->qk_rope_head_dim / 2;
    int64_t max_in = config_max_linear_in(c);
    ARENA_TAKE(ar, s->h, max_T * D);
    ARENA_TAKE(ar, s->normed, max_T * D);
    ARENA_TAKE(ar, s->emb, max_T * D);
    ARENA_TAKE(ar, s->cat, max_T * 2 * D);
    ARENA_TAKE(ar, s->rope_cos, max_T * half);
    ARENA_TAKE(ar, s->rope_sin, max_T * half);
    float *lin = ARENA_TAKE(ar, lin, linear_scratch_floats(max_T, max_in));
    if (lin) s->ctx.lin = linear_scratch_init(lin, max_T, max_in);
    ARENA_TAKE(ar, s->ctx.att_row, max_seq * linear_scratch_threads());
    s->ctx.att_row_len = max_seq;
    ARENA_TAKE(ar, s->ctx.gate_work, 2 * ((int64_t)c->n_routed_experts + c->n_group));
    LayerActsSpec spec = { max_T, 0, 0, 0, s->attn, 0 };
    for (int l = 0; l < c->num_hidden_layers + c->num_nextn_predict_layers; l++) {
        if (config_layer_is_moe(c, l)) spec.moe = 1;
        else spec.dense = 1;
    }
    layer_acts_layout(&s->acts, c, &spec, ar);
}

int runstate_init(RunState *s, const Model *m, int64_t max_T, int64_t max_seq, AttnMode attn, Fp8Mode fp8, Err *err) {
    const Config *c = &m->config;
    memset(s, 0, sizeof *s);
    s->max_T = max_T;
    s->max_seq = max_seq;
    s->attn = attn;
    s->fp8 = fp8;
    Arena count = { 0 };
    runstate_layout(s, c, max_T, max_seq, &count);
    if (count.overflow) return err_set(err, "activation buffers for %lld tokens overflow", (long long)max_T);
    s->mem = aligned_alloc(64, (count.used + 63) & ~(size_t)63);
    if (!s->mem)
        return err_set(err, "out of memory allocating %.1f MiB of activations", (double)count.used / 1048576.0);
    s->bytes = count.used;
    Arena ar = { (char *)s->mem, 0, count.used, 0 };
    runstate_layout(s, c, max_T, max_seq, &ar);
    DSV3_ASSERT(!ar.overflow);
    s->ctx.cfg = c;
    s->ctx.attn = attn;
    s->ctx.fp8 = fp8;
    s->ctx.rope_cos = s->rope_cos;
    s->ctx.rope_sin = s->rope_sin;
    return 0;
}

void runstate_free(RunState *s) {
    free(s->mem);
    memset(s, 0, sizeof *s);
}

void runstate_set_positions(RunState *s, const Model *m, int64_t pos0, int64_t T) {
    int64_t half = m->config.qk_rope_head_dim / 2;
    for (int64_t t = 0; t < T; t++) rope_cos_sin(s->rope_cos + t * half, s->rope_sin + t * half, pos0 + t, &m->rope);
}

/* ------------------------------------------------------------------------------------- */
/* forward                                                                                 */

/** One chunk of at most max_T tokens: embed, blocks, final norm, optional logits. */
static void forward_chunk(const Model *m, RunState *s, KVCache *kv, const int *ids, int64_t T, float *logits,
                          int64_t n_logits, float *hidden, float *normed) {
    const Config *c = &m->config;
    int64_t D = c->hidden_size, pos0 = kv->len;
    /* h0 = Emb[token] (no scaling, docs/model.md §2) */
    embedding_forward(s->h, ids, T, &m->w.embed_tokens);
    runstate_set_positions(s, m, pos0, T);
    for (int l = 0; l < c->num_hidden_layers; l++)
        block_forward(s->h, T, pos0, &m->w.layers[l], &kv->layers[l], &s->acts, &s->ctx);
    if (hidden) memcpy(hidden, s->h, (size_t)(T * D) * sizeof(float));
    rmsnorm_forward(s->normed, D, s->h, D, m->w.norm, T, D, (float)c->rms_norm_eps, NULL);
    if (normed) memcpy(normed, s->normed, (size_t)(T * D) * sizeof(float));
    if (logits && n_logits > 0)
        linear_forward(logits, s->normed + (T - n_logits) * D, n_logits, &m->w.lm_head, FP8_DEQUANT, &s->ctx.lin);
    kv->len += T;
}

int forward_status(const ForwardContext *ctx, Err *err) {
    if (!ctx->moe_hook || !ctx->moe_hook->failed) return 0;
    return err_set(err, "%s", ctx->moe_hook->err.msg);
}

int model_forward(const Model *m, RunState *s, KVCache *kv, const int *ids, int64_t T, float *logits,
                  int64_t n_logits, float *hidden, float *normed, Err *err) {
    const Config *c = &m->config;
    int64_t D = c->hidden_size, V = c->vocab_size;
    if (kv->len + T > kv->max_seq || kv->len + T > s->max_seq)
        return err_set(err, "context full: %lld + %lld tokens exceed the %lld positions allocated", (long long)kv->len,
                       (long long)T, (long long)(kv->max_seq < s->max_seq ? kv->max_seq : s->max_seq));
    if (kv->mode != s->attn) return err_set(err, "KV cache and run state use different attention forms");
    DSV3_ASSERT(n_logits <= T);
    for (int64_t t0 = 0; t0 < T; t0 += s->max_T) {
        int64_t n = T - t0 < s->max_T ? T - t0 : s->max_T;
        /* Logits rows of this piece: those among the last n_logits positions of the whole chunk. */
        int64_t first_logit = T - n_logits, lo = t0 > first_logit ? t0 : first_logit;
        int64_t k = t0 + n > lo ? t0 + n - lo : 0;
        forward_chunk(m, s, kv, ids + t0, n, logits ? logits + (lo - first_logit) * V : NULL, k,
                      hidden ? hidden + t0 * D : NULL, normed ? normed + t0 * D : NULL);
    }
    return forward_status(&s->ctx, err);
}
