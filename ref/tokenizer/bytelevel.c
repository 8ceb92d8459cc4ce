/**
 * @file bytelevel.c
 * @brief Implementation of bytelevel.h (the table is a formula, so it is computed, not stored).
 */
#include "bytelevel.h"

static int keeps_value(unsigned b) {
    return (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

/* The 68 remapped bytes, in order: 0x00..0x20 (33), 0x7f..0xa0 (34), 0xad (1). */
uint32_t bytelevel_char(unsigned char b) {
    if (keeps_value(b)) return b;
    if (b <= 0x20) return 256u + b;
    if (b <= 0xa0) return 256u + 33u + (b - 0x7fu);
    return 256u + 67u; /* 0xad */
}

int bytelevel_byte(uint32_t cp) {
    if (cp < 256) return keeps_value(cp) ? (int)cp : -1;
    uint32_t n = cp - 256;
    if (n < 33) return (int)n;
    if (n < 67) return (int)(0x7f + n - 33);
    return n == 67 ? 0xad : -1;
}

size_t utf8_encode(char out[4], uint32_t cp) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

size_t bytelevel_encode(const unsigned char *s, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        k += utf8_encode(out + k, bytelevel_char(s[i]));
    }
    return k;
}
