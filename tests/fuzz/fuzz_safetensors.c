/**
 * @file fuzz_safetensors.c
 * @brief libFuzzer target: any byte string given to st_parse_buffer must either validate
 *        (and then every tensor lies inside the buffer) or fail with a message; never crash,
 *        leak or read out of bounds. Built and run by `make fuzz` (clang, ASan+UBSan).
 */
#include <stdint.h>
#include <string.h>

#include "base/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    SafeTensors st;
    Err err;
    memset(&st, 0, sizeof st);
    if (st_parse_buffer(&st, data, size, 0, "fuzz", &err) == 0) {
        for (int i = 0; i < st.n_tensors; i++) {
            const StTensor *t = &st.tensors[i];
            if (t->data < data || t->data + t->nbytes > data + size) __builtin_trap();
            volatile uint8_t sink = t->nbytes ? t->data[t->nbytes - 1] : 0;
            (void)sink;
        }
    }
    st_close(&st);
    return 0;
}
