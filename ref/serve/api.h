/**
 * @file api.h
 * @brief The OpenAI wire format of `dsv3 serve`: request bodies parsed and validated into plain
 *        structs, error bodies built (docs/serve.md lists every field).
 *
 * Parsing needs only cJSON: no model, no tokenizer, so the fuzz target (tests/fuzz/fuzz_serve.c)
 * runs it on any bytes. A field that is absent or null takes its default; a known field of the
 * wrong type or out of range is an error naming it (HTTP 400 with
 * `{"error":{"message","type":"invalid_request_error","param","code"}}`); unknown fields are ignored.
 */
#ifndef DSV3_API_H
#define DSV3_API_H

#include <stddef.h>
#include <stdint.h>

#include "generate/logits_process.h"
#include "tokenizer/chat.h"

/** Which endpoint a body is for. */
typedef enum {
    API_CHAT,       /**< POST /v1/chat/completions */
    API_COMPLETION, /**< POST /v1/completions */
    API_TOKENIZE,   /**< POST /tokenize */
    API_DETOKENIZE  /**< POST /detokenize */
} ApiKind;

/** The most stop strings a request may give. */
#define API_MAX_STOP 16
/** The longest stop string, in bytes. */
#define API_MAX_STOP_LEN 256
/** The most logit_bias entries. */
#define API_MAX_BIAS 4096

/** A parsed request; strings point into the parsed document. Free with api_request_free(). */
typedef struct {
    ApiKind kind;              /**< the endpoint */
    void *json;                /**< the parsed document (cJSON) */
    const char *model;         /**< "model", NULL when absent */
    /* chat */
    ChatMessage *msgs;         /**< [n_msgs] roles "system", "user", "assistant" ("developer" reads "system") */
    int n_msgs;                /**< messages */
    int thinking;              /**< chat_template_kwargs.thinking: 1 true, 0 false, −1 absent */
    char **owned;              /**< [n_owned] contents joined from text parts */
    int n_owned;               /**< entries of owned */
    /* completions, tokenize */
    const char *prompt;        /**< the prompt / "content" text (NULL when given as ids) */
    int *ids;                  /**< [n_ids] prompt token ids / detokenize "tokens" (owned) */
    int n_ids;                 /**< entries of ids */
    int add_special;           /**< tokenize: prepend BOS */
    int with_pieces;           /**< tokenize: ids with their text */
    /* generation */
    int64_t max_tokens;        /**< max_completion_tokens or max_tokens; −1: absent */
    double temperature;        /**< default 0.8 */
    double top_p;              /**< default 0.95 */
    int top_k;                 /**< default 40 */
    int have_seed;             /**< 1 when "seed" was given */
    int64_t seed;              /**< its value */
    LogitsParams logits;       /**< penalties, min_p, logit_bias (bias points into bias) */
    LogitBias *bias;           /**< [logits.n_bias] owned */
    const char *stop[API_MAX_STOP]; /**< stop strings */
    int n_stop;                /**< how many */
    int logprobs;              /**< chat: logprobs true; completions: logprobs ≥ 0 */
    int top_logprobs;          /**< alternatives per token (0..20; completions 0..5) */
    int stream;                /**< "stream": true */
    int include_usage;         /**< "stream_options": {"include_usage": true} */
} ApiRequest;

/** An error answer: status and the OpenAI error object's fields. */
typedef struct {
    int status;             /**< HTTP status */
    char message[512];      /**< "message" */
    const char *type;       /**< "type" */
    const char *param;      /**< "param" (NULL: null) */
    const char *code;       /**< "code" (NULL: null) */
} ApiError;

/**
 * Parses and validates @p len bytes of @p body for endpoint @p kind. Returns 0, or −1 with
 * @p e filled (status 400) and @p r freed.
 */
int api_parse_request(ApiKind kind, const char *body, size_t len, ApiRequest *r, ApiError *e);

/** Frees what api_parse_request allocated; safe on a zeroed struct. */
void api_request_free(ApiRequest *r);

/** Fills @p e (and returns −1): status, type, param, code and a printf message. */
int api_error(ApiError *e, int status, const char *type, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/** The error body `{"error":{...}}`, malloc'd (NULL when out of memory). */
char *api_error_json(const ApiError *e);

#endif
