/**
 * @file mock_cuda.c
 * @brief A host-only stand-in for the CUDA runtime and for every fast/ launcher, so that
 *        tests/gpu/test_kernels.c can be exercised on a machine without a GPU
 *        (`make test-gpu-mock`). "Device" memory is host memory; each launcher is a plain C
 *        emulation of its KERNEL's algorithm (tile order, online softmax with bf16
 *        probabilities and split merging, chunked permutation, sorted combine, correctly
 *        rounded exp, tree reductions) — deliberately not a call of the reference, so the
 *        test's comparisons, tolerances and bookkeeping are exercised for real.
 *
 * What a passing mock run shows: the harness (guard bands, poisoning, indexing, sampling,
 * tolerances) works and the kernels' algorithms are consistent with the oracles. What it
 * cannot show: that the CUDA code implements those algorithms. Only a GPU run shows that.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "act_quant.h"
#include "model/fp8.h"
#include "fp8_gemm.h"
#include "model/gate.h"
#include "mla_decode.h"
#include "mla_split.h"
#include "moe_cuda.h"
#include "ops.h"
#include "base/util.h"

/* ---- the runtime ------------------------------------------------------------------------ */

cudaError_t cudaMalloc(void **p, size_t n) {
    *p = aligned_alloc(256, (n + 255) / 256 * 256);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
    (void)kind;
    memmove(dst, src, n);
    return cudaSuccess;
}
cudaError_t cudaMemset(void *p, int v, size_t n) {
    memset(p, v, n);
    return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int dev) {
    (void)dev;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "mock device (host emulation of the kernels' algorithms)");
    p->major = 9, p->minor = 0, p->multiProcessorCount = 132;
    p->sharedMemPerBlockOptin = 232448, p->l2CacheSize = 50 << 20;
    return cudaSuccess;
}
const char *cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorMock"; }
const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "mock error"; }
cudaError_t cudaGetLastError(void) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamQuery(cudaStream_t s) {
    (void)s;
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    (void)e;
    return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    (void)a, (void)b;
    *ms = 0.0f;
    return cudaSuccess;
}
/* What the whole-model path (fast/) uses besides: everything runs at once, in order, on the host. */
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t s) {
    (void)s;
    return cudaMemcpy(dst, src, n, kind);
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s) {
    (void)s;
    return cudaMemset(p, v, n);
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total) {
    *free_bytes = (size_t)64 << 30, *total = (size_t)80 << 30; /* an H100's worth; the plan is checked against it */
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) {
    *s = NULL;
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    (void)flags;
    *s = NULL;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    (void)s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    (void)s;
    return cudaSuccess;
}
/* No graph capture on the host: fast/ falls back to running decode steps eagerly. */
cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode) {
    (void)s, (void)mode;
    return cudaErrorNotSupported;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    (void)s;
    *g = NULL;
    return cudaErrorNotSupported;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags) {
    (void)g, (void)flags;
    *e = NULL;
    return cudaErrorNotSupported;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    (void)e, (void)s;
    return cudaErrorNotSupported;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
    (void)e;
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    (void)g;
    return cudaSuccess;
}

/* ---- helpers ---------------------------------------------------------------------------- */

static float ld(const void *p, FastDType t, int64_t i) {
    return t == FAST_BF16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
static void st(void *p, FastDType t, int64_t i, float v) {
    if (t == FAST_BF16) ((uint16_t *)p)[i] = f32_to_bf16(v);
    else ((float *)p)[i] = v;
}
static float expf_cr(float x) { return (float)exp((double)x); }
static float bf16r(float x) { return bf16_to_f32(f32_to_bf16(x)); }

/* ---- act_quant ------------------------------------------------------------------------ */

int fp8_quantize_rows_cuda(uint8_t *q, int64_t q_stride, float *scale, const void *x, FastDType x_dtype,
                           int64_t x_stride, int64_t M, int64_t K, int ue8m0, cudaStream_t stream, Err *err) {
    (void)stream;
    if (M < 0 || K <= 0 || K % 128) return err_set(err, "mock fp8_quantize_rows_cuda: K = %lld: need a positive multiple of 128", (long long)K);
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < K / 128; g++) {
            float v[128], amax = 0.0f;
            for (int i = 0; i < 128; i++) v[i] = ld(x, x_dtype, m * x_stride + g * 128 + i), amax = fmaxf(amax, fabsf(v[i]));
            float s = fmaxf(amax, 1e-4f) / 448.0f;
            if (ue8m0) s = fp8_scale_ue8m0(s);
            scale[m * (K / 128) + g] = s;
            for (int i = 0; i < 128; i++) q[m * q_stride + g * 128 + i] = fp8_e4m3_from_f32(v[i] / s);
        }
    return 0;
}

/* ---- GEMM: 128-K block partials (exact, as a tensor core would if it kept every bit), promotion ---- */

const char *fp8_gemm_path_name(Fp8GemmPath path) { return path == FP8_GEMM_MMA ? "mma" : path == FP8_GEMM_WGMMA ? "wgmma" : "auto"; }
size_t fp8_gemm_workspace_bytes(int64_t M, int64_t N, int64_t K) {
    (void)K;
    return M <= 16 ? (size_t)4 * (size_t)(M * N) * 4 : 0;
}

int fp8_gemm_cuda(const Fp8GemmParams *p, cudaStream_t stream, Err *err) {
    (void)stream;
    if (p->M < 0 || p->N <= 0 || p->K <= 0 || p->K % 128)
        return err_set(err, "mock fp8_gemm_cuda: K = %lld: need a positive multiple of 128", (long long)p->K);
    if (p->ldo < p->N) return err_set(err, "mock fp8_gemm_cuda: ldo = %lld < N", (long long)p->ldo);
    const int64_t N = p->N, K = p->K, kb = K / 128, nb = (N + 127) / 128;
    const int G = p->group_start ? p->num_groups : 1;
    for (int g = 0; g < G; g++) {
        int64_t r0 = p->group_start ? p->group_start[g] : 0, r1 = p->group_start ? p->group_start[g + 1] : p->M;
        const uint8_t *b = p->b + (int64_t)g * N * K;
        const float *bs = p->b_scale + (int64_t)g * nb * kb;
        for (int64_t m = r0; m < r1; m++)
            for (int64_t n = 0; n < N; n++) {
                float acc = 0.0f;
                for (int64_t blk = 0; blk < kb; blk++) {
                    double part = 0.0;
                    for (int64_t k = blk * 128; k < blk * 128 + 128; k++)
                        part += (double)fp8_e4m3_to_f32(p->a[m * K + k]) * (double)fp8_e4m3_to_f32(b[n * K + k]);
                    acc += (float)part * p->a_scale[m * kb + blk] * bs[(n / 128) * kb + blk];
                }
                st(p->out, p->out_dtype, m * p->ldo + n, acc);
            }
    }
    return 0;
}

/* ---- MLA: the kernel's tiles of 32 positions, base-2 online softmax, bf16 P, split merge ---- */

/** The kernel's rule (fast/mla_split.h) on the emulated device, an H100 with 132 SMs. */
int mla_decode_num_splits(int B, int H, int max_seq_len) { return mla_split_count(132, B, H, max_seq_len); }
size_t mla_decode_workspace_bytes(int B, int H, int n) {
    return n <= 1 ? 0 : (size_t)B * (size_t)n * (size_t)H * (MLA_DC + 1) * sizeof(float);
}

int mla_decode_cuda(const MlaDecodeParams *p, cudaStream_t stream, Err *err) {
    (void)stream;
    if (p->B < 0 || p->H <= 0 || p->H % 64) return err_set(err, "mock mla_decode_cuda: H = %d: need a positive multiple of 64", p->H);
    const int D = MLA_DC + MLA_DR, S_split = p->num_splits > 0 ? p->num_splits : 1;
    const float l2e = p->scale * 1.4426950408889634f;
    float *o = malloc(MLA_DC * sizeof *o), *om = malloc((size_t)S_split * MLA_DC * sizeof *om);
    float *lse2 = malloc((size_t)S_split * sizeof *lse2);
    for (int b = 0; b < p->B; b++) {
        const int Sb = p->seq_lens[b];
        for (int h = 0; h < p->H; h++) {
            const uint16_t *qa = p->q_abs + ((int64_t)b * p->H + h) * MLA_DC, *qp = p->q_pe + ((int64_t)b * p->H + h) * MLA_DR;
            for (int sp = 0; sp < S_split; sp++) {
                int t0, t1;
                mla_split_range(Sb, S_split, sp, &t0, &t1);
                float m = -INFINITY, l = 0.0f;
                memset(o, 0, MLA_DC * sizeof *o);
                for (int tt = t0; tt < t1; tt += 32) {
                    float s[32], pr[32];
                    int n = t1 - tt < 32 ? t1 - tt : 32;
                    float mx = -INFINITY;
                    for (int j = 0; j < 32; j++) {
                        s[j] = -INFINITY;
                        if (j >= n) continue;
                        int t = tt + j;
                        const uint16_t *row = p->kv_cache + mla_page_row(p->block_table + (int64_t)b * p->block_table_stride, t) * D;
                        float acc = 0.0f;
                        for (int i = 0; i < MLA_DC; i++) acc += bf16_to_f32(qa[i]) * bf16_to_f32(row[i]);
                        for (int i = 0; i < MLA_DR; i++) acc += bf16_to_f32(qp[i]) * bf16_to_f32(row[MLA_DC + i]);
                        s[j] = acc * l2e;
                        mx = fmaxf(mx, s[j]);
                    }
                    float mn = fmaxf(m, mx), alpha = exp2f(m - mn), sum = 0.0f;
                    for (int j = 0; j < 32; j++) pr[j] = exp2f(s[j] - mn), sum += pr[j];
                    l = l * alpha + sum;
                    m = mn;
                    for (int c = 0; c < MLA_DC; c++) o[c] *= alpha;
                    for (int j = 0; j < n; j++) {
                        int t = tt + j;
                        const uint16_t *row = p->kv_cache + mla_page_row(p->block_table + (int64_t)b * p->block_table_stride, t) * D;
                        float pj = bf16r(pr[j]);
                        for (int c = 0; c < MLA_DC; c++) o[c] += pj * bf16_to_f32(row[c]);
                    }
                }
                float inv = l > 0 ? 1.0f / l : 0.0f;
                for (int c = 0; c < MLA_DC; c++) om[sp * MLA_DC + c] = o[c] * inv;
                lse2[sp] = l > 0 ? m + log2f(l) : -INFINITY;
            }
            float mx = mla_combine_max(lse2, 1, S_split), wsum = 0.0f;
            float *u = p->u + ((int64_t)b * p->H + h) * MLA_DC;
            for (int c = 0; c < MLA_DC; c++) u[c] = 0.0f;
            if (mx > -INFINITY)
                for (int sp = 0; sp < S_split; sp++) {
                    float w = mla_combine_weight(lse2[sp], mx);
                    wsum += w;
                    for (int c = 0; c < MLA_DC; c++) u[c] += w * om[sp * MLA_DC + c];
                }
            for (int c = 0; c < MLA_DC; c++) u[c] *= wsum > 0 ? 1.0f / wsum : 0.0f;
            if (p->lse) p->lse[(int64_t)b * p->H + h] = mx > -INFINITY ? (mx + log2f(wsum)) * 0.6931471805599453f : -INFINITY;
        }
    }
    free(o), free(om), free(lse2);
    return 0;
}

/* ---- MoE -------------------------------------------------------------------------------- */

/** argmax_free with the kernel's reduction rule: the best (v > −∞) by value then lower index, else the lowest free. */
static int argmax_rule(const float *v, const unsigned char *taken, int n) {
    int best = -1, first = -1;
    for (int i = 0; i < n; i++) {
        if (taken[i]) continue;
        if (first < 0) first = i;
        if (v[i] > -INFINITY && (best < 0 || v[i] > v[best] || (v[i] == v[best] && i < best))) best = i;
    }
    return best >= 0 ? best : first;
}

int gate_forward_cuda(int *idx, float *weights, float *scores, const float *logits, const float *bias, int64_t T,
                      const Config *c, cudaStream_t stream, Err *err) {
    (void)stream, (void)err;
    const int E = c->n_routed_experts, G = c->n_group, per = E / G, K = c->num_experts_per_tok;
    float s[1024], ch[1024], gs[64];
    for (int64_t t = 0; t < T; t++) {
        for (int e = 0; e < E; e++) {
            s[e] = 1.0f / (1.0f + expf_cr(-logits[t * E + e]));
            ch[e] = s[e] + bias[e];
            if (scores) scores[t * E + e] = s[e];
        }
        gate_group_scores(gs, ch, E, G); /* the kernel's lane-per-group loop is the reference's */
        unsigned char kept[64] = { 0 }, taken[1024] = { 0 };
        for (int k = 0; k < c->topk_group; k++) kept[argmax_rule(gs, kept, G)] = 1;
        for (int e = 0; e < E; e++)
            if (!kept[e / per]) ch[e] = -INFINITY;
        float sum = 0.0f;
        for (int k = 0; k < K; k++) {
            int e = argmax_rule(ch, taken, E);
            taken[e] = 1;
            idx[t * K + k] = e;
            sum += s[e];
        }
        for (int k = 0; k < K; k++) {
            float w = s[idx[t * K + k]];
            if (c->norm_topk_prob) w /= sum;
            weights[t * K + k] = w * (float)c->routed_scaling_factor;
        }
    }
    return 0;
}

size_t moe_permute_workspace_bytes(int64_t T, int64_t K, int64_t E) { return (size_t)((T * K + 1023) / 1024) * (size_t)E * 4; }

/** The kernel's three phases: per-chunk counts, per-expert scan over chunks, per-chunk placement in slot order. */
int moe_permute_cuda(int *perm, int *row_of_slot, int *expert_start, const int *idx, int64_t T, int64_t K, int64_t E,
                     void *workspace, size_t workspace_bytes, cudaStream_t stream, Err *err) {
    (void)stream, (void)err, (void)workspace_bytes;
    const int64_t n = T * K, chunks = (n + 1023) / 1024;
    int *counts = workspace;
    memset(counts, 0, (size_t)(chunks * E) * 4);
    for (int64_t s = 0; s < n; s++) counts[(s / 1024) * E + idx[s]]++;
    int run = 0;
    for (int64_t e = 0; e < E; e++) {
        expert_start[e] = run;
        for (int64_t c = 0; c < chunks; c++) {
            int k = counts[c * E + e];
            counts[c * E + e] = run;
            run += k;
        }
    }
    expert_start[E] = run;
    for (int64_t s = 0; s < n; s++) {
        int r = counts[(s / 1024) * E + idx[s]]++;
        perm[r] = (int)s;
        row_of_slot[s] = r;
    }
    return 0;
}

int moe_gather_rows_cuda(uint8_t *xq_perm, float *xs_perm, const uint8_t *xq, const float *xs, const int *perm,
                         int64_t R, int64_t K, int64_t D, cudaStream_t stream, Err *err) {
    (void)stream, (void)err;
    for (int64_t r = 0; r < R; r++) {
        memcpy(xq_perm + r * D, xq + (perm[r] / K) * D, (size_t)D);
        memcpy(xs_perm + r * (D / 128), xs + (perm[r] / K) * (D / 128), (size_t)(D / 128) * 4);
    }
    return 0;
}

int moe_combine_cuda(float *out, const void *y_perm, FastDType y_dtype, const void *y_shared, FastDType shared_dtype,
                     const int *row_of_slot, const float *weights, int64_t T, int64_t K, int64_t D,
                     cudaStream_t stream, Err *err) {
    (void)stream, (void)err;
    for (int64_t t = 0; t < T; t++) {
        int rows[32];
        float w[32];
        for (int k = 0; k < K; k++) {
            int r = row_of_slot[t * K + k], j = k;
            float wv = weights[t * K + k];
            while (j > 0 && rows[j - 1] > r) rows[j] = rows[j - 1], w[j] = w[j - 1], j--;
            rows[j] = r, w[j] = wv;
        }
        for (int64_t i = 0; i < D; i++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++) acc += w[k] * ld(y_perm, y_dtype, (int64_t)rows[k] * D + i);
            if (y_shared) acc += ld(y_shared, shared_dtype, t * D + i);
            out[t * D + i] = acc;
        }
    }
    return 0;
}

/* ---- ops -------------------------------------------------------------------------------- */

int rmsnorm_forward_cuda(void *y, FastDType y_dtype, int64_t y_stride, const void *x, FastDType x_dtype,
                         int64_t x_stride, const float *w, int64_t N, int64_t D, float eps, float *rstd,
                         cudaStream_t stream, Err *err) {
    (void)stream, (void)err;
    for (int64_t r = 0; r < N; r++) {
        float part[256] = { 0 }; /* the kernel's 256 strided partial sums, then a tree */
        for (int64_t i = 0; i < D; i++) {
            float v = ld(x, x_dtype, r * x_stride + i);
            part[i % 256] = fmaf(v, v, part[i % 256]);
        }
        for (int w2 = 128; w2 > 0; w2 >>= 1)
            for (int i = 0; i < w2; i++) part[i] += part[i + w2];
        float rr = 1.0f / sqrtf(part[0] / (float)D + eps);
        if (rstd) rstd[r] = rr;
        for (int64_t i = 0; i < D; i++) st(y, y_dtype, r * y_stride + i, w[i] * (ld(x, x_dtype, r * x_stride + i) * rr));
    }
    return 0;
}

int rope_cos_sin_cuda(float *cos_out, float *sin_out, const int *pos, int64_t T, const float *inv_freq, int dim,
                      float attention_factor, cudaStream_t stream, Err *err) {
    (void)stream, (void)err;
    for (int64_t t = 0; t < T; t++)
        for (int i = 0; i < dim / 2; i++) {
            float a = (float)pos[t] * inv_freq[i];
            cos_out[t * (dim / 2) + i] = (float)cos((double)a) * attention_factor; /* a different libm: ulp-level differences */
            sin_out[t * (dim / 2) + i] = (float)sin((double)a) * attention_factor;
        }
    return 0;
}

int rope_forward_cuda(void *x, FastDType dtype, int64_t T, int64_t nvec, int64_t vec_stride, int64_t row_stride,
                      const float *cos_v, const float *sin_v, int dim, cudaStream_t stream, Err *err) {
    (void)stream, (void)err;
    for (int64_t t = 0; t < T; t++)
        for (int64_t v = 0; v < nvec; v++)
            for (int i = 0; i < dim / 2; i++) {
                int64_t b = t * row_stride + v * vec_stride + 2 * i;
                float a0 = ld(x, dtype, b), a1 = ld(x, dtype, b + 1), c = cos_v[t * (dim / 2) + i], s = sin_v[t * (dim / 2) + i];
                st(x, dtype, b, a0 * c - a1 * s);
                st(x, dtype, b + 1, a0 * s + a1 * c);
            }
    return 0;
}

int swiglu_forward_cuda(void *h, FastDType h_dtype, int64_t h_stride, const void *gate, const void *up,
                        FastDType in_dtype, int64_t in_stride, int64_t T, int64_t I, cudaStream_t stream, Err *err) {
    (void)stream, (void)err;
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < I; j++) {
            float g = ld(gate, in_dtype, t * in_stride + j), u = ld(up, in_dtype, t * in_stride + j);
            st(h, h_dtype, t * h_stride + j, g / (1.0f + expf_cr(-g)) * u);
        }
    return 0;
}

int residual_add_cuda(void *y, FastDType y_dtype, const void *a, FastDType a_dtype, const void *b, FastDType b_dtype,
                      int64_t n, cudaStream_t stream, Err *err) {
    (void)stream, (void)err;
    for (int64_t i = 0; i < n; i++) st(y, y_dtype, i, ld(a, a_dtype, i) + ld(b, b_dtype, i));
    return 0;
}

int embedding_gather_cuda(void *out, FastDType out_dtype, const uint16_t *table, int64_t vocab, int64_t D,
                          const int *ids, int64_t T, int *bad_id, cudaStream_t stream, Err *err) {
    (void)stream, (void)err;
    for (int64_t t = 0; t < T; t++) {
        int ok = ids[t] >= 0 && ids[t] < vocab;
        if (!ok && bad_id) *bad_id = 1;
        for (int64_t i = 0; i < D; i++) st(out, out_dtype, t * D + i, ok ? bf16_to_f32(table[(int64_t)ids[t] * D + i]) : 0.0f);
    }
    return 0;
}

int gather_rows_cuda(float *dst, int64_t dst_stride, const float *src, int64_t src_stride, const int *rows, int64_t n,
                     int64_t div, int64_t cols, cudaStream_t stream, Err *err) {
    (void)stream, (void)err;
    for (int64_t i = 0; i < n; i++) memcpy(dst + i * dst_stride, src + (rows[i] / div) * src_stride, (size_t)cols * sizeof(float));
    return 0;
}

int argmax_rows_cuda(int *out, const float *x, int64_t rows, int64_t cols, cudaStream_t stream, Err *err) {
    (void)stream, (void)err;
    for (int64_t r = 0; r < rows; r++) {
        int64_t best = -1;
        for (int64_t c = 0; c < cols; c++)
            if (best < 0 ? !isnan(x[r * cols + c]) : x[r * cols + c] > x[r * cols + best]) best = c;
        out[r] = best < 0 ? 0 : (int)best;
    }
    return 0;
}
/* Host memory only: fast/ep_nccl.c asks before handing a buffer to NCCL. */
cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *a, const void *p) {
    (void)p;
    memset(a, 0, sizeof *a);
    a->type = cudaMemoryTypeHost;
    return cudaSuccess;
}
