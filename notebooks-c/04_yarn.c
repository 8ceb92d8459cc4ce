/*
 * Notebook 4 — YaRN: how DeepSeek-V3 stretches RoPE from 4K to 128K positions
 * (paper §4.3 "long context extension"; docs/model.md §4.2, §3.5).
 *
 * Run:  make notebooks     (writes build/notebooks/04_yarn.png)
 *
 * RoPE turns pair i of the 64-d rope part of a query or key by the angle p·θ_i, θ_i = 10000^(−2i/64).
 * Pretraining saw positions p < L₀ = 4096 only. YaRN (Peng et al. 2023) changes two things so that
 * the model works up to 40 × 4096 = 163 840 positions:
 *
 *   1. the frequencies (ref/model/rope.c):  θ'_i = θ_i/s · ramp_i + θ_i · (1 − ramp_i),  s = 40,
 *      with ramp_i going from 0 to 1 across the pairs that turn between β_fast = 32 and β_slow = 1
 *      times within L₀: fast pairs are kept, slow pairs are interpolated (divided by 40);
 *   2. the softmax scale (ref/model/config.c):  1/√192 · mscale²,  mscale = 0.1·ln s + 1 = 1.369.
 *
 * We look at both through the reference's own functions: rope_init builds θ' from DeepSeek-V3's
 * config (config_preset "v3"), rope_cos_sin / rope_forward rotate toy queries and keys, and
 * config_parse derives the softmax scale. Three questions, each answered with numbers and checked:
 *
 *   A. which pairs does the ramp keep, blend or interpolate — and is that what "turns within L₀" says?
 *   B. at 160K positions, which pairs reach angles that pretraining never produced?
 *   C. what happens to the attention's entropy over a long context, with plain RoPE, with θ' alone,
 *      and with θ' plus mscale?
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "notebook.h"
#include "base/rng.h"
#include "model/ckpt.h"
#include "model/rope.h"

enum { DR = 64, HALF = DR / 2, HEADS = 8, NMAX = 163840 };

static const double PI = 3.14159265358979323846;

/** Entropy (nats) of softmax(scale · s[0..n)), and the probability mass on s[far..n). */
static double softmax_entropy(const float *s, int n, double scale, int far, double *far_mass) {
    double mx = -INFINITY;
    for (int j = 0; j < n; j++) mx = fmax(mx, scale * s[j]);
    double Z = 0, Sx = 0, F = 0;
    for (int j = 0; j < n; j++) {
        double x = scale * s[j] - mx, e = exp(x);
        Z += e, Sx += e * x;
        if (j >= far) F += e;
    }
    *far_mass = F / Z;
    return log(Z) - Sx / Z; /* H = −Σ p log p with p = e^x / Z */
}

/** A toy head's attention entropy at each context length (part C). */
enum { NPOINTS = 9 };
static const int Ns[NPOINTS] = { 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 163840 };
typedef struct {
    double H[NPOINTS][3];   /* entropy (nats): plain RoPE, YaRN θ' only, YaRN θ' + mscale² */
    double far[NPOINTS][3]; /* attention mass on keys more than L0 behind the query */
} Entropy;

/* ---- A. The ramp ------------------------------------------------------------------------
 * A pair's number of full turns within L0 decides its fate. A pair that turns many times
 * (r ≥ β_fast) has seen every angle during pretraining and encodes fine local order: keep it.
 * A pair that does not complete one turn (r < β_slow) would meet new angles beyond L0: divide
 * its frequency by s, so that 40·L0 positions sweep the angles L0 positions used to. */
static void part_ramp(const Config *v3, const Rope *rope, const Rope *yarn) {
    int L0 = v3->original_max_position_embeddings;
    printf("A. The ramp: theta'_i / theta_i for each of the 32 rotary pairs\n");
    printf("   i   theta_i      wavelength   turns in L0   theta'/theta   treatment\n");
    int kept = 0, blended = 0, interpolated = 0, ramp_ok = 1, monotone = 1;
    double prev_ratio = 2.0;
    for (int i = 0; i < HALF; i++) {
        double th = rope->inv_freq[i], ratio = yarn->inv_freq[i] / th;
        double wavelength = 2 * PI / th, turns = L0 / wavelength;
        const char *what;
        int is_kept = ratio == 1.0, is_interp = fabs(ratio * v3->rope_factor - 1.0) < 1e-6;
        if (is_kept) what = "kept (extrapolated)", kept++;
        else if (is_interp) what = "interpolated (/40)", interpolated++;
        else what = "blended", blended++;
        printf("  %2d   %.4e   %10.1f   %10.3f    %.5f       %s\n", i, th, wavelength, turns, ratio, what);
        /* The rule in words: kept ⇔ at least β_fast turns, interpolated ⇔ under β_slow turns. */
        ramp_ok &= is_kept == (turns >= v3->beta_fast) && is_interp == (turns < v3->beta_slow);
        monotone &= ratio <= prev_ratio * (1 + 1e-6); /* the /40 plateau is flat up to FP32 rounding */
        prev_ratio = ratio;
    }
    printf("\n  %d pairs kept, %d blended, %d interpolated\n", kept, blended, interpolated);
    check(kept == 11 && blended == 12 && interpolated == 9,
          "pairs 0..10 keep theta, 11..22 blend, 23..31 are divided by 40 (low = 10, high = 23)");
    check(ramp_ok, "kept <=> the pair turns >= beta_fast = 32 times within L0; "
                   "interpolated <=> it turns < beta_slow = 1 time");
    check(monotone, "theta'/theta falls monotonically from 1 to 1/40 across the ramp");
}

/* ---- B. Angles never seen ----------------------------------------------------------------
 * Pretraining produced, for pair i, the angles p·θ_i for p < L0: all of [0, 2π) if the pair
 * turned at least once, else only [0, L0·θ_i). At position Lmax − 1 a pair is out of
 * distribution if it has not turned once within L0 and its angle passes L0·θ_i. */
static void part_unseen(const Config *v3, const Rope *rope, const Rope *yarn) {
    int L0 = v3->original_max_position_embeddings, Lmax = v3->max_position_embeddings;
    int unseen_plain = 0, unseen_yarn = 0;
    for (int i = 0; i < HALF; i++) {
        double seen = L0 * (double)rope->inv_freq[i];
        if (seen >= 2 * PI) continue;
        unseen_plain += (Lmax - 1) * (double)rope->inv_freq[i] > seen * (1 + 1e-5);
        unseen_yarn += (Lmax - 1) * (double)yarn->inv_freq[i] > seen * (1 + 1e-5);
    }
    printf("\nB. At position %d, pairs whose angle pretraining never produced: plain RoPE %d, YaRN %d\n", Lmax - 1,
           unseen_plain, unseen_yarn);
    check(unseen_plain == 9 && unseen_yarn == 0,
          "plain RoPE drives the 9 slowest pairs into unseen angles at 160K; YaRN's theta' keeps every pair in range");
}

/* ---- C. Attention entropy over a long context ---------------------------------------------
 * A toy head: HEADS random queries q (64-d rope part, N(0, 1)), and at every distance d behind
 * the query a key k = q + n (n ~ N(0, 1)): keys resemble the query, so RoPE's relative-position
 * signal q·R(d)q competes with the noise q·R(d)n, as in a head that looks for a repeated
 * pattern. The query sits at position NMAX−1 and the key at distance d at NMAX−1−d, rotated by
 * the library; a context of N keys is the distances 0..N−1 (RoPE depends on positions only
 * through their difference). Three heads are compared:
 *   plain:         θ_i,  scale 1/√192           — what pretraining used, now run past L0;
 *   YaRN θ':       θ'_i, scale 1/√192           — the frequencies alone;
 *   YaRN + mscale: θ'_i, scale 1/√192 · mscale² — DeepSeek-V3 (config.softmax_scale).
 * Entropy is in nats; a uniform distribution over N keys has ln N.
 *
 * toy_scores: the scores q·k at every distance d < NMAX, for plain RoPE (score[0]) and YaRN's θ'
 * (score[1]), each [HEADS][NMAX]. */
static void toy_scores(float *score[2], const Rope *rope, const Rope *yarn) {
    const Rope *ropes[2] = { rope, yarn };
    static float q[HEADS][DR], qrot[2][HEADS][DR];
    Rng rng;
    rng_seed(&rng, 4);
    for (int h = 0; h < HEADS; h++)
        for (int i = 0; i < DR; i++) q[h][i] = rng_normal(&rng);
    float cs[HALF], sn[HALF];
    for (int v = 0; v < 2; v++) {
        rope_cos_sin(cs, sn, NMAX - 1, ropes[v]);
        for (int h = 0; h < HEADS; h++) {
            for (int i = 0; i < DR; i++) qrot[v][h][i] = q[h][i];
            rope_forward(qrot[v][h], cs, sn, DR);
        }
    }
    for (int d = 0; d < NMAX; d++) {
        float k[HEADS][DR];
        for (int h = 0; h < HEADS; h++)
            for (int i = 0; i < DR; i++) k[h][i] = q[h][i] + rng_normal(&rng);
        for (int v = 0; v < 2; v++) {
            rope_cos_sin(cs, sn, NMAX - 1 - d, ropes[v]);
            for (int h = 0; h < HEADS; h++) {
                float kr[DR];
                for (int i = 0; i < DR; i++) kr[i] = k[h][i];
                rope_forward(kr, cs, sn, DR);
                double dot = 0;
                for (int i = 0; i < DR; i++) dot += (double)qrot[v][h][i] * kr[i];
                score[v][(size_t)h * NMAX + d] = (float)dot;
            }
        }
    }
}

/** Part C: entropy and far mass of the attention over N keys, for every N of Ns, from the scores. */
static void part_entropy(Entropy *out, float *score[2], const Config *v3) {
    double base_scale = 1.0 / sqrt((double)v3->qk_head_dim), v3_scale = v3->softmax_scale;
    printf("\nC. Attention entropy of a toy head (mean of %d heads), query at the end of a context of N keys\n", HEADS);
    printf("   softmax scale: 1/sqrt(%d) = %.5f; DeepSeek-V3's x mscale^2 = %.5f (x%.4f)\n", v3->qk_head_dim, base_scale,
           v3_scale, v3_scale / base_scale);
    printf("        N    ln N  | entropy: plain   YaRN theta'  YaRN+mscale | mass beyond L0: plain  theta'  +mscale\n");
    double(*H)[3] = out->H, (*far)[3] = out->far;
    for (int n = 0; n < NPOINTS; n++) {
        for (int v = 0; v < 3; v++) {
            H[n][v] = far[n][v] = 0;
            for (int h = 0; h < HEADS; h++) {
                double f, e = softmax_entropy(score[v == 0 ? 0 : 1] + (size_t)h * NMAX, Ns[n],
                                              v == 2 ? v3_scale : base_scale, v3->original_max_position_embeddings, &f);
                H[n][v] += e / HEADS, far[n][v] += f / HEADS;
            }
        }
        printf("  %7d  %5.2f  |          %6.3f   %6.3f       %6.3f      |             %5.3f   %5.3f   %5.3f\n", Ns[n],
               log(Ns[n]), H[n][0], H[n][1], H[n][2], far[n][0], far[n][1], far[n][2]);
    }
    int i4k = 2, i160k = NPOINTS - 1, sharper = 1;
    for (int n = 0; n < NPOINTS; n++) sharper &= H[n][2] < H[n][1];
    printf("\n  Entropy grows like ln N for every head: more keys, more diluted attention. Interpolating the slow\n"
           "  pairs flattens RoPE's distance profile, so theta' alone makes attention a little more diffuse\n"
           "  (+%.3f nats at 4K). mscale^2 multiplies every logit by %.3f and sharpens it again: at 160K the\n"
           "  entropy is %.2f nats with YaRN + mscale against %.2f with plain RoPE, where the 4K context had %.2f.\n",
           H[i4k][1] - H[i4k][0], v3_scale / base_scale, H[i160k][2], H[i160k][0], H[i4k][0]);
    check(H[i4k][1] > H[i4k][0], "within L0, theta' alone raises the entropy (the interpolated pairs blur distance)");
    check(sharper, "at every N, mscale^2 lowers the entropy below theta' alone");
    check(fabs(H[i160k][2] - H[i4k][0]) < fabs(H[i160k][0] - H[i4k][0]),
          "at 160K, YaRN + mscale stays closer to the 4K entropy than plain RoPE does");
}

/** The plot: the ramp (left) and the entropy curves (right), into OUT_DIR/04_yarn.png. */
static void plot(const char *out_dir, const Config *v3, const Rope *rope, const Rope *yarn, const Entropy *e) {
    int L0 = v3->original_max_position_embeddings;
    char png[4096];
    FILE *gp = plot_open(out_dir, "04_yarn", png, sizeof png);
    if (!gp) return;
    fprintf(gp, "set terminal pngcairo size 1300,520 font ',11'\nset output '%s'\nset multiplot layout 1,2\n", png);
    fprintf(gp, "$ramp << EOD\n");
    for (int i = 0; i < HALF; i++)
        fprintf(gp, "%d %g %g\n", i, yarn->inv_freq[i] / rope->inv_freq[i], L0 * rope->inv_freq[i] / (2 * PI));
    fprintf(gp, "EOD\n$ent << EOD\n");
    for (int n = 0; n < NPOINTS; n++) fprintf(gp, "%d %g %g %g\n", Ns[n], e->H[n][0], e->H[n][1], e->H[n][2]);
    fprintf(gp, "EOD\n");
    fprintf(gp, "set title 'YaRN ramp, DeepSeek-V3 (s = 40, L0 = 4096, beta 32/1)'\nset xlabel 'rotary pair i'\n"
                "set ylabel \"theta'_i / theta_i\"\nset y2label 'turns within L0'\nset logscale y2\nset y2tics\n"
                "set ytics nomirror\nset yrange [0:1.05]\nset xrange [0:31]\nset key bottom left\nset grid\n"
                "plot $ramp using 1:2 with linespoints pt 7 title \"theta'/theta\", "
                "$ramp using 1:3 axes x1y2 with linespoints pt 6 dt 2 title 'turns in L0 (right axis)', "
                "32 axes x1y2 with lines lc rgb 'dark-gray' dt 2 title 'beta fast = 32', "
                "1 axes x1y2 with lines lc rgb 'black' dt 2 title 'beta slow = 1'\n");
    fprintf(gp, "unset y2label\nunset y2tics\nunset logscale\nset autoscale y\n"
                "set title 'Attention entropy of a toy head vs context length'\nset xlabel 'keys in context N'\n"
                "set ylabel 'entropy (nats)'\nset logscale x 2\nset xrange [1024:163840]\nset key bottom right\n"
                "set arrow from %d, graph 0 to %d, graph 1 nohead dt 3\n"
                "set label 'L0' at %d, graph 0.95 offset 0.5,0\n"
                "plot $ent using 1:2 with linespoints pt 7 title 'plain RoPE', "
                "$ent using 1:3 with linespoints pt 5 title \"YaRN theta' only\", "
                "$ent using 1:4 with linespoints pt 9 title \"YaRN theta' + mscale^2 (DeepSeek-V3)\", "
                "%g with lines dt 2 lc rgb 'gray' title 'plain RoPE at N = 4096'\nunset multiplot\n",
            L0, L0, L0, e->H[2][0]);
    plot_close(gp, png);
}

int main(int argc, char **argv) {
    const char *out_dir = argc > 1 ? argv[1] : "build/notebooks";
    Config v3, plain;
    Err err;
    Rope yarn, rope;
    if (config_preset(&v3, "v3", &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    plain = v3;
    plain.has_yarn = 0; /* the same config without rope_scaling: θ_i unchanged */
    if (rope_init(&yarn, &v3, &err) || rope_init(&rope, &plain, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    printf("DeepSeek-V3: rope dim %d, base %.0f, original context L0 = %d, factor s = %.0f, beta_fast %.0f, "
           "beta_slow %.0f\n\n",
           v3.qk_rope_head_dim, v3.rope_theta, v3.original_max_position_embeddings, v3.rope_factor, v3.beta_fast,
           v3.beta_slow);
    part_ramp(&v3, &rope, &yarn);
    part_unseen(&v3, &rope, &yarn);
    float *score[2] = { malloc(sizeof(float) * (size_t)HEADS * NMAX), malloc(sizeof(float) * (size_t)HEADS * NMAX) };
    if (!score[0] || !score[1]) return fprintf(stderr, "out of memory\n"), 1;
    static Entropy ent;
    toy_scores(score, &rope, &yarn);
    part_entropy(&ent, score, &v3);
    plot(out_dir, &v3, &rope, &yarn, &ent);
    printf("\n%s\n", failures ? "SOME CLAIMS FAILED" : "OK: every claim above holds.");
    free(score[0]);
    free(score[1]);
    rope_free(&yarn);
    rope_free(&rope);
    return failures ? 1 : 0;
}
