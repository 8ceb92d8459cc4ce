/**
 * @file kvcache.h
 * @brief Per-layer attention caches for the two MLA forms (docs/model.md §3.2–3.3).
 *
 *  absorb: normalized c_kv [S][Dc] + roped k_pe [S][Dr]      = 576 values/token/layer (V3)
 *  naive:  k [S][H][Dn+Dr] + v [S][H][Dv]                     = 40 960 values/token/layer (V3)
 * The reference keeps them in FP32; on request it stores exactly the values a GPU's BF16 or FP8 latent
 * cache would read back (KvFormat), so it stays the oracle of those caches. `len` is the number of
 * positions written; rolling back
 * (speculative decoding) is just lowering it, because a position is always rewritten before
 * it is read again.
 */
#ifndef DSV3_KVCACHE_H
#define DSV3_KVCACHE_H

#include <stdint.h>

#include "config.h"

/** Attention form: absorbed weights over the latent cache (default) or materialized K/V. */
typedef enum { ATTN_ABSORB = 0, ATTN_NAIVE = 1 } AttnMode;

/** Storage of the latent cache (--kv-cache), as a GPU keeps it per token per layer (docs/model.md §3.3):
 *  F32 c_kv and k_pe; BF16 c_kv and k_pe; FP8: c_kv in e4m3 with one power-of-two F32 scale per
 *  KV_FP8_GROUP values, k_pe in BF16. The values match --kv-cache (f32 = 0, bf16 = 1, fp8 = 2). */
typedef enum { KV_F32 = 0, KV_BF16 = 1, KV_FP8 = 2 } KvFormat;

/** c_kv values per FP8 scale. 128, not 64: the same 1×128 groups and ue8m0 rule as the W8A8
 *  activations (fp8_quantize_row), so one quantizer serves both; with Dc = 512 a token costs
 *  512 + 4·4 + 64·2 = 656 bytes — FlashMLA's FP8 token layout — against 1152 in BF16. Groups of
 *  64 would confine an outlier's coarser scale to half as many values for 16 more bytes a token
 *  (2.4 %); tests/test_kvcache_fp8.c measures what a group of 128 costs on real rows. */
#define KV_FP8_GROUP 128

/** The cache of one layer; which pointers are set depends on the AttnMode. */
typedef struct {
    KvFormat format; /**< absorb: the storage whose read-back values c_kv and k_pe hold (KV_F32: as computed) */
    float *c_kv; /**< absorb: [max_seq][Dc] */
    float *k_pe; /**< absorb: [max_seq][Dr] */
    float *k;    /**< naive: [max_seq][H][Dn+Dr] */
    float *v;    /**< naive: [max_seq][H][Dv] */
} LayerCache;

/** Caches of @p n_layers layers, one allocation. */
typedef struct {
    AttnMode mode;     /**< which pointers of each LayerCache are set */
    int n_layers;      /**< layers (1 for an MTP module's cache) */
    int64_t max_seq;   /**< positions each layer can hold */
    int64_t len;       /**< positions filled so far (the next position to write) */
    LayerCache *layers; /**< [n_layers] */
    float *mem;        /**< the one allocation behind every layer */
    size_t bytes;      /**< bytes allocated for the cache data */
} KVCache;

/** Floats per token per layer for a mode: Dc+Dr (absorb) or H·(Dn+Dr+Dv) (naive). */
int64_t kvcache_floats_per_token(const Config *c, AttnMode mode);
/** Allocates caches for @p n_layers layers and @p max_seq positions (checked for overflow). */
int kvcache_init(KVCache *kv, const Config *c, AttnMode mode, int n_layers, int64_t max_seq, Err *err);
/** Frees the cache; safe on a zeroed struct. */
void kvcache_free(KVCache *kv);
/** Absorb mode: store c_kv and k_pe rounded to bfloat16 in every layer (@p on = 1), the numerics
 *  of a GPU's BF16 latent cache, so the reference can be its oracle. */
void kvcache_set_bf16(KVCache *kv, int on);
/** Absorb mode: every layer stores c_kv and k_pe as @p f would read them back. */
void kvcache_set_format(KVCache *kv, KvFormat f);
/** Bytes a GPU cache of format @p f holds per token per layer: 4·(Dc+Dr), 2·(Dc+Dr), or
 *  Dc + 4·⌈Dc/128⌉ + 2·Dr (FP8 codes, F32 scales, BF16 k_pe). */
int64_t kvcache_bytes_per_token(const Config *c, KvFormat f);
/**
 * The FP8 cache's rule on one c_kv row of @p n values, in place: per group g of KV_FP8_GROUP
 * values (the last may be shorter) s_g = 2^⌈log2(max(amax_g, 1e-4) / 448)⌉ and
 * x ← e4m3(x / s_g) · s_g (fp8_quantize_row with ue8m0). Both steps are exact but the e4m3
 * rounding (s_g is a power of two), so any kernel that stores codes and scales reproduces these
 * values bit for bit. Writes s_g to @p scales[g] unless it is NULL.
 */
void kvcache_round_fp8(float *x, int64_t n, float *scales);
/** Rounds one position's freshly written c_kv [@p Dc] and k_pe [@p Dr] in place to what @p L's
 *  format reads back (nothing for KV_F32). */
void kvcache_round_position(const LayerCache *L, float *c_kv, int64_t Dc, float *k_pe, int64_t Dr);

#endif
