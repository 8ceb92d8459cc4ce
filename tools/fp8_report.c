/**
 * @file fp8_report.c
 * @brief The FP8 training experiment's numbers (docs/experiments.md, `make experiments-fp8`).
 *
 *   fp8_report OUTDIR BASE=LOG.jsonl ARM=LOG.jsonl [...]     losses of FP8 arms against the FP32 base
 *   fp8_report --memory CONFIG.json TRAIN.bin T               activation cache of one FP8 step, per layer
 *   fp8_report --fidelity CKPT VAL.bin B                      one batch's loss and gradient per numerics
 *
 * The first form reads `dsv3 train --log` files of runs with the same seed and data order and
 * writes OUTDIR/fp8_gap.dat (step, then per arm the relative gap of its training loss to the base's,
 * (L_arm − L_base) / L_base in %, each loss averaged over a trailing window of 10 steps, which are
 * the same 10 batches in every arm) and OUTDIR/fp8_val.dat (step, per arm the validation loss of the
 * main model and its relative gap in %), and prints a markdown table: final validation loss, its
 * relative gap, the mean and the largest windowed training-loss gap over the last quarter of the run,
 * and the arm's mean step throughput.
 *
 * The second form trains one batch of T-token sequences of TRAIN.bin on CONFIG under
 * `--precision fp8` and prints, per decoder layer, the bytes of activations the recipe cached for
 * the backward (codes + scales, what fp8_recipe_cache_bytes counted in that real step, routing
 * included) against what the same tensors take in FP32.
 *
 * The third form loads a checkpoint's FP32 masters and computes the loss and the gradient of the
 * first B sequences of VAL.bin (its seq_len) under FP32 and under each FP8 variant, from the same
 * weights, and prints each variant's loss gap and the relative L2 error and cosine of its gradient
 * against FP32's: the per-step fidelity that a training curve only shows accumulated.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/train.h"

enum { WINDOW = 10, MAX_ARMS = 16 };

/** One run's log: main training loss per step (index step−1), validation losses, throughput. */
typedef struct {
    const char *label;
    double *loss;       /* [n] */
    int n;
    int *val_step;      /* [n_val] */
    double *val;        /* [n_val] */
    int n_val;
    double tok_s;       /* mean over steps */
} Run;

static int read_run(Run *r, const char *label, const char *path) {
    char *text;
    size_t len;
    Err err;
    if (read_file(path, 1u << 30, &text, &len, &err)) return fprintf(stderr, "%s\n", err.msg), -1;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    r->label = label;
    r->loss = calloc(lines, sizeof *r->loss);
    r->val_step = calloc(lines, sizeof *r->val_step);
    r->val = calloc(lines, sizeof *r->val);
    r->n = r->n_val = 0;
    r->tok_s = 0;
    if (!r->loss || !r->val_step || !r->val) return fprintf(stderr, "out of memory reading %s\n", path), -1;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *step = j ? cJSON_GetObjectItem(j, "step") : NULL, *main = j ? cJSON_GetObjectItem(j, "main") : NULL;
        const cJSON *val = j ? cJSON_GetObjectItem(j, "val_main") : NULL, *tps = j ? cJSON_GetObjectItem(j, "tok_per_s") : NULL;
        if (cJSON_IsNumber(step) && cJSON_IsNumber(main) && step->valueint >= 1 && (size_t)step->valueint <= lines) {
            r->loss[step->valueint - 1] = main->valuedouble; /* a resumed step's later line wins */
            if (step->valueint > r->n) r->n = step->valueint;
            if (cJSON_IsNumber(tps)) r->tok_s += tps->valuedouble;
        }
        if (cJSON_IsNumber(step) && cJSON_IsNumber(val)) r->val_step[r->n_val] = step->valueint, r->val[r->n_val++] = val->valuedouble;
        cJSON_Delete(j);
    }
    free(text);
    if (r->n) r->tok_s /= r->n;
    return r->n ? 0 : (fprintf(stderr, "%s: no training steps\n", path), -1);
}

/** Mean training loss of the WINDOW steps ending at step index i (fewer at the start). */
static double windowed(const Run *r, int i) {
    double s = 0;
    int n = 0;
    for (int k = i; k >= 0 && k > i - WINDOW; k--) s += r->loss[k], n++;
    return s / n;
}

static int losses(int argc, char **argv) {
    const char *out = argv[1];
    Run runs[MAX_ARMS];
    int n = 0;
    for (int i = 2; i < argc && n < MAX_ARMS; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) return fprintf(stderr, "expected LABEL=LOG, got %s\n", argv[i]), 2;
        *eq = 0;
        if (read_run(&runs[n++], argv[i], eq + 1)) return 1;
    }
    if (n < 2) return fprintf(stderr, "need the FP32 base and at least one arm\n"), 2;
    const Run *b = &runs[0];
    int steps = b->n;
    for (int a = 1; a < n; a++) steps = runs[a].n < steps ? runs[a].n : steps;
    char path[4096];
    snprintf(path, sizeof path, "%s/fp8_gap.dat", out);
    FILE *fg = fopen(path, "w");
    snprintf(path, sizeof path, "%s/fp8_val.dat", out);
    FILE *fv = fopen(path, "w");
    if (!fg || !fv) return fprintf(stderr, "cannot write into %s\n", out), 1;
    fprintf(fg, "# step");
    for (int a = 1; a < n; a++) fprintf(fg, " %s", runs[a].label);
    fprintf(fg, "   (relative gap of the %d-step mean training loss to %s, %%)\n", WINDOW, b->label);
    for (int i = 0; i < steps; i++) {
        fprintf(fg, "%d", i + 1);
        for (int a = 1; a < n; a++) fprintf(fg, " %.5f", 100.0 * (windowed(&runs[a], i) - windowed(b, i)) / windowed(b, i));
        fprintf(fg, "\n");
    }
    fprintf(fv, "# step, then per arm: validation loss (main), relative gap to %s in %% (arms:", b->label);
    for (int a = 0; a < n; a++) fprintf(fv, " %s", runs[a].label);
    fprintf(fv, ")\n");
    for (int v = 0; v < b->n_val; v++) {
        fprintf(fv, "%d", b->val_step[v]);
        for (int a = 0; a < n; a++) {
            double x = v < runs[a].n_val ? runs[a].val[v] : NAN;
            fprintf(fv, " %.6f %.5f", x, 100.0 * (x - b->val[v]) / b->val[v]);
        }
        fprintf(fv, "\n");
    }
    fclose(fg);
    fclose(fv);
    int tail = steps - steps / 4;
    printf("| arm | final val loss (main) | relative gap, final val | training-loss gap, last quarter: mean | largest |"
           " tokens/s |\n|---|---|---|---|---|---|\n");
    for (int a = 0; a < n; a++) {
        const Run *r = &runs[a];
        double last = r->n_val ? r->val[r->n_val - 1] : NAN, blast = b->n_val ? b->val[b->n_val - 1] : NAN;
        double mean = 0, worst = 0;
        for (int i = tail; i < steps; i++) {
            double g = 100.0 * (windowed(r, i) - windowed(b, i)) / windowed(b, i);
            mean += g / (steps - tail);
            if (fabs(g) > fabs(worst)) worst = g;
        }
        if (a == 0) printf("| %s | %.4f | — | — | — | %.0f |\n", r->label, last, r->tok_s);
        else
            printf("| %s | %.4f | %+.3f %% | %+.3f %% | %+.3f %% | %.0f |\n", r->label, last, 100.0 * (last - blast) / blast, mean,
                   worst, r->tok_s);
    }
    for (int a = 0; a < n; a++) free(runs[a].loss), free(runs[a].val_step), free(runs[a].val);
    return 0;
}

static int memory(const char *config, const char *train, long T) {
    Config c;
    Err err;
    TokenFile f;
    Trainer tr;
    if (config_load(&c, config, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    TrainOptions o = train_options_default(c.hidden_size);
    o.seq_len = T, o.batch = 1, o.n_mtp = c.num_nextn_predict_layers, o.precision = TRAIN_FP8, o.bf16_moments = 1;
    if (trainer_init(&tr, &c, &o, &err) || tokenfile_open(&f, train, c.vocab_size, T + 1, &err))
        return fprintf(stderr, "%s\n", err.msg), 1;
    ParamInit pi = { o.seed, (float)o.init_std };
    if (params_fill(&tr.ps, params_init_source, &pi, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    int *seq = malloc(sizeof(int) * (size_t)(T + 1));
    TrainLosses L;
    if (trainer_next_batch(&tr, &f, seq, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    trainer_grad(&tr, seq, 1, &L);
    int layers = c.num_hidden_layers + o.n_mtp;
    printf("| layer | cached for the backward, FP8 recipe | the same tensors in FP32 | ratio | saved |\n|---|---|---|---|---|\n");
    size_t t8 = 0, t32 = 0;
    for (int l = 0; l < layers; l++) {
        Fp8CacheBytes b = fp8_recipe_cache_bytes(tr.fp8, l);
        const char *kind = l >= c.num_hidden_layers ? "MTP block" : config_layer_is_moe(&c, l) ? "MoE" : "dense";
        printf("| %d (%s) | %.1f KiB | %.1f KiB | %.3f | %.1f KiB |\n", l, kind, b.fp8 / 1024.0, b.fp32 / 1024.0,
               (double)b.fp8 / (double)b.fp32, (b.fp32 - b.fp8) / 1024.0);
        t8 += b.fp8, t32 += b.fp32;
    }
    printf("| all | %.1f KiB | %.1f KiB | %.3f | %.1f KiB |\n", t8 / 1024.0, t32 / 1024.0, (double)t8 / (double)t32,
           (t32 - t8) / 1024.0);
    free(seq);
    tokenfile_close(&f);
    trainer_free(&tr);
    return 0;
}

/** One numerics variant of the fidelity table. */
typedef struct {
    const char *name;
    int precision, acc_bits, promote, per_tensor, grad_format;
} Variant;

static int fidelity(const char *ckpt, const char *valpath, long B) {
    static const Variant vs[] = {
        { "FP32", TRAIN_FP32, 14, 128, 0, FMT_E4M3 },
        { "FP8 recipe (14 bits, promote 128)", TRAIN_FP8, 14, 128, 0, FMT_E4M3 },
        { "quantization only (23 bits, promote every product)", TRAIN_FP8, 23, 1, 0, FMT_E4M3 },
        { "(a) per-tensor scales", TRAIN_FP8, 14, 128, 1, FMT_E4M3 },
        { "(b) no promotion", TRAIN_FP8, 14, 0, 0, FMT_E4M3 },
        { "(b') no promotion, 12-bit accumulator", TRAIN_FP8, 12, 0, 0, FMT_E4M3 },
        { "(c) E5M2 gradients", TRAIN_FP8, 14, 128, 0, FMT_E5M2 },
    };
    Config c;
    TrainOptions o;
    Err err;
    TokenFile f;
    if (train_read_checkpoint_options(ckpt, &c, &o, &err) || tokenfile_open(&f, valpath, c.vocab_size, o.seq_len + 1, &err))
        return fprintf(stderr, "%s\n", err.msg), 1;
    int64_t T = o.seq_len;
    int *seqs = malloc(sizeof(int) * (size_t)(B * (T + 1)));
    DataCursor cur = { 0, 0, 0 };
    for (long b = 0; b < B; b++)
        if (data_next(&f, &cur, NULL, T, seqs + b * (T + 1), &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    float *g32 = NULL;
    double loss32 = 0;
    printf("| numerics | loss gap to FP32 | gradient: relative L2 error | cosine |\n|---|---|---|---|\n");
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) {
        Trainer tr;
        TrainOptions v = o;
        v.batch = B, v.precision = vs[i].precision, v.fp8.acc_bits = vs[i].acc_bits, v.fp8.promote = vs[i].promote;
        v.fp8.per_tensor = vs[i].per_tensor, v.fp8.grad_format = vs[i].grad_format;
        if (trainer_init(&tr, &c, &v, &err) || trainer_load_state(&tr, ckpt, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
        TrainLosses L;
        trainer_grad(&tr, seqs, B, &L);
        if (!g32) {
            g32 = malloc(sizeof(float) * tr.ps.n);
            memcpy(g32, tr.ps.grad, sizeof(float) * tr.ps.n);
            loss32 = L.total;
            printf("| %s | (loss %.5f) | — | — |\n", vs[i].name, L.total);
        } else {
            double d2 = 0, n2 = 0, dot = 0, h2 = 0;
            for (size_t j = 0; j < tr.ps.n; j++) {
                double a = g32[j], b = tr.ps.grad[j];
                d2 += (b - a) * (b - a), n2 += a * a, dot += a * b, h2 += b * b;
            }
            printf("| %s | %+.3f %% | %.4f | %.5f |\n", vs[i].name, 100.0 * (L.total - loss32) / loss32, sqrt(d2 / n2),
                   dot / sqrt(n2 * h2));
        }
        fflush(stdout);
        trainer_free(&tr);
    }
    free(g32);
    free(seqs);
    tokenfile_close(&f);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "--memory")) return memory(argv[2], argv[3], atol(argv[4]));
    if (argc == 5 && !strcmp(argv[1], "--fidelity")) return fidelity(argv[2], argv[3], atol(argv[4]));
    if (argc < 4) {
        fprintf(stderr, "usage: fp8_report OUTDIR BASE=LOG.jsonl ARM=LOG.jsonl [...]\n"
                        "       fp8_report --memory CONFIG.json TRAIN.bin T\n"
                        "       fp8_report --fidelity CKPT VAL.bin B\n");
        return 2;
    }
    return losses(argc, argv);
}
