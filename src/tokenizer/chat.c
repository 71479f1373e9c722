/* placeholder, replaced below */
#include "tokenizer/tok_internal.h"
int tok_detect_chat(const char *tmpl, tok_chat_format *fmt, int *gen_always) { (void)tmpl; *fmt = CHAT_NONE; *gen_always = 0; return 0; }
int xd_chat_encode(const xd_tokenizer *t, const xd_chat_message *msgs, int n, int add_generation_prompt,
                   int32_t **ids, uint8_t **mask, size_t *len, xd_err *e) { return xd_errf(e, "todo"); }
