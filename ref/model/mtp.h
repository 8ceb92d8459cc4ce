/**
 * @file mtp.h
 * @brief Multi-Token Prediction modules (paper §2.2 eqs. 21–25; docs/model.md §7.2): one module's forward
 *        and backward (used by inference and training alike) and the inference drivers.
 */
#ifndef DSV3_MTP_H
#define DSV3_MTP_H

#include "model.h"

/**
 * Intermediates of one MTP module over T rows (docs/model.md §7.2). Training keeps one per module
 * (with the rstd arrays); inference points them into its RunState (rstd arrays NULL).
 */
typedef struct {
    float *emb;      /**< [T][D] Emb(x_{p+k}): the embeddings of the tokens k ahead */
    float *rstd_e;   /**< [T] 1/rms of enorm's input (training; NULL: not kept) */
    float *rstd_h;   /**< [T] 1/rms of hnorm's input (training) */
    float *cat;      /**< [T][2D] [enorm(e) | hnorm(h)], embedding first (docs/model.md §11 #1) */
    float *h;        /**< [T][D] eh_proj output, then the block's residual stream in place */
    LayerActs block; /**< the decoder block's intermediates */
    float *normed;   /**< [T][D] shared_head.norm output: the head's input and the next depth's h */
    float *rstd_out; /**< [T] 1/rms of shared_head.norm's input (training) */
} MTPActs;

/**
 * One MTP module (paper eqs. 21–22 with the released weights' wiring, docs/model.md §7.2) over T rows at
 * positions pos0..: row i combines @p h_prev [T][D] (the previous depth's representation at
 * position pos0+i) with the embedding of @p next_ids[i], runs the module's block (keys into
 * @p cache) and leaves shared_head.norm's output in a->normed. The head (eq. 23) is the caller's.
 */
void mtp_module_forward(const int *next_ids, const float *h_prev, int64_t T, int64_t pos0, const MTPWeights *w,
                        LayerCache *cache, MTPActs *a, const ForwardContext *ctx);

/**
 * Backward of mtp_module_forward over a whole sequence (training: pos0 = 0, naive attention),
 * accumulating (+=): @p dh_prev [T][D] += ∂L/∂h_prev given @p dnormed = ∂L/∂a->normed; weight
 * gradients into @p dw (its embed_tokens is the main embedding's gradient when they are shared).
 * @p da (emb, cat, h and the block's LayerActs as scratch) and @p dcache must be zero on entry.
 */
void mtp_module_backward(float *dh_prev, const MTPWeights *dw, const float *dnormed, const int *next_ids,
                         const float *h_prev, int64_t T, const MTPWeights *w, const LayerCache *cache, LayerCache *dcache,
                         const MTPActs *a, MTPActs *da, double balance_alpha, const ForwardContext *ctx);

/**
 * Runs MTP module @p k over T rows at positions mtp_kv->len.. (then mtp_kv->len += T).
 * Row i combines the main model's post-final-norm hidden @p h [T][D] at position p with the
 * embedding of the next token @p next_ids[i] = x_{p+1}, and predicts x_{p+2}.
 * Outputs (may be NULL): @p logits [n_logits][V] for the last n_logits rows; @p out_normed
 * [T][D] the shared_head.norm output (what multi-step drafting feeds back as the next h).
 */
int mtp_forward(const Model *m, int k, RunState *s, KVCache *mtp_kv, const int *next_ids, const float *h, int64_t T,
                float *logits, int64_t n_logits, float *out_normed, Err *err);

/**
 * The `logits --mtp` contract: MTP logits [T−1][V] for a whole sequence, row p from (h_p,
 * ids[p+1]) at RoPE position p, causal over p. @p normed [T][D] are the main model's
 * post-norm hiddens. Rows 0..first−2 run as one chunk, the rest one at a time (mirroring
 * the main model's --prefill split). @p ep: expert parallelism for the module's MoE layer (NULL: local).
 */
int mtp_logits_sequence(const Model *m, int k, const int *ids, const float *normed, int64_t T, int64_t first,
                        AttnMode attn, Fp8Mode fp8, MoeHook *moe_hook, float *out, Err *err);

/** Rows of the first chunk of mtp_logits_sequence for @p T ids whose main model ran @p first
 *  as one chunk (first − 1, at least 1, at most T − 1); the rest go one at a time. */
int64_t mtp_first_chunk(int64_t T, int64_t first);

#endif
