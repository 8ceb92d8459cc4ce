/**
 * @file test_tiktoken.c
 * @brief tiktoken BPE tokenizers (ref/tokenizer/tokenizer_tiktoken.c; docs/model.md §13.5) against npm's
 *        js-tiktoken and tiktoken (golden/tokenizer/tiktoken/cases.json, written once by
 *        tools/oracles/tiktoken_fixtures.mjs): cl100k_base and o200k_base in the tiktoken.model form,
 *        and Kimi K2's tokenizer class (its pattern with `&&` intersections, its special tokens and
 *        reserved slots) over cl100k_base's ranks. Also: decoding partial UTF-8 (U+FFFD), invalid
 *        UTF-8 input, Kimi's 25 000-character run split, and every malformed tiktoken.model refused
 *        with one line naming the file and line.
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "tokenizer/tokenizer.h"
#include "util_compare.h"
#include "util_tok.h"

#define TIK TIK_DIR

/** A directory with cl100k_base's ranks (a symlink) and the Kimi-style tokenizer_config.json. */
static char *kimi_dir(void) {
    char *dir = make_temp_dir("kimi-tok");
    assert_int_equal(tok_kimi_fixture(dir, NULL), 0);
    return dir;
}

static Tokenizer *load(const char *dir) {
    Tokenizer *t = NULL;
    Err err = { "" };
    if (tokenizer_load(&t, dir, &err)) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(t);
    assert_true(tokenizer_is_tiktoken(t));
    return t;
}

/** Every encode case of one encoding; returns the number checked. */
static int check_encodings(const Tokenizer *t, const cJSON *cases, const char *name) {
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(cases, "encode")) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        int nw, ng;
        int *want = tok_json_ints(cJSON_GetObjectItem(c, name), &nw), *got = NULL;
        Err err = { "" };
        assert_int_equal(tokenizer_encode(t, text, strlen(text), &got, &ng, &err), 0);
        char what[200];
        snprintf(what, sizeof what, "%s: %.60s", name, text);
        assert_true(tok_ids_equal(what, got, ng, want, nw));
        /* and back: decode restores the text */
        char *back;
        size_t blen;
        assert_int_equal(tokenizer_decode(t, got, ng, &back, &blen, &err), 0);
        assert_string_equal(back, text);
        free(back), free(got), free(want);
        n++;
    }
    return n;
}

static void check_decodes(const Tokenizer *t, const cJSON *cases, const char *name) {
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(cases, "decode")) {
        if (strcmp(cJSON_GetObjectItem(c, "encoding")->valuestring, name)) continue;
        int n;
        int *ids = tok_json_ints(cJSON_GetObjectItem(c, "ids"), &n);
        char *out;
        size_t len;
        Err err = { "" };
        assert_int_equal(tokenizer_decode(t, ids, n, &out, &len, &err), 0);
        assert_string_equal(out, cJSON_GetObjectItem(c, "decoded")->valuestring);
        free(out), free(ids);
    }
}

static void cl100k_and_o200k(void **state) {
    (void)state;
    cJSON *cases = tok_json_file(TIK "/cases.json");
    assert_non_null(cases);
    const char *names[] = { "cl100k_base", "o200k_base" };
    for (int i = 0; i < 2; i++) {
        char dir[256];
        snprintf(dir, sizeof dir, TIK "/%s", names[i]);
        Tokenizer *t = load(dir);
        int n = check_encodings(t, cases, names[i]);
        check_decodes(t, cases, names[i]);
        printf("    %s: %d texts as js-tiktoken / tiktoken encode them\n", names[i], n);
        assert_true(n >= 25);
        assert_int_equal(tokenizer_eos_id(t), i ? 199999 : 100257); /* <|endoftext|> */
        /* invalid UTF-8 input is an error naming the byte, not a guess */
        int *ids;
        int nid;
        Err err = { "" };
        assert_int_equal(tokenizer_encode(t, "ab\xff", 3, &ids, &nid, &err), -1);
        assert_non_null(strstr(err.msg, "not valid UTF-8"));
        tokenizer_free(t);
    }
    /* the .model file itself may be given */
    Tokenizer *t = load(TIK "/cl100k_base/tiktoken.model");
    assert_int_equal(tokenizer_vocab_size(t), 100277);
    tokenizer_free(t);
    cJSON_Delete(cases);
}

static void kimi_class(void **state) {
    (void)state;
    cJSON *cases = tok_json_file(TIK "/cases.json");
    char *dir = kimi_dir();
    Tokenizer *t = load(dir);
    int n = check_encodings(t, cases, "kimi");
    printf("    Kimi K2's pattern and special tokens: %d texts as tiktoken (Rust regex) encodes them\n", n);
    /* [BOS] / [EOS] from the config; the reserved slots are named like TikTokenTokenizer names them */
    assert_int_equal(tokenizer_bos_id(t), 100256);
    assert_int_equal(tokenizer_eos_id(t), 100257);
    assert_int_equal(tokenizer_token_id(t, "<|im_middle|>"), 100256 + 17);
    assert_int_equal(tokenizer_token_id(t, "<|reserved_token_100261|>"), 100261);
    assert_int_equal(tokenizer_vocab_size(t), 100256 + 256);
    assert_true(tokenizer_is_special(t, 100256 + 2));
    /* Kimi's encode cuts a run of > 25 000 non-whitespace characters: 25 001 'a' are two pieces. */
    size_t N = 25001;
    char *run = malloc(N);
    memset(run, 'a', N);
    int *ids, nid, *ids2, nid2;
    Err err = { "" };
    assert_int_equal(tokenizer_encode(t, run, N, &ids, &nid, &err), 0);
    assert_int_equal(tokenizer_encode(t, run, 25000, &ids2, &nid2, &err), 0);
    int *tail, ntail;
    assert_int_equal(tokenizer_encode(t, "a", 1, &tail, &ntail, &err), 0);
    assert_int_equal(nid, nid2 + ntail);
    assert_memory_equal(ids, ids2, (size_t)nid2 * sizeof *ids);
    free(run), free(ids), free(ids2), free(tail);
    tokenizer_free(t);
    remove_tree(dir);
    free(dir);
    cJSON_Delete(cases);
}

/** One malformed directory: tokenizer_load fails with one line containing @p want. */
static void expect_bad(const char *model, const char *cfg, const char *want) {
    char *dir = make_temp_dir("badtik");
    assert_int_equal(tok_write_in(dir, "tiktoken.model", model), 0);
    if (cfg) assert_int_equal(tok_write_in(dir, "tokenizer_config.json", cfg), 0);
    Tokenizer *t = NULL;
    Err err = { "" };
    assert_int_equal(tokenizer_load(&t, dir, &err), -1);
    assert_null(t);
    if (!strstr(err.msg, want)) printf("    got \"%s\", want \"%s\"\n", err.msg, want);
    assert_non_null(strstr(err.msg, want));
    assert_null(strchr(err.msg, '\n'));
    remove_tree(dir);
    free(dir);
}

/** A valid 256-byte ranks file plus @p extra lines. */
static char *byte_ranks(const char *extra) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t cap = 256 * 16 + strlen(extra) + 1, n = 0;
    char *s = malloc(cap);
    for (int b = 0; b < 256; b++)
        n += (size_t)snprintf(s + n, cap - n, "%c%c== %d\n", b64[b >> 2], b64[(b & 3) << 4], b);
    snprintf(s + n, cap - n, "%s", extra);
    return s;
}

static void malformed(void **state) {
    (void)state;
    const char *pat = "{\"pat_str\": \"\\\\s+|\\\\S+\"}";
    char *ok = byte_ranks("aGk= 256\n");
    /* a valid minimal one first: "hi" is one token */
    char *dir = make_temp_dir("tik");
    assert_int_equal(tok_write_in(dir, "tiktoken.model", ok), 0);
    assert_int_equal(tok_write_in(dir, "tokenizer_config.json", pat), 0);
    Tokenizer *t = load(dir);
    int *ids, n;
    Err err = { "" };
    assert_int_equal(tokenizer_encode(t, "hi h", 4, &ids, &n, &err), 0);
    int want[] = { 256, 32, 104 };
    assert_true(tok_ids_equal("hi h", ids, n, want, 3));
    free(ids);
    tokenizer_free(t);
    remove_tree(dir);
    free(dir);
    char *s;
    expect_bad((s = byte_ranks("a*k= 256\n")), pat, "not valid base64"), free(s);
    expect_bad((s = byte_ranks("aGk=\n")), pat, "expected \"<base64 token> <rank>\""), free(s);
    expect_bad((s = byte_ranks("aGk= -3\n")), pat, "rank must be an integer"), free(s);
    expect_bad((s = byte_ranks("aGk= 99999999999\n")), pat, "rank must be an integer"), free(s);
    expect_bad((s = byte_ranks("aGk= 256\naGk= 257\n")), pat, "listed twice"), free(s);
    expect_bad((s = byte_ranks("aGk= 7\n")), pat, "rank 7 is given to two tokens"), free(s);
    expect_bad("QQ== 0\n", pat, "byte 0x00 has no token");
    expect_bad(ok, NULL, "no pre-tokenizer pattern");
    expect_bad(ok, "{\"pat_str\": \"(\"}", "pat_str");
    expect_bad(ok, "{\"pat_str\": 3}", "pat_str must be a string");
    expect_bad(ok, "{\"pat_str\": \"\\\\s+\", \"added_tokens_decoder\": {\"12\": {\"content\": \"<x>\"}}}", "already a ranked token");
    expect_bad(ok, "{\"pat_str\": \"\\\\s+\", \"added_tokens_decoder\": {\"x\": {\"content\": \"<x>\"}}}", "the key must be an id");
    expect_bad(ok, "{\"pat_str\": \"\\\\s+\", \"added_tokens_decoder\": {\"300\": {}}}", "expected {\"content\"");
    expect_bad(ok, "{\"pat_str\": \"\\\\s+\", \"eos_token\": \"<nope>\"}", "is not a token");
    expect_bad(ok, "[1, 2", "invalid JSON");
    free(ok);
}

/** Random corruptions of a small valid ranks file: load fails cleanly or succeeds; never crashes. */
static void fuzz_ranks(void **state) {
    (void)state;
    char *ok = byte_ranks("aGk= 256\naGkg 257\nIGhp 258\n");
    size_t n = strlen(ok);
    char *dir = make_temp_dir("tikfuzz"), *m = malloc(n + 1);
    assert_int_equal(tok_write_in(dir, "tokenizer_config.json", "{\"pat_str\": \" ?\\\\S+|\\\\s+\"}"), 0);
    uint64_t r = 12345;
    int loaded = 0;
    for (int it = 0; it < 300; it++) {
        memcpy(m, ok, n + 1);
        for (int k = 0; k < 1 + it % 4; k++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \n\r-9\x80";
            m[(r >> 33) % n] = it % 3 ? alphabet[(r >> 20) % (sizeof alphabet - 1)] : (char)(r >> 20);
        }
        m[n] = 0;
        assert_int_equal(tok_write_in(dir, "tiktoken.model", m), 0);
        Tokenizer *t = NULL;
        Err err = { "" };
        if (tokenizer_load(&t, dir, &err) == 0) {
            int *ids, ni;
            if (tokenizer_encode(t, "hi hi there", 11, &ids, &ni, &err) == 0) free(ids);
            tokenizer_free(t);
            loaded++;
        } else {
            assert_true(err.msg[0] != 0);
        }
    }
    printf("    300 corrupted ranks files: %d loaded, %d refused with a message\n", loaded, 300 - loaded);
    free(m), free(ok);
    remove_tree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cl100k_and_o200k),
        cmocka_unit_test(kimi_class),
        cmocka_unit_test(malformed),
        cmocka_unit_test(fuzz_ranks),
    };
    return cmocka_run_group_tests_name("tiktoken", tests, NULL, NULL);
}
