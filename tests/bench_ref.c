/**
 * @file bench_ref.c
 * @brief `make bench`: speed and memory of the CPU reference on the `mini` checkpoint
 *        (written by the checkpoint writer into build/bench/mini on first use).
 *
 * Reported, each with the baseline it is compared to, measured in the same run:
 *  - prefill tokens/s (one 128-token chunk) and decode tokens/s (64 single-token steps);
 *  - decode weight bandwidth = weight bytes one token reads / time per token, as a fraction
 *    of this core's streaming-read bandwidth (a plain sum over a 512 MiB array);
 *  - peak RSS against the checkpoint size (the reference maps the file and never copies it).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/ckpt.h"
#include "generate/generate.h"
#include "model/model.h"

#define MINI_DIR "build/bench/mini"

/** Single-core streaming read bandwidth in bytes/s: best of 3 passes summing 512 MiB. */
static double stream_read_bandwidth(void) {
    size_t n = (512u << 20) / sizeof(float);
    float *a = malloc(n * sizeof *a);
    if (!a) return 0;
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 1023);
    double best = 0;
    volatile float sink = 0;
    for (int pass = 0; pass < 3; pass++) {
        double t0 = now_seconds();
        float acc[8] = { 0 };
        for (size_t i = 0; i + 8 <= n; i += 8)
            for (int j = 0; j < 8; j++) acc[j] += a[i + j];
        double t = now_seconds() - t0;
        sink += acc[0] + acc[7];
        if (n * sizeof *a / t > best) best = (double)(n * sizeof *a) / t;
    }
    (void)sink;
    free(a);
    return best;
}

static int ensure_mini(void) {
    struct stat sb;
    if (stat(MINI_DIR "/model.safetensors", &sb) == 0) return 0;
    Config c;
    Err err;
    if (config_preset(&c, "mini", &err)) return fprintf(stderr, "%s\n", err.msg), -1;
    CkptLayout layout = { CKPT_FP8, 0, 1, c.num_nextn_predict_layers };
    RandomInit ri = { 1, 0.1f };
    mkdir("build/bench", 0755);
    fprintf(stderr, "bench: writing the mini checkpoint to %s\n", MINI_DIR);
    if (ckpt_write(MINI_DIR, &c, &layout, ckpt_random_source, &ri, NULL, &err)) return fprintf(stderr, "%s\n", err.msg), -1;
    return 0;
}

int main(void) {
    if (ensure_mini()) return 1;
    Model m;
    Err err;
    double t0 = now_seconds();
    if (model_load(&m, MINI_DIR, NULL, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    double t_load = now_seconds() - t0;
    const Config *c = &m.config;
    uint64_t bytes[3];
    model_weight_bytes(&m, bytes);
    uint64_t file_bytes = 0;
    for (int i = 0; i < m.st.n_files; i++) file_bytes += m.st.files[i].size;
    printf("model     mini: %d layers, hidden %d, %d experts top-%d, FP8; %.1f MiB on disk, loaded in %.1f ms\n",
           c->num_hidden_layers, c->hidden_size, c->n_routed_experts, c->num_experts_per_tok,
           (double)file_bytes / 1048576.0, 1e3 * t_load);
    const int P = 128, D = 64, T = P + D;
    int *ids = malloc(sizeof(int) * T);
    for (int i = 0; i < T; i++) ids[i] = (i * 7919 + 13) % c->vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    double prefill_tps[2], decode_s[2];
    for (int mode = 0; mode < 2; mode++) {
        Fp8Mode fp8 = mode ? FP8_W8A8 : FP8_DEQUANT;
        RunState s;
        KVCache kv;
        if (runstate_init(&s, &m, P, T, ATTN_ABSORB, fp8, &err) ||
            kvcache_init(&kv, c, ATTN_ABSORB, c->num_hidden_layers, T, &err))
            return fprintf(stderr, "%s\n", err.msg), 1;
        double a = now_seconds();
        if (model_forward(&m, &s, &kv, ids, P, logits, 1, NULL, NULL, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
        double b = now_seconds();
        for (int p = P; p < T; p++)
            if (model_forward(&m, &s, &kv, ids + p, 1, logits, 1, NULL, NULL, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
        double e = now_seconds();
        prefill_tps[mode] = P / (b - a);
        decode_s[mode] = (e - b) / D;
        kvcache_free(&kv);
        runstate_free(&s);
    }
    /* Peak RSS before the baseline allocates its array. */
    size_t rss = peak_rss_bytes();
    double bw = stream_read_bandwidth();
    printf("baseline  single-core streaming read: %.2f GB/s\n", bw / 1e9);
    for (int mode = 0; mode < 2; mode++) {
        double gbs = (double)model_decode_weight_bytes(&m) / decode_s[mode];
        printf("%-9s prefill %d tokens: %.1f tokens/s | decode %d tokens: %.1f tokens/s, %.1f MiB weights/token = %.2f GB/s"
               " = %.2fx streaming read\n",
               mode ? "w8a8" : "dequant", P, prefill_tps[mode], D, 1.0 / decode_s[mode],
               (double)model_decode_weight_bytes(&m) / 1048576.0, gbs / 1e9, gbs / bw);
    }
    /* Speculative decoding with the MTP module (greedy, so every variant emits the same tokens). */
    for (int draft = 0; draft <= 2; draft++) {
        Sampler smp;
        Generator g;
        if (sampler_init(&smp, 0.0f, 0, 1.0f, 1, &err) || gen_init(&g, &m, &smp, T + 8, draft, P, ATTN_ABSORB, FP8_DEQUANT, &err) ||
            gen_feed(&g, ids, P, &err))
            return fprintf(stderr, "%s\n", err.msg), 1;
        int out[8], k, produced = 0;
        while (produced < D) {
            if (gen_next(&g, out, &k, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
            produced += k;
        }
        double tps = g.stats.generated / g.stats.decode_seconds;
        static double plain_tps;
        if (draft == 0) plain_tps = tps;
        if (draft == 0) printf("decode    greedy, no speculation: %.1f tokens/s\n", tps);
        else printf("spec      MTP, %d draft(s)/step: %.1f tokens/s = %.2fx plain, acceptance %.1f%% (%lld/%lld; random weights:"
                    " expect ~1/vocab)\n", draft, tps, tps / plain_tps, 100.0 * g.stats.accepted / g.stats.drafted,
                    (long long)g.stats.accepted, (long long)g.stats.drafted);
        gen_free(&g);
    }
    /* The bundled trained model: where MTP acceptance means something. */
    Model kjv;
    if (model_load(&kjv, "models/kjv", NULL, &err) == 0) {
        int prompt[6] = { 0, 300, 400, 500, 600, 700 };
        double plain = 0;
        for (int mode = 0; mode < 2; mode++)
            for (int draft = 0; draft <= 3; draft++) {
                Sampler smp;
                Generator g;
                if (sampler_init(&smp, mode ? 0.8f : 0.0f, mode ? 40 : 0, mode ? 0.95f : 1.0f, 7, &err) ||
                    gen_init(&g, &kjv, &smp, 300, draft, 64, ATTN_ABSORB, FP8_DEQUANT, &err) || gen_feed(&g, prompt, 6, &err))
                    return fprintf(stderr, "%s\n", err.msg), 1;
                int out[8], k, produced = 0;
                while (produced < 200) {
                    if (gen_next(&g, out, &k, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
                    produced += k;
                }
                double tps = g.stats.generated / g.stats.decode_seconds;
                if (draft == 0) plain = tps;
                printf("kjv       %s, %s: %.1f tokens/s = %.2fx plain", mode ? "sampling T=0.8" : "greedy",
                       draft ? (draft == 1 ? "MTP 1 draft " : draft == 2 ? "MTP 2 drafts" : "MTP 3 drafts") : "no MTP      ",
                       tps, tps / plain);
                if (draft) printf(", acceptance %.1f%% (%lld/%lld), %.2f tokens per main-model step",
                                  100.0 * g.stats.accepted / g.stats.drafted, (long long)g.stats.accepted,
                                  (long long)g.stats.drafted, (double)g.stats.generated / (double)g.stats.steps);
                printf("\n");
                gen_free(&g);
            }
        model_free(&kjv);
    }
    printf("memory    peak RSS %.1f MiB = %.2fx the %.1f MiB checkpoint (mapped, never copied to FP32)\n",
           (double)rss / 1048576.0, (double)rss / (double)file_bytes, (double)file_bytes / 1048576.0);
    free(ids);
    free(logits);
    model_free(&m);
    return 0;
}
