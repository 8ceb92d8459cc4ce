/**
 * @file notebook.h
 * @brief What every notebook shares: its claims, checked and counted; a setup failure; its plot.
 *
 * A notebook prints its claims as it proves them (`[ok]` or `[FAILED]`), exits non-zero when one
 * fails (make test runs every notebook), and draws one PNG with gnuplot into the directory it is
 * given. Header-only, so that each notebook stays one file linked against libdsv3.a alone.
 */
#ifndef DSV3_NOTEBOOK_H
#define DSV3_NOTEBOOK_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/** Claims that did not hold so far. */
static int failures = 0;

/** Prints a claim and whether it holds; a false claim makes the notebook exit non-zero. */
static inline void check(int ok, const char *claim) {
    printf("  [%s] %s\n", ok ? "ok" : "FAILED", claim);
    failures += !ok;
}

/** A setup failure (a file that cannot be read, no memory): the notebook cannot make its point. */
static inline void die(const char *msg) {
    fprintf(stderr, "%s\n", msg);
    exit(1);
}

/** Starts gnuplot for OUT_DIR/NAME.png (the path into @p png); NULL (a failed claim) when it cannot run. */
static inline FILE *plot_open(const char *out_dir, const char *name, char *png, size_t cap) {
    snprintf(png, cap, "%s/%s.png", out_dir, name);
    FILE *gp = popen("gnuplot", "w");
    if (!gp) check(0, "gnuplot runs");
    return gp;
}

/** Ends gnuplot and checks that @p png was written. */
static inline void plot_close(FILE *gp, const char *png) {
    struct stat st;
    check(pclose(gp) == 0 && stat(png, &st) == 0 && st.st_size > 0, "the plot was written");
    printf("\n  plot: %s\n", png);
}

#endif
