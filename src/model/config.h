/* Hugging Face config.json -> xd_model_config, for the teacher families llama, qwen2, qwen3,
 * olmo2, olmo3. Both dialects load (SPEC §1):
 *   transformers 4.x: top-level rope_theta + rope_scaling {rope_type | type, ...} + torch_dtype;
 *   transformers 5:   rope_parameters {rope_type, rope_theta, ...} (olmo3: one such map per layer
 *                     type, keyed "full_attention"/"sliding_attention") + dtype + layer_types.
 * Unknown keys are ignored (the student adds an "xdistill" section). Every number is validated. */
#ifndef XD_MODEL_CONFIG_H
#define XD_MODEL_CONFIG_H
#include "core/core.h"
#include "ops/cpu/rope.h"

#define XD_MAX_LAYERS 512
#define XD_MAX_EOS 8

typedef enum { XD_FAMILY_LLAMA = 0, XD_FAMILY_QWEN2, XD_FAMILY_QWEN3, XD_FAMILY_OLMO2, XD_FAMILY_OLMO3 } xd_family;
typedef enum {
  XD_QKNORM_NONE = 0, /* llama, qwen2 */
  XD_QKNORM_HEAD,     /* qwen3: RMSNorm over each head, weight [d] */
  XD_QKNORM_PROJ      /* olmo2/3: RMSNorm over the whole projection, weights [H*d] and [G*d] */
} xd_qk_norm;

typedef struct {
  char model_type[16];
  xd_family family;
  int hidden;       /* D */
  int intermediate; /* F */
  int n_layers;     /* L */
  int n_heads;      /* H */
  int n_kv_heads;   /* G */
  int head_dim;     /* d: explicit head_dim, else D/H */
  int vocab;        /* V */
  int max_pos;      /* max_position_embeddings */
  double rms_eps;
  int qkv_bias;     /* bias on q/k/v projections (attention_bias, or always for qwen2) */
  int o_bias;       /* bias on o_proj (attention_bias, not qwen2) */
  int mlp_bias;
  int tie_embeddings;
  xd_qk_norm qk_norm;
  int post_norm;    /* olmo2/3: norms on the attention and MLP outputs, no pre-norm */
  int bos_token_id; /* -1 if absent */
  int n_eos;
  int eos_token_ids[XD_MAX_EOS];
  xd_rope_config rope[2];  /* [0] full-attention layers, [1] sliding-attention layers */
  int sliding_window;      /* tokens, 0 if none */
  unsigned char layer_sliding[XD_MAX_LAYERS]; /* 1 = sliding_attention layer */
  char dtype[16];          /* "float32", "bfloat16", ... ("" if absent) */
} xd_model_config;

/* Parse config.json text (len bytes, need not be NUL-terminated); name is used in errors. */
int xd_config_parse(xd_model_config *c, const char *json, size_t len, const char *name, xd_err *e);
/* path: a directory holding config.json, or the file itself. */
int xd_config_load(xd_model_config *c, const char *path, xd_err *e);

const char *xd_family_name(xd_family f);
/* 0 when every id of ids[n] is in [0, vocab), else -1 with "token id X at position P is outside
 * the vocabulary [0, V)" (the check of every model's forward). */
int xd_check_token_ids(const int32_t *ids, size_t n, int vocab, xd_err *e);
/* Parameter count of the teacher described by c (embeddings counted once when tied). */
size_t xd_config_param_count(const xd_model_config *c);
/* Window of layer l (0 = full attention). */
static inline int xd_config_layer_window(const xd_model_config *c, int l) {
  return c->layer_sliding[l] ? c->sliding_window : 0;
}
#endif
