/**
 * @file ffn.h
 * @brief The SwiGLU feed-forward network of the dense layers and of every expert (docs/model.md §2):
 *        FFN(x) = W2 · ( silu(W1·x) ⊙ W3·x ),  silu(z) = z / (1 + e^−z).
 */
#ifndef DSV3_FFN_H
#define DSV3_FFN_H

#include "linear.h"
#include "weights.h"

/** Intermediates of one FFN call over T rows, each [T][I]; kept for the backward pass. */
typedef struct {
    float *h_gate; /**< W1·x */
    float *h_up;   /**< W3·x */
    float *h_act;  /**< silu(W1·x) ⊙ W3·x, the input of W2 */
} FFNActs;

/** h[i] = silu(gate[i]) · up[i]. */
void swiglu_forward(float *h, const float *gate, const float *up, int64_t n);
/** Backward of swiglu_forward: dgate[i] += dh·up·silu'(gate), dup[i] += dh·silu(gate). */
void swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t n);

/** out [T][D] = FFN(x [T][D]) with weights @p w; intermediates into @p a. */
void ffn_forward(float *out, const float *x, int64_t T, const FFNWeights *w, FFNActs *a, Fp8Mode mode,
                 const LinearScratch *s);

/**
 * Backward of ffn_forward, accumulating (+=): dx [T][D] += ∂L/∂x and the weight gradients into
 * the FP32 tensors of @p dw (a tensor without data is skipped), given dout [T][D] = ∂L/∂out,
 * the forward's input @p x and intermediates @p a. @p da is scratch of the FFNActs shape that
 * must be zero on entry (it receives ∂L/∂(W1·x), ∂L/∂(W3·x), ∂L/∂h_act). W must be FP32; @p mode and
 * @p s as for linear_backward.
 */
void ffn_backward(float *dx, const FFNWeights *dw, const float *dout, const float *x, int64_t T, const FFNWeights *w,
                  const FFNActs *a, FFNActs *da, Fp8Mode mode, const LinearScratch *s);

#endif
