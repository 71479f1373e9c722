/* The student's hybrid section of config.json ("xdistill": {...}), its validation against the
 * teacher's shapes, and the names of the new per-layer tensors. docs/checkpoint-format.md is the
 * specification; keep the two in step. */
#ifndef XD_HYBRID_CONFIG_H
#define XD_HYBRID_CONFIG_H
#include "core/core.h"
#include "model/config.h"

#define XD_HYBRID_FORMAT_VERSION 1

typedef enum { XD_FMAP_SOFTMAX = 0, XD_FMAP_HEDGEHOG = 1 } xd_feature_map;
typedef enum { XD_NORM_PAPER = 0, XD_NORM_XLSTM = 1 } xd_mlstm_normalizer;

typedef struct {
  int window;          /* W: sliding-window length in tokens (>= 1) */
  int sinks;           /* S: number of sink tokens (>= 0) */
  xd_feature_map feature_map;
  int d_phi;           /* feature dimension (hedgehog: even; P has width d_phi/2) */
  xd_mlstm_normalizer normalizer;
  float eps;           /* normaliser epsilon (1e-6) */
  float gate_softcap;  /* c in c*tanh(x/c) on i~ and f~; 0 = off */
  int chunk;           /* chunk length of the chunkwise mLSTM (>= 1) */
} xd_hybrid_config;

/* Defaults of SPEC §2 for a teacher with head dimension head_dim. */
void xd_hybrid_defaults(xd_hybrid_config *h, int head_dim);
/* Check ranges; name is the file for the message. */
int xd_hybrid_validate(const xd_hybrid_config *h, int head_dim, const char *name, xd_err *e);
/* Parse the "xdistill" object of a config.json text. *present = 0 when the section is absent
 * (a plain teacher checkpoint); h is then left at defaults for head_dim. */
int xd_hybrid_parse(xd_hybrid_config *h, int *present, const char *json, size_t len, int head_dim,
                    const char *name, xd_err *e);
/* Return the teacher's config.json text with the hybrid section added (heap string). */
int xd_hybrid_config_json(const xd_hybrid_config *h, const char *teacher_json, size_t len, const char *name,
                          char **out, xd_err *e);

const char *xd_feature_map_name(xd_feature_map f);
const char *xd_normalizer_name(xd_mlstm_normalizer n);

/* Width of the feature projection P (d_phi for softmax, d_phi/2 for hedgehog). */
/* The local branch of layer l. On the teacher's own sliding-window layers (OLMo 3) it is the
 * teacher's attention exactly: the teacher's window (when narrower than W) and no sinks, since
 * sinks would change a function that is already local; elsewhere W and S. */
static inline int xd_hybrid_layer_window(const xd_model_config *c, const xd_hybrid_config *h, int l) {
  const int tw = xd_config_layer_window(c, l);
  return tw > 0 && tw < h->window ? tw : h->window;
}
static inline int xd_hybrid_layer_sinks(const xd_model_config *c, const xd_hybrid_config *h, int l) {
  return xd_config_layer_window(c, l) > 0 ? 0 : h->sinks;
}
static inline int xd_hybrid_p_width(const xd_hybrid_config *h) {
  return h->feature_map == XD_FMAP_HEDGEHOG ? h->d_phi / 2 : h->d_phi;
}

/* New tensors per layer (SPEC §2), all F32:
 *   model.layers.{l}.self_attn.xlstm.q_feature   [H, d, p]    P_q per query head
 *   model.layers.{l}.self_attn.xlstm.k_feature   [G, d, p]    P_k per KV head
 *   model.layers.{l}.self_attn.xlstm.igate.weight [H, D]  igate.bias [H]
 *   model.layers.{l}.self_attn.xlstm.fgate.weight [H, D]  fgate.bias [H]
 *   model.layers.{l}.self_attn.xlstm.ogate.weight [H, 3d] ogate.bias [H]   (mixing gate) */
enum { XD_NEW_QF, XD_NEW_KF, XD_NEW_IW, XD_NEW_IB, XD_NEW_FW, XD_NEW_FB, XD_NEW_OW, XD_NEW_OB, XD_NEW_COUNT };
extern const char *const xd_hybrid_tensor_suffix[XD_NEW_COUNT];
/* Shape of new tensor kind k for a teacher with hidden D, H query heads, G KV heads, head dim d. */
int xd_hybrid_tensor_shape(const xd_hybrid_config *h, int k, int D, int H, int G, int d, int64_t *shape);
void xd_hybrid_tensor_name(char *buf, size_t n, int layer, int k);
/* Fill a new tensor with its SPEC initial value (identity P, zero gate weights, b_f = linspace(3,6),
 * b_i = 0, w_o = 0, b_o = -2). */
void xd_hybrid_tensor_init(const xd_hybrid_config *h, int k, const int64_t *shape, float *out);
#endif
