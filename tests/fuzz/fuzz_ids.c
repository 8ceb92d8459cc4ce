/**
 * @file fuzz_ids.c
 * @brief libFuzzer target for id lists (`logits --ids`, `detokenize --ids/--file`): any text must
 *        parse into ids in range or fail with a message, and the ids printed back as "a,b,c"
 *        must parse to the same list. `make fuzz`.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int *ids;
    size_t n;
    Err err;
    long max_id = size ? (long)data[0] * 997 : 1000; /* the vocabulary bound varies with the input */
    if (parse_id_text((const char *)data, size, max_id, &ids, &n, &err) != 0) return 0;
    char *text = malloc(12 * n + 1);
    if (!text) abort();
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= max_id) __builtin_trap();
        len += (size_t)sprintf(text + len, i ? ",%d" : "%d", ids[i]);
    }
    text[len] = 0;
    int *again;
    size_t m;
    if (n > 0) {
        int k;
        if (parse_id_list(text, max_id, &again, &k, &err) != 0 || (size_t)k != n || memcmp(again, ids, n * sizeof *ids))
            __builtin_trap();
        free(again);
    }
    if (parse_id_text(text, len, max_id, &again, &m, &err) != 0 || m != n) __builtin_trap();
    free(again);
    free(text);
    free(ids);
    return 0;
}
