/**
 * @file stop.c
 * @brief Stop strings over streamed text (see stop.h).
 *
 * Each feed looks at held + piece only: the earliest occurrence of any stop string ends the
 * text there; otherwise the longest suffix that is a proper prefix of a stop string stays held.
 * Stop strings are short (a few bytes to a line), so plain scans beat anything cleverer.
 */
#include "stop.h"

#include <stdlib.h>
#include <string.h>

void stop_init(StopMatcher *s, const char *const *stops, int n) {
    memset(s, 0, sizeof *s);
    s->stops = stops, s->n = n, s->hit = -1;
}

int stop_init_copy(StopMatcher *s, const char *const *stops, int n) {
    stop_init(s, NULL, 0);
    if (n <= 0) return 0;
    if (!(s->owned = xcalloc((size_t)n, sizeof *s->owned))) return -1;
    for (int k = 0; k < n; k++)
        if (!stops[k][0] || !(s->owned[k] = strdup(stops[k]))) {
            for (int j = 0; j < k; j++) free(s->owned[j]);
            free(s->owned), s->owned = NULL;
            return -1;
        }
    s->stops = (const char *const *)s->owned, s->n = n;
    return 0;
}

/** Offset of the first occurrence of @p needle [m] in @p h [n], or n when there is none. */
static size_t find(const char *h, size_t n, const char *needle, size_t m) {
    for (size_t i = 0; m <= n && i <= n - m; i++)
        if (h[i] == needle[0] && memcmp(h + i, needle, m) == 0) return i;
    return n;
}

/** Moves the first @p n held bytes to out (which is emptied first); 0, or −1 out of memory. */
static int release(StopMatcher *s, size_t n) {
    s->out.len = 0;
    if (s->out.data) s->out.data[0] = 0;
    if (n && bytebuf_append(&s->out, s->held.data, n)) return -1;
    memmove(s->held.data, s->held.data + n, s->held.len - n);
    s->held.len -= n;
    s->held.data[s->held.len] = 0;
    return 0;
}

int stop_feed(StopMatcher *s, const char *piece, size_t len, const char **text, size_t *out_len) {
    *text = "", *out_len = 0;
    if (s->hit >= 0) return 1;
    if (bytebuf_append(&s->held, piece, len)) return -1;
    if (!s->held.data) return 0; /* nothing held and nothing came */
    const char *h = s->held.data;
    size_t n = s->held.len, first = n, keep = 0;
    for (int k = 0; k < s->n; k++) {
        size_t m = strlen(s->stops[k]), at = find(h, n, s->stops[k], m);
        if (at < first) first = at, s->hit = k;
    }
    if (s->hit >= 0) {
        if (release(s, first)) return -1;
        s->held.len = 0, s->held.data[0] = 0; /* the stop string and what followed it never show */
        *text = s->out.data ? s->out.data : "", *out_len = s->out.len;
        return 1;
    }
    for (int k = 0; k < s->n; k++) {
        size_t m = strlen(s->stops[k]);
        for (size_t t = (m - 1 < n ? m - 1 : n); t > keep; t--)
            if (memcmp(h + n - t, s->stops[k], t) == 0) {
                keep = t;
                break;
            }
    }
    if (release(s, n - keep)) return -1;
    *text = s->out.data ? s->out.data : "", *out_len = s->out.len;
    return 0;
}

void stop_flush(StopMatcher *s, const char **text, size_t *out_len) {
    *text = "", *out_len = 0;
    if (s->hit >= 0 || !s->held.len) return;
    if (release(s, s->held.len)) return; /* out of memory: nothing to show */
    *text = s->out.data, *out_len = s->out.len;
}

void stop_reset(StopMatcher *s) {
    s->held.len = 0, s->out.len = 0, s->hit = -1;
    if (s->held.data) s->held.data[0] = 0;
    if (s->out.data) s->out.data[0] = 0;
}

void stop_free(StopMatcher *s) {
    bytebuf_free(&s->held);
    bytebuf_free(&s->out);
    if (s->owned)
        for (int k = 0; k < s->n; k++) free(s->owned[k]);
    free(s->owned);
    s->owned = NULL;
}
