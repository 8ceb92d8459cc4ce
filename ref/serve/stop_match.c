/**
 * @file stop_match.c
 * @brief Stop strings across token boundaries (see stop_match.h).
 */
#include "stop_match.h"

#include <string.h>

int stop_matcher_init(StopMatcher *m, const char *const *stop, int n, Err *err) {
    memset(m, 0, sizeof *m);
    if (n < 0) return err_set(err, "stop: %d strings", n);
    if (n == 0) return 0;
    m->stop = xcalloc((size_t)n, sizeof *m->stop);
    m->len = xcalloc((size_t)n, sizeof *m->len);
    if (!m->stop || !m->len) {
        stop_matcher_free(m);
        return err_set(err, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        size_t l = strlen(stop[i]);
        if (l == 0) {
            stop_matcher_free(m);
            return err_set(err, "stop[%d] is empty", i);
        }
        if (!(m->stop[i] = malloc(l + 1))) {
            stop_matcher_free(m);
            return err_set(err, "out of memory");
        }
        memcpy(m->stop[i], stop[i], l + 1);
        m->len[i] = l;
        m->n = i + 1;
    }
    return 0;
}

/** Earliest start of a stop string in [h, h+n), or n. */
static size_t first_match(const StopMatcher *m, const char *h, size_t n) {
    size_t best = n;
    for (int i = 0; i < m->n; i++) {
        size_t l = m->len[i];
        for (size_t at = 0; at + l <= n && at < best; at++)
            if (h[at] == m->stop[i][0] && !memcmp(h + at, m->stop[i], l)) {
                best = at;
                break;
            }
    }
    return best;
}

/** Length of the longest suffix of [h, h+n) that is a proper prefix of a stop string. */
static size_t held_suffix(const StopMatcher *m, const char *h, size_t n) {
    size_t best = 0;
    for (int i = 0; i < m->n; i++)
        for (size_t k = m->len[i] - 1 < n ? m->len[i] - 1 : n; k > best; k--)
            if (!memcmp(h + n - k, m->stop[i], k)) {
                best = k;
                break;
            }
    return best;
}

int stop_matcher_feed(StopMatcher *m, const char *text, size_t len, ByteBuf *out) {
    if (m->matched) return 1;
    if (m->n == 0) return bytebuf_append(out, text, len) ? -1 : 0;
    if (bytebuf_append(&m->held, text, len)) return -1;
    const char *h = m->held.data ? m->held.data : "";
    size_t n = m->held.len, at = first_match(m, h, n);
    if (at < n) {
        m->matched = 1;
        int rc = bytebuf_append(out, h, at);
        m->held.len = 0;
        return rc ? -1 : 1;
    }
    size_t keep = held_suffix(m, h, n);
    if (bytebuf_append(out, h, n - keep)) return -1;
    if (m->held.data) {
        memmove(m->held.data, h + n - keep, keep);
        m->held.data[keep] = 0;
    }
    m->held.len = keep;
    return 0;
}

int stop_matcher_flush(StopMatcher *m, ByteBuf *out) {
    int rc = m->matched || m->held.len == 0 ? 0 : bytebuf_append(out, m->held.data, m->held.len);
    m->held.len = 0;
    return rc ? -1 : 0;
}

void stop_matcher_free(StopMatcher *m) {
    for (int i = 0; m->stop && i < m->n; i++) free(m->stop[i]);
    free(m->stop);
    free(m->len);
    bytebuf_free(&m->held);
    memset(m, 0, sizeof *m);
}
