/**
 * @file safetensors.h
 * @brief Memory-mapped safetensors checkpoints: one file or a sharded directory with
 *        `model.safetensors.index.json`, validated the way the reference Rust reader does
 *        (docs/formats.md §1.1–1.3), plus a writer.
 *
 * Tensors are used in their stored dtype straight from the mapping: nothing is converted
 * or copied at load time, so the resident memory of a run is the pages of the file that
 * the computation touches, plus activations and KV cache. Data pointers may be unaligned
 * (the format promises no alignment), so readers go through memcpy-based loads (st_load_*).
 */
#ifndef DSV3_SAFETENSORS_H
#define DSV3_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

/** Element types of the safetensors format (tensor.rs `enum Dtype`), in header spelling order. */
typedef enum {
    DT_BOOL, DT_F4, DT_F6_E2M3, DT_F6_E3M2, DT_U8, DT_I8, DT_F8_E5M2, DT_F8_E4M3, DT_F8_E8M0,
    DT_F8_E4M3FNUZ, DT_F8_E5M2FNUZ, DT_I16, DT_U16, DT_F16, DT_BF16, DT_I32, DT_U32, DT_F32,
    DT_C64, DT_F64, DT_I64, DT_U64,
    DT_COUNT
} DType;

/** Header spelling of a dtype ("F8_E4M3", "BF16", ...). */
const char *dtype_name(DType t);
/** Bits per element (4, 6, 8, 16, 32 or 64). */
int dtype_bits(DType t);
/** Looks a header spelling up; -1 if unknown. */
int dtype_from_name(const char *s);

/** Largest number of dimensions we accept in a header (the real model needs 2). */
#define ST_MAX_DIMS 8
/** Header size cap of the reference reader (MAX_HEADER_SIZE = 100 000 000). */
#define ST_MAX_HEADER 100000000ull

/** One tensor of a checkpoint: a view into a mapped file. */
typedef struct {
    char *name;                    /**< HF tensor name, e.g. "model.layers.3.mlp.gate.weight" */
    DType dtype;                   /**< element type */
    int ndim;                      /**< number of dimensions (0 for a scalar) */
    int64_t shape[ST_MAX_DIMS];    /**< dimensions, outermost first */
    uint64_t numel;                /**< product of shape (1 for a 0-rank scalar) */
    uint64_t nbytes;               /**< numel × bits / 8, equal to the data_offsets span */
    const uint8_t *data;           /**< first byte inside the mapping (possibly unaligned) */
    int shard;                     /**< index into SafeTensors.files */
} StTensor;

/** One mapped .safetensors file. */
typedef struct {
    char *path;                    /**< as opened */
    const uint8_t *map;            /**< whole file, PROT_READ */
    size_t size;                   /**< bytes mapped */
} StFile;

/** A whole checkpoint: every tensor of every shard, looked up by name. */
typedef struct {
    StFile *files;                 /**< the mapped shards */
    int n_files;                   /**< number of shards */
    StTensor *tensors;             /**< every tensor of every shard */
    int n_tensors;                 /**< number of tensors */
    int *table;                    /**< open-addressing hash: tensor index or -1 */
    size_t table_cap;              /**< slots in table (a power of two) */
    char *metadata_json;           /**< __metadata__ of the first file as JSON text, or NULL */
} SafeTensors;

/**
 * Opens a checkpoint. @p path is a `.safetensors` file, a `model.safetensors.index.json`,
 * or a directory holding one of the two (the index wins). Every file is mapped and fully
 * validated before this returns. @p log, if not NULL and a terminal, shows a progress line.
 * On error nothing stays mapped or allocated.
 */
int st_open(SafeTensors *st, const char *path, FILE *log, Err *err);

/** Unmaps and frees everything; safe on a zeroed or already-closed struct. */
void st_close(SafeTensors *st);

/** Tensor by exact name, or NULL. */
const StTensor *st_find(const SafeTensors *st, const char *name);

/**
 * Validates one in-memory safetensors image (the same checks st_open applies to each file)
 * and appends its tensors to @p st with shard index @p shard. Exposed for the fuzzer and tests.
 * @p label names the file in messages.
 */
int st_parse_buffer(SafeTensors *st, const uint8_t *buf, size_t len, int shard, const char *label, Err *err);

/* ---- element loads that tolerate unaligned pointers (compilers turn these into one mov) ---- */
static inline uint16_t st_load_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline float st_load_f32(const uint8_t *p) { float v; memcpy(&v, p, 4); return v; }

/* ---- writer ---- */

/** One tensor to write; @p data holds nbytes = numel × bits / 8 bytes. */
typedef struct {
    const char *name;              /**< tensor name */
    DType dtype;                   /**< element type */
    int ndim;                      /**< number of dimensions */
    int64_t shape[ST_MAX_DIMS];    /**< dimensions */
    const void *data;              /**< the bytes (st_write) or NULL (st_write_stream) */
} StEntry;

/**
 * Writes a safetensors file as one complete output (outfile.h: a unique temporary beside
 * @p path, renamed into place when every byte is written). Tensors are laid out by
 * descending element size, then name, and the header is space-padded to a multiple of 8,
 * so every tensor in the file is naturally aligned (what the Rust writer does).
 * @p metadata: NULL or a JSON object text of string→string pairs.
 */
int st_write(const char *path, const StEntry *entries, int n, const char *metadata, Err *err);

/**
 * Like st_write, but the data of each entry is produced on demand: @p fill is called once per
 * tensor, in file order, with a buffer of the tensor's byte size (entries' data may be NULL).
 * Lets a multi-gigabyte checkpoint be written without holding it in memory.
 */
int st_write_stream(const char *path, const StEntry *entries, int n, const char *metadata,
                    int (*fill)(void *ctx, const StEntry *e, void *buf, size_t nbytes), void *ctx, Err *err);

/** Byte size of an entry (numel × bits / 8), or UINT64_MAX on overflow / partial bytes. */
uint64_t st_entry_bytes(const StEntry *e);

#endif /* DSV3_SAFETENSORS_H */
