/**
 * @file moe.cu
 * @brief MoE routing, permutation, gather and combine (fast/moe_cuda.h). The grouped expert GEMM
 *        is fp8_gemm_cuda (kernels/fp8_gemm.cu) with group_start = expert_start.
 *        T tokens, E experts, K = top-k, D hidden, R = T·K permuted rows.
 *
 * Rooflines: the gate reads T·E·4 bytes of logits (4 KB per token) — negligible; permute
 * touches T·K ints a few times; gather moves R·(D + D/32) bytes; combine reads R·D·4 (f32
 * y_perm) + T·D·4 and writes T·D·4: for T = 4096, D = 7168 that is 0.94 + 0.12 + 0.12 GB,
 * ~350 µs at 3.35 TB/s — a bf16 y_perm halves the dominant term.
 *
 * VALIDATION STATUS: make test-gpu and compute-sanitizer pass on an H100 (2026-11-22).
 */
#include <cuda_runtime.h>

#include "common.cuh"
#include "moe_cuda.h"

namespace dsv3 {

constexpr int GATE_MAX_E = 512; /**< experts the gate kernel's shared arrays hold */
constexpr int GATE_WARPS = 4;   /**< tokens (warps) per block */

/** A candidate of argmax_free (ref gate.c): a finite-or-+∞ value beats none; ties → lower index. */
struct Cand {
    int has;     /**< 1: (v, i) is a candidate (v > −∞) */
    float v;     /**< its value */
    int i;       /**< its index */
    int first;   /**< lowest free index seen (fallback when no candidate), INT_MAX if none */
};

/** The reduction of two lanes' candidates: larger value, then lower index; lowest free index kept. */
__device__ __forceinline__ Cand better(const Cand &a, const Cand &b) {
    Cand r;
    r.first = min(a.first, b.first);
    if (a.has && b.has) {
        const bool take_a = a.v > b.v || (a.v == b.v && a.i < b.i);
        r.has = 1, r.v = take_a ? a.v : b.v, r.i = take_a ? a.i : b.i;
    } else if (a.has) {
        r.has = 1, r.v = a.v, r.i = a.i;
    } else {
        r.has = b.has, r.v = b.v, r.i = b.i;
    }
    return r;
}

/** Warp-wide argmax_free: the index ref's sequential scan would return. */
__device__ __forceinline__ int warp_argmax_free(Cand c) {
    for (int off = 16; off > 0; off >>= 1) {
        Cand o;
        o.has = __shfl_xor_sync(0xffffffffu, c.has, off);
        o.v = __shfl_xor_sync(0xffffffffu, c.v, off);
        o.i = __shfl_xor_sync(0xffffffffu, c.i, off);
        o.first = __shfl_xor_sync(0xffffffffu, c.first, off);
        c = better(c, o);
    }
    return c.has ? c.i : c.first;
}

/** Offers value v at index i (if free) to a lane's running candidate, scanning i ascending. */
__device__ __forceinline__ void offer(Cand &c, float v, int i, bool taken) {
    if (taken) return;
    if (c.first == INT_MAX) c.first = i;
    if (v > -INFINITY && (!c.has || v > c.v)) c.has = 1, c.v = v, c.i = i;
}

/** One warp per token: sigmoid, biased choice, group top-2 sums, kept groups, top-K, weights. */
__global__ void __launch_bounds__(GATE_WARPS * 32)
    gate_kernel(int *__restrict__ idx, float *__restrict__ weights, float *__restrict__ scores,
                const float *__restrict__ logits, const float *__restrict__ bias, int64_t T, int E, int G,
                int topk_group, int K, int norm, float rsf) {
    __shared__ float s_score[GATE_WARPS][GATE_MAX_E], s_choice[GATE_WARPS][GATE_MAX_E];
    __shared__ float s_group[GATE_WARPS][32];
    __shared__ int s_kept[GATE_WARPS][32];
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t tok = (int64_t)blockIdx.x * GATE_WARPS + w;
    if (tok >= T) return; /* whole warp */
    const int per = E / G;
    float *sc = s_score[w], *ch = s_choice[w];
    /* 1–2. affinities and biased selection scores */
    for (int e = lane; e < E; e += 32) {
        const float s = sigmoid_ref(logits[tok * E + e]);
        sc[e] = s;
        ch[e] = __fadd_rn(s, bias[e]);
        if (scores) scores[tok * E + e] = s;
    }
    __syncwarp();
    /* 3. group score = sum of the two largest choice values, exactly ref's loop, one lane per group */
    if (lane < G) {
        float m1 = -INFINITY, m2 = -INFINITY;
        for (int e = lane * per; e < (lane + 1) * per; e++) {
            const float v = ch[e];
            if (v > m1) m2 = m1, m1 = v;
            else if (v > m2) m2 = v;
        }
        s_group[w][lane] = __fadd_rn(m1, m2);
    }
    __syncwarp();
    /* 4. keep topk_group groups (lane g owns group g) */
    bool kept = false;
    for (int k = 0; k < topk_group; k++) {
        Cand c = { 0, 0.0f, 0, INT_MAX };
        if (lane < G) offer(c, s_group[w][lane], lane, kept);
        const int gsel = warp_argmax_free(c);
        if (lane == gsel) kept = true;
    }
    s_kept[w][lane] = kept ? 1 : 0;
    __syncwarp();
    for (int e = lane; e < E; e += 32)
        if (!s_kept[w][e / per]) ch[e] = -INFINITY;
    __syncwarp();
    /* 5. top-K experts; lane l owns experts l, l+32, ... (ascending), taken bits in a mask */
    uint32_t taken = 0;
    int chosen = 0; /* lane k < K keeps the k-th choice */
    for (int k = 0; k < K; k++) {
        Cand c = { 0, 0.0f, 0, INT_MAX };
        for (int j = 0, e = lane; e < E; j++, e += 32) offer(c, ch[e], e, (taken >> j) & 1u);
        const int esel = warp_argmax_free(c);
        if (lane == esel % 32) taken |= 1u << (esel / 32);
        if (lane == k) chosen = esel;
    }
    /* 6. weights from the unbiased affinities, summed in selection order (lane 0, like the ref loop) */
    float wk = 0.0f;
    if (lane < K) wk = sc[chosen];
    float sum = 0.0f;
    for (int k = 0; k < K; k++) sum = __fadd_rn(sum, __shfl_sync(0xffffffffu, wk, k));
    if (lane < K) {
        if (norm) wk = __fdiv_rn(wk, sum);
        wk = __fmul_rn(wk, rsf);
        idx[tok * K + lane] = chosen;
        weights[tok * K + lane] = wk;
    }
}

/* ---- permutation ---------------------------------------------------------------------- */

constexpr int PERM_CHUNK = 1024; /**< slots per chunk of the permutation */

/** counts[c][e] = slots of chunk c routed to expert e. */
__global__ void permute_count_kernel(int *__restrict__ counts, const int *__restrict__ idx, int64_t n, int E) {
    extern __shared__ int hist[];
    for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
    __syncthreads();
    const int64_t s0 = (int64_t)blockIdx.x * PERM_CHUNK;
    for (int i = threadIdx.x; i < PERM_CHUNK; i += blockDim.x) {
        const int64_t s = s0 + i;
        if (s < n) {
            const int e = idx[s];
            if (e >= 0 && e < E) atomicAdd(&hist[e], 1);
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) counts[(int64_t)blockIdx.x * E + e] = hist[e];
}

/**
 * One block, one thread per expert (E ≤ 1024): expert_start = exclusive scan of the totals;
 * counts[c][e] ← first row of chunk c's slots of expert e (rows ascend with chunks: stable).
 */
__global__ void permute_scan_kernel(int *__restrict__ expert_start, int *__restrict__ counts, int nchunks, int E) {
    extern __shared__ int buf[]; /* [2][E] ping-pong for the scan */
    const int e = threadIdx.x;
    int total = 0;
    if (e < E)
        for (int c = 0; c < nchunks; c++) total += counts[(int64_t)c * E + e];
    int *in = buf, *out = buf + E;
    if (e < E) in[e] = total;
    __syncthreads();
    for (int off = 1; off < E; off <<= 1) { /* inclusive Hillis–Steele scan */
        if (e < E) out[e] = in[e] + (e >= off ? in[e - off] : 0);
        __syncthreads();
        int *tmp = in;
        in = out, out = tmp;
    }
    if (e < E) {
        const int start = in[e] - total;
        expert_start[e] = start;
        if (e == E - 1) expert_start[E] = in[e];
        int run = start;
        for (int c = 0; c < nchunks; c++) {
            const int k = counts[(int64_t)c * E + e];
            counts[(int64_t)c * E + e] = run;
            run += k;
        }
    }
}

/**
 * One warp per chunk, 32 slots per round in slot order: peers with the same expert get
 * consecutive rows in lane order (__match_any_sync), the expert's cursor then advances.
 */
__global__ void permute_place_kernel(int *__restrict__ perm, int *__restrict__ row_of_slot,
                                     const int *__restrict__ idx, const int *__restrict__ offsets, int64_t n, int E) {
    extern __shared__ int cursor[];
    const int lane = threadIdx.x;
    for (int e = lane; e < E; e += 32) cursor[e] = offsets[(int64_t)blockIdx.x * E + e];
    __syncwarp();
    const int64_t s0 = (int64_t)blockIdx.x * PERM_CHUNK;
    for (int r = 0; r < PERM_CHUNK; r += 32) {
        const int64_t s = s0 + r + lane;
        int e = s < n ? idx[s] : -1;
        if (e < 0 || e >= E) e = -1;
        const unsigned peers = __match_any_sync(0xffffffffu, e);
        const int rank = __popc(peers & ((1u << lane) - 1u));
        const int base = e >= 0 ? cursor[e] : 0;
        __syncwarp();
        if (e >= 0) {
            if (rank == 0) cursor[e] = base + __popc(peers);
            perm[base + rank] = (int)s;
            row_of_slot[s] = base + rank;
        }
        __syncwarp();
    }
}

/* ---- gather and combine ---------------------------------------------------------------- */

/** One block per permuted row: copy the token's D e4m3 bytes (16 at a time) and D/128 scales. */
__global__ void gather_rows_kernel(uint8_t *__restrict__ xq_perm, float *__restrict__ xs_perm,
                                   const uint8_t *__restrict__ xq, const float *__restrict__ xs,
                                   const int *__restrict__ perm, int64_t K, int64_t D) {
    const int64_t r = blockIdx.x;
    const int64_t tok = perm[r] / K;
    const uint4 *src = reinterpret_cast<const uint4 *>(xq + tok * D);
    uint4 *dst = reinterpret_cast<uint4 *>(xq_perm + r * D);
    for (int64_t i = threadIdx.x; i < D / 16; i += blockDim.x) dst[i] = src[i];
    for (int64_t i = threadIdx.x; i < D / 128; i += blockDim.x) xs_perm[r * (D / 128) + i] = xs[tok * (D / 128) + i];
}

constexpr int COMBINE_MAX_K = 32; /**< largest top-k the combine kernel sorts */

/** One block per token: its K rows sorted ascending (thread 0, into shared memory), then each column summed in that order. */
__global__ void combine_kernel(float *__restrict__ out, const void *__restrict__ y_perm, FastDType y_dtype,
                               const void *__restrict__ y_shared, FastDType shared_dtype,
                               const int *__restrict__ row_of_slot, const float *__restrict__ weights, int64_t K,
                               int64_t D) {
    __shared__ int rows[COMBINE_MAX_K];
    __shared__ float wts[COMBINE_MAX_K];
    const int64_t t = blockIdx.x;
    if (threadIdx.x == 0) {
        for (int k = 0; k < K; k++) { /* insertion sort by row = ascending expert, as ref's row loop */
            const int r = row_of_slot[t * K + k];
            const float wv = weights[t * K + k];
            int j = k;
            while (j > 0 && rows[j - 1] > r) {
                rows[j] = rows[j - 1];
                wts[j] = wts[j - 1];
                j--;
            }
            rows[j] = r;
            wts[j] = wv;
        }
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        float acc = 0.0f;
        for (int k = 0; k < K; k++)
            acc = __fadd_rn(acc, __fmul_rn(wts[k], load_elem(y_perm, y_dtype, (int64_t)rows[k] * D + i)));
        if (y_shared) acc = __fadd_rn(acc, load_elem(y_shared, shared_dtype, t * D + i));
        out[t * D + i] = acc;
    }
}

} // namespace dsv3

using namespace dsv3;

extern "C" int gate_forward_cuda(int *idx, float *weights, float *scores, const float *logits, const float *bias,
                                 int64_t T, const Config *c, cudaStream_t stream, Err *err) {
    const char *fn = "gate_forward_cuda";
    const int E = c->n_routed_experts, G = c->n_group, K = c->num_experts_per_tok, kg = c->topk_group;
    /* Any E up to GATE_MAX_E: lane l owns experts l, l+32, ... < E (lanes past E own none) and
     * bit j of its `taken` mask is expert l + 32j, j < 16; groups are one lane each (G <= 32). */
    if (E <= 0 || E > GATE_MAX_E)
        return err_set(err, "%s: n_routed_experts = %d, need 1..%d", fn, E, GATE_MAX_E);
    if (G <= 0 || G > 32 || E % G != 0)
        return err_set(err, "%s: n_group = %d, need 1..32 dividing n_routed_experts = %d", fn, G, E);
    if (K <= 0 || K > 32 || K > E) return err_set(err, "%s: num_experts_per_tok = %d, need 1..32 and <= %d", fn, K, E);
    if (kg <= 0 || kg > G) return err_set(err, "%s: topk_group = %d, need 1..n_group = %d", fn, kg, G);
    if ((int64_t)K > (int64_t)kg * (E / G))
        return err_set(err, "%s: num_experts_per_tok = %d exceeds the %d experts of the kept groups", fn, K, kg * (E / G));
    if (T < 0) return err_set(err, "%s: T = %lld < 0", fn, (long long)T);
    if (T == 0) return 0;
    const int64_t blocks = ceil_div<int64_t>(T, GATE_WARPS);
    if (blocks > 0x7FFFFFFF) return err_set(err, "%s: T = %lld is too many tokens for one grid", fn, (long long)T);
    gate_kernel<<<(unsigned)blocks, GATE_WARPS * 32, 0, stream>>>(idx, weights, scores, logits, bias, T, E, G, kg, K,
                                                                   c->norm_topk_prob, (float)c->routed_scaling_factor);
    return fast_check_launch(fn, "gate_kernel", err);
}

extern "C" size_t moe_permute_workspace_bytes(int64_t T, int64_t K, int64_t E) {
    if (T <= 0 || K <= 0 || E <= 0) return 0;
    return (size_t)ceil_div<int64_t>(T * K, PERM_CHUNK) * (size_t)E * sizeof(int);
}

extern "C" int moe_permute_cuda(int *perm, int *row_of_slot, int *expert_start, const int *idx, int64_t T, int64_t K,
                                int64_t E, void *workspace, size_t workspace_bytes, cudaStream_t stream, Err *err) {
    const char *fn = "moe_permute_cuda";
    if (T < 0 || K <= 0 || E <= 0 || E > 1024)
        return err_set(err, "%s: T = %lld, K = %lld, E = %lld: need T >= 0, K > 0, 0 < E <= 1024", fn, (long long)T,
                       (long long)K, (long long)E);
    const int64_t n = T * K;
    if (n > 0x7FFFFFFF) return err_set(err, "%s: T·K = %lld slots exceed 2^31", fn, (long long)n);
    const size_t need = moe_permute_workspace_bytes(T, K, E);
    if (n > 0 && (!workspace || workspace_bytes < need))
        return err_set(err, "%s: needs %zu workspace bytes, got %zu", fn, need, workspace ? workspace_bytes : (size_t)0);
    const int nchunks = (int)ceil_div<int64_t>(n, PERM_CHUNK);
    int *counts = static_cast<int *>(workspace);
    const int Ei = (int)E;
    if (n == 0) {
        if (fast_cuda_err(cudaMemsetAsync(expert_start, 0, (size_t)(E + 1) * sizeof(int), stream), fn, "cudaMemsetAsync", err))
            return -1;
        return 0;
    }
    permute_count_kernel<<<nchunks, 256, (size_t)E * sizeof(int), stream>>>(counts, idx, n, Ei);
    if (fast_check_launch(fn, "permute_count_kernel", err)) return -1;
    const int threads = (int)(ceil_div<int64_t>(E, 32) * 32);
    permute_scan_kernel<<<1, threads, 2 * (size_t)E * sizeof(int), stream>>>(expert_start, counts, nchunks, Ei);
    if (fast_check_launch(fn, "permute_scan_kernel", err)) return -1;
    permute_place_kernel<<<nchunks, 32, (size_t)E * sizeof(int), stream>>>(perm, row_of_slot, idx, counts, n, Ei);
    return fast_check_launch(fn, "permute_place_kernel", err);
}

extern "C" int moe_gather_rows_cuda(uint8_t *xq_perm, float *xs_perm, const uint8_t *xq, const float *xs,
                                    const int *perm, int64_t R, int64_t K, int64_t D, cudaStream_t stream, Err *err) {
    const char *fn = "moe_gather_rows_cuda";
    if (R < 0 || K <= 0 || D <= 0 || D % 128 != 0)
        return err_set(err, "%s: R = %lld, K = %lld, D = %lld: need R >= 0, K > 0, D a positive multiple of 128", fn,
                       (long long)R, (long long)K, (long long)D);
    if (((uintptr_t)xq_perm | (uintptr_t)xq) % 16 != 0) return err_set(err, "%s: xq and xq_perm must be 16-byte aligned", fn);
    if (R == 0) return 0;
    if (R > 0x7FFFFFFF) return err_set(err, "%s: R = %lld rows exceed the grid limit", fn, (long long)R);
    gather_rows_kernel<<<(unsigned)R, 128, 0, stream>>>(xq_perm, xs_perm, xq, xs, perm, K, D);
    return fast_check_launch(fn, "gather_rows_kernel", err);
}

extern "C" int moe_combine_cuda(float *out, const void *y_perm, FastDType y_dtype, const void *y_shared,
                                FastDType shared_dtype, const int *row_of_slot, const float *weights, int64_t T,
                                int64_t K, int64_t D, cudaStream_t stream, Err *err) {
    const char *fn = "moe_combine_cuda";
    if (T < 0 || K <= 0 || K > COMBINE_MAX_K || D <= 0)
        return err_set(err, "%s: T = %lld, K = %lld, D = %lld: need T >= 0, 1 <= K <= %d, D > 0", fn, (long long)T,
                       (long long)K, (long long)D, COMBINE_MAX_K);
    if ((y_dtype != FAST_F32 && y_dtype != FAST_BF16) || (shared_dtype != FAST_F32 && shared_dtype != FAST_BF16))
        return err_set(err, "%s: y_dtype %d / shared_dtype %d must be f32 or bf16", fn, (int)y_dtype, (int)shared_dtype);
    if (T == 0) return 0;
    if (T > 0x7FFFFFFF) return err_set(err, "%s: T = %lld exceeds the grid limit", fn, (long long)T);
    combine_kernel<<<(unsigned)T, 256, 0, stream>>>(out, y_perm, y_dtype, y_shared, shared_dtype, row_of_slot, weights,
                                                     K, D);
    return fast_check_launch(fn, "combine_kernel", err);
}
