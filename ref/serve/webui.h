/**
 * @file webui.h
 * @brief The chat page of `dsv3 serve` (ref/serve/chat.html, built into the binary).
 */
#ifndef DSV3_WEBUI_H
#define DSV3_WEBUI_H

#include <stddef.h>

/** The page's bytes (NUL-terminated) and their count in *len. */
const char *webui_html(size_t *len);

#endif
