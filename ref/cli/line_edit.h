/**
 * @file line_edit.h
 * @brief Line editing and history for interactive input, over BSD libedit (emacs keys, arrows,
 *        Ctrl-R search, ~/.editrc). Kept apart from the chat so that histedit.h (which has a
 *        `Tokenizer` type of its own) meets no other header.
 *
 * While a line is edited the terminal's ISIG is off, so Ctrl-C arrives as a key: it discards the
 * line and is reported as LINE_INTERRUPT, instead of a signal that libedit would pass on to the
 * whole process group (the expert servers of `--ep` included).
 */
#ifndef DSV3_CLI_LINE_EDIT_H
#define DSV3_CLI_LINE_EDIT_H

#include <stddef.h>

/** An editor on the terminal of stdin/stdout (opaque). */
typedef struct LineEditor LineEditor;

/** What line_editor_read returns. */
enum { LINE_EOF = 0, LINE_OK = 1, LINE_INTERRUPT = 2 };

/** Opens an editor that shows @p prompt; NULL when stdin is not a terminal or libedit fails. */
LineEditor *line_editor_open(const char *prompt);

/**
 * Reads one line: LINE_OK with the text (no newline; valid until the next call) in @p line /
 * @p len, entered into the history when not empty; LINE_EOF at Ctrl-D on an empty line;
 * LINE_INTERRUPT at Ctrl-C.
 */
int line_editor_read(LineEditor *e, const char **line, size_t *len);

/** Restores the terminal and frees the editor (NULL is fine). */
void line_editor_close(LineEditor *e);

#endif
