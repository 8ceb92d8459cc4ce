/**
 * @file tensor.h
 * @brief A 2-D weight as stored in the checkpoint (F32, BF16, F16, or F8_E4M3 with 128×128
 *        block scales), read row by row into FP32 on the fly.
 *
 * This is how the reference keeps its promise of never holding an FP32 copy of the model:
 * a Tensor points into the mapped file, and every consumer decodes one row at a time
 * into a small scratch buffer (docs/model.md §8.2: W = e4m3(Wq) · scale_inv[i/128][j/128]).
 */
#ifndef DSV3_TENSOR_H
#define DSV3_TENSOR_H

#include <stdint.h>

#include <string.h>

#include "base/safetensors.h"
#include "base/util.h"
#include "fp8.h"

/** A [rows][cols] row-major weight; 1-D tensors have rows = 1. */
typedef struct {
    const uint8_t *data;       /**< stored elements, possibly unaligned (mapping) */
    DType dtype;               /**< DT_F32, DT_BF16, DT_F16 or DT_F8_E4M3 */
    int64_t rows;              /**< output features (1 for a vector) */
    int64_t cols;              /**< input features (the vector length) */
    const uint8_t *scale_inv;  /**< F8_E4M3 only: F32 [ceil(rows/128)][ceil(cols/128)], else NULL */
} Tensor;

/** Builds a Tensor over FP32 memory the caller owns (training parameters, tests). */
Tensor tensor_f32(const float *data, int64_t rows, int64_t cols);

/**
 * The writable FP32 elements behind @p t (NULL if it has none). Training binds gradients into a
 * ::Weights struct with the same tensor table as the parameters, so a gradient arrives as a
 * Tensor whose data is declared const for the forward's sake; the memory is the trainer's own.
 * This (and f32_mut) is the one place where that const is dropped. @p t must be DT_F32.
 */
float *tensor_f32_mut(const Tensor *t);

/** The writable form of a gradient vector bound like a norm weight (see tensor_f32_mut). */
static inline float *f32_mut(const float *v) { return (float *)(uintptr_t)v; }

/** Bytes of one stored element of a weight dtype (F32 4, BF16/F16 2, F8_E4M3 1). */
static inline int64_t tensor_elem_bytes(DType dt) { return dt == DT_F32 ? 4 : dt == DT_F8_E4M3 ? 1 : 2; }

/** Number of 128-wide column blocks: ceil(cols/128). */
static inline int64_t tensor_col_blocks(const Tensor *t) { return (t->cols + 127) / 128; }

/*
 * Element i of stored data @p p as FP32, one function per stored type. They are plain expressions
 * (memcpy for the possibly unaligned mapping, shifts and one exact multiply, no table and no
 * branch), so a loop over a row vectorizes; linear.c fuses them into its dot products, tensor_row
 * into its decode loops. All are exact.
 */
/** F32 element. */
static inline float elem_f32(const uint8_t *p, int64_t i) { return st_load_f32(p + 4 * i); }
/** BF16 element: the top half of an FP32 word. */
static inline float elem_bf16(const uint8_t *p, int64_t i) { return bf16_to_f32(st_load_u16(p + 2 * i)); }
/** F16 element (IEEE half): the bits S.EEEEE.M×10 shifted into an FP32 word give 2^(E−127)·(1 + M/1024)
 *  (or M·2^−133 when E = 0); × 2^112 rebiases to 2^(E−15); E = 31 is ±∞ or NaN. Equals f16_to_f32. */
static inline float elem_f16(const uint8_t *p, int64_t i) {
    uint32_t h = st_load_u16(p + 2 * i), bits = (h & 0x7fff) << 13;
    float f;
    memcpy(&f, &bits, 4);
    f *= 0x1p112f;
    memcpy(&bits, &f, 4);
    if ((h & 0x7c00) == 0x7c00) bits = 0x7f800000u | (h & 0x3ff) << 13; /* ±∞, NaN keeps its payload */
    bits |= (h & 0x8000) << 16;
    memcpy(&f, &bits, 4);
    return f;
}
/** F8_E4M3 element, unscaled: the raw e4m3 value (fp8_e4m3_decode). */
static inline float elem_e4m3(const uint8_t *p, int64_t i) { return fp8_e4m3_decode(p[i]); }

/**
 * Decodes row @p r, columns [c0, c1), into @p out (c1-c0 floats). With @p apply_scale = 0
 * an FP8 row comes back as raw e4m3 values (what the W8A8 GEMM multiplies); otherwise fully
 * dequantized.
 */
void tensor_row(const Tensor *t, int64_t r, int64_t c0, int64_t c1, int apply_scale, float *restrict out);

/** Block scale of element (r, c) of an FP8 tensor (1.0 for other dtypes). */
float tensor_scale(const Tensor *t, int64_t r, int64_t c);

/** Bytes of stored data, scales included. */
uint64_t tensor_bytes(const Tensor *t);

#endif /* DSV3_TENSOR_H */
