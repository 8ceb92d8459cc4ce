/**
 * @file eplb.c
 * @brief Routing statistics and the EPLB placement (eplb.h).
 */
#include "eplb.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/moe.h"

/* ------------------------------------------------------------------------------------- */
/* routing statistics                                                                      */

int routing_stats_init(RoutingStats *s, const Config *c, int n_mtp, Err *err) {
    memset(s, 0, sizeof *s);
    int L = c->num_hidden_layers, n = 0;
    for (int l = 0; l < L + n_mtp; l++) n += config_layer_is_moe(c, l);
    s->n_experts = c->n_routed_experts, s->n_groups = c->n_group > 0 ? c->n_group : 1, s->n_main = L;
    s->layer = xcalloc((size_t)(n ? n : 1), sizeof *s->layer);
    s->tokens = xcalloc((size_t)(n ? n : 1), sizeof *s->tokens);
    s->load = xcalloc((size_t)(n ? n : 1) * (size_t)(s->n_experts ? s->n_experts : 1), sizeof *s->load);
    if (!s->layer || !s->tokens || !s->load) {
        routing_stats_free(s);
        return err_set(err, "out of memory");
    }
    for (int l = 0; l < L + n_mtp; l++)
        if (config_layer_is_moe(c, l)) s->layer[s->n_layers++] = l;
    return 0;
}

void routing_stats_free(RoutingStats *s) {
    free(s->layer), free(s->tokens), free(s->load);
    memset(s, 0, sizeof *s);
}

int routing_stats_row(const RoutingStats *s, int layer) {
    for (int j = 0; j < s->n_layers; j++)
        if (s->layer[j] == layer) return j;
    return -1;
}

void routing_stats_add(RoutingStats *s, int layer, int64_t tokens, const int64_t *load) {
    int j = routing_stats_row(s, layer);
    if (j < 0) return;
    s->tokens[j] += tokens;
    for (int e = 0; e < s->n_experts; e++) s->load[(size_t)j * s->n_experts + e] += load[e];
}

int routing_stats_write(const RoutingStats *s, const char *path, Err *err) {
    size_t cap = 256 + (size_t)s->n_layers * (128 + 21 * (size_t)s->n_experts), n = 0;
    char *buf = malloc(cap);
    if (!buf) return err_set(err, "out of memory");
    for (int j = 0; j < s->n_layers; j++) {
        if (!s->tokens[j]) continue;
        n += (size_t)snprintf(buf + n, cap - n, "{\"layer\":%d,\"mtp\":%s,\"tokens\":%lld,\"experts\":%d,\"groups\":%d,\"load\":[",
                              s->layer[j], s->layer[j] >= s->n_main ? "true" : "false", (long long)s->tokens[j], s->n_experts,
                              s->n_groups);
        for (int e = 0; e < s->n_experts; e++)
            n += (size_t)snprintf(buf + n, cap - n, "%s%lld", e ? "," : "", (long long)s->load[(size_t)j * s->n_experts + e]);
        n += (size_t)snprintf(buf + n, cap - n, "]}\n");
    }
    int rc = write_file_atomic(path, buf, n, err);
    free(buf);
    return rc ? err_prefix(err, "--routing-stats %s", path) : 0;
}

/** An integer field of @p o in [lo, hi]. */
static int json_int(const cJSON *o, const char *name, double lo, double hi, int64_t *out, Err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi)
        return err_set(err, "\"%s\" must be an integer in [%.0f, %.0f]", name, lo, hi);
    *out = (int64_t)v->valuedouble;
    return 0;
}

/** An array field of @p o with exactly @p n integers in [lo, hi] into @p out (int64 or int). */
static int json_ints(const cJSON *o, const char *name, int n, double lo, double hi, int64_t *out64, int *out, Err *err) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n) return err_set(err, "\"%s\" must be an array of %d integers", name, n);
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, a) {
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi)
            return err_set(err, "\"%s\"[%d] must be an integer in [%.0f, %.0f]", name, i, lo, hi);
        if (out64) out64[i] = (int64_t)v->valuedouble;
        if (out) out[i] = (int)v->valuedouble;
        i++;
    }
    return 0;
}

int routing_stats_read(RoutingStats *s, const char *path, Err *err) {
    memset(s, 0, sizeof *s);
    char *text;
    size_t len;
    if (read_file(path, (size_t)1 << 30, &text, &len, err)) return -1;
    int rc = 0, line = 0, cap = 0;
    int64_t *row = NULL;
    s->n_main = 1 << 30;
    for (char *p = text, *next; p && *p && !rc; p = next) {
        next = strchr(p, '\n');
        if (next) *next++ = 0;
        line++;
        if (strspn(p, " \t\r") == strlen(p)) continue;
        cJSON *o = cJSON_Parse(p);
        int64_t layer = 0, tokens = 0, E = 0, G = 1;
        const cJSON *mtp = o ? cJSON_GetObjectItemCaseSensitive(o, "mtp") : NULL;
        if (!o || !cJSON_IsObject(o)) rc = err_set(err, "not a JSON object");
        else if (json_int(o, "layer", 0, 1 << 20, &layer, err) || json_int(o, "tokens", 0, 9e15, &tokens, err) ||
                 json_int(o, "experts", 1, 1 << 16, &E, err) ||
                 (cJSON_GetObjectItemCaseSensitive(o, "groups") && json_int(o, "groups", 1, 1 << 16, &G, err)))
            rc = -1;
        else if (mtp && !cJSON_IsBool(mtp)) rc = err_set(err, "\"mtp\" must be true or false");
        else if (s->n_experts && (E != s->n_experts || G != s->n_groups))
            rc = err_set(err, "%lld experts in %lld groups, but earlier lines have %d in %d", (long long)E, (long long)G,
                         s->n_experts, s->n_groups);
        else if (!(row = row ? row : malloc((size_t)E * sizeof *row))) rc = err_set(err, "out of memory");
        else if (json_ints(o, "load", (int)E, 0, 9e15, row, NULL, err)) rc = -1;
        if (!rc) {
            s->n_experts = (int)E, s->n_groups = (int)G;
            if (mtp && cJSON_IsTrue(mtp) && layer < s->n_main) s->n_main = (int)layer;
            int j = routing_stats_row(s, (int)layer);
            if (j < 0) { /* a new layer: insert it in ascending order */
                if (s->n_layers == cap) {
                    cap = cap ? 2 * cap : 8;
                    int *l2 = realloc(s->layer, (size_t)cap * sizeof *l2);
                    if (l2) s->layer = l2;
                    int64_t *t2 = realloc(s->tokens, (size_t)cap * sizeof *t2);
                    if (t2) s->tokens = t2;
                    int64_t *d2 = realloc(s->load, (size_t)cap * (size_t)E * sizeof *d2);
                    if (d2) s->load = d2;
                    if (!l2 || !t2 || !d2) rc = err_set(err, "out of memory");
                }
                if (!rc) {
                    j = s->n_layers;
                    while (j > 0 && s->layer[j - 1] > layer) {
                        s->layer[j] = s->layer[j - 1], s->tokens[j] = s->tokens[j - 1];
                        memcpy(s->load + (size_t)j * E, s->load + (size_t)(j - 1) * E, (size_t)E * sizeof *s->load);
                        j--;
                    }
                    s->layer[j] = (int)layer, s->tokens[j] = 0;
                    memset(s->load + (size_t)j * E, 0, (size_t)E * sizeof *s->load);
                    s->n_layers++;
                }
            }
            if (!rc) routing_stats_add(s, (int)layer, tokens, row);
        }
        cJSON_Delete(o);
        if (rc) err_prefix(err, "%s line %d", path, line);
    }
    if (!rc && s->n_layers == 0) rc = err_set(err, "%s: no routing statistics in it", path);
    free(row);
    free(text);
    if (rc) routing_stats_free(s);
    return rc;
}

/** Counts the routing of the layer it just ran (the gate results in @p a). */
static int counter_forward(MoeHook *hook, float *out, const float *x, int64_t T, const LayerWeights *w, MoEActs *a,
                           const ForwardContext *ctx, Err *err) {
    RoutingCounter *rc = (RoutingCounter *)((char *)hook - offsetof(RoutingCounter, hook));
    if (rc->next) {
        if (rc->next->forward(rc->next, out, x, T, w, a, ctx, err)) {
            rc->next->failed = 1; /* the wrapped hook's owner looks at its own flag */
            return -1;
        }
    } else {
        moe_forward(out, x, T, w, a, ctx);
    }
    memset(rc->scratch, 0, (size_t)rc->stats.n_experts * sizeof *rc->scratch);
    moe_count_load(rc->scratch, a, T, ctx->cfg);
    routing_stats_add(&rc->stats, w->index, T, rc->scratch);
    return 0;
}

int routing_counter_init(RoutingCounter *rc, const Config *c, int n_mtp, MoeHook *next, Err *err) {
    memset(rc, 0, sizeof *rc);
    rc->hook.forward = counter_forward;
    rc->next = next;
    if (routing_stats_init(&rc->stats, c, n_mtp, err)) return -1;
    rc->scratch = xcalloc((size_t)(rc->stats.n_experts ? rc->stats.n_experts : 1), sizeof *rc->scratch);
    if (!rc->scratch) {
        routing_counter_free(rc);
        return err_set(err, "out of memory");
    }
    return 0;
}

void routing_counter_free(RoutingCounter *rc) {
    free(rc->scratch);
    routing_stats_free(&rc->stats);
    memset(rc, 0, sizeof *rc);
}

/* ------------------------------------------------------------------------------------- */
/* the placement                                                                           */

/**
 * Balanced packing of @p n items of weight @p w into @p packs packs of capacity cap[p] (Σ cap = n):
 * heaviest first, each into the lightest pack with room (the first such on ties). One item per
 * pack is the identity, as in EPLB. pack[i], and rank[i] its position in the pack.
 */
static void balanced_packing(const double *w, int n, int packs, const int *cap, int *pack, int *rank, int *order,
                             double *pw, int *cnt) {
    int all_one = n == packs;
    for (int p = 0; p < packs; p++) all_one &= cap[p] == 1;
    if (all_one) {
        for (int i = 0; i < n; i++) pack[i] = i, rank[i] = 0;
        return;
    }
    for (int i = 0; i < n; i++) { /* stable insertion sort, heaviest first */
        int at = i;
        while (at > 0 && w[order[at - 1]] < w[i]) order[at] = order[at - 1], at--;
        order[at] = i;
    }
    for (int p = 0; p < packs; p++) pw[p] = 0, cnt[p] = 0;
    for (int k = 0; k < n; k++) {
        int i = order[k], best = -1;
        for (int p = 0; p < packs; p++)
            if (cnt[p] < cap[p] && (best < 0 || pw[p] < pw[best])) best = p;
        pack[i] = best, rank[i] = cnt[best]++;
        pw[best] += w[i];
    }
}

/**
 * Replication of @p n_log experts of weight @p w into @p n_phy copies: copy i < n_log is expert i,
 * each further copy goes to the expert of the largest w / count (the first on ties).
 */
static void replicate(const double *w, int n_log, int n_phy, int *phy2log, int *phy_rank, int *count) {
    for (int e = 0; e < n_log; e++) phy2log[e] = e, phy_rank[e] = 0, count[e] = 1;
    for (int i = n_log; i < n_phy; i++) {
        int best = 0;
        for (int e = 1; e < n_log; e++)
            if (w[e] / count[e] > w[best] / count[best]) best = e;
        phy2log[i] = best, phy_rank[i] = count[best]++;
    }
}

/** Capacities of @p packs packs sharing @p n items: floor(n/packs), the first n mod packs one more. */
static void capacities(int *cap, int n, int packs) {
    for (int p = 0; p < packs; p++) cap[p] = n / packs + (p < n % packs);
}

/** Scratch of one layer's placement. */
typedef struct {
    double *gw, *mw, *pw_items, *pw;
    int *gpack, *grank, *log2mlog, *mlog2log, *phy2mlog, *prank, *mcount, *pack, *rank, *order, *cnt, *cap, *pphy2phy;
} Work;

/** One layer: the hierarchical procedure of the file comment (global: groups = nodes = 1). */
static void place_layer(EplbPlan *p, int row, const double *w, int G, int N, Work *k) {
    int E = p->n_experts, R = p->n_physical, P = p->n_gpus, gsize = E / G, gpn = G / N, epn = E / N, rpn = R / N, ppn = P / N;
    /* 1. groups onto nodes */
    for (int g = 0; g < G; g++) {
        k->gw[g] = 0;
        for (int j = 0; j < gsize; j++) k->gw[g] += w[g * gsize + j];
    }
    capacities(k->cap, G, N);
    balanced_packing(k->gw, G, N, k->cap, k->gpack, k->grank, k->order, k->pw, k->cnt);
    for (int e = 0; e < E; e++) {
        int g = e / gsize;
        k->log2mlog[e] = (k->gpack[g] * gpn + k->grank[g]) * gsize + e % gsize;
        k->mlog2log[k->log2mlog[e]] = e;
    }
    int *phy2log = p->phy2log + (size_t)row * R, *phy_rank = p->phy_rank + (size_t)row * R, *count = p->log_count + (size_t)row * E;
    for (int n = 0; n < N; n++) {
        /* 2. copies within the node (experts in node order, "middle-logical" ids n·E/N + j) */
        double *mw = k->mw;
        for (int j = 0; j < epn; j++) mw[j] = w[k->mlog2log[n * epn + j]];
        replicate(mw, epn, rpn, k->phy2mlog, k->prank, k->mcount);
        /* 3. the node's copies onto its GPUs */
        for (int i = 0; i < rpn; i++) k->pw_items[i] = mw[k->phy2mlog[i]] / k->mcount[k->phy2mlog[i]];
        capacities(k->cap, rpn, ppn);
        balanced_packing(k->pw_items, rpn, ppn, k->cap, k->pack, k->rank, k->order, k->pw, k->cnt);
        int start = 0;
        for (int g = 0; g < ppn; g++) k->cnt[g] = start, start += k->cap[g];
        for (int i = 0; i < rpn; i++) k->pphy2phy[k->cnt[k->pack[i]] + k->rank[i]] = i;
        for (int s = 0; s < rpn; s++) {
            int i = k->pphy2phy[s], slot = n * rpn + s;
            phy2log[slot] = k->mlog2log[n * epn + k->phy2mlog[i]];
            phy_rank[slot] = k->prank[i];
        }
        for (int j = 0; j < epn; j++) count[k->mlog2log[n * epn + j]] = k->mcount[j];
    }
}

int eplb_rebalance(EplbPlan *p, const double *weight, const int *layers, int n_layers, int E, int physical, int groups,
                   int nodes, int gpus, Err *err) {
    memset(p, 0, sizeof *p);
    if (n_layers < 1 || E < 1 || E > 1 << 16) return err_set(err, "eplb: %d layers of %d experts", n_layers, E);
    if (gpus < 1 || nodes < 1 || gpus % nodes) return err_set(err, "eplb: %d GPUs must be a positive multiple of %d nodes", gpus, nodes);
    if (physical < E || physical > 64 * E) return err_set(err, "eplb: %d physical experts for %d logical ones (E .. 64E)", physical, E);
    if (physical < gpus) return err_set(err, "eplb: %d physical experts leave some of %d GPUs empty", physical, gpus);
    if (groups < 1 || E % groups) return err_set(err, "eplb: %d experts do not split into %d groups", E, groups);
    for (int i = 0; i < n_layers * E; i++)
        if (!(weight[i] >= 0 && weight[i] < 1e300)) return err_set(err, "eplb: loads must be finite and non-negative");
    p->hierarchical = groups % nodes == 0 && physical % nodes == 0;
    int G = p->hierarchical ? groups : 1, N = p->hierarchical ? nodes : 1;
    p->n_layers = n_layers, p->n_experts = E, p->n_physical = physical, p->n_groups = groups, p->n_nodes = nodes, p->n_gpus = gpus;
    size_t LR = (size_t)n_layers * physical, LE = (size_t)n_layers * E;
    p->slot_start = xcalloc((size_t)gpus + 1, sizeof *p->slot_start);
    p->layer = xcalloc((size_t)n_layers, sizeof *p->layer);
    p->phy2log = xcalloc(LR, sizeof *p->phy2log);
    p->phy_rank = xcalloc(LR, sizeof *p->phy_rank);
    p->log_count = xcalloc(LE, sizeof *p->log_count);
    p->weight = xcalloc(LE, sizeof *p->weight);
    int big = physical > E ? physical : E;
    Work k;
    double *dmem = xcalloc(4 * (size_t)big, sizeof *dmem);
    int *imem = xcalloc(13 * (size_t)big + 2, sizeof *imem);
    if (!p->slot_start || !p->layer || !p->phy2log || !p->phy_rank || !p->log_count || !p->weight || !dmem || !imem) {
        free(dmem), free(imem);
        eplb_plan_free(p);
        return err_set(err, "out of memory");
    }
    k.gw = dmem, k.mw = dmem + big, k.pw_items = dmem + 2 * big, k.pw = dmem + 3 * big;
    int *q = imem;
    int **ints[] = { &k.gpack, &k.grank, &k.log2mlog, &k.mlog2log, &k.phy2mlog, &k.prank, &k.mcount, &k.pack, &k.rank, &k.order,
                     &k.cnt, &k.cap, &k.pphy2phy };
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) *ints[i] = q, q += big;
    /* slots GPU by GPU: node n's GPUs hold its R/N slots, each GPU floor or ceil of its share */
    int start = 0;
    for (int n = 0; n < N; n++) {
        capacities(k.cap, physical / N, gpus / N);
        for (int g = 0; g < gpus / N; g++) p->slot_start[n * (gpus / N) + g] = start, start += k.cap[g];
    }
    p->slot_start[gpus] = start;
    memcpy(p->weight, weight, LE * sizeof *weight);
    for (int l = 0; l < n_layers; l++) {
        p->layer[l] = layers ? layers[l] : l;
        place_layer(p, l, weight + (size_t)l * E, G, N, &k);
    }
    free(dmem), free(imem);
    for (size_t i = 0; i < LE; i++) p->max_count = p->log_count[i] > p->max_count ? p->log_count[i] : p->max_count;
    p->log2phy = malloc(LE * (size_t)p->max_count * sizeof *p->log2phy);
    if (!p->log2phy) {
        eplb_plan_free(p);
        return err_set(err, "out of memory");
    }
    for (size_t i = 0; i < LE * (size_t)p->max_count; i++) p->log2phy[i] = -1;
    for (int l = 0; l < n_layers; l++)
        for (int s = 0; s < physical; s++) {
            size_t i = (size_t)l * physical + s;
            p->log2phy[((size_t)l * E + p->phy2log[i]) * p->max_count + p->phy_rank[i]] = s;
        }
    return 0;
}

int eplb_rebalance_stats(EplbPlan *p, const RoutingStats *s, int physical, int groups, int nodes, int gpus, Err *err) {
    size_t n = (size_t)s->n_layers * (size_t)s->n_experts;
    double *w = xcalloc(n ? n : 1, sizeof *w);
    if (!w) return err_set(err, "out of memory");
    for (size_t i = 0; i < n; i++) w[i] = (double)s->load[i];
    int rc = eplb_rebalance(p, w, s->layer, s->n_layers, s->n_experts, physical, groups > 0 ? groups : s->n_groups, nodes, gpus, err);
    free(w);
    return rc;
}

int eplb_plan_set_loads(EplbPlan *p, const RoutingStats *s, Err *err) {
    if (s->n_experts != p->n_experts) return err_set(err, "%d experts per layer, the plan has %d", s->n_experts, p->n_experts);
    for (int l = 0; l < p->n_layers; l++)
        if (routing_stats_row(s, p->layer[l]) < 0) return err_set(err, "no loads of layer %d, which the plan places", p->layer[l]);
    for (int l = 0; l < p->n_layers; l++) {
        const int64_t *load = s->load + (size_t)routing_stats_row(s, p->layer[l]) * s->n_experts;
        for (int e = 0; e < p->n_experts; e++) p->weight[(size_t)l * p->n_experts + e] = (double)load[e];
    }
    return 0;
}

void eplb_plan_free(EplbPlan *p) {
    free(p->slot_start), free(p->layer), free(p->phy2log), free(p->phy_rank), free(p->log_count), free(p->log2phy), free(p->weight);
    memset(p, 0, sizeof *p);
}

int eplb_slot_gpu(const EplbPlan *p, int slot) {
    int g = 0;
    while (g + 1 < p->n_gpus && p->slot_start[g + 1] <= slot) g++;
    return g;
}

int eplb_plan_row(const EplbPlan *p, int layer) {
    for (int l = 0; l < p->n_layers; l++)
        if (p->layer[l] == layer) return l;
    return -1;
}

/** max / mean of @p n loads (1 when all are zero). */
static double imbalance(const double *x, int n) {
    double mx = 0, sum = 0;
    for (int i = 0; i < n; i++) mx = fmax(mx, x[i]), sum += x[i];
    return sum > 0 ? mx / (sum / n) : 1.0;
}

double eplb_gpu_load(const EplbPlan *p, int row, double *gpu_load) {
    const int *phy2log = p->phy2log + (size_t)row * p->n_physical, *count = p->log_count + (size_t)row * p->n_experts;
    const double *w = p->weight + (size_t)row * p->n_experts;
    for (int g = 0; g < p->n_gpus; g++) {
        gpu_load[g] = 0;
        for (int s = p->slot_start[g]; s < p->slot_start[g + 1]; s++) gpu_load[g] += w[phy2log[s]] / count[phy2log[s]];
    }
    return imbalance(gpu_load, p->n_gpus);
}

double eplb_contiguous_load(const double *weight, int E, int gpus, double *gpu_load) {
    for (int g = 0; g < gpus; g++) { /* ep_plan_init's split: first[r] = E·r/N */
        gpu_load[g] = 0;
        for (int e = (int)((int64_t)E * g / gpus); e < (int)((int64_t)E * (g + 1) / gpus); e++) gpu_load[g] += weight[e];
    }
    return imbalance(gpu_load, gpus);
}

void eplb_print_report(FILE *f, const EplbPlan *p) {
    double *gl = xcalloc((size_t)p->n_gpus, sizeof *gl), before_sum = 0, after_sum = 0;
    if (!gl) return;
    fprintf(f, "%s policy: %d experts, %d physical slots, %d groups, %d node(s), %d GPUs (%d..%d slots each)\n",
            p->hierarchical ? "hierarchical" : "global", p->n_experts, p->n_physical, p->n_groups, p->n_nodes, p->n_gpus,
            p->slot_start[p->n_gpus] / p->n_gpus, (p->slot_start[p->n_gpus] + p->n_gpus - 1) / p->n_gpus);
    fprintf(f, "layer   max/mean GPU load: before (contiguous)   after (EPLB)   copies of the hottest expert\n");
    for (int l = 0; l < p->n_layers; l++) {
        const double *w = p->weight + (size_t)l * p->n_experts;
        double before = eplb_contiguous_load(w, p->n_experts, p->n_gpus, gl), after = eplb_gpu_load(p, l, gl);
        int hot = 0;
        for (int e = 1; e < p->n_experts; e++) hot = w[e] > w[hot] ? e : hot;
        fprintf(f, "%5d   %38.3f   %12.3f   expert %d x%d\n", p->layer[l], before, after, hot,
                p->log_count[(size_t)l * p->n_experts + hot]);
        before_sum += before, after_sum += after;
    }
    fprintf(f, "mean    %38.3f   %12.3f\n", before_sum / p->n_layers, after_sum / p->n_layers);
    free(gl);
}

/* ------------------------------------------------------------------------------------- */
/* plan files                                                                              */

static cJSON *int_array(const int *v, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

int eplb_plan_write(const EplbPlan *p, const char *path, Err *err) {
    cJSON *o = cJSON_CreateObject(), *layers = cJSON_CreateArray();
    double *gl = xcalloc((size_t)p->n_gpus, sizeof *gl);
    int *slots = xcalloc((size_t)p->n_gpus, sizeof *slots);
    if (!o || !layers || !gl || !slots) {
        cJSON_Delete(o), cJSON_Delete(layers), free(gl), free(slots);
        return err_set(err, "out of memory");
    }
    for (int g = 0; g < p->n_gpus; g++) slots[g] = p->slot_start[g + 1] - p->slot_start[g];
    cJSON_AddStringToObject(o, "format", "dsv3-eplb-plan");
    cJSON_AddNumberToObject(o, "version", 1);
    cJSON_AddStringToObject(o, "policy", p->hierarchical ? "hierarchical" : "global");
    cJSON_AddNumberToObject(o, "experts", p->n_experts);
    cJSON_AddNumberToObject(o, "physical", p->n_physical);
    cJSON_AddNumberToObject(o, "groups", p->n_groups);
    cJSON_AddNumberToObject(o, "nodes", p->n_nodes);
    cJSON_AddNumberToObject(o, "gpus", p->n_gpus);
    cJSON_AddItemToObject(o, "slots", int_array(slots, p->n_gpus));
    for (int l = 0; l < p->n_layers; l++) {
        cJSON *L = cJSON_CreateObject(), *l2p = cJSON_CreateArray(), *w = cJSON_CreateArray(), *g = cJSON_CreateArray();
        cJSON_AddNumberToObject(L, "layer", p->layer[l]);
        cJSON_AddItemToObject(L, "physical_to_logical", int_array(p->phy2log + (size_t)l * p->n_physical, p->n_physical));
        for (int e = 0; e < p->n_experts; e++)
            cJSON_AddItemToArray(l2p, int_array(p->log2phy + ((size_t)l * p->n_experts + e) * p->max_count, p->max_count));
        cJSON_AddItemToObject(L, "logical_to_physical", l2p);
        cJSON_AddItemToObject(L, "logical_count", int_array(p->log_count + (size_t)l * p->n_experts, p->n_experts));
        for (int e = 0; e < p->n_experts; e++) cJSON_AddItemToArray(w, cJSON_CreateNumber(p->weight[(size_t)l * p->n_experts + e]));
        cJSON_AddItemToObject(L, "load", w);
        eplb_gpu_load(p, l, gl);
        for (int k = 0; k < p->n_gpus; k++) cJSON_AddItemToArray(g, cJSON_CreateNumber(gl[k]));
        cJSON_AddItemToObject(L, "gpu_load", g);
        cJSON_AddItemToArray(layers, L);
    }
    cJSON_AddItemToObject(o, "layers", layers);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    free(gl), free(slots);
    if (!text) return err_set(err, "out of memory");
    size_t n = strlen(text);
    text[n] = '\n'; /* cJSON's buffer has the NUL's byte; the file ends with a newline */
    int rc = write_file_atomic(path, text, n + 1, err);
    free(text);
    return rc;
}

int eplb_plan_read(EplbPlan *p, const char *path, Err *err) {
    memset(p, 0, sizeof *p);
    char *text;
    size_t len;
    if (read_file(path, (size_t)1 << 28, &text, &len, err)) return -1;
    cJSON *o = cJSON_Parse(text);
    free(text);
    int rc = 0;
    int64_t E = 0, R = 0, G = 0, N = 0, P = 0, ver = 0;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(o, "format"), *pol = cJSON_GetObjectItemCaseSensitive(o, "policy");
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(o, "layers");
    if (!o || !cJSON_IsObject(o)) rc = err_set(err, "not a JSON object");
    else if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "dsv3-eplb-plan"))
        rc = err_set(err, "\"format\" must be \"dsv3-eplb-plan\" (a plan written by dsv3 eplb -o)");
    else if (json_int(o, "version", 1, 1, &ver, err) || json_int(o, "experts", 1, 1 << 16, &E, err) ||
             json_int(o, "physical", 1, 1 << 22, &R, err) || json_int(o, "groups", 1, 1 << 16, &G, err) ||
             json_int(o, "nodes", 1, 1 << 16, &N, err) || json_int(o, "gpus", 1, 4096, &P, err))
        rc = -1;
    else if (!cJSON_IsString(pol) || (strcmp(pol->valuestring, "hierarchical") && strcmp(pol->valuestring, "global")))
        rc = err_set(err, "\"policy\" must be \"hierarchical\" or \"global\"");
    else if (R < E || R < P || R > 64 * E) rc = err_set(err, "%lld physical slots for %lld experts on %lld GPUs", (long long)R, (long long)E, (long long)P);
    else if (!cJSON_IsArray(layers) || cJSON_GetArraySize(layers) < 1 || cJSON_GetArraySize(layers) > 1 << 16)
        rc = err_set(err, "\"layers\" must be a non-empty array");
    int nl = rc ? 0 : cJSON_GetArraySize(layers);
    if (!rc) {
        p->n_layers = nl, p->n_experts = (int)E, p->n_physical = (int)R, p->n_groups = (int)G, p->n_nodes = (int)N, p->n_gpus = (int)P;
        p->hierarchical = !strcmp(pol->valuestring, "hierarchical");
        p->slot_start = xcalloc((size_t)P + 1, sizeof *p->slot_start);
        p->layer = xcalloc((size_t)nl, sizeof *p->layer);
        p->phy2log = xcalloc((size_t)nl * R, sizeof *p->phy2log);
        p->phy_rank = xcalloc((size_t)nl * R, sizeof *p->phy_rank);
        p->log_count = xcalloc((size_t)nl * E, sizeof *p->log_count);
        p->weight = xcalloc((size_t)nl * E, sizeof *p->weight);
        if (!p->slot_start || !p->layer || !p->phy2log || !p->phy_rank || !p->log_count || !p->weight) rc = err_set(err, "out of memory");
    }
    int *slots = rc ? NULL : xcalloc((size_t)P, sizeof *slots);
    if (!rc && (!slots || json_ints(o, "slots", (int)P, 1, (double)R, NULL, slots, err))) rc = slots ? -1 : err_set(err, "out of memory");
    if (!rc) {
        for (int g = 0; g < P; g++) p->slot_start[g + 1] = p->slot_start[g] + slots[g];
        if (p->slot_start[P] != R) rc = err_set(err, "\"slots\" add up to %d, not the %lld physical slots", p->slot_start[P], (long long)R);
    }
    free(slots);
    int l = 0;
    const cJSON *L;
    if (!rc) cJSON_ArrayForEach(L, layers) {
        int64_t layer = 0;
        int *p2l = p->phy2log + (size_t)l * R, *cnt = p->log_count + (size_t)l * E;
        if (!cJSON_IsObject(L) || json_int(L, "layer", 0, 1 << 20, &layer, err) ||
            json_ints(L, "physical_to_logical", (int)R, 0, (double)E - 1, NULL, p2l, err) ||
            json_ints(L, "logical_count", (int)E, 1, (double)R, NULL, cnt, err)) {
            rc = cJSON_IsObject(L) ? -1 : err_set(err, "not an object");
        } else {
            p->layer[l] = (int)layer;
            for (int k = 0; k < l && !rc; k++)
                if (p->layer[k] == layer) rc = err_set(err, "layer %lld appears twice", (long long)layer);
            /* the counts must be what physical_to_logical says */
            int *seen = rc ? NULL : xcalloc((size_t)E, sizeof *seen);
            if (!rc && !seen) rc = err_set(err, "out of memory");
            for (int s = 0; s < R && !rc; s++) seen[p2l[s]]++;
            for (int e = 0; e < E && !rc; e++)
                if (seen[e] != cnt[e])
                    rc = err_set(err, "expert %d has %d slots in physical_to_logical but logical_count %d", e, seen[e], cnt[e]);
            free(seen);
            /* logical_to_physical numbers the copies: row e lists e's slots (copy 0 first), then −1 */
            const cJSON *l2p = cJSON_GetObjectItemCaseSensitive(L, "logical_to_physical"), *row;
            int e = 0, width = -1;
            int *rank = p->phy_rank + (size_t)l * R;
            for (int s = 0; s < R; s++) rank[s] = -1;
            if (!rc && (!cJSON_IsArray(l2p) || cJSON_GetArraySize(l2p) != E))
                rc = err_set(err, "\"logical_to_physical\" must be an array of %lld arrays", (long long)E);
            if (!rc) cJSON_ArrayForEach(row, l2p) {
                int k = 0;
                const cJSON *v;
                if (!cJSON_IsArray(row) || (width >= 0 && cJSON_GetArraySize(row) != width) || cJSON_GetArraySize(row) < cnt[e]) {
                    rc = err_set(err, "\"logical_to_physical\"[%d] must list the expert's %d slots (rows of one width)", e, cnt[e]);
                    break;
                }
                width = cJSON_GetArraySize(row);
                cJSON_ArrayForEach(v, row) {
                    int ok = cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble);
                    int slot = ok ? (int)v->valuedouble : -2;
                    if (k < cnt[e]) ok = ok && slot >= 0 && slot < R && p2l[slot] == e && rank[slot] < 0;
                    else ok = ok && slot == -1;
                    if (!ok) {
                        rc = err_set(err, "\"logical_to_physical\"[%d][%d] must be %s", e, k,
                                     k < cnt[e] ? "a slot of that expert, listed once" : "-1");
                        break;
                    }
                    if (k < cnt[e]) rank[slot] = k;
                    k++;
                }
                if (rc) break;
                e++;
            }
            const cJSON *w = cJSON_GetObjectItemCaseSensitive(L, "load"), *v;
            e = 0;
            if (!rc && (!cJSON_IsArray(w) || cJSON_GetArraySize(w) != E)) rc = err_set(err, "\"load\" must be an array of %lld numbers", (long long)E);
            if (!rc) cJSON_ArrayForEach(v, w) {
                if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < 1e300)) rc = err_set(err, "\"load\"[%d] must be a non-negative number", e);
                else p->weight[(size_t)l * E + e] = v->valuedouble;
                e++;
            }
        }
        if (rc) {
            err_prefix(err, "layers[%d]", l);
            break;
        }
        l++;
    }
    if (!rc) {
        for (size_t i = 0; i < (size_t)nl * E; i++) p->max_count = p->log_count[i] > p->max_count ? p->log_count[i] : p->max_count;
        p->log2phy = malloc((size_t)nl * E * p->max_count * sizeof *p->log2phy);
        if (!p->log2phy) rc = err_set(err, "out of memory");
        for (size_t i = 0; !rc && i < (size_t)nl * E * p->max_count; i++) p->log2phy[i] = -1;
        for (int k = 0; !rc && k < nl; k++)
            for (int s = 0; s < R; s++) {
                size_t i = (size_t)k * R + s;
                p->log2phy[((size_t)k * E + p->phy2log[i]) * p->max_count + p->phy_rank[i]] = s;
            }
    }
    cJSON_Delete(o);
    if (rc) {
        eplb_plan_free(p);
        return err_prefix(err, "%s", path);
    }
    return 0;
}

int eplb_ep_plans(EpPlan *out, int n_layers, const EplbPlan *p, const Config *c, int nranks, Err *err) {
    memset(out, 0, (size_t)n_layers * sizeof *out);
    if (p->n_experts != c->n_routed_experts)
        return err_set(err, "the plan places %d experts per layer, the model has %d", p->n_experts, c->n_routed_experts);
    if (p->n_gpus != nranks) return err_set(err, "the plan is for %d GPUs, the group has %d processes", p->n_gpus, nranks);
    int *ranks = xcalloc((size_t)p->n_experts * (size_t)p->max_count, sizeof *ranks);
    if (!ranks) return err_set(err, "out of memory");
    int rc = 0;
    for (int l = 0; l < p->n_layers && !rc; l++) {
        int layer = p->layer[l];
        if (layer >= n_layers || !config_layer_is_moe(c, layer)) {
            rc = err_set(err, "the plan places layer %d, which is not a MoE layer of this model", layer);
            break;
        }
        for (int e = 0; e < p->n_experts; e++)
            for (int k = 0; k < p->max_count; k++) {
                int s = p->log2phy[((size_t)l * p->n_experts + e) * p->max_count + k];
                ranks[(size_t)e * p->max_count + k] = s < 0 ? -1 : eplb_slot_gpu(p, s);
            }
        rc = ep_plan_init_placement(&out[layer], nranks, p->n_experts, ranks, p->max_count, err);
    }
    free(ranks);
    if (rc)
        for (int l = 0; l < n_layers; l++) ep_plan_free(&out[l]);
    return rc;
}

int eplb_load_ep_plans(const char *path, const Config *c, int nranks, EpPlan **out, int *n_out, Err *err) {
    *out = NULL, *n_out = 0;
    EplbPlan p;
    if (eplb_plan_read(&p, path, err)) return -1;
    int n = c->num_hidden_layers + c->num_nextn_predict_layers;
    EpPlan *plans = xcalloc((size_t)n, sizeof *plans);
    int rc = plans ? eplb_ep_plans(plans, n, &p, c, nranks, err) : err_set(err, "out of memory");
    eplb_plan_free(&p);
    if (rc) {
        free(plans);
        return err_prefix(err, "%s", path);
    }
    *out = plans, *n_out = n;
    return 0;
}
