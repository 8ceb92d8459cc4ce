/**
 * @file server.c
 * @brief `dsv3 serve` (see server.h): routing, authentication, the generation endpoints with
 *        their SSE streams, tokenize/detokenize, models, health, metrics, the chat page, shutdown.
 *
 * A generation request is a ServeReq shared by two threads: its connection's (which parsed it
 * and sends what it produces) and the step thread (which calls on_token / on_done through the
 * scheduler). Each holds a reference; the last one to let go frees it. Every byte the client gets
 * is produced on the step thread under the request's mutex and sent by the connection thread.
 */
#define _GNU_SOURCE
#include "server.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "base/rng.h"
#include "generate/sched.h"
#include "generate/stop.h"
#include "metrics.h"
#include "tokenizer/chat.h"
#include "webui.h"

struct Server {
    ServeOptions o;
    struct MHD_Daemon *d;
    int port;
    sigset_t signals;           /* SIGINT, SIGTERM: blocked everywhere, taken by serve_wait */
    atomic_int ready;           /* 1 once serve_attach ran */
    atomic_int closing;         /* 1 after a signal: new generations get 503 */
    atomic_int stop_thread;     /* ends the step thread */
    ServeModel sm;
    Sched *sched;
    pthread_t thread;
    int have_thread;
    int64_t ctx;
    int n_sample, bos;
    int eot;                    /* the chat template's end of turn when it is not the EOS (−1: it is) */
    Metrics metrics;
    pthread_mutex_t mu;         /* guards rng and next_id */
    Rng rng;                    /* seeds of requests without one */
    uint64_t next_id;
    time_t started;
};

/* ---- responses ------------------------------------------------------------------------------ */

static enum MHD_Result send_body(Server *s, struct MHD_Connection *c, MetricsEndpoint ep, int status, const char *type,
                                 const char *body, size_t len, int copy) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, copy ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    if (status == 429 || status == 503) MHD_add_response_header(r, "Retry-After", "1");
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    if (status == 405) MHD_add_response_header(r, "Allow", "GET, POST");
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    metrics_request(&s->metrics, ep, status);
    return ok;
}

/** Sends cJSON @p j (deleted) with @p status. */
static enum MHD_Result send_json(Server *s, struct MHD_Connection *c, MetricsEndpoint ep, int status, cJSON *j) {
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!text) return send_body(s, c, ep, 500, "text/plain", "out of memory\n", 14, 0);
    enum MHD_Result ok = send_body(s, c, ep, status, "application/json; charset=utf-8", text, strlen(text), 1);
    free(text);
    return ok;
}

static enum MHD_Result send_error(Server *s, struct MHD_Connection *c, MetricsEndpoint ep, const ApiError *e) {
    char *text = api_error_json(e);
    if (!text) return send_body(s, c, ep, 500, "text/plain", "out of memory\n", 14, 0);
    enum MHD_Result ok = send_body(s, c, ep, e->status, "application/json; charset=utf-8", text, strlen(text), 1);
    free(text);
    return ok;
}

/** One-shot errors: api_error + send_error. */
static enum MHD_Result fail(Server *s, struct MHD_Connection *c, MetricsEndpoint ep, int status, const char *type,
                            const char *param, const char *code, const char *msg) {
    ApiError e;
    api_error(&e, status, type, param, code, "%s", msg);
    return send_error(s, c, ep, &e);
}

/* ---- a generation request -------------------------------------------------------------------- */

typedef struct {
    Server *srv;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;                 /* the connection's and the scheduler's */
    ApiKind kind;
    int stream, include_usage, logprobs, top_logprobs;
    char id[48];
    long long created;
    int64_t n_prompt;
    uint64_t sched_id;
    DecodeStream ds;
    StopMatcher stop;
    ByteBuf scratch;          /* text released by the stop matcher in this call */
    int reasons;              /* chat with a template that reasons: <think>...</think> becomes reasoning_content */
    ChatReasoning rs;         /* its splitter */
    ByteBuf part_think, part_answer; /* what the splitter made of this call's text */
    ByteBuf text;             /* non-streaming: the whole reply (the answer, when it reasons) */
    ByteBuf think;            /* non-streaming: the whole reasoning */
    ByteBuf out;              /* streaming: SSE bytes not yet sent */
    size_t out_sent;
    cJSON *lp;                /* log-probabilities not yet sent (streaming) or all of them */
    size_t text_offset;       /* completions' logprobs.text_offset */
    int done;
    SchedResult res;
    char error[512];
    double t0, t_last;
    int64_t n_gen;
    int client_gone;          /* the client went away: its request was cancelled */
    int fd;                   /* the connection's socket, watched for the peer closing it */
} ServeReq;

static void req_unref(ServeReq *q) {
    pthread_mutex_lock(&q->mu);
    int left = --q->refs;
    pthread_mutex_unlock(&q->mu);
    if (left) return;
    decode_stream_free(&q->ds);
    stop_free(&q->stop);
    chat_reasoning_free(&q->rs);
    bytebuf_free(&q->scratch), bytebuf_free(&q->text), bytebuf_free(&q->out);
    bytebuf_free(&q->think), bytebuf_free(&q->part_think), bytebuf_free(&q->part_answer);
    cJSON_Delete(q->lp);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q);
}

/** A fresh log-probability accumulator: chat {"content": []}; completions {"tokens": [], ...}. */
static cJSON *lp_new(ApiKind kind) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (kind == API_CHAT) cJSON_AddArrayToObject(o, "content");
    else {
        cJSON_AddArrayToObject(o, "tokens");
        cJSON_AddArrayToObject(o, "token_logprobs");
        cJSON_AddArrayToObject(o, "top_logprobs");
        cJSON_AddArrayToObject(o, "text_offset");
    }
    return o;
}

/** The text of token @p id alone (for logprobs), malloc'd. */
static char *token_text(const Tokenizer *t, int id) {
    char *text = NULL;
    size_t len;
    Err err;
    if (tokenizer_decode(t, &id, 1, &text, &len, &err)) return strdup("");
    return text;
}

static cJSON *bytes_array(const char *s) {
    cJSON *a = cJSON_CreateArray();
    for (const unsigned char *p = (const unsigned char *)s; a && *p; p++) cJSON_AddItemToArray(a, cJSON_CreateNumber(*p));
    return a;
}

/** Adds one token's log-probabilities to q->lp (the request's mutex held). */
static void lp_add(ServeReq *q, const SchedToken *t) {
    const Tokenizer *tok = q->srv->sm.tok;
    if (!q->lp && !(q->lp = lp_new(q->kind))) return;
    char *piece = token_text(tok, t->token);
    if (q->kind == API_CHAT) {
        cJSON *e = cJSON_CreateObject(), *top = cJSON_CreateArray();
        cJSON_AddStringToObject(e, "token", piece);
        cJSON_AddNumberToObject(e, "logprob", t->logprob);
        cJSON_AddItemToObject(e, "bytes", bytes_array(piece));
        for (int i = 0; i < t->n_top && i < q->top_logprobs; i++) {
            char *alt = token_text(tok, t->top[i].token);
            cJSON *a = cJSON_CreateObject();
            cJSON_AddStringToObject(a, "token", alt);
            cJSON_AddNumberToObject(a, "logprob", t->top[i].logprob);
            cJSON_AddItemToObject(a, "bytes", bytes_array(alt));
            cJSON_AddItemToArray(top, a);
            free(alt);
        }
        cJSON_AddItemToObject(e, "top_logprobs", top);
        cJSON_AddItemToArray(cJSON_GetObjectItem(q->lp, "content"), e);
    } else {
        cJSON_AddItemToArray(cJSON_GetObjectItem(q->lp, "tokens"), cJSON_CreateString(piece));
        cJSON_AddItemToArray(cJSON_GetObjectItem(q->lp, "token_logprobs"), cJSON_CreateNumber(t->logprob));
        cJSON *top = cJSON_CreateObject();
        for (int i = 0; i < t->n_top && i < q->top_logprobs; i++) {
            char *alt = token_text(tok, t->top[i].token);
            if (!cJSON_GetObjectItemCaseSensitive(top, alt)) cJSON_AddNumberToObject(top, alt, t->top[i].logprob);
            free(alt);
        }
        cJSON_AddItemToArray(cJSON_GetObjectItem(q->lp, "top_logprobs"), top);
        cJSON_AddItemToArray(cJSON_GetObjectItem(q->lp, "text_offset"), cJSON_CreateNumber((double)q->text_offset));
        q->text_offset += strlen(piece);
    }
    free(piece);
}

static void add_usage(cJSON *o, const ServeReq *q) {
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)q->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)q->res.generated);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(q->n_prompt + q->res.generated));
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", (double)q->res.cached_tokens);
}

/** The fields every response object starts with. */
static cJSON *response_head(const ServeReq *q, const char *object) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", q->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)q->created);
    cJSON_AddStringToObject(o, "model", q->srv->o.alias);
    cJSON_AddStringToObject(o, "system_fingerprint", "dsv3");
    return o;
}

static void sse_append(ServeReq *q, cJSON *o) {
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (text) bytebuf_printf(&q->out, "data: %s\n\n", text);
    free(text);
}

/**
 * One streamed choice chunk: @p reasoning (chat's delta.reasoning_content) and @p content (either may
 * be NULL), @p finish (NULL: null), the role on the first.
 */
static void sse_chunk(ServeReq *q, const char *reasoning, const char *content, const char *finish, int role) {
    int chat = q->kind == API_CHAT;
    cJSON *o = response_head(q, chat ? "chat.completion.chunk" : "text_completion");
    cJSON *choice = cJSON_CreateObject();
    cJSON_AddNumberToObject(choice, "index", 0);
    if (chat) {
        cJSON *delta = cJSON_AddObjectToObject(choice, "delta");
        if (role) cJSON_AddStringToObject(delta, "role", "assistant");
        if (reasoning) cJSON_AddStringToObject(delta, "reasoning_content", reasoning);
        if (content) cJSON_AddStringToObject(delta, "content", content);
    } else
        cJSON_AddStringToObject(choice, "text", content ? content : "");
    if (q->lp) cJSON_AddItemToObject(choice, "logprobs", q->lp), q->lp = NULL;
    else cJSON_AddNullToObject(choice, "logprobs");
    if (finish) cJSON_AddStringToObject(choice, "finish_reason", finish);
    else cJSON_AddNullToObject(choice, "finish_reason");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), choice);
    sse_append(q, o);
}

/** Empties @p b, keeping it a valid C string. */
static void buf_clear(ByteBuf *b) {
    b->len = 0;
    if (b->data) b->data[0] = 0;
}

/** The text of @p b ("" while it has never held any). */
static const char *buf_str(const ByteBuf *b) { return b->data ? b->data : ""; }

/**
 * Passes on the reply text in q->scratch (what the stop matcher released; the request's mutex
 * held): through the reasoning splitter when the request's template reasons (@p last: the end of
 * the reply, which flushes it), then into the non-streaming reply, or as SSE chunks — the
 * reasoning's first, then the answer's (which also carries log-probabilities not yet sent).
 */
static void put_text(ServeReq *q, int last) {
    const ByteBuf *answer = &q->scratch, *think = &q->part_think;
    buf_clear(&q->part_think);
    if (q->reasons) {
        buf_clear(&q->part_answer);
        chat_reasoning_split(&q->rs, buf_str(&q->scratch), q->scratch.len, &q->part_think, &q->part_answer);
        if (last) chat_reasoning_split_flush(&q->rs, &q->part_think, &q->part_answer);
        answer = &q->part_answer;
    }
    if (!q->stream) {
        bytebuf_append(&q->think, buf_str(think), think->len);
        bytebuf_append(&q->text, buf_str(answer), answer->len);
        return;
    }
    if (think->len > 0) sse_chunk(q, buf_str(think), NULL, NULL, 0);
    if (answer->len > 0 || q->lp) sse_chunk(q, NULL, buf_str(answer), NULL, 0);
}

/** The step thread: one token. */
static int on_token(void *user, const SchedToken *t) {
    ServeReq *q = user;
    Server *s = q->srv;
    double now = now_seconds();
    metrics_observe(&s->metrics, q->n_gen == 0 ? &s->metrics.ttft : &s->metrics.itl, now - (q->n_gen == 0 ? q->t0 : q->t_last));
    q->t_last = now;
    q->n_gen++;
    pthread_mutex_lock(&q->mu);
    const char *piece = "";
    size_t len = 0;
    Err err;
    if (decode_stream_step(&q->ds, t->token, &piece, &len, &err)) piece = "", len = 0;
    buf_clear(&q->scratch);
    const char *shown;
    size_t n_shown;
    int stopped = stop_feed(&q->stop, piece, len, &shown, &n_shown);
    if (stopped >= 0) bytebuf_append(&q->scratch, shown, n_shown);
    if (q->logprobs) lp_add(q, t);
    put_text(q, 0);
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return stopped == 1;
}

/** The step thread: the end of a request. */
static void on_done(void *user, const SchedResult *r) {
    ServeReq *q = user;
    Server *s = q->srv;
    pthread_mutex_lock(&q->mu);
    q->res = *r;
    if (r->error) snprintf(q->error, sizeof q->error, "%s", r->error);
    q->res.error = NULL;
    int ok = r->finish == SCHED_STOP || r->finish == SCHED_LENGTH;
    if (ok) {
        const char *piece;
        size_t len;
        Err err;
        buf_clear(&q->scratch);
        const char *shown;
        size_t n_shown;
        if (decode_stream_flush(&q->ds, &piece, &len, &err) == 0 && len > 0 && stop_feed(&q->stop, piece, len, &shown, &n_shown) >= 0)
            bytebuf_append(&q->scratch, shown, n_shown);
        stop_flush(&q->stop, &shown, &n_shown);
        bytebuf_append(&q->scratch, shown, n_shown);
        const char *finish = r->finish == SCHED_STOP ? "stop" : "length";
        put_text(q, 1);
        if (q->stream) {
            sse_chunk(q, NULL, NULL, finish, 0);
            if (q->include_usage) {
                cJSON *o = response_head(q, q->kind == API_CHAT ? "chat.completion.chunk" : "text_completion");
                cJSON_AddArrayToObject(o, "choices");
                add_usage(o, q);
                sse_append(q, o);
            }
            bytebuf_puts(&q->out, "data: [DONE]\n\n");
        }
    } else if (q->stream && !q->client_gone) {
        /* Shutdown or a failed forward: the stream ends with an error event, then [DONE]. */
        ApiError e;
        api_error(&e, 500, "server_error", NULL, NULL, "%s",
                  r->finish == SCHED_ERROR ? q->error : "the server is shutting down");
        char *body = api_error_json(&e);
        if (body) bytebuf_printf(&q->out, "data: %s\n\ndata: [DONE]\n\n", body);
        free(body);
    }
    q->done = 1;
    pthread_cond_broadcast(&q->cv);
    int gone = q->client_gone;
    pthread_mutex_unlock(&q->mu);
    if (ok) metrics_observe(&s->metrics, &s->metrics.e2e, now_seconds() - q->t0);
    if (gone) metrics_cancelled(&s->metrics);
    req_unref(q);
}

/** 1 when the peer has closed its side of @p fd (or the socket failed). */
static int peer_closed(int fd) {
    struct pollfd p = { fd, POLLRDHUP, 0 };
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

/** The step thread: is the client still there? (A closed peer is seen here before its next step.) */
static int req_alive(void *user) {
    ServeReq *q = user;
    pthread_mutex_lock(&q->mu);
    int gone = q->client_gone || (q->fd >= 0 && peer_closed(q->fd));
    if (gone) q->client_gone = 1;
    pthread_mutex_unlock(&q->mu);
    return !gone;
}

/** The connection thread gives up on @p q: its request is cancelled (the slot frees at the next step). */
static void abandon(ServeReq *q) {
    pthread_mutex_lock(&q->mu);
    int done = q->done;
    if (!done) q->client_gone = 1;
    pthread_mutex_unlock(&q->mu);
    if (!done) sched_cancel(q->srv->sched, q->sched_id);
}

/** Waits (the request's mutex held) until @p q has bytes to send or is done; 0, or −1 when the peer went away. */
static int wait_output(ServeReq *q) {
    while (q->out_sent == q->out.len && !q->done) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&q->cv, &q->mu, &ts);
        if (q->out_sent == q->out.len && !q->done && peer_closed(q->fd)) return -1;
    }
    return 0;
}

/** The streaming body: waits for SSE bytes; a closed peer cancels the request. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    ServeReq *q = cls;
    pthread_mutex_lock(&q->mu);
    if (wait_output(q)) {
        pthread_mutex_unlock(&q->mu);
        abandon(q);
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (q->out_sent < q->out.len) {
        size_t n = q->out.len - q->out_sent;
        if (n > max) n = max;
        memcpy(buf, q->out.data + q->out_sent, n);
        q->out_sent += n;
        if (q->out_sent == q->out.len) q->out.len = 0, q->out_sent = 0;
        pthread_mutex_unlock(&q->mu);
        return (ssize_t)n;
    }
    pthread_mutex_unlock(&q->mu);
    return MHD_CONTENT_READER_END_OF_STREAM;
}

/** MHD is done with a streaming response (sent, or the connection failed). */
static void stream_free(void *cls) {
    ServeReq *q = cls;
    abandon(q);
    req_unref(q);
}

/* ---- routes ---------------------------------------------------------------------------------- */

/** What a path is. */
typedef enum { R_CHAT, R_COMPLETIONS, R_TOKENIZE, R_DETOKENIZE, R_MODELS, R_HEALTH, R_METRICS, R_WEBUI } Route;

static const struct {
    const char *path;
    Route route;
    int post;          /* 1: POST, 0: GET (and HEAD) */
    int is_public;     /* answered without an API key */
    MetricsEndpoint ep;
} routes[] = {
    { "/v1/chat/completions", R_CHAT, 1, 0, EP_CHAT },
    { "/chat/completions", R_CHAT, 1, 0, EP_CHAT },
    { "/v1/completions", R_COMPLETIONS, 1, 0, EP_COMPLETIONS },
    { "/completions", R_COMPLETIONS, 1, 0, EP_COMPLETIONS },
    { "/tokenize", R_TOKENIZE, 1, 0, EP_TOKENIZE },
    { "/detokenize", R_DETOKENIZE, 1, 0, EP_DETOKENIZE },
    { "/v1/models", R_MODELS, 0, 0, EP_MODELS },
    { "/models", R_MODELS, 0, 0, EP_MODELS },
    { "/health", R_HEALTH, 0, 1, EP_HEALTH },
    { "/v1/health", R_HEALTH, 0, 1, EP_HEALTH },
    { "/metrics", R_METRICS, 0, 0, EP_METRICS },
    { "/", R_WEBUI, 0, 1, EP_WEBUI },
    { "/index.html", R_WEBUI, 0, 1, EP_WEBUI },
};

/** Per-request state of a connection. */
typedef struct {
    int route;          /* index into routes, −1: answered already */
    ByteBuf body;
    int too_large;
} Conn;

/** Bearer key check, in time independent of where a wrong key differs. */
static int authorized(const Server *s, struct MHD_Connection *c) {
    if (s->o.n_api_keys == 0) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    size_t n = strlen(h);
    int ok = 0;
    for (int i = 0; i < s->o.n_api_keys; i++) {
        const char *k = s->o.api_keys[i];
        size_t m = strlen(k);
        unsigned char diff = (unsigned char)(n != m);
        for (size_t j = 0; j < m; j++) diff |= (unsigned char)(k[j] ^ (j < n ? h[j] : 0));
        ok |= diff == 0;
    }
    return ok;
}

static enum MHD_Result answer_models(Server *s, struct MHD_Connection *c) {
    cJSON *o = cJSON_CreateObject(), *data = cJSON_AddArrayToObject(o, "data"), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON_AddStringToObject(m, "id", s->o.alias);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->started);
    cJSON_AddStringToObject(m, "owned_by", "dsv3");
    if (atomic_load(&s->ready)) {
        const Config *cf = &s->sm.m->config;
        cJSON *meta = cJSON_AddObjectToObject(m, "meta");
        cJSON_AddNumberToObject(meta, "n_ctx", (double)s->ctx);
        cJSON_AddNumberToObject(meta, "n_slots", s->o.n_slots);
        cJSON_AddNumberToObject(meta, "n_vocab", s->n_sample);
        cJSON_AddNumberToObject(meta, "n_layers", cf->num_hidden_layers);
        cJSON_AddNumberToObject(meta, "hidden_size", cf->hidden_size);
        cJSON_AddNumberToObject(meta, "n_routed_experts", cf->n_routed_experts);
        cJSON_AddBoolToObject(meta, "mtp_speculation", s->o.draft > 0);
        cJSON_AddStringToObject(meta, "chat_template", chat_template_name(s->sm.chat.kind));
    }
    cJSON_AddItemToArray(data, m);
    return send_json(s, c, EP_MODELS, 200, o);
}

static enum MHD_Result answer_health(Server *s, struct MHD_Connection *c) {
    if (!atomic_load(&s->ready))
        return fail(s, c, EP_HEALTH, 503, "unavailable_error", NULL, NULL, "Loading model");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    return send_json(s, c, EP_HEALTH, 200, o);
}

static enum MHD_Result answer_metrics(Server *s, struct MHD_Connection *c) {
    if (!s->o.metrics)
        return fail(s, c, EP_METRICS, 501, "not_supported_error", NULL, NULL, "metrics are off (start with --metrics)");
    SchedStats st;
    memset(&st, 0, sizeof st);
    st.slots = s->o.n_slots;
    if (s->sched) sched_stats(s->sched, &st);
    ByteBuf b = { 0 };
    if (metrics_render(&s->metrics, &st, &b)) {
        bytebuf_free(&b);
        return fail(s, c, EP_METRICS, 500, "server_error", NULL, NULL, "out of memory");
    }
    enum MHD_Result ok = send_body(s, c, EP_METRICS, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len, 1);
    bytebuf_free(&b);
    return ok;
}

static enum MHD_Result answer_tokenize(Server *s, struct MHD_Connection *c, const Conn *cn, int detok) {
    MetricsEndpoint ep = detok ? EP_DETOKENIZE : EP_TOKENIZE;
    ApiRequest a;
    ApiError e;
    if (api_parse_request(detok ? API_DETOKENIZE : API_TOKENIZE, cn->body.data, cn->body.len, &a, &e)) return send_error(s, c, ep, &e);
    const Tokenizer *t = s->sm.tok;
    cJSON *o = cJSON_CreateObject();
    Err err = { "" };
    int rc = 0;
    if (detok) {
        char *text = NULL;
        size_t len;
        for (int i = 0; i < a.n_ids && rc == 0; i++)
            if (a.ids[i] >= s->n_sample) rc = api_error(&e, 400, "invalid_request_error", "tokens", NULL, "token id %d is outside the vocabulary [0, %d)", a.ids[i], s->n_sample);
        if (rc == 0 && tokenizer_decode(t, a.ids, a.n_ids, &text, &len, &err))
            rc = api_error(&e, 400, "invalid_request_error", "tokens", NULL, "%s", err.msg);
        if (rc == 0) cJSON_AddStringToObject(o, "content", text ? text : "");
        free(text);
    } else {
        IntVec ids = { 0 };
        if (a.add_special && s->bos >= 0) intvec_push(&ids, s->bos);
        if (tokenizer_encode_append(t, a.prompt, strlen(a.prompt), &ids, &err))
            rc = api_error(&e, 400, "invalid_request_error", "content", NULL, "%s", err.msg);
        cJSON *arr = cJSON_AddArrayToObject(o, "tokens");
        for (size_t i = 0; rc == 0 && i < ids.n; i++) {
            if (!a.with_pieces) {
                cJSON_AddItemToArray(arr, cJSON_CreateNumber(ids.v[i]));
                continue;
            }
            cJSON *p = cJSON_CreateObject();
            char *piece = token_text(t, ids.v[i]);
            cJSON_AddNumberToObject(p, "id", ids.v[i]);
            cJSON_AddStringToObject(p, "piece", piece);
            free(piece);
            cJSON_AddItemToArray(arr, p);
        }
        intvec_free(&ids);
    }
    api_request_free(&a);
    if (rc) {
        cJSON_Delete(o);
        return send_error(s, c, ep, &e);
    }
    return send_json(s, c, ep, 200, o);
}

/* ---- generation endpoints ----------------------------------------------------------------------- */

/** The prompt's token ids of a parsed request (a chat's rendered with @p tpl); −1 with @p e on a bad one. */
static int prompt_ids(Server *s, const ApiRequest *a, const ChatTemplate *tpl, IntVec *ids, ApiError *e) {
    Err err = { "" };
    if (a->kind == API_CHAT) {
        int *v = NULL, n = 0;
        if (chat_template_encode(tpl, s->sm.tok, a->msgs, a->n_msgs, 1, &v, &n, &err))
            return api_error(e, 400, "invalid_request_error", "messages", NULL, "%s", err.msg);
        int rc = intvec_append(ids, v, (size_t)n);
        free(v);
        return rc ? api_error(e, 500, "server_error", NULL, NULL, "out of memory") : 0;
    }
    if (a->prompt) {
        /* As `dsv3 generate -p`: BOS, then the text. */
        if ((s->bos >= 0 && intvec_push(ids, s->bos)) || tokenizer_encode_append(s->sm.tok, a->prompt, strlen(a->prompt), ids, &err))
            return api_error(e, 400, "invalid_request_error", "prompt", NULL, "%s", err.msg[0] ? err.msg : "out of memory");
        return 0;
    }
    for (int i = 0; i < a->n_ids; i++)
        if (a->ids[i] >= s->n_sample)
            return api_error(e, 400, "invalid_request_error", "prompt", NULL, "token id %d is outside the vocabulary [0, %d)",
                             a->ids[i], s->n_sample);
    return intvec_append(ids, a->ids, (size_t)a->n_ids) ? api_error(e, 500, "server_error", NULL, NULL, "out of memory") : 0;
}

/** The non-streaming answer of a finished request. */
static cJSON *final_json(ServeReq *q) {
    int chat = q->kind == API_CHAT;
    cJSON *o = response_head(q, chat ? "chat.completion" : "text_completion"), *choice = cJSON_CreateObject();
    cJSON_AddNumberToObject(choice, "index", 0);
    const char *text = q->text.data ? q->text.data : "";
    if (chat) {
        cJSON *m = cJSON_AddObjectToObject(choice, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        if (q->reasons) cJSON_AddStringToObject(m, "reasoning_content", buf_str(&q->think));
        cJSON_AddStringToObject(m, "content", text);
    } else
        cJSON_AddStringToObject(choice, "text", text);
    if (q->logprobs) {
        if (!q->lp) q->lp = lp_new(q->kind);
        cJSON_AddItemToObject(choice, "logprobs", q->lp);
        q->lp = NULL;
    } else
        cJSON_AddNullToObject(choice, "logprobs");
    cJSON_AddStringToObject(choice, "finish_reason", q->res.finish == SCHED_STOP ? "stop" : "length");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), choice);
    add_usage(o, q);
    return o;
}

static enum MHD_Result answer_generate(Server *s, struct MHD_Connection *c, const Conn *cn, ApiKind kind) {
    MetricsEndpoint ep = kind == API_CHAT ? EP_CHAT : EP_COMPLETIONS;
    double t0 = now_seconds();
    ApiRequest a;
    ApiError e;
    if (api_parse_request(kind, cn->body.data, cn->body.len, &a, &e)) return send_error(s, c, ep, &e);
    IntVec ids = { 0 };
    int rc = 0;
    ChatTemplate tpl = s->sm.chat; /* chat_template_kwargs.thinking overrides --think */
    if (a.thinking >= 0) tpl.think = a.thinking;
    if (atomic_load(&s->closing)) rc = api_error(&e, 503, "unavailable_error", NULL, NULL, "the server is shutting down");
    else rc = prompt_ids(s, &a, &tpl, &ids, &e);
    if (rc == 0 && ids.n == 0) rc = api_error(&e, 400, "invalid_request_error", kind == API_CHAT ? "messages" : "prompt", NULL, "the prompt has no tokens");
    int64_t n = (int64_t)ids.n, max_new = a.max_tokens > 0 ? a.max_tokens : s->ctx - n;
    if (rc == 0 && (n + max_new > s->ctx || max_new < 1))
        rc = api_error(&e, 400, "invalid_request_error", kind == API_CHAT ? "messages" : "prompt", "context_length_exceeded",
                       "the request needs %lld prompt tokens + %lld to generate = %lld positions, but the context holds %lld (-c)",
                       (long long)n, (long long)(a.max_tokens > 0 ? a.max_tokens : 1), (long long)(n + (a.max_tokens > 0 ? a.max_tokens : 1)),
                       (long long)s->ctx);
    ServeReq *q = NULL;
    if (rc == 0 && !(q = xcalloc(1, sizeof *q))) rc = api_error(&e, 500, "server_error", NULL, NULL, "out of memory");
    if (rc == 0) {
        Err err = { "" };
        pthread_mutex_init(&q->mu, NULL);
        pthread_cond_init(&q->cv, NULL);
        q->srv = s, q->refs = 2, q->kind = kind, q->stream = a.stream, q->include_usage = a.include_usage;
        q->logprobs = a.logprobs, q->top_logprobs = a.top_logprobs, q->n_prompt = n, q->t0 = t0;
        q->created = (long long)time(NULL);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        q->fd = ci ? ci->connect_fd : -1;
        decode_stream_init(&q->ds, s->sm.tok);
        q->reasons = kind == API_CHAT && chat_template_reasons(&tpl);
        chat_reasoning_init(&q->rs, REASONING_SPLIT, chat_template_opens_reasoning(&tpl));
        pthread_mutex_lock(&s->mu);
        uint64_t serial = s->next_id++;
        uint64_t seed = a.have_seed ? (uint64_t)a.seed : ((uint64_t)rng_u32(&s->rng) << 32 | rng_u32(&s->rng));
        pthread_mutex_unlock(&s->mu);
        snprintf(q->id, sizeof q->id, "%s-%llx%06llx", kind == API_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)s->started,
                 (unsigned long long)serial);
        if (stop_init_copy(&q->stop, a.stop, a.n_stop)) rc = api_error(&e, 500, "server_error", NULL, NULL, "out of memory");
        if (rc == 0 && q->stream && kind == API_CHAT) sse_chunk(q, NULL, "", NULL, 1);
        SchedParams p = { (float)a.temperature, a.top_k, a.top_p > 0 ? (float)a.top_p : 1e-9f, seed, a.logits, max_new,
                          a.logprobs ? a.top_logprobs : -1, { s->eot }, kind == API_CHAT && s->eot >= 0 };
        SchedSink sink = { on_token, on_done, req_alive, q };
        int sr = rc ? -1 : sched_submit(s->sched, ids.v, n, &p, &sink, &q->sched_id, &err);
        if (rc == 0 && sr == SCHED_FULL)
            rc = api_error(&e, 429, "rate_limit_error", NULL, "queue_full", "all %d slots are busy and %d requests are waiting (--max-queue); retry later",
                           s->o.n_slots, s->o.max_queue);
        else if (rc == 0 && sr != 0)
            rc = api_error(&e, 400, "invalid_request_error", NULL, NULL, "%s", err.msg);
        if (rc) q->refs = 1, req_unref(q), q = NULL;
    }
    api_request_free(&a);
    intvec_free(&ids);
    if (rc) return send_error(s, c, ep, &e);
    if (q->stream) {
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, q, stream_free);
        if (!r) {
            stream_free(q);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream; charset=utf-8");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        MHD_add_response_header(r, "X-Accel-Buffering", "no");
        enum MHD_Result ok = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        metrics_request(&s->metrics, ep, 200);
        return ok;
    }
    /* Not streaming: this connection's thread waits for the end, watching for the client going away. */
    pthread_mutex_lock(&q->mu);
    int gone = wait_output(q) != 0 || q->client_gone;
    pthread_mutex_unlock(&q->mu);
    if (gone) {
        abandon(q);
        req_unref(q);
        metrics_request(&s->metrics, ep, 499);
        return MHD_NO;
    }
    enum MHD_Result ok;
    if (q->res.finish == SCHED_STOP || q->res.finish == SCHED_LENGTH) ok = send_json(s, c, ep, 200, final_json(q));
    else if (q->res.finish == SCHED_ERROR) ok = fail(s, c, ep, 500, "server_error", NULL, NULL, q->error);
    else ok = fail(s, c, ep, 503, "unavailable_error", NULL, NULL, "the server is shutting down");
    req_unref(q);
    return ok;
}

/* ---- the access handler ------------------------------------------------------------------------- */

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method, const char *version,
                               const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    Server *s = cls;
    Conn *cn = *con_cls;
    if (!cn) {
        if (!(cn = xcalloc(1, sizeof *cn))) return MHD_NO;
        *con_cls = cn;
        int post = !strcmp(method, "POST"), get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
        int path = -1, r = -1;
        for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
            if (!strcmp(url, routes[i].path)) {
                path = (int)i;
                if (routes[i].post ? post : get) r = (int)i;
            }
        cn->route = -1;
        if (path < 0 || (routes[path].route == R_WEBUI && !s->o.webui))
            return fail(s, c, EP_OTHER, 404, "not_found_error", NULL, "not_found", "no such endpoint (see docs/serve.md)");
        if (r < 0) return fail(s, c, routes[path].ep, 405, "invalid_request_error", NULL, "method_not_allowed",
                               routes[path].post ? "use POST" : "use GET");
        if (!routes[r].is_public && !authorized(s, c))
            return fail(s, c, routes[r].ep, 401, "authentication_error", NULL, "invalid_api_key",
                        "missing or invalid API key (Authorization: Bearer KEY)");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        long len;
        if (post && cl && (parse_long(cl, 0, 0x7fffffffffffffffL, &len) || (size_t)len > s->o.max_body))
            return fail(s, c, routes[r].ep, 413, "invalid_request_error", NULL, "request_too_large",
                        "the request body is larger than the server accepts (--max-body)");
        if (!post) {
            switch (routes[r].route) {
            case R_MODELS: return answer_models(s, c);
            case R_HEALTH: return answer_health(s, c);
            case R_METRICS: return answer_metrics(s, c);
            default: {
                size_t n;
                const char *html = webui_html(&n);
                return send_body(s, c, EP_WEBUI, 200, "text/html; charset=utf-8", html, n, 0);
            }
            }
        }
        cn->route = r;
        return MHD_YES;
    }
    if (cn->route < 0) { /* answered already: drop the rest of the body */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size) {
        if (!cn->too_large && cn->body.len + *upload_size > s->o.max_body) cn->too_large = 1, bytebuf_free(&cn->body);
        if (!cn->too_large && bytebuf_append(&cn->body, upload, *upload_size)) return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    int r = cn->route;
    cn->route = -1;
    if (cn->too_large)
        return fail(s, c, routes[r].ep, 413, "invalid_request_error", NULL, "request_too_large",
                    "the request body is larger than the server accepts (--max-body)");
    if (!atomic_load(&s->ready)) return fail(s, c, routes[r].ep, 503, "unavailable_error", NULL, NULL, "Loading model");
    switch (routes[r].route) {
    case R_CHAT: return answer_generate(s, c, cn, API_CHAT);
    case R_COMPLETIONS: return answer_generate(s, c, cn, API_COMPLETION);
    case R_TOKENIZE: return answer_tokenize(s, c, cn, 0);
    default: return answer_tokenize(s, c, cn, 1);
    }
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode why) {
    (void)cls, (void)c, (void)why;
    Conn *cn = *con_cls;
    if (!cn) return;
    bytebuf_free(&cn->body);
    free(cn);
    *con_cls = NULL;
}

/* ---- life cycle ------------------------------------------------------------------------------------- */

ServeOptions serve_options_default(void) {
    ServeOptions o;
    memset(&o, 0, sizeof o);
    o.host = "127.0.0.1", o.port = 8080, o.n_slots = 4, o.batch = 256, o.timeout_s = 600, o.max_queue = 64;
    o.webui = 1, o.alias = "dsv3", o.max_body = 4u << 20, o.max_connections = 256, o.grace_s = 3.0;
    return o;
}

static void *step_thread(void *arg) {
    Server *s = arg;
    while (!atomic_load(&s->stop_thread)) {
        if (!sched_wait(s->sched, 0.1)) continue;
        Err err = { "" };
        if (sched_step(s->sched, &err) < 0) fprintf(stderr, "dsv3 serve: %s\n", err.msg);
    }
    return NULL;
}

int serve_start(Server **out, const ServeOptions *o, Err *err) {
    *out = NULL;
    if (o->port < 0 || o->port > 65535) return err_set(err, "--port %d is not in [0, 65535]", o->port);
    Server *s = xcalloc(1, sizeof *s);
    if (!s) return err_set(err, "out of memory");
    s->o = *o;
    s->started = time(NULL);
    pthread_mutex_init(&s->mu, NULL);
    metrics_init(&s->metrics);
    rng_seed(&s->rng, (uint64_t)s->started ^ ((uint64_t)getpid() << 32));
    s->next_id = 1;
    /* Signals go to serve_wait alone: blocked here, so every thread started from now on inherits it. */
    sigemptyset(&s->signals);
    sigaddset(&s->signals, SIGINT);
    sigaddset(&s->signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &s->signals, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC;
    const struct sockaddr *addr;
    if (inet_pton(AF_INET, o->host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET, a4.sin_port = htons((uint16_t)o->port);
        addr = (const struct sockaddr *)&a4;
    } else if (inet_pton(AF_INET6, o->host, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6, a6.sin6_port = htons((uint16_t)o->port);
        addr = (const struct sockaddr *)&a6;
        flags |= MHD_USE_IPv6;
    } else {
        serve_free(s);
        return err_set(err, "--host '%s' is not a numeric IPv4 or IPv6 address", o->host);
    }
    s->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR, addr,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(o->timeout_s > 0 ? o->timeout_s : 0),
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections, MHD_OPTION_NOTIFY_COMPLETED, completed,
                            s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024), MHD_OPTION_END);
    if (!s->d) {
        int e = errno;
        serve_free(s);
        return err_set(err, "cannot listen on %s port %d: %s", o->host, o->port, strerror(e));
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : o->port;
    int v6 = strchr(o->host, ':') != NULL;
    fprintf(stderr, "dsv3 serve: listening on http://%s%s%s:%d\n", v6 ? "[" : "", o->host, v6 ? "]" : "", s->port);
    *out = s;
    return 0;
}

int serve_port(const Server *s) { return s->port; }

int serve_attach(Server *s, const ServeModel *sm, Err *err) {
    s->sm = *sm;
    const Config *c = &sm->m->config;
    s->n_sample = tokenizer_vocab_size(sm->tok);
    if (s->n_sample > c->vocab_size)
        return err_set(err, "the tokenizer has %d ids but the model only %d (vocab_size)", s->n_sample, c->vocab_size);
    s->bos = tokenizer_bos_id(sm->tok);
    int eos = tokenizer_eos_id(sm->tok);
    if (eos < 0) eos = c->eos_token_id;
    /* A chat reply ends at its template's end of turn (Kimi's <|im_end|> is not its EOS), a completion at the EOS. */
    s->eot = tokenizer_token_id(sm->tok, chat_template_end_of_turn(&sm->chat));
    if (s->eot == eos) s->eot = -1;
    s->ctx = sm->ctx;
    SchedOptions so = { s->o.n_slots, sm->ctx, s->o.batch, s->o.draft, s->n_sample, eos, s->o.max_queue, sm->attn, sm->fp8,
                        sm->moe_hook };
    if (sched_open(&s->sched, sm->m, sm->gpu, &so, err)) return -1;
    if (pthread_create(&s->thread, NULL, step_thread, s)) return err_set(err, "cannot start the step thread");
    s->have_thread = 1;
    atomic_store(&s->ready, 1);
    fprintf(stderr, "dsv3 serve: ready: model '%s', %d slots x %lld positions, %lld tokens per step, %s%s%s, chat template %s%s\n",
            s->o.alias, s->o.n_slots, (long long)s->ctx, (long long)s->o.batch, sm->describe ? sm->describe : "reference",
            s->o.draft > 0 ? ", MTP speculation" : "", s->o.n_api_keys ? ", API key required" : "", chat_template_name(sm->chat.kind),
            chat_template_has_think_switch(&sm->chat) ? (sm->chat.think ? " (thinking by default)" : " (not thinking by default)") : "");
    return 0;
}

int serve_wait(Server *s) {
    int sig = 0;
    sigwait(&s->signals, &sig);
    fprintf(stderr, "dsv3 serve: %s: finishing in-flight requests, then exiting\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    atomic_store(&s->closing, 1);
    MHD_socket listen_fd = MHD_quiesce_daemon(s->d);
    if (s->sched) {
        double end = now_seconds() + s->o.grace_s;
        SchedStats st;
        for (;;) {
            sched_stats(s->sched, &st);
            if (st.busy + st.queued == 0) break;
            if (now_seconds() > end) {
                sched_cancel_all(s->sched);
                end = 1e300;
            }
            usleep(10 * 1000);
        }
    }
    atomic_store(&s->stop_thread, 1);
    if (s->have_thread) sched_wake(s->sched), pthread_join(s->thread, NULL), s->have_thread = 0;
    MHD_stop_daemon(s->d);
    s->d = NULL;
    if (listen_fd != MHD_INVALID_SOCKET) close(listen_fd);
    fprintf(stderr, "dsv3 serve: stopped\n");
    return 0;
}

void serve_free(Server *s) {
    if (!s) return;
    atomic_store(&s->stop_thread, 1);
    if (s->have_thread) sched_wake(s->sched), pthread_join(s->thread, NULL);
    if (s->d) MHD_stop_daemon(s->d);
    sched_close(s->sched);
    metrics_free(&s->metrics);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
