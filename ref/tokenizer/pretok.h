/**
 * @file pretok.h
 * @brief The pre-tokenizer of a Hugging Face tokenizer.json: a Sequence of Split steps
 *        (regex or literal, with a split behaviour) and ByteLevel, compiled once and applied to
 *        text between added tokens (docs/model.md §9.2; docs/formats.md §2).
 *
 * DeepSeek-V3 uses three Split(Isolated) regexes read from its tokenizer.json, then
 * ByteLevel(use_regex=false). Each Split re-splits every piece produced by the previous one,
 * and a regex only ever sees its own piece as the whole subject, so a look-ahead such as
 * `\s+(?!\S)` stops at the piece's end (that is what makes "x   123" end "x" + "   " + "123").
 *
 * The regexes run on Oniguruma with ONIG_SYNTAX_DEFAULT, ONIG_OPTION_NONE and UTF-8: exactly
 * what Hugging Face tokenizers does through the `onig` crate (`SysRegex::new`), so \\p{L},
 * \\p{N}, \\s and (?!…) mean the same thing here as there (same library, same Unicode tables up
 * to the Oniguruma version). The match iteration copies `onig::FindMatches` (empty matches
 * included) and the behaviours copy `NormalizedString::split` in tokenizers/src/tokenizer/
 * normalizer.rs.
 *
 * ByteLevel's own splitting (use_regex=true) uses the GPT-2 regex that Hugging Face hard-codes
 * in pre_tokenizers/byte_level.rs; ByteLevel(add_prefix_space=true) and every other
 * pre-tokenizer type are rejected with a one-line error at load time.
 */
#ifndef DSV3_PRETOK_H
#define DSV3_PRETOK_H

#include <stddef.h>

#include "base/util.h"

#include <cjson/cJSON.h>

/** A piece of the text being split: bytes [off, off + len). */
typedef struct {
    size_t off; /**< first byte */
    size_t len; /**< bytes */
} Span;

/** A growable list of spans. */
typedef struct {
    Span *v;    /**< [cap] */
    size_t n;   /**< spans in use */
    size_t cap; /**< spans allocated */
} SpanVec;

/** One entry of a pattern's match list: [start, end) and whether the pattern matched it. */
typedef struct {
    size_t start; /**< first byte, relative to the piece */
    size_t end;   /**< one past the last byte */
    int flag; /**< is_match while matching, then "remove" after the behaviour is applied */
} SplitMark;

/** Scratch memory reused across calls (one per thread); zero-initialise, free with pretok_work_free(). */
typedef struct {
    SpanVec cur;       /**< the result of pretok_split() */
    SpanVec next;      /**< scratch */
    SplitMark *marks;  /**< scratch */
    size_t nmarks;     /**< marks in use */
    size_t capmarks;   /**< marks allocated */
    void *region;      /**< OnigRegion*, created on first use */
} PretokWork;

/** A compiled pre-tokenizer. */
typedef struct PreTokenizer PreTokenizer;

/**
 * Compiles the "pre_tokenizer" object of a tokenizer.json (NULL or JSON null: no splitting).
 * Accepts Sequence (nested), Split {pattern: {Regex|String}, behavior, invert} and ByteLevel
 * (which must come last). Errors name the step and the unsupported value.
 */
int pretok_from_json(PreTokenizer **out, const cJSON *node, Err *err);

/** Releases a pre-tokenizer (NULL is fine). */
void pretok_free(PreTokenizer *p);

/** True when the pre-tokenizer ends with ByteLevel (required for a byte-level BPE model). */
int pretok_is_byte_level(const PreTokenizer *p);

/**
 * Splits @p text[0, len) (valid UTF-8, the text between two added tokens) into pieces,
 * left to right, none empty; the result is in @p w->cur with offsets relative to @p text.
 * Fails only on exhaustion or an Oniguruma run-time error (e.g. its retry limit).
 */
int pretok_split(const PreTokenizer *p, const char *text, size_t len, PretokWork *w, Err *err);

/** Releases the scratch memory of @p w. */
void pretok_work_free(PretokWork *w);

/** Appends one span. */
int spanvec_push(SpanVec *v, size_t off, size_t len);

#endif /* DSV3_PRETOK_H */
