#include "ops/cpu/threads.h"
#include <cblas.h>
#include <omp.h>

void xd_set_threads(int n) {
  if (n <= 0) n = omp_get_max_threads();
  omp_set_num_threads(n);
  openblas_set_num_threads(1);
}

int xd_blas_split_threads(void) {
  if (openblas_get_num_threads() > 1) return 1;
  const int n = omp_get_max_threads();
  return n > 1 ? n : 1;
}
