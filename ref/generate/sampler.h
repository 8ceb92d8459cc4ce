/**
 * @file sampler.h
 * @brief Next-token sampling: greedy, or exact sampling from the tempered distribution
 *        truncated by top-k and top-p, with a seedable PRNG so runs reproduce across machines.
 *
 * The distribution a sampler draws from is written out explicitly (sampler_probs) because
 * speculative decoding needs it: the draft's q and the target's p enter the acceptance test
 * min(1, p/q) and the residual max(0, p − q) (ref/generate/generate.c).
 */
#ifndef DSV3_SAMPLER_H
#define DSV3_SAMPLER_H

#include "base/rng.h"
#include "base/util.h"

/** Sampling settings and PRNG state. */
typedef struct {
    float temperature; /**< 0 = greedy (argmax); otherwise logits / temperature */
    int top_k;         /**< keep the k most likely tokens (0 = all) */
    float top_p;       /**< keep the smallest prefix of tokens, by probability, whose mass ≥ top_p (1 = all) */
    Rng rng;           /**< PCG32 state */
} Sampler;

/** One candidate token while truncating: its probability and index. */
typedef struct {
    float p; /**< probability */
    int i;   /**< token id */
} SamplerCand;

/** Validates and sets the parameters (temperature ≥ 0, top_k ≥ 0, top_p in (0, 1]). */
int sampler_init(Sampler *s, float temperature, int top_k, float top_p, uint64_t seed, Err *err);

/** Index of the largest logit; ties go to the lower index. */
int sampler_argmax(const float *logits, int n);

/** The softmax's normalizer Σ_i exp((logit_i − max)/T) runs in double over each of this many equal
 *  slices of the vocabulary (index order within a slice), then over the slices in order: a fixed
 *  order, so the slices can run on any number of threads and give the same bits. */
#define SAMPLER_SLICES 64

/**
 * The distribution the sampler draws from, into probs [n]: softmax(logits / T) restricted to
 * the top-k, then to the top-p nucleus, renormalized (zeros elsewhere). With temperature 0 it
 * is one-hot on the argmax. @p work must hold n candidates. Runs over the threads of
 * base/threads.h for a large vocabulary (the same result for any count).
 */
void sampler_probs(const Sampler *s, const float *logits, int n, float *probs, SamplerCand *work);

/** Draws an index from a distribution (probs sums to ~1) with the sampler's PRNG. */
int sampler_draw(Sampler *s, const float *probs, int n);

/** sampler_probs then sampler_draw (argmax directly when greedy). */
int sampler_sample(Sampler *s, const float *logits, int n, float *probs, SamplerCand *work);

#endif
