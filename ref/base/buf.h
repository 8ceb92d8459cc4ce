/**
 * @file buf.h
 * @brief Growable byte buffer and int vector with checked growth (used by the tokenizer,
 *        the chat template and the BPE trainer).
 *
 * Both grow geometrically through size_mul()/size_add() (util.h), so a length that comes
 * from outside can never wrap the capacity computation. Every function returns 0 or -1
 * (out of memory / size overflow); the contents are unchanged on failure.
 */
#ifndef DSV3_BUF_H
#define DSV3_BUF_H

#include <stddef.h>

/** Bytes with a length and a capacity; NUL-terminated whenever data is not NULL. */
typedef struct {
    char *data;  /**< malloc'd, NULL while empty */
    size_t len;  /**< bytes in use, excluding the terminating NUL */
    size_t cap;  /**< bytes allocated */
} ByteBuf;

/** Ints with a length and a capacity. */
typedef struct {
    int *v;      /**< malloc'd, NULL while empty */
    size_t n;    /**< elements in use */
    size_t cap;  /**< elements allocated */
} IntVec;

/** Makes room for @p extra more bytes (plus the NUL). */
int bytebuf_reserve(ByteBuf *b, size_t extra);
/** Appends @p n bytes from @p p. */
int bytebuf_append(ByteBuf *b, const void *p, size_t n);
/** Appends a NUL-terminated string. */
int bytebuf_puts(ByteBuf *b, const char *s);
/** Appends printf-formatted text. */
int bytebuf_printf(ByteBuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Releases the memory and zeroes the struct. */
void bytebuf_free(ByteBuf *b);

/** Makes room for @p extra more ints. */
int intvec_reserve(IntVec *v, size_t extra);
/** Appends one int. */
int intvec_push(IntVec *v, int x);
/** Appends @p n ints. */
int intvec_append(IntVec *v, const int *x, size_t n);
/** Releases the memory and zeroes the struct. */
void intvec_free(IntVec *v);

/** Grows a capacity for @p need elements of @p elem bytes: doubling, at least 16; -1 on overflow. */
int buf_grow_cap(size_t cur_cap, size_t need, size_t elem, size_t *new_cap);
/**
 * Grows array @p p of *@p cap elements of @p elem bytes to hold at least @p need (buf_grow_cap's
 * policy), zero-filling the new elements. Returns the (possibly moved) array and updates *@p cap;
 * returns NULL on overflow or out of memory, leaving @p p and *@p cap as they were.
 */
void *buf_grow(void *p, size_t *cap, size_t need, size_t elem);

#endif /* DSV3_BUF_H */
