/**
 * @file test_train.c
 * @brief Training end to end: the whole-model gradient against finite differences (every tensor
 *        group: embedding, norms, attention, dense FFN, gate, experts, shared experts, lm_head,
 *        MTP depths 1 and 2), the aux-loss-free bias update, AdamW and the LR schedule, token
 *        files, overfitting a fixed batch, bitwise resume after a clean stop and after SIGKILL,
 *        and trained checkpoints giving the trainer's logits through model_load and `dsv3 logits`
 *        (also after an FP8 run, which resumes bit for bit like an FP32 one).
 *
 * Finite differences: see test_backward.c for the precision argument (FP32 forward, loss in
 * double, difference quotient over the FP32 step taken) and the tolerances. One difference: the
 * whole-model loss adds ~10 terms of size ~5 (main, MTP depths, balance), so its FP32 rounding
 * (~1e-7 relative) over a 2e-3 step would be ~5e-4, comparable to the smallest expert gradients
 * (~1e-4); the whole-model check therefore steps h = 1e-2 (noise ~5e-5, truncation O(h²) ~1e-4
 * relative), keeping both well inside the 1 % tolerance.
 */
#include <math.h>
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
#include "train/data.h"
#include "model/moe.h"
#include "train/train.h"
#include "util_compare.h"
#include "util_gradcheck.h"
#include "util_run.h"

static const char *const TINY = GRADCHECK_CONFIG_JSON;

static Config cfg;

/** A trainer on the tiny config with T tokens per sequence, randomly initialized, in @p precision
 *  (TRAIN_FP8 with BF16 moments, as `dsv3 train --precision fp8` runs). */
static void tiny_trainer_in(Trainer *tr, int64_t T, int64_t B, int n_mtp, float init_std, int precision) {
    TrainOptions o = train_options_default(cfg.hidden_size);
    o.seq_len = T, o.batch = B, o.n_mtp = n_mtp, o.steps = 100, o.lr.warmup = 5;
    o.precision = precision, o.bf16_moments = precision == TRAIN_FP8;
    Err err;
    if (trainer_init(tr, &cfg, &o, &err)) fail_msg("%s", err.msg);
    ParamInit pi = { 7, init_std };
    assert_int_equal(params_fill(&tr->ps, params_init_source, &pi, &err), 0);
}

/** tiny_trainer_in, FP32. */
static void tiny_trainer(Trainer *tr, int64_t T, int64_t B, int n_mtp, float init_std) {
    tiny_trainer_in(tr, T, B, n_mtp, init_std, TRAIN_FP32);
}

/** Deterministic "text": a few repeating phrases, so a model can learn something. */
static void phrases(int *ids, int64_t n, int vocab, uint64_t seed) {
    static const int ph[5][4] = { { 3, 17, 8, 41 }, { 22, 5, 5, 30 }, { 9, 44, 12, 0 }, { 31, 2, 19, 7 }, { 11, 48, 26, 36 } };
    Rng r;
    rng_seed(&r, seed);
    for (int64_t i = 0; i < n;) {
        const int *p = ph[rng_u32(&r) % 5];
        for (int j = 0; j < 4 && i < n; j++) ids[i++] = p[j] % vocab;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* whole-model gradient                                                                       */

typedef struct {
    Trainer *tr;
    const int *seq;
    int *base;      /* routing of every MoE layer at the base point */
    size_t routing; /* ints */
} WholeFD;

static void routing_now(const Trainer *tr, int *out) {
    int K = tr->ps.config.num_experts_per_tok, L = tr->ps.config.num_hidden_layers;
    int64_t T = tr->opt.seq_len;
    for (int j = 0; j < tr->n_moe; j++) {
        int l = tr->moe_layer[j];
        const int *idx = l < L ? tr->acts[l].moe.idx : tr->mtp[l - L].block.moe.idx;
        memcpy(out + (size_t)j * T * K, idx, sizeof(int) * (size_t)(T * K)); /* rows beyond T−k are stale but equal */
    }
}

static double whole_loss(void *ctx) {
    WholeFD *f = ctx;
    TrainLosses L;
    trainer_eval(f->tr, f->seq, 1, &L);
    return L.total;
}

static int whole_same_routing(void *ctx) {
    WholeFD *f = ctx;
    int *now = malloc(sizeof(int) * f->routing);
    routing_now(f->tr, now);
    int same = !memcmp(now, f->base, sizeof(int) * f->routing);
    free(now);
    return same;
}

static void whole_model_gradient(void **state) {
    (void)state;
    Trainer tr;
    const int64_t T = 9;
    tiny_trainer(&tr, T, 1, 2, 0.3f);
    tr.opt.balance_alpha = 0.02; /* large enough that its gradient shows in every MoE layer */
    Rng r;
    rng_seed(&r, 5);
    /* Norm weights away from 1 and non-zero biases, so every code path is generic. */
    for (int i = 0; i < tr.ps.n_entries; i++) {
        const ParamEntry *e = &tr.ps.entries[i];
        float *p = tr.ps.data + e->offset;
        if (e->role == PARAM_NO_DECAY)
            for (size_t j = 0; j < e->n; j++) p[j] = 1.0f + 0.2f * rng_normal(&r);
        if (e->role == PARAM_BIAS)
            for (size_t j = 0; j < e->n; j++) p[j] = 0.05f * rng_normal(&r);
    }
    int seq[10] = { 3, 17, 8, 41, 3, 22, 5, 5, 30, 17 };
    TrainLosses L;
    trainer_grad(&tr, seq, 1, &L);
    printf("    loss %.6f = main %.6f + 0.3 × mtp %.6f (depths %.6f, %.6f) + balance %.3g\n", L.total, L.main, L.mtp_mean,
           L.mtp[0], L.mtp[1], L.balance);
    assert_true(fabs(L.total - (L.main + 0.3 * (L.mtp[0] + L.mtp[1]) / 2 + L.balance)) < 1e-12);
    WholeFD f = { &tr, seq, NULL, (size_t)tr.n_moe * (size_t)T * (size_t)cfg.num_experts_per_tok };
    f.base = malloc(sizeof(int) * f.routing);
    routing_now(&tr, f.base);
    GradFn fn = { whole_loss, whole_same_routing, &f };
    int groups = 0, bias_entries = 0;
    for (int i = 0; i < tr.ps.n_entries; i++) {
        const ParamEntry *e = &tr.ps.entries[i];
        float *g = tr.ps.grad + e->offset;
        if (e->role == PARAM_ALIAS) continue; /* same memory as the main embedding / head */
        if (e->role == PARAM_BIAS) {
            for (size_t j = 0; j < e->n; j++) assert_true(g[j] == 0.0f); /* selection only */
            bias_entries++;
            continue;
        }
        double s = 0;
        for (size_t j = 0; j < e->n; j++) s += fabs(g[j]);
        if (e->slot.expert >= 0 && s == 0) continue; /* an expert no token chose */
        GradCheck c = gradcheck(e->slot.name, tr.ps.data + e->offset, g, e->n, 16, &fn, 1e-2, 1e-2, 1e-2, 99 + (uint64_t)i);
        assert_true(gradcheck_passed(&c));
        groups++;
    }
    printf("    %d tensors checked, %d correction biases with zero gradient\n", groups, bias_entries);
    assert_int_equal(bias_entries, 3); /* layer 1 and both MTP blocks */
    assert_true(groups > 40);
    free(f.base);
    trainer_free(&tr);
}

/* ---------------------------------------------------------------------------------------- */
/* balancing and the optimizer                                                                 */

/** Constructed loads → the exact biases after one update; MaxVio; and through trainer_update. */
static void bias_update(void **state) {
    (void)state;
    int64_t load[8] = { 10, 0, 5, 5, 3, 7, 5, 5 }; /* Σ 40, mean 5 */
    float b[8] = { 0.5f, -0.25f, 0.125f, 0, 1, 2, -1, 0.75f };
    float want[8];
    const float g = 0.001f;
    float signs[8] = { -1, +1, 0, 0, +1, -1, 0, 0 };
    for (int e = 0; e < 8; e++) want[e] = signs[e] > 0 ? b[e] + g : signs[e] < 0 ? b[e] - g : b[e];
    moe_update_bias(b, load, 8, 0.001);
    assert_memory_equal(b, want, sizeof b);
    assert_true(fabs(moe_max_violation(load, 8) - 1.0) < 1e-15); /* 10 / 5 − 1 */
    /* A balanced layer does not move at all. */
    int64_t flat[8] = { 4, 4, 4, 4, 4, 4, 4, 4 };
    float b2[8] = { 0 };
    moe_update_bias(b2, flat, 8, 0.5);
    for (int e = 0; e < 8; e++) assert_true(b2[e] == 0.0f);
    assert_true(moe_max_violation(flat, 8) == 0.0);

    /* Through the trainer: the optimizer never touches the biases, the balance rule does. */
    Trainer tr;
    tiny_trainer(&tr, 8, 1, 1, 0.1f);
    int seq[9];
    phrases(seq, 9, cfg.vocab_size, 3);
    TrainLosses L;
    trainer_grad(&tr, seq, 1, &L);
    float *bias[4];
    float before[4][8];
    for (int j = 0; j < tr.n_moe; j++) {
        int l = tr.moe_layer[j];
        bias[j] = f32_mut(l < cfg.num_hidden_layers ? tr.ps.w.layers[l].e_score_correction_bias
                                                    : tr.ps.w.mtp[l - cfg.num_hidden_layers].block.e_score_correction_bias);
        memcpy(before[j], bias[j], sizeof before[j]);
        memcpy(tr.load + j * 8, load, sizeof load); /* constructed loads for this step */
    }
    StepStats st;
    trainer_update(&tr, &st);
    assert_int_equal(tr.n_moe, 2);
    for (int j = 0; j < tr.n_moe; j++) {
        for (int e = 0; e < 8; e++) {
            float w = signs[e] > 0 ? before[j][e] + g : signs[e] < 0 ? before[j][e] - g : before[j][e];
            assert_true(bias[j][e] == w);
        }
        assert_true(fabs(tr.maxvio[j] - 1.0) < 1e-15);
    }
    trainer_free(&tr);
}

/** The loads a forward counts are its selections: K per token per MoE layer. */
static void loads_count_every_token(void **state) {
    (void)state;
    Trainer tr;
    tiny_trainer(&tr, 8, 3, 2, 0.1f);
    int seqs[3 * 9];
    phrases(seqs, 27, cfg.vocab_size, 4);
    TrainLosses L;
    trainer_grad(&tr, seqs, 3, &L);
    for (int j = 0; j < tr.n_moe; j++) {
        int64_t total = 0, rows = 8 - (tr.moe_layer[j] >= cfg.num_hidden_layers ? tr.moe_layer[j] - cfg.num_hidden_layers + 1 : 0);
        for (int e = 0; e < 8; e++) total += tr.load[j * 8 + e];
        assert_int_equal(total, 3 * rows * cfg.num_experts_per_tok); /* no token dropped */
    }
    trainer_free(&tr);
}

static void adamw_and_schedule(void **state) {
    (void)state;
    /* Three AdamW steps against the formula in double. */
    float p[3] = { 0.5f, -1.0f, 2.0f }, m[3] = { 0 }, v[3] = { 0 };
    double pd[3] = { 0.5, -1.0, 2.0 }, md[3] = { 0 }, vd[3] = { 0 };
    float g[3][3] = { { 0.1f, -0.2f, 0.3f }, { -0.4f, 0.5f, 0.0f }, { 1.0f, 0.25f, -2.0f } };
    AdamW h = { 0.9, 0.95, 1e-8, 0.1 };
    for (int t = 1; t <= 3; t++) {
        adamw_update(p, m, v, g[t - 1], 3, &h, 0.01, t, 1);
        for (int i = 0; i < 3; i++) {
            pd[i] *= 1 - 0.01 * 0.1;
            md[i] = 0.9 * md[i] + 0.1 * g[t - 1][i];
            vd[i] = 0.95 * vd[i] + 0.05 * (double)g[t - 1][i] * g[t - 1][i];
            pd[i] -= 0.01 * (md[i] / (1 - pow(0.9, t))) / (sqrt(vd[i] / (1 - pow(0.95, t))) + 1e-8);
            assert_true(fabs(p[i] - pd[i]) < 1e-6);
        }
    }
    /* No decay: the first step moves by lr·sign(g) exactly as in Adam. */
    float q = 1.0f, mq = 0, vq = 0, gq = -3.0f;
    adamw_update(&q, &mq, &vq, &gq, 1, &h, 0.01, 1, 0);
    assert_true(fabs(q - 1.01f) < 1e-6);
    LrSchedule s = { 1e-3, 1e-4, 10, 110 };
    assert_true(fabs(lr_at(&s, 0) - 1e-4) < 1e-15);   /* (0+1)/10 of the peak */
    assert_true(fabs(lr_at(&s, 9) - 1e-3) < 1e-15);   /* warmup done */
    assert_true(fabs(lr_at(&s, 10) - 1e-3) < 1e-15);  /* cosine starts at the peak */
    assert_true(fabs(lr_at(&s, 60) - 5.5e-4) < 1e-12); /* halfway: (peak + min)/2 */
    assert_true(lr_at(&s, 109) > 1e-4 && lr_at(&s, 109) < 1.01e-4);
    assert_true(clip_factor(4.0, 1.0) == 0.25 && clip_factor(0.5, 1.0) == 1.0 && clip_factor(9.0, 0.0) == 1.0);
}

static void write_ids(const char *path, const int *ids, int64_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (int64_t i = 0; i < n; i++) {
        unsigned char b[4] = { (unsigned char)ids[i], (unsigned char)(ids[i] >> 8), (unsigned char)(ids[i] >> 16),
                               (unsigned char)(ids[i] >> 24) };
        assert_int_equal(fwrite(b, 1, 4, f), 4);
    }
    fclose(f);
}

static void token_files(void **state) {
    (void)state;
    char path[4096];
    snprintf(path, sizeof path, "%s/ids.bin", test_tmp);
    int ids[10] = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 49 };
    write_ids(path, ids, 10);
    TokenFile f;
    Err err;
    assert_int_equal(tokenfile_open(&f, path, 50, 4, &err), 0);
    assert_int_equal(f.n, 10);
    DataCursor c = { 0, 0, 0 };
    int seq[5];
    assert_int_equal(data_next(&f, &c, NULL, 4, seq, &err), 0); /* 0..4 */
    assert_int_equal(seq[0], 0);
    assert_int_equal(seq[4], 4);
    assert_int_equal(data_next(&f, &c, NULL, 4, seq, &err), 0); /* 4..8 */
    assert_int_equal(seq[0], 4);
    assert_int_equal(data_next(&f, &c, NULL, 4, seq, &err), 0); /* 8 + 5 > 10: wraps */
    assert_int_equal(seq[0], 0);
    assert_int_equal(c.epoch, 1);
    /* Rewritten while open: an id now outside the vocabulary is an error, not an index past the embedding. */
    FILE *w = fopen(path, "r+b");
    assert_non_null(w);
    unsigned char b50[4] = { 50, 0, 0, 0 };
    assert_int_equal(fseek(w, 36, SEEK_SET), 0);
    assert_int_equal(fwrite(b50, 1, 4, w), 4);
    fclose(w);
    c = (DataCursor){ 5, 0, 0 };
    assert_int_equal(data_next(&f, &c, NULL, 4, seq, &err), -1); /* 5..9 */
    assert_non_null(strstr(err.msg, "now id 50"));
    /* Shrunk while open (it was memory-mapped, and reading past the new end was SIGBUS). */
    assert_int_equal(truncate(path, 8), 0);
    c = (DataCursor){ 0, 0, 0 };
    assert_int_equal(data_next(&f, &c, NULL, 4, seq, &err), -1);
    assert_non_null(strstr(err.msg, "shrank"));
    assert_non_null(strstr(err.msg, "ids.bin"));
    tokenfile_close(&f);
    write_ids(path, ids, 10);
    assert_int_equal(tokenfile_open(&f, path, 49, 4, &err), -1); /* id 49 is outside a 49-token vocabulary */
    assert_non_null(strstr(err.msg, "token 9 is id 49"));
    assert_int_equal(tokenfile_open(&f, path, 50, 11, &err), -1); /* too short */
    FILE *g = fopen(path, "ab");
    fputc(0, g);
    fclose(g);
    assert_int_equal(tokenfile_open(&f, path, 50, 4, &err), -1); /* 41 bytes */
    assert_non_null(strstr(err.msg, "whole number"));
}

/* ---------------------------------------------------------------------------------------- */
/* learning                                                                                   */

/** 60 steps of @p precision on one fixed batch drive the loss far below its start (memorization). */
static void overfit(int precision) {
    Trainer tr;
    tiny_trainer_in(&tr, 16, 2, 1, 0.1f, precision);
    tr.opt.lr.peak = 1e-2, tr.opt.lr.min = 1e-3, tr.opt.lr.total = tr.opt.steps = 60;
    int seqs[2 * 17];
    Rng r;
    rng_seed(&r, 8);
    for (int i = 0; i < 34; i++) seqs[i] = (int)(rng_u32(&r) % (uint32_t)cfg.vocab_size); /* random: only memorizable */
    TrainLosses L, first = { 0 };
    StepStats st;
    for (int s = 0; s < 60; s++) {
        trainer_grad(&tr, seqs, 2, &L);
        if (s == 0) first = L;
        trainer_update(&tr, &st);
    }
    trainer_eval(&tr, seqs, 2, &L);
    printf("    %s: main loss %.4f -> %.4f, MTP %.4f -> %.4f over 60 steps (ln V = %.4f)\n",
           precision == TRAIN_FP8 ? "fp8" : "fp32", first.main, L.main, first.mtp_mean, L.mtp_mean, log((double)cfg.vocab_size));
    assert_true(first.main > 0.9 * log((double)cfg.vocab_size));
    assert_true(L.main < 0.2 * first.main);
    assert_true(L.mtp_mean < 0.5 * first.mtp_mean);
    if (tr.opt.bf16_moments) /* every stored moment is a BF16 value */
        for (size_t i = 0; i < tr.ps.n; i++) {
            uint32_t um, uv;
            memcpy(&um, &tr.m[i], 4), memcpy(&uv, &tr.v[i], 4);
            assert_true((um & 0xffff) == 0 && (uv & 0xffff) == 0);
        }
    trainer_free(&tr);
}

static void overfit_fixed_batch(void **state) {
    (void)state;
    overfit(TRAIN_FP32);
}

/** The same under --precision fp8: the emulated recipe and BF16 moments learn as FP32 does. */
static void overfit_fixed_batch_fp8(void **state) {
    (void)state;
    overfit(TRAIN_FP8);
}

/* ---------------------------------------------------------------------------------------- */
/* resume                                                                                     */

/** Writes the tiny config and a token file under test_tmp; returns the common flags. */
static void cli_setup(char *flags, size_t cap) {
    char cfgp[4096], data[4096];
    snprintf(cfgp, sizeof cfgp, "%s/tiny.json", test_tmp);
    snprintf(data, sizeof data, "%s/train.bin", test_tmp);
    FILE *f = fopen(cfgp, "w");
    fputs(TINY, f);
    fclose(f);
    int *ids = malloc(sizeof(int) * 4000);
    phrases(ids, 4000, cfg.vocab_size, 11);
    write_ids(data, ids, 4000);
    free(ids);
    snprintf(flags, cap, "--config %s --train %s -T 16 -b 2 --shuffle --lr 3e-3 --warmup 3 --save-format f32", cfgp, data);
}

static char *file_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(*n + 1);
    if (fread(b, 1, *n, f) != *n) *n = 0;
    fclose(f);
    return b;
}

static void assert_same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = file_bytes(a, &na), *y = file_bytes(b, &nb);
    assert_non_null(x);
    assert_non_null(y);
    assert_int_equal(na, nb);
    assert_memory_equal(x, y, na);
    free(x);
    free(y);
}

static void run_ok(const char *cmd) {
    RunResult r;
    assert_int_equal(run_cmd(cmd, NULL, &r), 0);
    if (r.status != 0) fail_msg("%s\nexit %d: %s", cmd, r.status, r.err);
    run_result_free(&r);
}

/** Compares every step both logs have, and the final checkpoints byte for byte. */
static void assert_same_run(const char *full, const char *cut, int steps) {
    char a[64][40], b[64][40];
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    assert_int_equal(read_step_losses(full, a, 64), steps);
    assert_int_equal(read_step_losses(cut, b, 64), steps);
    for (int s = 0; s < steps; s++) {
        if (strcmp(a[s], b[s])) fail_msg("step %d: loss %s uninterrupted, %s resumed", s + 1, a[s], b[s]);
    }
}

/** A run stopped after step 6 of 12 and resumed == the uninterrupted run, bit for bit. */
static void resume_after_stop(void **state) {
    (void)state;
    char flags[8192], cmd[16384], p1[4096], p2[4096];
    cli_setup(flags, sizeof flags);
    snprintf(cmd, sizeof cmd, "%s train %s -n 12 -o %s/full --log %s/full.log --tokenizer golden/tokenizer/deepseek-v3 > /dev/null",
             dsv3_bin(), flags, test_tmp, test_tmp);
    run_ok(cmd);
    snprintf(p1, sizeof p1, "%s/full/latest/tokenizer.json", test_tmp); /* the checkpoint is complete for generation */
    assert_same_file(p1, "golden/tokenizer/deepseek-v3/tokenizer.json");
    snprintf(cmd, sizeof cmd, "%s train %s -n 12 -o %s/cut --log %s/cut.log --stop-after 6 > /dev/null", dsv3_bin(), flags,
             test_tmp, test_tmp);
    run_ok(cmd);
    snprintf(p1, sizeof p1, "%s/cut/step_00000012", test_tmp);
    assert_int_equal(access(p1, F_OK), -1); /* really stopped */
    snprintf(cmd, sizeof cmd, "%s train --resume %s/cut --train %s/train.bin --log %s/cut.log > /dev/null", dsv3_bin(), test_tmp,
             test_tmp, test_tmp);
    run_ok(cmd);
    snprintf(p1, sizeof p1, "%s/full.log", test_tmp);
    snprintf(p2, sizeof p2, "%s/cut.log", test_tmp);
    assert_same_run(p1, p2, 12);
    const char *files[] = { "model.safetensors", "optimizer.safetensors", "config.json" };
    for (int i = 0; i < 3; i++) {
        snprintf(p1, sizeof p1, "%s/full/latest/%s", test_tmp, files[i]);
        snprintf(p2, sizeof p2, "%s/cut/latest/%s", test_tmp, files[i]);
        assert_same_file(p1, p2);
    }
}

/**
 * SIGKILL at an arbitrary moment (saving every step, so the kill often lands inside a
 * checkpoint write), then --resume from the run directory: the resumed run reproduces the
 * uninterrupted one's losses from its restart step on and ends with identical weights.
 */
static void resume_after_kill(void **state) {
    (void)state;
    char flags[8192], cmd[16384], p1[4096], p2[4096];
    cli_setup(flags, sizeof flags);
    const int N = 40;
    snprintf(cmd, sizeof cmd, "%s train %s -n %d -o %s/kfull --log %s/kfull.log > /dev/null", dsv3_bin(), flags, N, test_tmp, test_tmp);
    run_ok(cmd);
    snprintf(cmd, sizeof cmd,
             "%s train %s -n %d -o %s/kill --log %s/kill.log --save-every 1 --keep 2 > /dev/null 2>&1 & pid=$!; "
             "while [ ! -e %s/kill/step_00000005 ] && kill -0 $pid 2>/dev/null; do sleep 0.005; done; "
             "kill -9 $pid; wait $pid; echo $?",
             dsv3_bin(), flags, N, test_tmp, test_tmp, test_tmp);
    RunResult r;
    assert_int_equal(run_cmd(cmd, NULL, &r), 0);
    int killed = atoi(r.out) == 137;
    run_result_free(&r);
    snprintf(p1, sizeof p1, "%s/kill.log", test_tmp);
    char before[64][40];
    memset(before, 0, sizeof before);
    int reached = read_step_losses(p1, before, 64);
    printf("    killed by SIGKILL: %s, after %d logged steps\n", killed ? "yes" : "no (finished first)", reached);
    assert_true(killed);
    assert_true(reached < N);
    /* Output flags are per invocation (only the training options travel with the checkpoint). */
    snprintf(cmd, sizeof cmd,
             "%s train --resume %s/kill --train %s/train.bin --log %s/kill.log --save-every 1 --keep 2 > /dev/null 2>&1",
             dsv3_bin(), test_tmp, test_tmp, test_tmp);
    run_ok(cmd);
    snprintf(p1, sizeof p1, "%s/kfull.log", test_tmp);
    snprintf(p2, sizeof p2, "%s/kill.log", test_tmp);
    assert_same_run(p1, p2, N); /* later lines of a step (the resumed ones) override the killed run's */
    snprintf(p1, sizeof p1, "%s/kfull/latest/model.safetensors", test_tmp);
    snprintf(p2, sizeof p2, "%s/kill/latest/model.safetensors", test_tmp);
    assert_same_file(p1, p2);
    snprintf(p1, sizeof p1, "%s/kill/step_00000039/model.safetensors", test_tmp); /* --keep 2 kept the last two */
    assert_int_equal(access(p1, F_OK), 0);
    snprintf(p1, sizeof p1, "%s/kill/step_00000038", test_tmp);
    assert_int_equal(access(p1, F_OK), -1);
}

/* ---------------------------------------------------------------------------------------- */
/* consistency with inference                                                                 */

static float *read_all_f32(const char *path, size_t *n) {
    float *x = read_f32(path, n);
    assert_non_null(x);
    return x;
}

/**
 * Train a few steps, checkpoint (F32), and compare the trainer's own logits with model_load +
 * model_forward (naive and absorbed MLA) and with `dsv3 logits` (main head and --mtp).
 */
static void checkpoint_matches_inference(void **state) {
    (void)state;
    Trainer tr;
    const int64_t T = 12;
    tiny_trainer(&tr, T, 2, 2, 0.2f);
    int seqs[2 * 13];
    phrases(seqs, 26, cfg.vocab_size, 12);
    TrainLosses L;
    StepStats st;
    for (int s = 0; s < 3; s++) {
        trainer_grad(&tr, seqs, 2, &L);
        trainer_update(&tr, &st);
    }
    char out[4096], path[4096], cmd[16384];
    Err err;
    snprintf(out, sizeof out, "%s/consistency", test_tmp);
    if (trainer_checkpoint(&tr, out, CKPT_F32, NULL, 0, path, sizeof path, &err)) fail_msg("%s", err.msg);
    trainer_eval(&tr, seqs, 1, &L); /* the trainer's logits of sequence 0 */
    size_t V = (size_t)cfg.vocab_size, n = (size_t)T * V;

    Model m;
    if (model_load(&m, path, NULL, &err)) fail_msg("%s", err.msg);
    assert_int_equal(m.w.n_mtp, 2);
    float *lg = malloc(sizeof(float) * n);
    for (int attn = 0; attn < 2; attn++) {
        RunState s;
        KVCache kv;
        AttnMode mode = attn ? ATTN_ABSORB : ATTN_NAIVE;
        assert_int_equal(runstate_init(&s, &m, T, T, mode, FP8_DEQUANT, &err), 0);
        assert_int_equal(kvcache_init(&kv, &m.config, mode, m.config.num_hidden_layers, T, &err), 0);
        assert_int_equal(model_forward(&m, &s, &kv, seqs, T, lg, T, NULL, NULL, &err), 0);
        double rel = max_rel_diff(lg, tr.logits, n);
        printf("    model_load + model_forward (%s) vs trainer: max rel %.3g\n", attn ? "absorb" : "naive", rel);
        assert_true(rel <= (attn ? 1e-5 : 1e-6));
        kvcache_free(&kv);
        runstate_free(&s);
    }
    model_free(&m);

    /* The command line: main logits and the MTP module's (depth 1: rows 0..T−2). */
    char *ids = ids_to_csv(seqs, (int)T);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --ids %s --attn naive -o %s/main.f32 2>/dev/null", dsv3_bin(), path, ids, test_tmp);
    run_ok(cmd);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --ids %s --attn naive --mtp -o %s/mtp.f32 2>/dev/null", dsv3_bin(), path, ids,
             test_tmp);
    run_ok(cmd);
    free(ids);
    size_t got;
    snprintf(path, sizeof path, "%s/main.f32", test_tmp);
    float *cli = read_all_f32(path, &got);
    assert_int_equal(got, n);
    double rel = max_rel_diff(cli, tr.logits, n);
    snprintf(path, sizeof path, "%s/mtp.f32", test_tmp);
    float *mtp = read_all_f32(path, &got);
    assert_int_equal(got, (size_t)(T - 1) * V);
    double rel_mtp = max_rel_diff(mtp, tr.logits + n, (size_t)(T - 1) * V);
    printf("    dsv3 logits vs trainer: main max rel %.3g, MTP depth 1 max rel %.3g\n", rel, rel_mtp);
    assert_true(rel <= 1e-6);
    assert_true(rel_mtp <= 1e-6);
    free(cli);
    free(mtp);
    free(lg);
    trainer_free(&tr);
}

/**
 * `--precision fp8` (the paper's recipe, fp8_recipe.h): a run stopped after step 4 of 8 and resumed
 * equals the uninterrupted one bit for bit (the recipe's options and BF16 moments travel with the
 * checkpoint), and the checkpoint's FP32 masters load for inference: `dsv3 logits` gives what an
 * FP32 trainer restored from it computes.
 */
static void fp8_run_resumes_and_loads(void **state) {
    (void)state;
    char flags[8192], cmd[16384], p1[4096], p2[4096];
    cli_setup(flags, sizeof flags);
    snprintf(cmd, sizeof cmd, "%s train %s --precision fp8 -n 8 -o %s/f8 --log %s/f8.log > /dev/null 2>&1", dsv3_bin(), flags,
             test_tmp, test_tmp);
    run_ok(cmd);
    snprintf(cmd, sizeof cmd, "%s train %s --precision fp8 -n 8 -o %s/c8 --log %s/c8.log --stop-after 4 > /dev/null 2>&1",
             dsv3_bin(), flags, test_tmp, test_tmp);
    run_ok(cmd);
    snprintf(cmd, sizeof cmd, "%s train --resume %s/c8 --train %s/train.bin --log %s/c8.log > /dev/null 2>&1", dsv3_bin(),
             test_tmp, test_tmp, test_tmp);
    run_ok(cmd);
    snprintf(p1, sizeof p1, "%s/f8.log", test_tmp);
    snprintf(p2, sizeof p2, "%s/c8.log", test_tmp);
    assert_same_run(p1, p2, 8);
    const char *files[] = { "model.safetensors", "optimizer.safetensors" };
    for (int i = 0; i < 2; i++) {
        snprintf(p1, sizeof p1, "%s/f8/latest/%s", test_tmp, files[i]);
        snprintf(p2, sizeof p2, "%s/c8/latest/%s", test_tmp, files[i]);
        assert_same_file(p1, p2);
    }
    /* The options came back. */
    Config c;
    TrainOptions o;
    Err err;
    snprintf(p1, sizeof p1, "%s/f8/latest", test_tmp);
    if (train_read_checkpoint_options(p1, &c, &o, &err)) fail_msg("%s", err.msg);
    assert_int_equal(o.precision, TRAIN_FP8);
    assert_int_equal(o.bf16_moments, 1);
    assert_true(o.fp8.acc_bits == 14 && o.fp8.promote == 128 && !o.fp8.per_tensor && o.fp8.grad_format == FMT_E4M3);
    /* Inference: dsv3 logits on the masters == an FP32 trainer restored from the checkpoint. */
    Trainer tr;
    o.precision = TRAIN_FP32, o.seq_len = 12;
    if (trainer_init(&tr, &c, &o, &err) || trainer_load_state(&tr, p1, &err)) fail_msg("%s", err.msg);
    int seq[13];
    phrases(seq, 13, cfg.vocab_size, 14);
    TrainLosses L;
    trainer_eval(&tr, seq, 1, &L);
    char *ids = ids_to_csv(seq, 12);
    snprintf(cmd, sizeof cmd, "%s logits -m %s --ids %s --attn naive -o %s/f8.f32 2>/dev/null", dsv3_bin(), p1, ids, test_tmp);
    run_ok(cmd);
    free(ids);
    size_t got, n = (size_t)12 * (size_t)cfg.vocab_size;
    snprintf(p2, sizeof p2, "%s/f8.f32", test_tmp);
    float *cli = read_all_f32(p2, &got);
    assert_int_equal(got, n);
    double rel = max_rel_diff(cli, tr.logits, n);
    printf("    fp8 run resumed bit for bit; dsv3 logits of its checkpoint vs an FP32 trainer on it: max rel %.3g\n", rel);
    assert_true(rel <= 1e-6);
    free(cli);
    trainer_free(&tr);
}

/** A BF16 checkpoint with its FP32 masters in the sidecar resumes the exact parameters. */
static void bf16_checkpoint_keeps_masters(void **state) {
    (void)state;
    Trainer a, b;
    tiny_trainer(&a, 8, 1, 1, 0.2f);
    int seq[9];
    phrases(seq, 9, cfg.vocab_size, 13);
    TrainLosses L;
    StepStats st;
    trainer_grad(&a, seq, 1, &L);
    trainer_update(&a, &st);
    char out[4096], path[4096];
    Err err;
    snprintf(out, sizeof out, "%s/bf16", test_tmp);
    if (trainer_checkpoint(&a, out, CKPT_BF16, NULL, 0, path, sizeof path, &err)) fail_msg("%s", err.msg);
    Config c;
    TrainOptions o;
    if (train_read_checkpoint_options(path, &c, &o, &err)) fail_msg("%s", err.msg);
    assert_int_equal(o.n_mtp, 1);
    assert_true(o.lr.peak == a.opt.lr.peak && o.adamw.beta2 == a.opt.adamw.beta2 && o.seed == a.opt.seed);
    if (trainer_init(&b, &c, &o, &err) || trainer_load_state(&b, path, &err)) fail_msg("%s", err.msg);
    assert_int_equal(b.step, 1);
    assert_memory_equal(a.ps.data, b.ps.data, a.ps.n * sizeof(float));
    assert_memory_equal(a.m, b.m, a.ps.n * sizeof(float));
    assert_memory_equal(a.v, b.v, a.ps.n * sizeof(float));
    Model m; /* and the BF16 model file itself loads for inference */
    if (model_load(&m, path, NULL, &err)) fail_msg("%s", err.msg);
    model_free(&m);
    trainer_free(&a);
    trainer_free(&b);
}

static int setup(void **state) {
    (void)state;
    Err err;
    if (config_parse(&cfg, TINY, strlen(TINY), "train test", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return test_tmp_setup(state);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(whole_model_gradient),  cmocka_unit_test(bias_update),
        cmocka_unit_test(loads_count_every_token), cmocka_unit_test(adamw_and_schedule),
        cmocka_unit_test(token_files),           cmocka_unit_test(overfit_fixed_batch),
        cmocka_unit_test(overfit_fixed_batch_fp8),
        cmocka_unit_test(resume_after_stop),     cmocka_unit_test(resume_after_kill),
        cmocka_unit_test(checkpoint_matches_inference), cmocka_unit_test(bf16_checkpoint_keeps_masters),
        cmocka_unit_test(fp8_run_resumes_and_loads),
    };
    return cmocka_run_group_tests_name("train", tests, setup, test_tmp_teardown);
}
