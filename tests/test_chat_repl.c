/**
 * @file test_chat_repl.c
 * @brief `dsv3 chat` as people use it, on a pseudo-terminal (util_pty.h): line editing (an
 *        arrow key moves the cursor instead of reaching the model as "^[[D"), history, commands
 *        that are not sent to the model, Ctrl-C that stops a reply and returns to the prompt
 *        (twice quits; with --ep the expert servers survive it), an empty line that is ignored,
 *        and a context shift that keeps the session (and the system message) when it fills.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <cjson/cJSON.h>

#include "util_compare.h"
#include "util_pty.h"
#include "util_run.h"

static const char *const KJV = "models/kjv";

static void nap_ms(int ms) { nanosleep(&(struct timespec){ ms / 1000, (ms % 1000) * 1000000L }, NULL); }

/** Starts `dsv3 chat ARGS` on a pty and waits for its first prompt. */
static void start(Pty *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void start(Pty *p, const char *fmt, ...) {
    char args[4096], cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "exec %s chat -m %s %s", dsv3_bin(), KJV, args);
    assert_int_equal(pty_spawn(p, cmd), 0);
    if (pty_expect(p, "> ", 60)) fail_msg("no prompt:\n%s", p->buf);
}

static void expect_text(Pty *p, const char *text, double s) {
    if (pty_expect(p, text, s)) fail_msg("'%s' did not appear within %.0f s; the terminal shows:\n%s", text, s, p->buf + p->seen);
}

static void quit(Pty *p) {
    pty_send(p, "/exit\r");
    int st = pty_wait(p, 30);
    if (st != 0) fail_msg("chat ended with %d; the terminal shows:\n%s", st, p->buf);
}

/** The messages a /save wrote: roles and contents, as a cJSON array (caller frees). */
static cJSON *saved(const char *path) {
    size_t n;
    char *b = (char *)read_bytes(path, &n);
    if (!b) fail_msg("%s was not written", path);
    cJSON *j = cJSON_Parse(b);
    free(b);
    assert_non_null(j);
    return j;
}

static const char *content_of(const cJSON *a, int i) {
    const cJSON *c = cJSON_GetObjectItem(cJSON_GetArrayItem(a, i), "content");
    return cJSON_IsString(c) ? c->valuestring : "";
}

/** "helo", Left, "l", Enter sends "hello"; Up recalls the previous line; the empty line is no message. */
static void line_editing_and_history(void **state) {
    (void)state;
    Pty p;
    char file[4096];
    snprintf(file, sizeof file, "%s/edit.json", test_tmp);
    start(&p, "--temp 0 -n 4");
    pty_send(&p, "\r"); /* an empty line: ignored (it used to end the chat) */
    expect_text(&p, "> ", 60);
    pty_send(&p, "helo\x1b[Dl\r");
    expect_text(&p, "[turn 1", 60);
    expect_text(&p, "> ", 60);
    pty_send(&p, "/help\r");
    expect_text(&p, "/reset", 60);
    expect_text(&p, "> ", 60);
    pty_send(&p, "\x1b[A\r"); /* Up: /help again */
    expect_text(&p, "/reset", 60);
    expect_text(&p, "> ", 60);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "/save %s\r", file);
    pty_send(&p, cmd);
    expect_text(&p, "[saved 2 messages", 60);
    quit(&p);
    pty_free(&p);
    cJSON *a = saved(file);
    assert_int_equal(cJSON_GetArraySize(a), 2); /* /help and the empty line were not messages */
    assert_string_equal(content_of(a, 0), "hello");
    cJSON_Delete(a);
}

/** Ctrl-C stops a long reply and returns to the prompt; the chat goes on; Ctrl-C twice at the prompt quits. */
static void ctrl_c_stops_the_reply(const char *extra) {
    Pty p;
    start(&p, "--temp 0.8 -s 3 -n 100000 %s", extra);
    pty_send(&p, "And God said\r");
    expect_text(&p, " ", 60); /* the reply has started */
    nap_ms(300);
    pty_send(&p, "\x03");
    expect_text(&p, "[stopped]", 60);
    expect_text(&p, "> ", 60);
    pty_send(&p, "Let there be light\r"); /* the session goes on (with --ep: the servers did not die of the Ctrl-C) */
    nap_ms(300);
    pty_send(&p, "\x03");
    expect_text(&p, "[stopped]", 60);
    expect_text(&p, "[turn 2", 60);
    expect_text(&p, "> ", 60);
    pty_send(&p, "\x03"); /* once at the prompt, right after a stopped reply: quit */
    int st = pty_wait(&p, 30);
    if (st != 0) fail_msg("Ctrl-C twice: exit %d; the terminal shows:\n%s", st, p.buf);
    pty_free(&p);
    /* at a fresh prompt, one Ctrl-C only clears the line */
    start(&p, "--temp 0 -n 4 %s", extra);
    pty_send(&p, "typed but not sent\x03");
    expect_text(&p, "Ctrl-C again", 60);
    expect_text(&p, "> ", 60);
    pty_send(&p, "\x03");
    st = pty_wait(&p, 30);
    assert_int_equal(st, 0);
    assert_null(strstr(p.buf, "[turn 1"));
    pty_free(&p);
}

static void ctrl_c(void **state) {
    (void)state;
    ctrl_c_stops_the_reply("");
}

static void ctrl_c_ep(void **state) {
    (void)state;
    ctrl_c_stops_the_reply("--ep 2");
}

/** A context that fills: the oldest turns go, the system message stays, the chat goes on (it used to exit). */
static void context_shift(void **state) {
    (void)state;
    char file[4096], script[16384];
    snprintf(file, sizeof file, "%s/shift.json", test_tmp);
    snprintf(script, sizeof script,
             "And God said unto Moses\nLet there be light\nAnd the earth was without form\nIn the beginning\n"
             "And the LORD spake\n/save %s\n", file);
    RunResult r = run_shell(script, "%s chat -m %s --temp 0 -n 24 -c 64 -sys 'Speak as the King James Bible.'", dsv3_bin(), KJV);
    if (r.status != 0) fail_msg("exit %d: %s", r.status, r.err);
    assert_non_null(strstr(r.err, "[context full: dropped the"));
    assert_non_null(strstr(r.err, "kept the system message"));
    assert_non_null(strstr(r.err, "[turn 5"));
    run_result_free(&r);
    cJSON *a = saved(file);
    assert_true(cJSON_GetArraySize(a) >= 3);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(a, 0), "role")), "system");
    assert_string_equal(content_of(a, 0), "Speak as the King James Bible.");
    int n = cJSON_GetArraySize(a);
    assert_string_equal(content_of(a, n - 2), "And the LORD spake"); /* the last turn is kept */
    cJSON_Delete(a);
}

/** /save then /load in a new chat continues the conversation; /reset and /system are commands, not messages. */
static void save_load_reset_system(void **state) {
    (void)state;
    char file[4096], script[16384], out2[4096];
    snprintf(file, sizeof file, "%s/conv.json", test_tmp);
    snprintf(out2, sizeof out2, "%s/conv2.json", test_tmp);
    snprintf(script, sizeof script, "And God said\n/save %s\n", file);
    RunResult r = run_shell(script, "%s chat -m %s --temp 0 -n 6", dsv3_bin(), KJV);
    assert_int_equal(r.status, 0);
    run_result_free(&r);
    snprintf(script, sizeof script, "/load %s\nLet there be\n/system Be brief.\n/save %s\n/reset\n/bogus\n/save %s.reset\n", file,
             out2, out2);
    r = run_shell(script, "%s chat -m %s --temp 0 -n 6", dsv3_bin(), KJV);
    if (r.status != 0) fail_msg("exit %d: %s", r.status, r.err);
    assert_non_null(strstr(r.err, "[loaded 2 messages"));
    assert_non_null(strstr(r.err, "unknown command /bogus"));
    run_result_free(&r);
    cJSON *a = saved(out2);
    assert_int_equal(cJSON_GetArraySize(a), 5); /* system + the loaded pair + the new pair */
    assert_string_equal(content_of(a, 0), "Be brief.");
    assert_string_equal(content_of(a, 1), "And God said");
    assert_string_equal(content_of(a, 3), "Let there be");
    cJSON_Delete(a);
    char reset[4200];
    snprintf(reset, sizeof reset, "%s.reset", out2);
    a = saved(reset);
    assert_int_equal(cJSON_GetArraySize(a), 1); /* only the system message survives /reset */
    cJSON_Delete(a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(line_editing_and_history), cmocka_unit_test(ctrl_c), cmocka_unit_test(ctrl_c_ep),
        cmocka_unit_test(context_shift),            cmocka_unit_test(save_load_reset_system),
    };
    return cmocka_run_group_tests_name("chat_repl", tests, test_tmp_setup, test_tmp_teardown);
}
