/**
 * @file ep_nccl.c
 * @brief EpTransport over NCCL (see ep_nccl.h). Not run on hardware yet: the single-GPU machines
 *        lent to this project can only test a 1-rank communicator (tests/gpu/test_ep_nccl.c).
 *
 * alltoallv as NCCL expresses it: inside one ncclGroupStart/ncclGroupEnd, for every peer d a
 * ncclSend of send_bytes[d] bytes and a ncclRecv of recv_bytes[d] bytes (zero-byte pairs are
 * skipped; NCCL matches sends and receives per peer in call order). The call is synchronous for
 * the caller: it waits on the transport's stream, as the CPU transport returns after its copies.
 *
 * NCCL is opened with dlopen when a group is first joined (DSV3_NCCL_LIB, else libnccl.so.2 on
 * the library path, else the copy beside the CUDA toolkit the binary was built with), so
 * build/dsv3 runs on machines without NCCL and needs it only for multi-GPU runs.
 */
#include "ep_nccl.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

#ifndef DSV3_NCCL_DEFAULT
/** The NCCL library tried last (the Makefile passes the one beside its CUDA toolkit). */
#define DSV3_NCCL_DEFAULT "/usr/local/cuda/lib64/libnccl.so.2"
#endif

/** The NCCL entry points this transport uses, resolved from the shared library. */
static struct {
    void *lib;
    ncclResult_t (*GetUniqueId)(ncclUniqueId *);
    ncclResult_t (*CommInitRank)(ncclComm_t *, int, ncclUniqueId, int);
    ncclResult_t (*CommDestroy)(ncclComm_t);
    ncclResult_t (*Send)(const void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
    ncclResult_t (*Recv)(void *, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
    ncclResult_t (*GroupStart)(void);
    ncclResult_t (*GroupEnd)(void);
    const char *(*GetErrorString)(ncclResult_t);
} nccl;

/** Opens libnccl once per process (the library's own state is per process as well). */
static int nccl_open(Err *err) {
    if (nccl.lib) return 0;
    const char *env = getenv("DSV3_NCCL_LIB"), *tried[3] = { env, env ? NULL : "libnccl.so.2", env ? NULL : DSV3_NCCL_DEFAULT };
    void *lib = NULL;
    for (int i = 0; i < 3 && !lib; i++)
        if (tried[i]) lib = dlopen(tried[i], RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        return err_set(err, "NCCL transport: cannot load %s (set DSV3_NCCL_LIB to libnccl.so.2, or use --ep-transport tcp)",
                       env ? env : "libnccl.so.2 nor " DSV3_NCCL_DEFAULT);
    struct {
        const char *name;
        void **fn;
    } syms[] = { { "ncclGetUniqueId", (void **)&nccl.GetUniqueId }, { "ncclCommInitRank", (void **)&nccl.CommInitRank },
                 { "ncclCommDestroy", (void **)&nccl.CommDestroy }, { "ncclSend", (void **)&nccl.Send },
                 { "ncclRecv", (void **)&nccl.Recv }, { "ncclGroupStart", (void **)&nccl.GroupStart },
                 { "ncclGroupEnd", (void **)&nccl.GroupEnd }, { "ncclGetErrorString", (void **)&nccl.GetErrorString } };
    for (size_t i = 0; i < sizeof syms / sizeof *syms; i++)
        if (!(*syms[i].fn = dlsym(lib, syms[i].name))) {
            dlclose(lib);
            return err_set(err, "NCCL transport: the NCCL library lacks %s", syms[i].name);
        }
    nccl.lib = lib;
    return 0;
}

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
    return err_set(err, "NCCL transport: %s: %s", what, nccl.GetErrorString(r));
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
    ncclResult_t r = nccl.GroupStart();
    for (int d = 0; d < t->nranks && r == ncclSuccess; d++) {
        if (send_bytes[d]) r = nccl.Send(src + send_offsets[d], send_bytes[d], ncclChar, d, b->comm, b->stream);
        if (r == ncclSuccess && recv_bytes[d]) r = nccl.Recv(dst + recv_offsets[d], recv_bytes[d], ncclChar, d, b->comm, b->stream);
    }
    ncclResult_t r2 = nccl.GroupEnd();
    if (r != ncclSuccess) return nccl_fail(err, "ncclSend/ncclRecv", r);
    if (r2 != ncclSuccess) return nccl_fail(err, "ncclGroupEnd", r2);
    if (stage_recv && (e = cudaMemcpyAsync(recv, b->d_recv, r_end, cudaMemcpyDeviceToHost, b->stream)) != cudaSuccess)
        return cuda_fail(err, "copying the received rows back", e);
    if ((e = cudaStreamSynchronize(b->stream)) != cudaSuccess) return cuda_fail(err, "cudaStreamSynchronize", e);
    return 0;
}

int ep_nccl_transport_init(EpTransport *t, const LaunchEnv *env, double timeout_s, Err *err) {
    memset(t, 0, sizeof *t);
    if (nccl_open(err)) return -1;
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
    if (env->rank == 0 && (r = nccl.GetUniqueId(&id)) != ncclSuccess) {
        free(b);
        return nccl_fail(err, "ncclGetUniqueId", r);
    }
    if (bootstrap_share(env, &id, sizeof id, timeout_s, err)) {
        free(b);
        return -1;
    }
    if ((r = nccl.CommInitRank(&b->comm, env->world_size, id, env->rank)) != ncclSuccess) {
        free(b);
        return nccl_fail(err, "ncclCommInitRank", r);
    }
    if ((e = cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        nccl.CommDestroy(b->comm);
        free(b);
        return cuda_fail(err, "cudaStreamCreate", e);
    }
    t->nranks = env->world_size;
    t->alltoallv = nccl_alltoallv;
    t->ctx = b;
    t->device_buffers = 1;
    return 0;
}

void ep_nccl_transport_free(EpTransport *t) {
    NcclBus *b = t->ctx;
    if (b) {
        if (b->d_send) cudaFree(b->d_send);
        if (b->d_recv) cudaFree(b->d_recv);
        cudaStreamDestroy(b->stream);
        nccl.CommDestroy(b->comm);
        free(b);
    }
    memset(t, 0, sizeof *t);
}
