/*
 * Notebook 7 — Multi-Token Prediction as a drafter: speculative decoding that changes nothing
 * (paper §2.2 and §5.4.3; docs/model.md §7.2–7.3; ref/generate/generate.c).
 *
 * Run:  make notebooks     (writes build/notebooks/07_mtp_speculative.png)
 *
 * DeepSeek-V3 trains one MTP module beside the main model: fed the main model's last hidden state
 * h_p and the embedding of the token x_{p+1}, it predicts x_{p+2}. At inference it becomes a cheap
 * drafter. After the main model has chosen x_{p+1}, the module guesses d ≈ x_{p+2}; one forward
 * of the main model over [x_{p+1}, d] then yields the distribution at p+1 (to judge d) and, if d
 * passes, the one at p+2 for free. One main-model pass, up to two tokens.
 *
 * Judging d keeps the output law exactly the main model's (Leviathan et al. 2023, arXiv
 * 2211.17192; Chen et al. 2023, arXiv 2302.01318). With p the main model's distribution for the
 * position and q the drafter's, d ~ q is accepted with probability min(1, p(d)/q(d)); if rejected,
 * the token is drawn from r = max(0, p − q) / Σ max(0, p − q). Then for every token y
 *
 *     P(y) = q(y) · min(1, p(y)/q(y))  +  P(reject) · r(y)
 *          = min(p(y), q(y))  +  (1 − Σ_z min(p(z), q(z))) · max(0, p(y) − q(y)) / Σ_z max(0, p(z) − q(z))
 *          = min(p(y), q(y))          +  max(0, p(y) − q(y))            (the two sums are both 1 − Σ min)
 *          = p(y).
 * Greedy decoding is the special case p, q one-hot: d is accepted iff it is the main model's argmax.
 *
 * We use models/kjv (an 8 M-parameter DeepSeek-V3-shaped model with its MTP module, trained by this
 * project on the King James Bible; models/kjv/README.md):
 *   A. greedy: speculative output == plain output, token for token; how often the draft is right;
 *   B. the algebra above on the real p and q of one position (model_forward, mtp_forward,
 *      sampler_probs), and a picture of it;
 *   C. sampling through the real generator (gen_next), with and without speculation: the joint law of
 *      the next two tokens (top-3 at temperature 1, 9 outcomes) against the exact law, chi-square.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "notebook.h"
#include "generate/generate.h"
#include "model/mtp.h"
#include "tokenizer/tokenizer.h"

/** Generates n tokens after @p prompt with @p draft MTP drafts per step (0: plain). Returns how many
 *  tokens each gen_next call produced in @p per_step (its count in *steps) and the session's stats. */
static void generate(const Model *m, Sampler *s, int draft, const int *prompt, int np, int n, int *out, int *per_step,
                     int *steps, GenStats *stats) {
    Generator g;
    Err err;
    if (gen_init(&g, m, s, np + n + 8, draft, 64, ATTN_ABSORB, FP8_DEQUANT, &err) || gen_feed(&g, prompt, np, &err))
        die(err.msg);
    int got = 0, buf[8], k;
    *steps = 0;
    while (got < n) {
        if (gen_next(&g, buf, &k, &err)) die(err.msg);
        if (per_step) per_step[*steps] = k;
        (*steps)++;
        for (int i = 0; i < k && got < n; i++) out[got++] = buf[i];
    }
    *stats = g.stats;
    gen_free(&g);
}

/** Chi-square statistic of observed counts against probabilities, pooling cells expected below 5;
 *  *dof receives the degrees of freedom. */
static double chi_square(const int *obs, const double *prob, int cells, int N, int *dof) {
    double chi = 0, pool_o = 0, pool_e = 0;
    int used = 0;
    for (int c = 0; c < cells; c++) {
        double e = prob[c] * N;
        if (e < 5) {
            pool_o += obs[c], pool_e += e;
            continue;
        }
        chi += (obs[c] - e) * (obs[c] - e) / e, used++;
    }
    if (pool_e > 0) chi += (pool_o - pool_e) * (pool_o - pool_e) / pool_e, used++;
    *dof = used - 1;
    return chi;
}

/** 99.9 % point of the chi-square law with k degrees of freedom (Wilson–Hilferty). */
static double chi_square_999(int k) {
    double a = 2.0 / (9.0 * k), z = 3.0902;
    return k * pow(1 - a + z * sqrt(a), 3);
}

/** A token's text for a plot label: printable ASCII, spaces shown as '_'. */
static void label(const Tokenizer *tok, int id, char *out, size_t cap) {
    char *text = NULL;
    size_t len = 0, o = 0;
    Err err;
    if (tokenizer_decode(tok, &id, 1, &text, &len, &err)) len = 0;
    for (size_t i = 0; i < len && o + 1 < cap; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch == ' ') out[o++] = '_';
        else if (ch > ' ' && ch < 127 && ch != '"' && ch != '\\' && ch != '\'' && ch != '^' && ch != '_' && ch != '@')
            out[o++] = (char)ch;
    }
    out[o] = 0;
    free(text);
}

/** The prompt of parts A and B. */
static const char *const PROMPT = "And God said, Let there be light: and there was light. And God saw the light,";

/** BOS followed by the ids of @p text (malloc'd); their count in *n. */
static int *encode_prompt(const Tokenizer *tok, const char *text, int *n) {
    int *ids = NULL, n_ids = 0;
    Err err;
    if (tokenizer_encode(tok, text, strlen(text), &ids, &n_ids, &err)) die(err.msg);
    int *prompt = malloc(sizeof(int) * (size_t)(n_ids + 1));
    if (!prompt) die("out of memory");
    prompt[0] = tokenizer_bos_id(tok);
    memcpy(prompt + 1, ids, sizeof(int) * (size_t)n_ids);
    free(ids);
    *n = n_ids + 1;
    return prompt;
}

/* ---- A. Greedy: drafts, acceptance, and identical output ------------------------------------ */
static void part_greedy(const Model *m, const Tokenizer *tok) {
    const char *text = PROMPT;
    int np, *prompt = encode_prompt(tok, text, &np);
    Err err;
    enum { NGEN = 64 };
    int plain[NGEN], spec[3][NGEN], per_step[NGEN], steps1, steps_other;
    GenStats st_plain, st[3];
    Sampler greedy;
    if (sampler_init(&greedy, 0.0f, 0, 1.0f, 1, &err)) die(err.msg);
    generate(m, &greedy, 0, prompt, np, NGEN, plain, NULL, &steps_other, &st_plain);
    for (int d = 1; d <= 3; d++)
        generate(m, &greedy, d, prompt, np, NGEN, spec[d - 1], d == 1 ? per_step : NULL, d == 1 ? &steps1 : &steps_other,
                 &st[d - 1]);
    printf("A. Greedy decoding of %d tokens after \"%s\"\n\n", NGEN, text);
    /* Print the draft-1 run step by step: a step that returned 2 tokens had its draft accepted
     * ([draft] then the bonus token); a step that returned 1 had it rejected (the correction). */
    printf("   speculative output, [accepted draft] marked:\n   ");
    for (int s = 0, at = 0, col = 3; s < steps1 && at < NGEN; s++)
        for (int i = 0; i < per_step[s] && at < NGEN; i++, at++) {
            char *piece = NULL;
            size_t len;
            if (tokenizer_decode(tok, &spec[0][at], 1, &piece, &len, &err)) die(err.msg);
            int drafted = per_step[s] == 2 && i == 0;
            col += (int)len + 2 * drafted;
            if (col > 100 && piece[0] == ' ') printf("\n  "), col = 3 + (int)len;
            printf(drafted ? "[%s]" : "%s", piece);
            free(piece);
        }
    printf("\n\n   drafts/step   main-model passes   tokens/pass   drafts accepted\n");
    printf("   plain (0)     %5lld               %.2f\n", (long long)st_plain.steps, (double)NGEN / st_plain.steps);
    int same = 1;
    for (int d = 1; d <= 3; d++) {
        same &= !memcmp(spec[d - 1], plain, sizeof plain);
        printf("   %d             %5lld               %.2f          %lld/%lld = %.1f %%\n", d, (long long)st[d - 1].steps,
               (double)NGEN / st[d - 1].steps, (long long)st[d - 1].accepted, (long long)st[d - 1].drafted,
               100.0 * st[d - 1].accepted / st[d - 1].drafted);
    }
    double acc1 = (double)st[0].accepted / st[0].drafted;
    printf("\n   The paper reports 85-90 %% acceptance of the second token for DeepSeek-V3 and 1.8x tokens per\n"
           "   second (§5.4.3). A pass over 2 tokens costs little more than one when decoding is memory-bound,\n"
           "   so tokens per pass is the speed-up's upper bound. Recycling the module's output for a 2nd and\n"
           "   3rd draft (what it was not trained for) is accepted less often. Greedy decoding of a model this\n"
           "   small falls into a loop, which is easy to draft; part C's sampled acceptance is the fairer figure.\n");
    check(same, "greedy speculative output equals plain greedy output, token for token, for 1, 2 and 3 drafts");
    check(acc1 > 0.5 && (double)NGEN / st[0].steps > 1.5,
          "the MTP draft is accepted more than half the time: over 1.5 tokens per main-model pass");
    free(prompt);
}

/** The plot of part B's position: for each of the tokens @p top, the draft's q (left bar) and the
 *  speculative output law (right bar) stacked from its two parts, accepted drafts min(p, q) and
 *  residual draws max(0, p − q); the main model's p (dots) sits on top of the stack. */
static void plot_position(const char *out_dir, const Tokenizer *tok, const int *top, int ntop, const float *p,
                          const float *q, const float *law, double beta) {
    char name[64];
    char png[4096];
    FILE *gp = plot_open(out_dir, "07_mtp_speculative", png, sizeof png);
    if (!gp) return;
    fprintf(gp, "set terminal pngcairo size 1100,560 font ',11'\nset output '%s'\n$d << EOD\n", png);
    for (int k = 0; k < ntop; k++) {
        int y = top[k];
        label(tok, y, name, sizeof name);
        fprintf(gp, "%d \"%s\" %g %g %g %g\n", k, name[0] ? name : "?", q[y], fmin(p[y], q[y]), law[y], p[y]);
    }
    fprintf(gp, "EOD\nset title \"Speculative sampling at one position of models/kjv: P(accept) = %.3f\"\n"
                "set ylabel 'probability'\nset style fill solid 0.8 border -1\nset boxwidth 0.35\nset grid ytics\n"
                "set xtics rotate by -30 noenhanced\nset key top right\nset yrange [0:*]\n"
                "plot $d using ($1-0.19):3:xtic(2) with boxes lc rgb '#9aa0a6' title 'q: MTP draft', "
                "$d using ($1+0.19):5 with boxes lc rgb '#e8a33d' title 'max(0, p - q): drawn after a rejection', "
                "$d using ($1+0.19):4 with boxes lc rgb '#3b7dd8' title 'min(p, q): accepted drafts', "
                "$d using ($1+0.19):6 with points pt 7 ps 1.3 lc rgb 'black' title 'p: main model'\n",
            beta);
    plot_close(gp, png);
}

/* ---- B. The acceptance algebra on the real p and q ---------------------------------------------
 * Position L = np: the main model over the prompt gives p_L; x_L = its argmax. The MTP module, fed
 * h_{L−1} (the main model's post-norm hidden) and x_L, drafts q for x_{L+1}; the main model over
 * [x_L] gives p for x_{L+1}. Both at temperature 1 through the sampler's own sampler_probs. */
static void part_algebra(const Model *m, const Tokenizer *tok, const int *prompt, int np, const char *out_dir) {
    const Config *c = &m->config;
    int V = c->vocab_size, D = c->hidden_size;
    Err err;
    Sampler t1;
    if (sampler_init(&t1, 1.0f, 0, 1.0f, 7, &err)) die(err.msg);
    RunState rs;
    KVCache kv, mkv;
    if (runstate_init(&rs, m, np + 1, np + 1, ATTN_ABSORB, FP8_DEQUANT, &err) ||
        kvcache_init(&kv, c, ATTN_ABSORB, c->num_hidden_layers, np + 1, &err) ||
        kvcache_init(&mkv, c, ATTN_ABSORB, 1, np + 1, &err))
        die(err.msg);
    float *logits = malloc(sizeof(float) * (size_t)V), *normed = malloc(sizeof(float) * (size_t)np * D);
    float *p = malloc(sizeof(float) * (size_t)V), *q = malloc(sizeof(float) * (size_t)V);
    int *next = malloc(sizeof(int) * (size_t)np);
    SamplerCand *cand = malloc(sizeof(SamplerCand) * (size_t)V);
    if (model_forward(m, &rs, &kv, prompt, np, logits, 1, NULL, normed, &err)) die(err.msg);
    int xL = sampler_argmax(logits, V);
    for (int i = 0; i + 1 < np; i++) next[i] = prompt[i + 1]; /* row i pairs h_i with x_{i+1} */
    next[np - 1] = xL;
    if (mtp_forward(m, 0, &rs, &mkv, next, normed, np, logits, 1, NULL, &err)) die(err.msg);
    sampler_probs(&t1, logits, V, q, cand);
    if (model_forward(m, &rs, &kv, &xL, 1, logits, 1, NULL, NULL, &err)) die(err.msg);
    sampler_probs(&t1, logits, V, p, cand);
    double beta = 0, resid = 0, maxdiff = 0, sum_law = 0;
    for (int y = 0; y < V; y++) beta += fmin(p[y], q[y]), resid += fmax(0.0, (double)p[y] - q[y]);
    float *law = malloc(sizeof(float) * (size_t)V);
    for (int y = 0; y < V; y++) {
        double accepted = q[y] > 0 ? q[y] * fmin(1.0, (double)p[y] / q[y]) : 0.0; /* d = y drawn and kept */
        double rejected = (1 - beta) * fmax(0.0, (double)p[y] - q[y]) / resid;   /* rejected, then y from r */
        law[y] = (float)(accepted + rejected);
        sum_law += law[y];
        maxdiff = fmax(maxdiff, fabs(law[y] - (double)p[y]));
    }
    char name[64];
    label(tok, xL, name, sizeof name);
    printf("\nB. One position: after the prompt and its greedy next token '%s', the distribution of the token\n"
           "   after that\n", name);
    printf("   P(accept) = sum min(p, q) = %.4f = 1 - TV(p, q); the residual holds the other %.4f\n", beta, resid);
    printf("   max_y |P_speculative(y) - p(y)| = %.2e over %d tokens (sum of P = %.7f)\n", maxdiff, V, sum_law);
    enum { TOP = 10 };
    int top[TOP];
    for (int k = 0; k < TOP; k++) { /* the TOP tokens most likely under p or q */
        int best = -1;
        for (int y = 0; y < V; y++) {
            int taken = 0;
            for (int j = 0; j < k; j++) taken |= top[j] == y;
            if (!taken && (best < 0 || fmax(p[y], q[y]) > fmax(p[best], q[best]))) best = y;
        }
        top[k] = best;
    }
    printf("      token            p (main)   q (draft)   min(p,q)   max(0,p-q)   P_speculative\n");
    for (int k = 0; k < TOP; k++) {
        int y = top[k];
        label(tok, y, name, sizeof name);
        printf("      %-14s   %.4f     %.4f      %.4f     %.4f       %.4f\n", name, p[y], q[y], fmin(p[y], q[y]),
               fmax(0.0, (double)p[y] - q[y]), law[y]);
    }
    check(maxdiff < 1e-6, "the speculative step's output law equals the main model's distribution p (to FP32 rounding)");
    plot_position(out_dir, tok, top, TOP, p, q, law, beta);
    free(logits), free(normed), free(p), free(q), free(next), free(cand), free(law);
    kvcache_free(&kv);
    kvcache_free(&mkv);
    runstate_free(&rs);
}

/* ---- C. The real generator, sampling -------------------------------------------------------------
 * N sessions with plain sampling and N with one MTP draft per step, all at temperature 1 and
 * top-3 (so that the next two tokens have 9 possible outcomes), share one sampler PRNG. The first
 * token after the prompt comes from the prefill's logits, the second from a speculative step
 * (draft, verify, accept or resample). The exact joint law comes from the main model alone. */
static void part_sampling(const Model *m, const Tokenizer *tok) {
    enum { TOPK = 3, N = 200, CELLS = TOPK * TOPK };
    const char *text_c = "And he said";
    int npc, *pc = encode_prompt(tok, text_c, &npc); /* a short prompt: every sample prefills it again */
    const Config *c = &m->config;
    int V = c->vocab_size;
    Err err;
    RunState rs;
    KVCache kv;
    if (runstate_init(&rs, m, npc, npc + 1, ATTN_ABSORB, FP8_DEQUANT, &err) ||
        kvcache_init(&kv, c, ATTN_ABSORB, c->num_hidden_layers, npc + 1, &err))
        die(err.msg);
    float *logits = malloc(sizeof(float) * (size_t)V), *q = malloc(sizeof(float) * (size_t)V);
    SamplerCand *cand = malloc(sizeof(SamplerCand) * (size_t)V);
    Sampler s3;
    if (sampler_init(&s3, 1.0f, TOPK, 1.0f, 11, &err)) die(err.msg);
    double joint[CELLS];
    int first[TOPK], second[TOPK][TOPK];
    float *pf = malloc(sizeof(float) * (size_t)V);
    /* The prompt, then each first token in turn at position npc. */
    if (model_forward(m, &rs, &kv, pc, npc, logits, 1, NULL, NULL, &err)) die(err.msg);
    sampler_probs(&s3, logits, V, pf, cand);
    for (int i = 0, n = 0; i < V; i++)
        if (pf[i] > 0) first[n++] = i; /* the top-3 ids, ascending */
    for (int a = 0; a < TOPK; a++) {
        kv.len = npc; /* position npc is rewritten before it is read: a rollback is just this */
        if (model_forward(m, &rs, &kv, &first[a], 1, logits, 1, NULL, NULL, &err)) die(err.msg);
        sampler_probs(&s3, logits, V, q, cand);
        for (int i = 0, n = 0; i < V; i++)
            if (q[i] > 0) second[a][n] = i, joint[a * TOPK + n++] = (double)pf[first[a]] * q[i];
    }
    int obs[2][CELLS] = { { 0 } }, outside = 0, pair[2], dummy_steps;
    GenStats gs[2] = { { 0 } }, one;
    for (int mode = 0; mode < 2; mode++)
        for (int r = 0; r < N; r++) {
            generate(m, &s3, mode, pc, npc, 2, pair, NULL, &dummy_steps, &one);
            gs[mode].drafted += one.drafted, gs[mode].accepted += one.accepted;
            int cell = -1;
            for (int a = 0; a < TOPK; a++)
                for (int b = 0; b < TOPK; b++)
                    if (pair[0] == first[a] && pair[1] == second[a][b]) cell = a * TOPK + b;
            if (cell < 0) outside++;
            else obs[mode][cell]++;
        }
    int dof[2];
    double chi[2] = { chi_square(obs[0], joint, CELLS, N, &dof[0]), chi_square(obs[1], joint, CELLS, N, &dof[1]) };
    printf("\nC. The two tokens after \"%s\", sampled %d times each way (temperature 1, top-%d): observed vs exact\n",
           text_c, N, TOPK);
    printf("      first      second        exact    plain   speculative\n");
    for (int a = 0; a < TOPK; a++)
        for (int b = 0; b < TOPK; b++) {
            char l1[64], l2[64];
            label(tok, first[a], l1, sizeof l1);
            label(tok, second[a][b], l2, sizeof l2);
            printf("      %-10s %-12s %6.1f   %5d    %5d\n", l1, l2, joint[a * TOPK + b] * N, obs[0][a * TOPK + b],
                   obs[1][a * TOPK + b]);
        }
    double crit[2] = { chi_square_999(dof[0]), chi_square_999(dof[1]) };
    printf("   chi-square: plain %.1f, speculative %.1f (dof %d and %d; 99.9 %% points %.1f, %.1f)\n", chi[0], chi[1],
           dof[0], dof[1], crit[0], crit[1]);
    printf("   speculative sessions: %lld of %lld drafts accepted (%.1f %%) — and still the same law\n",
           (long long)gs[1].accepted, (long long)gs[1].drafted, 100.0 * gs[1].accepted / gs[1].drafted);
    printf("   (tests/test_speculative.c runs the same test with thousands of samples on a small random model)\n");
    check(outside == 0, "every sampled pair lies in the top-3 x top-3 support");
    check(chi[0] < crit[0] && chi[1] < crit[1],
          "plain and speculative sampling both follow the exact law of the main model (chi-square, 99.9 %)");
    check(gs[1].accepted > 0 && gs[1].accepted < gs[1].drafted, "the sampled drafts were both accepted and rejected");
    free(pc), free(logits), free(q), free(pf), free(cand);
    kvcache_free(&kv);
    runstate_free(&rs);
}

int main(int argc, char **argv) {
    const char *out_dir = argc > 1 ? argv[1] : "build/notebooks";
    Model m;
    Tokenizer *tok = NULL;
    Err err;
    if (model_load(&m, "models/kjv", NULL, &err) || tokenizer_load(&tok, "models/kjv", &err)) die(err.msg);
    const Config *c = &m.config;
    printf("models/kjv: %d layers, hidden %d, vocab %d, %d MTP module(s)\n\n", c->num_hidden_layers, c->hidden_size,
           c->vocab_size, m.w.n_mtp);
    part_greedy(&m, tok);
    int np, *prompt = encode_prompt(tok, PROMPT, &np);
    part_algebra(&m, tok, prompt, np, out_dir);
    part_sampling(&m, tok);
    printf("\n%s\n", failures ? "SOME CLAIMS FAILED" : "OK: every claim above holds.");
    free(prompt);
    tokenizer_free(tok);
    model_free(&m);
    return failures ? 1 : 0;
}
