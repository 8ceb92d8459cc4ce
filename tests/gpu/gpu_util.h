/**
 * @file gpu_util.h
 * @brief Support for the GPU kernel tests and benchmarks: device buffers with guard bands,
 *        comparisons in the order llama.cpp's test-backend-ops uses (non-finite positions,
 *        then per-element tolerance, then NMSE, printing the worst index), pass/fail counters,
 *        and CUDA-event timing. C11 host code; it links the ref/ functions it compares against.
 */
#ifndef DSV3_TESTS_GPU_UTIL_H
#define DSV3_TESTS_GPU_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

/** Bytes of sentinel before and after every device buffer (keeps 256-byte alignment). */
#define GUARD_BYTES 256
/** The sentinel value of guard bands. */
#define GUARD_BYTE 0xA5

/** A device allocation with guard bands: [GUARD_BYTES sentinel][bytes][GUARD_BYTES sentinel]. */
typedef struct {
    char name[64];  /**< for messages */
    uint8_t *base;  /**< cudaMalloc'd block */
    void *ptr;      /**< base + GUARD_BYTES: what kernels get */
    size_t bytes;   /**< usable bytes */
} DevBuf;

/** Allocates @p bytes (≥ 1) with sentinel guards; on failure prints and exits (tests only). */
DevBuf devbuf_new(const char *name, size_t bytes);
/** Frees the buffer (no-op on a zeroed DevBuf). */
void devbuf_free(DevBuf *b);
/** Copies @p bytes from host into the buffer. */
void devbuf_upload(DevBuf *b, const void *host, size_t bytes);
/** Copies @p bytes from the buffer to host (synchronizes the device first). */
void devbuf_download(void *host, const DevBuf *b, size_t bytes);
/** Fills the usable bytes with @p byte (0xFF makes every f32/bf16 a NaN: unwritten outputs show). */
void devbuf_poison(DevBuf *b, uint8_t byte);
/** Checks both guard bands; prints the first overwritten offset and returns 0 if one was written. */
int devbuf_guards_ok(const DevBuf *b);

/** Checks a CUDA call; on error prints file:line, the call and the error, the summary, and exits 1. */
#define CHECK_CUDA(call) gpu_check_cuda((call), #call, __FILE__, __LINE__)
/** See CHECK_CUDA. */
void gpu_check_cuda(cudaError_t e, const char *what, const char *file, int line);
/** Synchronizes the device within @p seconds or reports a hang and exits (a watchdog for never-run kernels). */
void gpu_sync_or_die(double seconds, const char *what);

/** Records one check: prints "[PASS]"/"[FAIL]" and the formatted detail; returns @p ok. */
int report(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Program name used in the summary line printed on a fatal CUDA error (default "test_gpu_kernels"). */
extern const char *gpu_prog_name;
/** Checks passed and failed so far. */
void report_counts(int *passed, int *failed);

/** Per-element tolerance: |got − want| ≤ atol + rtol·|want| + (tol ? tol[i] : 0). */
typedef struct {
    double atol;        /**< absolute part */
    double rtol;        /**< relative part */
    const float *tol;   /**< optional per-element extra bound (e.g. 2^-10 · Σ|terms| for GEMMs) */
    double nmse_max;    /**< Σ(got−want)² / Σ want² must not exceed this (< 0: not checked) */
} Tol;

/**
 * Compares n floats laid out as rows of @p cols: (1) NaN/Inf positions must agree, (2) every
 * element within Tol, (3) NMSE within Tol. Prints one line with the worst element (row, col),
 * its values, max |d|/bound and the NMSE, records the result and returns 1 when all pass.
 */
int check_close(const char *what, const float *got, const float *want, int64_t n, int64_t cols, Tol tol);
/** Bitwise equality of n floats (NaN payloads included); prints the first mismatch. */
int check_bits_f32(const char *what, const float *got, const float *want, int64_t n, int64_t cols);
/** Equality of n bytes; prints the first mismatch. */
int check_bytes(const char *what, const uint8_t *got, const uint8_t *want, int64_t n, int64_t cols);
/** Equality of n ints; prints the first mismatch. */
int check_ints(const char *what, const int *got, const int *want, int64_t n, int64_t cols);

/** Milliseconds between two recorded events (after synchronizing the second). */
float event_ms(cudaEvent_t a, cudaEvent_t b);

/** bf16 bits of every element of x (round to nearest even), n values. */
void to_bf16(uint16_t *out, const float *x, int64_t n);
/** x rounded through bf16 and back, in place. */
void round_bf16(float *x, int64_t n);

#endif /* DSV3_TESTS_GPU_UTIL_H */
