/**
 * @file train_pipeline.c
 * @brief The pipelined training step (train_pipeline.h): activation slots, the stage forward,
 *        the full and the input-only backward, the deferred weight gradients, the reductions.
 */
#include "train_pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "loss.h"
#include "model/embed.h"
#include "model/rmsnorm.h"

/** What a micro-batch keeps at one stage between its forward and its last backward step. */
typedef struct PipeSlot {
    int mb;            /* −1: free */
    float *h;          /* [T][D] the stage's residual stream: input, then output */
    float *dh_in;      /* [T][D] stage 0, input-only backward: the gradient its W embeds */
    LayerActs *acts;   /* [n] forward activations of each layer (training layout) */
    LayerActs *dacts;  /* [n] their gradients, kept from the input-only backward until W */
    float *dh_out;     /* [n][T][D] ∂L/∂(block output) of each layer: the FFN's dy */
    float *dh_mid;     /* [n][T][D] ∂L/∂(after attention): W_O's dy */
    KVCache kv;        /* the stage's layers' K/V (naive) */
    TrainHead head;    /* the last stage: final norm, heads, MTP depths */
    KVCache mtp_kv;
    void *mem, *gmem;  /* behind acts/head, behind dacts (zeroed before each backward) */
    size_t gbytes;
} PipeSlot;

/** Message tags: kind, direction, stage, micro-batch. */
enum { TAG_ACT = 1, TAG_GRAD = 2, TAG_EMB = 3, TAG_SYNC = 0x10, TAG_REC = 0x11, TAG_GRADS = 0x12, TAG_TIMES = 0x14 };
static uint64_t tag(int kind, int dir, int stage, int mb) {
    return (uint64_t)kind << 56 | (uint64_t)dir << 48 | (uint64_t)(unsigned)stage << 24 | (uint64_t)(unsigned)mb;
}

/* ------------------------------------------------------------------------------------- */
/* slots                                                                                   */

/** Lays out a slot's forward part (@p gr = 0) or its gradient part (@p gr = 1) in @p ar. */
static void slot_layout(PipeSlot *s, const PipeTrainer *pt, const PipeChunk *ch, int gr, Arena *ar) {
    const Trainer *tr = pt->tr;
    const Config *c = &tr->ps.config;
    int64_t T = tr->opt.seq_len, D = c->hidden_size, V = c->vocab_size, Dm = tr->opt.n_mtp, n = ch->end - ch->first;
    for (int i = 0; i < n; i++) {
        int moe = config_layer_is_moe(c, ch->first + i);
        LayerActsSpec spec = { T, T, !moe, moe, ATTN_NAIVE, !gr };
        layer_acts_layout(gr ? &s->dacts[i] : &s->acts[i], c, &spec, ar);
    }
    if (gr) {
        ARENA_TAKE(ar, s->dh_out, n * T * D);
        ARENA_TAKE(ar, s->dh_mid, n * T * D);
        ARENA_TAKE(ar, s->dh_in, T * D);
        return;
    }
    ARENA_TAKE(ar, s->h, T * D);
    if (ch->stage != pt->sched.n_stages - 1) return;
    ARENA_TAKE(ar, s->head.normed, T * D);
    ARENA_TAKE(ar, s->head.rstd, T);
    ARENA_TAKE(ar, s->head.logits, (1 + Dm) * T * V);
    ARENA_TAKE(ar, s->head.probs, (1 + Dm) * T * V);
    ARENA_TAKE(ar, s->head.targets, (1 + Dm) * T);
    for (int k = 0; k < Dm; k++) train_mtp_acts_layout(&s->head.mtp[k], c, T, k, ar);
}

static void slot_free(PipeSlot *s) {
    if (!s) return;
    kvcache_free(&s->kv);
    kvcache_free(&s->mtp_kv);
    free(s->acts), free(s->dacts), free(s->head.mtp);
    free(s->mem), free(s->gmem);
    free(s);
}

/** Allocates both parts of a slot (laid out twice each: counting, then for real). */
static PipeSlot *slot_new(const PipeTrainer *pt, const PipeChunk *ch, Err *err) {
    const Trainer *tr = pt->tr;
    const Config *c = &tr->ps.config;
    int n = ch->end - ch->first, Dm = tr->opt.n_mtp;
    PipeSlot *s = calloc(1, sizeof *s);
    if (!s || !(s->acts = xcalloc((size_t)(n ? n : 1), sizeof *s->acts)) || !(s->dacts = xcalloc((size_t)(n ? n : 1), sizeof *s->dacts)) ||
        !(s->head.mtp = xcalloc((size_t)(Dm ? Dm : 1), sizeof *s->head.mtp))) {
        slot_free(s);
        err_set(err, "out of memory for a pipeline slot");
        return NULL;
    }
    for (int gr = 0; gr < 2; gr++) {
        Arena count = { 0 };
        slot_layout(s, pt, ch, gr, &count);
        void *mem = count.overflow ? NULL : aligned_alloc(64, (count.used + 63) & ~(size_t)63);
        if (!mem) {
            slot_free(s);
            err_set(err, "out of memory for a pipeline slot (%.1f MiB)", (double)count.used / 1048576.0);
            return NULL;
        }
        memset(mem, 0, count.used);
        Arena ar = { mem, 0, count.used, 0 };
        slot_layout(s, pt, ch, gr, &ar);
        DSV3_ASSERT(!ar.overflow);
        if (gr) s->gmem = mem, s->gbytes = count.used;
        else s->mem = mem;
    }
    if ((n && kvcache_init(&s->kv, c, ATTN_NAIVE, n, tr->opt.seq_len, err)) ||
        (ch->stage == pt->sched.n_stages - 1 && Dm && kvcache_init(&s->mtp_kv, c, ATTN_NAIVE, Dm, tr->opt.seq_len, err))) {
        slot_free(s);
        return NULL;
    }
    s->head.mtp_kv = &s->mtp_kv;
    s->mb = -1;
    return s;
}

/** A free slot of @p ch for micro-batch @p mb (a new one when all are taken). */
static PipeSlot *slot_take(PipeTrainer *pt, PipeChunk *ch, int mb, Err *err) {
    for (int i = 0; i < ch->n_slots; i++)
        if (ch->slots[i]->mb < 0) return ch->slots[i]->mb = mb, ch->slots[i];
    PipeSlot **grown = realloc(ch->slots, (size_t)(ch->n_slots + 1) * sizeof *grown);
    if (!grown) return err_set(err, "out of memory"), NULL;
    ch->slots = grown;
    PipeSlot *s = slot_new(pt, ch, err);
    if (!s) return NULL;
    ch->slots[ch->n_slots++] = s;
    s->mb = mb;
    return s;
}

static PipeSlot *slot_find(PipeChunk *ch, int mb, Err *err) {
    for (int i = 0; i < ch->n_slots; i++)
        if (ch->slots[i]->mb == mb) return ch->slots[i];
    err_set(err, "pipeline: micro-batch %d has no activations at stage %d (its forward did not run here)", mb, ch->stage);
    return NULL;
}

/* ------------------------------------------------------------------------------------- */
/* set-up                                                                                  */

/** The record's parts: [M] main losses, [M][n_mtp] MTP losses, [M][n_moe] balance terms, [n_moe][E] loads. */
static double *rec_main(PipeTrainer *pt) { return pt->rec; }
static double *rec_mtp(PipeTrainer *pt) { return pt->rec + pt->sched.n_mb; }
static double *rec_bal(PipeTrainer *pt) { return rec_mtp(pt) + (size_t)pt->sched.n_mb * pt->tr->opt.n_mtp; }
static double *rec_load(PipeTrainer *pt) { return rec_bal(pt) + (size_t)pt->sched.n_mb * pt->tr->n_moe; }

int pipe_trainer_check(const Trainer *tr, PipeKind kind, int n_ranks, Err *err) {
    PipeSchedule s;
    if (tr->opt.batch > 1 << 16) return err_set(err, "pipeline: %lld sequences per step is too many", (long long)tr->opt.batch);
    if (tr->opt.precision != TRAIN_FP32) return err_set(err, "the FP8 recipe trains in one process: drop --pipeline or --precision fp8");
    if (pipe_build(&s, kind, n_ranks, (int)tr->opt.batch, err)) return err_prefix(err, "--batch %lld", (long long)tr->opt.batch);
    int S = s.n_stages, L = tr->ps.config.num_hidden_layers;
    pipe_free(&s);
    if (L < S) return err_set(err, "%s over %d processes cuts the model into %d stages, but it has %d layers", pipe_kind_name(kind), n_ranks, S, L);
    return 0;
}

int pipe_trainer_init(PipeTrainer *pt, Trainer *tr, PipeKind kind, MsgLink *link, Err *err) {
    memset(pt, 0, sizeof *pt);
    pt->tr = tr, pt->link = link;
    const Config *c = &tr->ps.config;
    int L = c->num_hidden_layers, E = c->n_routed_experts, N = link->nranks;
    if (pipe_trainer_check(tr, kind, N, err) || pipe_build(&pt->sched, kind, N, (int)tr->opt.batch, err)) return -1;
    int S = pt->sched.n_stages;
    pt->stage_first = xcalloc((size_t)S + 1, sizeof *pt->stage_first);
    pt->nullg = xcalloc((size_t)L, sizeof *pt->nullg);
    pt->null_experts = xcalloc((size_t)(E ? E : 1), sizeof *pt->null_experts);
    pt->dh = xcalloc((size_t)(tr->opt.seq_len * c->hidden_size), sizeof *pt->dh);
    pt->emb_rows = xcalloc((size_t)((tr->opt.n_mtp ? tr->opt.n_mtp : 1) * tr->opt.seq_len * c->hidden_size), sizeof *pt->emb_rows);
    pt->n_rec = (size_t)pt->sched.n_mb * (size_t)(1 + tr->opt.n_mtp + tr->n_moe) + (size_t)tr->n_moe * (size_t)E;
    pt->rec = xcalloc(pt->n_rec ? pt->n_rec : 1, sizeof *pt->rec);
    pt->op_base = xcalloc((size_t)N + 1, sizeof *pt->op_base);
    int total = 0;
    for (int r = 0; pt->op_base && r < N; r++) pt->op_base[r] = total, total += pt->sched.n_ops[r];
    if (pt->op_base) pt->op_base[N] = total;
    pt->times = xcalloc(2 * (size_t)total, sizeof *pt->times);
    if (!pt->stage_first || !pt->nullg || !pt->null_experts || !pt->dh || !pt->emb_rows || !pt->rec || !pt->op_base || !pt->times) {
        pipe_trainer_free(pt);
        return err_set(err, "out of memory");
    }
    for (int s = 0; s <= S; s++) pt->stage_first[s] = (int)((int64_t)L * s / S);
    for (int l = 0; l < L; l++) {
        pt->nullg[l].index = l, pt->nullg[l].is_moe = config_layer_is_moe(c, l);
        pt->nullg[l].experts = pt->null_experts;
    }
    for (int k = 0; k < 2; k++) {
        PipeChunk *ch = &pt->chunk[k];
        ch->stage = k < pt->sched.chunks ? pipe_chunk_stage(&pt->sched, link->rank, k, &ch->dir) : -1;
        if (ch->stage >= 0) ch->first = pt->stage_first[ch->stage], ch->end = pt->stage_first[ch->stage + 1];
    }
    return 0;
}

void pipe_trainer_free(PipeTrainer *pt) {
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < pt->chunk[k].n_slots; i++) slot_free(pt->chunk[k].slots[i]);
        free(pt->chunk[k].slots);
    }
    pipe_free(&pt->sched);
    free(pt->stage_first), free(pt->nullg), free(pt->null_experts), free(pt->dh), free(pt->emb_rows);
    free(pt->rec), free(pt->times), free(pt->op_base);
    memset(pt, 0, sizeof *pt);
}

/* ------------------------------------------------------------------------------------- */
/* the operations                                                                          */

/** The MoE row (Trainer.moe_layer) of decoder layer @p l, or −1. */
static int moe_row(const Trainer *tr, int l) {
    for (int j = 0; j < tr->n_moe; j++)
        if (tr->moe_layer[j] == l) return j;
    return -1;
}

/** The balance term and the loads of one MoE layer's forward over @p rows tokens. */
static void record_moe(PipeTrainer *pt, int mb, int layer, const MoEActs *a, int64_t rows) {
    Trainer *tr = pt->tr;
    const Config *c = &tr->ps.config;
    int j = moe_row(tr, layer), E = c->n_routed_experts;
    if (j < 0) return;
    rec_bal(pt)[(size_t)mb * tr->n_moe + j] = moe_balance_loss(a, rows, c, tr->opt.balance_alpha, tr->ctx.gate_work);
    moe_count_load(tr->load + (size_t)j * E, a, rows, c);
}

/** The timeline: operation times are taken from when its inputs are there, so waiting is idle time. */
typedef struct {
    double t0;     /* the step's start */
    double *start; /* where the operation's start goes */
} Clock;

static void started(const Clock *k) { *k->start = now_seconds() - k->t0; }

static int forward(PipeTrainer *pt, const PipeTask *t, const int *seqs, const Clock *clk, Err *err) {
    Trainer *tr = pt->tr;
    const Config *c = &tr->ps.config;
    const Weights *w = &tr->ps.w;
    PipeChunk *ch = &pt->chunk[t->chunk];
    int64_t T = tr->opt.seq_len, D = c->hidden_size;
    size_t bytes = sizeof(float) * (size_t)(T * D);
    const int *ids = seqs + (size_t)t->mb * (size_t)(T + 1);
    int last = t->stage == pt->sched.n_stages - 1, ck;
    PipeSlot *s = slot_take(pt, ch, t->mb, err);
    if (!s) return -1;
    if (t->stage == 0) embedding_forward(s->h, ids, T, &w->embed_tokens);
    else if (pt->link->recv(pt->link, pipe_rank_of(&pt->sched, t->dir, t->stage - 1, &ck), tag(TAG_ACT, t->dir, t->stage, t->mb), s->h,
                            bytes, err))
        return -1;
    if (clk) started(clk);
    for (int l = ch->first; l < ch->end; l++) {
        block_forward(s->h, T, 0, &w->layers[l], &s->kv.layers[l - ch->first], &s->acts[l - ch->first], &tr->ctx);
        if (w->layers[l].is_moe) record_moe(pt, t->mb, l, &s->acts[l - ch->first].moe, T);
    }
    if (!last)
        return pt->link->send(pt->link, pipe_rank_of(&pt->sched, t->dir, t->stage + 1, &ck), tag(TAG_ACT, t->dir, t->stage + 1, t->mb),
                              s->h, bytes, err);
    TrainLosses lm;
    memset(&lm, 0, sizeof lm);
    train_head_forward(tr, &s->head, s->h, ids, &lm);
    rec_main(pt)[t->mb] = lm.main;
    for (int k = 0; k < tr->opt.n_mtp; k++) {
        rec_mtp(pt)[(size_t)t->mb * tr->opt.n_mtp + k] = lm.mtp[k];
        record_moe(pt, t->mb, c->num_hidden_layers + k, &s->head.mtp[k].block.moe, T - (k + 1));
    }
    return 0;
}

/**
 * block_backward without the weight gradients: the same five steps with a gradient view that has
 * no memory, copying the two gradients the weight pass needs (the block's output gradient, the FFN's
 * dy and the shared/dense down_proj's; the gradient after attention, W_O's dy).
 */
static void block_backward_input(PipeTrainer *pt, float *dh, int l, PipeSlot *s, int i, float scale) {
    Trainer *tr = pt->tr;
    const Config *c = &tr->ps.config;
    const LayerWeights *w = &tr->ps.w.layers[l], *ng = &pt->nullg[l];
    const LayerActs *a = &s->acts[i];
    LayerActs *da = &s->dacts[i];
    int64_t T = tr->opt.seq_len, D = c->hidden_size;
    size_t bytes = sizeof(float) * (size_t)(T * D);
    double alpha = tr->opt.balance_alpha * scale; /* block_backward's, as trainer_grad passes it */
    memset(tr->dkv.mem, 0, tr->dkv.bytes);
    memcpy(s->dh_out + (size_t)i * T * D, dh, bytes);
    if (w->is_moe) moe_backward(da->x_ffn, ng, dh, a->x_ffn, T, w, &a->moe, &da->moe, alpha, &tr->ctx);
    else ffn_backward(da->x_ffn, &ng->mlp, dh, a->x_ffn, T, &w->mlp, &a->dense, &da->dense, FP8_DEQUANT, NULL);
    rmsnorm_backward(dh, D, NULL, da->x_ffn, D, a->h_mid, D, w->post_attention_layernorm, a->rstd_ffn, T, D);
    memcpy(s->dh_mid + (size_t)i * T * D, dh, bytes);
    mla_backward(da->x_attn, ng, dh, a->x_attn, T, w, &s->kv.layers[i], &tr->dkv.layers[0], &a->mla, &da->mla, &tr->ctx);
    rmsnorm_backward(dh, D, NULL, da->x_attn, D, a->h_in, D, w->input_layernorm, a->rstd_attn, T, D);
}

/** The weight gradients of ffn_backward from its kept activation gradients (@p dout: its output's). */
static void ffn_weight_grad(const FFNWeights *dw, const float *dout, const float *x, int64_t T, const FFNWeights *w,
                            const FFNActs *a, const FFNActs *da) {
    linear_backward(NULL, tensor_f32_mut(&dw->down_proj), dout, a->h_act, T, &w->down_proj, FP8_DEQUANT, NULL);
    linear_backward(NULL, tensor_f32_mut(&dw->gate_proj), da->h_gate, x, T, &w->gate_proj, FP8_DEQUANT, NULL);
    linear_backward(NULL, tensor_f32_mut(&dw->up_proj), da->h_up, x, T, &w->up_proj, FP8_DEQUANT, NULL);
}

/**
 * W of one block: every weight gradient block_backward would have added, from what
 * block_backward_input kept — each the same call on the same operands, so the sums are the same.
 */
static void block_weight_grad(PipeTrainer *pt, int l, const PipeSlot *s, int i) {
    Trainer *tr = pt->tr;
    const Config *c = &tr->ps.config;
    const LayerWeights *w = &tr->ps.w.layers[l], *g = &tr->ps.g.layers[l];
    const LayerActs *a = &s->acts[i], *da = &s->dacts[i];
    int64_t T = tr->opt.seq_len, D = c->hidden_size, Ie = c->moe_intermediate_size;
    int64_t Dq = c->q_lora_rank, Dc = c->kv_lora_rank, Dr = c->qk_rope_head_dim;
    const float *dh_out = s->dh_out + (size_t)i * T * D, *dh_mid = s->dh_mid + (size_t)i * T * D;
    if (w->is_moe) { /* moe_backward's weight gradients: routed experts, gate, shared experts */
        for (int e = 0; e < c->n_routed_experts; e++) {
            int64_t r0 = a->moe.expert_start[e], r1 = a->moe.expert_start[e + 1];
            if (r1 == r0) continue;
            FFNActs fa = { a->moe.routed.h_gate + r0 * Ie, a->moe.routed.h_up + r0 * Ie, a->moe.routed.h_act + r0 * Ie };
            FFNActs fd = { da->moe.routed.h_gate + r0 * Ie, da->moe.routed.h_up + r0 * Ie, da->moe.routed.h_act + r0 * Ie };
            ffn_weight_grad(&g->experts[e], da->moe.y_perm + r0 * D, a->moe.x_perm + r0 * D, r1 - r0, &w->experts[e], &fa, &fd);
        }
        linear_backward(NULL, tensor_f32_mut(&g->gate), da->moe.logits, a->x_ffn, T, &w->gate, FP8_DEQUANT, NULL);
        if (c->n_shared_experts > 0)
            ffn_weight_grad(&g->shared_experts, dh_out, a->x_ffn, T, &w->shared_experts, &a->moe.shared, &da->moe.shared);
    } else {
        ffn_weight_grad(&g->mlp, dh_out, a->x_ffn, T, &w->mlp, &a->dense, &da->dense);
    }
    rmsnorm_backward(NULL, D, f32_mut(g->post_attention_layernorm), da->x_ffn, D, a->h_mid, D, w->post_attention_layernorm,
                     a->rstd_ffn, T, D);
    /* mla_backward's, in its order */
    linear_backward(NULL, tensor_f32_mut(&g->o_proj), dh_mid, a->mla.o, T, &w->o_proj, FP8_DEQUANT, NULL);
    linear_backward(NULL, tensor_f32_mut(&g->kv_b_proj), da->mla.kv, a->mla.c_kv, T, &w->kv_b_proj, FP8_DEQUANT, NULL);
    rmsnorm_backward(NULL, Dc + Dr, f32_mut(g->kv_a_layernorm), da->mla.c_kv, Dc, a->mla.kv_a, Dc + Dr, w->kv_a_layernorm,
                     a->mla.rstd_kv, T, Dc);
    linear_backward(NULL, tensor_f32_mut(&g->kv_a_proj_with_mqa), da->mla.kv_a, a->x_attn, T, &w->kv_a_proj_with_mqa, FP8_DEQUANT, NULL);
    linear_backward(NULL, tensor_f32_mut(&g->q_b_proj), da->mla.q, a->mla.c_q_norm, T, &w->q_b_proj, FP8_DEQUANT, NULL);
    rmsnorm_backward(NULL, Dq, f32_mut(g->q_a_layernorm), da->mla.c_q_norm, Dq, a->mla.c_q, Dq, w->q_a_layernorm, a->mla.rstd_q,
                     T, Dq);
    linear_backward(NULL, tensor_f32_mut(&g->q_a_proj), da->mla.c_q, a->x_attn, T, &w->q_a_proj, FP8_DEQUANT, NULL);
    rmsnorm_backward(NULL, D, f32_mut(g->input_layernorm), da->x_attn, D, a->h_in, D, w->input_layernorm, a->rstd_attn, T, D);
}

/** Stage 0's embedding gradient of micro-batch @p mb: the MTP modules' rows (from the last stage), then the main one's. */
static int embedding_grad(PipeTrainer *pt, const PipeTask *t, const float *dh, const int *ids, Err *err) {
    Trainer *tr = pt->tr;
    int64_t T = tr->opt.seq_len, D = tr->ps.config.hidden_size, Dm = tr->opt.n_mtp;
    int ck;
    if (Dm) {
        int src = pipe_rank_of(&pt->sched, t->dir, pt->sched.n_stages - 1, &ck);
        if (pt->link->recv(pt->link, src, tag(TAG_EMB, t->dir, 0, t->mb), pt->emb_rows, sizeof(float) * (size_t)(Dm * T * D), err))
            return -1;
        train_mtp_embedding_backward(tr, pt->emb_rows, ids);
    }
    embedding_backward(tensor_f32_mut(&tr->ps.g.embed_tokens), dh, ids, T, D);
    return 0;
}

/** A stage's weight gradients must be added micro-batch after micro-batch, as trainer_grad adds them. */
static int weights_done(PipeChunk *ch, PipeSlot *s, int mb, Err *err) {
    if (mb <= ch->last_w)
        return err_set(err, "pipeline: stage %d adds micro-batch %d's weight gradients after micro-batch %d's; the result would "
                            "differ from one process", ch->stage, mb, ch->last_w);
    ch->last_w = mb;
    s->mb = -1;
    return 0;
}

/** The gradient a backward at a stage other than the last starts from (into pt->dh). */
static int receive_gradient(PipeTrainer *pt, const PipeTask *t, Err *err) {
    int ck;
    size_t bytes = sizeof(float) * (size_t)(pt->tr->opt.seq_len * pt->tr->ps.config.hidden_size);
    return pt->link->recv(pt->link, pipe_rank_of(&pt->sched, t->dir, t->stage + 1, &ck), tag(TAG_GRAD, t->dir, t->stage, t->mb), pt->dh,
                          bytes, err);
}

/**
 * A backward chunk: full (weight gradients too) or input-only (@p full = 0; its W comes later).
 * @p have_input: its gradient is already in pt->dh (a forward/backward pair receives both first).
 */
static int backward(PipeTrainer *pt, const PipeTask *t, const int *seqs, int full, int have_input, const Clock *clk, Err *err) {
    Trainer *tr = pt->tr;
    const Config *c = &tr->ps.config;
    PipeChunk *ch = &pt->chunk[t->chunk];
    int64_t T = tr->opt.seq_len, D = c->hidden_size;
    size_t bytes = sizeof(float) * (size_t)(T * D);
    const int *ids = seqs + (size_t)t->mb * (size_t)(T + 1);
    float scale = 1.0f / (float)pt->sched.n_mb;
    int ck;
    PipeSlot *s = slot_find(ch, t->mb, err);
    if (!s) return -1;
    if (t->stage == pt->sched.n_stages - 1) {
        if (clk) started(clk);
        train_head_backward(tr, &s->head, s->h, ids, scale, pt->dh, tr->opt.n_mtp ? pt->emb_rows : NULL);
        if (tr->opt.n_mtp &&
            pt->link->send(pt->link, pipe_rank_of(&pt->sched, t->dir, 0, &ck), tag(TAG_EMB, t->dir, 0, t->mb), pt->emb_rows,
                           sizeof(float) * (size_t)(tr->opt.n_mtp * T * D), err))
            return -1;
    } else {
        if (!have_input && receive_gradient(pt, t, err)) return -1;
        if (clk) started(clk);
    }
    if (!full) memset(s->gmem, 0, s->gbytes);
    for (int l = ch->end - 1; l >= ch->first; l--) {
        int i = l - ch->first;
        if (full) {
            train_clear_block_scratch(tr);
            block_backward(pt->dh, T, &tr->ps.w.layers[l], &tr->ps.g.layers[l], &s->kv.layers[i], &tr->dkv.layers[0], &s->acts[i],
                           &tr->dacts, tr->opt.balance_alpha * scale, &tr->ctx);
        } else {
            block_backward_input(pt, pt->dh, l, s, i, scale);
        }
    }
    if (t->stage > 0 &&
        pt->link->send(pt->link, pipe_rank_of(&pt->sched, t->dir, t->stage - 1, &ck), tag(TAG_GRAD, t->dir, t->stage - 1, t->mb),
                       pt->dh, bytes, err))
        return -1;
    if (!full) {
        if (t->stage == 0) memcpy(s->dh_in, pt->dh, bytes);
        return 0;
    }
    if (t->stage == 0 && embedding_grad(pt, t, pt->dh, ids, err)) return -1;
    return weights_done(ch, s, t->mb, err);
}

/** The weight gradients an input-only backward left for later. */
static int weight_grad(PipeTrainer *pt, const PipeTask *t, const int *seqs, Err *err) {
    PipeChunk *ch = &pt->chunk[t->chunk];
    PipeSlot *s = slot_find(ch, t->mb, err);
    if (!s) return -1;
    for (int l = ch->end - 1; l >= ch->first; l--) block_weight_grad(pt, l, s, l - ch->first);
    const int *ids = seqs + (size_t)t->mb * (size_t)(pt->tr->opt.seq_len + 1);
    if (t->stage == 0 && embedding_grad(pt, t, s->dh_in, ids, err)) return -1;
    return weights_done(ch, s, t->mb, err);
}

/* ------------------------------------------------------------------------------------- */
/* the step                                                                                */

int pipe_trainer_grad(PipeTrainer *pt, const int *seqs, TrainLosses *out, Err *err) {
    Trainer *tr = pt->tr;
    MsgLink *l = pt->link;
    int r = l->rank, M = pt->sched.n_mb, E = tr->ps.config.n_routed_experts;
    memset(out, 0, sizeof *out);
    memset(tr->ps.grad, 0, tr->ps.n * sizeof *tr->ps.grad);
    memset(tr->load, 0, sizeof *tr->load * (size_t)tr->n_moe * (size_t)E);
    memset(pt->rec, 0, pt->n_rec * sizeof *pt->rec);
    memset(pt->times, 0, 2 * (size_t)pt->op_base[l->nranks] * sizeof *pt->times);
    for (int k = 0; k < 2; k++) pt->chunk[k].last_w = -1;
    /* start together, so that the timeline measures the schedule and not the ranks' arrival */
    double sync = 0;
    if (msg_allreduce_f64(l, &sync, 1, tag(TAG_SYNC, 0, 0, 0), err)) return -1;
    double t0 = now_seconds();
    for (int i = 0; i < pt->sched.n_ops[r]; i++) {
        const PipeOp *op = &pt->sched.ops[r][i];
        double *tm = pt->times + 2 * (size_t)(pt->op_base[r] + i);
        tm[0] = now_seconds() - t0;
        Clock k = { t0, tm };
        int rc = 0, last = op->b.stage == pt->sched.n_stages - 1;
        switch (op->kind) {
        case PIPE_F: rc = forward(pt, &op->f, seqs, &k, err); break;
        case PIPE_B: rc = backward(pt, &op->b, seqs, 1, 0, &k, err); break;
        case PIPE_BIN: rc = backward(pt, &op->b, seqs, 0, 0, &k, err); break;
        case PIPE_W: rc = weight_grad(pt, &op->b, seqs, err); break;
        case PIPE_FB: /* both inputs first, as DualPipe's pair does; then the two computations */
            rc = (!last && receive_gradient(pt, &op->b, err)) || forward(pt, &op->f, seqs, &k, err) ||
                 backward(pt, &op->b, seqs, 1, !last, NULL, err);
            break;
        }
        tm[1] = now_seconds() - t0;
        if (rc) return err_prefix(err, "rank %d, operation %d", r, i);
    }
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < pt->chunk[k].n_slots; i++)
            if (pt->chunk[k].slots[i]->mb >= 0)
                return err_set(err, "pipeline: micro-batch %d still holds activations at stage %d after the schedule",
                               pt->chunk[k].slots[i]->mb, pt->chunk[k].stage);
    /* Sums over the ranks: gradients, losses, loads (each rank's own part, zeros elsewhere). */
    double *load = rec_load(pt);
    for (size_t j = 0; j < (size_t)tr->n_moe * E; j++) load[j] = (double)tr->load[j];
    if (msg_allreduce_f32(l, tr->ps.grad, tr->ps.n, tag(TAG_GRADS, 0, 0, 0), err) ||
        msg_allreduce_f64(l, pt->rec, pt->n_rec, tag(TAG_REC, 0, 0, 0), err) ||
        msg_allreduce_f64(l, pt->times, 2 * (size_t)pt->op_base[l->nranks], tag(TAG_TIMES, 0, 0, 0), err))
        return -1;
    for (size_t j = 0; j < (size_t)tr->n_moe * E; j++) tr->load[j] = (int64_t)load[j];
    /* trainer_grad's sums, micro-batch by micro-batch */
    for (int b = 0; b < M; b++) {
        out->main += rec_main(pt)[b];
        for (int k = 0; k < tr->opt.n_mtp; k++) out->mtp[k] += rec_mtp(pt)[(size_t)b * tr->opt.n_mtp + k];
        for (int j = 0; j < tr->n_moe; j++) out->balance += rec_bal(pt)[(size_t)b * tr->n_moe + j];
    }
    train_finish_losses(tr, out, M);
    pt->steps++;
    return 0;
}

/** Mean durations per rank, stage copy and operation kind: [rank][chunk][kind]. */
typedef struct {
    double *mean;
} Means;

static size_t mean_at(const PipeOp *op, int rank) {
    int chunk = op->kind == PIPE_F || op->kind == PIPE_FB ? op->f.chunk : op->b.chunk;
    return ((size_t)rank * 2 + (size_t)chunk) * 5 + (size_t)op->kind;
}

/** op_time of the prediction: the measured mean of the operation's kind on its rank and stage copy. */
static double mean_time(void *ctx, int rank, const PipeOp *op) {
    const Means *m = ctx;
    return m->mean[mean_at(op, rank)];
}

int pipe_trainer_measured(const PipeTrainer *pt, PipeSchedule *m, Err *err) {
    const PipeSchedule *s = &pt->sched;
    *m = *s;
    m->n_ops = xcalloc((size_t)s->n_ranks, sizeof *m->n_ops);
    m->ops = xcalloc((size_t)s->n_ranks, sizeof *m->ops);
    int rc = m->n_ops && m->ops ? 0 : -1;
    for (int r = 0; !rc && r < s->n_ranks; r++) {
        if (!(m->ops[r] = malloc((size_t)(s->n_ops[r] ? s->n_ops[r] : 1) * sizeof *m->ops[r]))) {
            rc = -1;
            break;
        }
        m->n_ops[r] = s->n_ops[r];
        for (int i = 0; i < s->n_ops[r]; i++) {
            m->ops[r][i] = s->ops[r][i];
            m->ops[r][i].start = pt->times[2 * (size_t)(pt->op_base[r] + i)];
            m->ops[r][i].end = pt->times[2 * (size_t)(pt->op_base[r] + i) + 1];
        }
    }
    if (rc) {
        if (!m->ops) m->n_ranks = 0;
        pipe_free(m);
        return err_set(err, "out of memory");
    }
    return 0;
}

int pipe_trainer_timing(const PipeTrainer *pt, PipeTiming *t, Err *err) {
    memset(t, 0, sizeof *t);
    PipeSchedule m;
    if (pipe_trainer_measured(pt, &m, err)) return -1;
    size_t nm = (size_t)m.n_ranks * 10;
    double *sum = xcalloc(2 * nm, sizeof *sum), all[5] = { 0 };
    int *cnt = xcalloc(nm, sizeof *cnt), all_n[5] = { 0 }, rc = 0;
    if (!sum || !cnt) rc = err_set(err, "out of memory");
    for (int r = 0; !rc && r < m.n_ranks; r++)
        for (int i = 0; i < m.n_ops[r]; i++) {
            const PipeOp *op = &m.ops[r][i];
            sum[mean_at(op, r)] += op->end - op->start, cnt[mean_at(op, r)]++;
            all[op->kind] += op->end - op->start, all_n[op->kind]++;
        }
    if (!rc) {
        pipe_stats(&m, &t->measured);
        for (size_t i = 0; i < nm; i++) sum[nm + i] = cnt[i] ? sum[i] / cnt[i] : 0;
        for (int k = 0; k < 5; k++) all[k] = all_n[k] ? all[k] / all_n[k] : 0;
        t->mean = (PipeTimes){ all[PIPE_F], all[PIPE_B], all[PIPE_W], all[PIPE_FB], 0 };
        t->mean_bin = all[PIPE_BIN];
        PipeTimes none = { 0, 0, 0, 0, 0 };
        Means means = { sum + nm };
        rc = pipe_simulate(&m, &none, mean_time, &means, err); /* m's times are overwritten */
        if (!rc) pipe_stats(&m, &t->predicted);
    }
    pipe_free(&m);
    free(sum), free(cnt);
    return rc;
}
