/**
 * @file ep_nccl.h
 * @brief The NCCL implementation of ref/ep/ep.h's EpTransport: all-to-all with counts exchanged
 *        first, as grouped ncclSend/ncclRecv, one process and one GPU per rank.
 *
 * Group setup follows torchrun (ref/ep/bootstrap.h): rank 0 creates the ncclUniqueId and shares it
 * over TCP (or MPI_Bcast in MPI builds, DSV3_WITH_MPI), every rank binds GPU LOCAL_RANK and calls
 * ncclCommInitRank. Buffers handed to alltoallv may live in host memory (the CPU reference's
 * expert-parallel MoE) or device memory (the CUDA backend): host buffers are staged through
 * device buffers owned by the transport.
 */
#ifndef DSV3_EP_NCCL_H
#define DSV3_EP_NCCL_H

#include "ep/bootstrap.h"
#include "ep/ep.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Joins the group described by @p env (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):
 * selects GPU local_rank, exchanges the unique id, creates the communicator and a stream.
 * @p timeout_s bounds the bootstrap.
 */
int ep_nccl_transport_init(EpTransport *t, const LaunchEnv *env, double timeout_s, Err *err);

/** Destroys the communicator, stream and staging buffers. */
void ep_nccl_transport_free(EpTransport *t);

#ifdef __cplusplus
}
#endif

#endif
