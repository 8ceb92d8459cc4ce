/**
 * @file cli_util.h
 * @brief Small helpers shared by the subcommands: flag values, one-line errors, output files.
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
 * The value of flag argv[*i] (argv[*i+1]), advancing *i; NULL (after printing an error) when
 * it is missing. A following argument that is itself a flag ("-x", "--x" but not a negative
 * number) counts as missing.
 */
const char *cli_value(const char *cmd, int argc, char **argv, int *i);

/** Integer flag value in [lo, hi]; prints the error and returns -1 when invalid. */
int cli_long(const char *cmd, const char *flag, const char *v, long lo, long hi, long *out);
/** Float flag value in [lo, hi]; prints the error and returns -1 when invalid. */
int cli_double(const char *cmd, const char *flag, const char *v, double lo, double hi, double *out);

/**
 * The flags that choose and shape the GPU backend, shared by logits, generate and chat:
 * `--backend ref|fast` (*gpu = 0 / 1) and `--kv-cache auto|f32|bf16` (*kv_bf16 = -1 / 0 / 1).
 * Returns 1 when argv[*i] was one of them (its value consumed), 0 when it is another flag, and
 * -1 (message printed, exit status EXIT_USAGE) on a missing or unknown value.
 */
int cli_gpu_flag(const char *cmd, int argc, char **argv, int *i, int *gpu, int *kv_bf16);

/** Writes @p n floats little-endian to @p path atomically (no partial file on failure). */
int write_f32_file(const char *path, const float *data, size_t n, Err *err);

#endif
