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
 * Atomicity: a checkpoint is one directory output (base/outfile.h): built in a temporary
 * directory beside `step_N/` and swapped in when complete, then the `latest` symlink is replaced
 * by rename. A run killed at any instant leaves `latest` pointing at a complete checkpoint (or
 * absent), never at a partial one, and leaves no partial directory behind.
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

#include "base/outfile.h"

/* ------------------------------------------------------------------------------------- */
/* options <-> metadata                                                                    */

/** One TrainOptions field as stored in the metadata. */
typedef struct {
    const char *key;
    char type; /* 'd' double, 'l' int64, 'i' int, 'u' uint64 */
    size_t offset;
    int optional; /* absent from checkpoints older than the field: keeps its default */
} OptField;

static const OptField opt_fields[] = {
    { "batch", 'l', offsetof(TrainOptions, batch), 0 },
    { "seq_len", 'l', offsetof(TrainOptions, seq_len), 0 },
    { "steps", 'l', offsetof(TrainOptions, steps), 0 },
    { "lr", 'd', offsetof(TrainOptions, lr.peak), 0 },
    { "lr_min", 'd', offsetof(TrainOptions, lr.min), 0 },
    { "warmup", 'l', offsetof(TrainOptions, lr.warmup), 0 },
    { "beta1", 'd', offsetof(TrainOptions, adamw.beta1), 0 },
    { "beta2", 'd', offsetof(TrainOptions, adamw.beta2), 0 },
    { "eps", 'd', offsetof(TrainOptions, adamw.eps), 0 },
    { "weight_decay", 'd', offsetof(TrainOptions, adamw.weight_decay), 0 },
    { "grad_clip", 'd', offsetof(TrainOptions, grad_clip), 0 },
    { "bias_update_speed", 'd', offsetof(TrainOptions, bias_update_speed), 0 },
    { "balance_alpha", 'd', offsetof(TrainOptions, balance_alpha), 0 },
    { "mtp_lambda", 'd', offsetof(TrainOptions, mtp_lambda), 0 },
    { "n_mtp", 'i', offsetof(TrainOptions, n_mtp), 0 },
    { "init_std", 'd', offsetof(TrainOptions, init_std), 0 },
    { "seed", 'u', offsetof(TrainOptions, seed), 0 },
    { "shuffle", 'i', offsetof(TrainOptions, shuffle), 0 },
    { "save_every", 'l', offsetof(TrainOptions, save_every), 1 },
    { "keep", 'l', offsetof(TrainOptions, keep), 1 },
    { "save_format", 'i', offsetof(TrainOptions, save_format), 1 },
    /* --precision's: a checkpoint written before resumes as an FP32 run */
    { "precision", 'i', offsetof(TrainOptions, precision), 1 },
    { "bf16_moments", 'i', offsetof(TrainOptions, bf16_moments), 1 },
    { "fp8_acc_bits", 'i', offsetof(TrainOptions, fp8.acc_bits), 1 },
    { "fp8_promote", 'i', offsetof(TrainOptions, fp8.promote), 1 },
    { "fp8_per_tensor", 'i', offsetof(TrainOptions, fp8.per_tensor), 1 },
    { "fp8_grad_format", 'i', offsetof(TrainOptions, fp8.grad_format), 1 },
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
    for (size_t i = 0; i < sizeof opt_fields / sizeof opt_fields[0]; i++) {
        const OptField *f = &opt_fields[i];
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
    for (size_t i = 0; i < sizeof opt_fields / sizeof opt_fields[0] && rc == 0; i++) {
        const OptField *f = &opt_fields[i];
        if (f->optional && !cJSON_GetObjectItemCaseSensitive(meta, f->key)) continue;
        rc = meta_num(meta, f->key, label, f->type, (char *)opt + f->offset, err);
    }
    opt->lr.total = opt->steps;
    if (rc == 0 && (opt->save_every < 0 || opt->keep < 0 || opt->save_format < CKPT_F32 || opt->save_format > CKPT_FP8))
        rc = err_set(err, "%s: metadata save_every = %lld, keep = %lld, save_format = %d out of range", label,
                     (long long)opt->save_every, (long long)opt->keep, opt->save_format);
    if (rc == 0 && opt->n_mtp != c->num_nextn_predict_layers)
        rc = err_set(err, "%s: %d MTP depths in the state but num_nextn_predict_layers = %d in config.json", label,
                     opt->n_mtp, c->num_nextn_predict_layers);
    cJSON_Delete(meta);
    st_close(&st);
    return rc;
}

/* ------------------------------------------------------------------------------------- */
/* save                                                                                    */

/** The files of a checkpoint, written into the existing (temporary) directory @p dir. */
static int save_files(Trainer *tr, const char *dir, CkptFormat format, Err *err) {
    ParamSet *p = &tr->ps;
    CkptLayout layout = { format, 0, 1, p->n_mtp };
    if (ckpt_write_into(dir, &p->config, &layout, params_ckpt_source, p, NULL, err)) return -1;
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

int trainer_save(Trainer *tr, const char *dir, CkptFormat format, Err *err) {
    OutDir out;
    if (outdir_open(&out, dir, CKPT_OWNED_FILES, err)) return -1;
    if (save_files(tr, out.tmp, format, err)) {
        outdir_abort(&out);
        return -1;
    }
    return outdir_commit(&out, err);
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
    /* Values that index the data or the schedule: out of range is a damaged file, not a state to run from. */
    if (rc == 0 && (tr->step < 0 || tr->tokens < 0 || tr->data.pos < 0 || tr->data.epoch < 0 || !(tr->rng.inc & 1)))
        rc = err_set(err, "%s: run state out of range (step %lld, tokens %lld, data_pos %lld, data_epoch %lld, rng_inc %llu)",
                     label, (long long)tr->step, (long long)tr->tokens, (long long)tr->data.pos, (long long)tr->data.epoch,
                     (unsigned long long)tr->rng.inc);
    cJSON_Delete(meta);
    st_close(&st);
    st_close(&model);
    return rc;
}

/* ------------------------------------------------------------------------------------- */
/* checkpoint directories                                                                  */

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
        if (i < n - keep && names[i] && path_join(path, sizeof path, out_dir, names[i]) == 0) out_remove(path, NULL);
        free(names[i]);
    }
    free(names);
}

void train_catch_interrupts(void) { out_interrupts_defer(1); }

int train_interrupted(void) { return out_interrupted(); }

int train_run_dir_prepare(const char *out_dir, Err *err) {
    if (out_dir_writable(out_dir, err)) return -1;
    out_clean_stale(out_dir);
    return 0;
}

int trainer_checkpoint(Trainer *tr, const char *out_dir, CkptFormat format, const char *tokenizer_dir, int keep,
                       char *path_out, size_t cap, Err *err) {
    if (out_dir_writable(out_dir, err)) return -1;
    char step[64], final[4096], link_tmp[4096], link[4096];
    snprintf(step, sizeof step, "step_%08lld", (long long)tr->step);
    if (path_join(final, sizeof final, out_dir, step) || path_join(link, sizeof link, out_dir, "latest") ||
        out_temp_name(link_tmp, sizeof link_tmp, link) || strlen(final) >= cap)
        return err_set(err, "%s: path too long", out_dir);
    OutDir d;
    if (outdir_open(&d, final, CKPT_OWNED_FILES, err)) return -1;
    if (save_files(tr, d.tmp, format, err) ||
        (tokenizer_dir && ckpt_copy_tokenizer(tokenizer_dir, d.tmp, 1, err))) {
        outdir_abort(&d);
        return -1;
    }
    if (outdir_commit(&d, err)) return -1;
    if (symlink(step, link_tmp) != 0 || rename(link_tmp, link) != 0) {
        int e = errno;
        unlink(link_tmp);
        return err_set(err, "%s: cannot update the latest link: %s", link, strerror(e));
    }
    int fd = open(out_dir, O_RDONLY);
    if (fd >= 0) fsync(fd), close(fd);
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
