/**
 * @file api.c
 * @brief Parsing and validation of OpenAI request bodies; error bodies (see api.h).
 */
#include "api.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int api_error(ApiError *e, int status, const char *type, const char *param, const char *code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    e->status = status, e->type = type, e->param = param, e->code = code;
    return -1;
}

/** A 400 invalid_request_error about @p param. */
#define BAD(param, ...) api_error(e, 400, "invalid_request_error", param, NULL, __VA_ARGS__)

char *api_error_json(const ApiError *e) {
    cJSON *root = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(root, "error");
    if (o) {
        cJSON_AddStringToObject(o, "message", e->message);
        cJSON_AddStringToObject(o, "type", e->type ? e->type : "invalid_request_error");
        if (e->param) cJSON_AddStringToObject(o, "param", e->param);
        else cJSON_AddNullToObject(o, "param");
        if (e->code) cJSON_AddStringToObject(o, "code", e->code);
        else cJSON_AddNullToObject(o, "code");
    }
    char *s = o ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return s;
}

void api_request_free(ApiRequest *r) {
    cJSON_Delete(r->json);
    free(r->msgs);
    for (int i = 0; i < r->n_owned; i++) free(r->owned[i]);
    free(r->owned);
    free(r->ids);
    free(r->bias);
    memset(r, 0, sizeof *r);
}

/* ---- typed fields: absent or null leaves the default ----------------------------------- */

static const cJSON *field(const cJSON *o, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNull(v) ? NULL : v;
}

static int get_number(const cJSON *o, const char *name, double lo, double hi, double *out, ApiError *e) {
    const cJSON *v = field(o, name);
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return BAD(name, "'%s' must be a number", name);
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return BAD(name, "'%s' must be in [%g, %g], got %g", name, lo, hi, v->valuedouble);
    *out = v->valuedouble;
    return 0;
}

/** An integral number in [lo, hi] (both within ±2^53, where doubles hold every integer). */
static int int_value(const cJSON *v, const char *name, double lo, double hi, int64_t *out, ApiError *e) {
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble != floor(v->valuedouble))
        return BAD(name, "'%s' must be an integer", name);
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return BAD(name, "'%s' must be in [%.0f, %.0f], got %.17g", name, lo, hi, v->valuedouble);
    *out = (int64_t)v->valuedouble;
    return 0;
}

static int get_int(const cJSON *o, const char *name, double lo, double hi, int64_t *out, ApiError *e) {
    const cJSON *v = field(o, name);
    return v ? int_value(v, name, lo, hi, out, e) : 0;
}

static int get_bool(const cJSON *o, const char *name, int *out, ApiError *e) {
    const cJSON *v = field(o, name);
    if (!v) return 0;
    if (!cJSON_IsBool(v)) return BAD(name, "'%s' must be true or false", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

/** A string field, checked to be valid UTF-8; *out untouched when absent. */
static int get_string(const cJSON *o, const char *name, const char **out, ApiError *e) {
    const cJSON *v = field(o, name);
    if (!v) return 0;
    if (!cJSON_IsString(v)) return BAD(name, "'%s' must be a string", name);
    if (!utf8_valid(v->valuestring, strlen(v->valuestring))) return BAD(name, "'%s' is not valid UTF-8", name);
    *out = v->valuestring;
    return 0;
}

/* ---- messages ------------------------------------------------------------------------------ */

/** A message's content: a string, or an array of {"type":"text","text":...} parts (joined). */
static int message_content(ApiRequest *r, const cJSON *c, int i, const char **out, ApiError *e) {
    if (cJSON_IsString(c)) {
        if (!utf8_valid(c->valuestring, strlen(c->valuestring)))
            return BAD("messages", "messages[%d].content is not valid UTF-8", i);
        *out = c->valuestring;
        return 0;
    }
    if (!cJSON_IsArray(c)) return BAD("messages", "messages[%d].content must be a string or an array of text parts", i);
    ByteBuf b = { 0 };
    const cJSON *part;
    int j = 0;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type"), *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 || !cJSON_IsString(text)) {
            bytebuf_free(&b);
            return BAD("messages", "messages[%d].content[%d]: only {\"type\": \"text\", \"text\": string} parts are supported", i, j);
        }
        if (!utf8_valid(text->valuestring, strlen(text->valuestring)) || bytebuf_puts(&b, text->valuestring)) {
            bytebuf_free(&b);
            return BAD("messages", "messages[%d].content[%d].text is not valid UTF-8", i, j);
        }
        j++;
    }
    char **owned = realloc(r->owned, ((size_t)r->n_owned + 1) * sizeof *owned);
    if (!owned) {
        bytebuf_free(&b);
        return api_error(e, 500, "server_error", NULL, NULL, "out of memory");
    }
    r->owned = owned;
    if (!b.data && bytebuf_reserve(&b, 1)) return api_error(e, 500, "server_error", NULL, NULL, "out of memory");
    b.data[b.len] = 0;
    r->owned[r->n_owned++] = b.data;
    *out = b.data;
    return 0;
}

static int parse_messages(const cJSON *root, ApiRequest *r, ApiError *e) {
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!ms) return BAD("messages", "'messages' is required");
    if (!cJSON_IsArray(ms)) return BAD("messages", "'messages' must be an array");
    int n = cJSON_GetArraySize(ms);
    if (n == 0) return BAD("messages", "'messages' must not be empty");
    if (!(r->msgs = xcalloc((size_t)n, sizeof *r->msgs))) return api_error(e, 500, "server_error", NULL, NULL, "out of memory");
    const cJSON *m;
    int i = 0;
    cJSON_ArrayForEach(m, ms) {
        if (!cJSON_IsObject(m)) return BAD("messages", "messages[%d] must be an object", i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role"), *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsString(role)) return BAD("messages", "messages[%d].role must be a string", i);
        const char *rl = role->valuestring;
        if (!strcmp(rl, "developer")) rl = "system";
        if (strcmp(rl, "system") && strcmp(rl, "user") && strcmp(rl, "assistant"))
            return BAD("messages", "messages[%d].role '%.40s' is not supported (system, developer, user or assistant)", i, rl);
        const char *text = "";
        if (cJSON_IsNull(content) || !content) {
            if (strcmp(rl, "assistant")) return BAD("messages", "messages[%d].content is required", i);
        } else if (message_content(r, content, i, &text, e))
            return -1;
        r->msgs[i].role = rl;
        r->msgs[i].content = text;
        r->n_msgs = ++i;
    }
    return 0;
}

/**
 * chat_template_kwargs, as vLLM and SGLang take it: the variables of the Jinja template. The one
 * dsv3's templates read is deepseek-v3.1's `thinking`; other keys are ignored, as a template
 * ignores variables it does not use.
 */
static int parse_template_kwargs(const cJSON *root, ApiRequest *r, ApiError *e) {
    const cJSON *k = field(root, "chat_template_kwargs");
    if (!k) return 0;
    if (!cJSON_IsObject(k)) return BAD("chat_template_kwargs", "'chat_template_kwargs' must be an object");
    const cJSON *t = field(k, "thinking");
    if (!t) return 0;
    if (!cJSON_IsBool(t)) return BAD("chat_template_kwargs.thinking", "'chat_template_kwargs.thinking' must be true or false");
    r->thinking = cJSON_IsTrue(t);
    return 0;
}

/* ---- prompt, ids, stop, logit_bias ----------------------------------------------------------- */

/** An array of token ids into r->ids. */
static int parse_ids(const cJSON *a, const char *name, ApiRequest *r, ApiError *e) {
    int n = cJSON_GetArraySize(a);
    if (!(r->ids = xcalloc((size_t)n + 1, sizeof *r->ids))) return api_error(e, 500, "server_error", NULL, NULL, "out of memory");
    const cJSON *v;
    cJSON_ArrayForEach(v, a) {
        int64_t id = 0;
        if (int_value(v, name, 0, 2147483647.0, &id, e)) return BAD(name, "'%s' must hold token ids (integers ≥ 0)", name);
        r->ids[r->n_ids++] = (int)id;
    }
    return 0;
}

static int parse_prompt(const cJSON *root, ApiRequest *r, ApiError *e) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!p || cJSON_IsNull(p)) return BAD("prompt", "'prompt' is required");
    /* One prompt: "text", [ids], ["text"] or [[ids]]; several would be several choices (n > 1). */
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && (cJSON_IsString(p->child) || cJSON_IsArray(p->child)))
        p = p->child;
    if (cJSON_IsString(p)) {
        if (!utf8_valid(p->valuestring, strlen(p->valuestring))) return BAD("prompt", "'prompt' is not valid UTF-8");
        r->prompt = p->valuestring;
        return 0;
    }
    if (!cJSON_IsArray(p)) return BAD("prompt", "'prompt' must be a string or an array of token ids");
    if (cJSON_GetArraySize(p) == 0) return BAD("prompt", "'prompt' must not be empty");
    if (cJSON_IsString(p->child) || cJSON_IsArray(p->child))
        return BAD("prompt", "one prompt per request: several prompts would need n > 1, which is not supported");
    return parse_ids(p, "prompt", r, e);
}

static int parse_stop(const cJSON *root, ApiRequest *r, ApiError *e) {
    const cJSON *s = field(root, "stop");
    if (!s) return 0;
    if (cJSON_IsString(s)) {
        r->stop[0] = s->valuestring;
        r->n_stop = 1;
    } else if (cJSON_IsArray(s)) {
        if (cJSON_GetArraySize(s) > API_MAX_STOP) return BAD("stop", "'stop' holds at most %d strings", API_MAX_STOP);
        const cJSON *v;
        cJSON_ArrayForEach(v, s) {
            if (!cJSON_IsString(v)) return BAD("stop", "'stop' must be a string or an array of strings");
            r->stop[r->n_stop++] = v->valuestring;
        }
    } else
        return BAD("stop", "'stop' must be a string or an array of strings");
    for (int i = 0; i < r->n_stop; i++) {
        size_t l = strlen(r->stop[i]);
        if (l == 0 || l > API_MAX_STOP_LEN) return BAD("stop", "each stop string must be 1 to %d bytes", API_MAX_STOP_LEN);
        if (!utf8_valid(r->stop[i], l)) return BAD("stop", "stop strings must be valid UTF-8");
    }
    return 0;
}

static int parse_bias(const cJSON *root, ApiRequest *r, ApiError *e) {
    const cJSON *b = field(root, "logit_bias");
    if (!b) return 0;
    if (!cJSON_IsObject(b)) return BAD("logit_bias", "'logit_bias' must be an object mapping token ids to numbers");
    int n = cJSON_GetArraySize(b);
    if (n > API_MAX_BIAS) return BAD("logit_bias", "'logit_bias' holds at most %d entries", API_MAX_BIAS);
    if (n == 0) return 0;
    if (!(r->bias = xcalloc((size_t)n, sizeof *r->bias))) return api_error(e, 500, "server_error", NULL, NULL, "out of memory");
    const cJSON *v;
    cJSON_ArrayForEach(v, b) {
        long id;
        if (parse_long(v->string, 0, 2147483647L, &id)) return BAD("logit_bias", "logit_bias keys must be token ids, got '%.40s'", v->string);
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= -100.0 && v->valuedouble <= 100.0))
            return BAD("logit_bias", "logit_bias[\"%ld\"] must be a number in [-100, 100]", id);
        r->bias[r->logits.n_bias++] = (LogitBias){ (int)id, (float)v->valuedouble };
    }
    r->logits.bias = r->bias;
    return 0;
}

/* ---- the generation fields shared by both endpoints ------------------------------------------ */

static int parse_generation(const cJSON *root, ApiRequest *r, ApiError *e) {
    int64_t v = -1;
    if (get_string(root, "model", &r->model, e) || get_int(root, "max_tokens", 1, 1e9, &v, e)) return -1;
    r->max_tokens = v;
    if (get_int(root, "max_completion_tokens", 1, 1e9, &v, e)) return -1;
    if (v > 0) r->max_tokens = v;
    double x;
    if (get_number(root, "temperature", 0.0, 2.0, &r->temperature, e) || get_number(root, "top_p", 0.0, 1.0, &r->top_p, e))
        return -1;
    int64_t k = r->top_k;
    if (get_int(root, "top_k", 0, 1 << 30, &k, e)) return -1;
    r->top_k = (int)k;
    x = r->logits.min_p;
    if (get_number(root, "min_p", 0.0, 1.0, &x, e)) return -1;
    r->logits.min_p = (float)x;
    x = r->logits.presence_penalty;
    if (get_number(root, "presence_penalty", -2.0, 2.0, &x, e)) return -1;
    r->logits.presence_penalty = (float)x;
    x = r->logits.frequency_penalty;
    if (get_number(root, "frequency_penalty", -2.0, 2.0, &x, e)) return -1;
    r->logits.frequency_penalty = (float)x;
    x = r->logits.repeat_penalty;
    if (get_number(root, "repeat_penalty", 0.0, 10.0, &x, e)) return -1;
    if (x <= 0.0) return BAD("repeat_penalty", "'repeat_penalty' must be in (0, 10]");
    r->logits.repeat_penalty = (float)x;
    int64_t last_n = r->logits.penalty_last_n;
    if (get_int(root, "repeat_last_n", -1, 1 << 30, &last_n, e)) return -1;
    r->logits.penalty_last_n = (int)last_n;
    const cJSON *seed = field(root, "seed");
    if (seed) {
        if (int_value(seed, "seed", -9007199254740992.0, 9007199254740992.0, &r->seed, e)) return -1;
        r->have_seed = r->seed >= 0; /* llama.cpp: -1 = random */
    }
    int64_t n = 1;
    if (get_int(root, "n", -1e9, 1e9, &n, e)) return -1;
    if (n != 1) return BAD("n", "only n = 1 is supported, got %lld", (long long)n);
    int64_t best_of = 1;
    if (get_int(root, "best_of", -1e9, 1e9, &best_of, e)) return -1;
    if (best_of != 1) return BAD("best_of", "only best_of = 1 is supported");
    int echo = 0;
    if (get_bool(root, "echo", &echo, e)) return -1;
    if (echo) return BAD("echo", "echo is not supported");
    const cJSON *tools = field(root, "tools");
    if (tools && (!cJSON_IsArray(tools) || cJSON_GetArraySize(tools) > 0)) return BAD("tools", "tools are not supported");
    const cJSON *rf = field(root, "response_format");
    if (rf) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rf, "type");
        if (!cJSON_IsObject(rf) || !cJSON_IsString(t)) return BAD("response_format", "'response_format' must be {\"type\": ...}");
        if (strcmp(t->valuestring, "text")) return BAD("response_format", "only response_format {\"type\": \"text\"} is supported");
    }
    const char *user = NULL;
    if (get_string(root, "user", &user, e) || get_bool(root, "stream", &r->stream, e)) return -1;
    const cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) return BAD("stream_options", "'stream_options' must be an object");
        if (get_bool(so, "include_usage", &r->include_usage, e)) return -1;
    }
    if (parse_stop(root, r, e) || parse_bias(root, r, e)) return -1;
    /* logprobs: chat {logprobs: bool, top_logprobs: 0..20}; completions {logprobs: 0..5}. */
    int64_t top = 0;
    if (r->kind == API_CHAT) {
        if (get_bool(root, "logprobs", &r->logprobs, e) || get_int(root, "top_logprobs", 0, 20, &top, e)) return -1;
        if (field(root, "top_logprobs") && !r->logprobs)
            return BAD("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    } else {
        top = -1;
        if (get_int(root, "logprobs", 0, 5, &top, e)) return -1;
        r->logprobs = top >= 0;
        if (top < 0) top = 0;
    }
    r->top_logprobs = (int)top;
    return 0;
}

int api_parse_request(ApiKind kind, const char *body, size_t len, ApiRequest *r, ApiError *e) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->max_tokens = -1;
    r->thinking = -1;
    r->temperature = 0.8, r->top_p = 0.95, r->top_k = 40;
    r->logits = logits_params_default();
    cJSON *root = cJSON_ParseWithLength(body ? body : "", len);
    r->json = root;
    int rc = 0;
    if (!root) rc = BAD(NULL, "the body is not valid JSON");
    else if (!cJSON_IsObject(root)) rc = BAD(NULL, "the body must be a JSON object");
    else if (kind == API_CHAT)
        rc = parse_messages(root, r, e) || parse_template_kwargs(root, r, e) || parse_generation(root, r, e) ? -1 : 0;
    else if (kind == API_COMPLETION) rc = parse_prompt(root, r, e) || parse_generation(root, r, e) ? -1 : 0;
    else if (kind == API_TOKENIZE) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "content");
        if (!cJSON_IsString(c)) rc = BAD("content", "'content' must be a string");
        else rc = get_string(root, "content", &r->prompt, e) || get_bool(root, "add_special", &r->add_special, e) ||
                          get_bool(root, "with_pieces", &r->with_pieces, e)
                      ? -1
                      : 0;
    } else {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "tokens");
        if (!cJSON_IsArray(t)) rc = BAD("tokens", "'tokens' must be an array of token ids");
        else rc = parse_ids(t, "tokens", r, e);
    }
    if (rc) api_request_free(r);
    return rc;
}
