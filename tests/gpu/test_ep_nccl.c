/**
 * @file test_ep_nccl.c
 * @brief The NCCL transport with a 1-rank communicator (the GPU machines have one GPU):
 *  1. alltoallv to self from host buffers (staged) and from device buffers (direct);
 *  2. ref/ep/ep.c's expert-parallel MoE over NCCL == moe_forward, bit for bit, on a synthetic
 *     FP32 MoE layer (the same check the CPU transport passes with 2, 4 and 8 ranks).
 * Skips with a message when there is no GPU. Prints "N passed, N failed".
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/block.h"
#include "ep/ep.h"
#include "ep_nccl.h"
#include "base/rng.h"

static int passed, failed;

static void check(int ok, const char *what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    ok ? passed++ : failed++;
}

static int self_exchange(EpTransport *t) {
    Err err;
    char send[3][64], recv[3][64];
    for (int i = 0; i < 3; i++) memset(send[i], 'a' + i, sizeof send[i]);
    size_t bytes[1] = { 100 }, offs[1] = { 10 };
    memset(recv, 0, sizeof recv);
    if (t->alltoallv(t, 0, send, bytes, offs, recv, bytes, offs, &err)) {
        printf("  %s\n", err.msg);
        return 0;
    }
    int ok = memcmp((char *)send + 10, (char *)recv + 10, 100) == 0;
    /* Device buffers go straight to NCCL. */
    void *d_send, *d_recv;
    if (cudaMalloc(&d_send, 256) != cudaSuccess || cudaMalloc(&d_recv, 256) != cudaSuccess) return 0;
    cudaMemcpy(d_send, send, 192, cudaMemcpyHostToDevice);
    cudaMemset(d_recv, 0, 256);
    if (t->alltoallv(t, 0, d_send, bytes, offs, d_recv, bytes, offs, &err)) {
        printf("  %s\n", err.msg);
        ok = 0;
    }
    char back[192];
    cudaMemcpy(back, d_recv, 192, cudaMemcpyDeviceToHost);
    ok = ok && memcmp((char *)send + 10, back + 10, 100) == 0;
    cudaFree(d_send);
    cudaFree(d_recv);
    return ok;
}

/** A random FP32 MoE layer: 8 experts in 4 groups, top-2, one shared expert, D = 64, Ie = 32. */
static int moe_over_nccl(EpTransport *t) {
    Config c;
    memset(&c, 0, sizeof c);
    c.hidden_size = 64, c.moe_intermediate_size = 32, c.n_routed_experts = 8, c.n_shared_experts = 1;
    c.num_experts_per_tok = 2, c.n_group = 4, c.topk_group = 2, c.routed_scaling_factor = 2.5, c.norm_topk_prob = 1;
    int D = 64, I = 32, E = 8, T = 11;
    Rng rng;
    rng_seed(&rng, 5);
    size_t n_w = (size_t)E * 3 * I * D + 3 * I * D + (size_t)E * D + E;
    float *wmem = malloc(sizeof(float) * n_w), *p = wmem;
    for (size_t i = 0; i < n_w; i++) wmem[i] = 0.2f * rng_normal(&rng);
    LayerWeights w;
    memset(&w, 0, sizeof w);
    FFNWeights experts[8];
    for (int e = 0; e < E; e++) {
        experts[e].gate_proj = tensor_f32(p, I, D), p += I * D;
        experts[e].up_proj = tensor_f32(p, I, D), p += I * D;
        experts[e].down_proj = tensor_f32(p, D, I), p += D * I;
    }
    w.experts = experts;
    w.shared_experts.gate_proj = tensor_f32(p, I, D), p += I * D;
    w.shared_experts.up_proj = tensor_f32(p, I, D), p += I * D;
    w.shared_experts.down_proj = tensor_f32(p, D, I), p += D * I;
    w.gate = tensor_f32(p, E, D), p += E * D;
    w.e_score_correction_bias = p;
    w.is_moe = 1;
    /* Activations and context sized for T tokens. */
    LayerActsSpec spec = { T, 0, 0, 1, ATTN_ABSORB, 0 };
    LayerActs acts;
    Arena count = { 0 };
    layer_acts_layout(&acts, &c, &spec, &count);
    char *mem = malloc(count.used + 64);
    Arena ar = { mem, 0, count.used + 64, 0 };
    layer_acts_layout(&acts, &c, &spec, &ar);
    float *lin = malloc(sizeof(float) * linear_scratch_floats(T, 2 * D)), gate_work[2 * (8 + 4)];
    ForwardContext ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.cfg = &c, ctx.lin = linear_scratch_init(lin, T, 2 * D), ctx.gate_work = gate_work;
    float *x = malloc(sizeof(float) * T * D), *ref = malloc(sizeof(float) * T * D), *got = malloc(sizeof(float) * T * D);
    for (int i = 0; i < T * D; i++) x[i] = rng_normal(&rng);
    moe_forward(ref, x, T, &w, &acts.moe, &ctx);
    EpPlan plan;
    EpRank r;
    Err err;
    int ok = ep_plan_init(&plan, 1, E, NULL, 0, &err) == 0 && ep_rank_init(&r, 0, t, &plan, &err) == 0 &&
             ep_moe_forward(got, x, T, &w, &acts.moe, &r, &ctx, &err) == 0;
    if (!ok) printf("  %s\n", err.msg);
    ok = ok && memcmp(got, ref, sizeof(float) * T * D) == 0;
    ep_rank_free(&r);
    ep_plan_free(&plan);
    free(x), free(ref), free(got), free(lin), free(mem), free(wmem);
    return ok;
}

int main(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        printf("SKIP: no CUDA device (cudaGetDeviceCount: %s, %d devices)\n0 passed, 0 failed\n",
               e == cudaSuccess ? "ok" : cudaGetErrorString(e), n);
        return 0;
    }
    LaunchEnv env;
    Err err;
    EpTransport t;
    if (launch_env_read(&env, &err) || ep_nccl_transport_init(&t, &env, 30.0, &err)) {
        printf("FAIL NCCL transport init: %s\n0 passed, 1 failed\n", err.msg);
        return 1;
    }
    check(t.nranks == 1, "1-rank communicator from the torchrun environment defaults");
    check(self_exchange(&t), "alltoallv to self: host (staged) and device buffers");
    check(moe_over_nccl(&t), "expert-parallel MoE over NCCL == moe_forward, bit for bit");
    ep_nccl_transport_free(&t);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
