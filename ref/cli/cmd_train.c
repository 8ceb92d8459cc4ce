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
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "cli_groups.h"
#include "cli_pipeline.h"
#include "cli_util.h"
#include "ep/eplb.h"
#include "train/train.h"

static const char *const CMD = "train";

/** Everything the command line sets. */
typedef struct {
    TrainOptions o; /* what trainer_init gets: the flags of a new run, or a checkpoint's options and the flags given */
    const char *train, *val, *preset, *config, *init, *out, *tokenizer, *log, *resume;
    CliList sets;
    int shape_flags, warmup_given, lr_min_given, mtp_given, moments_given, fp8_flags;
    long vocab, save_every, keep, val_every, val_batches, stop_after;
    int format; /* a CkptFormat */
    /* the flags of TrainOptions' fields (take_options copies them into o) */
    long n_mtp, steps, batch, seq_len, warmup, seed;
    double lr, lr_min, beta1, beta2, eps, wd, clip, bias_update, balance_alpha, mtp_lambda, init_std;
    int shuffle;
    int precision, fp8_scaling, fp8_grad, moments; /* a TrainPrecision, per_tensor, an Fp8Fmt, bf16_moments */
    long fp8_promote, fp8_acc_bits;
    CliThreads threads;
    long pipeline;             /* --pipeline N (0: one process) */
    const char *schedule;      /* --schedule */
    const char *pipeline_png;  /* --pipeline-png FILE */
    const char *routing_stats; /* --routing-stats FILE */
    CliPipe *pipe;             /* the pipeline group, when there is one */
    RoutingStats *routing;     /* the loads counted for --routing-stats */
} Args;

/* The defaults are train_options_default()'s (ref/train/train.c): the values the paper uses
 * unless noted, scaled to a CPU run. */
static const CliOpt data_opts[] = {
    { "--train", NULL, CLI_STR, offsetof(Args, train), "FILE", .help = "training tokens (required)" },
    { "--val", NULL, CLI_STR, offsetof(Args, val), "FILE", .help = "validation tokens" },
};
static const CliOpt model_opts[] = {
    { "--preset", NULL, CLI_STR, offsetof(Args, preset), "NAME", .def = "tiny", .help = "tiny, small, mini or v3" },
    { "--config", NULL, CLI_STR, offsetof(Args, config), "FILE", .help = "a Hugging Face config.json instead of a preset" },
    { "--init", NULL, CLI_STR, offsetof(Args, init), "DIR", .help = "start from a checkpoint's weights (its config.json gives the shape)" },
    { "--vocab", NULL, CLI_LONG, offsetof(Args, vocab), "N", .lo = 1, .hi = 1 << 24, .help = "vocab_size override (your tokenizer's size)" },
    { "--set", NULL, CLI_LIST, offsetof(Args, sets), "KEY=VALUE", .help = "override a numeric config field (repeatable)" },
    { "--mtp", NULL, CLI_LONG, offsetof(Args, n_mtp), "N", .lo = 0, .hi = 16,
      .help = "MTP depths D (default: the config's num_nextn_predict_layers)" },
};
static const CliOpt schedule_opts[] = {
    { "--steps", "-n", CLI_LONG, offsetof(Args, steps), "N", .lo = 1, .hi = 1L << 40, .def = "1000", .help = "optimizer steps of the run" },
    { "--batch", "-b", CLI_LONG, offsetof(Args, batch), "N", .lo = 1, .hi = 1L << 20, .def = "8", .help = "sequences per step" },
    { "--seq-len", "-T", CLI_LONG, offsetof(Args, seq_len), "N", .lo = 2, .hi = 1L << 20, .def = "256",
      .help = "tokens per sequence (T)" },
    { "--lr", NULL, CLI_DOUBLE, offsetof(Args, lr), "X", .lo = 0, .hi = 10, .def = "1e-3",
      .help = "peak learning rate; the paper's is 2.2e-4 at 15M-token batches" },
    { "--lr-min", NULL, CLI_DOUBLE, offsetof(Args, lr_min), "X", .lo = 0, .hi = 10,
      .help = "learning rate at the end of the cosine (default lr/10)" },
    { "--warmup", NULL, CLI_LONG, offsetof(Args, warmup), "N", .lo = 0, .hi = 1L << 40,
      .help = "linear warmup steps (default min(100, steps/10))" },
    { "--beta1", NULL, CLI_DOUBLE, offsetof(Args, beta1), "X", .lo = 0, .hi = 0.999999, .def = "0.9", .help = "AdamW first moment" },
    { "--beta2", NULL, CLI_DOUBLE, offsetof(Args, beta2), "X", .lo = 0, .hi = 0.999999, .def = "0.95", .help = "AdamW second moment" },
    { "--eps", NULL, CLI_DOUBLE, offsetof(Args, eps), "X", .lo = 1e-30, .hi = 1, .def = "1e-8", .help = "AdamW epsilon" },
    { "--wd", NULL, CLI_DOUBLE, offsetof(Args, wd), "X", .lo = 0, .hi = 10, .def = "0.1",
      .help = "weight decay of matrices; norms and biases get none" },
    { "--clip", NULL, CLI_DOUBLE, offsetof(Args, clip), "X", .lo = 0, .hi = 1e9, .def = "1.0", .help = "max global gradient norm, 0 = none" },
};
static const CliOpt balance_opts[] = {
    { "--bias-update", NULL, CLI_DOUBLE, offsetof(Args, bias_update), "X", .lo = 0, .hi = 10, .def = "0.001",
      .help = "gamma: aux-loss-free bias update speed" },
    { "--balance-alpha", NULL, CLI_DOUBLE, offsetof(Args, balance_alpha), "X", .lo = 0, .hi = 100, .def = "0.0001",
      .help = "alpha: sequence-wise balance loss weight" },
    { "--mtp-lambda", NULL, CLI_DOUBLE, offsetof(Args, mtp_lambda), "X", .lo = 0, .hi = 100, .def = "0.3", .help = "lambda: MTP loss weight" },
};
static const CliOpt init_opts[] = {
    { "--seed", NULL, CLI_LONG, offsetof(Args, seed), "N", .lo = 0, .hi = 0x7fffffff, .def = "1337", .help = "random init and shuffling" },
    { "--init-std", NULL, CLI_DOUBLE, offsetof(Args, init_std), "X", .lo = 0, .hi = 10,
      .help = "std of random matrices (default 0.006*sqrt(7168/hidden))" },
    { "--shuffle", NULL, CLI_FLAG, offsetof(Args, shuffle), .help = "random sequence starts instead of one sequential pass" },
};
static const int precision_values[] = { TRAIN_FP32, TRAIN_FP8 };
static const int scaling_values[] = { 0, 1 };
static const int grad_values[] = { FMT_E4M3, FMT_E5M2 };
static const int moments_values[] = { 0, 1 };
/* The defaults are fp8_options_default()'s, the paper's recipe. */
static const CliOpt numerics_opts[] = {
    { "--precision", NULL, CLI_CHOICE, offsetof(Args, precision), .choices = "fp32|fp8", .values = precision_values, .def = "fp32",
      .help = "fp8: every linear's GEMMs in the emulated FP8 recipe (docs/training.md)" },
    { "--fp8-promote", NULL, CLI_LONG, offsetof(Args, fp8_promote), "N", .lo = 0, .hi = 1L << 30, .def = "128",
      .help = "fp8: partial sums promoted to FP32 every N products, 0 = never" },
    { "--fp8-acc-bits", NULL, CLI_LONG, offsetof(Args, fp8_acc_bits), "N", .lo = 1, .hi = 23, .def = "14",
      .help = "fp8: mantissa bits of the accumulator between promotions (23 = FP32)" },
    { "--fp8-scaling", NULL, CLI_CHOICE, offsetof(Args, fp8_scaling), .choices = "tile|tensor", .values = scaling_values, .def = "tile",
      .help = "fp8: 1x128 activation tiles and 128x128 weight blocks, or one scale per tensor" },
    { "--fp8-grad", NULL, CLI_CHOICE, offsetof(Args, fp8_grad), .choices = "e4m3|e5m2", .values = grad_values, .def = "e4m3",
      .help = "fp8: format of the output gradients in Dgrad and Wgrad" },
    { "--moments", NULL, CLI_CHOICE, offsetof(Args, moments), .choices = "fp32|bf16", .values = moments_values,
      .help = "AdamW moments' storage (default: bf16 under fp8, else fp32)" },
};
static const int format_values[] = { CKPT_F32, CKPT_BF16, CKPT_FP8 };
static const CliOpt output_opts[] = {
    { "--out", "-o", CLI_STR, offsetof(Args, out), "DIR", .help = "run directory: step_N/ checkpoints and a latest link (default out)" },
    { "--save-every", NULL, CLI_LONG, offsetof(Args, save_every), "N", .lo = 0, .hi = 1L << 40, .def = "0",
      .help = "checkpoint every N steps, 0 = at the end only" },
    { "--save-format", NULL, CLI_CHOICE, offsetof(Args, format), .choices = "f32|bf16|fp8", .values = format_values, .def = "f32",
      .help = "model.safetensors storage; the moments stay FP32" },
    { "--keep", NULL, CLI_LONG, offsetof(Args, keep), "N", .lo = 0, .hi = 1L << 20, .def = "3", .help = "newest checkpoints to keep, 0 = all" },
    { "--tokenizer", NULL, CLI_STR, offsetof(Args, tokenizer), "DIR",
      .help = "copy DIR/tokenizer.json (+ tokenizer_config.json) into each checkpoint" },
    { "--val-every", NULL, CLI_LONG, offsetof(Args, val_every), "N", .lo = 0, .hi = 1L << 40, .def = "100",
      .help = "validate every N steps, 0 = at the end only" },
    { "--val-batches", NULL, CLI_LONG, offsetof(Args, val_batches), "N", .lo = 1, .hi = 1L << 20, .def = "4",
      .help = "batches of --val per validation" },
    { "--log", NULL, CLI_STR, offsetof(Args, log), "FILE", .help = "append one JSON line per step and per validation" },
    { "--resume", NULL, CLI_STR, offsetof(Args, resume), "PATH",
      .help = "continue a run from a checkpoint or a run directory (its latest);\n"
              "the options are the checkpoint's, flags given here override them" },
    { "--stop-after", NULL, CLI_LONG, offsetof(Args, stop_after), "N", .lo = 1, .hi = 1L << 40,
      .help = "save and exit after step N, as if interrupted (resume continues)" },
    { "--routing-stats", NULL, CLI_STR, offsetof(Args, routing_stats), "FILE",
      .help = "write the tokens each routed expert received over the run, per MoE layer" },
};
static const CliOpt pipeline_opts[] = {
    { "--pipeline", NULL, CLI_LONG, offsetof(Args, pipeline), "N", .lo = 1, .hi = 256,
      .help = "N processes (this one and N-1 it starts, or a launcher's), the layers cut\n"
              "into stages; the batch's sequences are the micro-batches (docs/pipeline.md)" },
    { "--schedule", NULL, CLI_STR, offsetof(Args, schedule), "S", .help = "1f1b, zb1p, dualpipe (default) or dualpipev" },
    { "--pipeline-png", NULL, CLI_STR, offsetof(Args, pipeline_png), "FILE", .help = "draw the last step's measured timeline (needs gnuplot)" },
};

/** In take_options: dst = src when the run takes every flag, or when @p flag was given. */
#define TAKE(flag, dst, src) do { if (all || cli_given(c, flag)) (dst) = (src); } while (0)

/** Copies the flags into a->o: all of them (a new run), or those given (over a checkpoint's options). */
static void take_options(const CliCmd *c, Args *a, int all) {
    TAKE("--mtp", a->o.n_mtp, (int)a->n_mtp);
    TAKE("--steps", a->o.steps, a->steps);
    TAKE("--batch", a->o.batch, a->batch);
    TAKE("--seq-len", a->o.seq_len, a->seq_len);
    TAKE("--lr", a->o.lr.peak, a->lr);
    TAKE("--lr-min", a->o.lr.min, a->lr_min);
    TAKE("--warmup", a->o.lr.warmup, a->warmup);
    TAKE("--beta1", a->o.adamw.beta1, a->beta1);
    TAKE("--beta2", a->o.adamw.beta2, a->beta2);
    TAKE("--eps", a->o.adamw.eps, a->eps);
    TAKE("--wd", a->o.adamw.weight_decay, a->wd);
    TAKE("--clip", a->o.grad_clip, a->clip);
    TAKE("--bias-update", a->o.bias_update_speed, a->bias_update);
    TAKE("--balance-alpha", a->o.balance_alpha, a->balance_alpha);
    TAKE("--mtp-lambda", a->o.mtp_lambda, a->mtp_lambda);
    TAKE("--seed", a->o.seed, (uint64_t)a->seed);
    TAKE("--init-std", a->o.init_std, a->init_std);
    TAKE("--shuffle", a->o.shuffle, a->shuffle);
    TAKE("--save-every", a->o.save_every, a->save_every);
    TAKE("--keep", a->o.keep, a->keep);
    TAKE("--save-format", a->o.save_format, a->format);
    TAKE("--precision", a->o.precision, a->precision);
    TAKE("--fp8-promote", a->o.fp8.promote, (int)a->fp8_promote);
    TAKE("--fp8-acc-bits", a->o.fp8.acc_bits, (int)a->fp8_acc_bits);
    TAKE("--fp8-scaling", a->o.fp8.per_tensor, a->fp8_scaling);
    TAKE("--fp8-grad", a->o.fp8.grad_format, a->fp8_grad);
    TAKE("--moments", a->o.bf16_moments, a->moments);
#undef TAKE
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
    } else if (a->config ? config_load(&c, a->config, err) : config_preset(&c, a->preset, err)) {
        return -1;
    }
    if (a->vocab) {
        char set[64];
        snprintf(set, sizeof set, "vocab_size=%ld", a->vocab);
        char *one[1] = { set };
        if (config_apply_sets(&c, one, 1, err)) goto fail;
    }
    if (config_apply_sets(&c, (char *const *)a->sets.v, a->sets.n, err)) goto fail;
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
    if (trainer_checkpoint(tr, a->out, (CkptFormat)tr->opt.save_format, a->tokenizer, (int)tr->opt.keep, path, sizeof path, err)) return -1;
    fprintf(stderr, "dsv3 train: saved %s (%.2f s)\n", path, now_seconds() - t0);
    return 0;
}

/** The training loop: steps, validation, checkpoints; 0, -1 (err), or 128 + signal when interrupted (saved). */
static int run(Trainer *tr, const Args *a, const TokenFile *train, const TokenFile *valf, FILE *log, Err *err) {
    int64_t B = tr->opt.batch, T = tr->opt.seq_len, n_val = valf ? a->val_batches * B : 0;
    int *seqs = xcalloc((size_t)(B * (T + 1)), sizeof *seqs), *val = xcalloc((size_t)(n_val * (T + 1) + 1), sizeof *val);
    if (!seqs || !val) {
        free(seqs), free(val);
        return err_set(err, "out of memory for the batch");
    }
    DataCursor vc = { 0, 0, 0 }; /* validation: the same first sequences every time */
    int rc = 0;
    for (int64_t i = 0; i < n_val && rc == 0; i++) rc = data_next(valf, &vc, NULL, T, val + i * (T + 1), err);
    train_catch_interrupts(); /* Ctrl-C: finish the step, save, exit */
    while (tr->step < tr->opt.steps && rc == 0) {
        double t0 = now_seconds();
        TrainLosses L;
        StepStats st;
        if ((rc = trainer_next_batch(tr, train, seqs, err))) break;
        if (a->pipe && pipe_trainer_grad(&a->pipe->pt, seqs, &L, err)) {
            rc = -1;
            break;
        }
        if (!a->pipe) trainer_grad(tr, seqs, B, &L);
        trainer_update(tr, &st);
        if (a->routing) /* each MoE layer's tokens: the MTP depth k block sees T − k of each sequence */
            for (int j = 0; j < tr->n_moe; j++) {
                int l = tr->moe_layer[j], L0 = tr->ps.config.num_hidden_layers;
                routing_stats_add(a->routing, l, B * (T - (l < L0 ? 0 : l - L0 + 1)),
                                  tr->load + (size_t)j * (size_t)tr->ps.config.n_routed_experts);
            }
        if (a->pipe) cli_pipe_after_step(a->pipe);
        if (a->pipe && cli_pipe_rank(a->pipe) > 0) { /* rank 0 prints, validates and saves */
            if ((a->stop_after && tr->step == a->stop_after) || train_interrupted()) break;
            continue;
        }
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
        if (log && ferror(log)) rc = err_set(err, "--log %s: write error", a->log);
        int sig = train_interrupted();
        if (rc == 0 && (last || stop || sig || (tr->opt.save_every && tr->step % tr->opt.save_every == 0))) rc = save(tr, a, err);
        if (rc == 0 && sig) {
            fprintf(stderr, "dsv3 train: stopped by %s after step %lld; continue with: dsv3 train --resume %s --train %s%s%s\n",
                    sig == SIGINT ? "SIGINT" : "SIGTERM", (long long)tr->step, a->out, a->train, a->val ? " --val " : "",
                    a->val ? a->val : "");
            rc = 128 + sig;
        }
        if (stop || sig) break;
    }
    free(seqs);
    free(val);
    return rc;
}

/** The command once its flags are parsed. */
static int start(Args a, const CliCmd *c, int argc, char **argv);

int cmd_train(int argc, char **argv) {
    Args a;
    memset(&a, 0, sizeof a);
    a.o = train_options_default(0);
    a.init_std = -1; /* derived from the hidden size unless given */
    CliCmd cmd = { .name = CMD, .usage = "--train FILE [options]",
                   .about = "data: flat little-endian uint32 token ids, no header; ids < vocab_size" };
    cli_add(&cmd, CLI_GROUP("data", data_opts, &a));
    cli_add(&cmd, CLI_GROUP("model of a new run", model_opts, &a));
    cli_add(&cmd, CLI_GROUP("schedule and optimizer", schedule_opts, &a));
    cli_add(&cmd, CLI_GROUP("load balancing and MTP", balance_opts, &a));
    cli_add(&cmd, CLI_GROUP("numerics (paper §3.3)", numerics_opts, &a));
    cli_add(&cmd, CLI_GROUP("init and data order", init_opts, &a));
    cli_add(&cmd, CLI_GROUP("output", output_opts, &a));
    cli_add(&cmd, CLI_GROUP("pipeline parallelism", pipeline_opts, &a));
    cli_add(&cmd, cli_threads_group(&a.threads, 0));
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_RUN) return rc;
    static const char *const shape[] = { "--preset", "--config", "--init", "--vocab", "--set", "--mtp" };
    for (int i = 0; i < 6; i++) a.shape_flags += cli_given(&cmd, shape[i]);
    a.mtp_given = cli_given(&cmd, "--mtp"), a.warmup_given = cli_given(&cmd, "--warmup"), a.lr_min_given = cli_given(&cmd, "--lr-min");
    a.moments_given = cli_given(&cmd, "--moments");
    static const char *const fp8_flags[] = { "--fp8-promote", "--fp8-acc-bits", "--fp8-scaling", "--fp8-grad" };
    for (int i = 0; i < 4; i++) a.fp8_flags += cli_given(&cmd, fp8_flags[i]);
    rc = start(a, &cmd, argc, argv);
    cli_free(&cmd);
    return rc;
}

static int train_command(Args a, const CliCmd *cmd, PipeKind kind);

/** --pipeline: the group of processes (every exit goes through cli_pipe_finish), then the run. */
static int start(Args a, const CliCmd *cmd, int argc, char **argv) {
    cli_threads_apply(&a.threads);
    Err err = { "" };
    PipeKind kind = PIPE_DUALPIPE;
    if (a.schedule && pipe_kind_parse(a.schedule, &kind, &err)) return cli_fail(CMD, EXIT_USAGE, "--schedule: %s", err.msg);
    if ((a.schedule || a.pipeline_png) && !a.pipeline) return cli_fail(CMD, EXIT_USAGE, "--schedule and --pipeline-png need --pipeline N");
    CliPipe pipe;
    int prc = a.pipeline ? cli_pipe_launch(&pipe, CMD, a.pipeline, argc, argv) : EXIT_OK;
    if (prc) return prc;
    if (a.pipeline) a.pipe = &pipe;
    int rc = train_command(a, cmd, kind);
    return a.pipe ? cli_pipe_finish(&pipe, CMD, rc) : rc;
}

/** The run, in one process or as one rank of a pipeline (@p kind). */
static int train_command(Args a, const CliCmd *cmd, PipeKind kind) {
    Err err = { "" };
    int quiet = a.pipe && cli_pipe_rank(a.pipe) > 0; /* ranks 1..: no messages, logs or checkpoints */
    Trainer tr;
    memset(&tr, 0, sizeof tr);
    char ckpt[4096], run_dir[4096];
    if (a.resume) {
        if (a.shape_flags) return cli_fail(CMD, EXIT_USAGE, "--resume takes the model from the checkpoint: drop --preset/--config/--init/--vocab/--set/--mtp");
        Config c;
        if (train_resolve_checkpoint(a.resume, ckpt, sizeof ckpt, &err) || train_read_checkpoint_options(ckpt, &c, &a.o, &err))
            return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
        take_options(cmd, &a, 0); /* flags given now override the checkpoint's options */
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
        if (!quiet) fprintf(stderr, "dsv3 train: resumed %s at step %lld\n", ckpt, (long long)tr.step);
    } else {
        take_options(cmd, &a, 1);
        if (new_run(&a, &tr, &err)) {
            trainer_free(&tr);
            return cli_fail(CMD, EXIT_USAGE, "%s", err.msg);
        }
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
    RoutingStats routing;
    memset(&valf, 0, sizeof valf);
    memset(&routing, 0, sizeof routing);
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
    if (a.log && !quiet && !(log = fopen(a.log, "a"))) {
        rc = cli_fail(CMD, EXIT_USAGE, "--log %s: cannot open for appending: %s", a.log, strerror(errno));
        goto done;
    }
    if (a.pipe && pipe_trainer_check(&tr, kind, a.pipe->grp.env.world_size, &err)) {
        rc = cli_fail(CMD, EXIT_USAGE, "--pipeline: %s", err.msg);
        goto done;
    }
    if (!quiet && train_run_dir_prepare(a.out, &err)) { /* a run that cannot save fails before its first step */
        rc = cli_fail(CMD, EXIT_USAGE, "-o %s", err.msg);
        goto done;
    }
    if (a.routing_stats && (routing_stats_init(&routing, c, tr.opt.n_mtp, &err) || !(a.routing = &routing))) {
        rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
        goto done;
    }
    uint64_t main_p, mtp_p;
    weights_count(c, tr.opt.n_mtp, &main_p, &mtp_p);
    if (!quiet) fprintf(stderr, "dsv3 train: %.2f M parameters (+ %.2f M in %d MTP depths, embedding and head shared), "
                    "%lld tokens in %s, %lld x %lld tokens per step, %lld steps\n",
            (double)main_p / 1e6, (double)(mtp_p - 2 * (uint64_t)tr.opt.n_mtp * (uint64_t)c->vocab_size * (uint64_t)c->hidden_size) / 1e6,
            tr.opt.n_mtp, (long long)train.n, a.train, (long long)tr.opt.batch, (long long)tr.opt.seq_len,
            (long long)tr.opt.steps);
    if (!quiet && tr.opt.precision == TRAIN_FP8)
        fprintf(stderr, "dsv3 train: fp8 recipe: e4m3 (gradients %s), %s scales, %d-bit accumulation promoted every %d%s, %s moments\n",
                fp8_format_name(tr.opt.fp8.grad_format), tr.opt.fp8.per_tensor ? "per-tensor" : "1x128 / 128x128",
                tr.opt.fp8.acc_bits, tr.opt.fp8.promote, tr.opt.fp8.promote ? "" : " (never)", tr.opt.bf16_moments ? "bf16" : "fp32");
    if (a.pipe && cli_pipe_start(a.pipe, &tr, kind, &err)) rc = cli_fail(CMD, EXIT_RUNTIME, "--pipeline: %s", err.msg);
    else if ((rc = run(&tr, &a, &train, a.val ? &valf : NULL, log, &err)) == -1) rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    if (rc == EXIT_OK && !quiet && a.pipe && cli_pipe_report(a.pipe, stdout, a.pipeline_png, &err))
        rc = cli_fail(CMD, EXIT_RUNTIME, "--pipeline-png %s", err.msg);
    if (rc == EXIT_OK && !quiet && a.routing && routing_stats_write(a.routing, a.routing_stats, &err))
        rc = cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
done:
    routing_stats_free(&routing);
    if (log) fclose(log);
    tokenfile_close(&train);
    tokenfile_close(&valf);
    trainer_free(&tr);
    return rc;
}
