/* xdistill inspect DIR: what a teacher checkpoint is, without loading its weights. */
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "io/safetensors.h"
#include "model/config.h"

static const char usage[] =
  "usage: xdistill inspect DIR [--tensors]\n\n"
  "Describe a Hugging Face checkpoint directory (config.json + safetensors): family, sizes,\n"
  "RoPE, parameter count, stored dtype and the memory the fp32 CPU teacher needs.\n"
  "  --tensors   also list every tensor with its dtype and shape\n";

int cmd_inspect(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
  const char *dir = NULL;
  int list = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tensors")) list = 1;
    else if (argv[i][0] == '-') return cli_failf("inspect: unknown option '%s' (see --help)", argv[i]);
    else if (!dir) dir = argv[i];
    else return cli_failf("inspect: unexpected argument '%s'", argv[i]);
  }
  if (!dir) return cli_failf("inspect: missing DIR (see --help)");
  xd_model_config c;
  xd_err e = {0};
  if (xd_config_load(&c, dir, &e)) return cli_fail(&e);
  xd_safetensors st;
  if (xd_st_open(&st, dir, &e)) return cli_fail(&e);
  size_t stored_params = 0, stored_bytes = 0;
  int dt_count[XD_DT_COUNT] = {0};
  for (int i = 0; i < st.ntensors; i++) {
    stored_params += st.tensors[i].nelem;
    stored_bytes += st.tensors[i].nbytes;
    dt_count[st.tensors[i].dtype]++;
  }
  const size_t params = xd_config_param_count(&c);
  printf("checkpoint     %s\n", dir);
  printf("family         %s%s\n", xd_family_name(c.family),
         c.post_norm ? " (post-norm, QK-norm on whole projections)" : c.qk_norm == XD_QKNORM_HEAD ? " (per-head QK-norm)" : "");
  printf("layers         %d%s\n", c.n_layers, c.sliding_window ? " (some with sliding-window attention)" : "");
  printf("hidden         %d   intermediate %d   vocab %d\n", c.hidden, c.intermediate, c.vocab);
  printf("heads          %d query, %d KV (GQA x%d), head_dim %d\n", c.n_heads, c.n_kv_heads, c.n_heads / c.n_kv_heads, c.head_dim);
  if (c.sliding_window) {
    int ns = 0;
    for (int l = 0; l < c.n_layers; l++) ns += c.layer_sliding[l];
    printf("sliding window %d tokens on %d of %d layers\n", c.sliding_window, ns, c.n_layers);
  }
  printf("rope           %s, theta %g", rope_kind_name(c.rope[0].kind), c.rope[0].theta);
  if (c.rope[0].kind != XD_ROPE_DEFAULT) printf(", factor %g", c.rope[0].factor);
  printf(", max positions %d\n", c.max_pos);
  printf("biases         qkv %s, o %s, mlp %s; tied embeddings %s\n", c.qkv_bias ? "yes" : "no", c.o_bias ? "yes" : "no",
         c.mlp_bias ? "yes" : "no", c.tie_embeddings ? "yes" : "no");
  printf("tokens         bos %d, eos", c.bos_token_id);
  for (int i = 0; i < c.n_eos; i++) printf(" %d", c.eos_token_ids[i]);
  printf("%s\n", c.n_eos ? "" : " none");
  printf("parameters     %zu (%.2f M)\n", params, params / 1e6);
  printf("stored         %d tensors in %d file(s), %zu values, %.1f MiB, dtype", st.ntensors, st.nfiles, stored_params,
         stored_bytes / 1048576.0);
  for (int t = 0; t < XD_DT_COUNT; t++)
    if (dt_count[t]) printf(" %s x%d", xd_dtype_name((xd_dtype)t), dt_count[t]);
  printf("%s%s\n", c.dtype[0] ? "; config says " : "", c.dtype);
  const double kv_tok = 2.0 * c.n_layers * c.n_kv_heads * c.head_dim * 4;
  printf("memory (fp32)  weights %.1f MiB; KV cache %.1f KiB per token per sequence\n", params * 4.0 / 1048576.0,
         kv_tok / 1024.0);
  if (list)
    for (int i = 0; i < st.ntensors; i++) {
      const xd_st_tensor *t = &st.tensors[i];
      printf("  %-56s %-5s [", t->name, xd_dtype_name(t->dtype));
      for (int k = 0; k < t->ndim; k++) printf("%s%lld", k ? ", " : "", (long long)t->shape[k]);
      printf("]\n");
    }
  int rc = 0;
  if (stored_params != params) {
    /* a tied checkpoint may still store lm_head; anything else is a mismatch worth saying */
    const size_t tied_extra = (size_t)c.vocab * c.hidden;
    if (!(c.tie_embeddings && stored_params == params + tied_extra))
      fprintf(stderr, "xdistill: warning: %s: the files hold %zu values, the config implies %zu parameters\n", dir,
              stored_params, params);
  }
  xd_st_close(&st);
  return rc;
}
