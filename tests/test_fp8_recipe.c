/**
 * @file test_fp8_recipe.c
 * @brief The FP8 training recipe (ref/train/fp8_recipe.c; paper §3.3, docs/training.md):
 *  - the E5M2 and E5M6 roundings against every code of the formats, derived from their definitions;
 *  - Fprop, Dgrad and Wgrad through the trainer's hook equal, bit for bit, a direct computation of
 *    the rule written here independently (table search for the formats, floor() for the
 *    accumulator's cut), for the recipe, its ablations and each of the paper's special cases;
 *  - with promotion every product and a 23-bit accumulator, every output of all three GEMMs lies
 *    within the bound that the operands' quantization alone allows (and 14-bit accumulation over
 *    K = 4096 without promotion does not: the check can fail);
 *  - whole-model gradients under --precision fp8 agree with FP32 to the tolerance the E4M3
 *    quantization implies (stated at fp8_gradients_match_fp32);
 *  - the activation cache holds codes at 1–2 bytes per element.
 * A short FP8 run's loss falling, its checkpoints loading with `dsv3 logits` and resuming bit for
 * bit: tests/test_train.c.
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

#include "base/rng.h"
#include "model/fp8.h"
#include "train/fp8_recipe.h"
#include "train/train.h"
#include "util_gradcheck.h"

/* ---------------------------------------------------------------------------------------- */
/* an independent model of the formats                                                        */

/** The non-negative finite values of a format with @p ebits / @p mbits and an IEEE-style top exponent, ascending. */
typedef struct {
    float *v;
    int n;
} Magnitudes;

static Magnitudes magnitudes(int ebits, int mbits) {
    int bias = (1 << (ebits - 1)) - 1, n = ((1 << ebits) - 1) << mbits; /* exponent field 2^ebits − 1: inf/NaN */
    Magnitudes m = { malloc(sizeof(float) * (size_t)n), n };
    for (int e = 0; e < (1 << ebits) - 1; e++)
        for (int f = 0; f < (1 << mbits); f++) {
            double frac = (double)f / (double)(1 << mbits);
            m.v[(e << mbits) | f] = (float)(e == 0 ? ldexp(frac, 1 - bias) : ldexp(1.0 + frac, e - bias));
        }
    return m;
}

/** Nearest value by binary search, ties to the even code, saturating at the largest. */
static float nearest(const Magnitudes *m, float x) {
    float a = fabsf(x);
    if (a >= m->v[m->n - 1]) return copysignf(m->v[m->n - 1], x);
    int lo = 0, hi = m->n - 1; /* v[lo] <= a < v[hi] */
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (m->v[mid] <= a) lo = mid;
        else hi = mid;
    }
    double dl = (double)a - m->v[lo], dh = (double)m->v[hi] - a;
    int pick = dl < dh ? lo : dh < dl ? hi : (lo % 2 == 0 ? lo : hi);
    return copysignf(m->v[pick], x);
}

static Magnitudes e5m2, e5m6;

static int same_float(float a, float b) { return memcmp(&a, &b, sizeof a) == 0 || (isnan(a) && isnan(b)); }

/**
 * The operands' bit-level E4M3 rounding equals ref/model/fp8.c's encoder + table: on every exponent
 * with every pattern of the kept bits, the round bit and the sticky bits (exactly half, just below,
 * just above), every point of the subnormal grid and its neighbours, both signs, and a million random
 * bit patterns.
 */
static void e4m3_fast_equals_fp8c(void **state) {
    (void)state;
    int checked = 0;
    static const uint32_t low[] = { 0, 1, 2, 0x3ffff, 0x40000, 0x40001, 0x7fffe, 0x7ffff };
    for (uint32_t e = 0; e < 256; e++)
        for (uint32_t top = 0; top < 32; top++)           /* 3 kept bits, the round bit, the first sticky bit */
            for (size_t l = 0; l < sizeof low / sizeof low[0]; l++)
                for (uint32_t sign = 0; sign < 2; sign++) {
                    uint32_t u = sign << 31 | e << 23 | top << 18 | (low[l] & 0x3ffff);
                    float x;
                    memcpy(&x, &u, sizeof x);
                    assert_true(same_float(fp8_round_e4m3_fast(x), fp8_round(FMT_E4M3, x)));
                    checked++;
                }
    for (int k = 0; k <= 64; k++) /* k·2^-10: the subnormal grid's points and midpoints, and their neighbours */
        for (int d = -1; d <= 1; d++) {
            float x = ldexpf((float)k, -10);
            x = d < 0 ? nextafterf(x, 0) : d > 0 ? nextafterf(x, 1) : x;
            assert_true(same_float(fp8_round_e4m3_fast(x), fp8_round(FMT_E4M3, x)));
            assert_true(same_float(fp8_round_e4m3_fast(-x), fp8_round(FMT_E4M3, -x)));
            checked += 2;
        }
    Rng r;
    rng_seed(&r, 99);
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = rng_u32(&r);
        float x;
        memcpy(&x, &u, sizeof x);
        assert_true(same_float(fp8_round_e4m3_fast(x), fp8_round(FMT_E4M3, x)));
    }
    printf("    %d structured values and 1e6 random bit patterns: equal\n", checked);
}

/** Every E5M2 and E5M6 value rounds to itself, every midpoint to its even neighbour, just off it to the nearer. */
static void formats_by_code(void **state) {
    (void)state;
    const Magnitudes *tabs[2] = { &e5m2, &e5m6 };
    Fp8Fmt fmts[2] = { FMT_E5M2, FMT_E5M6 };
    for (int t = 0; t < 2; t++) {
        const Magnitudes *m = tabs[t];
        for (int i = 0; i < m->n; i++) {
            assert_true(fp8_round(fmts[t], m->v[i]) == m->v[i]);
            assert_true(fp8_round(fmts[t], -m->v[i]) == -m->v[i]);
            if (i + 1 == m->n) continue;
            float mid = (float)(0.5 * ((double)m->v[i] + m->v[i + 1]));
            assert_true(fp8_round(fmts[t], mid) == m->v[i % 2 == 0 ? i : i + 1]);
            assert_true(fp8_round(fmts[t], nextafterf(mid, 0.0f)) == m->v[i]);
            assert_true(fp8_round(fmts[t], nextafterf(mid, INFINITY)) == m->v[i + 1]);
        }
    }
    assert_true(fp8_round(FMT_E5M2, 1e9f) == 57344.0f && fp8_round(FMT_E5M6, -1e9f) == -65024.0f); /* saturate */
    assert_true(fp8_round(FMT_E5M6, 0x1p-20f) == 0x1p-20f && fp8_round(FMT_E5M6, 0x1p-22f) == 0.0f);
    assert_true(isnan(fp8_round(FMT_E5M2, NAN)));
    /* Scales: amax / max, and the power of two at or above it. */
    assert_true(fp8_tile_scale(FMT_E4M3, 448.0f, 0) == 1.0f && fp8_tile_scale(FMT_E4M3, 449.0f, 1) == 2.0f);
    assert_true(fp8_tile_scale(FMT_E4M3, 224.0f, 1) == 0.5f && fp8_tile_scale(FMT_E4M3, 300.0f, 1) == 1.0f);
    /* The accumulator's cut: toward zero, keeping acc_bits mantissa bits. */
    assert_true(fp8_acc_round(1.0f + 0x1p-10f + 0x1p-12f, 10) == 1.0f + 0x1p-10f);
    assert_true(fp8_acc_round(-(1.0f + 0x1p-3f + 0x1p-4f), 3) == -(1.0f + 0x1p-3f));
    assert_true(fp8_acc_round(1.0f + 0x1p-23f, 23) == 1.0f + 0x1p-23f);
}

/* ---------------------------------------------------------------------------------------- */
/* the rule, computed directly                                                                */

/** q(x) of a format, the direct way: E4M3 with ref/model/fp8.c's encoder, the others by table search. */
static float direct_round(Fp8Fmt f, float x) {
    if (f == FMT_E4M3) return fp8_e4m3_to_f32(fp8_e4m3_from_f32(x));
    return nearest(f == FMT_E5M2 ? &e5m2 : &e5m6, x);
}

static float fmt_max(Fp8Fmt f) { return f == FMT_E4M3 ? 448.0f : f == FMT_E5M2 ? 57344.0f : 65024.0f; }

/** out = q·s per tile of tr × tc; s = max(amax, 1e-30)/max, or the power of two at or above it. */
static void direct_quantize(float *out, const float *x, int64_t R, int64_t C, int64_t tr, int64_t tc, Fp8Fmt f, int pow2) {
    for (int64_t r0 = 0; r0 < R; r0 += tr)
        for (int64_t c0 = 0; c0 < C; c0 += tc) {
            float amax = 0.0f;
            for (int64_t i = r0; i < R && i < r0 + tr; i++)
                for (int64_t j = c0; j < C && j < c0 + tc; j++) amax = fmaxf(amax, fabsf(x[i * C + j]));
            float s = fmaxf(amax, 1e-30f) / fmt_max(f);
            if (pow2) {
                float p = 1.0f;
                while (p < s) p *= 2.0f;
                while (p / 2.0f >= s) p /= 2.0f;
                s = p;
            }
            for (int64_t i = r0; i < R && i < r0 + tr; i++)
                for (int64_t j = c0; j < C && j < c0 + tc; j++) out[i * C + j] = direct_round(f, x[i * C + j] / s) * s;
        }
}

/** v with all but @p bits mantissa bits cut off, toward zero (floor of the magnitude on the bit grid). */
static float direct_cut(float v, int bits) {
    if (v == 0.0f || bits >= 23) return v;
    int e;
    (void)frexpf(fabsf(v), &e);
    float quantum = ldexpf(1.0f, e - 1 - bits);
    return copysignf(floorf(fabsf(v) / quantum) * quantum, v);
}

/** C[i][j] (+)= Σ over chunks of P products of the cut partial sums, A [M][K], B [N][K] (not transposed). */
static void direct_gemm(float *C, const float *A, const float *B, int64_t M, int64_t K, int64_t N, int bits, int P, int add) {
    int64_t chunk = P > 0 ? P : K;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int64_t k0 = 0; k0 < K; k0 += chunk) {
                float part = 0.0f;
                for (int64_t k = k0; k < K && k < k0 + chunk; k++) {
                    float p = A[i * K + k] * B[j * K + k];
                    part = direct_cut(part + p, bits);
                }
                acc += part;
            }
            C[i * N + j] = add ? C[i * N + j] + acc : acc;
        }
}

static float *transposed(const float *x, int64_t R, int64_t C) {
    float *t = malloc(sizeof(float) * (size_t)(R * C));
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) t[j * R + i] = x[i * C + j];
    return t;
}

static float *randn(int64_t n, float std, Rng *r) {
    float *x = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) x[i] = std * rng_normal(r);
    return x;
}

/** A recipe knowing only W (with @p flags), a scratch whose hook it is, and a fresh pass + sequence. */
static Fp8Recipe *one_tensor_recipe(const Fp8Options *o, const Tensor *W, int64_t T, int flags, LinearScratch *s) {
    Err err;
    Fp8Recipe *rec = fp8_recipe_new(o, T, 1, &err);
    assert_non_null(rec);
    assert_int_equal(fp8_recipe_add_tensor(rec, W, flags, 0, &err), 0);
    memset(s, 0, sizeof *s);
    s->hook = fp8_recipe_hook(rec);
    fp8_recipe_begin_pass(rec);
    fp8_recipe_begin_sequence(rec);
    return rec;
}

enum { DT = 129, DIN = 136, DOUT = 130 }; /* one full 128-tile and a partial one along every axis */

/** One configuration of the direct-computation check. */
typedef struct {
    const char *name;
    int acc_bits, promote, per_tensor, grad_format, flags;
} Case;

/** linear_forward / linear_backward under FP8_TRAIN == the rule computed directly, for one case. */
static void check_case(const Case *c) {
    Rng r;
    rng_seed(&r, 31);
    float *x = randn(DT * DIN, 1.0f, &r), *w = randn(DOUT * DIN, 0.05f, &r), *dy = randn(DT * DOUT, 1e-3f, &r);
    for (int64_t t = 0; t < DT; t += 7) x[t * DIN + (t * 13) % DIN] *= 40.0f; /* outliers: what fine tiles are for */
    Tensor W = tensor_f32(w, DOUT, DIN);
    Fp8Options o = { c->acc_bits, c->promote, c->per_tensor, c->grad_format };
    LinearScratch s;
    Fp8Recipe *rec = one_tensor_recipe(&o, &W, DT, c->flags, &s);
    float *y = calloc(DT * DOUT, 4), *dx = calloc(DT * DIN, 4), *dw = calloc(DOUT * DIN, 4);
    linear_forward(y, x, DT, &W, FP8_TRAIN, &s);
    linear_backward(dx, dw, dy, x, DT, &W, FP8_TRAIN, &s);

    /* The rule, directly. Tiles: 1×128 along K for Fprop/Dgrad operands, 128×1 along T for Wgrad. */
    int pt = c->per_tensor;
    int attn = (c->flags & FP8_ROLE_ATTN_OUT) != 0, xpow2 = (c->flags & (FP8_ROLE_ATTN_OUT | FP8_ROLE_X_POW2)) != 0;
    int dypow2 = (c->flags & FP8_ROLE_DY_POW2) != 0, recomputed = (c->flags & FP8_ROLE_X_RECOMPUTED) != 0;
    Fp8Fmt gf = (Fp8Fmt)c->grad_format;
    float *wq = malloc(sizeof(float) * DOUT * DIN), *xq = malloc(sizeof(float) * DT * DIN), *xc = malloc(sizeof(float) * DT * DIN);
    float *dyq = malloc(sizeof(float) * DT * DOUT), *dyw = malloc(sizeof(float) * DT * DOUT);
    float *ey = malloc(sizeof(float) * DT * DOUT), *edx = calloc(DT * DIN, 4), *edw = calloc(DOUT * DIN, 4);
    direct_quantize(wq, w, DOUT, DIN, pt ? DOUT : 128, pt ? DIN : 128, FMT_E4M3, 0);
    direct_quantize(xq, x, DT, DIN, pt ? DT : 1, pt ? DIN : 128, FMT_E4M3, attn || recomputed ? 0 : xpow2);
    direct_gemm(ey, xq, wq, DT, DIN, DOUT, c->acc_bits, c->promote, 0); /* Fprop */
    if (c->flags & FP8_ROLE_Y_FP8) direct_quantize(ey, ey, DT, DOUT, pt ? DT : 1, pt ? DOUT : 128, FMT_E4M3, 0);
    direct_quantize(dyq, dy, DT, DOUT, pt ? DT : 1, pt ? DOUT : 128, gf, dypow2);
    float *wqt = transposed(wq, DOUT, DIN);
    direct_gemm(edx, dyq, wqt, DT, DOUT, DIN, c->acc_bits, c->promote, 1); /* Dgrad */
    /* Wgrad's x: the forward's cache (E4M3 1×128, or E5M6 with power-of-two scales), or x itself. */
    if (attn) direct_quantize(xc, x, DT, DIN, pt ? DT : 1, pt ? DIN : 128, FMT_E5M6, 1);
    else if (recomputed) memcpy(xc, x, sizeof(float) * DT * DIN);
    else memcpy(xc, xq, sizeof(float) * DT * DIN);
    direct_quantize(xc, xc, DT, DIN, pt ? DT : 128, pt ? DIN : 1, FMT_E4M3, xpow2);
    direct_quantize(dyw, dypow2 ? dyq : dy, DT, DOUT, pt ? DT : 128, pt ? DOUT : 1, gf, dypow2);
    float *dywt = transposed(dyw, DT, DOUT), *xct = transposed(xc, DT, DIN);
    direct_gemm(edw, dywt, xct, DOUT, DT, DIN, c->acc_bits, c->promote, 1); /* Wgrad */

    int same_y = !memcmp(y, ey, sizeof(float) * DT * DOUT), same_dx = !memcmp(dx, edx, sizeof(float) * DT * DIN);
    int same_dw = !memcmp(dw, edw, sizeof(float) * DOUT * DIN);
    printf("    %-44s Fprop %s, Dgrad %s, Wgrad %s\n", c->name, same_y ? "equal" : "DIFFERENT", same_dx ? "equal" : "DIFFERENT",
           same_dw ? "equal" : "DIFFERENT");
    assert_true(same_y && same_dx && same_dw);
    free(x), free(w), free(dy), free(y), free(dx), free(dw), free(wq), free(xq), free(xc), free(dyq), free(dyw), free(ey);
    free(edx), free(edw), free(wqt), free(dywt), free(xct);
    fp8_recipe_free(rec);
}

/** The hook computes exactly the rule, in the recipe, its ablations and every special case. */
static void gemms_equal_direct_rule(void **state) {
    (void)state;
    const Case cases[] = {
        { "recipe (14 bits, promote 128)", 14, 128, 0, FMT_E4M3, 0 },
        { "no promotion (ablation b)", 14, 0, 0, FMT_E4M3, 0 },
        { "promote every 3 products, 10 bits", 10, 3, 0, FMT_E4M3, 0 },
        { "23 bits, promote every product", 23, 1, 0, FMT_E4M3, 0 },
        { "per-tensor scales (ablation a)", 14, 128, 1, FMT_E4M3, 0 },
        { "e5m2 gradients (ablation c)", 14, 128, 0, FMT_E5M2, 0 },
        { "o_proj: E5M6 cache, power-of-two scales", 14, 128, 0, FMT_E4M3, FP8_ROLE_ATTN_OUT },
        { "routed up-proj: pow2 input, FP8 SwiGLU input", 14, 128, 0, FMT_E4M3, FP8_ROLE_X_POW2 | FP8_ROLE_Y_FP8 },
        { "routed down-proj: recomputed x, pow2 dy", 14, 128, 0, FMT_E4M3, FP8_ROLE_X_RECOMPUTED | FP8_ROLE_DY_POW2 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&cases[i]);
}

/* ---------------------------------------------------------------------------------------- */
/* promotion: quantization is all that is left                                                */

static const double U = 0x1p-4; /* E4M3's unit roundoff: half of 2^-3, relative to the leading bit */

/**
 * Largest error a quantized operand element can carry: the relative part (u per quantization, 2u + u²
 * for Wgrad's x, quantized twice) and, below the normal range, half the subnormal spacing (2^-10 of
 * the tile's scale, at most 2·amax/448) for each of the quantizations. rel = 0: exact operands.
 */
static double elem_err(double v, double rel, double amax) {
    return rel * fabs(v) + (rel > 0 ? 0x1p-10 * 2.0 * amax / 448.0 * 2.0 : 0.0);
}

static double amax_of(const float *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

/**
 * Σ_k a_k·b_k against the product of the unquantized operands (A [M][K], B [N][K]): the bound is
 * Σ_k (e_a|b| + |a|e_b + e_a e_b) + (K+3)·2^-24·Σ_k (|a|+e_a)(|b|+e_b), the second term the FP32
 * roundings (scaling, product, sum). Returns the largest error / bound over the outputs.
 */
static double worst_ratio(const float *got, const float *A, const float *B, int64_t M, int64_t K, int64_t N, double rel_a,
                          double rel_b) {
    double amax_a = amax_of(A, M * K), amax_b = amax_of(B, N * K), worst = 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double exact = 0, bound = 0, mag = 0;
            for (int64_t k = 0; k < K; k++) {
                double a = A[i * K + k], b = B[j * K + k], ea = elem_err(a, rel_a, amax_a), eb = elem_err(b, rel_b, amax_b);
                exact += a * b;
                bound += ea * fabs(b) + fabs(a) * eb + ea * eb;
                mag += (fabs(a) + ea) * (fabs(b) + eb);
            }
            bound += (double)(K + 3) * 0x1p-24 * mag;
            worst = fmax(worst, fabs(got[i * N + j] - exact) / bound);
        }
    return worst;
}

/** Promoting every product into FP32 leaves only the quantization error, in all three GEMMs. */
static void promotion_bounds_error_by_quantization(void **state) {
    (void)state;
    enum { T = 256, IN = 1024, OUT = 48 };
    Rng r;
    rng_seed(&r, 41);
    float *x = randn(T * IN, 1.0f, &r), *w = randn(OUT * IN, 0.03f, &r), *dy = randn(T * OUT, 1e-4f, &r);
    Tensor W = tensor_f32(w, OUT, IN);
    Fp8Options o = { 23, 1, 0, FMT_E4M3 };
    LinearScratch s;
    Fp8Recipe *rec = one_tensor_recipe(&o, &W, T, 0, &s);
    float *y = calloc(T * OUT, 4), *dx = calloc(T * IN, 4), *dw = calloc(OUT * IN, 4);
    linear_forward(y, x, T, &W, FP8_TRAIN, &s);
    linear_backward(dx, dw, dy, x, T, &W, FP8_TRAIN, &s);
    float *wt = transposed(w, OUT, IN), *dyt = transposed(dy, T, OUT), *xt = transposed(x, T, IN);
    double fprop = worst_ratio(y, x, w, T, IN, OUT, U, U);
    double dgrad = worst_ratio(dx, dy, wt, T, OUT, IN, U, U);
    double wgrad = worst_ratio(dw, dyt, xt, OUT, T, IN, U, 2 * U + U * U);
    printf("    23-bit accumulator, promotion every product: error / quantization bound  Fprop %.3f  Dgrad %.3f  Wgrad %.3f\n",
           fprop, dgrad, wgrad);
    assert_true(fprop <= 1.0 && dgrad <= 1.0 && wgrad <= 1.0);
    fp8_recipe_free(rec);

    /* The check can fail: over operands that are E4M3 values already (no quantization error at all),
     * 14 bits over K = 4096 positive products without promotion err far beyond FP32 rounding (§3.3.2). */
    enum { K = 4096, M = 4 };
    float *a = malloc(sizeof(float) * M * K), *b = malloc(sizeof(float) * K * M), *c = malloc(sizeof(float) * M * M);
    for (int64_t i = 0; i < M * K; i++) a[i] = fabsf(rng_normal(&r)), b[i] = fabsf(rng_normal(&r));
    fp8_quantize_tiles(a, NULL, a, M, K, 1, 128, FMT_E4M3, 0);
    fp8_quantize_tiles(b, NULL, b, M, K, 1, 128, FMT_E4M3, 0);
    float *bt = transposed(b, M, K);
    fp8_emulated_gemm(c, a, bt, M, K, M, 14, 0, 0);
    double lim = worst_ratio(c, a, b, M, K, M, 0, 0); /* E4M3 values already: nothing left to quantize */
    printf("    14-bit accumulator over K = 4096 without promotion, exact FP8 operands: error / bound %.0f\n", lim);
    assert_true(lim > 1.0);
    free(x), free(w), free(dy), free(y), free(dx), free(dw), free(wt), free(dyt), free(xt), free(a), free(b), free(c), free(bt);
}

/* ---------------------------------------------------------------------------------------- */
/* the trainer under --precision fp8                                                          */

static Config cfg;

/** A trainer on the test config; @p init_std < 0: the default init (0.006·√(7168/hidden)). */
static void tiny_trainer(Trainer *tr, int precision, int64_t T, int64_t B, float init_std) {
    TrainOptions o = train_options_default(cfg.hidden_size);
    o.seq_len = T, o.batch = B, o.n_mtp = 1, o.steps = 60, o.lr.warmup = 5, o.precision = precision;
    o.bf16_moments = precision == TRAIN_FP8;
    Err err;
    if (trainer_init(tr, &cfg, &o, &err)) fail_msg("%s", err.msg);
    ParamInit pi = { 7, init_std < 0 ? (float)o.init_std : init_std };
    assert_int_equal(params_fill(&tr->ps, params_init_source, &pi, &err), 0);
}

static void random_ids(int *ids, int64_t n, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) ids[i] = (int)(rng_u32(&r) % (uint32_t)cfg.vocab_size);
}

/** Relative L2 error of the FP8 gradients @p h against FP32's @p g: per tensor (worst), whole, and their cosine. */
typedef struct {
    double whole, worst, cosine;
    const char *worst_name;
} GradDiff;

static GradDiff grad_diff(const Trainer *a, const Trainer *b) {
    GradDiff d = { 0, 0, 0, "" };
    double num = 0, den = 0, dot = 0, nb = 0;
    for (int i = 0; i < a->ps.n_entries; i++) {
        const ParamEntry *e = &a->ps.entries[i];
        if (e->role != PARAM_DECAY && e->role != PARAM_NO_DECAY) continue;
        const float *g = a->ps.grad + e->offset, *h = b->ps.grad + e->offset;
        double d2 = 0, g2 = 0;
        for (size_t j = 0; j < e->n; j++) {
            double x = (double)h[j] - g[j];
            d2 += x * x, g2 += (double)g[j] * g[j], dot += (double)g[j] * h[j], nb += (double)h[j] * h[j];
        }
        num += d2, den += g2;
        double rel = g2 > 0 ? sqrt(d2 / g2) : 0;
        if (rel > d.worst) d.worst = rel, d.worst_name = e->slot.name;
    }
    d.whole = sqrt(num / den), d.cosine = dot / sqrt(den * nb);
    return d;
}

/**
 * Gradients of one batch, FP8 path vs FP32, same weights (the default init). The tolerance the
 * quantization implies: an E4M3 value errs by at most u = 2^-4 relative, uniformly over the last
 * place, i.e. about u/√3 rms; a GEMM with both operands quantized errs by about √2·u/√3 ≈ 0.051
 * relative (its K terms' errors are independent), and independent errors of the GEMMs a gradient
 * depends on add in quadrature. A gradient of this model depends on at most ~24 quantized GEMMs
 * (the forward's 21 linears of 2 blocks + the MTP block, and the Dgrads back to it), so its
 * relative L2 error should stay below √24 · 0.051 ≈ 0.25: that is the tolerance, for every tensor;
 * the whole gradient's cosine with FP32's must exceed 0.97. (A transposed or mis-tiled operand errs
 * by O(1).)
 * Routing is made continuous (every token selects all 4 experts), so no top-k flip between the two
 * forwards adds a discontinuity that no rounding tolerance describes.
 */
static void fp8_gradients_match_fp32(void **state) {
    (void)state;
    Config saved = cfg;
    char *sets[] = { "n_routed_experts=4", "num_experts_per_tok=4", "n_group=1", "topk_group=1" };
    Err err;
    assert_int_equal(config_apply_sets(&cfg, sets, 4, &err), 0);
    const double tol = sqrt(24.0) * sqrt(2.0) * U / sqrt(3.0);
    Trainer a, b;
    const int64_t T = 24, B = 2;
    tiny_trainer(&a, TRAIN_FP32, T, B, -1);
    tiny_trainer(&b, TRAIN_FP8, T, B, -1);
    int ids[2 * 25];
    random_ids(ids, 2 * (T + 1), 5);
    TrainLosses la, lb;
    trainer_grad(&a, ids, B, &la);
    trainer_grad(&b, ids, B, &lb);
    GradDiff d = grad_diff(&a, &b);
    printf("    loss fp32 %.6f, fp8 %.6f; gradient vs fp32: whole rel L2 %.4f, cosine %.5f, worst tensor %.4f (%s), "
           "tolerance %.3f\n",
           la.total, lb.total, d.whole, d.cosine, d.worst, d.worst_name, tol);
    assert_true(d.worst < tol && d.cosine > 0.97);
    assert_true(fabs(lb.total - la.total) < 0.01 * la.total);
    trainer_free(&a);
    trainer_free(&b);
    cfg = saved;
}

/** The cache holds 1-byte codes (2 for E5M6) plus a scale per 128; the SwiGLU output takes none. */
static void cache_bytes(void **state) {
    (void)state;
    Trainer tr;
    const int64_t T = 40;
    tiny_trainer(&tr, TRAIN_FP8, T, 1, -1);
    int ids[41];
    random_ids(ids, 41, 3);
    TrainLosses L;
    trainer_eval(&tr, ids, 1, &L);
    const Config *c = &tr.ps.config;
    int64_t D = c->hidden_size, H = c->num_attention_heads, I = c->intermediate_size;
    /* Layer 0 is dense: x_attn, c_q_norm, c_kv in E4M3 (one 128-tile per row here), o in E5M6, x_ffn, h_act in E4M3. */
    size_t e4 = (size_t)(T * (D + c->q_lora_rank + c->kv_lora_rank + D + I)), e5 = (size_t)(T * H * c->v_head_dim);
    size_t want = e4 + 4 * (size_t)T * 5 + 2 * e5 + 4 * (size_t)T;
    Fp8CacheBytes b0 = fp8_recipe_cache_bytes(tr.fp8, 0), b1 = fp8_recipe_cache_bytes(tr.fp8, 1);
    printf("    layer 0 (dense): %zu bytes cached (FP32: %zu); layer 1 (MoE): %zu (FP32: %zu)\n", b0.fp8, b0.fp32, b1.fp8, b1.fp32);
    assert_int_equal(b0.fp8, want);
    assert_int_equal(b0.fp32, 4 * (e4 + e5));
    assert_true(b1.fp8 > 0 && 3 * b1.fp8 < b1.fp32);
    trainer_free(&tr);
}

static int setup(void **state) {
    (void)state;
    e5m2 = magnitudes(5, 2);
    e5m6 = magnitudes(5, 6);
    Err err;
    const char *json = GRADCHECK_CONFIG_JSON;
    if (config_parse(&cfg, json, strlen(json), "fp8 recipe test", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    free(e5m2.v);
    free(e5m6.v);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(formats_by_code),
        cmocka_unit_test(e4m3_fast_equals_fp8c),
        cmocka_unit_test(gemms_equal_direct_rule),
        cmocka_unit_test(promotion_bounds_error_by_quantization),
        cmocka_unit_test(fp8_gradients_match_fp32),
        cmocka_unit_test(cache_bytes),
    };
    return cmocka_run_group_tests_name("fp8_recipe", tests, setup, teardown);
}
