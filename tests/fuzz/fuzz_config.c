/* libFuzzer target: config.json parsing (model/config). Build with -DXD_FUZZ=ON (clang).
 * Any input must give 0 or -1 with a one-line message, never a crash or a leak. */
#include <stdint.h>
#include <string.h>
#include "model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  xd_model_config c;
  xd_err e = {0};
  if (xd_config_parse(&c, (const char *)data, size, "fuzz.json", &e) == 0) {
    (void)xd_config_param_count(&c);
  } else if (strchr(e.msg, '\n') || !e.msg[0]) {
    __builtin_trap();
  }
  return 0;
}
