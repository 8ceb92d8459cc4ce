/**
 * @file cli_load.c
 * @brief Implementation of cli_load.h.
 */
#include "cli_load.h"

#include <stdio.h>
#include <string.h>

#include "cli_util.h"

int cli_load(const char *cmd, const char *dir, const char *tokenizer_dir, int need_mtp, CliLoaded *l) {
    memset(l, 0, sizeof *l);
    Err err = { "" };
    if (model_load(&l->m, dir, stderr, &err)) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    l->have_model = 1;
    if (tokenizer_load(&l->tok, tokenizer_dir ? tokenizer_dir : dir, &err)) return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    l->n_sample = tokenizer_vocab_size(l->tok);
    if (l->n_sample > l->m.config.vocab_size)
        return cli_fail(cmd, EXIT_RUNTIME, "the tokenizer has %d ids but the model only %d (vocab_size)", l->n_sample,
                        l->m.config.vocab_size);
    if (need_mtp && l->m.w.n_mtp == 0) return cli_fail(cmd, EXIT_USAGE, "--spec mtp: %s has no MTP module", dir);
    return EXIT_OK;
}

int cli_load_backend(const char *cmd, CliLoaded *l, const GpuEngineOptions *gpu, CliEp *ep) {
    Err err = { "" };
    if (gpu) {
        if (ep->plan_path)
            return cli_fail(cmd, EXIT_RUNTIME, "--ep-plan places experts on the reference backend only: drop --backend fast");
        if (cli_ep_start(ep, &l->m, &err) || gpu_engine_open(&l->gpu, &l->m, gpu, stderr, &err))
            return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    } else if (cli_ep_gpu_env(ep) && !(l->ep_rank = cli_ep_join_ref(ep, &l->m, &err)))
        return cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
    return EXIT_OK;
}

void cli_loaded_free(CliLoaded *l) {
    gpu_engine_close(l->gpu);
    tokenizer_free(l->tok);
    if (l->have_model) model_free(&l->m);
    memset(l, 0, sizeof *l);
}
