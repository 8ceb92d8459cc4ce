/**
 * @file kvcache_gpu.c
 * @brief The paged latent KV cache on the GPU (docs/model.md §3.3; the reference's ref/model/kvcache.c keeps
 *        one contiguous FP32 array per sequence instead).
 *
 * Every layer has a pool of num_blocks blocks of 64 tokens × (Dc + Dr) values ([normalized
 * c_kv | roped k_pe], FlashMLA's layout); a sequence owns a list of block ids (its block table),
 * the same ids in every layer. Blocks are handed out from a free stack as a sequence grows and
 * returned when it closes, so sequences of any lengths share one pool without fragmentation.
 * Truncating (speculative rollback) only lowers the length: a position is always rewritten
 * before it is read again. The bookkeeping lives on the host; the block tables are uploaded
 * with each batch (fast/model_gpu.c).
 */
#include <stdlib.h>
#include <string.h>

#include "model_gpu.h"

/** Blocks in the pool: opt->kv_blocks, or enough for max_seqs sequences of max_seq positions. */
static int64_t pool_blocks(const FastOptions *opt) {
    return opt->kv_blocks > 0 ? opt->kv_blocks : (int64_t)opt->max_seqs * ((opt->max_seq + 63) / 64);
}

uint64_t fast_kv_bytes(const Config *c, const FastOptions *opt, int n_layers) {
    return (uint64_t)n_layers * (uint64_t)pool_blocks(opt) * 64u *
           (uint64_t)kvcache_bytes_per_token(c, opt->kv_bf16 ? KV_BF16 : KV_F32);
}

int fast_kv_init(FastKVCache *kv, const FastModel *fm, const FastOptions *opt, Err *err) {
    return fast_kv_init_layers(kv, fm, opt, fm->config.num_hidden_layers, err);
}

int fast_kv_init_layers(FastKVCache *kv, const FastModel *fm, const FastOptions *opt, int n_layers, Err *err) {
    const Config *c = &fm->config;
    memset(kv, 0, sizeof *kv);
    if (opt->max_seqs <= 0 || opt->max_seq <= 0 || n_layers <= 0)
        return err_set(err, "KV cache: max_seqs = %d, max_seq = %lld and %d layers must be positive", opt->max_seqs,
                       (long long)opt->max_seq, n_layers);
    kv->n_layers = n_layers;
    kv->row = c->kv_lora_rank + c->qk_rope_head_dim;
    kv->page = 64;
    kv->dtype = opt->kv_bf16 ? FAST_BF16 : FAST_F32;
    kv->max_seqs = opt->max_seqs;
    kv->max_seq = opt->max_seq;
    kv->max_blocks = (int)((opt->max_seq + kv->page - 1) / kv->page);
    kv->num_blocks = pool_blocks(opt);
    size_t bytes = 0;
    if (kv->num_blocks > 0x7FFFFFFF ||
        size_mul(&bytes, (size_t)kv->n_layers * (size_t)kv->page * (size_t)kv->row * fast_dtype_size(kv->dtype),
                 (size_t)kv->num_blocks))
        return err_set(err, "KV cache: %lld blocks overflow", (long long)kv->num_blocks);
    kv->free_blocks = xcalloc((size_t)kv->num_blocks, sizeof *kv->free_blocks);
    kv->open = xcalloc((size_t)kv->max_seqs, sizeof *kv->open);
    kv->len = xcalloc((size_t)kv->max_seqs, sizeof *kv->len);
    kv->n_blocks = xcalloc((size_t)kv->max_seqs, sizeof *kv->n_blocks);
    kv->blocks = xcalloc((size_t)kv->max_seqs * (size_t)kv->max_blocks, sizeof *kv->blocks);
    if (!kv->free_blocks || !kv->open || !kv->len || !kv->n_blocks || !kv->blocks) {
        fast_kv_free(kv);
        return err_set(err, "KV cache: out of host memory for the block tables");
    }
    /* highest id at the bottom of the stack, so sequences get blocks 0, 1, 2, ... in order */
    for (int64_t b = 0; b < kv->num_blocks; b++) kv->free_blocks[b] = (int)(kv->num_blocks - 1 - b);
    kv->n_free = kv->num_blocks;
    cudaError_t e = cudaMalloc(&kv->mem, bytes);
    if (e != cudaSuccess) {
        kv->mem = NULL;
        fast_kv_free(kv);
        return fast_cuda_err(e, "KV cache", "cudaMalloc", err);
    }
    kv->bytes = bytes;
    return 0;
}

void fast_kv_free(FastKVCache *kv) {
    if (kv->mem) cudaFree(kv->mem);
    free(kv->free_blocks);
    free(kv->open);
    free(kv->len);
    free(kv->n_blocks);
    free(kv->blocks);
    memset(kv, 0, sizeof *kv);
}

int fast_kv_open(FastKVCache *kv, Err *err) {
    for (int s = 0; s < kv->max_seqs; s++)
        if (!kv->open[s]) {
            kv->open[s] = 1, kv->len[s] = 0, kv->n_blocks[s] = 0;
            return s;
        }
    err_set(err, "KV cache: all %d sequence slots are in use", kv->max_seqs);
    return -1;
}

void fast_kv_close(FastKVCache *kv, int seq) {
    if (seq < 0 || seq >= kv->max_seqs || !kv->open[seq]) return;
    int *blocks = kv->blocks + (size_t)seq * (size_t)kv->max_blocks;
    for (int i = kv->n_blocks[seq] - 1; i >= 0; i--) kv->free_blocks[kv->n_free++] = blocks[i];
    kv->open[seq] = 0, kv->len[seq] = 0, kv->n_blocks[seq] = 0;
}

int64_t fast_kv_len(const FastKVCache *kv, int seq) { return seq >= 0 && seq < kv->max_seqs ? kv->len[seq] : 0; }

void fast_kv_truncate(FastKVCache *kv, int seq, int64_t len) {
    if (seq >= 0 && seq < kv->max_seqs && len >= 0 && len < kv->len[seq]) kv->len[seq] = len;
}
