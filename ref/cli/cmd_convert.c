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
#include <stdio.h>
#include <string.h>

#include "base/outfile.h"
#include "model/ckpt.h"
#include "cli.h"
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

int cmd_convert(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *format = NULL, *v;
    long shards = 1;
    int eh_fp8 = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: dsv3 convert -m IN_DIR -o OUT_DIR --format fp8|bf16|f32 [--shards N] [--eh-proj-fp8]\n"
                   "  rewrites a checkpoint: FP8 = 128x128 block-scaled e4m3 projections (embeddings, heads,\n"
                   "  gate and norms stay BF16), as DeepSeek-V3 is published; tokenizer files are copied\n");
            return EXIT_OK;
        }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(in = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) { if (!(out = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE; }
        else if (!strcmp(a, "--format")) { if (!(format = cli_value(CMD, argc, argv, &i))) return EXIT_USAGE; }
        else if (!strcmp(a, "--shards")) {
            if (!(v = cli_value(CMD, argc, argv, &i)) || cli_long(CMD, a, v, 1, 9999, &shards)) return EXIT_USAGE;
        } else if (!strcmp(a, "--eh-proj-fp8")) eh_fp8 = 1;
        else return cli_fail(CMD, EXIT_USAGE, "unknown option '%s' (dsv3 convert --help)", a);
    }
    if (!in || !out || !format) return cli_fail(CMD, EXIT_USAGE, "-m IN_DIR, -o OUT_DIR and --format are required");
    CkptLayout layout = { CKPT_FP8, eh_fp8, (int)shards, 0 };
    if (!strcmp(format, "fp8")) layout.format = CKPT_FP8;
    else if (!strcmp(format, "bf16")) layout.format = CKPT_BF16;
    else if (!strcmp(format, "f32")) layout.format = CKPT_F32;
    else return cli_fail(CMD, EXIT_USAGE, "--format must be fp8, bf16 or f32, got '%s'", format);
    if (!strcmp(in, out)) return cli_fail(CMD, EXIT_USAGE, "-o must differ from -m (the input is memory-mapped)");
    Model m;
    Err err = { "" };
    if (model_load(&m, in, stderr, &err)) return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    layout.n_mtp = m.w.n_mtp;
    int rc = EXIT_OK;
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
