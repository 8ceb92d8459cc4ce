/**
 * @file util_pty.c
 * @brief Implementation of util_pty.h (forkpty, a poll loop that accumulates the output).
 */
#define _DEFAULT_SOURCE /* forkpty */
#include "util_pty.h"

#include <errno.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int pty_spawn(Pty *p, const char *cmdline) {
    memset(p, 0, sizeof p[0]);
    p->status = -1;
    struct winsize ws = { 40, 120, 0, 0 };
    p->pid = forkpty(&p->fd, NULL, NULL, &ws);
    if (p->pid < 0) return -1;
    if (p->pid == 0) {
        setenv("TERM", "xterm", 1);
        signal(SIGINT, SIG_DFL), signal(SIGPIPE, SIG_DFL);
        execl("/bin/sh", "sh", "-c", cmdline, (char *)NULL);
        _exit(127);
    }
    p->cap = 65536;
    p->buf = calloc(1, p->cap);
    return p->buf ? 0 : -1;
}

void pty_send(Pty *p, const char *keys) {
    size_t n = strlen(keys), off = 0;
    while (off < n) {
        ssize_t w = write(p->fd, keys + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        off += (size_t)w;
    }
}

/** Reads what is there within @p wait_s; 0 at end of output. */
static int pump(Pty *p, double wait_s) {
    struct pollfd f = { p->fd, POLLIN, 0 };
    int r = poll(&f, 1, (int)(wait_s * 1000));
    if (r <= 0) return 1;
    if (p->len + 4096 + 1 > p->cap) {
        char *g = realloc(p->buf, p->cap * 2);
        if (!g) return 0;
        p->buf = g, p->cap *= 2;
    }
    ssize_t k = read(p->fd, p->buf + p->len, 4096);
    if (k <= 0) return 0; /* EIO once the command and its children closed the terminal */
    p->len += (size_t)k;
    p->buf[p->len] = 0;
    return 1;
}

int pty_expect(Pty *p, const char *text, double timeout_s) {
    double end = now() + timeout_s;
    for (;;) {
        char *at = strstr(p->buf + p->seen, text);
        if (at) {
            p->seen = (size_t)(at - p->buf) + strlen(text);
            return 0;
        }
        if (now() > end || !pump(p, 0.05)) return strstr(p->buf + p->seen, text) ? 0 : -1;
    }
}

int pty_wait(Pty *p, double timeout_s) {
    double end = now() + timeout_s;
    while (now() < end) {
        int st;
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid) {
            while (pump(p, 0.01) && p->len < (1u << 24)) {} /* the rest of its output */
            p->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            p->pid = 0;
            return p->status;
        }
        pump(p, 0.05);
    }
    return -1;
}

void pty_free(Pty *p) {
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
    }
    if (p->fd > 0) close(p->fd);
    free(p->buf);
    memset(p, 0, sizeof p[0]);
}
