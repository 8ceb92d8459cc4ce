/**
 * @file tokenizer_load.c
 * @brief tokenizer_load() and tokenizer_free(): reads a Hugging Face tokenizer.json (model.vocab,
 *        model.merges, added_tokens, normalizer, pre_tokenizer, decoder) and the optional
 *        tokenizer_config.json beside it (bos_token, eos_token, chat_template), validates every
 *        field against what tokenizer.c can reproduce exactly (docs/model.md §9.2; docs/formats.md
 *        §2 and §6), and builds the tables of tokenizer_internal.h: per-id kinds and strings, the
 *        vocabulary and merge maps, the added-token tries and the decode table.
 *
 * Every failure is one line naming the file and the field; nothing a file says can make us
 * allocate more than TOK_MAX_ID ids or read more than TOK_MAX_FILE bytes.
 */
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/hashmap.h"
#include "bytelevel.h"
#include "pretok.h"
#include "tokenizer_internal.h"


/* Decodes one code point of valid UTF-8 at s (n bytes left); returns its length. */
static size_t utf8_get(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    size_t k = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if (k > n) k = n;
    uint32_t v = k == 1 ? c : k == 2 ? (c & 0x1f) : k == 3 ? (c & 0x0f) : (c & 0x07);
    for (size_t i = 1; i < k; i++) v = (v << 6) | (s[i] & 0x3f);
    *cp = v;
    return k;
}

/* ---- tries ------------------------------------------------------------------------------ */

static int trie_node(Trie *tr, unsigned char byte) {
    if (tr->n == tr->cap) {
        int nc = tr->cap ? tr->cap * 2 : 64;
        TrieNode *p = realloc(tr->node, (size_t)nc * sizeof *p);
        if (!p) return -1;
        tr->node = p;
        tr->cap = nc;
    }
    TrieNode *nd = &tr->node[tr->n];
    nd->first_child = nd->sibling = nd->token = -1;
    nd->byte = byte;
    return tr->n++;
}

int tok_trie_insert(Trie *tr, const unsigned char *s, size_t n, int token) {
    if (!tr->n && trie_node(tr, 0) != 0) return -1; /* root = node 0 */
    int cur = 0;
    for (size_t i = 0; i < n; i++) {
        int c = tr->node[cur].first_child;
        while (c >= 0 && tr->node[c].byte != s[i]) c = tr->node[c].sibling;
        if (c < 0) {
            if (tr->n >= INT_MAX / 2) return -1;
            c = trie_node(tr, s[i]);
            if (c < 0) return -1;
            tr->node[c].sibling = tr->node[cur].first_child;
            tr->node[cur].first_child = c;
        }
        cur = c;
    }
    tr->node[cur].token = token;
    tr->first[s[0]] = 1;
    return 0;
}

/* ---- loading ---------------------------------------------------------------------------- */

/* A JSON number that is an integer in [0, TOK_MAX_ID]. */
static int json_id(const cJSON *v, int *id) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= TOK_MAX_ID) || d != floor(d)) return -1;
    *id = (int)d;
    return 0;
}

/* Optional boolean field: absent or null → dflt. */
static int json_bool(const cJSON *obj, const char *key, int dflt, int *out, const char *where, Err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) { *out = dflt; return 0; }
    if (!cJSON_IsBool(v)) return err_set(err, "%s: \"%s\" must be true or false", where, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Prints at most 48 bytes of a token for an error message, cut at a character boundary. */
static const char *clip(const char *s, char buf[64]) {
    size_t n = strlen(s);
    if (n <= 48) return s;
    size_t k = 48;
    while (k > 0 && ((unsigned char)s[k] & 0xc0) == 0x80) k--;
    memcpy(buf, s, k);
    memcpy(buf + k, "...", 4);
    return buf;
}

int tok_parse_json_file(const char *path, cJSON **root, Err *err) {
    char *data;
    size_t len;
    *root = NULL;
    if (read_file(path, TOK_MAX_FILE, &data, &len, err) != 0) return -1;
    /* UTF-8 is checked per string where strings are used (vocabulary keys, added tokens,
     * regexes): validating all 7.8 MB up front would cost a tenth of the load time. */
    cJSON *j = cJSON_ParseWithLength(data, len);
    if (!j) {
        const char *ep = cJSON_GetErrorPtr();
        size_t off = (ep && ep >= data && ep <= data + len) ? (size_t)(ep - data) : len;
        size_t line = 1;
        for (size_t i = 0; i < off; i++) line += data[i] == '\n';
        free(data);
        return err_set(err, "%s: invalid JSON near byte %zu (line %zu)%s", path, off, line,
                       off >= len ? ": unexpected end of file" : "");
    }
    free(data);
    *root = j;
    return 0;
}

/* Grows the per-id arrays to hold ids < n. */
int tok_ensure_ids(Tokenizer *t, int n) {
    if (n <= t->vocab_size) return 0;
    unsigned char *k = realloc(t->kind, (size_t)n);
    if (!k) return -1;
    t->kind = k;
    unsigned char *sp = realloc(t->special, (size_t)n);
    if (!sp) return -1;
    t->special = sp;
    size_t *no = realloc(t->name_off, (size_t)n * sizeof *no);
    if (!no) return -1;
    t->name_off = no;
    memset(t->kind + t->vocab_size, 0, (size_t)(n - t->vocab_size));
    memset(t->special + t->vocab_size, 0, (size_t)(n - t->vocab_size));
    t->vocab_size = n;
    return 0;
}

int tok_set_name(Tokenizer *t, int id, const char *s, size_t n) {
    if (bytebuf_reserve(&t->names, n + 1) != 0) return -1;
    t->name_off[id] = t->names.len;
    memcpy(t->names.data + t->names.len, s, n);
    t->names.data[t->names.len + n] = 0;
    t->names.len += n + 1;
    return 0;
}

static int load_vocab(Tokenizer *t, const cJSON *vocab, const char *path, Err *err) {
    if (!cJSON_IsObject(vocab)) return err_set(err, "%s: model.vocab must be an object", path);
    int count = cJSON_GetArraySize(vocab), max_id = -1;
    if (strmap_init(&t->vocab, (size_t)count) != 0) return err_set(err, "%s: out of memory", path);
    t->vocab_id = xcalloc((size_t)count + 1, sizeof *t->vocab_id);
    if (!t->vocab_id) return err_set(err, "%s: out of memory", path);
    char cb[64];
    const cJSON *it;
    int i = 0;
    cJSON_ArrayForEach(it, vocab) {
        int id;
        const char *key = it->string;
        size_t klen = strlen(key);
        if (i >= count) break;
        if (json_id(it, &id) != 0)
            return err_set(err, "%s: model.vocab['%s']: id must be an integer in [0, %d]", path,
                           clip(key, cb), TOK_MAX_ID);
        if (klen == 0) return err_set(err, "%s: model.vocab: empty token string (id %d)", path, id);
        if (!utf8_valid(key, klen)) return err_set(err, "%s: model.vocab: the key of id %d is not valid UTF-8", path, id);
        int is_new;
        long idx = strmap_intern(&t->vocab, key, klen, &is_new);
        if (idx < 0) return err_set(err, "%s: out of memory", path);
        if (!is_new)
            return err_set(err, "%s: model.vocab: token '%s' appears twice", path, clip(key, cb));
        t->vocab_id[idx] = id;
        if (id > max_id) max_id = id;
        i++;
    }
    if (tok_ensure_ids(t, max_id + 1) != 0) return err_set(err, "%s: out of memory", path);
    for (size_t k = 0; k < t->vocab.n; k++) {
        int id = t->vocab_id[k];
        size_t len;
        const char *key = strmap_key(&t->vocab, k, &len);
        if (t->kind[id] != KIND_NONE) {
            char cb2[64];
            size_t l2;
            long other = -1;
            for (size_t q = 0; q < k; q++)
                if (t->vocab_id[q] == id) { other = (long)q; break; }
            const char *k2 = other >= 0 ? strmap_key(&t->vocab, (size_t)other, &l2) : "?";
            char o[64];
            snprintf(o, sizeof o, "%.*s", (int)(other >= 0 ? (l2 < 48 ? l2 : 48) : 1), k2);
            return err_set(err, "%s: model.vocab: id %d is used by both '%s' and '%s'", path, id,
                           clip(o, cb2), clip(key, cb));
        }
        t->kind[id] = KIND_VOCAB;
        t->special[id] = 0;
        if (tok_set_name(t, id, key, len) != 0) return err_set(err, "%s: out of memory", path);
    }
    return 0;
}

/* One merge "a b" (legacy) or ["a", "b"]: both must be tokens, and so must "ab". */
static int add_merge(Tokenizer *t, const char *a, size_t alen, const char *b, size_t blen, uint32_t rank,
                     ByteBuf *scratch, int *hint, const char *path, Err *err) {
    char cb[64];
    long ia = strmap_find(&t->vocab, a, alen), ib = strmap_find(&t->vocab, b, blen);
    if (ia < 0 || ib < 0) {
        char tmp[64];
        const char *bad = ia < 0 ? a : b;
        size_t bl = ia < 0 ? alen : blen;
        snprintf(tmp, sizeof tmp, "%.*s", (int)(bl < 60 ? bl : 60), bad);
        return err_set(err, "%s: model.merges[%u]: '%s' is not in the vocabulary", path, rank, clip(tmp, cb));
    }
    /* Trained vocabularies put the result of merge r at id base + r, so the id after the
     * previous result is checked first (a string compare on memory read in order) before
     * falling back to the hash lookup; either way the string must match exactly. */
    int new_id = -1, h = *hint;
    if (h >= 0 && h < t->vocab_size && t->kind[h] == KIND_VOCAB) {
        const char *nm = t->names.data + t->name_off[h];
        /* strncmp stops at the NUL of a shorter name, so nothing past it is read */
        if (!strncmp(nm, a, alen) && !strncmp(nm + alen, b, blen) && nm[alen + blen] == 0) new_id = h;
    }
    if (new_id < 0) {
        scratch->len = 0;
        if (bytebuf_append(scratch, a, alen) != 0 || bytebuf_append(scratch, b, blen) != 0)
            return err_set(err, "%s: out of memory", path);
        long inew = strmap_find(&t->vocab, scratch->data, scratch->len);
        if (inew < 0)
            return err_set(err, "%s: model.merges[%u]: the merged token '%s' is not in the vocabulary", path,
                           rank, clip(scratch->data, cb));
        new_id = t->vocab_id[inew];
    }
    *hint = new_id + 1;
    uint64_t key = ((uint64_t)(uint32_t)t->vocab_id[ia] << 32) | (uint32_t)t->vocab_id[ib];
    long m = u64map_intern(&t->merges, key, NULL);
    if (m < 0) return err_set(err, "%s: out of memory", path);
    /* a repeated pair keeps the later rank, as Hugging Face's HashMap collect does */
    t->merge_rank[m] = rank;
    t->merge_new[m] = new_id;
    return 0;
}

static int load_merges(Tokenizer *t, const cJSON *merges, const char *path, Err *err) {
    if (!cJSON_IsArray(merges)) return err_set(err, "%s: model.merges must be an array", path);
    int count = cJSON_GetArraySize(merges);
    if (u64map_init(&t->merges, (size_t)count) != 0) return err_set(err, "%s: out of memory", path);
    t->merge_rank = xcalloc((size_t)count + 1, sizeof *t->merge_rank);
    t->merge_new = xcalloc((size_t)count + 1, sizeof *t->merge_new);
    if (!t->merge_rank || !t->merge_new) return err_set(err, "%s: out of memory", path);
    ByteBuf scratch = {0};
    const cJSON *it;
    int tuple = -1, rc = 0, hint = -1;
    uint32_t rank = 0, index = 0;
    cJSON_ArrayForEach(it, merges) {
        /* MergeType is untagged: all strings ("a b", rank = index after dropping "#version"
         * lines) or all pairs (["a", "b"]) */
        int is_pair = cJSON_IsArray(it);
        if (tuple < 0) tuple = is_pair;
        if (is_pair != tuple || (!is_pair && !cJSON_IsString(it))) {
            rc = err_set(err, "%s: model.merges[%u]: expected %s like the first entry", path, index,
                         tuple ? "a [\"left\", \"right\"] pair" : "a \"left right\" string");
            break;
        }
        if (is_pair) {
            const cJSON *a = cJSON_GetArrayItem(it, 0), *b = cJSON_GetArrayItem(it, 1);
            if (cJSON_GetArraySize(it) != 2 || !cJSON_IsString(a) || !cJSON_IsString(b)) {
                rc = err_set(err, "%s: model.merges[%u]: expected a pair of two strings", path, index);
                break;
            }
            rc = add_merge(t, a->valuestring, strlen(a->valuestring), b->valuestring, strlen(b->valuestring),
                           rank, &scratch, &hint, path, err);
        } else {
            const char *s = it->valuestring;
            if (s[0] == '#' && !strncmp(s, "#version", 8)) { index++; continue; }
            const char *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                char cb[64];
                rc = err_set(err, "%s: model.merges[%u]: '%s' is not two tokens separated by one space", path,
                             index, clip(s, cb));
                break;
            }
            rc = add_merge(t, s, (size_t)(sp - s), sp + 1, strlen(sp + 1), rank, &scratch, &hint, path, err);
        }
        if (rc != 0) break;
        rank++;
        index++;
    }
    bytebuf_free(&scratch);
    return rc;
}

static int load_model(Tokenizer *t, const cJSON *model, const char *path, Err *err) {
    if (!cJSON_IsObject(model)) return err_set(err, "%s: \"model\" missing or not an object", path);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (!cJSON_IsString(type))
        return err_set(err, "%s: model.type missing (only \"BPE\" is supported)", path);
    if (strcmp(type->valuestring, "BPE") != 0) {
        char cb[64];
        return err_set(err, "%s: model.type is '%s'; only BPE is supported", path, clip(type->valuestring, cb));
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
        return err_set(err, "%s: model.dropout must be null or 0 (BPE dropout is random; not supported)", path);
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, affixes[i]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && v->valuestring[0] == 0))
            return err_set(err, "%s: model.%s must be null (not supported with byte-level BPE)", path, affixes[i]);
    }
    if (json_bool(model, "fuse_unk", 0, &t->fuse_unk, path, err) != 0 ||
        json_bool(model, "byte_fallback", 0, &t->byte_fallback, path, err) != 0 ||
        json_bool(model, "ignore_merges", 0, &t->ignore_merges, path, err) != 0)
        return -1;
    if (load_vocab(t, cJSON_GetObjectItemCaseSensitive(model, "vocab"), path, err) != 0) return -1;
    if (load_merges(t, cJSON_GetObjectItemCaseSensitive(model, "merges"), path, err) != 0) return -1;

    t->unk_id = -1;
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (unk && !cJSON_IsNull(unk)) {
        long k = cJSON_IsString(unk) ? strmap_find(&t->vocab, unk->valuestring, strlen(unk->valuestring)) : -1;
        if (k < 0) return err_set(err, "%s: model.unk_token must be null or a token of model.vocab", path);
        t->unk_id = t->vocab_id[k];
    }
    /* The initial symbols of a piece: one per byte, the byte's GPT-2 character looked up in
     * the vocabulary (BPE::merge_word); <0xXX> fallbacks of that character's UTF-8 bytes. */
    for (int b = 0; b < 256; b++) {
        char s[4];
        size_t n = utf8_encode(s, bytelevel_char((unsigned char)b));
        long k = strmap_find(&t->vocab, s, n);
        t->byte_id[b] = k >= 0 ? t->vocab_id[k] : -1;
        t->fb_n[b] = -1;
        if (t->byte_fallback) {
            int ok = 1;
            for (size_t q = 0; q < n; q++) {
                char code[8];
                snprintf(code, sizeof code, "<0x%02X>", (unsigned char)s[q]);
                long f = strmap_find(&t->vocab, code, strlen(code));
                if (f < 0) { ok = 0; break; }
                t->fb_id[b][q] = t->vocab_id[f];
            }
            if (ok) t->fb_n[b] = (int)n;
        }
    }
    return 0;
}

static int load_added(Tokenizer *t, const cJSON *list, const char *path, Err *err) {
    if (!list || cJSON_IsNull(list)) return 0;
    if (!cJSON_IsArray(list)) return err_set(err, "%s: \"added_tokens\" must be an array", path);
    int count = cJSON_GetArraySize(list);
    if (strmap_init(&t->added, (size_t)count) != 0) return err_set(err, "%s: out of memory", path);
    t->added_id = xcalloc((size_t)count + 1, sizeof *t->added_id);
    if (!t->added_id) return err_set(err, "%s: out of memory", path);
    /* Hugging Face ignores the ids in the file: a content already in the vocabulary gets the
     * vocabulary id, any other the next id after the vocabulary (model.get_vocab_size() =
     * number of entries), in file order (AddedVocabulary::add_tokens). We insist they agree. */
    int next_id = (int)t->vocab.n, i = -1;
    char cb[64];
    const cJSON *it;
    cJSON_ArrayForEach(it, list) {
        i++;
        char where[64];
        snprintf(where, sizeof where, "%s: added_tokens[%d]", path, i);
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        int id;
        if (!cJSON_IsObject(it) || !cJSON_IsString(content))
            return err_set(err, "%s: expected an object with a string \"content\"", where);
        if (json_id(cJSON_GetObjectItemCaseSensitive(it, "id"), &id) != 0)
            return err_set(err, "%s: \"id\" must be an integer in [0, %d]", where, TOK_MAX_ID);
        const char *c = content->valuestring;
        size_t clen = strlen(c);
        if (clen == 0) continue; /* Hugging Face skips empty added tokens */
        if (!utf8_valid(c, clen)) return err_set(err, "%s: \"content\" is not valid UTF-8", where);
        int special = 0, normalized = 0, lstrip = 0, rstrip = 0, single_word = 0;
        if (json_bool(it, "special", 0, &special, where, err) != 0 ||
            json_bool(it, "normalized", !special, &normalized, where, err) != 0 ||
            json_bool(it, "lstrip", 0, &lstrip, where, err) != 0 ||
            json_bool(it, "rstrip", 0, &rstrip, where, err) != 0 ||
            json_bool(it, "single_word", 0, &single_word, where, err) != 0)
            return -1;
        if (lstrip || rstrip || single_word)
            return err_set(err, "%s: '%s' has %s=true, which is not supported", where, clip(c, cb),
                           lstrip ? "lstrip" : rstrip ? "rstrip" : "single_word");
        int is_new;
        long k = strmap_intern(&t->added, c, clen, &is_new);
        if (k < 0) return err_set(err, "%s: out of memory", path);
        if (!is_new) return err_set(err, "%s: '%s' is listed twice", where, clip(c, cb));
        long v = strmap_find(&t->vocab, c, clen);
        int expect = v >= 0 ? t->vocab_id[v] : next_id++;
        if (v < 0 && expect < t->vocab_size && t->kind[expect] == KIND_VOCAB)
            return err_set(err, "%s: '%s' would get id %d, which belongs to vocabulary token '%s'", where,
                           clip(c, cb), expect, t->names.data + t->name_off[expect]);
        if (id != expect) {
            if (id < t->vocab_size && t->kind[id] == KIND_VOCAB)
                return err_set(err, "%s: '%s' has id %d, which belongs to vocabulary token '%s'", where,
                               clip(c, cb), id, t->names.data + t->name_off[id]);
            return err_set(err, "%s: '%s' has id %d but Hugging Face would assign id %d", where, clip(c, cb), id,
                           expect);
        }
        t->added_id[k] = id;
        if (tok_ensure_ids(t, id + 1) != 0) return err_set(err, "%s: out of memory", path);
        if (t->kind[id] == KIND_ADDED)
            return err_set(err, "%s: id %d is already used by added token '%s'", where, id,
                           t->names.data + t->name_off[id]);
        if (t->kind[id] == KIND_NONE) {
            t->kind[id] = KIND_ADDED;
            if (tok_set_name(t, id, c, clen) != 0) return err_set(err, "%s: out of memory", path);
        }
        t->special[id] = (unsigned char)special;
        if (tok_trie_insert(normalized ? &t->trie_norm : &t->trie_raw, (const unsigned char *)c, clen, id) != 0)
            return err_set(err, "%s: out of memory", path);
    }
    return 0;
}

/* Decoded bytes of every id: the ByteLevel decoder maps each character back to its byte when
 * every character of the token is in the table, otherwise keeps the token's own UTF-8. */
static int build_decode_table(Tokenizer *t, const char *path, Err *err) {
    int16_t cp_byte[0x144]; /* every code point of the table is below U+0144 */
    for (uint32_t c = 0; c < 0x144; c++) cp_byte[c] = (int16_t)bytelevel_byte(c);
    /* decoded bytes never outnumber the bytes of the strings (a character maps to ≤ 1 byte) */
    t->dec_off = xcalloc((size_t)t->vocab_size + 1, sizeof *t->dec_off);
    if (!t->dec_off || bytebuf_reserve(&t->dec, t->names.len) != 0) return err_set(err, "%s: out of memory", path);
    unsigned char *d = (unsigned char *)t->dec.data;
    for (int id = 0; id < t->vocab_size; id++) {
        t->dec_off[id] = t->dec.len;
        if (t->kind[id] == KIND_NONE) continue;
        const unsigned char *s = (const unsigned char *)t->names.data + t->name_off[id];
        size_t n = strlen((const char *)s), i = 0, start = t->dec.len;
        int mapped = 1;
        while (i < n) {
            uint32_t c;
            i += utf8_get(s + i, n - i, &c);
            if (c >= 0x144 || cp_byte[c] < 0) { mapped = 0; break; }
            d[t->dec.len++] = (unsigned char)cp_byte[c];
        }
        if (!mapped) { /* a character outside the table: the token's own bytes */
            t->dec.len = start;
            memcpy(d + start, s, n);
            t->dec.len += n;
        }
    }
    t->dec_off[t->vocab_size] = t->dec.len;
    return 0;
}

static int check_normalizer(const cJSON *nz, const char *path, Err *err) {
    if (!nz || cJSON_IsNull(nz)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(nz, "type");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(nz, "normalizers");
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "Sequence") && cJSON_IsArray(list) &&
        cJSON_GetArraySize(list) == 0)
        return 0;
    char cb[64];
    return err_set(err, "%s: normalizer '%s' is not supported (only none or an empty Sequence)", path,
                   cJSON_IsString(type) ? clip(type->valuestring, cb) : "?");
}

static int check_decoder(const cJSON *d, const char *path, Err *err) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(d, "type");
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "ByteLevel")) return 0;
    char cb[64];
    return err_set(err, "%s: decoder '%s' is not supported (only ByteLevel)", path,
                   cJSON_IsString(type) ? clip(type->valuestring, cb) : "missing");
}

/* bos_token / eos_token: a string or {"content": string}; looked up like
 * convert_tokens_to_ids (added tokens first, then the vocabulary). */
static int config_token(const Tokenizer *t, const cJSON *cfg, const char *key, int *id, const char *path,
                        Err *err) {
    *id = -1;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!cJSON_IsString(v)) return err_set(err, "%s: %s must be a string or {\"content\": string}", path, key);
    size_t n = strlen(v->valuestring);
    long k = strmap_find(&t->added, v->valuestring, n);
    if (k >= 0) { *id = t->added_id[k]; return 0; }
    k = strmap_find(&t->vocab, v->valuestring, n);
    if (k >= 0) { *id = t->vocab_id[k]; return 0; }
    char cb[64];
    return err_set(err, "%s: %s '%s' is not a token of the tokenizer", path, key, clip(v->valuestring, cb));
}

int tok_load_config(Tokenizer *t, const char *path, Err *err) {
    struct stat sb;
    if (stat(path, &sb) != 0 && errno == ENOENT) return 0; /* optional */
    cJSON *cfg;
    if (tok_parse_json_file(path, &cfg, err) != 0) return -1;
    int rc = 0;
    if (!cJSON_IsObject(cfg)) rc = err_set(err, "%s: expected a JSON object", path);
    if (!rc) rc = config_token(t, cfg, "bos_token", &t->bos_id, path, err);
    if (!rc) rc = config_token(t, cfg, "eos_token", &t->eos_id, path, err);
    const cJSON *tpl = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    if (!rc && cJSON_IsString(tpl)) {
        t->chat_template = strdup(tpl->valuestring);
        if (!t->chat_template) rc = err_set(err, "%s: out of memory", path);
    }
    cJSON_Delete(cfg);
    return rc;
}

int tokenizer_load(Tokenizer **out, const char *path, Err *err) {
    *out = NULL;
    char file[4096], cfg[4096];
    struct stat sb;
    if (stat(path, &sb) != 0) return err_set(err, "%s: %s", path, strerror(errno));
    size_t plen = strlen(path);
    if (S_ISDIR(sb.st_mode)) {
        if (path_join(file, sizeof file, path, "tokenizer.json") != 0 ||
            path_join(cfg, sizeof cfg, path, "tokenizer_config.json") != 0)
            return err_set(err, "%s: path too long", path);
        /* The directory decides: tokenizer.json (Hugging Face), else tiktoken.model (Kimi, Moonlight). */
        char tk[4096];
        if (stat(file, &sb) != 0 && path_join(tk, sizeof tk, path, "tiktoken.model") == 0 && stat(tk, &sb) == 0)
            return tokenizer_load_tiktoken(out, tk, cfg, err);
    } else if (plen >= 6 && !strcmp(path + plen - 6, ".model")) {
        const char *slash = strrchr(path, '/');
        int dlen = slash ? (int)(slash - path) : 1;
        if (snprintf(cfg, sizeof cfg, "%.*s/tokenizer_config.json", dlen, slash ? path : ".") >= (int)sizeof cfg)
            return err_set(err, "%s: path too long", path);
        return tokenizer_load_tiktoken(out, path, cfg, err);
    } else {
        if (snprintf(file, sizeof file, "%s", path) >= (int)sizeof file) return err_set(err, "%s: path too long", path);
        const char *slash = strrchr(path, '/');
        int dlen = slash ? (int)(slash - path) : 1;
        if (snprintf(cfg, sizeof cfg, "%.*s/tokenizer_config.json", dlen, slash ? path : ".") >= (int)sizeof cfg)
            return err_set(err, "%s: path too long", path);
    }
    cJSON *root;
    if (tok_parse_json_file(file, &root, err) != 0) return -1;
    Tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        cJSON_Delete(root);
        return err_set(err, "%s: out of memory", file);
    }
    t->bos_id = t->eos_id = t->unk_id = -1;
    int rc = 0;
    if (!cJSON_IsObject(root)) rc = err_set(err, "%s: expected a JSON object", file);
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (!rc && version && !(cJSON_IsString(version) && !strcmp(version->valuestring, "1.0")))
        rc = err_set(err, "%s: unknown tokenizer version (expected \"1.0\")", file);
    if (!rc) rc = load_model(t, cJSON_GetObjectItemCaseSensitive(root, "model"), file, err);
    if (!rc) rc = load_added(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), file, err);
    if (!rc) rc = check_normalizer(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), file, err);
    if (!rc) rc = check_decoder(cJSON_GetObjectItemCaseSensitive(root, "decoder"), file, err);
    if (!rc && pretok_from_json(&t->pre, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), err) != 0)
        rc = err_prefix(err, "%s", file);
    if (!rc && !pretok_is_byte_level(t->pre))
        rc = err_set(err, "%s: pre_tokenizer must end with ByteLevel (only byte-level BPE is supported)", file);
    cJSON_Delete(root);
    if (!rc && t->vocab_size == 0) rc = err_set(err, "%s: empty vocabulary", file);
    if (!rc) rc = build_decode_table(t, file, err);
    if (!rc) rc = tok_load_config(t, cfg, err);
    if (rc) {
        tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    free(t->kind);
    free(t->special);
    free(t->name_off);
    bytebuf_free(&t->names);
    free(t->dec_off);
    bytebuf_free(&t->dec);
    strmap_free(&t->vocab);
    free(t->vocab_id);
    u64map_free(&t->merges);
    free(t->merge_rank);
    free(t->merge_new);
    strmap_free(&t->added);
    free(t->added_id);
    free(t->trie_raw.node);
    free(t->trie_norm.node);
    pretok_free(t->pre);
    free(t->chat_template);
    free(t);
}
