/**
 * @file data.h
 * @brief Pre-tokenized training data: a flat file of little-endian uint32 token ids (the llm.c
 *        format without a header), memory-mapped, validated against the vocabulary once, and
 *        cut into sequences of T+1 ids (T inputs, their T next-token targets).
 *
 * The pipeline: text corpus → tokenizer → `.bin` id file (4 bytes per token, little-endian,
 * document boundaries marked by the tokenizer's own EOS/BOS ids, nothing else) → `dsv3 train`.
 */
#ifndef DSV3_DATA_H
#define DSV3_DATA_H

#include <stdint.h>

#include "base/rng.h"
#include "base/util.h"

/** A mapped token file. */
typedef struct {
    const unsigned char *map; /**< the file's bytes */
    size_t bytes;             /**< file size (a multiple of 4) */
    int64_t n;                /**< tokens */
    char path[1024];          /**< as opened, for messages */
} TokenFile;

/**
 * Maps @p path and checks it: a whole number of 4-byte ids, at least @p min_tokens of them, each
 * < @p vocab_size (the first bad one is reported with its index).
 */
int tokenfile_open(TokenFile *f, const char *path, int vocab_size, int64_t min_tokens, Err *err);
/** Unmaps; safe on a zeroed struct. */
void tokenfile_close(TokenFile *f);
/** Token @p i (little-endian decode, any host). */
int tokenfile_get(const TokenFile *f, int64_t i);

/** Where the next training sequence starts; part of a run's resumable state. */
typedef struct {
    int64_t pos;     /**< next start index (sequential order) */
    int64_t epoch;   /**< completed passes over the file */
    int shuffle;     /**< 1: random starts drawn from the run's Rng instead */
} DataCursor;

/**
 * The next sequence of T+1 ids into @p out. Sequential: starts at pos, then pos += T (so the
 * last id of one sequence is the first of the next, as in llm.c), wrapping to 0 (epoch + 1)
 * when fewer than T+1 ids remain. Shuffled: a uniform start in [0, n − T − 1] from @p rng.
 */
void data_next(const TokenFile *f, DataCursor *c, Rng *rng, int64_t T, int *out);

#endif
