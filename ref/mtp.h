/**
 * @file mtp.h
 * @brief Multi-Token Prediction module at inference (paper §2.2 eqs. 21–23; spec §7.2).
 */
#ifndef DSV3_MTP_H
#define DSV3_MTP_H

#include "model.h"

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
 * the main model's --prefill split).
 */
int mtp_logits_sequence(const Model *m, int k, const int *ids, const float *normed, int64_t T, int64_t first,
                        AttnMode attn, Fp8Mode fp8, float *out, Err *err);

#endif
