/**
 * @file bootstrap.c
 * @brief torchrun environment and the TCP exchange of the NCCL unique id (see bootstrap.h).
 *
 * Launchers: torchrun's variables first, then mpirun's (Open MPI, MPICH); under mpirun an MPI
 * build (DSV3_WITH_MPI) broadcasts with MPI_Bcast and needs no MASTER_ADDR/PORT.
 *
 * Protocol: rank 0 listens; each other rank connects and sends {magic, rank}; rank 0 answers
 * {magic, n} followed by the n bytes. Every read and write loops over partial transfers;
 * connects retry with a short sleep until the deadline, since ranks start in any order.
 */
#include "bootstrap.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "base/util.h"

#ifdef DSV3_WITH_MPI
#include <mpi.h>
#endif

enum { MAGIC = 0x64737633 /* "dsv3" */ };

static int env_int(const char *name, int def, int lo, int hi, int *out, Err *err) {
    const char *v = getenv(name);
    if (!v || !*v) {
        *out = def;
        return 0;
    }
    long x;
    if (parse_long(v, lo, hi, &x)) return err_set(err, "environment %s='%s' is not an integer in [%d, %d]", name, v, lo, hi);
    *out = (int)x;
    return 0;
}

/** The launcher variables of one convention: size, rank, local rank. */
static int env_triple(LaunchEnv *e, const char *size, const char *rank, const char *local, Err *err) {
    return env_int(size, 1, 1, 1 << 20, &e->world_size, err) || env_int(rank, 0, 0, e->world_size - 1, &e->rank, err) ||
           env_int(local, e->rank, 0, 1 << 20, &e->local_rank, err);
}

#ifdef DSV3_WITH_MPI
static void finalize_mpi(void) {
    int done = 0;
    MPI_Finalized(&done);
    if (!done) MPI_Finalize();
}
#endif

int launch_env_read(LaunchEnv *e, Err *err) {
    memset(e, 0, sizeof *e);
    int rc;
    if (getenv("WORLD_SIZE")) rc = env_triple(e, "WORLD_SIZE", "RANK", "LOCAL_RANK", err);
    else if (getenv("OMPI_COMM_WORLD_SIZE")) /* mpirun (Open MPI) */
        e->mpi = 1, rc = env_triple(e, "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", err);
    else if (getenv("PMI_SIZE")) /* mpiexec (MPICH / Hydra) */
        e->mpi = 1, rc = env_triple(e, "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID", err);
    else rc = env_triple(e, "WORLD_SIZE", "RANK", "LOCAL_RANK", err); /* defaults: one process */
    if (rc || env_int("MASTER_PORT", 29500, 1, 65535, &e->master_port, err)) return -1;
#ifdef DSV3_WITH_MPI
    if (e->mpi) {
        int inited = 0, size = 0, rank = 0;
        MPI_Initialized(&inited);
        if (!inited && MPI_Init(NULL, NULL) != MPI_SUCCESS) return err_set(err, "MPI_Init failed");
        if (!inited) atexit(finalize_mpi);
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        if (size != e->world_size || rank != e->rank)
            return err_set(err, "MPI says rank %d of %d, the launcher's variables rank %d of %d", rank, size, e->rank, e->world_size);
    }
#endif
    const char *addr = getenv("MASTER_ADDR");
    if (!addr || !*addr) addr = "127.0.0.1";
    if (strlen(addr) >= sizeof e->master_addr) return err_set(err, "environment MASTER_ADDR is too long");
    snprintf(e->master_addr, sizeof e->master_addr, "%s", addr);
    return 0;
}

int bootstrap_xfer(int fd, void *buf, size_t n, int sending, double deadline, Err *err) {
    char *p = buf;
    while (n > 0) {
        double left = deadline - now_seconds();
        if (left <= 0) return err_set(err, "bootstrap: timed out %s", sending ? "sending" : "receiving");
        struct pollfd pf = { fd, (short)(sending ? POLLOUT : POLLIN), 0 };
        int pr = poll(&pf, 1, (int)(left * 1000) + 1);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) continue;
        ssize_t k = sending ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (k <= 0) return err_set(err, "bootstrap: connection %s", k == 0 ? "closed early" : strerror(errno));
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int bootstrap_listen(int port, int *fd_out, int *port_out, Err *err) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return err_set(err, "bootstrap: socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = { 0 };
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    socklen_t len = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 128) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        int rc = err_set(err, "bootstrap: cannot listen on port %d: %s", port, strerror(errno));
        close(fd);
        return rc;
    }
    *fd_out = fd;
    if (port_out) *port_out = ntohs(sa.sin_port);
    return 0;
}

/** The launcher's check while waiting (a rank it started has died, say): 0 to go on waiting. */
static int check(const LaunchEnv *e, Err *err) { return e->check ? e->check(e->check_ctx, err) : 0; }

int bootstrap_accept(const LaunchEnv *e, int listen_fd, double deadline, struct sockaddr_in *peer, Err *err) {
    for (;;) {
        double left = deadline - now_seconds();
        if (left <= 0) return err_set(err, "bootstrap: timed out waiting for a connection"), -1;
        if (check(e, err)) return -1;
        struct pollfd pf = { listen_fd, POLLIN, 0 };
        if (poll(&pf, 1, left > 0.1 ? 100 : (int)(left * 1000) + 1) <= 0) continue;
        socklen_t len = sizeof *peer;
        int c = accept(listen_fd, (struct sockaddr *)peer, &len);
        if (c >= 0) return c;
    }
}

int bootstrap_connect(const LaunchEnv *e, const char *host, int port, double deadline, Err *err) {
    struct addrinfo hints = { 0 }, *res = NULL;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    int g = getaddrinfo(host, port_s, &hints, &res);
    if (g != 0) return err_set(err, "bootstrap: address '%s': %s", host, gai_strerror(g)), -1;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
            freeaddrinfo(res);
            return fd;
        }
        if (fd >= 0) close(fd);
        if (check(e, err)) {
            freeaddrinfo(res);
            return -1;
        }
        if (now_seconds() > deadline) {
            freeaddrinfo(res);
            return err_set(err, "bootstrap: could not reach %s:%d in time", host, port), -1;
        }
        struct timespec ts = { 0, 20 * 1000 * 1000 }; /* ranks start in any order: retry */
        nanosleep(&ts, NULL);
    }
}

static int serve(const LaunchEnv *e, const void *blob, size_t n, double deadline, Err *err) {
    int fd, rc = 0;
    if (bootstrap_listen(e->master_port, &fd, NULL, err)) return err_prefix(err, "rank 0");
    for (int served = 0; served < e->world_size - 1 && rc == 0;) {
        struct sockaddr_in peer;
        int c = bootstrap_accept(e, fd, deadline, &peer, err);
        if (c < 0) {
            if (now_seconds() >= deadline)
                err_set(err, "bootstrap: rank 0 timed out after %d of %d ranks connected", served + 1, e->world_size);
            rc = -1;
            break;
        }
        uint32_t hello[2], reply[2] = { MAGIC, (uint32_t)n };
        if (bootstrap_xfer(c, hello, sizeof hello, 0, deadline, err) == 0) {
            if (hello[0] != MAGIC || (int)hello[1] <= 0 || (int)hello[1] >= e->world_size)
                rc = err_set(err, "bootstrap: a connection on port %d is not a dsv3 rank", e->master_port);
            else if (bootstrap_xfer(c, reply, sizeof reply, 1, deadline, err) ||
                     bootstrap_xfer(c, (void *)blob, n, 1, deadline, err))
                rc = -1;
            else served++;
        } else {
            rc = -1;
        }
        close(c);
    }
    close(fd);
    return rc;
}

static int fetch(const LaunchEnv *e, void *blob, size_t n, double deadline, Err *err) {
    int fd = bootstrap_connect(e, e->master_addr, e->master_port, deadline, err);
    if (fd < 0)
        return now_seconds() < deadline ? -1
                                        : err_set(err, "bootstrap: rank %d could not reach rank 0 at %s:%d", e->rank,
                                                  e->master_addr, e->master_port);
    uint32_t hello[2] = { MAGIC, (uint32_t)e->rank }, reply[2];
    int rc = -1;
    if (bootstrap_xfer(fd, hello, sizeof hello, 1, deadline, err) == 0 && bootstrap_xfer(fd, reply, sizeof reply, 0, deadline, err) == 0) {
        if (reply[0] != MAGIC || reply[1] != n)
            err_set(err, "bootstrap: rank 0 at %s:%d answered with a different protocol or size", e->master_addr, e->master_port);
        else rc = bootstrap_xfer(fd, blob, n, 0, deadline, err);
    }
    close(fd);
    return rc;
}

int bootstrap_share(const LaunchEnv *e, void *blob, size_t n, double timeout_s, Err *err) {
    if (e->world_size == 1) return 0;
#ifdef DSV3_WITH_MPI
    if (e->mpi) {
        (void)timeout_s; /* the MPI launcher owns startup and failure detection */
        if (n > (size_t)0x7FFFFFFF) return err_set(err, "bootstrap: %zu bytes are too many for one MPI_Bcast", n);
        return MPI_Bcast(blob, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD) == MPI_SUCCESS ? 0 : err_set(err, "MPI_Bcast failed");
    }
#endif
    double deadline = now_seconds() + timeout_s;
    return e->rank == 0 ? serve(e, blob, n, deadline, err) : fetch(e, blob, n, deadline, err);
}
