/* Thread count for the CPU ops: OpenMP loops and OpenBLAS (pthreads build) together. */
#ifndef XD_OPS_THREADS_H
#define XD_OPS_THREADS_H
/* n <= 0 leaves the defaults (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / all cores). */
void xd_set_threads(int n);
#endif
