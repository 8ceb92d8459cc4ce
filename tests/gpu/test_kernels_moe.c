/**
 * @file test_kernels_moe.c
 * @brief test_gpu_kernels --group moe: gate, permute, gather and combine kernels against ref
 *        gate_forward, moe_permute and moe_combine, and the whole MoE layer (fast/moe_cuda.h
 *        recipe) against ref moe_forward.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "act_quant.h"
#include "fp8_gemm.h"
#include "model/config.h"
#include "model/context.h"
#include "model/ffn.h"
#include "model/fp8.h"
#include "model/gate.h"
#include "model/linear.h"
#include "model/moe.h"
#include "moe_cuda.h" /* fast/moe_cuda.h: named apart from ref/model/moe.h, which -Iref would find first */
#include "ops.h"
#include "model/tensor.h"
#include "test_kernels.h"

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
    rc = rc || fp8_quantize_rows_cuda(d_xq.ptr, D, d_xs.ptr, d_x.ptr, FAST_F32, D, T, D, 0, 0, &err);
    rc = rc || moe_permute_cuda(d_perm.ptr, d_ros.ptr, d_start.ptr, d_idx.ptr, T, K, E, d_pws.ptr, d_pws.bytes, 0, &err);
    rc = rc || moe_gather_rows_cuda(d_aq.ptr, d_as.ptr, d_xq.ptr, d_xs.ptr, d_perm.ptr, R, K, D, 0, &err);
    rc = rc || run_gemm(d_h13.ptr, d_aq.ptr, d_as.ptr, d_w13.ptr, d_s13.ptr, R, 2 * I, D, d_start.ptr, (int)E, &err);
    rc = rc || swiglu_forward_cuda(d_h.ptr, FAST_F32, I, d_h13.ptr, (float *)d_h13.ptr + I, FAST_F32, 2 * I, R, I, 0, &err);
    rc = rc || fp8_quantize_rows_cuda(d_hq.ptr, I, d_hs.ptr, d_h.ptr, FAST_F32, I, R, I, 0, 0, &err);
    rc = rc || run_gemm(d_y.ptr, d_hq.ptr, d_hs.ptr, d_w2.ptr, d_s2.ptr, R, D, I, d_start.ptr, (int)E, &err);
    rc = rc || run_gemm(d_sh13.ptr, d_xq.ptr, d_xs.ptr, d_sw13.ptr, d_ss13.ptr, T, 2 * I, D, NULL, 1, &err);
    rc = rc || swiglu_forward_cuda(d_shh.ptr, FAST_F32, I, d_sh13.ptr, (float *)d_sh13.ptr + I, FAST_F32, 2 * I, T, I, 0, &err);
    rc = rc || fp8_quantize_rows_cuda(d_shq.ptr, I, d_shs.ptr, d_shh.ptr, FAST_F32, I, T, I, 0, 0, &err);
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

void test_moe(void) {
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
