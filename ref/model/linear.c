/**
 * @file linear.c
 * @brief The one matrix product of the reference (docs/model.md §8.2–8.5).
 *
 * Dequant mode, y[t][o] = Σ_i x[t][i]·W[o][i] in the order linear.h states (16 lanes, then a
 * tree; FP8: per 128-column block, times the block's scale, blocks in ascending order). The
 * model never exists in FP32 as a whole. Two kernels compute exactly that sum:
 *
 *   - decode (T < 4 tokens): one weight row at a time, each element decoded from its stored
 *     type inside the dot product (row_dot; FP8: fp8_rows_dot, eight 128-value blocks at a time
 *     in vector registers, through the hardware's half-precision conversion where there is
 *     one); no row is copied, so the weights stream from memory once, sequentially, which is
 *     the whole cost of a decode step;
 *   - prefill (T ≥ 4): LINEAR_PANEL_ROWS rows are decoded once into an FP32 panel (raw e4m3
 *     values for FP8) that stays in cache, and every tile of 4 tokens × 4 rows (2 without
 *     AVX-512) of the chunk runs over it with its lane sums in vector registers (tile_lanes):
 *     each weight is read from memory once per chunk and each load feeds 4 multiply-adds.
 *
 * W8A8 mode (the official `act_quant` + `fp8_gemm`, docs/model.md §8.3–8.4):
 *     s_x[t][b]  = max(amax(x[t][128b : 128b+128]), 1e-4) / 448
 *     xq[t][k]   = e4m3(x[t][k] / s_x[t][k/128])
 *     y[t][o]    = Σ_b ( Σ_{k in block b} xq[t][k] · wq[o][k] ) · s_x[t][b] · s_w[o/128][b]
 * The inner block sum is exact (products of two e4m3 values have ≤ 8 significant bits and
 * span < 2^36; 128 of them fit a double's 53 bits), which is what tensor cores compute before
 * the FP32 "promotion"; the scaled partials are accumulated in FP32 in block order.
 *
 * Threads: the rows of W (decode) or its panels (prefill) are split over the threads of
 * threads_set(); every output is computed by one thread in the one order, so results do not
 * depend on the number of threads.
 */
#include "linear.h"

#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "base/threads.h"
#include "fp8.h"

enum {
    LANES = 16, /* partial sums of one output (linear.h) */
    TILE_T = 4, /* tokens of a prefill tile (and the fewest tokens that take the blocked kernel) */
    FP8_RUN_ROWS = 16, /* FP8 rows per call of the decode kernel (≤ 16 KiB of codes at K = 1024) */
};

/** Below this many multiply-adds a product runs on one thread: waking the others costs more. */
#define PARALLEL_MIN_WORK (1 << 16)

int linear_scratch_threads(void) {
    int n = threads_get(), online = threads_online();
    return n > online ? n : online;
}

size_t linear_scratch_floats(int64_t T, int64_t max_in) {
    int64_t blocks = (max_in + FP8_BLOCK - 1) / FP8_BLOCK;
    return (size_t)((int64_t)linear_scratch_threads() * LINEAR_PANEL_ROWS * max_in + T * max_in + T * blocks);
}

LinearScratch linear_scratch_init(float *buf, int64_t T, int64_t max_in) {
    LinearScratch s;
    s.threads = linear_scratch_threads();
    s.row = buf;
    s.xq = s.row + (size_t)s.threads * LINEAR_PANEL_ROWS * (size_t)max_in;
    s.x_scale = s.xq + (size_t)T * (size_t)max_in;
    s.max_in = max_in;
    s.max_T = T;
    s.scale_ue8m0 = 0;
    s.hook = NULL;
    return s;
}

float *linear_scratch_panel(const LinearScratch *s, int tid) {
    DSV3_ASSERT(tid >= 0 && tid < s->threads);
    return s->row + (size_t)tid * LINEAR_PANEL_ROWS * (size_t)s->max_in;
}

int linear_threads(const LinearScratch *s, int64_t work) {
    DSV3_ASSERT(!threads_in_parallel()); /* the per-thread scratch is indexed by the thread number of one team */
    int n = threads_get();
    if (n > s->threads) n = s->threads;
    return work < PARALLEL_MIN_WORK ? 1 : n;
}

/* ------------------------------------------------------------------------------------- */
/* the sum of one output                                                                   */

/** The lanes' tree of linear.h: l += l+8, l += l+4, l += l+2, then 0 + 1. */
static inline float lanes_sum(float *p) {
    for (int l = 0; l < 8; l++) p[l] += p[l + 8];
    for (int l = 0; l < 4; l++) p[l] += p[l + 4];
    for (int l = 0; l < 2; l++) p[l] += p[l + 2];
    return p[0] + p[1];
}

/** Element i of stored data of type @p dt (the scalar tails of the loops below). */
static inline float elem(const uint8_t *w, int64_t i, DType dt) {
    switch (dt) {
    case DT_F32: return elem_f32(w, i);
    case DT_BF16: return elem_bf16(w, i);
    default: return elem_f16(w, i);
    }
}

/**
 * p[i mod 16] += x[i]·w[i] for i in [0, n), ascending, w stored as @p dt (F32, BF16 or F16).
 * One loop per type, so each is a plain loop over 16 lanes that the compiler vectorizes with the
 * decode inside it (for BF16 a zero-extension and a shift per element).
 */
static inline void dot_lanes(float *restrict p, const float *restrict x, const uint8_t *restrict w, int64_t n, DType dt) {
    int64_t m = n - n % LANES;
    switch (dt) {
    case DT_F32:
        for (int64_t i = 0; i < m; i += LANES)
            for (int l = 0; l < LANES; l++) p[l] += x[i + l] * elem_f32(w, i + l);
        break;
    case DT_BF16:
        for (int64_t i = 0; i < m; i += LANES)
            for (int l = 0; l < LANES; l++) p[l] += x[i + l] * elem_bf16(w, i + l);
        break;
    default:
        DSV3_ASSERT(dt == DT_F16); /* FP8 goes through its own kernel (fp8_rows_dot) */
        for (int64_t i = 0; i < m; i += LANES)
            for (int l = 0; l < LANES; l++) p[l] += x[i + l] * elem_f16(w, i + l);
        break;
    }
    for (int64_t i = m; i < n; i++) p[i - m] += x[i] * elem(w, i, dt);
}

float dot_f32(const float *a, const float *b, int64_t n) {
    float p[LANES] = { 0 };
    dot_lanes(p, a, (const uint8_t *)b, n, DT_F32);
    return lanes_sum(p);
}

/** The 16 lanes of one output's sum as one value (GCC/Clang vector extension): one AVX-512
 *  register, or two AVX / four SSE registers, whichever the target has; lane l is lane l
 *  everywhere, so the target changes nothing in the result. */
typedef float f32x16 __attribute__((vector_size(4 * LANES)));
/** Half of an f32x16, for the tree of the lane sums. */
typedef float f32x8 __attribute__((vector_size(32)));

/**
 * lanes_sum of 8 outputs at once, in vectors: the same tree — l += l+8, l += l+4, l += l+2,
 * 0 + 1 — with the lanes of one, two, four, then eight outputs side by side, so that each step is
 * one vector add (and the shuffles that line the lanes up). out[j] = the sum of v[j].
 */
static inline __attribute__((always_inline)) void tree_of_eight(float out[8], const f32x16 *v) {
    f32x8 s[8], q[4], r[2], o;
    for (int j = 0; j < 8; j++)
        s[j] = __builtin_shufflevector(v[j], v[j], 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(v[j], v[j], 8, 9, 10, 11, 12, 13, 14, 15);
    for (int j = 0; j < 4; j++)
        q[j] = __builtin_shufflevector(s[2 * j], s[2 * j + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
               __builtin_shufflevector(s[2 * j], s[2 * j + 1], 4, 5, 6, 7, 12, 13, 14, 15);
    for (int j = 0; j < 2; j++)
        r[j] = __builtin_shufflevector(q[2 * j], q[2 * j + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
               __builtin_shufflevector(q[2 * j], q[2 * j + 1], 2, 3, 6, 7, 10, 11, 14, 15);
    o = __builtin_shufflevector(r[0], r[1], 0, 2, 4, 6, 8, 10, 12, 14) + __builtin_shufflevector(r[0], r[1], 1, 3, 5, 7, 9, 11, 13, 15);
    memcpy(out, &o, sizeof o);
}

/** Stored bytes of row @p o of W. */
static const uint8_t *row_data(const Tensor *W, int64_t o) {
    return W->data + (size_t)o * (size_t)W->cols * (size_t)tensor_elem_bytes(W->dtype);
}

/**
 * The plain FP8 decode: Σ_i x[i]·W[o][i] in linear.h's order — each 128-wide block's codes
 * decoded into a 512-byte buffer that stays in L1, dotted in 16 lanes, the lanes' tree times
 * the block's scale, added in block order. fp8_rows_dot() must equal it bit for bit; it is the
 * path for rows that hold a NaN code or whose length is not a multiple of 128, and for
 * activations outside fp8_x_scalable().
 */
static float row_dot_fp8_plain(const Tensor *W, int64_t o, const float *restrict x) {
    int64_t K = W->cols;
    const uint8_t *w = row_data(W, o);
    float acc = 0.0f, wf[FP8_BLOCK];
    for (int64_t k0 = 0; k0 < K; k0 += FP8_BLOCK) {
        int64_t n = K - k0 < FP8_BLOCK ? K - k0 : FP8_BLOCK;
        for (int64_t i = 0; i < n; i++) wf[i] = elem_e4m3(w + k0, i);
        float p[LANES] = { 0 };
        dot_lanes(p, x + k0, (const uint8_t *)wf, n, DT_F32);
        acc += lanes_sum(p) * tensor_scale(W, o, k0);
    }
    return acc;
}

/**
 * Whether any of the @p n codes (a multiple of 8) is e4m3fn's NaN, S.1111.111. Eight codes at a
 * time in a 64-bit word: with the signs cleared, adding 1 to each byte carries into its top bit
 * only from 0x7f (and never into the next byte), so the OR of those top bits over the row is the
 * answer — a plain loop of AND, ADD, OR that vectorizes.
 */
static int e4m3_any_nan(const uint8_t *c, int64_t n) {
    uint64_t any = 0;
    for (int64_t i = 0; i < n; i += 8) {
        uint64_t v;
        memcpy(&v, c + i, sizeof v);
        any |= (v & 0x7f7f7f7f7f7f7f7fu) + 0x0101010101010101u;
    }
    return (any & 0x8080808080808080u) != 0;
}

/**
 * *f = the FP32 values of 16 e4m3 codes (none NaN) times 2^−8, exactly (a power of two; the
 * smallest magnitude, 2^−17, is far from FP32's subnormals).
 *
 * With AVX-512 the hardware's half-precision conversion does it: the code sign-extended to 16
 * bits and shifted left by 7, bit 14 cleared, is the IEEE half S.0EEEE.MMM0000000 =
 * 2^(E−15)·(1 + M/8), or M·2^−17 for E = 0 — the e4m3 value times 2^−8 — which vcvtph2ps widens
 * with no subnormal FP32 operand on the way. The plain version is fp8_e4m3_decode()'s arithmetic
 * on a vector: a code sign-extended to 32 bits and shifted left by 20 holds S in bits 31..27 and
 * EEEE.MMM in bits 26..20; clearing bits 30..27 leaves the sign and the word fp8_e4m3_decode()
 * scales by 2^120 (here 2^112: times 2^−8). Its subnormal FP32 words cost a microcode assist each
 * (a random row, 1 code in 16 subnormal, ran 1.5× slower that way). tests/test_threads.c
 * (fp8_decode_exact) checks every code; PORTABLE=1 builds the plain version.
 */
static inline __attribute__((always_inline)) void e4m3x16_2m8(f32x16 *f, const uint8_t *c) {
#ifdef __AVX512F__
    __m256i h = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)c));
    h = _mm256_and_si256(_mm256_slli_epi16(h, 7), _mm256_set1_epi16((short)0xbfff));
    *f = (f32x16)_mm512_cvtph_ps(h);
#else
    for (int l = 0; l < LANES; l++) {
        uint32_t v = ((uint32_t)(int32_t)(int8_t)c[l] << 20) & 0x87f00000u;
        float g;
        memcpy(&g, &v, sizeof g);
        (*f)[l] = g * 0x1p112f;
    }
#endif
}

/**
 * Whether every x[i] is 0 or has 2^−100 ≤ |x[i]| ≤ 2^100 (no NaN, no ∞). For such x the products
 * x·(w·2^−8) with e4m3 values w (2^−9 ≤ |w| ≤ 448 or 0) stay among FP32's normal numbers or
 * zero, where a power-of-two scale commutes with every rounding: Σ x·(w·2^−8), times 2^8, equals
 * Σ x·w bit for bit (sums that land among the subnormals are exact either way).
 */
static int fp8_x_scalable(const float *x, int64_t n) {
    int ok = 1;
    for (int64_t i = 0; i < n; i++) {
        float a = x[i] < 0 ? -x[i] : x[i];
        ok &= a == 0.0f || (a >= 0x1p-100f && a <= 0x1p100f);
    }
    return ok;
}

/**
 * p[b] lane l += x_b[i]·(e4m3(c[128b + i])·2^−8) for i ≡ l (mod 16), ascending i < 128,
 * b < nb ≤ 8, where x_b = x[0] + 128b if @p one_row, else x[b]: the 16-lane sums of nb blocks,
 * 2^−8 times row_dot_fp8_plain's. The blocks advance side by side, 16 columns at a time, so that
 * nb independent additions are in flight rather than one block's chain of 8. Inlined with
 * constant nb and one_row, the registers p[] never leave the core.
 */
static inline __attribute__((always_inline)) void fp8_blocks_lanes(f32x16 p[8], const float *const x[8], int one_row,
                                                                   const uint8_t *restrict c, int nb) {
    for (int i = 0; i < FP8_BLOCK; i += LANES)
#pragma GCC unroll 8
        for (int b = 0; b < nb; b++) {
            f32x16 xv, wv;
            memcpy(&xv, (one_row ? x[0] + b * FP8_BLOCK : x[b]) + i, sizeof xv);
            e4m3x16_2m8(&wv, c + b * FP8_BLOCK + i);
            p[b] += xv * wv;
        }
}

/**
 * The FP8 decode kernel: y[o − r0] = row_dot_fp8_plain(W, o, x) for the rows [r0, r1) (at most
 * FP8_RUN_ROWS), bit for bit, with the decode inside the dot (@p x_ok: fp8_x_scalable(x,
 * W->cols), which the caller checks once for all the runs of rows). The rows' blocks lie one
 * after another in memory and are taken eight at a time — eight of one row when the row has a
 * multiple of eight, else whichever rows they belong to (a row of K = 256 is two blocks, and
 * per-row work would otherwise dominate): each block's 16 lanes are one vector register that
 * starts from 0 and adds its products in ascending column order, the eight registers go through
 * the lanes' tree together (tree_of_eight), and each partial, times 2^8 and its scale, is added
 * to its row's sum in block order — row_dot_fp8_plain's operations in its order, on weights
 * scaled by 2^−8 (fp8_x_scalable says why the bits agree), without the trip through memory and
 * with one tree per eight blocks. Eight blocks with a NaN code among them send the whole run to
 * row_dot_fp8_plain (checked on codes already in L1, just before their dot: no second trip to
 * memory).
 */
static void fp8_rows_dot(float *y, const Tensor *W, int64_t r0, int64_t r1, const float *restrict x, int x_ok) {
    int64_t K = W->cols, kb = K / FP8_BLOCK, cb = tensor_col_blocks(W), n = (r1 - r0) * kb;
    const uint8_t *w = row_data(W, r0);
    float acc[FP8_RUN_ROWS] = { 0 };
    DSV3_ASSERT(r1 - r0 <= FP8_RUN_ROWS);
    if (K % FP8_BLOCK || !x_ok) goto plain;
    for (int64_t j0 = 0; j0 < n; j0 += 8) { /* block j: row r0 + j / kb, column block j % kb */
        int nb = n - j0 < 8 ? (int)(n - j0) : 8;
        const uint8_t *c = w + j0 * FP8_BLOCK;
        if (e4m3_any_nan(c, nb * FP8_BLOCK)) goto plain;
        f32x16 p[8] = { { 0 } };
        const float *xb[8];
        float part[8];
        if (kb % 8 == 0) { /* eight blocks of one row: their scales are consecutive */
            int64_t o = r0 + j0 / kb, k0 = j0 % kb;
            xb[0] = x + k0 * FP8_BLOCK;
            fp8_blocks_lanes(p, xb, 1, c, 8);
            tree_of_eight(part, p);
            f32x8 v, sc;
            memcpy(&v, part, sizeof v);
            memcpy(&sc, W->scale_inv + 4 * (size_t)((o / 128) * cb + k0), sizeof sc); /* 8 × st_load_f32 */
            v = v * 0x1p8f * sc;
            for (int b = 0; b < 8; b++) acc[o - r0] += v[b];
            continue;
        }
        for (int b = 0; b < 8; b++) xb[b] = x + ((j0 + (b < nb ? b : 0)) % kb) * FP8_BLOCK;
        if (nb == 8) fp8_blocks_lanes(p, xb, 0, c, 8);
        else fp8_blocks_lanes(p, xb, 0, c, nb);
        tree_of_eight(part, p);
        for (int b = 0; b < nb; b++) {
            int64_t o = r0 + (j0 + b) / kb, k = (j0 + b) % kb;
            acc[o - r0] += part[b] * 0x1p8f * st_load_f32(W->scale_inv + 4 * (size_t)((o / 128) * cb + k));
        }
    }
    memcpy(y, acc, sizeof(float) * (size_t)(r1 - r0));
    return;
plain:
    for (int64_t r = r0; r < r1; r++) y[r - r0] = row_dot_fp8_plain(W, r, x);
}

/** The decode kernel for F32, BF16 and F16: Σ_i x[i]·W[o][i] in linear.h's order, W's row
 *  decoded inside the dot (FP8 takes fp8_rows_dot). */
static float row_dot(const Tensor *W, int64_t o, const float *restrict x) {
    DSV3_ASSERT(W->dtype != DT_F8_E4M3);
    float p[LANES] = { 0 };
    dot_lanes(p, x, row_data(W, o), W->cols, W->dtype);
    return lanes_sum(p);
}

/** row_dot with W's row dequantized first (FP8: each element e4m3 · scale rounded to FP32) and
 *  summed as one FP32 row — linear_rows' arithmetic. */
static float row_dot_dequantized(const Tensor *W, int64_t o, const float *restrict x) {
    if (W->dtype != DT_F8_E4M3) return row_dot(W, o, x);
    int64_t K = W->cols;
    const uint8_t *w = row_data(W, o);
    float p[LANES] = { 0 }, wf[FP8_BLOCK];
    for (int64_t k0 = 0; k0 < K; k0 += FP8_BLOCK) { /* lanes run on across blocks: their starts are multiples of 16 */
        int64_t n = K - k0 < FP8_BLOCK ? K - k0 : FP8_BLOCK;
        float s = tensor_scale(W, o, k0);
        for (int64_t i = 0; i < n; i++) wf[i] = elem_e4m3(w + k0, i) * s;
        dot_lanes(p, x + k0, (const uint8_t *)wf, n, DT_F32);
    }
    return lanes_sum(p);
}

/* ------------------------------------------------------------------------------------- */
/* the prefill kernel                                                                      */

/* Weight rows per tile: as many accumulators as the target's vector registers hold — 4 tokens × 4
 * rows with AVX-512's 32 registers, 4 × 2 otherwise. */
#ifdef __AVX512F__
enum { TILE_O = 4 };
#else
enum { TILE_O = 2 };
#endif

/**
 * The tile of the blocked kernel: acc[t][o] lane l = Σ_{i ≡ l (mod 16), k0 ≤ i < k0 + n} x[t][i]·w[o][i] for
 * t < tm ≤ 4 tokens and o < tn ≤ TILE_O decoded rows — dot_lanes' sums, bit for bit: each lane
 * adds its products in ascending i from 0, the columns past the last multiple of 16 included
 * (lanes 0.. again). The tile's accumulators stay in registers while the loop runs, and each
 * load feeds tn or tm multiply-adds. Inlined with constant tm, tn (tile_sums()).
 */
static inline __attribute__((always_inline)) void tile_lanes(f32x16 acc[TILE_T][TILE_O], const float *const *x,
                                                             const float *const *w, int64_t k0, int64_t n, int tm, int tn) {
    int64_t m = k0 + (n - n % LANES);
    n += k0;
    for (int64_t i = k0; i < m; i += LANES) {
        f32x16 wv[TILE_O];
        for (int o = 0; o < TILE_O && o < tn; o++) memcpy(&wv[o], w[o] + i, sizeof wv[o]); /* memcpy: no alignment needed */
        for (int t = 0; t < TILE_T && t < tm; t++) {
            f32x16 xv;
            memcpy(&xv, x[t] + i, sizeof xv);
            for (int o = 0; o < TILE_O && o < tn; o++) acc[t][o] += xv * wv[o];
        }
    }
    for (int t = 0; t < TILE_T && t < tm; t++)
        for (int o = 0; o < TILE_O && o < tn; o++)
            for (int64_t i = m; i < n; i++) acc[t][o][i - m] += x[t][i] * w[o][i];
}

/**
 * The tile with a constant shape, then its sums into sums[t][o] (unused entries left alone): the
 * lanes' tree over all n columns, or for FP8 (@p scales: the F32 scale_inv entries of the tile's
 * 128-row block row) the tree over each 128-column block times its scale, accumulated in block
 * order from 0 — row_dot's arithmetic.
 */
static inline __attribute__((always_inline)) void tile_shape(float sums[TILE_T][TILE_O], const float *const *x,
                                                             const float *const *w, int64_t n, int tm, int tn,
                                                             const uint8_t *scales) {
    enum { OUTS = TILE_T * TILE_O };
    float res[OUTS] = { 0 };
    int64_t block = scales ? FP8_BLOCK : n;
    for (int64_t k0 = 0; k0 < n; k0 += block) {
        f32x16 acc[TILE_T][TILE_O];
        for (int t = 0; t < TILE_T; t++)
            for (int o = 0; o < TILE_O; o++) acc[t][o] = (f32x16){ 0 }; /* every lane's sum starts from 0 */
        tile_lanes(acc, x, w, k0, n - k0 < block ? n - k0 : block, tm, tn);
        float out[OUTS];
        for (int j = 0; j < OUTS; j += 8) tree_of_eight(out + j, &acc[0][0] + j);
        if (!scales) memcpy(res, out, sizeof res);
        else {
            float sb = st_load_f32(scales + 4 * (k0 / FP8_BLOCK));
            for (int j = 0; j < OUTS; j++) res[j] += out[j] * sb;
        }
    }
    for (int t = 0; t < tm; t++)
        for (int o = 0; o < tn; o++) sums[t][o] = res[t * TILE_O + o];
}

/** sums[t][o] = Σ_{i < n} x[t][i]·w[o][i] in linear.h's order, for a tile of tm × tn (FP8: with
 *  the block row's @p scales, else NULL). */
static void tile_sums(float sums[TILE_T][TILE_O], const float *const *x, const float *const *w, int64_t n, int tm, int tn,
                      const uint8_t *scales) {
    if (tn == TILE_O) {
        switch (tm) {
        case 4: tile_shape(sums, x, w, n, 4, TILE_O, scales); return;
        case 3: tile_shape(sums, x, w, n, 3, TILE_O, scales); return;
        case 2: tile_shape(sums, x, w, n, 2, TILE_O, scales); return;
        default: tile_shape(sums, x, w, n, 1, TILE_O, scales); return;
        }
    }
    tile_shape(sums, x, w, n, tm, tn, scales); /* a panel's last rows: loops with variable bounds */
}

/** y[t·ldy + o] = sums[t][o]; a full row of the tile as one fixed-size copy (a loop of variable
 *  length would become a slow string instruction). */
static void store_sums(float *y, int64_t ldy, float sums[TILE_T][TILE_O], int tm, int tn) {
    for (int t = 0; t < tm; t++) {
        if (tn == TILE_O) memcpy(y + t * ldy, sums[t], sizeof sums[t]);
        else
            for (int o = 0; o < tn; o++) y[t * ldy + o] = sums[t][o];
    }
}

/** Rows [r0, r1) of W (at most LINEAR_PANEL_ROWS) decoded once into @p panel, applied to all T tokens. */
static void rows_panel(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t T, const Tensor *W, int64_t r0, int64_t r1,
                       float *panel, int dequant_rows) {
    int64_t K = W->cols, rows = r1 - r0;
    int fp8 = W->dtype == DT_F8_E4M3 && !dequant_rows;
    DSV3_ASSERT(rows <= LINEAR_PANEL_ROWS);
    /* FP8 block scales: the panel's rows share one 128-row block row (panels start at multiples of 16) */
    DSV3_ASSERT(!fp8 || r0 / 128 == (r1 - 1) / 128);
    const uint8_t *scales = fp8 ? W->scale_inv + 4 * (size_t)((r0 / 128) * tensor_col_blocks(W)) : NULL;
    for (int64_t r = 0; r < rows; r++) tensor_row(W, r0 + r, 0, K, !fp8, panel + r * K); /* FP8: raw e4m3 values */
    /* While this panel computes, have the memory system bring the next one's stored rows into L2
     * (a share of its cache lines per token tile): its decode then reads from cache instead of
     * waiting on DRAM at every panel's start. */
    int64_t next_rows = W->rows - r1 < rows ? W->rows - r1 : rows, tiles = (T + TILE_T - 1) / TILE_T;
    const char *next = next_rows > 0 ? (const char *)row_data(W, r1) : NULL;
    int64_t next_bytes = next_rows > 0 ? next_rows * K * tensor_elem_bytes(W->dtype) : 0, share = (next_bytes / 64 + tiles) / tiles * 64;
    float sums[TILE_T][TILE_O];
    for (int64_t t0 = 0; t0 < T; t0 += TILE_T) {
        int tm = T - t0 < TILE_T ? (int)(T - t0) : TILE_T;
        for (int64_t b = t0 / TILE_T * share; b < next_bytes && b < (t0 / TILE_T + 1) * share; b += 64) __builtin_prefetch(next + b, 0, 2);
        for (int64_t o0 = 0; o0 < rows; o0 += TILE_O) {
            int tn = rows - o0 < TILE_O ? (int)(rows - o0) : TILE_O;
            const float *xt[TILE_T], *wo[TILE_O];
            for (int t = 0; t < tm; t++) xt[t] = x + (t0 + t) * ldx;
            for (int o = 0; o < tn; o++) wo[o] = panel + (o0 + o) * K;
            tile_sums(sums, xt, wo, K, tm, tn, scales);
            store_sums(y + t0 * ldy + o0, ldy, sums, tm, tn);
        }
    }
}

void linear_rows(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t T, const Tensor *W, int64_t r0, int64_t r1,
                 float *panel) {
    if (!panel || T < TILE_T) {
        for (int64_t o = r0; o < r1; o++)
            for (int64_t t = 0; t < T; t++) y[t * ldy + o - r0] = row_dot_dequantized(W, o, x + t * ldx);
        return;
    }
    for (int64_t p0 = r0; p0 < r1; p0 += LINEAR_PANEL_ROWS) {
        int64_t p1 = p0 + LINEAR_PANEL_ROWS < r1 ? p0 + LINEAR_PANEL_ROWS : r1;
        rows_panel(y + (p0 - r0), ldy, x, ldx, T, W, p0, p1, panel, 1);
    }
}

/** Dequant mode: decode (one row at a time) below 4 tokens, else the blocked kernel, over the threads. */
static void linear_dequant(float *y, const float *x, int64_t T, const Tensor *W, const LinearScratch *s) {
    int64_t out = W->rows, in = W->cols;
    int nt = linear_threads(s, out * in * T);
    if (T < TILE_T && W->dtype == DT_F8_E4M3) { /* runs of rows, so that short rows share the per-call work */
        int64_t runs = (out + FP8_RUN_ROWS - 1) / FP8_RUN_ROWS;
        int x_ok[TILE_T];
        for (int64_t t = 0; t < T; t++) x_ok[t] = fp8_x_scalable(x + t * in, in);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t r = 0; r < runs; r++) {
            int64_t r0 = r * FP8_RUN_ROWS, r1 = r0 + FP8_RUN_ROWS < out ? r0 + FP8_RUN_ROWS : out;
            for (int64_t t = 0; t < T; t++) fp8_rows_dot(y + t * out + r0, W, r0, r1, x + t * in, x_ok[t]);
        }
        return;
    }
    if (T < TILE_T) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t o = 0; o < out; o++)
            for (int64_t t = 0; t < T; t++) y[t * out + o] = row_dot(W, o, x + t * in);
        return;
    }
    int64_t panels = (out + LINEAR_PANEL_ROWS - 1) / LINEAR_PANEL_ROWS;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t p = 0; p < panels; p++) {
        int64_t r0 = p * LINEAR_PANEL_ROWS, r1 = r0 + LINEAR_PANEL_ROWS < out ? r0 + LINEAR_PANEL_ROWS : out;
        rows_panel(y + r0, out, x, in, T, W, r0, r1, linear_scratch_panel(s, threads_id()), 0);
    }
}

/**
 * Σ a[i]·b[i] over one ≤128-wide block of e4m3 values, exactly: each product of two e4m3
 * values has ≤ 8 significant bits and lies in [2^-18, 2^17.6], so every partial sum of 128 of
 * them is a multiple of 2^-24 below 2^25 — exact in a double whatever the order, which lets
 * the four accumulators below vectorize.
 */
static double dot_exact_e4m3(const float *a, const float *b, int64_t n) {
    double acc[4] = { 0, 0, 0, 0 };
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) acc[j] += (double)a[i + j] * (double)b[i + j];
    for (; i < n; i++) acc[0] += (double)a[i] * (double)b[i];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

/** W8A8 mode: quantize activations per 128 channels, exact block partials, FP32 accumulation. */
static void linear_w8a8(float *y, const float *x, int64_t T, const Tensor *W, const LinearScratch *s) {
    int64_t out = W->rows, in = W->cols, blocks = tensor_col_blocks(W);
    for (int64_t t = 0; t < T; t++) fp8_quantize_row(s->xq + t * in, s->x_scale + t * blocks, x + t * in, in, s->scale_ue8m0);
    int nt = linear_threads(s, out * in * T);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t o = 0; o < out; o++) {
        float *wq = linear_scratch_panel(s, threads_id());
        tensor_row(W, o, 0, in, 0, wq); /* raw e4m3 values, no scale */
        for (int64_t t = 0; t < T; t++) {
            const float *xq = s->xq + t * in;
            float acc = 0.0f;
            for (int64_t b = 0; b < blocks; b++) {
                int64_t k0 = b * FP8_BLOCK, n = in - k0 < FP8_BLOCK ? in - k0 : FP8_BLOCK;
                float partial = (float)dot_exact_e4m3(xq + k0, wq + k0, n);
                acc += partial * s->x_scale[t * blocks + b] * tensor_scale(W, o, k0);
            }
            y[t * out + o] = acc;
        }
    }
}

void linear_forward(float *y, const float *x, int64_t T, const Tensor *W, Fp8Mode mode, const LinearScratch *s) {
    if (mode == FP8_TRAIN) {
        DSV3_ASSERT(s->hook);
        s->hook->forward(s->hook, y, x, T, W);
        return;
    }
    DSV3_ASSERT(W->cols <= s->max_in);
    if (mode == FP8_W8A8 && W->dtype == DT_F8_E4M3) {
        DSV3_ASSERT(T <= s->max_T);
        linear_w8a8(y, x, T, W, s);
    }
    else linear_dequant(y, x, T, W, s);
}

/*
 * Backward GEMMs. Both products are one register-tiled kernel: a 4 × 32 block of the result is
 * accumulated in vector registers over the whole inner dimension, in ascending order from 0,
 * then added to memory once. Compared with the textbook axpy form (one store per multiply-add),
 * this reads each operand 4 or 32 times less and stores once per tile. Each tile's sums run in a
 * fixed order, so results do not depend on the number of threads (and the edge tiles, done with
 * scalars, add in the same order).
 */
enum { TILE_A = 4, TILE_B = 32 };

/**
 * C[a][b] += Σ_k A[a·as + k·ks] · B[k·ldb + b] for a < na ≤ 4, b < nb ≤ 32, the sum over
 * k = 0 .. K−1 in ascending order from 0, then added to C.
 */
static void tile_accumulate(float *C, int64_t ldc, const float *A, int64_t as, int64_t ks, const float *B, int64_t ldb,
                            int64_t K, int64_t na, int64_t nb) {
    if (na == TILE_A && nb == TILE_B) {
        f32x16 acc[TILE_A][2];
        memset(acc, 0, sizeof acc);
        for (int64_t k = 0; k < K; k++) {
            f32x16 b0, b1;
            memcpy(&b0, B + k * ldb, sizeof b0);
            memcpy(&b1, B + k * ldb + 16, sizeof b1);
            for (int a = 0; a < TILE_A; a++) {
                float g = A[a * as + k * ks];
                acc[a][0] += g * b0;
                acc[a][1] += g * b1;
            }
        }
        for (int a = 0; a < TILE_A; a++)
            for (int b = 0; b < TILE_B; b++) C[a * ldc + b] += acc[a][b / 16][b % 16];
        return;
    }
    float acc[TILE_A][TILE_B] = { { 0 } };
    for (int64_t k = 0; k < K; k++)
        for (int64_t a = 0; a < na; a++)
            for (int64_t b = 0; b < nb; b++) acc[a][b] += A[a * as + k * ks] * B[k * ldb + b];
    for (int64_t a = 0; a < na; a++)
        for (int64_t b = 0; b < nb; b++) C[a * ldc + b] += acc[a][b];
}

void linear_accumulate(float *C, int64_t ldc, const float *A, int64_t lda, const float *B, int64_t ldb, int64_t T, int64_t K,
                       int64_t N) {
    for (int64_t t0 = 0; t0 < T; t0 += TILE_A)
        for (int64_t n0 = 0; n0 < N; n0 += TILE_B)
            tile_accumulate(C + t0 * ldc + n0, ldc, A + t0 * lda, lda, 1, B + n0, ldb, K, T - t0 < TILE_A ? T - t0 : TILE_A,
                            N - n0 < TILE_B ? N - n0 : TILE_B);
}

/** dx[t][i] += Σ_o dy[t][o] · W[o][i]  (inner dimension: out). */
static void backward_dx(float *dx, const float *dy, const float *w, int64_t T, int64_t out, int64_t in) {
#pragma omp parallel for schedule(static)
    for (int64_t t0 = 0; t0 < T; t0 += TILE_A) {
        int64_t nt = T - t0 < TILE_A ? T - t0 : TILE_A;
        for (int64_t i0 = 0; i0 < in; i0 += TILE_B)
            tile_accumulate(dx + t0 * in + i0, in, dy + t0 * out, out, 1, w + i0, in, out, nt, in - i0 < TILE_B ? in - i0 : TILE_B);
    }
}

/** dW[o][i] += Σ_t dy[t][o] · x[t][i]  (inner dimension: T). */
static void backward_dw(float *dW, const float *dy, const float *x, int64_t T, int64_t out, int64_t in) {
#pragma omp parallel for schedule(static)
    for (int64_t o0 = 0; o0 < out; o0 += TILE_A) {
        int64_t no = out - o0 < TILE_A ? out - o0 : TILE_A;
        for (int64_t i0 = 0; i0 < in; i0 += TILE_B)
            tile_accumulate(dW + o0 * in + i0, in, dy + o0, 1, out, x + i0, in, T, no, in - i0 < TILE_B ? in - i0 : TILE_B);
    }
}

void linear_backward(float *dx, float *dW, const float *dy, const float *x, int64_t T, const Tensor *W, Fp8Mode mode,
                     const LinearScratch *s) {
    DSV3_ASSERT(W->dtype == DT_F32);
    if (mode == FP8_TRAIN) {
        DSV3_ASSERT(s && s->hook);
        s->hook->backward(s->hook, dx, dW, dy, x, T, W);
        return;
    }
    const float *w = (const float *)(const void *)W->data;
    if (dx) backward_dx(dx, dy, w, T, W->rows, W->cols);
    if (dW) backward_dw(dW, dy, x, T, W->rows, W->cols);
}
