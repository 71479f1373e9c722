#include "ops/cpu/matmul.h"
#include <cblas.h>
#include <stddef.h>
#include "ops/cpu/threads.h"

/* Products are split into column blocks of a FIXED width, whatever the thread count: the BLAS
 * kernels round differently for different block widths, so a width that followed the thread
 * count made a run's weights depend on it (and a resume on another machine inexact). Blocks are
 * handed out dynamically: a descheduled thread delays a product by one block, not by half. */
#define MATMUL_BLOCK 256
static int n_blocks(int n) { return (n + MATMUL_BLOCK - 1) / MATMUL_BLOCK; }
static void block_range(int n, int t, int *c0, int *c1) {
  *c0 = t * MATMUL_BLOCK;
  *c1 = (t + 1) * MATMUL_BLOCK < n ? (t + 1) * MATMUL_BLOCK : n;
}

#define XD_TWIN_BODY "ops/cpu/matmul_impl.inc"
#include "ops/cpu/twin.h"
