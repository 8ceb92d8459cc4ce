/**
 * @file test_threads_cli.c
 * @brief The binary gives byte-identical output for every thread count: `dsv3 logits`,
 *        `dsv3 generate` (greedy and sampled with a seed) and two `dsv3 train` steps, each run
 *        on 1, 2 and 3 threads (on a 2-core machine 3 oversubscribes: a count that divides
 *        nothing evenly), on the bundled trained model models/kjv.
 *
 * tests/test_threads.c checks the same at library level; this checks that the commands pass the
 * thread count on and add nothing that depends on it (the logits file, the streamed text, the
 * saved checkpoint and optimizer state are compared byte for byte). The count is given as
 * `--threads N` where the command has the flag, and always as OMP_NUM_THREADS=N, which
 * OpenMP's loops use when nothing sets a count.
 */
#define _DEFAULT_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util_run.h"

#define MODEL "models/kjv"
static const int counts[] = { 1, 2, 3 };
#define N_COUNTS 3

static char dir[64]; /* a fresh temporary directory */

/** Whole file into a malloc'd buffer (*n bytes); NULL when it cannot be read. */
static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + len, 1, cap - len, f)) > 0;) {
        len += got;
        if (len == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    *n = len;
    return buf;
}

/** Asserts that files a and b exist and have the same bytes. */
static void assert_same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    if (!x || !y) fail_msg("cannot read %s or %s", a, b);
    if (na != nb || memcmp(x, y, na) != 0) fail_msg("%s (%zu bytes) and %s (%zu bytes) differ", a, na, b, nb);
    assert_true(na > 0);
    free(x);
    free(y);
}

/** "OMP_NUM_THREADS=N <bin> <cmd>" plus " --threads N" when @p cmd's help lists that flag. */
static void thread_prefix(char *out, size_t cap, const char *cmd, int n) {
    RunResult r = run_shell(NULL, "%s %s --help", dsv3_bin(), cmd);
    int has_flag = strstr(r.out, "--threads") != NULL || strstr(r.err, "--threads") != NULL;
    run_result_free(&r);
    snprintf(out, cap, "OMP_NUM_THREADS=%d %s %s", n, dsv3_bin(), cmd);
    if (has_flag) snprintf(out + strlen(out), cap - strlen(out), " --threads %d", n);
}

/** Runs `prefix args` for every count; asserts exit 0 and, if @p same_stdout, equal stdout. */
static void run_counts(const char *cmd, const char *fmt_args, int same_stdout) {
    char *first = NULL;
    for (int k = 0; k < N_COUNTS; k++) {
        char prefix[512], args[2048];
        thread_prefix(prefix, sizeof prefix, cmd, counts[k]);
        snprintf(args, sizeof args, fmt_args, counts[k]); /* %d: the thread count, for output names */
        RunResult r = run_shell(NULL, "%s %s", prefix, args);
        if (r.status != 0) fail_msg("%s %s: exit %d: %s", prefix, args, r.status, r.err);
        if (same_stdout) {
            assert_true(r.out_len > 0);
            if (!first) first = strdup(r.out);
            else if (strcmp(first, r.out) != 0) fail_msg("%s: stdout on %d threads differs from 1 thread:\n%s\n---\n%s", cmd, counts[k], r.out, first);
        }
        run_result_free(&r);
    }
    free(first);
}

static void logits_agree(void **state) {
    (void)state;
    char ids[512] = "", args[1024], a[128], b[128];
    for (int i = 0; i < 40; i++) snprintf(ids + strlen(ids), sizeof ids - strlen(ids), "%s%d", i ? "," : "", (i * 977 + 5) % 4096);
    /* a 32-token prefill chunk then single steps (absorbed attention); the naive form all at once */
    snprintf(args, sizeof args, "-m %s --ids %s --prefill 32 -o %s/absorb_%%d.f32", MODEL, ids, dir);
    run_counts("logits", args, 0);
    snprintf(args, sizeof args, "-m %s --ids %s --attn naive -o %s/naive_%%d.f32", MODEL, ids, dir);
    run_counts("logits", args, 0);
    for (int k = 1; k < N_COUNTS; k++) {
        snprintf(a, sizeof a, "%s/absorb_1.f32", dir);
        snprintf(b, sizeof b, "%s/absorb_%d.f32", dir, counts[k]);
        assert_same_file(a, b);
        snprintf(a, sizeof a, "%s/naive_1.f32", dir);
        snprintf(b, sizeof b, "%s/naive_%d.f32", dir, counts[k]);
        assert_same_file(a, b);
    }
    printf("    logits of 40 positions (absorb, prefill 32 + 8 steps; naive): -t 1 == -t 2 == -t 3\n");
}

static void generate_agrees(void **state) {
    (void)state;
    run_counts("generate", "-m " MODEL " -p 'In the beginning God' -n 48 --temp 0", 1);
    run_counts("generate", "-m " MODEL " -p 'And it came to pass' -n 48 --temp 0.8 --seed 7", 1);
    printf("    generate greedy and sampled (T 0.8, seed 7), 48 tokens: the same text on 1, 2 and 3 threads\n");
}

static void train_agrees(void **state) {
    (void)state;
    char data[128], args[1024];
    snprintf(data, sizeof data, "%s/ids.bin", dir);
    FILE *f = fopen(data, "wb");
    assert_non_null(f);
    uint32_t x = 12345;
    for (int i = 0; i < 2000; i++) {
        x = x * 1103515245u + 12345u;
        uint32_t id = (x >> 8) % 4096;
        fwrite(&id, sizeof id, 1, f);
    }
    fclose(f);
    /* two AdamW steps from the trained weights (forward, backward, MTP, the bias update) */
    snprintf(args, sizeof args, "--train %s --init %s -n 2 -b 2 --seq-len 32 --val-every 0 -o %s/run_%%d > /dev/null", data,
             MODEL, dir);
    run_counts("train", args, 0);
    const char *files[] = { "model.safetensors", "optimizer.safetensors" };
    for (int k = 1; k < N_COUNTS; k++)
        for (int j = 0; j < 2; j++) {
            char a[256], b[256];
            snprintf(a, sizeof a, "%s/run_1/step_00000002/%s", dir, files[j]);
            snprintf(b, sizeof b, "%s/run_%d/step_00000002/%s", dir, counts[k], files[j]);
            assert_same_file(a, b);
        }
    printf("    train, 2 steps: the same model.safetensors and optimizer.safetensors on 1, 2 and 3 threads\n");
}

static int setup(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/dsv3_threads_cli_XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    RunResult r = run_shell(NULL, "rm -rf '%s'", dir);
    run_result_free(&r);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(logits_agree),
        cmocka_unit_test(generate_agrees),
        cmocka_unit_test(train_agrees),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
