/**
 * @file test_kernels_act_quant.c
 * @brief test_gpu_kernels --group act_quant: fp8_quantize_rows_cuda vs ref fp8_quantize_row —
 *        bit for bit (identical e4m3 codes and scales), on every encoder value and on random rows.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "act_quant.h"
#include "model/fp8.h"
#include "test_kernels.h"

/** Reference codes: the ref stores each quantized value as a float; re-encoding it gives its code. */
static void quant_ref(uint8_t *codes, float *scales, const float *x, int64_t M, int64_t K, int ue8m0) {
    float *xq = xmalloc((size_t)K * sizeof *xq);
    for (int64_t m = 0; m < M; m++) {
        fp8_quantize_row(xq, scales + m * (K / 128), x + m * K, K, ue8m0);
        for (int64_t k = 0; k < K; k++) codes[m * K + k] = fp8_e4m3_from_f32(xq[k]);
    }
    free(xq);
}

static void act_quant_case(const char *label, const float *x_in, int64_t M, int64_t K, FastDType dt, int ue8m0) {
    char what[160];
    float *x = xmalloc((size_t)(M * K) * sizeof *x);
    memcpy(x, x_in, (size_t)(M * K) * sizeof *x);
    if (dt == FAST_BF16) round_bf16(x, M * K); /* the kernel sees bf16, so does the oracle */
    uint8_t *codes = xmalloc((size_t)(M * K)), *codes_gpu = xmalloc((size_t)(M * K));
    float *sc = xmalloc((size_t)(M * K / 128) * sizeof *sc), *sc_gpu = xmalloc((size_t)(M * K / 128) * sizeof *sc);
    quant_ref(codes, sc, x, M, K, ue8m0);

    DevBuf dx = devbuf_new("x", (size_t)(M * K) * fast_dtype_size(dt)), dq = devbuf_new("q", (size_t)(M * K)),
           ds = devbuf_new("scale", (size_t)(M * K / 128) * sizeof(float));
    if (dt == FAST_BF16) {
        uint16_t *xb = xmalloc((size_t)(M * K) * 2);
        to_bf16(xb, x, M * K);
        devbuf_upload(&dx, xb, (size_t)(M * K) * 2);
        free(xb);
    } else {
        devbuf_upload(&dx, x, (size_t)(M * K) * sizeof *x);
    }
    devbuf_poison(&dq, 0xFF);
    devbuf_poison(&ds, 0xFF);
    Err err = { { 0 } };
    snprintf(what, sizeof what, "act_quant %s M=%lld K=%lld %s%s", label, (long long)M, (long long)K, fast_dtype_name(dt),
             ue8m0 ? " ue8m0" : "");
    if (launched(fp8_quantize_rows_cuda(dq.ptr, K, ds.ptr, dx.ptr, dt, K, M, K, ue8m0, 0, &err), &err, what)) {
        devbuf_download(codes_gpu, &dq, (size_t)(M * K));
        devbuf_download(sc_gpu, &ds, (size_t)(M * K / 128) * sizeof(float));
        char w2[200];
        snprintf(w2, sizeof w2, "%s codes", what);
        check_bytes(w2, codes_gpu, codes, M * K, K);
        snprintf(w2, sizeof w2, "%s scales", what);
        check_bits_f32(w2, sc_gpu, sc, M * K / 128, K / 128);
        guards(&dq, what);
        guards(&ds, what);
    }
    devbuf_free(&dx), devbuf_free(&dq), devbuf_free(&ds);
    free(x), free(codes), free(codes_gpu), free(sc), free(sc_gpu);
}

void test_act_quant(void) {
    printf("== act_quant (oracle: ref fp8_quantize_row; contract: identical codes and scales)\n");
    /* (1) The encoder on chosen values: every group starts with ±448, so s = 448/448 = 1
     * exactly and x/s = x: every finite code, every midpoint between neighbouring codes (exact
     * ties → round to nearest even) and its two float neighbours, subnormals, ±0, NaN. */
    float vals[4096];
    int nv = 0;
    for (int c = 0; c < 0x7F; c++) {
        float v = fp8_e4m3_to_f32((uint8_t)c), w = fp8_e4m3_to_f32((uint8_t)(c + 1));
        vals[nv++] = v;
        vals[nv++] = -v;
        if (c + 1 < 0x7F) {
            float mid = 0.5f * (v + w);
            vals[nv++] = mid, vals[nv++] = -mid;
            vals[nv++] = nextafterf(mid, 0.0f), vals[nv++] = nextafterf(mid, 1e9f);
            vals[nv++] = -nextafterf(mid, 0.0f), vals[nv++] = -nextafterf(mid, 1e9f);
        }
    }
    vals[nv++] = 1e-10f, vals[nv++] = -1e-40f, vals[nv++] = 0x1p-10f, vals[nv++] = -0.0f, vals[nv++] = NAN,
    vals[nv++] = -NAN, vals[nv++] = 447.9999f, vals[nv++] = -447.9999f;
    const int per_group = 127, groups = (nv + per_group - 1) / per_group;
    const int64_t Ke = 256, Me = (groups + 1) / 2; /* two groups per row */
    float *xe = xmalloc((size_t)(Me * Ke) * sizeof *xe);
    for (int64_t gi = 0; gi < Me * Ke / 128; gi++) {
        float *g = xe + gi * 128;
        g[0] = (gi % 2) ? -448.0f : 448.0f;
        for (int i = 1; i < 128; i++) {
            int64_t j = gi * per_group + (i - 1);
            g[i] = j < nv ? vals[j] : 0.0f;
        }
    }
    act_quant_case("encoder values (s = 1)", xe, Me, Ke, FAST_F32, 0);
    free(xe);

    /* (2) Random rows: normal values with per-row magnitudes from 1e-8 to 1e4 (the 1e-4 amax
     * clamp and e4m3 subnormals get exercised), outliers, an all-zero group, an Inf group. */
    int64_t M = g_quick ? 9 : 33, K = 7168;
    float *x = xmalloc((size_t)(M * K) * sizeof *x);
    for (int64_t m = 0; m < M; m++) {
        float mag = powf(10.0f, -8.0f + 12.0f * (float)m / (float)(M - 1));
        for (int64_t k = 0; k < K; k++) {
            float v = randn() * mag;
            if (randint(500) == 0) v *= 30.0f;
            x[m * K + k] = v;
        }
    }
    for (int k = 0; k < 128; k++) x[1 * K + 256 + k] = 0.0f; /* amax 0 → s = 1e-4/448 */
    x[2 * K + 1000] = INFINITY;                              /* s = Inf: x/s = 0, Inf/Inf = NaN */
    act_quant_case("random", x, M, K, FAST_F32, 0);
    act_quant_case("random", x, M, K, FAST_BF16, 0);
    act_quant_case("random", x, M, K, FAST_F32, 1); /* DeepSeek-V3.1's power-of-two scales */
    act_quant_case("random", x, M, K, FAST_BF16, 1);
    free(x);

    /* (3) Rejected input: K not a multiple of 128. */
    Err err = { { 0 } };
    int rc = fp8_quantize_rows_cuda(NULL, 100, NULL, NULL, FAST_F32, 100, 1, 100, 0, 0, &err);
    report(rc == -1 && strstr(err.msg, "multiple of 128") != NULL, "act_quant rejects K = 100: \"%s\"", err.msg);
}
