#include "model/student/student_init.h"

#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "model/config.h"

static const char *const side_files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                         "generation_config.json"};

typedef struct {
  const xd_safetensors *teacher;
  int nteacher;
  const xd_hybrid_config *hy;
  const xd_st_entry *ents;
  const int *kind; /* new-tensor kind for entries past the teacher's */
} init_ctx;

static int fill_tensor(void *vctx, int i, void *buf, size_t nbytes, xd_err *e) {
  const init_ctx *c = vctx;
  if (i < c->nteacher) {
    memcpy(buf, c->teacher->tensors[i].data, nbytes); /* teacher bytes, dtype kept */
    return 0;
  }
  xd_hybrid_tensor_init(c->hy, c->kind[i - c->nteacher], c->ents[i].shape, buf);
  (void)e;
  return 0;
}

int xd_student_init(const char *teacher_dir, const xd_hybrid_config *hy, const char *out_dir, xd_err *e) {
  xd_model_config c;
  if (xd_config_load(&c, teacher_dir, e) != 0) return -1;
  char *cfg_path = xd_path_join(teacher_dir, "config.json");
  if (xd_hybrid_validate(hy, c.head_dim, cfg_path, e) != 0) { free(cfg_path); return -1; }
  char *teacher_json = NULL;
  size_t len = 0;
  if (xd_read_file(cfg_path, 16u << 20, &teacher_json, &len, e) != 0) { free(cfg_path); return -1; }
  char *student_json = NULL;
  int rc = xd_hybrid_config_json(hy, teacher_json, len, cfg_path, &student_json, e);
  free(teacher_json);
  free(cfg_path);
  if (rc != 0) return -1;

  xd_safetensors st;
  if (xd_st_open(&st, teacher_dir, e) != 0) { free(student_json); return -1; }
  /* A student must be built from a teacher: refuse a directory that already has new tensors. */
  char name[256];
  xd_hybrid_tensor_name(name, sizeof name, 0, XD_NEW_QF);
  if (xd_st_find(&st, name)) {
    xd_st_close(&st);
    free(student_json);
    return xd_errf(e, "%s: already a student checkpoint (has '%s'); init needs a teacher", teacher_dir, name);
  }
  const int nnew = c.n_layers * XD_NEW_COUNT, n = st.ntensors + nnew;
  xd_st_entry *ents = xd_calloc((size_t)n, sizeof *ents);
  int *kind = xd_calloc((size_t)nnew + 1, sizeof *kind);
  char **names = xd_calloc((size_t)nnew + 1, sizeof *names);
  for (int i = 0; i < st.ntensors; i++) {
    const xd_st_tensor *t = &st.tensors[i];
    ents[i].name = t->name;
    ents[i].dtype = t->dtype;
    ents[i].ndim = t->ndim;
    memcpy(ents[i].shape, t->shape, sizeof t->shape);
  }
  for (int l = 0, j = 0; l < c.n_layers; l++)
    for (int k = 0; k < XD_NEW_COUNT; k++, j++) {
      xd_hybrid_tensor_name(name, sizeof name, l, k);
      names[j] = xd_strdup(name);
      xd_st_entry *en = &ents[st.ntensors + j];
      en->name = names[j];
      en->dtype = XD_DT_F32;
      en->ndim = xd_hybrid_tensor_shape(hy, k, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim, en->shape);
      kind[j] = k;
    }
  rc = xd_mkdir_p(out_dir, e);
  if (rc == 0) {
    init_ctx ctx = {&st, st.ntensors, hy, ents, kind};
    char *path = xd_path_join(out_dir, "model.safetensors");
    const char *mk[] = {"format", "xdistill"}, *mv[] = {"pt", "init"};
    rc = xd_st_write_stream(path, ents, n, mk, mv, 2, fill_tensor, &ctx, e);
    free(path);
  }
  for (size_t i = 0; rc == 0 && i < sizeof side_files / sizeof *side_files; i++) {
    char *s = xd_path_join(teacher_dir, side_files[i]), *d = xd_path_join(out_dir, side_files[i]);
    if (xd_file_exists(s)) rc = xd_copy_file(s, d, e);
    free(s);
    free(d);
  }
  if (rc == 0) {
    /* config.json last: a directory with a config.json is a complete checkpoint. */
    char *path = xd_path_join(out_dir, "config.json");
    rc = xd_write_file_atomic(path, student_json, strlen(student_json), e);
    free(path);
  }
  for (int j = 0; j < nnew; j++) free(names[j]);
  free(names);
  free(kind);
  free(ents);
  free(student_json);
  xd_st_close(&st);
  return rc;
}
