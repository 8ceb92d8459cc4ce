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

#include "fp8.h"

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

void kvcache_set_bf16(KVCache *kv, int on) { kvcache_set_format(kv, on ? KV_BF16 : KV_F32); }

void kvcache_set_format(KVCache *kv, KvFormat f) {
    for (int l = 0; l < kv->n_layers; l++) kv->layers[l].format = f;
}

int64_t kvcache_bytes_per_token(const Config *c, KvFormat f) {
    int64_t Dc = c->kv_lora_rank, Dr = c->qk_rope_head_dim;
    if (f == KV_FP8) return Dc + 4 * ((Dc + KV_FP8_GROUP - 1) / KV_FP8_GROUP) + 2 * Dr;
    return (f == KV_BF16 ? 2 : 4) * (Dc + Dr);
}

void kvcache_round_fp8(float *x, int64_t n, float *scales) {
    for (int64_t g0 = 0, g = 0; g0 < n; g0 += KV_FP8_GROUP, g++) {
        int64_t m = n - g0 < KV_FP8_GROUP ? n - g0 : KV_FP8_GROUP;
        float s;
        fp8_quantize_row(x + g0, &s, x + g0, m, 1); /* in place: a group's amax is taken before it is written */
        for (int64_t k = 0; k < m; k++) x[g0 + k] *= s; /* dequantize on read: code value × 2^k, exact */
        if (scales) scales[g] = s;
    }
}

/** x[i] ← bf16(x[i]) (round to nearest even), the BF16 cache's storage rule. */
static void round_bf16_inplace(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
}

void kvcache_round_position(const LayerCache *L, float *c_kv, int64_t Dc, float *k_pe, int64_t Dr) {
    if (L->format == KV_F32) return;
    if (L->format == KV_FP8) kvcache_round_fp8(c_kv, Dc, NULL);
    else round_bf16_inplace(c_kv, Dc);
    round_bf16_inplace(k_pe, Dr); /* k_pe stays BF16 in the FP8 cache too: RoPE's phases need the bits */
}
