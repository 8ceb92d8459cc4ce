/**
 * @file eplb.h
 * @brief Expert-parallel load balancing (paper §3.4, "redundant experts"): routing statistics measured
 *        while the model runs, and the placement of R physical expert copies on GPUs that evens out
 *        their load, with the two policies of DeepSeek's open-source EPLB
 *        (github.com/deepseek-ai/EPLB, eplb.py; re-derived here in C).
 *
 * Routing statistics: per MoE layer, how many (token, choice) slots each routed expert received and
 * over how many tokens — JSON lines, one per layer:
 *     {"layer":1,"mtp":false,"tokens":512,"experts":16,"groups":4,"load":[130,98,...]}
 * A file may hold several lines of one layer (runs appended): readers add them up.
 *
 * Placement of one layer's loads w[E] on P GPUs in N nodes with R ≥ E physical slots:
 *   hierarchical (when the G expert groups divide over the nodes, G mod N = 0; it keeps a group's
 *   experts on one node, which group-limited routing, §2.1.2, rewards):
 *     1. pack the G groups onto the N nodes, G/N each, balancing their summed loads;
 *     2. within each node, replicate: R/N slots for its E/N experts, each extra slot going to the
 *        expert with the largest load per copy, w_e / count_e;
 *     3. pack each node's R/N copies (load w_e / count_e each) onto its P/N GPUs, balanced.
 *   global (otherwise): the same with one group and one node.
 * "Balanced packing" sorts the items by load (heaviest first) and puts each on the lightest pack
 * that has room; packs hold R/P items (when R is not a multiple of P, the first R mod P GPUs hold
 * one more — an extension of EPLB, which requires the multiple). With exactly one item per pack
 * the packing is the identity. Outputs, as EPLB defines them, per layer:
 *     physical_to_logical [R]          the expert each slot holds (slots numbered GPU by GPU)
 *     logical_to_physical [E][max]     the slots holding each expert (−1 padded)
 *     logical_count       [E]          its number of copies
 * The load of a GPU is Σ over its slots of w_e / count_e (a token of expert e goes to one of its
 * copies, evenly); imbalance = max / mean over GPUs. "Before" is the contiguous split without
 * copies that ep_plan_init makes.
 *
 * Plan file (what `dsv3 eplb -o` writes and `--ep-plan` reads):
 *     {"format":"dsv3-eplb-plan","version":1,"policy":"hierarchical","experts":16,"physical":20,
 *      "groups":4,"nodes":1,"gpus":4,"slots":[5,5,5,5],
 *      "layers":[{"layer":1,"physical_to_logical":[...],"logical_to_physical":[[...],...],
 *                 "logical_count":[...],"load":[...],"gpu_load":[...]}, ...]}
 */
#ifndef DSV3_EPLB_H
#define DSV3_EPLB_H

#include <stdint.h>

#include "ep.h"
#include "model/config.h"
#include "model/context.h"

/** Expert loads per MoE layer. */
typedef struct {
    int n_layers;    /**< MoE layers */
    int n_experts;   /**< E routed experts per layer */
    int n_groups;    /**< the model's expert groups (n_group) */
    int n_main;      /**< num_hidden_layers (layers ≥ it are MTP blocks) */
    int *layer;      /**< [n_layers] decoder layer index of each row, ascending */
    int64_t *tokens; /**< [n_layers] tokens that went through the layer */
    int64_t *load;   /**< [n_layers][E] slots routed to each expert */
} RoutingStats;

/** Zeroed statistics for every MoE layer of @p c with @p n_mtp MTP blocks. */
int routing_stats_init(RoutingStats *s, const Config *c, int n_mtp, Err *err);
/** Frees the arrays; safe on a zeroed struct. */
void routing_stats_free(RoutingStats *s);
/** The row of decoder layer @p layer, or −1. */
int routing_stats_row(const RoutingStats *s, int layer);
/** Adds @p tokens tokens and their per-expert @p load [E] to layer @p layer (ignored if not a MoE layer). */
void routing_stats_add(RoutingStats *s, int layer, int64_t tokens, const int64_t *load);
/** Writes one JSON line per layer that saw tokens to @p path (atomically). */
int routing_stats_write(const RoutingStats *s, const char *path, Err *err);
/**
 * Reads a statistics file: lines of one layer add up. Every line is validated (an error names the
 * file, the line and the field); the layers may be any, but all lines must agree on experts and groups.
 */
int routing_stats_read(RoutingStats *s, const char *path, Err *err);

/**
 * A MoeHook that counts the routing of every MoE layer it sees into its RoutingStats, running the
 * layer through @p next (expert parallelism) or, when NULL, the local moe_forward. What
 * `--routing-stats FILE` installs in generate, chat, perplexity and serve.
 */
typedef struct {
    MoeHook hook;       /**< install &hook as ForwardContext.moe_hook */
    MoeHook *next;      /**< the hook it wraps (NULL: local experts) */
    RoutingStats stats; /**< the counts */
    int64_t *scratch;   /**< [E] one layer's counts */
} RoutingCounter;

/** Prepares a counter for the MoE layers of @p c with @p n_mtp MTP blocks, wrapping @p next. */
int routing_counter_init(RoutingCounter *rc, const Config *c, int n_mtp, MoeHook *next, Err *err);
/** Frees the counter and its statistics; safe on a zeroed struct. */
void routing_counter_free(RoutingCounter *rc);

/** A placement of every layer (see the file comment). */
typedef struct EplbPlan {
    int n_layers;        /**< layers placed */
    int n_experts;       /**< E logical experts */
    int n_physical;      /**< R slots per layer */
    int n_groups;        /**< G expert groups */
    int n_nodes;         /**< N nodes */
    int n_gpus;          /**< P GPUs (EP ranks) */
    int hierarchical;    /**< 1: hierarchical policy, 0: global */
    int max_count;       /**< the most copies of one expert (width of log2phy) */
    int *slot_start;     /**< [P+1] GPU g holds slots slot_start[g] .. slot_start[g+1]−1 */
    int *layer;          /**< [n_layers] decoder layer of each row */
    int *phy2log;        /**< [n_layers][R] */
    int *phy_rank;       /**< [n_layers][R] which copy of its expert a slot is (0 .. count−1) */
    int *log_count;      /**< [n_layers][E] */
    int *log2phy;        /**< [n_layers][E][max_count], −1 padded */
    double *weight;      /**< [n_layers][E] the loads it was computed from */
} EplbPlan;

/**
 * Places @p n_layers layers of loads @p weight [n_layers][E] (layer numbers @p layers) on @p gpus
 * GPUs in @p nodes nodes with @p physical slots per layer, choosing the policy as EPLB does.
 * Requirements (an error names the one that fails): E ≥ 1, physical ≥ E, physical ≥ gpus,
 * gpus a multiple of nodes, E a multiple of groups; the hierarchical policy also needs physical
 * a multiple of nodes (else the global policy is used).
 */
int eplb_rebalance(EplbPlan *p, const double *weight, const int *layers, int n_layers, int E, int physical, int groups,
                   int nodes, int gpus, Err *err);
/** eplb_rebalance over the layers of @p s (@p groups ≤ 0: the statistics' own group count). */
int eplb_rebalance_stats(EplbPlan *p, const RoutingStats *s, int physical, int groups, int nodes, int gpus, Err *err);
/**
 * Replaces the loads a plan was computed from by those of @p s (layer by layer; every layer of the
 * plan must be in @p s, with the same experts), so that eplb_gpu_load and eplb_print_report show
 * how the placement does on other traffic — a plan made from past statistics meeting new ones.
 */
int eplb_plan_set_loads(EplbPlan *p, const RoutingStats *s, Err *err);
/** Frees a plan; safe on a zeroed struct. */
void eplb_plan_free(EplbPlan *p);

/** The GPU that slot @p slot of a plan lives on. */
int eplb_slot_gpu(const EplbPlan *p, int slot);

/** Loads per GPU of row @p row of the plan into @p gpu_load [P]; returns max / mean. */
double eplb_gpu_load(const EplbPlan *p, int row, double *gpu_load);
/** Loads per GPU of @p weight [E] under the contiguous split without copies (ep_plan_init); max / mean. */
double eplb_contiguous_load(const double *weight, int E, int gpus, double *gpu_load);

/** Writes @p p as a plan file (atomically). */
int eplb_plan_write(const EplbPlan *p, const char *path, Err *err);
/** Reads and validates a plan file (every field; the maps must agree with each other). */
int eplb_plan_read(EplbPlan *p, const char *path, Err *err);

/** The row of decoder layer @p layer in the plan, or −1. */
int eplb_plan_row(const EplbPlan *p, int layer);

/**
 * Expert parallelism from a plan: @p out [n_layers] receives, for every decoder layer index
 * 0 .. n_layers−1, the EpPlan of that layer (zeroed for layers the plan does not place). Checks
 * the plan against the model (experts, MoE layers) and the group (gpus = @p nranks).
 */
int eplb_ep_plans(EpPlan *out, int n_layers, const EplbPlan *p, const Config *c, int nranks, Err *err);

/**
 * eplb_plan_read + eplb_ep_plans for the model of config @p c (its MTP blocks included) on @p nranks
 * ranks: *out gets num_hidden_layers + num_nextn_predict_layers EpPlans (free each with ep_plan_free,
 * then the array), ready for EpRank.layer_plans.
 */
int eplb_load_ep_plans(const char *path, const Config *c, int nranks, EpPlan **out, int *n_out, Err *err);

/**
 * Prints, per layer, the GPU loads' max/mean before (contiguous, no copies) and after the plan, then
 * the mean over layers.
 */
void eplb_print_report(FILE *f, const EplbPlan *p);

#endif
