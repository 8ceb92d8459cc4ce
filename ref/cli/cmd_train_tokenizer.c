/**
 * @file cmd_train_tokenizer.c
 * @brief `dsv3 train-tokenizer`: learn a byte-level BPE tokenizer shaped like DeepSeek-V3's
 *        (bpe_train.h) from text files and write tokenizer.json + tokenizer_config.json.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/bpe_train.h"
#include "base/buf.h"
#include "cli.h"
#include "cli_util.h"
#include "base/util.h"

/** Largest input file read whole. */
#define TRAIN_MAX_FILE ((size_t)1 << 30)

/** The subcommand name in error messages. */
#define CMD "train-tokenizer"

static const char HELP[] =
    "usage: dsv3 train-tokenizer --input FILE [--input FILE ...] [--input-list LIST] --output DIR\n"
    "                            [--vocab-size N] [--min-frequency N]\n"
    "\n"
    "Learns a byte-level BPE tokenizer from UTF-8 text with DeepSeek-V3's pre-tokenizer and\n"
    "chat template, and writes DIR/tokenizer.json and DIR/tokenizer_config.json (Hugging Face\n"
    "layout). Ids: 0 <｜begin▁of▁sentence｜>, 1 <｜end▁of▁sentence｜>, 2 <｜▁pad▁｜>, 3..258 the\n"
    "256 bytes, then one per merge, then <｜User｜> and <｜Assistant｜>. Ties between equally\n"
    "frequent pairs go to the smaller left id, then the smaller right id.\n"
    "\n"
    "  --input FILE       a text file (repeatable)\n"
    "  --input-list LIST  a file naming one input file per line (relative to LIST's directory)\n"
    "  --output DIR       where to write (created if missing)\n"
    "  --vocab-size N     number of ids, special tokens included (default 4096, 261..1000000)\n"
    "  --min-frequency N  merge only pairs seen at least N times (default 2)\n"
    "\n"
    "Exit status: 0 ok, 1 run-time error, 2 usage error.\n";

static int add_file(BpeTrainer *tr, const char *path) {
    Err err = {{0}};
    char *data;
    size_t len;
    if (read_file(path, TRAIN_MAX_FILE, &data, &len, &err) != 0) return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    if (!utf8_valid(data, len)) {
        free(data);
        return cli_fail(CMD, EXIT_RUNTIME, "%s: not valid UTF-8", path);
    }
    int rc = bpe_train_feed(tr, data, len, &err) != 0 ? cli_fail(CMD, EXIT_RUNTIME, "%s: %s", path, err.msg) : 0;
    free(data);
    return rc;
}

static int add_list(BpeTrainer *tr, const char *list, int *nfiles) {
    Err err = {{0}};
    char *data;
    size_t len;
    if (read_file(list, TRAIN_MAX_FILE, &data, &len, &err) != 0) return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    int rc = 0;
    for (char *line = data; rc == 0 && line < data + len;) {
        char *end = memchr(line, '\n', (size_t)(data + len - line));
        if (!end) end = data + len;
        *end = 0;
        if (end > line && end[-1] == '\r') end[-1] = 0;
        if (*line) {
            /* relative names are relative to the list's own directory */
            char path[4096];
            const char *slash = strrchr(list, '/');
            if (line[0] != '/' && slash &&
                snprintf(path, sizeof path, "%.*s/%s", (int)(slash - list), list, line) >= (int)sizeof path)
                rc = cli_fail(CMD, EXIT_RUNTIME, "%s: path too long: %.100s", list, line);
            if (rc == 0) rc = add_file(tr, line[0] != '/' && slash ? path : line);
            ++*nfiles;
        }
        line = end + 1;
    }
    free(data);
    return rc;
}

int cmd_train_tokenizer(int argc, char **argv) {
    BpeTrainOptions opt = bpe_train_defaults();
    const char *out = NULL, *list = NULL;
    int ninputs = 0;
    const char **inputs = xcalloc((size_t)argc + 1, sizeof *inputs);
    if (!inputs) return cli_fail(CMD, EXIT_RUNTIME, "out of memory");
    int rc = 0;
    for (int i = 1; i < argc && rc == 0; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(HELP, stdout);
            free(inputs);
            return 0;
        }
        const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        static const char *const names[] = {"--input", "--input-list", "--output", "--vocab-size", "--min-frequency"};
        int k = -1;
        for (int q = 0; q < 5; q++)
            if (strlen(names[q]) == nlen && !strncmp(a, names[q], nlen)) k = q;
        if (k < 0) {
            rc = strncmp(a, "--", 2) ? cli_fail(CMD, EXIT_USAGE, "unexpected argument '%.200s' (--help lists the options)", a)
                                     : cli_fail(CMD, EXIT_USAGE, "unknown option '%.*s' (--help lists the options)", (int)(nlen > 200 ? 200 : nlen), a);
            break;
        }
        if (eq) v = eq + 1;
        else if (!(v = cli_value(CMD, argc, argv, &i))) { rc = EXIT_USAGE; break; }
        long n;
        switch (k) {
        case 0: inputs[ninputs++] = v; break;
        case 1: if (list) rc = cli_fail(CMD, EXIT_USAGE, "option --input-list given twice"); list = v; break;
        case 2: if (out) rc = cli_fail(CMD, EXIT_USAGE, "option --output given twice"); out = v; break;
        case 3:
            if (parse_long(v, 261, 1000000, &n) != 0) rc = cli_fail(CMD, EXIT_USAGE, "--vocab-size: '%.40s' is not an integer in [261, 1000000]", v);
            else opt.vocab_size = (int)n;
            break;
        case 4:
            if (parse_long(v, 1, 2147483647L, &n) != 0) rc = cli_fail(CMD, EXIT_USAGE, "--min-frequency: '%.40s' is not a positive integer", v);
            else opt.min_frequency = (int)n;
            break;
        }
    }
    if (rc == 0 && !out) rc = cli_fail(CMD, EXIT_USAGE, "--output DIR is required");
    if (rc == 0 && !ninputs && !list) rc = cli_fail(CMD, EXIT_USAGE, "give at least one --input FILE or an --input-list");
    if (rc) {
        free(inputs);
        return rc;
    }

    Err err = {{0}};
    BpeTrainer *tr = NULL;
    double t0 = now_seconds();
    if (bpe_train_new(&tr, &opt, &err) != 0) rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    for (int i = 0; rc == 0 && i < ninputs; i++) rc = add_file(tr, inputs[i]);
    int nfiles = ninputs;
    if (rc == 0 && list) rc = add_list(tr, list, &nfiles);
    double t1 = now_seconds();
    if (rc == 0 && bpe_train_run(tr, &err) != 0) rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    double t2 = now_seconds();
    if (rc == 0 && bpe_train_save(tr, out, &err) != 0) rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    if (rc == 0) {
        BpeTrainStats s = bpe_train_stats(tr);
        printf("train-tokenizer: %d ids (%d merges) from %d file%s, %.2f MB, %zu pieces (%zu distinct); "
               "pre-tokenize %.2f s, merges %.2f s -> %s/tokenizer.json\n",
               s.vocab_size, s.merges, nfiles, nfiles == 1 ? "" : "s", (double)s.bytes / 1e6, s.pieces,
               s.distinct, t1 - t0, t2 - t1, out);
        if (s.vocab_size < opt.vocab_size)
            printf("train-tokenizer: stopped at %d of %d ids: no pair occurs %d times or more\n", s.vocab_size,
                   opt.vocab_size, opt.min_frequency);
    }
    bpe_train_free(tr);
    free(inputs);
    return rc;
}
