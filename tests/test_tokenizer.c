/**
 * @file test_tokenizer.c
 * @brief The DeepSeek-V3 tokenizer against Hugging Face (golden/tokenizer/cases.json) and
 *        against expectations derived by hand from the regexes and merges (docs/model.md §9.2).
 *
 * Where no Hugging Face output exists, the expected pieces below were derived by reading the
 * three Split regexes of tokenizer.json (regex 1 `\p{N}{1,3}`, regex 2 the CJK/kana run, regex 3
 * the letters/punctuation/whitespace alternation, each applied to the pieces of the previous
 * one as the whole subject), and the expected ids by running GPT-2's original BPE loop (merge
 * the lowest-ranked pair everywhere, repeat) over those pieces with the file's merges, in a
 * separate Python script — an implementation independent of ref/tokenizer/tokenizer.c. The same naive
 * loop, in C (tests/util_tok.c), cross-checks random text in test_tokenizer_fuzz.c.
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
#include "tokenizer/pretok.h"
#include "tokenizer/tokenizer.h"
#include "util_tok.h"

typedef struct {
    Tokenizer *tok;
    cJSON *json; /* the parsed tokenizer.json, for the added-token list and the vocabulary */
} Fixture;

static int setup(void **state) {
    Fixture *f = calloc(1, sizeof *f);
    if (tok_load_deepseek(&f->tok, &f->json) != 0) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    Fixture *f = *state;
    tokenizer_free(f->tok);
    cJSON_Delete(f->json);
    free(f);
    return 0;
}

/* encode(text) must equal want, and decode must give the text back. */
static void check_text(const Tokenizer *t, const char *text, size_t len, const int *want, int nwant) {
    Err err = {{0}};
    int *ids, n;
    assert_int_equal(tokenizer_encode(t, text, len, &ids, &n, &err), 0);
    if (want) assert_true(tok_ids_equal(text, ids, n, want, nwant));
    char *back;
    size_t blen;
    assert_int_equal(tokenizer_decode(t, ids, n, &back, &blen, &err), 0);
    assert_int_equal(blen, len);
    assert_memory_equal(back, text, len);
    free(back);
    free(ids);
}

static void test_golden_cases(void **state) {
    Fixture *f = *state;
    cJSON *cases = tok_json_file("golden/tokenizer/cases.json");
    assert_non_null(cases);
    int count = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        const char *decoded = cJSON_GetObjectItem(c, "decoded")->valuestring;
        int n1, n2;
        int *ids = tok_json_ints(cJSON_GetObjectItem(c, "ids"), &n1);
        int *with = tok_json_ints(cJSON_GetObjectItem(c, "ids_with_special"), &n2);
        assert_non_null(ids);
        check_text(f->tok, text, strlen(text), ids, n1);
        /* DeepSeek-V3's post-processor (ByteLevel) adds nothing, so both lists agree */
        assert_true(tok_ids_equal("ids_with_special", ids, n1, with, n2));
        Err err = {{0}};
        char *out;
        size_t len;
        assert_int_equal(tokenizer_decode(f->tok, ids, n1, &out, &len, &err), 0);
        assert_string_equal(out, decoded);
        free(out);
        free(ids);
        free(with);
        count++;
    }
    assert_int_equal(count, 10);
    cJSON_Delete(cases);
}

typedef struct {
    const char *text;
    int ids[24];
    int n;
} Case;

/* Expected ids derived by hand as described at the top of this file. */
static const Case OWN[] = {
    /* regex 1 takes digits three at a time from the left */
    {"1", {19}, 1},
    {"12", {736}, 1},
    {"123", {6895}, 1},
    {"1234", {6895, 22}, 2},               /* 123 | 4 */
    {"12345", {6895, 1883}, 2},            /* 123 | 45 */
    {"123456", {6895, 18009}, 2},          /* 123 | 456 */
    {"1234567", {6895, 18009, 25}, 3},     /* 123 | 456 | 7 */
    {"x=1234567;", {90, 31, 6895, 18009, 25, 29}, 6},
    /* regex 2: one run of CJK + hiragana (東京は日本の首都です), then "。" (U+3002, outside the
     * ranges) alone, then a katakana + hiragana run */
    {"東京は日本の首都です。カタカナとひらがな。",
     {66771, 2841, 82619, 41175, 8262, 320, 15961, 11767, 15961, 27071, 2495, 40259, 4970, 2936, 2942, 320}, 16},
    /* combining marks ride with their letters: [\p{L}\p{M}]+ keeps "e\u0301le\u0300ve" whole */
    {"e\xcc\x81le\xcc\x80ve", {71, 17793, 302, 45345, 427}, 5},
    /* ZWJ (U+200D, Cf) is neither L, M, P, S nor \s: the emoji (So) match alone, the ZWJs are gaps */
    {"\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7",
     {25730, 104, 46088, 25730, 105, 46088, 25730, 103}, 8},
    /* CRLF: "\r\n" is its own piece (\s*[\r\n]+) */
    {"line1\r\nline2\r\n", {1836, 19, 204, 201, 1836, 20, 204, 201}, 8},
    /* trailing spaces: \s+(?!\S) takes all of them at the end of the piece */
    {"end   ", {523, 361}, 2},
    /* inner spaces: the last one joins the word ("  " + " b") */
    {"a   b", {67, 262, 291}, 3},
    /* look-alikes of special tokens are plain text */
    {"<\xef\xbd\x9cUser\xef\xbd\x9c", {30, 28217, 6756, 28217}, 4}, /* "<｜User｜" without ">" */
    {"<|User|>", {30, 94, 6756, 94, 32}, 5},                           /* ASCII bars */
    /* ...but "<|EOT|>" is a real added token (id 128805) */
    {"<|EOT|>", {128805}, 1},
};

static void test_own_cases(void **state) {
    Fixture *f = *state;
    for (size_t i = 0; i < sizeof OWN / sizeof OWN[0]; i++)
        check_text(f->tok, OWN[i].text, strlen(OWN[i].text), OWN[i].ids, OWN[i].n);
}

/* The pieces behind the cases above, straight from the pre-tokenizer. */
static void check_pieces(const PreTokenizer *p, const char *text, const char *const *want, int nwant) {
    PretokWork w = {0};
    Err err = {{0}};
    assert_int_equal(pretok_split(p, text, strlen(text), &w, &err), 0);
    int ok = (int)w.cur.n == nwant;
    for (int i = 0; ok && i < nwant; i++)
        ok = w.cur.v[i].len == strlen(want[i]) && !memcmp(text + w.cur.v[i].off, want[i], w.cur.v[i].len);
    if (!ok) {
        fprintf(stderr, "pieces of '%s':", text);
        for (size_t i = 0; i < w.cur.n; i++) fprintf(stderr, " [%.*s]", (int)w.cur.v[i].len, text + w.cur.v[i].off);
        fprintf(stderr, "\n");
    }
    assert_true(ok);
    pretok_work_free(&w);
}

static void test_pieces(void **state) {
    Fixture *f = *state;
    PreTokenizer *p;
    Err err = {{0}};
    assert_int_equal(pretok_from_json(&p, cJSON_GetObjectItem(f->json, "pre_tokenizer"), &err), 0);
    assert_true(pretok_is_byte_level(p));
    const char *const a[] = {"123", "456", "7"};
    check_pieces(p, "1234567", a, 3);
    const char *const b[] = {"x", "=", "123", "456", "7", ";"};
    check_pieces(p, "x=1234567;", b, 6);
    const char *const c[] = {"東京は日本の首都です", "。", "カタカナとひらがな", "。"};
    check_pieces(p, "東京は日本の首都です。カタカナとひらがな。", c, 4);
    const char *const d[] = {"line", "1", "\r\n", "line", "2", "\r\n"};
    check_pieces(p, "line1\r\nline2\r\n", d, 6);
    const char *const e[] = {"a", "  ", " b"};
    check_pieces(p, "a   b", e, 3);
    const char *const g[] = {"end", "   "};
    check_pieces(p, "end   ", g, 2);
    const char *const h[] = {"<|", "User", "|>"};
    check_pieces(p, "<|User|>", h, 3);
    /* regex 3's first alternative: one ASCII punctuation + ASCII letters */
    const char *const k[] = {"Hello", ",", " world", "!", " It", "'s"};
    check_pieces(p, "Hello, world! It's", k, 6);
    /* a space run before digits is cut by regex 1 first, so \s+(?!\S) sees the piece's end */
    const char *const m[] = {"x", "   ", "123"};
    check_pieces(p, "x   123", m, 3);
    pretok_free(p);
}

/* The five split behaviours and invert, on Hugging Face's own examples
 * (tokenizers/src/pre_tokenizers/split.rs, tests `basic`, `regex_string`, `invert`). */
static void test_split_behaviours(void **state) {
    (void)state;
    static const struct {
        const char *behavior;
        const char *want[8];
        int n;
    } T[] = {
        {"Removed", {"How", "are", "you", "doing", "?"}, 5},
        {"Isolated", {"How", " ", "are", " ", "you", " ", "doing", "?"}, 8},
        {"MergedWithPrevious", {"How ", "are ", "you ", "doing", "?"}, 5},
        {"MergedWithNext", {"How", " are", " you", " doing", "?"}, 5},
        {"Contiguous", {"How", " ", "are", " ", "you", " ", "doing?"}, 7},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        char js[256];
        snprintf(js, sizeof js,
                 "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\w+|[^\\\\w\\\\s]+\"},\"behavior\":\"%s\","
                 "\"invert\":true}",
                 T[i].behavior);
        cJSON *j = cJSON_Parse(js);
        PreTokenizer *p;
        Err err = {{0}};
        assert_int_equal(pretok_from_json(&p, j, &err), 0);
        check_pieces(p, "How are you doing?", T[i].want, T[i].n);
        pretok_free(p);
        cJSON_Delete(j);
    }
    /* a String pattern is matched literally; invert=true on "Hello" removes the gaps */
    static const char *const specs[] = {
        "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s+\"},\"behavior\":\"Removed\",\"invert\":false}",
        "{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},\"behavior\":\"Removed\",\"invert\":false}",
    };
    const char *const hey[] = {"Hey,", "man!"};
    const char *const hello[] = {"Hello", "Hello", "Hello"};
    for (int i = 0; i < 2; i++) {
        cJSON *j = cJSON_Parse(specs[i]);
        PreTokenizer *p;
        Err err = {{0}};
        assert_int_equal(pretok_from_json(&p, j, &err), 0);
        check_pieces(p, "Hey, man!", hey, 2);
        check_pieces(p, "Hello Hello Hello", hello, 3);
        pretok_free(p);
        cJSON_Delete(j);
    }
    cJSON *j = cJSON_Parse("{\"type\":\"Split\",\"pattern\":{\"String\":\"Hello\"},\"behavior\":\"Removed\",\"invert\":true}");
    PreTokenizer *p;
    Err err = {{0}};
    assert_int_equal(pretok_from_json(&p, j, &err), 0);
    check_pieces(p, "Hello Hello Hello", hello, 3);
    pretok_free(p);
    cJSON_Delete(j);
}

/* Every one of the 818 added tokens: alone it is its id; inside text it splits the text
 * exactly there (encode(x + tok + y) == encode(x) ++ [id] ++ encode(y)); it decodes to itself. */
static void test_every_added_token(void **state) {
    Fixture *f = *state;
    const cJSON *added = cJSON_GetObjectItem(f->json, "added_tokens"), *it;
    int count = 0;
    cJSON_ArrayForEach(it, added) {
        const char *content = cJSON_GetObjectItem(it, "content")->valuestring;
        int id = cJSON_GetObjectItem(it, "id")->valueint;
        assert_int_equal(tokenizer_token_id(f->tok, content), id);
        assert_string_equal(tokenizer_id_to_token(f->tok, id), content);
        assert_int_equal(tokenizer_is_special(f->tok, id), cJSON_IsTrue(cJSON_GetObjectItem(it, "special")));
        check_text(f->tok, content, strlen(content), &id, 1);

        static const char *const left = "Hi, 123", *const right = " there\n";
        ByteBuf text = {0};
        bytebuf_puts(&text, left);
        bytebuf_puts(&text, content);
        bytebuf_puts(&text, right);
        Err err = {{0}};
        int *a, na, *b, nb;
        assert_int_equal(tokenizer_encode(f->tok, left, strlen(left), &a, &na, &err), 0);
        assert_int_equal(tokenizer_encode(f->tok, right, strlen(right), &b, &nb, &err), 0);
        IntVec want = {0};
        intvec_append(&want, a, (size_t)na);
        intvec_push(&want, id);
        intvec_append(&want, b, (size_t)nb);
        check_text(f->tok, text.data, text.len, want.v, (int)want.n);
        intvec_free(&want);
        free(a);
        free(b);
        bytebuf_free(&text);
        count++;
    }
    assert_int_equal(count, 818);
    /* two adjacent added tokens, and one touching a fake one */
    const int two[] = {128803, 128804};
    check_text(f->tok, "<｜User｜><｜Assistant｜>", strlen("<｜User｜><｜Assistant｜>"), two, 2);
    const int fake[] = {30, 28217, 128803};
    check_text(f->tok, "<｜<｜User｜>", strlen("<｜<｜User｜>"), fake, 3);
}

static void test_roundtrips(void **state) {
    Fixture *f = *state;
    static const char *const texts[] = {
        "",
        " ",
        "\n",
        "\r\n\r\n",
        "   \t\t  \n  ",
        "trailing whitespace runs   \t \n\n   ",
        "def f(x):\n    return x ** 2  # square\n",
        "Größe café naïve Ångström ﬁ ß",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🇩🇪🇫🇷 👍🏽 👨‍👩‍👧‍👦 ❤️",
        "שלום עולם مرحبا بالعالم नमस्ते दुनिया",
        "\x01\x02\x7f control bytes",
        "한국어 文字 かな カナ ｶﾅ",
        "0.5 -3 1e10 0x1F 1,000,000 ١٢٣ ⅫⅦ ①②",
        "<｜begin▁of▁sentence｜><｜end▁of▁sentence｜><｜▁pad▁｜>",
        "<｜place▁holder▁no▁1｜><｜place▁holder▁no▁10｜><｜place▁holder▁no▁100｜>",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        check_text(f->tok, texts[i], strlen(texts[i]), NULL, 0);
    /* empty input: no ids */
    Err err = {{0}};
    int *ids, n;
    assert_int_equal(tokenizer_encode(f->tok, "", 0, &ids, &n, &err), 0);
    assert_int_equal(n, 0);
    free(ids);
}

/* Long inputs exercise the heap merge on one huge piece and the pre-tokenizer on many. */
static void test_long_inputs(void **state) {
    Fixture *f = *state;
    size_t n = 200000;
    char *s = malloc(n + 1);
    memset(s, 'a', n);
    s[n] = 0;
    check_text(f->tok, s, n, NULL, 0); /* one 200 kB piece */
    memset(s, ' ', n);
    check_text(f->tok, s, n, NULL, 0);
    for (size_t i = 0; i < n; i++) s[i] = "ab 1,\n"[i % 6];
    check_text(f->tok, s, n, NULL, 0);
    free(s);
}

static void test_invalid_utf8(void **state) {
    Fixture *f = *state;
    static const char *const bad[] = {"\xff", "abc\xc3", "\xed\xa0\x80", "ok \xc0\xaf", "\xf4\x90\x80\x80", "\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        Err err = {{0}};
        int *ids = NULL, n = 0;
        assert_int_equal(tokenizer_encode(f->tok, bad[i], strlen(bad[i]), &ids, &n, &err), -1);
        assert_non_null(strstr(err.msg, "not valid UTF-8"));
        assert_null(ids);
    }
    Err err = {{0}};
    int *ids, n;
    assert_int_equal(tokenizer_encode(f->tok, "abc\xc3", 4, &ids, &n, &err), -1);
    assert_non_null(strstr(err.msg, "offset 3"));
}

static void test_decode_errors(void **state) {
    Fixture *f = *state;
    int v = tokenizer_vocab_size(f->tok);
    const int bad[] = {-1, v, v + 1000, 2147483647};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        Err err = {{0}};
        char *text = NULL;
        size_t len;
        const int ids[] = {19923, bad[i]};
        assert_int_equal(tokenizer_decode(f->tok, ids, 2, &text, &len, &err), -1);
        assert_non_null(strstr(err.msg, "out of range"));
        assert_null(text);
    }
    Err err = {{0}};
    char *text;
    size_t len;
    assert_int_equal(tokenizer_decode(f->tok, NULL, 0, &text, &len, &err), 0);
    assert_int_equal(len, 0);
    assert_string_equal(text, "");
    free(text);
}

static int vocab_id(const Fixture *f, const char *s) {
    return cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(f->json, "model"), "vocab"), s)->valueint;
}

/* Bytes that are not UTF-8 on their own decode to U+FFFD, as Hugging Face's
 * String::from_utf8_lossy does; the byte tokens of one character decode to that character. */
static void test_decode_bytes(void **state) {
    Fixture *f = *state;
    /* "中" = E4 B8 AD; the byte-level characters of those bytes are "ä", "¸", "Ń" (0xAD → U+0143) */
    const int zh[] = {vocab_id(f, "ä"), vocab_id(f, "¸"), vocab_id(f, "Ń")};
    Err err = {{0}};
    char *text;
    size_t len;
    assert_int_equal(tokenizer_decode(f->tok, zh, 3, &text, &len, &err), 0);
    assert_string_equal(text, "中");
    free(text);
    assert_int_equal(tokenizer_decode(f->tok, zh, 2, &text, &len, &err), 0);
    assert_string_equal(text, "\xef\xbf\xbd"); /* E4 B8 then end: one replacement */
    free(text);
    const int mixed[] = {zh[1], vocab_id(f, "A"), zh[0]};
    assert_int_equal(tokenizer_decode(f->tok, mixed, 3, &text, &len, &err), 0);
    assert_string_equal(text, "\xef\xbf\xbd" "A" "\xef\xbf\xbd");
    free(text);
}

static void lossy(const char *in, size_t n, const char *want) {
    ByteBuf out = {0};
    size_t used;
    assert_int_equal(utf8_lossy_append(&out, (const unsigned char *)in, n, 1, &used), 0);
    assert_int_equal(used, n);
    assert_int_equal(out.len, strlen(want));
    assert_memory_equal(out.data, want, out.len);
    bytebuf_free(&out);
}

/* Expected outputs follow Rust's from_utf8_lossy (one U+FFFD per maximal invalid subpart). */
static void test_utf8_lossy(void **state) {
    (void)state;
#define R "\xef\xbf\xbd"
    lossy("abc", 3, "abc");
    lossy("\xf0\x90\x80", 3, R);                 /* truncated 4-byte sequence: one */
    lossy("\xe0\x80\x80", 3, R R R);             /* overlong: E0 needs A0..BF next */
    lossy("\xed\xa0\x80", 3, R R R);             /* surrogate */
    lossy("\xf4\x90\x80\x80", 4, R R R R);       /* above U+10FFFF */
    lossy("\xc3(", 2, R "(");
    lossy("\xe2\x82X", 3, R "X");                /* valid prefix cut by X: one */
    lossy("\xc0\xaf", 2, R R);
    lossy("\xf5\xff", 2, R R);
    lossy("a\xe4\xb8\xadz", 5, "a\xe4\xb8\xadz");
#undef R
    /* not final: a valid incomplete tail is left for later */
    ByteBuf out = {0};
    size_t used;
    assert_int_equal(utf8_lossy_append(&out, (const unsigned char *)"ab\xe4\xb8", 4, 0, &used), 0);
    assert_int_equal(used, 2);
    assert_int_equal(out.len, 2);
    bytebuf_free(&out);
}

/* Streaming decode returns only whole characters and adds up to the one-shot decode. */
static void test_decode_stream(void **state) {
    Fixture *f = *state;
    static const char *const texts[] = {
        "深度求索发布了DeepSeek-V3模型，总参数量为6710亿。",
        "👨‍👩‍👧‍👦 emoji 🇩🇪 and 한국어",
        "<｜User｜>Hello<｜Assistant｜>Hi!<｜end▁of▁sentence｜>",
    };
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) {
        Err err = {{0}};
        int *ids, n;
        assert_int_equal(tokenizer_encode(f->tok, texts[k], strlen(texts[k]), &ids, &n, &err), 0);
        ByteBuf all = {0};
        assert_int_equal(stream_decode_all(f->tok, ids, n, &all), 0); /* nothing left to flush */
        assert_int_equal(all.len, strlen(texts[k]));
        assert_memory_equal(all.data, texts[k], all.len);
        bytebuf_free(&all);
        free(ids);
    }
    /* byte tokens: nothing until the character is complete; a dangling start flushes as U+FFFD */
    const int zh[] = {vocab_id(f, "ä"), vocab_id(f, "¸"), vocab_id(f, "Ń"), vocab_id(f, "ä")};
    DecodeStream s;
    decode_stream_init(&s, f->tok);
    Err err = {{0}};
    const char *piece;
    size_t len;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(decode_stream_step(&s, zh[i], &piece, &len, &err), 0);
        assert_int_equal(len, 0);
    }
    assert_int_equal(decode_stream_step(&s, zh[2], &piece, &len, &err), 0);
    assert_string_equal(piece, "中");
    assert_int_equal(decode_stream_step(&s, zh[3], &piece, &len, &err), 0);
    assert_int_equal(len, 0);
    assert_int_equal(decode_stream_step(&s, -5, &piece, &len, &err), -1); /* bad id: state kept */
    assert_int_equal(decode_stream_step(&s, vocab_id(f, "A"), &piece, &len, &err), 0);
    assert_string_equal(piece, "\xef\xbf\xbd" "A");
    assert_int_equal(decode_stream_step(&s, zh[0], &piece, &len, &err), 0);
    assert_int_equal(decode_stream_flush(&s, &piece, &len, &err), 0);
    assert_string_equal(piece, "\xef\xbf\xbd");
    decode_stream_free(&s);
}

static void test_accessors(void **state) {
    Fixture *f = *state;
    assert_int_equal(tokenizer_vocab_size(f->tok), 128815);
    assert_int_equal(tokenizer_bos_id(f->tok), 0);
    assert_int_equal(tokenizer_eos_id(f->tok), 1);
    assert_int_equal(tokenizer_token_id(f->tok, "<｜User｜>"), 128803);
    assert_int_equal(tokenizer_token_id(f->tok, "<｜Assistant｜>"), 128804);
    assert_int_equal(tokenizer_token_id(f->tok, "Hello"), -1); /* a vocabulary entry, not an added token */
    assert_string_equal(tokenizer_id_to_token(f->tok, 0), "<｜begin▁of▁sentence｜>");
    assert_string_equal(tokenizer_id_to_token(f->tok, 19923), "Hello");
    assert_string_equal(tokenizer_id_to_token(f->tok, 223), "Ġ");
    assert_null(tokenizer_id_to_token(f->tok, -1));
    assert_null(tokenizer_id_to_token(f->tok, 128815));
    assert_true(tokenizer_is_special(f->tok, 0));
    assert_false(tokenizer_is_special(f->tok, 128803));
    assert_false(tokenizer_is_special(f->tok, 19923));
    assert_non_null(tokenizer_chat_template(f->tok));
}

/* A path to the file itself works too, and still finds tokenizer_config.json next to it. */
static void test_load_file_path(void **state) {
    (void)state;
    Tokenizer *t;
    Err err = {{0}};
    assert_int_equal(tokenizer_load(&t, DS_TOKENIZER_DIR "/tokenizer.json", &err), 0);
    assert_int_equal(tokenizer_bos_id(t), 0);
    assert_int_equal(tokenizer_vocab_size(t), 128815);
    tokenizer_free(t);
    assert_int_equal(tokenizer_load(&t, "golden/tokenizer/no-such-dir", &err), -1);
    assert_non_null(strstr(err.msg, "no-such-dir"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_cases),
        cmocka_unit_test(test_own_cases),
        cmocka_unit_test(test_pieces),
        cmocka_unit_test(test_split_behaviours),
        cmocka_unit_test(test_every_added_token),
        cmocka_unit_test(test_roundtrips),
        cmocka_unit_test(test_long_inputs),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_decode_errors),
        cmocka_unit_test(test_decode_bytes),
        cmocka_unit_test(test_utf8_lossy),
        cmocka_unit_test(test_decode_stream),
        cmocka_unit_test(test_accessors),
        cmocka_unit_test(test_load_file_path),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
