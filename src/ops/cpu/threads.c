#include "ops/cpu/threads.h"
#include <cblas.h>
#include <omp.h>

void xd_set_threads(int n) {
  if (n <= 0) return;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}
