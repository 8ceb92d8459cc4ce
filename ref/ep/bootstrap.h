/**
 * @file bootstrap.h
 * @brief Launching N processes as one expert-parallel group: the torchrun environment
 *        (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and a TCP exchange of the
 *        ncclUniqueId from rank 0 to every other rank (docs/formats.md §7: NCCL needs the id
 *        "broadcast ... using any CPU communication system"). Under mpirun in an MPI build
 *        (make MPI=1), MPI_Bcast does it.
 *
 * Plain C and POSIX sockets, no CUDA: the exchange is tested on the CPU (tests/test_bootstrap.c).
 * It lives in ref/ because the reference's own multi-process runs (ref/ep/ep_socket.h, ref/cli/cli_ep.h)
 * launch the same way; the GPU backend's NCCL transport (fast/ep_nccl.c) uses it for its id.
 */
#ifndef DSV3_BOOTSTRAP_H
#define DSV3_BOOTSTRAP_H

#include <stddef.h>

#include "base/util.h"

/** Where this process sits in the group, as torchrun describes it. */
typedef struct {
    int world_size;    /**< WORLD_SIZE (default 1) */
    int rank;          /**< RANK in [0, world_size) (default 0) */
    int local_rank;    /**< LOCAL_RANK: the GPU of this process on its node (default rank) */
    char master_addr[256]; /**< MASTER_ADDR: host or IPv4 address of rank 0 (default 127.0.0.1) */
    int master_port;   /**< MASTER_PORT in [1, 65535] (default 29500) */
    int mpi;           /**< 1: launched by mpirun (rank and size from its variables) */
    /** Optional, asked every ~100 ms while waiting for other ranks to join: nonzero (with @p err
     *  set) ends the wait at once — e.g. a rank this process started has already died. */
    int (*check)(void *ctx, Err *err);
    void *check_ctx;   /**< its argument */
} LaunchEnv;

/**
 * Reads and validates the torchrun variables (absent ones take the defaults above; a present
 * but malformed one — not a number, out of range, RANK ≥ WORLD_SIZE — is an error naming it).
 * Without WORLD_SIZE, a process started by mpirun takes its size, rank and local rank from the
 * launcher's variables: Open MPI's OMPI_COMM_WORLD_{SIZE,RANK,LOCAL_RANK}, else MPICH/Hydra's
 * PMI_SIZE, PMI_RANK, MPI_LOCALRANKID (e->mpi = 1). In a build with DSV3_WITH_MPI this also
 * calls MPI_Init (once; MPI_Finalize runs at exit).
 */
int launch_env_read(LaunchEnv *e, Err *err);

/**
 * Rank 0 serves @p blob (@p n bytes, e.g. an ncclUniqueId) to world_size − 1 connections on
 * master_port; every other rank connects to master_addr:master_port (retrying until
 * @p timeout_s) and receives it. Each connection is checked with a magic word and the size.
 * Launched by mpirun in a DSV3_WITH_MPI build: MPI_Bcast from rank 0 instead (no TCP port).
 */
int bootstrap_share(const LaunchEnv *e, void *blob, size_t n, double timeout_s, Err *err);

/* ---- the TCP pieces, shared with the socket transport (ep_socket.c) ----------------- */

struct sockaddr_in;

/** Sends (@p sending = 1) or receives exactly @p n bytes on @p fd before @p deadline (now_seconds()). */
int bootstrap_xfer(int fd, void *buf, size_t n, int sending, double deadline, Err *err);
/** A listening IPv4 TCP socket on @p port (0: an ephemeral one, returned in *port_out). */
int bootstrap_listen(int port, int *fd_out, int *port_out, Err *err);
/** The next connection on @p listen_fd (its address in @p peer), or -1 at @p deadline or when @p e's check fails. */
int bootstrap_accept(const LaunchEnv *e, int listen_fd, double deadline, struct sockaddr_in *peer, Err *err);
/** A connection to @p host : @p port, retried until @p deadline (ranks start in any order) or @p e's check fails; or -1. */
int bootstrap_connect(const LaunchEnv *e, const char *host, int port, double deadline, Err *err);

#endif
