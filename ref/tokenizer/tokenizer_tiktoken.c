/**
 * @file tokenizer_tiktoken.c
 * @brief tokenizer_load_tiktoken(): a tiktoken BPE (`tiktoken.model` + `tokenizer_config.json`, the
 *        form of Kimi K2, Moonlight and Kimi-VL; docs/tokenizer.md, docs/model.md §13.5) loaded into the
 *        same tables as a tokenizer.json, so that encode, decode and the chat code are shared.
 *
 * tiktoken (openai/tiktoken, src/lib.rs) encodes a text as
 *   1. special tokens (all of them allowed, as Kimi's TikTokenTokenizer.encode passes
 *      allowed_special="all") are cut out verbatim;
 *   2. the regex pattern splits the rest into pieces (find_iter, leftmost-first alternation);
 *   3. a piece that is itself a token is that token; otherwise its bytes are merged pairwise,
 *      always the adjacent pair whose concatenation has the lowest rank (leftmost on a tie),
 *      until no adjacent concatenation is a token.
 * Step 3 is byte-level BPE with "merges" (a, b) → a+b whose rank is the rank of a+b, and
 * ignore_merges for whole pieces: this file derives those merges from the ranks (every split of
 * every token into two tokens), names each token by its GPT-2 byte-level string (bytelevel.h), and
 * hands tokenizer.c the same structures a tokenizer.json gives it. Step 2 is a Split(Isolated) +
 * ByteLevel(use_regex=false) pre-tokenizer on Oniguruma, which supports the `&&` class intersections
 * of Kimi's pattern. Every character is matched by some alternative of the patterns used (letters,
 * marks, numbers, whitespace and `[^\s\p{L}\p{N}]` together cover Unicode), so Isolated — which keeps
 * unmatched text — and tiktoken's find_iter — which would drop it — give the same pieces.
 *
 * The pattern: tokenizer_config.json's "pat_str" when present (the fixtures of cl100k_base and
 * o200k_base carry tiktoken's), else the one of the tokenizer class the config names — Kimi's
 * `tokenization_kimi.TikTokenTokenizer` / Moonlight's `tokenization_moonshot.TikTokenTokenizer`,
 * whose pat_str is built in below. Special tokens: "added_tokens_decoder" {id: {"content", ...}};
 * for Kimi's class, the ids of the 256 reserved slots after the ranks that it does not name are
 * `<|reserved_token_{id}|>`, as its __init__ fills them. Kimi's encode also cuts the text into
 * 400 000-character chunks and every run of more than 25 000 whitespace or non-whitespace characters
 * before tiktoken sees it; tokenizer.c reproduces that (run_limit).
 *
 * Decoding is the concatenated token bytes, then UTF-8 with U+FFFD for invalid sequences (tiktoken's
 * decode with errors="replace"): the shared decoder of tokenizer.c.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bytelevel.h"
#include "tokenizer_internal.h"

/** Kimi K2's / Moonlight's pat_str (tokenization_kimi.py, tokenization_moonshot.py), joined with "|". */
static const char KIMI_PATTERN[] =
    "[\\p{Han}]+"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+"
    "|\\s+(?!\\S)"
    "|\\s+";

/** Reserved special-token slots after the ranks in Kimi's class (num_reserved_special_tokens). */
enum { KIMI_RESERVED = 256 };
/** Kimi's encode: chunks of at most this many characters, runs of at most KIMI_RUN_LIMIT. */
enum { KIMI_RUN_LIMIT = 25000 };

/** Value of one base64 character, -1 if it is not one. */
static int b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/** Standard base64 with '=' padding (Python's b64decode of a tiktoken line) → bytes; -1 if malformed. */
static long b64_decode(const char *s, size_t n, unsigned char *out) {
    if (n == 0 || n % 4) return -1;
    size_t pad = (s[n - 1] == '=') + (s[n - 2] == '=');
    for (size_t i = 0; i < n; i += 4) {
        uint32_t w = 0;
        for (size_t j = 0; j < 4; j++) {
            int v = s[i + j] == '=' && i + j >= n - pad ? 0 : b64_value((unsigned char)s[i + j]);
            if (v < 0) return -1;
            w = w << 6 | (uint32_t)v;
        }
        out[i / 4 * 3] = (unsigned char)(w >> 16), out[i / 4 * 3 + 1] = (unsigned char)(w >> 8);
        out[i / 4 * 3 + 2] = (unsigned char)w;
    }
    return (long)(n / 4 * 3 - pad);
}

/** Reads the "base64 rank" lines into the vocabulary (named by byte-level strings, id = rank). */
static int load_ranks(Tokenizer *t, const char *path, Err *err) {
    char *data;
    size_t len;
    if (read_file(path, TOK_MAX_FILE, &data, &len, err) != 0) return -1;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += data[i] == '\n';
    int rc = 0, max_id = -1;
    if (strmap_init(&t->vocab, lines) != 0 || !(t->vocab_id = xcalloc(lines + 1, sizeof *t->vocab_id)))
        rc = err_set(err, "%s: out of memory", path);
    unsigned char *raw = NULL;
    char *name = NULL;
    size_t line = 0;
    for (size_t at = 0; rc == 0 && at < len; line++) {
        const char *s = data + at, *nl = memchr(s, '\n', len - at);
        size_t n = nl ? (size_t)(nl - s) : len - at;
        at += n + 1;
        if (n > 0 && s[n - 1] == '\r') n--;
        if (n == 0) continue; /* load_tiktoken_bpe skips empty lines */
        const char *sp = memchr(s, ' ', n);
        if (!sp || sp == s) {
            rc = err_set(err, "%s:%zu: expected \"<base64 token> <rank>\"", path, line + 1);
            break;
        }
        size_t tl = (size_t)(sp - s);
        free(raw), free(name);
        raw = malloc(tl / 4 * 3 + 3), name = malloc(2 * tl + 1);
        if (!raw || !name) {
            rc = err_set(err, "%s: out of memory", path);
            break;
        }
        long nb = b64_decode(s, tl, raw);
        if (nb <= 0) {
            rc = err_set(err, "%s:%zu: the token is not valid base64", path, line + 1);
            break;
        }
        char num[16];
        size_t rl = n - tl - 1;
        long rank;
        if (rl == 0 || rl >= sizeof num || (memcpy(num, sp + 1, rl), num[rl] = 0, parse_long(num, 0, TOK_MAX_ID, &rank))) {
            rc = err_set(err, "%s:%zu: the rank must be an integer in [0, %d]", path, line + 1, TOK_MAX_ID);
            break;
        }
        size_t nl2 = bytelevel_encode(raw, (size_t)nb, name);
        int is_new;
        long k = strmap_intern(&t->vocab, name, nl2, &is_new);
        if (k < 0) rc = err_set(err, "%s: out of memory", path);
        else if (!is_new) rc = err_set(err, "%s:%zu: the token of rank %ld is listed twice", path, line + 1, rank);
        else {
            t->vocab_id[k] = (int)rank;
            if (rank > max_id) max_id = (int)rank;
        }
    }
    free(raw), free(name), free(data);
    if (rc) return -1;
    if (t->vocab.n == 0) return err_set(err, "%s: no tokens", path);
    if (tok_ensure_ids(t, max_id + 1) != 0) return err_set(err, "%s: out of memory", path);
    for (size_t k = 0; k < t->vocab.n; k++) {
        int id = t->vocab_id[k];
        size_t kl;
        const char *key = strmap_key(&t->vocab, k, &kl);
        if (t->kind[id] != KIND_NONE) return err_set(err, "%s: rank %d is given to two tokens", path, id);
        t->kind[id] = KIND_VOCAB;
        if (tok_set_name(t, id, key, kl) != 0) return err_set(err, "%s: out of memory", path);
    }
    for (int b = 0; b < 256; b++) {
        char s[4];
        size_t n = utf8_encode(s, bytelevel_char((unsigned char)b));
        long k = strmap_find(&t->vocab, s, n);
        if (k < 0) return err_set(err, "%s: byte 0x%02x has no token (tiktoken needs all 256)", path, b);
        t->byte_id[b] = t->vocab_id[k];
        t->fb_n[b] = -1;
    }
    return 0;
}

/** Merges (a, b) → a+b of rank rank(a+b), for every split of every token into two tokens. */
static int derive_merges(Tokenizer *t, const char *path, Err *err) {
    size_t cap = t->vocab.n * 4 + 16;
    if (u64map_init(&t->merges, cap) != 0 || !(t->merge_rank = xcalloc(cap, sizeof *t->merge_rank)) ||
        !(t->merge_new = xcalloc(cap, sizeof *t->merge_new)))
        return err_set(err, "%s: out of memory", path);
    for (size_t k = 0; k < t->vocab.n; k++) {
        size_t len;
        const char *s = strmap_key(&t->vocab, k, &len);
        /* byte-level characters are 1 or 2 UTF-8 bytes: split only at character starts */
        for (size_t cut = 1; cut < len; cut++) {
            if (((unsigned char)s[cut] & 0xc0) == 0x80) continue;
            long a = strmap_find(&t->vocab, s, cut), b = a < 0 ? -1 : strmap_find(&t->vocab, s + cut, len - cut);
            if (b < 0) continue;
            uint64_t key = ((uint64_t)(uint32_t)t->vocab_id[a] << 32) | (uint32_t)t->vocab_id[b];
            int is_new;
            long m = u64map_intern(&t->merges, key, &is_new);
            if (m < 0) return err_set(err, "%s: out of memory", path);
            if ((size_t)m >= cap) {
                size_t nc = cap * 2;
                uint32_t *r = realloc(t->merge_rank, nc * sizeof *r);
                if (r) t->merge_rank = r;
                int *w = realloc(t->merge_new, nc * sizeof *w);
                if (w) t->merge_new = w;
                if (!r || !w) return err_set(err, "%s: out of memory", path);
                cap = nc;
            }
            t->merge_rank[m] = (uint32_t)t->vocab_id[k];
            t->merge_new[m] = t->vocab_id[k];
        }
    }
    t->ignore_merges = 1; /* a piece that is a token is that token */
    return 0;
}

/** One special token: an added token with its id, matched verbatim before pre-tokenizing. */
static int add_special(Tokenizer *t, int id, const char *content, const char *where, Err *err) {
    size_t n = strlen(content);
    if (n == 0 || !utf8_valid(content, n)) return err_set(err, "%s: the content must be non-empty UTF-8", where);
    if (tok_ensure_ids(t, id + 1) != 0) return err_set(err, "%s: out of memory", where);
    if (t->kind[id] != KIND_NONE)
        return err_set(err, "%s: id %d is already a %s token", where, id, t->kind[id] == KIND_VOCAB ? "ranked" : "special");
    int is_new;
    long k = strmap_intern(&t->added, content, n, &is_new);
    if (k < 0) return err_set(err, "%s: out of memory", where);
    if (!is_new) return err_set(err, "%s: '%.48s' is listed twice", where, content);
    t->added_id[k] = id;
    t->kind[id] = KIND_ADDED;
    t->special[id] = 1;
    if (tok_set_name(t, id, content, n) != 0 || tok_trie_insert(&t->trie_raw, (const unsigned char *)content, n, id) != 0)
        return err_set(err, "%s: out of memory", where);
    return 0;
}

/** Does tokenizer_config.json name Kimi's / Moonlight's TikTokenTokenizer (auto_map or tokenizer_class)? */
static int is_kimi_class(const cJSON *cfg) {
    const cJSON *am = cJSON_GetObjectItemCaseSensitive(cfg, "auto_map");
    const cJSON *at = am ? cJSON_GetObjectItemCaseSensitive(am, "AutoTokenizer") : NULL, *it;
    cJSON_ArrayForEach(it, at) {
        if (cJSON_IsString(it) && (strstr(it->valuestring, "tokenization_kimi.") || strstr(it->valuestring, "tokenization_moonshot.")))
            return 1;
    }
    return 0;
}

/** Special tokens, pattern and the reserved slots, from the parsed tokenizer_config.json (NULL: none). */
static int load_specials(Tokenizer *t, const cJSON *cfg, int n_ranks, const char **pattern, const char *path, Err *err) {
    const cJSON *dec = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder") : NULL, *it;
    int count = dec ? cJSON_GetArraySize(dec) : 0, kimi = cfg && is_kimi_class(cfg);
    if (dec && !cJSON_IsObject(dec)) return err_set(err, "%s: added_tokens_decoder must be an object", path);
    if (strmap_init(&t->added, (size_t)count + KIMI_RESERVED) != 0 ||
        !(t->added_id = xcalloc((size_t)count + KIMI_RESERVED + 1, sizeof *t->added_id)))
        return err_set(err, "%s: out of memory", path);
    cJSON_ArrayForEach(it, dec) {
        char where[256];
        snprintf(where, sizeof where, "%s: added_tokens_decoder[\"%.20s\"]", path, it->string);
        long id;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (parse_long(it->string, 0, TOK_MAX_ID, &id)) return err_set(err, "%s: the key must be an id in [0, %d]", where, TOK_MAX_ID);
        if (!cJSON_IsString(content)) return err_set(err, "%s: expected {\"content\": string, ...}", where);
        if (add_special(t, (int)id, content->valuestring, where, err) != 0) return -1;
    }
    if (kimi) { /* TikTokenTokenizer.__init__: every unnamed reserved slot is <|reserved_token_{id}|> */
        for (int id = n_ranks; id < n_ranks + KIMI_RESERVED; id++) {
            if (id < t->vocab_size && t->kind[id] != KIND_NONE) continue;
            char name[48];
            snprintf(name, sizeof name, "<|reserved_token_%d|>", id);
            if (add_special(t, id, name, path, err) != 0) return -1;
        }
        t->run_limit = KIMI_RUN_LIMIT;
    }
    const cJSON *pat = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "pat_str") : NULL;
    if (pat && !cJSON_IsString(pat)) return err_set(err, "%s: pat_str must be a string", path);
    *pattern = pat ? pat->valuestring : kimi ? KIMI_PATTERN : NULL;
    if (!*pattern)
        return err_set(err, "%s: no pre-tokenizer pattern for tiktoken.model: give \"pat_str\", or an auto_map naming "
                            "tokenization_kimi / tokenization_moonshot's TikTokenTokenizer", path);
    return 0;
}

/** Split(pattern, Isolated) then ByteLevel(use_regex = false), through pretok_from_json. */
static int compile_pattern(Tokenizer *t, const char *pattern, const char *path, Err *err) {
    cJSON *root = cJSON_CreateObject(), *seq = root ? cJSON_AddArrayToObject(root, "pretokenizers") : NULL;
    cJSON *split = cJSON_CreateObject(), *bl = cJSON_CreateObject();
    int rc = -1;
    if (seq && split && bl && cJSON_AddStringToObject(root, "type", "Sequence") && cJSON_AddStringToObject(split, "type", "Split")) {
        cJSON *p = cJSON_AddObjectToObject(split, "pattern");
        if (p && cJSON_AddStringToObject(p, "Regex", pattern) && cJSON_AddStringToObject(split, "behavior", "Isolated") &&
            cJSON_AddFalseToObject(split, "invert") && cJSON_AddStringToObject(bl, "type", "ByteLevel") &&
            cJSON_AddFalseToObject(bl, "add_prefix_space") && cJSON_AddFalseToObject(bl, "use_regex")) {
            cJSON_AddItemToArray(seq, split), split = NULL;
            cJSON_AddItemToArray(seq, bl), bl = NULL;
            rc = pretok_from_json(&t->pre, root, err) ? err_prefix(err, "%s: pat_str", path) : 0;
        } else err_set(err, "%s: out of memory", path);
    } else err_set(err, "%s: out of memory", path);
    cJSON_Delete(split), cJSON_Delete(bl), cJSON_Delete(root);
    return rc;
}

/** Decoded bytes of every id: a ranked token's own bytes, a special token's content. */
static int build_decode(Tokenizer *t, const char *path, Err *err) {
    t->dec_off = xcalloc((size_t)t->vocab_size + 1, sizeof *t->dec_off);
    if (!t->dec_off || bytebuf_reserve(&t->dec, t->names.len) != 0) return err_set(err, "%s: out of memory", path);
    for (int id = 0; id < t->vocab_size; id++) {
        t->dec_off[id] = t->dec.len;
        if (t->kind[id] == KIND_NONE) continue;
        const unsigned char *s = (const unsigned char *)t->names.data + t->name_off[id];
        size_t n = strlen((const char *)s);
        if (t->kind[id] == KIND_ADDED) {
            memcpy(t->dec.data + t->dec.len, s, n);
            t->dec.len += n;
            continue;
        }
        for (size_t i = 0; i < n;) { /* byte-level characters: U+0000..U+0143, one or two bytes */
            uint32_t c = s[i] < 0x80 ? s[i] : ((uint32_t)(s[i] & 0x1f) << 6) | (s[i + 1] & 0x3f);
            i += s[i] < 0x80 ? 1 : 2;
            t->dec.data[t->dec.len++] = (char)bytelevel_byte(c);
        }
    }
    t->dec_off[t->vocab_size] = t->dec.len;
    return 0;
}

int tokenizer_load_tiktoken(Tokenizer **out, const char *model_path, const char *cfg_path, Err *err) {
    *out = NULL;
    Tokenizer *t = calloc(1, sizeof *t);
    if (!t) return err_set(err, "%s: out of memory", model_path);
    t->bos_id = t->eos_id = t->unk_id = -1;
    t->tiktoken = 1;
    cJSON *cfg = NULL;
    struct stat sb;
    int rc = load_ranks(t, model_path, err);
    int n_ranks = t->vocab_size;
    if (!rc) rc = derive_merges(t, model_path, err);
    if (!rc && stat(cfg_path, &sb) == 0) {
        rc = tok_parse_json_file(cfg_path, &cfg, err);
        if (!rc && !cJSON_IsObject(cfg)) rc = err_set(err, "%s: expected a JSON object", cfg_path);
    }
    const char *pattern = NULL;
    if (!rc) rc = load_specials(t, cfg, n_ranks, &pattern, cfg ? cfg_path : model_path, err);
    if (!rc) rc = compile_pattern(t, pattern, cfg ? cfg_path : model_path, err);
    cJSON_Delete(cfg);
    if (!rc) rc = build_decode(t, model_path, err);
    if (!rc) rc = tok_load_config(t, cfg_path, err);
    if (rc) {
        tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}
