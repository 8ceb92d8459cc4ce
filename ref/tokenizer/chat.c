/**
 * @file chat.c
 * @brief Implementation of chat.h: the DeepSeek-V3 chat template (docs/model.md §9.2).
 *
 * Checked against the Jinja chat_template in golden/tokenizer/deepseek-v3/tokenizer_config.json:
 * the system prompt is accumulated first (`ns.system_prompt`, joined by a blank line after the
 * first, `ns.is_first_sp`), then `{{bos_token}}{{ns.system_prompt}}`, then per message
 * `<｜User｜>` + content or `<｜Assistant｜>` + content + `<｜end▁of▁sentence｜>` (the
 * branch with `ns.is_tool` false, since tool messages are not accepted here), and finally
 * `<｜Assistant｜>` when add_generation_prompt. test_chat.c keeps a check that the shipped
 * template still contains these pieces.
 */
#include "chat.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static int role_ok(const char *role) {
    return !strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant");
}

static int bad_role(int i, const char *role, Err *err) {
    return err_set(err, "messages[%d]: unknown chat role '%.40s' (expected system, user or assistant)", i, role);
}

int chat_render(const ChatMessage *msgs, int n, int add_generation_prompt, const char *bos, ByteBuf *out,
                Err *err) {
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content) return err_set(err, "messages[%d]: missing role or content", i);
        else if (!role_ok(msgs[i].role)) return bad_role(i, msgs[i].role, err);
    int rc = bos ? bytebuf_puts(out, bos) : 0, first_system = 1;
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
        } else if (!strcmp(msgs[i].role, "assistant")) {
            rc = bytebuf_puts(out, CHAT_ASSISTANT);
            if (rc == 0) rc = bytebuf_puts(out, msgs[i].content);
            if (rc == 0) rc = bytebuf_puts(out, CHAT_END);
        }
    }
    if (rc == 0 && add_generation_prompt) rc = bytebuf_puts(out, CHAT_ASSISTANT);
    return rc ? err_set(err, "chat: out of memory") : 0;
}

/* The markers must be added tokens, or the rendered text would be tokenized as plain text. */
static int check_markers(const Tokenizer *t, Err *err) {
    static const char *const markers[] = {CHAT_USER, CHAT_ASSISTANT, CHAT_END};
    for (int i = 0; i < 3; i++)
        if (tokenizer_token_id(t, markers[i]) < 0)
            return err_set(err, "the tokenizer has no added token '%s', which the chat template needs", markers[i]);
    return 0;
}

int chat_encode(const Tokenizer *t, const ChatMessage *msgs, int n, int add_generation_prompt, int **ids,
                int *n_ids, Err *err) {
    *ids = NULL;
    *n_ids = 0;
    if (check_markers(t, err) != 0) return -1;
    const char *bos = tokenizer_id_to_token(t, tokenizer_bos_id(t));
    if (!bos)
        return err_set(err, "the chat template needs a bos_token (from tokenizer_config.json next to tokenizer.json)");
    ByteBuf text = {0};
    int rc = chat_render(msgs, n, add_generation_prompt, bos, &text, err);
    if (rc == 0) rc = tokenizer_encode(t, text.data ? text.data : "", text.len, ids, n_ids, err);
    bytebuf_free(&text);
    return rc;
}

int chat_encode_user_turn(const Tokenizer *t, const char *content, int close_reply, int add_generation_prompt,
                          IntVec *out, Err *err) {
    if (check_markers(t, err) != 0) return -1;
    ByteBuf text = {0};
    int rc = (close_reply && bytebuf_puts(&text, CHAT_END) != 0) || bytebuf_puts(&text, CHAT_USER) != 0 ||
             bytebuf_puts(&text, content) != 0 ||
             (add_generation_prompt && bytebuf_puts(&text, CHAT_ASSISTANT) != 0);
    if (rc) rc = err_set(err, "chat: out of memory");
    if (rc == 0) rc = tokenizer_encode_append(t, text.data, text.len, out, err);
    bytebuf_free(&text);
    return rc;
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
