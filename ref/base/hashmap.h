/**
 * @file hashmap.h
 * @brief Two open-addressing hash indexes: byte strings → dense index, and 64-bit keys →
 *        dense index. Used to load the 128 000-entry DeepSeek-V3 vocabulary and its 127 741
 *        merges in milliseconds (docs/model.md §9.2) and by the BPE trainer for word and pair counts.
 *
 * Both maps hand out *dense* indexes 0, 1, 2, … in insertion order and store no values:
 * callers keep their values in plain arrays indexed by that number. That keeps the maps
 * generic without callbacks or void pointers, and lets a caller's value array be exactly
 * as wide as it needs (an int id, an int64 count, a struct).
 *
 * Linear probing, power-of-two tables kept at most half full; every size is checked with
 * size_mul()/size_add(). All functions that allocate return -1 on exhaustion.
 */
#ifndef DSV3_HASHMAP_H
#define DSV3_HASHMAP_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/** Where one key lies in the arena (one struct, so a lookup touches one cache line for it). */
typedef struct {
    size_t off;   /**< offset in the arena */
    uint32_t len; /**< length in bytes */
} StrMapEntry;

/** Byte-string keys (any bytes, NUL allowed) copied into an arena; index i = i-th distinct key. */
typedef struct {
    uint64_t *slots;   /**< [cap] (hash high 32 bits << 32) | (index + 1); 0 = empty */
    size_t cap;        /**< slot count, a power of two */
    size_t n;          /**< distinct keys */
    StrMapEntry *ent;  /**< [ecap] where key i lies in @ref keys */
    size_t ecap;       /**< entries allocated */
    ByteBuf keys;      /**< arena holding every key back to back */
} StrMap;

/** Prepares an empty map sized for about @p expected keys. */
int strmap_init(StrMap *m, size_t expected);
/** Index of @p key, or -1 when absent. */
long strmap_find(const StrMap *m, const void *key, size_t len);
/** Index of @p key, inserting it when absent (then *is_new = 1); -1 on exhaustion. */
long strmap_intern(StrMap *m, const void *key, size_t len, int *is_new);
/** The bytes of key @p i (not NUL-terminated) and their length. */
const char *strmap_key(const StrMap *m, size_t i, size_t *len);
/** Releases everything and zeroes the struct. */
void strmap_free(StrMap *m);

/** 64-bit keys (e.g. a token pair packed as (a << 32) | b); index i = i-th distinct key. */
typedef struct {
    uint64_t *keys; /**< [cap] key stored in the slot */
    uint32_t *idx;  /**< [cap] index + 1; 0 = empty slot */
    size_t cap;     /**< slot count, a power of two */
    size_t n;       /**< distinct keys */
} U64Map;

/** Prepares an empty map sized for about @p expected keys. */
int u64map_init(U64Map *m, size_t expected);
/** Index of @p key, or -1 when absent. */
long u64map_find(const U64Map *m, uint64_t key);
/** Index of @p key, inserting it when absent (then *is_new = 1); -1 on exhaustion. */
long u64map_intern(U64Map *m, uint64_t key, int *is_new);
/** Releases everything and zeroes the struct. */
void u64map_free(U64Map *m);

/** The 64-bit hash both maps use (exposed for callers that cache hashes). */
uint64_t hash_bytes(const void *p, size_t n);

#endif /* DSV3_HASHMAP_H */
