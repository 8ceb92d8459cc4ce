/**
 * @file test_gemm_sched.c
 * @brief The persistent FP8 GEMM's tile scheduler (kernels/gemm_sched.h) on the CPU, walking
 *        exactly the sequences the kernel walks:
 *  - dense: every output tile computed exactly once, on every DeepSeek-V3 shape and edge M, with
 *    clusters of 1 and 2, rasterization on and off, 132 and a few SMs;
 *  - clusters: the two CTAs of a pair take the same unit, column and expert, row tiles 2u, 2u+1;
 *  - balance: tiles per CTA differ by at most one; the grid never exceeds the SMs;
 *  - rasterization: the order written out by hand for a 5 × 3 unit grid, groups of 2 rows;
 *  - grouped (MoE): per-expert M with empty experts and partial tiles, rows covered once, no tile
 *    straddles an expert, invalid tiles only as a pair's second;
 *  - stream-K: every unit's K blocks reduced exactly once, in segments owned by consecutive CTAs,
 *    ranges balanced within one K block, the waiting rule that makes it deadlock-free, and a
 *    simulated fix-up whose result is the same bits for any arrival order.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../kernels/gemm_sched.h"

/** Walks every CTA's data-parallel sequence and checks cover, pairing and balance; returns the tile count. */
static int64_t check_schedule(const GemmSched *s, int num_sms) {
    const int64_t n_tiles = s->n_tiles;
    int64_t total_tiles = 0;
    if (s->num_groups == 0) total_tiles = gemm_sched_cdiv(s->M, s->bm) * n_tiles;
    else
        for (int g = 0; g < s->num_groups; g++)
            total_tiles += gemm_sched_cdiv(s->group_start[g + 1] - s->group_start[g], s->bm) * n_tiles;
    /* seen[row tile index across experts][n] */
    int64_t *tile_base = calloc((size_t)(s->num_groups ? s->num_groups : 1), sizeof *tile_base);
    assert_non_null(tile_base);
    for (int g = 1; g < s->num_groups; g++)
        tile_base[g] = tile_base[g - 1] + gemm_sched_cdiv(s->group_start[g] - s->group_start[g - 1], s->bm);
    unsigned char *seen = calloc((size_t)(total_tiles ? total_tiles : 1), 1);
    unsigned char *pid_seen = calloc((size_t)(s->units ? s->units : 1), 1);
    assert_non_null(seen);
    assert_non_null(pid_seen);

    assert_true(s->ctas <= num_sms);
    assert_int_equal(s->ctas % s->cluster, 0);
    if (s->units > 0) assert_true(s->ctas > 0);
    int64_t cmin = INT64_MAX, cmax = 0, valid = 0, sum = 0;
    for (int c = 0; c < s->ctas; c++) {
        const int64_t cnt = gemm_sched_count(s, c);
        const int rank = c % s->cluster;
        cmin = cnt < cmin ? cnt : cmin, cmax = cnt > cmax ? cnt : cmax;
        if (rank == 0) sum += cnt;
        else assert_int_equal(cnt, gemm_sched_count(s, c - rank)); /* a pair walks the same units */
        int64_t prev_pid = -1;
        for (int64_t k = 0; k < cnt; k++) {
            const int64_t pid = gemm_sched_pid(s, c, k);
            assert_true(pid > prev_pid && pid < s->units); /* ascending: the order of the waves */
            prev_pid = pid;
            const GemmTile t = gemm_sched_tile(s, pid, rank);
            if (rank == 0) {
                assert_int_equal(pid_seen[pid], 0);
                pid_seen[pid] = 1;
            } else { /* the partner's tile: same unit, column, expert; the next row tile */
                const GemmTile t0 = gemm_sched_tile(s, pid, 0);
                assert_int_equal(t.n_tile, t0.n_tile);
                assert_int_equal(t.group, t0.group);
                assert_int_equal(t.m_tile, t0.m_tile + rank);
                assert_true(t0.valid); /* only a pair's second tile may be empty */
            }
            assert_true(t.n_tile >= 0 && t.n_tile < n_tiles);
            assert_int_equal(t.m_tile % s->cluster, rank);
            if (!t.valid) {
                assert_true(t.row0 >= t.row_end);
                continue;
            }
            /* inside its expert: starts there, never straddles the next one */
            assert_true(t.row0 >= (s->num_groups ? s->group_start[t.group] : 0));
            assert_int_equal(t.row_end, s->num_groups ? s->group_start[t.group + 1] : s->M);
            assert_int_equal((t.row0 - (s->num_groups ? s->group_start[t.group] : 0)) % s->bm, 0);
            const int64_t idx = (tile_base[t.group] + t.m_tile) * n_tiles + t.n_tile;
            assert_true(idx < total_tiles);
            assert_int_equal(seen[idx], 0);
            seen[idx] = 1;
            valid++;
        }
    }
    assert_int_equal(sum, s->units);
    assert_int_equal(valid, total_tiles); /* each tile exactly once (no repeats above) */
    if (s->ctas > 0) assert_true(cmax - cmin <= 1);
    for (int64_t p = 0; p < s->units; p++) assert_int_equal(pid_seen[p], 1);
    free(seen), free(pid_seen), free(tile_base);
    return valid;
}

static void dense_covers_every_tile_once(void **state) {
    (void)state;
    /* DeepSeek-V3's GEMM shapes (N, K) and edge M: one row, one tile, one row past, odd tile counts */
    const int64_t shapes[][2] = { { 2112, 7168 }, { 576, 7168 }, { 24576, 1536 }, { 32768, 512 }, { 7168, 16384 },
                                  { 36864, 7168 }, { 7168, 18432 }, { 4096, 7168 }, { 7168, 2048 }, { 129, 256 } };
    const int64_t Ms[] = { 0, 1, 64, 127, 128, 129, 255, 383, 4096, 4097 };
    const int sms[] = { 132, 7, 2 };
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
            for (int cluster = 1; cluster <= 2; cluster++)
                for (int raster = 0; raster <= 16; raster += 16)
                    for (size_t k = 0; k < sizeof sms / sizeof sms[0]; k++) {
                        GemmSched s = { 0 };
                        assert_int_equal(gemm_sched_dense(&s, Ms[mi], shapes[si][0], (int)(shapes[si][1] / 128), 128,
                                                          128, sms[k], cluster, raster),
                                         0);
                        const int64_t tiles = check_schedule(&s, sms[k]);
                        assert_int_equal(tiles, gemm_sched_cdiv(Ms[mi], 128) * gemm_sched_cdiv(shapes[si][0], 128));
                    }
}

static void dense_grid_and_balance(void **state) {
    (void)state;
    GemmSched s = { 0 };
    /* M = 4096, N = 7168, cluster 2: 16 unit rows × 56 columns = 896 units on 66 clusters */
    assert_int_equal(gemm_sched_dense(&s, 4096, 7168, 128, 128, 128, 132, 2, 16), 0);
    assert_int_equal(s.unit_rows, 16);
    assert_int_equal(s.units, 896);
    assert_int_equal(s.ctas, 132);
    assert_int_equal(gemm_sched_count(&s, 0), 14);  /* ceil(896 / 66) */
    assert_int_equal(gemm_sched_count(&s, 131), 13); /* 896 = 38·14 + 28·13 */
    assert_int_equal(gemm_sched_pid(&s, 3, 2), 1 + 2 * 66);
    /* fewer units than SMs: one unit per cluster, the rest of the SMs stay idle */
    assert_int_equal(gemm_sched_dense(&s, 1, 4096, 56, 128, 128, 132, 2, 0), 0);
    assert_int_equal(s.units, 32);
    assert_int_equal(s.ctas, 64);
    assert_int_equal(gemm_sched_dense(&s, 0, 4096, 56, 128, 128, 132, 1, 0), 0);
    assert_int_equal(s.ctas, 0);
    /* an odd SM count: whole clusters only */
    assert_int_equal(gemm_sched_dense(&s, 4096, 7168, 128, 128, 128, 133, 2, 16), 0);
    assert_int_equal(s.ctas, 132);
    /* bad shapes */
    assert_int_equal(gemm_sched_dense(&s, 4096, 0, 128, 128, 128, 132, 1, 0), -1);
    assert_int_equal(gemm_sched_dense(&s, 4096, 7168, 0, 128, 128, 132, 1, 0), -1);
    assert_int_equal(gemm_sched_dense(&s, 4096, 7168, 128, 128, 128, 132, 3, 0), -1);
    assert_int_equal(gemm_sched_dense(&s, 4096, 7168, 128, 128, 128, 1, 2, 0), -1);
}

static void raster_order_by_hand(void **state) {
    (void)state;
    GemmSched s = { 0 };
    /* 5 unit rows (M = 5·128), 3 columns, raster groups of 2 rows: rows {0,1} column by column,
     * then {2,3}, then the short group {4} */
    assert_int_equal(gemm_sched_dense(&s, 5 * 128, 3 * 128, 2, 128, 128, 4, 1, 2), 0);
    const int want[15][2] = { { 0, 0 }, { 1, 0 }, { 0, 1 }, { 1, 1 }, { 0, 2 }, { 1, 2 }, { 2, 0 }, { 3, 0 },
                              { 2, 1 }, { 3, 1 }, { 2, 2 }, { 3, 2 }, { 4, 0 }, { 4, 1 }, { 4, 2 } };
    for (int p = 0; p < 15; p++) {
        const GemmTile t = gemm_sched_tile(&s, p, 0);
        assert_int_equal(t.m_tile, want[p][0]);
        assert_int_equal(t.n_tile, want[p][1]);
    }
    /* 4 CTAs: CTA 1 takes pids 1, 5, 9, 13 in that order */
    assert_int_equal(s.ctas, 4);
    assert_int_equal(gemm_sched_count(&s, 1), 4);
    assert_int_equal(gemm_sched_count(&s, 3), 3);
    const int64_t cta1[4] = { 1, 5, 9, 13 };
    for (int k = 0; k < 4; k++) assert_int_equal(gemm_sched_pid(&s, 1, k), cta1[k]);
    /* raster 0: row-major */
    assert_int_equal(gemm_sched_dense(&s, 5 * 128, 3 * 128, 2, 128, 128, 4, 1, 0), 0);
    for (int p = 0; p < 15; p++) {
        const GemmTile t = gemm_sched_tile(&s, p, 0);
        assert_int_equal(t.m_tile, p / 3);
        assert_int_equal(t.n_tile, p % 3);
    }
    /* cluster 2, raster 4 tiles = 2 unit rows: the pair (2u, 2u+1) moves as one row */
    assert_int_equal(gemm_sched_dense(&s, 8 * 128, 2 * 128, 2, 128, 128, 4, 2, 4), 0);
    assert_int_equal(s.raster, 2);
    const int want2[8][2] = { { 0, 0 }, { 2, 0 }, { 0, 1 }, { 2, 1 }, { 4, 0 }, { 6, 0 }, { 4, 1 }, { 6, 1 } };
    for (int p = 0; p < 8; p++) {
        const GemmTile t0 = gemm_sched_tile(&s, p, 0), t1 = gemm_sched_tile(&s, p, 1);
        assert_int_equal(t0.m_tile, want2[p][0]);
        assert_int_equal(t1.m_tile, want2[p][0] + 1);
        assert_int_equal(t0.n_tile, want2[p][1]);
        assert_int_equal(t1.n_tile, want2[p][1]);
    }
}

/** Schedules @p G experts of @p rows rows and checks them with check_schedule. */
static void check_grouped(const int *rows, int G, int cluster, int raster, int num_sms, int64_t N) {
    int *gs = malloc(sizeof(int) * (size_t)(G + 1)), *us = malloc(sizeof(int) * (size_t)(G + 1));
    assert_non_null(gs);
    assert_non_null(us);
    gs[0] = 0;
    int64_t want_units = 0;
    for (int g = 0; g < G; g++) {
        gs[g + 1] = gs[g] + rows[g];
        want_units += (rows[g] + 128 * cluster - 1) / (128 * cluster);
    }
    assert_int_equal(gemm_sched_unit_start(gs, G, 128, cluster, us), want_units);
    GemmSched s = { 0 };
    assert_int_equal(gemm_sched_grouped(&s, gs, us, G, N, 4, 128, 128, num_sms, cluster, raster), 0);
    assert_int_equal(s.units, want_units * gemm_sched_cdiv(N, 128));
    check_schedule(&s, num_sms);
    /* every row of every expert lies in exactly one valid tile of each column */
    for (int g = 0; g < G; g++)
        for (int r = gs[g]; r < gs[g + 1]; r++) {
            int hits = 0;
            for (int64_t p = 0; p < s.units; p++)
                for (int rank = 0; rank < cluster; rank++) {
                    const GemmTile t = gemm_sched_tile(&s, p, rank);
                    if (t.valid && t.n_tile == 0 && r >= t.row0 && r < t.row0 + 128 && r < t.row_end) {
                        assert_int_equal(t.group, g);
                        hits++;
                    }
                }
            assert_int_equal(hits, 1);
        }
    free(gs), free(us);
}

static void grouped_per_expert_rows(void **state) {
    (void)state;
    /* empty experts first, last and in between; 1 row; exact tiles; partial tiles; odd tile counts */
    const int rows[] = { 0, 1, 128, 129, 0, 0, 300, 256, 383, 0, 5, 0 };
    const int G = (int)(sizeof rows / sizeof rows[0]);
    for (int cluster = 1; cluster <= 2; cluster++)
        for (int raster = 0; raster <= 4; raster += 4) {
            check_grouped(rows, G, cluster, raster, 132, 576);
            check_grouped(rows, G, cluster, raster, 6, 2112);
            check_grouped(rows, G, cluster, raster, 2, 128);
        }
    /* 256 experts × 8 rows (decode of 256 tokens, top-8 spread evenly) and one hot expert */
    int many[256];
    for (int g = 0; g < 256; g++) many[g] = g % 17 == 3 ? 0 : 8;
    many[200] = 1000;
    check_grouped(many, 256, 1, 0, 132, 2048);
    check_grouped(many, 256, 2, 0, 132, 2048);
    /* every expert empty: no work, no CTAs */
    const int none[3] = { 0, 0, 0 };
    int gs[4] = { 0, 0, 0, 0 }, us[4];
    assert_int_equal(gemm_sched_unit_start(gs, 3, 128, 2, us), 0);
    GemmSched s = { 0 };
    assert_int_equal(gemm_sched_grouped(&s, gs, us, 3, 7168, 56, 128, 128, 132, 2, 0), 0);
    assert_int_equal(s.units, 0);
    assert_int_equal(s.ctas, 0);
    check_grouped(none, 3, 1, 0, 132, 256);
    /* the binary search over unit_start skips empty experts */
    const int us2[6] = { 0, 0, 3, 3, 3, 7 };
    assert_int_equal(gemm_sched_group_of(us2, 5, 0), 1);
    assert_int_equal(gemm_sched_group_of(us2, 5, 2), 1);
    assert_int_equal(gemm_sched_group_of(us2, 5, 3), 4);
    assert_int_equal(gemm_sched_group_of(us2, 5, 6), 4);
    /* decreasing row offsets are refused */
    const int bad[3] = { 0, 10, 5 };
    int ubad[3];
    assert_int_equal(gemm_sched_unit_start(bad, 2, 128, 1, ubad), -1);
}

/** Walks every stream-K CTA's items for @p units × @p kblocks; checks cover, ownership, balance, waits. */
static void check_streamk(int64_t units, int kblocks, int num_sms) {
    const int ctas = gemm_sched_streamk_ctas(units, kblocks, num_sms);
    if (units >= num_sms || kblocks < 4) {
        assert_int_equal(ctas, 0);
        return;
    }
    assert_true(ctas > 0 && ctas <= num_sms);
    unsigned char *covered = calloc((size_t)(units * kblocks), 1);
    int *nseg = calloc((size_t)units, sizeof(int)), *segs_seen = calloc((size_t)units, sizeof(int));
    assert_non_null(covered);
    assert_non_null(nseg);
    assert_non_null(segs_seen);
    int64_t lmin = INT64_MAX, lmax = 0;
    for (int c = 0; c < ctas; c++) {
        const int64_t b = gemm_sched_streamk_begin(units, kblocks, ctas, c);
        const int64_t e = gemm_sched_streamk_begin(units, kblocks, ctas, c + 1);
        const int64_t len = e - b;
        lmin = len < lmin ? len : lmin, lmax = len > lmax ? len : lmax;
        assert_true(len >= 2); /* at least two K blocks per CTA */
        GemmSplit w = { 0 };
        int item = 0;
        for (int64_t it = b; it < e; item++) {
            assert_int_equal(gemm_sched_streamk_item(units, kblocks, ctas, c, it, &w), 0);
            assert_true(w.kb_begin < w.kb_end && w.kb_end <= kblocks);
            assert_int_equal(w.pid * kblocks + w.kb_begin, it);
            assert_int_equal(w.first + w.seg, c);
            assert_true(w.seg >= 0 && w.seg < w.nseg);
            for (int kb = w.kb_begin; kb < w.kb_end; kb++) {
                assert_int_equal(covered[w.pid * kblocks + kb], 0);
                covered[w.pid * kblocks + kb] = 1;
            }
            /* the owner starts at K block 0; segment s > 0 starts where segment s-1 ended */
            assert_int_equal(w.seg == 0, w.kb_begin == 0);
            if (w.seg > 0) assert_int_equal(item, 0);                /* first item: waits on nothing before */
            if (w.seg == 0 && w.nseg > 1) assert_int_equal(w.kb_end, (int)(e - w.pid * kblocks)); /* last item */
            if (w.seg == w.nseg - 1) assert_int_equal(w.kb_end, kblocks);
            if (nseg[w.pid] == 0) nseg[w.pid] = w.nseg;
            assert_int_equal(nseg[w.pid], w.nseg);
            assert_int_equal(segs_seen[w.pid], w.seg); /* CTAs in order = segments in ascending K */
            segs_seen[w.pid]++;
            it = w.pid * kblocks + w.kb_end;
        }
        assert_int_equal(gemm_sched_streamk_item(units, kblocks, ctas, c, e, &w), -1);
    }
    assert_true(lmax - lmin <= 1);
    for (int64_t i = 0; i < units * kblocks; i++) assert_int_equal(covered[i], 1);
    for (int64_t u = 0; u < units; u++) assert_int_equal(segs_seen[u], nseg[u]);
    free(covered), free(nseg), free(segs_seen);
}

static void streamk_covers_k_once(void **state) {
    (void)state;
    /* decode shapes on 132 SMs: N/128 column tiles (M ≤ 128: one row of tiles) × K/128 blocks */
    const int64_t shapes[][2] = { { 2112, 7168 }, { 576, 7168 }, { 24576, 1536 }, { 32768, 512 }, { 7168, 16384 },
                                  { 36864, 7168 }, { 7168, 18432 }, { 4096, 7168 }, { 7168, 2048 } };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        check_streamk(gemm_sched_cdiv(shapes[i][0], 128), (int)(shapes[i][1] / 128), 132);
    for (int64_t units = 1; units <= 20; units++)
        for (int kb = 1; kb <= 40; kb += 3)
            for (int sms = 1; sms <= 24; sms += 5) check_streamk(units, kb, sms);
    /* N = 7168, K = 2048, M = 1: 56 tiles of 16 K blocks on 132 SMs; 896 / 132 = 6.8 blocks per CTA */
    assert_int_equal(gemm_sched_streamk_ctas(56, 16, 132), 132);
    assert_int_equal(gemm_sched_streamk_ctas(132, 16, 132), 0); /* a full wave: data-parallel */
    assert_int_equal(gemm_sched_streamk_ctas(5, 4, 132), 10);   /* two K blocks each */
    assert_int_equal(gemm_sched_streamk_ctas(5, 3, 132), 0);    /* K too short */
}

/** One K block's FP32 partial of a 1-element tile in unit u (values with rounding in their sums). */
static float block_partial(int64_t u, int kb) { return (float)(((u * 7919 + kb * 104729) % 1000) - 500) / 7.0f; }

static void streamk_fixup_is_deterministic(void **state) {
    (void)state;
    const int64_t units = 7;
    const int kblocks = 37, sms = 20;
    const int ctas = gemm_sched_streamk_ctas(units, kblocks, sms);
    assert_int_equal(ctas, 20);
    float out[2][7];
    for (int trial = 0; trial < 2; trial++) {
        /* every CTA computes its items' partials (promotion in ascending K inside a segment) */
        float ws[20], own[20][2];
        int64_t own_pid[20][2];
        int nown[20] = { 0 };
        for (int c = 0; c < ctas; c++) {
            const int64_t e = gemm_sched_streamk_begin(units, kblocks, ctas, c + 1);
            GemmSplit w = { 0 };
            for (int64_t it = gemm_sched_streamk_begin(units, kblocks, ctas, c); it < e;
                 it = w.pid * kblocks + w.kb_end) {
                gemm_sched_streamk_item(units, kblocks, ctas, c, it, &w);
                float acc = 0.0f;
                for (int kb = w.kb_begin; kb < w.kb_end; kb++) acc += block_partial(w.pid, kb);
                if (w.seg > 0) ws[c] = acc; /* workspace slot of this CTA */
                else own[c][nown[c]] = acc, own_pid[c][nown[c]++] = w.pid;
            }
        }
        /* the owners' fix-ups, run in two different CTA orders: ascending and descending */
        for (int i = 0; i < ctas; i++) {
            const int c = trial ? ctas - 1 - i : i;
            for (int j = 0; j < nown[c]; j++) {
                GemmSplit w = { 0 };
                const int64_t u = own_pid[c][j];
                gemm_sched_streamk_item(units, kblocks, ctas, c, u * kblocks, &w);
                float acc = own[c][j];
                for (int sgm = 1; sgm < w.nseg; sgm++) acc += ws[w.first + sgm];
                out[trial][u] = acc;
            }
        }
    }
    for (int64_t u = 0; u < units; u++) {
        assert_memory_equal(&out[0][u], &out[1][u], sizeof(float));
        /* = the segments' partials added in ascending K */
        GemmSplit w = { 0 };
        const int first = gemm_sched_streamk_cta_of(units, kblocks, ctas, u * kblocks);
        gemm_sched_streamk_item(units, kblocks, ctas, first, u * kblocks, &w);
        float want = 0.0f;
        for (int sgm = 0; sgm < w.nseg; sgm++) {
            const int c = first + sgm;
            int64_t b = gemm_sched_streamk_begin(units, kblocks, ctas, c);
            if (b < u * kblocks) b = u * kblocks;
            GemmSplit x = { 0 };
            gemm_sched_streamk_item(units, kblocks, ctas, c, b, &x);
            float acc = 0.0f;
            for (int kb = x.kb_begin; kb < x.kb_end; kb++) acc += block_partial(u, kb);
            want = sgm == 0 ? acc : want + acc;
        }
        assert_memory_equal(&out[0][u], &want, sizeof(float));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dense_covers_every_tile_once), cmocka_unit_test(dense_grid_and_balance),
        cmocka_unit_test(raster_order_by_hand),         cmocka_unit_test(grouped_per_expert_rows),
        cmocka_unit_test(streamk_covers_k_once),        cmocka_unit_test(streamk_fixup_is_deterministic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
