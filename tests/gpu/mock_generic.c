/**
 * @file mock_generic.c
 * @brief Host emulation of the launchers of fast/generic.h for `make test-gpu-mock`, in the
 *        spirit of mock_cuda.c: each is a plain C emulation of its KERNEL's algorithm
 *        (kernels/generic.cu), not a call of the reference, so the test's tolerances meet the
 *        kernels' own summation orders: FMA chains over zero-padded chunks of 32 with FP8
 *        promotion per 128-wide block, warp-strided score dot products reduced by a butterfly,
 *        online softmax in chunks of 32; the kernel's own e4m3 decoder (bit construction) and
 *        f32 → bf16 encoder are written out again, so their formulas are checked against ref.
 *        Not emulated: the GEMV path the CUDA launcher takes for dense linears of ≤ 8 rows
 *        (lane-strided partials reduced by a butterfly) and the BF16 tensor-core path for more
 *        rows (FP32 activations split into three bf16 parts, exact products, FP32 sums); their
 *        sums stay within the same per-element bound, which only the GPU run checks.
 *
 * The launchers reject the main bad parameters as the CUDA ones do (messages prefixed "mock"), so the
 * test's rejected-input checks run here too. What a passing run shows and cannot show: see
 * mock_cuda.c.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/fp8.h"
#include "generic.h"
#include "base/util.h"

enum { BM = 64, BK = 32, KB = 128, MLA_CHUNK = 32 };

/** The kernel's e4m3 decoder (bit construction, not ref's table), so the formula itself is checked against ref. */
static float e4m3_decode(uint8_t c) {
    const uint32_t sign = (uint32_t)(c & 0x80u) << 24, e = (c >> 3) & 0xFu, m = c & 7u;
    uint32_t mag;
    float f;
    if (e == 0) {
        f = (float)m * 0.001953125f;
        memcpy(&mag, &f, 4);
    } else if (e == 15 && m == 7) {
        mag = 0x7FC00000u;
    } else {
        mag = ((e + 120u) << 23) | (m << 20);
    }
    mag |= sign;
    memcpy(&f, &mag, 4);
    return f;
}

/** The kernel's f32 → bf16 (ref util.c's rule written out again, so the kernel's copy is what is checked). */
static uint16_t bf16_encode(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/** Element i of a FAST_F32 / FAST_BF16 array, as float. */
static float ld_fast(const void *p, FastDType t, int64_t i) {
    return t == FAST_BF16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
/** Stores v into element i of a FAST_F32 / FAST_BF16 array. */
static void st_fast(void *p, FastDType t, int64_t i, float v) {
    if (t == FAST_BF16) ((uint16_t *)p)[i] = bf16_encode(v);
    else ((float *)p)[i] = v;
}
/** Element i of a linear weight array of dtype t, as float (raw e4m3 value for FP8). */
static float ld_weight(const void *w, DType t, int64_t i) {
    if (t == DT_F8_E4M3) return e4m3_decode(((const uint8_t *)w)[i]);
    if (t == DT_BF16) return bf16_to_f32(((const uint16_t *)w)[i]);
    return ((const float *)w)[i];
}
/** ceil(a / b). */
static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/** y[m][n] for rows [r0, r1) of weight matrix g: the kernel's per-thread FMA chain over K padded to 32. */
static void linear_rows(const LinearGenericParams *p, int g, int64_t r0, int64_t r1) {
    const int64_t N = p->N, K = p->K, kb = cdiv(K, KB), Kp = cdiv(K, BK) * BK;
    const int fp8 = p->w_dtype == DT_F8_E4M3;
    const size_t es = p->w_dtype == DT_F32 ? 4 : p->w_dtype == DT_BF16 ? 2 : 1;
    const void *w = (const uint8_t *)p->w + (size_t)g * (size_t)(N * K) * es;
    const float *ws = fp8 ? p->w_scale + (int64_t)g * cdiv(N, KB) * kb : NULL;
    const float *xs = fp8 ? p->x_scale : NULL;
    for (int64_t m = r0; m < r1; m++)
        for (int64_t n = 0; n < N; n++) {
            float acc = 0.0f, part = 0.0f;
            for (int64_t k = 0; k < Kp; k++) {
                float xv = k < K ? p->x[m * p->ldx + k] : 0.0f, wv = k < K ? ld_weight(w, p->w_dtype, n * K + k) : 0.0f;
                part = fmaf(xv, wv, part);
                if (fp8 && ((k + 1) % KB == 0 || k + 1 == Kp)) {
                    int64_t b = k / KB;
                    float sw = ws[(n / KB) * kb + b];
                    acc += xs ? (part * xs[m * kb + b]) * sw : part * sw;
                    part = 0.0f;
                }
            }
            p->y[m * p->ldy + n] = fp8 ? acc : part;
        }
}

int linear_generic_cuda(const LinearGenericParams *p, cudaStream_t stream, Err *err) {
    (void)stream;
    if (p->M < 0 || p->N <= 0 || p->K <= 0)
        return err_set(err, "mock linear_generic_cuda: M = %lld, N = %lld, K = %lld", (long long)p->M, (long long)p->N,
                       (long long)p->K);
    if (p->ldy < p->N) return err_set(err, "mock linear_generic_cuda: ldy = %lld < N", (long long)p->ldy);
    if (p->ldx < p->K) return err_set(err, "mock linear_generic_cuda: ldx = %lld < K", (long long)p->ldx);
    if (p->w_dtype != DT_F32 && p->w_dtype != DT_BF16 && p->w_dtype != DT_F8_E4M3)
        return err_set(err, "mock linear_generic_cuda: w_dtype %d", (int)p->w_dtype);
    if (p->w_dtype == DT_F8_E4M3 && !p->w_scale) return err_set(err, "mock linear_generic_cuda: w_scale is NULL");
    if (p->num_groups < 1 || (!p->group_start && p->num_groups != 1))
        return err_set(err, "mock linear_generic_cuda: num_groups = %d", p->num_groups);
    if (!p->group_start) {
        linear_rows(p, 0, 0, p->M);
        return 0;
    }
    for (int g = 0; g < p->num_groups; g++) { /* the kernel's clamped group bounds */
        int64_t s = p->group_start[g] < 0 ? 0 : p->group_start[g], e = p->group_start[g + 1];
        if (s > p->M) s = p->M;
        if (e < s) e = s;
        if (e > p->M) e = p->M;
        linear_rows(p, g, s, e);
    }
    return 0;
}

int fp8_quantize_rows_f32_cuda(float *xq, float *scale, const float *x, int64_t ldx, int64_t M, int64_t K,
                               int ue8m0, cudaStream_t stream, Err *err) {
    (void)stream;
    if (M < 0 || K <= 0 || ldx < K)
        return err_set(err, "mock fp8_quantize_rows_f32_cuda: M = %lld, K = %lld, ldx = %lld", (long long)M,
                       (long long)K, (long long)ldx);
    const int64_t groups = cdiv(K, KB);
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < groups; g++) {
            const int64_t k1 = g * KB + KB < K ? g * KB + KB : K;
            float lane_max[32]; /* each lane's fmaxf over its 4 values, then a butterfly (max is order-free) */
            for (int l = 0; l < 32; l++) {
                lane_max[l] = 0.0f;
                for (int i = 0; i < 4; i++) {
                    int64_t k = g * KB + l * 4 + i;
                    if (k < k1) lane_max[l] = fmaxf(lane_max[l], fabsf(x[m * ldx + k]));
                }
            }
            float amax = 0.0f;
            for (int l = 0; l < 32; l++) amax = fmaxf(amax, lane_max[l]);
            float s = fmaxf(amax, 1e-4f) / 448.0f;
            if (ue8m0) s = fp8_scale_ue8m0(s);
            for (int64_t k = g * KB; k < k1; k++) xq[m * K + k] = e4m3_decode(fp8_e4m3_from_f32(x[m * ldx + k] / s));
            scale[m * groups + g] = s;
        }
    return 0;
}

int gemm_batched_cuda(const GemmBatchedParams *p, cudaStream_t stream, Err *err) {
    (void)stream;
    if (p->batch < 0 || p->M < 0 || p->N < 0 || p->K <= 0)
        return err_set(err, "mock gemm_batched_cuda: batch = %lld, M = %lld, N = %lld, K = %lld", (long long)p->batch,
                       (long long)p->M, (long long)p->N, (long long)p->K);
    if (p->b_dtype != FAST_F32 && p->b_dtype != FAST_BF16)
        return err_set(err, "mock gemm_batched_cuda: b_dtype %d", (int)p->b_dtype);
    const int64_t Kp = cdiv(p->K, BK) * BK;
    for (int64_t b = 0; b < p->batch; b++)
        for (int64_t m = 0; m < p->M; m++)
            for (int64_t n = 0; n < p->N; n++) {
                float acc = 0.0f;
                for (int64_t k = 0; k < Kp; k++) {
                    float av = k < p->K ? p->a[b * p->a_sb + m * p->a_sm + k * p->a_sk] : 0.0f;
                    float bv = k < p->K ? ld_fast(p->b, p->b_dtype, b * p->b_sb + k * p->b_sk + n * p->b_sn) : 0.0f;
                    acc = fmaf(av, bv, acc);
                }
                p->c[b * p->c_sb + m * p->c_sm + n * p->c_sn] = acc;
            }
    return 0;
}

/** A warp's strided dot product: lane l sums elements l, l+32, ... by FMA, then the xor butterfly. */
static float warp_dot(const float *q, const void *row, FastDType t, int64_t off, int n) {
    float lane[32];
    for (int l = 0; l < 32; l++) {
        lane[l] = 0.0f;
        for (int c = l; c < n; c += 32) lane[l] = fmaf(q[c], ld_fast(row, t, off + c), lane[l]);
    }
    for (int o = 16; o > 0; o >>= 1) {
        float nx[32];
        for (int l = 0; l < 32; l++) nx[l] = lane[l] + lane[l ^ o];
        memcpy(lane, nx, sizeof lane);
    }
    return lane[0];
}

int mla_attend_generic_cuda(const MlaAttendParams *p, cudaStream_t stream, Err *err) {
    (void)stream;
    if (p->T < 0 || p->H <= 0 || p->Dc <= 0 || p->Dr < 0 || p->page <= 0 || p->block_table_stride <= 0)
        return err_set(err, "mock mla_attend_generic_cuda: T = %lld, H = %d, Dc = %d, Dr = %d, page = %d", (long long)p->T,
                       p->H, p->Dc, p->Dr, p->page);
    if (p->cache_dtype != FAST_F32 && p->cache_dtype != FAST_BF16)
        return err_set(err, "mock mla_attend_generic_cuda: cache_dtype %d", (int)p->cache_dtype);
    const int Dc = p->Dc, Dr = p->Dr, D = Dc + Dr, H = p->H;
    float *q = malloc((size_t)D * sizeof *q), *o = malloc((size_t)Dc * sizeof *o);
    for (int64_t i = 0; i < p->T; i++)
        for (int h = 0; h < H; h++) {
            float *u = p->u + (i * H + h) * Dc;
            const int S = p->seq_lens[i] > 0 ? p->seq_lens[i] : 0;
            if (S == 0) {
                memset(u, 0, (size_t)Dc * sizeof *u);
                continue;
            }
            for (int c = 0; c < Dc; c++) q[c] = p->q_abs[(i * H + h) * Dc + c];
            for (int c = 0; c < Dr; c++) q[Dc + c] = p->q_pe[i * p->q_pe_stride_t + h * p->q_pe_stride_h + c];
            memset(o, 0, (size_t)Dc * sizeof *o);
            const int *table = p->block_table + i * p->block_table_stride;
            float m = -INFINITY, l = 0.0f;
            for (int t0 = 0; t0 < S; t0 += MLA_CHUNK) {
                const int n = S - t0 < MLA_CHUNK ? S - t0 : MLA_CHUNK;
                float ps[MLA_CHUNK];
                int64_t row[MLA_CHUNK];
                float mc = -INFINITY;
                for (int j = 0; j < n; j++) {
                    const int t = t0 + j;
                    row[j] = ((int64_t)table[t / p->page] * p->page + t % p->page) * D;
                    const float dc = warp_dot(q, p->kv_cache, p->cache_dtype, row[j], Dc);
                    const float dr = warp_dot(q + Dc, p->kv_cache, p->cache_dtype, row[j] + Dc, Dr);
                    ps[j] = p->scale * (dc + dr);
                    mc = fmaxf(mc, ps[j]);
                }
                const float mn = fmaxf(m, mc), alpha = m == -INFINITY ? 0.0f : expf(m - mn);
                float sum = 0.0f;
                for (int j = 0; j < n; j++) ps[j] = expf(ps[j] - mn);
                for (int j = 0; j < n; j++) sum += ps[j];
                l = fmaf(l, alpha, sum);
                m = mn;
                for (int c = 0; c < Dc; c++) {
                    float acc = o[c] * alpha;
                    for (int j = 0; j < n; j++) acc = fmaf(ps[j], ld_fast(p->kv_cache, p->cache_dtype, row[j] + c), acc);
                    o[c] = acc;
                }
            }
            for (int c = 0; c < Dc; c++) u[c] = o[c] / l;
        }
    free(q), free(o);
    return 0;
}

int kv_cache_write_cuda(void *kv_cache, FastDType cache_dtype, const int *block_table, int block_table_stride,
                        const int *pos, const float *c_kv, int64_t ldc, const float *k_pe, int64_t ldk, int64_t T,
                        int Dc, int Dr, int page, cudaStream_t stream, Err *err) {
    (void)stream;
    if (T < 0 || Dc <= 0 || Dr < 0 || page <= 0 || block_table_stride <= 0 || ldc < Dc || ldk < Dr)
        return err_set(err, "mock kv_cache_write_cuda: T = %lld, Dc = %d, Dr = %d, page = %d", (long long)T, Dc, Dr, page);
    if (cache_dtype != FAST_F32 && cache_dtype != FAST_BF16)
        return err_set(err, "mock kv_cache_write_cuda: cache_dtype %d", (int)cache_dtype);
    const int64_t D = (int64_t)Dc + Dr;
    for (int64_t i = 0; i < T; i++) {
        if (pos[i] < 0) continue;
        const int64_t row = (int64_t)block_table[i * block_table_stride + pos[i] / page] * page + pos[i] % page;
        for (int64_t j = 0; j < D; j++) st_fast(kv_cache, cache_dtype, row * D + j, j < Dc ? c_kv[i * ldc + j] : k_pe[i * ldk + j - Dc]);
    }
    return 0;
}

int copy_rows_cuda(void *dst, FastDType dst_dtype, int64_t dst_stride, const void *src, FastDType src_dtype,
                   int64_t src_stride, int64_t rows, int64_t cols, cudaStream_t stream, Err *err) {
    (void)stream;
    if (rows < 0 || cols < 0 || dst_stride < cols || src_stride < cols)
        return err_set(err, "mock copy_rows_cuda: rows = %lld, cols = %lld, strides %lld/%lld", (long long)rows,
                       (long long)cols, (long long)dst_stride, (long long)src_stride);
    if ((dst_dtype != FAST_F32 && dst_dtype != FAST_BF16) || (src_dtype != FAST_F32 && src_dtype != FAST_BF16))
        return err_set(err, "mock copy_rows_cuda: dtypes must be f32 or bf16");
    const size_t es = fast_dtype_size(dst_dtype);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            const int64_t di = r * dst_stride + c, si = r * src_stride + c;
            if (dst_dtype == src_dtype) memcpy((char *)dst + di * (int64_t)es, (const char *)src + si * (int64_t)es, es);
            else st_fast(dst, dst_dtype, di, ld_fast(src, src_dtype, si));
        }
    return 0;
}
