/* `data prepare`: stream text corpora through a tokenizer into train/validation token shards
 * plus a manifest.json (docs/data-format.md). The tokenizer is reached through xd_prepare_encoder
 * so the pipeline is tested with a synthetic encoder as well as the real one (cli/cmd_data.c).
 *
 * Inputs (by file name; ".gz" may follow any of them and is decompressed with zlib):
 *   *.txt            one document per file, read in ~1 MB pieces cut after a newline before a
 *                    printable ASCII character (where BPE pre-tokenizers never join across),
 *                    so memory stays bounded and the ids equal those of encoding the whole file
 *                    (xd_prepare_cut_safe; other tokenizers get the document whole)
 *   *.jsonl, *.json  one JSON object per line with "text" (a string) or "messages"
 *                    ([{role, content}], rendered with the chat template, keeping its loss mask)
 * Every document is followed by EOS. A document goes to the validation split when a hash of
 * (seed, document index) falls below val_fraction: deterministic, independent of shard size. */
#ifndef XD_PREPARE_H
#define XD_PREPARE_H
#include <stdio.h>
#include "core/core.h"
#include "tokenizer/tokenizer.h"

/* The callbacks are called from several threads at once: they must be thread-safe. */
typedef struct {
  void *ctx;
  /* Encode text without special tokens; *ids heap-allocated. */
  int (*encode)(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, xd_err *e);
  /* Render a chat with its loss mask (1 = assistant token); NULL if unsupported. */
  int (*chat)(void *ctx, const xd_chat_message *msgs, int n, int32_t **ids, uint8_t **mask, size_t *len, xd_err *e);
  uint64_t vocab_size;
  int32_t eos_id;   /* appended after every document; must be >= 0 */
  int32_t bos_id;   /* prepended when add_bos; -1 if none */
  const char *name; /* tokenizer path, for the manifest */
  const char *hash; /* identity of the tokenizer (e.g. "fnv1a64:<hex>" of tokenizer.json) */
} xd_prepare_encoder;

typedef struct {
  const char *out_dir;
  const char *const *inputs;
  int n_inputs;
  double val_fraction; /* [0, 1) */
  uint64_t seed;
  uint64_t shard_tokens; /* tokens per shard (memory bound: ~5 bytes per token per split) */
  int add_bos;
  int force;            /* replace an existing dataset in out_dir */
  FILE *progress;       /* progress lines, or NULL */
  int threads;          /* encoding threads; 0 = OpenMP's default (all cores) */
} xd_prepare_opts;

typedef struct {
  uint64_t docs[2], tokens[2], shards[2]; /* [0] train, [1] val */
  uint64_t bytes_in, bytes_total, skipped_empty;
  double seconds;
} xd_prepare_stats;

/* 1 if encoding text in pieces cut after a newline that precedes a printable ASCII character
 * gives the same ids as encoding it whole (byte-level BPE: Llama 3, Qwen, OLMo); 0 for
 * SentencePiece-style tokenizers that prepend a space marker to every string (Llama 2, Mistral),
 * whose .txt documents are then encoded whole (up to 256 MB, cut beyond with a warning). */
int xd_prepare_cut_safe(const xd_prepare_encoder *enc);

/* Tokenizer identity written to manifest.json: "fnv1a64:<16 hex>", the 64-bit FNV-1a (offset
 * basis 0xcbf29ce484222325) of tokenizer.json's bytes. path: a directory holding tokenizer.json
 * or the file. Trainers compare it with their teacher's tokenizer (xd_loader_tokenizer_hash). */
int xd_data_tokenizer_hash(const char *path, char out[40], xd_err *e);

int xd_prepare_run(const xd_prepare_opts *o, const xd_prepare_encoder *enc, xd_prepare_stats *st, xd_err *e);
#endif
