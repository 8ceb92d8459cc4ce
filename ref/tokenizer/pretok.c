/**
 * @file pretok.c
 * @brief Implementation of pretok.h: Split steps on Oniguruma, the five split behaviours.
 */
#include "pretok.h"

#include <cjson/cJSON.h>
#include <oniguruma.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"

/** NormalizedString::split's behaviours (tokenizers/src/tokenizer/normalizer.rs). */
typedef enum {
    SPLIT_REMOVED,
    SPLIT_ISOLATED,
    SPLIT_MERGED_WITH_PREVIOUS,
    SPLIT_MERGED_WITH_NEXT,
    SPLIT_CONTIGUOUS,
} SplitBehavior;

typedef struct {
    OnigRegex re;     /**< compiled regex, or NULL for a literal */
    char *literal;   /**< SplitPattern::String, matched verbatim */
    size_t literal_len;
    SplitBehavior behavior;
    int invert;
} SplitStep;

struct PreTokenizer {
    SplitStep *steps;
    int n, cap;
    int byte_level; /**< ByteLevel seen (it must be the last step) */
};

/* The GPT-2 regex Hugging Face hard-codes for ByteLevel(use_regex=true)
 * (tokenizers/src/pre_tokenizers/byte_level.rs, `RE`). */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

int spanvec_push(SpanVec *v, size_t off, size_t len) {
    if (v->n == v->cap) {
        Span *p = buf_grow(v->v, &v->cap, v->n + 1, sizeof *v->v);
        if (!p) return -1;
        v->v = p;
    }
    v->v[v->n].off = off;
    v->v[v->n].len = len;
    v->n++;
    return 0;
}

static int mark_push(PretokWork *w, size_t start, size_t end, int flag) {
    if (w->nmarks == w->capmarks) {
        SplitMark *p = buf_grow(w->marks, &w->capmarks, w->nmarks + 1, sizeof *w->marks);
        if (!p) return -1;
        w->marks = p;
    }
    w->marks[w->nmarks].start = start;
    w->marks[w->nmarks].end = end;
    w->marks[w->nmarks].flag = flag;
    w->nmarks++;
    return 0;
}

static int add_step(PreTokenizer *p, SplitStep s) {
    if (p->n == p->cap) {
        int nc = p->cap ? p->cap * 2 : 4;
        SplitStep *ns = realloc(p->steps, (size_t)nc * sizeof *ns);
        if (!ns) return -1;
        p->steps = ns;
        p->cap = nc;
    }
    p->steps[p->n++] = s;
    return 0;
}

static int compile_regex(OnigRegex *re, const char *pat, size_t len, const char *where, Err *err) {
    /* onig_initialize is idempotent; Oniguruma needs its UTF-8 tables set up once. */
    OnigEncoding enc[1] = {ONIG_ENCODING_UTF8};
    onig_initialize(enc, 1);
    OnigErrorInfo einfo;
    int r = onig_new(re, (const OnigUChar *)pat, (const OnigUChar *)pat + len, ONIG_OPTION_NONE,
                     ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &einfo);
    if (r != ONIG_NORMAL) {
        OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
        onig_error_code_to_str(msg, r, &einfo);
        *re = NULL;
        return err_set(err, "%s: invalid regex: %s", where, (const char *)msg);
    }
    return 0;
}

static int parse_behavior(const cJSON *b, SplitBehavior *out, const char *where, Err *err) {
    static const struct { const char *name; SplitBehavior b; } names[] = {
        {"Removed", SPLIT_REMOVED},
        {"Isolated", SPLIT_ISOLATED},
        {"MergedWithPrevious", SPLIT_MERGED_WITH_PREVIOUS},
        {"MergedWithNext", SPLIT_MERGED_WITH_NEXT},
        {"Contiguous", SPLIT_CONTIGUOUS},
    };
    if (!cJSON_IsString(b))
        return err_set(err, "%s: \"behavior\" must be a string", where);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(b->valuestring, names[i].name)) {
            *out = names[i].b;
            return 0;
        }
    return err_set(err, "%s: unsupported split behavior '%.64s' (expected Removed, Isolated, "
                   "MergedWithPrevious, MergedWithNext or Contiguous)", where, b->valuestring);
}

static int parse_split(PreTokenizer *p, const cJSON *node, const char *where, Err *err) {
    SplitStep s;
    memset(&s, 0, sizeof s);
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(node, "pattern");
    const cJSON *rx = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
    const cJSON *lit = cJSON_GetObjectItemCaseSensitive(pat, "String");
    if (!cJSON_IsObject(pat) || (!cJSON_IsString(rx) && !cJSON_IsString(lit)))
        return err_set(err, "%s: \"pattern\" must be {\"Regex\": string} or {\"String\": string}", where);
    if (parse_behavior(cJSON_GetObjectItemCaseSensitive(node, "behavior"), &s.behavior, where, err) != 0)
        return -1;
    const cJSON *inv = cJSON_GetObjectItemCaseSensitive(node, "invert");
    if (inv && !cJSON_IsBool(inv)) return err_set(err, "%s: \"invert\" must be true or false", where);
    s.invert = cJSON_IsTrue(inv);
    if (cJSON_IsString(rx)) {
        size_t n = strlen(rx->valuestring);
        if (!utf8_valid(rx->valuestring, n)) return err_set(err, "%s: regex is not valid UTF-8", where);
        if (compile_regex(&s.re, rx->valuestring, n, where, err) != 0) return -1;
    } else {
        s.literal_len = strlen(lit->valuestring);
        if (s.literal_len == 0) return err_set(err, "%s: empty \"String\" pattern", where);
        s.literal = malloc(s.literal_len + 1);
        if (!s.literal) return err_set(err, "%s: out of memory", where);
        memcpy(s.literal, lit->valuestring, s.literal_len + 1);
    }
    if (add_step(p, s) != 0) {
        if (s.re) onig_free(s.re);
        free(s.literal);
        return err_set(err, "%s: out of memory", where);
    }
    return 0;
}

static int parse_node(PreTokenizer *p, const cJSON *node, const char *where, int depth, Err *err) {
    if (depth > 8) return err_set(err, "%s: pre-tokenizer nesting deeper than 8", where);
    if (p->byte_level) return err_set(err, "%s: ByteLevel must be the last pre-tokenizer step", where);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(node, "type");
    if (!cJSON_IsObject(node) || !cJSON_IsString(type))
        return err_set(err, "%s: expected an object with a string \"type\"", where);
    const char *t = type->valuestring;
    if (!strcmp(t, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(node, "pretokenizers");
        if (!cJSON_IsArray(list)) return err_set(err, "%s: Sequence needs a \"pretokenizers\" array", where);
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, list) {
            char sub[128];
            snprintf(sub, sizeof sub, "%.96s[%d]", where, i++);
            if (parse_node(p, it, sub, depth + 1, err) != 0) return -1;
        }
        return 0;
    }
    if (!strcmp(t, "Split")) return parse_split(p, node, where, err);
    if (!strcmp(t, "ByteLevel")) {
        const cJSON *aps = cJSON_GetObjectItemCaseSensitive(node, "add_prefix_space");
        const cJSON *ur = cJSON_GetObjectItemCaseSensitive(node, "use_regex");
        if (cJSON_IsTrue(aps))
            return err_set(err, "%s: ByteLevel with add_prefix_space=true is not supported", where);
        /* serde default for use_regex is true (byte_level.rs: default_true) */
        if (!ur || cJSON_IsTrue(ur)) {
            SplitStep s;
            memset(&s, 0, sizeof s);
            s.behavior = SPLIT_ISOLATED;
            if (compile_regex(&s.re, GPT2_PATTERN, strlen(GPT2_PATTERN), where, err) != 0) return -1;
            if (add_step(p, s) != 0) {
                onig_free(s.re);
                return err_set(err, "%s: out of memory", where);
            }
        }
        p->byte_level = 1;
        return 0;
    }
    return err_set(err, "%s: unsupported pre-tokenizer type '%.64s' (supported: Sequence, Split, ByteLevel)",
                   where, t);
}

int pretok_from_json(PreTokenizer **out, const cJSON *node, Err *err) {
    *out = NULL;
    PreTokenizer *p = calloc(1, sizeof *p);
    if (!p) return err_set(err, "pre_tokenizer: out of memory");
    if (node && !cJSON_IsNull(node) && parse_node(p, node, "pre_tokenizer", 0, err) != 0) {
        pretok_free(p);
        return -1;
    }
    *out = p;
    return 0;
}

void pretok_free(PreTokenizer *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) {
        if (p->steps[i].re) onig_free(p->steps[i].re);
        free(p->steps[i].literal);
    }
    free(p->steps);
    free(p);
}

int pretok_is_byte_level(const PreTokenizer *p) { return p->byte_level; }

void pretok_work_free(PretokWork *w) {
    free(w->cur.v);
    free(w->next.v);
    free(w->marks);
    if (w->region) onig_region_free((OnigRegion *)w->region, 1);
    memset(w, 0, sizeof *w);
}

/* Length of the UTF-8 sequence that starts with byte c (1 for anything unexpected). */
static size_t utf8_len(unsigned char c) {
    return c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 1;
}

/* Pattern::find_matches for one piece s[0, n): marks covering the piece, flag = is_match.
 * The regex loop is onig::FindMatches::next: after an empty match the search resumes one
 * character later, and an empty match right after a non-empty one is skipped. */
static int find_matches(const SplitStep *st, const char *s, size_t n, PretokWork *w, Err *err) {
    w->nmarks = 0;
    size_t prev = 0;
    if (st->re) {
        if (!w->region && !(w->region = onig_region_new())) return err_set(err, "pre-tokenizer: out of memory");
        OnigRegion *region = w->region;
        const OnigUChar *str = (const OnigUChar *)s, *end = str + n;
        size_t last_end = 0;
        int skip_next_empty = 0;
        while (last_end <= n) {
            int r = onig_search(st->re, str, end, str + last_end, end, region, ONIG_OPTION_NONE);
            if (r == ONIG_MISMATCH) break;
            if (r < 0) {
                OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
                onig_error_code_to_str(msg, r);
                return err_set(err, "pre-tokenizer regex failed on a %zu-byte piece: %s", n, (const char *)msg);
            }
            size_t ms = (size_t)region->beg[0], me = (size_t)region->end[0];
            last_end = me;
            if (me == ms) {
                last_end += last_end < n ? utf8_len((unsigned char)s[last_end]) : 1;
                if (skip_next_empty) {
                    skip_next_empty = 0;
                    continue;
                }
            } else {
                skip_next_empty = 1;
            }
            if (prev != ms && mark_push(w, prev, ms, 0) != 0) goto oom;
            if (mark_push(w, ms, me, 1) != 0) goto oom;
            prev = me;
        }
    } else {
        size_t pos = 0;
        while (pos + st->literal_len <= n) {
            const char *hit = NULL;
            for (size_t i = pos; i + st->literal_len <= n; i++)
                if (s[i] == st->literal[0] && !memcmp(s + i, st->literal, st->literal_len)) {
                    hit = s + i;
                    break;
                }
            if (!hit) break;
            size_t ms = (size_t)(hit - s), me = ms + st->literal_len;
            if (prev != ms && mark_push(w, prev, ms, 0) != 0) goto oom;
            if (mark_push(w, ms, me, 1) != 0) goto oom;
            prev = pos = me;
        }
    }
    if (prev != n && mark_push(w, prev, n, 0) != 0) goto oom;
    if (st->invert)
        for (size_t i = 0; i < w->nmarks; i++) w->marks[i].flag = !w->marks[i].flag;
    return 0;
oom:
    return err_set(err, "pre-tokenizer: out of memory");
}

/* NormalizedString::split: turns (offsets, is_match) into (offsets, remove), in place. */
static void apply_behavior(SplitBehavior b, PretokWork *w) {
    SplitMark *m = w->marks;
    size_t n = w->nmarks, out = 0;
    int previous_match = 0;
    switch (b) {
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < n; i++) m[i].flag = 0;
        return;
    case SPLIT_REMOVED:
        return;
    case SPLIT_CONTIGUOUS:
    case SPLIT_MERGED_WITH_PREVIOUS:
        /* A piece joins the previous one: contiguous when both are matches or both are not;
         * merged-with-previous when a match follows a non-match. */
        for (size_t i = 0; i < n; i++) {
            int is_match = m[i].flag;
            int joins = b == SPLIT_CONTIGUOUS ? is_match == previous_match : is_match && !previous_match;
            if (joins && out > 0) {
                m[out - 1].end = m[i].end;
            } else {
                m[out] = m[i];
                m[out++].flag = 0;
            }
            previous_match = is_match;
        }
        break;
    case SPLIT_MERGED_WITH_NEXT:
        /* the same fold walked from the right, then reversed back */
        for (size_t k = n; k-- > 0;) {
            int is_match = m[k].flag;
            size_t slot = n - 1 - out; /* fill from the right end; slot ≥ k always holds */
            if (is_match && !previous_match && out > 0) {
                m[slot + 1].start = m[k].start;
            } else {
                m[slot] = m[k];
                m[slot].flag = 0;
                out++;
            }
            previous_match = is_match;
        }
        memmove(m, m + (n - out), out * sizeof *m);
        break;
    }
    w->nmarks = out;
}

int pretok_split(const PreTokenizer *p, const char *text, size_t len, PretokWork *w, Err *err) {
    w->cur.n = 0;
    if (len == 0) return 0;
    if (spanvec_push(&w->cur, 0, len) != 0) return err_set(err, "pre-tokenizer: out of memory");
    for (int k = 0; k < p->n; k++) {
        const SplitStep *st = &p->steps[k];
        w->next.n = 0;
        for (size_t i = 0; i < w->cur.n; i++) {
            Span piece = w->cur.v[i];
            if (find_matches(st, text + piece.off, piece.len, w, err) != 0) return -1;
            apply_behavior(st->behavior, w);
            for (size_t j = 0; j < w->nmarks; j++) {
                const SplitMark *m = &w->marks[j];
                if (m->flag || m->end == m->start) continue; /* removed, or empty */
                if (spanvec_push(&w->next, piece.off + m->start, m->end - m->start) != 0)
                    return err_set(err, "pre-tokenizer: out of memory");
            }
        }
        SpanVec t = w->cur;
        w->cur = w->next;
        w->next = t;
    }
    return 0;
}
