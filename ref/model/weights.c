/**
 * @file weights.c
 * @brief The tensor table of docs/model.md §1.3 and the walk over it.
 *
 * Every tensor of the checkpoint is one row of a table: its HF name, its kind (matrix or vector), its
 * shape as a formula of the config, the layers that carry it, and its dtype rule. For V3:
 *     q_b_proj            [H·(Dn+Dr)][Dq]   = [24576][1536]   (q_lora_rank null: q_proj [H·(Dn+Dr)][D] instead
 *                                                        of q_a_proj, q_a_layernorm and q_b_proj)
 *     kv_a_proj_with_mqa  [Dc+Dr][D]        = [576][7168]
 *     kv_b_proj           [H·(Dn+Dv)][Dc]   = [32768][512]
 *     o_proj              [D][H·Dv]         = [7168][16384]
 *     experts.E.*_proj    [Ie][D], [D][Ie]  for E < n_routed_experts, in layers ≥ first_k_dense_replace
 *     MTP module k        "model.layers.(num_hidden_layers + k).<suffix>", eh_proj [D][2D]
 * Binding, shape checks, parameter counts (weights_count: 671.03 B for V3, docs/model.md §1.5), the
 * checkpoint writer, the trainer's parameters and the GPU upload all walk this one table.
 */
#include "weights.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

/** Shape formulas: each table entry names its dimensions by one of these. */
typedef enum {
    DIM_ONE,      /* 1 (vectors)              */
    DIM_D,        /* hidden_size              */
    DIM_2D,       /* 2·hidden_size (eh_proj)  */
    DIM_V,        /* vocab_size               */
    DIM_Q_LORA,   /* Dq                       */
    DIM_Q_HEADS,  /* H·(Dn+Dr)                */
    DIM_KV_A,     /* Dc+Dr                    */
    DIM_KV_LORA,  /* Dc                       */
    DIM_KV_HEADS, /* H·(Dn+Dv)                */
    DIM_O_IN,     /* H·Dv                     */
    DIM_I,        /* intermediate_size        */
    DIM_IE,       /* moe_intermediate_size    */
    DIM_SHARED,   /* S·Ie                     */
    DIM_E,        /* n_routed_experts         */
} Dim;

static int64_t dim_value(const Config *c, Dim d) {
    switch (d) {
    case DIM_ONE: return 1;
    case DIM_D: return c->hidden_size;
    case DIM_2D: return 2 * (int64_t)c->hidden_size;
    case DIM_V: return c->vocab_size;
    case DIM_Q_LORA: return c->q_lora_rank;
    case DIM_Q_HEADS: return (int64_t)c->num_attention_heads * c->qk_head_dim;
    case DIM_KV_A: return (int64_t)c->kv_lora_rank + c->qk_rope_head_dim;
    case DIM_KV_LORA: return c->kv_lora_rank;
    case DIM_KV_HEADS: return (int64_t)c->num_attention_heads * (c->qk_nope_head_dim + c->v_head_dim);
    case DIM_O_IN: return (int64_t)c->num_attention_heads * c->v_head_dim;
    case DIM_I: return c->intermediate_size;
    case DIM_IE: return c->moe_intermediate_size;
    case DIM_SHARED: return (int64_t)c->n_shared_experts * c->moe_intermediate_size;
    case DIM_E: return c->n_routed_experts;
    }
    return 0;
}

/** Which layers carry an entry: all, dense or MoE ones, MoE ones with shared experts, or every layer of a
 *  model with a query latent (q_lora_rank > 0) / with one direct q_proj (q_lora_rank null, docs/model.md §13.2). */
typedef enum { IN_EVERY, IN_DENSE, IN_MOE, IN_MOE_SHARED, IN_Q_LORA, IN_Q_DIRECT } Where;

static int entry_in_layer(Where where, const LayerWeights *L, const Config *c) {
    switch (where) {
    case IN_EVERY: return 1;
    case IN_DENSE: return !L->is_moe;
    case IN_MOE: return L->is_moe;
    case IN_MOE_SHARED: return L->is_moe && c->n_shared_experts > 0;
    case IN_Q_LORA: return c->q_lora_rank > 0;
    case IN_Q_DIRECT: return c->q_lora_rank == 0;
    }
    return 0;
}

typedef struct {
    const char *suffix; /* after "model.layers.L." */
    WeightKind kind;
    Dim rows, cols;
    Where where;
    size_t offset;      /* into LayerWeights */
    int f32_only;
    int fp8;            /* see WeightSlot.fp8 */
} LayerEntry;

/** A matrix entry of the layer table. */
#define MAT(s, r, c, w, field) { s, WEIGHT_MATRIX, r, c, w, offsetof(LayerWeights, field), 0, 1 }
/** A vector entry of the layer table. */
#define VEC(s, n, w, field) { s, WEIGHT_VECTOR, DIM_ONE, n, w, offsetof(LayerWeights, field), 0, 0 }

/** Decoder block tensors (docs/model.md §1.3), in the order of the official Block. */
static const LayerEntry layer_table[] = {
    VEC("input_layernorm.weight", DIM_D, IN_EVERY, input_layernorm),
    MAT("self_attn.q_a_proj.weight", DIM_Q_LORA, DIM_D, IN_Q_LORA, q_a_proj),
    VEC("self_attn.q_a_layernorm.weight", DIM_Q_LORA, IN_Q_LORA, q_a_layernorm),
    MAT("self_attn.q_b_proj.weight", DIM_Q_HEADS, DIM_Q_LORA, IN_Q_LORA, q_b_proj),
    MAT("self_attn.q_proj.weight", DIM_Q_HEADS, DIM_D, IN_Q_DIRECT, q_proj),
    MAT("self_attn.kv_a_proj_with_mqa.weight", DIM_KV_A, DIM_D, IN_EVERY, kv_a_proj_with_mqa),
    VEC("self_attn.kv_a_layernorm.weight", DIM_KV_LORA, IN_EVERY, kv_a_layernorm),
    MAT("self_attn.kv_b_proj.weight", DIM_KV_HEADS, DIM_KV_LORA, IN_EVERY, kv_b_proj),
    MAT("self_attn.o_proj.weight", DIM_D, DIM_O_IN, IN_EVERY, o_proj),
    VEC("post_attention_layernorm.weight", DIM_D, IN_EVERY, post_attention_layernorm),
    MAT("mlp.gate_proj.weight", DIM_I, DIM_D, IN_DENSE, mlp.gate_proj),
    MAT("mlp.up_proj.weight", DIM_I, DIM_D, IN_DENSE, mlp.up_proj),
    MAT("mlp.down_proj.weight", DIM_D, DIM_I, IN_DENSE, mlp.down_proj),
    /* The gate stays BF16 in the FP8 checkpoint (it is not a Linear in the official code). */
    { "mlp.gate.weight", WEIGHT_MATRIX, DIM_E, DIM_D, IN_MOE, offsetof(LayerWeights, gate), 0, 0 },
    { "mlp.gate.e_score_correction_bias", WEIGHT_VECTOR, DIM_ONE, DIM_E, IN_MOE,
      offsetof(LayerWeights, e_score_correction_bias), 1, 0 },
    MAT("mlp.shared_experts.gate_proj.weight", DIM_SHARED, DIM_D, IN_MOE_SHARED, shared_experts.gate_proj),
    MAT("mlp.shared_experts.up_proj.weight", DIM_SHARED, DIM_D, IN_MOE_SHARED, shared_experts.up_proj),
    MAT("mlp.shared_experts.down_proj.weight", DIM_D, DIM_SHARED, IN_MOE_SHARED, shared_experts.down_proj),
};
#undef MAT
#undef VEC

/** Routed expert tensors, "model.layers.L.mlp.experts.E.<suffix>". */
static const struct {
    const char *suffix;
    Dim rows, cols;
    size_t offset; /* into FFNWeights */
} expert_table[] = {
    { "gate_proj.weight", DIM_IE, DIM_D, offsetof(FFNWeights, gate_proj) },
    { "up_proj.weight", DIM_IE, DIM_D, offsetof(FFNWeights, up_proj) },
    { "down_proj.weight", DIM_D, DIM_IE, offsetof(FFNWeights, down_proj) },
};

/** MTP-only tensors, "model.layers.(N+k).<suffix>" (docs/model.md §1.3, §7.2). */
static const struct {
    const char *suffix;
    WeightKind kind;
    Dim rows, cols;
    size_t offset; /* into MTPWeights */
    int fp8;
} mtp_table[] = {
    { "embed_tokens.weight", WEIGHT_MATRIX, DIM_V, DIM_D, offsetof(MTPWeights, embed_tokens), 0 },
    { "enorm.weight", WEIGHT_VECTOR, DIM_ONE, DIM_D, offsetof(MTPWeights, enorm), 0 },
    { "hnorm.weight", WEIGHT_VECTOR, DIM_ONE, DIM_D, offsetof(MTPWeights, hnorm), 0 },
    { "eh_proj.weight", WEIGHT_MATRIX, DIM_D, DIM_2D, offsetof(MTPWeights, eh_proj), 2 },
    { "shared_head.norm.weight", WEIGHT_VECTOR, DIM_ONE, DIM_D, offsetof(MTPWeights, shared_head_norm), 0 },
    { "shared_head.head.weight", WEIGHT_MATRIX, DIM_V, DIM_D, offsetof(MTPWeights, shared_head_head), 0 },
};

int weights_alloc(Weights *w, const Config *c, int n_mtp, Err *err) {
    memset(w, 0, sizeof *w);
    int n_blocks = c->num_hidden_layers + n_mtp;
    w->layers = xcalloc((size_t)c->num_hidden_layers, sizeof *w->layers);
    w->mtp = xcalloc((size_t)(n_mtp ? n_mtp : 1), sizeof *w->mtp);
    w->n_mtp = n_mtp;
    w->n_layers = c->num_hidden_layers;
    if (!w->layers || !w->mtp) goto oom;
    for (int b = 0; b < n_blocks; b++) {
        LayerWeights *L = b < c->num_hidden_layers ? &w->layers[b] : &w->mtp[b - c->num_hidden_layers].block;
        L->index = b;
        L->is_moe = config_layer_is_moe(c, b);
        if (L->is_moe) {
            L->experts = xcalloc((size_t)c->n_routed_experts, sizeof *L->experts);
            if (!L->experts) goto oom;
        }
    }
    return 0;
oom:
    weights_free(w);
    return err_set(err, "out of memory allocating the weight tables");
}

void weights_free(Weights *w) {
    for (int l = 0; w->layers && l < w->n_layers; l++) free(w->layers[l].experts);
    for (int k = 0; w->mtp && k < w->n_mtp; k++) free(w->mtp[k].block.experts);
    free(w->layers);
    free(w->mtp);
    memset(w, 0, sizeof *w);
}

/** Emits the entries of one decoder block (main layer or MTP block). */
static int foreach_block(LayerWeights *L, const Config *c, int layer, int mtp,
                         int (*fn)(void *, const WeightSlot *), void *ctx) {
    WeightSlot s;
    for (size_t i = 0; i < sizeof layer_table / sizeof layer_table[0]; i++) {
        const LayerEntry *e = &layer_table[i];
        if (!entry_in_layer(e->where, L, c)) continue;
        memset(&s, 0, sizeof s);
        snprintf(s.name, sizeof s.name, "model.layers.%d.%s", layer, e->suffix);
        s.kind = e->kind;
        s.rows = dim_value(c, e->rows);
        s.cols = dim_value(c, e->cols);
        s.f32_only = e->f32_only;
        s.fp8 = e->fp8;
        if (e->kind == WEIGHT_MATRIX) s.matrix = (Tensor *)((char *)L + e->offset);
        else s.vector = (const float **)((char *)L + e->offset);
        s.layer = layer;
        s.expert = -1;
        s.mtp = mtp;
        int rc = fn(ctx, &s);
        if (rc) return rc;
        /* The routed experts follow the gate, as in the official MoE module. */
        if (L->is_moe && !strcmp(e->suffix, "mlp.gate.e_score_correction_bias")) {
            for (int x = 0; x < c->n_routed_experts; x++)
                for (size_t j = 0; j < sizeof expert_table / sizeof expert_table[0]; j++) {
                    memset(&s, 0, sizeof s);
                    snprintf(s.name, sizeof s.name, "model.layers.%d.mlp.experts.%d.%s", layer, x, expert_table[j].suffix);
                    s.kind = WEIGHT_MATRIX;
                    s.fp8 = 1;
                    s.rows = dim_value(c, expert_table[j].rows);
                    s.cols = dim_value(c, expert_table[j].cols);
                    s.matrix = (Tensor *)((char *)&L->experts[x] + expert_table[j].offset);
                    s.layer = layer;
                    s.expert = x;
                    s.mtp = mtp;
                    if ((rc = fn(ctx, &s))) return rc;
                }
        }
    }
    return 0;
}

int weights_foreach(Weights *w, const Config *c, int (*fn)(void *ctx, const WeightSlot *s), void *ctx) {
    WeightSlot s;
    int rc;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "model.embed_tokens.weight");
    s.kind = WEIGHT_MATRIX, s.rows = c->vocab_size, s.cols = c->hidden_size, s.matrix = &w->embed_tokens;
    s.layer = s.expert = s.mtp = -1;
    if ((rc = fn(ctx, &s))) return rc;
    for (int l = 0; l < c->num_hidden_layers; l++)
        if ((rc = foreach_block(&w->layers[l], c, l, -1, fn, ctx))) return rc;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "model.norm.weight");
    s.kind = WEIGHT_VECTOR, s.rows = 1, s.cols = c->hidden_size, s.vector = &w->norm;
    s.layer = s.expert = s.mtp = -1;
    if ((rc = fn(ctx, &s))) return rc;
    memset(&s, 0, sizeof s);
    snprintf(s.name, sizeof s.name, "lm_head.weight");
    s.kind = WEIGHT_MATRIX, s.rows = c->vocab_size, s.cols = c->hidden_size, s.matrix = &w->lm_head;
    s.layer = s.expert = s.mtp = -1;
    if ((rc = fn(ctx, &s))) return rc;
    for (int k = 0; k < w->n_mtp; k++) {
        int layer = c->num_hidden_layers + k;
        MTPWeights *m = &w->mtp[k];
        for (size_t i = 0; i < sizeof mtp_table / sizeof mtp_table[0]; i++) {
            memset(&s, 0, sizeof s);
            snprintf(s.name, sizeof s.name, "model.layers.%d.%s", layer, mtp_table[i].suffix);
            s.kind = mtp_table[i].kind;
            s.fp8 = mtp_table[i].fp8;
            s.rows = dim_value(c, mtp_table[i].rows);
            s.cols = dim_value(c, mtp_table[i].cols);
            if (s.kind == WEIGHT_MATRIX) s.matrix = (Tensor *)((char *)m + mtp_table[i].offset);
            else s.vector = (const float **)((char *)m + mtp_table[i].offset);
            s.layer = layer;
            s.expert = -1;
            s.mtp = k;
            if ((rc = fn(ctx, &s))) return rc;
        }
        if ((rc = foreach_block(&m->block, c, layer, k, fn, ctx))) return rc;
    }
    return 0;
}

typedef struct {
    uint64_t main, mtp;
} Counts;

static int count_one(void *ctx, const WeightSlot *s) {
    Counts *n = ctx;
    uint64_t k = (uint64_t)s->rows * (uint64_t)s->cols;
    if (s->mtp >= 0) n->mtp += k;
    else n->main += k;
    return 0;
}

void weights_count(const Config *c, int n_mtp, uint64_t *main_params, uint64_t *mtp_params) {
    Weights w;
    Counts n = { 0, 0 };
    if (weights_alloc(&w, c, n_mtp, NULL) == 0) {
        weights_foreach(&w, c, count_one, &n);
        weights_free(&w);
    }
    *main_params = n.main;
    *mtp_params = n.mtp;
}
