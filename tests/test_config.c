/* model/config: HF config.json in both dialects, every family's derived flags, validation
 * errors (one line, naming the file), and RoPE inverse frequencies of every scaling kind against
 * transformers' ROPE_INIT_FUNCTIONS (tests/fixtures/teachers/rope_cases.json). */
#include <cjson/cJSON.h>
#include "test.h"
#include "model/config.h"
#include "model/student/hybrid_config.h"

static int parse(xd_model_config *c, const char *json, xd_err *e) {
  return xd_config_parse(c, json, strlen(json), "cfg.json", e);
}

#define BASE "\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 100"

static void test_families(void) {
  xd_model_config c;
  xd_err e = {0};
  CHECK(parse(&c, "{\"model_type\": \"llama\", " BASE ", \"num_key_value_heads\": 2, \"attention_bias\": true, \"mlp_bias\": true, \"xdistill\": {\"window\": 64}, \"unknown_key\": [1,2]}", &e) == 0);
  CHECK(c.family == XD_FAMILY_LLAMA && c.hidden == 64 && c.intermediate == 128 && c.n_layers == 2 && c.n_heads == 4 &&
        c.n_kv_heads == 2 && c.head_dim == 16 && c.vocab == 100 && c.qkv_bias && c.o_bias && c.mlp_bias &&
        c.qk_norm == XD_QKNORM_NONE && !c.post_norm && c.rope[0].kind == XD_ROPE_DEFAULT && c.rope[0].theta == 10000.0);
  CHECK(c.bos_token_id == -1 && c.n_eos == 0 && c.sliding_window == 0);
  CHECK(parse(&c, "{\"model_type\": \"qwen2\", " BASE ", \"attention_bias\": false, \"eos_token_id\": [5, 7, 9], \"bos_token_id\": 3}", &e) == 0);
  CHECK(c.family == XD_FAMILY_QWEN2 && c.qkv_bias && !c.o_bias && c.n_kv_heads == 4 && c.n_eos == 3 && c.eos_token_ids[2] == 9 && c.bos_token_id == 3);
  CHECK(parse(&c, "{\"model_type\": \"qwen3\", " BASE ", \"head_dim\": 32, \"tie_word_embeddings\": true, \"eos_token_id\": 8}", &e) == 0);
  CHECK(c.family == XD_FAMILY_QWEN3 && c.head_dim == 32 && c.qk_norm == XD_QKNORM_HEAD && c.tie_embeddings && !c.qkv_bias && c.n_eos == 1 && c.eos_token_ids[0] == 8);
  CHECK(parse(&c, "{\"model_type\": \"olmo2\", " BASE "}", &e) == 0);
  CHECK(c.family == XD_FAMILY_OLMO2 && c.qk_norm == XD_QKNORM_PROJ && c.post_norm);
  CHECK(parse(&c, "{\"model_type\": \"olmo3\", " BASE ", \"sliding_window\": 16, \"layer_types\": [\"sliding_attention\", \"full_attention\"],"
                  "\"rope_parameters\": {\"full_attention\": {\"rope_type\": \"yarn\", \"rope_theta\": 500000.0, \"factor\": 8.0, \"original_max_position_embeddings\": 8192},"
                  " \"sliding_attention\": {\"rope_type\": \"default\", \"rope_theta\": 500000.0}}}", &e) == 0);
  CHECK(c.family == XD_FAMILY_OLMO3 && c.post_norm && c.sliding_window == 16 && c.layer_sliding[0] == 1 && c.layer_sliding[1] == 0);
  CHECK(xd_config_layer_window(&c, 0) == 16 && xd_config_layer_window(&c, 1) == 0);
  CHECK(c.rope[0].kind == XD_ROPE_YARN && c.rope[0].factor == 8.0 && c.rope[0].original_max_pos == 8192 && c.rope[1].kind == XD_ROPE_DEFAULT);
  /* parameter count: llama MHA, untied, no bias */
  CHECK(parse(&c, "{\"model_type\": \"llama\", " BASE "}", &e) == 0);
  CHECK(xd_config_param_count(&c) == 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 2 * 100 * 64 + 64);
}

/* The two dialects: v4 rope_theta/rope_scaling (rope_type or type)/torch_dtype vs v5 rope_parameters/dtype. */
static void test_dialects(void) {
  xd_model_config a, b, d;
  xd_err e = {0};
  CHECK(parse(&a, "{\"model_type\": \"llama\", " BASE ", \"rope_theta\": 500000.0, \"torch_dtype\": \"bfloat16\", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}", &e) == 0);
  CHECK(parse(&b, "{\"model_type\": \"llama\", " BASE ", \"dtype\": \"bfloat16\", \"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}", &e) == 0);
  CHECK(memcmp(&a, &b, sizeof a) == 0);
  CHECK(a.rope[0].kind == XD_ROPE_LLAMA3 && a.rope[0].theta == 500000.0 && !strcmp(a.dtype, "bfloat16"));
  /* older "type" key */
  CHECK(parse(&d, "{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}", &e) == 0);
  CHECK(d.rope[0].kind == XD_ROPE_LINEAR && d.rope[0].factor == 2.0 && d.rope[0].theta == 10000.0);
  CHECK(parse(&d, "{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.0}, \"rope_theta\": 1000.0}", &e) == 0);
  CHECK(d.rope[0].kind == XD_ROPE_DYNAMIC && d.rope[0].theta == 1000.0 && d.rope[1].kind == XD_ROPE_DYNAMIC);
}

typedef struct { const char *json, *want; } bad_case;

/* The student's "xdistill" block: numbers beyond their types' ranges are errors, never converted
 * (converting such a double to int or float is undefined). */
static void test_hybrid_numbers(void) {
  static const struct { const char *json, *want; } cases[] = {
      {"{\"xdistill\": {\"format_version\": 1, \"window\": 1e300}}", "xdistill.window must be an integer"},
      {"{\"xdistill\": {\"format_version\": 1, \"gate_softcap\": 1e300}}", "xdistill.gate_softcap must be a number"},
      {"{\"xdistill\": {\"format_version\": 1, \"eps\": -1e39}}", "xdistill.eps must be a number"},
      {"{\"xdistill\": {\"format_version\": 4e9}}", "xdistill.format_version must be an integer"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    xd_hybrid_config h;
    int present = 0;
    xd_err e = {{0}};
    const int rc = xd_hybrid_parse(&h, &present, cases[i].json, strlen(cases[i].json), 64, "cfg.json", &e);
    CHECKF(rc == -1 && present && strstr(e.msg, cases[i].want), "case %zu: rc %d msg '%s'", i, rc, e.msg);
  }
  xd_hybrid_config h;
  int present = 0;
  xd_err e = {{0}};
  const char *ok = "{\"xdistill\": {\"format_version\": 1, \"window\": 32, \"gate_softcap\": 15.5}}";
  CHECKF(xd_hybrid_parse(&h, &present, ok, strlen(ok), 64, "cfg.json", &e) == 0 && h.window == 32 && h.gate_softcap == 15.5f,
         "%s", e.msg);
}

static void test_errors(void) {
  const bad_case cases[] = {
    {"{\"model_type\": \"llama\", " BASE, "cfg.json: not valid JSON"},
    {"[1, 2]", "cfg.json: top level must be a JSON object"},
    {"{\"model_type\": \"gpt2\", " BASE "}", "cfg.json: unsupported model_type 'gpt2' (supported: llama, qwen2, qwen3, olmo2, olmo3)"},
    {"{" BASE "}", "cfg.json: missing 'model_type'"},
    {"{\"model_type\": \"llama\", \"hidden_size\": 64}", "cfg.json: missing 'intermediate_size'"},
    {"{\"model_type\": \"llama\", " BASE ", \"num_key_value_heads\": 3}", "must be a positive multiple of num_key_value_heads 3"},
    {"{\"model_type\": \"llama\", \"hidden_size\": -4, \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 100}", "hidden_size must be > 0"},
    {"{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 1.5}", "'vocab_size' must be an integer"},
    {"{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 0, \"num_attention_heads\": 4, \"vocab_size\": 10}", "num_hidden_layers must be in 1..512"},
    {"{\"model_type\": \"llama\", \"hidden_size\": 66, \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 10}", "not divisible by num_attention_heads"},
    {"{\"model_type\": \"llama\", " BASE ", \"head_dim\": 7}", "head_dim must be positive and even"},
    {"{\"model_type\": \"llama\", " BASE ", \"rms_norm_eps\": -1}", "rms_norm_eps must be in (0, 1)"},
    {"{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": {\"rope_type\": \"longrope\", \"factor\": 2}}", "unsupported rope_type 'longrope'"},
    {"{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8}}", "missing 'original_max_position_embeddings'"},
    {"{\"model_type\": \"llama\", " BASE ", \"rope_scaling\": {\"rope_type\": \"linear\"}}", "rope factor must be > 0"},
    {"{\"model_type\": \"llama\", " BASE ", \"rope_theta\": \"big\"}", "'rope_theta' must be a number"},
    {"{\"model_type\": \"llama\", " BASE ", \"tie_word_embeddings\": 1}", "'tie_word_embeddings' must be true or false"},
    {"{\"model_type\": \"olmo3\", " BASE ", \"layer_types\": [\"sliding_attention\"]}", "layer_types must be a list of num_hidden_layers (2) strings"},
    {"{\"model_type\": \"olmo3\", " BASE ", \"layer_types\": [\"sliding_attention\", \"full_attention\"]}", "sliding_attention layers need sliding_window > 0"},
    {"{\"model_type\": \"olmo3\", " BASE ", \"layer_types\": [\"local\", \"full_attention\"], \"sliding_window\": 4}", "layer_types[0] 'local' is not"},
    {"{\"model_type\": \"llama\", " BASE ", \"hidden_act\": \"gelu\"}", "hidden_act 'gelu' is not supported"},
    {"{\"model_type\": \"llama\", " BASE ", \"eos_token_id\": [1, -2]}", "eos_token_id entries must be non-negative integers"},
    {"{\"model_type\": \"llama\", " BASE ", \"eos_token_id\": [1, 1e300]}", "eos_token_id entries must be non-negative integers"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    xd_model_config c;
    xd_err e = {0};
    const int rc = parse(&c, cases[i].json, &e);
    CHECKF(rc == -1 && strstr(e.msg, cases[i].want) && !strchr(e.msg, '\n'), "case %zu: rc %d msg '%s' (want '%s')", i, rc,
           e.msg, cases[i].want);
  }
  xd_model_config c;
  xd_err e = {0};
  CHECK(xd_config_load(&c, "/nonexistent/dir", &e) == -1 && strstr(e.msg, "/nonexistent/dir"));
}

/* Published configs (transformers 4.x dialect) as shipped with the checkpoints. */
static void test_published_configs(void) {
  xd_model_config c;
  xd_err e = {0};
  const char *llama31 =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"attention_bias\":false,\"attention_dropout\":0.0,\"bos_token_id\":128000,"
    "\"eos_token_id\":128001,\"hidden_act\":\"silu\",\"hidden_size\":4096,\"initializer_range\":0.02,\"intermediate_size\":14336,"
    "\"max_position_embeddings\":131072,\"mlp_bias\":false,\"model_type\":\"llama\",\"num_attention_heads\":32,"
    "\"num_hidden_layers\":32,\"num_key_value_heads\":8,\"pretraining_tp\":1,\"rms_norm_eps\":1e-05,"
    "\"rope_scaling\":{\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192,"
    "\"rope_type\":\"llama3\"},\"rope_theta\":500000.0,\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\","
    "\"transformers_version\":\"4.43.0.dev0\",\"use_cache\":true,\"vocab_size\":128256}";
  CHECK(parse(&c, llama31, &e) == 0);
  CHECK(c.head_dim == 128 && c.n_kv_heads == 8 && c.rope[0].kind == XD_ROPE_LLAMA3 && c.rope[0].original_max_pos == 8192);
  CHECK(xd_config_param_count(&c) == 8030261248ull); /* Llama-3.1-8B */
  const char *qwen25 =
    "{\"architectures\":[\"Qwen2ForCausalLM\"],\"attention_dropout\":0.0,\"bos_token_id\":151643,\"eos_token_id\":151645,"
    "\"hidden_act\":\"silu\",\"hidden_size\":3584,\"initializer_range\":0.02,\"intermediate_size\":18944,"
    "\"max_position_embeddings\":32768,\"max_window_layers\":28,\"model_type\":\"qwen2\",\"num_attention_heads\":28,"
    "\"num_hidden_layers\":28,\"num_key_value_heads\":4,\"rms_norm_eps\":1e-06,\"rope_theta\":1000000.0,\"rope_scaling\":null,"
    "\"sliding_window\":131072,\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.43.1\","
    "\"use_cache\":true,\"use_sliding_window\":false,\"vocab_size\":152064}";
  CHECK(parse(&c, qwen25, &e) == 0);
  CHECK(c.family == XD_FAMILY_QWEN2 && c.qkv_bias && !c.o_bias && c.sliding_window == 0 && c.rope[0].theta == 1e6 &&
        c.eos_token_ids[0] == 151645 && !strcmp(c.dtype, "bfloat16"));
}

/* rope_inv_freq against transformers for every scaling kind. */
static void test_rope_cases(void) {
  char *txt = NULL;
  size_t n;
  xd_err e = {0};
  if (xd_read_file("tests/fixtures/teachers/rope_cases.json", 1 << 22, &txt, &n, &e)) SKIP("rope_cases.json absent");
  cJSON *root = cJSON_Parse(txt);
  CHECK(root && cJSON_GetArraySize(root) >= 7);
  const cJSON *cs;
  cJSON_ArrayForEach(cs, root) {
    const char *name = cJSON_GetObjectItem(cs, "name")->valuestring;
    char *cfg_txt = cJSON_PrintUnformatted(cJSON_GetObjectItem(cs, "config"));
    xd_model_config c;
    const int rc = xd_config_parse(&c, cfg_txt, strlen(cfg_txt), name, &e);
    free(cfg_txt);
    CHECKF(rc == 0, "%s: %s", name, e.msg);
    if (rc) continue;
    const int seq = cJSON_GetObjectItem(cs, "seq_len")->valueint, hd = cJSON_GetObjectItem(cs, "head_dim")->valueint;
    const cJSON *ref = cJSON_GetObjectItem(cs, "inv_freq");
    const int half = cJSON_GetArraySize(ref);
    CHECK(half == hd / 2 && c.head_dim == hd);
    float inv[256], att;
    rope_inv_freq(&c.rope[0], c.head_dim, c.max_pos, seq, inv, &att);
    double worst = 0;
    for (int i = 0; i < half; i++) {
      const double r = cJSON_GetArrayItem(ref, i)->valuedouble;
      worst = fmax(worst, fabs(inv[i] - r) / fabs(r));
    }
    CHECKF(worst < 2e-6, "%s (%s): inv_freq rel err %.3g", name, rope_kind_name(c.rope[0].kind), worst);
    CHECK_REL(att, cJSON_GetObjectItem(cs, "attention_factor")->valuedouble, 1e-6, 1e-6);
  }
  cJSON_Delete(root);
  free(txt);
}

int main(void) {
  RUN(test_families);
  RUN(test_dialects);
  RUN(test_errors);
  RUN(test_published_configs);
  RUN(test_rope_cases);
  RUN(test_hybrid_numbers);
  return test_finish();
}
