/* The median of a benchmark's repeated timings (sorts v in place), shared by the GPU benchmarks. */
#ifndef XD_BENCH_MEDIAN_H
#define XD_BENCH_MEDIAN_H
#include <stdlib.h>

static inline int bench_cmp_d(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}
static inline double bench_median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, bench_cmp_d);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
#endif
