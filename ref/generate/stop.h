/**
 * @file stop.h
 * @brief Stop strings over streamed text (`--stop STRING`, OpenAI's `stop`, llama.cpp's reverse
 *        prompt): generation ends as soon as the text produced so far contains one of them, and
 *        what it produced is the text before the first occurrence.
 *
 * Text arrives piece by piece (a token decodes to zero or more whole UTF-8 characters), and a
 * stop string may straddle pieces, so the matcher holds back the longest tail of the text that
 * is still the beginning of some stop string; everything before it is final and can be shown at
 * once. When a stop string completes, the text before its first occurrence is released and
 * the rest — the stop string and whatever followed it in the same piece — never is.
 *
 *   pieces  "Hello", " wor", "ld", "!"   stop "world"
 *   shown   "Hello", " ",    "",   (stop: "wor" was held, "world" matched)
 *
 * Why only the tail: a stop string that starts in text already shown would have made that text
 * a prefix of it, and the matcher would have held it. "Contains" is checked after every piece,
 * so with stops "ac" and "bacc" the pieces "bac", "c" stop at "ac" (shown: "b"): the longer
 * string had not yet happened when the shorter one did, as in a streaming server. Stop strings that are valid UTF-8 begin
 * with a lead byte, so on valid input the held tail starts on a character boundary and the
 * released text never ends in half a character. The matcher knows nothing of tokens, so the
 * HTTP server and the CLI share it.
 */
#ifndef DSV3_STOP_H
#define DSV3_STOP_H

#include <stddef.h>

#include "base/buf.h"
#include "base/util.h"

/** A streaming matcher for up to a few stop strings. */
typedef struct {
    const char *const *stops; /**< [n] the stop strings, each non-empty (not owned) */
    int n;                    /**< how many; 0: nothing ever stops */
    ByteBuf held;             /**< received text not yet released: it may begin a stop string */
    ByteBuf out;              /**< what the last stop_feed / stop_flush released */
    int hit;                  /**< index of the stop string that matched; −1 while none has */
    char **owned;             /**< stop_init_copy: the copies @p stops points at (freed by stop_free) */
} StopMatcher;

/** Starts a matcher for @p n stop strings (kept by pointer; every one must be non-empty). */
void stop_init(StopMatcher *s, const char *const *stops, int n);

/** stop_init with copies of the strings (a server's request outlives its parsed body); 0, or −1
 *  when out of memory or a string is empty. */
int stop_init_copy(StopMatcher *s, const char *const *stops, int n);

/**
 * Adds @p len bytes of generated text. *text / *out_len receive the text that is now final
 * (possibly empty), valid until the next call on @p s. Returns 1 when a stop string has
 * completed — *text is then everything before it, and later calls release nothing — 0 when
 * generation goes on, −1 when out of memory.
 */
int stop_feed(StopMatcher *s, const char *piece, size_t len, const char **text, size_t *out_len);

/** Generation ended without a stop string (EOS, a token limit): releases the held text. */
void stop_flush(StopMatcher *s, const char **text, size_t *out_len);

/** Forgets the text and the match, for the next reply (the stop strings stay). */
void stop_reset(StopMatcher *s);

/** Releases the matcher's buffers. */
void stop_free(StopMatcher *s);

#endif
