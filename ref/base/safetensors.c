/**
 * @file safetensors.c
 * @brief safetensors reader (mmap, full validation, shards) and writer.
 *
 * Format (huggingface/safetensors README §Format; docs/formats.md §1.1):
 *
 *     [u64 little-endian N][N bytes of UTF-8 JSON header][byte buffer]
 *     header = { "NAME": {"dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end]}, ...,
 *                "__metadata__": {"k": "v", ...} (optional) }
 *
 * Offsets are relative to the byte buffer. The checks below are those of the reference
 * reader (`Metadata::validate`, tensor.rs) plus the ones it lacks (duplicate keys, unknown
 * fields), each with its own message so a user knows what is wrong with which file:
 *   file < 8 bytes; N > 100 MB; 8+N > file; header not UTF-8 / not a JSON object;
 *   duplicate key; non-string metadata; entry with missing or extra fields; unknown dtype;
 *   dims not non-negative integers, more than 8 of them, Π overflow; offsets not two
 *   integers, reversed, overlapping, leaving holes, not ending at EOF; span ≠ numel × size.
 * Sharded checkpoints (§1.3) add: shard names are plain file names (no '/', no ".."),
 * every referenced shard exists, every tensor is in exactly one shard and in the map.
 */
#include "safetensors.h"

#include "outfile.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------- */
/* dtypes                                                                                  */

static const struct { const char *name; int bits; } dtype_table[DT_COUNT] = {
    [DT_BOOL] = {"BOOL", 8},       [DT_F4] = {"F4", 4},             [DT_F6_E2M3] = {"F6_E2M3", 6},
    [DT_F6_E3M2] = {"F6_E3M2", 6}, [DT_U8] = {"U8", 8},             [DT_I8] = {"I8", 8},
    [DT_F8_E5M2] = {"F8_E5M2", 8}, [DT_F8_E4M3] = {"F8_E4M3", 8},   [DT_F8_E8M0] = {"F8_E8M0", 8},
    [DT_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8}, [DT_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8},
    [DT_I16] = {"I16", 16},        [DT_U16] = {"U16", 16},          [DT_F16] = {"F16", 16},
    [DT_BF16] = {"BF16", 16},      [DT_I32] = {"I32", 32},          [DT_U32] = {"U32", 32},
    [DT_F32] = {"F32", 32},        [DT_C64] = {"C64", 64},          [DT_F64] = {"F64", 64},
    [DT_I64] = {"I64", 64},        [DT_U64] = {"U64", 64},
};

const char *dtype_name(DType t) { return (unsigned)t < DT_COUNT ? dtype_table[t].name : "?"; }
int dtype_bits(DType t) { return (unsigned)t < DT_COUNT ? dtype_table[t].bits : 0; }

int dtype_from_name(const char *s) {
    for (int i = 0; i < DT_COUNT; i++)
        if (!strcmp(s, dtype_table[i].name)) return i;
    return -1;
}

/* ------------------------------------------------------------------------------------- */
/* name → index hash table (FNV-1a, open addressing, load ≤ 1/2)                          */

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/** Rebuilds the table over all tensors; returns -1 with a message on a duplicate name. */
static int build_table(SafeTensors *st, Err *err) {
    free(st->table);
    size_t cap = 16;
    while (cap < 2 * (size_t)st->n_tensors + 2) cap *= 2;
    st->table = malloc(cap * sizeof *st->table);
    if (!st->table) return err_set(err, "out of memory");
    for (size_t i = 0; i < cap; i++) st->table[i] = -1;
    st->table_cap = cap;
    for (int i = 0; i < st->n_tensors; i++) {
        size_t h = fnv1a(st->tensors[i].name) & (cap - 1);
        while (st->table[h] >= 0) {
            const StTensor *o = &st->tensors[st->table[h]];
            if (!strcmp(o->name, st->tensors[i].name))
                return err_set(err, "tensor '%s' appears in both %s and %s", o->name,
                               st->files[o->shard].path, st->files[st->tensors[i].shard].path);
            h = (h + 1) & (cap - 1);
        }
        st->table[h] = i;
    }
    return 0;
}

const StTensor *st_find(const SafeTensors *st, const char *name) {
    if (!st->table) return NULL;
    size_t h = fnv1a(name) & (st->table_cap - 1);
    while (st->table[h] >= 0) {
        if (!strcmp(st->tensors[st->table[h]].name, name)) return &st->tensors[st->table[h]];
        h = (h + 1) & (st->table_cap - 1);
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------- */
/* header parsing                                                                          */

/** JSON number → exact non-negative integer ≤ 2^53 (doubles are exact up to there). */
static int json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) return -1;
    *out = (uint64_t)d;
    return 0;
}

/** Rejects a JSON object that names the same key twice (cJSON keeps both; Python keeps the last). */
static int check_duplicate_keys(const cJSON *obj, const char *label, const char *what, Err *err) {
    int n = cJSON_GetArraySize(obj);
    if (n < 2) return 0;
    size_t cap = 16;
    while (cap < 2 * (size_t)n) cap *= 2;
    const char **slots = calloc(cap, sizeof *slots);
    if (!slots) return err_set(err, "%s: out of memory", label);
    int rc = 0;
    for (const cJSON *c = obj->child; c; c = c->next) {
        size_t h = fnv1a(c->string) & (cap - 1);
        while (slots[h] && strcmp(slots[h], c->string)) h = (h + 1) & (cap - 1);
        if (slots[h]) {
            rc = err_set(err, "%s: %s names key '%s' twice", label, what, c->string);
            break;
        }
        slots[h] = c->string;
    }
    free(slots);
    return rc;
}

static int cmp_by_offset(const void *a, const void *b) {
    const StTensor *x = *(const StTensor *const *)a, *y = *(const StTensor *const *)b;
    if (x->data != y->data) return x->data < y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : (x->nbytes > y->nbytes);
}

/** Parses one entry {"dtype","shape","data_offsets"} into @p t (offsets kept relative in data). */
static int parse_entry(const cJSON *e, StTensor *t, const char *label, Err *err) {
    const char *name = e->string;
    if (!cJSON_IsObject(e)) return err_set(err, "%s: tensor '%s': entry is not a JSON object", label, name);
    if (check_duplicate_keys(e, label, "a tensor entry", err)) return -1;
    const cJSON *dt = NULL, *shape = NULL, *offs = NULL;
    for (const cJSON *c = e->child; c; c = c->next) {
        if (!strcmp(c->string, "dtype")) dt = c;
        else if (!strcmp(c->string, "shape")) shape = c;
        else if (!strcmp(c->string, "data_offsets")) offs = c;
        else return err_set(err, "%s: tensor '%s': unexpected field '%s'", label, name, c->string);
    }
    if (!dt || !shape || !offs)
        return err_set(err, "%s: tensor '%s': missing field '%s'", label, name,
                       !dt ? "dtype" : !shape ? "shape" : "data_offsets");
    if (!cJSON_IsString(dt)) return err_set(err, "%s: tensor '%s': dtype is not a string", label, name);
    int d = dtype_from_name(dt->valuestring);
    if (d < 0) return err_set(err, "%s: tensor '%s': unknown dtype '%s'", label, name, dt->valuestring);
    t->dtype = (DType)d;
    if (!cJSON_IsArray(shape)) return err_set(err, "%s: tensor '%s': shape is not an array", label, name);
    int nd = cJSON_GetArraySize(shape);
    if (nd > ST_MAX_DIMS)
        return err_set(err, "%s: tensor '%s': %d dimensions, at most %d supported", label, name, nd, ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    int i = 0;
    for (const cJSON *c = shape->child; c; c = c->next, i++) {
        uint64_t v;
        if (json_u64(c, &v) != 0)
            return err_set(err, "%s: tensor '%s': shape[%d] is not a non-negative integer", label, name, i);
        if (v > (uint64_t)INT64_MAX || __builtin_mul_overflow(numel, v, &numel))
            return err_set(err, "%s: tensor '%s': shape product overflows", label, name);
        t->shape[i] = (int64_t)v;
    }
    t->numel = numel;
    uint64_t bits;
    if (__builtin_mul_overflow(numel, (uint64_t)dtype_bits(t->dtype), &bits))
        return err_set(err, "%s: tensor '%s': byte size overflows", label, name);
    if (bits % 8) return err_set(err, "%s: tensor '%s': %llu bits is not a whole number of bytes", label,
                                 name, (unsigned long long)bits);
    t->nbytes = bits / 8;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return err_set(err, "%s: tensor '%s': data_offsets must be [begin, end]", label, name);
    uint64_t b, en;
    if (json_u64(offs->child, &b) || json_u64(offs->child->next, &en))
        return err_set(err, "%s: tensor '%s': data_offsets are not non-negative integers", label, name);
    if (en < b)
        return err_set(err, "%s: tensor '%s': data_offsets [%llu, %llu] are reversed", label, name,
                       (unsigned long long)b, (unsigned long long)en);
    if (en - b != t->nbytes)
        return err_set(err, "%s: tensor '%s': data_offsets span %llu bytes but %s %s needs %llu", label,
                       name, (unsigned long long)(en - b), dtype_name(t->dtype),
                       nd ? "shape" : "scalar", (unsigned long long)t->nbytes);
    /* Keep the relative begin in data for now; rebased once the whole header is checked. */
    t->data = (const uint8_t *)(uintptr_t)b;
    return 0;
}

static int parse_metadata(SafeTensors *st, const cJSON *m, const char *label, Err *err) {
    if (!cJSON_IsObject(m)) return err_set(err, "%s: __metadata__ is not a JSON object", label);
    if (check_duplicate_keys(m, label, "__metadata__", err)) return -1;
    for (const cJSON *c = m->child; c; c = c->next)
        if (!cJSON_IsString(c))
            return err_set(err, "%s: __metadata__ value of '%s' is not a string", label, c->string);
    if (!st->metadata_json) st->metadata_json = cJSON_PrintUnformatted(m);
    return 0;
}

int st_parse_buffer(SafeTensors *st, const uint8_t *buf, size_t len, int shard, const char *label, Err *err) {
    if (len < 8) return err_set(err, "%s: file is %zu bytes, too small for a safetensors header", label, len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
    if (n > ST_MAX_HEADER)
        return err_set(err, "%s: header length %llu exceeds the %llu-byte limit", label, (unsigned long long)n,
                       ST_MAX_HEADER);
    if (n == 0) return err_set(err, "%s: header length is 0", label);
    if (n > len - 8)
        return err_set(err, "%s: header length %llu runs past the end of the %zu-byte file (truncated?)", label,
                       (unsigned long long)n, len);
    const char *hdr = (const char *)buf + 8;
    if (!utf8_valid(hdr, (size_t)n)) return err_set(err, "%s: header is not valid UTF-8", label);
    if (memchr(hdr, 0, (size_t)n)) return err_set(err, "%s: header contains a NUL byte", label);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)n, &end, 0);
    if (!root) return err_set(err, "%s: header is not valid JSON (near byte %td)", label,
                              (cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - hdr : 0) + 8);
    /* Trailing padding must be whitespace (the writer pads with spaces). */
    for (const char *p = end; p < hdr + n; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return err_set(err, "%s: garbage after the JSON header at byte %td", label, p - hdr + 8);
        }
    int rc = -1;
    StTensor **order = NULL;
    int first = st->n_tensors;
    if (!cJSON_IsObject(root)) {
        err_set(err, "%s: header is not a JSON object", label);
        goto done;
    }
    if (check_duplicate_keys(root, label, "the header", err)) goto done;
    int count = 0;
    for (const cJSON *c = root->child; c; c = c->next) count += strcmp(c->string, "__metadata__") != 0;
    StTensor *grown = realloc(st->tensors, ((size_t)st->n_tensors + (size_t)count + 1) * sizeof *grown);
    if (!grown) {
        err_set(err, "%s: out of memory", label);
        goto done;
    }
    st->tensors = grown;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (!strcmp(c->string, "__metadata__")) {
            if (parse_metadata(st, c, label, err)) goto done;
            continue;
        }
        StTensor *t = &st->tensors[st->n_tensors];
        memset(t, 0, sizeof *t);
        if (parse_entry(c, t, label, err)) goto done;
        t->name = strdup(c->string);
        if (!t->name) {
            err_set(err, "%s: out of memory", label);
            goto done;
        }
        t->shard = shard;
        st->n_tensors++;
    }
    /* Offsets: sorted by begin, each tensor must start where the previous ended, and the
     * last must end exactly at the end of the file — no overlap, no hole, no trailing bytes. */
    order = malloc(((size_t)count + 1) * sizeof *order);
    if (!order) {
        err_set(err, "%s: out of memory", label);
        goto done;
    }
    for (int i = 0; i < count; i++) order[i] = &st->tensors[first + i];
    qsort(order, (size_t)count, sizeof *order, cmp_by_offset);
    uint64_t data_len = (uint64_t)len - 8 - n, pos = 0;
    for (int i = 0; i < count; i++) {
        uint64_t b = (uint64_t)(uintptr_t)order[i]->data;
        if (b != pos) {
            err_set(err, "%s: tensor '%s' starts at byte %llu of the data, expected %llu (%s)", label,
                    order[i]->name, (unsigned long long)b, (unsigned long long)pos,
                    b < pos ? "overlaps the previous tensor" : "leaves a hole");
            goto done;
        }
        pos = b + order[i]->nbytes;
        if (pos > data_len) {
            err_set(err, "%s: tensor '%s' ends at byte %llu but the data section has %llu bytes (truncated?)",
                    label, order[i]->name, (unsigned long long)pos, (unsigned long long)data_len);
            goto done;
        }
    }
    if (pos != data_len) {
        err_set(err, "%s: %llu bytes after the last tensor are not described by the header", label,
                (unsigned long long)(data_len - pos));
        goto done;
    }
    for (int i = 0; i < count; i++)
        st->tensors[first + i].data = buf + 8 + n + (uint64_t)(uintptr_t)st->tensors[first + i].data;
    rc = 0;
done:
    if (rc) { /* roll back this file's entries */
        for (int i = first; i < st->n_tensors; i++) free(st->tensors[i].name);
        st->n_tensors = first;
    }
    free(order);
    cJSON_Delete(root);
    return rc;
}

/* ------------------------------------------------------------------------------------- */
/* files and shards                                                                        */

static int map_file(SafeTensors *st, const char *path, Err *err) {
    const uint8_t *map;
    size_t size;
    if (map_file_readonly(path, &map, &size, err)) return -1;
    StFile *grown = realloc(st->files, ((size_t)st->n_files + 1) * sizeof *grown);
    char *p = strdup(path);
    if (!grown || !p) {
        free(p);
        if (grown) st->files = grown;
        unmap_file(map, size);
        return err_set(err, "%s: out of memory", path);
    }
    st->files = grown;
    st->files[st->n_files++] = (StFile){ p, map, size };
    return 0;
}

void st_close(SafeTensors *st) {
    for (int i = 0; i < st->n_files; i++) {
        unmap_file(st->files[i].map, st->files[i].size);
        free(st->files[i].path);
    }
    for (int i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->files);
    free(st->tensors);
    free(st->table);
    free(st->metadata_json);
    memset(st, 0, sizeof *st);
}

static int open_single(SafeTensors *st, const char *path, Err *err) {
    if (map_file(st, path, err)) return -1;
    const StFile *f = &st->files[st->n_files - 1];
    if (st_parse_buffer(st, f->map, f->size, st->n_files - 1, path, err)) return -1;
    return build_table(st, err);
}

/** A shard name from an index must be a plain file name inside the checkpoint directory. */
static int shard_name_ok(const char *s) {
    return *s && !strchr(s, '/') && !strchr(s, '\\') && strcmp(s, ".") && strcmp(s, "..") && !strstr(s, "..");
}

static int open_index(SafeTensors *st, const char *index_path, FILE *log, Err *err) {
    char *text = NULL;
    size_t len = 0;
    if (read_file(index_path, 256u << 20, &text, &len, err)) return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    int rc = -1;
    char **shards = NULL;
    int n_shards = 0;
    if (!root || !cJSON_IsObject(root)) {
        err_set(err, "%s: not a JSON object", index_path);
        goto done;
    }
    if (check_duplicate_keys(root, index_path, "the index", err)) goto done;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        err_set(err, "%s: missing \"weight_map\" object", index_path);
        goto done;
    }
    if (check_duplicate_keys(wm, index_path, "weight_map", err)) goto done;
    if (!wm->child) {
        err_set(err, "%s: weight_map is empty", index_path);
        goto done;
    }
    /* Directory of the index: shards are resolved next to it. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", index_path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    int n_map = cJSON_GetArraySize(wm);
    shards = calloc((size_t)n_map, sizeof *shards);
    if (!shards) {
        err_set(err, "%s: out of memory", index_path);
        goto done;
    }
    for (const cJSON *c = wm->child; c; c = c->next) {
        if (!cJSON_IsString(c)) {
            err_set(err, "%s: weight_map entry '%s' is not a string", index_path, c->string);
            goto done;
        }
        if (!shard_name_ok(c->valuestring)) {
            err_set(err, "%s: shard name '%s' (for '%s') must be a plain file name without '/' or '..'", index_path,
                    c->valuestring, c->string);
            goto done;
        }
        int known = 0;
        for (int i = 0; i < n_shards && !known; i++) known = !strcmp(shards[i], c->valuestring);
        if (!known) shards[n_shards++] = c->valuestring;
    }
    for (int i = 0; i < n_shards; i++) {
        char path[4096];
        if (path_join(path, sizeof path, dir, shards[i])) {
            err_set(err, "%s: shard path too long", index_path);
            goto done;
        }
        if (log) fprintf(log, "\rdsv3: mapping and validating shard %d/%d %s", i + 1, n_shards, shards[i]), fflush(log);
        if (map_file(st, path, err)) goto done;
        const StFile *f = &st->files[st->n_files - 1];
        if (st_parse_buffer(st, f->map, f->size, st->n_files - 1, path, err)) goto done;
    }
    if (log) fprintf(log, "\n");
    if (build_table(st, err)) {
        err_prefix(err, "%s", index_path);
        goto done;
    }
    /* Every mapped tensor is in its shard, and every tensor of a shard is in the map. */
    for (const cJSON *c = wm->child; c; c = c->next) {
        const StTensor *t = st_find(st, c->string);
        if (!t) {
            err_set(err, "%s: tensor '%s' is mapped to %s but not found there", index_path, c->string, c->valuestring);
            goto done;
        }
        const char *base = strrchr(st->files[t->shard].path, '/');
        base = base ? base + 1 : st->files[t->shard].path;
        if (strcmp(base, c->valuestring)) {
            err_set(err, "%s: tensor '%s' is mapped to %s but stored in %s", index_path, c->string, c->valuestring, base);
            goto done;
        }
    }
    if (st->n_tensors != n_map) {
        for (int i = 0; i < st->n_tensors; i++)
            if (!cJSON_GetObjectItemCaseSensitive(wm, st->tensors[i].name)) {
                err_set(err, "%s: tensor '%s' in %s is missing from weight_map", index_path, st->tensors[i].name,
                        st->files[st->tensors[i].shard].path);
                goto done;
            }
    }
    rc = 0;
done:
    free(shards);
    cJSON_Delete(root);
    return rc;
}

int st_open(SafeTensors *st, const char *path, FILE *log, Err *err) {
    memset(st, 0, sizeof *st);
    /* Progress lines are for people watching a terminal; logs and pipes get only errors. */
    if (log && !isatty(fileno(log))) log = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) return err_set(err, "%s: %s", path, strerror(errno));
    int rc;
    if (S_ISDIR(sb.st_mode)) {
        char p[4096];
        if (path_join(p, sizeof p, path, "model.safetensors.index.json")) return err_set(err, "%s: path too long", path);
        if (stat(p, &sb) == 0) rc = open_index(st, p, log, err);
        else {
            if (path_join(p, sizeof p, path, "model.safetensors")) return err_set(err, "%s: path too long", path);
            if (stat(p, &sb) != 0)
                return err_set(err, "%s: no model.safetensors or model.safetensors.index.json in this directory", path);
            rc = open_single(st, p, err);
        }
    } else {
        size_t n = strlen(path);
        rc = (n >= 5 && !strcmp(path + n - 5, ".json")) ? open_index(st, path, log, err) : open_single(st, path, err);
    }
    if (rc) st_close(st);
    return rc;
}

/* ------------------------------------------------------------------------------------- */
/* writer                                                                                  */

static int cmp_entries(const void *a, const void *b) {
    const StEntry *x = *(const StEntry *const *)a, *y = *(const StEntry *const *)b;
    int bx = dtype_bits(x->dtype), by = dtype_bits(y->dtype);
    if (bx != by) return by - bx; /* larger elements first: everything stays naturally aligned */
    return strcmp(x->name, y->name);
}

uint64_t st_entry_bytes(const StEntry *e) {
    uint64_t numel = 1, bits;
    for (int d = 0; d < e->ndim; d++)
        if (e->shape[d] < 0 || __builtin_mul_overflow(numel, (uint64_t)e->shape[d], &numel)) return UINT64_MAX;
    if (__builtin_mul_overflow(numel, (uint64_t)dtype_bits(e->dtype), &bits) || bits % 8) return UINT64_MAX;
    return bits / 8;
}

static int fill_copy(void *ctx, const StEntry *e, void *buf, size_t n) {
    (void)ctx;
    memcpy(buf, e->data, n);
    return 0;
}

int st_write(const char *path, const StEntry *entries, int n, const char *metadata, Err *err) {
    return st_write_stream(path, entries, n, metadata, fill_copy, NULL, err);
}

int st_write_stream(const char *path, const StEntry *entries, int n, const char *metadata,
                    int (*fill)(void *ctx, const StEntry *e, void *buf, size_t nbytes), void *ctx, Err *err) {
    const StEntry **order = malloc(((size_t)n + 1) * sizeof *order);
    uint64_t *sizes = calloc((size_t)n + 1, sizeof *sizes);
    cJSON *root = cJSON_CreateObject();
    int rc = -1;
    char *hdr = NULL;
    void *buf = NULL;
    OutFile out;
    int open_out = 0;
    if (!order || !sizes || !root) {
        err_set(err, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < n; i++) order[i] = &entries[i];
    qsort(order, (size_t)n, sizeof *order, cmp_entries);
    if (metadata) {
        cJSON *m = cJSON_Parse(metadata);
        if (!m || !cJSON_IsObject(m)) {
            cJSON_Delete(m);
            err_set(err, "%s: metadata is not a JSON object", path);
            goto done;
        }
        cJSON_AddItemToObject(root, "__metadata__", m);
    }
    uint64_t pos = 0, largest = 0;
    for (int i = 0; i < n; i++) {
        const StEntry *e = order[i];
        sizes[i] = st_entry_bytes(e);
        if (sizes[i] == UINT64_MAX || sizes[i] > (1ull << 53) - pos) {
            err_set(err, "%s: tensor '%s': bad shape or size", path, e->name);
            goto done;
        }
        if (sizes[i] > largest) largest = sizes[i];
        cJSON *t = cJSON_CreateObject();
        cJSON_AddItemToObject(root, e->name, t);
        cJSON_AddStringToObject(t, "dtype", dtype_name(e->dtype));
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e->shape[d]));
        cJSON *offs = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)pos));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(pos + sizes[i])));
        pos += sizes[i];
    }
    hdr = cJSON_PrintUnformatted(root);
    buf = malloc(largest ? (size_t)largest : 1);
    if (!hdr || !buf) {
        err_set(err, "%s: out of memory", path);
        goto done;
    }
    size_t hlen = strlen(hdr), padded = (hlen + 7) / 8 * 8;
    if (outfile_open(&out, path, 0, err)) goto done;
    open_out = 1;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    char pad[8] = "        ";
    if (outfile_write(&out, len8, 8, err) || outfile_write(&out, hdr, hlen, err) ||
        outfile_write(&out, pad, padded - hlen, err))
        goto done;
    for (int i = 0; i < n; i++) {
        if (fill(ctx, order[i], buf, (size_t)sizes[i])) {
            err_set(err, "%s: could not produce tensor '%s'", path, order[i]->name);
            goto done;
        }
        if (outfile_write(&out, buf, (size_t)sizes[i], err)) goto done;
    }
    open_out = 0;
    if (outfile_commit(&out, err)) goto done;
    rc = 0;
done:
    if (open_out) outfile_abort(&out);
    free(buf);
    free(hdr);
    free(sizes);
    free(order);
    cJSON_Delete(root);
    return rc;
}
