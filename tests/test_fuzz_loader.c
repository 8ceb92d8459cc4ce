/**
 * @file test_fuzz_loader.c
 * @brief Deterministic mutation fuzzing of the loaders, run in every `make test` (the
 *        coverage-guided libFuzzer targets of tests/fuzz/ run under `make fuzz`).
 *
 * Starting from valid inputs (a real checkpoint header, config.json files), thousands of
 * mutants — bit flips, byte overwrites with boundary values, truncations, splices, digit
 * edits inside the JSON — go through st_parse_buffer and config_parse. Each must return 0 or
 * -1 with a non-empty one-line message; ASan/UBSan (make test-asan) catch any memory error.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model/config.h"
#include "base/rng.h"
#include "base/safetensors.h"
#include "util_compare.h"

/** One random mutation of buf[0..n) in place; may shrink *n. */
static void mutate(uint8_t *buf, size_t *n, size_t header_end, Rng *r) {
    static const uint8_t specials[] = { 0, 0xff, '"', '{', '}', '[', ']', ',', ':', '-', '9', '.', 'e', '\\', 0x80 };
    /* Aim most mutations at the header, where the parser lives. */
    size_t span = (rng_u32(r) % 4) ? header_end : *n;
    if (span == 0) return;
    size_t at = rng_u32(r) % span;
    switch (rng_u32(r) % 6) {
    case 0: buf[at] ^= (uint8_t)(1u << (rng_u32(r) % 8)); break;
    case 1: buf[at] = specials[rng_u32(r) % sizeof specials]; break;
    case 2: if (buf[at] >= '0' && buf[at] <= '9') buf[at] = (uint8_t)('0' + rng_u32(r) % 10); else buf[at] ^= 1; break;
    case 3: *n = at; break; /* truncate */
    case 4: { /* copy a chunk from elsewhere */
        size_t from = rng_u32(r) % span, len = 1 + rng_u32(r) % 16;
        if (from + len <= *n && at + len <= *n) memmove(buf + at, buf + from, len);
        break;
    }
    default: buf[at] = (uint8_t)rng_u32(r); break;
    }
}

static void safetensors_mutants(void **state) {
    (void)state;
    size_t n;
    uint8_t *orig = (uint8_t *)read_bytes("golden/official-tiny/model.safetensors", &n);
    assert_non_null(orig);
    /* The header plus a little data keeps each iteration cheap; the tail is fixed-length. */
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--) h = (h << 8) | orig[i];
    Rng r;
    rng_seed(&r, 2024);
    int ok = 0, rejected = 0;
    uint8_t *buf = malloc(n);
    for (int it = 0; it < 3000; it++) {
        size_t len = n;
        memcpy(buf, orig, n);
        int k = 1 + (int)(rng_u32(&r) % 4);
        for (int j = 0; j < k; j++) mutate(buf, &len, 8 + (size_t)h, &r);
        SafeTensors st;
        Err err;
        err.msg[0] = 0;
        memset(&st, 0, sizeof st);
        if (st_parse_buffer(&st, buf, len, 0, "mutant", &err) == 0) {
            ok++;
            for (int i = 0; i < st.n_tensors; i++)
                assert_true(st.tensors[i].data >= buf && st.tensors[i].data + st.tensors[i].nbytes <= buf + len);
        } else {
            rejected++;
            assert_true(err.msg[0] != 0);
            assert_null(strchr(err.msg, '\n'));
        }
        st_close(&st);
    }
    printf("    3000 safetensors mutants: %d accepted, %d rejected with a message\n", ok, rejected);
    assert_true(rejected > 2000);
    free(buf);
    free(orig);
}

static void config_mutants(void **state) {
    (void)state;
    const char *files[] = { "golden/official-tiny/config.json", "golden/fp8-small/config.json" };
    Rng r;
    rng_seed(&r, 7);
    int ok = 0, rejected = 0;
    for (size_t f = 0; f < 2; f++) {
        size_t n;
        uint8_t *orig = (uint8_t *)read_bytes(files[f], &n);
        assert_non_null(orig);
        uint8_t *buf = malloc(n + 1);
        for (int it = 0; it < 2000; it++) {
            size_t len = n;
            memcpy(buf, orig, n);
            int k = 1 + (int)(rng_u32(&r) % 3);
            for (int j = 0; j < k; j++) mutate(buf, &len, n, &r);
            Config c;
            Err err;
            err.msg[0] = 0;
            if (config_parse(&c, (const char *)buf, len, "mutant", &err) == 0) {
                ok++;
                assert_true(c.num_experts_per_tok <= c.n_routed_experts && c.topk_group <= c.n_group);
            } else {
                rejected++;
                assert_true(err.msg[0] != 0);
            }
        }
        free(buf);
        free(orig);
    }
    printf("    4000 config.json mutants: %d accepted, %d rejected with a message\n", ok, rejected);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(safetensors_mutants),
        cmocka_unit_test(config_mutants),
    };
    return cmocka_run_group_tests_name("fuzz_loader", tests, NULL, NULL);
}
