/**
 * @file stop_match.h
 * @brief Stop strings over streamed text: finds them across token boundaries and holds back
 *        only what could still turn out to be the start of one, so that no byte of a stop string
 *        is ever sent (OpenAI's `stop`).
 *
 * Text arrives in pieces (whole UTF-8 characters, ref/tokenizer/tokenizer.h's DecodeStream).
 * After each piece the held text H is searched for the earliest occurrence of any stop string;
 * if there is none, the longest suffix of H that is a proper prefix of some stop string stays
 * held and the rest is released. A match therefore always starts inside H, and both the release
 * point and a match's start fall on character boundaries (a stop string is valid UTF-8, so its
 * prefixes start with a lead byte).
 */
#ifndef DSV3_STOP_MATCH_H
#define DSV3_STOP_MATCH_H

#include <stddef.h>

#include "base/buf.h"
#include "base/util.h"

/** The stop strings of one request and the text held back. */
typedef struct {
    char **stop;    /**< [n] owned copies */
    size_t *len;    /**< [n] their lengths (≥ 1) */
    int n;          /**< how many */
    ByteBuf held;   /**< text that may still be the start of a stop string */
    int matched;    /**< 1 once a stop string was found (everything after it is dropped) */
} StopMatcher;

/** Copies @p n stop strings (each non-empty); n = 0 makes a matcher that passes everything. */
int stop_matcher_init(StopMatcher *m, const char *const *stop, int n, Err *err);

/**
 * Adds @p len bytes of @p text; appends to @p out what is now certain to precede any stop string.
 * Returns 1 when a stop string completed (@p out then ends right before it), 0 when not, −1 when
 * out of memory. After a match further text is ignored.
 */
int stop_matcher_feed(StopMatcher *m, const char *text, size_t len, ByteBuf *out);

/** The end of the text without a match: appends what was held back. Returns 0 or −1. */
int stop_matcher_flush(StopMatcher *m, ByteBuf *out);

/** Frees the copies and the held text. */
void stop_matcher_free(StopMatcher *m);

#endif
