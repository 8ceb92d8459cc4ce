/**
 * @file kvcache.c
 * @brief KVCache allocation: what each layer keeps per position for the two forms of MLA
 *        (docs/model.md §3.2–3.3).
 *
 * For a token x_p at position p, with [c | k] = W_DKV x_p (kv_a_proj_with_mqa):
 *   absorb:  c_kv[p] = RMSNorm(c)  (kv_a_layernorm),   k_pe[p] = RoPE_p(k)
 *            → Dc + Dr floats per token per layer (512 + 64 = 576 for V3)
 *   naive:   k[p][h] = [ W_UK[h] c_kv[p] ; k_pe[p] ],   v[p][h] = W_UV[h] c_kv[p]   (kv_b_proj)
 *            → H·(Dn + Dr + Dv) floats per token per layer (128 · 320 = 40 960 for V3)
 * One allocation holds every layer: layer l starts at l · max_seq · floats_per_token, its c_kv (or
 * k) block first, then its k_pe (or v) block. The byte count is checked for overflow before
 * allocating (max_seq × layers × floats comes from the user).
 */
#include "kvcache.h"

#include <string.h>

int64_t kvcache_floats_per_token(const Config *c, AttnMode mode) {
    if (mode == ATTN_ABSORB) return (int64_t)c->kv_lora_rank + c->qk_rope_head_dim;
    return (int64_t)c->num_attention_heads * (c->qk_head_dim + c->v_head_dim);
}

int kvcache_init(KVCache *kv, const Config *c, AttnMode mode, int n_layers, int64_t max_seq, Err *err) {
    memset(kv, 0, sizeof *kv);
    size_t per_layer, total, bytes;
    if (max_seq <= 0 || size_mul(&per_layer, (size_t)kvcache_floats_per_token(c, mode), (size_t)max_seq) ||
        size_mul(&total, per_layer, (size_t)n_layers) || size_mul(&bytes, total, sizeof(float)))
        return err_set(err, "KV cache for %lld positions × %d layers is too large", (long long)max_seq, n_layers);
    kv->mem = malloc(bytes ? bytes : 1);
    kv->layers = xcalloc((size_t)n_layers, sizeof *kv->layers);
    if (!kv->mem || !kv->layers) {
        kvcache_free(kv);
        return err_set(err, "out of memory allocating a %.1f MiB KV cache", (double)bytes / 1048576.0);
    }
    kv->mode = mode;
    kv->n_layers = n_layers;
    kv->max_seq = max_seq;
    kv->bytes = bytes;
    for (int l = 0; l < n_layers; l++) {
        float *base = kv->mem + (size_t)l * per_layer;
        LayerCache *L = &kv->layers[l];
        if (mode == ATTN_ABSORB) {
            L->c_kv = base;
            L->k_pe = base + (size_t)max_seq * (size_t)c->kv_lora_rank;
        } else {
            L->k = base;
            L->v = base + (size_t)max_seq * (size_t)c->num_attention_heads * (size_t)c->qk_head_dim;
        }
    }
    return 0;
}

void kvcache_free(KVCache *kv) {
    free(kv->mem);
    free(kv->layers);
    memset(kv, 0, sizeof *kv);
}

void kvcache_set_bf16(KVCache *kv, int on) {
    for (int l = 0; l < kv->n_layers; l++) kv->layers[l].bf16 = on;
}
