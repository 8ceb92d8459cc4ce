/**
 * @file cli_groups.h
 * @brief The option groups several commands share, declared once (cli_groups.c) and added to a
 *        command with cli_add(&cmd, cli_…_group(&struct)):
 *
 *   model      -m/--model                                  run info logits generate chat perplexity convert plan
 *   numerics   --attn, --fp8                               logits generate chat perplexity
 *   sampling   --temp, --top-k, --top-p, -s/--seed         generate chat run
 *   penalties  --min-p, --repeat-penalty, --repeat-last-n,  generate chat
 *              --presence-penalty, --frequency-penalty
 *   backend    --backend, --kv-cache                       logits generate chat
 *   EP         --ep, --ep-transport (cli_ep.h)             logits generate chat
 *   threads    -t/--threads                                every command that runs the model
 */
#ifndef DSV3_CLI_GROUPS_H
#define DSV3_CLI_GROUPS_H

#include "cli_ep.h"
#include "cli_opt.h"

/** -m and the numerics of the forward pass. */
typedef struct {
    const char *dir; /**< -m DIR (NULL: not given) */
    int attn;        /**< --attn: an AttnMode */
    int fp8;         /**< --fp8: an Fp8Mode */
} CliModel;

/** The sampler's settings (ref/generate/sampler.h). */
typedef struct {
    double temp;  /**< --temp: 0 = greedy */
    long top_k;   /**< --top-k: 0 = all */
    double top_p; /**< --top-p in (0, 1] */
    long seed;    /**< -s/--seed; from the clock unless cli_given(cmd, "--seed") */
} CliSampling;

/** The logits processing before each draw (ref/generate/logits_process.h), as llama.cpp's flags. */
typedef struct {
    double min_p;             /**< --min-p: 0 = off */
    double repeat_penalty;    /**< --repeat-penalty: 1 = off */
    long repeat_last_n;       /**< --repeat-last-n: −1 = the whole sequence */
    double presence_penalty;  /**< --presence-penalty: 0 = off */
    double frequency_penalty; /**< --frequency-penalty: 0 = off */
} CliPenalties;

/** Where the model runs. */
typedef struct {
    int gpu;     /**< --backend fast */
    int kv_bf16; /**< --kv-cache: −1 auto, else a KvFormat (0 f32, 1 bf16, 2 fp8) */
} CliBackend;

/** -t/--threads. */
typedef struct {
    long n; /**< 0: not given (threads_online()) */
} CliThreads;

/** -m/--model DIR. */
CliGroup cli_model_group(CliModel *m);
/** --attn absorb|naive and --fp8 dequant|w8a8 (into the same struct as -m). */
CliGroup cli_numerics_group(CliModel *m);
/** --temp, --top-k, --top-p, -s/--seed. */
CliGroup cli_sampling_group(CliSampling *s);
/** --min-p, --repeat-penalty, --repeat-last-n, --presence-penalty, --frequency-penalty (listed under sampling). */
CliGroup cli_penalties_group(CliPenalties *p);
/** --backend ref|fast and --kv-cache auto|f32|bf16|fp8. */
CliGroup cli_backend_group(CliBackend *b);
/** --ep N and --ep-transport nccl|tcp (see cli_ep.h). */
CliGroup cli_ep_group(CliEpFlags *f);
/** -t/--threads N; @p flags CLI_LONG_ONLY where the command's -t means something else (train). */
CliGroup cli_threads_group(CliThreads *t, unsigned flags);

/** Sets the thread count of the parallel loops (before any model work); returns the number in effect. */
int cli_threads_apply(const CliThreads *t);

#endif
