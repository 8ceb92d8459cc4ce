/**
 * @file cmd_info.c
 * @brief `dsv3 info -m DIR`: what a checkpoint is — its configuration, where its parameters
 *        are, how it is stored, what a token costs in KV cache and in weights read.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cli_groups.h"
#include "cli_util.h"
#include "model/model.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

static const char *const CMD = "info";

int cmd_info(int argc, char **argv) {
    CliModel mo = { 0 };
    CliCmd cmd = { .name = CMD, .usage = "-m MODEL_DIR", .about = "prints the configuration, storage and per-token costs of a checkpoint" };
    cli_add(&cmd, cli_model_group(&mo));
    int rc = cli_parse(&cmd, argc, argv);
    if (rc != CLI_RUN) return rc;
    const char *dir = mo.dir;
    if (!dir) return cli_fail(CMD, EXIT_USAGE, "-m MODEL_DIR is required");
    Model m;
    Err err;
    if (model_load(&m, dir, stderr, &err)) return cli_fail(CMD, EXIT_RUNTIME, "%s", err.msg);
    const Config *c = &m.config;
    uint64_t main_p, mtp_p, acc[3];
    weights_count(c, m.w.n_mtp, &main_p, &mtp_p);
    model_weight_bytes(&m, acc);
    int moe_layers = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) moe_layers += config_layer_is_moe(c, l);
    /* The family member: the config's, refined by the chat template of a tokenizer beside it (R1 and V3-0324
     * share V3's config; V3.1's template has the thinking switch). */
    Tokenizer *tok = NULL;
    Err terr = { "" };
    ChatTemplate tpl = { CHAT_DEEPSEEK_V3, 0 };
    int have_tpl = tokenizer_load(&tok, dir, &terr) == 0 && tokenizer_chat_template(tok) &&
                   chat_template_select(&tpl, tok, NULL, 0, &terr) == 0;
    const char *family = config_family(c);
    if (have_tpl && !strcmp(family, "DeepSeek-V3") && tpl.kind == CHAT_DEEPSEEK_R1) family = "DeepSeek-R1";
    if (have_tpl && !strcmp(family, "DeepSeek-V3") && tpl.kind == CHAT_DEEPSEEK_V31) family = "DeepSeek-V3.1";
    printf("model           %s (model_type %s%s)\n", family, c->model_type, c->scale_ue8m0 ? ", UE8M0 scales" : "");
    printf("checkpoint      %s (%d file%s, %d tensors%s)\n", dir, m.st.n_files, m.st.n_files > 1 ? "s" : "",
           m.st.n_tensors, m.n_unused ? ", some unused" : "");
    printf("parameters      %.3f B main + %.3f B in %d MTP module(s)\n", (double)main_p / 1e9, (double)mtp_p / 1e9, m.w.n_mtp);
    printf("storage         %.1f MiB (%s), routed experts %.1f%%\n", (double)acc[0] / 1048576.0,
           c->has_fp8 ? "FP8 e4m3 with 128x128 block scales" : "no FP8", 100.0 * (double)acc[1] / (double)acc[0]);
    printf("layers          %d (%d dense, %d MoE), hidden %d, vocab %d\n", c->num_hidden_layers,
           c->num_hidden_layers - moe_layers, moe_layers, c->hidden_size, c->vocab_size);
    char q[64];
    if (c->q_lora_rank > 0) snprintf(q, sizeof q, "q latent %d", c->q_lora_rank);
    else snprintf(q, sizeof q, "direct q_proj (q_lora_rank null)");
    printf("attention       MLA, %d heads, %s, kv latent %d, head dims nope %d + rope %d, v %d\n",
           c->num_attention_heads, q, c->kv_lora_rank, c->qk_nope_head_dim, c->qk_rope_head_dim, c->v_head_dim);
    if (c->has_yarn)
        printf("                softmax scale %.10f, RoPE YaRN (theta %g, factor %g, beta_fast %g, beta_slow %g%s)\n",
               c->softmax_scale, c->rope_theta, c->rope_factor, c->beta_fast, c->beta_slow,
               c->beta_fast > c->beta_slow ? "" : ": no interpolated band");
    else printf("                softmax scale %.10f, RoPE plain (theta %g)\n", c->softmax_scale, c->rope_theta);
    if (c->n_group > 1)
        printf("MoE             %d routed experts in %d groups (keep %d), top-%d, %d shared, width %d, scale %g\n",
               c->n_routed_experts, c->n_group, c->topk_group, c->num_experts_per_tok, c->n_shared_experts,
               c->moe_intermediate_size, c->routed_scaling_factor);
    else
        printf("MoE             %d routed experts in one group (no group limit), top-%d, %d shared, width %d, scale %g\n",
               c->n_routed_experts, c->num_experts_per_tok, c->n_shared_experts, c->moe_intermediate_size,
               c->routed_scaling_factor);
    printf("KV cache/token  %lld B latent (absorb) vs %lld B full K/V (naive), FP32, all layers\n",
           (long long)(kvcache_floats_per_token(c, ATTN_ABSORB) * 4 * c->num_hidden_layers),
           (long long)(kvcache_floats_per_token(c, ATTN_NAIVE) * 4 * c->num_hidden_layers));
    printf("weights/token   %.1f MiB read per decoded token\n", (double)model_decode_weight_bytes(&m) / 1048576.0);
    if (tok)
        printf("tokenizer       %s, %d ids, chat template %s\n",
               tokenizer_is_tiktoken(tok) ? "tiktoken.model (tiktoken BPE)" : "tokenizer.json (byte-level BPE)",
               tokenizer_vocab_size(tok),
               have_tpl ? chat_template_name(tpl.kind) : tokenizer_chat_template(tok) ? "not recognized (dsv3 chat --chat-template NAME)"
                                                                                     : "none (deepseek-v3 assumed)");
    else printf("tokenizer       none in %s\n", dir);
    tokenizer_free(tok);
    model_free(&m);
    return EXIT_OK;
}
