/**
 * @file main.c
 * @brief build/dsv3: one binary, one subcommand per job. This file only dispatches;
 *        each subcommand lives in its own ref/cli/cmd_*.c and is declared in cli.h; their flags are
 *        tables parsed by cli_opt.h.
 */
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "base/outfile.h"
#include "cli.h"
#include "cli_opt.h"

/** `dsv3 version`: the version and the backends linked into this binary. */
static int cmd_version(int argc, char **argv) {
    CliCmd cmd = { .name = "version", .usage = "", .about = "prints the version and the backends this build has" };
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_RUN) return rc;
    const char *gpu = gpu_backend_name(); /* NULL from ref/backend_stub.c when CUDA was not linked */
    printf("dsv3 0.1 (reference CPU backend%s%s)\n", gpu ? ", " : "", gpu ? gpu : "");
    return 0;
}

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} Command;

static const Command commands[] = {
    /* one line per subcommand, in the order `dsv3 --help` lists them */
    {"run", cmd_run, "the demo of `make run`: a golden checkpoint, checked against DeepSeek's own numbers"},
    {"info", cmd_info, "describe a checkpoint: configuration, storage, per-token costs"},
    {"logits", cmd_logits, "write the logits of every position of a token sequence (float32 file)"},
    {"generate", cmd_generate, "complete a prompt, streaming text (--spec mtp: MTP speculative decoding)"},
    {"chat", cmd_chat, "interactive multi-turn chat that keeps its KV cache across turns"},
    {"serve", cmd_serve, "OpenAI-compatible HTTP server: continuous batching, streaming, prefix reuse, a chat page"},
    {"prepare-data", cmd_prepare_data, "encode a text corpus into token-id files for training"},
    {"train", cmd_train, "train or fine-tune on pre-tokenized uint32 id files (AdamW, MTP, aux-loss-free balancing)"},
    {"perplexity", cmd_perplexity, "cross-entropy and perplexity of a checkpoint on held-out tokens"},
    {"convert", cmd_convert, "rewrite a checkpoint as FP8 / BF16 / F32, optionally sharded"},
    {"mkckpt", cmd_mkckpt, "write a random checkpoint in the Hugging Face layout (tests, benchmarks)"},
    {"eplb", cmd_eplb, "expert-parallel load balancer: redundant experts placed on GPUs from measured routing statistics"},
    {"pipeline", cmd_pipeline, "pipeline schedules (1F1B, ZB1P, DualPipe, DualPipeV) simulated against the paper's Table 2"},
    {"plan", cmd_plan, "weights, KV cache and all-to-all per GPU for serving on GPU clusters"},
    {"tokenize", cmd_tokenize, "text or a chat to token ids (a JSON array on one line)"},
    {"detokenize", cmd_detokenize, "token ids to text"},
    {"train-tokenizer", cmd_train_tokenizer, "learn a byte-level BPE tokenizer from text files"},
    {"version", cmd_version, "print the version and the backends this build has"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: dsv3 <command> [options]   (dsv3 <command> --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-16s %s\n", commands[i].name, commands[i].summary);
}

/** What went to stdout must have reached it: a write error (a full disk, /dev/full) is exit 1, not 0.
 *  A command that failed has said why in its one line (a write error included): nothing more then. */
static int checked(const char *cmd, int rc) {
    Err err = { "" };
    if (stdout_check(&err) == 0 || rc != 0) return rc;
    fprintf(stderr, "dsv3%s%s: %s\n", cmd ? " " : "", cmd ? cmd : "", err.msg);
    return rc ? rc : 1;
}

/** Dispatches argv[1] to its subcommand. */
int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return checked(NULL, argc < 2 ? 2 : 0);
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return checked(argv[1], commands[i].fn(argc - 1, argv + 1));
    fprintf(stderr, "dsv3: unknown command '%s' (dsv3 --help lists them)\n", argv[1]);
    return 2;
}
