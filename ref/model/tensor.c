/**
 * @file tensor.c
 * @brief Row decoding of stored weights (docs/model.md §8.2):
 *
 *     F32, BF16, F16:  W[r][c] = the stored value, widened to FP32
 *     F8_E4M3:         W[r][c] = e4m3(Wq[r][c]) · scale_inv[r/128][c/128]      (integer division)
 *
 * with scale_inv the F32 grid [ceil(rows/128)][ceil(cols/128)], row-major, so a partial last block
 * (rows 512..575 of kv_a_proj_with_mqa) has its own scale row. Without the scale (apply_scale = 0)
 * an F8 row decodes to its raw e4m3 values, what the W8A8 product multiplies. Values are read with
 * memcpy loads because the mapping promises no alignment (docs/formats.md §1.1).
 */
#include "tensor.h"


Tensor tensor_f32(const float *data, int64_t rows, int64_t cols) {
    Tensor t = { (const uint8_t *)data, DT_F32, rows, cols, NULL };
    return t;
}

float *tensor_f32_mut(const Tensor *t) {
    if (!t->data) return NULL;
    DSV3_ASSERT(t->dtype == DT_F32);
    return (float *)(uintptr_t)t->data;
}

float tensor_scale(const Tensor *t, int64_t r, int64_t c) {
    if (t->dtype != DT_F8_E4M3) return 1.0f;
    return st_load_f32(t->scale_inv + 4 * ((r / 128) * tensor_col_blocks(t) + c / 128));
}

void tensor_row(const Tensor *t, int64_t r, int64_t c0, int64_t c1, int apply_scale, float *restrict out) {
    int64_t n = c1 - c0, base = r * t->cols + c0;
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case DT_F32:
        for (int64_t j = 0; j < n; j++) out[j] = elem_f32(p, base + j);
        break;
    case DT_BF16:
        for (int64_t j = 0; j < n; j++) out[j] = elem_bf16(p, base + j);
        break;
    case DT_F16:
        for (int64_t j = 0; j < n; j++) out[j] = elem_f16(p, base + j);
        break;
    case DT_F8_E4M3:
        if (!apply_scale) {
            for (int64_t j = 0; j < n; j++) out[j] = elem_e4m3(p, base + j);
            break;
        }
        /* One scale per 128-column block of this row's 128-row block. */
        for (int64_t j = 0; j < n;) {
            int64_t c = c0 + j, block_end = (c / 128 + 1) * 128 - c0;
            if (block_end > n) block_end = n;
            float s = tensor_scale(t, r, c);
            for (; j < block_end; j++) out[j] = elem_e4m3(p, base + j) * s;
        }
        break;
    default:
        DSV3_ASSERT(!"tensor_row: dtype not validated at load");
    }
}

uint64_t tensor_bytes(const Tensor *t) {
    uint64_t n = (uint64_t)t->rows * (uint64_t)t->cols * (uint64_t)(dtype_bits(t->dtype) / 8);
    if (t->dtype == DT_F8_E4M3) n += 4 * (uint64_t)((t->rows + 127) / 128) * (uint64_t)tensor_col_blocks(t);
    return n;
}
