#!/usr/bin/env python3
"""Peer timings for the dsv3.c CUDA kernels, measured with PyTorch on the same shapes as
tests/gpu/bench_kernels.c (run by `make bench-gpu` when python3 + a CUDA torch are importable;
never by `make test`).

Peers:
  * torch._scaled_mm and torch.nn.functional.scaled_mm with DeepSeek block scales
    (A: 1x128 per-token groups, B: 128x128 blocks) where this torch/cuBLAS accepts them; a
    refusal is printed with its reason (REFUSED lines), never hidden;
  * a bf16 F.linear on the dequantized weights;
  * an einsum MLA decode (absorbed form, contiguous bf16 latent cache, FP32 softmax).

Output: human-readable lines plus machine-readable "RESULT key=value ..." and "REFUSED ..." lines.
Timing: CUDA events, median of >= 5 repetitions after 3 warm-ups; weights rotate among copies
that together exceed 3x L2 so that small matrices are not timed from cache; random data.

Written on a machine without a GPU: this script has not been run.
"""
import math
import sys

try:
    import torch
except ImportError:  # make bench-gpu checks first; this is for direct invocations
    print("bench_peers: torch is not importable; nothing to do")
    sys.exit(0)

SHAPES = [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384),
          (4096, 7168), (7168, 2048), (36864, 7168), (7168, 18432)]
MS = [1, 16, 64, 512, 4096]
MLA_CASES = [(1, 4096), (32, 4096), (64, 8192), (128, 4096)]
PEAK_FP8, PEAK_BW = 1979e12, 3.35e12


def median_us(fn, copies):
    """Median time of fn(i) in microseconds; i rotates over the input copies."""
    for i in range(3):
        fn(i % copies)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(3 % copies)
    end.record()
    end.synchronize()
    first = start.elapsed_time(end)
    reps = max(5, min(200, int(300.0 / max(first, 1e-3))))
    evs = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
    evs[0].record()
    for i in range(reps):
        fn((4 + i) % copies)
        evs[i + 1].record()
    torch.cuda.synchronize()
    times = sorted(evs[i].elapsed_time(evs[i + 1]) for i in range(reps))
    return 1000.0 * times[reps // 2]


def rotation(nbytes, l2):
    return max(1, min(64, math.ceil(3 * l2 / max(nbytes, 1))))


def e4m3_random(rows, cols, dev):
    """Random finite e4m3 values (no NaN codes)."""
    codes = torch.randint(0, 256, (rows, cols), dtype=torch.uint8, device=dev)
    codes = torch.where((codes & 0x7F) == 0x7F, codes - 1, codes)
    return codes.view(torch.float8_e4m3fn)


def dequant(w, s, row_block):
    """w e4m3 [R][K] with scales s [ceil(R/row_block)][K/128] → bf16."""
    R, K = w.shape
    sf = s.repeat_interleave(row_block, 0)[:R].repeat_interleave(128, 1)[:, :K]
    return (w.float() * sf).to(torch.bfloat16)


def scaled_mm_variants(a, a_s, w, w_s, M, N, K):
    """Callables for the block-scaled peers this torch exposes: name → fn(w, w_s) or a refusal string."""
    kb = K // 128
    kb4 = (kb + 3) // 4 * 4
    nb = (N + 127) // 128
    # _scaled_mm wants: A [M,K] row-major; B [K,N] column-major (= W.t());
    # scale_a [M, K/128] with strides (1, M); scale_b [round_up(K/128, 4), N/128] with strides (1, round_up(.., 4)).
    sa = a_s.t().contiguous().t()

    def pad_b(ws):
        p = torch.zeros(nb, kb4, dtype=torch.float32, device=ws.device)
        p[:, :kb] = ws
        return p.t()

    out = {}

    def old_api(wq, ws):
        return torch._scaled_mm(a, wq.t(), scale_a=sa, scale_b=pad_b(ws), out_dtype=torch.bfloat16)
    out["torch_scaled_mm_block"] = old_api
    F = torch.nn.functional
    if hasattr(F, "scaled_mm") and hasattr(F, "ScalingType"):
        ST = F.ScalingType

        def new_api(wq, ws):
            return F.scaled_mm(a, wq.t(), sa, ST.BlockWise1x128, pad_b(ws), ST.BlockWise128x128,
                               output_dtype=torch.bfloat16)
        out["torch_F_scaled_mm_block"] = new_api
    else:
        out["torch_F_scaled_mm_block"] = "torch.nn.functional.scaled_mm / ScalingType not in torch %s" % torch.__version__
    return out


def bench_gemm(dev, l2):
    print("== peer GEMMs (torch %s, %s)" % (torch.__version__, torch.cuda.get_device_name(dev)))
    for N, K in SHAPES:
        nb, kb = (N + 127) // 128, K // 128
        copies = rotation(N * K * 3, l2)
        ws = [e4m3_random(N, K, dev) for _ in range(copies)]
        ss = [torch.rand(nb, kb, device=dev) * 9e-4 + 1e-4 for _ in range(copies)]
        w16 = [dequant(w, s, 128) for w, s in zip(ws, ss)]
        for M in MS:
            a = e4m3_random(M, K, dev)
            a_s = torch.rand(M, kb, device=dev) * 9e-3 + 1e-3
            a16 = dequant(a, a_s, 1)
            flops = 2.0 * M * N * K
            ref = torch.nn.functional.linear(a16.float(), w16[0].float())
            t16 = median_us(lambda i: torch.nn.functional.linear(a16, w16[i]), copies)
            print("  N=%5d K=%5d M=%4d  torch bf16 linear   %9.1f us %7.1f TFLOP/s" % (N, K, M, t16, flops / t16 * 1e-6))
            print("RESULT peer=torch_bf16_linear N=%d K=%d M=%d us=%.2f tflops=%.2f" % (N, K, M, t16, flops / t16 * 1e-6))
            for name, fn in scaled_mm_variants(a, a_s, ws[0], ss[0], M, N, K).items():
                if isinstance(fn, str):
                    print("REFUSED peer=%s N=%d K=%d M=%d reason=\"%s\"" % (name, N, K, M, fn))
                    continue
                try:
                    y = fn(ws[0], ss[0]).float()
                    nmse = ((y - ref) ** 2).sum().item() / max((ref ** 2).sum().item(), 1e-30)
                    t = median_us(lambda i: fn(ws[i], ss[i]), copies)
                    print("  N=%5d K=%5d M=%4d  %-22s %9.1f us %7.1f TFLOP/s %6.0f GB/s weights  nmse vs bf16 %.2e"
                          % (N, K, M, name, t, flops / t * 1e-6, N * K / t * 1e-3, nmse))
                    print("RESULT peer=%s N=%d K=%d M=%d us=%.2f tflops=%.2f weight_gbs=%.1f nmse_vs_bf16=%.3g"
                          % (name, N, K, M, t, flops / t * 1e-6, N * K / t * 1e-3, nmse))
                except Exception as e:  # a refusal is a result too
                    msg = str(e).splitlines()[0][:200].replace('"', "'")
                    print("REFUSED peer=%s N=%d K=%d M=%d reason=\"%s: %s\"" % (name, N, K, M, type(e).__name__, msg))
            del a, a_s, a16, ref
        del ws, ss, w16
        torch.cuda.empty_cache()


def bench_mla(dev, l2):
    print("== peer MLA decode: einsum, contiguous bf16 cache [B][S][576], FP32 softmax, H=128")
    H, Dc, Dr = 128, 512, 64
    scale = 0.1352337788608801
    for B, S in MLA_CASES:
        nbytes = B * S * (Dc + Dr) * 2
        copies = rotation(nbytes, l2)
        kv = [torch.randn(B, S, Dc + Dr, device=dev, dtype=torch.bfloat16) for _ in range(copies)]
        q_abs = torch.randn(B, H, Dc, device=dev, dtype=torch.bfloat16)
        q_pe = torch.randn(B, H, Dr, device=dev, dtype=torch.bfloat16)

        def step(i):
            c = kv[i]
            s = torch.einsum("bhc,btc->bht", q_abs, c[..., :Dc]) + torch.einsum("bhr,btr->bht", q_pe, c[..., Dc:])
            p = torch.softmax(s.float() * scale, dim=-1)
            return torch.einsum("bht,btc->bhc", p.to(torch.bfloat16), c[..., :Dc])
        try:
            t = median_us(step, copies)
            flops = 2.0 * B * H * S * (Dc + Dc + Dr)
            print("  B=%3d S=%5d  einsum %9.1f us %7.0f GB/s of cache %6.1f TFLOP/s" % (B, S, t, nbytes / t * 1e-3, flops / t * 1e-6))
            print("RESULT peer=torch_einsum_mla B=%d S=%d H=%d us=%.2f gbs=%.1f tflops=%.2f" % (B, S, H, t, nbytes / t * 1e-3, flops / t * 1e-6))
        except Exception as e:
            print("REFUSED peer=torch_einsum_mla B=%d S=%d reason=\"%s: %s\"" % (B, S, type(e).__name__, str(e).splitlines()[0][:200]))
        del kv, q_abs, q_pe
        torch.cuda.empty_cache()


def main():
    if not torch.cuda.is_available():
        print("bench_peers: torch sees no CUDA device; nothing to do")
        return 0
    dev = torch.device("cuda")
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(dev)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    print("bench_peers: %s, torch %s, CUDA %s, L2 %d MiB" % (props.name, torch.__version__, torch.version.cuda, l2 >> 20))
    only = sys.argv[1:]
    if not only or "gemm" in only:
        bench_gemm(dev, l2)
    if not only or "mla" in only:
        bench_mla(dev, l2)
    print("bench_peers: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
