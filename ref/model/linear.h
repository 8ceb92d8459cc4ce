/**
 * @file linear.h
 * @brief y = x · Wᵀ for a stored weight W [out][in], in one of two numerics modes (docs/model.md §8.5):
 *        `dequant` (FP32 activations × FP32-dequantized weights, the default) and `w8a8`
 *        (emulates the GPU: 1×128 FP8 activations, per-128-K exact block partials, FP32
 *        accumulation, docs/model.md §8.3–8.4). Non-FP8 weights always take the FP32 path.
 *
 * The FP32 sum of one output, y[t][o] = Σ_i x[t][i]·W[o][i], runs in one fixed order, whatever the
 * number of tokens, the kernel (one row at a time for decode, a blocked panel for prefill) or the
 * number of threads, so every result is bit-identical across them:
 *   - 16 lanes: lane l accumulates the products of the columns i ≡ l (mod 16) in ascending i,
 *     starting from 0 (each product rounded to FP32, then added: no fused multiply-add);
 *   - the lanes are then added as a tree: l += l+8 (l < 8), l += l+4 (l < 4), l += l+2 (l < 2), 0 + 1;
 *   - FP8 weights (dequant mode): the above over each 128-column block b gives partial_b, and
 *     y = (((0 + partial_0·s_0) + partial_1·s_1) + …) with s_b = scale_inv[o/128][b].
 * The W8A8 mode's block partials are exact (any order gives the same value).
 */
#ifndef DSV3_LINEAR_H
#define DSV3_LINEAR_H

#include "tensor.h"

/** How FP8 weights are multiplied. */
typedef enum {
    FP8_DEQUANT = 0, /**< W dequantized block by block to FP32; activations stay FP32 */
    FP8_W8A8 = 1,    /**< activations quantized per token per 128 channels; W8A8 block GEMM */
    FP8_TRAIN = 2,   /**< training under the paper's FP8 recipe: the linear's GEMMs run in
                          LinearScratch.hook (installed by train/fp8_recipe.c) */
} Fp8Mode;

struct LinearHook;
/**
 * A stand-in for the three GEMMs of a linear layer, installed by a layer above the model (the FP8
 * training recipe, train/fp8_recipe.h). linear_forward / linear_backward call it for FP8_TRAIN
 * and know nothing else about it, so the model never includes the layers above it.
 */
typedef struct LinearHook {
    /** Fprop: y [T][W->rows] = x [T][W->cols] · Wᵀ. */
    void (*forward)(struct LinearHook *h, float *y, const float *x, int64_t T, const Tensor *W);
    /** Dgrad dx += dy · W (if dx) and Wgrad dW += dyᵀ · x (if dW). */
    void (*backward)(struct LinearHook *h, float *dx, float *dW, const float *dy, const float *x, int64_t T,
                     const Tensor *W);
} LinearHook;
/** Rows of W one prefill panel decodes to FP32 at a time (per thread, in the row scratch). */
#define LINEAR_PANEL_ROWS 16

/** Scratch a linear needs; sized by linear_scratch_floats(). */
typedef struct {
    float *row;       /**< per thread: a panel of LINEAR_PANEL_ROWS decoded weight rows, [threads][PANEL][max_in] */
    float *xq;        /**< W8A8: quantized activations [T][max_in] */
    float *x_scale;   /**< W8A8: activation scales [T][ceil(max_in/128)] */
    int64_t max_in;   /**< capacity of a row */
    int64_t max_T;    /**< tokens xq/x_scale hold: the most rows one linear_forward call may take in W8A8 */
    int scale_ue8m0;  /**< W8A8: activation scales rounded up to powers of two (config scale_fmt "ue8m0") */
    LinearHook *hook; /**< FP8_TRAIN: runs the linear (NULL unless a trainer installed one) */
    int threads;      /**< threads the row scratch has room for (the parallel loops use at most these) */
} LinearScratch;

/** Floats the three scratch arrays need together for up to @p T tokens and @p max_in inputs
 *  (room for the larger of the current thread count and the online cores). */
size_t linear_scratch_floats(int64_t T, int64_t max_in);
/** The threads that per-thread scratch is sized for now: max(threads_get(), online cores). */
int linear_scratch_threads(void);
/** Carves a LinearScratch out of @p buf (linear_scratch_floats() floats). */
LinearScratch linear_scratch_init(float *buf, int64_t T, int64_t max_in);

/**
 * y[t][o] = Σ_i x[t][i] · W[o][i] for t < T, o < W->rows, i < W->cols, in the order stated above.
 * y [T][W->rows], x [T][W->cols]. y must not alias x. Runs W's rows over the threads
 * (threads_set); must not be called from inside a parallel region.
 */
void linear_forward(float *y, const float *x, int64_t T, const Tensor *W, Fp8Mode mode, const LinearScratch *s);

/**
 * Rows [r0, r1) of W applied with strides: y[t·ldy + (o − r0)] = Σ_i x[t·ldx + i]·W[o][i] for t < T,
 * r0 ≤ o < r1 — one head's slice of kv_b_proj applied to that head's latent (MLA's absorbed form).
 * The rows are W dequantized to FP32 (for FP8: each element e4m3 · scale rounded to FP32, as the
 * official code dequantizes kv_b_proj for the absorbed form) and summed in the 16-lane order.
 * Single-threaded (callers may run it inside their own parallel loop). @p panel:
 * LINEAR_PANEL_ROWS × W->cols floats of scratch for the blocked kernel, or NULL for the one-row
 * kernel (each weight row decoded inside its dot product, one token at a time), which gives the
 * same bits — tests/test_threads.c checks that they do.
 */
void linear_rows(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t T, const Tensor *W, int64_t r0, int64_t r1,
                 float *panel);

/** Threads for a parallel loop of @p work multiply-adds that uses @p s's per-thread scratch:
 *  threads_get(), at most s->threads, and 1 below 2^16 (waking threads would cost more). */
int linear_threads(const LinearScratch *s, int64_t work);

/** Thread @p tid's panel in @p s (LINEAR_PANEL_ROWS × max_in floats), for linear_rows. */
float *linear_scratch_panel(const LinearScratch *s, int tid);

/**
 * C[t·ldc + n] += Σ_k A[t·lda + k] · B[k·ldb + n] for t < T, n < N, k < K — a product with B not
 * transposed (FP32, e.g. decoded weight rows), each sum in ascending k from 0 and then added to C,
 * in register tiles of 4 × 32 outputs (linear_backward's kernel). Single-threaded.
 */
void linear_accumulate(float *C, int64_t ldc, const float *A, int64_t lda, const float *B, int64_t ldb, int64_t T, int64_t K,
                       int64_t N);

/**
 * Backward of linear_forward (training; W must be DT_F32): dx[T][in] += dy · W (if dx),
 * dW[out][in] += dyᵀ · x (if dW); in FP32, or through @p s->hook when @p mode is FP8_TRAIN
 * (@p s may be NULL otherwise).
 */
void linear_backward(float *dx, float *dW, const float *dy, const float *x, int64_t T, const Tensor *W, Fp8Mode mode,
                     const LinearScratch *s);

/** Σ_i a[i]·b[i] in FP32 in the 16-lane order of linear_forward (deterministic, vectorizable). */
float dot_f32(const float *a, const float *b, int64_t n);

#endif /* DSV3_LINEAR_H */
