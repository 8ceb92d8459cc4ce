/**
 * @file metrics.c
 * @brief Prometheus counters and histograms of `dsv3 serve` (see metrics.h).
 */
#include "metrics.h"

#include <string.h>

static const double ttft_le[METRICS_BUCKETS] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 };
static const double itl_le[METRICS_BUCKETS] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5 };
static const double e2e_le[METRICS_BUCKETS] = { 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300 };
static const char *const ep_names[EP_COUNT] = { "chat_completions", "completions", "models", "health", "metrics",
                                                "tokenize", "detokenize", "webui", "other" };

void metrics_init(Metrics *m) {
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    m->ttft.le = ttft_le, m->itl.le = itl_le, m->e2e.le = e2e_le;
}

void metrics_free(Metrics *m) { pthread_mutex_destroy(&m->mu); }

void metrics_request(Metrics *m, MetricsEndpoint ep, int status) {
    pthread_mutex_lock(&m->mu);
    if (status >= 0 && status < 600) m->by_status[status]++;
    int cls = status / 100;
    m->requests[ep][cls >= 1 && cls <= 5 ? cls : 0]++;
    pthread_mutex_unlock(&m->mu);
}

void metrics_observe(Metrics *m, Histogram *h, double s) {
    pthread_mutex_lock(&m->mu);
    int b = 0;
    while (b < METRICS_BUCKETS && s > h->le[b]) b++;
    h->count[b]++;
    h->sum += s;
    h->n++;
    pthread_mutex_unlock(&m->mu);
}

void metrics_cancelled(Metrics *m) {
    pthread_mutex_lock(&m->mu);
    m->cancelled++;
    pthread_mutex_unlock(&m->mu);
}

static int histogram(ByteBuf *o, const char *name, const char *help, const Histogram *h) {
    int rc = bytebuf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int b = 0; b < METRICS_BUCKETS && rc == 0; b++) {
        cum += h->count[b];
        rc = bytebuf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[b], (unsigned long long)cum);
    }
    cum += h->count[METRICS_BUCKETS];
    if (rc == 0)
        rc = bytebuf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, (unsigned long long)cum, name,
                            h->sum, name, (unsigned long long)h->n);
    return rc;
}

static int counter(ByteBuf *o, const char *name, const char *type, const char *help, double v) {
    return bytebuf_printf(o, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

int metrics_render(Metrics *mm, const SchedStats *st, ByteBuf *o) {
    Metrics m;
    pthread_mutex_lock(&mm->mu);
    memcpy(&m, mm, sizeof m);
    pthread_mutex_unlock(&mm->mu);
    int rc = bytebuf_puts(o, "# HELP dsv3_requests_total HTTP requests answered, by endpoint and status class.\n"
                             "# TYPE dsv3_requests_total counter\n");
    static const char *const cls[6] = { "other", "1xx", "2xx", "3xx", "4xx", "5xx" };
    for (int e = 0; e < EP_COUNT && rc == 0; e++)
        for (int c = 0; c < 6 && rc == 0; c++)
            if (m.requests[e][c])
                rc = bytebuf_printf(o, "dsv3_requests_total{endpoint=\"%s\",status=\"%s\"} %llu\n", ep_names[e], cls[c],
                                    (unsigned long long)m.requests[e][c]);
    if (rc == 0)
        rc = bytebuf_puts(o, "# HELP dsv3_responses_total HTTP responses by status code.\n# TYPE dsv3_responses_total counter\n");
    for (int s = 0; s < 600 && rc == 0; s++)
        if (m.by_status[s]) rc = bytebuf_printf(o, "dsv3_responses_total{code=\"%d\"} %llu\n", s, (unsigned long long)m.by_status[s]);
    double tps = st->busy_seconds > 0 ? (double)st->generated / st->busy_seconds : 0.0;
    rc = rc || counter(o, "dsv3_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", (double)st->prompt_tokens) ||
         counter(o, "dsv3_prompt_tokens_cached_total", "counter", "Prompt tokens found in a slot's cache (prefix reuse), not prefilled.",
                 (double)st->cached_tokens) ||
         counter(o, "dsv3_generated_tokens_total", "counter", "Tokens generated.", (double)st->generated) ||
         counter(o, "dsv3_generated_tokens_per_second", "gauge", "Generated tokens per second of busy time (steps that ran the model).", tps) ||
         counter(o, "dsv3_steps_total", "counter", "Scheduler steps that ran the model.", (double)st->steps) ||
         counter(o, "dsv3_busy_seconds_total", "counter", "Seconds spent in steps that ran the model.", st->busy_seconds) ||
         counter(o, "dsv3_queue_depth", "gauge", "Requests waiting for a slot.", st->queued) ||
         counter(o, "dsv3_slots_busy", "gauge", "Slots generating a request.", st->busy) ||
         counter(o, "dsv3_slots_total", "gauge", "Slots (-np).", st->slots) ||
         counter(o, "dsv3_kv_cache_tokens_used", "gauge", "Positions held in the slots' KV caches (running requests and cached prefixes).",
                 (double)st->kv_used) ||
         counter(o, "dsv3_kv_cache_tokens_total", "gauge", "Positions the slots' KV caches hold at most (slots x context).", (double)st->kv_total) ||
         counter(o, "dsv3_mtp_draft_tokens_total", "counter", "MTP draft tokens proposed (--spec mtp).", (double)st->drafted) ||
         counter(o, "dsv3_mtp_accepted_tokens_total", "counter", "MTP draft tokens accepted.", (double)st->accepted) ||
         counter(o, "dsv3_requests_cancelled_total", "counter", "Requests whose client went away before the end.", (double)m.cancelled) ||
         histogram(o, "dsv3_time_to_first_token_seconds", "Seconds from a request's arrival to its first generated token.", &m.ttft) ||
         histogram(o, "dsv3_inter_token_latency_seconds", "Seconds between consecutive generated tokens of a request.", &m.itl) ||
         histogram(o, "dsv3_request_duration_seconds", "Seconds from a generation request's arrival to its end.", &m.e2e);
    return rc ? -1 : 0;
}
