/* Training-infrastructure throughput on an 8M-parameter table: AdamW step, grad norm, and a
 * checkpoint save + verify, each as effective bandwidth and as a ratio to memcpy of one arena
 * measured in the same run (the baseline). Usage: bench_train [millions of params] [dir] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "train/checkpoint.h"
#include "train/optim.h"

static double best_of(int reps, void (*fn)(void *), void *arg) {
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = xd_now();
    fn(arg);
    double dt = xd_now() - t0;
    if (dt < best) best = dt;
  }
  return best;
}

typedef struct { xd_params *p; float *tmp; const char *path; } ctx;
static void do_memcpy(void *a) { ctx *c = a; memcpy(c->tmp, c->p->grad, c->p->n_train * 4); }
static void do_adamw(void *a) {
  ctx *c = a;
  static const xd_adamw_cfg cfg = {0.9, 0.95, 1e-8, 0.1};
  xd_adamw_step(c->p, &cfg, 1e-3, 10);
}
static void do_norm(void *a) { ctx *c = a; volatile double n = xd_params_grad_norm(c->p); (void)n; }
static void do_save(void *a) {
  ctx *c = a;
  xd_ckpt_state s = {.step = 1};
  xd_err e;
  if (xd_ckpt_save(c->path, c->p, &s, &e) != 0) fprintf(stderr, "%s\n", e.msg);
}
static void do_verify(void *a) {
  ctx *c = a;
  xd_err e;
  if (xd_ckpt_verify(c->path, &e) != 0) fprintf(stderr, "%s\n", e.msg);
}

int main(int argc, char **argv) {
  const size_t n = (size_t)(argc > 1 ? atof(argv[1]) : 8) * 1000000;
  char path[1024];
  snprintf(path, sizeof path, "%s/bench.ckpt", argc > 2 ? argv[2] : "/tmp");
  xd_params p;
  xd_params_init(&p);
  xd_err e;
  /* 32 tensors, like a few layers' worth of new parameters */
  for (int i = 0; i < 32; i++) {
    char name[32];
    snprintf(name, sizeof name, "t%d", i);
    xd_params_add(&p, name, 1, (int64_t[]){(int64_t)(n / 32)}, 0, 1, &e);
  }
  xd_params_alloc(&p);
  xd_rng r;
  xd_rng_seed(&r, 1);
  for (size_t i = 0; i < p.n_train; i++) { p.data[i] = (float)xd_rng_normal(&r); p.grad[i] = (float)xd_rng_normal(&r); }
  ctx c = {&p, xd_aligned_alloc(p.n_train * 4), path};
  const double mb = (double)p.n_train * 4 / 1e6;
  double t_copy = best_of(5, do_memcpy, &c), t_adam = best_of(5, do_adamw, &c), t_norm = best_of(5, do_norm, &c);
  double t_save = best_of(2, do_save, &c), t_ver = best_of(2, do_verify, &c);
  printf("params %.1fM (%.0f MB per arena)\n", (double)p.n_train / 1e6, mb);
  printf("memcpy one arena   %8.2f ms  %6.1f GB/s  (baseline)\n", 1e3 * t_copy, 2 * mb / 1e3 / t_copy);
  printf("adamw step         %8.2f ms  %6.1f GB/s  %.2fx baseline time (7 arena passes vs 2)\n", 1e3 * t_adam, 7 * mb / 1e3 / t_adam, t_adam / t_copy);
  printf("grad norm          %8.2f ms  %6.1f GB/s  %.2fx\n", 1e3 * t_norm, mb / 1e3 / t_norm, t_norm / t_copy);
  printf("checkpoint save    %8.2f ms  %6.1f GB/s  %.2fx (data+m+v, fsync)\n", 1e3 * t_save, 3 * mb / 1e3 / t_save, t_save / t_copy);
  printf("checkpoint verify  %8.2f ms  %6.1f GB/s  %.2fx (crc32)\n", 1e3 * t_ver, 3 * mb / 1e3 / t_ver, t_ver / t_copy);
  unlink(path);
  free(c.tmp);
  xd_params_free(&p);
  return 0;
}
