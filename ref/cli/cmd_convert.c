/**
 * @file cmd_convert.c
 * @brief `dsv3 convert`: rewrite a checkpoint in another storage format or sharding.
 *
 *   dsv3 convert -m IN_DIR -o OUT_DIR --format fp8|bf16|f32 [--shards N] [--eh-proj-fp8]
 *
 * Every tensor is read as the loader sees it (FP8 blocks dequantized with their scales, BF16 and
 * F16 widened) and written by the checkpoint writer in the requested format: FP8 re-quantizes the
 * linear projections in 128×128 blocks (scale = block amax / 448), leaving embeddings, heads, the
 * gate and norms in BF16 (docs/model.md §8.5). The tokenizer files are copied along.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "base/outfile.h"
#include "model/ckpt.h"
#include "cli.h"
#include "cli_groups.h"
#include "cli_util.h"
#include "model/model.h"

static const char *const CMD = "convert";

/** CkptSource reading the FP32 value of every tensor from a loaded checkpoint, by name. */
static int from_model(void *ctx, const WeightSlot *s, float *out) {
    const Model *m = ctx;
    const StTensor *t = st_find(&m->st, s->name);
    if (!t) return -1;
    char sname[200];
    snprintf(sname, sizeof sname, "%s_scale_inv", s->name);
    const StTensor *sc = st_find(&m->st, sname);
    Tensor view = { t->data, t->dtype, s->rows, s->cols, sc ? sc->data : NULL };
    for (int64_t r = 0; r < s->rows; r++) tensor_row(&view, r, 0, s->cols, 1, out + r * s->cols);
    return 0;
}

/** What the command line sets besides -m. */
typedef struct {
    const char *out;
    int format;  /* a CkptFormat */
    long shards;
    int eh_fp8;
} Args;

static const int format_values[] = { CKPT_FP8, CKPT_BF16, CKPT_F32 };
static const CliOpt opts[] = {
    { "--output", "-o", CLI_STR, offsetof(Args, out), "OUT_DIR", .help = "where to write (must differ from -m)" },
    { "--format", NULL, CLI_CHOICE, offsetof(Args, format), .choices = "fp8|bf16|f32", .values = format_values,
      .help = "storage of the matrices (required)" },
    { "--shards", NULL, CLI_LONG, offsetof(Args, shards), "N", .lo = 1, .hi = 9999, .def = "1",
      .help = "split into N files + model.safetensors.index.json" },
    { "--eh-proj-fp8", NULL, CLI_FLAG, offsetof(Args, eh_fp8), .help = "FP8: store the MTP eh_proj as FP8 too" },
};

int cmd_convert(int argc, char **argv) {
    CliModel mo = { 0 };
    Args a = { 0 };
    CliCmd cmd = { .name = CMD, .usage = "-m IN_DIR -o OUT_DIR --format fp8|bf16|f32 [--shards N] [--eh-proj-fp8]",
                   .about = "rewrites a checkpoint: FP8 = 128x128 block-scaled e4m3 projections (embeddings, heads,\n"
                            "gate and norms stay BF16), as DeepSeek-V3 is published; tokenizer files are copied" };
    cli_add(&cmd, cli_model_group(&mo));
    cli_add(&cmd, CLI_GROUP("output", opts, &a));
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_RUN) return rc;
    const char *in = mo.dir, *out = a.out;
    if (!in || !out || !cli_given(&cmd, "--format"))
        return cli_fail(CMD, EXIT_USAGE, "-m IN_DIR, -o OUT_DIR and --format are required");
    CkptLayout layout = { (CkptFormat)a.format, a.eh_fp8, (int)a.shards, 0 };
    if (!strcmp(in, out)) return cli_fail(CMD, EXIT_USAGE, "-o must differ from -m (the input is memory-mapped)");
    Model m;
    Err err = { "" };
    if (model_load(&m, in, stderr, &err)) return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    layout.n_mtp = m.w.n_mtp;
    rc = EXIT_OK;
    /* One directory output: the shards, index, config and tokenizer appear together or not at all. */
    OutDir d;
    if (outdir_open(&d, out, CKPT_OWNED_FILES, &err)) rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    else if (ckpt_write_into(d.tmp, &m.config, &layout, from_model, &m, stderr, &err) || ckpt_copy_tokenizer(in, d.tmp, 0, &err)) {
        outdir_abort(&d);
        rc = cli_fail(CMD, EXIT_RUNTIME, "%s: %s", out, err.msg);
    } else if (outdir_commit(&d, &err))
        rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    model_free(&m);
    return rc;
}
