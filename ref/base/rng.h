/**
 * @file rng.h
 * @brief A small deterministic PRNG (PCG32, O'Neill 2014) so that sampling, random
 *        checkpoints and training runs reproduce bit for bit across machines (never rand()).
 */
#ifndef DSV3_RNG_H
#define DSV3_RNG_H

#include <stdint.h>

/** PCG32 state: 64-bit LCG state + odd increment. */
typedef struct {
    uint64_t state; /**< LCG state */
    uint64_t inc;   /**< LCG increment (odd) */
} Rng;

/** Seeds the generator (sequence 54 + seed-derived state, as in the PCG reference). */
void rng_seed(Rng *r, uint64_t seed);
/** Uniform 32-bit integer. */
uint32_t rng_u32(Rng *r);
/** Uniform float in [0, 1) with 24 random bits. */
float rng_uniform(Rng *r);
/** Uniform double in [0, 1) with 53 random bits. */
double rng_uniform_double(Rng *r);
/** Standard normal (Box–Muller, one value per call; always RNG_U32_PER_NORMAL draws of rng_u32). */
float rng_normal(Rng *r);
/** rng_u32 draws one rng_normal consumes (two 53-bit doubles of two draws each). */
#define RNG_U32_PER_NORMAL 4
/**
 * Jumps the generator @p delta draws ahead in O(log delta) (the LCG's affine map raised to the
 * delta-th power): the same state as @p delta calls of rng_u32. Lets several threads produce
 * their parts of one long random sequence with the values a single thread would produce.
 */
void rng_advance(Rng *r, uint64_t delta);

#endif
