/**
 * @file backend_stub.c
 * @brief ref/backend.h in a build without CUDA: every entry point fails with one clear line.
 *        The symbols are weak, so a build with CUDA links fast/backend_gpu.c's instead.
 */
#include "backend.h"

__attribute__((weak)) const char *gpu_backend_name(void) { return NULL; }

__attribute__((weak)) int gpu_engine_open(GpuEngine **e, const Model *m, const GpuEngineOptions *opt, FILE *log, Err *err) {
    (void)m, (void)opt, (void)log;
    *e = NULL;
    return err_set(err, "--backend fast: this dsv3 was built without CUDA (make needs nvcc at $CUDA_HOME/bin/nvcc)");
}

__attribute__((weak)) int gpu_engine_forward(GpuEngine *e, int64_t pos0, const int *ids, int64_t T, float *logits,
                                             int64_t n_logits, float *hidden, float *normed, Err *err) {
    (void)e, (void)pos0, (void)ids, (void)T, (void)logits, (void)n_logits, (void)hidden, (void)normed;
    return err_set(err, "--backend fast: this dsv3 was built without CUDA");
}

__attribute__((weak)) int gpu_engine_mtp(GpuEngine *e, int64_t pos0, const int *next_ids, const float *h, int64_t T,
                                         float *logits, int64_t n_logits, float *out_normed, Err *err) {
    (void)e, (void)pos0, (void)next_ids, (void)h, (void)T, (void)logits, (void)n_logits, (void)out_normed;
    return err_set(err, "--backend fast: this dsv3 was built without CUDA");
}

__attribute__((weak)) const char *gpu_engine_describe(const GpuEngine *e) {
    (void)e;
    return "no GPU backend";
}

__attribute__((weak)) void gpu_engine_close(GpuEngine *e) { (void)e; }

__attribute__((weak)) int gpu_engine_serve(GpuEngine *e, Err *err) {
    (void)e;
    return err_set(err, "--backend fast: this dsv3 was built without CUDA");
}

__attribute__((weak)) int gpu_engine_forward_seqs(GpuEngine *e, const GpuChunk *chunks, int n_chunks, float *logits, Err *err) {
    (void)e, (void)chunks, (void)n_chunks, (void)logits;
    return err_set(err, "--backend fast: this dsv3 was built without CUDA");
}
