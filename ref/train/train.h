/**
 * @file train.h
 * @brief CPU training of a DeepSeek-V3-shaped model (paper §2–§4): the whole-model forward and
 *        backward over sequences (main next-token loss + D MTP depths + the sequence-wise balance
 *        loss), AdamW with clipping and the LR schedule, the aux-loss-free bias update, and
 *        resumable checkpoints in the real Hugging Face layout.
 *
 * Shapes: B sequences per step, T tokens per sequence (T+1 ids: inputs and next-token targets),
 * D hidden, V vocab, L layers, n_mtp MTP depths, E routed experts.
 *
 * Total loss of one sequence (paper eqs. 17, 24, 25):
 *     L = L_main + (λ/n_mtp) Σ_k L_MTP^k + Σ_{MoE layers} α Σ_i f_i P_i
 *     L_main    = (1/T) Σ_{i<T} CE(head(norm(h_i)), x_{i+1})
 *     L_MTP^k   = (1/T) Σ_{i<T−k} CE(head(shared_head.norm(h_i^k)), x_{i+k+1})
 * and a step's loss is the mean over its B sequences. Everything runs through the same forward
 * functions as inference (block_forward, mtp_module_forward, linear_forward, rmsnorm_forward),
 * with one LayerActs per layer kept for the backward and the naive MLA form (K/V per head).
 */
#ifndef DSV3_TRAIN_H
#define DSV3_TRAIN_H

#include "model/block.h"
#include "model/ckpt.h"
#include "data.h"
#include "fp8_recipe.h"
#include "model/model.h"
#include "model/mtp.h"
#include "optim.h"
#include "params.h"
#include "base/rng.h"

/** The numerics of a run's linear layers. */
typedef enum {
    TRAIN_FP32 = 0, /**< FP32 everywhere: the oracle */
    TRAIN_FP8 = 1,  /**< the paper's FP8 recipe (§3.3) for every linear's three GEMMs, emulated (fp8_recipe.h) */
} TrainPrecision;

/** Hyper-parameters of a run; each is a `dsv3 train` flag and is saved with every checkpoint. */
typedef struct {
    int64_t batch;            /**< B: sequences per step */
    int64_t seq_len;          /**< T: tokens per sequence */
    int64_t steps;            /**< optimizer steps of the whole run (the schedule's length) */
    LrSchedule lr;            /**< warmup + cosine (total = steps) */
    AdamW adamw;              /**< β1, β2, eps, weight decay */
    double grad_clip;         /**< max global gradient norm (paper: 1.0); ≤ 0 disables */
    double bias_update_speed; /**< γ of the aux-loss-free bias update (paper: 0.001) */
    double balance_alpha;     /**< α of the sequence-wise balance loss (paper: 0.0001) */
    double mtp_lambda;        /**< λ weighting the MTP losses (paper: 0.3, later 0.1) */
    int n_mtp;                /**< D: MTP depths trained (0 .. 16) */
    double init_std;          /**< std of random matrices (paper: 0.006 at hidden 7168) */
    uint64_t seed;            /**< random init and data shuffling */
    int shuffle;              /**< random sequence starts instead of a sequential pass */
    int64_t save_every;       /**< checkpoint every N steps (0: at the end only); kept by --resume */
    int64_t keep;             /**< newest checkpoints kept (0: all); kept by --resume */
    int save_format;          /**< CkptFormat of model.safetensors; kept by --resume */
    int precision;            /**< a TrainPrecision */
    Fp8Options fp8;           /**< the FP8 recipe's options (TRAIN_FP8) */
    int bf16_moments;         /**< AdamW moments stored in BF16 (paper §3.3.3; `dsv3 train`'s default under fp8) */
} TrainOptions;

/** Defaults for a model of hidden size @p hidden (paper values; see docs/training.md). */
TrainOptions train_options_default(int hidden);

/** Losses of one evaluation, averaged over the sequences it covered. */
typedef struct {
    double total;     /**< the optimized objective: main + λ·mtp + balance */
    double main;      /**< next-token cross-entropy */
    double mtp[16];   /**< L_MTP^k per depth k = 1..n_mtp (index k−1) */
    double mtp_mean;  /**< (1/n_mtp) Σ_k L_MTP^k */
    double balance;   /**< Σ over MoE layers of α Σ_i f_i P_i */
} TrainLosses;

/** A trainer: parameters, gradients, AdamW moments, activations of one sequence, run state. */
typedef struct {
    TrainOptions opt;    /**< hyper-parameters */
    ParamSet ps;         /**< parameters and gradients (ps.config: the model shape) */
    float *m;            /**< [ps.n] AdamW first moments */
    float *v;            /**< [ps.n] AdamW second moments */
    Model model;         /**< a view of the live parameters for inference code (config, weights, rope);
                              owned here: never pass it to model_free */
    int64_t step;        /**< optimizer steps completed */
    Rng rng;             /**< the run's random stream (data shuffling) */
    DataCursor data;     /**< where the next training sequence starts */
    int64_t tokens;      /**< training tokens consumed so far */
    /* activations of one sequence (T = opt.seq_len) */
    ForwardContext ctx;  /**< shared by the ops: naive MLA, FP32, RoPE of positions 0..T−1 */
    float *rope_cos;     /**< [T][Dr/2] cos of positions 0..T−1 (ctx.rope_cos) */
    float *rope_sin;     /**< [T][Dr/2] */
    LayerActs *acts;     /**< [L] one per main layer, training layout */
    MTPActs *mtp;        /**< [n_mtp] one per MTP depth */
    LayerActs dacts;     /**< gradient scratch of one block (zeroed before each block's backward) */
    MTPActs dmtp;        /**< gradient scratch of one MTP module's emb/cat/h */
    KVCache kv;          /**< naive K/V of the main layers, T positions */
    KVCache mtp_kv;      /**< naive K/V of the MTP blocks */
    KVCache dkv;         /**< gradient of one layer's K/V */
    float *h;            /**< [T][D] residual stream; after the forward the last block's output */
    float *normed;       /**< [T][D] final norm output (the head's input and MTP depth 1's h) */
    float *rstd;         /**< [T] */
    float *logits;       /**< [1+n_mtp][T][V] raw logits: main, then each MTP depth */
    float *probs;        /**< [1+n_mtp][T][V] softmax of the logits */
    float *dlogits;      /**< [T][V] */
    float *dnormed;      /**< [1+n_mtp][T][D] gradient of each head input */
    float *dh;           /**< [T][D] gradient of the residual stream during the main backward */
    int *targets;        /**< [1+n_mtp][T] (−1: no target) */
    int *seq;            /**< [T+1] ids of the sequence being processed */
    /* balance statistics of the current step */
    int n_moe;           /**< MoE layers, main then MTP blocks */
    int *moe_layer;      /**< [n_moe] decoder layer index (≥ L: MTP block) */
    int64_t *load;       /**< [n_moe][E] selections per expert over the step's tokens */
    double *maxvio;      /**< [n_moe] MaxVio of the last step */
    void *mem;           /**< one allocation behind the buffers above */
    void *dmem;          /**< the allocation behind dacts */
    size_t dbytes;       /**< its size */
    Fp8Recipe *fp8;      /**< TRAIN_FP8: the recipe behind ctx.lin.hook (NULL under FP32) */
} Trainer;

/**
 * Allocates a trainer for model shape @p c (its num_nextn_predict_layers is replaced by
 * opt->n_mtp) with all parameters zero; fill them with params_fill(&tr->ps, ...) or
 * trainer_load_state(). Validates the options against the shape.
 */
int trainer_init(Trainer *tr, const Config *c, const TrainOptions *opt, Err *err);
/** Frees everything; safe on a zeroed struct. */
void trainer_free(Trainer *tr);

/**
 * Forward + backward of @p n sequences @p seqs [n][T+1]: zeroes the gradients and the step's
 * expert loads, then accumulates the gradient of the mean loss. Losses into @p out.
 */
void trainer_grad(Trainer *tr, const int *seqs, int64_t n, TrainLosses *out);

/** Forward only (validation, finite differences): the losses of @p n sequences; only the
 *  activations change (not the gradients, the step's loads or the run state). */
void trainer_eval(Trainer *tr, const int *seqs, int64_t n, TrainLosses *out);

/** What one update did. */
typedef struct {
    double lr;        /**< learning rate used */
    double grad_norm; /**< global gradient norm before clipping */
    double clip;      /**< factor the gradients were scaled by (1: not clipped) */
} StepStats;

/**
 * Ends a step after trainer_grad: clips the gradients to opt.grad_clip, applies AdamW at
 * lr_at(step) (weight decay on matrices only; correction biases are not optimizer parameters),
 * moves each MoE layer's correction bias by the aux-loss-free rule from the step's loads, records
 * MaxVio, and increments step.
 */
void trainer_update(Trainer *tr, StepStats *st);

/**
 * The next batch of opt.batch training sequences from @p f into @p seqs [B][T+1] (advances the
 * cursor). Fails, naming the file, when it shrank or changed since it was opened.
 */
int trainer_next_batch(Trainer *tr, const TokenFile *f, int *seqs, Err *err);

/**
 * Writes a checkpoint into directory @p dir (created): config.json + model.safetensors in the
 * Hugging Face layout (@p format F32 or BF16; MTP copies of the embedding and head included) —
 * loadable by model_load / `dsv3 logits` — and optimizer.safetensors with the AdamW moments
 * ("<name>.exp_avg", "<name>.exp_avg_sq"), the FP32 master weights when the model file is not F32
 * ("<name>.master"), and the run state and options in its metadata. Each file is atomic.
 */
int trainer_save(Trainer *tr, const char *dir, CkptFormat format, Err *err);

/**
 * Reads the model shape and the options of the checkpoint in @p dir (for resuming: the caller may
 * then change options such as steps before trainer_init).
 */
int train_read_checkpoint_options(const char *dir, Config *c, TrainOptions *opt, Err *err);

/** Restores parameters, moments, step, RNG, data cursor and token count from checkpoint @p dir. */
int trainer_load_state(Trainer *tr, const char *dir, Err *err);

/**
 * Saves checkpoint step_NNNNNNNN under @p out_dir atomically: written into a temporary
 * directory, renamed into place, then the `latest` symlink is switched to it (also by rename);
 * keeps the newest @p keep step directories (0: all). Copies tokenizer.json and
 * tokenizer_config.json from @p tokenizer_dir when given. The path written goes to @p path_out.
 */
int trainer_checkpoint(Trainer *tr, const char *out_dir, CkptFormat format, const char *tokenizer_dir, int keep,
                       char *path_out, size_t cap, Err *err);

/**
 * Prepares run directory @p out_dir before the first step: creates it if absent, checks that
 * checkpoints can be written there, and removes temporaries left by killed runs — so that a
 * run that cannot save fails now, not after its steps.
 */
int train_run_dir_prepare(const char *out_dir, Err *err);

/**
 * Makes SIGINT/SIGTERM ask the run to stop at the end of its current step instead of killing it
 * (base/outfile.h's deferred interrupts): the loop then saves a checkpoint and exits, and
 * `--resume` continues on the same trajectory. A second signal still kills the process,
 * removing a checkpoint that was being written (the previous one stays complete).
 */
void train_catch_interrupts(void);

/** The signal that asked the run to stop (SIGINT or SIGTERM), or 0; checked after every step. */
int train_interrupted(void);

/**
 * Resolves what --resume names: a checkpoint directory (has config.json) or a run directory
 * (its `latest`). The checkpoint directory goes to @p out.
 */
int train_resolve_checkpoint(const char *path, char *out, size_t cap, Err *err);

/* ---- pieces of one sequence's step, shared with the pipelined step (train_pipeline.h) ---- */

/** The buffers of the loss end of one sequence: final norm, heads and MTP depths (views, not owned). */
typedef struct {
    float *normed;   /**< [T][D] final norm output */
    float *rstd;     /**< [T] */
    float *logits;   /**< [1+n_mtp][T][V] */
    float *probs;    /**< [1+n_mtp][T][V] */
    int *targets;    /**< [1+n_mtp][T] */
    MTPActs *mtp;    /**< [n_mtp] */
    KVCache *mtp_kv; /**< n_mtp naive layers of T positions */
} TrainHead;

/** The trainer's own head buffers. */
TrainHead trainer_head(Trainer *tr);

/** Lays out one MTP depth's activations (depth @p k, 0-based) for T rows in @p ar. */
void train_mtp_acts_layout(MTPActs *a, const Config *c, int64_t T, int k, Arena *ar);

/**
 * The loss end of one sequence's forward from the last block's output @p h [T][D]: final norm,
 * head and main loss, then every MTP depth and its loss, added into @p out (main, mtp[]).
 */
void train_head_forward(Trainer *tr, TrainHead *hd, const float *h, const int *ids, TrainLosses *out);

/**
 * Its backward with loss weight @p scale: the MTP depths from the deepest, the heads (their
 * gradients into the trainer's), the final norm; @p dh [T][D] receives ∂L/∂h. When @p emb_grad is
 * given ([n_mtp][T][D]), the MTP modules' embedding-gradient rows go there instead of into the
 * embedding's gradient (a pipeline adds them where the embedding lives: train_mtp_embedding_backward).
 */
void train_head_backward(Trainer *tr, const TrainHead *hd, const float *h, const int *ids, float scale, float *dh,
                         float *emb_grad);

/** Adds the rows train_head_backward left in @p emb_grad to the embedding's gradient, in its order. */
void train_mtp_embedding_backward(Trainer *tr, const float *emb_grad, const int *ids);

/** Clears the gradient scratch of one block (tr->dacts and tr->dkv) before its backward. */
void train_clear_block_scratch(Trainer *tr);

/** Ends the sums of a step's @p n sequences: means of main, balance and each MTP depth, and the total. */
void train_finish_losses(const Trainer *tr, TrainLosses *out, int64_t n);

#endif
