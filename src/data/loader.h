/* Packing + loader: fixed-length rows over the concatenated token stream of one split.
 *
 * The split's shards (manifest order) form one stream of N tokens: documents joined with EOS,
 * as `data prepare` wrote them. Row i is stream[i*T, i*T + T + 1): T + 1 tokens, inputs =
 * row[0:T], targets = row[1:T+1]; consecutive rows overlap by one token, so every token after
 * the first is a target exactly once per epoch and a document running past a row continues in
 * the next. rows = floor((N - 1) / T); the tail (< T tokens) is not used.
 * Each epoch the rows are permuted (Fisher-Yates, seeded by (seed, epoch)) unless shuffle is
 * off; rank r of `world` takes positions r, r + world, r + 2 world, ... of that order, so ranks
 * are disjoint and all get floor(rows / world) rows per epoch (the last rows % world rows of the
 * permuted order are skipped that epoch, a different set each epoch).
 * Batches run on across epoch ends. The state (xd_loader_state) is a small POD that the trainer
 * saves in its checkpoint; restoring it makes the loader yield exactly the rows an
 * uninterrupted one would.
 * Mask: mask[b, j] = 1 when token j of row b is a loss target (0 for e.g. the user turns of a
 * chat); for the target of input position j read mask[b, j + 1]. All ones when the data has no
 * mask. */
#ifndef XD_LOADER_H
#define XD_LOADER_H
#include "core/core.h"

typedef struct {
  int seq_len;   /* T: a row holds T + 1 tokens */
  int batch;     /* B rows per xd_loader_next */
  uint64_t seed; /* shuffling seed */
  int shuffle;   /* 1: new row order each epoch; 0: rows in stream order (validation) */
  int rank, world; /* this process's share: rank in [0, world) */
} xd_loader_config;

#define XD_LOADER_STATE_VERSION 1u
typedef struct {
  uint32_t version;  /* XD_LOADER_STATE_VERSION */
  uint32_t seq_len, rank, world, shuffle, pad_;
  uint64_t seed;
  uint64_t n_rows;   /* rows per epoch over all ranks: restoring onto other data is refused */
  uint64_t epoch;    /* current epoch (0-based) */
  uint64_t position; /* rows of this epoch already yielded to this rank */
} xd_loader_state;

typedef struct xd_loader xd_loader;

/* Open split "train" or "val" of a `data prepare` output directory (reads manifest.json,
 * verifies every shard's checksum against the manifest). */
int xd_loader_open(xd_loader **out, const char *dir, const char *split, const xd_loader_config *cfg, xd_err *e);
/* Open an explicit list of shard files, concatenated in order (tests, ad hoc data). */
int xd_loader_open_shards(xd_loader **out, const char *const *paths, int n_paths, const xd_loader_config *cfg, xd_err *e);
void xd_loader_free(xd_loader *L);

/* Fill tokens [B, T+1] and mask [B, T+1] (mask may be NULL) with the next B rows of this rank.
 * Cannot fail once opened (the data is mapped and validated); returns 0. */
int xd_loader_next(xd_loader *L, int32_t *tokens, uint8_t *mask);

/* Row `row` (global index, stream order) into tokens [T+1] / mask [T+1] (mask may be NULL). */
void xd_loader_row(const xd_loader *L, uint64_t row, int32_t *tokens, uint8_t *mask);
/* Global row index that this rank's `position`-th row of `epoch` is. */
uint64_t xd_loader_row_index(xd_loader *L, uint64_t epoch, uint64_t position);

uint64_t xd_loader_rows_total(const xd_loader *L);     /* rows per epoch over all ranks */
uint64_t xd_loader_rows_per_rank(const xd_loader *L);  /* rows per epoch for each rank */
uint64_t xd_loader_tokens(const xd_loader *L);         /* N, tokens in the split */
uint64_t xd_loader_vocab_size(const xd_loader *L);
int xd_loader_has_mask(const xd_loader *L);            /* 1 if any shard stores a mask */
/* manifest.json's tokenizer.hash ("fnv1a64:..."; "" for xd_loader_open_shards): compare with
 * xd_data_tokenizer_hash(teacher_dir) to refuse data made with another tokenizer. */
const char *xd_loader_tokenizer_hash(const xd_loader *L);

void xd_loader_get_state(const xd_loader *L, xd_loader_state *st);
/* Restore a saved state; refused (one-line error) when it was saved for another seq_len, rank,
 * world, seed, shuffle setting or data (row count). */
int xd_loader_set_state(xd_loader *L, const xd_loader_state *st, xd_err *e);

/* The state as 64 little-endian bytes, for a checkpoint's opaque loader blob (train/trainer.h:
 * loader_state_size = XD_LOADER_STATE_BYTES, loader_save -> xd_loader_save, loader_restore ->
 * xd_loader_restore). Layout: "XDLS", u32 version, u32 seq_len, rank, world, shuffle,
 * u64 seed, n_rows, epoch, position, 8 zero bytes. */
#define XD_LOADER_STATE_BYTES 64
void xd_loader_save(const xd_loader *L, void *buf);
int xd_loader_restore(xd_loader *L, const void *buf, xd_err *e);
#endif
