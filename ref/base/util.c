/**
 * @file util.c
 * @brief Implementation of util.h: errors, checked arithmetic, files, number formats.
 */
#include "util.h"

#include "infile.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* err_set, err_prefix: see util.h */
int err_set(Err *e, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int err_prefix(Err *e, const char *fmt, ...) {
    if (!e) return -1;
    char prefix[256], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    snprintf(e->msg, sizeof e->msg, "%s: %s", prefix, old);
    return -1;
}

int size_mul(size_t *out, size_t a, size_t b) {
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}

int size_add(size_t *out, size_t a, size_t b) {
    return __builtin_add_overflow(a, b, out) ? -1 : 0;
}

void *xcalloc(size_t n, size_t size) {
    size_t total;
    if (size_mul(&total, n, size) != 0) return NULL;
    return calloc(n ? n : 1, size ? size : 1);
}

int read_file(const char *path, size_t max_bytes, char **data, size_t *len, Err *err) {
    *data = NULL;
    *len = 0;
    int fd;
    struct stat sb;
    if (infile_open(path, &fd, &sb, err)) return -1;
    if ((uint64_t)sb.st_size > (uint64_t)max_bytes) {
        close(fd);
        return err_set(err, "%s: file is %lld bytes, more than the %zu allowed", path, (long long)sb.st_size, max_bytes);
    }
    size_t n = (size_t)sb.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return err_set(err, "%s: out of memory reading %zu bytes", path, n);
    }
    /* A file that shrinks while it is read is an error, not a short buffer; one that grows is read as it was. */
    if (infile_pread(fd, buf, n, 0, path, err)) {
        free(buf);
        close(fd);
        return -1;
    }
    close(fd);
    buf[n] = 0;
    *data = buf;
    *len = n;
    return 0;
}

uint16_t f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = { f };
    if ((v.u & 0x7f800000u) == 0x7f800000u && (v.u & 0x007fffffu)) return (uint16_t)((v.u >> 16) | 0x40);
    uint32_t rounding = 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)((v.u + rounding) >> 16);
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    float mag;
    if (exp == 0) mag = ldexpf((float)man, -24);            /* subnormal: man · 2^-24 */
    else if (exp == 31) mag = man ? NAN : INFINITY;
    else mag = ldexpf((float)(man | 0x400), (int)exp - 25); /* (1024+man) · 2^(e-15-10) */
    union { float f; uint32_t u; } v = { mag };
    v.u |= sign;
    return v.f;
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t peak_rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    size_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kb = (size_t)strtoull(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb * 1024;
}

int parse_long(const char *s, long lo, long hi, long *out) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int parse_double(const char *s, double lo, double hi, double *out) {
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/** Skips blanks and line ends. */
#define SKIP_SPACE() while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) i++
/** Frees the ids so far and returns the message. */
#define FAIL(...) do { free(v); return err_set(err, __VA_ARGS__); } while (0)
/** How much of the text at i a message quotes: at most 20 bytes, never past len (s need not end in a NUL). */
#define SHOWN() (int)(len - i < 20 ? len - i : 20)

/* Ids separated by ',', optionally in [brackets], whitespace allowed around them. */
int parse_id_text(const char *s, size_t len, long max_id, int **ids, size_t *n, Err *err) {
    *ids = NULL;
    *n = 0;
    size_t i = 0, cap = 1, count = 0;
    for (size_t k = 0; k < len; k++) cap += s[k] == ',';
    int *v = xcalloc(cap, sizeof *v);
    if (!v) return err_set(err, "out of memory");
    SKIP_SPACE();
    int bracket = i < len && s[i] == '[';
    if (bracket) i++;
    for (;;) {
        SKIP_SPACE();
        if (i >= len || (bracket && s[i] == ']')) {
            if (count > 0) FAIL("trailing ','");
            break;
        }
        if (s[i] < '0' || s[i] > '9') FAIL("'%.*s' is not a token id (a non-negative integer)", SHOWN(), s + i);
        long x = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            x = x * 10 + (s[i++] - '0');
            if (x > 0x7fffffff) FAIL("token id at offset %zu is too large", i);
        }
        if (max_id >= 0 && x >= max_id) FAIL("id %ld out of range [0, %ld)", x, max_id);
        v[count++] = (int)x; /* count < cap: one more id than commas at most */
        SKIP_SPACE();
        if (i < len && s[i] == ',') {
            i++;
            continue;
        }
        break;
    }
    if (bracket) {
        if (i >= len || s[i] != ']') FAIL("missing ']'");
        i++;
        SKIP_SPACE();
    }
    if (i < len) FAIL("unexpected '%.*s' after the ids", SHOWN(), s + i);
#undef SKIP_SPACE
#undef FAIL
#undef SHOWN
    *ids = v;
    *n = count;
    return 0;
}

int parse_id_list(const char *s, long max_id, int **ids, int *n, Err *err) {
    size_t count;
    *n = 0;
    if (!s || !*s) return err_set(err, "--ids: empty list");
    if (strlen(s) > 0x7fffffff || parse_id_text(s, strlen(s), max_id, ids, &count, err)) return err_prefix(err, "--ids");
    if (count == 0) {
        free(*ids);
        *ids = NULL;
        return err_set(err, "--ids: empty list");
    }
    *n = (int)count;
    return 0;
}

int utf8_valid(const char *str, size_t len) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xe0) == 0xc0) { n = 1; cp = c & 0x1f; }
        else if ((c & 0xf0) == 0xe0) { n = 2; cp = c & 0x0f; }
        else if ((c & 0xf8) == 0xf0) { n = 3; cp = c & 0x07; }
        else return 0;
        if (len - i <= n) return 0; /* needs n continuation bytes after s[i] */
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)) return 0;
        if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += n + 1;
    }
    return 1;
}

int path_join(char *out, size_t cap, const char *dir, const char *name) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    return (n < 0 || (size_t)n >= cap) ? -1 : 0;
}

void *arena_take(Arena *a, size_t n, size_t elem) {
    size_t bytes, start, end;
    if (a->overflow || size_mul(&bytes, n, elem) || size_add(&start, a->used, 63) ||
        size_add(&end, start & ~(size_t)63, bytes)) {
        a->overflow = 1;
        return NULL;
    }
    start &= ~(size_t)63;
    a->used = end;
    if (!a->base) return NULL;
    if (end > a->cap) {
        a->overflow = 1;
        return NULL;
    }
    return a->base + start;
}

int map_file_readonly(const char *path, const uint8_t **map, size_t *size, Err *err) {
    *map = NULL;
    *size = 0;
    int fd;
    struct stat sb;
    if (infile_open(path, &fd, &sb, err)) return -1;
    size_t n = (size_t)sb.st_size;
    if (n > 0) {
        void *m = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            return err_set(err, "%s: mmap failed: %s", path, strerror(e));
        }
        *map = m;
    }
    close(fd);
    *size = n;
    return 0;
}

void unmap_file(const uint8_t *map, size_t size) {
    if (map) munmap((void *)map, size);
}

/* parallel_ranges: workers take the next unclaimed range until none is left. */
typedef struct {
    int64_t n, chunk, next;
    void (*fn)(void *, int64_t, int64_t);
    void *ctx;
    pthread_mutex_t lock;
} RangeQueue;

static void *range_worker(void *arg) {
    RangeQueue *q = arg;
    for (;;) {
        pthread_mutex_lock(&q->lock);
        int64_t lo = q->next;
        q->next = lo < q->n ? (lo + q->chunk < q->n ? lo + q->chunk : q->n) : q->n;
        pthread_mutex_unlock(&q->lock);
        if (lo >= q->n) return NULL;
        q->fn(q->ctx, lo, lo + q->chunk < q->n ? lo + q->chunk : q->n);
    }
}

void parallel_ranges(int64_t n, int64_t chunk, void (*fn)(void *ctx, int64_t lo, int64_t hi), void *ctx) {
    if (chunk < 1) chunk = 1;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int64_t ranges = (n + chunk - 1) / chunk;
    int nt = (int)(cpus < 1 ? 1 : cpus > 64 ? 64 : cpus);
    if (nt > ranges) nt = (int)ranges;
    if (n <= 0) return;
    RangeQueue q = { n, chunk, 0, fn, ctx, PTHREAD_MUTEX_INITIALIZER };
    pthread_t th[64];
    int started = 0;
    for (; nt > 1 && started < nt - 1; started++)
        if (pthread_create(&th[started], NULL, range_worker, &q) != 0) break;
    range_worker(&q); /* the calling thread works too (and alone if no thread started) */
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
}
