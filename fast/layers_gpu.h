/**
 * @file layers_gpu.h
 * @brief The per-op functions of the GPU forward (linear, MLA, dense FFN, MoE, block) and the
 *        run state they share — fast/'s counterparts of ref/model/linear.h, mla.h, ffn.h, moe.h,
 *        block.h and context.h. Internal to the *_gpu.c files of fast/.
 *
 * Every function enqueues on fm->stream and returns 0 or -1 with a message; none synchronizes.
 * All pointers are device pointers. T is the number of tokens of the flattened batch.
 */
#ifndef DSV3_FAST_LAYERS_GPU_H
#define DSV3_FAST_LAYERS_GPU_H

#include "model_gpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Decode graphs kept per run state (least recently used replaced). */
#define FAST_GRAPHS 16

/** One captured forward: the device work of a batch shape, replayed with cudaGraphLaunch. */
typedef struct {
    int64_t T;            /**< tokens */
    int n_rows;           /**< logit rows */
    int bt_stride;        /**< block-table row length */
    int splits;           /**< MLA kernel split count (from the longest sequence) */
    int logits;           /**< the lm_head is part of it */
    int argmax;           /**< the argmax kernel is part of it */
    cudaGraphExec_t exec; /**< the captured graph; NULL: shape seen once (or free slot when used = 0) */
    uint64_t used;        /**< last use (LRU); 0: free slot */
} FastGraph;

/** Activations and scratch of one forward of up to max_T tokens (ref RunState + LayerActs + ForwardContext). */
struct FastRunState {
    int64_t max_T;        /**< token capacity */
    int max_blocks;       /**< block-table row capacity (ceil(max_seq / page)) */
    int64_t max_in;       /**< widest linear input (config_max_linear_in) */
    /* per-token inputs of the forward, uploaded from the host staging arrays below */
    int *ids;             /**< [max_T] */
    int *pos;             /**< [max_T] position of each token in its sequence */
    int *seq_lens;        /**< [max_T] pos + 1: the positions each token's query sees */
    int *block_table;     /**< [max_T][bt_stride] its sequence's block table (one row per token) */
    float *rope_cos;      /**< [max_T][Dr/2] (computed on the host by ref rope_cos_sin, exact) */
    float *rope_sin;      /**< [max_T][Dr/2] */
    int *logit_rows;      /**< [max_T] rows of the batch whose logits are wanted */
    int bt_stride;        /**< this forward's block-table row length: its longest sequence's blocks */
    /* residual stream and block activations (ref LayerActs) */
    float *h;             /**< [max_T][D] */
    float *x;             /**< [max_T][D] normed block input (attn_norm, then ffn_norm) */
    float *branch;        /**< [max_T][D] output of the attention or FFN branch */
    float *c_q;           /**< [max_T][Dq] */
    float *c_q_norm;      /**< [max_T][Dq] */
    float *q;             /**< [max_T][H][Dn+Dr] */
    float *kv_a;          /**< [max_T][Dc+Dr] (k_pe roped in place) */
    float *c_kv;          /**< [max_T][Dc] */
    float *q_abs;         /**< [max_T][H][Dc] */
    float *u;             /**< [max_T][H][Dc] */
    float *o;             /**< [max_T][H][Dv] */
    uint16_t *q_abs16;    /**< [max_T][H][Dc] bf16 operands of the MLA kernel */
    uint16_t *q_pe16;     /**< [max_T][H][Dr] */
    float *mla_ws;        /**< split-K partials of the MLA kernel */
    size_t mla_ws_bytes;  /**< its size */
    /* FFN / MoE */
    float *h13;           /**< [max(max_T·I, R·2Ie, max_T·2Is)] gate|up outputs (row stride 2·width) */
    float *act;           /**< [same/2] SwiGLU outputs */
    float *logits_e;      /**< [max_T][E] router logits */
    int *idx;             /**< [max_T][K] chosen experts */
    float *weights;       /**< [max_T][K] their weights */
    int *perm;            /**< [R] slots in expert order */
    int *row_of_slot;     /**< [R] */
    int *expert_start;    /**< [E+1] */
    void *perm_ws;        /**< moe_permute_cuda workspace */
    size_t perm_ws_bytes; /**< its size */
    float *x_perm;        /**< [R][D] gathered f32 rows (generic path) */
    uint8_t *xq_perm;     /**< [R][D] gathered e4m3 rows (FP8 path) */
    float *xs_perm;       /**< [R][D/128] */
    float *y_perm;        /**< [R][D] expert outputs in expert order */
    float *y_shared;      /**< [max_T][D] shared expert output */
    /* expert parallelism (FastOptions.ep_plan): R_ep = nranks·R rows can arrive at one rank */
    FastEp *ep;           /**< set by fast_runstate_set_ep; NULL: local MoE */
    float *ep_send;       /**< [R][D] rows to dispatch, then the combined results */
    float *ep_recv;       /**< [R_ep][D] rows received, then their outputs in arrival order */
    float *ep_work;       /**< [R_ep][D] received rows grouped by local expert, then outputs */
    int *ep_index;        /**< [R_ep] gather lists uploaded per exchange */
    int *ep_group_start;  /**< [E+1] local expert row ranges */
    /* linear scratch */
    uint8_t *xq;          /**< [R or max_T][max_in] e4m3 codes (FP8 tensor-core path) */
    float *xs;            /**< [..][ceil(max_in/128)] their scales */
    float *xqf;           /**< [..][max_in] e4m3 values as floats (generic W8A8 path) */
    float *gemm_ws;       /**< split-K workspace of fp8_gemm_cuda */
    size_t gemm_ws_bytes; /**< its size */
    int64_t lin_rows;     /**< rows the linear scratch holds (max(max_T, R)) */
    /* outputs */
    float *normed;        /**< [max_T][D] final-norm output */
    float *mtp_h;         /**< [max_T][D] MTP: the main model's post-norm hiddens (uploaded) */
    float *cat;           /**< [max_T][2D] MTP: [enorm(Emb(next)) | hnorm(h)] */
    float *sel;           /**< [max_T][D] rows selected for logits */
    float *logits;        /**< [max_T][V] */
    int *argmax;          /**< [max_T] */
    /* host staging of the arrays above (pinned memory is not needed at these sizes) */
    int *h_ids;           /**< host [max_T] */
    int *h_pos;           /**< host [max_T] */
    int *h_seq_lens;      /**< host [max_T] */
    int *h_block_table;   /**< host [max_T][max_blocks] */
    int *h_logit_rows;    /**< host [max_T] */
    float *h_rope_cos;    /**< host [max_T][Dr/2] */
    float *h_rope_sin;    /**< host [max_T][Dr/2] */
    void *mem;            /**< the one device allocation */
    uint64_t bytes;       /**< its size */
    void *host_mem;       /**< the one host allocation behind the staging arrays */
    /* CUDA graphs (FastOptions.cuda_graphs): the device work of a forward captured once per shape */
    int graphs_on;        /**< 1 while capture works (it is switched off for good when it does not) */
    FastGraph graphs[FAST_GRAPHS]; /**< captured shapes */
    uint64_t tick;        /**< LRU clock */
    uint64_t launches;    /**< forwards replayed from a graph */
    uint64_t captures;    /**< graphs captured */
};

/**
 * y [M][ldy] = x [M][ldx] · Wᵀ for a device Tensor (dense) or, with @p group_start, the stacked
 * grouped form. Chooses the kernel: FP8 weights in W8A8 with K % 128 = 0 on sm_89+ → act_quant +
 * fp8_gemm_cuda (tensor cores); other FP8 → the generic kernel in the same mode; BF16/F32 → the
 * generic kernel. @p G groups of W (1 when dense). @p mode: fm->fp8 for the model's linears,
 * FP8_DEQUANT where the reference always dequantizes (router gate, lm_head).
 */
int fast_linear_forward(const FastModel *fm, FastRunState *s, float *y, int64_t ldy, const float *x, int64_t ldx,
                        int64_t M, const Tensor *W, const int *group_start, int G, Fp8Mode mode, Err *err);

/** The weights of decoder block @p layer: a main layer (< num_hidden_layers) or MTP module layer − num_hidden_layers. */
static inline const LayerWeights *fast_block_weights(const FastModel *fm, int layer) {
    int n = fm->config.num_hidden_layers;
    return layer < n ? &fm->w.layers[layer] : &fm->w.mtp[layer - n].block;
}

/** 1 where attention runs on the tensor-core MLA kernel: V3 shapes and a BF16 64-token-page cache. */
int fast_mla_uses_kernel(const Config *c, const FastKVCache *kv);

/**
 * y [T][D] = MLA(x): projections, RoPE, cache write, absorbed attention, o_proj (ref mla_forward).
 * Weights of block @p layer, keys in layer @p cache_layer of @p kv (the MTP module has its own cache).
 */
int fast_mla_forward(const FastModel *fm, FastRunState *s, FastKVCache *kv, int layer, int cache_layer, float *y,
                     const float *x, int64_t T, int64_t max_seq_len, Err *err);

/**
 * y [M][D] = W2 (silu(W1 x) ⊙ W3 x) for M rows of x [M][D], through s->h13 and s->act: the dense
 * FFN and shared expert (group_start NULL, G = 1) and the routed experts (stacked W, rows grouped
 * by group_start over G experts) alike.
 */
int fast_swiglu_forward(const FastModel *fm, FastRunState *s, float *y, const float *x, int64_t M, const Tensor *w1,
                        const Tensor *w3, const Tensor *w2, const int *group_start, int G, Err *err);

/** y [T][D] = W2 (silu(W1 x) ⊙ W3 x) (ref ffn_forward). */
int fast_ffn_forward(const FastModel *fm, FastRunState *s, float *y, const float *x, int64_t T, const FFNWeights *w,
                     Err *err);

/** y [T][D] = MoE(x): gate, permutation, grouped expert GEMMs, shared expert, combine (ref moe_forward). */
int fast_moe_forward(const FastModel *fm, FastRunState *s, int layer, float *y, const float *x, int64_t T, Err *err);

/**
 * 1 when the routed experts run on the FP8 tensor-core grouped GEMM over e4m3 rows gathered once
 * (FP8 experts, W8A8, sm_89+, D and Ie multiples of 128), 0 when FP32 rows go through the generic
 * kernel — for every MoE layer alike (all FP8, or the generic path for all), since it decides both
 * the path and which buffers the run state holds.
 */
int fast_moe_tensor_cores(const FastModel *fm);

/**
 * The routing of an MoE layer: router logits (FP32 from the BF16 gate, as the reference), the
 * noaux_tc choice into s->idx / s->weights, and the slots in expert order (s->perm, s->row_of_slot,
 * s->expert_start).
 */
int fast_moe_route(const FastModel *fm, FastRunState *s, int layer, const float *x, int64_t T, Err *err);

/**
 * The end of an MoE layer, once s->y_perm holds the routed experts' outputs in permuted order:
 * the shared expert on every token, then y = Σ_k w_k·y_k + shared (moe_combine_cuda).
 */
int fast_moe_combine(const FastModel *fm, FastRunState *s, int layer, float *y, const float *x, int64_t T, Err *err);

/** fast_moe_forward with the routed experts on the ranks holding them (fast/ep_gpu.c). */
int fast_ep_moe_forward(const FastModel *fm, FastRunState *s, FastEp *ep, int layer, float *y, const float *x, int64_t T,
                        Err *err);

/** h ← h + MLA(attn_norm(h)); h ← h + FFN(ffn_norm(h)) (ref block_forward); see fast_mla_forward for the layers. */
int fast_block_forward(const FastModel *fm, FastRunState *s, FastKVCache *kv, int layer, int cache_layer, int64_t T,
                       int64_t max_seq_len, Err *err);

#ifdef __cplusplus
}
#endif

#endif /* DSV3_FAST_LAYERS_GPU_H */
