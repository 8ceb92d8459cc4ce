/**
 * @file bench_kernels.c
 * @brief Times every fast/ kernel on DeepSeek-V3 shapes with CUDA events (median of many
 *        runs after warm-up; weights rotated among copies that together exceed 3× L2, so
 *        small matrices are not timed out of cache; random data, never zeros) and prints,
 *        per line, time, TFLOP/s, GB/s and ratios against peers measured in the same run on
 *        the same data: cuBLASLt BF16 (weights dequantized to BF16) and, where cuBLASLt
 *        accepts it, cuBLASLt FP8 with 1×128 / 128×128 block scales. Lines starting with
 *        "RESULT" are machine-readable (key=value).
 *
 * Usage: bench_gpu_kernels [--only gemm|grouped|mla|ops]... [--shape NxK] [--m M] [--mla BxS] [--mla-sweep]
 *                          [--split-sweep] [--impl cublaslt-fp8]
 * (--shape/--m/--mla narrow the GEMM shapes, the GEMM row counts and the MLA cases; --mla-sweep also
 * times MLA split counts 1..64, * marks the automatic choice; --split-sweep times the MMA GEMM's
 * split-K 1..32 at M <= 64; --impl times cuBLASLt's FP8 GEMM alone: for ncu).
 * Peaks used for "% of peak" (H100 SXM datasheet, dense): FP8 1979 TFLOP/s, BF16 989, HBM 3.35 TB/s.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>

#include "act_quant.h"
#include "fast.h"
#include "fp8_gemm.h"
#include "gpu_fill.h"
#include "gpu_util.h"
#include "mla_decode.h"
#include "moe_cuda.h"
#include "ops.h"
#include "base/rng.h"
#include "base/util.h"

#define PEAK_FP8 1979e12
#define PEAK_BF16 989e12
#define PEAK_BW 3.35e12

static FastDevice g_dev;
static int64_t g_only_n, g_only_k, g_only_m; /* 0: all */
static int g_only_b, g_only_s;
static int g_split_sweep;   /* --split-sweep: also time the MMA path's split-K 1..32 at M <= 64 */
static int g_mla_sweep;     /* --mla-sweep: also time split counts 1, 2, 4, ..., 64 */
static int g_peer_fp8_only; /* --impl cublaslt-fp8: time only cuBLASLt's FP8 GEMM (for ncu) */
static cublasLtHandle_t g_lt;
static void *g_lt_ws;
static const size_t LT_WS_BYTES = 64u << 20;

static void *dmalloc(size_t n) {
    void *p = NULL;
    CHECK_CUDA(cudaMalloc(&p, n ? n : 1));
    return p;
}

/* ---- timing ------------------------------------------------------------------------------ */

/** A benchmarked operation: returns 0 on success; rep selects the rotating input copy. */
typedef int (*BenchFn)(void *ctx, int rep);

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/**
 * Median time in µs of fn over enough repetitions for ~300 ms (5..200), after 3 warm-ups;
 * each repetition between its own pair of events. Returns a negative value if fn fails.
 */
static double time_us(BenchFn fn, void *ctx) {
    cudaEvent_t ev[2];
    CHECK_CUDA(cudaEventCreate(&ev[0]));
    CHECK_CUDA(cudaEventCreate(&ev[1]));
    for (int i = 0; i < 3; i++)
        if (fn(ctx, i)) return -1.0;
    gpu_sync_or_die(120.0, "bench warm-up");
    CHECK_CUDA(cudaEventRecord(ev[0], 0));
    if (fn(ctx, 3)) return -1.0;
    CHECK_CUDA(cudaEventRecord(ev[1], 0));
    float first = event_ms(ev[0], ev[1]);
    int reps = first > 0 ? (int)(300.0 / first) : 200;
    reps = reps < 5 ? 5 : reps > 200 ? 200 : reps;
    float *t = malloc((size_t)reps * sizeof *t);
    cudaEvent_t *evs = malloc((size_t)(reps + 1) * sizeof *evs);
    for (int i = 0; i <= reps; i++) CHECK_CUDA(cudaEventCreate(&evs[i]));
    CHECK_CUDA(cudaEventRecord(evs[0], 0));
    int failed = 0;
    for (int i = 0; i < reps && !failed; i++) {
        failed = fn(ctx, 4 + i);
        CHECK_CUDA(cudaEventRecord(evs[i + 1], 0));
    }
    gpu_sync_or_die(600.0, "bench");
    for (int i = 0; i < reps; i++) t[i] = failed ? 0 : event_ms(evs[i], evs[i + 1]);
    qsort(t, (size_t)reps, sizeof *t, cmp_float);
    double med = failed ? -1.0 : 1000.0 * t[reps / 2];
    for (int i = 0; i <= reps; i++) cudaEventDestroy(evs[i]);
    cudaEventDestroy(ev[0]), cudaEventDestroy(ev[1]);
    free(t), free(evs);
    return med;
}

/** Copies of an input so that `copies × bytes` ≥ 3 × L2 (at most 64, at least 1). */
static int rotation(size_t bytes) {
    size_t want = 3 * g_dev.l2_bytes;
    int n = (int)((want + bytes - 1) / (bytes ? bytes : 1));
    return n < 1 ? 1 : n > 64 ? 64 : n;
}

/* ---- dense GEMM ------------------------------------------------------------------------- */

typedef struct {
    int64_t M, N, K;
    int copies;
    uint8_t **b;         /* [copies] e4m3 [N][K] */
    float **bs;          /* [copies] [N/128][K/128] */
    uint16_t **b16;      /* [copies] bf16 [N][K] (dequantized) */
    uint8_t *a;          /* [M][K] */
    float *as;           /* [M][K/128] */
    float *as_t;         /* [K/128][M] (cuBLASLt's VEC128 layout) */
    uint16_t *a16;       /* [M][K] bf16 */
    uint16_t *out;       /* [M][N] bf16 */
    uint16_t *out_peer;  /* [M][N] bf16 */
    float *ws;
    size_t ws_bytes;
    int splits; /* FP8_GEMM_MMA split-K factor; 0 = automatic */
    Fp8GemmPath path;
    const int *group_start;
    int groups;
    Err err;
    /* cuBLASLt plans */
    cublasLtMatmulDesc_t op16, op8;
    cublasLtMatrixLayout_t la16, lb16, lc16, la8, lb8, lc8;
    cublasLtMatmulAlgo_t algo16, algo8;
    int have16, have8;
    char why8[160];
} GemmBench;

static int run_ours(void *ctx, int rep) {
    GemmBench *g = ctx;
    Fp8GemmParams p;
    memset(&p, 0, sizeof p);
    p.out = g->out, p.out_dtype = FAST_BF16, p.ldo = g->N;
    p.a = g->a, p.a_scale = g->as, p.b = g->b[rep % g->copies], p.b_scale = g->bs[rep % g->copies];
    p.M = g->M, p.N = g->N, p.K = g->K, p.path = g->path, p.splits = g->splits, p.workspace = g->ws,
    p.workspace_bytes = g->ws_bytes, p.group_start = g->group_start, p.num_groups = g->groups ? g->groups : 1;
    return fp8_gemm_cuda(&p, 0, &g->err);
}

static int run_bf16(void *ctx, int rep) {
    GemmBench *g = ctx;
    const float alpha = 1.0f, beta = 0.0f;
    cublasStatus_t st = cublasLtMatmul(g_lt, g->op16, &alpha, g->b16[rep % g->copies], g->la16, g->a16, g->lb16, &beta,
                                       g->out_peer, g->lc16, g->out_peer, g->lc16, &g->algo16, g_lt_ws, LT_WS_BYTES, 0);
    return st != CUBLAS_STATUS_SUCCESS;
}

static int run_fp8(void *ctx, int rep) {
    GemmBench *g = ctx;
    const float alpha = 1.0f, beta = 0.0f;
    void *sa = g->bs[rep % g->copies], *sb = g->as_t;
    cublasLtMatmulDescSetAttribute(g->op8, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof sa);
    cublasLtMatmulDescSetAttribute(g->op8, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof sb);
    cublasStatus_t st = cublasLtMatmul(g_lt, g->op8, &alpha, g->b[rep % g->copies], g->la8, g->a, g->lb8, &beta,
                                       g->out_peer, g->lc8, g->out_peer, g->lc8, &g->algo8, g_lt_ws, LT_WS_BYTES, 0);
    return st != CUBLAS_STATUS_SUCCESS;
}

/**
 * out = W·X as cuBLASLt sees it: column-major D (N × M, ld N) = op(A)·B with A = W stored
 * K × N (ld K) transposed and B = X stored K × M (ld K) — the row-major [M][N] = X·Wᵀ.
 */
static void plan_peers(GemmBench *g) {
    const int64_t M = g->M, N = g->N, K = g->K;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    size_t wsb = LT_WS_BYTES;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
    cublasLtMatmulHeuristicResult_t h;
    int n = 0;
    /* BF16 */
    cublasLtMatmulDescCreate(&g->op16, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatmulDescSetAttribute(g->op16, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    cublasLtMatmulDescSetAttribute(g->op16, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    cublasLtMatrixLayoutCreate(&g->la16, CUDA_R_16BF, (uint64_t)K, (uint64_t)N, K);
    cublasLtMatrixLayoutCreate(&g->lb16, CUDA_R_16BF, (uint64_t)K, (uint64_t)M, K);
    cublasLtMatrixLayoutCreate(&g->lc16, CUDA_R_16BF, (uint64_t)N, (uint64_t)M, N);
    g->have16 = cublasLtMatmulAlgoGetHeuristic(g_lt, g->op16, g->la16, g->lb16, g->lc16, g->lc16, pref, 1, &h, &n) ==
                    CUBLAS_STATUS_SUCCESS &&
                n > 0;
    if (g->have16) g->algo16 = h.algo;
    /* FP8 with DeepSeek block scales: A (weights) 128×128 blocks, B (activations) 1×128 groups. */
    cublasLtMatmulDescCreate(&g->op8, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatmulDescSetAttribute(g->op8, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    cublasLtMatmulDescSetAttribute(g->op8, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    int32_t ma = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, mb = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    cublasStatus_t s1 = cublasLtMatmulDescSetAttribute(g->op8, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &ma, sizeof ma);
    cublasStatus_t s2 = cublasLtMatmulDescSetAttribute(g->op8, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mb, sizeof mb);
    void *sa = g->bs[0], *sb = g->as_t;
    cublasLtMatmulDescSetAttribute(g->op8, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof sa);
    cublasLtMatmulDescSetAttribute(g->op8, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof sb);
    cublasLtMatrixLayoutCreate(&g->la8, CUDA_R_8F_E4M3, (uint64_t)K, (uint64_t)N, K);
    cublasLtMatrixLayoutCreate(&g->lb8, CUDA_R_8F_E4M3, (uint64_t)K, (uint64_t)M, K);
    cublasLtMatrixLayoutCreate(&g->lc8, CUDA_R_16BF, (uint64_t)N, (uint64_t)M, N);
    cublasStatus_t s3 = cublasLtMatmulAlgoGetHeuristic(g_lt, g->op8, g->la8, g->lb8, g->lc8, g->lc8, pref, 1, &h, &n);
    g->have8 = s1 == CUBLAS_STATUS_SUCCESS && s2 == CUBLAS_STATUS_SUCCESS && s3 == CUBLAS_STATUS_SUCCESS && n > 0;
    if (g->have8) g->algo8 = h.algo;
    else
        snprintf(g->why8, sizeof g->why8, "refused: scale modes %d/%d, heuristic %d with %d results", (int)s1, (int)s2,
                 (int)s3, n);
    cublasLtMatmulPreferenceDestroy(pref);
}

static void free_peers(GemmBench *g) {
    cublasLtMatmulDescDestroy(g->op16), cublasLtMatmulDescDestroy(g->op8);
    cublasLtMatrixLayoutDestroy(g->la16), cublasLtMatrixLayoutDestroy(g->lb16), cublasLtMatrixLayoutDestroy(g->lc16);
    cublasLtMatrixLayoutDestroy(g->la8), cublasLtMatrixLayoutDestroy(g->lb8), cublasLtMatrixLayoutDestroy(g->lc8);
}

/** NMSE of two bf16 device arrays of n values (peer vs ours, same inputs). */
static double nmse_bf16(const uint16_t *a, const uint16_t *b, int64_t n) {
    uint16_t *ha = malloc((size_t)n * 2), *hb = malloc((size_t)n * 2);
    gpu_sync_or_die(120.0, "nmse");
    CHECK_CUDA(cudaMemcpy(ha, a, (size_t)n * 2, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(hb, b, (size_t)n * 2, cudaMemcpyDeviceToHost));
    double se = 0, sw = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = bf16_to_f32(ha[i]), y = bf16_to_f32(hb[i]);
        se += (x - y) * (x - y), sw += y * y;
    }
    free(ha), free(hb);
    return sw > 0 ? se / sw : se;
}

static void print_time(const char *label, double us, double flops, double wbytes) {
    if (us < 0) {
        printf("  %-16s refused\n", label);
        return;
    }
    printf("  %-16s %9.1f us %8.1f TFLOP/s (%4.1f%% of FP8 peak) %7.0f GB/s weights (%4.1f%% of HBM)\n", label, us,
           flops / us * 1e-6, 100.0 * flops / (us * 1e-6) / PEAK_FP8, wbytes / us * 1e-3,
           100.0 * wbytes / (us * 1e-6) / PEAK_BW);
}

/* Times each of our paths (WGMMA on sm_90 only) and prints a line and a RESULT line per path;
 * @p kernel and @p shape ("N=.. K=.. M=..") label the RESULT. Returns the best time (µs), or −1. */
static double time_our_paths(GemmBench *g, const char *kernel, const char *shape, double flops, double wbytes) {
    double best = -1.0;
    for (int path = FP8_GEMM_AUTO; path <= FP8_GEMM_WGMMA; path++) {
        if (path == FP8_GEMM_WGMMA && !(g_dev.cc_major == 9 && g_dev.cc_minor == 0)) continue;
        g->path = (Fp8GemmPath)path;
        double us = time_us(run_ours, g);
        char label[32];
        snprintf(label, sizeof label, "dsv3 %s", fp8_gemm_path_name(g->path));
        print_time(label, us, flops, wbytes);
        if (us < 0) printf("    (%s)\n", g->err.msg);
        else printf("RESULT kernel=%s impl=dsv3_%s %s us=%.2f tflops=%.2f weight_gbs=%.1f\n", kernel,
                    fp8_gemm_path_name(g->path), shape, us, flops / us * 1e-6, wbytes / us * 1e-3);
        if (us > 0 && (best < 0 || us < best)) best = us;
    }
    return best;
}

static void bench_gemm_shape(int64_t N, int64_t K) {
    static const int64_t Ms[] = { 1, 16, 64, 512, 4096 };
    const int64_t nb = (N + 127) / 128, kb = K / 128;
    GemmBench g;
    memset(&g, 0, sizeof g);
    g.N = N, g.K = K;
    g.copies = rotation((size_t)(N * K) * 3); /* e4m3 + bf16 copies rotate together */
    g.b = malloc((size_t)g.copies * sizeof *g.b), g.bs = malloc((size_t)g.copies * sizeof *g.bs);
    g.b16 = malloc((size_t)g.copies * sizeof *g.b16);
    for (int c = 0; c < g.copies; c++) {
        g.b[c] = dmalloc((size_t)(N * K)), g.bs[c] = dmalloc((size_t)(nb * kb) * 4), g.b16[c] = dmalloc((size_t)(N * K) * 2);
        CHECK_CUDA(gpu_fill_e4m3(g.b[c], (size_t)(N * K), 1000 + c, 0));
        CHECK_CUDA(gpu_fill_uniform(g.bs[c], (size_t)(nb * kb), 1e-4f, 1e-3f, 2000 + c, 0));
        CHECK_CUDA(gpu_dequant_bf16(g.b16[c], g.b[c], g.bs[c], N, K, 128, 0));
    }
    printf("== gemm N=%lld K=%lld (weights %.1f MB e4m3, %d rotating copies)\n", (long long)N, (long long)K,
           (double)(N * K) / 1e6, g.copies);
    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
        const int64_t M = Ms[mi];
        if (g_only_m && M != g_only_m) continue;
        g.M = M;
        g.a = dmalloc((size_t)(M * K)), g.as = dmalloc((size_t)(M * kb) * 4), g.as_t = dmalloc((size_t)(M * kb) * 4);
        g.a16 = dmalloc((size_t)(M * K) * 2), g.out = dmalloc((size_t)(M * N) * 2), g.out_peer = dmalloc((size_t)(M * N) * 2);
        CHECK_CUDA(gpu_fill_e4m3(g.a, (size_t)(M * K), 3000 + mi, 0));
        CHECK_CUDA(gpu_fill_uniform(g.as, (size_t)(M * kb), 1e-3f, 1e-2f, 4000 + mi, 0));
        {   /* the VEC128 layout is the transpose of ours: same values */
            float *h = malloc((size_t)(M * kb) * 4), *ht = malloc((size_t)(M * kb) * 4);
            gpu_sync_or_die(60.0, "scales");
            CHECK_CUDA(cudaMemcpy(h, g.as, (size_t)(M * kb) * 4, cudaMemcpyDeviceToHost));
            for (int64_t m = 0; m < M; m++)
                for (int64_t b = 0; b < kb; b++) ht[b * M + m] = h[m * kb + b];
            CHECK_CUDA(cudaMemcpy(g.as_t, ht, (size_t)(M * kb) * 4, cudaMemcpyHostToDevice));
            free(h), free(ht);
        }
        CHECK_CUDA(gpu_dequant_bf16(g.a16, g.a, g.as, M, K, 1, 0));
        g.ws_bytes = fp8_gemm_workspace_bytes(M, N, K);
        g.ws = g.ws_bytes ? dmalloc(g.ws_bytes) : NULL;
        const double flops = 2.0 * (double)M * (double)N * (double)K, wbytes = (double)(N * K);
        printf(" M=%lld\n", (long long)M);
        char shape[96];
        snprintf(shape, sizeof shape, "N=%lld K=%lld M=%lld", (long long)N, (long long)K, (long long)M);
        const double best = g_peer_fp8_only ? -1.0 : time_our_paths(&g, "gemm", shape, flops, wbytes);
        if (g_split_sweep && M <= 64) {
            const size_t wsb = (size_t)32 * (size_t)(M * N) * sizeof(float);
            void *ws = dmalloc(wsb), *ws_auto = g.ws;
            const size_t wsb_auto = g.ws_bytes;
            g.ws = ws, g.ws_bytes = wsb, g.path = FP8_GEMM_MMA;
            for (int sp = 1; sp <= 32; sp *= 2) {
                g.splits = sp;
                const double us = time_us(run_ours, &g);
                if (us > 0)
                    printf("RESULT kernel=gemm_splits impl=dsv3_mma N=%lld K=%lld M=%lld splits=%d us=%.2f weight_gbs=%.1f\n",
                           (long long)N, (long long)K, (long long)M, sp, us, wbytes / us * 1e-3);
            }
            g.splits = 0, g.ws = ws_auto, g.ws_bytes = wsb_auto;
            cudaFree(ws);
        }
        plan_peers(&g);
        double us16 = g.have16 && !g_peer_fp8_only ? time_us(run_bf16, &g) : -1.0;
        print_time("cuBLASLt bf16", us16, flops, 2 * wbytes);
        if (us16 > 0)
            printf("RESULT kernel=gemm impl=cublaslt_bf16 N=%lld K=%lld M=%lld us=%.2f tflops=%.2f\n", (long long)N,
                   (long long)K, (long long)M, us16, flops / us16 * 1e-6);
        double us8 = g.have8 ? time_us(run_fp8, &g) : -1.0;
        if (g.have8 && us8 > 0 && g_peer_fp8_only) {
            print_time("cuBLASLt fp8-blk", us8, flops, wbytes);
        } else if (g.have8 && us8 > 0) {
            print_time("cuBLASLt fp8-blk", us8, flops, wbytes);
            /* Same inputs, same contract: the outputs should agree to bf16 rounding. */
            run_ours(&g, 0), run_fp8(&g, 0);
            double e = nmse_bf16(g.out_peer, g.out, M * N);
            printf("    cuBLASLt fp8-blk vs dsv3: NMSE %.2e%s\n", e, e > 1e-4 ? "  <-- differs: scale layout?" : "");
            printf("RESULT kernel=gemm impl=cublaslt_fp8_block N=%lld K=%lld M=%lld us=%.2f tflops=%.2f nmse_vs_dsv3=%.3g\n",
                   (long long)N, (long long)K, (long long)M, us8, flops / us8 * 1e-6, e);
        } else {
            printf("  %-16s %s\n", "cuBLASLt fp8-blk", g.have8 ? "failed at run time" : g.why8);
        }
        if (best > 0 && us16 > 0) printf("    best dsv3 / cuBLASLt bf16: %.2fx faster\n", us16 / best);
        if (best > 0 && us8 > 0) printf("    best dsv3 / cuBLASLt fp8-blk: %.2fx faster\n", us8 / best);
        free_peers(&g);
        cudaFree(g.a), cudaFree(g.as), cudaFree(g.as_t), cudaFree(g.a16), cudaFree(g.out), cudaFree(g.out_peer);
        if (g.ws) cudaFree(g.ws);
    }
    for (int c = 0; c < g.copies; c++) cudaFree(g.b[c]), cudaFree(g.bs[c]), cudaFree(g.b16[c]);
    free(g.b), free(g.bs), free(g.b16);
}

/* ---- grouped GEMM (MoE) ---------------------------------------------------------------- */

static void bench_grouped(int64_t N, int64_t K, int64_t T) {
    const int64_t TOPK = 8, E = 256, R = T * TOPK, nb = (N + 127) / 128, kb = K / 128;
    /* Uniform routing, K distinct experts per token (the load a balanced router aims for). */
    Rng rng;
    rng_seed(&rng, 7);
    int *count = calloc((size_t)E, sizeof *count), *start = malloc((size_t)(E + 1) * sizeof *start);
    for (int64_t t = 0; t < T; t++) {
        int chosen[8];
        for (int k = 0; k < TOPK; k++) {
            int e, dup;
            do {
                e = (int)(rng_u32(&rng) % E), dup = 0;
                for (int j = 0; j < k; j++) dup |= chosen[j] == e;
            } while (dup);
            chosen[k] = e;
            count[e]++;
        }
    }
    start[0] = 0;
    for (int e = 0; e < E; e++) start[e + 1] = start[e] + count[e];
    GemmBench g;
    memset(&g, 0, sizeof g);
    g.M = R, g.N = N, g.K = K, g.copies = 1, g.groups = (int)E;
    g.b = malloc(sizeof *g.b), g.bs = malloc(sizeof *g.bs);
    g.b[0] = dmalloc((size_t)(E * N * K)), g.bs[0] = dmalloc((size_t)(E * nb * kb) * 4);
    g.a = dmalloc((size_t)(R * K)), g.as = dmalloc((size_t)(R * kb) * 4), g.out = dmalloc((size_t)(R * N) * 2);
    int *d_start = dmalloc((size_t)(E + 1) * 4);
    CHECK_CUDA(cudaMemcpy(d_start, start, (size_t)(E + 1) * 4, cudaMemcpyHostToDevice));
    g.group_start = d_start;
    CHECK_CUDA(gpu_fill_e4m3(g.b[0], (size_t)(E * N * K), 11, 0));
    CHECK_CUDA(gpu_fill_uniform(g.bs[0], (size_t)(E * nb * kb), 1e-4f, 1e-3f, 12, 0));
    CHECK_CUDA(gpu_fill_e4m3(g.a, (size_t)(R * K), 13, 0));
    CHECK_CUDA(gpu_fill_uniform(g.as, (size_t)(R * kb), 1e-3f, 1e-2f, 14, 0));
    int64_t touched = 0; /* experts with at least one row: the weights that must be read */
    for (int e = 0; e < E; e++) touched += count[e] > 0;
    const double flops = 2.0 * (double)R * (double)N * (double)K, wbytes = (double)(touched * N * K);
    const double floor_us = fmax(flops / PEAK_FP8, (wbytes + (double)(R * K) + 2.0 * (double)(R * N)) / PEAK_BW) * 1e6;
    printf("== grouped gemm (MoE) T=%lld top-%lld E=%lld (%lld experts hit): N=%lld K=%lld, %.3f TFLOP, %.2f GB of "
           "weights; roofline floor %.0f us = %.0f TFLOP/s\n",
           (long long)T, (long long)TOPK, (long long)E, (long long)touched, (long long)N, (long long)K, flops * 1e-12,
           wbytes * 1e-9, floor_us, flops / floor_us * 1e-6);
    char shape[96];
    snprintf(shape, sizeof shape, "N=%lld K=%lld T=%lld topk=%lld E=%lld", (long long)N, (long long)K, (long long)T,
             (long long)TOPK, (long long)E);
    time_our_paths(&g, "grouped_gemm", shape, flops, wbytes);
    cudaFree(g.b[0]), cudaFree(g.bs[0]), cudaFree(g.a), cudaFree(g.as), cudaFree(g.out), cudaFree(d_start);
    free(g.b), free(g.bs), free(count), free(start);
}

/* ---- MLA decode ------------------------------------------------------------------------- */

typedef struct {
    MlaDecodeParams p;
    int copies;
    uint16_t **cache;
    Err err;
} MlaBench;

static int run_mla(void *ctx, int rep) {
    MlaBench *m = ctx;
    MlaDecodeParams p = m->p;
    p.kv_cache = m->cache[rep % m->copies];
    return mla_decode_cuda(&p, 0, &m->err);
}

static void bench_mla(int B, int S) {
    const int H = 128, D = MLA_DC + MLA_DR, pages = (S + MLA_PAGE - 1) / MLA_PAGE;
    const int64_t nblocks = (int64_t)B * pages;
    const size_t cache_bytes = (size_t)nblocks * MLA_PAGE * D * 2;
    MlaBench m;
    memset(&m, 0, sizeof m);
    m.copies = rotation(cache_bytes);
    m.cache = malloc((size_t)m.copies * sizeof *m.cache);
    for (int c = 0; c < m.copies; c++) {
        m.cache[c] = dmalloc(cache_bytes);
        CHECK_CUDA(gpu_fill_bf16(m.cache[c], cache_bytes / 2, 1.0f, 100 + c, 0));
    }
    /* Each request's pages scattered over the pool (a shuffled block table). */
    int *table = malloc((size_t)nblocks * 4), *lens = malloc((size_t)B * 4);
    for (int64_t i = 0; i < nblocks; i++) table[i] = (int)i;
    Rng rng;
    rng_seed(&rng, 5);
    for (int64_t i = nblocks - 1; i > 0; i--) {
        int64_t j = rng_u32(&rng) % (uint32_t)(i + 1);
        int t = table[i];
        table[i] = table[j], table[j] = t;
    }
    for (int b = 0; b < B; b++) lens[b] = S;
    int *d_table = dmalloc((size_t)nblocks * 4), *d_lens = dmalloc((size_t)B * 4);
    CHECK_CUDA(cudaMemcpy(d_table, table, (size_t)nblocks * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(d_lens, lens, (size_t)B * 4, cudaMemcpyHostToDevice));
    uint16_t *qa = dmalloc((size_t)B * H * MLA_DC * 2), *qp = dmalloc((size_t)B * H * MLA_DR * 2);
    CHECK_CUDA(gpu_fill_bf16(qa, (size_t)B * H * MLA_DC, 1.0f, 1, 0));
    CHECK_CUDA(gpu_fill_bf16(qp, (size_t)B * H * MLA_DR, 1.0f, 2, 0));
    float *u = dmalloc((size_t)B * H * MLA_DC * 4);
    const int auto_splits = mla_decode_num_splits(B, H, S);
    const size_t wsb = mla_decode_workspace_bytes(B, H, g_mla_sweep ? 64 : auto_splits);
    void *ws = wsb ? dmalloc(wsb) : NULL;
    m.p.u = u, m.p.q_abs = qa, m.p.q_pe = qp, m.p.block_table = d_table, m.p.block_table_stride = pages;
    m.p.seq_lens = d_lens, m.p.B = B, m.p.H = H, m.p.max_seq_len = S, m.p.scale = 0.1352337788608801f;
    m.p.workspace = ws, m.p.workspace_bytes = wsb;
    const double bytes = (double)B * S * D * 2, flops = 2.0 * B * H * (double)S * (MLA_DC + D);
    for (int sweep = 0; sweep <= (g_mla_sweep ? 7 : 0); sweep++) {
        const int splits = sweep == 0 ? auto_splits : 1 << (sweep - 1); /* auto first, then 1..64 */
        if (sweep > 0 && splits == auto_splits) continue;
        m.p.num_splits = splits;
        double us = time_us(run_mla, &m);
        if (us < 0) {
            printf("  mla B=%d S=%d splits=%d: failed: %s\n", B, S, splits, m.err.msg);
            continue;
        }
        printf("  mla B=%3d S=%5d splits=%2d%s: %8.1f us %7.0f GB/s of cache (%4.1f%% of HBM) %6.1f TFLOP/s (%4.1f%% "
               "of BF16 peak)\n",
               B, S, splits, sweep ? "" : "*", us, bytes / us * 1e-3, 100.0 * bytes / (us * 1e-6) / PEAK_BW,
               flops / us * 1e-6, 100.0 * flops / (us * 1e-6) / PEAK_BF16);
        printf("RESULT kernel=mla_decode impl=dsv3 B=%d S=%d H=%d splits=%d auto=%d us=%.2f gbs=%.1f tflops=%.2f\n", B,
               S, H, splits, !sweep, us, bytes / us * 1e-3, flops / us * 1e-6);
    }
    for (int c = 0; c < m.copies; c++) cudaFree(m.cache[c]);
    cudaFree(d_table), cudaFree(d_lens), cudaFree(qa), cudaFree(qp), cudaFree(u);
    if (ws) cudaFree(ws);
    free(m.cache), free(table), free(lens);
}

/* ---- small ops -------------------------------------------------------------------------- */

typedef struct {
    int kind;
    int64_t T, D;
    void *x, *y, *z, *w;
    Err err;
} OpBench;

static int run_op(void *ctx, int rep) {
    OpBench *o = ctx;
    (void)rep;
    switch (o->kind) {
    case 0: return fp8_quantize_rows_cuda(o->y, o->D, o->z, o->x, FAST_BF16, o->D, o->T, o->D, 0, 0, &o->err);
    case 1: return rmsnorm_forward_cuda(o->y, FAST_BF16, o->D, o->x, FAST_BF16, o->D, o->w, o->T, o->D, 1e-6f, NULL, 0, &o->err);
    case 2: return swiglu_forward_cuda(o->y, FAST_BF16, o->D, o->x, (uint16_t *)o->x + o->D, FAST_BF16, 2 * o->D, o->T, o->D, 0, &o->err);
    default: return -1;
    }
}

static void bench_ops(void) {
    const int64_t T = 4096, D = 7168;
    OpBench o;
    memset(&o, 0, sizeof o);
    o.T = T, o.D = D;
    o.x = dmalloc((size_t)(T * 2 * D) * 2), o.y = dmalloc((size_t)(T * D) * 4), o.z = dmalloc((size_t)(T * D / 128) * 4);
    o.w = dmalloc((size_t)D * 4);
    CHECK_CUDA(gpu_fill_bf16(o.x, (size_t)(T * 2 * D), 1.0f, 77, 0));
    CHECK_CUDA(gpu_fill_uniform(o.w, (size_t)D, 0.5f, 1.5f, 78, 0));
    static const char *names[] = { "act_quant bf16->e4m3", "rmsnorm bf16->bf16", "swiglu bf16->bf16" };
    const double bytes[] = { T * D * 2.0 + T * D + T * D / 32.0, T * D * 4.0, T * D * 6.0 };
    printf("== small ops, T=%lld D=%lld\n", (long long)T, (long long)D);
    for (int k = 0; k < 3; k++) {
        o.kind = k;
        double us = time_us(run_op, &o);
        if (us < 0) printf("  %-22s failed: %s\n", names[k], o.err.msg);
        else {
            printf("  %-22s %8.1f us %7.0f GB/s (%4.1f%% of HBM)\n", names[k], us, bytes[k] / us * 1e-3,
                   100.0 * bytes[k] / (us * 1e-6) / PEAK_BW);
            printf("RESULT kernel=op name=%d us=%.2f gbs=%.1f\n", k, us, bytes[k] / us * 1e-3);
        }
    }
    cudaFree(o.x), cudaFree(o.y), cudaFree(o.z), cudaFree(o.w);
}

static int want(const char *name, char **only, int n) {
    if (!n) return 1;
    for (int i = 0; i < n; i++)
        if (!strcmp(only[i], name)) return 1;
    return 0;
}

int main(int argc, char **argv) {
    char *only[8];
    int nonly = 0;
    for (int i = 1; i < argc; i++) {
        long long x, y;
        if (!strcmp(argv[i], "--only") && i + 1 < argc && nonly < 8) only[nonly++] = argv[++i];
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc && sscanf(argv[i + 1], "%lldx%lld", &x, &y) == 2)
            g_only_n = x, g_only_k = y, i++;
        else if (!strcmp(argv[i], "--m") && i + 1 < argc && sscanf(argv[i + 1], "%lld", &x) == 1 && x > 0)
            g_only_m = x, i++;
        else if (!strcmp(argv[i], "--mla") && i + 1 < argc && sscanf(argv[i + 1], "%lldx%lld", &x, &y) == 2)
            g_only_b = (int)x, g_only_s = (int)y, i++;
        else if (!strcmp(argv[i], "--split-sweep"))
            g_split_sweep = 1;
        else if (!strcmp(argv[i], "--mla-sweep"))
            g_mla_sweep = 1;
        else if (!strcmp(argv[i], "--impl") && i + 1 < argc && !strcmp(argv[i + 1], "cublaslt-fp8"))
            g_peer_fp8_only = 1, i++;
        else {
            fprintf(stderr, "usage: %s [--only gemm|grouped|mla|ops]... [--shape NxK] [--m M] [--mla BxS] [--mla-sweep] [--split-sweep] [--impl cublaslt-fp8]\n", argv[0]);
            return 2;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    gpu_prog_name = "bench_gpu_kernels";
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        printf("SKIP: no CUDA device (cudaGetDeviceCount: %s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 0;
    }
    Err err = { { 0 } };
    if (fast_device(&g_dev, &err)) {
        printf("bench: %s\n", err.msg);
        return 1;
    }
    printf("device: %s, compute capability %d.%d, %d SMs, %zu MiB L2; cuBLASLt %zu\n", g_dev.name, g_dev.cc_major,
           g_dev.cc_minor, g_dev.sm_count, g_dev.l2_bytes >> 20, cublasLtGetVersion());
    printf("peaks for %%: FP8 %.0f TFLOP/s, BF16 %.0f TFLOP/s, HBM %.2f TB/s (H100 SXM datasheet)\n", PEAK_FP8 * 1e-12,
           PEAK_BF16 * 1e-12, PEAK_BW * 1e-12);
    if (cublasLtCreate(&g_lt) != CUBLAS_STATUS_SUCCESS) {
        printf("bench: cublasLtCreate failed\n");
        return 1;
    }
    g_lt_ws = dmalloc(LT_WS_BYTES);
    if (want("gemm", only, nonly)) {
        static const int64_t shapes[][2] = { { 2112, 7168 }, { 24576, 1536 }, { 32768, 512 }, { 7168, 16384 },
                                             { 4096, 7168 }, { 7168, 2048 },  { 36864, 7168 }, { 7168, 18432 } };
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            if (!g_only_n || (shapes[s][0] == g_only_n && shapes[s][1] == g_only_k)) bench_gemm_shape(shapes[s][0], shapes[s][1]);
    }
    if (want("grouped", only, nonly)) { /* decode-sized batches (a few rows per expert), then prefill-sized */
        static const int64_t Ts[] = { 64, 512, 4096 };
        for (int i = 0; i < 3; i++) {
            bench_grouped(4096, 7168, Ts[i]);
            bench_grouped(7168, 2048, Ts[i]);
        }
    }
    if (want("mla", only, nonly)) {
        printf("== mla decode (H=128, bf16 latent cache, paged 64)\n");
        static const int bs[][2] = { { 1, 4096 }, { 32, 4096 }, { 64, 8192 }, { 128, 4096 } };
        for (int i = 0; i < 4; i++)
            if (!g_only_b || (bs[i][0] == g_only_b && bs[i][1] == g_only_s)) bench_mla(bs[i][0], bs[i][1]);
    }
    if (want("ops", only, nonly)) bench_ops();
    cudaFree(g_lt_ws);
    cublasLtDestroy(g_lt);
    printf("bench_gpu_kernels: done\n");
    return 0;
}
