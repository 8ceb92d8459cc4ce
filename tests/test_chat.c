/**
 * @file test_chat.c
 * @brief The chat templates (docs/model.md §9.2, §13.6): every template against the Jinja rendering of
 *        the real one (golden/chat/expectations.json, npm @huggingface/jinja), recognition of the real
 *        template texts, DeepSeek-V3's ids of multi-turn chats with and without system messages, the
 *        incremental user-turn form for each template, the reasoning splitter, and errors.
 *
 * Expected ids are built piece by piece from the expected rendered string: BOS, the encoded
 * system text, then per turn the role token id (looked up by content) and the encoded content.
 * That is valid because every marker is an added token, which the tokenizer cuts out before
 * any pre-tokenization (Hugging Face apply_chat_template encodes the whole rendered string the
 * same way).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"
#include "util_compare.h"
#include "util_tok.h"

static int setup(void **state) {
    Tokenizer *t;
    Err err = {{0}};
    if (tokenizer_load(&t, DS_TOKENIZER_DIR, &err) != 0) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    *state = t;
    return 0;
}

static int teardown(void **state) {
    tokenizer_free(*state);
    return 0;
}

static void push_text(const Tokenizer *t, IntVec *v, const char *s) {
    Err err = {{0}};
    assert_int_equal(tokenizer_encode_append(t, s, strlen(s), v, &err), 0);
}

static void push_id(const Tokenizer *t, IntVec *v, const char *marker) {
    int id = tokenizer_token_id(t, marker);
    assert_true(id >= 0);
    intvec_push(v, id);
}

static void check_chat(const Tokenizer *t, const ChatMessage *m, int n, int gen, const IntVec *want) {
    Err err = {{0}};
    int *ids, nids;
    assert_int_equal(chat_encode(t, m, n, gen, &ids, &nids, &err), 0);
    assert_true(tok_ids_equal("chat", ids, nids, want->v, (int)want->n));
    free(ids);
}

static void test_render(void **state) {
    (void)state;
    const ChatMessage m[] = {
        {"system", "You are helpful."},
        {"user", "Hi"},
        {"assistant", "Hello!"},
        {"system", "Be brief."}, /* hoisted to the front, joined with a blank line */
        {"user", "2+2?"},
    };
    ByteBuf b = {0};
    Err err = {{0}};
    assert_int_equal(chat_render(m, 5, 1, "<｜begin▁of▁sentence｜>", &b, &err), 0);
    assert_string_equal(b.data, "<｜begin▁of▁sentence｜>You are helpful.\n\nBe brief.<｜User｜>Hi<｜Assistant｜>Hello!"
                                "<｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜>");
    b.len = 0;
    assert_int_equal(chat_render(m + 1, 2, 0, NULL, &b, &err), 0);
    assert_string_equal(b.data, "<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜>");
    b.len = 0;
    /* an empty system message still counts as the first (no leading "\n\n" for the next) */
    const ChatMessage e[] = {{"system", ""}, {"system", "S"}, {"user", "u"}};
    assert_int_equal(chat_render(e, 3, 0, "B", &b, &err), 0);
    assert_string_equal(b.data, "B\n\nS<｜User｜>u");
    bytebuf_free(&b);
}

static void test_multi_turn_no_system(void **state) {
    const Tokenizer *t = *state;
    const ChatMessage m[] = {
        {"user", "What is 2+2?"},
        {"assistant", "4"},
        {"user", "And 3+3?"},
    };
    IntVec want = {0};
    intvec_push(&want, tokenizer_bos_id(t));
    push_id(t, &want, "<｜User｜>");
    push_text(t, &want, "What is 2+2?");
    push_id(t, &want, "<｜Assistant｜>");
    push_text(t, &want, "4");
    push_id(t, &want, "<｜end▁of▁sentence｜>");
    push_id(t, &want, "<｜User｜>");
    push_text(t, &want, "And 3+3?");
    push_id(t, &want, "<｜Assistant｜>");
    check_chat(t, m, 3, 1, &want);
    /* the first turn, checked against literal ids: BOS 0, User 128803, text, Assistant 128804 */
    const int first[] = {0, 128803, 3085, 344, 223, 20, 13, 20, 33, 128804};
    int *ids, n;
    Err err = {{0}};
    assert_int_equal(chat_encode(t, m, 1, 1, &ids, &n, &err), 0);
    assert_true(tok_ids_equal("first turn", ids, n, first, 10));
    free(ids);
    /* without the generation prompt the last user turn is the end */
    want.n--;
    check_chat(t, m, 3, 0, &want);
    intvec_free(&want);
}

static void test_multi_turn_with_system(void **state) {
    const Tokenizer *t = *state;
    const ChatMessage m[] = {
        {"system", "You are a concise assistant."},
        {"user", "Name a prime."},
        {"assistant", "7"},
        {"system", "Answer in French."},
        {"user", "Encore une ?"},
        {"assistant", "Onze."},
    };
    IntVec want = {0};
    intvec_push(&want, tokenizer_bos_id(t));
    push_text(t, &want, "You are a concise assistant.\n\nAnswer in French.");
    push_id(t, &want, "<｜User｜>");
    push_text(t, &want, "Name a prime.");
    push_id(t, &want, "<｜Assistant｜>");
    push_text(t, &want, "7");
    push_id(t, &want, "<｜end▁of▁sentence｜>");
    push_id(t, &want, "<｜User｜>");
    push_text(t, &want, "Encore une ?");
    push_id(t, &want, "<｜Assistant｜>");
    push_text(t, &want, "Onze.");
    push_id(t, &want, "<｜end▁of▁sentence｜>");
    check_chat(t, m, 6, 0, &want);
    push_id(t, &want, "<｜Assistant｜>");
    check_chat(t, m, 6, 1, &want);
    intvec_free(&want);
}

/* chat_encode(m + [a, u]) == chat_encode(m) ++ encode(a) ++ user_turn(u, close_reply=1) */
static void test_incremental(void **state) {
    const Tokenizer *t = *state;
    const ChatMessage m[] = {
        {"system", "Be kind."},
        {"user", "Hello there"},
        {"assistant", "General Kenobi! 你好 👋"},
        {"user", "  spaces and\nnewlines  "},
        {"assistant", "ok"},
        {"user", "last"},
    };
    Err err = {{0}};
    for (int k = 4; k <= 6; k += 2) { /* m[k-2] is the reply, m[k-1] the new user message */
        int *full, nfull, *prefix, nprefix;
        assert_int_equal(chat_encode(t, m, k, 1, &full, &nfull, &err), 0);
        assert_int_equal(chat_encode(t, m, k - 2, 1, &prefix, &nprefix, &err), 0);
        IntVec inc = {0};
        intvec_append(&inc, prefix, (size_t)nprefix);
        push_text(t, &inc, m[k - 2].content); /* the reply as the model generated it */
        assert_int_equal(chat_encode_user_turn(t, m[k - 1].content, 1, 1, &inc, &err), 0);
        assert_true(tok_ids_equal("incremental", inc.v, (int)inc.n, full, nfull));
        free(prefix);
        free(full);
        intvec_free(&inc);
    }
    /* without close_reply the turn starts right at <｜User｜> */
    IntVec turn = {0};
    assert_int_equal(chat_encode_user_turn(t, "x", 0, 0, &turn, &err), 0);
    const int want[] = {128803, 90};
    assert_true(tok_ids_equal("bare turn", turn.v, (int)turn.n, want, 2));
    intvec_free(&turn);
}

/* Contents are encoded like any text, so marker strings inside them become the markers, as
 * with Hugging Face (which renders, then encodes the whole string). */
static void test_marker_in_content(void **state) {
    const Tokenizer *t = *state;
    const ChatMessage m[] = {{"user", "say <｜Assistant｜> now"}};
    int *ids, n;
    Err err = {{0}};
    assert_int_equal(chat_encode(t, m, 1, 0, &ids, &n, &err), 0);
    int found = 0;
    for (int i = 0; i < n; i++) found += ids[i] == 128804;
    assert_int_equal(found, 1);
    free(ids);
}

static void test_errors(void **state) {
    const Tokenizer *t = *state;
    const ChatMessage m[] = {{"user", "hi"}, {"tool", "42"}};
    int *ids = NULL, n;
    Err err = {{0}};
    assert_int_equal(chat_encode(t, m, 2, 1, &ids, &n, &err), -1);
    assert_string_equal(err.msg, "messages[1]: unknown chat role 'tool' (expected system, user or assistant)");
    assert_null(ids);

    ChatLog log;
    static const struct {
        const char *json, *want;
    } bad[] = {
        {"{\"role\": \"user\", \"content\": \"hi\"}", "expected a JSON array"},
        {"[{\"role\": \"user\", \"content\": \"hi\"}", "invalid JSON"},
        {"[\"hi\"]", "messages[0]: expected an object"},
        {"[{\"role\": \"user\"}]", "messages[0]: \"content\" must be a string"},
        {"[{\"role\": 3, \"content\": \"x\"}]", "messages[0]: \"role\" must be a string"},
        {"[{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"robot\", \"content\": \"x\"}]",
         "messages[1]: unknown chat role 'robot'"},
        {"[{\"role\": \"assistant\", \"content\": null, \"tool_calls\": []}]", "tool calls are not supported"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(chat_parse_json(bad[i].json, strlen(bad[i].json), &log, &err), -1);
        if (!strstr(err.msg, bad[i].want)) fprintf(stderr, "'%s' vs '%s'\n", err.msg, bad[i].want);
        assert_non_null(strstr(err.msg, bad[i].want));
    }
    const char *ok = "[{\"role\": \"system\", \"content\": \"S\", \"name\": \"x\"}, {\"role\": \"user\", \"content\": \"U\"}]";
    assert_int_equal(chat_parse_json(ok, strlen(ok), &log, &err), 0);
    assert_int_equal(log.n, 2);
    assert_string_equal(log.msg[1].content, "U");
    chat_log_free(&log);
}

/* Without tokenizer_config.json there is no bos_token for the template. */
static void test_needs_bos(void **state) {
    (void)state;
    char *dir = make_temp_dir("tok");
    char link[4200], target[4200];
    assert_non_null(getcwd(target, sizeof target - 64));
    strcat(target, "/" DS_TOKENIZER_DIR "/tokenizer.json");
    snprintf(link, sizeof link, "%s/tokenizer.json", dir);
    assert_int_equal(symlink(target, link), 0);
    Tokenizer *t;
    Err err = {{0}};
    assert_int_equal(tokenizer_load(&t, dir, &err), 0);
    const ChatMessage m[] = {{"user", "hi"}};
    int *ids, n;
    assert_int_equal(chat_encode(t, m, 1, 1, &ids, &n, &err), -1);
    assert_non_null(strstr(err.msg, "bos_token"));
    tokenizer_free(t);
    remove_tree(dir);
    free(dir);
}

/* The template implemented by chat.c, checked against the one shipped with the tokenizer:
 * if a future tokenizer_config.json changes these pieces, this test says so. */
static void test_template_is_deepseek_v3(void **state) {
    const Tokenizer *t = *state;
    const char *tpl = tokenizer_chat_template(t);
    assert_non_null(tpl);
    static const char *const pieces[] = {
        "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}",
        "{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}",
        "{{bos_token}}{{ns.system_prompt}}",
        "{{'<｜User｜>' + message['content']}}",
        "{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}",
        "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}",
    };
    for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++) {
        if (!strstr(tpl, pieces[i])) fprintf(stderr, "template lacks: %s\n", pieces[i]);
        assert_non_null(strstr(tpl, pieces[i]));
    }
}

/** Every template renders what @huggingface/jinja rendered from the real template text. */
static void test_jinja_expectations(void **state) {
    (void)state;
    cJSON *root = tok_json_file("golden/chat/expectations.json");
    assert_non_null(root);
    int n = 0, per[CHAT_TEMPLATE_COUNT] = { 0 };
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        ChatTemplate tpl = { CHAT_DEEPSEEK_V3, cJSON_IsTrue(cJSON_GetObjectItem(c, "thinking")) };
        Err err = {{0}};
        assert_int_equal(chat_template_by_name(cJSON_GetObjectItem(c, "template")->valuestring, &tpl.kind, &err), 0);
        const cJSON *ms = cJSON_GetObjectItem(c, "messages"), *m;
        ChatMessage msgs[16];
        int k = 0;
        cJSON_ArrayForEach(m, ms) {
            msgs[k].role = cJSON_GetObjectItem(m, "role")->valuestring;
            msgs[k].content = cJSON_GetObjectItem(m, "content")->valuestring;
            k++;
        }
        ByteBuf b = {0};
        int gen = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
        assert_int_equal(chat_template_render(&tpl, msgs, k, gen, "<｜begin▁of▁sentence｜>", &b, &err), 0);
        const char *want = cJSON_GetObjectItem(c, "text")->valuestring;
        if (strcmp(b.data ? b.data : "", want))
            fprintf(stderr, "%s think=%d gen=%d:\n  got  %s\n  want %s\n", chat_template_name(tpl.kind), tpl.think, gen,
                    b.data ? b.data : "", want);
        assert_string_equal(b.data ? b.data : "", want);
        bytebuf_free(&b);
        per[tpl.kind]++;
        n++;
    }
    printf("    %d renderings equal to @huggingface/jinja's (", n);
    for (int k = 0; k < CHAT_TEMPLATE_COUNT; k++) printf("%s%s %d", k ? ", " : "", chat_template_name((ChatTemplateKind)k), per[k]);
    printf(")\n");
    for (int k = 0; k < CHAT_TEMPLATE_COUNT; k++) assert_true(per[k] >= 20);
    cJSON_Delete(root);
}

/** The real template texts are recognized as what they are; others are refused. */
static void test_detect(void **state) {
    const Tokenizer *t = *state;
    for (int k = 0; k < CHAT_TEMPLATE_COUNT; k++) {
        char path[256], *text;
        size_t len;
        Err err = {{0}};
        snprintf(path, sizeof path, "golden/chat/%s.jinja", chat_template_name((ChatTemplateKind)k));
        assert_int_equal(read_file(path, 1 << 20, &text, &len, &err), 0);
        ChatTemplateKind got;
        assert_int_equal(chat_template_detect(text, &got), 0);
        assert_string_equal(chat_template_name(got), chat_template_name((ChatTemplateKind)k));
        free(text);
    }
    ChatTemplate tpl;
    Err err = {{0}};
    assert_int_equal(chat_template_select(&tpl, t, NULL, 0, &err), 0);
    assert_int_equal(tpl.kind, CHAT_DEEPSEEK_V3); /* golden/tokenizer/deepseek-v3 */
    ChatTemplateKind k;
    const char *chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
    assert_int_equal(chat_template_detect(chatml, &k), -1);
    assert_int_equal(chat_template_by_name("chatml", &k, &err), -1);
    assert_non_null(strstr(err.msg, "kimi-k2-thinking"));
    assert_int_equal(chat_template_select(&tpl, t, "kimi-k2", 1, &err), 0);
    assert_int_equal(tpl.kind, CHAT_KIMI_K2);
    assert_string_equal(chat_template_end_of_turn(&tpl), "<|im_end|>");
}

/** encode(m + [a, u]) == encode(m) ++ encode(a) ++ user_turn(u, close) for every template where it holds. */
static void incremental_for(const ChatTemplate *tpl, const Tokenizer *t) {
    const ChatMessage m[] = { { "system", "Be kind." }, { "user", "Hi there" }, { "assistant", "Hello! 42." },
                              { "user", "Tell me more" } };
    Err err = {{0}};
    int *prefix, np, *full, nf;
    assert_int_equal(chat_template_encode(tpl, t, m, 2, 1, &prefix, &np, &err), 0);
    assert_int_equal(chat_template_encode(tpl, t, m, 4, 1, &full, &nf, &err), 0);
    IntVec inc = {0};
    assert_int_equal(intvec_append(&inc, prefix, (size_t)np), 0);
    push_text(t, &inc, m[2].content);
    assert_int_equal(chat_template_encode_user_turn(tpl, t, m[3].content, 1, 1, &inc, &err), 0);
    char what[64];
    snprintf(what, sizeof what, "incremental %s", chat_template_name(tpl->kind));
    assert_true(tok_ids_equal(what, inc.v, (int)inc.n, full, nf));
    free(prefix), free(full), free(inc.v);
}

static void test_incremental_family(void **state) {
    const Tokenizer *ds = *state;
    /* (R1 and V3.1 with thinking open the reply inside <think>, which their history drops: no identity) */
    ChatTemplate tpl[] = { { CHAT_DEEPSEEK_V3, 0 }, { CHAT_DEEPSEEK_V31, 0 } };
    for (size_t i = 0; i < 2; i++) incremental_for(&tpl[i], ds);
    /* Kimi's markers: the Kimi-class tiktoken fixture (cl100k_base ranks + Kimi K2's tokenizer_config) */
    char *dir = make_temp_dir("kimi-chat");
    assert_int_equal(tok_kimi_fixture(dir, NULL), 0);
    Err err = {{0}};
    Tokenizer *kimi;
    assert_int_equal(tokenizer_load(&kimi, dir, &err), 0);
    ChatTemplate k2 = { CHAT_KIMI_K2, 0 };
    incremental_for(&k2, kimi);
    /* no BOS in Kimi's template: the first id is <|im_system|> */
    const ChatMessage u[] = { { "user", "hi" } };
    int *ids, n;
    assert_int_equal(chat_template_encode(&k2, kimi, u, 1, 1, &ids, &n, &err), 0);
    assert_int_equal(ids[0], tokenizer_token_id(kimi, "<|im_system|>"));
    assert_int_equal(ids[n - 1], tokenizer_token_id(kimi, "<|im_middle|>"));
    free(ids);
    /* DeepSeek's markers are not Kimi's */
    ChatTemplate v3 = { CHAT_DEEPSEEK_V3, 0 };
    assert_int_equal(chat_template_encode(&v3, kimi, u, 1, 1, &ids, &n, &err), -1);
    assert_non_null(strstr(err.msg, "<｜User｜>"));
    tokenizer_free(kimi);
    remove_tree(dir);
    free(dir);
}

/** Feeds @p text cut at every position (and byte by byte) and checks the shown text each time. */
static void check_reasoning(ReasoningMode mode, int opened, const char *text, const char *want) {
    size_t n = strlen(text);
    for (size_t cut = 0; cut <= n + 1; cut++) {
        ChatReasoning r;
        chat_reasoning_init(&r, mode, opened);
        ByteBuf out = {0};
        if (cut <= n) {
            assert_int_equal(chat_reasoning_feed(&r, text, cut, &out), 0);
            assert_int_equal(chat_reasoning_feed(&r, text + cut, n - cut, &out), 0);
        } else
            for (size_t i = 0; i < n; i++) assert_int_equal(chat_reasoning_feed(&r, text + i, 1, &out), 0);
        assert_int_equal(chat_reasoning_flush(&r, &out), 0);
        if (strcmp(out.data ? out.data : "", want))
            fprintf(stderr, "mode %d opened %d cut %zu: '%s' -> '%s', want '%s'\n", mode, opened, cut, text,
                    out.data ? out.data : "", want);
        assert_string_equal(out.data ? out.data : "", want);
        bytebuf_free(&out);
        chat_reasoning_free(&r);
    }
}

/** check_reasoning for REASONING_SPLIT: the reasoning and the answer apart, cut at every position. */
static void check_split(int opened, const char *text, const char *want_reasoning, const char *want_answer) {
    size_t n = strlen(text);
    for (size_t cut = 0; cut <= n + 1; cut++) {
        ChatReasoning r;
        chat_reasoning_init(&r, REASONING_SPLIT, opened);
        ByteBuf think = {0}, answer = {0};
        if (cut <= n) {
            assert_int_equal(chat_reasoning_split(&r, text, cut, &think, &answer), 0);
            assert_int_equal(chat_reasoning_split(&r, text + cut, n - cut, &think, &answer), 0);
        } else
            for (size_t i = 0; i < n; i++) assert_int_equal(chat_reasoning_split(&r, text + i, 1, &think, &answer), 0);
        assert_int_equal(chat_reasoning_split_flush(&r, &think, &answer), 0);
        assert_string_equal(think.data ? think.data : "", want_reasoning);
        assert_string_equal(answer.data ? answer.data : "", want_answer);
        bytebuf_free(&think), bytebuf_free(&answer);
        chat_reasoning_free(&r);
    }
}

static void test_reasoning(void **state) {
    (void)state;
    const char *reply = "<think>\nLet me think.\n</think>\n\nThe answer is 4.";
    check_reasoning(REASONING_SHOW_TAGS, 0, reply, reply);
    check_reasoning(REASONING_HIDE, 0, reply, "\n\nThe answer is 4.");
    check_reasoning(REASONING_SHOW_DIM, 0, reply, "\033[2m\nLet me think.\n\033[0m\n\nThe answer is 4.");
    /* the prompt opened <think> (R1, V3.1 with --think on): the reply starts inside it */
    check_reasoning(REASONING_HIDE, 1, "hmm</think>4", "4");
    check_reasoning(REASONING_SHOW_TAGS, 1, "hmm</think>4", "hmm</think>4"); /* exactly what was generated */
    check_reasoning(REASONING_SHOW_DIM, 1, "hmm</think>4", "\033[2mhmm\033[0m4");
    /* <think> after the answer began is text; a lone '<' or "</thin" is text too */
    check_reasoning(REASONING_HIDE, 0, "4 <think>x</think>", "4 <think>x</think>");
    check_reasoning(REASONING_HIDE, 0, "a < b </thin", "a < b </thin");
    check_reasoning(REASONING_HIDE, 0, "  <think>x</think>y", "  y");
    /* a reasoning cut by the token limit: hidden, or dimmed then reset */
    check_reasoning(REASONING_HIDE, 1, "still thinking <", "");
    check_reasoning(REASONING_SHOW_DIM, 1, "still", "\033[2mstill\033[0m");
    /* split (a server's reasoning_content): the two parts apart, no tags; the same rules */
    check_split(0, reply, "\nLet me think.\n", "\n\nThe answer is 4.");
    check_split(1, "hmm</think>4", "hmm", "4");
    check_split(1, "still thinking <", "still thinking <", "");
    check_split(0, "4 <think>x</think>", "", "4 <think>x</think>");
    check_split(0, "  <think>x</think>y", "x", "  y");
    check_split(0, "no reasoning", "", "no reasoning");
    /* in the other modes chat_reasoning_split writes everything to the answer, as chat_reasoning_feed */
    ChatReasoning r;
    chat_reasoning_init(&r, REASONING_SHOW_TAGS, 1);
    ByteBuf think = {0}, answer = {0};
    assert_int_equal(chat_reasoning_split(&r, "a</think>b", 10, &think, &answer), 0);
    assert_int_equal(chat_reasoning_split_flush(&r, &think, &answer), 0);
    assert_int_equal(think.len, 0);
    assert_string_equal(answer.data, "a</think>b");
    bytebuf_free(&answer);
    chat_reasoning_free(&r);
    /* which templates reason */
    ChatTemplate t = { CHAT_DEEPSEEK_V3, 0 };
    assert_false(chat_template_reasons(&t));
    t.kind = CHAT_DEEPSEEK_R1;
    assert_true(chat_template_reasons(&t));
    t.kind = CHAT_DEEPSEEK_V31;
    assert_false(chat_template_reasons(&t));
    t.think = 1;
    assert_true(chat_template_reasons(&t));
    t.kind = CHAT_KIMI_K2;
    assert_false(chat_template_reasons(&t));
    t.kind = CHAT_KIMI_K2_THINKING;
    assert_true(chat_template_reasons(&t));
    assert_false(chat_template_opens_reasoning(&t)); /* K2-Thinking's reply writes its own <think> */
    assert_true(chat_text_opens_reasoning("<｜Assistant｜><think>\n", strlen("<｜Assistant｜><think>\n")));
    assert_false(chat_text_opens_reasoning("<think>a</think> b", 18));
    assert_false(chat_text_opens_reasoning("plain", 5));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_multi_turn_no_system),
        cmocka_unit_test(test_multi_turn_with_system),
        cmocka_unit_test(test_incremental),
        cmocka_unit_test(test_marker_in_content),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_needs_bos),
        cmocka_unit_test(test_template_is_deepseek_v3),
        cmocka_unit_test(test_jinja_expectations),
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_incremental_family),
        cmocka_unit_test(test_reasoning),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
