/* The GPU's SM clock and board power while a benchmark runs (bench/gpu). Long runs on an H100 /
 * H200 are power-capped: under the stage II step the board sits at its ~700 W limit and the SM
 * clock at ~1625 MHz, not the 1980 MHz short kernels see (docs/perf.md, session 11), so an MFU
 * against the nominal peak mixes the code's efficiency with the card's clock. A thread samples
 * NVML every 50 ms between bench_power_start and bench_power_stop; NVML is opened with dlopen
 * (libnvidia-ml.so.1 comes with the driver; the build needs neither it nor nvml.h), and where it
 * is missing the sampler reports nothing (n = 0). NVML device 0: the benchmarks run on GPU 0 of
 * a one-GPU machine. */
#ifndef XD_BENCH_POWER_H
#define XD_BENCH_POWER_H

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  int n;                 /* samples; 0: NVML not available */
  double clock_mhz;      /* mean SM clock */
  unsigned clock_min, clock_max;
  double power_w;        /* mean board power */
  double capped;         /* fraction of samples throttled by the power cap (SW or HW) */
} bench_power_stats;

typedef struct {
  void *lib, *dev;
  int (*get_clock)(void *, int, unsigned *);
  int (*get_power)(void *, unsigned *);
  int (*get_reasons)(void *, unsigned long long *);
  int (*shutdown)(void);
  pthread_t th;
  atomic_int stop;
  int running;
  bench_power_stats acc;
  double sum_clock, sum_power, n_capped;
} bench_power;

static void *bench_power_loop(void *arg) {
  bench_power *p = (bench_power *)arg;
  const struct timespec dt = {0, 50 * 1000 * 1000};
  while (!atomic_load(&p->stop)) {
    unsigned clk = 0, mw = 0;
    unsigned long long why = 0;
    if (p->get_clock(p->dev, 1 /* NVML_CLOCK_SM */, &clk) == 0 && p->get_power(p->dev, &mw) == 0) {
      if (p->get_reasons && p->get_reasons(p->dev, &why) != 0) why = 0;
      if (p->acc.n == 0 || clk < p->acc.clock_min) p->acc.clock_min = clk;
      if (clk > p->acc.clock_max) p->acc.clock_max = clk;
      p->sum_clock += clk;
      p->sum_power += mw / 1000.0;
      /* 0x4: SW power cap, 0x80: HW power brake */
      p->n_capped += (why & 0x84ull) != 0;
      p->acc.n++;
    }
    nanosleep(&dt, NULL);
  }
  return NULL;
}

/* Starts sampling; 0 on success, -1 (nothing started, p->running 0) where NVML is not there. */
/* dlsym into a function pointer through its object representation (POSIX's dlsym idiom: ISO C
 * has no object -> function pointer conversion) */
#define BENCH_POWER_SYM(fp, name) (*(void **)(&(fp)) = dlsym(p->lib, (name)))
static int bench_power_start(bench_power *p) {
  memset(p, 0, sizeof *p);
  atomic_init(&p->stop, 0);
  p->lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!p->lib) return -1;
  int (*init)(void) = NULL;
  int (*handle)(unsigned, void **) = NULL;
  BENCH_POWER_SYM(init, "nvmlInit_v2");
  BENCH_POWER_SYM(handle, "nvmlDeviceGetHandleByIndex_v2");
  BENCH_POWER_SYM(p->get_clock, "nvmlDeviceGetClockInfo");
  BENCH_POWER_SYM(p->get_power, "nvmlDeviceGetPowerUsage");
  if (!BENCH_POWER_SYM(p->get_reasons, "nvmlDeviceGetCurrentClocksEventReasons"))
    BENCH_POWER_SYM(p->get_reasons, "nvmlDeviceGetCurrentClocksThrottleReasons");
  BENCH_POWER_SYM(p->shutdown, "nvmlShutdown");
  if (!init || !handle || !p->get_clock || !p->get_power || !p->shutdown || init() != 0) {
    dlclose(p->lib);
    p->lib = NULL;
    return -1;
  }
  if (handle(0, &p->dev) != 0 || pthread_create(&p->th, NULL, bench_power_loop, p) != 0) {
    p->shutdown();
    dlclose(p->lib);
    p->lib = NULL;
    return -1;
  }
  p->running = 1;
  return 0;
}

/* Stops sampling and returns what was seen (n = 0 where nothing ran). */
static bench_power_stats bench_power_stop(bench_power *p) {
  bench_power_stats s = {0};
  if (!p->running) return s;
  atomic_store(&p->stop, 1);
  pthread_join(p->th, NULL);
  p->running = 0;
  s = p->acc;
  if (s.n > 0) {
    s.clock_mhz = p->sum_clock / s.n;
    s.power_w = p->sum_power / s.n;
    s.capped = p->n_capped / s.n;
  }
  p->shutdown();
  dlclose(p->lib);
  p->lib = NULL;
  return s;
}

/* One line for a benchmark's output: "SM clock ... MHz (min-max), board ... W, power-capped ...%
 * of N samples", or a note that NVML was not there. */
static void bench_power_print(FILE *f, const char *what, const bench_power_stats *s) {
  if (s->n == 0) {
    fprintf(f, "  %s: no clock / power samples (NVML not available)\n", what);
    return;
  }
  fprintf(f, "  %s: SM clock %.0f MHz (%u-%u), board %.0f W, power-capped in %.0f%% of %d samples\n", what,
          s->clock_mhz, s->clock_min, s->clock_max, s->power_w, 100.0 * s->capped, s->n);
}

#endif
