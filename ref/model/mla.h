/**
 * @file mla.h
 * @brief Multi-head Latent Attention (paper §2.1.1 eqs. 1–11; docs/model.md §3), naive and
 *        weight-absorbed forms over a KV cache, for a chunk of T tokens at positions
 *        pos0 .. pos0+T−1 (query i sees keys t ≤ pos0+i, docs/model.md §3.4).
 */
#ifndef DSV3_MLA_H
#define DSV3_MLA_H

#include "context.h"
#include "weights.h"

/** Intermediates of one MLA call over T tokens (each [T][...]); the backward pass reads them. */
typedef struct {
    float *c_q;       /**< [T][Dq]      c_q = W_DQ · x                     (eq. 6) */
    float *c_q_norm;  /**< [T][Dq]      RMSNorm(c_q) (q_a_layernorm) */
    float *rstd_q;    /**< [T] */
    float *q;         /**< [T][H][Dn+Dr] q = W_UQ · ĉ_q; its rope part rotated in place (eqs. 7–8) */
    float *kv_a;      /**< [T][Dc+Dr]   [c_kv | k_pe] = kv_a_proj · x before norm/rope (eqs. 1, 3) */
    float *c_kv;      /**< [T][Dc]      RMSNorm(c_kv) (kv_a_layernorm) — what the absorb cache holds */
    float *rstd_kv;   /**< [T] */
    float *k_pe;      /**< [T][Dr]      RoPE(k_pe), shared by all heads (eq. 3) */
    float *kv;        /**< naive: [T][H][Dn+Dv] [k_nope | v] = W_UKV · ĉ_kv (eqs. 2, 5) */
    float *q_abs;     /**< absorb: [T][H][Dc] W_UKᵀ q_nope */
    float *u;         /**< absorb: [T][H][Dc] Σ_t P(t) ĉ_kv(t) */
    float *att;       /**< optional [T][H][att_stride] softmax probabilities (training); NULL → not kept */
    int64_t att_stride; /**< row length of att (≥ the longest sequence) */
    float *o;         /**< [T][H][Dv]   per-head attention output (eq. 10) */
} MLAActs;

/**
 * y [T][D] = MLA(x [T][D]) for tokens at positions pos0.., writing their keys into @p cache
 * (positions pos0 .. pos0+T−1) and attending over cache positions 0 .. pos0+t.
 * x is the already-normalized block input (input_layernorm).
 */
void mla_forward(float *y, const float *x, int64_t T, int64_t pos0, const LayerWeights *w, LayerCache *cache,
                 MLAActs *a, const ForwardContext *ctx);

/**
 * Backward of mla_forward over a whole sequence (training: pos0 = 0, naive form, attention
 * probabilities kept in a->att), accumulating (+=): dx [T][D] += ∂L/∂x, weight and latent-norm
 * gradients into the FP32 tensors/vectors of @p dw (entries without data are skipped), given
 * dy [T][D] = ∂L/∂y. @p cache holds the keys/values the forward wrote (positions 0..T−1);
 * @p dcache (same layout, naive) and the MLAActs-shaped scratch @p da must be zero on entry.
 * Weights must be FP32. See mla_backward.c for the derivation.
 */
void mla_backward(float *dx, const LayerWeights *dw, const float *dy, const float *x, int64_t T, const LayerWeights *w,
                  const LayerCache *cache, LayerCache *dcache, const MLAActs *a, MLAActs *da, const ForwardContext *ctx);

/**
 * The absorbed attention of ONE query token over S cached positions (docs/model.md §3.3), for all H heads:
 *     s_h(t) = scale · (q_abs[h]·c_kv[t] + q_pe[h]·k_pe[t]),  P_h = softmax_t(s_h),  u[h] = Σ_t P_h(t) c_kv[t].
 * u [H][Dc] (output), q_abs [H][Dc], q_pe: head h at q_pe + h·q_pe_stride (Dr values), c_kv [S][Dc],
 * k_pe [S][Dr]. P receives each head's probabilities: head h's S values at P + h·P_stride
 * (P_stride = 0: one scratch row reused by every head). mla_forward's absorbed path calls this
 * once per token; it is also the oracle of the CUDA MLA decode kernel (kernels/mla_decode.cu).
 */
void mla_attend_absorb(float *u, const float *q_abs, const float *q_pe, int64_t q_pe_stride, const float *c_kv,
                       const float *k_pe, int64_t S, int64_t H, int64_t Dc, int64_t Dr, float scale, float *P,
                       int64_t P_stride);

/** x[i] ← exp(x[i] − max) / Σ, in FP32 (docs/model.md §3.4: softmax over keys in FP32). */
void softmax_inplace(float *x, int64_t n);

#endif
