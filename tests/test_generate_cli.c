/**
 * @file test_generate_cli.c
 * @brief `dsv3 generate` and `dsv3 chat` through the binary, on a small model with a tokenizer
 *        trained by `dsv3 train-tokenizer` (so the full text → ids → model → text path runs):
 *  - generate streams text; greedy output is identical with and without MTP speculation;
 *    the same seed reproduces a sampled run; stats appear on stderr;
 *  - bad input (invalid UTF-8 prompt and file, missing values, --temp -1, --top-p 2, -n -5,
 *    a prompt longer than the context, unknown flags, a model without MTP with --spec mtp):
 *    one line on stderr, non-zero exit;
 *  - chat in a pseudo-terminal: two turns; the second prefills only the new turn's tokens
 *    (asserted against the count the tokenizer gives for that turn), not the conversation.
 */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <cjson/cJSON.h>

#include "base/buf.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"
#include "util_compare.h"
#include "util_run.h"

static char model[4096], model_nomtp[4096];

static int setup(void **state) {
    (void)state;
    if (test_tmp_setup(state)) return -1;
    /* A 400-id tokenizer trained on the project's own prose, and a tiny model of that vocab. */
    snprintf(model, sizeof model, "%s/model", test_tmp);
    snprintf(model_nomtp, sizeof model_nomtp, "%s/nomtp", test_tmp);
    RunResult r = run_shell(NULL, "%s train-tokenizer --input README.md --input docs/fp8.md --input docs/architecture.md"
                      " --vocab-size 400 --output %s", dsv3_bin(), model);
    if (r.status) fprintf(stderr, "%s", r.err);
    int ok = r.status == 0;
    run_result_free(&r);
    r = run_shell(NULL, "%s mkckpt -o %s --preset tiny --set vocab_size=400 --seed 5 && %s mkckpt -o %s --preset tiny --mtp 0"
            " --set vocab_size=400 && cp %s/tokenizer*.json %s/",
            dsv3_bin(), model, dsv3_bin(), model_nomtp, model, model_nomtp);
    if (r.status) fprintf(stderr, "%s", r.err);
    ok = ok && r.status == 0;
    run_result_free(&r);
    return ok ? 0 : -1;
}

static void generate_streams_and_reproduces(void **state) {
    (void)state;
    RunResult plain = run_shell(NULL, "%s generate -m %s -p 'The FP8 weights' -n 40 --temp 0 --spec none", dsv3_bin(), model);
    RunResult spec = run_shell(NULL, "%s generate -m %s -p 'The FP8 weights' -n 40 --temp 0 --spec mtp --draft 2", dsv3_bin(), model);
    assert_int_equal(plain.status, 0);
    assert_int_equal(spec.status, 0);
    assert_true(plain.out_len > 10);
    assert_string_equal(plain.out, spec.out); /* greedy speculation changes nothing */
    assert_non_null(strstr(plain.err, "prefill"));
    assert_non_null(strstr(plain.err, "decode"));
    assert_non_null(strstr(plain.err, "KV cache"));
    assert_non_null(strstr(plain.err, "peak RSS"));
    assert_non_null(strstr(spec.err, "MTP drafts accepted"));
    printf("    greedy text (random weights): %.60s...\n", plain.out);
    run_result_free(&plain);
    run_result_free(&spec);
    RunResult a = run_shell(NULL, "%s generate -m %s -p 'memory map' -n 30 --seed 7 --temp 1", dsv3_bin(), model);
    RunResult b = run_shell(NULL, "%s generate -m %s -p 'memory map' -n 30 --seed 7 --temp 1", dsv3_bin(), model);
    RunResult c = run_shell(NULL, "%s generate -m %s -p 'memory map' -n 30 --seed 8 --temp 1", dsv3_bin(), model);
    assert_int_equal(a.status, 0);
    assert_string_equal(a.out, b.out);          /* same seed, same text */
    assert_true(strcmp(a.out, c.out) != 0);     /* another seed, another text */
    run_result_free(&a);
    run_result_free(&b);
    run_result_free(&c);
}

/** The "text" of the JSON line whose "index" is @p i in @p jsonl (malloc'd), or NULL. */
static char *batch_text(const char *jsonl, int i) {
    char *copy = strdup(jsonl), *save = NULL, *text = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line && !text; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *idx = cJSON_GetObjectItemCaseSensitive(j, "index"), *t = cJSON_GetObjectItemCaseSensitive(j, "text");
        if (cJSON_IsNumber(idx) && idx->valueint == i && cJSON_IsString(t)) text = strdup(t->valuestring);
        cJSON_Delete(j);
    }
    free(copy);
    return text;
}

/**
 * --batch: five prompts through two slots (continuous batching: slots are reused, prefill pieces
 * share steps with decode tokens) give, prompt by prompt, the text `generate -p` gives alone —
 * greedy, and sampled with seed S+i — plus the JSON fields; -n 0 finishes without tokens.
 */
static void batch_matches_single_runs(void **state) {
    (void)state;
    const char *prompts[5] = { "The FP8 weights", "memory map", "Multi-head Latent Attention", "experts", "the cache" };
    char path[4200];
    snprintf(path, sizeof path, "%s/prompts.txt", test_tmp);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 5; i++) fprintf(f, "%s\n%s", prompts[i], i == 1 ? "\n  \n" : ""); /* blank lines are skipped */
    fclose(f);
    const char *modes[2] = { "--temp 0", "--temp 1 --seed 40" };
    for (int mode = 0; mode < 2; mode++) {
        RunResult b = run_shell(NULL, "%s generate -m %s --batch %s -n 12 --parallel 2 -b 3 %s", dsv3_bin(), model, path, modes[mode]);
        if (b.status) fprintf(stderr, "%s", b.err);
        assert_int_equal(b.status, 0);
        assert_int_equal(count_lines(b.out), 5);
        assert_non_null(strstr(b.err, "5 prompts"));
        for (int i = 0; i < 5; i++) {
            char flags[64];
            snprintf(flags, sizeof flags, mode ? "--temp 1 --seed %d" : "--temp 0", 40 + i); /* prompt i samples with S+i */
            RunResult one = run_shell(NULL, "%s generate -m %s -p '%s' -n 12 %s 2>/dev/null", dsv3_bin(), model, prompts[i], flags);
            char *text = batch_text(b.out, i);
            assert_non_null(text);
            assert_int_equal(one.status, 0);
            assert_true(one.out_len > 0 && one.out[one.out_len - 1] == '\n'); /* generate ends its text with a newline */
            one.out[--one.out_len] = 0;
            assert_string_equal(text, one.out);
            free(text);
            run_result_free(&one);
        }
        assert_non_null(strstr(b.out, "\"completion_tokens\":12"));
        printf("    --batch (5 prompts, 2 slots, %s): every text equals its single run\n", modes[mode]);
        run_result_free(&b);
    }
    RunResult z = run_shell(NULL, "%s generate -m %s --batch %s -n 0", dsv3_bin(), model, path);
    assert_int_equal(z.status, 0);
    assert_int_equal(count_lines(z.out), 5);
    assert_non_null(strstr(z.out, "\"text\":\"\",\"finish_reason\":\"length\""));
    run_result_free(&z);
}

/** Each bad invocation: non-zero exit, exactly one line on stderr containing @p expect. */
static void bad(const char *what, int status, const char *expect, const char *fmt, ...) {
    char args[8192], cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s", dsv3_bin(), args);
    RunResult r;
    assert_int_equal(run_cmd(cmd, NULL, &r), 0);
    int ok = r.status == status && count_lines(r.err) == 1 && strstr(r.err, expect) && r.out_len == 0;
    printf("    %-28s %s %s", what, ok ? "ok  " : "FAIL", r.err);
    if (!ok) printf("      (exit %d, want %d with '%s'; stdout %zu bytes)\n", r.status, status, expect, r.out_len);
    run_result_free(&r);
    assert_true(ok);
}

static void bad_inputs(void **state) {
    (void)state;
    char path[4200];
    snprintf(path, sizeof path, "%s/bad_utf8.txt", test_tmp);
    FILE *f = fopen(path, "wb");
    fputs("caf\xc3 \xff\xfe", f);
    fclose(f);
    bad("invalid UTF-8 -p", 2, "not valid UTF-8", "generate -m %s -p \"$(printf 'caf\\303')\"", model);
    bad("invalid UTF-8 -f", 1, "not valid UTF-8", "generate -m %s -f %s", model, path);
    bad("missing value", 2, "-n needs a value", "generate -m %s -p hi -n", model);
    bad("flag as value", 2, "-p needs a value", "generate -m %s -p --temp 1", model);
    bad("--temp -1", 2, "--temp", "generate -m %s -p hi --temp -1", model);
    bad("--temp nan", 2, "--temp", "generate -m %s -p hi --temp nan", model);
    bad("--top-p 2", 2, "--top-p", "generate -m %s -p hi --top-p 2", model);
    bad("--top-p 0", 2, "--top-p", "generate -m %s -p hi --top-p 0", model);
    bad("-n -5", 2, "-n", "generate -m %s -p hi -n -5", model);
    bad("-n abc", 2, "-n", "generate -m %s -p hi -n abc", model);
    bad("--top-k 1.5", 2, "--top-k", "generate -m %s -p hi --top-k 1.5", model);
    bad("prompt longer than -c", 2, "context holds 8", "generate -m %s -c 8 -p 'a b c d e f g h i j k l m'", model);
    bad("unknown flag", 2, "unknown option", "generate -m %s -p hi --frobnicate", model);
    bad("no prompt", 2, "exactly one of", "generate -m %s", model);
    bad("both prompts", 2, "exactly one of", "generate -m %s -p a -f %s", model, path);
    bad("--batch and -p", 2, "exactly one of", "generate -m %s -p a --batch %s", model, path);
    bad("--batch: bad UTF-8", 1, "not valid UTF-8", "generate -m %s --batch %s", model, path);
    bad("--batch: no file", 1, "cannot open", "generate -m %s --batch %s/none", model, test_tmp);
    char blank[4200];
    snprintf(blank, sizeof blank, "%s/blank.txt", test_tmp);
    f = fopen(blank, "w");
    fputs("\n   \n\t\n", f);
    fclose(f);
    bad("--batch: blank lines", 2, "has no prompts", "generate -m %s --batch %s", model, blank);
    bad("--batch + --spec mtp", 2, "no --spec", "generate -m %s --batch %s --spec mtp", model, path);
    bad("--parallel 0", 2, "--parallel", "generate -m %s --batch %s --parallel 0", model, path);
    bad("--batch: prompt > -c", 1, "context holds 4", "generate -m %s -c 4 --batch README.md", model);
    bad("missing model", 1, "cannot open", "generate -m %s/none -p hi", test_tmp);
    bad("--spec mtp without MTP", 2, "no MTP module", "generate -m %s -p hi --spec mtp", model_nomtp);
    bad("--draft 0", 2, "--draft", "generate -m %s -p hi --draft 0", model);
    bad("-c beyond the model", 2, "max_position_embeddings", "generate -m %s -p hi -c 999999999", model);
    bad("chat: bad -sys", 2, "not valid UTF-8", "chat -m %s -sys \"$(printf '\\377')\"", model);
    bad("chat: unknown flag", 2, "unknown option", "chat -m %s -p hi", model);
    bad("perplexity: no input", 2, "exactly one of", "perplexity -m %s", model);
    bad("perplexity: too short", 2, "fewer than one chunk", "perplexity -m %s -f README.md -c 100000", model);
    /* 7 bytes (the bad UTF-8 file): not a whole number of uint32 ids */
    bad("perplexity: bad ids file", 1, "not a whole number of uint32", "perplexity -m %s --ids %s", model, path);
}

/** perplexity on text: a finite cross-entropy near log(vocab) for random weights; --mtp scores the MTP head. */
static void perplexity_runs(void **state) {
    (void)state;
    RunResult r = run_shell(NULL, "%s perplexity -m %s -f docs/fp8.md -c 64 --mtp", dsv3_bin(), model);
    assert_int_equal(r.status, 0);
    double ce = 0;
    const char *p = strstr(r.out, "cross-entropy ");
    assert_non_null(p);
    ce = strtod(p + strlen("cross-entropy "), NULL);
    printf("    %s", r.out);
    assert_true(ce > 3.0 && ce < 12.0); /* log(400) = 5.99 for a uniform guess; random weights are near it */
    assert_non_null(strstr(r.out, "MTP head"));
    run_result_free(&r);
}

/* ---- chat in a pseudo-terminal --------------------------------------------------------- */

/** Reads from the pty until @p needle appears (or timeout); appends to *buf. */
static int expect_pty(int fd, ByteBuf *buf, const char *needle, int timeout_ms) {
    size_t start = buf->len;
    while (1) {
        if (buf->data && strstr(buf->data + (start > 200 ? start - 200 : 0), needle)) return 0;
        struct pollfd p = { fd, POLLIN, 0 };
        int r = poll(&p, 1, timeout_ms);
        if (r <= 0) return -1;
        char tmpb[4096];
        ssize_t n = read(fd, tmpb, sizeof tmpb);
        if (n <= 0) return -1;
        bytebuf_append(buf, tmpb, (size_t)n);
    }
}

/** The number after "[turn K: prefilled " in the transcript. */
static long prefilled(const char *transcript, int turn) {
    char key[64];
    snprintf(key, sizeof key, "[turn %d: prefilled ", turn);
    const char *p = strstr(transcript, key);
    return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

static void chat_keeps_cache_across_turns(void **state) {
    (void)state;
    int master;
    pid_t pid = forkpty(&master, NULL, NULL, NULL);
    assert_true(pid >= 0);
    if (pid == 0) {
        execl(dsv3_bin(), dsv3_bin(), "chat", "-m", model, "-n", "12", "--temp", "0", "-sys", "Be brief.", (char *)NULL);
        _exit(127);
    }
    ByteBuf t = { 0 };
    assert_int_equal(expect_pty(master, &t, "> ", 20000), 0);
    const char *m1 = "Where is the cache?\r", *m2 = "And the weights?\r";
    assert_true(write(master, m1, strlen(m1)) > 0);
    assert_int_equal(expect_pty(master, &t, "[turn 1:", 20000), 0);
    assert_int_equal(expect_pty(master, &t, "> ", 20000), 0);
    assert_true(write(master, m2, strlen(m2)) > 0);
    assert_int_equal(expect_pty(master, &t, "[turn 2:", 20000), 0);
    assert_int_equal(expect_pty(master, &t, "> ", 20000), 0);
    assert_true(write(master, "/exit\r", 6) > 0);
    expect_pty(master, &t, "peak RSS", 20000);
    int st;
    waitpid(pid, &st, 0);
    close(master);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* Expected prefill sizes from the tokenizer itself. */
    Tokenizer *tok;
    Err err;
    assert_int_equal(tokenizer_load(&tok, model, &err), 0);
    ChatMessage msgs[2] = { { "system", "Be brief." }, { "user", "Where is the cache?" } };
    int *ids, n1;
    assert_int_equal(chat_encode(tok, msgs, 2, 1, &ids, &n1, &err), 0);
    free(ids);
    IntVec open = { 0 }, closed = { 0 };
    assert_int_equal(chat_encode_user_turn(tok, "And the weights?", 0, 1, &open, &err), 0);
    assert_int_equal(chat_encode_user_turn(tok, "And the weights?", 1, 1, &closed, &err), 0);
    long p1 = prefilled(t.data, 1), p2 = prefilled(t.data, 2);
    /* Turn 2 feeds the pending last token of reply 1, then (if that reply was cut by -n, an EOS
     * to close it and) the new user turn — never the first turn again. */
    printf("    turn 1 prefilled %ld tokens (template: %d); turn 2 prefilled %ld (new turn: %zu or %zu, + 1 pending)\n", p1,
           n1, p2, open.n, closed.n);
    assert_int_equal(p1, n1);
    assert_true(p2 == (long)open.n + 1 || p2 == (long)closed.n + 1);
    assert_true(p2 < p1);
    free(open.v);
    free(closed.v);
    free(t.data);
    tokenizer_free(tok);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(generate_streams_and_reproduces),
        cmocka_unit_test(batch_matches_single_runs),
        cmocka_unit_test(bad_inputs),
        cmocka_unit_test(chat_keeps_cache_across_turns),
        cmocka_unit_test(perplexity_runs),
    };
    return cmocka_run_group_tests_name("generate_cli", tests, setup, test_tmp_teardown);
}
