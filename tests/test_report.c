/* HTML report: metrics-log and gate-file parsing (validation, truncated last line), escaping of
 * every input string, and the pieces the report must contain (alpha* marker, bars, charts, heat
 * map cells and legend), with no script and no external resource. */
#include "test.h"
#include "eval/report.h"

static void write_text(const char *path, const char *s) {
  FILE *fp = fopen(path, "wb");
  fputs(s, fp);
  fclose(fp);
}

static int count_sub(const char *s, const char *sub) {
  int n = 0;
  for (const char *p = strstr(s, sub); p; p = strstr(p + 1, sub)) n++;
  return n;
}

static void test_metrics_log(void) {
  const char *dir = test_tmpdir("report");
  char p[600];
  snprintf(p, sizeof p, "%s/m.jsonl", dir);
  write_text(p, "{\"step\": 0, \"loss\": 2.5, \"lr\": 0.001, \"note\": \"x\"}\n\n{\"step\": 10, \"loss\": 1.5}\n{\"step\": 20, \"loss\": 1.0, \"lr\": 0.002}\n{\"step\": 30, \"lo");
  xd_metrics_log log;
  xd_err e = {{0}};
  CHECKF(xd_metrics_log_read(&log, p, &e) == 0, "%s", e.msg); /* truncated last line ignored */
  if (log.n_series == 2) {
    CHECK(!strcmp(log.series[0].name, "loss") && log.series[0].n == 3 && log.series[0].step[2] == 20 && log.series[0].value[1] == 1.5);
    CHECK(!strcmp(log.series[1].name, "lr") && log.series[1].n == 2 && log.series[1].value[1] == 0.002);
  } else CHECKF(0, "n_series %zu", log.n_series);
  xd_metrics_log_free(&log);
  write_text(p, "{\"step\": 0, \"loss\": 2.5}\nnot json\n{\"step\": 2, \"loss\": 1}\n");
  CHECK(xd_metrics_log_read(&log, p, &e) == -1 && strstr(e.msg, "m.jsonl:2"));
  write_text(p, "{\"loss\": 2.5}\n{\"step\": 2, \"loss\": 1}\n");
  CHECK(xd_metrics_log_read(&log, p, &e) == -1 && strstr(e.msg, "m.jsonl:1") && strstr(e.msg, "step"));
  write_text(p, "{\"step\": 1}\n");
  CHECK(xd_metrics_log_read(&log, p, &e) == -1 && strstr(e.msg, "no numeric metrics"));
}

static void test_gates(void) {
  const char *dir = test_tmpdir("report");
  char p[600];
  snprintf(p, sizeof p, "%s/g.json", dir);
  write_text(p, "{\"layers\": 2, \"heads\": 3, \"gate\": [[0.1, 0.2, 0.3], [0.4, 0.5, 1.0]]}");
  xd_gates g;
  xd_err e = {{0}};
  CHECKF(xd_gates_read(&g, p, &e) == 0, "%s", e.msg);
  CHECK(g.layers == 2 && g.heads == 3 && g.gate[4] == 0.5 && g.gate[5] == 1.0);
  xd_gates_free(&g);
  const char *bad[][2] = {
    {"{\"layers\": 2, \"heads\": 3, \"gate\": [[0.1, 0.2, 0.3]]}", "rows"},
    {"{\"layers\": 1, \"heads\": 3, \"gate\": [[0.1, 0.2]]}", "row 0"},
    {"{\"layers\": 1, \"heads\": 2, \"gate\": [[0.1, 1.5]]}", "gate[0][1]"},
    {"{\"layers\": 1, \"heads\": 2, \"gate\": [[0.1, \"a\"]]}", "gate[0][1]"},
    {"{\"layers\": 0, \"heads\": 2, \"gate\": []}", "layers"},
    {"{\"layers\": 1.5, \"heads\": 2, \"gate\": [[0, 0]]}", "layers"},
    {"[]", "layers"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    write_text(p, bad[i][0]);
    CHECKF(xd_gates_read(&g, p, &e) == -1 && strstr(e.msg, "g.json") && strstr(e.msg, bad[i][1]), "case %zu: %s", i, e.msg);
  }
}

static void test_render(void) {
  /* two tasks; the second named with markup that must come out escaped */
  xd_task_result ts[2], tt[2];
  memset(ts, 0, sizeof ts);
  memset(tt, 0, sizeof tt);
  const char *names[2] = {"arc_easy", "<script>alert('x')</script>&"};
  const double s[2] = {0.56, 0.9}, t[2] = {0.57, 0.8};
  for (int i = 0; i < 2; i++) {
    ts[i].task = tt[i].task = (char *)names[i];
    snprintf(ts[i].primary, 32, "acc");
    snprintf(tt[i].primary, 32, "acc");
    ts[i].metrics[0] = (xd_metric){"acc", s[i], 1};
    tt[i].metrics[0] = (xd_metric){"acc", t[i], 1};
    ts[i].n_metrics = tt[i].n_metrics = 1;
  }
  xd_results S = {"student \"<b>\"", "student", ts, 2, 0, 0}, T = {"teacher", "teacher", tt, 2, 0, 0};
  xd_compare c;
  xd_err e = {{0}};
  CHECK(xd_compare_build(&S, &T, 0.001, &c, &e) == 0 && c.k_star == 0);
  double steps[3] = {0, 10, 20}, vals[3] = {3, 2, 1.5};
  xd_series ser = {"loss", steps, vals, 3};
  xd_metrics_log log = {"runs/<x>/metrics.jsonl", &ser, 1};
  double gv[6] = {0.1, 0.2, 0.3, 0.4, 0.5, 0.9};
  xd_gates g = {2, 3, gv};
  xd_report_input in = {"Report & <title>", &S, &T, &c, &log, 1, &g};
  char *html = xd_report_render(&in);
  CHECK(html && !strncmp(html, "<!DOCTYPE html>", 15));
  CHECK(!strstr(html, "<script"));                         /* escaped, and no script of ours */
  CHECK(strstr(html, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;") != NULL);
  CHECK(strstr(html, "Report &amp; &lt;title&gt;") && strstr(html, "student &quot;&lt;b&gt;&quot;"));
  CHECK(strstr(html, "runs/&lt;x&gt;/metrics.jsonl") || strstr(html, "metrics.jsonl"));
  CHECK(!strstr(html, "http://") && !strstr(html, "https://") && !strstr(html, "src="));
  CHECK(strstr(html, "\xce\xb1* = 0</text>") != NULL);          /* alpha* marker (lossless: 0) */
  CHECK(count_sub(html, "class='bar-s'") == 3);                 /* 2 bars + the legend swatch */
  CHECK(count_sub(html, "<title>layer ") == 6);                 /* one heat-map cell per (layer, head) */
  CHECK(strstr(html, "layer 1 head 2: o = 0.9000") != NULL);
  CHECK(count_sub(html, "class='series'") == 1);
  CHECK(count_sub(html, "<svg") == 4);                           /* curve, bars, one training chart, heat map */
  free(html);
  /* the gate-only report works too */
  xd_report_input only = {NULL, NULL, NULL, NULL, NULL, 0, &g};
  html = xd_report_render(&only);
  CHECK(strstr(html, "Mixing gate") && !strstr(html, "Win-and-Tie curve"));
  free(html);
  const char *dir = test_tmpdir("report");
  char p[600];
  snprintf(p, sizeof p, "%s/r.html", dir);
  CHECKF(xd_report_write(&in, p, &e) == 0, "%s", e.msg);
  CHECK(xd_file_exists(p));
  xd_compare_free(&c);
}

int main(void) {
  RUN(test_metrics_log);
  RUN(test_gates);
  RUN(test_render);
  return test_finish();
}
