/**
 * @file threads.c
 * @brief The thread count of the parallel loops (threads.h).
 */
#include "threads.h"

#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

int threads_set(int n) {
    if (n < 1) n = 1;
#ifdef _OPENMP
    omp_set_num_threads(n);
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int threads_get(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int threads_online(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 1024 ? 1024 : (int)n;
}

int threads_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int threads_in_parallel(void) {
#ifdef _OPENMP
    return omp_in_parallel();
#else
    return 0;
#endif
}
