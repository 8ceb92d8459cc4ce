/**
 * @file cli_opt.c
 * @brief One parser and one --help writer over the option tables (see cli_opt.h).
 *
 * Why not getopt_long: it cannot say llama.cpp's `-sys`, accepts unambiguous prefixes of long
 * names (`--te` for `--temp`, so adding an option can break a script), lets the last of two
 * equal flags win, and knows nothing of types, ranges or help text.
 */
#include "cli_opt.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"

void cli_add(CliCmd *c, CliGroup g) {
    DSV3_ASSERT(c->n_groups < CLI_MAX_GROUPS && g.n <= CLI_MAX_OPTS);
    c->groups[c->n_groups++] = g;
}

/** The option's storage in its group's struct. */
static void *slot(const CliGroup *g, const CliOpt *o) { return (char *)g->base + o->offset; }

/** The short name of @p o as @p g offers it (NULL: none). */
static const char *alias_of(const CliGroup *g, const CliOpt *o) { return g->flags & CLI_LONG_ONLY ? NULL : o->alias; }

/** "a, b or c" from "a|b|c". */
static void choice_list(const char *choices, char *buf, size_t n) {
    size_t k = 0;
    int parts = 1;
    for (const char *p = choices; *p; p++) parts += *p == '|';
    for (int i = 0; *choices && k + 1 < n; choices++) {
        if (*choices != '|') {
            buf[k++] = *choices;
            continue;
        }
        const char *sep = ++i == parts - 1 ? " or " : ", ";
        for (; *sep && k + 1 < n; sep++) buf[k++] = *sep;
    }
    buf[k] = 0;
}

/** Stores value @p v of option @p o (given as @p typed) in its slot. */
static int set_value(const CliGroup *g, const CliOpt *o, const char *typed, const char *v, Err *err) {
    void *p = slot(g, o);
    switch (o->type) {
    case CLI_FLAG:
        *(int *)p = 1;
        return 0;
    case CLI_STR:
        *(const char **)p = v;
        return 0;
    case CLI_LONG: {
        long x;
        if (parse_long(v, (long)o->lo, (long)o->hi, &x))
            return err_set(err, "%s: '%.100s' is not an integer in [%ld, %ld]", typed, v, (long)o->lo, (long)o->hi);
        *(long *)p = x;
        return 0;
    }
    case CLI_DOUBLE: {
        double x;
        if (parse_double(v, o->lo, o->hi, &x) || (o->open_lo && x == o->lo))
            return err_set(err, "%s: '%.100s' is not a number in %c%g, %g]", typed, v, o->open_lo ? '(' : '[', o->lo, o->hi);
        *(double *)p = x;
        return 0;
    }
    case CLI_CHOICE: {
        const char *c = o->choices;
        for (int k = 0;; k++) {
            size_t n = strcspn(c, "|");
            if (strlen(v) == n && !strncmp(c, v, n)) {
                *(int *)p = o->values ? o->values[k] : k;
                return 0;
            }
            if (!c[n]) break;
            c += n + 1;
        }
        char list[256];
        choice_list(o->choices, list, sizeof list);
        return err_set(err, "%s must be %s, got '%.100s'", typed, list, v);
    }
    case CLI_LIST: {
        CliList *l = p;
        const char **nv = realloc(l->v, ((size_t)l->n + 1) * sizeof *nv);
        if (!nv) return err_set(err, "out of memory");
        l->v = nv, l->v[l->n++] = v;
        return 0;
    }
    }
    return err_set(err, "%s: unknown option type", typed);
}

/** A value that is rather the next flag: "-x", "--x", but not "-", "-1" or "-.5". */
static int looks_like_flag(const char *v) {
    return v[0] == '-' && v[1] && !(v[1] >= '0' && v[1] <= '9') && v[1] != '.';
}

/** Finds the option spelled [a, a+n) (long name or short name); 0, or −1 when there is none. */
static int lookup(const CliCmd *c, const char *a, size_t n, int *gi, int *oi) {
    for (int i = 0; i < c->n_groups; i++)
        for (int k = 0; k < c->groups[i].n; k++) {
            const CliOpt *o = &c->groups[i].opts[k];
            const char *al = alias_of(&c->groups[i], o);
            if ((strlen(o->name) == n && !strncmp(o->name, a, n)) || (al && strlen(al) == n && !strncmp(al, a, n))) {
                *gi = i, *oi = k;
                return 0;
            }
        }
    return -1;
}

int cli_parse_quiet(CliCmd *c, int argc, char **argv, Err *err) {
    if (c->parsed) cli_free(c);
    c->parsed = 1;
    memset(c->given, 0, sizeof c->given);
    for (int i = 0; i < c->n_groups; i++)
        for (int k = 0; k < c->groups[i].n; k++) {
            const CliOpt *o = &c->groups[i].opts[k];
            if (o->type == CLI_LIST) *(CliList *)slot(&c->groups[i], o) = (CliList){ NULL, 0 };
            if (o->def && set_value(&c->groups[i], o, o->name, o->def, err)) return err_prefix(err, "the default of %s", o->name);
        }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        if (a[0] != '-' || !a[1])
            return err_set(err, "unexpected argument '%.200s' (dsv3 %s --help lists the options)", a, c->name);
        const char *eq = a[1] == '-' ? strchr(a, '=') : NULL;
        size_t n = eq ? (size_t)(eq - a) : strlen(a);
        int gi, oi;
        if (lookup(c, a, n, &gi, &oi)) {
            const char *near = cli_suggest(c, a);
            if (near) return err_set(err, "unknown option '%.*s'; did you mean '%s'?", (int)(n > 200 ? 200 : n), a, near);
            return err_set(err, "unknown option '%.*s' (dsv3 %s --help lists the options)", (int)(n > 200 ? 200 : n), a, c->name);
        }
        const CliGroup *g = &c->groups[gi];
        const CliOpt *o = &g->opts[oi];
        char typed[64];
        snprintf(typed, sizeof typed, "%.*s", (int)n, a);
        int *seen = &c->given[gi][oi];
        if (*seen && o->type != CLI_LIST) {
            const char *first = argv[*seen];
            size_t fn = first[1] == '-' && strchr(first, '=') ? (size_t)(strchr(first, '=') - first) : strlen(first);
            if (fn == n && !strncmp(first, a, n)) return err_set(err, "option %s given twice", typed);
            return err_set(err, "option %s given twice (as %.*s and %s)", o->name, (int)fn, first, typed);
        }
        if (!*seen) *seen = i;
        if (o->type == CLI_FLAG) {
            if (eq) return err_set(err, "option %s takes no value", typed);
            v = NULL;
        } else if (eq) {
            v = eq + 1;
        } else if (i + 1 >= argc) {
            return err_set(err, "%s needs a value", typed);
        } else if (looks_like_flag(argv[i + 1])) {
            return err_set(err, "%s needs a value, got the flag %.200s", typed, argv[i + 1]);
        } else {
            v = argv[++i];
        }
        if (set_value(g, o, typed, v, err)) return -1;
    }
    return 0;
}

int cli_parse(CliCmd *c, int argc, char **argv) {
    Err err = { "" };
    int rc = cli_parse_quiet(c, argc, argv, &err);
    if (rc == 0) return CLI_RUN;
    if (rc > 0) {
        cli_help(c, stdout);
        cli_free(c);
        return EXIT_OK;
    }
    cli_free(c);
    return cli_fail(c->name, EXIT_USAGE, "%s", err.msg);
}

int cli_given(const CliCmd *c, const char *name) {
    for (int i = 0; i < c->n_groups; i++)
        for (int k = 0; k < c->groups[i].n; k++)
            if (!strcmp(c->groups[i].opts[k].name, name)) return c->given[i][k] != 0;
    return 0;
}

void cli_free(CliCmd *c) {
    if (!c->parsed) return;
    for (int i = 0; i < c->n_groups; i++)
        for (int k = 0; k < c->groups[i].n; k++)
            if (c->groups[i].opts[k].type == CLI_LIST) {
                CliList *l = slot(&c->groups[i], &c->groups[i].opts[k]);
                free(l->v);
                l->v = NULL, l->n = 0;
            }
}

/* ---- suggestions ---------------------------------------------------------------------- */

/** @p s without its leading dashes, lower case, '_' as '-', into @p out (at most 63 bytes). */
static size_t bare(const char *s, size_t n, char out[64]) {
    while (n && *s == '-') s++, n--;
    size_t k = 0;
    for (; k < n && k < 63; k++) out[k] = s[k] == '_' ? '-' : (char)tolower((unsigned char)s[k]);
    out[k] = 0;
    return k;
}

/** Edit distance between two short strings: insertions, deletions, substitutions and swaps of
 *  two neighbours ("--mdoe" for "--mode") each count one (optimal string alignment). */
static size_t edit_distance(const char *a, size_t na, const char *b, size_t nb) {
    size_t d[64][64];
    for (size_t i = 0; i <= na; i++) d[i][0] = i;
    for (size_t j = 0; j <= nb; j++) d[0][j] = j;
    for (size_t i = 1; i <= na; i++)
        for (size_t j = 1; j <= nb; j++) {
            size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < best) best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[na][nb];
}

/** How far @p cand is from the typed name (smaller is closer); a large number when not close. */
static size_t closeness(const char *typed, size_t nt, const char *cand) {
    char b[64];
    size_t nb = bare(cand, strlen(cand), b);
    if (nt == nb && !memcmp(typed, b, nt)) return 0;
    size_t shorter = nt < nb ? nt : nb;
    if (shorter >= 3 && !memcmp(typed, b, shorter)) return 1; /* --temperature for --temp, --ctx for --ctx-size */
    size_t d = edit_distance(typed, nt, b, nb), limit = nb <= 2 ? 0 : nb / 3 > 1 ? nb / 3 : 1;
    return d <= limit ? d : (size_t)-1;
}

const char *cli_suggest(const CliCmd *c, const char *arg) {
    const char *eq = arg[0] == '-' && arg[1] == '-' ? strchr(arg, '=') : NULL;
    char t[64];
    size_t nt = bare(arg, eq ? (size_t)(eq - arg) : strlen(arg), t), best = (size_t)-1;
    const char *found = NULL;
    for (int i = 0; i < c->n_groups; i++)
        for (int k = 0; k < c->groups[i].n; k++) {
            const CliOpt *o = &c->groups[i].opts[k];
            const char *names[2] = { o->name, alias_of(&c->groups[i], o) };
            for (int q = 0; q < 2; q++) {
                size_t d = names[q] ? closeness(t, nt, names[q]) : (size_t)-1;
                if (d < best) best = d, found = names[q];
            }
        }
    return found;
}

/* ---- --help ----------------------------------------------------------------------------- */

/** Column where the help texts start, and the width they keep to. */
enum { HELP_COL = 28, HELP_WIDTH = 110 };

/** The default of @p o as --help shows it, or NULL. */
static const char *shown_default(const CliOpt *o) { return o->type == CLI_FLAG || o->type == CLI_LIST ? NULL : o->def; }

void cli_help(const CliCmd *c, FILE *f) {
    fprintf(f, "usage: dsv3 %s%s%s\n", c->name, c->usage[0] ? " " : "", c->usage);
    if (c->about) fprintf(f, "%s%s", c->about, c->about[strlen(c->about) - 1] == '\n' ? "" : "\n");
    for (int i = 0; i < c->n_groups; i++) {
        const CliGroup *g = &c->groups[i];
        if (g->title) fprintf(f, "\n%s:\n", g->title);
        else if (i == 0) fprintf(f, "\noptions:\n");
        for (int k = 0; k < g->n; k++) {
            const CliOpt *o = &g->opts[k];
            const char *al = alias_of(g, o), *meta = o->type == CLI_CHOICE ? o->choices : o->type == CLI_FLAG ? NULL : o->metavar;
            char left[160];
            int w = snprintf(left, sizeof left, "  %s%s%s%s%s", al ? al : "", al ? ", " : "", o->name, meta ? " " : "",
                             meta ? meta : "");
            fputs(left, f);
            if (w <= HELP_COL - 2) fprintf(f, "%*s", HELP_COL - w, "");
            else fprintf(f, "\n%*s", HELP_COL, "");
            size_t col = HELP_COL;
            for (const char *h = o->help; *h;) {
                size_t n = strcspn(h, "\n");
                fwrite(h, 1, n, f);
                h += n, col = HELP_COL + n;
                if (*h) fprintf(f, "\n%*s", HELP_COL, ""), h++;
            }
            const char *d = shown_default(o);
            if (d && col + strlen(d) + 11 > HELP_WIDTH) fprintf(f, "\n%*s", HELP_COL - 1, "");
            if (d) fprintf(f, o->type == CLI_STR && (!*d || strchr(d, ' ')) ? " (default '%s')" : " (default %s)", d);
            fputc('\n', f);
        }
    }
    fprintf(f, "\n  -h, --help%*sthis help\n", HELP_COL - 12, "");
    if (c->footer) fprintf(f, "\n%s%s", c->footer, c->footer[strlen(c->footer) - 1] == '\n' ? "" : "\n");
}
