/**
 * @file ep_nccl.c
 * @brief EpTransport over NCCL (see ep_nccl.h). Not run on hardware yet: the single-GPU machines
 *        lent to this project can only test a 1-rank communicator (tests/gpu/test_ep_nccl.c).
 *
 * alltoallv as NCCL expresses it: inside one ncclGroupStart/ncclGroupEnd, for every peer d a
 * ncclSend of send_bytes[d] bytes and a ncclRecv of recv_bytes[d] bytes (zero-byte pairs are
 * skipped; NCCL matches sends and receives per peer in call order). The call is synchronous for
 * the caller: it waits on the transport's stream, as the CPU transport returns after its copies.
 */
#include "ep_nccl.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    ncclComm_t comm;
    cudaStream_t stream;
    int device;
    char *d_send, *d_recv; /* staging for host buffers */
    size_t cap_send, cap_recv;
} NcclBus;

static int cuda_fail(Err *err, const char *what, cudaError_t e) {
    return err_set(err, "NCCL transport: %s: %s", what, cudaGetErrorString(e));
}

static int nccl_fail(Err *err, const char *what, ncclResult_t r) {
    return err_set(err, "NCCL transport: %s: %s", what, ncclGetErrorString(r));
}

/** True if @p p is device (or managed) memory, so NCCL can use it directly. */
static int is_device(const void *p) {
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError(); /* plain host pointers report an error on some drivers: clear it */
        return 0;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

static int grow(char **buf, size_t *cap, size_t need, Err *err) {
    if (need <= *cap) return 0;
    if (*buf) cudaFree(*buf);
    *buf = NULL;
    *cap = 0;
    cudaError_t e = cudaMalloc((void **)buf, need);
    if (e != cudaSuccess) return cuda_fail(err, "cudaMalloc of the staging buffer", e);
    *cap = need;
    return 0;
}

static int nccl_alltoallv(EpTransport *t, int rank, const void *send, const size_t *send_bytes, const size_t *send_offsets,
                          void *recv, const size_t *recv_bytes, const size_t *recv_offsets, Err *err) {
    NcclBus *b = t->ctx;
    (void)rank;
    size_t s_end = 0, r_end = 0;
    for (int d = 0; d < t->nranks; d++) {
        if (send_bytes[d] && send_offsets[d] + send_bytes[d] > s_end) s_end = send_offsets[d] + send_bytes[d];
        if (recv_bytes[d] && recv_offsets[d] + recv_bytes[d] > r_end) r_end = recv_offsets[d] + recv_bytes[d];
    }
    const char *src = send;
    char *dst = recv;
    int stage_send = s_end > 0 && !is_device(send), stage_recv = r_end > 0 && !is_device(recv);
    cudaError_t e;
    if (stage_send) {
        if (grow(&b->d_send, &b->cap_send, s_end, err)) return -1;
        if ((e = cudaMemcpyAsync(b->d_send, send, s_end, cudaMemcpyHostToDevice, b->stream)) != cudaSuccess)
            return cuda_fail(err, "staging the send buffer", e);
        src = b->d_send;
    }
    if (stage_recv) {
        if (grow(&b->d_recv, &b->cap_recv, r_end, err)) return -1;
        dst = b->d_recv;
    }
    ncclResult_t r = ncclGroupStart();
    for (int d = 0; d < t->nranks && r == ncclSuccess; d++) {
        if (send_bytes[d]) r = ncclSend(src + send_offsets[d], send_bytes[d], ncclChar, d, b->comm, b->stream);
        if (r == ncclSuccess && recv_bytes[d]) r = ncclRecv(dst + recv_offsets[d], recv_bytes[d], ncclChar, d, b->comm, b->stream);
    }
    ncclResult_t r2 = ncclGroupEnd();
    if (r != ncclSuccess) return nccl_fail(err, "ncclSend/ncclRecv", r);
    if (r2 != ncclSuccess) return nccl_fail(err, "ncclGroupEnd", r2);
    if (stage_recv && (e = cudaMemcpyAsync(recv, b->d_recv, r_end, cudaMemcpyDeviceToHost, b->stream)) != cudaSuccess)
        return cuda_fail(err, "copying the received rows back", e);
    if ((e = cudaStreamSynchronize(b->stream)) != cudaSuccess) return cuda_fail(err, "cudaStreamSynchronize", e);
    return 0;
}

int ep_nccl_transport_init(EpTransport *t, const LaunchEnv *env, double timeout_s, Err *err) {
    memset(t, 0, sizeof *t);
    NcclBus *b = calloc(1, sizeof *b);
    if (!b) return err_set(err, "out of memory");
    b->device = env->local_rank;
    cudaError_t e = cudaSetDevice(b->device);
    if (e != cudaSuccess) {
        free(b);
        return cuda_fail(err, "cudaSetDevice(LOCAL_RANK)", e);
    }
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    ncclResult_t r = ncclSuccess;
    if (env->rank == 0 && (r = ncclGetUniqueId(&id)) != ncclSuccess) {
        free(b);
        return nccl_fail(err, "ncclGetUniqueId", r);
    }
    if (bootstrap_share(env, &id, sizeof id, timeout_s, err)) {
        free(b);
        return -1;
    }
    if ((r = ncclCommInitRank(&b->comm, env->world_size, id, env->rank)) != ncclSuccess) {
        free(b);
        return nccl_fail(err, "ncclCommInitRank", r);
    }
    if ((e = cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        ncclCommDestroy(b->comm);
        free(b);
        return cuda_fail(err, "cudaStreamCreate", e);
    }
    t->nranks = env->world_size;
    t->alltoallv = nccl_alltoallv;
    t->ctx = b;
    return 0;
}

void ep_nccl_transport_free(EpTransport *t) {
    NcclBus *b = t->ctx;
    if (b) {
        if (b->d_send) cudaFree(b->d_send);
        if (b->d_recv) cudaFree(b->d_recv);
        cudaStreamDestroy(b->stream);
        ncclCommDestroy(b->comm);
        free(b);
    }
    memset(t, 0, sizeof *t);
}
