/**
 * @file bpe_train.h
 * @brief Learning a byte-level BPE vocabulary from text, written as a Hugging Face
 *        tokenizer.json + tokenizer_config.json that tokenizer_load() (and Hugging Face
 *        tokenizers) load (docs/model.md §9.2).
 *
 * The result is DeepSeek-V3-shaped so the rest of dsv3 works with it unchanged: the same
 * normalizer, pre-tokenizer (its three Split regexes + ByteLevel, so no token crosses a digit
 * group, a CJK run or a punctuation boundary), post-processor, decoder and chat template, and
 * the special tokens the chat template needs:
 *
 *     id 0 <｜begin▁of▁sentence｜>, 1 <｜end▁of▁sentence｜>, 2 <｜▁pad▁｜>  (in model.vocab, as in DeepSeek-V3)
 *     ids 3..258   the 256 byte tokens, byte b → id 3 + b
 *     ids 259..    one per merge, in merge order
 *     last two     <｜User｜>, <｜Assistant｜>  (added tokens after the vocabulary)
 *
 * Algorithm: the corpus is pre-tokenized and its distinct pieces counted; each piece is a
 * sequence of token ids. Pair counts (weighted by piece frequency) live in a hash map with,
 * per pair, a list of the pieces containing it, and a max-heap with lazy invalidation picks
 * the next merge; a merge only revisits the pieces on its list, so the cost per merge is
 * proportional to the pieces it changes, not to the corpus.
 *
 * Tie-breaking (deterministic, independent of hash order): the pair with the highest count;
 * among equal counts the smallest left id, then the smallest right id — i.e. older tokens and,
 * for bytes, smaller byte values first. Training stops at the requested size or when no pair
 * occurs at least min_frequency times. A merge whose string already exists as a token (e.g.
 * "ab"+"c" after "a"+"bc") reuses that id, as Hugging Face's BpeTrainer does.
 */
#ifndef DSV3_BPE_TRAIN_H
#define DSV3_BPE_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "base/util.h"

/** What to learn. */
typedef struct {
    int vocab_size;    /**< ids in the result, the 5 special tokens included (default 4096, ≥ 261) */
    int min_frequency; /**< merge only pairs seen at least this often (default 2, ≥ 1) */
} BpeTrainOptions;

/** Counters describing a training run. */
typedef struct {
    size_t bytes;      /**< corpus bytes fed */
    size_t pieces;     /**< pre-tokenized pieces */
    size_t distinct;   /**< distinct pieces */
    int merges;        /**< merges learned */
    int vocab_size;    /**< ids in the result */
} BpeTrainStats;

/** A trainer: feed text, run, save. */
typedef struct BpeTrainer BpeTrainer;

/** The defaults: vocab_size 4096, min_frequency 2. */
BpeTrainOptions bpe_train_defaults(void);

/** Creates a trainer (compiles DeepSeek-V3's pre-tokenizer). */
int bpe_train_new(BpeTrainer **tr, const BpeTrainOptions *opt, Err *err);

/** Pre-tokenizes @p len bytes of UTF-8 text and counts its pieces (invalid UTF-8 is an error). */
int bpe_train_feed(BpeTrainer *tr, const char *text, size_t len, Err *err);

/** Learns the merges from everything fed so far (call once). */
int bpe_train_run(BpeTrainer *tr, Err *err);

/**
 * Writes @p dir/tokenizer.json and @p dir/tokenizer_config.json as one directory output
 * (base/outfile.h): both or neither, the old files kept on failure; other files of @p dir (a
 * checkpoint) stay.
 */
int bpe_train_save(const BpeTrainer *tr, const char *dir, Err *err);

/** The counters so far. */
BpeTrainStats bpe_train_stats(const BpeTrainer *tr);

/** Releases a trainer (NULL is fine). */
void bpe_train_free(BpeTrainer *tr);

/** DeepSeek-V3's normalizer, pre_tokenizer, post_processor and decoder as one JSON object. */
const char *bpe_train_pipeline_json(void);

/** DeepSeek-V3's chat_template (tokenizer_config.json), written into trained tokenizers. */
const char *bpe_train_chat_template(void);

#endif /* DSV3_BPE_TRAIN_H */
