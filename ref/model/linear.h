/**
 * @file linear.h
 * @brief y = x · Wᵀ for a stored weight W [out][in], in one of two numerics modes (docs/model.md §8.5):
 *        `dequant` (FP32 activations × FP32-dequantized weights, the default) and `w8a8`
 *        (emulates the GPU: 1×128 FP8 activations, per-128-K exact block partials, FP32
 *        accumulation, docs/model.md §8.3–8.4). Non-FP8 weights always take the FP32 path.
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

/** Scratch a linear needs; sized by linear_scratch_floats(). */
typedef struct {
    float *row;       /**< one decoded weight row per thread: [threads][max_in] */
    float *xq;        /**< W8A8: quantized activations [T][max_in] */
    float *x_scale;   /**< W8A8: activation scales [T][ceil(max_in/128)] */
    int64_t max_in;   /**< capacity of a row */
    int64_t max_T;    /**< tokens xq/x_scale hold: the most rows one linear_forward call may take in W8A8 */
    int scale_ue8m0;  /**< W8A8: activation scales rounded up to powers of two (config scale_fmt "ue8m0") */
    LinearHook *hook; /**< FP8_TRAIN: runs the linear (NULL unless a trainer installed one) */
} LinearScratch;

/** Floats the three scratch arrays need together for up to @p T tokens and @p max_in inputs. */
size_t linear_scratch_floats(int64_t T, int64_t max_in);
/** Carves a LinearScratch out of @p buf (linear_scratch_floats() floats). */
LinearScratch linear_scratch_init(float *buf, int64_t T, int64_t max_in);

/**
 * y[t][o] = Σ_i x[t][i] · W[o][i] for t < T, o < W->rows, i < W->cols.
 * y [T][W->rows], x [T][W->cols]. y must not alias x.
 */
void linear_forward(float *y, const float *x, int64_t T, const Tensor *W, Fp8Mode mode, const LinearScratch *s);

/**
 * Backward of linear_forward (training; W must be DT_F32): dx[T][in] += dy · W (if dx),
 * dW[out][in] += dyᵀ · x (if dW); in FP32, or through @p s->hook when @p mode is FP8_TRAIN
 * (@p s may be NULL otherwise).
 */
void linear_backward(float *dx, float *dW, const float *dy, const float *x, int64_t T, const Tensor *W, Fp8Mode mode,
                     const LinearScratch *s);

/** Σ_i a[i]·b[i] in FP32 with 8 independent partial sums (deterministic, vectorizable). */
float dot_f32(const float *a, const float *b, int64_t n);

#endif /* DSV3_LINEAR_H */
