/**
 * @file msg.c
 * @brief Tagged messages (msg.h): the in-process mailboxes and the collectives built on send/recv.
 */
#include "msg.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/** A message waiting in a mailbox. */
typedef struct Letter {
    int src;
    uint64_t tag;
    size_t n;
    struct Letter *next;
    unsigned char data[]; /* n bytes */
} Letter;

/** The mailboxes of every rank of an in-process group, behind one lock. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n;
    double timeout_s;
    Letter **box; /* [n] letters to each rank, oldest first */
} PostOffice;

static int local_send(MsgLink *l, int dst, uint64_t tag, const void *buf, size_t n, Err *err) {
    PostOffice *po = l->ctx;
    if (dst < 0 || dst >= po->n) return err_set(err, "message to rank %d of %d", dst, po->n);
    Letter *m = malloc(sizeof *m + (n ? n : 1));
    if (!m) return err_set(err, "out of memory for a message of %zu bytes", n);
    m->src = l->rank, m->tag = tag, m->n = n, m->next = NULL;
    if (n) memcpy(m->data, buf, n);
    pthread_mutex_lock(&po->mu);
    Letter **p = &po->box[dst];
    while (*p) p = &(*p)->next;
    *p = m;
    pthread_cond_broadcast(&po->cv);
    pthread_mutex_unlock(&po->mu);
    return 0;
}

static int local_recv(MsgLink *l, int src, uint64_t tag, void *buf, size_t n, Err *err) {
    PostOffice *po = l->ctx;
    if (src < 0 || src >= po->n) return err_set(err, "message from rank %d of %d", src, po->n);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)po->timeout_s;
    int rc = 0;
    pthread_mutex_lock(&po->mu);
    for (;;) {
        Letter **p = &po->box[l->rank];
        while (*p && !((*p)->src == src && (*p)->tag == tag)) p = &(*p)->next;
        if (*p) {
            Letter *m = *p;
            *p = m->next;
            if (m->n != n) rc = err_set(err, "rank %d expected %zu bytes from rank %d (tag %llx), got %zu", l->rank, n, src,
                                        (unsigned long long)tag, m->n);
            else if (n) memcpy(buf, m->data, n);
            free(m);
            break;
        }
        if (pthread_cond_timedwait(&po->cv, &po->mu, &until) == ETIMEDOUT) {
            rc = err_set(err, "rank %d waited %.0f s for a message from rank %d (tag %llx)", l->rank, po->timeout_s, src,
                         (unsigned long long)tag);
            break;
        }
    }
    pthread_mutex_unlock(&po->mu);
    return rc;
}

int msg_local_init(MsgLink *links, int n, double timeout_s, Err *err) {
    if (n < 1 || n > 4096) return err_set(err, "in-process group of %d ranks (1..4096)", n);
    PostOffice *po = calloc(1, sizeof *po);
    if (!po || !(po->box = calloc((size_t)n, sizeof *po->box))) {
        free(po);
        return err_set(err, "out of memory");
    }
    pthread_mutex_init(&po->mu, NULL);
    pthread_cond_init(&po->cv, NULL);
    po->n = n, po->timeout_s = timeout_s;
    for (int r = 0; r < n; r++) links[r] = (MsgLink){ r, n, local_send, local_recv, po };
    return 0;
}

void msg_local_free(MsgLink *links, int n) {
    PostOffice *po = n > 0 ? links[0].ctx : NULL;
    if (!po) return;
    for (int r = 0; r < po->n; r++)
        for (Letter *m = po->box[r], *next; m; m = next) next = m->next, free(m);
    pthread_mutex_destroy(&po->mu);
    pthread_cond_destroy(&po->cv);
    free(po->box);
    free(po);
    for (int r = 0; r < n; r++) links[r].ctx = NULL;
}

/* ------------------------------------------------------------------------------------- */
/* collectives                                                                             */

int msg_allreduce_f64(MsgLink *l, double *v, size_t n, uint64_t tag, Err *err) {
    if (l->nranks == 1) return 0;
    double *in = malloc((n ? n : 1) * sizeof *in), *acc = calloc(n ? n : 1, sizeof *acc);
    int rc = in && acc ? 0 : err_set(err, "out of memory");
    for (int d = 0; d < l->nranks && !rc; d++)
        if (d != l->rank) rc = l->send(l, d, tag, v, n * sizeof *v, err);
    for (int r = 0; r < l->nranks && !rc; r++) {
        const double *src = v;
        if (r != l->rank) {
            if ((rc = l->recv(l, r, tag, in, n * sizeof *in, err))) break;
            src = in;
        }
        for (size_t i = 0; i < n; i++) acc[i] += src[i];
    }
    if (!rc) memcpy(v, acc, n * sizeof *v);
    free(in), free(acc);
    return rc;
}

/** Where rank @p d's share of @p n values split over @p N ranks starts (shares differ by at most one). */
static size_t share(size_t n, int d, int N) { return (size_t)((unsigned long long)n * (unsigned long long)d / (unsigned long long)N); }

int msg_allreduce_f32(MsgLink *l, float *v, size_t n, uint64_t tag, Err *err) {
    int N = l->nranks, me = l->rank, rc = 0;
    if (N == 1) return 0;
    size_t lo = share(n, me, N), hi = share(n, me + 1, N), mine = hi - lo;
    float *in = malloc((mine ? mine : 1) * sizeof *in), *acc = calloc(mine ? mine : 1, sizeof *acc);
    if (!in || !acc) rc = err_set(err, "out of memory");
    /* reduce-scatter: share d of every rank goes to rank d, which adds them in rank order */
    for (int d = 0; d < N && !rc; d++)
        if (d != me) rc = l->send(l, d, tag, v + share(n, d, N), (share(n, d + 1, N) - share(n, d, N)) * sizeof *v, err);
    for (int r = 0; r < N && !rc; r++) {
        const float *src = v + lo;
        if (r != me) {
            if ((rc = l->recv(l, r, tag, in, mine * sizeof *in, err))) break;
            src = in;
        }
        for (size_t i = 0; i < mine; i++) acc[i] += src[i];
    }
    /* all-gather */
    if (!rc) memcpy(v + lo, acc, mine * sizeof *v);
    for (int d = 0; d < N && !rc; d++)
        if (d != me) rc = l->send(l, d, tag + 1, v + lo, mine * sizeof *v, err);
    for (int r = 0; r < N && !rc; r++)
        if (r != me) rc = l->recv(l, r, tag + 1, v + share(n, r, N), (share(n, r + 1, N) - share(n, r, N)) * sizeof *v, err);
    free(in), free(acc);
    return rc;
}

int msg_broadcast(MsgLink *l, void *buf, size_t n, uint64_t tag, Err *err) {
    if (l->rank != 0) return l->recv(l, 0, tag, buf, n, err);
    for (int d = 1; d < l->nranks; d++)
        if (l->send(l, d, tag, buf, n, err)) return -1;
    return 0;
}
