#!/usr/bin/env python3
"""End-to-end peer timings for the whole-model GPU backend of dsv3.c: prefill and greedy decode
tokens/s of DeepSeek-V3 forwards written by others, run on the same checkpoint in the same session
as `make bench-gpu`, so that our numbers have a reference point on the same machine.

What it measures, for each peer and each batch B of --batches (default 1,8,64):
  * prefill: B sequences of --prompt-len (default 512) random token ids (seeded, in [0, vocab)) in
    one forward from an empty KV cache, logits of the last position only;
    prefill_tok_s = B * prompt_len / time (median of 3 runs when a run is cheap, else 1 run);
  * decode: --decode-steps (default 32) greedy steps after that prefill, one token per sequence per
    step through the peer's KV cache; decode_tok_s = B / (median time of one step).
  Every case runs one untimed warm-up (a prefill and 2 decode steps) first. Timing is wall-clock
  time.perf_counter() between torch.cuda.synchronize() calls, so host overhead (Python, launches,
  the MoE's host syncs) counts, as it does for an end-to-end user.

Checkpoint (--model DIR): the real Hugging Face DeepSeek-V3 layout, as written by
`build/dsv3 mkckpt` (docs/model.md §1.3): config.json with quantization_config {fp8, e4m3, 128x128},
model.safetensors or model-0000i-of-0000n.safetensors + model.safetensors.index.json; FP8 matrices
with a `<name>_scale_inv` F32 grid [ceil(rows/128)][ceil(cols/128)]; embed_tokens, lm_head and
mlp.gate.weight BF16; norms BF16 or F32; mlp.gate.e_score_correction_bias F32; MTP tensors under
model.layers.<num_hidden_layers>.* are ignored by both peers. The intended checkpoint is real width,
reduced depth, e.g.
    build/dsv3 mkckpt -o /tmp/v3d4 --preset v3 --set num_hidden_layers=4 --mtp 0
(3 dense layers + 1 MoE layer of 256 experts: ~17 GB FP8, ~28 GiB once dequantized to BF16.
With 8 layers the 5 MoE layers need ~114 GiB in BF16: the BF16 peers then refuse, only the HF FP8
path can load. --mtp 0 keeps transformers' loading report short.)

Peers (--peers, default hf,torch; hf runs first so that its logits can serve as the reference):
  hf     transformers' DeepseekV3ForCausalLM, its own KV cache (use_cache=True; a DynamicCache).
         Loaded by the first of these loaders that loads and runs a smoke forward:
           pretrained   from_pretrained(dir, dtype=bfloat16, device_map="cuda"): the checkpoint's
                        quantization_config selects the fine-grained FP8 quantizer (FP8 weights,
                        dynamic 1x128 activation quantization, block-scaled FP8 GEMMs);
           dequantize   the same with quantization_config=FineGrainedFP8Config(dequantize=True):
                        transformers dequantizes to BF16 while loading;
           manual       the model built from config.json without its quantization_config, BF16
                        weights dequantized here (e4m3 x scale over 128x128 blocks) and copied in,
                        the routed experts into transformers' fused 3-D expert tensors.
         A load that leaves weights missing or mismatched counts as failed (random weights would
         make the check meaningless). `RESULT peer=hf path=fp8|bf16 loader=...` records the
         outcome: path = the dtype its weights ended up in.
  torch  a plain PyTorch forward written here in the style of the official demo
         (deepseek-ai/DeepSeek-V3 inference/model.py, gemm_impl="bf16", attn_impl="absorb"):
         weights dequantized to BF16 at load, BF16 F.linear; absorbed MLA with einsums over a BF16
         latent cache [B][S][kv_lora_rank] + [B][S][qk_rope_head_dim]; FP32 softmax; interleaved-
         pair RoPE with YaRN (always on, docs/model.md §4 ruling), softmax scale qk_head_dim^-0.5 * mscale^2;
         noaux_tc gate (sigmoid, +bias for selection only, group top-2 sums, top-k groups, top-k
         experts, unbiased weights renormalized x routed_scaling_factor); MoE by looping over the
         experts that received tokens; dense FFN in the first first_k_dense_replace layers; shared
         experts. Deviations from the demo, each for a stated reason: the gate runs in FP32 and
         routed outputs accumulate in FP32 (as transformers and our C code: fewer near-tie routing
         flips in the comparison below); tokens are grouped by expert with one argsort instead of
         one torch.where per expert (one host sync per MoE layer instead of 256); the causal mask
         is the general one for a chunk at any offset; prefill attention runs in batch chunks that
         keep the [b][S][H][T] score tensor under ~4 GiB.
  When both load, the torch peer's logits for a short prompt (2 x 16 tokens: every prefill position
  and one decode step, fed hf's greedy token) are compared with hf's: max|a-b|/max|b| and argmax
  agreement (CHECK lines). With hf on its FP8 path the two differ by FP8 activation quantization.
  On random weights, BF16 rounding flips near-tie expert choices, so max_rel_diff can reach tens of
  percent between two correct forwards (0.35 for this torch peer vs the FP32 C reference on the mini
  preset, with every argmax agreeing): argmax agreement is the steadier signal.

Output: human-readable lines, plus machine-readable lines:
  RESULT peer=hf path=<fp8|bf16> loader=<pretrained|dequantize|manual>
  RESULT peer=<hf|torch> batch=<B> prefill_tok_s=<x> decode_tok_s=<y> prompt_len=<n> steps=<n>
  CHECK peer=torch ref=hf stage=<prefill|decode> max_rel_diff=<x> argmax_agree=<k>/<n>
  REFUSED peer=<p> [batch=<B>] reason="<exception type: message>"   (a failed load or case, OOM included)
  SKIPPED peer=<p> batch=<B> reason="..."                           (--time-budget seconds used up)
A failure of one peer or one case never stops the others; the script exits 0 unless its arguments
are wrong.

Usage:
  python3 tools/bench_e2e_peers.py --model DIR [--batches 1,8,64] [--prompt-len 512]
      [--decode-steps 32] [--peers hf,torch] [--seed 0] [--time-budget 400]

Needs python3 with a CUDA torch and safetensors; transformers only for the hf peer. No network.

Written on a machine without a GPU: this script has not been run.
What was exercised, on a CPU (Debian's torch 1.13, a stand-in safetensors reader, torch.cuda stubbed
out): the torch peer's forward with its weights kept in FP32 matches `dsv3 logits` within 3e-6
relative on the small and mini presets (prefill of every position, and prefill + one-token decode
steps), and the script's flow (REFUSED, SKIPPED, the check) with a stand-in hf peer. transformers,
the CUDA paths and the timings are unchecked.
"""
import argparse
import gc
import glob
import inspect
import json
import math
import os
import re
import statistics
import sys
import time
from types import SimpleNamespace

# Before torch/transformers are imported: no network, and less fragmentation for the big loads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("bench_e2e_peers: torch is not importable; nothing to do")
    sys.exit(0)

PEER_ORDER = ("hf", "torch")   # hf first: its logits are the reference of the check
CHECK_BATCH, CHECK_LEN = 2, 16
WARMUP_DECODE_STEPS = 2
SCORE_BYTES_LIMIT = 4 << 30    # prefill attention: batch chunk bound on the score tensors
GIB = float(1 << 30)


# ----------------------------------------------------------------------------------------------
# output

def say(msg=""):
    print(msg, flush=True)


def describe(exc, limit=300):
    """One line for a REFUSED reason: exception type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    msg = lines[0] if lines else ""
    return ("%s: %s" % (type(exc).__name__, msg[:limit])).replace('"', "'")


def refused(peer, reason, batch=None):
    where = "" if batch is None else " batch=%d" % batch
    say('REFUSED peer=%s%s reason="%s"' % (peer, where, reason))


def skipped(peer, batch, reason):
    say('SKIPPED peer=%s batch=%d reason="%s"' % (peer, batch, reason))


def free_gpu():
    """Returns cached blocks to the driver; call outside an except block (its traceback pins tensors)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# checkpoint

class ModelConfig:
    """The config.json fields the torch peer uses, with config.c's defaults, and the derived values
    of docs/model.md §3.5 / §4 (softmax scale, YaRN parameters)."""

    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            d = json.load(f)
        self.raw = d
        self.vocab_size = int(d["vocab_size"])
        self.dim = int(d["hidden_size"])
        self.inter_dim = int(d["intermediate_size"])
        self.moe_inter_dim = int(d["moe_intermediate_size"])
        self.n_layers = int(d["num_hidden_layers"])
        self.n_heads = int(d["num_attention_heads"])
        if d.get("q_lora_rank") is None:
            raise ValueError("q_lora_rank is null (DeepSeek-V2-Lite layout), not a V3 checkpoint")
        self.q_lora_rank = int(d["q_lora_rank"])
        self.kv_lora_rank = int(d["kv_lora_rank"])
        self.qk_nope_head_dim = int(d["qk_nope_head_dim"])
        self.qk_rope_head_dim = int(d["qk_rope_head_dim"])
        self.v_head_dim = int(d["v_head_dim"])
        self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        self.n_routed_experts = int(d["n_routed_experts"])
        self.n_shared_experts = int(d.get("n_shared_experts") or 0)
        self.n_activated_experts = int(d["num_experts_per_tok"])
        self.n_groups = int(d.get("n_group") or 1)
        self.topk_groups = int(d.get("topk_group") or 1)
        self.first_k_dense = int(d.get("first_k_dense_replace") or 0)
        self.moe_layer_freq = int(d.get("moe_layer_freq") or 1)
        self.norm_topk_prob = bool(d.get("norm_topk_prob", True))
        self.route_scale = float(d.get("routed_scaling_factor", 1.0))
        self.eps = float(d.get("rms_norm_eps", 1e-6))
        q = d.get("quantization_config") or {}
        self.fp8 = q.get("quant_method") == "fp8"
        # RoPE / YaRN: rope_scaling, or rope_parameters in configs re-saved by newer transformers.
        rs = d.get("rope_scaling") or d.get("rope_parameters") or {}
        self.rope_theta = float(rs.get("rope_theta", d.get("rope_theta", 10000.0)))
        self.yarn = (rs.get("type") or rs.get("rope_type")) == "yarn"
        self.rope_factor = float(rs.get("factor", 1.0))
        self.original_seq_len = int(rs.get("original_max_position_embeddings", 4096))
        self.beta_fast = float(rs.get("beta_fast", 32))
        self.beta_slow = float(rs.get("beta_slow", 1))
        mscale = float(rs.get("mscale", 1.0))
        mscale_all_dim = float(rs.get("mscale_all_dim", 0.0))
        # Softmax scale (docs/model.md §3.5, §11 #7): qk_head_dim^-0.5 * mscale^2, mscale from mscale_all_dim.
        self.softmax_scale = self.qk_head_dim ** -0.5
        if self.yarn and mscale_all_dim:
            m = yarn_get_mscale(self.rope_factor, mscale_all_dim)
            self.softmax_scale *= m * m
        # Magnitude of cos/sin (ruling #6): transformers' attention_factor, 1.0 for V3.
        self.rope_attention_factor = (yarn_get_mscale(self.rope_factor, mscale) /
                                      yarn_get_mscale(self.rope_factor, mscale_all_dim)) if self.yarn else 1.0

    def is_moe(self, layer):
        return layer >= self.first_k_dense and layer % self.moe_layer_freq == 0

    def summary(self):
        n_moe = sum(self.is_moe(i) for i in range(self.n_layers))
        return ("hidden %d, %d heads, %d layers (%d dense, %d MoE), %d routed experts (%d/token, groups %d/%d), "
                "%d shared, q_lora %d, kv_lora %d, vocab %d, %s, YaRN %s, softmax scale %.10g"
                % (self.dim, self.n_heads, self.n_layers, self.n_layers - n_moe, n_moe, self.n_routed_experts,
                   self.n_activated_experts, self.n_groups, self.topk_groups, self.n_shared_experts,
                   self.q_lora_rank, self.kv_lora_rank, self.vocab_size, "FP8" if self.fp8 else "not FP8",
                   "on" if self.yarn else "off", self.softmax_scale))


def yarn_get_mscale(scale, m):
    """0.1·m·ln(scale) + 1, or 1 when scale <= 1 (transformers and the official code)."""
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def dequantize(w, scale_inv, dtype=torch.bfloat16, block=128):
    """e4m3 weight [R][C] times its scale grid [ceil(R/128)][ceil(C/128)], broadcast over the blocks."""
    rows, cols = w.shape
    s = scale_inv.float().repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return (w.float() * s).to(dtype)


class Checkpoint:
    """Tensors by name across the shards; FP8 matrices come out dequantized."""

    def __init__(self, model_dir):
        from safetensors import safe_open
        index = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                self.weight_map = json.load(f)["weight_map"]
        else:
            self.weight_map = {}
            for path in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
                with safe_open(path, framework="pt", device="cpu") as f:
                    for name in f.keys():
                        self.weight_map[name] = os.path.basename(path)
        if not self.weight_map:
            raise FileNotFoundError("%s: no *.safetensors files" % model_dir)
        self.files = {fn: safe_open(os.path.join(model_dir, fn), framework="pt", device="cpu")
                      for fn in sorted(set(self.weight_map.values()))}
        self.disk_bytes = sum(os.path.getsize(os.path.join(model_dir, fn)) for fn in self.files)

    def has(self, name):
        return name in self.weight_map

    def shape(self, name):
        return tuple(self.files[self.weight_map[name]].get_slice(name).get_shape())

    def raw(self, name, device):
        return self.files[self.weight_map[name]].get_tensor(name).to(device)

    def load(self, name, device, dtype=torch.bfloat16):
        """Tensor `name` as `dtype` on `device`; an FP8 matrix times its `<name>_scale_inv` blocks."""
        if not self.has(name):
            raise KeyError("checkpoint has no tensor '%s'" % name)
        w = self.raw(name, device)
        if self.has(name + "_scale_inv"):
            return dequantize(w, self.raw(name + "_scale_inv", device), dtype)
        if w.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise ValueError("FP8 tensor '%s' has no '%s_scale_inv'" % (name, name))
        return w.to(dtype)

    def main_model_bf16_bytes(self, n_layers):
        """Bytes of the main model (no MTP layers) once every matrix is BF16."""
        return sum(2 * math.prod(self.shape(name)) for name in self.weight_map
                   if not name.endswith("_scale_inv") and not is_mtp_tensor(name, n_layers))


def is_mtp_tensor(name, n_layers):
    """MTP modules are stored as model.layers.<n_layers + k>.* (docs/model.md §1.3); the peers skip them."""
    m = re.match(r"model\.layers\.(\d+)\.", name)
    return m is not None and int(m.group(1)) >= n_layers


def random_tokens(seed, batch, length, vocab):
    """Seeded token ids in [0, vocab), the same for every peer."""
    g = torch.Generator().manual_seed(seed * 1000003 + batch * 7919 + length)
    return torch.randint(0, vocab, (batch, length), generator=g).cuda()


def check_free_memory(needed, what):
    free, _ = torch.cuda.mem_get_info()
    if needed > 0.95 * free:
        raise MemoryError("%s needs %.1f GiB of weights, %.1f GiB of GPU memory is free" % (what, needed / GIB, free / GIB))


# ----------------------------------------------------------------------------------------------
# peer "torch": a plain PyTorch forward in the style of the official demo (inference/model.py)

def precompute_freqs_cis(cfg, seqlen, device):
    """Complex e^{i·p·θ'_k} for positions p < seqlen: θ'_k = YaRN-blended 1/base^(2k/dim) (docs/model.md §4.2),
    angles in FP32; magnitude = attention_factor (1.0 for V3)."""
    dim, base = cfg.qk_rope_head_dim, cfg.rope_theta
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if cfg.yarn:
        def correction_dim(rotations):
            return dim * math.log(cfg.original_seq_len / (rotations * 2 * math.pi)) / (2 * math.log(base))
        low = max(math.floor(correction_dim(cfg.beta_fast)), 0)
        high = min(math.ceil(correction_dim(cfg.beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        smooth = 1 - ramp
        freqs = freqs / cfg.rope_factor * (1 - smooth) + freqs * smooth
    angles = torch.outer(torch.arange(seqlen, dtype=torch.float32), freqs)
    return torch.polar(torch.full_like(angles, cfg.rope_attention_factor), angles).to(device)


def apply_rotary_emb(x, freqs_cis):
    """RoPE on adjacent pairs (x[2i], x[2i+1]) as complex numbers (docs/model.md §4.1); x is [B][S][H][rope]."""
    dtype = x.dtype
    xc = torch.view_as_complex(x.float().view(*x.shape[:-1], -1, 2))
    y = torch.view_as_real(xc * freqs_cis.view(1, xc.size(1), 1, xc.size(-1))).flatten(3)
    return y.to(dtype)


def rms_norm(x, weight, eps):
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.size(-1),), weight, eps)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def swiglu(x, w1, w2, w3):
    """FFN(x) = W2·(silu(W1·x) ⊙ W3·x): the dense MLP, each routed expert and the shared experts."""
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


class TorchPeer:
    """DeepSeek-V3 forward on BF16 weights, absorbed MLA over a latent cache, looped MoE."""

    name = "torch"

    def __init__(self, cfg, ckpt, max_seq_len, device="cuda"):
        self.cfg, self.max_seq_len = cfg, max_seq_len
        check_free_memory(ckpt.main_model_bf16_bytes(cfg.n_layers), "the torch peer (BF16)")

        def load(name, dtype=torch.bfloat16):
            return ckpt.load(name, device, dtype)

        def load_experts(prefix, proj):
            """The routed experts' `proj` matrices stacked to [E][rows][cols] (filled one by one)."""
            first = load("%s.0.%s.weight" % (prefix, proj))
            out = torch.empty((cfg.n_routed_experts,) + tuple(first.shape), dtype=first.dtype, device=device)
            out[0] = first
            for e in range(1, cfg.n_routed_experts):
                out[e] = load("%s.%d.%s.weight" % (prefix, e, proj))
            return out

        self.embed = load("model.embed_tokens.weight")
        self.layers = []
        for i in range(cfg.n_layers):
            p = "model.layers.%d." % i
            L = SimpleNamespace(
                attn_norm=load(p + "input_layernorm.weight"),
                wq_a=load(p + "self_attn.q_a_proj.weight"),
                q_norm=load(p + "self_attn.q_a_layernorm.weight"),
                wq_b=load(p + "self_attn.q_b_proj.weight"),
                wkv_a=load(p + "self_attn.kv_a_proj_with_mqa.weight"),
                kv_norm=load(p + "self_attn.kv_a_layernorm.weight"),
                wkv_b=load(p + "self_attn.kv_b_proj.weight"),
                wo=load(p + "self_attn.o_proj.weight"),
                ffn_norm=load(p + "post_attention_layernorm.weight"),
                is_moe=cfg.is_moe(i))
            if L.is_moe:
                L.gate = load(p + "mlp.gate.weight", torch.float32)
                bias = p + "mlp.gate.e_score_correction_bias"
                L.gate_bias = (load(bias, torch.float32) if ckpt.has(bias)
                               else torch.zeros(cfg.n_routed_experts, device=device))
                L.w1 = load_experts(p + "mlp.experts", "gate_proj")
                L.w3 = load_experts(p + "mlp.experts", "up_proj")
                L.w2 = load_experts(p + "mlp.experts", "down_proj")
                L.shared = None
                if cfg.n_shared_experts:
                    L.shared = tuple(load(p + "mlp.shared_experts.%s.weight" % n)
                                     for n in ("gate_proj", "down_proj", "up_proj"))
            else:
                L.w1, L.w2, L.w3 = (load(p + "mlp.%s.weight" % n) for n in ("gate_proj", "down_proj", "up_proj"))
            self.layers.append(L)
        self.norm = load("model.norm.weight")
        self.head = load("lm_head.weight")
        self.freqs_cis = precompute_freqs_cis(cfg, max_seq_len, device)

    # -- attention (official MLA.forward, attn_impl = "absorb") --------------------------------

    def attention(self, x, L, start_pos, freqs_cis, mask, kv_cache, pe_cache):
        c = self.cfg
        bsz, seqlen, _ = x.shape
        end_pos = start_pos + seqlen
        q = F.linear(rms_norm(F.linear(x, L.wq_a), L.q_norm, c.eps), L.wq_b)
        q = q.view(bsz, seqlen, c.n_heads, c.qk_head_dim)
        q_nope, q_pe = torch.split(q, [c.qk_nope_head_dim, c.qk_rope_head_dim], dim=-1)
        q_pe = apply_rotary_emb(q_pe, freqs_cis)
        kv = F.linear(x, L.wkv_a)
        kv, k_pe = torch.split(kv, [c.kv_lora_rank, c.qk_rope_head_dim], dim=-1)
        k_pe = apply_rotary_emb(k_pe.unsqueeze(2), freqs_cis)
        # kv_b_proj rows per head: [k_nope (W_UK) | v (W_UV)] (docs/model.md §3.1); absorb W_UK into q.
        wkv_b = L.wkv_b.view(c.n_heads, -1, c.kv_lora_rank)
        q_nope = torch.einsum("bshd,hdc->bshc", q_nope, wkv_b[:, :c.qk_nope_head_dim])
        kv_cache[:bsz, start_pos:end_pos] = rms_norm(kv, L.kv_norm, c.eps)
        pe_cache[:bsz, start_pos:end_pos] = k_pe.squeeze(2)
        # Scores [b][s][h][t] in BF16, softmax in FP32; batch chunks bound the score memory of a prefill.
        per_seq = seqlen * c.n_heads * end_pos * 10  # bf16 terms + fp32 softmax + bf16 probabilities
        step = max(1, min(bsz, SCORE_BYTES_LIMIT // max(per_seq, 1)))
        u = torch.empty(bsz, seqlen, c.n_heads, c.kv_lora_rank, dtype=x.dtype, device=x.device)
        for b0 in range(0, bsz, step):
            b1 = min(bsz, b0 + step)
            kvc, pec = kv_cache[b0:b1, :end_pos], pe_cache[b0:b1, :end_pos]
            scores = (torch.einsum("bshc,btc->bsht", q_nope[b0:b1], kvc) +
                      torch.einsum("bshr,btr->bsht", q_pe[b0:b1], pec)) * c.softmax_scale
            if mask is not None:
                scores += mask.unsqueeze(1)
            scores = scores.softmax(dim=-1, dtype=torch.float32).type_as(x)
            u[b0:b1] = torch.einsum("bsht,btc->bshc", scores, kvc)
        o = torch.einsum("bshc,hdc->bshd", u, wkv_b[:, -c.v_head_dim:])
        return F.linear(o.flatten(2), L.wo)

    # -- MoE (official Gate.forward / MoE.forward, noaux_tc, docs/model.md §5.1) ------------------------

    def gate(self, x, L):
        c = self.cfg
        scores = F.linear(x.float(), L.gate).sigmoid()           # FP32 affinities s_e
        original_scores = scores
        scores = scores + L.gate_bias                             # bias: selection only
        if c.n_groups > 1:
            scores = scores.view(x.size(0), c.n_groups, -1)
            group_scores = scores.topk(2, dim=-1)[0].sum(dim=-1)  # top-2 sum per group
            keep = group_scores.topk(c.topk_groups, dim=-1)[1]
            drop = torch.ones(x.size(0), c.n_groups, dtype=torch.bool, device=x.device).scatter_(1, keep, False)
            scores = scores.masked_fill(drop.unsqueeze(-1), float("-inf")).flatten(1)
        indices = scores.topk(c.n_activated_experts, dim=-1)[1]
        weights = original_scores.gather(1, indices)
        if c.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * c.route_scale, indices

    def moe(self, x, L):
        c = self.cfg
        shape = x.size()
        x = x.view(-1, c.dim)
        weights, indices = self.gate(x, L)
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        # Group the (token, slot) assignments by expert: one argsort, one host sync for the counts.
        flat = indices.flatten()
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=c.n_routed_experts).tolist()
        tokens = order // c.n_activated_experts
        w_sorted = weights.flatten()[order]
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            idx = tokens[start:start + count]
            out = swiglu(x[idx], L.w1[e], L.w2[e], L.w3[e])
            y.index_add_(0, idx, out.float() * w_sorted[start:start + count, None])
            start += count
        y = y.type_as(x)
        if L.shared is not None:
            y = y + swiglu(x, *L.shared)
        return y.view(shape)

    # -- model ----------------------------------------------------------------------------------

    def forward(self, tokens, start_pos, cache, all_logits=False):
        """Logits [B][S or 1][V] of `tokens` at positions start_pos.. (official Transformer.forward)."""
        c = self.cfg
        seqlen = tokens.size(1)
        end_pos = start_pos + seqlen
        if end_pos > self.max_seq_len:
            raise ValueError("position %d beyond the %d positions this peer was built for" % (end_pos, self.max_seq_len))
        h = F.embedding(tokens, self.embed)
        freqs_cis = self.freqs_cis[start_pos:end_pos]
        mask = None
        if seqlen > 1:  # query i (position start_pos+i) sees keys t <= start_pos+i
            mask = torch.full((seqlen, end_pos), float("-inf"), dtype=h.dtype, device=h.device).triu_(start_pos + 1)
        for L, (kv_cache, pe_cache) in zip(self.layers, cache):
            h = h + self.attention(rms_norm(h, L.attn_norm, c.eps), L, start_pos, freqs_cis, mask, kv_cache, pe_cache)
            x = rms_norm(h, L.ffn_norm, c.eps)
            h = h + (self.moe(x, L) if L.is_moe else swiglu(x, L.w1, L.w2, L.w3))
        h = rms_norm(h if all_logits else h[:, -1:], self.norm, c.eps)
        return F.linear(h, self.head)

    @torch.inference_mode()
    def prefill(self, tokens, all_logits=False):
        bsz = tokens.size(0)
        c = self.cfg
        dt, dev = self.embed.dtype, tokens.device  # BF16, the activation dtype
        cache = [(torch.empty(bsz, self.max_seq_len, c.kv_lora_rank, dtype=dt, device=dev),
                  torch.empty(bsz, self.max_seq_len, c.qk_rope_head_dim, dtype=dt, device=dev))
                 for _ in self.layers]
        logits = self.forward(tokens, 0, cache, all_logits)
        return (logits if all_logits else logits[:, -1]), {"cache": cache, "pos": tokens.size(1)}

    @torch.inference_mode()
    def decode(self, tok, state):
        logits = self.forward(tok, state["pos"], state["cache"])[:, -1]
        state["pos"] += tok.size(1)
        return logits, state


# ----------------------------------------------------------------------------------------------
# peer "hf": transformers' DeepseekV3ForCausalLM

def weights_dtype_path(model):
    return "fp8" if any(p.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) for p in model.parameters()) else "bf16"


def hf_from_pretrained(model_dir, n_layers, **extra):
    """from_pretrained onto the GPU in BF16; missing or mismatched weights count as a failure
    (random weights would time the right thing but make the check meaningless)."""
    from transformers import DeepseekV3ForCausalLM
    out = DeepseekV3ForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda",
                                                output_loading_info=True, **extra)
    model, info = out if isinstance(out, tuple) else (out, {})
    info = info or {}
    bad = list(info.get("missing_keys") or []) + [str(k) for k in (info.get("mismatched_keys") or [])]
    if bad:
        raise RuntimeError("%d weights missing or mismatched after loading, e.g. %s" % (len(bad), ", ".join(bad[:3])))
    unexpected = [k for k in (info.get("unexpected_keys") or []) if not is_mtp_tensor(k, n_layers)]
    if unexpected:
        say("  hf: %d unexpected checkpoint tensors outside the MTP layers, e.g. %s" % (len(unexpected), ", ".join(unexpected[:3])))
    return model


@torch.no_grad()
def hf_build_manual(model_dir, ckpt):
    """DeepseekV3ForCausalLM from config.json without its quantization_config, on the GPU in BF16,
    then every tensor of its state dict filled from the checkpoint (FP8 dequantized here). transformers
    5.x fuses the routed experts into mlp.experts.gate_up_proj [E][2I][D] (gate rows, then up rows)
    and mlp.experts.down_proj [E][D][I]; a per-expert layout (older versions) maps by name directly."""
    from transformers import AutoConfig, DeepseekV3ForCausalLM
    config = AutoConfig.from_pretrained(model_dir)
    if getattr(config, "quantization_config", None) is not None:
        try:
            del config.quantization_config
        except AttributeError:
            config.quantization_config = None
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = DeepseekV3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    state = model.state_dict()
    unmatched = []
    for name, dst in state.items():
        fused = re.match(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$", name)
        if ckpt.has(name):
            src = ckpt.load(name, dst.device, torch.float32 if name.endswith("e_score_correction_bias") else dst.dtype)
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError("%s: checkpoint shape %s, model shape %s" % (name, tuple(src.shape), tuple(dst.shape)))
            if name.endswith("e_score_correction_bias") and dst.dtype != torch.float32:
                # keep the F32 bias exact: replace a BF16 buffer (made under the BF16 default dtype)
                owner, leaf = name.rsplit(".", 1)
                module = model.get_submodule(owner)
                module.register_buffer(leaf, src, persistent=leaf not in module._non_persistent_buffers_set)
            else:
                dst.copy_(src)
        elif fused and dst.dim() == 3:
            prefix, kind = fused.groups()
            for e in range(dst.size(0)):
                if kind == "gate_up_proj":
                    src = torch.cat([ckpt.load("%s.%d.gate_proj.weight" % (prefix, e), dst.device, dst.dtype),
                                     ckpt.load("%s.%d.up_proj.weight" % (prefix, e), dst.device, dst.dtype)], dim=0)
                else:
                    src = ckpt.load("%s.%d.down_proj.weight" % (prefix, e), dst.device, dst.dtype)
                if tuple(src.shape) == tuple(dst[e].shape):
                    dst[e].copy_(src)
                elif tuple(src.t().shape) == tuple(dst[e].shape):
                    dst[e].copy_(src.t())
                else:
                    raise ValueError("%s[%d]: checkpoint shape %s, model shape %s"
                                     % (name, e, tuple(src.shape), tuple(dst[e].shape)))
        else:
            unmatched.append(name)
    if unmatched:
        raise RuntimeError("%d model tensors have no checkpoint source, e.g. %s" % (len(unmatched), ", ".join(unmatched[:3])))
    return model


class HFPeer:
    name = "hf"

    def __init__(self, model, loader):
        self.model = model
        self.loader = loader
        self.path = weights_dtype_path(model)
        self.cache_type = "?"
        try:
            self.keep_ok = "logits_to_keep" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            self.keep_ok = False

    def details(self):
        cfg = self.model.config
        return "attention %s, experts %s, KV cache %s, last-position logits only: %s" % (
            getattr(cfg, "_attn_implementation", "?"), getattr(cfg, "_experts_implementation", "default"),
            self.cache_type, "yes" if self.keep_ok else "no (logits_to_keep unsupported)")

    @torch.inference_mode()
    def prefill(self, tokens, all_logits=False):
        kwargs = {"input_ids": tokens, "use_cache": True}
        if not all_logits and self.keep_ok:
            kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs)
        return (out.logits if all_logits else out.logits[:, -1]), out.past_key_values

    @torch.inference_mode()
    def decode(self, tok, cache):
        out = self.model(input_ids=tok, past_key_values=cache, use_cache=True)
        return out.logits[:, -1], out.past_key_values


@torch.inference_mode()
def smoke(peer, vocab):
    """A tiny forward: loaders that succeed can still fail (or produce NaN) at the first GEMM.
    Returns the class name of the KV cache the peer made."""
    logits, cache = peer.prefill(random_tokens(12345, 1, 8, vocab))
    torch.cuda.synchronize()
    if not bool(torch.isfinite(logits.float()).all()):
        raise FloatingPointError("non-finite logits from a smoke forward")
    return type(cache).__name__


def load_hf(args, cfg, ckpt, deadline):
    """The first loader that works (see the module docstring); raises with every loader's reason."""
    try:
        import transformers
        transformers.logging.set_verbosity_error()
        getattr(transformers, "DeepseekV3ForCausalLM")  # resolve the lazy import now: fail early and clearly
    except Exception as e:
        raise RuntimeError("transformers' DeepseekV3ForCausalLM is not importable (%s)" % describe(e))

    def with_dequantize():
        from transformers import FineGrainedFP8Config
        qc = FineGrainedFP8Config(dequantize=True)
        if not getattr(qc, "dequantize", False):
            raise TypeError("FineGrainedFP8Config has no 'dequantize' option in this transformers")
        return hf_from_pretrained(args.model, cfg.n_layers, quantization_config=qc)

    loaders = [("pretrained", lambda: hf_from_pretrained(args.model, cfg.n_layers))]
    if cfg.fp8:
        loaders.append(("dequantize", with_dequantize))
        loaders.append(("manual", lambda: hf_build_manual(args.model, ckpt)))
    failures = []
    for loader, fn in loaders:
        if time.time() > deadline:
            failures.append("%s: time budget used up" % loader)
            break
        if loader != "pretrained":  # these two need the whole model in BF16
            try:
                check_free_memory(ckpt.main_model_bf16_bytes(cfg.n_layers), "transformers in BF16")
            except MemoryError as e:
                failures.append("%s: %s" % (loader, describe(e)))
                say("  hf: loader %s refused: %s" % (loader, describe(e)))
                continue
        t0 = time.time()
        peer, err = None, None
        try:
            peer = HFPeer(fn(), loader)
            peer.cache_type = smoke(peer, cfg.vocab_size)
        except Exception as e:  # try the next loader
            err = describe(e)
        if err is None:
            say("  hf: loaded with loader %s in %.1f s: weights %s; %s" % (loader, time.time() - t0, peer.path, peer.details()))
            return peer
        peer = None
        free_gpu()
        failures.append("%s: %s" % (loader, err))
        say("  hf: loader %s failed after %.1f s: %s" % (loader, time.time() - t0, err))
    raise RuntimeError("; ".join(failures))


# ----------------------------------------------------------------------------------------------
# measurement

def wall(fn):
    """(result, seconds) of fn() between two device synchronizations."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = fn()
    torch.cuda.synchronize()
    return r, time.perf_counter() - t0


@torch.inference_mode()
def measure(peer, batch, args, vocab):
    tokens = random_tokens(args.seed, batch, args.prompt_len, vocab)
    # Warm-up (allocator, cuBLAS/Triton autotuning, lazy init): a prefill and a few decode steps.
    (logits, state), warm_s = wall(lambda: peer.prefill(tokens))
    tok = logits.argmax(-1, keepdim=True)
    for _ in range(WARMUP_DECODE_STEPS):
        logits, state = peer.decode(tok, state)
        tok = logits.argmax(-1, keepdim=True)
    logits = state = tok = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    # Prefill: median of 3 when cheap; the state of the last run feeds the decode.
    repeats = 3 if warm_s < 3.0 else 1
    prefill_times = []
    for _ in range(repeats):
        state = None  # free the previous cache before the next prefill
        (logits, state), t = wall(lambda: peer.prefill(tokens))
        prefill_times.append(t)
    tok = logits.argmax(-1, keepdim=True)
    step_times = []
    for _ in range(args.decode_steps):
        def step():
            lg, st = peer.decode(tok, state)
            return lg.argmax(-1, keepdim=True), st
        (tok, state), t = wall(step)
        step_times.append(t)
    prefill_s = statistics.median(prefill_times)
    step_s = statistics.median(step_times)
    return {
        "prefill_s": prefill_s, "prefill_runs": repeats, "prefill_tok_s": batch * args.prompt_len / prefill_s,
        "step_s": step_s, "step_mean_s": statistics.fmean(step_times), "decode_tok_s": batch / step_s,
        "peak_gib": torch.cuda.max_memory_allocated() / GIB,
    }


@torch.inference_mode()
def check_logits(peer, vocab, reference=None):
    """Logits of a short prompt at every position, then one decode step fed `reference`'s greedy token
    (or this peer's own when there is no reference); all as FP32 on the host."""
    tokens = random_tokens(777, CHECK_BATCH, CHECK_LEN, vocab)
    logits, state = peer.prefill(tokens, all_logits=True)
    prefill = logits.float().cpu()
    nxt = reference["next"].cuda() if reference else logits[:, -1].argmax(-1, keepdim=True)
    step, _ = peer.decode(nxt, state)
    return {"prefill": prefill.reshape(-1, prefill.size(-1)), "decode": step.float().cpu(), "next": nxt.cpu()}


def compare(peer_name, ref_name, got, ref):
    for stage in ("prefill", "decode"):
        a, b = got[stage], ref[stage]
        rel = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)
        agree = (a.argmax(-1) == b.argmax(-1))
        say("CHECK peer=%s ref=%s stage=%s max_rel_diff=%.4g argmax_agree=%d/%d"
            % (peer_name, ref_name, stage, rel, int(agree.sum().item()), agree.numel()))


# ----------------------------------------------------------------------------------------------
# main

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (HF DeepSeek-V3 layout, e.g. from dsv3 mkckpt)")
    p.add_argument("--batches", default="1,8,64", help="comma-separated batch sizes (default 1,8,64)")
    p.add_argument("--prompt-len", type=int, default=512, help="prefill tokens per sequence (default 512)")
    p.add_argument("--decode-steps", type=int, default=32, help="greedy decode steps timed (default 32)")
    p.add_argument("--peers", default="hf,torch", help="comma-separated subset of hf,torch (default both)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids (default 0)")
    p.add_argument("--time-budget", type=float, default=400.0,
                   help="seconds; cases not started by then are SKIPPED (default 400)")
    args = p.parse_args(argv)
    try:
        args.batch_list = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error("--batches must be comma-separated integers, got '%s'" % args.batches)
    if not args.batch_list or min(args.batch_list) < 1:
        p.error("--batches needs positive integers")
    peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    if not peers or any(x not in PEER_ORDER for x in peers):
        p.error("--peers must be a comma-separated subset of %s, got '%s'" % (",".join(PEER_ORDER), args.peers))
    args.peer_list = [x for x in PEER_ORDER if x in peers]
    if args.prompt_len < 1 or args.decode_steps < 1:
        p.error("--prompt-len and --decode-steps must be positive")
    return args


def print_header(args):
    try:
        import transformers
        tf_version = transformers.__version__
    except Exception as e:
        tf_version = "not importable (%s)" % describe(e)
    try:
        import safetensors
        st_version = safetensors.__version__
    except Exception as e:
        st_version = "not importable (%s)" % describe(e)
    gpu = "none"
    if torch.cuda.is_available():
        gpu = "%s (%.1f GiB)" % (torch.cuda.get_device_name(0), torch.cuda.mem_get_info()[1] / GIB)
    say("bench_e2e_peers: GPU %s, torch %s (CUDA %s), transformers %s, safetensors %s, python %s"
        % (gpu, torch.__version__, torch.version.cuda, tf_version, st_version, sys.version.split()[0]))
    say("bench_e2e_peers: model %s, batches %s, prompt_len %d, decode_steps %d, peers %s, seed %d, time budget %.0f s"
        % (args.model, ",".join(map(str, args.batch_list)), args.prompt_len, args.decode_steps,
           ",".join(args.peer_list), args.seed, args.time_budget))


def run(args):
    start = time.time()
    deadline = start + args.time_budget
    print_header(args)
    if not torch.cuda.is_available():
        refused("all", "torch sees no CUDA device")
        return 0
    try:
        cfg = ModelConfig(args.model)
        ckpt = Checkpoint(args.model)
    except Exception as e:
        refused("all", "checkpoint %s: %s" % (args.model, describe(e)))
        return 0
    say("bench_e2e_peers: checkpoint: %s; %.2f GB on disk in %d file(s); BF16 main model %.1f GiB"
        % (cfg.summary(), ckpt.disk_bytes / 1e9, len(ckpt.files), ckpt.main_model_bf16_bytes(cfg.n_layers) / GIB))
    max_seq_len = max(args.prompt_len, CHECK_LEN) + args.decode_steps + WARMUP_DECODE_STEPS + 8
    results, reference = [], None
    for name in args.peer_list:
        if time.time() > deadline:
            for b in args.batch_list:
                skipped(name, b, "time budget of %.0f s used up before loading the peer" % args.time_budget)
            continue
        say("== peer %s" % name)
        t0 = time.time()
        peer, err = None, None
        try:
            peer = load_hf(args, cfg, ckpt, deadline) if name == "hf" else TorchPeer(cfg, ckpt, max_seq_len)
        except Exception as e:
            err = describe(e, limit=1000)  # hf: every loader's reason, joined
        if err is not None:
            peer = None
            free_gpu()
            refused(name, "load: " + err)
            continue
        if name == "hf":
            say("RESULT peer=hf path=%s loader=%s" % (peer.path, peer.loader))
        else:
            say("  torch: loaded in %.1f s (BF16 weights, %.1f GiB allocated)" % (time.time() - t0, torch.cuda.memory_allocated() / GIB))
        # Logits check: hf records the reference, torch compares with it.
        try:
            if name == "hf":
                reference = check_logits(peer, cfg.vocab_size)
                reference["path"] = peer.path
            elif reference is None:
                say("  %s: no hf reference loaded, logits check skipped" % name)
            else:
                say("  check: %d x %d prompt, reference hf with %s weights%s" % (
                    CHECK_BATCH, CHECK_LEN, reference["path"],
                    " (its FP8 activation quantization alone moves its logits)" if reference["path"] == "fp8" else ""))
                compare(name, "hf", check_logits(peer, cfg.vocab_size, reference), reference)
        except Exception as e:
            say("  %s: logits check failed: %s" % (name, describe(e)))
        free_gpu()
        for b in args.batch_list:
            if time.time() > deadline:
                skipped(name, b, "time budget of %.0f s used up" % args.time_budget)
                continue
            r, err = None, None
            try:
                r = measure(peer, b, args, cfg.vocab_size)
            except Exception as e:  # OOM included: report and go on
                err = describe(e)
            free_gpu()
            if err is not None:
                refused(name, err, batch=b)
                continue
            say("  %-5s B=%-3d prefill %8.3f s (median of %d) %10.1f tok/s | decode step %8.2f ms median, %8.2f ms mean "
                "%9.1f tok/s | peak %.1f GiB" % (name, b, r["prefill_s"], r["prefill_runs"], r["prefill_tok_s"],
                                                 r["step_s"] * 1e3, r["step_mean_s"] * 1e3, r["decode_tok_s"], r["peak_gib"]))
            say("RESULT peer=%s batch=%d prefill_tok_s=%.1f decode_tok_s=%.2f prompt_len=%d steps=%d"
                % (name, b, r["prefill_tok_s"], r["decode_tok_s"], args.prompt_len, args.decode_steps))
            results.append((name, b, r))
        peer = None
        free_gpu()
    say("== summary (%.0f s)" % (time.time() - start))
    for name, b, r in results:
        say("  %-5s B=%-3d prefill %10.1f tok/s  decode %9.1f tok/s" % (name, b, r["prefill_tok_s"], r["decode_tok_s"]))
    if not results:
        say("  no case completed")
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except Exception as e:  # never a traceback instead of a report
        refused("all", "unexpected: " + describe(e))
        return 0


if __name__ == "__main__":
    sys.exit(main())
