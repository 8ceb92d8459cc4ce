/**
 * @file outfile.c
 * @brief Implementation of outfile.h: temporaries beside their targets, rename into place,
 *        directory swaps, the cleanup table read by the signal handler, checked stdout.
 *
 * The signal handler may only call async-signal-safe functions: it walks a fixed table of the
 * temporaries in progress (paths copied into static buffers, published by an atomic state
 * word), unlinks files, empties directories with getdents64/unlinkat (no opendir: it may
 * allocate) and removes them, then dies of the same signal with the default disposition.
 */
/** renameat2 (RENAME_EXCHANGE) and getdents64 are GNU extensions. */
#define _GNU_SOURCE
#include "outfile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------- */
/* the cleanup table                                                                       */

enum { SLOT_FREE = 0, SLOT_FILE = 1, SLOT_DIR = 2, N_SLOTS = 64, SLOT_PATH = 4096 };

/** One temporary in progress; the handler reads path only while state says it is valid. */
typedef struct {
    _Atomic int state;
    char path[SLOT_PATH];
} Slot;

static Slot slots[N_SLOTS];
static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile sig_atomic_t defer_on, interrupted;
static const int cleanup_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGPIPE };

/** Empties and removes a directory of files with async-signal-safe calls only. */
static void remove_dir_signal_safe(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
        char buf[4096];
        ssize_t n;
        while ((n = getdents64(fd, buf, sizeof buf)) > 0) {
            for (ssize_t off = 0; off < n;) {
                struct dirent64 *de = (struct dirent64 *)(buf + off);
                off += de->d_reclen;
                if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
                if (unlinkat(fd, de->d_name, 0) != 0) unlinkat(fd, de->d_name, AT_REMOVEDIR);
            }
        }
        close(fd);
    }
    rmdir(path);
}

static void cleanup_all(void) {
    for (int pass = SLOT_FILE; pass <= SLOT_DIR; pass++) /* files first: some live inside the directories */
        for (int i = N_SLOTS - 1; i >= 0; i--) {
            if (atomic_load(&slots[i].state) != pass) continue;
            if (pass == SLOT_FILE) unlink(slots[i].path);
            else remove_dir_signal_safe(slots[i].path);
        }
}

static void on_signal(int sig) {
    if (defer_on && (sig == SIGINT || sig == SIGTERM) && !interrupted) {
        interrupted = sig;
        return;
    }
    int saved = errno;
    cleanup_all();
    signal(sig, SIG_DFL);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, sig);
    sigprocmask(SIG_UNBLOCK, &s, NULL);
    raise(sig);
    errno = saved; /* not reached for the default disposition of these signals */
}

/** Installs the handler for the signals that still have their default disposition. */
static void install(void) {
    for (size_t i = 0; i < sizeof cleanup_signals / sizeof cleanup_signals[0]; i++) {
        struct sigaction old, sa;
        if (sigaction(cleanup_signals[i], NULL, &old) != 0 || old.sa_handler != SIG_DFL) continue;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(cleanup_signals[i], &sa, NULL);
    }
}

static void install_handlers(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, install);
}

/** Blocks (or restores) the cleanup signals around a rename and its table update. */
static void block_signals(sigset_t *old) {
    sigset_t s;
    sigemptyset(&s);
    for (size_t i = 0; i < sizeof cleanup_signals / sizeof cleanup_signals[0]; i++) sigaddset(&s, cleanup_signals[i]);
    pthread_sigmask(SIG_BLOCK, &s, old);
}

static void restore_signals(const sigset_t *old) { pthread_sigmask(SIG_SETMASK, old, NULL); }

static int slot_add(const char *path, int kind) {
    if (strlen(path) >= SLOT_PATH) return -1;
    install_handlers();
    pthread_mutex_lock(&slot_lock);
    int found = -1;
    for (int i = 0; i < N_SLOTS && found < 0; i++)
        if (atomic_load(&slots[i].state) == SLOT_FREE) found = i;
    if (found >= 0) {
        memcpy(slots[found].path, path, strlen(path) + 1);
        atomic_store(&slots[found].state, kind); /* publishes the path to the handler */
    }
    pthread_mutex_unlock(&slot_lock);
    return found;
}

static void slot_remove(int *slot) {
    if (*slot >= 0) atomic_store(&slots[*slot].state, SLOT_FREE);
    *slot = -1;
}

void out_interrupts_defer(int on) {
    install_handlers();
    interrupted = 0;
    defer_on = on;
}

int out_interrupted(void) { return interrupted; }

void out_interrupt_clear(void) { interrupted = 0; }

long out_test_kill_after(void) {
    const char *v = getenv("DSV3_TEST_KILL_AFTER");
    long n;
    return v && parse_long(v, 1, 1L << 40, &n) == 0 ? n : 0;
}

/** The test hook of outfile_write: counts writes since DSV3_TEST_KILL_AFTER got its current value. */
static void test_hook(void) {
    static char seen[32];
    static long writes;
    const char *v = getenv("DSV3_TEST_KILL_AFTER");
    if (!v) {
        seen[0] = 0;
        return;
    }
    if (strncmp(seen, v, sizeof seen - 1)) {
        snprintf(seen, sizeof seen, "%s", v);
        writes = 0;
    }
    long at = out_test_kill_after();
    if (at && ++writes == at) raise(SIGTERM);
}

/* ------------------------------------------------------------------------------------- */
/* names                                                                                   */

/** What marks a name as a temporary of ours: `.NAME.dsv3-HOST-PID-RANDOM`. */
#define TEMP_TAG ".dsv3-"

static uint32_t host_hash(void) {
    static uint32_t h;
    if (!h) {
        char host[256] = "";
        gethostname(host, sizeof host - 1);
        uint32_t x = 2166136261u;
        for (const char *p = host; *p; p++) x = (x ^ (unsigned char)*p) * 16777619u;
        h = x ? x : 1;
    }
    return h;
}

/** The directory part of @p path ("." when there is none), malloc'd. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* out_temp_name: dir/.NAME.dsv3-HOST-PID-RANDOM */
int out_temp_name(char *out, size_t cap, const char *target) {
    static _Atomic unsigned counter;
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const char *slash = strrchr(target, '/');
    const char *base = slash ? slash + 1 : target;
    int dlen = slash ? (int)(slash - target) + 1 : 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 16) ^
                 (uint64_t)atomic_fetch_add(&counter, 1) * 0x9e3779b97f4a7c15ull;
    char rnd[7];
    for (int i = 0; i < 6; i++) {
        x ^= x >> 29, x *= 0xbf58476d1ce4e5b9ull, x ^= x >> 32;
        rnd[i] = alnum[x % (sizeof alnum - 1)];
    }
    rnd[6] = 0;
    int n = snprintf(out, cap, "%.*s.%.200s" TEMP_TAG "%08x-%ld-%s", dlen, target, base, host_hash(), (long)getpid(), rnd);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/** Parses a temporary name: 1 with its host hash and pid, 0 when @p name is not one. */
static int parse_temp_name(const char *name, uint32_t *host, long *pid) {
    if (name[0] != '.') return 0;
    const char *tag = NULL;
    for (const char *p = strstr(name, TEMP_TAG); p; p = strstr(p + 1, TEMP_TAG)) tag = p;
    if (!tag || tag == name) return 0;
    const char *p = tag + strlen(TEMP_TAG);
    char *end;
    if (strlen(p) < 8 + 1 + 1 + 1 + 6) return 0;
    unsigned long h = strtoul(p, &end, 16);
    if (end != p + 8 || *end != '-') return 0;
    p = end + 1;
    long id = strtol(p, &end, 10);
    if (end == p || *end != '-' || id <= 0) return 0;
    p = end + 1;
    if (strlen(p) != 6) return 0;
    for (int i = 0; i < 6; i++)
        if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", p[i])) return 0;
    *host = (uint32_t)h;
    *pid = id;
    return 1;
}

int out_is_temp_name(const char *name) {
    uint32_t h;
    long pid;
    return parse_temp_name(name, &h, &pid);
}

/** Removes a file or a directory tree (not following symbolic links); 0 on success. */
static int remove_tree(const char *path, int depth) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(sb.st_mode)) return unlink(path);
    if (depth > 16) return -1;
    DIR *d = opendir(path);
    if (!d) return -1;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char child[4096];
        if (path_join(child, sizeof child, path, de->d_name) || remove_tree(child, depth + 1)) rc = -1;
    }
    closedir(d);
    return rmdir(path) == 0 ? rc : -1;
}

int out_clean_stale(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        uint32_t h;
        long pid;
        if (!parse_temp_name(de->d_name, &h, &pid) || h != host_hash() || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* that process still runs */
        char path[4096];
        if (path_join(path, sizeof path, dir, de->d_name) == 0 && remove_tree(path, 0) == 0) removed++;
    }
    closedir(d);
    return removed;
}

int out_remove(const char *path, Err *err) {
    char tmp[4096];
    if (out_temp_name(tmp, sizeof tmp, path)) return err_set(err, "%s: path too long", path);
    if (rename(path, tmp) != 0) return errno == ENOENT ? 0 : err_set(err, "%s: cannot remove: %s", path, strerror(errno));
    if (remove_tree(tmp, 0) != 0) return err_set(err, "%s: cannot remove all of it: %s", path, strerror(errno));
    return 0;
}

/** The target with symbolic links resolved when it exists (the link itself stays), malloc'd. */
static char *resolve(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode)) {
        char *real = realpath(path, NULL);
        if (real) return real;
    }
    return strdup(path);
}

static void fsync_dir_of(const char *path) {
    char *dir = dir_of(path);
    if (!dir) return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

static const char *type_name(mode_t m) {
    return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO" : S_ISCHR(m) ? "a character device" :
           S_ISBLK(m) ? "a block device" : S_ISSOCK(m) ? "a socket" : "not a regular file";
}

/* ------------------------------------------------------------------------------------- */
/* files                                                                                   */

/**
 * Creates the temporary of @p target (a file opened for writing, or a directory), registered in
 * the cleanup table first so that a signal at any moment removes it; removes stale temporaries
 * of the same directory before. Returns the descriptor (0 for a directory) and sets *tmp and
 * *slot, or −1 with a message naming @p shown.
 */
static int make_temp(const char *target, const char *shown, int kind, mode_t mode, char **tmp, int *slot, Err *err) {
    char *dir = dir_of(target), name[4096];
    if (dir) out_clean_stale(dir);
    for (int attempt = 0;; attempt++) {
        if (out_temp_name(name, sizeof name, target)) {
            free(dir);
            return err_set(err, "%s: path too long", shown);
        }
        if ((*slot = slot_add(name, kind)) < 0) {
            free(dir);
            return err_set(err, "%s: too many outputs open at once", shown);
        }
        int fd = kind == SLOT_FILE ? open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode) : mkdir(name, mode);
        int e = errno;
        if (fd >= 0 && (*tmp = strdup(name))) {
            free(dir);
            return fd;
        }
        if (fd >= 0) { /* out of memory for the name */
            if (kind == SLOT_FILE) close(fd), unlink(name);
            else rmdir(name);
            e = ENOMEM;
        }
        slot_remove(slot);
        if (e != EEXIST || attempt > 100) {
            err_set(err, "%s: cannot create a %s in %s: %s", shown, kind == SLOT_FILE ? "file" : "directory", dir ? dir : ".",
                    strerror(e));
            free(dir);
            return -1;
        }
    }
}

static void outfile_release(OutFile *o) {
    if (o->fd >= 0) close(o->fd);
    free(o->path);
    free(o->tmp);
    o->path = o->tmp = NULL;
    o->fd = -1;
    o->slot = -1;
}

/** Opens a device node or FIFO for writing in place, without blocking on a FIFO that nobody reads. */
static int open_direct(OutFile *o, const struct stat *sb, Err *err) {
    int fd = open(o->path, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENXIO && S_ISFIFO(sb->st_mode)) return err_set(err, "%s: a FIFO that no process is reading", o->path);
        return err_set(err, "%s: cannot open %s for writing: %s", o->path, type_name(sb->st_mode), strerror(e));
    }
    struct stat now;
    if (fstat(fd, &now) != 0 || (now.st_mode & S_IFMT) != (sb->st_mode & S_IFMT)) {
        close(fd);
        return err_set(err, "%s: changed type while being opened", o->path);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK); /* from now on write like any file */
    o->fd = fd;
    return 0;
}

int outfile_open(OutFile *o, const char *path, int flags, Err *err) {
    memset(o, 0, sizeof *o);
    o->fd = o->slot = -1;
    if (!path || !*path) return err_set(err, "empty output path");
    o->path = resolve(path);
    if (!o->path) return err_set(err, "%s: out of memory", path);
    struct stat sb;
    int exists = stat(o->path, &sb) == 0;
    if (exists && !S_ISREG(sb.st_mode)) {
        int rc = 0;
        if (S_ISDIR(sb.st_mode)) rc = err_set(err, "%s: is a directory", path);
        else if ((flags & OUT_REGULAR_ONLY) || !(S_ISCHR(sb.st_mode) || S_ISFIFO(sb.st_mode)))
            rc = err_set(err, "%s: is %s, not a regular file: refusing to write it", path, type_name(sb.st_mode));
        else rc = open_direct(o, &sb, err);
        if (rc) outfile_release(o);
        return rc;
    }
    o->fd = make_temp(o->path, path, SLOT_FILE, exists ? (sb.st_mode & 07777) : 0666, &o->tmp, &o->slot, err);
    if (o->fd < 0) {
        outfile_release(o);
        return -1;
    }
    if (exists) (void)fchmod(o->fd, sb.st_mode & 07777); /* keep the mode of the file it replaces */
    return 0;
}

int outfile_write(OutFile *o, const void *data, size_t n, Err *err) {
    if (o->fd < 0) return err_set(err, "%s: write to a closed output", o->path ? o->path : "?");
    if (o->error) return err_set(err, "%s: write failed: %s", o->path, strerror(o->error));
    test_hook();
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(o->fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            o->error = w < 0 ? errno : EIO;
            return err_set(err, "%s: write failed: %s", o->path, strerror(o->error));
        }
        p += w;
        n -= (size_t)w;
        o->bytes += (uint64_t)w;
    }
    return 0;
}

int outfile_commit(OutFile *o, Err *err) {
    int rc = 0;
    if (o->fd < 0) rc = err_set(err, "%s: commit of a closed output", o->path ? o->path : "?");
    else if (o->error) rc = err_set(err, "%s: write failed: %s", o->path, strerror(o->error));
    else if (fsync(o->fd) != 0 && (o->tmp || (errno != EINVAL && errno != EROFS && errno != ENOTSUP)))
        rc = err_set(err, "%s: cannot flush to disk: %s", o->path, strerror(errno));
    if (o->fd >= 0) {
        if (close(o->fd) != 0 && rc == 0) rc = err_set(err, "%s: write failed at close: %s", o->path, strerror(errno));
        o->fd = -1;
    }
    if (o->tmp) {
        sigset_t old;
        block_signals(&old);
        if (rc == 0 && rename(o->tmp, o->path) != 0)
            rc = err_set(err, "%s: cannot rename into place: %s", o->path, strerror(errno));
        if (rc) unlink(o->tmp);
        slot_remove(&o->slot);
        restore_signals(&old);
        if (rc == 0) fsync_dir_of(o->path);
    }
    outfile_release(o);
    return rc;
}

void outfile_abort(OutFile *o) {
    if (o->fd >= 0) close(o->fd);
    o->fd = -1;
    if (o->tmp) unlink(o->tmp);
    slot_remove(&o->slot);
    outfile_release(o);
}

int write_file_atomic(const char *path, const void *data, size_t len, Err *err) {
    OutFile o;
    if (outfile_open(&o, path, 0, err)) return -1;
    if (outfile_write(&o, data, len, err)) {
        outfile_abort(&o);
        return -1;
    }
    return outfile_commit(&o, err);
}

/* ------------------------------------------------------------------------------------- */
/* directories                                                                             */

static void outdir_release(OutDir *d) {
    free(d->path);
    free(d->tmp);
    d->path = d->tmp = NULL;
    d->slot = -1;
}

static int matches(const char *const *patterns, const char *name) {
    for (int i = 0; patterns && patterns[i]; i++)
        if (fnmatch(patterns[i], name, FNM_PERIOD) == 0) return 1;
    return 0;
}

/** Refuses an existing target holding entries that can be neither replaced nor carried over. */
static int check_target(const char *path, const char *shown, const char *const *replaced, Err *err) {
    DIR *dir = opendir(path);
    if (!dir) return err_set(err, "%s: cannot read the directory: %s", shown, strerror(errno));
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(dir))) {
        const char *n = de->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || out_is_temp_name(n) || matches(replaced, n)) continue;
        char p[4096];
        struct stat sb;
        if (path_join(p, sizeof p, path, n) || lstat(p, &sb) != 0) continue;
        if (!S_ISREG(sb.st_mode) && !S_ISLNK(sb.st_mode))
            rc = err_set(err, "%s: holds '%.200s' (%s), which a new output could not carry over: give a new or "
                              "empty directory", shown, n, type_name(sb.st_mode));
    }
    closedir(dir);
    return rc;
}

/** Copies regular file @p src to @p dst (a new file), for file systems without hard links. */
static int copy_plain(const char *src, const char *dst) {
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, rc = -1;
    struct stat sb;
    if (in >= 0 && fstat(in, &sb) == 0) out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, sb.st_mode & 07777);
    if (out >= 0) {
        char buf[1 << 16];
        ssize_t k;
        rc = 0;
        while (rc == 0 && (k = read(in, buf, sizeof buf)) != 0) {
            if (k < 0 && errno == EINTR) continue;
            if (k < 0) rc = -1;
            for (ssize_t done = 0; rc == 0 && done < k;) {
                ssize_t w = write(out, buf + done, (size_t)(k - done));
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) rc = -1;
                else done += w;
            }
        }
        if (fsync(out) != 0 || close(out) != 0) rc = -1;
        if (rc) unlink(dst);
    }
    if (in >= 0) close(in);
    return rc;
}

/** Carries the target's files outside the patterns, which the output did not write, into the new directory. */
static int carry_over(const OutDir *d, Err *err) {
    DIR *dir = opendir(d->path);
    if (!dir) return errno == ENOENT ? 0 : err_set(err, "%s: cannot read the directory: %s", d->path, strerror(errno));
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(dir))) {
        const char *n = de->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || out_is_temp_name(n) || matches(d->replaced, n)) continue;
        char src[4096], dst[4096], link_to[4096];
        struct stat sb;
        if (path_join(src, sizeof src, d->path, n) || path_join(dst, sizeof dst, d->tmp, n)) {
            rc = err_set(err, "%s: path too long", d->path);
            break;
        }
        if (lstat(dst, &sb) == 0 || lstat(src, &sb) != 0) continue; /* written anew, or gone meanwhile */
        if (S_ISREG(sb.st_mode)) {
            if (link(src, dst) != 0 && copy_plain(src, dst) != 0)
                rc = err_set(err, "%s: cannot carry '%s' over into the new directory: %s", d->path, n, strerror(errno));
        } else if (S_ISLNK(sb.st_mode)) {
            ssize_t k = readlink(src, link_to, sizeof link_to - 1);
            if (k < 0 || (link_to[k] = 0, symlink(link_to, dst) != 0))
                rc = err_set(err, "%s: cannot carry the link '%s' over: %s", d->path, n, strerror(errno));
        } else {
            rc = err_set(err, "%s: '%s' appeared meanwhile and cannot be carried over", d->path, n);
        }
    }
    closedir(dir);
    return rc;
}

int outdir_open(OutDir *d, const char *path, const char *const *replaced, Err *err) {
    memset(d, 0, sizeof *d);
    d->slot = -1;
    d->replaced = replaced;
    if (!path || !*path) return err_set(err, "empty output directory");
    d->path = resolve(path);
    if (!d->path) return err_set(err, "%s: out of memory", path);
    size_t n = strlen(d->path);
    while (n > 1 && d->path[n - 1] == '/') d->path[--n] = 0; /* "out/" names the directory out */
    struct stat sb;
    if (stat(d->path, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) {
            outdir_release(d);
            return err_set(err, "%s: exists and is %s, not a directory", path, type_name(sb.st_mode));
        }
        if (check_target(d->path, path, replaced, err)) {
            outdir_release(d);
            return -1;
        }
    }
    if (make_temp(d->path, path, SLOT_DIR, 0777, &d->tmp, &d->slot, err) < 0) {
        outdir_release(d);
        return -1;
    }
    return 0;
}

/** Puts the built directory at the target: exchanged with an existing one, else renamed. */
static int swap_in(const OutDir *d, Err *err) {
    if (rename(d->tmp, d->path) == 0) return 0; /* no target (or an empty one): done */
    if (errno != EEXIST && errno != ENOTEMPTY) return err_set(err, "%s: cannot rename into place: %s", d->path, strerror(errno));
    if (renameat2(AT_FDCWD, d->tmp, AT_FDCWD, d->path, RENAME_EXCHANGE) == 0) return 0;
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return err_set(err, "%s: cannot swap the new directory in: %s", d->path, strerror(errno));
    /* No atomic exchange on this file system: move the old one aside, the new one in, the old to tmp. */
    char aside[4096];
    if (out_temp_name(aside, sizeof aside, d->path)) return err_set(err, "%s: path too long", d->path);
    if (rename(d->path, aside) != 0) return err_set(err, "%s: cannot move the old directory aside: %s", d->path, strerror(errno));
    if (rename(d->tmp, d->path) != 0) {
        int e = errno;
        rename(aside, d->path);
        return err_set(err, "%s: cannot rename into place: %s", d->path, strerror(e));
    }
    if (rename(aside, d->tmp) != 0) remove_tree(aside, 0);
    return 0;
}

int outdir_commit(OutDir *d, Err *err) {
    if (!d->tmp) {
        outdir_release(d);
        return err_set(err, "commit of a closed directory output");
    }
    int rc = carry_over(d, err), fd = -1;
    if (rc == 0) {
        fd = open(d->tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) != 0) rc = err_set(err, "%s: cannot flush to disk: %s", d->path, strerror(errno));
    }
    if (fd >= 0) close(fd);
    sigset_t old;
    block_signals(&old);
    if (rc == 0) rc = swap_in(d, err);
    restore_signals(&old);
    if (rc == 0) fsync_dir_of(d->path);
    /* After a swap the temporary name holds the old content; after a failure, the new one. */
    remove_tree(d->tmp, 0);
    slot_remove(&d->slot);
    outdir_release(d);
    return rc;
}

void outdir_abort(OutDir *d) {
    if (d->tmp) remove_tree(d->tmp, 0);
    slot_remove(&d->slot);
    outdir_release(d);
}

int out_dir_writable(const char *dir, Err *err) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) return err_set(err, "%s: cannot create the directory: %s", dir, strerror(errno));
    struct stat sb;
    if (stat(dir, &sb) != 0) return err_set(err, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return err_set(err, "%s: exists and is %s, not a directory", dir, type_name(sb.st_mode));
    char probe[4096], target[4096];
    if (path_join(target, sizeof target, dir, "probe") || out_temp_name(probe, sizeof probe, target))
        return err_set(err, "%s: path too long", dir);
    int slot = slot_add(probe, SLOT_FILE);
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    int e = errno;
    if (fd >= 0) {
        close(fd);
        unlink(probe);
    }
    slot_remove(&slot);
    if (fd < 0) return err_set(err, "%s: cannot create files there: %s", dir, strerror(e));
    return 0;
}

/* ------------------------------------------------------------------------------------- */
/* standard output                                                                         */

int stdout_write(const void *data, size_t n, Err *err) {
    if (n && fwrite(data, 1, n, stdout) != n) return err_set(err, "standard output: write error: %s", strerror(errno));
    return 0;
}

int stdout_check(Err *err) {
    errno = 0;
    int failed = fflush(stdout) != 0;
    int e = errno;
    if (failed || ferror(stdout))
        return err_set(err, "standard output: write error%s%s", e ? ": " : "", e ? strerror(e) : "");
    return 0;
}
