/**
 * @file ep_socket.c
 * @brief The TCP transport of expert parallelism between processes (see ep_socket.h).
 */
#include "ep_socket.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { MAGIC = 0x64737665 /* "dsve" */ };

/** The 8-byte header of a heartbeat frame: no length can be this (payloads are far smaller). */
#define HEARTBEAT UINT64_MAX

/** One peer's progress through the current alltoallv. */
typedef struct {
    uint64_t hdr_out, hdr_in; /* the length sent first, the length received */
    size_t out_done, in_done; /* bytes of header + payload done each way */
    int heard;                /* a byte arrived from this peer in the current window */
    int quiet;                /* consecutive windows without one */
} Flow;

/** A tagged message (ep_socket_link) that arrived before its recv. */
typedef struct Parcel {
    uint64_t tag;
    size_t n;
    struct Parcel *next;
    unsigned char data[]; /* n bytes */
} Parcel;

/** What has come from one peer on the message path: the message being read and those complete. */
typedef struct {
    uint64_t hdr[3];     /* {MSG_MAGIC, tag, length} */
    size_t got;          /* bytes of header + payload read of the current message */
    Parcel *cur;         /* its payload, once the header is in */
    Parcel *head, *tail; /* complete messages, oldest first */
    int closed;          /* the peer closed its end */
    double heard_at;     /* when a byte (a message's or a heartbeat's) last came from the peer */
} Inbox;

typedef struct {
    int rank, nranks;
    Inbox *inbox;  /* [nranks] tagged messages received (ep_socket_link); inbox[rank]: sent to itself */
    int *fd;       /* [nranks] one connection per peer, −1 for this rank */
    Flow *flow;    /* [nranks] */
    struct pollfd *pfd; /* [nranks] */
    int *peer_of;  /* [nranks] which peer each pfd entry is */
    int broken;    /* an earlier call failed: the byte streams are out of step */
    /* liveness: the heartbeat thread and the exchange share each socket's sending side under lock */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t hb_thread;
    int hb_started, hb_stop;
    double hb_interval;  /* seconds between heartbeats to an idle peer */
    int quiet_limit;     /* windows of hb_interval without a byte after which a peer counts as gone */
    double timeout_s;    /* DSV3_EP_TIMEOUT as given, for messages */
    int *out_busy;       /* [nranks] a data frame to that peer is partly sent: no heartbeat may cut in */
    int *hb_left;        /* [nranks] bytes of a heartbeat still to send (it is finished before any data) */
    double *last_send;   /* [nranks] when bytes last went to that peer */
} Mesh;

static void mesh_free(Mesh *m) {
    if (!m) return;
    for (int r = 0; m->inbox && r < m->nranks; r++) {
        free(m->inbox[r].cur);
        for (Parcel *q = m->inbox[r].head, *next; q; q = next) next = q->next, free(q);
    }
    free(m->inbox);
    if (m->hb_started) {
        pthread_mutex_lock(&m->lock);
        m->hb_stop = 1;
        pthread_cond_signal(&m->wake);
        pthread_mutex_unlock(&m->lock);
        pthread_join(m->hb_thread, NULL);
        pthread_mutex_destroy(&m->lock);
        pthread_cond_destroy(&m->wake);
    }
    for (int r = 0; m->fd && r < m->nranks; r++)
        if (m->fd[r] >= 0) close(m->fd[r]);
    free(m->fd), free(m->flow), free(m->pfd), free(m->peer_of);
    free(m->out_busy), free(m->hb_left), free(m->last_send);
    free(m);
}

/** Low latency for the small count messages, keep-alive for peers that vanish, non-blocking I/O. */
static void tune(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
}

/** Sends what is left of a heartbeat to @p p without blocking (under lock); 1 when none is left. */
static int hb_flush(Mesh *m, int p) {
    static const unsigned char ones[8] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    while (m->hb_left[p] > 0) {
        ssize_t k = send(m->fd[p], ones + 8 - m->hb_left[p], (size_t)m->hb_left[p], MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return 0; /* full (later) or broken (the exchange reports it) */
        m->hb_left[p] -= (int)k;
    }
    m->last_send[p] = now_seconds();
    return 1;
}

/**
 * The heartbeat thread: every half interval, a heartbeat to each peer that has not been sent
 * anything for an interval — also while this rank computes or waits outside any exchange (an
 * expert server between requests, rank 0 while the user types). A stopped process (SIGSTOP)
 * stops its heartbeats too, which is what lets its peers tell it from a busy one.
 */
static void *hb_main(void *arg) {
    Mesh *m = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the main thread's */
    pthread_mutex_lock(&m->lock);
    while (!m->hb_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long ns = ts.tv_nsec + (long)(m->hb_interval * 0.5e9);
        ts.tv_sec += ns / 1000000000L, ts.tv_nsec = ns % 1000000000L;
        pthread_cond_timedwait(&m->wake, &m->lock, &ts);
        if (m->hb_stop) break;
        double t = now_seconds();
        for (int p = 0; p < m->nranks; p++) {
            if (p == m->rank || m->fd[p] < 0 || m->out_busy[p]) continue;
            if (m->hb_left[p] == 0 && t - m->last_send[p] >= m->hb_interval) m->hb_left[p] = 8;
            if (m->hb_left[p]) hb_flush(m, p);
        }
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/** Moves as many bytes as the socket takes of the 8-byte header + payload; 1 when the peer closed. */
static int pump(int fd, uint64_t *hdr, char *payload, size_t total, size_t *done, int sending, int *closed) {
    while (*done < total) {
        char *p = *done < 8 ? (char *)hdr + *done : payload + (*done - 8);
        size_t want = *done < 8 ? 8 - *done : total - *done;
        ssize_t k = sending ? send(fd, p, want, MSG_NOSIGNAL | MSG_DONTWAIT) : recv(fd, p, want, MSG_DONTWAIT);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (k <= 0) {
            *closed = 1;
            return k == 0 ? 0 : -errno;
        }
        *done += (size_t)k;
        if (!sending && *done == 8) return 0; /* the caller checks the length before any payload lands */
    }
    return 0;
}

/**
 * A peer whose frame to us is complete while ours to it is not: consumes the heartbeats it
 * sends meanwhile (MSG_PEEK, so the header of a later frame is never taken). 1 when some arrived.
 */
static int drain_heartbeats(int fd, int *closed) {
    int got = 0;
    for (;;) {
        uint64_t h;
        ssize_t k = recv(fd, &h, 8, MSG_PEEK | MSG_DONTWAIT);
        if (k < 0 && errno == EINTR) continue;
        if (k == 0) *closed = 1;
        if (k < 8) return got || k > 0;
        if (h != HEARTBEAT) return 1; /* a later frame: the peer is alive and past this exchange */
        if (recv(fd, &h, 8, MSG_DONTWAIT) != 8) return 1;
        got = 1;
    }
}

static int exchange(Mesh *m, int rank, const void *send, const size_t *send_bytes, const size_t *send_offsets, void *recv,
                    const size_t *recv_bytes, const size_t *recv_offsets, Err *err) {
    if (send_bytes[rank]) memcpy((char *)recv + recv_offsets[rank], (const char *)send + send_offsets[rank], send_bytes[rank]);
    for (int p = 0; p < m->nranks; p++) m->flow[p] = (Flow){ send_bytes[p], 0, 0, 0, 0, 0 };
    double window = now_seconds();
    for (;;) {
        int n = 0;
        for (int p = 0; p < m->nranks; p++) {
            if (p == rank) continue;
            Flow *f = &m->flow[p];
            short ev = 0;
            int out_open = f->out_done < 8 + send_bytes[p], in_open = f->in_done < 8 || f->in_done < 8 + f->hdr_in;
            if (out_open || m->hb_left[p]) ev |= POLLOUT;
            if (in_open || out_open) ev |= POLLIN; /* the frame, or (peeked) heartbeats while ours is unread */
            if (out_open || in_open) m->pfd[n] = (struct pollfd){ m->fd[p], ev, 0 }, m->peer_of[n++] = p;
        }
        if (n == 0) return 0;
        pthread_mutex_unlock(&m->lock); /* the heartbeat thread may send while this one waits */
        int pr = poll(m->pfd, (nfds_t)n, (int)(m->hb_interval * 1000) + 1);
        int pe = errno;
        pthread_mutex_lock(&m->lock);
        if (pr < 0 && pe != EINTR) {
            m->broken = 1;
            return err_set(err, "TCP transport: poll: %s", strerror(pe));
        }
        for (int i = 0; i < n && pr > 0; i++) {
            int p = m->peer_of[i], closed = 0, rc = 0;
            Flow *f = &m->flow[p];
            short re = m->pfd[i].revents;
            if (!re) continue;
            int in_open = f->in_done < 8 || f->in_done < 8 + f->hdr_in;
            /* an error or hang-up wakes either direction, so that its send or recv reports it */
            if (re & (POLLOUT | POLLHUP | POLLERR)) {
                if (!m->out_busy[p] && m->hb_left[p]) hb_flush(m, p); /* a heartbeat already begun goes first */
                if (!m->hb_left[p] && f->out_done < 8 + send_bytes[p]) {
                    m->out_busy[p] = 1;
                    rc = pump(m->fd[p], &f->hdr_out, (char *)send + send_offsets[p], 8 + send_bytes[p], &f->out_done, 1, &closed);
                    if (f->out_done == 8 + send_bytes[p]) m->out_busy[p] = 0, m->last_send[p] = now_seconds();
                }
            }
            if (!rc && !closed && in_open && (re & (POLLIN | POLLHUP | POLLERR))) {
                size_t before = f->in_done, total = f->in_done >= 8 ? 8 + (size_t)f->hdr_in : 8;
                rc = pump(m->fd[p], &f->hdr_in, (char *)recv + recv_offsets[p], total, &f->in_done, 0, &closed);
                if (f->in_done != before) f->heard = 1;
                if (!rc && !closed && f->in_done == 8 && f->hdr_in == HEARTBEAT) {
                    f->in_done = 0, f->hdr_in = 0; /* alive; the frame follows */
                } else if (!rc && !closed && f->in_done == 8 && f->hdr_in != recv_bytes[p]) {
                    m->broken = 1;
                    return err_set(err, "TCP transport: rank %d expected %zu bytes from rank %d, which sends %llu", rank,
                                   recv_bytes[p], p, (unsigned long long)f->hdr_in);
                }
                /* a header read just now: its payload follows on the next round */
            } else if (!rc && !closed && !in_open && (re & (POLLIN | POLLHUP | POLLERR))) {
                f->heard |= drain_heartbeats(m->fd[p], &closed);
            }
            if (rc || closed) {
                m->broken = 1;
                return err_set(err, "TCP transport: the connection to rank %d %s%s (that process exited or failed)", p,
                               rc ? "broke: " : "was closed", rc ? strerror(-rc) : "");
            }
        }
        /* Liveness, counted in windows rather than seconds: after the whole group was stopped and
         * continued (Ctrl-Z, fg) the clock jumps by one window, not by the stop's length. */
        double t = now_seconds();
        if (t - window < m->hb_interval) continue;
        window = t;
        for (int p = 0; p < m->nranks; p++) {
            Flow *f = &m->flow[p];
            if (p == rank || (f->out_done >= 8 + send_bytes[p] && f->in_done >= 8 && f->in_done >= 8 + f->hdr_in)) continue;
            f->quiet = f->heard ? 0 : f->quiet + 1;
            f->heard = 0;
            if (f->quiet >= m->quiet_limit) {
                m->broken = 1;
                return err_set(err, "TCP transport: rank %d sent nothing for %.0f s (stopped or hung; the limit is "
                                    "DSV3_EP_TIMEOUT)", p, m->timeout_s);
            }
        }
    }
}

static int sock_alltoallv(EpTransport *t, int rank, const void *send, const size_t *send_bytes, const size_t *send_offsets,
                          void *recv, const size_t *recv_bytes, const size_t *recv_offsets, Err *err) {
    Mesh *m = t->ctx;
    if (m->broken) return err_set(err, "TCP transport: an earlier exchange failed; the group cannot continue");
    if (rank != m->rank) return err_set(err, "TCP transport: called as rank %d by rank %d", rank, m->rank);
    if (send_bytes[rank] != recv_bytes[rank])
        return err_set(err, "TCP transport: rank %d sends itself %zu bytes but expects %zu", rank, send_bytes[rank], recv_bytes[rank]);
    for (int p = 0; p < m->nranks; p++)
        if (p != rank && send_bytes[p] >= (size_t)HEARTBEAT) return err_set(err, "TCP transport: message too large");
    pthread_mutex_lock(&m->lock);
    int rc = exchange(m, rank, send, send_bytes, send_offsets, recv, recv_bytes, recv_offsets, err);
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/** Rank 0: accepts every other rank on MASTER_PORT, then sends each the table of addresses and ports. */
static int rendezvous_root(Mesh *m, const LaunchEnv *e, double deadline, Err *err) {
    int lfd, n = m->nranks, rc = 0;
    if (bootstrap_listen(e->master_port, &lfd, NULL, err)) return err_prefix(err, "TCP transport: rank 0");
    uint32_t *table = xcalloc(2 * (size_t)n, sizeof *table); /* {IPv4 address, port} per rank */
    if (!table) {
        close(lfd);
        return err_set(err, "out of memory");
    }
    for (int got = 0; got < n - 1 && rc == 0;) {
        struct sockaddr_in peer;
        int c = bootstrap_accept(e, lfd, deadline, &peer, err);
        if (c < 0) {
            if (now_seconds() >= deadline)
                err_set(err, "TCP transport: rank 0 timed out on port %d after %d of %d ranks joined", e->master_port, got + 1, n);
            rc = -1;
            break;
        }
        uint32_t hello[3];
        if (bootstrap_xfer(c, hello, sizeof hello, 0, deadline, err)) {
            close(c);
            rc = -1;
            break;
        }
        int r = (int)hello[1];
        if (hello[0] != MAGIC || r <= 0 || r >= n || m->fd[r] >= 0 || hello[2] == 0 || hello[2] > 65535) {
            close(c);
            rc = err_set(err, "TCP transport: a connection on port %d is not a dsv3 rank of this group of %d (or a rank came twice)",
                         e->master_port, n);
            break;
        }
        m->fd[r] = c;
        table[2 * r] = peer.sin_addr.s_addr, table[2 * r + 1] = hello[2];
        got++;
    }
    close(lfd);
    for (int r = 1; r < n && rc == 0; r++) rc = bootstrap_xfer(m->fd[r], table, 2 * (size_t)n * sizeof *table, 1, deadline, err);
    free(table);
    return rc;
}

/** Rank r > 0: joins rank 0, receives the table, connects to ranks 1..r−1 and accepts ranks r+1.. . */
static int rendezvous_rank(Mesh *m, const LaunchEnv *e, double deadline, Err *err) {
    int n = m->nranks, r = m->rank, lfd, port, rc = 0;
    if (bootstrap_listen(0, &lfd, &port, err)) return err_prefix(err, "TCP transport: rank %d", r);
    uint32_t *table = xcalloc(2 * (size_t)n, sizeof *table);
    if (!table) {
        close(lfd);
        return err_set(err, "out of memory");
    }
    int c = bootstrap_connect(e, e->master_addr, e->master_port, deadline, err);
    uint32_t hello[3] = { MAGIC, (uint32_t)r, (uint32_t)port };
    if (c < 0) rc = err_prefix(err, "TCP transport: rank %d joining rank 0", r);
    else {
        m->fd[0] = c;
        rc = bootstrap_xfer(c, hello, sizeof hello, 1, deadline, err) || bootstrap_xfer(c, table, 2 * (size_t)n * sizeof *table, 0, deadline, err);
    }
    /* lower ranks first: their listeners take the connection before they accept it, so nobody waits in a cycle */
    for (int p = 1; p < r && rc == 0; p++) {
        char host[INET_ADDRSTRLEN];
        struct in_addr a = { table[2 * p] };
        inet_ntop(AF_INET, &a, host, sizeof host);
        int fd = bootstrap_connect(e, host, (int)table[2 * p + 1], deadline, err);
        uint32_t hi[2] = { MAGIC, (uint32_t)r };
        if (fd < 0) rc = err_prefix(err, "TCP transport: rank %d joining rank %d", r, p);
        else {
            m->fd[p] = fd;
            rc = bootstrap_xfer(fd, hi, sizeof hi, 1, deadline, err);
        }
    }
    for (int got = 0; got < n - 1 - r && rc == 0;) {
        struct sockaddr_in peer;
        int fd = bootstrap_accept(e, lfd, deadline, &peer, err);
        uint32_t hi[2];
        if (fd < 0) rc = err_prefix(err, "TCP transport: rank %d waiting for the ranks above it", r);
        else if (bootstrap_xfer(fd, hi, sizeof hi, 0, deadline, err)) close(fd), rc = -1;
        else if (hi[0] != MAGIC || (int)hi[1] <= r || (int)hi[1] >= n || m->fd[hi[1]] >= 0) {
            close(fd);
            rc = err_set(err, "TCP transport: rank %d got a connection that is not a higher rank of this group", r);
        } else m->fd[hi[1]] = fd, got++;
    }
    close(lfd);
    free(table);
    return rc;
}

int ep_socket_transport_init(EpTransport *t, const LaunchEnv *env, double timeout_s, Err *err) {
    memset(t, 0, sizeof *t);
    int n = env->world_size;
    if (n < 1 || n > 4096 || env->rank < 0 || env->rank >= n)
        return err_set(err, "TCP transport: rank %d of %d ranks (1..4096)", env->rank, n);
    Mesh *m = xcalloc(1, sizeof *m);
    if (m) {
        m->rank = env->rank, m->nranks = n;
        m->fd = xcalloc((size_t)n, sizeof *m->fd);
        m->flow = xcalloc((size_t)n, sizeof *m->flow);
        m->pfd = xcalloc((size_t)n, sizeof *m->pfd);
        m->peer_of = xcalloc((size_t)n, sizeof *m->peer_of);
        m->out_busy = xcalloc((size_t)n, sizeof *m->out_busy);
        m->hb_left = xcalloc((size_t)n, sizeof *m->hb_left);
        m->last_send = xcalloc((size_t)n, sizeof *m->last_send);
        m->inbox = xcalloc((size_t)n, sizeof *m->inbox);
    }
    if (!m || !m->fd || !m->flow || !m->pfd || !m->peer_of || !m->out_busy || !m->hb_left || !m->last_send || !m->inbox) {
        mesh_free(m);
        return err_set(err, "out of memory");
    }
    for (int r = 0; r < n; r++) m->fd[r] = -1;
    double deadline = now_seconds() + timeout_s;
    if (n > 1 && (env->rank == 0 ? rendezvous_root(m, env, deadline, err) : rendezvous_rank(m, env, deadline, err))) {
        mesh_free(m);
        return -1;
    }
    for (int r = 0; r < n; r++)
        if (m->fd[r] >= 0) tune(m->fd[r]);
    /* A peer silent for timeout_s in an exchange is gone; heartbeats at most every second keep a
     * busy or idle one from looking so (at least 4 per timeout). */
    m->timeout_s = timeout_s;
    m->hb_interval = timeout_s / 4 < 1.0 ? timeout_s / 4 : 1.0;
    if (m->hb_interval < 0.01) m->hb_interval = 0.01;
    m->quiet_limit = (int)(timeout_s / m->hb_interval + 0.5);
    if (m->quiet_limit < 2) m->quiet_limit = 2;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (pthread_mutex_init(&m->lock, NULL) || pthread_cond_init(&m->wake, &ca)) {
        pthread_condattr_destroy(&ca);
        mesh_free(m);
        return err_set(err, "TCP transport: cannot create the heartbeat's lock");
    }
    pthread_condattr_destroy(&ca);
    if (n > 1) {
        for (int r = 0; r < n; r++) m->last_send[r] = now_seconds();
        if (pthread_create(&m->hb_thread, NULL, hb_main, m) != 0) {
            pthread_mutex_destroy(&m->lock), pthread_cond_destroy(&m->wake);
            mesh_free(m);
            return err_set(err, "TCP transport: cannot start the heartbeat thread");
        }
        m->hb_started = 1;
    }
    t->nranks = n;
    t->alltoallv = sock_alltoallv;
    t->ctx = m;
    t->device_buffers = 0;
    return 0;
}

void ep_socket_transport_free(EpTransport *t) {
    mesh_free(t->ctx);
    memset(t, 0, sizeof *t);
}

/* ------------------------------------------------------------------------------------- */
/* tagged point-to-point messages (base/msg.h)                                             */

enum { MSG_MAGIC = 0x6473766d /* "dsvm" */ };

/** Reads whatever peer @p p has sent without blocking, completing messages into its inbox. */
static int drain(Mesh *m, int p, Err *err) {
    Inbox *in = &m->inbox[p];
    for (;;) {
        size_t want = in->got < 24 ? 24 - in->got : 24 + in->cur->n - in->got;
        if (want == 0) { /* a message is complete */
            if (in->tail) in->tail->next = in->cur;
            else in->head = in->cur;
            in->tail = in->cur, in->cur = NULL, in->got = 0;
            continue;
        }
        char *dst = in->got < 24 ? (char *)in->hdr + in->got : (char *)in->cur->data + (in->got - 24);
        ssize_t k = recv(m->fd[p], dst, want, MSG_DONTWAIT);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (k <= 0) {
            in->closed = 1;
            if (in->got == 0) return 0; /* between messages: the peer is done */
            return err_set(err, "TCP messages: rank %d closed its connection in the middle of a message", p);
        }
        in->got += (size_t)k;
        in->heard_at = now_seconds();
        /* Heartbeats (8 bytes of 0xff, sent while this link is idle) come between messages: skip them. */
        while (!in->cur && in->got >= 8 && in->hdr[0] == HEARTBEAT) {
            memmove(in->hdr, (char *)in->hdr + 8, in->got - 8);
            in->got -= 8;
        }
        if (in->got == 24 && !in->cur) {
            if (in->hdr[0] != MSG_MAGIC || in->hdr[2] > (uint64_t)1 << 36)
                return err_set(err, "TCP messages: rank %d sent a malformed header (not a dsv3 message)", p);
            if (!(in->cur = malloc(sizeof *in->cur + (in->hdr[2] ? in->hdr[2] : 1))))
                return err_set(err, "out of memory for a message of %llu bytes", (unsigned long long)in->hdr[2]);
            in->cur->tag = in->hdr[1], in->cur->n = (size_t)in->hdr[2], in->cur->next = NULL;
        }
    }
}

/** Waits until some peer has sent something (or @p out_fd can take more, when ≥ 0), draining the readable ones. */
static int wait_and_drain(Mesh *m, int out_fd, int *writable, Err *err) {
    int n = 0;
    for (int p = 0; p < m->nranks; p++)
        if (p != m->rank && !m->inbox[p].closed) m->pfd[n] = (struct pollfd){ m->fd[p], POLLIN, 0 }, m->peer_of[n++] = p;
    int out_at = -1;
    if (out_fd >= 0) {
        for (int i = 0; i < n; i++)
            if (m->pfd[i].fd == out_fd) out_at = i, m->pfd[i].events |= POLLOUT;
        if (out_at < 0) out_at = n, m->pfd[n] = (struct pollfd){ out_fd, POLLOUT, 0 }, m->peer_of[n++] = -1;
    }
    if (n == 0) return err_set(err, "TCP messages: every peer has closed its connection");
    /* Wake at least every heartbeat interval, so the callers can tell a silent peer from a slow one. */
    if (poll(m->pfd, (nfds_t)n, (int)(m->hb_interval * 1000) + 1) < 0)
        return errno == EINTR ? 0 : err_set(err, "TCP messages: poll: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        if (m->peer_of[i] >= 0 && (m->pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) && drain(m, m->peer_of[i], err)) return -1;
        if (i == out_at && (m->pfd[i].revents & (POLLOUT | POLLHUP | POLLERR))) *writable = 1;
    }
    return 0;
}

static int link_send(MsgLink *l, int dst, uint64_t tag, const void *buf, size_t n, Err *err) {
    Mesh *m = l->ctx;
    if (dst < 0 || dst >= m->nranks) return err_set(err, "TCP messages: no rank %d in a group of %d", dst, m->nranks);
    if (dst == m->rank) { /* to itself: straight into its own inbox */
        Parcel *q = malloc(sizeof *q + (n ? n : 1));
        if (!q) return err_set(err, "out of memory");
        q->tag = tag, q->n = n, q->next = NULL;
        if (n) memcpy(q->data, buf, n);
        Inbox *in = &m->inbox[dst];
        if (in->tail) in->tail->next = q;
        else in->head = q;
        in->tail = q;
        return 0;
    }
    if (m->inbox[dst].closed) return err_set(err, "TCP messages: rank %d has closed its connection", dst);
    uint64_t hdr[3] = { MSG_MAGIC, tag, n };
    size_t done = 0, total = 24 + n;
    double since = now_seconds();
    /* The heartbeat thread shares this socket: finish a heartbeat it began, then keep it out of the message. */
    for (;;) {
        pthread_mutex_lock(&m->lock);
        int clear = hb_flush(m, dst);
        if (clear) m->out_busy[dst] = 1;
        pthread_mutex_unlock(&m->lock);
        if (clear) break;
        int writable = 0;
        if (wait_and_drain(m, m->fd[dst], &writable, err)) return -1;
    }
    int rc = 0;
    while (done < total && rc == 0) {
        const char *p = done < 24 ? (const char *)hdr + done : (const char *)buf + (done - 24);
        size_t want = done < 24 ? 24 - done : total - done;
        ssize_t k = send(m->fd[dst], p, want, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            done += (size_t)k, since = now_seconds();
            continue;
        }
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            rc = err_set(err, "TCP messages: sending to rank %d: %s (that process exited or failed)", dst, strerror(errno));
            break;
        }
        if (now_seconds() - since > m->timeout_s) {
            rc = err_set(err, "TCP messages: rank %d took nothing for %.0f s (stopped or hung?; DSV3_EP_TIMEOUT)", dst, m->timeout_s);
            break;
        }
        /* the socket is full: take in what the others send while it drains, so nobody waits in a cycle */
        int writable = 0;
        if (wait_and_drain(m, m->fd[dst], &writable, err)) rc = -1;
    }
    pthread_mutex_lock(&m->lock);
    m->out_busy[dst] = 0;
    m->last_send[dst] = now_seconds();
    pthread_mutex_unlock(&m->lock);
    return rc;
}

static int link_recv(MsgLink *l, int src, uint64_t tag, void *buf, size_t n, Err *err) {
    Mesh *m = l->ctx;
    if (src < 0 || src >= m->nranks) return err_set(err, "TCP messages: no rank %d in a group of %d", src, m->nranks);
    Inbox *in = &m->inbox[src];
    for (;;) {
        Parcel *prev = NULL;
        for (Parcel *q = in->head; q; prev = q, q = q->next) {
            if (q->tag != tag) continue;
            if (prev) prev->next = q->next;
            else in->head = q->next;
            if (in->tail == q) in->tail = prev;
            int rc = q->n == n ? 0 : err_set(err, "TCP messages: rank %d expected %zu bytes from rank %d (tag %llx), got %zu",
                                             m->rank, n, src, (unsigned long long)tag, q->n);
            if (!rc && n) memcpy(buf, q->data, n);
            free(q);
            return rc;
        }
        if (src == m->rank) return err_set(err, "TCP messages: rank %d waits for a message it never sent itself (tag %llx)", src, (unsigned long long)tag);
        if (in->closed)
            return err_set(err, "TCP messages: rank %d closed its connection before sending tag %llx (that process exited or failed)",
                           src, (unsigned long long)tag);
        if (now_seconds() - in->heard_at > m->timeout_s)
            return err_set(err, "TCP messages: rank %d sent nothing for %.0f s, not even a heartbeat (stopped or hung?; "
                                "DSV3_EP_TIMEOUT)", src, m->timeout_s);
        int writable = 0;
        if (wait_and_drain(m, -1, &writable, err)) return -1;
    }
}

int ep_socket_link(EpTransport *t, MsgLink *link, Err *err) {
    Mesh *m = t->ctx;
    if (!m || t->alltoallv != sock_alltoallv) return err_set(err, "ep_socket_link: not a TCP transport");
    *link = (MsgLink){ m->rank, m->nranks, link_send, link_recv, m };
    for (int p = 0; p < m->nranks; p++) m->inbox[p].heard_at = now_seconds();
    return 0;
}
