/**
 * @file ep_socket.h
 * @brief ref/ep/ep.h's EpTransport between processes over TCP: N processes, possibly on several
 *        hosts, launched the torchrun way (ref/ep/bootstrap.h), as one expert-parallel group on CPUs.
 *
 * What NCCL is to the GPU backend, this is to the reference: the same dispatch / combine, with
 * host buffers, so `torchrun --nproc-per-node 4 dsv3 generate ...` (or `dsv3 generate --ep 4`)
 * splits the routed experts over four processes on a laptop. The GPU backend uses it too when
 * NCCL is not wanted (`--ep-transport tcp`: device rows are staged through host memory).
 *
 * Setup: rank 0 listens on MASTER_PORT; every other rank opens a listener of its own on an
 * ephemeral port, connects to rank 0 and says {magic, rank, port}; rank 0 answers every rank
 * with the table of addresses (the one each connection came from) and ports; then rank j
 * connects to each rank 0 < i < j. The result is one TCP connection per pair of ranks.
 *
 * alltoallv: every message is an 8-byte length followed by the payload; all peers progress at
 * once under poll(), so no pair can block another. A length that differs from what the receiver
 * expects, or a peer that closes its connection (it exited or failed), is an error naming the
 * rank; the transport then refuses further calls, since the byte streams are out of step.
 *
 * Liveness: a thread sends a heartbeat frame (header 0xff…ff, no payload) to every peer that has
 * been sent nothing for an interval (min(1 s, timeout/4)), between frames only, also while its
 * rank computes or waits outside any exchange. An exchange in which a peer that still owes bytes
 * has sent nothing at all — no data, no heartbeat — for the timeout (DSV3_EP_TIMEOUT, the
 * joining timeout of ep_socket_transport_init) fails with a message naming that rank: a stopped
 * (SIGSTOP) or hung process, which TCP keep-alive cannot see because its kernel still answers.
 * A rank that is merely slow, or waits for its user, keeps sending heartbeats and is waited for
 * without limit. Silence is counted in intervals, so a whole group stopped and continued
 * together (Ctrl-Z, fg) is not mistaken for a dead peer. */
#ifndef DSV3_EP_SOCKET_H
#define DSV3_EP_SOCKET_H

#include "base/msg.h"
#include "bootstrap.h"
#include "ep.h"

/**
 * Joins the group described by @p env (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT): connects
 * every pair of ranks, giving up after @p timeout_s seconds, which also bounds how long a peer
 * may stay silent in an exchange. Starts the heartbeat thread. WORLD_SIZE = 1 needs no socket.
 */
int ep_socket_transport_init(EpTransport *t, const LaunchEnv *env, double timeout_s, Err *err);

/**
 * Tagged point-to-point messages (base/msg.h) over the same connections, for pipeline
 * parallelism: a send that finds a socket full reads what the other ranks send meanwhile, so no
 * two ranks wait on each other. A transport carries either alltoallv calls or messages at a time,
 * not both interleaved. The link is valid while @p t is.
 */
int ep_socket_link(EpTransport *t, MsgLink *link, Err *err);

/** Closes the connections and frees the transport. Safe on a zeroed struct. */
void ep_socket_transport_free(EpTransport *t);

#endif
