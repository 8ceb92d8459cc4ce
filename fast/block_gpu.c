/**
 * @file block_gpu.c
 * @brief A decoder block on the GPU (docs/model.md §2): ref/model/block.c's block_forward and ref/model/ffn.c's
 *        ffn_forward, over the T tokens of a batch.
 *
 *   h ← h + MLA(attn_norm(h))
 *   h ← h + FFN(ffn_norm(h))      FFN = dense SwiGLU for the first layers, MoE after (docs/model.md §5.4)
 *   FFN(x) = W2 (silu(W1 x) ⊙ W3 x)
 */
#include "layers_gpu.h"

#include "ops.h"

int fast_swiglu_forward(const FastModel *fm, FastRunState *s, float *y, const float *x, int64_t M, const Tensor *w1,
                        const Tensor *w3, const Tensor *w2, const int *group_start, int G, Err *err) {
    int64_t D = fm->config.hidden_size, I = w1->rows;
    /* gate and up side by side in one [M][2I] row, so SwiGLU reads both halves with one stride */
    if (fast_linear_forward(fm, s, s->h13, 2 * I, x, D, M, w1, group_start, G, fm->fp8, err) ||
        fast_linear_forward(fm, s, s->h13 + I, 2 * I, x, D, M, w3, group_start, G, fm->fp8, err) ||
        swiglu_forward_cuda(s->act, FAST_F32, I, s->h13, s->h13 + I, FAST_F32, 2 * I, M, I, fm->stream, err))
        return -1;
    return fast_linear_forward(fm, s, y, D, s->act, I, M, w2, group_start, G, fm->fp8, err);
}

int fast_ffn_forward(const FastModel *fm, FastRunState *s, float *y, const float *x, int64_t T, const FFNWeights *w,
                     Err *err) {
    return fast_swiglu_forward(fm, s, y, x, T, &w->gate_proj, &w->up_proj, &w->down_proj, NULL, 1, err);
}

int fast_block_forward(const FastModel *fm, FastRunState *s, FastKVCache *kv, int layer, int cache_layer, int64_t T,
                       int64_t max_seq_len, Err *err) {
    const Config *c = &fm->config;
    const LayerWeights *w = fast_block_weights(fm, layer);
    cudaStream_t st = fm->stream;
    int64_t D = c->hidden_size;
    float eps = (float)c->rms_norm_eps;
    /* h = h + MLA(attn_norm(h)) */
    if (rmsnorm_forward_cuda(s->x, FAST_F32, D, s->h, FAST_F32, D, w->input_layernorm, T, D, eps, NULL, st, err) ||
        fast_mla_forward(fm, s, kv, layer, cache_layer, s->branch, s->x, T, max_seq_len, err) ||
        residual_add_cuda(s->h, FAST_F32, s->h, FAST_F32, s->branch, FAST_F32, T * D, st, err))
        return -1;
    /* h = h + FFN(ffn_norm(h)) */
    if (rmsnorm_forward_cuda(s->x, FAST_F32, D, s->h, FAST_F32, D, w->post_attention_layernorm, T, D, eps, NULL, st, err))
        return -1;
    int rc = !w->is_moe ? fast_ffn_forward(fm, s, s->branch, s->x, T, &w->mlp, err)
             : s->ep    ? fast_ep_moe_forward(fm, s, s->ep, layer, s->branch, s->x, T, err)
                        : fast_moe_forward(fm, s, layer, s->branch, s->x, T, err);
    if (rc) return -1;
    return residual_add_cuda(s->h, FAST_F32, s->h, FAST_F32, s->branch, FAST_F32, T * D, st, err);
}
