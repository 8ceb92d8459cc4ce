/**
 * @file util_compare.h
 * @brief Test helpers: comparing float arrays the way DEVELOPERS.md asks (max relative
 *        difference max|a−b|/max|b| and per-row argmax agreement), reading float32 files.
 */
#ifndef DSV3_TEST_UTIL_COMPARE_H
#define DSV3_TEST_UTIL_COMPARE_H
#include <stddef.h>

/** max|a−b| / max|b| over n values (0 if b is all zero and a == b). */
double max_rel_diff(const float *a, const float *b, size_t n);
/** Rows (of @p cols values) whose argmax agrees between a and b. */
int argmax_agree(const float *a, const float *b, int rows, int cols);
/** Median over rows of max|a−b|/max|b| per row. */
double median_row_rel_diff(const float *a, const float *b, int rows, int cols);
/** Reads a whole file (NUL-terminated, length in *n); NULL if it cannot be read. */
unsigned char *read_bytes(const char *path, size_t *n);
/** Reads a float32 file; returns a malloc'd array and its count in *n (NULL on error). */
float *read_f32(const char *path, size_t *n);
/** Reads a JSON array of integers (e.g. golden ids.json); malloc'd, count in *n. */
int *read_ids_json(const char *path, int *n);
/** "5,17,3" from ids (malloc'd). */
char *ids_to_csv(const int *ids, int n);
/** A fresh empty directory under $TMPDIR (malloc'd path). */
char *make_temp_dir(const char *tag);
/** rm -rf of a directory made by make_temp_dir. */
void remove_tree(const char *dir);

/** The scratch directory of a test program, made by test_tmp_setup (NULL before). */
extern char *test_tmp;
/** cmocka group setup: creates test_tmp (also stored in *state). */
int test_tmp_setup(void **state);
/** cmocka group teardown: removes test_tmp and everything in it. */
int test_tmp_teardown(void **state);

#endif
