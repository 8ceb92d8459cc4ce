/**
 * @file test_kernels.c
 * @brief Every CUDA kernel of fast/ against the reference function of ref/ on the same inputs
 *        (the reference itself is linked, never a copy), with guard bands around every
 *        output buffer, poisoned outputs (0xFF = NaN) so unwritten elements show, NaN/Inf
 *        positions checked first, then a per-element tolerance, then NMSE; the worst element
 *        is printed. Each tolerance is justified where it is set.
 *
 * Usage: test_gpu_kernels [--quick] [--group NAME]...   groups: ops act_quant gemm_mma
 *        gemm_wgmma mla moe generic (default: all). Without a CUDA device it prints SKIP and exits 0.
 * Exit status: 0 when every check passed, 1 otherwise. Last line: "test_gpu_kernels: N passed, M failed".
 *
 * First run on an H100 on 2026-11-22: 190 checks pass (docs/kernels.md).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "act_quant.h"
#include "model/config.h"
#include "model/context.h"
#include "fast.h"
#include "model/ffn.h"
#include "model/fp8.h"
#include "fp8_gemm.h"
#include "model/gate.h"
#include "generic.h"
#include "gpu_util.h"
#include "model/linear.h"
#include "model/mla.h"
#include "mla_decode.h"
#include "model/moe.h"
#include "moe_cuda.h" /* fast/moe_cuda.h: named apart from ref/model/moe.h, which -Iref would find first */
#include "ops.h"
#include "model/rmsnorm.h"
#include "base/rng.h"
#include "model/rope.h"
#include "model/tensor.h"
#include "base/util.h"

static int g_quick;     /* --quick: the smaller grid `make test` runs */
static FastDevice g_dev;
static Rng g_rng;

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        printf("  [FAIL] host malloc(%zu) failed\n", n);
        exit(1);
    }
    return p;
}
static float randn(void) { return rng_normal(&g_rng); }
static int randint(int n) { return (int)(rng_u32(&g_rng) % (uint32_t)n); }

/** A launcher's return code: 0 expected; prints its message otherwise. */
static int launched(int rc, const Err *err, const char *what) {
    if (rc == 0) return 1;
    report(0, "%s: launcher returned %d: %s", what, rc, err->msg);
    return 0;
}

/** Reports the guard bands of an output buffer. */
static void guards(const DevBuf *b, const char *what) {
    int ok = devbuf_guards_ok(b);
    if (!ok) report(0, "%s: guard band of %s overwritten", what, b->name);
}

/* =========================================================================================
 * act_quant: fp8_quantize_rows_cuda vs ref fp8_quantize_row — bit for bit.
 * ======================================================================================= */

/** Reference codes: the ref stores each quantized value as a float; re-encoding it gives its code. */
static void quant_ref(uint8_t *codes, float *scales, const float *x, int64_t M, int64_t K) {
    float *xq = xmalloc((size_t)K * sizeof *xq);
    for (int64_t m = 0; m < M; m++) {
        fp8_quantize_row(xq, scales + m * (K / 128), x + m * K, K);
        for (int64_t k = 0; k < K; k++) codes[m * K + k] = fp8_e4m3_from_f32(xq[k]);
    }
    free(xq);
}

static void act_quant_case(const char *label, const float *x_in, int64_t M, int64_t K, FastDType dt) {
    char what[160];
    float *x = xmalloc((size_t)(M * K) * sizeof *x);
    memcpy(x, x_in, (size_t)(M * K) * sizeof *x);
    if (dt == FAST_BF16) round_bf16(x, M * K); /* the kernel sees bf16, so does the oracle */
    uint8_t *codes = xmalloc((size_t)(M * K)), *codes_gpu = xmalloc((size_t)(M * K));
    float *sc = xmalloc((size_t)(M * K / 128) * sizeof *sc), *sc_gpu = xmalloc((size_t)(M * K / 128) * sizeof *sc);
    quant_ref(codes, sc, x, M, K);

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
    snprintf(what, sizeof what, "act_quant %s M=%lld K=%lld %s", label, (long long)M, (long long)K, fast_dtype_name(dt));
    if (launched(fp8_quantize_rows_cuda(dq.ptr, K, ds.ptr, dx.ptr, dt, K, M, K, 0, &err), &err, what)) {
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

static void test_act_quant(void) {
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
    act_quant_case("encoder values (s = 1)", xe, Me, Ke, FAST_F32);
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
    act_quant_case("random", x, M, K, FAST_F32);
    act_quant_case("random", x, M, K, FAST_BF16);
    free(x);

    /* (3) Rejected input: K not a multiple of 128. */
    Err err = { { 0 } };
    int rc = fp8_quantize_rows_cuda(NULL, 100, NULL, NULL, FAST_F32, 100, 1, 100, 0, &err);
    report(rc == -1 && strstr(err.msg, "multiple of 128") != NULL, "act_quant rejects K = 100: \"%s\"", err.msg);
}

/* =========================================================================================
 * FP8 GEMM: fp8_gemm_cuda vs ref linear_forward (FP8_W8A8), same activations quantized by
 * fp8_quantize_rows_cuda (bit-identical to the ref's own quantization, tested above).
 * ======================================================================================= */

/** Host operands of one GEMM problem (G stacked weight matrices when grouped). */
typedef struct {
    int64_t M, N, K;
    int G;
    float *x;       /* [M][K] */
    uint8_t *w;     /* [G][N][K] e4m3 codes */
    float *ws;      /* [G][ceil(N/128)][K/128] */
    uint8_t *w_abs; /* |w| (codes & 0x7F), made on first use by gemm_ref */
} GemmData;

static int64_t nblk(int64_t N) { return (N + 127) / 128; }

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
    if (fp8_quantize_rows_cuda(g.a.ptr, K, g.as.ptr, g.x.ptr, FAST_F32, K, M, K, 0, &err)) {
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

/* =========================================================================================
 * MLA decode: mla_decode_cuda vs ref mla_attend_absorb (one query token per request).
 * ======================================================================================= */

static void test_mla(void) {
    printf("== mla (oracle: ref mla_attend_absorb on the same bf16 inputs)\n");
    if (g_dev.cc_major < 8) {
        printf("  SKIP: needs compute capability 8.0\n");
        return;
    }
    const int H = 128, Dc = MLA_DC, Dr = MLA_DR, D = Dc + Dr, PAGE = MLA_PAGE;
    static const int lens_full[] = { 1, 63, 64, 65, 1000, 4097 };
    static const int lens_quick[] = { 1, 64, 65, 700 };
    const int *lens = g_quick ? lens_quick : lens_full;
    const int B = g_quick ? 4 : 6;
    int max_len = 0, total_pages = 0, stride = 0;
    for (int b = 0; b < B; b++) {
        int pages = (lens[b] + PAGE - 1) / PAGE;
        total_pages += pages;
        if (pages > stride) stride = pages;
        if (lens[b] > max_len) max_len = lens[b];
    }
    stride += 1;
    const int nblocks = total_pages + 5; /* spare blocks hold NaN: reading one poisons the result */
    /* Physical blocks: a random permutation, so pages of one request are scattered. */
    int *perm = xmalloc((size_t)nblocks * sizeof *perm);
    for (int i = 0; i < nblocks; i++) perm[i] = i;
    for (int i = nblocks - 1; i > 0; i--) {
        int j = randint(i + 1), tmp = perm[i];
        perm[i] = perm[j], perm[j] = tmp;
    }
    int *table = xmalloc((size_t)(B * stride) * sizeof *table);
    for (int i = 0; i < B * stride; i++) table[i] = -1;
    int used = 0;
    for (int b = 0; b < B; b++)
        for (int pg = 0; pg < (lens[b] + PAGE - 1) / PAGE; pg++) table[b * stride + pg] = perm[used++];
    /* Cache: NaN everywhere, then the valid positions of each request. */
    const int64_t cache_elems = (int64_t)nblocks * PAGE * D;
    uint16_t *cache = xmalloc((size_t)cache_elems * 2);
    for (int64_t i = 0; i < cache_elems; i++) cache[i] = 0x7FC0; /* bf16 NaN */
    float cmax = 0.0f;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < lens[b]; t++) {
            uint16_t *row = cache + ((int64_t)table[b * stride + t / PAGE] * PAGE + t % PAGE) * D;
            for (int i = 0; i < D; i++) {
                row[i] = f32_to_bf16(randn());
                if (fabsf(bf16_to_f32(row[i])) > cmax) cmax = fabsf(bf16_to_f32(row[i]));
            }
        }
    uint16_t *q_abs = xmalloc((size_t)B * H * Dc * 2), *q_pe = xmalloc((size_t)B * H * Dr * 2);
    for (int64_t i = 0; i < (int64_t)B * H * Dc; i++) q_abs[i] = f32_to_bf16(randn());
    for (int64_t i = 0; i < (int64_t)B * H * Dr; i++) q_pe[i] = f32_to_bf16(randn());
    const float scale = 0.1352337788608801f;

    /* Reference, request by request, on float copies of the same bf16 values. */
    float *u_ref = xmalloc((size_t)B * H * Dc * sizeof(float));
    {
        float *qa = xmalloc((size_t)H * Dc * 4), *qp = xmalloc((size_t)H * Dr * 4);
        float *ckv = xmalloc((size_t)max_len * Dc * 4), *kpe = xmalloc((size_t)max_len * Dr * 4);
        float *P = xmalloc((size_t)max_len * 4);
        for (int b = 0; b < B; b++) {
            for (int i = 0; i < H * Dc; i++) qa[i] = bf16_to_f32(q_abs[(int64_t)b * H * Dc + i]);
            for (int i = 0; i < H * Dr; i++) qp[i] = bf16_to_f32(q_pe[(int64_t)b * H * Dr + i]);
            for (int t = 0; t < lens[b]; t++) {
                const uint16_t *row = cache + ((int64_t)table[b * stride + t / PAGE] * PAGE + t % PAGE) * D;
                for (int i = 0; i < Dc; i++) ckv[(int64_t)t * Dc + i] = bf16_to_f32(row[i]);
                for (int i = 0; i < Dr; i++) kpe[(int64_t)t * Dr + i] = bf16_to_f32(row[Dc + i]);
            }
            mla_attend_absorb(u_ref + (int64_t)b * H * Dc, qa, qp, Dr, ckv, kpe, lens[b], H, Dc, Dr, scale, P, 0);
        }
        free(qa), free(qp), free(ckv), free(kpe), free(P);
    }

    DevBuf d_cache = devbuf_new("kv_cache", (size_t)cache_elems * 2), d_qa = devbuf_new("q_abs", (size_t)B * H * Dc * 2),
           d_qp = devbuf_new("q_pe", (size_t)B * H * Dr * 2), d_tab = devbuf_new("block_table", (size_t)(B * stride) * 4),
           d_len = devbuf_new("seq_lens", (size_t)B * 4), d_u = devbuf_new("u", (size_t)B * H * Dc * 4),
           d_lse = devbuf_new("lse", (size_t)B * H * 4);
    devbuf_upload(&d_cache, cache, (size_t)cache_elems * 2);
    devbuf_upload(&d_qa, q_abs, (size_t)B * H * Dc * 2);
    devbuf_upload(&d_qp, q_pe, (size_t)B * H * Dr * 2);
    devbuf_upload(&d_tab, table, (size_t)(B * stride) * 4);
    devbuf_upload(&d_len, lens, (size_t)B * 4);
    float *u = xmalloc((size_t)B * H * Dc * 4), *lse1 = xmalloc((size_t)B * H * 4), *lse = xmalloc((size_t)B * H * 4);
    /* Tolerance: P is rounded to bf16 (relative 2^-9) before P·V while l sums the FP32 values,
     * so |u − u_ref| ≤ 2^-9·Σ_t P(t)·|c_kv(t)| ≤ 2^-9·max|c_kv|; we allow 2^-8·max|c_kv| and
     * NMSE ≤ 1e-4 (expected ~1e-6; a wrong page or head shows up as O(1)). */
    Tol tol = { ldexp((double)cmax, -8), 0.0, NULL, 1e-4 };
    const int split_list[] = { 1, 3, 0 };
    for (int si = 0; si < 3; si++) {
        int splits = split_list[si] ? split_list[si] : mla_decode_num_splits(B, H, max_len);
        size_t wsb = mla_decode_workspace_bytes(B, H, splits);
        DevBuf d_ws = devbuf_new("workspace", wsb ? wsb : 1);
        devbuf_poison(&d_ws, 0xFF);
        devbuf_poison(&d_u, 0xFF);
        devbuf_poison(&d_lse, 0xFF);
        MlaDecodeParams p;
        memset(&p, 0, sizeof p);
        p.u = d_u.ptr, p.lse = d_lse.ptr, p.q_abs = d_qa.ptr, p.q_pe = d_qp.ptr, p.kv_cache = d_cache.ptr;
        p.block_table = d_tab.ptr, p.block_table_stride = stride, p.seq_lens = d_len.ptr;
        p.B = B, p.H = H, p.max_seq_len = max_len, p.scale = scale, p.num_splits = splits;
        p.workspace = d_ws.ptr, p.workspace_bytes = wsb;
        char what[160];
        snprintf(what, sizeof what, "mla B=%d H=%d lens up to %d, %d split(s)%s", B, H, max_len, splits,
                 split_list[si] ? "" : " (auto)");
        Err err = { { 0 } };
        if (launched(mla_decode_cuda(&p, 0, &err), &err, what)) {
            devbuf_download(u, &d_u, (size_t)B * H * Dc * 4);
            devbuf_download(lse, &d_lse, (size_t)B * H * 4);
            check_close(what, u, u_ref, (int64_t)B * H * Dc, Dc, tol);
            guards(&d_u, what), guards(&d_lse, what), guards(&d_ws, what);
            if (si == 0) memcpy(lse1, lse, (size_t)B * H * 4);
            else {
                /* Same log-sum-exp whichever way the positions are split (FP32 rounding only). */
                Tol tl = { 1e-5, 1e-5, NULL, 1e-10 };
                char w2[200];
                snprintf(w2, sizeof w2, "%s: lse equals the 1-split lse", what);
                check_close(w2, lse, lse1, (int64_t)B * H, H, tl);
            }
        }
        devbuf_free(&d_ws);
    }
    /* Rejected input: H not a multiple of 64. */
    MlaDecodeParams bad;
    memset(&bad, 0, sizeof bad);
    bad.B = 1, bad.H = 100;
    Err err = { { 0 } };
    report(mla_decode_cuda(&bad, 0, &err) == -1 && strstr(err.msg, "multiple of 64"), "mla rejects H = 100: \"%s\"",
           err.msg);
    devbuf_free(&d_cache), devbuf_free(&d_qa), devbuf_free(&d_qp), devbuf_free(&d_tab), devbuf_free(&d_len);
    devbuf_free(&d_u), devbuf_free(&d_lse);
    free(perm), free(table), free(cache), free(q_abs), free(q_pe), free(u_ref), free(u), free(lse1), free(lse);
}

/* =========================================================================================
 * MoE: gate, permute, gather, combine, and the whole layer against ref moe_forward.
 * ======================================================================================= */

static Config moe_config(void) {
    Config c;
    memset(&c, 0, sizeof c);
    c.n_routed_experts = 256, c.n_group = 8, c.topk_group = 4, c.num_experts_per_tok = 8;
    c.norm_topk_prob = 1, c.routed_scaling_factor = 2.5, c.n_shared_experts = 1;
    return c;
}

/**
 * Whether a token's routing has a near tie that one ulp of sigmoid could flip: within 1e-5
 * between the topk_group-th and next group score, or between consecutive values among the
 * K+1 best choice values of the kept groups. Computed from the reference's own affinities.
 */
static int near_tie(const float *scores, const float *bias, const Config *c) {
    const int E = c->n_routed_experts, G = c->n_group, per = E / G, K = c->num_experts_per_tok;
    float ch[1024], gs[64];
    for (int e = 0; e < E; e++) ch[e] = scores[e] + bias[e];
    gate_group_scores(gs, ch, E, G);
    float sorted_gs[64];
    memcpy(sorted_gs, gs, (size_t)G * sizeof(float));
    for (int i = 0; i < G; i++) /* descending selection sort, G is small */
        for (int j = i + 1; j < G; j++)
            if (sorted_gs[j] > sorted_gs[i]) {
                float t = sorted_gs[i];
                sorted_gs[i] = sorted_gs[j], sorted_gs[j] = t;
            }
    if (c->topk_group < G && fabsf(sorted_gs[c->topk_group - 1] - sorted_gs[c->topk_group]) <= 1e-5f) return 1;
    float cut = sorted_gs[c->topk_group - 1];
    float kept[1024];
    int nk = 0;
    for (int e = 0; e < E; e++)
        if (gs[e / per] >= cut) kept[nk++] = ch[e];
    for (int i = 0; i <= K && i < nk; i++)
        for (int j = i + 1; j < nk; j++)
            if (kept[j] > kept[i]) {
                float t = kept[i];
                kept[i] = kept[j], kept[j] = t;
            }
    for (int i = 0; i < K && i + 1 < nk; i++)
        if (fabsf(kept[i] - kept[i + 1]) <= 1e-5f) return 1;
    return 0;
}

static void gate_case(const char *label, const float *logits, const float *bias, int64_t T, const Config *c,
                      int allow_near_ties) {
    const int E = c->n_routed_experts, K = c->num_experts_per_tok, G = c->n_group;
    int *idx = xmalloc((size_t)(T * K) * sizeof *idx), *idx_g = xmalloc((size_t)(T * K) * sizeof *idx);
    float *w = xmalloc((size_t)(T * K) * 4), *w_g = xmalloc((size_t)(T * K) * 4);
    float *sc = xmalloc((size_t)(T * E) * 4), *sc_g = xmalloc((size_t)(T * E) * 4);
    float *work = xmalloc((size_t)(2 * (E + G)) * 4);
    for (int64_t t = 0; t < T; t++) gate_forward(idx + t * K, w + t * K, sc + t * E, logits + t * E, bias, c, work);
    DevBuf dl = devbuf_new("logits", (size_t)(T * E) * 4), db = devbuf_new("bias", (size_t)E * 4),
           di = devbuf_new("idx", (size_t)(T * K) * 4), dw = devbuf_new("weights", (size_t)(T * K) * 4),
           ds = devbuf_new("scores", (size_t)(T * E) * 4);
    devbuf_upload(&dl, logits, (size_t)(T * E) * 4);
    devbuf_upload(&db, bias, (size_t)E * 4);
    devbuf_poison(&di, 0xFF), devbuf_poison(&dw, 0xFF), devbuf_poison(&ds, 0xFF);
    char what[160];
    snprintf(what, sizeof what, "gate %s T=%lld", label, (long long)T);
    Err err = { { 0 } };
    if (launched(gate_forward_cuda(di.ptr, dw.ptr, ds.ptr, dl.ptr, db.ptr, T, c, 0, &err), &err, what)) {
        devbuf_download(idx_g, &di, (size_t)(T * K) * 4);
        devbuf_download(w_g, &dw, (size_t)(T * K) * 4);
        devbuf_download(sc_g, &ds, (size_t)(T * E) * 4);
        guards(&di, what), guards(&dw, what), guards(&ds, what);
        /* Affinities: a 1-ulp exp difference moves 1/(1+e) by up to ~3 ulps: allow 4 (relative 2^-21). */
        Tol ts = { 0.0, 0x1p-21, NULL, 1e-12 };
        char w2[200];
        snprintf(w2, sizeof w2, "%s scores (<= 4 ulp)", what);
        check_close(w2, sc_g, sc, T * E, E, ts);
        int64_t ties = 0, tie_diff = 0, bad = 0, first_bad = -1;
        for (int64_t t = 0; t < T; t++) {
            int same = memcmp(idx + t * K, idx_g + t * K, (size_t)K * sizeof(int)) == 0;
            int tie = allow_near_ties && near_tie(sc + t * E, bias, c);
            ties += tie;
            if (!same && tie) tie_diff++;
            if (!same && !tie) {
                bad++;
                if (first_bad < 0) first_bad = t;
            }
        }
        if (first_bad >= 0) {
            printf("    token %lld: ref idx", (long long)first_bad);
            for (int k = 0; k < K; k++) printf(" %d", idx[first_bad * K + k]);
            printf(" / gpu idx");
            for (int k = 0; k < K; k++) printf(" %d", idx_g[first_bad * K + k]);
            printf("\n");
        }
        report(bad == 0, "%s selection: %lld tokens differ without a near tie (%lld near-tie tokens, %lld of them differ)",
               what, (long long)bad, (long long)ties, (long long)tie_diff);
        /* Weights of identically routed tokens: the affinities (≤ 4 ulp) through a sum and a quotient: 8 ulp. */
        float *wr = xmalloc((size_t)(T * K) * 4), *wg2 = xmalloc((size_t)(T * K) * 4);
        int64_t n = 0;
        for (int64_t t = 0; t < T; t++)
            if (memcmp(idx + t * K, idx_g + t * K, (size_t)K * sizeof(int)) == 0)
                for (int k = 0; k < K; k++) wr[n] = w[t * K + k], wg2[n] = w_g[t * K + k], n++;
        Tol tw = { 0.0, 0x1p-20, NULL, 1e-12 };
        snprintf(w2, sizeof w2, "%s weights of identically routed tokens", what);
        check_close(w2, wg2, wr, n, K, tw);
        free(wr), free(wg2);
    }
    devbuf_free(&dl), devbuf_free(&db), devbuf_free(&di), devbuf_free(&dw), devbuf_free(&ds);
    free(idx), free(idx_g), free(w), free(w_g), free(sc), free(sc_g), free(work);
}

static void permute_case(const char *label, const int *idx, int64_t T, int64_t K, int64_t E) {
    const int64_t n = T * K;
    int *perm = xmalloc((size_t)n * 4), *start = xmalloc((size_t)(E + 1) * 4);
    int *perm_g = xmalloc((size_t)n * 4), *start_g = xmalloc((size_t)(E + 1) * 4), *ros = xmalloc((size_t)n * 4);
    moe_permute(perm, start, idx, T, K, E);
    size_t wsb = moe_permute_workspace_bytes(T, K, E);
    DevBuf di = devbuf_new("idx", (size_t)n * 4), dp = devbuf_new("perm", (size_t)n * 4),
           dr = devbuf_new("row_of_slot", (size_t)n * 4), ds = devbuf_new("expert_start", (size_t)(E + 1) * 4),
           dw = devbuf_new("workspace", wsb);
    devbuf_upload(&di, idx, (size_t)n * 4);
    devbuf_poison(&dp, 0xFF), devbuf_poison(&dr, 0xFF), devbuf_poison(&ds, 0xFF), devbuf_poison(&dw, 0xFF);
    char what[160];
    snprintf(what, sizeof what, "permute %s T=%lld K=%lld E=%lld", label, (long long)T, (long long)K, (long long)E);
    Err err = { { 0 } };
    if (launched(moe_permute_cuda(dp.ptr, dr.ptr, ds.ptr, di.ptr, T, K, E, dw.ptr, wsb, 0, &err), &err, what)) {
        devbuf_download(perm_g, &dp, (size_t)n * 4);
        devbuf_download(ros, &dr, (size_t)n * 4);
        devbuf_download(start_g, &ds, (size_t)(E + 1) * 4);
        char w2[200];
        snprintf(w2, sizeof w2, "%s expert_start", what);
        check_ints(w2, start_g, start, E + 1, E + 1);
        snprintf(w2, sizeof w2, "%s perm (stable)", what);
        check_ints(w2, perm_g, perm, n, K);
        int64_t bad = 0;
        for (int64_t r = 0; r < n; r++)
            if (perm[r] < 0 || perm[r] >= n || ros[perm[r]] != r) bad++;
        report(bad == 0, "%s row_of_slot is the inverse of perm (%lld mismatches)", what, (long long)bad);
        guards(&dp, what), guards(&dr, what), guards(&ds, what), guards(&dw, what);
    }
    devbuf_free(&di), devbuf_free(&dp), devbuf_free(&dr), devbuf_free(&ds), devbuf_free(&dw);
    free(perm), free(start), free(perm_g), free(start_g), free(ros);
}

static void combine_case(int64_t T, int64_t K, int64_t D, int E, FastDType dt) {
    const int64_t R = T * K;
    int *idx = xmalloc((size_t)R * 4), *perm = xmalloc((size_t)R * 4), *start = xmalloc((size_t)(E + 1) * 4);
    int *ros = xmalloc((size_t)R * 4);
    for (int64_t t = 0; t < T; t++) /* K distinct experts per token */
        for (int64_t k = 0; k < K; k++) {
            int e, dup;
            do {
                e = randint(E), dup = 0;
                for (int64_t j = 0; j < k; j++) dup |= idx[t * K + j] == e;
            } while (dup);
            idx[t * K + k] = e;
        }
    moe_permute(perm, start, idx, T, K, E);
    for (int64_t r = 0; r < R; r++) ros[perm[r]] = (int)r;
    float *y = xmalloc((size_t)(R * D) * 4), *sh = xmalloc((size_t)(T * D) * 4), *w = xmalloc((size_t)R * 4);
    for (int64_t i = 0; i < R * D; i++) y[i] = randn();
    for (int64_t i = 0; i < T * D; i++) sh[i] = randn();
    for (int64_t i = 0; i < R; i++) w[i] = rng_uniform(&g_rng);
    if (dt == FAST_BF16) round_bf16(y, R * D), round_bf16(sh, T * D);
    float *out = xmalloc((size_t)(T * D) * 4), *out_g = xmalloc((size_t)(T * D) * 4);
    moe_combine(out, y, sh, perm, w, T, K, D);
    const size_t es = fast_dtype_size(dt);
    DevBuf dy = devbuf_new("y_perm", (size_t)(R * D) * es), dsh = devbuf_new("y_shared", (size_t)(T * D) * es),
           dr = devbuf_new("row_of_slot", (size_t)R * 4), dw = devbuf_new("weights", (size_t)R * 4),
           dout = devbuf_new("out", (size_t)(T * D) * 4);
    if (dt == FAST_BF16) {
        uint16_t *b16 = xmalloc((size_t)(R * D) * 2);
        to_bf16(b16, y, R * D);
        devbuf_upload(&dy, b16, (size_t)(R * D) * 2);
        to_bf16(b16, sh, T * D);
        devbuf_upload(&dsh, b16, (size_t)(T * D) * 2);
        free(b16);
    } else {
        devbuf_upload(&dy, y, (size_t)(R * D) * 4);
        devbuf_upload(&dsh, sh, (size_t)(T * D) * 4);
    }
    devbuf_upload(&dr, ros, (size_t)R * 4);
    devbuf_upload(&dw, w, (size_t)R * 4);
    devbuf_poison(&dout, 0xFF);
    char what[160];
    snprintf(what, sizeof what, "combine T=%lld K=%lld D=%lld %s (bit-identical to ref moe_combine)", (long long)T,
             (long long)K, (long long)D, fast_dtype_name(dt));
    Err err = { { 0 } };
    if (launched(moe_combine_cuda(dout.ptr, dy.ptr, dt, dsh.ptr, dt, dr.ptr, dw.ptr, T, K, D, 0, &err), &err, what)) {
        devbuf_download(out_g, &dout, (size_t)(T * D) * 4);
        check_bits_f32(what, out_g, out, T * D, D);
        guards(&dout, what);
    }
    devbuf_free(&dy), devbuf_free(&dsh), devbuf_free(&dr), devbuf_free(&dw), devbuf_free(&dout);
    free(idx), free(perm), free(start), free(ros), free(y), free(sh), free(w), free(out), free(out_g);
}

static void gather_case(int64_t T, int64_t K, int64_t D, int E) {
    const int64_t R = T * K;
    int *idx = xmalloc((size_t)R * 4), *perm = xmalloc((size_t)R * 4), *start = xmalloc((size_t)(E + 1) * 4);
    for (int64_t i = 0; i < R; i++) idx[i] = randint(E);
    moe_permute(perm, start, idx, T, K, E);
    uint8_t *xq = xmalloc((size_t)(T * D)), *want = xmalloc((size_t)(R * D)), *got = xmalloc((size_t)(R * D));
    float *xs = xmalloc((size_t)(T * D / 128) * 4), *xs_want = xmalloc((size_t)(R * D / 128) * 4),
          *xs_got = xmalloc((size_t)(R * D / 128) * 4);
    for (int64_t i = 0; i < T * D; i++) xq[i] = (uint8_t)rng_u32(&g_rng);
    for (int64_t i = 0; i < T * D / 128; i++) xs[i] = rng_uniform(&g_rng);
    for (int64_t r = 0; r < R; r++) { /* the definition: row r is token perm[r] / K (ref moe_forward's gather) */
        memcpy(want + r * D, xq + (perm[r] / K) * D, (size_t)D);
        memcpy(xs_want + r * (D / 128), xs + (perm[r] / K) * (D / 128), (size_t)(D / 128) * 4);
    }
    DevBuf dxq = devbuf_new("xq", (size_t)(T * D)), dxs = devbuf_new("xs", (size_t)(T * D / 128) * 4),
           dp = devbuf_new("perm", (size_t)R * 4), dout = devbuf_new("xq_perm", (size_t)(R * D)),
           dos = devbuf_new("xs_perm", (size_t)(R * D / 128) * 4);
    devbuf_upload(&dxq, xq, (size_t)(T * D));
    devbuf_upload(&dxs, xs, (size_t)(T * D / 128) * 4);
    devbuf_upload(&dp, perm, (size_t)R * 4);
    devbuf_poison(&dout, 0xFF), devbuf_poison(&dos, 0xFF);
    Err err = { { 0 } };
    if (launched(moe_gather_rows_cuda(dout.ptr, dos.ptr, dxq.ptr, dxs.ptr, dp.ptr, R, K, D, 0, &err), &err, "gather")) {
        devbuf_download(got, &dout, (size_t)(R * D));
        devbuf_download(xs_got, &dos, (size_t)(R * D / 128) * 4);
        check_bytes("gather rows (e4m3)", got, want, R * D, D);
        check_bits_f32("gather rows (scales)", xs_got, xs_want, R * D / 128, D / 128);
        guards(&dout, "gather"), guards(&dos, "gather");
    }
    devbuf_free(&dxq), devbuf_free(&dxs), devbuf_free(&dp), devbuf_free(&dout), devbuf_free(&dos);
    free(idx), free(perm), free(start), free(xq), free(want), free(got), free(xs), free(xs_want), free(xs_got);
}

/** Stacks E FFNs as the grouped GEMM wants them: W13 [E][2I][D] (gate rows then up rows), W2 [E][D][I]. */
typedef struct {
    int64_t E, I, D;
    uint8_t *w13, *w2;
    float *s13, *s2;
} ExpertStack;

static ExpertStack expert_stack_random(int64_t E, int64_t I, int64_t D) {
    ExpertStack s = { E, I, D, NULL, NULL, NULL, NULL };
    s.w13 = xmalloc((size_t)(E * 2 * I * D));
    s.w2 = xmalloc((size_t)(E * D * I));
    s.s13 = xmalloc((size_t)(E * (2 * I / 128) * (D / 128)) * 4);
    s.s2 = xmalloc((size_t)(E * nblk(D) * (I / 128)) * 4);
    for (int64_t i = 0; i < E * 2 * I * D; i++) s.w13[i] = fp8_e4m3_from_f32(randn() * 100.0f) & 0xFE; /* no NaN code */
    for (int64_t i = 0; i < E * D * I; i++) s.w2[i] = fp8_e4m3_from_f32(randn() * 100.0f) & 0xFE;
    for (int64_t i = 0; i < E * (2 * I / 128) * (D / 128); i++) s.s13[i] = 1e-4f * (0.5f + rng_uniform(&g_rng));
    for (int64_t i = 0; i < E * nblk(D) * (I / 128); i++) s.s2[i] = 1e-4f * (0.5f + rng_uniform(&g_rng));
    return s;
}

/** FFNWeights (ref) viewing expert e of the stack. */
static FFNWeights expert_view(const ExpertStack *s, int64_t e) {
    FFNWeights f;
    const int64_t I = s->I, D = s->D;
    const float *s13 = s->s13 + e * (2 * I / 128) * (D / 128);
    f.gate_proj = (Tensor){ s->w13 + e * 2 * I * D, DT_F8_E4M3, I, D, (const uint8_t *)s13 };
    f.up_proj = (Tensor){ s->w13 + e * 2 * I * D + I * D, DT_F8_E4M3, I, D,
                          (const uint8_t *)(s13 + (I / 128) * (D / 128)) };
    f.down_proj = (Tensor){ s->w2 + e * D * I, DT_F8_E4M3, D, I,
                            (const uint8_t *)(s->s2 + e * nblk(D) * (I / 128)) };
    return f;
}

/** Grouped (or dense when start == NULL) GEMM launcher shorthand for the MoE pipeline. */
static int run_gemm(void *out, const void *a, const void *as, const uint8_t *b, const float *bs, int64_t M, int64_t N,
                    int64_t K, const int *start, int G, Err *err) {
    Fp8GemmParams p;
    memset(&p, 0, sizeof p);
    p.out = out, p.out_dtype = FAST_F32, p.ldo = N, p.a = a, p.a_scale = as, p.b = b, p.b_scale = bs;
    p.M = M, p.N = N, p.K = K, p.group_start = start, p.num_groups = G, p.path = FP8_GEMM_AUTO, p.splits = 1;
    return fp8_gemm_cuda(&p, 0, err);
}

/** The whole MoE layer: GPU pipeline (fast/moe_cuda.h recipe) vs ref moe_forward in W8A8 mode. */
static void moe_layer_case(int64_t T) {
    Config c = moe_config();
    const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, G = c.n_group, D = 512, I = 256, R = T * K;
    c.hidden_size = (int)D, c.moe_intermediate_size = (int)I;
    ExpertStack ex = expert_stack_random(E, I, D), sh = expert_stack_random(1, I, D);
    uint16_t *gate_w = xmalloc((size_t)(E * D) * 2);
    for (int64_t i = 0; i < E * D; i++) gate_w[i] = f32_to_bf16(randn() * 0.05f);
    float *bias = xmalloc((size_t)E * 4), *x = xmalloc((size_t)(T * D) * 4);
    for (int64_t e = 0; e < E; e++) bias[e] = 0.1f * randn();
    for (int64_t i = 0; i < T * D; i++) x[i] = randn();

    /* Reference: moe_forward itself over LayerWeights viewing the same arrays. */
    LayerWeights lw;
    memset(&lw, 0, sizeof lw);
    lw.is_moe = 1;
    lw.gate = (Tensor){ (const uint8_t *)gate_w, DT_BF16, E, D, NULL };
    lw.e_score_correction_bias = bias;
    lw.experts = xmalloc((size_t)E * sizeof *lw.experts);
    for (int64_t e = 0; e < E; e++) lw.experts[e] = expert_view(&ex, e);
    lw.shared_experts = expert_view(&sh, 0);
    MoEActs a;
    memset(&a, 0, sizeof a);
    a.logits = xmalloc((size_t)(T * E) * 4), a.scores = xmalloc((size_t)(T * E) * 4);
    a.idx = xmalloc((size_t)R * 4), a.weights = xmalloc((size_t)R * 4), a.perm = xmalloc((size_t)R * 4);
    a.expert_start = xmalloc((size_t)(E + 1) * 4), a.x_perm = xmalloc((size_t)(R * D) * 4);
    a.routed.h_gate = xmalloc((size_t)(R * I) * 4), a.routed.h_up = xmalloc((size_t)(R * I) * 4);
    a.routed.h_act = xmalloc((size_t)(R * I) * 4), a.y_perm = xmalloc((size_t)(R * D) * 4);
    a.shared.h_gate = xmalloc((size_t)(T * I) * 4), a.shared.h_up = xmalloc((size_t)(T * I) * 4);
    a.shared.h_act = xmalloc((size_t)(T * I) * 4), a.y_shared = xmalloc((size_t)(T * D) * 4);
    ForwardContext ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.cfg = &c;
    ctx.fp8 = FP8_W8A8;
    float *lin = xmalloc(linear_scratch_floats(T, D) * 4);
    ctx.lin = linear_scratch_init(lin, T, D);
    ctx.gate_work = xmalloc((size_t)(2 * (E + G)) * 4);
    float *out_ref = xmalloc((size_t)(T * D) * 4);
    moe_forward(out_ref, x, T, &lw, &a, &ctx);

    /* GPU: logits from the same bf16 gate GEMM the reference ran (a->logits), then the kernels. */
    Err err = { { 0 } };
    DevBuf d_log = devbuf_new("logits", (size_t)(T * E) * 4), d_bias = devbuf_new("bias", (size_t)E * 4),
           d_idx = devbuf_new("idx", (size_t)R * 4), d_w = devbuf_new("weights", (size_t)R * 4),
           d_x = devbuf_new("x", (size_t)(T * D) * 4), d_xq = devbuf_new("xq", (size_t)(T * D)),
           d_xs = devbuf_new("xs", (size_t)(T * D / 128) * 4), d_perm = devbuf_new("perm", (size_t)R * 4),
           d_ros = devbuf_new("row_of_slot", (size_t)R * 4), d_start = devbuf_new("expert_start", (size_t)(E + 1) * 4),
           d_pws = devbuf_new("permute_ws", moe_permute_workspace_bytes(T, K, E)),
           d_aq = devbuf_new("xq_perm", (size_t)(R * D)), d_as = devbuf_new("xs_perm", (size_t)(R * D / 128) * 4),
           d_h13 = devbuf_new("h13", (size_t)(R * 2 * I) * 4), d_h = devbuf_new("h", (size_t)(R * I) * 4),
           d_hq = devbuf_new("hq", (size_t)(R * I)), d_hs = devbuf_new("hs", (size_t)(R * I / 128) * 4),
           d_y = devbuf_new("y_perm", (size_t)(R * D) * 4), d_w13 = devbuf_new("w13", (size_t)(E * 2 * I * D)),
           d_s13 = devbuf_new("s13", (size_t)(E * (2 * I / 128) * (D / 128)) * 4),
           d_w2 = devbuf_new("w2", (size_t)(E * D * I)), d_s2 = devbuf_new("s2", (size_t)(E * nblk(D) * (I / 128)) * 4),
           d_sw13 = devbuf_new("shared_w13", (size_t)(2 * I * D)), d_ss13 = devbuf_new("shared_s13", (size_t)((2 * I / 128) * (D / 128)) * 4),
           d_sw2 = devbuf_new("shared_w2", (size_t)(D * I)), d_ss2 = devbuf_new("shared_s2", (size_t)(nblk(D) * (I / 128)) * 4),
           d_sh13 = devbuf_new("shared_h13", (size_t)(T * 2 * I) * 4), d_shh = devbuf_new("shared_h", (size_t)(T * I) * 4),
           d_shq = devbuf_new("shared_hq", (size_t)(T * I)), d_shs = devbuf_new("shared_hs", (size_t)(T * I / 128) * 4),
           d_ysh = devbuf_new("y_shared", (size_t)(T * D) * 4), d_out = devbuf_new("out", (size_t)(T * D) * 4);
    devbuf_upload(&d_log, a.logits, (size_t)(T * E) * 4);
    devbuf_upload(&d_bias, bias, (size_t)E * 4);
    devbuf_upload(&d_x, x, (size_t)(T * D) * 4);
    devbuf_upload(&d_w13, ex.w13, (size_t)(E * 2 * I * D));
    devbuf_upload(&d_s13, ex.s13, (size_t)(E * (2 * I / 128) * (D / 128)) * 4);
    devbuf_upload(&d_w2, ex.w2, (size_t)(E * D * I));
    devbuf_upload(&d_s2, ex.s2, (size_t)(E * nblk(D) * (I / 128)) * 4);
    devbuf_upload(&d_sw13, sh.w13, (size_t)(2 * I * D));
    devbuf_upload(&d_ss13, sh.s13, (size_t)((2 * I / 128) * (D / 128)) * 4);
    devbuf_upload(&d_sw2, sh.w2, (size_t)(D * I));
    devbuf_upload(&d_ss2, sh.s2, (size_t)(nblk(D) * (I / 128)) * 4);
    devbuf_poison(&d_out, 0xFF);
    int rc = 0;
    rc = rc || gate_forward_cuda(d_idx.ptr, d_w.ptr, NULL, d_log.ptr, d_bias.ptr, T, &c, 0, &err);
    rc = rc || fp8_quantize_rows_cuda(d_xq.ptr, D, d_xs.ptr, d_x.ptr, FAST_F32, D, T, D, 0, &err);
    rc = rc || moe_permute_cuda(d_perm.ptr, d_ros.ptr, d_start.ptr, d_idx.ptr, T, K, E, d_pws.ptr, d_pws.bytes, 0, &err);
    rc = rc || moe_gather_rows_cuda(d_aq.ptr, d_as.ptr, d_xq.ptr, d_xs.ptr, d_perm.ptr, R, K, D, 0, &err);
    rc = rc || run_gemm(d_h13.ptr, d_aq.ptr, d_as.ptr, d_w13.ptr, d_s13.ptr, R, 2 * I, D, d_start.ptr, (int)E, &err);
    rc = rc || swiglu_forward_cuda(d_h.ptr, FAST_F32, I, d_h13.ptr, (float *)d_h13.ptr + I, FAST_F32, 2 * I, R, I, 0, &err);
    rc = rc || fp8_quantize_rows_cuda(d_hq.ptr, I, d_hs.ptr, d_h.ptr, FAST_F32, I, R, I, 0, &err);
    rc = rc || run_gemm(d_y.ptr, d_hq.ptr, d_hs.ptr, d_w2.ptr, d_s2.ptr, R, D, I, d_start.ptr, (int)E, &err);
    rc = rc || run_gemm(d_sh13.ptr, d_xq.ptr, d_xs.ptr, d_sw13.ptr, d_ss13.ptr, T, 2 * I, D, NULL, 1, &err);
    rc = rc || swiglu_forward_cuda(d_shh.ptr, FAST_F32, I, d_sh13.ptr, (float *)d_sh13.ptr + I, FAST_F32, 2 * I, T, I, 0, &err);
    rc = rc || fp8_quantize_rows_cuda(d_shq.ptr, I, d_shs.ptr, d_shh.ptr, FAST_F32, I, T, I, 0, &err);
    rc = rc || run_gemm(d_ysh.ptr, d_shq.ptr, d_shs.ptr, d_sw2.ptr, d_ss2.ptr, T, D, I, NULL, 1, &err);
    rc = rc || moe_combine_cuda(d_out.ptr, d_y.ptr, FAST_F32, d_ysh.ptr, FAST_F32, d_ros.ptr, d_w.ptr, T, K, D, 0, &err);
    char what[160];
    snprintf(what, sizeof what, "moe layer T=%lld E=%lld K=%lld D=%lld I=%lld vs ref moe_forward (W8A8)", (long long)T,
             (long long)E, (long long)K, (long long)D, (long long)I);
    if (launched(rc, &err, what)) {
        float *out = xmalloc((size_t)(T * D) * 4);
        int *idx_g = xmalloc((size_t)R * 4);
        devbuf_download(out, &d_out, (size_t)(T * D) * 4);
        devbuf_download(idx_g, &d_idx, (size_t)R * 4);
        guards(&d_out, what);
        /* Compare tokens routed identically (a near-tie flip changes a token's experts wholesale). */
        float *got = xmalloc((size_t)(T * D) * 4), *want = xmalloc((size_t)(T * D) * 4);
        int64_t n = 0, same = 0;
        for (int64_t t = 0; t < T; t++) {
            if (memcmp(idx_g + t * K, a.idx + t * K, (size_t)K * 4)) continue;
            same++;
            memcpy(got + n * D, out + t * D, (size_t)D * 4);
            memcpy(want + n * D, out_ref + t * D, (size_t)D * 4);
            n++;
        }
        report(same >= T - 1, "%s: %lld of %lld tokens routed identically", what, (long long)same, (long long)T);
        /* Tolerance: GEMM block partials (≤ 2^-8 of Σ|terms|, tested above) feed SwiGLU and a
         * second 1×128 quantization, where an input one ulp away can round to the neighbouring
         * e4m3 code (6% of one element); NMSE ≤ 1e-4 and |d| ≤ 2% of the row's max |value|. */
        float *tol = xmalloc((size_t)(n * D) * 4);
        for (int64_t r = 0; r < n; r++) {
            float mx = 0.0f;
            for (int64_t i = 0; i < D; i++) mx = fmaxf(mx, fabsf(want[r * D + i]));
            for (int64_t i = 0; i < D; i++) tol[r * D + i] = 0.02f * mx;
        }
        Tol tl = { 0.0, 0.0, tol, 1e-4 };
        check_close(what, got, want, n * D, D, tl);
        free(out), free(idx_g), free(got), free(want), free(tol);
    }
    DevBuf *all[] = { &d_log, &d_bias, &d_idx, &d_w, &d_x, &d_xq, &d_xs, &d_perm, &d_ros, &d_start, &d_pws,
                      &d_aq, &d_as, &d_h13, &d_h, &d_hq, &d_hs, &d_y, &d_w13, &d_s13, &d_w2, &d_s2, &d_sw13,
                      &d_ss13, &d_sw2, &d_ss2, &d_sh13, &d_shh, &d_shq, &d_shs, &d_ysh, &d_out };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) devbuf_free(all[i]);
    free(ex.w13), free(ex.w2), free(ex.s13), free(ex.s2), free(sh.w13), free(sh.w2), free(sh.s13), free(sh.s2);
    free(gate_w), free(bias), free(x), free(lw.experts), free(lin), free(ctx.gate_work), free(out_ref);
    free(a.logits), free(a.scores), free(a.idx), free(a.weights), free(a.perm), free(a.expert_start), free(a.x_perm);
    free(a.routed.h_gate), free(a.routed.h_up), free(a.routed.h_act), free(a.y_perm);
    free(a.shared.h_gate), free(a.shared.h_up), free(a.shared.h_act), free(a.y_shared);
}

static void test_moe(void) {
    printf("== moe (oracles: ref gate_forward, moe_permute, moe_combine, moe_forward)\n");
    Config c = moe_config();
    const int E = c.n_routed_experts, K = c.num_experts_per_tok;
    const int64_t T = g_quick ? 300 : 2000;
    float *logits = xmalloc((size_t)(T * E) * 4), *bias = xmalloc((size_t)E * 4);
    for (int64_t i = 0; i < T * E; i++) logits[i] = 2.0f * randn();
    for (int e = 0; e < E; e++) bias[e] = 0.5f * randn();
    gate_case("random", logits, bias, T, &c, 1);
    /* Exact ties everywhere, all other gaps ≥ 0.005 (checked when the values were chosen):
     * selection must match including the lower-index tie rule. */
    static const float lv[4] = { -1.3f, 0.2f, 0.9f, 2.1f }, bv[2] = { 0.0f, 0.37f };
    for (int64_t i = 0; i < T * E; i++) logits[i] = lv[randint(4)];
    for (int e = 0; e < E; e++) bias[e] = bv[randint(2)];
    gate_case("ties", logits, bias, T, &c, 0);
    /* Permutation on the gate's own output, on a skewed routing, and across many chunks. */
    int *idx = xmalloc((size_t)(5000 * K) * 4);
    float *work = xmalloc((size_t)(2 * (E + c.n_group)) * 4), *w = xmalloc((size_t)K * 4), *sc = xmalloc((size_t)E * 4);
    for (int64_t t = 0; t < T; t++) gate_forward(idx + t * K, w, sc, logits + t * E, bias, &c, work);
    permute_case("gate output", idx, T, K, E);
    for (int64_t i = 0; i < 5000 * K; i++) idx[i] = (int)(i % K) + (randint(3) == 0 ? 8 : 0); /* 16 busy experts */
    permute_case("skewed", idx, 5000, K, E);
    for (int64_t i = 0; i < 5000 * K; i++) idx[i] = randint(E);
    permute_case("uniform, 40 chunks", idx, 5000, K, E);
    permute_case("one token", idx, 1, K, E);
    gather_case(g_quick ? 100 : 1000, K, 7168, E);
    combine_case(g_quick ? 50 : 300, K, 7168, E, FAST_F32);
    combine_case(g_quick ? 50 : 300, K, 7168, E, FAST_BF16);
    /* The small checkpoints' routers, E not a multiple of 32: fp8-small (E = 12, 3 groups, keep
     * 2, top-3) and official-tiny (E = 16, 4 groups, keep 2, top-4); random and exact ties. */
    static const int small_cfg[2][4] = { { 12, 3, 2, 3 }, { 16, 4, 2, 4 } };
    for (int i = 0; i < 2; i++) {
        Config cs = c;
        cs.n_routed_experts = small_cfg[i][0], cs.n_group = small_cfg[i][1], cs.topk_group = small_cfg[i][2];
        cs.num_experts_per_tok = small_cfg[i][3];
        const int Es = cs.n_routed_experts;
        char label[64];
        for (int64_t j = 0; j < T * Es; j++) logits[j] = 2.0f * randn();
        for (int e = 0; e < Es; e++) bias[e] = 0.5f * randn();
        snprintf(label, sizeof label, "random E=%d G=%d topk_group=%d K=%d", Es, cs.n_group, cs.topk_group,
                 cs.num_experts_per_tok);
        gate_case(label, logits, bias, T, &cs, 1);
        for (int64_t j = 0; j < T * Es; j++) logits[j] = lv[randint(4)];
        for (int e = 0; e < Es; e++) bias[e] = bv[randint(2)];
        snprintf(label, sizeof label, "ties E=%d G=%d topk_group=%d K=%d", Es, cs.n_group, cs.topk_group,
                 cs.num_experts_per_tok);
        gate_case(label, logits, bias, T, &cs, 0);
    }
    if (g_dev.cc_major * 10 + g_dev.cc_minor >= 89) moe_layer_case(g_quick ? 48 : 256);
    else printf("  SKIP: moe layer (FP8 GEMM needs compute capability 8.9)\n");
    free(logits), free(bias), free(idx), free(work), free(w), free(sc);
}

/* =========================================================================================
 * Small ops.
 * ======================================================================================= */

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

static void test_ops(void) {
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

/* =========================================================================================
 * generic (fast/generic.h): the SIMT kernels for every shape and dtype the tensor-core kernels
 * do not take, each against its reference function on the same inputs. Outputs are poisoned
 * (0xFF = NaN) and guarded; what a launcher must not write (rows outside every group, columns
 * past N, cache rows of other tokens, padding of strided rows) must still hold the poison.
 * ======================================================================================= */

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
            fp8_quantize_row(xq + r * K, sx + r * kb, xr + r * K, K);
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
        rc = fp8_quantize_rows_f32_cuda(dxq.ptr, dxs.ptr, dx.ptr, ldx, M, K, 0, &err);
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
    for (int64_t m = 0; m < M; m++) fp8_quantize_row(xq + m * K, sc + m * kb, x + m * ldx, K);
    DevBuf dx = dev_copy("x", x, (size_t)(M * ldx) * 4), dq = devbuf_new("xq", (size_t)(M * K) * 4),
           ds = devbuf_new("scale", (size_t)(M * kb) * 4);
    devbuf_poison(&dq, 0xFF), devbuf_poison(&ds, 0xFF);
    char what[200];
    snprintf(what, sizeof what, "fp8_quantize_rows_f32 %s M=%lld K=%lld ldx=%lld", label, (long long)M, (long long)K,
             (long long)ldx);
    Err err = { { 0 } };
    if (launched(fp8_quantize_rows_f32_cuda(dq.ptr, ds.ptr, dx.ptr, ldx, M, K, 0, &err), &err, what)) {
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
static void test_generic(void) {
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

/* ========================================================================================= */

static int want_group(const char *name, char **groups, int ngroups) {
    if (ngroups == 0) return 1;
    for (int i = 0; i < ngroups; i++)
        if (strcmp(groups[i], name) == 0) return 1;
    return 0;
}

int main(int argc, char **argv) {
    char *groups[16];
    int ngroups = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) g_quick = 1;
        else if (strcmp(argv[i], "--group") == 0 && i + 1 < argc && ngroups < 16) groups[ngroups++] = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--quick] [--group ops|act_quant|gemm_mma|gemm_wgmma|mla|moe|generic]...\n", argv[0]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        printf("SKIP: no CUDA device (cudaGetDeviceCount: %s, %d devices)\n",
               e != cudaSuccess ? cudaGetErrorString(e) : "ok", count);
        printf("test_gpu_kernels: 0 passed, 0 failed (skipped: no GPU)\n");
        return 0;
    }
    Err err = { { 0 } };
    if (fast_device(&g_dev, &err)) {
        printf("test_gpu_kernels: 0 passed, 1 failed (%s)\n", err.msg);
        return 1;
    }
    printf("device: %s, compute capability %d.%d, %d SMs, %zu KiB shared memory per block (opt-in), %zu MiB L2%s\n",
           g_dev.name, g_dev.cc_major, g_dev.cc_minor, g_dev.sm_count, g_dev.smem_optin / 1024,
           g_dev.l2_bytes >> 20, g_quick ? "; --quick" : "");
    rng_seed(&g_rng, 20240707);
    if (want_group("ops", groups, ngroups)) test_ops();
    if (want_group("act_quant", groups, ngroups)) test_act_quant();
    if (want_group("gemm_mma", groups, ngroups)) test_gemm(FP8_GEMM_MMA);
    if (want_group("mla", groups, ngroups)) test_mla();
    if (want_group("moe", groups, ngroups)) test_moe();
    if (want_group("generic", groups, ngroups)) test_generic();
    if (want_group("gemm_wgmma", groups, ngroups)) test_gemm(FP8_GEMM_WGMMA); /* last: a trap would end the process */
    int passed, failed;
    report_counts(&passed, &failed);
    printf("test_gpu_kernels: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
