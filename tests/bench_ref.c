/**
 * @file bench_ref.c
 * @brief `make bench`: speed and memory of the CPU reference on any checkpoint.
 *
 *     bench_ref [MODEL_DIR]        (make bench BENCH_MODEL=DIR; default: the `mini` preset, written
 *                                   by the checkpoint writer into build/bench/mini on first use)
 *
 * The tests are llama-bench's, so the two can be read side by side:
 *  - pp128: one 128-token chunk from an empty cache, logits of the last position only;
 *  - tg64:  64 single-token steps from an empty cache, logits every step.
 * Each runs once to warm up (page in the mapped weights), then BENCH_REPS times (default 3) in one
 * session (run state and KV cache allocated once, the cache emptied before each run, as llama-bench
 * reuses its context); the median is reported. Both run for each thread count of BENCH_THREADS (default "1,<online cores>").
 * Decode is reported also as weight bandwidth — the bytes one token reads (model_decode_weight_bytes)
 * over the time per token — against the streaming-read bandwidth on as many threads, measured in
 * the same run (the best of 3 passes of a plain sum over 1 GiB): decoding a model larger than the
 * caches cannot beat that, so the ratio says how close to the machine's limit it runs (and the
 * N-thread read over the 1-thread one bounds what -t N can gain on decode).
 *
 * Then generation as a user sees it: gen_next's own decode rate (GenStats) over 64 tokens, greedy
 * and sampled (T = 0.8, top-k 40, top-p 0.95), against the bare forward's tg64 at the same thread
 * count, the three run in turns (medians of BENCH_REPS rounds); the sampler and the loop around
 * model_forward must cost ≤ 5 % of a step. For the default model (or an
 * FP8 one) also the W8A8 emulation, speculative decoding with the MTP module when the checkpoint has
 * one, the bundled trained model `models/kjv` with MTP, and peak RSS against the checkpoint size.
 *
 * Every measurement is also printed as one line `RESULT key=value ...` for scripts.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/rng.h"
#include "base/threads.h"
#include "generate/generate.h"
#include "model/ckpt.h"
#include "model/linear.h"
#include "model/model.h"
#include "util_model.h"

#define MINI_DIR "build/bench/mini"

/**
 * Streaming-read bandwidth in bytes/s on @p threads threads: the best of 3 passes of a plain sum
 * over 1 GiB of floats, each thread summing its contiguous share. The buffer is written by the
 * same split, so on a multi-socket machine each share sits near the thread that reads it.
 */
static double stream_read_bandwidth(int threads) {
    size_t n = (1024u << 20) / sizeof(float);
    float *a = malloc(n * sizeof *a);
    if (!a) return 0;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (size_t i = 0; i < n; i += 16)
        for (size_t j = i; j < i + 16 && j < n; j++) a[j] = (float)(j & 1023);
    double best = 0;
    volatile float sink = 0;
    for (int pass = 0; pass < 3; pass++) {
        double t0 = now_seconds();
        float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
        {
            float acc[16] = { 0 };
#pragma omp for schedule(static)
            for (size_t i = 0; i < n; i += 16)
                for (int j = 0; j < 16; j++) acc[j] += a[i + j];
            for (int j = 0; j < 16; j++) total += acc[j];
        }
        double t = now_seconds() - t0;
        sink += total;
        if ((double)(n * sizeof *a) / t > best) best = (double)(n * sizeof *a) / t;
    }
    (void)sink;
    free(a);
    return best;
}

/**
 * The decode kernel alone: y = W·x for one token over 256 MiB of weights (copies of one 4096 × 1024
 * matrix stored as @p dt, random_weight()'s values), streaming from memory — or, with @p in_l2, one
 * (256 · threads) × 1024 matrix (≤ 512 KiB a thread) run over again from the cores' L2, which
 * leaves the kernel's own instructions as the limit. On @p threads threads; the best of 3 passes,
 * in bytes/s, with *elems_per_s the weights per second: what a decode step's linears can reach on
 * this machine for that storage type.
 */
static double decode_kernel_bandwidth(DType dt, int threads, int in_l2, double *elems_per_s) {
    const int64_t R = in_l2 ? 256 * (int64_t)threads : 4096, K = 1024;
    size_t eb = (size_t)tensor_elem_bytes(dt), bytes = (size_t)(R * K) * eb, copies = in_l2 ? 1 : (256u << 20) / bytes;
    int repeats = in_l2 ? 512 : 1;
    Rng r;
    rng_seed(&r, 7);
    uint8_t *one, *w = malloc(bytes * copies);
    float *scales, *x = malloc(sizeof(float) * K), *y = malloc(sizeof(float) * R),
          *scratch = malloc(sizeof(float) * linear_scratch_floats(1, K));
    Tensor W0 = random_weight(dt, R, K, &one, &scales, &r);
    double best = 0;
    if (!w || !W0.data || !x || !y || !scratch) goto done;
    for (size_t c = 0; c < copies; c++) memcpy(w + c * bytes, W0.data, bytes);
    for (int64_t i = 0; i < K; i++) x[i] = rng_normal(&r);
    threads_set(threads);
    LinearScratch ls = linear_scratch_init(scratch, 1, K);
    for (int pass = 0; pass < 3; pass++) {
        double t0 = now_seconds();
        for (int rep = 0; rep < repeats; rep++)
            for (size_t c = 0; c < copies; c++) {
                Tensor W = W0;
                W.data = w + c * bytes;
                linear_forward(y, x, 1, &W, FP8_DEQUANT, &ls);
            }
        double t = now_seconds() - t0, total = (double)bytes * (double)copies * repeats;
        if (total / t > best) best = total / t;
    }
    *elems_per_s = best / (double)eb;
done:
    free(w), free(one), free(scales), free(x), free(y), free(scratch);
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

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/** One session's state, allocated once and reused by every run (as llama-bench reuses its context). */
typedef struct {
    RunState s;
    KVCache kv;
} Session;

static int session_init(Session *se, const Model *m, int max_T, int max_seq, Fp8Mode fp8) {
    Err err;
    if (runstate_init(&se->s, m, max_T, max_seq, ATTN_ABSORB, fp8, &err) ||
        kvcache_init(&se->kv, &m->config, ATTN_ABSORB, m->config.num_hidden_layers, max_seq, &err))
        return fprintf(stderr, "%s\n", err.msg), -1;
    return 0;
}

static void session_free(Session *se) {
    kvcache_free(&se->kv);
    runstate_free(&se->s);
}

/** Seconds of one pp (n tokens, last logits) or one tg (n single steps), from an empty cache; < 0 on error. */
static double run_test(const Model *m, Session *se, int prefill, int n, const int *ids, float *logits) {
    Err err;
    se->kv.len = 0; /* an empty cache: positions are overwritten */
    double t0 = now_seconds();
    int rc = 0;
    if (prefill) rc = model_forward(m, &se->s, &se->kv, ids, n, logits, 1, NULL, NULL, &err);
    else
        for (int p = 0; p < n && !rc; p++) rc = model_forward(m, &se->s, &se->kv, ids + p, 1, logits, 1, NULL, NULL, &err);
    double t = now_seconds() - t0;
    if (rc) return fprintf(stderr, "%s\n", err.msg), -1;
    return t;
}

/** Median tokens/s of a test over @p reps runs after one warm-up. */
static double bench_test(const Model *m, Session *se, int prefill, int n, const int *ids, float *logits, int reps) {
    double t[16];
    if (run_test(m, se, prefill, n, ids, logits) < 0) return -1;
    for (int r = 0; r < reps; r++)
        if ((t[r] = run_test(m, se, prefill, n, ids, logits)) < 0) return -1;
    return n / median(t, reps);
}

/** gen_next's own decode rate over @p n tokens after an 8-token prompt (greedy when temp = 0). */
static double gen_rate(const Model *m, float temp, int top_k, float top_p, int n, const int *ids) {
    Sampler smp;
    Generator g;
    Err err;
    if (sampler_init(&smp, temp, top_k, top_p, 1, &err) || gen_init(&g, m, &smp, 8 + n + 1, 0, 8, ATTN_ABSORB, FP8_DEQUANT, &err) ||
        gen_feed(&g, ids, 8, &err))
        return fprintf(stderr, "%s\n", err.msg), -1;
    int out[1], k;
    for (int i = 0; i < n; i++)
        if (gen_next(&g, out, &k, &err)) return fprintf(stderr, "%s\n", err.msg), -1;
    double tps = (double)g.stats.generated / g.stats.decode_seconds;
    gen_free(&g);
    return tps;
}

/** Thread counts from BENCH_THREADS ("1,2"), default 1 and the online cores. */
static int thread_list(int *list, int cap) {
    const char *env = getenv("BENCH_THREADS");
    int n = 0;
    if (env && *env) {
        for (const char *p = env; *p && n < cap;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v < 1 || v > 1024) return fprintf(stderr, "bench: bad BENCH_THREADS '%s'\n", env), -1;
            list[n++] = (int)v;
            p = *end == ',' ? end + 1 : end;
        }
        return n;
    }
    list[n++] = 1;
    if (threads_online() > 1) list[n++] = threads_online();
    return n;
}

/** Speculative decoding with the MTP module (greedy, so every variant emits the same tokens). */
static int bench_speculative(const Model *m, const int *ids, int P, int D) {
    Err err;
    double plain_tps = 0;
    for (int draft = 0; draft <= 2; draft++) {
        Sampler smp;
        Generator g;
        if (sampler_init(&smp, 0.0f, 0, 1.0f, 1, &err) || gen_init(&g, m, &smp, P + D + 8, draft, P, ATTN_ABSORB, FP8_DEQUANT, &err) ||
            gen_feed(&g, ids, P, &err))
            return fprintf(stderr, "%s\n", err.msg), -1;
        int out[8], k, produced = 0;
        while (produced < D) {
            if (gen_next(&g, out, &k, &err)) return fprintf(stderr, "%s\n", err.msg), -1;
            produced += k;
        }
        double tps = g.stats.generated / g.stats.decode_seconds;
        if (draft == 0) plain_tps = tps;
        if (draft == 0) printf("decode    greedy, no speculation: %.1f tokens/s\n", tps);
        else printf("spec      MTP, %d draft(s)/step: %.1f tokens/s = %.2fx plain, acceptance %.1f%% (%lld/%lld; random weights:"
                    " expect ~1/vocab)\n", draft, tps, tps / plain_tps, 100.0 * g.stats.accepted / g.stats.drafted,
                    (long long)g.stats.accepted, (long long)g.stats.drafted);
        gen_free(&g);
    }
    return 0;
}

/** The bundled trained model: where MTP acceptance means something. */
static int bench_kjv(void) {
    Model kjv;
    Err err;
    if (model_load(&kjv, "models/kjv", NULL, &err)) return 0;
    int prompt[6] = { 0, 300, 400, 500, 600, 700 };
    double plain = 0;
    for (int mode = 0; mode < 2; mode++)
        for (int draft = 0; draft <= 3; draft++) {
            Sampler smp;
            Generator g;
            if (sampler_init(&smp, mode ? 0.8f : 0.0f, mode ? 40 : 0, mode ? 0.95f : 1.0f, 7, &err) ||
                gen_init(&g, &kjv, &smp, 300, draft, 64, ATTN_ABSORB, FP8_DEQUANT, &err) || gen_feed(&g, prompt, 6, &err))
                return fprintf(stderr, "%s\n", err.msg), -1;
            int out[8], k, produced = 0;
            while (produced < 200) {
                if (gen_next(&g, out, &k, &err)) return fprintf(stderr, "%s\n", err.msg), -1;
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
    return 0;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : getenv("BENCH_MODEL");
    int is_default = !dir || !*dir;
    if (is_default) {
        if (ensure_mini()) return 1;
        dir = MINI_DIR;
    }
    const char *name = strrchr(dir, '/') && strrchr(dir, '/')[1] ? strrchr(dir, '/') + 1 : dir;
    int reps = getenv("BENCH_REPS") ? atoi(getenv("BENCH_REPS")) : 3;
    if (reps < 1 || reps > 16) return fprintf(stderr, "bench: BENCH_REPS must be in [1, 16]\n"), 1;
    int threads[8], n_threads = thread_list(threads, 8);
    if (n_threads < 0) return 1;
    Model m;
    Err err;
    double t0 = now_seconds();
    if (model_load(&m, dir, NULL, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    double t_load = now_seconds() - t0;
    const Config *c = &m.config;
    uint64_t bytes[3];
    model_weight_bytes(&m, bytes);
    uint64_t file_bytes = 0;
    for (int i = 0; i < m.st.n_files; i++) file_bytes += m.st.files[i].size;
    const char *dtype = dtype_name(m.w.layers[0].q_a_proj.dtype); /* the attention projections' storage */
    printf("model     %s: %d layers, hidden %d, %d experts top-%d, vocab %d, %s; %.1f MiB on disk, loaded in %.1f ms\n", name,
           c->num_hidden_layers, c->hidden_size, c->n_routed_experts, c->num_experts_per_tok, c->vocab_size, dtype,
           (double)file_bytes / 1048576.0, 1e3 * t_load);
    const int P = 128, D = 64;
    int *ids = malloc(sizeof(int) * (P + D));
    float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    if (!ids || !logits) return fprintf(stderr, "out of memory\n"), 1;
    for (int i = 0; i < P + D; i++) ids[i] = (i * 7919 + 13) % c->vocab_size;
    double decode_bytes = (double)model_decode_weight_bytes(&m);
    double pp[8], tg[8];
    for (int k = 0; k < n_threads; k++) {
        threads[k] = threads_set(threads[k]); /* before the session: its scratch is per thread */
        Session se;
        if (session_init(&se, &m, P, P + D, FP8_DEQUANT)) return 1;
        pp[k] = bench_test(&m, &se, 1, P, ids, logits, reps);
        tg[k] = bench_test(&m, &se, 0, D, ids, logits, reps);
        session_free(&se);
        if (pp[k] < 0 || tg[k] < 0) return 1;
    }
    /* Peak RSS before the baseline allocates its array. */
    size_t rss = peak_rss_bytes();
    /* The machine's limit for each thread count: a streaming read on as many threads. */
    double bw[8];
    for (int k = 0; k < n_threads; k++) {
        bw[k] = stream_read_bandwidth(threads[k]);
        printf("baseline  streaming read of 1 GiB on %d thread%s: %.2f GB/s", threads[k], threads[k] > 1 ? "s" : "", bw[k] / 1e9);
        if (k > 0) printf(" = %.2fx -t %d", bw[k] / bw[0], threads[0]);
        printf("\n");
        printf("RESULT bench=ref test=stream_read threads=%d gbs=%.3f\n", threads[k], bw[k] / 1e9);
    }
    /* The decode kernel of each storage type alone, against the same read. */
    for (int k = 0; k < n_threads; k++)
        for (int in_l2 = 0; in_l2 < 2; in_l2++) {
            double el[2], gb[2];
            const DType kdt[2] = { DT_BF16, DT_F8_E4M3 };
            for (int d = 0; d < 2; d++) {
                gb[d] = decode_kernel_bandwidth(kdt[d], threads[k], in_l2, &el[d]);
                if (gb[d] <= 0) return fprintf(stderr, "bench: out of memory for the kernel test\n"), 1;
                printf("RESULT bench=ref test=decode_kernel%s dtype=%s threads=%d gbs=%.3f gelems=%.3f vs_stream=%.3f\n",
                       in_l2 ? "_l2" : "", dtype_name(kdt[d]), threads[k], gb[d] / 1e9, el[d] / 1e9, gb[d] / bw[k]);
            }
            printf("kernel    -t %-2d y = Wx %s: BF16 %.2f GB/s (%.2f G weights/s) = %.2fx the read | FP8 %.2f GB/s"
                   " (%.2f G weights/s) = %.2fx BF16's weights/s\n",
                   threads[k], in_l2 ? "from L2 (256 rows a thread, again and again)" : "over 256 MiB", gb[0] / 1e9, el[0] / 1e9,
                   gb[0] / bw[k], gb[1] / 1e9, el[1] / 1e9, el[1] / el[0]);
        }
    threads_set(threads[0]);
    for (int k = 0; k < n_threads; k++) {
        double gbs = decode_bytes * tg[k] / 1e9;
        printf("-t %-2d     pp%d %.1f tokens/s | tg%d %.1f tokens/s = %.2f GB/s of weights (%.1f MiB/token) = %.2fx streaming read",
               threads[k], P, pp[k], D, tg[k], gbs, decode_bytes / 1048576.0, gbs / (bw[k] / 1e9));
        if (k > 0) printf(" | vs -t %d: pp %.2fx, tg %.2fx", threads[0], pp[k] / pp[0], tg[k] / tg[0]);
        printf("\n");
        printf("RESULT bench=ref model=%s dtype=%s threads=%d test=pp%d tokens_per_s=%.2f\n", name, dtype, threads[k], P, pp[k]);
        printf("RESULT bench=ref model=%s dtype=%s threads=%d test=tg%d tokens_per_s=%.2f weight_gbs=%.3f vs_stream=%.3f\n", name,
               dtype, threads[k], D, tg[k], gbs, gbs / (bw[k] / 1e9));
    }
    /* Generation as a user sees it, against the bare forward at the same thread count, run in
     * turns (forward, greedy, sampled; BENCH_REPS rounds) so that a busy machine slows all three. */
    for (int k = 0; k < n_threads; k++) {
        threads_set(threads[k]);
        Session se;
        if (session_init(&se, &m, P, P + D, FP8_DEQUANT)) return 1;
        double fw[16], gr[16], sa[16];
        for (int r = 0; r < reps; r++) {
            double t = run_test(&m, &se, 0, D, ids, logits);
            fw[r] = t > 0 ? D / t : -1;
            gr[r] = gen_rate(&m, 0.0f, 0, 1.0f, D, ids);
            sa[r] = gen_rate(&m, 0.8f, 40, 0.95f, D, ids);
            if (fw[r] < 0 || gr[r] < 0 || sa[r] < 0) return 1;
        }
        session_free(&se);
        double f = median(fw, reps), greedy = median(gr, reps), sampled = median(sa, reps);
        printf("-t %-2d     generate decode: greedy %.1f tokens/s = %.2fx the bare forward (%.1f tokens/s in the same rounds),"
               " sampled (T 0.8, top-k 40, top-p 0.95) %.1f tokens/s = %.2fx\n", threads[k], greedy, greedy / f, f, sampled, sampled / f);
        printf("RESULT bench=ref model=%s dtype=%s threads=%d test=gen_greedy tokens_per_s=%.2f vs_forward=%.3f\n", name, dtype,
               threads[k], greedy, greedy / f);
        printf("RESULT bench=ref model=%s dtype=%s threads=%d test=gen_sampled tokens_per_s=%.2f vs_forward=%.3f\n", name, dtype,
               threads[k], sampled, sampled / f);
    }
    threads_set(threads[0]);
    if (m.config.has_fp8) {
        Session se;
        if (session_init(&se, &m, P, P + D, FP8_W8A8)) return 1;
        double ppw = bench_test(&m, &se, 1, P, ids, logits, reps), tgw = bench_test(&m, &se, 0, D, ids, logits, reps);
        session_free(&se);
        if (ppw < 0 || tgw < 0) return 1;
        printf("w8a8      -t %d: pp%d %.1f tokens/s | tg%d %.1f tokens/s (the GPU's numerics, emulated exactly)\n", threads[0], P,
               ppw, D, tgw);
        printf("RESULT bench=ref model=%s dtype=%s threads=%d test=pp%d_w8a8 tokens_per_s=%.2f\n", name, dtype, threads[0], P, ppw);
        printf("RESULT bench=ref model=%s dtype=%s threads=%d test=tg%d_w8a8 tokens_per_s=%.2f\n", name, dtype, threads[0], D, tgw);
    }
    if (m.w.n_mtp > 0 && bench_speculative(&m, ids, P, D)) return 1;
    if (is_default && bench_kjv()) return 1;
    printf("memory    peak RSS %.1f MiB = %.2fx the %.1f MiB checkpoint (mapped, never copied to FP32)\n",
           (double)rss / 1048576.0, (double)rss / (double)file_bytes, (double)file_bytes / 1048576.0);
    free(ids);
    free(logits);
    model_free(&m);
    return 0;
}
