/**
 * @file util_run.c
 * @brief Implementation of util_run.h (fork/exec with pipes, no shell quoting tricks).
 */
#define _POSIX_C_SOURCE 200809L
#include "util_run.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int append(char **buf, size_t *len, size_t *cap, const char *src, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t nc = (*cap ? *cap * 2 : 4096);
        while (nc < *len + n + 1) nc *= 2;
        char *nb = realloc(*buf, nc);
        if (!nb) return -1;
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, src, n);
    *len += n;
    (*buf)[*len] = 0;
    return 0;
}

int run_cmd(const char *cmdline, const char *stdin_text, RunResult *r) {
    memset(r, 0, sizeof *r);
    int pin[2], pout[2], perr[2];
    if (pipe(pin) || pipe(pout) || pipe(perr)) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        close(pin[0]); close(pin[1]); close(pout[0]); close(pout[1]); close(perr[0]); close(perr[1]);
        execl("/bin/sh", "sh", "-c", cmdline, (char *)NULL);
        _exit(127);
    }
    close(pin[0]);
    close(pout[1]);
    close(perr[1]);
    signal(SIGPIPE, SIG_IGN);
    if (stdin_text) {
        size_t n = strlen(stdin_text), off = 0;
        while (off < n) {
            ssize_t w = write(pin[1], stdin_text + off, n - off);
            if (w <= 0) break;
            off += (size_t)w;
        }
    }
    close(pin[1]);
    size_t ocap = 0, ecap = 0;
    append(&r->out, &r->out_len, &ocap, "", 0);
    append(&r->err, &r->err_len, &ecap, "", 0);
    struct pollfd fds[2] = { { pout[0], POLLIN, 0 }, { perr[0], POLLIN, 0 } };
    int open_fds = 2;
    char buf[65536];
    while (open_fds > 0) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t n = read(fds[i].fd, buf, sizeof buf);
            if (n <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
            } else if (i == 0) append(&r->out, &r->out_len, &ocap, buf, (size_t)n);
            else append(&r->err, &r->err_len, &ecap, buf, (size_t)n);
        }
    }
    int st = 0;
    waitpid(pid, &st, 0);
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return 0;
}

void run_result_free(RunResult *r) {
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof *r);
}

const char *dsv3_bin(void) {
    const char *b = getenv("DSV3_BIN");
    return b && *b ? b : "build/dsv3";
}

int count_lines(const char *s) {
    int n = 0;
    const char *p = s;
    for (; *p; p++) n += (*p == '\n');
    if (p > s && p[-1] != '\n') n++;
    return n;
}

RunResult run_shell(const char *stdin_text, const char *fmt, ...) {
    char cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    RunResult r;
    if (run_cmd(cmd, stdin_text, &r)) {
        fprintf(stderr, "cannot run %s\n", cmd);
        exit(1);
    }
    return r;
}

int read_step_losses(const char *path, char losses[][40], int max) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[8192];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        long step;
        char loss[40];
        if (sscanf(line, "{\"step\":%ld,\"loss\":%39[^,]", &step, loss) != 2 || step < 1 || step > max) continue;
        snprintf(losses[step - 1], 40, "%s", loss);
        n = step > n ? (int)step : n;
    }
    fclose(f);
    return n;
}
