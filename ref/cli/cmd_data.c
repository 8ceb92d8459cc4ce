/**
 * @file cmd_data.c
 * @brief `dsv3 prepare-data`: a text corpus → token-id files for `dsv3 train`.
 *
 *   dsv3 prepare-data --tokenizer DIR --input TEXT --train TRAIN.bin --val VAL.bin [--val-every N]
 *
 * Documents are separated by blank lines. Each document is encoded with the tokenizer and
 * written as BOS + ids (BOS marks where a document starts, as in pre-training); every N-th
 * document (default 20) goes to the validation file, the rest to the training file. Output
 * files are flat arrays of little-endian uint32 ids (llm.c style), written atomically.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "base/buf.h"
#include "cli.h"
#include "cli_opt.h"
#include "cli_util.h"
#include "tokenizer/tokenizer.h"

static const char *const CMD = "prepare-data";

/** True when @p a and @p b name the same file: the same path, or the same existing inode (links, ./x). */
static int same_file(const char *a, const char *b) {
    struct stat sa, sb;
    if (!strcmp(a, b)) return 1;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static int write_ids(const char *path, const IntVec *v, Err *err) {
    /* ids are non-negative ints < vocab: stored as uint32 (little-endian on our targets). */
    return write_file_atomic(path, v->v ? (const void *)v->v : "", v->n * sizeof(int), err);
}

/** What the command line sets. */
typedef struct {
    const char *tok_dir, *input, *train, *val;
    long every;
} Args;

static const CliOpt opts[] = {
    { "--tokenizer", NULL, CLI_STR, offsetof(Args, tok_dir), "DIR", .help = "tokenizer.json location (a directory or the file)" },
    { "--input", NULL, CLI_STR, offsetof(Args, input), "TEXT", .help = "the corpus: UTF-8, documents separated by blank lines" },
    { "--train", NULL, CLI_STR, offsetof(Args, train), "TRAIN.bin", .help = "training ids to write" },
    { "--val", NULL, CLI_STR, offsetof(Args, val), "VAL.bin", .help = "validation ids to write" },
    { "--val-every", NULL, CLI_LONG, offsetof(Args, every), "N", .lo = 2, .hi = 1000000, .def = "20",
      .help = "every N-th document goes to the validation file" },
};

int cmd_prepare_data(int argc, char **argv) {
    Args a = { 0 };
    CliCmd cmd = { .name = CMD, .usage = "--tokenizer DIR --input TEXT --train TRAIN.bin --val VAL.bin [--val-every N]",
                   .about = "encodes blank-line-separated documents as BOS + ids (uint32 little-endian)" };
    cli_add(&cmd, CLI_GROUP(NULL, opts, &a));
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_RUN) return rc;
    const char *tok_dir = a.tok_dir, *input = a.input, *train = a.train, *val = a.val;
    long every = a.every;
    if (!tok_dir || !input || !train || !val)
        return cli_fail(CMD, EXIT_USAGE, "--tokenizer, --input, --train and --val are required");
    /* The outputs are written one after the other: the same file for both would end up holding the
     * validation ids only, and the input must survive to be read. */
    if (same_file(train, val) || same_file(train, input) || same_file(val, input))
        return cli_fail(CMD, EXIT_USAGE, "--train, --val and --input must be three different files (%s, %s, %s)", train, val,
                        input);
    Err err = { "" };
    Tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    IntVec tr = { 0 }, va = { 0 };
    rc = EXIT_RUNTIME;
    if (tokenizer_load(&tok, tok_dir, &err) || read_file(input, 1u << 30, &text, &len, &err)) goto fail;
    if (!utf8_valid(text, len)) {
        err_set(&err, "%s is not valid UTF-8", input);
        goto fail;
    }
    int bos = tokenizer_bos_id(tok);
    if (bos < 0) {
        err_set(&err, "%s: the tokenizer has no bos_token", tok_dir);
        goto fail;
    }
    long docs = 0;
    size_t pos = 0;
    while (pos < len) {
        /* One document: up to the next blank line. */
        while (pos < len && text[pos] == '\n') pos++;
        size_t end = pos;
        while (end < len && !(text[end] == '\n' && end + 1 < len && text[end + 1] == '\n')) end++;
        if (end > pos) {
            IntVec *dst = (docs % every == every - 1) ? &va : &tr;
            if (intvec_push(dst, bos) || tokenizer_encode_append(tok, text + pos, end - pos, dst, &err)) goto fail;
            docs++;
        }
        pos = end;
    }
    if (docs == 0) {
        err_set(&err, "%s: no documents (the input is empty or only blank lines)", input);
        goto fail;
    }
    if (va.n == 0)
        fprintf(stderr, "dsv3 prepare-data: note: %ld documents, fewer than --val-every %ld: %s gets no tokens\n", docs,
                every, val);
    if (write_ids(train, &tr, &err) || write_ids(val, &va, &err)) goto fail;
    fprintf(stderr, "dsv3 prepare-data: %ld documents, %.2f MB of text -> %zu training + %zu validation tokens"
                    " (%.2f bytes/token)\n",
            docs, (double)len / 1e6, tr.n, va.n, (double)len / (double)(tr.n + va.n));
    rc = EXIT_OK;
    goto done;
fail:
    rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
done:
    free(tr.v);
    free(va.v);
    free(text);
    tokenizer_free(tok);
    return rc;
}
