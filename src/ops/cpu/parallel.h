/* OpenMP threshold shared by the CPU ops: a parallel region costs microseconds to start (and
 * far more when the machine is oversubscribed), so regions whose total work is below
 * XD_OMP_MIN_WORK scalar operations run on the calling thread. Use as
 *   #pragma omp parallel for if (XD_OMP_WORTH(work)) */
#ifndef XD_OPS_CPU_PARALLEL_H
#define XD_OPS_CPU_PARALLEL_H
#define XD_OMP_MIN_WORK 65536.0
#define XD_OMP_WORTH(work) ((double)(work) >= XD_OMP_MIN_WORK)
#endif
