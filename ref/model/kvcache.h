/**
 * @file kvcache.h
 * @brief Per-layer attention caches for the two MLA forms (docs/model.md §3.2–3.3).
 *
 *  absorb: normalized c_kv [S][Dc] + roped k_pe [S][Dr]      = 576 values/token/layer (V3)
 *  naive:  k [S][H][Dn+Dr] + v [S][H][Dv]                     = 40 960 values/token/layer (V3)
 * The reference keeps them in FP32. `len` is the number of positions written; rolling back
 * (speculative decoding) is just lowering it, because a position is always rewritten before
 * it is read again.
 */
#ifndef DSV3_KVCACHE_H
#define DSV3_KVCACHE_H

#include <stdint.h>

#include "config.h"

/** Attention form: absorbed weights over the latent cache (default) or materialized K/V. */
typedef enum { ATTN_ABSORB = 0, ATTN_NAIVE = 1 } AttnMode;

/** The cache of one layer; which pointers are set depends on the AttnMode. */
typedef struct {
    int bf16;    /**< absorb: round c_kv and k_pe to bfloat16 as they are written (emulates a BF16 GPU cache) */
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

#endif
