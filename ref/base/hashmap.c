/**
 * @file hashmap.c
 * @brief Implementation of hashmap.h (linear probing, load factor ≤ 1/2).
 */
#include "hashmap.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

/* A multiply-xorshift hash over 8-byte words: not cryptographic (tokenizer files and corpora
 * are not adversarial about hash flooding; a flood would only cost time, never correctness). */
uint64_t hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

static uint64_t mix64(uint64_t x) { /* splitmix64 finalizer */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

/* Smallest power of two ≥ 2·expected (and ≥ 16); -1 if that does not fit. */
static int table_cap(size_t expected, size_t *cap) {
    size_t want, c = 16;
    if (size_mul(&want, expected, 2) != 0) return -1;
    while (c < want) {
        if (size_mul(&c, c, 2) != 0) return -1;
    }
    *cap = c;
    return 0;
}

/* ---- StrMap ----------------------------------------------------------------------------- */

int strmap_init(StrMap *m, size_t expected) {
    memset(m, 0, sizeof *m);
    size_t cap;
    if (table_cap(expected, &cap) != 0) return -1;
    m->slots = xcalloc(cap, sizeof *m->slots);
    m->ent = xcalloc(expected ? expected : 1, sizeof *m->ent);
    if (!m->slots || !m->ent) {
        strmap_free(m);
        return -1;
    }
    m->cap = cap;
    m->ecap = expected ? expected : 1;
    return 0;
}

static int strmap_rehash(StrMap *m) {
    size_t nc;
    if (size_mul(&nc, m->cap, 2) != 0) return -1;
    uint64_t *ns = xcalloc(nc, sizeof *ns);
    if (!ns) return -1;
    for (size_t i = 0; i < m->cap; i++) {
        uint64_t s = m->slots[i];
        if (!s) continue;
        size_t idx = (size_t)(uint32_t)s - 1;
        uint64_t h = hash_bytes(m->keys.data + m->ent[idx].off, m->ent[idx].len);
        size_t j = (size_t)h & (nc - 1);
        while (ns[j]) j = (j + 1) & (nc - 1);
        ns[j] = s;
    }
    free(m->slots);
    m->slots = ns;
    m->cap = nc;
    return 0;
}

long strmap_find(const StrMap *m, const void *key, size_t len) {
    if (!m->cap) return -1;
    uint64_t h = hash_bytes(key, len);
    uint64_t tag = h >> 32;
    for (size_t j = (size_t)h & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
        uint64_t s = m->slots[j];
        if (!s) return -1;
        if ((s >> 32) != tag) continue;
        size_t idx = (size_t)(uint32_t)s - 1;
        if (m->ent[idx].len == len && memcmp(m->keys.data + m->ent[idx].off, key, len) == 0)
            return (long)idx;
    }
}

long strmap_intern(StrMap *m, const void *key, size_t len, int *is_new) {
    if (is_new) *is_new = 0;
    if (!m->cap && strmap_init(m, 16) != 0) return -1;
    if (len > UINT32_MAX || m->n >= UINT32_MAX - 1) return -1;
    /* grow first, so a failed growth leaves the map unchanged and never full */
    if ((m->n + 1) * 2 > m->cap && strmap_rehash(m) != 0) return -1;
    uint64_t h = hash_bytes(key, len);
    uint64_t tag = h >> 32;
    size_t j = (size_t)h & (m->cap - 1);
    for (;; j = (j + 1) & (m->cap - 1)) {
        uint64_t s = m->slots[j];
        if (!s) break;
        if ((s >> 32) != tag) continue;
        size_t idx = (size_t)(uint32_t)s - 1;
        if (m->ent[idx].len == len && memcmp(m->keys.data + m->ent[idx].off, key, len) == 0)
            return (long)idx;
    }
    if (m->n == m->ecap) {
        StrMapEntry *ne = buf_grow(m->ent, &m->ecap, m->n + 1, sizeof *m->ent);
        if (!ne) return -1;
        m->ent = ne;
    }
    size_t off = m->keys.len;
    if (bytebuf_append(&m->keys, key, len) != 0) return -1;
    size_t idx = m->n++;
    m->ent[idx].off = off;
    m->ent[idx].len = (uint32_t)len;
    m->slots[j] = (tag << 32) | (uint64_t)(idx + 1);
    if (is_new) *is_new = 1;
    return (long)idx;
}

const char *strmap_key(const StrMap *m, size_t i, size_t *len) {
    *len = m->ent[i].len;
    return m->keys.data + m->ent[i].off;
}

void strmap_free(StrMap *m) {
    free(m->slots);
    free(m->ent);
    bytebuf_free(&m->keys);
    memset(m, 0, sizeof *m);
}

/* ---- U64Map ----------------------------------------------------------------------------- */

int u64map_init(U64Map *m, size_t expected) {
    memset(m, 0, sizeof *m);
    size_t cap;
    if (table_cap(expected, &cap) != 0) return -1;
    m->keys = xcalloc(cap, sizeof *m->keys);
    m->idx = xcalloc(cap, sizeof *m->idx);
    if (!m->keys || !m->idx) {
        u64map_free(m);
        return -1;
    }
    m->cap = cap;
    return 0;
}

static int u64map_rehash(U64Map *m) {
    size_t nc;
    if (size_mul(&nc, m->cap, 2) != 0) return -1;
    uint64_t *nk = xcalloc(nc, sizeof *nk);
    uint32_t *ni = xcalloc(nc, sizeof *ni);
    if (!nk || !ni) {
        free(nk);
        free(ni);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->idx[i]) continue;
        size_t j = (size_t)mix64(m->keys[i]) & (nc - 1);
        while (ni[j]) j = (j + 1) & (nc - 1);
        nk[j] = m->keys[i];
        ni[j] = m->idx[i];
    }
    free(m->keys);
    free(m->idx);
    m->keys = nk;
    m->idx = ni;
    m->cap = nc;
    return 0;
}

long u64map_find(const U64Map *m, uint64_t key) {
    if (!m->cap) return -1;
    for (size_t j = (size_t)mix64(key) & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
        if (!m->idx[j]) return -1;
        if (m->keys[j] == key) return (long)m->idx[j] - 1;
    }
}

long u64map_intern(U64Map *m, uint64_t key, int *is_new) {
    if (is_new) *is_new = 0;
    if (!m->cap && u64map_init(m, 16) != 0) return -1;
    if (m->n >= UINT32_MAX - 1) return -1;
    if ((m->n + 1) * 2 > m->cap && u64map_rehash(m) != 0) return -1;
    size_t j = (size_t)mix64(key) & (m->cap - 1);
    for (; m->idx[j]; j = (j + 1) & (m->cap - 1))
        if (m->keys[j] == key) return (long)m->idx[j] - 1;
    size_t idx = m->n++;
    m->keys[j] = key;
    m->idx[j] = (uint32_t)(idx + 1);
    if (is_new) *is_new = 1;
    return (long)idx;
}

void u64map_free(U64Map *m) {
    free(m->keys);
    free(m->idx);
    memset(m, 0, sizeof *m);
}
