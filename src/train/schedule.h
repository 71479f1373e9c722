/* Learning-rate schedules, as a pure function of the 0-based optimiser step.
 *   cosine:   linear warm-up from peak/warmup to peak over `warmup` steps, then cosine decay
 *             from peak to `floor` at step total-1 (stage I: 1e-2 -> 1e-5)
 *   constant: the same linear warm-up, then peak for ever (stage II)
 * Warm-up lr at step s < warmup is peak * (s + 1) / warmup, so step 0 never has lr 0. */
#ifndef XD_TRAIN_SCHEDULE_H
#define XD_TRAIN_SCHEDULE_H
#include "core/core.h"

typedef enum { XD_SCHED_COSINE = 0, XD_SCHED_CONSTANT } xd_sched_kind;

typedef struct {
  xd_sched_kind kind;
  double peak, floor;
  uint64_t warmup, total;
} xd_schedule;

double xd_schedule_lr(const xd_schedule *s, uint64_t step);
/* "cosine" or "constant"; -1 with an error naming the value otherwise. */
int xd_schedule_parse(const char *name, xd_sched_kind *out, xd_err *e);
#endif
