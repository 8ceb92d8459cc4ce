/**
 * @file outfile.h
 * @brief Outputs that are either complete or absent: one primitive for files, one for
 *        directories, the signal handling that removes what an interrupted process was writing,
 *        and checked writes to standard output.
 *
 * A file output (OutFile) is written to a temporary beside its target — same directory, so the
 * final rename(2) never crosses a file system — with a name unique to this process and call
 * (O_CREAT|O_EXCL with a random suffix, which is what mkstemp does, but with the mode a plain
 * create would give). outfile_commit() fsyncs it, renames it over the target and fsyncs the
 * directory; until then the target keeps its old content. Two processes writing the same
 * target each write their own temporary: the target ends up holding one complete output.
 *
 * A target that is not a regular file is never renamed over: a character device (/dev/null,
 * a terminal) or a FIFO with a reader is written directly; a FIFO without a reader, a block
 * device, a socket or a directory is refused. A symbolic link is followed (the link stays).
 *
 * A directory output (OutDir) is built in a temporary directory beside its target and swapped
 * in when complete (renameat2 RENAME_EXCHANGE: the target name always holds either the old or
 * the new content), then the old content is removed. The files of an existing target that the
 * output replaces (its patterns: a previous output of the same kind, e.g. a checkpoint's shards
 * and index) go with the old content; every other file of the target (a tokenizer beside a
 * checkpoint, a README) is carried into the new directory (hard-linked) unless the output wrote
 * a file of that name itself. A target holding a subdirectory the patterns do not cover is refused.
 *
 * Temporaries are named `.<target name>.dsv3-<host>-<pid>-<random>`. SIGINT, SIGTERM, SIGHUP and
 * SIGPIPE remove the temporaries of the process before it dies of the signal (handlers are
 * installed on first use, only for signals still at their default disposition); entries of this
 * naming left by a process that no longer exists on this host (SIGKILL, power loss) are removed
 * by the next output opened in the same directory.
 *
 * Deferred interrupts (out_interrupts_defer): a process that can stop cleanly at a point of its
 * own choosing (training finishing its step and saving, a chat stopping its reply) asks for the
 * first SIGINT/SIGTERM to only be recorded (out_interrupted); a second one still removes the
 * temporaries and kills the process.
 */
#ifndef DSV3_OUTFILE_H
#define DSV3_OUTFILE_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/** A file being written (see the file comment). */
typedef struct {
    char *path;      /**< the target (symbolic links resolved) */
    char *tmp;       /**< the temporary being written, NULL when the target is written directly */
    int fd;          /**< the open file, -1 once closed */
    int slot;        /**< entry of tmp in the cleanup table, -1 when none */
    int error;       /**< errno of the first failed write (0: none) */
    uint64_t bytes;  /**< bytes written so far */
} OutFile;

/** Flags of outfile_open. */
enum {
    OUT_REGULAR_ONLY = 1, /**< refuse non-regular targets too (device nodes, FIFOs) */
};

/**
 * Starts writing @p path. A regular or absent target gets a temporary beside it; a character
 * device or a FIFO with a reader is opened directly (unless OUT_REGULAR_ONLY); anything else is
 * refused with a message naming the path. On error nothing is left behind.
 */
int outfile_open(OutFile *o, const char *path, int flags, Err *err);

/** Writes all @p n bytes (retrying short writes and EINTR); the first error names the target. */
int outfile_write(OutFile *o, const void *data, size_t n, Err *err);

/**
 * Finishes the output: fsync, close, rename over the target, fsync of its directory. On any
 * failure the temporary is removed, the target keeps its old content, and -1 is returned.
 * Always releases @p o.
 */
int outfile_commit(OutFile *o, Err *err);

/** Abandons the output: closes and removes the temporary, releases @p o. Safe after commit. */
void outfile_abort(OutFile *o);

/** A directory being built beside its target (see the file comment). */
typedef struct {
    char *path;  /**< the target directory (symbolic links resolved) */
    char *tmp;   /**< the directory being built: write the output's files here */
    int slot;    /**< entry of tmp in the cleanup table, -1 when none */
    const char *const *replaced; /**< the patterns given to outdir_open */
} OutDir;

/**
 * Starts a directory output for @p path, which must be absent or a directory. Entries of an
 * existing target that match one of the fnmatch(3) patterns @p replaced (NULL-terminated, kept by
 * reference: a static array) are the previous output's: the new one replaces them all. Other
 * files stay (carried over at commit); a subdirectory or special file outside the patterns is
 * refused now. Creates the temporary directory beside the target; write into d->tmp.
 */
int outdir_open(OutDir *d, const char *path, const char *const *replaced, Err *err);

/**
 * Swaps the complete directory in: the target's files outside the patterns that the output did
 * not write are hard-linked in, fsync of the temporary directory, exchange with (or rename to) the
 * target, fsync of the parent, removal of the old content. On failure the temporary is removed
 * and the target is unchanged. Always releases @p d.
 */
int outdir_commit(OutDir *d, Err *err);

/** Abandons a directory output: removes the temporary directory and everything in it. */
void outdir_abort(OutDir *d);

/** Checks that @p dir exists (creating it, one level, if absent) and that a file can be created there. */
int out_dir_writable(const char *dir, Err *err);

/**
 * A fresh temporary name beside @p target (same directory, this naming), for outputs the two
 * primitives do not cover — a symbolic link switched by rename. -1 if it does not fit @p cap.
 */
int out_temp_name(char *out, size_t cap, const char *target);

/**
 * Removes file or directory tree @p path so that no partial state is ever visible under its name:
 * it is first renamed to a temporary (which a kill leaves for out_clean_stale), then deleted.
 */
int out_remove(const char *path, Err *err);

/** Removes the temporaries of this naming in @p dir left by processes that are gone; returns how many. */
int out_clean_stale(const char *dir);

/**
 * True when @p name is a temporary of this naming (any process); lets directory listings
 * (checkpoint pruning, tests) skip work in progress.
 */
int out_is_temp_name(const char *name);

/**
 * Deferred interrupts: with @p on, the first SIGINT/SIGTERM is only recorded (out_interrupted);
 * a second still cleans up and kills. Off restores the default (clean up, die). Also clears the
 * record.
 */
void out_interrupts_defer(int on);

/** The signal recorded while interrupts were deferred (SIGINT or SIGTERM), or 0. */
int out_interrupted(void);

/** Forgets a recorded interrupt (a chat whose reply was stopped goes back to the prompt). */
void out_interrupt_clear(void);

/**
 * Test hook: when DSV3_TEST_KILL_AFTER=N is set in the environment, the N-th outfile_write (counting
 * from 1, since the variable got its value) raises SIGTERM first, so tests can interrupt an
 * output at a chosen point. Returns N, or 0 when unset.
 */
long out_test_kill_after(void);

/** Writes @p n bytes to standard output; -1 with a message on a write error (EPIPE, ENOSPC, EIO). */
int stdout_write(const void *data, size_t n, Err *err);

/**
 * Flushes standard output and reports an earlier or present write error as one message
 * ("standard output: write error: ..."); 0 when everything written so far reached the file.
 */
int stdout_check(Err *err);

#endif /* DSV3_OUTFILE_H */
