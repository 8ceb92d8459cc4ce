/**
 * @file params.h
 * @brief Trainable FP32 parameters laid out by the tensor table (weights.h): one buffer for the
 *        values, one for the gradients, each bound into a ::Weights struct by weights_foreach, so
 *        parameters, gradients, optimizer moments and checkpoints share one layout.
 *
 * Layout: every tensor of weights_foreach in table order, contiguous FP32 [rows][cols]. The MTP
 * modules' embed_tokens and shared_head.head are not parameters of their own: the paper shares
 * the embedding and the output head between the main model and every MTP module (§2.2, eq. 21,
 * 23), so those slots alias the main model.embed_tokens / lm_head memory (values and gradients)
 * and a checkpoint writes the copies the released layout stores (docs/model.md §1.3 note 5, §11 #22).
 */
#ifndef DSV3_PARAMS_H
#define DSV3_PARAMS_H

#include "model/ckpt.h"
#include "model/weights.h"

/** How the optimizer treats a tensor. */
typedef enum {
    PARAM_DECAY,    /**< a matrix: AdamW with weight decay */
    PARAM_NO_DECAY, /**< a norm weight: AdamW without weight decay */
    PARAM_BIAS,     /**< e_score_correction_bias: no gradient, moved by the balance update (docs/model.md §6) */
    PARAM_ALIAS,    /**< an MTP copy of the embedding or head: the main tensor's memory */
} ParamRole;

/** One tensor of a ParamSet. */
typedef struct {
    WeightSlot slot; /**< name, shape, kind, layer/expert/MTP indices (pointers: into ParamSet.w) */
    size_t offset;   /**< first float in ParamSet.data / .grad */
    size_t n;        /**< rows × cols */
    ParamRole role;  /**< optimizer treatment */
} ParamEntry;

/** The parameters of a model with n_mtp MTP modules. */
typedef struct {
    Config config;       /**< the model shape (num_nextn_predict_layers = n_mtp) */
    int n_mtp;           /**< MTP modules */
    ParamEntry *entries; /**< every tensor in weights_foreach order */
    int n_entries;       /**< entries */
    size_t n;            /**< floats in data (aliases not counted twice) */
    float *data;         /**< [n] values */
    float *grad;         /**< [n] gradients (NULL if not requested) */
    Weights w;           /**< bound to data */
    Weights g;           /**< bound to grad (all tensors without data if grad is NULL) */
    int cursor;          /**< params_find's next guess (lookups usually come in table order) */
} ParamSet;

/**
 * Lays out and allocates the parameters (and gradients if @p with_grad) of config @p c with
 * @p n_mtp MTP modules, all zero. The config copy gets num_nextn_predict_layers = n_mtp.
 */
int params_init(ParamSet *p, const Config *c, int n_mtp, int with_grad, Err *err);
/** Frees everything; safe on a zeroed struct. */
void params_free(ParamSet *p);

/** The entry named @p name (an HF tensor name), or NULL. */
const ParamEntry *params_find(ParamSet *p, const char *name);

/**
 * Fills every non-alias tensor from @p src (random init, a loaded checkpoint, ...). A source
 * that returns non-zero aborts with a message naming the tensor.
 */
int params_fill(ParamSet *p, CkptSource src, void *ctx, Err *err);

/** CkptSource over a ParamSet (@p ctx): the values of the tensor named s->name (aliases included). */
int params_ckpt_source(void *ctx, const WeightSlot *s, float *out);

/** Training initialization (paper §4.2: "all learnable parameters are randomly initialized"). */
typedef struct {
    uint64_t seed; /**< mixed with each tensor's name, so a tensor's values do not depend on the others */
    float std;     /**< matrices ~ N(0, std²); the paper uses 0.006 at hidden size 7168 */
} ParamInit;

/** CkptSource for training init (@p ctx a ParamInit): matrices N(0, std²), norm weights 1, biases 0. */
int params_init_source(void *ctx, const WeightSlot *s, float *out);

/** Σ g² over the gradients of every trainable tensor (aliases once), in double. */
double params_grad_sq_norm(const ParamSet *p);

#endif
