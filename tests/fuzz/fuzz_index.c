/**
 * @file fuzz_index.c
 * @brief libFuzzer target for model.safetensors.index.json: any index, read beside two fixed
 *        valid shards, must open into a checkpoint whose every tensor lies inside its mapped
 *        shard, or fail with a message (a shard name must not escape the directory). `make fuzz`.
 */
#include <stdint.h>
#include <string.h>

#include "base/safetensors.h"
#include "fuzz_util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    static const float a[4] = { 1, 2, 3, 4 }, b[2] = { 5, 6 }, c[3] = { 7, 8, 9 };
    StEntry one[2] = { { "model.a", DT_F32, 2, { 2, 2 }, a }, { "model.b", DT_F32, 1, { 2 }, b } };
    StEntry two[1] = { { "model.c", DT_F32, 1, { 3 }, c } };
    char p[4200];
    Err err;
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", fuzz_scratch());
    if (st_write(p, one, 2, NULL, &err)) abort();
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", fuzz_scratch());
    if (st_write(p, two, 1, NULL, &err)) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_put("model.safetensors.index.json", data, size);
    SafeTensors st;
    Err err;
    if (st_open(&st, path, NULL, &err) != 0) return 0;
    for (int i = 0; i < st.n_tensors; i++) {
        const StTensor *t = &st.tensors[i];
        const StFile *f = &st.files[t->shard];
        if (t->data < f->map || t->data + t->nbytes > f->map + f->size) __builtin_trap();
        if (!strstr(f->path, fuzz_scratch())) __builtin_trap(); /* never a shard outside the directory */
    }
    st_close(&st);
    return 0;
}
