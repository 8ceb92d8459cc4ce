/**
 * @file test_mla_split.c
 * @brief The split-K and page arithmetic of MLA decode (fast/mla_split.h, shared with
 *        kernels/mla_decode.cu and its host emulation) against direct computations on the CPU:
 *        split counts, the positions each split reads for lengths 1…8192 in one batch, the
 *        pages behind them, and the merge of the partial softmaxes.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mla_split.h"

/** The split count by search: the largest s ≤ 64 with s·CTAs ≤ SMs and s ≤ ⌈S/128⌉, at least 1. */
static int direct_count(int sm, int B, int H, int S) {
    int ctas = B * ((H + 63) / 64), best = 1;
    for (int s = 1; s <= 64; s++)
        if ((long)s * ctas <= sm && (long)(s - 1) * 128 < (S > 0 ? S : 1)) best = s;
    return best;
}

static void split_counts(void **state) {
    (void)state;
    const int sms[] = { 1, 78, 108, 132, 144 }, Bs[] = { 1, 2, 3, 8, 32, 64, 128, 1000 }, Hs[] = { 64, 128, 192 };
    const int Ss[] = { 0, 1, 127, 128, 129, 256, 1000, 4096, 8192, 1 << 20 };
    for (size_t a = 0; a < sizeof sms / sizeof *sms; a++)
        for (size_t b = 0; b < sizeof Bs / sizeof *Bs; b++)
            for (size_t h = 0; h < sizeof Hs / sizeof *Hs; h++)
                for (size_t s = 0; s < sizeof Ss / sizeof *Ss; s++) {
                    int got = mla_split_count(sms[a], Bs[b], Hs[h], Ss[s]), want = direct_count(sms[a], Bs[b], Hs[h], Ss[s]);
                    if (got != want)
                        fail_msg("sm %d B %d H %d S %d: %d splits, want %d", sms[a], Bs[b], Hs[h], Ss[s], got, want);
                }
    /* the H100 points of docs/benchmarks.md: B = 1, H = 128 → 2 CTAs → 64 splits at S = 8192, 32 at S = 4096 */
    assert_int_equal(mla_split_count(132, 1, 128, 8192), 64);
    assert_int_equal(mla_split_count(132, 1, 128, 4096), 32);
    assert_int_equal(mla_split_count(132, 64, 128, 8192), 1);
    assert_int_equal(mla_split_count(0, 1, 128, 8192), 1);
    assert_int_equal(mla_split_count(132, 0, 128, 8192), 1);
}

/**
 * Lengths 1…8192 in one batch, every split count 1…64: the splits' ranges cover [0, S) exactly
 * once in order, start on a tile, are no longer than ⌈S/splits⌉ rounded up to a tile, and only
 * trailing splits are empty; a length-0 request reads nothing.
 */
static void split_ranges(void **state) {
    (void)state;
    for (int n = 1; n <= 64; n++) {
        int t0, t1;
        mla_split_range(0, n, 0, &t0, &t1);
        assert_true(t1 <= t0);
        for (int S = 1; S <= 8192; S++) {
            int next = 0, empty_seen = 0, max_len = ((S + n - 1) / n + MLA_SPLIT_TILE - 1) / MLA_SPLIT_TILE * MLA_SPLIT_TILE;
            for (int s = 0; s < n; s++) {
                mla_split_range(S, n, s, &t0, &t1);
                if (t1 <= t0) {
                    empty_seen = 1;
                    continue;
                }
                if (empty_seen || t0 != next || t0 % MLA_SPLIT_TILE || t1 - t0 > max_len)
                    fail_msg("S %d, %d splits: split %d reads [%d, %d) after %d", S, n, s, t0, t1, next);
                next = t1;
            }
            if (next != S) fail_msg("S %d, %d splits: the splits end at %d", S, n, next);
        }
    }
}

/**
 * Pages: a batch of requests of lengths around page boundaries (1, 63, 64, 65, 127, 128, 129,
 * 8192, …) sharing one pool, blocks handed out interleaved and in a shuffled order; a cache
 * whose every row holds its owner (b, t) must read back (b, t) at mla_page_row for every
 * position, every row must belong to exactly one (b, t), and a split reads the pages
 * ⌊t_begin/64⌋ … ⌊(t_end−1)/64⌋ of its request.
 */
static void pages(void **state) {
    (void)state;
    const int lens[] = { 1, 63, 64, 65, 127, 128, 129, 191, 192, 1000, 4095, 4096, 4097, 8191, 8192, 0, 2 };
    const int B = (int)(sizeof lens / sizeof *lens), stride = 8192 / 64;
    int nblocks = 0;
    for (int b = 0; b < B; b++) nblocks += (lens[b] + 63) / 64;
    int *ids = malloc(sizeof *ids * (size_t)nblocks), *btab = calloc((size_t)B * stride, sizeof *btab);
    int64_t *owner = malloc(sizeof *owner * (size_t)nblocks * 64);
    assert_true(ids && btab && owner);
    uint64_t st = 3;
    for (int i = 0; i < nblocks; i++) ids[i] = i;
    for (int i = nblocks - 1; i > 0; i--) { /* Fisher–Yates */
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        int j = (int)((st >> 33) % (uint64_t)(i + 1)), tmp = ids[i];
        ids[i] = ids[j], ids[j] = tmp;
    }
    /* hand blocks out round-robin, as sequences growing together would take them */
    int used = 0, nb[64] = { 0 };
    for (int round = 0; used < nblocks; round++)
        for (int b = 0; b < B; b++)
            if (round < (lens[b] + 63) / 64) btab[b * stride + round] = ids[used++], nb[b]++;
    for (int64_t r = 0; r < (int64_t)nblocks * 64; r++) owner[r] = -1;
    for (int b = 0; b < B; b++)
        for (int k = 0; k < nb[b]; k++)
            for (int j = 0; j < 64; j++) {
                int64_t row = (int64_t)btab[b * stride + k] * 64 + j;
                assert_true(owner[row] == -1);
                owner[row] = (int64_t)b << 32 | (k * 64 + j);
            }
    for (int b = 0; b < B; b++)
        for (int t = 0; t < lens[b]; t++) {
            int64_t row = mla_page_row(btab + b * stride, t);
            if (row < 0 || row >= (int64_t)nblocks * 64 || owner[row] != ((int64_t)b << 32 | t))
                fail_msg("request %d position %d: row %lld belongs to %llx", b, t, (long long)row, (unsigned long long)owner[row]);
        }
    for (int b = 0; b < B; b++)
        for (int n = 1; n <= 64; n *= 2)
            for (int s = 0; s < n; s++) {
                int t0, t1;
                mla_split_range(lens[b], n, s, &t0, &t1);
                if (t1 <= t0) continue;
                int64_t first = mla_page_row(btab + b * stride, t0) / 64, last = mla_page_row(btab + b * stride, t1 - 1) / 64;
                assert_true(first == btab[b * stride + t0 / 64] && last == btab[b * stride + (t1 - 1) / 64]);
                assert_true((t1 - 1) / 64 < nb[b]); /* never past the request's own blocks */
            }
    free(ids), free(btab), free(owner);
}

/**
 * The merge: scores over S positions and values v(t), softmax-weighted sum computed directly
 * (double) against per-split partials (the kernel's base-2 online form: m_s, l_s, O_s/l_s,
 * lse2_s) merged with mla_combine_max/weight, for several lengths and split counts (empty
 * splits included); a request with every split empty gets weight 0 everywhere.
 */
static void combine(void **state) {
    (void)state;
    const int lens[] = { 1, 31, 32, 33, 200, 1000, 8192 };
    uint64_t st = 11;
    float sc[8192], v[8192];
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        int S = lens[li];
        for (int t = 0; t < S; t++) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            sc[t] = (float)((st >> 40) % 4000) / 100.0f - 20.0f; /* base-2 scores in [−20, 20): wide enough to underflow naive sums */
            v[t] = (float)((st >> 20) % 1000) / 500.0f - 1.0f;
        }
        double mx = -INFINITY, den = 0, num = 0;
        for (int t = 0; t < S; t++) mx = fmax(mx, sc[t]);
        for (int t = 0; t < S; t++) den += exp2(sc[t] - mx), num += exp2(sc[t] - mx) * v[t];
        double want = num / den;
        for (int n = 1; n <= 64; n++) {
            float lse2[64], part[64];
            for (int s = 0; s < n; s++) {
                int t0, t1;
                mla_split_range(S, n, s, &t0, &t1);
                float m = -INFINITY, l = 0, o = 0;
                for (int t = t0; t < t1; t++) m = fmaxf(m, sc[t]);
                for (int t = t0; t < t1; t++) l += exp2f(sc[t] - m), o += exp2f(sc[t] - m) * v[t];
                lse2[s] = l > 0 ? m + log2f(l) : -INFINITY;
                part[s] = l > 0 ? o / l : 0;
            }
            float cmx = mla_combine_max(lse2, 1, n), acc = 0, wsum = 0;
            for (int s = 0; s < n; s++) {
                float w = mla_combine_weight(lse2[s], cmx);
                if (lse2[s] == -INFINITY) assert_true(w == 0.0f);
                acc += w * part[s], wsum += w;
            }
            double got = acc / wsum;
            if (fabs(got - want) > 1e-5 * fmax(1.0, fabs(want)))
                fail_msg("S %d, %d splits: merged %.9g, direct %.9g", S, n, got, want);
            if (n == 1) assert_true(fabs(lse2[0] - (mx + log2(den))) < 1e-5 * fmax(1.0, fabs(mx))); /* one split: the whole lse */
        }
    }
    float none[4] = { -INFINITY, -INFINITY, -INFINITY, -INFINITY };
    float m = mla_combine_max(none, 1, 4);
    assert_true(m == -INFINITY);
    for (int s = 0; s < 4; s++) assert_true(mla_combine_weight(none[s], m) == 0.0f);
    /* a strided layout ([splits][H] in the kernel's workspace): only every H-th value counts */
    float strided[6] = { 1.0f, 100.0f, 3.0f, 100.0f, 2.0f, 100.0f };
    assert_true(mla_combine_max(strided, 2, 3) == 3.0f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(split_counts),
        cmocka_unit_test(split_ranges),
        cmocka_unit_test(pages),
        cmocka_unit_test(combine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
