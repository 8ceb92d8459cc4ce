/**
 * @file data.c
 * @brief Token files (data.h): mmap, one validation pass, and the sequence cursor.
 *
 * Every id is checked against vocab_size when the file is opened, so an id file produced with a
 * different tokenizer fails at once with the offending position rather than indexing past the
 * embedding table mid-run. Sequences are windows of T+1 consecutive ids; they cross document
 * boundaries (the EOS/BOS ids the tokenizer wrote), as in GPT-style pre-training.
 */
#include "data.h"

#include <stdio.h>
#include <string.h>

int tokenfile_get(const TokenFile *f, int64_t i) {
    const unsigned char *b = f->map + 4 * i;
    uint32_t v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return (int)v; /* < vocab_size ≤ MAX_VOCAB, checked at open */
}

int tokenfile_open(TokenFile *f, const char *path, int vocab_size, int64_t min_tokens, Err *err) {
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    const uint8_t *map;
    if (map_file_readonly(path, &map, &f->bytes, err)) return -1;
    f->map = map;
    if (f->bytes % 4) {
        size_t bytes = f->bytes;
        tokenfile_close(f);
        return err_set(err, "%s: %zu bytes is not a whole number of uint32 token ids", path, bytes);
    }
    f->n = (int64_t)(f->bytes / 4);
    if (f->n < min_tokens) {
        int64_t n = f->n;
        tokenfile_close(f);
        return err_set(err, "%s: %lld tokens, need at least %lld (one sequence of seq_len + 1)", path, (long long)n,
                       (long long)min_tokens);
    }
    for (int64_t i = 0; i < f->n; i++) {
        const unsigned char *b = f->map + 4 * i;
        uint32_t v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        if (v >= (uint32_t)vocab_size) {
            int rc = err_set(err, "%s: token %lld is id %u, outside the vocabulary of %d (config vocab_size)", path,
                             (long long)i, v, vocab_size);
            tokenfile_close(f);
            return rc;
        }
    }
    return 0;
}

void tokenfile_close(TokenFile *f) {
    unmap_file(f->map, f->bytes);
    memset(f, 0, sizeof *f);
}

void data_next(const TokenFile *f, DataCursor *c, Rng *rng, int64_t T, int *out) {
    int64_t start;
    if (c->shuffle) {
        start = (int64_t)(rng_uniform_double(rng) * (double)(f->n - T));
        if (start > f->n - T - 1) start = f->n - T - 1;
    } else {
        if (c->pos + T + 1 > f->n) {
            c->pos = 0;
            c->epoch++;
        }
        start = c->pos;
        c->pos += T;
    }
    for (int64_t i = 0; i <= T; i++) out[i] = tokenfile_get(f, start + i);
}
