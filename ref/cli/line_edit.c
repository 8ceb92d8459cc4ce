/**
 * @file line_edit.c
 * @brief Implementation of line_edit.h with libedit's native interface (histedit.h).
 */
#include "line_edit.h"

#include <histedit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>
#include <wchar.h>

struct LineEditor {
    EditLine *el;
    History *hist;
    const char *prompt;
    int interrupted; /* Ctrl-C ended the last el_gets */
    char *line;      /* the last line, without its newline */
    size_t cap;
};

static char *show_prompt(EditLine *el) {
    LineEditor *e;
    el_get(el, EL_CLIENTDATA, &e);
    return (char *)e->prompt;
}

/** Ctrl-C: ends el_gets as at the end of input; the flag tells the two apart. */
static unsigned char on_ctrl_c(EditLine *el, int ch) {
    (void)ch;
    LineEditor *e;
    el_get(el, EL_CLIENTDATA, &e);
    e->interrupted = 1;
    return CC_EOF;
}

LineEditor *line_editor_open(const char *prompt) {
    if (!isatty(0) || !isatty(1)) return NULL;
    LineEditor *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->prompt = prompt;
    e->el = el_init("dsv3", stdin, stdout, stderr);
    e->hist = history_init();
    if (!e->el || !e->hist) {
        line_editor_close(e);
        return NULL;
    }
    HistEvent ev;
    history(e->hist, &ev, H_SETSIZE, 1000);
    history(e->hist, &ev, H_SETUNIQUE, 1);
    el_set(e->el, EL_CLIENTDATA, e);
    el_set(e->el, EL_EDITOR, "emacs");
    el_set(e->el, EL_PROMPT, show_prompt);
    el_set(e->el, EL_HIST, history, e->hist);
    el_set(e->el, EL_SETTY, "-d", "-isig", NULL); /* Ctrl-C is a key while a line is edited */
    /* the wide form: el_set would keep converted copies of the two strings that el_end never frees */
    el_wset(e->el, EL_ADDFN, L"dsv3-interrupt", L"discard the line", on_ctrl_c);
    el_set(e->el, EL_BIND, "^C", "dsv3-interrupt", NULL);
    el_source(e->el, NULL); /* ~/.editrc, as other libedit programs */
    return e;
}

int line_editor_read(LineEditor *e, const char **line, size_t *len) {
    int count = 0;
    e->interrupted = 0;
    /* libedit prints the prompt before it switches the terminal to its editing mode: a key typed
     * in between (a quick second Ctrl-C) would still meet the normal mode — echoed twice, or sent
     * as SIGINT. Switching first (no ISIG, ECHO or ICANON), and back afterwards, closes that gap. */
    struct termios normal;
    int have = tcgetattr(0, &normal) == 0;
    if (have) {
        struct termios t = normal;
        t.c_lflag &= ~(tcflag_t)(ISIG | ECHO | ICANON);
        t.c_cc[VMIN] = 1, t.c_cc[VTIME] = 0;
        tcsetattr(0, TCSANOW, &t);
    }
    const char *s = el_gets(e->el, &count);
    if (have) tcsetattr(0, TCSANOW, &normal);
    if (e->interrupted) return LINE_INTERRUPT;
    if (!s || count <= 0) return LINE_EOF;
    size_t n = strlen(s);
    if (n + 1 > e->cap) {
        char *g = realloc(e->line, n + 1);
        if (!g) return LINE_EOF;
        e->line = g, e->cap = n + 1;
    }
    memcpy(e->line, s, n + 1);
    while (n > 0 && (e->line[n - 1] == '\n' || e->line[n - 1] == '\r')) e->line[--n] = 0;
    if (n) {
        HistEvent ev;
        history(e->hist, &ev, H_ENTER, e->line);
    }
    *line = e->line;
    *len = n;
    return LINE_OK;
}

void line_editor_close(LineEditor *e) {
    if (!e) return;
    if (e->el) el_end(e->el);
    if (e->hist) history_end(e->hist);
    free(e->line);
    free(e);
}
