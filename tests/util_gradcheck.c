/**
 * @file util_gradcheck.c
 * @brief Implementation of util_gradcheck.h.
 */
#include "util_gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/rng.h"

GradCheck gradcheck(const char *name, float *p, const float *an, size_t n, int samples, const GradFn *f, double h,
                    double rtol, double atol_frac, uint64_t seed) {
    GradCheck r = { 0, 0, 0.0, 0.0, 0.0 };
    double an_max = 0.0;
    for (size_t i = 0; i < n; i++) an_max = fmax(an_max, fabs(an[i]));
    double atol = atol_frac * an_max;
    Rng rng;
    rng_seed(&rng, seed);
    size_t count = n <= (size_t)samples ? n : (size_t)samples;
    double dot = 0.0, nf = 0.0, na = 0.0;
    for (size_t k = 0; k < count; k++) {
        size_t i = n <= (size_t)samples ? k : (size_t)(rng_uniform_double(&rng) * (double)n);
        float p0 = p[i];
        double step = h * fmax(1.0, fabs(p0));
        float pp = (float)(p0 + step), pm = (float)(p0 - step);
        p[i] = pp;
        double lp = f->loss(f->ctx);
        int same = !f->same_routing || f->same_routing(f->ctx);
        p[i] = pm;
        double lm = f->loss(f->ctx);
        same = same && (!f->same_routing || f->same_routing(f->ctx));
        p[i] = p0;
        if (!same) {
            r.skipped++;
            continue;
        }
        double fd = (lp - lm) / ((double)pp - (double)pm), a = an[i];
        double tol = atol + rtol * fmax(fabs(fd), fabs(a));
        double ratio = tol > 0 ? fabs(fd - a) / tol : (fd == a ? 0.0 : INFINITY);
        if (ratio > r.worst) r.worst = ratio;
        if (ratio > 1.0 || getenv("GC_VERBOSE")) printf("      %s[%zu]: fd %.9g analytic %.9g\n", name, i, fd, a);
        dot += fd * a, nf += fd * fd, na += a * a;
        r.an_max = fmax(r.an_max, fabs(a));
        r.checked++;
    }
    r.cosine = nf > 0 && na > 0 ? dot / sqrt(nf * na) : (nf == na ? 1.0 : 0.0);
    printf("    %-40s %4d checked %3d skipped  worst err/tol %.3f  cosine %.8f  max|g| %.3g\n", name, r.checked, r.skipped,
           r.worst, r.cosine, an_max);
    return r;
}

int gradcheck_passed(const GradCheck *g) {
    return g->checked > 0 && g->skipped * 10 <= g->checked + g->skipped && g->an_max > 0.0 && g->worst <= 1.0 &&
           g->cosine >= 0.9999;
}
