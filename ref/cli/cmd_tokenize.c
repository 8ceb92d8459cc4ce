/**
 * @file cmd_tokenize.c
 * @brief `dsv3 tokenize` and `dsv3 detokenize` (docs/model.md §9.2): the command-line contract
 *        other tools rely on.
 *
 * - `dsv3 tokenize --tokenizer DIR (--text STR | --file PATH)` prints `[id,id,...]` and a
 *   newline (no special tokens added);
 * - `dsv3 tokenize --tokenizer DIR --chat (--file MSGS.json | --text JSON)` prints the ids of the
 *   templated prompt, BOS first, ending with `<｜Assistant｜>` (the generation prompt);
 * - `dsv3 detokenize --tokenizer DIR (--ids 1,2,3 | --file PATH)` prints the text, byte for byte
 *   what Hugging Face decode(ids) returns; no newline is added (the text may end in one).
 *
 * DIR may also be a tokenizer.json file; PATH may be "-" for standard input. Errors are one
 * line `dsv3 COMMAND: MESSAGE` on stderr; exit status 2 for usage errors (unknown flag,
 * missing value, a malformed or out-of-range id, invalid UTF-8 in --text), 1 for run-time
 * errors (a file that cannot be read or is not valid UTF-8/JSON, a tokenizer that does not
 * load, a message list that the template rejects).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "tokenizer/chat.h"
#include "cli.h"
#include "cli_util.h"
#include "tokenizer/tokenizer.h"
#include "base/util.h"

/** Largest --file we read (a prompt or an id list). */
#define CMD_MAX_INPUT ((size_t)1 << 30)

/* One flag of a command: its name, whether it takes a value, where the value goes. */
typedef struct {
    const char *name;
    int has_value;
    const char **value; /* has_value: the string; else set to "1" when present */
} Flag;

/* Parses "--name value" (cli_value: a value that looks like a flag counts as missing),
 * "--name=value" (any value, e.g. --text=-x) and "--help". Returns -1 after --help (printed),
 * 0 on success, or EXIT_USAGE after printing the error. */
static int parse_flags(const char *cmd, int argc, char **argv, Flag *flags, int nflags, const char *help) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(help, stdout);
            return -1;
        }
        if (strncmp(a, "--", 2) != 0)
            return cli_fail(cmd, EXIT_USAGE, "unexpected argument '%.200s' (dsv3 %s --help lists the options)", a, cmd);
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        Flag *f = NULL;
        for (int k = 0; k < nflags; k++)
            if (strlen(flags[k].name) == nlen && !strncmp(flags[k].name, a, nlen)) f = &flags[k];
        if (!f) return cli_fail(cmd, EXIT_USAGE, "unknown option '%.*s' (dsv3 %s --help lists the options)", (int)(nlen > 200 ? 200 : nlen), a, cmd);
        if (*f->value) return cli_fail(cmd, EXIT_USAGE, "option %s given twice", f->name);
        if (!f->has_value) {
            if (eq) return cli_fail(cmd, EXIT_USAGE, "option %s takes no value", f->name);
            *f->value = "1";
        } else if (eq) {
            *f->value = eq + 1;
        } else if (!(*f->value = cli_value(cmd, argc, argv, &i))) {
            return EXIT_USAGE;
        }
    }
    return 0;
}

/* Reads PATH ("-" = standard input) whole. */
static int read_input(const char *path, char **data, size_t *len, Err *err) {
    if (strcmp(path, "-") != 0) return read_file(path, CMD_MAX_INPUT, data, len, err);
    ByteBuf b = {0};
    char chunk[65536];
    size_t k;
    while ((k = fread(chunk, 1, sizeof chunk, stdin)) > 0) {
        if (b.len + k > CMD_MAX_INPUT || bytebuf_append(&b, chunk, k) != 0) {
            bytebuf_free(&b);
            return err_set(err, "standard input: more than %zu bytes or out of memory", CMD_MAX_INPUT);
        }
    }
    if (ferror(stdin)) {
        bytebuf_free(&b);
        return err_set(err, "standard input: read error");
    }
    if (bytebuf_reserve(&b, 0) != 0) return err_set(err, "standard input: out of memory");
    *data = b.data;
    *len = b.len;
    return 0;
}

static int write_out(const char *cmd, const void *p, size_t n) {
    if ((n && fwrite(p, 1, n, stdout) != n) || fflush(stdout) != 0)
        return cli_fail(cmd, EXIT_RUNTIME, "cannot write to standard output");
    return 0;
}

static int print_ids(const char *cmd, const int *ids, int n) {
    ByteBuf b = {0};
    int rc = bytebuf_puts(&b, "[");
    for (int i = 0; i < n && rc == 0; i++) rc = bytebuf_printf(&b, i ? ",%d" : "%d", ids[i]);
    if (rc == 0) rc = bytebuf_puts(&b, "]\n");
    rc = rc ? cli_fail(cmd, EXIT_RUNTIME, "out of memory") : write_out(cmd, b.data, b.len);
    bytebuf_free(&b);
    return rc;
}

static const char TOKENIZE_HELP[] =
    "usage: dsv3 tokenize --tokenizer DIR (--text STR | --file PATH) [--chat]\n"
    "\n"
    "Prints the token ids of the text as a JSON array on one line, e.g. [19923,14,2058],\n"
    "exactly as Hugging Face tokenizers' encode(text, add_special_tokens=False).ids.\n"
    "\n"
    "  --tokenizer DIR  directory with tokenizer.json (and tokenizer_config.json), or the file itself\n"
    "  --text STR       the text (UTF-8)\n"
    "  --file PATH      read the text from PATH ('-' = standard input)\n"
    "  --chat           the input is a JSON array of {\"role\", \"content\"} messages (roles system,\n"
    "                   user, assistant): print the ids of the tokenizer's chat template (recognized\n"
    "                   from tokenizer_config.json: deepseek-v3, -r1, -v3.1, kimi-k2, kimi-k2-thinking)\n"
    "                   with its generation prompt appended\n"
    "\n"
    "Exit status: 0 ok, 1 run-time error (unreadable or invalid input, tokenizer does not load),\n"
    "2 usage error (unknown option, missing value, invalid UTF-8 in --text).\n";

int cmd_tokenize(int argc, char **argv) {
    const char *cmd = "tokenize", *dir = NULL, *text = NULL, *file = NULL, *chat = NULL;
    Flag flags[] = {{"--tokenizer", 1, &dir}, {"--text", 1, &text}, {"--file", 1, &file}, {"--chat", 0, &chat}};
    int rc = parse_flags(cmd, argc, argv, flags, 4, TOKENIZE_HELP);
    if (rc) return rc < 0 ? 0 : rc;
    if (!dir) return cli_fail(cmd, EXIT_USAGE, "--tokenizer DIR is required");
    if (!!text == !!file) return cli_fail(cmd, EXIT_USAGE, "give exactly one of --text and --file");
    if (text && !chat && !utf8_valid(text, strlen(text))) return cli_fail(cmd, EXIT_USAGE, "--text is not valid UTF-8");

    Err err = {{0}};
    char *data = NULL;
    size_t len = 0;
    if (file && read_input(file, &data, &len, &err) != 0) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    const char *in = text ? text : data;
    if (text) len = strlen(text);

    Tokenizer *t = NULL;
    int *ids = NULL, n = 0;
    if (tokenizer_load(&t, dir, &err) != 0) {
        rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    } else if (chat) {
        ChatLog log;
        if (chat_parse_json(in, len, &log, &err) != 0 || chat_encode(t, log.msg, log.n, 1, &ids, &n, &err) != 0)
            rc = cli_fail(cmd, EXIT_RUNTIME, "%s: %s", file ? file : "--text", err.msg);
        else
            rc = print_ids(cmd, ids, n);
        chat_log_free(&log);
    } else if (tokenizer_encode(t, in, len, &ids, &n, &err) != 0) {
        rc = cli_fail(cmd, EXIT_RUNTIME, "%s: %s", file, err.msg);
    } else {
        rc = print_ids(cmd, ids, n);
    }
    free(ids);
    free(data);
    tokenizer_free(t);
    return rc;
}

/* Parses "1,2,3" or "[1, 2, 3]" (what tokenize prints); whitespace allowed around ids. */
static int parse_ids(const char *s, size_t len, IntVec *out, Err *err) {
    size_t i = 0;
    while (i < len && strchr(" \t\r\n", s[i])) i++;
    int bracket = i < len && s[i] == '[';
    if (bracket) i++;
    int expect_id = 1, count = 0;
    for (;;) {
        while (i < len && strchr(" \t\r\n", s[i])) i++;
        if (i >= len || (bracket && s[i] == ']')) break;
        if (!expect_id) {
            if (s[i] != ',') return err_set(err, "expected ',' at offset %zu", i);
            i++;
            expect_id = 1;
            continue;
        }
        if (s[i] < '0' || s[i] > '9') return err_set(err, "'%.20s' is not a token id (a non-negative integer)", s + i);
        long v = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            v = v * 10 + (s[i++] - '0');
            if (v > 0x7fffffff) return err_set(err, "token id at offset %zu is too large", i);
        }
        if (intvec_push(out, (int)v) != 0) return err_set(err, "out of memory");
        count++;
        expect_id = 0;
    }
    if (bracket) {
        if (i >= len || s[i] != ']') return err_set(err, "missing ']'");
        i++;
        while (i < len && strchr(" \t\r\n", s[i])) i++;
    }
    if (i < len) return err_set(err, "unexpected '%.20s' after the ids", s + i);
    if (count > 0 && expect_id) return err_set(err, "trailing ','");
    return 0;
}

static const char DETOKENIZE_HELP[] =
    "usage: dsv3 detokenize --tokenizer DIR (--ids 1,2,3 | --file PATH)\n"
    "\n"
    "Prints the text of the token ids, byte for byte what Hugging Face tokenizers'\n"
    "decode(ids, skip_special_tokens=False) returns (special tokens included; bytes that do not\n"
    "form valid UTF-8 become U+FFFD). No newline is added.\n"
    "\n"
    "  --tokenizer DIR  directory with tokenizer.json, or the file itself\n"
    "  --ids LIST       comma-separated ids, optionally in brackets: 1,2,3 or [1,2,3]\n"
    "  --file PATH      read the list from PATH ('-' = standard input), same format\n"
    "\n"
    "Exit status: 0 ok, 1 run-time error (unreadable file, tokenizer does not load, bad ids in\n"
    "--file), 2 usage error (unknown option, missing value, malformed or out-of-range --ids).\n";

int cmd_detokenize(int argc, char **argv) {
    const char *cmd = "detokenize", *dir = NULL, *idstr = NULL, *file = NULL;
    Flag flags[] = {{"--tokenizer", 1, &dir}, {"--ids", 1, &idstr}, {"--file", 1, &file}};
    int rc = parse_flags(cmd, argc, argv, flags, 3, DETOKENIZE_HELP);
    if (rc) return rc < 0 ? 0 : rc;
    if (!dir) return cli_fail(cmd, EXIT_USAGE, "--tokenizer DIR is required");
    if (!!idstr == !!file) return cli_fail(cmd, EXIT_USAGE, "give exactly one of --ids and --file");

    Err err = {{0}};
    IntVec ids = {0};
    char *data = NULL;
    size_t len = 0;
    int bad_status = idstr ? EXIT_USAGE : EXIT_RUNTIME; /* a bad id is a usage error when it came from the flag */
    const char *src = idstr ? "--ids" : file;
    if (file && read_input(file, &data, &len, &err) != 0) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    if (parse_ids(idstr ? idstr : data, idstr ? strlen(idstr) : len, &ids, &err) != 0) {
        free(data);
        intvec_free(&ids);
        return cli_fail(cmd, bad_status, "%s: %s", src, err.msg);
    }
    free(data);
    Tokenizer *t = NULL;
    char *text = NULL;
    if (tokenizer_load(&t, dir, &err) != 0) {
        rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    } else if (ids.n > 0x7fffffff) {
        rc = cli_fail(cmd, bad_status, "%s: too many ids", src);
    } else if (tokenizer_decode(t, ids.v, (int)ids.n, &text, &len, &err) != 0) {
        rc = cli_fail(cmd, bad_status, "%s: %s", src, err.msg);
    } else {
        rc = write_out(cmd, text, len);
    }
    free(text);
    intvec_free(&ids);
    tokenizer_free(t);
    return rc;
}
