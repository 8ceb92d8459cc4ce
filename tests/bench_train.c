/**
 * @file bench_train.c
 * @brief `make bench`: CPU training throughput of the reference on the `tiny` preset (6.2 M
 *        parameters + one MTP depth, 16 experts top-4) with 4 × 128-token sequences per step.
 *
 * Reported, each against a baseline measured in the same run:
 *  - training tokens/s (forward + backward + AdamW + bias update) and forward-only tokens/s
 *    (trainer_eval) — a backward costs about twice a forward, so the ideal ratio is ~1/3;
 *  - achieved GFLOP/s, counting 6 FLOPs per activated weight per token plus the attention
 *    products, against linear_forward on a 256×256 FP32 matrix (the kernel everything runs on);
 *  - the step time under `--precision fp8` (the paper's recipe, every linear's three GEMMs
 *    emulated: quantization, 14-bit accumulation, promotion) against the FP32 step of the same
 *    model, weights and batch (target: at most 3×).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/ckpt.h"
#include "train/train.h"

/** Weights one token multiplies (main model and MTP depths, embedding lookups excluded). */
static double active_weights(const Config *c, int n_mtp) {
    double D = c->hidden_size, H = c->num_attention_heads, Dq = c->q_lora_rank, Dc = c->kv_lora_rank;
    double Dn = c->qk_nope_head_dim, Dr = c->qk_rope_head_dim, Dv = c->v_head_dim;
    double attn = Dq * D + H * (Dn + Dr) * Dq + (Dc + Dr) * D + H * (Dn + Dv) * Dc + D * H * Dv;
    double moe = c->n_routed_experts * D + 3.0 * D * c->moe_intermediate_size * (c->num_experts_per_tok + c->n_shared_experts);
    double total = 0;
    for (int l = 0; l < c->num_hidden_layers + n_mtp; l++)
        total += attn + (config_layer_is_moe(c, l) ? moe : 3.0 * D * c->intermediate_size);
    return total + (1 + n_mtp) * (double)c->vocab_size * D + n_mtp * 2 * D * D;
}

/** CPU seconds of this process (all threads): steadier than wall time while others share the cores. */
static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/** Wall seconds per training step (trainer_grad + trainer_update) over @p steps after one warm-up
 *  step; the CPU seconds per step into @p cpu. */
static double step_seconds(Trainer *tr, const int *seqs, int steps, double *cpu) {
    TrainLosses L;
    StepStats st;
    trainer_grad(tr, seqs, tr->opt.batch, &L); /* warm-up: page in every buffer */
    trainer_update(tr, &st);
    double t0 = now_seconds(), c0 = cpu_seconds();
    for (int s = 0; s < steps; s++) {
        trainer_grad(tr, seqs, tr->opt.batch, &L);
        trainer_update(tr, &st);
    }
    *cpu = (cpu_seconds() - c0) / steps;
    return (now_seconds() - t0) / steps;
}

/** A trainer on @p c with options @p o and the benchmark's random weights. */
static int bench_trainer(Trainer *tr, const Config *c, const TrainOptions *o, Err *err) {
    ParamInit pi = { 1, (float)o->init_std };
    if (trainer_init(tr, c, o, err)) return -1;
    return params_fill(&tr->ps, params_init_source, &pi, err);
}

int main(void) {
    Config c;
    Err err;
    if (config_preset(&c, "tiny", &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    TrainOptions o = train_options_default(c.hidden_size);
    o.batch = 4, o.seq_len = 128, o.n_mtp = 1, o.steps = 100;
    Trainer tr;
    if (bench_trainer(&tr, &c, &o, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    int64_t B = o.batch, T = o.seq_len;
    int *seqs = malloc(sizeof(int) * (size_t)(B * (T + 1)));
    Rng r;
    rng_seed(&r, 2);
    for (int64_t i = 0; i < B * (T + 1); i++) seqs[i] = (int)(rng_u32(&r) % (uint32_t)c.vocab_size);
    TrainLosses L;
    const int steps = 3;
    double c_train, c_fp8;
    double t_train = step_seconds(&tr, seqs, steps, &c_train);
    /* The FP8 recipe on the same weights and batch (the paper's defaults, BF16 moments). */
    Trainer tr8;
    TrainOptions o8 = o;
    o8.precision = TRAIN_FP8, o8.bf16_moments = 1;
    if (bench_trainer(&tr8, &c, &o8, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    double t_fp8 = step_seconds(&tr8, seqs, steps, &c_fp8);
    trainer_free(&tr8);
    double t0 = now_seconds();
    for (int s = 0; s < steps; s++) trainer_eval(&tr, seqs, B, &L);
    double t_fwd = (now_seconds() - t0) / steps;

    /* Baseline: the linear kernel alone, 128 tokens × 256×256 FP32. */
    int64_t n = 256;
    float *w = calloc((size_t)(n * n), 4), *x = calloc((size_t)(T * n), 4), *y = calloc((size_t)(T * n), 4);
    float *scratch = calloc(linear_scratch_floats(T, n), 4);
    for (int64_t i = 0; i < n * n; i++) w[i] = 1e-3f * (float)(i % 97);
    for (int64_t i = 0; i < T * n; i++) x[i] = 1e-2f * (float)(i % 89);
    Tensor W = tensor_f32(w, n, n);
    LinearScratch ls = linear_scratch_init(scratch, T, n);
    int reps = 50;
    t0 = now_seconds();
    for (int i = 0; i < reps; i++) linear_forward(y, x, T, &W, FP8_DEQUANT, &ls);
    double lin_gflops = 2.0 * (double)(T * n * n) * reps / (now_seconds() - t0) / 1e9;

    double tokens = (double)(B * T), act = active_weights(&tr.ps.config, o.n_mtp);
    double attn = 0; /* QKᵀ and PV per token, average T/2 keys, every layer and MTP block */
    for (int l = 0; l < c.num_hidden_layers + o.n_mtp; l++)
        attn += 2.0 * c.num_attention_heads * (c.qk_head_dim + c.v_head_dim) * (double)T / 2;
    double flops_train = tokens * (6.0 * act + 3.0 * attn), flops_fwd = tokens * (2.0 * act + attn);
    printf("model     tiny: %d layers, hidden %d, %d experts top-%d, 1 MTP depth; %.2f M weights active per token\n",
           c.num_hidden_layers, c.hidden_size, c.n_routed_experts, c.num_experts_per_tok, act / 1e6);
    printf("baseline  linear_forward 128 x 256x256 FP32: %.2f GFLOP/s\n", lin_gflops);
    printf("train     %lld x %lld tokens/step: %.1f tokens/s, %.2f GFLOP/s = %.2fx the linear baseline\n", (long long)B,
           (long long)T, tokens / t_train, flops_train / t_train / 1e9, flops_train / t_train / 1e9 / lin_gflops);
    printf("forward   %.1f tokens/s, %.2f GFLOP/s; train/forward time %.2f (ideal ~3)\n", tokens / t_fwd,
           flops_fwd / t_fwd / 1e9, t_train / t_fwd);
    printf("fp8       --precision fp8 step %.3f s vs fp32 step %.3f s: %.2fx wall, %.2fx CPU time (target <= 3x)\n",
           t_fp8, t_train, t_fp8 / t_train, c_fp8 / c_train);
    printf("memory    peak RSS %.1f MiB (parameters + grads + 2 moments: %.1f MiB)\n", (double)peak_rss_bytes() / 1048576.0,
           4.0 * (double)tr.ps.n * 4 / 1048576.0);
    free(seqs), free(w), free(x), free(y), free(scratch);
    trainer_free(&tr);
    return 0;
}
