/**
 * @file reply.c
 * @brief Implementation of reply.h.
 */
#include "reply.h"

#include <errno.h>
#include <string.h>

#include "base/outfile.h"

static int put(FILE *out, ByteBuf *text, const char *s, size_t n, Err *err) {
    if (n && fwrite(s, 1, n, out) != n) return err_set(err, "standard output: write error: %s", strerror(errno));
    if (text && n && bytebuf_append(text, s, n)) return err_set(err, "out of memory");
    return 0;
}

/** Shows @p piece [n]: through the stop matcher when there is one; 1 when a stop string completed. */
static int show(StopMatcher *stop, FILE *out, ByteBuf *text, const char *piece, size_t n, Err *err) {
    int hit = 0;
    if (stop && (hit = stop_feed(stop, piece, n, &piece, &n)) < 0) return err_set(err, "out of memory");
    return put(out, text, piece, n, err) ? -1 : hit;
}

int reply_stream(Generator *g, DecodeStream *ds, int eos, long limit, StopMatcher *stop, FILE *out, IntVec *ids,
                 ByteBuf *text, ReplyEnd *end, Err *err) {
    int toks[17], k;
    long produced = 0;
    *end = REPLY_LIMIT;
    const char *piece;
    size_t len;
    if (stop) stop_reset(stop);
    while (limit < 0 || produced < limit) {
        if (out_interrupted()) {
            *end = REPLY_STOPPED;
            break;
        }
        if (gen_room(g) < 1) {
            *end = REPLY_CONTEXT_FULL;
            break;
        }
        if (gen_next(g, toks, &k, err)) return -1;
        int used = 0, ended = 0;
        for (int i = 0; i < k && (limit < 0 || produced < limit); i++) {
            produced++;
            used++;
            if (toks[i] == eos) {
                ended = 1;
                break;
            }
            if (ids && intvec_push(ids, toks[i])) return err_set(err, "out of memory");
            if (decode_stream_step(ds, toks[i], &piece, &len, err)) return -1;
            int hit = show(stop, out, text, piece, len, err);
            if (hit < 0) return -1;
            if (hit) {
                ended = 2;
                break;
            }
        }
        /* A speculative step may return tokens past the EOS, the stop string or the limit: they never happened. */
        if (used < k && gen_keep(g, used, err)) return -1;
        if (fflush(out) != 0 || ferror(out)) return err_set(err, "standard output: write error: %s", strerror(errno));
        if (ended) {
            *end = ended == 2 ? REPLY_STOP_STRING : REPLY_EOS;
            break;
        }
    }
    if (decode_stream_flush(ds, &piece, &len, err)) return -1;
    if (*end != REPLY_STOP_STRING) {
        if (show(stop, out, text, piece, len, err) < 0) return -1;
        if (stop) {
            stop_flush(stop, &piece, &len);
            if (put(out, text, piece, len, err)) return -1;
        }
    }
    if (fflush(out) != 0 || ferror(out)) return err_set(err, "standard output: write error: %s", strerror(errno));
    return 0;
}
