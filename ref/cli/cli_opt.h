/**
 * @file cli_opt.h
 * @brief The option tables of build/dsv3: every flag declared once — name, short name, type,
 *        range, default, help — and one parser and one `--help` writer for all of them.
 *
 * A command lists its options as groups: its own tables plus the shared ones (cli_groups.h:
 * model, numerics, sampling, backend, expert parallelism, threads), each group bound to the
 * struct its offsets point into. cli_parse() applies the defaults, reads argv and reports the
 * first problem as one line "dsv3 <cmd>: <message>" (exit status 2):
 *
 *   unknown option '--temperature'; did you mean '--temp'?
 *   -n needs a value                  -p needs a value, got the flag --temp
 *   --top-k: '1.5' is not an integer in [0, 1073741824]
 *   --top-p: '0' is not a number in (0, 1]
 *   --attn must be absorb or naive, got 'flash'
 *   option --seed given twice         (only CLI_LIST options repeat)
 *   unexpected argument 'stray'       (no command takes positional arguments)
 *
 * Conventions (docs/cli.md): long options are `--name VALUE` or `--name=VALUE` (the second form
 * takes any value, even one that starts with a dash); short ones are `-x VALUE` (and llama.cpp's
 * `-sys`); a value that looks like a flag ("-x", "--x", not "-1" or "-.5") counts as missing;
 * `-h`/`--help` prints the help generated from the tables and exits 0.
 */
#ifndef DSV3_CLI_OPT_H
#define DSV3_CLI_OPT_H

#include <stddef.h>
#include <stdio.h>

#include "base/util.h"

/** What an option's value is, and the C type it is stored as. */
typedef enum {
    CLI_FLAG,   /**< no value; int, set to 1 */
    CLI_STR,    /**< const char * (pointing into argv or at the default) */
    CLI_LONG,   /**< long in [lo, hi] */
    CLI_DOUBLE, /**< double in [lo, hi] (or (lo, hi] with open_lo), finite */
    CLI_CHOICE, /**< int: values[k] (or k) for the k-th of choices "a|b|c" */
    CLI_LIST,   /**< CliList: a string option that may be given any number of times */
} CliType;

/** The values of a CLI_LIST option, in command-line order (the array is the parser's). */
typedef struct {
    const char **v; /**< [n] pointers into argv */
    int n;          /**< how many were given */
} CliList;

/** One option. */
typedef struct {
    const char *name;    /**< long form, "--temp" */
    const char *alias;   /**< short form, "-s" or "-sys"; NULL: none */
    CliType type;        /**< value kind */
    size_t offset;       /**< where the value goes: offsetof(the group's struct, field) */
    const char *metavar; /**< the value's name in --help ("T", "DIR"); CLI_CHOICE shows its choices */
    const char *choices; /**< CLI_CHOICE: "absorb|naive" */
    const int *values;   /**< CLI_CHOICE: the int stored for each choice; NULL: its index */
    double lo;           /**< CLI_LONG / CLI_DOUBLE: smallest value */
    double hi;           /**< CLI_LONG / CLI_DOUBLE: largest value */
    int open_lo;         /**< CLI_DOUBLE: lo itself is excluded */
    const char *def;     /**< default in command-line syntax, set before argv is read; NULL: none */
    const char *help;    /**< what it does, one line or several separated by '\n' */
} CliOpt;

/** The most options of one group, and groups of one command. */
enum { CLI_MAX_OPTS = 48, CLI_MAX_GROUPS = 10 };

/** Options of a group that drop their short names (the command uses them for something else). */
enum { CLI_LONG_ONLY = 1 };

/** A table of options bound to the struct its offsets point into. */
typedef struct {
    const char *title;  /**< heading in --help; NULL: continues the previous heading */
    const CliOpt *opts; /**< [n] the table */
    int n;              /**< its length */
    void *base;         /**< the struct the offsets point into */
    unsigned flags;     /**< CLI_LONG_ONLY */
} CliGroup;

/** The number of entries of an option table. */
#define CLI_COUNT(table) ((int)(sizeof(table) / sizeof((table)[0])))
/** A command's own table as a group: its --help heading, the table, the struct it fills. */
#define CLI_GROUP(title, table, base) ((CliGroup){ (title), (table), CLI_COUNT(table), (base), 0 })

/** A command's options, help text and, after cli_parse, which options were given. */
typedef struct {
    const char *name;    /**< the subcommand, "generate" */
    const char *usage;   /**< the synopsis after "usage: dsv3 <name> " */
    const char *about;   /**< text between the usage line and the options; NULL: none */
    const char *footer;  /**< text after the options; NULL: none */
    CliGroup groups[CLI_MAX_GROUPS]; /**< [n_groups] */
    int n_groups;        /**< groups in use */
    int given[CLI_MAX_GROUPS][CLI_MAX_OPTS]; /**< argv index where each option was first given; 0: not given */
    int parsed;          /**< cli_parse ran: the CLI_LIST arrays are the parser's to free */
} CliCmd;

/** cli_parse's "the flags are valid, run the command" (every other result is an exit status). */
enum { CLI_RUN = -1 };

/** Appends @p g (by value; its base stays the caller's) to @p c's groups. */
void cli_add(CliCmd *c, CliGroup g);

/**
 * Applies every default, then reads argv[1..argc) (argv[0] is the subcommand). Returns CLI_RUN
 * when the command should go on; after `-h`/`--help` it prints the help to stdout and returns
 * EXIT_OK (0); on an invalid command line it prints one line to stderr and returns 2. Values
 * point into argv (or at the tables' defaults); CLI_LIST arrays are freed by cli_free.
 */
int cli_parse(CliCmd *c, int argc, char **argv);

/**
 * cli_parse without printing: 0 when parsed, 1 when `-h`/`--help` was given, −1 with the
 * message (without the "dsv3 <cmd>: " prefix) in @p err. The tests call this one.
 */
int cli_parse_quiet(CliCmd *c, int argc, char **argv, Err *err);

/** Writes the --help text, generated from the groups, to @p f. */
void cli_help(const CliCmd *c, FILE *f);

/** 1 if option @p name (its long form) was on the command line, 0 if not (or not an option of @p c). */
int cli_given(const CliCmd *c, const char *name);

/** Frees what cli_parse allocated (the CLI_LIST arrays) and empties those lists. */
void cli_free(CliCmd *c);

/**
 * The known option closest to @p arg (an unknown "--name" or "--name=value"), or NULL when none
 * is close: the same name up to case, '_' for '-' and a few typos, or one that begins the other.
 */
const char *cli_suggest(const CliCmd *c, const char *arg);

#endif
