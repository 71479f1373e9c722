/* HTML report: inline CSS + SVG charts, no script, every input string escaped. */
#include "eval/report.h"
#include "eval/strbuf.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Escaped text (element content and attribute values). */
static void html_esc(xd_sbuf *b, const char *s) {
  for (; s && *s; s++) {
    switch (*s) {
      case '&': xd_sbuf_puts(b, "&amp;"); break;
      case '<': xd_sbuf_puts(b, "&lt;"); break;
      case '>': xd_sbuf_puts(b, "&gt;"); break;
      case '"': xd_sbuf_puts(b, "&quot;"); break;
      case '\'': xd_sbuf_puts(b, "&#39;"); break;
      default:
        if ((unsigned char)*s < 0x20 && *s != '\n' && *s != '\t') xd_sbuf_puts(b, "?");
        else xd_sbuf_putn(b, s, 1);
    }
  }
}

/* ---- metrics logs ---------------------------------------------------------------- */
void xd_metrics_log_free(xd_metrics_log *log) {
  for (size_t i = 0; i < log->n_series; i++) {
    free(log->series[i].name);
    free(log->series[i].step);
    free(log->series[i].value);
  }
  free(log->series);
  free(log->path);
  memset(log, 0, sizeof *log);
}

static xd_series *log_series(xd_metrics_log *log, const char *name) {
  for (size_t i = 0; i < log->n_series; i++)
    if (!strcmp(log->series[i].name, name)) return &log->series[i];
  if (log->n_series >= 64) return NULL; /* a log with hundreds of keys: keep the first 64 */
  log->series = xd_realloc(log->series, (log->n_series + 1) * sizeof *log->series);
  xd_series *s = &log->series[log->n_series++];
  memset(s, 0, sizeof *s);
  s->name = xd_strdup(name);
  return s;
}

int xd_metrics_log_read(xd_metrics_log *log, const char *path, xd_err *e) {
  memset(log, 0, sizeof *log);
  char *buf;
  size_t len;
  if (xd_read_file(path, (size_t)1 << 30, &buf, &len, e)) return -1;
  log->path = xd_strdup(path);
  size_t line = 0;
  const char *p = buf, *end = buf + len;
  int rc = 0;
  while (p < end && !rc) {
    const char *nl = memchr(p, '\n', (size_t)(end - p)), *le = nl ? nl : end;
    line++;
    const char *q = p;
    while (q < le && isspace((unsigned char)*q)) q++;
    if (q < le) {
      cJSON *o = cJSON_ParseWithLength(p, (size_t)(le - p));
      const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "step");
      if (!cJSON_IsObject(o) || !cJSON_IsNumber(st) || !isfinite(st->valuedouble)) {
        cJSON_Delete(o);
        const char *r = le;
        while (r < end && isspace((unsigned char)*r)) r++;
        if (r == end) break; /* a truncated last line */
        rc = xd_errf(e, "%s:%zu: expected a JSON object with a numeric \"step\"", path, line);
        break;
      }
      const cJSON *it;
      cJSON_ArrayForEach(it, o) {
        if (it == st || !cJSON_IsNumber(it) || !isfinite(it->valuedouble)) continue;
        xd_series *s = log_series(log, it->string);
        if (!s) continue;
        s->step = xd_realloc(s->step, (s->n + 1) * sizeof *s->step);
        s->value = xd_realloc(s->value, (s->n + 1) * sizeof *s->value);
        s->step[s->n] = st->valuedouble;
        s->value[s->n++] = it->valuedouble;
      }
      cJSON_Delete(o);
    }
    p = le + 1;
  }
  free(buf);
  if (!rc && log->n_series == 0) rc = xd_errf(e, "%s: no numeric metrics besides \"step\"", path);
  if (rc) xd_metrics_log_free(log);
  return rc;
}

/* ---- gates ---------------------------------------------------------------------------- */
void xd_gates_free(xd_gates *g) {
  free(g->gate);
  memset(g, 0, sizeof *g);
}

int xd_gates_read(xd_gates *g, const char *path, xd_err *e) {
  memset(g, 0, sizeof *g);
  char *buf;
  size_t len;
  if (xd_read_file(path, (size_t)64 << 20, &buf, &len, e)) return -1;
  cJSON *o = cJSON_ParseWithLength(buf, len);
  free(buf);
  const cJSON *L = cJSON_GetObjectItemCaseSensitive(o, "layers"), *H = cJSON_GetObjectItemCaseSensitive(o, "heads");
  const cJSON *G = cJSON_GetObjectItemCaseSensitive(o, "gate");
  int rc = 0;
  if (!cJSON_IsNumber(L) || !cJSON_IsNumber(H) || !cJSON_IsArray(G) || L->valuedouble < 1 || L->valuedouble > 1024 ||
      H->valuedouble < 1 || H->valuedouble > 1024 || L->valuedouble != floor(L->valuedouble) || H->valuedouble != floor(H->valuedouble)) {
    rc = xd_errf(e, "%s: expected {\"layers\": L, \"heads\": H, \"gate\": [[...]]} with 1 <= L, H <= 1024", path);
  } else if (cJSON_GetArraySize(G) != (int)L->valuedouble) {
    rc = xd_errf(e, "%s: gate has %d rows, layers says %d", path, cJSON_GetArraySize(G), (int)L->valuedouble);
  } else {
    g->layers = (int)L->valuedouble;
    g->heads = (int)H->valuedouble;
    g->gate = xd_malloc((size_t)g->layers * (size_t)g->heads * sizeof *g->gate);
    int l = 0;
    const cJSON *row;
    cJSON_ArrayForEach(row, G) {
      if (!cJSON_IsArray(row) || cJSON_GetArraySize(row) != g->heads) {
        rc = xd_errf(e, "%s: gate row %d must be an array of %d numbers", path, l, g->heads);
        break;
      }
      int h = 0;
      const cJSON *v;
      cJSON_ArrayForEach(v, row) {
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= 1)) {
          rc = xd_errf(e, "%s: gate[%d][%d] must be a number in [0, 1]", path, l, h);
          break;
        }
        g->gate[(size_t)l * (size_t)g->heads + (size_t)h++] = v->valuedouble;
      }
      if (rc) break;
      l++;
    }
  }
  cJSON_Delete(o);
  if (rc) xd_gates_free(g);
  return rc;
}

/* ---- chart helpers ---------------------------------------------------------------------- */
/* Tick step of 1, 2 or 5 x 10^k giving about `want` intervals over span. */
static double nice_step(double span, int want) {
  if (!(span > 0)) return 1;
  double raw = span / want, mag = pow(10, floor(log10(raw))), f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

static void fmt_num(char *out, size_t n, double v) {
  double a = fabs(v);
  if (v == 0) snprintf(out, n, "0");
  else if (a >= 1e5 || a < 1e-3) snprintf(out, n, "%.3g", v);
  else snprintf(out, n, "%.4g", v);
}

typedef struct {
  double x0, x1, y0, y1;  /* data range */
  double px, py, pw, ph;  /* plot rectangle in SVG units */
} frame;

static double fx(const frame *f, double x) { return f->px + (x - f->x0) / (f->x1 - f->x0) * f->pw; }
static double fy(const frame *f, double y) { return f->py + f->ph - (y - f->y0) / (f->y1 - f->y0) * f->ph; }

/* Axes with grid lines, tick labels and axis titles. */
static void draw_axes(xd_sbuf *b, const frame *f, const char *xlabel, const char *ylabel, int yticks_pct) {
  const double ylab_dx = f->px > 75 ? 62 : 48; /* room for the widest tick labels */
  double xs = nice_step(f->x1 - f->x0, 6), ys = nice_step(f->y1 - f->y0, 5);
  xd_sbuf_printf(b, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' class='plot'/>\n", f->px, f->py, f->pw, f->ph);
  for (double y = ceil(f->y0 / ys - 1e-9) * ys; y <= f->y1 + 1e-9 * ys; y += ys) {
    char t[32];
    if (yticks_pct) snprintf(t, sizeof t, "%.0f%%", 100 * y);
    else fmt_num(t, sizeof t, fabs(y) < 1e-12 * ys ? 0 : y);
    xd_sbuf_printf(b, "<line x1='%.1f' x2='%.1f' y1='%.1f' y2='%.1f' class='grid'/>", f->px, f->px + f->pw, fy(f, y), fy(f, y));
    xd_sbuf_printf(b, "<text x='%.1f' y='%.1f' class='tick' text-anchor='end'>%s</text>\n", f->px - 6, fy(f, y) + 4, t);
  }
  for (double x = ceil(f->x0 / xs - 1e-9) * xs; x <= f->x1 + 1e-9 * xs; x += xs) {
    char t[32];
    fmt_num(t, sizeof t, fabs(x) < 1e-12 * xs ? 0 : x);
    xd_sbuf_printf(b, "<line x1='%.1f' x2='%.1f' y1='%.1f' y2='%.1f' class='grid'/>", fx(f, x), fx(f, x), f->py, f->py + f->ph);
    xd_sbuf_printf(b, "<text x='%.1f' y='%.1f' class='tick' text-anchor='middle'>%s</text>\n", fx(f, x), f->py + f->ph + 16, t);
  }
  xd_sbuf_printf(b, "<text x='%.1f' y='%.1f' class='axis' text-anchor='middle'>", f->px + f->pw / 2, f->py + f->ph + 36);
  html_esc(b, xlabel);
  xd_sbuf_printf(b, "</text><text class='axis' text-anchor='middle' transform='translate(%.1f %.1f) rotate(-90)'>", f->px - ylab_dx, f->py + f->ph / 2);
  html_esc(b, ylabel);
  xd_sbuf_puts(b, "</text>\n");
}

/* ---- sections ------------------------------------------------------------------------- */
static double grid_alpha(int k, int n) { return (double)k / (double)n; }

static void section_summary(xd_sbuf *b, const xd_report_input *in) {
  const xd_compare *c = in->cmp;
  xd_sbuf_puts(b, "<section class='cards'>\n");
  if (c) {
    char as[32];
    if (c->k_star >= 0) snprintf(as, sizeof as, "%.4g", grid_alpha(c->k_star, c->n));
    else snprintf(as, sizeof as, "none");
    double rec = 0;
    size_t nr = 0;
    for (size_t i = 0; i < c->n_rows; i++)
      if (isfinite(c->rows[i].recovery)) { rec += c->rows[i].recovery; nr++; }
    xd_sbuf_printf(b, "<div class='card'><div class='k'>critical tolerance &alpha;*</div><div class='v'>%s</div><div class='s'>smallest &alpha; with C<sub>&alpha;</sub> &ge; 0.5</div></div>\n", as);
    xd_sbuf_printf(b, "<div class='card'><div class='k'>C<sub>0</sub> (win-and-tie at &alpha; = 0)</div><div class='v'>%.3f</div><div class='s'>%s</div></div>\n",
              c->curve[0], c->curve[0] >= 0.5 ? "lossless (C<sub>0</sub> &ge; 0.5)" : "not lossless");
    xd_sbuf_printf(b, "<div class='card'><div class='k'>mean recovery</div><div class='v'>%.1f%%</div><div class='s'>student / teacher over %zu tasks</div></div>\n",
              nr ? 100 * rec / (double)nr : 0.0, nr);
    size_t wins = 0;
    for (size_t i = 0; i < c->n_rows; i++) wins += c->rows[i].min_k == 0;
    xd_sbuf_printf(b, "<div class='card'><div class='k'>tasks won or tied</div><div class='v'>%zu / %zu</div><div class='s'>at &alpha; = 0</div></div>\n", wins, c->n_rows);
  } else {
    xd_sbuf_puts(b, "<div class='card wide'><div class='k'>comparison</div><div class='s'>needs a student and a teacher results file</div></div>\n");
  }
  xd_sbuf_puts(b, "</section>\n");
}

static void section_curve(xd_sbuf *b, const xd_compare *c) {
  /* x range: to where the curve reaches its maximum, with margin, at least 0.05 */
  int kmax = 0;
  for (size_t i = 0; i < c->n_rows; i++)
    if (c->rows[i].min_k > kmax) kmax = c->rows[i].min_k;
  double xmax = grid_alpha(kmax, c->n) * 1.15;
  if (c->k_star >= 0 && grid_alpha(c->k_star, c->n) * 1.5 > xmax) xmax = grid_alpha(c->k_star, c->n) * 1.5;
  if (xmax < 0.05) xmax = 0.05;
  double st = nice_step(xmax, 6);
  xmax = ceil(xmax / st - 1e-9) * st;
  if (xmax > 1) xmax = 1;
  int kend = (int)floor(xmax * c->n + 0.5);
  if (kend > c->n) kend = c->n;
  frame f = {0, xmax, 0, 1.0, 70, 20, 880, 300};
  xd_sbuf_puts(b, "<section><h2>Win-and-Tie curve</h2>\n<p class='note'>C<sub>&alpha;</sub> = share of tasks where the student scores at least (1 &minus; &alpha;) &times; the teacher (ties win). "
             "&alpha;* is the smallest &alpha; on the grid where C<sub>&alpha;</sub> reaches 0.5.</p>\n");
  xd_sbuf_puts(b, "<svg viewBox='0 0 980 370' class='chart' role='img' aria-label='C_alpha curve'>\n");
  draw_axes(b, &f, "tolerance \xce\xb1", "C\xce\xb1", 0);
  xd_sbuf_printf(b, "<line x1='%.1f' x2='%.1f' y1='%.1f' y2='%.1f' class='half'/>", f.px, f.px + f.pw, fy(&f, 0.5), fy(&f, 0.5));
  xd_sbuf_printf(b, "<text x='%.1f' y='%.1f' class='tick' text-anchor='end'>C = 0.5</text>\n", f.px + f.pw - 4, fy(&f, 0.5) - 5);
  /* step function: C is right-continuous in alpha */
  xd_sbuf_printf(b, "<path class='curve' d='M%.1f %.1f", fx(&f, 0), fy(&f, c->curve[0]));
  for (int k = 1; k <= kend; k++)
    if (c->curve[k] != c->curve[k - 1]) xd_sbuf_printf(b, " H%.1f V%.1f", fx(&f, grid_alpha(k, c->n)), fy(&f, c->curve[k]));
  xd_sbuf_printf(b, " H%.1f'/>\n", fx(&f, xmax));
  if (c->k_star >= 0 && c->k_star <= kend) {
    double ax = fx(&f, grid_alpha(c->k_star, c->n)), ay = fy(&f, c->curve[c->k_star]);
    xd_sbuf_printf(b, "<line x1='%.1f' x2='%.1f' y1='%.1f' y2='%.1f' class='astar'/>", ax, ax, f.py, f.py + f.ph);
    xd_sbuf_printf(b, "<circle cx='%.1f' cy='%.1f' r='5' class='astar-dot'/>", ax, ay);
    int right = ax > f.px + f.pw * 0.75;
    xd_sbuf_printf(b, "<text x='%.1f' y='%.1f' class='astar-label' text-anchor='%s'>\xce\xb1* = %.4g</text>\n", ax + (right ? -8 : 8), f.py + 16,
              right ? "end" : "start", grid_alpha(c->k_star, c->n));
  }
  xd_sbuf_puts(b, "</svg>\n</section>\n");
}

static void section_tasks(xd_sbuf *b, const xd_report_input *in) {
  const xd_compare *c = in->cmp;
  xd_sbuf_puts(b, "<section><h2>Per-task scores</h2>\n");
  if (c) {
    const double rowh = 34, top = 30, left = 200, w = 560;
    double h = top + rowh * (double)c->n_rows + 30;
    double vmax = 0;
    for (size_t i = 0; i < c->n_rows; i++) vmax = fmax(vmax, fmax(c->rows[i].student, c->rows[i].teacher));
    if (vmax <= 0) vmax = 1;
    double scale = vmax <= 1 ? 1 : vmax;
    xd_sbuf_printf(b, "<svg viewBox='0 0 980 %.0f' class='chart' role='img' aria-label='per-task scores'>\n", h);
    xd_sbuf_printf(b, "<rect x='%.0f' y='6' width='12' height='12' class='bar-t'/><text x='%.0f' y='16' class='tick'>teacher</text>", left, left + 18);
    xd_sbuf_printf(b, "<rect x='%.0f' y='6' width='12' height='12' class='bar-s'/><text x='%.0f' y='16' class='tick'>student</text>", left + 90, left + 108);
    xd_sbuf_printf(b, "<text x='%.0f' y='16' class='tick' text-anchor='end'>recovery</text><text x='%.0f' y='16' class='tick' text-anchor='end'>&#945; needed</text>\n", left + w + 120, left + w + 200);
    for (int g = 0; g <= 4; g++) {
      double x = left + w * g / 4.0;
      xd_sbuf_printf(b, "<line x1='%.1f' x2='%.1f' y1='%.1f' y2='%.1f' class='grid'/><text x='%.1f' y='%.1f' class='tick' text-anchor='middle'>%.3g</text>\n", x, x, top - 4,
                top + rowh * (double)c->n_rows, x, top + rowh * (double)c->n_rows + 16, scale * g / 4.0);
    }
    for (size_t i = 0; i < c->n_rows; i++) {
      const xd_compare_row *r = &c->rows[i];
      double y = top + rowh * (double)i;
      xd_sbuf_printf(b, "<text x='%.0f' y='%.1f' class='label' text-anchor='end'>", left - 10, y + 15);
      html_esc(b, r->task);
      xd_sbuf_printf(b, "</text><text x='%.0f' y='%.1f' class='sub' text-anchor='end'>", left - 10, y + 27);
      html_esc(b, r->metric);
      xd_sbuf_puts(b, "</text>");
      double wt = fmax(0, r->teacher / scale * w), ws = fmax(0, r->student / scale * w);
      xd_sbuf_printf(b, "<rect x='%.0f' y='%.1f' width='%.1f' height='12' class='bar-t'><title>teacher %.4f</title></rect>", left, y + 3, fmin(wt, w), r->teacher);
      xd_sbuf_printf(b, "<rect x='%.0f' y='%.1f' width='%.1f' height='12' class='bar-s'><title>student %.4f</title></rect>", left, y + 16, fmin(ws, w), r->student);
      xd_sbuf_printf(b, "<text x='%.1f' y='%.1f' class='val'>%.3f</text><text x='%.1f' y='%.1f' class='val'>%.3f</text>", left + fmin(wt, w) + 5, y + 13, r->teacher,
                left + fmin(ws, w) + 5, y + 26, r->student);
      char rec[32], am[32];
      if (isfinite(r->recovery)) snprintf(rec, sizeof rec, "%.1f%%", 100 * r->recovery);
      else snprintf(rec, sizeof rec, "&#8211;");
      if (r->min_k >= 0) snprintf(am, sizeof am, "%.4g", grid_alpha(r->min_k, c->n));
      else snprintf(am, sizeof am, "&#8211;");
      xd_sbuf_printf(b, "<text x='%.0f' y='%.1f' class='rec %s' text-anchor='end'>%s</text>", left + w + 120, y + 21, r->min_k == 0 ? "good" : "warn", rec);
      xd_sbuf_printf(b, "<text x='%.0f' y='%.1f' class='val' text-anchor='end'>%s</text>\n", left + w + 200, y + 21, am);
    }
    xd_sbuf_puts(b, "</svg>\n");
    if (c->n_skipped) {
      xd_sbuf_puts(b, "<p class='note'>Not in C<sub>&alpha;</sub>: ");
      for (size_t i = 0; i < c->n_skipped; i++) {
        if (i) xd_sbuf_puts(b, "; ");
        html_esc(b, c->skipped[i]);
      }
      xd_sbuf_puts(b, ".</p>\n");
    }
  }
  /* every metric of every task: teacher and student side by side */
  xd_sbuf_puts(b, "<table><thead><tr><th>task</th><th class='num'>n</th><th>metric</th><th class='num'>teacher</th><th class='num'>student</th></tr></thead><tbody>\n");
  const xd_results *base = in->teacher ? in->teacher : in->student;
  for (int pass = 0; pass < 2; pass++) {
    /* pass 0: tasks of the teacher (or the only file); pass 1: student-only tasks */
    const xd_results *src = pass == 0 ? base : (in->teacher && in->student ? in->student : NULL);
    if (!src) continue;
    for (size_t i = 0; i < src->n_tasks; i++) {
      const xd_task_result *tr = &src->tasks[i], *te = NULL, *st = NULL;
      const xd_results *files[2] = {in->teacher, in->student};
      const xd_task_result **slots[2] = {&te, &st};
      for (int f = 0; f < 2; f++)
        for (size_t j = 0; files[f] && j < files[f]->n_tasks; j++)
          if (!strcmp(files[f]->tasks[j].task, tr->task)) *slots[f] = &files[f]->tasks[j];
      if (pass == 1 && te) continue;
      for (int m = 0; m < tr->n_metrics; m++) {
        const xd_metric *mt = &tr->metrics[m];
        const xd_metric *mv[2] = {te ? xd_task_result_metric(te, mt->name) : NULL, st ? xd_task_result_metric(st, mt->name) : NULL};
        xd_sbuf_puts(b, "<tr><td>");
        if (m == 0) html_esc(b, tr->task);
        xd_sbuf_puts(b, "</td><td class='num'>");
        if (m == 0) xd_sbuf_printf(b, "%zu", tr->n);
        xd_sbuf_puts(b, "</td><td>");
        html_esc(b, mt->name);
        xd_sbuf_printf(b, "%s%s</td>", !strcmp(mt->name, tr->primary) ? " &#9733;" : "", mt->higher_is_better ? "" : " <span class='sub2'>(lower is better)</span>");
        for (int f = 0; f < 2; f++) {
          if (mv[f]) xd_sbuf_printf(b, "<td class='num%s'>%.4f</td>", f ? " stu" : "", mv[f]->value);
          else xd_sbuf_puts(b, "<td class='num'>&#8211;</td>");
        }
        xd_sbuf_puts(b, "</tr>\n");
      }
    }
  }
  xd_sbuf_puts(b, "</tbody></table>\n<p class='note'>&#9733; primary metric (the one C<sub>&alpha;</sub> uses).</p>\n");
  xd_sbuf_puts(b, "</section>\n");
}

static void chart_series(xd_sbuf *b, const xd_series *s, const char *title) {
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (size_t i = 0; i < s->n; i++) {
    x0 = fmin(x0, s->step[i]);
    x1 = fmax(x1, s->step[i]);
    y0 = fmin(y0, s->value[i]);
    y1 = fmax(y1, s->value[i]);
  }
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) { y1 += fabs(y1) * 0.05 + 1e-9; y0 -= fabs(y0) * 0.05 + 1e-9; }
  double ys = nice_step(y1 - y0, 4);
  y0 = floor(y0 / ys) * ys;
  y1 = ceil(y1 / ys) * ys;
  frame f = {x0, x1, y0, y1, 80, 34, 360, 180};
  xd_sbuf_puts(b, "<figure class='mini'><svg viewBox='0 0 470 270' class='chart' role='img'>\n");
  xd_sbuf_puts(b, "<text x='70' y='20' class='ctitle'>");
  html_esc(b, title);
  xd_sbuf_puts(b, "</text>\n");
  draw_axes(b, &f, "step", s->name, 0);
  xd_sbuf_puts(b, "<polyline class='series' points='");
  for (size_t i = 0; i < s->n; i++) xd_sbuf_printf(b, "%.1f,%.1f ", fx(&f, s->step[i]), fy(&f, s->value[i]));
  xd_sbuf_puts(b, "'/>\n");
  if (s->n == 1) xd_sbuf_printf(b, "<circle cx='%.1f' cy='%.1f' r='3' class='astar-dot'/>", fx(&f, s->step[0]), fy(&f, s->value[0]));
  xd_sbuf_puts(b, "</svg></figure>\n");
}

static void section_logs(xd_sbuf *b, const xd_report_input *in) {
  xd_sbuf_puts(b, "<section><h2>Training curves</h2>\n<div class='grid2'>\n");
  for (size_t l = 0; l < in->n_logs; l++) {
    const xd_metrics_log *log = &in->logs[l];
    const char *base = strrchr(log->path, '/');
    base = base ? base + 1 : log->path;
    for (size_t i = 0; i < log->n_series; i++) {
      size_t n = strlen(base) + strlen(log->series[i].name) + 8;
      char *t = xd_malloc(n);
      snprintf(t, n, "%s \xc2\xb7 %s", base, log->series[i].name);
      chart_series(b, &log->series[i], t);
      free(t);
    }
  }
  xd_sbuf_puts(b, "</div></section>\n");
}

/* Viridis-like colour map from 5 stops, t in [0, 1]. */
static void colour(double t, int *r, int *g, int *b) {
  static const double stops[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  if (!(t >= 0)) t = 0;
  if (t > 1) t = 1;
  double x = t * 4;
  int i = (int)floor(x);
  if (i > 3) i = 3;
  double u = x - i;
  *r = (int)lround(stops[i][0] + u * (stops[i + 1][0] - stops[i][0]));
  *g = (int)lround(stops[i][1] + u * (stops[i + 1][1] - stops[i][1]));
  *b = (int)lround(stops[i][2] + u * (stops[i + 1][2] - stops[i][2]));
}

static void section_gates(xd_sbuf *b, const xd_gates *g) {
  double mean = 0, lo = 1, hi = 0;
  size_t n = (size_t)g->layers * (size_t)g->heads;
  for (size_t i = 0; i < n; i++) {
    mean += g->gate[i];
    lo = fmin(lo, g->gate[i]);
    hi = fmax(hi, g->gate[i]);
  }
  mean /= (double)n;
  xd_sbuf_printf(b, "<section><h2>Mixing gate o per layer and head</h2>\n<p class='note'>o = share of the global (mLSTM) branch in each head's output; 1 &minus; o goes to the local sliding-window attention. "
               "%d layers &times; %d heads; mean %.3f, min %.3f, max %.3f. Colour scale fixed to [0, 1].</p>\n", g->layers, g->heads, mean, lo, hi);
  const double left = 80, top = 40, maxw = 800, maxh = 900;
  double cw = fmin(56, maxw / g->heads), ch = fmin(30, fmax(4, maxh / g->layers));
  double W = left + cw * g->heads + 120, H = top + ch * g->layers + 12;
  int show_vals = cw >= 34 && ch >= 16;
  int hstep = (int)ceil(24.0 / cw), lstep = (int)ceil(14.0 / ch);
  xd_sbuf_printf(b, "<svg viewBox='0 0 %.0f %.0f' class='chart heat' style='max-width:%.0fpx' role='img' aria-label='gate heat map'>\n", W, H, W);
  for (int h = 0; h < g->heads; h += hstep)
    xd_sbuf_printf(b, "<text x='%.1f' y='%.1f' class='tick' text-anchor='middle'>%d</text>", left + cw * (h + 0.5), top - 8, h);
  xd_sbuf_printf(b, "<text x='%.1f' y='%.1f' class='axis' text-anchor='middle'>head</text>\n", left + cw * g->heads / 2, top - 24);
  for (int l = 0; l < g->layers; l++) {
    if (l % lstep == 0) xd_sbuf_printf(b, "<text x='%.1f' y='%.1f' class='tick' text-anchor='end'>%d</text>", left - 6, top + ch * (l + 0.5) + 4, l);
    for (int h = 0; h < g->heads; h++) {
      double v = g->gate[(size_t)l * (size_t)g->heads + (size_t)h];
      int r, gg, bb;
      colour(v, &r, &gg, &bb);
      xd_sbuf_printf(b, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='rgb(%d,%d,%d)' shape-rendering='crispEdges'><title>layer %d head %d: o = %.4f</title></rect>", left + cw * h, top + ch * l,
                cw, ch, r, gg, bb, l, h, v);
      if (show_vals)
        xd_sbuf_printf(b, "<text x='%.1f' y='%.1f' class='cell' fill='%s' text-anchor='middle'>%.2f</text>", left + cw * (h + 0.5), top + ch * (l + 0.5) + 4, v > 0.6 ? "#111" : "#fff", v);
    }
    xd_sbuf_puts(b, "\n");
  }
  xd_sbuf_printf(b, "<text class='axis' text-anchor='middle' transform='translate(%.1f %.1f) rotate(-90)'>layer</text>\n", left - 40, top + ch * g->layers / 2);
  /* legend: vertical gradient bar of 50 steps with ticks */
  double lx = left + cw * g->heads + 30, lh = fmin(ch * g->layers, 260);
  for (int i = 0; i < 50; i++) {
    int r, gg, bb;
    colour(1 - (i + 0.5) / 50, &r, &gg, &bb);
    xd_sbuf_printf(b, "<rect x='%.1f' y='%.2f' width='16' height='%.2f' fill='rgb(%d,%d,%d)'/>", lx, top + lh * i / 50, lh / 50 + 0.3, r, gg, bb);
  }
  for (int i = 0; i <= 4; i++)
    xd_sbuf_printf(b, "<text x='%.1f' y='%.1f' class='tick'>%.2f</text>", lx + 22, top + lh * (1 - i / 4.0) + 4, i / 4.0);
  xd_sbuf_printf(b, "<text x='%.1f' y='%.1f' class='tick'>o</text>\n", lx + 4, top - 8);
  xd_sbuf_puts(b, "</svg>\n</section>\n");
}

static const char *CSS =
    "body{font:15px/1.45 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#1f2933;background:#f5f7fa;margin:0}"
    "main{max-width:1040px;margin:0 auto;padding:28px 28px 60px}"
    "header{border-bottom:3px solid #2563eb;padding-bottom:12px;margin-bottom:18px}"
    "h1{font-size:26px;margin:0 0 6px}h2{font-size:19px;margin:0 0 8px;color:#102a43}"
    ".meta{color:#52606d;font-size:13.5px}.meta b{color:#1f2933;font-weight:600}"
    "section{background:#fff;border:1px solid #e4e7eb;border-radius:10px;padding:18px 22px;margin:18px 0;box-shadow:0 1px 2px rgba(16,42,67,.05)}"
    "section.cards{display:flex;gap:14px;background:none;border:none;box-shadow:none;padding:0}"
    ".card{flex:1;background:#fff;border:1px solid #e4e7eb;border-radius:10px;padding:14px 16px}"
    ".card.wide{flex:4}.card .k{font-size:12.5px;color:#52606d;letter-spacing:.02em}"
    ".card .v{font-size:28px;font-weight:650;color:#102a43;margin:4px 0}.card .s{font-size:12.5px;color:#7b8794}"
    ".note{color:#52606d;font-size:13.5px;margin:4px 0 10px}"
    "svg.chart{width:100%;height:auto;display:block}svg text{font-family:inherit}"
    ".plot{fill:#fff;stroke:#cbd2d9}.grid{stroke:#e4e7eb;stroke-width:1}"
    ".tick{font-size:12px;fill:#52606d}.axis{font-size:13px;fill:#334e68;font-weight:600}"
    ".label{font-size:13.5px;fill:#1f2933;font-weight:600}.sub{font-size:11px;fill:#7b8794}.val{font-size:11.5px;fill:#334e68}"
    ".ctitle{font-size:13.5px;fill:#102a43;font-weight:600}.cell{font-size:11px}"
    ".curve{fill:none;stroke:#2563eb;stroke-width:2.5}.series{fill:none;stroke:#2563eb;stroke-width:1.8;stroke-linejoin:round}"
    ".half{stroke:#9aa5b1;stroke-dasharray:5 4}.astar{stroke:#dc2626;stroke-width:1.5;stroke-dasharray:4 3}"
    ".astar-dot{fill:#dc2626}.astar-label{font-size:14px;font-weight:700;fill:#dc2626}"
    ".bar-t{fill:#9aa5b1}.bar-s{fill:#2563eb}.rec{font-size:13px;font-weight:650}.good{fill:#15803d}.warn{fill:#b45309}"
    ".grid2{display:grid;grid-template-columns:1fr 1fr;gap:10px}figure.mini{margin:0;border:1px solid #f0f2f5;border-radius:8px;padding:4px}"
    "table{border-collapse:collapse;width:100%;font-size:13px;margin-top:12px}th,td{padding:4px 8px;border-bottom:1px solid #e4e7eb;text-align:left}"
    "th{background:#f0f4f8;color:#334e68}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}td.stu{color:#1d4ed8;font-weight:600}.sub2{color:#7b8794;font-size:11.5px}tbody tr:nth-child(even){background:#fafbfc}"
    "svg.heat{margin:0 auto}footer{color:#9aa5b1;font-size:12px;text-align:center;margin-top:24px}";

char *xd_report_render(const xd_report_input *in) {
  xd_sbuf b = {0};
  const char *title = in->title ? in->title : "xdistill evaluation report";
  xd_sbuf_puts(&b, "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>\n<meta name='viewport' content='width=device-width, initial-scale=1'>\n<title>");
  html_esc(&b, title);
  xd_sbuf_puts(&b, "</title>\n<style>");
  xd_sbuf_puts(&b, CSS);
  xd_sbuf_puts(&b, "</style></head>\n<body><main>\n<header><h1>");
  html_esc(&b, title);
  xd_sbuf_puts(&b, "</h1><div class='meta'>");
  if (in->student) { xd_sbuf_puts(&b, "student <b>"); html_esc(&b, in->student->model); xd_sbuf_puts(&b, "</b>"); }
  if (in->student && in->teacher) xd_sbuf_puts(&b, " &nbsp;vs&nbsp; ");
  if (in->teacher) { xd_sbuf_puts(&b, "teacher <b>"); html_esc(&b, in->teacher->model); xd_sbuf_puts(&b, "</b>"); }
  if (in->cmp) xd_sbuf_printf(&b, " &nbsp;&middot;&nbsp; %zu tasks, &alpha; grid %g", in->cmp->n_rows, 1.0 / in->cmp->n);
  xd_sbuf_puts(&b, "</div></header>\n");
  if (in->student || in->teacher) section_summary(&b, in);
  if (in->cmp) section_curve(&b, in->cmp);
  if (in->student || in->teacher) section_tasks(&b, in);
  if (in->n_logs) section_logs(&b, in);
  if (in->gates) section_gates(&b, in->gates);
  xd_sbuf_printf(&b, "<footer>generated by xdistill %s &middot; self-contained: no scripts, no external resources</footer>\n</main></body></html>\n", xd_version());
  return b.s;
}

int xd_report_write(const xd_report_input *in, const char *path, xd_err *e) {
  char *html = xd_report_render(in);
  int rc = xd_write_file_atomic(path, html, strlen(html), e);
  free(html);
  return rc;
}
