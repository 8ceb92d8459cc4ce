/**
 * @file cli_util.h
 * @brief Small helpers shared by the subcommands: one-line errors, escapes, output files
 *        (the flags themselves: cli_opt.h).
 */
#ifndef DSV3_CLI_UTIL_H
#define DSV3_CLI_UTIL_H

#include <stddef.h>

#include "base/util.h"

/** Exit statuses of every subcommand. */
enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

/** Prints "dsv3 <cmd>: <message>" on one line to stderr and returns @p status. */
int cli_fail(const char *cmd, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/**
 * A copy of @p s with llama.cpp's escapes processed (`-e`): \\n \\r \\t \\\\ \\' \\" and \\xHH (two hex
 * digits, one byte); any other backslash, and \\x00, stays as it is. malloc'd (NULL when out of memory); the
 * result may be invalid UTF-8 (\\xff), which the caller checks like any other input.
 */
char *cli_unescape(const char *s);

/** Writes @p n floats little-endian to @p path atomically (no partial file on failure). */
int write_f32_file(const char *path, const float *data, size_t n, Err *err);

#endif
