#include "train/trainer.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "train/optim.h"
#include "train/schedule.h"

/* The one piece of global mutable state allowed in the project: a signal handler may only
 * store into a volatile sig_atomic_t. Holds the number of the signal that asked us to stop. */
static volatile sig_atomic_t g_stop_signal = 0;

static void on_stop_signal(int sig) { g_stop_signal = sig; }

void xd_train_install_signal_handlers(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND | SA_RESTART;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}
int xd_train_stop_signal(void) { return (int)g_stop_signal; }
void xd_train_clear_stop_signal(void) { g_stop_signal = 0; }

/* Keep the lines of metrics.jsonl whose step is <= last_step (drops the log of steps a
 * killed run did after its last checkpoint). */
static int trim_metrics(const char *path, uint64_t last_step, xd_err *e) {
  if (!xd_file_exists(path)) return 0;
  char *buf;
  size_t n;
  if (xd_read_file(path, (size_t)1 << 34, &buf, &n, e) != 0) return -1;
  char *out = xd_malloc(n + 1);
  size_t k = 0;
  for (char *line = buf; line < buf + n;) {
    char *nl = memchr(line, '\n', (size_t)(buf + n - line));
    if (!nl) break; /* a torn last line (killed mid-write) is dropped */
    unsigned long long s;
    if (sscanf(line, "{\"step\":%llu", &s) == 1 && s <= last_step) {
      memcpy(out + k, line, (size_t)(nl - line) + 1);
      k += (size_t)(nl - line) + 1;
    }
    line = nl + 1;
  }
  int rc = xd_write_file_atomic(path, out, k, e);
  free(out);
  free(buf);
  return rc;
}

static void fmt_duration(double s, char *buf, size_t cap) {
  if (!(s >= 0) || s > 1e8) { snprintf(buf, cap, "?"); return; }
  long t = (long)(s + 0.5);
  if (t >= 3600) snprintf(buf, cap, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60) snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
  else snprintf(buf, cap, "%lds", t);
}

static void fmt_rate(double r, char *buf, size_t cap) {
  if (r >= 1e6) snprintf(buf, cap, "%.2fM", r / 1e6);
  else if (r >= 1e3) snprintf(buf, cap, "%.1fk", r / 1e3);
  else snprintf(buf, cap, "%.0f", r);
}

/* A number for JSON: NaN and Inf (not JSON) become the strings "nan", "inf", "-inf". */
static const char *json_num(double x, char *buf, size_t cap) {
  if (isnan(x)) snprintf(buf, cap, "\"nan\"");
  else if (isinf(x)) snprintf(buf, cap, x > 0 ? "\"inf\"" : "\"-inf\"");
  else snprintf(buf, cap, "%.9g", x);
  return buf;
}

typedef struct {
  const xd_train_config *cfg;
  xd_params *p;
  const xd_trainer_hooks *hooks;
  xd_ckpt_state st;
} run_state;

static void *loader_ctx(const xd_trainer_hooks *h) { return h->loader_ctx ? h->loader_ctx : h->ctx; }

static int save_ckpt(run_state *r, xd_err *e) {
  const xd_trainer_device *dev = r->hooks->device;
  if (dev && dev->sync_to_host(dev->ctx, r->p, e) != 0) return xd_err_prefix(e, "checkpoint: device -> host");
  if (r->hooks->loader_state_size) r->hooks->loader_save(loader_ctx(r->hooks), r->st.loader_state);
  return xd_ckpt_save_rotating(r->cfg->out_dir, (int)r->cfg->ckpt_keep, r->p, &r->st, e);
}

/* Resume from the newest valid checkpoint, if any. Returns 1 resumed, 0 none, -1 error. */
static int try_resume(run_state *r, FILE *progress, xd_err *e) {
  const xd_train_config *cfg = r->cfg;
  xd_ckpt_clean_tmp(cfg->out_dir);
  char *path = NULL;
  int found = xd_ckpt_find_latest(cfg->out_dir, progress ? progress : stderr, &path, e);
  if (found <= 0) return found;
  int rc = xd_ckpt_load(path, r->p, &r->st, e);
  uint64_t want = xd_train_config_hash(cfg);
  if (rc == 0 && r->st.config_hash != want) {
    if (!cfg->resume_force)
      rc = xd_errf(e, "%s: written with a different configuration (hash %016" PRIx64 ", now %016" PRIx64
                   "); resume with the settings in %s/config.json, pass --resume_force to continue with the new"
                   " ones, or use a new out_dir", path, r->st.config_hash, want, cfg->out_dir);
    else if (progress)
      fprintf(progress, "xdistill: warning: %s was written with a different configuration; continuing with the new one "
              "(--resume_force)\n", path);
    r->st.config_hash = want; /* later checkpoints carry the configuration now in force */
  }
  if (rc == 0 && r->hooks->loader_state_size && r->hooks->loader_restore(loader_ctx(r->hooks), r->st.loader_state, e) != 0)
    rc = xd_err_prefix(e, "%s: data loader state", path);
  const xd_trainer_device *dev = r->hooks->device;
  if (rc == 0 && dev && dev->sync_from_host(dev->ctx, r->p, e) != 0) rc = xd_err_prefix(e, "%s: host -> device", path);
  if (rc == 0 && r->hooks->weights_changed && r->hooks->weights_changed(r->hooks->ctx, r->p, e) != 0) rc = -1;
  if (rc == 0 && progress) fprintf(progress, "xdistill: resuming from %s (step %" PRIu64 ")\n", path, r->st.step);
  free(path);
  return rc == 0 ? 1 : -1;
}

int xd_trainer_run(const xd_train_config *cfg, xd_params *p, const xd_trainer_hooks *hooks,
                   FILE *progress, xd_train_result *res, xd_err *e) {
  memset(res, 0, sizeof *res);
  res->last_loss = NAN;
  if (xd_train_config_validate(cfg, e) != 0) return -1;
  if (p->n_train == 0) return xd_errf(e, "nothing to train: no trainable parameter");
  XD_CHECK(hooks->step && (hooks->loader_state_size == 0 || (hooks->loader_save && hooks->loader_restore)));
  const xd_trainer_device *dev = hooks->device;
  XD_CHECK(!dev || (dev->zero_grad && dev->scale_grad && dev->grad_norm && dev->adamw_step && dev->sync_to_host &&
                    dev->sync_from_host));
  if (xd_mkdir_p(cfg->out_dir, e) != 0) return -1;

  run_state r = {.cfg = cfg, .p = p, .hooks = hooks};
  r.st.loader_size = hooks->loader_state_size;
  r.st.loader_state = r.st.loader_size ? xd_malloc(r.st.loader_size) : NULL;
  char *metrics_path = xd_path_join(cfg->out_dir, "metrics.jsonl");
  char *config_path = xd_path_join(cfg->out_dir, "config.json");
  FILE *mf = NULL;
  int rc = 0;

  if (cfg->resume) {
    int got = try_resume(&r, progress, e);
    if (got < 0) rc = -1;
    res->resumed = got == 1;
    if (got == 1) rc = trim_metrics(metrics_path, r.st.step, e);
    if (got == 0 && progress) fprintf(progress, "xdistill: no checkpoint in %s: starting a new run\n", cfg->out_dir);
  } else if (xd_ckpt_dir_has_checkpoints(cfg->out_dir)) {
    rc = xd_errf(e, "%s: already holds checkpoints; pass --resume to continue that run or choose another out_dir", cfg->out_dir);
  }
  if (rc == 0 && !res->resumed) {
    xd_rng_seed(&r.st.rng, (uint64_t)cfg->seed);
    r.st.config_hash = xd_train_config_hash(cfg);
    if (xd_file_exists(metrics_path)) unlink(metrics_path);
  }
  if (rc == 0) rc = xd_train_config_save(cfg, config_path, e);
  if (rc == 0 && !(mf = fopen(metrics_path, "ab"))) rc = xd_errf(e, "%s: cannot open: %s", metrics_path, strerror(errno));

  xd_sched_kind sk = XD_SCHED_COSINE;
  if (rc == 0) rc = xd_schedule_parse(cfg->schedule, &sk, e);
  const xd_schedule sched = {sk, cfg->lr, cfg->lr_min, (uint64_t)cfg->warmup_steps, (uint64_t)cfg->steps};
  const xd_adamw_cfg acfg = {cfg->beta1, cfg->beta2, cfg->adam_eps, cfg->weight_decay};
  const int n_micro = (int)xd_train_config_accum(cfg);
  const uint64_t total = (uint64_t)cfg->steps;
  const int tty = progress && isatty(fileno(progress));
  const uint64_t first_step = r.st.step;
  const double t0 = xd_now();
  const uint64_t first_tokens = r.st.tokens_seen;
  double last_print = -1;

  while (rc == 0 && r.st.step < total) {
    const double ts = xd_now();
    const uint64_t step = r.st.step;
    if (dev) {
      if (dev->zero_grad(dev->ctx, e) != 0) {
        rc = xd_err_prefix(e, "step %" PRIu64 ": zero gradients", step);
        break;
      }
    } else {
      xd_params_zero_grad(p);
    }
    double loss = 0, msum[XD_STEP_MAX_METRICS] = {0};
    uint64_t tokens = 0;
    xd_step_result first = {0};
    for (int i = 0; i < n_micro && rc == 0; i++) {
      xd_step_result sr;
      memset(&sr, 0, sizeof sr);
      if (hooks->step(hooks->ctx, p, step, i, n_micro, &r.st.rng, &sr, e) != 0) {
        rc = xd_err_prefix(e, "step %" PRIu64 ", micro-batch %d", step, i);
        break;
      }
      if (sr.nmetrics < 0 || sr.nmetrics > XD_STEP_MAX_METRICS) sr.nmetrics = 0;
      if (i == 0) first = sr;
      loss += sr.loss;
      tokens += sr.tokens;
      for (int k = 0; k < first.nmetrics && k < sr.nmetrics; k++) msum[k] += sr.metric_values[k];
    }
    if (rc != 0) break;
    loss /= n_micro;
    double gnorm; /* NaN/Inf iff some gradient is */
    if (dev) {
      if ((n_micro > 1 && dev->scale_grad(dev->ctx, 1.0f / (float)n_micro, e) != 0) || dev->grad_norm(dev->ctx, &gnorm, e) != 0) {
        rc = xd_err_prefix(e, "step %" PRIu64 ": gradient norm", step);
        break;
      }
    } else {
      if (n_micro > 1) xd_params_scale_grad(p, 1.0f / (float)n_micro);
      gnorm = xd_params_grad_norm(p);
    }
    const double lr = xd_schedule_lr(&sched, step);
    const int bad = !isfinite(loss) || !isfinite(gnorm);
    r.st.step++;
    r.st.tokens_seen += tokens;
    const double now = xd_now(), dt = now - ts;
    if (bad) {
      r.st.skipped_total++;
      r.st.consecutive_skips++;
      char lb[40], gb[40];
      fprintf(mf, "{\"step\":%" PRIu64 ",\"skipped\":true,\"reason\":\"%s\",\"loss\":%s,\"grad_norm\":%s,\"lr\":%.9g,\"time_s\":%.3f}\n",
              r.st.step, !isfinite(loss) ? "non-finite loss" : "non-finite gradient", json_num(loss, lb, sizeof lb),
              json_num(gnorm, gb, sizeof gb), lr, now - t0);
      if (progress) fprintf(progress, "%sxdistill: warning: step %" PRIu64 ": %s, update skipped (%" PRIu64 " in a row)\n",
                            tty ? "\r\033[K" : "", r.st.step, !isfinite(loss) ? "loss is NaN/Inf" : "gradient is NaN/Inf", r.st.consecutive_skips);
      if (r.st.consecutive_skips >= (uint64_t)cfg->max_skips) {
        rc = xd_errf(e, "training is diverging: %" PRIu64 " consecutive steps with NaN/Inf loss or gradients (last at step %" PRIu64 "); "
                     "lower lr or check the data (%s/metrics.jsonl)", r.st.consecutive_skips, r.st.step, cfg->out_dir);
        break;
      }
    } else {
      if (dev) {
        const double f = xd_clip_factor(gnorm, cfg->grad_clip); /* as xd_clip_grad */
        if ((f != 1.0 && dev->scale_grad(dev->ctx, (float)f, e) != 0) || dev->adamw_step(dev->ctx, &acfg, lr, ++r.st.adam_t, e) != 0) {
          rc = xd_err_prefix(e, "step %" PRIu64 ": optimiser update", r.st.step);
          break;
        }
      } else {
        xd_clip_grad(p, gnorm, cfg->grad_clip);
        xd_adamw_step(p, &acfg, lr, ++r.st.adam_t);
      }
      if (hooks->weights_changed && hooks->weights_changed(hooks->ctx, p, e) != 0) {
        rc = xd_err_prefix(e, "step %" PRIu64, r.st.step);
        break;
      }
      r.st.consecutive_skips = 0;
      res->last_loss = loss;
      fprintf(mf, "{\"step\":%" PRIu64 ",\"loss\":%.9g", r.st.step, loss);
      for (int k = 0; k < first.nmetrics; k++) fprintf(mf, ",\"%s\":%.9g", first.metric_names[k], msum[k] / n_micro);
      fprintf(mf, ",\"lr\":%.9g,\"grad_norm\":%.9g,\"tokens\":%" PRIu64 ",\"tokens_per_s\":%.1f,\"time_s\":%.3f}\n",
              lr, gnorm, r.st.tokens_seen, dt > 0 ? (double)tokens / dt : 0.0, now - t0);
    }
    fflush(mf);
    /* terminal: redrawn in place, at most 10 times a second; otherwise a line every log_every */
    const int show = tty ? (now - last_print >= 0.1 || r.st.step == total) : (r.st.step % (uint64_t)cfg->log_every == 0 || r.st.step == total);
    if (progress && show) {
      char rate[32], eta[32];
      const double per_step = (now - t0) / (double)(r.st.step - first_step);
      last_print = now;
      fmt_rate((double)(r.st.tokens_seen - first_tokens) / (now - t0), rate, sizeof rate); /* mean since start */
      fmt_duration(per_step * (double)(total - r.st.step), eta, sizeof eta);
      fprintf(progress, "%sstep %" PRIu64 "/%" PRIu64 " | loss %.6g | gnorm %.3g | lr %.3g | %s tok/s | ETA %s%s",
              tty ? "\r" : "", r.st.step, total, loss, gnorm, lr, rate, eta, tty ? "\033[K" : "\n");
      fflush(progress);
    }
    const int stop = xd_train_stop_signal();
    if ((cfg->ckpt_every > 0 && r.st.step % (uint64_t)cfg->ckpt_every == 0) || r.st.step == total || stop)
      if ((rc = save_ckpt(&r, e)) != 0) break;
    if (stop) {
      if (progress) fprintf(progress, "%sxdistill: %s received: saved a checkpoint at step %" PRIu64 " in %s; continue with --resume\n",
                            tty ? "\n" : "", stop == SIGINT ? "SIGINT" : stop == SIGTERM ? "SIGTERM" : "signal", r.st.step, cfg->out_dir);
      rc = 128 + stop;
      break;
    }
  }
  if (tty && rc >= 0 && progress) fputc('\n', progress);
  if (mf) fclose(mf);
  res->steps_done = r.st.step;
  res->skipped_total = r.st.skipped_total;
  free(r.st.loader_state);
  free(metrics_path);
  free(config_path);
  return rc;
}
