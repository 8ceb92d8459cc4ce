/**
 * @file util.h
 * @brief Error reporting, checked size arithmetic, number formats and small OS helpers.
 *
 * Two error regimes (docs/style.md):
 *  - anything that comes from outside (files, flags, prompts) is validated where it
 *    enters and reported through an ::Err: the function returns -1 and the Err holds
 *    one line that names the file or field, the value received and the value required;
 *  - internal invariants use DSV3_ASSERT, which prints file:line and aborts. It must
 *    never be reachable from bad input.
 *
 * Every size computed from outside numbers goes through size_mul()/size_add(),
 * which refuse to wrap around (the GGUF CVE class in docs/formats.md §1.4).
 */
#ifndef DSV3_UTIL_H
#define DSV3_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

/** One-line error message carried back to the caller; empty when nothing failed. */
typedef struct {
    char msg[512]; /**< the message, NUL-terminated */
} Err;

/** Formats the message into @p e (if not NULL) and returns -1, so callers can `return err_set(...)`. */
int err_set(Err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Prepends "prefix: " to an existing message (e.g. the file name), returns -1. */
int err_prefix(Err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Internal invariant; failing it is a bug in dsv3, never a user error. */
#define DSV3_ASSERT(cond)                                                                   \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "dsv3: internal error at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                        \
        }                                                                                   \
    } while (0)

/** *out = a*b; returns 0, or -1 if the product does not fit in size_t. */
int size_mul(size_t *out, size_t a, size_t b);
/** *out = a+b; returns 0, or -1 on overflow. */
int size_add(size_t *out, size_t a, size_t b);

/** calloc(n, size) with an overflow check; NULL on overflow or exhaustion. */
void *xcalloc(size_t n, size_t size);

/**
 * Reads a whole regular file into a NUL-terminated buffer (len excludes the NUL); caps the size
 * at @p max_bytes. Opened without blocking (a FIFO, a device or a directory is refused with a
 * message, see infile.h); a file that shrinks while being read is an error.
 */
int read_file(const char *path, size_t max_bytes, char **data, size_t *len, Err *err);

/**
 * Writes @p len bytes as one complete output (outfile.h: a unique temporary beside @p path,
 * fsync, rename into place; a device or FIFO target is written directly). Implemented in outfile.c.
 */
int write_file_atomic(const char *path, const void *data, size_t len, Err *err);

/** bfloat16 bits → float (exact). */
static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}
/** float → bfloat16 bits, round to nearest even (NaN stays NaN). */
uint16_t f32_to_bf16(float f);
/** IEEE half bits → float (exact, incl. subnormals, inf, NaN). */
float f16_to_f32(uint16_t h);

/** Wall-clock seconds from a monotonic clock. */
double now_seconds(void);
/** Peak resident set size of this process in bytes (VmHWM), 0 if unknown. */
size_t peak_rss_bytes(void);

/** Parses a decimal integer in [lo, hi]; the whole string must be consumed. 0 ok, -1 error. */
int parse_long(const char *s, long lo, long hi, long *out);
/** Parses a finite float in [lo, hi]; the whole string must be consumed. 0 ok, -1 error. */
int parse_double(const char *s, double lo, double hi, double *out);
/**
 * Parses an id list — "5,17,3", or "[5, 17, 3]" as `dsv3 tokenize` prints it, whitespace allowed
 * around ids — of @p len bytes into a malloc'd array of @p *n ids (NULL for an empty list), each
 * in [0, @p max_id) (any non-negative int when @p max_id < 0). Errors name the offending text.
 */
int parse_id_text(const char *s, size_t len, long max_id, int **ids, size_t *n, Err *err);
/** parse_id_text of the NUL-terminated flag value @p s (messages start "--ids"); an empty list is an error. */
int parse_id_list(const char *s, long max_id, int **ids, int *n, Err *err);

/** True when [s, s+len) is valid UTF-8 (no overlongs, no surrogates, ≤ U+10FFFF). */
int utf8_valid(const char *s, size_t len);

/**
 * Calls fn(ctx, lo, hi) for consecutive ranges [lo, hi) covering [0, n), each at most @p chunk
 * long, on up to one POSIX thread per online CPU (at most 64). Ranges are independent, so a
 * caller whose ranges compute what a sequential loop would (each from its own starting state)
 * gets bit-identical results on any machine. Runs inline when n ≤ chunk or threads fail.
 */
void parallel_ranges(int64_t n, int64_t chunk, void (*fn)(void *ctx, int64_t lo, int64_t hi), void *ctx);

/** Joins "dir/name" into @p out (size @p cap); -1 if it does not fit. */
int path_join(char *out, size_t cap, const char *dir, const char *name);

/**
 * Carves many arrays out of one allocation, in two passes over the same code: with base = NULL
 * it only adds up the sizes (overflow-checked), then with a real base it hands out pointers.
 */
typedef struct {
    char *base;   /**< NULL while counting */
    size_t used;  /**< bytes handed out (or counted) so far, each array 64-byte aligned */
    size_t cap;   /**< bytes available at base */
    int overflow; /**< set when a size computation overflowed or cap was exceeded */
} Arena;

/** Reserves n × elem bytes (64-byte aligned); returns NULL while counting or on overflow. */
void *arena_take(Arena *a, size_t n, size_t elem);

/** `ptr = n elements of ptr's type from Arena *ar` — the one idiom every layout function uses. */
#define ARENA_TAKE(ar, ptr, n) ((ptr) = arena_take((ar), (size_t)(n), sizeof *(ptr)))

/**
 * Maps a regular file read-only (an empty file maps to NULL with size 0). Errors name the
 * file: cannot open, not a regular file, mmap failure; opened without blocking (infile.h).
 * Release with unmap_file(). The mapping is for files nothing rewrites while they are in use
 * (checkpoints); data that may change under a long run is read instead (train/data.h).
 */
int map_file_readonly(const char *path, const uint8_t **map, size_t *size, Err *err);
/** Releases a mapping made by map_file_readonly (NULL is fine). */
void unmap_file(const uint8_t *map, size_t size);
#ifdef __cplusplus
}
#endif

#endif /* DSV3_UTIL_H */
