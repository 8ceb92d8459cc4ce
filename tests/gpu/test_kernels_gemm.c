/**
 * @file test_kernels_gemm.c
 * @brief test_gpu_kernels --group gemm_mma and --group gemm_wgmma: fp8_gemm_cuda (the mma.sync
 *        and the WGMMA path, dense and grouped) vs ref linear_forward (FP8_W8A8), on the same
 *        activations quantized by fp8_quantize_rows_cuda (bit-identical to the ref's own
 *        quantization: group act_quant). Exact-integer cases bit for bit, random cases within
 *        2^-8 of sum|terms|.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "act_quant.h"
#include "fp8_gemm.h"
#include "model/fp8.h"
#include "model/linear.h"
#include "model/tensor.h"
#include "test_kernels.h"

/** Host operands of one GEMM problem (G stacked weight matrices when grouped). */
typedef struct {
    int64_t M, N, K;
    int G;
    float *x;       /* [M][K] */
    uint8_t *w;     /* [G][N][K] e4m3 codes */
    float *ws;      /* [G][ceil(N/128)][K/128] */
    uint8_t *w_abs; /* |w| (codes & 0x7F), made on first use by gemm_ref */
} GemmData;

static Tensor weight_tensor(const GemmData *d, int g) {
    Tensor t;
    t.data = d->w + (int64_t)g * d->N * d->K;
    t.dtype = DT_F8_E4M3;
    t.rows = d->N;
    t.cols = d->K;
    t.scale_inv = (const uint8_t *)(d->ws + (int64_t)g * nblk(d->N) * (d->K / 128));
    return t;
}

/** (Re)draws M rows of activations: normal values, per-row magnitudes from 1e-3 to 50, 0.5% outliers ×20. */
static void gemm_new_x(GemmData *d, int64_t M) {
    free(d->x);
    d->M = M;
    d->x = xmalloc((size_t)(M * d->K) * sizeof *d->x);
    for (int64_t m = 0; m < M; m++) {
        float mag = (m % 7 == 3) ? 1e-3f : (m % 11 == 5) ? 50.0f : 1.0f;
        for (int64_t k = 0; k < d->K; k++) d->x[m * d->K + k] = randn() * mag * (randint(200) == 0 ? 20.0f : 1.0f);
    }
}

/**
 * Random operands: activations as gemm_new_x; weights uniform over the 254 finite e4m3 codes
 * (every magnitude from 2^-9 to 448, both signs: harsher than a checkpoint's bell curve, and
 * fast to draw for 264 M-element matrices); weight scales in [1e-5, 1e-3].
 */
static GemmData gemm_random(int64_t M, int64_t N, int64_t K, int G) {
    GemmData d = { 0, N, K, G, NULL, NULL, NULL, NULL };
    gemm_new_x(&d, M);
    d.w = xmalloc((size_t)(G * N * K));
    d.ws = xmalloc((size_t)(G * nblk(N) * (K / 128)) * sizeof *d.ws);
    for (int64_t i = 0; i < G * N * K; i += 4) {
        uint32_t u = rng_u32(&g_rng);
        for (int j = 0; j < 4 && i + j < G * N * K; j++) {
            uint8_t c = (uint8_t)(u >> (8 * j));
            d.w[i + j] = (c & 0x7F) == 0x7F ? (uint8_t)(c - 1) : c; /* never NaN */
        }
    }
    for (int64_t i = 0; i < G * nblk(N) * (K / 128); i++) d.ws[i] = 1e-5f * (1.0f + 99.0f * rng_uniform(&g_rng));
    return d;
}

/**
 * Integer operands whose every intermediate is exact in FP32: each 128-group of x is
 * {7, n·2^-6 with |n| ≤ 16} so s_x = 7/448 = 2^-6 and x/s_x = n exactly; weights are integers
 * in [-4, 4] with power-of-two scales 2^-j, j ≤ 3. Block partials are integers < 2^14 (exact
 * on any tensor core) and all sums stay within 24 bits: GPU and reference must agree bit for bit.
 */
static GemmData gemm_exact(int64_t M, int64_t N, int64_t K, int G) {
    GemmData d = { M, N, K, G, NULL, NULL, NULL, NULL };
    d.x = xmalloc((size_t)(M * K) * sizeof *d.x);
    d.w = xmalloc((size_t)(G * N * K));
    d.ws = xmalloc((size_t)(G * nblk(N) * (K / 128)) * sizeof *d.ws);
    for (int64_t i = 0; i < M * K; i++) d.x[i] = (i % 128 == 0) ? 7.0f : ldexpf((float)(randint(33) - 16), -6);
    for (int64_t i = 0; i < G * N * K; i++) d.w[i] = fp8_e4m3_from_f32((float)(randint(9) - 4));
    for (int64_t i = 0; i < G * nblk(N) * (K / 128); i++) d.ws[i] = ldexpf(1.0f, -randint(4));
    return d;
}

static void gemm_free(GemmData *d) { free(d->x), free(d->w), free(d->ws), free(d->w_abs); }

/** Device operands: quantized activations (by the GPU kernel), weights, scales. */
typedef struct {
    DevBuf x, a, as, b, bs, out, ws, gs;
} GemmDev;

static GemmDev gemm_upload(const GemmData *d) {
    GemmDev g;
    memset(&g, 0, sizeof g);
    const int64_t M = d->M, N = d->N, K = d->K;
    g.x = devbuf_new("x", (size_t)(M * K) * 4);
    g.a = devbuf_new("a", (size_t)(M * K));
    g.as = devbuf_new("a_scale", (size_t)(M * K / 128) * 4);
    g.b = devbuf_new("b", (size_t)(d->G * N * K));
    g.bs = devbuf_new("b_scale", (size_t)(d->G * nblk(N) * (K / 128)) * 4);
    g.out = devbuf_new("out", (size_t)(M * N) * 4);
    devbuf_upload(&g.x, d->x, (size_t)(M * K) * 4);
    devbuf_upload(&g.b, d->w, (size_t)(d->G * N * K));
    devbuf_upload(&g.bs, d->ws, (size_t)(d->G * nblk(N) * (K / 128)) * 4);
    Err err = { { 0 } };
    if (fp8_quantize_rows_cuda(g.a.ptr, K, g.as.ptr, g.x.ptr, FAST_F32, K, M, K, 0, 0, &err)) {
        report(0, "gemm setup: fp8_quantize_rows_cuda: %s", err.msg);
        exit(1);
    }
    return g;
}

static void gemm_dev_free(GemmDev *g) {
    devbuf_free(&g->x), devbuf_free(&g->a), devbuf_free(&g->as), devbuf_free(&g->b), devbuf_free(&g->bs);
    devbuf_free(&g->out), devbuf_free(&g->ws), devbuf_free(&g->gs);
}

/** Runs one GPU GEMM into g->out (poisoned first) and downloads it as floats [M][N]; 0 on launcher error. */
static int gemm_run(float *out, GemmDev *g, const GemmData *d, Fp8GemmPath path, int splits, FastDType odt,
                    const int *group_start_host, const char *what) {
    const int64_t M = d->M, N = d->N;
    devbuf_poison(&g->out, 0xFF);
    Fp8GemmParams p;
    memset(&p, 0, sizeof p);
    p.out = g->out.ptr;
    p.out_dtype = odt;
    p.ldo = N;
    p.a = g->a.ptr;
    p.a_scale = g->as.ptr;
    p.b = g->b.ptr;
    p.b_scale = g->bs.ptr;
    p.M = M, p.N = N, p.K = d->K;
    p.path = path;
    p.splits = splits;
    p.num_groups = 1;
    if (group_start_host) {
        if (!g->gs.base) g->gs = devbuf_new("group_start", (size_t)(d->G + 1) * sizeof(int));
        devbuf_upload(&g->gs, group_start_host, (size_t)(d->G + 1) * sizeof(int));
        p.group_start = g->gs.ptr;
        p.num_groups = d->G;
    }
    if (splits != 1 && !group_start_host) {
        size_t need = fp8_gemm_workspace_bytes(M, N, d->K);
        if (splits > 1) need = (size_t)splits * (size_t)(M * N) * 4;
        if (need) {
            devbuf_free(&g->ws);
            g->ws = devbuf_new("workspace", need);
            devbuf_poison(&g->ws, 0xFF); /* every partial must be written before it is read */
            p.workspace = g->ws.ptr;
            p.workspace_bytes = need;
        }
    }
    Err err = { { 0 } };
    if (!launched(fp8_gemm_cuda(&p, 0, &err), &err, what)) return 0;
    if (odt == FAST_BF16) {
        uint16_t *ob = xmalloc((size_t)(M * N) * 2);
        devbuf_download(ob, &g->out, (size_t)(M * N) * 2);
        for (int64_t i = 0; i < M * N; i++) out[i] = bf16_to_f32(ob[i]);
        free(ob);
    } else {
        devbuf_download(out, &g->out, (size_t)(M * N) * 4);
    }
    guards(&g->out, what);
    if (g->ws.base) guards(&g->ws, what);
    return 1;
}

/** Reference on the listed rows of x with weight matrix g: W8A8 result, Σ|terms| bound, and dequant result. */
static void gemm_ref(float *y, float *mag, float *y_deq, GemmData *d, int g, const int64_t *rows, int nrows) {
    const int64_t K = d->K, N = d->N;
    float *xs = xmalloc((size_t)(nrows * K) * sizeof *xs);
    for (int r = 0; r < nrows; r++) memcpy(xs + r * K, d->x + rows[r] * K, (size_t)K * sizeof *xs);
    float *scratch = xmalloc(linear_scratch_floats(nrows, K) * sizeof(float));
    LinearScratch s = linear_scratch_init(scratch, nrows, K);
    Tensor W = weight_tensor(d, g);
    linear_forward(y, xs, nrows, &W, FP8_W8A8, &s);
    if (y_deq) linear_forward(y_deq, xs, nrows, &W, FP8_DEQUANT, &s);
    if (mag) {
        /* Σ_kb Σ_k |xq·wq|·s_x·s_w via the same function on |x| and |W| (quantization is sign-symmetric). */
        const int64_t nw = (int64_t)d->G * N * K;
        if (!d->w_abs) {
            d->w_abs = xmalloc((size_t)nw);
            for (int64_t i = 0; i < nw; i++) d->w_abs[i] = d->w[i] & 0x7F;
        }
        for (int64_t i = 0; i < nrows * K; i++) xs[i] = fabsf(xs[i]);
        Tensor Wa = W;
        Wa.data = d->w_abs + (int64_t)g * N * K;
        linear_forward(mag, xs, nrows, &Wa, FP8_W8A8, &s);
    }
    free(xs), free(scratch);
}

/** Picks up to n rows of [0, M): the edges, tile boundaries, then random rows. */
static int sample_rows(int64_t *rows, int n, int64_t M) {
    int k = 0;
    const int64_t fixed[] = { 0, 1, 15, 16, 17, 63, 64, 127, 128, 129, M - 2, M - 1 };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0] && k < n; i++) {
        int64_t r = fixed[i];
        int dup = r < 0 || r >= M;
        for (int j = 0; j < k && !dup; j++) dup = rows[j] == r;
        if (!dup) rows[k++] = r;
    }
    while (k < n && k < M) {
        int64_t r = (int64_t)(rng_u32(&g_rng) % (uint32_t)M);
        int dup = 0;
        for (int j = 0; j < k && !dup; j++) dup = rows[j] == r;
        if (!dup) rows[k++] = r;
    }
    return k;
}

/*
 * Tolerance of the GPU GEMM against the W8A8 oracle. Everything but the 128-wide block
 * partials is done in the same order with the same roundings, and the reference sums each
 * partial exactly; tensor cores sum with limited internal precision (DeepSeek-V3 paper §3.3:
 * "around 14 bits" on H800). Bound: |d| ≤ 2^-8 · Σ_kb Σ_k |xq·wq|·s_x·s_w per element (a
 * 2^-14 error per add over the ≤ 2^5-term chains of an m16n8k32/m64n128k32 step, with a 4×
 * margin), and NMSE ≤ 1e-5 (a wrong scale or K block shows up as ~1/blocks ≥ 5e-3).
 * The observed max |d|/Σ|terms| is printed so a GPU session can tighten the bound.
 */
#define GEMM_MAG_TOL 0x1p-8
#define GEMM_NMSE 1e-5
/* Against FP8_DEQUANT (FP32 activations): 1×128 e4m3 activation rounding (relative error up
 * to 2^-4, rms ~2^-5.5) dominates; expected NMSE ~1e-3, checked against 1e-2. */
#define GEMM_DEQUANT_NMSE 1e-2

static void gemm_check_rows(const char *what, const float *out, const GemmData *d, const int64_t *rows, int nrows,
                            const float *y, const float *mag, const float *y_deq) {
    const int64_t N = d->N;
    float *got = xmalloc((size_t)(nrows * N) * sizeof *got), *tol = xmalloc((size_t)(nrows * N) * sizeof *tol);
    double worst = 0.0;
    for (int r = 0; r < nrows; r++)
        for (int64_t n = 0; n < N; n++) {
            float v = out[rows[r] * N + n];
            got[r * N + n] = v;
            tol[r * N + n] = ldexpf(mag[r * N + n], -8);
            if (mag[r * N + n] > 0) {
                double q = fabs((double)v - y[r * N + n]) / mag[r * N + n];
                if (q > worst) worst = q;
            }
        }
    Tol t = { 0.0, 0.0, tol, GEMM_NMSE };
    char w2[240];
    snprintf(w2, sizeof w2, "%s vs W8A8 (max |d|/sum|terms| = %.3g)", what, worst);
    check_close(w2, got, y, nrows * N, N, t);
    if (y_deq) {
        Tol td = { INFINITY, 0.0, NULL, GEMM_DEQUANT_NMSE };
        snprintf(w2, sizeof w2, "%s vs dequant (report)", what);
        check_close(w2, got, y_deq, nrows * N, N, td);
    }
    free(got), free(tol);
}

static int have_wgmma(void) { return g_dev.cc_major == 9 && g_dev.cc_minor == 0; }

/** The bit-exact case on every row, f32 and bf16 outputs. */
static void gemm_exact_case(int64_t M, int64_t N, int64_t K, Fp8GemmPath path) {
    GemmData d = gemm_exact(M, N, K, 1);
    GemmDev g = gemm_upload(&d);
    int64_t *rows = xmalloc((size_t)M * sizeof *rows);
    for (int64_t i = 0; i < M; i++) rows[i] = i;
    float *y = xmalloc((size_t)(M * N) * sizeof *y), *out = xmalloc((size_t)(M * N) * sizeof *out);
    gemm_ref(y, NULL, NULL, &d, 0, rows, (int)M);
    char what[200];
    snprintf(what, sizeof what, "gemm %s exact-integer M=%lld N=%lld K=%lld f32", fp8_gemm_path_name(path), (long long)M,
             (long long)N, (long long)K);
    if (gemm_run(out, &g, &d, path, 1, FAST_F32, NULL, what)) check_bits_f32(what, out, y, M * N, N);
    snprintf(what, sizeof what, "gemm %s exact-integer M=%lld N=%lld K=%lld bf16", fp8_gemm_path_name(path), (long long)M,
             (long long)N, (long long)K);
    if (gemm_run(out, &g, &d, path, 1, FAST_BF16, NULL, what)) {
        for (int64_t i = 0; i < M * N; i++) y[i] = bf16_to_f32(f32_to_bf16(y[i]));
        check_bits_f32(what, out, y, M * N, N);
    }
    if (path == FP8_GEMM_MMA) {
        snprintf(what, sizeof what, "gemm mma exact-integer M=%lld N=%lld K=%lld split-K 3", (long long)M, (long long)N,
                 (long long)K);
        gemm_ref(y, NULL, NULL, &d, 0, rows, (int)M);
        if (gemm_run(out, &g, &d, path, 3, FAST_F32, NULL, what)) check_bits_f32(what, out, y, M * N, N);
    }
    free(rows), free(y), free(out);
    gemm_dev_free(&g);
    gemm_free(&d);
}

/** One random problem: reference on sampled rows once, then every requested GPU variant. */
static void gemm_random_case(GemmData *d, int64_t M, Fp8GemmPath path) {
    gemm_new_x(d, M);
    const int64_t N = d->N, K = d->K;
    GemmDev g = gemm_upload(d);
    int64_t rows[16];
    int nrows = sample_rows(rows, g_quick ? 4 : 8, M);
    float *y = xmalloc((size_t)(nrows * N) * sizeof *y), *mag = xmalloc((size_t)(nrows * N) * sizeof *mag),
          *yd = xmalloc((size_t)(nrows * N) * sizeof *yd), *out = xmalloc((size_t)(M * N) * sizeof *out);
    gemm_ref(y, mag, yd, d, 0, rows, nrows);
    char what[200];
    snprintf(what, sizeof what, "gemm %s M=%lld N=%lld K=%lld", fp8_gemm_path_name(path), (long long)M, (long long)N,
             (long long)K);
    if (gemm_run(out, &g, d, path, 1, FAST_F32, NULL, what)) gemm_check_rows(what, out, d, rows, nrows, y, mag, yd);
    if (path == FP8_GEMM_MMA && fp8_gemm_workspace_bytes(M, N, K) > 0) {
        snprintf(what, sizeof what, "gemm mma M=%lld N=%lld K=%lld split-K auto", (long long)M, (long long)N, (long long)K);
        if (gemm_run(out, &g, d, path, 0, FAST_F32, NULL, what))
            gemm_check_rows(what, out, d, rows, nrows, y, mag, NULL);
    }
    free(y), free(mag), free(yd), free(out);
    gemm_dev_free(&g);
}

/** Grouped GEMM with uneven groups (empty, one row, tile-straddling), every row checked. */
static void gemm_grouped_case(Fp8GemmPath path, int exact) {
    const int G = 9;
    const int sizes[9] = { 0, 1, 17, 128, 129, 3, 0, 200, 64 };
    int starts[10] = { 0 };
    for (int i = 0; i < G; i++) starts[i + 1] = starts[i] + sizes[i];
    const int64_t M = starts[G], N = 320, K = 512; /* 320 = 2.5 weight blocks */
    GemmData d = exact ? gemm_exact(M, N, K, G) : gemm_random(M, N, K, G);
    GemmDev g = gemm_upload(&d);
    float *out = xmalloc((size_t)(M * N) * sizeof *out);
    char what[200];
    snprintf(what, sizeof what, "gemm %s grouped G=9 M=%lld N=%lld K=%lld%s", fp8_gemm_path_name(path), (long long)M,
             (long long)N, (long long)K, exact ? " exact-integer" : "");
    if (gemm_run(out, &g, &d, path, 1, FAST_F32, starts, what)) {
        float *y = xmalloc((size_t)(M * N) * sizeof *y), *mag = xmalloc((size_t)(M * N) * sizeof *mag);
        int64_t *rows = xmalloc((size_t)M * sizeof *rows);
        for (int gi = 0; gi < G; gi++) {
            int n = starts[gi + 1] - starts[gi];
            for (int r = 0; r < n; r++) rows[starts[gi] + r] = starts[gi] + r;
            if (n) gemm_ref(y + starts[gi] * N, exact ? NULL : mag + starts[gi] * N, NULL, &d, gi, rows + starts[gi], n);
        }
        if (exact) check_bits_f32(what, out, y, M * N, N);
        else gemm_check_rows(what, out, &d, rows, (int)M, y, mag, NULL);
        free(y), free(mag), free(rows);
    }
    free(out);
    gemm_dev_free(&g);
    gemm_free(&d);
}

/** Every GEMM check of one path (the two groups gemm_mma and gemm_wgmma). */
static void test_gemm(Fp8GemmPath path) {
    printf("== gemm_%s (oracle: ref linear_forward FP8_W8A8; exact cases bit for bit, random cases within 2^-8 of "
           "sum|terms|)\n",
           fp8_gemm_path_name(path));
    if (g_dev.cc_major * 10 + g_dev.cc_minor < 89) {
        printf("  SKIP: FP8 tensor cores need compute capability 8.9 (device %s is %d.%d)\n", g_dev.name,
               g_dev.cc_major, g_dev.cc_minor);
        return;
    }
    if (path == FP8_GEMM_WGMMA && !have_wgmma()) {
        printf("  SKIP: the WGMMA path needs an sm_90 device (device %s is %d.%d)\n", g_dev.name, g_dev.cc_major,
               g_dev.cc_minor);
        return;
    }
    gemm_exact_case(77, 576, 512, path);
    gemm_exact_case(130, 2112, 1024, path);
    gemm_grouped_case(path, 1);
    gemm_grouped_case(path, 0);
    /* DeepSeek-V3 shapes (N × K) with M spanning the tile heights and the decode/prefill regimes. */
    static const int64_t shapes[][2] = { { 2112, 7168 }, { 24576, 1536 }, { 32768, 512 }, { 7168, 16384 },
                                         { 4096, 7168 }, { 7168, 2048 },  { 36864, 7168 }, { 7168, 18432 } };
    /* M = 1 (BM 16 tile, split-K), 37 (BM 64, WGMMA's masked rows), 200 (several tiles) on every
     * shape; 4096 on two shapes (the host oracle checks sampled rows only, but still costs). */
    static const int64_t Ms[] = { 1, 37, 200, 4096 };
    const int nshapes = g_quick ? 3 : 8;
    for (int s = 0; s < nshapes; s++) {
        GemmData d = gemm_random(1, shapes[s][0], shapes[s][1], 1); /* weights drawn once per shape */
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
            int64_t M = Ms[mi];
            if (M == 4096 && (g_quick || (s != 5 && s != 0))) continue;
            if (g_quick && M == 37) continue;
            gemm_random_case(&d, M, path);
        }
        gemm_free(&d);
    }
    /* AUTO must pick a path the device runs and give the same contract. */
    if (path == FP8_GEMM_MMA) {
        GemmData d = gemm_random(1, 576, 7168, 1);
        gemm_random_case(&d, 300, FP8_GEMM_AUTO);
        gemm_free(&d);
    }
    /* Rejected inputs. */
    Fp8GemmParams p;
    memset(&p, 0, sizeof p);
    p.M = 4, p.N = 64, p.K = 100, p.ldo = 64, p.path = path;
    Err err = { { 0 } };
    int rc = fp8_gemm_cuda(&p, 0, &err);
    report(rc == -1 && strstr(err.msg, "multiple of 128") != NULL, "gemm %s rejects K = 100: \"%s\"",
           fp8_gemm_path_name(path), err.msg);
    p.K = 128, p.ldo = 32;
    rc = fp8_gemm_cuda(&p, 0, &err);
    report(rc == -1 && strstr(err.msg, "ldo") != NULL, "gemm %s rejects ldo < N: \"%s\"", fp8_gemm_path_name(path),
           err.msg);
}

void test_gemm_mma(void) { test_gemm(FP8_GEMM_MMA); }

void test_gemm_wgmma(void) { test_gemm(FP8_GEMM_WGMMA); }
