/**
 * @file test_kernels.c
 * @brief Every CUDA kernel of fast/ against the reference function of ref/ on the same inputs
 *        (the reference itself is linked, never a copy), with guard bands around every
 *        output buffer, poisoned outputs (0xFF = NaN) so unwritten elements show, NaN/Inf
 *        positions checked first, then a per-element tolerance, then NMSE; the worst element
 *        is printed. Each tolerance is justified where it is set. This file is main, the
 *        registry of groups and the helpers they share (test_kernels.h); each group is a file
 *        of its own, test_kernels_<group>.c (gemm_mma and gemm_wgmma share test_kernels_gemm.c).
 *
 * Usage: test_gpu_kernels [--quick] [--group NAME]...   groups: ops act_quant gemm_mma
 *        mla moe generic gemm_wgmma (default: all, in that order). Without a CUDA device it
 *        prints SKIP and exits 0.
 * Exit status: 0 when every check passed, 1 otherwise, 2 on a bad argument. Last line:
 * "test_gpu_kernels: N passed, M failed".
 *
 * First run on an H100 on 2026-11-22: 190 checks pass (docs/kernels.md).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_kernels.h"

int g_quick;
FastDevice g_dev;
Rng g_rng;

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        printf("  [FAIL] host malloc(%zu) failed\n", n);
        exit(1);
    }
    return p;
}
float randn(void) { return rng_normal(&g_rng); }
int randint(int n) { return (int)(rng_u32(&g_rng) % (uint32_t)n); }

int launched(int rc, const Err *err, const char *what) {
    if (rc == 0) return 1;
    report(0, "%s: launcher returned %d: %s", what, rc, err->msg);
    return 0;
}

void guards(const DevBuf *b, const char *what) {
    int ok = devbuf_guards_ok(b);
    if (!ok) report(0, "%s: guard band of %s overwritten", what, b->name);
}

int64_t nblk(int64_t N) { return (N + 127) / 128; }

/* ========================================================================================= */

/** One --group: its name and its entry point. */
typedef struct {
    const char *name;
    void (*run)(void);
} KernelGroup;

/* The order of a full run (make test-gpu runs each group in its own process, in this order). */
static const KernelGroup GROUPS[] = {
    { "ops", test_ops },   { "act_quant", test_act_quant }, { "gemm_mma", test_gemm_mma },
    { "mla", test_mla },   { "moe", test_moe },             { "generic", test_generic },
    { "gemm_wgmma", test_gemm_wgmma }, /* last: a trap would end the process */
};
enum { NGROUPS = sizeof GROUPS / sizeof GROUPS[0] };

static int find_group(const char *name) {
    for (int i = 0; i < NGROUPS; i++)
        if (strcmp(GROUPS[i].name, name) == 0) return i;
    return -1;
}

static int usage(const char *prog) {
    fprintf(stderr, "usage: %s [--quick] [--group ", prog);
    for (int i = 0; i < NGROUPS; i++) fprintf(stderr, "%s%s", i ? "|" : "", GROUPS[i].name);
    fprintf(stderr, "]...\n");
    return 2;
}

int main(int argc, char **argv) {
    int want[NGROUPS] = { 0 }, ngroups = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            g_quick = 1;
        } else if (strcmp(argv[i], "--group") == 0 && i + 1 < argc) {
            int g = find_group(argv[++i]);
            if (g < 0) {
                fprintf(stderr, "%s: unknown group '%s'\n", argv[0], argv[i]);
                return usage(argv[0]);
            }
            want[g] = 1, ngroups++;
        } else {
            return usage(argv[0]);
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        printf("SKIP: no CUDA device (cudaGetDeviceCount: %s, %d devices)\n",
               e != cudaSuccess ? cudaGetErrorString(e) : "ok", count);
        printf("test_gpu_kernels: 0 passed, 0 failed (skipped: no GPU)\n");
        return 0;
    }
    Err err = { { 0 } };
    if (fast_device(&g_dev, &err)) {
        printf("test_gpu_kernels: 0 passed, 1 failed (%s)\n", err.msg);
        return 1;
    }
    printf("device: %s, compute capability %d.%d, %d SMs, %zu KiB shared memory per block (opt-in), %zu MiB L2%s\n",
           g_dev.name, g_dev.cc_major, g_dev.cc_minor, g_dev.sm_count, g_dev.smem_optin / 1024,
           g_dev.l2_bytes >> 20, g_quick ? "; --quick" : "");
    rng_seed(&g_rng, 20240707);
    for (int g = 0; g < NGROUPS; g++)
        if (ngroups == 0 || want[g]) GROUPS[g].run();
    int passed, failed;
    report_counts(&passed, &failed);
    printf("test_gpu_kernels: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
