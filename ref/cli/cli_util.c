/**
 * @file cli_util.c
 * @brief Implementation of cli_util.h.
 */
#include "cli_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int cli_fail(const char *cmd, int status, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One line: a message must never spill over several lines. */
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    fprintf(stderr, "dsv3 %s: %s\n", cmd, msg);
    return status;
}

const char *cli_value(const char *cmd, int argc, char **argv, int *i) {
    const char *flag = argv[*i];
    if (*i + 1 >= argc) {
        cli_fail(cmd, EXIT_USAGE, "%s needs a value", flag);
        return NULL;
    }
    const char *v = argv[*i + 1];
    if (v[0] == '-' && v[1] && !(v[1] >= '0' && v[1] <= '9') && v[1] != '.') {
        cli_fail(cmd, EXIT_USAGE, "%s needs a value, got the flag %s", flag, v);
        return NULL;
    }
    (*i)++;
    return v;
}

int cli_long(const char *cmd, const char *flag, const char *v, long lo, long hi, long *out) {
    if (parse_long(v, lo, hi, out) == 0) return 0;
    cli_fail(cmd, EXIT_USAGE, "%s: '%s' is not an integer in [%ld, %ld]", flag, v, lo, hi);
    return -1;
}

int cli_double(const char *cmd, const char *flag, const char *v, double lo, double hi, double *out) {
    if (parse_double(v, lo, hi, out) == 0) return 0;
    cli_fail(cmd, EXIT_USAGE, "%s: '%s' is not a number in [%g, %g]", flag, v, lo, hi);
    return -1;
}

int write_f32_file(const char *path, const float *data, size_t n, Err *err) {
    size_t bytes;
    if (size_mul(&bytes, n, sizeof(float))) return err_set(err, "%s: output too large", path);
    /* The format is little-endian float32; this machine's floats are little-endian (x86-64/arm64). */
    return write_file_atomic(path, data, bytes, err);
}

int cli_gpu_flag(const char *cmd, int argc, char **argv, int *i, int *gpu, int *kv_bf16) {
    const char *f = argv[*i], *v;
    if (!strcmp(f, "--backend")) {
        if (!(v = cli_value(cmd, argc, argv, i))) return -1;
        if (!strcmp(v, "ref")) *gpu = 0;
        else if (!strcmp(v, "fast")) *gpu = 1;
        else return cli_fail(cmd, EXIT_USAGE, "--backend must be ref or fast, got '%s'", v), -1;
        return 1;
    }
    if (!strcmp(f, "--kv-cache")) {
        if (!(v = cli_value(cmd, argc, argv, i))) return -1;
        if (!strcmp(v, "auto")) *kv_bf16 = -1;
        else if (!strcmp(v, "f32")) *kv_bf16 = 0;
        else if (!strcmp(v, "bf16")) *kv_bf16 = 1;
        else return cli_fail(cmd, EXIT_USAGE, "--kv-cache must be auto, f32 or bf16, got '%s'", v), -1;
        return 1;
    }
    return 0;
}
