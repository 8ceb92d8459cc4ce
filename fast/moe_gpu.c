/**
 * @file moe_gpu.c
 * @brief DeepSeekMoE on the GPU (paper §2.1.2; docs/model.md §5): ref/model/moe.c's moe_forward for the T
 *        tokens of a batch, with one grouped GEMM per expert matrix instead of a loop over experts.
 *
 *   logits = x·G_eᵀ (BF16 router, FP32 out)  → gate_forward_cuda: sigmoid, +bias for selection,
 *            group top-2 sums, top-k groups, top-k experts, weights from unbiased scores
 *   moe_permute_cuda: the T·K (token, choice) slots sorted by expert (stable) → expert_start
 *   gather the slots' input rows in expert order, then for all experts at once:
 *            h = [W1 | W3] x (two grouped GEMMs into one row), a = silu(h_gate)·h_up, y = W2 a
 *   shared expert on every token (dense FFN), moe_combine_cuda: out = Σ_k w_k y_k + shared
 * FP8 experts with D and Ie multiples of 128 on sm_89+ in W8A8: the token rows are quantized
 * once and gathered as e4m3 codes + scales (moe_gather_rows_cuda) into the tensor-core grouped
 * GEMM; otherwise FP32 rows are gathered into the generic grouped kernel.
 */
#include "layers_gpu.h"

#include "act_quant.h"
#include "fp8_gemm.h"
#include "moe_cuda.h"
#include "ops.h"

/** Grouped FP8 GEMM over already quantized, gathered rows. */
static int grouped_fp8(const FastModel *fm, FastRunState *s, float *y, int64_t ldy, const uint8_t *xq, const float *xs,
                       int64_t R, const Tensor *W, int G, Err *err) {
    Fp8GemmParams p = { 0 };
    p.out = y, p.out_dtype = FAST_F32, p.ldo = ldy, p.a = xq, p.a_scale = xs;
    p.b = W->data, p.b_scale = (const float *)W->scale_inv, p.M = R, p.N = W->rows, p.K = W->cols;
    p.group_start = s->expert_start, p.num_groups = G, p.path = FP8_GEMM_AUTO, p.splits = 1;
    return fp8_gemm_cuda(&p, fm->stream, err);
}

int fast_moe_tensor_cores(const FastModel *fm) {
    const Config *c = &fm->config;
    if (fm->fp8 != FP8_W8A8 || !fm->fp8_tc || c->hidden_size % 128 || c->moe_intermediate_size % 128) return 0;
    for (int l = 0; l < c->num_hidden_layers + fm->w.n_mtp; l++) {
        if (!config_layer_is_moe(c, l)) continue;
        const LayerWeights *h = l < c->num_hidden_layers ? &fm->host->w.layers[l] : &fm->host->w.mtp[l - c->num_hidden_layers].block;
        if (h->experts[0].gate_proj.dtype != DT_F8_E4M3) return 0; /* every MoE layer, or none */
    }
    return 1;
}

int fast_moe_route(const FastModel *fm, FastRunState *s, int layer, const float *x, int64_t T, Err *err) {
    const Config *c = &fm->config;
    const LayerWeights *w = fast_block_weights(fm, layer);
    int64_t E = c->n_routed_experts, K = c->num_experts_per_tok;
    /* Router: FP32 logits from the BF16 gate matrix (the reference always dequantizes it), noaux_tc;
     * then the slots in expert order. */
    return fast_linear_forward(fm, s, s->logits_e, E, x, c->hidden_size, T, &w->gate, NULL, 1, FP8_DEQUANT, err) ||
                   gate_forward_cuda(s->idx, s->weights, NULL, s->logits_e, w->e_score_correction_bias, T, c, fm->stream, err) ||
                   moe_permute_cuda(s->perm, s->row_of_slot, s->expert_start, s->idx, T, K, E, s->perm_ws, s->perm_ws_bytes,
                                    fm->stream, err)
               ? -1
               : 0;
}

int fast_moe_forward(const FastModel *fm, FastRunState *s, int layer, float *y, const float *x, int64_t T, Err *err) {
    const Config *c = &fm->config;
    const FastLayer *fl = &fm->layers[layer];
    cudaStream_t st = fm->stream;
    int64_t D = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok, Ie = c->moe_intermediate_size;
    int64_t R = T * K;
    /* 1–2. Router and slots in expert order. */
    if (fast_moe_route(fm, s, layer, x, T, err)) return -1;
    /* 3. Routed experts: gate and up into one [R][2·Ie] row, SwiGLU, down. */
    if (fast_moe_tensor_cores(fm)) {
        if (fp8_quantize_rows_cuda(s->xq, D, s->xs, x, FAST_F32, D, T, D, c->scale_ue8m0, st, err) ||
            moe_gather_rows_cuda(s->xq_perm, s->xs_perm, s->xq, s->xs, s->perm, R, K, D, st, err) ||
            grouped_fp8(fm, s, s->h13, 2 * Ie, s->xq_perm, s->xs_perm, R, &fl->w1, (int)E, err) ||
            grouped_fp8(fm, s, s->h13 + Ie, 2 * Ie, s->xq_perm, s->xs_perm, R, &fl->w3, (int)E, err) ||
            swiglu_forward_cuda(s->act, FAST_F32, Ie, s->h13, s->h13 + Ie, FAST_F32, 2 * Ie, R, Ie, st, err) ||
            fp8_quantize_rows_cuda(s->xq_perm, Ie, s->xs_perm, s->act, FAST_F32, Ie, R, Ie, c->scale_ue8m0, st, err) ||
            grouped_fp8(fm, s, s->y_perm, D, s->xq_perm, s->xs_perm, R, &fl->w2, (int)E, err))
            return -1;
    } else {
        if (gather_rows_cuda(s->x_perm, D, x, D, s->perm, R, K, D, st, err) ||
            fast_swiglu_forward(fm, s, s->y_perm, s->x_perm, R, &fl->w1, &fl->w3, &fl->w2, s->expert_start, (int)E, err))
            return -1;
    }
    /* 4. Shared experts on every token, then the weighted combine in ascending expert order. */
    return fast_moe_combine(fm, s, layer, y, x, T, err);
}

int fast_moe_combine(const FastModel *fm, FastRunState *s, int layer, float *y, const float *x, int64_t T, Err *err) {
    const Config *c = &fm->config;
    const float *shared = NULL;
    if (c->n_shared_experts > 0) {
        if (fast_ffn_forward(fm, s, s->y_shared, x, T, &fast_block_weights(fm, layer)->shared_experts, err)) return -1;
        shared = s->y_shared;
    }
    return moe_combine_cuda(y, s->y_perm, FAST_F32, shared, FAST_F32, s->row_of_slot, s->weights, T, c->num_experts_per_tok,
                            c->hidden_size, fm->stream, err);
}
