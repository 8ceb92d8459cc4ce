/**
 * @file mla_decode.h
 * @brief Weight-absorbed MLA decode attention over a paged latent cache (docs/model.md §3.3): the
 *        batched form of ref mla_attend_absorb for one new token per request.
 *
 * Per request b and head h, over the request's S_b cached positions t:
 *     s_h(t) = scale · (q_abs[b][h]·c_kv(t) + q_pe[b][h]·k_pe(t))       (576-d dot, FP32)
 *     u[b][h] = Σ_t softmax_t(s_h)(t) · c_kv(t)                            (512-d, FP32)
 * u is the attention output before W_UV (the caller applies o = W_UV u and o_proj).
 *
 * Cache layout (FlashMLA's): kv_cache [num_blocks][64][576] bf16, each token's row =
 * [normalized c_kv (512) | roped k_pe (64)]; a request's token t lives in physical block
 * block_table[b][t / 64], row t % 64. Requests have their own lengths (seq_lens).
 *
 * Numerics: q, c_kv, k_pe are bf16 (exact inputs to bf16 tensor-core products, FP32 sums);
 * softmax in FP32 with a running max (base-2 exponent); the probabilities are rounded to
 * bf16 for the P·V product, normalized by the FP32 sum of the unrounded ones. Expected
 * difference from the FP32 reference on the same bf16 inputs: ≤ ~2^-8 of max|c_kv| per element.
 *
 * Split-K along S ("flash decoding"): num_splits CTAs share each request's positions and a
 * second kernel merges their partial results by log-sum-exp.
 *
 * VALIDATION STATUS: make test-gpu and compute-sanitizer pass on an H100 (2026-11-22). FP8
 * latent cache: not implemented.
 */
#ifndef DSV3_FAST_MLA_DECODE_H
#define DSV3_FAST_MLA_DECODE_H

#include "fast.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Latent (c_kv) width the kernel is built for: kv_lora_rank of DeepSeek-V3. */
#define MLA_DC 512
/** RoPE key width: qk_rope_head_dim of DeepSeek-V3. */
#define MLA_DR 64
/** Tokens per cache block (page). */
#define MLA_PAGE 64
/** Heads per CTA; H must be a multiple. */
#define MLA_HEADS_PER_CTA 64

/** One batched decode step. */
typedef struct {
    float *u;                 /**< [B][H][512] output: Σ_t P_h(t) c_kv(t) */
    float *lse;               /**< [B][H] natural-log softmax normalizer log Σ_t e^{s_h(t)} (optional; NULL) */
    const uint16_t *q_abs;    /**< [B][H][512] bf16 absorbed queries W_UKᵀ q_nope */
    const uint16_t *q_pe;     /**< [B][H][64] bf16 roped query rope parts */
    const uint16_t *kv_cache; /**< [num_blocks][64][576] bf16 latent cache */
    const int *block_table;   /**< [B][block_table_stride] physical block of each 64-token page */
    int block_table_stride;   /**< entries per row of block_table (≥ ceil(max seq len / 64)) */
    const int *seq_lens;      /**< [B] cached positions per request (the new token's own included) */
    int B;                    /**< requests */
    int H;                    /**< heads, a multiple of 64 (128 for V3) */
    int max_seq_len;          /**< host-side upper bound of seq_lens, for choosing num_splits */
    float scale;              /**< softmax scale, 0.1352337788608801 for V3 (docs/model.md §3.5) */
    int num_splits;           /**< ≥ 1, or 0 = chosen from B, H, max_seq_len and the SM count */
    float *workspace;         /**< split partials; mla_decode_workspace_bytes() (NULL only if 1 split) */
    size_t workspace_bytes;   /**< bytes at workspace */
} MlaDecodeParams;

/** The split count num_splits = 0 resolves to on the current device (1 if no device). */
int mla_decode_num_splits(int B, int H, int max_seq_len);

/** Workspace bytes for @p num_splits splits (0 when num_splits ≤ 1). */
size_t mla_decode_workspace_bytes(int B, int H, int num_splits);

/**
 * Enqueues the decode attention. Returns 0, or -1 with a message in @p err (H not a multiple
 * of 64, missing or small workspace, device without enough shared memory, launch error).
 * A request with seq_lens[b] = 0 gets u = 0 and lse = −∞.
 */
int mla_decode_cuda(const MlaDecodeParams *p, cudaStream_t stream, Err *err);

#ifdef __cplusplus
}
#endif

#endif /* DSV3_FAST_MLA_DECODE_H */
