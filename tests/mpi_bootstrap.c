/**
 * @file mpi_bootstrap.c
 * @brief `make test-mpi`: the launch path under mpirun in an MPI build (make MPI=1). Every rank
 *        reads its place from mpirun's variables, rank 0's blob reaches all ranks through
 *        bootstrap_share (MPI_Bcast: no MASTER_ADDR/PORT), and the ranks agree on it (MPI_Allreduce).
 *        Prints "mpi_bootstrap: N passed, M failed" on rank 0.
 */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "ep/bootstrap.h"

int main(void) {
    LaunchEnv e;
    Err err = { "" };
    int passed = 0, failed = 0;
    if (launch_env_read(&e, &err)) {
        printf("mpi_bootstrap: 0 passed, 1 failed (%s)\n", err.msg);
        return 1;
    }
    int size = 0, rank = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int ok = e.mpi == 1 && e.world_size == size && e.rank == rank;
    unsigned char blob[128];
    for (int i = 0; i < 128; i++) blob[i] = rank == 0 ? (unsigned char)(i * 7 + 3) : 0;
    ok = ok && bootstrap_share(&e, blob, sizeof blob, 10.0, &err) == 0;
    for (int i = 0; ok && i < 128; i++) ok = blob[i] == (unsigned char)(i * 7 + 3);
    int all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    if (rank == 0) {
        if (all) passed++;
        else failed++;
        printf("  [%s] %d ranks under mpirun: places from the launcher, rank 0's 128 bytes reached every rank (MPI_Bcast)\n",
               all ? "PASS" : "FAIL", size);
        printf("mpi_bootstrap: %d passed, %d failed\n", passed, failed);
    }
    return all ? 0 : 1;
}
