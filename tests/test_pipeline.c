/**
 * @file test_pipeline.c
 * @brief The pipeline schedules (ref/train/pipeline.h) against the paper's Table 2:
 *  - a sweep of PP (even, 2..16) and M (2·PP .. 2·PP+10) for 1F1B, ZB1P, DualPipe and DualPipeV
 *    (DualPipeV: PP stages on PP/2 ranks), each with random chunk times: the simulated bubble equals
 *    the formula, the peak activations per rank equal PP (PP+1), the parameter copies 1× (2×), and the
 *    independent checker passes. 1F1B holds for any times, ZB1P for W ≤ F and W ≤ B − W (a held-back
 *    W must fit the gap it fills; the zero-bubble paper draws F = B_in = W), both for odd PP/M too; DualPipe's
 *    formula assumes B − W = F (a backward for inputs costs a forward, as in the paper's Fig. 5),
 *    W ≤ F and F + W ≤ F&B ≤ F + B: the times are drawn inside those conditions, and one case
 *    outside them shows the simulation is not the formula;
 *  - the checker rejects a schedule whose operation runs before its input exists, a chunk run twice,
 *    a stage on the wrong rank; the simulator reports a deadlock instead of hanging;
 *  - `dsv3 pipeline` prints the same numbers; --png writes a PNG (or, without gnuplot, a one-line
 *    error and no file); bad flags are one-line errors.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "train/pipeline.h"
#include "util_compare.h"
#include "util_run.h"

static double uniform(uint64_t *s, double lo, double hi) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (double)(*s >> 11) / 9007199254740992.0;
}

/** Chunk times: any for 1F1B/ZB1P, inside DualPipe's conditions otherwise (see the file comment). */
static PipeTimes draw_times(PipeKind k, uint64_t *seed) {
    PipeTimes t = { 0 };
    t.f = uniform(seed, 0.5, 2.0);
    if (k == PIPE_1F1B || k == PIPE_ZB1P) {
        t.b = uniform(seed, 0.5, 4.0);
        t.w = uniform(seed, 0, k == PIPE_ZB1P ? fmin(t.f, t.b / 2) : t.b);
        t.fb = uniform(seed, 0, 6.0);
    } else {
        t.w = uniform(seed, 0, t.f);
        t.b = t.f + t.w;
        t.fb = uniform(seed, t.f + t.w, t.f + t.b);
    }
    return t;
}

static void table2_sweep(void **state) {
    (void)state;
    uint64_t seed = 20241227;
    PipeKind kinds[4] = { PIPE_1F1B, PIPE_ZB1P, PIPE_DUALPIPE, PIPE_DUALPIPEV };
    for (int k = 0; k < 4; k++) {
        int cases = 0;
        double worst = 0;
        for (int pp = 2; pp <= 16; pp += (kinds[k] == PIPE_1F1B || kinds[k] == PIPE_ZB1P) ? 1 : 2)
            for (int M = 2 * pp; M <= 2 * pp + 10; M += (kinds[k] == PIPE_DUALPIPE) ? 2 : 1)
                for (int rep = 0; rep < 3; rep++) {
                    PipeTimes t = draw_times(kinds[k], &seed);
                    PipeSchedule s;
                    PipeStats st;
                    Err err = { "" };
                    int rc = pipe_run(&s, kinds[k], pp, M, &t, &st, &err);
                    if (rc) fprintf(stderr, "%s\n", err.msg);
                    assert_int_equal(rc, 0);
                    int act, params;
                    double want = pipe_formula(kinds[k], s.n_ranks, &t, &act, &params);
                    if (fabs(st.bubble - want) > 1e-9 * (1 + want) || st.peak_act != act || st.param_copies != params)
                        fprintf(stderr, "%s PP %d M %d (F %g B %g W %g F&B %g): bubble %.12g, Table 2 %.12g; activations %d vs %d\n",
                                pipe_kind_name(kinds[k]), pp, M, t.f, t.b, t.w, t.fb, st.bubble, want, st.peak_act, act);
                    assert_true(fabs(st.bubble - want) <= 1e-9 * (1 + want));
                    assert_int_equal(st.peak_act, act);
                    assert_int_equal(st.param_copies, params);
                    assert_int_equal(s.n_stages, pp);
                    worst = fmax(worst, fabs(st.bubble - want));
                    cases++;
                    pipe_free(&s);
                }
        printf("    %-9s %d schedules (PP 2..16, M 2PP..2PP+10, random chunk times) = Table 2 (max |diff| %.1e)\n",
               pipe_kind_name(kinds[k]), cases, worst);
    }
}

static void outside_the_conditions(void **state) {
    (void)state;
    /* B − W = 1.5 ≠ F: the schedule is still valid, its bubble is not Table 2's */
    PipeTimes t = { 1, 2, 0.5, 2.5, 0 };
    PipeSchedule s;
    PipeStats st;
    Err err;
    assert_int_equal(pipe_run(&s, PIPE_DUALPIPE, 8, 20, &t, &st, &err), 0);
    double want = pipe_formula(PIPE_DUALPIPE, 8, &t, NULL, NULL);
    printf("    DualPipe PP 8, F 1 B 2 W 0.5 F&B 2.5: simulated bubble %g, Table 2 %g\n", st.bubble, want);
    assert_true(fabs(st.bubble - want) > 0.1);
    pipe_free(&s);
    /* communication latency lengthens every schedule */
    PipeTimes tc = { 1, 2, 1, 2.5, 0.25 };
    PipeStats sc;
    assert_int_equal(pipe_run(&s, PIPE_1F1B, 4, 8, &tc, &sc, &err), 0);
    assert_true(sc.bubble > pipe_formula(PIPE_1F1B, 4, &tc, NULL, NULL));
    pipe_free(&s);
}

static void checker_and_deadlock(void **state) {
    (void)state;
    PipeTimes t = { 1, 2, 1, 2.5, 0 };
    PipeSchedule s;
    PipeStats st;
    Err err;
    assert_int_equal(pipe_run(&s, PIPE_DUALPIPE, 4, 8, &t, &st, &err), 0);
    /* an operation moved before its input exists */
    PipeOp *op = &s.ops[1][0];
    double keep = op->start;
    op->start = op->end = 0;
    assert_int_equal(pipe_check(&s, &err), -1);
    printf("    moved: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "before its input exists"));
    op->start = keep, op->end = keep + 1;
    assert_int_equal(pipe_check(&s, &err), 0);
    /* a chunk run twice */
    PipeTask save = s.ops[0][1].f;
    s.ops[0][1].f = s.ops[0][0].f;
    assert_int_equal(pipe_check(&s, &err), -1);
    assert_non_null(strstr(err.msg, "second forward"));
    s.ops[0][1].f = save;
    /* a stage on the wrong rank */
    s.ops[0][0].f.stage = 1;
    assert_int_equal(pipe_check(&s, &err), -1);
    assert_non_null(strstr(err.msg, "lives on rank"));
    pipe_free(&s);
    /* rank 0 of 1F1B starting with a backward: no rank can move */
    assert_int_equal(pipe_build(&s, PIPE_1F1B, 3, 4, &err), 0);
    PipeOp tmp = s.ops[0][0];
    s.ops[0][0] = s.ops[0][s.n_ops[0] - 1];
    s.ops[0][s.n_ops[0] - 1] = tmp;
    assert_int_equal(pipe_simulate(&s, &t, NULL, NULL, &err), -1);
    printf("    swapped: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "deadlocks"));
    pipe_free(&s);
    /* requirements */
    assert_int_equal(pipe_build(&s, PIPE_DUALPIPE, 3, 8, &err), -1);
    assert_int_equal(pipe_build(&s, PIPE_DUALPIPE, 4, 6, &err), -1);
    assert_int_equal(pipe_build(&s, PIPE_DUALPIPEV, 4, 7, &err), -1);
    assert_int_equal(pipe_build(&s, PIPE_1F1B, 0, 7, &err), -1);
    PipeKind k;
    assert_int_equal(pipe_kind_parse("gpipe", &k, &err), -1);
}

static void command_line(void **state) {
    (void)state;
    RunResult r = run_shell(NULL, "%s pipeline --pp 8 --micro 20", dsv3_bin());
    assert_int_equal(r.status, 0);
    printf("%s", r.out);
    assert_non_null(strstr(r.out, "DualPipe     8 ranks   8 stages  bubble       4.5 (Table 2:       4.5)"));
    assert_non_null(strstr(r.out, "DualPipeV    4 ranks   8 stages"));
    assert_non_null(strstr(r.out, "1F1B         8 ranks   8 stages  bubble        21 (Table 2:        21)"));
    run_result_free(&r);
    char png[4200];
    snprintf(png, sizeof png, "%s/dualpipe.png", test_tmp);
    r = run_shell(NULL, "%s pipeline --pp 8 --micro 20 --schedule dualpipe --png %s", dsv3_bin(), png);
    int have_gnuplot = system("command -v gnuplot >/dev/null 2>&1") == 0;
    size_t n = 0;
    unsigned char *bytes = read_bytes(png, &n);
    if (have_gnuplot) {
        assert_int_equal(r.status, 0);
        assert_non_null(bytes);
        assert_true(n > 1000 && !memcmp(bytes, "\x89PNG", 4));
        printf("    --png: %zu bytes of PNG\n", n);
    } else {
        assert_int_not_equal(r.status, 0);
        assert_null(bytes);
        assert_int_equal(count_lines(r.err), 1);
        printf("    --png without gnuplot: %s", r.err);
    }
    free(bytes);
    run_result_free(&r);
    const char *bad[] = { "--pp 0", "--pp 3 --schedule dualpipe", "--schedule gpipe", "--f -1", "--w 3 --b 2", "--png x.png",
                          "--micro", "--frobnicate" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        r = run_shell(NULL, "%s pipeline %s", dsv3_bin(), bad[i]);
        assert_int_equal(r.status, 2);
        assert_int_equal(count_lines(r.err), 1);
        run_result_free(&r);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(table2_sweep),
        cmocka_unit_test(outside_the_conditions),
        cmocka_unit_test(checker_and_deadlock),
        cmocka_unit_test(command_line),
    };
    return cmocka_run_group_tests_name("pipeline", tests, test_tmp_setup, test_tmp_teardown);
}
