/* libFuzzer target: config.json parsing (model/config, and the student's "xdistill" block:
 * model/student/hybrid_config). Build with -DXD_FUZZ=ON (clang). Any input must give 0 or -1 with
 * a one-line message, never a crash, a leak or undefined behaviour. */
#include <stdint.h>
#include <string.h>
#include "model/config.h"
#include "model/student/hybrid_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  xd_model_config c;
  xd_err e = {0};
  if (xd_config_parse(&c, (const char *)data, size, "fuzz.json", &e) == 0) {
    (void)xd_config_param_count(&c);
  } else if (strchr(e.msg, '\n') || !e.msg[0]) {
    __builtin_trap();
  }
  xd_hybrid_config h;
  int present = 0;
  xd_err he = {0};
  if (xd_hybrid_parse(&h, &present, (const char *)data, size, 64, "fuzz.json", &he) != 0 && (strchr(he.msg, '\n') || !he.msg[0]))
    __builtin_trap();
  return 0;
}
