/* safetensors: round trip through the atomic writer, dtype conversion, and every kind of
 * malformed file giving a one-line error that names the file. */
#include "test.h"
#include "io/safetensors.h"
#include "io/npy.h"

static void write_raw(const char *path, const void *hdr, size_t hlen, const void *data, size_t dlen) {
  FILE *fp = fopen(path, "wb");
  uint64_t n = hlen;
  fwrite(&n, 8, 1, fp);
  fwrite(hdr, 1, hlen, fp);
  if (dlen) fwrite(data, 1, dlen, fp);
  fclose(fp);
}

static void test_round_trip(void) {
  const char *dir = test_tmpdir("st");
  char path[600];
  snprintf(path, sizeof path, "%s/rt.safetensors", dir);
  xd_rng r;
  xd_rng_seed(&r, 1234);
  float a[6];
  uint16_t b[12], h[4];
  for (int i = 0; i < 6; i++) a[i] = (float)xd_rng_normal(&r);
  float bref[12], href[4];
  for (int i = 0; i < 12; i++) { b[i] = xd_f32_to_bf16((float)xd_rng_normal(&r)); bref[i] = xd_bf16_to_f32(b[i]); }
  for (int i = 0; i < 4; i++) { h[i] = xd_f32_to_f16((float)xd_rng_normal(&r)); href[i] = xd_f16_to_f32(h[i]); }
  xd_st_entry ents[3] = {
    {"w.a", XD_DT_F32, 2, {2, 3}, a},
    {"w.b", XD_DT_BF16, 3, {2, 2, 3}, b},
    {"w.h", XD_DT_F16, 1, {4}, h},
  };
  const char *mk[] = {"format"}, *mv[] = {"pt"};
  xd_err e = {0};
  CHECK(xd_st_write(path, ents, 3, mk, mv, 1, &e) == 0);
  xd_safetensors st;
  CHECK(xd_st_open(&st, path, &e) == 0);
  CHECK(st.ntensors == 3);
  CHECK(st.nmeta == 1 && !strcmp(st.meta_keys[0], "format") && !strcmp(st.meta_values[0], "pt"));
  float out[12];
  CHECK(xd_st_load_f32(&st, "w.a", 2, (int64_t[]){2, 3}, out, &e) == 0);
  CHECK(memcmp(out, a, sizeof a) == 0);
  CHECK(xd_st_load_f32(&st, "w.b", 3, (int64_t[]){2, 2, 3}, out, &e) == 0);
  CHECK(memcmp(out, bref, sizeof bref) == 0);
  CHECK(xd_st_load_f32(&st, "w.h", 1, (int64_t[]){4}, out, &e) == 0);
  CHECK(memcmp(out, href, sizeof href) == 0);
  CHECK(xd_st_load_f32(&st, "w.a", 2, (int64_t[]){3, 2}, out, &e) != 0);
  CHECK(strstr(e.msg, "shape [2,3], expected [3,2]") != NULL);
  CHECK(xd_st_load_f32(&st, "nope", 1, (int64_t[]){1}, out, &e) != 0);
  CHECK(strstr(e.msg, "missing tensor 'nope'") != NULL);
  xd_st_close(&st);
}

static void test_half_conversions(void) {
  /* f16: exhaustive round trip of every finite half value through f32. */
  int bad = 0;
  for (uint32_t u = 0; u < 65536; u++) {
    uint16_t x = (uint16_t)u;
    if ((x & 0x7c00) == 0x7c00) continue;
    if (xd_f32_to_f16(xd_f16_to_f32(x)) != x) bad++;
  }
  CHECK(bad == 0);
  CHECK(xd_f16_to_f32(0x3c00) == 1.0f && xd_f16_to_f32(0xc000) == -2.0f && xd_f16_to_f32(0x0001) == 0x1p-24f);
  CHECK(xd_bf16_to_f32(0x3f80) == 1.0f);
  CHECK(xd_f32_to_bf16(1.00390625f) == 0x3f80); /* tie rounds to even */
  CHECK(xd_f32_to_bf16(1.01171875f) == 0x3f82);
}

typedef struct { const char *hdr; size_t dlen; const char *want; } bad_case;

static void test_bad_files(void) {
  const char *dir = test_tmpdir("stbad");
  char path[600];
  uint8_t data[64] = {0};
  const bad_case cases[] = {
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "not valid JSON"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 8, "out of range"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlaps"},
    {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype 'Q4'"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "need 12"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "shape entry 0"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "end before"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, "appears twice"},
    {"{\"__metadata__\":{\"x\":3}}", 0, "not a string"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "cover 8"},
    {"[1,2]", 0, "not a JSON object"},
    /* found by fuzz_safetensors (leaked the first map) */
    {"{\"__metadata__\":{},\"__metadata__\":{\"a\":\"b\"}}", 0, "__metadata__ appears twice"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0.5,8]}}", 8, "data_offsets must be"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, "overflows"},
  };
  xd_err e;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(path, sizeof path, "%s/bad%zu.safetensors", dir, i);
    write_raw(path, cases[i].hdr, strlen(cases[i].hdr), data, cases[i].dlen);
    xd_safetensors st;
    e.msg[0] = 0;
    int rc = xd_st_open(&st, path, &e);
    CHECKF(rc != 0, "case %zu accepted", i);
    CHECKF(strstr(e.msg, path) != NULL && strstr(e.msg, cases[i].want) != NULL && !strchr(e.msg, '\n'),
           "case %zu: message '%s' lacks '%s'", i, e.msg, cases[i].want);
  }
  /* Header length past the end, and a truncated file. */
  snprintf(path, sizeof path, "%s/hlen.safetensors", dir);
  FILE *fp = fopen(path, "wb");
  uint64_t big = 1000;
  fwrite(&big, 8, 1, fp);
  fwrite("{}", 1, 2, fp);
  fclose(fp);
  xd_safetensors st;
  CHECK(xd_st_open(&st, path, &e) != 0 && strstr(e.msg, "runs past the end"));
  snprintf(path, sizeof path, "%s/trunc.safetensors", dir);
  fp = fopen(path, "wb");
  fwrite("abc", 1, 3, fp);
  fclose(fp);
  CHECK(xd_st_open(&st, path, &e) != 0 && strstr(e.msg, "truncated"));
  CHECK(xd_st_open(&st, "/nonexistent/x.safetensors", &e) != 0 && strstr(e.msg, "cannot open"));
}

static void test_sharded(void) {
  const char *dir = test_tmpdir("shard");
  char p1[600], p2[600], pi[600];
  snprintf(p1, sizeof p1, "%s/model-00001-of-00002.safetensors", dir);
  snprintf(p2, sizeof p2, "%s/model-00002-of-00002.safetensors", dir);
  snprintf(pi, sizeof pi, "%s/model.safetensors.index.json", dir);
  float x[4] = {1, 2, 3, 4}, y[2] = {5, 6};
  xd_st_entry e1 = {"x", XD_DT_F32, 1, {4}, x}, e2 = {"y", XD_DT_F32, 1, {2}, y};
  xd_err e;
  CHECK(xd_st_write(p1, &e1, 1, NULL, NULL, 0, &e) == 0);
  CHECK(xd_st_write(p2, &e2, 1, NULL, NULL, 0, &e) == 0);
  const char *idx = "{\"metadata\":{},\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\",\"y\":\"model-00002-of-00002.safetensors\"}}";
  CHECK(xd_write_file_atomic(pi, idx, strlen(idx), &e) == 0);
  xd_safetensors st;
  CHECK(xd_st_open(&st, dir, &e) == 0);
  float out[4];
  CHECK(st.ntensors == 2 && xd_st_load_f32(&st, "y", 1, (int64_t[]){2}, out, &e) == 0 && out[1] == 6);
  xd_st_close(&st);
  const char *bad = "{\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\",\"z\":\"model-00002-of-00002.safetensors\"}}";
  CHECK(xd_write_file_atomic(pi, bad, strlen(bad), &e) == 0);
  CHECK(xd_st_open(&st, dir, &e) != 0 && strstr(e.msg, "'z'"));
  const char *evil = "{\"weight_map\":{\"x\":\"../../etc/passwd\"}}";
  CHECK(xd_write_file_atomic(pi, evil, strlen(evil), &e) == 0);
  CHECK(xd_st_open(&st, dir, &e) != 0 && strstr(e.msg, "same directory"));
}

static void test_npy(void) {
  const char *dir = test_tmpdir("npy");
  char path[600];
  snprintf(path, sizeof path, "%s/a.npy", dir);
  int32_t v[6] = {1, 2, 3, 4, 5, 6};
  xd_err e;
  CHECK(xd_npy_write(path, XD_NPY_I32, 2, (int64_t[]){2, 3}, v, &e) == 0);
  xd_npy a;
  CHECK(xd_npy_read(path, &a, &e) == 0);
  CHECK(a.ndim == 2 && a.shape[0] == 2 && a.shape[1] == 3 && a.type == XD_NPY_I32);
  CHECK(memcmp(a.data, v, sizeof v) == 0);
  int32_t *ids;
  CHECK(xd_npy_to_ids(&a, path, 5, &ids, &e) != 0 && strstr(e.msg, "outside the vocabulary"));
  CHECK(xd_npy_to_ids(&a, path, 7, &ids, &e) == 0);
  free(ids);
  xd_npy_free(&a);
  CHECK(xd_npy_parse((const uint8_t *)"garbage!!!!", 11, "g.npy", &a, &e) != 0 && strstr(e.msg, "g.npy"));
  /* Regression (found by fuzz_npy): header ending right after "'shape': " was read past its end.
   * Heap copy so ASan sees the exact bounds. */
  const char hdr[] = "\x93NUMPY\x01\x00\x32\x00{'descr': '<i4', 'fortran_order': False, 'shape': ";
  uint8_t *buf = malloc(sizeof hdr - 1);
  memcpy(buf, hdr, sizeof hdr - 1);
  CHECK(xd_npy_parse(buf, sizeof hdr - 1, "h.npy", &a, &e) != 0);
  free(buf);
}

int main(void) {
  RUN(test_round_trip);
  RUN(test_half_conversions);
  RUN(test_bad_files);
  RUN(test_sharded);
  RUN(test_npy);
  return test_finish();
}
