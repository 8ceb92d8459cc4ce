/**
 * @file chat_repl.c
 * @brief Implementation of chat_repl.h.
 *
 * Terminal handling: libedit edits the line in emacs mode with history (arrows, Ctrl-A/E/K/W,
 * Ctrl-R search). While a line is edited the terminal's ISIG is off, so Ctrl-C arrives as a key
 * (bound here: it discards the line; twice in a row quits) rather than as a signal that libedit
 * would pass on to the whole process group — expert servers of `--ep` included. While a reply
 * streams the terminal is in its normal mode and Ctrl-C is SIGINT, which base/outfile.h's
 * deferred interrupts turn into a request that reply_stream honours after the current token.
 */
#include "chat_repl.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/infile.h"
#include "base/outfile.h"
#include "cli_util.h"
#include "line_edit.h"
#include "reply.h"
#include "tokenizer/chat.h"

/** One message of the conversation (owned strings). */
typedef struct {
    char *role;
    char *content;
} Msg;

typedef struct {
    const ChatRepl *r;
    const char *cmd;
    Msg *m;          /* the conversation */
    int n, cap;
    int fresh;       /* the KV cache does not hold the conversation: render it anew at the next turn */
    int ended_eos;   /* the last reply ended with EOS (the closing token is the pending one) */
    int turns;       /* replies given */
    int ctrl_c;      /* the last input event was Ctrl-C (a second one quits) */
    LineEditor *ed;  /* NULL: stdin is not a terminal, lines are read plainly */
} Chat;

static const char HELP[] =
    "commands:\n"
    "  /help           this list\n"
    "  /reset          forget the conversation (the system message stays)\n"
    "  /system TEXT    set the system message (empty: none); the conversation is re-read with it\n"
    "  /save FILE      write the conversation as JSON messages ([{\"role\", \"content\"}, ...])\n"
    "  /load FILE      continue a conversation saved with /save (or any such JSON array)\n"
    "  /exit, /quit    leave (also Ctrl-D on an empty line, or Ctrl-C twice)\n"
    "  //TEXT          send TEXT starting with '/' as a message\n"
    "keys: arrows and Ctrl-A/E/K/W/R edit and recall lines; Ctrl-C stops a reply, or clears the line.\n"
    "When the context is full the oldest turns are dropped (the system message is kept).\n";

/* ---- messages --------------------------------------------------------------------------- */

static int msg_add(Chat *c, const char *role, const char *content, size_t len) {
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 16;
        Msg *g = realloc(c->m, (size_t)cap * sizeof *g);
        if (!g) return -1;
        c->m = g, c->cap = cap;
    }
    char *ro = strdup(role), *co = malloc(len + 1);
    if (!ro || !co) {
        free(ro), free(co);
        return -1;
    }
    memcpy(co, content, len), co[len] = 0;
    c->m[c->n++] = (Msg){ ro, co };
    return 0;
}

static void msg_drop(Chat *c, int i) {
    free(c->m[i].role), free(c->m[i].content);
    memmove(c->m + i, c->m + i + 1, (size_t)(c->n - i - 1) * sizeof *c->m);
    c->n--;
}

static void msgs_clear(Chat *c, int keep_system) {
    for (int i = c->n - 1; i >= 0; i--)
        if (!keep_system || strcmp(c->m[i].role, "system")) msg_drop(c, i);
}

/** The ids of messages [0, n) in the template, with the generation prompt when the last is the user's. */
static int render(const Chat *c, int n, IntVec *out, Err *err) {
    ChatMessage *cm = xcalloc((size_t)n + 1, sizeof *cm);
    if (!cm) return err_set(err, "out of memory");
    for (int i = 0; i < n; i++) cm[i] = (ChatMessage){ c->m[i].role, c->m[i].content };
    int *ids = NULL, k = 0;
    int rc = chat_template_encode(c->r->tpl, c->r->tok, cm, n, n > 0 && !strcmp(cm[n - 1].role, "user"), &ids, &k, err);
    free(cm);
    out->n = 0;
    if (rc == 0 && intvec_append(out, ids, (size_t)k)) rc = err_set(err, "out of memory");
    free(ids);
    return rc;
}

/* ---- the context ------------------------------------------------------------------------- */

/** Positions kept free for a reply when a turn starts: -n, at most a quarter of the context. */
static int64_t reply_reserve(const Chat *c) {
    int64_t quarter = c->r->g->ctx / 4, n = c->r->n_predict;
    int64_t r = n < 0 || n > quarter ? quarter : n;
    return r < 1 ? 1 : r;
}

/**
 * Context shift: drops the oldest non-system messages (a user turn with its reply) until the
 * conversation, plus @p extra tokens of a reply in progress and @p reserve free positions, takes
 * at most half the context (as llama.cpp keeps half), then feeds it from position 0.
 * @p ids receives the rendering. Fails, keeping every message, when even the last turn cannot fit.
 */
static int shift(Chat *c, const IntVec *extra, int64_t reserve, IntVec *ids, Err *err) {
    Generator *g = c->r->g;
    int64_t budget = g->ctx / 2, n_extra = extra ? (int64_t)extra->n : 0;
    int dropped = 0;
    for (;;) {
        if (render(c, c->n, ids, err)) return -1;
        int64_t need = (int64_t)ids->n + n_extra + reserve;
        int first = 0; /* the oldest droppable message; the last one (this turn) is never dropped */
        while (first < c->n - 1 && !strcmp(c->m[first].role, "system")) first++;
        if (need <= budget || first >= c->n - 1) {
            if ((int64_t)ids->n + n_extra + 1 > g->ctx)
                return err_set(err, "this turn alone is %lld tokens; the context holds %lld (-c)",
                               (long long)((int64_t)ids->n + n_extra), (long long)g->ctx);
            break;
        }
        msg_drop(c, first);
        dropped++;
        if (first < c->n - 1 && !strcmp(c->m[first].role, "assistant")) msg_drop(c, first), dropped++;
    }
    gen_reset(g);
    if (extra && intvec_append(ids, extra->v, extra->n)) return err_set(err, "out of memory");
    if (gen_feed(g, ids->v, (int64_t)ids->n, err)) return -1;
    fprintf(stderr, "\n[context full: dropped the %d oldest message%s%s; %lld of %lld positions in use]\n", dropped,
            dropped == 1 ? "" : "s", c->n && !strcmp(c->m[0].role, "system") ? ", kept the system message" : "",
            (long long)g->kv.len, (long long)g->ctx);
    return 0;
}

/* ---- one turn ---------------------------------------------------------------------------- */

/** The user's message @p text: fed (appended to the cache, or the conversation re-read), then the reply streamed. */
static int user_turn(Chat *c, const char *text, size_t len, Err *err) {
    const ChatRepl *r = c->r;
    Generator *g = r->g;
    if (!utf8_valid(text, len)) return fprintf(stderr, "dsv3 %s: that message is not valid UTF-8; try again\n", c->cmd), 0;
    if (memchr(text, 0, len)) return fprintf(stderr, "dsv3 %s: that message contains a NUL character; try again\n", c->cmd), 0;
    if (msg_add(c, "user", text, len)) return err_set(err, "out of memory");
    IntVec ids = { 0 }, rids = { 0 };
    ByteBuf rtext = { 0 };
    int rc = 0;
    int64_t reserve = reply_reserve(c);
    out_interrupts_defer(1); /* Ctrl-C now stops the reply instead of the process, from the prefill on */
    double t0 = now_seconds();
    int64_t before = g->stats.prefilled;
    if (c->fresh) {
        rc = render(c, c->n, &ids, err);
    } else {
        /* The previous reply's last token is pending and is fed first; a reply cut short (-n,
         * Ctrl-C) still has to be closed with EOS. */
        rc = chat_template_encode_user_turn(r->tpl, r->tok, c->m[c->n - 1].content, !c->ended_eos, 1, &ids, err);
    }
    if (rc == 0) {
        if (c->fresh && (int64_t)ids.n + reserve <= g->ctx) {
            gen_reset(g);
            rc = gen_feed(g, ids.v, (int64_t)ids.n, err);
        } else if (!c->fresh && (int64_t)ids.n + reserve <= gen_room(g)) {
            rc = gen_feed(g, ids.v, (int64_t)ids.n, err);
        } else {
            rc = shift(c, NULL, reserve, &ids, err);
            if (rc && !strstr(err->msg, "this turn alone")) goto done;
            if (rc) { /* too long even alone: say so, forget the message, keep the conversation */
                fprintf(stderr, "dsv3 %s: %s; try a shorter message\n", c->cmd, err->msg);
                msg_drop(c, c->n - 1);
                c->fresh = 1; /* the cache may hold a rendering of fewer messages now */
                rc = 0;
                goto done;
            }
        }
    }
    if (rc) goto done;
    c->fresh = 0;
    double t_prefill = now_seconds() - t0;
    int64_t gen0 = g->stats.generated, prefilled = g->stats.prefilled - before;
    double d0 = g->stats.decode_seconds;
    ReplyEnd end;
    long left = r->n_predict;
    chat_reasoning_free(r->reasoning);
    chat_reasoning_init(r->reasoning, r->reasoning_mode, chat_template_opens_reasoning(r->tpl));
    for (;;) {
        size_t had = rids.n;
        rc = reply_stream(g, r->ds, r->eos, left, r->stop, r->reasoning, stdout, &rids, &rtext, &end, err);
        if (rc || end != REPLY_CONTEXT_FULL) break;
        if (left > 0) left -= (long)(rids.n - had); /* the ids this piece produced */
        /* Mid-reply: drop old turns and go on with the reply where it stopped. */
        if (shift(c, &rids, 1, &ids, err)) {
            fprintf(stderr, "\n[context full: %s; reply cut]\n", err->msg);
            c->fresh = 1;
            end = REPLY_LIMIT;
            break;
        }
    }
    int stopped = out_interrupted() || end == REPLY_STOPPED;
    out_interrupts_defer(0);
    if (rc) goto done;
    printf("\n");
    fflush(stdout);
    if (stopped) fprintf(stderr, "[stopped]\n");
    c->ctrl_c = stopped;
    c->ended_eos = end == REPLY_EOS;
    if (msg_add(c, "assistant", rtext.data ? rtext.data : "", rtext.len)) {
        rc = err_set(err, "out of memory");
        goto done;
    }
    c->turns++;
    int64_t gen = g->stats.generated - gen0;
    fprintf(stderr, "[turn %d: prefilled %lld new tokens (%.1f tokens/s), generated %lld (%.1f tokens/s), cache %lld"
                    " positions]\n",
            c->turns, (long long)prefilled, prefilled / (t_prefill + 1e-9), (long long)gen,
            gen / (g->stats.decode_seconds - d0 + 1e-9), (long long)g->kv.len);
done:
    out_interrupts_defer(0);
    free(ids.v), free(rids.v);
    bytebuf_free(&rtext);
    return rc;
}

/* ---- commands ---------------------------------------------------------------------------- */

static void cmd_save(Chat *c, const char *path) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < c->n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "role", c->m[i].role);
        cJSON_AddStringToObject(o, "content", c->m[i].content);
        cJSON_AddItemToArray(a, o);
    }
    char *text = a ? cJSON_Print(a) : NULL;
    cJSON_Delete(a);
    Err err = { "" };
    if (!text) fprintf(stderr, "dsv3 %s: /save: out of memory\n", c->cmd);
    else if (write_file_atomic(path, text, strlen(text), &err)) fprintf(stderr, "dsv3 %s: /save: %s\n", c->cmd, err.msg);
    else fprintf(stderr, "[saved %d message%s to %s]\n", c->n, c->n == 1 ? "" : "s", path);
    free(text);
}

static void cmd_load(Chat *c, const char *path) {
    char *data;
    size_t len;
    Err err = { "" };
    ChatLog log;
    if (read_file(path, 64u << 20, &data, &len, &err)) {
        fprintf(stderr, "dsv3 %s: /load: %s\n", c->cmd, err.msg);
        return;
    }
    if (chat_parse_json(data, len, &log, &err)) {
        fprintf(stderr, "dsv3 %s: /load: %s: %s\n", c->cmd, path, err.msg);
        free(data);
        return;
    }
    msgs_clear(c, 0);
    for (int i = 0; i < log.n; i++)
        if (msg_add(c, log.msg[i].role, log.msg[i].content, strlen(log.msg[i].content))) break;
    chat_log_free(&log);
    free(data);
    c->fresh = 1, c->ended_eos = 1;
    fprintf(stderr, "[loaded %d message%s from %s; the conversation continues with your next message]\n", c->n,
            c->n == 1 ? "" : "s", path);
}

static void cmd_system(Chat *c, const char *text) {
    if (!utf8_valid(text, strlen(text))) {
        fprintf(stderr, "dsv3 %s: /system: not valid UTF-8\n", c->cmd);
        return;
    }
    for (int i = c->n - 1; i >= 0; i--)
        if (!strcmp(c->m[i].role, "system")) msg_drop(c, i);
    if (*text) {
        if (msg_add(c, "system", text, strlen(text))) return;
        Msg s = c->m[c->n - 1]; /* the system message goes first */
        memmove(c->m + 1, c->m, (size_t)(c->n - 1) * sizeof *c->m);
        c->m[0] = s;
    }
    c->fresh = 1;
    fprintf(stderr, *text ? "[system message set; the conversation is re-read with it at your next message]\n"
                          : "[no system message; the conversation is re-read at your next message]\n");
}

/** Whether the first @p n bytes of @p line are the command word @p s. */
static int is_word(const char *line, size_t n, const char *s) { return n == strlen(s) && !strncmp(line, s, n); }

/** Runs the /command in @p line; 1 when the chat should end. */
static int command(Chat *c, const char *line) {
    const char *arg = strchr(line, ' ');
    size_t n = arg ? (size_t)(arg - line) : strlen(line);
    while (arg && *arg == ' ') arg++;
    if (is_word(line, n, "/exit") || is_word(line, n, "/quit")) return 1;
    if (is_word(line, n, "/help") || is_word(line, n, "/?")) fputs(HELP, stdout), fflush(stdout);
    else if (is_word(line, n, "/reset")) {
        msgs_clear(c, 1);
        c->fresh = 1;
        fprintf(stderr, "[conversation cleared%s]\n", c->n ? "; the system message stays" : "");
    } else if (is_word(line, n, "/system")) cmd_system(c, arg ? arg : "");
    else if (is_word(line, n, "/save") || is_word(line, n, "/load")) {
        if (!arg || !*arg) fprintf(stderr, "dsv3 %s: %.*s needs a file name\n", c->cmd, (int)n, line);
        else if (is_word(line, n, "/save")) cmd_save(c, arg);
        else cmd_load(c, arg);
    } else fprintf(stderr, "dsv3 %s: unknown command %.*s (/help lists them; //text sends text starting with '/')\n", c->cmd,
                   (int)(n > 40 ? 40 : n), line);
    return 0;
}

/* ---- input ------------------------------------------------------------------------------- */

/**
 * The next line into *buf (without the newline; length *len): 1, or 0 at the end of input or to
 * quit (a second Ctrl-C). A Ctrl-C returns an empty line after a hint.
 */
static int next_line(Chat *c, char **buf, size_t *cap, size_t *len) {
    if (!c->ed) {
        ssize_t n = getline(buf, cap, stdin);
        if (n < 0) return 0;
        while (n > 0 && ((*buf)[n - 1] == '\n' || (*buf)[n - 1] == '\r')) n--;
        (*buf)[n] = 0;
        *len = (size_t)n;
        return 1;
    }
    int was = c->ctrl_c;
    const char *text;
    int got = line_editor_read(c->ed, &text, len);
    if (got == LINE_INTERRUPT) {
        if (was) return fprintf(stdout, "\n"), 0;
        fprintf(stdout, "^C\n(Ctrl-C again, Ctrl-D or /exit to quit)\n");
        fflush(stdout);
        c->ctrl_c = 1;
        *len = 0;
        return 1;
    }
    c->ctrl_c = 0;
    if (got == LINE_EOF) return fprintf(stdout, "\n"), 0; /* Ctrl-D on an empty line */
    if (*len + 1 > *cap) {
        char *g = realloc(*buf, *len + 1);
        if (!g) return 0;
        *buf = g, *cap = *len + 1;
    }
    memcpy(*buf, text, *len + 1);
    return 1;
}

int chat_repl(const char *cmd, const ChatRepl *r, int *turns) {
    Chat c;
    memset(&c, 0, sizeof c);
    c.r = r, c.cmd = cmd, c.fresh = 1, c.ended_eos = 1;
    *turns = 0;
    if (r->system && msg_add(&c, "system", r->system, strlen(r->system))) return cli_fail(cmd, EXIT_RUNTIME, "out of memory");
    c.ed = line_editor_open("> ");
    if (c.ed) fprintf(stderr, "[chat: /help lists the commands; Ctrl-C stops a reply; /exit or Ctrl-D quits]\n");
    char *line = NULL;
    size_t cap = 0, len;
    int rc = EXIT_OK;
    Err err = { "" };
    while (next_line(&c, &line, &cap, &len)) {
        size_t skip = 0;
        while (skip < len && (line[skip] == ' ' || line[skip] == '\t')) skip++;
        if (skip == len) continue; /* an empty line is no message */
        if (line[skip] == '/' && line[skip + 1] != '/') {
            if (command(&c, line + skip)) break;
            continue;
        }
        if (line[skip] == '/') skip++; /* "//text": the text "/text" */
        c.ctrl_c = 0;
        if (user_turn(&c, line + skip, len - skip, &err)) {
            rc = cli_fail(cmd, EXIT_RUNTIME, "%s", err.msg);
            break;
        }
    }
    free(line);
    line_editor_close(c.ed);
    msgs_clear(&c, 0);
    free(c.m);
    *turns = c.turns;
    return rc;
}
