/**
 * @file fuzz_chat.c
 * @brief libFuzzer target for chat messages JSON (`tokenize --chat`, `chat --load`): any input
 *        must parse into messages or fail with a message; parsed messages must render (valid
 *        roles, valid UTF-8 content without NUL bytes). `make fuzz`.
 */
#include <stdint.h>
#include <string.h>

#include "base/buf.h"
#include "tokenizer/chat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ChatLog log;
    Err err;
    if (chat_parse_json((const char *)data, size, &log, &err) != 0) return 0;
    ByteBuf out = { 0 };
    if (chat_render(log.msg, log.n, 1, "<bos>", &out, &err) != 0) __builtin_trap();
    size_t want = 5 + strlen(CHAT_ASSISTANT);
    for (int i = 0; i < log.n; i++) {
        if (!utf8_valid(log.msg[i].content, strlen(log.msg[i].content))) __builtin_trap();
        want += strlen(log.msg[i].content);
    }
    if (out.len < want) __builtin_trap(); /* every content is in the rendering */
    bytebuf_free(&out);
    chat_log_free(&log);
    return 0;
}
