/**
 * @file ckpt.h
 * @brief Writes checkpoints in the real Hugging Face DeepSeek-V3 layout (config.json +
 *        model.safetensors, or N shards + model.safetensors.index.json) from any source of
 *        FP32 values: random weights (`dsv3 mkckpt`, tests, benchmarks) or trained parameters.
 *
 * Storage follows the official checkpoint (docs/model.md §1.3, §8): in an FP8 checkpoint every linear
 * projection is F8_E4M3 with a 128×128-block F32 `weight_scale_inv` (scale = block amax / 448,
 * so W = e4m3 · scale_inv), while embeddings, lm_head, the MoE gate and norms stay BF16 and the
 * correction bias F32.
 */
#ifndef DSV3_CKPT_H
#define DSV3_CKPT_H

#include <stdio.h>

#include "weights.h"

/** Storage format of the matrices. */
typedef enum { CKPT_F32, CKPT_BF16, CKPT_FP8 } CkptFormat;

/** How to lay a checkpoint out. */
typedef struct {
    CkptFormat format; /**< storage of the matrices */
    int fp8_eh_proj;   /**< FP8 checkpoints: store the MTP eh_proj as FP8 too (default BF16) */
    int shards;        /**< 1: model.safetensors; N > 1: N shards + index.json */
    int n_mtp;         /**< MTP modules to write (0 .. num_nextn_predict_layers) */
} CkptLayout;

/** Produces the FP32 values of one tensor ([rows][cols] floats into @p out); 0 on success. */
typedef int (*CkptSource)(void *ctx, const WeightSlot *s, float *out);

/**
 * Writes config.json (num_nextn_predict_layers = n_mtp, quantization_config iff FP8) and the
 * safetensors file(s) as directory @p dir, one complete output (base/outfile.h): built in a
 * temporary directory beside it and swapped in when every file is written, so a kill or a full
 * disk leaves the old content of @p dir (or nothing). The files of a checkpoint already in @p dir
 * (CKPT_OWNED_FILES: shards and index included) are all replaced; other files (a tokenizer) stay.
 * Refuses to start when the file system lacks the space. @p log (may be NULL) receives one
 * progress line per file.
 */
int ckpt_write(const char *dir, const Config *c, const CkptLayout *layout, CkptSource src, void *ctx, FILE *log,
               Err *err);

/**
 * The files of ckpt_write written into the existing directory @p dir — for an output that adds
 * files of its own before it is committed (an OutDir's tmp: training state, tokenizer files).
 */
int ckpt_write_into(const char *dir, const Config *c, const CkptLayout *layout, CkptSource src, void *ctx, FILE *log,
                    Err *err);

/**
 * Copies tokenizer.json (an error when absent and @p required) and tokenizer_config.json (when
 * present) from directory @p from_dir into @p to_dir, each file complete or absent.
 */
int ckpt_copy_tokenizer(const char *from_dir, const char *to_dir, int required, Err *err);

/** fnmatch patterns of a checkpoint's own files (NULL-terminated): what a new checkpoint replaces. */
extern const char *const CKPT_OWNED_FILES[];

/** Parameters of random checkpoints. */
typedef struct {
    uint64_t seed;  /**< base seed, mixed with each tensor's name */
    float bias_std; /**< std of e_score_correction_bias (large values make the bias decide routing) */
} RandomInit;

/**
 * CkptSource for random weights: matrices N(0, 1/cols), embeddings N(0, 1), norm weights
 * 1 + N(0, 0.1²), biases N(0, bias_std²). Deterministic per tensor name and seed; the MTP's
 * embed_tokens/shared_head.head equal the main embedding/lm_head, as in the real checkpoint.
 * @p ctx is a RandomInit.
 */
int ckpt_random_source(void *ctx, const WeightSlot *s, float *out);

/** Fills @p c with a named preset: "tiny", "small", "mini", "v3" (the real 671B shape), "v3.1",
 *  "v3.1-small", "k2", "k2-tiny", "moonlight", "moonlight-tiny" (docs/model.md §13.1). */
int config_preset(Config *c, const char *name, Err *err);

#endif
