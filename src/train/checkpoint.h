/* Training checkpoints: a versioned, checksummed binary file holding everything a run needs
 * to continue bit-exactly (trainable weights, AdamW m and v, step counters, RNG state, the
 * data loader's opaque state, the config hash). Format: docs/checkpoint-format.md, section
 * "Training checkpoint".
 *
 * Only trainable tensors are stored: frozen ones (stage I's copied teacher weights) are
 * rebuilt by the model's own initialisation, which must be deterministic.
 *
 * A run directory holds step-000100.ckpt, step-000200.ckpt, ... (the last K kept) and a
 * `latest` file naming the newest one. Each file is written to a temp name, fsync'ed, renamed
 * and the directory fsync'ed, then `latest` is written the same way, and only then are
 * older checkpoints pruned: a crash at any moment leaves the previous good checkpoint. */
#ifndef XD_TRAIN_CHECKPOINT_H
#define XD_TRAIN_CHECKPOINT_H
#include <stdio.h>
#include "train/params.h"

#define XD_CKPT_VERSION 1

typedef struct {
  uint64_t step;              /* optimiser steps done (applied + skipped) */
  uint64_t adam_t;            /* AdamW updates applied (bias-correction count) */
  uint64_t tokens_seen;
  uint64_t skipped_total;     /* steps skipped for NaN/Inf */
  uint64_t consecutive_skips; /* current run of skipped steps */
  uint64_t config_hash;       /* xd_train_config_hash of the run's configuration */
  xd_rng rng;                 /* the run's RNG, as after `step` steps */
  void *loader_state;         /* data loader's opaque state (caller's buffer) */
  size_t loader_size;         /* its size in bytes; on load it must match the file */
} xd_ckpt_state;

/* Write one checkpoint atomically (temp + fsync + rename + dir fsync). */
int xd_ckpt_save(const char *path, const xd_params *p, const xd_ckpt_state *s, xd_err *e);
/* Check a file's structure and checksum without loading it. */
int xd_ckpt_verify(const char *path, xd_err *e);
/* The same checks on a file already in memory (fuzz target); name is used in messages. */
int xd_ckpt_verify_buffer(const uint8_t *data, size_t size, const char *name, xd_err *e);
/* Load into p (trainable data, m, v) and s (counters, rng, loader state into s->loader_state,
 * whose size s->loader_size must equal the stored one). The file is fully validated first:
 * on error nothing in p or s has been changed. Every trainable tensor of p must be in the
 * file with the same shape, and the file must hold no other tensor. */
int xd_ckpt_load(const char *path, xd_params *p, xd_ckpt_state *s, xd_err *e);

/* "<dir>/step-%06llu.ckpt" (heap string, caller frees). */
char *xd_ckpt_step_path(const char *dir, uint64_t step);
/* Save <dir>/step-NNNNNN.ckpt, then <dir>/latest, then delete all but the newest `keep`
 * step files (keep >= 1). */
int xd_ckpt_save_rotating(const char *dir, int keep, const xd_params *p, const xd_ckpt_state *s, xd_err *e);
/* Newest checkpoint in dir that verifies. A corrupt newer one (bad checksum, truncated) is
 * reported on `warn` (if not NULL) and skipped. Returns 1 and *out_path (caller frees) when
 * found, 0 when the directory holds no valid checkpoint, -1 on error. */
int xd_ckpt_find_latest(const char *dir, FILE *warn, char **out_path, xd_err *e);
/* 1 when dir holds any step-*.ckpt file (valid or not), else 0. */
int xd_ckpt_dir_has_checkpoints(const char *dir);
/* Remove temp files left by a killed writer (step-*.ckpt.tmp.*, latest.tmp.*). */
void xd_ckpt_clean_tmp(const char *dir);
#endif
