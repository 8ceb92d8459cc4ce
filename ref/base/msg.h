/**
 * @file msg.h
 * @brief Tagged point-to-point messages between the ranks of a group: what pipeline parallelism
 *        needs (ref/train/train_pipeline.h), as an interface with two implementations — threads of
 *        one process (here, for tests) and processes over TCP (ref/ep/ep_socket.h, ep_socket_link).
 *
 * Semantics, the same for both (MPI's, reduced to what a pipeline uses):
 *  - send(dst, tag, buf, n) returns once the bytes are handed over (copied or written to the
 *    socket); it never waits for the receiver to call recv, so two ranks sending to each other
 *    cannot deadlock;
 *  - recv(src, tag, buf, n) waits for the message from @p src with tag @p tag, whatever else
 *    arrives first (those wait in a queue), and fails if its length is not @p n;
 *  - a rank may send to itself.
 * Messages between one pair with the same tag arrive in the order they were sent.
 */
#ifndef DSV3_MSG_H
#define DSV3_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/** One rank's end of a group. */
typedef struct MsgLink {
    int rank;   /**< this rank */
    int nranks; /**< ranks in the group */
    /** Sends @p n bytes of @p buf to rank @p dst under @p tag; 0 or -1 with @p err set. */
    int (*send)(struct MsgLink *l, int dst, uint64_t tag, const void *buf, size_t n, Err *err);
    /** Receives the message @p tag from rank @p src into @p buf (exactly @p n bytes); 0 or -1. */
    int (*recv)(struct MsgLink *l, int src, uint64_t tag, void *buf, size_t n, Err *err);
    void *ctx;  /**< the implementation's state */
} MsgLink;

/**
 * @p n links (links[r] for the thread playing rank r) over mailboxes in this process. A recv
 * waits at most @p timeout_s seconds (a test that deadlocks fails instead of hanging).
 */
int msg_local_init(MsgLink *links, int n, double timeout_s, Err *err);
/** Frees what msg_local_init made (all links at once, after every thread is done). */
void msg_local_free(MsgLink *links, int n);

/**
 * Sum of @p n doubles over the group, in rank order (rank 0's values + rank 1's + …), so every
 * rank gets the same bits. Collective. @p tag must not be used by other messages in flight.
 */
int msg_allreduce_f64(MsgLink *l, double *v, size_t n, uint64_t tag, Err *err);
/**
 * Sum of @p n floats over the group in rank order: each rank reduces one contiguous share (from
 * every rank, ascending) and sends it to all (reduce-scatter, then all-gather). Collective.
 */
int msg_allreduce_f32(MsgLink *l, float *v, size_t n, uint64_t tag, Err *err);
/** Rank 0's @p n bytes to every rank. Collective. */
int msg_broadcast(MsgLink *l, void *buf, size_t n, uint64_t tag, Err *err);

#endif
