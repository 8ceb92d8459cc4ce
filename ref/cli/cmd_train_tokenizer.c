/**
 * @file cmd_train_tokenizer.c
 * @brief `dsv3 train-tokenizer`: learn a byte-level BPE tokenizer shaped like DeepSeek-V3's
 *        (bpe_train.h) from text files and write tokenizer.json + tokenizer_config.json.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/bpe_train.h"
#include "base/buf.h"
#include "cli.h"
#include "cli_opt.h"
#include "cli_util.h"
#include "base/util.h"

/** Largest input file read whole. */
#define TRAIN_MAX_FILE ((size_t)1 << 30)

/** The subcommand name in error messages. */
#define CMD "train-tokenizer"

/** What the command line sets. */
typedef struct {
    CliList inputs;
    const char *list, *out;
    long vocab_size, min_frequency;
} Args;

static const CliOpt opts[] = {
    { "--input", NULL, CLI_LIST, offsetof(Args, inputs), "FILE", .help = "a text file (repeatable)" },
    { "--input-list", NULL, CLI_STR, offsetof(Args, list), "LIST",
      .help = "a file naming one input file per line (relative to LIST's directory)" },
    { "--output", NULL, CLI_STR, offsetof(Args, out), "DIR", .help = "where to write (created if missing)" },
    { "--vocab-size", NULL, CLI_LONG, offsetof(Args, vocab_size), "N", .lo = 261, .hi = 1000000, .def = "4096",
      .help = "number of ids, special tokens included (261..1000000)" },
    { "--min-frequency", NULL, CLI_LONG, offsetof(Args, min_frequency), "N", .lo = 1, .hi = 2147483647L, .def = "2",
      .help = "merge only pairs seen at least N times" },
};

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

/** The command once its flags are parsed. */
static int run(const Args *a);

int cmd_train_tokenizer(int argc, char **argv) {
    Args a = { 0 };
    CliCmd cmd = { .name = CMD, .usage = "--input FILE [--input FILE ...] [--input-list LIST] --output DIR\n"
                                         "                            [--vocab-size N] [--min-frequency N]",
                   .about = "\nLearns a byte-level BPE tokenizer from UTF-8 text with DeepSeek-V3's pre-tokenizer and\n"
                            "chat template, and writes DIR/tokenizer.json and DIR/tokenizer_config.json (Hugging Face\n"
                            "layout). Ids: 0 <｜begin▁of▁sentence｜>, 1 <｜end▁of▁sentence｜>, 2 <｜▁pad▁｜>, 3..258 the\n"
                            "256 bytes, then one per merge, then <｜User｜> and <｜Assistant｜>. Ties between equally\n"
                            "frequent pairs go to the smaller left id, then the smaller right id.",
                   .footer = "Exit status: 0 ok, 1 run-time error, 2 usage error." };
    cli_add(&cmd, CLI_GROUP(NULL, opts, &a));
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_RUN) return rc;
    if (!a.out) rc = cli_fail(CMD, EXIT_USAGE, "--output DIR is required");
    else if (!a.inputs.n && !a.list) rc = cli_fail(CMD, EXIT_USAGE, "give at least one --input FILE or an --input-list");
    else rc = run(&a);
    cli_free(&cmd);
    return rc;
}

static int run(const Args *a) {
    BpeTrainOptions opt = bpe_train_defaults();
    opt.vocab_size = (int)a->vocab_size, opt.min_frequency = (int)a->min_frequency;
    const char *out = a->out, *list = a->list;
    const char *const *inputs = a->inputs.v;
    int ninputs = a->inputs.n, rc = 0;
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
    return rc;
}
