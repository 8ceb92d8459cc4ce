/**
 * @file generic.h
 * @brief Plain FP32 (SIMT) kernels for every shape and dtype the tensor-core kernels do not
 *        take: linears over BF16/F32 weights or FP8 weights whose K is not a multiple of 128,
 *        the per-head products of the absorbed MLA, MLA attention for any latent width and head
 *        count (prefill and decode), writes into the paged latent cache, and strided copies with
 *        a dtype change. The whole-model path (fast/model.c) uses the tensor-core kernels where
 *        they apply (fp8_gemm.h, mla_decode.h) and these everywhere else, so any checkpoint the
 *        reference loads also runs on the GPU (golden/official-tiny: BF16, 4 heads, latent 64).
 *
 * Each kernel is the reference function's loop nest with the same per-element arithmetic, in
 * FP32, so it agrees with ref/ to FP32 rounding (summation order differs; exp is CUDA's expf,
 * ≤ 2 ulp from glibc's). They are correct for every input size; none is tuned.
 *
 * Conventions as in fast.h: `int name(..., cudaStream_t, Err *)`, 0 after enqueuing or -1 with a
 * one-line message naming the launcher and the bad parameter; no allocation, no synchronization.
 */
#ifndef DSV3_FAST_GENERIC_H
#define DSV3_FAST_GENERIC_H

#include "fast.h"
#include "base/safetensors.h" /* DType */

#ifdef __cplusplus
extern "C" {
#endif

/**
 * One linear y = x·Wᵀ (dense) or its grouped form (MoE, stacked weights), the oracle being ref
 * linear_forward:
 *   dense:   y[m][n] = Σ_k x[m][k] · W[n][k]                 m < M, n < N
 *   grouped: rows [group_start[g], group_start[g+1]) multiply W_g = w + g·N·K elements
 *            (scales w_scale + g·ceil(N/128)·ceil(K/128)); rows outside every group untouched.
 * Weights: DT_F32, DT_BF16, or DT_F8_E4M3 with 128×128 block scales (weight_scale_inv,
 * [ceil(N/128)][ceil(K/128)] F32). For FP8 the sum runs per 128-wide K block and is promoted
 * as acc += partial · (x_scale[m][b] if w8a8) · w_scale[n/128][b], exactly the reference's two
 * modes:
 *   x_scale == NULL (dequant): x holds FP32 activations;
 *   x_scale != NULL (w8a8):    x holds the e4m3 VALUES (as floats) of the 1×128-quantized
 *                              activations from fp8_quantize_rows_f32_cuda, x_scale [M][ceil(K/128)].
 * K is arbitrary (the last block may be short, e.g. o_proj K = 144). F32/BF16 weights ignore
 * x_scale.
 */
typedef struct {
    float *y;                 /**< [M][ldy] FP32 output */
    int64_t ldy;              /**< ≥ N */
    const float *x;           /**< [M][ldx] FP32 activations (or quantized values, see above) */
    int64_t ldx;              /**< ≥ K */
    const float *x_scale;     /**< w8a8: [M][ceil(K/128)] activation scales; NULL: dequant */
    const void *w;            /**< [G][N][K] weights of w_dtype */
    DType w_dtype;            /**< DT_F32, DT_BF16 or DT_F8_E4M3 */
    const float *w_scale;     /**< FP8: [G][ceil(N/128)][ceil(K/128)]; NULL otherwise */
    int64_t M;                /**< rows */
    int64_t N;                /**< output features */
    int64_t K;                /**< input features */
    const int *group_start;   /**< grouped: [G+1] device row offsets; NULL: dense */
    int num_groups;           /**< G (1 when dense) */
} LinearGenericParams;

/** Enqueues the generic linear (see LinearGenericParams). */
int linear_generic_cuda(const LinearGenericParams *p, cudaStream_t stream, Err *err);

/**
 * ref fp8_quantize_row on M rows of any K (last group may be shorter than 128):
 * scale[m][g] = max(amax, 1e-4)/448, xq[m][k] = the FLOAT value of e4m3(x[m][k]/scale) (the
 * reference's representation, the x input of linear_generic_cuda in w8a8 mode).
 * xq [M][K], scale [M][ceil(K/128)], x [M][ldx]. Bit-identical to the reference; @p ue8m0 rounds
 * each scale up to a power of two (DeepSeek-V3.1, docs/model.md §13.4).
 */
int fp8_quantize_rows_f32_cuda(float *xq, float *scale, const float *x, int64_t ldx, int64_t M, int64_t K,
                               int ue8m0, cudaStream_t stream, Err *err);

/**
 * Strided batched product in FP32: for b < batch, m < M, n < N
 *     C[b·c_sb + m·c_sm + n·c_sn] = Σ_k A[b·a_sb + m·a_sm + k·a_sk] · B[b·b_sb + k·b_sk + n·b_sn]
 * (all strides in elements, any sign-free layout). A and C FP32; B F32 or BF16. Used for the
 * absorbed MLA's per-head products (docs/model.md §3.3): q_abs = W_UKᵀ q_nope and o = W_UV u.
 */
typedef struct {
    float *c;                 /**< output */
    const float *a;           /**< left operand */
    const void *b;            /**< right operand */
    FastDType b_dtype;        /**< FAST_F32 or FAST_BF16 */
    int64_t batch;            /**< products */
    int64_t M;                /**< rows of each product */
    int64_t N;                /**< columns of each product */
    int64_t K;                /**< inner dimension */
    int64_t a_sb;             /**< A batch stride */
    int64_t a_sm;             /**< A row stride */
    int64_t a_sk;             /**< A inner stride */
    int64_t b_sb;             /**< B batch stride */
    int64_t b_sk;             /**< B inner stride */
    int64_t b_sn;             /**< B column stride */
    int64_t c_sb;             /**< C batch stride */
    int64_t c_sm;             /**< C row stride */
    int64_t c_sn;             /**< C column stride */
} GemmBatchedParams;

/** Enqueues the strided batched product (see GemmBatchedParams). */
int gemm_batched_cuda(const GemmBatchedParams *p, cudaStream_t stream, Err *err);

/**
 * Absorbed MLA attention for any Dc, Dr, H (the oracle: ref mla_attend_absorb, one query at a
 * time), over the paged latent cache:
 *     s_h(t) = scale · (q_abs[i][h]·c_kv(t) + q_pe[i][h]·k_pe(t))   t < seq_lens[i]
 *     u[i][h] = Σ_t softmax(s_h)(t) · c_kv(t)
 * for T queries i (each its own causal length: prefill queries of one sequence have
 * seq_lens = pos+1). Cache: [num_blocks][page][Dc+Dr] of cache_dtype (FAST_F32 or FAST_BF16),
 * token t of query i in row t % page of block block_table[i·block_table_stride + t / page].
 * FP32 softmax with a running max (online), FP32 sums. seq_lens[i] = 0 gives u = 0.
 */
typedef struct {
    float *u;                    /**< [T][H][Dc] output */
    const float *q_abs;          /**< [T][H][Dc] absorbed queries */
    const float *q_pe;           /**< query i, head h at q_pe + i·q_pe_stride_t + h·q_pe_stride_h, Dr values */
    int64_t q_pe_stride_t;       /**< e.g. H·(Dn+Dr) when q_pe points into q at offset Dn */
    int64_t q_pe_stride_h;       /**< e.g. Dn+Dr */
    const void *kv_cache;        /**< [num_blocks][page][Dc+Dr] */
    FastDType cache_dtype;       /**< FAST_F32 or FAST_BF16 */
    const int *block_table;      /**< [T][block_table_stride] per query */
    int block_table_stride;      /**< entries per row */
    const int *seq_lens;         /**< [T] visible positions per query */
    int64_t T;                   /**< queries */
    int H;                       /**< heads */
    int Dc;                      /**< latent width (kv_lora_rank) */
    int Dr;                      /**< rope width (qk_rope_head_dim) */
    int page;                    /**< tokens per cache block */
    float scale;                 /**< softmax scale (Config.softmax_scale) */
} MlaAttendParams;

/** Enqueues the generic absorbed attention (see MlaAttendParams). */
int mla_attend_generic_cuda(const MlaAttendParams *p, cudaStream_t stream, Err *err);

/**
 * Writes T tokens' cache rows: row [c_kv (Dc) | k_pe (Dr)] of token i goes to block
 * block_table[i·block_table_stride + pos[i] / page], row pos[i] % page, converted to
 * cache_dtype (bf16: round to nearest even). c_kv [T][ldc], k_pe [T][ldk] FP32.
 */
int kv_cache_write_cuda(void *kv_cache, FastDType cache_dtype, const int *block_table, int block_table_stride,
                        const int *pos, const float *c_kv, int64_t ldc, const float *k_pe, int64_t ldk, int64_t T,
                        int Dc, int Dr, int page, cudaStream_t stream, Err *err);

/**
 * dst[r][c] = src[r][c] for r < rows, c < cols, with strides in elements and a dtype change
 * (f32 → bf16 rounds to nearest even). Packs q_abs / q_pe into the bf16 operands of
 * mla_decode_cuda, and copies row subsets.
 */
int copy_rows_cuda(void *dst, FastDType dst_dtype, int64_t dst_stride, const void *src, FastDType src_dtype,
                   int64_t src_stride, int64_t rows, int64_t cols, cudaStream_t stream, Err *err);

#ifdef __cplusplus
}
#endif

#endif /* DSV3_FAST_GENERIC_H */
