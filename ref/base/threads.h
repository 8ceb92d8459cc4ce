/**
 * @file threads.h
 * @brief How many threads the model's parallel loops use (`-t N` / `--threads N`).
 *
 * The loops are OpenMP `parallel for` over independent outputs (rows of a linear, heads,
 * experts); every sum inside one output runs in the same order whatever the thread count, so
 * results are bit-identical for every N. Without OpenMP (a build without -fopenmp) there is
 * one thread and these calls only record the request.
 */
#ifndef DSV3_THREADS_H
#define DSV3_THREADS_H

/** Uses @p n ≥ 1 threads from now on (the whole process); returns the number in effect. */
int threads_set(int n);
/** The number of threads the parallel loops use now. */
int threads_get(void);
/** The machine's online cores: the default of -t. */
int threads_online(void);
/** This thread's number in the innermost parallel region (0 outside one): indexes per-thread scratch. */
int threads_id(void);
/** 1 inside a parallel region (where per-thread scratch of an enclosing loop may be in use). */
int threads_in_parallel(void);

#endif
