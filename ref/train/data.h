/**
 * @file data.h
 * @brief Pre-tokenized training data: a flat file of little-endian uint32 token ids (the llm.c
 *        format without a header), validated against the vocabulary when opened, and cut into
 *        sequences of T+1 ids (T inputs, their T next-token targets).
 *
 * The file is read with pread(2), one sequence at a time, not memory-mapped: a file truncated
 * or rewritten while a run uses it is then an error naming the file (the ids are checked again
 * as they are read), where a mapping would kill the process with SIGBUS.
 *
 * The pipeline: text corpus → tokenizer → `.bin` id file (4 bytes per token, little-endian,
 * document boundaries marked by the tokenizer's own EOS/BOS ids, nothing else) → `dsv3 train`.
 */
#ifndef DSV3_DATA_H
#define DSV3_DATA_H

#include <stdint.h>

#include "base/rng.h"
#include "base/util.h"

/** An open token file. */
typedef struct {
    int fd;                   /**< the open file (-1: closed) */
    size_t bytes;             /**< file size when opened (a multiple of 4) */
    int64_t n;                /**< tokens */
    int vocab_size;           /**< every id is below this */
    char path[1024];          /**< as opened, for messages */
} TokenFile;

/**
 * Opens regular file @p path (without blocking: a FIFO is refused) and checks it: a whole number
 * of 4-byte ids, at least @p min_tokens of them, each < @p vocab_size (the first bad one is
 * reported with its index).
 */
int tokenfile_open(TokenFile *f, const char *path, int vocab_size, int64_t min_tokens, Err *err);
/** Closes; safe on a zeroed struct. */
void tokenfile_close(TokenFile *f);
/**
 * Ids [start, start + count) into @p out (little-endian decode, any host). A file that has
 * shrunk, or an id that is no longer below vocab_size, is an error naming the file.
 */
int tokenfile_read(const TokenFile *f, int64_t start, int64_t count, int *out, Err *err);

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
 * Errors are tokenfile_read's.
 */
int data_next(const TokenFile *f, DataCursor *c, Rng *rng, int64_t T, int *out, Err *err);

#endif
