/* Crash safety of the training loop, through the real binary (`xdistill train-toy`, needs
 * XD_BIN): SIGKILL at random moments followed by --resume, a corrupted newest checkpoint,
 * SIGINT and SIGTERM — each run must end with a final checkpoint byte-identical (weights,
 * AdamW moments, RNG, loader state) to that of an uninterrupted run. The kill delays are
 * random; the seed is printed so a failure can be replayed with XD_KILL_SEED. */
#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include "test.h"
#include "core/core.h"
#include "train/checkpoint.h"

#define STEPS "300"

static const char *bin;

/* Start `xdistill train-toy <common args> --out_dir dir [--resume]` with output to files. */
static pid_t spawn(const char *dir, int resume, const char *log) {
  pid_t pid = fork();
  if (pid == 0) {
    FILE *out = freopen(log, "ab", stderr);
    (void)out;
    if (!freopen("/dev/null", "wb", stdout)) _exit(126);
    char *argv[] = {(char *)bin, "train-toy", "--out_dir", (char *)dir, "--steps", STEPS, "--batch", "64",
                    "--micro_batch", "16", "--ckpt_every", "10", "--ckpt_keep", "2", "--warmup_steps", "10",
                    "--lr", "3e-3", "--log_every", "50", resume ? "--resume" : NULL, NULL};
    execv(bin, argv);
    _exit(127);
  }
  return pid;
}

static int wait_status(pid_t pid) {
  int st = 0;
  while (waitpid(pid, &st, 0) < 0) {}
  return st;
}

static void sleep_ms(double ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)(fmod(ms, 1000) * 1e6)};
  nanosleep(&ts, NULL);
}

static int same_file(const char *a, const char *b) {
  char *x = NULL, *y = NULL;
  size_t nx = 0, ny = 0;
  xd_err e;
  int ok = xd_read_file(a, 1 << 28, &x, &nx, &e) == 0 && xd_read_file(b, 1 << 28, &y, &ny, &e) == 0 && nx == ny &&
           memcmp(x, y, nx) == 0;
  free(x);
  free(y);
  return ok;
}

static int file_has(const char *path, const char *needle) {
  char *x = NULL;
  size_t n;
  xd_err e;
  int ok = xd_read_file(path, 1 << 24, &x, &n, &e) == 0 && strstr(x, needle) != NULL;
  free(x);
  return ok;
}

static char ref_ckpt[700];
static double ref_seconds;
static char base[600];

static void test_reference_run(void) {
  char dir[700], log[700];
  snprintf(dir, sizeof dir, "%s/ref", base);
  snprintf(log, sizeof log, "%s/ref.log", base);
  double t0 = xd_now();
  int st = wait_status(spawn(dir, 0, log));
  CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "reference run failed (status %d), see %s", st, log);
  snprintf(ref_ckpt, sizeof ref_ckpt, "%s/step-000" STEPS ".ckpt", dir);
  CHECK(xd_file_exists(ref_ckpt));
  ref_seconds = xd_now() - t0;
  fprintf(stderr, "  reference run: %.2f s\n", ref_seconds);
}

/* Highest N of the step-N.ckpt files in dir (0 if none). Not `latest`: a kill between the
 * checkpoint's rename and the pointer's leaves `latest` one behind. */
static int latest_step(const char *dir) {
  DIR *d = opendir(dir);
  int best = 0, s;
  char tail[16];
  struct dirent *de;
  while (d && (de = readdir(d)) != NULL)
    if (sscanf(de->d_name, "step-%d.%15s", &s, tail) == 2 && !strcmp(tail, "ckpt") && s > best) best = s;
  if (d) closedir(d);
  return best;
}

/* Flip one bit in the body of dir/step-N.ckpt. */
static int corrupt_byte(const char *dir, int step) {
  char path[800];
  snprintf(path, sizeof path, "%s/step-%06d.ckpt", dir, step);
  FILE *fp = fopen(path, "r+b");
  if (!fp) return 0;
  fseek(fp, 300, SEEK_SET);
  int ch = fgetc(fp);
  fseek(fp, 300, SEEK_SET);
  fputc(ch ^ 0x10, fp);
  fclose(fp);
  return 1;
}

static void test_sigkill_resume(void) {
  char dir[700], log[700], path[800];
  snprintf(dir, sizeof dir, "%s/kill", base);
  snprintf(log, sizeof log, "%s/kill.log", base);
  uint64_t seed = getenv("XD_KILL_SEED") ? strtoull(getenv("XD_KILL_SEED"), NULL, 10) : (uint64_t)time(NULL);
  fprintf(stderr, "  kill seed %llu (XD_KILL_SEED to replay)\n", (unsigned long long)seed);
  xd_rng r;
  xd_rng_seed(&r, seed);
  int kills = 0, progressed = 0, prev = 0, restarts = 0;
  /* kill after 5-20% of an uninterrupted run's time: each round makes some progress from the
   * previous checkpoint, the kill lands anywhere (mid-step, mid-checkpoint write), and six
   * rounds stay short of the end even if the machine is twice as fast as during the reference.
   * On a loaded machine a round can die before its first checkpoint (start-up dominates): then
   * the next delays stretch, and rounds go on (at most 16) until two have made progress. The
   * other way round (the reference ran beside a heavy test, the rounds run alone, so a round
   * reaches the end before its kill): start over in a fresh directory with shorter delays. */
  double stretch = 1.0;
  for (int round = 0; round < 16 && (round < 6 || progressed < 2); round++) {
    pid_t pid = spawn(dir, round > 0, log);
    sleep_ms(1000 * ref_seconds * stretch * (0.05 + 0.15 * xd_rng_uniform(&r)));
    kill(pid, SIGKILL);
    int st = wait_status(pid);
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) kills++;
    else {
      CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "round %d: status %d (see %s)", round, st, log);
      if (kills >= 3 && progressed >= 2) break; /* finished before the last kill: enough happened */
      if (++restarts > 3) break;
      fprintf(stderr, "  round %d finished before its kill: starting over with shorter delays\n", round);
      snprintf(dir, sizeof dir, "%s/kill%d", base, restarts);
      kills = progressed = prev = 0;
      stretch *= 0.4;
      round = -1;
      continue;
    }
    int s = latest_step(dir);
    if (s > prev) progressed++;
    else stretch *= 1.5;
    prev = s;
  }
  fprintf(stderr, "  %d SIGKILLs, %d of them after progress; newest checkpoint step %d\n", kills, progressed, prev);
  CHECK(kills >= 3 && progressed >= 2);
  /* corrupt the newest checkpoint: resume must report it and fall back to the previous */
  prev = latest_step(dir);
  int corrupted = prev > 0 && prev < atoi(STEPS) && corrupt_byte(dir, prev);
  int st = wait_status(spawn(dir, 1, log));
  CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "final resume: status %d (see %s)", st, log);
  if (corrupted) CHECK(file_has(log, "checksum mismatch (corrupt checkpoint)"));
  snprintf(path, sizeof path, "%s/step-000" STEPS ".ckpt", dir);
  CHECKF(same_file(path, ref_ckpt), "resumed run's final checkpoint differs from the uninterrupted run's");
}

/* SIGINT then SIGTERM: each saves a checkpoint and exits with 130 / 143. */
static void test_sigint_sigterm(void) {
  char dir[700], log[700], path[800];
  snprintf(dir, sizeof dir, "%s/int", base);
  snprintf(log, sizeof log, "%s/int.log", base);
  int sigs[2] = {SIGINT, SIGTERM}, interrupted = 0;
  for (int k = 0; k < 2; k++) {
    pid_t pid = spawn(dir, k > 0, log);
    sleep_ms(1000 * ref_seconds * 0.3);
    kill(pid, sigs[k]);
    int st = wait_status(pid);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) continue; /* finished first: nothing to check */
    CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 128 + sigs[k], "signal %d: status %d (see %s)", sigs[k], st, log);
    interrupted++;
    /* the checkpoint it names is complete and valid */
    int s = latest_step(dir);
    snprintf(path, sizeof path, "%s/step-%06d.ckpt", dir, s);
    xd_err e;
    CHECKF(s > 0 && xd_ckpt_verify(path, &e) == 0, "after signal %d: %s", sigs[k], path);
  }
  CHECK(interrupted >= 1);
  CHECK(file_has(log, "SIGINT received: saved a checkpoint"));
  /* the checkpoint the signal wrote, corrupted: the resume falls back past it */
  int s = latest_step(dir), corrupted = s > 0 && s < atoi(STEPS) && corrupt_byte(dir, s);
  int st = wait_status(spawn(dir, 1, log));
  CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "final resume: status %d", st);
  if (corrupted) CHECK(file_has(log, "checksum mismatch (corrupt checkpoint)"));
  snprintf(path, sizeof path, "%s/step-000" STEPS ".ckpt", dir);
  CHECK(same_file(path, ref_ckpt));
}

int main(void) {
  bin = getenv("XD_BIN");
  if (!bin || access(bin, X_OK) != 0) {
    fprintf(stderr, "[skip] XD_BIN not set: the kill/resume tests need the xdistill binary\n");
    xd_t.skipped++;
    return test_finish();
  }
  snprintf(base, sizeof base, "%s", test_tmpdir("train-kill"));
  RUN(test_reference_run);
  RUN(test_sigkill_resume);
  RUN(test_sigint_sigterm);
  return test_finish();
}
