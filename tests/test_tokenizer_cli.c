/**
 * @file test_tokenizer_cli.c
 * @brief The command-line contract of `dsv3 tokenize`, `dsv3 detokenize` and
 *        `dsv3 train-tokenizer`, run through the binary: outputs byte for byte, and for every
 *        bad input exactly one line on stderr ("dsv3 <command>: …") and the documented exit
 *        status (2 usage, 1 run time).
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

#include "util_run.h"
#include "util_compare.h"
#include "util_tok.h"

static void run(RunResult *r, const char *stdin_text, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void run(RunResult *r, const char *stdin_text, const char *fmt, ...) {
    char args[8192], cmd[9000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s", dsv3_bin(), args);
    assert_int_equal(run_cmd(cmd, stdin_text, r), 0);
}

/* Exactly one stderr line starting with "dsv3 <cmd>: " and containing @p what; no stdout. */
static void expect_error(RunResult *r, int status, const char *cmd, const char *what) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "dsv3 %s: ", cmd);
    if (r->status != status || count_lines(r->err) != 1 || strncmp(r->err, prefix, strlen(prefix)) ||
        !strstr(r->err, what) || r->out_len)
        fprintf(stderr, "status %d (want %d), stderr: %s, stdout: %s\n", r->status, status, r->err, r->out);
    assert_int_equal(r->status, status);
    assert_int_equal(count_lines(r->err), 1);
    assert_int_equal(strncmp(r->err, prefix, strlen(prefix)), 0);
    assert_non_null(strstr(r->err, what));
    assert_int_equal(r->out_len, 0);
    run_result_free(r);
}


#define TOK "--tokenizer " DS_TOKENIZER_DIR

static void test_tokenize_ok(void **state) {
    const char *dir = *state;
    RunResult r;
    run(&r, NULL, "tokenize " TOK " --text \"Hello, world! It's a beautiful day, isn't it?\"");
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "[19923,14,2058,3,983,734,260,7992,2173,14,7367,1664,436,33]\n");
    assert_int_equal(r.err_len, 0);
    run_result_free(&r);
    run(&r, NULL, "tokenize --tokenizer=" DS_TOKENIZER_DIR "/tokenizer.json --text=");
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "[]\n");
    run_result_free(&r);
    run(&r, NULL, "tokenize " TOK " --text=--x");  /* '=' lets a value start with dashes */
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "[610,90]\n"); /* "--" (punctuation run) + "x" */
    run_result_free(&r);
    /* --file, and '-' for standard input */
    assert_int_equal(tok_write_in(dir, "in.txt", "<｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>"), 0);
    run(&r, NULL, "tokenize " TOK " --file %s/in.txt", dir);
    assert_string_equal(r.out, "[128803,3085,344,223,20,13,20,33,128804,22,1]\n");
    run_result_free(&r);
    run(&r, " ", "tokenize " TOK " --file -");
    assert_string_equal(r.out, "[223]\n");
    run_result_free(&r);
    run(&r, NULL, "tokenize --help");
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "usage: dsv3 tokenize"));
    run_result_free(&r);
}

static void test_chat_ok(void **state) {
    const char *dir = *state;
    assert_int_equal(tok_write_in(dir, "chat.json",
                                  "[{\"role\": \"system\", \"content\": \"Be brief.\"},"
                                  " {\"role\": \"user\", \"content\": \"What is 2+2?\"}]"),
                     0);
    RunResult r;
    run(&r, NULL, "tokenize " TOK " --chat --file %s/chat.json", dir);
    assert_int_equal(r.status, 0);
    /* BOS, "Be brief." (Be, brief, .), <｜User｜>, "What is 2+2?", <｜Assistant｜> */
    assert_string_equal(r.out, "[0,7153,9708,16,128803,3085,344,223,20,13,20,33,128804]\n");
    run_result_free(&r);
}

static void test_detokenize_ok(void **state) {
    const char *dir = *state;
    RunResult r;
    run(&r, NULL, "detokenize " TOK " --ids 19923,14,2058,3");
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "Hello, world!"); /* no newline added */
    run_result_free(&r);
    run(&r, NULL, "detokenize " TOK " --ids '[128803, 3085,344 ,223 ,20,13,20,33,128804,22,1]'");
    assert_string_equal(r.out, "<｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>");
    run_result_free(&r);
    /* trailing whitespace survives byte for byte, through a pipe from tokenize */
    assert_int_equal(tok_write_in(dir, "ws.txt", "ab \n\n  \t"), 0);
    run(&r, NULL, "tokenize " TOK " --file %s/ws.txt | %s detokenize " TOK " --file - | cmp - %s/ws.txt && echo same",
        dir, dsv3_bin(), dir);
    assert_string_equal(r.out, "same\n");
    run_result_free(&r);
    assert_int_equal(tok_write_in(dir, "ids.json", "[]\n"), 0);
    run(&r, NULL, "detokenize " TOK " --file %s/ids.json", dir);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.out_len, 0);
    run_result_free(&r);
    run(&r, NULL, "detokenize -h");
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "usage: dsv3 detokenize"));
    run_result_free(&r);
}

static void test_usage_errors(void **state) {
    (void)state;
    RunResult r;
    run(&r, NULL, "tokenize " TOK " --text");
    expect_error(&r, 2, "tokenize", "--text needs a value");
    run(&r, NULL, "tokenize " TOK " --text --file x");
    expect_error(&r, 2, "tokenize", "--text needs a value, got the flag --file");
    run(&r, NULL, "tokenize " TOK " --text hi --colour");
    expect_error(&r, 2, "tokenize", "unknown option '--colour'");
    run(&r, NULL, "tokenize --text hi");
    expect_error(&r, 2, "tokenize", "--tokenizer DIR is required");
    run(&r, NULL, "tokenize " TOK);
    expect_error(&r, 2, "tokenize", "exactly one of --text and --file");
    run(&r, NULL, "tokenize " TOK " --text a --file b");
    expect_error(&r, 2, "tokenize", "exactly one of --text and --file");
    run(&r, NULL, "tokenize " TOK " --text a --text b");
    expect_error(&r, 2, "tokenize", "given twice");
    run(&r, NULL, "tokenize " TOK " stray");
    expect_error(&r, 2, "tokenize", "unexpected argument 'stray'");
    run(&r, NULL, "tokenize " TOK " --text \"$(printf 'ok\\377')\"");
    expect_error(&r, 2, "tokenize", "not valid UTF-8");
    run(&r, NULL, "detokenize " TOK " --ids 1,two,3");
    expect_error(&r, 2, "detokenize", "'two,3' is not a token id");
    run(&r, NULL, "detokenize " TOK " --ids 1,-2");
    expect_error(&r, 2, "detokenize", "is not a token id");
    run(&r, NULL, "detokenize " TOK " --ids 1,2,");
    expect_error(&r, 2, "detokenize", "trailing ','");
    run(&r, NULL, "detokenize " TOK " --ids 128815");
    expect_error(&r, 2, "detokenize", "id 128815 is out of range [0, 128815)");
    run(&r, NULL, "detokenize " TOK " --ids 99999999999");
    expect_error(&r, 2, "detokenize", "too large");
    run(&r, NULL, "detokenize " TOK " --ids");
    expect_error(&r, 2, "detokenize", "--ids needs a value");
    run(&r, NULL, "detokenize " TOK " --text 1");
    expect_error(&r, 2, "detokenize", "unknown option '--text'");
}

static void test_runtime_errors(void **state) {
    const char *dir = *state;
    RunResult r;
    assert_int_equal(tok_write(strcat(strcpy((char[4200]){0}, dir), "/bad.txt"), "fine \xc3\x28 then", 11), 0);
    run(&r, NULL, "tokenize " TOK " --file %s/bad.txt", dir);
    expect_error(&r, 1, "tokenize", "not valid UTF-8 (byte 0xc3 at offset 5)");
    run(&r, NULL, "tokenize " TOK " --file %s/missing.txt", dir);
    expect_error(&r, 1, "tokenize", "missing.txt");
    run(&r, NULL, "tokenize --tokenizer %s/nowhere --text hi", dir);
    expect_error(&r, 1, "tokenize", "nowhere");

    /* a tokenizer.json that is not BPE, one that is cut short, one with a bad merge */
    char sub[4200];
    snprintf(sub, sizeof sub, "%s/wp", dir);
    assert_int_equal(tok_write_in(dir, "wp.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}"), 0);
    run(&r, NULL, "tokenize --tokenizer %s/wp.json --text hi", dir);
    expect_error(&r, 1, "tokenize", "only BPE is supported");
    cJSON *j = tiny_tokenizer();
    char *full = cJSON_Print(j);
    full[strlen(full) * 2 / 3] = 0;
    assert_int_equal(tok_write_in(dir, "cut.json", full), 0);
    free(full);
    run(&r, NULL, "detokenize --tokenizer %s/cut.json --ids 1", dir);
    expect_error(&r, 1, "detokenize", "invalid JSON");
    cJSON_AddItemToArray(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "model"), "merges"), cJSON_CreateString("q zz"));
    full = cJSON_Print(j);
    assert_int_equal(tok_write_in(dir, "merge.json", full), 0);
    free(full);
    cJSON_Delete(j);
    run(&r, NULL, "tokenize --tokenizer %s/merge.json --text hi", dir);
    expect_error(&r, 1, "tokenize", "'zz' is not in the vocabulary");
    j = tiny_tokenizer();
    cJSON_AddNumberToObject(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "model"), "vocab"), "zz", 65);
    full = cJSON_Print(j);
    assert_int_equal(tok_write_in(dir, "dup.json", full), 0);
    free(full);
    cJSON_Delete(j);
    run(&r, NULL, "tokenize --tokenizer %s/dup.json --text hi", dir);
    expect_error(&r, 1, "tokenize", "id 65 is used by both 'A' and 'zz'");
    assert_int_equal(tok_write_in(dir, "brace.json", "{"), 0);
    run(&r, NULL, "detokenize --tokenizer %s/brace.json --ids 1", dir);
    expect_error(&r, 1, "detokenize", "brace.json: invalid JSON");

    /* chats the template refuses */
    assert_int_equal(tok_write_in(dir, "role.json", "[{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"wizard\", \"content\": \"b\"}]"), 0);
    run(&r, NULL, "tokenize " TOK " --chat --file %s/role.json", dir);
    expect_error(&r, 1, "tokenize", "unknown chat role 'wizard'");
    assert_int_equal(tok_write_in(dir, "obj.json", "{\"role\": \"user\", \"content\": \"a\"}"), 0);
    run(&r, NULL, "tokenize " TOK " --chat --file %s/obj.json", dir);
    expect_error(&r, 1, "tokenize", "expected a JSON array");
    run(&r, NULL, "tokenize " TOK " --chat --text '[{\"role\": \"user\"'");
    expect_error(&r, 1, "tokenize", "invalid JSON");

    /* ids from a file: a bad one is a run-time error */
    assert_int_equal(tok_write_in(dir, "ids.txt", "[1, 2, 999999]"), 0);
    run(&r, NULL, "detokenize " TOK " --file %s/ids.txt", dir);
    expect_error(&r, 1, "detokenize", "id 999999 is out of range");
}

static void test_train_tokenizer_cli(void **state) {
    const char *dir = *state;
    RunResult r;
    run(&r, NULL, "train-tokenizer --input x");
    expect_error(&r, 2, "train-tokenizer", "--output DIR is required");
    run(&r, NULL, "train-tokenizer --output %s/t --vocab-size 12", dir);
    expect_error(&r, 2, "train-tokenizer", "--vocab-size: '12' is not an integer in [261, 1000000]");
    run(&r, NULL, "train-tokenizer --output %s/t --input", dir);
    expect_error(&r, 2, "train-tokenizer", "--input needs a value");
    run(&r, NULL, "train-tokenizer --output %s/t --merges 5", dir);
    expect_error(&r, 2, "train-tokenizer", "unknown option '--merges'");
    run(&r, NULL, "train-tokenizer --output %s/t", dir);
    expect_error(&r, 2, "train-tokenizer", "give at least one --input");
    run(&r, NULL, "train-tokenizer --output %s/t --input %s/none.txt", dir, dir);
    expect_error(&r, 1, "train-tokenizer", "none.txt");
    assert_int_equal(tok_write(strcat(strcpy((char[4200]){0}, dir), "/latin1.txt"), "caf\xe9", 4), 0);
    run(&r, NULL, "train-tokenizer --output %s/t --input %s/latin1.txt", dir, dir);
    expect_error(&r, 1, "train-tokenizer", "latin1.txt: not valid UTF-8");

    assert_int_equal(tok_write_in(dir, "corpus.txt", "the cat sat on the mat; the cat ate 12345 rats.\n"), 0);
    assert_int_equal(tok_write_in(dir, "list.txt", "corpus.txt\n"), 0);
    run(&r, NULL, "train-tokenizer --input %s/corpus.txt --output %s/t --vocab-size 300", dir, dir);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "train-tokenizer: "));
    run_result_free(&r);
    run(&r, NULL, "tokenize --tokenizer %s/t --text 'the cat' | %s detokenize --tokenizer %s/t --file -", dir,
        dsv3_bin(), dir);
    assert_string_equal(r.out, "the cat");
    run_result_free(&r);
    run(&r, NULL, "train-tokenizer --input-list %s/list.txt --output %s/t --vocab-size 300 --min-frequency 1", dir, dir);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "from 1 file,"));
    run_result_free(&r);
    run(&r, NULL, "train-tokenizer --help");
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "usage: dsv3 train-tokenizer"));
    run_result_free(&r);
    char p[4200];
    snprintf(p, sizeof p, "%s/t", dir);
    remove_tree(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokenize_ok),
        cmocka_unit_test(test_chat_ok),
        cmocka_unit_test(test_detokenize_ok),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_runtime_errors),
        cmocka_unit_test(test_train_tokenizer_cli),
    };
    return cmocka_run_group_tests(tests, test_tmp_setup, test_tmp_teardown);
}
