/**
 * @file util_run.h
 * @brief Test helper: run a shell command, capture its stdout, stderr and exit status.
 */
#ifndef DSV3_TEST_UTIL_RUN_H
#define DSV3_TEST_UTIL_RUN_H
#include <stddef.h>

/** Result of run_cmd(); free with run_result_free(). */
typedef struct {
    int status;     /**< exit status (0..255), or 128+signal when killed by a signal */
    char *out;      /**< captured stdout, NUL-terminated */
    size_t out_len;
    char *err;      /**< captured stderr, NUL-terminated */
    size_t err_len;
} RunResult;

/** Runs `/bin/sh -c cmdline` with @p stdin_text (may be NULL) on its stdin. Returns 0 if it could be run. */
int run_cmd(const char *cmdline, const char *stdin_text, RunResult *r);
void run_result_free(RunResult *r);
/** run_cmd() of a printf-formatted command line; exits the test program if the shell cannot start. */
RunResult run_shell(const char *stdin_text, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Path of the dsv3 binary under test: $DSV3_BIN or "build/dsv3". */
const char *dsv3_bin(void);
/**
 * The "loss" text (bit-exact %.17g) of each step line {"step":N,"loss":...} of a `train --log`
 * file into losses[N-1], for N ≤ @p max; returns the largest step seen (0 if unreadable).
 */
int read_step_losses(const char *path, char losses[][40], int max);
/** Number of lines in @p s (a final line without '\n' counts). */
int count_lines(const char *s);

#endif
