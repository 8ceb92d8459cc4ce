/**
 * @file util_pty.h
 * @brief Test helper: run a command on a pseudo-terminal (as a person at a terminal would), send
 *        it keys and wait for text in what it shows — for tests of interactive behaviour.
 */
#ifndef DSV3_TEST_UTIL_PTY_H
#define DSV3_TEST_UTIL_PTY_H

#include <stddef.h>
#include <sys/types.h>

/** A command running on a pty. */
typedef struct {
    int fd;        /**< the master side */
    pid_t pid;     /**< the command (its own session; the pty is its controlling terminal) */
    char *buf;     /**< everything it printed so far, NUL-terminated */
    size_t len;    /**< bytes in buf */
    size_t cap;    /**< bytes allocated */
    size_t seen;   /**< where the next pty_expect starts looking */
    int status;    /**< exit status once pty_wait returned (128 + signal when killed) */
} Pty;

/** Starts `/bin/sh -c cmdline` on a new 40x120 pty with TERM=xterm. 0 on success. */
int pty_spawn(Pty *p, const char *cmdline);
/** Writes @p keys to the terminal (as typed). */
void pty_send(Pty *p, const char *keys);
/** Waits up to @p timeout_s for @p text to appear after the previous match; 0 when it did. */
int pty_expect(Pty *p, const char *text, double timeout_s);
/** Waits up to @p timeout_s for the command to exit; its status, or -1 on timeout. */
int pty_wait(Pty *p, double timeout_s);
/** Kills the command if it still runs and frees everything. */
void pty_free(Pty *p);

#endif
