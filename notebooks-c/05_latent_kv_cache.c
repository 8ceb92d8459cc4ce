/*
 * Notebook 5 — The latent KV cache: what MLA saves, and why the saving is free
 * (paper §2.1.1 eqs. 1–11; docs/model.md §3.2–3.3).
 *
 * Run:  make notebooks     (writes build/notebooks/05_latent_kv_cache.png)
 *
 * Decoding one token reads the whole KV cache of its sequence from memory, at every layer. Its
 * size per token decides how long a context fits on a GPU and how fast a token can be produced.
 * Multi-head Latent Attention caches, per token and layer, one 512-d latent c_kv and one shared
 * 64-d RoPE key k_pe — nothing per head. The keys and values of the 128 heads are linear images of
 * c_kv (W_UK, W_UV in kv_b_proj), so they can be absorbed into the query and the output instead of
 * being materialized:
 *
 *     q_nope_h · (W_UK[h] c_kv) = (W_UK[h]ᵀ q_nope_h) · c_kv        (scores against the latent)
 *     Σ_t P(t) W_UV[h] c_kv(t)  = W_UV[h] Σ_t P(t) c_kv(t)          (values after the sum)
 *
 * Part A counts the bytes for DeepSeek-V3's shape (config_preset "v3") with the reference's own
 * kvcache_floats_per_token / kvcache_init, against the multi-head attention (MHA) the latent
 * replaces and a grouped-query attention (GQA) with 8 KV heads. Part B runs golden/official-tiny (a
 * real checkpoint whose logits DeepSeek's own code computed) through both of ref/model/mla.c's
 * forms and checks that they compute the same function.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "notebook.h"
#include "model/ckpt.h"
#include "model/model.h"

/** max|a−b| / max|b| over n values: the project's way of comparing two float arrays. */
static double max_rel_diff(const float *a, const float *b, size_t n) {
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i])), m = fmax(m, fabs((double)b[i]));
    return m > 0 ? d / m : d;
}

/** Rows of V logits whose argmax agrees. */
static int argmax_agree(const float *a, const float *b, int rows, int V) {
    int same = 0;
    for (int r = 0; r < rows; r++) {
        int ia = 0, ib = 0;
        for (int v = 1; v < V; v++) {
            if (a[r * V + v] > a[r * V + ia]) ia = v;
            if (b[r * V + v] > b[r * V + ib]) ib = v;
        }
        same += ia == ib;
    }
    return same;
}

/** Logits of all T positions of @p ids: a prefill of the first @p first tokens, then one token at a
 *  time — the second half decodes against the cache, the way generation does. */
static float *run(const Model *m, const int *ids, int T, int first, AttnMode attn, size_t *cache_bytes) {
    const Config *c = &m->config;
    RunState s;
    KVCache kv;
    Err err;
    float *logits = malloc(sizeof(float) * (size_t)T * (size_t)c->vocab_size);
    if (!logits || runstate_init(&s, m, T, T, attn, FP8_DEQUANT, &err) ||
        kvcache_init(&kv, c, attn, c->num_hidden_layers, T, &err))
        die("run: out of memory for the logits, the run state or the cache");
    int rc = model_forward(m, &s, &kv, ids, first, logits, first, NULL, NULL, &err);
    for (int p = first; p < T && rc == 0; p++)
        rc = model_forward(m, &s, &kv, ids + p, 1, logits + (size_t)p * c->vocab_size, 1, NULL, NULL, &err);
    if (rc) die(err.msg);
    *cache_bytes = kv.bytes;
    kvcache_free(&kv);
    runstate_free(&s);
    return logits;
}

/* Context lengths of part A's table and plot. */
enum { NCTX = 6 };
static const int ctx[NCTX] = { 4096, 8192, 32768, 65536, 131072, 163840 };

/* ---- A. Bytes per token for DeepSeek-V3 ----------------------------------------------------
 * Values per token and layer:
 *   MLA (absorbed cache):   c_kv 512 + k_pe 64                      =    576
 *   MHA (naive cache):      128 heads × (k 128+64 + v 128)          = 40 960
 *   GQA, 8 KV heads:        8 × (k 192 + v 128)                     =  2 560
 * DeepSeek's inference code keeps its cache in BF16 (2 bytes a value); the reference keeps FP32. */
static void part_bytes(double gib[][3]) {
    Err err;
    Config v3;
    if (config_preset(&v3, "v3", &err)) die(err.msg);
    int L = v3.num_hidden_layers, H = v3.num_attention_heads, Dqk = v3.qk_head_dim, Dv = v3.v_head_dim;
    int64_t mla = kvcache_floats_per_token(&v3, ATTN_ABSORB), mha = kvcache_floats_per_token(&v3, ATTN_NAIVE);
    enum { GQA_GROUPS = 8, BF16 = 2 };
    int64_t gqa = (int64_t)GQA_GROUPS * (Dqk + Dv);
    printf("A. DeepSeek-V3: %d layers, %d heads, k head %d (nope %d + rope %d), v head %d, latent %d + rope key %d\n\n",
           L, H, Dqk, v3.qk_nope_head_dim, v3.qk_rope_head_dim, Dv, v3.kv_lora_rank, v3.qk_rope_head_dim);
    printf("   cache           values/token/layer   BF16 bytes/token (%d layers)   vs MLA\n", L);
    const char *names[3] = { "MHA (128 heads)", "GQA (8 groups)", "MLA (latent)" };
    int64_t per_layer[3] = { mha, gqa, mla };
    for (int k = 0; k < 3; k++)
        printf("   %-16s %10lld            %12lld (%7.1f KiB)        %5.1fx\n", names[k], (long long)per_layer[k],
               (long long)(per_layer[k] * BF16 * L), per_layer[k] * BF16 * L / 1024.0, (double)per_layer[k] / mla);
    check(mla == v3.kv_lora_rank + v3.qk_rope_head_dim && mha == (int64_t)H * (Dqk + Dv),
          "kvcache_floats_per_token: MLA caches c_kv + k_pe, the naive form every head's k and v");
    check(mla * BF16 * L == 70272 && mha * BF16 * L == 4997120,
          "one token of context costs 70 272 bytes with MLA against 4 997 120 with MHA (71x)");
    /* The DeepSeek-V2 paper (arXiv 2405.04434, Table 1) puts it as a GQA group count: MLA's 576
     * values are what GQA with 576 / (2 · 128) = 2.25 groups of 128-d keys and values would cache. */
    printf("\n   MLA caches as much as GQA with %.2f groups of %d-d keys and values would\n"
           "   (DeepSeek-V2 paper, arXiv 2405.04434, Table 1).\n",
           (double)mla / (2.0 * Dv), Dv);

    /* The reference's allocator agrees: kvcache_init for all 61 layers and 16 positions. */
    enum { POS = 16 };
    KVCache kv_mla, kv_mha;
    if (kvcache_init(&kv_mla, &v3, ATTN_ABSORB, L, POS, &err) || kvcache_init(&kv_mha, &v3, ATTN_NAIVE, L, POS, &err))
        die(err.msg);
    printf("   kvcache_init, %d positions x %d layers (FP32): absorb %zu bytes, naive %zu bytes\n", POS, L, kv_mla.bytes,
           kv_mha.bytes);
    check(kv_mla.bytes == (size_t)(mla * L * POS * 4) && kv_mha.bytes == (size_t)(mha * L * POS * 4),
          "the reference allocates exactly those sizes (x2 for FP32)");
    kvcache_free(&kv_mla);
    kvcache_free(&kv_mha);

    printf("\n   one sequence's cache (BF16), GiB:\n      context      MHA      GQA-8      MLA\n");
    for (int i = 0; i < NCTX; i++) {
        for (int k = 0; k < 3; k++) gib[i][k] = (double)per_layer[k] * BF16 * L * ctx[i] / (1024.0 * 1024 * 1024);
        printf("      %7d  %7.1f  %7.2f  %7.3f\n", ctx[i], gib[i][0], gib[i][1], gib[i][2]);
    }
    printf("\n   At 128K tokens MHA would need %.0f GiB for ONE sequence — several 80 GiB GPUs; MLA needs %.1f GiB.\n",
           gib[4][0], gib[4][2]);
    check(gib[4][0] > 80 && gib[4][2] < 10,
          "a 128K-token sequence: MHA's cache exceeds an 80 GiB GPU, MLA's is under 10 GiB");

    /* What absorption costs instead: per cached position and head, the absorbed form multiplies
     * 512 + 64 values for the score and 512 for the value sum (1 088 multiply-adds), the naive form
     * 192 + 128 = 320. Decoding is limited by memory, not arithmetic, so reading 71x fewer bytes
     * for 3.4x more multiply-adds is the trade the official inference code makes by default. */
    int64_t mac_absorb = v3.kv_lora_rank + v3.qk_rope_head_dim + v3.kv_lora_rank, mac_naive = Dqk + Dv;
    printf("   The price: multiply-adds per cached position and head, absorbed %lld vs naive %lld (%.1fx).\n",
           (long long)mac_absorb, (long long)mac_naive, (double)mac_absorb / mac_naive);
}

/* ---- B. Naive == absorbed, on a real checkpoint ---------------------------------------------
 * golden/official-tiny: 4 layers in V3's layout (latent 64 + rope 16, 4 heads of k 48, v 32).
 * Its 40 ids go through model_forward twice, once per MLA form: the first 20 as one prefill,
 * then 20 single-token decode steps against the cache. */
static void part_equivalence(void) {
    Err err;
    Model m;
    if (model_load(&m, "golden/official-tiny", NULL, &err)) die(err.msg);
    const Config *c = &m.config;
    enum { T = 40, FIRST = 20 };
    int ids[T], n = 0, V = c->vocab_size;
    FILE *f = fopen("golden/official-tiny/ids.json", "r");
    if (!f) die("golden/official-tiny/ids.json: cannot open");
    int ch;
    while (n < T && (ch = fgetc(f)) != EOF) /* a JSON array of integers: read the digits */
        if (ch >= '0' && ch <= '9') {
            ungetc(ch, f);
            if (fscanf(f, "%d", &ids[n]) == 1) n++;
        }
    fclose(f);
    float *official = malloc(sizeof(float) * T * (size_t)V);
    f = fopen("golden/official-tiny/logits.f32", "rb");
    int have = f && official && fread(official, sizeof(float), (size_t)T * V, f) == (size_t)T * V;
    if (f) fclose(f);
    if (n != T || !have) die("golden/official-tiny: ids.json or logits.f32 unreadable");

    size_t bytes_absorb, bytes_naive;
    float *absorb = run(&m, ids, T, FIRST, ATTN_ABSORB, &bytes_absorb);
    float *naive = run(&m, ids, T, FIRST, ATTN_NAIVE, &bytes_naive);
    double rel = max_rel_diff(absorb, naive, (size_t)T * V);
    double rel_a = max_rel_diff(absorb, official, (size_t)T * V), rel_n = max_rel_diff(naive, official, (size_t)T * V);
    int agree = argmax_agree(absorb, naive, T, V);
    printf("\nB. golden/official-tiny, %d tokens (%d prefilled, %d decoded one at a time)\n", T, FIRST, T - FIRST);
    printf("   cache for %d positions: absorb %zu bytes, naive %zu bytes (%.1fx)\n", T, bytes_absorb, bytes_naive,
           (double)bytes_naive / bytes_absorb);
    printf("   logits, absorbed vs naive:        max rel diff %.2e, argmax agrees in %d/%d rows\n", rel, agree, T);
    printf("   vs DeepSeek's own code (absorb):  absorbed %.2e, naive %.2e\n", rel_a, rel_n);
    check(rel < 1e-5 && agree == T, "naive and absorbed attention compute the same logits (FP32 rounding only)");
    check(rel_a < 1e-4 && rel_n < 1e-4, "both match the logits of DeepSeek-V3's inference code");
    check(bytes_naive == bytes_absorb * (size_t)kvcache_floats_per_token(c, ATTN_NAIVE) /
                             (size_t)kvcache_floats_per_token(c, ATTN_ABSORB),
          "and the absorbed cache is smaller by exactly H(Dn+Dr+Dv)/(Dc+Dr)");
    free(absorb);
    free(naive);
    free(official);
    model_free(&m);
}

/** The plot: one sequence's cache against its context length, into OUT_DIR/05_latent_kv_cache.png. */
static void plot(const char *out_dir, double gib[][3]) {
    char png[4096];
    FILE *gp = plot_open(out_dir, "05_latent_kv_cache", png, sizeof png);
    if (!gp) return;
    fprintf(gp, "set terminal pngcairo size 900,560 font ',11'\nset output '%s'\n$d << EOD\n", png);
    for (int i = 0; i < NCTX; i++) fprintf(gp, "%d %g %g %g\n", ctx[i], gib[i][0], gib[i][1], gib[i][2]);
    fprintf(gp, "EOD\nset title 'KV cache of one sequence, DeepSeek-V3 shape (61 layers, BF16)'\n"
                "set xlabel 'context length (tokens)'\nset ylabel 'GiB'\nset logscale xy 2\nset grid\n"
                "set key top left\nset format y '%%g'\nset xrange [4096:163840]\nset yrange [0.125:1024]\n"
                "plot $d using 1:2 with linespoints pt 7 title 'MHA, 128 heads x (192 + 128)', "
                "$d using 1:3 with linespoints pt 5 title 'GQA, 8 groups x (192 + 128)', "
                "$d using 1:4 with linespoints pt 9 title 'MLA, c_{kv} 512 + k_{pe} 64', "
                "80 with lines dt 2 lc rgb 'red' title '80 GiB (one H100/H800)'\n");
    plot_close(gp, png);
}

int main(int argc, char **argv) {
    const char *out_dir = argc > 1 ? argv[1] : "build/notebooks";
    double gib[NCTX][3];
    part_bytes(gib);
    part_equivalence();
    plot(out_dir, gib);
    printf("\n%s\n", failures ? "SOME CLAIMS FAILED" : "OK: every claim above holds.");
    return failures ? 1 : 0;
}
