/**
 * @file test_serve.c
 * @brief `dsv3 serve` over loopback on models/kjv (ephemeral ports, raw HTTP/1.1):
 *  - every endpoint (health 503 → 200, models, tokenize/detokenize, completions with text and
 *    ids, chat, the chat page, metrics), SSE framing (one id, role first, whole UTF-8 deltas,
 *    finish chunk, usage chunk, [DONE]), stream == non-stream and == `dsv3 generate --temp 0`;
 *  - 16 concurrent clients with mixed prompt lengths and seeds give their solo texts, also with
 *    MTP speculation; prefix reuse (the second chat turn prefills only its new tokens);
 *  - stop strings spanning two tokens, logprobs, logit_bias and penalties;
 *  - a client that disconnects frees its slot within a step; 413, 429, 401, 404, 405; a table of
 *    malformed requests, each a 400 naming its field; SIGTERM ends in-flight streams cleanly and
 *    exits 0 within 5 s; a soak (`--soak N`: N requests, a tenth malformed, some cancelled) whose
 *    RSS after N stays within 10 % of RSS after 100 (make test runs 1000, make test-soak 10,000);
 *  - --ep 2 (experts in a second process) and --backend fast over the host emulation of the
 *    kernels (where nvcc built it: the GPU batch and one GPU sequence with MTP) give the same texts;
 *  - the DeepSeek-V3 family on a random tiny checkpoint whose tokenizer has every template's markers:
 *    R1 recognized from tokenizer_config.json, V3.1's chat_template_kwargs.thinking and --think,
 *    K2-Thinking — reasoning_content and content (streamed: reasoning deltas first) are the split of
 *    the same prompt's completion, with its finish_reason and usage, under stop strings too; Kimi's
 *    <|im_end|> ends a chat reply, not a completion; --chat-template errors.
 */
#define _DEFAULT_SOURCE
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include <cjson/cJSON.h>

#include "base/util.h"
#include "ep/eplb.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"
#include "util_compare.h"
#include "util_http.h"
#include "util_run.h"
#include "util_tok.h"

#define MODEL "models/kjv"

static TestServer main_srv; /* -np 4 -b 16 --metrics: most tests */
static long soak_n = 1000;

static int group_setup(void **state) {
    (void)state;
    return test_server_start(&main_srv, "-m " MODEL " -np 4 -b 16 --metrics --max-queue 64", 1);
}

static int group_teardown(void **state) {
    (void)state;
    test_server_stop(&main_srv, SIGTERM, 10);
    return 0;
}

/* ---- helpers -------------------------------------------------------------------------------- */

/** POSTs @p json (printf-formatted) and parses the answer; *status gets the HTTP status. */
static cJSON *post(int port, const char *path, int *status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static cJSON *post(int port, const char *path, int *status, const char *fmt, ...) {
    char body[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    HttpResponse r;
    if (http_post_json(port, path, body, &r)) {
        *status = 0;
        return NULL;
    }
    *status = r.status;
    cJSON *j = cJSON_Parse(r.body);
    http_response_free(&r);
    return j;
}

static const char *jstr(const cJSON *j, const char *path) {
    /* "a.b.0.c": object keys and array indices */
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *cur = j;
    for (char *save, *tok = strtok_r(buf, ".", &save); tok && cur; tok = strtok_r(NULL, ".", &save))
        cur = (tok[0] >= '0' && tok[0] <= '9') ? cJSON_GetArrayItem(cur, atoi(tok)) : cJSON_GetObjectItemCaseSensitive(cur, tok);
    return cJSON_IsString(cur) ? cur->valuestring : NULL;
}

static double jnum(const cJSON *j, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *cur = j;
    for (char *save, *tok = strtok_r(buf, ".", &save); tok && cur; tok = strtok_r(NULL, ".", &save))
        cur = (tok[0] >= '0' && tok[0] <= '9') ? cJSON_GetArrayItem(cur, atoi(tok)) : cJSON_GetObjectItemCaseSensitive(cur, tok);
    return cJSON_IsNumber(cur) ? cur->valuedouble : -1e300;
}

/** The text of a non-streaming completion or chat answer (malloc'd), NULL on failure. */
static char *answer_text(const cJSON *j) {
    const char *t = jstr(j, "choices.0.text");
    if (!t) t = jstr(j, "choices.0.message.content");
    return t ? strdup(t) : NULL;
}

/** A streamed answer: its events' texts joined, the finish reason, the usage (if any). */
typedef struct {
    int status, n_events, done, first_role, same_id, utf8_ok, n_content;
    int n_reasoning, reasoning_after_content; /* delta.reasoning_content chunks; one came after a content delta */
    char text[65536], finish[32], id[64];
    char reasoning[16384];
    cJSON *usage;
} Stream;

static void stream_free(Stream *s) { cJSON_Delete(s->usage); }

/** Parses an SSE body strictly: "data: ...\n\n" events only, the last "[DONE]". */
static void parse_sse(const char *body, Stream *s) {
    s->same_id = 1, s->utf8_ok = 1;
    const char *p = body;
    while (*p) {
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        assert_memory_equal(p, "data: ", 6);
        size_t n = (size_t)(end - p - 6);
        char *data = strndup(p + 6, n);
        p = end + 2;
        if (!strcmp(data, "[DONE]")) {
            s->done = 1;
            free(data);
            assert_true(*p == 0); /* nothing after [DONE] */
            break;
        }
        cJSON *j = cJSON_Parse(data);
        free(data);
        assert_non_null(j);
        const char *id = jstr(j, "id");
        assert_non_null(id);
        if (s->n_events == 0) snprintf(s->id, sizeof s->id, "%s", id);
        else if (strcmp(s->id, id)) s->same_id = 0;
        const cJSON *choices = cJSON_GetObjectItem(j, "choices");
        assert_true(cJSON_IsArray(choices));
        if (cJSON_GetArraySize(choices) == 0) { /* the usage chunk */
            assert_null(s->usage);
            s->usage = cJSON_Duplicate(cJSON_GetObjectItem(j, "usage"), 1);
            assert_non_null(s->usage);
        } else {
            assert_null(s->usage); /* usage comes last */
            assert_int_equal(s->finish[0], 0); /* nothing after the finish chunk but usage */
            const char *role = jstr(j, "choices.0.delta.role");
            if (s->n_events == 0 && role && !strcmp(role, "assistant")) s->first_role = 1;
            const char *c = jstr(j, "choices.0.delta.content");
            if (!c) c = jstr(j, "choices.0.text");
            if (c && *c) {
                s->n_content++;
                if (!utf8_valid(c, strlen(c))) s->utf8_ok = 0;
                strncat(s->text, c, sizeof s->text - strlen(s->text) - 1);
            }
            const char *rc = jstr(j, "choices.0.delta.reasoning_content");
            if (rc && *rc) {
                s->n_reasoning++;
                if (s->n_content) s->reasoning_after_content = 1;
                if (!utf8_valid(rc, strlen(rc))) s->utf8_ok = 0;
                strncat(s->reasoning, rc, sizeof s->reasoning - strlen(s->reasoning) - 1);
            }
            const char *fin = jstr(j, "choices.0.finish_reason");
            if (fin) snprintf(s->finish, sizeof s->finish, "%s", fin);
        }
        s->n_events++;
        cJSON_Delete(j);
    }
}

static void stream_post(int port, const char *path, const char *json, Stream *s) {
    memset(s, 0, sizeof *s);
    HttpResponse r;
    assert_int_equal(http_post_json(port, path, json, &r), 0);
    s->status = r.status;
    if (r.status == 200) {
        char ct[128];
        assert_int_equal(http_header(&r, "Content-Type", ct, sizeof ct), 0);
        assert_non_null(strstr(ct, "text/event-stream"));
        parse_sse(r.body, s);
    }
    http_response_free(&r);
}

/** A metric's value from /metrics (the first line starting with @p name + ' '), or -1. */
static double metric(int port, const char *name) {
    HttpResponse r;
    if (http_request(port, "GET", "/metrics", NULL, NULL, &r)) return -1;
    double v = -1;
    size_t n = strlen(name);
    for (const char *p = r.body; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, name, n) && p[n] == ' ') {
            v = atof(p + n + 1);
            break;
        }
    http_response_free(&r);
    return v;
}

/** A short completion still gets a 200 (the server is fine after whatever the test did). */
static void assert_serves(int port) {
    int st;
    cJSON *j = post(port, "/v1/completions", &st, "{\"prompt\": \"And\", \"max_tokens\": 2}");
    assert_int_equal(st, 200);
    assert_true(jnum(j, "usage.completion_tokens") >= 1);
    cJSON_Delete(j);
}

/* ---- endpoints ------------------------------------------------------------------------------ */

static void endpoints(void **state) {
    (void)state;
    int port = main_srv.port, st;
    HttpResponse r;
    assert_int_equal(http_request(port, "GET", "/health", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"ok\""));
    http_response_free(&r);

    assert_int_equal(http_request(port, "GET", "/v1/models", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    cJSON *j = cJSON_Parse(r.body);
    assert_string_equal(jstr(j, "object"), "list");
    assert_string_equal(jstr(j, "data.0.id"), "kjv");
    assert_string_equal(jstr(j, "data.0.object"), "model");
    cJSON_Delete(j);
    http_response_free(&r);

    /* tokenize / detokenize round trip (llama-server's shapes) */
    j = post(port, "/tokenize", &st, "{\"content\": \"In the beginning God created\", \"add_special\": true}");
    assert_int_equal(st, 200);
    cJSON *toks = cJSON_GetObjectItem(j, "tokens");
    assert_true(cJSON_GetArraySize(toks) > 3);
    assert_int_equal(cJSON_GetArrayItem(toks, 0)->valueint, 0); /* BOS */
    char *ids = cJSON_PrintUnformatted(toks);
    cJSON_Delete(j);
    j = post(port, "/detokenize", &st, "{\"tokens\": %s}", ids);
    assert_int_equal(st, 200);
    assert_non_null(strstr(jstr(j, "content"), "In the beginning God created"));
    cJSON_Delete(j);
    j = post(port, "/tokenize", &st, "{\"content\": \"God created\", \"with_pieces\": true}");
    assert_int_equal(st, 200);
    assert_non_null(jstr(j, "tokens.0.piece"));
    assert_true(jnum(j, "tokens.0.id") >= 0);
    cJSON_Delete(j);

    /* completions: the prompt as text and as the same token ids give the same text */
    j = post(port, "/v1/completions", &st, "{\"prompt\": \"In the beginning God created\", \"max_tokens\": 12, \"temperature\": 0}");
    assert_int_equal(st, 200);
    assert_string_equal(jstr(j, "object"), "text_completion");
    assert_non_null(strstr(jstr(j, "id"), "cmpl-"));
    assert_string_equal(jstr(j, "choices.0.finish_reason"), "length");
    assert_true(jnum(j, "usage.completion_tokens") == 12);
    assert_true(jnum(j, "usage.total_tokens") == jnum(j, "usage.prompt_tokens") + 12);
    char *a = answer_text(j);
    cJSON_Delete(j);
    j = post(port, "/v1/completions", &st, "{\"prompt\": %s, \"max_tokens\": 12, \"temperature\": 0}", ids);
    assert_int_equal(st, 200);
    char *b = answer_text(j);
    assert_string_equal(a, b);
    printf("    completion: \"In the beginning God created%s\"\n", a);
    free(a), free(b), free(ids);
    cJSON_Delete(j);

    /* chat */
    j = post(port, "/v1/chat/completions", &st,
             "{\"model\": \"kjv\", \"messages\": [{\"role\": \"system\", \"content\": \"Speak as the prophets.\"},"
             " {\"role\": \"user\", \"content\": \"Who made the heaven?\"}], \"max_completion_tokens\": 10, \"seed\": 3, \"user\": \"x\"}");
    assert_int_equal(st, 200);
    assert_string_equal(jstr(j, "object"), "chat.completion");
    assert_string_equal(jstr(j, "choices.0.message.role"), "assistant");
    assert_non_null(jstr(j, "choices.0.message.content"));
    assert_null(jstr(j, "choices.0.message.reasoning_content")); /* deepseek-v3 does not reason: the reply as it is */
    assert_true(jnum(j, "usage.prompt_tokens_details.cached_tokens") >= 0);
    assert_true(jnum(j, "created") > 1.6e9);
    cJSON_Delete(j);

    /* the chat page: one self-contained file */
    assert_int_equal(http_request(port, "GET", "/", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "<title>dsv3 chat</title>"));
    assert_null(strstr(r.body, "<script src"));
    assert_null(strstr(r.body, "https://"));
    http_response_free(&r);

    /* metrics */
    assert_int_equal(http_request(port, "GET", "/metrics", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    const char *names[] = { "dsv3_requests_total{", "dsv3_prompt_tokens_total ", "dsv3_generated_tokens_total ",
                            "dsv3_generated_tokens_per_second ", "dsv3_time_to_first_token_seconds_bucket{le=",
                            "dsv3_inter_token_latency_seconds_bucket{le=", "dsv3_queue_depth ", "dsv3_slots_busy ",
                            "dsv3_kv_cache_tokens_used ", "dsv3_kv_cache_tokens_total 16384", "dsv3_mtp_draft_tokens_total ",
                            "dsv3_mtp_accepted_tokens_total ", "dsv3_prompt_tokens_cached_total ", "dsv3_responses_total{code=\"200\"}" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!strstr(r.body, names[i])) fprintf(stderr, "missing metric %s\n", names[i]);
        assert_non_null(strstr(r.body, names[i]));
    }
    http_response_free(&r);
}

/* ---- streaming ------------------------------------------------------------------------------ */

static void sse_framing_and_equality(void **state) {
    (void)state;
    int port = main_srv.port, st;
    const char *msgs = "[{\"role\": \"user\", \"content\": \"And the earth was without form\"}]";
    char body[2048];
    snprintf(body, sizeof body, "{\"messages\": %s, \"max_tokens\": 40, \"temperature\": 0, \"stream\": true,"
                                " \"stream_options\": {\"include_usage\": true}}", msgs);
    Stream s;
    stream_post(port, "/v1/chat/completions", body, &s);
    assert_int_equal(s.status, 200);
    assert_true(s.done);
    assert_true(s.first_role);
    assert_true(s.same_id);
    assert_true(s.utf8_ok);
    assert_non_null(strstr(s.id, "chatcmpl-"));
    assert_true(s.finish[0]);
    assert_non_null(s.usage);
    assert_true(jnum(s.usage, "completion_tokens") >= 1);
    assert_int_equal(s.n_reasoning, 0);
    cJSON *j = post(port, "/v1/chat/completions", &st, "{\"messages\": %s, \"max_tokens\": 40, \"temperature\": 0}", msgs);
    assert_int_equal(st, 200);
    assert_string_equal(jstr(j, "choices.0.message.content"), s.text);
    assert_string_equal(jstr(j, "choices.0.finish_reason"), s.finish);
    assert_true(jnum(j, "usage.completion_tokens") == jnum(s.usage, "completion_tokens"));
    cJSON_Delete(j);
    stream_free(&s);

    /* completions stream: no usage chunk unless asked */
    stream_post(port, "/v1/completions", "{\"prompt\": \"And God said\", \"max_tokens\": 20, \"temperature\": 0, \"stream\": true}", &s);
    assert_int_equal(s.status, 200);
    assert_true(s.done);
    assert_null(s.usage);
    assert_string_equal(s.finish, "length");
    j = post(port, "/v1/completions", &st, "{\"prompt\": \"And God said\", \"max_tokens\": 20, \"temperature\": 0}");
    assert_string_equal(jstr(j, "choices.0.text"), s.text);
    cJSON_Delete(j);
    stream_free(&s);
}

/** Greedy server text == `dsv3 generate --temp 0` of the same prompt. */
static void greedy_matches_generate(void **state) {
    (void)state;
    const char *prompts[] = { "In the beginning", "And Jesus answered and said unto them", "Blessed are" };
    for (int i = 0; i < 3; i++) {
        int st;
        cJSON *j = post(main_srv.port, "/v1/completions", &st, "{\"prompt\": \"%s\", \"max_tokens\": 30, \"temperature\": 0}", prompts[i]);
        assert_int_equal(st, 200);
        RunResult g = run_shell(NULL, "%s generate -m %s -p '%s' -n 30 --temp 0", dsv3_bin(), MODEL, prompts[i]);
        assert_int_equal(g.status, 0);
        char *t = answer_text(j);
        size_t n = strlen(t);
        assert_true(g.out_len == n + 1 && g.out[n] == '\n');
        assert_memory_equal(g.out, t, n);
        free(t);
        run_result_free(&g);
        cJSON_Delete(j);
    }
}

/* ---- concurrency and determinism ------------------------------------------------------------- */

typedef struct {
    int port;
    char body[1024];
    char *text;
    int status;
} Job;

static void *run_job(void *arg) {
    Job *jb = arg;
    HttpResponse r;
    if (http_post_json(jb->port, "/v1/completions", jb->body, &r) == 0) {
        jb->status = r.status;
        cJSON *j = cJSON_Parse(r.body);
        jb->text = j ? answer_text(j) : NULL;
        cJSON_Delete(j);
        http_response_free(&r);
    }
    return NULL;
}

/** 16 requests with mixed prompt lengths, seeds and sampling: concurrently, each gives its solo text. */
static void concurrent_equals_solo_on(int port) {
    enum { N = 16 };
    static const char *words = "And it came to pass in those days that there went out a decree from Caesar Augustus "
                               "that all the world should be taxed and all went to be taxed every one into his own city";
    Job solo[N], conc[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        int len = 8 + (i * 23) % (int)(strlen(words) - 8);
        snprintf(solo[i].body, sizeof solo[i].body,
                 "{\"prompt\": \"%.*s\", \"max_tokens\": %d, \"temperature\": %s, \"seed\": %d, \"top_k\": %d}", len, words,
                 6 + i % 5, i % 4 == 0 ? "0" : "1.0", 1000 + i, i % 3 == 0 ? 0 : 40);
        solo[i].port = port, solo[i].text = NULL;
        conc[i] = solo[i];
    }
    for (int i = 0; i < N; i++) run_job(&solo[i]);
    for (int i = 0; i < N; i++) pthread_create(&th[i], NULL, run_job, &conc[i]);
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++) {
        assert_int_equal(solo[i].status, 200);
        assert_int_equal(conc[i].status, 200);
        assert_non_null(solo[i].text);
        assert_non_null(conc[i].text);
        if (strcmp(solo[i].text, conc[i].text)) fprintf(stderr, "request %d: solo '%s' vs concurrent '%s'\n", i, solo[i].text, conc[i].text);
        assert_string_equal(solo[i].text, conc[i].text);
        free(solo[i].text), free(conc[i].text);
    }
}

static void concurrent_equals_solo(void **state) {
    (void)state;
    concurrent_equals_solo_on(main_srv.port);
    assert_true(metric(main_srv.port, "dsv3_slots_busy") == 0);
    /* 16 slots: every request decodes in the same steps as the 15 others */
    TestServer wide;
    assert_int_equal(test_server_start(&wide, "-m " MODEL " -np 16 -b 64 --metrics", 1), 0);
    concurrent_equals_solo_on(wide.port);
    assert_int_equal(test_server_stop(&wide, SIGTERM, 10), 0);
}

/** --spec mtp: the same texts as plain decoding (greedy and seeded sampling, text for text), and drafts were accepted. */
static void speculation_changes_nothing(void **state) {
    (void)state;
    TestServer spec;
    assert_int_equal(test_server_start(&spec, "-m " MODEL " -np 4 -b 16 --metrics --spec mtp --draft 2", 1), 0);
    concurrent_equals_solo_on(spec.port);
    int st;
    const char *req = "{\"prompt\": \"And God said, Let there be light\", \"max_tokens\": 40, \"temperature\": 0}";
    cJSON *a = post(spec.port, "/v1/completions", &st, "%s", req);
    cJSON *b = post(main_srv.port, "/v1/completions", &st, "%s", req);
    assert_string_equal(jstr(a, "choices.0.text"), jstr(b, "choices.0.text"));
    cJSON_Delete(a), cJSON_Delete(b);
    /* sampled with a seed: the very text plain decoding draws, not only its law */
    for (int seed = 1; seed <= 6; seed++) {
        char body[256];
        snprintf(body, sizeof body, "{\"prompt\": \"And God said\", \"max_tokens\": 40, \"temperature\": %s, \"seed\": %d%s}",
                 seed % 2 ? "0.7" : "1.0", seed, seed % 3 ? ", \"top_p\": 0.9" : "");
        a = post(spec.port, "/v1/completions", &st, "%s", body);
        b = post(main_srv.port, "/v1/completions", &st, "%s", body);
        assert_string_equal(jstr(a, "choices.0.text"), jstr(b, "choices.0.text"));
        cJSON_Delete(a), cJSON_Delete(b);
    }
    double drafted = metric(spec.port, "dsv3_mtp_draft_tokens_total"), accepted = metric(spec.port, "dsv3_mtp_accepted_tokens_total");
    printf("    MTP: %.0f of %.0f drafts accepted\n", accepted, drafted);
    assert_true(drafted > 0 && accepted > 0);
    assert_int_equal(test_server_stop(&spec, SIGTERM, 10), 0);
}

/** A chat resending its history prefills only the new turn. */
static void prefix_reuse(void **state) {
    (void)state;
    TestServer one;
    assert_int_equal(test_server_start(&one, "-m " MODEL " -np 2 --metrics", 1), 0);
    int st;
    const char *u1 = "And God said, Let there be light: and there was light.";
    cJSON *j = post(one.port, "/v1/chat/completions", &st,
                    "{\"messages\": [{\"role\": \"user\", \"content\": \"%s\"}], \"max_tokens\": 16, \"temperature\": 0}", u1);
    assert_int_equal(st, 200);
    double p1 = jnum(j, "usage.prompt_tokens"), c1 = jnum(j, "usage.completion_tokens");
    char *reply = answer_text(j);
    cJSON_Delete(j);
    cJSON *rs = cJSON_CreateString(reply);
    char *reply_json = cJSON_PrintUnformatted(rs);
    cJSON_Delete(rs);
    const char *u2 = "And God saw the light, that it was good.";
    j = post(one.port, "/v1/chat/completions", &st,
             "{\"messages\": [{\"role\": \"user\", \"content\": \"%s\"}, {\"role\": \"assistant\", \"content\": %s},"
             " {\"role\": \"user\", \"content\": \"%s\"}], \"max_tokens\": 8, \"temperature\": 0}", u1, reply_json, u2);
    assert_int_equal(st, 200);
    double p2 = jnum(j, "usage.prompt_tokens"), cached = jnum(j, "usage.prompt_tokens_details.cached_tokens");
    cJSON_Delete(j);
    /* The new turn's own tokens: EOS + <｜User｜> + u2 + <｜Assistant｜>, as the tokenizer counts them. */
    j = post(one.port, "/tokenize", &st, "{\"content\": \"<｜end▁of▁sentence｜><｜User｜>%s<｜Assistant｜>\"}", u2);
    double turn = cJSON_GetArraySize(cJSON_GetObjectItem(j, "tokens"));
    cJSON_Delete(j);
    printf("    turn 1: %.0f prompt + %.0f generated; turn 2: %.0f prompt tokens, %.0f cached, %.0f prefilled (the turn is %.0f)\n",
           p1, c1, p2, cached, p2 - cached, turn);
    /* Everything but the reply's last token (sampled, never run) comes from the cache. */
    assert_true(p2 == p1 + c1 + turn);
    assert_true(cached == p1 + c1 - 1);
    assert_true(metric(one.port, "dsv3_prompt_tokens_cached_total") >= cached);
    free(reply), free(reply_json);
    assert_int_equal(test_server_stop(&one, SIGTERM, 10), 0);
}

/* ---- stop strings, logprobs, biases ----------------------------------------------------------- */

static void stop_strings(void **state) {
    (void)state;
    int port = main_srv.port, st;
    const char *prompt = "And God called the light Day, and the darkness he called";
    cJSON *j = post(port, "/v1/completions", &st, "{\"prompt\": \"%s\", \"max_tokens\": 24, \"temperature\": 0, \"logprobs\": 0}", prompt);
    assert_int_equal(st, 200);
    const cJSON *pieces = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "logprobs"), "tokens");
    int n = cJSON_GetArraySize(pieces);
    assert_true(n == 24);
    char *full = answer_text(j);
    /* A stop string made of the end of one token and the start of the next (both ≥ 2 bytes). */
    char stop[64] = "";
    size_t at = 0, off = 0;
    for (int i = 4; i + 1 < n && !stop[0]; i++) {
        const char *a = cJSON_GetArrayItem(pieces, i)->valuestring, *b = cJSON_GetArrayItem(pieces, i + 1)->valuestring;
        size_t la = strlen(a), lb = strlen(b);
        off = 0;
        for (int k = 0; k <= i; k++) off += strlen(cJSON_GetArrayItem(pieces, k)->valuestring);
        if (la >= 2 && lb >= 2 && !strchr(a, '"') && !strchr(b, '"') && !strchr(a, '\\') && !strchr(b, '\\')) {
            snprintf(stop, sizeof stop, "%s%.2s", a + la - 2, b);
            at = off - 2;
        }
    }
    assert_true(stop[0]);
    char *hit = strstr(full, stop);
    assert_non_null(hit);
    at = (size_t)(hit - full); /* the first occurrence is where it must stop */
    cJSON_Delete(j);
    printf("    stop string \"%s\" spans two tokens; the text stops at byte %zu\n", stop, at);
    for (int stream = 0; stream < 2; stream++) {
        char body[1024];
        snprintf(body, sizeof body, "{\"prompt\": \"%s\", \"max_tokens\": 24, \"temperature\": 0, \"stop\": [\"zzzq\", \"%s\"]%s}",
                 prompt, stop, stream ? ", \"stream\": true" : "");
        const char *text;
        Stream s;
        cJSON *k = NULL;
        if (stream) {
            stream_post(port, "/v1/completions", body, &s);
            assert_true(s.done);
            assert_string_equal(s.finish, "stop");
            text = s.text;
        } else {
            HttpResponse r;
            assert_int_equal(http_post_json(port, "/v1/completions", body, &r), 0);
            k = cJSON_Parse(r.body);
            http_response_free(&r);
            assert_string_equal(jstr(k, "choices.0.finish_reason"), "stop");
            text = jstr(k, "choices.0.text");
        }
        assert_int_equal(strlen(text), at);
        assert_memory_equal(text, full, at);
        if (stream) stream_free(&s);
        cJSON_Delete(k);
    }
    /* a string stop */
    j = post(port, "/v1/completions", &st, "{\"prompt\": \"%s\", \"max_tokens\": 24, \"temperature\": 0, \"stop\": \"%s\"}", prompt, stop);
    assert_int_equal((int)strlen(jstr(j, "choices.0.text")), (int)at);
    cJSON_Delete(j);
    free(full);
}

static void logprobs_and_biases(void **state) {
    (void)state;
    int port = main_srv.port, st;
    cJSON *j = post(port, "/v1/chat/completions", &st,
                    "{\"messages\": [{\"role\": \"user\", \"content\": \"Say the word\"}], \"max_tokens\": 6, \"temperature\": 0,"
                    " \"logprobs\": true, \"top_logprobs\": 3}");
    assert_int_equal(st, 200);
    const cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "logprobs"), "content");
    assert_int_equal(cJSON_GetArraySize(content), 6);
    const cJSON *e;
    cJSON_ArrayForEach(e, content) {
        double lp = cJSON_GetObjectItem(e, "logprob")->valuedouble;
        const cJSON *top = cJSON_GetObjectItem(e, "top_logprobs");
        assert_int_equal(cJSON_GetArraySize(top), 3);
        double t0 = cJSON_GetObjectItem(cJSON_GetArrayItem(top, 0), "logprob")->valuedouble;
        double t2 = cJSON_GetObjectItem(cJSON_GetArrayItem(top, 2), "logprob")->valuedouble;
        assert_true(lp <= 0 && t0 >= t2 && fabs(lp - t0) < 1e-5); /* greedy: the chosen token is the top one */
        assert_string_equal(cJSON_GetObjectItem(e, "token")->valuestring, cJSON_GetObjectItem(cJSON_GetArrayItem(top, 0), "token")->valuestring);
        assert_true(cJSON_IsArray(cJSON_GetObjectItem(e, "bytes")));
    }
    cJSON_Delete(j);
    /* logit_bias -100 on the greedy first token moves greedy decoding elsewhere; +100 forces a token. */
    j = post(port, "/v1/completions", &st, "{\"prompt\": \"And God said\", \"max_tokens\": 1, \"temperature\": 0}");
    char *first = answer_text(j);
    cJSON_Delete(j);
    j = post(port, "/tokenize", &st, "{\"content\": \"%s\"}", first);
    int id = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "tokens"), 0)->valueint;
    cJSON_Delete(j);
    j = post(port, "/v1/completions", &st, "{\"prompt\": \"And God said\", \"max_tokens\": 1, \"temperature\": 0, \"logit_bias\": {\"%d\": -100}}", id);
    assert_int_equal(st, 200);
    assert_string_not_equal(jstr(j, "choices.0.text"), first);
    cJSON_Delete(j);
    j = post(port, "/v1/completions", &st,
             "{\"prompt\": \"And God said\", \"max_tokens\": 4, \"temperature\": 0.9, \"seed\": 1, \"logit_bias\": {\"%d\": 100}}", id);
    char *forced = answer_text(j);
    cJSON_Delete(j);
    assert_true(strlen(forced) == 4 * strlen(first) && !strncmp(forced, first, strlen(first)));
    free(forced);
    /* a strong frequency penalty changes a repetitive greedy text; min_p 1 leaves greedy's text alone */
    j = post(port, "/v1/completions", &st, "{\"prompt\": \"And God said\", \"max_tokens\": 30, \"temperature\": 0}");
    char *plain = answer_text(j);
    cJSON_Delete(j);
    j = post(port, "/v1/completions", &st, "{\"prompt\": \"And God said\", \"max_tokens\": 30, \"temperature\": 0, \"frequency_penalty\": 2, \"presence_penalty\": 1.5, \"repeat_penalty\": 1.3}");
    assert_int_equal(st, 200);
    assert_string_not_equal(jstr(j, "choices.0.text"), plain);
    cJSON_Delete(j);
    j = post(port, "/v1/completions", &st, "{\"prompt\": \"And God said\", \"max_tokens\": 30, \"temperature\": 1, \"seed\": 5, \"min_p\": 1}");
    assert_string_equal(jstr(j, "choices.0.text"), plain);
    cJSON_Delete(j);
    /* completions logprobs shape */
    j = post(port, "/v1/completions", &st, "{\"prompt\": \"And God said\", \"max_tokens\": 3, \"logprobs\": 2, \"seed\": 9}");
    const cJSON *lp = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "logprobs");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "tokens")), 3);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "token_logprobs")), 3);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(lp, "text_offset")), 3);
    assert_true(cJSON_GetArraySize(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "top_logprobs"), 0)) >= 1);
    cJSON_Delete(j);
    free(first), free(plain);
}

/* ---- cancellation, limits, errors --------------------------------------------------------------- */

/** Opens a stream and reads until @p bytes have arrived; returns the socket. */
static int open_stream(int port, const char *body, size_t bytes) {
    int fd = http_connect(port);
    char head[512];
    int n = snprintf(head, sizeof head, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                        "Content-Length: %zu\r\n\r\n", strlen(body));
    assert_int_equal(http_send_all(fd, head, (size_t)n), 0);
    assert_int_equal(http_send_all(fd, body, strlen(body)), 0);
    size_t got = 0;
    char buf[4096];
    double end = test_now() + 30;
    while (got < bytes && test_now() < end) {
        ssize_t k = recv(fd, buf, sizeof buf, 0);
        if (k <= 0) break;
        got += (size_t)k;
    }
    assert_true(got >= bytes);
    return fd;
}

static void cancellation_frees_slot(void **state) {
    (void)state;
    TestServer one;
    assert_int_equal(test_server_start(&one, "-m " MODEL " -np 1 --metrics", 1), 0);
    int fd = open_stream(one.port, "{\"prompt\": \"And\", \"max_tokens\": 3000, \"stream\": true, \"seed\": 1}", 2000);
    assert_true(metric(one.port, "dsv3_slots_busy") == 1);
    double steps0 = metric(one.port, "dsv3_steps_total");
    close(fd);
    double t0 = test_now(), busy = 1, steps1 = 0;
    while (test_now() - t0 < 5 && busy != 0) {
        steps1 = metric(one.port, "dsv3_steps_total");
        busy = metric(one.port, "dsv3_slots_busy");
    }
    printf("    slot freed %.0f ms and %.0f step(s) after the client closed\n", (test_now() - t0) * 1e3, steps1 - steps0);
    assert_true(busy == 0);
    assert_true(steps1 - steps0 <= 3); /* the step in flight, the one that noticed, and one of metrics' timing */
    assert_true(metric(one.port, "dsv3_requests_cancelled_total") == 1);
    assert_serves(one.port);
    assert_int_equal(test_server_stop(&one, SIGTERM, 10), 0);
}

static void limits_and_auth(void **state) {
    (void)state;
    TestServer s;
    assert_int_equal(test_server_start(&s, "-m " MODEL " -np 1 --max-queue 0 --max-body 2048 --api-key k1,secret2", 1), 0);
    const char *auth = "Authorization: Bearer secret2\r\nContent-Type: application/json\r\n";
    HttpResponse r;
    /* 401: missing, wrong, other scheme; /health and / stay public */
    assert_int_equal(http_post_json(s.port, "/v1/completions", "{\"prompt\": \"a\"}", &r), 0);
    assert_int_equal(r.status, 401);
    assert_non_null(strstr(r.body, "\"authentication_error\""));
    http_response_free(&r);
    assert_int_equal(http_request(s.port, "GET", "/v1/models", "Authorization: Bearer secret\r\n", NULL, &r), 0);
    assert_int_equal(r.status, 401);
    http_response_free(&r);
    assert_int_equal(http_request(s.port, "GET", "/v1/models", "Authorization: Basic secret2\r\n", NULL, &r), 0);
    assert_int_equal(r.status, 401);
    http_response_free(&r);
    assert_int_equal(http_request(s.port, "GET", "/v1/models", "Authorization: Bearer k1\r\n", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    http_response_free(&r);
    assert_int_equal(http_request(s.port, "GET", "/health", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    http_response_free(&r);
    /* 404, 405 */
    assert_int_equal(http_request(s.port, "GET", "/v2/nothing", auth, NULL, &r), 0);
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(r.body, "\"error\""));
    http_response_free(&r);
    assert_int_equal(http_request(s.port, "GET", "/v1/chat/completions", auth, NULL, &r), 0);
    assert_int_equal(r.status, 405);
    http_response_free(&r);
    /* 413: by Content-Length, and by a chunked body that grows past the limit */
    char *big = malloc(5000);
    memset(big, ' ', 4999);
    big[0] = '{', big[4998] = '}', big[4999] = 0;
    assert_int_equal(http_request(s.port, "POST", "/v1/completions", auth, big, &r), 0);
    assert_int_equal(r.status, 413);
    http_response_free(&r);
    int fd = http_connect(s.port);
    char head[512];
    int n = snprintf(head, sizeof head, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n", auth);
    http_send_all(fd, head, (size_t)n);
    for (int i = 0; i < 4; i++) {
        char chunk[1100];
        n = snprintf(chunk, sizeof chunk, "3e8\r\n%.1000s\r\n", big + 1);
        http_send_all(fd, chunk, (size_t)n);
    }
    http_send_all(fd, "0\r\n\r\n", 5);
    assert_int_equal(http_read_response(fd, 30, &r), 0);
    assert_int_equal(r.status, 413);
    http_response_free(&r);
    close(fd);
    free(big);
    /* 429 with Retry-After: one slot busy, no queue */
    int hold = http_connect(s.port);
    const char *body = "{\"prompt\": \"And\", \"max_tokens\": 3000, \"stream\": true}";
    n = snprintf(head, sizeof head, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n%sContent-Length: %zu\r\n\r\n", auth, strlen(body));
    http_send_all(hold, head, (size_t)n);
    http_send_all(hold, body, strlen(body));
    char buf[256];
    assert_true(recv(hold, buf, sizeof buf, 0) > 0); /* streaming: the slot is taken */
    assert_int_equal(http_request(s.port, "POST", "/v1/completions", auth, "{\"prompt\": \"a\", \"max_tokens\": 2}", &r), 0);
    assert_int_equal(r.status, 429);
    char ra[32];
    assert_int_equal(http_header(&r, "Retry-After", ra, sizeof ra), 0);
    assert_non_null(strstr(r.body, "\"queue_full\""));
    http_response_free(&r);
    close(hold);
    /* the slot comes back */
    double t0 = test_now();
    int status = 0;
    while (test_now() - t0 < 5 && status != 200) {
        assert_int_equal(http_request(s.port, "POST", "/v1/completions", auth, "{\"prompt\": \"a\", \"max_tokens\": 2}", &r), 0);
        status = r.status;
        http_response_free(&r);
    }
    assert_int_equal(status, 200);
    assert_int_equal(test_server_stop(&s, SIGTERM, 10), 0);
}

/** Malformed requests: each a 400 with the OpenAI error body naming the field. */
static const struct {
    const char *path, *body, *param;
} bad[] = {
    { "/v1/chat/completions", "", NULL },
    { "/v1/chat/completions", "{", NULL },
    { "/v1/chat/completions", "[1, 2]", NULL },
    { "/v1/chat/completions", "\"text\"", NULL },
    { "/v1/chat/completions", "{}", "messages" },
    { "/v1/chat/completions", "{\"messages\": \"hi\"}", "messages" },
    { "/v1/chat/completions", "{\"messages\": []}", "messages" },
    { "/v1/chat/completions", "{\"messages\": [5]}", "messages" },
    { "/v1/chat/completions", "{\"messages\": [{\"content\": \"x\"}]}", "messages" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}]}", "messages" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}", "messages" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "messages" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\"}]}", "messages" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}", "messages" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}", "messages" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": \"hot\"}", "temperature" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": 3}", "temperature" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": -0.5}", "temperature" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_p\": 1.5}", "top_p" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_p\": true}", "top_p" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_k\": -1}", "top_k" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_k\": 2.5}", "top_k" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"min_p\": 2}", "min_p" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 0}", "max_tokens" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": \"10\"}", "max_tokens" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": -3}", "max_tokens" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_completion_tokens\": 1.5}", "max_completion_tokens" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"n\": 2}", "n" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stream\": \"yes\"}", "stream" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stream_options\": 1}", "stream_options" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stream_options\": {\"include_usage\": 1}}", "include_usage" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop\": 5}", "stop" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop\": [1]}", "stop" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop\": [\"\"]}", "stop" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop\": [\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\",\"l\",\"m\",\"n\",\"o\",\"p\",\"q\"]}", "stop" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logit_bias\": [1]}", "logit_bias" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logit_bias\": {\"abc\": 1}}", "logit_bias" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logit_bias\": {\"5\": 200}}", "logit_bias" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logit_bias\": {\"5\": \"up\"}}", "logit_bias" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logit_bias\": {\"999999\": 1}}", NULL },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"seed\": \"x\"}", "seed" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"seed\": 1.5}", "seed" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"presence_penalty\": 3}", "presence_penalty" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"frequency_penalty\": -2.5}", "frequency_penalty" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"repeat_penalty\": 0}", "repeat_penalty" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logprobs\": \"true\"}", "logprobs" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logprobs\": true, \"top_logprobs\": 30}", "top_logprobs" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_logprobs\": 2}", "top_logprobs" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"user\": 5}", "user" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"model\": 5}", "model" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{\"type\": \"function\"}]}", "tools" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": {\"type\": \"json_object\"}}", "response_format" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 100000}", "messages" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"chat_template_kwargs\": [true]}", "chat_template_kwargs" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"chat_template_kwargs\": \"thinking\"}", "chat_template_kwargs" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"chat_template_kwargs\": {\"thinking\": \"yes\"}}", "chat_template_kwargs.thinking" },
    { "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"chat_template_kwargs\": {\"thinking\": 1}}", "chat_template_kwargs.thinking" },
    { "/v1/completions", "{}", "prompt" },
    { "/v1/completions", "{\"prompt\": 5}", "prompt" },
    { "/v1/completions", "{\"prompt\": []}", "prompt" },
    { "/v1/completions", "{\"prompt\": [-1]}", "prompt" },
    { "/v1/completions", "{\"prompt\": [1.5]}", "prompt" },
    { "/v1/completions", "{\"prompt\": [\"a\", \"b\"]}", "prompt" },
    { "/v1/completions", "{\"prompt\": [99999]}", "prompt" },
    { "/v1/completions", "{\"prompt\": \"a\", \"logprobs\": 6}", "logprobs" },
    { "/v1/completions", "{\"prompt\": \"a\", \"logprobs\": true}", "logprobs" },
    { "/v1/completions", "{\"prompt\": \"a\", \"echo\": true}", "echo" },
    { "/v1/completions", "{\"prompt\": \"a\", \"best_of\": 3}", "best_of" },
    { "/v1/completions", "{\"prompt\": \"a\", \"max_tokens\": 5000}", "prompt" },
    { "/v1/completions", "{\"prompt\": \"a\", \"temperature\": 1e999}", "temperature" },
    { "/tokenize", "{}", "content" },
    { "/tokenize", "{\"content\": \"a\", \"add_special\": 1}", "add_special" },
    { "/detokenize", "{\"tokens\": \"x\"}", "tokens" },
    { "/detokenize", "{\"tokens\": [-1]}", "tokens" },
    { "/detokenize", "{\"tokens\": [99999]}", "tokens" },
};

static void malformed_requests(void **state) {
    (void)state;
    size_t n = sizeof bad / sizeof bad[0];
    assert_true(n >= 40);
    for (size_t i = 0; i < n; i++) {
        HttpResponse r;
        assert_int_equal(http_post_json(main_srv.port, bad[i].path, bad[i].body, &r), 0);
        cJSON *j = cJSON_Parse(r.body);
        const char *type = jstr(j, "error.type"), *msg = jstr(j, "error.message");
        const cJSON *param = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "error"), "param");
        int ok = r.status == 400 && type && !strcmp(type, "invalid_request_error") && msg && *msg &&
                 cJSON_HasObjectItem(cJSON_GetObjectItem(j, "error"), "code") &&
                 (bad[i].param ? cJSON_IsString(param) && !strcmp(param->valuestring, bad[i].param) : cJSON_IsNull(param) || cJSON_IsString(param));
        if (!ok) fprintf(stderr, "request %zu (%s %s): %d %s\n", i, bad[i].path, bad[i].body, r.status, r.body);
        assert_true(ok);
        cJSON_Delete(j);
        http_response_free(&r);
    }
    printf("    %zu malformed requests: each a 400 naming its field\n", n);
    int st;
    cJSON *j = post(main_srv.port, "/v1/completions", &st, "{\"prompt\": \"a\", \"max_tokens\": 5000}");
    assert_string_equal(jstr(j, "error.code"), "context_length_exceeded");
    cJSON_Delete(j);
    /* unknown fields are ignored */
    j = post(main_srv.port, "/v1/completions", &st, "{\"prompt\": \"a\", \"max_tokens\": 2, \"unknown_field\": {\"x\": [1]}}");
    assert_int_equal(st, 200);
    cJSON_Delete(j);
    assert_serves(main_srv.port);
}

/* ---- shutdown and soak ------------------------------------------------------------------------- */

static void graceful_shutdown(void **state) {
    (void)state;
    TestServer s;
    assert_int_equal(test_server_start(&s, "-m " MODEL " -np 2", 1), 0);
    int fd = open_stream(s.port, "{\"prompt\": \"And\", \"max_tokens\": 60, \"stream\": true, \"seed\": 2}", 400);
    double t0 = test_now();
    kill(s.pid, SIGTERM);
    HttpResponse rest;
    char buf[65536];
    size_t got = 0;
    for (;;) {
        ssize_t k = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (k <= 0) break;
        got += (size_t)k;
    }
    buf[got] = 0;
    close(fd);
    (void)rest;
    assert_non_null(strstr(buf, "\"finish_reason\":\"length\""));
    assert_non_null(strstr(buf, "data: [DONE]"));
    int st = -1;
    while (test_now() - t0 < 5 && st < 0) {
        if (waitpid(s.pid, &st, WNOHANG) != s.pid) st = -1, usleep(10000);
    }
    printf("    in-flight stream finished, exit %d after %.2f s\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1, test_now() - t0);
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    s.pid = 0;
    assert_true(http_connect(s.port) < 0);
}

/** --routing-stats FILE: written at shutdown, every forwarded token's K choices in each MoE layer. */
static void routing_stats_at_shutdown(void **state) {
    (void)state;
    char path[] = "/tmp/dsv3-serve-stats-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    char args[256];
    snprintf(args, sizeof args, "-m " MODEL " -np 2 --routing-stats %s", path);
    TestServer s;
    assert_int_equal(test_server_start(&s, args, 1), 0);
    int st;
    cJSON *r = post(s.port, "/v1/completions", &st, "{\"prompt\": \"In the beginning\", \"max_tokens\": 32, \"temperature\": 0}");
    assert_int_equal(st, 200);
    int64_t generated = (int64_t)jnum(r, "usage.completion_tokens");
    cJSON_Delete(r);
    assert_int_equal(access(path, F_OK), -1); /* not before shutdown */
    int status = test_server_stop(&s, SIGTERM, 10);
    assert_true(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    RoutingStats rs;
    Err err;
    assert_int_equal(routing_stats_read(&rs, path, &err), 0);
    assert_int_equal(rs.n_layers, 3); /* models/kjv: layers 1..3 are MoE */
    for (int j = 0; j < rs.n_layers; j++) {
        int64_t sum = 0;
        for (int e = 0; e < rs.n_experts; e++) sum += rs.load[(size_t)j * rs.n_experts + e];
        assert_true(rs.tokens[j] >= generated);
        assert_int_equal(sum, rs.tokens[j] * 4); /* models/kjv routes each token to K = 4 experts */
    }
    printf("    %lld tokens counted in each of %d MoE layers\n", (long long)rs.tokens[0], rs.n_layers);
    routing_stats_free(&rs);
    unlink(path);
    /* the GPU path does not run the reference's MoE layers: refused before serving */
    RunResult g = run_shell(NULL, "%s serve -m " MODEL " --backend fast --routing-stats %s", dsv3_bin(), path);
    assert_int_not_equal(g.status, 0);
    run_result_free(&g);
}

typedef struct {
    int port, thread, n, errors;
} SoakJob;

static void *soak_worker(void *arg) {
    SoakJob *sj = arg;
    for (int i = 0; i < sj->n; i++) {
        int k = sj->thread + 4 * i;
        HttpResponse r;
        char body[512];
        if (k % 10 == 3) { /* malformed */
            size_t b = (size_t)k % (sizeof bad / sizeof bad[0]);
            if (http_post_json(sj->port, bad[b].path, bad[b].body, &r) || r.status != 400) sj->errors++;
            http_response_free(&r);
        } else if (k % 20 == 7) { /* cancelled mid-stream */
            int fd = http_connect(sj->port);
            snprintf(body, sizeof body, "{\"prompt\": \"And it came to pass\", \"max_tokens\": 200, \"stream\": true, \"seed\": %d}", k);
            char head[256];
            int n = snprintf(head, sizeof head, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", strlen(body));
            http_send_all(fd, head, (size_t)n), http_send_all(fd, body, strlen(body));
            char buf[512];
            if (recv(fd, buf, sizeof buf, 0) <= 0) sj->errors++;
            close(fd);
        } else {
            if (k % 2) snprintf(body, sizeof body, "{\"prompt\": \"And %d\", \"max_tokens\": 2, \"seed\": %d}", k, k);
            else snprintf(body, sizeof body, "{\"messages\": [{\"role\": \"user\", \"content\": \"Verse %d\"}], \"max_tokens\": 2, \"stream\": %s}", k, k % 4 ? "true" : "false");
            if (http_post_json(sj->port, k % 2 ? "/v1/completions" : "/v1/chat/completions", body, &r) || r.status != 200) sj->errors++;
            http_response_free(&r);
        }
    }
    return NULL;
}

static void soak_phase(int port, int n) {
    SoakJob jobs[4];
    pthread_t th[4];
    for (int t = 0; t < 4; t++) jobs[t] = (SoakJob){ port, t, n / 4, 0 }, pthread_create(&th[t], NULL, soak_worker, &jobs[t]);
    int errors = 0;
    for (int t = 0; t < 4; t++) pthread_join(th[t], NULL), errors += jobs[t].errors;
    assert_int_equal(errors, 0);
}

#if defined(__SANITIZE_ADDRESS__)
#define ASAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN_BUILD 1
#endif
#endif

static void soak(void **state) {
    (void)state;
    TestServer s;
#ifdef ASAN_BUILD
    /* ASan keeps freed memory in quarantine (256 MB by default), which RSS then counts: without it
     * the RSS bound is the server's own again. make test-asan's other tests keep the quarantine. */
    char *saved = getenv("ASAN_OPTIONS") ? strdup(getenv("ASAN_OPTIONS")) : NULL;
    setenv("ASAN_OPTIONS", "quarantine_size_mb=0:thread_local_quarantine_size_kb=0", 1);
#endif
    assert_int_equal(test_server_start(&s, "-m " MODEL " -np 4 --metrics", 1), 0);
#ifdef ASAN_BUILD
    if (saved) setenv("ASAN_OPTIONS", saved, 1), free(saved);
    else unsetenv("ASAN_OPTIONS");
#endif
    double t0 = test_now();
    soak_phase(s.port, 100);
    long rss100 = test_server_rss_kib(&s);
    soak_phase(s.port, (int)soak_n - 100);
    /* every connection thread gone: the last cancellations have been noticed */
    double end = test_now() + 5;
    while (test_now() < end && metric(s.port, "dsv3_slots_busy") != 0) usleep(10000);
    long rss = test_server_rss_kib(&s);
    printf("    %ld requests in %.1f s: RSS %ld KiB after 100, %ld KiB after %ld (%+.1f%%)\n", soak_n, test_now() - t0, rss100, rss,
           soak_n, 100.0 * (double)(rss - rss100) / (double)rss100);
    assert_true(rss100 > 0 && rss > 0);
    assert_true((double)rss <= 1.10 * (double)rss100);
    assert_true(metric(s.port, "dsv3_requests_cancelled_total") > 0);
    assert_serves(s.port);
    assert_int_equal(test_server_stop(&s, SIGTERM, 10), 0);
}

/** --ep 2: the routed experts in a second process (TCP); the same texts, and both processes exit 0. */
static void expert_parallel(void **state) {
    (void)state;
    TestServer ep;
    assert_int_equal(test_server_start(&ep, "-m " MODEL " --ep 2 -np 2 -b 16", 1), 0);
    concurrent_equals_solo_on(ep.port);
    int st;
    const char *req = "{\"prompt\": \"And the evening and the morning\", \"max_tokens\": 24, \"temperature\": 0.9, \"seed\": 4}";
    cJSON *a = post(ep.port, "/v1/completions", &st, "%s", req), *b = post(main_srv.port, "/v1/completions", &st, "%s", req);
    assert_string_equal(jstr(a, "choices.0.text"), jstr(b, "choices.0.text"));
    cJSON_Delete(a), cJSON_Delete(b);
    int status = test_server_stop(&ep, SIGTERM, 10);
    assert_true(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0); /* rank 0 waits for rank 1's clean exit */
}

/**
 * --backend fast over the host emulation of the kernels (build/tests/dsv3_mock, built where nvcc
 * is): the GPU batch (-np 3, one gpu_engine_forward_seqs per step) gives each request its solo
 * text and greedy `generate --backend fast`'s; one GPU sequence with --spec mtp the same greedy text.
 */
static void gpu_backend_mock(void **state) {
    (void)state;
    char mock[4096];
    snprintf(mock, sizeof mock, "%s", dsv3_bin());
    char *slash = strrchr(mock, '/');
    snprintf(slash ? slash + 1 : mock, sizeof mock - (size_t)(slash ? slash + 1 - mock : 0), "tests/dsv3_mock");
    if (access(mock, X_OK) != 0) {
        printf("    no %s (a build without nvcc): the GPU path is tested by make test-gpu-mock builds only\n", mock);
        return;
    }
    char *saved = strdup(dsv3_bin());
    setenv("DSV3_BIN", mock, 1);
    TestServer g;
    assert_int_equal(test_server_start(&g, "-m " MODEL " --backend fast -np 3 -b 16", 1), 0);
    concurrent_equals_solo_on(g.port);
    int st;
    cJSON *j = post(g.port, "/v1/completions", &st, "{\"prompt\": \"And God said\", \"max_tokens\": 24, \"temperature\": 0}");
    RunResult r = run_shell(NULL, "%s generate -m %s --backend fast -p 'And God said' -n 24 --temp 0", mock, MODEL);
    assert_int_equal(r.status, 0);
    char *t = answer_text(j);
    assert_true(strlen(t) + 1 == r.out_len);
    assert_memory_equal(t, r.out, strlen(t));
    cJSON_Delete(j);
    assert_int_equal(test_server_stop(&g, SIGTERM, 10), 0);
    assert_int_equal(test_server_start(&g, "-m " MODEL " --backend fast -np 1 --spec mtp", 1), 0);
    j = post(g.port, "/v1/completions", &st, "{\"prompt\": \"And God said\", \"max_tokens\": 24, \"temperature\": 0}");
    assert_string_equal(jstr(j, "choices.0.text"), t);
    cJSON_Delete(j);
    assert_int_equal(test_server_stop(&g, SIGTERM, 10), 0);
    printf("    --backend fast (host emulation): -np 3 batch and -np 1 --spec mtp agree with generate --backend fast\n");
    free(t);
    run_result_free(&r);
    setenv("DSV3_BIN", saved, 1);
    free(saved);
}

/* ---- the DeepSeek-V3 family: chat templates, thinking, reasoning_content ------------------------------------- */

static char *fam; /* a random tiny checkpoint whose tokenizer knows every template's markers (family_setup) */

/** Appends the added token @p content with id @p id to tokenizer.json's added_tokens. */
static void add_token(cJSON *added, int id, const char *content, int special) {
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "id", id);
    cJSON_AddStringToObject(t, "content", content);
    cJSON_AddBoolToObject(t, "single_word", 0);
    cJSON_AddBoolToObject(t, "lstrip", 0);
    cJSON_AddBoolToObject(t, "rstrip", 0);
    cJSON_AddBoolToObject(t, "normalized", 0);
    cJSON_AddBoolToObject(t, "special", special);
    cJSON_AddItemToArray(added, t);
}

/** Writes @p j to fam/@p name; 0 or -1. */
static int write_json_in_fam(const char *name, const cJSON *j) {
    char *text = cJSON_Print(j);
    int rc = text && tok_write_in(fam, name, text) == 0 ? 0 : -1;
    free(text);
    return rc;
}

/**
 * `mkckpt --preset tiny` (random weights, 4103 ids) with models/kjv's tokenizer plus what the other
 * templates need as added tokens — <think> 4096, </think> 4097, Kimi's <|im_system|>, <|im_user|>,
 * <|im_assistant|>, <|im_middle|>, <|im_end|> 4098..4102 — and R1's Jinja template
 * (golden/chat/deepseek-r1.jinja) in tokenizer_config.json, for the server to recognize.
 */
static int family_setup(void **state) {
    (void)state;
    if (!(fam = make_temp_dir("serve-family"))) return -1;
    RunResult r = run_shell(NULL, "%s mkckpt -o %s --preset tiny --set vocab_size=4103 --seed 5", dsv3_bin(), fam);
    int rc = r.status == 0 ? 0 : -1;
    if (rc) fprintf(stderr, "%s", r.err);
    run_result_free(&r);
    cJSON *tok = tok_json_file(MODEL "/tokenizer.json"), *cfg = tok_json_file(MODEL "/tokenizer_config.json");
    char *jinja = NULL;
    size_t len;
    Err err = { "" };
    if (rc || !tok || !cfg || read_file("golden/chat/deepseek-r1.jinja", 1 << 20, &jinja, &len, &err)) rc = -1;
    else {
        static const char *const marks[] = { "<think>", "</think>", "<|im_system|>", "<|im_user|>", "<|im_assistant|>",
                                             "<|im_middle|>", "<|im_end|>" };
        for (int i = 0; i < 7; i++) add_token(cJSON_GetObjectItem(tok, "added_tokens"), 4096 + i, marks[i], i >= 2);
        cJSON_DeleteItemFromObject(cfg, "chat_template");
        cJSON_AddStringToObject(cfg, "chat_template", jinja);
        rc = write_json_in_fam("tokenizer.json", tok) || write_json_in_fam("tokenizer_config.json", cfg) ? -1 : 0;
    }
    free(jinja);
    cJSON_Delete(tok), cJSON_Delete(cfg);
    return rc;
}

static int family_teardown(void **state) {
    (void)state;
    if (fam) remove_tree(fam);
    free(fam);
    fam = NULL;
    return 0;
}

/** The one message of these tests. */
#define FAM_MESSAGES "[{\"role\": \"user\", \"content\": \"Who?\"}]"

/** The ids of FAM_MESSAGES under template @p kind (thinking @p think), rendered here, as a JSON array (malloc'd). */
static char *fam_prompt_ids(ChatTemplateKind kind, int think) {
    Tokenizer *t = NULL;
    Err err = { "" };
    assert_int_equal(tokenizer_load(&t, fam, &err), 0);
    ChatTemplate tpl = { kind, think };
    ChatMessage m = { "user", "Who?" };
    int *ids = NULL, n = 0;
    assert_int_equal(chat_template_encode(&tpl, t, &m, 1, 1, &ids, &n, &err), 0);
    cJSON *a = cJSON_CreateIntArray(ids, n);
    char *text = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    free(ids);
    tokenizer_free(t);
    return text;
}

/** The id of @p word, which must be one token. */
static int word_id(int port, const char *word) {
    int st;
    cJSON *j = post(port, "/tokenize", &st, "{\"content\": \"%s\"}", word);
    const cJSON *ids = cJSON_GetObjectItem(j, "tokens");
    assert_int_equal(cJSON_GetArraySize(ids), 1);
    int id = cJSON_GetArrayItem(ids, 0)->valueint;
    cJSON_Delete(j);
    return id;
}

/**
 * Request fields that make the random model write, greedily, a reasoning and then an answer:
 * logit_bias lifts three words (+20), </think> (+18) and two more words (+17) far above every other
 * token, and once a token is written the penalties (presence 2 + frequency 2) put it below those not
 * written yet. So the six tokens come out once each, the first three (reasoning) before </think> and
 * the other two (answer) after it, in an order within each group that the model's own logits decide.
 * @p think_first: <think> (+22) first, as Kimi K2-Thinking opens its reply.
 */
static void script(int port, int think_first, char *out, size_t cap) {
    snprintf(out, cap,
             "\"logit_bias\": {\"%d\": 20, \"%d\": 20, \"%d\": 20, \"4097\": 18, \"%d\": 17, \"%d\": 17%s},"
             " \"presence_penalty\": 2, \"frequency_penalty\": 2, \"repeat_penalty\": 10, \"temperature\": 0, \"max_tokens\": %d",
             word_id(port, " Jordan"), word_id(port, " Moses"), word_id(port, " Aaron"), word_id(port, " Judah"),
             word_id(port, " Zion"), think_first ? ", \"4096\": 22" : "", think_first ? 7 : 6);
}

/** Splits a raw reply here: the reasoning from the start (@p opened) or from a leading <think> to the first </think>. */
static void split_raw(const char *raw, int opened, char *reasoning, char *answer, size_t cap) {
    const char *r = raw;
    while (!opened && (*r == ' ' || *r == '\n')) r++;
    if (!opened && strncmp(r, "<think>", 7)) { /* no reasoning */
        snprintf(reasoning, cap, "%s", "");
        snprintf(answer, cap, "%s", raw);
        return;
    }
    if (!opened) r += 7;
    const char *end = strstr(r, "</think>");
    snprintf(reasoning, cap, "%.*s", end ? (int)(end - r) : (int)strlen(r), r);
    snprintf(answer, cap, "%s", end ? end + 8 : "");
}

/**
 * The chat reply to FAM_MESSAGES with @p fields (plus @p chat_fields), non-streaming and streaming,
 * against the completion of the same prompt ids @p ids with the same @p fields: reasoning_content and
 * content are the raw text split (split_raw), finish_reason and usage are the completion's, and
 * reasoning deltas come before content deltas. With @p both, the raw text must have both parts.
 * Returns the raw text's length.
 */
static size_t check_split_reply(int port, const char *ids, const char *fields, const char *chat_fields, int opened, int both) {
    int st;
    cJSON *c = post(port, "/v1/completions", &st, "{\"prompt\": %s, %s}", ids, fields);
    assert_int_equal(st, 200);
    const char *raw = jstr(c, "choices.0.text");
    char want_r[4096], want_a[4096];
    split_raw(raw, opened, want_r, want_a, sizeof want_r);
    printf("    raw \"%s\" -> reasoning \"%s\", content \"%s\" (%s)\n", raw, want_r, want_a, jstr(c, "choices.0.finish_reason"));
    if (both) assert_true(want_r[0] && want_a[0]);
    cJSON *j = post(port, "/v1/chat/completions", &st, "{\"messages\": " FAM_MESSAGES ", %s%s}", fields, chat_fields);
    assert_int_equal(st, 200);
    assert_string_equal(jstr(j, "choices.0.message.reasoning_content"), want_r);
    assert_string_equal(jstr(j, "choices.0.message.content"), want_a);
    assert_string_equal(jstr(j, "choices.0.finish_reason"), jstr(c, "choices.0.finish_reason"));
    assert_true(jnum(j, "usage.completion_tokens") == jnum(c, "usage.completion_tokens"));
    assert_true(jnum(j, "usage.prompt_tokens") == jnum(c, "usage.prompt_tokens"));
    char body[4096];
    snprintf(body, sizeof body, "{\"messages\": " FAM_MESSAGES ", %s%s, \"stream\": true, \"stream_options\": {\"include_usage\": true}}",
             fields, chat_fields);
    Stream s;
    stream_post(port, "/v1/chat/completions", body, &s);
    assert_int_equal(s.status, 200);
    assert_true(s.done && s.first_role && s.same_id && s.utf8_ok);
    assert_string_equal(s.reasoning, want_r);
    assert_string_equal(s.text, want_a);
    assert_false(s.reasoning_after_content);
    assert_string_equal(s.finish, jstr(c, "choices.0.finish_reason"));
    assert_true(jnum(s.usage, "completion_tokens") == jnum(c, "usage.completion_tokens"));
    size_t n = strlen(raw);
    stream_free(&s);
    cJSON_Delete(j), cJSON_Delete(c);
    return n;
}

/** Starts a server on the family checkpoint with @p flags; its log must hold each of @p want (NULL-ended). */
static void fam_server(TestServer *srv, const char *flags, const char *const *want) {
    char args[4400], *log = NULL;
    snprintf(args, sizeof args, "-m %s -np 2 %s", fam, flags);
    assert_int_equal(test_server_start(srv, args, 1), 0);
    size_t len;
    Err err = { "" };
    assert_int_equal(read_file(srv->log, 1 << 20, &log, &len, &err), 0);
    for (; *want; want++) {
        if (!strstr(log, *want)) fprintf(stderr, "the server's log lacks '%s':\n%s", *want, log);
        assert_non_null(strstr(log, *want));
    }
    free(log);
}

/**
 * R1's template recognized from tokenizer_config.json: the reply opens inside <think>, so the part
 * before </think> is reasoning_content and the rest content, streamed or not; stop strings cut the
 * raw text (in the reasoning or in the answer), and usage counts every token.
 */
static void reasoning_r1(void **state) {
    (void)state;
    TestServer srv;
    char fields[1024], stopped[1400];
    fam_server(&srv, "", (const char *const[]){ "chat template deepseek-r1\n", NULL });
    HttpResponse r;
    assert_int_equal(http_request(srv.port, "GET", "/v1/models", NULL, NULL, &r), 0);
    cJSON *m = cJSON_Parse(r.body);
    assert_string_equal(jstr(m, "data.0.meta.chat_template"), "deepseek-r1");
    cJSON_Delete(m);
    http_response_free(&r);
    char *ids = fam_prompt_ids(CHAT_DEEPSEEK_R1, 0);
    script(srv.port, 0, fields, sizeof fields);
    check_split_reply(srv.port, ids, fields, "", 1, 1);
    /* chat_template_kwargs mean nothing to R1's template (nor do unknown keys) */
    check_split_reply(srv.port, ids, fields, ", \"chat_template_kwargs\": {\"thinking\": false, \"other\": [1]}", 1, 1);
    /* stop strings: one inside the answer, one inside the reasoning (each without its first word's space) */
    int st;
    cJSON *j = post(srv.port, "/v1/chat/completions", &st, "{\"messages\": " FAM_MESSAGES ", %s}", fields);
    char reasoning[256], answer[256];
    snprintf(reasoning, sizeof reasoning, "%s", jstr(j, "choices.0.message.reasoning_content"));
    snprintf(answer, sizeof answer, "%s", jstr(j, "choices.0.message.content"));
    cJSON_Delete(j);
    snprintf(stopped, sizeof stopped, "%s, \"stop\": [\"%s\"]", fields, answer + 1);
    check_split_reply(srv.port, ids, stopped, "", 1, 0);
    j = post(srv.port, "/v1/chat/completions", &st, "{\"messages\": " FAM_MESSAGES ", %s}", stopped);
    assert_string_equal(jstr(j, "choices.0.finish_reason"), "stop");
    assert_string_equal(jstr(j, "choices.0.message.reasoning_content"), reasoning);
    assert_string_equal(jstr(j, "choices.0.message.content"), " ");
    cJSON_Delete(j);
    snprintf(stopped, sizeof stopped, "%s, \"stop\": \"%s\"", fields, strchr(reasoning + 1, ' ') + 1);
    check_split_reply(srv.port, ids, stopped, "", 1, 0);
    j = post(srv.port, "/v1/chat/completions", &st, "{\"messages\": " FAM_MESSAGES ", %s}", stopped);
    assert_string_equal(jstr(j, "choices.0.finish_reason"), "stop");
    assert_memory_equal(jstr(j, "choices.0.message.reasoning_content"), reasoning, strchr(reasoning + 1, ' ') - reasoning + 1);
    assert_string_equal(jstr(j, "choices.0.message.content"), "");
    cJSON_Delete(j);
    free(ids);
    assert_int_equal(test_server_stop(&srv, SIGTERM, 10), 0);
}

/**
 * V3.1 with --think on: thinking unless a request says "chat_template_kwargs": {"thinking": false},
 * whose prompt ends in </think> instead of <think> and whose reply is the model's text unchanged
 * (no reasoning_content).
 */
static void thinking_v31(void **state) {
    (void)state;
    TestServer srv;
    char fields[1024];
    fam_server(&srv, "--chat-template deepseek-v3.1 --think on",
               (const char *const[]){ "chat template deepseek-v3.1 (thinking by default)\n", NULL });
    script(srv.port, 0, fields, sizeof fields);
    char *on = fam_prompt_ids(CHAT_DEEPSEEK_V31, 1), *off = fam_prompt_ids(CHAT_DEEPSEEK_V31, 0);
    check_split_reply(srv.port, on, fields, "", 1, 1);
    check_split_reply(srv.port, on, fields, ", \"chat_template_kwargs\": {\"thinking\": true}", 1, 1);
    check_split_reply(srv.port, on, fields, ", \"chat_template_kwargs\": {\"thinking\": null}", 1, 1);
    int st;
    cJSON *c = post(srv.port, "/v1/completions", &st, "{\"prompt\": %s, %s}", off, fields);
    cJSON *j = post(srv.port, "/v1/chat/completions", &st,
                    "{\"messages\": " FAM_MESSAGES ", %s, \"chat_template_kwargs\": {\"thinking\": false}}", fields);
    assert_int_equal(st, 200);
    assert_null(cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "message"),
                                    "reasoning_content"));
    assert_string_equal(jstr(j, "choices.0.message.content"), jstr(c, "choices.0.text"));
    assert_true(jnum(j, "usage.prompt_tokens") == jnum(c, "usage.prompt_tokens"));
    printf("    thinking false: no reasoning_content, content \"%s\" (the prompt's </think> is penalized)\n",
           jstr(j, "choices.0.message.content"));
    cJSON_Delete(j), cJSON_Delete(c);
    j = post(srv.port, "/v1/chat/completions", &st, "{\"messages\": " FAM_MESSAGES ", \"chat_template_kwargs\": {\"thinking\": 0}}");
    assert_int_equal(st, 400);
    assert_string_equal(jstr(j, "error.param"), "chat_template_kwargs.thinking");
    cJSON_Delete(j);
    free(on), free(off);
    assert_int_equal(test_server_stop(&srv, SIGTERM, 10), 0);
}

/**
 * Kimi K2-Thinking: the reply writes its own <think>; a chat reply ends at <|im_end|>, the template's
 * end of turn, which is not the tokenizer's EOS — a completion goes on past it.
 */
static void kimi_thinking_end_of_turn(void **state) {
    (void)state;
    TestServer srv;
    char fields[1024];
    fam_server(&srv, "--chat-template kimi-k2-thinking --think on",
               (const char *const[]){ "--think has no effect with the kimi-k2-thinking template", "chat template kimi-k2-thinking\n", NULL });
    char *ids = fam_prompt_ids(CHAT_KIMI_K2_THINKING, 0);
    script(srv.port, 1, fields, sizeof fields);
    check_split_reply(srv.port, ids, fields, "", 0, 1);
    int st;
    const char *eot = "\"logit_bias\": {\"4102\": 100}, \"max_tokens\": 4, \"temperature\": 0";
    cJSON *j = post(srv.port, "/v1/chat/completions", &st, "{\"messages\": " FAM_MESSAGES ", %s}", eot);
    assert_string_equal(jstr(j, "choices.0.finish_reason"), "stop");
    assert_string_equal(jstr(j, "choices.0.message.content"), "");
    assert_string_equal(jstr(j, "choices.0.message.reasoning_content"), "");
    assert_true(jnum(j, "usage.completion_tokens") == 0);
    cJSON_Delete(j);
    j = post(srv.port, "/v1/completions", &st, "{\"prompt\": %s, %s}", ids, eot);
    assert_string_equal(jstr(j, "choices.0.finish_reason"), "length");
    assert_string_equal(jstr(j, "choices.0.text"), "<|im_end|><|im_end|><|im_end|><|im_end|>");
    cJSON_Delete(j);
    free(ids);
    assert_int_equal(test_server_stop(&srv, SIGTERM, 10), 0);
}

/**
 * --chat-template: an unknown name is a one-line error (exit 2) before anything starts; a template
 * whose markers the tokenizer lacks, one line once the tokenizer is loaded (after the listening line).
 */
static void template_flag_errors(void **state) {
    (void)state;
    static const struct {
        const char *args, *want;
    } cases[] = {
        { "--chat-template chatml", "unknown chat template 'chatml' (known: deepseek-v3" },
        { "--chat-template kimi-k2", "no added token '<|im_system|>', which the kimi-k2 chat template needs" },
        { "--think maybe", "--think must be on or off" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        RunResult r = run_shell(NULL, "%s serve -m %s --port 0 %s", dsv3_bin(), MODEL, cases[i].args);
        if (!strstr(r.err, cases[i].want)) fprintf(stderr, "%s: %s", cases[i].args, r.err);
        assert_int_equal(r.status, 2);
        assert_non_null(strstr(r.err, cases[i].want));
        assert_int_equal(count_lines(r.err), i == 1 ? 2 : 1);
        run_result_free(&r);
    }
}

/** GET /health is 503 while the model loads (a server started on a large, slowly loading model). */
static void health_while_loading(void **state) {
    (void)state;
    /* A -c larger than the model allows fails after loading: the listening line comes first, and
     * until the failure /health says 503 or the connection is refused — never 200. */
    TestServer s;
    assert_int_equal(test_server_start(&s, "-m " MODEL " -c 99999999", 0), 0);
    HttpResponse r;
    if (http_request(s.port, "GET", "/health", NULL, NULL, &r) == 0) {
        assert_int_equal(r.status, 503);
        assert_non_null(strstr(r.body, "Loading model"));
        http_response_free(&r);
    }
    int st = test_server_stop(&s, 0, 10);
    assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--soak") && i + 1 < argc) soak_n = atol(argv[++i]);
    if (soak_n < 200) soak_n = 200;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(endpoints),
        cmocka_unit_test(sse_framing_and_equality),
        cmocka_unit_test(greedy_matches_generate),
        cmocka_unit_test(concurrent_equals_solo),
        cmocka_unit_test(speculation_changes_nothing),
        cmocka_unit_test(prefix_reuse),
        cmocka_unit_test(stop_strings),
        cmocka_unit_test(logprobs_and_biases),
        cmocka_unit_test(cancellation_frees_slot),
        cmocka_unit_test(limits_and_auth),
        cmocka_unit_test(malformed_requests),
        cmocka_unit_test(graceful_shutdown),
        cmocka_unit_test(routing_stats_at_shutdown),
        cmocka_unit_test(health_while_loading),
        cmocka_unit_test(expert_parallel),
        cmocka_unit_test(gpu_backend_mock),
        cmocka_unit_test_setup_teardown(reasoning_r1, family_setup, family_teardown),
        cmocka_unit_test_setup_teardown(thinking_v31, family_setup, family_teardown),
        cmocka_unit_test_setup_teardown(kimi_thinking_end_of_turn, family_setup, family_teardown),
        cmocka_unit_test(template_flag_errors),
        cmocka_unit_test(soak),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
