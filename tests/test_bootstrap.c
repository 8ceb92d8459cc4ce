/**
 * @file test_bootstrap.c
 * @brief The launch bootstrap of expert-parallel runs (ref/ep/bootstrap.c), on the CPU:
 *  - torchrun variables: defaults, valid values, and each malformed one named in the error;
 *  - rank 0 shares a 128-byte id (an ncclUniqueId's size) with 3 other ranks over TCP on
 *    127.0.0.1, ranks starting in any order; a rank that finds nobody times out with a message.
 */
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "ep/bootstrap.h"

static void env_parsing(void **state) {
    (void)state;
    LaunchEnv e;
    Err err;
    unsetenv("WORLD_SIZE"), unsetenv("RANK"), unsetenv("LOCAL_RANK"), unsetenv("MASTER_ADDR"), unsetenv("MASTER_PORT");
    assert_int_equal(launch_env_read(&e, &err), 0);
    assert_int_equal(e.world_size, 1);
    assert_int_equal(e.rank, 0);
    assert_int_equal(e.master_port, 29500);
    assert_string_equal(e.master_addr, "127.0.0.1");
    setenv("WORLD_SIZE", "8", 1), setenv("RANK", "5", 1), setenv("LOCAL_RANK", "1", 1);
    setenv("MASTER_ADDR", "node0", 1), setenv("MASTER_PORT", "12345", 1);
    assert_int_equal(launch_env_read(&e, &err), 0);
    assert_true(e.world_size == 8 && e.rank == 5 && e.local_rank == 1 && e.master_port == 12345);
    assert_string_equal(e.master_addr, "node0");
    setenv("RANK", "8", 1);
    assert_int_equal(launch_env_read(&e, &err), -1);
    assert_non_null(strstr(err.msg, "RANK='8'"));
    setenv("RANK", "two", 1);
    assert_int_equal(launch_env_read(&e, &err), -1);
    setenv("RANK", "0", 1), setenv("MASTER_PORT", "70000", 1);
    assert_int_equal(launch_env_read(&e, &err), -1);
    assert_non_null(strstr(err.msg, "MASTER_PORT"));
    unsetenv("WORLD_SIZE"), unsetenv("RANK"), unsetenv("LOCAL_RANK"), unsetenv("MASTER_ADDR"), unsetenv("MASTER_PORT");
}

/** mpirun's variables stand in when torchrun's are absent (Open MPI first, then MPICH/Hydra). */
static void mpirun_variables(void **state) {
    (void)state;
    LaunchEnv e;
    Err err;
    unsetenv("WORLD_SIZE"), unsetenv("RANK"), unsetenv("LOCAL_RANK");
    setenv("OMPI_COMM_WORLD_SIZE", "16", 1), setenv("OMPI_COMM_WORLD_RANK", "9", 1), setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
    setenv("PMI_SIZE", "4", 1), setenv("PMI_RANK", "3", 1);
#ifndef DSV3_WITH_MPI /* an MPI build would call MPI_Init here */
    assert_int_equal(launch_env_read(&e, &err), 0);
    assert_true(e.mpi == 1 && e.world_size == 16 && e.rank == 9 && e.local_rank == 1);
    unsetenv("OMPI_COMM_WORLD_SIZE"), unsetenv("OMPI_COMM_WORLD_RANK"), unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
    assert_int_equal(launch_env_read(&e, &err), 0);
    assert_true(e.mpi == 1 && e.world_size == 4 && e.rank == 3 && e.local_rank == 3);
    setenv("PMI_RANK", "4", 1); /* rank ≥ size: named in the error */
    assert_int_equal(launch_env_read(&e, &err), -1);
    assert_non_null(strstr(err.msg, "PMI_RANK='4'"));
#endif
    setenv("WORLD_SIZE", "2", 1); /* torchrun's win */
    assert_int_equal(launch_env_read(&e, &err), 0);
    assert_true(e.mpi == 0 && e.world_size == 2 && e.rank == 0);
    unsetenv("WORLD_SIZE"), unsetenv("PMI_SIZE"), unsetenv("PMI_RANK");
    unsetenv("OMPI_COMM_WORLD_SIZE"), unsetenv("OMPI_COMM_WORLD_RANK"), unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
}

typedef struct {
    LaunchEnv env;
    unsigned char blob[128];
    int rc;
    double delay;
    Err err;
} Rank;

static void *rank_main(void *arg) {
    Rank *r = arg;
    if (r->delay > 0) {
        struct timespec ts = { 0, (long)(r->delay * 1e9) };
        nanosleep(&ts, NULL);
    }
    r->rc = bootstrap_share(&r->env, r->blob, sizeof r->blob, 10.0, &r->err);
    return NULL;
}

/** A free TCP port on this machine (bind to 0, read it back). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { 0 };
    sa.sin_family = AF_INET;
    socklen_t len = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || getsockname(fd, (struct sockaddr *)&sa, &len)) return 29555;
    close(fd);
    return ntohs(sa.sin_port);
}

static void four_ranks_share_an_id(void **state) {
    (void)state;
    enum { N = 4 };
    Rank r[N];
    pthread_t th[N];
    int port = free_port();
    for (int i = 0; i < N; i++) {
        memset(&r[i], 0, sizeof r[i]);
        r[i].env = (LaunchEnv){ N, i, i, "127.0.0.1", port, 0, NULL, NULL };
        if (i == 0)
            for (int k = 0; k < 128; k++) r[i].blob[k] = (unsigned char)(k * 7 + 1);
        r[i].delay = i == 0 ? 0.2 : 0.0; /* the others start first and must retry */
        pthread_create(&th[i], NULL, rank_main, &r[i]);
    }
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++) {
        if (r[i].rc) printf("    rank %d: %s\n", i, r[i].err.msg);
        assert_int_equal(r[i].rc, 0);
        assert_memory_equal(r[i].blob, r[0].blob, 128);
    }
}

static void nobody_listening_times_out(void **state) {
    (void)state;
    LaunchEnv e = { 2, 1, 1, "127.0.0.1", free_port(), 0, NULL, NULL };
    unsigned char blob[16];
    Err err;
    double t0 = now_seconds();
    assert_int_equal(bootstrap_share(&e, blob, sizeof blob, 0.5, &err), -1);
    assert_true(now_seconds() - t0 < 5);
    assert_non_null(strstr(err.msg, "could not reach rank 0"));
    printf("    %s\n", err.msg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(env_parsing),
        cmocka_unit_test(mpirun_variables),
        cmocka_unit_test(four_ranks_share_an_id),
        cmocka_unit_test(nobody_listening_times_out),
    };
    return cmocka_run_group_tests_name("bootstrap", tests, NULL, NULL);
}
