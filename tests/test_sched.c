/**
 * @file test_sched.c
 * @brief The pieces under `dsv3 serve`, without HTTP:
 *  - logits_process: penalties, biases and min-p against hand-computed rows; logprobs_top;
 *    the Generator hook (defaults change nothing);
 *  - the stop matcher: matches across pieces, holds back only possible starts, earliest match;
 *  - the scheduler on models/kjv: every request's tokens equal a lone Generator's (greedy and
 *    seeded, 3 slots for 7 requests, 5-token prefill chunks), with and without MTP drafting
 *    (seeded: against a lone run that drafts too, since speculative sampling draws differently);
 *    prefix reuse keeps the shared prefix and changes no token (also with drafting, gen_rewind);
 *    cancellation, the queue limit and invalid requests;
 *  - api_parse_request: defaults, both prompt forms, content parts.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "generate/generate.h"
#include "generate/logits_process.h"
#include "generate/sched.h"
#include "serve/api.h"
#include "generate/stop.h"

/* ---- logits_process ------------------------------------------------------------------------- */

static void penalties_by_hand(void **state) {
    (void)state;
    float z[5] = { 1.0f, 2.0f, -1.0f, 0.5f, 3.0f };
    int hist[4] = { 1, 1, 2, 4 }, work[4];
    LogitsParams p = logits_params_default();
    assert_true(logits_params_off(&p));
    p.repeat_penalty = 2.0f, p.frequency_penalty = 0.5f, p.presence_penalty = 0.25f, p.penalty_last_n = 3;
    assert_false(logits_params_off(&p));
    /* window = the last 3 tokens {1, 2, 4}: c(1) = 1, c(2) = 1, c(4) = 1 */
    logits_penalize(&p, hist, 4, z, 5, work);
    assert_float_equal(z[0], 1.0f, 0);
    assert_float_equal(z[1], 2.0f / 2 - 0.5f - 0.25f, 1e-6);
    assert_float_equal(z[2], -1.0f * 2 - 0.5f - 0.25f, 1e-6);
    assert_float_equal(z[3], 0.5f, 0);
    assert_float_equal(z[4], 3.0f / 2 - 0.5f - 0.25f, 1e-6);
    /* the whole history: c(1) = 2 */
    float y[5] = { 1.0f, 2.0f, -1.0f, 0.5f, 3.0f };
    p.penalty_last_n = -1;
    LogitBias b[2] = { { 0, 5.0f }, { 3, -100.0f } };
    p.bias = b, p.n_bias = 2;
    logits_penalize(&p, hist, 4, y, 5, work);
    assert_float_equal(y[1], 2.0f / 2 - 2 * 0.5f - 0.25f, 1e-6);
    assert_float_equal(y[0], 6.0f, 1e-6);
    assert_float_equal(y[3], -99.5f, 1e-5);
    Err err;
    assert_int_equal(logits_params_check(&p, 5, &err), 0);
    assert_int_equal(logits_params_check(&p, 3, &err), -1); /* token 3 is outside a 3-id vocabulary */
    assert_non_null(strstr(err.msg, "logit_bias"));
    p.min_p = 1.5f;
    assert_int_equal(logits_params_check(&p, 5, &err), -1);
    assert_non_null(strstr(err.msg, "min_p"));
}

static void min_p_and_logprobs(void **state) {
    (void)state;
    float z[4] = { 0.0f, -1.0f, -3.0f, -2.5f };
    logits_min_p(expf(-2.0f), z, 4); /* keep z ≥ max − 2 */
    assert_float_equal(z[0], 0.0f, 0);
    assert_float_equal(z[1], -1.0f, 0);
    assert_true(isinf(z[2]) && z[2] < 0);
    assert_true(isinf(z[3]) && z[3] < 0);
    logits_min_p(1.0f, z, 4); /* only the maximum survives */
    assert_true(isinf(z[1]));
    assert_float_equal(z[0], 0.0f, 0);
    float l[4] = { 0.0f, logf(2.0f), 0.0f, -INFINITY };
    TokenLogprob top[3];
    float lp = logprobs_top(l, 4, 2, 3, top);
    assert_float_equal(lp, logf(0.25f), 1e-6);
    assert_int_equal(top[0].token, 1);
    assert_float_equal(top[0].logprob, logf(0.5f), 1e-6);
    assert_int_equal(top[1].token, 0); /* a tie: the lower id first */
    assert_int_equal(top[2].token, 2);
    assert_float_equal(logprobs_top(l, 4, 3, 0, top), -9999.0f, 0); /* −∞ reads OpenAI's floor */
}

/* ---- stop matcher ----------------------------------------------------------------------------- */

/** Feeds @p piece and appends what the matcher releases to @p out; the matcher's return value. */
static int feed(StopMatcher *m, const char *piece, ByteBuf *out) {
    const char *t;
    size_t n;
    int r = stop_feed(m, piece, strlen(piece), &t, &n);
    bytebuf_append(out, t, n);
    if (!out->data) bytebuf_append(out, "", 0);
    return r;
}

/** The server's use of generate/stop.h: copies of a request's strings, text in uneven pieces. */
static void stop_matcher(void **state) {
    (void)state;
    StopMatcher m;
    ByteBuf out = { 0 };
    const char *t;
    size_t n;
    const char *stops[] = { "world", "o w" };
    assert_int_equal(stop_init_copy(&m, stops, 2), 0);
    assert_int_equal(feed(&m, "Hel", &out), 0);
    assert_int_equal((int)out.len, 3);
    assert_int_equal(feed(&m, "lo", &out), 0);
    assert_string_equal(out.data, "Hell"); /* "o" may start "o w" */
    assert_int_equal(feed(&m, " wor", &out), 1); /* "o w" completes first */
    assert_string_equal(out.data, "Hell");
    assert_int_equal(feed(&m, "ld", &out), 1);
    assert_string_equal(out.data, "Hell");
    stop_free(&m);
    bytebuf_free(&out);
    /* held text comes out once it cannot be a stop any more, and at the end */
    assert_int_equal(stop_init_copy(&m, stops, 1), 0);
    assert_int_equal(feed(&m, "a wor", &out), 0);
    assert_string_equal(out.data, "a ");
    assert_int_equal(feed(&m, "ms w", &out), 0);
    assert_string_equal(out.data, "a worms ");
    stop_flush(&m, &t, &n);
    bytebuf_append(&out, t, n);
    assert_string_equal(out.data, "a worms w");
    stop_free(&m);
    bytebuf_free(&out);
    /* multi-byte: a stop starting with "é" never splits a character */
    const char *u[] = { "\xc3\xa9t\xc3\xa9" };
    assert_int_equal(stop_init_copy(&m, u, 1), 0);
    assert_int_equal(feed(&m, "caf\xc3\xa9", &out), 0);
    assert_string_equal(out.data, "caf");
    assert_int_equal(feed(&m, "t\xc3\xa9!", &out), 1);
    assert_string_equal(out.data, "caf");
    stop_free(&m);
    bytebuf_free(&out);
    /* no stop strings: everything passes; an empty one is refused */
    assert_int_equal(stop_init_copy(&m, NULL, 0), 0);
    assert_int_equal(feed(&m, "abc", &out), 0);
    assert_string_equal(out.data, "abc");
    stop_free(&m);
    bytebuf_free(&out);
    const char *empty[] = { "" };
    assert_int_equal(stop_init_copy(&m, empty, 1), -1);
}

/* ---- the scheduler ------------------------------------------------------------------------------ */

static Model model;

static int load_model(void **state) {
    (void)state;
    Err err = { "" };
    if (model_load(&model, "models/kjv", NULL, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return 0;
}

static int free_model(void **state) {
    (void)state;
    model_free(&model);
    return 0;
}

/** What a request received. */
typedef struct {
    int tokens[256], n, done;
    SchedResult res;
    int stop_after; /* > 0: the sink asks to stop after this many tokens */
} Got;

static int got_token(void *u, const SchedToken *t) {
    Got *g = u;
    g->tokens[g->n++] = t->token;
    return g->stop_after > 0 && g->n >= g->stop_after;
}

static void got_done(void *u, const SchedResult *r) {
    Got *g = u;
    g->done++;
    g->res = *r;
}

/** A lone Generator's tokens for the same request (stops at EOS like the scheduler). */
static int solo(const int *prompt, int n, const SchedParams *p, int draft, int *out) {
    Sampler smp;
    Generator g;
    Err err;
    assert_int_equal(sampler_init(&smp, p->temperature, p->top_k, p->top_p, p->seed, &err), 0);
    assert_int_equal(gen_init(&g, &model, &smp, 256, draft, 64, ATTN_ABSORB, FP8_DEQUANT, &err), 0);
    gen_limit_vocab(&g, 4096);
    assert_int_equal(gen_feed(&g, prompt, n, &err), 0);
    int k = 0;
    while (k < p->max_new) {
        int o[17], m;
        assert_int_equal(gen_next(&g, o, &m, &err), 0);
        int stop = 0;
        for (int i = 0; i < m && k < p->max_new && !stop; i++) {
            if (o[i] == model.config.eos_token_id) stop = 1;
            else out[k++] = o[i];
        }
        if (stop) break;
    }
    gen_free(&g);
    return k;
}

static SchedParams params(float temp, uint64_t seed, int64_t max_new) {
    SchedParams p = { temp, 40, 0.95f, seed, logits_params_default(), max_new, -1, { 0 }, 0 };
    return p;
}

static void scheduled_equals_solo_with(int draft) {
    SchedOptions o = { 3, 256, 5, draft, 4096, model.config.eos_token_id, 16, ATTN_ABSORB, FP8_DEQUANT, NULL };
    Sched *s;
    Err err;
    assert_int_equal(sched_open(&s, &model, NULL, &o, &err), 0);
    enum { N = 7 };
    int prompts[N][40];
    Got got[N];
    SchedParams ps[N];
    memset(got, 0, sizeof got);
    for (int i = 0; i < N; i++) {
        prompts[i][0] = 0;
        for (int t = 1; t < 40; t++) prompts[i][t] = 100 + (i * 37 + t * 11) % 3000;
        ps[i] = params(i % 2 ? 0.9f : 0.0f, 77 + (uint64_t)i, 10 + i);
        SchedSink sink = { got_token, got_done, NULL, &got[i] };
        uint64_t id;
        assert_int_equal(sched_submit(s, prompts[i], 3 + i * 5, &ps[i], &sink, &id, &err), 0);
    }
    int left, steps = 0;
    while ((left = sched_step(s, &err)) > 0) steps++;
    assert_int_equal(left, 0);
    for (int i = 0; i < N; i++) {
        int want[256];
        /* The scheduler's speculation is exact (gen_set_spec_exact): greedy or seeded, a request's
         * text is that of a lone plain run. */
        int n = solo(prompts[i], 3 + i * 5, &ps[i], 0, want);
        assert_int_equal(got[i].done, 1);
        if (got[i].n != n || memcmp(got[i].tokens, want, (size_t)n * sizeof(int))) {
            fprintf(stderr, "request %d (temp %g): got", i, ps[i].temperature);
            for (int t = 0; t < got[i].n; t++) fprintf(stderr, " %d", got[i].tokens[t]);
            fprintf(stderr, "\n  want");
            for (int t = 0; t < n; t++) fprintf(stderr, " %d", want[t]);
            fprintf(stderr, "\n");
        }
        assert_int_equal(got[i].n, n);
        assert_memory_equal(got[i].tokens, want, (size_t)n * sizeof(int));
        assert_int_equal(got[i].res.finish, n == ps[i].max_new ? SCHED_LENGTH : SCHED_STOP);
    }
    SchedStats st;
    sched_stats(s, &st);
    assert_int_equal(st.busy, 0);
    assert_int_equal(st.queued, 0);
    if (draft) assert_true(st.drafted > 0);
    printf("    draft %d: %d requests in %d steps, %lld generated, MTP %lld/%lld\n", draft, N, steps, (long long)st.generated,
           (long long)st.accepted, (long long)st.drafted);
    sched_close(s);
}

static void scheduled_equals_solo(void **state) {
    (void)state;
    scheduled_equals_solo_with(0);
    scheduled_equals_solo_with(2);
}

/** A second request extending the first one's prompt + reply reuses them and yields a fresh run's tokens. */
static void prefix_reuse_with(int draft) {
    SchedOptions o = { 2, 256, 8, draft, 4096, -1, 4, ATTN_ABSORB, FP8_DEQUANT, NULL };
    Sched *s;
    Err err;
    assert_int_equal(sched_open(&s, &model, NULL, &o, &err), 0);
    int prompt[128] = { 0, 250, 31, 90, 1200, 7, 64, 300, 42, 13 };
    SchedParams p = params(0.0f, 1, 12);
    Got a = { .n = 0 }, b = { .n = 0 };
    SchedSink sa = { got_token, got_done, NULL, &a };
    uint64_t id;
    assert_int_equal(sched_submit(s, prompt, 10, &p, &sa, &id, &err), 0);
    while (sched_step(s, &err) > 0) {}
    assert_int_equal(a.n, 12);
    int n2 = 10;
    memcpy(prompt + n2, a.tokens, 12 * sizeof(int));
    n2 += 12;
    for (int i = 0; i < 5; i++) prompt[n2++] = 500 + i;
    SchedParams p2 = params(0.7f, 9, 15);
    SchedSink sb = { got_token, got_done, NULL, &b };
    assert_int_equal(sched_submit(s, prompt, n2, &p2, &sb, &id, &err), 0);
    while (sched_step(s, &err) > 0) {}
    /* The first reply's last token was sampled but never run; with drafting one more is re-run. */
    assert_int_equal(b.res.cached_tokens, 10 + 12 - 1 - (draft > 0));
    int want[256];
    int n = solo(prompt, n2, &p2, 0, want); /* seeded: plain decoding's text, with or without drafts */
    assert_int_equal(b.n, n);
    assert_memory_equal(b.tokens, want, (size_t)n * sizeof(int));
    sched_close(s);
}

static void prefix_reuse(void **state) {
    (void)state;
    prefix_reuse_with(0);
    prefix_reuse_with(1);
}

/** A stop id ends a request where that token is drawn, like the EOS: not delivered, SCHED_STOP; also with MTP drafts. */
static void stop_ids_with(int draft) {
    SchedOptions o = { 1, 256, 16, draft, 4096, -1, 4, ATTN_ABSORB, FP8_DEQUANT, NULL };
    Sched *s;
    Err err;
    assert_int_equal(sched_open(&s, &model, NULL, &o, &err), 0);
    int prompt[6] = { 0, 250, 31, 90, 1200, 7 };
    SchedParams p = params(0.0f, 1, 20);
    Got a = { .n = 0 }, b = { .n = 0 };
    SchedSink sa = { got_token, got_done, NULL, &a }, sb = { got_token, got_done, NULL, &b };
    uint64_t id;
    assert_int_equal(sched_submit(s, prompt, 6, &p, &sa, &id, &err), 0);
    while (sched_step(s, &err) > 0) {}
    assert_int_equal(a.n, 20);
    int first = 0;
    while (a.tokens[first] != a.tokens[7]) first++;
    p.stop_ids[1] = a.tokens[7], p.n_stop_ids = 2; /* stop_ids[0] = 0, the BOS: never drawn here */
    assert_int_equal(sched_submit(s, prompt, 6, &p, &sb, &id, &err), 0);
    while (sched_step(s, &err) > 0) {}
    assert_int_equal(b.res.finish, SCHED_STOP);
    assert_int_equal(b.n, first);
    assert_int_equal(b.res.generated, first);
    assert_memory_equal(b.tokens, a.tokens, (size_t)first * sizeof(int));
    p.n_stop_ids = SCHED_MAX_STOP_IDS + 1;
    assert_int_equal(sched_submit(s, prompt, 6, &p, &sb, &id, &err), -1);
    assert_non_null(strstr(err.msg, "n_stop_ids"));
    sched_close(s);
}

static void stop_ids(void **state) {
    (void)state;
    stop_ids_with(0);
    stop_ids_with(1);
}

static void cancel_queue_and_errors(void **state) {
    (void)state;
    SchedOptions o = { 1, 64, 16, 0, 4096, -1, 0, ATTN_ABSORB, FP8_DEQUANT, NULL };
    Sched *s;
    Err err;
    assert_int_equal(sched_open(&s, &model, NULL, &o, &err), 0);
    int prompt[4] = { 0, 5, 6, 7 };
    SchedParams p = params(0.5f, 3, 50);
    Got a = { .n = 0 }, b = { .n = 0 }, c = { .n = 0, .stop_after = 3 };
    SchedSink sa = { got_token, got_done, NULL, &a }, sb = { got_token, got_done, NULL, &b }, sc = { got_token, got_done, NULL, &c };
    uint64_t ida, idb;
    assert_int_equal(sched_submit(s, prompt, 4, &p, &sa, &ida, &err), 0);
    assert_int_equal(sched_submit(s, prompt, 4, &p, &sb, &idb, &err), SCHED_FULL); /* one slot, no queue */
    assert_int_equal(sched_step(s, &err), 1);
    assert_int_equal(a.n, 1);
    sched_cancel(s, ida);
    assert_int_equal(sched_step(s, &err), 0);
    assert_int_equal(a.done, 1);
    assert_int_equal(a.res.finish, SCHED_CANCELLED);
    assert_int_equal(a.n, 1);
    /* the sink ends a request (a stop string) */
    assert_int_equal(sched_submit(s, prompt, 4, &p, &sc, &ida, &err), 0);
    while (sched_step(s, &err) > 0) {}
    assert_int_equal(c.n, 3);
    assert_int_equal(c.res.finish, SCHED_STOP);
    /* invalid requests: nothing is queued, the sink is never called */
    SchedParams bad = p;
    bad.max_new = 61;
    assert_int_equal(sched_submit(s, prompt, 4, &bad, &sb, &idb, &err), -1); /* 4 + 61 > 64 */
    assert_non_null(strstr(err.msg, "context"));
    int big[1] = { 5000 };
    assert_int_equal(sched_submit(s, big, 1, &p, &sb, &idb, &err), -1);
    bad = p;
    bad.top_p = 0.0f;
    assert_int_equal(sched_submit(s, prompt, 4, &bad, &sb, &idb, &err), -1);
    assert_int_equal(b.done, 0);
    sched_close(s);
}

/** The Generator hook with default parameters changes nothing; with a bias it does. */
static void generator_hook(void **state) {
    (void)state;
    int prompt[5] = { 0, 300, 301, 302, 303 }, plain[20], hooked[20];
    SchedParams p = params(0.0f, 1, 20);
    int n = solo(prompt, 5, &p, 0, plain);
    Sampler smp;
    Generator g;
    Err err;
    int work[300];
    LogitsHookCtx h = { logits_params_default(), work, 300 };
    LogitBias ban = { plain[0], -100.0f };
    for (int round = 0; round < 2; round++) {
        sampler_init(&smp, 0.0f, 40, 0.95f, 1, &err);
        assert_int_equal(gen_init(&g, &model, &smp, 256, 1, 64, ATTN_ABSORB, FP8_DEQUANT, &err), 0);
        gen_limit_vocab(&g, 4096);
        gen_set_logits_hook(&g, logits_process_hook, &h);
        gen_feed(&g, prompt, 5, &err);
        int k = 0;
        while (k < n) {
            int o[4], m;
            gen_next(&g, o, &m, &err);
            for (int i = 0; i < m && k < n; i++) hooked[k++] = o[i];
        }
        gen_free(&g);
        if (round == 0) assert_memory_equal(plain, hooked, (size_t)n * sizeof(int));
        else assert_int_not_equal(hooked[0], plain[0]);
        h.p.bias = &ban, h.p.n_bias = 1;
    }
}

/* ---- api ---------------------------------------------------------------------------------------- */

static void api_parsing(void **state) {
    (void)state;
    ApiRequest r;
    ApiError e;
    const char *chat = "{\"messages\": [{\"role\": \"developer\", \"content\": \"be brief\"},"
                       " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, {\"type\": \"text\", \"text\": \"b\"}]},"
                       " {\"role\": \"assistant\", \"content\": null}], \"stop\": \"x\", \"seed\": 5, \"top_logprobs\": 2, \"logprobs\": true}";
    assert_int_equal(api_parse_request(API_CHAT, chat, strlen(chat), &r, &e), 0);
    assert_int_equal(r.n_msgs, 3);
    assert_string_equal(r.msgs[0].role, "system");
    assert_string_equal(r.msgs[1].content, "ab");
    assert_string_equal(r.msgs[2].content, "");
    assert_int_equal(r.n_stop, 1);
    assert_true(r.have_seed && r.seed == 5);
    assert_true(r.logprobs && r.top_logprobs == 2);
    assert_true(r.max_tokens == -1 && fabs(r.temperature - 0.8) < 1e-9 && r.top_k == 40);
    api_request_free(&r);
    const char *ids = "{\"prompt\": [[0, 5, 9]], \"logprobs\": 3, \"seed\": -1}";
    assert_int_equal(api_parse_request(API_COMPLETION, ids, strlen(ids), &r, &e), 0);
    assert_int_equal(r.n_ids, 3);
    assert_null(r.prompt);
    assert_false(r.have_seed); /* -1: random, as llama.cpp */
    assert_true(r.logprobs && r.top_logprobs == 3);
    api_request_free(&r);
    const char *b = "{\"prompt\": \"x\", \"max_tokens\": 0}";
    assert_int_equal(api_parse_request(API_COMPLETION, b, strlen(b), &r, &e), -1);
    assert_int_equal(e.status, 400);
    assert_string_equal(e.param, "max_tokens");
    char *json = api_error_json(&e);
    assert_non_null(strstr(json, "\"type\":\"invalid_request_error\""));
    assert_non_null(strstr(json, "\"code\":null"));
    free(json);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(penalties_by_hand),
        cmocka_unit_test(min_p_and_logprobs),
        cmocka_unit_test(stop_matcher),
        cmocka_unit_test(api_parsing),
        cmocka_unit_test_setup_teardown(scheduled_equals_solo, load_model, free_model),
        cmocka_unit_test_setup_teardown(prefix_reuse, load_model, free_model),
        cmocka_unit_test_setup_teardown(stop_ids, load_model, free_model),
        cmocka_unit_test_setup_teardown(cancel_queue_and_errors, load_model, free_model),
        cmocka_unit_test_setup_teardown(generator_hook, load_model, free_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
