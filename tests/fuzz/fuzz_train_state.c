/**
 * @file fuzz_train_state.c
 * @brief libFuzzer target for the training checkpoint sidecar (optimizer.safetensors: moments,
 *        masters and the run state in its metadata), read with a fixed config.json and
 *        model.safetensors from $DSV3_FUZZ_CKPT (a small checkpoint `make fuzz` trains). Any
 *        sidecar must give the options and then restore a trainer, or fail with a message.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "train/train.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *dir = getenv("DSV3_FUZZ_CKPT");
    if (!dir || !*dir) {
        fprintf(stderr, "fuzz_train_state: set DSV3_FUZZ_CKPT to a training checkpoint directory (make fuzz does)\n");
        abort();
    }
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", dir);
    fuzz_copy(p, "config.json");
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    fuzz_copy(p, "model.safetensors");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_put("optimizer.safetensors", data, size);
    Config c;
    TrainOptions opt;
    Err err;
    if (train_read_checkpoint_options(fuzz_scratch(), &c, &opt, &err) != 0) return 0;
    /* Restore only what fits a fuzzing budget: the shape is the fixed config's, the buffers scale with these. */
    if (opt.seq_len > 64 || opt.batch > 64 || opt.steps > (1 << 20)) return 0;
    Trainer tr;
    if (trainer_init(&tr, &c, &opt, &err) == 0) {
        /* a restored run state out of range must have been refused */
        if (trainer_load_state(&tr, fuzz_scratch(), &err) == 0 &&
            (tr.step < 0 || tr.tokens < 0 || tr.data.pos < 0 || tr.data.epoch < 0 || !(tr.rng.inc & 1)))
            __builtin_trap();
        trainer_free(&tr);
    }
    return 0;
}
