/**
 * @file linear_gpu.c
 * @brief y = x·Wᵀ on the GPU (ref/model/linear.c's linear_forward), choosing the kernel per weight.
 *
 *   FP8 weight, W8A8, K % 128 = 0, sm_89+   act_quant (1×128 e4m3) + fp8_gemm_cuda      tensor cores
 *   FP8 weight, W8A8, otherwise             fp8_quantize_rows_f32 + linear_generic      same numerics, SIMT
 *   FP8 weight, dequant                     linear_generic (FP32 × per-block scaled)    ref's default mode
 *   BF16 / F32 weight                       linear_generic (FP32)
 * Both W8A8 routes compute Σ_b (Σ_{k∈b} xq·wq)·s_x·s_w like the reference; the tensor cores
 * keep fewer bits inside a block partial (fast/fp8_gemm.h), the generic kernel all of FP32.
 */
#include "layers_gpu.h"

#include "act_quant.h"
#include "fp8_gemm.h"
#include "generic.h"

int fast_linear_forward(const FastModel *fm, FastRunState *s, float *y, int64_t ldy, const float *x, int64_t ldx,
                        int64_t M, const Tensor *W, const int *group_start, int G, Fp8Mode mode, Err *err) {
    int64_t N = W->rows, K = W->cols;
    if (M == 0) return 0;
    if (M > s->lin_rows || K > s->max_in)
        return err_set(err, "fast_linear_forward: %lld rows × %lld inputs exceed the scratch (%lld × %lld)", (long long)M,
                       (long long)K, (long long)s->lin_rows, (long long)s->max_in);
    int fp8 = W->dtype == DT_F8_E4M3;
    if (fp8 && mode == FP8_W8A8 && K % 128 == 0 && fm->fp8_tc && ldx % 4 == 0) {
        if (fp8_quantize_rows_cuda(s->xq, K, s->xs, x, FAST_F32, ldx, M, K, fm->config.scale_ue8m0, fm->stream, err)) return -1;
        Fp8GemmParams p = { 0 };
        p.out = y, p.out_dtype = FAST_F32, p.ldo = ldy;
        p.a = s->xq, p.a_scale = s->xs, p.b = W->data, p.b_scale = (const float *)W->scale_inv;
        p.M = M, p.N = N, p.K = K, p.group_start = group_start, p.num_groups = G, p.path = FP8_GEMM_AUTO;
        p.splits = group_start ? 1 : 0, p.workspace = s->gemm_ws, p.workspace_bytes = s->gemm_ws_bytes;
        return fp8_gemm_cuda(&p, fm->stream, err);
    }
    LinearGenericParams p = { 0 };
    p.y = y, p.ldy = ldy, p.x = x, p.ldx = ldx;
    p.w = W->data, p.w_dtype = W->dtype, p.w_scale = fp8 ? (const float *)W->scale_inv : NULL;
    p.M = M, p.N = N, p.K = K, p.group_start = group_start, p.num_groups = G;
    if (fp8 && mode == FP8_W8A8) {
        if (fp8_quantize_rows_f32_cuda(s->xqf, s->xs, x, ldx, M, K, fm->config.scale_ue8m0, fm->stream, err)) return -1;
        p.x = s->xqf, p.ldx = K, p.x_scale = s->xs;
    }
    return linear_generic_cuda(&p, fm->stream, err);
}
