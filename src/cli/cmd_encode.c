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

static int encode_line(xd_tokenizer *t, const cJSON *j, long lineno, int add_special) {
  const cJSON *tx = cJSON_GetObjectItemCaseSensitive(j, "text");
  if (!cJSON_IsString(tx)) return cli_failf("<stdin>: line %ld: expected a JSON object with a string \"text\"", lineno);
  int32_t *ids;
  size_t n;
  xd_err e;
  if (xd_tokenizer_encode(t, tx->valuestring, strlen(tx->valuestring), add_special, &ids, &n, &e)) return cli_fail(&e);
  fputs("{\"ids\": [", stdout);
  for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
  fputs("]}\n", stdout);
  free(ids);
  return 0;
}

int cmd_encode(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(USAGE, stdout); return 0; }
  return cli_tokenizer_filter(argc, argv, "encode", USAGE, "--add-special", encode_line);
}
