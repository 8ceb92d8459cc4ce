/**
 * @file fuzz_config.c
 * @brief libFuzzer target for config_parse: arbitrary JSON text must parse into a validated
 *        Config or fail with a message, without crashing (`make fuzz`).
 */
#include <stdint.h>
#include <string.h>

#include "model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Config c;
    Err err;
    if (config_parse(&c, (const char *)data, size, "fuzz", &err) == 0) {
        /* A validated config keeps its invariants. */
        if (c.num_experts_per_tok > c.n_routed_experts || c.topk_group > c.n_group ||
            c.n_routed_experts % c.n_group)
            __builtin_trap();
    }
    return 0;
}
