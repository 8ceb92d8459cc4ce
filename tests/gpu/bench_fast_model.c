/**
 * @file bench_fast_model.c
 * @brief End-to-end speed of the whole-model GPU path (fast/model_gpu.h): prefill and decode
 *        tokens/s at several batch sizes, printed in the same RESULT format as the PyTorch peers
 *        (tools/bench_e2e_peers.py) so that `make bench-gpu-model` can print ratios.
 *
 * Usage: bench_fast_model --model DIR [--batches 1,8,64] [--prompt-len 512] [--decode-steps 32]
 *                         [--fp8 w8a8|dequant] [--kv-cache auto|f32|bf16] [--seed S] [--no-graphs]
 *
 * For each batch B: B sequences of prompt-len random ids are prefilled one sequence per forward
 * (prefill tokens/s = B·prompt_len / the time of all B), then decode-steps greedy steps run all B
 * sequences in one forward each, the argmax taken on the device (decode tokens/s = B / median
 * step time). One untimed warm-up round first. Timing: wall clock around stream-synchronized
 * forwards (fast_model_forward synchronizes before returning), so it includes the per-step host
 * work (batch staging, uploads) a server would also pay.
 *
 * Several GPUs: launched by torchrun (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), each
 * rank runs its own sequences (data-parallel attention and dense layers) and holds 1/WORLD_SIZE of
 * the routed experts; MoE layers dispatch and combine over NCCL (fast/ep_gpu.c). Every rank prints
 * its own RESULT line (rank=, world=); the system's throughput is their sum.
 *
 * Written in a session without a GPU: not yet run on one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep/bootstrap.h"
#include "ep_nccl.h"
#include "model/model.h"
#include "model_gpu.h"
#include "base/rng.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int parse_list(const char *s, int *out, int cap) {
    int n = 0;
    while (*s && n < cap) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v <= 0 || v > 4096) return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

int main(int argc, char **argv) {
    const char *dir = NULL;
    int batches[16] = { 1, 8, 64 }, nb = 3, kv_bf16 = -1;
    long prompt_len = 512, steps = 32, seed = 1;
    Fp8Mode fp8 = FP8_W8A8;
    int no_graphs = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--model") && v) dir = v, i++;
        else if (!strcmp(a, "--batches") && v && (nb = parse_list(v, batches, 16)) > 0) i++;
        else if (!strcmp(a, "--prompt-len") && v && (prompt_len = atol(v)) > 0) i++;
        else if (!strcmp(a, "--decode-steps") && v && (steps = atol(v)) > 0) i++;
        else if (!strcmp(a, "--seed") && v) seed = atol(v), i++;
        else if (!strcmp(a, "--no-graphs")) no_graphs = 1;
        else if (!strcmp(a, "--fp8") && v && (!strcmp(v, "w8a8") || !strcmp(v, "dequant"))) fp8 = !strcmp(v, "w8a8") ? FP8_W8A8 : FP8_DEQUANT, i++;
        else if (!strcmp(a, "--kv-cache") && v && (!strcmp(v, "auto") || !strcmp(v, "f32") || !strcmp(v, "bf16")))
            kv_bf16 = !strcmp(v, "auto") ? -1 : !strcmp(v, "bf16"), i++;
        else {
            fprintf(stderr, "usage: bench_fast_model --model DIR [--batches 1,8,64] [--prompt-len N] [--decode-steps N] "
                            "[--fp8 w8a8|dequant] [--kv-cache auto|f32|bf16] [--seed S] [--no-graphs]\n");
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "bench_fast_model: --model DIR is required\n");
        return 2;
    }
    FastDevice dev;
    Err err = { "" };
    LaunchEnv env;
    EpTransport t;
    EpPlan plan;
    FastEp *ep = NULL;
    memset(&t, 0, sizeof t);
    memset(&plan, 0, sizeof plan);
    if (launch_env_read(&env, &err)) {
        fprintf(stderr, "bench_fast_model: %s\n", err.msg);
        return 2;
    }
    /* the group first: it binds GPU LOCAL_RANK before anything touches a device */
    if (env.world_size > 1 && ep_nccl_transport_init(&t, &env, 120.0, &err)) {
        fprintf(stderr, "bench_fast_model: rank %d: %s\n", env.rank, err.msg);
        return 1;
    }
    if (fast_device(&dev, &err)) {
        printf("bench_fast_model: SKIP (no CUDA device: %s)\n", err.msg);
        return 0;
    }
    Model m;
    if (model_load(&m, dir, stderr, &err)) {
        fprintf(stderr, "bench_fast_model: %s\n", err.msg);
        return 1;
    }
    const Config *c = &m.config;
    int max_b = 1;
    for (int i = 0; i < nb; i++) max_b = batches[i] > max_b ? batches[i] : max_b;
    int64_t max_T = prompt_len > max_b ? prompt_len : max_b;
    FastOptions opt = { .fp8 = fp8, .kv_bf16 = kv_bf16 < 0 ? fast_mla_kernel_shapes(c) : kv_bf16, .max_T = max_T,
                         .max_seq = prompt_len + steps + 8, .max_seqs = max_b, .progress = 1,
                         .cuda_graphs = !no_graphs };
    if (env.world_size > 1) {
        if (ep_plan_init(&plan, env.world_size, c->n_routed_experts, NULL, 0, &err)) {
            fprintf(stderr, "bench_fast_model: %s\n", err.msg);
            return 1;
        }
        opt.ep_plan = &plan, opt.ep_rank = env.rank;
    }
    FastModel fm;
    FastKVCache kv;
    FastRunState *s = NULL;
    memset(&kv, 0, sizeof kv);
    double t0 = now_seconds();
    if (fast_model_upload(&fm, &m, &opt, env.rank == 0 ? stderr : NULL, &err) || fast_kv_init(&kv, &fm, &opt, &err) ||
        fast_runstate_init(&s, &fm, &opt, &err) || (env.world_size > 1 && fast_ep_init(&ep, &fm, &t, env.rank, max_T, &err))) {
        fprintf(stderr, "bench_fast_model: rank %d: %s\n", env.rank, err.msg);
        return 1;
    }
    fast_runstate_set_ep(s, ep);
    printf("bench_fast_model: rank %d of %d on %s, %d layers, hidden %d, %d heads, %d experts (%d here); upload %.1f s; fp8 %s, "
           "%s cache\n", env.rank, env.world_size, dev.name, c->num_hidden_layers, c->hidden_size, c->num_attention_heads,
           c->n_routed_experts, fm.n_local, now_seconds() - t0, fp8 == FP8_W8A8 ? "w8a8" : "dequant", opt.kv_bf16 ? "bf16" : "f32");
    Rng rng;
    rng_seed(&rng, (uint64_t)seed + (uint64_t)env.rank); /* each rank its own sequences */
    int *ids = xcalloc((size_t)max_T, sizeof(int)), *seqs = xcalloc((size_t)max_b, sizeof(int));
    int *ones = xcalloc((size_t)max_b, sizeof(int)), *next = xcalloc((size_t)max_b, sizeof(int));
    double *step_s = xcalloc((size_t)steps, sizeof(double));
    for (int bi = 0; bi < nb; bi++) {
        int B = batches[bi];
        for (int round = 0; round < 2; round++) { /* round 0: warm-up (prefill + 2 steps), round 1: timed */
            int n_steps = round ? (int)steps : 2;
            for (int j = 0; j < B; j++) seqs[j] = fast_kv_open(&kv, &err), ones[j] = 1;
            double tp = now_seconds();
            for (int j = 0; j < B; j++) {
                for (long i = 0; i < prompt_len; i++) ids[i] = (int)(rng_u32(&rng) % (uint32_t)c->vocab_size);
                int n = (int)prompt_len;
                FastBatch b = { 1, &seqs[j], &n, ids, 0 };
                if (fast_model_forward(&fm, s, &kv, &b, NULL, &next[j], NULL, NULL, &err)) goto fail;
            }
            double prefill = now_seconds() - tp;
            for (int k = 0; k < n_steps; k++) {
                double ts = now_seconds();
                FastBatch b = { B, seqs, ones, next, 0 };
                if (fast_model_forward(&fm, s, &kv, &b, NULL, next, NULL, NULL, &err)) goto fail;
                step_s[k] = now_seconds() - ts;
            }
            for (int j = 0; j < B; j++) fast_kv_close(&kv, seqs[j]);
            if (!round) continue;
            qsort(step_s, (size_t)n_steps, sizeof *step_s, cmp_double);
            double med = step_s[n_steps / 2];
            printf("batch %3d: prefill %8.1f tokens/s (%d × %ld tokens in %.3f s), decode %8.1f tokens/s (median step %.3f ms)\n", B,
                   (double)B * (double)prompt_len / prefill, B, prompt_len, prefill, (double)B / med, med * 1e3);
            uint64_t launches = 0, captures = 0;
            fast_runstate_graph_stats(s, &launches, &captures);
            printf("RESULT peer=dsv3 batch=%d prefill_tok_s=%.2f decode_tok_s=%.2f prompt_len=%ld steps=%ld graphs=%llu/%llu "
                   "rank=%d world=%d\n", B, (double)B * (double)prompt_len / prefill, (double)B / med, prompt_len, steps,
                   (unsigned long long)launches, (unsigned long long)captures, env.rank, env.world_size);
            fflush(stdout);
        }
    }
    fast_ep_free(ep);
    fast_runstate_free(s);
    fast_kv_free(&kv);
    fast_model_free(&fm);
    if (t.ctx) ep_nccl_transport_free(&t);
    ep_plan_free(&plan);
    model_free(&m);
    return 0;
fail:
    fprintf(stderr, "bench_fast_model: %s\n", err.msg);
    return 1;
}
