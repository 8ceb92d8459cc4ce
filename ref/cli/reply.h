/**
 * @file reply.h
 * @brief Streaming one reply (generate, chat): tokens from the generator, decoded as they come,
 *        written to an output stream, until EOS, a token limit, a full context, a --stop string
 *        (generate/stop.h: never printed, nor the text after it), a stop request
 *        (Ctrl-C in chat: base/outfile.h's deferred interrupts) or a write error.
 */
#ifndef DSV3_CLI_REPLY_H
#define DSV3_CLI_REPLY_H

#include <stdio.h>

#include "base/buf.h"
#include "generate/generate.h"
#include "generate/stop.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

/** Why a reply ended. */
typedef enum {
    REPLY_EOS,          /**< the model ended it (EOS, not printed) */
    REPLY_LIMIT,        /**< the token limit */
    REPLY_CONTEXT_FULL, /**< no position left (gen_room) */
    REPLY_STOPPED,      /**< out_interrupted(): the user pressed Ctrl-C */
    REPLY_STOP_STRING,  /**< the text reached a --stop string */
} ReplyEnd;

/**
 * Generates up to @p limit tokens (-1: no limit) with @p g, decoding through @p ds and writing
 * the text to @p out as it completes (flushed per step). With @p stop (NULL: none; reset here)
 * the text goes through the stop-string matcher: what could begin a stop string is held back,
 * and the reply ends where one completes. With @p reasoning (NULL: none) the text shown goes
 * through the `<think>` splitter (shown dimmed, as written, or hidden; tokenizer/chat.h) and is
 * flushed at the end. The ids (EOS excluded) are appended to @p ids and the
 * text as generated (after the stop matcher, before the splitter) to @p text when not NULL. A speculative step's tokens past an EOS, a stop
 * string or the limit are rolled back (gen_keep). Fails on a generator error or when @p out cannot
 * be written (a full disk, a closed pipe: the rest would be lost anyway).
 */
int reply_stream(Generator *g, DecodeStream *ds, int eos, long limit, StopMatcher *stop, ChatReasoning *reasoning,
                 FILE *out, IntVec *ids, ByteBuf *text, ReplyEnd *end, Err *err);

#endif
