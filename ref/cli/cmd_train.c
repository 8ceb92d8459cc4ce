/**
 * @file cmd_train.c
 * @brief `dsv3 train`: pre-training / fine-tuning on the CPU (paper §2–§4; docs/model.md §6, §7; docs/training.md).
 *
 *   dsv3 train --train TRAIN.bin [--val VAL.bin] [--preset tiny | --config config.json | --init DIR]
 *              [-o OUT] [--steps N] [--batch B] [--seq-len T] [--lr X] ... [--resume OUT]
 *
 * Data are pre-tokenized id files (flat little-endian uint32, llm.c style), so training needs no
 * tokenizer code; `--tokenizer DIR` only copies tokenizer.json into every checkpoint, which makes
 * a checkpoint directory complete for generation. Checkpoints are OUT/step_NNNNNNNN/ in the
 * Hugging Face layout (config.json + model.safetensors, loadable by `dsv3 logits -m`), plus
 * optimizer.safetensors for `--resume`; OUT/latest points at the newest.
 */
#include <math.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "cli_util.h"
#include "train/train.h"

static const char *const CMD = "train";

static void usage(FILE *f) {
    fprintf(f,
            "usage: dsv3 train --train FILE [options]\n"
            "data (flat little-endian uint32 token ids, no header; ids < vocab_size)\n"
            "  --train FILE           training tokens (required)\n"
            "  --val FILE             validation tokens\n"
            "model of a new run\n"
            "  --preset NAME          tiny (default), small, mini, v3\n"
            "  --config FILE          a Hugging Face config.json instead of a preset\n"
            "  --init DIR             start from a checkpoint's weights (its config.json gives the shape)\n"
            "  --vocab N              vocab_size override (your tokenizer's size)\n"
            "  --set KEY=VALUE        override a numeric config field (repeatable)\n"
            "  --mtp N                MTP depths D (default: the config's num_nextn_predict_layers)\n"
            "schedule and optimizer (paper §4.2 values unless noted)\n"
            "  -n, --steps N          optimizer steps of the run (default 1000)\n"
            "  -b, --batch N          sequences per step (default 8)\n"
            "  -t, --seq-len N        tokens per sequence (default 256)\n"
            "  --lr X                 peak learning rate (default 1e-3; paper 2.2e-4 at 15M-token batches)\n"
            "  --lr-min X             learning rate at the end of the cosine (default lr/10)\n"
            "  --warmup N             linear warmup steps (default min(100, steps/10))\n"
            "  --beta1 X --beta2 X    AdamW moments (0.9, 0.95)\n"
            "  --eps X                AdamW epsilon (1e-8)\n"
            "  --wd X                 weight decay of matrices (0.1); norms and biases get none\n"
            "  --clip X               max global gradient norm (1.0; 0 disables)\n"
            "load balancing and MTP\n"
            "  --bias-update X        gamma: aux-loss-free bias update speed (0.001)\n"
            "  --balance-alpha X      alpha: sequence-wise balance loss weight (0.0001)\n"
            "  --mtp-lambda X         lambda: MTP loss weight (0.3)\n"
            "numerics (paper §3.3; docs/training.md)\n"
            "  --precision P          fp32 (default) or fp8: every linear's GEMMs in the emulated FP8 recipe\n"
            "  --fp8-promote N        fp8: promote partial sums to FP32 every N products (128; 0 = never)\n"
            "  --fp8-acc-bits N       fp8: mantissa bits of the accumulator between promotions (14; 23 = FP32)\n"
            "  --fp8-scaling S        fp8: tile (1x128 activations, 128x128 weights; default) or tensor\n"
            "  --fp8-grad F           fp8: format of output gradients in Dgrad/Wgrad: e4m3 (default) or e5m2\n"
            "  --moments M            AdamW moments fp32 or bf16 (default: bf16 under fp8, else fp32)\n"
            "init and data order\n"
            "  --seed N               random init and shuffling (default 1337)\n"
            "  --init-std X           std of random matrices (default 0.006*sqrt(7168/hidden))\n"
            "  --shuffle              random sequence starts instead of one sequential pass\n"
            "output\n"
            "  -o, --out DIR          run directory: step_N/ checkpoints and a latest link (default out)\n"
            "  --save-every N         checkpoint every N steps (default 0: at the end only)\n"
            "  --save-format F        f32 (default), bf16 or fp8 model.safetensors (moments stay FP32)\n"
            "  --keep N               newest checkpoints to keep (default 3; 0 keeps all)\n"
            "  --tokenizer DIR        copy DIR/tokenizer.json (+ tokenizer_config.json) into each checkpoint\n"
            "  --val-every N          validate every N steps (default 100; 0: at the end only)\n"
            "  --val-batches N        batches of --val per validation (default 4)\n"
            "  --log FILE             append one JSON line per step and per validation\n"
            "  --resume PATH          continue a run from a checkpoint or a run directory (its latest);\n"
            "                         the options are the checkpoint's, flags given here override them\n"
            "  --stop-after N         save and exit after step N, as if interrupted (resume continues)\n");
}

/** Everything the command line sets. */
typedef struct {
    TrainOptions o;
    const char *train, *val, *preset, *config, *init, *out, *tokenizer, *log, *resume;
    char *sets[64];
    int n_sets, shape_flags, warmup_given, lr_min_given, mtp_given, moments_given, fp8_flags;
    long vocab, save_every, keep, val_every, val_batches, stop_after;
    CkptFormat format;
} Args;

/* Flag helpers of parse(), over its locals f (flag), v (value), l, d, argc, argv, i. */
/** The flag's value into v (NULL and a message when missing). */
#define VALUE() (v = cli_value(CMD, argc, argv, &i))
/** The flag's integer value in [lo, hi] into l. */
#define LONG(lo, hi) (VALUE() && cli_long(CMD, f, v, lo, hi, &l) == 0)
/** The flag's number in [lo, hi] into d. */
#define DBL(lo, hi) (VALUE() && cli_double(CMD, f, v, lo, hi, &d) == 0)
/** Whether the current argument is flag s. */
#define IS(s) (!strcmp(f, s))

/** Applies the flags of argv to @p a (called once for a new run, twice around --resume). */
static int parse(Args *a, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = NULL;
        long l;
        double d;
        if (IS("--help") || IS("-h")) continue;
        else if (IS("--train")) { if (!VALUE()) return -1; a->train = v; }
        else if (IS("--val")) { if (!VALUE()) return -1; a->val = v; }
        else if (IS("--preset")) { if (!VALUE()) return -1; a->preset = v; a->shape_flags++; }
        else if (IS("--config")) { if (!VALUE()) return -1; a->config = v; a->shape_flags++; }
        else if (IS("--init")) { if (!VALUE()) return -1; a->init = v; a->shape_flags++; }
        else if (IS("--vocab")) { if (!LONG(1, 1L << 24)) return -1; a->vocab = l; a->shape_flags++; }
        else if (IS("--set")) {
            if (!VALUE()) return -1;
            if (a->n_sets == (int)(sizeof a->sets / sizeof a->sets[0])) return cli_fail(CMD, EXIT_USAGE, "too many --set"), -1;
            a->sets[a->n_sets++] = (char *)v;
            a->shape_flags++;
        }
        else if (IS("--mtp")) { if (!LONG(0, 16)) return -1; a->o.n_mtp = (int)l; a->mtp_given = 1; a->shape_flags++; }
        else if (IS("-n") || IS("--steps")) { if (!LONG(1, 1L << 40)) return -1; a->o.steps = l; }
        else if (IS("-b") || IS("--batch")) { if (!LONG(1, 1L << 20)) return -1; a->o.batch = l; }
        else if (IS("-t") || IS("--seq-len")) { if (!LONG(2, 1L << 20)) return -1; a->o.seq_len = l; }
        else if (IS("--lr")) { if (!DBL(0, 10)) return -1; a->o.lr.peak = d; }
        else if (IS("--lr-min")) { if (!DBL(0, 10)) return -1; a->o.lr.min = d; a->lr_min_given = 1; }
        else if (IS("--warmup")) { if (!LONG(0, 1L << 40)) return -1; a->o.lr.warmup = l; a->warmup_given = 1; }
        else if (IS("--beta1")) { if (!DBL(0, 0.999999)) return -1; a->o.adamw.beta1 = d; }
        else if (IS("--beta2")) { if (!DBL(0, 0.999999)) return -1; a->o.adamw.beta2 = d; }
        else if (IS("--eps")) { if (!DBL(1e-30, 1)) return -1; a->o.adamw.eps = d; }
        else if (IS("--wd")) { if (!DBL(0, 10)) return -1; a->o.adamw.weight_decay = d; }
        else if (IS("--clip")) { if (!DBL(0, 1e9)) return -1; a->o.grad_clip = d; }
        else if (IS("--bias-update")) { if (!DBL(0, 10)) return -1; a->o.bias_update_speed = d; }
        else if (IS("--balance-alpha")) { if (!DBL(0, 100)) return -1; a->o.balance_alpha = d; }
        else if (IS("--mtp-lambda")) { if (!DBL(0, 100)) return -1; a->o.mtp_lambda = d; }
        else if (IS("--seed")) { if (!LONG(0, 0x7fffffffL)) return -1; a->o.seed = (uint64_t)l; }
        else if (IS("--init-std")) { if (!DBL(0, 10)) return -1; a->o.init_std = d; }
        else if (IS("--shuffle")) a->o.shuffle = 1;
        else if (IS("--precision")) {
            if (!VALUE()) return -1;
            if (!strcmp(v, "fp32") || !strcmp(v, "fp8")) a->o.precision = !strcmp(v, "fp8") ? TRAIN_FP8 : TRAIN_FP32;
            else return cli_fail(CMD, EXIT_USAGE, "--precision must be fp32 or fp8, got '%s'", v), -1;
        }
        else if (IS("--fp8-promote")) { if (!LONG(0, 1L << 30)) return -1; a->o.fp8.promote = (int)l; a->fp8_flags++; }
        else if (IS("--fp8-acc-bits")) { if (!LONG(1, 23)) return -1; a->o.fp8.acc_bits = (int)l; a->fp8_flags++; }
        else if (IS("--fp8-scaling")) {
            if (!VALUE()) return -1;
            if (strcmp(v, "tile") && strcmp(v, "tensor")) return cli_fail(CMD, EXIT_USAGE, "--fp8-scaling must be tile or tensor, got '%s'", v), -1;
            a->o.fp8.per_tensor = !strcmp(v, "tensor"), a->fp8_flags++;
        }
        else if (IS("--fp8-grad")) {
            if (!VALUE()) return -1;
            if (strcmp(v, "e4m3") && strcmp(v, "e5m2")) return cli_fail(CMD, EXIT_USAGE, "--fp8-grad must be e4m3 or e5m2, got '%s'", v), -1;
            a->o.fp8.grad_format = !strcmp(v, "e5m2") ? FMT_E5M2 : FMT_E4M3, a->fp8_flags++;
        }
        else if (IS("--moments")) {
            if (!VALUE()) return -1;
            if (strcmp(v, "fp32") && strcmp(v, "bf16")) return cli_fail(CMD, EXIT_USAGE, "--moments must be fp32 or bf16, got '%s'", v), -1;
            a->o.bf16_moments = !strcmp(v, "bf16"), a->moments_given = 1;
        }
        else if (IS("-o") || IS("--out")) { if (!VALUE()) return -1; a->out = v; }
        else if (IS("--save-every")) { if (!LONG(0, 1L << 40)) return -1; a->save_every = l; }
        else if (IS("--save-format")) {
            if (!VALUE()) return -1;
            if (!strcmp(v, "f32")) a->format = CKPT_F32;
            else if (!strcmp(v, "bf16")) a->format = CKPT_BF16;
            else if (!strcmp(v, "fp8")) a->format = CKPT_FP8;
            else return cli_fail(CMD, EXIT_USAGE, "--save-format must be f32, bf16 or fp8, got '%s'", v), -1;
        }
        else if (IS("--keep")) { if (!LONG(0, 1L << 20)) return -1; a->keep = l; }
        else if (IS("--tokenizer")) { if (!VALUE()) return -1; a->tokenizer = v; }
        else if (IS("--val-every")) { if (!LONG(0, 1L << 40)) return -1; a->val_every = l; }
        else if (IS("--val-batches")) { if (!LONG(1, 1L << 20)) return -1; a->val_batches = l; }
        else if (IS("--log")) { if (!VALUE()) return -1; a->log = v; }
        else if (IS("--resume")) { if (!VALUE()) return -1; a->resume = v; }
        else if (IS("--stop-after")) { if (!LONG(1, 1L << 40)) return -1; a->stop_after = l; }
        else return cli_fail(CMD, EXIT_USAGE, "unknown option '%s' (dsv3 train --help)", f), -1;
    }
    return 0;
}

/** CkptSource of --init: a loaded checkpoint's tensors (dequantized), random init for tensors it lacks. */
typedef struct {
    const Model *m;
    ParamInit fallback;
    int copied, missing;
} InitFrom;

static int init_from_checkpoint(void *ctx, const WeightSlot *s, float *out) {
    InitFrom *f = ctx;
    const StTensor *t = st_find(&f->m->st, s->name);
    if (!t) {
        f->missing++; /* e.g. MTP depths the checkpoint does not have */
        return params_init_source(&f->fallback, s, out);
    }
    int64_t rows = s->kind == WEIGHT_MATRIX ? s->rows : 1;
    if (t->ndim != (s->kind == WEIGHT_MATRIX ? 2 : 1) || t->shape[0] != (s->kind == WEIGHT_MATRIX ? s->rows : s->cols) ||
        (t->ndim == 2 && t->shape[1] != s->cols))
        return -1;
    Tensor view = { t->data, t->dtype, rows, s->cols, NULL };
    if (t->dtype == DT_F8_E4M3) {
        char name[200];
        snprintf(name, sizeof name, "%s_scale_inv", s->name);
        const StTensor *sc = st_find(&f->m->st, name);
        if (!sc) return -1;
        view.scale_inv = sc->data;
    }
    for (int64_t r = 0; r < rows; r++) tensor_row(&view, r, 0, s->cols, 1, out + r * s->cols);
    f->copied++;
    return 0;
}

/** The model shape and the initial parameters of a new run. */
static int new_run(Args *a, Trainer *tr, Err *err) {
    Config c;
    Model init;
    memset(&init, 0, sizeof init);
    if (a->init) {
        if (model_load(&init, a->init, NULL, err)) return -1;
        c = init.config;
    } else if (a->config ? config_load(&c, a->config, err) : config_preset(&c, a->preset ? a->preset : "tiny", err)) {
        return -1;
    }
    if (a->vocab) {
        char set[64];
        snprintf(set, sizeof set, "vocab_size=%ld", a->vocab);
        char *one[1] = { set };
        if (config_apply_sets(&c, one, 1, err)) goto fail;
    }
    if (config_apply_sets(&c, a->sets, a->n_sets, err)) goto fail;
    if (!a->mtp_given) a->o.n_mtp = c.num_nextn_predict_layers;
    if (a->o.init_std < 0) a->o.init_std = train_options_default(c.hidden_size).init_std;
    if (!a->warmup_given) a->o.lr.warmup = a->o.steps / 10 < 100 ? a->o.steps / 10 : 100;
    if (!a->lr_min_given) a->o.lr.min = a->o.lr.peak / 10;
    if (!a->moments_given) a->o.bf16_moments = a->o.precision == TRAIN_FP8; /* the paper's BF16 moments go with its recipe */
    if (trainer_init(tr, &c, &a->o, err)) goto fail;
    ParamInit pi = { a->o.seed, (float)a->o.init_std };
    int rc;
    if (a->init) {
        InitFrom from = { &init, pi, 0, 0 };
        rc = params_fill(&tr->ps, init_from_checkpoint, &from, err);
        if (rc == 0)
            fprintf(stderr, "dsv3 train: %d tensors from %s, %d initialized randomly\n", from.copied, a->init, from.missing);
    } else {
        rc = params_fill(&tr->ps, params_init_source, &pi, err);
    }
    model_free(&init);
    return rc;
fail:
    model_free(&init);
    return -1;
}

/** Mean losses of the fixed validation sequences. */
static void validate(Trainer *tr, const int *val, int64_t n_seq, TrainLosses *out) {
    int64_t B = tr->opt.batch, T = tr->opt.seq_len;
    TrainLosses part;
    memset(out, 0, sizeof *out);
    for (int64_t i = 0; i < n_seq; i += B) {
        int64_t n = n_seq - i < B ? n_seq - i : B;
        trainer_eval(tr, val + i * (T + 1), n, &part);
        double w = (double)n / (double)n_seq;
        out->total += w * part.total, out->main += w * part.main, out->balance += w * part.balance;
        out->mtp_mean += w * part.mtp_mean;
        for (int k = 0; k < tr->opt.n_mtp; k++) out->mtp[k] += w * part.mtp[k];
    }
}

static void log_step(FILE *log, const Trainer *tr, const TrainLosses *L, const StepStats *st, double tok_s) {
    printf("step %6lld/%lld | loss %.4f (main %.4f", (long long)tr->step, (long long)tr->opt.steps, L->total, L->main);
    if (tr->opt.n_mtp) printf(", mtp %.4f", L->mtp_mean);
    printf(", bal %.2e) | lr %.3e | grad %.3f%s | %.0f tok/s", L->balance, st->lr, st->grad_norm,
           st->clip < 1 ? " (clipped)" : "", tok_s);
    if (tr->n_moe) {
        double mx = 0, mean = 0;
        for (int j = 0; j < tr->n_moe; j++) mx = fmax(mx, tr->maxvio[j]), mean += tr->maxvio[j] / tr->n_moe;
        if (tr->n_moe <= 8) {
            printf(" | maxvio");
            for (int j = 0; j < tr->n_moe; j++)
                printf(" %s%.2f", tr->moe_layer[j] >= tr->ps.config.num_hidden_layers ? "mtp:" : "", tr->maxvio[j]);
        } else {
            printf(" | maxvio max %.2f mean %.2f", mx, mean);
        }
    }
    printf("\n");
    fflush(stdout);
    if (!log) return;
    fprintf(log, "{\"step\":%lld,\"loss\":%.17g,\"main\":%.17g,\"mtp\":[", (long long)tr->step, L->total, L->main);
    for (int k = 0; k < tr->opt.n_mtp; k++) fprintf(log, "%s%.17g", k ? "," : "", L->mtp[k]);
    fprintf(log, "],\"balance\":%.17g,\"lr\":%.17g,\"grad_norm\":%.17g,\"tokens\":%lld,\"tok_per_s\":%.1f,\"maxvio\":[",
            L->balance, st->lr, st->grad_norm, (long long)tr->tokens, tok_s);
    for (int j = 0; j < tr->n_moe; j++) fprintf(log, "%s%.17g", j ? "," : "", tr->maxvio[j]);
    /* Per-expert loads of the step (selections over its tokens), one array per MoE layer. */
    int E = tr->ps.config.n_routed_experts;
    fprintf(log, "],\"load\":[");
    for (int j = 0; j < tr->n_moe; j++) {
        fprintf(log, "%s[", j ? "," : "");
        for (int e = 0; e < E; e++) fprintf(log, "%s%lld", e ? "," : "", (long long)tr->load[(size_t)j * E + e]);
        fprintf(log, "]");
    }
    fprintf(log, "]}\n");
    fflush(log);
}

static int save(Trainer *tr, const Args *a, Err *err) {
    char path[4096];
    double t0 = now_seconds();
    if (trainer_checkpoint(tr, a->out, a->format, a->tokenizer, (int)a->keep, path, sizeof path, err)) return -1;
    fprintf(stderr, "dsv3 train: saved %s (%.2f s)\n", path, now_seconds() - t0);
    return 0;
}

/** The training loop: steps, validation, checkpoints. */
static int run(Trainer *tr, const Args *a, const TokenFile *train, const TokenFile *valf, FILE *log, Err *err) {
    int64_t B = tr->opt.batch, T = tr->opt.seq_len, n_val = valf ? a->val_batches * B : 0;
    int *seqs = xcalloc((size_t)(B * (T + 1)), sizeof *seqs), *val = xcalloc((size_t)(n_val * (T + 1) + 1), sizeof *val);
    if (!seqs || !val) {
        free(seqs), free(val);
        return err_set(err, "out of memory for the batch");
    }
    DataCursor vc = { 0, 0, 0 }; /* validation: the same first sequences every time */
    for (int64_t i = 0; i < n_val; i++) data_next(valf, &vc, NULL, T, val + i * (T + 1));
    int rc = 0;
    while (tr->step < tr->opt.steps && rc == 0) {
        double t0 = now_seconds();
        TrainLosses L;
        StepStats st;
        trainer_next_batch(tr, train, seqs);
        trainer_grad(tr, seqs, B, &L);
        trainer_update(tr, &st);
        log_step(log, tr, &L, &st, (double)(B * T) / (now_seconds() - t0));
        int last = tr->step == tr->opt.steps, stop = a->stop_after && tr->step == a->stop_after;
        if (n_val && ((a->val_every && tr->step % a->val_every == 0) || last)) {
            TrainLosses V;
            validate(tr, val, n_val, &V);
            printf("val  %6lld | loss %.4f (main %.4f", (long long)tr->step, V.total, V.main);
            if (tr->opt.n_mtp) printf(", mtp %.4f", V.mtp_mean);
            printf(")\n");
            if (log) fprintf(log, "{\"step\":%lld,\"val_loss\":%.17g,\"val_main\":%.17g,\"val_mtp\":%.17g}\n",
                             (long long)tr->step, V.total, V.main, V.mtp_mean), fflush(log);
        }
        if (last || stop || (a->save_every && tr->step % a->save_every == 0)) rc = save(tr, a, err);
        if (stop) break;
    }
    free(seqs);
    free(val);
    return rc;
}

int cmd_train(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return usage(stdout), EXIT_OK;
    Args a;
    memset(&a, 0, sizeof a);
    a.o = train_options_default(0);
    a.o.init_std = -1; /* derived from the hidden size unless given */
    a.format = CKPT_F32;
    a.keep = 3, a.val_every = 100, a.val_batches = 4;
    if (parse(&a, argc, argv)) return EXIT_USAGE;
    Err err = { "" };
    Trainer tr;
    memset(&tr, 0, sizeof tr);
    char ckpt[4096], run_dir[4096];
    if (a.resume) {
        if (a.shape_flags) return cli_fail(CMD, EXIT_USAGE, "--resume takes the model from the checkpoint: drop --preset/--config/--init/--vocab/--set/--mtp");
        Config c;
        if (train_resolve_checkpoint(a.resume, ckpt, sizeof ckpt, &err) || train_read_checkpoint_options(ckpt, &c, &a.o, &err))
            return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
        parse(&a, argc, argv); /* flags given now override the checkpoint's options */
        if (!a.out) { /* continue in the run directory the checkpoint belongs to */
            snprintf(run_dir, sizeof run_dir, "%s", a.resume);
            if (!strcmp(ckpt, a.resume)) {
                size_t n = strlen(run_dir);
                while (n > 1 && run_dir[n - 1] == '/') run_dir[--n] = 0;
                char *slash = strrchr(run_dir, '/');
                if (!slash) snprintf(run_dir, sizeof run_dir, ".");
                else if (slash == run_dir) run_dir[1] = 0; /* "/step_N" → "/" */
                else *slash = 0;
            }
            a.out = run_dir;
        }
        if (trainer_init(&tr, &c, &a.o, &err) || trainer_load_state(&tr, ckpt, &err)) {
            trainer_free(&tr);
            return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
        }
        fprintf(stderr, "dsv3 train: resumed %s at step %lld\n", ckpt, (long long)tr.step);
    } else if (new_run(&a, &tr, &err)) {
        trainer_free(&tr);
        return cli_fail(CMD, EXIT_USAGE, "%s", err.msg);
    }
    if (!a.out) a.out = "out";
    if (a.fp8_flags && tr.opt.precision != TRAIN_FP8) {
        trainer_free(&tr);
        return cli_fail(CMD, EXIT_USAGE, "--fp8-promote/--fp8-acc-bits/--fp8-scaling/--fp8-grad need --precision fp8");
    }
    if (!a.train) {
        trainer_free(&tr);
        return cli_fail(CMD, EXIT_USAGE, "--train FILE is required (dsv3 train --help)");
    }
    const Config *c = &tr.ps.config;
    TokenFile train, valf;
    memset(&valf, 0, sizeof valf);
    int rc = EXIT_RUNTIME;
    FILE *log = NULL;
    if (tokenfile_open(&train, a.train, c->vocab_size, tr.opt.seq_len + 1, &err) ||
        (a.val && tokenfile_open(&valf, a.val, c->vocab_size, tr.opt.seq_len + 1, &err))) {
        rc = cli_fail(CMD, EXIT_USAGE, "%s", err.msg);
        goto done;
    }
    if (a.tokenizer) { /* fail now rather than at the first checkpoint */
        char tok[4096];
        if (path_join(tok, sizeof tok, a.tokenizer, "tokenizer.json") || access(tok, R_OK) != 0) {
            rc = cli_fail(CMD, EXIT_USAGE, "--tokenizer %s: no readable tokenizer.json there", a.tokenizer);
            goto done;
        }
    }
    if (a.log && !(log = fopen(a.log, "a"))) {
        rc = cli_fail(CMD, EXIT_USAGE, "--log %s: cannot open for appending: %s", a.log, strerror(errno));
        goto done;
    }
    uint64_t main_p, mtp_p;
    weights_count(c, tr.opt.n_mtp, &main_p, &mtp_p);
    fprintf(stderr, "dsv3 train: %.2f M parameters (+ %.2f M in %d MTP depths, embedding and head shared), "
                    "%lld tokens in %s, %lld x %lld tokens per step, %lld steps\n",
            (double)main_p / 1e6, (double)(mtp_p - 2 * (uint64_t)tr.opt.n_mtp * (uint64_t)c->vocab_size * (uint64_t)c->hidden_size) / 1e6,
            tr.opt.n_mtp, (long long)train.n, a.train, (long long)tr.opt.batch, (long long)tr.opt.seq_len,
            (long long)tr.opt.steps);
    if (tr.opt.precision == TRAIN_FP8)
        fprintf(stderr, "dsv3 train: fp8 recipe: e4m3 (gradients %s), %s scales, %d-bit accumulation promoted every %d%s, %s moments\n",
                fp8_format_name(tr.opt.fp8.grad_format), tr.opt.fp8.per_tensor ? "per-tensor" : "1x128 / 128x128",
                tr.opt.fp8.acc_bits, tr.opt.fp8.promote, tr.opt.fp8.promote ? "" : " (never)", tr.opt.bf16_moments ? "bf16" : "fp32");
    if (run(&tr, &a, &train, a.val ? &valf : NULL, log, &err)) rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    else rc = EXIT_OK;
done:
    if (log) fclose(log);
    tokenfile_close(&train);
    tokenfile_close(&valf);
    trainer_free(&tr);
    return rc;
}
