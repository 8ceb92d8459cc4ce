/**
 * @file ffn.c
 * @brief SwiGLU FFN (docs/model.md §2; official MLP/Expert.forward: w2(silu(w1(x)) * w3(x))) and its
 *        backward. Shapes: T rows, D hidden, I the FFN width (dense or expert).
 *
 *   forward:  g = W1 x,  u = W3 x,  a = silu(g) ⊙ u,  out = W2 a
 *   backward: da = W2ᵀ dout,  dW2 += dout aᵀ
 *             dg = da ⊙ u ⊙ silu'(g),  du = da ⊙ silu(g),   silu'(z) = σ(z)(1 + z(1 − σ(z)))
 *             dx = W1ᵀ dg + W3ᵀ du,  dW1 += dg xᵀ,  dW3 += du xᵀ
 */
#include "ffn.h"

#include <math.h>

#include "base/threads.h"

/** Fewer elements than this run on one thread (an expf each: waking the others would cost more). */
#define SWIGLU_PARALLEL_MIN 16384

void swiglu_forward(float *h, const float *gate, const float *up, int64_t n) {
    /* elementwise, so any split over the threads gives the same values */
#pragma omp parallel for schedule(static) if (n >= SWIGLU_PARALLEL_MIN && !threads_in_parallel())
    for (int64_t i = 0; i < n; i++) h[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

void swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float sig = 1.0f / (1.0f + expf(-gate[i]));
        float silu = gate[i] * sig;
        dgate[i] += dh[i] * up[i] * sig * (1.0f + gate[i] * (1.0f - sig)); /* silu' = σ(1 + z(1−σ)) */
        dup[i] += dh[i] * silu;
    }
}

void ffn_forward(float *out, const float *x, int64_t T, const FFNWeights *w, FFNActs *a, Fp8Mode mode,
                 const LinearScratch *s) {
    int64_t I = w->gate_proj.rows;
    linear_forward(a->h_gate, x, T, &w->gate_proj, mode, s);
    linear_forward(a->h_up, x, T, &w->up_proj, mode, s);
    swiglu_forward(a->h_act, a->h_gate, a->h_up, T * I);
    linear_forward(out, a->h_act, T, &w->down_proj, mode, s);
}

void ffn_backward(float *dx, const FFNWeights *dw, const float *dout, const float *x, int64_t T, const FFNWeights *w,
                  const FFNActs *a, FFNActs *da, Fp8Mode mode, const LinearScratch *s) {
    int64_t I = w->gate_proj.rows;
    linear_backward(da->h_act, tensor_f32_mut(&dw->down_proj), dout, a->h_act, T, &w->down_proj, mode, s);
    swiglu_backward(da->h_gate, da->h_up, da->h_act, a->h_gate, a->h_up, T * I);
    linear_backward(dx, tensor_f32_mut(&dw->gate_proj), da->h_gate, x, T, &w->gate_proj, mode, s);
    linear_backward(dx, tensor_f32_mut(&dw->up_proj), da->h_up, x, T, &w->up_proj, mode, s);
}
