#include "model/config.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const family_names[] = {"llama", "qwen2", "qwen3", "olmo2", "olmo3"};
#define SUPPORTED "llama, qwen2, qwen3, olmo2, olmo3"

/* A user-provided string fit for a one-line message: at most 40 chars, control chars as '?'. */
static const char *clean(char buf[48], const char *s) {
  size_t i = 0;
  for (; s[i] && i < 40; i++) buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
  buf[i] = 0;
  return buf;
}

const char *xd_family_name(xd_family f) { return (unsigned)f < 5 ? family_names[f] : "?"; }

/* Integer field: absent -> def (or error when def < 0 means required). */
static int get_int(const cJSON *o, const char *key, int def, int *out, const char *name, xd_err *e) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!it || cJSON_IsNull(it)) {
    if (def == -2) return xd_errf(e, "%s: missing '%s'", name, key);
    *out = def;
    return 0;
  }
  if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || fabs(it->valuedouble) > 2147483647.0)
    return xd_errf(e, "%s: '%s' must be an integer", name, key);
  *out = (int)it->valuedouble;
  return 0;
}

static int get_num(const cJSON *o, const char *key, double def, double *out, const char *name, xd_err *e) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!it || cJSON_IsNull(it)) { *out = def; return 0; }
  if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble)) return xd_errf(e, "%s: '%s' must be a number", name, key);
  *out = it->valuedouble;
  return 0;
}

static int get_bool(const cJSON *o, const char *key, int def, int *out, const char *name, xd_err *e) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!it || cJSON_IsNull(it)) { *out = def; return 0; }
  if (!cJSON_IsBool(it)) return xd_errf(e, "%s: '%s' must be true or false", name, key);
  *out = cJSON_IsTrue(it);
  return 0;
}

/* One rope map (v5 rope_parameters, or v4 rope_scaling with theta given separately). */
static int parse_rope(const cJSON *rp, double theta_default, int max_pos, xd_rope_config *r, const char *name,
                      xd_err *e) {
  memset(r, 0, sizeof *r);
  r->kind = XD_ROPE_DEFAULT;
  r->theta = theta_default;
  r->factor = 1.0;
  r->truncate = 1;
  if (!rp || cJSON_IsNull(rp)) return 0;
  if (!cJSON_IsObject(rp)) return xd_errf(e, "%s: rope parameters must be an object", name);
  if (get_num(rp, "rope_theta", theta_default, &r->theta, name, e)) return -1;
  const cJSON *k = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
  if (!k) k = cJSON_GetObjectItemCaseSensitive(rp, "type");
  const char *kind = k && cJSON_IsString(k) ? k->valuestring : "default";
  if (k && !cJSON_IsString(k)) return xd_errf(e, "%s: rope_type must be a string", name);
  if (!strcmp(kind, "default")) r->kind = XD_ROPE_DEFAULT;
  else if (!strcmp(kind, "linear")) r->kind = XD_ROPE_LINEAR;
  else if (!strcmp(kind, "dynamic")) r->kind = XD_ROPE_DYNAMIC;
  else if (!strcmp(kind, "llama3")) r->kind = XD_ROPE_LLAMA3;
  else if (!strcmp(kind, "yarn")) r->kind = XD_ROPE_YARN;
  else {
    char b[48];
    return xd_errf(e, "%s: unsupported rope_type '%s' (supported: default, linear, dynamic, llama3, yarn)", name, clean(b, kind));
  }
  double pr = 1.0;
  if (get_num(rp, "partial_rotary_factor", 1.0, &pr, name, e)) return -1;
  if (pr != 1.0) return xd_errf(e, "%s: partial_rotary_factor %g is not supported", name, pr);
  if (!(r->theta > 1.0)) return xd_errf(e, "%s: rope_theta must be > 1, got %g", name, r->theta);
  if (r->kind == XD_ROPE_DEFAULT) return 0;
  const cJSON *f = cJSON_GetObjectItemCaseSensitive(rp, "factor");
  if (!f && r->kind == XD_ROPE_YARN) {
    /* transformers derives it from max_position / original_max_position */
  } else if (get_num(rp, "factor", -1, &r->factor, name, e)) {
    return -1;
  } else if (!(r->factor >= 1.0) && r->kind != XD_ROPE_LINEAR) {
    return xd_errf(e, "%s: rope factor must be >= 1, got %g", name, r->factor);
  } else if (!(r->factor > 0)) {
    return xd_errf(e, "%s: rope factor must be > 0, got %g", name, r->factor);
  }
  if (r->kind == XD_ROPE_LLAMA3 || r->kind == XD_ROPE_YARN) {
    if (get_int(rp, "original_max_position_embeddings", r->kind == XD_ROPE_YARN ? max_pos : -2, &r->original_max_pos,
                name, e))
      return -1;
    if (r->original_max_pos <= 0) return xd_errf(e, "%s: original_max_position_embeddings must be > 0", name);
  }
  if (r->kind == XD_ROPE_LLAMA3) {
    if (get_num(rp, "low_freq_factor", -1, &r->low_freq_factor, name, e) ||
        get_num(rp, "high_freq_factor", -1, &r->high_freq_factor, name, e))
      return -1;
    if (!(r->low_freq_factor > 0) || !(r->high_freq_factor > r->low_freq_factor))
      return xd_errf(e, "%s: llama3 rope needs 0 < low_freq_factor < high_freq_factor", name);
  }
  if (r->kind == XD_ROPE_YARN) {
    if (!f) r->factor = (double)max_pos / r->original_max_pos;
    if (get_num(rp, "attention_factor", 0, &r->attention_factor, name, e) ||
        get_num(rp, "beta_fast", 32, &r->beta_fast, name, e) || get_num(rp, "beta_slow", 1, &r->beta_slow, name, e) ||
        get_num(rp, "mscale", 0, &r->mscale, name, e) || get_num(rp, "mscale_all_dim", 0, &r->mscale_all_dim, name, e) ||
        get_bool(rp, "truncate", 1, &r->truncate, name, e))
      return -1;
  }
  return 0;
}

static int parse_obj(xd_model_config *c, const cJSON *o, const char *name, xd_err *e) {
  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(o, "model_type");
  if (!mt || !cJSON_IsString(mt)) return xd_errf(e, "%s: missing 'model_type' (supported: " SUPPORTED ")", name);
  int fam = -1;
  for (int i = 0; i < 5; i++)
    if (!strcmp(mt->valuestring, family_names[i])) fam = i;
  char b[48];
  if (fam < 0) return xd_errf(e, "%s: unsupported model_type '%s' (supported: " SUPPORTED ")", name, clean(b, mt->valuestring));
  c->family = (xd_family)fam;
  snprintf(c->model_type, sizeof c->model_type, "%s", family_names[fam]);

  if (get_int(o, "hidden_size", -2, &c->hidden, name, e) || get_int(o, "intermediate_size", -2, &c->intermediate, name, e) ||
      get_int(o, "num_hidden_layers", -2, &c->n_layers, name, e) ||
      get_int(o, "num_attention_heads", -2, &c->n_heads, name, e) || get_int(o, "vocab_size", -2, &c->vocab, name, e) ||
      get_int(o, "max_position_embeddings", 2048, &c->max_pos, name, e))
    return -1;
  if (c->hidden <= 0) return xd_errf(e, "%s: hidden_size must be > 0, got %d", name, c->hidden);
  if (c->intermediate <= 0) return xd_errf(e, "%s: intermediate_size must be > 0, got %d", name, c->intermediate);
  if (c->n_layers <= 0 || c->n_layers > XD_MAX_LAYERS)
    return xd_errf(e, "%s: num_hidden_layers must be in 1..%d, got %d", name, XD_MAX_LAYERS, c->n_layers);
  if (c->n_heads <= 0) return xd_errf(e, "%s: num_attention_heads must be > 0, got %d", name, c->n_heads);
  if (c->vocab <= 0) return xd_errf(e, "%s: vocab_size must be > 0, got %d", name, c->vocab);
  if (c->max_pos <= 0) return xd_errf(e, "%s: max_position_embeddings must be > 0, got %d", name, c->max_pos);
  if (get_int(o, "num_key_value_heads", c->n_heads, &c->n_kv_heads, name, e)) return -1;
  if (c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads)
    return xd_errf(e, "%s: num_attention_heads %d must be a positive multiple of num_key_value_heads %d", name,
                   c->n_heads, c->n_kv_heads);
  if (c->hidden % c->n_heads && !cJSON_GetObjectItemCaseSensitive(o, "head_dim"))
    return xd_errf(e, "%s: hidden_size %d is not divisible by num_attention_heads %d", name, c->hidden, c->n_heads);
  if (get_int(o, "head_dim", c->hidden / c->n_heads, &c->head_dim, name, e)) return -1;
  if (c->head_dim <= 0 || c->head_dim % 2)
    return xd_errf(e, "%s: head_dim must be positive and even, got %d", name, c->head_dim);
  /* products used as buffer sizes must fit an int */
  if ((double)c->n_heads * c->head_dim > 1e8 || (double)c->hidden * c->intermediate > 2e9 ||
      (double)c->hidden * c->vocab > 4e10)
    return xd_errf(e, "%s: model dimensions too large", name);

  if (get_num(o, "rms_norm_eps", 1e-6, &c->rms_eps, name, e)) return -1;
  if (!(c->rms_eps > 0 && c->rms_eps < 1)) return xd_errf(e, "%s: rms_norm_eps must be in (0, 1), got %g", name, c->rms_eps);
  int attn_bias = 0;
  if (get_bool(o, "attention_bias", 0, &attn_bias, name, e) || get_bool(o, "mlp_bias", 0, &c->mlp_bias, name, e) ||
      get_bool(o, "tie_word_embeddings", c->family == XD_FAMILY_QWEN3 ? 1 : 0, &c->tie_embeddings, name, e))
    return -1;
  /* per family: which biases, norms exist (transformers' modeling_<family>.py) */
  c->qkv_bias = c->family == XD_FAMILY_QWEN2 ? 1 : attn_bias;
  c->o_bias = c->family == XD_FAMILY_QWEN2 ? 0 : attn_bias;
  if (c->family != XD_FAMILY_LLAMA) c->mlp_bias = 0;
  c->qk_norm = c->family == XD_FAMILY_QWEN3 ? XD_QKNORM_HEAD
             : (c->family == XD_FAMILY_OLMO2 || c->family == XD_FAMILY_OLMO3) ? XD_QKNORM_PROJ : XD_QKNORM_NONE;
  c->post_norm = c->family == XD_FAMILY_OLMO2 || c->family == XD_FAMILY_OLMO3;

  if (get_int(o, "bos_token_id", -1, &c->bos_token_id, name, e)) return -1;
  c->n_eos = 0;
  const cJSON *eos = cJSON_GetObjectItemCaseSensitive(o, "eos_token_id");
  if (eos && cJSON_IsArray(eos)) {
    const cJSON *it;
    cJSON_ArrayForEach(it, eos) {
      if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || !(it->valuedouble >= 0) ||
          it->valuedouble > 2147483647.0)
        return xd_errf(e, "%s: eos_token_id entries must be non-negative integers below 2^31", name);
      if (c->n_eos < XD_MAX_EOS) c->eos_token_ids[c->n_eos++] = (int)it->valuedouble;
    }
  } else if (eos && !cJSON_IsNull(eos)) {
    int v;
    if (get_int(o, "eos_token_id", -1, &v, name, e)) return -1;
    if (v >= 0) c->eos_token_ids[c->n_eos++] = v;
  }

  /* dtype: v5 "dtype", v4 "torch_dtype" */
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(o, "dtype");
  if (!dt || !cJSON_IsString(dt)) dt = cJSON_GetObjectItemCaseSensitive(o, "torch_dtype");
  snprintf(c->dtype, sizeof c->dtype, "%s", dt && cJSON_IsString(dt) ? dt->valuestring : "");

  /* layer types and sliding window */
  if (get_int(o, "sliding_window", 0, &c->sliding_window, name, e)) return -1;
  memset(c->layer_sliding, 0, sizeof c->layer_sliding);
  const cJSON *lt = cJSON_GetObjectItemCaseSensitive(o, "layer_types");
  if (lt && !cJSON_IsNull(lt)) {
    if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != c->n_layers)
      return xd_errf(e, "%s: layer_types must be a list of num_hidden_layers (%d) strings", name, c->n_layers);
    int l = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, lt) {
      if (!cJSON_IsString(it)) return xd_errf(e, "%s: layer_types[%d] must be a string", name, l);
      if (!strcmp(it->valuestring, "sliding_attention")) c->layer_sliding[l] = 1;
      else if (strcmp(it->valuestring, "full_attention"))
        return xd_errf(e, "%s: layer_types[%d] '%s' is not full_attention or sliding_attention", name, l, clean(b, it->valuestring));
      l++;
    }
  }
  int any_sliding = 0;
  for (int l = 0; l < c->n_layers; l++) any_sliding |= c->layer_sliding[l];
  if (!any_sliding) c->sliding_window = 0;
  else if (c->sliding_window <= 0) return xd_errf(e, "%s: sliding_attention layers need sliding_window > 0", name);

  /* rope: v5 rope_parameters (maybe per layer type), else v4 rope_theta + rope_scaling */
  const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rope_parameters");
  double theta = 10000.0;
  if (get_num(o, "rope_theta", c->family == XD_FAMILY_OLMO3 ? 500000.0 : 10000.0, &theta, name, e)) return -1;
  if (rp && cJSON_IsObject(rp)) {
    const cJSON *full = cJSON_GetObjectItemCaseSensitive(rp, "full_attention");
    const cJSON *slid = cJSON_GetObjectItemCaseSensitive(rp, "sliding_attention");
    if (full || slid) {
      if (parse_rope(full ? full : slid, theta, c->max_pos, &c->rope[0], name, e) ||
          parse_rope(slid ? slid : full, theta, c->max_pos, &c->rope[1], name, e))
        return -1;
    } else {
      if (parse_rope(rp, theta, c->max_pos, &c->rope[0], name, e)) return -1;
      c->rope[1] = c->rope[0];
    }
  } else {
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(o, "rope_scaling");
    if (parse_rope(rs, theta, c->max_pos, &c->rope[0], name, e)) return -1;
    c->rope[1] = c->rope[0];
  }
  const char *act = NULL;
  const cJSON *ha = cJSON_GetObjectItemCaseSensitive(o, "hidden_act");
  if (ha && cJSON_IsString(ha)) act = ha->valuestring;
  if (act && strcmp(act, "silu") && strcmp(act, "swish"))
    return xd_errf(e, "%s: hidden_act '%s' is not supported (only silu)", name, clean(b, act));
  return 0;
}

int xd_config_parse(xd_model_config *c, const char *json, size_t len, const char *name, xd_err *e) {
  memset(c, 0, sizeof *c);
  const char *end = NULL;
  cJSON *o = cJSON_ParseWithLengthOpts(json, len, &end, 0);
  if (!o) {
    size_t off = end && end >= json ? (size_t)(end - json) : 0;
    return xd_errf(e, "%s: not valid JSON (near byte %zu)", name, off);
  }
  int rc = 0;
  if (!cJSON_IsObject(o)) rc = xd_errf(e, "%s: top level must be a JSON object", name);
  else rc = parse_obj(c, o, name, e);
  cJSON_Delete(o);
  return rc;
}

int xd_config_load(xd_model_config *c, const char *path, xd_err *e) {
  char *file = xd_is_dir(path) ? xd_path_join(path, "config.json") : xd_strdup(path);
  char *buf = NULL;
  size_t n = 0;
  int rc = xd_read_file(file, 16u << 20, &buf, &n, e);
  if (rc == 0) rc = xd_config_parse(c, buf, n, file, e);
  free(buf);
  free(file);
  return rc;
}

size_t xd_config_param_count(const xd_model_config *c) {
  const size_t D = (size_t)c->hidden, F = (size_t)c->intermediate, Hd = (size_t)c->n_heads * c->head_dim,
               Gd = (size_t)c->n_kv_heads * c->head_dim, V = (size_t)c->vocab;
  size_t per = D * Hd * 2 + D * Gd * 2 + 3 * D * F;
  if (c->qkv_bias) per += Hd + 2 * Gd;
  if (c->o_bias) per += D;
  if (c->mlp_bias) per += 2 * F + D;
  per += 2 * D; /* two layer norms */
  if (c->qk_norm == XD_QKNORM_HEAD) per += 2 * (size_t)c->head_dim;
  if (c->qk_norm == XD_QKNORM_PROJ) per += Hd + Gd;
  return per * c->n_layers + V * D * (c->tie_embeddings ? 1 : 2) + D;
}

int xd_check_token_ids(const int32_t *ids, size_t n, int vocab, xd_err *e) {
  for (size_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= vocab)
      return xd_errf(e, "token id %d at position %zu is outside the vocabulary [0, %d)", (int)ids[i], i, vocab);
  return 0;
}
