/**
 * @file test_kernels.h
 * @brief What the kernel groups of test_gpu_kernels share: the run's settings (--quick, the
 *        device, the one random stream), host helpers, and each group's entry point. The groups
 *        live one per file (test_kernels_<group>.c); test_kernels.c holds main and the registry,
 *        which runs the chosen groups in one fixed order (they share one random stream, so a
 *        group's inputs depend on the groups run before it).
 */
#ifndef DSV3_TESTS_GPU_TEST_KERNELS_H
#define DSV3_TESTS_GPU_TEST_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "base/rng.h"
#include "base/util.h"
#include "fast.h"
#include "gpu_util.h"

/** --quick: the smaller grid `make test` runs. */
extern int g_quick;
/** The device under test (fast_device). */
extern FastDevice g_dev;
/** The one random stream of the run, seeded once in main. */
extern Rng g_rng;

/** malloc that never returns NULL: on failure prints a FAIL line and exits (tests only). */
void *xmalloc(size_t n);
/** A standard normal draw from g_rng. */
float randn(void);
/** A uniform integer in [0, n) from g_rng. */
int randint(int n);
/** A launcher's return code: 1 when it is 0; otherwise records a failure with its message and returns 0. */
int launched(int rc, const Err *err, const char *what);
/** Records a failure when a guard band of @p b was overwritten. */
void guards(const DevBuf *b, const char *what);
/** Number of 128-wide blocks covering @p N (weight scale rows and columns). */
int64_t nblk(int64_t N);

/** --group ops: RMSNorm, RoPE, SwiGLU, residual add, embedding gather (test_kernels_ops.c). */
void test_ops(void);
/** --group act_quant: 1×128 FP8 activation quantization (test_kernels_act_quant.c). */
void test_act_quant(void);
/** --group gemm_mma: block-scaled FP8 GEMM, mma.sync path (test_kernels_gemm.c). */
void test_gemm_mma(void);
/** --group gemm_wgmma: block-scaled FP8 GEMM, WGMMA path (test_kernels_gemm.c). */
void test_gemm_wgmma(void);
/** --group mla: absorbed MLA decode over a paged cache (test_kernels_mla.c). */
void test_mla(void);
/** --group moe: gate, permute, gather, combine and the whole MoE layer (test_kernels_moe.c). */
void test_moe(void);
/** --group generic: every launcher of fast/generic.h (test_kernels_generic.c). */
void test_generic(void);

#endif /* DSV3_TESTS_GPU_TEST_KERNELS_H */
