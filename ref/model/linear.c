/**
 * @file linear.c
 * @brief The one matrix product of the reference (docs/model.md §8.2–8.5).
 *
 * Dequant mode: for each output row o, decode W[o][:] into FP32 once (fp8 × block scale,
 * or bf16 → f32), then dot it with every token's x. The model never exists in FP32 as a
 * whole; one row at a time does.
 *
 * W8A8 mode (the official `act_quant` + `fp8_gemm`, docs/model.md §8.3–8.4):
 *     s_x[t][b]  = max(amax(x[t][128b : 128b+128]), 1e-4) / 448
 *     xq[t][k]   = e4m3(x[t][k] / s_x[t][k/128])
 *     y[t][o]    = Σ_b ( Σ_{k in block b} xq[t][k] · wq[o][k] ) · s_x[t][b] · s_w[o/128][b]
 * The inner block sum is exact (products of two e4m3 values have ≤ 8 significant bits and
 * span < 2^36; 128 of them fit a double's 53 bits), which is what tensor cores compute before
 * the FP32 "promotion"; the scaled partials are accumulated in FP32 in block order.
 */
#include "linear.h"

#include <string.h>

#include "fp8.h"

#ifdef _OPENMP
#include <omp.h>
static int thread_id(void) { return omp_get_thread_num(); }
static int max_threads(void) { return omp_get_max_threads(); }
#else
static int thread_id(void) { return 0; }
static int max_threads(void) { return 1; }
#endif

size_t linear_scratch_floats(int64_t T, int64_t max_in) {
    int64_t blocks = (max_in + FP8_BLOCK - 1) / FP8_BLOCK;
    return (size_t)(max_threads() * max_in + T * max_in + T * blocks);
}

LinearScratch linear_scratch_init(float *buf, int64_t T, int64_t max_in) {
    LinearScratch s;
    s.row = buf;
    s.xq = s.row + (size_t)max_threads() * (size_t)max_in;
    s.x_scale = s.xq + (size_t)T * (size_t)max_in;
    s.max_in = max_in;
    s.max_T = T;
    s.scale_ue8m0 = 0;
    s.hook = NULL;
    return s;
}

float dot_f32(const float *a, const float *b, int64_t n) {
    float acc[8] = { 0 };
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

/**
 * Σ a[i]·b[i] over one ≤128-wide block of e4m3 values, exactly: each product of two e4m3
 * values has ≤ 8 significant bits and lies in [2^-18, 2^17.6], so every partial sum of 128 of
 * them is a multiple of 2^-24 below 2^25 — exact in a double whatever the order, which lets
 * the four accumulators below vectorize.
 */
static double dot_exact_e4m3(const float *a, const float *b, int64_t n) {
    double acc[4] = { 0, 0, 0, 0 };
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) acc[j] += (double)a[i + j] * (double)b[i + j];
    for (; i < n; i++) acc[0] += (double)a[i] * (double)b[i];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

/**
 * Dequant mode: decode a row once (raw e4m3 values for FP8, exact floats otherwise), dot it
 * with every token. FP8 blocks are scaled per 128-wide block, y = Σ_b s_w[o/128][b] · (x_b·q_b),
 * which is the dequantized product up to FP32 rounding and the same arithmetic for any T.
 */
static void linear_dequant(float *y, const float *x, int64_t T, const Tensor *W, const LinearScratch *s) {
    int64_t out = W->rows, in = W->cols, blocks = tensor_col_blocks(W);
    int fp8 = W->dtype == DT_F8_E4M3;
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < out; o++) {
        float *row = s->row + (size_t)thread_id() * (size_t)s->max_in;
        tensor_row(W, o, 0, in, !fp8, row);
        for (int64_t t = 0; t < T; t++) {
            const float *xt = x + t * in;
            if (!fp8) {
                y[t * out + o] = dot_f32(xt, row, in);
                continue;
            }
            float acc = 0.0f;
            for (int64_t b = 0; b < blocks; b++) {
                int64_t k0 = b * FP8_BLOCK, n = in - k0 < FP8_BLOCK ? in - k0 : FP8_BLOCK;
                acc += dot_f32(xt + k0, row + k0, n) * tensor_scale(W, o, k0);
            }
            y[t * out + o] = acc;
        }
    }
}

/** W8A8 mode: quantize activations per 128 channels, exact block partials, FP32 accumulation. */
static void linear_w8a8(float *y, const float *x, int64_t T, const Tensor *W, const LinearScratch *s) {
    int64_t out = W->rows, in = W->cols, blocks = tensor_col_blocks(W);
    for (int64_t t = 0; t < T; t++) fp8_quantize_row(s->xq + t * in, s->x_scale + t * blocks, x + t * in, in, s->scale_ue8m0);
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < out; o++) {
        float *wq = s->row + (size_t)thread_id() * (size_t)s->max_in;
        tensor_row(W, o, 0, in, 0, wq); /* raw e4m3 values, no scale */
        for (int64_t t = 0; t < T; t++) {
            const float *xq = s->xq + t * in;
            float acc = 0.0f;
            for (int64_t b = 0; b < blocks; b++) {
                int64_t k0 = b * FP8_BLOCK, n = in - k0 < FP8_BLOCK ? in - k0 : FP8_BLOCK;
                float partial = (float)dot_exact_e4m3(xq + k0, wq + k0, n);
                acc += partial * s->x_scale[t * blocks + b] * tensor_scale(W, o, k0);
            }
            y[t * out + o] = acc;
        }
    }
}

void linear_forward(float *y, const float *x, int64_t T, const Tensor *W, Fp8Mode mode, const LinearScratch *s) {
    if (mode == FP8_TRAIN) {
        DSV3_ASSERT(s->hook);
        s->hook->forward(s->hook, y, x, T, W);
        return;
    }
    DSV3_ASSERT(W->cols <= s->max_in);
    if (mode == FP8_W8A8 && W->dtype == DT_F8_E4M3) {
        DSV3_ASSERT(T <= s->max_T);
        linear_w8a8(y, x, T, W, s);
    }
    else linear_dequant(y, x, T, W, s);
}

/*
 * Backward GEMMs. Both products are written as register-tiled loops: a TILE_A × TILE_B block of
 * the result is accumulated in a local array over the whole inner dimension, then added to
 * memory once. Compared with the textbook axpy form (one store per multiply-add), this reads
 * each operand TILE times less and stores once per tile, which is what lets a plain C compiler
 * keep the tile in vector registers. Each tile's sum runs in a fixed order, so results do not
 * depend on the number of threads.
 */
enum { TILE_A = 4, TILE_B = 8 };

/** dx[t][i] += Σ_o dy[t][o] · W[o][i]  (inner dimension: out). */
static void backward_dx(float *dx, const float *dy, const float *w, int64_t T, int64_t out, int64_t in) {
#pragma omp parallel for schedule(static)
    for (int64_t t0 = 0; t0 < T; t0 += TILE_A) {
        int64_t nt = T - t0 < TILE_A ? T - t0 : TILE_A;
        for (int64_t i0 = 0; i0 < in; i0 += TILE_B) {
            int64_t ni = in - i0 < TILE_B ? in - i0 : TILE_B;
            float acc[TILE_A][TILE_B] = { { 0 } };
            if (nt == TILE_A && ni == TILE_B) {
                for (int64_t o = 0; o < out; o++) {
                    const float *wr = w + o * in + i0;
                    for (int a = 0; a < TILE_A; a++) {
                        float g = dy[(t0 + a) * out + o];
                        for (int b = 0; b < TILE_B; b++) acc[a][b] += g * wr[b];
                    }
                }
            } else {
                for (int64_t o = 0; o < out; o++)
                    for (int64_t a = 0; a < nt; a++)
                        for (int64_t b = 0; b < ni; b++) acc[a][b] += dy[(t0 + a) * out + o] * w[o * in + i0 + b];
            }
            for (int64_t a = 0; a < nt; a++)
                for (int64_t b = 0; b < ni; b++) dx[(t0 + a) * in + i0 + b] += acc[a][b];
        }
    }
}

/** dW[o][i] += Σ_t dy[t][o] · x[t][i]  (inner dimension: T). */
static void backward_dw(float *dW, const float *dy, const float *x, int64_t T, int64_t out, int64_t in) {
#pragma omp parallel for schedule(static)
    for (int64_t o0 = 0; o0 < out; o0 += TILE_A) {
        int64_t no = out - o0 < TILE_A ? out - o0 : TILE_A;
        for (int64_t i0 = 0; i0 < in; i0 += TILE_B) {
            int64_t ni = in - i0 < TILE_B ? in - i0 : TILE_B;
            float acc[TILE_A][TILE_B] = { { 0 } };
            if (no == TILE_A && ni == TILE_B) {
                for (int64_t t = 0; t < T; t++) {
                    const float *xr = x + t * in + i0, *g = dy + t * out + o0;
                    for (int a = 0; a < TILE_A; a++)
                        for (int b = 0; b < TILE_B; b++) acc[a][b] += g[a] * xr[b];
                }
            } else {
                for (int64_t t = 0; t < T; t++)
                    for (int64_t a = 0; a < no; a++)
                        for (int64_t b = 0; b < ni; b++) acc[a][b] += dy[t * out + o0 + a] * x[t * in + i0 + b];
            }
            for (int64_t a = 0; a < no; a++)
                for (int64_t b = 0; b < ni; b++) dW[(o0 + a) * in + i0 + b] += acc[a][b];
        }
    }
}

void linear_backward(float *dx, float *dW, const float *dy, const float *x, int64_t T, const Tensor *W, Fp8Mode mode,
                     const LinearScratch *s) {
    DSV3_ASSERT(W->dtype == DT_F32);
    if (mode == FP8_TRAIN) {
        DSV3_ASSERT(s && s->hook);
        s->hook->backward(s->hook, dx, dW, dy, x, T, W);
        return;
    }
    const float *w = (const float *)(const void *)W->data;
    if (dx) backward_dx(dx, dy, w, T, W->rows, W->cols);
    if (dW) backward_dw(dW, dy, x, T, W->rows, W->cols);
}
