/**
 * @file train_report.c
 * @brief Turns `dsv3 train --log` files into gnuplot data and a markdown table, for the
 *        load-balancing and MTP experiments (docs/experiments.md, `make experiments`).
 *
 *   train_report OUTDIR LABEL=LOG.jsonl [LABEL=LOG.jsonl ...]
 *
 * Per arm it writes OUTDIR/LABEL.train.dat (step, train loss of the main model, MaxVio averaged
 * over the main model's MoE layers, the largest of them), OUTDIR/LABEL.val.dat (step, validation
 * loss of the main model and of the MTP head) and OUTDIR/LABEL.heat.dat (expert load / mean
 * load of the first MoE layer, one row per window of 10 steps, for a heat map), and prints one
 * table row: final validation losses, MaxVio over the last quarter of training, and the
 * run-wide MaxVio of the loads summed over the whole run.
 *
 * MaxVio = max_i load_i / mean_i load_i − 1 (Wang et al. 2024, arXiv 2408.15664).
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

enum { WINDOW = 10, MAX_E = 1024, MAX_L = 64 };

static double maxvio(const double *load, int E) {
    double mx = 0, sum = 0;
    for (int e = 0; e < E; e++) {
        sum += load[e];
        if (load[e] > mx) mx = load[e];
    }
    return sum > 0 ? mx / (sum / E) - 1 : 0;
}

static int report(const char *outdir, const char *label, const char *path) {
    char *text;
    size_t len;
    Err err;
    if (read_file(path, 1u << 30, &text, &len, &err)) return fprintf(stderr, "%s\n", err.msg), -1;
    char p[4096];
    FILE *ft, *fv, *fh;
    snprintf(p, sizeof p, "%s/%s.train.dat", outdir, label);
    ft = fopen(p, "w");
    snprintf(p, sizeof p, "%s/%s.val.dat", outdir, label);
    fv = fopen(p, "w");
    snprintf(p, sizeof p, "%s/%s.heat.dat", outdir, label);
    fh = fopen(p, "w");
    if (!ft || !fv || !fh) return fprintf(stderr, "cannot write into %s\n", outdir), -1;
    static double total[MAX_L][MAX_E], window[MAX_E];
    memset(total, 0, sizeof total);
    memset(window, 0, sizeof window);
    int E = 0, L = 0, n_mtp = 0, steps = 0, in_window = 0;
    double last_val = 0, last_val_mtp = 0, tail_sum = 0;
    int tail_n = 0;
    /* First pass: how many training steps, to know where the last quarter starts. */
    for (char *q = text; (q = strstr(q, "\"load\"")); q++) steps++;
    int tail_from = steps - steps / 4, step_i = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        if (!j) continue;
        int step = cJSON_GetObjectItem(j, "step") ? cJSON_GetObjectItem(j, "step")->valueint : 0;
        cJSON *vl = cJSON_GetObjectItem(j, "val_main");
        if (vl) {
            last_val = vl->valuedouble;
            cJSON *vm = cJSON_GetObjectItem(j, "val_mtp");
            last_val_mtp = vm ? vm->valuedouble : 0;
            fprintf(fv, "%d %.6f %.6f\n", step, last_val, last_val_mtp);
        }
        cJSON *loads = cJSON_GetObjectItem(j, "load"), *mtp = cJSON_GetObjectItem(j, "mtp");
        if (loads) {
            n_mtp = mtp ? cJSON_GetArraySize(mtp) : 0;
            L = cJSON_GetArraySize(loads);
            int main_layers = L - n_mtp > 0 ? L - n_mtp : L;
            double mean_vio = 0, max_vio = 0, l[MAX_E];
            int li = 0;
            for (cJSON *layer = loads->child; layer && li < MAX_L; layer = layer->next, li++) {
                E = cJSON_GetArraySize(layer);
                if (E > MAX_E) E = MAX_E;
                int e = 0;
                for (cJSON *x = layer->child; x && e < E; x = x->next, e++) {
                    l[e] = x->valuedouble;
                    total[li][e] += l[e];
                    if (li == 0) window[e] += l[e];
                }
                if (li < main_layers) {
                    double v = maxvio(l, E);
                    mean_vio += v / main_layers;
                    if (v > max_vio) max_vio = v;
                }
            }
            fprintf(ft, "%d %.6f %.6f %.6f\n", step, cJSON_GetObjectItem(j, "main")->valuedouble, mean_vio, max_vio);
            if (step_i++ >= tail_from) tail_sum += mean_vio, tail_n++;
            if (++in_window == WINDOW) {
                double sum = 0;
                for (int e = 0; e < E; e++) sum += window[e];
                for (int e = 0; e < E; e++) fprintf(fh, "%s%.4f", e ? " " : "", sum > 0 ? window[e] / (sum / E) : 0);
                fprintf(fh, "\n");
                memset(window, 0, sizeof window);
                in_window = 0;
            }
        }
        cJSON_Delete(j);
    }
    double run_vio = 0;
    int main_layers = L - n_mtp > 0 ? L - n_mtp : L;
    for (int li = 0; li < main_layers; li++) run_vio += maxvio(total[li], E) / main_layers;
    char mtp_col[32] = "—";
    if (n_mtp) snprintf(mtp_col, sizeof mtp_col, "%.4f", last_val_mtp);
    printf("| %s | %.4f | %s | %.3f | %.3f |\n", label, last_val, mtp_col, tail_n ? tail_sum / tail_n : 0, run_vio);
    fclose(ft);
    fclose(fv);
    fclose(fh);
    free(text);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: train_report OUTDIR LABEL=LOG.jsonl [...]\n");
        return 2;
    }
    printf("| arm | final val loss (main) | final val loss (MTP) | MaxVio, last quarter (mean over MoE layers) |"
           " MaxVio of the whole run's loads |\n|---|---|---|---|---|\n");
    for (int i = 2; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) return fprintf(stderr, "expected LABEL=LOG, got %s\n", argv[i]), 2;
        *eq = 0;
        if (report(argv[1], argv[i], eq + 1)) return 1;
    }
    return 0;
}
