/**
 * @file reply.c
 * @brief Implementation of reply.h.
 */
#include "reply.h"

#include <errno.h>
#include <string.h>

#include "base/outfile.h"

/** Writes @p s [n] to @p out (through @p reasoning's splitter when set) and records it in @p text. */
static int put(FILE *out, ChatReasoning *reasoning, ByteBuf *text, const char *s, size_t n, int last, Err *err) {
    ByteBuf shown = { 0 };
    int rc = 0;
    if (reasoning && (chat_reasoning_feed(reasoning, s, n, &shown) || (last && chat_reasoning_flush(reasoning, &shown))))
        rc = err_set(err, "out of memory");
    const char *w = reasoning ? shown.data : s;
    size_t wn = reasoning ? shown.len : n;
    if (!rc && wn && fwrite(w, 1, wn, out) != wn) rc = err_set(err, "standard output: write error: %s", strerror(errno));
    if (!rc && text && n && bytebuf_append(text, s, n)) rc = err_set(err, "out of memory");
    bytebuf_free(&shown);
    return rc;
}

/** Shows @p piece [n]: through the stop matcher when there is one; 1 when a stop string completed. */
static int show(StopMatcher *stop, ChatReasoning *reasoning, FILE *out, ByteBuf *text, const char *piece, size_t n,
                Err *err) {
    int hit = 0;
    if (stop && (hit = stop_feed(stop, piece, n, &piece, &n)) < 0) return err_set(err, "out of memory");
    return put(out, reasoning, text, piece, n, 0, err) ? -1 : hit;
}

int reply_stream(Generator *g, DecodeStream *ds, int eos, long limit, StopMatcher *stop, ChatReasoning *reasoning,
                 FILE *out, IntVec *ids, ByteBuf *text, ReplyEnd *end, Err *err) {
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
            int hit = show(stop, reasoning, out, text, piece, len, err);
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
    if (*end != REPLY_STOP_STRING && show(stop, reasoning, out, text, piece, len, err) < 0) return -1;
    if (*end != REPLY_STOP_STRING && stop) stop_flush(stop, &piece, &len);
    else piece = "", len = 0;
    if (put(out, reasoning, text, piece, len, 1, err)) return -1; /* the held text, and the splitter's end */
    if (fflush(out) != 0 || ferror(out)) return err_set(err, "standard output: write error: %s", strerror(errno));
    return 0;
}
