/**
 * @file model_load.c
 * @brief A checkpoint directory → a Model: config.json, the mapped safetensors (one file or
 *        shards), and every tensor of the table (docs/model.md §1.3) bound and validated, plus the
 *        stored sizes `dsv3 info` and the benchmarks report.
 *
 * Binding walks the tensor table of weights.c twice:
 *   pass 1: each matrix slot gets a Tensor view into the mapping — found by its HF name, its shape
 *           checked against the config, its dtype one of F32/BF16/F16/F8_E4M3, and an F8 matrix's
 *           `<name>_scale_inv` checked to be an F32 grid [ceil(rows/128)][ceil(cols/128)]
 *           (docs/model.md §8.2) — while the 1-D tensors are counted;
 *   pass 2: the 1-D tensors (norm weights, correction biases) are decoded once into one FP32 array.
 * Nothing else is converted or copied: the matrices are used in their stored dtype straight from the
 * mapping. Every refusal is one line naming the shard file, the tensor, what was found and what the
 * config requires (tests/bad/model_*, tests/test_bad_inputs.c).
 */
#include "model.h"

#include <stdlib.h>
#include <string.h>

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
