/**
 * @file fuzz_serve.c
 * @brief libFuzzer target for `dsv3 serve`'s request parsing (ref/serve/api.c) and its stop-string
 *        matcher: any body, for every endpoint, parses into a validated request or a 400 with an
 *        error body, without crashing (`make fuzz`). The first input byte picks the endpoint.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve/api.h"
#include "generate/stop.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    ApiKind kind = (ApiKind)(data[0] % 4);
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    ApiRequest r;
    ApiError e;
    if (api_parse_request(kind, body, len, &r, &e) == 0) {
        /* A validated request keeps its invariants. */
        if (r.n_stop > API_MAX_STOP || r.top_logprobs < 0 || r.top_logprobs > 20 || r.temperature < 0 || r.temperature > 2 ||
            !(r.top_p >= 0 && r.top_p <= 1) || r.top_k < 0 || (r.max_tokens != -1 && r.max_tokens < 1) ||
            r.logits.n_bias > API_MAX_BIAS || r.n_ids < 0)
            __builtin_trap();
        for (int i = 0; i < r.n_msgs; i++)
            if (!r.msgs[i].role || !r.msgs[i].content || !utf8_valid(r.msgs[i].content, strlen(r.msgs[i].content))) __builtin_trap();
        /* Its stop strings over the body's bytes as a "generated text", in uneven pieces. */
        StopMatcher m;
        ByteBuf out = { 0 };
        if (stop_init_copy(&m, r.stop, r.n_stop) == 0) {
            size_t at = 0, step = 1, shown_n;
            const char *shown;
            int stopped = 0;
            while (at < len && !stopped) {
                size_t n = step < len - at ? step : len - at;
                stopped = stop_feed(&m, body + at, n, &shown, &shown_n) == 1;
                bytebuf_append(&out, shown, shown_n);
                at += n, step = step % 7 + 1;
            }
            if (!stopped) stop_flush(&m, &shown, &shown_n), bytebuf_append(&out, shown, shown_n);
            if (out.len > len) __builtin_trap(); /* never more text than came in */
            if (!stopped && (out.len != len || (len && memcmp(out.data, body, len)))) __builtin_trap();
            stop_free(&m);
        }
        bytebuf_free(&out);
        api_request_free(&r);
    } else {
        char *json = api_error_json(&e);
        if (!json || e.status != 400) __builtin_trap();
        free(json);
    }
    return 0;
}
