/**
 * @file tokenizer_internal.h
 * @brief The layout of a Tokenizer, shared by the two files that implement tokenizer.h:
 *        tokenizer_load.c (reads and validates tokenizer.json / tokenizer_config.json and
 *        builds this struct) and tokenizer.c (encodes and decodes with it). Not a public
 *        header: everything else sees the opaque type of tokenizer.h.
 *
 * Data layout: every id in [0, vocab_size) has a kind (none / vocabulary / added), its
 * tokenizer.json string (for tokenizer_id_to_token) and its decoded bytes (precomputed once,
 * so decode is a copy). The vocabulary is a StrMap (byte-level string → index), the merges a
 * U64Map keyed by the packed pair of ids (rank and result id in parallel arrays), and added
 * tokens live in two byte tries (normalized=false / normalized=true) for leftmost-longest
 * matching. Nothing is a global; the only shared state is Oniguruma's one-time init (pretok.c).
 */
#ifndef DSV3_TOKENIZER_INTERNAL_H
#define DSV3_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "base/hashmap.h"
#include "pretok.h"
#include "tokenizer.h"

/** Largest id accepted from a file: bounds the per-id arrays a hostile file can make us allocate
 *  (DeepSeek-V3 uses 128 815 ids; the largest public vocabularies are ~256k). */
#define TOK_MAX_ID 16777215
/** Largest tokenizer.json / tokenizer_config.json / tiktoken.model we read (DeepSeek-V3's is 7.8 MB). */
#define TOK_MAX_FILE ((size_t)512 << 20)

/** What an id names: nothing, a model.vocab token, or an added token. */
enum { KIND_NONE = 0, KIND_VOCAB = 1, KIND_ADDED = 2 };

/** A byte trie node; children form a singly linked sibling list (fan-out is tiny past the root). */
typedef struct {
    int first_child;    /**< first child node, -1 if none */
    int sibling;        /**< next child of the same parent, -1 if none */
    int token;          /**< the id ending here, or -1 */
    unsigned char byte; /**< the byte on the edge into this node */
} TrieNode;

/** A byte trie of added tokens (built by tokenizer_load, searched leftmost-longest by the encoder). */
typedef struct {
    TrieNode *node;           /**< node[0] is the root */
    int n;                    /**< nodes in use */
    int cap;                  /**< nodes allocated */
    unsigned char first[256]; /**< bytes that start some token: a cheap filter for the scan */
} Trie;

/** A loaded tokenizer: immutable after tokenizer_load(). */
struct Tokenizer {
    int vocab_size;          /**< max id + 1 */
    unsigned char *kind;     /**< [vocab_size] KIND_* */
    unsigned char *special;  /**< [vocab_size] added token with "special": true */
    size_t *name_off;        /**< [vocab_size] offset of the tokenizer.json string in names */
    ByteBuf names;           /**< NUL-terminated strings back to back */
    size_t *dec_off;         /**< [vocab_size + 1] decoded bytes of id i: dec[dec_off[i], dec_off[i+1]) */
    ByteBuf dec;             /**< decoded bytes of every id, back to back */

    StrMap vocab;            /**< model.vocab keys */
    int *vocab_id;           /**< [vocab.n] id of each key */
    U64Map merges;           /**< (left id << 32 | right id) → merge index */
    uint32_t *merge_rank;    /**< [merges.n] rank (= position in model.merges, the last one if repeated) */
    int *merge_new;          /**< [merges.n] id of the merged token */

    int byte_id[256];        /**< id of the byte-level character of each byte, -1 if not in vocab */
    int fb_n[256];           /**< byte_fallback: number of <0xXX> ids for that character, -1 if unusable */
    int fb_id[256][2];       /**< byte_fallback: the <0xXX> ids of that character's UTF-8 bytes */
    int unk_id;              /**< -1 when model.unk_token is null */
    int fuse_unk;            /**< model.fuse_unk: consecutive unknown characters become one unk_id */
    int byte_fallback;       /**< model.byte_fallback: unknown bytes become <0xXX> tokens */
    int ignore_merges;       /**< model.ignore_merges: a piece that is a vocabulary token is kept whole */

    StrMap added;            /**< content → index */
    int *added_id;           /**< [added.n] */
    Trie trie_raw;           /**< normalized=false added tokens */
    Trie trie_norm;          /**< normalized=true added tokens */

    PreTokenizer *pre;       /**< the compiled pre_tokenizer */
    int bos_id;              /**< tokenizer_config.json bos_token, -1 if none */
    int eos_id;              /**< tokenizer_config.json eos_token, -1 if none */
    char *chat_template;     /**< tokenizer_config.json chat_template, NULL if none */
    int tiktoken;            /**< loaded from a tiktoken.model (tokenizer_tiktoken.c), not a tokenizer.json */
    size_t run_limit;        /**< > 0: cut runs of whitespace / non-whitespace longer than this before
                                  pre-tokenizing (Kimi's tokenizer: 25 000 characters) */
};

/* Shared by the two loaders (tokenizer_load.c defines them). */

/** Reads and parses a JSON file (at most TOK_MAX_FILE bytes); errors name the file and the line. */
int tok_parse_json_file(const char *path, cJSON **root, Err *err);
/** Grows the per-id arrays (kind, special, name_off) to hold ids < @p n. */
int tok_ensure_ids(Tokenizer *t, int n);
/** Stores the name of @p id (n bytes, NUL added) in t->names. */
int tok_set_name(Tokenizer *t, int id, const char *s, size_t n);
/** Adds a token's bytes to a trie of added tokens. */
int tok_trie_insert(Trie *tr, const unsigned char *s, size_t n, int token);
/** Reads the optional tokenizer_config.json at @p path: bos_token, eos_token, chat_template. */
int tok_load_config(Tokenizer *t, const char *path, Err *err);

/**
 * Loads a tiktoken BPE (tokenizer_tiktoken.c): @p model_path (tiktoken.model: "base64 rank" lines),
 * its pre-tokenizer pattern and special tokens from the tokenizer_config.json at @p cfg_path.
 */
int tokenizer_load_tiktoken(Tokenizer **out, const char *model_path, const char *cfg_path, Err *err);

#endif /* DSV3_TOKENIZER_INTERNAL_H */
