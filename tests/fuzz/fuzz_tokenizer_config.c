/**
 * @file fuzz_tokenizer_config.c
 * @brief libFuzzer target for tokenizer_config.json, read beside a fixed valid tokenizer.json
 *        ($DSV3_FUZZ_TOKENIZER, default models/kjv/tokenizer.json): any config must load or fail
 *        with a message; the BOS/EOS ids it names must be ids of the tokenizer. `make fuzz`.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *src = getenv("DSV3_FUZZ_TOKENIZER");
    fuzz_copy(src && *src ? src : "models/kjv/tokenizer.json", "tokenizer.json");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_put("tokenizer_config.json", data, size);
    Tokenizer *t;
    Err err;
    if (tokenizer_load(&t, fuzz_scratch(), &err) != 0) return 0;
    int V = tokenizer_vocab_size(t), bos = tokenizer_bos_id(t), eos = tokenizer_eos_id(t);
    if (bos < -1 || bos >= V || eos < -1 || eos >= V) __builtin_trap();
    const char *tpl = tokenizer_chat_template(t);
    if (tpl && strlen(tpl) > size) __builtin_trap(); /* it came from the input */
    tokenizer_free(t);
    return 0;
}
