/* Threading policy of the CPU ops: OpenMP owns the cores. xd_set_threads(n) gives OpenMP n
 * threads and makes OpenBLAS single-threaded; the ops then split every matrix product into
 * per-thread blocks themselves. Two thread pools on the same cores (OpenMP threads spinning
 * between regions while OpenBLAS's own threads wait for a core) measured 5x slower on the
 * 2-core CI machine (docs/perf.md). Without a call to xd_set_threads the ops still work: with a
 * multi-threaded OpenBLAS they issue one BLAS call per product and let BLAS thread it. */
#ifndef XD_OPS_THREADS_H
#define XD_OPS_THREADS_H
/* n <= 0: as many threads as OpenMP would use by default (OMP_NUM_THREADS or all cores). */
void xd_set_threads(int n);
/* Threads to split BLAS work across: OpenMP's count when OpenBLAS is single-threaded, else 1. */
int xd_blas_split_threads(void);
#endif
