/**
 * @file webui.c
 * @brief The chat page served at `GET /`: ref/serve/chat.html (one self-contained file,
 *        committed as written, no build step) assembled into the binary as it is.
 */
#include "webui.h"

/* The assembler copies the file's bytes (the path is relative to the repository root, where make runs). */
/** @cond */
__asm__(".section .rodata\n"
        ".global dsv3_webui_html\n"
        "dsv3_webui_html:\n"
        ".incbin \"ref/serve/chat.html\"\n"
        ".global dsv3_webui_html_end\n"
        "dsv3_webui_html_end:\n"
        ".byte 0\n"
        ".previous\n");

extern const char dsv3_webui_html[], dsv3_webui_html_end[];
/** @endcond */

const char *webui_html(size_t *len) {
    *len = (size_t)(dsv3_webui_html_end - dsv3_webui_html);
    return dsv3_webui_html;
}
