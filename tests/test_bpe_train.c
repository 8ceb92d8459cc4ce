/**
 * @file test_bpe_train.c
 * @brief The BPE trainer (bpe_train.h): the DeepSeek-V3 pieces it copies are still DeepSeek's,
 *        a trained tokenizer reloads and round-trips, has the documented id layout, never learns
 *        a token across a digit group, compresses its corpus, is deterministic, breaks ties as
 *        documented, and equals a naive recount-everything trainer merge for merge.
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

#include "tokenizer/bpe_train.h"
#include "base/buf.h"
#include "tokenizer/bytelevel.h"
#include "tokenizer/chat.h"
#include "tokenizer/pretok.h"
#include "tokenizer/tokenizer.h"
#include "util_compare.h"
#include "util_tok.h"

/* A deterministic little corpus: English words, numbers, code, CJK, accents, whitespace. */
static void corpus(ByteBuf *b, size_t bytes) {
    static const char *const words[] = {
        "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "model", "expert", "token",
        "parameters", "billion", "active", "attention", "latent", "routing", "gate", "layer", "weights",
        "int", "for", "return", "while", "total", "深度求索", "模型", "東京", "日本", "です",
        "caf\xc3\xa9", "na\xc3\xafve", "r\xc3\xa9sum\xc3\xa9", "d\xc3\xa9j\xc3\xa0",
    };
    static const char *const seps[] = {" ", " ", " ", ", ", ". ", "\n", "; ", "   ", "(", ") ", " = ", "\t"};
    size_t nw = sizeof words / sizeof words[0], ns = sizeof seps / sizeof seps[0];
    uint64_t s = 12345;
    while (b->len < bytes) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        unsigned r = (unsigned)(s >> 33);
        if (r % 7 == 0) bytebuf_printf(b, "%u", r % 100000);
        else bytebuf_puts(b, words[r % nw]);
        bytebuf_puts(b, seps[(r >> 8) % ns]);
    }
}

static void train_to(const char *dir, const char *text, size_t len, int vocab, int min_freq, BpeTrainStats *st) {
    BpeTrainOptions o = bpe_train_defaults();
    o.vocab_size = vocab;
    o.min_frequency = min_freq;
    BpeTrainer *tr;
    Err err = {{0}};
    assert_int_equal(bpe_train_new(&tr, &o, &err), 0);
    assert_int_equal(bpe_train_feed(tr, text, len, &err), 0);
    assert_int_equal(bpe_train_run(tr, &err), 0);
    assert_int_equal(bpe_train_save(tr, dir, &err), 0);
    if (st) *st = bpe_train_stats(tr);
    bpe_train_free(tr);
}

/* The constants bpe_train.c writes must still be DeepSeek-V3's. */
static void test_copies_match_deepseek(void **state) {
    (void)state;
    cJSON *ds = tok_json_file(DS_TOKENIZER_DIR "/tokenizer.json");
    cJSON *cfg = tok_json_file(DS_TOKENIZER_DIR "/tokenizer_config.json");
    cJSON *pipe = cJSON_Parse(bpe_train_pipeline_json());
    assert_non_null(ds);
    assert_non_null(pipe);
    static const char *const stages[] = {"normalizer", "pre_tokenizer", "post_processor", "decoder"};
    for (int i = 0; i < 4; i++)
        assert_true(cJSON_Compare(cJSON_GetObjectItem(ds, stages[i]), cJSON_GetObjectItem(pipe, stages[i]), 1));
    assert_string_equal(cJSON_GetObjectItem(cfg, "chat_template")->valuestring, bpe_train_chat_template());
    cJSON_Delete(ds);
    cJSON_Delete(cfg);
    cJSON_Delete(pipe);
}

static void test_train_reload_roundtrip(void **state) {
    (void)state;
    char *dir = make_temp_dir("tok");
    ByteBuf text = {0};
    corpus(&text, 200000);
    BpeTrainStats st;
    train_to(dir, text.data, text.len, 600, 2, &st);
    assert_int_equal(st.vocab_size, 600);
    assert_true(st.merges >= 600 - 261); /* more when a merged string repeats an existing token */

    Tokenizer *t;
    Err err = {{0}};
    assert_int_equal(tokenizer_load(&t, dir, &err), 0);
    assert_int_equal(tokenizer_vocab_size(t), 600);
    assert_int_equal(tokenizer_bos_id(t), 0);
    assert_int_equal(tokenizer_eos_id(t), 1);
    assert_int_equal(tokenizer_token_id(t, "<｜▁pad▁｜>"), 2);
    assert_int_equal(tokenizer_token_id(t, "<｜User｜>"), 598);
    assert_int_equal(tokenizer_token_id(t, "<｜Assistant｜>"), 599);
    assert_int_equal(tokenizer_token_id(t, "<｜end▁of▁sentence｜>"), 1);

    /* round trip and compression on the corpus */
    int *ids, n;
    assert_int_equal(tokenizer_encode(t, text.data, text.len, &ids, &n, &err), 0);
    assert_true((size_t)n * 3 < text.len); /* more than 3 bytes per token on its own corpus */
    char *back;
    size_t blen;
    assert_int_equal(tokenizer_decode(t, ids, n, &back, &blen, &err), 0);
    assert_int_equal(blen, text.len);
    assert_memory_equal(back, text.data, blen);
    free(back);
    free(ids);

    /* unseen text still round-trips (every byte has a token) */
    static const char *const unseen[] = {"Zebra \xf0\x9f\xa6\x93 \xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 \x01\x7f",
                                         "<｜User｜>hi<｜Assistant｜>"};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tokenizer_encode(t, unseen[i], strlen(unseen[i]), &ids, &n, &err), 0);
        assert_int_equal(tokenizer_decode(t, ids, n, &back, &blen, &err), 0);
        assert_string_equal(back, unseen[i]);
        free(back);
        free(ids);
    }
    /* byte b is id 3 + b */
    assert_int_equal(tokenizer_encode(t, "\x01", 1, &ids, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 3 + 1);
    free(ids);

    /* no token mixes digits with anything else, or holds more than 3 digits */
    for (int id = 3; id < 598; id++) {
        assert_int_equal(tokenizer_decode(t, &id, 1, &back, &blen, &err), 0);
        size_t digits = 0;
        for (size_t i = 0; i < blen; i++) digits += back[i] >= '0' && back[i] <= '9';
        if (digits) {
            assert_int_equal(digits, blen);
            assert_true(blen <= 3);
        }
        free(back);
    }

    /* the chat template works with it */
    const ChatMessage m[] = {{"user", "the fox"}};
    assert_int_equal(chat_encode(t, m, 1, 1, &ids, &n, &err), 0);
    assert_int_equal(ids[0], 0);
    assert_int_equal(ids[1], 598);
    assert_int_equal(ids[n - 1], 599);
    free(ids);
    tokenizer_free(t);
    bytebuf_free(&text);
    remove_tree(dir);
    free(dir);
}

static char *slurp(const char *dir, const char *name, size_t *len) {
    char p[4200], *d;
    Err err = {{0}};
    snprintf(p, sizeof p, "%s/%s", dir, name);
    assert_int_equal(read_file(p, (size_t)1 << 28, &d, len, &err), 0);
    return d;
}

static void test_deterministic(void **state) {
    (void)state;
    char *a = make_temp_dir("tok"), *b = make_temp_dir("tok");
    ByteBuf text = {0};
    corpus(&text, 50000);
    train_to(a, text.data, text.len, 400, 2, NULL);
    train_to(b, text.data, text.len, 400, 2, NULL);
    size_t la, lb;
    char *fa = slurp(a, "tokenizer.json", &la), *fb = slurp(b, "tokenizer.json", &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(fa, fb, la);
    free(fa);
    free(fb);
    fa = slurp(a, "tokenizer_config.json", &la);
    cJSON *cfg = cJSON_Parse(fa);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(cfg, "bos_token"), "content")->valuestring,
                        "<｜begin▁of▁sentence｜>");
    assert_string_equal(cJSON_GetObjectItem(cfg, "chat_template")->valuestring, bpe_train_chat_template());
    cJSON_Delete(cfg);
    free(fa);
    bytebuf_free(&text);
    remove_tree(a);
    remove_tree(b);
    free(a);
    free(b);
}

/* "ab cd": pieces "ab" and " cd", every pair seen once. Ties go to the smaller left id:
 * Ġ (space, id 3+32) before a (3+97); then a·b (left 100) before Ġc·d (left 259). */
static void test_tie_breaking(void **state) {
    (void)state;
    char *dir = make_temp_dir("tok");
    BpeTrainStats st;
    train_to(dir, "ab cd", 5, 400, 1, &st);
    assert_int_equal(st.merges, 3);
    assert_int_equal(st.vocab_size, 3 + 256 + 3 + 2); /* stopped early: nothing left to merge */
    size_t len;
    char *f = slurp(dir, "tokenizer.json", &len);
    cJSON *j = cJSON_Parse(f);
    cJSON *merges = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "model"), "merges");
    static const char *const want[3][2] = {{"Ġ", "c"}, {"a", "b"}, {"Ġc", "d"}};
    for (int i = 0; i < 3; i++) {
        cJSON *p = cJSON_GetArrayItem(merges, i);
        assert_string_equal(cJSON_GetArrayItem(p, 0)->valuestring, want[i][0]);
        assert_string_equal(cJSON_GetArrayItem(p, 1)->valuestring, want[i][1]);
    }
    assert_int_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "model"), "vocab"), "Ġcd")->valueint, 261);
    cJSON_Delete(j);
    free(f);
    Tokenizer *t;
    Err err = {{0}};
    assert_int_equal(tokenizer_load(&t, dir, &err), 0);
    assert_int_equal(tokenizer_vocab_size(t), 264);
    int *ids, n;
    assert_int_equal(tokenizer_encode(t, "ab cd", 5, &ids, &n, &err), 0);
    const int w[] = {260, 261};
    assert_true(tok_ids_equal("ab cd", ids, n, w, 2));
    free(ids);
    tokenizer_free(t);
    remove_tree(dir);
    free(dir);
}

/* Overlapping runs ("aaaa", "abab") merge left to right, and the result still round-trips. */
static void test_repetitive_text(void **state) {
    (void)state;
    char *dir = make_temp_dir("tok");
    const char *text = "aaaa aaaa aaaaa abab abab ababa bbbbbbbb 1111111 ab ab ab bc bc abc abc xbcd xbcd";
    BpeTrainStats st;
    train_to(dir, text, strlen(text), 300, 2, &st);
    Tokenizer *t;
    Err err = {{0}};
    assert_int_equal(tokenizer_load(&t, dir, &err), 0);
    assert_int_equal(tokenizer_vocab_size(t), st.vocab_size);
    int *ids, n;
    char *back;
    size_t blen;
    assert_int_equal(tokenizer_encode(t, text, strlen(text), &ids, &n, &err), 0);
    assert_int_equal(tokenizer_decode(t, ids, n, &back, &blen, &err), 0);
    assert_string_equal(back, text);
    free(back);
    free(ids);
    tokenizer_free(t);
    remove_tree(dir);
    free(dir);
}

/* The incremental trainer against a naive one that recounts every pair after every merge
 * (same pieces, same tie rule, dense count table), merge for merge. */
enum { NAIVE_MERGES = 150, NAIVE_MAX_ID = 3 + 256 + NAIVE_MERGES };

typedef struct {
    int *sym;
    int len;
    int64_t count;
} NaiveWord;

static void test_against_naive(void **state) {
    (void)state;
    ByteBuf text = {0};
    corpus(&text, 30000);
    bytebuf_puts(&text, "aaaa aaaaa bbb abab ababab 1111 11 000000 "); /* runs and overlaps */
    char *dir = make_temp_dir("tok");
    BpeTrainStats st;
    train_to(dir, text.data, text.len, 261 + NAIVE_MERGES, 2, &st);
    assert_int_equal(st.merges, NAIVE_MERGES);

    /* pieces, counted by brute force */
    cJSON *pipe = cJSON_Parse(bpe_train_pipeline_json());
    PreTokenizer *p;
    Err err = {{0}};
    assert_int_equal(pretok_from_json(&p, cJSON_GetObjectItem(pipe, "pre_tokenizer"), &err), 0);
    PretokWork w = {0};
    assert_int_equal(pretok_split(p, text.data, text.len, &w, &err), 0);
    NaiveWord *words = calloc(w.cur.n, sizeof *words);
    int nw = 0;
    for (size_t i = 0; i < w.cur.n; i++) {
        const unsigned char *s = (const unsigned char *)text.data + w.cur.v[i].off;
        int l = (int)w.cur.v[i].len, k;
        for (k = 0; k < nw; k++) {
            if (words[k].len != l) continue;
            int same = 1;
            for (int q = 0; q < l && same; q++) same = words[k].sym[q] == 3 + s[q];
            if (same) break;
        }
        if (k == nw) {
            words[nw].sym = malloc((size_t)l * sizeof(int));
            for (int q = 0; q < l; q++) words[nw].sym[q] = 3 + s[q];
            words[nw++].len = l;
        }
        words[k].count++;
    }
    /* token strings: raw bytes of ids 3.. */
    char *tok[NAIVE_MAX_ID] = {0};
    size_t tlen[NAIVE_MAX_ID] = {0};
    for (int b = 0; b < 256; b++) {
        tok[3 + b] = malloc(1);
        tok[3 + b][0] = (char)b;
        tlen[3 + b] = 1;
    }
    int next_id = 3 + 256;
    int64_t(*cnt)[NAIVE_MAX_ID] = calloc(NAIVE_MAX_ID, sizeof *cnt);
    size_t flen;
    char *f = slurp(dir, "tokenizer.json", &flen);
    cJSON *j = cJSON_Parse(f);
    free(f);
    cJSON *merges = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "model"), "merges");
    for (int m = 0; m < NAIVE_MERGES; m++) {
        memset(cnt, 0, NAIVE_MAX_ID * sizeof *cnt);
        for (int k = 0; k < nw; k++)
            for (int q = 0; q + 1 < words[k].len; q++) cnt[words[k].sym[q]][words[k].sym[q + 1]] += words[k].count;
        int ba = -1, bb = -1;
        int64_t best = 0;
        for (int a = 0; a < NAIVE_MAX_ID; a++) /* a ascending, then b ascending: first max wins */
            for (int b = 0; b < NAIVE_MAX_ID; b++)
                if (cnt[a][b] > best) {
                    best = cnt[a][b];
                    ba = a;
                    bb = b;
                }
        assert_true(best >= 2);
        char la[64], lb[64];
        la[bytelevel_encode((const unsigned char *)tok[ba], tlen[ba], la)] = 0;
        lb[bytelevel_encode((const unsigned char *)tok[bb], tlen[bb], lb)] = 0;
        cJSON *pair = cJSON_GetArrayItem(merges, m);
        if (strcmp(la, cJSON_GetArrayItem(pair, 0)->valuestring) || strcmp(lb, cJSON_GetArrayItem(pair, 1)->valuestring))
            fprintf(stderr, "merge %d: naive [%s, %s] vs trained [%s, %s]\n", m, la, lb,
                    cJSON_GetArrayItem(pair, 0)->valuestring, cJSON_GetArrayItem(pair, 1)->valuestring);
        assert_string_equal(la, cJSON_GetArrayItem(pair, 0)->valuestring);
        assert_string_equal(lb, cJSON_GetArrayItem(pair, 1)->valuestring);
        /* the merged token: an existing string keeps its id */
        size_t ln = tlen[ba] + tlen[bb];
        char *cat = malloc(ln);
        memcpy(cat, tok[ba], tlen[ba]);
        memcpy(cat + tlen[ba], tok[bb], tlen[bb]);
        int x = -1;
        for (int id = 3; id < next_id; id++)
            if (tlen[id] == ln && !memcmp(tok[id], cat, ln)) x = id;
        if (x < 0) {
            x = next_id++;
            tok[x] = cat;
            tlen[x] = ln;
        } else {
            free(cat);
        }
        for (int k = 0; k < nw; k++) {
            int o = 0;
            for (int q = 0; q < words[k].len;) {
                if (q + 1 < words[k].len && words[k].sym[q] == ba && words[k].sym[q + 1] == bb) {
                    words[k].sym[o++] = x;
                    q += 2;
                } else {
                    words[k].sym[o++] = words[k].sym[q++];
                }
            }
            words[k].len = o;
        }
    }
    for (int id = 0; id < NAIVE_MAX_ID; id++) free(tok[id]);
    for (int k = 0; k < nw; k++) free(words[k].sym);
    free(words);
    free(cnt);
    cJSON_Delete(j);
    cJSON_Delete(pipe);
    pretok_work_free(&w);
    pretok_free(p);
    bytebuf_free(&text);
    remove_tree(dir);
    free(dir);
}

static void test_bad_options(void **state) {
    (void)state;
    BpeTrainOptions o = bpe_train_defaults();
    assert_int_equal(o.vocab_size, 4096);
    assert_int_equal(o.min_frequency, 2);
    BpeTrainer *tr;
    Err err = {{0}};
    o.vocab_size = 260;
    assert_int_equal(bpe_train_new(&tr, &o, &err), -1);
    assert_non_null(strstr(err.msg, "vocab size 260 out of range"));
    o = bpe_train_defaults();
    o.min_frequency = 0;
    assert_int_equal(bpe_train_new(&tr, &o, &err), -1);
    o = bpe_train_defaults();
    assert_int_equal(bpe_train_new(&tr, &o, &err), 0);
    assert_int_equal(bpe_train_feed(tr, "ok\xff", 3, &err), -1);
    assert_non_null(strstr(err.msg, "not valid UTF-8"));
    bpe_train_free(tr);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copies_match_deepseek),
        cmocka_unit_test(test_train_reload_roundtrip),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_tie_breaking),
        cmocka_unit_test(test_repetitive_text),
        cmocka_unit_test(test_against_naive),
        cmocka_unit_test(test_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
