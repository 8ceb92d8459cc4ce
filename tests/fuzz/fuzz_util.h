/**
 * @file fuzz_util.h
 * @brief Shared by the libFuzzer targets whose parser reads files rather than buffers: a private
 *        scratch directory (under $TMPDIR, removed at exit) and a helper that writes one input.
 */
#ifndef DSV3_FUZZ_UTIL_H
#define DSV3_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char fuzz_dir[4096];

static void fuzz_cleanup(void) {
    char cmd[4200];
    if (fuzz_dir[0]) snprintf(cmd, sizeof cmd, "rm -rf '%s'", fuzz_dir), (void)!system(cmd);
}

/** Creates the scratch directory once; returns its path. */
static const char *fuzz_scratch(void) {
    if (!fuzz_dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(fuzz_dir, sizeof fuzz_dir, "%s/dsv3-fuzz-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(fuzz_dir)) abort();
        atexit(fuzz_cleanup);
    }
    return fuzz_dir;
}

/** Writes @p n bytes to scratch/name (whole file, replaced), returns the path (static buffer per name slot). */
static const char *fuzz_put(const char *name, const void *data, size_t n) {
    static char path[4][4096];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, 4096, "%s/%s", fuzz_scratch(), name);
    FILE *f = fopen(p, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) abort();
    return p;
}

/** Copies file @p src to scratch/name. */
static void fuzz_copy(const char *src, const char *name) {
    FILE *f = fopen(src, "rb");
    if (!f) {
        fprintf(stderr, "fuzz: cannot read %s\n", src);
        abort();
    }
    char *buf = NULL;
    size_t n = 0, cap = 0, k;
    char chunk[65536];
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (n + k > cap) {
            cap = 2 * (n + k);
            buf = realloc(buf, cap);
            if (!buf) abort();
        }
        memcpy(buf + n, chunk, k);
        n += k;
    }
    fclose(f);
    fuzz_put(name, buf, n);
    free(buf);
}

#endif
