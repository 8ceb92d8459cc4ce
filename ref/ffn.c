/**
 * @file ffn.c
 * @brief SwiGLU FFN (spec §2; official MLP/Expert.forward: w2(silu(w1(x)) * w3(x))).
 */
#include "ffn.h"

#include <math.h>

void swiglu_forward(float *h, const float *gate, const float *up, int64_t n) {
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
