/**
 * @file util_tok.c
 * @brief Implementation of util_tok.h. The naive BPE uses linear scans over plain arrays and a
 *        sorted merge table with binary search: slow, short and independent of ref/base/hashmap.c.
 */
#define _POSIX_C_SOURCE 200809L
#include "util_tok.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer/bpe_train.h"
#include "tokenizer/bytelevel.h"
#include "tokenizer/tokenizer.h"
#include "base/util.h"

int tok_load_deepseek(Tokenizer **tok, cJSON **json) {
    Err err = {{0}};
    if (tokenizer_load(tok, DS_TOKENIZER_DIR, &err) != 0) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    *json = tok_json_file(DS_TOKENIZER_DIR "/tokenizer.json");
    return *json ? 0 : -1;
}

cJSON *tok_json_file(const char *path) {
    Err err = {{0}};
    char *data;
    size_t len;
    if (read_file(path, (size_t)1 << 30, &data, &len, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return NULL;
    }
    cJSON *j = cJSON_ParseWithLength(data, len);
    free(data);
    if (!j) fprintf(stderr, "%s: invalid JSON\n", path);
    return j;
}

int *tok_json_ints(const cJSON *arr, int *n) {
    *n = 0;
    if (!cJSON_IsArray(arr)) return NULL;
    int k = cJSON_GetArraySize(arr), i = 0;
    int *v = calloc((size_t)k + 1, sizeof *v);
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        if (!cJSON_IsNumber(it)) {
            free(v);
            return NULL;
        }
        v[i++] = it->valueint;
    }
    *n = k;
    return v;
}

int tok_ids_equal(const char *what, const int *got, int ngot, const int *want, int nwant) {
    int same = ngot == nwant;
    for (int i = 0; same && i < ngot; i++) same = got[i] == want[i];
    if (same) return 1;
    fprintf(stderr, "%s:\n  got  (%d):", what, ngot);
    for (int i = 0; i < ngot && i < 64; i++) fprintf(stderr, " %d", got[i]);
    fprintf(stderr, "\n  want (%d):", nwant);
    for (int i = 0; i < nwant && i < 64; i++) fprintf(stderr, " %d", want[i]);
    fprintf(stderr, "\n");
    return 0;
}

int tok_write(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, len, f) == len;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

int tok_write_in(const char *dir, const char *name, const char *text) {
    char p[4096];
    if (path_join(p, sizeof p, dir, name) != 0) return -1;
    return tok_write(p, text, strlen(text));
}

cJSON *tiny_tokenizer(void) {
    cJSON *root = cJSON_CreateObject(), *model = cJSON_CreateObject();
    cJSON *vocab = cJSON_CreateObject(), *merges = cJSON_CreateArray(), *added = cJSON_CreateArray();
    for (int b = 0; b < 256; b++) {
        char s[8] = {0};
        utf8_encode(s, bytelevel_char((unsigned char)b));
        cJSON_AddNumberToObject(vocab, s, b);
    }
    static const char *const merged[] = {"th", "the", "Ġthe"};
    static const char *const rules[] = {"t h", "th e", "Ġ the"};
    for (int i = 0; i < 3; i++) {
        cJSON_AddNumberToObject(vocab, merged[i], 256 + i);
        cJSON_AddItemToArray(merges, cJSON_CreateString(rules[i]));
    }
    static const char *const specials[] = {"<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"};
    for (int i = 0; i < 3; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", 259 + i);
        cJSON_AddStringToObject(t, "content", specials[i]);
        cJSON_AddBoolToObject(t, "single_word", 0);
        cJSON_AddBoolToObject(t, "lstrip", 0);
        cJSON_AddBoolToObject(t, "rstrip", 0);
        cJSON_AddBoolToObject(t, "normalized", i < 2);
        cJSON_AddBoolToObject(t, "special", i == 2);
        cJSON_AddItemToArray(added, t);
    }
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddItemToObject(root, "added_tokens", added);
    cJSON *pipe = cJSON_Parse(bpe_train_pipeline_json());
    static const char *const stages[] = {"normalizer", "pre_tokenizer", "post_processor", "decoder"};
    for (int i = 0; i < 4; i++)
        cJSON_AddItemToObject(root, stages[i], cJSON_DetachItemFromObject(pipe, stages[i]));
    cJSON_Delete(pipe);
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    cJSON_AddItemToObject(root, "model", model);
    return root;
}

/* ---- naive BPE ----------------------------------------------------------------------- */

typedef struct {
    char *s;
    int id;
} VocabEntry;

typedef struct {
    char *pair; /* "left right" */
    int rank;
} MergeEntry;

struct NaiveBpe {
    VocabEntry *v;
    int nv;
    MergeEntry *m;
    int nm;
};

static int cmp_vocab(const void *a, const void *b) {
    return strcmp(((const VocabEntry *)a)->s, ((const VocabEntry *)b)->s);
}
static int cmp_merge(const void *a, const void *b) {
    return strcmp(((const MergeEntry *)a)->pair, ((const MergeEntry *)b)->pair);
}

NaiveBpe *naive_bpe_new(const cJSON *tj) {
    const cJSON *model = cJSON_GetObjectItem(tj, "model");
    const cJSON *vocab = cJSON_GetObjectItem(model, "vocab"), *merges = cJSON_GetObjectItem(model, "merges");
    NaiveBpe *b = calloc(1, sizeof *b);
    b->v = calloc((size_t)cJSON_GetArraySize(vocab) + 1, sizeof *b->v);
    b->m = calloc((size_t)cJSON_GetArraySize(merges) + 1, sizeof *b->m);
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        b->v[b->nv].s = strdup(it->string);
        b->v[b->nv++].id = it->valueint;
    }
    cJSON_ArrayForEach(it, merges) {
        b->m[b->nm].pair = strdup(it->valuestring);
        b->m[b->nm].rank = b->nm;
        b->nm++;
    }
    qsort(b->v, (size_t)b->nv, sizeof *b->v, cmp_vocab);
    qsort(b->m, (size_t)b->nm, sizeof *b->m, cmp_merge);
    return b;
}

static int naive_rank(const NaiveBpe *b, const char *l, const char *r) {
    size_t n = strlen(l) + strlen(r) + 2;
    char *key = malloc(n);
    snprintf(key, n, "%s %s", l, r);
    MergeEntry k = {key, 0}, *hit = bsearch(&k, b->m, (size_t)b->nm, sizeof *b->m, cmp_merge);
    free(key);
    return hit ? hit->rank : -1;
}

int naive_bpe_piece(const NaiveBpe *b, const unsigned char *s, size_t n, int *ids, int count, int cap) {
    char **sym = calloc(n + 1, sizeof *sym);
    size_t ns = n;
    for (size_t i = 0; i < n; i++) {
        sym[i] = calloc(8, 1);
        utf8_encode(sym[i], bytelevel_char(s[i]));
    }
    for (;;) {
        int best = -1;
        for (size_t i = 0; i + 1 < ns; i++) {
            int r = naive_rank(b, sym[i], sym[i + 1]);
            if (r >= 0 && (best < 0 || r < best)) best = r;
        }
        if (best < 0) break;
        size_t j = 0;
        for (size_t i = 0; i < ns;) {
            if (i + 1 < ns && naive_rank(b, sym[i], sym[i + 1]) == best) {
                size_t l = strlen(sym[i]) + strlen(sym[i + 1]) + 1;
                char *m = malloc(l);
                snprintf(m, l, "%s%s", sym[i], sym[i + 1]);
                free(sym[i]);
                free(sym[i + 1]);
                sym[j++] = m;
                i += 2;
            } else {
                sym[j++] = sym[i++];
            }
        }
        ns = j;
    }
    for (size_t i = 0; i < ns; i++) {
        VocabEntry k = {sym[i], 0}, *hit = bsearch(&k, b->v, (size_t)b->nv, sizeof *b->v, cmp_vocab);
        if (count >= 0) count = (!hit || count >= cap) ? -1 : (ids[count] = hit->id, count + 1);
        free(sym[i]);
    }
    free(sym);
    return count;
}

void naive_bpe_free(NaiveBpe *b) {
    if (!b) return;
    for (int i = 0; i < b->nv; i++) free(b->v[i].s);
    for (int i = 0; i < b->nm; i++) free(b->m[i].pair);
    free(b->v);
    free(b->m);
    free(b);
}

long stream_decode_all(const Tokenizer *tok, const int *ids, int n, ByteBuf *all) {
    DecodeStream ds;
    decode_stream_init(&ds, tok);
    Err err = {{0}};
    const char *piece;
    size_t len;
    long rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (decode_stream_step(&ds, ids[i], &piece, &len, &err) || !utf8_valid(piece, len)) rc = -1;
        else bytebuf_append(all, piece, len);
    }
    if (rc == 0) {
        if (decode_stream_flush(&ds, &piece, &len, &err)) rc = -1;
        else {
            bytebuf_append(all, piece, len);
            rc = (long)len;
        }
    }
    decode_stream_free(&ds);
    return rc;
}

int tok_kimi_fixture(const char *dir, const char *chat_template_path) {
    char cwd[4000], target[4200], link[4300], path[4300], *cfg = NULL, *tpl = NULL;
    size_t len;
    Err err = { "" };
    if (!getcwd(cwd, sizeof cwd)) return -1;
    snprintf(target, sizeof target, "%s/" TIK_DIR "/cl100k_base/tiktoken.model", cwd);
    snprintf(link, sizeof link, "%s/tiktoken.model", dir);
    if (symlink(target, link) || read_file(TIK_DIR "/kimi/tokenizer_config.json", 1 << 20, &cfg, &len, &err) ||
        (chat_template_path && read_file(chat_template_path, 1 << 20, &tpl, &len, &err))) {
        free(cfg);
        return -1;
    }
    cJSON *j = cJSON_Parse(cfg);
    if (tpl) cJSON_AddStringToObject(j, "chat_template", tpl);
    char *text = cJSON_Print(j);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    int rc = text && tok_write(path, text, strlen(text)) == 0 ? 0 : -1;
    free(text), free(cfg), free(tpl);
    cJSON_Delete(j);
    return rc;
}
