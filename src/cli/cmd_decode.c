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

int cmd_decode(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(USAGE, stdout); return 0; }
  const char *dir = NULL;
  int skip = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) dir = argv[++i];
    else if (!strcmp(argv[i], "--skip-special")) skip = 1;
    else { fputs(USAGE, stderr); return cli_failf("decode: unknown argument '%s'", argv[i]); }
  }
  if (!dir) { fputs(USAGE, stderr); return cli_failf("decode: --tokenizer DIR is required"); }
  xd_err e;
  xd_tokenizer *t;
  if (xd_tokenizer_load(&t, dir, &e)) return cli_fail(&e);
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  long lineno = 0;
  int rc = 0;
  while ((len = getline(&line, &cap, stdin)) >= 0) {
    lineno++;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
    if (len == 0) continue;
    cJSON *j = cJSON_ParseWithLength(line, (size_t)len);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "ids");
    if (!cJSON_IsArray(arr)) {
      cJSON_Delete(j);
      rc = cli_failf("<stdin>: line %ld: expected a JSON object with an array \"ids\"", lineno);
      break;
    }
    int n = cJSON_GetArraySize(arr), k = 0, bad = 0;
    int32_t *ids = xd_malloc(((size_t)n + 1) * sizeof *ids);
    const cJSON *x;
    cJSON_ArrayForEach(x, arr) {
      if (!cJSON_IsNumber(x) || x->valuedouble != (double)(int32_t)x->valuedouble) { bad = 1; break; }
      ids[k++] = (int32_t)x->valuedouble;
    }
    cJSON_Delete(j);
    if (bad) { free(ids); rc = cli_failf("<stdin>: line %ld: \"ids\" must hold 32-bit integers", lineno); break; }
    char *text;
    size_t tl;
    if (xd_tokenizer_decode(t, ids, (size_t)k, skip, &text, &tl, &e)) { free(ids); rc = cli_fail(&e); break; }
    free(ids);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "text", text);
    char *s = cJSON_PrintUnformatted(o);
    puts(s);
    free(s);
    cJSON_Delete(o);
    free(text);
  }
  free(line);
  xd_tokenizer_free(t);
  if (!rc && fflush(stdout)) rc = cli_failf("<stdout>: write failed");
  return rc;
}
