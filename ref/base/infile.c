/**
 * @file infile.c
 * @brief Implementation of infile.h.
 */
#include "infile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *kind_of(mode_t m) {
    return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO" : S_ISCHR(m) ? "a character device" :
           S_ISBLK(m) ? "a block device" : S_ISSOCK(m) ? "a socket" : "not a regular file";
}

int infile_open(const char *path, int *fd, struct stat *sb, Err *err) {
    *fd = -1;
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever. */
    int f = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (f < 0) return err_set(err, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(f, sb) != 0) {
        int e = errno;
        close(f);
        return err_set(err, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb->st_mode)) {
        close(f);
        return err_set(err, "%s: is %s, not a regular file", path, kind_of(sb->st_mode));
    }
    int fl = fcntl(f, F_GETFL);
    if (fl >= 0) fcntl(f, F_SETFL, fl & ~O_NONBLOCK);
    *fd = f;
    return 0;
}

int infile_pread(int fd, void *buf, size_t n, uint64_t off, const char *label, Err *err) {
    char *p = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t k = pread(fd, p + done, n - done, (off_t)(off + done));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return err_set(err, "%s: read error: %s", label, strerror(errno));
        if (k == 0)
            return err_set(err, "%s: ends at byte %llu, expected %llu (the file shrank while in use)", label,
                           (unsigned long long)(off + done), (unsigned long long)(off + n));
        done += (size_t)k;
    }
    return 0;
}

int read_input(const char *path, size_t max_bytes, char **data, size_t *len, Err *err) {
    if (strcmp(path, "-") != 0) {
        if (read_file(path, max_bytes, data, len, err) == 0) return 0;
        /* refused as a stream (a FIFO, a terminal): this input can read one, so say how */
        struct stat sb;
        if (stat(path, &sb) == 0 && (S_ISFIFO(sb.st_mode) || S_ISCHR(sb.st_mode))) {
            size_t n = strlen(err->msg);
            snprintf(err->msg + n, sizeof err->msg - n, " (give '-' to read standard input)");
        }
        return -1;
    }
    *data = NULL;
    *len = 0;
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) return err_set(err, "standard input: out of memory");
    for (;;) {
        if (n == cap) {
            if (cap > max_bytes) {
                free(buf);
                return err_set(err, "standard input: more than the %zu bytes allowed", max_bytes);
            }
            char *g = realloc(buf, 2 * cap + 1);
            if (!g) {
                free(buf);
                return err_set(err, "standard input: out of memory");
            }
            buf = g;
            cap *= 2;
        }
        ssize_t k = read(STDIN_FILENO, buf + n, cap - n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            int e = errno;
            free(buf);
            return err_set(err, "standard input: read error: %s", strerror(e));
        }
        if (k == 0) break;
        n += (size_t)k;
    }
    if (n > max_bytes) {
        free(buf);
        return err_set(err, "standard input: more than the %zu bytes allowed", max_bytes);
    }
    buf[n] = 0;
    *data = buf;
    *len = n;
    return 0;
}
