/**
 * @file test_commands.c
 * @brief Command-level robustness (build/dsv3): every command's standard output checked (a
 *        write error is exit 1, not 0), one rule for sequence length against
 *        max_position_embeddings in logits / perplexity / train / generate, prepare-data's
 *        same-file and empty-input checks, NUL in chat content, `dsv3 version` naming the
 *        linked backend, `plan` with a context whose cache does not fit, mkckpt's free-space
 *        check, convert over an earlier conversion, perplexity's progress on a terminal.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/util.h"
#include "util_compare.h"
#include "util_pty.h"
#include "util_run.h"

/** Runs `dsv3 ARGS`, expects exit @p status and, when @p text is given, stderr containing it. */
static void expect(int status, const char *text, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void expect(int status, const char *text, const char *fmt, ...) {
    char args[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    RunResult r = run_shell(NULL, "%s %s", dsv3_bin(), args);
    if (r.status != status || (text && !strstr(r.err, text)))
        fail_msg("dsv3 %s: exit %d (want %d), stderr: %s (want '%s')", args, r.status, status, r.err, text ? text : "");
    run_result_free(&r);
}

/** Output to /dev/full: each command reports the write error and exits 1 (they exited 0). */
static void stdout_write_errors(void **state) {
    (void)state;
    const char *cmds[] = {
        "--help",
        "version",
        "info -m golden/official-tiny",
        "plan",
        "generate --help",
        "train --help",
        "generate -m models/kjv -p And -n 8 -s 1",
        "perplexity -m models/kjv -f models/kjv/README.md -c 32 --max-chunks 2",
        "tokenize --tokenizer models/kjv --text hello",
        "detokenize --tokenizer models/kjv --ids 100,101",
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        RunResult r = run_shell(NULL, "%s %s > /dev/full", dsv3_bin(), cmds[i]);
        const char *first = strstr(r.err, "write error");
        if (r.status != 1 || !first || strstr(first + 1, "write error")) /* said once, in one line */
            fail_msg("dsv3 %s > /dev/full: exit %d, stderr: %s", cmds[i], r.status, r.err);
        run_result_free(&r);
    }
    /* train --log on a full device: the first step's line fails, the run stops */
    char ids[4096];
    snprintf(ids, sizeof ids, "%s/ids.bin", test_tmp);
    RunResult r = run_shell(NULL, "head -c 4096 /dev/zero > %s && %s train --train %s --preset tiny --vocab 64 -n 20 -b 1 -T 8 -o %s/run --log /dev/full",
                     ids, dsv3_bin(), ids, test_tmp);
    if (r.status != 1 || !strstr(r.err, "--log /dev/full: write error")) fail_msg("train --log /dev/full: exit %d: %s", r.status, r.err);
    if (strstr(r.out, "step     20/")) fail_msg("train went on after the log failed");
    run_result_free(&r);
}

/** One rule: a sequence holds at most max_position_embeddings positions, in every command. */
static void sequence_length_rule(void **state) {
    (void)state;
    char model[4096], ids[4096];
    snprintf(model, sizeof model, "%s/short", test_tmp);
    snprintf(ids, sizeof ids, "%s/ids.bin", test_tmp);
    RunResult r = run_shell(NULL, "%s mkckpt --preset tiny --set max_position_embeddings=8 --set vocab_size=4096 -o %s 2>&1 && cp models/kjv/tokenizer*.json %s/ && "
                     "head -c 4096 /dev/zero > %s", dsv3_bin(), model, model, ids);
    assert_int_equal(r.status, 0);
    run_result_free(&r);
    const char *want = "exceeds max_position_embeddings = 8";
    expect(2, want, "logits -m %s --ids 1,2,3,4,5,6,7,8,9 -o /dev/null", model); /* accepted before */
    expect(0, NULL, "logits -m %s --ids 1,2,3,4,5,6,7,8 -o /dev/null", model);
    expect(2, want, "perplexity -m %s --ids %s -c 9", model, ids); /* accepted before */
    expect(0, NULL, "perplexity -m %s --ids %s -c 8 --max-chunks 1", model, ids);
    expect(2, want, "train --init %s --train %s -T 9 -n 1 -b 1 -o %s/run", model, ids, test_tmp); /* accepted before */
    expect(2, want, "generate -m %s -c 9 -p hi", model);
}

/** prepare-data: one file for --train and --val, or an empty input, is an error (not an empty training file, not -nan). */
static void prepare_data_checks(void **state) {
    (void)state;
    char in[4096], empty[4096];
    snprintf(in, sizeof in, "%s/corpus.txt", test_tmp);
    snprintf(empty, sizeof empty, "%s/empty.txt", test_tmp);
    RunResult r = run_shell(NULL, "printf 'one doc\\n\\ntwo doc\\n' > %s && : > %s && ln -sf corpus.bin %s/alias.bin", in, empty, test_tmp);
    run_result_free(&r);
    expect(2, "three different files", "prepare-data --tokenizer models/kjv --input %s --train %s/x.bin --val %s/x.bin", in,
           test_tmp, test_tmp);
    expect(2, "three different files", "prepare-data --tokenizer models/kjv --input %s --train %s --val %s/v.bin", in, in, test_tmp);
    expect(0, NULL, "prepare-data --tokenizer models/kjv --input %s --train %s/corpus.bin --val %s/v.bin", in, test_tmp, test_tmp);
    expect(2, "three different files", "prepare-data --tokenizer models/kjv --input %s --train %s/corpus.bin --val %s/alias.bin", in,
           test_tmp, test_tmp);
    r = run_shell(NULL, "%s prepare-data --tokenizer models/kjv --input %s --train %s/e.bin --val %s/ev.bin", dsv3_bin(), empty, test_tmp, test_tmp);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "no documents"));
    assert_null(strstr(r.err, "nan"));
    run_result_free(&r);
}

/** A NUL character in chat content is refused (cJSON cut the content short at it). */
static void chat_nul(void **state) {
    (void)state;
    expect(1, "NUL", "tokenize --tokenizer models/kjv --chat --text '[{\"role\":\"user\",\"content\":\"ab\\u0000cd\"}]'");
    expect(0, NULL, "tokenize --tokenizer models/kjv --chat --text '[{\"role\":\"user\",\"content\":\"ab\\\\u0000cd\"}]'");
}

/** `dsv3 version` names the GPU backend exactly when the binary has one. */
static void version_names_backend(void **state) {
    (void)state;
    RunResult v = run_shell(NULL, "%s version", dsv3_bin());
    RunResult f = run_shell(NULL, "%s logits -m golden/official-tiny --ids 1,2 -o /dev/null --backend fast", dsv3_bin());
    assert_int_equal(v.status, 0);
    int linked = !strstr(f.err, "built without CUDA");
    if (linked != !!strstr(v.out, "CUDA"))
        fail_msg("version says '%s' but --backend fast says '%s'", v.out, f.err);
    printf("    %s", v.out);
    run_result_free(&v);
    run_result_free(&f);
}

/** plan: a batch whose KV cache does not fit gets no decode speed. */
static void plan_context_fits(void **state) {
    (void)state;
    RunResult r = run_shell(NULL, "%s plan --ctx 1000000", dsv3_bin());
    assert_int_equal(r.status, 0);
    if (strstr(r.out, "tokens/s for the unit")) fail_msg("a decode speed for a batch that does not fit:\n%s", r.out);
    assert_non_null(strstr(r.out, "DOES NOT FIT"));
    assert_non_null(strstr(r.out, "max_position_embeddings"));
    run_result_free(&r);
    r = run_shell(NULL, "%s plan --ctx 4096", dsv3_bin());
    assert_non_null(strstr(r.out, "tokens/s for the unit"));
    run_result_free(&r);
}

/** mkckpt --preset v3 (~680 GB) is refused at once when the disk is smaller, leaving nothing. */
static void mkckpt_free_space(void **state) {
    (void)state;
    double t0 = now_seconds();
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/v3", test_tmp);
    /* timeout: a build without the check would start writing ~680 GB */
    RunResult r = run_shell(NULL, "timeout -s KILL 60 %s mkckpt --preset v3 -o %s", dsv3_bin(), dir);
    if (r.status != 1 || !strstr(r.err, "GB free")) fail_msg("mkckpt --preset v3: exit %d: %s", r.status, r.err);
    run_result_free(&r);
    assert_true(now_seconds() - t0 < 60);
    assert_int_equal(access(dir, F_OK), -1);
}

/** convert over an earlier conversion: killed, the old one still loads; finished, nothing stale stays. */
static void convert_over_conversion(void **state) {
    (void)state;
    char out[4096], p[4200];
    snprintf(out, sizeof out, "%s/conv", test_tmp);
    expect(0, NULL, "convert -m models/kjv -o %s --format bf16", out);
    RunResult r = run_shell(NULL, "DSV3_TEST_KILL_AFTER=20 %s convert -m models/kjv -o %s --format f32 --shards 3 2>&1", dsv3_bin(), out);
    assert_int_equal(r.status, 128 + SIGTERM);
    run_result_free(&r);
    expect(0, NULL, "generate -m %s -p And -n 4 -s 1", out); /* was: mixed shards and a stale index */
    expect(0, NULL, "convert -m models/kjv -o %s --format f32 --shards 3", out);
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    assert_int_equal(access(p, F_OK), -1); /* was: the old single file beside the new shards */
    snprintf(p, sizeof p, "%s/tokenizer.json", out);
    assert_int_equal(access(p, F_OK), 0);
    expect(0, NULL, "generate -m %s -p And -n 4 -s 1", out);
}

/** perplexity shows its progress on a terminal (it ran ~40 s in silence). */
static void perplexity_progress(void **state) {
    (void)state;
    Pty p;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "exec %s perplexity -m models/kjv -f models/kjv/README.md -c 16 --max-chunks 4", dsv3_bin());
    assert_int_equal(pty_spawn(&p, cmd), 0);
    if (pty_expect(&p, "chunk 3/4, perplexity so far", 60)) fail_msg("no progress on the terminal:\n%s", p.buf);
    assert_int_equal(pty_wait(&p, 60), 0);
    assert_non_null(strstr(p.buf, "4 chunks x 16 tokens"));
    pty_free(&p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stdout_write_errors), cmocka_unit_test(sequence_length_rule),
        cmocka_unit_test(prepare_data_checks), cmocka_unit_test(chat_nul),
        cmocka_unit_test(version_names_backend), cmocka_unit_test(plan_context_fits),
        cmocka_unit_test(mkckpt_free_space),   cmocka_unit_test(convert_over_conversion),
        cmocka_unit_test(perplexity_progress),
    };
    return cmocka_run_group_tests_name("commands", tests, test_tmp_setup, test_tmp_teardown);
}
