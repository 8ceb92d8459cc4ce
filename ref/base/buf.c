/**
 * @file buf.c
 * @brief Implementation of buf.h: geometric growth with overflow checks.
 */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

int buf_grow_cap(size_t cur_cap, size_t need, size_t elem, size_t *new_cap) {
    size_t c = cur_cap < 16 ? 16 : cur_cap, bytes;
    while (c < need) {
        if (size_mul(&c, c, 2) != 0) return -1;
    }
    if (size_mul(&bytes, c, elem) != 0) return -1;
    *new_cap = c;
    return 0;
}

void *buf_grow(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap && p) return p;
    size_t nc, bytes;
    if (buf_grow_cap(*cap, need, elem, &nc) != 0 || size_mul(&bytes, nc, elem) != 0) return NULL;
    char *q = realloc(p, bytes);
    if (!q) return NULL;
    memset(q + *cap * elem, 0, (nc - *cap) * elem);
    *cap = nc;
    return q;
}

int bytebuf_reserve(ByteBuf *b, size_t extra) {
    size_t need;
    if (size_add(&need, b->len, extra) != 0 || size_add(&need, need, 1) != 0) return -1;
    if (need <= b->cap) return 0;
    size_t nc;
    if (buf_grow_cap(b->cap, need, 1, &nc) != 0) return -1;
    char *p = realloc(b->data, nc);
    if (!p) return -1;
    b->data = p;
    b->cap = nc;
    b->data[b->len] = 0; /* allocated means NUL-terminated, even before the first append */
    return 0;
}

int bytebuf_append(ByteBuf *b, const void *p, size_t n) {
    if (bytebuf_reserve(b, n) != 0) return -1;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

int bytebuf_puts(ByteBuf *b, const char *s) {
    return bytebuf_append(b, s, strlen(s));
}

int bytebuf_printf(ByteBuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || bytebuf_reserve(b, (size_t)n) != 0) return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void bytebuf_free(ByteBuf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int intvec_reserve(IntVec *v, size_t extra) {
    size_t need;
    if (size_add(&need, v->n, extra) != 0) return -1;
    if (need <= v->cap) return 0;
    int *p = buf_grow(v->v, &v->cap, need, sizeof *v->v);
    if (!p) return -1;
    v->v = p;
    return 0;
}

int intvec_push(IntVec *v, int x) {
    if (v->n == v->cap && intvec_reserve(v, 1) != 0) return -1;
    v->v[v->n++] = x;
    return 0;
}

int intvec_append(IntVec *v, const int *x, size_t n) {
    if (intvec_reserve(v, n) != 0) return -1;
    if (n) memcpy(v->v + v->n, x, n * sizeof *x);
    v->n += n;
    return 0;
}

void intvec_free(IntVec *v) {
    free(v->v);
    v->v = NULL;
    v->n = v->cap = 0;
}
