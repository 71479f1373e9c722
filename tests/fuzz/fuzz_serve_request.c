/* libFuzzer target: `serve`'s request parser (src/serve/request.c) on arbitrary bodies, as a
 * completion and as a chat request: it must parse or fail with one line, and what it accepts
 * must be within range (sampling parameters, stop strings, messages, log-probabilities) and
 * survive being echoed back through the response builders: the text and the logprobs' token
 * strings (any bytes, "bytes:\xNN" where not UTF-8) come out as JSON cJSON parses. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "serve/request.h"

/* The logprobs builder's token text: the request's own string (arbitrary bytes, any UTF-8). */
static char *piece_of(void *user, int32_t id) {
  (void)id;
  return strdup((const char *)user);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  for (int k = 0; k < 2; k++) {
    xd_serve_request rq;
    xd_err e;
    if (xd_serve_request_parse((const char *)data, size, (xd_serve_kind)k, &rq, &e) != 0) {
      if (strchr(e.msg, '\n')) abort();
      continue;
    }
    if (xd_sample_params_check(&rq.sp, &e) != 0 || rq.n_stops > XD_SERVE_MAX_STOPS) abort();
    if (rq.max_tokens != -1 && rq.max_tokens < 1) abort();
    if (rq.logprobs < -1 || rq.logprobs > XD_SERVE_MAX_TOP_LOGPROBS || (rq.logprobs >= 0 && rq.stream)) abort();
    const xd_serve_meta m = {rq.kind, "id", "model", 0};
    for (size_t i = 0; i < rq.n_stops; i++) {
      if (!rq.stops[i][0]) abort();
      free(xd_serve_chunk_json(&m, rq.stops[i], strlen(rq.stops[i]), NULL, 0, -1, 0));
    }
    if (k == XD_SERVE_CHAT) {
      if (rq.n_msgs < 1) abort();
      for (int i = 0; i < rq.n_msgs; i++)
        free(xd_serve_response_json(&m, rq.msgs[i].content, strlen(rq.msgs[i].content), "stop", 1, 1, NULL));
    } else if (rq.prompt) {
      const int32_t ids[2] = {1, 2};
      const float lp[2] = {-0.5f, -INFINITY};
      char *lj = xd_serve_logprobs_json((xd_serve_kind)(rq.prompt[0] & 1), 2, ids, lp, 1, ids, lp, piece_of, rq.prompt);
      char *resp = xd_serve_response_json(&m, rq.prompt, strlen(rq.prompt), "length", 1, 1, lj);
      cJSON *o = cJSON_Parse(resp); /* the escapers give well-formed JSON, whatever the bytes */
      if (!o) abort();
      cJSON_Delete(o);
      free(resp), free(lj);
    } else if (rq.n_prompt_ids < 1) {
      abort();
    }
    xd_serve_request_free(&rq);
  }
  return 0;
}
