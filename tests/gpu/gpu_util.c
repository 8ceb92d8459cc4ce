/**
 * @file gpu_util.c
 * @brief Implementation of gpu_util.h.
 */
#include "gpu_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/util.h"

static int g_passed, g_failed;
const char *gpu_prog_name = "test_gpu_kernels";

void report_counts(int *passed, int *failed) {
    *passed = g_passed;
    *failed = g_failed;
}

int report(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("  [%s] ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (ok) g_passed++;
    else g_failed++;
    return ok;
}

void gpu_check_cuda(cudaError_t e, const char *what, const char *file, int line) {
    if (e == cudaSuccess) return;
    printf("  [FAIL] %s:%d: %s: %s (%s)\n", file, line, what, cudaGetErrorName(e), cudaGetErrorString(e));
    g_failed++;
    printf("%s: %d passed, %d failed (stopped at a CUDA error; later checks did not run)\n", gpu_prog_name,
           g_passed, g_failed);
    exit(1);
}

void gpu_sync_or_die(double seconds, const char *what) {
    double t0 = now_seconds();
    for (;;) {
        cudaError_t e = cudaStreamQuery(0);
        if (e == cudaSuccess) break;
        if (e != cudaErrorNotReady) gpu_check_cuda(e, what, __FILE__, __LINE__);
        if (now_seconds() - t0 > seconds) {
            printf("  [FAIL] %s: still running after %.0f s; treating it as a hang\n", what, seconds);
            g_failed++;
            printf("%s: %d passed, %d failed (stopped at a hang)\n", gpu_prog_name, g_passed, g_failed);
            exit(1);
        }
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    CHECK_CUDA(cudaDeviceSynchronize());
}

DevBuf devbuf_new(const char *name, size_t bytes) {
    DevBuf b;
    memset(&b, 0, sizeof b);
    snprintf(b.name, sizeof b.name, "%s", name);
    b.bytes = bytes ? bytes : 1;
    CHECK_CUDA(cudaMalloc((void **)&b.base, b.bytes + 2 * GUARD_BYTES));
    CHECK_CUDA(cudaMemset(b.base, GUARD_BYTE, b.bytes + 2 * GUARD_BYTES));
    b.ptr = b.base + GUARD_BYTES;
    return b;
}

void devbuf_free(DevBuf *b) {
    if (b->base) CHECK_CUDA(cudaFree(b->base));
    memset(b, 0, sizeof *b);
}

void devbuf_upload(DevBuf *b, const void *host, size_t bytes) {
    if (bytes > b->bytes) {
        printf("  [FAIL] upload of %zu bytes into %s (%zu bytes)\n", bytes, b->name, b->bytes);
        exit(1);
    }
    CHECK_CUDA(cudaMemcpy(b->ptr, host, bytes, cudaMemcpyHostToDevice));
}

void devbuf_download(void *host, const DevBuf *b, size_t bytes) {
    if (bytes > b->bytes) {
        printf("  [FAIL] download of %zu bytes from %s (%zu bytes)\n", bytes, b->name, b->bytes);
        exit(1);
    }
    gpu_sync_or_die(120.0, b->name);
    CHECK_CUDA(cudaMemcpy(host, b->ptr, bytes, cudaMemcpyDeviceToHost));
}

void devbuf_poison(DevBuf *b, uint8_t byte) { CHECK_CUDA(cudaMemset(b->ptr, byte, b->bytes)); }

int devbuf_guards_ok(const DevBuf *b) {
    uint8_t g[2][GUARD_BYTES];
    gpu_sync_or_die(120.0, b->name);
    CHECK_CUDA(cudaMemcpy(g[0], b->base, GUARD_BYTES, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(g[1], b->base + GUARD_BYTES + b->bytes, GUARD_BYTES, cudaMemcpyDeviceToHost));
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < GUARD_BYTES; i++)
            if (g[s][i] != GUARD_BYTE) {
                printf("    guard band %s %s overwritten at byte %d (0x%02x)\n", s ? "after" : "before", b->name,
                       s ? i : i - GUARD_BYTES, g[s][i]);
                return 0;
            }
    return 1;
}

int check_close(const char *what, const float *got, const float *want, int64_t n, int64_t cols, Tol tol) {
    int64_t nonfinite_bad = 0, first_nf = -1, worst = -1, worst_abs = -1, fails = 0;
    double worst_ratio = 0.0, se = 0.0, sw = 0.0, max_abs = 0.0;
    for (int64_t i = 0; i < n; i++) {
        int gf = isfinite(got[i]), wf = isfinite(want[i]);
        if (!gf || !wf) {
            /* Non-finite positions must agree exactly: NaN with NaN, +Inf with +Inf. */
            int same = (isnan(got[i]) && isnan(want[i])) || (!gf && !wf && got[i] == want[i]);
            if (!same) {
                if (first_nf < 0) first_nf = i;
                nonfinite_bad++;
            }
            continue;
        }
        double d = fabs((double)got[i] - (double)want[i]);
        double bound = tol.atol + tol.rtol * fabs((double)want[i]) + (tol.tol ? (double)tol.tol[i] : 0.0);
        double ratio = bound > 0 ? d / bound : (d > 0 ? INFINITY : 0.0);
        if (d > bound) fails++;
        if (ratio > worst_ratio || worst < 0) worst_ratio = ratio, worst = i;
        if (d > max_abs || worst_abs < 0) max_abs = d, worst_abs = i;
        se += d * d;
        sw += (double)want[i] * (double)want[i];
    }
    double nmse = sw > 0 ? se / sw : (se > 0 ? INFINITY : 0.0);
    int ok = nonfinite_bad == 0 && fails == 0 && (tol.nmse_max < 0 || nmse <= tol.nmse_max);
    if (worst_ratio == 0.0) worst = worst_abs; /* infinite or zero bounds: show the largest |d| */
    char where[128] = "-";
    if (worst >= 0)
        snprintf(where, sizeof where, "[%lld][%lld] got %.9g want %.9g", (long long)(worst / cols),
                 (long long)(worst % cols), got[worst], want[worst]);
    report(ok, "%s: n=%lld non-finite mismatches=%lld, over tolerance=%lld, max|d|=%.3g, worst |d|/bound=%.3g at %s, "
           "nmse=%.3g (limit %.3g)",
           what, (long long)n, (long long)nonfinite_bad, (long long)fails, max_abs, worst_ratio, where, nmse,
           tol.nmse_max);
    if (first_nf >= 0)
        printf("    first non-finite mismatch at [%lld][%lld]: got %g want %g\n", (long long)(first_nf / cols),
               (long long)(first_nf % cols), got[first_nf], want[first_nf]);
    return ok;
}

/* How many of n elements of `size` bytes differ bitwise; *first = the first such index (or -1). */
static int64_t count_diff(const void *got, const void *want, int64_t n, size_t size, int64_t *first) {
    int64_t bad = 0;
    *first = -1;
    for (int64_t i = 0; i < n; i++)
        if (memcmp((const char *)got + i * size, (const char *)want + i * size, size) != 0) {
            if (*first < 0) *first = i;
            bad++;
        }
    return bad;
}

int check_bits_f32(const char *what, const float *got, const float *want, int64_t n, int64_t cols) {
    int64_t first;
    const int64_t bad = count_diff(got, want, n, sizeof *got, &first);
    if (first >= 0)
        return report(0, "%s: %lld of %lld differ bitwise; first at [%lld][%lld]: got %.9g want %.9g", what,
                      (long long)bad, (long long)n, (long long)(first / cols), (long long)(first % cols), got[first],
                      want[first]);
    return report(1, "%s: %lld values bit-identical", what, (long long)n);
}

int check_bytes(const char *what, const uint8_t *got, const uint8_t *want, int64_t n, int64_t cols) {
    int64_t first;
    const int64_t bad = count_diff(got, want, n, 1, &first);
    if (first >= 0)
        return report(0, "%s: %lld of %lld bytes differ; first at [%lld][%lld]: got 0x%02x want 0x%02x", what,
                      (long long)bad, (long long)n, (long long)(first / cols), (long long)(first % cols), got[first],
                      want[first]);
    return report(1, "%s: %lld bytes identical", what, (long long)n);
}

int check_ints(const char *what, const int *got, const int *want, int64_t n, int64_t cols) {
    int64_t first;
    const int64_t bad = count_diff(got, want, n, sizeof *got, &first);
    if (first >= 0)
        return report(0, "%s: %lld of %lld differ; first at [%lld][%lld]: got %d want %d", what, (long long)bad,
                      (long long)n, (long long)(first / cols), (long long)(first % cols), got[first], want[first]);
    return report(1, "%s: %lld values identical", what, (long long)n);
}

float event_ms(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0.0f;
    CHECK_CUDA(cudaEventSynchronize(b));
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    return ms;
}

void to_bf16(uint16_t *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = f32_to_bf16(x[i]);
}

void round_bf16(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
}
