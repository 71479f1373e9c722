/* xdistill generate: decoding with the CPU teacher (KV cache) or student (constant-memory
 * recurrent state); token ids in and out, or text in and streamed text out. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "eval/runner.h"
#include "io/npy.h"
#include "model/student/student_cuda.h"
#include "model/teacher/teacher_cuda.h"
#include "ops/cpu/threads.h"

static const char usage[] =
  "usage: xdistill generate --model DIR --ids IDS.npy --max-new N [--ignore-eos] [--with-prompt] [--threads N]\n"
  "                         [--device cpu|cuda]\n"
  "       xdistill generate --model DIR --prompt TEXT [--chat] [--system TEXT] [--temperature T]\n"
  "                         [--top-k K] [--top-p P] [--seed S] [--max-new N] [--stop STR]... [--threads N]\n"
  "                         [--device cpu|cuda]\n\n"
  "Decoding with the fp32 CPU model (or on GPU 0 with --device cuda): a teacher (prefill, then one\n"
  "token at a time with a KV cache) or a hybrid xLSTM student (prefill, then one token at a time in\n"
  "constant memory).\n"
  "  --model DIR        teacher or student checkpoint directory\n"
  "  --threads N        CPU threads\n"
  "  --max-new N        tokens to generate at most (text mode default 256)\n"
  "  --ignore-eos       keep going past the EOS id(s)\n"
  "Token ids (greedy):\n"
  "  --ids FILE         int32 or int64 .npy prompts, shape [B,T] (rows of equal length) or [T];\n"
  "                     prints the generated ids, space-separated, one line per row (a row stops\n"
  "                     after its first EOS, which is printed)\n"
  "  --with-prompt      print the prompt ids before the generated ones\n"
  "  --device D         cpu (default) or cuda: the model on GPU 0 (bf16 matrices; a teacher with\n"
  "                     its KV cache, a student with its constant-memory state; --ids: greedy, the\n"
  "                     rows decoded together, memory printed to stderr; --prompt: also sampling)\n"
  "Text (tokenizer.json of the model directory, or --tokenizer):\n"
  "  --prompt TEXT      prompt; the generated text is streamed to stdout (complete UTF-8\n"
  "                     characters only), ending with a newline\n"
  "  --chat             render the prompt as a user message with the chat template\n"
  "  --system TEXT      system message (with --chat)\n"
  "  --chat-format NAME chat format when tokenizer_config.json has none (llama3, chatml, qwen2.5,\n"
  "                     qwen3, olmo2)\n"
  "  --temperature T    0 = greedy (default); else sample from softmax(logits / T)\n"
  "  --top-k K          sample among the K most likely tokens (default 0 = all)\n"
  "  --top-p P          sample from the smallest set of mass >= P (default 1 = all)\n"
  "  --seed S           sampling seed (default 1234)\n"
  "  --stop STR         stop string (repeatable); the output ends before it\n"
  "  --tokenizer PATH   tokenizer.json file or directory (default: the model directory)\n"
  "  --stats            print tokens, seconds, tokens/s and the decode state size to stderr\n";

#define MAX_STOPS 32

static void emit(const char *s, size_t n, void *user) {
  (void)user;
  fwrite(s, 1, n, stdout);
  fflush(stdout);
}

/* --ids mode: greedy, EOS printed and ending the row (as the teacher's batch generator). */
static int generate_ids(xd_runner *r, const char *ids_path, int max_new, int ignore_eos, int with_prompt, int cuda,
                        const char *model, xd_err *e) {
  xd_npy a;
  if (xd_npy_read(ids_path, &a, e)) return -1;
  int rc = 0;
  int32_t *ids = NULL;
  if (a.ndim != 1 && a.ndim != 2) rc = xd_errf(e, "%s: token ids must have shape [B,T] or [T], got %d dimensions", ids_path, a.ndim);
  else if (a.nelem == 0) rc = xd_errf(e, "%s: token ids are empty", ids_path);
  else if (a.nelem > (1u << 24)) rc = xd_errf(e, "%s: too many token ids (%zu)", ids_path, a.nelem);
  if (!rc) rc = xd_npy_to_ids(&a, ids_path, r->cfg.vocab, &ids, e);
  if (!rc) {
    const int B = a.ndim == 2 ? (int)a.shape[0] : 1, T = a.ndim == 2 ? (int)a.shape[1] : (int)a.shape[0];
    const int total = T + max_new;
    int32_t *out = xd_malloc((size_t)B * total * sizeof(int32_t));
    int *n_out = xd_malloc((size_t)B * sizeof(int));
    if (cuda) {
      rc = xd_is_student_dir(model) ? xd_student_cuda_generate_dir(model, ids, B, T, max_new, !ignore_eos, out, n_out, e)
                                    : xd_teacher_cuda_generate_dir(model, ids, B, T, max_new, !ignore_eos, out, n_out, e);
    } else if (!r->is_student) {
      rc = xd_teacher_generate(&r->teacher, ids, B, T, max_new, !ignore_eos, out, n_out, e);
    } else {
      /* one row at a time through the recurrent state: memory does not grow with the length */
      const int V = r->cfg.vocab;
      float *logits = xd_malloc((size_t)V * sizeof *logits);
      for (int b = 0; b < B && !rc; b++) {
        int32_t *row = out + (size_t)b * total;
        memcpy(row, ids + (size_t)b * T, (size_t)T * sizeof *row);
        int n = T;
        xd_decoder d;
        xd_decoder_init(&d, r, total, T);
        rc = xd_decoder_feed(&d, row, T, logits, e);
        while (!rc && n < total) {
          const int32_t tok = xd_argmax(logits, V);
          row[n++] = tok;
          if (!ignore_eos && xd_runner_is_eos(r, tok)) break;
          if (n < total) rc = xd_decoder_feed(&d, &tok, 1, logits, e);
        }
        n_out[b] = n;
        xd_decoder_free(&d);
      }
      free(logits);
    }
    if (rc) xd_err_prefix(e, "%s", ids_path);
    for (int b = 0; !rc && b < B; b++) {
      for (int s = with_prompt ? 0 : T, first = 1; s < n_out[b]; s++, first = 0)
        printf("%s%d", first ? "" : " ", (int)out[(size_t)b * total + s]);
      printf("\n");
    }
    free(out);
    free(n_out);
  }
  free(ids);
  xd_npy_free(&a);
  return rc;
}

int cmd_generate(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
  const char *model = NULL, *ids_path = NULL, *prompt = NULL, *system = NULL, *tokenizer = NULL, *chat_format = NULL;
  const char *stops[MAX_STOPS];
  size_t n_stops = 0;
  int max_new = -1, threads = 0, ignore_eos = 0, with_prompt = 0, chat = 0, stats = 0, seed = 1234, cuda = 0;
  xd_gen_options o;
  xd_gen_options_default(&o);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--ignore-eos")) { ignore_eos = 1; continue; }
    if (!strcmp(a, "--with-prompt")) { with_prompt = 1; continue; }
    if (!strcmp(a, "--chat")) { chat = 1; continue; }
    if (!strcmp(a, "--stats")) { stats = 1; continue; }
    if (i + 1 >= argc && a[0] == '-') return cli_failf("generate: option '%s' needs a value", a);
    if (!strcmp(a, "--model")) model = argv[++i];
    else if (!strcmp(a, "--ids")) ids_path = argv[++i];
    else if (!strcmp(a, "--prompt")) prompt = argv[++i];
    else if (!strcmp(a, "--system")) system = argv[++i];
    else if (!strcmp(a, "--tokenizer")) tokenizer = argv[++i];
    else if (!strcmp(a, "--device")) { if (cli_parse_device("generate", argv[++i], &cuda)) return 1; }
    else if (!strcmp(a, "--chat-format")) chat_format = argv[++i];
    else if (!strcmp(a, "--stop")) {
      if (n_stops == MAX_STOPS) return cli_failf("generate: at most %d --stop strings", MAX_STOPS);
      stops[n_stops] = argv[++i];
      if (!stops[n_stops][0]) return cli_failf("generate: --stop needs a non-empty string");
      n_stops++;
    }
    else if (!strcmp(a, "--max-new")) { if (cli_parse_int("generate", "--max-new", argv[++i], 1, 1000000, &max_new)) return 1; }
    else if (!strcmp(a, "--threads")) { if (cli_parse_int("generate", "--threads", argv[++i], 1, 4096, &threads)) return 1; }
    else if (!strcmp(a, "--top-k")) { if (cli_parse_int("generate", "--top-k", argv[++i], 0, 1 << 30, &o.sp.top_k)) return 1; }
    else if (!strcmp(a, "--seed")) { if (cli_parse_int("generate", "--seed", argv[++i], 0, 2147483647, &seed)) return 1; }
    else if (!strcmp(a, "--temperature")) { if (cli_parse_double("generate", "--temperature", argv[++i], &o.sp.temperature)) return 1; }
    else if (!strcmp(a, "--top-p")) { if (cli_parse_double("generate", "--top-p", argv[++i], &o.sp.top_p)) return 1; }
    else return cli_failf("generate: unknown argument '%s' (see --help)", a);
  }
  if (!model || (!ids_path == !prompt)) return cli_failf("generate: --model and one of --ids or --prompt are required (see --help)");
  if (ids_path && max_new < 0) return cli_failf("generate: --max-new is required with --ids (see --help)");
  if (ids_path && (chat || system || n_stops || tokenizer || chat_format))
    return cli_failf("generate: --chat, --system, --stop, --tokenizer and --chat-format need --prompt");
  if (system && !chat) return cli_failf("generate: --system needs --chat");
  xd_err e = {0};
  if (xd_sample_params_check(&o.sp, &e)) return cli_fail(&e);
  xd_set_threads(threads);
  xd_runner r;
  memset(&r, 0, sizeof r);
  /* --ids on the GPU loads the model itself (one host copy at a time): here only its config;
   * text on the GPU runs the runner's GPU model (decoder on the device, sampling on the host) */
  const int cfg_only = cuda && ids_path;
  if (cfg_only ? xd_config_load(&r.cfg, model, &e)
               : xd_runner_load_on(&r, model, tokenizer, ids_path ? XD_TOK_SKIP : XD_TOK_REQUIRED, cuda, &e))
    return cli_fail(&e);
  int rc = 0;
  if (ids_path) {
    rc = generate_ids(&r, ids_path, max_new, ignore_eos, with_prompt, cuda, model, &e);
  } else {
    int32_t *ids = NULL;
    size_t n = 0;
    if (chat) {
      xd_chat_message msgs[2];
      int nm = 0;
      if (system) msgs[nm++] = (xd_chat_message){"system", system};
      msgs[nm++] = (xd_chat_message){"user", prompt};
      uint8_t *mask = NULL;
      if (chat_format) rc = xd_tokenizer_set_chat_format(r.tok, chat_format, &e);
      if (!rc) rc = xd_chat_encode(r.tok, msgs, nm, 1, &ids, &mask, &n, &e);
      free(mask);
    } else {
      rc = xd_runner_encode_prompt(&r, prompt, &ids, &n, &e); /* an empty one: BOS (or EOS) */
    }
    if (!rc) {
      o.max_new = max_new > 0 ? max_new : 256;
      o.stop_at_eos = !ignore_eos;
      o.stops = stops;
      o.n_stops = n_stops;
      o.seed = (uint64_t)seed;
      o.on_text = emit;
      size_t ng = 0;
      const char *why = NULL;
      const double t0 = xd_now();
      rc = xd_runner_generate(&r, ids, n, &o, NULL, &ng, NULL, &why, &e);
      if (!rc) {
        fputc('\n', stdout);
        fflush(stdout);
        const double dt = xd_now() - t0;
        if (stats) {
          /* decode memory: the teacher's KV cache grows with the sequence, the student's state not */
          const size_t state = xd_runner_decode_state_bytes(&r, n + ng);
          fprintf(stderr, "[%s%s] prompt %zu tokens, generated %zu tokens in %.3f s (%.1f tokens/s), decode state %.2f MiB, stop: %s\n",
                  r.is_student ? "student" : "teacher", cuda ? ", cuda" : "", n, ng, dt, dt > 0 ? (double)ng / dt : 0.0,
                  state / 1048576.0, why);
        }
      }
    }
    free(ids);
  }
  if (!cfg_only) xd_runner_free(&r);
  return rc ? cli_fail(&e) : 0;
}
