/**
 * @file test_outputs.c
 * @brief Outputs are complete or absent, inputs cannot block (base/outfile.h, base/infile.h):
 *        device-node and FIFO targets made with mknod/mkfifo in a scratch directory (never the
 *        real /dev nodes), concurrent writers of one target, kills at chosen points (the
 *        DSV3_TEST_KILL_AFTER hook, SIGKILL), stale temporaries, directory swaps, /dev/full
 *        for standard output, and the library writers built on them (safetensors, checkpoints,
 *        tokenizer directories).
 */
#define _DEFAULT_SOURCE /* mknod, makedev */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <dirent.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/infile.h"
#include "base/outfile.h"
#include "base/safetensors.h"
#include "model/ckpt.h"
#include "tokenizer/bpe_train.h"
#include "util_compare.h"
#include "util_run.h"

static char *path_in(const char *name) {
    static char buf[8][4096];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 4096, "%s/%s", test_tmp, name);
    return p;
}

static void put(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static char *slurp(const char *path) {
    size_t n;
    return (char *)read_bytes(path, &n);
}

/** Entries of @p dir that are temporaries of our naming (work in progress or left behind). */
static int temps_in(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) n += out_is_temp_name(de->d_name);
    closedir(d);
    return n;
}

/** Waits for a child; its exit status, or 128 + signal. */
static int wait_child(pid_t pid) {
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---------------------------------------------------------------------------------------- */
/* targets that are not regular files                                                         */

/** A character device (a /dev/null made with mknod here) is written in place, never replaced. */
static void device_node_written_directly(void **state) {
    (void)state;
    const char *dev = path_in("null-device");
    if (mknod(dev, S_IFCHR | 0666, makedev(1, 3)) != 0) fail_msg("mknod %s: %s (the test needs root)", dev, strerror(errno));
    Err err;
    assert_int_equal(write_file_atomic(dev, "data", 4, &err), 0);
    struct stat sb;
    assert_int_equal(stat(dev, &sb), 0);
    assert_true(S_ISCHR(sb.st_mode)); /* the old writer renamed a regular file over it */
    assert_int_equal(major(sb.st_rdev), 1);
    assert_int_equal(minor(sb.st_rdev), 3);
    assert_int_equal(temps_in(test_tmp), 0);
    /* OUT_REGULAR_ONLY refuses it, with the type named */
    OutFile o;
    assert_int_equal(outfile_open(&o, dev, OUT_REGULAR_ONLY, &err), -1);
    assert_non_null(strstr(err.msg, "character device"));
    /* a block device is always refused (writing a model over a disk is never meant) */
    const char *blk = path_in("block-device");
    assert_int_equal(mknod(blk, S_IFBLK | 0600, makedev(7, 200)), 0);
    assert_int_equal(write_file_atomic(blk, "x", 1, &err), -1);
    assert_non_null(strstr(err.msg, "block device"));
    assert_int_equal(stat(blk, &sb), 0);
    assert_true(S_ISBLK(sb.st_mode));
    unlink(dev);
    unlink(blk);
}

/** A FIFO without a reader is refused at once (no hang); with a reader it receives the bytes. */
static void fifo_target(void **state) {
    (void)state;
    const char *fifo = path_in("out.fifo");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    Err err;
    alarm(20); /* a hang fails the test instead of stalling make test */
    assert_int_equal(write_file_atomic(fifo, "abc", 3, &err), -1);
    assert_non_null(strstr(err.msg, "FIFO that no process is reading"));
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    if (pid == 0) { /* the reader: counts what arrives and reports it through the pipe */
        int fd = open(fifo, O_RDONLY);
        char buf[64];
        ssize_t n, total = 0;
        while ((n = read(fd, buf, sizeof buf)) > 0) total += n;
        dprintf(p[1], "%zd", total);
        _exit(0);
    }
    close(p[1]);
    OutFile o;
    int rc = -1;
    for (int tries = 0; tries < 2000 && rc != 0; tries++) { /* until the reader has opened its end */
        rc = outfile_open(&o, fifo, 0, &err);
        if (rc) nanosleep(&(struct timespec){ 0, 1000000 }, NULL);
    }
    assert_int_equal(rc, 0);
    assert_null(o.tmp);
    assert_int_equal(outfile_write(&o, "hello fifo", 10, &err), 0);
    assert_int_equal(outfile_commit(&o, &err), 0);
    char got[32] = "";
    assert_true(read(p[0], got, sizeof got - 1) > 0);
    close(p[0]);
    assert_int_equal(wait_child(pid), 0);
    assert_string_equal(got, "10");
    alarm(0);
    struct stat sb;
    assert_int_equal(stat(fifo, &sb), 0);
    assert_true(S_ISFIFO(sb.st_mode));
    unlink(fifo);
}

/** A directory is refused; a symbolic link is followed and stays a link. */
static void directory_and_symlink_targets(void **state) {
    (void)state;
    Err err;
    assert_int_equal(write_file_atomic(test_tmp, "x", 1, &err), -1);
    assert_non_null(strstr(err.msg, "is a directory"));
    const char *real = path_in("real.txt"), *link = path_in("link.txt");
    put(real, "old");
    assert_int_equal(symlink("real.txt", link), 0);
    assert_int_equal(write_file_atomic(link, "new", 3, &err), 0);
    struct stat sb;
    assert_int_equal(lstat(link, &sb), 0);
    assert_true(S_ISLNK(sb.st_mode));
    char *s = slurp(real);
    assert_string_equal(s, "new");
    free(s);
    unlink(link);
    unlink(real);
}

/* ---------------------------------------------------------------------------------------- */
/* concurrency, kills, stale temporaries                                                      */

/** Eight processes write the same target 20 times each: every write succeeds, the result is one of them. */
static void concurrent_writers(void **state) {
    (void)state;
    const char *target = path_in("shared.bin");
    enum { WRITERS = 8, ROUNDS = 20, SIZE = 1 << 18 };
    pid_t pids[WRITERS];
    for (int w = 0; w < WRITERS; w++) {
        pids[w] = fork();
        if (pids[w] == 0) {
            char *buf = malloc(SIZE);
            memset(buf, 'A' + w, SIZE);
            Err err;
            for (int r = 0; r < ROUNDS; r++)
                if (write_file_atomic(target, buf, SIZE, &err)) {
                    fprintf(stderr, "writer %d: %s\n", w, err.msg);
                    _exit(1);
                }
            _exit(0);
        }
    }
    for (int w = 0; w < WRITERS; w++) assert_int_equal(wait_child(pids[w]), 0); /* the shared .tmp made some fail */
    size_t n;
    unsigned char *b = read_bytes(target, &n);
    assert_non_null(b);
    assert_int_equal(n, SIZE);
    for (size_t i = 1; i < n; i++)
        if (b[i] != b[0]) fail_msg("byte %zu is '%c' but byte 0 is '%c': two writers' data mixed", i, b[i], b[0]);
    free(b);
    assert_int_equal(temps_in(test_tmp), 0);
    unlink(target);
}

/** SIGTERM in the middle of a write (the test hook): the old content stays, no temporary remains. */
static void sigterm_mid_write(void **state) {
    (void)state;
    const char *target = path_in("killed.bin");
    put(target, "previous");
    pid_t pid = fork();
    if (pid == 0) {
        setenv("DSV3_TEST_KILL_AFTER", "3", 1);
        OutFile o;
        Err err;
        if (outfile_open(&o, target, 0, &err)) _exit(2);
        for (int i = 0; i < 10; i++) outfile_write(&o, "0123456789", 10, &err);
        outfile_commit(&o, &err);
        _exit(0);
    }
    assert_int_equal(wait_child(pid), 128 + SIGTERM);
    char *s = slurp(target);
    assert_string_equal(s, "previous");
    free(s);
    assert_int_equal(temps_in(test_tmp), 0); /* the handler removed it */
    unlink(target);
}

/** SIGKILL leaves a temporary behind; the next output in that directory removes it, not a live one. */
static void stale_temporaries_cleaned(void **state) {
    (void)state;
    char *dir = path_in("stale");
    assert_int_equal(mkdir(dir, 0755), 0);
    char target[4096], live[4096];
    snprintf(target, sizeof target, "%s/ckpt.bin", dir);
    pid_t pid = fork();
    if (pid == 0) {
        OutFile o;
        Err err;
        if (outfile_open(&o, target, 0, &err)) _exit(2);
        outfile_write(&o, "partial", 7, &err);
        raise(SIGKILL);
    }
    assert_int_equal(wait_child(pid), 128 + SIGKILL);
    assert_int_equal(temps_in(dir), 1);
    /* a temporary of this process (alive) of the same naming must survive the cleaning */
    assert_int_equal(out_temp_name(live, sizeof live, target), 0);
    put(live, "in progress");
    Err err;
    assert_int_equal(write_file_atomic(target, "done", 4, &err), 0);
    assert_int_equal(temps_in(dir), 1);
    assert_int_equal(access(live, F_OK), 0);
    unlink(live);
    assert_int_equal(temps_in(dir), 0);
    char *s = slurp(target);
    assert_string_equal(s, "done");
    free(s);
}

/** A write error (a file-size limit stands in for a full disk) fails the commit and keeps the old file. */
static void write_error_keeps_old(void **state) {
    (void)state;
    const char *target = path_in("limited.bin");
    put(target, "old");
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN); /* writes past the limit fail with EFBIG instead of killing */
        static char big[1 << 16];
        Err err;
        struct rlimit lim = { 4096, 4096 };
        if (setrlimit(RLIMIT_FSIZE, &lim) != 0) _exit(3);
        int rc = write_file_atomic(target, big, sizeof big, &err);
        _exit(rc == -1 && strstr(err.msg, "write failed") ? 0 : 1);
    }
    assert_int_equal(wait_child(pid), 0);
    char *s = slurp(target);
    assert_string_equal(s, "old");
    free(s);
    assert_int_equal(temps_in(test_tmp), 0);
    unlink(target);
}

/* ---------------------------------------------------------------------------------------- */
/* directories                                                                                */

static const char *const owned[] = { "a.txt", "b-*.txt", NULL };

/** A directory output replaces an old one as a whole (no stale files), and refuses foreign content. */
static void directory_swap(void **state) {
    (void)state;
    char *dir = path_in("outdir");
    char p[4096];
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(p, sizeof p, "%s/a.txt", dir);
    put(p, "old a");
    snprintf(p, sizeof p, "%s/b-1.txt", dir);
    put(p, "old b1");
    OutDir d;
    Err err;
    assert_int_equal(outdir_open(&d, dir, owned, &err), 0);
    snprintf(p, sizeof p, "%s/b-2.txt", d.tmp);
    assert_int_equal(write_file_atomic(p, "new b2", 6, &err), 0);
    snprintf(p, sizeof p, "%s/a.txt", dir); /* still the old content while the new one is built */
    char *s = slurp(p);
    assert_string_equal(s, "old a");
    free(s);
    assert_int_equal(outdir_commit(&d, &err), 0);
    snprintf(p, sizeof p, "%s/a.txt", dir);
    assert_int_equal(access(p, F_OK), -1); /* the old output's files are gone with it */
    snprintf(p, sizeof p, "%s/b-1.txt", dir);
    assert_int_equal(access(p, F_OK), -1);
    snprintf(p, sizeof p, "%s/b-2.txt", dir);
    s = slurp(p);
    assert_string_equal(s, "new b2");
    free(s);
    assert_int_equal(temps_in(test_tmp), 0);
    /* a file outside the patterns stays: carried into the next output */
    snprintf(p, sizeof p, "%s/notes.md", dir);
    put(p, "mine");
    assert_int_equal(outdir_open(&d, dir, owned, &err), 0);
    snprintf(p, sizeof p, "%s/a.txt", d.tmp);
    assert_int_equal(write_file_atomic(p, "a again", 7, &err), 0);
    assert_int_equal(outdir_commit(&d, &err), 0);
    snprintf(p, sizeof p, "%s/notes.md", dir);
    s = slurp(p);
    assert_string_equal(s, "mine");
    free(s);
    snprintf(p, sizeof p, "%s/b-2.txt", dir); /* replaced (the new output has no b-*) */
    assert_int_equal(access(p, F_OK), -1);
    /* a subdirectory outside the patterns cannot be carried: refused, nothing touched */
    snprintf(p, sizeof p, "%s/figures", dir);
    assert_int_equal(mkdir(p, 0755), 0);
    assert_int_equal(outdir_open(&d, dir, owned, &err), -1);
    assert_non_null(strstr(err.msg, "figures"));
    assert_int_equal(access(p, F_OK), 0);
    assert_int_equal(temps_in(test_tmp), 0);
    rmdir(p);
    snprintf(p, sizeof p, "%s/notes.md", dir);
    /* a regular file where the directory should be */
    assert_int_equal(outdir_open(&d, p, owned, &err), -1);
    assert_non_null(strstr(err.msg, "not a directory"));
}

/** SIGTERM while a directory output is being built: the old directory is intact, the temporary gone. */
static void directory_sigterm(void **state) {
    (void)state;
    char *dir = path_in("outdir2");
    char p[4096];
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(p, sizeof p, "%s/a.txt", dir);
    put(p, "old a");
    pid_t pid = fork();
    if (pid == 0) {
        setenv("DSV3_TEST_KILL_AFTER", "2", 1);
        OutDir d;
        Err err;
        char q[4096];
        if (outdir_open(&d, dir, owned, &err)) _exit(2);
        snprintf(q, sizeof q, "%s/a.txt", d.tmp);
        write_file_atomic(q, "new a", 5, &err);
        snprintf(q, sizeof q, "%s/b-1.txt", d.tmp);
        write_file_atomic(q, "new b", 5, &err); /* write 2: killed */
        outdir_commit(&d, &err);
        _exit(0);
    }
    assert_int_equal(wait_child(pid), 128 + SIGTERM);
    char *s = slurp(p);
    assert_string_equal(s, "old a");
    free(s);
    assert_int_equal(temps_in(test_tmp), 0);
}

/* ---------------------------------------------------------------------------------------- */
/* the library writers                                                                        */

/** A kill during a sharded rewrite of a checkpoint leaves the old one loadable; a finished one has no stale file. */
static void checkpoint_rewrite(void **state) {
    (void)state;
    char *dir = path_in("ckpt");
    Config c;
    Err err;
    assert_int_equal(config_preset(&c, "tiny", &err), 0);
    RandomInit ri = { 7, 0.0f };
    CkptLayout single = { CKPT_BF16, 0, 1, 0 }, sharded = { CKPT_BF16, 0, 3, 0 };
    assert_int_equal(ckpt_write(dir, &c, &single, ckpt_random_source, &ri, NULL, &err), 0);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("DSV3_TEST_KILL_AFTER", "40", 1); /* inside the second shard */
        ckpt_write(dir, &c, &sharded, ckpt_random_source, &ri, NULL, &err);
        _exit(0);
    }
    assert_int_equal(wait_child(pid), 128 + SIGTERM);
    SafeTensors st;
    assert_int_equal(st_open(&st, dir, NULL, &err), 0); /* the old single-file checkpoint, whole */
    assert_int_equal(st.n_files, 1);
    st_close(&st);
    assert_int_equal(temps_in(test_tmp), 0);
    assert_int_equal(ckpt_write(dir, &c, &sharded, ckpt_random_source, &ri, NULL, &err), 0);
    char p[4096];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_int_equal(access(p, F_OK), -1); /* the old single file did not stay beside the shards */
    assert_int_equal(st_open(&st, dir, NULL, &err), 0);
    assert_int_equal(st.n_files, 3);
    st_close(&st);
    /* the other files of a checkpoint directory (a tokenizer, a README) stay */
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    put(p, "{}");
    assert_int_equal(ckpt_write(dir, &c, &single, ckpt_random_source, &ri, NULL, &err), 0);
    assert_int_equal(access(p, F_OK), 0);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    assert_int_equal(access(p, F_OK), -1); /* the sharded one's index went with its shards */
}

/** A checkpoint larger than the free space is refused before anything is written. */
static void checkpoint_free_space(void **state) {
    (void)state;
    char *dir = path_in("v3");
    Config c;
    Err err;
    assert_int_equal(config_preset(&c, "v3", &err), 0);
    RandomInit ri = { 7, 0.0f };
    CkptLayout l = { CKPT_FP8, 0, 163, 0 };
    double t0 = now_seconds();
    assert_int_equal(ckpt_write(dir, &c, &l, ckpt_random_source, &ri, NULL, &err), -1);
    assert_non_null(strstr(err.msg, "GB free"));
    assert_true(now_seconds() - t0 < 30);
    assert_int_equal(access(dir, F_OK), -1);
    assert_int_equal(temps_in(test_tmp), 0);
}

/** tokenizer.json and tokenizer_config.json: both or neither, even when killed between them. */
static void tokenizer_both_or_neither(void **state) {
    (void)state;
    char *dir = path_in("tok");
    BpeTrainOptions opt = bpe_train_defaults();
    opt.vocab_size = 300;
    BpeTrainer *tr;
    Err err;
    assert_int_equal(bpe_train_new(&tr, &opt, &err), 0);
    static const char text[] = "the quick brown fox jumps over the lazy dog; the dog sleeps. ";
    for (int i = 0; i < 50; i++) assert_int_equal(bpe_train_feed(tr, text, sizeof text - 1, &err), 0);
    assert_int_equal(bpe_train_run(tr, &err), 0);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("DSV3_TEST_KILL_AFTER", "2", 1); /* the second file's write */
        bpe_train_save(tr, dir, &err);
        _exit(0);
    }
    assert_int_equal(wait_child(pid), 128 + SIGTERM);
    char p[4096];
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    assert_int_equal(access(p, F_OK), -1); /* was: tokenizer.json without tokenizer_config.json */
    assert_int_equal(temps_in(test_tmp), 0);
    assert_int_equal(bpe_train_save(tr, dir, &err), 0);
    assert_int_equal(access(p, F_OK), 0);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
    assert_int_equal(access(p, F_OK), 0);
    bpe_train_free(tr);
}

/* ---------------------------------------------------------------------------------------- */
/* inputs and standard output                                                                 */

/** A FIFO with no writer, a device node and a directory are refused at once; "-" reads stdin. */
static void inputs_cannot_block(void **state) {
    (void)state;
    const char *fifo = path_in("in.fifo"), *dev = path_in("in-null");
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(mknod(dev, S_IFCHR | 0666, makedev(1, 3)), 0);
    char *data;
    size_t len;
    Err err;
    alarm(20); /* opening the FIFO used to wait for a writer forever */
    assert_int_equal(read_file(fifo, 1 << 20, &data, &len, &err), -1);
    assert_non_null(strstr(err.msg, "a FIFO, not a regular file"));
    assert_int_equal(read_file(dev, 1 << 20, &data, &len, &err), -1);
    assert_non_null(strstr(err.msg, "character device"));
    assert_int_equal(read_file(test_tmp, 1 << 20, &data, &len, &err), -1);
    assert_non_null(strstr(err.msg, "directory"));
    const uint8_t *map;
    assert_int_equal(map_file_readonly(fifo, &map, &len, &err), -1);
    alarm(0);
    /* "-" is the stream a command reads on purpose */
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[0], 0);
        close(p[0]), close(p[1]);
        int rc = read_input("-", 1 << 20, &data, &len, &err);
        _exit(rc == 0 && len == 5 && !memcmp(data, "hello", 5) ? 0 : 1);
    }
    close(p[0]);
    assert_int_equal(write(p[1], "hello", 5), 5);
    close(p[1]);
    assert_int_equal(wait_child(pid), 0);
    unlink(fifo);
    unlink(dev);
}

/** A write error on standard output (/dev/full) is reported, not lost. */
static void stdout_full(void **state) {
    (void)state;
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/full", "w", stdout)) _exit(3);
        Err err;
        printf("some text\n");
        int rc = stdout_check(&err);
        _exit(rc == -1 && strstr(err.msg, "No space left") ? 0 : 1);
    }
    assert_int_equal(wait_child(pid), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(device_node_written_directly), cmocka_unit_test(fifo_target),
        cmocka_unit_test(directory_and_symlink_targets), cmocka_unit_test(concurrent_writers),
        cmocka_unit_test(sigterm_mid_write),            cmocka_unit_test(stale_temporaries_cleaned),
        cmocka_unit_test(write_error_keeps_old),        cmocka_unit_test(directory_swap),
        cmocka_unit_test(directory_sigterm),            cmocka_unit_test(checkpoint_rewrite),
        cmocka_unit_test(checkpoint_free_space),        cmocka_unit_test(tokenizer_both_or_neither),
        cmocka_unit_test(inputs_cannot_block),          cmocka_unit_test(stdout_full),
    };
    return cmocka_run_group_tests_name("outputs", tests, test_tmp_setup, test_tmp_teardown);
}
