/**
 * @file cli_groups.c
 * @brief The shared option groups (see cli_groups.h): each flag's one declaration.
 */
#include "cli_groups.h"

#include <stddef.h>

#include "base/threads.h"
#include "model/kvcache.h"

static const CliOpt model_opts[] = {
    { "--model", "-m", CLI_STR, offsetof(CliModel, dir), "DIR", .help = "checkpoint directory (config.json + *.safetensors)" },
};

static const CliOpt numerics_opts[] = {
    { "--attn", NULL, CLI_CHOICE, offsetof(CliModel, attn), .choices = "absorb|naive", .def = "absorb",
      .help = "MLA form: the latent cache with W_UK/W_UV absorbed, or full K/V" },
    { "--fp8", NULL, CLI_CHOICE, offsetof(CliModel, fp8), .choices = "dequant|w8a8", .def = "dequant",
      .help = "FP8 numerics: FP32 x dequantized weights, or W8A8 as GPUs run it" },
};

static const CliOpt sampling_opts[] = {
    { "--temp", NULL, CLI_DOUBLE, offsetof(CliSampling, temp), "T", .lo = 0, .hi = 100, .def = "0.8",
      .help = "temperature, 0 = greedy" },
    { "--top-k", NULL, CLI_LONG, offsetof(CliSampling, top_k), "K", .lo = 0, .hi = 1 << 30, .def = "40",
      .help = "keep the K most likely tokens, 0 = all" },
    { "--top-p", NULL, CLI_DOUBLE, offsetof(CliSampling, top_p), "P", .lo = 0, .hi = 1, .open_lo = 1, .def = "0.95",
      .help = "nucleus: the most likely tokens holding mass P, in (0, 1]" },
    { "--seed", "-s", CLI_LONG, offsetof(CliSampling, seed), "S", .lo = 0, .hi = 0x7fffffff,
      .help = "sampling seed (default: from the clock, printed to stderr)" },
};

static const CliOpt penalties_opts[] = {
    { "--min-p", NULL, CLI_DOUBLE, offsetof(CliPenalties, min_p), "P", .lo = 0, .hi = 1, .def = "0",
      .help = "drop tokens less likely than P times the most likely one, 0 = off" },
    { "--repeat-penalty", NULL, CLI_DOUBLE, offsetof(CliPenalties, repeat_penalty), "R", .lo = 0, .hi = 10, .open_lo = 1,
      .def = "1", .help = "divide positive (multiply negative) logits of recent tokens by R, 1 = off" },
    { "--repeat-last-n", NULL, CLI_LONG, offsetof(CliPenalties, repeat_last_n), "N", .lo = -1, .hi = 1 << 30, .def = "64",
      .help = "recent tokens the penalties look at (prompt included), -1 = all" },
    { "--presence-penalty", NULL, CLI_DOUBLE, offsetof(CliPenalties, presence_penalty), "A", .lo = -2, .hi = 2, .def = "0",
      .help = "subtract A from the logit of every token seen in the window" },
    { "--frequency-penalty", NULL, CLI_DOUBLE, offsetof(CliPenalties, frequency_penalty), "A", .lo = -2, .hi = 2, .def = "0",
      .help = "subtract A times its count in the window from a token's logit" },
};

static const int backend_values[] = { 0, 1 }, kv_values[] = { -1, KV_F32, KV_BF16, KV_FP8 };
static const CliOpt backend_opts[] = {
    { "--backend", NULL, CLI_CHOICE, offsetof(CliBackend, gpu), .choices = "ref|fast", .values = backend_values, .def = "ref",
      .help = "the C reference, or the whole model on a GPU (with --fp8 w8a8 unless given)" },
    { "--kv-cache", NULL, CLI_CHOICE, offsetof(CliBackend, kv_bf16), .choices = "auto|f32|bf16|fp8", .values = kv_values,
      .def = "auto", .help = "latent cache storage; auto: bf16 where the GPU's tensor-core MLA kernel applies;\n"
                             "fp8: e4m3 c_kv, a scale per 128 values, bf16 k_pe (emulated by logits on the reference;\n"
                             "--backend fast refuses it for now)" },
};

static const CliOpt ep_opts[] = {
    { "--ep", NULL, CLI_LONG, offsetof(CliEpFlags, n), "N", .lo = 1, .hi = 256,
      .help = "split the routed experts over N processes (this one and N-1 it starts);\n"
              "under torchrun / mpirun the launcher's processes form the group instead" },
    { "--ep-transport", NULL, CLI_CHOICE, offsetof(CliEpFlags, tcp), .choices = "nccl|tcp", .def = "nccl",
      .help = "--backend fast: NCCL, one GPU per rank, or TCP through host memory;\nthe reference always uses TCP" },
    { "--ep-plan", NULL, CLI_STR, offsetof(CliEpFlags, plan), "PLAN.json",
      .help = "place the routed experts (with redundant copies) as an EPLB plan says\n(dsv3 eplb; docs/eplb.md); reference backend only" },
};

static const CliOpt threads_opts[] = {
    { "--threads", "-t", CLI_LONG, offsetof(CliThreads, n), "N", .lo = 1, .hi = 1024,
      .help = "threads of the model's parallel loops (default: every online core)" },
};

CliGroup cli_model_group(CliModel *m) { return (CliGroup){ "model", model_opts, CLI_COUNT(model_opts), m, 0 }; }
CliGroup cli_numerics_group(CliModel *m) { return (CliGroup){ NULL, numerics_opts, CLI_COUNT(numerics_opts), m, 0 }; }
CliGroup cli_sampling_group(CliSampling *s) { return (CliGroup){ "sampling", sampling_opts, CLI_COUNT(sampling_opts), s, 0 }; }
CliGroup cli_penalties_group(CliPenalties *p) { return (CliGroup){ NULL, penalties_opts, CLI_COUNT(penalties_opts), p, 0 }; }
CliGroup cli_backend_group(CliBackend *b) { return (CliGroup){ "backend", backend_opts, CLI_COUNT(backend_opts), b, 0 }; }
CliGroup cli_ep_group(CliEpFlags *f) { return (CliGroup){ "expert parallelism", ep_opts, CLI_COUNT(ep_opts), f, 0 }; }
CliGroup cli_threads_group(CliThreads *t, unsigned flags) {
    return (CliGroup){ "threads", threads_opts, CLI_COUNT(threads_opts), t, flags };
}

int cli_threads_apply(const CliThreads *t) { return threads_set(t->n > 0 ? (int)t->n : threads_online()); }
