/* `xdistill data prepare|info`: tokenise corpora into train/validation token shards
 * (src/data/prepare.h, docs/data-format.md), and summarise/verify a prepared directory. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cli/cli.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "tokenizer/tokenizer.h"

static const char *USAGE =
    "usage: xdistill data prepare --tokenizer DIR --out DIR [options] INPUT...\n"
    "       xdistill data info DIR\n"
    "\n"
    "prepare: tokenise INPUT files into token shards + manifest.json in --out.\n"
    "  INPUT            *.txt (one document per file), *.jsonl / *.json (one JSON object per\n"
    "                   line with \"text\", or \"messages\" [{role, content}] rendered with the chat\n"
    "                   template, keeping its loss mask); any of them may end in .gz\n"
    "  --tokenizer DIR  directory with tokenizer.json (or the tokenizer.json file)\n"
    "  --out DIR        output directory (created); manifest.json is written last\n"
    "  --val-fraction F share of documents for the validation split (default 0.01)\n"
    "  --seed S         seed of the document-level train/validation split (default 1)\n"
    "  --shard-tokens N tokens per shard (default 16777216; memory ~5 bytes per token)\n"
    "  --add-bos        start each text document with the tokenizer's BOS token\n"
    "  --force          replace a dataset already in --out\n"
    "  --threads N      encoding threads (default: all cores; output is the same for any N)\n"
    "  --quiet          no progress lines on stderr\n"
    "Documents are joined with EOS. See docs/data-format.md.\n"
    "\n"
    "info: print the splits of a prepared directory and verify every shard's checksum.\n";

typedef struct {
  xd_tokenizer *t;
} tok_ctx;

static int enc_text(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, xd_err *e) {
  return xd_tokenizer_encode(((tok_ctx *)ctx)->t, text, len, 0, ids, n, e);
}
static int enc_chat(void *ctx, const xd_chat_message *m, int n, int32_t **ids, uint8_t **mask, size_t *len, xd_err *e) {
  return xd_chat_encode(((tok_ctx *)ctx)->t, m, n, 0, ids, mask, len, e);
}

static int cmd_data_prepare(int argc, char **argv) {
  const char *tok_path = NULL, *out = NULL;
  xd_prepare_opts o = {.val_fraction = 0.01, .seed = 1, .shard_tokens = 1u << 24, .progress = stderr};
  const char **inputs = xd_malloc(sizeof(char *) * (size_t)argc);
  int n_in = 0, rc = 0;
  for (int i = 1; i < argc && rc == 0; i++) {
    const char *a = argv[i];
    int has = i + 1 < argc;
    if (!strcmp(a, "--tokenizer") && has) tok_path = argv[++i];
    else if (!strcmp(a, "--out") && has) out = argv[++i];
    else if (!strcmp(a, "--val-fraction") && has) {
      rc = cli_parse_double("data prepare", a, argv[++i], &o.val_fraction);
    } else if (!strcmp(a, "--seed") && has) {
      rc = cli_parse_u64("data prepare", a, argv[++i], &o.seed);
    } else if (!strcmp(a, "--shard-tokens") && has) {
      rc = cli_parse_u64("data prepare", a, argv[++i], &o.shard_tokens);
    } else if (!strcmp(a, "--threads") && has) {
      rc = cli_parse_int("data prepare", a, argv[++i], 1, 4096, &o.threads);
    } else if (!strcmp(a, "--add-bos")) o.add_bos = 1;
    else if (!strcmp(a, "--force")) o.force = 1;
    else if (!strcmp(a, "--quiet")) o.progress = NULL;
    else if (a[0] == '-' && a[1]) rc = cli_failf("data prepare: unknown or incomplete option '%s' (see --help)", a);
    else inputs[n_in++] = a;
  }
  if (rc == 0 && (!tok_path || !out)) rc = cli_failf("data prepare: --tokenizer DIR and --out DIR are required (see --help)");
  if (rc == 0 && n_in == 0) rc = cli_failf("data prepare: no input files given");
  if (rc != 0) {
    free(inputs);
    return rc;
  }
  o.out_dir = out;
  o.inputs = inputs;
  o.n_inputs = n_in;
  xd_err e;
  tok_ctx tc = {NULL};
  if (xd_tokenizer_load(&tc.t, tok_path, &e) != 0) {
    free(inputs);
    return cli_fail(&e);
  }
  char hash[40];
  if (xd_data_tokenizer_hash(tok_path, hash, &e) != 0) {
    xd_tokenizer_free(tc.t);
    free(inputs);
    return cli_fail(&e);
  }
  xd_prepare_encoder enc = {.ctx = &tc, .encode = enc_text, .chat = enc_chat, .vocab_size = (uint64_t)xd_tokenizer_vocab_size(tc.t),
                            .eos_id = xd_tokenizer_eos_id(tc.t), .bos_id = xd_tokenizer_bos_id(tc.t), .name = tok_path, .hash = hash};
  xd_prepare_stats st;
  rc = xd_prepare_run(&o, &enc, &st, &e);
  xd_tokenizer_free(tc.t);
  free(inputs);
  if (rc != 0) return cli_fail(&e);
  printf("prepared %s: train %llu documents, %llu tokens, %llu shards; val %llu documents, %llu tokens, %llu shards; %.1f MB in %.1f s (%.2f MB/s)\n",
         out, (unsigned long long)st.docs[0], (unsigned long long)st.tokens[0], (unsigned long long)st.shards[0],
         (unsigned long long)st.docs[1], (unsigned long long)st.tokens[1], (unsigned long long)st.shards[1], (double)st.bytes_in / 1e6,
         st.seconds, st.seconds > 0 ? (double)st.bytes_in / 1e6 / st.seconds : 0.0);
  return 0;
}

static int cmd_data_info(int argc, char **argv) {
  if (argc != 2) return cli_failf("data info: expected one directory (see --help)");
  xd_loader_config c = {.seq_len = 1, .batch = 1, .seed = 0, .shuffle = 0, .rank = 0, .world = 1};
  const char *splits[2] = {"train", "val"};
  for (int s = 0; s < 2; s++) {
    xd_loader *L;
    xd_err e;
    if (xd_loader_open(&L, argv[1], splits[s], &c, &e) != 0) { /* opens and verifies every shard */
      if (s == 1 && strstr(e.msg, "has no shards")) { printf("val: empty\n"); continue; }
      return cli_fail(&e);
    }
    printf("%s: %llu tokens, vocab %llu, %s, tokenizer %s, checksums ok\n", splits[s], (unsigned long long)xd_loader_tokens(L),
           (unsigned long long)xd_loader_vocab_size(L), xd_loader_has_mask(L) ? "with loss mask" : "no mask", xd_loader_tokenizer_hash(L));
    xd_loader_free(L);
  }
  return 0;
}

int cmd_data(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs(USAGE, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (cli_wants_help(argc, argv)) { fputs(USAGE, stdout); return 0; }
  if (!strcmp(argv[1], "prepare")) return cmd_data_prepare(argc - 1, argv + 1);
  if (!strcmp(argv[1], "info")) return cmd_data_info(argc - 1, argv + 1);
  return cli_failf("data: unknown subcommand '%s' (expected prepare or info)", argv[1]);
}
