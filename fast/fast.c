/**
 * @file fast.c
 * @brief Device query and CUDA error formatting shared by every launcher (fast.h).
 */
#include "fast.h"

#include <string.h>

const char *fast_dtype_name(FastDType t) {
    switch (t) {
    case FAST_F32: return "f32";
    case FAST_BF16: return "bf16";
    }
    return "?";
}

int fast_cuda_err(cudaError_t e, const char *fn, const char *what, Err *err) {
    if (e == cudaSuccess) return 0;
    return err_set(err, "%s: %s: %s (%s)", fn, what, cudaGetErrorName(e), cudaGetErrorString(e));
}

int fast_check_launch(const char *fn, const char *kernel, Err *err) {
    return fast_cuda_err(cudaGetLastError(), fn, kernel, err);
}

/* One slot per device ordinal, filled on first use (not thread-safe: call once before spawning threads). */
/** Device ordinals the cache covers. */
#define FAST_MAX_DEVICES 64
static FastDevice cache[FAST_MAX_DEVICES];
static int cached[FAST_MAX_DEVICES];

int fast_device(FastDevice *d, Err *err) {
    int dev = 0;
    if (fast_cuda_err(cudaGetDevice(&dev), "fast_device", "cudaGetDevice", err)) return -1;
    if (dev >= 0 && dev < FAST_MAX_DEVICES && cached[dev]) {
        *d = cache[dev];
        return 0;
    }
    struct cudaDeviceProp p;
    if (fast_cuda_err(cudaGetDeviceProperties(&p, dev), "fast_device", "cudaGetDeviceProperties", err)) return -1;
    memset(d, 0, sizeof *d);
    d->device = dev;
    d->cc_major = p.major;
    d->cc_minor = p.minor;
    d->sm_count = p.multiProcessorCount;
    d->smem_optin = p.sharedMemPerBlockOptin;
    d->l2_bytes = (size_t)p.l2CacheSize;
    snprintf(d->name, sizeof d->name, "%s", p.name);
    if (dev >= 0 && dev < FAST_MAX_DEVICES) {
        cache[dev] = *d;
        cached[dev] = 1;
    }
    return 0;
}
