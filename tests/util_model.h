/**
 * @file util_model.h
 * @brief Test helpers for the model's pieces: a random weight matrix in any stored type, and a
 *        MoE layer's output on random input computed locally (the reference an EP run must equal).
 */
#ifndef DSV3_TEST_UTIL_MODEL_H
#define DSV3_TEST_UTIL_MODEL_H

#include <stdint.h>

#include "base/rng.h"
#include "model/model.h"
#include "model/tensor.h"

/**
 * A random [rows][cols] weight stored as @p dt, drawn from @p r: F32/BF16 values 0.1·N(0,1), F16
 * random finite bit patterns, FP8 the e4m3 codes of 30·N(0,1) with a random F32 scale grid
 * 1e-3·(1 + 0.5·N(0,1)). The caller frees *buf (rows·cols·4 bytes) and *scales (NULL unless FP8);
 * out of memory, the tensor's data is NULL.
 */
Tensor random_weight(DType dt, int64_t rows, int64_t cols, uint8_t **buf, float **scales, Rng *r);

/**
 * *x = T × hidden random N(0,1) values (seeded by @p seed); returns layer @p layer's MoE output on
 * them computed on this thread with moe_forward (a RunState of its own). Both arrays are malloc'd
 * for the caller; NULL if the RunState cannot be made.
 */
float *moe_reference(const Model *m, int layer, int64_t T, uint64_t seed, float **x);

#endif
