/**
 * @file test_kernels_generic.c
 * @brief test_gpu_kernels --group generic (fast/generic.h): the SIMT kernels for every shape and
 *        dtype the tensor-core kernels do not take, each against its reference function on the
 *        same inputs. Outputs are poisoned (0xFF = NaN) and guarded; what a launcher must not
 *        write (rows outside every group, columns past N, cache rows of other tokens, padding of
 *        strided rows) must still hold the poison.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generic.h"
#include "model/fp8.h"
#include "model/linear.h"
#include "model/mla.h"
#include "model/tensor.h"
#include "test_kernels.h"

/** A guarded device copy of n host bytes. */
static DevBuf dev_copy(const char *name, const void *host, size_t n) {
    DevBuf b = devbuf_new(name, n);
    devbuf_upload(&b, host, n);
    return b;
}

/** Bits of a float (for poison checks: 0xFFFFFFFF is what devbuf_poison(.., 0xFF) leaves). */
static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/** An e4m3 code drawn uniformly over the 254 non-NaN codes (every magnitude from 2^-9 to 448, both signs). */
static uint8_t rand_e4m3(void) {
    uint8_t c = (uint8_t)rng_u32(&g_rng);
    return (c & 0x7F) == 0x7F ? (uint8_t)(c - 1) : c;
}

/*
 * Tolerance of linear_generic vs linear_forward (and of every FP32 dot product below): both
 * sides sum the same terms in FP32 in different orders. Our FMA chain over K terms errs by at
 * most γ_K·Σ|terms| (γ_K ≈ K·2^-24), the reference's dot_f32 (8 partial sums) by γ_{K/8+4}, and
 * each FP8 promotion adds one rounding of |acc| ≤ Σ|terms|. (2K + 16)·2^-24·Σ|terms| covers the
 * sum of both worst cases (≥ K + K/8 + K/128 + 8). It is a worst case; typical differences are
 * ~√K·2^-24 relative, so NMSE ≤ 1e-10 (expected ~1e-12) is the sharp check: a wrong K block,
 * scale or row shows up as ≥ 1e-4.
 */
#define GENERIC_NMSE 1e-10

/** Rows [r0, r1) of group g (dense: one group of all M rows). */
static void group_rows(const int *starts, int64_t M, int g, int64_t *r0, int64_t *r1) {
    *r0 = starts ? starts[g] : 0;
    *r1 = starts ? starts[g + 1] : M;
}

/**
 * linear_generic_cuda on M rows (x with row stride K+3, y with row stride N+5, both padded with
 * NaN/poison) vs ref linear_forward per group, FP8 in dequant or w8a8 mode (w8a8: x quantized on
 * the GPU by fp8_quantize_rows_f32_cuda, bit-identical to the reference's own quantization).
 */
static void linear_generic_case(DType wt, int w8a8, int64_t M, int64_t N, int64_t K, const int *starts, int G) {
    const int64_t ldx = K + 3, ldy = N + 5, kb = (K + 127) / 128, nb = (N + 127) / 128;
    const int fp8 = wt == DT_F8_E4M3;
    const size_t es = wt == DT_F32 ? 4 : wt == DT_BF16 ? 2 : 1;
    float *x = xmalloc((size_t)(M * ldx) * 4);
    for (int64_t m = 0; m < M; m++) {
        float mag = (m % 7 == 3) ? 1e-3f : (m % 11 == 5) ? 50.0f : 1.0f;
        for (int64_t k = 0; k < ldx; k++) x[m * ldx + k] = k < K ? randn() * mag * (randint(200) == 0 ? 20.0f : 1.0f) : NAN;
    }
    const int64_t nw = (int64_t)G * N * K;
    uint8_t *w = xmalloc((size_t)nw * es);
    float *ws = fp8 ? xmalloc((size_t)(G * nb * kb) * 4) : NULL;
    for (int64_t i = 0; i < nw; i++) {
        if (wt == DT_F32) ((float *)w)[i] = 0.1f * randn();
        else if (wt == DT_BF16) ((uint16_t *)w)[i] = f32_to_bf16(0.1f * randn());
        else w[i] = rand_e4m3();
    }
    if (fp8)
        for (int64_t i = 0; i < G * nb * kb; i++) ws[i] = 1e-3f * (0.5f + rng_uniform(&g_rng));

    /* Reference, group by group, and Σ|terms| (with the scales) for the per-element bound. */
    float *want = xmalloc((size_t)(M * N) * 4), *mag = xmalloc((size_t)(M * N) * 4);
    char *in_group = calloc((size_t)M + 1, 1);
    float *wrow = xmalloc((size_t)K * 4);
    for (int g = 0; g < G; g++) {
        int64_t r0, r1;
        group_rows(starts, M, g, &r0, &r1);
        const int64_t rows = r1 - r0;
        if (rows <= 0) continue;
        float *xr = xmalloc((size_t)(rows * K) * 4), *xq = xmalloc((size_t)(rows * K) * 4),
              *sx = xmalloc((size_t)(rows * kb) * 4);
        for (int64_t r = 0; r < rows; r++) {
            memcpy(xr + r * K, x + (r0 + r) * ldx, (size_t)K * 4);
            fp8_quantize_row(xq + r * K, sx + r * kb, xr + r * K, K, 0);
            in_group[r0 + r] = 1;
        }
        Tensor W = { w + (size_t)g * (size_t)(N * K) * es, wt, N, K, fp8 ? (const uint8_t *)(ws + g * nb * kb) : NULL };
        float *scratch = xmalloc(linear_scratch_floats(rows, K) * sizeof(float));
        LinearScratch s = linear_scratch_init(scratch, rows, K);
        linear_forward(want + r0 * N, xr, rows, &W, w8a8 ? FP8_W8A8 : FP8_DEQUANT, &s);
        const int q = fp8 && w8a8;
        for (int64_t n = 0; n < N; n++) {
            tensor_row(&W, n, 0, K, 0, wrow); /* raw e4m3 values for FP8 */
            for (int64_t r = 0; r < rows; r++) {
                double sum = 0.0;
                for (int64_t b = 0; b < kb; b++) {
                    double sb = 0.0;
                    for (int64_t k = b * 128; k < K && k < b * 128 + 128; k++)
                        sb += fabs((double)(q ? xq : xr)[r * K + k] * (double)wrow[k]);
                    sum += sb * (fp8 ? tensor_scale(&W, n, b * 128) : 1.0) * (q ? sx[r * kb + b] : 1.0);
                }
                mag[(r0 + r) * N + n] = (float)sum;
            }
        }
        free(xr), free(xq), free(sx), free(scratch);
    }

    DevBuf dx = dev_copy("x", x, (size_t)(M * ldx) * 4), dw = dev_copy("w", w, (size_t)nw * es),
           dws = fp8 ? dev_copy("w_scale", ws, (size_t)(G * nb * kb) * 4) : devbuf_new("w_scale", 4),
           dxq = devbuf_new("xq", (size_t)(M * K) * 4), dxs = devbuf_new("x_scale", (size_t)(M * kb) * 4),
           dy = devbuf_new("y", (size_t)(M * ldy) * 4),
           dgs = starts ? dev_copy("group_start", starts, (size_t)(G + 1) * sizeof(int)) : devbuf_new("group_start", 4);
    devbuf_poison(&dy, 0xFF);
    char what[200];
    snprintf(what, sizeof what, "linear_generic %s%s M=%lld N=%lld K=%lld%s", /* dtype_name is in safetensors.c, not linked */
             wt == DT_F32 ? "F32" : wt == DT_BF16 ? "BF16" : "F8_E4M3",
             fp8 ? (w8a8 ? " w8a8" : " dequant") : "", (long long)M, (long long)N, (long long)K,
             starts ? " grouped" : "");
    Err err = { { 0 } };
    LinearGenericParams p;
    memset(&p, 0, sizeof p);
    p.y = dy.ptr, p.ldy = ldy, p.x = dx.ptr, p.ldx = ldx, p.w = dw.ptr, p.w_dtype = wt;
    p.w_scale = fp8 ? dws.ptr : NULL, p.M = M, p.N = N, p.K = K;
    p.group_start = starts ? dgs.ptr : NULL, p.num_groups = G;
    int rc = 0;
    if (fp8 && w8a8) {
        rc = fp8_quantize_rows_f32_cuda(dxq.ptr, dxs.ptr, dx.ptr, ldx, M, K, 0, 0, &err);
        p.x = dxq.ptr, p.ldx = K, p.x_scale = dxs.ptr;
    }
    if (launched(rc || linear_generic_cuda(&p, 0, &err), &err, what)) {
        float *yg = xmalloc((size_t)(M * ldy) * 4), *got = xmalloc((size_t)(M * N) * 4),
              *wt_ = xmalloc((size_t)(M * N) * 4), *tol = xmalloc((size_t)(M * N) * 4);
        devbuf_download(yg, &dy, (size_t)(M * ldy) * 4);
        int64_t n_cmp = 0, touched = 0;
        for (int64_t m = 0; m < M; m++)
            for (int64_t c = 0; c < ldy; c++) {
                const float v = yg[m * ldy + c];
                if (!in_group[m] || c >= N) {
                    touched += f32_bits(v) != 0xFFFFFFFFu;
                    continue;
                }
                got[n_cmp] = v, wt_[n_cmp] = want[m * N + c];
                tol[n_cmp] = (float)ldexp((double)(2 * K + 16) * mag[m * N + c], -24);
                n_cmp++;
            }
        Tol t = { 0.0, 0.0, tol, GENERIC_NMSE };
        check_close(what, got, wt_, n_cmp, N, t);
        report(touched == 0, "%s: rows outside every group and columns N..ldy untouched (%lld written)", what,
               (long long)touched);
        guards(&dy, what);
        free(yg), free(got), free(wt_), free(tol);
    }
    devbuf_free(&dx), devbuf_free(&dw), devbuf_free(&dws), devbuf_free(&dxq), devbuf_free(&dxs), devbuf_free(&dy);
    devbuf_free(&dgs);
    free(x), free(w), free(ws), free(want), free(mag), free(in_group), free(wrow);
}

/** fp8_quantize_rows_f32_cuda vs ref fp8_quantize_row on rows of stride ldx: identical value and scale bits. */
static void quant_f32_case(const char *label, const float *x, int64_t M, int64_t K, int64_t ldx) {
    const int64_t kb = (K + 127) / 128;
    float *xq = xmalloc((size_t)(M * K) * 4), *sc = xmalloc((size_t)(M * kb) * 4);
    float *xq_g = xmalloc((size_t)(M * K) * 4), *sc_g = xmalloc((size_t)(M * kb) * 4);
    for (int64_t m = 0; m < M; m++) fp8_quantize_row(xq + m * K, sc + m * kb, x + m * ldx, K, 0);
    DevBuf dx = dev_copy("x", x, (size_t)(M * ldx) * 4), dq = devbuf_new("xq", (size_t)(M * K) * 4),
           ds = devbuf_new("scale", (size_t)(M * kb) * 4);
    devbuf_poison(&dq, 0xFF), devbuf_poison(&ds, 0xFF);
    char what[200];
    snprintf(what, sizeof what, "fp8_quantize_rows_f32 %s M=%lld K=%lld ldx=%lld", label, (long long)M, (long long)K,
             (long long)ldx);
    Err err = { { 0 } };
    if (launched(fp8_quantize_rows_f32_cuda(dq.ptr, ds.ptr, dx.ptr, ldx, M, K, 0, 0, &err), &err, what)) {
        devbuf_download(xq_g, &dq, (size_t)(M * K) * 4);
        devbuf_download(sc_g, &ds, (size_t)(M * kb) * 4);
        char w2[240];
        snprintf(w2, sizeof w2, "%s values", what);
        check_bits_f32(w2, xq_g, xq, M * K, K);
        snprintf(w2, sizeof w2, "%s scales", what);
        check_bits_f32(w2, sc_g, sc, M * kb, kb);
        guards(&dq, what), guards(&ds, what);
    }
    devbuf_free(&dx), devbuf_free(&dq), devbuf_free(&ds);
    free(xq), free(sc), free(xq_g), free(sc_g);
}

/** fp8_quantize_rows_f32_cuda: chosen encoder values, random rows with specials, K below one group. */
static void quant_f32_tests(void) {
    /* (1) The encoder on chosen values, K = 144 (a full group and a 16-wide one): each group
     * starts with ±448 so s = 1 exactly and x/s = x: every finite code, every midpoint between
     * neighbouring codes (ties → even) and its two float neighbours, subnormals, ±0, ±NaN. */
    float vals[4096];
    int nv = 0;
    for (int c = 0; c < 0x7F; c++) {
        float v = fp8_e4m3_to_f32((uint8_t)c), nx = fp8_e4m3_to_f32((uint8_t)(c + 1));
        vals[nv++] = v, vals[nv++] = -v;
        if (c + 1 < 0x7F) {
            float mid = 0.5f * (v + nx);
            vals[nv++] = mid, vals[nv++] = -mid;
            vals[nv++] = nextafterf(mid, 0.0f), vals[nv++] = nextafterf(mid, 1e9f);
            vals[nv++] = -nextafterf(mid, 0.0f), vals[nv++] = -nextafterf(mid, 1e9f);
        }
    }
    vals[nv++] = 1e-10f, vals[nv++] = -1e-40f, vals[nv++] = -0.0f, vals[nv++] = NAN, vals[nv++] = -NAN;
    vals[nv++] = 447.9999f, vals[nv++] = -447.9999f;
    const int64_t K = 144, M = (nv + 141) / 142;
    float *x = xmalloc((size_t)(M * K) * 4);
    for (int64_t m = 0, j = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++) x[m * K + k] = (k == 0 || k == 128) ? ((m + k) % 2 ? -448.0f : 448.0f) : (j < nv ? vals[j++] : 0.0f);
    quant_f32_case("encoder values (s = 1)", x, M, K, K);
    free(x);
    /* (2) Random rows of K = 400 (three groups and a 16-wide one), row stride 401: magnitudes
     * 1e-8..1e4 (amax clamp, subnormal codes), an all-zero group, an Inf group, a NaN. */
    const int64_t M2 = g_quick ? 9 : 33, K2 = 400, ld2 = 401;
    x = xmalloc((size_t)(M2 * ld2) * 4);
    for (int64_t m = 0; m < M2; m++) {
        float mag = powf(10.0f, -8.0f + 12.0f * (float)m / (float)(M2 - 1));
        for (int64_t k = 0; k < ld2; k++) x[m * ld2 + k] = k < K2 ? randn() * mag * (randint(500) == 0 ? 30.0f : 1.0f) : NAN;
    }
    for (int k = 128; k < 256; k++) x[1 * ld2 + k] = 0.0f;
    x[2 * ld2 + 390] = INFINITY; /* short group: s = Inf, x/s = 0, Inf/Inf = NaN */
    x[3 * ld2 + 5] = NAN;
    quant_f32_case("random", x, M2, K2, ld2);
    /* (3) K shorter than one group. */
    quant_f32_case("random", x, 3, 100, ld2);
    free(x);
}

/**
 * The absorbed MLA's two per-head products (ref attention_absorb) through gemm_batched_cuda:
 *   q_abs[t][h][c] = Σ_d q[t][h][d] · kv_b[h·(Dn+Dv) + d][c]         (W_UKᵀ q_nope)
 *   o[t][h][d]     = Σ_c u[t][h][c] · kv_b[h·(Dn+Dv) + Dn + d][c]    (W_UV u)
 * vs a double-precision loop. Bound: the FP32 FMA chain errs by ≤ γ_K·Σ|a·b|, we allow
 * (K+2)·2^-24·Σ|a·b| per element; NMSE ≤ 1e-10.
 */
static void batched_case(int64_t T, int64_t H, int64_t Dn, int64_t Dv, int64_t Dc, int64_t Dr, FastDType bt) {
    const int64_t Dqk = Dn + Dr, Dkv = Dn + Dv, nq = T * H * Dqk, nb = H * Dkv * Dc, nu = T * H * Dc;
    float *q = xmalloc((size_t)nq * 4), *kvb = xmalloc((size_t)nb * 4), *u = xmalloc((size_t)nu * 4);
    for (int64_t i = 0; i < nq; i++) q[i] = randn();
    for (int64_t i = 0; i < nb; i++) kvb[i] = 0.1f * randn();
    for (int64_t i = 0; i < nu; i++) u[i] = randn();
    if (bt == FAST_BF16) round_bf16(kvb, nb);
    DevBuf dq = dev_copy("q", q, (size_t)nq * 4), du = dev_copy("u", u, (size_t)nu * 4),
           db = devbuf_new("kv_b", (size_t)nb * fast_dtype_size(bt));
    if (bt == FAST_BF16) {
        uint16_t *b16 = xmalloc((size_t)nb * 2);
        to_bf16(b16, kvb, nb);
        devbuf_upload(&db, b16, (size_t)nb * 2);
        free(b16);
    } else {
        devbuf_upload(&db, kvb, (size_t)nb * 4);
    }
    for (int which = 0; which < 2; which++) {
        const int64_t N = which ? Dv : Dc, K = which ? Dc : Dn, nc = T * H * N;
        GemmBatchedParams p;
        memset(&p, 0, sizeof p);
        p.b_dtype = bt, p.batch = H, p.M = T, p.N = N, p.K = K;
        p.c_sb = N, p.c_sm = H * N, p.c_sn = 1;
        p.b_sb = Dkv * Dc;
        if (!which) { /* A = q_nope (head offset Dqk, token stride H·Dqk), B[k=d][n=c] = kv_b row d, col c */
            p.a = dq.ptr, p.a_sb = Dqk, p.a_sm = H * Dqk, p.a_sk = 1;
            p.b = db.ptr, p.b_sk = Dc, p.b_sn = 1;
        } else { /* A = u, B[k=c][n=d] = kv_b row Dn + d, col c: the transposed stride pattern */
            p.a = du.ptr, p.a_sb = Dc, p.a_sm = H * Dc, p.a_sk = 1;
            p.b = (const char *)db.ptr + (size_t)(Dn * Dc) * fast_dtype_size(bt), p.b_sk = 1, p.b_sn = Dc;
        }
        float *want = xmalloc((size_t)nc * 4), *tol = xmalloc((size_t)nc * 4), *got = xmalloc((size_t)nc * 4);
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t n = 0; n < N; n++) {
                    double s = 0.0, a = 0.0;
                    for (int64_t k = 0; k < K; k++) {
                        double av = which ? u[(t * H + h) * Dc + k] : q[(t * H + h) * Dqk + k];
                        double bv = which ? kvb[(h * Dkv + Dn + n) * Dc + k] : kvb[(h * Dkv + k) * Dc + n];
                        s += av * bv, a += fabs(av * bv);
                    }
                    want[(t * H + h) * N + n] = (float)s;
                    tol[(t * H + h) * N + n] = (float)ldexp((double)(K + 2) * a, -24);
                }
        DevBuf dc = devbuf_new("c", (size_t)nc * 4);
        devbuf_poison(&dc, 0xFF);
        p.c = dc.ptr;
        char what[200];
        snprintf(what, sizeof what, "gemm_batched %s T=%lld H=%lld K=%lld N=%lld b %s", which ? "o = W_UV u" : "q_abs = W_UK^T q",
                 (long long)T, (long long)H, (long long)K, (long long)N, fast_dtype_name(bt));
        Err err = { { 0 } };
        if (launched(gemm_batched_cuda(&p, 0, &err), &err, what)) {
            devbuf_download(got, &dc, (size_t)nc * 4);
            Tol tl = { 0.0, 0.0, tol, GENERIC_NMSE };
            check_close(what, got, want, nc, N, tl);
            guards(&dc, what);
        }
        devbuf_free(&dc);
        free(want), free(tol), free(got);
    }
    devbuf_free(&dq), devbuf_free(&du), devbuf_free(&db);
    free(q), free(kvb), free(u);
}

/**
 * mla_attend_generic_cuda vs ref mla_attend_absorb, query by query. Queries: P causal prefill
 * queries of sequence A at positions pos0..pos0+P-1 (seq_lens = pos+1), one of length 0, one
 * decode query of sequence B of length LB. Pages scattered by a random permutation, every
 * unused cache row and spare block NaN (a stray read poisons the result), the zero-length
 * query's table row all -1 (it must read nothing). q_pe lives inside q [T][H][Dn+Dr] at Dn.
 */
static void mla_generic_case(int H, int Dc, int Dr, int page, int pos0, int P, int LB, FastDType cdt) {
    const int T = P + 2, D = Dc + Dr, Dn = 8, Dqk = Dn + Dr, la = pos0 + P;
    const int pa = (la + page - 1) / page, pb = (LB + page - 1) / page, stride = (pa > pb ? pa : pb) + 1;
    const int nblocks = pa + pb + 3;
    int *perm = xmalloc((size_t)nblocks * sizeof *perm);
    for (int i = 0; i < nblocks; i++) perm[i] = i;
    for (int i = nblocks - 1; i > 0; i--) {
        int j = randint(i + 1), tmp = perm[i];
        perm[i] = perm[j], perm[j] = tmp;
    }
    int *table = xmalloc((size_t)(T * stride) * sizeof *table), *lens = xmalloc((size_t)T * sizeof *lens);
    for (int i = 0; i < T * stride; i++) table[i] = -1;
    for (int i = 0; i < P; i++) {
        lens[i] = pos0 + i + 1;
        for (int pg = 0; pg < pa; pg++) table[i * stride + pg] = perm[pg];
    }
    lens[P] = 0;
    lens[P + 1] = LB;
    for (int pg = 0; pg < pb; pg++) table[(P + 1) * stride + pg] = perm[pa + pg];
    /* Cache (float copy, rounded to bf16 when the cache is bf16): NaN, then the valid rows. */
    const int64_t ne = (int64_t)nblocks * page * D;
    float *cache = xmalloc((size_t)ne * 4);
    for (int64_t i = 0; i < ne; i++) cache[i] = NAN;
    for (int s = 0; s < 2; s++) {
        const int len = s ? LB : la, *trow = table + (s ? (P + 1) * stride : 0);
        for (int t = 0; t < len; t++)
            for (int i = 0; i < D; i++) cache[((int64_t)trow[t / page] * page + t % page) * D + i] = randn();
    }
    if (cdt == FAST_BF16) round_bf16(cache, ne);
    const int64_t nqa = (int64_t)T * H * Dc, nq = (int64_t)T * H * Dqk;
    float *q_abs = xmalloc((size_t)nqa * 4), *q = xmalloc((size_t)nq * 4);
    for (int64_t i = 0; i < nqa; i++) q_abs[i] = randn();
    for (int64_t i = 0; i < nq; i++) q[i] = randn();
    const float scale = 0.1352337788608801f;

    /* Reference per query, and the per-(query, head) bound (see below). */
    const int maxlen = la > LB ? la : LB;
    float *u_ref = xmalloc((size_t)nqa * 4), *tol = xmalloc((size_t)nqa * 4);
    float *ckv = xmalloc((size_t)maxlen * Dc * 4), *kpe = xmalloc((size_t)(maxlen * (Dr > 0 ? Dr : 1)) * 4),
          *Pw = xmalloc((size_t)(maxlen + 1) * 4);
    for (int i = 0; i < T; i++) {
        const int S = lens[i];
        float cmax = 0.0f;
        for (int t = 0; t < S; t++) {
            const float *row = cache + ((int64_t)table[i * stride + t / page] * page + t % page) * D;
            memcpy(ckv + (int64_t)t * Dc, row, (size_t)Dc * 4);
            memcpy(kpe + (int64_t)t * Dr, row + Dc, (size_t)Dr * 4);
            for (int c = 0; c < Dc; c++) cmax = fmaxf(cmax, fabsf(row[c]));
        }
        mla_attend_absorb(u_ref + (int64_t)i * H * Dc, q_abs + (int64_t)i * H * Dc, q + (int64_t)i * H * Dqk + Dn, Dqk,
                          ckv, kpe, S, H, Dc, Dr, scale, Pw, 0);
        /* Bound: each score is an FP32 dot product of D terms on both sides, so
         * |Δs| ≤ e_s = 2(D+8)·2^-24·scale·max_t Σ|q·k|; that moves each P(t) by a relative
         * ≤ 2e_s, exp and the sums add ≤ (S+16)·2^-24; ×2 margin:
         * |Δu| ≤ (4e_s + (2S+32)·2^-24)·max|c_kv|. Worst case; NMSE ≤ 1e-10 is the sharp check. */
        for (int h = 0; h < H; h++) {
            const float *qa = q_abs + ((int64_t)i * H + h) * Dc, *qp = q + ((int64_t)i * H + h) * Dqk + Dn;
            double smax = 0.0;
            for (int t = 0; t < S; t++) {
                double a = 0.0;
                for (int c = 0; c < Dc; c++) a += fabs((double)qa[c] * ckv[(int64_t)t * Dc + c]);
                for (int c = 0; c < Dr; c++) a += fabs((double)qp[c] * kpe[(int64_t)t * Dr + c]);
                if (a > smax) smax = a;
            }
            const double es = ldexp(2.0 * (D + 8) * scale * smax, -24);
            const float b = (float)((4.0 * es + ldexp(2.0 * S + 32.0, -24)) * cmax);
            for (int c = 0; c < Dc; c++) tol[((int64_t)i * H + h) * Dc + c] = b;
        }
    }

    DevBuf dcache = devbuf_new("kv_cache", (size_t)ne * fast_dtype_size(cdt));
    if (cdt == FAST_BF16) {
        uint16_t *b16 = xmalloc((size_t)ne * 2);
        to_bf16(b16, cache, ne);
        devbuf_upload(&dcache, b16, (size_t)ne * 2);
        free(b16);
    } else {
        devbuf_upload(&dcache, cache, (size_t)ne * 4);
    }
    DevBuf dqa = dev_copy("q_abs", q_abs, (size_t)nqa * 4), dq = dev_copy("q", q, (size_t)nq * 4),
           dt = dev_copy("block_table", table, (size_t)(T * stride) * sizeof(int)),
           dl = dev_copy("seq_lens", lens, (size_t)T * sizeof(int)), du = devbuf_new("u", (size_t)nqa * 4);
    devbuf_poison(&du, 0xFF);
    MlaAttendParams p;
    memset(&p, 0, sizeof p);
    p.u = du.ptr, p.q_abs = dqa.ptr, p.q_pe = (const float *)dq.ptr + Dn, p.q_pe_stride_t = (int64_t)H * Dqk;
    p.q_pe_stride_h = Dqk, p.kv_cache = dcache.ptr, p.cache_dtype = cdt, p.block_table = dt.ptr;
    p.block_table_stride = stride, p.seq_lens = dl.ptr, p.T = T, p.H = H, p.Dc = Dc, p.Dr = Dr, p.page = page;
    p.scale = scale;
    char what[200];
    snprintf(what, sizeof what, "mla_attend_generic H=%d Dc=%d Dr=%d page=%d %s cache, lens %d..%d, 0, %d", H, Dc, Dr,
             page, fast_dtype_name(cdt), pos0 + 1, la, LB);
    Err err = { { 0 } };
    if (launched(mla_attend_generic_cuda(&p, 0, &err), &err, what)) {
        float *u = xmalloc((size_t)nqa * 4);
        devbuf_download(u, &du, (size_t)nqa * 4);
        Tol tl = { 0.0, 0.0, tol, GENERIC_NMSE };
        check_close(what, u, u_ref, nqa, Dc, tl);
        guards(&du, what);
        free(u);
    }
    devbuf_free(&dcache), devbuf_free(&dqa), devbuf_free(&dq), devbuf_free(&dt), devbuf_free(&dl), devbuf_free(&du);
    free(perm), free(table), free(lens), free(cache), free(q_abs), free(q), free(u_ref), free(tol), free(ckv), free(kpe);
    free(Pw);
}

/** Specials that exercise rounding to bf16: exact ties (to even, both directions), NaN with payload, ±Inf, subnormals, −0. */
static float bf16_special(int i) {
    static const uint32_t bits[] = { 0x3F808000u, 0x3F818000u, 0x3F80C000u, 0x7FA12345u, 0xFFC00001u, 0x7F800000u,
                                     0xFF800000u, 0x00008000u, 0x80018000u, 0x80000000u, 0x7F7FFFFFu, 0x477FFFFFu };
    float f;
    memcpy(&f, &bits[i % (int)(sizeof bits / sizeof bits[0])], 4);
    return f;
}

/** kv_cache_write_cuda: every byte of the cache vs the rows written on the host (others keep the poison). */
static void kv_write_case(int Dc, int Dr, int page, FastDType dt) {
    const int T = 9, D = Dc + Dr, stride = 4, nblocks = 7;
    const size_t es = fast_dtype_size(dt), bytes = (size_t)nblocks * (size_t)page * (size_t)D * es;
    /* Tokens 0..5: sequence A at positions page-3 .. page+2 (across a page boundary); 6..8: B at 0, 1, 2. */
    int pos[9], table[9 * 4];
    const int rowA[4] = { 5, 2, 6, 0 }, rowB[4] = { 3, 1, 4, 6 };
    for (int i = 0; i < T; i++) {
        pos[i] = i < 6 ? page - 3 + i : i - 6;
        memcpy(table + i * stride, i < 6 ? rowA : rowB, sizeof rowA);
    }
    float *kv = xmalloc((size_t)(T * D) * 4);
    for (int64_t i = 0; i < (int64_t)T * D; i++) kv[i] = i % 17 == 0 ? bf16_special((int)(i / 17)) : randn();
    uint8_t *want = xmalloc(bytes), *got = xmalloc(bytes);
    memset(want, 0xFF, bytes);
    for (int i = 0; i < T; i++) {
        const int64_t row = (int64_t)table[i * stride + pos[i] / page] * page + pos[i] % page;
        for (int j = 0; j < D; j++) {
            const float v = kv[(int64_t)i * D + j];
            if (dt == FAST_BF16) {
                const uint16_t b = f32_to_bf16(v);
                memcpy(want + (size_t)(row * D + j) * 2, &b, 2);
            } else {
                memcpy(want + (size_t)(row * D + j) * 4, &v, 4);
            }
        }
    }
    DevBuf dc = devbuf_new("kv_cache", bytes), dkv = dev_copy("kv_a", kv, (size_t)(T * D) * 4),
           dp = dev_copy("pos", pos, sizeof pos), dtab = dev_copy("block_table", table, sizeof table);
    devbuf_poison(&dc, 0xFF);
    char what[160];
    snprintf(what, sizeof what, "kv_cache_write Dc=%d Dr=%d page=%d %s (every cache byte)", Dc, Dr, page, fast_dtype_name(dt));
    Err err = { { 0 } };
    if (launched(kv_cache_write_cuda(dc.ptr, dt, dtab.ptr, stride, dp.ptr, dkv.ptr, D, (const float *)dkv.ptr + Dc, D, T,
                                     Dc, Dr, page, 0, &err),
                 &err, what)) {
        devbuf_download(got, &dc, bytes);
        check_bytes(what, got, want, (int64_t)bytes, (int64_t)D * (int64_t)es);
        guards(&dc, what);
    }
    devbuf_free(&dc), devbuf_free(&dkv), devbuf_free(&dp), devbuf_free(&dtab);
    free(kv), free(want), free(got);
}

/** copy_rows_cuda: columns [off, off+cols) of rows of stride ss into rows of stride ds (padding keeps the poison), every byte. */
static void copy_case(FastDType dt, FastDType st, int64_t rows, int64_t ss, int64_t off, int64_t cols, int64_t ds) {
    const size_t des = fast_dtype_size(dt), ses = fast_dtype_size(st), dbytes = (size_t)(rows * ds) * des;
    float *src = xmalloc((size_t)(rows * ss) * 4);
    for (int64_t i = 0; i < rows * ss; i++) src[i] = i % 13 == 0 ? bf16_special((int)(i / 13)) : randn();
    void *src_raw = xmalloc((size_t)(rows * ss) * ses);
    if (st == FAST_BF16) to_bf16(src_raw, src, rows * ss);
    else memcpy(src_raw, src, (size_t)(rows * ss) * 4);
    uint8_t *want = xmalloc(dbytes), *got = xmalloc(dbytes);
    memset(want, 0xFF, dbytes);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            const int64_t si = r * ss + off + c, di = r * ds + c;
            if (dt == st) memcpy(want + di * (int64_t)des, (const uint8_t *)src_raw + si * (int64_t)ses, des);
            else if (dt == FAST_BF16) { /* f32 → bf16: ref f32_to_bf16 */
                const uint16_t b = f32_to_bf16(src[si]);
                memcpy(want + di * 2, &b, 2);
            } else { /* bf16 → f32: exact */
                const float v = bf16_to_f32(((const uint16_t *)src_raw)[si]);
                memcpy(want + di * 4, &v, 4);
            }
        }
    DevBuf dsrc = dev_copy("src", src_raw, (size_t)(rows * ss) * ses), ddst = devbuf_new("dst", dbytes);
    devbuf_poison(&ddst, 0xFF);
    char what[200];
    snprintf(what, sizeof what, "copy_rows %s -> %s rows=%lld cols=%lld src_stride=%lld (+%lld) dst_stride=%lld",
             fast_dtype_name(st), fast_dtype_name(dt), (long long)rows, (long long)cols, (long long)ss, (long long)off,
             (long long)ds);
    Err err = { { 0 } };
    if (launched(copy_rows_cuda(ddst.ptr, dt, ds, (const uint8_t *)dsrc.ptr + off * (int64_t)ses, st, ss, rows, cols, 0,
                                &err),
                 &err, what)) {
        devbuf_download(got, &ddst, dbytes);
        check_bytes(what, got, want, (int64_t)dbytes, ds * (int64_t)des);
        guards(&ddst, what);
    }
    devbuf_free(&dsrc), devbuf_free(&ddst);
    free(src), free(src_raw), free(want), free(got);
}

/** The "generic" group: every launcher of fast/generic.h. */
void test_generic(void) {
    printf("== generic (oracles: ref linear_forward, fp8_quantize_row, mla_attend_absorb, a double loop; "
           "copies and cache writes byte for byte)\n");
    /* linear: K = 144 (fp8-small's o_proj: a full and a 16-wide K block), N = 200 (neither a
     * multiple of 128 nor of the 64-wide tile), M = 1 and 77; K = 400 and M = 1030 for more
     * blocks and row tiles. */
    static const DType dts[3] = { DT_F32, DT_BF16, DT_F8_E4M3 };
    for (int d = 0; d < 3; d++)
        for (int w8 = 0; w8 < (dts[d] == DT_F8_E4M3 ? 2 : 1); w8++) {
            linear_generic_case(dts[d], w8, 1, 200, 144, NULL, 1);
            linear_generic_case(dts[d], w8, 77, 200, 144, NULL, 1);
        }
    linear_generic_case(DT_F8_E4M3, 1, 77, 130, 400, NULL, 1);
    linear_generic_case(DT_F8_E4M3, 0, 1030, 72, 400, NULL, 1);
    linear_generic_case(DT_BF16, 0, 1030, 72, 144, NULL, 1);
    /* Grouped: rows 0-1 and 140-142 in no group, groups of 0, 1, 37, 0, 71 (straddles a row tile) and 29 rows. */
    static const int starts[7] = { 2, 2, 3, 40, 40, 111, 140 };
    linear_generic_case(DT_F8_E4M3, 1, 143, 200, 144, starts, 6);
    linear_generic_case(DT_F8_E4M3, 0, 143, 200, 144, starts, 6);
    linear_generic_case(DT_BF16, 0, 143, 200, 144, starts, 6);
    quant_f32_tests();
    /* Absorbed-MLA products at the three checkpoints' shapes (official-tiny, fp8-small, V3 with 16 of its heads). */
    for (int b = 0; b < 2; b++) {
        const FastDType bt = b ? FAST_BF16 : FAST_F32;
        batched_case(5, 4, 32, 32, 64, 16, bt);
        batched_case(7, 3, 32, 48, 128, 16, bt);
        batched_case(g_quick ? 9 : 33, 16, 128, 128, 512, 64, bt);
    }
    /* Attention: (H, Dc, Dr) of official-tiny, fp8-small, V3, a latent of 1024 and an odd one. */
    for (int ci = 0; ci < 2; ci++) {
        const FastDType cdt = ci ? FAST_BF16 : FAST_F32;
        mla_generic_case(4, 64, 16, 16, 20, 6, 50, cdt);
        mla_generic_case(3, 128, 16, 16, 20, 6, 50, cdt);
        mla_generic_case(128, 512, 64, 64, 60, 5, g_quick ? 130 : 300, cdt);
        mla_generic_case(2, 1024, 64, 64, 60, 5, 200, cdt);
        mla_generic_case(5, 100, 12, 32, 29, 4, 33, cdt);
    }
    kv_write_case(64, 16, 16, FAST_F32);
    kv_write_case(64, 16, 16, FAST_BF16);
    kv_write_case(512, 64, 64, FAST_BF16);
    /* q_pe of q [rows][192] at +128 → packed bf16 with padding, and the other dtype pairs. */
    copy_case(FAST_BF16, FAST_F32, 37, 192, 128, 64, 72);
    copy_case(FAST_F32, FAST_BF16, 37, 80, 3, 64, 64);
    copy_case(FAST_F32, FAST_F32, 37, 80, 3, 61, 67);
    copy_case(FAST_BF16, FAST_BF16, 37, 80, 3, 61, 61);
    /* Rejected inputs. */
    LinearGenericParams bad;
    memset(&bad, 0, sizeof bad);
    bad.M = 4, bad.N = 64, bad.K = 144, bad.ldx = 144, bad.ldy = 32, bad.w_dtype = DT_F8_E4M3, bad.num_groups = 1;
    Err err = { { 0 } };
    int rc = linear_generic_cuda(&bad, 0, &err);
    report(rc == -1 && strstr(err.msg, "ldy") != NULL, "linear_generic rejects ldy < N: \"%s\"", err.msg);
    bad.ldy = 64;
    rc = linear_generic_cuda(&bad, 0, &err);
    report(rc == -1 && strstr(err.msg, "w_scale") != NULL, "linear_generic rejects FP8 weights without w_scale: \"%s\"",
           err.msg);
}
