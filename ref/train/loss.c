/**
 * @file loss.c
 * @brief Cross-entropy (paper eq. 24 for the MTP depths; the plain next-token loss for the
 *        main model). Shapes: T rows, V vocab_size.
 *
 *     CE_t = −log softmax(z_t)[y_t] = logsumexp(z_t) − z_t[y_t]
 *     ∂CE_t/∂z_t = softmax(z_t) − onehot(y_t)
 * The max is subtracted before exponentiating (no overflow for any finite logits).
 */
#include "loss.h"

#include <math.h>

double cross_entropy_forward(float *probs, const float *logits, const int *targets, int64_t T, int64_t V) {
    double total = 0.0;
    for (int64_t t = 0; t < T; t++) {
        const float *z = logits + t * V;
        float *p = probs + t * V;
        float m = -INFINITY;
        for (int64_t i = 0; i < V; i++) m = fmaxf(m, z[i]);
        int y = targets[t];
        double zy = y >= 0 ? (double)z[y] : 0.0; /* read before p (possibly z itself) is written */
        double sum = 0.0;
        for (int64_t i = 0; i < V; i++) {
            double e = exp((double)z[i] - (double)m);
            p[i] = (float)e;
            sum += e;
        }
        if (y >= 0) total += (double)m + log(sum) - zy;
        float inv = (float)(1.0 / sum);
        for (int64_t i = 0; i < V; i++) p[i] *= inv;
    }
    return total;
}

void cross_entropy_backward(float *dlogits, const float *probs, const int *targets, int64_t T, int64_t V, float scale) {
    for (int64_t t = 0; t < T; t++) {
        int y = targets[t];
        if (y < 0) continue;
        const float *p = probs + t * V;
        float *d = dlogits + t * V;
        for (int64_t i = 0; i < V; i++) d[i] += scale * p[i];
        d[y] -= scale;
    }
}
