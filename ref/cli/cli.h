/**
 * @file cli.h
 * @brief The subcommands of build/dsv3. Each takes the arguments after the subcommand name
 *        (argv[0] is the subcommand itself) and returns the process exit status.
 *
 * Every subcommand declares its flags as tables parsed by cli_parse (cli_opt.h; the shared groups
 * in cli_groups.h), so each accepts --help generated from them and validates every flag (a missing
 * value, a non-number, an out-of-range number, a flag given twice, an unknown flag is a one-line
 * error and exit status 2); errors go to stderr as "dsv3 <subcommand>: <message>" (docs/cli.md).
 */
#ifndef DSV3_CLI_H
#define DSV3_CLI_H

/** `dsv3 run`: the demo that `make run` starts. */
int cmd_run(int argc, char **argv);
/** `dsv3 logits`: logits of every input position (the golden-test contract). */
int cmd_logits(int argc, char **argv);
/** `dsv3 mkckpt`: write a random checkpoint in the real Hugging Face layout. */
int cmd_mkckpt(int argc, char **argv);
/** `dsv3 info`: print a checkpoint's config, tensor inventory and memory needs. */
int cmd_info(int argc, char **argv);
/** `dsv3 train`: train a model on pre-tokenized id files, writing Hugging Face checkpoints. */
int cmd_train(int argc, char **argv);
/** `dsv3 tokenize`: text (or a chat) to ids, as a JSON array on one line. */
int cmd_tokenize(int argc, char **argv);
/** `dsv3 detokenize`: ids to text. */
int cmd_detokenize(int argc, char **argv);
/** `dsv3 train-tokenizer`: learn a byte-level BPE vocabulary and write tokenizer.json. */
int cmd_train_tokenizer(int argc, char **argv);

/** `dsv3 generate`: complete a prompt, streaming text. */
int cmd_generate(int argc, char **argv);
/** `dsv3 chat`: interactive multi-turn chat over one KV cache. */
int cmd_chat(int argc, char **argv);
/** `dsv3 serve`: an OpenAI-compatible HTTP server (ref/serve/server.h). */
int cmd_serve(int argc, char **argv);
/** `dsv3 prepare-data`: text corpus → uint32 token-id files. */
int cmd_prepare_data(int argc, char **argv);
/** `dsv3 perplexity`: evaluate a checkpoint on held-out tokens. */
int cmd_perplexity(int argc, char **argv);
/** `dsv3 convert`: rewrite a checkpoint in another format or sharding. */
int cmd_convert(int argc, char **argv);
/** `dsv3 plan`: deployment memory/communication/time estimates. */
int cmd_plan(int argc, char **argv);
/** `dsv3 pipeline`: build, check and simulate pipeline schedules (ref/train/pipeline.h). */
int cmd_pipeline(int argc, char **argv);
/** `dsv3 eplb`: place redundant experts from routing statistics (ref/ep/eplb.h). */
int cmd_eplb(int argc, char **argv);

#endif
