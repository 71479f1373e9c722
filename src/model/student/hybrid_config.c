#include "model/student/hybrid_config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

const char *const xd_hybrid_tensor_suffix[XD_NEW_COUNT] = {
  "q_feature", "k_feature", "igate.weight", "igate.bias", "fgate.weight", "fgate.bias", "ogate.weight", "ogate.bias",
};

const char *xd_feature_map_name(xd_feature_map f) { return f == XD_FMAP_HEDGEHOG ? "hedgehog" : "softmax"; }
const char *xd_normalizer_name(xd_mlstm_normalizer n) { return n == XD_NORM_XLSTM ? "xlstm" : "paper"; }

void xd_hybrid_defaults(xd_hybrid_config *h, int head_dim) {
  h->window = 512;
  h->sinks = 4;
  h->feature_map = XD_FMAP_SOFTMAX;
  h->d_phi = head_dim;
  h->normalizer = XD_NORM_PAPER;
  h->eps = 1e-6f;
  h->gate_softcap = 15.0f;
  h->chunk = 64;
}

int xd_hybrid_validate(const xd_hybrid_config *h, int head_dim, const char *name, xd_err *e) {
  if (h->window < 1 || h->window > (1 << 24)) return xd_errf(e, "%s: window %d must be between 1 and 16777216", name, h->window);
  if (h->sinks < 0 || h->sinks > (1 << 20)) return xd_errf(e, "%s: sinks %d must be between 0 and 1048576", name, h->sinks);
  if (h->chunk < 1 || h->chunk > 4096) return xd_errf(e, "%s: chunk %d must be between 1 and 4096", name, h->chunk);
  if (h->d_phi < 1 || h->d_phi > 16 * head_dim || h->d_phi > 4096)
    return xd_errf(e, "%s: d_phi %d must be between 1 and min(16 x head_dim = %d, 4096)", name, h->d_phi, 16 * head_dim);
  if (h->feature_map == XD_FMAP_HEDGEHOG && h->d_phi % 2)
    return xd_errf(e, "%s: the hedgehog feature map needs an even d_phi (got %d)", name, h->d_phi);
  if (!(h->eps > 0) || !(h->eps < 1)) return xd_errf(e, "%s: eps %g must be in (0, 1)", name, (double)h->eps);
  if (!(h->gate_softcap >= 0) || isinf(h->gate_softcap)) return xd_errf(e, "%s: gate_softcap %g must be >= 0 (0 = off)", name, (double)h->gate_softcap);
  return 0;
}

static int get_int(const cJSON *o, const char *key, int *out, const char *name, xd_err *e) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!j) return 0;
  if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || fabs(j->valuedouble) > 2e9)
    return xd_errf(e, "%s: xdistill.%s must be an integer", name, key);
  *out = (int)j->valuedouble;
  return 0;
}
static int get_float(const cJSON *o, const char *key, float *out, const char *name, xd_err *e) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!j) return 0;
  /* range first: converting a double beyond FLT_MAX to float is undefined */
  if (!cJSON_IsNumber(j) || !(fabs(j->valuedouble) <= 3.0e38))
    return xd_errf(e, "%s: xdistill.%s must be a number", name, key);
  *out = (float)j->valuedouble;
  return 0;
}

int xd_hybrid_parse(xd_hybrid_config *h, int *present, const char *json, size_t len, int head_dim, const char *name,
                    xd_err *e) {
  xd_hybrid_defaults(h, head_dim);
  *present = 0;
  cJSON *root = cJSON_ParseWithLength(json, len);
  if (!root) return xd_errf(e, "%s: not valid JSON", name);
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, "xdistill");
  int rc = 0;
  if (x) {
    *present = 1;
    if (!cJSON_IsObject(x)) rc = xd_errf(e, "%s: \"xdistill\" must be an object", name);
    int version = 0;
    if (rc == 0) rc = get_int(x, "format_version", &version, name, e);
    if (rc == 0 && version != XD_HYBRID_FORMAT_VERSION)
      rc = xd_errf(e, "%s: xdistill.format_version %d is not supported (this build reads %d)", name, version, XD_HYBRID_FORMAT_VERSION);
    if (rc == 0) rc = get_int(x, "window", &h->window, name, e);
    if (rc == 0) rc = get_int(x, "sinks", &h->sinks, name, e);
    if (rc == 0) rc = get_int(x, "d_phi", &h->d_phi, name, e);
    if (rc == 0) rc = get_int(x, "chunk", &h->chunk, name, e);
    if (rc == 0) rc = get_float(x, "eps", &h->eps, name, e);
    if (rc == 0) rc = get_float(x, "gate_softcap", &h->gate_softcap, name, e);
    const cJSON *fm = cJSON_GetObjectItemCaseSensitive(x, "feature_map");
    if (rc == 0 && fm) {
      if (cJSON_IsString(fm) && !strcmp(fm->valuestring, "softmax")) h->feature_map = XD_FMAP_SOFTMAX;
      else if (cJSON_IsString(fm) && !strcmp(fm->valuestring, "hedgehog")) h->feature_map = XD_FMAP_HEDGEHOG;
      else rc = xd_errf(e, "%s: xdistill.feature_map must be \"softmax\" or \"hedgehog\"", name);
    }
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(x, "normalizer");
    if (rc == 0 && nm) {
      if (cJSON_IsString(nm) && !strcmp(nm->valuestring, "paper")) h->normalizer = XD_NORM_PAPER;
      else if (cJSON_IsString(nm) && !strcmp(nm->valuestring, "xlstm")) h->normalizer = XD_NORM_XLSTM;
      else rc = xd_errf(e, "%s: xdistill.normalizer must be \"paper\" or \"xlstm\"", name);
    }
    if (rc == 0) rc = xd_hybrid_validate(h, head_dim, name, e);
  }
  cJSON_Delete(root);
  return rc;
}

int xd_hybrid_config_json(const xd_hybrid_config *h, const char *teacher_json, size_t len, const char *name, char **out,
                          xd_err *e) {
  cJSON *root = cJSON_ParseWithLength(teacher_json, len);
  if (!root || !cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return xd_errf(e, "%s: not a JSON object", name);
  }
  cJSON_DeleteItemFromObjectCaseSensitive(root, "xdistill");
  cJSON *x = cJSON_AddObjectToObject(root, "xdistill");
  cJSON_AddNumberToObject(x, "format_version", XD_HYBRID_FORMAT_VERSION);
  cJSON_AddStringToObject(x, "architecture", "hybrid_xlstm");
  cJSON_AddNumberToObject(x, "window", h->window);
  cJSON_AddNumberToObject(x, "sinks", h->sinks);
  cJSON_AddStringToObject(x, "feature_map", xd_feature_map_name(h->feature_map));
  cJSON_AddNumberToObject(x, "d_phi", h->d_phi);
  cJSON_AddStringToObject(x, "normalizer", xd_normalizer_name(h->normalizer));
  cJSON_AddNumberToObject(x, "eps", h->eps);
  cJSON_AddNumberToObject(x, "gate_softcap", h->gate_softcap);
  cJSON_AddNumberToObject(x, "chunk", h->chunk);
  *out = cJSON_Print(root);
  cJSON_Delete(root);
  return 0;
}

int xd_hybrid_tensor_shape(const xd_hybrid_config *h, int k, int D, int H, int G, int d, int64_t *shape) {
  const int p = xd_hybrid_p_width(h);
  switch (k) {
    case XD_NEW_QF: shape[0] = H; shape[1] = d; shape[2] = p; return 3;
    case XD_NEW_KF: shape[0] = G; shape[1] = d; shape[2] = p; return 3;
    case XD_NEW_IW: case XD_NEW_FW: shape[0] = H; shape[1] = D; return 2;
    case XD_NEW_OW: shape[0] = H; shape[1] = 3 * d; return 2;
    default: shape[0] = H; return 1;
  }
}

void xd_hybrid_tensor_name(char *buf, size_t n, int layer, int k) {
  snprintf(buf, n, "model.layers.%d.self_attn.xlstm.%s", layer, xd_hybrid_tensor_suffix[k]);
}

void xd_hybrid_tensor_init(const xd_hybrid_config *h, int k, const int64_t *shape, float *out) {
  size_t n = 1;
  int nd = (k == XD_NEW_QF || k == XD_NEW_KF) ? 3 : (k == XD_NEW_IB || k == XD_NEW_FB || k == XD_NEW_OB) ? 1 : 2;
  for (int i = 0; i < nd; i++) n *= (size_t)shape[i];
  memset(out, 0, n * sizeof *out);
  if (k == XD_NEW_QF || k == XD_NEW_KF) {
    /* P = identity [d, p] per head (rectangular when p != d): phi(x) = softmax(x) at init. */
    const int64_t heads = shape[0], d = shape[1], p = shape[2];
    for (int64_t hh = 0; hh < heads; hh++)
      for (int64_t i = 0; i < d && i < p; i++) out[(hh * d + i) * p + i] = 1.0f;
  } else if (k == XD_NEW_FB) {
    /* b_f = linspace(3, 6) over heads: long memory from the start, varied across heads. */
    const int64_t H = shape[0];
    for (int64_t i = 0; i < H; i++) out[i] = H > 1 ? 3.0f + 3.0f * (float)i / (float)(H - 1) : 3.0f;
  } else if (k == XD_NEW_OB) {
    for (int64_t i = 0; i < shape[0]; i++) out[i] = -2.0f; /* o = sigmoid(-2) ~ 0.12 */
  }
  (void)h;
}
