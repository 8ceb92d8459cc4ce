/**
 * @file test_ep_cli.c
 * @brief Expert parallelism from the command line (ref/cli/cli_ep.h), through the binary:
 *  - `logits --ep 3` (and `--mtp --ep 2`, `--prefill` split) write the same bytes as one process;
 *  - `generate --ep 2|3` gives the same text greedily, and with sampling + MTP speculation + a seed;
 *  - `generate --batch FILE --ep 3`: the same JSON lines;
 *  - `chat --ep 2`: two turns, the same replies;
 *  - a torchrun-style launch by hand (WORLD_SIZE/RANK/MASTER_PORT, two processes) equals them too;
 *  - bad input: --ep 0, --ep-transport foo, --ep disagreeing with WORLD_SIZE, DSV3_EP_TIMEOUT=abc,
 *    a model without MoE layers, a rank whose rank 0 never comes (a timeout, not a hang):
 *    one line on stderr, a non-zero exit, no output file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "ep/bootstrap.h"
#include "util_compare.h"
#include "util_run.h"

static const char *const TINY = "golden/official-tiny", *const KJV = "models/kjv";
static const char *const IDS = "5,17,3,9,11,2,100,7,64,65,66,1,300";

/** Contents of a file (NULL if absent), its size in *n. */
static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(1 << 22);
    *n = fread(buf, 1, 1 << 22, f);
    fclose(f);
    return buf;
}

/** Runs `dsv3 logits` with @p extra flags into @p name under the test directory, returns the file. */
static char *logits_file(const char *name, const char *extra, size_t *n) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", test_tmp, name);
    RunResult r = run_shell(NULL, "%s logits -m %s --ids %s -o %s %s", dsv3_bin(), TINY, IDS, path, extra);
    if (r.status) fprintf(stderr, "%s", r.err);
    assert_int_equal(r.status, 0);
    run_result_free(&r);
    char *data = slurp(path, n);
    assert_non_null(data);
    return data;
}

static void logits_same_bytes(void **state) {
    (void)state;
    const char *flags[][2] = { { "", "--ep 3" }, { "--prefill 4", "--prefill 4 --ep 2" }, { "--mtp", "--mtp --ep 2" },
                               { "--fp8 w8a8", "--fp8 w8a8 --ep 4" } };
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++) {
        size_t na, nb;
        char *a = logits_file("one.f32", flags[i][0], &na), *b = logits_file("ep.f32", flags[i][1], &nb);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na);
        printf("    logits %s: %zu bytes, identical to one process\n", flags[i][1], na);
        free(a), free(b);
    }
}

static void generate_same_text(void **state) {
    (void)state;
    const char *flags[] = { "--temp 0 -n 32", "--temp 0.8 --seed 3 -n 32 --spec mtp --draft 2" };
    const int ranks[] = { 2, 3 };
    for (int i = 0; i < 2; i++) {
        RunResult a = run_shell(NULL, "%s generate -m %s -p 'And God said' %s", dsv3_bin(), KJV, flags[i]);
        RunResult b = run_shell(NULL, "%s generate -m %s -p 'And God said' %s --ep %d", dsv3_bin(), KJV, flags[i], ranks[i]);
        assert_int_equal(a.status, 0);
        if (b.status) fprintf(stderr, "%s", b.err);
        assert_int_equal(b.status, 0);
        assert_true(a.out_len > 20);
        assert_string_equal(a.out, b.out);
        assert_non_null(strstr(b.err, "routed experts over"));
        printf("    generate %s --ep %d: the same %zu bytes of text\n", flags[i], ranks[i], a.out_len);
        run_result_free(&a), run_result_free(&b);
    }
}

static void batch_same_lines(void **state) {
    (void)state;
    char path[4200];
    snprintf(path, sizeof path, "%s/prompts.txt", test_tmp);
    FILE *f = fopen(path, "w");
    fputs("In the beginning\nAnd God said\nBlessed are the meek\n", f);
    fclose(f);
    const char *flags = "-n 12 --temp 0.7 --seed 9 --parallel 2 -b 4";
    RunResult a = run_shell(NULL, "%s generate -m %s --batch %s %s", dsv3_bin(), KJV, path, flags);
    RunResult b = run_shell(NULL, "%s generate -m %s --batch %s %s --ep 3", dsv3_bin(), KJV, path, flags);
    assert_int_equal(a.status, 0);
    assert_int_equal(b.status, 0);
    assert_int_equal(count_lines(a.out), 3);
    assert_string_equal(a.out, b.out);
    printf("    generate --batch (3 prompts, 2 sequences) --ep 3: the same JSON lines\n");
    run_result_free(&a), run_result_free(&b);
}

static void chat_same_replies(void **state) {
    (void)state;
    const char *turns = "Who was Abraham?\nAnd Isaac?\n";
    RunResult a = run_shell(turns, "%s chat -m %s --temp 0 -n 16", dsv3_bin(), KJV);
    RunResult b = run_shell(turns, "%s chat -m %s --temp 0 -n 16 --ep 2", dsv3_bin(), KJV);
    assert_int_equal(a.status, 0);
    assert_int_equal(b.status, 0);
    assert_true(a.out_len > 10);
    assert_string_equal(a.out, b.out);
    printf("    chat --ep 2, two turns: the same replies\n");
    run_result_free(&a), run_result_free(&b);
}

/** What torchrun does: the same command twice, told WORLD_SIZE, RANK and MASTER_PORT. */
static void launched_by_hand(void **state) {
    (void)state;
    int fd, port;
    Err err;
    assert_int_equal(bootstrap_listen(0, &fd, &port, &err), 0);
    close(fd);
    size_t na, nb;
    char *a = logits_file("one.f32", "", &na);
    RunResult r = run_shell(NULL,
                      "export WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=%d; "
                      "RANK=1 %s logits -m %s --ids %s -o %s/rank1.f32 & "
                      "RANK=0 %s logits -m %s --ids %s -o %s/rank0.f32; s=$?; wait $! || s=9; exit $s",
                      port, dsv3_bin(), TINY, IDS, test_tmp, dsv3_bin(), TINY, IDS, test_tmp);
    if (r.status) fprintf(stderr, "%s", r.err);
    assert_int_equal(r.status, 0);
    run_result_free(&r);
    char path[4200];
    snprintf(path, sizeof path, "%s/rank0.f32", test_tmp);
    char *b = slurp(path, &nb);
    assert_non_null(b);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    snprintf(path, sizeof path, "%s/rank1.f32", test_tmp);
    assert_int_equal(access(path, F_OK), -1); /* only rank 0 writes */
    printf("    WORLD_SIZE=2 by hand: rank 0's file identical, rank 1 wrote nothing\n");
    free(a), free(b);
}

/** A bad command: exit @p status, one line on stderr containing @p want, no output file. */
static void refused(int status, const char *want, const char *env, const char *model, const char *extra) {
    char out[4200];
    snprintf(out, sizeof out, "%s/refused.f32", test_tmp);
    remove(out);
    RunResult r = run_shell(NULL, "%s %s logits -m %s --ids 1,2,3 -o %s %s", env, dsv3_bin(), model, out, extra);
    if (r.status != status || !strstr(r.err, want)) fprintf(stderr, "got %d: %s", r.status, r.err);
    assert_int_equal(r.status, status);
    assert_non_null(strstr(r.err, want));
    assert_int_equal(count_lines(r.err), 1);
    assert_int_equal(access(out, F_OK), -1);
    printf("    %s%s%s -> %d: %s", env, *env ? " " : "", extra, status, r.err);
    run_result_free(&r);
}

static void bad_input(void **state) {
    (void)state;
    refused(2, "--ep", "", TINY, "--ep 0");
    refused(2, "--ep-transport must be nccl or tcp", "", TINY, "--ep-transport foo");
    refused(2, "--ep 2, but the launcher started 3 processes", "WORLD_SIZE=3 RANK=0", TINY, "--ep 2");
    refused(2, "DSV3_EP_TIMEOUT", "DSV3_EP_TIMEOUT=abc", TINY, "--ep 2");
    char dense[4200];
    snprintf(dense, sizeof dense, "%s/dense", test_tmp);
    RunResult r = run_shell(NULL, "%s mkckpt -o %s --preset tiny --set num_hidden_layers=2 --set first_k_dense_replace=2", dsv3_bin(), dense);
    assert_int_equal(r.status, 0);
    run_result_free(&r);
    refused(1, "no MoE layers to split", "", dense, "--ep 2");
    /* rank 1 alone: rank 0 never listens on this port; a clear error after DSV3_EP_TIMEOUT */
    int fd, port;
    Err err;
    assert_int_equal(bootstrap_listen(0, &fd, &port, &err), 0);
    close(fd);
    char env[256];
    snprintf(env, sizeof env, "WORLD_SIZE=2 RANK=1 MASTER_PORT=%d DSV3_EP_TIMEOUT=1", port);
    double t0 = now_seconds();
    refused(1, "rank 1", env, TINY, "");
    assert_true(now_seconds() - t0 < 10.0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(logits_same_bytes),
        cmocka_unit_test(generate_same_text),
        cmocka_unit_test(batch_same_lines),
        cmocka_unit_test(chat_same_replies),
        cmocka_unit_test(launched_by_hand),
        cmocka_unit_test(bad_input),
    };
    return cmocka_run_group_tests_name("ep_cli", tests, test_tmp_setup, test_tmp_teardown);
}
