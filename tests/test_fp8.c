/**
 * @file test_fp8.c
 * @brief FP8 numerics (docs/model.md §8): every e4m3 code by hand-derived formula, the encoder's
 *        rounding and saturation, block dequantization at a partial 128-row edge (576 rows,
 *        like kv_a_proj_with_mqa), the golden W8A8 GEMM case (w8a8_gemm.safetensors), and the
 *        computed e4m3/F16 decoders of the kernels against the table and f16_to_f32.
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

#include "model/fp8.h"
#include "model/linear.h"
#include "base/safetensors.h"
#include "model/tensor.h"
#include "util_compare.h"

/** All 256 codes: S.EEEE.MMM, bias 7; E = 0 subnormal 2^-6·M/8; 0x7F/0xFF NaN (docs/model.md §8.1). */
static void all_256_codes(void **state) {
    (void)state;
    for (int c = 0; c < 256; c++) {
        int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
        float v = fp8_e4m3_to_f32((uint8_t)c);
        if (e == 15 && m == 7) {
            assert_true(isnan(v));
            continue;
        }
        double expect = e == 0 ? ldexp(m / 8.0, -6) : ldexp(1.0 + m / 8.0, e - 7);
        if (s) expect = -expect;
        assert_true((double)v == expect);
        assert_int_equal(signbit(v) != 0, s);
    }
    /* Hand-checked landmarks. */
    assert_true(fp8_e4m3_to_f32(0x7E) == 448.0f);        /* max finite, S.1111.110 */
    assert_true(fp8_e4m3_to_f32(0x01) == 0.001953125f);  /* min subnormal 2^-9 */
    assert_true(fp8_e4m3_to_f32(0x08) == 0.015625f);     /* min normal 2^-6 */
    assert_true(fp8_e4m3_to_f32(0x38) == 1.0f);          /* 0.0111.000 */
    assert_true(fp8_e4m3_to_f32(0xC0) == -2.0f);
    assert_true(fp8_e4m3_to_f32(0x80) == 0.0f && signbit(fp8_e4m3_to_f32(0x80)));
}

static void encoder(void **state) {
    (void)state;
    /* Every finite code encodes back to itself. */
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7F) == 0x7F) continue;
        assert_int_equal(fp8_e4m3_from_f32(fp8_e4m3_to_f32((uint8_t)c)), c);
    }
    /* Round to nearest even: 1.0625 is halfway between 1.0 (M=0) and 1.125 (M=1) → even M=0. */
    assert_int_equal(fp8_e4m3_from_f32(1.0625f), 0x38);
    assert_int_equal(fp8_e4m3_from_f32(1.1875f), 0x3A); /* between M=1 and M=2 → M=2 */
    assert_int_equal(fp8_e4m3_from_f32(1.07f), 0x39);
    /* Rounding up across a binade: 1.97 → 2.0. */
    assert_int_equal(fp8_e4m3_from_f32(1.97f), 0x40);
    /* Subnormals: 3·2^-10 is halfway between 2^-9 (M=1) and 2^-8 (M=2) → even M=2. */
    assert_int_equal(fp8_e4m3_from_f32(3.0f * 0x1p-10f), 0x02);
    assert_int_equal(fp8_e4m3_from_f32(0x1p-11f), 0x00); /* below half the smallest → 0 */
    /* Just below 2^-6 rounds up into the first normal. */
    assert_int_equal(fp8_e4m3_from_f32(0.0155f), 0x08);
    /* Saturation at ±448 (never NaN, docs/model.md §11 #23), NaN stays NaN. */
    assert_int_equal(fp8_e4m3_from_f32(460.0f), 0x7E);
    assert_int_equal(fp8_e4m3_from_f32(1e30f), 0x7E);
    assert_int_equal(fp8_e4m3_from_f32(-INFINITY), 0xFE);
    assert_int_equal(fp8_e4m3_from_f32(NAN), 0x7F);
    assert_int_equal(fp8_e4m3_from_f32(-0.0f), 0x80);
}

static void activation_quant(void **state) {
    (void)state;
    float x[200], xq[200], s[2];
    for (int i = 0; i < 200; i++) x[i] = 0.0f;
    x[5] = 2.0f;
    x[130] = -1e-6f; /* a tiny second group: amax clamps at 1e-4 */
    fp8_quantize_row(xq, s, x, 200, 0);
    assert_true(s[0] == 2.0f / 448.0f);
    assert_true(s[1] == 1e-4f / 448.0f);
    assert_true(xq[5] == 448.0f);
    /* -1e-6 / (1e-4/448) = -4.48 → nearest e4m3 is -4.5 */
    assert_true(xq[130] == -4.5f);
}

/** A [576][256] FP8 weight: rows 512..575 form a partial 64-row block with scale row 4. */
static void block_dequant_576_edge(void **state) {
    (void)state;
    enum { R = 576, C = 256 };
    uint8_t *q = malloc(R * C);
    float scales[5][2], row[C];
    for (int i = 0; i < R * C; i++) q[i] = (uint8_t)(0x30 + (i % 7)); /* 0.5 .. 0.875 */
    for (int br = 0; br < 5; br++)
        for (int bc = 0; bc < 2; bc++) scales[br][bc] = (float)(br + 1) * (bc ? 10.0f : 1.0f);
    Tensor t = { q, DT_F8_E4M3, R, C, (const uint8_t *)scales };
    for (int r = 0; r < R; r += 7) {
        tensor_row(&t, r, 0, C, 1, row);
        for (int j = 0; j < C; j++)
            assert_true(row[j] == fp8_e4m3_to_f32(q[r * C + j]) * scales[r / 128][j / 128]);
    }
    /* The last row uses the partial block's scale (row block 4). */
    tensor_row(&t, 575, 0, C, 1, row);
    assert_true(row[0] == fp8_e4m3_to_f32(q[575 * C]) * 5.0f);
    assert_true(row[200] == fp8_e4m3_to_f32(q[575 * C + 200]) * 50.0f);
    /* A column window crossing a block boundary. */
    tensor_row(&t, 520, 120, 136, 1, row);
    for (int j = 0; j < 16; j++) assert_true(row[j] == fp8_e4m3_to_f32(q[520 * C + 120 + j]) * scales[4][(120 + j) / 128]);
    free(q);
}

/** golden/fp8-small/w8a8_gemm.safetensors: y_w8a8 ≤ 1e-6 relative, x_scale exactly. */
static void golden_w8a8_gemm(void **state) {
    (void)state;
    SafeTensors st;
    Err err;
    assert_int_equal(st_open(&st, "golden/fp8-small/w8a8_gemm.safetensors", NULL, &err), 0);
    const StTensor *x = st_find(&st, "x"), *w = st_find(&st, "w.weight"), *ws = st_find(&st, "w.weight_scale_inv");
    const StTensor *xs = st_find(&st, "x_scale"), *yw = st_find(&st, "y_w8a8"), *yd = st_find(&st, "y_dequant");
    assert_non_null(x), assert_non_null(w), assert_non_null(ws), assert_non_null(xs), assert_non_null(yw),
        assert_non_null(yd);
    int M = (int)x->shape[0], K = (int)x->shape[1], N = (int)w->shape[0];
    Tensor W = { w->data, DT_F8_E4M3, N, K, ws->data };
    float *xf = malloc(sizeof(float) * M * K), *y = malloc(sizeof(float) * M * N);
    float *scratch = malloc(sizeof(float) * linear_scratch_floats(M, K));
    for (int i = 0; i < M * K; i++) xf[i] = st_load_f32(x->data + 4 * i);
    LinearScratch ls = linear_scratch_init(scratch, M, K);
    for (int mode = 0; mode < 2; mode++) {
        linear_forward(y, xf, M, &W, mode ? FP8_W8A8 : FP8_DEQUANT, &ls);
        const StTensor *ref = mode ? yw : yd;
        double md = 0, mx = 0;
        for (int i = 0; i < M * N; i++) {
            double r = st_load_f32(ref->data + 4 * i);
            md = fmax(md, fabs(y[i] - r));
            mx = fmax(mx, fabs(r));
        }
        printf("    %s: max rel %.3e\n", mode ? "y_w8a8 " : "y_dequant", md / mx);
        assert_true(md / mx <= 1e-6);
    }
    int blocks = (K + 127) / 128;
    for (int i = 0; i < M * blocks; i++) assert_true(ls.x_scale[i] == st_load_f32(xs->data + 4 * i));
    free(xf);
    free(y);
    free(scratch);
    st_close(&st);
}

/** DeepSeek-V3.1's scale_fmt "ue8m0": the smallest power of two ≥ s, exactly (docs/model.md §13.4). */
static void ue8m0_scales(void **state) {
    (void)state;
    assert_true(fp8_scale_ue8m0(1.0f) == 1.0f);
    assert_true(fp8_scale_ue8m0(0.5f) == 0.5f);
    assert_true(fp8_scale_ue8m0(nextafterf(0.5f, 1.0f)) == 1.0f); /* just above a power: the next one */
    assert_true(fp8_scale_ue8m0(0.75f) == 1.0f);
    assert_true(fp8_scale_ue8m0(1e-4f / 448.0f) == 0x1p-22f); /* the amax floor: 2.23e-7 → 2^-22 */
    assert_true(fp8_scale_ue8m0(3.0f) == 4.0f);
    float x[128], xq[128], s, plain;
    for (int i = 0; i < 128; i++) x[i] = 0.01f * (float)(i - 60);
    fp8_quantize_row(xq, &plain, x, 128, 0);
    fp8_quantize_row(xq, &s, x, 128, 1);
    assert_true(s >= plain && s < 2.0f * plain);
    int e;
    assert_true(frexpf(s, &e) == 0.5f); /* a power of two */
    for (int i = 0; i < 128; i++) assert_true(fabsf(xq[i]) <= 448.0f);
}

/** The same W8A8 GEMM with V3.1's power-of-two activation scales, against tools/golden_family.py. */
static void golden_w8a8_ue8m0(void **state) {
    (void)state;
    SafeTensors st;
    Err err;
    assert_int_equal(st_open(&st, "golden/fp8-small/w8a8_gemm.safetensors", NULL, &err), 0);
    const StTensor *x = st_find(&st, "x"), *w = st_find(&st, "w.weight"), *ws = st_find(&st, "w.weight_scale_inv");
    int M = (int)x->shape[0], K = (int)x->shape[1], N = (int)w->shape[0], blocks = (K + 127) / 128;
    Tensor W = { w->data, DT_F8_E4M3, N, K, ws->data };
    size_t ny, ns;
    float *yref = read_f32("golden/fp8-small/w8a8_ue8m0.f32", &ny);
    float *sref = read_f32("golden/fp8-small/w8a8_ue8m0_scale.f32", &ns);
    assert_int_equal(ny, (size_t)M * N);
    assert_int_equal(ns, (size_t)M * blocks);
    float *xf = malloc(sizeof(float) * M * K), *y = malloc(sizeof(float) * M * N);
    float *scratch = malloc(sizeof(float) * linear_scratch_floats(M, K));
    for (int i = 0; i < M * K; i++) xf[i] = st_load_f32(x->data + 4 * i);
    LinearScratch ls = linear_scratch_init(scratch, M, K);
    ls.scale_ue8m0 = 1;
    linear_forward(y, xf, M, &W, FP8_W8A8, &ls);
    double md = 0, mx = 0;
    for (int i = 0; i < M * N; i++) md = fmax(md, fabs(y[i] - yref[i])), mx = fmax(mx, fabs(yref[i]));
    printf("    y_w8a8 ue8m0: max rel %.3e\n", md / mx);
    assert_true(md / mx <= 1e-6);
    for (int i = 0; i < M * blocks; i++) assert_true(ls.x_scale[i] == sref[i]);
    free(xf), free(y), free(scratch), free(yref), free(sref);
    st_close(&st);
}

/**
 * The decoders the kernels use (computed, so that loops vectorize) equal the definitions: every
 * e4m3 code against the table, every F16 bit pattern against f16_to_f32, bit for bit (NaN: NaN
 * with the same sign), and a BF16 row through tensor_row.
 */
static void computed_decoders(void **state) {
    (void)state;
    for (int c = 0; c < 256; c++) {
        uint8_t code = (uint8_t)c;
        float want = fp8_e4m3_to_f32(code), got = elem_e4m3(&code, 0);
        if (isnan(want)) assert_true(isnan(got) && !signbit(got) == !signbit(want));
        else assert_memory_equal(&got, &want, sizeof got);
    }
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t bits = (uint16_t)h;
        float want = f16_to_f32(bits), got = elem_f16((const uint8_t *)&bits, 0);
        if (isnan(want)) assert_true(isnan(got) && !signbit(got) == !signbit(want));
        else assert_memory_equal(&got, &want, sizeof got);
    }
    uint16_t row[40];
    for (int i = 0; i < 40; i++) row[i] = (uint16_t)(0x3f80 + 977 * i);
    Tensor t = { (const uint8_t *)row, DT_BF16, 2, 20, NULL };
    float out[20];
    tensor_row(&t, 1, 0, 20, 1, out);
    for (int i = 0; i < 20; i++) assert_true(out[i] == bf16_to_f32(row[20 + i]));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(all_256_codes),          cmocka_unit_test(encoder),
        cmocka_unit_test(activation_quant),       cmocka_unit_test(block_dequant_576_edge),
        cmocka_unit_test(golden_w8a8_gemm),       cmocka_unit_test(ue8m0_scales),
        cmocka_unit_test(golden_w8a8_ue8m0),
        cmocka_unit_test(computed_decoders),
    };
    return cmocka_run_group_tests_name("fp8", tests, NULL, NULL);
}
