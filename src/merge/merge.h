/* Stage III: merge domain experts trained from the same stage-I student (SPEC §5):
 * theta = sum_i lambda_i theta_i over every tensor, lambda_i >= 0, normalised to sum 1.
 * Experts must agree on architecture (config.json), tensor names, shapes and tokenizer.
 * Streams tensor by tensor (memory near one tensor; the experts are mmapped). Sums run in
 * double and are rounded once to the tensors' dtype, so one expert with weight 1, or identical
 * experts, come back bit-identical. */
#ifndef XD_MERGE_H
#define XD_MERGE_H
#include "core/core.h"

typedef struct {
  const char *dir;
  double weight;
} xd_merge_expert;

/* Check the experts against each other; fills e naming the first difference. */
int xd_merge_check(const xd_merge_expert *experts, int n, xd_err *e);
/* Write the merged student to out_dir (created). Weights are normalised; negative or all-zero
 * weights are refused. */
int xd_merge_run(const xd_merge_expert *experts, int n, const char *out_dir, xd_err *e);
#endif
