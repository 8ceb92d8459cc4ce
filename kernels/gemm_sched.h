/**
 * @file gemm_sched.h
 * @brief Tile scheduler of the persistent FP8 GEMM (issue 22), plain C shared by
 *        kernels/fp8_gemm.cu (device) and tests/test_gemm_sched.c (CPU, `make test`).
 *
 * Work of one GEMM out[M][N] = A[M][K]·B[N][K]ᵀ with BM × BN output tiles and BK-wide K blocks:
 *
 *   units.  A unit is what one cluster of `cluster` CTAs (1 or 2) computes at a time: `cluster`
 *           consecutive row tiles of the same column tile, so the CTAs of a pair share the B tile
 *           (each loads half and multicasts it). Dense: unit rows = ceil(ceil(M/BM) / cluster).
 *           Grouped (MoE): row tiles never straddle experts; expert g with rows_g rows has
 *           ceil(ceil(rows_g/BM) / cluster) unit rows (0 for an empty expert), numbered expert
 *           after expert (unit_start[g] is the prefix). The second tile of a pair may lie past
 *           its expert's rows (odd tile count): it is `valid = 0`, computes nothing and stores
 *           nothing, but its CTA still loads its half of B for its partner.
 *
 *   order.  Units are numbered pid = 0 .. units-1 in grouped rasterization: unit rows in groups
 *           of R = max(1, raster / cluster) rows, each group walked column by column
 *           (pid → unit row first + (pid mod R·n_tiles) mod R', column (pid mod R·n_tiles) div R',
 *           R' = min(R, unit rows left)), so the tiles in flight at once share A rows and B
 *           columns in L2; raster = 0 is row-major. This is the order the non-persistent WGMMA
 *           kernel's grid uses (DSV3_WG_RASTER).
 *
 *   data-parallel persistent schedule.  ctas = cluster · min(num_sms / cluster, units) CTAs;
 *           cluster q = cta / cluster (of Q = ctas / cluster) takes pids q, q + Q, q + 2Q, ...
 *           in that order. Every unit is taken exactly once, every cluster gets floor(units/Q) or
 *           ceil(units/Q) units (balanced within one tile per CTA), and the tiles in flight at
 *           any time are Q consecutive pids.
 *
 *   stream-K (small M: fewer units than SMs).  The units × kblocks (unit, K block) iterations
 *           are flattened unit-major and cut into `ctas` contiguous ranges whose lengths differ
 *           by at most one: CTA c owns [⌊c·T/ctas⌋, ⌊(c+1)·T/ctas⌋). A range is split at unit
 *           boundaries into work items (unit, kb_begin, kb_end); a unit's items are its segments
 *           0 .. nseg-1 in ascending K, segment s computed by CTA first + s. Fix-up: segments
 *           1 .. nseg-1 write their FP32 partial tile to a workspace slot of their CTA and
 *           signal; the owner (segment 0, K block 0) adds them to its own partial in ascending
 *           segment order (= ascending K) and stores the tile, so the result does not depend on
 *           which CTA finishes first. Deadlock-free with all CTAs resident: a segment > 0 is
 *           always the first item of its CTA (it waits for nothing before it), an owner with
 *           nseg > 1 is always the last item of its CTA. Stream-K runs with cluster = 1.
 *
 * Everything here is integer arithmetic on values the host also has, so the CPU test checks
 * exactly the sequences the kernel walks. Rows of A and out are int64, tile counts int64.
 */
#ifndef DSV3_KERNELS_GEMM_SCHED_H
/** Include guard. */
#define DSV3_KERNELS_GEMM_SCHED_H

#include <stdint.h>

#ifdef __CUDACC__
/** Host and device inline function (CUDA) or static inline (C). */
#define GEMM_SCHED_FN static __host__ __device__ __forceinline__
#else
/** Host and device inline function (CUDA) or static inline (C). */
#define GEMM_SCHED_FN static inline
#endif

#ifdef __cplusplus
extern "C" {
#endif

/** A persistent GEMM's schedule (plain values; filled by gemm_sched_dense / gemm_sched_grouped). */
typedef struct {
    int64_t M;              /**< rows of A and out (grouped: all experts) */
    int64_t N;              /**< output columns */
    int kblocks;            /**< K / BK */
    int bm;                 /**< rows per tile */
    int bn;                 /**< columns per tile */
    int cluster;            /**< CTAs per cluster sharing a B tile (1 or 2) */
    int raster;             /**< raster group width in unit rows (≥ 1; 1 with raster off is row-major) */
    int ctas;               /**< CTAs to launch (a multiple of cluster; 0 when there is no work) */
    int64_t n_tiles;        /**< ceil(N / bn) */
    int64_t unit_rows;      /**< unit rows (dense: ceil(ceil(M/bm)/cluster); grouped: unit_start[G]) */
    int64_t units;          /**< unit_rows · n_tiles */
    int num_groups;         /**< experts; 0 = dense */
    const int *group_start; /**< grouped: [G+1] row offsets; NULL when dense */
    const int *unit_start;  /**< grouped: [G+1] unit-row offsets (gemm_sched_unit_start); NULL when dense */
} GemmSched;

/** One tile a CTA computes. */
typedef struct {
    int64_t pid;     /**< unit number in raster order */
    int group;       /**< expert (0 when dense) */
    int64_t m_tile;  /**< row tile inside the expert (dense: of the whole matrix) */
    int64_t n_tile;  /**< column tile */
    int64_t row0;    /**< first row of A and out */
    int64_t row_end; /**< one past the expert's last row: rows ≥ row_end are masked */
    int valid;       /**< 0: a pair's second tile past its expert's rows (load B's half, store nothing) */
} GemmTile;

/** One stream-K work item: K blocks [kb_begin, kb_end) of unit `pid`. */
typedef struct {
    int64_t pid;  /**< unit (cluster = 1: one tile) */
    int kb_begin; /**< first K block */
    int kb_end;   /**< one past the last K block */
    int seg;      /**< segment number of this unit (0 = owner: does the fix-up and stores) */
    int nseg;     /**< segments of this unit (1: no fix-up) */
    int first;    /**< CTA of segment 0; segment s is CTA first + s */
} GemmSplit;

/** ceil(a / b) for a ≥ 0, b > 0. */
GEMM_SCHED_FN int64_t gemm_sched_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/** Unit rows of @p rows rows: ceil(ceil(rows / bm) / cluster) (0 for rows ≤ 0). */
GEMM_SCHED_FN int64_t gemm_sched_unit_rows(int64_t rows, int bm, int cluster) {
    return rows > 0 ? gemm_sched_cdiv(gemm_sched_cdiv(rows, bm), cluster) : 0;
}

/** CTAs of a data-parallel persistent grid: cluster · min(num_sms / cluster, units). */
GEMM_SCHED_FN int gemm_sched_grid(int64_t units, int num_sms, int cluster) {
    int64_t q = num_sms / cluster;
    if (q > units) q = units;
    return (int)(q * cluster);
}

/** Raster group width in unit rows for a width of @p raster_tiles row tiles (0: row-major). */
GEMM_SCHED_FN int gemm_sched_raster_units(int raster_tiles, int cluster) {
    const int r = raster_tiles / cluster;
    return r > 1 ? r : 1;
}

/**
 * Fills @p s for a dense M × N × (kblocks·bk) GEMM on @p num_sms SMs. raster_tiles: group width in
 * row tiles (0 = row-major). Returns 0, or -1 for a non-positive shape or a cluster other than 1, 2.
 */
GEMM_SCHED_FN int gemm_sched_dense(GemmSched *s, int64_t M, int64_t N, int kblocks, int bm, int bn, int num_sms,
                                   int cluster, int raster_tiles) {
    if (M < 0 || N <= 0 || kblocks <= 0 || bm <= 0 || bn <= 0 || num_sms < cluster || (cluster != 1 && cluster != 2))
        return -1;
    s->M = M, s->N = N, s->kblocks = kblocks, s->bm = bm, s->bn = bn, s->cluster = cluster;
    s->raster = gemm_sched_raster_units(raster_tiles, cluster);
    s->n_tiles = gemm_sched_cdiv(N, bn);
    s->unit_rows = gemm_sched_unit_rows(M, bm, cluster);
    s->units = s->unit_rows * s->n_tiles;
    s->ctas = gemm_sched_grid(s->units, num_sms, cluster);
    s->num_groups = 0, s->group_start = 0, s->unit_start = 0;
    return 0;
}

/**
 * unit_start[g] = Σ_{h < g} unit rows of expert h, for g = 0..G, from the row offsets
 * group_start[0..G] (a plain loop: the kernel runs it once per CTA into shared memory).
 * Returns unit_start[G], or -1 when group_start decreases.
 */
GEMM_SCHED_FN int64_t gemm_sched_unit_start(const int *group_start, int G, int bm, int cluster, int *unit_start) {
    int64_t u = 0;
    for (int g = 0; g < G; g++) {
        unit_start[g] = (int)u;
        const int64_t rows = (int64_t)group_start[g + 1] - group_start[g];
        if (rows < 0) return -1;
        u += gemm_sched_unit_rows(rows, bm, cluster);
    }
    unit_start[G] = (int)u;
    return u;
}

/**
 * Fills @p s for a grouped GEMM over G experts, rows [group_start[g], group_start[g+1]) of expert
 * g, given unit_start from gemm_sched_unit_start (both arrays must outlive @p s). Returns 0 or -1.
 */
GEMM_SCHED_FN int gemm_sched_grouped(GemmSched *s, const int *group_start, const int *unit_start, int G, int64_t N,
                                     int kblocks, int bm, int bn, int num_sms, int cluster, int raster_tiles) {
    if (G < 1 || gemm_sched_dense(s, group_start[G] - group_start[0], N, kblocks, bm, bn, num_sms, cluster,
                                  raster_tiles))
        return -1;
    s->unit_rows = unit_start[G];
    s->units = s->unit_rows * s->n_tiles;
    s->ctas = gemm_sched_grid(s->units, num_sms, cluster);
    s->num_groups = G, s->group_start = group_start, s->unit_start = unit_start;
    return 0;
}

/** Units (tiles per CTA) that CTA @p cta processes in the data-parallel schedule. */
GEMM_SCHED_FN int64_t gemm_sched_count(const GemmSched *s, int cta) {
    const int64_t q = cta / s->cluster, Q = s->ctas / s->cluster;
    return q < s->units ? gemm_sched_cdiv(s->units - q, Q) : 0;
}

/** The pid of the @p k-th unit of CTA @p cta (k < gemm_sched_count). */
GEMM_SCHED_FN int64_t gemm_sched_pid(const GemmSched *s, int cta, int64_t k) {
    return cta / s->cluster + k * (s->ctas / s->cluster);
}

/** Expert holding unit row @p ur: the g with unit_start[g] ≤ ur < unit_start[g+1] (binary search). */
GEMM_SCHED_FN int gemm_sched_group_of(const int *unit_start, int G, int64_t ur) {
    int lo = 0, hi = G - 1; /* invariant: unit_start[lo] ≤ ur < unit_start[hi+1] */
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (unit_start[mid] <= ur) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/**
 * Tile of cluster rank @p rank in unit @p pid: grouped rasterization (file comment) gives the unit
 * row and column; the unit row gives the expert and the row tile 'cluster · local unit row + rank'.
 */
GEMM_SCHED_FN GemmTile gemm_sched_tile(const GemmSched *s, int64_t pid, int rank) {
    GemmTile t;
    const int64_t per_group = (int64_t)s->raster * s->n_tiles;
    const int64_t first = pid / per_group * s->raster;
    const int64_t left = s->unit_rows - first;
    const int64_t gm = left < s->raster ? left : s->raster;
    const int64_t ur = first + pid % per_group % gm;
    t.pid = pid;
    t.n_tile = pid % per_group / gm;
    if (s->num_groups == 0) {
        t.group = 0;
        t.m_tile = ur * s->cluster + rank;
        t.row0 = t.m_tile * s->bm;
        t.row_end = s->M;
    } else {
        t.group = gemm_sched_group_of(s->unit_start, s->num_groups, ur);
        t.m_tile = (ur - s->unit_start[t.group]) * s->cluster + rank;
        t.row0 = s->group_start[t.group] + t.m_tile * s->bm;
        t.row_end = s->group_start[t.group + 1];
    }
    t.valid = t.row0 < t.row_end;
    return t;
}

/**
 * Stream-K CTAs for @p units tiles of @p kblocks K blocks on @p num_sms SMs: 0 when the
 * data-parallel schedule already fills the machine (units ≥ num_sms) or K is too short to split
 * (kblocks < 4), else min(num_sms, units · kblocks / 2) (every CTA reduces at least two K blocks).
 */
GEMM_SCHED_FN int gemm_sched_streamk_ctas(int64_t units, int kblocks, int num_sms) {
    if (units <= 0 || units >= num_sms || kblocks < 4) return 0;
    const int64_t c = units * kblocks / 2;
    return (int)(c < num_sms ? c : num_sms);
}

/** First flattened iteration of stream-K CTA @p c: ⌊c·T/ctas⌋, T = units · kblocks. */
GEMM_SCHED_FN int64_t gemm_sched_streamk_begin(int64_t units, int kblocks, int ctas, int c) {
    return (int64_t)c * (units * kblocks) / ctas;
}

/** Stream-K CTA whose range holds flattened iteration @p it: ⌈(it+1)·ctas/T⌉ − 1. */
GEMM_SCHED_FN int gemm_sched_streamk_cta_of(int64_t units, int kblocks, int ctas, int64_t it) {
    return (int)(((it + 1) * ctas - 1) / (units * kblocks));
}

/**
 * The work item of stream-K CTA @p c that starts at flattened iteration @p it (its range's first
 * iteration, then each item's end). Returns 0 and fills @p w, or -1 past the CTA's range.
 */
GEMM_SCHED_FN int gemm_sched_streamk_item(int64_t units, int kblocks, int ctas, int c, int64_t it, GemmSplit *w) {
    const int64_t end = gemm_sched_streamk_begin(units, kblocks, ctas, c + 1);
    if (it >= end || it < gemm_sched_streamk_begin(units, kblocks, ctas, c)) return -1;
    const int64_t u = it / kblocks, u_end = (u + 1) * kblocks;
    w->pid = u;
    w->kb_begin = (int)(it - u * kblocks);
    w->kb_end = (int)((end < u_end ? end : u_end) - u * kblocks);
    w->first = gemm_sched_streamk_cta_of(units, kblocks, ctas, u * kblocks);
    w->nseg = gemm_sched_streamk_cta_of(units, kblocks, ctas, u_end - 1) - w->first + 1;
    w->seg = c - w->first;
    return 0;
}

#ifdef __cplusplus
}
#endif

#endif /* DSV3_KERNELS_GEMM_SCHED_H */
