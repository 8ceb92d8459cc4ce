/**
 * @file ep.h
 * @brief Expert parallelism (paper §3.4; docs/model.md §10): the routed experts of every MoE layer are
 *        partitioned over N ranks, attention and dense layers stay data-parallel, and each MoE
 *        layer becomes dispatch → local experts → combine over an all-to-all transport.
 *
 * Per MoE layer, on every rank, for its own tokens:
 *   1. gate (noaux_tc) → K experts and weights per token, exactly as moe_forward;
 *   2. dispatch: each (token, expert) pair goes to a rank holding that expert; the per-rank
 *      counts are exchanged first, then the hidden rows and the expert ids;
 *   3. every rank runs its experts over the rows it received, grouped by expert;
 *   4. combine: the outputs travel back in the order they came; the origin adds w·y in ascending
 *      expert order, then the shared expert — the same operations in the same order as the
 *      single-rank moe_forward, so results are bit-for-bit identical for any number of ranks.
 *
 * The counts exchange of step 2 also carries the layer each rank is at (LayerWeights.index),
 * so ranks that disagree fail with a message instead of mixing layers, and a rank with no tokens
 * of its own can serve as a pure expert server (ep_serve): it learns from the counts which
 * layer's experts to run, until the active rank announces EP_STOP (ep_stop). That is how the
 * CLI runs one sequence over N processes: rank 0 runs the model, ranks 1.. hold experts.
 *
 * The transport is an interface (EpTransport): the CPU one here runs N ranks as threads of one
 * process (used by the tests for 2, 4 and 8 ranks); ep_socket.h connects N processes over TCP;
 * the GPU backend implements it with grouped ncclSend/ncclRecv (fast/). Experts are assigned in
 * contiguous ranges, optionally with redundant copies of chosen (hot) experts on other ranks.
 */
#ifndef DSV3_EP_H
#define DSV3_EP_H

#include <stddef.h>

#include "model/context.h"
#include "model/moe.h"
#include "model/weights.h"

/** A collective all-to-all among the ranks; every rank calls it with the same sequence of calls. */
typedef struct EpTransport {
    int nranks; /**< ranks in the group */
    /**
     * Rank @p rank sends send_bytes[d] bytes starting at send + send_offsets[d] to each rank d
     * and receives recv_bytes[s] bytes from each rank s at recv + recv_offsets[s]. recv_bytes
     * must equal what the senders send (exchange counts first with a fixed-size call).
     */
    int (*alltoallv)(struct EpTransport *t, int rank, const void *send, const size_t *send_bytes,
                     const size_t *send_offsets, void *recv, const size_t *recv_bytes, const size_t *recv_offsets,
                     Err *err);
    void *ctx; /**< transport state */
    int device_buffers; /**< 1: alltoallv takes GPU memory (NCCL); 0: host memory only */
} EpTransport;

/** Layer codes of the counts exchange besides a layer number (LayerWeights.index ≥ 0). */
enum {
    EP_PASSIVE = -1, /**< this rank has no tokens: it follows the layer the others announce */
    EP_STOP = -2     /**< the active rank is done: expert servers return from ep_serve */
};

/** Which rank holds which routed expert: contiguous ranges plus optional redundant copies. */
typedef struct {
    int nranks;          /**< ranks */
    int n_experts;       /**< routed experts per layer */
    int *first;          /**< [nranks+1] rank r owns experts first[r] .. first[r+1]−1 (ep_plan_init; zeros in a
                              plan of ep_plan_init_placement) */
    int *n_copies;       /**< [n_experts] ranks holding each expert (1 + redundant copies) */
    int *copies;         /**< [n_experts][nranks] those ranks, the owner first */
} EpPlan;

/**
 * Splits @p n_experts over @p nranks in contiguous ranges (sizes differ by at most one) and adds
 * a copy of each expert in @p redundant (n_redundant ids) on the rank after its owner.
 */
int ep_plan_init(EpPlan *p, int nranks, int n_experts, const int *redundant, int n_redundant, Err *err);
/**
 * A plan from an explicit placement (an EPLB plan, ref/ep/eplb.h): expert e is held by the ranks
 * ranks[e·width + 0 ..] (−1 ends the list; a rank named twice holds the expert once). Every expert
 * needs at least one rank.
 */
int ep_plan_init_placement(EpPlan *p, int nranks, int n_experts, const int *ranks, int width, Err *err);
/** Releases a plan's arrays and zeroes it. */
void ep_plan_free(EpPlan *p);

/** The rank a (token, expert) pair from @p origin is sent to: spreads over the expert's copies. */
int ep_plan_route(const EpPlan *p, int expert, int origin, int64_t token);

/** 1 if rank @p r holds a copy of expert @p e (as owner or redundant copy). */
int ep_plan_holds(const EpPlan *p, int r, int e);

/** One rank's state: transport, plan and its exchange buffers (grown as needed). */
typedef struct EpRank {
    int rank;              /**< this rank */
    EpTransport *t;        /**< the group's transport */
    const EpPlan *plan;    /**< who holds which expert */
    const EpPlan *layer_plans; /**< [n_layer_plans] per decoder layer (EPLB); an entry with n_experts 0, or a
                                    layer past the end, uses plan */
    int n_layer_plans;     /**< entries of layer_plans (0: plan for every layer) */
    size_t cap_rows;       /**< rows the buffers below hold */
    float *send_rows;      /**< [cap][D] hidden rows to dispatch, grouped by destination */
    int *send_meta;        /**< [cap] expert id of each row */
    int64_t *send_slot;    /**< [cap] the (token·K + k) slot each sent row belongs to */
    float *recv_rows;      /**< [cap][D] received rows, then their expert outputs in place */
    int *recv_meta;        /**< [cap] expert id of each received row */
    float *work_in;        /**< [cap][D] rows of one expert gathered */
    float *work_out;       /**< [cap][D] their outputs */
    float *h_gate;         /**< [cap][Ie] FFN gate projection */
    float *h_up;           /**< [cap][Ie] FFN up projection */
    float *h_act;          /**< [cap][Ie] SwiGLU output */
    float *y_slot;         /**< [cap][D] combine results by slot */
    size_t *counts;        /**< [4][nranks] byte counts and offsets of one exchange */
    int64_t *msg;          /**< [2][nranks][2] the counts exchange: {rows, layer} sent and received */
    size_t *rows_n;        /**< [3][nranks]+1 rows sent to / received from each rank, send starts */
    size_t dispatched_bytes; /**< bytes this rank sent in dispatch + combine so far */
    MoeHook hook;          /**< what a ForwardContext's moe_hook points at to run its MoE layers over
                                the group (ep_moe_forward); hook.failed/err record a failed exchange */
} EpRank;

/** Prepares a rank; exchange buffers grow on first use. */
int ep_rank_init(EpRank *r, int rank, EpTransport *t, const EpPlan *plan, Err *err);
/** Releases a rank's buffers (not its transport or plan) and zeroes it. */
void ep_rank_free(EpRank *r);

/**
 * out [T][D] = MoE(x [T][D]) for this rank's T tokens, with routed experts computed on the
 * ranks that hold them. Collective: every rank of the group must call it for the same layer.
 * Gate results go to @p a (logits, scores, idx, weights) and the shared expert uses a->shared.
 */
int ep_moe_forward(float *out, const float *x, int64_t T, const LayerWeights *w, MoEActs *a, EpRank *r,
                   const ForwardContext *ctx, Err *err);

/**
 * The counts exchange of a dispatch: every rank learns how many rows (@p recv_rows [nranks]) each
 * other rank sends it, given its own @p send_rows [nranks], and which layer the group is at: each
 * rank announces @p layer (a layer index, EP_PASSIVE or EP_STOP); the non-passive announcements
 * must agree, and that one is returned in @p *group_layer (an error names the ranks that differ,
 * or says that every rank was passive). Collective.
 */
int ep_exchange_counts(EpRank *r, int layer, const size_t *send_rows, size_t *recv_rows, int *group_layer, Err *err);

/**
 * An expert server: a rank without tokens of its own that runs its routed experts of @p w for
 * the rows the other ranks dispatch, layer after layer as announced in the counts exchange
 * (MTP module k is layer num_hidden_layers + k), until a rank announces EP_STOP; returns 0 then.
 * @p ctx gives the numerics (fp8) and the scratch of linear_forward (experts run max_T rows at a
 * time). Collective with the active ranks' ep_moe_forward calls.
 */
int ep_serve(EpRank *r, const Weights *w, const ForwardContext *ctx, Err *err);

/** Tells the expert servers to return (announces EP_STOP). Collective with their ep_serve. */
int ep_stop(EpRank *r, Err *err);

/** 0 if a model of config @p c has MoE layers whose routed experts can be split over @p nranks
 *  processes; else -1 with an error saying why (no MoE layers, fewer experts than ranks). */
int ep_model_splits(const Config *c, int nranks, Err *err);

/** The decoder block that layer index @p layer names in @p w (MTP module k: num_hidden_layers + k), or
 *  NULL with an error if there is none or it is not a MoE layer. */
const LayerWeights *ep_moe_layer(const Weights *w, int layer, Err *err);

/** An alltoallv of rows of @p row_bytes bytes with per-rank row counts (rows to rank d are
 *  consecutive in @p send, in rank order; likewise in @p recv). The buffers may be device memory
 *  when the transport takes it (NCCL). Collective. */
int ep_exchange_rows(EpRank *r, const void *send, const size_t *send_n, void *recv, const size_t *recv_n,
                     size_t row_bytes, Err *err);

/** An in-process transport for @p nranks ranks running as threads (tests, CPU runs). */
int ep_cpu_transport_init(EpTransport *t, int nranks, Err *err);
/** Releases an in-process transport made by ep_cpu_transport_init(). */
void ep_cpu_transport_free(EpTransport *t);

#endif
