/**
 * @file fp8_recipe.h
 * @brief The paper's FP8 training framework (§3.3, Figs. 6–7; docs/model.md §8.6), emulated exactly
 *        on the CPU: every linear layer's three GEMMs (Fprop, Dgrad, Wgrad) on FP8 operands with
 *        fine-grained scales, a limited-precision accumulator promoted to FP32 every N_C products,
 *        and the activations its backward needs cached in FP8 (with the paper's exceptions).
 *
 * The trainer installs a recipe as the LinearHook of its ForwardContext (model/linear.h) and sets
 * the context's mode to FP8_TRAIN; the linears that inference runs in FP8 (ctx->fp8) then come
 * here, while the embedding, the output heads and the MoE gate stay in FP32 (paper §3.3.1).
 * fp8_recipe.c has the diagram and the exact rules; docs/training.md the user's view.
 */
#ifndef DSV3_FP8_RECIPE_H
#define DSV3_FP8_RECIPE_H

#include "model/linear.h"
#include "params.h"

/** Element formats of quantized operands and caches. */
typedef enum {
    FMT_E4M3 = 0, /**< float8_e4m3fn (ref/model/fp8.c): 3 mantissa bits, saturating at ±448 — the paper's choice for every tensor */
    FMT_E5M2 = 1, /**< float8_e5m2: 2 mantissa bits, ±57344 — the gradients of the "hybrid" recipes (ablation c) */
    FMT_E5M6 = 2, /**< the paper's custom 12-bit format for the inputs of the linear after attention: 6 mantissa
                       bits and FP16's exponent range (±65024, subnormals down to 2^-20) */
} Fp8Fmt;

/** The knobs of the recipe (defaults: fp8_options_default(), the paper's values). */
typedef struct {
    int acc_bits;       /**< mantissa bits the tensor-core accumulator keeps, 1..23 (paper: ~14; 23 = FP32) */
    int promote;        /**< N_C: partial sums move to the FP32 accumulator every N_C products of K (paper: 128; 0 = never) */
    int per_tensor;     /**< 1: one scale per operand tensor instead of 1×128 tiles and 128×128 blocks (ablation a) */
    int grad_format;    /**< an Fp8Fmt: the output gradient in Dgrad and Wgrad, FMT_E4M3 (paper) or FMT_E5M2 (ablation c) */
} Fp8Options;

/** The paper's recipe: 14-bit accumulation promoted every 128, fine-grained scales, E4M3 everywhere. */
Fp8Options fp8_options_default(void);

/** Checks ranges (acc_bits 1..23, promote ≥ 0, grad_format E4M3 or E5M2); -1 with a message naming the field. */
int fp8_options_check(const Fp8Options *o, Err *err);

/** "e4m3", "e5m2" or "e5m6". */
const char *fp8_format_name(Fp8Fmt f);

/** Rounds @p x to the nearest value of format @p f, ties to even, saturating at its largest finite value
 *  (E4M3 through ref/model/fp8.c's encoder; NaN stays NaN). */
float fp8_round(Fp8Fmt f, float x);

/** fp8_round(FMT_E4M3, x) computed on the float's bits (what the GEMM operands use; equal for every x). */
float fp8_round_e4m3_fast(float x);

/**
 * The scale of a tile whose largest magnitude is @p amax: amax / max(f) (amax floored at 1e-30, so a
 * zero tile gets a tiny finite scale and stays zero), or with @p pow2 the smallest power of two that
 * is at least that (the paper's "round scaled" scales, §3.3.3).
 */
float fp8_tile_scale(Fp8Fmt f, float amax, int pow2);

/**
 * Fine-grained quantization of the R×C row-major matrix @p x in tiles of @p tr × @p tc (1×128 along
 * K for activations, 128×1 for Wgrad's operands, 128×128 for weights, R×C for one per-tensor scale;
 * edge tiles are smaller): each tile gets s = fp8_tile_scale(f, amax, pow2) and every element
 * q = fp8_round(f, x / s). Writes the dequantized values q·s (FP32) into @p out (may equal @p x) and,
 * when @p scales is not NULL, the tile scales [ceil(R/tr)][ceil(C/tc)].
 */
void fp8_quantize_tiles(float *out, float *scales, const float *x, int64_t R, int64_t C, int64_t tr, int64_t tc, Fp8Fmt f,
                        int pow2);

/** The accumulator's rounding: @p v with its mantissa cut to @p acc_bits bits (toward zero; 23 returns v). */
float fp8_acc_round(float v, int acc_bits);

/**
 * The tensor-core GEMM with limited accumulation precision and promotion (paper §3.3.2, Fig. 7b):
 *     for each C[i][j], K split into chunks of @p promote products (one chunk if 0):
 *         part = 0;  for k in chunk:  part = fp8_acc_round(part + A[i][k] · Bt[k][j], acc_bits)
 *         acc32 += part                                                  (the promotion, FP32)
 *     C[i][j] = acc32   (or C[i][j] + acc32 when @p accumulate)
 * A [M][K] and Bt [K][N] row-major hold dequantized operands (q·s). The product and the sum are each
 * rounded to FP32 before the cut; k runs in order, so the result depends on nothing else.
 */
void fp8_emulated_gemm(float *C, const float *A, const float *Bt, int64_t M, int64_t K, int64_t N, int acc_bits, int promote,
                       int accumulate);

/** How a linear deviates from the plain recipe (the paper's special cases, §3.3.3). */
enum {
    FP8_ROLE_ATTN_OUT = 1,     /**< input cached in E5M6 with power-of-two scales (o_proj, the linear after attention) */
    FP8_ROLE_X_POW2 = 2,       /**< input quantized with power-of-two scales (routed experts' up-projections: dispatched in FP8) */
    FP8_ROLE_Y_FP8 = 4,        /**< output rounded to E4M3 1×128 tiles: the SwiGLU inputs of the MoE, cached in FP8 */
    FP8_ROLE_X_RECOMPUTED = 8, /**< input not cached: recomputed in backward (the MoE's SwiGLU output, down_proj's input) */
    FP8_ROLE_DY_POW2 = 16,     /**< output gradient quantized with power-of-two scales (routed down-projections: combined in FP8) */
};

/** Bytes of activations cached for the backward of one decoder layer's FP8 linears. */
typedef struct {
    size_t fp8;  /**< as the recipe stores them: codes (E4M3 1 byte, E5M6 2 bytes) + FP32 tile scales */
    size_t fp32; /**< the same tensors in FP32, as the FP32 trainer keeps them */
} Fp8CacheBytes;

/** An FP8 training recipe: the hook, its options, the weights it knows, the activation cache. */
typedef struct Fp8Recipe Fp8Recipe;

/**
 * A recipe for linears of up to @p max_T rows; register the weights with fp8_recipe_add_params or
 * fp8_recipe_add_tensor before use. NULL with a message on bad options or out of memory.
 */
Fp8Recipe *fp8_recipe_new(const Fp8Options *o, int64_t max_T, int n_layers, Err *err);
/** Frees everything; NULL is fine. */
void fp8_recipe_free(Fp8Recipe *r);

/**
 * Registers W (an FP32 [out][in] matrix that will reach the hook) with FP8_ROLE_* @p flags; @p layer
 * (0 .. n_layers−1, or −1) only groups the cache statistics. 0, or −1 with a message.
 */
int fp8_recipe_add_tensor(Fp8Recipe *r, const Tensor *W, int flags, int layer, Err *err);

/**
 * Registers every matrix of @p ps that an FP8 checkpoint stores in FP8 (the attention projections,
 * the dense, shared and routed FFNs, MTP's eh_proj; docs/model.md §8.5), with the roles of the
 * paper's special cases from their names. 0, or −1 with a message.
 */
int fp8_recipe_add_params(Fp8Recipe *r, const ParamSet *ps, Err *err);

/** The hook to install in LinearScratch.hook (its mode: FP8_TRAIN). */
LinearHook *fp8_recipe_hook(Fp8Recipe *r);

/** Weights may have changed: each is quantized again at its next use (call before every pass of a step). */
void fp8_recipe_begin_pass(Fp8Recipe *r);

/** A new sequence: forgets the previous sequence's cached activations (call before its forward). */
void fp8_recipe_begin_sequence(Fp8Recipe *r);

/** What the last sequence's forward cached for decoder layer @p layer (its MTP modules: L + k). */
Fp8CacheBytes fp8_recipe_cache_bytes(const Fp8Recipe *r, int layer);

#endif
