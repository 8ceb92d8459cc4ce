/**
 * @file util_compare.c
 * @brief Implementation of util_compare.h.
 */
#define _POSIX_C_SOURCE 200809L
#include "util_compare.h"

#include "base/util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

double max_rel_diff(const float *a, const float *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > md || isnan(d)) md = isnan(d) ? INFINITY : d;
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return mb > 0 ? md / mb : md;
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

int argmax_agree(const float *a, const float *b, int rows, int cols) {
    int ok = 0;
    for (int r = 0; r < rows; r++) ok += argmax(a + (size_t)r * cols, cols) == argmax(b + (size_t)r * cols, cols);
    return ok;
}

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

double median_row_rel_diff(const float *a, const float *b, int rows, int cols) {
    double *v = malloc((size_t)rows * sizeof *v);
    for (int r = 0; r < rows; r++) v[r] = max_rel_diff(a + (size_t)r * cols, b + (size_t)r * cols, (size_t)cols);
    qsort(v, (size_t)rows, sizeof *v, cmp_double);
    double m = rows % 2 ? v[rows / 2] : 0.5 * (v[rows / 2 - 1] + v[rows / 2]);
    free(v);
    return m;
}

unsigned char *read_bytes(const char *path, size_t *n) {
    char *data;
    Err err;
    if (read_file(path, (size_t)1 << 31, &data, n, &err)) return NULL;
    return (unsigned char *)data;
}

float *read_f32(const char *path, size_t *n) {
    size_t bytes;
    unsigned char *b = read_bytes(path, &bytes);
    if (!b) return NULL;
    /* read_file's buffer comes from malloc: suitably aligned for float. */
    *n = bytes / sizeof(float);
    return (float *)(void *)b;
}

int *read_ids_json(const char *path, int *n) {
    size_t len;
    unsigned char *buf = read_bytes(path, &len);
    if (!buf) return NULL;
    cJSON *a = cJSON_ParseWithLength((const char *)buf, len);
    free(buf);
    if (!cJSON_IsArray(a)) {
        cJSON_Delete(a);
        return NULL;
    }
    *n = cJSON_GetArraySize(a);
    int *ids = malloc((size_t)*n * sizeof *ids + 1), i = 0;
    for (cJSON *c = a->child; c; c = c->next) ids[i++] = c->valueint;
    cJSON_Delete(a);
    return ids;
}

char *ids_to_csv(const int *ids, int n) {
    char *s = malloc((size_t)n * 12 + 2);
    size_t off = 0;
    s[0] = 0;
    for (int i = 0; i < n; i++) off += (size_t)sprintf(s + off, "%s%d", i ? "," : "", ids[i]);
    return s;
}

char *make_temp_dir(const char *tag) {
    const char *base = getenv("TMPDIR");
    char tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/dsv3-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

void remove_tree(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
}

char *test_tmp;

int test_tmp_setup(void **state) {
    test_tmp = make_temp_dir("test");
    if (state) *state = test_tmp; /* tests may take the directory from their state too */
    return test_tmp ? 0 : -1;
}

int test_tmp_teardown(void **state) {
    (void)state;
    if (test_tmp) remove_tree(test_tmp);
    free(test_tmp);
    test_tmp = NULL;
    return 0;
}
