/**
 * @file rng.c
 * @brief PCG32 (XSH RR variant) and derived distributions.
 */
#include "rng.h"

#include <math.h>

void rng_seed(Rng *r, uint64_t seed) {
    r->state = 0;
    r->inc = (54u << 1) | 1u;
    rng_u32(r);
    r->state += seed;
    rng_u32(r);
}

uint32_t rng_u32(Rng *r) {
    uint64_t old = r->state;
    r->state = old * 6364136223846793005ull + r->inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((32u - rot) & 31u));
}

float rng_uniform(Rng *r) { return (float)(rng_u32(r) >> 8) * (1.0f / 16777216.0f); }

double rng_uniform_double(Rng *r) {
    uint64_t hi = rng_u32(r) >> 5, lo = rng_u32(r) >> 6; /* 27 + 26 = 53 bits */
    return ((double)hi * 67108864.0 + (double)lo) * (1.0 / 9007199254740992.0);
}

float rng_normal(Rng *r) {
    double u1 = rng_uniform_double(r), u2 = rng_uniform_double(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2));
}

void rng_advance(Rng *r, uint64_t delta) {
    /* state_{n} = A^n·state + (A^{n−1} + … + 1)·inc, composed by squaring (PCG's pcg32_advance). */
    uint64_t mult = 6364136223846793005ull, plus = r->inc, acc_mult = 1, acc_plus = 0;
    for (; delta > 0; delta >>= 1) {
        if (delta & 1) {
            acc_mult *= mult;
            acc_plus = acc_plus * mult + plus;
        }
        plus = (mult + 1) * plus;
        mult *= mult;
    }
    r->state = acc_mult * r->state + acc_plus;
}
