/**
 * @file test_threads.c
 * @brief Every thread count gives the same bits (ref/base/threads.h), and the linear kernels
 *        agree with each other (ref/model/linear.h): each output has one summation order.
 *
 *  - the blocked prefill kernel == the one-row decode kernel, bit for bit, for F32, BF16, F16 and
 *    FP8 weights with ragged shapes (rows not a multiple of the tile or panel, columns not a
 *    multiple of 16, FP8 edge blocks), for 1..9 tokens: linear_rows (strided, an offset row
 *    range) and linear_forward (t tokens at once == one at a time);
 *  - the FP8 decode kernel == linear.h's sum written out with scalars, for every code, NaN codes
 *    and activations where its 2^-8 scaling would not be exact;
 *  - linear_forward on 1, 2 and 3 threads (dequant and W8A8) == one thread;
 *  - model_forward: a 21-token prefill chunk (logits of every position, hiddens) and then 4
 *    decode steps, BF16 and FP8 checkpoints, absorbed and naive attention: -t 2 and -t 3 == -t 1;
 *  - a generation with the sampler (T 0.8, top-k 40, top-p 0.95), and one with MTP speculative
 *    decoding: the same tokens;
 *  - two training steps through the train API (forward, backward, AdamW, bias update): the same
 *    losses and the same parameters, bit for bit.
 * On a 2-core machine -t 3 oversubscribes, which is the point: a thread count that does not
 * divide the work evenly.
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

#include "base/threads.h"
#include "generate/generate.h"
#include "model/ckpt.h"
#include "model/fp8.h"
#include "model/linear.h"
#include "train/train.h"
#include "util_compare.h"
#include "util_model.h"

static const int thread_counts[] = { 1, 2, 3 };
#define N_COUNTS 3

/* ------------------------------------------------------------------------------------- */
/* the kernels                                                                             */

static void kernels_agree(void **state) {
    (void)state;
    const DType dts[] = { DT_F32, DT_BF16, DT_F16, DT_F8_E4M3 };
    const int64_t shapes[][2] = { { 37, 300 }, { 16, 256 }, { 200, 129 }, { 3, 7 }, { 130, 1040 } };
    Rng r;
    rng_seed(&r, 5);
    int cases = 0;
    for (size_t d = 0; d < 4; d++)
        for (size_t sh = 0; sh < sizeof shapes / sizeof *shapes; sh++) {
            int64_t rows = shapes[sh][0], cols = shapes[sh][1], T = 9, ldx = cols + 3, ldy = rows + 5;
            uint8_t *buf;
            float *scales;
            Tensor W = random_weight(dts[d], rows, cols, &buf, &scales, &r);
            float *x = malloc(sizeof(float) * (size_t)(T * ldx)), *panel = malloc(sizeof(float) * LINEAR_PANEL_ROWS * (size_t)cols);
            float *y1 = calloc((size_t)(T * ldy), sizeof(float)), *y2 = calloc((size_t)(T * ldy), sizeof(float));
            for (int64_t i = 0; i < T * ldx; i++) x[i] = rng_normal(&r);
            for (int64_t t = 1; t <= T; t++) {
                /* rows [2, rows-1): an offset start, so the FP8 scale rows are looked up off the panel grid */
                int64_t r0 = rows > 4 ? 2 : 0, r1 = rows > 4 ? rows - 1 : rows;
                linear_rows(y1, ldy, x, ldx, t, &W, r0, r1, NULL);
                linear_rows(y2, ldy, x, ldx, t, &W, r0, r1, panel);
                assert_memory_equal(y1, y2, sizeof(float) * (size_t)(t * ldy));
                /* each token's outputs do not depend on how many tokens came with it */
                float *y3 = calloc((size_t)ldy, sizeof(float));
                linear_rows(y3, ldy, x + (t - 1) * ldx, ldx, 1, &W, r0, r1, NULL);
                assert_memory_equal(y3, y2 + (t - 1) * ldy, sizeof(float) * (size_t)(r1 - r0));
                free(y3);
                /* linear_forward (FP8: block partials × scales): t tokens at once == one at a time */
                float *xs = malloc(sizeof(float) * (size_t)(t * cols)), *ya = malloc(sizeof(float) * (size_t)(t * rows));
                float *yb = malloc(sizeof(float) * (size_t)rows), *sc = malloc(sizeof(float) * linear_scratch_floats(t, cols));
                LinearScratch ls = linear_scratch_init(sc, t, cols);
                for (int64_t k = 0; k < t; k++) memcpy(xs + k * cols, x + k * ldx, sizeof(float) * (size_t)cols);
                linear_forward(ya, xs, t, &W, FP8_DEQUANT, &ls);
                for (int64_t k = 0; k < t; k++) {
                    linear_forward(yb, xs + k * cols, 1, &W, FP8_DEQUANT, &ls);
                    assert_memory_equal(yb, ya + k * rows, sizeof(float) * (size_t)rows);
                }
                free(xs), free(ya), free(yb), free(sc);
                cases++;
            }
            free(x), free(panel), free(y1), free(y2), free(buf), free(scales);
        }
    printf("    %d cases: blocked kernel == one-row kernel, bit for bit\n", cases);
}

/** linear.h's FP8 sum of one output, written out with scalars: per 128-column block, 16 lanes in
 *  ascending columns, the lanes' tree, times the block's scale, the blocks in order. */
static float fp8_sum_by_the_book(const Tensor *W, int64_t o, const float *x) {
    float acc = 0.0f;
    for (int64_t k0 = 0; k0 < W->cols; k0 += 128) {
        float p[16] = { 0 };
        for (int64_t i = k0; i < W->cols && i < k0 + 128; i++) p[(i - k0) % 16] += x[i] * fp8_e4m3_to_f32(W->data[o * W->cols + i]);
        for (int l = 0; l < 8; l++) p[l] += p[l + 8];
        for (int l = 0; l < 4; l++) p[l] += p[l + 4];
        for (int l = 0; l < 2; l++) p[l] += p[l + 2];
        acc += (p[0] + p[1]) * tensor_scale(W, o, k0);
    }
    return acc;
}

/**
 * The FP8 decode kernel (whole rows of eight blocks, runs of short rows, the hardware's
 * half-precision widening, the 2^-8 scaling) == the sum written out with scalars, bit for bit:
 * every one of the 256 codes (subnormals, ±0) in random rows, rows with a NaN code (their run
 * falls back to the plain kernel: NaN there, the other rows unchanged), and activations outside
 * the range where the 2^-8 scaling is exact (tiny, huge, ∞: the plain kernel again).
 */
static void fp8_decode_exact(void **state) {
    (void)state;
    const int64_t shapes[][2] = { { 40, 1024 }, { 19, 384 }, { 130, 2048 }, { 5, 128 }, { 33, 256 }, { 17, 896 } };
    const float odd_x[] = { 1e-36f, 1e36f, INFINITY }; /* the scale of all of x, or one element */
    Rng r;
    rng_seed(&r, 11);
    int cases = 0;
    for (size_t sh = 0; sh < sizeof shapes / sizeof *shapes; sh++) {
        int64_t rows = shapes[sh][0], cols = shapes[sh][1], gr = (rows + 127) / 128, gc = cols / 128;
        uint8_t *codes = malloc((size_t)(rows * cols));
        float *scales = malloc(sizeof(float) * (size_t)(gr * gc)), *x = malloc(sizeof(float) * (size_t)cols);
        float *y = malloc(sizeof(float) * (size_t)rows), *sc = malloc(sizeof(float) * linear_scratch_floats(1, cols));
        for (int64_t i = 0; i < rows * cols; i++) {
            uint8_t c = (uint8_t)rng_u32(&r);
            codes[i] = (c & 0x7f) == 0x7f ? (uint8_t)(c ^ 1) : c; /* NaN only where placed below */
        }
        for (int64_t i = 0; i < gr * gc; i++) scales[i] = 1e-3f * (1.0f + 0.5f * rng_normal(&r));
        Tensor W = { codes, DT_F8_E4M3, rows, cols, (const uint8_t *)scales };
        LinearScratch ls = linear_scratch_init(sc, 1, cols);
        for (int variant = 0; variant < 2 + (int)(sizeof odd_x / sizeof *odd_x); variant++) {
            for (int64_t i = 0; i < cols; i++) x[i] = rng_normal(&r) * (i % 7 == 0 ? 1e-3f : 1.0f);
            if (variant == 1) codes[(rows / 2) * cols + cols / 3] = 0xff; /* a NaN code in one row */
            if (variant >= 2 && isinf(odd_x[variant - 2])) x[cols / 5] = odd_x[variant - 2];
            else if (variant >= 2)
                for (int64_t i = 0; i < cols; i++) x[i] *= odd_x[variant - 2];
            linear_forward(y, x, 1, &W, FP8_DEQUANT, &ls);
            for (int64_t o = 0; o < rows; o++) {
                float want = fp8_sum_by_the_book(&W, o, x);
                if (isnan(want)) assert_true(isnan(y[o]));
                else assert_memory_equal(&want, &y[o], sizeof want);
            }
            if (variant == 1) {
                assert_true(isnan(y[rows / 2]));
                codes[(rows / 2) * cols + cols / 3] = 0x7e;
            }
            cases++;
        }
        free(codes), free(scales), free(x), free(y), free(sc);
    }
    printf("    %d cases: the FP8 decode kernel == the sum written out, bit for bit\n", cases);
}

static void linear_threads_agree(void **state) {
    (void)state;
    Rng r;
    rng_seed(&r, 9);
    const DType dts[] = { DT_BF16, DT_F8_E4M3, DT_F32 };
    for (size_t d = 0; d < 3; d++)
        for (int mode = 0; mode < 2; mode++)
            for (int64_t T = 1; T <= 6; T += 5) {
                int64_t rows = 300, cols = 520;
                uint8_t *buf;
                float *scales;
                Tensor W = random_weight(dts[d], rows, cols, &buf, &scales, &r);
                float *x = malloc(sizeof(float) * (size_t)(T * cols)), *ref = malloc(sizeof(float) * (size_t)(T * rows));
                for (int64_t i = 0; i < T * cols; i++) x[i] = rng_normal(&r);
                for (int k = 0; k < N_COUNTS; k++) {
                    threads_set(thread_counts[k]);
                    float *scratch = malloc(sizeof(float) * linear_scratch_floats(T, cols)), *y = malloc(sizeof(float) * (size_t)(T * rows));
                    LinearScratch s = linear_scratch_init(scratch, T, cols);
                    linear_forward(y, x, T, &W, mode ? FP8_W8A8 : FP8_DEQUANT, &s);
                    if (k == 0) memcpy(ref, y, sizeof(float) * (size_t)(T * rows));
                    else assert_memory_equal(ref, y, sizeof(float) * (size_t)(T * rows));
                    free(scratch), free(y);
                }
                free(x), free(ref), free(buf), free(scales);
            }
    threads_set(1);
}

/* ------------------------------------------------------------------------------------- */
/* the model                                                                               */

/** A random checkpoint of preset @p preset in @p format under the test's directory. */
static void make_model(Model *m, const char *preset, CkptFormat format, int n_mtp, const char *name) {
    Config c;
    Err err;
    if (config_preset(&c, preset, &err)) fail_msg("%s", err.msg);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", test_tmp, name);
    CkptLayout layout = { format, 0, 1, n_mtp };
    RandomInit ri = { 3, 0.1f };
    if (ckpt_write(dir, &c, &layout, ckpt_random_source, &ri, NULL, &err)) fail_msg("%s", err.msg);
    if (model_load(m, dir, NULL, &err)) fail_msg("%s", err.msg);
}

/** Logits of a 21-token prefill (every position) and 4 decode steps, plus the prefill's hiddens. */
static float *forward_run(const Model *m, AttnMode attn, Fp8Mode fp8, size_t *n_out) {
    const Config *c = &m->config;
    int64_t V = c->vocab_size, D = c->hidden_size, P = 21, S = 4;
    size_t n = (size_t)((P + S) * V + P * D);
    float *out = malloc(sizeof(float) * n);
    int ids[25];
    for (int i = 0; i < 25; i++) ids[i] = (i * 37 + 11) % (int)V;
    RunState s;
    KVCache kv;
    Err err;
    if (runstate_init(&s, m, 32, 64, attn, fp8, &err) || kvcache_init(&kv, c, attn, c->num_hidden_layers, 64, &err))
        fail_msg("%s", err.msg);
    if (model_forward(m, &s, &kv, ids, P, out, P, out + (P + S) * V, NULL, &err)) fail_msg("%s", err.msg);
    for (int64_t k = 0; k < S; k++)
        if (model_forward(m, &s, &kv, ids + P + k, 1, out + (P + k) * V, 1, NULL, NULL, &err)) fail_msg("%s", err.msg);
    kvcache_free(&kv);
    runstate_free(&s);
    *n_out = n;
    return out;
}

static void forward_threads_agree(void **state) {
    (void)state;
    struct { const char *preset; CkptFormat format; const char *name; } models[] = {
        { "tiny", CKPT_BF16, "tiny-bf16" }, { "small", CKPT_FP8, "small-fp8" } };
    for (int k = 0; k < 2; k++) {
        Model m;
        make_model(&m, models[k].preset, models[k].format, 0, models[k].name);
        for (int attn = 0; attn < 2; attn++)
            for (int fp8 = 0; fp8 < 1 + (models[k].format == CKPT_FP8); fp8++) {
                AttnMode am = attn ? ATTN_NAIVE : ATTN_ABSORB;
                float *ref = NULL;
                size_t n = 0;
                for (int t = 0; t < N_COUNTS; t++) {
                    threads_set(thread_counts[t]);
                    size_t nn;
                    float *out = forward_run(&m, am, fp8 ? FP8_W8A8 : FP8_DEQUANT, &nn);
                    if (!ref) ref = out, n = nn;
                    else {
                        assert_int_equal(nn, n);
                        assert_memory_equal(ref, out, n * sizeof(float));
                        free(out);
                    }
                }
                printf("    %-10s %-6s %-7s prefill 21 + decode 4: -t 1 == -t 2 == -t 3 (%zu floats)\n", models[k].name,
                       attn ? "naive" : "absorb", fp8 ? "w8a8" : "dequant", n);
                free(ref);
            }
        model_free(&m);
    }
    threads_set(1);
}

/** 40 tokens after an 8-token prompt. */
static void generate_run(const Model *m, float temp, int draft, int *tokens) {
    Sampler smp;
    Generator g;
    Err err;
    int prompt[8] = { 0, 5, 9, 13, 2, 7, 1, 3 };
    if (sampler_init(&smp, temp, 40, 0.95f, 77, &err) || gen_init(&g, m, &smp, 64, draft, 16, ATTN_ABSORB, FP8_DEQUANT, &err) ||
        gen_feed(&g, prompt, 8, &err))
        fail_msg("%s", err.msg);
    int produced = 0, out[8], k;
    while (produced < 40) {
        if (gen_next(&g, out, &k, &err)) fail_msg("%s", err.msg);
        for (int i = 0; i < k && produced < 40; i++) tokens[produced++] = out[i];
    }
    gen_free(&g);
}

static void generate_threads_agree(void **state) {
    (void)state;
    Model m;
    make_model(&m, "tiny", CKPT_BF16, 1, "tiny-mtp");
    for (int mode = 0; mode < 2; mode++) {
        int ref[40], got[40];
        for (int t = 0; t < N_COUNTS; t++) {
            threads_set(thread_counts[t]);
            generate_run(&m, mode ? 0.0f : 0.8f, mode ? 1 : 0, t ? got : ref);
            if (t) assert_memory_equal(ref, got, sizeof ref);
        }
        printf("    %s: 40 tokens, -t 1 == -t 2 == -t 3\n", mode ? "greedy with MTP speculation" : "sampled T 0.8, top-k 40, top-p 0.95");
    }
    model_free(&m);
    threads_set(1);
}

/* ------------------------------------------------------------------------------------- */
/* training                                                                                */

/** Two steps of training on the tiny preset; returns the parameters after them and the losses. */
static float *train_run(size_t *n, double losses[2]) {
    Config c;
    Err err;
    if (config_preset(&c, "tiny", &err)) fail_msg("%s", err.msg);
    TrainOptions o = train_options_default(c.hidden_size);
    o.batch = 2, o.seq_len = 32, o.n_mtp = 1, o.steps = 2, o.balance_alpha = 1e-3;
    Trainer tr;
    if (trainer_init(&tr, &c, &o, &err)) fail_msg("%s", err.msg);
    ParamInit pi = { 1, (float)o.init_std };
    if (params_fill(&tr.ps, params_init_source, &pi, &err)) fail_msg("%s", err.msg);
    int seqs[2 * 33];
    for (int i = 0; i < 2 * 33; i++) seqs[i] = (i * 131 + 7) % c.vocab_size;
    for (int s = 0; s < 2; s++) {
        TrainLosses L;
        StepStats st;
        trainer_grad(&tr, seqs, 2, &L);
        trainer_update(&tr, &st);
        losses[s] = L.total;
    }
    *n = tr.ps.n;
    float *p = malloc(sizeof(float) * tr.ps.n);
    memcpy(p, tr.ps.data, sizeof(float) * tr.ps.n);
    trainer_free(&tr);
    return p;
}

static void train_threads_agree(void **state) {
    (void)state;
    float *ref = NULL;
    size_t n = 0;
    double ref_losses[2];
    for (int t = 0; t < N_COUNTS; t++) {
        threads_set(thread_counts[t]);
        double losses[2];
        size_t nn;
        float *p = train_run(&nn, losses);
        if (!ref) {
            ref = p, n = nn;
            memcpy(ref_losses, losses, sizeof losses);
            continue;
        }
        assert_int_equal(nn, n);
        assert_memory_equal(ref_losses, losses, sizeof losses);
        assert_memory_equal(ref, p, n * sizeof(float));
        free(p);
    }
    printf("    2 training steps, %zu parameters, losses %.6f %.6f: -t 1 == -t 2 == -t 3\n", n, ref_losses[0], ref_losses[1]);
    free(ref);
    threads_set(1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(kernels_agree),         cmocka_unit_test(fp8_decode_exact),
        cmocka_unit_test(linear_threads_agree),
        cmocka_unit_test(forward_threads_agree), cmocka_unit_test(generate_threads_agree),
        cmocka_unit_test(train_threads_agree),
    };
    return cmocka_run_group_tests(tests, test_tmp_setup, test_tmp_teardown);
}
