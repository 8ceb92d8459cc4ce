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
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/infile.h"

/** Decodes @p count little-endian ids at @p b into @p out; the index of the first id ≥ vocab, or −1. */
static int64_t decode_ids(const unsigned char *b, int64_t count, int vocab_size, int *out) {
    for (int64_t i = 0; i < count; i++, b += 4) {
        uint32_t v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        if (v >= (uint32_t)vocab_size) return i;
        if (out) out[i] = (int)v;
    }
    return -1;
}

int tokenfile_read(const TokenFile *f, int64_t start, int64_t count, int *out, Err *err) {
    if (start < 0 || count < 0 || start > f->n - count)
        return err_set(err, "%s: ids [%lld, %lld) outside its %lld tokens", f->path, (long long)start,
                       (long long)(start + count), (long long)f->n);
    /* Read into the int array itself (4 bytes per id either way), then decode in place. */
    unsigned char *raw = (unsigned char *)out;
    if (infile_pread(f->fd, raw, (size_t)count * 4, (uint64_t)start * 4, f->path, err)) return -1;
    int64_t bad = decode_ids(raw, count, f->vocab_size, out); /* in place: id i is read before out[i] is written */
    if (bad >= 0) {
        const unsigned char *b = raw + 4 * bad;
        uint32_t v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        return err_set(err, "%s: token %lld is now id %u, outside the vocabulary of %d (the file changed while in use)",
                       f->path, (long long)(start + bad), v, f->vocab_size);
    }
    return 0;
}

int tokenfile_open(TokenFile *f, const char *path, int vocab_size, int64_t min_tokens, Err *err) {
    memset(f, 0, sizeof *f);
    f->fd = -1;
    snprintf(f->path, sizeof f->path, "%s", path);
    struct stat sb;
    if (infile_open(path, &f->fd, &sb, err)) return -1;
    f->bytes = (size_t)sb.st_size;
    f->vocab_size = vocab_size;
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
    enum { CHUNK = 1 << 18 }; /* ids per read: 1 MiB */
    unsigned char *buf = malloc((size_t)CHUNK * 4);
    if (!buf) {
        tokenfile_close(f);
        return err_set(err, "%s: out of memory", path);
    }
    for (int64_t at = 0; at < f->n; at += CHUNK) {
        int64_t count = f->n - at < CHUNK ? f->n - at : CHUNK;
        if (infile_pread(f->fd, buf, (size_t)count * 4, (uint64_t)at * 4, path, err)) {
            free(buf);
            tokenfile_close(f);
            return -1;
        }
        int64_t bad = decode_ids(buf, count, vocab_size, NULL);
        if (bad >= 0) {
            const unsigned char *b = buf + 4 * bad;
            uint32_t v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
            free(buf);
            tokenfile_close(f);
            return err_set(err, "%s: token %lld is id %u, outside the vocabulary of %d (config vocab_size)", path,
                           (long long)(at + bad), v, vocab_size);
        }
    }
    free(buf);
    return 0;
}

void tokenfile_close(TokenFile *f) {
    if (f->path[0] && f->fd >= 0) close(f->fd); /* a zeroed struct (no path) owns no descriptor */
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

int data_next(const TokenFile *f, DataCursor *c, Rng *rng, int64_t T, int *out, Err *err) {
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
    return tokenfile_read(f, start, T + 1, out, err);
}
