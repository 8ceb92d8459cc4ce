/**
 * @file test_family_cli.c
 * @brief The DeepSeek-V3 family end to end through build/dsv3 (docs/model.md §13): a Kimi K2-shaped
 *        checkpoint (`mkckpt --preset k2-tiny`) with a Kimi tiktoken tokenizer and Kimi K2's chat
 *        template beside it — `dsv3 info` names it, `dsv3 tokenize --chat` and `dsv3 chat` use the
 *        kimi-k2 template, `dsv3 generate --reasoning hide|show` splits a <think> part — and the
 *        flags' one-line errors.
 */
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

#include "base/util.h"
#include "util_compare.h"
#include "util_run.h"
#include "util_tok.h"

static char kimi[4200]; /* the K2-shaped model directory */

/** k2-tiny with cl100k_base's vocabulary size + Kimi's reserved slots, and the Kimi tokenizer fixture. */
static int setup(void **state) {
    if (test_tmp_setup(state)) return -1;
    snprintf(kimi, sizeof kimi, "%s/k2", test_tmp);
    RunResult r = run_shell(NULL, "%s mkckpt -o %s --preset k2-tiny --set vocab_size=100512 --seed 3", dsv3_bin(), kimi);
    int ok = r.status == 0;
    if (!ok) fprintf(stderr, "%s", r.err);
    run_result_free(&r);
    return ok && tok_kimi_fixture(kimi, "golden/chat/kimi-k2.jinja") == 0 ? 0 : -1;
}

static void info_names_kimi(void **state) {
    (void)state;
    RunResult r = run_shell(NULL, "%s info -m %s", dsv3_bin(), kimi);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "Kimi K2 (model_type kimi_k2)"));
    assert_non_null(strstr(r.out, "384 routed experts in one group"));
    assert_non_null(strstr(r.out, "beta_fast 1, beta_slow 1"));
    assert_non_null(strstr(r.out, "tiktoken.model (tiktoken BPE), 100512 ids, chat template kimi-k2"));
    run_result_free(&r);
    r = run_shell(NULL, "%s info -m golden/moonlight-tiny", dsv3_bin());
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "Moonlight"));
    assert_non_null(strstr(r.out, "direct q_proj (q_lora_rank null)"));
    run_result_free(&r);
}

static void chat_uses_kimi_template(void **state) {
    (void)state;
    RunResult r = run_shell("[{\"role\": \"user\", \"content\": \"hi\"}]", "%s tokenize --tokenizer %s --chat --file -",
                            dsv3_bin(), kimi);
    assert_int_equal(r.status, 0);
    /* <|im_system|> (100266) first: Kimi's default system prompt, no BOS; the generation prompt last */
    assert_non_null(strstr(r.out, "[100266,"));
    assert_non_null(strstr(r.out, ",100273]")); /* <|im_middle|> */
    run_result_free(&r);
    r = run_shell("hello\nagain\n", "%s chat -m %s -n 3 --temp 0 --seed 1", dsv3_bin(), kimi);
    if (r.status) fprintf(stderr, "%s", r.err);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.err, "kimi-k2 chat template"));
    assert_non_null(strstr(r.err, "[turn 2:"));
    run_result_free(&r);
    r = run_shell("hi\n", "%s chat -m %s -n 2 --think on", dsv3_bin(), kimi);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.err, "--think has no effect with the kimi-k2 template"));
    run_result_free(&r);
}

static void reasoning_flags(void **state) {
    (void)state;
    /* The prompt opens <think>: hidden, the greedy reply's reasoning part prints nothing */
    RunResult shown = run_shell(NULL, "%s generate -m %s -p '<think>' -n 6 --temp 0 --reasoning show", dsv3_bin(), kimi);
    RunResult hidden = run_shell(NULL, "%s generate -m %s -p '<think>' -n 6 --temp 0 --reasoning hide", dsv3_bin(), kimi);
    RunResult raw = run_shell(NULL, "%s generate -m %s -p '<think>' -n 6 --temp 0", dsv3_bin(), kimi);
    assert_int_equal(shown.status, 0);
    assert_int_equal(hidden.status, 0);
    assert_string_equal(shown.out, raw.out); /* not a terminal: shown exactly as generated */
    /* the random model never writes </think>: all six tokens are reasoning */
    if (!strstr(shown.out, "</think>")) assert_string_equal(hidden.out, "\n");
    run_result_free(&shown), run_result_free(&hidden), run_result_free(&raw);
}

static void flag_errors(void **state) {
    (void)state;
    static const struct {
        const char *args, *want;
    } bad[] = {
        { "chat -m %s --think maybe", "--think must be on or off" },
        { "chat -m %s --chat-template chatml", "unknown chat template 'chatml' (known: deepseek-v3" },
        { "generate -m %s -p x --reasoning dim", "--reasoning must be show or hide" },
        { "chat -m %s --chat-template deepseek-r1", "no added token '<｜User｜>'" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char args[512];
        snprintf(args, sizeof args, bad[i].args, kimi);
        RunResult r = run_shell("hi\n", "%s %s", dsv3_bin(), args);
        assert_int_equal(r.status, 2);
        if (!strstr(r.err, bad[i].want)) fprintf(stderr, "%s: %s", args, r.err);
        assert_non_null(strstr(r.err, bad[i].want));
        assert_int_equal(count_lines(r.err), 1);
        run_result_free(&r);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(info_names_kimi),
        cmocka_unit_test(chat_uses_kimi_template),
        cmocka_unit_test(reasoning_flags),
        cmocka_unit_test(flag_errors),
    };
    return cmocka_run_group_tests_name("family_cli", tests, setup, test_tmp_teardown);
}
