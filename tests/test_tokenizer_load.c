/**
 * @file test_tokenizer_load.c
 * @brief tokenizer.json validation (docs/formats.md §6): every malformed file is refused with one
 *        line naming the problem, never a crash; valid variants (tuple merges, tokenizer_config
 *        forms) load. Files are generated into a temporary directory from a tiny valid
 *        tokenizer (tests/util_tok.c: tiny_tokenizer) and mutated one field at a time.
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

#include "tokenizer/tokenizer.h"
#include "util_compare.h"
#include "util_tok.h"

/* Writes j (or the raw text) as dir/tokenizer.json and loads it. */
static int load_json(const char *dir, const cJSON *j, const char *raw, Tokenizer **t, Err *err) {
    char *text = raw ? NULL : cJSON_PrintUnformatted(j);
    assert_int_equal(tok_write_in(dir, "tokenizer.json", raw ? raw : text), 0);
    free(text);
    return tokenizer_load(t, dir, err);
}

/* The mutated file must fail with a one-line message containing @p want. */
static void expect_fail(const char *dir, const cJSON *j, const char *raw, const char *want) {
    Tokenizer *t = NULL;
    Err err = {{0}};
    int rc = load_json(dir, j, raw, &t, &err);
    if (rc != -1 || !strstr(err.msg, want) || strchr(err.msg, '\n'))
        fprintf(stderr, "expected a failure mentioning '%s', got rc=%d: '%s'\n", want, rc, err.msg);
    assert_int_equal(rc, -1);
    assert_null(t);
    assert_non_null(strstr(err.msg, want));
    assert_null(strchr(err.msg, '\n'));
}


static cJSON *model_of(cJSON *j) { return cJSON_GetObjectItem(j, "model"); }

static void test_tiny_loads(void **state) {
    const char *dir = *state;
    cJSON *j = tiny_tokenizer();
    Tokenizer *t;
    Err err = {{0}};
    assert_int_equal(load_json(dir, j, NULL, &t, &err), 0);
    int *ids, n;
    assert_int_equal(tokenizer_encode(t, "the the", 7, &ids, &n, &err), 0);
    const int want[] = {257, 258};
    assert_true(tok_ids_equal("the the", ids, n, want, 2));
    free(ids);
    assert_int_equal(tokenizer_vocab_size(t), 262);
    assert_int_equal(tokenizer_bos_id(t), -1); /* no tokenizer_config.json here */
    tokenizer_free(t);

    /* merges as ["a", "b"] pairs (tokenizers ≥ 0.20) give the same ids */
    cJSON *pairs = cJSON_CreateArray(), *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(model_of(j), "merges")) {
        const char *s = it->valuestring, *sp = strchr(s, ' ');
        cJSON *p = cJSON_CreateArray();
        char left[64];
        snprintf(left, sizeof left, "%.*s", (int)(sp - s), s);
        cJSON_AddItemToArray(p, cJSON_CreateString(left));
        cJSON_AddItemToArray(p, cJSON_CreateString(sp + 1));
        cJSON_AddItemToArray(pairs, p);
    }
    cJSON_ReplaceItemInObject(model_of(j), "merges", pairs);
    assert_int_equal(load_json(dir, j, NULL, &t, &err), 0);
    assert_int_equal(tokenizer_encode(t, "the the", 7, &ids, &n, &err), 0);
    assert_true(tok_ids_equal("the the (pair merges)", ids, n, want, 2));
    free(ids);
    tokenizer_free(t);
    cJSON_Delete(j);
}

static void test_json_level(void **state) {
    const char *dir = *state;
    expect_fail(dir, NULL, "", "invalid JSON");
    expect_fail(dir, NULL, "{", "invalid JSON");
    expect_fail(dir, NULL, "{\"model\": {\"type\": \"BPE\",", "invalid JSON near byte");
    expect_fail(dir, NULL, "[]", "expected a JSON object");
    expect_fail(dir, NULL, "{\"version\": \"2.0\"}", "unknown tokenizer version");
    expect_fail(dir, NULL, "{\"version\": \"1.0\"}", "\"model\" missing");
    /* a truncated copy of a valid file */
    cJSON *j = tiny_tokenizer();
    char *full = cJSON_Print(j);
    full[strlen(full) / 2] = 0;
    expect_fail(dir, NULL, full, "invalid JSON");
    free(full);
    cJSON_Delete(j);
    char missing[4200];
    snprintf(missing, sizeof missing, "%s/nothing-here", dir);
    Tokenizer *t;
    Err err = {{0}};
    assert_int_equal(tokenizer_load(&t, missing, &err), -1);
    assert_non_null(strstr(err.msg, "nothing-here"));
}

static void test_model_errors(void **state) {
    const char *dir = *state;
    cJSON *j = tiny_tokenizer();
    cJSON_ReplaceItemInObject(model_of(j), "type", cJSON_CreateString("WordPiece"));
    expect_fail(dir, j, NULL, "only BPE is supported");
    cJSON_Delete(j);

    j = tiny_tokenizer();
    cJSON_AddItemToArray(cJSON_GetObjectItem(model_of(j), "merges"), cJSON_CreateString("zz qq"));
    expect_fail(dir, j, NULL, "'zz' is not in the vocabulary");
    cJSON_Delete(j);

    j = tiny_tokenizer(); /* both halves known, the result is not */
    cJSON_AddItemToArray(cJSON_GetObjectItem(model_of(j), "merges"), cJSON_CreateString("a b"));
    expect_fail(dir, j, NULL, "the merged token 'ab' is not in the vocabulary");
    cJSON_Delete(j);

    j = tiny_tokenizer();
    cJSON_AddItemToArray(cJSON_GetObjectItem(model_of(j), "merges"), cJSON_CreateString("abc"));
    expect_fail(dir, j, NULL, "not two tokens separated by one space");
    cJSON_Delete(j);

    j = tiny_tokenizer(); /* strings and pairs mixed */
    cJSON *p = cJSON_CreateArray();
    cJSON_AddItemToArray(p, cJSON_CreateString("t"));
    cJSON_AddItemToArray(p, cJSON_CreateString("h"));
    cJSON_AddItemToArray(cJSON_GetObjectItem(model_of(j), "merges"), p);
    expect_fail(dir, j, NULL, "like the first entry");
    cJSON_Delete(j);

    j = tiny_tokenizer(); /* two tokens, one id */
    cJSON_AddNumberToObject(cJSON_GetObjectItem(model_of(j), "vocab"), "zz", 65);
    expect_fail(dir, j, NULL, "id 65 is used by both");
    cJSON_Delete(j);

    j = tiny_tokenizer(); /* one token twice */
    cJSON_AddNumberToObject(cJSON_GetObjectItem(model_of(j), "vocab"), "th", 300);
    expect_fail(dir, j, NULL, "'th' appears twice");
    cJSON_Delete(j);

    static const char *const bad_ids[] = {"-1", "1.5", "1e12", "\"7\""};
    for (int i = 0; i < 4; i++) {
        j = tiny_tokenizer();
        cJSON_AddItemToObject(cJSON_GetObjectItem(model_of(j), "vocab"), "zz", cJSON_Parse(bad_ids[i]));
        expect_fail(dir, j, NULL, "id must be an integer");
        cJSON_Delete(j);
    }

    j = tiny_tokenizer();
    cJSON_ReplaceItemInObject(model_of(j), "dropout", cJSON_CreateNumber(0.1));
    expect_fail(dir, j, NULL, "dropout");
    cJSON_Delete(j);

    j = tiny_tokenizer();
    cJSON_AddStringToObject(model_of(j), "continuing_subword_prefix", "##");
    expect_fail(dir, j, NULL, "continuing_subword_prefix");
    cJSON_Delete(j);

    j = tiny_tokenizer();
    cJSON_DeleteItemFromObject(model_of(j), "merges");
    expect_fail(dir, j, NULL, "model.merges must be an array");
    cJSON_Delete(j);
}

static cJSON *added_at(cJSON *j, int i) { return cJSON_GetArrayItem(cJSON_GetObjectItem(j, "added_tokens"), i); }

static void test_added_token_errors(void **state) {
    const char *dir = *state;
    cJSON *j = tiny_tokenizer(); /* an added token on a vocabulary id with other content */
    cJSON_ReplaceItemInObject(added_at(j, 0), "id", cJSON_CreateNumber(65));
    expect_fail(dir, j, NULL, "belongs to vocabulary token 'A'");
    cJSON_Delete(j);

    j = tiny_tokenizer(); /* a gap: Hugging Face would number it 259 */
    cJSON_ReplaceItemInObject(added_at(j, 0), "id", cJSON_CreateNumber(300));
    expect_fail(dir, j, NULL, "Hugging Face would assign id 259");
    cJSON_Delete(j);

    j = tiny_tokenizer(); /* the same content twice */
    cJSON_ReplaceItemInObject(added_at(j, 1), "content", cJSON_CreateString("<｜User｜>"));
    expect_fail(dir, j, NULL, "listed twice");
    cJSON_Delete(j);

    static const char *const flags[] = {"lstrip", "rstrip", "single_word"};
    for (int i = 0; i < 3; i++) {
        j = tiny_tokenizer();
        cJSON_ReplaceItemInObject(added_at(j, 0), flags[i], cJSON_CreateTrue());
        expect_fail(dir, j, NULL, "not supported");
        cJSON_Delete(j);
    }

    j = tiny_tokenizer();
    cJSON_ReplaceItemInObject(added_at(j, 0), "special", cJSON_CreateString("yes"));
    expect_fail(dir, j, NULL, "\"special\" must be true or false");
    cJSON_Delete(j);

    /* an added token that is also a vocabulary entry keeps the vocabulary id (DeepSeek's 0..2) */
    j = tiny_tokenizer();
    cJSON *extra = cJSON_Duplicate(added_at(j, 0), 1);
    cJSON_ReplaceItemInObject(extra, "content", cJSON_CreateString("th"));
    cJSON_ReplaceItemInObject(extra, "id", cJSON_CreateNumber(256));
    cJSON_InsertItemInArray(cJSON_GetObjectItem(j, "added_tokens"), 0, extra);
    Tokenizer *t;
    Err err = {{0}};
    assert_int_equal(load_json(dir, j, NULL, &t, &err), 0);
    assert_int_equal(tokenizer_token_id(t, "th"), 256);
    assert_int_equal(tokenizer_token_id(t, "<｜User｜>"), 259);
    tokenizer_free(t);
    cJSON_Delete(j);
}

static void test_pipeline_errors(void **state) {
    const char *dir = *state;
    cJSON *j = tiny_tokenizer();
    cJSON_ReplaceItemInObject(j, "pre_tokenizer", cJSON_Parse("{\"type\": \"Whitespace\"}"));
    expect_fail(dir, j, NULL, "unsupported pre-tokenizer type 'Whitespace'");
    cJSON_Delete(j);

    j = tiny_tokenizer();
    cJSON *seq = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "pre_tokenizer"), "pretokenizers");
    cJSON_ReplaceItemInObject(cJSON_GetArrayItem(seq, 0), "behavior", cJSON_CreateString("Sideways"));
    expect_fail(dir, j, NULL, "unsupported split behavior 'Sideways'");
    cJSON_Delete(j);

    j = tiny_tokenizer();
    seq = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "pre_tokenizer"), "pretokenizers");
    cJSON_ReplaceItemInObject(cJSON_GetArrayItem(seq, 0), "pattern", cJSON_Parse("{\"Regex\": \"(unclosed\"}"));
    expect_fail(dir, j, NULL, "invalid regex");
    cJSON_Delete(j);

    j = tiny_tokenizer(); /* no ByteLevel at the end */
    seq = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "pre_tokenizer"), "pretokenizers");
    cJSON_DeleteItemFromArray(seq, 3);
    expect_fail(dir, j, NULL, "must end with ByteLevel");
    cJSON_Delete(j);

    j = tiny_tokenizer(); /* ByteLevel in the middle */
    seq = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "pre_tokenizer"), "pretokenizers");
    cJSON_AddItemToArray(seq, cJSON_Duplicate(cJSON_GetArrayItem(seq, 0), 1));
    expect_fail(dir, j, NULL, "ByteLevel must be the last");
    cJSON_Delete(j);

    j = tiny_tokenizer();
    cJSON_ReplaceItemInObject(j, "normalizer", cJSON_Parse("{\"type\": \"NFC\"}"));
    expect_fail(dir, j, NULL, "normalizer 'NFC' is not supported");
    cJSON_Delete(j);

    j = tiny_tokenizer();
    cJSON_ReplaceItemInObject(j, "decoder", cJSON_Parse("{\"type\": \"WordPiece\"}"));
    expect_fail(dir, j, NULL, "decoder 'WordPiece' is not supported");
    cJSON_Delete(j);
}

static void test_config(void **state) {
    const char *dir = *state;
    cJSON *j = tiny_tokenizer();
    Tokenizer *t;
    Err err = {{0}};
    /* bos/eos as plain strings or {"content": …} objects */
    assert_int_equal(tok_write_in(dir, "tokenizer_config.json",
                                  "{\"bos_token\": \"<｜User｜>\", \"eos_token\": {\"content\": "
                                  "\"<｜end▁of▁sentence｜>\"}, \"chat_template\": \"x\"}"),
                     0);
    assert_int_equal(load_json(dir, j, NULL, &t, &err), 0);
    assert_int_equal(tokenizer_bos_id(t), 259);
    assert_int_equal(tokenizer_eos_id(t), 261);
    assert_string_equal(tokenizer_chat_template(t), "x");
    tokenizer_free(t);

    assert_int_equal(tok_write_in(dir, "tokenizer_config.json", "{\"bos_token\": \"<s>\"}"), 0);
    expect_fail(dir, j, NULL, "bos_token '<s>' is not a token");
    assert_int_equal(tok_write_in(dir, "tokenizer_config.json", "{\"bos_token\": "), 0);
    expect_fail(dir, j, NULL, "tokenizer_config.json: invalid JSON");
    assert_int_equal(tok_write_in(dir, "tokenizer_config.json", "{\"eos_token\": 5}"), 0);
    expect_fail(dir, j, NULL, "eos_token must be a string");
    char p[4200];
    snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
    remove(p);
    cJSON_Delete(j);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_loads),
        cmocka_unit_test(test_json_level),
        cmocka_unit_test(test_model_errors),
        cmocka_unit_test(test_added_token_errors),
        cmocka_unit_test(test_pipeline_errors),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, test_tmp_setup, test_tmp_teardown);
}
