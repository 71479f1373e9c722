/* `xdistill decode --tokenizer DIR [--skip-special]`: JSON lines {"ids": [...]} on stdin ->
 * {"text": ...} on stdout. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "tokenizer/tokenizer.h"

static const char *USAGE =
    "usage: xdistill decode --tokenizer DIR [--skip-special] < in.jsonl > out.jsonl\n"
    "  Reads one JSON object {\"ids\": [...]} per line and writes {\"text\": ...} per line.\n"
    "  --tokenizer DIR  directory with tokenizer.json (or the tokenizer.json file)\n"
    "  --skip-special   drop special tokens, as HF skip_special_tokens=True\n";

/* A JSON number that is a 32-bit integer (range checked before the cast: converting an
 * out-of-range double is undefined). */
static int as_int32(const cJSON *x, int32_t *out) {
  if (!cJSON_IsNumber(x)) return 0;
  const double v = x->valuedouble;
  if (!(v >= -2147483648.0 && v <= 2147483647.0) || v != (double)(int32_t)v) return 0;
  *out = (int32_t)v;
  return 1;
}

static int decode_line(xd_tokenizer *t, const cJSON *j, long lineno, int skip) {
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "ids");
  if (!cJSON_IsArray(arr)) return cli_failf("<stdin>: line %ld: expected a JSON object with an array \"ids\"", lineno);
  const int n = cJSON_GetArraySize(arr);
  int32_t *ids = xd_malloc(((size_t)n + 1) * sizeof *ids);
  int k = 0;
  const cJSON *x;
  cJSON_ArrayForEach(x, arr) {
    if (!as_int32(x, &ids[k])) {
      free(ids);
      return cli_failf("<stdin>: line %ld: \"ids\" must hold 32-bit integers", lineno);
    }
    k++;
  }
  char *text;
  size_t tl;
  xd_err e;
  const int rc = xd_tokenizer_decode(t, ids, (size_t)k, skip, &text, &tl, &e);
  free(ids);
  if (rc) return cli_fail(&e);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "text", text);
  char *s = cJSON_PrintUnformatted(o);
  puts(s);
  free(s);
  cJSON_Delete(o);
  free(text);
  return 0;
}

int cmd_decode(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(USAGE, stdout); return 0; }
  return cli_tokenizer_filter(argc, argv, "decode", USAGE, "--skip-special", decode_line);
}
