/**
 * @file mla_split.h
 * @brief The split-K ("flash decoding") and page arithmetic of MLA decode (kernels/mla_decode.cu),
 *        as plain C shared by the kernel, its host emulation (tests/gpu/mock_cuda.c) and a CPU
 *        unit test (tests/test_mla_split.c).
 *
 * Request b's S_b cached positions are cut into num_splits contiguous ranges of `chunk`
 * positions, chunk = ⌈⌈S_b / num_splits⌉ / 32⌉ · 32 (whole 32-position tiles), so split s reads
 * [s·chunk, min(S_b, (s+1)·chunk)) — trailing splits may be empty. Position t lives in the
 * physical cache row block_table[b][t / 64] · 64 + t % 64. Each split keeps its own softmax:
 * its base-2 log-sum-exp lse2_s = m_s + log2 l_s and its output O_s normalized by l_s; the merge
 *     u = Σ_s w_s O_s / Σ_s w_s,   w_s = 2^(lse2_s − max_s lse2_s)
 * equals the softmax over all S_b positions, since w_s ∝ Σ_{t in s} e^{score(t)}. An empty
 * split has lse2 = −∞ and weight 0.
 */
#ifndef DSV3_FAST_MLA_SPLIT_H
#define DSV3_FAST_MLA_SPLIT_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define MLA_HD __host__ __device__ /**< callable from the kernel and from C */
#else
#define MLA_HD /**< callable from the kernel and from C */
#endif

/** Positions per tile: a split's length is a multiple of it. */
#define MLA_SPLIT_TILE 32
/** Tokens per cache page (block). */
#define MLA_SPLIT_PAGE 64
/** The most splits mla_split_count chooses. */
#define MLA_SPLIT_MAX 64

/**
 * Splits per request for @p B requests of @p H heads (one CTA per 64 heads) on a device with
 * @p sm_count SMs: at most one wave (one CTA per SM, as its shared memory allows), and at least
 * 128 positions per split (the 64-head Q tile costs as much to load as 64 positions of cache),
 * clamped to [1, 64]. The rule was measured on an H100 (docs/benchmarks.md, split sweep).
 */
static inline MLA_HD int mla_split_count(int sm_count, int B, int H, int max_seq_len) {
    if (B <= 0 || H <= 0 || sm_count <= 0) return 1;
    const int ctas = B * ((H + 63) / 64);
    int s = sm_count / ctas;
    const int cap = ((max_seq_len > 0 ? max_seq_len : 1) + 127) / 128;
    s = s < cap ? s : cap;
    return s < 1 ? 1 : s > MLA_SPLIT_MAX ? MLA_SPLIT_MAX : s;
}

/** Positions per split of a request with @p S_b positions cut into @p num_splits (≥ 1): whole tiles. */
static inline MLA_HD int mla_split_chunk(int S_b, int num_splits) {
    const int per = ((S_b > 0 ? S_b : 1) + num_splits - 1) / num_splits;
    return (per + MLA_SPLIT_TILE - 1) / MLA_SPLIT_TILE * MLA_SPLIT_TILE;
}

/** Split @p split's positions [*t_begin, *t_end) of a request with @p S_b positions (*t_end ≤ *t_begin: empty). */
static inline MLA_HD void mla_split_range(int S_b, int num_splits, int split, int *t_begin, int *t_end) {
    const int chunk = mla_split_chunk(S_b, num_splits);
    *t_begin = split * chunk;
    *t_end = S_b < *t_begin + chunk ? S_b : *t_begin + chunk;
}

/** Physical cache row of position @p t of the request whose block table row is @p btab. */
static inline MLA_HD int64_t mla_page_row(const int *btab, int t) {
    return (int64_t)btab[t / MLA_SPLIT_PAGE] * MLA_SPLIT_PAGE + t % MLA_SPLIT_PAGE;
}

/** max_s lse2[s·stride] over @p n splits (−∞ when every split is empty). */
static inline MLA_HD float mla_combine_max(const float *lse2, int64_t stride, int n) {
    float mx = -INFINITY;
    for (int s = 0; s < n; s++) mx = fmaxf(mx, lse2[(int64_t)s * stride]);
    return mx;
}

/** A split's merge weight 2^(lse2 − mx) (0 for an empty split, and when @p mx = −∞). */
static inline MLA_HD float mla_combine_weight(float lse2, float mx) {
    return mx > -INFINITY ? exp2f(lse2 - mx) : 0.0f;
}

#endif /* DSV3_FAST_MLA_SPLIT_H */
