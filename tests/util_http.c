/**
 * @file util_http.c
 * @brief Implementation of util_http.h.
 */
#define _GNU_SOURCE
#include "util_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util_run.h"

double test_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int http_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

int http_send_all(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k, n -= (size_t)k;
    }
    return 0;
}

/** De-chunks [s, s+n) in place; returns the new length (n unchanged when malformed). */
static size_t dechunk(char *s, size_t n) {
    size_t in = 0, out = 0;
    while (in < n) {
        char *end;
        unsigned long len = strtoul(s + in, &end, 16);
        char *crlf = strstr(s + in, "\r\n");
        if (!crlf || end == s + in) return out;
        in = (size_t)(crlf - s) + 2;
        if (len == 0) break;
        if (in + len > n) len = n - in;
        memmove(s + out, s + in, len);
        out += len, in += len + 2;
    }
    s[out] = 0;
    return out;
}

int http_read_response(int fd, double timeout_s, HttpResponse *r) {
    memset(r, 0, sizeof *r);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    double end = test_now() + timeout_s;
    for (;;) {
        int wait = (int)((end - test_now()) * 1000);
        if (wait <= 0) break;
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, wait) <= 0) break;
        if (n == cap) buf = realloc(buf, (cap *= 2) + 1);
        ssize_t k = recv(fd, buf + n, cap - n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        n += (size_t)k;
    }
    buf[n] = 0;
    char *hend = strstr(buf, "\r\n\r\n");
    if (n < 12 || strncmp(buf, "HTTP/1.", 7) || !hend) {
        free(buf);
        return -1;
    }
    r->status = atoi(buf + 9);
    size_t hlen = (size_t)(hend - buf);
    r->headers = malloc(hlen + 1);
    memcpy(r->headers, buf, hlen);
    r->headers[hlen] = 0;
    size_t blen = n - hlen - 4;
    r->body = malloc(blen + 1);
    memcpy(r->body, hend + 4, blen);
    r->body[blen] = 0;
    r->body_len = blen;
    char te[64];
    if (http_header(r, "Transfer-Encoding", te, sizeof te) == 0 && strcasestr(te, "chunked"))
        r->body_len = dechunk(r->body, blen);
    free(buf);
    return 0;
}

int http_request(int port, const char *method, const char *path, const char *extra_headers, const char *body,
                 HttpResponse *r) {
    memset(r, 0, sizeof *r);
    int fd = http_connect(port);
    if (fd < 0) return -1;
    size_t blen = body ? strlen(body) : 0;
    char *head = malloc(4096 + (extra_headers ? strlen(extra_headers) : 0));
    int hn = sprintf(head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n%s", method, path, port,
                     extra_headers ? extra_headers : "");
    if (body) hn += sprintf(head + hn, "Content-Length: %zu\r\n", blen);
    hn += sprintf(head + hn, "\r\n");
    int rc = http_send_all(fd, head, (size_t)hn) || (body && http_send_all(fd, body, blen)) ? -1 : 0;
    free(head);
    if (rc == 0) rc = http_read_response(fd, 120.0, r);
    close(fd);
    return rc;
}

int http_post_json(int port, const char *path, const char *json, HttpResponse *r) {
    return http_request(port, "POST", path, "Content-Type: application/json\r\n", json, r);
}

int http_header(const HttpResponse *r, const char *name, char *out, size_t cap) {
    size_t nl = strlen(name);
    for (const char *p = r->headers; p && (p = strstr(p, "\r\n")); ) {
        p += 2;
        if (!strncasecmp(p, name, nl) && p[nl] == ':') {
            p += nl + 1;
            while (*p == ' ') p++;
            size_t k = strcspn(p, "\r\n");
            if (k >= cap) k = cap - 1;
            memcpy(out, p, k);
            out[k] = 0;
            return 0;
        }
    }
    return -1;
}

void http_response_free(HttpResponse *r) {
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static void print_log(const TestServer *s) {
    FILE *f = fopen(s->log, "r");
    if (!f) return;
    char line[1024];
    while (fgets(line, sizeof line, f)) fprintf(stderr, "    [server] %s", line);
    fclose(f);
}

int test_server_start(TestServer *s, const char *args, int wait_ready) {
    memset(s, 0, sizeof *s);
    static int n;
    snprintf(s->log, sizeof s->log, "%s/dsv3-serve-%d-%d.log", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid(), n++);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "exec %s serve --port 0 %s 2> %s", dsv3_bin(), args, s->log);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0), dup2(null, 1);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    s->pid = pid;
    double end = test_now() + 60;
    while (test_now() < end) {
        FILE *f = fopen(s->log, "r");
        char line[1024];
        int ready = 0;
        while (f && fgets(line, sizeof line, f)) {
            const char *p = strstr(line, "listening on http://127.0.0.1:");
            if (p) s->port = atoi(p + strlen("listening on http://127.0.0.1:"));
            if (strstr(line, "dsv3 serve: ready")) ready = 1;
        }
        if (f) fclose(f);
        if (s->port && (ready || !wait_ready)) return 0;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            s->pid = 0;
            print_log(s);
            return -1;
        }
        usleep(20 * 1000);
    }
    print_log(s);
    test_server_stop(s, SIGKILL, 5);
    return -1;
}

int test_server_stop(TestServer *s, int sig, double timeout_s) {
    if (!s->pid) return -1;
    kill(s->pid, sig);
    double end = test_now() + timeout_s;
    int st;
    while (test_now() < end) {
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            unlink(s->log);
            return st;
        }
        usleep(10 * 1000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &st, 0);
    print_log(s);
    s->pid = 0;
    return -1;
}

long test_server_rss_kib(const TestServer *s) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)s->pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kib = atol(line + 6);
    if (f) fclose(f);
    return kib;
}
