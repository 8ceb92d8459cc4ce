/**
 * @file bytelevel.h
 * @brief The GPT-2 byte ↔ character table of byte-level BPE (docs/model.md §9.2, docs/formats.md §2).
 *
 * Byte-level BPE never sees raw bytes: each byte is first replaced by one printable character
 * (tokenizers/src/pre_tokenizers/byte_level.rs: bytes_char): '!'..'~', '¡'..'¬' and '®'..'ÿ'
 * stand for themselves, the other 68 bytes (controls, space, DEL, U+00A0, U+00AD) become
 * U+0100 + n in increasing byte order, so ' ' is 'Ġ' (U+0120) and '\\n' is 'Ċ' (U+010A).
 * tokenizer.json stores vocabulary entries and merges in this form.
 */
#ifndef DSV3_BYTELEVEL_H
#define DSV3_BYTELEVEL_H

#include <stddef.h>
#include <stdint.h>

/** The code point that stands for byte @p b. */
uint32_t bytelevel_char(unsigned char b);

/** The byte that code point @p cp stands for, or -1 if @p cp is not in the table. */
int bytelevel_byte(uint32_t cp);

/** Writes code point @p cp as UTF-8 into @p out (4 bytes of room); returns the length. */
size_t utf8_encode(char out[4], uint32_t cp);

/**
 * Writes the byte-level form of @p n bytes (at most 2 output bytes per input byte) into
 * @p out, which must have room for 2·n bytes; returns the length written.
 */
size_t bytelevel_encode(const unsigned char *s, size_t n, char *out);

#endif /* DSV3_BYTELEVEL_H */
