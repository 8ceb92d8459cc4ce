/**
 * @file mla_decode.cu
 * @brief MLA decode over the paged latent cache (fast/mla_decode.h; oracle: ref mla_attend_absorb).
 *        B requests, H heads, S_b positions, Dc = 512 latent, Dr = 64 rope, 576 = Dc + Dr.
 *
 * Roofline: per request FLOPs = 2·H·S·(576 + 512) (scores, then P·V), bytes ≥ S·576·2 (the
 * cache, read once). Intensity = 2·128·1088/1152 ≈ 242 FLOP/byte for H = 128: just under the
 * bf16 ridge (989e12 / 3.35e12 ≈ 295), so a kernel must use tensor cores to be bandwidth-bound;
 * with mma.sync (about 2/3 of the wgmma rate) it becomes compute-bound. B=64, S=8192: 604 MB,
 * 146 GFLOP → 180 µs at 3.35 TB/s, ~220 µs at 660 TFLOP/s.
 *
 * Design (one CTA = 64 heads × a range of positions of one request, 8 warps, tiles of 32
 * positions, a cp.async ring of tiles):
 *   phase 1  S = Q·Kᵀ: warp w → positions 16(w%2).. (2 n8 tiles) × KSPLIT m16 tiles of heads ×
 *            1/KSPLIT of the 576-d dot (KSPLIT = 2 on Hopper, 1 where shared memory is short),
 *            mma.m16n8k16 bf16; the KSPLIT partial S tiles go to shared memory.
 *   phase 2  sums the partials, ·scale·log2(e), masks positions past the end with −∞, then
 *            online softmax: 4 threads per head row (8 positions each) update the running max
 *            m and sum l (registers; the row→thread map never changes), write P (bf16) and the
 *            rescale factor α = 2^(m_old − m_new) to shared memory.
 *   phase 3  O = α·O + P·V: warp w → all 64 heads × latent columns 64w.. (128 FP32 accumulators
 *            per thread), V = the c_kv part of the tile, via ldmatrix.trans.
 * The 64-head Q tile (576 × bf16) stays in shared memory for the whole CTA; both head halves
 * of a request read the same cache tiles (from L2 the second time, if they run together).
 *
 * VALIDATION STATUS: make test-gpu and compute-sanitizer pass on an H100 (2026-11-22).
 */
#include <cuda_runtime.h>

#include "common.cuh"
#include "mla_decode.h"
#include "mla_split.h"

namespace dsv3 {

/** Static shape of the decode kernel. */
template <int STAGES_, int KSPLIT_> struct MlaTile {
    static constexpr int STAGES = STAGES_;       /**< cp.async ring depth */
    static constexpr int KSPLIT = KSPLIT_;       /**< phase 1: warps splitting the 576-d dot (partial S buffers) */
    static constexpr int HB = MLA_HEADS_PER_CTA; /**< heads per CTA */
    static constexpr int TN = 32;                /**< positions per tile */
    static constexpr int D = MLA_DC + MLA_DR;    /**< 576 */
    static constexpr int LDK = D + 8;            /**< padded row (elements): 1168 bytes, rows 4 banks apart */
    static constexpr int LDS_S = TN + 4;         /**< S row (floats) */
    static constexpr int LDP = TN + 8;           /**< P row (bf16): 80 bytes */
    static constexpr int THREADS = 256;            /**< 8 warps */
    static constexpr int Q_BYTES = HB * LDK * 2;   /**< the Q tile */
    static constexpr int K_BYTES = TN * LDK * 2;   /**< one tile of the ring */
    static constexpr int S_BYTES = HB * LDS_S * 4; /**< scores */
    static constexpr int P_BYTES = HB * LDP * 2;   /**< bf16 probabilities */
    static constexpr int SMEM = Q_BYTES + STAGES * K_BYTES + KSPLIT * S_BYTES + P_BYTES + HB * 4 * 2; /**< + α and l rows */
};

/** The kernel's arguments (device copy of MlaDecodeParams plus the resolved split count). */
struct MlaArgs {
    float *u;                 /**< [B][H][512] output */
    float *lse;               /**< [B][H] natural log-sum-exp, or NULL */
    const uint16_t *q_abs;    /**< [B][H][512] bf16 */
    const uint16_t *q_pe;     /**< [B][H][64] bf16 */
    const uint16_t *kv_cache; /**< [blocks][64][576] bf16 */
    const int *block_table;   /**< [B][block_table_stride] */
    int block_table_stride;   /**< entries per block-table row */
    const int *seq_lens;      /**< [B] */
    int B;                    /**< requests */
    int H;                    /**< heads */
    int num_splits;           /**< position splits per request */
    float scale_log2;         /**< softmax scale · log2(e) */
    float *o_part;            /**< [B][splits][H][512] normalized partial outputs */
    float *lse2_part;         /**< [B][splits][H] base-2 log-sum-exp of each split */
};

constexpr float LOG2E = 1.4426950408889634f; /**< log2(e) */
constexpr float LN2 = 0.6931471805599453f;   /**< ln(2) */

/** One CTA: 64 heads (blockIdx.y) × one position split (blockIdx.x) of request blockIdx.z. */
template <class Tile> __global__ void __launch_bounds__(Tile::THREADS, 1) mla_decode_kernel(const MlaArgs p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr int HB = Tile::HB, TN = Tile::TN, LDK = Tile::LDK, LDS_S = Tile::LDS_S, LDP = Tile::LDP;
    constexpr int STAGES = Tile::STAGES;
    extern __shared__ __align__(16) uint8_t smem[];
    uint16_t *sQ = reinterpret_cast<uint16_t *>(smem);
    uint16_t *sK = reinterpret_cast<uint16_t *>(smem + Tile::Q_BYTES);
    constexpr int KSPLIT = Tile::KSPLIT;
    float *sS = reinterpret_cast<float *>(smem + Tile::Q_BYTES + STAGES * Tile::K_BYTES); /* [KSPLIT][HB][LDS_S] */
    uint16_t *sP = reinterpret_cast<uint16_t *>(smem + Tile::Q_BYTES + STAGES * Tile::K_BYTES + KSPLIT * Tile::S_BYTES);
    float *sAlpha = reinterpret_cast<float *>(smem + Tile::Q_BYTES + STAGES * Tile::K_BYTES + KSPLIT * Tile::S_BYTES +
                                              Tile::P_BYTES);
    float *sL = sAlpha + HB; /* final row sums, then reused for 1/l */

    const int split = blockIdx.x, h0 = blockIdx.y * HB, b = blockIdx.z;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4, t = lane % 4;

    /* This CTA's positions [t_begin, t_end) of request b. */
    static_assert(TN == MLA_SPLIT_TILE && MLA_PAGE == MLA_SPLIT_PAGE, "fast/mla_split.h's tile and page");
    const int S_b = p.seq_lens[b];
    int t_begin, t_end;
    mla_split_range(S_b, p.num_splits, split, &t_begin, &t_end);
    const int ntiles = t_end > t_begin ? ceil_div(t_end - t_begin, TN) : 0;
    const int *btab = p.block_table + (int64_t)b * p.block_table_stride;

    /* Q tile: rows = heads h0.., [q_abs (512) | q_pe (64)], 72 chunks of 16 bytes per row. */
    for (int c = tid; c < HB * 72; c += Tile::THREADS) {
        const int r = c / 72, ch = c % 72;
        const int64_t bh = (int64_t)b * p.H + h0 + r;
        const uint16_t *src = ch < 64 ? p.q_abs + bh * MLA_DC + ch * 8 : p.q_pe + bh * MLA_DR + (ch - 64) * 8;
        cp_async_16(sQ + r * LDK + ch * 8, src, 16);
    }
    /* Cache tile i: positions t_begin + 32i .. (+31), zero rows past t_end. */
    auto load_tile = [&](int stage, int i) {
        uint16_t *dst = sK + stage * (TN * LDK);
        const int tt0 = t_begin + i * TN;
        for (int c = tid; c < TN * 72; c += Tile::THREADS) {
            const int j = c / 72, ch = c % 72;
            const int tok = tt0 + j;
            const bool ok = tok < t_end;
            const uint16_t *src = p.kv_cache;
            if (ok) src = p.kv_cache + mla_page_row(btab, tok) * Tile::D + ch * 8;
            cp_async_16(dst + j * LDK + ch * 8, src, ok ? 16 : 0);
        }
    };
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < ntiles) load_tile(s, s);
        cp_async_commit(); /* group 0 also carries Q */
    }

    /* Phase-2 ownership: row r2 = tid / 4, positions 8·q2 .. 8·q2+7. */
    const int r2 = tid / 4, q2 = tid % 4;
    float m_run = -INFINITY, l_run = 0.0f;
    /* Phase 1 roles: MT1 = KSPLIT m16 tiles of heads from wr1, positions wn1..wn1+15, k part kp1. */
    constexpr int MT1 = KSPLIT, KLEN = Tile::D / KSPLIT;
    const int wn1 = (warp & 1) * 16;
    const int kp1 = (warp >> 1) % KSPLIT;
    const int wr1 = ((warp >> 1) / KSPLIT) * 16 * MT1;
    /* Phase 3 roles: all 64 heads (4 m16 tiles) × latent columns wc3..wc3+63 (8 n8 tiles). */
    const int wc3 = warp * 64;
    float o[4][8][4];
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[mt][j][e] = 0.0f;

    for (int it = 0; it < ntiles; it++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads(); /* (A) tile it landed; phase 3 of it-1 is over everywhere */
        if (it + STAGES - 1 < ntiles) load_tile((it + STAGES - 1) % STAGES, it + STAGES - 1);
        cp_async_commit();
        const uint16_t *tK = sK + (it % STAGES) * (TN * LDK);
        const int valid = min(TN, t_end - (t_begin + it * TN));

        /* Phase 1: partial S[16·MT1 heads][16 positions] per warp over k part kp1 of the 576-d dot.
         * MT1 = 2 (Hopper): one B fragment feeds two m tiles, 384 instead of 512 bytes of
         * ldmatrix per mma; shared-memory bandwidth is this kernel's limit (ncu, docs/kernels.md). */
        {
            float acc[MT1][2][4];
#pragma unroll
            for (int mt = 0; mt < MT1; mt++)
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) acc[mt][j][e] = 0.0f;
#pragma unroll 2
            for (int k0 = kp1 * KLEN; k0 < (kp1 + 1) * KLEN; k0 += 16) {
                uint32_t bb[4];
                ldmatrix_x4(bb[0], bb[1], bb[2], bb[3],
                            tK + (wn1 + (lane & 7) + ((lane >> 4) << 3)) * LDK + k0 + ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT1; mt++) {
                    uint32_t a[4];
                    ldmatrix_x4(a[0], a[1], a[2], a[3], sQ + (wr1 + 16 * mt + (lane & 15)) * LDK + k0 + (lane >> 4) * 8);
                    mma_bf16_16816(acc[mt][0], a, bb[0], bb[1]);
                    mma_bf16_16816(acc[mt][1], a, bb[2], bb[3]);
                }
            }
            float *sSk = sS + kp1 * (HB * LDS_S);
#pragma unroll
            for (int mt = 0; mt < MT1; mt++)
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        sSk[(wr1 + 16 * mt + g + 8 * (e / 2)) * LDS_S + wn1 + 8 * j + 2 * t + (e % 2)] = acc[mt][j][e];
        }
        __syncthreads(); /* (B) S complete */

        /* Phase 2: online softmax of row r2 (4 threads per row, a quad of lanes). */
        {
            float sv[8], mx = -INFINITY;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                float sum_k = sS[r2 * LDS_S + 8 * q2 + i];
#pragma unroll
                for (int kp = 1; kp < KSPLIT; kp++) sum_k += sS[kp * (HB * LDS_S) + r2 * LDS_S + 8 * q2 + i];
                sv[i] = 8 * q2 + i < valid ? sum_k * p.scale_log2 : -INFINITY;
                mx = fmaxf(mx, sv[i]);
            }
            mx = quad_max(mx);
            const float m_new = fmaxf(m_run, mx); /* finite: every tile has ≥ 1 valid position */
            const float alpha = exp2f(m_run - m_new); /* 0 on the first tile (m_run = −∞) */
            float sum = 0.0f;
            uint32_t packed[4];
#pragma unroll
            for (int i = 0; i < 8; i += 2) {
                const float p0 = exp2f(sv[i] - m_new), p1 = exp2f(sv[i + 1] - m_new);
                sum += p0 + p1;
                packed[i / 2] = (uint32_t)f32_to_bf16_bits(p0) | ((uint32_t)f32_to_bf16_bits(p1) << 16);
            }
            sum = quad_sum(sum);
            l_run = l_run * alpha + sum;
            m_run = m_new;
            *reinterpret_cast<uint4 *>(sP + r2 * LDP + 8 * q2) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
            if (q2 == 0) sAlpha[r2] = alpha;
        }
        __syncthreads(); /* (C) P and α complete */

        /* Phase 3: O[64 heads][64 cols] = α·O + P[64][32]·V[32][64]. Each V fragment feeds 4 m
         * tiles and each P fragment 8 n tiles: 128 bytes of ldmatrix per mma (was 256). */
        {
#pragma unroll
            for (int mt = 0; mt < 4; mt++) {
                const float al0 = sAlpha[16 * mt + g], al1 = sAlpha[16 * mt + g + 8];
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    o[mt][j][0] *= al0;
                    o[mt][j][1] *= al0;
                    o[mt][j][2] *= al1;
                    o[mt][j][3] *= al1;
                }
            }
#pragma unroll
            for (int ks = 0; ks < TN; ks += 16) {
                uint32_t a[4][4];
#pragma unroll
                for (int mt = 0; mt < 4; mt++)
                    ldmatrix_x4(a[mt][0], a[mt][1], a[mt][2], a[mt][3], sP + (16 * mt + (lane & 15)) * LDP + ks + (lane >> 4) * 8);
#pragma unroll
                for (int j = 0; j < 8; j += 2) {
                    uint32_t v0, v1, v2, v3;
                    ldmatrix_x4_trans(v0, v1, v2, v3,
                                      tK + (ks + (lane & 7) + ((lane >> 3) & 1) * 8) * LDK + wc3 + 8 * j + (lane >> 4) * 8);
#pragma unroll
                    for (int mt = 0; mt < 4; mt++) {
                        mma_bf16_16816(o[mt][j], a[mt], v0, v1);
                        mma_bf16_16816(o[mt][j + 1], a[mt], v2, v3);
                    }
                }
            }
        }
    }
    cp_async_wait<0>();

    /* Epilogue: rows' l (and lse) from the phase-2 owners to the phase-3 owners. */
    __syncthreads();
    if (q2 == 0) {
        sL[r2] = l_run;
        sAlpha[r2] = l_run > 0.0f ? m_run + log2f(l_run) : -INFINITY; /* base-2 log-sum-exp */
    }
    __syncthreads();
    const int64_t bh0 = (int64_t)b * p.H + h0;
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const int row = 16 * mt + g + 8 * hh;
            const float l = sL[row];
            const float inv = l > 0.0f ? 1.0f / l : 0.0f;
            float *dst = p.num_splits > 1
                             ? p.o_part + (((int64_t)b * p.num_splits + split) * p.H + h0 + row) * MLA_DC
                             : p.u + (bh0 + row) * MLA_DC;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int c = wc3 + 8 * j + 2 * t;
                *reinterpret_cast<float2 *>(dst + c) = make_float2(o[mt][j][2 * hh] * inv, o[mt][j][2 * hh + 1] * inv);
            }
        }
    if (tid < HB) {
        const float lse2 = sAlpha[tid];
        if (p.num_splits > 1) p.lse2_part[((int64_t)b * p.num_splits + split) * p.H + h0 + tid] = lse2;
        else if (p.lse) p.lse[bh0 + tid] = lse2 * LN2;
    }
#endif
}

/**
 * Merges the splits of one (request, head): u = Σ_s w_s·O_s / Σ_s w_s with
 * w_s = 2^(lse2_s − max lse2); splits with no positions have lse2 = −∞ and weight 0.
 * One block of 128 threads per (b, h), 4 latent columns per thread.
 */
__global__ void mla_combine_kernel(const MlaArgs p) {
    const int h = blockIdx.x, b = blockIdx.y;
    const int S = p.num_splits;
    const float *lse2 = p.lse2_part + (int64_t)b * S * p.H + h;
    const float mx = mla_combine_max(lse2, p.H, S);
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float wsum = 0.0f;
    const int c = threadIdx.x * 4;
    if (mx > -INFINITY) {
        for (int s = 0; s < S; s++) {
            const float w = mla_combine_weight(lse2[(int64_t)s * p.H], mx);
            const float4 v = *reinterpret_cast<const float4 *>(p.o_part + (((int64_t)b * S + s) * p.H + h) * MLA_DC + c);
            acc.x += w * v.x, acc.y += w * v.y, acc.z += w * v.z, acc.w += w * v.w;
            wsum += w;
        }
    }
    const float inv = wsum > 0.0f ? 1.0f / wsum : 0.0f;
    *reinterpret_cast<float4 *>(p.u + ((int64_t)b * p.H + h) * MLA_DC + c) =
        make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
    if (p.lse && threadIdx.x == 0) p.lse[(int64_t)b * p.H + h] = mx > -INFINITY ? (mx + log2f(wsum)) * LN2 : -INFINITY;
}

template <class Tile> static int launch(const MlaArgs &a, cudaStream_t stream, Err *err) {
    const char *fn = "mla_decode_cuda";
    if (fast_cuda_err(cudaFuncSetAttribute(mla_decode_kernel<Tile>, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::SMEM),
                      fn, "cudaFuncSetAttribute", err))
        return -1;
    dim3 grid((unsigned)a.num_splits, (unsigned)(a.H / Tile::HB), (unsigned)a.B);
    mla_decode_kernel<Tile><<<grid, Tile::THREADS, Tile::SMEM, stream>>>(a);
    return fast_check_launch(fn, "mla_decode_kernel", err);
}

} // namespace dsv3

using namespace dsv3;

extern "C" int mla_decode_num_splits(int B, int H, int max_seq_len) {
    FastDevice dev;
    if (B <= 0 || H <= 0 || fast_device(&dev, NULL)) return 1;
    /* mla_split_count: at most one wave (one CTA per SM: 210 KB of shared memory), ≥ 128 positions
     * per split. Measured on H100 (docs/benchmarks.md, split sweep): best or within 2% of best at
     * B = 1, 32, 64, 128; the former "1.5 waves, ≥ 256 positions" rule was 1.38× slower at B = 1
     * and 1.06× at B = 32. */
    return mla_split_count(dev.sm_count, B, H, max_seq_len);
}

extern "C" size_t mla_decode_workspace_bytes(int B, int H, int num_splits) {
    if (num_splits <= 1 || B <= 0 || H <= 0) return 0;
    return (size_t)B * (size_t)num_splits * (size_t)H * (MLA_DC + 1) * sizeof(float);
}

extern "C" int mla_decode_cuda(const MlaDecodeParams *p, cudaStream_t stream, Err *err) {
    const char *fn = "mla_decode_cuda";
    if (p->B < 0 || p->H <= 0 || p->H % MLA_HEADS_PER_CTA != 0)
        return err_set(err, "%s: B = %d, H = %d: need B >= 0 and H a positive multiple of %d", fn, p->B, p->H,
                       MLA_HEADS_PER_CTA);
    if (p->B > 65535) return err_set(err, "%s: B = %d exceeds the grid limit 65535", fn, p->B);
    if (!p->u || !p->q_abs || !p->q_pe || !p->kv_cache || !p->block_table || !p->seq_lens)
        return err_set(err, "%s: a NULL pointer among u, q_abs, q_pe, kv_cache, block_table, seq_lens", fn);
    if (((uintptr_t)p->u | (uintptr_t)p->q_abs | (uintptr_t)p->q_pe | (uintptr_t)p->kv_cache) % 16 != 0)
        return err_set(err, "%s: u, q_abs, q_pe and kv_cache must be 16-byte aligned", fn);
    if (p->block_table_stride < 1) return err_set(err, "%s: block_table_stride = %d, need >= 1", fn, p->block_table_stride);
    if (p->B == 0) return 0;
    FastDevice dev;
    if (fast_device(&dev, err)) return -1;
    if (dev.cc_major < 8)
        return err_set(err, "%s: needs compute capability >= 8.0 (bf16 mma), device %s is %d.%d", fn, dev.name,
                       dev.cc_major, dev.cc_minor);
    int splits = p->num_splits > 0 ? p->num_splits : mla_decode_num_splits(p->B, p->H, p->max_seq_len);
    if (splits > 65535) return err_set(err, "%s: num_splits = %d exceeds 65535", fn, splits);
    MlaArgs a;
    a.u = p->u;
    a.lse = p->lse;
    a.q_abs = p->q_abs;
    a.q_pe = p->q_pe;
    a.kv_cache = p->kv_cache;
    a.block_table = p->block_table;
    a.block_table_stride = p->block_table_stride;
    a.seq_lens = p->seq_lens;
    a.B = p->B;
    a.H = p->H;
    a.num_splits = splits;
    a.scale_log2 = p->scale * LOG2E;
    a.o_part = nullptr;
    a.lse2_part = nullptr;
    if (splits > 1) {
        const size_t need = mla_decode_workspace_bytes(p->B, p->H, splits);
        if (!p->workspace || p->workspace_bytes < need)
            return err_set(err, "%s: %d splits need %zu workspace bytes, got %zu", fn, splits, need,
                           p->workspace ? p->workspace_bytes : (size_t)0);
        a.o_part = p->workspace;
        a.lse2_part = p->workspace + (size_t)p->B * splits * p->H * MLA_DC;
    }
    int rc;
    /* Hopper (227 KB): 3-stage ring and the split phase 1; A100 (163 KB): 2 stages, one S buffer. */
    if ((size_t)MlaTile<3, 2>::SMEM <= dev.smem_optin) rc = launch<MlaTile<3, 2>>(a, stream, err);
    else if ((size_t)MlaTile<2, 1>::SMEM <= dev.smem_optin) rc = launch<MlaTile<2, 1>>(a, stream, err);
    else
        return err_set(err, "%s: needs %d bytes of shared memory per block, device %s allows %zu", fn,
                       MlaTile<2, 1>::SMEM, dev.name, dev.smem_optin);
    if (rc || splits == 1) return rc;
    mla_combine_kernel<<<dim3((unsigned)p->H, (unsigned)p->B), MLA_DC / 4, 0, stream>>>(a);
    return fast_check_launch(fn, "mla_combine_kernel", err);
}
