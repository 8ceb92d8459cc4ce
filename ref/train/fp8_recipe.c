/**
 * @file fp8_recipe.c
 * @brief The FP8 training recipe (paper §3.3, Figs. 6–7; docs/model.md §8.6), emulated bit for bit.
 *
 * Fig. 6 of the paper, one linear layer y = x·Wᵀ (what each arrow carries, and in which format):
 *
 *                              master W (FP32)
 *                                    │ to FP8: 128×128 blocks, one scale each
 *                                    ▼
 *    x (BF16) ── to FP8 ──▶ ┌─────────────────┐
 *       1×128 tiles         │ Σ  Fprop  x·Wᵀ  │──▶ y (BF16)
 *                           └─────────────────┘
 *                                    │ W (FP8)
 *                                    ▼
 *   dy (BF16) ── to FP8 ──▶ ┌─────────────────┐
 *       1×128 tiles         │ Σ  Dgrad  dy·W  │──▶ dx (BF16)
 *                           └─────────────────┘
 *   dy (BF16) ── to FP8 ──▶ ┌─────────────────┐
 *       128×1 tiles         │ Σ  Wgrad  dyᵀ·x │──▶ dW (FP32) ──▶ AdamW: moments (BF16),
 *   x cached in FP8 ──────▶ └─────────────────┘                 master W (FP32) updated
 *       (1×128 → 128×1)
 *
 * Every Σ is a tensor-core GEMM whose accumulator keeps ~14 mantissa bits; every N_C = 128
 * products the partial sum is promoted into an FP32 register on the CUDA cores (Fig. 7b), where
 * the scales are applied. Here, with q = the stored FP8 value and s its tile's scale:
 *
 *   quantize (every operand):  s = amax(tile) / max(format)            (power of two where marked)
 *                              q = round_format(x / s),  operand = q·s (FP32)
 *   Fprop   y[t][o]  = Σ_k  x̂[t][k]·Ŵ[o][k]        x̂: 1×128 tiles along k, Ŵ: 128×128 blocks
 *   Dgrad   dx[t][i] += Σ_o dŷ[t][o]·Ŵ[o][i]       dŷ: 1×128 tiles along o, the same Ŵ
 *   Wgrad   dW[o][i] += Σ_t dy̌[t][o]·x̌[t][i]       dy̌, x̌: 128×1 tiles along t (the tokens)
 *   each Σ: part = cut_m(part + a·b) over chunks of N_C products, acc32 += part after each chunk,
 *           cut_m = the FP32 sum with its mantissa truncated to m bits (fp8_emulated_gemm)
 * The scales are folded into the operands (q·s) rather than applied at promotion, so a chunk that
 * spans several tiles (N_C > 128, or no promotion at all) is still defined. With N_C = 128 on the
 * tile grid the two are equal for power-of-two scales; otherwise the cut drops different bits of a
 * differently scaled sum, at the same relative precision.
 *
 * x̌ is requantized from the FP8 cache of the forward (x itself is not kept), except where the
 * paper says otherwise (§3.3.3), which the roles below encode:
 *   o_proj (the linear after attention)  its input is cached in E5M6 with power-of-two scales;
 *   routed experts' gate/up_proj         their input is quantized with power-of-two scales (it is
 *                                        what the dispatch sends in FP8) and their outputs, the
 *                                        SwiGLU inputs, are rounded to E4M3 1×128 tiles: the
 *                                        cached copy that the SwiGLU backward reads;
 *   the MoE's down_proj                  its input (the SwiGLU output) is not cached but recomputed
 *                                        from those FP8 inputs — exactly the FP32 buffer the
 *                                        forward computed from them, so it is read from there;
 *   routed experts' down_proj            its output gradient is quantized with power-of-two scales
 *                                        (the combine's backward sends it in FP8), and Wgrad's
 *                                        128×1 operand is requantized from that FP8 copy.
 * The shared expert's SwiGLU is the MoE's too (rounded and recomputed); only the dispatched routed
 * experts take the power-of-two scales. What the paper keeps in BF16 (activations between ops,
 * GEMM outputs, the combine) stays FP32 here: the experiment isolates the FP8 recipe against FP32.
 *
 * Amax is computed online per tile (no delayed scaling); the clamp is 1e-30 instead of inference's
 * 1e-4 (docs/model.md §8.3), since gradients are routinely smaller than that. Weights are quantized
 * once per pass (fp8_recipe_begin_pass) and used by Fprop and Dgrad alike. The activation cache
 * stores real codes (uint8 E4M3, E5M6 as the FP16 bits that hold it exactly) and FP32 scales.
 */
#include "fp8_recipe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/fp8.h"

#pragma STDC FP_CONTRACT OFF /* a·b and part + a·b are rounded separately, as the rule says */

/* ------------------------------------------------------------------------------------- */
/* formats, scales, quantization                                                           */

/** Mantissa bits, smallest normal exponent and largest finite value of each format. */
static const struct {
    const char *name;
    int mbits, emin;
    float max;
} fmts[3] = {
    [FMT_E4M3] = { "e4m3", 3, -6, 448.0f },
    [FMT_E5M2] = { "e5m2", 2, -14, 57344.0f },
    [FMT_E5M6] = { "e5m6", 6, -14, 65024.0f }, /* 2^15 · (1 + 63/64) */
};

Fp8Options fp8_options_default(void) {
    Fp8Options o = { 14, 128, 0, FMT_E4M3 };
    return o;
}

int fp8_options_check(const Fp8Options *o, Err *err) {
    if (o->acc_bits < 1 || o->acc_bits > 23) return err_set(err, "fp8 accumulator bits = %d must be in [1, 23]", o->acc_bits);
    if (o->promote < 0) return err_set(err, "fp8 promotion interval = %d must not be negative", o->promote);
    if (o->per_tensor != 0 && o->per_tensor != 1) return err_set(err, "fp8 per_tensor = %d must be 0 or 1", o->per_tensor);
    if (o->grad_format != FMT_E4M3 && o->grad_format != FMT_E5M2)
        return err_set(err, "fp8 gradient format %d must be e4m3 or e5m2", (int)o->grad_format);
    return 0;
}

const char *fp8_format_name(Fp8Fmt f) { return (unsigned)f < 3 ? fmts[f].name : "?"; }

/** Round to nearest even with mbits mantissa bits, subnormals below 2^emin, saturating at max. */
static float round_generic(Fp8Fmt f, float x) {
    if (isnan(x) || x == 0.0f) return x;
    float a = fminf(fabsf(x), fmts[f].max);
    int e;
    (void)frexpf(a, &e); /* a = m·2^e, m in [0.5, 1): the leading bit is 2^(e−1) */
    int lead = e - 1 < fmts[f].emin ? fmts[f].emin : e - 1;
    float q = ldexpf(1.0f, lead - fmts[f].mbits); /* the format's spacing at a; a / q is exact */
    float r = nearbyintf(a / q) * q;
    return copysignf(fminf(r, fmts[f].max), x);
}

/**
 * fp8_e4m3_to_f32(fp8_e4m3_from_f32(x)) on the float's bits, without the table or libm, for the
 * GEMM operands (the cache's codes come from fp8.c itself): the same clamp to ±448 and ties-to-even
 * rounding to 3 mantissa bits, or to a multiple of 2^-9 below 2^-6. tests/test_fp8_recipe.c checks
 * the two agree on every exponent, rounding boundary and sign.
 */
static inline float e4m3_round(float x) {
    uint32_t u, a;
    memcpy(&u, &x, sizeof u);
    a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return x;         /* NaN */
    if (a > 0x43e00000u) a = 0x43e00000u;  /* saturate at 448 = 1.75·2^8 */
    if (a < 0x3c800000u) {                 /* below 2^-6: adding 2^14 rounds to the 2^-9 grid, ties to even */
        float f;
        memcpy(&f, &a, sizeof f);
        f = (f + 16384.0f) - 16384.0f;
        memcpy(&a, &f, sizeof a);
    } else {
        a += 0x7ffffu + ((a >> 20) & 1u); /* ties to even at the 3rd mantissa bit; a carry bumps the exponent */
        a &= 0xfff00000u;
    }
    u = (u & 0x80000000u) | a;
    memcpy(&x, &u, sizeof x);
    return x;
}

float fp8_round(Fp8Fmt f, float x) {
    if (f == FMT_E4M3) return fp8_e4m3_to_f32(fp8_e4m3_from_f32(x));
    return round_generic(f, x);
}

float fp8_round_e4m3_fast(float x) { return e4m3_round(x); }

float fp8_tile_scale(Fp8Fmt f, float amax, int pow2) {
    float s = fmaxf(amax, 1e-30f) / fmts[f].max;
    if (!pow2) return s;
    int e;
    float m = frexpf(s, &e);
    return m == 0.5f ? s : ldexpf(1.0f, e);
}

/** FP16 bits of @p v, a value that E5M6 (hence FP16) represents exactly. */
static uint16_t f16_bits_exact(float v) {
    uint16_t sign = signbit(v) ? 0x8000 : 0;
    float a = fabsf(v);
    if (a == 0.0f) return sign;
    if (isnan(a)) return 0x7e00;
    int e;
    (void)frexpf(a, &e);
    if (e - 1 < -14) return (uint16_t)(sign | (uint16_t)ldexpf(a, 24)); /* subnormal: a = man · 2^-24 */
    return (uint16_t)(sign | (uint16_t)((e - 1 + 15) << 10) | (uint16_t)(ldexpf(a, 11 - e) - 1024.0f));
}

/** Quantizes tiles (see fp8_quantize_tiles); also writes the codes when @p c8 (E4M3) or @p c16 (E5M6) is given. */
static void quantize_impl(float *out, uint8_t *c8, uint16_t *c16, float *scales, const float *x, int64_t R, int64_t C,
                          int64_t tr, int64_t tc, Fp8Fmt f, int pow2) {
    int64_t nbc = (C + tc - 1) / tc;
#pragma omp parallel for collapse(2) schedule(static) /* tiles are independent */
    for (int64_t r0 = 0; r0 < R; r0 += tr) {
        for (int64_t c0 = 0; c0 < C; c0 += tc) {
            int64_t r1 = R - r0 < tr ? R : r0 + tr;
            int64_t c1 = C - c0 < tc ? C : c0 + tc;
            float amax = 0.0f;
            for (int64_t i = r0; i < r1; i++)
                for (int64_t j = c0; j < c1; j++) {
                    float v = fabsf(x[i * C + j]);
                    amax = v > amax ? v : amax; /* NaN never wins, as with fmaxf */
                }
            float s = fp8_tile_scale(f, amax, pow2);
            if (scales) scales[(r0 / tr) * nbc + c0 / tc] = s;
            for (int64_t i = r0; i < r1; i++)
                for (int64_t j = c0; j < c1; j++) {
                    float v = x[i * C + j] / s, q;
                    if (f == FMT_E4M3 && c8) {
                        uint8_t code = fp8_e4m3_from_f32(v);
                        q = fp8_e4m3_to_f32(code);
                        c8[i * C + j] = code;
                    } else if (f == FMT_E4M3) {
                        q = e4m3_round(v);
                    } else {
                        q = round_generic(f, v);
                        if (c16) c16[i * C + j] = f16_bits_exact(q);
                    }
                    if (out) out[i * C + j] = q * s;
                }
        }
    }
}

void fp8_quantize_tiles(float *out, float *scales, const float *x, int64_t R, int64_t C, int64_t tr, int64_t tc, Fp8Fmt f,
                        int pow2) {
    quantize_impl(out, NULL, NULL, scales, x, R, C, tr, tc, f, pow2);
}

/* ------------------------------------------------------------------------------------- */
/* the limited-precision GEMM                                                              */

/** Keeps the sign, the exponent and the top acc_bits mantissa bits of v's FP32 encoding. */
static inline float cut(float v, uint32_t mask) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    u &= mask;
    memcpy(&v, &u, sizeof v);
    return v;
}

static uint32_t acc_mask(int acc_bits) { return acc_bits >= 23 ? 0xffffffffu : ~((1u << (23 - acc_bits)) - 1u); }

float fp8_acc_round(float v, int acc_bits) { return cut(v, acc_mask(acc_bits)); }

/*
 * Register tiles of EA rows × EB columns, as in ref/model/linear.c's backward: the EB columns of a
 * row of Bt are contiguous, so the inner loop vectorizes over j while every C[i][j] still runs its
 * own k in order (the rule is per element; tiling only changes which elements run together).
 */
enum { EA = 4, EB = 8 };

void fp8_emulated_gemm(float *C, const float *A, const float *Bt, int64_t M, int64_t K, int64_t N, int acc_bits, int promote,
                       int accumulate) {
    uint32_t mask = acc_mask(acc_bits);
    int64_t chunk = promote > 0 ? promote : (K > 0 ? K : 1);
#pragma omp parallel for schedule(static)
    for (int64_t i0 = 0; i0 < M; i0 += EA) {
        int64_t ni = M - i0 < EA ? M - i0 : EA;
        for (int64_t j0 = 0; j0 < N; j0 += EB) {
            int64_t nj = N - j0 < EB ? N - j0 : EB;
            float acc[EA][EB] = { { 0 } }, part[EA][EB];
            for (int64_t k0 = 0; k0 < K; k0 += chunk) {
                int64_t k1 = K - k0 < chunk ? K : k0 + chunk;
                memset(part, 0, sizeof part);
                if (ni == EA && nj == EB) {
                    for (int64_t k = k0; k < k1; k++) {
                        const float *b = Bt + k * N + j0;
                        for (int a = 0; a < EA; a++) {
                            float av = A[(i0 + a) * K + k];
                            for (int j = 0; j < EB; j++) part[a][j] = cut(part[a][j] + av * b[j], mask);
                        }
                    }
                } else {
                    for (int64_t k = k0; k < k1; k++)
                        for (int64_t a = 0; a < ni; a++)
                            for (int64_t j = 0; j < nj; j++)
                                part[a][j] = cut(part[a][j] + A[(i0 + a) * K + k] * Bt[k * N + j0 + j], mask);
                }
                for (int a = 0; a < EA; a++)
                    for (int j = 0; j < EB; j++) acc[a][j] += part[a][j]; /* promotion into FP32 */
            }
            for (int64_t a = 0; a < ni; a++) {
                float *c = C + (i0 + a) * N + j0;
                for (int64_t j = 0; j < nj; j++) c[j] = accumulate ? c[j] + acc[a][j] : acc[a][j];
            }
        }
    }
}

/* ------------------------------------------------------------------------------------- */
/* the recipe                                                                              */

/** A weight the recipe knows: its role, and its quantized form for the current pass. */
typedef struct {
    const Tensor *t; /**< key: the Tensor the linears pass */
    int flags;       /**< FP8_ROLE_* */
    int layer;       /**< decoder layer for the statistics (−1: none) */
    float *w;        /**< [rows][cols] dequantized FP8 weight (Dgrad's Bt) */
    float *wt;       /**< [cols][rows] its transpose (Fprop's Bt) */
    int64_t gen;     /**< pass the two were computed in */
} RecipeTensor;

/** An activation cached by a forward for the backward: codes and tile scales in the pool. */
typedef struct {
    const float *x;       /**< key: the FP32 buffer the linear received */
    int64_t rows, cols;   /**< its shape */
    Fp8Fmt fmt;           /**< FMT_E4M3 (uint8 codes) or FMT_E5M6 (uint16 FP16 bits) */
    int pow2;             /**< power-of-two scales */
    size_t codes, scales; /**< byte offsets into the pool */
} CacheEntry;

struct Fp8Recipe {
    LinearHook hook;       /* first: the hook's address is the recipe's */
    Fp8Options opt;
    int64_t max_T, max_dim;
    int n_layers;
    RecipeTensor *tensors; /* sorted by t when sorted is set */
    int n_tensors, cap_tensors, sorted;
    int64_t gen;
    CacheEntry *entries;
    int n_entries, cap_entries;
    uint8_t *pool;
    size_t pool_used, pool_cap;
    float *a, *b, *c;      /* operand scratch, max_T · max_dim floats each */
    Fp8CacheBytes *bytes;  /* [n_layers] of the current sequence */
};

static int cmp_tensor(const void *pa, const void *pb) {
    uintptr_t a = (uintptr_t)((const RecipeTensor *)pa)->t, b = (uintptr_t)((const RecipeTensor *)pb)->t;
    return a < b ? -1 : a > b;
}

static RecipeTensor *find_tensor(Fp8Recipe *r, const Tensor *W) {
    if (!r->sorted) {
        qsort(r->tensors, (size_t)r->n_tensors, sizeof *r->tensors, cmp_tensor);
        r->sorted = 1;
    }
    RecipeTensor key = { W, 0, 0, NULL, NULL, 0 };
    return bsearch(&key, r->tensors, (size_t)r->n_tensors, sizeof *r->tensors, cmp_tensor);
}

/** Tiles of a GEMM operand with scales along its columns (1×128) or along its rows (128×1). */
static void tiles(const Fp8Recipe *r, int64_t R, int64_t C, int along_rows, int64_t *tr, int64_t *tc) {
    if (r->opt.per_tensor) *tr = R > 0 ? R : 1, *tc = C > 0 ? C : 1;
    else if (along_rows) *tr = FP8_BLOCK, *tc = 1;
    else *tr = 1, *tc = FP8_BLOCK;
}

static void account(Fp8Recipe *r, int layer, size_t fp8, size_t fp32) {
    if (layer < 0 || layer >= r->n_layers) return;
    r->bytes[layer].fp8 += fp8;
    r->bytes[layer].fp32 += fp32;
}

/** The format and scale kind of the cached input of a tensor with @p flags. */
static void cache_format(int flags, Fp8Fmt *fmt, int *pow2) {
    *fmt = flags & FP8_ROLE_ATTN_OUT ? FMT_E5M6 : FMT_E4M3;
    *pow2 = (flags & (FP8_ROLE_ATTN_OUT | FP8_ROLE_X_POW2)) != 0;
}

static const CacheEntry *find_entry(const Fp8Recipe *r, const float *x, int64_t rows, int64_t cols, Fp8Fmt fmt, int pow2) {
    for (int i = r->n_entries - 1; i >= 0; i--) {
        const CacheEntry *e = &r->entries[i];
        if (e->x == x && e->rows == rows && e->cols == cols && e->fmt == fmt && e->pow2 == pow2) return e;
    }
    return NULL;
}

/** Reserves @p n bytes (8-aligned) in the pool; the offset, or (size_t)−1 when out of memory. */
static size_t pool_take(Fp8Recipe *r, size_t n) {
    size_t off = (r->pool_used + 7) & ~(size_t)7;
    if (off + n > r->pool_cap) {
        size_t cap = r->pool_cap ? r->pool_cap : 1 << 20;
        while (cap < off + n) cap *= 2;
        uint8_t *p = realloc(r->pool, cap);
        if (!p) return (size_t)-1;
        r->pool = p, r->pool_cap = cap;
    }
    r->pool_used = off + n;
    return off;
}

/** The cached FP8 copy of activation x [rows][cols] for tensor @p t, made now unless this sequence has it already. */
static const CacheEntry *cache_put(Fp8Recipe *r, const RecipeTensor *t, const float *x, int64_t rows, int64_t cols) {
    Fp8Fmt fmt;
    int pow2;
    cache_format(t->flags, &fmt, &pow2);
    const CacheEntry *old = find_entry(r, x, rows, cols, fmt, pow2);
    if (old) return old;
    if (r->n_entries == r->cap_entries) {
        int cap = r->cap_entries ? 2 * r->cap_entries : 256;
        CacheEntry *e = realloc(r->entries, (size_t)cap * sizeof *e);
        DSV3_ASSERT(e);
        r->entries = e, r->cap_entries = cap;
    }
    int64_t tr, tc;
    tiles(r, rows, cols, 0, &tr, &tc);
    size_t n = (size_t)(rows * cols), code_bytes = fmt == FMT_E5M6 ? 2 : 1;
    size_t n_scales = (size_t)(((rows + tr - 1) / tr) * ((cols + tc - 1) / tc));
    size_t codes = pool_take(r, n * code_bytes), scales = pool_take(r, n_scales * sizeof(float));
    DSV3_ASSERT(codes != (size_t)-1 && scales != (size_t)-1); /* like xcalloc: training cannot go on without it */
    uint8_t *c8 = fmt == FMT_E4M3 ? r->pool + codes : NULL;
    uint16_t *c16 = fmt == FMT_E5M6 ? (uint16_t *)(void *)(r->pool + codes) : NULL;
    quantize_impl(NULL, c8, c16, (float *)(void *)(r->pool + scales), x, rows, cols, tr, tc, fmt, pow2);
    CacheEntry *e = &r->entries[r->n_entries++];
    *e = (CacheEntry){ x, rows, cols, fmt, pow2, codes, scales };
    account(r, t->layer, n * code_bytes + n_scales * sizeof(float), n * sizeof(float));
    return e;
}

/** out [rows][cols] = the dequantized values of a cache entry (code value · tile scale). */
static void cache_decode(const Fp8Recipe *r, const CacheEntry *e, float *out) {
    int64_t tr, tc;
    tiles(r, e->rows, e->cols, 0, &tr, &tc);
    int64_t nbc = (e->cols + tc - 1) / tc;
    const float *scales = (const float *)(const void *)(r->pool + e->scales);
    const uint8_t *c8 = r->pool + e->codes;
    const uint16_t *c16 = (const uint16_t *)(const void *)(r->pool + e->codes);
    for (int64_t i = 0; i < e->rows; i++)
        for (int64_t j = 0; j < e->cols; j++) {
            float s = scales[(i / tr) * nbc + j / tc];
            float q = e->fmt == FMT_E4M3 ? fp8_e4m3_to_f32(c8[i * e->cols + j]) : f16_to_f32(c16[i * e->cols + j]);
            out[i * e->cols + j] = q * s;
        }
}

static void transpose(float *dst, const float *src, int64_t R, int64_t C) {
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) dst[j * R + i] = src[i * C + j];
}

/** The FP8 weight of this pass: 128×128 blocks (or one scale), into t->w and its transpose t->wt. */
static void weight_operands(Fp8Recipe *r, RecipeTensor *t) {
    if (t->gen == r->gen) return;
    int64_t R = t->t->rows, C = t->t->cols, tr = FP8_BLOCK, tc = FP8_BLOCK;
    if (r->opt.per_tensor) tr = R, tc = C;
    fp8_quantize_tiles(t->w, NULL, (const float *)(const void *)t->t->data, R, C, tr, tc, FMT_E4M3, 0);
    transpose(t->wt, t->w, R, C);
    t->gen = r->gen;
}

static void recipe_forward(LinearHook *h, float *y, const float *x, int64_t T, const Tensor *W) {
    Fp8Recipe *r = (Fp8Recipe *)(void *)h;
    RecipeTensor *t = find_tensor(r, W);
    DSV3_ASSERT(t && T <= r->max_T);
    const Fp8Options *o = &r->opt;
    int64_t N = W->rows, K = W->cols, tr, tc;
    weight_operands(r, t);
    tiles(r, T, K, 0, &tr, &tc);
    if (t->flags & (FP8_ROLE_ATTN_OUT | FP8_ROLE_X_RECOMPUTED)) {
        /* The GEMM operand is E4M3; the backward gets an E5M6 copy, or recomputes x. */
        fp8_quantize_tiles(r->a, NULL, x, T, K, tr, tc, FMT_E4M3, 0);
        if (t->flags & FP8_ROLE_ATTN_OUT) cache_put(r, t, x, T, K);
        else account(r, t->layer, 0, (size_t)(T * K) * sizeof(float));
    } else {
        cache_decode(r, cache_put(r, t, x, T, K), r->a); /* the cached FP8 copy is the operand */
    }
    fp8_emulated_gemm(y, r->a, t->wt, T, K, N, o->acc_bits, o->promote, 0);
    if (t->flags & FP8_ROLE_Y_FP8) {
        tiles(r, T, N, 0, &tr, &tc);
        fp8_quantize_tiles(y, NULL, y, T, N, tr, tc, FMT_E4M3, 0);
        size_t n_scales = (size_t)(((T + tr - 1) / tr) * ((N + tc - 1) / tc));
        account(r, t->layer, (size_t)(T * N) + n_scales * sizeof(float), (size_t)(T * N) * sizeof(float));
    }
}

static void recipe_backward(LinearHook *h, float *dx, float *dW, const float *dy, const float *x, int64_t T,
                            const Tensor *W) {
    Fp8Recipe *r = (Fp8Recipe *)(void *)h;
    RecipeTensor *t = find_tensor(r, W);
    DSV3_ASSERT(t && t->gen == r->gen && T <= r->max_T); /* the forward of this pass quantized W */
    const Fp8Options *o = &r->opt;
    int64_t N = W->rows, K = W->cols, tr, tc;
    int dy_pow2 = (t->flags & FP8_ROLE_DY_POW2) != 0;
    /* Dgrad: dy in 1×128 tiles along its N outputs, against the forward's W blocks. */
    tiles(r, T, N, 0, &tr, &tc);
    fp8_quantize_tiles(r->a, NULL, dy, T, N, tr, tc, o->grad_format, dy_pow2);
    if (dx) fp8_emulated_gemm(dx, r->a, t->w, T, N, K, o->acc_bits, o->promote, 1);
    if (!dW) return;
    /* Wgrad: the sum runs over the T tokens, so both operands take 128×1 tiles along T. The
     * FP8-communicated gradient is re-tiled from its FP8 copy, any other from dy itself. */
    tiles(r, T, N, 1, &tr, &tc);
    fp8_quantize_tiles(r->b, NULL, dy_pow2 ? r->a : dy, T, N, tr, tc, o->grad_format, dy_pow2);
    transpose(r->c, r->b, T, N);
    const float *xs = x;
    Fp8Fmt fmt;
    int pow2;
    cache_format(t->flags, &fmt, &pow2);
    if (!(t->flags & FP8_ROLE_X_RECOMPUTED)) {
        const CacheEntry *e = find_entry(r, x, T, K, fmt, pow2);
        DSV3_ASSERT(e); /* cached by this sequence's forward */
        cache_decode(r, e, r->b);
        xs = r->b;
    }
    tiles(r, T, K, 1, &tr, &tc);
    fp8_quantize_tiles(r->b, NULL, xs, T, K, tr, tc, FMT_E4M3, pow2);
    fp8_emulated_gemm(dW, r->c, r->b, N, T, K, o->acc_bits, o->promote, 1);
}

Fp8Recipe *fp8_recipe_new(const Fp8Options *o, int64_t max_T, int n_layers, Err *err) {
    if (fp8_options_check(o, err)) return NULL;
    if (max_T < 1 || n_layers < 0) {
        err_set(err, "fp8 recipe: max_T = %lld and n_layers = %d must be positive", (long long)max_T, n_layers);
        return NULL;
    }
    Fp8Recipe *r = xcalloc(1, sizeof *r);
    Fp8CacheBytes *bytes = xcalloc((size_t)(n_layers ? n_layers : 1), sizeof *bytes);
    if (!r || !bytes) {
        free(r), free(bytes);
        err_set(err, "out of memory for the fp8 recipe");
        return NULL;
    }
    r->hook.forward = recipe_forward;
    r->hook.backward = recipe_backward;
    r->opt = *o;
    r->max_T = max_T;
    r->n_layers = n_layers;
    r->bytes = bytes;
    r->sorted = 1;
    return r;
}

void fp8_recipe_free(Fp8Recipe *r) {
    if (!r) return;
    for (int i = 0; i < r->n_tensors; i++) free(r->tensors[i].w), free(r->tensors[i].wt);
    free(r->tensors);
    free(r->entries);
    free(r->pool);
    free(r->a), free(r->b), free(r->c);
    free(r->bytes);
    free(r);
}

int fp8_recipe_add_tensor(Fp8Recipe *r, const Tensor *W, int flags, int layer, Err *err) {
    if (W->dtype != DT_F32 || W->rows < 1 || W->cols < 1)
        return err_set(err, "fp8 recipe: a %lld x %lld %s weight cannot train in FP8 (FP32 masters only)", (long long)W->rows,
                       (long long)W->cols, dtype_name(W->dtype));
    if (r->n_tensors == r->cap_tensors) {
        int cap = r->cap_tensors ? 2 * r->cap_tensors : 64;
        RecipeTensor *t = realloc(r->tensors, (size_t)cap * sizeof *t);
        if (!t) return err_set(err, "out of memory for the fp8 recipe's tensors");
        r->tensors = t, r->cap_tensors = cap;
    }
    size_t n, floats;
    int64_t dim = W->rows > W->cols ? W->rows : W->cols;
    if (size_mul(&n, (size_t)W->rows, (size_t)W->cols) || size_mul(&floats, (size_t)r->max_T, (size_t)dim) ||
        size_mul(&floats, floats, sizeof(float)) || size_mul(&n, n, sizeof(float)))
        return err_set(err, "fp8 recipe: a %lld x %lld weight at %lld tokens overflows", (long long)W->rows,
                       (long long)W->cols, (long long)r->max_T);
    if (dim > r->max_dim) { /* operand scratch: every operand of a GEMM is at most max_T x dim */
        float **bufs[3] = { &r->a, &r->b, &r->c };
        for (int i = 0; i < 3; i++) {
            float *p = realloc(*bufs[i], floats);
            if (!p) return err_set(err, "out of memory for the fp8 recipe's operands (%zu bytes)", floats);
            *bufs[i] = p;
        }
        r->max_dim = dim;
    }
    float *w = malloc(n), *wt = malloc(n);
    if (!w || !wt) {
        free(w), free(wt);
        return err_set(err, "out of memory for the fp8 copy of a %lld x %lld weight", (long long)W->rows, (long long)W->cols);
    }
    r->tensors[r->n_tensors++] = (RecipeTensor){ W, flags, layer, w, wt, -1 };
    r->sorted = 0;
    return 0;
}

int fp8_recipe_add_params(Fp8Recipe *r, const ParamSet *ps, Err *err) {
    for (int i = 0; i < ps->n_entries; i++) {
        const ParamEntry *e = &ps->entries[i];
        const WeightSlot *s = &e->slot;
        if (s->kind != WEIGHT_MATRIX || !s->fp8 || e->role == PARAM_ALIAS) continue;
        int flags = 0, up = strstr(s->name, "gate_proj") || strstr(s->name, "up_proj"), down = !!strstr(s->name, "down_proj");
        int moe = s->expert >= 0 || strstr(s->name, "shared_experts") != NULL;
        if (strstr(s->name, "self_attn.o_proj")) flags |= FP8_ROLE_ATTN_OUT;
        if (moe && up) flags |= FP8_ROLE_Y_FP8 | (s->expert >= 0 ? FP8_ROLE_X_POW2 : 0);
        if (moe && down) flags |= FP8_ROLE_X_RECOMPUTED | (s->expert >= 0 ? FP8_ROLE_DY_POW2 : 0);
        if (fp8_recipe_add_tensor(r, s->matrix, flags, s->layer, err)) return -1;
    }
    return 0;
}

LinearHook *fp8_recipe_hook(Fp8Recipe *r) { return &r->hook; }

void fp8_recipe_begin_pass(Fp8Recipe *r) { r->gen++; }

void fp8_recipe_begin_sequence(Fp8Recipe *r) {
    r->n_entries = 0;
    r->pool_used = 0;
    memset(r->bytes, 0, (size_t)(r->n_layers ? r->n_layers : 1) * sizeof *r->bytes);
}

Fp8CacheBytes fp8_recipe_cache_bytes(const Fp8Recipe *r, int layer) {
    Fp8CacheBytes none = { 0, 0 };
    return layer >= 0 && layer < r->n_layers ? r->bytes[layer] : none;
}
