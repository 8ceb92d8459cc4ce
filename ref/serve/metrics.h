/**
 * @file metrics.h
 * @brief The counters and histograms behind `GET /metrics` (Prometheus text format 0.0.4), and
 *        their rendering together with the scheduler's state.
 *
 * Histograms are cumulative-bucket counts as Prometheus defines them: bucket le=b counts the
 * observations ≤ b, `_sum` and `_count` follow. Every update takes the one mutex; a scrape copies.
 */
#ifndef DSV3_METRICS_H
#define DSV3_METRICS_H

#include <pthread.h>
#include <stdint.h>

#include "base/buf.h"
#include "generate/sched.h"

/** The endpoints requests are counted by. */
typedef enum {
    EP_CHAT, EP_COMPLETIONS, EP_MODELS, EP_HEALTH, EP_METRICS, EP_TOKENIZE, EP_DETOKENIZE, EP_WEBUI, EP_OTHER, EP_COUNT
} MetricsEndpoint;

/** Bucket bounds of a histogram, +Inf implied. */
#define METRICS_BUCKETS 12

/** One histogram. */
typedef struct {
    const double *le;               /**< [METRICS_BUCKETS] upper bounds */
    uint64_t count[METRICS_BUCKETS + 1]; /**< observations per bucket (the last: above every bound) */
    double sum;                     /**< of the observations */
    uint64_t n;                     /**< observations */
} Histogram;

/** Everything the server counts. */
typedef struct {
    pthread_mutex_t mu;             /**< guards the rest */
    uint64_t requests[EP_COUNT][6]; /**< by endpoint and status class index (see metrics.c) */
    uint64_t by_status[600];        /**< by HTTP status */
    uint64_t cancelled;             /**< requests ended by a client that went away */
    Histogram ttft;                 /**< seconds from arrival to the first token */
    Histogram itl;                  /**< seconds between a request's consecutive tokens */
    Histogram e2e;                  /**< seconds from arrival to the last byte of a generation */
} Metrics;

/** Zeroes the counters and sets the buckets. */
void metrics_init(Metrics *m);
/** Frees the mutex. */
void metrics_free(Metrics *m);
/** One answered request. */
void metrics_request(Metrics *m, MetricsEndpoint ep, int status);
/** One observation of @p h (a member of @p m). */
void metrics_observe(Metrics *m, Histogram *h, double seconds);
/** One request cancelled by its client. */
void metrics_cancelled(Metrics *m);
/** The Prometheus text of @p m and the scheduler snapshot @p st, appended to @p out. */
int metrics_render(Metrics *m, const SchedStats *st, ByteBuf *out);

#endif
