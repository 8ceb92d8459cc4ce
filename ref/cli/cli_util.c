/**
 * @file cli_util.c
 * @brief Implementation of cli_util.h.
 */
#include "cli_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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

/** The value of hex digit @p c, or −1. */
static int hex(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

char *cli_unescape(const char *s) {
    char *out = malloc(strlen(s) + 1), *o = out; /* escapes only ever shorten the text */
    if (!out) return NULL;
    while (*s) {
        if (*s != '\\' || !s[1]) {
            *o++ = *s++;
            continue;
        }
        char c = s[1];
        const char *plain = strchr("nrt\\'\"", c);
        if (c && plain) {
            *o++ = c == 'n' ? '\n' : c == 'r' ? '\r' : c == 't' ? '\t' : c;
            s += 2;
        } else if (c == 'x' && hex(s[2]) >= 0 && hex(s[3]) >= 0 && (hex(s[2]) || hex(s[3]))) {
            *o++ = (char)(hex(s[2]) * 16 + hex(s[3])); /* \x00 would end the string: kept as written */
            s += 4;
        } else {
            *o++ = *s++; /* not an escape: the backslash stays */
        }
    }
    *o = 0;
    return out;
}

int write_f32_file(const char *path, const float *data, size_t n, Err *err) {
    size_t bytes;
    if (size_mul(&bytes, n, sizeof(float))) return err_set(err, "%s: output too large", path);
    /* The format is little-endian float32; this machine's floats are little-endian (x86-64/arm64). */
    return write_file_atomic(path, data, bytes, err);
}
