/**
 * @file pipeline.c
 * @brief Pipeline schedules (pipeline.h): the four builders, the list-scheduling simulator, the
 *        independent checker, Table 2's formulas and the gnuplot timeline.
 */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int pipe_kind_parse(const char *name, PipeKind *kind, Err *err) {
    static const char *const names[] = { "1f1b", "zb1p", "dualpipe", "dualpipev" };
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) return *kind = (PipeKind)i, 0;
    return err_set(err, "unknown schedule '%s' (1f1b, zb1p, dualpipe, dualpipev)", name);
}

const char *pipe_kind_name(PipeKind kind) {
    switch (kind) {
    case PIPE_1F1B: return "1F1B";
    case PIPE_ZB1P: return "ZB1P";
    case PIPE_DUALPIPE: return "DualPipe";
    case PIPE_DUALPIPEV: return "DualPipeV";
    }
    return "?";
}

int pipe_rank_of(const PipeSchedule *s, int dir, int stage, int *chunk) {
    int N = s->n_ranks;
    switch (s->kind) {
    case PIPE_DUALPIPE:
        *chunk = dir;
        return dir == 0 ? stage : N - 1 - stage;
    case PIPE_DUALPIPEV:
        *chunk = stage < N ? 0 : 1;
        return stage < N ? stage : 2 * N - 1 - stage;
    default:
        *chunk = 0;
        return stage;
    }
}

int pipe_chunk_stage(const PipeSchedule *s, int rank, int chunk, int *dir) {
    for (int d = 0; d < s->n_dirs; d++)
        for (int st = 0; st < s->n_stages; st++) {
            int ch;
            if (pipe_rank_of(s, d, st, &ch) == rank && ch == chunk) return *dir = d, st;
        }
    return -1;
}

/* ------------------------------------------------------------------------------------- */
/* building                                                                                */

/** One rank's list under construction: counters per local chunk and the FIFO of pending W's. */
typedef struct {
    const PipeSchedule *s;
    int rank, cap;
    PipeOp *ops;
    int n;
    int next_f[2], next_b[2]; /* the next micro-batch (within its direction) each chunk runs */
    PipeTask wq[512];         /* deferred weight gradients, oldest first (DualPipe's WeightGradStore) */
    int wq_head, wq_tail;
    int failed;
} Builder;

static void push(Builder *b, PipeOp op) {
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 64;
        PipeOp *p = realloc(b->ops, (size_t)cap * sizeof *p);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->ops = p, b->cap = cap;
    }
    op.start = op.end = -1;
    b->ops[b->n++] = op;
}

/** The task a rank's local chunk @p chunk runs next for a forward (@p fwd) or a backward. */
static PipeTask next_task(Builder *b, int chunk, int fwd) {
    const PipeSchedule *s = b->s;
    int N = s->n_ranks, r = b->rank, k = fwd ? b->next_f[chunk]++ : b->next_b[chunk]++;
    PipeTask t = { k, r, 0, chunk };
    if (s->kind == PIPE_DUALPIPE) {
        t.dir = chunk;
        t.stage = chunk == 0 ? r : N - 1 - r;
        t.mb = chunk * (s->n_mb / 2) + k;
    } else if (s->kind == PIPE_DUALPIPEV) {
        t.stage = chunk == 0 ? r : 2 * N - 1 - r;
    }
    return t;
}

static void op_f(Builder *b, int chunk) { push(b, (PipeOp){ PIPE_F, next_task(b, chunk, 1), { 0, 0, 0, 0 }, 0, 0 }); }
static void op_b(Builder *b, int chunk) { push(b, (PipeOp){ PIPE_B, { 0, 0, 0, 0 }, next_task(b, chunk, 0), 0, 0 }); }
/** A backward whose weight gradient is deferred to the FIFO. */
static void op_bin(Builder *b, int chunk) {
    PipeTask t = next_task(b, chunk, 0);
    push(b, (PipeOp){ PIPE_BIN, { 0, 0, 0, 0 }, t, 0, 0 });
    if (b->wq_tail - b->wq_head >= (int)(sizeof b->wq / sizeof b->wq[0])) {
        b->failed = 1;
        return;
    }
    b->wq[b->wq_tail++ % (int)(sizeof b->wq / sizeof b->wq[0])] = t;
}
/** The oldest deferred weight gradient. */
static void op_w(Builder *b) {
    DSV3_ASSERT(b->wq_head < b->wq_tail);
    PipeTask t = b->wq[b->wq_head++ % (int)(sizeof b->wq / sizeof b->wq[0])];
    push(b, (PipeOp){ PIPE_W, { 0, 0, 0, 0 }, t, 0, 0 });
}
static void op_fb(Builder *b, int fchunk, int bchunk) {
    PipeTask f = next_task(b, fchunk, 1), bk = next_task(b, bchunk, 0);
    push(b, (PipeOp){ PIPE_FB, f, bk, 0, 0 });
}

/** 1F1B on rank r: N−1−r warm-up forwards, then forward/backward alternating, then the rest of the backwards. */
static void build_1f1b(Builder *b) {
    int N = b->s->n_ranks, M = b->s->n_mb, warm = N - 1 - b->rank < M ? N - 1 - b->rank : M;
    for (int i = 0; i < warm; i++) op_f(b, 0);
    for (int i = 0; i < M - warm; i++) op_f(b, 0), op_b(b, 0);
    for (int i = 0; i < warm; i++) op_b(b, 0);
}

/**
 * ZB1P (ZB-H1): 1F1B's order of forwards and input backwards, with rank r holding back the
 * weight gradients of its first r backwards: in the steady state each B_in is followed by the
 * W of the micro-batch r places earlier, and the held-back W's run at the very end, where rank r
 * would otherwise wait for the cool-down of the ranks after it. Memory stays 1F1B's.
 */
static void build_zb1p(Builder *b) {
    int N = b->s->n_ranks, M = b->s->n_mb, r = b->rank, warm = N - 1 - r < M ? N - 1 - r : M;
    int hold = r < M ? r : M; /* W's held back */
    int done_b = 0;
    for (int i = 0; i < warm; i++) op_f(b, 0);
    for (int i = 0; i < M - warm; i++) {
        op_f(b, 0), op_bin(b, 0), done_b++;
        if (done_b > hold) op_w(b);
    }
    for (int i = 0; i < warm; i++) {
        op_bin(b, 0), done_b++;
        if (done_b > hold) op_w(b);
    }
    while (b->wq_head < b->wq_tail) op_w(b);
}

/**
 * DualPipe / DualPipeV on one rank: the eight phases of DeepSeek's schedule. H is the number of
 * "half" ranks (DualPipe: PP/2; DualPipeV: PP), h this rank's distance from the nearer end
 * (DualPipe: min(r, PP−1−r); DualPipeV: r), C the micro-batches per local chunk, and @p edge
 * marks the rank where the two paths meet (DualPipe: the two middle ranks; DualPipeV: the last).
 * Chunk 0 is the path that reaches this rank first. For DualPipe ranks in the second half, phase 0
 * is direction 1 (its stage copy for the reverse path), hence @p flip.
 */
static void build_dual(Builder *b, int H, int h, int C, int edge, int flip) {
    int p0 = 0 ^ flip, p1 = 1 ^ flip;
    /* 1: nF0 — forwards of the first path fill the pipe */
    for (int i = 0; i < 2 * (H - h - 1); i++) op_f(b, p0);
    /* 2: nF0F1 — the second path starts */
    for (int i = 0; i < h + 1; i++) op_f(b, p0), op_f(b, p1);
    /* 3: nB1W1F1 — zero-bubble backwards of the second path */
    for (int i = 0; i < H - h - 1; i++) op_bin(b, p1), op_w(b), op_f(b, p1);
    /* 4: the main loop, nF0B1F1B0 as overlapped pairs (the meeting rank does not overlap its first one) */
    for (int i = 0; i < C - 2 * H + h + 1; i++) {
        if (i == 0 && edge) op_f(b, p0), op_b(b, p1);
        else op_fb(b, p0, p1);
        op_fb(b, p1, p0);
    }
    /* 5: nB1F1B0 */
    for (int i = 0; i < H - h - 1; i++) op_b(b, p1), op_fb(b, p1, p0);
    /* 6: nB1B0 — the second half of them defer their weight gradients */
    int zb = 0, n6 = h + 1;
    for (int i = 0; i < n6; i++) {
        if (i == n6 / 2 && h % 2 == 1) zb = 1;
        zb ? op_bin(b, p1) : op_b(b, p1);
        if (i == n6 / 2 && h % 2 == 0) zb = 1;
        zb ? op_bin(b, p0) : op_b(b, p0);
    }
    /* 7: nWB0 */
    for (int i = 0; i < H - h - 1; i++) op_w(b), op_bin(b, p0);
    /* 8: nW — whatever is left */
    while (b->wq_head < b->wq_tail) op_w(b);
}

int pipe_build(PipeSchedule *s, PipeKind kind, int n_ranks, int n_mb, Err *err) {
    memset(s, 0, sizeof *s);
    if (n_ranks < 1 || n_ranks > 1024) return err_set(err, "pipeline: %d ranks (1..1024)", n_ranks);
    if (n_mb < 1 || n_mb > 1 << 16) return err_set(err, "pipeline: %d micro-batches (1..65536)", n_mb);
    if (kind == PIPE_DUALPIPE && (n_ranks % 2 || n_mb % 2 || n_mb < 2 * n_ranks))
        return err_set(err, "DualPipe needs an even number of ranks and an even number of micro-batches of at least 2 x ranks "
                            "(got %d ranks, %d micro-batches)", n_ranks, n_mb);
    if (kind == PIPE_DUALPIPEV && n_mb < 2 * n_ranks)
        return err_set(err, "DualPipeV needs at least 2 x ranks micro-batches (got %d ranks, %d micro-batches)", n_ranks, n_mb);
    s->kind = kind;
    s->n_ranks = n_ranks;
    s->n_mb = n_mb;
    s->n_stages = kind == PIPE_DUALPIPEV ? 2 * n_ranks : n_ranks;
    s->n_dirs = kind == PIPE_DUALPIPE ? 2 : 1;
    s->chunks = kind == PIPE_DUALPIPE || kind == PIPE_DUALPIPEV ? 2 : 1;
    s->n_ops = xcalloc((size_t)n_ranks, sizeof *s->n_ops);
    s->ops = xcalloc((size_t)n_ranks, sizeof *s->ops);
    if (!s->n_ops || !s->ops) {
        pipe_free(s);
        return err_set(err, "out of memory");
    }
    for (int r = 0; r < n_ranks; r++) {
        Builder b;
        memset(&b, 0, sizeof b);
        b.s = s, b.rank = r;
        switch (kind) {
        case PIPE_1F1B: build_1f1b(&b); break;
        case PIPE_ZB1P: build_zb1p(&b); break;
        case PIPE_DUALPIPE: {
            int H = n_ranks / 2, h = r < n_ranks - 1 - r ? r : n_ranks - 1 - r;
            build_dual(&b, H, h, n_mb / 2, r == H - 1 || r == H, r >= H);
            break;
        }
        case PIPE_DUALPIPEV: build_dual(&b, n_ranks, r, n_mb, r == n_ranks - 1, 0); break;
        }
        s->ops[r] = b.ops, s->n_ops[r] = b.n;
        if (b.failed) {
            pipe_free(s);
            return err_set(err, "out of memory building the schedule");
        }
    }
    return 0;
}

void pipe_free(PipeSchedule *s) {
    if (s->ops)
        for (int r = 0; r < s->n_ranks; r++) free(s->ops[r]);
    free(s->ops);
    free(s->n_ops);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------------------------- */
/* simulation                                                                              */

double pipe_op_time(const PipeOp *op, const PipeTimes *t) {
    switch (op->kind) {
    case PIPE_F: return t->f;
    case PIPE_B: return t->b;
    case PIPE_BIN: return t->b - t->w;
    case PIPE_W: return t->w;
    case PIPE_FB: return t->fb;
    }
    return 0;
}

/** End times of every chunk, indexed [dir][stage][mb]; −1: not run yet. */
typedef struct {
    const PipeSchedule *s;
    double *f, *b, *w;
} Ends;

static size_t at(const PipeSchedule *s, const PipeTask *t) {
    return ((size_t)t->dir * (size_t)s->n_stages + (size_t)t->stage) * (size_t)s->n_mb + (size_t)t->mb;
}

static int ends_init(Ends *e, const PipeSchedule *s) {
    size_t n = (size_t)s->n_dirs * (size_t)s->n_stages * (size_t)s->n_mb;
    e->s = s;
    e->f = malloc(n * sizeof *e->f), e->b = malloc(n * sizeof *e->b), e->w = malloc(n * sizeof *e->w);
    if (!e->f || !e->b || !e->w) return -1;
    for (size_t i = 0; i < n; i++) e->f[i] = e->b[i] = e->w[i] = -1;
    return 0;
}

static void ends_free(Ends *e) {
    free(e->f), free(e->b), free(e->w);
}

/** When the input of a forward exists at rank @p rank (−1: not yet). */
static double f_ready(const Ends *e, const PipeTask *t, int rank, double comm) {
    if (t->stage == 0) return 0;
    PipeTask prev = *t;
    prev.stage--;
    double end = e->f[at(e->s, &prev)];
    int ch;
    return end < 0 ? -1 : end + (pipe_rank_of(e->s, t->dir, prev.stage, &ch) != rank ? comm : 0);
}

/** When the input of a backward exists (the next stage's input gradient; the last stage: its own forward). */
static double b_ready(const Ends *e, const PipeTask *t, int rank, double comm) {
    double own = e->f[at(e->s, t)];
    if (own < 0) return -1;
    if (t->stage == e->s->n_stages - 1) return own;
    PipeTask next = *t;
    next.stage++;
    double end = e->b[at(e->s, &next)];
    int ch;
    if (end < 0) return -1;
    end += pipe_rank_of(e->s, t->dir, next.stage, &ch) != rank ? comm : 0;
    return end > own ? end : own;
}

/** When an operation's inputs all exist (−1: not yet). */
static double op_ready(const Ends *e, const PipeOp *op, int rank, double comm) {
    double r = 0, x;
    if (op->kind == PIPE_F || op->kind == PIPE_FB) {
        if ((x = f_ready(e, &op->f, rank, comm)) < 0) return -1;
        r = x > r ? x : r;
    }
    if (op->kind == PIPE_B || op->kind == PIPE_BIN || op->kind == PIPE_FB) {
        if ((x = b_ready(e, &op->b, rank, comm)) < 0) return -1;
        r = x > r ? x : r;
    }
    if (op->kind == PIPE_W) {
        if ((x = e->b[at(e->s, &op->b)]) < 0) return -1;
        r = x > r ? x : r;
    }
    return r;
}

static void op_done(Ends *e, const PipeOp *op) {
    if (op->kind == PIPE_F || op->kind == PIPE_FB) e->f[at(e->s, &op->f)] = op->end;
    if (op->kind == PIPE_B || op->kind == PIPE_BIN || op->kind == PIPE_FB) e->b[at(e->s, &op->b)] = op->end;
    if (op->kind == PIPE_B || op->kind == PIPE_FB || op->kind == PIPE_W) e->w[at(e->s, &op->b)] = op->end;
}

static const char *op_name(PipeOpKind k) {
    static const char *const n[] = { "F", "B", "B_in", "W", "F&B" };
    return n[k];
}

/** "F mb 3 stage 2" (for FB both parts). */
static void describe(const PipeOp *op, char *buf, size_t n) {
    const PipeTask *t = op->kind == PIPE_F ? &op->f : &op->b;
    if (op->kind == PIPE_FB)
        snprintf(buf, n, "F&B (F mb %d stage %d dir %d, B mb %d stage %d dir %d)", op->f.mb, op->f.stage, op->f.dir, op->b.mb,
                 op->b.stage, op->b.dir);
    else snprintf(buf, n, "%s mb %d stage %d dir %d", op_name(op->kind), t->mb, t->stage, t->dir);
}

int pipe_simulate(PipeSchedule *s, const PipeTimes *t, double (*op_time)(void *ctx, int rank, const PipeOp *op),
                  void *ctx, Err *err) {
    Ends e;
    int *next = xcalloc((size_t)s->n_ranks, sizeof *next);
    double *free_at = xcalloc((size_t)s->n_ranks, sizeof *free_at);
    int rc = 0;
    if (!next || !free_at || ends_init(&e, s)) {
        free(next), free(free_at);
        ends_free(&e);
        return err_set(err, "out of memory");
    }
    for (;;) {
        int progress = 0, left = 0;
        for (int r = 0; r < s->n_ranks; r++) {
            while (next[r] < s->n_ops[r]) {
                PipeOp *op = &s->ops[r][next[r]];
                double ready = op_ready(&e, op, r, t->comm);
                if (ready < 0) break;
                op->start = ready > free_at[r] ? ready : free_at[r];
                op->end = op->start + (op_time ? op_time(ctx, r, op) : pipe_op_time(op, t));
                free_at[r] = op->end;
                op_done(&e, op);
                next[r]++, progress = 1;
            }
            left += next[r] < s->n_ops[r];
        }
        if (!left) break;
        if (!progress) {
            char d[160];
            int r = 0;
            while (next[r] == s->n_ops[r]) r++;
            describe(&s->ops[r][next[r]], d, sizeof d);
            rc = err_set(err, "%s schedule deadlocks: rank %d waits at operation %d (%s) and %d rank(s) are stuck",
                         pipe_kind_name(s->kind), r, next[r], d, left);
            break;
        }
    }
    free(next), free(free_at);
    ends_free(&e);
    return rc;
}

/* ------------------------------------------------------------------------------------- */
/* checking                                                                                */

int pipe_check(const PipeSchedule *s, Err *err) {
    Ends e;
    if (ends_init(&e, s)) {
        ends_free(&e);
        return err_set(err, "out of memory");
    }
    size_t n = (size_t)s->n_dirs * (size_t)s->n_stages * (size_t)s->n_mb;
    unsigned char *seen = calloc(n, 3); /* F, backward (B / B_in / FB), W seen */
    int rc = 0;
    const double eps = 1e-9;
    char d[160];
    if (!seen) rc = err_set(err, "out of memory");
    /* Pass 1: placement, counts and end times. */
    for (int r = 0; r < s->n_ranks && !rc; r++)
        for (int i = 0; i < s->n_ops[r] && !rc; i++) {
            const PipeOp *op = &s->ops[r][i];
            describe(op, d, sizeof d);
            const PipeTask *parts[2] = { op->kind == PIPE_F || op->kind == PIPE_FB ? &op->f : NULL,
                                         op->kind != PIPE_F ? &op->b : NULL };
            for (int p = 0; p < 2 && !rc; p++) {
                const PipeTask *t = parts[p];
                if (!t) continue;
                int ch, half = s->n_dirs == 2 ? s->n_mb / 2 : s->n_mb;
                int lo = s->n_dirs == 2 ? t->dir * half : 0;
                if (t->dir < 0 || t->dir >= s->n_dirs || t->stage < 0 || t->stage >= s->n_stages || t->mb < lo || t->mb >= lo + half)
                    rc = err_set(err, "rank %d operation %d (%s): no such micro-batch, stage or direction", r, i, d);
                else if (pipe_rank_of(s, t->dir, t->stage, &ch) != r || ch != t->chunk)
                    rc = err_set(err, "rank %d operation %d (%s): that stage lives on rank %d", r, i, d,
                                 pipe_rank_of(s, t->dir, t->stage, &ch));
            }
            if (rc) break;
            if (op->end < op->start - eps || op->start < 0) rc = err_set(err, "rank %d operation %d (%s) was not simulated", r, i, d);
            else if (i > 0 && op->start < s->ops[r][i - 1].end - eps)
                rc = err_set(err, "rank %d runs operation %d (%s) before operation %d ends", r, i, d, i - 1);
            if (rc) break;
            unsigned char *k = seen + 3 * at(s, op->kind == PIPE_F ? &op->f : &op->b);
            if (op->kind == PIPE_F || op->kind == PIPE_FB) {
                unsigned char *kf = seen + 3 * at(s, &op->f);
                if (kf[0]++) rc = err_set(err, "rank %d operation %d (%s): a second forward of that chunk", r, i, d);
            }
            if (op->kind == PIPE_B || op->kind == PIPE_BIN || op->kind == PIPE_FB) {
                if (k[1]++) rc = err_set(err, "rank %d operation %d (%s): a second backward of that chunk", r, i, d);
                if (op->kind != PIPE_BIN) k[2]++;
            }
            if (op->kind == PIPE_W && k[2]++) rc = err_set(err, "rank %d operation %d (%s): a second weight gradient", r, i, d);
            op_done(&e, op);
        }
    for (size_t j = 0; j < n && !rc; j++)
        if (seen[3 * j] != 1 || seen[3 * j + 1] != 1 || seen[3 * j + 2] != 1) {
            int mb = (int)(j % (size_t)s->n_mb), st = (int)(j / (size_t)s->n_mb % (size_t)s->n_stages);
            int dir = (int)(j / ((size_t)s->n_mb * (size_t)s->n_stages));
            int half = s->n_dirs == 2 ? s->n_mb / 2 : s->n_mb;
            if (mb / half != dir && s->n_dirs == 2) continue; /* not a micro-batch of that direction */
            rc = err_set(err, "micro-batch %d at stage %d (direction %d) has %d forward(s), %d backward(s), %d weight gradient(s)",
                         mb, st, dir, seen[3 * j], seen[3 * j + 1], seen[3 * j + 2]);
        }
    /* Pass 2: nothing starts before its inputs end (the end times of pass 1; comm not counted). */
    for (int r = 0; r < s->n_ranks && !rc; r++)
        for (int i = 0; i < s->n_ops[r] && !rc; i++) {
            const PipeOp *op = &s->ops[r][i];
            double ready = op_ready(&e, op, r, 0);
            if (ready < 0 || ready > op->start + eps) {
                describe(op, d, sizeof d);
                rc = err_set(err, "rank %d operation %d (%s) starts at %g before its input exists", r, i, d, op->start);
            }
        }
    free(seen);
    ends_free(&e);
    return rc;
}

/* ------------------------------------------------------------------------------------- */
/* statistics and formulas                                                                 */

void pipe_stats(const PipeSchedule *s, PipeStats *st) {
    memset(st, 0, sizeof *st);
    double t0 = INFINITY, t1 = -INFINITY, idle_total = 0;
    for (int r = 0; r < s->n_ranks; r++)
        for (int i = 0; i < s->n_ops[r]; i++) {
            t0 = fmin(t0, s->ops[r][i].start);
            t1 = fmax(t1, s->ops[r][i].end);
        }
    if (t0 > t1) return;
    st->makespan = t1 - t0;
    st->bubble_min = INFINITY;
    for (int r = 0; r < s->n_ranks; r++) {
        double busy = 0;
        int act = 0, peak = 0;
        for (int i = 0; i < s->n_ops[r]; i++) {
            const PipeOp *op = &s->ops[r][i];
            busy += op->end - op->start;
            /* a forward's activations live from its start until its backward has the input gradient */
            if (op->kind == PIPE_F || op->kind == PIPE_FB) act++, peak = act > peak ? act : peak;
            if (op->kind == PIPE_B || op->kind == PIPE_BIN || op->kind == PIPE_FB) act--;
        }
        double idle = st->makespan - busy;
        idle_total += idle;
        if (r == 0 || idle > st->bubble) st->bubble = idle, st->busy = busy;
        st->bubble_min = fmin(st->bubble_min, idle);
        st->peak_act = peak > st->peak_act ? peak : st->peak_act;
        if (r == 0) st->peak_act_rank0 = peak;
    }
    st->bubble_frac = idle_total / ((double)s->n_ranks * st->makespan);
    st->param_copies = s->chunks;
}

double pipe_formula(PipeKind kind, int n_ranks, const PipeTimes *t, int *act, int *params) {
    int pp = kind == PIPE_DUALPIPEV ? 2 * n_ranks : n_ranks; /* stages, as Table 2 counts PP */
    double bubble = 0;
    int a = pp, p = 1;
    switch (kind) {
    case PIPE_1F1B: bubble = (pp - 1) * (t->f + t->b); break;
    case PIPE_ZB1P: bubble = (pp - 1) * (t->f + t->b - 2 * t->w); break;
    case PIPE_DUALPIPE:
    case PIPE_DUALPIPEV:
        bubble = (pp / 2 - 1) * (t->fb + t->b - 3 * t->w);
        a = pp + 1, p = 2;
        break;
    }
    if (act) *act = a;
    if (params) *params = p;
    return bubble;
}

/* ------------------------------------------------------------------------------------- */
/* output                                                                                  */

void pipe_print_events(FILE *f, const PipeSchedule *s) {
    fprintf(f, "# rank start end op mb stage dir [mb2 stage2 dir2]\n");
    for (int r = 0; r < s->n_ranks; r++)
        for (int i = 0; i < s->n_ops[r]; i++) {
            const PipeOp *op = &s->ops[r][i];
            const PipeTask *t = op->kind == PIPE_F || op->kind == PIPE_FB ? &op->f : &op->b;
            fprintf(f, "%d %.6g %.6g %s %d %d %d", r, op->start, op->end, op_name(op->kind), t->mb, t->stage, t->dir);
            if (op->kind == PIPE_FB) fprintf(f, " %d %d %d", op->b.mb, op->b.stage, op->b.dir);
            fprintf(f, "\n");
        }
}

/** Colours: forward orange, full backward green, input backward teal, weight blue; direction 1 darker. */
static const char *colour(PipeOpKind k, int dir) {
    static const char *const c[2][4] = { { "#f6b26b", "#93c47d", "#76d7c4", "#9fc5e8" },
                                         { "#e06666", "#38761d", "#138d75", "#3d85c6" } };
    int i = k == PIPE_F ? 0 : k == PIPE_B ? 1 : k == PIPE_BIN ? 2 : 3;
    return c[dir ? 1 : 0][i];
}

/** One box: x range, row (rank), the half of the row it fills, its colour and label. */
static void box(FILE *f, double x0, double x1, int rank, double y0, double y1, const char *col, int label, int *n) {
    ++*n;
    fprintf(f, "set object %d rect from %.6g,%.4g to %.6g,%.4g fc rgb '%s' fs solid 1.0 border lc rgb '#555555' lw 0.5\n", *n,
            x0, rank + y0, x1, rank + y1, col);
    if (label >= 0) fprintf(f, "set label '%d' at %.6g,%.4g center front font ',7'\n", label, (x0 + x1) / 2, rank + (y0 + y1) / 2);
}

int pipe_write_gnuplot(FILE *f, const PipeSchedule *s, const char *png, const char *title, Err *err) {
    PipeStats st;
    pipe_stats(s, &st);
    if (st.makespan <= 0) return err_set(err, "the schedule has not been simulated");
    double width = 1600, height = 150 + 40 * s->n_ranks;
    fprintf(f, "# %s: %d ranks, %d stages, %d micro-batches (written by dsv3 pipeline)\n", pipe_kind_name(s->kind), s->n_ranks,
            s->n_stages, s->n_mb);
    fprintf(f, "set terminal pngcairo size %d,%d font 'sans,9'\nset output '%s'\n", (int)width, (int)height, png);
    fprintf(f, "set title \"%s\" noenhanced\n", title);
    fprintf(f, "set xrange [0:%.6g]\nset yrange [%g:-0.5]\nset ytics 1\nset ylabel 'rank'\nset xlabel 'time'\n",
            st.makespan * 1.001, s->n_ranks - 0.5);
    fprintf(f, "unset key\nset grid xtics lc rgb '#dddddd'\n");
    int n = 0;
    for (int r = 0; r < s->n_ranks; r++)
        for (int i = 0; i < s->n_ops[r]; i++) {
            const PipeOp *op = &s->ops[r][i];
            if (op->kind == PIPE_FB) { /* forward on the top half, backward below, one border around both */
                box(f, op->start, op->end, r, -0.4, 0.0, colour(PIPE_F, op->f.dir), op->f.mb, &n);
                box(f, op->start, op->end, r, 0.0, 0.4, colour(PIPE_B, op->b.dir), op->b.mb, &n);
                ++n;
                fprintf(f, "set object %d rect from %.6g,%.4g to %.6g,%.4g fs empty border lc rgb '#000000' lw 1.5 front\n", n,
                        op->start, r - 0.4, op->end, r + 0.4);
            } else {
                const PipeTask *t = op->kind == PIPE_F ? &op->f : &op->b;
                box(f, op->start, op->end, r, -0.4, 0.4, colour(op->kind, t->dir), t->mb, &n);
            }
        }
    /* the legend: invisible plots carrying the colours */
    const char *names[4] = { "forward", "backward", "backward (input)", "backward (weights)" };
    PipeOpKind kinds[4] = { PIPE_F, PIPE_B, PIPE_BIN, PIPE_W };
    fprintf(f, "set key below horizontal maxrows 2\nplot ");
    for (int d = 0; d < s->n_dirs; d++)
        for (int k = 0; k < 4; k++)
            fprintf(f, "%sNaN with boxes fs solid lc rgb '%s' title '%s%s'", d || k ? ", " : "", colour(kinds[k], d), names[k],
                    s->n_dirs == 2 ? (d ? ", direction 1" : ", direction 0") : "");
    fprintf(f, "\n");
    return ferror(f) ? err_set(err, "writing the gnuplot script failed") : 0;
}

int pipe_times_check(const PipeTimes *t, Err *err) {
    if (!(t->f >= 0 && t->b >= 0 && t->w >= 0 && t->fb >= 0 && t->comm >= 0 && t->w <= t->b))
        return err_set(err, "chunk times must be non-negative and W may not exceed B (F %g, B %g, W %g, F&B %g, comm %g)", t->f,
                       t->b, t->w, t->fb, t->comm);
    return 0;
}

int pipe_run(PipeSchedule *s, PipeKind kind, int pp, int n_mb, const PipeTimes *t, PipeStats *st, Err *err) {
    if (kind == PIPE_DUALPIPEV && (pp < 2 || pp % 2))
        return err_set(err, "DualPipeV needs an even number of stages (got %d): it runs them on %d/2 ranks", pp, pp);
    if (pipe_times_check(t, err)) return -1;
    if (pipe_build(s, kind, kind == PIPE_DUALPIPEV ? pp / 2 : pp, n_mb, err)) return -1;
    if (pipe_simulate(s, t, NULL, NULL, err) || pipe_check(s, err)) {
        pipe_free(s);
        return -1;
    }
    pipe_stats(s, st);
    return 0;
}

void pipe_print_summary(FILE *f, const PipeSchedule *s, const PipeStats *st, const PipeTimes *t) {
    int act, par;
    double formula = pipe_formula(s->kind, s->n_ranks, t, &act, &par);
    fprintf(f, "%-10s %3d ranks %3d stages  bubble %9.4g (Table 2: %9.4g)  idle %5.1f%%  activations %3d (Table 2: %3d)  "
               "parameters %dx  makespan %.4g\n",
            pipe_kind_name(s->kind), s->n_ranks, s->n_stages, st->bubble, formula, 100 * st->bubble_frac, st->peak_act, act,
            st->param_copies, st->makespan);
}

int pipe_draw_png(const PipeSchedule *s, const char *png, const char *title_in, Err *err) {
    char title[200], tmp[4096];
    if (title_in) snprintf(title, sizeof title, "%s", title_in);
    else snprintf(title, sizeof title, "%s: %d ranks, %d stages, %d micro-batches", pipe_kind_name(s->kind), s->n_ranks, s->n_stages,
             s->n_mb);
    for (const char *p = png; *p; p++)
        if (*p == '\'' || *p == '\\' || *p == '\n') return err_set(err, "%s: the file name may not contain quotes or backslashes", png);
    if (snprintf(tmp, sizeof tmp, "%s.tmp", png) >= (int)sizeof tmp) return err_set(err, "%s: path too long", png);
    FILE *g = popen("gnuplot", "w"); /* its messages go to our stderr */
    if (!g) return err_set(err, "cannot start gnuplot (Debian package gnuplot-nox)");
    int rc = pipe_write_gnuplot(g, s, tmp, title, err);
    int st = pclose(g);
    FILE *chk = rc || st ? NULL : fopen(tmp, "rb");
    unsigned char sig[8] = { 0 };
    size_t n = chk ? fread(sig, 1, 8, chk) : 0;
    if (chk) fclose(chk);
    if (!rc && st) rc = err_set(err, st == 127 << 8 ? "gnuplot is not installed (apt-get install gnuplot-nox)"
                                                   : "gnuplot failed drawing %s (exit status %d)", png, st >> 8);
    else if (!rc && (n != 8 || memcmp(sig, "\x89PNG\r\n\x1a\n", 8))) rc = err_set(err, "gnuplot did not write a PNG file to %s", png);
    else if (!rc && rename(tmp, png)) rc = err_set(err, "%s: cannot rename %s into place", png, tmp);
    if (rc) remove(tmp);
    return rc;
}
