/**
 * @file embed.c
 * @brief Embedding lookup and its gradient (docs/model.md §2; paper eq. 21 for the MTP modules).
 *
 * The lookup is a one-hot matrix product h = onehot(ids) · Emb, so its gradient is the
 * transposed product: a scatter-add of dh into the rows that were read. Tokens are visited in
 * order, which keeps the sum of repeated tokens deterministic.
 */
#include "embed.h"

void embedding_forward(float *h, const int *ids, int64_t T, const Tensor *table) {
    int64_t D = table->cols;
    for (int64_t t = 0; t < T; t++) tensor_row(table, ids[t], 0, D, 1, h + t * D);
}

void embedding_backward(float *dtable, const float *dh, const int *ids, int64_t T, int64_t D) {
    if (!dtable) return;
    for (int64_t t = 0; t < T; t++) {
        float *row = dtable + (int64_t)ids[t] * D;
        const float *g = dh + t * D;
        for (int64_t i = 0; i < D; i++) row[i] += g[i];
    }
}
