/**
 * @file infile.h
 * @brief Opening inputs so that they cannot block: a path is opened with O_NONBLOCK and checked
 *        with fstat before anything is read, so a FIFO without a writer, a terminal or a
 *        directory given where a file is expected is a one-line error instead of a hang.
 *
 * Regular files only, except where a command reads a stream on purpose: read_input() takes
 * "-" for standard input (which may be a pipe or a terminal, and is read to its end).
 * Reads go through infile_pread(), for which a file that ends early (it shrank since its size
 * was taken) is an error naming the file.
 */
#ifndef DSV3_INFILE_H
#define DSV3_INFILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "util.h"

/**
 * Opens regular file @p path read-only without blocking (O_NONBLOCK, then fstat; the flag is
 * cleared afterwards). Anything else — a FIFO, a device node, a socket, a directory — is refused
 * with a message that names its type. The descriptor goes to @p fd, its status to @p sb.
 */
int infile_open(const char *path, int *fd, struct stat *sb, Err *err);

/** Reads exactly @p n bytes at offset @p off; fewer (the file shrank) or an I/O error is an error naming @p label. */
int infile_pread(int fd, void *buf, size_t n, uint64_t off, const char *label, Err *err);

/**
 * Reads @p path whole (at most @p max_bytes): a regular file as read_file() does, or all of
 * standard input when @p path is "-" (the one stream a command reads on purpose).
 */
int read_input(const char *path, size_t max_bytes, char **data, size_t *len, Err *err);

#endif /* DSV3_INFILE_H */
