/**
 * @file test_cli_options.c
 * @brief The option tables (ref/cli/cli_opt.h), the stop-string matcher (ref/generate/stop.h),
 *        escapes (-e), and every new flag end to end through build/dsv3:
 *  - the parser on a table of every type: defaults, `--name=value`, missing values, values that
 *    are flags, ranges (open and closed), choices, repeatable lists, duplicates (also as short
 *    and long name), unknown flags and the closest known one, long-only groups, re-parsing;
 *  - the --help the tables generate, and for every command of `dsv3 --help` that its --help
 *    lists exactly the flags it accepts: each listed flag parses, each flag another command
 *    lists is "unknown option" here; docs/cli.md holds each --help as generated;
 *  - the stop matcher against a plain search on the whole text, over random splits into pieces;
 *  - `--stop` (generate, --batch with finish_reason "stop", chat, --spec mtp), `-e`,
 *    `--verbose-prompt`, `--display-prompt`, `-t/--threads` on the bundled model.
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

#include <cjson/cJSON.h>

#include "base/rng.h"
#include "cli/cli_opt.h"
#include "cli/cli_util.h"
#include "generate/stop.h"
#include "util_compare.h"
#include "util_run.h"

/* ---- the parser ------------------------------------------------------------------------- */

typedef struct {
    int flag;
    const char *str;
    long n;
    double x, p;
    int mode;
    CliList list;
    long seed;
} T;

static const int mode_values[] = { 10, 20, 30 };
static const CliOpt t_opts[] = {
    { "--flag", "-f", CLI_FLAG, offsetof(T, flag), .help = "a switch" },
    { "--str", NULL, CLI_STR, offsetof(T, str), "S", .def = "dflt", .help = "a string" },
    { "--num", "-n", CLI_LONG, offsetof(T, n), "N", .lo = -1, .hi = 100, .def = "7", .help = "a number" },
    { "--temp", NULL, CLI_DOUBLE, offsetof(T, x), "X", .lo = 0, .hi = 2, .help = "closed range\nsecond line" },
    { "--top-p", NULL, CLI_DOUBLE, offsetof(T, p), "P", .lo = 0, .hi = 1, .open_lo = 1, .def = "0.5", .help = "open range" },
    { "--mode", NULL, CLI_CHOICE, offsetof(T, mode), .choices = "a|bb|ccc", .values = mode_values, .def = "bb", .help = "a choice" },
    { "--item", NULL, CLI_LIST, offsetof(T, list), "I", .help = "repeatable" },
};
static const CliOpt t_long_only[] = {
    { "--seed", "-s", CLI_LONG, offsetof(T, seed), "S", .lo = 0, .hi = 9, .help = "long only here" },
};

/** A command over t_opts (and the long-only group) bound to @p t. */
static CliCmd t_cmd(T *t) {
    memset(t, 0, sizeof *t);
    CliCmd c = { .name = "demo", .usage = "[options]", .about = "about text", .footer = "footer text" };
    cli_add(&c, CLI_GROUP("things", t_opts, t));
    CliGroup g = CLI_GROUP("more", t_long_only, t);
    g.flags = CLI_LONG_ONLY;
    cli_add(&c, g);
    return c;
}

/** Parses the words of @p line (split at spaces) with t_cmd; the result of cli_parse_quiet. */
static int parse(T *t, CliCmd *c, Err *err, const char *line) {
    static char buf[512];
    char *argv[32];
    int argc = 0;
    snprintf(buf, sizeof buf, "demo %s", line);
    for (char *save = NULL, *w = strtok_r(buf, " ", &save); w && argc < 32; w = strtok_r(NULL, " ", &save)) argv[argc++] = w;
    *c = t_cmd(t);
    err->msg[0] = 0;
    return cli_parse_quiet(c, argc, argv, err);
}

/** @p line must fail with a message containing @p want. */
static void refused(const char *line, const char *want) {
    T t;
    CliCmd c;
    Err err;
    int rc = parse(&t, &c, &err, line);
    if (rc != -1 || !strstr(err.msg, want)) fprintf(stderr, "'%s': rc %d, '%s' (want '%s')\n", line, rc, err.msg, want);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(err.msg, want));
    assert_null(strchr(err.msg, '\n'));
    cli_free(&c);
}

static void parser_values_and_defaults(void **state) {
    (void)state;
    T t;
    CliCmd c;
    Err err;
    assert_int_equal(parse(&t, &c, &err, ""), 0);
    assert_int_equal(t.flag, 0);
    assert_string_equal(t.str, "dflt");
    assert_int_equal(t.n, 7);
    assert_true(t.p == 0.5);
    assert_int_equal(t.mode, 20);
    assert_int_equal(t.list.n, 0);
    assert_false(cli_given(&c, "--num"));
    cli_free(&c);

    assert_int_equal(parse(&t, &c, &err, "-f --str hello -n -1 --temp 2 --top-p 1 --mode ccc --item a --item=-b --seed 3"), 0);
    assert_int_equal(t.flag, 1);
    assert_string_equal(t.str, "hello");
    assert_int_equal(t.n, -1); /* a negative number is a value, not a flag */
    assert_true(t.x == 2.0 && t.p == 1.0);
    assert_int_equal(t.mode, 30);
    assert_int_equal(t.list.n, 2);
    assert_string_equal(t.list.v[0], "a");
    assert_string_equal(t.list.v[1], "-b"); /* '=' takes any value */
    assert_int_equal(t.seed, 3);
    assert_true(cli_given(&c, "--num") && cli_given(&c, "--flag") && cli_given(&c, "--item"));
    assert_false(cli_given(&c, "--nope"));
    /* parsing again starts afresh: lists are emptied and freed (ASan sees a leak otherwise) */
    char *argv2[] = { "demo", "--item", "z" };
    assert_int_equal(cli_parse_quiet(&c, 3, argv2, &err), 0);
    assert_int_equal(t.list.n, 1);
    assert_false(cli_given(&c, "--flag"));
    cli_free(&c);
    cli_free(&c); /* twice is harmless */

    assert_int_equal(parse(&t, &c, &err, "--str= --temp=.5"), 0);
    assert_string_equal(t.str, "");
    assert_true(t.x == 0.5);
    cli_free(&c);
    assert_int_equal(parse(&t, &c, &err, "--num 3 -h --bogus"), 1); /* --help wins over what follows */
    cli_free(&c);
}

static void parser_errors(void **state) {
    (void)state;
    refused("--num", "--num needs a value");
    refused("-n", "-n needs a value");
    refused("--str --flag", "--str needs a value, got the flag --flag");
    refused("--num 101", "--num: '101' is not an integer in [-1, 100]");
    refused("-n 1.5", "-n: '1.5' is not an integer in [-1, 100]");
    refused("--num abc", "is not an integer");
    refused("--temp -0.5", "--temp: '-0.5' is not a number in [0, 2]");
    refused("--temp nan", "--temp: 'nan' is not a number");
    refused("--temp inf", "is not a number");
    refused("--top-p 0", "--top-p: '0' is not a number in (0, 1]");
    refused("--mode d", "--mode must be a, bb or ccc, got 'd'");
    refused("--flag=1", "option --flag takes no value");
    refused("--num 1 --num 2", "option --num given twice");
    refused("-n 1 --num 2", "option --num given twice (as -n and --num)");
    refused("--flag -f", "given twice");
    refused("stray", "unexpected argument 'stray'");
    refused("-", "unexpected argument '-'");
    refused("--temperature 1", "unknown option '--temperature'; did you mean '--temp'?");
    refused("--top_p 1", "did you mean '--top-p'?");
    refused("--TEMP 1", "did you mean '--temp'?");
    refused("--mdoe a", "did you mean '--mode'?");
    refused("--items x", "did you mean '--item'?");
    refused("--frobnicate", "unknown option '--frobnicate' (dsv3 demo --help lists the options)");
    refused("-x", "unknown option '-x' (dsv3 demo --help");  /* one-letter names are never guessed */
    refused("-s 1", "unknown option '-s'");                  /* the long-only group has no -s */
    refused("--temperature=1", "unknown option '--temperature'; did you mean '--temp'?");
}

static void parser_help(void **state) {
    (void)state;
    T t;
    CliCmd c = t_cmd(&t);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cli_help(&c, f);
    fclose(f);
    printf("%s", text);
    const char *want[] = { "usage: dsv3 demo [options]\n", "about text\n", "\nthings:\n", "  -f, --flag ", "  --str S ",
                           "(default dflt)", "  -n, --num N ", "(default 7)", "closed range\n", "second line\n",
                           "--mode a|bb|ccc", "(default bb)", "--item I", "\nmore:\n", "  --seed S ", "-h, --help",
                           "\nfooter text\n" };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (!strstr(text, want[i])) fprintf(stderr, "help lacks '%s'\n", want[i]);
        assert_non_null(strstr(text, want[i]));
    }
    assert_null(strstr(text, "-s, --seed")); /* long only */
    assert_null(strstr(text, "(default 0)"));
    free(text);
}

/* ---- escapes ---------------------------------------------------------------------------- */

static void escapes(void **state) {
    (void)state;
    const char *cases[][2] = {
        { "a\\nb", "a\nb" },     { "\\t\\r", "\t\r" },   { "\\\\n", "\\n" },      { "\\'\\\"", "'\"" },
        { "\\x41\\x7a", "Az" },  { "\\xc3\\xa9", "\xc3\xa9" }, { "\\q", "\\q" }, { "end\\", "end\\" },
        { "\\x4", "\\x4" },      { "\\xzz", "\\xzz" },   { "\\x00", "\\x00" },    { "plain", "plain" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = cli_unescape(cases[i][0]);
        assert_non_null(got);
        assert_string_equal(got, cases[i][1]);
        free(got);
    }
}

/* ---- the stop matcher ------------------------------------------------------------------- */

/** Feeds @p pieces (NULL-terminated) and checks what is released against @p want; returns the hit. */
static int feed_all(const char *const *stops, int n, const char *const *pieces, const char *want) {
    StopMatcher s;
    stop_init(&s, stops, n);
    char got[256] = "";
    int hit = 0;
    for (int i = 0; pieces[i] && !hit; i++) {
        const char *text;
        size_t len;
        hit = stop_feed(&s, pieces[i], strlen(pieces[i]), &text, &len);
        assert_true(hit >= 0);
        strncat(got, text, len);
    }
    if (!hit) {
        const char *text;
        size_t len;
        stop_flush(&s, &text, &len);
        strncat(got, text, len);
    }
    assert_string_equal(got, want);
    stop_free(&s);
    return hit;
}

static void stop_matcher(void **state) {
    (void)state;
    const char *world[] = { "world" }, *two[] = { "xyz", "lo w" }, *aab[] = { "aab" }, *utf8[] = { "é!" };
    /* across pieces, held text released as soon as it cannot start the stop string */
    StopMatcher s;
    stop_init(&s, world, 1);
    const char *text;
    size_t len;
    assert_int_equal(stop_feed(&s, "Hello", 5, &text, &len), 0);
    assert_int_equal(len, 5);
    assert_int_equal(stop_feed(&s, " wor", 4, &text, &len), 0);
    assert_true(len == 1 && text[0] == ' '); /* "wor" is held */
    assert_int_equal(stop_feed(&s, "ld!", 3, &text, &len), 1);
    assert_int_equal(len, 0);
    assert_int_equal(s.hit, 0);
    assert_int_equal(stop_feed(&s, "more", 4, &text, &len), 1); /* stopped: nothing more */
    assert_int_equal(len, 0);
    stop_reset(&s); /* the next reply */
    assert_int_equal(stop_feed(&s, "wo", 2, &text, &len), 0);
    assert_int_equal(len, 0);
    stop_flush(&s, &text, &len);
    assert_true(len == 2 && !memcmp(text, "wo", 2));
    stop_free(&s);

    assert_int_equal(feed_all(world, 1, (const char *[]){ "say world", NULL }, "say "), 1);
    assert_int_equal(feed_all(world, 1, (const char *[]){ "wor", "k", NULL }, "work"), 0);
    assert_int_equal(feed_all(two, 2, (const char *[]){ "hel", "lo wxyz", NULL }, "hel"), 1); /* the earliest wins */
    assert_int_equal(feed_all(aab, 1, (const char *[]){ "a", "a", "a", "b", "c", NULL }, "a"), 1); /* overlapping starts */
    assert_int_equal(feed_all(utf8, 1, (const char *[]){ "caf", "é", "!", NULL }, "caf"), 1);
    assert_int_equal(feed_all(utf8, 1, (const char *[]){ "caf", "é", "s", NULL }, "cafés"), 0);
    assert_int_equal(feed_all(NULL, 0, (const char *[]){ "any", "", "thing", NULL }, "anything"), 0);
    assert_int_equal(feed_all(world, 1, (const char *[]){ "", "", NULL }, ""), 0);
}

/**
 * Random texts over a small alphabet, random stop strings, random cuts into pieces, against the
 * definition: after each piece, if the text so far contains a stop string, the output is the
 * text before its first occurrence and generation ends; otherwise everything is output in the
 * end. At every step the released text is a prefix of that, and what is held is never longer
 * than a stop string minus one byte.
 */
static void stop_matcher_random(void **state) {
    (void)state;
    Rng rng;
    rng_seed(&rng, 7);
    int stopped = 0;
    for (int trial = 0; trial < 3000; trial++) {
        char text[80], stops_buf[3][6];
        const char *stops[3];
        size_t cuts[80], n_cuts = 0;
        int n_stops = 1 + (int)(rng_u32(&rng) % 3);
        size_t n = rng_u32(&rng) % 60, maxlen = 0;
        for (size_t i = 0; i < n; i++) text[i] = "abc"[rng_u32(&rng) % 3];
        text[n] = 0;
        for (int k = 0; k < n_stops; k++) {
            size_t m = 1 + rng_u32(&rng) % 4;
            for (size_t i = 0; i < m; i++) stops_buf[k][i] = "abc"[rng_u32(&rng) % 3];
            stops_buf[k][m] = 0, stops[k] = stops_buf[k];
            if (m > maxlen) maxlen = m;
        }
        for (size_t at = 0; at < n;) { /* piece boundaries */
            size_t piece = 1 + rng_u32(&rng) % 5;
            at += piece < n - at ? piece : n - at;
            cuts[n_cuts++] = at;
        }
        size_t want = n; /* the definition */
        int want_hit = 0;
        for (size_t j = 0; j < n_cuts && !want_hit; j++) {
            char prefix[80];
            snprintf(prefix, sizeof prefix, "%.*s", (int)cuts[j], text);
            for (int k = 0; k < n_stops; k++) {
                const char *p = strstr(prefix, stops[k]);
                if (p && (!want_hit || (size_t)(p - prefix) < want)) want = (size_t)(p - prefix), want_hit = 1;
            }
        }
        StopMatcher s;
        stop_init(&s, stops, n_stops);
        char got[96];
        size_t ng = 0, at = 0;
        int hit = 0;
        for (size_t j = 0; j < n_cuts && !hit; at = cuts[j++]) {
            const char *out;
            size_t len;
            hit = stop_feed(&s, text + at, cuts[j] - at, &out, &len);
            assert_true(hit >= 0);
            memcpy(got + ng, out, len), ng += len;
            assert_true(ng <= want && !memcmp(got, text, ng));
            assert_true(hit || s.held.len < maxlen);
        }
        if (!hit) {
            const char *out;
            size_t len;
            stop_flush(&s, &out, &len);
            memcpy(got + ng, out, len), ng += len;
        }
        assert_int_equal(hit, want_hit);
        assert_int_equal(ng, want);
        assert_memory_equal(got, text, want);
        stopped += hit;
        stop_free(&s);
    }
    printf("    3000 random texts and splits, %d stopped: the matcher equals the definition\n", stopped);
}

/* ---- every command's --help against what it accepts --------------------------------------- */

/** The flags a --help text lists: the dashed words of each option line's left column. */
static int help_flags(const char *help, char flags[][40], int max) {
    int n = 0;
    for (const char *line = help; *line && n < max;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (len > 3 && !strncmp(line, "  -", 3)) {
            /* the left column ends at two spaces (or the line) */
            const char *stop = strstr(line + 2, "  ");
            size_t cut = stop && (size_t)(stop - line) < len ? (size_t)(stop - line) : len;
            char left[160];
            snprintf(left, sizeof left, "%.*s", (int)cut, line);
            for (char *save = NULL, *w = strtok_r(left, " ,", &save); w; w = strtok_r(NULL, " ,", &save))
                if (w[0] == '-' && n < max) snprintf(flags[n++], 40, "%s", w);
        }
        line += len + (end != NULL);
    }
    return n;
}

static int has(char flags[][40], int n, const char *f) {
    for (int i = 0; i < n; i++)
        if (!strcmp(flags[i], f)) return 1;
    return 0;
}

enum { MAX_CMDS = 24, MAX_FLAGS = 80, MAX_ALL = 400 };

static void help_lists_exactly_the_accepted_flags(void **state) {
    (void)state;
    RunResult top = run_shell(NULL, "%s --help", dsv3_bin());
    assert_int_equal(top.status, 0);
    char cmds[MAX_CMDS][40];
    int n_cmds = 0;
    for (char *save = NULL, *line = strtok_r(top.out, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        if (line[0] == ' ' && line[1] == ' ' && line[2] != ' ' && n_cmds < MAX_CMDS) sscanf(line, "%39s", cmds[n_cmds++]);
    run_result_free(&top);
    assert_true(n_cmds >= 14);
    static char flags[MAX_CMDS][MAX_FLAGS][40], all[MAX_ALL][40];
    int n_flags[MAX_CMDS], n_all = 0;
    for (int c = 0; c < n_cmds; c++) {
        RunResult h = run_shell(NULL, "%s %s --help", dsv3_bin(), cmds[c]);
        assert_int_equal(h.status, 0);
        assert_int_equal(h.err_len, 0);
        char want[64];
        snprintf(want, sizeof want, "usage: dsv3 %s", cmds[c]);
        assert_int_equal(strncmp(h.out, want, strlen(want)), 0);
        n_flags[c] = help_flags(h.out, flags[c], MAX_FLAGS);
        assert_true(has(flags[c], n_flags[c], "--help") && has(flags[c], n_flags[c], "-h"));
        for (int i = 0; i < n_flags[c]; i++)
            if (!has(all, n_all, flags[c][i]) && n_all < MAX_ALL) snprintf(all[n_all++], 40, "%s", flags[c][i]);
        run_result_free(&h);
    }
    /* One shell per command: "FLAG<TAB>first stderr line" for every flag any command lists. */
    int checked = 0;
    for (int c = 0; c < n_cmds; c++) {
        char script[16384];
        size_t at = (size_t)snprintf(script, sizeof script, "for f in");
        for (int i = 0; i < n_all; i++)
            if (strcmp(all[i], "-h") && strcmp(all[i], "--help")) at += (size_t)snprintf(script + at, sizeof script - at, " '%s'", all[i]);
        at += (size_t)snprintf(script + at, sizeof script - at,
                               "; do printf '%%s\\t' \"$f\"; '%s' %s \"$f\" --zz-end-of-test 2>&1 >/dev/null </dev/null | head -n 1; done",
                               dsv3_bin(), cmds[c]);
        assert_true(at < sizeof script);
        RunResult r;
        assert_int_equal(run_cmd(script, NULL, &r), 0);
        for (char *save = NULL, *line = strtok_r(r.out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            char *tab = strchr(line, '\t');
            assert_non_null(tab);
            *tab = 0;
            char unknown[80];
            snprintf(unknown, sizeof unknown, "unknown option '%s'", line);
            int listed = has(flags[c], n_flags[c], line), refused_it = strstr(tab + 1, unknown) != NULL;
            if (listed == refused_it) fprintf(stderr, "dsv3 %s %s: listed %d, but: %s\n", cmds[c], line, listed, tab + 1);
            assert_true(listed != refused_it);
            checked++;
        }
        run_result_free(&r);
    }
    assert_int_equal(checked, n_cmds * (n_all - 2)); /* every pair answered */
    printf("    %d commands, %d distinct flags, %d (command, flag) pairs: each --help lists exactly what parses\n", n_cmds,
           n_all, checked);
}

/** docs/cli.md holds every command's --help as generated (its own last section says how to regenerate it). */
static void docs_match_help(void **state) {
    (void)state;
    size_t n;
    char *doc = (char *)read_bytes("docs/cli.md", &n);
    assert_non_null(doc);
    RunResult top = run_shell(NULL, "%s --help", dsv3_bin());
    int cmds = 0;
    for (char *save = NULL, *line = strtok_r(top.out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char name[40];
        if (line[0] != ' ' || line[1] != ' ' || line[2] == ' ' || sscanf(line, "%39s", name) != 1) continue;
        char head[96];
        snprintf(head, sizeof head, "\n## dsv3 %s\n\n```text\n", name);
        const char *at = strstr(doc, head), *end = at ? strstr(at + strlen(head), "```\n") : NULL;
        RunResult h = run_shell(NULL, "%s %s --help", dsv3_bin(), name);
        int same = at && end && (size_t)(end - at - strlen(head)) == h.out_len && !memcmp(at + strlen(head), h.out, h.out_len);
        if (!same) fprintf(stderr, "docs/cli.md: the section of '%s' is not `dsv3 %s --help`: regenerate it (docs/cli.md says how)\n", name, name);
        assert_true(same);
        run_result_free(&h);
        cmds++;
    }
    run_result_free(&top);
    free(doc);
    printf("    docs/cli.md: the --help of all %d commands, as generated\n", cmds);
}

/* ---- the new flags end to end (the bundled model) ----------------------------------------- */

#define KJV "models/kjv"

/** One bad command line: exit 2, one stderr line "dsv3 CMD: ..." containing @p want, no stdout. */
static void usage_error(const char *args, const char *want) {
    RunResult r = run_shell(NULL, "%s %s", dsv3_bin(), args);
    int ok = r.status == 2 && count_lines(r.err) == 1 && !strncmp(r.err, "dsv3 ", 5) && strstr(r.err, want) && !r.out_len;
    printf("    %-52s %s %s", args, ok ? "ok  " : "FAIL", r.err);
    run_result_free(&r);
    assert_true(ok);
}

static void flags_errors_end_to_end(void **state) {
    (void)state;
    usage_error("generate -m " KJV " -p hi --temperature 1", "unknown option '--temperature'; did you mean '--temp'?");
    usage_error("generate -m " KJV " -p a -p b", "option -p given twice");
    usage_error("generate -m " KJV " --prompt a -p b", "option --prompt given twice (as --prompt and -p)");
    usage_error("generate -m " KJV " -p hi -t 0", "-t: '0' is not an integer in [1, 1024]");
    usage_error("logits -m " KJV " --ids 1 -o x --threads many", "--threads: 'many' is not an integer");
    usage_error("train --train x -T 1", "-T: '1' is not an integer in [2, 1048576]");
    usage_error("train --train x --threads 0", "--threads: '0' is not an integer in [1, 1024]");
    usage_error("generate -m " KJV " -p hi --stop ''", "--stop: an empty string");
    usage_error("generate -m " KJV " -p hi -e --stop '\\xff'", "--stop 1 is not valid UTF-8");
    usage_error("generate -m " KJV " -p '\\xff' -e", "not valid UTF-8");
    usage_error("generate -m " KJV " -p hi --display-prompt --no-display-prompt", "one of --display-prompt and --no-display-prompt");
    usage_error("chat -m " KJV " --display-prompt", "unknown option '--display-prompt'");
    usage_error("chat -m " KJV " --sys x", "did you mean '-sys'?");
    usage_error("info -m " KJV " --fp8 w8a8", "unknown option '--fp8'");
}

/** stdout of `dsv3 ARGS` (exit 0 required; malloc'd, the trailing newline of generate removed). */
static char *out_of(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *out_of(const char *fmt, ...) {
    char args[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    RunResult r = run_shell(NULL, "%s %s", dsv3_bin(), args);
    if (r.status) fprintf(stderr, "%s: %s", args, r.err);
    assert_int_equal(r.status, 0);
    char *out = r.out;
    r.out = NULL;
    if (r.out_len && out[r.out_len - 1] == '\n') out[r.out_len - 1] = 0;
    run_result_free(&r);
    return out;
}

/** The "text" and "finish_reason" of the JSON line with "index" @p i. */
static void batch_field(const char *jsonl, int i, char *text, size_t cap, char *reason) {
    char *copy = strdup(jsonl);
    text[0] = reason[0] = 0;
    for (char *save = NULL, *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *idx = cJSON_GetObjectItemCaseSensitive(j, "index");
        if (cJSON_IsNumber(idx) && idx->valueint == i) {
            snprintf(text, cap, "%s", cJSON_GetObjectItemCaseSensitive(j, "text")->valuestring);
            snprintf(reason, 16, "%s", cJSON_GetObjectItemCaseSensitive(j, "finish_reason")->valuestring);
        }
        cJSON_Delete(j);
    }
    free(copy);
}

static void stop_end_to_end(void **state) {
    (void)state;
    const char *gen = "generate -m " KJV " -p 'And God said' -n 60 --temp 0";
    char *full = out_of("%s 2>/dev/null", gen);
    assert_true(strlen(full) > 40);
    /* a stop string from the middle of the greedy text, and one that straddles a word */
    char stop[16];
    snprintf(stop, sizeof stop, "%.5s", full + 25);
    const char *first = strstr(full, stop);
    assert_non_null(first);
    size_t keep = (size_t)(first - full);
    char *cut = out_of("%s --stop '%s' --stop 'zzqq' 2>/dev/null", gen, stop);
    printf("    full:   \"%s\"\n    --stop \"%s\": \"%s\"\n", full, stop, cut);
    assert_int_equal(strlen(cut), keep);
    assert_memory_equal(cut, full, keep);
    char *spec = out_of("%s --stop '%s' --spec mtp --draft 2 2>/dev/null", gen, stop); /* a stop inside a speculative step */
    assert_string_equal(spec, cut);
    char *never = out_of("%s --stop 'zzqq' 2>/dev/null", gen);
    assert_string_equal(never, full);
    /* -e: the escaped stop string is the same as the raw one */
    char *esc = out_of("%s -e --stop '%c\\x%02x%s' 2>/dev/null", gen, stop[0], (unsigned char)stop[1], stop + 2);
    assert_string_equal(esc, cut);

    /* --batch: the same cut text, finish_reason "stop"; a prompt that never meets it: "length" */
    char path[4200];
    snprintf(path, sizeof path, "%s/prompts.txt", test_tmp);
    FILE *f = fopen(path, "w");
    fprintf(f, "And God said\nIn the beginning\n");
    fclose(f);
    char *b = out_of("generate -m " KJV " --batch %s -n 60 --temp 0 --parallel 2 --stop '%s' 2>/dev/null", path, stop);
    char text[4096], reason[16];
    batch_field(b, 0, text, sizeof text, reason);
    assert_string_equal(text, cut);
    assert_string_equal(reason, "stop");
    assert_null(strstr(b, "\"completion_tokens\":60,")); /* it ended early */
    char *full1 = out_of("generate -m " KJV " -p 'In the beginning' -n 60 --temp 0 2>/dev/null");
    char *alone = out_of("generate -m " KJV " -p 'In the beginning' -n 60 --temp 0 --stop '%s' 2>/dev/null", stop);
    batch_field(b, 1, text, sizeof text, reason);
    assert_string_equal(text, alone);
    assert_string_equal(reason, strstr(full1, stop) ? "stop" : "length");
    printf("    --batch --stop: prompt 0 \"%s\" (stop), prompt 1 (%s)\n", cut, reason);
    free(full1);
    free(full), free(cut), free(spec), free(never), free(esc), free(b), free(alone);

    /* chat: each reply ends at the stop string; the next turn goes on */
    RunResult plain = run_shell("Who art thou?\nAnd then?\n", "%s chat -m " KJV " --temp 0 -n 30 2>/dev/null", dsv3_bin());
    assert_int_equal(plain.status, 0);
    char chat_stop[8];
    snprintf(chat_stop, sizeof chat_stop, "%.3s", plain.out + 10);
    RunResult cut_chat = run_shell("Who art thou?\nAnd then?\n", "%s chat -m " KJV " --temp 0 -n 30 --stop '%s' 2>&1 >%s/chat.out",
                                   dsv3_bin(), chat_stop, test_tmp);
    assert_int_equal(cut_chat.status, 0);
    assert_non_null(strstr(cut_chat.out, "[turn 2:"));
    char out_path[4200];
    snprintf(out_path, sizeof out_path, "%s/chat.out", test_tmp);
    size_t n;
    char *reply = (char *)read_bytes(out_path, &n);
    assert_non_null(reply);
    const char *at = strstr(plain.out, chat_stop);
    assert_int_equal(strncmp(reply, plain.out, (size_t)(at - plain.out)), 0);
    assert_true(reply[at - plain.out] == '\n'); /* the first reply ends where the stop string began */
    printf("    chat --stop \"%s\": first reply \"%.*s\"\n", chat_stop, (int)(at - plain.out), reply);
    free(reply);
    run_result_free(&plain);
    run_result_free(&cut_chat);
}

static void prompt_flags_end_to_end(void **state) {
    (void)state;
    /* --verbose-prompt: BOS, then exactly the ids tokenize gives, one line each */
    RunResult v = run_shell(NULL, "%s generate -m " KJV " -p 'And God said,' -n 1 --temp 0 --verbose-prompt", dsv3_bin());
    RunResult t = run_shell(NULL, "%s tokenize --tokenizer " KJV " --text 'And God said,'", dsv3_bin());
    assert_int_equal(v.status, 0);
    assert_int_equal(t.status, 0);
    printf("%.400s", v.err);
    cJSON *ids = cJSON_Parse(t.out);
    int n = cJSON_GetArraySize(ids);
    char want[4096];
    int at = snprintf(want, sizeof want, "dsv3 generate: prompt: %d tokens\n%8d -> '<", n + 1, 0);
    assert_non_null(strstr(v.err, want));
    const char *line = strstr(v.err, want) + at;
    for (int i = 0; i < n; i++) {
        line = strchr(line, '\n') + 1;
        snprintf(want, sizeof want, "%8d -> '", cJSON_GetArrayItem(ids, i)->valueint);
        assert_int_equal(strncmp(line, want, strlen(want)), 0);
    }
    cJSON_Delete(ids);
    run_result_free(&v);
    run_result_free(&t);
    /* -e: "\n" in -p is the newline; the same ids as a prompt holding a real newline */
    RunResult e = run_shell(NULL, "%s generate -m " KJV " -p 'a\\nb' -e -n 1 --temp 0 --verbose-prompt", dsv3_bin());
    RunResult nl = run_shell(NULL, "%s generate -m " KJV " -p \"$(printf 'a\\nb')\" -n 1 --temp 0 --verbose-prompt", dsv3_bin());
    RunResult raw = run_shell(NULL, "%s generate -m " KJV " -p 'a\\nb' -n 1 --temp 0 --verbose-prompt", dsv3_bin());
    assert_int_equal(e.status, 0);
    char *pe = strstr(e.err, "prompt:"), *pn = strstr(nl.err, "prompt:"), *pr = strstr(raw.err, "prompt:");
    assert_true(pe && pn && pr);
    *strstr(pe, "\n[") = 0, *strstr(pn, "\n[") = 0, *strstr(pr, "\n[") = 0; /* up to the statistics */
    assert_string_equal(pe, pn);
    assert_true(strcmp(pe, pr) != 0);
    assert_non_null(strstr(pe, "'\\n'")); /* the newline piece, escaped on its line */
    run_result_free(&e), run_result_free(&nl), run_result_free(&raw);
    /* --display-prompt: the prompt, then the same completion; --no-display-prompt is the default */
    const char *gen = "generate -m " KJV " -p 'And God said' -n 20 --temp 0";
    char *plain = out_of("%s 2>/dev/null", gen), *shown = out_of("%s --display-prompt 2>/dev/null", gen),
         *hidden = out_of("%s --no-display-prompt 2>/dev/null", gen);
    assert_int_equal(strncmp(shown, "And God said", 12), 0);
    assert_string_equal(shown + 12, plain);
    assert_string_equal(hidden, plain);
    free(plain), free(shown), free(hidden);
}

static void threads_end_to_end(void **state) {
    (void)state;
    /* -t changes the thread count, never the numbers (the loops sum in a fixed order) */
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/t1.f32", test_tmp);
    snprintf(b, sizeof b, "%s/t2.f32", test_tmp);
    RunResult r1 = run_shell(NULL, "%s logits -m golden/official-tiny --ids 1,2,3,4 -o %s -t 1", dsv3_bin(), a);
    RunResult r2 = run_shell(NULL, "%s logits -m golden/official-tiny --ids 1,2,3,4 -o %s --threads 2", dsv3_bin(), b);
    assert_int_equal(r1.status, 0);
    assert_int_equal(r2.status, 0);
    size_t na, nb;
    unsigned char *da = read_bytes(a, &na), *db = read_bytes(b, &nb);
    assert_true(da && db && na == nb && na > 0);
    assert_memory_equal(da, db, na);
    free(da), free(db);
    run_result_free(&r1), run_result_free(&r2);
    RunResult g = run_shell(NULL, "%s generate -m " KJV " -p hi -n 2 --temp 0 -t 1", dsv3_bin());
    assert_int_equal(g.status, 0);
    assert_non_null(strstr(g.err, ", 1 thread]"));
    run_result_free(&g);
    RunResult p = run_shell(NULL, "%s perplexity -m " KJV " -f README.md -c 32 --max-chunks 1 -t 1", dsv3_bin());
    assert_int_equal(p.status, 0);
    run_result_free(&p);
}

/** --repeat-penalty and friends: they change the text, and one implementation serves -p, --spec mtp
 *  and --batch alike (the same text from each); an out-of-range value is a usage error. */
static void penalties_end_to_end(void **state) {
    (void)state;
    const char *gen = "generate -m " KJV " -p 'And God said' -n 40 --temp 0";
    char *plain = out_of("%s 2>/dev/null", gen);
    char *pen = out_of("%s --repeat-penalty 1.5 --presence-penalty 0.5 --frequency-penalty 0.2 --repeat-last-n 32 2>/dev/null", gen);
    printf("    plain:     \"%s\"\n    penalized: \"%s\"\n", plain, pen);
    assert_string_not_equal(plain, pen); /* the greedy text loops ("the land of the land of"); the penalty breaks it */
    char *spec = out_of("%s --repeat-penalty 1.5 --presence-penalty 0.5 --frequency-penalty 0.2 --repeat-last-n 32 --spec mtp 2>/dev/null", gen);
    assert_string_equal(spec, pen);
    char path[4200];
    snprintf(path, sizeof path, "%s/pen_prompts.txt", test_tmp);
    FILE *f = fopen(path, "w");
    fprintf(f, "In the beginning\nAnd God said\n");
    fclose(f);
    char *b = out_of("generate -m " KJV " --batch %s -n 40 --temp 0 --parallel 2 --repeat-penalty 1.5 --presence-penalty 0.5 "
                     "--frequency-penalty 0.2 --repeat-last-n 32 2>/dev/null", path);
    char text[4096], reason[16];
    batch_field(b, 1, text, sizeof text, reason);
    assert_string_equal(text, pen);
    /* min-p keeps the argmax, so greedy text is unchanged; sampled text with a seed repeats */
    char *minp = out_of("%s --min-p 0.3 2>/dev/null", gen);
    assert_string_equal(minp, plain);
    char *s1 = out_of("generate -m " KJV " -p 'And God said' -n 40 --temp 1.2 -s 5 --min-p 0.2 2>/dev/null");
    char *s2 = out_of("generate -m " KJV " -p 'And God said' -n 40 --temp 1.2 -s 5 --min-p 0.2 --spec mtp 2>/dev/null");
    assert_true(strlen(s1) > 0 && strlen(s2) > 0);
    usage_error("generate -m " KJV " -p x --min-p 2", "--min-p: '2' is not a number in [0, 1]");
    usage_error("generate -m " KJV " -p x --repeat-penalty 0", "--repeat-penalty: '0' is not a number in (0, 10]");
    usage_error("chat -m " KJV " --presence-penalty 3", "--presence-penalty: '3' is not a number in [-2, 2]");
    free(plain), free(pen), free(spec), free(b), free(minp), free(s1), free(s2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parser_values_and_defaults),
        cmocka_unit_test(parser_errors),
        cmocka_unit_test(parser_help),
        cmocka_unit_test(escapes),
        cmocka_unit_test(stop_matcher),
        cmocka_unit_test(stop_matcher_random),
        cmocka_unit_test(help_lists_exactly_the_accepted_flags),
        cmocka_unit_test(docs_match_help),
        cmocka_unit_test(flags_errors_end_to_end),
        cmocka_unit_test(stop_end_to_end),
        cmocka_unit_test(prompt_flags_end_to_end),
        cmocka_unit_test(threads_end_to_end),
        cmocka_unit_test(penalties_end_to_end),
    };
    return cmocka_run_group_tests_name("cli_options", tests, test_tmp_setup, test_tmp_teardown);
}
