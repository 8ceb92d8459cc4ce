/**
 * @file util_tok.h
 * @brief Test helpers for the tokenizer tests: JSON fixtures, temporary directories,
 *        id-list comparison with a readable diff, and a naive reference BPE.
 */
#ifndef DSV3_TEST_UTIL_TOK_H
#define DSV3_TEST_UTIL_TOK_H

#include <stddef.h>

#include "base/buf.h"

struct cJSON;

/** The real DeepSeek-V3 tokenizer directory (tests run from the repository root). */
#define DS_TOKENIZER_DIR "golden/tokenizer/deepseek-v3"

/** The tiktoken fixtures (golden/tokenizer/tiktoken/README.md). */
#define TIK_DIR "golden/tokenizer/tiktoken"

/**
 * Makes @p dir (existing) a Kimi-class tiktoken tokenizer: a symlink to cl100k_base's tiktoken.model
 * and Kimi K2's tokenizer_config.json layout, with the chat_template read from @p chat_template_path
 * (NULL: none). 0, or -1.
 */
int tok_kimi_fixture(const char *dir, const char *chat_template_path);

/** Parses a JSON file; NULL (with a message on stderr) if it cannot be read or parsed. */
struct cJSON *tok_json_file(const char *path);

struct Tokenizer;
/**
 * Fixture set-up: loads DS_TOKENIZER_DIR into *@p tok and parses its tokenizer.json into
 * *@p json; 0, or -1 with a message on stderr.
 */
int tok_load_deepseek(struct Tokenizer **tok, struct cJSON **json);

/** A JSON array of integers as a malloc'd int array; NULL if it is not one. */
int *tok_json_ints(const struct cJSON *arr, int *n);

/** 1 when the lists are equal; otherwise prints both (labelled with @p what) and returns 0. */
int tok_ids_equal(const char *what, const int *got, int ngot, const int *want, int nwant);

/** Writes @p len bytes to @p path (overwrites); 0 on success. */
int tok_write(const char *path, const void *data, size_t len);

/** Writes a NUL-terminated string to "dir/name"; 0 on success. */
int tok_write_in(const char *dir, const char *name, const char *text);

/**
 * A small valid byte-level BPE tokenizer.json as a cJSON tree for the load tests to mutate:
 * the 256 byte tokens (ids 0..255 in byte order), merges "t h" → 256 "th", "th e" → 257
 * "the", "Ġ the" → 258 "Ġthe" (legacy strings; so "the the" is [257, 258]), DeepSeek-V3's
 * pre-tokenizer and decoder, and added tokens <｜User｜> = 259, <｜Assistant｜> = 260,
 * <｜end▁of▁sentence｜> = 261 (special).
 */
struct cJSON *tiny_tokenizer(void);

/**
 * A deliberately simple, independent byte-level BPE over a parsed tokenizer.json (GPT-2's
 * original loop: merge every occurrence of the lowest-ranked adjacent pair, left to right,
 * until none is left). Used as an oracle on single pre-tokenized pieces.
 */
typedef struct NaiveBpe NaiveBpe;

/** Builds the oracle from a parsed tokenizer.json (legacy "a b" merges). */
NaiveBpe *naive_bpe_new(const struct cJSON *tokenizer_json);
/** Appends the ids of one piece (raw bytes) to ids (capacity cap); returns the new count or -1. */
int naive_bpe_piece(const NaiveBpe *b, const unsigned char *s, size_t n, int *ids, int count, int cap);
/** Releases the oracle. */
void naive_bpe_free(NaiveBpe *b);

/**
 * Decodes @p ids one at a time through a DecodeStream, appending every piece (and the final
 * flush) to @p all. Returns the flush's length, or -1 if a step failed or returned a piece that
 * is not valid UTF-8 (the stream's promise).
 */
struct Tokenizer;
long stream_decode_all(const struct Tokenizer *tok, const int *ids, int n, ByteBuf *all);

#endif
