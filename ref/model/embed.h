/**
 * @file embed.h
 * @brief Token embedding (docs/model.md §2: h0 = Emb[token], no scaling) and its backward, used by the
 *        main model (model.embed_tokens) and by every MTP module (paper eq. 21: Emb(t_{i+k})).
 */
#ifndef DSV3_EMBED_H
#define DSV3_EMBED_H

#include "tensor.h"

/** h [T][D] = rows ids[t] of @p table [V][D] (decoded to FP32; ids are validated by the caller). */
void embedding_forward(float *h, const int *ids, int64_t T, const Tensor *table);

/**
 * Backward of embedding_forward: dtable[ids[t]] += dh[t] for every t (a token that appears
 * twice gets both rows). @p dtable [V][D] FP32; NULL skips.
 */
void embedding_backward(float *dtable, const float *dh, const int *ids, int64_t T, int64_t D);

#endif
