/**
 * @file chat_repl.h
 * @brief The interactive loop of `dsv3 chat` (compare llama.cpp's `llama-cli -cnv`): line editing
 *        and history (BSD libedit) on a terminal, commands (/help /reset /system /save /load
 *        /exit), Ctrl-C that stops a reply and returns to the prompt (twice quits), and a context
 *        shift that drops the oldest turns, keeping the system message, when the context fills.
 *
 * The conversation is kept as messages and in the KV cache: each user turn is appended to what
 * the cache holds (chat_encode_user_turn), so only new tokens are prefilled. When the cache
 * must be rebuilt — /reset, /system, /load, a context shift — the kept messages are rendered
 * with the chat template again and fed from position 0 (the positions, hence RoPE, change).
 * Standard input that is not a terminal is read line by line with the same commands, so turns
 * can be piped in.
 */
#ifndef DSV3_CLI_CHAT_REPL_H
#define DSV3_CLI_CHAT_REPL_H

#include "generate/generate.h"
#include "generate/stop.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

/** What the loop works with: the session `dsv3 chat` opened. */
typedef struct {
    const Tokenizer *tok; /**< the chat template's tokens are its added tokens */
    Generator *g;         /**< the session (its KV cache holds the conversation) */
    DecodeStream *ds;     /**< streams the replies */
    int eos;              /**< the id that ends a reply */
    long n_predict;       /**< tokens per reply at most (-1: until EOS or the context is full) */
    const char *system;   /**< the first system message (-sys), or NULL */
    StopMatcher *stop;    /**< --stop strings end a reply (NULL: none) */
    const ChatTemplate *tpl; /**< the chat template (--chat-template, or recognized from the tokenizer) */
    ChatReasoning *reasoning; /**< each reply's `<think>` part goes through it (--reasoning) */
    ReasoningMode reasoning_mode; /**< how that part is shown */
} ChatRepl;

/**
 * Runs the conversation until /exit, end of input or a second Ctrl-C. The number of replies goes
 * to @p turns. Returns an exit status (EXIT_OK, or EXIT_RUNTIME after a generator or output error,
 * already reported as "dsv3 CMD: ..."); errors in one turn (bad UTF-8, a message longer than the
 * context, an unreadable /load file) are reported and the conversation goes on.
 */
int chat_repl(const char *cmd, const ChatRepl *r, int *turns);

#endif
