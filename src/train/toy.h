/* A toy model for exercising the training loop end to end (tests, `xdistill train-toy`):
 * a one-hidden-layer MLP regressing a fixed random target function,
 *   y = W2 tanh(W1 x + b1) + b2 + c,   loss = mean over samples and outputs of (y - t)^2
 *   x ~ N(0, I) [in], t = tanh(T x) + noise * N(0, 1) [out]
 * with x and T a pure function of (data_seed, sample index) — the data loader's state is
 * just the next sample index — and the target noise drawn from the run RNG, so resume has to
 * restore both. W1 [hidden, in], W2 [out, hidden] are in the default group; b1, b2 in a
 * "no_decay" group (wd_mult 0); c [out] is frozen. The forward/backward is single-threaded
 * and deterministic. */
#ifndef XD_TRAIN_TOY_H
#define XD_TRAIN_TOY_H
#include "train/trainer.h"

typedef struct {
  int in, hidden, out;
  int samples_per_micro;  /* samples in one micro-batch */
  uint64_t data_seed;
  double noise;
  uint64_t cursor;        /* next sample index: the loader state */
  uint64_t nan_from, nan_to; /* test hook: 1-based steps [from, to] have a NaN loss (0: never) */
  uint64_t inf_grad_at_step; /* test hook: 1-based step with an Inf gradient (0: never) */
  int raise_at_step;      /* test hook: raise(SIGINT) during this 1-based step (0: never) */
  int w1, b1, w2, b2, c;  /* tensor indices */
  float *tmat;            /* target matrix T [out, in] */
  double *scratch;        /* per-sample buffers */
} xd_toy;

/* Build the parameter table of p (p freshly xd_params_init'ed) and allocate it, initialise
 * the weights from seed, and fill the hooks. Free with xd_toy_free (p separately). */
void xd_toy_init(xd_toy *t, xd_params *p, int in, int hidden, int out, int samples_per_micro,
                 uint64_t seed, xd_trainer_hooks *hooks);
void xd_toy_free(xd_toy *t);
/* Loss of the current weights on n fresh samples (index base..base+n-1, no noise). */
double xd_toy_eval(const xd_toy *t, const xd_params *p, uint64_t base, int n);
#endif
