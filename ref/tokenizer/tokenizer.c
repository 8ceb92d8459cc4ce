/**
 * @file tokenizer.c
 * @brief Encoding and decoding of tokenizer.h with a loaded Tokenizer (tokenizer_load.c builds
 *        it; the layout is in tokenizer_internal.h): added-token matching, byte-level BPE,
 *        decoding, the streaming decoder and Rust's lossy UTF-8 (docs/model.md §9.2).
 */
#include "tokenizer.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/hashmap.h"
#include "bytelevel.h"
#include "pretok.h"
#include "tokenizer_internal.h"

/* Offset of the first byte that does not start a valid UTF-8 character (len if none). */
static size_t utf8_first_invalid(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        size_t k = s[i] < 0x80 ? 1 : s[i] < 0xe0 ? 2 : s[i] < 0xf0 ? 3 : 4;
        if (k > len - i || !utf8_valid((const char *)s + i, k)) return i;
        i += k;
    }
    return len;
}

/* ---- lossy UTF-8 (Rust core::str::lossy::Utf8Chunks) ----------------------------------- */

int utf8_lossy_append(ByteBuf *out, const unsigned char *s, size_t n, int final, size_t *consumed) {
    static const char REPLACEMENT[3] = {(char)0xef, (char)0xbf, (char)0xbd};
    *consumed = 0;
    if (n == 0) return 0; /* s may be NULL */
    size_t i = 0, run = 0; /* [run, i) is valid text not yet copied */
    while (i < n) {
        unsigned b = s[i];
        if (b < 0x80) { i++; continue; }
        size_t start = i, w = (b >= 0xc2 && b <= 0xdf) ? 2 : (b >= 0xe0 && b <= 0xef) ? 3
                                 : (b >= 0xf0 && b <= 0xf4) ? 4 : 0;
        size_t j = i + 1;
        int bad = (w == 0);
        if (!bad) {
            /* the second byte's range depends on the lead (no overlongs, surrogates, > U+10FFFF) */
            unsigned lo = 0x80, hi = 0xbf;
            if (b == 0xe0) lo = 0xa0;
            else if (b == 0xed) hi = 0x9f;
            else if (b == 0xf0) lo = 0x90;
            else if (b == 0xf4) hi = 0x8f;
            for (size_t k = 1; k < w; k++, j++) {
                if (j >= n) {
                    if (!final) { /* so far a valid prefix: wait for more bytes */
                        if (bytebuf_append(out, s + run, start - run) != 0) return -1;
                        *consumed = start;
                        return 0;
                    }
                    bad = 1;
                    break;
                }
                unsigned c = s[j];
                if (k == 1 ? (c < lo || c > hi) : (c & 0xc0) != 0x80) {
                    bad = 1;
                    break;
                }
            }
        }
        if (!bad) { i = j; continue; }
        /* [start, j) is the maximal invalid subpart: one U+FFFD for all of it */
        if (bytebuf_append(out, s + run, start - run) != 0 || bytebuf_append(out, REPLACEMENT, 3) != 0)
            return -1;
        i = run = j;
    }
    if (bytebuf_append(out, s + run, n - run) != 0) return -1;
    *consumed = n;
    return 0;
}

/* ---- tries ------------------------------------------------------------------------------ */

/* Longest token that s[0, n) starts with: its id, length in *mlen; -1 if none. */
static int trie_longest(const Trie *tr, const unsigned char *s, size_t n, size_t *mlen) {
    int cur = 0, best = -1;
    for (size_t i = 0; i < n; i++) {
        int c = tr->node[cur].first_child;
        while (c >= 0 && tr->node[c].byte != s[i]) c = tr->node[c].sibling;
        if (c < 0) break;
        cur = c;
        if (tr->node[cur].token >= 0) {
            best = tr->node[cur].token;
            *mlen = i + 1;
        }
    }
    return best;
}

/* ---- BPE -------------------------------------------------------------------------------- */

typedef struct {
    uint32_t rank, pos;
    int new_id;
} HeapItem;

/* Scratch for one tokenizer_encode() call. */
typedef struct {
    PretokWork pw;
    int *c, *prev, *next, *len; /* symbols of the current piece (models/bpe/word.rs: Symbol) */
    size_t cap;
    HeapItem *heap;
    size_t nheap, capheap;
    ByteBuf mapped;             /* the piece in byte-level characters (ignore_merges only) */
} EncodeWork;

static void work_free(EncodeWork *w) {
    pretok_work_free(&w->pw);
    free(w->c);
    free(w->prev);
    free(w->next);
    free(w->len);
    free(w->heap);
    bytebuf_free(&w->mapped);
}

static int work_reserve(EncodeWork *w, size_t n) {
    if (n <= w->cap) return 0;
    size_t nc, bytes;
    if (buf_grow_cap(w->cap, n, sizeof(int), &nc) != 0 || size_mul(&bytes, nc, sizeof(int)) != 0) return -1;
    int **arrs[4] = {&w->c, &w->prev, &w->next, &w->len};
    for (int i = 0; i < 4; i++) {
        int *p = realloc(*arrs[i], bytes);
        if (!p) return -1;
        *arrs[i] = p;
    }
    w->cap = nc;
    return 0;
}

/* (rank, pos) ordering of tokenizers' Merge: lower rank first, then leftmost. */
static int heap_less(const HeapItem *a, const HeapItem *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static int heap_push(EncodeWork *w, HeapItem it) {
    if (w->nheap == w->capheap) {
        HeapItem *p = buf_grow(w->heap, &w->capheap, w->nheap + 1, sizeof it);
        if (!p) return -1;
        w->heap = p;
    }
    size_t i = w->nheap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(&it, &w->heap[parent])) break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = it;
    return 0;
}

static HeapItem heap_pop(EncodeWork *w) {
    HeapItem top = w->heap[0], last = w->heap[--w->nheap];
    size_t i = 0, n = w->nheap;
    while (1) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const HeapItem *best = &last;
        if (l < n && heap_less(&w->heap[l], best)) { m = l; best = &w->heap[l]; }
        if (r < n && heap_less(&w->heap[r], best)) { m = r; }
        if (m == i) break;
        w->heap[i] = w->heap[m];
        i = m;
    }
    if (n) w->heap[i] = last;
    return top;
}

static long merge_lookup(const Tokenizer *t, int a, int b) {
    return u64map_find(&t->merges, ((uint64_t)(uint32_t)a << 32) | (uint32_t)b);
}

/* Word::add */
static void sym_add(EncodeWork *w, size_t *n, int id, int len) {
    size_t i = (*n)++;
    w->c[i] = id;
    w->len[i] = len;
    w->prev[i] = (int)i - 1;
    w->next[i] = -1;
    if (i > 0) w->next[i - 1] = (int)i;
}

/* BPE::merge_word + Word::merge_all on one piece of raw bytes; appends the ids to out. */
static int bpe_piece(const Tokenizer *t, EncodeWork *w, const unsigned char *s, size_t n, IntVec *out) {
    if (n == 0) return 0;
    if (t->ignore_merges) {
        size_t need2;
        if (size_mul(&need2, n, 2) != 0 || bytebuf_reserve(&w->mapped, need2) != 0) return -1;
        w->mapped.len = bytelevel_encode(s, n, w->mapped.data);
        long k = strmap_find(&t->vocab, w->mapped.data, w->mapped.len);
        if (k >= 0) return intvec_push(out, t->vocab_id[k]);
    }
    size_t need;
    if (size_mul(&need, n, 2) != 0 || work_reserve(w, need) != 0) return -1;
    size_t ns = 0;
    int unk = -1, unk_len = 0; /* a pending unknown-character symbol */
    for (size_t i = 0; i < n; i++) {
        int id = t->byte_id[s[i]];
        if (id >= 0) {
            if (unk >= 0) { sym_add(w, &ns, unk, unk_len); unk = -1; }
            sym_add(w, &ns, id, 1);
            continue;
        }
        if (t->byte_fallback && t->fb_n[s[i]] > 0) { /* the pending unk is not flushed here, as upstream */
            for (int q = 0; q < t->fb_n[s[i]]; q++) sym_add(w, &ns, t->fb_id[s[i]][q], 1);
            continue;
        }
        if (t->unk_id >= 0) {
            if (unk >= 0 && t->fuse_unk) unk_len++;
            else {
                if (unk >= 0) sym_add(w, &ns, unk, unk_len);
                unk = t->unk_id;
                unk_len = 1;
            }
        } /* else: the character is dropped, as upstream */
    }
    if (unk >= 0) sym_add(w, &ns, unk, unk_len);

    w->nheap = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        long m = merge_lookup(t, w->c[i], w->c[i + 1]);
        if (m >= 0 && heap_push(w, (HeapItem){t->merge_rank[m], (uint32_t)i, t->merge_new[m]}) != 0) return -1;
    }
    while (w->nheap) {
        HeapItem top = heap_pop(w);
        size_t p = top.pos;
        if (w->len[p] == 0 || w->next[p] == -1) continue;
        int nx = w->next[p];
        long m = merge_lookup(t, w->c[p], w->c[nx]);
        if (m < 0 || t->merge_new[m] != top.new_id) continue; /* an expired entry */
        int right_next = w->next[nx];
        w->c[p] = top.new_id;
        w->len[p] += w->len[nx];
        w->next[p] = right_next;
        w->len[nx] = 0;
        if (right_next > -1 && (size_t)right_next < ns) w->prev[right_next] = (int)p;
        if (w->prev[p] >= 0) {
            int pv = w->prev[p];
            long m2 = merge_lookup(t, w->c[pv], w->c[p]);
            if (m2 >= 0 && heap_push(w, (HeapItem){t->merge_rank[m2], (uint32_t)pv, t->merge_new[m2]}) != 0)
                return -1;
        }
        if (right_next > -1 && (size_t)right_next < ns) {
            long m3 = merge_lookup(t, w->c[p], w->c[right_next]);
            if (m3 >= 0 && heap_push(w, (HeapItem){t->merge_rank[m3], (uint32_t)p, t->merge_new[m3]}) != 0)
                return -1;
        }
    }
    if (intvec_reserve(out, ns) != 0) return -1;
    for (size_t i = 0; i < ns; i++)
        if (w->len[i] != 0) out->v[out->n++] = w->c[i];
    return 0;
}

/* Text between added tokens: pre-tokenize, then BPE each piece. */
static int encode_plain(const Tokenizer *t, EncodeWork *w, const char *s, size_t n, IntVec *out, Err *err) {
    if (n == 0) return 0;
    if (pretok_split(t->pre, s, n, &w->pw, err) != 0) return -1;
    for (size_t i = 0; i < w->pw.cur.n; i++) {
        Span sp = w->pw.cur.v[i];
        if (bpe_piece(t, w, (const unsigned char *)s + sp.off, sp.len, out) != 0)
            return err_set(err, "tokenize: out of memory");
    }
    return 0;
}

/* Cuts the added tokens of one trie out of s[0, n) (leftmost-longest, as daachorse's
 * LeftmostLongest in added_vocabulary.rs), handing the gaps to the next stage. */
static int encode_added(const Tokenizer *t, EncodeWork *w, const Trie *tr, const Trie *next_trie, const char *s,
                        size_t n, IntVec *out, Err *err) {
    const unsigned char *u = (const unsigned char *)s;
    size_t gap = 0, i = 0;
    while (tr->n && i < n) {
        size_t mlen = 0;
        int id = tr->first[u[i]] ? trie_longest(tr, u + i, n - i, &mlen) : -1;
        if (id < 0) { i++; continue; }
        int rc = next_trie ? encode_added(t, w, next_trie, NULL, s + gap, i - gap, out, err)
                           : encode_plain(t, w, s + gap, i - gap, out, err);
        if (rc != 0) return -1;
        if (intvec_push(out, id) != 0) return err_set(err, "tokenize: out of memory");
        i += mlen;
        gap = i;
    }
    return next_trie ? encode_added(t, w, next_trie, NULL, s + gap, n - gap, out, err)
                     : encode_plain(t, w, s + gap, n - gap, out, err);
}

/* Python's str.isspace: general category Zs, or bidirectional class WS, B or S. */
static int py_isspace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Decodes the code point at s (valid UTF-8); returns its length. */
static size_t cp_at(const unsigned char *s, uint32_t *cp) {
    size_t k = s[0] < 0x80 ? 1 : s[0] < 0xe0 ? 2 : s[0] < 0xf0 ? 3 : 4;
    uint32_t v = k == 1 ? s[0] : k == 2 ? (s[0] & 0x1fu) : k == 3 ? (s[0] & 0x0fu) : (s[0] & 0x07u);
    for (size_t i = 1; i < k; i++) v = v << 6 | (s[i] & 0x3fu);
    *cp = v;
    return k;
}

/* Kimi's TikTokenTokenizer.encode before tiktoken: 400 000-character chunks, each cut wherever a run of
 * whitespace or of non-whitespace characters would exceed run_limit (_split_whitespaces_or_nonwhitespaces);
 * every piece is encoded on its own, added tokens included. */
static int encode_runs(const Tokenizer *t, EncodeWork *w, const char *text, size_t len, IntVec *out, Err *err) {
    const unsigned char *u = (const unsigned char *)text;
    for (size_t chunk = 0; chunk < len;) {
        size_t end = chunk;
        uint32_t cp;
        for (long count = 0; end < len && count < 400000; count++) end += cp_at(u + end, &cp);
        cp_at(u + chunk, &cp);
        int space = py_isspace(cp);
        size_t slice = chunk, run = 0;
        for (size_t i = chunk; i < end;) {
            size_t k = cp_at(u + i, &cp);
            int now = py_isspace(cp);
            if (now != space) run = 1, space = now;
            else if (++run > t->run_limit) {
                if (encode_added(t, w, &t->trie_raw, &t->trie_norm, text + slice, i - slice, out, err)) return -1;
                slice = i, run = 1;
            }
            i += k;
        }
        if (encode_added(t, w, &t->trie_raw, &t->trie_norm, text + slice, end - slice, out, err)) return -1;
        chunk = end;
    }
    return 0;
}

int tokenizer_encode_append(const Tokenizer *t, const char *text, size_t len, IntVec *out, Err *err) {
    if (len > (size_t)INT_MAX / 2) return err_set(err, "tokenize: text of %zu bytes is too long", len);
    if (!utf8_valid(text, len)) {
        size_t bad = utf8_first_invalid((const unsigned char *)text, len);
        return err_set(err, "input is not valid UTF-8 (byte 0x%02x at offset %zu)", (unsigned char)text[bad], bad);
    }
    EncodeWork w;
    memset(&w, 0, sizeof w);
    size_t n0 = out->n;
    int rc = t->run_limit ? encode_runs(t, &w, text, len, out, err)
                          : encode_added(t, &w, &t->trie_raw, &t->trie_norm, text, len, out, err);
    work_free(&w);
    if (rc == 0 && out->n > (size_t)INT_MAX) rc = err_set(err, "tokenize: too many tokens");
    if (rc != 0) out->n = n0;
    return rc;
}

int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int **ids, int *n, Err *err) {
    IntVec v = {0};
    *ids = NULL;
    *n = 0;
    if (tokenizer_encode_append(t, text, len, &v, err) != 0) {
        intvec_free(&v);
        return -1;
    }
    *ids = v.v;
    *n = (int)v.n;
    return 0;
}

/* ---- decoding --------------------------------------------------------------------------- */

static int check_id(const Tokenizer *t, int id, Err *err) {
    if (id < 0 || id >= t->vocab_size)
        return err_set(err, "id %d is out of range [0, %d)", id, t->vocab_size);
    if (t->kind[id] == KIND_NONE) return err_set(err, "id %d names no token", id);
    return 0;
}

int tokenizer_decode(const Tokenizer *t, const int *ids, int n, char **text, size_t *len, Err *err) {
    *text = NULL;
    *len = 0;
    ByteBuf raw = {0}, out = {0};
    for (int i = 0; i < n; i++) {
        if (check_id(t, ids[i], err) != 0) {
            bytebuf_free(&raw);
            return -1;
        }
        size_t a = t->dec_off[ids[i]], b = t->dec_off[ids[i] + 1];
        if (bytebuf_append(&raw, t->dec.data + a, b - a) != 0) {
            bytebuf_free(&raw);
            return err_set(err, "detokenize: out of memory");
        }
    }
    size_t used;
    if (bytebuf_reserve(&out, raw.len) != 0 ||
        utf8_lossy_append(&out, (const unsigned char *)raw.data, raw.len, 1, &used) != 0) {
        bytebuf_free(&raw);
        bytebuf_free(&out);
        return err_set(err, "detokenize: out of memory");
    }
    bytebuf_free(&raw);
    out.data[out.len] = 0;
    *text = out.data;
    *len = out.len;
    return 0;
}

void decode_stream_init(DecodeStream *s, const Tokenizer *t) {
    memset(s, 0, sizeof *s);
    s->tok = t;
}

int decode_stream_step(DecodeStream *s, int id, const char **text, size_t *len, Err *err) {
    const Tokenizer *t = s->tok;
    *text = "";
    *len = 0;
    if (check_id(t, id, err) != 0) return -1;
    size_t a = t->dec_off[id], b = t->dec_off[id + 1], used;
    /* raw = the incomplete character held back last time + this token's bytes */
    s->raw.len = 0;
    s->out.len = 0;
    if (bytebuf_append(&s->raw, s->pending, (size_t)s->npending) != 0 ||
        bytebuf_append(&s->raw, t->dec.data + a, b - a) != 0 || bytebuf_reserve(&s->out, s->raw.len + 8) != 0 ||
        utf8_lossy_append(&s->out, (const unsigned char *)s->raw.data, s->raw.len, 0, &used) != 0)
        return err_set(err, "detokenize: out of memory");
    s->npending = (int)(s->raw.len - used); /* at most 3: a valid prefix of one character */
    memcpy(s->pending, s->raw.data + used, (size_t)s->npending);
    s->out.data[s->out.len] = 0;
    *text = s->out.data;
    *len = s->out.len;
    return 0;
}

int decode_stream_flush(DecodeStream *s, const char **text, size_t *len, Err *err) {
    size_t used;
    s->out.len = 0;
    if (bytebuf_reserve(&s->out, 8) != 0 ||
        utf8_lossy_append(&s->out, s->pending, (size_t)s->npending, 1, &used) != 0)
        return err_set(err, "detokenize: out of memory");
    s->npending = 0;
    s->out.data[s->out.len] = 0;
    *text = s->out.data;
    *len = s->out.len;
    return 0;
}

void decode_stream_free(DecodeStream *s) {
    bytebuf_free(&s->out);
    bytebuf_free(&s->raw);
    s->npending = 0;
}

/* ---- accessors -------------------------------------------------------------------------- */

int tokenizer_vocab_size(const Tokenizer *t) { return t->vocab_size; }

int tokenizer_token_id(const Tokenizer *t, const char *content) {
    long k = strmap_find(&t->added, content, strlen(content));
    return k >= 0 ? t->added_id[k] : -1;
}

const char *tokenizer_id_to_token(const Tokenizer *t, int id) {
    if (id < 0 || id >= t->vocab_size || t->kind[id] == KIND_NONE) return NULL;
    return t->names.data + t->name_off[id];
}

int tokenizer_is_special(const Tokenizer *t, int id) {
    return id >= 0 && id < t->vocab_size && t->special[id];
}

int tokenizer_bos_id(const Tokenizer *t) { return t->bos_id; }
int tokenizer_eos_id(const Tokenizer *t) { return t->eos_id; }
const char *tokenizer_chat_template(const Tokenizer *t) { return t->chat_template; }
int tokenizer_is_tiktoken(const Tokenizer *t) { return t->tiktoken; }
