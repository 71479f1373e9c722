/* `xdistill init`: build a student checkpoint directory from a teacher directory (SPEC §2):
 * every teacher tensor copied under its own name and dtype, the new per-layer tensors
 * initialised as docs/checkpoint-format.md specifies, config.json = the teacher's plus the
 * "xdistill" section, tokenizer files copied. */
#ifndef XD_STUDENT_INIT_H
#define XD_STUDENT_INIT_H
#include "model/student/hybrid_config.h"

/* The teacher's shapes come from its config.json; hy is validated against them. */
int xd_student_init(const char *teacher_dir, const xd_hybrid_config *hy, const char *out_dir, xd_err *e);
#endif
