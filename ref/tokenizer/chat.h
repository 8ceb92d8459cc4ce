/**
 * @file chat.h
 * @brief DeepSeek-V3's chat template (docs/model.md §9.2) for plain system/user/assistant chats:
 *        rendering to text, encoding to ids, and the incremental form a chat loop uses to
 *        append one user turn to a conversation whose ids are already in the KV cache.
 *
 * The Jinja chat_template of tokenizer_config.json, restricted to messages without tool
 * calls, renders
 *
 *     {bos_token}{system_1}\n\n{system_2}…            (every system message, wherever it is)
 *     <｜User｜>{user}                                 (per user message)
 *     <｜Assistant｜>{assistant}<｜end▁of▁sentence｜>   (per assistant message)
 *     <｜Assistant｜>                                  (add_generation_prompt)
 *
 * with nothing inserted between role tokens and contents. apply_chat_template then
 * tokenizes that string with add_special_tokens=False, so chat_encode() is exactly
 * tokenizer_encode(chat_render(...)): the role markers are added tokens, matched verbatim.
 * Because every turn starts with an added token, no BPE piece crosses a turn boundary, hence
 *
 *     chat_encode(m + [assistant a, user u], gen=1)
 *       == chat_encode(m, gen=1) ++ encode(a) ++ chat_encode_user_turn(u, close_reply=1, gen=1)
 *
 * which is what lets a chat loop keep its KV cache across turns (tested in test_chat.c).
 * Special-token ids are looked up by content in the tokenizer's added_tokens, never hard-coded.
 */
#ifndef DSV3_CHAT_H
#define DSV3_CHAT_H

#include <stddef.h>

#include "base/buf.h"
#include "tokenizer.h"
#include "base/util.h"

/** One chat message. role must be "system", "user" or "assistant"; content is UTF-8 text. */
typedef struct {
    const char *role;    /**< "system", "user" or "assistant" */
    const char *content; /**< the text, NUL-terminated UTF-8 */
} ChatMessage;

/** Messages parsed from JSON, owning their strings. Free with chat_log_free(). */
typedef struct {
    ChatMessage *msg; /**< [n] */
    int n;            /**< number of messages */
    void *json;       /**< the parsed document the strings point into */
} ChatLog;

/** The user-turn marker of the template (its id comes from the tokenizer's added_tokens). */
#define CHAT_USER "<｜User｜>"
/** The assistant-turn marker, also the generation prompt. */
#define CHAT_ASSISTANT "<｜Assistant｜>"
/** What closes an assistant turn (DeepSeek-V3's EOS). */
#define CHAT_END "<｜end▁of▁sentence｜>"

/**
 * Renders @p n messages as the template does, appending to @p out; @p bos is the BOS text
 * (tokenizer_config.json's bos_token) or NULL for none. An unknown role is an error.
 */
int chat_render(const ChatMessage *msgs, int n, int add_generation_prompt, const char *bos, ByteBuf *out,
                Err *err);

/**
 * Renders and encodes @p n messages (+ `<｜Assistant｜>` when @p add_generation_prompt) into
 * a malloc'd @p *ids of @p *n_ids ids, BOS first. Needs a tokenizer whose config names a
 * bos_token and whose added tokens include the three markers above.
 */
int chat_encode(const Tokenizer *t, const ChatMessage *msgs, int n, int add_generation_prompt, int **ids,
                int *n_ids, Err *err);

/**
 * Appends to @p out the ids that extend a conversation by one user message:
 * `<｜end▁of▁sentence｜>` if @p close_reply, then `<｜User｜>` and the content, then
 * `<｜Assistant｜>` if @p add_generation_prompt. Pass close_reply = 1 after a generated
 * assistant reply whose closing `<｜end▁of▁sentence｜>` was sampled but not fed back into the model.
 */
int chat_encode_user_turn(const Tokenizer *t, const char *content, int close_reply, int add_generation_prompt,
                          IntVec *out, Err *err);

/**
 * Parses an OpenAI-style JSON array of {"role": string, "content": string} objects
 * (other keys are ignored). Errors name the offending element; roles are checked too, and a
 * NUL character (raw or \\u0000), which would cut a C string short, is refused.
 */
int chat_parse_json(const char *json, size_t len, ChatLog *log, Err *err);

/** Releases a ChatLog. */
void chat_log_free(ChatLog *log);

#endif /* DSV3_CHAT_H */
