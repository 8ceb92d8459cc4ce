/**
 * @file util_http.h
 * @brief Test helpers for `dsv3 serve`: start the server on an ephemeral loopback port, send raw
 *        HTTP/1.1 requests (so malformed ones can be sent too) and read whole responses.
 */
#ifndef DSV3_TEST_UTIL_HTTP_H
#define DSV3_TEST_UTIL_HTTP_H
#include <stddef.h>
#include <sys/types.h>

/** A parsed response; free with http_response_free(). */
typedef struct {
    int status;      /**< status code (0: no valid response) */
    char *headers;   /**< the header block, NUL-terminated */
    char *body;      /**< the body, de-chunked, NUL-terminated */
    size_t body_len; /**< its length */
} HttpResponse;

/** A connected loopback TCP socket to @p port, or -1. */
int http_connect(int port);
/** Writes all of @p n bytes; 0 or -1. */
int http_send_all(int fd, const void *data, size_t n);
/** Reads until EOF (at most @p timeout_s seconds) and parses; 0 when a status line was read. */
int http_read_response(int fd, double timeout_s, HttpResponse *r);
/**
 * One request with "Connection: close": @p extra_headers ("Name: v\r\n"…, may be NULL), @p body
 * (may be NULL) sent with a Content-Length. Returns 0 when a response came back.
 */
int http_request(int port, const char *method, const char *path, const char *extra_headers, const char *body,
                 HttpResponse *r);
/** POST of a JSON body (Content-Type: application/json). */
int http_post_json(int port, const char *path, const char *json, HttpResponse *r);
/** The value of header @p name (case-insensitive) into @p out; 0 if found. */
int http_header(const HttpResponse *r, const char *name, char *out, size_t cap);
/** Frees a response. */
void http_response_free(HttpResponse *r);

/** A `dsv3 serve` child process. */
typedef struct {
    pid_t pid;       /**< its pid (0: none) */
    int port;        /**< the ephemeral port it printed */
    char log[512];   /**< its stderr, a file */
} TestServer;

/**
 * Starts `DSV3_BIN serve --port 0 ARGS` and waits (≤ 60 s) for its ready line (or, with
 * @p wait_ready = 0, only for the listening line). Returns 0, or -1 after printing its log.
 */
int test_server_start(TestServer *s, const char *args, int wait_ready);
/** Sends @p sig and waits ≤ @p timeout_s for the exit; returns the wait status, or -1 after SIGKILL. */
int test_server_stop(TestServer *s, int sig, double timeout_s);
/** The server's resident set size in KiB (VmRSS), or -1. */
long test_server_rss_kib(const TestServer *s);
/** Monotonic seconds. */
double test_now(void);

#endif
