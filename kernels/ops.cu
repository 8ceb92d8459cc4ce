/**
 * @file ops.cu
 * @brief RMSNorm, YaRN RoPE, SwiGLU, residual add and embedding gather (fast/ops.h).
 *
 * All memory-bound: each reads its inputs once and writes its outputs once (RMSNorm of
 * 4096 × 7168 bf16 → 117 MB, ~35 µs at 3.35 TB/s). Simple grids: one block per row for
 * RMSNorm and the gather, one thread per element or rotation pair elsewhere.
 *
 * VALIDATION STATUS: make test-gpu and compute-sanitizer pass on an H100 (2026-11-22).
 */
#include <cuda_runtime.h>

#include "common.cuh"
#include "ops.h"

namespace dsv3 {

constexpr int NORM_THREADS = 256; /**< threads per RMSNorm row */

/** One block per row: sum of squares (FP32, tree order), then y = w·(x·r). */
__global__ void __launch_bounds__(NORM_THREADS)
    rmsnorm_kernel(void *y, FastDType y_dtype, int64_t y_stride, const void *x, FastDType x_dtype, int64_t x_stride,
                   const float *__restrict__ w, int64_t D, float eps, float *rstd) {
    __shared__ float warp_sums[NORM_THREADS / 32];
    const int64_t row = blockIdx.x;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < D; i += NORM_THREADS) {
        const float v = load_elem(x, x_dtype, row * x_stride + i);
        ss = __fmaf_rn(v, v, ss);
    }
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = ss;
    __syncthreads();
    float total = 0.0f;
    for (int i = 0; i < NORM_THREADS / 32; i++) total += warp_sums[i];
    const float ms = __fdiv_rn(total, (float)D);
    const float r = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(ms, eps))); /* ref: 1.0f / sqrtf(ms + eps) */
    if (rstd && threadIdx.x == 0) rstd[row] = r;
    /* Every thread has read warp_sums; y may alias x, and each element is read before it is written by its owner. */
    for (int64_t i = threadIdx.x; i < D; i += NORM_THREADS) {
        const float v = load_elem(x, x_dtype, row * x_stride + i);
        store_elem(y, y_dtype, row * y_stride + i, __fmul_rn(w[i], __fmul_rn(v, r)));
    }
}

/** cos/sin of pos·θ'_i, one thread per (token, frequency). */
__global__ void rope_cos_sin_kernel(float *cos_out, float *sin_out, const int *pos, int64_t T,
                                    const float *inv_freq, int half, float af) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= T * half) return;
    const int64_t t = i / half;
    const int j = (int)(i % half);
    const float angle = __fmul_rn((float)pos[t], inv_freq[j]); /* FP32 like torch.outer(arange, freqs) */
    float s, c;
    sincosf(angle, &s, &c);
    cos_out[i] = __fmul_rn(c, af);
    sin_out[i] = __fmul_rn(s, af);
}

/** One thread per rotated pair (token, vector, i). */
__global__ void rope_kernel(void *x, FastDType dtype, int64_t T, int64_t nvec, int64_t vec_stride, int64_t row_stride,
                            const float *__restrict__ cos_v, const float *__restrict__ sin_v, int half) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= T * nvec * half) return;
    const int j = (int)(i % half);
    const int64_t v = (i / half) % nvec, t = i / (half * nvec);
    const int64_t base = t * row_stride + v * vec_stride + 2 * j;
    const float a = load_elem(x, dtype, base), b = load_elem(x, dtype, base + 1);
    const float c = cos_v[t * half + j], s = sin_v[t * half + j];
    store_elem(x, dtype, base, __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
    store_elem(x, dtype, base + 1, __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c)));
}

/** One thread per output element. */
__global__ void swiglu_kernel(void *h, FastDType h_dtype, int64_t h_stride, const void *gate, const void *up,
                              FastDType in_dtype, int64_t in_stride, int64_t T, int64_t I) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= T * I) return;
    const int64_t t = i / I, j = i % I;
    const float g = load_elem(gate, in_dtype, t * in_stride + j), u = load_elem(up, in_dtype, t * in_stride + j);
    /* ref: gate / (1.0f + expf(-gate)) * up */
    store_elem(h, h_dtype, t * h_stride + j, __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf_cr(-g))), u));
}

/** One thread per element. */
__global__ void residual_add_kernel(void *y, FastDType y_dtype, const void *a, FastDType a_dtype, const void *b,
                                    FastDType b_dtype, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    store_elem(y, y_dtype, i, __fadd_rn(load_elem(a, a_dtype, i), load_elem(b, b_dtype, i)));
}

/** One block per token row. */
__global__ void embedding_kernel(void *out, FastDType out_dtype, const uint16_t *__restrict__ table, int64_t vocab,
                                 int64_t D, const int *__restrict__ ids, int *bad_id) {
    const int64_t t = blockIdx.x;
    const int id = ids[t];
    const bool ok = id >= 0 && id < vocab;
    if (!ok && bad_id && threadIdx.x == 0) atomicExch(bad_id, 1);
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        const uint16_t v = ok ? table[(int64_t)id * D + i] : (uint16_t)0;
        if (out_dtype == FAST_BF16) static_cast<uint16_t *>(out)[t * D + i] = v;
        else static_cast<float *>(out)[t * D + i] = bf16_bits_to_f32(v);
    }
}

/** Grid of ceil(n / 256) blocks of 256, or an error when it does not fit. */
/** dst[i][c] = src[rows[i] / div][c]: one thread per element (coalesced along c). */
__global__ void gather_rows_kernel(float *dst, int64_t dst_stride, const float *src, int64_t src_stride,
                                   const int *rows, int64_t n, int64_t div, int64_t cols) {
    const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n * cols) return;
    const int64_t i = e / cols, c = e % cols;
    dst[i * dst_stride + c] = src[(int64_t)(rows[i] / div) * src_stride + c];
}

constexpr int ARGMAX_THREADS = 256; /**< threads per row of argmax_kernel */

/** One block per row: each thread scans a strided slice keeping (value, first index), then a tree merge. */
__global__ void __launch_bounds__(ARGMAX_THREADS) argmax_kernel(int *out, const float *x, int64_t cols) {
    __shared__ float s_v[ARGMAX_THREADS];
    __shared__ int64_t s_i[ARGMAX_THREADS];
    const float *row = x + (int64_t)blockIdx.x * cols;
    float best = -INFINITY;
    int64_t bi = -1;
    for (int64_t c = threadIdx.x; c < cols; c += ARGMAX_THREADS) {
        const float v = row[c];
        if (v > best || (bi < 0 && v == best)) best = v, bi = c; /* NaN compares false: never taken */
    }
    s_v[threadIdx.x] = best, s_i[threadIdx.x] = bi;
    __syncthreads();
    for (int half = ARGMAX_THREADS / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) {
            const float v = s_v[threadIdx.x + half];
            const int64_t i = s_i[threadIdx.x + half];
            const int64_t mine = s_i[threadIdx.x];
            if (i >= 0 && (mine < 0 || v > s_v[threadIdx.x] || (v == s_v[threadIdx.x] && i < mine)))
                s_v[threadIdx.x] = v, s_i[threadIdx.x] = i;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s_i[0] < 0 ? 0 : (int)s_i[0];
}

static int grid_1d(int64_t n, unsigned *blocks, const char *fn, Err *err) {
    const int64_t b = ceil_div<int64_t>(n, 256);
    if (b > 0x7FFFFFFF) return err_set(err, "%s: %lld elements are too many for one grid", fn, (long long)n);
    *blocks = (unsigned)b;
    return 0;
}

static bool dtype_ok(FastDType t) { return t == FAST_F32 || t == FAST_BF16; }

} // namespace dsv3

using namespace dsv3;

extern "C" int rmsnorm_forward_cuda(void *y, FastDType y_dtype, int64_t y_stride, const void *x, FastDType x_dtype,
                                    int64_t x_stride, const float *w, int64_t N, int64_t D, float eps, float *rstd,
                                    cudaStream_t stream, Err *err) {
    const char *fn = "rmsnorm_forward_cuda";
    if (N < 0 || D <= 0 || x_stride < D || y_stride < D)
        return err_set(err, "%s: N = %lld, D = %lld, x_stride = %lld, y_stride = %lld: need N >= 0, D > 0, strides >= D",
                       fn, (long long)N, (long long)D, (long long)x_stride, (long long)y_stride);
    if (!dtype_ok(x_dtype) || !dtype_ok(y_dtype)) return err_set(err, "%s: dtypes must be f32 or bf16", fn);
    if (x == y && (x_dtype != y_dtype || x_stride != y_stride))
        return err_set(err, "%s: in place needs the same dtype and stride for x and y", fn);
    if (N == 0) return 0;
    if (N > 0x7FFFFFFF) return err_set(err, "%s: N = %lld rows exceed the grid limit", fn, (long long)N);
    rmsnorm_kernel<<<(unsigned)N, NORM_THREADS, 0, stream>>>(y, y_dtype, y_stride, x, x_dtype, x_stride, w, D, eps, rstd);
    return fast_check_launch(fn, "rmsnorm_kernel", err);
}

extern "C" int rope_cos_sin_cuda(float *cos_out, float *sin_out, const int *pos, int64_t T, const float *inv_freq,
                                 int dim, float attention_factor, cudaStream_t stream, Err *err) {
    const char *fn = "rope_cos_sin_cuda";
    if (T < 0 || dim <= 0 || dim % 2) return err_set(err, "%s: T = %lld, dim = %d: need T >= 0 and dim even > 0", fn, (long long)T, dim);
    if (T == 0) return 0;
    unsigned blocks = 0;
    if (grid_1d(T * (dim / 2), &blocks, fn, err)) return -1;
    rope_cos_sin_kernel<<<blocks, 256, 0, stream>>>(cos_out, sin_out, pos, T, inv_freq, dim / 2, attention_factor);
    return fast_check_launch(fn, "rope_cos_sin_kernel", err);
}

extern "C" int rope_forward_cuda(void *x, FastDType dtype, int64_t T, int64_t nvec, int64_t vec_stride,
                                 int64_t row_stride, const float *cos_v, const float *sin_v, int dim,
                                 cudaStream_t stream, Err *err) {
    const char *fn = "rope_forward_cuda";
    if (T < 0 || nvec <= 0 || dim <= 0 || dim % 2 || vec_stride < 0 || row_stride < 0)
        return err_set(err, "%s: T = %lld, nvec = %lld, dim = %d, strides %lld/%lld: need T >= 0, nvec > 0, even dim",
                       fn, (long long)T, (long long)nvec, dim, (long long)vec_stride, (long long)row_stride);
    if (!dtype_ok(dtype)) return err_set(err, "%s: dtype must be f32 or bf16", fn);
    if (T == 0) return 0;
    unsigned blocks = 0;
    if (grid_1d(T * nvec * (dim / 2), &blocks, fn, err)) return -1;
    rope_kernel<<<blocks, 256, 0, stream>>>(x, dtype, T, nvec, vec_stride, row_stride, cos_v, sin_v, dim / 2);
    return fast_check_launch(fn, "rope_kernel", err);
}

extern "C" int swiglu_forward_cuda(void *h, FastDType h_dtype, int64_t h_stride, const void *gate, const void *up,
                                   FastDType in_dtype, int64_t in_stride, int64_t T, int64_t I, cudaStream_t stream,
                                   Err *err) {
    const char *fn = "swiglu_forward_cuda";
    if (T < 0 || I <= 0 || h_stride < I || in_stride < I)
        return err_set(err, "%s: T = %lld, I = %lld, h_stride = %lld, in_stride = %lld: need T >= 0, I > 0, strides >= I",
                       fn, (long long)T, (long long)I, (long long)h_stride, (long long)in_stride);
    if (!dtype_ok(h_dtype) || !dtype_ok(in_dtype)) return err_set(err, "%s: dtypes must be f32 or bf16", fn);
    if (T == 0) return 0;
    unsigned blocks = 0;
    if (grid_1d(T * I, &blocks, fn, err)) return -1;
    swiglu_kernel<<<blocks, 256, 0, stream>>>(h, h_dtype, h_stride, gate, up, in_dtype, in_stride, T, I);
    return fast_check_launch(fn, "swiglu_kernel", err);
}

extern "C" int residual_add_cuda(void *y, FastDType y_dtype, const void *a, FastDType a_dtype, const void *b,
                                 FastDType b_dtype, int64_t n, cudaStream_t stream, Err *err) {
    const char *fn = "residual_add_cuda";
    if (n < 0) return err_set(err, "%s: n = %lld < 0", fn, (long long)n);
    if (!dtype_ok(y_dtype) || !dtype_ok(a_dtype) || !dtype_ok(b_dtype)) return err_set(err, "%s: dtypes must be f32 or bf16", fn);
    if ((y == a && y_dtype != a_dtype) || (y == b && y_dtype != b_dtype))
        return err_set(err, "%s: an aliased input must have the output's dtype", fn);
    if (n == 0) return 0;
    unsigned blocks = 0;
    if (grid_1d(n, &blocks, fn, err)) return -1;
    residual_add_kernel<<<blocks, 256, 0, stream>>>(y, y_dtype, a, a_dtype, b, b_dtype, n);
    return fast_check_launch(fn, "residual_add_kernel", err);
}

extern "C" int embedding_gather_cuda(void *out, FastDType out_dtype, const uint16_t *table, int64_t vocab, int64_t D,
                                     const int *ids, int64_t T, int *bad_id, cudaStream_t stream, Err *err) {
    const char *fn = "embedding_gather_cuda";
    if (T < 0 || vocab <= 0 || D <= 0)
        return err_set(err, "%s: T = %lld, vocab = %lld, D = %lld: need T >= 0, vocab > 0, D > 0", fn, (long long)T,
                       (long long)vocab, (long long)D);
    if (!dtype_ok(out_dtype)) return err_set(err, "%s: out_dtype must be f32 or bf16", fn);
    if (T == 0) return 0;
    if (T > 0x7FFFFFFF) return err_set(err, "%s: T = %lld exceeds the grid limit", fn, (long long)T);
    embedding_kernel<<<(unsigned)T, 256, 0, stream>>>(out, out_dtype, table, vocab, D, ids, bad_id);
    return fast_check_launch(fn, "embedding_kernel", err);
}

extern "C" int gather_rows_cuda(float *dst, int64_t dst_stride, const float *src, int64_t src_stride, const int *rows,
                                int64_t n, int64_t div, int64_t cols, cudaStream_t stream, Err *err) {
    const char *fn = "gather_rows_cuda";
    if (n < 0 || cols <= 0 || div <= 0 || dst_stride < cols || src_stride < cols)
        return err_set(err, "%s: n = %lld, cols = %lld, div = %lld, strides %lld/%lld: need n >= 0, cols > 0, div > 0, strides >= cols",
                       fn, (long long)n, (long long)cols, (long long)div, (long long)dst_stride, (long long)src_stride);
    if (n == 0) return 0;
    unsigned blocks = 0;
    if (grid_1d(n * cols, &blocks, fn, err)) return -1;
    gather_rows_kernel<<<blocks, 256, 0, stream>>>(dst, dst_stride, src, src_stride, rows, n, div, cols);
    return fast_check_launch(fn, "gather_rows_kernel", err);
}

extern "C" int argmax_rows_cuda(int *out, const float *x, int64_t rows, int64_t cols, cudaStream_t stream, Err *err) {
    const char *fn = "argmax_rows_cuda";
    if (rows < 0 || cols <= 0) return err_set(err, "%s: rows = %lld, cols = %lld: need rows >= 0, cols > 0", fn, (long long)rows, (long long)cols);
    if (rows == 0) return 0;
    if (rows > 0x7FFFFFFF) return err_set(err, "%s: rows = %lld exceeds the grid limit", fn, (long long)rows);
    argmax_kernel<<<(unsigned)rows, ARGMAX_THREADS, 0, stream>>>(out, x, cols);
    return fast_check_launch(fn, "argmax_kernel", err);
}
