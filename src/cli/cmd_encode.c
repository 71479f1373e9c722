/* `xdistill encode --tokenizer DIR [--add-special]`: JSON lines {"text": ...} on stdin ->
 * {"ids": [...]} on stdout, one output line per input line. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "tokenizer/tokenizer.h"

static const char *USAGE =
    "usage: xdistill encode --tokenizer DIR [--add-special] < in.jsonl > out.jsonl\n"
    "  Reads one JSON object {\"text\": ...} per line and writes {\"ids\": [...]} per line.\n"
    "  --tokenizer DIR  directory with tokenizer.json (or the tokenizer.json file)\n"
    "  --add-special    apply the post-processor (e.g. BOS), as HF add_special_tokens=True\n";

int cmd_encode(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(USAGE, stdout); return 0; }
  const char *dir = NULL;
  int add_special = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) dir = argv[++i];
    else if (!strcmp(argv[i], "--add-special")) add_special = 1;
    else { fputs(USAGE, stderr); return cli_failf("encode: unknown argument '%s'", argv[i]); }
  }
  if (!dir) { fputs(USAGE, stderr); return cli_failf("encode: --tokenizer DIR is required"); }
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
    const cJSON *tx = cJSON_GetObjectItemCaseSensitive(j, "text");
    if (!cJSON_IsString(tx)) {
      cJSON_Delete(j);
      rc = cli_failf("<stdin>: line %ld: expected a JSON object with a string \"text\"", lineno);
      break;
    }
    int32_t *ids;
    size_t n;
    if (xd_tokenizer_encode(t, tx->valuestring, strlen(tx->valuestring), add_special, &ids, &n, &e)) {
      cJSON_Delete(j);
      rc = cli_fail(&e);
      break;
    }
    cJSON_Delete(j);
    fputs("{\"ids\": [", stdout);
    for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
    fputs("]}\n", stdout);
    free(ids);
  }
  free(line);
  xd_tokenizer_free(t);
  if (!rc && fflush(stdout)) rc = cli_failf("<stdout>: write failed");
  return rc;
}
