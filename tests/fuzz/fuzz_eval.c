/* libFuzzer target: untrusted eval inputs (task files of every format, results JSON, gate
 * files, metrics logs) must load or fail cleanly. The first byte picks the reader.
 * Build: cmake -S . -B build-fuzz -DXD_FUZZ=ON -DCMAKE_C_COMPILER=clang -DXD_CUDA=OFF
 * Run:   build-fuzz/fuzz_eval -max_total_time=60 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "eval/report.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  char path[64];
  snprintf(path, sizeof path, "/tmp/xd-fuzz-eval-%d.dat", (int)getpid());
  FILE *fp = fopen(path, "wb");
  if (!fp) return 0;
  fwrite(data + 1, 1, size - 1, fp);
  fclose(fp);
  static const char *const formats[] = {"mc", "winogrande", "hellaswag_olmes", "lambada", "mmlu", "gsm8k", "perplexity", "def"};
  xd_err e;
  unsigned pick = data[0] % 11;
  if (pick < 8) {
    xd_task_options o;
    xd_task_options_default(&o);
    o.num_fewshot = data[0] & 0x10 ? 2 : 0;
    xd_task *t = NULL;
    if (xd_task_load(&t, formats[pick], path, NULL, NULL, &o, &e) == 0) xd_task_free(t);
  } else if (pick == 8) {
    xd_results r;
    if (xd_results_read(&r, path, &e) == 0) {
      xd_compare c;
      if (xd_compare_build(&r, &r, 0.01, &c, &e) == 0) {
        xd_report_input in = {NULL, &r, &r, &c, NULL, 0, NULL};
        free(xd_report_render(&in));
        xd_compare_free(&c);
      }
      xd_results_free(&r);
    }
  } else if (pick == 9) {
    xd_gates g;
    if (xd_gates_read(&g, path, &e) == 0) {
      xd_report_input in = {NULL, NULL, NULL, NULL, NULL, 0, &g};
      free(xd_report_render(&in));
      xd_gates_free(&g);
    }
  } else {
    xd_metrics_log l;
    if (xd_metrics_log_read(&l, path, &e) == 0) {
      xd_report_input in = {NULL, NULL, NULL, NULL, &l, 1, NULL};
      free(xd_report_render(&in));
      xd_metrics_log_free(&l);
    }
  }
  unlink(path);
  return 0;
}
