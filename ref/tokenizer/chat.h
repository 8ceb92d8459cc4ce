/**
 * @file chat.h
 * @brief The chat templates of the DeepSeek-V3 family (docs/model.md §9.2, §13.6) for plain
 *        system/user/assistant chats: recognizing the template from tokenizer_config.json's Jinja
 *        text as llama.cpp does, rendering to text, encoding to ids, the incremental form a chat
 *        loop uses to append one user turn to a conversation whose ids are already in the KV cache,
 *        and splitting a streamed reply into its reasoning (`<think>` … `</think>`) and its answer.
 *
 * The templates, restricted to messages without tool calls (each checked against the Jinja
 * rendering of the real template: golden/chat/expectations.json, from npm `@huggingface/jinja`):
 *
 *    deepseek-v3     {bos}{system_1}\n\n{system_2}…  then per message  `<｜User｜>`{user}  or
 *                    `<｜Assistant｜>{assistant}<｜end▁of▁sentence｜>`;  generation prompt `<｜Assistant｜>`
 *    deepseek-r1     the same, an assistant's content cut to what follows its last `</think>`, and the
 *                    generation prompt `<｜Assistant｜>` + `<think>` + newline (the reply starts inside its reasoning)
 *    deepseek-v3.1   the same system block; `<｜Assistant｜>` + `</think>` (or `<think>` with `thinking`) opens
 *                    the assistant turn after a user turn; history content cut after its first
 *                    `</think>`; generation prompt only after a user turn: `<｜Assistant｜>` + `</think>` or,
 *                    thinking (--think on), `<｜Assistant｜>` + `<think>`
 *    kimi-k2         <|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|> unless the
 *                    first message is a system one; per message <|im_system|>system<|im_middle|>,
 *                    <|im_user|>user<|im_middle|> or <|im_assistant|>assistant<|im_middle|>, the
 *                    content, <|im_end|>; generation prompt <|im_assistant|>assistant<|im_middle|>; no BOS
 *    kimi-k2-thinking  the same with the default system prompt "You are Kimi, an AI assistant created by
 *                    Moonshot AI." (also for no messages) and every assistant content after `<think>` + `</think>`
 *
 * with nothing inserted between role tokens and contents. apply_chat_template then tokenizes that
 * string with add_special_tokens=False, so encoding is exactly tokenizer_encode(render(...)): the
 * role markers are added tokens, matched verbatim. Because every turn starts with an added token,
 * no BPE piece crosses a turn boundary, hence (for deepseek-v3, deepseek-v3.1 without thinking
 * when the reply holds no `</think>`, and kimi-k2)
 *
 *     encode(m + [assistant a, user u], gen=1)
 *       == encode(m, gen=1) ++ encode(a) ++ encode_user_turn(u, close_reply=1, gen=1)
 *
 * which is what lets a chat loop keep its KV cache across turns (tested in test_chat.c). Where the
 * template rewrites history (R1 and V3.1 drop an earlier reply's reasoning — R1's generation prompt
 * `<think>` + newline included —, K2-Thinking adds `<think>` + `</think>`), the cache keeps the reply as generated,
 * as llama.cpp's llama-cli does.
 * Special-token ids are looked up by content in the tokenizer's added tokens, never hard-coded.
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

/** The user-turn marker of DeepSeek's templates (its id comes from the tokenizer's added_tokens). */
#define CHAT_USER "<｜User｜>"
/** The assistant-turn marker, also the generation prompt. */
#define CHAT_ASSISTANT "<｜Assistant｜>"
/** What closes an assistant turn (DeepSeek-V3's EOS). */
#define CHAT_END "<｜end▁of▁sentence｜>"

/** The chat templates dsv3 implements. */
typedef enum {
    CHAT_DEEPSEEK_V3,       /**< deepseek-ai/DeepSeek-V3, V3-0324 */
    CHAT_DEEPSEEK_R1,       /**< deepseek-ai/DeepSeek-R1: the reply opens with `<think>` */
    CHAT_DEEPSEEK_V31,      /**< deepseek-ai/DeepSeek-V3.1, V3.1-Terminus: thinking or not */
    CHAT_KIMI_K2,           /**< moonshotai/Kimi-K2-Instruct (and Moonlight-Instruct's layout) */
    CHAT_KIMI_K2_THINKING,  /**< moonshotai/Kimi-K2-Thinking */
    CHAT_TEMPLATE_COUNT     /**< number of templates */
} ChatTemplateKind;

/** A template and its switches. */
typedef struct {
    ChatTemplateKind kind; /**< which template */
    int think;             /**< deepseek-v3.1's `thinking` (--think on); ignored by the others */
} ChatTemplate;

/** The template's name as --chat-template spells it ("deepseek-v3", "kimi-k2", ...). */
const char *chat_template_name(ChatTemplateKind kind);

/** The template called @p name; an unknown name is an error listing the known ones. */
int chat_template_by_name(const char *name, ChatTemplateKind *kind, Err *err);

/**
 * Recognizes the Jinja text of a tokenizer_config.json chat_template by the pieces each template
 * has (as llama.cpp's llm_chat_detect_template does); 0, or -1 when it is none of them.
 */
int chat_template_detect(const char *jinja, ChatTemplateKind *kind);

/**
 * The template of a session: @p name (--chat-template) when given, else the one recognized from
 * @p t's chat_template, else deepseek-v3 when the tokenizer has no chat_template at all (the
 * tokenizers dsv3 train-tokenizer writes carry V3's). An unrecognized template is an error naming
 * --chat-template. @p think sets ChatTemplate.think.
 */
int chat_template_select(ChatTemplate *out, const Tokenizer *t, const char *name, int think, Err *err);

/** 0 when @p t has every marker of @p tpl as an added token; else an error naming the missing one. */
int chat_template_check(const ChatTemplate *tpl, const Tokenizer *t, Err *err);

/** 1 when the template has a thinking switch (deepseek-v3.1), so --think means something. */
int chat_template_has_think_switch(const ChatTemplate *tpl);

/** 1 when the generation prompt opens the reply inside `<think>` (deepseek-r1; v3.1 with think). */
int chat_template_opens_reasoning(const ChatTemplate *tpl);

/**
 * 1 when the template's replies reason first (`<think>` … `</think>`, then the answer): deepseek-r1,
 * deepseek-v3.1 with think, kimi-k2-thinking (whose reply opens the `<think>` itself). A server
 * returns that part as reasoning_content.
 */
int chat_template_reasons(const ChatTemplate *tpl);

/** The text that ends an assistant turn: "`<｜end▁of▁sentence｜>`" or "<|im_end|>" (a chat stops there). */
const char *chat_template_end_of_turn(const ChatTemplate *tpl);

/**
 * Renders @p n messages as @p tpl does, appending to @p out; @p bos is the BOS text
 * (tokenizer_config.json's bos_token; DeepSeek's templates start with it) or NULL for none.
 * An unknown role is an error.
 */
int chat_template_render(const ChatTemplate *tpl, const ChatMessage *msgs, int n, int add_generation_prompt,
                         const char *bos, ByteBuf *out, Err *err);

/** chat_template_render, then tokenizer_encode (the markers must be added tokens of @p t). */
int chat_template_encode(const ChatTemplate *tpl, const Tokenizer *t, const ChatMessage *msgs, int n,
                         int add_generation_prompt, int **ids, int *n_ids, Err *err);

/**
 * Appends the ids that extend a conversation by one user message @p content under @p tpl: the end
 * of turn if @p close_reply (the reply before was cut, not ended by the model), the user turn, and
 * the generation prompt if @p add_generation_prompt.
 */
int chat_template_encode_user_turn(const ChatTemplate *tpl, const Tokenizer *t, const char *content, int close_reply,
                                   int add_generation_prompt, IntVec *out, Err *err);

/**
 * Renders @p n messages with DeepSeek-V3's template, appending to @p out; @p bos is the BOS text
 * (tokenizer_config.json's bos_token) or NULL for none. An unknown role is an error.
 */
int chat_render(const ChatMessage *msgs, int n, int add_generation_prompt, const char *bos, ByteBuf *out,
                Err *err);

/**
 * Renders and encodes @p n messages (+ the generation prompt when @p add_generation_prompt) into
 * a malloc'd @p *ids of @p *n_ids ids with the template of @p t (chat_template_select with no name,
 * thinking off). DeepSeek's templates need a tokenizer whose config names a bos_token; every
 * template needs its markers as added tokens.
 */
int chat_encode(const Tokenizer *t, const ChatMessage *msgs, int n, int add_generation_prompt, int **ids,
                int *n_ids, Err *err);

/**
 * chat_template_encode_user_turn with the template of @p t (thinking off). For deepseek-v3:
 * `<｜end▁of▁sentence｜>` if @p close_reply, then `<｜User｜>` and the content, then
 * `<｜Assistant｜>` if @p add_generation_prompt. Pass close_reply = 1 after a reply the model did
 * not end itself (cut by a token limit); a sampled end of turn is fed as the pending token.
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

/** What a streamed reply's reasoning becomes on screen (--reasoning show|hide). */
typedef enum {
    REASONING_SHOW_TAGS, /**< printed as the model wrote it, tags included: the text is unchanged */
    REASONING_SHOW_DIM,  /**< printed dimmed (ANSI SGR 2), without the tags: a terminal */
    REASONING_HIDE,      /**< not printed: the answer only */
    REASONING_SPLIT,     /**< apart, without the tags: chat_reasoning_split (a server's reasoning_content) */
} ReasoningMode;

/**
 * Splits a reply streamed in pieces into reasoning and answer. The reasoning runs from a `<think>`
 * that opens the reply (only whitespace before it) — or from the start, when the prompt opened it
 * (chat_template_opens_reasoning) — to the next `</think>`; a tag split across two pieces is found.
 */
typedef struct {
    ReasoningMode mode;  /**< how reasoning is printed */
    int in_reasoning;    /**< between `<think>` and `</think>` */
    int answer_started;  /**< something other than whitespace was printed as answer (no `<think>` after it) */
    int pending_open;    /**< the prompt opened the reasoning: print its marker before the first piece */
    ByteBuf hold;        /**< the end of the last piece that may begin a tag */
} ChatReasoning;

/** Starts a reply: @p in_reasoning when the prompt ended inside `<think>`. */
void chat_reasoning_init(ChatReasoning *r, ReasoningMode mode, int in_reasoning);

/** Appends to @p out what @p text (the next @p len bytes of the reply) shows in r->mode. */
int chat_reasoning_feed(ChatReasoning *r, const char *text, size_t len, ByteBuf *out);

/** Ends the reply: appends what is held back (and closes a dimmed or tagged reasoning). */
int chat_reasoning_flush(ChatReasoning *r, ByteBuf *out);

/**
 * chat_reasoning_feed with two outputs: in REASONING_SPLIT mode the reasoning of @p text goes to
 * @p reasoning and the rest to @p answer, the tags to neither; in the other modes everything goes
 * to @p answer as chat_reasoning_feed writes it.
 */
int chat_reasoning_split(ChatReasoning *r, const char *text, size_t len, ByteBuf *reasoning, ByteBuf *answer);

/** chat_reasoning_flush with chat_reasoning_split's two outputs. */
int chat_reasoning_split_flush(ChatReasoning *r, ByteBuf *reasoning, ByteBuf *answer);

/** Releases the held bytes. */
void chat_reasoning_free(ChatReasoning *r);

/** 1 when a raw prompt ends inside an open `<think>` (trailing whitespace aside): `generate -p`. */
int chat_text_opens_reasoning(const char *text, size_t len);

#endif /* DSV3_CHAT_H */
