/**
 * @file bench_serve.c
 * @brief `make bench-serve`: `dsv3 serve` against `dsv3 generate --batch` on the same prompts, in
 *        the same run. For 1, 4 and 16 concurrent streaming clients (the server with as many
 *        slots, --batch with as many --parallel): generated tokens/s, time to first token and
 *        inter-token latency p50/p99; at 1 client, TTFT over a lone `dsv3 generate`'s prefill
 *        of the same prompt (the seconds it reports for it).
 *
 *   bench_serve --model DIR [--label NAME] [--requests N] [--tokens N] [--clients 1,4,16]
 *
 * Targets (docs/benchmarks.md): ≥ 0.9× --batch's tokens/s at 16 clients; TTFT ≤ 1.2× the prefill.
 */
#define _DEFAULT_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "util_http.h"
#include "util_run.h"

/* A passage to cut prompts from (Genesis 1, King James Version, public domain). */
static const char *passage =
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was "
    "upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God said, Let there be light: "
    "and there was light. And God saw the light, that it was good: and God divided the light from the darkness. And God "
    "called the light Day, and the darkness he called Night. And the evening and the morning were the first day. And God "
    "said, Let there be a firmament in the midst of the waters, and let it divide the waters from the waters. And God made "
    "the firmament, and divided the waters which were under the firmament from the waters which were above the firmament: "
    "and it was so. And God called the firmament Heaven. And the evening and the morning were the second day. And God said, "
    "Let the waters under the heaven be gathered together unto one place, and let the dry land appear: and it was so. And "
    "God called the dry land Earth; and the gathering together of the waters called he Seas: and God saw that it was good. "
    "And God said, Let the earth bring forth grass, the herb yielding seed, and the fruit tree yielding fruit after his "
    "kind, whose seed is in itself, upon the earth: and it was so. And the earth brought forth grass, and herb yielding "
    "seed after his kind, and the tree yielding fruit, whose seed was in itself, after his kind: and God saw that it was "
    "good. And the evening and the morning were the third day. And God said, Let there be lights in the firmament of the "
    "heaven to divide the day from the night; and let them be for signs, and for seasons, and for days, and years: And let "
    "them be for lights in the firmament of the heaven to give light upon the earth: and it was so. And God made two great "
    "lights; the greater light to rule the day, and the lesser light to rule the night: he made the stars also.";

enum { MAX_REQ = 64 };
static char prompts[MAX_REQ][4096];
static int n_req = 16, n_tokens = 32;

/** Prompt i: the passage's first 40..220 words (lengths cycle), as one line. */
static void make_prompts(void) {
    for (int i = 0; i < n_req; i++) {
        int words = 40 + (i * 53) % 181, w = 0;
        size_t k = 0;
        for (const char *p = passage; *p && k + 1 < sizeof prompts[i]; p++) {
            if (*p == ' ' && ++w == words) break;
            prompts[i][k++] = *p;
        }
        prompts[i][k] = 0;
    }
}

typedef struct {
    int port, thread, clients;
    double ttft[MAX_REQ];
    int n_ttft;
    double *itl;
    int n_itl, cap_itl;
    long generated;
    int failed;
} Client;

/** One streaming completion: timestamps of its content events. */
static void stream_one(Client *c, const char *prompt) {
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "prompt", prompt);
    cJSON_AddNumberToObject(b, "max_tokens", n_tokens);
    cJSON_AddNumberToObject(b, "temperature", 0);
    cJSON_AddBoolToObject(b, "stream", 1);
    cJSON_AddItemToObject(b, "stream_options", cJSON_CreateObject());
    cJSON_AddBoolToObject(cJSON_GetObjectItem(b, "stream_options"), "include_usage", 1);
    char *body = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    int fd = http_connect(c->port);
    char head[256];
    int hn = snprintf(head, sizeof head, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                                         "Content-Length: %zu\r\n\r\n", strlen(body));
    double t0 = test_now(), last = 0;
    if (fd < 0 || http_send_all(fd, head, (size_t)hn) || http_send_all(fd, body, strlen(body))) {
        c->failed++;
        free(body);
        if (fd >= 0) close(fd);
        return;
    }
    free(body);
    size_t cap = 1 << 16, n = 0, scan = 0;
    char *buf = malloc(cap + 1);
    int first = 1, done = 0;
    while (!done) {
        if (n == cap) buf = realloc(buf, (cap *= 2) + 1);
        ssize_t k = recv(fd, buf + n, cap - n, 0);
        if (k <= 0) break;
        n += (size_t)k;
        buf[n] = 0;
        double now = test_now();
        /* events: "data: {...}\n\n" (inside chunked framing: each event is whole in one chunk) */
        char *p;
        while ((p = strstr(buf + scan, "data: ")) && strstr(p, "\n\n")) {
            char *end = strstr(p, "\n\n");
            *end = 0;
            if (!strcmp(p + 6, "[DONE]")) done = 1;
            cJSON *j = cJSON_Parse(p + 6);
            const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
            const cJSON *text = cJSON_GetObjectItem(ch, "text"), *usage = cJSON_GetObjectItem(j, "usage");
            if (cJSON_IsString(text) && text->valuestring[0]) {
                if (first) c->ttft[c->n_ttft++] = now - t0, first = 0;
                else {
                    if (c->n_itl == c->cap_itl) c->itl = realloc(c->itl, (size_t)(c->cap_itl = c->cap_itl * 2 + 256) * sizeof *c->itl);
                    c->itl[c->n_itl++] = now - last;
                }
                last = now;
            }
            if (usage) c->generated += (long)cJSON_GetObjectItem(usage, "completion_tokens")->valuedouble;
            cJSON_Delete(j);
            *end = '\n';
            scan = (size_t)(end + 2 - buf);
        }
    }
    if (!done) c->failed++;
    free(buf);
    close(fd);
}

static void *client_thread(void *arg) {
    Client *c = arg;
    for (int i = c->thread; i < n_req; i += c->clients) stream_one(c, prompts[i]);
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, int n, double q) {
    if (n == 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    int i = (int)(q * (n - 1) + 0.5);
    return v[i];
}

/** The number after @p key in @p s, or -1. */
static double number_after(const char *s, const char *key) {
    const char *p = s ? strstr(s, key) : NULL;
    return p ? atof(p + strlen(key)) : -1;
}

int main(int argc, char **argv) {
    const char *model = NULL, *label = NULL, *clients_arg = "1,4,16";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--label") && i + 1 < argc) label = argv[++i];
        else if (!strcmp(argv[i], "--requests") && i + 1 < argc) n_req = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) n_tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--clients") && i + 1 < argc) clients_arg = argv[++i];
        else {
            fprintf(stderr, "usage: bench_serve --model DIR [--label NAME] [--requests N] [--tokens N] [--clients 1,4,16]\n");
            return 2;
        }
    }
    if (!model || n_req < 1 || n_req > MAX_REQ || n_tokens < 1) {
        fprintf(stderr, "bench_serve: --model DIR is required; 1 ≤ --requests ≤ %d\n", MAX_REQ);
        return 2;
    }
    if (!label) label = model;
    make_prompts();
    char file[256];
    snprintf(file, sizeof file, "%s/dsv3-bench-serve-%d.txt", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    FILE *f = fopen(file, "w");
    for (int i = 0; i < n_req; i++) fprintf(f, "%s\n", prompts[i]);
    fclose(f);
    /* A lone generate's prefill of each prompt: what TTFT at one client is held against. */
    double prefill = 0;
    for (int i = 0; i < n_req; i++) {
        RunResult r = run_shell(NULL, "%s generate -m %s -p '%s' -n 1 --temp 0 -b 256", dsv3_bin(), model, prompts[i]);
        double n = number_after(r.err, "[prompt "), tps = number_after(r.err, "prefill ");
        if (r.status || n <= 0 || tps <= 0) {
            fprintf(stderr, "bench_serve: generate failed: %s\n", r.err);
            return 1;
        }
        prefill += n / tps;
        run_result_free(&r);
    }
    printf("%s: %d prompts of 40..220 words, %d tokens each, greedy; lone generate prefill %.1f ms per prompt\n", label, n_req,
           n_tokens, 1e3 * prefill / n_req);
    printf("| model | clients | serve tokens/s | generate --batch tokens/s | ratio | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | TTFT / prefill |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n");
    double ratio16 = -1, ttft_ratio = -1;
    char list[64];
    snprintf(list, sizeof list, "%s", clients_arg);
    for (char *save, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int nc = atoi(tok);
        if (nc < 1 || nc > n_req) continue;
        RunResult b = run_shell(NULL, "%s generate -m %s --batch %s --parallel %d -n %d --temp 0 -b 256", dsv3_bin(), model, file, nc,
                                n_tokens);
        double batch_tps = number_after(strstr(b.err, " in "), "s: ");
        const char *tp = strstr(b.err, "tokens/s generated");
        if (tp) { /* "... in T s: X tokens/s generated" */
            const char *q = tp;
            while (q > b.err && q[-1] != ':') q--;
            batch_tps = atof(q);
        }
        run_result_free(&b);
        char args[1024];
        snprintf(args, sizeof args, "-m %s -np %d -b 256", model, nc);
        TestServer srv;
        if (test_server_start(&srv, args, 1)) return 1;
        Client cl[MAX_REQ];
        pthread_t th[MAX_REQ];
        memset(cl, 0, sizeof cl);
        double t0 = test_now();
        for (int t = 0; t < nc; t++) cl[t].port = srv.port, cl[t].thread = t, cl[t].clients = nc, pthread_create(&th[t], NULL, client_thread, &cl[t]);
        for (int t = 0; t < nc; t++) pthread_join(th[t], NULL);
        double wall = test_now() - t0;
        test_server_stop(&srv, SIGTERM, 10);
        double ttft[MAX_REQ], *itl = NULL, ttft_sum = 0;
        int nt = 0, ni = 0, failed = 0;
        long gen = 0;
        for (int t = 0; t < nc; t++) {
            for (int k = 0; k < cl[t].n_ttft; k++) ttft[nt++] = cl[t].ttft[k], ttft_sum += cl[t].ttft[k];
            itl = realloc(itl, (size_t)(ni + cl[t].n_itl + 1) * sizeof *itl);
            memcpy(itl + ni, cl[t].itl, (size_t)cl[t].n_itl * sizeof *itl);
            ni += cl[t].n_itl;
            gen += cl[t].generated;
            failed += cl[t].failed;
            free(cl[t].itl);
        }
        if (failed) fprintf(stderr, "bench_serve: %d requests failed\n", failed);
        double serve_tps = gen / wall, ratio = batch_tps > 0 ? serve_tps / batch_tps : 0;
        if (nc == 16) ratio16 = ratio;
        if (nc == 1) ttft_ratio = ttft_sum / prefill;
        printf("| %s | %d | %.1f | %.1f | %.2f | %.1f | %.1f | %.2f | %.2f | %s |\n", label, nc, serve_tps, batch_tps, ratio,
               1e3 * pct(ttft, nt, 0.5), 1e3 * pct(ttft, nt, 0.99), 1e3 * pct(itl, ni, 0.5), 1e3 * pct(itl, ni, 0.99),
               nc == 1 ? (snprintf(args, sizeof args, "%.2f", ttft_ratio), args) : "");
        free(itl);
        fflush(stdout);
    }
    unlink(file);
    if (ratio16 >= 0) printf("target: serve ≥ 0.9x generate --batch at 16 clients: %.2fx, %s\n", ratio16, ratio16 >= 0.9 ? "met" : "missed");
    if (ttft_ratio >= 0) printf("target: TTFT at 1 client ≤ 1.2x a lone generate's prefill: %.2fx, %s\n", ttft_ratio, ttft_ratio <= 1.2 ? "met" : "missed");
    return 0;
}
