/**
 * @file cli_load.h
 * @brief What the commands that generate (generate, chat, serve) load before they run: the
 *        checkpoint, its tokenizer and the backend — the GPU engine, or the reference's
 *        expert-parallel group when there is one.
 */
#ifndef DSV3_CLI_LOAD_H
#define DSV3_CLI_LOAD_H

#include "backend.h"
#include "cli_ep.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

/** A loaded checkpoint, its tokenizer and its backend. Free with cli_loaded_free(). */
typedef struct {
    Model m;         /**< the checkpoint */
    int have_model;  /**< m is loaded (model_free) */
    Tokenizer *tok;  /**< its tokenizer */
    int n_sample;    /**< the tokenizer's ids: larger ids are never generated */
    GpuEngine *gpu;  /**< --backend fast (NULL: the reference) */
    EpRank *ep_rank; /**< the reference's expert-parallel group (NULL: none) */
} CliLoaded;

/**
 * Loads the checkpoint in @p dir (progress on stderr) and the tokenizer in @p tokenizer_dir
 * (NULL: @p dir), checks that the tokenizer's ids fit the model's vocabulary and, with
 * @p need_mtp (--spec mtp), that the checkpoint has an MTP module. Errors are printed as one
 * "dsv3 CMD: ..." line; returns an exit status (@p l is to be freed either way).
 */
int cli_load(const char *cmd, const char *dir, const char *tokenizer_dir, int need_mtp, CliLoaded *l);

/**
 * Opens the backend of @p l: with @p gpu (--backend fast) the GPU engine with those options, after
 * starting the group's other ranks (cli_ep_start); without, the reference's expert-parallel group
 * when @p ep has one (cli_ep_join_ref). Errors printed; returns an exit status.
 */
int cli_load_backend(const char *cmd, CliLoaded *l, const GpuEngineOptions *gpu, CliEp *ep);

/** Releases the engine, the tokenizer and the model; safe on a zeroed struct. */
void cli_loaded_free(CliLoaded *l);

#endif
