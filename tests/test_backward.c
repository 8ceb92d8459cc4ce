/**
 * @file test_backward.c
 * @brief Every *_backward of the reference against central finite differences of its own
 *        *_forward, on tiny shapes (embedding, RMSNorm with strides, YaRN RoPE, linear, SwiGLU FFN,
 *        cross-entropy, MLA, the MoE layer with gate and balance loss, dense and MoE blocks, an
 *        MTP module).
 *
 * Precision. The forwards are the FP32 reference itself (no double copy of the model exists, and
 * a copy would test the copy). The loss L = Σ g·y (g a fixed random cotangent) and the
 * cross-entropy are accumulated in double, and the quotient divides by the step actually taken
 * in FP32 (util_gradcheck.c). What remains is FP32 rounding of the outputs that a perturbation
 * changes: about sqrt(#outputs)·2⁻²⁴·|g||y| ≈ 1e-6 in L for these shapes, i.e. ≈ 5e-4 in a
 * difference quotient with h = 1e-3, against gradients of order 0.1–10. Hence, per element,
 * |fd − an| ≤ 1e-2·max|an| (over the tensor) + 1e-2·max(|fd|, |an|), plus a cosine ≥ 0.9999
 * between the two vectors; truncation error is O(h²) ≈ 1e-6 relative. A wrong term in a
 * backward typically gives errors of 10–100 % and fails both.
 *
 * Routing (MoE): top-k selection is piecewise constant. An element whose ±h evaluations route
 * any token differently from the base is skipped and counted; more than 10 % skipped fails.
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

#include "model/block.h"
#include "model/ckpt.h"
#include "model/embed.h"
#include "model/ffn.h"
#include "train/loss.h"
#include "model/mla.h"
#include "model/moe.h"
#include "model/mtp.h"
#include "train/params.h"
#include "model/rmsnorm.h"
#include "base/rng.h"
#include "model/rope.h"
#include "util_gradcheck.h"

/** Finite-difference settings shared by every check (see the file comment). */
#define FD_H 1e-3
#define FD_RTOL 1e-2
#define FD_ATOL 1e-2
#define FD_SAMPLES 60

static Config cfg;

static float *randn(size_t n, float std, Rng *r) {
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = std * rng_normal(r);
    return x;
}

static double dot_gy(const float *g, const float *y, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)g[i] * (double)y[i];
    return s;
}

static void check(const char *name, float *p, const float *an, size_t n, const GradFn *f) {
    GradCheck r = gradcheck(name, p, an, n, FD_SAMPLES, f, FD_H, FD_RTOL, FD_ATOL, 0x5eed ^ n);
    assert_true(gradcheck_passed(&r));
}

/* ---------------------------------------------------------------------------------------- */
/* elementwise and small ops                                                                  */

typedef struct {
    float *table, *h, *g;
    int ids[7];
} EmbCase;

static double emb_loss(void *ctx) {
    EmbCase *c = ctx;
    Tensor t = tensor_f32(c->table, 11, 5);
    embedding_forward(c->h, c->ids, 7, &t);
    return dot_gy(c->g, c->h, 7 * 5);
}

static void embedding_grad(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 1);
    EmbCase c = { randn(55, 1, &r), calloc(35, sizeof(float)), randn(35, 1, &r), { 3, 0, 3, 10, 7, 3, 1 } };
    float *dt = calloc(55, sizeof(float));
    embedding_backward(dt, c.g, c.ids, 7, 5);
    GradFn f = { emb_loss, NULL, &c };
    check("embedding.table (token 3 thrice)", c.table, dt, 55, &f);
    free(c.table), free(c.h), free(c.g), free(dt);
}

typedef struct {
    float *x, *w, *y, *g, *rstd;
} NormCase;

enum { NORM_N = 4, NORM_D = 24, NORM_XS = 30, NORM_YS = 27 };

static double norm_loss(void *ctx) {
    NormCase *c = ctx;
    rmsnorm_forward(c->y, NORM_YS, c->x, NORM_XS, c->w, NORM_N, NORM_D, 1e-6f, c->rstd);
    return dot_gy(c->g, c->y, NORM_N * NORM_YS);
}

/** Strided rows on both sides, as the kv latent norm and the MTP halves use them. */
static void rmsnorm_grad(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 2);
    NormCase c = { randn(NORM_N * NORM_XS, 1, &r), randn(NORM_D, 1, &r), calloc(NORM_N * NORM_YS, sizeof(float)),
                   randn(NORM_N * NORM_YS, 1, &r), calloc(NORM_N, sizeof(float)) };
    for (int i = 0; i < NORM_D; i++) c.w[i] += 1.0f;
    norm_loss(&c);
    float *dx = calloc(NORM_N * NORM_XS, sizeof(float)), *dw = calloc(NORM_D, sizeof(float));
    rmsnorm_backward(dx, NORM_XS, dw, c.g, NORM_YS, c.x, NORM_XS, c.w, c.rstd, NORM_N, NORM_D);
    GradFn f = { norm_loss, NULL, &c };
    check("rmsnorm.x (strided)", c.x, dx, NORM_N * NORM_XS, &f);
    check("rmsnorm.weight", c.w, dw, NORM_D, &f);
    /* Columns past D in each x row are not read: their gradient must stay exactly 0. */
    for (int t = 0; t < NORM_N; t++)
        for (int i = NORM_D; i < NORM_XS; i++) assert_true(dx[t * NORM_XS + i] == 0.0f);
    free(c.x), free(c.w), free(c.y), free(c.g), free(c.rstd), free(dx), free(dw);
}

typedef struct {
    float *x, *y, *g, cs[8], sn[8];
} RopeCase;

static double rope_loss(void *ctx) {
    RopeCase *c = ctx;
    memcpy(c->y, c->x, 16 * sizeof(float));
    rope_forward(c->y, c->cs, c->sn, 16);
    return dot_gy(c->g, c->y, 16);
}

/** YaRN angles of a far position (every frequency band, interpolated or not). */
static void rope_grad(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 3);
    Config c = cfg;
    c.qk_rope_head_dim = 16;
    Rope rope;
    Err err;
    assert_int_equal(rope_init(&rope, &c, &err), 0);
    RopeCase rc = { randn(16, 1, &r), calloc(16, sizeof(float)), randn(16, 1, &r), { 0 }, { 0 } };
    rope_cos_sin(rc.cs, rc.sn, 1234, &rope);
    float *dx = malloc(16 * sizeof(float));
    memcpy(dx, rc.g, 16 * sizeof(float));
    rope_backward(dx, rc.cs, rc.sn, 16);
    GradFn f = { rope_loss, NULL, &rc };
    check("rope.x (position 1234)", rc.x, dx, 16, &f);
    free(rc.x), free(rc.y), free(rc.g), free(dx);
    rope_free(&rope);
}

typedef struct {
    float *x, *w, *y, *g;
    LinearScratch s;
} LinCase;

enum { LIN_T = 5, LIN_IN = 20, LIN_OUT = 13 };

static double lin_loss(void *ctx) {
    LinCase *c = ctx;
    Tensor W = tensor_f32(c->w, LIN_OUT, LIN_IN);
    linear_forward(c->y, c->x, LIN_T, &W, FP8_DEQUANT, &c->s);
    return dot_gy(c->g, c->y, LIN_T * LIN_OUT);
}

static void linear_grad(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 4);
    float *scratch = calloc(linear_scratch_floats(LIN_T, LIN_IN), sizeof(float));
    LinCase c = { randn(LIN_T * LIN_IN, 1, &r), randn(LIN_OUT * LIN_IN, 0.3f, &r), calloc(LIN_T * LIN_OUT, 4),
                  randn(LIN_T * LIN_OUT, 1, &r), linear_scratch_init(scratch, LIN_T, LIN_IN) };
    float *dx = calloc(LIN_T * LIN_IN, 4), *dw = calloc(LIN_OUT * LIN_IN, 4);
    Tensor W = tensor_f32(c.w, LIN_OUT, LIN_IN);
    linear_backward(dx, dw, c.g, c.x, LIN_T, &W, FP8_DEQUANT, NULL);
    GradFn f = { lin_loss, NULL, &c };
    check("linear.x", c.x, dx, LIN_T * LIN_IN, &f);
    check("linear.W", c.w, dw, LIN_OUT * LIN_IN, &f);
    free(c.x), free(c.w), free(c.y), free(c.g), free(dx), free(dw), free(scratch);
}

typedef struct {
    float *x, *w1, *w2, *w3, *y, *g;
    FFNActs a;
    LinearScratch s;
} FfnCase;

enum { FFN_T = 6, FFN_D = 16, FFN_I = 24 };

static FFNWeights ffn_weights(float *w1, float *w2, float *w3) {
    FFNWeights w = { tensor_f32(w1, FFN_I, FFN_D), tensor_f32(w3, FFN_I, FFN_D), tensor_f32(w2, FFN_D, FFN_I) };
    return w;
}

static double ffn_loss(void *ctx) {
    FfnCase *c = ctx;
    FFNWeights w = ffn_weights(c->w1, c->w2, c->w3);
    ffn_forward(c->y, c->x, FFN_T, &w, &c->a, FP8_DEQUANT, &c->s);
    return dot_gy(c->g, c->y, FFN_T * FFN_D);
}

static void ffn_grad(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 5);
    float *scratch = calloc(linear_scratch_floats(FFN_T, FFN_I), sizeof(float));
    FfnCase c = { randn(FFN_T * FFN_D, 1, &r), randn(FFN_I * FFN_D, 0.4f, &r), randn(FFN_D * FFN_I, 0.3f, &r),
                  randn(FFN_I * FFN_D, 0.4f, &r), calloc(FFN_T * FFN_D, 4), randn(FFN_T * FFN_D, 1, &r),
                  { calloc(FFN_T * FFN_I, 4), calloc(FFN_T * FFN_I, 4), calloc(FFN_T * FFN_I, 4) },
                  linear_scratch_init(scratch, FFN_T, FFN_I) };
    float *dx = calloc(FFN_T * FFN_D, 4), *d1 = calloc(FFN_I * FFN_D, 4), *d2 = calloc(FFN_D * FFN_I, 4),
          *d3 = calloc(FFN_I * FFN_D, 4);
    FFNActs da = { calloc(FFN_T * FFN_I, 4), calloc(FFN_T * FFN_I, 4), calloc(FFN_T * FFN_I, 4) };
    ffn_loss(&c);
    FFNWeights w = ffn_weights(c.w1, c.w2, c.w3), dw = ffn_weights(d1, d2, d3);
    ffn_backward(dx, &dw, c.g, c.x, FFN_T, &w, &c.a, &da, FP8_DEQUANT, NULL);
    GradFn f = { ffn_loss, NULL, &c };
    check("ffn.x", c.x, dx, FFN_T * FFN_D, &f);
    check("ffn.gate_proj (W1)", c.w1, d1, FFN_I * FFN_D, &f);
    check("ffn.down_proj (W2)", c.w2, d2, FFN_D * FFN_I, &f);
    check("ffn.up_proj (W3)", c.w3, d3, FFN_I * FFN_D, &f);
    free(c.x), free(c.w1), free(c.w2), free(c.w3), free(c.y), free(c.g), free(dx), free(d1), free(d2), free(d3);
    free(c.a.h_gate), free(c.a.h_up), free(c.a.h_act), free(da.h_gate), free(da.h_up), free(da.h_act), free(scratch);
}

typedef struct {
    float *z, *p;
    int y[5];
} CeCase;

static double ce_loss(void *ctx) {
    CeCase *c = ctx;
    return cross_entropy_forward(c->p, c->z, c->y, 5, 17);
}

/** Includes a row without a target (−1), which must contribute neither loss nor gradient. */
static void cross_entropy_grad(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 6);
    CeCase c = { randn(5 * 17, 3, &r), calloc(5 * 17, 4), { 4, 16, -1, 0, 4 } };
    double L = ce_loss(&c);
    double want = 0.0; /* the definition, directly */
    for (int t = 0; t < 5; t++) {
        if (c.y[t] < 0) continue;
        double s = 0.0;
        for (int i = 0; i < 17; i++) s += exp((double)c.z[t * 17 + i]);
        want += log(s) - c.z[t * 17 + c.y[t]];
    }
    assert_true(fabs(L - want) <= 1e-12 * fabs(want));
    float *dz = calloc(5 * 17, 4);
    cross_entropy_backward(dz, c.p, c.y, 5, 17, 1.0f);
    for (int i = 0; i < 17; i++) assert_true(dz[2 * 17 + i] == 0.0f);
    GradFn f = { ce_loss, NULL, &c };
    check("cross_entropy.logits", c.z, dz, 5 * 17, &f);
    free(c.z), free(c.p), free(dz);
}

/* ---------------------------------------------------------------------------------------- */
/* layer-level ops on a tiny model's parameters                                               */

enum { LT = 7 }; /* tokens of the layer-level tests */

/** A tiny model's parameters and everything one layer needs to run forward and backward. */
typedef struct {
    ParamSet ps;
    Rope rope;
    ForwardContext ctx;
    float *scratch;
    LayerActs a, da;
    void *amem, *damem;
    size_t abytes;
    KVCache kv, dkv;
    float *x, *y, *g, *dx; /* [LT][D] input, output, cotangent, input gradient */
    int base_idx[LT * 8];  /* routing of the base evaluation */
    const int *idx;        /* the routing of the last evaluation (NULL: dense) */
    int ids[LT];           /* MTP: next tokens */
    MTPActs m, dm;
    int layer;             /* main layer under test, or -1 for MTP module 0 */
    int what;              /* 0 MLA, 1 MoE, 2 block, 3 MTP module */
    double alpha;          /* balance-loss weight of MoE cases */
} Fx;

static void *acts_alloc(LayerActs *a, const LayerActsSpec *spec, size_t *bytes) {
    Arena count = { 0 };
    layer_acts_layout(a, &cfg, spec, &count);
    size_t n = (count.used + 63) & ~(size_t)63;
    void *mem = aligned_alloc(64, n);
    memset(mem, 0, n);
    Arena ar = { mem, 0, count.used, 0 };
    layer_acts_layout(a, &cfg, spec, &ar);
    assert_false(ar.overflow);
    *bytes = count.used;
    return mem;
}

static void fx_init(Fx *f, int what, int layer) {
    memset(f, 0, sizeof *f);
    Err err;
    f->what = what;
    f->layer = layer;
    assert_int_equal(params_init(&f->ps, &cfg, 2, 1, &err), 0);
    RandomInit ri = { 11, 0.3f };
    assert_int_equal(params_fill(&f->ps, ckpt_random_source, &ri, &err), 0);
    const Config *c = &f->ps.config;
    int64_t D = c->hidden_size, half = c->qk_rope_head_dim / 2;
    assert_int_equal(rope_init(&f->rope, c, &err), 0);
    int64_t max_in = 2 * D;
    size_t lin = linear_scratch_floats(LT, max_in);
    f->scratch = calloc(lin + 2 * LT * half + LT + 2 * (c->n_routed_experts + c->n_group), sizeof(float));
    f->ctx.cfg = c;
    f->ctx.attn = ATTN_NAIVE;
    f->ctx.fp8 = FP8_DEQUANT;
    f->ctx.lin = linear_scratch_init(f->scratch, LT, max_in);
    float *cs = f->scratch + lin, *sn = cs + LT * half;
    for (int t = 0; t < LT; t++) rope_cos_sin(cs + t * half, sn + t * half, t, &f->rope);
    f->ctx.rope_cos = cs;
    f->ctx.rope_sin = sn;
    f->ctx.att_row = sn + LT * half;
    f->ctx.gate_work = f->ctx.att_row + LT;
    LayerActsSpec spec = { LT, LT, 1, 1, ATTN_NAIVE, 1 };
    f->amem = acts_alloc(&f->a, &spec, &f->abytes);
    f->damem = acts_alloc(&f->da, &spec, &f->abytes);
    assert_int_equal(kvcache_init(&f->kv, c, ATTN_NAIVE, 1, LT, &err), 0);
    assert_int_equal(kvcache_init(&f->dkv, c, ATTN_NAIVE, 1, LT, &err), 0);
    Rng r;
    rng_seed(&r, 100 + (uint64_t)what);
    f->x = randn((size_t)(LT * D), 1, &r);
    f->g = randn((size_t)(LT * D), 1, &r);
    f->y = calloc((size_t)(LT * D), 4);
    f->dx = calloc((size_t)(LT * D), 4);
    for (int t = 0; t < LT; t++) f->ids[t] = (int)((t * 37 + 5) % c->vocab_size);
    f->ids[4] = f->ids[1]; /* a repeated token: its embedding gradient sums two rows */
    /* MTP activations: emb, cat (2D), h, normed, rstd ×3; gradients: emb, cat (2D), h. */
    float *m = calloc((size_t)(9 * LT * D + 3 * LT), 4), *dm = m + 5 * LT * D + 3 * LT;
    f->m = (MTPActs){ m, m + 5 * LT * D, m + 5 * LT * D + LT, m + LT * D, m + 3 * LT * D, f->a, m + 4 * LT * D,
                      m + 5 * LT * D + 2 * LT };
    f->dm = (MTPActs){ dm, NULL, NULL, dm + LT * D, dm + 3 * LT * D, f->da, NULL, NULL };
    f->alpha = 0.05;
}

static void fx_free(Fx *f) {
    params_free(&f->ps);
    rope_free(&f->rope);
    free(f->scratch), free(f->amem), free(f->damem), free(f->x), free(f->y), free(f->g), free(f->dx), free(f->m.emb);
    kvcache_free(&f->kv);
    kvcache_free(&f->dkv);
}

static const LayerWeights *fx_layer(Fx *f, const Weights *w) {
    return f->layer >= 0 ? &w->layers[f->layer] : &w->mtp[0].block;
}

/** Runs the op under test at the current parameters; L = Σ g·y (+ α·balance for MoE). */
static double fx_loss(void *ctx) {
    Fx *f = ctx;
    const Config *c = &f->ps.config;
    int64_t D = c->hidden_size;
    const LayerWeights *w = fx_layer(f, &f->ps.w);
    double extra = 0.0;
    f->idx = w->is_moe ? f->a.moe.idx : NULL;
    switch (f->what) {
    case 0: mla_forward(f->y, f->x, LT, 0, w, &f->kv.layers[0], &f->a.mla, &f->ctx); break;
    case 1:
        moe_forward(f->y, f->x, LT, w, &f->a.moe, &f->ctx);
        extra = moe_balance_loss(&f->a.moe, LT, c, f->alpha, f->ctx.gate_work);
        break;
    case 2:
        memcpy(f->y, f->x, (size_t)(LT * D) * 4);
        block_forward(f->y, LT, 0, w, &f->kv.layers[0], &f->a, &f->ctx);
        if (w->is_moe) extra = moe_balance_loss(&f->a.moe, LT, c, f->alpha, f->ctx.gate_work);
        break;
    default:
        f->m.block = f->a;
        mtp_module_forward(f->ids, f->x, LT, 0, &f->ps.w.mtp[0], &f->kv.layers[0], &f->m, &f->ctx);
        memcpy(f->y, f->m.normed, (size_t)(LT * D) * 4);
        extra = moe_balance_loss(&f->a.moe, LT, c, f->alpha, f->ctx.gate_work);
        break;
    }
    return dot_gy(f->g, f->y, (size_t)(LT * D)) + extra;
}

static int fx_same_routing(void *ctx) {
    Fx *f = ctx;
    int K = f->ps.config.num_experts_per_tok;
    return !f->idx || !memcmp(f->idx, f->base_idx, sizeof(int) * LT * (size_t)K);
}

/** Base evaluation, then the backward under test into f->dx and f->ps.grad. */
static void fx_backward(Fx *f) {
    const Config *c = &f->ps.config;
    int64_t D = c->hidden_size;
    const LayerWeights *w = fx_layer(f, &f->ps.w), *dw = fx_layer(f, &f->ps.g);
    fx_loss(f);
    if (f->idx) memcpy(f->base_idx, f->idx, sizeof(int) * LT * (size_t)c->num_experts_per_tok);
    memset(f->ps.grad, 0, f->ps.n * sizeof(float));
    memset(f->damem, 0, f->abytes);
    memset(f->dkv.mem, 0, f->dkv.bytes);
    memset(f->dx, 0, (size_t)(LT * D) * 4);
    switch (f->what) {
    case 0: mla_backward(f->dx, dw, f->g, f->x, LT, w, &f->kv.layers[0], &f->dkv.layers[0], &f->a.mla, &f->da.mla, &f->ctx); break;
    case 1: moe_backward(f->dx, dw, f->g, f->x, LT, w, &f->a.moe, &f->da.moe, f->alpha, &f->ctx); break;
    case 2:
        memcpy(f->dx, f->g, (size_t)(LT * D) * 4);
        block_backward(f->dx, LT, w, dw, &f->kv.layers[0], &f->dkv.layers[0], &f->a, &f->da, f->alpha, &f->ctx);
        break;
    default:
        memset(f->dm.emb, 0, (size_t)(4 * LT * D) * 4);
        f->dm.block = f->da;
        mtp_module_backward(f->dx, &f->ps.g.mtp[0], f->g, f->ids, f->x, LT, &f->ps.w.mtp[0], &f->kv.layers[0],
                            &f->dkv.layers[0], &f->m, &f->dm, f->alpha, &f->ctx);
        break;
    }
}

/** Checks the input gradient and every tensor of the layer (or MTP module) under test whose name contains @p filter. */
static void fx_check_all(Fx *f, const char *xname, const char *filter) {
    GradFn fn = { fx_loss, fx_same_routing, f };
    const Config *c = &f->ps.config;
    int nonzero_bias = 0;
    check(xname, f->x, f->dx, (size_t)(LT * c->hidden_size), &fn);
    int layer = f->layer >= 0 ? f->layer : c->num_hidden_layers;
    for (int i = 0; i < f->ps.n_entries; i++) {
        const ParamEntry *e = &f->ps.entries[i];
        int mine = e->slot.layer == layer || (f->what == 3 && e->role == PARAM_ALIAS && e->slot.mtp == 0 &&
                                              strstr(e->slot.name, "embed_tokens"));
        if (!mine || !strstr(e->slot.name, filter)) continue;
        if (strstr(e->slot.name, "shared_head.head")) continue; /* the head is the caller's (trainer) */
        float *p = f->ps.data + e->offset, *g = f->ps.grad + e->offset;
        if (e->role == PARAM_BIAS) {
            /* The correction bias only selects: no gradient, and the loss does not move with it
             * as long as the selection stays (eq. 16). */
            for (size_t j = 0; j < e->n; j++) nonzero_bias += g[j] != 0.0f;
            double base = fx_loss(f);
            for (size_t j = 0; j < e->n; j++) {
                float b0 = p[j];
                p[j] = b0 + 1e-3f;
                double l = fx_loss(f);
                if (fx_same_routing(f)) assert_true(l == base);
                p[j] = b0;
            }
            continue;
        }
        /* Only experts that some token used have a gradient; skip the others (zero by construction). */
        if (e->slot.expert >= 0) {
            double s = 0;
            for (size_t j = 0; j < e->n; j++) s += fabs(g[j]);
            if (s == 0) continue;
        }
        check(e->slot.name, p, g, e->n, &fn);
    }
    assert_int_equal(nonzero_bias, 0);
}

static void mla_grad(void **state) {
    (void)state;
    Fx f;
    fx_init(&f, 0, 0);
    fx_backward(&f);
    fx_check_all(&f, "mla.x", "self_attn");
    fx_free(&f);
}

/** The same check without a query latent (q_lora_rank null: q = q_proj(x), docs/model.md §13.2). */
static void mla_q_proj_grad(void **state) {
    (void)state;
    Config saved = cfg, c = cfg;
    Err err = { "" };
    char *json = config_to_json(&c), *at = strstr(json, "\"q_lora_rank\":");
    assert_non_null(at);
    char *end = strchr(at, ',');
    char patched[8192];
    snprintf(patched, sizeof patched, "%.*s\"q_lora_rank\": null%s", (int)(at - json), json, end);
    free(json);
    assert_int_equal(config_parse(&cfg, patched, strlen(patched), "q_proj test", &err), 0);
    assert_int_equal(cfg.q_lora_rank, 0);
    Fx f;
    fx_init(&f, 0, 0);
    assert_non_null(f.ps.w.layers[0].q_proj.data);
    assert_null(f.ps.w.layers[0].q_a_proj.data);
    fx_backward(&f);
    fx_check_all(&f, "mla_q_proj.x", "self_attn");
    fx_free(&f);
    cfg = saved;
}

static void moe_grad(void **state) {
    (void)state;
    Fx f;
    fx_init(&f, 1, 1);
    fx_backward(&f);
    fx_check_all(&f, "moe.x (with balance loss)", "mlp.");
    fx_free(&f);
}

/** The balance loss alone (zero cotangent on the output, α = 1): its gradient reaches the
 *  gate matrix and x only through the affinities, and the bias still gets none. */
static void balance_loss_grad(void **state) {
    (void)state;
    Fx f;
    fx_init(&f, 1, 1);
    memset(f.g, 0, sizeof(float) * LT * (size_t)f.ps.config.hidden_size);
    f.alpha = 1.0;
    fx_backward(&f);
    fx_check_all(&f, "balance.x", "mlp.gate.");
    fx_free(&f);
}

/** The skip rule is live: with a step large enough to re-route tokens, flips are detected. */
static void routing_flips_detected(void **state) {
    (void)state;
    Fx f;
    fx_init(&f, 1, 1);
    fx_backward(&f);
    const ParamEntry *e = params_find(&f.ps, "model.layers.1.mlp.gate.weight");
    assert_non_null(e);
    GradFn fn = { fx_loss, fx_same_routing, &f };
    GradCheck big = gradcheck("gate.weight, h = 2 (re-routes)", f.ps.data + e->offset, f.ps.grad + e->offset, e->n,
                              FD_SAMPLES, &fn, 2.0, FD_RTOL, FD_ATOL, 3);
    GradCheck small = gradcheck("gate.weight, h = 1e-3", f.ps.data + e->offset, f.ps.grad + e->offset, e->n, FD_SAMPLES,
                                &fn, FD_H, FD_RTOL, FD_ATOL, 3);
    assert_true(big.skipped > 0);
    assert_true(gradcheck_passed(&small));
    fx_free(&f);
}

static void dense_block_grad(void **state) {
    (void)state;
    Fx f;
    fx_init(&f, 2, 0);
    fx_backward(&f);
    fx_check_all(&f, "dense block.h_in", "");
    fx_free(&f);
}

static void moe_block_grad(void **state) {
    (void)state;
    Fx f;
    fx_init(&f, 2, 1);
    fx_backward(&f);
    fx_check_all(&f, "moe block.h_in", "");
    fx_free(&f);
}

static void mtp_module_grad(void **state) {
    (void)state;
    Fx f;
    fx_init(&f, 3, -1);
    fx_backward(&f);
    fx_check_all(&f, "mtp.h_prev", "");
    fx_free(&f);
}

static int setup(void **state) {
    (void)state;
    const char *json = GRADCHECK_CONFIG_JSON;
    Err err;
    if (config_parse(&cfg, json, strlen(json), "backward test", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(embedding_grad), cmocka_unit_test(rmsnorm_grad),     cmocka_unit_test(rope_grad),
        cmocka_unit_test(linear_grad),    cmocka_unit_test(ffn_grad),         cmocka_unit_test(cross_entropy_grad),
        cmocka_unit_test(mla_grad),       cmocka_unit_test(mla_q_proj_grad),  cmocka_unit_test(moe_grad),         cmocka_unit_test(balance_loss_grad),
        cmocka_unit_test(routing_flips_detected),
        cmocka_unit_test(dense_block_grad),
        cmocka_unit_test(moe_block_grad), cmocka_unit_test(mtp_module_grad),
    };
    return cmocka_run_group_tests_name("backward", tests, setup, NULL);
}
