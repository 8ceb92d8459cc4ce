/**
 * @file bpe_train.c
 * @brief Implementation of bpe_train.h: piece counting, incremental pair counts with a lazy
 *        max-heap, and the Hugging Face tokenizer.json / tokenizer_config.json writer.
 *
 * Shapes: W distinct pieces, each a run of symbol ids inside one array `sym` (pieces only
 * shrink, so they stay in place); P pairs, each with a weighted count, its ids and a linked
 * list (in a shared pool) of the pieces it occurs in. A piece may appear on a list more than
 * once or after it lost the pair; both are filtered when the list is walked.
 */
#include "bpe_train.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/buf.h"
#include "bytelevel.h"
#include "base/hashmap.h"
#include "base/outfile.h"
#include "pretok.h"

/* Copied from DeepSeek-V3's tokenizer.json / tokenizer_config.json (test_bpe_train.c checks
 * they still equal golden/tokenizer/deepseek-v3): the trained tokenizer must pre-tokenize and
 * template exactly like the real one. */
static const char DEEPSEEK_PIPELINE[] =
    "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[]},\"pre_tokenizer\":{\"type\":\"Sequenc"
    "e\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\p{N}{1,3}\"},\"behavior"
    "\":\"Isolated\",\"invert\":false},{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[一-龥぀-ゟ゠-ヿ]+\"},"
    "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[!\\\"#"
    "$%&'()*+,\\\\-./:;<=>?@\\\\[\\\\\\\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\\\p{L}\\\\p{P}\\\\p{S}]?[\\"
    "\\p{L}\\\\p{M}]+| ?[\\\\p{P}\\\\p{S}]+[\\r\\n]*|\\\\s*[\\r\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},\"beha"
    "vior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_"
    "offsets\":true,\"use_regex\":false}]},\"post_processor\":{\"type\":\"ByteLevel\",\"add_prefix_sp"
    "ace\":true,\"trim_offsets\":false,\"use_regex\":true},\"decoder\":{\"type\":\"ByteLevel\",\"add_"
    "prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true}}";

static const char DEEPSEEK_CHAT_TEMPLATE[] =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{"
    "% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_f"
    "irst_sp=true) %}{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_"
    "first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_"
    "sp = false %}{%- else %}{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content']"
    " %}{%- endif %}{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in mess"
    "ages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['"
    "content']}}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is none %}{%"
    "- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}{{'<"
    "｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['fun"
    "ction']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜to"
    "ol▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}{{'\n' + '<｜tool▁call▁begin｜>' + tool['"
    "type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']["
    "'arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%"
    "- endif %}{%- endfor %}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] "
    "is not none %}{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sent"
    "ence｜>'}}{%- set ns.is_tool = false -%}{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜en"
    "d▁of▁sentence｜>'}}{%- endif %}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool "
    "= true -%}{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message["
    "'content'] + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}{{'\n<｜tool▁"
    "output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor"
    " -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}{% if add_generation_prompt and not "
    "ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}";

const char *bpe_train_pipeline_json(void) { return DEEPSEEK_PIPELINE; }
const char *bpe_train_chat_template(void) { return DEEPSEEK_CHAT_TEMPLATE; }

/* The special tokens, with DeepSeek-V3's flags. The first three are also vocabulary entries. */
static const struct {
    const char *content;
    int special;
} SPECIALS[5] = {
    {"<｜begin▁of▁sentence｜>", 1},
    {"<｜end▁of▁sentence｜>", 1},
    {"<｜▁pad▁｜>", 1},
    {"<｜User｜>", 0},
    {"<｜Assistant｜>", 0},
};
enum { N_IN_VOCAB = 3, FIRST_BYTE_ID = 3, MIN_VOCAB = 3 + 256 + 2, MAX_VOCAB = 1000000 };

typedef struct {
    int64_t count;
    int a, b, pair;
} HeapEntry;

struct BpeTrainer {
    BpeTrainOptions opt;
    PreTokenizer *pre;
    PretokWork pw;
    BpeTrainStats stats;
    StrMap words;     /* distinct pieces (raw bytes) */
    int64_t *freq;    /* [words.n] occurrences of each piece */
    size_t freq_cap;

    /* after bpe_train_run */
    int trained;
    StrMap toks;      /* raw bytes of ids FIRST_BYTE_ID.. : index i = id - FIRST_BYTE_ID */
    int *merge_a, *merge_b; /* [merges] the pair of each merge, in order */
};

BpeTrainOptions bpe_train_defaults(void) {
    BpeTrainOptions o = {4096, 2};
    return o;
}

int bpe_train_new(BpeTrainer **out, const BpeTrainOptions *opt, Err *err) {
    *out = NULL;
    if (opt->vocab_size < MIN_VOCAB || opt->vocab_size > MAX_VOCAB)
        return err_set(err, "vocab size %d out of range [%d, %d] (3 + 256 byte tokens + 2 chat tokens at least)",
                       opt->vocab_size, MIN_VOCAB, MAX_VOCAB);
    if (opt->min_frequency < 1) return err_set(err, "min frequency %d must be at least 1", opt->min_frequency);
    BpeTrainer *tr = calloc(1, sizeof *tr);
    if (!tr) return err_set(err, "out of memory");
    tr->opt = *opt;
    cJSON *pipe = cJSON_Parse(DEEPSEEK_PIPELINE);
    int rc = pipe ? pretok_from_json(&tr->pre, cJSON_GetObjectItemCaseSensitive(pipe, "pre_tokenizer"), err)
                  : err_set(err, "internal: the built-in pre-tokenizer JSON does not parse");
    cJSON_Delete(pipe);
    if (rc == 0 && strmap_init(&tr->words, 1 << 16) != 0) rc = err_set(err, "out of memory");
    if (rc != 0) {
        bpe_train_free(tr);
        return -1;
    }
    *out = tr;
    return 0;
}

void bpe_train_free(BpeTrainer *tr) {
    if (!tr) return;
    pretok_free(tr->pre);
    pretok_work_free(&tr->pw);
    strmap_free(&tr->words);
    free(tr->freq);
    strmap_free(&tr->toks);
    free(tr->merge_a);
    free(tr->merge_b);
    free(tr);
}

BpeTrainStats bpe_train_stats(const BpeTrainer *tr) { return tr->stats; }

int bpe_train_feed(BpeTrainer *tr, const char *text, size_t len, Err *err) {
    if (tr->trained) return err_set(err, "internal: bpe_train_feed after bpe_train_run");
    if (!utf8_valid(text, len)) return err_set(err, "text is not valid UTF-8");
    if (pretok_split(tr->pre, text, len, &tr->pw, err) != 0) return -1;
    for (size_t i = 0; i < tr->pw.cur.n; i++) {
        Span sp = tr->pw.cur.v[i];
        long w = strmap_intern(&tr->words, text + sp.off, sp.len, NULL);
        if (w < 0) return err_set(err, "out of memory counting pieces");
        if ((size_t)w >= tr->freq_cap) {
            int64_t *nf = buf_grow(tr->freq, &tr->freq_cap, (size_t)w + 1, sizeof *tr->freq);
            if (!nf) return err_set(err, "out of memory counting pieces");
            tr->freq = nf;
        }
        tr->freq[w]++;
    }
    tr->stats.bytes += len;
    tr->stats.pieces += tr->pw.cur.n;
    tr->stats.distinct = tr->words.n;
    return 0;
}

/* ---- training state ---------------------------------------------------------------------- */

typedef struct {
    /* pieces */
    int *sym;           /* all symbols; piece w is sym[off[w], off[w] + len[w]) */
    size_t *off;
    int *len;
    int64_t *freq;
    size_t nwords;
    int *stamp;         /* [nwords] last merge step that rewrote the piece */
    /* pairs */
    U64Map pairs;
    int64_t *count;     /* [pairs] weighted occurrences */
    int *pa, *pb;       /* [pairs] the two ids */
    int *head;          /* [pairs] first node of its piece list, -1 = empty */
    int *dirty;         /* [pairs] last step whose heap entry is pending */
    size_t pcap;
    /* piece-list nodes */
    int *node_word, *node_next;
    size_t nnodes, ncap;
    /* heap */
    HeapEntry *heap;
    size_t nheap, hcap;
    IntVec pending;     /* pairs created or grown by the current merge */
} Train;

static void train_free(Train *s) {
    free(s->sym);
    free(s->off);
    free(s->len);
    free(s->stamp);
    u64map_free(&s->pairs);
    free(s->count);
    free(s->pa);
    free(s->pb);
    free(s->head);
    free(s->dirty);
    free(s->node_word);
    free(s->node_next);
    free(s->heap);
    intvec_free(&s->pending);
}

/* Grows an array of n-element capacity *cap to hold need elements (zero-filled growth). */
static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    void *q = buf_grow(*p, cap, need, elem);
    if (!q) return -1;
    *p = q;
    return 0;
}

/* Index of pair (a, b), creating it with count 0 and an empty list when new; -1 on exhaustion. */
static long pair_get(Train *s, int a, int b) {
    int is_new;
    long p = u64map_intern(&s->pairs, ((uint64_t)(uint32_t)a << 32) | (uint32_t)b, &is_new);
    if (p < 0) return -1;
    if (is_new) {
        size_t c = s->pcap;
        if ((size_t)p >= c) {
            size_t c1 = c, c2 = c, c3 = c, c4 = c;
            if (grow((void **)&s->count, &c1, (size_t)p + 1, sizeof *s->count) != 0 ||
                grow((void **)&s->pa, &c2, (size_t)p + 1, sizeof *s->pa) != 0 ||
                grow((void **)&s->pb, &c3, (size_t)p + 1, sizeof *s->pb) != 0 ||
                grow((void **)&s->head, &c4, (size_t)p + 1, sizeof *s->head) != 0 ||
                grow((void **)&s->dirty, &c, (size_t)p + 1, sizeof *s->dirty) != 0)
                return -1;
            s->pcap = c;
        }
        s->count[p] = 0;
        s->pa[p] = a;
        s->pb[p] = b;
        s->head[p] = -1;
        s->dirty[p] = -1;
    }
    return p;
}

/* Records that piece w contains pair p (once per piece in a row). */
static int pair_note(Train *s, long p, int w) {
    if (s->head[p] >= 0 && s->node_word[s->head[p]] == w) return 0;
    size_t c = s->ncap;
    if (s->nnodes >= (size_t)0x7fffffff) return -1;
    if (grow((void **)&s->node_word, &c, s->nnodes + 1, sizeof(int)) != 0) return -1;
    c = s->ncap;
    if (grow((void **)&s->node_next, &c, s->nnodes + 1, sizeof(int)) != 0) return -1;
    s->ncap = c;
    s->node_word[s->nnodes] = w;
    s->node_next[s->nnodes] = s->head[p];
    s->head[p] = (int)s->nnodes++;
    return 0;
}

/* Max-heap order: higher count first, then smaller left id, then smaller right id. */
static int heap_before(const HeapEntry *x, const HeapEntry *y) {
    if (x->count != y->count) return x->count > y->count;
    if (x->a != y->a) return x->a < y->a;
    return x->b < y->b;
}

static int heap_push(Train *s, long p) {
    if (grow((void **)&s->heap, &s->hcap, s->nheap + 1, sizeof *s->heap) != 0) return -1;
    HeapEntry e = {s->count[p], s->pa[p], s->pb[p], (int)p};
    size_t i = s->nheap++;
    while (i > 0 && heap_before(&e, &s->heap[(i - 1) / 2])) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i] = e;
    return 0;
}

static HeapEntry heap_pop(Train *s) {
    HeapEntry top = s->heap[0], last = s->heap[--s->nheap];
    size_t i = 0, n = s->nheap;
    while (n) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const HeapEntry *best = &last;
        if (l < n && heap_before(&s->heap[l], best)) { m = l; best = &s->heap[l]; }
        if (r < n && heap_before(&s->heap[r], best)) m = r;
        if (m == i) break;
        s->heap[i] = s->heap[m];
        i = m;
    }
    if (n) s->heap[i] = last;
    return top;
}

/* Adds f to the count of every adjacent pair of piece w (f < 0 removes); pairs that contain
 * `fresh` are noted as containing w and queued for the heap. */
static int count_pairs(Train *s, int w, int64_t f, int fresh, int step) {
    const int *q = s->sym + s->off[w];
    for (int i = 0; i + 1 < s->len[w]; i++) {
        long p = pair_get(s, q[i], q[i + 1]);
        if (p < 0) return -1;
        s->count[p] += f;
        if (f > 0 && (q[i] == fresh || q[i + 1] == fresh)) {
            if (pair_note(s, p, w) != 0) return -1;
            if (s->dirty[p] != step) {
                s->dirty[p] = step;
                if (intvec_push(&s->pending, (int)p) != 0) return -1;
            }
        }
    }
    return 0;
}

static int train_setup(BpeTrainer *tr, Train *s) {
    size_t n = tr->words.n, total = 0;
    s->nwords = n;
    s->off = xcalloc(n + 1, sizeof *s->off);
    s->len = xcalloc(n + 1, sizeof *s->len);
    s->stamp = xcalloc(n + 1, sizeof *s->stamp);
    if (!s->off || !s->len || !s->stamp) return -1;
    for (size_t w = 0; w < n; w++) {
        size_t l;
        strmap_key(&tr->words, w, &l);
        if (l > (size_t)0x7fffffff) return -1;
        s->off[w] = total;
        s->len[w] = (int)l;
        if (size_add(&total, total, l) != 0) return -1;
    }
    s->sym = xcalloc(total + 1, sizeof *s->sym);
    if (!s->sym || u64map_init(&s->pairs, 1 << 16) != 0) return -1;
    s->freq = tr->freq;
    for (size_t w = 0; w < n; w++) {
        size_t l;
        const unsigned char *k = (const unsigned char *)strmap_key(&tr->words, w, &l);
        for (size_t i = 0; i < l; i++) s->sym[s->off[w] + i] = FIRST_BYTE_ID + k[i];
        s->stamp[w] = -1;
    }
    /* every initial pair counts as "fresh" so it is noted and queued once */
    for (size_t w = 0; w < n; w++) {
        const int *q = s->sym + s->off[w];
        for (int i = 0; i + 1 < s->len[w]; i++) {
            long p = pair_get(s, q[i], q[i + 1]);
            if (p < 0 || pair_note(s, p, (int)w) != 0) return -1;
            s->count[p] += s->freq[w];
        }
    }
    for (size_t p = 0; p < s->pairs.n; p++)
        if (heap_push(s, (long)p) != 0) return -1;
    return 0;
}

/* Rewrites every piece that contains (a, b) with x in its place; step numbers the merge. */
static int apply_merge(Train *s, long p, int x, int step) {
    int a = s->pa[p], b = s->pb[p];
    s->pending.n = 0;
    for (int nd = s->head[p]; nd >= 0; nd = s->node_next[nd]) {
        int w = s->node_word[nd];
        if (s->stamp[w] == step) continue;
        s->stamp[w] = step;
        int *q = s->sym + s->off[w], l = s->len[w], found = 0;
        for (int i = 0; i + 1 < l && !found; i++) found = q[i] == a && q[i + 1] == b;
        if (!found) continue; /* a stale list entry */
        if (count_pairs(s, w, -s->freq[w], -1, step) != 0) return -1;
        int j = 0;
        for (int i = 0; i < l;) {
            if (i + 1 < l && q[i] == a && q[i + 1] == b) {
                q[j++] = x;
                i += 2;
            } else {
                q[j++] = q[i++];
            }
        }
        s->len[w] = j;
        if (count_pairs(s, w, s->freq[w], x, step) != 0) return -1;
    }
    s->head[p] = -1; /* every occurrence is gone: (a, b) can never be adjacent again */
    s->count[p] = 0;
    for (size_t i = 0; i < s->pending.n; i++)
        if (heap_push(s, s->pending.v[i]) != 0) return -1;
    return 0;
}

int bpe_train_run(BpeTrainer *tr, Err *err) {
    if (tr->trained) return err_set(err, "internal: bpe_train_run called twice");
    tr->trained = 1;
    if (strmap_init(&tr->toks, (size_t)tr->opt.vocab_size) != 0) return err_set(err, "out of memory");
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        if (strmap_intern(&tr->toks, &c, 1, NULL) != b) return err_set(err, "out of memory");
    }
    int max_merges = tr->opt.vocab_size - MIN_VOCAB;
    tr->merge_a = xcalloc((size_t)max_merges + 1, sizeof *tr->merge_a);
    tr->merge_b = xcalloc((size_t)max_merges + 1, sizeof *tr->merge_b);
    if (!tr->merge_a || !tr->merge_b) return err_set(err, "out of memory");

    Train s;
    memset(&s, 0, sizeof s);
    int rc = train_setup(tr, &s) != 0 ? err_set(err, "out of memory preparing %zu pieces", tr->words.n) : 0;
    ByteBuf cat = {0};
    int merges = 0;
    /* vocabulary entries so far: 3 specials + toks; stop 2 short of the size for User/Assistant */
    while (rc == 0 && N_IN_VOCAB + (int)tr->toks.n + 2 < tr->opt.vocab_size && s.nheap) {
        HeapEntry top = heap_pop(&s);
        if (top.count != s.count[top.pair]) { /* stale: counts only fall, re-queue the true one */
            if (s.count[top.pair] >= tr->opt.min_frequency && heap_push(&s, top.pair) != 0)
                rc = err_set(err, "out of memory");
            continue;
        }
        if (top.count < tr->opt.min_frequency) break;
        size_t la, lb;
        const char *sa = strmap_key(&tr->toks, (size_t)(top.a - FIRST_BYTE_ID), &la);
        cat.len = 0;
        if (bytebuf_append(&cat, sa, la) != 0) { rc = err_set(err, "out of memory"); break; }
        const char *sb = strmap_key(&tr->toks, (size_t)(top.b - FIRST_BYTE_ID), &lb);
        long k = bytebuf_append(&cat, sb, lb) == 0 ? strmap_intern(&tr->toks, cat.data, cat.len, NULL) : -1;
        if (k < 0) { rc = err_set(err, "out of memory"); break; }
        tr->merge_a[merges] = top.a;
        tr->merge_b[merges] = top.b;
        merges++;
        if (apply_merge(&s, top.pair, FIRST_BYTE_ID + (int)k, merges) != 0) rc = err_set(err, "out of memory");
    }
    bytebuf_free(&cat);
    train_free(&s);
    tr->stats.merges = merges;
    tr->stats.vocab_size = N_IN_VOCAB + (int)tr->toks.n + 2;
    return rc;
}

/* ---- writing Hugging Face JSON ----------------------------------------------------------- */

/* A JSON string the way serde_json writes it: ", \ and control characters escaped, the rest raw. */
static int put_string(ByteBuf *b, const char *s, size_t n) {
    if (bytebuf_append(b, "\"", 1) != 0) return -1;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        const char *e = NULL;
        if (c == '"') e = "\\\"";
        else if (c == '\\') e = "\\\\";
        else if (c == '\n') e = "\\n";
        else if (c == '\r') e = "\\r";
        else if (c == '\t') e = "\\t";
        else if (c == '\b') e = "\\b";
        else if (c == '\f') e = "\\f";
        else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            e = esc;
        }
        if (!e) continue;
        if (bytebuf_append(b, s + run, i - run) != 0 || bytebuf_puts(b, e) != 0) return -1;
        run = i + 1;
    }
    return bytebuf_append(b, s + run, n - run) != 0 || bytebuf_append(b, "\"", 1) != 0 ? -1 : 0;
}

static int put_indent(ByteBuf *b, int depth) {
    for (int i = 0; i < depth; i++)
        if (bytebuf_append(b, "  ", 2) != 0) return -1;
    return 0;
}

/* Pretty-prints a cJSON tree with two-space indentation (serde_json's to_string_pretty). */
static int put_json(ByteBuf *b, const cJSON *j, int depth) {
    if (cJSON_IsNull(j)) return bytebuf_puts(b, "null");
    if (cJSON_IsFalse(j)) return bytebuf_puts(b, "false");
    if (cJSON_IsTrue(j)) return bytebuf_puts(b, "true");
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == (double)(long long)d) return bytebuf_printf(b, "%lld", (long long)d);
        return bytebuf_printf(b, "%.17g", d);
    }
    if (cJSON_IsString(j)) return put_string(b, j->valuestring, strlen(j->valuestring));
    int is_obj = cJSON_IsObject(j);
    if (!j->child) return bytebuf_puts(b, is_obj ? "{}" : "[]");
    if (bytebuf_puts(b, is_obj ? "{\n" : "[\n") != 0) return -1;
    for (const cJSON *c = j->child; c; c = c->next) {
        if (put_indent(b, depth + 1) != 0) return -1;
        if (is_obj && (put_string(b, c->string, strlen(c->string)) != 0 || bytebuf_puts(b, ": ") != 0)) return -1;
        if (put_json(b, c, depth + 1) != 0 || bytebuf_puts(b, c->next ? ",\n" : "\n") != 0) return -1;
    }
    if (put_indent(b, depth) != 0) return -1;
    return bytebuf_puts(b, is_obj ? "}" : "]");
}

/* Byte-level form of token id (id ≥ FIRST_BYTE_ID) as a NUL-terminated string in buf. */
static const char *token_string(const BpeTrainer *tr, int id, ByteBuf *buf) {
    size_t l;
    const unsigned char *raw = (const unsigned char *)strmap_key(&tr->toks, (size_t)(id - FIRST_BYTE_ID), &l);
    buf->len = 0;
    if (bytebuf_reserve(buf, 2 * l + 1) != 0) return NULL;
    buf->len = bytelevel_encode(raw, l, buf->data);
    buf->data[buf->len] = 0;
    return buf->data;
}

static cJSON *added_token(int id, int k) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "id", id);
    cJSON_AddStringToObject(o, "content", SPECIALS[k].content);
    cJSON_AddBoolToObject(o, "single_word", 0);
    cJSON_AddBoolToObject(o, "lstrip", 0);
    cJSON_AddBoolToObject(o, "rstrip", 0);
    cJSON_AddBoolToObject(o, "normalized", !SPECIALS[k].special);
    cJSON_AddBoolToObject(o, "special", SPECIALS[k].special);
    return o;
}

/* tokenizer_config.json's token entries: {"__type": "AddedToken", "content": …}. */
static cJSON *config_token(const char *content) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "__type", "AddedToken");
    cJSON_AddStringToObject(o, "content", content);
    cJSON_AddBoolToObject(o, "lstrip", 0);
    cJSON_AddBoolToObject(o, "normalized", 1);
    cJSON_AddBoolToObject(o, "rstrip", 0);
    cJSON_AddBoolToObject(o, "single_word", 0);
    return o;
}

static cJSON *build_tokenizer_json(const BpeTrainer *tr) {
    cJSON *pipe = cJSON_Parse(DEEPSEEK_PIPELINE), *root = cJSON_CreateObject();
    cJSON *added = cJSON_CreateArray(), *model = cJSON_CreateObject();
    cJSON *vocab = cJSON_CreateObject(), *merges = cJSON_CreateArray();
    ByteBuf s1 = {0}, s2 = {0};
    int ok = pipe && root && added && model && vocab && merges;
    int n_vocab = N_IN_VOCAB + (int)tr->toks.n;
    for (int k = 0; ok && k < 5; k++) {
        cJSON *a = added_token(k < N_IN_VOCAB ? k : n_vocab + (k - N_IN_VOCAB), k);
        ok = a && cJSON_AddItemToArray(added, a);
    }
    for (int id = 0; ok && id < n_vocab; id++) {
        const char *key = id < N_IN_VOCAB ? SPECIALS[id].content : token_string(tr, id, &s1);
        ok = key && cJSON_AddNumberToObject(vocab, key, id) != NULL;
    }
    for (int m = 0; ok && m < tr->stats.merges; m++) {
        const char *a = token_string(tr, tr->merge_a[m], &s1), *b = a ? token_string(tr, tr->merge_b[m], &s2) : NULL;
        cJSON *pair = b ? cJSON_CreateArray() : NULL;
        ok = pair && cJSON_AddItemToArray(pair, cJSON_CreateString(a)) &&
             cJSON_AddItemToArray(pair, cJSON_CreateString(b)) && cJSON_AddItemToArray(merges, pair);
    }
    if (ok) {
        cJSON_AddStringToObject(model, "type", "BPE");
        cJSON_AddNullToObject(model, "dropout");
        cJSON_AddNullToObject(model, "unk_token");
        cJSON_AddNullToObject(model, "continuing_subword_prefix");
        cJSON_AddNullToObject(model, "end_of_word_suffix");
        cJSON_AddBoolToObject(model, "fuse_unk", 0);
        cJSON_AddBoolToObject(model, "byte_fallback", 0);
        cJSON_AddBoolToObject(model, "ignore_merges", 0);
        cJSON_AddItemToObject(model, "vocab", vocab);
        cJSON_AddItemToObject(model, "merges", merges);
        vocab = merges = NULL;
        cJSON_AddStringToObject(root, "version", "1.0");
        cJSON_AddNullToObject(root, "truncation");
        cJSON_AddNullToObject(root, "padding");
        cJSON_AddItemToObject(root, "added_tokens", added);
        added = NULL;
        static const char *const stages[] = {"normalizer", "pre_tokenizer", "post_processor", "decoder"};
        for (int i = 0; i < 4; i++)
            cJSON_AddItemToObject(root, stages[i], cJSON_DetachItemFromObjectCaseSensitive(pipe, stages[i]));
        cJSON_AddItemToObject(root, "model", model);
        model = NULL;
    }
    bytebuf_free(&s1);
    bytebuf_free(&s2);
    cJSON_Delete(pipe);
    cJSON_Delete(added);
    cJSON_Delete(model);
    cJSON_Delete(vocab);
    cJSON_Delete(merges);
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static cJSON *build_config_json(void) {
    cJSON *c = cJSON_CreateObject();
    if (!c) return NULL;
    cJSON_AddBoolToObject(c, "add_bos_token", 1);
    cJSON_AddBoolToObject(c, "add_eos_token", 0);
    cJSON_AddItemToObject(c, "bos_token", config_token(SPECIALS[0].content));
    cJSON_AddBoolToObject(c, "clean_up_tokenization_spaces", 0);
    cJSON_AddItemToObject(c, "eos_token", config_token(SPECIALS[1].content));
    cJSON_AddBoolToObject(c, "legacy", 1);
    cJSON_AddNumberToObject(c, "model_max_length", 131072);
    cJSON_AddItemToObject(c, "pad_token", config_token(SPECIALS[1].content));
    cJSON_AddItemToObject(c, "sp_model_kwargs", cJSON_CreateObject());
    cJSON_AddNullToObject(c, "unk_token");
    /* not DeepSeek's "LlamaTokenizerFast": transformers v5 honours that class and drops the
     * spaces of a byte-level file (docs/formats.md §2); the generic fast class reads it as is */
    cJSON_AddStringToObject(c, "tokenizer_class", "PreTrainedTokenizerFast");
    cJSON_AddStringToObject(c, "chat_template", DEEPSEEK_CHAT_TEMPLATE);
    return c;
}

static int write_json(const char *dir, const char *name, const cJSON *j, Err *err) {
    char path[4096];
    if (path_join(path, sizeof path, dir, name) != 0) return err_set(err, "%s: path too long", dir);
    ByteBuf b = {0};
    if (put_json(&b, j, 0) != 0 || bytebuf_puts(&b, "\n") != 0) {
        bytebuf_free(&b);
        return err_set(err, "%s: out of memory", path);
    }
    int rc = write_file_atomic(path, b.data, b.len, err);
    bytebuf_free(&b);
    return rc;
}

int bpe_train_save(const BpeTrainer *tr, const char *dir, Err *err) {
    static const char *const owned[] = { "tokenizer.json", "tokenizer_config.json", NULL };
    if (!tr->trained) return err_set(err, "internal: bpe_train_save before bpe_train_run");
    cJSON *tok = build_tokenizer_json(tr), *cfg = build_config_json();
    int rc = (!tok || !cfg) ? err_set(err, "out of memory building the JSON") : 0;
    /* Both files or neither: a directory output, swapped in when both are written. */
    OutDir out;
    if (rc == 0) rc = outdir_open(&out, dir, owned, err);
    if (rc == 0) {
        rc = write_json(out.tmp, "tokenizer.json", tok, err) || write_json(out.tmp, "tokenizer_config.json", cfg, err) ? -1 : 0;
        if (rc) {
            err_prefix(err, "%s", dir);
            outdir_abort(&out);
        } else {
            rc = outdir_commit(&out, err);
        }
    }
    cJSON_Delete(tok);
    cJSON_Delete(cfg);
    return rc;
}
