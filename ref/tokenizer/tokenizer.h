/**
 * @file tokenizer.h
 * @brief Byte-level BPE tokenizer loaded from a Hugging Face tokenizer.json, reproducing the
 *        ids of Hugging Face `tokenizers` exactly (docs/model.md §9.2; docs/formats.md §2 and §6).
 *
 * Pipeline of tokenizer_encode(), each stage as in tokenizers/src (file names in brackets):
 *  1. added tokens are cut out verbatim before anything else, leftmost-longest, first those
 *     with normalized=false, then (in the gaps) those with normalized=true
 *     [tokenizer/added_vocabulary.rs: extract_and_normalize]. The normalizer must be empty
 *     (DeepSeek-V3: Sequence []), so both passes see the raw text;
 *  2. the pre-tokenizer splits each gap into pieces: Split regexes read from the file, then
 *     ByteLevel maps every byte to one printable character of the GPT-2 table (pretok.h);
 *  3. BPE merges each piece with a min-heap over (merge rank, position) — the exact order of
 *     tokenizers' `Word::merge_all` [models/bpe/word.rs] — and emits the vocabulary ids.
 * No BOS/EOS is added (Hugging Face add_special_tokens=False; DeepSeek-V3's post-processor is
 * ByteLevel, which adds none either).
 *
 * tokenizer_decode() is Hugging Face's decode(ids, skip_special_tokens=False): each token's
 * characters go back through the byte table (a token with any character outside the table,
 * such as "<｜User｜>", contributes its own UTF-8 bytes), and invalid UTF-8 in the joined bytes
 * becomes U+FFFD exactly as Rust's String::from_utf8_lossy does.
 *
 * Deliberate differences from Hugging Face, all failing loudly rather than silently:
 *  - invalid UTF-8 input is an error (Python cannot even pass it); an id that is out of range
 *    or names no token is an error in decode (Hugging Face silently drops it);
 *  - added tokens with lstrip/rstrip/single_word, normalizers other than an empty Sequence,
 *    BPE dropout, continuing_subword_prefix/end_of_word_suffix, decoders other than
 *    ByteLevel and pre-tokenizers other than Split/ByteLevel are rejected at load time;
 *  - a file whose added_tokens ids differ from the ids Hugging Face would assign (it assigns
 *    the vocabulary id when the content is in the vocabulary, otherwise the next id after the
 *    vocabulary, in file order) is rejected instead of warned about.
 *
 * A Tokenizer is immutable after tokenizer_load(); encode/decode may run concurrently.
 */
#ifndef DSV3_TOKENIZER_H
#define DSV3_TOKENIZER_H

#include <stddef.h>

#include "base/buf.h"
#include "base/util.h"

/** A loaded tokenizer (opaque). */
typedef struct Tokenizer Tokenizer;

/**
 * Loads @p path: a tokenizer.json file, or a directory containing one. When a
 * tokenizer_config.json sits next to it, its bos_token/eos_token (string or {"content": …})
 * give tokenizer_bos_id()/tokenizer_eos_id() and its chat_template is kept. A directory without
 * tokenizer.json but with a tiktoken.model (or a path ending in .model) is a tiktoken BPE: ranks
 * from that file, special tokens and the pattern from tokenizer_config.json (tokenizer_tiktoken.c).
 * Every validation failure is one line in @p err naming the file and the field.
 */
int tokenizer_load(Tokenizer **t, const char *path, Err *err);

/** Releases a tokenizer (NULL is fine). */
void tokenizer_free(Tokenizer *t);

/**
 * Encodes @p len bytes of UTF-8 @p text into a malloc'd array @p *ids of @p *n ids
 * (no special tokens added; *ids may be NULL when *n is 0). Invalid UTF-8 is an error.
 */
int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int **ids, int *n, Err *err);

/** Like tokenizer_encode() but appends the ids to @p out. */
int tokenizer_encode_append(const Tokenizer *t, const char *text, size_t len, IntVec *out, Err *err);

/**
 * Decodes @p n ids into a malloc'd, NUL-terminated @p *text of @p *len bytes, always valid
 * UTF-8 (Hugging Face decode with skip_special_tokens=False). An id outside
 * [0, tokenizer_vocab_size()) or naming no token is an error.
 */
int tokenizer_decode(const Tokenizer *t, const int *ids, int n, char **text, size_t *len, Err *err);

/** Number of ids: the largest id in the vocabulary or the added tokens, plus one. */
int tokenizer_vocab_size(const Tokenizer *t);

/** Id of the added token whose content is exactly @p content, or -1. */
int tokenizer_token_id(const Tokenizer *t, const char *content);

/**
 * The string of token @p id as stored in tokenizer.json (byte-level form for the vocabulary,
 * e.g. "Ġthe"; the content for an added token), NUL-terminated; NULL for an invalid id.
 */
const char *tokenizer_id_to_token(const Tokenizer *t, int id);

/** 1 when @p id is an added token marked "special" in tokenizer.json, else 0. */
int tokenizer_is_special(const Tokenizer *t, int id);

/** Id of tokenizer_config.json's bos_token, or -1 when there is none. */
int tokenizer_bos_id(const Tokenizer *t);

/** Id of tokenizer_config.json's eos_token, or -1 when there is none. */
int tokenizer_eos_id(const Tokenizer *t);

/** tokenizer_config.json's chat_template string, or NULL. */
const char *tokenizer_chat_template(const Tokenizer *t);

/** 1 when @p t was loaded from a tiktoken.model (Kimi K2, Moonlight), 0 for a tokenizer.json. */
int tokenizer_is_tiktoken(const Tokenizer *t);

/**
 * Incremental decoder for generation: feed ids one at a time and get back only complete
 * UTF-8, never half of a multi-byte character. The concatenation of every piece returned by
 * decode_stream_step() and decode_stream_flush() equals tokenizer_decode() of all the ids.
 * Zero-initialise or use decode_stream_init(); free with decode_stream_free().
 */
typedef struct {
    const Tokenizer *tok;     /**< the tokenizer the ids belong to */
    unsigned char pending[4]; /**< the start of a character whose remaining bytes are still to come */
    int npending;             /**< bytes in @ref pending (0..3) */
    ByteBuf out;              /**< the text returned by the last call */
    ByteBuf raw;              /**< scratch: pending bytes + the token's bytes */
} DecodeStream;

/** Starts a stream for @p t. */
void decode_stream_init(DecodeStream *s, const Tokenizer *t);

/**
 * Adds token @p id; @p *text / @p *len receive the newly completed text (possibly empty),
 * valid until the next call on @p s. An invalid id is an error and leaves the stream unchanged.
 */
int decode_stream_step(DecodeStream *s, int id, const char **text, size_t *len, Err *err);

/** Ends the stream: returns U+FFFD for a trailing incomplete character (if any) and resets it. */
int decode_stream_flush(DecodeStream *s, const char **text, size_t *len, Err *err);

/** Releases the stream's buffer. */
void decode_stream_free(DecodeStream *s);

/**
 * Appends @p n bytes to @p out as valid UTF-8, replacing each maximal invalid subsequence by
 * U+FFFD as Rust's String::from_utf8_lossy does. With @p final = 0 an incomplete but so far
 * valid character at the end is left unconsumed; @p *consumed reports how many bytes were used.
 */
int utf8_lossy_append(ByteBuf *out, const unsigned char *s, size_t n, int final, size_t *consumed);

#endif /* DSV3_TOKENIZER_H */
