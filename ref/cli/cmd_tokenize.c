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
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "tokenizer/chat.h"
#include "cli.h"
#include "cli_opt.h"
#include "cli_util.h"
#include "tokenizer/tokenizer.h"
#include "base/infile.h"
#include "base/outfile.h"
#include "base/util.h"

/** Largest --file we read (a prompt or an id list). */
#define CMD_MAX_INPUT ((size_t)1 << 30)

static int write_out(const char *cmd, const void *p, size_t n) {
    Err err = { "" };
    if (stdout_write(p, n, &err) || stdout_check(&err)) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
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

/** The flags of tokenize and detokenize. */
typedef struct {
    const char *dir, *text, *file, *ids;
    int chat;
} Args;

static const CliOpt tokenize_opts[] = {
    { "--tokenizer", NULL, CLI_STR, offsetof(Args, dir), "DIR",
      .help = "directory with tokenizer.json (and tokenizer_config.json), or the file itself" },
    { "--text", NULL, CLI_STR, offsetof(Args, text), "STR", .help = "the text (UTF-8)" },
    { "--file", NULL, CLI_STR, offsetof(Args, file), "PATH", .help = "read the text from PATH ('-' = standard input)" },
    { "--chat", NULL, CLI_FLAG, offsetof(Args, chat),
      .help = "the input is a JSON array of {\"role\", \"content\"} messages (roles system,\n"
              "user, assistant): print the ids of the tokenizer's chat template (recognized\n"
              "from tokenizer_config.json: deepseek-v3, -r1, -v3.1, kimi-k2, kimi-k2-thinking)\n"
              "with its generation prompt appended" },
};

static const char EXIT_STATUS[] = "Exit status: 0 ok, 1 run-time error (unreadable or invalid input, tokenizer does not load),\n"
                                  "2 usage error (unknown option, missing value, invalid UTF-8 in --text).";

int cmd_tokenize(int argc, char **argv) {
    const char *cmd = "tokenize";
    Args a = { 0 };
    CliCmd c = { .name = cmd, .usage = "--tokenizer DIR (--text STR | --file PATH) [--chat]",
                 .about = "\nPrints the token ids of the text as a JSON array on one line, e.g. [19923,14,2058],\n"
                          "exactly as Hugging Face tokenizers' encode(text, add_special_tokens=False).ids.",
                 .footer = EXIT_STATUS };
    cli_add(&c, CLI_GROUP(NULL, tokenize_opts, &a));
    int rc = cli_parse(&c, argc, argv);
    if (rc != CLI_RUN) return rc;
    const char *dir = a.dir, *text = a.text, *file = a.file;
    int chat = a.chat;
    if (!dir) return cli_fail(cmd, EXIT_USAGE, "--tokenizer DIR is required");
    if (!!text == !!file) return cli_fail(cmd, EXIT_USAGE, "give exactly one of --text and --file");
    if (text && !chat && !utf8_valid(text, strlen(text))) return cli_fail(cmd, EXIT_USAGE, "--text is not valid UTF-8");

    Err err = {{0}};
    char *data = NULL;
    size_t len = 0;
    if (file && read_input(file, CMD_MAX_INPUT, &data, &len, &err) != 0) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
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

static const CliOpt detokenize_opts[] = {
    { "--tokenizer", NULL, CLI_STR, offsetof(Args, dir), "DIR", .help = "directory with tokenizer.json, or the file itself" },
    { "--ids", NULL, CLI_STR, offsetof(Args, ids), "LIST", .help = "comma-separated ids, optionally in brackets: 1,2,3 or [1,2,3]" },
    { "--file", NULL, CLI_STR, offsetof(Args, file), "PATH", .help = "read the list from PATH ('-' = standard input), same format" },
};

int cmd_detokenize(int argc, char **argv) {
    const char *cmd = "detokenize";
    Args a = { 0 };
    CliCmd c = { .name = cmd, .usage = "--tokenizer DIR (--ids 1,2,3 | --file PATH)",
                 .about = "\nPrints the text of the token ids, byte for byte what Hugging Face tokenizers'\n"
                          "decode(ids, skip_special_tokens=False) returns (special tokens included; bytes that do not\n"
                          "form valid UTF-8 become U+FFFD). No newline is added.",
                 .footer = "Exit status: 0 ok, 1 run-time error (unreadable file, tokenizer does not load, bad ids in\n"
                           "--file), 2 usage error (unknown option, missing value, malformed or out-of-range --ids)." };
    cli_add(&c, CLI_GROUP(NULL, detokenize_opts, &a));
    int rc = cli_parse(&c, argc, argv);
    if (rc != CLI_RUN) return rc;
    const char *dir = a.dir, *idstr = a.ids, *file = a.file;
    if (!dir) return cli_fail(cmd, EXIT_USAGE, "--tokenizer DIR is required");
    if (!!idstr == !!file) return cli_fail(cmd, EXIT_USAGE, "give exactly one of --ids and --file");

    Err err = {{0}};
    IntVec ids = {0};
    char *data = NULL;
    size_t len = 0;
    int bad_status = idstr ? EXIT_USAGE : EXIT_RUNTIME; /* a bad id is a usage error when it came from the flag */
    const char *src = idstr ? "--ids" : file;
    if (file && read_input(file, CMD_MAX_INPUT, &data, &len, &err) != 0) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    if (parse_id_text(idstr ? idstr : data, idstr ? strlen(idstr) : len, -1, &ids.v, &ids.n, &err) != 0) {
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
