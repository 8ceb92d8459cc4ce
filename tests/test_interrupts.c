/**
 * @file test_interrupts.c
 * @brief What an interrupt does to the commands that write (build/dsv3): `train` saves on
 *        SIGINT/SIGTERM and resumes on the same trajectory with the same saving schedule, checks
 *        its run directory before step 1; `mkckpt` and `train-tokenizer` killed at chosen points
 *        (the DSV3_TEST_KILL_AFTER hook, SIGKILL) leave the old output and no temporaries; inputs
 *        that would block (FIFOs) and outputs that are device nodes are handled.
 */
#define _GNU_SOURCE /* mknod, makedev, memmem */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/outfile.h"
#include "util_compare.h"
#include "util_run.h"

/** A small model that still takes ~10 ms a step, so a signal lands mid-run. */
static const char MODEL[] = "--preset tiny --vocab 64 --set hidden_size=32 --set num_hidden_layers=2 -b 2 -T 32";

static char data_path[4096];

static int setup(void **state) {
    if (test_tmp_setup(state)) return -1;
    snprintf(data_path, sizeof data_path, "%s/ids.bin", test_tmp);
    FILE *f = fopen(data_path, "wb");
    if (!f) return -1;
    uint64_t x = 7;
    for (int i = 0; i < 20000; i++) { /* a few repeating phrases of ids < 64 */
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        static const unsigned char ph[4][4] = { { 3, 17, 8, 41 }, { 22, 5, 5, 30 }, { 9, 44, 12, 0 }, { 31, 2, 19, 7 } };
        unsigned char b[4] = { ph[(x >> 33) % 4][i % 4], 0, 0, 0 };
        if (fwrite(b, 1, 4, f) != 4) return -1;
    }
    return fclose(f);
}

static int temps_in(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) n += out_is_temp_name(de->d_name);
    closedir(d);
    return n;
}

/** Starts `dsv3 ARGS` (split on spaces) with stdout and stderr to files; returns its pid. */
static pid_t spawn_dsv3(const char *args_in, const char *out, const char *errf) {
    static char args[8192];
    snprintf(args, sizeof args, "%s", args_in);
    pid_t pid = fork();
    if (pid == 0) {
        char *argv[64];
        int argc = 0;
        argv[argc++] = (char *)dsv3_bin();
        for (char *t = strtok(args, " "); t && argc < 63; t = strtok(NULL, " ")) argv[argc++] = t;
        argv[argc] = NULL;
        signal(SIGINT, SIG_DFL), signal(SIGTERM, SIG_DFL);
        if (!freopen(out, "w", stdout) || !freopen(errf, "w", stderr)) _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/**
 * SIGINT (and SIGTERM) in the middle of a run with default flags (no --save-every): the step is
 * finished, a checkpoint saved, the message says how to resume, and the resumed run equals the
 * uninterrupted one bit for bit. (Before: nothing was saved, the run was lost.)
 */
static void train_signal_saves(int sig) {
    const int N = 60;
    char full[4096], cut[4096];
    snprintf(full, sizeof full, "%s/full%d", test_tmp, sig);
    snprintf(cut, sizeof cut, "%s/cut%d", test_tmp, sig);
    RunResult r = run_shell(NULL, "%s train --train %s %s -n %d -o %s --log %s.log > /dev/null", dsv3_bin(), data_path, MODEL, N, full, full);
    assert_int_equal(r.status, 0);
    run_result_free(&r);
    /* Started here rather than with '&' in sh: a shell without job control starts background jobs with SIGINT ignored. */
    char args[8192], errp[4200], logp[4200];
    snprintf(logp, sizeof logp, "%s.log", cut);
    snprintf(errp, sizeof errp, "%s.err", cut);
    snprintf(args, sizeof args, "train --train %s %s -n %d -o %s --log %s", data_path, MODEL, N, cut, logp);
    pid_t pid = spawn_dsv3(args, "/dev/null", errp);
    for (int waited = 0;; waited++) { /* until step 5 is logged */
        size_t n;
        char *log = (char *)read_bytes(logp, &n);
        int seen = log && strstr(log, "\"step\":5,");
        free(log);
        if (seen) break;
        if (waited > 60000) fail_msg("train logged no step 5 in 60 s");
        nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    }
    assert_int_equal(kill(pid, sig), 0);
    int st, status;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    size_t en;
    r.err = (char *)read_bytes(errp, &en);
    r.out = NULL;
    assert_non_null(r.err);
    if (status != 128 + sig) fail_msg("interrupted train exited %d (want %d): %s", status, 128 + sig, r.err);
    assert_non_null(strstr(r.err, "continue with: dsv3 train --resume"));
    assert_non_null(strstr(r.err, sig == SIGINT ? "SIGINT" : "SIGTERM"));
    run_result_free(&r);
    char latest[4200];
    snprintf(latest, sizeof latest, "%s/latest/optimizer.safetensors", cut);
    assert_int_equal(access(latest, R_OK), 0);
    assert_int_equal(temps_in(cut), 0);
    r = run_shell(NULL, "%s train --resume %s --train %s --log %s.log > /dev/null", dsv3_bin(), cut, data_path, cut);
    if (r.status != 0) fail_msg("resume: %s", r.err);
    run_result_free(&r);
    static char a[64][40], b[64][40];
    memset(a, 0, sizeof a), memset(b, 0, sizeof b);
    char p1[4200], p2[4200];
    snprintf(p1, sizeof p1, "%s.log", full);
    snprintf(p2, sizeof p2, "%s.log", cut);
    assert_int_equal(read_step_losses(p1, a, 64), N);
    assert_int_equal(read_step_losses(p2, b, 64), N);
    for (int s = 0; s < N; s++)
        if (strcmp(a[s], b[s])) fail_msg("step %d: loss %s uninterrupted, %s interrupted and resumed", s + 1, a[s], b[s]);
    snprintf(p1, sizeof p1, "%s/latest/model.safetensors", full);
    snprintf(p2, sizeof p2, "%s/latest/model.safetensors", cut);
    size_t n1, n2;
    unsigned char *x = read_bytes(p1, &n1), *y = read_bytes(p2, &n2);
    assert_non_null(x);
    assert_non_null(y);
    assert_int_equal(n1, n2);
    assert_memory_equal(x, y, n1);
    free(x), free(y);
}

static void train_sigint_saves(void **state) {
    (void)state;
    train_signal_saves(SIGINT);
}

static void train_sigterm_saves(void **state) {
    (void)state;
    train_signal_saves(SIGTERM);
}

/** --resume keeps the saving schedule: --save-every 2 given once still saves every 2 steps after resuming. */
static void train_resume_keeps_schedule(void **state) {
    (void)state;
    char run[4096];
    snprintf(run, sizeof run, "%s/sched", test_tmp);
    RunResult r = run_shell(NULL, "%s train --train %s %s -n 8 --save-every 2 --keep 0 --save-format bf16 -o %s --stop-after 3 > /dev/null",
                     dsv3_bin(), data_path, MODEL, run);
    assert_int_equal(r.status, 0);
    run_result_free(&r);
    r = run_shell(NULL, "%s train --resume %s --train %s > /dev/null", dsv3_bin(), run, data_path);
    if (r.status != 0) fail_msg("resume: %s", r.err);
    run_result_free(&r);
    const char *want[] = { "step_00000002", "step_00000003", "step_00000004", "step_00000006", "step_00000008" };
    for (int i = 0; i < 5; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%s/config.json", run, want[i]);
        if (access(p, F_OK) != 0) fail_msg("%s missing: the resumed run dropped --save-every 2 (or --keep 0)", want[i]);
    }
    /* and the format: bf16 model files (with FP32 masters in the sidecar) */
    char p[4200];
    snprintf(p, sizeof p, "%s/step_00000008/model.safetensors", run);
    size_t n;
    char *bytes = (char *)read_bytes(p, &n);
    assert_non_null(bytes);
    if (!memmem(bytes, n < 65536 ? n : 65536, "\"BF16\"", 6)) fail_msg("step 8 is not BF16: the resumed run dropped --save-format");
    free(bytes);
}

/** An unusable run directory fails before the first step, not after all of them. */
static void train_checks_run_dir_first(void **state) {
    (void)state;
    char blocker[4096];
    snprintf(blocker, sizeof blocker, "%s/a-file", test_tmp);
    FILE *f = fopen(blocker, "w");
    fclose(f);
    RunResult r = run_shell(NULL, "%s train --train %s %s -n 50 -o %s/run", dsv3_bin(), data_path, MODEL, blocker);
    assert_int_not_equal(r.status, 0);
    if (strstr(r.out, "step ")) fail_msg("steps ran before the run directory was checked:\n%s", r.out);
    assert_non_null(strstr(r.err, "a-file/run"));
    assert_int_equal(count_lines(r.err), 1);
    run_result_free(&r);
}

/** mkckpt killed mid-write (SIGTERM at a chosen write; SIGKILL): the old checkpoint stays, nothing partial remains. */
static void mkckpt_killed(void **state) {
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/ck", test_tmp);
    RunResult r = run_shell(NULL, "%s mkckpt --preset tiny --format bf16 -o %s 2>/dev/null", dsv3_bin(), dir);
    assert_int_equal(r.status, 0);
    run_result_free(&r);
    r = run_shell(NULL, "DSV3_TEST_KILL_AFTER=30 %s mkckpt --preset tiny --format f32 --shards 4 -o %s 2>/dev/null", dsv3_bin(), dir);
    assert_int_equal(r.status, 128 + SIGTERM);
    run_result_free(&r);
    assert_int_equal(temps_in(test_tmp), 0);
    r = run_shell(NULL, "%s info -m %s", dsv3_bin(), dir);
    if (r.status != 0) fail_msg("the old checkpoint no longer loads: %s", r.err);
    run_result_free(&r);
    char p[4200];
    snprintf(p, sizeof p, "%s/model-00001-of-00004.safetensors", dir);
    assert_int_equal(access(p, F_OK), -1); /* was: partial shards beside the old file */
    /* SIGKILL cannot be caught: the temporary stays, and the next mkckpt in that directory removes it */
    r = run_shell(NULL, "%s mkckpt --preset mini -o %s/big 2>/dev/null & pid=$!; sleep 0.3; kill -9 $pid; wait $pid; true", dsv3_bin(), test_tmp);
    run_result_free(&r);
    r = run_shell(NULL, "%s mkckpt --preset tiny -o %s/other 2>/dev/null", dsv3_bin(), test_tmp);
    assert_int_equal(r.status, 0);
    run_result_free(&r);
    assert_int_equal(temps_in(test_tmp), 0);
}

/** train-tokenizer killed between its two files: neither is written; then both are. */
static void train_tokenizer_killed(void **state) {
    (void)state;
    char text[4096];
    snprintf(text, sizeof text, "%s/corpus.txt", test_tmp);
    FILE *f = fopen(text, "w");
    for (int i = 0; i < 200; i++) fputs("the quick brown fox jumps over the lazy dog. ", f);
    fclose(f);
    RunResult r = run_shell(NULL, "DSV3_TEST_KILL_AFTER=2 %s train-tokenizer --input %s --vocab-size 300 --output %s/tok 2>&1", dsv3_bin(),
                     text, test_tmp);
    assert_int_equal(r.status, 128 + SIGTERM);
    run_result_free(&r);
    char p[4200];
    snprintf(p, sizeof p, "%s/tok/tokenizer.json", test_tmp);
    assert_int_equal(access(p, F_OK), -1);
    assert_int_equal(temps_in(test_tmp), 0);
    r = run_shell(NULL, "%s train-tokenizer --input %s --vocab-size 300 --output %s/tok 2>&1", dsv3_bin(), text, test_tmp);
    assert_int_equal(r.status, 0);
    run_result_free(&r);
    assert_int_equal(access(p, F_OK), 0);
}

/** FIFOs with no writer as inputs: one-line errors at once (each command used to block forever). */
static void fifo_inputs(void **state) {
    (void)state;
    char fifo[4096];
    snprintf(fifo, sizeof fifo, "%s/in.fifo", test_tmp);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    const char *cmds[] = {
        "tokenize --tokenizer golden/tokenizer/deepseek-v3 --file %s",
        "tokenize --tokenizer %s --text hi",
        "detokenize --tokenizer golden/tokenizer/deepseek-v3 --file %s",
        "generate -m golden/official-tiny -f %s -n 1",
        "train --preset tiny -n 1 --train %s",
        "train-tokenizer --vocab-size 300 --output /nonexistent/x --input %s",
        "logits -m %s --ids 1,2 -o /dev/null",
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char c[8192], line[4096];
        snprintf(line, sizeof line, cmds[i], fifo);
        snprintf(c, sizeof c, "timeout 20 %s %s", dsv3_bin(), line);
        RunResult r = run_shell(NULL, "%s", c);
        if (r.status == 124) fail_msg("%s: blocked on the FIFO", line);
        assert_int_not_equal(r.status, 0);
        if (count_lines(r.err) != 1 || !strstr(r.err, "in.fifo")) fail_msg("%s: want one line naming the FIFO, got: %s", line, r.err);
        run_result_free(&r);
    }
}

/** -o on a device node made here: it stays a device node (it used to be replaced by a regular file). */
static void device_node_output(void **state) {
    (void)state;
    char dev[4096];
    snprintf(dev, sizeof dev, "%s/null-dev", test_tmp);
    assert_int_equal(mknod(dev, S_IFCHR | 0666, makedev(1, 3)), 0);
    RunResult r = run_shell(NULL, "%s logits -m golden/official-tiny --ids 1,2,3 -o %s", dsv3_bin(), dev);
    if (r.status != 0) fail_msg("logits -o device: %s", r.err);
    run_result_free(&r);
    struct stat sb;
    assert_int_equal(stat(dev, &sb), 0);
    assert_true(S_ISCHR(sb.st_mode));
    assert_int_equal(temps_in(test_tmp), 0);
}

/** The first child process of @p pid (Linux /proc), or -1. */
static pid_t first_child(pid_t pid) {
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/task/%d/children", (int)pid, (int)pid);
    FILE *f = fopen(p, "r");
    int c = -1;
    if (f) {
        if (fscanf(f, "%d", &c) != 1) c = -1;
        fclose(f);
    }
    return c;
}

/** Waits until @p path contains @p text (at most 60 s), then @p settle_ms more. */
static void wait_text(const char *path, const char *text, int settle_ms) {
    for (int i = 0; i < 60000; i++) {
        size_t n;
        char *b = (char *)read_bytes(path, &n);
        int found = b && strstr(b, text);
        free(b);
        if (found) {
            nanosleep(&(struct timespec){ settle_ms / 1000, (settle_ms % 1000) * 1000000L }, NULL);
            return;
        }
        nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    }
    fail_msg("%s: '%s' never appeared", path, text);
}

/**
 * --ep 2 with the expert server stopped (SIGSTOP) mid-generation: rank 0 fails within about
 * DSV3_EP_TIMEOUT with one line naming the rank, and the stopped server does not outlive it.
 * (Before: rank 0 waited forever.) A server stopped for less than the limit is waited for.
 */
static void ep_stopped_server(void **state) {
    (void)state;
    char out[4096], errf[4096];
    snprintf(out, sizeof out, "%s/ep.out", test_tmp);
    snprintf(errf, sizeof errf, "%s/ep.err", test_tmp);
    setenv("DSV3_EP_TIMEOUT", "3", 1);
    alarm(120); /* a rank 0 that waits forever fails the test instead of hanging it */
    /* stopped for 1 s (< 3): the run goes on and finishes */
    pid_t pid = spawn_dsv3("generate -m models/kjv --ep 2 -p And -n 800 -s 1 --temp 0", out, errf);
    wait_text(errf, "routed experts over 2 processes", 300); /* generating by now */
    pid_t server = first_child(pid);
    assert_true(server > 0);
    assert_int_equal(kill(server, SIGSTOP), 0);
    sleep(1);
    assert_int_equal(kill(server, SIGCONT), 0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    size_t n;
    char *e = (char *)read_bytes(errf, &n);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail_msg("a server stopped for 1 s of 3 broke the run: %s", e);
    free(e);
    /* stopped for good */
    pid = spawn_dsv3("generate -m models/kjv --ep 2 -p And -n 3000 -s 1", out, errf);
    wait_text(errf, "routed experts over 2 processes", 300);
    server = first_child(pid);
    assert_true(server > 0);
    assert_int_equal(kill(server, SIGSTOP), 0);
    double t0 = now_seconds();
    assert_int_equal(waitpid(pid, &st, 0), pid);
    double waited = now_seconds() - t0;
    unsetenv("DSV3_EP_TIMEOUT");
    e = (char *)read_bytes(errf, &n);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    if (!strstr(e, "rank 1 sent nothing for 3 s")) fail_msg("no line naming the stopped rank: %s", e);
    if (waited > 20) fail_msg("rank 0 took %.1f s to give up on a stopped server (limit 3 s)", waited);
    free(e);
    printf("    stopped expert server: rank 0 failed after %.1f s, naming rank 1\n", waited);
    for (int i = 0; i < 100 && kill(server, 0) == 0; i++) nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
    assert_int_equal(kill(server, 0), -1); /* SIGTERM + SIGCONT: it did not stay behind, stopped */
    alarm(0);
}

/** A chat whose user pauses longer than DSV3_EP_TIMEOUT: the idle servers are not mistaken for dead ones. */
static void ep_idle_is_alive(void **state) {
    (void)state;
    RunResult r = run_shell(NULL, "(echo 'And God said'; sleep 3; echo 'Let there be') | DSV3_EP_TIMEOUT=1 %s chat -m models/kjv --temp 0 -n 8 --ep 2",
                     dsv3_bin());
    if (r.status != 0) fail_msg("chat --ep 2 with a 3 s pause (limit 1 s): exit %d: %s", r.status, r.err);
    run_result_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(train_sigint_saves),    cmocka_unit_test(train_sigterm_saves),
        cmocka_unit_test(train_resume_keeps_schedule), cmocka_unit_test(train_checks_run_dir_first),
        cmocka_unit_test(mkckpt_killed),         cmocka_unit_test(train_tokenizer_killed),
        cmocka_unit_test(fifo_inputs),           cmocka_unit_test(device_node_output),
        cmocka_unit_test(ep_stopped_server),     cmocka_unit_test(ep_idle_is_alive),
    };
    return cmocka_run_group_tests_name("interrupts", tests, setup, test_tmp_teardown);
}
