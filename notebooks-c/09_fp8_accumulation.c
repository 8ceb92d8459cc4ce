/*
 * Notebook 9 — Why FP8 GEMMs need promotion (paper §3.3.2, Fig. 7b; docs/training.md).
 *
 * Run:  make notebooks
 *
 * The H800's tensor cores add FP8 products into an accumulator that keeps about 14 mantissa bits,
 * not FP32's 23. The paper measured a maximum relative error of nearly 2 % for K = 4096 and fixed
 * it by copying the partial sum into an FP32 register every N_C = 128 products. We repeat the
 * measurement with the accumulator model the trainer uses (ref/train/fp8_recipe.c,
 * fp8_emulated_gemm: each partial sum's mantissa cut to m bits, toward zero):
 *
 *   1. K = 4096 dot products of E4M3 operands (1×128 tiles, so quantization is already done and
 *      the exact answer of these very operands is known in double): error with and without promotion;
 *   2. the error as a function of the accumulator width and of the promotion interval N_C.
 *
 * Operands are |N(0,1)|: every product positive, the sum grows steadily and every cut loses in the
 * same direction — the case that accumulation precision decides. (Zero-mean operands cancel, and
 * their error relative to the small result is dominated by that cancellation; the second table's
 * last column shows them relative to Σ|a·b|.)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/rng.h"
#include "train/fp8_recipe.h"

enum { K = 4096, TRIALS = 64 };

/** Max and mean over the trials of |emulated − exact| / scale, for one accumulator setting. */
static void errors(const float *a, const float *b, const double *exact, const double *scale, int bits, int promote,
                   double *max, double *mean) {
    *max = 0, *mean = 0;
    for (int t = 0; t < TRIALS; t++) {
        float c;
        fp8_emulated_gemm(&c, a + (size_t)t * K, b + (size_t)t * K, 1, K, 1, bits, promote, 0);
        double rel = fabs((double)c - exact[t]) / scale[t];
        *max = fmax(*max, rel);
        *mean += rel / TRIALS;
    }
}

/** TRIALS pairs of K-vectors (|N(0,1)| if @p positive), quantized to E4M3 in 1×128 tiles, and their exact dots. */
static void operands(float *a, float *b, double *exact, double *scale, int positive, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < (size_t)TRIALS * K; i++) {
        a[i] = rng_normal(&r), b[i] = rng_normal(&r);
        if (positive) a[i] = fabsf(a[i]), b[i] = fabsf(b[i]);
    }
    fp8_quantize_tiles(a, NULL, a, TRIALS, K, 1, 128, FMT_E4M3, 0);
    fp8_quantize_tiles(b, NULL, b, TRIALS, K, 1, 128, FMT_E4M3, 0);
    for (int t = 0; t < TRIALS; t++) {
        double s = 0, m = 0;
        for (int k = 0; k < K; k++) {
            double p = (double)a[(size_t)t * K + k] * b[(size_t)t * K + k];
            s += p, m += fabs(p);
        }
        exact[t] = s;
        scale[t] = positive ? fabs(s) : m;
    }
}

int main(void) {
    float *a = malloc(sizeof(float) * TRIALS * K), *b = malloc(sizeof(float) * TRIALS * K);
    float *sa = malloc(sizeof(float) * TRIALS * K), *sb = malloc(sizeof(float) * TRIALS * K);
    double exact[TRIALS], scale[TRIALS], sexact[TRIALS], sscale[TRIALS], mx, mean, smx, smean;
    operands(a, b, exact, scale, 1, 1);
    operands(sa, sb, sexact, sscale, 0, 2);

    printf("1. K = %d dot products of E4M3 operands, %d trials, error relative to the exact sum of the same operands\n\n", K,
           TRIALS);
    printf("   accumulator                                   max rel. error   mean\n");
    errors(a, b, exact, scale, 14, 0, &mx, &mean);
    printf("   14 bits over all of K (no promotion)          %8.3f %%      %7.3f %%\n", 100 * mx, 100 * mean);
    double no_promotion = mx;
    errors(a, b, exact, scale, 14, 128, &mx, &mean);
    printf("   14 bits, promoted to FP32 every 128 (paper)   %8.3f %%      %7.3f %%\n", 100 * mx, 100 * mean);
    double promoted = mx;
    errors(a, b, exact, scale, 23, 0, &mx, &mean);
    printf("   FP32 (23 bits) over all of K                  %8.4f %%      %7.4f %%\n\n", 100 * mx, 100 * mean);

    printf("2. max rel. error by accumulator width (rows) and promotion interval N_C (columns; 0 = never)\n\n");
    static const int nc[] = { 0, 1024, 512, 256, 128, 64, 32 };
    int n_nc = (int)(sizeof nc / sizeof nc[0]);
    printf("   bits ");
    for (int j = 0; j < n_nc; j++) printf("  N_C=%-5d", nc[j]);
    printf("  | zero-mean, N_C=0 vs 128, / sum|ab|\n");
    for (int bits = 10; bits <= 23; bits += bits < 16 ? 1 : 7) {
        printf("   %4d ", bits);
        for (int j = 0; j < n_nc; j++) {
            errors(a, b, exact, scale, bits, nc[j], &mx, &mean);
            printf("  %8.4f%%", 100 * mx);
        }
        errors(sa, sb, sexact, sscale, bits, 0, &smx, &smean);
        errors(sa, sb, sexact, sscale, bits, 128, &mx, &mean);
        printf("  | %8.4f%% %8.4f%%\n", 100 * smx, 100 * mx);
    }
    printf("\nWithout promotion the error grows with K (every cut loses up to one unit of a partial sum that\n"
           "keeps growing); with it, each partial sum holds 128 products and the FP32 accumulator the rest.\n");
    free(a), free(b), free(sa), free(sb);
    /* The paper's point, checked: promotion cuts the error by more than 10x at 14 bits. */
    return promoted * 10 < no_promotion ? 0 : 1;
}
