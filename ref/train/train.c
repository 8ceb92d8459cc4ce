/**
 * @file train.c
 * @brief The trainer (train.h): whole-model forward/backward over sequences, the optimizer step
 *        with the aux-loss-free bias update, and resumable checkpoints.
 *
 * Shapes: T tokens per sequence, D hidden, V vocab, L layers, n_mtp (= Dm) MTP depths, E experts.
 *
 * Forward of one sequence x_0..x_T (docs/model.md §2, §7; paper eqs. 21–25):
 *     h = Emb(x_0..x_{T−1});  h = block_l(h) for l < L;  n^0 = norm(h);  z^0 = lm_head n^0
 *     depth k = 1..Dm, rows i < T−k (position i, its own K/V):
 *         n^k = MTP_k(h_prev = n^{k−1}[0..T−k), Emb(x_{k..T−1}))      (mtp_module_forward)
 *         z^k = shared_head.head n^k,   targets x_{i+k+1}
 * Depth 1 takes the post-final-norm hidden (the released weights' wiring, docs/model.md §7.2, §11 #2);
 * depth k > 1 takes depth k−1's shared_head.norm output — what multi-step drafting with these
 * modules feeds back (docs/model.md §7.2, last bullet) and the post-norm analogue of depth 1's input.
 * Eq. 21's h_i^{k−1} for k > 1 is depth k−1's output representation; the paper does not say
 * before or after the shared head's norm, and this choice keeps every depth's h input normalized.
 *
 * Backward runs the same graph in reverse: the MTP depths from Dm down to 1 (each depth's
 * hnorm input gradient lands in the previous depth's head-input gradient, depth 1's in the main
 * model's), then the main head, final norm, blocks L−1..0 and the embedding. The MTP modules'
 * embedding and head are the main model's tensors (ParamSet aliases), so their gradients add up
 * there, as the paper's sharing requires (§2.2).
 *
 * Balance (paper §2.1.2, docs/model.md §6): the correction bias only routes and is never an optimizer
 * parameter; after every step it moves by γ·sign(mean load − load) with loads counted over all
 * tokens of the step, per MoE layer (the MTP blocks' MoE layers included). The sequence-wise
 * loss α Σ f_i P_i is added per sequence and per MoE layer. No token is ever dropped (every
 * selection is computed; there is no capacity limit).
 */
#include "train.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/embed.h"
#include "loss.h"
#include "model/rmsnorm.h"

TrainOptions train_options_default(int hidden) {
    TrainOptions o;
    memset(&o, 0, sizeof o);
    o.batch = 8;
    o.seq_len = 256;
    o.steps = 1000;
    /* The paper's 2.2e-4 peak is for 15M-token batches of a 671B model; a tiny model with a
     * few thousand tokens per step trains well at ~1e-3. The cosine ends at peak/10 like the
     * paper's 2.2e-4 → 2.2e-5. Warmup 10% of the default run (the paper: 2K steps). */
    o.lr = (LrSchedule){ 1e-3, 1e-4, 100, 1000 };
    o.adamw = (AdamW){ 0.9, 0.95, 1e-8, 0.1 };
    o.grad_clip = 1.0;
    o.bias_update_speed = 1e-3;
    o.balance_alpha = 1e-4;
    o.mtp_lambda = 0.3;
    o.n_mtp = 1;
    /* Paper: std 0.006 at hidden 7168, i.e. std·sqrt(hidden) ≈ 0.51; keep that product. */
    o.init_std = 0.006 * sqrt(7168.0 / (double)(hidden > 0 ? hidden : 7168));
    o.seed = 1337;
    o.shuffle = 0;
    o.save_every = 0;
    o.keep = 3;
    o.save_format = CKPT_F32;
    o.precision = TRAIN_FP32;
    o.fp8 = fp8_options_default();
    o.bf16_moments = 0;
    return o;
}

/* ------------------------------------------------------------------------------------- */
/* allocation                                                                              */


void train_mtp_acts_layout(MTPActs *a, const Config *c, int64_t T, int k, Arena *ar) {
    int64_t D = c->hidden_size;
    ARENA_TAKE(ar, a->emb, T * D);
    ARENA_TAKE(ar, a->rstd_e, T);
    ARENA_TAKE(ar, a->rstd_h, T);
    ARENA_TAKE(ar, a->cat, T * 2 * D);
    ARENA_TAKE(ar, a->h, T * D);
    ARENA_TAKE(ar, a->normed, T * D);
    ARENA_TAKE(ar, a->rstd_out, T);
    int moe = config_layer_is_moe(c, c->num_hidden_layers + k); /* MoE for V3; dense if moe_layer_freq skips it */
    LayerActsSpec spec = { T, T, !moe, moe, ATTN_NAIVE, 1 };
    layer_acts_layout(&a->block, c, &spec, ar);
}

static void trainer_layout(Trainer *tr, Arena *ar) {
    const Config *c = &tr->ps.config;
    int64_t T = tr->opt.seq_len, D = c->hidden_size, V = c->vocab_size, Dm = tr->opt.n_mtp, L = c->num_hidden_layers;
    int64_t E = c->n_routed_experts, half = c->qk_rope_head_dim / 2;
    int64_t max_in = config_max_linear_in(c);
    ARENA_TAKE(ar, tr->h, T * D);
    ARENA_TAKE(ar, tr->normed, T * D);
    ARENA_TAKE(ar, tr->rstd, T);
    ARENA_TAKE(ar, tr->logits, (1 + Dm) * T * V);
    ARENA_TAKE(ar, tr->probs, (1 + Dm) * T * V);
    ARENA_TAKE(ar, tr->dlogits, T * V);
    ARENA_TAKE(ar, tr->dnormed, (1 + Dm) * T * D);
    ARENA_TAKE(ar, tr->dh, T * D);
    ARENA_TAKE(ar, tr->targets, (1 + Dm) * T);
    ARENA_TAKE(ar, tr->seq, T + 1);
    float *lin = ARENA_TAKE(ar, lin, linear_scratch_floats(T, max_in));
    if (lin) tr->ctx.lin = linear_scratch_init(lin, T, max_in);
    tr->ctx.rope_cos = ARENA_TAKE(ar, tr->rope_cos, T * half);
    tr->ctx.rope_sin = ARENA_TAKE(ar, tr->rope_sin, T * half);
    ARENA_TAKE(ar, tr->ctx.att_row, T * linear_scratch_threads());
    tr->ctx.att_row_len = T;
    ARENA_TAKE(ar, tr->ctx.gate_work, 2 * (E + c->n_group));
    for (int64_t l = 0; l < L; l++) {
        int moe = config_layer_is_moe(c, (int)l);
        LayerActsSpec spec = { T, T, !moe, moe, ATTN_NAIVE, 1 };
        layer_acts_layout(&tr->acts[l], c, &spec, ar);
    }
    for (int64_t k = 0; k < Dm; k++) train_mtp_acts_layout(&tr->mtp[k], c, T, (int)k, ar);
    ARENA_TAKE(ar, tr->dmtp.emb, T * D);
    ARENA_TAKE(ar, tr->dmtp.cat, T * 2 * D);
    ARENA_TAKE(ar, tr->dmtp.h, T * D);
    ARENA_TAKE(ar, tr->moe_layer, tr->n_moe);
    ARENA_TAKE(ar, tr->load, (int64_t)tr->n_moe * E);
    ARENA_TAKE(ar, tr->maxvio, tr->n_moe);
}

/** Lays out @p a in a fresh zeroed allocation (for a LayerActs that is cleared as a whole). */
static void *acts_alloc(LayerActs *a, const Config *c, const LayerActsSpec *spec, size_t *bytes, Err *err) {
    Arena count = { 0 };
    layer_acts_layout(a, c, spec, &count);
    if (count.overflow) {
        err_set(err, "gradient buffers for %lld tokens overflow", (long long)spec->T);
        return NULL;
    }
    size_t n = (count.used + 63) & ~(size_t)63;
    void *mem = aligned_alloc(64, n ? n : 64);
    if (!mem) {
        err_set(err, "out of memory allocating %.1f MiB of gradient buffers", (double)n / 1048576.0);
        return NULL;
    }
    memset(mem, 0, n);
    Arena ar = { mem, 0, count.used, 0 };
    layer_acts_layout(a, c, spec, &ar);
    DSV3_ASSERT(!ar.overflow);
    *bytes = count.used;
    return mem;
}

int trainer_init(Trainer *tr, const Config *cfg, const TrainOptions *opt, Err *err) {
    memset(tr, 0, sizeof *tr);
    tr->opt = *opt;
    TrainOptions *o = &tr->opt;
    if (o->batch < 1) return err_set(err, "batch = %lld must be at least 1", (long long)o->batch);
    if (o->n_mtp < 0 || o->n_mtp > 16) return err_set(err, "MTP depth %d must be in [0, 16]", o->n_mtp);
    if (o->seq_len < 2 || o->seq_len <= o->n_mtp)
        return err_set(err, "seq_len = %lld must be at least 2 and exceed the MTP depth %d", (long long)o->seq_len, o->n_mtp);
    if (o->steps < 1) return err_set(err, "steps = %lld must be at least 1", (long long)o->steps);
    if (o->lr.warmup < 0) return err_set(err, "warmup = %lld must not be negative", (long long)o->lr.warmup);
    if (o->precision != TRAIN_FP32 && o->precision != TRAIN_FP8) return err_set(err, "precision %d must be fp32 or fp8", o->precision);
    if (o->bf16_moments != 0 && o->bf16_moments != 1) return err_set(err, "bf16_moments = %d must be 0 or 1", o->bf16_moments);
    if (o->precision == TRAIN_FP8 && fp8_options_check(&o->fp8, err)) return -1;
    o->lr.total = o->steps;
    if (config_check_positions(cfg, o->seq_len, "seq_len", err)) return -1;
    if (params_init(&tr->ps, cfg, o->n_mtp, 1, err)) return -1;
    const Config *c = &tr->ps.config;
    int64_t T = o->seq_len, L = c->num_hidden_layers;
    tr->m = xcalloc(tr->ps.n, sizeof *tr->m);
    tr->v = xcalloc(tr->ps.n, sizeof *tr->v);
    tr->acts = xcalloc((size_t)L, sizeof *tr->acts);
    tr->mtp = xcalloc((size_t)(o->n_mtp ? o->n_mtp : 1), sizeof *tr->mtp);
    if (!tr->m || !tr->v || !tr->acts || !tr->mtp) {
        err_set(err, "out of memory for the optimizer state of %zu parameters", tr->ps.n);
        goto fail;
    }
    for (int l = 0; l < L + o->n_mtp; l++) tr->n_moe += config_layer_is_moe(c, l);
    Arena count = { 0 };
    trainer_layout(tr, &count);
    if (count.overflow) {
        err_set(err, "activation buffers for seq_len %lld overflow", (long long)T);
        goto fail;
    }
    tr->mem = aligned_alloc(64, (count.used + 63) & ~(size_t)63);
    if (!tr->mem) {
        err_set(err, "out of memory allocating %.1f MiB of activations (seq_len %lld)", (double)count.used / 1048576.0,
                (long long)T);
        goto fail;
    }
    memset(tr->mem, 0, count.used);
    Arena ar = { tr->mem, 0, count.used, 0 };
    trainer_layout(tr, &ar);
    DSV3_ASSERT(!ar.overflow);
    int n_dense = 0;
    for (int l = 0; l < L + o->n_mtp; l++) n_dense += !config_layer_is_moe(c, l);
    LayerActsSpec dspec = { T, T, n_dense > 0, tr->n_moe > 0, ATTN_NAIVE, 0 };
    if (!(tr->dmem = acts_alloc(&tr->dacts, c, &dspec, &tr->dbytes, err))) goto fail;
    tr->dmtp.block = tr->dacts;
    if (kvcache_init(&tr->kv, c, ATTN_NAIVE, (int)L, T, err) ||
        kvcache_init(&tr->mtp_kv, c, ATTN_NAIVE, o->n_mtp ? o->n_mtp : 1, T, err) ||
        kvcache_init(&tr->dkv, c, ATTN_NAIVE, 1, T, err))
        goto fail;
    int j = 0;
    for (int l = 0; l < L + o->n_mtp; l++)
        if (config_layer_is_moe(c, l)) tr->moe_layer[j++] = l;
    /* The inference view of the live parameters. */
    tr->model.config = *c;
    tr->model.w = tr->ps.w;
    if (rope_init(&tr->model.rope, c, err)) goto fail;
    int64_t half = c->qk_rope_head_dim / 2;
    for (int64_t t = 0; t < T; t++)
        rope_cos_sin(tr->rope_cos + t * half, tr->rope_sin + t * half, t, &tr->model.rope);
    tr->ctx.cfg = c;
    tr->ctx.attn = ATTN_NAIVE;
    tr->ctx.fp8 = FP8_DEQUANT;
    if (o->precision == TRAIN_FP8) { /* the linears' GEMMs go through the recipe (fp8_recipe.h) */
        if (!(tr->fp8 = fp8_recipe_new(&o->fp8, T, (int)L + o->n_mtp, err)) || fp8_recipe_add_params(tr->fp8, &tr->ps, err))
            goto fail;
        tr->ctx.fp8 = FP8_TRAIN;
        tr->ctx.lin.hook = fp8_recipe_hook(tr->fp8);
    }
    rng_seed(&tr->rng, o->seed);
    tr->data.shuffle = o->shuffle;
    return 0;
fail:
    trainer_free(tr);
    return -1;
}

void trainer_free(Trainer *tr) {
    params_free(&tr->ps);
    rope_free(&tr->model.rope);
    kvcache_free(&tr->kv);
    kvcache_free(&tr->mtp_kv);
    kvcache_free(&tr->dkv);
    free(tr->m);
    free(tr->v);
    free(tr->acts);
    free(tr->mtp);
    free(tr->mem);
    free(tr->dmem);
    fp8_recipe_free(tr->fp8);
    memset(tr, 0, sizeof *tr);
}

/* ------------------------------------------------------------------------------------- */
/* forward and backward of one sequence                                                    */

/** The activations of MoE layer j and the rows it ran over. */
static const MoEActs *moe_acts(const Trainer *tr, int j, int64_t *rows) {
    int l = tr->moe_layer[j], L = tr->ps.config.num_hidden_layers;
    if (l < L) {
        *rows = tr->opt.seq_len;
        return &tr->acts[l].moe;
    }
    *rows = tr->opt.seq_len - (l - L + 1);
    return &tr->mtp[l - L].block.moe;
}

static float *logits_of(const Trainer *tr, float *base, int k) {
    return base + (size_t)k * (size_t)tr->opt.seq_len * (size_t)tr->ps.config.vocab_size;
}

TrainHead trainer_head(Trainer *tr) {
    return (TrainHead){ tr->normed, tr->rstd, tr->logits, tr->probs, tr->targets, tr->mtp, &tr->mtp_kv };
}

void train_head_forward(Trainer *tr, TrainHead *hd, const float *h, const int *ids, TrainLosses *out) {
    const Config *c = &tr->ps.config;
    const Weights *w = &tr->ps.w;
    int64_t T = tr->opt.seq_len, D = c->hidden_size, V = c->vocab_size;
    float eps = (float)c->rms_norm_eps;
    rmsnorm_forward(hd->normed, D, h, D, w->norm, T, D, eps, hd->rstd);
    linear_forward(hd->logits, hd->normed, T, &w->lm_head, FP8_DEQUANT, &tr->ctx.lin);
    for (int64_t t = 0; t < T; t++) hd->targets[t] = ids[t + 1];
    out->main += cross_entropy_forward(hd->probs, hd->logits, hd->targets, T, V) / (double)T;
    /* MTP depths (eqs. 21–24): depth k predicts x_{i+k+1} from h_i^{k−1} and Emb(x_{i+k}). */
    const float *h_prev = hd->normed;
    for (int k = 1; k <= tr->opt.n_mtp; k++) {
        int64_t Tk = T - k;
        MTPActs *a = &hd->mtp[k - 1];
        mtp_module_forward(ids + k, h_prev, Tk, 0, &w->mtp[k - 1], &hd->mtp_kv->layers[k - 1], a, &tr->ctx);
        float *lg = logits_of(tr, hd->logits, k), *pr = logits_of(tr, hd->probs, k);
        int *tg = hd->targets + k * T;
        linear_forward(lg, a->normed, Tk, &w->mtp[k - 1].shared_head_head, FP8_DEQUANT, &tr->ctx.lin);
        for (int64_t i = 0; i < Tk; i++) tg[i] = ids[i + k + 1];
        out->mtp[k - 1] += cross_entropy_forward(pr, lg, tg, Tk, V) / (double)T; /* eq. 24: 1/T */
        h_prev = a->normed;
    }
}

static void forward_sequence(Trainer *tr, const int *ids, TrainLosses *out, int count_load) {
    const Config *c = &tr->ps.config;
    const Weights *w = &tr->ps.w;
    int64_t T = tr->opt.seq_len, E = c->n_routed_experts;
    if (tr->fp8) fp8_recipe_begin_sequence(tr->fp8);
    /* Main model (docs/model.md §2): embed, blocks, final norm, head; then the MTP depths. */
    embedding_forward(tr->h, ids, T, &w->embed_tokens);
    for (int l = 0; l < c->num_hidden_layers; l++)
        block_forward(tr->h, T, 0, &w->layers[l], &tr->kv.layers[l], &tr->acts[l], &tr->ctx);
    TrainHead hd = trainer_head(tr);
    train_head_forward(tr, &hd, tr->h, ids, out);
    /* Sequence-wise balance loss of every MoE layer (eqs. 17–20), and the step's loads. */
    for (int j = 0; j < tr->n_moe; j++) {
        int64_t rows;
        const MoEActs *a = moe_acts(tr, j, &rows);
        out->balance += moe_balance_loss(a, rows, c, tr->opt.balance_alpha, tr->ctx.gate_work);
        if (count_load) moe_count_load(tr->load + (size_t)j * (size_t)E, a, rows, c);
    }
}

void train_clear_block_scratch(Trainer *tr) {
    memset(tr->dmem, 0, tr->dbytes);
    memset(tr->dkv.mem, 0, tr->dkv.bytes);
}

void train_head_backward(Trainer *tr, const TrainHead *hd, const float *h, const int *ids, float scale, float *dh,
                         float *emb_grad) {
    const Config *c = &tr->ps.config;
    const Weights *w = &tr->ps.w, *g = &tr->ps.g;
    int64_t T = tr->opt.seq_len, D = c->hidden_size, V = c->vocab_size;
    int Dm = tr->opt.n_mtp;
    double alpha = tr->opt.balance_alpha * scale;
    memset(tr->dnormed, 0, sizeof(float) * (size_t)((1 + Dm) * T * D));
    for (int k = Dm; k >= 1; k--) {
        int64_t Tk = T - k;
        const MTPActs *a = &hd->mtp[k - 1];
        float *dn = tr->dnormed + k * T * D, *dh_prev = tr->dnormed + (k - 1) * T * D;
        const float *h_prev = k == 1 ? hd->normed : hd->mtp[k - 2].normed;
        memset(tr->dlogits, 0, sizeof(float) * (size_t)(Tk * V));
        cross_entropy_backward(tr->dlogits, logits_of(tr, hd->probs, k), hd->targets + k * T, Tk, V,
                               scale * (float)(tr->opt.mtp_lambda / Dm) / (float)T);
        linear_backward(dn, tensor_f32_mut(&g->mtp[k - 1].shared_head_head), tr->dlogits, a->normed, Tk,
                        &w->mtp[k - 1].shared_head_head, FP8_DEQUANT, NULL);
        train_clear_block_scratch(tr);
        memset(tr->dmtp.emb, 0, sizeof(float) * (size_t)(T * D));
        memset(tr->dmtp.cat, 0, sizeof(float) * (size_t)(T * 2 * D));
        memset(tr->dmtp.h, 0, sizeof(float) * (size_t)(T * D));
        MTPWeights gk = g->mtp[k - 1];
        if (emb_grad) gk.embed_tokens.data = NULL; /* the embedding's rows go to emb_grad instead */
        mtp_module_backward(dh_prev, &gk, dn, ids + k, h_prev, Tk, &w->mtp[k - 1], &hd->mtp_kv->layers[k - 1],
                            &tr->dkv.layers[0], a, &tr->dmtp, alpha, &tr->ctx);
        if (emb_grad) memcpy(emb_grad + (size_t)(k - 1) * (size_t)(T * D), tr->dmtp.emb, sizeof(float) * (size_t)(Tk * D));
    }
    /* Main head and final norm. */
    memset(tr->dlogits, 0, sizeof(float) * (size_t)(T * V));
    cross_entropy_backward(tr->dlogits, hd->probs, hd->targets, T, V, scale / (float)T);
    linear_backward(tr->dnormed, tensor_f32_mut(&g->lm_head), tr->dlogits, hd->normed, T, &w->lm_head, FP8_DEQUANT, NULL);
    memset(dh, 0, sizeof(float) * (size_t)(T * D));
    rmsnorm_backward(dh, D, f32_mut(g->norm), tr->dnormed, D, h, D, w->norm, hd->rstd, T, D);
}

void train_mtp_embedding_backward(Trainer *tr, const float *emb_grad, const int *ids) {
    int64_t T = tr->opt.seq_len, D = tr->ps.config.hidden_size;
    for (int k = tr->opt.n_mtp; k >= 1; k--) /* backward_sequence's order: depth Dm first */
        embedding_backward(tensor_f32_mut(&tr->ps.g.embed_tokens), emb_grad + (size_t)(k - 1) * (size_t)(T * D), ids + k, T - k, D);
}

/** Accumulates ∂(scale · L_sequence)/∂params into the gradients. */
static void backward_sequence(Trainer *tr, const int *ids, float scale) {
    const Config *c = &tr->ps.config;
    const Weights *w = &tr->ps.w, *g = &tr->ps.g;
    int64_t T = tr->opt.seq_len, D = c->hidden_size;
    double alpha = tr->opt.balance_alpha * scale;
    TrainHead hd = trainer_head(tr);
    train_head_backward(tr, &hd, tr->h, ids, scale, tr->dh, NULL);
    for (int l = c->num_hidden_layers - 1; l >= 0; l--) {
        train_clear_block_scratch(tr);
        block_backward(tr->dh, T, &w->layers[l], &g->layers[l], &tr->kv.layers[l], &tr->dkv.layers[0], &tr->acts[l],
                       &tr->dacts, alpha, &tr->ctx);
    }
    embedding_backward(tensor_f32_mut(&g->embed_tokens), tr->dh, ids, T, D);
}

void train_finish_losses(const Trainer *tr, TrainLosses *out, int64_t n) {
    out->main /= (double)n;
    out->balance /= (double)n;
    out->mtp_mean = 0.0;
    for (int k = 0; k < tr->opt.n_mtp; k++) {
        out->mtp[k] /= (double)n;
        out->mtp_mean += out->mtp[k] / tr->opt.n_mtp;
    }
    out->total = out->main + tr->opt.mtp_lambda * out->mtp_mean + out->balance;
}

void trainer_grad(Trainer *tr, const int *seqs, int64_t n, TrainLosses *out) {
    int64_t T = tr->opt.seq_len;
    memset(out, 0, sizeof *out);
    if (tr->fp8) fp8_recipe_begin_pass(tr->fp8);
    memset(tr->ps.grad, 0, tr->ps.n * sizeof *tr->ps.grad);
    memset(tr->load, 0, sizeof *tr->load * (size_t)tr->n_moe * (size_t)tr->ps.config.n_routed_experts);
    for (int64_t b = 0; b < n; b++) {
        const int *ids = seqs + b * (T + 1);
        forward_sequence(tr, ids, out, 1);
        backward_sequence(tr, ids, 1.0f / (float)n);
    }
    train_finish_losses(tr, out, n);
}

void trainer_eval(Trainer *tr, const int *seqs, int64_t n, TrainLosses *out) {
    memset(out, 0, sizeof *out);
    if (tr->fp8) fp8_recipe_begin_pass(tr->fp8);
    for (int64_t b = 0; b < n; b++) forward_sequence(tr, seqs + b * (tr->opt.seq_len + 1), out, 0);
    train_finish_losses(tr, out, n);
}

/* ------------------------------------------------------------------------------------- */
/* the optimizer step                                                                      */

void trainer_update(Trainer *tr, StepStats *st) {
    ParamSet *p = &tr->ps;
    const Config *c = &p->config;
    int E = c->n_routed_experts;
    st->grad_norm = sqrt(params_grad_sq_norm(p));
    st->clip = clip_factor(st->grad_norm, tr->opt.grad_clip);
    st->lr = lr_at(&tr->opt.lr, tr->step);
    float clip = (float)st->clip;
    for (int i = 0; i < p->n_entries; i++) {
        const ParamEntry *e = &p->entries[i];
        if (e->role != PARAM_DECAY && e->role != PARAM_NO_DECAY) continue;
        float *g = p->grad + e->offset;
        if (clip != 1.0f)
            for (size_t j = 0; j < e->n; j++) g[j] *= clip;
        adamw_update(p->data + e->offset, tr->m + e->offset, tr->v + e->offset, g, e->n, &tr->opt.adamw, st->lr,
                     tr->step + 1, e->role == PARAM_DECAY);
        if (tr->opt.bf16_moments) round_to_bf16(tr->m + e->offset, e->n), round_to_bf16(tr->v + e->offset, e->n);
    }
    /* Aux-loss-free balancing: one bias step per MoE layer from this step's loads. */
    for (int j = 0; j < tr->n_moe; j++) {
        int l = tr->moe_layer[j], L = c->num_hidden_layers;
        const LayerWeights *lw = l < L ? &p->w.layers[l] : &p->w.mtp[l - L].block;
        const int64_t *load = tr->load + (size_t)j * (size_t)E;
        moe_update_bias(f32_mut(lw->e_score_correction_bias), load, E, tr->opt.bias_update_speed);
        tr->maxvio[j] = moe_max_violation(load, E);
    }
    tr->step++;
}

int trainer_next_batch(Trainer *tr, const TokenFile *f, int *seqs, Err *err) {
    int64_t T = tr->opt.seq_len;
    for (int64_t b = 0; b < tr->opt.batch; b++)
        if (data_next(f, &tr->data, &tr->rng, T, seqs + b * (T + 1), err)) return -1;
    tr->tokens += tr->opt.batch * T;
    return 0;
}
