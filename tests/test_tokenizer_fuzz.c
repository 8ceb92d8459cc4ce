/**
 * @file test_tokenizer_fuzz.c
 * @brief Randomized robustness (fixed seeds, so failures reproduce): random bytes never crash
 *        the encoder (invalid UTF-8 is refused, valid text round-trips); random valid text from
 *        a palette of hard cases (CJK, kana, combining marks, ZWJ emoji, odd whitespace, digit
 *        runs, special-token fragments) round-trips and matches an independent oracle (naive
 *        added-token scan + the pre-tokenizer + GPT-2's naive BPE loop); random id sequences
 *        decode to valid UTF-8 and stream-decode to the same text.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "tokenizer/bytelevel.h"
#include "tokenizer/pretok.h"
#include "tokenizer/tokenizer.h"
#include "util_tok.h"

typedef struct {
    Tokenizer *tok;
    cJSON *json;
    NaiveBpe *naive;
    PreTokenizer *pre;
} Fixture;

static int setup(void **state) {
    Fixture *f = calloc(1, sizeof *f);
    Err err = {{0}};
    if (tok_load_deepseek(&f->tok, &f->json) != 0) return -1;
    f->naive = naive_bpe_new(f->json);
    if (pretok_from_json(&f->pre, cJSON_GetObjectItem(f->json, "pre_tokenizer"), &err) != 0) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    Fixture *f = *state;
    tokenizer_free(f->tok);
    cJSON_Delete(f->json);
    naive_bpe_free(f->naive);
    pretok_free(f->pre);
    free(f);
    return 0;
}

static uint64_t rnd(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void roundtrip(const Tokenizer *t, const char *s, size_t n, int **ids_out, int *n_out) {
    Err err = {{0}};
    int *ids, k;
    assert_int_equal(tokenizer_encode(t, s, n, &ids, &k, &err), 0);
    char *back;
    size_t blen;
    assert_int_equal(tokenizer_decode(t, ids, k, &back, &blen, &err), 0);
    if (blen != n || memcmp(back, s, n)) fprintf(stderr, "round trip failed for %zu bytes\n", n);
    assert_int_equal(blen, n);
    assert_memory_equal(back, s, n);
    free(back);
    if (ids_out) {
        *ids_out = ids;
        *n_out = k;
    } else {
        free(ids);
    }
}

static void test_random_bytes(void **state) {
    Fixture *f = *state;
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    unsigned char buf[64];
    int valid = 0;
    for (int it = 0; it < 3000; it++) {
        size_t n = rnd(&seed) % 48;
        for (size_t i = 0; i < n; i++) {
            uint64_t r = rnd(&seed);
            /* mostly ASCII, sometimes lead/continuation bytes so some strings are valid */
            buf[i] = (unsigned char)((r & 3) ? (r >> 8) % 128 : (r >> 8) % 256);
        }
        Err err = {{0}};
        int *ids = NULL, k = 0;
        if (utf8_valid((const char *)buf, n)) {
            roundtrip(f->tok, (const char *)buf, n, NULL, NULL);
            valid++;
        } else {
            assert_int_equal(tokenizer_encode(f->tok, (const char *)buf, n, &ids, &k, &err), -1);
            assert_non_null(strstr(err.msg, "not valid UTF-8"));
            assert_null(ids);
        }
    }
    assert_true(valid > 100); /* both branches were exercised */
}

/* Leftmost-longest scan over one class of added tokens (normalized = cls), by brute force. */
static void oracle_added(const Fixture *f, const char *s, size_t n, int cls, IntVec *out);

static void oracle_plain(const Fixture *f, const char *s, size_t n, IntVec *out) {
    PretokWork w = {0};
    Err err = {{0}};
    assert_int_equal(pretok_split(f->pre, s, n, &w, &err), 0);
    for (size_t i = 0; i < w.cur.n; i++) {
        int ids[4096];
        int k = naive_bpe_piece(f->naive, (const unsigned char *)s + w.cur.v[i].off, w.cur.v[i].len, ids, 0, 4096);
        assert_true(k >= 0);
        intvec_append(out, ids, (size_t)k);
    }
    pretok_work_free(&w);
}

static void oracle_added(const Fixture *f, const char *s, size_t n, int cls, IntVec *out) {
    const cJSON *added = cJSON_GetObjectItem(f->json, "added_tokens");
    size_t gap = 0, i = 0;
    while (i < n) {
        size_t best = 0;
        int best_id = -1;
        const cJSON *it;
        cJSON_ArrayForEach(it, added) {
            if (cJSON_IsTrue(cJSON_GetObjectItem(it, "normalized")) != cls) continue;
            const char *c = cJSON_GetObjectItem(it, "content")->valuestring;
            size_t l = strlen(c);
            if (l > best && l <= n - i && !memcmp(s + i, c, l)) {
                best = l;
                best_id = cJSON_GetObjectItem(it, "id")->valueint;
            }
        }
        if (best_id < 0) {
            i++;
            continue;
        }
        if (cls == 0) oracle_added(f, s + gap, i - gap, 1, out);
        else oracle_plain(f, s + gap, i - gap, out);
        intvec_push(out, best_id);
        i += best;
        gap = i;
    }
    if (cls == 0) oracle_added(f, s + gap, n - gap, 1, out);
    else oracle_plain(f, s + gap, n - gap, out);
}

static const char *const ATOMS[] = {
    "a", "Z", "the", "word", "x", "'s", "'T", "-", ".", ",", "!", "?", "...", "(", ")", "{", "}", "\"", "#", "_", "~",
    "0", "1", "7", "42", "123", "9999", "3.14", " ", " ", "  ", "\t", "\n", "\r\n", "\r", "\n\n",
    "\xc2\xa0",                 /* NBSP */
    "\xe2\x80\x83",             /* em space */
    "\xe2\x80\x8b",             /* zero-width space */
    "\xe2\x80\x8d",             /* ZWJ */
    "\xcc\x81",                 /* combining acute */
    "e\xcc\x81", "\xc3\xa9", "\xc3\x85", "\xc3\x9f",
    "深", "度", "求索", "龥", "一", "ぁ", "ゟ", "カタ", "ヿ", "゠", "。", "，", "한국어", "文字",
    "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7", "\xe0\xa4\xa8\xe0\xa4\xae\xe0\xa4\xb8\xe0\xa5\x8d",
    "\xf0\x9f\x91\x8d", "\xf0\x9f\x8f\xbd", "\xf0\x9f\x91\xa8", "\xf0\x9f\x87\xa9\xf0\x9f\x87\xaa", "\xe2\x9d\xa4\xef\xb8\x8f",
    "\xf0\x9d\x94\x98", "\xe2\x85\xab", "\xd9\xa3", "\xe2\x91\xa0",
    "<", ">", "|", "｜", "▁", "<｜", "｜>", "User", "Assistant", "<|", "|>",
    "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", "<|EOT|>",
    "<｜place▁holder▁no▁7｜>", "<｜tool▁sep｜>", "<｜fim▁hole｜>",
};

/* A random code point: any scalar value, avoiding surrogates. */
static size_t random_char(uint64_t *seed, char *out) {
    uint64_t r = rnd(seed);
    uint32_t cp;
    switch (r % 4) {
    case 0: cp = (uint32_t)(r >> 8) % 0x80; break;
    case 1: cp = 0x80 + (uint32_t)(r >> 8) % 0x780; break;
    case 2: cp = 0x800 + (uint32_t)(r >> 8) % 0xf800; break;
    default: cp = 0x10000 + (uint32_t)(r >> 8) % 0x100000; break;
    }
    if (cp >= 0xd800 && cp <= 0xdfff) cp = 0x20;
    return utf8_encode(out, cp);
}

static void test_random_text_vs_oracle(void **state) {
    Fixture *f = *state;
    uint64_t seed = 0x2545f4914f6cdd1dull;
    size_t natoms = sizeof ATOMS / sizeof ATOMS[0];
    for (int it = 0; it < 2000; it++) {
        ByteBuf s = {0};
        int parts = (int)(rnd(&seed) % 24);
        for (int p = 0; p < parts; p++) {
            if (rnd(&seed) % 5 == 0) {
                char c[4];
                bytebuf_append(&s, c, random_char(&seed, c));
            } else {
                bytebuf_puts(&s, ATOMS[rnd(&seed) % natoms]);
            }
        }
        const char *text = s.data ? s.data : "";
        int *ids, n;
        roundtrip(f->tok, text, s.len, &ids, &n);
        IntVec want = {0};
        oracle_added(f, text, s.len, 0, &want);
        if (!tok_ids_equal("random text vs oracle", ids, n, want.v, (int)want.n)) {
            fprintf(stderr, "iteration %d, text (%zu bytes):", it, s.len);
            for (size_t i = 0; i < s.len; i++) fprintf(stderr, " %02x", (unsigned char)text[i]);
            fprintf(stderr, "\n");
            fail();
        }
        intvec_free(&want);
        free(ids);
        bytebuf_free(&s);
    }
}

static void test_random_ids(void **state) {
    Fixture *f = *state;
    uint64_t seed = 0xdeadbeefcafef00dull;
    int v = tokenizer_vocab_size(f->tok);
    for (int it = 0; it < 1000; it++) {
        int ids[20], n = 1 + (int)(rnd(&seed) % 20);
        for (int i = 0; i < n; i++) {
            uint64_t r = rnd(&seed);
            /* a third of them single-byte tokens (ids of the 256 byte characters), to split characters */
            ids[i] = (r % 3 == 0) ? (int)((r >> 8) % 256) : (int)((r >> 8) % (uint64_t)v);
        }
        Err err = {{0}};
        char *text;
        size_t len;
        assert_int_equal(tokenizer_decode(f->tok, ids, n, &text, &len, &err), 0);
        assert_true(utf8_valid(text, len));
        ByteBuf all = {0};
        assert_true(stream_decode_all(f->tok, ids, n, &all) >= 0);
        assert_int_equal(all.len, len);
        if (len) assert_memory_equal(all.data, text, len);
        bytebuf_free(&all);
        free(text);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_random_text_vs_oracle),
        cmocka_unit_test(test_random_ids),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
