#!/usr/bin/python3
"""Expected logits for the family goldens (golden/k2-tiny, golden/moonlight-tiny), from an
implementation of the DeepSeek-V3 forward pass that shares nothing with the C code.

It is written from what Hugging Face transformers' `models/deepseek_v3/modeling_deepseek_v3.py`
(DeepseekV3Attention, DeepseekV3TopkRouter, DeepseekV3MoE) and `modeling_rope_utils.py`
(`_compute_yarn_parameters`) compute, in FP64 numpy, with two choices of the repository's rulings
(docs/model.md §11): experts of dropped groups are -inf (no group is dropped in these single-group
configs anyway), and ties go to the lower index. It reads the checkpoint through its own safetensors
parser. Covered: q_lora_rank null (one q_proj), any number of experts in one group, YaRN with
beta_fast = beta_slow (docs/model.md §13).

    /usr/bin/python3 tools/golden_family.py golden/k2-tiny        # writes logits.f32, hidden.f32
    /usr/bin/python3 tools/golden_family.py --rope-table          # YaRN tables for tests/test_rope.c
    /usr/bin/python3 tools/golden_family.py --w8a8-ue8m0 golden/fp8-small   # DeepSeek-V3.1's W8A8 GEMM

Run once by a developer (Debian's python3-numpy); make test never runs it.
"""
import json
import math
import struct
import sys

import numpy as np


# ---- safetensors ------------------------------------------------------------------------

E4M3 = np.zeros(256)
for code in range(256):
    s, e, m = code >> 7, (code >> 3) & 15, code & 7
    if e == 15 and m == 7:
        v = float("nan")
    elif e == 0:
        v = m / 8.0 * 2.0 ** -6
    else:
        v = (1 + m / 8.0) * 2.0 ** (e - 7)
    E4M3[code] = -v if s else v


def read_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        buf = raw[base + a:base + b]
        shape = t["shape"]
        if t["dtype"] == "F32":
            v = np.frombuffer(buf, dtype="<f4").astype(np.float64)
        elif t["dtype"] == "BF16":
            v = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        elif t["dtype"] == "F8_E4M3":
            v = E4M3[np.frombuffer(buf, dtype=np.uint8)]
        else:
            raise SystemExit(f"{path}: {name}: dtype {t['dtype']} not handled")
        out[name] = v.reshape(shape)
    for name in [k for k in out if k.endswith("_scale_inv")]:
        w = name[: -len("_scale_inv")]
        s = np.repeat(np.repeat(out.pop(name), 128, 0), 128, 1)
        out[w] = out[w] * s[: out[w].shape[0], : out[w].shape[1]]
    return out


# ---- the model (HF modeling_deepseek_v3.py) ------------------------------------------------

def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def yarn_get_mscale(scale, mscale):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_inv_freq(cfg):
    """inv_freq and attention_factor as HF's _compute_yarn_parameters (the default rope without scaling)."""
    dim, base = cfg["qk_rope_head_dim"], cfg.get("rope_theta", 10000.0)
    pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    rs = cfg.get("rope_scaling")
    if not rs or rs.get("type", rs.get("rope_type")) != "yarn":
        return 1.0 / pos_freqs, 1.0
    factor, L0 = rs["factor"], rs["original_max_position_embeddings"]
    beta_fast, beta_slow = rs.get("beta_fast", 32), rs.get("beta_slow", 1)
    mscale, mscale_all_dim = rs.get("mscale", 1), rs.get("mscale_all_dim", 0)
    attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)

    def find_correction_dim(num_rotations):
        return (dim * math.log(L0 / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(find_correction_dim(beta_fast)), 0)
    high = min(math.ceil(find_correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # linear_ramp_factor: "Prevent singularity"
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, attention_factor


def rotate_interleaved(x, cos, sin):
    """(x[2i], x[2i+1]) rotated by angle i — HF's apply_rotary_pos_emb_interleave, up to its output
    permutation (applied to queries and keys alike, so every score is the same)."""
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def attention(cfg, W, p, x, cos, sin, scale):
    T = x.shape[0]
    H, Dn, Dr, Dv = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    Dc, eps = cfg["kv_lora_rank"], cfg["rms_norm_eps"]
    if cfg.get("q_lora_rank") is None:
        q = x @ W[p + "q_proj.weight"].T
    else:
        q = rms_norm(x @ W[p + "q_a_proj.weight"].T, W[p + "q_a_layernorm.weight"], eps) @ W[p + "q_b_proj.weight"].T
    q = q.reshape(T, H, Dn + Dr)
    q_nope, q_pe = q[..., :Dn], q[..., Dn:]
    ckv = x @ W[p + "kv_a_proj_with_mqa.weight"].T
    c_kv, k_pe = ckv[:, :Dc], ckv[:, Dc:]
    kv = (rms_norm(c_kv, W[p + "kv_a_layernorm.weight"], eps) @ W[p + "kv_b_proj.weight"].T).reshape(T, H, Dn + Dv)
    k_nope, v = kv[..., :Dn], kv[..., Dn:]
    q_pe = rotate_interleaved(q_pe, cos[:, None, :], sin[:, None, :])
    k_pe = rotate_interleaved(k_pe, cos, sin)
    s = (np.einsum("thd,shd->hts", q_nope, k_nope) + np.einsum("thd,sd->hts", q_pe, k_pe)) * scale
    s = s + np.triu(np.full((T, T), -np.inf), 1)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    o = np.einsum("hts,shd->thd", s, v).reshape(T, H * Dv)
    return o @ W[p + "o_proj.weight"].T


def mlp(W, p, x):
    g = x @ W[p + "gate_proj.weight"].T
    return ((g / (1 + np.exp(-g))) * (x @ W[p + "up_proj.weight"].T)) @ W[p + "down_proj.weight"].T


def moe(cfg, W, p, x):
    E, K, G, kg = cfg["n_routed_experts"], cfg["num_experts_per_tok"], cfg["n_group"], cfg["topk_group"]
    scores = 1 / (1 + np.exp(-(x @ W[p + "gate.weight"].T)))
    choice = scores + W[p + "gate.e_score_correction_bias"]
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        c = choice[t].copy()
        grp = c.reshape(G, E // G)
        group_scores = np.sort(grp, axis=1)[:, -2:].sum(1)
        keep = np.argsort(-group_scores, kind="stable")[:kg]
        mask = np.full(G, True)
        mask[keep] = False
        c.reshape(G, E // G)[mask] = -np.inf
        idx = np.argsort(-c, kind="stable")[:K]  # ties: lower index first
        w = scores[t, idx]
        if cfg.get("norm_topk_prob", True):
            w = w / (w.sum() + 1e-20)
        w = w * cfg.get("routed_scaling_factor", 1.0)
        for e, we in sorted(zip(idx, w)):
            out[t] += we * mlp(W, f"{p}experts.{e}.", x[t:t + 1])[0]
    if cfg.get("n_shared_experts", 0):
        out += mlp(W, p + "shared_experts.", x)
    return out


def forward(cfg, W, ids):
    eps = cfg["rms_norm_eps"]
    h = W["model.embed_tokens.weight"][ids]
    inv_freq, attention_factor = rope_inv_freq(cfg)
    ang = np.arange(len(ids), dtype=np.float64)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(ang) * attention_factor, np.sin(ang) * attention_factor
    scale = (cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]) ** -0.5
    rs = cfg.get("rope_scaling")
    if rs and rs.get("mscale_all_dim"):
        m = yarn_get_mscale(rs["factor"], rs["mscale_all_dim"])
        scale *= m * m
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = h + attention(cfg, W, p + "self_attn.", rms_norm(h, W[p + "input_layernorm.weight"], eps), cos, sin, scale)
        x = rms_norm(h, W[p + "post_attention_layernorm.weight"], eps)
        is_moe = l >= cfg.get("first_k_dense_replace", 0) and l % cfg.get("moe_layer_freq", 1) == 0
        h = h + (moe(cfg, W, p + "mlp.", x) if is_moe else mlp(W, p + "mlp.", x))
    logits = rms_norm(h, W["model.norm.weight"], eps) @ W["lm_head.weight"].T
    return logits, h


# ---- tables for tests/test_rope.c ----------------------------------------------------------

ROPE_CASES = [
    ("Kimi K2: beta_fast = beta_slow = 1", dict(qk_rope_head_dim=64, rope_theta=50000.0, rope_scaling=dict(
        type="yarn", factor=32.0, beta_fast=1.0, beta_slow=1.0, original_max_position_embeddings=4096))),
    ("beta_fast < beta_slow: a falling ramp", dict(qk_rope_head_dim=64, rope_theta=10000.0, rope_scaling=dict(
        type="yarn", factor=40.0, beta_fast=1.0, beta_slow=32.0, original_max_position_embeddings=4096))),
    ("low = high = 0: high += 0.001", dict(qk_rope_head_dim=64, rope_theta=10000.0, rope_scaling=dict(
        type="yarn", factor=40.0, beta_fast=1000.0, beta_slow=700.0, original_max_position_embeddings=4096))),
]


# ---- DeepSeek-V3.1's W8A8 GEMM (scale_fmt ue8m0) ----------------------------------------------

FINITE = np.array([c for c in range(256) if not np.isnan(E4M3[c])])


def e4m3_round(v):
    """float32 values -> nearest e4m3 value (ties to the even code), saturating at +-448."""
    v = np.clip(v.astype(np.float64), -448.0, 448.0)
    vals = E4M3[FINITE]
    d = np.abs(v.reshape(-1, 1) - vals.reshape(1, -1))
    best = d.min(1, keepdims=True)
    tie = d == best
    even = (FINITE & 1) == 0
    pick = np.where(tie.sum(1) > 1, np.argmax(tie & even, 1), np.argmax(tie, 1))
    out = vals[pick].reshape(v.shape)
    return np.where(out == 0, np.copysign(0.0, v), out)


def w8a8_ue8m0(d):
    """V3.1's kernel.py: s = max(amax, 1e-4) / 448 in FP32, then s = 2^ceil(log2 s); y = sum over
    128-blocks of (xq . wq) * s_x * s_w. Writes w8a8_ue8m0.f32 (y) and w8a8_ue8m0_scale.f32 (s_x)."""
    x = read_safetensors(f"{d}/w8a8_gemm.safetensors")["x"].astype(np.float32)
    M, K = x.shape
    # the weight as stored: e4m3 codes and 128x128 block scales
    blob = open(f"{d}/w8a8_gemm.safetensors", "rb").read()
    n = struct.unpack("<Q", blob[:8])[0]
    raw, base = json.loads(blob[8:8 + n]), 8 + n
    a, b = raw["w.weight"]["data_offsets"]
    wq = E4M3[np.frombuffer(blob[base + a:base + b], dtype=np.uint8)].reshape(raw["w.weight"]["shape"])
    a, b = raw["w.weight_scale_inv"]["data_offsets"]
    ws = np.frombuffer(blob[base + a:base + b], dtype="<f4").reshape(raw["w.weight_scale_inv"]["shape"])
    N = wq.shape[0]
    nb = (K + 127) // 128
    sx = np.zeros((M, nb), dtype=np.float32)
    xq = np.zeros((M, K))
    for m in range(M):
        for g in range(nb):
            blk = x[m, 128 * g:128 * g + 128]
            s = np.float32(max(np.float32(np.abs(blk).max()), np.float32(1e-4))) / np.float32(448.0)
            mant, e = np.frexp(np.float64(s))  # exact ceil(log2 s)
            s = np.float32(2.0 ** (e - 1 if mant == 0.5 else e))
            sx[m, g] = s
            xq[m, 128 * g:128 * g + 128] = e4m3_round((blk / s).astype(np.float32))
    y = np.zeros((M, N))
    for g in range(nb):
        part = xq[:, 128 * g:128 * g + 128] @ wq[:, 128 * g:128 * g + 128].T  # exact in FP64
        y += part * sx[:, g:g + 1].astype(np.float64) * np.repeat(ws[:, g], 128)[:N][None, :]
    y.astype("<f4").tofile(f"{d}/w8a8_ue8m0.f32")
    sx.astype("<f4").tofile(f"{d}/w8a8_ue8m0_scale.f32")
    print(f"{d}: w8a8_ue8m0.f32 [{M}][{N}], w8a8_ue8m0_scale.f32 [{M}][{nb}]")


def main(argv):
    if len(argv) == 3 and argv[1] == "--w8a8-ue8m0":
        w8a8_ue8m0(argv[2])
        return 0
    if argv[1:] == ["--rope-table"]:
        for label, cfg in ROPE_CASES:
            inv, _ = rope_inv_freq(cfg)
            print(f"/* {label} */")
            print(",\n".join(", ".join(f"{v:.9g}" for v in inv[i:i + 4]) for i in range(0, len(inv), 4)))
        return 0
    if len(argv) != 2:
        print(__doc__)
        return 2
    d = argv[1]
    cfg = json.load(open(f"{d}/config.json"))
    W = read_safetensors(f"{d}/model.safetensors")
    ids = json.load(open(f"{d}/ids.json"))
    logits, hidden = forward(cfg, W, np.array(ids))
    logits.astype("<f4").tofile(f"{d}/logits.f32")
    hidden.astype("<f4").tofile(f"{d}/hidden.f32")
    print(f"{d}: logits [{logits.shape[0]}][{logits.shape[1]}], hidden [{hidden.shape[0]}][{hidden.shape[1]}]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
