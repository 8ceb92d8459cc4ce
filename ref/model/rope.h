/**
 * @file rope.h
 * @brief Rotary position embedding with YaRN frequencies and interleaved pairs (docs/model.md §4).
 *
 * Pairs are adjacent elements (x[2i], x[2i+1]) — the official `view_as_complex` layout that
 * the released weights need (docs/model.md §4.1, §11 #4; NeoX rotate-half pairing is wrong here):
 *     y[2i]   = x[2i]·cos(p·θ'_i) − x[2i+1]·sin(p·θ'_i)
 *     y[2i+1] = x[2i]·sin(p·θ'_i) + x[2i+1]·cos(p·θ'_i)
 * RoPE touches only the 64-d q_pe of every head and the shared 64-d k_pe.
 */
#ifndef DSV3_ROPE_H
#define DSV3_ROPE_H

#include <stdint.h>

#include "config.h"

/** Frequencies θ'_i for i < dim/2 (after the YaRN blend), and the cos/sin magnitude. */
typedef struct {
    int dim;                /**< qk_rope_head_dim = 64 */
    float *inv_freq;        /**< θ'_i [dim/2], FP32 exactly as the official precompute_freqs_cis */
    float attention_factor; /**< multiplies cos and sin; 1.0 for DeepSeek-V3 (docs/model.md §3.5) */
} Rope;

/** Computes θ'_i from the config (YaRN whenever rope_scaling says so, docs/model.md §4.3). */
int rope_init(Rope *r, const Config *c, Err *err);
/** Frees the frequency table. */
void rope_free(Rope *r);

/** cos/sin of the angles p·θ'_i (FP32 angle, docs/model.md §4.2) into cos_out, sin_out [dim/2]. */
void rope_cos_sin(float *cos_out, float *sin_out, int64_t pos, const Rope *r);

/** Rotates one dim-vector in place by the given angles. */
void rope_forward(float *x, const float *cos_v, const float *sin_v, int dim);

/** Backward of rope_forward: the transpose (inverse) rotation applied to the gradient in place. */
void rope_backward(float *dx, const float *cos_v, const float *sin_v, int dim);

#endif
