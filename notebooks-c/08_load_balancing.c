/*
 * Notebook 8 — Load balancing without an auxiliary loss: the bias that steers routing
 * (paper §2.1.2 eqs. 16–20; docs/model.md §6; Wang et al. 2024, arXiv 2408.15664).
 *
 * Run:  make notebooks     (writes build/notebooks/08_load_balancing.png)
 *
 * A router that picks the K experts a token likes best overloads the experts that many tokens like:
 * they become the slowest GPU of every all-to-all, and the others idle. The classic fix is an
 * auxiliary loss, α Σ_i f_i P_i (f_i: the share of selections expert i received, P_i: its mean
 * normalized affinity), whose gradient pushes the affinities of overloaded experts down — for every
 * token, whatever the language-modelling loss wants. DeepSeek-V3 instead adds a bias b_i to each
 * expert's affinity for the SELECTION only, and after every training step moves it by a fixed γ:
 *
 *     selection:  top-K of s_{i,t} + b_i          weights: from s_{i,t} alone (eq. 16)
 *     update:     b_i ← b_i + γ · sign(mean load − load_i)        (ref/model/moe.c: moe_update_bias)
 *
 * The affinities — what the router has learned about which expert fits a token — are never touched.
 *
 * A toy routing problem makes the difference visible in a second. Tokens come in 32 types of
 * Zipf-distributed frequency; a fixed "true" gate G* gives each its affinities s* = sigmoid(G* x)
 * (the fit the language model would want); the experts it prefers for frequent types are
 * overloaded. Routing uses the reference's gate (gate_forward: DeepSeek-V3's sigmoid, group-limited
 * top-K with the bias, config "tiny": 16 experts in 4 groups, 2 groups kept, top-4). Three arms:
 *
 *   none:      G = G*, b = 0;
 *   bias:      G = G*, b updated by moe_update_bias from each step's loads (moe_count_load);
 *   aux loss:  b = 0, G trained by SGD on a task loss that keeps s near s* (a stand-in for the
 *              language-modelling gradient) plus α × the balance loss (moe_balance_backward).
 *
 * Balance is MaxVio = max_i load_i / mean load − 1 (moe_max_violation, the paper's Figure 9
 * measure). Quality is what a token gets: the share of its ideal affinity Σ_{selected} s* /
 * Σ_{top-K of s*} s* that its selection captures, and how far the routing weights drift from the
 * ones the true affinities give.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "notebook.h"
#include "base/rng.h"
#include "model/ckpt.h"
#include "model/gate.h"
#include "model/moe.h"

enum { DX = 8, TYPES = 32, T = 512, STEPS = 800, EVAL = 4096, MAXE = 64, MAXK = 16 };

/** The toy's world: token types with centers and Zipf frequencies, and the true gate G*. */
typedef struct {
    float center[TYPES][DX];
    double cdf[TYPES];
    float G_true[MAXE][DX];
} World;

/** One token: a type drawn by frequency, its center plus a little noise. */
static void draw_token(float *x, const World *w, Rng *r) {
    double u = rng_uniform_double(r);
    int j = 0;
    while (j < TYPES - 1 && u > w->cdf[j]) j++;
    for (int d = 0; d < DX; d++) x[d] = w->center[j][d] + 0.3f * rng_normal(r);
}

/** logits [n][E] = G x (the gate matrix product; the model does it with linear_forward). */
static void gate_logits(float *logits, const float (*G)[DX], const float *x, int n, int E) {
    for (int t = 0; t < n; t++)
        for (int e = 0; e < E; e++) {
            float acc = 0;
            for (int d = 0; d < DX; d++) acc += G[e][d] * x[t * DX + d];
            logits[t * E + e] = acc;
        }
}

/** Routes n tokens with gate_forward into a->idx, a->weights, a->scores (a->logits holds the logits). */
static void route(MoEActs *a, int n, const float *bias, const Config *c, float *work) {
    int E = c->n_routed_experts, K = c->num_experts_per_tok;
    for (int t = 0; t < n; t++)
        gate_forward(a->idx + t * K, a->weights + t * K, a->scores + t * E, a->logits + t * E, bias, c, work);
}

/** What an arm ends with. */
typedef struct {
    double maxvio[STEPS];     /* per step, on the step's batch */
    float bias_hist[STEPS][MAXE];
    double final_maxvio;      /* mean over the last quarter of the steps */
    double eval_maxvio;       /* the final router on the evaluation set */
    double captured;          /* mean share of the ideal affinity the selection captures (eval set) */
    double weight_drift;      /* mean |w − w*| / routed scale per selected expert (eval set) */
} Arm;

/** The final router (G, bias) on a fixed evaluation set, against the true affinities s*: its loads,
 *  the share of the ideal affinity it captures, and how far its routing weights are from s*'s. */
static void evaluate(Arm *out, const World *w, const Config *c, const float (*G)[DX], const float *bias) {
    int E = c->n_routed_experts, K = c->num_experts_per_tok;
    float work[2 * (MAXE + MAXE)];
    static float ex[EVAL * DX], el[EVAL * MAXE], es[EVAL * MAXE], ew[EVAL * MAXK];
    static float tl[EVAL * MAXE], ts[EVAL * MAXE], tw[EVAL * MAXK];
    static int eidx[EVAL * MAXK], tidx[EVAL * MAXK];
    Rng er;
    rng_seed(&er, 999); /* the same tokens for every arm */
    for (int t = 0; t < EVAL; t++) draw_token(ex + t * DX, w, &er);
    MoEActs now = { 0 }, ideal = { 0 };
    now.logits = el, now.scores = es, now.idx = eidx, now.weights = ew;
    ideal.logits = tl, ideal.scores = ts, ideal.idx = tidx, ideal.weights = tw;
    gate_logits(el, G, ex, EVAL, E);
    gate_logits(tl, (const float(*)[DX])w->G_true, ex, EVAL, E);
    float zero[MAXE] = { 0 };
    route(&now, EVAL, bias, c, work);
    route(&ideal, EVAL, zero, c, work); /* what the fit alone would pick */
    int64_t eload[MAXE] = { 0 };
    moe_count_load(eload, &now, EVAL, c);
    out->eval_maxvio = moe_max_violation(eload, E);
    double cap = 0, drift = 0;
    for (int t = 0; t < EVAL; t++) {
        double got = 0, best = 0;
        for (int k = 0; k < K; k++) got += ts[t * E + eidx[t * K + k]], best += ts[t * E + tidx[t * K + k]];
        cap += got / best;
        for (int k = 0; k < K; k++) { /* the weight the true affinities give the same selection */
            double w_true = ts[t * E + eidx[t * K + k]] / got * c->routed_scaling_factor;
            drift += fabs(ew[t * K + k] - w_true) / c->routed_scaling_factor;
        }
    }
    out->captured = cap / EVAL;
    out->weight_drift = drift / ((double)EVAL * K);
}

/**
 * Runs one arm: gamma > 0 updates the bias, alpha > 0 trains G with the balance loss (lr on G),
 * neither: routing by G* as it is.
 */
static void run_arm(Arm *out, const World *w, const Config *c, double gamma, double alpha, uint64_t seed) {
    int E = c->n_routed_experts;
    float G[MAXE][DX], bias[MAXE] = { 0 }, work[2 * (MAXE + MAXE)];
    memcpy(G, w->G_true, sizeof G);
    static float x[T * DX], logits[T * MAXE], scores[T * MAXE], weights[T * MAXK], dlogits[T * MAXE];
    static int idx[T * MAXK];
    MoEActs a = { 0 };
    a.logits = logits, a.scores = scores, a.idx = idx, a.weights = weights;
    Rng r;
    rng_seed(&r, seed);
    const double lr = 2.0;
    for (int step = 0; step < STEPS; step++) {
        for (int t = 0; t < T; t++) draw_token(x + t * DX, w, &r);
        gate_logits(logits, (const float(*)[DX])G, x, T, E);
        route(&a, T, bias, c, work);
        int64_t load[MAXE] = { 0 };
        moe_count_load(load, &a, T, c);
        out->maxvio[step] = moe_max_violation(load, E);
        memcpy(out->bias_hist[step], bias, sizeof(float) * (size_t)E);
        if (gamma > 0) moe_update_bias(bias, load, E, gamma); /* end of step: steer, learn nothing */
        if (alpha > 0) {
            /* Task loss ½ mean_t Σ_e (s − s*)²: keeps the router's affinities near the fit (its
             * gradient on a logit is (s − s*)·s(1 − s)). Then the balance loss's own gradient. */
            static float true_logits[T * MAXE];
            gate_logits(true_logits, (const float(*)[DX])w->G_true, x, T, E);
            for (int i = 0; i < T * E; i++) {
                float s = scores[i], s_true = 1.0f / (1.0f + expf(-true_logits[i]));
                dlogits[i] = (s - s_true) * s * (1 - s) / T;
            }
            moe_balance_backward(dlogits, &a, T, c, alpha, work);
            for (int e = 0; e < E; e++) /* dG = Σ_t dlogits_t x_tᵀ, one SGD step */
                for (int d = 0; d < DX; d++) {
                    double g = 0;
                    for (int t = 0; t < T; t++) g += (double)dlogits[t * E + e] * x[t * DX + d];
                    G[e][d] -= (float)(lr * g);
                }
        }
    }
    double sum = 0;
    for (int s = STEPS - STEPS / 4; s < STEPS; s++) sum += out->maxvio[s];
    out->final_maxvio = sum / (STEPS / 4);

    evaluate(out, w, c, (const float(*)[DX])G, bias);
}

/** The toy's world: Zipf frequencies, token-type centers and the true gate G* for E experts. */
static void make_world(World *w, int E) {
    Rng r;
    rng_seed(&r, 8);
    double z = 0;
    for (int j = 0; j < TYPES; j++) z += pow(j + 1, -1.1);
    for (int j = 0; j < TYPES; j++) w->cdf[j] = (j ? w->cdf[j - 1] : 0) + pow(j + 1, -1.1) / z;
    for (int j = 0; j < TYPES; j++)
        for (int d = 0; d < DX; d++) w->center[j][d] = rng_normal(&r);
    for (int e = 0; e < E; e++)
        for (int d = 0; d < DX; d++) w->G_true[e][d] = 0.8f * rng_normal(&r);
}

/* The arms: gamma > 0 updates the bias, alpha > 0 adds the balance loss (g = gamma, a = alpha). */
enum { NARMS = 8, NONE = 0, BIAS = 2, AUX0 = 4 };
static const struct {
    const char *name;
    double gamma, alpha;
} arms[NARMS] = {
    { "none", 0, 0 },          { "bias, g = 0.0003", 0.0003, 0 }, { "bias, g = 0.001", 0.001, 0 },
    { "bias, g = 0.003", 0.003, 0 }, { "aux loss, a = 1", 0, 1 },  { "aux loss, a = 3", 0, 3 },
    { "aux loss, a = 10", 0, 10 }, { "aux loss, a = 30", 0, 30 },
};

/** The claims, from the arms' results. */
static void report(const Arm *res, int E) {
    /* How far each bias moves once it has settled: the largest range of any b_i over the last quarter. */
    const Arm *b = &res[BIAS];
    double band = 0, spread_lo = INFINITY, spread_hi = -INFINITY;
    for (int e = 0; e < E; e++) {
        double lo = INFINITY, hi = -INFINITY;
        for (int st = STEPS - STEPS / 4; st < STEPS; st++)
            lo = fmin(lo, b->bias_hist[st][e]), hi = fmax(hi, b->bias_hist[st][e]);
        band = fmax(band, hi - lo);
        spread_lo = fmin(spread_lo, b->bias_hist[STEPS - 1][e]), spread_hi = fmax(spread_hi, b->bias_hist[STEPS - 1][e]);
    }
    int best_aux = AUX0;
    for (int i = AUX0; i < NARMS; i++)
        if (res[i].final_maxvio < res[best_aux].final_maxvio) best_aux = i;
    int aux_worse = 1;
    for (int i = AUX0; i < NARMS; i++) aux_worse &= res[i].final_maxvio > b->final_maxvio && res[i].weight_drift > 0;
    printf("   Without help the router overloads the experts the frequent token types like (MaxVio %.2f: the\n"
           "   busiest expert gets %.1fx the mean load). The bias, at the paper's gamma = 0.001, balances it to the\n"
           "   batch's noise floor in a few hundred steps, the biases spread over %.2f, and then only hover\n"
           "   (each b_i within %.3f, the batch-to-batch noise of the loads):\n"
           "   it gives up %.1f %% of the ideal affinity and leaves the routing weights exactly as the fit made them.\n"
           "   The auxiliary loss must fight the task gradient: a small alpha barely balances, a large one bends\n"
           "   the affinities of every token (best here: alpha = %g, MaxVio %.2f, %.1f %% of the ideal affinity lost,\n"
           "   weights off by %.1f %%).\n",
           res[NONE].final_maxvio, 1 + res[NONE].final_maxvio, spread_hi - spread_lo, band, 100 * (1 - b->captured),
           arms[best_aux].alpha, res[best_aux].final_maxvio, 100 * (1 - res[best_aux].captured),
           100 * res[best_aux].weight_drift);
    check(res[NONE].final_maxvio > 0.8, "without balancing, the busiest expert carries more than 1.8x the mean load");
    check(b->final_maxvio < res[NONE].final_maxvio / 4 && b->eval_maxvio < 0.15,
          "the bias update (gamma = 0.001) cuts MaxVio at least 4x, below 0.15 on the evaluation set");
    check(b->weight_drift < 1e-6, "... without changing a routing weight (they come from the unbiased affinities)");
    check(band < (spread_hi - spread_lo) / 10, "once balanced, each bias hovers within a tenth of the biases' spread");
    check(aux_worse, "every auxiliary-loss arm balances worse than the bias and distorts the routing weights");
    check(res[best_aux].captured < b->captured,
          "the best-balanced auxiliary-loss arm also captures less of the ideal affinity than the bias");
}

/** The plot: MaxVio over training (left), the biases over training (middle), and balance against
 *  quality for every arm (right), into OUT_DIR/08_load_balancing.png. */
static void plot(const char *out_dir, const Arm *res, int E) {
    const Arm *b = &res[BIAS];
    char png[4096];
    FILE *gp = plot_open(out_dir, "08_load_balancing", png, sizeof png);
    if (!gp) return;
    fprintf(gp, "set terminal pngcairo size 1500,480 font ',10'\nset output '%s'\nset multiplot layout 1,3\n", png);
    fprintf(gp, "$v << EOD\n");
    enum { SMOOTH = 20 }; /* running mean over 20 steps: one batch's MaxVio is noisy */
    for (int st = SMOOTH - 1; st < STEPS; st++) {
        fprintf(gp, "%d", st);
        for (int i = 0; i < NARMS; i++) {
            double m = 0;
            for (int k = 0; k < SMOOTH; k++) m += res[i].maxvio[st - k];
            fprintf(gp, " %g", m / SMOOTH);
        }
        fprintf(gp, "\n");
    }
    fprintf(gp, "EOD\n$b << EOD\n");
    for (int st = 0; st < STEPS; st++) {
        fprintf(gp, "%d", st);
        for (int e = 0; e < E; e++) fprintf(gp, " %g", b->bias_hist[st][e]);
        fprintf(gp, "\n");
    }
    fprintf(gp, "EOD\n$q << EOD\n");
    for (int i = 1; i < NARMS; i++)
        fprintf(gp, "%g %g \"%s\" %d\n", res[i].final_maxvio, 100 * res[i].captured, arms[i].name, i < AUX0 ? 1 : 2);
    fprintf(gp, "EOD\n");
    fprintf(gp, "set title 'Load imbalance during training (20-step mean)'\nset xlabel 'step'\nset ylabel 'MaxVio'\n"
                "set grid\nset key top right maxrows 3 width -2\nset yrange [0:1.6]\n"
                "plot $v using 1:2 with lines lw 2 lc rgb 'black' title 'none', "
                "$v using 1:4 with lines lw 2 lc rgb '#3b7dd8' title 'bias, gamma = 0.001', "
                "$v using 1:6 with lines lc rgb '#f0b070' title 'aux loss, alpha = 1', "
                "$v using 1:7 with lines lc rgb '#e08020' title 'aux loss, alpha = 3', "
                "$v using 1:8 with lines lc rgb '#c05010' title 'aux loss, alpha = 10', "
                "$v using 1:9 with lines lc rgb '#802000' title 'aux loss, alpha = 30'\n");
    fprintf(gp, "set title 'The 16 biases b_i (gamma = 0.001)'\nset ylabel 'b_i'\nset autoscale y\nunset key\n"
                "plot for [i=2:%d] $b using 1:i with lines lc rgb '#3b7dd8'\n", E + 1);
    fprintf(gp, "set title 'Balance vs quality, every arm'\nset xlabel 'MaxVio (training, last quarter)'\n"
                "set ylabel 'ideal affinity captured (%%)'\nset key at graph 0.98, graph 0.42 right\n"
                "set xrange [0:*]\nset yrange [*:100.5]\n"
                "plot $q using 1:($4 == 1 ? $2 : 1/0) with points pt 7 ps 1.5 lc rgb '#3b7dd8' "
                "title 'bias update (gamma 0.0003, 0.001, 0.003)', "
                "$q using 1:($4 == 2 ? $2 : 1/0) with points pt 5 ps 1.5 lc rgb '#c05010' title 'auxiliary loss', "
                "$q using 1:($4 == 2 ? $2 : 1/0):3 with labels offset 0,1 font ',9' notitle\nunset multiplot\n");
    plot_close(gp, png);
}

int main(int argc, char **argv) {
    const char *out_dir = argc > 1 ? argv[1] : "build/notebooks";
    Config c;
    Err err;
    if (config_preset(&c, "tiny", &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    int E = c.n_routed_experts, K = c.num_experts_per_tok;
    if (E > MAXE || K > MAXK) return fprintf(stderr, "the toy holds at most %d experts, %d per token\n", MAXE, MAXK), 1;
    static World w;
    make_world(&w, E);
    printf("Toy router: %d token types (Zipf 1.1), %d experts in %d groups (keep %d), top-%d, %d tokens a step, "
           "%d steps\n\n",
           TYPES, E, c.n_group, c.topk_group, K, T, STEPS);
    static Arm res[NARMS];
    printf("   arm                 MaxVio: training   final, %d tokens   ideal affinity captured   weight drift\n", EVAL);
    for (int i = 0; i < NARMS; i++) {
        run_arm(&res[i], &w, &c, arms[i].gamma, arms[i].alpha, 100);
        printf("   %-18s         %6.3f           %6.3f               %6.2f %%             %6.3f %%\n", arms[i].name,
               res[i].final_maxvio, res[i].eval_maxvio, 100 * res[i].captured, 100 * res[i].weight_drift);
    }
    printf("   (training MaxVio: mean over the last %d steps, each on its own %d-token batch; g = gamma, a = alpha)\n\n",
           STEPS / 4, T);

    report(res, E);
    plot(out_dir, res, E);
    printf("\n%s\n", failures ? "SOME CLAIMS FAILED" : "OK: every claim above holds.");
    return failures ? 1 : 0;
}
