/**
 * @file util_model.c
 * @brief util_model.h: random weights and a local MoE reference for the tests.
 */
#include "util_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "model/fp8.h"
#include "model/moe.h"

Tensor random_weight(DType dt, int64_t rows, int64_t cols, uint8_t **buf, float **scales, Rng *r) {
    int64_t n = rows * cols, gr = (rows + 127) / 128, gc = (cols + 127) / 128;
    *buf = malloc((size_t)n * 4);
    *scales = NULL;
    if (!*buf) return (Tensor){ 0 };
    for (int64_t i = 0; i < n; i++) {
        float v = 0.1f * rng_normal(r);
        if (dt == DT_F32) memcpy(*buf + 4 * i, &v, 4);
        else if (dt == DT_BF16) {
            uint16_t h = f32_to_bf16(v);
            memcpy(*buf + 2 * i, &h, 2);
        } else if (dt == DT_F16) {
            uint16_t h = (uint16_t)(rng_u32(r) & 0xffff);
            if ((h & 0x7c00) == 0x7c00) h &= 0xbfff; /* finite */
            memcpy(*buf + 2 * i, &h, 2);
        } else {
            uint8_t c = fp8_e4m3_from_f32(300.0f * v);
            (*buf)[i] = c;
        }
    }
    if (dt == DT_F8_E4M3) {
        *scales = malloc(sizeof(float) * (size_t)(gr * gc));
        if (!*scales) return (Tensor){ 0 };
        for (int64_t i = 0; i < gr * gc; i++) (*scales)[i] = 1e-3f * (1.0f + 0.5f * rng_normal(r));
    }
    Tensor t = { *buf, dt, rows, cols, (const uint8_t *)*scales };
    return t;
}

float *moe_reference(const Model *m, int layer, int64_t T, uint64_t seed, float **x) {
    int64_t D = m->config.hidden_size;
    float *ref = malloc(sizeof(float) * (size_t)(T * D));
    *x = malloc(sizeof(float) * (size_t)(T * D));
    Rng rng;
    rng_seed(&rng, seed);
    for (int64_t i = 0; i < T * D; i++) (*x)[i] = rng_normal(&rng);
    RunState s;
    Err err;
    if (runstate_init(&s, m, T, T, ATTN_ABSORB, FP8_DEQUANT, &err)) {
        fprintf(stderr, "moe_reference: %s\n", err.msg);
        free(ref);
        return NULL;
    }
    moe_forward(ref, *x, T, &m->w.layers[layer], &s.acts.moe, &s.ctx);
    runstate_free(&s);
    return ref;
}
