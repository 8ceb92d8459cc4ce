/**
 * @file params.c
 * @brief ParamSet: the tensor table (docs/model.md §1.3, weights.c) turned into FP32 parameter and gradient
 *        buffers, and the initializations a training run starts from.
 *
 * Two walks of weights_foreach: the first lists every tensor with its offset (aliases for the MTP
 * copies of the embedding and head, paper §2.2), the second binds a ::Weights struct to the values
 * and another to the gradients. Anything that iterates the table afterwards — the optimizer,
 * ckpt_write through params_ckpt_source, the resume reader — therefore sees the same order and the
 * same shapes as the checkpoint loader.
 *
 * Initialization (paper §4.2: "all learnable parameters are randomly initialized with a standard
 * deviation of 0.006"): matrices N(0, std²); RMSNorm weights start at 1 and the correction biases at
 * 0, the values that make those tensors neutral (the paper does not list them separately).
 */
#include "params.h"

#include <math.h>
#include <string.h>

#include "base/rng.h"

typedef struct {
    ParamSet *p;
    int cap;
    int embed, head; /* entries of the main embedding and lm_head (what MTP copies alias) */
} Collect;

static int collect(void *ctx, const WeightSlot *s) {
    Collect *c = ctx;
    ParamSet *p = c->p;
    if (p->n_entries == c->cap) {
        int cap = c->cap ? 2 * c->cap : 256;
        ParamEntry *g = realloc(p->entries, (size_t)cap * sizeof *g);
        if (!g) return -1;
        p->entries = g;
        c->cap = cap;
    }
    ParamEntry *e = &p->entries[p->n_entries];
    memset(e, 0, sizeof *e);
    e->slot = *s;
    e->n = (size_t)s->rows * (size_t)s->cols;
    int alias = -1;
    if (s->mtp >= 0 && s->matrix == &p->w.mtp[s->mtp].embed_tokens) alias = c->embed;
    if (s->mtp >= 0 && s->matrix == &p->w.mtp[s->mtp].shared_head_head) alias = c->head;
    if (alias >= 0) {
        e->role = PARAM_ALIAS;
        e->offset = p->entries[alias].offset;
    } else {
        e->role = s->kind == WEIGHT_MATRIX ? PARAM_DECAY : s->f32_only ? PARAM_BIAS : PARAM_NO_DECAY;
        e->offset = p->n;
        if (size_add(&p->n, p->n, e->n)) return -1;
    }
    if (s->matrix == &p->w.embed_tokens) c->embed = p->n_entries;
    if (s->matrix == &p->w.lm_head) c->head = p->n_entries;
    p->n_entries++;
    return 0;
}

/** Points a slot of some Weights at buffer + offset. */
static void bind(const WeightSlot *s, float *buf, const ParamEntry *e) {
    float *at = buf ? buf + e->offset : NULL;
    if (s->kind == WEIGHT_MATRIX) {
        *s->matrix = tensor_f32(at, s->rows, s->cols); /* data NULL: a gradient nobody wants */
    } else {
        *s->vector = at;
    }
}

typedef struct {
    ParamSet *p;
    float *buf;
    int i;
} Binder;

static int bind_next(void *ctx, const WeightSlot *s) {
    Binder *b = ctx;
    const ParamEntry *e = &b->p->entries[b->i++];
    DSV3_ASSERT(!strcmp(e->slot.name, s->name));
    bind(s, b->buf, e);
    return 0;
}

int params_init(ParamSet *p, const Config *c, int n_mtp, int with_grad, Err *err) {
    memset(p, 0, sizeof *p);
    p->config = *c;
    p->config.num_nextn_predict_layers = n_mtp;
    p->n_mtp = n_mtp;
    if (weights_alloc(&p->w, &p->config, n_mtp, err)) return -1;
    if (weights_alloc(&p->g, &p->config, n_mtp, err)) goto fail;
    Collect col = { p, 0, -1, -1 };
    if (weights_foreach(&p->w, &p->config, collect, &col)) {
        err_set(err, "parameter table too large");
        goto fail;
    }
    p->data = xcalloc(p->n, sizeof *p->data);
    if (with_grad) p->grad = xcalloc(p->n, sizeof *p->grad);
    if (!p->data || (with_grad && !p->grad)) {
        err_set(err, "out of memory for %zu parameters (%.1f MiB%s)", p->n, (double)p->n * 4.0 / 1048576.0,
                with_grad ? " + gradients" : "");
        goto fail;
    }
    Binder bw = { p, p->data, 0 }, bg = { p, p->grad, 0 };
    weights_foreach(&p->w, &p->config, bind_next, &bw);
    weights_foreach(&p->g, &p->config, bind_next, &bg);
    return 0;
fail:
    params_free(p);
    return -1;
}

void params_free(ParamSet *p) {
    weights_free(&p->w);
    weights_free(&p->g);
    free(p->entries);
    free(p->data);
    free(p->grad);
    memset(p, 0, sizeof *p);
}

const ParamEntry *params_find(ParamSet *p, const char *name) {
    if (p->n_entries == 0) return NULL;
    for (int k = 0; k < p->n_entries; k++) {
        int i = (p->cursor + k) % p->n_entries;
        if (!strcmp(p->entries[i].slot.name, name)) {
            p->cursor = (i + 1) % p->n_entries;
            return &p->entries[i];
        }
    }
    return NULL;
}

int params_fill(ParamSet *p, CkptSource src, void *ctx, Err *err) {
    for (int i = 0; i < p->n_entries; i++) {
        const ParamEntry *e = &p->entries[i];
        if (e->role == PARAM_ALIAS) continue;
        if (src(ctx, &e->slot, p->data + e->offset)) return err_set(err, "cannot initialize tensor '%s'", e->slot.name);
    }
    return 0;
}

int params_ckpt_source(void *ctx, const WeightSlot *s, float *out) {
    ParamSet *p = ctx;
    const ParamEntry *e = params_find(p, s->name);
    if (!e || e->slot.rows != s->rows || e->slot.cols != s->cols) return -1;
    memcpy(out, p->data + e->offset, e->n * sizeof *out);
    return 0;
}

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

int params_init_source(void *ctx, const WeightSlot *s, float *out) {
    const ParamInit *pi = ctx;
    size_t n = (size_t)s->rows * (size_t)s->cols;
    if (s->kind == WEIGHT_VECTOR) {
        /* RMSNorm weights start at 1 (the identity scale); correction biases at 0 (no preference). */
        float v = s->f32_only ? 0.0f : 1.0f;
        for (size_t i = 0; i < n; i++) out[i] = v;
        return 0;
    }
    Rng r;
    rng_seed(&r, pi->seed ^ name_hash(s->name));
    for (size_t i = 0; i < n; i++) out[i] = pi->std * rng_normal(&r);
    return 0;
}

double params_grad_sq_norm(const ParamSet *p) {
    double sum = 0.0;
    for (int i = 0; i < p->n_entries; i++) {
        const ParamEntry *e = &p->entries[i];
        if (e->role == PARAM_ALIAS || e->role == PARAM_BIAS) continue;
        const float *g = p->grad + e->offset;
        for (size_t j = 0; j < e->n; j++) sum += (double)g[j] * g[j];
    }
    return sum;
}
