/**
 * @file chat.c
 * @brief Implementation of chat.h: the chat templates of the DeepSeek-V3 family (docs/model.md §9.2,
 *        §13.6) and the reasoning splitter.
 */
/*
 * Each template is the Jinja text of the model's tokenizer_config.json (the .jinja files of golden/chat) read for
 * messages without tool calls; tests/test_chat.c compares every rendering with the one npm's
 * @huggingface/jinja produced from that text (golden/chat/expectations.json). The pieces, by template:
 *  - deepseek-v3: the system prompt is accumulated first (`ns.system_prompt`, joined by a blank line
 *    after the first, `ns.is_first_sp`), then `{{bos_token}}{{ns.system_prompt}}`, then per message
 *    `<｜User｜>` + content or `<｜Assistant｜>` + content + `<｜end▁of▁sentence｜>`, and finally
 *    `<｜Assistant｜>` when add_generation_prompt;
 *  - deepseek-r1: `content.split('</think>')[-1]` for assistants, generation prompt
 *    `<｜Assistant｜><think>` + newline;
 *  - deepseek-v3.1: `ns.is_last_user` decides whether an assistant message (and the generation
 *    prompt) gets `<｜Assistant｜>` + `</think>` (or `<think>` when `thinking`), and
 *    `content.split('</think>', 1)[1]` for assistants;
 *  - kimi-k2 / kimi-k2-thinking: `<|im_…|>role<|im_middle|>` + content + `<|im_end|>` per message,
 *    a default system message, `<think></think>` before every history reply of the thinking one.
 * Recognition (chat_template_detect) looks for the pieces only the matching template has.
 */
#include "chat.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

/* ---- the templates ------------------------------------------------------------------------- */

static const char *const NAMES[CHAT_TEMPLATE_COUNT] = { "deepseek-v3", "deepseek-r1", "deepseek-v3.1", "kimi-k2",
                                                        "kimi-k2-thinking" };

/** Kimi's system-role header. */
#define KIMI_SYSTEM "<|im_system|>system<|im_middle|>"
/** Kimi's user-role header. */
#define KIMI_USER "<|im_user|>user<|im_middle|>"
/** Kimi's assistant-role header, also the generation prompt. */
#define KIMI_ASSISTANT "<|im_assistant|>assistant<|im_middle|>"
/** Kimi's end of a turn. */
#define KIMI_END "<|im_end|>"

static int is_kimi(const ChatTemplate *tpl) { return tpl->kind == CHAT_KIMI_K2 || tpl->kind == CHAT_KIMI_K2_THINKING; }

const char *chat_template_name(ChatTemplateKind kind) {
    return kind >= 0 && kind < CHAT_TEMPLATE_COUNT ? NAMES[kind] : "?";
}

int chat_template_by_name(const char *name, ChatTemplateKind *kind, Err *err) {
    for (int k = 0; k < CHAT_TEMPLATE_COUNT; k++)
        if (!strcmp(name, NAMES[k])) {
            *kind = (ChatTemplateKind)k;
            return 0;
        }
    return err_set(err, "unknown chat template '%.40s' (known: deepseek-v3, deepseek-r1, deepseek-v3.1, kimi-k2, "
                        "kimi-k2-thinking)", name);
}

int chat_template_detect(const char *j, ChatTemplateKind *kind) {
    if (strstr(j, "<|im_assistant|>") && strstr(j, "<|im_middle|>") && strstr(j, "<|im_end|>")) {
        *kind = strstr(j, "<think>") ? CHAT_KIMI_K2_THINKING : CHAT_KIMI_K2;
        return 0;
    }
    if (strstr(j, CHAT_USER) && strstr(j, CHAT_ASSISTANT) && strstr(j, CHAT_END)) {
        if (strstr(j, "thinking") && strstr(j, CHAT_ASSISTANT "</think>")) *kind = CHAT_DEEPSEEK_V31;
        else if (strstr(j, CHAT_ASSISTANT "<think>")) *kind = CHAT_DEEPSEEK_R1;
        else if (strstr(j, "</think>")) return -1; /* a reasoning variant not known here */
        else *kind = CHAT_DEEPSEEK_V3;
        return 0;
    }
    return -1;
}

int chat_template_select(ChatTemplate *out, const Tokenizer *t, const char *name, int think, Err *err) {
    out->think = think;
    out->kind = CHAT_DEEPSEEK_V3;
    if (name) return chat_template_by_name(name, &out->kind, err);
    const char *j = tokenizer_chat_template(t);
    if (j && chat_template_detect(j, &out->kind) != 0)
        return err_set(err, "tokenizer_config.json's chat_template is none that dsv3 knows (deepseek-v3, deepseek-r1, "
                            "deepseek-v3.1, kimi-k2, kimi-k2-thinking): pass --chat-template NAME");
    return 0;
}

int chat_template_has_think_switch(const ChatTemplate *tpl) { return tpl->kind == CHAT_DEEPSEEK_V31; }

int chat_template_opens_reasoning(const ChatTemplate *tpl) {
    return tpl->kind == CHAT_DEEPSEEK_R1 || (tpl->kind == CHAT_DEEPSEEK_V31 && tpl->think);
}

int chat_template_reasons(const ChatTemplate *tpl) {
    return chat_template_opens_reasoning(tpl) || tpl->kind == CHAT_KIMI_K2_THINKING;
}

const char *chat_template_end_of_turn(const ChatTemplate *tpl) { return is_kimi(tpl) ? KIMI_END : CHAT_END; }

static int role_ok(const char *role) {
    return !strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant");
}

static int bad_role(int i, const char *role, Err *err) {
    return err_set(err, "messages[%d]: unknown chat role '%.40s' (expected system, user or assistant)", i, role);
}

/** The generation prompt of a template (v3.1: only after a user turn, which the caller checks). */
static const char *generation_prompt(const ChatTemplate *tpl) {
    switch (tpl->kind) {
    case CHAT_DEEPSEEK_R1: return CHAT_ASSISTANT "<think>\n";
    case CHAT_DEEPSEEK_V31: return tpl->think ? CHAT_ASSISTANT "<think>" : CHAT_ASSISTANT "</think>";
    case CHAT_KIMI_K2: case CHAT_KIMI_K2_THINKING: return KIMI_ASSISTANT;
    default: return CHAT_ASSISTANT;
    }
}

/** An assistant's content as the template keeps it in history: R1 after the last `</think>`, V3.1 after the first. */
static const char *history_content(const ChatTemplate *tpl, const char *c) {
    const char *at = strstr(c, "</think>");
    if (!at) return c;
    if (tpl->kind == CHAT_DEEPSEEK_V31) return at + 8;
    if (tpl->kind != CHAT_DEEPSEEK_R1) return c;
    for (const char *next; (next = strstr(at + 8, "</think>"));) at = next;
    return at + 8;
}

/** Kimi's templates: one <|im_…|>role<|im_middle|> block per message. */
static int render_kimi(const ChatTemplate *tpl, const ChatMessage *msgs, int n, int gen, ByteBuf *out) {
    int rc = 0, thinking = tpl->kind == CHAT_KIMI_K2_THINKING;
    if (thinking ? (n == 0 || strcmp(msgs[0].role, "system")) : (n > 0 && strcmp(msgs[0].role, "system")))
        rc = bytebuf_puts(out, thinking ? KIMI_SYSTEM "You are Kimi, an AI assistant created by Moonshot AI." KIMI_END
                                        : KIMI_SYSTEM "You are a helpful assistant" KIMI_END);
    for (int i = 0; i < n && rc == 0; i++) {
        const char *r = msgs[i].role;
        int asst = !strcmp(r, "assistant");
        rc = bytebuf_puts(out, !strcmp(r, "system") ? KIMI_SYSTEM : asst ? KIMI_ASSISTANT : KIMI_USER);
        if (rc == 0 && asst && thinking) rc = bytebuf_puts(out, "<think></think>");
        if (rc == 0) rc = bytebuf_puts(out, msgs[i].content);
        if (rc == 0) rc = bytebuf_puts(out, KIMI_END);
    }
    if (rc == 0 && gen) rc = bytebuf_puts(out, KIMI_ASSISTANT);
    return rc;
}

/** DeepSeek's templates: BOS, the joined system prompts, then the turns. */
static int render_deepseek(const ChatTemplate *tpl, const ChatMessage *msgs, int n, int gen, const char *bos,
                           ByteBuf *out) {
    int rc = bos ? bytebuf_puts(out, bos) : 0, first_system = 1, last_user = 0, v31 = tpl->kind == CHAT_DEEPSEEK_V31;
    for (int i = 0; i < n && rc == 0; i++) {
        if (strcmp(msgs[i].role, "system") != 0) continue;
        if (!first_system) rc = bytebuf_puts(out, "\n\n");
        if (rc == 0) rc = bytebuf_puts(out, msgs[i].content);
        first_system = 0;
    }
    for (int i = 0; i < n && rc == 0; i++) {
        if (!strcmp(msgs[i].role, "user")) {
            rc = bytebuf_puts(out, CHAT_USER);
            if (rc == 0) rc = bytebuf_puts(out, msgs[i].content);
            last_user = 1;
        } else if (!strcmp(msgs[i].role, "assistant")) {
            if (!v31) rc = bytebuf_puts(out, CHAT_ASSISTANT);
            else if (last_user) rc = bytebuf_puts(out, CHAT_ASSISTANT "</think>"); /* no 'prefix' messages here */
            if (rc == 0) rc = bytebuf_puts(out, history_content(tpl, msgs[i].content));
            if (rc == 0) rc = bytebuf_puts(out, CHAT_END);
            last_user = 0;
        }
    }
    if (rc == 0 && gen && (!v31 || last_user)) rc = bytebuf_puts(out, generation_prompt(tpl));
    return rc;
}

int chat_template_render(const ChatTemplate *tpl, const ChatMessage *msgs, int n, int add_generation_prompt,
                         const char *bos, ByteBuf *out, Err *err) {
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content) return err_set(err, "messages[%d]: missing role or content", i);
        else if (!role_ok(msgs[i].role)) return bad_role(i, msgs[i].role, err);
    int rc = is_kimi(tpl) ? render_kimi(tpl, msgs, n, add_generation_prompt, out)
                          : render_deepseek(tpl, msgs, n, add_generation_prompt, bos, out);
    return rc ? err_set(err, "chat: out of memory") : 0;
}

int chat_render(const ChatMessage *msgs, int n, int add_generation_prompt, const char *bos, ByteBuf *out,
                Err *err) {
    ChatTemplate v3 = { CHAT_DEEPSEEK_V3, 0 };
    return chat_template_render(&v3, msgs, n, add_generation_prompt, bos, out, err);
}

/* The markers must be added tokens, or the rendered text would be tokenized as plain text. */
int chat_template_check(const ChatTemplate *tpl, const Tokenizer *t, Err *err) {
    static const char *const deepseek[] = { CHAT_USER, CHAT_ASSISTANT, CHAT_END, NULL };
    static const char *const kimi[] = { "<|im_system|>", "<|im_user|>", "<|im_assistant|>", "<|im_middle|>", KIMI_END, NULL };
    for (const char *const *m = is_kimi(tpl) ? kimi : deepseek; *m; m++)
        if (tokenizer_token_id(t, *m) < 0)
            return err_set(err, "the tokenizer has no added token '%s', which the %s chat template needs", *m,
                           chat_template_name(tpl->kind));
    return 0;
}

int chat_template_encode(const ChatTemplate *tpl, const Tokenizer *t, const ChatMessage *msgs, int n,
                         int add_generation_prompt, int **ids, int *n_ids, Err *err) {
    *ids = NULL;
    *n_ids = 0;
    if (chat_template_check(tpl, t, err) != 0) return -1;
    const char *bos = NULL;
    if (!is_kimi(tpl) && !(bos = tokenizer_id_to_token(t, tokenizer_bos_id(t))))
        return err_set(err, "the chat template needs a bos_token (from tokenizer_config.json next to tokenizer.json)");
    ByteBuf text = {0};
    int rc = chat_template_render(tpl, msgs, n, add_generation_prompt, bos, &text, err);
    if (rc == 0) rc = tokenizer_encode(t, text.data ? text.data : "", text.len, ids, n_ids, err);
    bytebuf_free(&text);
    return rc;
}

int chat_encode(const Tokenizer *t, const ChatMessage *msgs, int n, int add_generation_prompt, int **ids,
                int *n_ids, Err *err) {
    ChatTemplate tpl;
    *ids = NULL;
    *n_ids = 0;
    if (chat_template_select(&tpl, t, NULL, 0, err)) return -1;
    return chat_template_encode(&tpl, t, msgs, n, add_generation_prompt, ids, n_ids, err);
}

int chat_template_encode_user_turn(const ChatTemplate *tpl, const Tokenizer *t, const char *content, int close_reply,
                                   int add_generation_prompt, IntVec *out, Err *err) {
    if (chat_template_check(tpl, t, err) != 0) return -1;
    ByteBuf text = {0};
    int kimi = is_kimi(tpl);
    int rc = (close_reply && bytebuf_puts(&text, chat_template_end_of_turn(tpl)) != 0) ||
             bytebuf_puts(&text, kimi ? KIMI_USER : CHAT_USER) != 0 || bytebuf_puts(&text, content) != 0 ||
             (kimi && bytebuf_puts(&text, KIMI_END) != 0) ||
             (add_generation_prompt && bytebuf_puts(&text, generation_prompt(tpl)) != 0);
    if (rc) rc = err_set(err, "chat: out of memory");
    if (rc == 0) rc = tokenizer_encode_append(t, text.data, text.len, out, err);
    bytebuf_free(&text);
    return rc;
}

int chat_encode_user_turn(const Tokenizer *t, const char *content, int close_reply, int add_generation_prompt,
                          IntVec *out, Err *err) {
    ChatTemplate tpl;
    if (chat_template_select(&tpl, t, NULL, 0, err)) return -1;
    return chat_template_encode_user_turn(&tpl, t, content, close_reply, add_generation_prompt, out, err);
}

/**
 * Offset of the first NUL the parsed strings would hold — a raw 0 byte, or a \u0000 escape inside
 * a string — or −1. cJSON decodes either into a C string that ends there, which would silently
 * cut a message short.
 */
static long find_nul(const char *json, size_t len) {
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        if (json[i] == 0) return (long)i;
        if (!in_string) {
            in_string = json[i] == '"';
        } else if (json[i] == '"') {
            in_string = 0;
        } else if (json[i] == '\\' && i + 1 < len) {
            if (json[i + 1] == 'u' && i + 5 < len && !memcmp(json + i + 2, "0000", 4)) return (long)i;
            i++; /* the escaped character: \" does not end the string */
        }
    }
    return -1;
}

int chat_parse_json(const char *json, size_t len, ChatLog *log, Err *err) {
    memset(log, 0, sizeof *log);
    long nul = find_nul(json, len);
    if (nul >= 0) return err_set(err, "messages: a NUL character (\\u0000) at byte %ld: message text cannot contain it", nul);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return err_set(err, "messages: invalid JSON");
    if (!cJSON_IsArray(root)) {
        cJSON_Delete(root);
        return err_set(err, "messages: expected a JSON array of {\"role\", \"content\"} objects");
    }
    int n = cJSON_GetArraySize(root), i = 0;
    log->msg = xcalloc((size_t)n + 1, sizeof *log->msg);
    log->json = root;
    if (!log->msg) {
        chat_log_free(log);
        return err_set(err, "messages: out of memory");
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        int rc = 0;
        if (!cJSON_IsObject(it)) rc = err_set(err, "messages[%d]: expected an object", i);
        else if (!cJSON_IsString(role)) rc = err_set(err, "messages[%d]: \"role\" must be a string", i);
        else if (!role_ok(role->valuestring)) rc = bad_role(i, role->valuestring, err);
        else if (!cJSON_IsString(content))
            rc = err_set(err, "messages[%d]: \"content\" must be a string (tool calls are not supported)", i);
        else if (!utf8_valid(content->valuestring, strlen(content->valuestring)))
            rc = err_set(err, "messages[%d]: \"content\" is not valid UTF-8", i);
        if (rc) {
            chat_log_free(log);
            return -1;
        }
        log->msg[i].role = role->valuestring;
        log->msg[i].content = content->valuestring;
        i++;
    }
    log->n = i;
    return 0;
}

void chat_log_free(ChatLog *log) {
    free(log->msg);
    cJSON_Delete(log->json);
    memset(log, 0, sizeof *log);
}

/* ---- reasoning ---------------------------------------------------------------------------- */

static const char THINK_OPEN[] = "<think>", THINK_CLOSE[] = "</think>";
/** ANSI SGR 2: dim (reasoning on a terminal). */
#define DIM_ON "\033[2m"
/** ANSI SGR 0: back to normal. */
#define DIM_OFF "\033[0m"

void chat_reasoning_init(ChatReasoning *r, ReasoningMode mode, int in_reasoning) {
    memset(r, 0, sizeof *r);
    r->mode = mode;
    r->in_reasoning = r->pending_open = in_reasoning;
}

/** Emits a span of reasoning or answer text in the mode's form: reasoning to @p think, the rest to @p answer. */
static int emit(ChatReasoning *r, const char *s, size_t n, ByteBuf *think, ByteBuf *answer) {
    if (n == 0 || (r->in_reasoning && r->mode == REASONING_HIDE)) return 0;
    if (!r->in_reasoning && !r->answer_started)
        for (size_t i = 0; i < n; i++)
            if (s[i] != ' ' && s[i] != '\n' && s[i] != '\t' && s[i] != '\r') r->answer_started = 1;
    return bytebuf_append(r->in_reasoning ? think : answer, s, n);
}

/** The reasoning opens (`<think>`) or closes (`</think>`): the mode's marker. */
static int toggle(ChatReasoning *r, ByteBuf *out) {
    static const char *const open[] = { THINK_OPEN, DIM_ON, "", "" }, *const close[] = { THINK_CLOSE, DIM_OFF, "", "" };
    int rc = bytebuf_puts(out, r->in_reasoning ? close[r->mode] : open[r->mode]);
    r->in_reasoning = !r->in_reasoning;
    return rc;
}

int chat_reasoning_split(ChatReasoning *r, const char *text, size_t len, ByteBuf *reasoning, ByteBuf *answer) {
    /* Outside REASONING_SPLIT the reasoning is shown inline: one output for both. */
    ByteBuf *think = r->mode == REASONING_SPLIT ? reasoning : answer;
    if (r->pending_open) { /* a reasoning the prompt opened: dimmed from the first piece (tags: as written) */
        if (r->mode == REASONING_SHOW_DIM && bytebuf_puts(answer, DIM_ON)) return -1;
        r->pending_open = 0;
    }
    ByteBuf buf = {0};
    if (bytebuf_append(&buf, r->hold.data ? r->hold.data : "", r->hold.len) || bytebuf_append(&buf, text, len)) {
        bytebuf_free(&buf);
        return -1;
    }
    r->hold.len = 0;
    const char *s = buf.data ? buf.data : "";
    size_t n = buf.len, at = 0;
    int rc = 0;
    while (rc == 0 && at < n) {
        const char *tag = r->in_reasoning ? THINK_CLOSE : (r->answer_started ? NULL : THINK_OPEN);
        if (!tag) {
            rc = emit(r, s + at, n - at, think, answer);
            break;
        }
        size_t tl = strlen(tag);
        const char *hit = NULL;
        for (size_t i = at; i + tl <= n; i++)
            if (!memcmp(s + i, tag, tl)) {
                hit = s + i;
                break;
            }
        if (hit) {
            size_t k = (size_t)(hit - s);
            /* \<think> opens the reasoning only at the start of the answer */
            if (!r->in_reasoning) {
                for (size_t i = at; i < k; i++)
                    if (s[i] != ' ' && s[i] != '\n' && s[i] != '\t' && s[i] != '\r') r->answer_started = 1;
                if (r->answer_started) continue;
            }
            rc = emit(r, s + at, k - at, think, answer);
            if (rc == 0) rc = toggle(r, answer);
            at = k + tl;
            continue;
        }
        /* hold back a tail that may be the start of the tag */
        size_t keep = 0;
        for (size_t m = tl - 1; m > 0 && !keep; m--)
            if (n - at >= m && !memcmp(s + n - m, tag, m)) keep = m;
        rc = emit(r, s + at, n - at - keep, think, answer);
        if (rc == 0 && keep) rc = bytebuf_append(&r->hold, s + n - keep, keep);
        break;
    }
    bytebuf_free(&buf);
    return rc;
}

int chat_reasoning_feed(ChatReasoning *r, const char *text, size_t len, ByteBuf *out) {
    return chat_reasoning_split(r, text, len, out, out);
}

int chat_reasoning_split_flush(ChatReasoning *r, ByteBuf *reasoning, ByteBuf *answer) {
    int rc = emit(r, r->hold.data ? r->hold.data : "", r->hold.len, r->mode == REASONING_SPLIT ? reasoning : answer, answer);
    r->hold.len = 0;
    if (rc == 0 && r->in_reasoning && r->mode == REASONING_SHOW_DIM) rc = bytebuf_puts(answer, DIM_OFF);
    r->in_reasoning = 0;
    return rc;
}

int chat_reasoning_flush(ChatReasoning *r, ByteBuf *out) { return chat_reasoning_split_flush(r, out, out); }

void chat_reasoning_free(ChatReasoning *r) { bytebuf_free(&r->hold); }

int chat_text_opens_reasoning(const char *text, size_t len) {
    while (len > 0 && (text[len - 1] == ' ' || text[len - 1] == '\n' || text[len - 1] == '\t' || text[len - 1] == '\r'))
        len--;
    for (size_t i = len; i >= 7; i--)
        if (!memcmp(text + i - 7, THINK_OPEN, 7)) return 1;
        else if (i >= 8 && !memcmp(text + i - 8, THINK_CLOSE, 8)) return 0;
    return 0;
}
