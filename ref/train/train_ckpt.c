/**
 * @file train_ckpt.c
 * @brief Training checkpoints (train.h): the model in the real Hugging Face layout plus an
 *        optimizer sidecar, written so that a killed run resumes on exactly the same trajectory.
 *
 * A checkpoint directory holds
 *     config.json, model.safetensors        ckpt_write: real tensor names, F32 (default) or BF16,
 *                                           MTP copies of embed_tokens/shared_head.head included
 *     optimizer.safetensors                 "<name>.exp_avg", "<name>.exp_avg_sq" (FP32 AdamW moments,
 *                                           PyTorch's state names) for every optimized tensor,
 *                                           "<name>.master" FP32 weights if the model file is not F32,
 *                                           and in __metadata__: step, tokens, RNG state, data cursor
 *                                           and every TrainOptions field
 *     tokenizer.json, tokenizer_config.json copied from --tokenizer DIR, if given
 * Bitwise resumption needs the exact FP32 parameters, both moments, the step (bias correction and
 * LR), the correction biases (F32 in the model file, docs/model.md §1.3), the RNG and the data position:
 * all are saved, and doubles are printed with 17 significant digits so they read back exactly.
 *
 * Atomicity: each file is written to a temporary name and renamed (write_file_atomic /
 * st_write); a whole checkpoint is written into `.step_N.tmp/` and renamed to `step_N/`, then the
 * `latest` symlink is replaced by rename. A run killed at any instant leaves `latest` pointing at
 * a complete checkpoint (or absent), never at a partial one.
 */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train.h"

/* ------------------------------------------------------------------------------------- */
/* options <-> metadata                                                                    */

/** One TrainOptions field as stored in the metadata. */
typedef struct {
    const char *key;
    char type; /* 'd' double, 'l' int64, 'i' int, 'u' uint64 */
    size_t offset;
} OptField;

static const OptField opt_fields[] = {
    { "batch", 'l', offsetof(TrainOptions, batch) },
    { "seq_len", 'l', offsetof(TrainOptions, seq_len) },
    { "steps", 'l', offsetof(TrainOptions, steps) },
    { "lr", 'd', offsetof(TrainOptions, lr.peak) },
    { "lr_min", 'd', offsetof(TrainOptions, lr.min) },
    { "warmup", 'l', offsetof(TrainOptions, lr.warmup) },
    { "beta1", 'd', offsetof(TrainOptions, adamw.beta1) },
    { "beta2", 'd', offsetof(TrainOptions, adamw.beta2) },
    { "eps", 'd', offsetof(TrainOptions, adamw.eps) },
    { "weight_decay", 'd', offsetof(TrainOptions, adamw.weight_decay) },
    { "grad_clip", 'd', offsetof(TrainOptions, grad_clip) },
    { "bias_update_speed", 'd', offsetof(TrainOptions, bias_update_speed) },
    { "balance_alpha", 'd', offsetof(TrainOptions, balance_alpha) },
    { "mtp_lambda", 'd', offsetof(TrainOptions, mtp_lambda) },
    { "n_mtp", 'i', offsetof(TrainOptions, n_mtp) },
    { "init_std", 'd', offsetof(TrainOptions, init_std) },
    { "seed", 'u', offsetof(TrainOptions, seed) },
    { "shuffle", 'i', offsetof(TrainOptions, shuffle) },
};

/* Added with --precision: optional when read, so a checkpoint written before resumes as an FP32 run. */
static const OptField opt_fields_precision[] = {
    { "precision", 'i', offsetof(TrainOptions, precision) },
    { "bf16_moments", 'i', offsetof(TrainOptions, bf16_moments) },
    { "fp8_acc_bits", 'i', offsetof(TrainOptions, fp8.acc_bits) },
    { "fp8_promote", 'i', offsetof(TrainOptions, fp8.promote) },
    { "fp8_per_tensor", 'i', offsetof(TrainOptions, fp8.per_tensor) },
    { "fp8_grad_format", 'i', offsetof(TrainOptions, fp8.grad_format) },
};

static void meta_put(cJSON *o, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void meta_put(cJSON *o, const char *key, const char *fmt, ...) {
    char buf[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    cJSON_AddStringToObject(o, key, buf);
}

static char *state_metadata(const Trainer *tr) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "format", "dsv3-train-state-1");
    const char *base = (const char *)&tr->opt;
    size_t n1 = sizeof opt_fields / sizeof opt_fields[0], n2 = sizeof opt_fields_precision / sizeof opt_fields_precision[0];
    for (size_t i = 0; i < n1 + n2; i++) {
        const OptField *f = i < n1 ? &opt_fields[i] : &opt_fields_precision[i - n1];
        const void *at = base + f->offset;
        switch (f->type) {
        case 'd': meta_put(o, f->key, "%.17g", *(const double *)at); break;
        case 'l': meta_put(o, f->key, "%lld", (long long)*(const int64_t *)at); break;
        case 'i': meta_put(o, f->key, "%d", *(const int *)at); break;
        default: meta_put(o, f->key, "%llu", (unsigned long long)*(const uint64_t *)at); break;
        }
    }
    meta_put(o, "step", "%lld", (long long)tr->step);
    meta_put(o, "tokens", "%lld", (long long)tr->tokens);
    meta_put(o, "rng_state", "%llu", (unsigned long long)tr->rng.state);
    meta_put(o, "rng_inc", "%llu", (unsigned long long)tr->rng.inc);
    meta_put(o, "data_pos", "%lld", (long long)tr->data.pos);
    meta_put(o, "data_epoch", "%lld", (long long)tr->data.epoch);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/** A metadata string parsed as a number; -1 with a message if absent or malformed. */
static int meta_num(const cJSON *o, const char *key, const char *label, char type, void *out, Err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v)) return err_set(err, "%s: metadata has no '%s'", label, key);
    const char *s = v->valuestring;
    char *end = NULL;
    errno = 0;
    switch (type) {
    case 'd': *(double *)out = strtod(s, &end); break;
    case 'l': *(int64_t *)out = strtoll(s, &end, 10); break;
    case 'i': {
        long x = strtol(s, &end, 10);
        if (x < -2147483647L || x > 2147483647L) errno = ERANGE;
        *(int *)out = (int)x;
        break;
    }
    default: *(uint64_t *)out = strtoull(s, &end, 10); break;
    }
    if (errno || !end || end == s || *end) return err_set(err, "%s: metadata '%s' = '%s' is not a number", label, key, s);
    return 0;
}

/** Opens dir/optimizer.safetensors and parses its metadata. */
static int open_state(const char *dir, SafeTensors *st, cJSON **meta, char *label, size_t cap, Err *err) {
    if (path_join(label, cap, dir, "optimizer.safetensors")) return err_set(err, "%s: path too long", dir);
    if (st_open(st, label, NULL, err)) return -1;
    *meta = st->metadata_json ? cJSON_Parse(st->metadata_json) : NULL;
    const cJSON *fmt = *meta ? cJSON_GetObjectItemCaseSensitive(*meta, "format") : NULL;
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "dsv3-train-state-1")) {
        cJSON_Delete(*meta);
        *meta = NULL;
        st_close(st);
        return err_set(err, "%s: not a dsv3 training state (metadata format 'dsv3-train-state-1' missing)", label);
    }
    return 0;
}

int train_read_checkpoint_options(const char *dir, Config *c, TrainOptions *opt, Err *err) {
    if (config_load(c, dir, err)) return -1;
    SafeTensors st;
    cJSON *meta;
    char label[4096];
    if (open_state(dir, &st, &meta, label, sizeof label, err)) return -1;
    int rc = 0;
    *opt = train_options_default(c->hidden_size);
    for (size_t i = 0; i < sizeof opt_fields / sizeof opt_fields[0] && rc == 0; i++)
        rc = meta_num(meta, opt_fields[i].key, label, opt_fields[i].type, (char *)opt + opt_fields[i].offset, err);
    for (size_t i = 0; i < sizeof opt_fields_precision / sizeof opt_fields_precision[0] && rc == 0; i++) {
        const OptField *f = &opt_fields_precision[i];
        if (cJSON_GetObjectItemCaseSensitive(meta, f->key)) rc = meta_num(meta, f->key, label, f->type, (char *)opt + f->offset, err);
    }
    opt->lr.total = opt->steps;
    if (rc == 0 && opt->n_mtp != c->num_nextn_predict_layers)
        rc = err_set(err, "%s: %d MTP depths in the state but num_nextn_predict_layers = %d in config.json", label,
                     opt->n_mtp, c->num_nextn_predict_layers);
    cJSON_Delete(meta);
    st_close(&st);
    return rc;
}

/* ------------------------------------------------------------------------------------- */
/* save                                                                                    */

int trainer_save(Trainer *tr, const char *dir, CkptFormat format, Err *err) {
    ParamSet *p = &tr->ps;
    CkptLayout layout = { format, 0, 1, p->n_mtp };
    if (ckpt_write(dir, &p->config, &layout, params_ckpt_source, p, NULL, err)) return -1;
    int masters = format != CKPT_F32, n = 0, rc = -1;
    StEntry *es = xcalloc((size_t)p->n_entries * 3 + 1, sizeof *es);
    char(*names)[200] = xcalloc((size_t)p->n_entries * 3 + 1, sizeof *names);
    char *meta = state_metadata(tr);
    if (!es || !names || !meta) {
        err_set(err, "out of memory writing the optimizer state");
        goto done;
    }
    for (int i = 0; i < p->n_entries; i++) {
        const ParamEntry *e = &p->entries[i];
        if (e->role != PARAM_DECAY && e->role != PARAM_NO_DECAY) continue;
        const float *src[3] = { tr->m + e->offset, tr->v + e->offset, p->data + e->offset };
        const char *suffix[3] = { "exp_avg", "exp_avg_sq", "master" };
        for (int k = 0; k < 2 + masters; k++) {
            StEntry *x = &es[n];
            snprintf(names[n], sizeof names[n], "%s.%s", e->slot.name, suffix[k]);
            x->name = names[n];
            x->dtype = DT_F32;
            x->ndim = e->slot.kind == WEIGHT_VECTOR ? 1 : 2;
            x->shape[0] = e->slot.kind == WEIGHT_VECTOR ? e->slot.cols : e->slot.rows;
            x->shape[1] = e->slot.cols;
            x->data = src[k];
            n++;
        }
    }
    char path[4096];
    if (path_join(path, sizeof path, dir, "optimizer.safetensors")) {
        err_set(err, "%s: path too long", dir);
        goto done;
    }
    rc = st_write(path, es, n, meta, err);
done:
    free(es);
    free(names);
    free(meta);
    return rc;
}

/* ------------------------------------------------------------------------------------- */
/* load                                                                                    */

/** Copies an F32 tensor of exactly e->n elements into @p dst. */
static int copy_f32(const SafeTensors *st, const char *name, const ParamEntry *e, float *dst, const char *label, Err *err) {
    const StTensor *t = st_find(st, name);
    if (!t) return err_set(err, "%s: missing tensor '%s'", label, name);
    if (t->dtype != DT_F32 || t->numel != e->n)
        return err_set(err, "%s: tensor '%s' is %s with %llu elements, need F32 with %zu", label, name, dtype_name(t->dtype),
                       (unsigned long long)t->numel, e->n);
    memcpy(dst, t->data, e->n * sizeof *dst);
    return 0;
}

int trainer_load_state(Trainer *tr, const char *dir, Err *err) {
    ParamSet *p = &tr->ps;
    SafeTensors model, st;
    cJSON *meta = NULL;
    char label[4096], name[256];
    if (st_open(&model, dir, NULL, err)) return -1;
    if (open_state(dir, &st, &meta, label, sizeof label, err)) {
        st_close(&model);
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < p->n_entries && rc == 0; i++) {
        const ParamEntry *e = &p->entries[i];
        if (e->role == PARAM_ALIAS) continue;
        const StTensor *t = st_find(&model, e->slot.name);
        if (!t) {
            rc = err_set(err, "%s: checkpoint has no tensor '%s'", dir, e->slot.name);
            break;
        }
        /* The exact FP32 values: the model file when it is F32, else the master copy. */
        if (t->dtype == DT_F32) rc = copy_f32(&model, e->slot.name, e, p->data + e->offset, dir, err);
        else {
            snprintf(name, sizeof name, "%s.master", e->slot.name);
            rc = copy_f32(&st, name, e, p->data + e->offset, label, err);
        }
        if (rc || e->role == PARAM_BIAS) continue;
        snprintf(name, sizeof name, "%s.exp_avg", e->slot.name);
        rc = copy_f32(&st, name, e, tr->m + e->offset, label, err);
        snprintf(name, sizeof name, "%s.exp_avg_sq", e->slot.name);
        if (rc == 0) rc = copy_f32(&st, name, e, tr->v + e->offset, label, err);
    }
    if (rc == 0)
        rc = meta_num(meta, "step", label, 'l', &tr->step, err) || meta_num(meta, "tokens", label, 'l', &tr->tokens, err) ||
             meta_num(meta, "rng_state", label, 'u', &tr->rng.state, err) ||
             meta_num(meta, "rng_inc", label, 'u', &tr->rng.inc, err) ||
             meta_num(meta, "data_pos", label, 'l', &tr->data.pos, err) ||
             meta_num(meta, "data_epoch", label, 'l', &tr->data.epoch, err)
            ? -1 : 0;
    cJSON_Delete(meta);
    st_close(&st);
    st_close(&model);
    return rc;
}

/* ------------------------------------------------------------------------------------- */
/* checkpoint directories                                                                  */

/** Removes a directory of plain files (a checkpoint); missing is fine. */
static int remove_flat_dir(const char *dir, Err *err) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : err_set(err, "%s: cannot open: %s", dir, strerror(errno));
    struct dirent *de;
    char path[4096];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (path_join(path, sizeof path, dir, de->d_name) == 0) unlink(path);
    }
    closedir(d);
    if (rmdir(dir) != 0) return err_set(err, "%s: cannot remove: %s", dir, strerror(errno));
    return 0;
}

static int copy_file(const char *src_dir, const char *dst_dir, const char *name, int required, Err *err) {
    char src[4096], dst[4096];
    if (path_join(src, sizeof src, src_dir, name) || path_join(dst, sizeof dst, dst_dir, name))
        return err_set(err, "%s: path too long", src_dir);
    if (!required && access(src, R_OK) != 0) return 0;
    char *data;
    size_t len;
    if (read_file(src, (size_t)1 << 30, &data, &len, err)) return -1;
    int rc = write_file_atomic(dst, data, len, err);
    free(data);
    return rc;
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/** Removes all but the newest @p keep complete step_* directories of @p out_dir. */
static void prune(const char *out_dir, int keep) {
    if (keep <= 0) return;
    DIR *d = opendir(out_dir);
    if (!d) return;
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, "step_", 5) || strchr(de->d_name, '.')) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            char **g = realloc(names, (size_t)cap * sizeof *g);
            if (!g) break;
            names = g;
        }
        names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_names); /* step_%08lld sorts by step */
    char path[4096];
    for (int i = 0; i < n; i++) {
        if (i < n - keep && names[i] && path_join(path, sizeof path, out_dir, names[i]) == 0) remove_flat_dir(path, NULL);
        free(names[i]);
    }
    free(names);
}

int trainer_checkpoint(Trainer *tr, const char *out_dir, CkptFormat format, const char *tokenizer_dir, int keep,
                       char *path_out, size_t cap, Err *err) {
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) return err_set(err, "%s: cannot create: %s", out_dir, strerror(errno));
    char step[64], tmp_name[80], old_name[80], tmp[4096], final[4096], old[4096], link_tmp[4096], link[4096];
    snprintf(step, sizeof step, "step_%08lld", (long long)tr->step);
    snprintf(tmp_name, sizeof tmp_name, ".%s.tmp", step);
    snprintf(old_name, sizeof old_name, ".%s.old", step);
    if (path_join(tmp, sizeof tmp, out_dir, tmp_name) || path_join(final, sizeof final, out_dir, step) ||
        path_join(old, sizeof old, out_dir, old_name) || path_join(link_tmp, sizeof link_tmp, out_dir, ".latest.tmp") ||
        path_join(link, sizeof link, out_dir, "latest") || strlen(final) >= cap)
        return err_set(err, "%s: path too long", out_dir);
    /* Leftovers of a run killed while saving this step are incomplete: start over. */
    if (remove_flat_dir(tmp, err) || remove_flat_dir(old, err)) return -1;
    if (trainer_save(tr, tmp, format, err)) return -1;
    if (tokenizer_dir && (copy_file(tokenizer_dir, tmp, "tokenizer.json", 1, err) ||
                          copy_file(tokenizer_dir, tmp, "tokenizer_config.json", 0, err)))
        return -1;
    fsync_dir(tmp);
    /* A directory cannot be renamed over a non-empty one: move an existing step aside first. */
    struct stat sb;
    int had = stat(final, &sb) == 0;
    if (had && rename(final, old) != 0) return err_set(err, "%s: cannot move aside: %s", final, strerror(errno));
    if (rename(tmp, final) != 0) return err_set(err, "%s: cannot rename to %s: %s", tmp, final, strerror(errno));
    if (had) remove_flat_dir(old, NULL);
    unlink(link_tmp);
    if (symlink(step, link_tmp) != 0 || rename(link_tmp, link) != 0)
        return err_set(err, "%s: cannot update the latest link: %s", link, strerror(errno));
    fsync_dir(out_dir);
    prune(out_dir, keep);
    snprintf(path_out, cap, "%s", final);
    return 0;
}

int train_resolve_checkpoint(const char *path, char *out, size_t cap, Err *err) {
    char probe[4096], latest[4096];
    if (path_join(probe, sizeof probe, path, "config.json")) return err_set(err, "%s: path too long", path);
    if (access(probe, R_OK) == 0) {
        if (strlen(path) >= cap) return err_set(err, "%s: path too long", path);
        snprintf(out, cap, "%s", path);
        return 0;
    }
    if (path_join(latest, sizeof latest, path, "latest") || path_join(probe, sizeof probe, latest, "config.json"))
        return err_set(err, "%s: path too long", path);
    if (access(probe, R_OK) == 0) {
        if (strlen(latest) >= cap) return err_set(err, "%s: path too long", path);
        snprintf(out, cap, "%s", latest);
        return 0;
    }
    return err_set(err, "%s: neither a checkpoint (no config.json) nor a run directory (no latest/config.json)", path);
}
