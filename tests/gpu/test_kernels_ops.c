/**
 * @file test_kernels_ops.c
 * @brief test_gpu_kernels --group ops: the small ops of fast/ops.h — RMSNorm, RoPE angles and
 *        rotation, SwiGLU, residual add, embedding gather — against ref rmsnorm_forward,
 *        rope_cos_sin, rope_forward, swiglu_forward and plain loops.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/config.h"
#include "model/ffn.h"
#include "model/rmsnorm.h"
#include "model/rope.h"
#include "ops.h"
#include "test_kernels.h"

static void rmsnorm_case(int64_t N, int64_t D, int64_t x_stride, FastDType xt, FastDType yt) {
    float *x = xmalloc((size_t)(N * x_stride) * 4), *w = xmalloc((size_t)D * 4);
    for (int64_t i = 0; i < N * x_stride; i++) x[i] = randn() * (1.0f + (float)(i % 5));
    for (int64_t i = 0; i < D; i++) w[i] = 1.0f + 0.1f * randn();
    if (xt == FAST_BF16) round_bf16(x, N * x_stride);
    float *y = xmalloc((size_t)(N * D) * 4), *rstd = xmalloc((size_t)N * 4), *yg = xmalloc((size_t)(N * D) * 4),
          *rg = xmalloc((size_t)N * 4);
    rmsnorm_forward(y, D, x, x_stride, w, N, D, 1e-6f, rstd);
    if (yt == FAST_BF16) round_bf16(y, N * D);
    DevBuf dx = devbuf_new("x", (size_t)(N * x_stride) * fast_dtype_size(xt)), dw = devbuf_new("w", (size_t)D * 4),
           dy = devbuf_new("y", (size_t)(N * D) * fast_dtype_size(yt)), dr = devbuf_new("rstd", (size_t)N * 4);
    if (xt == FAST_BF16) {
        uint16_t *b = xmalloc((size_t)(N * x_stride) * 2);
        to_bf16(b, x, N * x_stride);
        devbuf_upload(&dx, b, (size_t)(N * x_stride) * 2);
        free(b);
    } else {
        devbuf_upload(&dx, x, (size_t)(N * x_stride) * 4);
    }
    devbuf_upload(&dw, w, (size_t)D * 4);
    devbuf_poison(&dy, 0xFF), devbuf_poison(&dr, 0xFF);
    char what[160];
    snprintf(what, sizeof what, "rmsnorm N=%lld D=%lld x_stride=%lld %s->%s", (long long)N, (long long)D,
             (long long)x_stride, fast_dtype_name(xt), fast_dtype_name(yt));
    Err err = { { 0 } };
    if (launched(rmsnorm_forward_cuda(dy.ptr, yt, D, dx.ptr, xt, x_stride, dw.ptr, N, D, 1e-6f, dr.ptr, 0, &err), &err,
                 what)) {
        if (yt == FAST_BF16) {
            uint16_t *b = xmalloc((size_t)(N * D) * 2);
            devbuf_download(b, &dy, (size_t)(N * D) * 2);
            for (int64_t i = 0; i < N * D; i++) yg[i] = bf16_to_f32(b[i]);
            free(b);
        } else {
            devbuf_download(yg, &dy, (size_t)(N * D) * 4);
        }
        devbuf_download(rg, &dr, (size_t)N * 4);
        /* The mean square is reduced in another order: ~D·2^-24 relative at worst, so y within
         * 1e-5 relative (f32); a bf16 output may land one bf16 ulp (≤ 2^-7 relative) away. */
        Tol t = { 1e-30, yt == FAST_BF16 ? 0x1p-7 : 1e-5, NULL, yt == FAST_BF16 ? 1e-5 : 1e-10 };
        check_close(what, yg, y, N * D, D, t);
        Tol tr = { 0.0, 1e-5, NULL, 1e-10 };
        char w2[200];
        snprintf(w2, sizeof w2, "%s rstd", what);
        check_close(w2, rg, rstd, N, N, tr);
        guards(&dy, what), guards(&dr, what);
    }
    devbuf_free(&dx), devbuf_free(&dw), devbuf_free(&dy), devbuf_free(&dr);
    free(x), free(w), free(y), free(rstd), free(yg), free(rg);
}

static void rope_tests(void) {
    Config c;
    memset(&c, 0, sizeof c);
    c.qk_rope_head_dim = 64, c.rope_theta = 10000.0, c.has_yarn = 1, c.rope_factor = 40.0;
    c.original_max_position_embeddings = 4096, c.beta_fast = 32.0, c.beta_slow = 1.0, c.rope_attention_factor = 1.0f;
    Rope rope;
    Err err = { { 0 } };
    if (rope_init(&rope, &c, &err)) {
        report(0, "rope_init: %s", err.msg);
        return;
    }
    const int T = 64, half = 32, H = 128, Dqk = 192;
    int pos[64];
    static const int fixed[] = { 0, 1, 2, 3, 4095, 4096, 4097, 16383, 100000, 163839 };
    for (int t = 0; t < T; t++) pos[t] = t < 10 ? fixed[t] : randint(163840);
    float *cs = xmalloc((size_t)T * half * 4), *sn = xmalloc((size_t)T * half * 4);
    float *cg = xmalloc((size_t)T * half * 4), *sg = xmalloc((size_t)T * half * 4);
    for (int t = 0; t < T; t++) rope_cos_sin(cs + t * half, sn + t * half, pos[t], &rope);
    DevBuf dpos = devbuf_new("pos", T * 4), dinv = devbuf_new("inv_freq", half * 4),
           dc = devbuf_new("cos", (size_t)T * half * 4), ds = devbuf_new("sin", (size_t)T * half * 4);
    devbuf_upload(&dpos, pos, T * 4);
    devbuf_upload(&dinv, rope.inv_freq, half * 4);
    devbuf_poison(&dc, 0xFF), devbuf_poison(&ds, 0xFF);
    if (launched(rope_cos_sin_cuda(dc.ptr, ds.ptr, dpos.ptr, T, dinv.ptr, 64, 1.0f, 0, &err), &err, "rope_cos_sin")) {
        devbuf_download(cg, &dc, (size_t)T * half * 4);
        devbuf_download(sg, &ds, (size_t)T * half * 4);
        /* Same FP32 angle; CUDA cosf/sinf (≤ 2 ulp) vs glibc (≤ 1 ulp): |d| ≤ 3 ulp of 1 ≈ 3.6e-7. */
        Tol t = { 5e-7, 0.0, NULL, 1e-12 };
        check_close("rope_cos_sin cos (positions up to 163839)", cg, cs, T * half, half, t);
        check_close("rope_cos_sin sin (positions up to 163839)", sg, sn, T * half, half, t);
        guards(&dc, "rope_cos_sin"), guards(&ds, "rope_cos_sin");
    }
    /* Rotation with the reference's cos/sin uploaded: bit-identical (f32), q layout and k_pe layout. */
    devbuf_upload(&dc, cs, (size_t)T * half * 4);
    devbuf_upload(&ds, sn, (size_t)T * half * 4);
    const int64_t nq = (int64_t)T * H * Dqk;
    float *q = xmalloc((size_t)nq * 4), *qr = xmalloc((size_t)nq * 4), *qg = xmalloc((size_t)nq * 4);
    for (int64_t i = 0; i < nq; i++) q[i] = randn();
    memcpy(qr, q, (size_t)nq * 4);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) rope_forward(qr + ((int64_t)t * H + h) * Dqk + 128, cs + t * half, sn + t * half, 64);
    DevBuf dq = devbuf_new("q", (size_t)nq * 4);
    devbuf_upload(&dq, q, (size_t)nq * 4);
    if (launched(rope_forward_cuda((float *)dq.ptr + 128, FAST_F32, T, H, Dqk, (int64_t)H * Dqk, dc.ptr, ds.ptr, 64, 0, &err),
                 &err, "rope q")) {
        devbuf_download(qg, &dq, (size_t)nq * 4);
        check_bits_f32("rope_forward q [T][128][192] at +128 (nope parts untouched)", qg, qr, nq, Dqk);
        guards(&dq, "rope q");
    }
    const int64_t nk = (int64_t)T * 576;
    memcpy(qr, q, (size_t)nk * 4);
    for (int t = 0; t < T; t++) rope_forward(qr + (int64_t)t * 576 + 512, cs + t * half, sn + t * half, 64);
    devbuf_upload(&dq, q, (size_t)nk * 4);
    if (launched(rope_forward_cuda((float *)dq.ptr + 512, FAST_F32, T, 1, 0, 576, dc.ptr, ds.ptr, 64, 0, &err), &err,
                 "rope k_pe")) {
        devbuf_download(qg, &dq, (size_t)nk * 4);
        check_bits_f32("rope_forward k_pe [T][576] at +512", qg, qr, nk, 576);
    }
    /* bf16 in place: the FP32 result rounded once. */
    uint16_t *qb = xmalloc((size_t)nk * 2), *qbg = xmalloc((size_t)nk * 2);
    round_bf16(q, nk);
    to_bf16(qb, q, nk);
    memcpy(qr, q, (size_t)nk * 4);
    for (int t = 0; t < T; t++) rope_forward(qr + (int64_t)t * 576 + 512, cs + t * half, sn + t * half, 64);
    devbuf_upload(&dq, qb, (size_t)nk * 2);
    if (launched(rope_forward_cuda((uint16_t *)dq.ptr + 512, FAST_BF16, T, 1, 0, 576, dc.ptr, ds.ptr, 64, 0, &err), &err,
                 "rope bf16")) {
        devbuf_download(qbg, &dq, (size_t)nk * 2);
        for (int64_t i = 0; i < nk; i++) qg[i] = bf16_to_f32(qbg[i]), qr[i] = bf16_to_f32(f32_to_bf16(qr[i]));
        check_bits_f32("rope_forward k_pe bf16 (= bf16 of the f32 rotation)", qg, qr, nk, 576);
    }
    devbuf_free(&dpos), devbuf_free(&dinv), devbuf_free(&dc), devbuf_free(&ds), devbuf_free(&dq);
    free(cs), free(sn), free(cg), free(sg), free(q), free(qr), free(qg), free(qb), free(qbg);
    rope_free(&rope);
}

void test_ops(void) {
    printf("== ops (oracles: ref rmsnorm_forward, rope_cos_sin, rope_forward, swiglu_forward)\n");
    rmsnorm_case(g_quick ? 7 : 33, 7168, 7168, FAST_F32, FAST_F32);
    rmsnorm_case(5, 512, 576, FAST_F32, FAST_F32); /* kv_a_layernorm on the first 512 of 576 */
    rmsnorm_case(9, 1536, 1536, FAST_BF16, FAST_F32);
    rmsnorm_case(9, 7168, 7168, FAST_F32, FAST_BF16);
    rope_tests();

    /* SwiGLU on a fused [T][2I] GEMM output (gate half, up half). */
    const int64_t T = 37, I = 2048;
    float *gu = xmalloc((size_t)(T * 2 * I) * 4), *h = xmalloc((size_t)(T * I) * 4), *hg = xmalloc((size_t)(T * I) * 4);
    for (int64_t i = 0; i < T * 2 * I; i++) gu[i] = 3.0f * randn();
    for (int64_t t = 0; t < T; t++) swiglu_forward(h + t * I, gu + t * 2 * I, gu + t * 2 * I + I, I);
    DevBuf dgu = devbuf_new("gate_up", (size_t)(T * 2 * I) * 4), dh = devbuf_new("h", (size_t)(T * I) * 4);
    devbuf_upload(&dgu, gu, (size_t)(T * 2 * I) * 4);
    devbuf_poison(&dh, 0xFF);
    Err err = { { 0 } };
    if (launched(swiglu_forward_cuda(dh.ptr, FAST_F32, I, dgu.ptr, (float *)dgu.ptr + I, FAST_F32, 2 * I, T, I, 0, &err),
                 &err, "swiglu")) {
        devbuf_download(hg, &dh, (size_t)(T * I) * 4);
        /* exp correctly rounded vs glibc expf (1 ulp for ~1e-4 of inputs): ≤ 3 ulp after /, ·. */
        Tol t = { 1e-30, 4e-7, NULL, 1e-12 };
        check_close("swiglu [37][2048] from a fused [37][4096] input", hg, h, T * I, I, t);
        guards(&dh, "swiglu");
    }
    devbuf_free(&dgu), devbuf_free(&dh);
    free(gu), free(h), free(hg);

    /* Residual add: exact in f32 (ref block.c: h[i] += out[i]). */
    const int64_t n = 7168 * 9;
    float *a = xmalloc((size_t)n * 4), *b = xmalloc((size_t)n * 4), *y = xmalloc((size_t)n * 4), *yg = xmalloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) a[i] = randn(), b[i] = randn(), y[i] = a[i] + b[i];
    DevBuf da = devbuf_new("a", (size_t)n * 4), db = devbuf_new("b", (size_t)n * 4);
    devbuf_upload(&da, a, (size_t)n * 4);
    devbuf_upload(&db, b, (size_t)n * 4);
    if (launched(residual_add_cuda(da.ptr, FAST_F32, da.ptr, FAST_F32, db.ptr, FAST_F32, n, 0, &err), &err, "residual")) {
        devbuf_download(yg, &da, (size_t)n * 4);
        check_bits_f32("residual_add in place (h += x)", yg, y, n, 7168);
        guards(&da, "residual");
    }
    devbuf_free(&da), devbuf_free(&db);
    free(a), free(b), free(y), free(yg);

    /* Embedding gather with two bad ids: zero rows and the flag. */
    const int64_t V = 1000, D = 7168, Tn = 12;
    uint16_t *table = xmalloc((size_t)(V * D) * 2);
    for (int64_t i = 0; i < V * D; i++) table[i] = f32_to_bf16(randn());
    int ids[12] = { 0, 999, 5, 5, -1, 1000, 17, 123, 456, 789, 1, 2 };
    float *want = xmalloc((size_t)(Tn * D) * 4), *got = xmalloc((size_t)(Tn * D) * 4);
    for (int64_t t = 0; t < Tn; t++)
        for (int64_t i = 0; i < D; i++)
            want[t * D + i] = (ids[t] >= 0 && ids[t] < V) ? bf16_to_f32(table[(int64_t)ids[t] * D + i]) : 0.0f;
    DevBuf dt = devbuf_new("table", (size_t)(V * D) * 2), di = devbuf_new("ids", (size_t)Tn * 4),
           dout = devbuf_new("out", (size_t)(Tn * D) * 4), dflag = devbuf_new("bad_id", 4);
    devbuf_upload(&dt, table, (size_t)(V * D) * 2);
    devbuf_upload(&di, ids, (size_t)Tn * 4);
    devbuf_poison(&dout, 0xFF);
    CHECK_CUDA(cudaMemset(dflag.ptr, 0, 4));
    if (launched(embedding_gather_cuda(dout.ptr, FAST_F32, dt.ptr, V, D, di.ptr, Tn, dflag.ptr, 0, &err), &err,
                 "embedding")) {
        int flag = 0;
        devbuf_download(got, &dout, (size_t)(Tn * D) * 4);
        devbuf_download(&flag, &dflag, 4);
        check_bits_f32("embedding_gather (ids -1 and 1000 give zero rows)", got, want, Tn * D, D);
        report(flag == 1, "embedding_gather flags the bad ids (flag = %d)", flag);
        guards(&dout, "embedding"), guards(&dflag, "embedding");
    }
    devbuf_free(&dt), devbuf_free(&di), devbuf_free(&dout), devbuf_free(&dflag);
    free(table), free(want), free(got);
}
