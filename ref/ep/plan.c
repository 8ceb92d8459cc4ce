/**
 * @file plan.c
 * @brief Deployment arithmetic (paper §3.4, docs/model.md §10). Every byte count comes from the tensor
 *        table (weights_foreach) and the config; the hardware figures are parameters.
 *
 * Model of a decode step (one token per sequence, `batch` sequences per attention-DP rank):
 *  - each GPU streams its resident weights once (attention heads of its TP shard, dense layers,
 *    its experts, its share of embedding/head) and the KV cache of its sequences from HBM;
 *  - per MoE layer each token is dispatched, in FP8 with 1×128 scales, to the GPUs holding its K
 *    experts and the BF16 results come back (DeepEP-style dispatch/combine, paper §3.4):
 *    intra-node over NVLink, inter-node over InfiniBand;
 *  - compute and communication overlap (two micro-batches, paper §3.4), so the step takes the
 *    larger of the two; FLOPs are not the bound at decode batch sizes and are reported aside.
 */
#include "plan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eplb.h"
#include "model/kvcache.h"
#include "model/weights.h"

/** Bytes of a stored tensor in the real checkpoint's format: FP8 + F32 scales where eligible. */
static double stored_bytes(const WeightSlot *s) {
    double n = (double)s->rows * (double)s->cols;
    if (s->kind == WEIGHT_VECTOR) return n * (s->f32_only ? 4 : 2);
    if (s->fp8 == 1) return n + 4.0 * (double)((s->rows + 127) / 128) * (double)((s->cols + 127) / 128);
    return 2 * n; /* BF16: embeddings, heads, gate, eh_proj */
}

/** Byte totals by role, over the whole model. */
typedef struct {
    double attn;        /* attention weights of all layers (incl. norms) */
    double attn_rep;    /* the part of attn not split by heads (q_a, kv_a, norms) */
    double dense;       /* dense FFN layers */
    double expert;      /* ONE routed expert (all are the same size) */
    double shared;      /* shared experts of all MoE layers */
    double gate;        /* gate matrices + biases */
    double embed_head;  /* embedding + lm_head */
    double mtp_extra;   /* MTP-only tensors (enorm, hnorm, eh_proj, copies) */
    int moe_layers;     /* MoE layers counted (MTP included when asked) */
    int with_mtp;
    int expert_layer;   /* the layer whose expert 0 is measured */
} Totals;

static int add_slot(void *ctx, const WeightSlot *s) {
    Totals *t = ctx;
    double b = stored_bytes(s);
    const char *n = s->name;
    if (s->mtp >= 0 && !t->with_mtp) return 0;
    if (s->expert >= 0) {
        if (s->expert == 0 && s->layer == t->expert_layer) t->expert += b; /* one expert, measured once */
        return 0;
    }
    if (strstr(n, "self_attn.") || strstr(n, "layernorm")) {
        t->attn += b;
        if (strstr(n, "q_a_proj") || strstr(n, "kv_a_proj") || s->kind == WEIGHT_VECTOR) t->attn_rep += b;
    } else if (strstr(n, "shared_experts")) t->shared += b;
    else if (strstr(n, "mlp.gate")) t->gate += b;
    else if (strstr(n, ".mlp.")) t->dense += b;
    else if (s->mtp >= 0) t->mtp_extra += b;
    else t->embed_head += b; /* embed_tokens, norm, lm_head */
    return 0;
}

void plan_evaluate(const Config *c, const Deployment *d, int batch, int ctx, int with_mtp, PlanResult *r) {
    memset(r, 0, sizeof *r);
    Weights w;
    Totals t;
    memset(&t, 0, sizeof t);
    t.with_mtp = with_mtp;
    int n_mtp = with_mtp ? c->num_nextn_predict_layers : 0;
    if (weights_alloc(&w, c, n_mtp, NULL)) return;
    /* One expert is measured on the first MoE layer (all experts have the same shape). */
    while (t.expert_layer < c->num_hidden_layers && !config_layer_is_moe(c, t.expert_layer)) t.expert_layer++;
    weights_foreach(&w, c, add_slot, &t);
    weights_free(&w);
    for (int l = 0; l < c->num_hidden_layers + n_mtp; l++) t.moe_layers += config_layer_is_moe(c, l);
    int E = c->n_routed_experts, K = c->num_experts_per_tok, D = c->hidden_size;

    /* Memory per GPU: attention heads split by TP, the rest of attention replicated; dense FFN
     * split by dense_tp; experts spread over EP ranks; embedding/head split by attention TP. */
    r->experts_per_gpu = (double)((E + d->redundant + d->ep - 1) / d->ep); /* the fullest rank */
    double per_gpu = t.attn_rep + (t.attn - t.attn_rep) / d->attn_tp + t.dense / d->dense_tp + t.gate +
                     t.embed_head / d->attn_tp + t.mtp_extra / d->attn_tp +
                     r->experts_per_gpu * t.expert * t.moe_layers;
    if (d->shared_on_ep) per_gpu += t.shared;
    r->weight_bytes = per_gpu;
    /* Latent KV cache: normalized c_kv + roped k_pe per token per layer, BF16 or FP8 (docs/model.md §3.3). */
    r->kv_bytes_per_token =
        (double)kvcache_bytes_per_token(c, d->kv_fp8 ? KV_FP8 : KV_BF16) * (c->num_hidden_layers + n_mtp);
    double free_bytes = 0.9 * d->hbm_gb * 1e9 - per_gpu;
    r->fits = free_bytes > 0;
    r->kv_tokens = r->fits ? free_bytes / r->kv_bytes_per_token : 0;
    /* Every GPU of an attention rank holds its sequences' whole latent cache (all heads read it). */
    r->max_batch = ctx > 0 ? floor(r->kv_tokens / ctx) : 0;
    r->kv_fits = r->fits && (double)batch * (double)ctx <= r->kv_tokens;

    /* All-to-all per token per MoE layer: one FP8 copy (+ scales) to each of the K experts, and
     * one BF16 result back from each. Experts on other nodes cross InfiniBand. */
    r->dispatch_bytes = (double)K * (D + 4.0 * ((D + 127) / 128));
    r->combine_bytes = (double)K * 2.0 * D;
    int nodes = (d->gpus + d->gpus_per_node - 1) / d->gpus_per_node;
    r->remote_fraction = nodes > 1 ? 1.0 - 1.0 / nodes : 0.0;

    /* Decode step. Tokens per GPU per step = batch (one per sequence of this DP rank). */
    double tokens = batch;
    double kv_read = tokens * (double)ctx * r->kv_bytes_per_token;
    r->step_compute_s = (per_gpu + kv_read) / (d->hbm_tbs * 1e12);
    double a2a = tokens * (r->dispatch_bytes + r->combine_bytes) * t.moe_layers;
    double remote = a2a * r->remote_fraction, local = a2a - remote;
    r->step_comm_s = local / (d->nvlink_gbs * 1e9) + (d->ib_gbs > 0 ? remote / (d->ib_gbs * 1e9) : 0);
    r->step_s = r->step_compute_s > r->step_comm_s ? r->step_compute_s : r->step_comm_s;
    int dp = d->gpus / d->attn_tp;
    r->tokens_per_s = r->step_s > 0 ? dp * tokens / r->step_s : 0;
    r->load_imbalance = r->load_imbalance_contiguous = 1;
}

int plan_evaluate_eplb(const Config *c, const Deployment *hw, const EplbPlan *p, int batch, int ctx, int with_mtp,
                       Deployment *d, PlanResult *r, Err *err) {
    if (p->n_experts != c->n_routed_experts)
        return err_set(err, "the plan places %d experts per layer, the model has %d", p->n_experts, c->n_routed_experts);
    *d = *hw;
    d->name = "EPLB plan";
    d->gpus = d->ep = p->n_gpus;
    d->gpus_per_node = p->n_gpus / p->n_nodes;
    d->attn_tp = d->dense_tp = 1;
    d->redundant = p->n_physical - p->n_experts;
    d->shared_on_ep = 1;
    plan_evaluate(c, d, batch, ctx, with_mtp, r);
    double *gl = xcalloc((size_t)p->n_gpus, sizeof *gl), after = 0, before = 0;
    if (!gl) return err_set(err, "out of memory");
    for (int l = 0; l < p->n_layers; l++) {
        after += eplb_gpu_load(p, l, gl) / p->n_layers;
        before += eplb_contiguous_load(p->weight + (size_t)l * p->n_experts, p->n_experts, p->n_gpus, gl) / p->n_layers;
    }
    free(gl);
    r->load_imbalance = after, r->load_imbalance_contiguous = before;
    r->step_comm_s *= after;
    r->step_s = r->step_compute_s > r->step_comm_s ? r->step_compute_s : r->step_comm_s;
    r->tokens_per_s = r->step_s > 0 ? d->gpus * (double)batch / r->step_s : 0;
    return 0;
}

const Deployment *plan_presets(int *n) {
    /* Hardware: H800 ≈ H100 SXM (3.35 TB/s HBM3, 80 GB; NVLink 400 GB/s on H800, 450 on H100),
     * 400 Gb/s InfiniBand per GPU ≈ 50 GB/s (paper §3.1); H200 141 GB at 4.8 TB/s. */
    static const Deployment presets[] = {
        /* Paper §3.4: prefill unit = 4 nodes / 32 GPUs, attention TP4 + DP8, EP32 with 32 redundant
         * experts (8 + 1 per GPU), dense MLPs TP1, shared expert with every rank. */
        { "prefill unit (paper: TP4/DP8/EP32, 32 redundant)", 32, 8, 4, 1, 32, 32, 1, 80, 3.35, 400, 50, 1979, 0 },
        /* Decode unit = 40 nodes / 320 GPUs, attention TP4 + DP80, EP320: one expert per GPU,
         * 64 GPUs for the redundant and shared experts. */
        { "decode unit (paper: TP4/DP80/EP320)", 320, 8, 4, 1, 320, 64, 0, 80, 3.35, 400, 50, 1979, 0 },
        { "one node of 8x H200 (TP1/DP8/EP8)", 8, 8, 1, 1, 8, 0, 1, 141, 4.8, 450, 0, 1979, 0 },
        { "two nodes of 8x H100 (TP1/DP16/EP16)", 16, 8, 1, 1, 16, 0, 1, 80, 3.35, 450, 50, 1979, 0 },
    };
    *n = (int)(sizeof presets / sizeof presets[0]);
    return presets;
}
