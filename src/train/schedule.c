#include "train/schedule.h"

#include <math.h>
#include <string.h>

double xd_schedule_lr(const xd_schedule *s, uint64_t step) {
  if (step < s->warmup) return s->peak * (double)(step + 1) / (double)s->warmup;
  if (s->kind == XD_SCHED_CONSTANT) return s->peak;
  /* cosine over [warmup, total-1]; past the end it stays at the floor */
  uint64_t span = s->total > s->warmup + 1 ? s->total - s->warmup - 1 : 1;
  double x = (double)(step - s->warmup) / (double)span;
  if (x > 1) x = 1;
  return s->floor + (s->peak - s->floor) * 0.5 * (1.0 + cos(M_PI * x));
}

int xd_schedule_parse(const char *name, xd_sched_kind *out, xd_err *e) {
  if (!strcmp(name, "cosine")) *out = XD_SCHED_COSINE;
  else if (!strcmp(name, "constant")) *out = XD_SCHED_CONSTANT;
  else return xd_errf(e, "unknown schedule '%s' (expected cosine or constant)", name);
  return 0;
}
