/**
 * @file fast.h
 * @brief What every CUDA launcher of the fast/ backend shares: element types, the error
 *        convention and a cached description of the current device.
 *
 * Conventions (docs/kernels.md has the long form):
 *  - every launcher is `int name(..., cudaStream_t stream, Err *err)` and keeps the argument
 *    order of its reference function in ref/ (outputs, inputs, weights, dims), or takes one
 *    plain parameter struct whose members carry their shapes in comments;
 *  - it returns 0 after enqueuing its kernels, or -1 with one line in @p err naming the
 *    launcher, the parameter, the value received and the value required (or the CUDA error);
 *  - it never synchronizes, never allocates and never aborts on bad input; scratch memory is
 *    passed in by the caller (each launcher that needs some has a `*_workspace_bytes()`);
 *  - all pointers are device pointers unless a comment says "host".
 *
 * Validation status: every kernel behind these launchers was written and compiled on a
 * machine without a GPU; none had run on hardware when this was written (docs/kernels.md).
 */
#ifndef DSV3_FAST_H
#define DSV3_FAST_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "base/util.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Element type of an activation buffer (weights have fixed types: e4m3 or bf16). */
typedef enum {
    FAST_F32 = 0,  /**< IEEE float32 */
    FAST_BF16 = 1, /**< bfloat16 stored as uint16_t bits */
} FastDType;

/** Bytes per element of @p t. */
static inline size_t fast_dtype_size(FastDType t) { return t == FAST_BF16 ? 2 : 4; }

/** Name of @p t for messages ("f32", "bf16", "?"). */
const char *fast_dtype_name(FastDType t);

/** What the launchers need to know about the current device (queried once per device). */
typedef struct {
    int device;          /**< CUDA device ordinal */
    int cc_major;        /**< compute capability, e.g. 9 for H100 */
    int cc_minor;        /**< e.g. 0 for H100 */
    int sm_count;        /**< streaming multiprocessors (132 on H100 SXM) */
    size_t smem_optin;   /**< largest dynamic shared memory per block after opt-in (227 KiB on H100) */
    size_t l2_bytes;     /**< L2 cache size */
    char name[256];      /**< device name */
} FastDevice;

/**
 * Fills @p d for the current device (cached per ordinal after the first call).
 * Returns 0, or -1 with the CUDA error in @p err (e.g. when no device is present).
 */
int fast_device(FastDevice *d, Err *err);

/**
 * If @p e is an error, writes "fn: what: cudaErrorName (message)" into @p err and returns -1;
 * returns 0 for cudaSuccess.
 */
int fast_cuda_err(cudaError_t e, const char *fn, const char *what, Err *err);

/** Checks cudaGetLastError() after a launch (see fast_cuda_err). */
int fast_check_launch(const char *fn, const char *kernel, Err *err);

#ifdef __cplusplus
}
#endif

#endif /* DSV3_FAST_H */
