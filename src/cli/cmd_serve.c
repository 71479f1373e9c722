/* xdistill serve: an OpenAI-compatible HTTP server over a student (or teacher), with continuous
 * batching (serve/engine.h, serve/http.h). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "ops/cpu/threads.h"
#include "serve/engine.h"
#include "serve/http.h"
#include "train/trainer.h"

static const char usage[] =
  "usage: xdistill serve --model DIR [--device cpu|cuda] [--host ADDR] [--port N] [--slots N] [--ctx N]\n"
  "                      [--queue N] [--name NAME] [--api-key KEY] [--chat-format NAME] [--tokenizer PATH]\n"
  "                      [--max-body BYTES] [--metrics FILE] [--threads N]\n\n"
  "Serves the model over HTTP with the OpenAI API: POST /v1/completions and /v1/chat/completions\n"
  "(prompt or messages, max_tokens, temperature, top_p, top_k, seed, stop, stream, ignore_eos),\n"
  "GET /v1/models, /health, /metrics (Prometheus). Requests are decoded together: each takes one\n"
  "of --slots sequences as it arrives and leaves it when done (continuous batching); a student's\n"
  "slots hold constant-memory states, a teacher's a KV cache of --ctx tokens each. Stops on\n"
  "SIGINT / SIGTERM (requests in flight end with 503).\n"
  "  --model DIR        student (or teacher) checkpoint directory, with its tokenizer.json\n"
  "  --device D         cpu (default) or cuda (GPU 0: the slots decoded in one batched step)\n"
  "  --host ADDR        IPv4 address to listen on (default 127.0.0.1; 0.0.0.0: every interface)\n"
  "  --port N           TCP port (default 8000; 0: any free one, printed at start)\n"
  "  --slots N          sequences decoded together (default 4 on the CPU, 32 on the GPU)\n"
  "  --ctx N            tokens a request may reach, prompt + generated (default the model's\n"
  "                     context length, at most 8192)\n"
  "  --queue N          requests waiting for a slot, at most; more get 503 (default 1024)\n"
  "  --name NAME        the model id reported and echoed (default the model directory)\n"
  "  --api-key KEY      require 'Authorization: Bearer KEY' (default: environment XD_API_KEY, else none)\n"
  "  --chat-format NAME chat format when tokenizer_config.json has none (llama3, chatml, qwen2.5,\n"
  "                     qwen3, olmo2)\n"
  "  --tokenizer PATH   tokenizer.json file or directory (default: the model directory)\n"
  "  --max-body BYTES   largest request body (default 16777216)\n"
  "  --metrics FILE     append one JSON line per finished request (tokens, seconds, time to\n"
  "                     first token, finish reason or error)\n"
  "  --threads N        CPU threads\n";

static int stop_requested(void *user) {
  (void)user;
  return xd_train_stop_signal() != 0;
}

int cmd_serve(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
  const char *model = NULL, *host = "127.0.0.1", *name = NULL, *api_key = getenv("XD_API_KEY"), *chat_format = NULL,
             *tokenizer = NULL, *metrics = NULL;
  int cuda = 0, port = 8000, slots = 0, ctx = 0, queue = 1024, threads = 0, max_body = 16 << 20;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (i + 1 >= argc && a[0] == '-') return cli_failf("serve: option '%s' needs a value", a);
    if (!strcmp(a, "--model")) model = argv[++i];
    else if (!strcmp(a, "--device")) { if (cli_parse_device("serve", argv[++i], &cuda)) return 1; }
    else if (!strcmp(a, "--host")) host = argv[++i];
    else if (!strcmp(a, "--name")) name = argv[++i];
    else if (!strcmp(a, "--api-key")) api_key = argv[++i];
    else if (!strcmp(a, "--chat-format")) chat_format = argv[++i];
    else if (!strcmp(a, "--tokenizer")) tokenizer = argv[++i];
    else if (!strcmp(a, "--metrics")) metrics = argv[++i];
    else if (!strcmp(a, "--port")) { if (cli_parse_int("serve", "--port", argv[++i], 0, 65535, &port)) return 1; }
    else if (!strcmp(a, "--slots")) { if (cli_parse_int("serve", "--slots", argv[++i], 1, 65535, &slots)) return 1; }
    else if (!strcmp(a, "--ctx")) { if (cli_parse_int("serve", "--ctx", argv[++i], 2, 1 << 24, &ctx)) return 1; }
    else if (!strcmp(a, "--queue")) { if (cli_parse_int("serve", "--queue", argv[++i], 0, 1 << 20, &queue)) return 1; }
    else if (!strcmp(a, "--max-body")) { if (cli_parse_int("serve", "--max-body", argv[++i], 1024, 1 << 30, &max_body)) return 1; }
    else if (!strcmp(a, "--threads")) { if (cli_parse_int("serve", "--threads", argv[++i], 1, 4096, &threads)) return 1; }
    else return cli_failf("serve: unknown argument '%s' (see --help)", a);
  }
  if (!model) return cli_failf("serve: --model is required (see --help)");
  if (api_key && !api_key[0]) api_key = NULL;
  FILE *jsonl = NULL;
  if (metrics && !(jsonl = fopen(metrics, "a"))) return cli_failf("serve: %s: cannot open for appending", metrics);
  xd_set_threads(threads);
  xd_err e = {0};
  xd_runner r;
  xd_engine *eng = NULL;
  xd_http *h = NULL;
  xd_engine_stats st = {0};
  int rc = -1, loaded = 0;
  if (xd_runner_load_on(&r, model, tokenizer, XD_TOK_REQUIRED, cuda, &e)) goto done;
  loaded = 1;
  if (chat_format && xd_tokenizer_set_chat_format(r.tok, chat_format, &e)) goto done;
  if (!slots) slots = cuda ? 32 : 4;
  if (!ctx) ctx = r.cfg.max_pos > 1 && r.cfg.max_pos < 8192 ? r.cfg.max_pos : 8192;
  const xd_engine_options eo = {slots, ctx, queue, stderr, jsonl};
  if (xd_engine_create(&eng, &r, &eo, &e)) goto done;
  const xd_http_options ho = {host, port, 4 * slots + 64, (size_t)max_body, name, api_key, ctx};
  signal(SIGPIPE, SIG_IGN); /* a client that hangs up is the connection's error, not the server's end */
  xd_train_install_signal_handlers();
  if (xd_http_start(&h, eng, &r, &ho, &e)) goto done;
  /* a student's slot is its recurrent state at any length; a teacher's a KV cache of ctx */
  const double slot_mib = (double)xd_runner_decode_state_bytes(&r, (size_t)ctx) / 1048576.0;
  fprintf(stderr, "serve: %s (%s on %s) at http://%s:%d: %d slots, context %d tokens, decode state %.1f MiB (%.2f a slot)%s\n",
          model, r.is_student ? "student" : "teacher", cuda ? "cuda" : "cpu", host, xd_http_port(h), slots, ctx,
          slot_mib * slots, slot_mib, api_key ? ", API key required" : "");
  fflush(stderr);
  rc = xd_engine_run(eng, stop_requested, NULL, &e);
  xd_http_stop(h); /* after the engine ended every job: no connection waits on one */
  xd_engine_get_stats(eng, &st);
done:
  xd_engine_free(eng);
  if (loaded) xd_runner_free(&r);
  if (jsonl) fclose(jsonl);
  if (rc) return cli_fail(&e);
  const int sig = xd_train_stop_signal();
  fprintf(stderr, "serve: stopped (%s): %llu requests, %llu tokens generated\n",
          sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "signal", (unsigned long long)st.jobs_done,
          (unsigned long long)st.generated_tokens);
  return 0;
}
