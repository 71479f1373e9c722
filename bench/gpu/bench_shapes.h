/* The shapes the GPU benchmarks share (issue #8): Llama-3.2-1B (16 layers, hidden 2048, 32 heads,
 * 8 KV heads, head dim 64, MLP 8192, vocab 128256, tied embeddings, llama3 RoPE) and its student
 * (W 512, S 4, d_phi 64, chunk 64, softmax feature map). */
#ifndef XD_BENCH_SHAPES_H
#define XD_BENCH_SHAPES_H
#include <stdio.h>
#include <string.h>
#include "model/config.h"
#include "model/student/hybrid_config.h"

static inline xd_model_config bench_llama32_1b(void) {
  xd_model_config c;
  memset(&c, 0, sizeof c);
  snprintf(c.model_type, sizeof c.model_type, "llama");
  c.family = XD_FAMILY_LLAMA;
  c.hidden = 2048, c.intermediate = 8192, c.n_layers = 16, c.n_heads = 32, c.n_kv_heads = 8, c.head_dim = 64;
  c.vocab = 128256, c.max_pos = 131072, c.rms_eps = 1e-5, c.tie_embeddings = 1, c.bos_token_id = 128000;
  c.n_eos = 1, c.eos_token_ids[0] = 128001;
  for (int i = 0; i < 2; i++) {
    xd_rope_config *r = &c.rope[i];
    r->kind = XD_ROPE_LLAMA3, r->theta = 500000.0, r->factor = 32.0, r->low_freq_factor = 1.0;
    r->high_freq_factor = 4.0, r->original_max_pos = 8192, r->beta_fast = 32, r->beta_slow = 1, r->truncate = 1;
  }
  snprintf(c.dtype, sizeof c.dtype, "bfloat16");
  return c;
}

static inline xd_hybrid_config bench_student_1b(void) {
  xd_hybrid_config hy;
  xd_hybrid_defaults(&hy, 64);
  hy.window = 512, hy.sinks = 4, hy.d_phi = 64, hy.chunk = 64, hy.feature_map = XD_FMAP_SOFTMAX;
  return hy;
}
#endif
