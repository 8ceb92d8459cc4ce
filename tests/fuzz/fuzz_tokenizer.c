/**
 * @file fuzz_tokenizer.c
 * @brief libFuzzer target for tokenizer.json: any file must load into a tokenizer or fail with a
 *        message. A tokenizer that loads must encode and decode without crashing, and decode must
 *        produce valid UTF-8 (invalid bytes become U+FFFD). `make fuzz`.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* The file alone (no tokenizer_config.json beside it: fuzz_tokenizer_config covers that one). */
    const char *path = fuzz_put("tokenizer.json", data, size);
    Tokenizer *t;
    Err err;
    if (tokenizer_load(&t, path, &err) != 0) return 0;
    static const char text[] = "Hello, world! 123 \xe4\xbd\xa0\xe5\xa5\xbd <\xef\xbd\x9c" "User\xef\xbd\x9c> \n\n  x";
    int *ids = NULL, n = 0;
    if (tokenizer_encode(t, text, sizeof text - 1, &ids, &n, &err) == 0) {
        for (int i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= tokenizer_vocab_size(t)) __builtin_trap();
        char *out;
        size_t len;
        if (tokenizer_decode(t, ids, n, &out, &len, &err) == 0) {
            if (!utf8_valid(out, len)) __builtin_trap();
            free(out);
        }
    }
    free(ids);
    /* Every id of a small vocabulary decodes alone, or fails with a message. */
    int V = tokenizer_vocab_size(t);
    for (int id = 0; id < V && id < 512; id++) {
        char *out;
        size_t len;
        if (tokenizer_decode(t, &id, 1, &out, &len, &err) == 0) {
            if (!utf8_valid(out, len)) __builtin_trap();
            free(out);
        }
    }
    tokenizer_free(t);
    return 0;
}
