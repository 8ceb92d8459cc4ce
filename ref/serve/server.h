/**
 * @file server.h
 * @brief `dsv3 serve`: an OpenAI-compatible HTTP server over the scheduler of
 *        ref/generate/sched.h (docs/serve.md: endpoints, parameters, metrics, examples).
 *
 * HTTP is libmicrohttpd's, one thread per connection; JSON is cJSON's. One more thread runs the
 * scheduler's steps. A streaming response's connection thread waits for the SSE events that the
 * step thread appends to its request and watches its socket: a client that goes away cancels its
 * request, which frees its slot at the next step.
 *
 * Life cycle: serve_start binds and answers (GET /health says 503 while loading), the caller
 * loads the model, serve_attach starts generating, serve_wait returns after SIGINT or SIGTERM
 * has been handled — no new connections, in-flight requests finished (or, after a grace period,
 * ended with an error event), within 5 s — and serve_free releases everything.
 */
#ifndef DSV3_SERVER_H
#define DSV3_SERVER_H

#include <stddef.h>

#include "backend.h"
#include "model/model.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

/** Flags of `dsv3 serve` (llama-server's names). */
typedef struct {
    const char *host;       /**< address to bind (default 127.0.0.1; "::1" etc. for IPv6) */
    int port;               /**< 0: an ephemeral port (printed) */
    int n_slots;            /**< -np: requests generated at once */
    int64_t batch;          /**< -b: tokens per step */
    int draft;              /**< --spec mtp: MTP drafts per step; 0 plain */
    const char *const *api_keys; /**< [n_api_keys] accepted bearer keys (none: no authentication) */
    int n_api_keys;         /**< how many */
    double timeout_s;       /**< --timeout: an idle connection is closed after this long */
    int max_queue;          /**< --max-queue: requests waiting for a slot at most (then 429) */
    int metrics;            /**< --metrics: serve GET /metrics */
    int webui;              /**< 0 with --no-webui */
    const char *alias;      /**< the model's name in /v1/models and responses */
    size_t max_body;        /**< request bodies above this many bytes get 413 */
    int max_connections;    /**< open connections at most (each one thread) */
    double grace_s;         /**< on SIGINT/SIGTERM: how long in-flight requests may still run */
} ServeOptions;

/** What serve_attach generates with. */
typedef struct {
    const Model *m;         /**< the model (not owned) */
    const Tokenizer *tok;   /**< its tokenizer (not owned) */
    GpuEngine *gpu;         /**< --backend fast (NULL: the reference) */
    MoeHook *moe_hook;      /**< reference: expert parallelism (NULL: local) */
    AttnMode attn;          /**< reference: MLA form */
    Fp8Mode fp8;            /**< reference: FP8 numerics */
    int64_t ctx;            /**< positions per slot (-c), prompt + reply */
    const char *describe;   /**< one line for the ready message (backend, numerics) */
    ChatTemplate chat;      /**< every chat request's template; its think is the default of chat_template_kwargs.thinking */
} ServeModel;

/** A running server (opaque). */
typedef struct Server Server;

/** The defaults of every option (port 8080, 4 slots, ...). */
ServeOptions serve_options_default(void);

/**
 * Blocks SIGINT/SIGTERM (serve_wait takes them), binds and starts answering; prints
 * "dsv3 serve: listening on http://HOST:PORT" on stderr.
 */
int serve_start(Server **s, const ServeOptions *o, Err *err);

/** The port bound (the ephemeral one for port 0). */
int serve_port(const Server *s);

/** Starts generating with @p sm (which must outlive the server); prints the ready line. */
int serve_attach(Server *s, const ServeModel *sm, Err *err);

/** Waits for SIGINT or SIGTERM, then shuts down as described above. Returns 0. */
int serve_wait(Server *s);

/** Stops everything still running and frees the server; safe on NULL. */
void serve_free(Server *s);

#endif
